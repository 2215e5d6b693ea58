//! Bytes to and from an IRC server: TCP or verified TLS (`bridge-net`), and line
//! framing that decodes each line as UTF-8 or, failing that, Latin-1.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use tokio::time::Instant;

use crate::settings::{NetworkSettings, ServerLimits};
use crate::text;

/// Bytes read at most per system call. The buffer is given back whenever every byte
/// read was a whole line, so an idle connection holds none (a BufReader would hold 8 KiB
/// for each of thousands of mostly idle connections).
const READ_CHUNK: usize = 1024;

pub use bridge_net::{ConnectError, Stream};

/// Connects to `server` with `settings`: TLS (verified) or plain, as configured.
pub async fn connect(server: &str, settings: &NetworkSettings) -> Result<Stream, ConnectError> {
    if settings.tls {
        bridge_net::connect_tls(server, settings.port, settings.reach, settings.ca_file.as_deref()).await
    } else {
        bridge_net::connect_tcp(server, settings.port, settings.reach).await
    }
}

/// Reads lines from the server.
pub struct LineReader<R> {
    /// The socket's read half.
    inner: R,
    /// Bytes read and not yet returned as lines: `start..` of it.
    buf: Vec<u8>,
    /// Where the unreturned bytes begin in `buf`.
    start: usize,
    /// Longest line returned; the rest of a longer one is dropped as it arrives.
    max_line: usize,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    /// Wraps the read half; lines are cut at `max_line` bytes.
    pub fn new(read: R, max_line: usize) -> Self {
        LineReader { inner: read, buf: Vec::new(), start: 0, max_line }
    }

    /// The next line without its CR LF, decoded; `None` at end of stream. Cancel-safe
    /// for `select!`: bytes read stay in `buf` until their line is complete.
    pub async fn next_line(&mut self) -> io::Result<Option<String>> {
        loop {
            if let Some(line) = self.take_line() {
                if line.is_empty() {
                    continue;
                }
                return Ok(Some(line));
            }
            // Room for one more chunk after the partial line, which moves to the front.
            self.buf.drain(..self.start);
            self.start = 0;
            if self.buf.capacity() - self.buf.len() < READ_CHUNK {
                self.buf.reserve(READ_CHUNK);
            }
            let mut chunk = (&mut self.inner).take(READ_CHUNK as u64);
            if chunk.read_buf(&mut self.buf).await? == 0 {
                return Ok(None);
            }
        }
    }

    /// The first complete line in the buffer, if there is one.
    fn take_line(&mut self) -> Option<String> {
        let pending = self.buf.get(self.start..).unwrap_or_default();
        let Some(newline) = pending.iter().position(|&b| b == b'\n') else {
            if pending.len() > self.max_line {
                // Keep the first `max_line` bytes of an endless line; drop the rest.
                self.buf.truncate(self.start + self.max_line);
            }
            return None;
        };
        let mut line = pending.get(..newline.min(self.max_line)).unwrap_or_default();
        while let [rest @ .., b'\r' | b'\n'] = line {
            line = rest;
        }
        let text = text::decode_line(line);
        self.start += newline + 1;
        if self.start == self.buf.len() {
            // Everything consumed: nothing held until the next read.
            self.buf = Vec::new();
            self.start = 0;
        }
        Some(text)
    }
}

/// How many lines a server may still send: a token bucket holding up to the burst,
/// refilled at the average rate (both from [`ServerLimits`], passed to each call: this
/// lives in every connection's task, so it holds only what changes).
#[derive(Debug, Clone)]
pub struct IncomingRate {
    /// Lines that may come now.
    tokens: f32,
    /// When `tokens` was last brought up to date.
    checked: Instant,
}

impl IncomingRate {
    /// A full bucket, as of `now`.
    pub fn new(limits: &ServerLimits, now: Instant) -> Self {
        IncomingRate { tokens: limits.lines_burst.max(1) as f32, checked: now }
    }

    /// Counts a line read at `now`; false when the server is past its rate.
    pub fn take(&mut self, limits: &ServerLimits, now: Instant) -> bool {
        if limits.lines_per_second == 0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.checked).as_secs_f32();
        self.checked = now;
        self.tokens = (self.tokens + elapsed * limits.lines_per_second as f32).min(limits.lines_burst.max(1) as f32);
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

/// Writes one line, adding CR LF. The caller guarantees `line` holds no CR, LF or NUL.
pub async fn write_line<W: AsyncWrite + Unpin>(writer: &mut W, line: &str) -> io::Result<()> {
    write_lines(writer, [line]).await
}

/// Writes `lines`, each with CR LF, in one write: one system call and one TCP segment
/// for what would be one each (registration, a burst of queued lines), which the IRC
/// server then also reads at once. The caller guarantees no line holds CR, LF or NUL.
pub async fn write_lines<'a, W: AsyncWrite + Unpin>(writer: &mut W, lines: impl IntoIterator<Item = &'a str>) -> io::Result<()> {
    writer.write_all(&joined_lines(lines)).await
}

/// `lines` as they go on the wire, each ended by CR LF (counted as lines sent).
fn joined_lines<'a>(lines: impl IntoIterator<Item = &'a str>) -> Vec<u8> {
    let mut bytes = Vec::new();
    for line in lines {
        debug_assert!(!line.contains(['\r', '\n', '\0']), "unsafe IRC line: {line:?}");
        bytes.reserve(line.len() + 2);
        bytes.extend_from_slice(line.as_bytes());
        bytes.extend_from_slice(b"\r\n");
        bridge_core::counters::count(&bridge_core::counters::COUNTERS.irc_lines_out);
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX_LINE: usize = 16 * 1024;

    #[test]
    fn lines_written_together_each_end_with_cr_lf() {
        assert_eq!(joined_lines(["CAP LS 302", "NICK alice", "USER alice 0 * :x"]), b"CAP LS 302\r\nNICK alice\r\nUSER alice 0 * :x\r\n");
        assert_eq!(joined_lines([]), b"");
    }

    async fn lines(input: &[u8]) -> Vec<String> {
        let mut reader = LineReader::new(input, MAX_LINE);
        let mut lines = Vec::new();
        while let Some(line) = reader.next_line().await.unwrap() {
            lines.push(line);
        }
        lines
    }

    #[tokio::test]
    async fn lines_end_with_crlf_or_lf_and_empty_ones_are_skipped() {
        let got = lines(b":s 001 me :Welcome\r\nPING :x\n\r\n\nlast without end").await;
        assert_eq!(got, [":s 001 me :Welcome", "PING :x"]);
    }

    #[tokio::test]
    async fn a_line_longer_than_a_read_comes_whole_and_latin1_is_decoded() {
        let long = format!(":s PRIVMSG #c :{}", "é".repeat(1500));
        let mut input = long.clone().into_bytes();
        input.extend_from_slice(b"\r\n:s PRIVMSG #c :caf\xe9\r\n");
        assert_eq!(lines(&input).await, [long, ":s PRIVMSG #c :café".to_owned()]);
    }

    #[tokio::test]
    async fn an_endless_line_is_cut_and_the_next_one_is_intact() {
        let mut input = vec![b'a'; 3 * MAX_LINE];
        input.extend_from_slice(b"\r\nPING :ok\r\n");
        let got = lines(&input).await;
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].len(), MAX_LINE);
        assert_eq!(got[1], "PING :ok");
    }

    #[tokio::test]
    async fn no_buffer_is_held_at_rest() {
        let mut input = Vec::new();
        for i in 0..2000 {
            input.extend_from_slice(format!(":s PRIVMSG #c :line {i}\r\n").as_bytes());
        }
        let mut reader = LineReader::new(&input[..], MAX_LINE);
        for i in 0..2000 {
            assert_eq!(reader.next_line().await.unwrap(), Some(format!(":s PRIVMSG #c :line {i}")));
        }
        assert_eq!(reader.buf.capacity(), 0, "every byte read was returned: nothing is kept");
        assert_eq!(reader.next_line().await.unwrap(), None);
    }

    #[test]
    fn a_server_may_burst_then_only_keep_to_its_rate() {
        let limits = ServerLimits { lines_per_second: 10, lines_burst: 5, ..ServerLimits::default() };
        let start = Instant::now();
        let mut rate = IncomingRate::new(&limits, start);
        assert!((0..5).all(|_| rate.take(&limits, start)), "the burst comes at once");
        assert!(!rate.take(&limits, start), "one more at the same instant is past the rate");
        // A tenth of a second gives one line back; a long pause refills only the burst.
        assert!(rate.take(&limits, start + std::time::Duration::from_millis(101)));
        let later = start + std::time::Duration::from_secs(60);
        assert!((0..5).all(|_| rate.take(&limits, later)));
        assert!(!rate.take(&limits, later));
    }

    #[test]
    fn no_rate_means_no_limit() {
        let limits = ServerLimits { lines_per_second: 0, ..ServerLimits::default() };
        let now = Instant::now();
        let mut rate = IncomingRate::new(&limits, now);
        assert!((0..100_000).all(|_| rate.take(&limits, now)));
    }
}
