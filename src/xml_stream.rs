//! XML stream framing: bytes in, one [`Element`] per top-level stanza out; elements in,
//! bytes out.
//!
//! This is our own reader on rxml + minidom rather than tokio-xmpp's `Component`, because
//! that one ends the whole stream when a single stanza fails to parse into an
//! xmpp-parsers type (tokio-xmpp 6: `Component` yields a parse error, then nothing). Here the stream only ends when the XML itself is
//! broken (which a server never sends) or the socket closes; what a stanza *means* is
//! decided later, stanza by stanza, so one bad stanza costs nobody their session.
//!
//! The same framing serves the component connection and the test clients.

use minidom::tree_builder::TreeBuilder;
use minidom::Element;
use rxml::{AsyncRawReader, RawEvent};
use tokio::io::{AsyncRead, BufReader};

/// Namespace of the `<stream:stream>` wrapper.
pub const NS_STREAM: &str = "http://etherx.jabber.org/streams";

/// Longest name or attribute value the parser accepts (longer text is split, not refused).
/// rxml's default of 8 KiB would let one user's oversized attribute, which the server
/// relays as it is, end the stream for everybody.
const MAX_TOKEN_LENGTH: usize = 1024 * 1024;

/// What the peer sent, one piece at a time.
#[derive(Debug)]
pub enum StreamEvent {
    /// The opening `<stream:stream>` tag, with its attributes (`id`, `from`, ...).
    Header(Element),
    /// One complete top-level element: a stanza, `<handshake/>`, `<stream:error/>`, ...
    Stanza(Element),
    /// `</stream:stream>` or the socket closed.
    End,
}

/// Why the stream cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The socket failed or the bytes were not well-formed XML (rxml reports both as I/O).
    #[error("reading the XML stream: {0}")]
    Read(#[from] std::io::Error),
    /// Well-formed XML that minidom cannot build, such as an undeclared prefix.
    #[error("building an element from the XML stream: {0}")]
    Tree(#[from] minidom::Error),
}

/// Reads an XML stream and hands out whole stanzas.
pub struct StanzaReader<R> {
    /// rxml's incremental parser over the buffered socket.
    reader: AsyncRawReader<BufReader<R>>,
    /// minidom's tree builder; it holds the stream root, and each finished stanza is taken
    /// out of the root as soon as it closes, so the root never grows.
    builder: TreeBuilder,
    /// Whether the stream header was already returned (it is returned once).
    header_seen: bool,
}

impl<R: AsyncRead + Unpin> StanzaReader<R> {
    /// Wraps the read half of a connection.
    pub fn new(read: R) -> Self {
        let options = rxml::Options {
            max_token_length: MAX_TOKEN_LENGTH,
            ..rxml::Options::default()
        };
        let parser = <rxml::RawParser as rxml::WithOptions>::with_options(options);
        StanzaReader {
            reader: AsyncRawReader::wrap(BufReader::new(read), parser),
            builder: TreeBuilder::new(),
            header_seen: false,
        }
    }

    /// Gives the socket back, to start a new stream on it (after SASL or STARTTLS). Bytes
    /// already buffered are dropped: call it only when the peer waits for us.
    pub fn into_inner(self) -> R {
        self.reader.into_inner().0.into_inner()
    }

    /// Waits for the next header, stanza or end of stream. Cancel-safe: rxml keeps its
    /// parse state across dropped futures, and the builder is only touched on whole events.
    pub async fn next(&mut self) -> Result<StreamEvent, StreamError> {
        loop {
            let Some(event) = self.reader.read().await? else {
                return Ok(StreamEvent::End);
            };
            let depth = self.builder.depth();
            let closes_header = matches!(event, RawEvent::ElementHeadClose(_)) && depth == 0;
            let closes_stanza = matches!(event, RawEvent::ElementFoot(_)) && depth == 2;
            let closes_stream = matches!(event, RawEvent::ElementFoot(_)) && depth == 1;
            // Whitespace between stanzas (keepalives) would pile up as text in the root.
            if matches!(event, RawEvent::Text(..)) && depth <= 1 {
                continue;
            }
            if closes_stream {
                return Ok(StreamEvent::End);
            }
            self.builder.process_event(event)?;
            if closes_header && !self.header_seen {
                self.header_seen = true;
                if let Some(root) = self.builder.top() {
                    return Ok(StreamEvent::Header(root.clone()));
                }
            }
            if closes_stanza {
                if let Some(stanza) = self.builder.unshift_child() {
                    return Ok(StreamEvent::Stanza(stanza));
                }
            }
        }
    }
}

/// Serialises one element for the wire.
pub fn to_bytes(element: &Element) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    append_bytes(element, &mut out);
    out
}

/// Serialises one element for the wire at the end of `out`. A stanza holding what XML 1.0
/// forbids (the encoder refuses it) is cleaned ([`crate::sanitize`]) and written again;
/// so clean stanzas, all legitimate traffic, are scanned once. Returns false, with
/// nothing added, if it still cannot be written: one bad stanza is logged and dropped,
/// and costs nobody else anything.
pub fn append_bytes(element: &Element, out: &mut Vec<u8>) -> bool {
    let start = out.len();
    let Err(refused) = crate::encode::element(element, out) else {
        return true;
    };
    out.truncate(start);
    if refused == crate::encode::Refused::Character {
        let cleaned = crate::sanitize::clean_element(element);
        tracing::debug!(name = element.name(), "characters XML forbids removed from an outgoing stanza");
        if crate::encode::element(&cleaned, out).is_ok() {
            return true;
        }
        out.truncate(start);
    }
    tracing::error!(%refused, name = element.name(), "could not serialise a stanza; dropped");
    false
}

/// The opening tag of a stream to `to` in the namespace `ns` (`jabber:component:accept` or
/// `jabber:client`), as the peer expects it: unclosed, with the `stream` prefix declared.
pub fn stream_header(to: &str, ns: &str) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='{ns}' xmlns:stream='{NS_STREAM}' to='{}' version='1.0'>",
        escape_attr(to)
    )
}

/// Escapes a string for an XML attribute value in single quotes.
fn escape_attr(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn events(input: &str) -> Vec<String> {
        let mut reader = StanzaReader::new(input.as_bytes());
        let mut out = Vec::new();
        loop {
            match reader.next().await {
                Ok(StreamEvent::Header(h)) => out.push(format!("header id={:?}", h.attr("id"))),
                Ok(StreamEvent::Stanza(s)) => {
                    out.push(format!("{} {} {:?}", s.name(), s.ns(), s.attr("to")))
                }
                Ok(StreamEvent::End) => {
                    out.push("end".into());
                    break;
                }
                Err(e) => {
                    out.push(format!("error {e}"));
                    break;
                }
            }
        }
        out
    }

    #[tokio::test]
    async fn splits_a_stream_into_header_and_stanzas() {
        let got = events(
            "<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' \
             xmlns:stream='http://etherx.jabber.org/streams' id='abc' from='gw'>\
             <handshake/>  \n <message to='a@b'><body>hi</body></message>\
             <iq type='get' id='1' to='gw'><ping xmlns='urn:xmpp:ping'/></iq></stream:stream>",
        )
        .await;
        assert_eq!(
            got,
            vec![
                "header id=Some(\"abc\")",
                "handshake jabber:component:accept None",
                "message jabber:component:accept Some(\"a@b\")",
                "iq jabber:component:accept Some(\"gw\")",
                "end",
            ]
        );
    }

    #[tokio::test]
    async fn keeps_children_namespaces_and_text() {
        let mut reader = StanzaReader::new(
            "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>\
             <message><body>a &amp; b</body><x xmlns='urn:x'/></message>"
                .as_bytes(),
        );
        assert!(matches!(reader.next().await, Ok(StreamEvent::Header(_))));
        let Ok(StreamEvent::Stanza(m)) = reader.next().await else { panic!("no stanza") };
        assert_eq!(m.get_child("body", "jabber:client").map(|b| b.text()).as_deref(), Some("a & b"));
        assert!(m.has_child("x", "urn:x"));
        // The socket closed inside the stream element: not a clean end, and no stanza.
        assert!(reader.next().await.is_err());
    }

    #[tokio::test]
    async fn broken_xml_is_an_error_not_a_panic() {
        let got = events(
            "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>\
             <message><body></message>",
        )
        .await;
        assert!(got.last().is_some_and(|l| l.starts_with("error")), "{got:?}");
    }

    #[tokio::test]
    async fn whitespace_keepalives_do_not_accumulate() {
        let mut input = String::from(
            "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>",
        );
        input.push_str(&" ".repeat(10_000));
        input.push_str("<presence/>");
        let mut reader = StanzaReader::new(input.as_bytes());
        assert!(matches!(reader.next().await, Ok(StreamEvent::Header(_))));
        assert!(matches!(reader.next().await, Ok(StreamEvent::Stanza(_))));
        assert_eq!(reader.builder.top().map(|r| r.nodes().count()), Some(0));
    }

    #[test]
    fn header_escapes_the_address() {
        let h = stream_header("a'b", "jabber:client");
        assert!(h.contains("to='a&apos;b'"));
        assert!(h.starts_with("<?xml"));
    }

    #[test]
    fn serialises_with_namespace() {
        let e: Element = "<presence xmlns='jabber:component:accept' to='u@localhost'/>"
            .parse()
            .unwrap();
        let bytes = to_bytes(&e);
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.contains("presence"), "{text}");
        assert!(text.contains("u@localhost"), "{text}");
    }

    #[test]
    fn characters_xml_forbids_never_reach_the_wire() {
        // minidom panics ("encoder driven incorrectly") on these without the sanitiser.
        let topic = Element::builder("subject", "jabber:component:accept").append("\x0304red\x03 \u{FFFF}").build();
        let message = Element::builder("message", "jabber:component:accept")
            .attr(rxml::xml_ncname!("from").into(), "#c%irc@gw/bad\x07nick")
            .append(topic)
            .build();
        let mut out = b"<previous/>".to_vec();
        assert!(append_bytes(&message, &mut out));
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("<previous/><message"), "{text}");
        assert!(text.contains("04red \u{FFFD}</subject>"), "{text}");
        assert!(text.contains("gw/badnick"), "{text}");
        // What was written parses back: the stream stays well-formed.
        let back: Element = text["<previous/>".len()..].parse().unwrap();
        assert_eq!(back.attr("from"), Some("#c%irc@gw/badnick"));
    }
}
