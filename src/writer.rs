//! The one task that writes to the XMPP server.
//!
//! Every stanza the gateway emits, from any handler or session, goes through one
//! [`Outbox`] channel to this task, so stanzas never interleave on the wire. The task
//! outlives connections: while the server is away, stanzas wait in the channel, and the
//! one whose write failed is written first on the next connection.

use std::time::Duration;

use minidom::Element;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{mpsc, oneshot};

use crate::xml_stream;

/// How many stanzas may wait for the writer before senders wait in turn.
const OUTBOX_CAPACITY: usize = 4096;

/// Stanzas already waiting are written together, up to about this many bytes: one
/// system call for a burst (a channel line fanned out to every occupant) instead of one
/// per stanza.
const BATCH_BYTES: usize = 64 * 1024;

/// Where handlers and sessions put stanzas for the server. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Outbox(mpsc::Sender<Element>);

impl Outbox {
    /// Queues a stanza; waits only when the writer is far behind.
    pub async fn send(&self, stanza: Element) {
        if self.0.send(stanza).await.is_err() {
            tracing::debug!("the writer has stopped; dropping a stanza at shutdown");
        }
    }

    /// An outbox whose stanzas the test reads from the receiver instead of a server.
    #[cfg(test)]
    pub fn for_tests() -> (Outbox, mpsc::Receiver<Element>) {
        let (tx, rx) = mpsc::channel(OUTBOX_CAPACITY);
        (Outbox(tx), rx)
    }
}

/// Instructions from the connection supervisor.
pub enum Control {
    /// A new connection is up: write to it from now on.
    Attach(OwnedWriteHalf),
    /// Write what is queued, close the stream, and report back.
    Close(oneshot::Sender<()>),
}

/// Starts the writer task. Returns the outbox for stanzas and the control channel.
pub fn spawn(keepalive: Duration) -> (Outbox, mpsc::Sender<Control>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(OUTBOX_CAPACITY);
    let (control_tx, control_rx) = mpsc::channel(4);
    let task = tokio::spawn(run(rx, control_rx, keepalive));
    (Outbox(tx), control_tx, task)
}

async fn run(
    mut stanzas: mpsc::Receiver<Element>,
    mut control: mpsc::Receiver<Control>,
    keepalive: Duration,
) {
    let mut socket: Option<OwnedWriteHalf> = None;
    // The stanzas whose write failed; they go out first on the next connection.
    let mut unsent: Option<Vec<u8>> = None;
    // Whitespace keepalive when nothing was written for a whole period: checked on a
    // ticker rather than with a timer re-armed after every write.
    let mut ticker = tokio::time::interval(keepalive);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_write = tokio::time::Instant::now();
    let mut batch = Vec::with_capacity(BATCH_BYTES);
    loop {
        let Some(writer) = socket.as_mut() else {
            match control.recv().await {
                Some(Control::Attach(w)) => socket = Some(w),
                Some(Control::Close(done)) => {
                    let _ = done.send(());
                    return;
                }
                None => return,
            }
            continue;
        };
        if let Some(bytes) = unsent.take() {
            if let Err(error) = writer.write_all(&bytes).await {
                tracing::debug!(%error, "write failed again; waiting for the next connection");
                unsent = Some(bytes);
                socket = None;
                continue;
            }
        }
        tokio::select! {
            command = control.recv() => match command {
                Some(Control::Attach(w)) => socket = Some(w),
                Some(Control::Close(done)) => {
                    while let Ok(stanza) = stanzas.try_recv() {
                        if writer.write_all(&xml_stream::to_bytes(&stanza)).await.is_err() {
                            break;
                        }
                    }
                    let _ = writer.write_all(b"</stream:stream>").await;
                    let _ = writer.shutdown().await;
                    let _ = done.send(());
                    return;
                }
                None => return,
            },
            stanza = stanzas.recv() => {
                let Some(stanza) = stanza else { return };
                batch.clear();
                xml_stream::append_bytes(&stanza, &mut batch);
                while batch.len() < BATCH_BYTES {
                    let Ok(stanza) = stanzas.try_recv() else { break };
                    xml_stream::append_bytes(&stanza, &mut batch);
                }
                last_write = tokio::time::Instant::now();
                if let Err(error) = writer.write_all(&batch).await {
                    tracing::warn!(%error, "writing to the server failed; keeping the stanzas for the next connection");
                    unsent = Some(std::mem::replace(&mut batch, Vec::with_capacity(BATCH_BYTES)));
                    socket = None;
                }
            }
            // Whitespace keepalive, so that idle connections survive NATs and firewalls.
            _ = ticker.tick() => {
                if last_write.elapsed() >= keepalive {
                    last_write = tokio::time::Instant::now();
                    if writer.write_all(b" ").await.is_err() {
                        socket = None;
                    }
                }
            }
        }
    }
}
