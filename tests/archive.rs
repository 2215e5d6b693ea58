//! The message archive (XEP-0313) against a real ngIRCd and a real XMPP server, each
//! test on Prosody and on ejabberd: channel lines and private messages are archived per
//! user, live copies carry their archive id (XEP-0359), and clients page through them.

use minidom::Element;
use testkit::irc::Ngircd;
use testkit::*;

const MUC: &str = "http://jabber.org/protocol/muc";
const NS_SID: &str = "urn:xmpp:sid:0";

/// `#chan%127.0.0.1@gw.localhost`
fn room(channel: &str) -> String {
    format!("{channel}%127.0.0.1@{GW}")
}

/// Joins `room/nick` and waits for the subject that ends the entry.
async fn join(client: &mut Client, room: &str, nick: &str) {
    client.send_raw(&format!("<presence to='{room}/{nick}'><x xmlns='{MUC}'/></presence>")).await;
    client
        .wait_for("the room subject", |e| {
            e.name() == "message" && e.attr("from").is_some_and(|f| f.starts_with(room)) && e.get_child("subject", NS_CLIENT).is_some()
        })
        .await;
}

/// The live copy's archive id, as the room (`by`) gave it.
fn stanza_id(stanza: &Element, by: &str) -> Option<String> {
    stanza.children().find(|c| c.is("stanza-id", NS_SID) && c.attr("by") == Some(by)).and_then(|c| c.attr("id")).map(str::to_owned)
}

fn body(stanza: &Element) -> String {
    stanza.get_child("body", NS_CLIENT).map(|b| b.text()).unwrap_or_default()
}

/// Pages forward through the whole archive of `to` in pages of `max`, checking each
/// page's `<fin/>`: first and last are the page's ends, every page but the last is full
/// and incomplete, and the last is complete.
async fn page_forward(client: &mut Client, to: &str, max: usize) -> (Vec<Archived>, usize) {
    let mut all = Vec::new();
    let mut pages = 0;
    let mut after = String::new();
    loop {
        let rsm = format!("<max>{max}</max>{after}");
        let (page, reply) = client.mam(to, &[], &rsm).await;
        assert_eq!(reply.attr("type"), Some("result"), "{reply:?}");
        let (complete, first, last) = mam_fin(&reply);
        assert_eq!(first.as_deref(), page.first().map(|a| a.id.as_str()), "fin's first");
        assert_eq!(last.as_deref(), page.last().map(|a| a.id.as_str()), "fin's last");
        assert!(page.len() == max || complete, "a short page ({} of {max}) is the last", page.len());
        all.extend(page);
        pages += 1;
        if complete {
            return (all, pages);
        }
        after = format!("<after>{}</after>", last.expect("an incomplete page has a last id"));
    }
}

on_each_server!(channel_lines_are_archived_and_paged_with_ids_stable_across_a_restart);
/// 500 lines (450 from IRC, 50 of the user's own) arrive live with stanza-ids, page
/// forward by 100 and backward by 50 with correct first/last/complete, by time range, and
/// read back identical after the gateway restarts.
async fn channel_lines_are_archived_and_paged_with_ids_stable_across_a_restart(kind: ServerKind) {
    let server = XmppServer::start(kind);
    let ircd = Ngircd::start(false);
    let mut gateway = Gateway::start_irc(&server, &ircd, None);
    let mut alice = server.client("alice", "localhost").await;
    let r = room("#history");
    join(&mut alice, &r, "alice").await;
    let mut bob = ircd.client("bob").await;
    bob.join("#history").await;
    alice.wait_for("bob's arrival", |e| e.name() == "presence" && e.attr("from") == Some(&format!("{r}/bob"))).await;

    let mut live = Vec::new();
    for n in 0..500 {
        let text = format!("line {n}");
        if n % 10 == 9 {
            alice.send_raw(&format!("<message to='{r}' type='groupchat' id='m{n}'><body>{text}</body></message>")).await;
        } else {
            bob.privmsg("#history", &text).await;
        }
        let echo = alice.wait_for(&text, |e| e.name() == "message" && body(e) == text).await;
        let id = stanza_id(&echo, &r).unwrap_or_else(|| panic!("no stanza-id by the room on {echo:?}"));
        live.push((id, text));
    }

    // Five full pages; the fifth is complete (nothing after it).
    let (forward, pages) = page_forward(&mut alice, &r, 100).await;
    assert_eq!(pages, 5);
    let archived: Vec<(String, String)> = forward.iter().map(|a| (a.id.clone(), a.body())).collect();
    assert_eq!(archived, live, "the archive holds every line once, in order, under its live id");
    let from = |a: &Archived| a.message.attr("from").map(str::to_owned);
    assert_eq!(from(&forward[0]).as_deref(), Some(format!("{r}/bob").as_str()));
    assert_eq!(from(&forward[9]).as_deref(), Some(format!("{r}/alice").as_str()), "the user's own line, under their nick");
    assert_eq!(forward[0].message.attr("type"), Some("groupchat"));

    // The last 50, then the 50 before them: `<before/>` pages back from the end.
    let (last, reply) = alice.mam(&r, &[], "<max>50</max><before/>").await;
    assert_eq!(last.iter().map(|a| a.body()).collect::<Vec<_>>(), live[450..].iter().map(|(_, t)| t.clone()).collect::<Vec<_>>());
    let (complete, first, _) = mam_fin(&reply);
    assert!(!complete, "more before the last page");
    let (previous, reply) = alice.mam(&r, &[], &format!("<max>50</max><before>{}</before>", first.unwrap())).await;
    assert_eq!(previous.first().map(|a| a.body()).as_deref(), Some("line 400"));
    assert_eq!(previous.len(), 50);
    assert!(!mam_fin(&reply).0);
    let (oldest, reply) = alice.mam(&r, &[], &format!("<max>50</max><before>{}</before>", live[30].0)).await;
    assert_eq!(oldest.len(), 30);
    assert!(mam_fin(&reply).0, "the first page backward is complete");

    // A time range: from line 100's stamp to line 199's, both included.
    let (range, reply) = alice.mam(&r, &[("start", &forward[100].stamp), ("end", &forward[199].stamp)], "<max>500</max>").await;
    assert_eq!(range.len(), 100, "{:?}", range.iter().map(|a| a.body()).collect::<Vec<_>>());
    assert_eq!((range[0].body(), range[99].body()), ("line 100".into(), "line 199".into()));
    assert!(mam_fin(&reply).0);

    // Another user's archive of the same room is theirs alone: empty.
    let mut other = server.client("bob", "localhost").await;
    let (theirs, _) = other.mam(&r, &[], "<max>10</max>").await;
    assert!(theirs.is_empty(), "bob@localhost sees nothing of alice's archive");

    // Restarted, the gateway gives the same ids, times and lines.
    gateway.signal("TERM");
    assert_eq!(gateway.wait_exit(std::time::Duration::from_secs(10)), Some(0));
    gateway.spawn();
    let (again, _) = page_forward(&mut alice, &r, 250).await;
    let again: Vec<(String, String, String)> = again.iter().map(|a| (a.id.clone(), a.stamp.clone(), a.body())).collect();
    let before: Vec<(String, String, String)> = forward.iter().map(|a| (a.id.clone(), a.stamp.clone(), a.body())).collect();
    assert_eq!(again, before);
}

on_each_server!(private_messages_are_archived_both_ways_and_filtered_by_with);
async fn private_messages_are_archived_both_ways_and_filtered_by_with(kind: ServerKind) {
    let server = XmppServer::start(kind);
    let ircd = Ngircd::start(false);
    let _gateway = Gateway::start_irc(&server, &ircd, None);
    let mut alice = server.client("alice", "localhost").await;
    let mut bob = ircd.client("bob").await;
    let mut carol = ircd.client("carol").await;
    let bob_jid = format!("bob%127.0.0.1@{GW}");
    let carol_jid = format!("carol%127.0.0.1@{GW}");
    alice.send_raw(&format!("<message to='{bob_jid}' type='chat'><body>hello bob</body></message>")).await;
    bob.wait_for("alice's message", |l| l.command == "PRIVMSG" && l.text() == "hello bob").await;
    bob.privmsg("alice", "hello alice").await;
    let reply = alice.wait_for("bob's reply", |e| e.name() == "message" && body(e) == "hello alice").await;
    assert!(stanza_id(&reply, GW).is_some(), "a private message carries the gateway's archive id: {reply:?}");
    carol.privmsg("alice", "carol here").await;
    alice.wait_for("carol's message", |e| e.name() == "message" && body(e) == "carol here").await;

    let (with_bob, reply) = alice.mam(GW, &[("with", &bob_jid)], "<max>10</max>").await;
    assert_eq!(reply.attr("type"), Some("result"), "{reply:?}");
    let seen: Vec<(Option<&str>, Option<&str>, String)> = with_bob.iter().map(|a| (a.message.attr("from"), a.message.attr("to"), a.body())).collect();
    assert_eq!(
        seen,
        [(Some("alice@localhost"), Some(bob_jid.as_str()), "hello bob".to_owned()), (Some(bob_jid.as_str()), Some("alice@localhost"), "hello alice".to_owned())]
    );
    assert_eq!(with_bob[1].id, stanza_id(&reply_of(&alice, "hello alice"), GW).unwrap());
    let (all, _) = alice.mam(GW, &[], "<max>10</max>").await;
    assert_eq!(all.iter().map(|a| a.body()).collect::<Vec<_>>(), ["hello bob", "hello alice", "carol here"]);
    let (to_contact, _) = alice.mam(&carol_jid, &[], "").await;
    assert_eq!(to_contact.iter().map(|a| a.body()).collect::<Vec<_>>(), ["carol here"], "the contact's own JID is its archive too");
}

/// The message with `text` that `client` received.
fn reply_of(client: &Client, text: &str) -> Element {
    client.seen.iter().find(|e| e.name() == "message" && body(e) == text).cloned().expect("the message was received")
}

on_each_server!(archive_queries_are_discoverable_and_bad_ones_get_errors);
async fn archive_queries_are_discoverable_and_bad_ones_get_errors(kind: ServerKind) {
    let server = XmppServer::start(kind);
    let ircd = Ngircd::start(false);
    let _gateway = Gateway::start_irc(&server, &ircd, None);
    let mut alice = server.client("alice", "localhost").await;
    let r = room("#disco");
    for to in [GW, r.as_str()] {
        let info = alice.iq_raw("get", Some(to), "<query xmlns='http://jabber.org/protocol/disco#info'/>").await;
        let features: Vec<&str> = info.get_child("query", "http://jabber.org/protocol/disco#info").unwrap().children().filter_map(|f| f.attr("var")).collect();
        assert!(features.contains(&NS_MAM) && features.contains(&NS_SID), "{to}: {features:?}");
    }
    let form = alice.iq_raw("get", Some(&r), &format!("<query xmlns='{NS_MAM}'/>")).await;
    assert!(form.get_child("query", NS_MAM).and_then(|q| q.get_child("x", "jabber:x:data")).is_some(), "{form:?}");
    let (_, unknown_id) = alice.mam(&r, &[], "<after>not-an-id</after>").await;
    assert_eq!(error_condition(&unknown_id).as_deref(), Some("item-not-found"));
    let (_, bad_time) = alice.mam(&r, &[("start", "yesterday")], "").await;
    assert_eq!(error_condition(&bad_time).as_deref(), Some("bad-request"));
    assert!(error_text(&bad_time).contains("start"), "{}", error_text(&bad_time));
    let (_, nowhere) = alice.mam(&format!("alice\\40example.org@{GW}"), &[], "").await;
    assert_eq!(error_condition(&nowhere).as_deref(), Some("service-unavailable"));
    let (empty, reply) = alice.mam(&r, &[], "<max>10</max><before/>").await;
    assert!(empty.is_empty());
    assert_eq!(mam_fin(&reply), (true, None, None));
}

on_each_server!(unregistering_deletes_the_users_archive);
async fn unregistering_deletes_the_users_archive(kind: ServerKind) {
    let server = XmppServer::start(kind);
    let ircd = Ngircd::start(false);
    let _gateway = Gateway::start_irc(&server, &ircd, None);
    let mut alice = server.client("alice", "localhost").await;
    let registered = alice.iq("set", &register_form(&[("irc_nick", "alice")])).await;
    assert_eq!(registered.attr("type"), Some("result"), "{registered:?}");
    let r = room("#gone");
    join(&mut alice, &r, "alice").await;
    alice.send_raw(&format!("<message to='{r}' type='groupchat'><body>remember me</body></message>")).await;
    alice.wait_for("the echo", |e| e.name() == "message" && body(e) == "remember me").await;
    let (kept, _) = alice.mam(&r, &[], "").await;
    assert_eq!(kept.len(), 1);
    let removed = alice.iq("set", "<query xmlns='jabber:iq:register'><remove/></query>").await;
    assert_eq!(removed.attr("type"), Some("result"), "{removed:?}");
    let (after, reply) = alice.mam(&r, &[], "").await;
    assert_eq!(reply.attr("type"), Some("result"));
    assert!(after.is_empty(), "the archive went with the registration: {after:?}");
}

const COMMANDS: &str = "http://jabber.org/protocol/commands";

/// Sets the room's `persistent` through its `configure` command (execute, then submit);
/// returns the value the form showed before.
async fn set_always_on(client: &mut Client, room: &str, on: bool) -> bool {
    let executing = client.iq_raw("set", Some(room), &format!("<command xmlns='{COMMANDS}' node='configure' action='execute'/>")).await;
    let command = executing.get_child("command", COMMANDS).unwrap_or_else(|| panic!("no command form: {executing:?}"));
    let session = command.attr("sessionid").expect("a session id").to_owned();
    assert!(command.get_child("x", "jabber:x:data").is_some(), "a form");
    let was = form_value(command, "persistent").as_deref() == Some("1");
    let value = if on { "1" } else { "0" };
    let done = client
        .iq_raw(
            "set",
            Some(room),
            &format!(
                "<command xmlns='{COMMANDS}' node='configure' sessionid='{session}'><x xmlns='jabber:x:data' type='submit'>\
                 <field var='persistent'><value>{value}</value></field></x></command>"
            ),
        )
        .await;
    assert_eq!(done.get_child("command", COMMANDS).and_then(|c| c.attr("status")), Some("completed"), "{done:?}");
    was
}

fn room_features(info: &Element) -> Vec<String> {
    info.get_child("query", "http://jabber.org/protocol/disco#info").unwrap().children().filter_map(|f| f.attr("var")).map(str::to_owned).collect()
}

/// Whether the IRC client sees `nick` leave (PART or QUIT) within `within`.
async fn sees_leave(irc: &mut testkit::irc::IrcClient, nick: &str, within: std::time::Duration) -> bool {
    irc.receives_within(within, |l| (l.command == "PART" || l.command == "QUIT") && l.prefix_nick.as_deref() == Some(nick)).await
}

on_each_server!(an_always_on_channel_is_archived_while_the_user_is_away_also_across_a_kill_9);
/// Bouncer mode: with the room always on, the gateway stays in the channel while the
/// user is offline; the 20 lines said meanwhile come back from the archive (after the
/// last id the client saw, none twice), the room is there at once on rejoining (no IRC
/// JOIN); and after a kill -9 the restarted gateway joins the channel again by itself.
async fn an_always_on_channel_is_archived_while_the_user_is_away_also_across_a_kill_9(kind: ServerKind) {
    let server = XmppServer::start(kind);
    let ircd = Ngircd::start(false);
    let mut gateway = Gateway::start_irc(&server, &ircd, None);
    let mut alice = server.client("alice", "localhost").await;
    let registered = alice.iq("set", &register_form(&[("irc_nick", "alice")])).await;
    assert_eq!(registered.attr("type"), Some("result"), "{registered:?}");
    let r = room("#bnc");
    join(&mut alice, &r, "alice").await;
    let disco = "<query xmlns='http://jabber.org/protocol/disco#info'/>";
    assert!(room_features(&alice.iq_raw("get", Some(&r), disco).await).contains(&"muc_temporary".to_owned()));
    assert!(!set_always_on(&mut alice, &r, true).await, "off by default");
    assert!(room_features(&alice.iq_raw("get", Some(&r), disco).await).contains(&"muc_persistent".to_owned()));
    let mut bob = ircd.client("bob").await;
    bob.join("#bnc").await;
    bob.privmsg("#bnc", "before").await;
    let seen = alice.wait_for("bob's line", |e| e.name() == "message" && body(e) == "before").await;
    let last_seen = stanza_id(&seen, &r).expect("a stanza-id");

    // Away: the client's connection closes; the gateway stays in the channel.
    drop(alice);
    assert!(!sees_leave(&mut bob, "alice", std::time::Duration::from_secs(3)).await, "the gateway left an always-on channel");
    for n in 0..20 {
        bob.privmsg("#bnc", &format!("while away {n}")).await;
    }
    let mut alice = server.client("alice", "localhost").await;
    alice.send_raw(&format!("<presence to='{r}/alice'><x xmlns='{MUC}'><history maxstanzas='0'/></x></presence>")).await;
    alice.wait_for("the room's subject", |e| e.name() == "message" && e.attr("from") == Some(r.as_str()) && e.get_child("subject", NS_CLIENT).is_some()).await;
    assert!(
        !bob.receives_within(std::time::Duration::from_millis(500), |l| l.command == "JOIN" && l.prefix_nick.as_deref() == Some("alice")).await,
        "rejoining an always-on room sends no IRC JOIN"
    );
    let (missed, reply) = alice.mam(&r, &[], &format!("<max>100</max><after>{last_seen}</after>")).await;
    let bodies: Vec<String> = missed.iter().map(Archived::body).collect();
    assert_eq!(bodies, (0..20).map(|n| format!("while away {n}")).collect::<Vec<_>>());
    assert!(mam_fin(&reply).0);
    let last_seen = missed.last().unwrap().id.clone();

    // Away again, 20 more lines, then kill -9 (once sled has flushed them: half a second).
    drop(alice);
    assert!(!sees_leave(&mut bob, "alice", std::time::Duration::from_secs(3)).await);
    for n in 0..20 {
        bob.privmsg("#bnc", &format!("before the kill {n}")).await;
    }
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    gateway.kill_9();
    bob.wait_for("the gateway's connection gone", |l| l.command == "QUIT" && l.prefix_nick.as_deref() == Some("alice")).await;
    gateway.spawn();
    bob.wait_for("the restarted gateway back in the channel", |l| l.command == "JOIN" && l.prefix_nick.as_deref() == Some("alice")).await;
    bob.privmsg("#bnc", "after the restart").await;
    let mut alice = server.client("alice", "localhost").await;
    let (missed, _) = alice.mam(&r, &[], &format!("<max>100</max><after>{last_seen}</after>")).await;
    let bodies: Vec<String> = missed.iter().map(Archived::body).collect();
    let mut expected: Vec<String> = (0..20).map(|n| format!("before the kill {n}")).collect();
    expected.push("after the restart".into());
    // The line after the restart is archived once the gateway has read it: wait for it.
    let bodies = if bodies.len() < expected.len() {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        alice.mam(&r, &[], &format!("<max>100</max><after>{last_seen}</after>")).await.0.iter().map(Archived::body).collect()
    } else {
        bodies
    };
    assert_eq!(bodies, expected, "exactly the lines said while away, once each");

    // Turned off while nobody is in it: the gateway leaves the channel.
    assert!(set_always_on(&mut alice, &r, false).await);
    assert!(sees_leave(&mut bob, "alice", std::time::Duration::from_secs(10)).await, "turned off, the channel is left");
}

on_each_server!(a_join_asking_for_history_gets_it_from_the_archive_between_presences_and_subject);
async fn a_join_asking_for_history_gets_it_from_the_archive_between_presences_and_subject(kind: ServerKind) {
    let server = XmppServer::start(kind);
    let ircd = Ngircd::start(false);
    let _gateway = Gateway::start_irc(&server, &ircd, None);
    let mut alice = server.client("alice", "localhost").await;
    let r = room("#hist2");
    join(&mut alice, &r, "alice").await;
    let mut bob = ircd.client("bob").await;
    bob.join("#hist2").await;
    for n in 0..10 {
        bob.privmsg("#hist2", &format!("old {n}")).await;
    }
    alice.wait_for("the last line", |e| e.name() == "message" && body(e) == "old 9").await;
    // A second client of alice's joins asking for the last 3 lines.
    let mut phone = server.client_as("alice", "localhost", "phone").await;
    phone.send_raw(&format!("<presence to='{r}/alice'><x xmlns='{MUC}'><history maxstanzas='3'/></x></presence>")).await;
    let subject = phone.wait_for("the subject", |e| e.name() == "message" && e.get_child("subject", NS_CLIENT).is_some()).await;
    let messages: Vec<&Element> = phone.seen.iter().filter(|e| e.name() == "message").collect();
    let history: Vec<String> = messages.iter().filter(|e| e.get_child("body", NS_CLIENT).is_some()).map(|e| body(e)).collect();
    assert_eq!(history, ["old 7", "old 8", "old 9"]);
    let first = messages.iter().find(|e| body(e) == "old 7").unwrap();
    assert!(first.get_child("delay", "urn:xmpp:delay").is_some(), "history carries its time: {first:?}");
    assert!(stanza_id(first, &r).is_some());
    let own = phone.seen.iter().position(|e| e.name() == "presence" && e.attr("from") == Some(&format!("{r}/alice"))).unwrap();
    let first_line = phone.seen.iter().position(|e| e.name() == "message" && body(e) == "old 7").unwrap();
    let subject_at = phone.seen.iter().position(|e| *e == subject).unwrap();
    assert!(own < first_line && first_line < subject_at, "presences, then history, then the subject");
}

on_each_server!(users_in_one_channel_share_each_lines_id_and_each_sees_only_what_they_got);
/// A line two users of the gateway get (each through their own IRC connection) is
/// archived once, under one id both live copies carry; each user's archive holds what
/// they got, from when they got it.
async fn users_in_one_channel_share_each_lines_id_and_each_sees_only_what_they_got(kind: ServerKind) {
    let server = XmppServer::start(kind);
    let ircd = Ngircd::start(false);
    let _gateway = Gateway::start_irc(&server, &ircd, None);
    let r = room("#shared");
    let mut alice = server.client("alice", "localhost").await;
    join(&mut alice, &r, "alice").await;
    let mut carol = ircd.client("carol").await;
    carol.join("#shared").await;
    carol.privmsg("#shared", "before bob").await;
    alice.wait_for("carol's first line", |e| e.name() == "message" && body(e) == "before bob").await;

    let mut bob = server.client("bob", "localhost").await;
    join(&mut bob, &r, "bobby").await;
    alice.wait_for("bobby's arrival", |e| e.name() == "presence" && e.attr("from") == Some(&format!("{r}/bobby"))).await;
    carol.privmsg("#shared", "for both").await;
    let to_alice = alice.wait_for("the line", |e| e.name() == "message" && body(e) == "for both").await;
    let to_bob = bob.wait_for("the line", |e| e.name() == "message" && body(e) == "for both").await;
    assert_eq!(stanza_id(&to_alice, &r), stanza_id(&to_bob, &r), "one line, one id");
    alice.send_raw(&format!("<message to='{r}' type='groupchat'><body>from alice</body></message>")).await;
    let echo = alice.wait_for("the echo", |e| e.name() == "message" && body(e) == "from alice").await;
    let relayed = bob.wait_for("alice's line through IRC", |e| e.name() == "message" && body(e) == "from alice").await;
    assert_eq!(stanza_id(&echo, &r), stanza_id(&relayed, &r), "the sender's reflection and the others' copy share the id");

    let bodies = |archived: &[Archived]| archived.iter().map(Archived::body).collect::<Vec<_>>();
    let (of_alice, _) = alice.mam(&r, &[], "<max>10</max>").await;
    assert_eq!(bodies(&of_alice), ["before bob", "for both", "from alice"]);
    let (of_bob, _) = bob.mam(&r, &[], "<max>10</max>").await;
    assert_eq!(bodies(&of_bob), ["for both", "from alice"], "bob's archive starts when he was there");
    assert_eq!(of_alice[1].id, of_bob[0].id);
}

/// ngIRCd compares names as ASCII (`CASEMAPPING=ascii`): `#ops[` and `#ops{` are two
/// channels there, and the users of one never read the other's lines in the archive
/// (RFC 1459 folding, which makes them one, is not the archive's).
#[tokio::test]
async fn channels_an_ascii_server_tells_apart_keep_apart_archives() {
    let server = XmppServer::start(ServerKind::Prosody);
    let ircd = Ngircd::start(false);
    let _gateway = Gateway::start_irc(&server, &ircd, None);
    let (square, curly) = (room("#ops["), room("#ops{"));
    let mut alice = server.client("alice", "localhost").await;
    join(&mut alice, &square, "alice").await;
    let mut bob = server.client("bob", "localhost").await;
    join(&mut bob, &curly, "bob").await;
    let mut carol = ircd.client("carol").await;
    carol.join("#ops[").await;
    carol.join("#ops{").await;
    // One at a time, each delivered before the next is said: the lines of the two
    // channels alternate in the order the gateway archives them.
    for n in 0..3 {
        let (square_line, curly_line) = (format!("square {n}"), format!("curly {n}"));
        carol.privmsg("#ops[", &square_line).await;
        alice.wait_for("the line of #ops[", |e| e.name() == "message" && body(e) == square_line).await;
        carol.privmsg("#ops{", &curly_line).await;
        bob.wait_for("the line of #ops{", |e| e.name() == "message" && body(e) == curly_line).await;
    }
    let bodies = |archived: &[Archived]| archived.iter().map(Archived::body).collect::<Vec<_>>();
    let (of_alice, _) = alice.mam(&square, &[], "<max>10</max>").await;
    assert_eq!(bodies(&of_alice), ["square 0", "square 1", "square 2"]);
    let (of_bob, _) = bob.mam(&curly, &[], "<max>10</max>").await;
    assert_eq!(bodies(&of_bob), ["curly 0", "curly 1", "curly 2"]);
}
