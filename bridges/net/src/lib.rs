//! TCP and TLS connections for the bridges: only where the network policy allows
//! ([`Reach`]: a host a user named must be on the public Internet), TCP_NODELAY always,
//! TLS always verified (webpki roots plus an optional extra CA file), and a [`Stream`]
//! that is either, so that a plain connection can be upgraded in place (STARTTLS).

// Protocol code reads what remote servers send: no indexing that can panic on it.
#![cfg_attr(not(test), warn(clippy::indexing_slicing))]

mod reach;

pub use reach::{non_global, Reach};

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The network policy forbids it: no connection was attempted. The text names the
    /// rule, never what a connection would have found (no port-scan oracle).
    #[error("{host} is not a server this gateway connects to: it resolves to {rule}, and only public addresses are allowed for servers the administrator did not configure")]
    Refused {
        /// Host.
        host: String,
        /// The rule, as [`non_global`] names it.
        rule: &'static str,
    },
    /// The host name does not resolve.
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        /// Host.
        host: String,
        /// Cause.
        source: io::Error,
    },
    /// TCP failed.
    #[error("cannot connect to {host}:{port}: {source}")]
    Tcp {
        /// Host.
        host: String,
        /// Port.
        port: u16,
        /// Cause.
        source: io::Error,
    },
    /// TLS set-up or handshake failed (an unverifiable certificate included).
    #[error("TLS with {host}:{port} failed: {source}")]
    Tls {
        /// Host.
        host: String,
        /// Port.
        port: u16,
        /// Cause.
        source: io::Error,
    },
}

/// A plain or TLS stream.
pub enum Stream {
    /// Plain TCP, where the configuration says so (or before STARTTLS).
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stream::Plain(_) => "Stream::Plain",
            Stream::Tls(_) => "Stream::Tls",
        })
    }
}

/// The addresses of `host:port` that `reach` allows: resolved once, here. With
/// [`Reach::PublicOnly`], a host with any non-global address is refused as a whole (a
/// name that also points inside is not one to trust with the others).
pub async fn resolve(host: &str, port: u16, reach: Reach) -> Result<Vec<SocketAddr>, ConnectError> {
    let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|source| ConnectError::Resolve { host: host.to_owned(), source })?
        .collect();
    if reach == Reach::PublicOnly {
        if let Some(rule) = addresses.iter().find_map(|address| non_global(address.ip())) {
            return Err(ConnectError::Refused { host: host.to_owned(), rule });
        }
    }
    Ok(addresses)
}

/// Opens TCP to `host:port` where `reach` allows, to an address checked by [`resolve`]
/// (no second lookup), with TCP_NODELAY (small chat lines must not wait for Nagle).
pub async fn connect_tcp(host: &str, port: u16, reach: Reach) -> Result<Stream, ConnectError> {
    let addresses = resolve(host, port, reach).await?;
    let tcp_error = |source| ConnectError::Tcp { host: host.to_owned(), port, source };
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the name has no address");
    for address in addresses {
        match TcpStream::connect(address).await {
            Ok(tcp) => {
                let _ = tcp.set_nodelay(true);
                return Ok(Stream::Plain(tcp));
            }
            Err(error) => last = error,
        }
    }
    Err(tcp_error(last))
}

/// Opens TCP then TLS to `host:port` where `reach` allows, verifying the certificate
/// for `host`.
pub async fn connect_tls(host: &str, port: u16, reach: Reach, ca_file: Option<&Path>) -> Result<Stream, ConnectError> {
    connect_tcp(host, port, reach).await?.upgrade(host, port, ca_file).await
}

impl Stream {
    /// Starts TLS on a plain stream (implicit TLS right after connecting, or after a
    /// STARTTLS exchange); a TLS stream is returned as it is.
    pub async fn upgrade(self, host: &str, port: u16, ca_file: Option<&Path>) -> Result<Stream, ConnectError> {
        let tcp = match self {
            Stream::Plain(tcp) => tcp,
            tls => return Ok(tls),
        };
        let tls_error = |source| ConnectError::Tls { host: host.to_owned(), port, source };
        let config = client_config(ca_file).map_err(tls_error)?;
        let name = rustls::pki_types::ServerName::try_from(host.to_owned())
            .map_err(|e| tls_error(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
        let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(tls_error)?;
        Ok(Stream::Tls(Box::new(stream)))
    }
}

/// The TLS client configuration: webpki roots plus the certificates of `ca_file`.
/// Verification is never turned off.
pub fn client_config(ca_file: Option<&Path>) -> io::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
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
