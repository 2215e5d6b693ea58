//! IRC side of the test harness: a private ngIRCd started by `scripts/ngircd.sh` (plain,
//! or TLS with a self-signed certificate plus a plain port for raw clients), and a
//! raw-socket IRC client that keeps every line's bytes (for charset tests).
//!
//! A test whose server cannot start fails with the script's output: it never skips.

use std::collections::VecDeque;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// How long the client waits for an expected line (and for registration).
pub const IRC_WAIT: Duration = Duration::from_secs(20);

/// One line received from the server, without its CR LF, and parsed.
#[derive(Debug, Clone)]
pub struct IrcLine {
    /// The line decoded as UTF-8, invalid bytes replaced (U+FFFD).
    pub raw: String,
    /// The line's exact bytes (e.g. a Latin-1 `0xE9` stays `0xE9`).
    pub bytes: Vec<u8>,
    /// The nick of a `:nick!user@host` prefix; `None` for a server prefix or none.
    pub prefix_nick: Option<String>,
    /// The command or three-digit numeric, e.g. `PRIVMSG` or `001`.
    pub command: String,
    /// The parameters; a `:trailing` one is the last, without its colon.
    pub params: Vec<String>,
}

impl IrcLine {
    /// Parses `[@tags] [:prefix] COMMAND params... [:trailing]` (CR LF already removed).
    pub fn parse(bytes: Vec<u8>) -> IrcLine {
        let raw = String::from_utf8_lossy(&bytes).into_owned();
        let mut rest = raw.as_str();
        if rest.starts_with('@') {
            rest = rest.split_once(' ').map_or("", |(_, r)| r);
        }
        let mut prefix_nick = None;
        if let Some(prefixed) = rest.strip_prefix(':') {
            let (prefix, r) = prefixed.split_once(' ').unwrap_or((prefixed, ""));
            let nick = prefix.split(['!', '@']).next().unwrap_or_default();
            // Server names contain a dot, nicks never do.
            if !nick.is_empty() && !nick.contains('.') {
                prefix_nick = Some(nick.to_string());
            }
            rest = r;
        }
        let (middle, trailing) = match rest.split_once(" :") {
            Some((m, t)) => (m, Some(t)),
            None => (rest, None),
        };
        let mut words = middle.split(' ').filter(|w| !w.is_empty());
        let command = words.next().unwrap_or_default().to_ascii_uppercase();
        let mut params: Vec<String> = words.map(str::to_string).collect();
        params.extend(trailing.map(str::to_string));
        IrcLine { raw, bytes, prefix_nick, command, params }
    }

    /// Whether this is a PRIVMSG to `target` (ASCII case-insensitive, as ngIRCd's CASEMAPPING).
    pub fn is_privmsg_to(&self, target: &str) -> bool {
        self.command == "PRIVMSG" && self.params.first().is_some_and(|t| t.eq_ignore_ascii_case(target))
    }

    /// The last parameter (a PRIVMSG's text), or "".
    pub fn text(&self) -> &str {
        self.params.last().map_or("", String::as_str)
    }
}

/// A raw IRC client on 127.0.0.1 (TCP_NODELAY). Lines read while waiting for something
/// else are kept in a backlog for later waits; PINGs are answered automatically.
pub struct IrcClient {
    /// The nick this client registered with.
    pub nick: String,
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    /// Bytes of a line not complete yet (kept when a wait times out mid-line).
    partial: Vec<u8>,
    backlog: VecDeque<IrcLine>,
}

impl IrcClient {
    /// Connects and registers as `nick` (NICK/USER); waits for 001 and panics with what
    /// it got instead (e.g. 433 nick in use, 432 longer than ngIRCd's NICKLEN of 9).
    pub async fn connect(port: u16, nick: &str) -> IrcClient {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap_or_else(|e| panic!("cannot connect to IRC on 127.0.0.1:{port}: {e}"));
        stream.set_nodelay(true).unwrap();
        let mut client = IrcClient::over(stream, nick);
        client.send_line(&format!("NICK {nick}")).await;
        client.send_line(&format!("USER {nick} 0 * :test client {nick}")).await;
        let reply = client
            .wait_for("registration (001)", |l| {
                matches!(l.command.as_str(), "001" | "ERROR" | "431" | "432" | "433" | "436" | "437")
            })
            .await;
        assert_eq!(reply.command, "001", "IRC registration of {nick} failed: {}", reply.raw);
        client
    }

    /// [`IrcClient::connect`], asking the server for the IRCv3 capabilities `caps`
    /// (space-separated) first; panics unless all are acknowledged.
    pub async fn connect_with_caps(port: u16, nick: &str, caps: &str) -> IrcClient {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap_or_else(|e| panic!("cannot connect to IRC on 127.0.0.1:{port}: {e}"));
        stream.set_nodelay(true).unwrap();
        let mut client = IrcClient::over(stream, nick);
        client.send_line("CAP LS 302").await;
        client.send_line(&format!("NICK {nick}")).await;
        client.send_line(&format!("USER {nick} 0 * :test client {nick}")).await;
        client.send_line(&format!("CAP REQ :{caps}")).await;
        let answer = client.wait_for("the CAP REQ answer", |l| l.command == "CAP" && matches!(l.params.get(1).map(String::as_str), Some("ACK" | "NAK"))).await;
        assert_eq!(answer.params.get(1).map(String::as_str), Some("ACK"), "{nick}'s capabilities {caps} refused: {}", answer.raw);
        client.send_line("CAP END").await;
        let reply = client.wait_for("registration (001)", |l| matches!(l.command.as_str(), "001" | "ERROR" | "433")).await;
        assert_eq!(reply.command, "001", "IRC registration of {nick} failed: {}", reply.raw);
        client
    }

    /// A client named `nick` on `stream`, before anything is said.
    fn over(stream: TcpStream, nick: &str) -> IrcClient {
        let (read, writer) = stream.into_split();
        IrcClient { nick: nick.to_string(), reader: BufReader::new(read), writer, partial: Vec::new(), backlog: VecDeque::new() }
    }

    /// Sends `line` plus CR LF.
    pub async fn send_line(&mut self, line: &str) {
        self.send_bytes(format!("{line}\r\n").as_bytes()).await;
    }

    /// Sends raw bytes as they are (the caller adds CR LF), e.g. a Latin-1 line.
    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.expect("IRC write");
    }

    /// Joins `channel` (with a key after a space, e.g. `"#c key"`) and waits for the end
    /// of its NAMES (366); panics if the join is refused (471, 473, 474, 475, ...).
    pub async fn join(&mut self, channel: &str) {
        self.send_line(&format!("JOIN {channel}")).await;
        let name = channel.split(' ').next().unwrap_or_default().to_string();
        let refused = ["403", "405", "471", "473", "474", "475", "476"];
        let reply = self
            .wait_for(&format!("the end of NAMES of {name}"), |l| {
                let about_it = l.params.get(1).is_some_and(|c| c.eq_ignore_ascii_case(&name));
                about_it && (l.command == "366" || refused.contains(&l.command.as_str()))
            })
            .await;
        assert_eq!(reply.command, "366", "{} could not join {name}: {}", self.nick, reply.raw);
    }

    /// Sends `PRIVMSG target :text`.
    pub async fn privmsg(&mut self, target: &str, text: &str) {
        self.send_line(&format!("PRIVMSG {target} :{text}")).await;
    }

    /// The next line, or `None` when the server closed the connection. Answers PINGs.
    async fn read_line(&mut self) -> Option<IrcLine> {
        loop {
            // read_until keeps what it has read in `partial` if this future is dropped.
            let n = self.reader.read_until(b'\n', &mut self.partial).await.expect("IRC read");
            if n == 0 || !self.partial.ends_with(b"\n") {
                return None;
            }
            let mut bytes = std::mem::take(&mut self.partial);
            while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                bytes.pop();
            }
            let line = IrcLine::parse(bytes);
            if line.command == "PING" {
                self.send_line(&format!("PONG :{}", line.text())).await;
                continue;
            }
            return Some(line);
        }
    }

    /// Reads until a line matching `pred` arrives (or is already in the backlog) and
    /// returns it; others are kept. Panics after 10 s, or on a closed connection, with
    /// the lines seen meanwhile.
    pub async fn wait_for(&mut self, what: &str, pred: impl Fn(&IrcLine) -> bool) -> IrcLine {
        if let Some(i) = self.backlog.iter().position(&pred) {
            return self.backlog.remove(i).unwrap();
        }
        let deadline = Instant::now() + IRC_WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.read_line()).await {
                Ok(Some(line)) if pred(&line) => return line,
                Ok(Some(line)) => self.backlog.push_back(line),
                Ok(None) => {
                    panic!("{}: connection closed while waiting for {what}; got:\n{}", self.nick, self.seen())
                }
                Err(_) => panic!("{}: no {what} within {IRC_WAIT:?}; got:\n{}", self.nick, self.seen()),
            }
        }
    }

    /// Whether a line matching `pred` is in the backlog or arrives within `within`
    /// (the matching line is consumed; others are kept). Panics if the server closes
    /// the connection meanwhile: "nothing arrived" must not be read from a dead one.
    pub async fn receives_within(&mut self, within: Duration, pred: impl Fn(&IrcLine) -> bool) -> bool {
        if let Some(i) = self.backlog.iter().position(&pred) {
            self.backlog.remove(i);
            return true;
        }
        let deadline = Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.read_line()).await {
                Ok(Some(line)) if pred(&line) => return true,
                Ok(Some(line)) => self.backlog.push_back(line),
                Ok(None) => panic!("{}: connection closed while watching for a line; got:\n{}", self.nick, self.seen()),
                Err(_) => return false,
            }
        }
    }

    /// The texts of up to `count` PRIVMSGs to `target` (a channel, or our nick for
    /// private messages), in order, backlog first; stops early after `within`, so the
    /// caller checks the length, and panics on a closed connection. Other lines are kept.
    pub async fn collect_privmsgs(&mut self, target: &str, count: usize, within: Duration) -> Vec<String> {
        let mut texts = Vec::new();
        let mut kept = VecDeque::new();
        while let Some(line) = self.backlog.pop_front() {
            if texts.len() < count && line.is_privmsg_to(target) {
                texts.push(line.text().to_string());
            } else {
                kept.push_back(line);
            }
        }
        self.backlog = kept;
        let deadline = Instant::now() + within;
        while texts.len() < count {
            match tokio::time::timeout_at(deadline, self.read_line()).await {
                Ok(Some(line)) if line.is_privmsg_to(target) => texts.push(line.text().to_string()),
                Ok(Some(line)) => self.backlog.push_back(line),
                Ok(None) => panic!("{}: connection closed while collecting PRIVMSGs; got {texts:?}", self.nick),
                Err(_) => break,
            }
        }
        texts
    }

    /// The backlog's last lines, for panic messages.
    fn seen(&self) -> String {
        let skip = self.backlog.len().saturating_sub(40);
        self.backlog.iter().skip(skip).map(|l| format!("  {}\n", l.raw)).collect()
    }
}

/// What a harness needs of any of the private IRC servers here (the bench measures the
/// process, reads its log, points a gateway at it).
pub trait IrcServer {
    /// The server software's name, as a report names the process (e.g. `ngIRCd`).
    fn name(&self) -> &'static str;
    /// The plain (non-TLS) client port on 127.0.0.1.
    fn plain_port(&self) -> u16;
    /// The file holding the server process's pid while it runs.
    fn pid_file(&self) -> PathBuf;
    /// The server's log (what to show when a run against it failed).
    fn log_file(&self) -> PathBuf;
}

/// A private ngIRCd (server name `irc.localhost`) on 127.0.0.1 with its own directory;
/// stopped on drop. NICKLEN is 9, lines are at most 512 bytes with CR LF.
pub struct Ngircd {
    /// The instance's directory (config, `ngircd.out` console log, `tls/`).
    pub dir: tempfile::TempDir,
    /// The IRC port on 127.0.0.1: TLS only for [`Ngircd::start_tls`], else plain.
    pub port: u16,
    flood_protection: bool,
    tls: bool,
}

impl Ngircd {
    /// Starts a server on a free port; `flood_protection` keeps ngIRCd's default
    /// throttling (3 lines/s per client), otherwise there is none.
    pub fn start(flood_protection: bool) -> Ngircd {
        let dir = tempfile::Builder::new().prefix("gw-ircd-").tempdir().unwrap();
        let mut server = Ngircd { dir, port: 0, flood_protection, tls: false };
        crate::on_free_ports(NGIRCD, || {
            server.port = crate::free_port();
            server.try_start_again()
        });
        server
    }

    /// Starts a server whose `port` speaks TLS only, with a self-signed certificate for
    /// `localhost` and `127.0.0.1` ([`Ngircd::cert_path`]), and whose
    /// [`Ngircd::plain_port`] (`port + 1`) is plain, for the raw test clients. No flood
    /// protection.
    pub fn start_tls() -> Ngircd {
        let dir = tempfile::Builder::new().prefix("gw-ircd-tls-").tempdir().unwrap();
        let mut server = Ngircd { dir, port: 0, flood_protection: false, tls: true };
        crate::on_free_ports(NGIRCD, || {
            server.port = free_port_pair();
            server.try_start_again()
        });
        server
    }

    /// Starts the server (again) on the same directory and port (and certificate).
    pub fn start_again(&self) {
        self.try_start_again().unwrap_or_else(|output| panic!("{output}"));
    }

    /// Same; what the script said if it failed.
    fn try_start_again(&self) -> Result<(), String> {
        let port = self.port.to_string();
        let mut args = vec!["start", self.path(), &port];
        if self.flood_protection {
            args.push("--flood-protection");
        }
        if self.tls {
            args.push("--tls");
        }
        try_run_script(&args)
    }

    /// The plain port: `port`, or `port + 1` for a TLS server.
    pub fn plain_port(&self) -> u16 {
        if self.tls {
            self.port + 1
        } else {
            self.port
        }
    }

    /// The self-signed certificate of a TLS server (PEM), to trust as a root.
    pub fn cert_path(&self) -> PathBuf {
        assert!(self.tls, "cert_path: this ngIRCd was started without TLS");
        self.dir.path().join("tls").join("cert.pem")
    }

    /// Whether the connection on which `nick` registered (its latest registration, per
    /// ngIRCd's console log) was TLS; `None` if the log shows no registration of `nick`.
    pub fn registered_over_tls(&self, nick: &str) -> Option<bool> {
        let log = std::fs::read_to_string(self.dir.path().join("ngircd.out")).unwrap_or_default();
        // "Accepted connection 8 from ...", "Connection 8: initialized TLS1.3 using ...",
        // "User \"alice!~alice@127.0.0.1\" registered (connection 8)."
        let mut tls_by_connection = std::collections::HashMap::new();
        let mut found = None;
        let registered = format!("User \"{nick}!");
        for line in log.lines() {
            let number = |after: &str| -> Option<String> {
                let rest = &line[line.find(after)? + after.len()..];
                Some(rest.chars().take_while(char::is_ascii_digit).collect())
            };
            if line.contains("Accepted connection ") {
                if let Some(n) = number("Accepted connection ") {
                    tls_by_connection.insert(n, false);
                }
            } else if line.contains(": initialized TLS") {
                if let Some(n) = number("] Connection ") {
                    tls_by_connection.insert(n, true);
                }
            } else if line.contains(&registered) && line.contains("\" registered (connection ") {
                if let Some(n) = number("registered (connection ") {
                    found = Some(tls_by_connection.get(&n).copied().unwrap_or(false));
                }
            }
        }
        found
    }

    /// Stops the server (idempotent).
    pub fn stop(&self) {
        run_script(&["stop", self.path()]);
    }

    /// A client registered as `nick` (on the plain port).
    pub async fn client(&self, nick: &str) -> IrcClient {
        IrcClient::connect(self.plain_port(), nick).await
    }

    fn path(&self) -> &str {
        self.dir.path().to_str().unwrap()
    }
}

impl IrcServer for Ngircd {
    fn name(&self) -> &'static str {
        "ngIRCd"
    }

    fn plain_port(&self) -> u16 {
        Ngircd::plain_port(self)
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.path().join("run").join("ngircd.pid")
    }

    fn log_file(&self) -> PathBuf {
        self.dir.path().join("ngircd.out")
    }
}

impl Drop for Ngircd {
    fn drop(&mut self) {
        let _ = Command::new("bash").arg(script_path(NGIRCD)).args(["stop", self.path()]).output();
    }
}

/// A port free right now on 127.0.0.1 whose successor is free too (TLS + plain).
/// The ngIRCd script.
const NGIRCD: &str = "ngircd.sh";

/// InspIRCd with Atheme services: an IRC server with SASL PLAIN (ngIRCd has none).
/// Stopped on drop.
pub struct Inspircd {
    /// The instance's directory.
    pub dir: tempfile::TempDir,
    /// The plain IRC port on 127.0.0.1 (the services link uses `port + 1`).
    pub port: u16,
}

impl Inspircd {
    /// Starts InspIRCd and Atheme on free ports.
    pub fn start() -> Inspircd {
        let dir = tempfile::Builder::new().prefix("gw-insp-").tempdir().unwrap();
        let mut server = Inspircd { dir, port: 0 };
        crate::on_free_ports("inspircd.sh", || {
            server.port = free_port_pair();
            try_run("inspircd.sh", &["start", server.path(), &server.port.to_string()])
        });
        server
    }

    fn path(&self) -> &str {
        self.dir.path().to_str().unwrap()
    }

    /// Registers a services account (SASL PLAIN works with it afterwards).
    pub fn add_account(&self, account: &str, password: &str) {
        run("inspircd.sh", &["adduser", self.path(), account, password]);
    }

    /// A raw client on the server.
    pub async fn client(&self, nick: &str) -> IrcClient {
        IrcClient::connect(self.port, nick).await
    }
}

impl IrcServer for Inspircd {
    fn name(&self) -> &'static str {
        "InspIRCd"
    }

    fn plain_port(&self) -> u16 {
        self.port
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.path().join("run").join("inspircd.pid")
    }

    fn log_file(&self) -> PathBuf {
        self.dir.path().join("inspircd.log")
    }
}

impl Drop for Inspircd {
    fn drop(&mut self) {
        let _ = try_run("inspircd.sh", &["stop", self.path()]);
    }
}

fn free_port_pair() -> u16 {
    for _ in 0..100 {
        let first = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = first.local_addr().unwrap().port();
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
    panic!("no two consecutive free ports on 127.0.0.1");
}

fn script_path(script: &str) -> PathBuf {
    crate::repo().join("scripts").join(script)
}

/// Runs scripts/ngircd.sh; panics with its output if it fails.
fn run_script(args: &[&str]) {
    run(NGIRCD, args)
}

/// Runs `scripts/<script>`; panics with its output if it fails.
fn run(script: &str, args: &[&str]) {
    if let Err(output) = try_run(script, args) {
        panic!("{output}");
    }
}

/// Runs scripts/ngircd.sh; `Err` holds what to show when it failed.
fn try_run_script(args: &[&str]) -> Result<(), String> {
    try_run(NGIRCD, args)
}

fn try_run(script: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new("bash")
        .arg(script_path(script))
        .args(args)
        // The script stops the server if this test process dies without cleaning up.
        .env("HARNESS_OWNER_PID", std::process::id().to_string())
        .output()
        .unwrap_or_else(|e| panic!("cannot run scripts/{script}: {e}"));
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "scripts/{script} {args:?} failed ({}):\n{}\n{}\n(install the servers with scripts/install-deps.sh)",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{outcome, scripted_server};

    /// A client whose server sends `script`, then closes the connection if `close`.
    async fn client_of(script: &str, close: bool) -> IrcClient {
        let port = scripted_server(false, script.to_owned(), close).await;
        IrcClient::over(TcpStream::connect(("127.0.0.1", port)).await.unwrap(), "bob")
    }

    /// What `receives_within` says within 300 ms, watching for a QUIT: `Ok(received)`,
    /// or `Err(panic message)`.
    async fn watch(mut client: IrcClient) -> Result<bool, String> {
        outcome(async move { client.receives_within(Duration::from_millis(300), |l| l.command == "QUIT").await }).await
    }

    #[tokio::test]
    async fn receives_within_tells_a_live_connections_silence_from_a_line() {
        assert_eq!(watch(client_of("", false).await).await, Ok(false), "silence on a live connection");
        assert_eq!(watch(client_of(":a!u@h PRIVMSG #c :x\r\n", false).await).await, Ok(false), "only a line not watched for");
        assert_eq!(watch(client_of(":a!u@h PRIVMSG #c :x\r\n:a!u@h QUIT :bye\r\n", false).await).await, Ok(true));
    }

    #[tokio::test]
    async fn receives_within_fails_on_a_closed_connection_instead_of_saying_nothing_arrived() {
        for (script, why) in [("", "closed at once"), (":a!u@h PRIVMSG #c :x\r\n", "closed after a line not watched for"), ("ERROR :Closing link\r\n", "closed by ERROR")] {
            let message = watch(client_of(script, true).await).await.expect_err(why);
            assert!(message.contains("connection closed"), "{why}: {message}");
        }
    }

    #[tokio::test]
    async fn collect_privmsgs_fails_on_a_closed_connection() {
        let mut client = client_of(":a!u@h PRIVMSG #c :one\r\n", true).await;
        let collected = outcome(async move { client.collect_privmsgs("#c", 2, Duration::from_secs(5)).await }).await;
        assert!(collected.expect_err("a closed connection").contains("connection closed"));
    }
}
