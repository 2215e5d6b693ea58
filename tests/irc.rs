//! The IRC bridge against a real ngIRCd and a real XMPP server, each test on Prosody and
//! on ejabberd: channels as MUC rooms, IRC users as JIDs, both ways. IRC-side peers are
//! raw-socket clients in the test.

use std::time::{Duration, Instant};

use minidom::Element;
use testkit::irc::Ngircd;
use testkit::*;

const MUC: &str = "http://jabber.org/protocol/muc";
const MUC_USER: &str = "http://jabber.org/protocol/muc#user";

struct Setup {
    server: XmppServer,
    ircd: Ngircd,
    gateway: Gateway,
}

fn setup_on(kind: ServerKind) -> Setup {
    let server = XmppServer::start(kind);
    let ircd = Ngircd::start(false);
    let gateway = Gateway::start_irc(&server, &ircd, None);
    Setup { server, ircd, gateway }
}

/// `#chan%127.0.0.1@gw.localhost`
fn room(channel: &str) -> String {
    format!("{channel}%127.0.0.1@{GW}")
}

fn status_codes(stanza: &Element) -> Vec<String> {
    stanza
        .get_child("x", MUC_USER)
        .map(|x| x.children().filter(|c| c.name() == "status").filter_map(|c| c.attr("code")).map(str::to_owned).collect())
        .unwrap_or_default()
}

fn item_attr(stanza: &Element, attr: &str) -> Option<String> {
    stanza.get_child("x", MUC_USER)?.get_child("item", MUC_USER)?.attr(attr).map(str::to_owned)
}

fn body(stanza: &Element) -> Option<String> {
    stanza.get_child("body", NS_CLIENT).map(|b| b.text())
}

fn is_presence_from(stanza: &Element, from: &str) -> bool {
    stanza.name() == "presence" && stanza.attr("from") == Some(from)
}

/// Joins `room/nick` and waits for the self-presence (status 110); returns it.
async fn join(client: &mut Client, room: &str, nick: &str) -> Element {
    client.send_raw(&format!("<presence to='{room}/{nick}'><x xmlns='{MUC}'/></presence>")).await;
    client
        .wait_for("the self-presence", |e| {
            e.name() == "presence" && e.attr("from").is_some_and(|f| f.starts_with(room)) && status_codes(e).contains(&"110".into())
        })
        .await
}

/// Waits for the subject that ends the join sequence.
async fn wait_subject(client: &mut Client, room: &str) -> Element {
    client
        .wait_for("the room subject", |e| {
            e.name() == "message" && e.attr("from").is_some_and(|f| f.starts_with(room)) && e.get_child("subject", NS_CLIENT).is_some()
        })
        .await
}

async fn groupchat(client: &mut Client, room: &str, text: &str) {
    client.send_raw(&format!("<message to='{room}' type='groupchat'><body>{text}</body></message>")).await;
}

on_each_server!(join_talk_both_ways_with_roles_actions_and_notices);
async fn join_talk_both_ways_with_roles_actions_and_notices(kind: ServerKind) {
    let s = setup_on(kind);
    let mut bob = s.ircd.client("bob").await;
    bob.join("#talk").await;
    let mut alice = s.server.client("alice", "localhost").await;
    let r = room("#talk");

    alice.send_raw(&format!("<presence to='{r}/alice'><x xmlns='{MUC}'/></presence>")).await;
    let bob_presence = alice.wait_for("bob's occupant presence", |e| is_presence_from(e, &format!("{r}/bob"))).await;
    assert_eq!(item_attr(&bob_presence, "role").as_deref(), Some("moderator"), "bob opened the channel: @");
    assert_eq!(item_attr(&bob_presence, "affiliation").as_deref(), Some("admin"));
    let me = alice.wait_for("the self-presence", |e| is_presence_from(e, &format!("{r}/alice"))).await;
    assert!(status_codes(&me).contains(&"110".into()), "{me:?}");
    assert!(!status_codes(&me).contains(&"210".into()), "the nick was not changed");
    wait_subject(&mut alice, &r).await;
    bob.wait_for("alice's JOIN", |l| l.command == "JOIN" && l.prefix_nick.as_deref() == Some("alice")).await;

    // IRC -> XMPP
    bob.privmsg("#talk", "hello from irc").await;
    let m = alice.wait_for("bob's message", |e| body(e).as_deref() == Some("hello from irc")).await;
    assert_eq!(m.attr("type"), Some("groupchat"));
    assert_eq!(m.attr("from"), Some(format!("{r}/bob").as_str()));

    // XMPP -> IRC, with the MUC echo
    groupchat(&mut alice, &r, "hello from xmpp").await;
    let line = bob.wait_for("alice's PRIVMSG", |l| l.is_privmsg_to("#talk")).await;
    assert_eq!(line.text(), "hello from xmpp");
    assert_eq!(line.prefix_nick.as_deref(), Some("alice"));
    let echo = alice.wait_for("the echo", |e| body(e).as_deref() == Some("hello from xmpp")).await;
    assert_eq!(echo.attr("from"), Some(format!("{r}/alice").as_str()));

    // /me both ways, NOTICE shown, formatting stripped
    groupchat(&mut alice, &r, "/me waves").await;
    let line = bob.wait_for("the ACTION", |l| l.is_privmsg_to("#talk")).await;
    assert_eq!(line.text(), "\u{1}ACTION waves\u{1}");
    bob.send_line("PRIVMSG #talk :\u{1}ACTION dances\u{1}").await;
    alice.wait_for("bob's action", |e| body(e).as_deref() == Some("/me dances")).await;
    bob.send_line("NOTICE #talk :\u{2}bold\u{2} and \u{3}4red\u{3} notice").await;
    alice.wait_for("bob's notice, plain", |e| body(e).as_deref() == Some("bold and red notice")).await;

    // A figure, not an assertion: XMPP client -> gateway -> IRC -> IRC client -> back.
    let mut round_trips = Vec::new();
    for i in 0..50 {
        let started = Instant::now();
        groupchat(&mut alice, &r, &format!("ping {i}")).await;
        bob.wait_for("the ping", |l| l.is_privmsg_to("#talk") && l.text() == format!("ping {i}")).await;
        bob.privmsg("#talk", &format!("pong {i}")).await;
        alice.wait_for("the pong", |e| body(e) == Some(format!("pong {i}"))).await;
        round_trips.push(started.elapsed());
    }
    round_trips.sort();
    eprintln!("figures: round trip XMPP -> IRC -> XMPP through {kind:?} and ngIRCd: p50 {:?}, max {:?}", round_trips[25], round_trips[49]);

    // A presence to another occupant nick is a nick change.
    alice.send_raw(&format!("<presence to='{r}/alicia'/>")).await;
    let renamed = alice.wait_for("the 303 for alice", |e| is_presence_from(e, &format!("{r}/alice")) && status_codes(e).contains(&"303".into())).await;
    assert_eq!(item_attr(&renamed, "nick").as_deref(), Some("alicia"));
    bob.wait_for("the NICK", |l| l.command == "NICK" && l.text() == "alicia").await;
}

on_each_server!(nick_collision_gives_110_and_210_with_the_nick_given);
async fn nick_collision_gives_110_and_210_with_the_nick_given(kind: ServerKind) {
    let s = setup_on(kind);
    let mut squatter = s.ircd.client("alice").await;
    squatter.join("#busy").await;
    let mut alice = s.server.client("alice", "localhost").await;
    let me = join(&mut alice, &room("#busy"), "alice").await;
    let codes = status_codes(&me);
    assert!(codes.contains(&"110".into()) && codes.contains(&"210".into()), "{codes:?}");
    assert_eq!(me.attr("from"), Some(format!("{}/alice_", room("#busy")).as_str()));
}

on_each_server!(part_nick_change_kick_and_modes_are_mapped);
async fn part_nick_change_kick_and_modes_are_mapped(kind: ServerKind) {
    let s = setup_on(kind);
    let mut bob = s.ircd.client("bob").await;
    bob.join("#ops").await;
    let mut carol = s.ircd.client("carol").await;
    carol.join("#ops").await;
    let mut alice = s.server.client("alice", "localhost").await;
    let r = room("#ops");
    join(&mut alice, &r, "alice").await;
    bob.wait_for("alice's JOIN", |l| l.command == "JOIN" && l.prefix_nick.as_deref() == Some("alice")).await;

    bob.send_line("MODE #ops +v carol").await;
    let voiced = alice.wait_for("carol voiced", |e| is_presence_from(e, &format!("{r}/carol")) && item_attr(e, "affiliation").as_deref() == Some("member")).await;
    assert_eq!(item_attr(&voiced, "role").as_deref(), Some("participant"));

    carol.send_line("NICK carla").await;
    let gone = alice.wait_for("carol's 303", |e| is_presence_from(e, &format!("{r}/carol")) && e.attr("type") == Some("unavailable")).await;
    assert!(status_codes(&gone).contains(&"303".into()));
    assert_eq!(item_attr(&gone, "nick").as_deref(), Some("carla"));
    alice.wait_for("carla's presence", |e| is_presence_from(e, &format!("{r}/carla")) && e.attr("type").is_none()).await;

    carol.send_line("PART #ops :bye all").await;
    let parted = alice.wait_for("carla's part", |e| is_presence_from(e, &format!("{r}/carla")) && e.attr("type") == Some("unavailable")).await;
    assert_eq!(parted.get_child("status", NS_CLIENT).map(|s| s.text()).as_deref(), Some("bye all"));

    bob.send_line("KICK #ops alice :behave").await;
    let kicked = alice.wait_for("the kick", |e| is_presence_from(e, &format!("{r}/alice")) && e.attr("type") == Some("unavailable")).await;
    let codes = status_codes(&kicked);
    assert!(codes.contains(&"307".into()) && codes.contains(&"110".into()), "{codes:?}");
    // Out of the room now: a message is refused.
    alice.send_raw(&format!("<message to='{r}' type='groupchat' id='after-kick'><body>x</body></message>")).await;
    let refused = alice.wait_for("the refusal", |e| e.attr("id") == Some("after-kick")).await;
    assert_eq!(error_condition(&refused).as_deref(), Some("not-acceptable"));
}

on_each_server!(topic_from_both_sides);
async fn topic_from_both_sides(kind: ServerKind) {
    let s = setup_on(kind);
    let mut bob = s.ircd.client("bob").await;
    bob.join("#topics").await;
    bob.send_line("TOPIC #topics :first topic").await;
    bob.wait_for("the topic set", |l| l.command == "TOPIC").await;
    let mut alice = s.server.client("alice", "localhost").await;
    let r = room("#topics");
    join(&mut alice, &r, "alice").await;
    let subject = wait_subject(&mut alice, &r).await;
    assert_eq!(subject.get_child("subject", NS_CLIENT).unwrap().text(), "first topic");

    bob.send_line("TOPIC #topics :second topic").await;
    let changed = alice.wait_for("the new subject", |e| e.get_child("subject", NS_CLIENT).is_some_and(|s| s.text() == "second topic")).await;
    assert_eq!(changed.attr("from"), Some(format!("{r}/bob").as_str()));

    alice.send_raw(&format!("<message to='{r}' type='groupchat'><subject>from xmpp</subject></message>")).await;
    let line = bob.wait_for("alice's TOPIC", |l| l.command == "TOPIC" && l.prefix_nick.as_deref() == Some("alice")).await;
    assert_eq!(line.text(), "from xmpp");
}

on_each_server!(formatting_and_characters_xml_forbids_arrive_cleaned_and_the_stream_stays_up);
/// Issue 9: one mIRC colour code in a topic used to kill the writer task (minidom panics
/// on characters XML forbids) and with it the component for every user.
async fn formatting_and_characters_xml_forbids_arrive_cleaned_and_the_stream_stays_up(kind: ServerKind) {
    let s = setup_on(kind);
    let mut bob = s.ircd.client("bob").await;
    bob.join("#dirty").await;
    bob.send_line("TOPIC #dirty :\u{3}04red\u{3} topic \u{2}bold\u{2}\u{7}").await;
    bob.wait_for("the topic set", |l| l.command == "TOPIC").await;
    let mut dave = s.ircd.client("dave").await;
    dave.join("#dirty").await;
    let mut erin = s.ircd.client("erin").await;
    erin.join("#dirty").await;
    let mut alice = s.server.client("alice", "localhost").await;
    let r = room("#dirty");
    join(&mut alice, &r, "alice").await;
    let subject = wait_subject(&mut alice, &r).await;
    assert_eq!(subject.get_child("subject", NS_CLIENT).unwrap().text(), "red topic bold");

    bob.privmsg("#dirty", "odd \u{FFFF} char \u{FFFE}").await;
    let odd = alice.wait_for("the message with U+FFFF", |e| body(e).is_some_and(|b| b.starts_with("odd"))).await;
    assert_eq!(body(&odd).as_deref(), Some("odd \u{FFFD} char \u{FFFD}"));
    bob.privmsg("#dirty", "after ffff").await;
    alice.wait_for("the next message", |e| body(e).as_deref() == Some("after ffff")).await;

    erin.send_line("PART #dirty :bye\u{7} \u{1f}now\u{1}").await;
    let parted = alice.wait_for("erin's part", |e| is_presence_from(e, &format!("{r}/erin")) && e.attr("type") == Some("unavailable")).await;
    assert_eq!(parted.get_child("status", NS_CLIENT).map(|s| s.text()).as_deref(), Some("bye now"));
    bob.privmsg("#dirty", "after part").await;
    alice.wait_for("the message after the part", |e| body(e).as_deref() == Some("after part")).await;

    bob.send_line("KICK #dirty dave :go\u{3}4,5 away\u{16}\u{0f}").await;
    let kicked = alice.wait_for("dave's kick", |e| is_presence_from(e, &format!("{r}/dave")) && e.attr("type") == Some("unavailable")).await;
    assert!(status_codes(&kicked).contains(&"307".into()), "{kicked:?}");
    assert_eq!(kicked.get_child("status", NS_CLIENT).map(|s| s.text()).as_deref(), Some("go away"));
    bob.privmsg("#dirty", "after kick").await;
    alice.wait_for("the message after the kick", |e| body(e).as_deref() == Some("after kick")).await;

    // Issue 10: every C0 control a real server relays, in each place a text stands; all
    // but the tab go (formatting codes and controls alike).
    let c0: String = (1u8..0x20).filter(|b| *b != b'\r' && *b != b'\n').map(char::from).collect();
    let sent = format!("x{c0}end");
    let cleaned = "x\tend";
    bob.send_line(&format!("TOPIC #dirty :{sent}")).await;
    let subject = wait_subject(&mut alice, &r).await;
    assert_eq!(subject.get_child("subject", NS_CLIENT).unwrap().text(), cleaned);
    bob.privmsg("#dirty", &sent).await;
    alice.wait_for("the message with every control", |e| body(e).as_deref() == Some(cleaned)).await;
    bob.send_line(&format!("NOTICE #dirty :n{sent}")).await;
    alice.wait_for("the notice with every control", |e| body(e).is_some_and(|b| b.ends_with(&format!("n{cleaned}")))).await;
    for (nick, line, what) in [("gina", "PART #dirty :{sent}", "part"), ("hank", "QUIT :{sent}", "quit"), ("ivan", "", "kick")] {
        let mut peer = s.ircd.client(nick).await;
        peer.join("#dirty").await;
        let from = format!("{r}/{nick}");
        alice.wait_for("the peer's arrival", |e| is_presence_from(e, &from) && e.attr("type").is_none()).await;
        if what == "kick" {
            bob.send_line(&format!("KICK #dirty {nick} :{sent}")).await;
        } else {
            peer.send_line(&line.replace("{sent}", &sent)).await;
        }
        let gone = alice.wait_for(what, |e| is_presence_from(e, &from) && e.attr("type") == Some("unavailable")).await;
        let status = gone.get_child("status", NS_CLIENT).map(|s| s.text()).unwrap_or_default();
        // ngIRCd quotes a QUIT reason.
        assert_eq!(status.trim_matches('"'), cleaned, "{what}");
    }
    bob.privmsg("#dirty", "after every control").await;
    alice.wait_for("the message after every control", |e| body(e).as_deref() == Some("after every control")).await;
    assert_eq!(s.gateway.connections(), 1, "the component connection never dropped; log:\n{}", s.gateway.log_text());
    assert!(!s.gateway.log_text().contains("panicked"), "{}", s.gateway.log_text());
}

on_each_server!(private_conversation_both_ways_and_quit_shows_offline);
async fn private_conversation_both_ways_and_quit_shows_offline(kind: ServerKind) {
    let s = setup_on(kind);
    let mut bob = s.ircd.client("bob").await;
    let mut alice = s.server.client("alice", "localhost").await;
    let bob_jid = format!("bob%127.0.0.1@{GW}");
    alice.send_raw(&format!("<message to='{bob_jid}' type='chat'><body>psst bob</body></message>")).await;
    let line = bob.wait_for("the private message", |l| l.is_privmsg_to("bob")).await;
    assert_eq!(line.text(), "psst bob");
    let alice_nick = line.prefix_nick.clone().unwrap();
    bob.privmsg(&alice_nick, "hi alice").await;
    let reply = alice.wait_for("bob's reply", |e| body(e).as_deref() == Some("hi alice")).await;
    assert_eq!(reply.attr("from"), Some(bob_jid.as_str()));
    assert_eq!(reply.attr("type"), Some("chat"));
    // Bob is a contact now: without a roster grant, he asks for a subscription, named.
    let request = alice.wait_for("bob's subscription request", |e| is_presence_from(e, &bob_jid) && e.attr("type") == Some("subscribe")).await;
    assert_eq!(request.get_child("nick", "http://jabber.org/protocol/nick").map(|n| n.text()).as_deref(), Some("bob"));

    // IRC shows a QUIT only to those who share a channel with the quitter.
    join(&mut alice, &room("#common"), "alice").await;
    bob.join("#common").await;
    bob.send_line("QUIT :gone fishing").await;
    let offline = alice.wait_for("bob offline", |e| is_presence_from(e, &bob_jid)).await;
    assert_eq!(offline.attr("type"), Some("unavailable"));
}

on_each_server!(a_private_message_through_the_room_goes_to_the_nick_and_replies_come_from_the_user_jid);
async fn a_private_message_through_the_room_goes_to_the_nick_and_replies_come_from_the_user_jid(kind: ServerKind) {
    let s = setup_on(kind);
    let mut bob = s.ircd.client("bob").await;
    bob.join("#pm").await;
    let mut alice = s.server.client("alice", "localhost").await;
    let r = room("#pm");
    join(&mut alice, &r, "alice").await;
    alice.send_raw(&format!("<message to='{r}/bob' type='chat'><body>via the room</body></message>")).await;
    let line = bob.wait_for("the private message", |l| l.is_privmsg_to("bob")).await;
    assert_eq!(line.text(), "via the room");
    bob.privmsg("alice", "answer").await;
    let reply = alice.wait_for("bob's answer", |e| body(e).as_deref() == Some("answer")).await;
    assert_eq!(reply.attr("from"), Some(format!("bob%127.0.0.1@{GW}").as_str()));

    // A resource is not a nick: one with a space would have made the line
    // `PRIVMSG bob REGISTER :...` (bob getting "REGISTER").
    alice.send_raw(&format!("<message to='{r}/bob REGISTER' type='chat' id='spaced'><body>hidden</body></message>")).await;
    let refused = alice.wait_for("the refusal", |e| e.attr("id") == Some("spaced") && e.attr("type") == Some("error")).await;
    assert_eq!(error_condition(&refused).as_deref(), Some("jid-malformed"), "{refused:?}");
    alice.send_raw(&format!("<message to='{r}/bob' type='chat'><body>after</body></message>")).await;
    let next = bob.wait_for("the next private message", |l| l.is_privmsg_to("bob")).await;
    assert_eq!(next.text(), "after");
}

on_each_server!(long_multibyte_messages_arrive_whole_and_injection_is_impossible);
async fn long_multibyte_messages_arrive_whole_and_injection_is_impossible(kind: ServerKind) {
    let s = setup_on(kind);
    let mut bob = s.ircd.client("bob").await;
    bob.join("#text").await;
    let mut alice = s.server.client("alice", "localhost").await;
    let r = room("#text");
    join(&mut alice, &r, "alice").await;
    bob.wait_for("alice's JOIN", |l| l.command == "JOIN").await;

    // 600+ bytes of two-, three- and four-byte characters (IRC servers strip trailing
    // spaces, so the message does not end with one).
    let long: String = "é€😀 ".repeat(61).trim_end().to_owned();
    assert!(long.len() > 600);
    groupchat(&mut alice, &r, &long).await;
    let mut received = String::new();
    while received.len() < long.len() {
        let line = bob.wait_for("a chunk", |l| l.is_privmsg_to("#text")).await;
        assert!(line.bytes.len() + 2 <= 512, "a line of {} bytes", line.bytes.len() + 2);
        received.push_str(line.text());
    }
    assert_eq!(received, long, "chunks must concatenate to the message, unbroken");

    // CR LF in a body never becomes a command of its own.
    // (XML cannot carry NUL at all; the unit tests of bridges/irc/src/text.rs cover it.)
    groupchat(&mut alice, &r, "hello&#13;&#10;QUIT :x&#13;PRIVMSG #text :boo&#10;").await;
    let texts = bob.collect_privmsgs("#text", 3, Duration::from_secs(5)).await;
    assert_eq!(texts, vec!["hello", "QUIT :x", "PRIVMSG #text :boo"]);
    assert!(!bob.receives_within(Duration::from_millis(500), |l| l.command == "QUIT").await, "alice quit");
    // Still in the room and talking.
    groupchat(&mut alice, &r, "still here").await;
    bob.wait_for("a later message", |l| l.is_privmsg_to("#text") && l.text() == "still here").await;
}

on_each_server!(a_latin1_line_from_irc_is_decoded);
async fn a_latin1_line_from_irc_is_decoded(kind: ServerKind) {
    let s = setup_on(kind);
    let mut bob = s.ircd.client("bob").await;
    bob.join("#latin").await;
    let mut alice = s.server.client("alice", "localhost").await;
    let r = room("#latin");
    join(&mut alice, &r, "alice").await;
    bob.wait_for("alice's JOIN", |l| l.command == "JOIN").await;
    bob.send_bytes(b"PRIVMSG #latin :caf\xe9 cr\xe8me\r\n").await;
    alice.wait_for("the Latin-1 message", |e| body(e).as_deref() == Some("café crème")).await;
}

on_each_server!(join_failures_give_muc_errors_with_the_servers_text);
async fn join_failures_give_muc_errors_with_the_servers_text(kind: ServerKind) {
    let s = setup_on(kind);
    let mut bob = s.ircd.client("bob").await;
    for (channel, mode) in [("#keyed", "+k sesame"), ("#invite", "+i"), ("#banned", "+b alice!*@*")] {
        bob.join(channel).await;
        bob.send_line(&format!("MODE {channel} {mode}")).await;
        bob.wait_for("the mode", |l| l.command == "MODE").await;
    }
    let mut alice = s.server.client("alice", "localhost").await;
    for (channel, condition) in [("#keyed", "not-authorized"), ("#invite", "registration-required"), ("#banned", "forbidden")] {
        let r = room(channel);
        alice.send_raw(&format!("<presence to='{r}/alice'><x xmlns='{MUC}'/></presence>")).await;
        let error = alice.wait_for("the join error", |e| is_presence_from(e, &format!("{r}/alice")) && e.attr("type") == Some("error")).await;
        assert_eq!(error_condition(&error).as_deref(), Some(condition), "{channel}: {error:?}");
        assert!(!error_text(&error).is_empty(), "{channel}: the server's text is missing");
    }
    // With the key, the join works.
    let r = room("#keyed");
    alice.send_raw(&format!("<presence to='{r}/alice'><x xmlns='{MUC}'><password>sesame</password></x></presence>")).await;
    alice.wait_for("the keyed join", |e| is_presence_from(e, &format!("{r}/alice")) && status_codes(e).contains(&"110".into())).await;
}

on_each_server!(a_message_to_a_room_the_user_is_not_in_is_not_acceptable);
async fn a_message_to_a_room_the_user_is_not_in_is_not_acceptable(kind: ServerKind) {
    let s = setup_on(kind);
    let mut alice = s.server.client("alice", "localhost").await;
    alice.send_raw(&format!("<message to='{}' type='groupchat' id='nope'><body>x</body></message>", room("#elsewhere"))).await;
    let reply = alice.wait_for("the refusal", |e| e.attr("id") == Some("nope")).await;
    assert_eq!(error_condition(&reply).as_deref(), Some("not-acceptable"));
}

on_each_server!(an_irc_server_that_refuses_the_connection_gives_a_clear_error);
async fn an_irc_server_that_refuses_the_connection_gives_a_clear_error(kind: ServerKind) {
    let server = XmppServer::start(kind);
    let nothing = free_port();
    let ircd = Ngircd::start(false);
    let gateway = Gateway::start_irc(&server, &ircd, None);
    drop(ircd); // stopped: 127.0.0.1 now refuses
    let _ = nothing;
    let mut alice = server.client("alice", "localhost").await;
    let r = room("#void");
    alice.send_raw(&format!("<presence to='{r}/alice'><x xmlns='{MUC}'/></presence>")).await;
    let error = alice.wait_for("the join error", |e| is_presence_from(e, &format!("{r}/alice")) && e.attr("type") == Some("error")).await;
    assert_eq!(error_condition(&error).as_deref(), Some("service-unavailable"));
    assert!(error_text(&error).contains("127.0.0.1"), "{}", error_text(&error));
    assert_eq!(gateway.connections(), 1);
}

on_each_server!(irc_server_killed_and_restarted_the_user_is_back_in_the_room);
async fn irc_server_killed_and_restarted_the_user_is_back_in_the_room(kind: ServerKind) {
    let s = setup_on(kind);
    let mut alice = s.server.client("alice", "localhost").await;
    let r = room("#phoenix");
    join(&mut alice, &r, "alice").await;
    s.ircd.stop();
    let down = alice.wait_for("the 332 presence", |e| is_presence_from(e, &format!("{r}/alice")) && e.attr("type") == Some("unavailable")).await;
    assert!(status_codes(&down).contains(&"332".into()), "{down:?}");
    let restarted = Instant::now();
    s.ircd.start_again();
    let back = alice
        .wait_for("the self-presence after rejoining", |e| {
            is_presence_from(e, &format!("{r}/alice")) && e.attr("type").is_none() && status_codes(e).contains(&"110".into())
        })
        .await;
    eprintln!("figures: back in the room {:?} after the IRC server restarted", restarted.elapsed());
    drop(back);
    let mut bob = s.ircd.client("bob").await;
    bob.join("#phoenix").await;
    groupchat(&mut alice, &r, "i am back").await;
    bob.wait_for("a message after the rejoin", |l| l.is_privmsg_to("#phoenix") && l.text() == "i am back").await;
}

on_each_server!(a_registered_password_is_sent_to_nickserv_where_the_network_runs_it_and_there_is_no_sasl);
async fn a_registered_password_is_sent_to_nickserv_where_the_network_runs_it_and_there_is_no_sasl(kind: ServerKind) {
    let server = XmppServer::start(kind);
    let ircd = Ngircd::start(false);
    let gateway = Gateway::start_irc_networks(
        &server,
        &format!("[irc.networks.\"127.0.0.1\"]\nport = {}\ntls = false\nflood_burst = 0\nnickserv = true\n", ircd.port),
    );
    // ngIRCd has no SASL and no services: a scripted NickServ is a client with that nick.
    let mut nickserv = ircd.client("NickServ").await;
    let mut alice = server.client("alice", "localhost").await;
    let set = alice.iq("set", &register_form(&[("irc_nick", "alicereg"), ("irc_password/127.0.0.1", "open-sesame")])).await;
    assert_eq!(set.attr("type"), Some("result"), "{set:?}");
    let me = join(&mut alice, &room("#reg"), "whatever").await;
    assert_eq!(me.attr("from"), Some(format!("{}/alicereg", room("#reg")).as_str()), "the registered nick wins");
    let line = nickserv.wait_for("IDENTIFY", |l| l.is_privmsg_to("NickServ")).await;
    assert_eq!(line.text(), "IDENTIFY open-sesame");
    assert_eq!(line.prefix_nick.as_deref(), Some("alicereg"));
    assert!(!gateway.log_text().contains("open-sesame"), "the password leaked into the log");
}

on_each_server!(no_password_goes_to_nickserv_where_the_network_is_not_said_to_run_it);
/// Issue 10: on a network without services anyone can hold the nick NickServ; a password
/// goes there as IDENTIFY only where the admin configured `nickserv = true`.
async fn no_password_goes_to_nickserv_where_the_network_is_not_said_to_run_it(kind: ServerKind) {
    let s = setup_on(kind);
    let mut nickserv = s.ircd.client("NickServ").await;
    let mut alice = s.server.client("alice", "localhost").await;
    let set = alice.iq("set", &register_form(&[("irc_nick", "alicereg"), ("irc_password/127.0.0.1", "open-sesame")])).await;
    assert_eq!(set.attr("type"), Some("result"), "{set:?}");
    join(&mut alice, &room("#reg"), "whatever").await;
    // The join is confirmed after the welcome, where IDENTIFY would have gone.
    let identify = nickserv.receives_within(Duration::from_secs(2), |l| l.is_privmsg_to("NickServ")).await;
    assert!(!identify, "a password went to whoever holds the nick NickServ");
}

on_each_server!(away_status_is_mirrored_on_irc);
async fn away_status_is_mirrored_on_irc(kind: ServerKind) {
    let s = setup_on(kind);
    let mut bob = s.ircd.client("bob").await;
    let mut alice = s.server.client("alice", "localhost").await;
    let r = room("#away");
    join(&mut alice, &r, "alice").await;
    alice.send_raw(&format!("<presence to='{r}/alice'><show>away</show><status>lunch</status></presence>")).await;
    // RPL_AWAY (301) answers a message to an away user.
    let mut seen = false;
    for _ in 0..20 {
        bob.privmsg("alice", "you there?").await;
        if bob.receives_within(Duration::from_millis(250), |l| l.command == "301").await {
            seen = true;
            break;
        }
    }
    assert!(seen, "no RPL_AWAY for alice");
}

on_each_server!(a_100_line_burst_reaches_a_flood_protected_server_completely);
async fn a_100_line_burst_reaches_a_flood_protected_server_completely(kind: ServerKind) {
    let server = XmppServer::start(kind);
    let fast = Ngircd::start(false);
    let throttled = Ngircd::start(true);
    let _gateway = Gateway::start_irc(&server, &fast, Some(&throttled));
    let mut bob = throttled.client("bob").await;
    bob.join("#flood").await;
    let mut alice = server.client("alice", "localhost").await;
    let r = format!("#flood%localhost@{GW}");
    join(&mut alice, &r, "alice").await;
    let lines: Vec<String> = (1..=100).map(|i| format!("line {i}")).collect();
    let started = Instant::now();
    groupchat(&mut alice, &r, &lines.join("&#10;")).await;
    let got = bob.collect_privmsgs("#flood", 100, Duration::from_secs(80)).await;
    eprintln!("figures: 100 lines through flood protection in {:?}", started.elapsed());
    assert_eq!(got, lines);
}

// Lines the rate limit held back when the connection dropped go out after the
// reconnection (they used to be cleared with the old connection's queue).
on_each_server!(lines_waiting_for_the_rate_limit_when_the_server_dies_are_sent_after_the_reconnection);
async fn lines_waiting_for_the_rate_limit_when_the_server_dies_are_sent_after_the_reconnection(kind: ServerKind) {
    let server = XmppServer::start(kind);
    let fast = Ngircd::start(false);
    // Network `localhost` has the gateway's default rate limit: 4 lines, then 2 a second.
    let limited = Ngircd::start(false);
    let gateway = Gateway::start_irc(&server, &fast, Some(&limited));
    let mut bob = limited.client("bob").await;
    bob.join("#held").await;
    let mut alice = server.client("alice", "localhost").await;
    let r = room_on_localhost("#held");
    join(&mut alice, &r, "alice").await;
    let lines: Vec<String> = (1..=12).map(|i| format!("held {i}")).collect();
    groupchat(&mut alice, &r, &lines.join("&#10;")).await;
    // The burst and one more; the next line is due half a second later.
    let mut got = bob.collect_privmsgs("#held", 5, Duration::from_secs(10)).await;
    assert_eq!(got, lines[..5], "before the stop");
    limited.stop();
    let me = format!("{r}/alice");
    let gone = |e: &Element| is_presence_from(e, &me) && e.attr("type") == Some("unavailable");
    alice.wait_for("the presence of the lost connection", gone).await;
    // The gateway's attempts fail on the stopped server, each after twice the delay of
    // the one before (0.5 s, jitter +-25%): after the third, the next is at least 3 s
    // away, time enough for Bob to be back in the channel before the gateway.
    let refused = ["IRC connection lost; reconnecting", "Connection refused"];
    gateway.wait_log("three refused reconnections", &refused, 2).await;
    limited.start_again();
    let mut bob = limited.client("bob").await;
    bob.join("#held").await;
    alice
        .wait_for("the self-presence after rejoining", |e| {
            is_presence_from(e, &me) && e.attr("type").is_none() && status_codes(e).contains(&"110".into())
        })
        .await;
    got.extend(bob.collect_privmsgs("#held", 7, Duration::from_secs(20)).await);
    assert_eq!(got, lines, "every line exactly once, in order");
}

// ---------------------------------------------------------------------------------------
// TLS, server notices, the connection's life cycle, isolation from a broken server
// ---------------------------------------------------------------------------------------

/// `#chan%localhost@gw.localhost`: network `localhost` (TLS, or the fake server).
fn room_on_localhost(channel: &str) -> String {
    format!("{channel}%localhost@{GW}")
}

/// How many IRC/email sessions the gateway has seen end so far (its log).
fn sessions_ended(gateway: &Gateway) -> usize {
    gateway.log_text().matches("session ended").count()
}

/// Waits until the gateway has handled the end of a session beyond the `before` ended
/// ones. No pause after it: a join that reaches a session which has already decided to
/// end comes back in its `Ended` and starts a new one (see
/// `leaving_the_last_channel_and_joining_again_at_once_gets_the_user_back_in`).
async fn wait_session_ended(gateway: &Gateway, before: usize) {
    gateway.wait_log("the end of the IRC session", &["session ended"], before).await;
}

/// The network section for `ircd`'s TLS port as network `localhost`, with its certificate
/// trusted as a root or not.
fn tls_network(ircd: &Ngircd, trust_the_certificate: bool) -> String {
    let mut section = format!("[irc.networks.\"localhost\"]\nport = {}\ntls = true\nflood_burst = 0\n", ircd.port);
    if trust_the_certificate {
        section.push_str(&format!("ca_file = \"{}\"\n", ircd.cert_path().display()));
    }
    section
}

on_each_server!(tls_with_the_certificate_trusted_joins_and_talks_both_ways);
async fn tls_with_the_certificate_trusted_joins_and_talks_both_ways(kind: ServerKind) {
    let server = XmppServer::start(kind);
    let ircd = Ngircd::start_tls();
    let _gateway = Gateway::start_irc_networks(&server, &tls_network(&ircd, true));
    // bob is a plain client on the same server (its plain port).
    let mut bob = ircd.client("bob").await;
    bob.join("#tls").await;
    let mut alice = server.client("alice", "localhost").await;
    let r = room_on_localhost("#tls");

    let started = Instant::now();
    let me = join(&mut alice, &r, "alice").await;
    eprintln!("figures: joined a room over TLS (connect, handshake, registration, JOIN) in {:?}", started.elapsed());
    assert_eq!(me.attr("from"), Some(format!("{r}/alice").as_str()));
    bob.wait_for("alice's JOIN", |l| l.command == "JOIN" && l.prefix_nick.as_deref() == Some("alice")).await;
    assert_eq!(ircd.registered_over_tls("alice"), Some(true), "alice's IRC connection is not the TLS one");
    assert_eq!(ircd.registered_over_tls("bob"), Some(false));

    groupchat(&mut alice, &r, "over tls").await;
    let line = bob.wait_for("alice's PRIVMSG", |l| l.is_privmsg_to("#tls")).await;
    assert_eq!((line.prefix_nick.as_deref(), line.text()), (Some("alice"), "over tls"));
    bob.privmsg("#tls", "and back").await;
    let m = alice.wait_for("bob's message", |e| body(e).as_deref() == Some("and back")).await;
    assert_eq!(m.attr("from"), Some(format!("{r}/bob").as_str()));
}

on_each_server!(tls_without_the_ca_file_refuses_the_unverifiable_certificate);
async fn tls_without_the_ca_file_refuses_the_unverifiable_certificate(kind: ServerKind) {
    let server = XmppServer::start(kind);
    let ircd = Ngircd::start_tls();
    let gateway = Gateway::start_irc_networks(&server, &tls_network(&ircd, false));
    let mut alice = server.client("alice", "localhost").await;
    let r = room_on_localhost("#tls");
    alice.send_raw(&format!("<presence to='{r}/alice'><x xmlns='{MUC}'/></presence>")).await;
    let error = alice
        .wait_for("the join error", |e| is_presence_from(e, &format!("{r}/alice")) && e.attr("type") == Some("error"))
        .await;
    assert_eq!(error_condition(&error).as_deref(), Some("service-unavailable"), "{error:?}");
    let text = error_text(&error);
    assert!(text.contains("TLS") && text.contains("certificate"), "the error does not say why: {text}");
    eprintln!("the join error says: {text}");
    // The handshake failed before anything IRC was said: no alice on the server.
    assert_eq!(ircd.registered_over_tls("alice"), None, "alice registered although the certificate is unverifiable");
    assert_eq!(gateway.connections(), 1);
}

on_each_server!(a_server_notice_comes_from_the_server_jid);
async fn a_server_notice_comes_from_the_server_jid(kind: ServerKind) {
    let s = setup_on(kind);
    let mut alice = s.server.client("alice", "localhost").await;
    let server_jid = format!("127.0.0.1@{GW}");
    // A message to the server's JID is a raw IRC command on alice's own connection;
    // ngIRCd answers HELP (no topic) with NOTICEs from irc.localhost.
    alice.send_raw(&format!("<message to='{server_jid}' type='chat'><body>HELP</body></message>")).await;
    let notice = alice
        .wait_for("ngIRCd's HELP notice", |e| {
            e.name() == "message" && body(e).is_some_and(|b| b.starts_with("This is ngIRCd"))
        })
        .await;
    assert_eq!(notice.attr("from"), Some(server_jid.as_str()), "{notice:?}");
    assert_eq!(notice.attr("type"), Some("chat"));
    // The rest of the help text follows, from the same JID.
    let more = alice.wait_for("more of the help", |e| body(e).is_some_and(|b| b.contains("HELP COMMANDS"))).await;
    assert_eq!(more.attr("from"), Some(server_jid.as_str()));
    // A notice from a user, in private, comes from the user's JID, not the server's.
    let mut bob = s.ircd.client("bob").await;
    bob.send_line("NOTICE alice :from a person").await;
    let from_bob = alice.wait_for("bob's notice", |e| body(e).as_deref() == Some("from a person")).await;
    assert_eq!(from_bob.attr("from"), Some(format!("bob%127.0.0.1@{GW}").as_str()));
    // A raw command answered with numerics only (351 RPL_VERSION): shown as the server's.
    alice.send_raw(&format!("<message to='{server_jid}' type='chat'><body>VERSION</body></message>")).await;
    let version = alice.wait_for("the VERSION reply", |e| body(e).is_some_and(|b| b.contains("ngircd"))).await;
    assert_eq!(version.attr("from"), Some(server_jid.as_str()), "{version:?}");
}

on_each_server!(leaving_the_last_channel_closes_the_irc_connection_unless_a_private_conversation_remains);
async fn leaving_the_last_channel_closes_the_irc_connection_unless_a_private_conversation_remains(kind: ServerKind) {
    let s = setup_on(kind);
    let mut bob = s.ircd.client("bob").await;
    bob.join("#a").await;
    let mut alice = s.server.client("alice", "localhost").await;
    let r = room("#a");
    join(&mut alice, &r, "alice").await;
    bob.wait_for("alice's JOIN", |l| l.command == "JOIN" && l.prefix_nick.as_deref() == Some("alice")).await;

    let ended = sessions_ended(&s.gateway);
    alice.send_raw(&format!("<presence to='{r}/alice' type='unavailable'/>")).await;
    let gone = alice
        .wait_for("alice's own unavailable presence", |e| is_presence_from(e, &format!("{r}/alice")) && e.attr("type") == Some("unavailable"))
        .await;
    assert!(status_codes(&gone).contains(&"110".into()), "{gone:?}");
    // The PART (with its reason) goes out before the QUIT; after the PART, bob shares no
    // channel with alice, so IRC does not show him the QUIT: he asks whether she is there.
    bob.wait_for("alice's PART", |l| l.command == "PART" && l.prefix_nick.as_deref() == Some("alice")).await;
    wait_session_ended(&s.gateway, ended).await;
    bob.send_line("WHOIS alice").await;
    bob.wait_for("no such nick alice", |l| l.command == "401").await;

    // Back in (a new connection), then a private conversation with bob: leaving the
    // channel now only PARTs, and the conversation goes on.
    join(&mut alice, &r, "alice").await;
    bob.wait_for("alice's new JOIN", |l| l.command == "JOIN" && l.prefix_nick.as_deref() == Some("alice")).await;
    alice.send_raw(&format!("<message to='bob%127.0.0.1@{GW}' type='chat'><body>just us</body></message>")).await;
    bob.wait_for("the private message", |l| l.is_privmsg_to("bob") && l.text() == "just us").await;
    alice.send_raw(&format!("<presence to='{r}/alice' type='unavailable'/>")).await;
    bob.wait_for("alice's PART", |l| l.command == "PART" && l.prefix_nick.as_deref() == Some("alice")).await;
    assert!(
        !bob.receives_within(Duration::from_secs(1), |l| l.command == "QUIT" && l.prefix_nick.as_deref() == Some("alice")).await,
        "alice quit although she has a private conversation"
    );
    bob.privmsg("alice", "still there?").await;
    alice.wait_for("bob's private reply", |e| body(e).as_deref() == Some("still there?")).await;
}

on_each_server!(leaving_the_last_channel_and_joining_again_at_once_gets_the_user_back_in);
async fn leaving_the_last_channel_and_joining_again_at_once_gets_the_user_back_in(kind: ServerKind) {
    // What a client does to "rejoin" a room: unavailable, then a new join, back to back.
    // Whether the join reaches the session before it ends is a race: five rounds make a
    // lost join show up almost surely, and a correct gateway passes all of them.
    let s = setup_on(kind);
    let mut bob = s.ircd.client("bob").await;
    bob.join("#again").await;
    let mut alice = s.server.client("alice", "localhost").await;
    let r = room("#again");
    let me = format!("{r}/alice");
    join(&mut alice, &r, "alice").await;
    bob.wait_for("alice's JOIN", |l| l.command == "JOIN" && l.prefix_nick.as_deref() == Some("alice")).await;
    for round in 0..5 {
        alice
            .send_raw(&format!("<presence to='{me}' type='unavailable'/><presence to='{me}'><x xmlns='{MUC}'/></presence>"))
            .await;
        alice.wait_for("alice's own unavailable presence", |e| is_presence_from(e, &me) && e.attr("type") == Some("unavailable")).await;
        let what = format!("round {round}: the self-presence of the join sent right after leaving (none and no error: the join was lost)");
        alice.wait_for(&what, |e| is_presence_from(e, &me) && e.attr("type").is_none() && status_codes(e).contains(&"110".into())).await;
        bob.wait_for("alice's new JOIN", |l| l.command == "JOIN" && l.prefix_nick.as_deref() == Some("alice")).await;
        groupchat(&mut alice, &r, &format!("back again {round}")).await;
        bob.wait_for("a message after the rejoin", |l| l.is_privmsg_to("#again") && l.text() == format!("back again {round}")).await;
    }
}

on_each_server!(the_last_resource_going_offline_ends_the_irc_session);
async fn the_last_resource_going_offline_ends_the_irc_session(kind: ServerKind) {
    let s = setup_on(kind);
    let mut bob = s.ircd.client("bob").await;
    bob.join("#b").await;
    let r = room("#b");
    let left = |l: &testkit::irc::IrcLine| matches!(l.command.as_str(), "QUIT" | "PART") && l.prefix_nick.as_deref() == Some("alice");

    // A broadcast unavailable presence: the server sends it to the room too (alice's
    // directed presence), which is all the gateway learns of an unregistered user.
    let mut alice = s.server.client("alice", "localhost").await;
    join(&mut alice, &r, "alice").await;
    bob.wait_for("alice's JOIN", |l| l.command == "JOIN" && l.prefix_nick.as_deref() == Some("alice")).await;
    let ended = sessions_ended(&s.gateway);
    let started = Instant::now();
    alice.send_raw("<presence type='unavailable'/>").await;
    let line = bob.wait_for("alice leaving after her unavailable presence", left).await;
    eprintln!("figures: alice left IRC ({}) {:?} after her unavailable presence", line.command, started.elapsed());
    wait_session_ended(&s.gateway, ended).await;

    // The client's connection simply drops: the same.
    drop(alice);
    let mut alice = s.server.client("alice", "localhost").await;
    join(&mut alice, &r, "alice").await;
    bob.wait_for("alice's JOIN again", |l| l.command == "JOIN" && l.prefix_nick.as_deref() == Some("alice")).await;
    let started = Instant::now();
    drop(alice);
    let line = bob.wait_for("alice leaving after her connection dropped", left).await;
    eprintln!("figures: alice left IRC ({}) {:?} after her XMPP connection dropped", line.command, started.elapsed());
}

/// What the fake IRC server of [`a_misbehaving_irc_server_does_not_affect_other_users`]
/// does and saw.
#[derive(Default)]
struct FakeIrc {
    /// Bytes received from the gateway.
    received: Vec<u8>,
    /// Bytes of garbage written so far.
    written: usize,
    /// Whether all the garbage was written.
    done: bool,
}

/// Accepts connections on `listener`; on each, drains what the gateway writes and sends
/// garbage: a 20 KB line without a newline, invalid UTF-8, control characters, truncated
/// commands, 2 MB of junk without a newline, then hangs until `close` fires, then closes.
fn spawn_fake_irc_server(
    listener: tokio::net::TcpListener,
    state: std::sync::Arc<std::sync::Mutex<FakeIrc>>,
    close: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else { return };
            let (mut read, mut write) = socket.into_split();
            let drain_state = state.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = read.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    drain_state.lock().unwrap().received.extend_from_slice(&buf[..n]);
                }
            });
            let state = state.clone();
            let mut close = close.clone();
            tokio::spawn(async move {
                let mut chunks: Vec<Vec<u8>> = vec![
                    vec![b'A'; 20 * 1024],
                    b"\xff\xfe\xc3\x28\xa0\xa1 :\xf0\x28\x8c\x28 PRIVMSG \x80\x81\r\n".to_vec(),
                    b"\x00\x01\x02\x1b[31m NOTICE\x00 * :\x07\x07\r\n".to_vec(),
                    // Lines that parse as nothing useful (no welcome: that would be a
                    // server, if a strange one).
                    b":\r\n: : :\r\nPRIVMSG\r\n:irc.fake NOTICE\r\n:irc.fake 999\r\n".to_vec(),
                ];
                chunks.extend(std::iter::repeat_n(vec![b'z'; 64 * 1024], 32));
                for chunk in chunks {
                    if write.write_all(&chunk).await.is_err() {
                        return;
                    }
                    state.lock().unwrap().written += chunk.len();
                }
                state.lock().unwrap().done = true;
                let _ = close.wait_for(|c| *c).await;
                drop(write);
            });
        }
    });
}

on_each_server!(a_misbehaving_irc_server_does_not_affect_other_users);
async fn a_misbehaving_irc_server_does_not_affect_other_users(kind: ServerKind) {
    let server = XmppServer::start(kind);
    let ircd = Ngircd::start(false);
    let fake = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fake_port = fake.local_addr().unwrap().port();
    let state = std::sync::Arc::new(std::sync::Mutex::new(FakeIrc::default()));
    let (close, close_rx) = tokio::sync::watch::channel(false);
    spawn_fake_irc_server(fake, state.clone(), close_rx);
    let networks = format!(
        "[irc.networks.\"127.0.0.1\"]\nport = {}\ntls = false\nflood_burst = 0\n\
         [irc.networks.\"localhost\"]\nport = {fake_port}\ntls = false\n",
        ircd.port
    );
    let gateway = Gateway::start_irc_networks(&server, &networks);

    // alice on the real server, with carol on IRC.
    let mut carol = ircd.client("carol").await;
    carol.join("#steady").await;
    let mut alice = server.client("alice", "localhost").await;
    let r = room("#steady");
    join(&mut alice, &r, "alice").await;
    carol.wait_for("alice's JOIN", |l| l.command == "JOIN" && l.prefix_nick.as_deref() == Some("alice")).await;

    // bob joins a room on the broken server.
    let mut bob = server.client("bob", "localhost").await;
    let junk_room = room_on_localhost("#junk");
    bob.send_raw(&format!("<presence to='{junk_room}/bob'><x xmlns='{MUC}'/></presence>")).await;
    let deadline = Instant::now() + WAIT;
    loop {
        {
            let s = state.lock().unwrap();
            if s.done && String::from_utf8_lossy(&s.received).contains("NICK bob") {
                eprintln!("figures: the fake server sent {} bytes of garbage to bob's session", s.written);
                break;
            }
        }
        assert!(Instant::now() < deadline, "the gateway did not talk to the fake server, or it could not write its garbage");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // While that connection hangs, alice's messages flow both ways.
    async fn exchange(alice: &mut Client, carol: &mut testkit::irc::IrcClient, r: &str, tag: &str) -> Duration {
        let mut worst = Duration::ZERO;
        for i in 0..10 {
            let started = Instant::now();
            groupchat(alice, r, &format!("{tag} ping {i}")).await;
            carol.wait_for("alice's ping", |l| l.is_privmsg_to("#steady") && l.text() == format!("{tag} ping {i}")).await;
            carol.privmsg("#steady", &format!("{tag} pong {i}")).await;
            alice.wait_for("carol's pong", |e| body(e) == Some(format!("{tag} pong {i}"))).await;
            worst = worst.max(started.elapsed());
        }
        worst
    }
    let during = exchange(&mut alice, &mut carol, &r, "during").await;
    assert!(
        !bob.receives_within(Duration::from_millis(200), |e| e.attr("from").is_some_and(|f| f.starts_with(&junk_room)) && e.attr("type") != Some("error")).await,
        "bob was shown in a room of a server that never welcomed him"
    );

    // The broken server closes: bob is told, nothing else changes.
    close.send(true).unwrap();
    let error = bob
        .wait_for("bob's join error", |e| is_presence_from(e, &format!("{junk_room}/bob")) && e.attr("type") == Some("error"))
        .await;
    assert_eq!(error_condition(&error).as_deref(), Some("service-unavailable"), "{error:?}");
    assert!(error_text(&error).contains("localhost"), "{}", error_text(&error));
    eprintln!("bob's join error says: {}", error_text(&error));
    let after = exchange(&mut alice, &mut carol, &r, "after").await;
    eprintln!("figures: worst XMPP -> IRC -> XMPP round trip while the broken server hung: {during:?}, after: {after:?}");

    // bob himself is fine too: he joins alice's room on the real server.
    join(&mut bob, &r, "bob").await;
    carol.wait_for("bob's JOIN", |l| l.command == "JOIN" && l.prefix_nick.as_deref() == Some("bob")).await;
    groupchat(&mut bob, &r, "bob is fine").await;
    carol.wait_for("bob's message", |l| l.is_privmsg_to("#steady") && l.text() == "bob is fine").await;
    assert_eq!(gateway.connections(), 1, "the gateway reconnected to the XMPP server");
    assert!(gateway.child.is_some());
}

on_each_server!(a_registered_password_logs_in_by_sasl_where_the_server_offers_it);
async fn a_registered_password_logs_in_by_sasl_where_the_server_offers_it(kind: ServerKind) {
    // InspIRCd + Atheme services: SASL PLAIN, from Debian's packages.
    let server = XmppServer::start(kind);
    let ircd = Ngircd::start(false);
    let sasl_ircd = testkit::irc::Inspircd::start();
    sasl_ircd.add_account("alicesasl", "sasl-secret");
    let network = format!("[irc.networks.\"localhost\"]\nport = {}\ntls = false\nflood_burst = 0\n", sasl_ircd.port);
    let gateway = Gateway::start_irc_networks(&server, &format!(
        "[irc.networks.\"127.0.0.1\"]\nport = {}\ntls = false\nflood_burst = 0\n{network}",
        ircd.port
    ));
    let mut alice = server.client("alice", "localhost").await;
    let set = alice.iq("set", &register_form(&[("irc_nick", "alicesasl"), ("irc_password/localhost", "sasl-secret")])).await;
    assert_eq!(set.attr("type"), Some("result"), "{set:?}");
    let r = format!("#sasl%localhost@{GW}");
    join(&mut alice, &r, "whatever").await;
    let mut bob = sasl_ircd.client("bob").await;
    bob.send_line("WHOIS alicesasl").await;
    // 330 RPL_WHOISACCOUNT: "alicesasl is logged in as alicesasl".
    let account = bob.wait_for("alice's account in WHOIS", |l| l.command == "330").await;
    assert_eq!(account.params.get(2).map(String::as_str), Some("alicesasl"), "{}", account.raw);
    assert!(!gateway.log_text().contains("sasl-secret"), "the password leaked into the log");

    // A wrong password: the connection goes on without an account, and the user is told.
    let mut carol = server.client("bob", "localhost").await;
    let set = carol.iq("set", &register_form(&[("irc_nick", "carolsasl"), ("irc_password/localhost", "wrong")])).await;
    assert_eq!(set.attr("type"), Some("result"));
    join(&mut carol, &format!("#sasl2%localhost@{GW}"), "carolsasl").await;
    let told = carol.wait_for("the SASL failure notice", |e| body(e).is_some_and(|b| b.contains("SASL login as carolsasl failed"))).await;
    assert_eq!(told.attr("from"), Some(format!("localhost@{GW}").as_str()));
}

/// Issue 9: a channel's names are compared as the IRC server compares them (its
/// CASEMAPPING), on one roster. `#foo[` and `#foo{` are one channel where the server folds
/// them (rfc1459) and two where it does not (ascii); either way each of the user's
/// resources gets its join confirmed at the address it joined and hears its channel.
async fn two_spellings_of_a_channel(server: &XmppServer, mut bob: testkit::irc::IrcClient, host: &str, one_channel: bool) {
    bob.join("#foo[").await;
    if !one_channel {
        bob.join("#foo{").await;
    }
    let mut a = server.client_as("alice", "localhost", "a").await;
    let mut b = server.client_as("alice", "localhost", "b").await;
    let (bracket, brace) = (format!("#foo[%{host}@{GW}"), format!("#foo{{%{host}@{GW}"));
    join(&mut a, &bracket, "alice").await;
    join(&mut b, &brace, "alice").await;
    wait_subject(&mut b, &brace).await;

    bob.privmsg("#foo{", "to the brace").await;
    bob.privmsg("#foo[", "to the bracket").await;
    let heard = b.wait_for("the brace line", |e| body(e).as_deref() == Some("to the brace")).await;
    assert_eq!(heard.attr("from"), Some(format!("{brace}/bob").as_str()));
    let heard = a.wait_for("the bracket line", |e| body(e).as_deref() == Some("to the bracket")).await;
    assert_eq!(heard.attr("from"), Some(format!("{bracket}/bob").as_str()));
    let a_heard_brace = a.seen.iter().any(|e| body(e).as_deref() == Some("to the brace"));
    assert_eq!(a_heard_brace, one_channel, "the bracket resource hears the brace channel only if it is the same channel");
    if one_channel {
        let echo = b.wait_for("the bracket line at the brace address", |e| body(e).as_deref() == Some("to the bracket")).await;
        assert_eq!(echo.attr("from"), Some(format!("{brace}/bob").as_str()));
    } else {
        bob.privmsg("#foo{", "marker").await;
        b.wait_for("the marker", |e| body(e).as_deref() == Some("marker")).await;
        assert!(!b.seen.iter().any(|e| body(e).as_deref() == Some("to the bracket")), "ascii: two channels");
    }
}

on_each_server!(ngircd_ascii_casemapping_keeps_foo_bracket_and_foo_brace_apart);
async fn ngircd_ascii_casemapping_keeps_foo_bracket_and_foo_brace_apart(kind: ServerKind) {
    let s = setup_on(kind);
    let bob = s.ircd.client("bob").await;
    two_spellings_of_a_channel(&s.server, bob, "127.0.0.1", false).await;
}

on_each_server!(inspircd_rfc1459_casemapping_makes_foo_bracket_and_foo_brace_one_room);
async fn inspircd_rfc1459_casemapping_makes_foo_bracket_and_foo_brace_one_room(kind: ServerKind) {
    let server = XmppServer::start(kind);
    let ircd = testkit::irc::Inspircd::start();
    let _gateway = Gateway::start_irc_networks(&server, &format!("[irc.networks.\"localhost\"]\nport = {}\ntls = false\nflood_burst = 0\n", ircd.port));
    let bob = ircd.client("bob").await;
    two_spellings_of_a_channel(&server, bob, "localhost", true).await;
}

on_each_server!(a_server_sending_truncated_numerics_and_refusing_the_nick_underscore_does_not_panic_the_session);
/// Issue 9: input a remote server controls must not panic a session. A scripted server
/// refuses the nick `_` (its variants used to slice past the end of the nick), then
/// sends numerics without the arguments they should carry (an argument-less ISUPPORT
/// used to index out of bounds), then behaves: the user still gets the room and its lines.
async fn a_server_sending_truncated_numerics_and_refusing_the_nick_underscore_does_not_panic_the_session(kind: ServerKind) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let server = XmppServer::start(kind);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let Ok((socket, _)) = listener.accept().await else { return };
        let (read, mut write) = socket.into_split();
        let mut lines = tokio::io::BufReader::new(read).lines();
        let mut refused = false;
        while let Ok(Some(line)) = lines.next_line().await {
            let reply: String = if let Some(nick) = line.strip_prefix("NICK ") {
                if !refused {
                    refused = true;
                    format!(":irc.fake 433 * {nick} :Nickname is already in use\r\n")
                } else {
                    [
                        format!(":irc.fake 001 {nick} :Welcome"),
                        ":irc.fake 005".into(),
                        format!(":irc.fake 005 {nick}"),
                        ":irc.fake 332".into(),
                        format!(":irc.fake 353 {nick}"),
                        ":irc.fake 366".into(),
                        ":irc.fake 474".into(),
                        ":irc.fake 401".into(),
                        format!(":irc.fake 005 {nick} CASEMAPPING= PREFIX= CHANMODES= :are supported"),
                        String::new(),
                    ]
                    .join("\r\n")
                }
            } else if let Some(channel) = line.strip_prefix("JOIN ") {
                let me = "xmpp1";
                format!(
                    ":{me}!u@h JOIN {channel}\r\n:irc.fake 353 {me} = {channel} :{me} @bob\r\n:irc.fake 366 {me} {channel} :End\r\n:bob!b@h PRIVMSG {channel} :still alive\r\n"
                )
            } else {
                continue;
            };
            if write.write_all(reply.as_bytes()).await.is_err() {
                return;
            }
        }
    });
    let gateway = Gateway::start_irc_networks(&server, &format!("[irc.networks.\"localhost\"]\nport = {port}\ntls = false\nflood_burst = 0\n"));
    let mut alice = server.client("alice", "localhost").await;
    let r = format!("#room%localhost@{GW}");
    let me = join(&mut alice, &r, "_").await;
    assert_eq!(me.attr("from"), Some(format!("{r}/xmpp1").as_str()), "the variant of `_` the server accepted");
    alice.wait_for("the line after the truncated numerics", |e| body(e).as_deref() == Some("still alive")).await;
    assert!(!gateway.log_text().contains("panicked"), "{}", gateway.log_text());
}

on_each_server!(a_second_resource_gets_the_room_from_the_irc_sessions_roster);
/// Issue 9: the XMPP side keeps no occupant list of its own; a second resource entering a
/// joined room gets it from the IRC session's roster (no second JOIN on IRC), and the
/// first resource is not sent the room again.
async fn a_second_resource_gets_the_room_from_the_irc_sessions_roster(kind: ServerKind) {
    let s = setup_on(kind);
    let mut bob = s.ircd.client("bob").await;
    bob.join("#two").await;
    bob.send_line("TOPIC #two :two resources").await;
    bob.wait_for("the topic set", |l| l.command == "TOPIC").await;
    let r = room("#two");
    let mut phone = s.server.client_as("alice", "localhost", "phone").await;
    join(&mut phone, &r, "alice").await;
    wait_subject(&mut phone, &r).await;
    bob.wait_for("alice's JOIN", |l| l.command == "JOIN" && l.prefix_nick.as_deref() == Some("alice")).await;
    // A topic changed since the first entry: the second gets the channel's topic as it is.
    bob.send_line("TOPIC #two :changed with the phone in").await;
    phone.wait_for("the new subject", |e| e.get_child("subject", NS_CLIENT).is_some_and(|s| s.text() == "changed with the phone in")).await;
    let mut laptop = s.server.client_as("alice", "localhost", "laptop").await;
    join(&mut laptop, &r, "alice").await;
    let subject = wait_subject(&mut laptop, &r).await;
    assert_eq!(subject.get_child("subject", NS_CLIENT).unwrap().text(), "changed with the phone in");
    let bob_seen = laptop.seen.iter().find(|e| is_presence_from(e, &format!("{r}/bob"))).expect("bob's presence in the entry");
    assert_eq!(item_attr(bob_seen, "role").as_deref(), Some("moderator"));
    // One IRC connection, one JOIN: bob sees no second one; the phone no second entry.
    bob.privmsg("#two", "to both").await;
    laptop.wait_for("the line on the laptop", |e| body(e).as_deref() == Some("to both")).await;
    phone.wait_for("the line on the phone", |e| body(e).as_deref() == Some("to both")).await;
    let subjects = phone.seen.iter().filter(|e| e.get_child("subject", NS_CLIENT).is_some()).count();
    assert_eq!(subjects, 2, "the phone got its entry's subject and the change, not the room's entry again");
    let alices_join = |l: &testkit::irc::IrcLine| l.command == "JOIN" && l.prefix_nick.as_deref() == Some("alice");
    assert!(!bob.receives_within(Duration::from_millis(300), alices_join).await, "no second JOIN on IRC");
}

/// What the hostile IRC server of [`an_irc_password_goes_only_to_its_network_and_only_when_asked_for`]
/// received, one list of lines per connection.
type Received = std::sync::Arc<std::sync::Mutex<Vec<Vec<String>>>>;

/// A hostile IRC server on `listener`: it asks everyone for credentials unasked (an
/// `AUTHENTICATE +` as soon as they connect and again after the welcome, a NickServ
/// notice), offers SASL, fails every SASL login, and records every line it receives.
fn spawn_harvesting_irc_server(listener: tokio::net::TcpListener, received: Received) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else { return };
            let received = received.clone();
            tokio::spawn(async move {
                let (read, mut write) = socket.into_split();
                let connection = {
                    let mut all = received.lock().unwrap();
                    all.push(Vec::new());
                    all.len() - 1
                };
                let bait = "AUTHENTICATE +\r\n:NickServ!service@services NOTICE * :This nick is registered: /msg NickServ IDENTIFY <password>\r\n";
                if write.write_all(bait.as_bytes()).await.is_err() {
                    return;
                }
                let mut lines = tokio::io::BufReader::new(read).lines();
                let mut nick = String::from("*");
                while let Ok(Some(line)) = lines.next_line().await {
                    received.lock().unwrap()[connection].push(line.clone());
                    let reply = if line.starts_with("CAP LS") {
                        ":harvest CAP * LS :sasl multi-prefix\r\n".to_owned()
                    } else if let Some(caps) = line.strip_prefix("CAP REQ :") {
                        format!(":harvest CAP * ACK :{caps}\r\n")
                    } else if line == "AUTHENTICATE PLAIN" {
                        "AUTHENTICATE +\r\n".to_owned()
                    } else if line.starts_with("AUTHENTICATE ") {
                        format!(":harvest 904 {nick} :SASL authentication failed\r\n")
                    } else if let Some(n) = line.strip_prefix("NICK ") {
                        nick = n.to_owned();
                        String::new()
                    } else if line.starts_with("USER ") {
                        format!(
                            ":harvest 001 {nick} :Welcome\r\n:harvest 005 {nick} CASEMAPPING=ascii :are supported\r\n\
                             AUTHENTICATE +\r\n:NickServ!service@services NOTICE {nick} :identify now\r\n"
                        )
                    } else if let Some(channel) = line.strip_prefix("JOIN ") {
                        format!(":{nick}!u@h JOIN {channel}\r\n:harvest 353 {nick} = {channel} :{nick}\r\n:harvest 366 {nick} {channel} :End\r\n")
                    } else {
                        String::new()
                    };
                    if write.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
}

/// The lines of the connection on which `nick` registered.
fn lines_of(received: &Received, nick: &str) -> Vec<String> {
    let all = received.lock().unwrap();
    all.iter().find(|lines| lines.iter().any(|l| l == &format!("NICK {nick}"))).cloned().unwrap_or_default()
}

#[tokio::test]
/// Issue 10: a user's IRC password goes only to the network it was given for, only by
/// SASL they asked for (an unsolicited `AUTHENTICATE +` gets nothing), and never to
/// NickServ after a failed SASL. A hostile server records what it receives.
async fn an_irc_password_goes_only_to_its_network_and_only_when_asked_for() {
    use base64::Engine;
    let token = |user: &str, password: &str| base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
    let server = XmppServer::start(ServerKind::Prosody);
    let ircd = Ngircd::start(false);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let received = Received::default();
    spawn_harvesting_irc_server(listener, received.clone());
    // The hostile network even claims to run NickServ.
    let gateway = Gateway::start_irc_networks(
        &server,
        &format!(
            "[irc.networks.\"127.0.0.1\"]\nport = {}\ntls = false\nflood_burst = 0\n\
             [irc.networks.\"localhost\"]\nport = {port}\ntls = false\nflood_burst = 0\nnickserv = true\n",
            ircd.port
        ),
    );

    // alice's password is for 127.0.0.1: the other network gets no SASL, no IDENTIFY.
    let mut alice = server.client("alice", "localhost").await;
    let set = alice.iq("set", &register_form(&[("irc_nick", "alice"), ("irc_password/127.0.0.1", "alice-secret")])).await;
    assert_eq!(set.attr("type"), Some("result"), "{set:?}");
    join(&mut alice, &format!("#bait%localhost@{GW}"), "alice").await;

    // bob's password is for the hostile network: SASL, once, in answer to the exchange
    // he started; it fails, and nothing follows.
    let mut bob = server.client("bob", "localhost").await;
    let set = bob.iq("set", &register_form(&[("irc_nick", "bob"), ("irc_password/localhost", "bob-secret")])).await;
    assert_eq!(set.attr("type"), Some("result"), "{set:?}");
    join(&mut bob, &format!("#bait%localhost@{GW}"), "bob").await;
    bob.wait_for("the SASL failure notice", |e| body(e).is_some_and(|b| b.contains("SASL login as bob failed"))).await;
    // Give an IDENTIFY after the failure, or an answer to the late bait, time to arrive.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let alices = lines_of(&received, "alice");
    assert!(alices.iter().any(|l| l.starts_with("JOIN #bait")), "{alices:?}");
    let text = alices.join("\n");
    assert!(!text.contains("alice-secret") && !text.contains(&token("alice", "alice-secret")), "{text}");
    // Capabilities are negotiated with every server (IRCv3), but SASL is not asked for.
    assert!(!alices.iter().any(|l| l.starts_with("CAP REQ") && l.contains("sasl")), "{text}");
    assert!(!text.contains("AUTHENTICATE") && !text.contains("NickServ"), "{text}");

    let bobs = lines_of(&received, "bob");
    let answers: Vec<&String> = bobs.iter().filter(|l| l.starts_with("AUTHENTICATE ") && *l != "AUTHENTICATE PLAIN").collect();
    assert_eq!(answers, [&format!("AUTHENTICATE {}", token("bob", "bob-secret"))], "one answer, to the exchange bob started: {bobs:?}");
    let plain = bobs.iter().position(|l| l == "AUTHENTICATE PLAIN").expect("bob started SASL");
    let answer = bobs.iter().position(|l| l.starts_with("AUTHENTICATE ") && l != "AUTHENTICATE PLAIN").unwrap();
    assert!(plain < answer, "{bobs:?}");
    assert!(!bobs.iter().any(|l| l.contains("NickServ") || l.contains("bob-secret")), "no IDENTIFY after a failed SASL: {bobs:?}");
    let log = gateway.log_text();
    assert!(!log.contains("alice-secret") && !log.contains("bob-secret"), "a password leaked into the log");
}

on_each_server!(a_self_ping_says_whether_the_client_is_still_in_the_room);
/// XEP-0410: clients ping their own occupant JID to learn whether they are still joined.
async fn a_self_ping_says_whether_the_client_is_still_in_the_room(kind: ServerKind) {
    let s = setup_on(kind);
    let mut alice = s.server.client("alice", "localhost").await;
    let r = room("#ping");
    let ping = "<ping xmlns='urn:xmpp:ping'/>";
    let before = alice.iq_raw("get", Some(&format!("{r}/alice")), ping).await;
    assert_eq!(error_condition(&before).as_deref(), Some("not-acceptable"), "not joined yet: {before:?}");
    join(&mut alice, &r, "alice").await;
    let joined = alice.iq_raw("get", Some(&format!("{r}/alice")), ping).await;
    assert_eq!(joined.attr("type"), Some("result"), "{joined:?}");
    let other_nick = alice.iq_raw("get", Some(&format!("{r}/someone")), ping).await;
    assert_eq!(error_condition(&other_nick).as_deref(), Some("not-acceptable"), "{other_nick:?}");
    alice.send_raw(&format!("<presence to='{r}/alice' type='unavailable'/>")).await;
    alice.wait_for("the room's goodbye", |e| is_presence_from(e, &format!("{r}/alice")) && e.attr("type") == Some("unavailable")).await;
    let after = alice.iq_raw("get", Some(&format!("{r}/alice")), ping).await;
    assert_eq!(error_condition(&after).as_deref(), Some("not-acceptable"), "left: {after:?}");
    // A ping to the gateway itself is still just answered.
    let gateway = alice.iq_raw("get", Some(GW), ping).await;
    assert_eq!(gateway.attr("type"), Some("result"));
}

const DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
const DISCO_ITEMS: &str = "http://jabber.org/protocol/disco#items";
const RSM: &str = "http://jabber.org/protocol/rsm";

/// The features of a disco#info result.
fn disco_features(reply: &Element) -> Vec<String> {
    let query = reply.get_child("query", DISCO_INFO).unwrap_or_else(|| panic!("no disco#info result: {reply:?}"));
    query.children().filter(|c| c.name() == "feature").filter_map(|f| f.attr("var")).map(str::to_owned).collect()
}

/// The values of the `muc#roominfo` form of a disco#info result, by var.
fn roominfo(reply: &Element) -> Option<std::collections::BTreeMap<String, String>> {
    let query = reply.get_child("query", DISCO_INFO)?;
    let form = query.children().find(|x| x.is("x", "jabber:x:data") && x.children().any(|f| f.attr("var") == Some("FORM_TYPE") && f.children().any(|v| v.text() == "http://jabber.org/protocol/muc#roominfo")))?;
    Some(form.children().filter_map(|f| Some((f.attr("var")?.to_owned(), f.children().next().map(|v| v.text()).unwrap_or_default()))).collect())
}

/// An RSM result set: first, its index, last, count.
type ResultSet = (String, String, String, String);

/// The items (jid, name) of a disco#items result, and its RSM set.
fn disco_items(reply: &Element) -> (Vec<(String, String)>, Option<ResultSet>) {
    let query = reply.get_child("query", DISCO_ITEMS).unwrap_or_else(|| panic!("no disco#items result: {reply:?}"));
    let items = query.children().filter(|c| c.name() == "item").map(|i| (i.attr("jid").unwrap_or_default().to_owned(), i.attr("name").unwrap_or_default().to_owned())).collect();
    let set = query.get_child("set", RSM).map(|set| {
        let text = |name: &str| set.get_child(name, RSM).map(|c| c.text()).unwrap_or_default();
        let index = set.get_child("first", RSM).and_then(|f| f.attr("index")).unwrap_or_default().to_owned();
        (text("first"), index, text("last"), text("count"))
    });
    (items, set)
}

on_each_server!(room_disco_info_and_items_follow_the_live_channel);
/// XEP-0045 §6.4 and §6.5 from the IRC session's view of the channel: the roominfo form
/// (occupants, topic), `muc_moderated`/`muc_passwordprotected` once an operator sets
/// +m and +k, the occupants as items; a user who is not in the room gets the static
/// description and no occupants.
async fn room_disco_info_and_items_follow_the_live_channel(kind: ServerKind) {
    let s = setup_on(kind);
    let mut bob = s.ircd.client("bob").await;
    bob.join("#info").await;
    bob.send_line("TOPIC #info :all about info").await;
    bob.wait_for("the topic set", |l| l.command == "TOPIC").await;
    let mut carol = s.ircd.client("carol").await;
    carol.join("#info").await;
    let mut alice = s.server.client("alice", "localhost").await;
    let r = room("#info");
    join(&mut alice, &r, "alice").await;
    wait_subject(&mut alice, &r).await;
    let info_query = format!("<query xmlns='{DISCO_INFO}'/>");

    let info = alice.iq_raw("get", Some(&r), &info_query).await;
    let features = disco_features(&info);
    for feature in ["muc_unmoderated", "muc_unsecured", "muc_semianonymous", "muc_open", MUC] {
        assert!(features.contains(&feature.to_owned()), "{feature} in {features:?}");
    }
    assert!(!features.contains(&"muc_moderated".to_owned()) && !features.contains(&"muc_passwordprotected".to_owned()));
    let form = roominfo(&info).unwrap_or_else(|| panic!("no roominfo form: {info:?}"));
    assert_eq!(form.get("muc#roominfo_occupants").map(String::as_str), Some("3"), "bob, carol and alice: {form:?}");
    assert_eq!(form.get("muc#roominfo_subject").map(String::as_str), Some("all about info"));
    assert_eq!(form.get("muc#roominfo_description").map(String::as_str), Some("all about info"));

    // bob opened the channel (an operator) and sets +m and +k; his next line arrives
    // after the MODE, so the gateway's session has applied it by then.
    bob.send_line("MODE #info +mk sesame").await;
    bob.wait_for("the MODE", |l| l.command == "MODE").await;
    bob.privmsg("#info", "modes set").await;
    alice.wait_for("bob's line after the MODE", |e| body(e).as_deref() == Some("modes set")).await;
    let info = alice.iq_raw("get", Some(&r), &info_query).await;
    let features = disco_features(&info);
    assert!(features.contains(&"muc_moderated".to_owned()) && !features.contains(&"muc_unmoderated".to_owned()), "{features:?}");
    assert!(features.contains(&"muc_passwordprotected".to_owned()) && !features.contains(&"muc_unsecured".to_owned()), "{features:?}");

    // carol leaves: the count follows.
    carol.send_line("PART #info").await;
    alice.wait_for("carol's part", |e| is_presence_from(e, &format!("{r}/carol")) && e.attr("type") == Some("unavailable")).await;
    let info = alice.iq_raw("get", Some(&r), &info_query).await;
    assert_eq!(roominfo(&info).and_then(|f| f.get("muc#roominfo_occupants").cloned()).as_deref(), Some("2"));

    let items = alice.iq_raw("get", Some(&r), &format!("<query xmlns='{DISCO_ITEMS}'/>")).await;
    let (items, set) = disco_items(&items);
    assert_eq!(
        items,
        [(format!("{r}/alice"), "alice".to_owned()), (format!("{r}/bob"), "bob".to_owned())],
        "the occupants, by nick"
    );
    assert_eq!(set.map(|s| s.3).as_deref(), Some("2"));

    // Somebody not in the room: the static description, and no occupants.
    let mut stranger = s.server.client("bob", "localhost").await;
    let info = stranger.iq_raw("get", Some(&r), &info_query).await;
    let features = disco_features(&info);
    assert!(features.contains(&"muc_unmoderated".to_owned()) && roominfo(&info).is_none(), "{info:?}");
    let items = stranger.iq_raw("get", Some(&r), &format!("<query xmlns='{DISCO_ITEMS}'/>")).await;
    assert_eq!(items.attr("type"), Some("result"));
    assert!(disco_items(&items).0.is_empty(), "{items:?}");
}

on_each_server!(server_disco_items_list_its_channels_paged_by_rsm);
/// disco#items of `127.0.0.1@gw` lists the IRC server's channels (LIST, over the asking
/// user's own connection, which the query opens), 25 of them paged by 10: three pages,
/// first/last/count right, nothing missing or twice; the last page by `<before/>`.
async fn server_disco_items_list_its_channels_paged_by_rsm(kind: ServerKind) {
    let s = setup_on(kind);
    // What the server lists before (ngIRCd's own `&SERVER`).
    let mut lister = s.ircd.client("lister").await;
    lister.send_line("LIST").await;
    let mut expected = Vec::new();
    loop {
        let line = lister.wait_for("the LIST", |l| l.command == "322" || l.command == "323").await;
        if line.command == "323" {
            break;
        }
        expected.push(line.params[1].clone());
    }
    let mut creators = Vec::new();
    for c in 0..5 {
        let mut client = s.ircd.client(&format!("maker{c}")).await;
        for i in 0..5 {
            let channel = format!("#list{:02}", c * 5 + i);
            client.join(&channel).await;
            expected.push(channel);
        }
        creators.push(client);
    }
    creators[0].send_line("TOPIC #list00 :the first one").await;
    creators[0].wait_for("the topic set", |l| l.command == "TOPIC").await;
    expected.sort();
    let total = expected.len();
    assert!((25..30).contains(&total), "{expected:?}");
    let server = format!("127.0.0.1@{GW}");
    let mut alice = s.server.client("alice", "localhost").await;
    // An item's channel, from its name `#chan (N users): topic`.
    let channel_of = |name: &str| name.split(" (").next().unwrap_or_default().to_owned();

    let mut seen = Vec::new();
    let mut after = String::new();
    for (page, size) in [(0, 10), (1, 10), (2, total - 20)] {
        let paging = if after.is_empty() { String::new() } else { format!("<after>{}</after>", after.replace('&', "&amp;")) };
        let reply = alice.iq_raw("get", Some(&server), &format!("<query xmlns='{DISCO_ITEMS}'><set xmlns='{RSM}'><max>10</max>{paging}</set></query>")).await;
        let (items, set) = disco_items(&reply);
        assert_eq!(items.len(), size, "page {page}: {reply:?}");
        let (first, index, last, count) = set.unwrap_or_else(|| panic!("no RSM set: {reply:?}"));
        assert_eq!(count, total.to_string());
        assert_eq!(index, (page * 10).to_string());
        assert_eq!(first, channel_of(&items[0].1));
        assert_eq!(last, channel_of(&items[size - 1].1));
        after = last;
        seen.extend(items);
    }
    let names: Vec<String> = seen.iter().map(|(_, name)| channel_of(name)).collect();
    assert_eq!(names, expected, "every channel once, in order");
    for (jid, name) in seen.iter().filter(|(_, name)| name.starts_with("#list")) {
        assert_eq!(*jid, room(&channel_of(name)));
    }
    let first = seen.iter().find(|(jid, _)| *jid == room("#list00")).unwrap();
    assert_eq!(first.1, "#list00 (1 user): the first one");

    // The last page straight away, and past the end nothing.
    let reply = alice.iq_raw("get", Some(&server), &format!("<query xmlns='{DISCO_ITEMS}'><set xmlns='{RSM}'><max>10</max><before/></set></query>")).await;
    let (items, set) = disco_items(&reply);
    assert_eq!(items.iter().map(|(_, name)| channel_of(name)).collect::<Vec<_>>(), expected[total - 10..]);
    assert_eq!(set.map(|s| s.1), Some((total - 10).to_string()));
    let reply = alice.iq_raw("get", Some(&server), &format!("<query xmlns='{DISCO_ITEMS}'><set xmlns='{RSM}'><max>10</max><after>{}</after></set></query>", after.replace('&', "&amp;"))).await;
    assert!(disco_items(&reply).0.is_empty(), "{reply:?}");
}

/// An IRC server that welcomes anyone and answers LIST with two channels and never an
/// RPL_LISTEND.
async fn spawn_endless_list_server() -> u16 {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (read, mut write) = socket.into_split();
                let mut lines = tokio::io::BufReader::new(read).lines();
                let mut nick = String::from("*");
                while let Ok(Some(line)) = lines.next_line().await {
                    let reply = match line.split(' ').collect::<Vec<_>>().as_slice() {
                        ["NICK", n, ..] => {
                            nick = (*n).to_owned();
                            continue;
                        }
                        ["USER", ..] => format!(":endless 001 {nick} :Welcome\r\n"),
                        ["LIST", ..] => format!(":endless 321 {nick} Channel :Users Name\r\n:endless 322 {nick} #one 4 :first\r\n:endless 322 {nick} #two 2 :\r\n"),
                        ["PING", token, ..] => format!(":endless PONG endless {token}\r\n"),
                        _ => continue,
                    };
                    if write.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

on_each_server!(server_disco_items_of_a_list_that_never_ends_give_what_arrived);
/// A server that never ends its LIST: the query is answered when the gateway stops
/// waiting for it (15 s), with the channels that arrived.
async fn server_disco_items_of_a_list_that_never_ends_give_what_arrived(kind: ServerKind) {
    let server = XmppServer::start(kind);
    let port = spawn_endless_list_server().await;
    let _gateway = Gateway::start_irc_networks(&server, &format!("[irc.networks.\"localhost\"]\nport = {port}\ntls = false\n"));
    let mut alice = server.client("alice", "localhost").await;
    alice.send_raw(&format!("<iq type='get' id='endless' to='localhost@{GW}'><query xmlns='{DISCO_ITEMS}'/></iq>")).await;
    let started = Instant::now();
    let answer = |e: &Element| e.name() == "iq" && e.attr("id") == Some("endless");
    while !alice.receives_within(Duration::from_secs(5), answer).await {
        assert!(started.elapsed() < Duration::from_secs(30), "no answer after {:?}", started.elapsed());
    }
    let reply = alice.seen.iter().rev().find(|e| answer(e)).cloned().expect("the answer was read");
    assert!(started.elapsed() >= Duration::from_secs(14), "answered before the LIST timed out: {reply:?}");
    let (items, set) = disco_items(&reply);
    assert_eq!(
        items,
        [(format!("#one%localhost@{GW}"), "#one (4 users): first".to_owned()), (format!("#two%localhost@{GW}"), "#two (2 users)".to_owned())]
    );
    assert_eq!(set.map(|s| s.3).as_deref(), Some("2"));
}

on_each_server!(invitations_go_both_ways);
/// An IRC INVITE becomes a XEP-0249 direct invitation from the inviter; a mediated MUC
/// invitation (XEP-0045) to an IRC user becomes an IRC INVITE; one to another XMPP user
/// is passed on by the room.
async fn invitations_go_both_ways(kind: ServerKind) {
    let s = setup_on(kind);
    let mut alice = s.server.client("alice", "localhost").await;
    let r = room("#inv");
    join(&mut alice, &r, "alice").await;
    wait_subject(&mut alice, &r).await;

    // IRC -> XMPP: bob, alone in #secret, invites alice.
    let mut bob = s.ircd.client("bob").await;
    bob.join("#secret").await;
    bob.send_line("INVITE alice #secret").await;
    let invitation = alice.wait_for("the direct invitation", |e| e.name() == "message" && e.get_child("x", "jabber:x:conference").is_some()).await;
    let secret = room("#secret");
    assert_eq!(invitation.get_child("x", "jabber:x:conference").unwrap().attr("jid"), Some(secret.as_str()));
    assert_eq!(invitation.attr("from"), Some(format!("bob%127.0.0.1@{GW}").as_str()));
    assert!(body(&invitation).is_some_and(|b| b.contains("bob invites you to #secret")), "{invitation:?}");

    // XMPP -> IRC: alice (operator of #inv, which she created) invites bob.
    let bob_jid = format!("bob%127.0.0.1@{GW}");
    alice
        .send_raw(&format!("<message to='{r}'><x xmlns='{MUC_USER}'><invite to='{bob_jid}'><reason>come</reason></invite></x></message>"))
        .await;
    let invite = bob.wait_for("the INVITE", |l| l.command == "INVITE").await;
    assert_eq!(invite.params, ["bob", "#inv"]);
    assert_eq!(invite.prefix_nick.as_deref(), Some("alice"));

    // XMPP -> XMPP: the room passes the invitation on to bob@localhost.
    let mut bob_xmpp = s.server.client("bob", "localhost").await;
    alice.send_raw(&format!("<message to='{r}'><x xmlns='{MUC_USER}'><invite to='bob@localhost'/></x></message>")).await;
    let passed = bob_xmpp.wait_for("the mediated invitation", |e| e.name() == "message" && e.get_child("x", MUC_USER).is_some()).await;
    assert_eq!(passed.attr("from"), Some(r.as_str()));
    let from = passed.get_child("x", MUC_USER).unwrap().get_child("invite", MUC_USER).unwrap().attr("from");
    assert_eq!(from, Some("alice@localhost"));

    // Not in the room: refused.
    let outside = room("#elsewhere");
    alice.send_raw(&format!("<message to='{outside}' id='inv1'><x xmlns='{MUC_USER}'><invite to='{bob_jid}'/></x></message>")).await;
    let refused = alice.wait_for("the refusal", |e| e.name() == "message" && e.attr("id") == Some("inv1") && e.attr("type") == Some("error")).await;
    assert_eq!(error_condition(&refused).as_deref(), Some("not-acceptable"));
}
