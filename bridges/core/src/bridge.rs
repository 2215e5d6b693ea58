//! The two traits a network plugs in with: a [`Bridge`] makes sessions, a [`Session`] is
//! one user's live connection to one network.

use std::future::Future;
use std::pin::Pin;

use tokio::sync::mpsc;

use crate::model::{Attachment, Command, Credentials, Event, FailureKind, NetworkId, SessionKey, UserId};

/// A boxed future, so that the traits stay object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// An event tagged with the session it came from; what flows back to the router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionEvent {
    /// Which session spoke.
    pub key: SessionKey,
    /// What it said.
    pub event: Event,
}

/// Where sessions send their events: one channel into the router for all sessions, so a
/// single task turns them into stanzas for the single XMPP writer.
pub type EventSink = mpsc::Sender<SessionEvent>;

/// The session is gone; the command was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the session has ended")]
pub struct SessionClosed;

/// One network: IRC or email. The router holds one of each and asks the one that
/// [`serves`](Bridge::serves) an address to start sessions on demand.
pub trait Bridge: Send + Sync + 'static {
    /// Whether this bridge talks to `network`.
    fn serves(&self, network: &NetworkId) -> bool;

    /// Starts the session of `key` (its own task), logging in with `credentials`; the
    /// session reports through `events` until it ends.
    fn start(&self, key: SessionKey, credentials: Credentials, events: EventSink) -> Box<dyn Session>;

    /// Checks `user`'s credentials with a real login before the gateway stores them;
    /// `Err` holds the remote server's reason. A bridge may also record where the account
    /// stands (the email bridge: the end of the mailbox), so that what arrives after the
    /// check, before its session starts, is not missed. Bridges without a single server
    /// to ask accept as is.
    fn check_credentials(&self, user: &UserId, credentials: &Credentials) -> BoxFuture<'static, Result<(), String>> {
        let _ = (user, credentials);
        Box::pin(async { Ok(()) })
    }
}

/// The store could not do what a bridge asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct StoreFailure(pub String);

/// Durable per-user state of a bridge (an email session's last delivered UID, its outbox),
/// kept by the gateway's store: bridges never see the database itself.
pub trait BridgeStore: Send + Sync + 'static {
    /// The value under `key` for `user`.
    fn load(&self, user: &UserId, key: &str) -> Result<Option<Vec<u8>>, StoreFailure>;
    /// Stores `value`. The write is made at once (a `load` sees it); the future resolves
    /// once it is on disk (a `kill -9` after that loses nothing), and never blocks the
    /// caller's thread while the disk syncs.
    fn save(&self, user: &UserId, key: &str, value: &[u8]) -> BoxFuture<'static, Result<(), StoreFailure>>;
    /// Deletes `key` at once; the future resolves once the deletion is on disk.
    fn delete(&self, user: &UserId, key: &str) -> BoxFuture<'static, Result<(), StoreFailure>>;
    /// Every (key, value) of `user` whose key starts with `prefix`, in key order.
    fn list(&self, user: &UserId, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreFailure>;
}

/// Fetches the files users send as links (XEP-0066), for a bridge that carries files (a
/// mail's attachments). The gateway decides where a file may come from (the user's own
/// upload service, through the network policy); a bridge never fetches a URL itself.
pub trait FileFetcher: Send + Sync + 'static {
    /// The file at `url`, which `user` sent, if it is at most `max_bytes` long.
    fn fetch(&self, user: &UserId, url: &str, max_bytes: usize) -> BoxFuture<'static, Result<Attachment, FetchError>>;
}

/// Why a linked file was not fetched: the kind becomes the XMPP error condition of the
/// message that linked it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text}")]
pub struct FetchError {
    /// `NotAllowed` for a place files may not come from, `ResourceConstraint` for a file
    /// too large, `Unavailable` for a server that did not give it.
    pub kind: FailureKind,
    /// What went wrong, for the user (never the URL's secret parts).
    pub text: String,
}

/// A live (user, network) session, driven by commands.
pub trait Session: Send + Sync {
    /// Hands a command to the session without waiting for it to be carried out.
    fn send(&self, command: Command) -> Result<(), SessionClosed>;

    /// Whether the session's task has ended (it will take no more commands).
    fn is_closed(&self) -> bool;
}

/// The usual [`Session`]: the sending end of the command queue of the session's task.
///
/// Commands travel boxed: tokio's channel allocates room for 32 values up front, and
/// thousands of mostly idle sessions each holding 32 unboxed commands (5 KiB) would
/// cost more than all the rest of an IRC connection.
#[derive(Debug, Clone)]
pub struct CommandQueue(mpsc::UnboundedSender<Box<Command>>);

/// The session's end of its command queue.
#[derive(Debug)]
pub struct Commands {
    /// The commands, in the order the gateway sent them.
    queue: mpsc::UnboundedReceiver<Box<Command>>,
}

/// A new command queue: the gateway's end and the session's.
#[must_use]
pub fn command_queue() -> (CommandQueue, Commands) {
    let (tx, rx) = mpsc::unbounded_channel();
    (CommandQueue(tx), Commands { queue: rx })
}

impl Session for CommandQueue {
    fn send(&self, command: Command) -> Result<(), SessionClosed> {
        self.0.send(Box::new(command)).map_err(|_| SessionClosed)
    }

    fn is_closed(&self) -> bool {
        self.0.is_closed()
    }
}

impl Commands {
    /// The next command; `None` once the gateway dropped its end and none is left.
    pub async fn recv(&mut self) -> Option<Command> {
        self.queue.recv().await.map(|command| *command)
    }

    /// The next command if one is waiting.
    pub fn try_recv(&mut self) -> Option<Command> {
        self.queue.try_recv().ok().map(|command| *command)
    }

    /// Takes no more commands; those already queued can still be read.
    pub fn close(&mut self) {
        self.queue.close();
    }
}
