//! Issue 11, item 5: modern clients' message features mapped to IRC, and IRCv3
//! capabilities used where the server offers them. Real Prosody and ejabberd, real
//! InspIRCd (IRCv3 modules loaded by scripts/inspircd.sh) and ngIRCd (none of them);
//! IRC peers are raw-socket clients.

use std::time::Duration;

use minidom::Element;
use testkit::irc::{Inspircd, IrcClient, IrcLine, Ngircd};
use testkit::*;

const MUC: &str = "http://jabber.org/protocol/muc";
const MUC_USER: &str = "http://jabber.org/protocol/muc#user";
const NS_RECEIPTS: &str = "urn:xmpp:receipts";

/// The gateway on `server`, with InspIRCd as the network `localhost`.
fn gateway_on_inspircd(server: &XmppServer, ircd: &Inspircd) -> Gateway {
    Gateway::start_irc_networks(server, &format!("[irc.networks.\"localhost\"]\nport = {}\ntls = false\nflood_burst = 0\n", ircd.port))
}

/// A test on InspIRCd: the servers and the gateway (kept alive by the test), bob on IRC
/// in `channel` (its operator), alice in its room.
struct OnInspircd {
    server: XmppServer,
    ircd: Inspircd,
    gateway: Gateway,
    bob: IrcClient,
    alice: Client,
    /// The room of `channel`.
    room: String,
}

async fn on_inspircd(kind: ServerKind, channel: &str, before_gateway: impl FnOnce(&Inspircd)) -> OnInspircd {
    let server = XmppServer::start(kind);
    let ircd = Inspircd::start();
    before_gateway(&ircd);
    let gateway = gateway_on_inspircd(&server, &ircd);
    let mut bob = ircd.client("bob").await;
    bob.join(channel).await;
    let mut alice = server.client("alice", "localhost").await;
    let room = room(channel, "localhost");
    enter(&mut alice, &room, "alice").await;
    OnInspircd { server, ircd, gateway, bob, alice, room }
}

fn room(channel: &str, server: &str) -> String {
    format!("{channel}%{server}@{GW}")
}

fn body(stanza: &Element) -> Option<String> {
    stanza.get_child("body", NS_CLIENT).map(|b| b.text())
}

fn is_groupchat_from(stanza: &Element, from: &str) -> bool {
    stanza.name() == "message" && stanza.attr("type") == Some("groupchat") && stanza.attr("from") == Some(from)
}

/// Joins `room/nick` and waits for the subject that ends the entry.
async fn enter(client: &mut Client, room: &str, nick: &str) {
    client.send_raw(&format!("<presence to='{room}/{nick}'><x xmlns='{MUC}'/></presence>")).await;
    client
        .wait_for("the room subject", |e| {
            e.name() == "message" && e.attr("from").is_some_and(|f| f.starts_with(room)) && e.get_child("subject", NS_CLIENT).is_some()
        })
        .await;
}

/// Waits for `nick`'s PRIVMSG to `target` and gives its text.
async fn said_on_irc(client: &mut IrcClient, target: &str, what: &str) -> String {
    let line: IrcLine = client.wait_for(what, |l| l.is_privmsg_to(target)).await;
    line.text().to_owned()
}

on_each_server!(echo_message_is_the_reflection_once_with_the_text_the_server_took);
/// InspIRCd offers `echo-message`: the user's message comes back once, with its id and
/// the text as the server changed it (its word filter turns "darn" into "gosh"), not as
/// the client wrote it: the gateway's own reflection is not sent as well.
async fn echo_message_is_the_reflection_once_with_the_text_the_server_took(kind: ServerKind) {
    // Every part bound (`..` would drop the servers at once).
    let OnInspircd { server: _server, ircd: _ircd, gateway: _gateway, mut bob, mut alice, room: r } = on_inspircd(kind, "#echo", |_| {}).await;
    bob.send_line("MODE #echo +G").await;
    bob.wait_for("the word filter on", |l| l.command == "MODE" && l.raw.contains("+G")).await;

    alice.send_raw(&format!("<message to='{r}' type='groupchat' id='e1'><body>darn it</body></message>")).await;
    assert_eq!(said_on_irc(&mut bob, "#echo", "alice's line").await, "gosh it");
    let own = format!("{r}/alice");
    let reflection = alice.wait_for("the reflection", |e| is_groupchat_from(e, &own)).await;
    assert_eq!(reflection.attr("id"), Some("e1"), "the client matches the reflection by its id");
    assert_eq!(body(&reflection).as_deref(), Some("gosh it"), "the text the server took, from its echo");
    assert!(reflection.get_child("stanza-id", "urn:xmpp:sid:0").is_some(), "the echo is archived like any line");
    assert!(!alice.receives_within(Duration::from_millis(1500), |e| is_groupchat_from(e, &own)).await, "one reflection, not two");
    // Without an id too.
    alice.send_raw(&format!("<message to='{r}' type='groupchat'><body>no id</body></message>")).await;
    let is_no_id = |e: &Element| is_groupchat_from(e, &own) && body(e).as_deref() == Some("no id");
    alice.wait_for("the reflection of a message without an id", is_no_id).await;
    assert!(!alice.receives_within(Duration::from_millis(1500), is_no_id).await, "one reflection of it, not two");

    // A private message: its receipt comes once the server echoed it.
    let contact = format!("bob%localhost@{GW}");
    alice.send_raw(&format!("<message to='{contact}' type='chat' id='p1'><body>psst</body><request xmlns='{NS_RECEIPTS}'/></message>")).await;
    assert_eq!(said_on_irc(&mut bob, "bob", "alice's private line").await, "psst");
    let receipt = alice.wait_for("the receipt", |e| e.get_child("received", NS_RECEIPTS).is_some()).await;
    assert_eq!(receipt.attr("from"), Some(contact.as_str()));
    assert_eq!(receipt.get_child("received", NS_RECEIPTS).and_then(|r| r.attr("id")), Some("p1"));
}

on_each_server!(away_notify_and_account_notify_show_in_occupant_presence);
/// `away-notify` and `account-notify`: bob logging in to services and going away show in
/// his occupant presence (status with his account; `away` show with his away message),
/// and coming back clears the away show.
async fn away_notify_and_account_notify_show_in_occupant_presence(kind: ServerKind) {
    // Every part bound (`..` would drop the servers at once).
    let OnInspircd { server: _server, ircd: _ircd, gateway: _gateway, mut bob, mut alice, room: r } = on_inspircd(kind, "#away", |ircd| ircd.add_account("bobacct", "bobsecret")).await;
    let bob_jid = format!("{r}/bob");
    let status = |e: &Element| e.get_child("status", NS_CLIENT).map(|s| s.text());
    let show = |e: &Element| e.get_child("show", NS_CLIENT).map(|s| s.text());
    let is_bobs = |e: &Element| e.name() == "presence" && e.attr("from") == Some(bob_jid.as_str()) && e.attr("type").is_none();

    bob.send_line("PRIVMSG NickServ :IDENTIFY bobacct bobsecret").await;
    let logged_in = alice.wait_for("bob's presence with his account", |e| is_bobs(e) && status(e).is_some()).await;
    assert_eq!(status(&logged_in).as_deref(), Some("account bobacct"));
    assert_eq!(show(&logged_in), None);

    bob.send_line("AWAY :out for lunch").await;
    let away = alice.wait_for("bob away", |e| is_bobs(e) && show(e).is_some()).await;
    assert_eq!(show(&away).as_deref(), Some("away"));
    assert_eq!(status(&away).as_deref(), Some("out for lunch (account bobacct)"));
    assert!(away.get_child("x", MUC_USER).is_some(), "still an occupant presence");

    bob.send_line("AWAY").await;
    // (His entry presence, without a status, is still among what alice got earlier.)
    let back = alice.wait_for("bob back", |e| is_bobs(e) && show(e).is_none() && status(e).is_some()).await;
    assert_eq!(status(&back).as_deref(), Some("account bobacct"));
}

on_each_server!(who_is_away_or_logged_in_before_the_user_joins_shows_on_entry);
/// WHOX: bob logged in to services and went away before alice joined; `away-notify` and
/// `account-notify` tell only of changes, so the gateway asks the channel once joined,
/// and alice sees his away show and account in the presence that follows her entry.
async fn who_is_away_or_logged_in_before_the_user_joins_shows_on_entry(kind: ServerKind) {
    let server = XmppServer::start(kind);
    let ircd = Inspircd::start();
    ircd.add_account("bobacct", "bobsecret");
    let _gateway = gateway_on_inspircd(&server, &ircd);
    let mut bob = ircd.client("bob").await;
    bob.join("#whox").await;
    bob.send_line("PRIVMSG NickServ :IDENTIFY bobacct bobsecret").await;
    bob.wait_for("bob logged in", |l| l.command == "900").await;
    bob.send_line("AWAY :gone fishing").await;
    bob.wait_for("bob away", |l| l.command == "306").await;

    let mut alice = server.client("alice", "localhost").await;
    let r = room("#whox", "localhost");
    enter(&mut alice, &r, "alice").await;
    let bob_jid = format!("{r}/bob");
    let away = alice
        .wait_for("bob's presence, away and logged in", |e| {
            e.name() == "presence" && e.attr("from") == Some(bob_jid.as_str()) && e.get_child("show", NS_CLIENT).is_some()
        })
        .await;
    assert_eq!(away.get_child("show", NS_CLIENT).map(|s| s.text()).as_deref(), Some("away"));
    assert_eq!(away.get_child("status", NS_CLIENT).map(|s| s.text()).as_deref(), Some("account bobacct"), "WHO does not give the away message");
    assert!(away.get_child("x", MUC_USER).is_some(), "an occupant presence");
}

on_each_server!(history_the_server_plays_back_on_join_keeps_its_time_as_a_delay);
/// `server-time` + `batch`: InspIRCd's channel history (mode +H) is played back on join
/// in a `chathistory` batch; each line reaches the user with its original time as a
/// XEP-0203 delay, and a live line after it has none.
async fn history_the_server_plays_back_on_join_keeps_its_time_as_a_delay(kind: ServerKind) {
    let server = XmppServer::start(kind);
    let ircd = Inspircd::start();
    let _gateway = gateway_on_inspircd(&server, &ircd);
    let mut bob = ircd.client("bob").await;
    bob.join("#hist").await;
    bob.send_line("MODE #hist +H 10:1d").await;
    bob.privmsg("#hist", "said before you came").await;
    // InspIRCd's server-time has millisecond precision; let the line be clearly older.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before_join = std::time::SystemTime::now();
    let mut alice = server.client("alice", "localhost").await;
    let r = room("#hist", "localhost");
    alice.send_raw(&format!("<presence to='{r}/alice'><x xmlns='{MUC}'/></presence>")).await;
    let bobs = format!("{r}/bob");
    let played = alice.wait_for("the played-back line", |e| is_groupchat_from(e, &bobs)).await;
    assert_eq!(body(&played).as_deref(), Some("said before you came"));
    let delay = played.get_child("delay", "urn:xmpp:delay").expect("a delay on the played-back line");
    let stamp: xmpp_parsers::date::DateTime = delay.attr("stamp").unwrap().parse().unwrap();
    let stamped = std::time::SystemTime::from(stamp.0);
    assert!(stamped < before_join, "the line's own time ({stamped:?}), before alice joined");
    assert_eq!(delay.attr("from"), Some(r.as_str()));

    bob.privmsg("#hist", "live now").await;
    let live = alice.wait_for("the live line", |e| is_groupchat_from(e, &bobs) && body(e).as_deref() == Some("live now")).await;
    assert!(live.get_child("delay", "urn:xmpp:delay").is_none(), "a live line has no delay");
}

on_each_server!(corrections_replies_reactions_and_links_arrive_on_irc_as_text);
/// XEP-0308, XEP-0461, XEP-0444 and XEP-0066 from a modern client, on InspIRCd (which
/// echoes: the gateway reflects these itself, with their markup, and drops the echoes).
async fn corrections_replies_reactions_and_links_arrive_on_irc_as_text(kind: ServerKind) {
    // Every part bound (`..` would drop the servers at once).
    let OnInspircd { server: _server, ircd: _ircd, gateway: _gateway, mut bob, mut alice, room: r } = on_inspircd(kind, "#feat", |_| {}).await;
    let own = format!("{r}/alice");

    // A correction of the last message: marked, only what changed.
    alice.send_raw(&format!("<message to='{r}' type='groupchat' id='c1'><body>helo world</body></message>")).await;
    assert_eq!(said_on_irc(&mut bob, "#feat", "the first version").await, "helo world");
    alice.wait_for("its reflection", |e| is_groupchat_from(e, &own) && e.attr("id") == Some("c1")).await;
    alice
        .send_raw(&format!(
            "<message to='{r}' type='groupchat' id='c2'><body>hello world</body><replace xmlns='urn:xmpp:message-correct:0' id='c1'/></message>"
        ))
        .await;
    assert_eq!(said_on_irc(&mut bob, "#feat", "the correction").await, "* hello world");
    let fixed = alice.wait_for("the correction's reflection", |e| is_groupchat_from(e, &own) && e.attr("id") == Some("c2")).await;
    assert_eq!(fixed.get_child("replace", "urn:xmpp:message-correct:0").and_then(|r| r.attr("id")), Some("c1"), "reflected as a correction");
    assert_eq!(body(&fixed).as_deref(), Some("hello world"));
    assert!(!alice.receives_within(Duration::from_millis(1000), |e| is_groupchat_from(e, &own)).await, "the echo is not a second reflection");

    // A correction that changes nothing sends nothing.
    alice
        .send_raw(&format!(
            "<message to='{r}' type='groupchat' id='c3'><body>hello world</body><replace xmlns='urn:xmpp:message-correct:0' id='c1'/></message>"
        ))
        .await;

    // A reply to bob's line: his nick in front, the quote left out.
    bob.privmsg("#feat", "is it up?").await;
    let bobs = format!("{r}/bob");
    let question = alice.wait_for("bob's question", |e| is_groupchat_from(e, &bobs)).await;
    let stanza_id = question.get_child("stanza-id", "urn:xmpp:sid:0").and_then(|s| s.attr("id")).expect("an archive id").to_owned();
    let quote = "&gt; bob: is it up?\n";
    alice
        .send_raw(&format!(
            "<message to='{r}' type='groupchat' id='r1'><body>{quote}yes it is</body>\
               <reply xmlns='urn:xmpp:reply:0' to='{bobs}' id='{stanza_id}'/>\
               <fallback xmlns='urn:xmpp:fallback:0' for='urn:xmpp:reply:0'><body start='0' end='17'/></fallback></message>"
        ))
        .await;
    assert_eq!(said_on_irc(&mut bob, "#feat", "the reply").await, "bob: yes it is", "nothing from the unchanged correction came first");

    // A reaction: an action naming what it reacts to.
    alice
        .send_raw(&format!(
            "<message to='{r}' type='groupchat' id='x1'><reactions xmlns='urn:xmpp:reactions:0' id='{stanza_id}'><reaction>👍</reaction></reactions></message>"
        ))
        .await;
    assert_eq!(said_on_irc(&mut bob, "#feat", "the reaction").await, "\u{1}ACTION reacted 👍 to bob: \"is it up?\"\u{1}");
    let reacted = alice.wait_for("the reaction's reflection", |e| is_groupchat_from(e, &own) && e.attr("id") == Some("x1")).await;
    assert!(reacted.get_child("reactions", "urn:xmpp:reactions:0").is_some());
    assert!(!alice.receives_within(Duration::from_millis(1000), |e| is_groupchat_from(e, &own) && e.attr("id") == Some("x1")).await, "one reflection of the reaction: not twice, and not its echo");

    // A link from an upload: added to the caption.
    alice
        .send_raw(&format!(
            "<message to='{r}' type='groupchat' id='l1'><body>look</body><x xmlns='jabber:x:oob'><url>https://upload.example.test/a.png</url></x></message>"
        ))
        .await;
    assert_eq!(said_on_irc(&mut bob, "#feat", "the link").await, "look https://upload.example.test/a.png");
}

on_each_server!(private_receipts_chat_states_markers_and_reactions_without_echo_message);
/// ngIRCd offers no `echo-message`: a receipt means the line was written to the server.
/// Chat states and markers cross nothing here and draw no error; a reaction quotes the
/// private message it answers.
async fn private_receipts_chat_states_markers_and_reactions_without_echo_message(kind: ServerKind) {
    let server = XmppServer::start(kind);
    let ircd = Ngircd::start(false);
    let _gateway = Gateway::start_irc(&server, &ircd, None);
    let mut bob = ircd.client("bob").await;
    let mut alice = server.client("alice", "localhost").await;
    let contact = format!("bob%127.0.0.1@{GW}");
    alice.send_raw(&format!("<message to='{contact}' type='chat' id='p1'><body>hello bob</body><request xmlns='{NS_RECEIPTS}'/></message>")).await;
    assert_eq!(said_on_irc(&mut bob, "bob", "alice's message").await, "hello bob");
    let receipt = alice.wait_for("the receipt", |e| e.get_child("received", NS_RECEIPTS).is_some()).await;
    assert_eq!(receipt.attr("from"), Some(contact.as_str()));
    assert_eq!(receipt.get_child("received", NS_RECEIPTS).and_then(|r| r.attr("id")), Some("p1"));

    alice.send_raw(&format!("<message to='{contact}' type='chat' id='s1'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>")).await;
    alice.send_raw(&format!("<message to='{contact}' type='chat' id='s2'><displayed xmlns='urn:xmpp:chat-markers:0' id='whatever'/></message>")).await;
    alice.send_raw(&format!("<message to='{contact}' type='chat' id='p2'><body>still here</body></message>")).await;
    assert_eq!(said_on_irc(&mut bob, "bob", "the next message").await, "still here", "nothing went to IRC for the state and the marker");
    assert!(!alice.receives_within(Duration::from_millis(1000), |e| e.attr("type") == Some("error")).await, "no error for a chat state or a marker");
    assert!(!alice.receives_within(Duration::from_millis(200), |e| e.get_child("received", NS_RECEIPTS).is_some()).await, "no receipt unasked");

    // A reaction to bob's private message (by its archive id): an action quoting it.
    bob.privmsg("alice", "lunch at noon?").await;
    let question = alice.wait_for("bob's message", |e| e.attr("from") == Some(contact.as_str()) && e.get_child("body", NS_CLIENT).is_some()).await;
    let stanza_id = question.get_child("stanza-id", "urn:xmpp:sid:0").and_then(|s| s.attr("id")).expect("an archive id").to_owned();
    alice
        .send_raw(&format!(
            "<message to='{contact}' type='chat' id='x2'><reactions xmlns='urn:xmpp:reactions:0' id='{stanza_id}'><reaction>👍</reaction></reactions></message>"
        ))
        .await;
    assert_eq!(said_on_irc(&mut bob, "bob", "the reaction").await, "\u{1}ACTION reacted 👍 to \"lunch at noon?\"\u{1}");
}

on_each_server!(typing_crosses_as_chat_states_and_ircv3_typing_tags);
/// XEP-0085 chat states and IRCv3 `+typing` (InspIRCd carries client tags between
/// clients that asked for `message-tags`): alice composing to bob is a `TAGMSG` with
/// `+typing=active`; bob typing to alice, or in the channel, is her `composing`.
async fn typing_crosses_as_chat_states_and_ircv3_typing_tags(kind: ServerKind) {
    let server = XmppServer::start(kind);
    let ircd = Inspircd::start();
    let _gateway = gateway_on_inspircd(&server, &ircd);
    let mut bob = IrcClient::connect_with_caps(ircd.port, "bob", "message-tags").await;
    bob.join("#typing").await;
    let mut alice = server.client("alice", "localhost").await;
    let r = room("#typing", "localhost");
    enter(&mut alice, &r, "alice").await;
    let contact = format!("bob%localhost@{GW}");
    // A message first: the conversation (and the session) exist; typing starts none.
    alice.send_raw(&format!("<message to='{contact}' type='chat' id='t0'><body>hi</body></message>")).await;
    assert_eq!(said_on_irc(&mut bob, "bob", "alice's message").await, "hi");

    alice.send_raw(&format!("<message to='{contact}' type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>")).await;
    let tagmsg = bob.wait_for("alice's typing", |l| l.command == "TAGMSG").await;
    assert!(tagmsg.raw.starts_with("@") && tagmsg.raw.contains("+typing=active"), "{}", tagmsg.raw);
    assert_eq!(tagmsg.prefix_nick.as_deref(), Some("alice"));
    assert_eq!(tagmsg.params.first().map(String::as_str), Some("bob"));

    let is_state = |e: &Element, from: &str, name: &str| e.attr("from") == Some(from) && e.get_child(name, "http://jabber.org/protocol/chatstates").is_some();
    bob.send_line("@+typing=active TAGMSG alice").await;
    let private = alice.wait_for("bob typing to alice", |e| is_state(e, &contact, "composing")).await;
    assert_eq!(private.attr("type"), Some("chat"));
    assert!(private.get_child("body", NS_CLIENT).is_none());
    bob.send_line("@+typing=paused TAGMSG #typing").await;
    let bobs = format!("{r}/bob");
    let in_room = alice.wait_for("bob typing in the room", |e| is_state(e, &bobs, "paused")).await;
    assert_eq!(in_room.attr("type"), Some("groupchat"));
}
