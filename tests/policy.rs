//! Issue 10's network policy against the real servers: a user cannot make the gateway
//! connect where the administrator did not allow. Every refusal names its rule, and
//! listeners on the refused addresses prove that no connection was even attempted.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use minidom::Element;
use testkit::irc::Ngircd;
use testkit::*;

const MUC: &str = "http://jabber.org/protocol/muc";

/// A listener on `address` that counts the connections it is offered.
async fn tripwire(address: &str) -> Arc<AtomicUsize> {
    let listener = tokio::net::TcpListener::bind(address).await.unwrap_or_else(|e| panic!("binding {address}: {e}"));
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    tokio::spawn(async move {
        while listener.accept().await.is_ok() {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    seen
}

/// Joins `room` as `nick` and returns the error presence the room answers with.
async fn refused_join(client: &mut Client, room: &str, nick: &str) -> Element {
    client.send_raw(&format!("<presence to='{room}/{nick}'><x xmlns='{MUC}'/></presence>")).await;
    client
        .wait_for("the join's error", |e| {
            e.name() == "presence" && e.attr("type") == Some("error") && e.attr("from").is_some_and(|f| f.starts_with(room))
        })
        .await
}

/// The condition and text of an error stanza.
fn error_of(stanza: &Element) -> (String, String) {
    let error = stanza.get_child("error", NS_CLIENT).unwrap_or_else(|| panic!("no error in {stanza:?}"));
    let condition = error.children().find(|c| c.name() != "text").map(|c| c.name().to_owned()).unwrap_or_default();
    let text = error.children().find(|c| c.name() == "text").map(Element::text).unwrap_or_default();
    (condition, text)
}

#[tokio::test]
async fn irc_servers_on_non_public_addresses_are_refused_without_a_connection() {
    let server = XmppServer::start(ServerKind::Prosody);
    let ircd = Ngircd::start(false);
    let gateway = Gateway::start_irc(&server, &ircd, None);
    // Where the refused joins would connect: unknown servers are tried on 6697.
    let loopback = tripwire("127.0.0.2:6697").await;
    let mut alice = server.client("alice", "localhost").await;
    for (host, rule) in [
        ("127.0.0.2", "loopback"),
        // A name that resolves to loopback addresses (127.0.0.1 and ::1).
        ("localhost", "loopback"),
        ("10.1.2.3", "private"),
        ("192.168.0.1", "private"),
        ("169.254.169.254", "link-local"),
        ("100.64.0.1", "CGNAT"),
        ("0.0.0.0", "unspecified"),
    ] {
        let error = refused_join(&mut alice, &format!("#x%{host}@{GW}"), "alice").await;
        let (condition, text) = error_of(&error);
        assert_eq!(condition, "not-allowed", "{host}: {text}");
        assert!(text.contains(rule) && text.contains("only public addresses"), "{host}: {text}");
        assert!(!text.contains("refused") && !text.contains("timed out"), "{host}: a socket error told: {text}");
    }
    // A port or an IPv6 literal cannot even be written in a room's address.
    for host in ["127.0.0.2:6667", "[::1]", "::1"] {
        let error = refused_join(&mut alice, &format!("#x%{}@{GW}", host.replace(':', "\\3a")), "alice").await;
        assert_eq!(error_of(&error).0, "jid-malformed", "{host}");
    }
    assert_eq!(loopback.load(Ordering::SeqCst), 0, "a connection reached the refused address");
    // The configured network is trusted as written, though it is loopback too.
    alice.send_raw(&format!("<presence to='#ok%127.0.0.1@{GW}/alice'><x xmlns='{MUC}'/></presence>")).await;
    alice
        .wait_for("the configured network's room", |e| {
            e.name() == "presence" && e.attr("type").is_none() && e.attr("from").is_some_and(|f| f.starts_with("#ok%127.0.0.1"))
        })
        .await;
    assert!(!gateway.log_text().contains("panicked"));
}

#[tokio::test]
async fn with_networks_only_nothing_but_the_configured_networks_is_reached() {
    let server = XmppServer::start(ServerKind::Prosody);
    let ircd = Ngircd::start(false);
    let gateway = Gateway::start_irc_networks(
        &server,
        &format!("[irc]\nnetworks_only = true\n[irc.networks.\"127.0.0.1\"]\nport = {}\ntls = false\nflood_burst = 0\n", ircd.port),
    );
    let mut alice = server.client("alice", "localhost").await;
    let error = refused_join(&mut alice, &format!("#x%irc.example.org@{GW}"), "alice").await;
    let (condition, text) = error_of(&error);
    assert_eq!(condition, "not-allowed");
    assert!(text.contains("only connects to the IRC networks it is configured for (127.0.0.1)"), "{text}");
    // A private message to a user of another network is refused the same way.
    alice.send_raw(&format!("<message to='bob%irc.example.org@{GW}' type='chat' id='m1'><body>hi</body></message>")).await;
    let bounce = alice.wait_for("the message's error", |e| e.name() == "message" && e.attr("type") == Some("error")).await;
    assert_eq!(error_of(&bounce).0, "not-allowed");
    drop(gateway);
}

#[tokio::test]
async fn mail_servers_users_give_must_be_public_and_on_mail_ports() {
    let server = XmppServer::start(ServerKind::Prosody);
    let gateway = Gateway::start(&server);
    let imap = tripwire("127.0.0.2:993").await;
    let smtp = tripwire("127.0.0.2:465").await;
    let mut alice = server.client("alice", "localhost").await;
    let register = |imap: &str, smtp: &str| {
        register_form(&[("email_address", "alice@elsewhere.example"), ("email_password", "pw"), ("imap_server", imap), ("smtp_server", smtp)])
    };
    for (imap_server, smtp_server, field, words) in [
        ("127.0.0.1:22", "smtp.elsewhere.example:465", "imap_server", "port 22"),
        ("imap.elsewhere.example:993", "127.0.0.1:6379", "smtp_server", "port 6379"),
        ("127.0.0.2:993", "127.0.0.2:465", "imap_server", "loopback"),
    ] {
        let answer = alice.iq("set", &register(imap_server, smtp_server)).await;
        assert_eq!(answer.attr("type"), Some("error"), "{imap_server} {smtp_server}");
        let (condition, text) = error_of(&answer);
        assert_eq!(condition, "not-acceptable", "{text}");
        assert!(text.contains(field) && text.contains(words), "{imap_server} {smtp_server}: {text}");
    }
    assert_eq!((imap.load(Ordering::SeqCst), smtp.load(Ordering::SeqCst)), (0, 0), "a connection reached a refused mail server");
    drop(gateway);
}

/// Waits for `client`'s self-presence from `room`.
async fn joined(client: &mut Client, room: &str, nick: &str) {
    client.send_raw(&format!("<presence to='{room}/{nick}'><x xmlns='{MUC}'/></presence>")).await;
    client
        .wait_for("the self-presence", |e| {
            e.name() == "presence" && e.attr("type").is_none() && e.attr("from") == Some(format!("{room}/{nick}").as_str())
        })
        .await;
}

#[tokio::test]
async fn a_user_past_a_limit_is_told_and_everything_else_goes_on() {
    let server = XmppServer::start(ServerKind::Prosody);
    let ircd = Ngircd::start(false);
    let gateway = Gateway::start_irc_networks(
        &server,
        &format!(
            "[limits]\nchannels_per_user = 1\nmessage_bytes_irc = 100\n\
             [irc.networks.\"127.0.0.1\"]\nport = {}\ntls = false\nflood_burst = 0\n",
            ircd.port
        ),
    );
    let mut carol = ircd.client("carol").await;
    carol.join("#one").await;
    let mut alice = server.client("alice", "localhost").await;
    let mut bob = server.client("bob", "localhost").await;
    let one = format!("#one%127.0.0.1@{GW}");
    joined(&mut alice, &one, "alice").await;

    // A second channel is one too many for alice; bob is not affected.
    let error = refused_join(&mut alice, &format!("#two%127.0.0.1@{GW}"), "alice").await;
    let (condition, text) = error_of(&error);
    assert_eq!(condition, "resource-constraint");
    assert!(text.contains("1 IRC channels, the most this gateway allows per user"), "{text}");
    joined(&mut bob, &format!("#two%127.0.0.1@{GW}"), "bob").await;

    // A message over the size limit is refused whole; the next one goes through.
    let long = "x".repeat(101);
    alice.send_raw(&format!("<message to='{one}' type='groupchat' id='long'><body>{long}</body></message>")).await;
    let bounce = alice.wait_for("the long message's error", |e| e.name() == "message" && e.attr("type") == Some("error")).await;
    let (condition, text) = error_of(&bounce);
    assert_eq!(condition, "policy-violation");
    assert!(text.contains("at most 100 bytes"), "{text}");
    alice.send_raw(&format!("<message to='{one}' type='groupchat' id='short'><body>still here</body></message>")).await;
    let line = carol.wait_for("alice's next line", |l| l.is_privmsg_to("#one")).await;
    assert_eq!(line.text(), "still here", "the long message never reached IRC");
    drop(gateway);
}

#[tokio::test]
async fn a_stanza_past_the_size_limit_is_refused_and_the_stream_stays_up() {
    let server = XmppServer::start(ServerKind::Prosody);
    let ircd = Ngircd::start(false);
    let gateway = Gateway::start_irc_networks(
        &server,
        &format!("[limits]\nstanza_bytes = 4096\n[irc.networks.\"127.0.0.1\"]\nport = {}\ntls = false\nflood_burst = 0\n", ircd.port),
    );
    let mut carol = ircd.client("carol").await;
    carol.join("#big").await;
    let mut alice = server.client("alice", "localhost").await;
    let room = format!("#big%127.0.0.1@{GW}");
    joined(&mut alice, &room, "alice").await;
    // 64 KiB of children: Prosody relays it, the gateway must not hold it.
    let payload = "<x xmlns='urn:example:junk'>".to_owned() + &"<y>0123456789abcdef</y>".repeat(2800) + "</x>";
    alice.send_raw(&format!("<message to='{room}' type='groupchat' id='huge'><body>huge</body>{payload}</message>")).await;
    let bounce = alice.wait_for("the huge stanza's error", |e| e.name() == "message" && e.attr("type") == Some("error")).await;
    assert_eq!(bounce.attr("id"), Some("huge"));
    let (condition, text) = error_of(&bounce);
    assert_eq!(condition, "policy-violation");
    assert!(text.contains("larger than 4096 bytes"), "{text}");
    alice.send_raw(&format!("<message to='{room}' type='groupchat' id='next'><body>the next one</body></message>")).await;
    let line = carol.wait_for("alice's next line", |l| l.is_privmsg_to("#big")).await;
    assert_eq!(line.text(), "the next one", "nothing of the huge one reached IRC");
    drop(gateway);
}

#[tokio::test]
async fn a_domain_past_its_registrations_of_the_hour_is_told_to_wait_and_updates_still_work() {
    let server = XmppServer::start(ServerKind::Prosody);
    let ircd = Ngircd::start(false);
    let gateway = Gateway::start_irc_networks(
        &server,
        &format!("[limits]\nregistrations_per_domain_per_hour = 1\n[irc.networks.\"127.0.0.1\"]\nport = {}\ntls = false\n", ircd.port),
    );
    server.add_users(&[("carol", "localhost")]);
    let mut alice = server.client("alice", "localhost").await;
    let mut carol = server.client("carol", "localhost").await;
    let first = alice.iq("set", &register_form(&[("irc_nick", "alice")])).await;
    assert_eq!(first.attr("type"), Some("result"), "{first:?}");
    let second = carol.iq("set", &register_form(&[("irc_nick", "carol")])).await;
    let (condition, text) = error_of(&second);
    assert_eq!(condition, "resource-constraint");
    assert!(text.contains("localhost had its 1 new registrations of this hour"), "{text}");
    // alice changing her registration is no new one.
    let update = alice.iq("set", &register_form(&[("irc_nick", "alice2")])).await;
    assert_eq!(update.attr("type"), Some("result"), "{update:?}");
    // bob, an administrator, is not counted.
    let mut bob = server.client("bob", "localhost").await;
    let admin = bob.iq("set", &register_form(&[("irc_nick", "bob")])).await;
    assert_eq!(admin.attr("type"), Some("result"), "{admin:?}");
    drop(gateway);
}

#[tokio::test]
async fn a_full_outbox_refuses_the_next_mail_and_the_queued_ones_still_go() {
    let server = XmppServer::start(ServerKind::Prosody);
    let mail = testkit::mail::MailServer::start();
    mail.add_user("alice@example.test", "alice-mail-pw");
    mail.add_user("bob@example.test", "bob-mail-pw");
    let gateway = Gateway::start_irc_networks(
        &server,
        &format!(
            "[limits]\noutbox_mails_per_user = 2\n[irc.networks.\"127.0.0.1\"]\nport = 6667\ntls = false\n\
             [email.providers.\"example.test\"]\nimap = \"127.0.0.1:{}\"\nimap_security = \"plain\"\n\
             smtp = \"127.0.0.1:{}\"\nsmtp_security = \"plain\"\n",
            mail.imap_port, mail.submission_port
        ),
    );
    let mut alice = server.client("alice", "localhost").await;
    let registered = alice.iq("set", &register_form(&[("email_address", "alice@example.test"), ("email_password", "alice-mail-pw")])).await;
    assert_eq!(registered.attr("type"), Some("result"), "{registered:?}");
    // The mail server goes away: mail waits in the outbox, two at most.
    mail.stop();
    let bob = "bob\\40example.test@gw.localhost";
    for i in 1..=3 {
        alice.send_raw(&format!("<message to='{bob}' type='chat' id='m{i}'><subject>queued {i}</subject><body>mail {i}</body></message>")).await;
    }
    let bounce = alice.wait_for("the third mail's error", |e| e.name() == "message" && e.attr("type") == Some("error")).await;
    assert_eq!(bounce.attr("id"), Some("m3"));
    let (condition, text) = error_of(&bounce);
    assert_eq!(condition, "resource-constraint");
    assert!(text.contains("2 mails already wait") && text.contains("outbox_mails_per_user"), "{text}");
    // Back: the two queued mails arrive, once each; the outbox takes mail again.
    mail.start_again();
    let inbox = mail.wait_inbox("bob@example.test", "bob-mail-pw", 2, std::time::Duration::from_secs(60));
    let subjects: Vec<String> = inbox.iter().map(|m| String::from_utf8_lossy(m).lines().find(|l| l.starts_with("Subject:")).unwrap_or_default().to_owned()).collect();
    assert_eq!(subjects, ["Subject: queued 1", "Subject: queued 2"]);
    alice.send_raw(&format!("<message to='{bob}' type='chat' id='m4'><subject>after</subject><body>mail 4</body></message>")).await;
    let inbox = mail.wait_inbox("bob@example.test", "bob-mail-pw", 3, std::time::Duration::from_secs(60));
    assert_eq!(inbox.len(), 3);
    drop(gateway);
}

#[tokio::test]
async fn a_message_that_would_overfill_the_irc_send_queue_is_refused_and_the_queue_drains() {
    let server = XmppServer::start(ServerKind::Prosody);
    let ircd = Ngircd::start(false);
    // The default rate limit: a burst of 4 lines, then 2 a second.
    let gateway = Gateway::start_irc_networks(&server, &format!("[irc.networks.\"127.0.0.1\"]\nport = {}\ntls = false\n", ircd.port));
    let mut carol = ircd.client("carol").await;
    carol.join("#q").await;
    let mut alice = server.client("alice", "localhost").await;
    let room = format!("#q%127.0.0.1@{GW}");
    joined(&mut alice, &room, "alice").await;
    // 1,001 lines at once: more than the 1,000 the session queues.
    let paste = "line\n".repeat(1001);
    alice.send_raw(&format!("<message to='{room}' type='groupchat' id='paste'><body>{paste}</body></message>")).await;
    let bounce = alice.wait_for("the paste's error", |e| e.name() == "message" && e.attr("type") == Some("error")).await;
    assert_eq!(bounce.attr("id"), Some("paste"));
    let (condition, text) = error_of(&bounce);
    assert_eq!(condition, "resource-constraint");
    assert!(text.contains("wait for the IRC server's rate limit"), "{text}");
    alice.send_raw(&format!("<message to='{room}' type='groupchat' id='short'><body>short one</body></message>")).await;
    let line = carol.wait_for("alice's next line", |l| l.is_privmsg_to("#q")).await;
    assert_eq!(line.text(), "short one", "no line of the refused paste reached IRC");
    drop(gateway);
}
