//! The gateway on jabberd2 (Debian's 2.7.0: router, sm, c2s from `scripts/jabberd2.sh`),
//! the third XMPP server it is proven on: the component connects through the router's
//! shared XEP-0114 secret, users register and discover it, and an IRC channel (a real
//! ngIRCd) talks both ways. The suites of `on_each_server!` run on Prosody and ejabberd;
//! these tests are what jabberd2 adds.

use minidom::Element;
use testkit::irc::Ngircd;
use testkit::*;

const MUC: &str = "http://jabber.org/protocol/muc";
const MUC_USER: &str = "http://jabber.org/protocol/muc#user";

fn jabberd2() -> XmppServer {
    XmppServer::start(ServerKind::Jabberd2)
}

fn body(stanza: &Element) -> Option<String> {
    stanza.get_child("body", NS_CLIENT).map(|b| b.text())
}

fn status_codes(stanza: &Element) -> Vec<String> {
    stanza
        .get_child("x", MUC_USER)
        .map(|x| x.children().filter(|c| c.name() == "status").filter_map(|c| c.attr("code")).map(str::to_owned).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn jabberd2_the_component_connects_through_the_router_and_answers_disco_info() {
    let server = jabberd2();
    let gateway = Gateway::start(&server);
    assert_eq!(gateway.connections(), 1);
    // The router bound the component's domain to the gateway's connection.
    assert!(server.log_text().contains(&format!("[{GW}] online")), "router log:\n{}", server.log_text());

    let mut alice = server.client("alice", "localhost").await;
    let info = alice.iq("get", "<query xmlns='http://jabber.org/protocol/disco#info'/>").await;
    assert_eq!(info.attr("type"), Some("result"), "{info:?}");
    assert_eq!(info.attr("from"), Some(GW));
    let query = info.get_child("query", "http://jabber.org/protocol/disco#info").expect("a disco#info query");
    let identities: Vec<_> = query
        .children()
        .filter(|c| c.name() == "identity")
        .map(|c| format!("{}/{}", c.attr("category").unwrap_or_default(), c.attr("type").unwrap_or_default()))
        .collect();
    assert!(identities.contains(&"gateway/irc".into()) && identities.contains(&"gateway/smtp".into()), "{identities:?}");
    let features: Vec<_> = query.children().filter_map(|c| c.attr("var")).collect();
    for feature in ["jabber:iq:register", "jabber:iq:gateway", MUC, "urn:xmpp:ping", "http://jabber.org/protocol/commands"] {
        assert!(features.contains(&feature), "missing feature {feature}: {features:?}");
    }
    let pong = alice.iq("get", "<ping xmlns='urn:xmpp:ping'/>").await;
    assert_eq!(pong.attr("type"), Some("result"), "{pong:?}");
}

#[tokio::test]
async fn jabberd2_a_user_registers_with_the_gateway_reads_it_back_and_unregisters() {
    let server = jabberd2();
    let _gateway = Gateway::start(&server);
    let mut alice = server.client("alice", "localhost").await;

    let form = alice.iq("get", "<query xmlns='jabber:iq:register'/>").await;
    let query = form.get_child("query", "jabber:iq:register").expect("a registration form");
    assert!(!query.has_child("registered", "jabber:iq:register"), "{form:?}");
    assert!(query.get_child("x", "jabber:x:data").is_some(), "{form:?}");

    let set = alice.iq("set", &register_form(&[("irc_nick", "alice_irc"), ("irc_password", "irc-secret")])).await;
    assert_eq!(set.attr("type"), Some("result"), "{set:?}");
    // XEP-0100: the gateway asks for the user's presence, and jabberd2's sm delivers it.
    alice
        .wait_for("a subscription request from the gateway", |e| {
            e.name() == "presence" && e.attr("type") == Some("subscribe") && e.attr("from") == Some(GW)
        })
        .await;

    let back = alice.iq("get", "<query xmlns='jabber:iq:register'/>").await;
    let query = back.get_child("query", "jabber:iq:register").expect("a registration query");
    assert!(query.has_child("registered", "jabber:iq:register"), "{back:?}");
    assert_eq!(form_value(query, "irc_nick").as_deref(), Some("alice_irc"));
    assert!(!format!("{back:?}").contains("irc-secret"), "a password came back: {back:?}");

    let remove = alice.iq("set", "<query xmlns='jabber:iq:register'><remove/></query>").await;
    assert_eq!(remove.attr("type"), Some("result"), "{remove:?}");
    let after = alice.iq("get", "<query xmlns='jabber:iq:register'/>").await;
    let query = after.get_child("query", "jabber:iq:register").expect("a registration query");
    assert!(!query.has_child("registered", "jabber:iq:register"), "{after:?}");
}

#[tokio::test]
async fn jabberd2_a_user_of_the_second_host_reaches_the_gateway_and_its_allowed_domains_apply() {
    // One sm serves localhost and other.localhost; the gateway only admits localhost.
    let server = jabberd2();
    let _gateway = Gateway::start(&server);
    let mut eve = server.client("eve", "other.localhost").await;
    assert!(eve.jid.starts_with("eve@other.localhost/"), "{}", eve.jid);
    let info = eve.iq("get", "<query xmlns='http://jabber.org/protocol/disco#info'/>").await;
    assert_eq!(info.attr("type"), Some("result"), "{info:?}");
    let reply = eve.iq("set", &register_form(&[("irc_nick", "eve")])).await;
    assert_eq!(error_condition(&reply).as_deref(), Some("forbidden"), "{reply:?}");
}

#[tokio::test]
async fn jabberd2_a_channel_room_talks_both_ways_with_an_irc_user() {
    let server = jabberd2();
    let ircd = Ngircd::start(false);
    let _gateway = Gateway::start_irc(&server, &ircd, None);
    let mut bob = ircd.client("bob").await;
    bob.join("#talk").await;
    let mut alice = server.client("alice", "localhost").await;
    let room = format!("#talk%127.0.0.1@{GW}");

    alice.send_raw(&format!("<presence to='{room}/alice'><x xmlns='{MUC}'/></presence>")).await;
    alice
        .wait_for("bob's occupant presence", |e| e.name() == "presence" && e.attr("from") == Some(format!("{room}/bob").as_str()))
        .await;
    let me = alice
        .wait_for("the self-presence", |e| e.name() == "presence" && e.attr("from") == Some(format!("{room}/alice").as_str()))
        .await;
    assert!(status_codes(&me).contains(&"110".into()), "{me:?}");
    bob.wait_for("alice's JOIN", |l| l.command == "JOIN" && l.prefix_nick.as_deref() == Some("alice")).await;

    // XMPP -> IRC, with the MUC echo.
    alice.send_raw(&format!("<message to='{room}' type='groupchat'><body>hello from jabberd2</body></message>")).await;
    let line = bob.wait_for("alice's PRIVMSG", |l| l.is_privmsg_to("#talk")).await;
    assert_eq!(line.text(), "hello from jabberd2");
    assert_eq!(line.prefix_nick.as_deref(), Some("alice"));
    let echo = alice.wait_for("the echo", |e| body(e).as_deref() == Some("hello from jabberd2")).await;
    assert_eq!(echo.attr("from"), Some(format!("{room}/alice").as_str()));

    // IRC -> XMPP.
    bob.privmsg("#talk", "hello from irc").await;
    let m = alice.wait_for("bob's answer", |e| body(e).as_deref() == Some("hello from irc")).await;
    assert_eq!(m.attr("type"), Some("groupchat"));
    assert_eq!(m.attr("from"), Some(format!("{room}/bob").as_str()));
    assert_eq!(m.attr("to"), Some(alice.jid.as_str()));
}

#[tokio::test]
async fn jabberd2_a_wrong_secret_is_refused_and_the_gateway_exits_saying_so() {
    let server = jabberd2();
    let mut gateway = Gateway::start_with_no_wait(&server, "not-the-secret");
    let code = gateway.wait_exit(std::time::Duration::from_secs(10));
    assert_eq!(code, Some(2), "log:\n{}", gateway.log_text());
    let log = gateway.log_text();
    assert!(log.contains("refused the component secret"), "{log}");
    assert!(!log.contains("not-the-secret"), "the secret leaked into the log: {log}");
}
