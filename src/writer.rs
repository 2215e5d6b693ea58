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
    // The stanza whose write failed; it goes out first on the next connection.
    let mut unsent: Option<Vec<u8>> = None;
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
                let bytes = xml_stream::to_bytes(&stanza);
                if let Err(error) = writer.write_all(&bytes).await {
                    tracing::warn!(%error, "writing to the server failed; keeping the stanza for the next connection");
                    unsent = Some(bytes);
                    socket = None;
                }
            }
            // Whitespace keepalive, so that idle connections survive NATs and firewalls.
            () = tokio::time::sleep(keepalive) => {
                if writer.write_all(b" ").await.is_err() {
                    socket = None;
                }
            }
        }
    }
}
