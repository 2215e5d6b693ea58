//! Bytes to and from an IRC server: TCP or verified TLS (`bridge-net`), and line
//! framing that decodes each line as UTF-8 or, failing that, Latin-1.

use std::io;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

use crate::settings::NetworkSettings;
use crate::text;

/// Longest line we accept from a server; longer ones are cut (IRCv3 tags can exceed 512).
const MAX_INCOMING: usize = 16 * 1024;

pub use bridge_net::{ConnectError, Stream};

/// Connects to `server` with `settings`: TLS (verified) or plain, as configured.
pub async fn connect(server: &str, settings: &NetworkSettings) -> Result<Stream, ConnectError> {
    if settings.tls {
        bridge_net::connect_tls(server, settings.port, settings.ca_file.as_deref()).await
    } else {
        bridge_net::connect_tcp(server, settings.port).await
    }
}

/// Reads lines from the server.
pub struct LineReader<R> {
    /// Buffered socket.
    inner: BufReader<R>,
    /// Bytes of the line being read.
    buf: Vec<u8>,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    /// Wraps the read half.
    pub fn new(read: R) -> Self {
        LineReader { inner: BufReader::new(read), buf: Vec::with_capacity(512) }
    }

    /// The next line without its CR LF, decoded; `None` at end of stream. Cancel-safe
    /// enough for `select!`: a partial line stays in `buf`.
    pub async fn next_line(&mut self) -> io::Result<Option<String>> {
        loop {
            let available = self.inner.fill_buf().await?;
            if available.is_empty() {
                return Ok(None);
            }
            let (used, done) = match available.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (available.len(), false),
            };
            if self.buf.len() < MAX_INCOMING {
                let room = MAX_INCOMING - self.buf.len();
                self.buf.extend_from_slice(&available[..used.min(room)]);
            }
            self.inner.consume(used);
            if done {
                while matches!(self.buf.last(), Some(b'\n' | b'\r')) {
                    self.buf.pop();
                }
                let line = text::decode_line(&self.buf);
                self.buf.clear();
                if line.is_empty() {
                    continue;
                }
                return Ok(Some(line));
            }
        }
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
