//! A lean raw IRC client for the load (TCP_NODELAY, 127.0.0.1): registration, JOIN, and
//! line reading with deadlines that answers PINGs and keeps nothing it has read.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use testkit::irc::IrcLine;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// How long registration and JOIN may take.
const SETUP_WAIT: Duration = Duration::from_secs(30);

/// One registered IRC connection.
pub struct Irc {
    /// The nick it registered with.
    pub nick: String,
    reader: BufReader<OwnedReadHalf>,
    writer: BufWriter<OwnedWriteHalf>,
    /// Bytes of a line not complete yet (kept when a read times out mid-line).
    partial: Vec<u8>,
}

impl Irc {
    /// Connects to 127.0.0.1:`port` and registers as `nick` (at most 9 characters).
    pub async fn connect(port: u16, nick: &str) -> Result<Irc> {
        let mut irc = Irc::open(port, nick).await?;
        irc.send(&format!("NICK {nick}\r\nUSER {nick} 0 * :bench {nick}\r\n")).await?;
        let reply = irc.wait_for("registration (001)", SETUP_WAIT, |l| matches!(l.command.as_str(), "001" | "ERROR" | "432" | "433")).await?;
        if reply.command != "001" {
            bail!("IRC registration of {nick} failed: {}", reply.raw);
        }
        Ok(irc)
    }

    /// Connects to 127.0.0.1:`port` for `nick` and sends nothing yet (the caller
    /// registers).
    pub async fn open(port: u16, nick: &str) -> Result<Irc> {
        let stream = TcpStream::connect(("127.0.0.1", port)).await.with_context(|| format!("connecting to IRC on 127.0.0.1:{port}"))?;
        stream.set_nodelay(true)?;
        let (read, write) = stream.into_split();
        Ok(Irc { nick: nick.to_owned(), reader: BufReader::new(read), writer: BufWriter::new(write), partial: Vec::new() })
    }

    /// Joins `channel` and waits for the end of NAMES.
    pub async fn join(&mut self, channel: &str) -> Result<()> {
        self.send(&format!("JOIN {channel}\r\n")).await?;
        let reply = self
            .wait_for(&format!("the end of NAMES of {channel}"), SETUP_WAIT, |l| {
                l.params.get(1).is_some_and(|c| c.eq_ignore_ascii_case(channel)) && matches!(l.command.as_str(), "366" | "403" | "471" | "473" | "474" | "475")
            })
            .await?;
        if reply.command != "366" {
            bail!("{} could not join {channel}: {}", self.nick, reply.raw);
        }
        Ok(())
    }

    /// Writes `lines` (each ending in CR LF) and flushes.
    pub async fn send(&mut self, lines: &str) -> Result<()> {
        self.writer.write_all(lines.as_bytes()).await.context("IRC write")?;
        self.writer.flush().await.context("IRC write")
    }

    /// Queues `lines` without flushing (for bulk sending; call [`Irc::flush`]).
    pub async fn queue(&mut self, lines: &str) -> Result<()> {
        self.writer.write_all(lines.as_bytes()).await.context("IRC write")
    }

    /// Flushes queued lines.
    pub async fn flush(&mut self) -> Result<()> {
        self.writer.flush().await.context("IRC write")
    }

    /// The next line (PINGs answered), `None` at `deadline`; an error if the server
    /// closed the connection.
    pub async fn next_until(&mut self, deadline: Instant) -> Result<Option<IrcLine>> {
        loop {
            let read = tokio::time::timeout_at(deadline, self.reader.read_until(b'\n', &mut self.partial)).await;
            let n = match read {
                Err(_) => return Ok(None),
                Ok(n) => n.context("IRC read")?,
            };
            if n == 0 || !self.partial.ends_with(b"\n") {
                bail!("{}: the IRC server closed the connection", self.nick);
            }
            let mut bytes = std::mem::take(&mut self.partial);
            while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                bytes.pop();
            }
            let line = IrcLine::parse(bytes);
            if line.command == "PING" {
                self.send(&format!("PONG :{}\r\n", line.text())).await?;
                continue;
            }
            return Ok(Some(line));
        }
    }

    /// Reads until a line matching `pred` (others are dropped); fails after `within`.
    pub async fn wait_for(&mut self, what: &str, within: Duration, pred: impl Fn(&IrcLine) -> bool) -> Result<IrcLine> {
        let deadline = Instant::now() + within;
        loop {
            match self.next_until(deadline).await? {
                Some(line) if pred(&line) => return Ok(line),
                Some(_) => {}
                None => return Err(anyhow!("{}: no {what} within {within:?}", self.nick)),
            }
        }
    }
}
