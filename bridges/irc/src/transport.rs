//! Bytes to and from an IRC server: TCP (TCP_NODELAY), optional verified TLS, and line
//! framing that decodes each line as UTF-8 or, failing that, Latin-1.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf};
use tokio::net::TcpStream;

use crate::settings::NetworkSettings;
use crate::text;

/// Longest line we accept from a server; longer ones are cut (IRCv3 tags can exceed 512).
const MAX_INCOMING: usize = 16 * 1024;

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// TCP failed.
    #[error("cannot connect to {server}:{port}: {source}")]
    Tcp {
        /// Host.
        server: String,
        /// Port.
        port: u16,
        /// Cause.
        source: io::Error,
    },
    /// TLS set-up or handshake failed (an unverifiable certificate included).
    #[error("TLS with {server}:{port} failed: {source}")]
    Tls {
        /// Host.
        server: String,
        /// Port.
        port: u16,
        /// Cause.
        source: io::Error,
    },
}

/// A plain or TLS stream.
pub enum Stream {
    /// Plain TCP, where the configuration says so.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// Connects to `server` with `settings`.
pub async fn connect(server: &str, settings: &NetworkSettings) -> Result<Stream, ConnectError> {
    let port = settings.port;
    let tcp = TcpStream::connect((server, port))
        .await
        .map_err(|source| ConnectError::Tcp { server: server.to_owned(), port, source })?;
    // Chat lines are small: never wait for Nagle (see HARNESS.md's latency pitfall).
    let _ = tcp.set_nodelay(true);
    if !settings.tls {
        return Ok(Stream::Plain(tcp));
    }
    let tls_error = |source| ConnectError::Tls { server: server.to_owned(), port, source };
    let config = tls_config(settings).map_err(tls_error)?;
    let name = rustls::pki_types::ServerName::try_from(server.to_owned())
        .map_err(|e| tls_error(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(tls_error)?;
    Ok(Stream::Tls(Box::new(stream)))
}

/// webpki roots, plus the network's own CA file if any. Verification is never off.
fn tls_config(settings: &NetworkSettings) -> io::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = &settings.ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| io::Error::new(e.kind(), format!("reading CA file {}: {e}", path.display())))?;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            roots
                .add(cert?)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("CA file {}: {e}", path.display())))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| io::Error::other(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
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
