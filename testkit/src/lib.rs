//! Test harness: real servers started by the project's scripts, the real gateway binary,
//! and a minimal XMPP client (SASL PLAIN on loopback, resource binding) on the gateway's
//! own XML framing.
//!
//! A test whose server cannot start fails with the script's output: it never skips.
//! The benchmarks (issue 5) drive the same servers and clients.

pub mod biboumi;
pub mod irc;
pub mod mail;
pub mod postgres;

use std::collections::VecDeque;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use minidom::Element;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use xmpp_gateway::xml_stream::{stream_header, StanzaReader, StreamEvent};

/// The component domain every test gateway uses.
pub const GW: &str = "gw.localhost";
/// The component secret every test server expects.
pub const SECRET: &str = "secret";
/// The client namespace, in which the test client sees every stanza.
pub const NS_CLIENT: &str = "jabber:client";
/// The stream namespace, of `<stream:error/>`.
const NS_STREAMS: &str = "http://etherx.jabber.org/streams";
/// The IRC network section of tests that run no IRC server.
const IRC_DEFAULT: &str = "[irc.networks.\"127.0.0.1\"]\nport = 6667\ntls = false\n";
/// How long a test waits for an expected stanza.
pub const WAIT: Duration = Duration::from_secs(20);

/// A port free right now on 127.0.0.1.
pub fn free_port() -> u16 {
    let [port] = free_ports();
    port
}

/// `N` distinct ports free right now on 127.0.0.1: every listener is held until all are
/// found, so the kernel cannot hand the same port out twice (two `free_port()` calls in
/// a row can, and a server given the same port for two listeners refuses to start).
pub fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: [TcpListener; N] = std::array::from_fn(|_| TcpListener::bind("127.0.0.1:0").unwrap());
    listeners.map(|listener| listener.local_addr().unwrap().port())
}

/// How many times [`on_free_ports`] starts a server before it gives up.
const PORT_TRIES: usize = 5;

/// Runs `start`, which picks ports found free and starts a server on them, and returns
/// what it returns. A port found free can be taken by a parallel test before the server
/// binds it: a start whose output says so ("in use", "could not listen") runs again on
/// other ports, [`PORT_TRIES`] times at most; any other failure, or the last, panics with
/// the output. Every server testkit starts goes through here.
pub fn on_free_ports<T>(what: &str, mut start: impl FnMut() -> Result<T, String>) -> T {
    let mut attempt = 1;
    loop {
        match start() {
            Ok(started) => return started,
            Err(output) if attempt < PORT_TRIES && (output.contains("in use") || output.contains("could not listen")) => {
                eprintln!("{what}: a port was taken meanwhile (try {attempt}), trying others");
                attempt += 1;
            }
            Err(output) => panic!("{output}"),
        }
    }
}

/// The repository's root (this crate lives in `testkit/`).
pub fn repo() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(Path::to_path_buf).unwrap_or(here)
}

/// The gateway binary: `XMPP_GATEWAY_BIN` if set, else the `xmpp-gateway` that cargo built
/// beside the running test or benchmark (`target/<profile>/`).
pub fn gateway_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("XMPP_GATEWAY_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("the running executable");
    exe.ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join("xmpp-gateway"))
        .find(|bin| bin.is_file())
        .unwrap_or_else(|| panic!("no xmpp-gateway binary beside {}: build it (cargo build) or set XMPP_GATEWAY_BIN", exe.display()))
}

fn script(name: &str, args: &[&str]) -> String {
    try_script(name, args).unwrap_or_else(|error| panic!("{error}"))
}

/// Runs `scripts/<name>`: its stdout, or everything it said if it failed.
fn try_script(name: &str, args: &[&str]) -> Result<String, String> {
    try_script_env(name, args, &[])
}

/// Same, with `env` set for the script.
fn try_script_env(name: &str, args: &[&str], env: &[(&str, &str)]) -> Result<String, String> {
    let out = Command::new("bash")
        .arg(repo().join("scripts").join(name))
        .args(args)
        .envs(env.iter().copied())
        // The scripts stop their server if this test process dies without cleaning up.
        .env("HARNESS_OWNER_PID", std::process::id().to_string())
        .output()
        .unwrap_or_else(|e| panic!("cannot run scripts/{name}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        return Ok(stdout);
    }
    Err(format!(
        "scripts/{name} {args:?} failed ({}):\n{stdout}\n{}\n(install the servers with scripts/install-deps.sh)",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// Runs the test body `async fn $name(kind: ServerKind)` once per XMPP server, as the
/// tests `$name::prosody` and `$name::ejabberd`: the IRC and email suites are a matrix,
/// since the servers differ in what they route, store and echo. Written just above the
/// function, in place of `#[tokio::test]`. jabberd2, the third server, is not in the
/// matrix (it would add a third of every suite's time): `tests/jabberd2.rs` proves it.
#[macro_export]
macro_rules! on_each_server {
    ($name:ident) => {
        mod $name {
            #[tokio::test]
            async fn prosody() {
                super::$name($crate::ServerKind::Prosody).await
            }
            #[tokio::test]
            async fn ejabberd() {
                super::$name($crate::ServerKind::Ejabberd).await
            }
        }
    };
}

/// Which XMPP server a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    Prosody,
    Ejabberd,
    /// jabberd2's router, sm and c2s (`scripts/jabberd2.sh`).
    Jabberd2,
}

/// What a test server offers beyond the gateway's component (Prosody only).
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    /// More XEP-0114 components as (JID, secret), e.g. biboumi beside the gateway.
    pub extra_components: Vec<(String, String)>,
    /// Whether to run the XEP-0363 upload service `upload.localhost` on an HTTP port.
    pub http_upload: bool,
    /// Whether the server logs at debug level, where Prosody writes the top tag of every
    /// stanza it receives (`Received[component]: <iq ...>`): evidence of what the gateway
    /// sent that no client sees, such as its keepalive pings to itself.
    pub debug_log: bool,
    /// Whether the gateway is a privileged entity (XEP-0356) with write access to the
    /// rosters of localhost's users.
    pub roster_privilege: bool,
}

/// A private XMPP server with its own directory and ports; stopped on drop.
pub struct XmppServer {
    pub kind: ServerKind,
    pub dir: tempfile::TempDir,
    pub c2s_port: u16,
    pub component_port: u16,
    /// The HTTP port of the upload service, when there is one.
    pub http_port: Option<u16>,
    /// What was asked for besides the gateway's component.
    options: ServerOptions,
}

impl XmppServer {
    /// Starts a server with users `alice`, `bob` (localhost) and `eve` (other.localhost),
    /// each with password `pw`.
    pub fn start(kind: ServerKind) -> XmppServer {
        Self::start_with(kind, ServerOptions::default())
    }

    /// Same, with more components or an upload service (Prosody only).
    pub fn start_with(kind: ServerKind, options: ServerOptions) -> XmppServer {
        let plain = options.extra_components.is_empty() && !options.http_upload && !options.debug_log;
        assert!(kind == ServerKind::Prosody || plain, "only the Prosody script takes server options (but roster_privilege)");
        assert!(kind != ServerKind::Jabberd2 || !options.roster_privilege, "jabberd2 has no XEP-0356");
        let dir = tempfile::Builder::new().prefix("gw-test-").tempdir().unwrap();
        let mut server = XmppServer { kind, dir, c2s_port: 0, component_port: 0, http_port: None, options };
        on_free_ports(server.script(), || {
            let [c2s, component, http] = free_ports();
            (server.c2s_port, server.component_port) = (c2s, component);
            server.http_port = server.options.http_upload.then_some(http);
            server.try_start().map(drop)
        });
        let mut adduser = vec!["adduser", server.path()];
        for (user, host) in [("alice", "localhost"), ("bob", "localhost"), ("eve", "other.localhost")] {
            adduser.extend([user, host, "pw"]);
        }
        script(server.script(), &adduser);
        server
    }

    /// Adds more users (password `pw`), for tests that need more than the three.
    pub fn add_users(&self, users: &[(&str, &str)]) {
        let mut adduser = vec!["adduser", self.path()];
        for (user, host) in users {
            adduser.extend([*user, *host, "pw"]);
        }
        script(self.script(), &adduser);
    }

    fn script(&self) -> &'static str {
        match self.kind {
            ServerKind::Prosody => "prosody.sh",
            ServerKind::Ejabberd => "ejabberd.sh",
            ServerKind::Jabberd2 => "jabberd2.sh",
        }
    }

    fn path(&self) -> &str {
        self.dir.path().to_str().unwrap()
    }

    /// Starts the server (again) on the same directory and ports.
    pub fn start_again(&self) {
        self.try_start().unwrap_or_else(|error| panic!("{error}"));
    }

    fn try_start(&self) -> Result<String, String> {
        let (c2s, component) = (self.c2s_port.to_string(), self.component_port.to_string());
        let mut args = vec!["start", self.path(), &c2s, &component, GW, SECRET];
        for (jid, secret) in &self.options.extra_components {
            args.extend([jid.as_str(), secret.as_str()]);
        }
        let http = self.http_port.map(|port| port.to_string()).unwrap_or_default();
        let mut env = vec![("PROSODY_HTTP_PORT", http.as_str())];
        if self.options.debug_log {
            env.push(("PROSODY_LOG_LEVEL", "debug"));
        }
        if self.options.roster_privilege {
            env.push(("PROSODY_PRIVILEGE", "1"));
            env.push(("EJABBERD_PRIVILEGE", "1"));
        }
        try_script_env(self.script(), &args, &env)
    }

    /// The server's own log so far (Prosody: `prosody.log`; ejabberd: `log/ejabberd.log`;
    /// jabberd2: its router's, `log/router.log`, where components come and go).
    pub fn log_text(&self) -> String {
        let file = match self.kind {
            ServerKind::Prosody => self.dir.path().join("prosody.log"),
            ServerKind::Ejabberd => self.dir.path().join("log").join("ejabberd.log"),
            ServerKind::Jabberd2 => self.dir.path().join("log").join("router.log"),
        };
        std::fs::read_to_string(file).unwrap_or_default()
    }

    /// Stops the server.
    pub fn stop(&self) {
        script(self.script(), &["stop", self.path()]);
    }

    /// A logged-in client for `user@host` (password `pw`), resource `test`.
    pub async fn client(&self, user: &str, host: &str) -> Client {
        self.client_as(user, host, "test").await
    }

    /// A logged-in client for `user@host/resource`: several resources of one user.
    pub async fn client_as(&self, user: &str, host: &str, resource: &str) -> Client {
        Client::connect(self.c2s_port, user, host, "pw", resource).await
    }
}

impl Drop for XmppServer {
    fn drop(&mut self) {
        // Its directory goes next: no clean shutdown needed (ejabberd's takes seconds).
        let stop = match self.kind {
            ServerKind::Prosody => "stop",
            ServerKind::Ejabberd | ServerKind::Jabberd2 => "kill",
        };
        let _ = Command::new("bash").arg(repo().join("scripts").join(self.script())).args([stop, self.path()]).output();
    }
}

/// A private two-node ejabberd cluster (`scripts/ejabberd-cluster.sh`): nodes
/// `ejabberd1@localhost` and `ejabberd2@localhost` in one Mnesia cluster, each with its own
/// c2s and component ports, both serving `localhost` and `other.localhost` and accepting the
/// component [`GW`]; killed on drop. Nodes are numbered 1 and 2.
pub struct EjabberdCluster {
    /// The cluster's directory (`node1/`, `node2/`, its epmd's files).
    pub dir: tempfile::TempDir,
    /// The c2s ports of node 1 and node 2.
    pub c2s_ports: [u16; 2],
    /// The component (XEP-0114) ports of node 1 and node 2.
    pub component_ports: [u16; 2],
}

impl EjabberdCluster {
    /// Starts a cluster without `domain_balancing` (ejabberd's default routing), with the
    /// users of [`XmppServer::start`]: `alice`, `bob` (localhost), `eve` (other.localhost).
    pub fn start() -> EjabberdCluster {
        Self::start_with_balancing(None)
    }

    /// Same, with `domain_balancing` for [`GW`] of type `bare_source` and
    /// `component_number` = `components` (2 or more): each user pinned to one slot.
    pub fn start_bare_source(components: usize) -> EjabberdCluster {
        Self::start_with_balancing(Some(format!("bare_source:{components}")))
    }

    fn start_with_balancing(balancing: Option<String>) -> EjabberdCluster {
        let dir = tempfile::Builder::new().prefix("gw-cluster-").tempdir().unwrap();
        let mut cluster = EjabberdCluster { dir, c2s_ports: [0; 2], component_ports: [0; 2] };
        let balancing = balancing.unwrap_or_default();
        on_free_ports("ejabberd-cluster.sh", || {
            let [c2s_a, c2s_b, component_a, component_b] = free_ports();
            cluster.c2s_ports = [c2s_a, c2s_b];
            cluster.component_ports = [component_a, component_b];
            let ports: Vec<String> = [cluster.c2s_ports[0], cluster.component_ports[0], cluster.c2s_ports[1], cluster.component_ports[1]]
                .iter()
                .map(u16::to_string)
                .collect();
            let mut args = vec!["start", cluster.path()];
            args.extend(ports.iter().map(String::as_str));
            args.extend([GW, SECRET]);
            let started = try_script_env("ejabberd-cluster.sh", &args, &[("EJABBERD_DOMAIN_BALANCING", balancing.as_str())]);
            if started.is_err() {
                // A node that did start would hold its ports and node name on the next try.
                cluster.kill();
            }
            started.map(drop)
        });
        cluster.add_users(&[("alice", "localhost"), ("bob", "localhost"), ("eve", "other.localhost")]);
        cluster
    }

    fn path(&self) -> &str {
        self.dir.path().to_str().unwrap()
    }

    /// Adds users (password `pw`); both nodes know them (Mnesia is shared).
    pub fn add_users(&self, users: &[(&str, &str)]) {
        let mut adduser = vec!["adduser", self.path()];
        for (user, host) in users {
            adduser.extend([*user, *host, "pw"]);
        }
        script("ejabberd-cluster.sh", &adduser);
    }

    /// The c2s port of `node` (1 or 2).
    pub fn c2s_port(&self, node: usize) -> u16 {
        self.c2s_ports[Self::index(node)]
    }

    /// The component port of `node` (1 or 2).
    pub fn component_port(&self, node: usize) -> u16 {
        self.component_ports[Self::index(node)]
    }

    fn index(node: usize) -> usize {
        assert!(node == 1 || node == 2, "a cluster has nodes 1 and 2, not {node}");
        node - 1
    }

    /// `node` as the script's argument N.
    fn node_arg(node: usize) -> String {
        (Self::index(node) + 1).to_string()
    }

    /// kill -9 of `node`'s Erlang VM: the crash of one node; the other keeps running.
    pub fn kill_node(&self, node: usize) {
        script("ejabberd-cluster.sh", &["kill", self.path(), &Self::node_arg(node)]);
    }

    /// Starts `node` again (after [`EjabberdCluster::kill_node`]); it rejoins the cluster.
    pub fn start_node(&self, node: usize) {
        script("ejabberd-cluster.sh", &["start-node", self.path(), &Self::node_arg(node)]);
    }

    /// `ejabberdctl ARGS` on `node`: its output.
    pub fn ctl(&self, node: usize, args: &[&str]) -> String {
        let node = Self::node_arg(node);
        let mut all = vec!["ctl", self.path(), &node];
        all.extend(args);
        script("ejabberd-cluster.sh", &all)
    }

    /// `node`'s own log so far (`nodeN/log/ejabberd.log`).
    pub fn log_text(&self, node: usize) -> String {
        let file = self.dir.path().join(format!("node{}", Self::node_arg(node))).join("log").join("ejabberd.log");
        std::fs::read_to_string(file).unwrap_or_default()
    }

    /// A logged-in client for `user@host` (password `pw`) on `node`, resource `test`.
    pub async fn client(&self, node: usize, user: &str, host: &str) -> Client {
        self.client_as(node, user, host, "test").await
    }

    /// A logged-in client for `user@host/resource` on `node`.
    pub async fn client_as(&self, node: usize, user: &str, host: &str, resource: &str) -> Client {
        Client::connect(self.c2s_port(node), user, host, "pw", resource).await
    }

    /// Both nodes and the epmd, at once.
    fn kill(&self) {
        let _ = Command::new("bash").arg(repo().join("scripts").join("ejabberd-cluster.sh")).args(["kill", self.path()]).output();
    }
}

impl Drop for EjabberdCluster {
    fn drop(&mut self) {
        // Its directory goes next: no clean shutdown needed.
        self.kill();
    }
}

/// The real gateway binary, attached to a test server; killed on drop.
pub struct Gateway {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub child: Option<Child>,
    /// Where the gateway's log goes (stderr).
    pub log: PathBuf,
    component_port: u16,
}

impl Gateway {
    /// Writes a config for `server` and starts the gateway; waits until it is connected.
    pub fn start(server: &XmppServer) -> Gateway {
        let mut gateway = Self::configure(server.component_port, SECRET, IRC_DEFAULT);
        gateway.spawn();
        gateway
    }

    /// Attached to `server`, with `fast` as IRC network 127.0.0.1 (no rate limit) and, if
    /// given, `throttled` as network `localhost` with the default rate limit.
    pub fn start_irc(server: &XmppServer, fast: &irc::Ngircd, throttled: Option<&irc::Ngircd>) -> Gateway {
        let mut networks = format!("[irc.networks.\"127.0.0.1\"]\nport = {}\ntls = false\nflood_burst = 0\n", fast.port);
        if let Some(throttled) = throttled {
            networks.push_str(&format!("[irc.networks.\"localhost\"]\nport = {}\ntls = false\n", throttled.port));
        }
        Self::start_irc_networks(server, &networks)
    }

    /// [`Gateway::start_irc`] with `fast` (ngIRCd, or another of the private IRC servers:
    /// its plain port) alone and `extra` (TOML tables, e.g. `[archive]` settings) at the
    /// end of its configuration.
    pub fn start_irc_with(server: &XmppServer, fast: &dyn irc::IrcServer, extra: &str) -> Gateway {
        let networks = format!("[irc.networks.\"127.0.0.1\"]\nport = {}\ntls = false\nflood_burst = 0\n{extra}", fast.plain_port());
        Self::start_irc_networks(server, &networks)
    }

    /// Attached to `server`, with `networks` as the whole `[irc.networks."..."]` part of
    /// its configuration (TOML), e.g. a TLS network with a `ca_file`, or a fake server.
    pub fn start_irc_networks(server: &XmppServer, networks: &str) -> Gateway {
        let mut gateway = Self::configure(server.component_port, SECRET, networks);
        gateway.spawn();
        gateway
    }

    /// Attached to `server`, with `mail` as the preset of example.test: plain IMAP and
    /// SMTP submission, or STARTTLS on both with the server's self-signed certificate
    /// trusted as a CA (verification on).
    pub fn start_mail(server: &XmppServer, mail: &mail::MailServer, starttls: bool) -> Gateway {
        let section = if starttls {
            format!(
                "[email]\nca_file = \"{}\"\n[email.providers.\"example.test\"]\nimap = \"localhost:{}\"\nimap_security = \"starttls\"\n\
                 smtp = \"localhost:{}\"\nsmtp_security = \"starttls\"\n",
                mail.cert_path().display(),
                mail.imap_port,
                mail.smtp_starttls_port
            )
        } else {
            format!(
                "[email.providers.\"example.test\"]\nimap = \"127.0.0.1:{}\"\nimap_security = \"plain\"\n\
                 smtp = \"127.0.0.1:{}\"\nsmtp_security = \"plain\"\n",
                mail.imap_port, mail.submission_port
            )
        };
        let mut gateway = Self::configure(server.component_port, SECRET, &format!("{IRC_DEFAULT}{section}"));
        gateway.spawn();
        gateway
    }

    /// Like [`Gateway::start_irc`] with `fast` alone, not started yet: the configuration
    /// can be changed (e.g. [`Gateway::set_storage`]) before [`Gateway::spawn`].
    #[must_use]
    pub fn prepare_irc(server: &XmppServer, fast: &irc::Ngircd) -> Gateway {
        let networks = format!("[irc.networks.\"127.0.0.1\"]\nport = {}\ntls = false\nflood_burst = 0\n", fast.port);
        Self::configure(server.component_port, SECRET, &networks)
    }

    /// Replaces the configuration's `[storage]` section by `section` (read at the next
    /// start).
    pub fn set_storage(&self, section: &str) {
        let config = std::fs::read_to_string(&self.config).unwrap();
        let start = config.find("[storage]\n").expect("a [storage] section");
        let end = start + config[start..].find("[registration]").expect("[registration] after [storage]");
        std::fs::write(&self.config, format!("{}{section}{}", &config[..start], &config[end..])).unwrap();
    }

    /// The store's directory (sled's, or where the key file is with PostgreSQL).
    #[must_use]
    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("db")
    }

    /// Same, with another secret, without waiting for a connection.
    pub fn start_with_no_wait(server: &XmppServer, secret: &str) -> Gateway {
        let mut gateway = Self::configure(server.component_port, secret, IRC_DEFAULT);
        gateway.spawn_no_wait();
        gateway
    }

    /// Attached to the component port `component_port` of any server (e.g. one node of an
    /// [`EjabberdCluster`]), as [`Gateway::start`] does but with a keepalive ping every
    /// `keepalive_secs` of silence; waits until it is connected. (Where several instances
    /// share the domain, the server routes an instance's ping to itself to any of them, so
    /// an idle instance whose ping went elsewhere reconnects after twice that time.)
    pub fn start_at(component_port: u16, keepalive_secs: u64) -> Gateway {
        let mut gateway = Self::configure_keepalive(component_port, SECRET, IRC_DEFAULT, keepalive_secs);
        gateway.spawn();
        gateway
    }

    /// One instance of a cluster (`[cluster]`), not started: attached to the component
    /// ports `servers` (tried in that order), sharing `database` of `postgres` and the
    /// credentials key `key_file` with the other instances, its peer link on a free port of
    /// 127.0.0.1, with `extra` (TOML: IRC networks, mail providers) at the end.
    #[must_use]
    pub fn prepare_cluster_instance(servers: &[u16], postgres: &postgres::Postgres, database: &str, key_file: &Path, extra: &str) -> Gateway {
        let dir = tempfile::Builder::new().prefix("gw-data-").tempdir().unwrap();
        let config = dir.path().join("gateway.toml");
        let servers: Vec<String> = servers.iter().map(|port| format!("127.0.0.1:{port}")).collect();
        std::fs::write(
            &config,
            format!(
                "[component]\njid = \"{GW}\"\nsecret = \"{SECRET}\"\nserver = \"{}\"\n\
                 keepalive_secs = 2\nreconnect_max_secs = 2\n\
                 [storage]\nbackend = \"postgres\"\npath = \"{}\"\nkey_file = \"{}\"\nurl = \"{}\"\n\
                 [registration]\nallowed_domains = [\"localhost\"]\nadmins = [\"bob@localhost\"]\n\
                 [cluster]\nlisten = \"127.0.0.1:{}\"\n{extra}",
                servers.join(","),
                dir.path().join("db").display(),
                key_file.display(),
                postgres.url(database),
                free_port(),
            ),
        )
        .unwrap();
        let log = dir.path().join("gateway.log");
        let component_port = servers.first().and_then(|s| s.rsplit(':').next()).and_then(|p| p.parse().ok()).unwrap_or(0);
        Gateway { dir, config, child: None, log, component_port }
    }

    /// The instance id a cluster instance logged at its start.
    #[must_use]
    pub fn instance_id(&self) -> Option<String> {
        let log = self.log_text();
        let line = log.lines().find(|line| line.contains("starting as one instance of a cluster"))?;
        let field = line.split_whitespace().find_map(|word| word.strip_prefix("instance="))?;
        Some(field.trim_matches('"').to_owned())
    }

    fn configure(component_port: u16, secret: &str, networks: &str) -> Gateway {
        Self::configure_keepalive(component_port, secret, networks, 1)
    }

    fn configure_keepalive(component_port: u16, secret: &str, networks: &str, keepalive_secs: u64) -> Gateway {
        let dir = tempfile::Builder::new().prefix("gw-data-").tempdir().unwrap();
        let config = dir.path().join("gateway.toml");
        std::fs::write(
            &config,
            format!(
                "[component]\njid = \"{GW}\"\nsecret = \"{secret}\"\nserver = \"127.0.0.1:{}\"\n\
                 keepalive_secs = {keepalive_secs}\nreconnect_max_secs = 2\n\
                 {}\
                 [registration]\nallowed_domains = [\"localhost\"]\nadmins = [\"bob@localhost\"]\n{networks}",
                component_port,
                storage_section(&dir.path().join("db"))
            ),
        )
        .unwrap();
        let log = dir.path().join("gateway.log");
        Gateway { dir, config, child: None, log, component_port }
    }

    /// Starts the binary (again) and waits for its next "connected" log line.
    pub fn spawn(&mut self) {
        let before = self.connections();
        self.spawn_no_wait();
        self.wait_connected(before + 1, Duration::from_secs(10));
    }

    /// Starts the binary without waiting.
    pub fn spawn_no_wait(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new(gateway_binary())
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", std::env::var("GATEWAY_TEST_LOG").unwrap_or_else(|_| "xmpp_gateway=debug,info".into()))
            // Plain text: tests look for fields (`user=...`) in the log.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("cannot start the gateway binary");
        self.child = Some(child);
    }

    /// The gateway's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How many lines of the gateway's log so far contain every one of `parts`.
    pub fn log_lines_with(&self, parts: &[&str]) -> usize {
        self.log_text().lines().filter(|line| parts.iter().all(|part| line.contains(part))).count()
    }

    /// Waits until the log has more than `before` lines containing every one of `parts`
    /// (`what` names the event for the panic message). For conditions the gateway
    /// announces in its log, instead of sleeping "long enough".
    pub async fn wait_log(&self, what: &str, parts: &[&str], before: usize) {
        let deadline = Instant::now() + WAIT;
        while self.log_lines_with(parts) <= before {
            assert!(Instant::now() < deadline, "no log line for {what} ({parts:?}) within {WAIT:?}; log:\n{}", self.log_text());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// How many times the gateway has connected so far (in its log).
    pub fn connections(&self) -> usize {
        self.log_text().matches("connected to the XMPP server").count()
    }

    /// Waits until the log shows `count` connections; returns how long it took.
    pub fn wait_connected(&self, count: usize, timeout: Duration) -> Duration {
        let start = Instant::now();
        while self.connections() < count {
            assert!(
                start.elapsed() < timeout,
                "the gateway did not connect within {timeout:?}; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        start.elapsed()
    }

    /// The gateway process's resident memory now and at its peak (`VmRSS`, `VmHWM`), KiB.
    pub fn memory_kib(&self) -> (u64, u64) {
        let pid = self.child.as_ref().expect("gateway not running").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the gateway's /proc status");
        let kib = |key: &str| -> u64 {
            let line = status.lines().find(|l| l.starts_with(key)).unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"));
            line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("unreadable {line}"))
        };
        (kib("VmRSS:"), kib("VmHWM:"))
    }

    /// Sends a signal to the gateway process.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("gateway not running").id().to_string();
        let ok = Command::new("kill").args([&format!("-{signal}"), &pid]).status().unwrap();
        assert!(ok.success());
    }

    /// Waits for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let child = self.child.as_mut().expect("gateway not running");
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status.code();
            }
            assert!(start.elapsed() < timeout, "the gateway did not exit; log:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// kill -9, and reap.
    pub fn kill_9(&mut self) {
        self.signal("KILL");
        self.wait_exit(Duration::from_secs(5));
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- gateway log (component port {}) ---\n{}", self.component_port, self.log_text());
        }
    }
}

/// A minimal XMPP client: enough to log in and exchange stanzas.
pub struct Client {
    reader: StanzaReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    /// The bound full JID.
    pub jid: String,
    /// Stanzas read while waiting for something else.
    backlog: VecDeque<Element>,
    /// Every stanza received, in order, for tests that count deliveries.
    pub seen: Vec<Element>,
    next_id: u64,
}

impl Client {
    /// Connects and logs in as `user@host` with SASL PLAIN, binds `resource`.
    pub async fn connect(port: u16, user: &str, host: &str, password: &str, resource: &str) -> Client {
        let stream = TcpStream::connect(("127.0.0.1", port)).await.expect("c2s connect");
        stream.set_nodelay(true).unwrap();
        let mut client = Client::over(stream);
        client.open(host).await;
        let features = client.next().await;
        assert!(
            features.children().any(|m| m.name() == "mechanisms"),
            "no SASL mechanisms offered: {features:?}"
        );
        let token = base64_plain(user, password);
        client
            .send_raw(&format!(
                "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>"
            ))
            .await;
        let outcome = client.next().await;
        assert_eq!(outcome.name(), "success", "login of {user}@{host} failed: {outcome:?}");
        // A new stream after SASL; its reader starts over.
        let (read, writer) = (client.reader, client.writer);
        let inner = read_half(read);
        client = Client::from_halves(inner, writer);
        client.open(host).await;
        let _features = client.next().await;
        let bound = client
            .iq_raw("set", None, &format!("<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>{resource}</resource></bind>"))
            .await;
        let jid = bound
            .get_child("bind", "urn:ietf:params:xml:ns:xmpp-bind")
            .and_then(|b| b.get_child("jid", "urn:ietf:params:xml:ns:xmpp-bind"))
            .map(|j| j.text())
            .unwrap_or_else(|| panic!("bind failed: {bound:?}"));
        client.jid = jid;
        // Legacy session establishment; harmless where not needed.
        let _ = client.iq_raw("set", None, "<session xmlns='urn:ietf:params:xml:ns:xmpp-session'/>").await;
        // The roster, then initial presence, as every real client does: the server then
        // delivers messages to the bare JID and subscription traffic to this resource.
        let _ = client.iq_raw("get", None, "<query xmlns='jabber:iq:roster'/>").await;
        client.send_raw("<presence/>").await;
        client
    }

    /// A client on `stream`, before anything is said.
    fn over(stream: TcpStream) -> Client {
        let (read, writer) = stream.into_split();
        Client::from_halves(read, writer)
    }

    /// A client on a connection's halves, with a new XML reader (a new stream).
    fn from_halves(read: OwnedReadHalf, writer: OwnedWriteHalf) -> Client {
        Client { reader: StanzaReader::new(read), writer, jid: String::new(), backlog: VecDeque::new(), seen: Vec::new(), next_id: 0 }
    }

    async fn open(&mut self, host: &str) {
        self.send_raw(&stream_header(host, NS_CLIENT)).await;
        match self.reader.next().await {
            Ok(StreamEvent::Header(_)) => {}
            other => panic!("expected a stream header, got {other:?}"),
        }
    }

    /// The bare JID.
    pub fn bare(&self) -> &str {
        self.jid.split('/').next().unwrap()
    }

    /// Sends raw XML.
    pub async fn send_raw(&mut self, xml: &str) {
        self.writer.write_all(xml.as_bytes()).await.expect("client write");
    }

    async fn next(&mut self) -> Element {
        if let Some(e) = self.backlog.pop_front() {
            return e;
        }
        match tokio::time::timeout(WAIT, self.reader.next()).await {
            Ok(Ok(StreamEvent::Stanza(e))) => e,
            other => panic!("expected a stanza, got {other:?}"),
        }
    }

    /// Reads the next stanza from the stream, recording it in `seen`: `Ok(None)` when
    /// `deadline` passed first, `Err` when the stream is over (closed, broken, or ended
    /// by a stream error).
    async fn read(&mut self, deadline: tokio::time::Instant) -> Result<Option<Element>, String> {
        match tokio::time::timeout_at(deadline, self.reader.next()).await {
            Ok(Ok(StreamEvent::Stanza(e))) if e.is("error", NS_STREAMS) => Err(format!("stream error: {e:?}")),
            Ok(Ok(StreamEvent::Stanza(e))) => {
                self.seen.push(e.clone());
                Ok(Some(e))
            }
            Ok(other) => Err(format!("{other:?}")),
            Err(_) => Ok(None),
        }
    }

    /// The subjects of every message received so far, in order.
    pub fn drain_subjects(&self) -> Vec<String> {
        self.seen
            .iter()
            .filter(|e| e.name() == "message")
            .filter_map(|e| e.get_child("subject", NS_CLIENT).map(|s| s.text()))
            .collect()
    }

    /// Waits for a stanza matching `pred`; others are kept for later.
    pub async fn wait_for(&mut self, what: &str, pred: impl Fn(&Element) -> bool) -> Element {
        if let Some(i) = self.backlog.iter().position(&pred) {
            return self.backlog.remove(i).unwrap();
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match self.read(deadline).await {
                Ok(Some(e)) if pred(&e) => return e,
                Ok(Some(e)) => self.backlog.push_back(e),
                Err(other) => panic!("stream ended while waiting for {what}: {other}"),
                Ok(None) => panic!("no {what} within {WAIT:?}; got meanwhile: {:?}", self.backlog),
            }
        }
    }

    /// The first stanza matching `pred` (taken from those kept, or read within `within`),
    /// or `None` if none came. Panics if the stream ends or breaks meanwhile.
    pub async fn receive_within(&mut self, within: Duration, pred: impl Fn(&Element) -> bool) -> Option<Element> {
        if let Some(i) = self.backlog.iter().position(&pred) {
            return self.backlog.remove(i);
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match self.read(deadline).await {
                Ok(Some(e)) if pred(&e) => return Some(e),
                Ok(Some(e)) => self.backlog.push_back(e),
                Ok(None) => return None,
                Err(other) => panic!("{}: stream ended while watching for a stanza: {other}", self.jid),
            }
        }
    }

    /// Whether the stream ends (closed, broken, or ended by a stream error) within
    /// `within`; stanzas read meanwhile are kept.
    pub async fn ends_within(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match self.read(deadline).await {
                Ok(Some(e)) => self.backlog.push_back(e),
                Ok(None) => return false,
                Err(_) => return true,
            }
        }
    }

    /// Whether a stanza matching `pred` arrives within `within`. Panics if the stream
    /// ends or breaks meanwhile: a dead stream receives nothing, so "nothing arrived"
    /// read from it would pass for the wrong reason.
    pub async fn receives_within(&mut self, within: Duration, pred: impl Fn(&Element) -> bool) -> bool {
        if self.backlog.iter().any(&pred) {
            return true;
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match self.read(deadline).await {
                Ok(Some(e)) if pred(&e) => return true,
                Ok(Some(e)) => self.backlog.push_back(e),
                Ok(None) => return false,
                Err(other) => panic!("{}: stream ended while watching for a stanza: {other}", self.jid),
            }
        }
    }

    /// Sends an iq with `payload` and returns the reply (result or error).
    pub async fn iq_raw(&mut self, kind: &str, to: Option<&str>, payload: &str) -> Element {
        self.next_id += 1;
        let id = format!("t{}", self.next_id);
        let to = to.map(|t| format!(" to='{t}'")).unwrap_or_default();
        self.send_raw(&format!("<iq type='{kind}' id='{id}'{to}>{payload}</iq>")).await;
        self.wait_for(&format!("the reply to iq {id}"), |e| e.name() == "iq" && e.attr("id") == Some(&id))
            .await
    }

    /// [`Client::iq_raw`] to the gateway.
    pub async fn iq(&mut self, kind: &str, payload: &str) -> Element {
        self.iq_raw(kind, Some(GW), payload).await
    }

    /// A XEP-0313 query to the archive at `to`, with the form `fields` (besides
    /// `FORM_TYPE`) and `rsm` (the inside of the RSM `<set/>`); returns the archived
    /// messages that answered it, in the order they came, and the reply (the `<fin/>` in
    /// a result, or an error).
    pub async fn mam(&mut self, to: &str, fields: &[(&str, &str)], rsm: &str) -> (Vec<Archived>, Element) {
        self.next_id += 1;
        let queryid = format!("q{}", self.next_id);
        let fields: String = fields.iter().map(|(var, value)| format!("<field var='{var}'><value>{value}</value></field>")).collect();
        let payload = format!(
            "<query xmlns='{NS_MAM}' queryid='{queryid}'><x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE' type='hidden'><value>{NS_MAM}</value></field>{fields}</x>\
             <set xmlns='http://jabber.org/protocol/rsm'>{rsm}</set></query>"
        );
        let reply = self.iq_raw("set", Some(to), &payload).await;
        let mut archived = Vec::new();
        let mut rest = VecDeque::new();
        for stanza in self.backlog.drain(..) {
            match stanza.get_child("result", NS_MAM).filter(|r| r.attr("queryid") == Some(queryid.as_str())) {
                Some(result) => {
                    let forwarded = result.get_child("forwarded", "urn:xmpp:forward:0").expect("a result without <forwarded/>");
                    archived.push(Archived {
                        id: result.attr("id").expect("a result without an id").to_owned(),
                        stamp: forwarded.get_child("delay", "urn:xmpp:delay").and_then(|d| d.attr("stamp")).expect("a result without a delay").to_owned(),
                        message: forwarded.get_child("message", NS_CLIENT).expect("a result without a message").clone(),
                    });
                }
                None => rest.push_back(stanza),
            }
        }
        self.backlog = rest;
        (archived, reply)
    }
}

/// XEP-0313.
pub const NS_MAM: &str = "urn:xmpp:mam:2";

/// One message of an archive query's answer.
#[derive(Debug, Clone)]
pub struct Archived {
    /// Its archive id.
    pub id: String,
    /// When it was archived (XEP-0203 stamp).
    pub stamp: String,
    /// The message as forwarded.
    pub message: Element,
}

impl Archived {
    /// The forwarded message's body.
    pub fn body(&self) -> String {
        self.message.get_child("body", NS_CLIENT).map(|b| b.text()).unwrap_or_default()
    }
}

/// The `<fin/>` of an archive query's reply: `complete`, and the RSM first and last ids.
pub fn mam_fin(reply: &Element) -> (bool, Option<String>, Option<String>) {
    let fin = reply.get_child("fin", NS_MAM).unwrap_or_else(|| panic!("no <fin/> in {reply:?}"));
    let set = fin.get_child("set", "http://jabber.org/protocol/rsm");
    let text = |name: &str| set.and_then(|s| s.get_child(name, "http://jabber.org/protocol/rsm")).map(|e| e.text());
    (fin.attr("complete") == Some("true"), text("first"), text("last"))
}

/// The `std::io` reader half back from a `StanzaReader`'s socket is not reachable, so
/// after SASL we simply keep the socket: rxml has consumed exactly the bytes of the
/// success element, and the server sends nothing more until the new stream header.
fn read_half(reader: StanzaReader<OwnedReadHalf>) -> OwnedReadHalf {
    reader.into_inner()
}

/// SASL PLAIN initial response.
fn base64_plain(user: &str, password: &str) -> String {
    use std::fmt::Write;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let input = format!("\0{user}\0{password}");
    let mut out = String::new();
    for chunk in input.as_bytes().chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    let _ = out.write_str("");
    out
}

/// The defined condition of an error stanza, if it is one.
pub fn error_condition(stanza: &Element) -> Option<String> {
    if stanza.attr("type") != Some("error") {
        return None;
    }
    let error = stanza.get_child("error", NS_CLIENT)?;
    error
        .children()
        .find(|c| c.ns() == "urn:ietf:params:xml:ns:xmpp-stanzas" && c.name() != "text")
        .map(|c| c.name().to_owned())
}

/// The `<text/>` of an error stanza.
pub fn error_text(stanza: &Element) -> String {
    stanza
        .get_child("error", NS_CLIENT)
        .and_then(|e| e.get_child("text", "urn:ietf:params:xml:ns:xmpp-stanzas"))
        .map(|t| t.text())
        .unwrap_or_default()
}

/// The value of a data form field in a registration `<query/>`.
pub fn form_value(query: &Element, var: &str) -> Option<String> {
    query
        .get_child("x", "jabber:x:data")?
        .children()
        .find(|f| f.attr("var") == Some(var))?
        .get_child("value", "jabber:x:data")
        .map(|v| v.text())
}

/// A registration form submission with the given fields.
pub fn register_form(fields: &[(&str, &str)]) -> String {
    let mut xml = String::from(
        "<query xmlns='jabber:iq:register'><x xmlns='jabber:x:data' type='submit'>\
         <field var='FORM_TYPE'><value>jabber:iq:register</value></field>",
    );
    for (var, value) in fields {
        xml.push_str(&format!("<field var='{var}'><value>{value}</value></field>"));
    }
    xml.push_str("</x></query>");
    xml
}

/// The `[storage]` section of a test gateway whose directory is `path`: sled there, or,
/// under `GATEWAY_TEST_STORE=postgres`, a new database of this process's shared cluster
/// (the key file still in `path`).
#[must_use]
pub fn storage_section(path: &Path) -> String {
    if postgres::store_is_postgres() {
        let cluster = postgres::shared();
        let database = cluster.create_database();
        format!("[storage]\nbackend = \"postgres\"\npath = \"{}\"\nurl = \"{}\"\n", path.display(), cluster.url(&database))
    } else {
        format!("[storage]\npath = \"{}\"\n", path.display())
    }
}

/// Path helper for tests that look at the store directory.
pub fn db_path(gateway: &Gateway) -> PathBuf {
    gateway.dir.path().join("db")
}

/// Whether the file at `path` exists.
pub fn exists(path: &Path) -> bool {
    path.exists()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    /// What a scripted server says after its stream header.
    const SERVER_HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
        xmlns:stream='http://etherx.jabber.org/streams' id='s1' from='localhost' version='1.0'>";

    /// A scripted server on a free port: on the first connection it waits for the
    /// client's first bytes if `after_client`, sends `script`, then closes the
    /// connection if `close`, else keeps it open and silent. Returns the port.
    pub(crate) async fn scripted_server(after_client: bool, script: String, close: bool) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            if after_client {
                let mut first = [0u8; 1024];
                let _ = socket.read(&mut first).await;
            }
            socket.write_all(script.as_bytes()).await.unwrap();
            if !close {
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
        });
        port
    }

    /// A client whose server answers its stream header with its own and `script`, then
    /// closes the connection if `close`.
    async fn client_of(script: &str, close: bool) -> Client {
        let port = scripted_server(true, format!("{SERVER_HEADER}{script}"), close).await;
        let mut client = Client::over(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
        client.open("localhost").await;
        client
    }

    /// What `future` returns, or the message it panicked with.
    pub(crate) async fn outcome<T: Send + 'static>(future: impl std::future::Future<Output = T> + Send + 'static) -> Result<T, String> {
        tokio::spawn(future).await.map_err(|error| {
            let panic = error.into_panic();
            panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default()
        })
    }

    /// What `receives_within` says on `client`'s stream within 300 ms, watching for a
    /// message: `Ok(received)`, or `Err(panic message)`.
    async fn watch(mut client: Client) -> Result<bool, String> {
        outcome(async move { client.receives_within(Duration::from_millis(300), |e| e.name() == "message").await }).await
    }

    #[tokio::test]
    async fn receives_within_tells_a_live_streams_silence_from_a_stanza() {
        assert_eq!(watch(client_of("", false).await).await, Ok(false), "silence on a live stream");
        assert_eq!(watch(client_of("<presence/>", false).await).await, Ok(false), "only a stanza not watched for");
        assert_eq!(watch(client_of("<presence/><message id='m'/>", false).await).await, Ok(true));
    }

    #[tokio::test]
    async fn receives_within_fails_on_a_dead_stream_instead_of_saying_nothing_arrived() {
        for (script, close, why) in [
            ("", true, "connection closed"),
            ("<presence/>", true, "closed after a stanza not watched for"),
            ("</stream:stream>", false, "stream closed by the server"),
            ("<presence><</presence>", false, "broken XML"),
            ("<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>", false, "stream error"),
        ] {
            let outcome = watch(client_of(script, close).await).await;
            let message = outcome.expect_err(why);
            assert!(message.contains("stream ended"), "{why}: {message}");
        }
    }
}
