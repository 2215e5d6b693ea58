//! A lean XMPP client for the load: SASL PLAIN on 127.0.0.1, resource binding, then raw
//! stanzas on the gateway's own framing ([`xmpp_gateway::xml_stream`]). Unlike
//! `testkit::Client` it keeps nothing it has read (no backlog, no history), so it can
//! count hundreds of thousands of deliveries, and every wait has a deadline and fails
//! with a message instead of hanging.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use minidom::Element;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use xmpp_gateway::xml_stream::{stream_header, StanzaReader, StreamEvent};

/// The client namespace.
pub const NS_CLIENT: &str = "jabber:client";
/// The MUC namespaces.
pub const NS_MUC: &str = "http://jabber.org/protocol/muc";
pub const NS_MUC_USER: &str = "http://jabber.org/protocol/muc#user";

/// The reading half of a logged-in connection.
pub struct XmppReader {
    reader: StanzaReader<OwnedReadHalf>,
}

/// The writing half of a logged-in connection.
pub struct XmppWriter {
    writer: OwnedWriteHalf,
}

/// A logged-in XMPP connection (both halves).
pub struct XmppConn {
    /// The bound full JID.
    pub jid: String,
    pub reader: XmppReader,
    pub writer: XmppWriter,
    next_id: u64,
}

impl XmppReader {
    /// The next stanza, or an error at `deadline` or when the stream ends.
    pub async fn next(&mut self, deadline: Instant) -> Result<Element> {
        match tokio::time::timeout_at(deadline, self.reader.next()).await {
            Ok(Ok(StreamEvent::Stanza(e))) => Ok(e),
            Ok(Ok(other)) => bail!("the XMPP stream ended: {other:?}"),
            Ok(Err(e)) => bail!("the XMPP stream failed: {e}"),
            Err(_) => bail!("timed out"),
        }
    }

    /// The next stanza, `None` at `deadline`; an error when the stream ends.
    pub async fn next_until(&mut self, deadline: Instant) -> Result<Option<Element>> {
        match tokio::time::timeout_at(deadline, self.reader.next()).await {
            Ok(Ok(StreamEvent::Stanza(e))) => Ok(Some(e)),
            Ok(Ok(other)) => bail!("the XMPP stream ended: {other:?}"),
            Ok(Err(e)) => bail!("the XMPP stream failed: {e}"),
            Err(_) => Ok(None),
        }
    }

    /// Reads until a stanza matching `pred` arrives (others are dropped); fails with
    /// `what` after `within`.
    pub async fn wait_for(&mut self, what: &str, within: Duration, pred: impl Fn(&Element) -> bool) -> Result<Element> {
        let deadline = Instant::now() + within;
        loop {
            let e = self.next(deadline).await.with_context(|| format!("waiting {within:?} for {what}"))?;
            if pred(&e) {
                return Ok(e);
            }
        }
    }
}

impl XmppWriter {
    /// Sends raw XML.
    pub async fn send(&mut self, xml: &str) -> Result<()> {
        self.writer.write_all(xml.as_bytes()).await.context("writing to the XMPP server")
    }
}

impl XmppConn {
    /// Connects to 127.0.0.1:`port` and logs in as `user@host` (SASL PLAIN), binds a
    /// resource, fetches the roster and sends initial presence, as a real client does.
    pub async fn connect(port: u16, user: &str, host: &str, password: &str) -> Result<XmppConn> {
        let within = Duration::from_secs(30);
        let deadline = Instant::now() + within;
        let stream = tokio::time::timeout_at(deadline, TcpStream::connect(("127.0.0.1", port)))
            .await
            .map_err(|_| anyhow!("connecting to 127.0.0.1:{port} timed out"))?
            .with_context(|| format!("connecting to XMPP on 127.0.0.1:{port}"))?;
        stream.set_nodelay(true)?;
        let (read, writer) = stream.into_split();
        let mut writer = XmppWriter { writer };
        let mut reader = XmppReader { reader: StanzaReader::new(read) };
        open(&mut reader, &mut writer, host, deadline).await?;
        let features = reader.next(deadline).await.context("stream features")?;
        if !features.children().any(|m| m.name() == "mechanisms") {
            bail!("no SASL mechanisms offered: {features:?}");
        }
        writer
            .send(&format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{}</auth>", base64(&format!("\0{user}\0{password}"))))
            .await?;
        let outcome = reader.next(deadline).await.context("SASL outcome")?;
        if outcome.name() != "success" {
            bail!("login of {user}@{host} failed: {outcome:?}");
        }
        // A new stream after SASL; the server sends nothing before our new header.
        let mut reader = XmppReader { reader: StanzaReader::new(reader.reader.into_inner()) };
        open(&mut reader, &mut writer, host, deadline).await?;
        let _features = reader.next(deadline).await.context("stream features after SASL")?;
        let mut conn = XmppConn { jid: String::new(), reader, writer, next_id: 0 };
        let bound = conn.iq("set", None, "<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>bench</resource></bind>", within).await?;
        conn.jid = bound
            .get_child("bind", "urn:ietf:params:xml:ns:xmpp-bind")
            .and_then(|b| b.get_child("jid", "urn:ietf:params:xml:ns:xmpp-bind"))
            .map(|j| j.text())
            .ok_or_else(|| anyhow!("bind failed: {bound:?}"))?;
        conn.iq("set", None, "<session xmlns='urn:ietf:params:xml:ns:xmpp-session'/>", within).await?;
        conn.iq("get", None, "<query xmlns='jabber:iq:roster'/>", within).await?;
        conn.writer.send("<presence/>").await?;
        Ok(conn)
    }

    /// Sends an iq with `payload` and waits for its reply (result, or an error stanza
    /// as `Err`). Stanzas read meanwhile are dropped.
    pub async fn iq(&mut self, kind: &str, to: Option<&str>, payload: &str, within: Duration) -> Result<Element> {
        self.next_id += 1;
        let id = format!("b{}", self.next_id);
        let to_attr = to.map(|t| format!(" to='{t}'")).unwrap_or_default();
        self.writer.send(&format!("<iq type='{kind}' id='{id}'{to_attr}>{payload}</iq>")).await?;
        let reply = self
            .reader
            .wait_for(&format!("the reply to iq {id} to {to:?}"), within, |e| e.name() == "iq" && e.attr("id") == Some(&id))
            .await?;
        if reply.attr("type") != Some("result") {
            bail!("iq {id} to {to:?} failed: {}", String::from_utf8_lossy(&xmpp_gateway::xml_stream::to_bytes(&reply)));
        }
        Ok(reply)
    }
}

/// Sends our stream header and reads the server's.
async fn open(reader: &mut XmppReader, writer: &mut XmppWriter, host: &str, deadline: Instant) -> Result<()> {
    writer.send(&stream_header(host, NS_CLIENT)).await?;
    match tokio::time::timeout_at(deadline, reader.reader.next()).await {
        Ok(Ok(StreamEvent::Header(_))) => Ok(()),
        other => bail!("expected a stream header, got {other:?}"),
    }
}

/// Whether `stanza` is a presence carrying MUC status `code`.
pub fn has_status(stanza: &Element, code: &str) -> bool {
    stanza
        .get_child("x", NS_MUC_USER)
        .is_some_and(|x| x.children().any(|c| c.name() == "status" && c.attr("code") == Some(code)))
}

/// The `<body/>` text of a message.
pub fn body(stanza: &Element) -> Option<String> {
    stanza.get_child("body", NS_CLIENT).map(|b| b.text())
}

/// Standard base64 (for SASL PLAIN).
fn base64(input: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.as_bytes().chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            out.push(if i <= chunk.len() { ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char } else { '=' });
        }
    }
    out
}
