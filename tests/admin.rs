//! Issue 10: the administrators' commands (XEP-0133 nodes over XEP-0050) and the
//! Prometheus endpoint, against real Prosody and ngIRCd, with the Rust test client.

use std::io::{Read, Write};

use minidom::Element;
use testkit::irc::Ngircd;
use testkit::*;

const CMD: &str = "http://jabber.org/protocol/commands";
const DATA: &str = "jabber:x:data";
const MUC: &str = "http://jabber.org/protocol/muc";
const ADMIN: &str = "http://jabber.org/protocol/admin";

/// Runs command `node` at once (`execute`) and returns its `<command/>` (or the error iq).
async fn execute(client: &mut Client, node: &str) -> Element {
    let reply = client.iq("set", &format!("<command xmlns='{CMD}' node='{node}' action='execute'/>")).await;
    reply.get_child("command", CMD).cloned().unwrap_or(reply)
}

/// Runs command `node` with a form where field `var` holds `values`, in two steps as a
/// client does: execute, then complete the session with the form.
async fn submit(client: &mut Client, node: &str, fields: &[(&str, &[&str])]) -> Element {
    let first = execute(client, node).await;
    assert_eq!(first.attr("status"), Some("executing"), "{first:?}");
    let session = first.attr("sessionid").unwrap();
    let fields: String = fields
        .iter()
        .map(|(var, values)| {
            let values: String = values.iter().map(|v| format!("<value>{v}</value>")).collect();
            format!("<field var='{var}'>{values}</field>")
        })
        .collect();
    let reply = client
        .iq(
            "set",
            &format!(
                "<command xmlns='{CMD}' node='{node}' sessionid='{session}'><x xmlns='{DATA}' type='submit'>\
                 <field var='FORM_TYPE' type='hidden'><value>{ADMIN}</value></field>{fields}</x></command>"
            ),
        )
        .await;
    reply.get_child("command", CMD).cloned().unwrap_or(reply)
}

/// The values of field `var` in a command's form.
fn field(command: &Element, var: &str) -> Vec<String> {
    command
        .get_child("x", DATA)
        .and_then(|x| x.children().find(|f| f.attr("var") == Some(var)))
        .map(|f| f.children().filter(|v| v.name() == "value").map(Element::text).collect())
        .unwrap_or_default()
}

/// `GET /metrics` over plain HTTP/1.0; the body.
fn scrape(port: u16) -> String {
    let mut socket = std::net::TcpStream::connect(("127.0.0.1", port)).expect("the metrics endpoint");
    socket.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut response = String::new();
    socket.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_owned()
}

/// The value of metric `name` in a scrape.
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

async fn enter(client: &mut Client, room: &str, nick: &str) {
    client.send_raw(&format!("<presence to='{room}/{nick}'><x xmlns='{MUC}'/></presence>")).await;
    client
        .wait_for("the room's self-presence", |e| {
            e.name() == "presence" && e.attr("from") == Some(&format!("{room}/{nick}")) && e.attr("type").is_none()
        })
        .await;
}

#[tokio::test]
async fn administrators_list_disconnect_ban_delete_and_announce_and_nobody_else_may() {
    let server = XmppServer::start(ServerKind::Prosody);
    let ircd = Ngircd::start(false);
    let metrics_port = free_port();
    let networks = format!(
        "[irc.networks.\"127.0.0.1\"]\nport = {}\ntls = false\nflood_burst = 0\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n",
        ircd.port
    );
    let gateway = Gateway::start_irc_networks(&server, &networks);
    let before = scrape(metrics_port);

    // alice is a user; bob is the configured administrator.
    let mut alice = server.client("alice", "localhost").await;
    let mut bob = server.client("bob", "localhost").await;
    let registered = alice.iq("set", &register_form(&[("irc_nick", "alice")])).await;
    assert_eq!(registered.attr("type"), Some("result"), "{registered:?}");
    let room = format!("#admin%127.0.0.1@{GW}");
    enter(&mut alice, &room, "alice").await;
    let mut carol = ircd.client("carol").await;
    carol.join("#admin").await;

    // Every administrators' command is refused to alice, and not even listed for her.
    for (node, _) in [
        ("status", ()),
        ("http://jabber.org/protocol/admin#get-registered-users-list", ()),
        ("http://jabber.org/protocol/admin#get-online-users-list", ()),
        ("http://jabber.org/protocol/admin#end-user-session", ()),
        ("http://jabber.org/protocol/admin#delete-user", ()),
        ("http://jabber.org/protocol/admin#edit-blacklist", ()),
        ("http://jabber.org/protocol/admin#announce", ()),
    ] {
        let refused = execute(&mut alice, node).await;
        assert_eq!(error_condition(&refused).as_deref(), Some("forbidden"), "{node}: {refused:?}");
    }
    let items = |reply: &Element| -> Vec<String> {
        reply
            .get_child("query", "http://jabber.org/protocol/disco#items")
            .map(|q| q.children().filter_map(|i| i.attr("node").map(str::to_owned)).collect())
            .unwrap_or_default()
    };
    let list = format!("<query xmlns='http://jabber.org/protocol/disco#items' node='{CMD}'/>");
    assert_eq!(items(&alice.iq("get", &list).await), ["configure", "contacts"]);
    assert_eq!(items(&bob.iq("get", &list).await).len(), 9, "configure, contacts and seven administrators' commands");

    // Lists: registered users, online users with what they have open.
    let users = execute(&mut bob, "http://jabber.org/protocol/admin#get-registered-users-list").await;
    assert_eq!(field(&users, "registereduserjids"), ["alice@localhost"]);
    let online = execute(&mut bob, "http://jabber.org/protocol/admin#get-online-users-list").await;
    assert!(field(&online, "onlineuserjids").contains(&"alice@localhost".to_owned()), "{online:?}");
    let sessions = field(&online, "sessions").join("\n");
    assert!(sessions.contains("alice@localhost: IRC 127.0.0.1: #admin"), "{sessions}");

    // Status: gauges and counters.
    let status = execute(&mut bob, "status").await;
    assert_eq!(field(&status, "irc_connections"), ["1"]);
    assert_eq!(field(&status, "rooms"), ["1"]);
    assert!(field(&status, "stanzas_in")[0].parse::<u64>().unwrap() > 0);

    // An announcement reaches alice.
    let sent = submit(&mut bob, "http://jabber.org/protocol/admin#announce", &[("subject", &["Maintenance"]), ("body", &["Back at noon."])]).await;
    assert_eq!(sent.attr("status"), Some("completed"), "{sent:?}");
    let headline = alice.wait_for("the announcement", |e| e.attr("type") == Some("headline")).await;
    assert_eq!(headline.get_child("body", NS_CLIENT).map(Element::text).as_deref(), Some("Back at noon."));
    assert_eq!(headline.attr("from"), Some(GW));
    let empty = submit(&mut bob, "http://jabber.org/protocol/admin#announce", &[("body", &[""])]).await;
    assert_eq!(error_condition(&empty).as_deref(), Some("bad-request"));

    // Disconnecting alice closes her room and her IRC connection.
    let done = submit(&mut bob, "http://jabber.org/protocol/admin#end-user-session", &[("accountjids", &["alice@localhost"])]).await;
    assert_eq!(done.attr("status"), Some("completed"), "{done:?}");
    let closed = alice
        .wait_for("the room closing", |e| e.attr("from") == Some(&format!("{room}/alice")) && e.attr("type") == Some("unavailable"))
        .await;
    assert!(closed.get_child("status", NS_CLIENT).is_some_and(|s| s.text().contains("administrator")), "{closed:?}");
    carol.wait_for("alice's QUIT", |l| l.command == "QUIT" && l.prefix_nick.as_deref() == Some("alice")).await;
    let bad = submit(&mut bob, "http://jabber.org/protocol/admin#end-user-session", &[("accountjids", &["not@a@jid"])]).await;
    assert_eq!(error_condition(&bad).as_deref(), Some("bad-request"));

    // A ban on alice's whole domain: everything she asks is forbidden, bob (an
    // administrator) is spared; the ban survives a restart; unbanned, she is back.
    let banned = submit(&mut bob, "http://jabber.org/protocol/admin#edit-blacklist", &[("blacklistjids", &["localhost"])]).await;
    assert_eq!(banned.attr("status"), Some("completed"), "{banned:?}");
    let refused = alice.iq("get", "<query xmlns='jabber:iq:register'/>").await;
    assert_eq!(error_condition(&refused).as_deref(), Some("forbidden"));
    alice.send_raw(&format!("<presence to='{room}/alice'><x xmlns='{MUC}'/></presence>")).await;
    let refused = alice.wait_for("the join's error", |e| e.name() == "presence" && e.attr("type") == Some("error")).await;
    assert_eq!(error_condition(&refused).as_deref(), Some("forbidden"));
    assert!(error_text(&refused).contains("banned"), "{refused:?}");
    let mut gateway = gateway;
    gateway.signal("TERM");
    assert_eq!(gateway.wait_exit(std::time::Duration::from_secs(10)), Some(0));
    gateway.spawn();
    let refused = alice.iq("get", "<query xmlns='jabber:iq:register'/>").await;
    assert_eq!(error_condition(&refused).as_deref(), Some("forbidden"), "the ban is kept");
    let shown = execute(&mut bob, "http://jabber.org/protocol/admin#edit-blacklist").await;
    assert_eq!(field(&shown, "blacklistjids"), ["localhost"]);
    let unbanned = submit(&mut bob, "http://jabber.org/protocol/admin#edit-blacklist", &[("blacklistjids", &[])]).await;
    assert_eq!(unbanned.attr("status"), Some("completed"), "{unbanned:?}");
    enter(&mut alice, &room, "alice").await;

    // The metrics (counted since the restart): gauges of what is open, counters moving.
    let during = scrape(metrics_port);
    assert_eq!(metric(&during, "xmpp_gateway_irc_connections"), 1, "{during}");
    assert_eq!(metric(&during, "xmpp_gateway_rooms"), 1, "{during}");
    assert!(metric(&during, "xmpp_gateway_online_users") >= 1, "{during}");
    assert!(metric(&during, "xmpp_gateway_resident_memory_bytes") > 1024 * 1024, "{during}");
    for counter in ["xmpp_gateway_stanzas_in_total", "xmpp_gateway_stanzas_out_total", "xmpp_gateway_irc_lines_in_total", "xmpp_gateway_irc_lines_out_total"] {
        assert!(metric(&during, counter) > 0, "{counter}:\n{during}");
    }
    assert!(metric(&during, "xmpp_gateway_errors_out_total") >= 1, "the refusal after the restart");

    // Deleting alice's registration: it is gone, and her rooms close.
    let deleted = submit(&mut bob, "http://jabber.org/protocol/admin#delete-user", &[("accountjids", &["alice@localhost"])]).await;
    assert_eq!(deleted.attr("status"), Some("completed"), "{deleted:?}");
    let closed = alice
        .wait_for("the room closing", |e| e.attr("from") == Some(&format!("{room}/alice")) && e.attr("type") == Some("unavailable"))
        .await;
    assert!(closed.get_child("status", NS_CLIENT).is_some_and(|s| s.text().contains("unregistered")), "{closed:?}");
    let users = execute(&mut bob, "http://jabber.org/protocol/admin#get-registered-users-list").await;
    assert!(field(&users, "registereduserjids").is_empty(), "{users:?}");

    // The counters moved on; the gauges fell back.
    let after = scrape(metrics_port);
    assert!(metric(&after, "xmpp_gateway_stanzas_in_total") > metric(&during, "xmpp_gateway_stanzas_in_total"));
    assert_eq!(metric(&after, "xmpp_gateway_irc_connections"), 0, "{after}");
    eprintln!("figures: a scrape after the test:\n{after}\n(the first, at start:\n{before})");
}
