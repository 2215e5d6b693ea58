//! Several gateway instances on one domain (`[cluster]`, issue 12): real gateway
//! processes on the two nodes of a real ejabberd cluster (`scripts/ejabberd-cluster.sh`),
//! sharing a real PostgreSQL (`scripts/postgres.sh`), bridging to a real ngIRCd. Each
//! user's sessions live on one instance; the others hand it the user's stanzas; a killed
//! instance's users are taken over by the others.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use minidom::Element;
use testkit::irc::{IrcClient, IrcLine, Ngircd};
use testkit::mail::MailServer;
use testkit::postgres::Postgres;
use testkit::*;

const MUC: &str = "http://jabber.org/protocol/muc";
const MUC_USER: &str = "http://jabber.org/protocol/muc#user";
/// The longest a killed instance's users may wait to be back in their channels.
const TAKEOVER_LIMIT: Duration = Duration::from_secs(5);

/// The servers every test here starts, and the instances' shared settings.
struct Setup {
    ejabberd: EjabberdCluster,
    ircd: Ngircd,
    postgres: Postgres,
    database: String,
    /// Holds the credentials key all instances share.
    keys: tempfile::TempDir,
}

impl Setup {
    fn start() -> Setup {
        let ejabberd = EjabberdCluster::start();
        let ircd = Ngircd::start(false);
        let postgres = Postgres::start();
        let database = postgres.create_database();
        let keys = tempfile::tempdir().unwrap();
        Setup { ejabberd, ircd, postgres, database, keys }
    }

    /// An instance attached to node `node` first (the other node next), started and
    /// connected.
    fn instance(&self, node: usize) -> Gateway {
        self.instance_with(node, "")
    }

    /// [`Setup::instance`] with `more` (TOML) in its configuration.
    fn instance_with(&self, node: usize, more: &str) -> Gateway {
        let mut gateway = self.prepared(node, more);
        gateway.spawn();
        gateway
    }

    /// [`Setup::instance`] with `lease_secs`.
    fn instance_with_lease(&self, node: usize, lease_secs: u64) -> Gateway {
        let mut gateway = self.prepared(node, "");
        let config = std::fs::read_to_string(&gateway.config).unwrap();
        std::fs::write(&gateway.config, config.replace("[cluster]\n", &format!("[cluster]\nlease_secs = {lease_secs}\n"))).unwrap();
        gateway.spawn();
        gateway
    }

    /// [`Setup::instance`] reaching PostgreSQL through `relay`.
    fn instance_through(&self, node: usize, relay: &Relay) -> Gateway {
        let mut gateway = self.prepared(node, "");
        let config = std::fs::read_to_string(&gateway.config).unwrap();
        let direct = format!("127.0.0.1:{}/", self.postgres.port);
        assert!(config.contains(&direct), "{config}");
        std::fs::write(&gateway.config, config.replace(&direct, &format!("127.0.0.1:{}/", relay.port))).unwrap();
        gateway.spawn();
        gateway
    }

    fn prepared(&self, node: usize, more: &str) -> Gateway {
        let ports = [self.ejabberd.component_port(1), self.ejabberd.component_port(2)];
        let servers = if node == 1 { ports } else { [ports[1], ports[0]] };
        let extra = format!("[irc.networks.\"127.0.0.1\"]\nport = {}\ntls = false\nflood_burst = 0\n{more}", self.ircd.port);
        let key_file = self.keys.path().join("secret.key");
        Gateway::prepare_cluster_instance(&servers, &self.postgres, &self.database, &key_file, &extra)
    }

    /// Which instance owns each user, as the database says.
    fn owners(&self) -> HashMap<String, String> {
        let rows = self.postgres.psql(&self.database, "SELECT jid || ' ' || instance FROM cluster_owners");
        rows.lines().filter_map(|line| line.split_once(' ')).map(|(jid, id)| (jid.to_owned(), id.to_owned())).collect()
    }
}

fn room(channel: &str) -> String {
    format!("{channel}%127.0.0.1@{GW}")
}

fn is_self_presence(stanza: &Element, room: &str) -> bool {
    stanza.name() == "presence"
        && stanza.attr("type").is_none()
        && stanza.attr("from").is_some_and(|f| f.starts_with(room))
        && stanza
            .get_child("x", MUC_USER)
            .is_some_and(|x| x.children().any(|c| c.name() == "status" && c.attr("code") == Some("110")))
}

/// A group chat message from the room itself (no occupant) saying `text`.
fn is_room_notice(stanza: &Element, room: &str, text: &str) -> bool {
    stanza.name() == "message" && stanza.attr("type") == Some("groupchat") && stanza.attr("from") == Some(room) && stanza.children().any(|c| c.name() == "body" && c.text() == text)
}

/// A chat message from the gateway's own JID saying `text`.
fn is_gateway_notice(stanza: &Element, text: &str) -> bool {
    stanza.name() == "message" && stanza.attr("type") == Some("chat") && stanza.attr("from") == Some(GW) && stanza.children().any(|c| c.name() == "body" && c.text() == text)
}

async fn join(client: &mut Client, room: &str, nick: &str) {
    client.send_raw(&format!("<presence to='{room}/{nick}'><x xmlns='{MUC}'/></presence>")).await;
    client.wait_for("the self-presence", |e| is_self_presence(e, room)).await;
}

async fn say(client: &mut Client, room: &str, id: &str, text: &str) {
    client.send_raw(&format!("<message to='{room}' type='groupchat' id='{id}'><body>{text}</body></message>")).await;
}

/// An IRC client that records, in the background, every line it gets with when it got it.
struct Watcher {
    lines: Arc<Mutex<Vec<(Instant, IrcLine)>>>,
    stop: tokio::sync::oneshot::Sender<()>,
}

impl Watcher {
    async fn start(ircd: &Ngircd, channels: &[String]) -> Watcher {
        let mut client: IrcClient = ircd.client("watcher").await;
        for channel in channels {
            client.join(channel).await;
        }
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let record = lines.clone();
        tokio::spawn(async move {
            while stopped.try_recv().is_err() {
                // Each line is taken (the predicate says yes), so none is kept and
                // looked at again.
                client
                    .receives_within(Duration::from_millis(100), |line| {
                        record.lock().unwrap().push((Instant::now(), line.clone()));
                        true
                    })
                    .await;
            }
        });
        Watcher { lines, stop }
    }

    /// The texts of the channel messages seen so far.
    fn texts(&self) -> HashSet<String> {
        self.lines.lock().unwrap().iter().filter(|(_, l)| l.command == "PRIVMSG").map(|(_, l)| l.text().to_owned()).collect()
    }

    /// When `nick` was first seen joining after `since`.
    fn joined_after(&self, nick: &str, since: Instant) -> Option<Instant> {
        let lines = self.lines.lock().unwrap();
        lines
            .iter()
            .filter(|(at, l)| *at >= since && l.command == "JOIN" && l.prefix_nick.as_deref() == Some(nick))
            .map(|(at, _)| *at)
            .next()
    }

    /// When `nick` was first seen quitting after `since`.
    fn quit_after(&self, nick: &str, since: Instant) -> Option<Instant> {
        let lines = self.lines.lock().unwrap();
        lines
            .iter()
            .filter(|(at, l)| *at >= since && matches!(l.command.as_str(), "QUIT" | "PART") && l.prefix_nick.as_deref() == Some(nick))
            .map(|(at, _)| *at)
            .next()
    }

    async fn wait_texts(&self, texts: &[String], within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let seen = self.texts();
            let missing: Vec<&String> = texts.iter().filter(|t| !seen.contains(*t)).collect();
            if missing.is_empty() {
                return;
            }
            assert!(Instant::now() < deadline, "not seen on IRC within {within:?}: {missing:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn stop(self) {
        let _ = self.stop.send(());
    }
}

/// One user of a test: a client logged in on a node, in one channel.
struct User {
    client: Client,
    nick: String,
    room: String,
}

/// Logs `count` users in (alternately on node 1 and 2) and has each join one of
/// `channels` (in turn) under the nick `n<i>`.
async fn users_in_channels(setup: &Setup, prefix: &str, count: usize, channels: &[String], nodes: &[usize]) -> Vec<User> {
    let names: Vec<String> = (0..count).map(|i| format!("{prefix}{i}")).collect();
    setup.ejabberd.add_users(&names.iter().map(|u| (u.as_str(), "localhost")).collect::<Vec<_>>());
    let mut users = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let mut client = setup.ejabberd.client(nodes[i % nodes.len()], name, "localhost").await;
        let nick = format!("{prefix}{i}");
        let room = room(&channels[i % channels.len()]);
        join(&mut client, &room, &nick).await;
        users.push(User { client, nick, room });
    }
    users
}

/// Every error a user got for one of their messages: message id -> condition and text.
async fn errors_of(user: &mut User, within: Duration) -> HashMap<String, String> {
    let mut errors = HashMap::new();
    while let Some(error) = user.client.receive_within(within, |e| e.name() == "message" && e.attr("type") == Some("error")).await {
        let why = format!("{}: {}", error_condition(&error).unwrap_or_default(), error_text(&error));
        errors.insert(error.attr("id").unwrap_or_default().to_owned(), why);
    }
    errors
}

#[tokio::test]
async fn three_instances_serve_thirty_users_who_talk_and_read_mail_and_a_killed_ones_users_are_back_in_their_channels_within_5_s() {
    let setup = Setup::start();
    let mail = MailServer::start();
    mail.add_user("bob@example.test", "bob-mail-pw");
    let provider = mail_provider(&mail);
    // Two instances on node 1, one on node 2; each tries the other node when its own fails.
    let mut gateways = [setup.instance_with(1, &provider), setup.instance_with(1, &provider), setup.instance_with(2, &provider)];
    let ids: Vec<String> = gateways.iter().map(|g| g.instance_id().expect("an instance id in the log")).collect();
    let channels: Vec<String> = (0..5).map(|c| format!("#r{c}")).collect();
    let watcher = Watcher::start(&setup.ircd, &channels).await;
    let mut users = users_in_channels(&setup, "u", 30, &channels, &[1, 2]).await;

    // Everyone talks once; every line reaches IRC once its owner has it.
    let mut hello = Vec::new();
    for user in &mut users {
        let text = format!("hello from {}", user.nick);
        say(&mut user.client, &user.room, &format!("hello-{}", user.nick), &text).await;
        hello.push(text);
    }
    watcher.wait_texts(&hello, Duration::from_secs(10)).await;

    // Everyone registers a mailbox, reads a mail and sends one, whichever instance owns them.
    for user in &mut users {
        let address = format!("{}@example.test", user.nick);
        mail.add_user(&address, "mail-pw");
        let set = user.client.iq("set", &register_form(&[("email_address", &address), ("email_password", "mail-pw")])).await;
        assert_eq!(set.attr("type"), Some("result"), "{set:?}");
    }
    for user in &mut users {
        let address = format!("{}@example.test", user.nick);
        wait_watched(&gateways, user.client.bare()).await;
        mail.send_raw("bob@example.test", &address, &mail_from_bob(&address, "hi", &format!("a mail to {}", user.nick)));
    }
    for user in &mut users {
        let text = format!("a mail to {}", user.nick);
        user.client.wait_for("the mail", |e| is_mail_with(e, &text)).await;
        user.client.send_raw(&format!("<message to='bob\\40example.test@{GW}' type='chat'><body>mail from {}</body></message>", user.nick)).await;
    }
    let inbox = mail.wait_inbox("bob@example.test", "bob-mail-pw", users.len(), Duration::from_secs(30));
    assert_eq!(inbox.len(), users.len(), "one mail from each user");

    // One owner per user, and the users spread over the instances (the server hands a
    // user's first stanza to any instance on the user's node).
    let owners = setup.owners();
    let mut per_instance: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, user) in users.iter().enumerate() {
        let jid = user.client.bare().to_owned();
        let owner = owners.get(&jid).unwrap_or_else(|| panic!("{jid} has no owner: {owners:?}"));
        assert!(ids.contains(owner), "{jid} is owned by {owner}, not one of {ids:?}");
        per_instance.entry(owner.as_str()).or_default().push(i);
    }
    eprintln!("users per instance: {:?}", ids.iter().map(|id| per_instance.get(id.as_str()).map_or(0, Vec::len)).collect::<Vec<_>>());
    assert!(per_instance.len() >= 2, "the users are spread over the instances: {per_instance:?}");

    // The instance with the most users is killed under traffic: every user says a line
    // every 250 ms, 4 rounds before the kill and 28 after.
    let (victim, victims) = per_instance.iter().max_by_key(|(_, users)| users.len()).map(|(id, users)| (id.to_string(), users.clone())).unwrap();
    let victim_index = ids.iter().position(|id| *id == victim).unwrap();
    let mut sent = Vec::new();
    let mut killed_at = None;
    for round in 0..32 {
        if round == 4 {
            gateways[victim_index].kill_9();
            killed_at = Some(Instant::now());
        }
        for user in &mut users {
            let id = format!("m{round}-{}", user.nick);
            let text = format!("round {round} from {}", user.nick);
            say(&mut user.client, &user.room, &id, &text).await;
            sent.push((id, text, user.nick.clone()));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let killed_at = killed_at.unwrap();

    // Back in their channels: the victim's users joined IRC again, and their clients got
    // their own presence in the room again, within the limit.
    for &i in &victims {
        let nick = users[i].nick.clone();
        let back = watcher.joined_after(&nick, killed_at).unwrap_or_else(|| panic!("{nick} never joined IRC again after the kill"));
        let took = back - killed_at;
        eprintln!("{nick} back on IRC {took:?} after the kill");
        assert!(took <= TAKEOVER_LIMIT, "{nick} took {took:?} to be back in its channel");
        let room = users[i].room.clone();
        assert!(
            users[i].client.receive_within(Duration::from_secs(1), |e| is_self_presence(e, &room)).await.is_some(),
            "{nick}'s client was not shown the room again"
        );
        // And told, in the room, that what it sent as the instance died may be lost: the
        // one loss XEP-0114 leaves (below) is not a silent one.
        assert!(
            users[i].client.receive_within(Duration::from_secs(1), |e| is_room_notice(e, &room, xmpp_gateway::irc_side::TAKEOVER_NOTICE)).await.is_some(),
            "{nick}'s client was not told in {room} that its last lines may be lost"
        );
        // And by the gateway itself, for what went elsewhere (IRC users, mail).
        assert!(
            users[i].client.receive_within(Duration::from_secs(1), |e| is_gateway_notice(e, xmpp_gateway::router::TAKEOVER_NOTICE)).await.is_some(),
            "{nick}'s client was not told by the gateway that its last messages may be lost"
        );
    }
    // The other users hear nothing of it.
    for (i, user) in users.iter_mut().enumerate().filter(|(i, _)| !victims.contains(i)) {
        let room = user.room.clone();
        assert!(
            user.client
                .receive_within(Duration::from_millis(100), |e| is_room_notice(e, &room, xmpp_gateway::irc_side::TAKEOVER_NOTICE) || is_gateway_notice(e, xmpp_gateway::router::TAKEOVER_NOTICE))
                .await
                .is_none(),
            "user {i} was told of a takeover that was not theirs"
        );
    }

    // Every line either reached IRC or was answered with an error: none vanished.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let on_irc = watcher.texts();
    let mut errors = HashMap::new();
    for user in &mut users {
        errors.extend(errors_of(user, Duration::from_millis(200)).await);
    }
    let delivered = sent.iter().filter(|(_, text, _)| on_irc.contains(text)).count();
    let refused: Vec<(&String, &String)> = sent.iter().filter(|(_, text, _)| !on_irc.contains(text)).filter_map(|(id, ..)| errors.get_key_value(id)).collect();
    let vanished: Vec<&String> = sent.iter().filter(|(id, text, _)| !on_irc.contains(text) && !errors.contains_key(id)).map(|(id, ..)| id).collect();
    let twice = {
        let lines = watcher.lines.lock().unwrap();
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for (_, line) in lines.iter().filter(|(_, l)| l.command == "PRIVMSG") {
            *counts.entry(line.text()).or_default() += 1;
        }
        sent.iter().filter(|(_, text, _)| counts.get(text.as_str()).is_some_and(|n| *n > 1)).count()
    };
    eprintln!("{} lines sent: {delivered} delivered ({twice} of them twice), {} answered with an error {refused:?}, {} vanished {vanished:?}", sent.len(), refused.len(), vanished.len());
    // What XEP-0114 cannot give: a stanza the server wrote into the killed instance's
    // connection before it saw the connection close is gone with the process (the
    // protocol has no acknowledgements, and the server does not bounce it). So the one
    // round said right after the kill, by the victim's users, may be lost; nothing else.
    let dying_round: Vec<String> = victims.iter().map(|&i| format!("m4-{}", users[i].nick)).collect();
    let lost_elsewhere: Vec<&&String> = vanished.iter().filter(|id| !dying_round.contains(id)).collect();
    assert!(lost_elsewhere.is_empty(), "lines neither delivered nor refused besides the dying connection's: {lost_elsewhere:?}");

    // The survivors' keepalive pings (every 2 s of silence) came back to them each time,
    // whichever instance the server handed them to.
    for (i, gateway) in gateways.iter().enumerate().filter(|(i, _)| *i != victim_index) {
        assert_eq!(gateway.log_lines_with(&["no answer from the server"]), 0, "instance {i} lost its keepalive: {}", gateway.log_text());
    }
    watcher.stop();
}

#[tokio::test]
async fn when_an_ejabberd_node_dies_users_on_the_other_node_keep_talking_through_their_owner() {
    let setup = Setup::start();
    let channels = vec!["#n".to_owned()];
    // Only the node-1 instance at first: the node-2 users' stanzas reach it across the
    // cluster, and it becomes their owner.
    let first = setup.instance(1);
    let first_id = first.instance_id().unwrap();
    let watcher = Watcher::start(&setup.ircd, &channels).await;
    let mut users = users_in_channels(&setup, "w", 4, &channels, &[2]).await;
    let second = setup.instance(2);
    assert!(setup.owners().values().all(|owner| *owner == first_id), "{:?}", setup.owners());

    // Now node 2's own instance gets their stanzas and hands them to the owner.
    for user in &mut users {
        say(&mut user.client, &user.room, "before", &format!("before from {}", user.nick)).await;
    }
    let before: Vec<String> = users.iter().map(|u| format!("before from {}", u.nick)).collect();
    watcher.wait_texts(&before, Duration::from_secs(10)).await;
    assert!(second.log_lines_with(&["peer link open"]) > 0, "node 2's instance handed the stanzas on: {}", second.log_text());

    // Node 1 dies: its instance reconnects to node 2, and the users there go on.
    let connections = first.connections();
    setup.ejabberd.kill_node(1);
    first.wait_connected(connections + 1, Duration::from_secs(10));
    for user in &mut users {
        say(&mut user.client, &user.room, "after", &format!("after from {}", user.nick)).await;
    }
    let after: Vec<String> = users.iter().map(|u| format!("after from {}", u.nick)).collect();
    watcher.wait_texts(&after, Duration::from_secs(10)).await;
    // And the other way: an IRC line reaches them through the owner's new connection.
    let mut irc = setup.ircd.client("ircuser").await;
    irc.join("#n").await;
    irc.privmsg("#n", "from irc after the node died").await;
    for user in &mut users {
        let text = user
            .client
            .wait_for("the IRC line", |e| e.name() == "message" && e.children().any(|c| c.name() == "body" && c.text() == "from irc after the node died"))
            .await;
        assert_eq!(text.attr("type"), Some("groupchat"));
    }
    drop(first);
    watcher.stop();
}

#[tokio::test]
async fn postgresql_restarted_under_two_instances_they_wait_and_go_on_without_ending_a_session() {
    let setup = Setup::start();
    let channels = vec!["#p".to_owned()];
    // A lease longer than the restart can take on a loaded machine: what is tested is a
    // restart shorter than it (a longer one fences, as the cut test shows).
    let gateways = [setup.instance_with_lease(1, 30), setup.instance_with_lease(2, 30)];
    let watcher = Watcher::start(&setup.ircd, &channels).await;
    let mut users = users_in_channels(&setup, "p", 4, &channels, &[1, 2]).await;

    setup.postgres.kill();
    // Ownership is known and the rooms live in the instances: talk goes on meanwhile.
    for user in &mut users {
        say(&mut user.client, &user.room, "during", &format!("during from {}", user.nick)).await;
    }
    let during: Vec<String> = users.iter().map(|u| format!("during from {}", u.nick)).collect();
    watcher.wait_texts(&during, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    setup.postgres.start_again();

    // A user nobody owned yet is taken once the database is back.
    let mut late = users_in_channels(&setup, "late", 1, &channels, &[2]).await.pop().unwrap();
    say(&mut late.client, &late.room, "late", "late one").await;
    for user in &mut users {
        say(&mut user.client, &user.room, "after", &format!("after from {}", user.nick)).await;
    }
    let mut after: Vec<String> = users.iter().map(|u| format!("after from {}", u.nick)).collect();
    after.push("late one".into());
    watcher.wait_texts(&after, Duration::from_secs(15)).await;
    for gateway in &gateways {
        // The outage was seen, and is over for the instance too.
        gateway.wait_log("the heartbeat back", &["the database answers again"], 0).await;
        assert_eq!(gateway.log_lines_with(&["fenced"]), 0, "no instance ended its sessions: {}", gateway.log_text());
        assert_eq!(gateway.log_lines_with(&["took over the users"]), 0, "no instance took another's users: {}", gateway.log_text());
        assert_eq!(gateway.log_lines_with(&["ending the sessions of users"]), 0, "{}", gateway.log_text());
    }
    watcher.stop();
}

/// The `[email.providers]` preset of example.test on `mail`.
fn mail_provider(mail: &MailServer) -> String {
    format!(
        "[email.providers.\"example.test\"]\nimap = \"127.0.0.1:{}\"\nimap_security = \"plain\"\nsmtp = \"127.0.0.1:{}\"\nsmtp_security = \"plain\"\n",
        mail.imap_port, mail.submission_port
    )
}

/// Waits until one of `gateways` watches `user`'s INBOX (IDLE): mail sent from then on is
/// pushed.
async fn wait_watched(gateways: &[Gateway], user: &str) {
    let field = format!("user={user}");
    let deadline = Instant::now() + Duration::from_secs(15);
    while gateways.iter().map(|g| g.log_lines_with(&["watching INBOX", &field])).sum::<usize>() == 0 {
        assert!(Instant::now() < deadline, "nobody watches {user}'s INBOX");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A mail from bob to `to`.
fn mail_from_bob(to: &str, subject: &str, text: &str) -> Vec<u8> {
    format!(
        "From: Bob <bob@example.test>\r\nTo: {to}\r\nSubject: {subject}\r\nDate: Sun, 06 Dec 2026 10:00:00 +0000\r\n\
         Message-ID: <{subject}.{to}@example.test>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{text}\r\n"
    )
    .into_bytes()
}

fn is_mail_with(stanza: &Element, text: &str) -> bool {
    stanza.name() == "message" && stanza.attr("from").is_some_and(|f| f.starts_with("bob\\40example.test@")) && stanza.children().any(|c| c.name() == "body" && c.text().contains(text))
}

#[tokio::test]
async fn mail_reaches_the_users_of_every_instance_and_comes_once_after_a_takeover() {
    let setup = Setup::start();
    let mail = MailServer::start();
    mail.add_user("bob@example.test", "bob-mail-pw");
    let provider = mail_provider(&mail);
    let mut gateways = [setup.instance_with(1, &provider), setup.instance_with(2, &provider)];
    let ids: Vec<String> = gateways.iter().map(|g| g.instance_id().unwrap()).collect();
    let names: Vec<String> = (0..4).map(|i| format!("m{i}")).collect();
    setup.ejabberd.add_users(&names.iter().map(|u| (u.as_str(), "localhost")).collect::<Vec<_>>());
    let mut clients = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let address = format!("{name}@example.test");
        mail.add_user(&address, "mail-pw");
        let mut client = setup.ejabberd.client(1 + i % 2, name, "localhost").await;
        let set = client.iq("set", &register_form(&[("email_address", &address), ("email_password", "mail-pw")])).await;
        assert_eq!(set.attr("type"), Some("result"), "{set:?}");
        clients.push(client);
    }
    // Each mailbox is watched (IDLE) by its owner.
    for name in &names {
        wait_watched(&gateways, &format!("{name}@localhost")).await;
    }
    let owners = setup.owners();
    eprintln!("owners: {owners:?}");

    // Mail in, and mail out, for every user.
    for (name, client) in names.iter().zip(&mut clients) {
        mail.send_raw("bob@example.test", &format!("{name}@example.test"), &mail_from_bob(&format!("{name}@example.test"), "first", &format!("first mail to {name}")));
        client.wait_for("the first mail", |e| is_mail_with(e, &format!("first mail to {name}"))).await;
        client.send_raw(&format!("<message to='bob\\40example.test@{GW}' type='chat'><body>reply from {name}</body></message>")).await;
    }
    let inbox = mail.wait_inbox("bob@example.test", "bob-mail-pw", names.len(), Duration::from_secs(15));
    assert_eq!(inbox.len(), names.len(), "one mail from each user");

    // The owner of m0 is killed: its mailboxes are watched by the other, from where it
    // stopped, so the new mail comes and the old one does not come again.
    let victim = owners.get("m0@localhost").expect("m0 has an owner").clone();
    let victim_index = ids.iter().position(|id| *id == victim).unwrap();
    gateways[victim_index].kill_9();
    let killed_at = Instant::now();
    for (name, client) in names.iter().zip(&mut clients) {
        mail.send_raw("bob@example.test", &format!("{name}@example.test"), &mail_from_bob(&format!("{name}@example.test"), "second", &format!("second mail to {name}")));
        client.wait_for("the second mail", |e| is_mail_with(e, &format!("second mail to {name}"))).await;
        eprintln!("{name}: second mail {:?} after the kill", killed_at.elapsed());
        assert!(
            client.receive_within(Duration::from_millis(500), |e| is_mail_with(e, &format!("first mail to {name}"))).await.is_none(),
            "{name} got the first mail again"
        );
    }
}

/// A TCP relay to PostgreSQL that can go silent the way a network cut does: nothing is
/// closed, bytes just stop (both ends keep their connections, PostgreSQL keeps the
/// instance's lock). `heal` closes every relayed connection and relays new ones again.
struct Relay {
    port: u16,
    cut: Arc<AtomicBool>,
    generation: Arc<AtomicU64>,
}

impl Relay {
    /// Runs on a thread of its own: the tests' runtime blocks while a gateway starts.
    fn start(upstream: u16) -> Relay {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let generation = Arc::new(AtomicU64::new(0));
        let (cut_, generation_) = (cut.clone(), generation.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                while let Ok((client, _)) = listener.accept().await {
                    let (cut, generation) = (cut_.clone(), generation_.clone());
                    tokio::spawn(async move {
                        let born = generation.load(Ordering::SeqCst);
                        // During a cut a new connection is held, never answered.
                        while cut.load(Ordering::SeqCst) {
                            if generation.load(Ordering::SeqCst) != born {
                                return;
                            }
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await else { return };
                        relay(client, server, &cut, &generation, born).await;
                    });
                }
            });
        });
        Relay { port, cut, generation }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }

    fn heal(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.cut.store(false, Ordering::SeqCst);
    }
}

/// Copies both ways until either side closes or the relay heals; drops what comes while
/// cut.
async fn relay(a: tokio::net::TcpStream, b: tokio::net::TcpStream, cut: &AtomicBool, generation: &AtomicU64, born: u64) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut a_read, mut a_write) = a.into_split();
    let (mut b_read, mut b_write) = b.into_split();
    let (mut a_buf, mut b_buf) = (vec![0u8; 16384], vec![0u8; 16384]);
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    while generation.load(Ordering::SeqCst) == born {
        tokio::select! {
            n = a_read.read(&mut a_buf) => {
                let Ok(n @ 1..) = n else { return };
                if !cut.load(Ordering::SeqCst) && b_write.write_all(&a_buf[..n]).await.is_err() {
                    return;
                }
            }
            n = b_read.read(&mut b_buf) => {
                let Ok(n @ 1..) = n else { return };
                if !cut.load(Ordering::SeqCst) && a_write.write_all(&b_buf[..n]).await.is_err() {
                    return;
                }
            }
            _ = tick.tick() => {}
        }
    }
}

#[tokio::test]
async fn an_instance_cut_off_from_postgresql_ends_its_sessions_before_another_takes_its_users() {
    let setup = Setup::start();
    let relay = Relay::start(setup.postgres.port);
    let channels = vec!["#s".to_owned()];
    // The instance to be cut off alone first, so that it owns the users.
    let cut_off = setup.instance_through(1, &relay);
    let cut_off_id = cut_off.instance_id().unwrap();
    let watcher = Watcher::start(&setup.ircd, &channels).await;
    let joins_from = Instant::now();
    let mut users = users_in_channels(&setup, "s", 4, &channels, &[1]).await;
    let other = setup.instance(2);
    assert!(setup.owners().values().all(|owner| *owner == cut_off_id), "{:?}", setup.owners());

    // The owner saves its users' rooms every second: wait until they are in the database
    // (joins of the last second before a cut are not restored).
    let deadline = Instant::now() + Duration::from_secs(10);
    while setup.postgres.psql(&setup.database, "SELECT count(*) FROM bridge_state WHERE position('cluster-rooms'::bytea IN key) > 0") != "4" {
        assert!(Instant::now() < deadline, "the rooms were not saved");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The watcher stamps lines as it reads them, and the blocking calls above (starting
    // an instance, psql) hold this test's one thread: every first JOIN must be read
    // before the cut, or it would pass for a return after it.
    while users.iter().any(|user| watcher.joined_after(&user.nick, joins_from).is_none()) {
        assert!(Instant::now() < deadline, "the watcher did not see every user join");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    relay.cut();
    let cut_at = Instant::now();
    // Within the lease (10 s) the cut-off instance ends its sessions itself, then the
    // other takes the users over: their nick leaves IRC before it comes back, never twice.
    for user in &users {
        let deadline = Instant::now() + Duration::from_secs(20);
        let back = loop {
            if let Some(at) = watcher.joined_after(&user.nick, cut_at) {
                break at;
            }
            assert!(Instant::now() < deadline, "{} not back on IRC 20 s after the cut:\n{}\n{}", user.nick, cut_off.log_text(), other.log_text());
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let quit = watcher.quit_after(&user.nick, cut_at).unwrap_or_else(|| panic!("{} never left IRC", user.nick));
        eprintln!("{}: left {:?} and back {:?} after the cut", user.nick, quit - cut_at, back - cut_at);
        assert!(quit < back, "{}: the new session joined before the old one ended", user.nick);
        assert!(back - cut_at <= Duration::from_secs(13), "{} took {:?}", user.nick, back - cut_at);
    }
    assert!(cut_off.log_lines_with(&["no heartbeat for too long"]) > 0, "{}", cut_off.log_text());
    assert!(other.log_lines_with(&["took over the users of a dead instance", &format!("dead={cut_off_id}")]) > 0, "{}", other.log_text());
    // The users talk through the other instance now (the cut-off one left the server).
    for user in &mut users {
        say(&mut user.client, &user.room, "after-cut", &format!("after the cut from {}", user.nick)).await;
    }
    let after: Vec<String> = users.iter().map(|u| format!("after the cut from {}", u.nick)).collect();
    watcher.wait_texts(&after, Duration::from_secs(10)).await;

    // Healed: the cut-off instance comes back serving nobody, and nothing moves back.
    let rejoined = cut_off.log_lines_with(&["the database answers again"]);
    relay.heal();
    cut_off.wait_log("the database again", &["the database answers again"], rejoined).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let owners = setup.owners();
    assert!(owners.values().all(|owner| *owner == other.instance_id().unwrap()), "{owners:?}");
    for user in &mut users {
        say(&mut user.client, &user.room, "healed", &format!("healed from {}", user.nick)).await;
    }
    let healed: Vec<String> = users.iter().map(|u| format!("healed from {}", u.nick)).collect();
    watcher.wait_texts(&healed, Duration::from_secs(10)).await;
    watcher.stop();
}
