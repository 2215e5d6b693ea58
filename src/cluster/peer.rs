//! The peer link: how one instance hands a user's stanza to the instance that owns the
//! user.
//!
//! Any instance may receive any user's stanza (the server spreads them over the
//! connections of the shared domain), and no stanza sent through the server can be aimed
//! at one instance, so instances talk directly: one TCP connection from each instance to
//! each owner it forwards to, on the address the owner advertises in the database.
//!
//! The protocol is small and binary:
//! 1. the listener sends a fresh 32-byte nonce;
//! 2. the dialler answers with its instance id (one length byte, the id),
//!    HMAC-SHA256(component secret, [`DIALLER`] | nonce | id) and a fresh nonce of its own:
//!    only holders of the secret can hand stanzas in, as they will be served as coming
//!    from the users they name;
//! 3. the listener answers one byte, [`ACCEPTED`], and HMAC-SHA256(component secret,
//!    [`LISTENER`] | the dialler's nonce | id): the stanzas (registration forms with
//!    passwords among them) go only to a holder of the secret, not to whoever took the
//!    address the owner advertised;
//! 4. then the dialler sends frames (u32 big-endian length, one hop count byte, the
//!    stanza's XML) and the listener answers each frame, once it is handed to its router,
//!    with the count of frames taken so far (u64 big-endian).
//!
//! The link is authenticated both ways, not encrypted: instances talk over a private
//! network (README, *Running several instances*).
//!
//! Stanzas written but not acknowledged when a link breaks are handed back
//! ([`LinkFailed`]), with those still queued, so the caller can send them to the new owner
//! or answer them with an error: none is dropped without a word.

use std::collections::VecDeque;
use std::time::Duration;

use bridge_core::Secret;
use minidom::Element;
use ring::hmac;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

/// What the dialler's HMAC covers besides the nonce and the id, so that the tag means
/// nothing elsewhere.
const DIALLER: &[u8] = b"xmpp-gateway peer link v2 dialler";
/// The same for the listener's (another label: a dialler's tag sent back proves nothing).
const LISTENER: &[u8] = b"xmpp-gateway peer link v2 listener";
/// The listener's answer to a valid handshake.
const ACCEPTED: u8 = 1;
/// How long a handshake may take either way.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);

/// A stanza handed over by another instance.
#[derive(Debug)]
pub struct Forwarded {
    /// The stanza, as the server delivered it to the sending instance.
    pub stanza: Element,
    /// How many instances handed it on before us (a stale owner cache may hand it on
    /// once more; never in a loop).
    pub hops: u8,
}

/// A link that broke, with what it had not delivered.
#[derive(Debug)]
pub struct LinkFailed {
    /// The instance the link went to.
    pub peer: String,
    /// Why it broke.
    pub reason: String,
    /// Stanzas written and not acknowledged, then those still queued, in order.
    pub stanzas: Vec<(Element, u8)>,
}

/// Why the listener could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen for peer instances on {address}: {source}")]
pub struct ListenError {
    /// The configured address.
    pub address: String,
    /// Why.
    pub source: std::io::Error,
}

/// The tag of a handshake: proves one side (`label`) holds the secret, for this nonce
/// (the other side's) and the dialler's id.
fn tag(secret: &Secret, label: &[u8], nonce: &[u8], id: &str) -> hmac::Tag {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.expose().as_bytes());
    let mut context = hmac::Context::with_key(&key);
    context.update(label);
    context.update(nonce);
    context.update(id.as_bytes());
    context.sign()
}

/// Whether `claimed` is the tag of `label`, `nonce` and `id` (compared in constant time).
fn verify(secret: &Secret, label: &[u8], nonce: &[u8], id: &str, claimed: &[u8]) -> bool {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.expose().as_bytes());
    let message = [label, nonce, id.as_bytes()].concat();
    hmac::verify(&key, &message, claimed).is_ok()
}

/// A fresh nonce.
fn nonce() -> std::io::Result<[u8; 32]> {
    Ok(ring::rand::generate(&ring::rand::SystemRandom::new()).map_err(|_| std::io::Error::other("no randomness for a nonce"))?.expose())
}

/// Binds the listener for other instances' links.
pub async fn bind(address: &str) -> Result<TcpListener, ListenError> {
    TcpListener::bind(address).await.map_err(|source| ListenError { address: address.to_owned(), source })
}

/// Accepts links from other instances and hands what they forward to `inbound`, with at
/// most `max_bytes` per stanza. While `fenced` is true, links are closed and nothing is
/// acknowledged: the senders keep their stanzas for the next owner.
pub async fn serve(listener: TcpListener, secret: Secret, max_bytes: usize, inbound: mpsc::Sender<Forwarded>, fenced: watch::Receiver<bool>) {
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                warn!(%error, "accepting a peer link");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if *fenced.borrow() {
            drop(stream);
            continue;
        }
        let secret = secret.clone();
        let inbound = inbound.clone();
        let fenced = fenced.clone();
        tokio::spawn(async move {
            match accept(stream, &secret, max_bytes, inbound, fenced).await {
                Ok(peer) => debug!(%from, %peer, "peer link closed"),
                Err(error) => debug!(%from, %error, "peer link ended"),
            }
        });
    }
}

/// One accepted link: the handshake, then frames until it closes.
async fn accept(mut stream: TcpStream, secret: &Secret, max_bytes: usize, inbound: mpsc::Sender<Forwarded>, fenced: watch::Receiver<bool>) -> std::io::Result<String> {
    stream.set_nodelay(true)?;
    let nonce = nonce()?;
    let peer = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        stream.write_all(&nonce).await?;
        let length = stream.read_u8().await?;
        let mut id = vec![0; usize::from(length)];
        stream.read_exact(&mut id).await?;
        let mut claimed = [0; 32];
        stream.read_exact(&mut claimed).await?;
        let mut theirs = [0; 32];
        stream.read_exact(&mut theirs).await?;
        let id = String::from_utf8(id).map_err(|_| std::io::Error::other("the instance id is not UTF-8"))?;
        if !verify(secret, DIALLER, &nonce, &id, &claimed) {
            return Err(std::io::Error::other(format!("instance {id:?} does not know the component secret")));
        }
        let mut answer = vec![ACCEPTED];
        answer.extend_from_slice(tag(secret, LISTENER, &theirs, &id).as_ref());
        stream.write_all(&answer).await?;
        Ok(id)
    })
    .await
    .map_err(|_| std::io::Error::other("handshake timed out"))??;
    info!(%peer, "peer link accepted");
    let (mut read, mut write) = stream.into_split();
    let mut taken: u64 = 0;
    loop {
        let length = match read.read_u32().await {
            Ok(length) => length as usize,
            Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(peer),
            Err(error) => return Err(error),
        };
        if length == 0 || length > max_bytes.saturating_add(1) {
            return Err(std::io::Error::other(format!("a frame of {length} bytes from {peer}")));
        }
        let mut frame = vec![0; length];
        read.read_exact(&mut frame).await?;
        let hops = frame[0];
        let stanza = std::str::from_utf8(&frame[1..])
            .ok()
            .and_then(|xml| xml.parse::<Element>().ok())
            .ok_or_else(|| std::io::Error::other(format!("a frame from {peer} is not a stanza")))?;
        if *fenced.borrow() {
            return Err(std::io::Error::other("fenced: this instance serves nobody until the database answers"));
        }
        if inbound.send(Forwarded { stanza, hops }).await.is_err() {
            return Ok(peer);
        }
        taken += 1;
        write.write_u64(taken).await?;
    }
}

/// Starts a link to `peer` at `address`: stanzas sent to the returned queue are written
/// to it; when it breaks (or cannot be opened), what it did not deliver goes to `failed`
/// and the queue closes.
pub fn connect(me: String, peer: String, address: String, secret: Secret, failed: mpsc::UnboundedSender<LinkFailed>) -> mpsc::UnboundedSender<(Element, u8)> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut queue = rx;
        let mut unacked = VecDeque::new();
        let reason = match run_link(&me, &peer, &address, &secret, &mut queue, &mut unacked).await {
            Ok(()) => return,
            Err(error) => error.to_string(),
        };
        queue.close();
        let mut stanzas: Vec<(Element, u8)> = unacked.into_iter().collect();
        while let Ok(stanza) = queue.try_recv() {
            stanzas.push(stanza);
        }
        debug!(%peer, %reason, handed_back = stanzas.len(), "peer link broke");
        let _ = failed.send(LinkFailed { peer, reason, stanzas });
    });
    tx
}

/// Dials, shakes hands and writes frames until the queue closes (`Ok`) or the link breaks.
async fn run_link(
    me: &str,
    peer: &str,
    address: &str,
    secret: &Secret,
    queue: &mut mpsc::UnboundedReceiver<(Element, u8)>,
    unacked: &mut VecDeque<(Element, u8)>,
) -> std::io::Result<()> {
    let mut stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        let mut stream = TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        let mut theirs = [0; 32];
        stream.read_exact(&mut theirs).await?;
        let ours = nonce()?;
        let id = me.as_bytes();
        let length = u8::try_from(id.len()).map_err(|_| std::io::Error::other("instance id too long"))?;
        let mut hello = vec![length];
        hello.extend_from_slice(id);
        hello.extend_from_slice(tag(secret, DIALLER, &theirs, me).as_ref());
        hello.extend_from_slice(&ours);
        stream.write_all(&hello).await?;
        match stream.read_u8().await? {
            ACCEPTED => {}
            other => return Err(std::io::Error::other(format!("refused the handshake ({other})"))),
        }
        let mut claimed = [0; 32];
        stream.read_exact(&mut claimed).await?;
        if !verify(secret, LISTENER, &ours, me, &claimed) {
            return Err(std::io::Error::other("the listener does not know the component secret"));
        }
        Ok(stream)
    })
    .await
    .map_err(|_| std::io::Error::other(format!("no handshake from {peer} at {address} within {HANDSHAKE_TIMEOUT:?}")))??;
    debug!(%peer, %address, "peer link open");
    let (mut read, mut write) = stream.split();
    let mut sent: u64 = 0;
    let mut acked: u64 = 0;
    loop {
        tokio::select! {
            next = queue.recv() => {
                let Some((stanza, hops)) = next else { return Ok(()) };
                // Our own writer, not minidom's: minidom panics on prefixes a sender may
                // declare (`xmlns:xml=...`), and one stanza must not end the link.
                let mut frame = vec![0, 0, 0, 0, hops];
                if !crate::xml_stream::append_bytes(&stanza, &mut frame) {
                    continue;
                }
                let length = u32::try_from(frame.len() - 4).map_err(|_| std::io::Error::other("stanza too large"))?;
                frame[..4].copy_from_slice(&length.to_be_bytes());
                unacked.push_back((stanza, hops));
                write.write_all(&frame).await?;
                sent += 1;
            }
            count = read.read_u64() => {
                let count = count?;
                if count > sent || count < acked {
                    return Err(std::io::Error::other(format!("{peer} acknowledged {count} of {sent}")));
                }
                for _ in acked..count {
                    unacked.pop_front();
                }
                acked = count;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> Secret {
        Secret::new(s.to_owned())
    }

    fn message(n: u32) -> Element {
        format!("<message xmlns='jabber:component:accept' from='u@h/r' to='#c%irc@gw' id='m{n}'><body>hi {n}</body></message>")
            .parse()
            .unwrap()
    }

    /// A link from `a` to a listening `b`, the link knowing `ours` and `b` `theirs` as
    /// the secret: the link, what `b` took in, and what the link handed back.
    async fn linked(ours: &str, theirs: &str) -> (mpsc::UnboundedSender<(Element, u8)>, mpsc::Receiver<Forwarded>, mpsc::UnboundedReceiver<LinkFailed>) {
        let listener = bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let (inbound_tx, inbound) = mpsc::channel(16);
        tokio::spawn(serve(listener, secret(theirs), 10_000, inbound_tx, watch::channel(false).1));
        let (failed_tx, failed) = mpsc::unbounded_channel();
        (connect("a".into(), "b".into(), address, secret(ours), failed_tx), inbound, failed)
    }

    #[test]
    fn the_tag_depends_on_the_secret_the_side_the_nonce_and_the_id() {
        let nonce = [7u8; 32];
        let good = tag(&secret("s"), DIALLER, &nonce, "a");
        assert!(verify(&secret("s"), DIALLER, &nonce, "a", good.as_ref()));
        assert!(!verify(&secret("t"), DIALLER, &nonce, "a", good.as_ref()));
        assert!(!verify(&secret("s"), LISTENER, &nonce, "a", good.as_ref()));
        assert!(!verify(&secret("s"), DIALLER, &[8u8; 32], "a", good.as_ref()));
        assert!(!verify(&secret("s"), DIALLER, &nonce, "b", good.as_ref()));
    }

    #[tokio::test]
    async fn a_listener_without_the_secret_gets_no_stanza() {
        // Whoever took the advertised address: answers ACCEPTED without the proof.
        let impostor = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = impostor.local_addr().unwrap().to_string();
        let (failed_tx, mut failed) = mpsc::unbounded_channel();
        let link = connect("a".into(), "b".into(), address, secret("s"), failed_tx);
        link.send((message(1), 0)).unwrap();
        let (mut stream, _) = impostor.accept().await.unwrap();
        stream.write_all(&[0; 32]).await.unwrap();
        let mut hello = [0; 1 + 1 + 32 + 32];
        stream.read_exact(&mut hello).await.unwrap();
        stream.write_all(&[[ACCEPTED].as_slice(), &[0; 32]].concat()).await.unwrap();
        let back = tokio::time::timeout(Duration::from_secs(5), failed.recv()).await.expect("the link gave up").unwrap();
        assert_eq!(back.stanzas.len(), 1, "handed back, not sent");
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "no frame written to the impostor: {rest:?}");
    }

    #[tokio::test]
    async fn stanzas_cross_a_link_in_order_and_are_acknowledged() {
        let (link, mut inbound, mut failed) = linked("s", "s").await;
        for n in 0..5 {
            link.send((message(n), 0)).unwrap();
        }
        for n in 0..5 {
            let got = inbound.recv().await.unwrap();
            assert_eq!(got.stanza.attr("id"), Some(format!("m{n}").as_str()));
            assert_eq!(got.stanza.get_child("body", "jabber:component:accept").unwrap().text(), format!("hi {n}"));
        }
        drop(link);
        let back = tokio::time::timeout(Duration::from_millis(300), failed.recv()).await;
        assert!(!matches!(back, Ok(Some(_))), "nothing handed back: {back:?}");
    }

    /// A stanza as the component stream reads it: the prefixes its sender declared kept.
    async fn read_from_the_server(xml: &str) -> Element {
        let input = format!("<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams'>{xml}");
        let mut reader = crate::xml_stream::StanzaReader::new(input.as_bytes());
        loop {
            if let crate::xml_stream::StreamEvent::Stanza(stanza) = reader.next().await.unwrap() {
                return stanza;
            }
        }
    }

    #[tokio::test]
    async fn a_stanza_declaring_reserved_or_clashing_prefixes_crosses_and_the_link_goes_on() {
        let (link, mut inbound, mut failed) = linked("s", "s").await;
        // minidom's own writer panics on both (a fixed prefix declared, one prefix bound twice).
        let odd = [
            "<message xmlns:xml='http://www.w3.org/XML/1998/namespace' from='u@h/r' to='#c%irc@gw' id='x1'><body>one</body></message>",
            "<message xmlns:p='urn:1' from='u@h/r' to='#c%irc@gw' id='x2'><x xmlns:p='urn:2'/><body>two</body></message>",
        ];
        for xml in odd {
            link.send((read_from_the_server(xml).await, 0)).unwrap();
        }
        link.send((message(3), 0)).unwrap();
        for id in ["x1", "x2", "m3"] {
            let got = tokio::time::timeout(Duration::from_secs(5), inbound.recv()).await.unwrap().unwrap();
            assert_eq!(got.stanza.attr("id"), Some(id));
        }
        drop(link);
        let back = tokio::time::timeout(Duration::from_millis(300), failed.recv()).await;
        assert!(!matches!(back, Ok(Some(_))), "nothing handed back: {back:?}");
    }

    #[tokio::test]
    async fn a_wrong_secret_is_refused_and_the_stanzas_are_handed_back() {
        let (link, mut inbound, mut failed) = linked("wrong", "right").await;
        link.send((message(1), 0)).unwrap();
        let back = failed.recv().await.unwrap();
        assert_eq!(back.peer, "b");
        assert_eq!(back.stanzas.len(), 1);
        assert!(inbound.try_recv().is_err(), "nothing reached the router");
    }

    #[tokio::test]
    async fn a_link_to_nobody_hands_its_stanzas_back() {
        let unused = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = unused.local_addr().unwrap().to_string();
        drop(unused);
        let (failed_tx, mut failed) = mpsc::unbounded_channel();
        let link = connect("a".into(), "b".into(), address, secret("s"), failed_tx);
        link.send((message(1), 0)).unwrap();
        link.send((message(2), 1)).unwrap();
        let back = failed.recv().await.unwrap();
        let ids: Vec<_> = back.stanzas.iter().map(|(s, hops)| (s.attr("id").unwrap().to_owned(), *hops)).collect();
        assert_eq!(ids, [("m1".to_owned(), 0), ("m2".to_owned(), 1)]);
    }
}
