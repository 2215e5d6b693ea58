//! Bytes to and from an IRC server: TCP or verified TLS (`bridge-net`), and line
//! framing that decodes each line as UTF-8 or, failing that, Latin-1.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::settings::NetworkSettings;
use crate::text;

/// Longest line we accept from a server; longer ones are cut (IRCv3 tags can exceed 512).
const MAX_INCOMING: usize = 16 * 1024;
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
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    /// Wraps the read half.
    pub fn new(read: R) -> Self {
        LineReader { inner: read, buf: Vec::new(), start: 0 }
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
            if pending.len() > MAX_INCOMING {
                // Keep the first MAX_INCOMING bytes of an endless line; drop the rest.
                self.buf.truncate(self.start + MAX_INCOMING);
            }
            return None;
        };
        let mut line = pending.get(..newline.min(MAX_INCOMING)).unwrap_or_default();
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

/// Writes one line, adding CR LF. The caller guarantees `line` holds no CR, LF or NUL.
pub async fn write_line<W: AsyncWrite + Unpin>(writer: &mut W, line: &str) -> io::Result<()> {
    debug_assert!(!line.contains(['\r', '\n', '\0']), "unsafe IRC line: {line:?}");
    let mut bytes = Vec::with_capacity(line.len() + 2);
    bytes.extend_from_slice(line.as_bytes());
    bytes.extend_from_slice(b"\r\n");
    writer.write_all(&bytes).await
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines(input: &[u8]) -> Vec<String> {
        let mut reader = LineReader::new(input);
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
        let mut input = vec![b'a'; 3 * MAX_INCOMING];
        input.extend_from_slice(b"\r\nPING :ok\r\n");
        let got = lines(&input).await;
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].len(), MAX_INCOMING);
        assert_eq!(got[1], "PING :ok");
    }

    #[tokio::test]
    async fn no_buffer_is_held_at_rest() {
        let mut input = Vec::new();
        for i in 0..2000 {
            input.extend_from_slice(format!(":s PRIVMSG #c :line {i}\r\n").as_bytes());
        }
        let mut reader = LineReader::new(&input[..]);
        for i in 0..2000 {
            assert_eq!(reader.next_line().await.unwrap(), Some(format!(":s PRIVMSG #c :line {i}")));
        }
        assert_eq!(reader.buf.capacity(), 0, "every byte read was returned: nothing is kept");
        assert_eq!(reader.next_line().await.unwrap(), None);
    }
}
