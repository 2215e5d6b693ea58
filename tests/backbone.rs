//! The component backbone against a real Prosody (and ejabberd): connect, discover,
//! register, survive restarts and bad input.

use std::time::{Duration, Instant};

use testkit::*;

fn prosody() -> XmppServer {
    XmppServer::start(ServerKind::Prosody)
}

async fn disco_version_ping(server: &XmppServer) {
    let mut alice = server.client("alice", "localhost").await;
    let info = alice.iq("get", "<query xmlns='http://jabber.org/protocol/disco#info'/>").await;
    assert_eq!(info.attr("type"), Some("result"), "{info:?}");
    let query = info.get_child("query", "http://jabber.org/protocol/disco#info").unwrap();
    let identities: Vec<_> = query
        .children()
        .filter(|c| c.name() == "identity")
        .map(|c| format!("{}/{}", c.attr("category").unwrap(), c.attr("type").unwrap()))
        .collect();
    assert!(identities.contains(&"gateway/irc".into()) && identities.contains(&"gateway/smtp".into()), "{identities:?}");
    let features: Vec<_> = query.children().filter_map(|c| c.attr("var")).collect();
    for f in [
        "jabber:iq:register",
        "jabber:iq:gateway",
        "http://jabber.org/protocol/muc",
        "urn:xmpp:ping",
        "jabber:iq:version",
        "http://jabber.org/protocol/commands",
    ] {
        assert!(features.contains(&f), "missing feature {f}: {features:?}");
    }

    let items = alice.iq("get", "<query xmlns='http://jabber.org/protocol/disco#items'/>").await;
    assert_eq!(items.attr("type"), Some("result"), "{items:?}");
    let items = items.get_child("query", "http://jabber.org/protocol/disco#items").unwrap();
    assert!(items.children().any(|i| i.attr("jid") == Some("127.0.0.1@gw.localhost")), "{items:?}");

    let version = alice.iq("get", "<query xmlns='jabber:iq:version'/>").await;
    let version = version.get_child("query", "jabber:iq:version").expect("version answer");
    assert_eq!(version.get_child("name", "jabber:iq:version").unwrap().text(), "xmpp-gateway");

    let pong = alice.iq("get", "<ping xmlns='urn:xmpp:ping'/>").await;
    assert_eq!(pong.attr("type"), Some("result"), "{pong:?}");
}

async fn register_read_update_unregister(server: &XmppServer) {
    let mut alice = server.client("alice", "localhost").await;
    let form = alice.iq("get", "<query xmlns='jabber:iq:register'/>").await;
    let query = form.get_child("query", "jabber:iq:register").expect("a registration form");
    assert!(!query.has_child("registered", "jabber:iq:register"));
    assert!(query.get_child("x", "jabber:x:data").is_some());

    // (Email registration needs a real mail server: tests/email.rs.)
    let set = alice.iq("set", &register_form(&[("irc_nick", "alice_irc"), ("irc_password", "irc-secret")])).await;
    assert_eq!(set.attr("type"), Some("result"), "{set:?}");
    // XEP-0100: the gateway asks for the user's presence.
    alice
        .wait_for("a subscription request from the gateway", |e| {
            e.name() == "presence" && e.attr("type") == Some("subscribe") && e.attr("from") == Some(GW)
        })
        .await;

    let back = alice.iq("get", "<query xmlns='jabber:iq:register'/>").await;
    let query = back.get_child("query", "jabber:iq:register").unwrap();
    assert!(query.has_child("registered", "jabber:iq:register"));
    assert_eq!(form_value(query, "irc_nick").as_deref(), Some("alice_irc"));
    let text = format!("{back:?}");
    assert!(!text.contains("irc-secret"), "a password came back: {text}");

    let update = alice.iq("set", &register_form(&[("irc_nick", "alice2")])).await;
    assert_eq!(update.attr("type"), Some("result"), "{update:?}");
    let back = alice.iq("get", "<query xmlns='jabber:iq:register'/>").await;
    let query = back.get_child("query", "jabber:iq:register").unwrap();
    assert_eq!(form_value(query, "irc_nick").as_deref(), Some("alice2"));

    let remove = alice.iq("set", "<query xmlns='jabber:iq:register'><remove/></query>").await;
    assert_eq!(remove.attr("type"), Some("result"), "{remove:?}");
    let after = alice.iq("get", "<query xmlns='jabber:iq:register'/>").await;
    assert!(!after.get_child("query", "jabber:iq:register").unwrap().has_child("registered", "jabber:iq:register"));
    let again = alice.iq("set", "<query xmlns='jabber:iq:register'><remove/></query>").await;
    assert_eq!(error_condition(&again).as_deref(), Some("registration-required"));
}

#[tokio::test]
async fn prosody_disco_version_and_ping() {
    let server = prosody();
    let _gateway = Gateway::start(&server);
    disco_version_ping(&server).await;
}

#[tokio::test]
async fn prosody_register_read_back_update_unregister() {
    let server = prosody();
    let _gateway = Gateway::start(&server);
    register_read_update_unregister(&server).await;
}

#[tokio::test]
async fn ejabberd_connect_register_and_disco() {
    let server = XmppServer::start(ServerKind::Ejabberd);
    let _gateway = Gateway::start(&server);
    disco_version_ping(&server).await;
    register_read_update_unregister(&server).await;
}

#[tokio::test]
async fn user_of_a_domain_not_allowed_is_forbidden() {
    let server = prosody();
    let _gateway = Gateway::start(&server);
    let mut eve = server.client("eve", "other.localhost").await;
    let reply = eve.iq("set", &register_form(&[("irc_nick", "eve")])).await;
    assert_eq!(error_condition(&reply).as_deref(), Some("forbidden"), "{reply:?}");
    assert!(error_text(&reply).contains("allowed_domains"));
    // Public information stays public.
    let info = eve.iq("get", "<query xmlns='http://jabber.org/protocol/disco#info'/>").await;
    assert_eq!(info.attr("type"), Some("result"));
}

#[tokio::test]
async fn a_form_with_a_bad_value_is_refused_with_the_field_named() {
    let server = prosody();
    let _gateway = Gateway::start(&server);
    let mut alice = server.client("alice", "localhost").await;
    for (fields, field) in [
        (vec![("irc_nick", "no spaces please")], "irc_nick"),
        (vec![("email_address", "not-an-address"), ("email_password", "x")], "email_address"),
        (vec![("email_address", "a@example.test")], "email_password"),
        (vec![("email_address", "a@elsewhere.org"), ("email_password", "x"), ("imap_server", "nope")], "imap_server"),
    ] {
        let reply = alice.iq("set", &register_form(&fields)).await;
        assert_eq!(error_condition(&reply).as_deref(), Some("not-acceptable"), "{fields:?}: {reply:?}");
        assert!(error_text(&reply).contains(field), "{fields:?}: {}", error_text(&reply));
    }
    let after = alice.iq("get", "<query xmlns='jabber:iq:register'/>").await;
    assert!(!after.get_child("query", "jabber:iq:register").unwrap().has_child("registered", "jabber:iq:register"));
}

#[tokio::test]
async fn jabber_iq_gateway_translates_typed_addresses() {
    let server = prosody();
    let _gateway = Gateway::start(&server);
    let mut alice = server.client("alice", "localhost").await;
    let prompt = alice.iq("get", "<query xmlns='jabber:iq:gateway'/>").await;
    assert!(prompt.get_child("query", "jabber:iq:gateway").unwrap().has_child("prompt", "jabber:iq:gateway"));
    let reply = alice.iq("set", "<query xmlns='jabber:iq:gateway'><prompt>bob@example.org</prompt></query>").await;
    let jid = reply.get_child("query", "jabber:iq:gateway").and_then(|q| q.get_child("jid", "jabber:iq:gateway")).map(|j| j.text());
    assert_eq!(jid.as_deref(), Some("bob\\40example.org@gw.localhost"));
    let reply = alice.iq("set", "<query xmlns='jabber:iq:gateway'><prompt>what is this</prompt></query>").await;
    assert_eq!(error_condition(&reply).as_deref(), Some("jid-malformed"));
}

#[tokio::test]
async fn unknown_iqs_and_bad_addresses_get_errors_not_silence() {
    let server = prosody();
    let _gateway = Gateway::start(&server);
    let mut alice = server.client("alice", "localhost").await;
    let reply = alice.iq("get", "<query xmlns='urn:example:unknown'/>").await;
    assert_eq!(error_condition(&reply).as_deref(), Some("service-unavailable"), "{reply:?}");
    let reply = alice.iq_raw("get", Some("%nothing@gw.localhost"), "<query xmlns='http://jabber.org/protocol/disco#info'/>").await;
    assert_eq!(error_condition(&reply).as_deref(), Some("jid-malformed"), "{reply:?}");
    assert!(error_text(&reply).contains("#chan%irc.example.org"), "{}", error_text(&reply));
    // Email without registration.
    alice.send_raw("<message to='bob\\40example.test@gw.localhost' id='m1' type='chat'><body>hi</body></message>").await;
    let reply = alice.wait_for("an error for the unregistered email message", |e| e.name() == "message" && e.attr("id") == Some("m1")).await;
    assert!(error_condition(&reply).is_some(), "{reply:?}");
}

#[tokio::test]
async fn garbage_stanzas_do_not_disconnect_the_gateway() {
    let server = prosody();
    let gateway = Gateway::start(&server);
    let mut alice = server.client("alice", "localhost").await;
    for garbage in [
        "<iq type='get' id='g1' to='gw.localhost'/>",
        "<iq type='bogus' id='g2' to='gw.localhost'><ping xmlns='urn:xmpp:ping'/></iq>",
        "<iq type='set' id='g3' to='gw.localhost'><query xmlns='jabber:iq:register'><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>a</value><value>b</value></field></x></query></iq>",
        "<message to='gw.localhost' type='nonsense'><body>x</body><thread parent='&amp;'/></message>",
        "<message to='#%@gw.localhost'><body>x</body></message>",
        "<presence to='gw.localhost' type='weird'/>",
        "<presence to='#c%irc.example.org@gw.localhost'><x xmlns='http://jabber.org/protocol/muc'/></presence>",
        "<iq type='get' id='g4' to='gw.localhost'><query xmlns='jabber:iq:version'/><query xmlns='jabber:iq:version'/></iq>",
    ] {
        alice.send_raw(garbage).await;
    }
    // Still answering, on the same connection.
    let pong = alice.iq("get", "<ping xmlns='urn:xmpp:ping'/>").await;
    assert_eq!(pong.attr("type"), Some("result"), "{pong:?}");
    assert_eq!(gateway.connections(), 1, "the gateway reconnected:\n{}", gateway.log_text());
}

#[tokio::test]
async fn server_restart_gateway_is_back_within_5s_with_data_intact() {
    let server = prosody();
    let gateway = Gateway::start(&server);
    let mut alice = server.client("alice", "localhost").await;
    let set = alice.iq("set", &register_form(&[("irc_nick", "alice_irc")])).await;
    assert_eq!(set.attr("type"), Some("result"));
    drop(alice);

    server.stop();
    let restarted = Instant::now();
    server.start_again();
    let server_up = restarted.elapsed();
    let waited = gateway.wait_connected(2, Duration::from_secs(5));
    eprintln!("figures: prosody restart {server_up:?}, gateway reconnected {waited:?} after the server was up");

    let mut alice = server.client("alice", "localhost").await;
    let back = alice.iq("get", "<query xmlns='jabber:iq:register'/>").await;
    let query = back.get_child("query", "jabber:iq:register").unwrap();
    assert_eq!(form_value(query, "irc_nick").as_deref(), Some("alice_irc"));
}

#[tokio::test]
async fn a_server_that_stops_answering_is_left_and_rejoined() {
    let server = prosody();
    let gateway = Gateway::start(&server);
    let pid = std::fs::read_to_string(server.dir.path().join("prosody.pid")).unwrap().trim().to_owned();
    let signal = |name: &str| assert!(std::process::Command::new("kill").args([name, &pid]).status().unwrap().success());
    // Frozen for longer than the gateway waits for an answer to its ping (2 x 1 s), then
    // back: the gateway must have closed the old connection, or the server keeps that
    // session and refuses the new one as "already connected", for ever.
    signal("-STOP");
    std::thread::sleep(Duration::from_millis(3500));
    signal("-CONT");
    let waited = gateway.wait_connected(2, Duration::from_secs(10));
    eprintln!("figures: back {waited:?} after the server thawed");
    // Left because the keepalive ping went unanswered, not for another reason.
    assert!(gateway.log_text().contains("no answer from the server"), "{}", gateway.log_text());
    let mut alice = server.client("alice", "localhost").await;
    let form = alice.iq("get", "<query xmlns='jabber:iq:register'/>").await;
    assert_eq!(form.attr("type"), Some("result"), "{form:?}\n{}", gateway.log_text());
}

#[tokio::test]
async fn kill_9_and_restart_keeps_every_acknowledged_registration() {
    let server = prosody();
    let mut gateway = Gateway::start(&server);
    let mut alice = server.client("alice", "localhost").await;
    let mut bob = server.client("bob", "localhost").await;
    let a = alice.iq("set", &register_form(&[("irc_nick", "alice_irc"), ("irc_password", "pw1")])).await;
    let b = bob.iq("set", &register_form(&[("irc_nick", "bob_irc")])).await;
    assert_eq!((a.attr("type"), b.attr("type")), (Some("result"), Some("result")));
    // No pause: the acknowledgement itself must mean "on disk".
    gateway.kill_9();
    let started = Instant::now();
    gateway.spawn();
    eprintln!("figures: gateway start to connected {:?}", started.elapsed());

    let back = alice.iq("get", "<query xmlns='jabber:iq:register'/>").await;
    assert_eq!(form_value(back.get_child("query", "jabber:iq:register").unwrap(), "irc_nick").as_deref(), Some("alice_irc"));
    let back = bob.iq("get", "<query xmlns='jabber:iq:register'/>").await;
    assert_eq!(form_value(back.get_child("query", "jabber:iq:register").unwrap(), "irc_nick").as_deref(), Some("bob_irc"));
}

#[tokio::test]
async fn wrong_secret_exits_with_a_clear_message() {
    let server = prosody();
    let mut gateway = Gateway::start_with_no_wait(&server, "not-the-secret");
    let code = gateway.wait_exit(Duration::from_secs(10));
    assert_eq!(code, Some(2));
    let log = gateway.log_text();
    assert!(log.contains("refused the component secret"), "{log}");
    assert!(!log.contains("not-the-secret"), "the secret leaked into the log: {log}");
}

#[tokio::test]
async fn sigterm_says_goodbye_to_online_users_and_exits_cleanly() {
    let server = prosody();
    let mut gateway = Gateway::start(&server);
    let mut alice = server.client("alice", "localhost").await;
    let set = alice.iq("set", &register_form(&[("irc_nick", "alice_irc")])).await;
    assert_eq!(set.attr("type"), Some("result"));
    alice.send_raw("<presence to='gw.localhost'/>").await;
    alice
        .wait_for("the gateway's presence", |e| e.name() == "presence" && e.attr("from") == Some(GW) && e.attr("type").is_none())
        .await;
    gateway.signal("TERM");
    alice
        .wait_for("the gateway's goodbye", |e| {
            e.name() == "presence" && e.attr("from") == Some(GW) && e.attr("type") == Some("unavailable")
        })
        .await;
    assert_eq!(gateway.wait_exit(Duration::from_secs(10)), Some(0));
    assert!(gateway.log_text().contains("shut down"));
}

#[test]
fn check_config_validates_and_names_bad_keys() {
    let bin = env!("CARGO_BIN_EXE_xmpp-gateway");
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/gateway.example.toml");
    let ok = std::process::Command::new(bin).args(["check-config", "--config", example]).output().unwrap();
    assert!(ok.status.success(), "{ok:?}");
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[component]\njid = \"gw\"\nsecret = \"s\"\nsurprise = 1\n[storage]\npath = \"/x\"\n").unwrap();
    let out = std::process::Command::new(bin).args(["check-config", "--config", bad.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("surprise") && err.contains("bad.toml"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

/// How many stanzas Prosody's debug log shows it received from the gateway's component
/// connection as iqs of `kind` with a keepalive id (`Received[component]: <iq ...>`, the
/// top tag only, attributes in any order).
fn keepalive_iqs_received(server: &XmppServer, kind: &str) -> usize {
    server
        .log_text()
        .lines()
        .filter(|line| line.contains("Received[component]: <iq "))
        .filter(|line| line.contains(&format!("type='{kind}'")) && line.contains("id='keepalive-"))
        .filter(|line| line.contains(&format!("to='{GW}'")) && line.contains(&format!("from='{GW}'")))
        .count()
}

#[tokio::test]
async fn an_idle_connection_is_kept_alive_by_answered_pings() {
    let server = XmppServer::start_with(ServerKind::Prosody, ServerOptions { debug_log: true, ..ServerOptions::default() });
    let gateway = Gateway::start(&server);
    // keepalive_secs = 1: an unanswered ping would cost a reconnection within 2 s.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(gateway.connections(), 1, "{}", gateway.log_text());
    // The pings did go out: the server received the gateway's pings to itself (routed
    // back to the gateway) and the gateway's answers to them, about one a second. Prosody
    // logs the top tag only; the answer being a result, not an error, shows the iq was a
    // ping (the gateway refuses an iq it does not know with service-unavailable).
    let (pings, answers) = (keepalive_iqs_received(&server, "get"), keepalive_iqs_received(&server, "result"));
    eprintln!("figures: {pings} keepalive pings and {answers} answers in 4 s of silence");
    assert!(pings >= 2 && answers >= 2, "{pings} pings, {answers} answers; server log:\n{}", server.log_text());
    let mut alice = server.client("alice", "localhost").await;
    let pong = alice.iq("get", "<ping xmlns='urn:xmpp:ping'/>").await;
    assert_eq!(pong.attr("type"), Some("result"));
}

#[tokio::test]
async fn ad_hoc_commands_configure_settings_and_show_status_to_admins() {
    let server = prosody();
    let _gateway = Gateway::start(&server);
    let mut alice = server.client("alice", "localhost").await;
    const CMD: &str = "http://jabber.org/protocol/commands";
    let items = alice.iq("get", &format!("<query xmlns='http://jabber.org/protocol/disco#items' node='{CMD}'/>")).await;
    let nodes: Vec<String> = items
        .get_child("query", "http://jabber.org/protocol/disco#items")
        .unwrap()
        .children()
        .filter_map(|i| i.attr("node").map(str::to_owned))
        .collect();
    assert_eq!(nodes, vec!["configure", "contacts"], "alice is no admin");

    let started = alice.iq("set", &format!("<command xmlns='{CMD}' node='configure' action='execute'/>")).await;
    let command = started.get_child("command", CMD).expect("a command");
    assert_eq!(command.attr("status"), Some("executing"));
    let session = command.attr("sessionid").unwrap().to_owned();
    assert!(command.get_child("x", "jabber:x:data").is_some());

    let done = alice
        .iq(
            "set",
            &format!(
                "<command xmlns='{CMD}' node='configure' sessionid='{session}'><x xmlns='jabber:x:data' type='submit'>\
                 <field var='irc_nick'><value>alice_cmd</value></field></x></command>"
            ),
        )
        .await;
    assert_eq!(done.get_child("command", CMD).and_then(|c| c.attr("status")), Some("completed"), "{done:?}");
    let back = alice.iq("get", "<query xmlns='jabber:iq:register'/>").await;
    assert_eq!(form_value(back.get_child("query", "jabber:iq:register").unwrap(), "irc_nick").as_deref(), Some("alice_cmd"));

    let bad = alice
        .iq(
            "set",
            &format!(
                "<command xmlns='{CMD}' node='configure' sessionid='{session}'><x xmlns='jabber:x:data' type='submit'>\
                 <field var='irc_nick'><value>bad nick</value></field></x></command>"
            ),
        )
        .await;
    assert_eq!(error_condition(&bad).as_deref(), Some("not-acceptable"));

    let refused = alice.iq("set", &format!("<command xmlns='{CMD}' node='status' action='execute'/>")).await;
    assert_eq!(error_condition(&refused).as_deref(), Some("forbidden"));
    let mut bob = server.client("bob", "localhost").await;
    let status = bob.iq("set", &format!("<command xmlns='{CMD}' node='status' action='execute'/>")).await;
    let command = status.get_child("command", CMD).expect("a status");
    assert_eq!(command.attr("status"), Some("completed"));
    let registered = command
        .get_child("x", "jabber:x:data")
        .and_then(|x| x.children().find(|f| f.attr("var") == Some("registered")))
        .and_then(|f| f.get_child("value", "jabber:x:data"))
        .map(|v| v.text());
    assert_eq!(registered.as_deref(), Some("1"));
}
