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

/// The client namespace: jabberd2's router forwards the stanzas of its users with it
/// declared on each one, over the component stream.
pub const NS_CLIENT: &str = "jabber:client";

/// `stanza` in the component namespace if it came in `jabber:client` (jabberd2), with its
/// children of that namespace (`<body/>`, `<error/>`, ...) likewise; elements of other
/// namespaces, and what is inside them (a `jabber:client` message forwarded in a
/// XEP-0297 `<forwarded/>`), are kept as they are. Anything else is returned unchanged.
pub fn into_component_namespace(stanza: Element) -> Element {
    if !stanza.has_ns(NS_CLIENT) {
        return stanza;
    }
    renamespaced(stanza)
}

fn renamespaced(mut element: Element) -> Element {
    let mut moved = Element::bare(element.name(), NS_COMPONENT);
    *moved.attrs_mut() = std::mem::take(element.attrs_mut());
    for node in element.take_nodes() {
        match node {
            minidom::Node::Element(child) if child.has_ns(NS_CLIENT) => {
                moved.append_child(renamespaced(child));
            }
            other => moved.append_node(other),
        }
    }
    moved
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

    // jabberd2's router answers a header with version='1.0' with <stream:features/> (its
    // SASL mechanisms) before the handshake's answer: nothing to act on, skipped.
    let mut event = next(&mut reader, server).await?;
    while matches!(&event, StreamEvent::Stanza(element) if element.is("features", NS_STREAM)) {
        event = next(&mut reader, server).await?;
    }
    match event {
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

    /// A server on a free port that answers the first connection's stream header with
    /// `header` and its handshake with `reply`; returns its address.
    async fn scripted_server(header: &'static str, reply: &'static str) -> String {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut seen = Vec::new();
            let mut buffer = [0u8; 1024];
            let mut answered_header = false;
            loop {
                let n = socket.read(&mut buffer).await.unwrap();
                if n == 0 {
                    return;
                }
                seen.extend_from_slice(&buffer[..n]);
                let text = String::from_utf8_lossy(&seen).into_owned();
                if !answered_header && text.contains("<stream:stream") {
                    socket.write_all(header.as_bytes()).await.unwrap();
                    answered_header = true;
                }
                if text.contains("</handshake>") {
                    socket.write_all(reply.as_bytes()).await.unwrap();
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    return;
                }
            }
        });
        address
    }

    const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' \
        xmlns:stream='http://etherx.jabber.org/streams' id='s1' from='gw.localhost' version='1.0'>";

    #[tokio::test]
    async fn stream_features_before_the_handshake_answer_are_skipped() {
        // What jabberd2's router sends: its SASL features, then the handshake's answer.
        let server = scripted_server(
            HEADER,
            "<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>\
             <mechanism>DIGEST-MD5</mechanism></mechanisms></stream:features><handshake/>",
        )
        .await;
        let connected =
            connect(&server, "gw.localhost", &Secret::new("secret"), Duration::from_secs(5), StanzaLimits::default()).await;
        assert!(connected.is_ok(), "{:?}", connected.err());
    }

    #[tokio::test]
    async fn stream_features_then_a_refusal_is_still_a_refusal() {
        let server = scripted_server(
            HEADER,
            "<stream:features/><stream:error><not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>",
        )
        .await;
        let refused =
            connect(&server, "gw.localhost", &Secret::new("wrong"), Duration::from_secs(5), StanzaLimits::default()).await;
        assert!(matches!(refused, Err(ConnectError::NotAuthorized { .. })), "{:?}", refused.err());
    }

    #[test]
    fn client_namespace_stanzas_are_moved_to_the_component_namespace_but_forwarded_ones_are_not() {
        let from_jabberd2: Element = "<message xmlns='jabber:client' from='a@localhost/r' to='gw.localhost' type='chat' id='1'>\
            <body>hi &amp; bye</body><active xmlns='http://jabber.org/protocol/chatstates'/>\
            <forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' to='x@y'><body>old</body></message></forwarded>\
            <error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>"
            .parse()
            .unwrap();
        let moved = into_component_namespace(from_jabberd2);
        let expected: Element = "<message xmlns='jabber:component:accept' from='a@localhost/r' to='gw.localhost' type='chat' id='1'>\
            <body>hi &amp; bye</body><active xmlns='http://jabber.org/protocol/chatstates'/>\
            <forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' to='x@y'><body>old</body></message></forwarded>\
            <error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>"
            .parse()
            .unwrap();
        assert_eq!(moved, expected);
        assert_eq!(moved.get_child("body", NS_COMPONENT).map(|b| b.text()).as_deref(), Some("hi & bye"));

        let component: Element = "<iq xmlns='jabber:component:accept' type='get' id='2'><ping xmlns='urn:xmpp:ping'/></iq>".parse().unwrap();
        assert_eq!(into_component_namespace(component.clone()), component);
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
