//! The embedded engine, the default: a sled database in one directory, a sled tree per
//! [`Tree`] and one for the archive (`archive`).
//!
//! Durability: a write is in sled's memory at once; [`Backend::flush`] runs sled's
//! blocking flush (write and fsync) on Tokio's blocking pool, one at a time, each
//! covering every write made before it started, so writers waiting together share one
//! fsync (group commit).

use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bridge_core::BoxFuture;

use super::backend::{Backend, BackendError, Batch, Entries, Entry, Ordered, Tree};

/// Memory sled may keep of the database's pages (its default is 1 GiB, which the
/// archive's writes would fill over the process's life: pages are read back from the
/// file when needed).
const SLED_CACHE_BYTES: u64 = 32 * 1024 * 1024;
/// The archive's tree.
const ARCHIVE_TREE: &str = "archive";
/// How long [`SledBackend::open`] keeps retrying while the store is locked.
const LOCK_RETRY_FOR: Duration = Duration::from_secs(2);
const LOCK_RETRY_EVERY: Duration = Duration::from_millis(20);

/// Why sled could not be opened.
#[derive(Debug)]
pub enum OpenError {
    /// Another process (or another open store) holds the directory's lock.
    Locked,
    /// Anything else.
    Db(sled::Error),
}

/// The store's sled database. Cheap to clone.
#[derive(Clone)]
pub struct SledBackend {
    inner: Arc<Inner>,
}

struct Inner {
    /// The database, for flushes and the archive's tree.
    db: sled::Db,
    /// The trees of [`Tree::ALL`], in its order.
    trees: [sled::Tree; 4],
    /// `the store at DIR`, for errors.
    name: String,
    /// Group commit: one flush at a time, and each covers every write made before it
    /// started, so writers waiting together share one fsync.
    flushing: tokio::sync::Mutex<()>,
    /// Flush tickets handed out: each writer takes one after its write.
    flush_tickets: AtomicU64,
    /// The highest ticket a finished flush covered.
    flushed_ticket: AtomicU64,
    /// What tests see of the fsyncs (how many, whether one is running); nothing outside tests.
    fsync_probe: FsyncProbe,
}

/// Lets tests watch the fsyncs: that writers waiting together share one, and that the
/// runtime's thread runs other tasks while one is in progress. Empty outside tests.
#[derive(Default)]
pub struct FsyncProbe {
    /// How many fsyncs ran.
    #[cfg(test)]
    pub count: AtomicU64,
    /// Whether one is running now.
    #[cfg(test)]
    pub running: std::sync::atomic::AtomicBool,
}

impl FsyncProbe {
    /// Runs the fsync `sync`, seen by tests.
    fn around<T>(&self, sync: impl FnOnce() -> T) -> T {
        #[cfg(test)]
        {
            self.count.fetch_add(1, SeqCst);
            self.running.store(true, SeqCst);
            let result = sync();
            self.running.store(false, SeqCst);
            result
        }
        #[cfg(not(test))]
        sync()
    }
}

impl SledBackend {
    /// Opens (creating if needed) the database in `dir`, waiting up to two seconds for its
    /// lock.
    ///
    /// sled 0.34 releases its file lock only when the last of its internal handles is gone,
    /// and its IO threads may still hold some for a moment after the last `Db` was dropped;
    /// so a store closed and reopened in the same process can briefly look locked. Another
    /// process holding the lock still fails, only a little later.
    pub fn open(dir: &Path) -> Result<SledBackend, OpenError> {
        let deadline = Instant::now() + LOCK_RETRY_FOR;
        let db = loop {
            match sled::Config::new().path(dir).cache_capacity(SLED_CACHE_BYTES).open() {
                Ok(db) => break db,
                Err(e) if is_lock_error(&e) => {
                    if Instant::now() >= deadline {
                        return Err(OpenError::Locked);
                    }
                    std::thread::sleep(LOCK_RETRY_EVERY);
                }
                Err(e) => return Err(OpenError::Db(e)),
            }
        };
        let open = |tree: Tree| db.open_tree(tree.name()).map_err(OpenError::Db);
        let trees = [open(Tree::Users)?, open(Tree::BridgeState)?, open(Tree::Persistent)?, open(Tree::Meta)?];
        Ok(SledBackend {
            inner: Arc::new(Inner {
                db,
                trees,
                name: format!("the store at {}", dir.display()),
                flushing: tokio::sync::Mutex::new(()),
                flush_tickets: AtomicU64::new(0),
                flushed_ticket: AtomicU64::new(0),
                fsync_probe: FsyncProbe::default(),
            }),
        })
    }

    fn tree(&self, tree: Tree) -> &sled::Tree {
        &self.inner.trees[tree.index()]
    }

    /// The fsyncs, for tests.
    #[cfg(test)]
    pub fn fsync_probe(&self) -> &FsyncProbe {
        &self.inner.fsync_probe
    }

    /// Writes and fsyncs everything written so far, on this thread (at start-up).
    pub fn flush_blocking(&self) -> Result<(), BackendError> {
        self.inner.db.flush()?;
        Ok(())
    }

    /// Writes and fsyncs everything written so far, sharing the fsync with writers waiting
    /// together.
    async fn flush_grouped(self) -> Result<(), BackendError> {
        // Our writes happened before this ticket was taken; a flush that starts after
        // it was taken covers them.
        let ticket = self.inner.flush_tickets.fetch_add(1, SeqCst) + 1;
        let _one_at_a_time = self.inner.flushing.lock().await;
        if self.inner.flushed_ticket.load(SeqCst) >= ticket {
            return Ok(());
        }
        let covers = self.inner.flush_tickets.load(SeqCst);
        // Not sled's `flush_async`: in sled 0.34.7 it runs the flush on sled's own IO
        // thread pool, where concurrent flushes can occupy every thread while waiting for
        // log writes queued on that same pool, deadlocking forever (spacejam/sled#1308,
        // fixed only on sled's unreleased main branch). A blocking flush on Tokio's
        // blocking pool leaves sled's pool free to do the writes.
        let inner = self.inner.clone();
        match tokio::task::spawn_blocking(move || inner.fsync_probe.around(|| inner.db.flush())).await {
            Ok(result) => result.map(drop)?,
            Err(join_error) if join_error.is_panic() => std::panic::resume_unwind(join_error.into_panic()),
            Err(_) => return Err(BackendError::Aborted),
        }
        self.inner.flushed_ticket.fetch_max(covers, SeqCst);
        Ok(())
    }
}

impl Backend for SledBackend {
    fn name(&self) -> &str {
        &self.inner.name
    }

    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
        Ok(self.tree(tree).get(key)?.map(|value| value.to_vec()))
    }

    fn insert(&self, tree: Tree, key: &[u8], value: &[u8]) -> Result<(), BackendError> {
        self.tree(tree).insert(key, value)?;
        Ok(())
    }

    fn remove(&self, tree: Tree, key: &[u8]) -> Result<bool, BackendError> {
        Ok(self.tree(tree).remove(key)?.is_some())
    }

    fn scan_prefix(&self, tree: Tree, prefix: &[u8]) -> Result<Vec<Entry>, BackendError> {
        self.tree(tree).scan_prefix(prefix).map(|entry| Ok(entry.map(|(k, v)| (k.to_vec(), v.to_vec()))?)).collect()
    }

    fn len(&self, tree: Tree) -> usize {
        self.tree(tree).len()
    }

    fn flush(&self) -> BoxFuture<'static, Result<(), BackendError>> {
        Box::pin(self.clone().flush_grouped())
    }

    fn archive(&self) -> Result<Box<dyn Ordered>, BackendError> {
        Ok(Box::new(SledTree(self.inner.db.open_tree(ARCHIVE_TREE)?)))
    }
}

/// A sled tree as an [`Ordered`] map (the archive's).
pub struct SledTree(pub sled::Tree);

impl Ordered for SledTree {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
        Ok(self.0.get(key)?.map(|value| value.to_vec()))
    }

    fn range<'a>(&'a self, from: Bound<&[u8]>, to: Bound<&[u8]>, backward: bool) -> Entries<'a> {
        let range = self.0.range::<&[u8], _>((from, to));
        let entry = |entry: Result<(sled::IVec, sled::IVec), sled::Error>| Ok(entry.map(|(k, v)| (k.to_vec(), v.to_vec()))?);
        if backward {
            Box::new(range.rev().map(entry))
        } else {
            Box::new(range.map(entry))
        }
    }

    fn apply(&mut self, batch: Batch) -> Result<(), BackendError> {
        let mut sled_batch = sled::Batch::default();
        for (key, value) in batch.writes {
            match value {
                Some(value) => sled_batch.insert(key, value),
                None => sled_batch.remove(key),
            }
        }
        Ok(self.0.apply_batch(sled_batch)?)
    }

    fn flush(&mut self) -> Result<(), BackendError> {
        self.0.flush()?;
        Ok(())
    }
}

/// Whether sled failed to open because another handle holds its file lock. sled 0.34
/// reports this only as an `Io` error of kind `Other` with this message.
fn is_lock_error(error: &sled::Error) -> bool {
    matches!(error, sled::Error::Io(e)
        if e.kind() == std::io::ErrorKind::Other
            && e.to_string().contains("could not acquire lock"))
}
