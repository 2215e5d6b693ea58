//! The PostgreSQL store against a real PostgreSQL 15 (a private cluster per test, from
//! `scripts/postgres.sh`), with Prosody and ngIRCd: moving an installation from sled,
//! TLS with certificate verification, a database restart under a waiting write, a schema
//! from the future, and a bad connection string. (The backbone, IRC, email, archive and
//! admin suites also run whole on PostgreSQL: `GATEWAY_TEST_STORE=postgres`, see
//! scripts/test.sh.)

use std::process::Command;
use std::time::Duration;

use minidom::Element;
use testkit::irc::Ngircd;
use testkit::postgres::Postgres;
use testkit::*;

const MUC: &str = "http://jabber.org/protocol/muc";
const NS_SID: &str = "urn:xmpp:sid:0";
const ROOM: &str = "#moved%127.0.0.1@gw.localhost";

/// The `[storage]` section for database `database` of `cluster`, with `extra` lines.
fn postgres_storage(gateway: &Gateway, url: &str, extra: &str) -> String {
    format!("[storage]\nbackend = \"postgres\"\npath = \"{}\"\nurl = \"{url}\"\n{extra}", gateway.store_dir().display())
}

fn sled_storage(gateway: &Gateway) -> String {
    format!("[storage]\npath = \"{}\"\n", gateway.store_dir().display())
}

fn irc_nick(reply: &Element) -> Option<String> {
    form_value(reply.get_child("query", "jabber:iq:register")?, "irc_nick")
}

/// Runs the gateway binary's `migrate-store`; (exit code, what it said).
fn migrate_store(from: &str, to: &str) -> (Option<i32>, String) {
    let out = Command::new(gateway_binary()).args(["migrate-store", "--from", from, "--to", to]).output().unwrap();
    // What it printed (stdout), or why it failed (stderr's last line, after the logs).
    let stderr = String::from_utf8_lossy(&out.stderr);
    let said = if out.status.success() { String::from_utf8_lossy(&out.stdout).into_owned() } else { stderr.lines().last().unwrap_or_default().to_owned() };
    (out.status.code(), said)
}

#[tokio::test]
async fn migrate_store_moves_a_sled_installation_to_postgres_with_its_archive_ids() {
    let server = XmppServer::start(ServerKind::Prosody);
    let ircd = Ngircd::start(false);
    let cluster = Postgres::start();
    let mut gateway = Gateway::prepare_irc(&server, &ircd);
    gateway.set_storage(&sled_storage(&gateway));
    gateway.spawn();

    // On sled: alice registers (a sealed IRC password), joins a channel, and bob says five
    // lines she gets live with their archive ids.
    let mut alice = server.client("alice", "localhost").await;
    let set = alice.iq("set", &register_form(&[("irc_nick", "alice"), ("irc_password", "irc-pw-moved")])).await;
    assert_eq!(set.attr("type"), Some("result"), "{set:?}");
    alice.send_raw(&format!("<presence to='{ROOM}/alice'><x xmlns='{MUC}'/></presence>")).await;
    alice.wait_for("the room's subject", |e| e.name() == "message" && e.get_child("subject", NS_CLIENT).is_some()).await;
    let mut bob = ircd.client("bob").await;
    bob.join("#moved").await;
    let mut live = Vec::new();
    for n in 0..5 {
        let text = format!("before the move {n}");
        bob.privmsg("#moved", &text).await;
        let echo = alice.wait_for(&text, |e| e.name() == "message" && e.get_child("body", NS_CLIENT).is_some_and(|b| b.text() == text)).await;
        let id = echo.children().find(|c| c.is("stanza-id", NS_SID)).and_then(|c| c.attr("id")).expect("a stanza-id").to_owned();
        live.push((id, text));
    }
    gateway.signal("TERM");
    assert_eq!(gateway.wait_exit(Duration::from_secs(10)), Some(0));

    // The move: counts printed, then refused a second time (the target is not empty).
    let database = cluster.create_database();
    let url = cluster.url(&database);
    let sled = format!("sled:{}", gateway.store_dir().display());
    let (code, said) = migrate_store(&sled, &format!("postgres:{url}"));
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("read it back") && said.contains("users 1,"), "{said}");
    let archived: usize = said.rsplit("archive ").next().and_then(|n| n.trim().parse().ok()).unwrap_or_else(|| panic!("no archive count in {said}"));
    // The archive's entries: its highest id, alice's span, and the five lines in one to
    // five values (lines written in one batch share one); the read-back below proves the lines.
    assert!(archived >= 3, "the archive moved: {said}");
    assert!(!said.contains(testkit::postgres::PASSWORD), "the password was printed: {said}");
    assert_eq!(cluster.psql(&database, "SELECT count(*) FROM users"), "1");
    let (code, said) = migrate_store(&sled, &format!("postgres:{url}"));
    assert_ne!(code, Some(0));
    assert!(said.contains("is not empty"), "{said}");

    // On PostgreSQL, same key file: the registration reads back (the password decrypts),
    // and the archive holds the same lines under the same ids.
    gateway.set_storage(&postgres_storage(&gateway, &url, ""));
    gateway.spawn();
    assert!(gateway.log_text().contains("opening the PostgreSQL store"));
    let back = alice.iq("get", "<query xmlns='jabber:iq:register'/>").await;
    assert_eq!(irc_nick(&back).as_deref(), Some("alice"), "{back:?}");
    let (page, reply) = alice.mam(ROOM, &[], "<max>50</max>").await;
    assert_eq!(reply.attr("type"), Some("result"), "{reply:?}");
    let moved: Vec<(String, String)> = page.iter().map(|a| (a.id.clone(), a.body())).collect();
    assert_eq!(moved, live, "the same lines under the same ids");
}

#[tokio::test]
async fn postgres_over_tls_verifies_the_server_certificate() {
    let server = XmppServer::start(ServerKind::Prosody);
    let ircd = Ngircd::start(false);
    let cluster = Postgres::start();
    let database = cluster.create_database();
    let tls_url = cluster.url(&database).replace("sslmode=disable", "sslmode=require");

    // Without the cluster's certificate trusted, the self-signed certificate is refused
    // and the gateway stops, saying why, without the password.
    let mut refused = Gateway::prepare_irc(&server, &ircd);
    refused.set_storage(&postgres_storage(&refused, &tls_url, ""));
    refused.spawn_no_wait();
    assert_ne!(refused.wait_exit(Duration::from_secs(20)), Some(0));
    let log = refused.log_text();
    assert!(log.contains("certificate"), "the refusal names the certificate: {log}");
    assert!(!log.contains(testkit::postgres::PASSWORD), "the password leaked into the log: {log}");

    // Trusted: connected over TLS (as PostgreSQL itself reports), and it works.
    let mut gateway = Gateway::prepare_irc(&server, &ircd);
    gateway.set_storage(&postgres_storage(&gateway, &tls_url, &format!("ca_file = \"{}\"\n", cluster.cert_path().display())));
    gateway.spawn();
    let mut alice = server.client("alice", "localhost").await;
    let set = alice.iq("set", &register_form(&[("irc_nick", "alice")])).await;
    assert_eq!(set.attr("type"), Some("result"), "{set:?}");
    let encrypted = cluster.psql(
        "postgres",
        &format!("SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) WHERE ssl AND datname = '{database}'"),
    );
    assert_ne!(encrypted, "0", "the gateway's connections are encrypted");
    let plain = cluster.psql(
        "postgres",
        &format!("SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) WHERE NOT ssl AND datname = '{database}'"),
    );
    assert_eq!(plain, "0", "no connection in the clear");
}

#[tokio::test]
async fn a_write_waits_for_a_restarted_postgres_and_nothing_acknowledged_is_lost() {
    let server = XmppServer::start(ServerKind::Prosody);
    let ircd = Ngircd::start(false);
    let cluster = Postgres::start();
    let url = cluster.url(&cluster.create_database());
    let mut gateway = Gateway::prepare_irc(&server, &ircd);
    gateway.set_storage(&postgres_storage(&gateway, &url, ""));
    gateway.spawn();
    let mut alice = server.client("alice", "localhost").await;
    let mut bob = server.client("bob", "localhost").await;
    let set = alice.iq("set", &register_form(&[("irc_nick", "alice_pg")])).await;
    assert_eq!(set.attr("type"), Some("result"));

    // The database crashes: bob's registration is not acknowledged while it is down...
    cluster.kill();
    bob.send_raw(&format!("<iq type='set' id='while-down' to='{GW}'>{}</iq>", register_form(&[("irc_nick", "bob_pg")]))).await;
    let answered = bob.receives_within(Duration::from_secs(3), |e| e.attr("id") == Some("while-down")).await;
    assert!(!answered, "acknowledged while the database was down");
    // ...and is, once it is back, without the gateway restarting.
    cluster.start_again();
    let reply = bob.wait_for("the registration's answer", |e| e.attr("id") == Some("while-down")).await;
    assert_eq!(reply.attr("type"), Some("result"), "{reply:?}");
    assert!(gateway.log_text().contains("the database answers again"), "the outage is logged");

    // Both acknowledged registrations survive a kill -9 of the gateway.
    gateway.kill_9();
    gateway.spawn();
    let back = alice.iq("get", "<query xmlns='jabber:iq:register'/>").await;
    assert_eq!(irc_nick(&back).as_deref(), Some("alice_pg"));
    let back = bob.iq("get", "<query xmlns='jabber:iq:register'/>").await;
    assert_eq!(irc_nick(&back).as_deref(), Some("bob_pg"));
}

#[tokio::test]
async fn a_database_of_a_newer_schema_is_refused_with_a_clear_message() {
    let server = XmppServer::start(ServerKind::Prosody);
    let ircd = Ngircd::start(false);
    let cluster = Postgres::start();
    let database = cluster.create_database();
    let url = cluster.url(&database);
    // Migrated once by a gateway, then marked as written by a future one.
    let mut gateway = Gateway::prepare_irc(&server, &ircd);
    gateway.set_storage(&postgres_storage(&gateway, &url, ""));
    gateway.spawn();
    gateway.signal("TERM");
    gateway.wait_exit(Duration::from_secs(10));
    let applied = cluster.psql(&database, "SELECT count(*) = max(version) AND max(version) >= 2 FROM schema_migrations");
    assert_eq!(applied, "t", "every migration applied once, in order");
    let _ = cluster.psql(&database, "INSERT INTO schema_migrations (version, name) VALUES (999, 'future')");
    gateway.spawn_no_wait();
    let code = gateway.wait_exit(Duration::from_secs(20));
    assert!(code.is_some_and(|c| c != 0), "exit code {code:?}");
    let log = gateway.log_text();
    assert!(log.contains("schema version 999") && log.contains("newer gateway"), "{log}");
}

#[tokio::test]
async fn a_bad_storage_setting_is_refused_naming_the_key_and_never_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    let check = |storage: &str| {
        std::fs::write(&config, format!("[component]\njid = \"gw.localhost\"\nsecret = \"s\"\n{storage}")).unwrap();
        let out = Command::new(gateway_binary()).arg("--config").arg(&config).arg("check-config").output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, said) = check("[storage]\nbackend = \"postgres\"\npath = \"/tmp/x\"\nurl = \"postgres://gw:Sup3rSecretPw@127.0.0.1:notaport/db\"\n");
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains("storage.url"), "{said}");
    assert!(!said.contains("Sup3rSecretPw"), "the password was echoed: {said}");
    let (code, said) = check("[storage]\nbackend = \"postgres\"\npath = \"/tmp/x\"\n");
    assert_eq!(code, Some(2));
    assert!(said.contains("storage.url") && said.contains("required"), "{said}");
    let (code, said) = check("[storage]\nbackend = \"mysql\"\npath = \"/tmp/x\"\n");
    assert_eq!(code, Some(2));
    assert!(said.contains("backend"), "{said}");
}
