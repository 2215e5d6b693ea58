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

/// How big and how deep one stanza may be: past either, the rest of it is skipped as it
/// is read (never held), and the stanza comes out as [`StreamEvent::TooLarge`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StanzaLimits {
    /// Bytes of one stanza as read from the wire.
    pub bytes: usize,
    /// Elements nested inside one stanza, the stanza itself counted.
    pub depth: usize,
}

impl Default for StanzaLimits {
    /// 1 MiB and 32 levels: far beyond any legitimate stanza (Prosody's own limit for
    /// clients is 256 KiB; a forwarded message in an archive result nests about 8 deep).
    fn default() -> Self {
        StanzaLimits { bytes: 1024 * 1024, depth: 32 }
    }
}

/// What the peer sent, one piece at a time.
#[derive(Debug)]
pub enum StreamEvent {
    /// The opening `<stream:stream>` tag, with its attributes (`id`, `from`, ...).
    Header(Element),
    /// One complete top-level element: a stanza, `<handshake/>`, `<stream:error/>`, ...
    Stanza(Element),
    /// A stanza past [`StanzaLimits`]: its top element with the attributes it had (its
    /// children are dropped), and which limit it passed. The stream goes on.
    TooLarge(Element, String),
    /// A stanza whose XML is well-formed but not namespace-well-formed (an element or
    /// attribute prefix it never declares), skipped whole: its top element's head when
    /// that could be read (else an element named `unknown` with no address), and why. The
    /// stream goes on. Prosody and ejabberd refuse such XML from their clients (ejabberd
    /// 23: `not-well-formed`, "unbound prefix"); a server that relays it must not cost
    /// every user the component's connection.
    Unreadable(Element, String),
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
    /// How big and deep a stanza may be.
    limits: StanzaLimits,
    /// Bytes of the stanza being read so far.
    stanza_bytes: usize,
    /// Whether the builder has an element head open (its attributes being read).
    in_head: bool,
    /// While skipping the rest of a stanza (past the limits, or unreadable): how many of
    /// its elements are still open, and the event to hand out at its end.
    skipping: Option<(usize, StreamEvent)>,
    /// The events of the stream's header, to rebuild the tree builder from after it refused
    /// an element's head (it is left with the namespaces of an element it did not build).
    header_events: Vec<RawEvent>,
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
            limits: StanzaLimits::default(),
            stanza_bytes: 0,
            in_head: false,
            skipping: None,
            header_events: Vec::new(),
        }
    }

    /// The same reader with other limits.
    #[must_use]
    pub fn with_limits(mut self, limits: StanzaLimits) -> Self {
        self.limits = limits;
        self
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
            if let Some((open, _)) = &mut self.skipping {
                match event {
                    RawEvent::ElementHeadOpen(..) => *open += 1,
                    RawEvent::ElementFoot(_) => *open -= 1,
                    _ => {}
                }
                if *open == 0 {
                    if let Some((_, skipped)) = self.skipping.take() {
                        return Ok(skipped);
                    }
                }
                continue;
            }
            let depth = self.builder.depth();
            let opens = matches!(event, RawEvent::ElementHeadOpen(..));
            // Within a stanza: its own head (read while the builder is still at the
            // stream's depth), and everything below it.
            if depth >= 2 || (depth == 1 && (opens || self.in_head)) {
                if depth == 1 && opens {
                    self.stanza_bytes = 0;
                }
                self.stanza_bytes += event.metrics().len();
                let reason = if self.stanza_bytes > self.limits.bytes {
                    Some(format!("larger than {} bytes", self.limits.bytes))
                } else if opens && depth > self.limits.depth {
                    Some(format!("nested deeper than {} elements", self.limits.depth))
                } else {
                    None
                };
                if let Some(reason) = reason {
                    let closes = matches!(event, RawEvent::ElementFoot(_));
                    if let Some(stanza) = self.start_skipping(opens, closes, reason) {
                        return Ok(stanza);
                    }
                    continue;
                }
            }
            self.in_head = match event {
                RawEvent::ElementHeadOpen(..) => true,
                RawEvent::ElementHeadClose(_) => false,
                _ => self.in_head,
            };
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
            if !self.header_seen && depth == 0 {
                self.header_events.push(event.clone());
            }
            if let Err(error) = self.builder.process_event(event) {
                // Only an element's head fails (an undeclared prefix). The stream's own
                // cannot be read past; a stanza's is skipped whole, the stream goes on.
                if depth == 0 {
                    return Err(error.into());
                }
                self.in_head = false;
                let reason = match error {
                    minidom::Error::MissingNamespace => "it uses a namespace prefix it does not declare".to_owned(),
                    other => other.to_string(),
                };
                tracing::warn!(%reason, "a stanza that could not be read was skipped");
                // The refused element is still open in the input, and those above it.
                if let Some(skipped) = self.skip(depth, true, |stanza| StreamEvent::Unreadable(stanza, reason)) {
                    return Ok(skipped);
                }
                continue;
            }
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

impl<R> StanzaReader<R> {
    /// Drops what the builder holds of the stanza being read, keeping its top element's
    /// head for the error reply, and skips the rest of it as it comes. The event that
    /// passed the limit (not given to the builder) `opened` or `closed` an element. The
    /// stanza, if that event was its end.
    fn start_skipping(&mut self, opened: bool, closed: bool, reason: String) -> Option<StreamEvent> {
        // Completes the head being read, for its attributes. Refused (an undeclared
        // prefix), that element was not built and is still open in the input.
        let unbuilt = self.in_head && self.builder.process_event(RawEvent::ElementHeadClose(zero_metrics())).is_err();
        self.in_head = false;
        // Elements of the stanza still open in the input, after the event.
        let open = (self.builder.depth().saturating_sub(1) + usize::from(unbuilt) + usize::from(opened)).saturating_sub(usize::from(closed));
        tracing::warn!(%reason, "a stanza past the limits was skipped");
        self.skip(open, unbuilt, |stanza| StreamEvent::TooLarge(stanza, reason))
    }

    /// Takes the stanza being read out of the builder (its top element's head only, or an
    /// element named `unknown` if even that was not built) and skips the `open` elements
    /// of it still open in the input; `refused`: the builder refused a head, and is
    /// rebuilt from the stream's header. What `skipped` makes of the stanza, at once if
    /// nothing is left to skip.
    fn skip(&mut self, open: usize, refused: bool, skipped: impl FnOnce(Element) -> StreamEvent) -> Option<StreamEvent> {
        while self.builder.depth() > 1 {
            let _ = self.builder.process_event(RawEvent::ElementFoot(zero_metrics()));
        }
        let mut stanza = self.builder.unshift_child().unwrap_or_else(|| Element::bare("unknown", "jabber:component:accept"));
        stanza.take_nodes();
        if refused {
            // Its namespaces stack keeps a frame for the element it refused, which the
            // next stanzas would resolve their prefixes against.
            self.builder = TreeBuilder::new();
            for event in &self.header_events {
                let _ = self.builder.process_event(event.clone());
            }
        }
        let skipped = skipped(stanza);
        if open == 0 {
            // The event was the stanza's end: nothing to skip.
            return Some(skipped);
        }
        self.skipping = Some((open, skipped));
        None
    }
}

/// Metrics for an event made up here (not read from the input).
fn zero_metrics() -> rxml::parser::EventMetrics {
    rxml::parser::EventMetrics::new(0)
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
        events_within(input, StanzaLimits::default()).await
    }

    async fn events_within(input: &str, limits: StanzaLimits) -> Vec<String> {
        let mut reader = StanzaReader::new(input.as_bytes()).with_limits(limits);
        let mut out = Vec::new();
        loop {
            match reader.next().await {
                Ok(StreamEvent::Header(h)) => out.push(format!("header id={:?}", h.attr("id"))),
                Ok(StreamEvent::Stanza(s)) => {
                    out.push(format!("{} {} {:?}", s.name(), s.ns(), s.attr("to")))
                }
                Ok(StreamEvent::TooLarge(s, reason)) => {
                    assert!(s.children().next().is_none() && s.texts().next().is_none(), "content kept: {s:?}");
                    out.push(format!("too large {} {:?}: {reason}", s.name(), s.attr("id")))
                }
                Ok(StreamEvent::Unreadable(s, reason)) => {
                    assert!(s.children().next().is_none() && s.texts().next().is_none(), "content kept: {s:?}");
                    out.push(format!("unreadable {} {:?}: {reason}", s.name(), s.attr("id")))
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

    const HEADER: &str = "<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams' id='s1'>";

    #[tokio::test]
    async fn a_stanza_with_an_undeclared_prefix_is_skipped_and_the_stream_goes_on() {
        // Well-formed XML a server may relay as it came (ejabberd does not check prefixes).
        let input = format!(
            "{HEADER}<message to='a@b' id='top' p:x='1'><body>one</body><body>two</body></message>\
             <message to='a@b' id='ok1'><body>hi</body></message>\
             <message to='a@b' id='nested' xmlns:q='urn:q'><x xmlns='urn:x'><y p:z='1'><w/></y>text</x><body>b</body></message>\
             <presence to='a@b' id='ok2'/>\
             <p:iq to='a@b' id='element'><ping xmlns='urn:xmpp:ping'/></p:iq>\
             <iq to='a@b' id='ok3' type='get'><q:ping/></iq></stream:stream>"
        );
        assert_eq!(
            events(&input).await,
            [
                "header id=Some(\"s1\")",
                "unreadable unknown None: it uses a namespace prefix it does not declare",
                "message jabber:component:accept Some(\"a@b\")",
                "unreadable message Some(\"nested\"): it uses a namespace prefix it does not declare",
                "presence jabber:component:accept Some(\"a@b\")",
                "unreadable unknown None: it uses a namespace prefix it does not declare",
                // `q` was declared by the skipped stanza only: nothing of it is left.
                "unreadable iq Some(\"ok3\"): it uses a namespace prefix it does not declare",
                "end",
            ]
        );
    }

    #[tokio::test]
    async fn a_stanza_past_the_size_limit_with_an_undeclared_prefix_is_skipped_whole() {
        let limits = StanzaLimits { bytes: 200, depth: 32 };
        let big = "x".repeat(300);
        let input = format!(
            "{HEADER}<iq to='a@b' id='bad' p:x='1' note='{big}'><ping xmlns='urn:xmpp:ping'/><x/></iq>\
             <iq to='a@b' id='big-prefixed' p:note='{big}'/>\
             <presence to='a@b' id='after'/></stream:stream>"
        );
        assert_eq!(
            events_within(&input, limits).await,
            [
                "header id=Some(\"s1\")",
                // The head could not be built: nobody to answer.
                "too large unknown None: larger than 200 bytes",
                // The attribute that passed the limit was not read: the head was.
                "too large iq Some(\"big-prefixed\"): larger than 200 bytes",
                "presence jabber:component:accept Some(\"a@b\")",
                "end",
            ]
        );
    }

    #[tokio::test]
    async fn a_stanza_past_the_size_limit_is_skipped_and_the_next_one_arrives() {
        let limits = StanzaLimits { bytes: 200, depth: 32 };
        let big = "x".repeat(300);
        let input = format!(
            "{HEADER}<message to='a@b' id='big'><body>{big}</body><body>{big}</body></message>\
             <message to='a@b' id='small'><body>hi</body></message>\
             <iq to='a@b' id='bigattr' type='get' note='{big}'><ping xmlns='urn:xmpp:ping'/></iq>\
             <presence to='a@b' id='after'/></stream:stream>"
        );
        assert_eq!(
            events_within(&input, limits).await,
            [
                "header id=Some(\"s1\")",
                "too large message Some(\"big\"): larger than 200 bytes",
                "message jabber:component:accept Some(\"a@b\")",
                "too large iq Some(\"bigattr\"): larger than 200 bytes",
                "presence jabber:component:accept Some(\"a@b\")",
                "end",
            ]
        );
    }

    #[tokio::test]
    async fn a_stanza_nested_past_the_depth_limit_is_skipped_and_the_next_one_arrives() {
        let limits = StanzaLimits { bytes: 1 << 20, depth: 4 };
        let deep = format!("{}{}", "<a>".repeat(50), "</a>".repeat(50));
        let just = "<a><a><a></a></a></a>";
        let input = format!(
            "{HEADER}<message to='a@b' id='deep'>{deep}</message><message to='a@b' id='four'>{just}</message>\
             <message to='a@b' id='ending'><a><a><a><a/></a></a></a></message></stream:stream>"
        );
        assert_eq!(
            events_within(&input, limits).await,
            [
                "header id=Some(\"s1\")",
                "too large message Some(\"deep\"): nested deeper than 4 elements",
                "message jabber:component:accept Some(\"a@b\")",
                "too large message Some(\"ending\"): nested deeper than 4 elements",
                "end",
            ]
        );
    }

    #[tokio::test]
    async fn a_stanza_that_passes_the_limit_on_its_last_byte_is_reported_once() {
        let stanza = "<message to='a@b' id='edge'><body>hi</body></message>";
        // Everything but the closing tag fits.
        let limits = StanzaLimits { bytes: stanza.len() - 1, depth: 32 };
        let input = format!("{HEADER}{stanza}<presence to='a@b'/></stream:stream>");
        assert_eq!(
            events_within(&input, limits).await,
            [
                "header id=Some(\"s1\")".to_owned(),
                format!("too large message Some(\"edge\"): larger than {} bytes", limits.bytes),
                "presence jabber:component:accept Some(\"a@b\")".to_owned(),
                "end".to_owned(),
            ]
        );
    }

    /// Well-formed XML whose element and attribute names may carry the prefixes `p` and
    /// `q`, declared on some elements and not on others: namespace-well-formed or not.
    fn prefixed_xml() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let prefix = || prop_oneof![Just(""), Just("p:"), Just("q:")];
        let declared = prop_oneof![Just(""), Just(" xmlns:p='urn:p'"), Just(" xmlns:q='urn:q'"), Just(" xmlns='urn:d'")];
        let head = (prefix(), declared, proptest::collection::vec(prefix(), 0..3));
        let leaf = head.clone().prop_map(|(prefix, declared, attrs)| element(prefix, declared, &attrs, ""));
        leaf.prop_recursive(4, 24, 4, move |inner| {
            (head.clone(), proptest::collection::vec(inner, 0..4)).prop_map(|((prefix, declared, attrs), children)| element(prefix, declared, &attrs, &children.concat()))
        })
    }

    /// `<{prefix}e{declared} {attrs[i]}a{i}='v'>{content}</{prefix}e>`
    fn element(prefix: &str, declared: &str, attrs: &[&str], content: &str) -> String {
        let attrs: String = attrs.iter().enumerate().map(|(i, prefix)| format!(" {prefix}a{i}='v'")).collect();
        format!("<{prefix}e{declared}{attrs}>{content}</{prefix}e>")
    }

    proptest::proptest! {
        /// Stanzas with prefixes declared or not, under a size limit that cuts some of them
        /// anywhere: each is handed out, skipped as too large or as unreadable, and the
        /// stream goes on to the next, read in the stream's namespace.
        #[test]
        fn prop_undeclared_prefixes_never_end_the_stream(stanzas in proptest::collection::vec(prefixed_xml(), 1..6), bytes in 40usize..400) {
            let input = format!("{HEADER}{}<presence to='a@b' id='last'/></stream:stream>", stanzas.concat());
            let mut reader = StanzaReader::new(input.as_bytes()).with_limits(StanzaLimits { bytes, depth: 32 });
            let mut last = None;
            futures::executor::block_on(async {
                loop {
                    match reader.next().await {
                        Ok(StreamEvent::End) => break,
                        Ok(StreamEvent::Stanza(stanza)) => last = Some(stanza),
                        Ok(_) => last = None,
                        Err(error) => panic!("{error} in {input}"),
                    }
                }
            });
            let last = last.expect("the last stanza handed out");
            proptest::prop_assert_eq!(last.attr("id"), Some("last"));
            proptest::prop_assert!(last.is("presence", "jabber:component:accept"), "{:?}", last);
        }

        /// Any bytes after a stream header: the reader never panics and never hands out
        /// more than the limits let through (the fuzz target `xml_stream` goes further).
        #[test]
        fn prop_any_bytes_are_read_without_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048)) {
            let input = [HEADER.as_bytes(), &bytes].concat();
            let limits = StanzaLimits { bytes: 512, depth: 4 };
            let mut reader = StanzaReader::new(input.as_slice()).with_limits(limits);
            futures::executor::block_on(async {
                for _ in 0..100 {
                    match reader.next().await {
                        Ok(StreamEvent::Stanza(stanza)) => assert!(to_bytes(&stanza).len() <= 4 * limits.bytes),
                        Ok(StreamEvent::Header(_) | StreamEvent::TooLarge(..) | StreamEvent::Unreadable(..)) => {}
                        Ok(StreamEvent::End) | Err(_) => break,
                    }
                }
            });
        }
    }
}
