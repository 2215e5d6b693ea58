//! `xmpp-gateway migrate-store --from sled:PATH --to postgres:URL`: moves an installation
//! from one engine to the other, verified.
//!
//! Both engines hold the same entries (see [`super::backend`]), so the move copies every
//! entry of every tree verbatim: sealed passwords stay sealed by the same key (nothing is
//! decrypted, the key file is not needed), archive ids keep meaning the same lines. The
//! target must be empty (a second run refuses rather than merge). After the copy the
//! target is opened again and read back: every tree's count and every entry compared.
//! Run it with the gateway stopped (sled's lock refuses a running one).

use std::fmt;
use std::ops::Bound;
use std::path::PathBuf;
use std::sync::Arc;

use super::backend::{Backend, BackendError, Batch, Ordered, Tree};
use super::postgres::{PgBackend, PgTarget};
use super::sled::{OpenError, SledBackend};

/// Archive entries per write of the copy.
const ARCHIVE_BATCH: usize = 2000;

/// One side of a move: `sled:PATH` or `postgres:URL`.
#[derive(Clone)]
pub enum Location {
    /// A sled store directory.
    Sled(PathBuf),
    /// A PostgreSQL database (boxed: a parsed configuration and a TLS setup are large).
    Postgres(Box<PgTarget>),
}

impl fmt::Debug for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Sled(path) => write!(f, "sled:{}", path.display()),
            Location::Postgres(target) => f.write_str(target.name()),
        }
    }
}

/// Why a move failed; no message holds a password.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// A location that is neither `sled:PATH` nor `postgres:URL`.
    #[error("{0}")]
    Location(String),
    /// A store could not be opened.
    #[error("cannot open {store}: {reason}")]
    Open {
        /// The store, as its engine names it.
        store: String,
        /// Why.
        reason: String,
    },
    /// The target already holds data.
    #[error("{store} is not empty ({what}); migrate-store only fills an empty store")]
    NotEmpty {
        /// The target.
        store: String,
        /// What it holds.
        what: String,
    },
    /// Reading or writing failed.
    #[error("cannot {action} {store}: {source}")]
    Db {
        /// What was being done.
        action: &'static str,
        /// The store.
        store: String,
        /// The engine's error.
        #[source]
        source: BackendError,
    },
    /// The read-back found the target different from the source.
    #[error("verification failed: {0}")]
    Mismatch(String),
}

impl Location {
    /// Parses `sled:PATH` or `postgres:URL` (a bare `postgres://...` URL is taken too);
    /// `ca_file` is for PostgreSQL's TLS.
    pub fn parse(value: &str, ca_file: Option<&std::path::Path>) -> Result<Location, MigrateError> {
        if let Some(path) = value.strip_prefix("sled:") {
            return Ok(Location::Sled(PathBuf::from(path)));
        }
        let url = value.strip_prefix("postgres:").filter(|rest| !rest.starts_with("//")).unwrap_or(value);
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return PgTarget::new(url, ca_file).map(|target| Location::Postgres(Box::new(target))).map_err(|e| MigrateError::Location(e.to_string()));
        }
        Err(MigrateError::Location("a store is sled:PATH or postgres:URL (postgres://user:password@host/db)".into()))
    }

    async fn open(&self) -> Result<Arc<dyn Backend>, MigrateError> {
        match self {
            Location::Sled(path) => match SledBackend::open(path) {
                Ok(backend) => Ok(Arc::new(backend)),
                Err(OpenError::Locked) => Err(MigrateError::Open { store: format!("{self:?}"), reason: "it is locked: stop the gateway first".into() }),
                Err(OpenError::Db(e)) => Err(MigrateError::Open { store: format!("{self:?}"), reason: e.to_string() }),
            },
            Location::Postgres(target) => match PgBackend::open((**target).clone()).await {
                Ok(backend) => Ok(Arc::new(backend)),
                Err(e) => Err(MigrateError::Open { store: target.name().to_owned(), reason: e.to_string() }),
            },
        }
    }
}

/// What was moved: entries per tree, and archive entries.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Moved {
    /// Entries of each small tree, by name.
    pub trees: Vec<(&'static str, usize)>,
    /// Entries of the archive.
    pub archive: usize,
}

impl fmt::Display for Moved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, count) in &self.trees {
            write!(f, "{name} {count}, ")?;
        }
        write!(f, "archive {}", self.archive)
    }
}

/// Turns a database error while doing `action` on `store` into a [`MigrateError`].
fn failure(action: &'static str, store: &str) -> impl FnOnce(BackendError) -> MigrateError {
    let store = store.to_owned();
    move |source| MigrateError::Db { action, store, source }
}

/// Copies everything of `from` into the empty `to`, then reads `to` back and compares.
pub async fn migrate(from: &Location, to: &Location) -> Result<Moved, MigrateError> {
    let source = from.open().await?;
    let target = to.open().await?;
    let failed = |action, store: &dyn Backend| failure(action, store.name());
    for tree in Tree::ALL {
        if target.len(tree) > 0 {
            return Err(MigrateError::NotEmpty { store: target.name().to_owned(), what: format!("{} entries in {}", target.len(tree), tree.name()) });
        }
    }
    let mut moved = Moved::default();
    for tree in Tree::ALL {
        let entries = source.scan_prefix(tree, b"").map_err(failed("read", &*source))?;
        for (key, value) in &entries {
            target.insert(tree, key, value).map_err(failed("write", &*target))?;
        }
        moved.trees.push((tree.name(), entries.len()));
    }
    target.flush().await.map_err(failed("flush", &*target))?;
    // The archives are used on a thread of their own (PostgreSQL's blocking client).
    let (source_archive, target_archive) = (source.archive().map_err(failed("open", &*source))?, target.archive().map_err(failed("open", &*target))?);
    let (source_name, target_name) = (source.name().to_owned(), target.name().to_owned());
    moved.archive = std::thread::spawn(move || copy_archive(&*source_archive, target_archive, &source_name, &target_name))
        .join()
        .map_err(|_| MigrateError::Mismatch("the archive's copy panicked".into()))??;
    drop(target);
    verify(&*source, to, &moved).await?;
    Ok(moved)
}

/// Copies the archive, in key order, refusing a target archive that is not empty.
fn copy_archive(source: &dyn Ordered, mut target: Box<dyn Ordered>, source_name: &str, target_name: &str) -> Result<usize, MigrateError> {
    let failed = failure;
    if target.range(Bound::Unbounded, Bound::Unbounded, false).next().transpose().map_err(failed("read", target_name))?.is_some() {
        return Err(MigrateError::NotEmpty { store: target_name.to_owned(), what: "its archive has entries".into() });
    }
    let mut copied = 0;
    let mut batch = Batch::default();
    for entry in source.range(Bound::Unbounded, Bound::Unbounded, false) {
        let (key, value) = entry.map_err(failed("read", source_name))?;
        batch.insert(key, value);
        copied += 1;
        if batch.writes.len() >= ARCHIVE_BATCH {
            target.apply(std::mem::take(&mut batch)).map_err(failed("write", target_name))?;
        }
    }
    target.apply(batch).map_err(failed("write", target_name))?;
    target.flush().map_err(failed("flush", target_name))?;
    Ok(copied)
}

/// Opens `to` again (PostgreSQL: every row read from the database, not the copy's memory)
/// and compares it with `source`: counts, then every entry.
async fn verify(source: &dyn Backend, to: &Location, moved: &Moved) -> Result<(), MigrateError> {
    let target = to.open().await?;
    let failed = |action, store: &dyn Backend| failure(action, store.name());
    for tree in Tree::ALL {
        let expected = source.scan_prefix(tree, b"").map_err(failed("read", source))?;
        let found = target.scan_prefix(tree, b"").map_err(failed("read", &*target))?;
        if found.len() != expected.len() {
            return Err(MigrateError::Mismatch(format!("{}: {} entries copied, {} read back", tree.name(), expected.len(), found.len())));
        }
        if let Some(((key, _), _)) = expected.iter().zip(&found).find(|(a, b)| a != b) {
            return Err(MigrateError::Mismatch(format!("{}: the entry {:?} differs", tree.name(), String::from_utf8_lossy(key))));
        }
    }
    let (source_archive, target_archive) = (source.archive().map_err(failed("open", source))?, target.archive().map_err(failed("open", &*target))?);
    let expected = moved.archive;
    std::thread::spawn(move || -> Result<(), MigrateError> {
        let mut found = 0;
        let mut theirs = target_archive.range(Bound::Unbounded, Bound::Unbounded, false);
        for ours in source_archive.range(Bound::Unbounded, Bound::Unbounded, false) {
            let read = |entry: Option<Result<_, BackendError>>| entry.transpose().map_err(|e| MigrateError::Mismatch(format!("reading the archive back: {e}")));
            let (ours, theirs) = (read(Some(ours))?, read(theirs.next())?);
            if ours != theirs {
                return Err(MigrateError::Mismatch(format!("the archive differs at entry {found}")));
            }
            found += 1;
        }
        if theirs.next().is_some() || found != expected {
            return Err(MigrateError::Mismatch(format!("archive: {expected} entries copied, {found} compared")));
        }
        Ok(())
    })
    .join()
    .map_err(|_| MigrateError::Mismatch("the archive's check panicked".into()))?
}
