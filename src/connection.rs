//! Opening one XEP-0114 connection: TCP, stream header, SHA-1 handshake.

use std::time::Duration;

use bridge_core::Secret;
use minidom::Element;
use sha1::{Digest, Sha1};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use crate::xml_stream::{self, StanzaLimits, StanzaReader, StreamError, StreamEvent, NS_STREAM};

/// The XEP-0114 namespace: the default namespace of a component stream.
pub const NS_COMPONENT: &str = "jabber:component:accept";

/// The halves of an authenticated component stream.
pub struct Connection {
    /// Stanzas from the server.
    pub reader: StanzaReader<OwnedReadHalf>,
    /// Bytes to the server; owned by the writer task once connected.
    pub writer: OwnedWriteHalf,
}

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The server refused the secret: retrying will not help.
    #[error("the server refused the component secret for {jid} ({detail}); check component.secret and the server's Component block")]
    NotAuthorized {
        /// The component domain we tried to be.
        jid: String,
        /// The server's words.
        detail: String,
    },
    /// TCP failed (server down, refused, reset): worth retrying.
    #[error("connecting to {server}: {source}")]
    Io {
        /// `host:port` we dialled.
        server: String,
        /// The socket error.
        source: std::io::Error,
    },
    /// The server answered with something other than a handshake: worth retrying.
    #[error("handshake with {server}: {detail}")]
    Handshake {
        /// `host:port` we dialled.
        server: String,
        /// What went wrong.
        detail: String,
    },
}

impl ConnectError {
    /// Whether trying again later can succeed.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, ConnectError::NotAuthorized { .. })
    }
}

/// The handshake digest of XEP-0114 §3: hex SHA-1 of the stream id followed by the secret.
pub fn handshake_digest(stream_id: &str, secret: &Secret) -> String {
    let mut hasher = Sha1::new();
    hasher.update(stream_id.as_bytes());
    hasher.update(secret.expose().as_bytes());
    hex::encode(hasher.finalize())
}

/// Connects to `server` as the component `jid`, within `timeout`; the stanzas it sends
/// are read within `limits`.
pub async fn connect(
    server: &str,
    jid: &str,
    secret: &Secret,
    timeout: Duration,
    limits: StanzaLimits,
) -> Result<Connection, ConnectError> {
    match tokio::time::timeout(timeout, connect_inner(server, jid, secret, limits)).await {
        Ok(result) => result,
        Err(_) => Err(ConnectError::Handshake {
            server: server.to_owned(),
            detail: format!("no answer within {timeout:?}"),
        }),
    }
}

async fn connect_inner(server: &str, jid: &str, secret: &Secret, limits: StanzaLimits) -> Result<Connection, ConnectError> {
    let io_error = |source| ConnectError::Io { server: server.to_owned(), source };
    let handshake_error = |detail: String| ConnectError::Handshake { server: server.to_owned(), detail };

    let stream = TcpStream::connect(server).await.map_err(io_error)?;
    // Stanzas are small and latency matters: never wait for Nagle.
    stream.set_nodelay(true).map_err(io_error)?;
    let (read, mut writer) = stream.into_split();
    let mut reader = StanzaReader::new(read).with_limits(limits);

    writer
        .write_all(xml_stream::stream_header(jid, NS_COMPONENT).as_bytes())
        .await
        .map_err(io_error)?;
    let stream_id = match next(&mut reader, server).await? {
        StreamEvent::Header(header) => header
            .attr("id")
            .map(str::to_owned)
            .ok_or_else(|| handshake_error("the stream header has no id".into()))?,
        other => return Err(handshake_error(format!("expected a stream header, got {other:?}"))),
    };
    let handshake = format!("<handshake>{}</handshake>", handshake_digest(&stream_id, secret));
    writer.write_all(handshake.as_bytes()).await.map_err(io_error)?;

    match next(&mut reader, server).await? {
        StreamEvent::Stanza(element) if element.name() == "handshake" => {
            Ok(Connection { reader, writer })
        }
        StreamEvent::Stanza(element) if element.is("error", NS_STREAM) => {
            let condition = stream_error_condition(&element);
            if condition == "not-authorized" {
                Err(ConnectError::NotAuthorized { jid: jid.to_owned(), detail: condition })
            } else {
                Err(handshake_error(format!("stream error {condition}")))
            }
        }
        StreamEvent::End => {
            Err(handshake_error("the server closed the stream during the handshake".into()))
        }
        other => Err(handshake_error(format!("unexpected {other:?}"))),
    }
}

async fn next(
    reader: &mut StanzaReader<OwnedReadHalf>,
    server: &str,
) -> Result<StreamEvent, ConnectError> {
    reader.next().await.map_err(|error| match error {
        StreamError::Read(source) => ConnectError::Io { server: server.to_owned(), source },
        other => ConnectError::Handshake { server: server.to_owned(), detail: other.to_string() },
    })
}

/// The defined condition of a `<stream:error/>`, plus its text if any.
pub fn stream_error_condition(error: &Element) -> String {
    let condition = error
        .children()
        .find(|c| c.ns() == "urn:ietf:params:xml:ns:xmpp-streams" && c.name() != "text")
        .map(|c| c.name().to_owned())
        .unwrap_or_else(|| "undefined-condition".into());
    match error.get_child("text", "urn:ietf:params:xml:ns:xmpp-streams") {
        Some(text) if condition != "not-authorized" => format!("{condition}: {}", text.text()),
        _ => condition,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_matches_xep_0114_example() {
        // XEP-0114 §3, example 3: id 3BF96D32, secret "secret".
        assert_eq!(
            handshake_digest("3BF96D32", &Secret::new("secret")),
            hex::encode(Sha1::digest(b"3BF96D32secret"))
        );
        assert_eq!(handshake_digest("3BF96D32", &Secret::new("secret")).len(), 40);
    }

    #[test]
    fn reads_stream_error_conditions() {
        let e: Element = "<stream:error xmlns:stream='http://etherx.jabber.org/streams'>\
            <not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>"
            .parse()
            .unwrap();
        assert_eq!(stream_error_condition(&e), "not-authorized");
        let e: Element = "<stream:error xmlns:stream='http://etherx.jabber.org/streams'>\
            <conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>\
            <text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>already connected</text></stream:error>"
            .parse()
            .unwrap();
        assert_eq!(stream_error_condition(&e), "conflict: already connected");
    }
}
