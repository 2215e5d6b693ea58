//! The one storage trait: what the gateway asks of a database, whichever it is.
//!
//! Everything the gateway keeps is bytes under byte keys in a few named trees ([`Tree`]);
//! the formats (JSON records, sealed passwords, archive keys) belong to the modules above
//! and are the same on every engine, so that `migrate-store` copies trees verbatim and an
//! archive id means the same line after a move. Two engines implement it: sled (the
//! default, embedded: [`super::sled`]) and PostgreSQL ([`super::postgres`]).
//!
//! Two shapes, after how each part is used:
//! - [`Backend`]: the small trees (users, bridges' state, always-on channels, the store's
//!   own facts). Reads are synchronous and cheap (the live path asks them); a write is made
//!   at once, in call order, and [`Backend::flush`] resolves once every write made before
//!   it is durable.
//! - [`Ordered`]: the archive, large and read in ranges, used only by the archive's own
//!   thread, so its calls may block.

use std::ops::Bound;

use bridge_core::BoxFuture;

/// The small trees of [`Backend`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tree {
    /// One record per registered user, keyed by bare JID.
    Users,
    /// The bridges' durable state (outbox, IMAP checkpoints), keyed `user \0 key`.
    BridgeState,
    /// Always-on channels, keyed `user \0 server \0 folded channel`.
    Persistent,
    /// The store's own facts (key check, ban list, one-time conversions done).
    Meta,
}

impl Tree {
    /// Every small tree, in the order `migrate-store` copies them.
    pub const ALL: [Tree; 4] = [Tree::Users, Tree::BridgeState, Tree::Persistent, Tree::Meta];

    /// The tree's name: sled's tree and PostgreSQL's table.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Tree::Users => "users",
            Tree::BridgeState => "bridge_state",
            Tree::Persistent => "persistent",
            Tree::Meta => "meta",
        }
    }

    /// The tree's position in [`Tree::ALL`], for per-tree arrays.
    #[must_use]
    pub fn index(self) -> usize {
        self as usize
    }
}

/// A key and its value.
pub type Entry = (Vec<u8>, Vec<u8>);

/// Why a database call failed. Never holds a password: PostgreSQL's messages name the
/// server and the statement, not the connection string.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// sled failed.
    #[error(transparent)]
    Sled(#[from] sled::Error),
    /// PostgreSQL failed (connecting, a statement, the connection lost).
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
    /// The database is of a newer schema than this gateway knows, or not ours.
    #[error("{0}")]
    Schema(String),
    /// The database did not answer in time (it went silent rather than refuse).
    #[error("the database did not answer within {0:?}")]
    Timeout(std::time::Duration),
    /// A flush could not run: the runtime is shutting down.
    #[error("the flush was aborted because the runtime is shutting down; the latest changes may not be durable")]
    Aborted,
}

/// The small trees: synchronous reads, writes made at once in call order, durability on
/// [`Backend::flush`]. `Send + Sync`: one is shared by every task.
pub trait Backend: Send + Sync + 'static {
    /// How errors name this store, e.g. `the store at /var/lib/xmpp-gateway` or `the
    /// PostgreSQL store gateway@127.0.0.1:5432` (never a password).
    fn name(&self) -> &str;
    /// The value of `key` in `tree`.
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError>;
    /// Sets `key` to `value`; visible to readers at once, durable after the next flush.
    fn insert(&self, tree: Tree, key: &[u8], value: &[u8]) -> Result<(), BackendError>;
    /// Removes `key`; whether it was there.
    fn remove(&self, tree: Tree, key: &[u8]) -> Result<bool, BackendError>;
    /// Every entry whose key starts with `prefix`, in key order.
    fn scan_prefix(&self, tree: Tree, prefix: &[u8]) -> Result<Vec<Entry>, BackendError>;
    /// How many keys `tree` holds (for the status and metrics; cheap).
    fn len(&self, tree: Tree) -> usize;
    /// Resolves once every write made before the call is durable. Needs a Tokio runtime.
    fn flush(&self) -> BoxFuture<'static, Result<(), BackendError>>;
    /// The message archive of the same database.
    fn archive(&self) -> Result<Box<dyn Ordered>, BackendError>;

    /// Reads again from the database the rows under each prefix (one tree each), as
    /// another process may have written them: an instance taking over a user from a dead
    /// one. Nothing to do where this process is the database's only user (sled).
    fn reload(&self, _prefixes: Vec<(Tree, Vec<u8>)>) -> BoxFuture<'static, Result<(), BackendError>> {
        Box::pin(async { Ok(()) })
    }
}

/// Writes applied together: all or none, in order (a later write of a key wins).
#[derive(Debug, Default)]
pub struct Batch {
    /// Each key with its new value, or `None` to remove it.
    pub writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl Batch {
    /// Sets `key` to `value`.
    pub fn insert(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.writes.push((key.into(), Some(value.into())));
    }

    /// Removes `key`.
    pub fn remove(&mut self, key: impl Into<Vec<u8>>) {
        self.writes.push((key.into(), None));
    }

    /// Whether there is nothing to write.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }
}

/// Entries read lazily, in the order asked.
pub type Entries<'a> = Box<dyn Iterator<Item = Result<Entry, BackendError>> + 'a>;

/// An ordered map of byte keys (bytewise order, as sled's and PostgreSQL's `bytea`),
/// read in ranges: the archive's. Used from one thread, so calls may block.
pub trait Ordered: Send + 'static {
    /// The value of `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError>;
    /// The entries between `from` and `to`, ascending, or descending when `backward`;
    /// read as the caller goes (a page of a large range costs a page).
    fn range<'a>(&'a self, from: Bound<&[u8]>, to: Bound<&[u8]>, backward: bool) -> Entries<'a>;
    /// Applies `batch` atomically.
    fn apply(&mut self, batch: Batch) -> Result<(), BackendError>;
    /// Makes every applied batch durable.
    fn flush(&mut self) -> Result<(), BackendError>;
}

/// The bounds of every key starting with `prefix`.
#[must_use]
pub fn prefix_bounds(prefix: &[u8]) -> (Bound<&[u8]>, Bound<Vec<u8>>) {
    // The first key after every key of the prefix: the prefix with its last byte below
    // 0xff raised by one (and what follows cut off); none if it is all 0xff.
    let upper = prefix.iter().rposition(|&b| b != 0xff).map_or(Bound::Unbounded, |at| {
        let mut end = prefix[..=at].to_vec();
        end[at] += 1;
        Bound::Excluded(end)
    });
    (Bound::Included(prefix), upper)
}

/// Every entry of `tree` whose key starts with `prefix`, ascending.
pub fn scan_prefix<'a>(tree: &'a dyn Ordered, prefix: &[u8]) -> Entries<'a> {
    let (from, to) = prefix_bounds(prefix);
    tree.range(from, bound_ref(&to), false)
}

/// `bound` borrowed.
#[must_use]
pub fn bound_ref(bound: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match bound {
        Bound::Included(key) => Bound::Included(key),
        Bound::Excluded(key) => Bound::Excluded(key),
        Bound::Unbounded => Bound::Unbounded,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_ends_before_its_successor() {
        assert_eq!(prefix_bounds(b"ab").1, Bound::Excluded(b"ac".to_vec()));
        assert_eq!(prefix_bounds(b"a\xff").1, Bound::Excluded(b"b".to_vec()));
        assert_eq!(prefix_bounds(b"\xff\xff").1, Bound::Unbounded);
        assert_eq!(prefix_bounds(b"").1, Bound::Unbounded);
    }
}
