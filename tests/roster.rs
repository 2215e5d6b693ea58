//! Contacts in the roster, against real Prosody (with and without `mod_privilege`,
//! XEP-0356), real ejabberd (`mod_privilege`) and real Postfix + Dovecot: a correspondent is pushed into the user's roster
//! with a name and a group where the server grants it, asks for a subscription where
//! not, and what was pushed goes with the registration.

use std::time::Duration;

use minidom::Element;
use testkit::irc::Ngircd;
use testkit::mail::MailServer;
use testkit::*;

const ALICE: &str = "alice@example.test";
const BOB: &str = "bob@example.test";
/// Bob's address as a contact on the gateway.
const BOB_JID: &str = "bob\\40example.test@gw.localhost";
const NS_ROSTER: &str = "jabber:iq:roster";

struct Setup {
    server: XmppServer,
    mail: MailServer,
    gateway: Gateway,
}

fn setup(kind: ServerKind, roster_privilege: bool) -> Setup {
    let server = XmppServer::start_with(kind, ServerOptions { roster_privilege, ..ServerOptions::default() });
    let mail = MailServer::start();
    mail.add_user(ALICE, "alice-mail-pw");
    mail.add_user(BOB, "bob-mail-pw");
    let gateway = Gateway::start_mail(&server, &mail, false);
    Setup { server, mail, gateway }
}

/// Alice, logged in with her mail account registered and her INBOX watched.
async fn alice_registered(s: &Setup) -> Client {
    let mut alice = s.server.client("alice", "localhost").await;
    let form = register_form(&[("email_address", ALICE), ("email_password", "alice-mail-pw")]);
    let set = alice.iq("set", &form).await;
    assert_eq!(set.attr("type"), Some("result"), "{set:?}\n{}", s.gateway.log_text());
    s.gateway.wait_log("IDLE on alice's INBOX", &["watching INBOX", "user=alice@localhost"], 0).await;
    alice
}

/// A mail from "Bob" to alice.
fn mail_from_bob(subject: &str) -> Vec<u8> {
    format!(
        "From: Bob <{BOB}>\r\nTo: {ALICE}\r\nSubject: {subject}\r\nMessage-ID: <{subject}.{}@example.test>\r\n\r\nhello\r\n",
        std::process::id()
    )
    .into_bytes()
}

/// The items of the client's roster, as its server returns them (a real roster get).
async fn roster_items(client: &mut Client) -> Vec<Element> {
    let reply = client.iq_raw("get", None, &format!("<query xmlns='{NS_ROSTER}'/>")).await;
    assert_eq!(reply.attr("type"), Some("result"), "{reply:?}");
    let query = reply.get_child("query", NS_ROSTER).expect("a roster");
    query.children().filter(|item| item.name() == "item").cloned().collect()
}

fn item_for<'a>(items: &'a [Element], jid: &str) -> Option<&'a Element> {
    items.iter().find(|item| item.attr("jid") == Some(jid))
}

#[tokio::test]
async fn with_privilege_a_correspondent_is_pushed_named_and_grouped_and_leaves_with_the_registration() {
    let s = setup(ServerKind::Prosody, true);
    s.gateway.wait_log("the server's grant", &["put contacts into its users' rosters", "host=localhost"], 0).await;
    let mut alice = alice_registered(&s).await;
    assert!(item_for(&roster_items(&mut alice).await, BOB_JID).is_none());

    s.mail.send_raw(BOB, ALICE, &mail_from_bob("first"));
    alice.wait_for("bob's mail", |e| e.name() == "message" && e.attr("from") == Some(BOB_JID)).await;
    let items = roster_items(&mut alice).await;
    let bob = item_for(&items, BOB_JID).unwrap_or_else(|| panic!("bob in the roster: {items:?}\n{}", s.gateway.log_text()));
    assert_eq!(bob.attr("name"), Some("Bob"));
    assert_eq!(bob.attr("subscription"), Some("both"));
    let groups: Vec<String> = bob.children().filter(|c| c.name() == "group").map(Element::text).collect();
    assert_eq!(groups, ["Email"]);
    // No subscription request besides: the roster has him already.
    assert!(!alice.receives_within(Duration::from_millis(300), |e| e.name() == "presence" && e.attr("type") == Some("subscribe") && e.attr("from") == Some(BOB_JID)).await);

    // The contacts command lists him, and puts him back after alice removed him.
    let removed = alice.iq_raw("set", None, &format!("<query xmlns='{NS_ROSTER}'><item jid='{BOB_JID}' subscription='remove'/></query>")).await;
    assert_eq!(removed.attr("type"), Some("result"), "{removed:?}");
    assert!(item_for(&roster_items(&mut alice).await, BOB_JID).is_none());
    let done = alice.iq("set", "<command xmlns='http://jabber.org/protocol/commands' node='contacts' action='execute'/>").await;
    let note = done.get_child("command", "http://jabber.org/protocol/commands").and_then(|c| c.get_child("note", "http://jabber.org/protocol/commands")).map(Element::text);
    let note = note.unwrap_or_default();
    assert!(note.contains("1 contact,") && note.contains(&format!("Bob <{BOB_JID}> (Email)")), "{done:?}");
    wait_in_roster(&mut alice, true).await;

    // Unregistering takes him out again.
    let removed = alice.iq("set", "<query xmlns='jabber:iq:register'><remove/></query>").await;
    assert_eq!(removed.attr("type"), Some("result"), "{removed:?}");
    wait_in_roster(&mut alice, false).await;
}

/// Waits until bob is in alice's roster (`present`) or not.
async fn wait_in_roster(alice: &mut Client, present: bool) {
    wait_for_item(alice, BOB_JID, present).await;
}

/// Waits until `jid` is in the client's roster (`present`) or not; returns its item.
async fn wait_for_item(alice: &mut Client, jid: &str, present: bool) -> Option<Element> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let items = roster_items(alice).await;
        if item_for(&items, jid).is_some() == present {
            return item_for(&items, jid).cloned();
        }
        assert!(tokio::time::Instant::now() < deadline, "bob in the roster: {}, wanted {present}: {items:?}", !present);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

on_each_server!(without_privilege_the_correspondent_asks_for_a_subscription_once);
async fn without_privilege_the_correspondent_asks_for_a_subscription_once(kind: ServerKind) {
    let s = setup(kind, false);
    let mut alice = alice_registered(&s).await;
    s.mail.send_raw(BOB, ALICE, &mail_from_bob("first"));
    let request = alice
        .wait_for("bob's subscription request", |e| e.name() == "presence" && e.attr("type") == Some("subscribe") && e.attr("from") == Some(BOB_JID))
        .await;
    let nick = request.get_child("nick", "http://jabber.org/protocol/nick").map(Element::text);
    assert_eq!(nick.as_deref(), Some("Bob"), "{request:?}");
    alice.wait_for("bob's mail", |e| e.name() == "message" && e.attr("from") == Some(BOB_JID)).await;
    assert!(item_for(&roster_items(&mut alice).await, BOB_JID).is_none(), "nothing written into the roster without a grant");

    // A second mail: he asked already.
    s.mail.send_raw(BOB, ALICE, &mail_from_bob("second"));
    alice.wait_for("bob's second mail", |e| e.name() == "message" && e.attr("from") == Some(BOB_JID)).await;
    assert!(!alice.receives_within(Duration::from_millis(300), |e| e.name() == "presence" && e.attr("type") == Some("subscribe") && e.attr("from") == Some(BOB_JID)).await);
}

/// Without roster access, a client that says it takes XEP-0144 roster item exchange
/// (asked by disco#info once it is online to the gateway) gets a suggestion, named and
/// grouped, instead of a subscription request.
#[tokio::test]
async fn a_client_taking_roster_item_exchange_gets_a_suggestion_instead_of_a_request() {
    let s = setup(ServerKind::Prosody, false);
    let mut alice = alice_registered(&s).await;
    alice.send_raw(&format!("<presence to='{GW}'/>")).await;
    s.gateway.wait_log("alice online to the gateway", &["user online", "user=alice@localhost"], 0).await;
    s.mail.send_raw(BOB, ALICE, &mail_from_bob("first"));
    let disco = alice
        .wait_for("the gateway asking what the client takes", |e| {
            e.name() == "iq" && e.attr("type") == Some("get") && e.has_child("query", "http://jabber.org/protocol/disco#info")
        })
        .await;
    assert_eq!(disco.attr("from"), Some(GW));
    alice
        .send_raw(&format!(
            "<iq type='result' id='{}' to='{GW}'><query xmlns='http://jabber.org/protocol/disco#info'>\
             <identity category='client' type='pc' name='test'/><feature var='http://jabber.org/protocol/disco#info'/>\
             <feature var='http://jabber.org/protocol/rosterx'/></query></iq>",
            disco.attr("id").unwrap()
        ))
        .await;
    let suggestion = alice.wait_for("the suggestion", |e| e.name() == "message" && e.has_child("x", "http://jabber.org/protocol/rosterx")).await;
    assert_eq!(suggestion.attr("from"), Some(GW));
    let item = suggestion.get_child("x", "http://jabber.org/protocol/rosterx").and_then(|x| x.get_child("item", "http://jabber.org/protocol/rosterx")).unwrap();
    assert_eq!((item.attr("action"), item.attr("jid"), item.attr("name")), (Some("add"), Some(BOB_JID), Some("Bob")));
    assert_eq!(item.get_child("group", "http://jabber.org/protocol/rosterx").map(Element::text).as_deref(), Some("Email"));
    alice.wait_for("bob's mail", |e| e.name() == "message" && e.attr("from") == Some(BOB_JID)).await;
    let asked = |e: &Element| e.name() == "presence" && e.attr("type") == Some("subscribe") && e.attr("from") == Some(BOB_JID);
    assert!(!alice.seen.iter().any(asked) && !alice.receives_within(Duration::from_millis(300), asked).await, "a suggestion, not also a request");
}

/// ejabberd 23.01 (Debian 12) grants roster access, then fails every roster set of a
/// component (`internal-server-error`: its mod_roster looks the component's domain up as
/// one of its hosts). The contact asks for a subscription instead, the stream stays up,
/// and later contacts go straight to a subscription request.
#[tokio::test]
async fn where_the_server_refuses_a_granted_push_the_contact_asks_for_a_subscription() {
    let s = setup(ServerKind::Ejabberd, true);
    s.gateway.wait_log("the server's grant", &["put contacts into its users' rosters", "host=localhost"], 0).await;
    let mut alice = alice_registered(&s).await;
    s.mail.send_raw(BOB, ALICE, &mail_from_bob("first"));
    let request = alice
        .wait_for("bob's subscription request", |e| e.name() == "presence" && e.attr("type") == Some("subscribe") && e.attr("from") == Some(BOB_JID))
        .await;
    assert_eq!(request.get_child("nick", "http://jabber.org/protocol/nick").map(Element::text).as_deref(), Some("Bob"));
    alice.wait_for("bob's mail", |e| e.name() == "message" && e.attr("from") == Some(BOB_JID)).await;
    assert!(s.gateway.log_lines_with(&["the roster push failed", "user=alice@localhost"]) > 0, "{}", s.gateway.log_text());
    assert_eq!(s.gateway.connections(), 1, "the push did not cost the stream: {}", s.gateway.log_text());
    assert!(item_for(&roster_items(&mut alice).await, BOB_JID).is_none());
}

#[tokio::test]
async fn an_irc_user_in_a_private_conversation_joins_the_irc_group() {
    let server = XmppServer::start_with(ServerKind::Prosody, ServerOptions { roster_privilege: true, ..ServerOptions::default() });
    let ircd = Ngircd::start(false);
    let gateway = Gateway::start_irc(&server, &ircd, None);
    gateway.wait_log("the server's grant", &["put contacts into its users' rosters", "host=localhost"], 0).await;
    let mut bob = ircd.client("bob").await;
    let mut alice = server.client("alice", "localhost").await;
    let bob_jid = format!("bob%127.0.0.1@{GW}");
    alice.send_raw(&format!("<message to='{bob_jid}' type='chat'><body>psst bob</body></message>")).await;
    bob.wait_for("the private message", |l| l.is_privmsg_to("bob")).await;
    let item = wait_for_item(&mut alice, &bob_jid, true).await.unwrap();
    assert_eq!(item.attr("name"), Some("bob"));
    let groups: Vec<String> = item.children().filter(|c| c.name() == "group").map(Element::text).collect();
    assert_eq!(groups, ["IRC"]);
}

/// Debian's slixmpp, a real client library, running `tests/clients/roster_client.py` as
/// alice: it prints its roster whenever it changes.
struct Slixmpp {
    /// The client process (killed when dropped).
    _child: tokio::process::Child,
    /// Its output, line by line.
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl Slixmpp {
    /// Logs alice in with slixmpp and waits until it says it is ready.
    async fn alice(server: &XmppServer) -> Slixmpp {
        use tokio::io::AsyncBufReadExt;
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/roster_client.py");
        // Debian's interpreter, where its python3-slixmpp is (not one of a version manager).
        let mut child = tokio::process::Command::new("/usr/bin/python3")
            .arg(script)
            .args([&server.c2s_port.to_string(), "alice@localhost", "pw"])
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 with slixmpp (Debian's python3-slixmpp, installed by scripts/install-deps.sh)");
        let lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let mut client = Slixmpp { _child: child, lines };
        client.line_where("slixmpp's login", |line| line == "ready").await;
        client
    }

    /// The next line that `pred` accepts (within `testkit::WAIT`).
    async fn line_where(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let found = tokio::time::timeout(WAIT, async {
            while let Some(line) = self.lines.next_line().await.expect("slixmpp's output") {
                if pred(&line) {
                    return Some(line);
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(line)) => line,
            Ok(None) => panic!("slixmpp ended before {what}"),
            Err(_) => panic!("no {what} from slixmpp within {WAIT:?}"),
        }
    }

    /// The first roster slixmpp prints whose item `jid` `pred` accepts.
    async fn roster_item_where(&mut self, what: &str, jid: &str, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let line = self
            .line_where(what, |line| {
                let Some(json) = line.strip_prefix("roster ") else { return false };
                serde_json::from_str::<serde_json::Value>(json).ok().and_then(|roster| roster.get(jid).cloned()).is_some_and(|item| pred(&item))
            })
            .await;
        let roster: serde_json::Value = serde_json::from_str(line.strip_prefix("roster ").unwrap()).unwrap();
        roster[jid].clone()
    }
}

#[tokio::test]
async fn slixmpp_shows_the_pushed_contact_named_in_its_group() {
    let s = setup(ServerKind::Prosody, true);
    s.gateway.wait_log("the server's grant", &["put contacts into its users' rosters", "host=localhost"], 0).await;
    drop(alice_registered(&s).await);
    let mut slixmpp = Slixmpp::alice(&s.server).await;
    s.mail.send_raw(BOB, ALICE, &mail_from_bob("first"));
    let bob = slixmpp.roster_item_where("bob in the roster", BOB_JID, |_| true).await;
    assert_eq!(bob["name"], "Bob", "{bob}");
    assert_eq!(bob["groups"], serde_json::json!(["Email"]), "{bob}");
    assert_eq!(bob["subscription"], "both", "{bob}");
}

#[tokio::test]
async fn slixmpp_accepts_the_subscription_request_and_the_contact_becomes_mutual() {
    let s = setup(ServerKind::Prosody, false);
    drop(alice_registered(&s).await);
    let mut slixmpp = Slixmpp::alice(&s.server).await;
    s.mail.send_raw(BOB, ALICE, &mail_from_bob("first"));
    // slixmpp accepts a request and asks back; the gateway answers for bob's address.
    let bob = slixmpp.roster_item_where("bob subscribed both ways", BOB_JID, |item| item["subscription"] == "both").await;
    assert_eq!(bob["subscription"], "both", "{bob}");
}
