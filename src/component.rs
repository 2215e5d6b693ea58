//! The connection supervisor: connect, serve, reconnect with backoff, shut down cleanly.
//!
//! Sessions and the router live outside any one connection, so a lost connection costs
//! nobody their IRC or email session: stanzas wait in the outbox and flow again once the
//! server is back.

use std::time::{Duration, Instant};

use bridge_core::SessionEvent;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};

use bridge_core::backoff::Backoff;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::connection::{self, ConnectError};
use crate::router::Router;
use crate::writer::Control;
use crate::xml_stream::{StreamEvent, NS_STREAM};

/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The first reconnection delay.
const FIRST_RETRY: Duration = Duration::from_millis(250);

/// Why the gateway stopped for good.
#[derive(Debug, thiserror::Error)]
pub enum FatalError {
    /// The server will never accept us as configured.
    #[error(transparent)]
    Connect(#[from] ConnectError),
}

/// Why one connection ended.
enum Ended {
    /// We were asked to stop.
    Shutdown,
    /// The connection broke; reconnect.
    Lost(String),
}

/// Runs the gateway's connection until `shutdown` turns true or the server refuses us.
pub async fn supervise(
    config: &Config,
    router: &mut Router,
    cluster: &mut Cluster,
    control: mpsc::Sender<Control>,
    mut events: mpsc::Receiver<SessionEvent>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), FatalError> {
    let mut backoff = Backoff::new(
        FIRST_RETRY,
        Duration::from_secs(config.component.reconnect_max_secs),
    );
    let servers: Vec<&str> = config.servers().collect();
    // The server tried next: the same after a success, the next after a failure.
    let mut next_server = 0;
    let jid = &config.component.jid;
    loop {
        let server = servers[next_server % servers.len()];
        // A fenced instance of a cluster stays away until it may serve again.
        tokio::select! {
            () = cluster.unfenced() => {}
            _ = shutdown.wait_for(|stop| *stop) => return Ok(()),
        }
        let started = Instant::now();
        let attempt = tokio::select! {
            attempt = connection::connect(server, jid, &config.component.secret, CONNECT_TIMEOUT, config.limits.stanza_limits()) => attempt,
            _ = shutdown.wait_for(|stop| *stop) => return Ok(()),
        };
        let ended = match attempt {
            Err(error) if !error.is_retryable() => return Err(error.into()),
            Err(error) => Ended::Lost(error.to_string()),
            Ok(conn) => {
                info!(%server, %jid, elapsed_ms = started.elapsed().as_millis() as u64, "connected to the XMPP server");
                backoff.reset();
                if control.send(Control::Attach(conn.writer)).await.is_err() {
                    return Ok(());
                }
                router.on_connected().await;
                let mut reader = conn.reader;
                let ended = serve(config, router, cluster, &mut reader, &mut events, &mut shutdown).await;
                if matches!(ended, Ended::Lost(_)) {
                    close(&reader.into_inner());
                }
                ended
            }
        };
        match ended {
            Ended::Shutdown => {
                router.on_shutdown().await;
                cluster.leave().await;
                let (done, closed) = oneshot::channel();
                if control.send(Control::Close(done)).await.is_ok() {
                    let _ = tokio::time::timeout(Duration::from_secs(5), closed).await;
                }
                return Ok(());
            }
            Ended::Lost(reason) => {
                next_server += 1;
                let delay = if servers.len() > 1 && next_server % servers.len() != 0 { FIRST_RETRY } else { backoff.next_delay() };
                warn!(%server, %reason, retry_in_ms = delay.as_millis() as u64, "XMPP server connection lost");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    _ = shutdown.wait_for(|stop| *stop) => {
                        router.on_shutdown().await;
                        cluster.leave().await;
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// Closes a connection given up on, both ways, at once. Dropping our halves is not
/// enough: the writer still holds the write half (it may even be stuck writing to a
/// server that stopped reading), and while the socket stays open the server keeps the
/// old session and refuses the next one as "already connected". The writer's next write
/// then fails, and what it was writing waits for the next connection.
fn close(read: &tokio::net::tcp::OwnedReadHalf) {
    let stream: &tokio::net::TcpStream = read.as_ref();
    if let Err(error) = socket2::SockRef::from(stream).shutdown(std::net::Shutdown::Both) {
        tracing::debug!(%error, "closing the lost connection");
    }
}

/// Reads and routes until the connection ends or shutdown is asked.
async fn serve(
    config: &Config,
    router: &mut Router,
    cluster: &mut Cluster,
    reader: &mut crate::xml_stream::StanzaReader<tokio::net::tcp::OwnedReadHalf>,
    events: &mut mpsc::Receiver<SessionEvent>,
    shutdown: &mut watch::Receiver<bool>,
) -> Ended {
    let keepalive = config.keepalive();
    let mut last_read = tokio::time::Instant::now();
    // The id of our keepalive ping when one is unanswered.
    let mut ping_pending = false;
    // Silence is checked on a ticker, not with a timer re-armed after every stanza.
    let mut ticker = tokio::time::interval(keepalive / 4);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return Ended::Shutdown,
            read = reader.next() => {
                last_read = tokio::time::Instant::now();
                ping_pending = false;
                match read {
                    Ok(StreamEvent::Stanza(element)) if element.is("error", NS_STREAM) => {
                        return Ended::Lost(format!("stream error: {}", connection::stream_error_condition(&element)));
                    }
                    Ok(StreamEvent::Stanza(element)) => {
                        // In a cluster, another instance's user's stanza goes to it.
                        if let Some(element) = cluster.gate(connection::into_component_namespace(element)).await {
                            router.handle_stanza(element).await;
                        }
                    }
                    Ok(StreamEvent::TooLarge(element, reason)) => {
                        router.handle_too_large(connection::into_component_namespace(element), &reason).await
                    }
                    Ok(StreamEvent::Unreadable(element, reason)) => {
                        router.handle_unreadable(connection::into_component_namespace(element), &reason).await
                    }
                    Ok(StreamEvent::Header(_)) => {}
                    Ok(StreamEvent::End) => return Ended::Lost("the server closed the stream".into()),
                    Err(error) => return Ended::Lost(error.to_string()),
                }
            }
            Some(event) = events.recv() => router.handle_event(event).await,
            work = cluster.next() => match work {
                // Fenced: the others get this node's stanzas once our route is gone.
                crate::cluster::Work::Leave => return Ended::Lost("fenced: this instance cannot reach its database".into()),
                work => {
                    // Our keepalive ping came back, through another instance: the
                    // server took it from us and routed it.
                    if matches!(&work, crate::cluster::Work::Stanza(stanza) if crate::router::is_keepalive_answer(stanza)) {
                        last_read = tokio::time::Instant::now();
                        ping_pending = false;
                    }
                    router.handle_cluster_work(work).await;
                }
            },
            task = router.next_task() => router.handle_task(task).await,
            _ = ticker.tick() => {
                if last_read.elapsed() < keepalive {
                    continue;
                }
                if ping_pending {
                    return Ended::Lost(format!("no answer from the server for {:?}", keepalive.saturating_mul(2)));
                }
                ping_pending = true;
                last_read = tokio::time::Instant::now();
                router.send_keepalive_ping().await;
            }
        }
    }
}
