//! The IRC bridge against a real ngIRCd and a real Prosody: channels as MUC rooms, IRC
//! users as JIDs, both ways. IRC-side peers are raw-socket clients in the test.

mod support;

use std::time::{Duration, Instant};

use minidom::Element;
use support::irc::Ngircd;
use support::*;

const MUC: &str = "http://jabber.org/protocol/muc";
const MUC_USER: &str = "http://jabber.org/protocol/muc#user";

struct Setup {
    server: XmppServer,
    ircd: Ngircd,
    gateway: Gateway,
}

fn setup() -> Setup {
    let server = XmppServer::start(ServerKind::Prosody);
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

#[tokio::test]
async fn join_talk_both_ways_with_roles_actions_and_notices() {
    let s = setup();
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
    eprintln!("figures: round trip XMPP -> IRC -> XMPP through Prosody and ngIRCd: p50 {:?}, max {:?}", round_trips[25], round_trips[49]);

    // A presence to another occupant nick is a nick change.
    alice.send_raw(&format!("<presence to='{r}/alicia'/>")).await;
    let renamed = alice.wait_for("the 303 for alice", |e| is_presence_from(e, &format!("{r}/alice")) && status_codes(e).contains(&"303".into())).await;
    assert_eq!(item_attr(&renamed, "nick").as_deref(), Some("alicia"));
    bob.wait_for("the NICK", |l| l.command == "NICK" && l.text() == "alicia").await;
}

#[tokio::test]
async fn nick_collision_gives_110_and_210_with_the_nick_given() {
    let s = setup();
    let mut squatter = s.ircd.client("alice").await;
    squatter.join("#busy").await;
    let mut alice = s.server.client("alice", "localhost").await;
    let me = join(&mut alice, &room("#busy"), "alice").await;
    let codes = status_codes(&me);
    assert!(codes.contains(&"110".into()) && codes.contains(&"210".into()), "{codes:?}");
    assert_eq!(me.attr("from"), Some(format!("{}/alice_", room("#busy")).as_str()));
}

#[tokio::test]
async fn part_nick_change_kick_and_modes_are_mapped() {
    let s = setup();
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

#[tokio::test]
async fn topic_from_both_sides() {
    let s = setup();
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

#[tokio::test]
async fn private_conversation_both_ways_and_quit_shows_offline() {
    let s = setup();
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

    // IRC shows a QUIT only to those who share a channel with the quitter.
    join(&mut alice, &room("#common"), "alice").await;
    bob.join("#common").await;
    bob.send_line("QUIT :gone fishing").await;
    let offline = alice.wait_for("bob offline", |e| is_presence_from(e, &bob_jid)).await;
    assert_eq!(offline.attr("type"), Some("unavailable"));
}

#[tokio::test]
async fn a_private_message_through_the_room_goes_to_the_nick_and_replies_come_from_the_user_jid() {
    let s = setup();
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
}

#[tokio::test]
async fn long_multibyte_messages_arrive_whole_and_injection_is_impossible() {
    let s = setup();
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

#[tokio::test]
async fn a_latin1_line_from_irc_is_decoded() {
    let s = setup();
    let mut bob = s.ircd.client("bob").await;
    bob.join("#latin").await;
    let mut alice = s.server.client("alice", "localhost").await;
    let r = room("#latin");
    join(&mut alice, &r, "alice").await;
    bob.wait_for("alice's JOIN", |l| l.command == "JOIN").await;
    bob.send_bytes(b"PRIVMSG #latin :caf\xe9 cr\xe8me\r\n").await;
    alice.wait_for("the Latin-1 message", |e| body(e).as_deref() == Some("café crème")).await;
}

#[tokio::test]
async fn join_failures_give_muc_errors_with_the_servers_text() {
    let s = setup();
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

#[tokio::test]
async fn a_message_to_a_room_the_user_is_not_in_is_not_acceptable() {
    let s = setup();
    let mut alice = s.server.client("alice", "localhost").await;
    alice.send_raw(&format!("<message to='{}' type='groupchat' id='nope'><body>x</body></message>", room("#elsewhere"))).await;
    let reply = alice.wait_for("the refusal", |e| e.attr("id") == Some("nope")).await;
    assert_eq!(error_condition(&reply).as_deref(), Some("not-acceptable"));
}

#[tokio::test]
async fn an_irc_server_that_refuses_the_connection_gives_a_clear_error() {
    let server = XmppServer::start(ServerKind::Prosody);
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

#[tokio::test]
async fn irc_server_killed_and_restarted_the_user_is_back_in_the_room() {
    let s = setup();
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

#[tokio::test]
async fn a_registered_password_is_sent_to_nickserv_when_there_is_no_sasl() {
    let s = setup();
    // ngIRCd has no SASL and no services: a scripted NickServ is a client with that nick.
    let mut nickserv = s.ircd.client("NickServ").await;
    let mut alice = s.server.client("alice", "localhost").await;
    let set = alice.iq("set", &register_form(&[("irc_nick", "alicereg"), ("irc_password", "open-sesame")])).await;
    assert_eq!(set.attr("type"), Some("result"), "{set:?}");
    let me = join(&mut alice, &room("#reg"), "whatever").await;
    assert_eq!(me.attr("from"), Some(format!("{}/alicereg", room("#reg")).as_str()), "the registered nick wins");
    let line = nickserv.wait_for("IDENTIFY", |l| l.is_privmsg_to("NickServ")).await;
    assert_eq!(line.text(), "IDENTIFY open-sesame");
    assert_eq!(line.prefix_nick.as_deref(), Some("alicereg"));
    assert!(!s.gateway.log_text().contains("open-sesame"), "the password leaked into the log");
}

#[tokio::test]
async fn away_status_is_mirrored_on_irc() {
    let s = setup();
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

#[tokio::test]
async fn a_100_line_burst_reaches_a_flood_protected_server_completely() {
    let server = XmppServer::start(ServerKind::Prosody);
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
