//! The message archive: what was said in each user's channels and private conversations,
//! kept so that clients fetch what they missed (XEP-0313; the wire format is `mam.rs`).
//!
//! A channel line is stored once in the channel's log, however many users of the gateway
//! got it (each through their own IRC connection); each user's archive of the channel is
//! the runs of that log they got (spans, worked out on the live path by `live.rs`), so a
//! user sees exactly what was delivered to them and what they sent. Private messages are
//! stored per user. An entry's id is the time it was archived in microseconds, made
//! unique and increasing by [`Archive::next_id`]: one number is the stable id clients see
//! (XEP-0359 stanza-id, RSM), the order of the archive and its time index, so a query by
//! time is a range of ids.
//!
//! The live path only matches a line and, when it is new, queues it: one thread of its
//! own owns the backend ([`ArchiveBackend`]: [`KeyedArchive`], keys of the store's
//! ordered `archive` tree, on sled or PostgreSQL), writes what queued up in one batch, and answers queries in
//! the same order, so a query sees every line archived before it was asked.

mod keyed;
mod live;

use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot};

pub use self::keyed::KeyedArchive;
pub use self::live::Place;

/// Writes waiting for the archive's thread; past it the live path waits.
const QUEUE: usize = 4096;
/// How often the archive's thread takes the writes that queued up while they come: one
/// batch for many lines rather than a database write for each, and few wake-ups (a timed
/// wake-up of a thread costs some 40 µs of CPU on these virtual machines: at 20 a second
/// that was most of the archive thread's CPU). With nothing queued it sleeps until a
/// write comes. A crash loses at most this much besides sled's own flush interval.
const WRITE_EVERY: Duration = Duration::from_millis(200);
/// Entries written in one batch at most.
const BATCH: usize = 512;
/// How long a batch whose write failed (the database away) is kept and tried again, and
/// how many writes may wait so: past either, the batch is given up, and counted.
const RETRY_FOR: Duration = Duration::from_secs(120);
const RETRY_AT_MOST: usize = 16 * BATCH;
/// How often old entries are removed.
const TRIM_EVERY: Duration = Duration::from_secs(3600);
/// How often the spans users' sessions extended are written (a crash loses at most
/// this much of a user's view of a channel, besides sled's own flush interval).
const SPANS_EVERY: Duration = Duration::from_millis(500);
/// A user's place in a channel is forgotten (after being written) when they got no
/// line there for this long.
const IDLE_CURSOR: Duration = Duration::from_secs(600);
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
    /// An IRC channel: `server/channel`, both in ASCII lower case: a fixed folding, so the
    /// key does not depend on what a server last said, and the least any server does
    /// (`CASEMAPPING=ascii`), so that two channels a server tells apart never share a log
    /// (RFC 1459's `[]\~` = `{}|^` would give `#ops[` the lines of another `#ops{`
    /// there). On an RFC 1459 server, `#ops[` and `#ops{` spelled both ways keep a log
    /// each.
    Room(String),
    /// A private conversation with one contact, by its JID lowercased.
    Private(String),
    /// Every private conversation of the user together (a query without `with`).
    AllPrivate,
}

impl Conversation {
    /// The channel `channel` of IRC server `server`.
    pub fn room(server: &str, channel: &str) -> Self {
        Conversation::Room(room_key(server, channel))
    }

    /// The private conversation with the contact `jid` (bare).
    pub fn private(jid: &str) -> Self {
        Conversation::Private(jid.to_lowercase())
    }
}

/// The key of the channel `channel` of IRC server `server` (see [`Conversation::Room`]).
pub fn room_key(server: &str, channel: &str) -> String {
    format!("{}/{}", server.to_ascii_lowercase(), channel.to_ascii_lowercase())
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

/// One write to the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// A private message, into its conversation and into the user's `AllPrivate`.
    Private(Entry),
    /// A channel line, into the channel's log (`room` as [`Conversation::Room`] keys it).
    Line {
        /// The channel.
        room: String,
        /// Its id.
        id: u64,
        /// Who said it (empty: the server).
        who: String,
        /// The text.
        body: String,
    },
    /// `user` got every line of `room`'s log from `start` to `end` (ids, inclusive); a
    /// span with the same start written again replaces the earlier end.
    Span {
        /// The channel.
        room: String,
        /// The user's bare JID.
        user: String,
        /// The first line.
        start: u64,
        /// The last line.
        end: u64,
    },
}

/// Where the archive lives. Called on the archive's own thread only, so it may block.
pub trait ArchiveBackend: Send + 'static {
    /// Makes `writes`, in order.
    fn write(&mut self, writes: &[Write]) -> Result<(), ArchiveError>;
    /// One page of `query`.
    fn query(&self, query: &Query) -> Result<Page, ArchiveError>;
    /// Removes everything of `user` (their private messages, their spans, and the
    /// channel lines up to `settled` no other user's span covers); how many entries.
    ///
    /// `settled`: every channel line up to this id is covered by the spans written
    /// before; later lines may be in spans still in memory (`live.rs` writes them every
    /// [`SPANS_EVERY`]) and are never collected.
    fn delete_user(&mut self, user: &str, settled: u64) -> Result<u64, ArchiveError>;
    /// Removes what `retention` no longer keeps, as of `now` (microseconds), and channel
    /// lines up to `settled` no span covers; how many.
    fn trim(&mut self, retention: Retention, now: u64, settled: u64) -> Result<u64, ArchiveError>;
    /// The highest id ever written, so ids keep increasing across restarts.
    fn last_id(&self) -> Result<u64, ArchiveError>;
    /// Makes every write so far durable.
    fn flush(&mut self) -> Result<(), ArchiveError>;
}

/// Work for the archive's thread other than writes. Writes queue apart and are taken in
/// batches; each of these is done after every write queued before it.
enum Control {
    Query(Query, oneshot::Sender<Result<Page, ArchiveError>>),
    /// A user's whole archive, with the id up to which spans were written (`settled`).
    DeleteUser(String, u64),
    /// Old entries, with the id up to which spans were written (`settled`).
    Trim(u64),
    Flush(oneshot::Sender<Result<(), ArchiveError>>),
    /// The write queue is half full: write it now rather than at the next tick.
    Drain,
    /// A write came while the thread slept: take writes every [`WRITE_EVERY`] again.
    Wake,
}

/// The handle the live path and the queries use. Cheap to clone; a disabled archive
/// (`[archive] enabled = false`) takes entries and drops them.
#[derive(Clone, Default)]
pub struct Archive {
    /// The archive's thread and its id clock; `None` when disabled.
    inner: Option<Arc<Shared>>,
}

struct Shared {
    /// Writes for the thread, taken every [`WRITE_EVERY`] (bounded: the live path waits
    /// when the disk cannot keep up).
    writes: mpsc::Sender<Write>,
    /// Everything else for the thread, done as it comes.
    control: std::sync::mpsc::Sender<Control>,
    /// A `Control::Drain` is on its way (one is enough until the thread takes it).
    drain_asked: Arc<AtomicBool>,
    /// The thread sleeps until a write comes (`Control::Wake`): nothing was queued.
    asleep: Arc<AtomicBool>,
    /// The last id given out.
    last_id: AtomicU64,
    /// Microseconds since the epoch, as of the last id given out or the last tick of the
    /// spans' ticker (at most [`SPANS_EVERY`] old while the runtime keeps up): the live
    /// path needs the time only to within seconds (its match window, idle readers), and
    /// reading it here rather than the system clock for each delivery saves a clock read
    /// per recipient of a line.
    clock: AtomicU64,
    /// Which lines each user got (only the router's thread takes it, briefly).
    live: Mutex<live::Live>,
}

impl Shared {
    /// The id of the next entry (see [`Archive::next_id`]).
    fn next_id(&self) -> u64 {
        let now = self.tick();
        let previous = self.last_id.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| Some(now.max(last + 1))).unwrap_or_default();
        now.max(previous + 1)
    }

    /// Reads the system clock into `clock`; the time now (µs).
    fn tick(&self) -> u64 {
        let now = now_micros();
        self.clock.fetch_max(now, Ordering::Relaxed);
        now
    }

    /// Works on the live state and queues the writes it decided.
    async fn with_live(&self, work: impl FnOnce(&mut live::Live, &mut Vec<Write>)) {
        let mut writes = Vec::new();
        work(&mut self.live.lock().unwrap_or_else(std::sync::PoisonError::into_inner), &mut writes);
        for write in writes {
            self.write(write).await;
        }
    }

    /// Queues `write`; past half the queue, asks the thread to take it now.
    async fn write(&self, write: Write) {
        if self.writes.send(write).await.is_err() {
            return tracing::warn!("the archive's thread is gone; a message was not archived");
        }
        // Pairs with the thread's fence between saying it sleeps and looking at the queue
        // a last time: either it sees this write, or this sees it asleep.
        fence(Ordering::SeqCst);
        if self.asleep.swap(false, Ordering::SeqCst) {
            let _ = self.control.send(Control::Wake);
        }
        if self.writes.capacity() < QUEUE / 2 && !self.drain_asked.swap(true, Ordering::Relaxed) {
            let _ = self.control.send(Control::Drain);
        }
    }

    /// Does `work` on the live state, then queues every span in memory: returns the last
    /// id given out then, up to which every channel line is covered by a span queued
    /// (for what collects uncovered lines, which must not take a line whose reader's span
    /// is still in memory).
    async fn settle(&self, work: impl FnOnce(&mut live::Live, &mut Vec<Write>)) -> u64 {
        let mut settled = 0;
        self.with_live(|live, writes| {
            work(live, writes);
            live.flush(None, writes);
            // Under the lock that every channel line's id is given out under.
            settled = self.last_id.load(Ordering::Relaxed);
        })
        .await;
        settled
    }

    /// Sends `control` to the thread.
    fn control(&self, control: Control) -> Result<(), ArchiveError> {
        self.control.send(control).map_err(|_| ArchiveError::Disabled)
    }
}

/// Microseconds since the epoch now.
pub fn now_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

impl Archive {
    /// An archive in `backend`, served by a thread of its own, keeping what `retention`
    /// says (trimmed at start and hourly after).
    ///
    /// The backend is only ever used on that thread (PostgreSQL's blocking client may not
    /// run on the runtime's): this waits for it to read the last id given out.
    pub fn start(backend: impl ArchiveBackend, retention: Retention) -> Result<Archive, ArchiveError> {
        let (writes, writes_rx) = mpsc::channel(QUEUE);
        let (control, control_rx) = std::sync::mpsc::channel();
        let drain_asked = Arc::new(AtomicBool::new(false));
        let asleep = Arc::new(AtomicBool::new(false));
        let (drain_asked_by_thread, asleep_for_thread) = (drain_asked.clone(), asleep.clone());
        let (started, last_id) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("archive".into())
            .spawn(move || {
                let last_id = backend.last_id();
                let ready = last_id.is_ok();
                let _ = started.send(last_id);
                if ready {
                    serve(backend, writes_rx, control_rx, &drain_asked_by_thread, &asleep_for_thread, retention);
                }
            })
            .map_err(|e| ArchiveError::Backend { action: "start its thread", message: e.to_string() })?;
        let last_id = last_id
            .recv()
            .map_err(|_| ArchiveError::Backend { action: "start its thread", message: "the thread ended at once".into() })??;
        let shared = Arc::new(Shared { writes, control, drain_asked, asleep, last_id: AtomicU64::new(last_id), clock: AtomicU64::new(now_micros()), live: Mutex::default() });
        // Spans are written every half second, idle cursors forgotten, and old entries
        // removed hourly (first at start), each time after the spans are written.
        let weak = Arc::downgrade(&shared);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(SPANS_EVERY);
            let mut trimmed: Option<tokio::time::Instant> = None;
            let mut swept = tokio::time::Instant::now();
            loop {
                every.tick().await;
                let Some(shared) = weak.upgrade() else { return };
                shared.tick();
                let sweep = swept.elapsed() >= IDLE_CURSOR / 10;
                if sweep {
                    swept = tokio::time::Instant::now();
                }
                let before = now_micros().saturating_sub(IDLE_CURSOR.as_micros() as u64);
                let settled = shared
                    .settle(|live, writes| {
                        if sweep {
                            live.forget_idle(before, writes);
                        }
                    })
                    .await;
                if trimmed.is_none_or(|at| at.elapsed() >= TRIM_EVERY) {
                    trimmed = Some(tokio::time::Instant::now());
                    let _ = shared.control(Control::Trim(settled));
                }
            }
        });
        Ok(Archive { inner: Some(shared) })
    }

    /// Whether entries are kept.
    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// The id of the next entry: now in microseconds, above every id given before.
    /// `None` when the archive is off.
    pub fn next_id(&self) -> Option<u64> {
        Some(self.inner.as_ref()?.next_id())
    }

    /// Archives the private message `entry` (its id from [`Archive::next_id`]). Waits
    /// only when the archive's thread is [`QUEUE`] writes behind.
    pub async fn append(&self, entry: Entry) {
        if let Some(shared) = &self.inner {
            shared.write(Write::Private(entry)).await;
        }
    }

    /// `user` got (or sent) the line `body` of `who` (empty: the server) in `room` (a
    /// [`Conversation::Room`] key), during the room's `epoch` (a new one whenever the user
    /// may have missed lines: see `live.rs`): its archive id, shared with every other user
    /// of the gateway who got the same line. `None` when the archive is off. `place` is
    /// the room's own (see [`Place`]).
    #[allow(clippy::too_many_arguments, reason = "each is one fact of the line")]
    pub async fn room_line(&self, place: &mut Option<Place>, user: &str, room: &str, epoch: u64, who: &str, body: &str) -> Option<u64> {
        let shared = self.inner.as_ref()?;
        let mut id = 0;
        // The clock as of the last new line or tick: a line's copies mostly come within
        // the same wake-up as its first (see `Shared::clock`).
        let now = shared.clock.load(Ordering::Relaxed);
        shared.with_live(|live, writes| id = live.saw(place, room, user, epoch, who, body, now, || shared.next_id(), writes)).await;
        Some(id)
    }

    /// One page of `query`, after everything archived before it was asked.
    pub async fn query(&self, query: Query) -> Result<Page, ArchiveError> {
        let shared = self.inner.as_ref().ok_or(ArchiveError::Disabled)?;
        shared.with_live(|live, writes| live.flush(Some(&query.user), writes)).await;
        let (tx, rx) = oneshot::channel();
        shared.control(Control::Query(query, tx))?;
        rx.await.map_err(|_| ArchiveError::Disabled)?
    }

    /// Deletes `user`'s whole archive (after what is queued for it).
    pub async fn delete_user(&self, user: &str) {
        if let Some(shared) = &self.inner {
            // Every span written first, so that the lines others got stay.
            let settled = shared.settle(|live, writes| live.forget_user(user, writes)).await;
            let _ = shared.control(Control::DeleteUser(user.to_owned(), settled));
        }
    }

    /// Waits until everything archived so far is durable.
    pub async fn flush(&self) -> Result<(), ArchiveError> {
        let Some(shared) = &self.inner else { return Ok(()) };
        shared.with_live(|live, writes| live.flush(None, writes)).await;
        let (tx, rx) = oneshot::channel();
        shared.control(Control::Flush(tx))?;
        rx.await.map_err(|_| ArchiveError::Disabled)?
    }
}

/// The archive's thread: every [`WRITE_EVERY`] while writes come, or as soon as other
/// work comes, writes what queued up (in batches of [`BATCH`]), then does that work;
/// after a round that found nothing to write, sleeps until a write or work comes.
/// Everything a task queued before asking for the work is written first (one task sends
/// both, in order). Ends when every handle is gone.
fn serve(mut backend: impl ArchiveBackend, mut writes: mpsc::Receiver<Write>, control: std::sync::mpsc::Receiver<Control>, drain_asked: &AtomicBool, asleep: &AtomicBool, retention: Retention) {
    use std::sync::mpsc::RecvTimeoutError;
    let mut batch = Vec::with_capacity(BATCH);
    let mut failing = Failing::default();
    let mut awake = true;
    loop {
        let next = if awake { control.recv_timeout(WRITE_EVERY) } else { control.recv().map_err(|_| RecvTimeoutError::Disconnected) };
        if let Ok(Control::Wake) = next {
            // Let this round's lines queue up for one batch.
            awake = true;
            continue;
        }
        drain_asked.store(false, Ordering::Relaxed);
        let mut took = 0;
        while let Ok(write) = writes.try_recv() {
            took += 1;
            batch.push(write);
            if batch.len() % BATCH == 0 {
                write_batch(&mut backend, &mut batch, &mut failing);
            }
        }
        write_batch(&mut backend, &mut batch, &mut failing);
        match next {
            Ok(Control::Drain) | Err(RecvTimeoutError::Timeout) => {}
            Ok(work) => run(&mut backend, work, retention),
            Err(RecvTimeoutError::Disconnected) => break,
        }
        // Nothing came for a whole round and nothing waits for a retry: sleep, unless a
        // write came meanwhile (looked at after saying so: see `Shared::write`).
        awake = took > 0 || !batch.is_empty() || {
            asleep.store(true, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            let came = !writes.is_empty();
            if came {
                // Taken back (a writer that took it first has sent a `Wake`: harmless).
                asleep.store(false, Ordering::SeqCst);
            }
            came
        };
    }
    if !batch.is_empty() {
        // Lines kept through a failure: one last try.
        if let Err(error) = backend.write(&batch) {
            tracing::warn!(%error, lost = batch.len(), "messages could not be archived");
        }
    }
    if let Err(error) = backend.flush() {
        tracing::warn!(%error, "the archive could not be flushed at shutdown");
    }
}

/// Since when the archive's writes fail, if they do.
#[derive(Default)]
struct Failing {
    since: Option<std::time::Instant>,
}

/// Writes `batch` and empties it. A failed write (the database away: a PostgreSQL archive
/// reads before it writes, and a lost connection fails the read) is kept and tried again
/// at the next round, for [`RETRY_FOR`] and up to [`RETRY_AT_MOST`] writes; writing a
/// batch again is harmless (every write puts a value under its key). Past that, what
/// waits is given up, and counted in the log.
fn write_batch(backend: &mut impl ArchiveBackend, batch: &mut Vec<Write>, failing: &mut Failing) {
    if batch.is_empty() {
        return;
    }
    match backend.write(batch) {
        Ok(()) => {
            if let Some(since) = failing.since.take() {
                tracing::info!(after_ms = since.elapsed().as_millis() as u64, written = batch.len(), "the archive writes again");
            }
            batch.clear();
        }
        Err(error) => {
            let since = *failing.since.get_or_insert_with(|| {
                tracing::warn!(%error, waiting = batch.len(), "the archive cannot write; keeping its lines and trying again");
                std::time::Instant::now()
            });
            if since.elapsed() > RETRY_FOR || batch.len() >= RETRY_AT_MOST {
                tracing::warn!(%error, lost = batch.len(), "messages could not be archived");
                failing.since = None;
                batch.clear();
            }
        }
    }
}

fn run(backend: &mut impl ArchiveBackend, work: Control, retention: Retention) {
    match work {
        Control::Drain | Control::Wake => {}
        Control::Query(query, answer) => {
            let _ = answer.send(backend.query(&query));
        }
        Control::DeleteUser(user, settled) => match backend.delete_user(&user, settled) {
            Ok(removed) => tracing::info!(%user, removed, "archive deleted"),
            Err(error) => tracing::warn!(%user, %error, "the archive could not be deleted"),
        },
        Control::Trim(settled) => match backend.trim(retention, now_micros(), settled) {
            Ok(0) => {}
            Ok(removed) => tracing::info!(removed, "old archived messages removed"),
            Err(error) => tracing::warn!(%error, "old archived messages could not be removed"),
        },
        Control::Flush(done) => {
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

    /// A backend whose first `failures` writes fail, as a PostgreSQL archive's do while
    /// the database is away; counts what it wrote (where a test sees it, the backend
    /// being on the archive's thread).
    struct Flaky {
        failures: usize,
        written: Arc<AtomicU64>,
    }

    impl ArchiveBackend for Flaky {
        fn write(&mut self, writes: &[Write]) -> Result<(), ArchiveError> {
            if self.failures > 0 {
                self.failures -= 1;
                return Err(ArchiveError::Backend { action: "read", message: "connection closed".into() });
            }
            self.written.fetch_add(writes.len() as u64, Ordering::SeqCst);
            Ok(())
        }
        fn query(&self, _: &Query) -> Result<Page, ArchiveError> {
            Ok(Page { items: Vec::new(), complete: true })
        }
        fn delete_user(&mut self, _: &str, _: u64) -> Result<u64, ArchiveError> {
            Ok(0)
        }
        fn trim(&mut self, _: Retention, _: u64, _: u64) -> Result<u64, ArchiveError> {
            Ok(0)
        }
        fn last_id(&self) -> Result<u64, ArchiveError> {
            Ok(0)
        }
        fn flush(&mut self) -> Result<(), ArchiveError> {
            Ok(())
        }
    }

    fn line(id: u64) -> Write {
        Write::Line { room: "irc.x/#c".into(), id, who: "n".into(), body: "b".into() }
    }

    #[test]
    fn lines_whose_write_failed_are_kept_and_written_once_the_database_answers() {
        let mut backend = Flaky { failures: 3, written: Arc::default() };
        let mut failing = Failing::default();
        let mut batch = vec![line(1), line(2)];
        for _ in 0..3 {
            write_batch(&mut backend, &mut batch, &mut failing);
            assert_eq!(batch.len(), 2, "kept while the writes fail");
        }
        batch.push(line(3));
        write_batch(&mut backend, &mut batch, &mut failing);
        assert!(batch.is_empty());
        assert_eq!(backend.written.load(Ordering::SeqCst), 3, "every line written, once");
        assert!(failing.since.is_none());
    }

    #[test]
    fn a_failing_archive_gives_up_past_its_bound_rather_than_grow() {
        let mut backend = Flaky { failures: usize::MAX, written: Arc::default() };
        let mut failing = Failing::default();
        let mut batch: Vec<Write> = (0..RETRY_AT_MOST as u64).map(line).collect();
        write_batch(&mut backend, &mut batch, &mut failing);
        assert!(batch.is_empty(), "given up (and counted in the log)");
    }

    /// Waits up to 5 s for `condition`.
    async fn eventually(what: &str, condition: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !condition() {
            assert!(std::time::Instant::now() < deadline, "not within 5 s: {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn an_idle_archive_thread_sleeps_and_the_next_write_wakes_it() {
        let written = Arc::new(AtomicU64::new(0));
        let archive = Archive::start(Flaky { failures: 0, written: written.clone() }, Retention { max_age: None, max_count: None }).unwrap();
        let shared = archive.inner.clone().unwrap();
        let entry = |id| Entry { id, user: "a@x".into(), conversation: Conversation::private("b%irc.x@gw"), direction: Direction::FromContact, who: "b%irc.x@gw".into(), body: "b".into() };
        for round in 1..=3 {
            eventually("the thread asleep, nothing queued", || shared.asleep.load(Ordering::SeqCst)).await;
            archive.append(entry(round)).await;
            // Written by the thread on its own: no query, no flush asked.
            eventually("the write written", || written.load(Ordering::SeqCst) == round).await;
        }
    }

    #[tokio::test]
    async fn ids_increase_even_within_one_microsecond_and_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let db = ::sled::Config::new().path(dir.path()).open().unwrap();
        let archive = Archive::start(KeyedArchive::new(Box::new(crate::store::sled::SledTree(db.open_tree("archive").unwrap()))), Retention { max_age: None, max_count: None }).unwrap();
        let ids: Vec<u64> = (0..1000).map(|_| archive.next_id().unwrap()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        let far = ids[999] + 10_000_000_000;
        let entry = |id| Entry { id, user: "a@x".into(), conversation: Conversation::private("b%irc.x@gw"), direction: Direction::FromContact, who: "b%irc.x@gw".into(), body: "b".into() };
        archive.append(entry(far)).await;
        archive.flush().await.unwrap();
        drop(archive);
        // The thread ends once its handles are gone; a new archive continues above.
        let archive = Archive::start(KeyedArchive::new(Box::new(crate::store::sled::SledTree(db.open_tree("archive").unwrap()))), Retention { max_age: None, max_count: None }).unwrap();
        assert!(archive.next_id().unwrap() > far);
    }

    #[test]
    fn channels_a_server_tells_apart_never_share_a_log() {
        assert_eq!(room_key("IRC.X", "#Rust"), room_key("irc.x", "#rust"));
        // Different channels under CASEMAPPING=ascii (ngIRCd, UnrealIRCd).
        for (a, b) in [("#ops[", "#ops{"), ("#ops]", "#ops}"), ("#ops\\", "#ops|"), ("#ops~", "#ops^")] {
            assert_ne!(room_key("irc.x", a), room_key("irc.x", b), "{a} {b}");
        }
    }

    #[tokio::test]
    async fn a_query_sees_what_was_appended_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = ::sled::Config::new().path(dir.path()).open().unwrap();
        let archive = Archive::start(KeyedArchive::new(Box::new(crate::store::sled::SledTree(db.open_tree("archive").unwrap()))), Retention { max_age: None, max_count: None }).unwrap();
        let Conversation::Room(room) = Conversation::room("irc.x", "#C") else { unreachable!() };
        for n in 0..2000 {
            let body = n.to_string();
            let a = archive.room_line(&mut None, "a@x", &room, 1, "n", &body).await.unwrap();
            if n >= 1000 {
                // b joined later: the same lines, the same ids.
                assert_eq!(archive.room_line(&mut None, "b@x", &room, 1, "n", &body).await, Some(a));
            }
        }
        // Queried at once: the spans the live path has not written yet are written first.
        let query = |user: &str| Query { user: user.into(), conversation: Conversation::room("IRC.X", "#c"), start: None, end: None, after: None, before: Some(None), max: 3 };
        let page = archive.query(query("a@x")).await.unwrap();
        let bodies: Vec<&str> = page.items.iter().map(|i| i.body.as_str()).collect();
        assert_eq!(bodies, ["1997", "1998", "1999"]);
        assert!(!page.complete);
        let first_of_b = archive.query(Query { before: None, max: 2, ..query("b@x") }).await.unwrap();
        let bodies: Vec<&str> = first_of_b.items.iter().map(|i| i.body.as_str()).collect();
        assert_eq!(bodies, ["1000", "1001"], "b's archive starts when b got its first line");
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
