//! The message archive: what was said in each user's channels and private conversations,
//! kept so that clients fetch what they missed (XEP-0313; the wire format is `mam.rs`).
//!
//! Every user has their own copy, as they have their own IRC connection: what the
//! gateway delivered to them, and what they sent. An entry's id is the time it was
//! archived in microseconds, made unique and increasing by [`Archive::next_id`]: one
//! number is the stable id clients see (XEP-0359 stanza-id, RSM), the order of the
//! archive and its time index, so a query by time is a range of ids.
//!
//! The live path only assigns an id and queues the entry: one thread of its own owns the
//! backend ([`ArchiveBackend`], sled in `sled.rs`; another database is another
//! implementation), writes what queued up in one batch, and answers queries in the same
//! order, so a query sees every entry archived before it was asked.

mod sled;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot};

pub use self::sled::SledArchive;

/// Entries and queries waiting for the archive's thread; past it the live path waits.
const QUEUE: usize = 4096;
/// Entries written in one batch at most.
const BATCH: usize = 512;
/// How often old entries are removed.
const TRIM_EVERY: Duration = Duration::from_secs(3600);
/// Most entries one query returns, whatever the client asks.
pub const MAX_PAGE: usize = 500;

/// Why the archive could not do something.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The database failed.
    #[error("the archive's database failed to {action}: {message}")]
    Backend {
        /// What was being done.
        action: &'static str,
        /// The database's error.
        message: String,
    },
    /// The archive is off (`[archive] enabled = false`) or its thread is gone.
    #[error("this gateway keeps no message archive")]
    Disabled,
}

/// One user's conversation, as the archive keys it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conversation {
    /// An IRC channel: `server/channel`, the channel folded as RFC 1459 folds (a fixed
    /// folding, so the key does not depend on what a server last said).
    Room(String),
    /// A private conversation with one contact, by its JID lowercased.
    Private(String),
    /// Every private conversation of the user together (a query without `with`).
    AllPrivate,
}

impl Conversation {
    /// The channel `channel` of IRC server `server`.
    pub fn room(server: &str, channel: &str) -> Self {
        Conversation::Room(format!("{}/{}", server.to_ascii_lowercase(), bridge_core::model::CaseMapping::Rfc1459.fold(channel)))
    }

    /// The private conversation with the contact `jid` (bare).
    pub fn private(jid: &str) -> Self {
        Conversation::Private(jid.to_lowercase())
    }
}

/// Who said an archived line, and which way it went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// A channel line; `who` is the speaker's nick, empty for the room (server) itself.
    Room,
    /// A private message from the contact `who` to the user.
    FromContact,
    /// A private message from the user to the contact `who`.
    ToContact,
}

/// One archived message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its id and time (see the module's documentation).
    pub id: u64,
    /// Whose archive: the user's bare JID.
    pub user: String,
    /// Which conversation of theirs; a private message also goes into `AllPrivate`.
    pub conversation: Conversation,
    /// Which way it went.
    pub direction: Direction,
    /// The speaker's nick in a room, the contact's JID in a private conversation.
    pub who: String,
    /// The text, as delivered (an action as `/me ...`).
    pub body: String,
}

/// An entry as a query returns it (its user and conversation are the query's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// Its id and time.
    pub id: u64,
    /// Which way it went.
    pub direction: Direction,
    /// The speaker's nick, or the contact's JID.
    pub who: String,
    /// The text.
    pub body: String,
}

/// What a client asks of one conversation: a time range, then a page of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// Whose archive.
    pub user: String,
    /// Which conversation.
    pub conversation: Conversation,
    /// Entries at or after this time (microseconds since the epoch).
    pub start: Option<u64>,
    /// Entries at or before this time.
    pub end: Option<u64>,
    /// RSM `after`: entries after this id, oldest first.
    pub after: Option<u64>,
    /// RSM `before`: the page that ends before this id (`Some(None)`: the last page).
    pub before: Option<Option<u64>>,
    /// Entries in the page at most (capped at [`MAX_PAGE`]).
    pub max: usize,
}

/// One page of a query's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    /// The entries, oldest first.
    pub items: Vec<Item>,
    /// Whether the page reaches the end of the range in the direction of paging (the
    /// last entry for `after` or no RSM, the first one for `before`).
    pub complete: bool,
}

/// How long entries are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Entries older than this are removed; `None`: no age limit.
    pub max_age: Option<Duration>,
    /// Entries kept per conversation, the newest; `None`: no count limit.
    pub max_count: Option<u64>,
}

/// Where the archive lives. Called on the archive's own thread only, so it may block.
pub trait ArchiveBackend: Send + 'static {
    /// Writes `entries` (a private one into its conversation and into `AllPrivate`).
    fn append(&mut self, entries: &[Entry]) -> Result<(), ArchiveError>;
    /// One page of `query`.
    fn query(&self, query: &Query) -> Result<Page, ArchiveError>;
    /// Removes everything of `user`; how many entries.
    fn delete_user(&mut self, user: &str) -> Result<u64, ArchiveError>;
    /// Removes what `retention` no longer keeps, as of `now` (microseconds); how many.
    fn trim(&mut self, retention: Retention, now: u64) -> Result<u64, ArchiveError>;
    /// The highest id ever written, so ids keep increasing across restarts.
    fn last_id(&self) -> Result<u64, ArchiveError>;
    /// Makes every write so far durable.
    fn flush(&self) -> Result<(), ArchiveError>;
}

/// Work for the archive's thread, done in order.
enum Op {
    Append(Entry),
    Query(Query, oneshot::Sender<Result<Page, ArchiveError>>),
    DeleteUser(String),
    Trim,
    Flush(oneshot::Sender<Result<(), ArchiveError>>),
}

/// The handle the live path and the queries use. Cheap to clone; a disabled archive
/// (`[archive] enabled = false`) takes entries and drops them.
#[derive(Clone, Default)]
pub struct Archive {
    /// The archive's thread and its id clock; `None` when disabled.
    inner: Option<Arc<Shared>>,
}

struct Shared {
    /// Work for the thread.
    ops: mpsc::Sender<Op>,
    /// The last id given out.
    last_id: AtomicU64,
}

/// Microseconds since the epoch now.
pub fn now_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

impl Archive {
    /// An archive in `backend`, served by a thread of its own, keeping what `retention`
    /// says (trimmed at start and hourly after).
    pub fn start(backend: impl ArchiveBackend, retention: Retention) -> Result<Archive, ArchiveError> {
        let last_id = backend.last_id()?;
        let (ops, rx) = mpsc::channel(QUEUE);
        std::thread::Builder::new()
            .name("archive".into())
            .spawn(move || serve(backend, rx, retention))
            .map_err(|e| ArchiveError::Backend { action: "start its thread", message: e.to_string() })?;
        let archive = Archive { inner: Some(Arc::new(Shared { ops, last_id: AtomicU64::new(last_id) })) };
        if retention.max_age.is_some() || retention.max_count.is_some() {
            let ops = archive.inner.as_ref().map(|s| s.ops.downgrade());
            tokio::spawn(async move {
                let mut every = tokio::time::interval(TRIM_EVERY);
                loop {
                    every.tick().await;
                    let Some(ops) = ops.as_ref().and_then(mpsc::WeakSender::upgrade) else { return };
                    if ops.send(Op::Trim).await.is_err() {
                        return;
                    }
                }
            });
        }
        Ok(archive)
    }

    /// Whether entries are kept.
    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// The id of the next entry: now in microseconds, above every id given before.
    /// `None` when the archive is off.
    pub fn next_id(&self) -> Option<u64> {
        let shared = self.inner.as_ref()?;
        let now = now_micros();
        let previous = shared.last_id.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| Some(now.max(last + 1))).unwrap_or_default();
        Some(now.max(previous + 1))
    }

    /// Archives `entry` (its id from [`Archive::next_id`]). Waits only when the archive's
    /// thread is [`QUEUE`] entries behind.
    pub async fn append(&self, entry: Entry) {
        if let Some(shared) = &self.inner {
            if shared.ops.send(Op::Append(entry)).await.is_err() {
                tracing::warn!("the archive's thread is gone; a message was not archived");
            }
        }
    }

    /// One page of `query`, after everything archived before it was asked.
    pub async fn query(&self, query: Query) -> Result<Page, ArchiveError> {
        let shared = self.inner.as_ref().ok_or(ArchiveError::Disabled)?;
        let (tx, rx) = oneshot::channel();
        shared.ops.send(Op::Query(query, tx)).await.map_err(|_| ArchiveError::Disabled)?;
        rx.await.map_err(|_| ArchiveError::Disabled)?
    }

    /// Deletes `user`'s whole archive (after what is queued for it).
    pub async fn delete_user(&self, user: &str) {
        if let Some(shared) = &self.inner {
            let _ = shared.ops.send(Op::DeleteUser(user.to_owned())).await;
        }
    }

    /// Waits until everything archived so far is durable.
    pub async fn flush(&self) -> Result<(), ArchiveError> {
        let Some(shared) = &self.inner else { return Ok(()) };
        let (tx, rx) = oneshot::channel();
        shared.ops.send(Op::Flush(tx)).await.map_err(|_| ArchiveError::Disabled)?;
        rx.await.map_err(|_| ArchiveError::Disabled)?
    }
}

/// The archive's thread: takes what queued up, writes the entries in one batch, then
/// answers what came after them, in order. Ends when every handle is gone.
fn serve(mut backend: impl ArchiveBackend, mut ops: mpsc::Receiver<Op>, retention: Retention) {
    let mut batch = Vec::with_capacity(BATCH);
    while let Some(op) = ops.blocking_recv() {
        let mut next = Some(op);
        while let Some(op) = next.take() {
            match op {
                Op::Append(entry) => {
                    batch.push(entry);
                    if batch.len() < BATCH {
                        next = ops.try_recv().ok();
                    }
                }
                other => {
                    write(&mut backend, &mut batch);
                    run(&mut backend, other, retention);
                    next = ops.try_recv().ok();
                }
            }
        }
        write(&mut backend, &mut batch);
    }
    write(&mut backend, &mut batch);
    if let Err(error) = backend.flush() {
        tracing::warn!(%error, "the archive could not be flushed at shutdown");
    }
}

fn write(backend: &mut impl ArchiveBackend, batch: &mut Vec<Entry>) {
    if batch.is_empty() {
        return;
    }
    if let Err(error) = backend.append(batch) {
        tracing::warn!(%error, lost = batch.len(), "messages could not be archived");
    }
    batch.clear();
}

fn run(backend: &mut impl ArchiveBackend, op: Op, retention: Retention) {
    match op {
        Op::Append(_) => unreachable!("appends are batched"),
        Op::Query(query, answer) => {
            let _ = answer.send(backend.query(&query));
        }
        Op::DeleteUser(user) => match backend.delete_user(&user) {
            Ok(removed) => tracing::info!(%user, removed, "archive deleted"),
            Err(error) => tracing::warn!(%user, %error, "the archive could not be deleted"),
        },
        Op::Trim => match backend.trim(retention, now_micros()) {
            Ok(0) => {}
            Ok(removed) => tracing::info!(removed, "old archived messages removed"),
            Err(error) => tracing::warn!(%error, "old archived messages could not be removed"),
        },
        Op::Flush(done) => {
            let _ = done.send(backend.flush());
        }
    }
}

impl Retention {
    /// The retention `[archive]` asks for.
    pub fn of(config: &crate::config::ArchiveConfig) -> Self {
        Retention {
            max_age: (config.retention_days > 0).then(|| Duration::from_secs(u64::from(config.retention_days) * 86_400)),
            max_count: (config.retention_messages > 0).then_some(config.retention_messages),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ids_increase_even_within_one_microsecond_and_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let db = ::sled::Config::new().path(dir.path()).open().unwrap();
        let archive = Archive::start(SledArchive::new(db.open_tree("archive").unwrap()), Retention { max_age: None, max_count: None }).unwrap();
        let ids: Vec<u64> = (0..1000).map(|_| archive.next_id().unwrap()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        let far = ids[999] + 10_000_000_000;
        let entry = |id| Entry { id, user: "a@x".into(), conversation: Conversation::room("irc.x", "#c"), direction: Direction::Room, who: "n".into(), body: "b".into() };
        archive.append(entry(far)).await;
        archive.flush().await.unwrap();
        drop(archive);
        // The thread ends once its handles are gone; a new archive continues above.
        let archive = Archive::start(SledArchive::new(db.open_tree("archive").unwrap()), Retention { max_age: None, max_count: None }).unwrap();
        assert!(archive.next_id().unwrap() > far);
    }

    #[tokio::test]
    async fn a_query_sees_what_was_appended_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = ::sled::Config::new().path(dir.path()).open().unwrap();
        let archive = Archive::start(SledArchive::new(db.open_tree("archive").unwrap()), Retention { max_age: None, max_count: None }).unwrap();
        let room = Conversation::room("irc.x", "#C");
        for n in 0..2000 {
            let id = archive.next_id().unwrap();
            archive.append(Entry { id, user: "a@x".into(), conversation: room.clone(), direction: Direction::Room, who: "n".into(), body: n.to_string() }).await;
        }
        let query = Query { user: "a@x".into(), conversation: Conversation::room("IRC.X", "#c"), start: None, end: None, after: None, before: Some(None), max: 3 };
        let page = archive.query(query).await.unwrap();
        let bodies: Vec<&str> = page.items.iter().map(|i| i.body.as_str()).collect();
        assert_eq!(bodies, ["1997", "1998", "1999"]);
        assert!(!page.complete);
    }

    #[tokio::test]
    async fn a_disabled_archive_takes_entries_and_answers_queries_with_an_error() {
        let archive = Archive::default();
        assert_eq!(archive.next_id(), None);
        archive.append(Entry { id: 1, user: "a@x".into(), conversation: Conversation::AllPrivate, direction: Direction::Room, who: String::new(), body: String::new() }).await;
        let query = Query { user: "a@x".into(), conversation: Conversation::AllPrivate, start: None, end: None, after: None, before: None, max: 10 };
        assert!(matches!(archive.query(query).await, Err(ArchiveError::Disabled)));
        archive.flush().await.unwrap();
    }
}
