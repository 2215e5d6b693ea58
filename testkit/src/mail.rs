//! Mail side of the test harness: a private Postfix + Dovecot pair started by
//! `scripts/mail.sh` (virtual domain `example.test`, one Maildir per mailbox), a
//! minimal SMTP client to put mail in, and a minimal IMAP client to read it back
//! byte for byte. Everything is blocking `std` code: from an async test, either
//! accept that it blocks the runtime thread for a moment (the gateway is another
//! process, so nothing is lost) or wrap it in `tokio::task::spawn_blocking`.
//!
//! A test whose server cannot start fails with the script's output: it never skips.
//!
//! What a message read back looks like: the bytes submitted, with CRLF line ends,
//! preceded by the trace headers added on delivery - `Return-Path:`, `Delivered-To:`,
//! `Received:` (Dovecot LMTP) and `Received:` (Postfix). Postfix adds or rewrites
//! nothing else (no Message-ID or Date when missing, no address rewriting), so
//! `message.ends_with(sent)` holds for a message sent with CRLF line ends.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// The mail domain of every test mailbox.
pub const DOMAIN: &str = "example.test";

/// Read/write timeout of the SMTP and IMAP helpers.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A private Postfix + Dovecot with its own directory and five consecutive ports on
/// 127.0.0.1; stopped on drop.
///
/// - `imap_port`: IMAP, LOGIN and AUTHENTICATE PLAIN/LOGIN allowed without TLS,
///   STARTTLS offered.
/// - `imaps_port`: IMAP over implicit TLS.
/// - `submission_port`: SMTP, AUTH PLAIN/LOGIN allowed without TLS, STARTTLS offered.
/// - `smtp_starttls_port`: SMTP; STARTTLS required before MAIL, AUTH offered only
///   after it.
/// - `smtps_port`: SMTP over implicit TLS.
///
/// Mail to an existing mailbox of `example.test` is accepted on every SMTP port with
/// or without AUTH; an unknown mailbox is refused at RCPT (550 5.1.1), any other
/// domain too (554 5.7.1 Relay access denied), authenticated or not.
/// The certificate ([`MailServer::cert_path`]) is self-signed for `localhost` and
/// `127.0.0.1`; trust it as a root to test TLS with verification on.
pub struct MailServer {
    /// Everything of the instance: configuration, queue, Maildirs, logs (`log/`).
    pub dir: tempfile::TempDir,
    pub imap_port: u16,
    pub imaps_port: u16,
    pub submission_port: u16,
    pub smtp_starttls_port: u16,
    pub smtps_port: u16,
}

impl MailServer {
    /// Starts a server on five free consecutive ports (no mailboxes yet: see
    /// [`MailServer::add_user`]). Panics with the script's output if it cannot start.
    pub fn start() -> MailServer {
        let dir = tempfile::Builder::new().prefix("gw-mail-").tempdir().unwrap();
        let mut server = MailServer {
            dir,
            imap_port: 0,
            imaps_port: 0,
            submission_port: 0,
            smtp_starttls_port: 0,
            smtps_port: 0,
        };
        crate::on_free_ports("mail.sh", || {
            server.set_ports(free_port_range(5));
            run_script(&["start", server.path(), &server.imap_port.to_string()]).map(drop)
        });
        server
    }

    fn set_ports(&mut self, base: u16) {
        self.imap_port = base;
        self.imaps_port = base + 1;
        self.submission_port = base + 2;
        self.smtp_starttls_port = base + 3;
        self.smtps_port = base + 4;
    }

    fn path(&self) -> &str {
        self.dir.path().to_str().unwrap()
    }

    /// Starts the server (again) on the same directory and ports; mailboxes, their
    /// mail and the certificate are kept.
    pub fn start_again(&self) {
        script(&["start", self.path(), &self.imap_port.to_string()]);
    }

    /// Stops the server (idempotent).
    pub fn stop(&self) {
        script(&["stop", self.path()]);
    }

    /// Adds the mailbox `address` (`user@example.test`; user: letters, digits, `.`,
    /// `_`, `-`) or sets its password (`password`: no whitespace, quotes, backslash or
    /// `:`). Effective for the next IMAP or SMTP connection, also while running.
    pub fn add_user(&self, address: &str, password: &str) {
        script(&["adduser", self.path(), address, password]);
    }

    /// Deletes every message in the INBOX of `address` (the server must be running).
    pub fn expunge(&self, address: &str) {
        script(&["expunge", self.path(), address]);
    }

    /// Gives the INBOX of `address` the UIDVALIDITY `uid_validity` (the server must be
    /// running; `doveadm mailbox update`). Dovecot takes a new mailbox's UIDVALIDITY from
    /// the second it was created, and some servers use 1 for every INBOX: tests of two
    /// mailboxes with the same UIDVALIDITY make it so instead of hoping for it.
    pub fn set_uid_validity(&self, address: &str, uid_validity: u32) {
        let config = self.dir.path().join("dovecot.conf");
        for args in [
            vec!["mailbox", "create", "-u", address, "INBOX"],
            vec!["mailbox", "update", "-u", address, "--uid-validity", &uid_validity.to_string(), "INBOX"],
        ] {
            let out = Command::new("doveadm").arg("-c").arg(&config).args(&args).output().expect("cannot run doveadm");
            // INBOX may exist already (create then fails; update is what counts).
            if args[1] == "update" {
                assert!(out.status.success(), "doveadm {args:?}: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
    }

    /// Puts `raw_message` into `folder` of `address` as a mail filter or another client
    /// would (`doveadm save`), creating the folder first if needed (the server must be
    /// running).
    pub fn save_in_folder(&self, address: &str, folder: &str, raw_message: &[u8]) {
        self.create_folder(address, folder);
        let config = self.dir.path().join("dovecot.conf");
        let mut child = Command::new("doveadm")
            .arg("-c")
            .arg(&config)
            .args(["save", "-u", address, "-m", folder])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("cannot run doveadm");
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), raw_message).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "doveadm save: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Creates `folder` in the mailbox of `address` unless it exists.
    pub fn create_folder(&self, address: &str, folder: &str) {
        let config = self.dir.path().join("dovecot.conf");
        // Fails when the folder exists, which is as good.
        let _ = Command::new("doveadm").arg("-c").arg(&config).args(["mailbox", "create", "-u", address, folder]).output();
    }

    /// The self-signed certificate (PEM) of every TLS port, to trust as a root.
    pub fn cert_path(&self) -> PathBuf {
        self.dir.path().join("tls").join("cert.pem")
    }

    /// Submits `raw_message` (a complete RFC 5322 message, CRLF line ends) from
    /// envelope sender `from` to the mailbox `to`, without AUTH, on the submission
    /// port; returns once Postfix has queued it (delivery follows within about
    /// 20 ms: use [`MailServer::wait_inbox`]; mails sent one after the other arrive
    /// in that order). Panics with the server's reply if the mail is refused.
    pub fn send_raw(&self, from: &str, to: &str, raw_message: &[u8]) {
        if let Err(e) = self.try_send_raw(from, &[to], raw_message) {
            panic!("sending mail from {from} to {to} failed: {e}\n{}", self.log_tail());
        }
    }

    /// Like [`MailServer::send_raw`], to several recipients, returning the refusal
    /// (e.g. `"RCPT TO:<x@example.test>: 550 5.1.1 ... User unknown ..."`) instead
    /// of panicking. The message is sent as it is, dot-stuffed; CRLF is added if it
    /// does not end with a line end.
    pub fn try_send_raw(&self, from: &str, to: &[&str], raw_message: &[u8]) -> Result<(), String> {
        let stream = TcpStream::connect(("127.0.0.1", self.submission_port))
            .map_err(|e| format!("cannot connect to SMTP on 127.0.0.1:{}: {e}", self.submission_port))?;
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        let mut smtp = Smtp { reader: BufReader::new(stream.try_clone().unwrap()), writer: stream };
        smtp.expect("greeting", 220)?;
        smtp.command("EHLO client.test", 250)?;
        let utf8 = !from.is_ascii() || to.iter().any(|t| !t.is_ascii());
        let eight_bit = !raw_message.is_ascii();
        let mut mail = format!("MAIL FROM:<{from}>");
        if eight_bit {
            mail.push_str(" BODY=8BITMIME");
        }
        if utf8 {
            mail.push_str(" SMTPUTF8");
        }
        smtp.command(&mail, 250)?;
        for rcpt in to {
            smtp.command(&format!("RCPT TO:<{rcpt}>"), 250)?;
        }
        smtp.command("DATA", 354)?;
        let mut data = dot_stuff(raw_message);
        if !data.ends_with(b"\n") {
            data.extend_from_slice(b"\r\n");
        }
        data.extend_from_slice(b".\r\n");
        smtp.writer.write_all(&data).map_err(|e| format!("writing DATA: {e}"))?;
        smtp.expect("end of DATA", 250)?;
        let _ = smtp.command("QUIT", 221);
        Ok(())
    }

    /// Every message in the INBOX of `address`, oldest first, exactly as IMAP
    /// `UID FETCH 1:* BODY.PEEK[]` returns it (CRLF line ends; flags unchanged).
    /// Panics if the login or a command fails.
    pub fn inbox(&self, address: &str, password: &str) -> Vec<Vec<u8>> {
        self.folder(address, password, "INBOX")
    }

    /// Every message in `folder` of `address`, as [`MailServer::inbox`] reads the INBOX.
    pub fn folder(&self, address: &str, password: &str, folder: &str) -> Vec<Vec<u8>> {
        self.try_folder(address, password, folder)
            .unwrap_or_else(|e| panic!("reading {folder} of {address} failed: {e}\n{}", self.log_tail()))
    }

    fn try_folder(&self, address: &str, password: &str, folder: &str) -> Result<Vec<Vec<u8>>, String> {
        let stream = TcpStream::connect(("127.0.0.1", self.imap_port))
            .map_err(|e| format!("cannot connect to IMAP on 127.0.0.1:{}: {e}", self.imap_port))?;
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        let mut imap = Imap { reader: BufReader::new(stream.try_clone().unwrap()), writer: stream };
        let greeting = imap.read_line()?;
        if !greeting.starts_with(b"* OK") {
            return Err(format!("IMAP greeting: {}", String::from_utf8_lossy(&greeting)));
        }
        imap.command("a1", &format!("LOGIN {} {}", quoted(address), quoted(password)))?;
        imap.command("a2", &format!("SELECT {}", quoted(folder)))?;
        let messages = imap.command("a3", "UID FETCH 1:* (BODY.PEEK[])")?;
        let _ = imap.command("a4", "LOGOUT");
        Ok(messages)
    }

    /// Waits until the INBOX of `address` holds at least `count` messages and returns
    /// them all (see [`MailServer::inbox`]); panics after `timeout` with what it holds
    /// and the servers' logs.
    pub fn wait_inbox(&self, address: &str, password: &str, count: usize, timeout: Duration) -> Vec<Vec<u8>> {
        let start = Instant::now();
        loop {
            let messages = self.inbox(address, password);
            if messages.len() >= count {
                return messages;
            }
            if start.elapsed() >= timeout {
                panic!(
                    "the INBOX of {address} holds {} message(s) after {timeout:?}, expected {count}:\n{}\n{}",
                    messages.len(),
                    messages.iter().map(|m| String::from_utf8_lossy(m).into_owned()).collect::<Vec<_>>().join("\n----\n"),
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The last lines of the Postfix and Dovecot logs (for failure messages).
    pub fn log_tail(&self) -> String {
        let mut out = String::new();
        for name in ["postfix.log", "dovecot.log"] {
            let text = std::fs::read_to_string(self.dir.path().join("log").join(name)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- last lines of log/{name} ---\n"));
            for line in &lines[lines.len().saturating_sub(30)..] {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for MailServer {
    fn drop(&mut self) {
        let _ = Command::new("bash").arg(script_path()).args(["stop", self.path()]).output();
    }
}

/// A port `p` on 127.0.0.1 such that `p..p + n` are all free right now, chosen at
/// random below the ephemeral range (32768+), where outgoing connections and
/// `bind(0)` ports live.
fn free_port_range(n: u16) -> u16 {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    for _ in 0..1000 {
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        hasher.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos());
        let base = 20000 + (hasher.finish() % 12000) as u16;
        let listeners: Vec<_> = (base..base + n).map_while(|p| TcpListener::bind(("127.0.0.1", p)).ok()).collect();
        if listeners.len() == usize::from(n) {
            return base;
        }
    }
    panic!("no {n} consecutive free ports found on 127.0.0.1");
}

fn script_path() -> PathBuf {
    crate::repo().join("scripts").join("mail.sh")
}

/// Runs scripts/mail.sh; its stdout, or everything it printed if it failed.
fn run_script(args: &[&str]) -> Result<String, String> {
    let out = Command::new("bash")
        .arg(script_path())
        .args(args)
        // The script stops the servers if this test process dies without cleaning up.
        .env("HARNESS_OWNER_PID", std::process::id().to_string())
        .output()
        .unwrap_or_else(|e| panic!("cannot run scripts/mail.sh: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "scripts/mail.sh {args:?} failed ({}):\n{stdout}\n{}\n(install the mail servers with scripts/install-deps.sh; the script needs root)",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Runs scripts/mail.sh; panics with its output if it fails.
fn script(args: &[&str]) -> String {
    run_script(args).unwrap_or_else(|e| panic!("{e}"))
}

/// Doubles a `.` at the start of every line (RFC 5321 4.5.2). A bare LF counts as a
/// line end too, as it does for Postfix.
fn dot_stuff(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + 16);
    for (i, &b) in raw.iter().enumerate() {
        if b == b'.' && (i == 0 || raw[i - 1] == b'\n') {
            out.push(b'.');
        }
        out.push(b);
    }
    out
}

/// An IMAP quoted string.
fn quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

struct Smtp {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Smtp {
    /// Reads a (multi-line) reply; Err unless its code is `code`.
    fn expect(&mut self, what: &str, code: u16) -> Result<String, String> {
        let mut reply = String::new();
        loop {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line).map_err(|e| format!("{what}: reading the reply: {e}"))?;
            if n == 0 {
                return Err(format!("{what}: connection closed after {reply:?}"));
            }
            reply.push_str(&line);
            // "250-..." continues, "250 ..." ends a reply.
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                break;
            }
        }
        if reply.get(..3) == Some(code.to_string().as_str()) {
            Ok(reply)
        } else {
            Err(format!("{what}: {}", reply.trim_end()))
        }
    }

    fn command(&mut self, command: &str, code: u16) -> Result<String, String> {
        self.writer
            .write_all(format!("{command}\r\n").as_bytes())
            .map_err(|e| format!("{command}: write: {e}"))?;
        self.expect(command, code)
    }
}

struct Imap {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Imap {
    /// One line, CRLF included.
    fn read_line(&mut self) -> Result<Vec<u8>, String> {
        let mut line = Vec::new();
        let n = self.reader.read_until(b'\n', &mut line).map_err(|e| format!("IMAP read: {e}"))?;
        if n == 0 {
            return Err("the IMAP server closed the connection".into());
        }
        Ok(line)
    }

    /// Sends `tag command` and reads up to the tagged reply; returns the literals
    /// (`{N}` + N bytes) of the untagged responses, in order. Err unless the reply is OK.
    fn command(&mut self, tag: &str, command: &str) -> Result<Vec<Vec<u8>>, String> {
        self.writer
            .write_all(format!("{tag} {command}\r\n").as_bytes())
            .map_err(|e| format!("IMAP write: {e}"))?;
        let mut literals = Vec::new();
        let tagged = format!("{tag} ");
        loop {
            let line = self.read_line()?;
            if line.starts_with(tagged.as_bytes()) {
                let status = &line[tagged.len()..];
                if status.starts_with(b"OK") {
                    return Ok(literals);
                }
                let shown = if command.starts_with("LOGIN") { "LOGIN ..." } else { command };
                return Err(format!("{shown}: {}", String::from_utf8_lossy(&line).trim_end()));
            }
            if let Some(size) = literal_size(&line) {
                let mut literal = vec![0; size];
                self.reader.read_exact(&mut literal).map_err(|e| format!("IMAP read literal: {e}"))?;
                literals.push(literal);
                // The rest of the response (e.g. ")\r\n") comes as the next line.
            }
        }
    }
}

/// N if `line` ends with `{N}\r\n` (an IMAP literal follows).
fn literal_size(line: &[u8]) -> Option<usize> {
    let line = line.strip_suffix(b"\r\n")?.strip_suffix(b"}")?;
    let open = line.iter().rposition(|&b| b == b'{')?;
    std::str::from_utf8(&line[open + 1..]).ok()?.parse().ok()
}
