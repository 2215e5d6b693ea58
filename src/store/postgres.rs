//! The PostgreSQL engine (`[storage] backend = "postgres"`): a table per [`Tree`] and one
//! for the archive, each `(key bytea PRIMARY KEY, value bytea)`, holding exactly what sled
//! holds (so `migrate-store` copies rows, and archive ids survive a move).
//!
//! - **Schema**: the migrations in `migrations/postgres/`, applied in order at start in one
//!   transaction under an advisory lock (several instances starting together apply them
//!   once); a database of a newer schema than this gateway knows is refused.
//! - **The small trees** are read from memory: every row is loaded at start into a mirror
//!   that writes update at once, in call order (the live path never waits on the
//!   network). One task sends the writes to PostgreSQL in order, many per transaction;
//!   [`Backend::flush`] resolves once the transaction holding every earlier write has
//!   committed. While the database is unreachable the task retries (with backoff) and the
//!   flushes wait: nothing is acknowledged that is not committed, nothing queued is lost
//!   while the process lives.
//! - **The archive** ([`PgArchive`]) is queried, not mirrored: its own connection on the
//!   archive's thread (the blocking `postgres` client), ranges read in growing chunks,
//!   batches written in one transaction; a lost connection is opened again, and a batch is
//!   retried until it commits.
//! - **TLS** when the URL's `sslmode` asks for it (`prefer` or `require`), with rustls:
//!   the server's certificate is always verified, against the webpki roots and `ca_file`
//!   (stricter than libpq's `require`, which does not verify). `prefer`, libpq's default,
//!   is taken as `require` for a host other than the loopback: it falls back to plain
//!   text when the answer to the TLS request is "no", which anyone on the path can give.
//!   `sslmode=disable` is the explicit way to plain text.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bridge_core::BoxFuture;
use tokio::sync::{mpsc, watch};
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::types::ToSql;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::backend::{Backend, BackendError, Batch, Entries, Entry, Ordered, Tree};

/// The schema's migrations, in order: (version, name, SQL). Never edit one that shipped:
/// add the next.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "trees", include_str!("../../migrations/postgres/0001_trees.sql")),
    (2, "cluster", include_str!("../../migrations/postgres/0002_cluster.sql")),
];
/// The advisory lock the migrations run under (any constant; "xgw" and 1).
const MIGRATION_LOCK: i64 = 0x7867_7700_0000_0001;
/// Writes of the small trees per transaction, at most.
const WRITES_PER_COMMIT: usize = 1024;
/// Backoff between attempts while the database is unreachable.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// Rows read per round trip of an archive range: the first chunk (a MAM page is 50),
/// doubled up to the last.
const RANGE_CHUNK_FIRST: i64 = 64;
const RANGE_CHUNK_MAX: i64 = 4096;

/// Where the database is and how to reach it.
#[derive(Clone)]
pub struct PgTarget {
    /// The parsed connection string (holds the password: never printed).
    config: tokio_postgres::Config,
    /// TLS with verification (used when `sslmode` is `prefer` or `require`; see the
    /// module's doc for `prefer`).
    tls: MakeRustlsConnect,
    /// `the PostgreSQL store USER@HOST:PORT/DB`, for errors and logs.
    name: String,
}

/// Why a connection string or CA file was refused.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// The URL does not parse (the message never repeats the URL).
    #[error("storage.url is not a PostgreSQL connection string: {0}")]
    Url(String),
    /// The CA file could not be read.
    #[error("storage.ca_file: {0}")]
    CaFile(std::io::Error),
}

/// Whether `host` is this machine: a Unix socket, `localhost` or a loopback address.
fn is_loopback(host: &Host) -> bool {
    match host {
        Host::Unix(_) => true,
        Host::Tcp(name) => name.eq_ignore_ascii_case("localhost") || name.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback()),
    }
}

impl PgTarget {
    /// Parses `url` (`postgres://user:password@host:port/db?sslmode=require`, or libpq's
    /// `key=value` form); `ca_file` adds trusted certificates for TLS.
    pub fn new(url: &str, ca_file: Option<&Path>) -> Result<PgTarget, TargetError> {
        // tokio-postgres's parse errors do not echo the string (it holds a password).
        let mut config: tokio_postgres::Config = url.parse().map_err(|e: tokio_postgres::Error| TargetError::Url(e.to_string()))?;
        if config.get_ssl_mode() == SslMode::Prefer && !config.get_hosts().iter().all(is_loopback) {
            config.ssl_mode(SslMode::Require);
        }
        let tls = MakeRustlsConnect::new(bridge_net::client_config(ca_file).map_err(TargetError::CaFile)?);
        let host = config.get_hosts().first().map_or_else(
            || "localhost".to_owned(),
            |host| match host {
                Host::Tcp(name) => name.clone(),
                Host::Unix(path) => path.display().to_string(),
            },
        );
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let name = format!(
            "the PostgreSQL store {}@{host}:{port}/{}",
            config.get_user().unwrap_or("?"),
            config.get_dbname().or(config.get_user()).unwrap_or("?")
        );
        Ok(PgTarget { config, tls, name })
    }

    /// How errors name the database.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A new connection, its driver running on the current Tokio runtime.
    pub async fn connect(&self) -> Result<tokio_postgres::Client, BackendError> {
        let (client, connection) = self.config.connect(self.tls.clone()).await?;
        let name = self.name.clone();
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, store = %name, "a PostgreSQL connection ended");
            }
        });
        Ok(client)
    }

    /// A blocking connection, for a thread outside the runtime (the archive's; the
    /// migration tool).
    pub fn connect_blocking(&self) -> Result<postgres::Client, BackendError> {
        Ok(postgres::Config::from(self.config.clone()).connect(self.tls.clone())?)
    }
}

/// Applies the migrations the database lacks, in one transaction under an advisory lock.
pub async fn migrate(client: &mut tokio_postgres::Client) -> Result<(), BackendError> {
    let transaction = client.transaction().await?;
    transaction.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
    // Not the notice "already exists, skipping" at every start.
    transaction.batch_execute("SET LOCAL client_min_messages = warning").await?;
    transaction
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version integer PRIMARY KEY,
                 name text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await?;
    // `try_get`: a table of that name made by another tool (another column type) is an
    // error that says so, not a panic.
    let applied: i32 = transaction.query_one("SELECT coalesce(max(version), 0) FROM schema_migrations", &[]).await?.try_get(0).map_err(|error| {
        BackendError::Schema(format!("the table schema_migrations is not the gateway's (another tool's, in the same database?): {error}"))
    })?;
    let known = MIGRATIONS.last().map_or(0, |(version, ..)| *version);
    if applied > known {
        return Err(BackendError::Schema(format!(
            "the database has schema version {applied}, written by a newer gateway; this one knows up to {known}"
        )));
    }
    for (version, name, sql) in MIGRATIONS.iter().filter(|(version, ..)| *version > applied) {
        transaction.batch_execute(sql).await?;
        transaction.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", &[version, name]).await?;
        tracing::info!(version, name, "database migration applied");
    }
    transaction.commit().await?;
    Ok(())
}

/// The small trees in PostgreSQL, read from a mirror in memory. Cheap to clone.
#[derive(Clone)]
pub struct PgBackend {
    shared: Arc<Shared>,
}

struct Shared {
    /// Where the database is (the archive opens its own connection).
    target: PgTarget,
    /// Every row of the small trees, and the queue of writes not yet sent.
    mirror: RwLock<Mirror>,
    /// The last write committed (a ticket of [`Mirror::issued`]), published by the writer.
    committed: watch::Receiver<u64>,
}

struct Mirror {
    /// The rows of each tree of [`Tree::ALL`], in its order.
    trees: [BTreeMap<Vec<u8>, Vec<u8>>; 4],
    /// Tickets handed out, one per write: the writer commits them in order.
    issued: u64,
    /// The writer's queue. Unbounded: these writes are few (registrations, settings,
    /// checkpoints), and dropping one would lose it.
    queue: mpsc::UnboundedSender<Write>,
}

/// One write of a small tree, for the writer.
struct Write {
    /// Its place in the order of writes.
    ticket: u64,
    /// The table.
    tree: Tree,
    /// The key.
    key: Vec<u8>,
    /// The new value, or `None` to delete the row.
    value: Option<Vec<u8>>,
}

impl PgBackend {
    /// Connects, applies the migrations, loads the small trees and starts the writer.
    pub async fn open(target: PgTarget) -> Result<PgBackend, BackendError> {
        let mut client = target.connect().await?;
        migrate(&mut client).await?;
        let mut trees: [BTreeMap<Vec<u8>, Vec<u8>>; 4] = Default::default();
        for tree in Tree::ALL {
            let rows = client.query(&format!("SELECT key, value FROM {}", tree.name()), &[]).await?;
            trees[tree.index()] = rows.into_iter().map(|row| (row.get(0), row.get(1))).collect();
        }
        let (queue, writes) = mpsc::unbounded_channel();
        let (publish, committed) = watch::channel(0);
        tokio::spawn(write_loop(target.clone(), Some(client), writes, publish));
        Ok(PgBackend { shared: Arc::new(Shared { target, mirror: RwLock::new(Mirror { trees, issued: 0, queue }), committed }) })
    }

    fn write(&self, tree: Tree, key: &[u8], value: Option<&[u8]>) -> Result<Option<Vec<u8>>, BackendError> {
        let mut mirror = self.shared.mirror.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let rows = &mut mirror.trees[tree.index()];
        let old = match value {
            Some(value) => rows.insert(key.to_vec(), value.to_vec()),
            None => rows.remove(key),
        };
        mirror.issued += 1;
        let write = Write { ticket: mirror.issued, tree, key: key.to_vec(), value: value.map(<[u8]>::to_vec) };
        // The writer ends only with the runtime; then nothing can be flushed anyway.
        if mirror.queue.send(write).is_err() {
            return Err(BackendError::Aborted);
        }
        Ok(old)
    }

    fn read<T>(&self, read: impl FnOnce(&Mirror) -> T) -> T {
        read(&self.shared.mirror.read().unwrap_or_else(std::sync::PoisonError::into_inner))
    }
}

impl Backend for PgBackend {
    fn name(&self) -> &str {
        self.shared.target.name()
    }

    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
        Ok(self.read(|mirror| mirror.trees[tree.index()].get(key).cloned()))
    }

    fn insert(&self, tree: Tree, key: &[u8], value: &[u8]) -> Result<(), BackendError> {
        self.write(tree, key, Some(value)).map(drop)
    }

    fn remove(&self, tree: Tree, key: &[u8]) -> Result<bool, BackendError> {
        Ok(self.write(tree, key, None)?.is_some())
    }

    fn scan_prefix(&self, tree: Tree, prefix: &[u8]) -> Result<Vec<Entry>, BackendError> {
        Ok(self.read(|mirror| {
            mirror.trees[tree.index()]
                .range::<[u8], _>((Bound::Included(prefix), Bound::Unbounded))
                .take_while(|(key, _)| key.starts_with(prefix))
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect()
        }))
    }

    fn len(&self, tree: Tree) -> usize {
        self.read(|mirror| mirror.trees[tree.index()].len())
    }

    fn flush(&self) -> BoxFuture<'static, Result<(), BackendError>> {
        let target = self.read(|mirror| mirror.issued);
        let mut committed = self.shared.committed.clone();
        Box::pin(async move {
            committed.wait_for(|done| *done >= target).await.map(drop).map_err(|_| BackendError::Aborted)
        })
    }

    fn archive(&self) -> Result<Box<dyn Ordered>, BackendError> {
        Ok(Box::new(PgArchive::new(self.shared.target.clone())))
    }

    fn reload(&self, prefixes: Vec<(Tree, Vec<u8>)>) -> BoxFuture<'static, Result<(), BackendError>> {
        let flushed = self.flush();
        let backend = self.clone();
        Box::pin(async move {
            // Our own writes first, so that what we read back is not older than them.
            flushed.await?;
            let client = backend.shared.target.connect().await?;
            for (tree, prefix) in prefixes {
                let (_, upper) = super::backend::prefix_bounds(&prefix);
                let rows = match &upper {
                    Bound::Excluded(end) => {
                        let sql = format!("SELECT key, value FROM {} WHERE key >= $1 AND key < $2", tree.name());
                        client.query(&sql, &[&prefix, end]).await?
                    }
                    _ => client.query(&format!("SELECT key, value FROM {} WHERE key >= $1", tree.name()), &[&prefix]).await?,
                };
                let mut mirror = backend.shared.mirror.write().unwrap_or_else(std::sync::PoisonError::into_inner);
                let rows_of_tree = &mut mirror.trees[tree.index()];
                let stale: Vec<Vec<u8>> = rows_of_tree
                    .range::<[u8], _>((Bound::Included(prefix.as_slice()), super::backend::bound_ref(&upper)))
                    .map(|(key, _)| key.clone())
                    .collect();
                for key in stale {
                    rows_of_tree.remove(&key);
                }
                rows_of_tree.extend(rows.into_iter().map(|row| (row.get(0), row.get(1))));
            }
            Ok(())
        })
    }
}

/// Sends the small trees' writes to PostgreSQL in order, many per transaction, and
/// publishes the last committed; retries (reconnecting) until each commits.
async fn write_loop(target: PgTarget, mut client: Option<tokio_postgres::Client>, mut writes: mpsc::UnboundedReceiver<Write>, committed: watch::Sender<u64>) {
    let mut batch: Vec<Write> = Vec::new();
    while let Some(first) = writes.recv().await {
        batch.push(first);
        while batch.len() < WRITES_PER_COMMIT {
            match writes.try_recv() {
                Ok(write) => batch.push(write),
                Err(_) => break,
            }
        }
        let mut backoff = RETRY_FIRST;
        let mut failing_since: Option<Instant> = None;
        loop {
            let attempt = match client.as_mut() {
                Some(client) => commit(client, &batch).await,
                None => match target.connect().await {
                    Ok(new) => commit(client.insert(new), &batch).await,
                    Err(error) => Err(error),
                },
            };
            match attempt {
                Ok(()) => break,
                Err(error) => {
                    if failing_since.is_none() {
                        tracing::warn!(%error, store = %target.name(), waiting = batch.len(), "cannot write to the database; retrying until it answers");
                    }
                    failing_since.get_or_insert_with(Instant::now);
                    if client.as_ref().is_none_or(tokio_postgres::Client::is_closed) {
                        client = None;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(RETRY_MAX);
                }
            }
        }
        if let Some(since) = failing_since {
            tracing::info!(store = %target.name(), after_ms = since.elapsed().as_millis() as u64, "the database answers again; queued writes committed");
        }
        if let Some(last) = batch.last() {
            committed.send_replace(last.ticket);
        }
        batch.clear();
    }
}

/// Writes `batch` in one transaction, in order.
async fn commit(client: &mut tokio_postgres::Client, batch: &[Write]) -> Result<(), BackendError> {
    let transaction = client.transaction().await?;
    for write in batch {
        let table = write.tree.name();
        match &write.value {
            Some(value) => {
                let sql = format!("INSERT INTO {table} (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value");
                transaction.execute(&sql, &[&write.key, value]).await?;
            }
            None => {
                transaction.execute(&format!("DELETE FROM {table} WHERE key = $1"), &[&write.key]).await?;
            }
        }
    }
    transaction.commit().await?;
    Ok(())
}

/// The archive table, on a blocking connection of its own (the archive's thread).
pub struct PgArchive {
    /// Where to reconnect to.
    target: PgTarget,
    /// The connection and its prepared statements (by SQL), opened on first use (on the
    /// archive's thread: the blocking client may not start inside the runtime's);
    /// `RefCell` because reads take `&self` and the client needs `&mut` (one thread uses it).
    connection: RefCell<Option<Connection>>,
}

struct Connection {
    /// The open connection.
    client: postgres::Client,
    /// Statements prepared on it, by their SQL.
    statements: HashMap<String, postgres::Statement>,
}

impl Connection {
    fn open(target: &PgTarget) -> Result<Connection, BackendError> {
        Ok(Connection { client: target.connect_blocking()?, statements: HashMap::new() })
    }

    fn prepared(&mut self, sql: String) -> Result<postgres::Statement, BackendError> {
        if let Some(statement) = self.statements.get(&sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(&sql)?;
        self.statements.insert(sql, statement.clone());
        Ok(statement)
    }
}

impl PgArchive {
    /// The archive table of `target`; connects on first use, which blocks and must not
    /// happen on a thread running async tasks.
    #[must_use]
    pub fn new(target: PgTarget) -> PgArchive {
        PgArchive { target, connection: RefCell::new(None) }
    }

    /// Runs `work` on the connection, opening it (again) first if there is none or it was
    /// lost.
    fn with<T>(&self, work: impl FnOnce(&mut Connection) -> Result<T, BackendError>) -> Result<T, BackendError> {
        let mut connection = self.connection.borrow_mut();
        let connection = match &mut *connection {
            Some(open) if !open.client.is_closed() => open,
            slot => slot.insert(Connection::open(&self.target)?),
        };
        work(connection)
    }

    /// Whether the connection is missing or lost (worth waiting for).
    fn is_down(&self) -> bool {
        self.connection.borrow().as_ref().is_none_or(|open| open.client.is_closed())
    }

    /// One chunk of a range: up to `limit` rows.
    fn chunk(&self, from: &Bound<Vec<u8>>, to: &Bound<Vec<u8>>, backward: bool, limit: i64) -> Result<Vec<Entry>, BackendError> {
        let mut conditions = Vec::new();
        let mut params: Vec<&(dyn ToSql + Sync)> = Vec::new();
        for (bound, included, excluded) in [(from, ">=", ">"), (to, "<=", "<")] {
            let (op, key) = match bound {
                Bound::Included(key) => (included, key),
                Bound::Excluded(key) => (excluded, key),
                Bound::Unbounded => continue,
            };
            params.push(key);
            conditions.push(format!("key {op} ${}", params.len()));
        }
        params.push(&limit);
        let filter = if conditions.is_empty() { String::new() } else { format!("WHERE {}", conditions.join(" AND ")) };
        let order = if backward { "DESC" } else { "ASC" };
        let sql = format!("SELECT key, value FROM archive {filter} ORDER BY key {order} LIMIT ${}", params.len());
        self.with(|connection| {
            let statement = connection.prepared(sql)?;
            Ok(connection.client.query(&statement, &params)?.into_iter().map(|row| (row.get(0), row.get(1))).collect())
        })
    }
}

/// A range of the archive read in chunks as the caller goes.
struct PgRange<'a> {
    /// The table.
    archive: &'a PgArchive,
    /// What is left of the range: the side read from moves past each chunk.
    from: Bound<Vec<u8>>,
    to: Bound<Vec<u8>>,
    /// Descending.
    backward: bool,
    /// Rows read and not yet taken.
    buffer: VecDeque<Entry>,
    /// The next chunk's size.
    chunk: i64,
    /// Nothing left to read (or an error was returned).
    done: bool,
}

impl Iterator for PgRange<'_> {
    type Item = Result<Entry, BackendError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buffer.is_empty() && !self.done {
            match self.archive.chunk(&self.from, &self.to, self.backward, self.chunk) {
                Ok(rows) => {
                    self.done = (rows.len() as i64) < self.chunk;
                    if let Some((last, _)) = rows.last() {
                        let past = Bound::Excluded(last.clone());
                        if self.backward {
                            self.to = past;
                        } else {
                            self.from = past;
                        }
                    }
                    self.buffer.extend(rows);
                    self.chunk = (self.chunk * 2).min(RANGE_CHUNK_MAX);
                }
                Err(error) => {
                    self.done = true;
                    return Some(Err(error));
                }
            }
        }
        self.buffer.pop_front().map(Ok)
    }
}

impl Ordered for PgArchive {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
        self.with(|connection| {
            let statement = connection.prepared("SELECT value FROM archive WHERE key = $1".to_owned())?;
            Ok(connection.client.query_opt(&statement, &[&key])?.map(|row| row.get(0)))
        })
    }

    fn range<'a>(&'a self, from: Bound<&[u8]>, to: Bound<&[u8]>, backward: bool) -> Entries<'a> {
        Box::new(PgRange {
            archive: self,
            from: from.map(<[u8]>::to_vec),
            to: to.map(<[u8]>::to_vec),
            backward,
            buffer: VecDeque::new(),
            chunk: RANGE_CHUNK_FIRST,
            done: false,
        })
    }

    fn apply(&mut self, batch: Batch) -> Result<(), BackendError> {
        // A later write of a key wins; then one statement per kind of write.
        let last: BTreeMap<Vec<u8>, Option<Vec<u8>>> = batch.writes.into_iter().collect();
        let (mut keys, mut values, mut gone) = (Vec::new(), Vec::new(), Vec::new());
        for (key, value) in last {
            match value {
                Some(value) => {
                    keys.push(key);
                    values.push(value);
                }
                None => gone.push(key),
            }
        }
        let mut backoff = RETRY_FIRST;
        let mut failing_since: Option<Instant> = None;
        loop {
            let attempt = self.with(|connection| {
                let upsert = connection.prepared(
                    "INSERT INTO archive (key, value) SELECT * FROM unnest($1::bytea[], $2::bytea[]) \
                     ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"
                        .to_owned(),
                )?;
                let delete = connection.prepared("DELETE FROM archive WHERE key = ANY($1::bytea[])".to_owned())?;
                let mut transaction = connection.client.transaction()?;
                if !keys.is_empty() {
                    transaction.execute(&upsert, &[&keys, &values])?;
                }
                if !gone.is_empty() {
                    transaction.execute(&delete, &[&gone])?;
                }
                Ok(transaction.commit()?)
            });
            match attempt {
                Ok(()) => return Ok(()),
                // Only a lost connection is worth waiting for; a refused statement stays refused.
                Err(error) if self.is_down() || matches!(error, BackendError::Postgres(ref e) if e.is_closed()) => {
                    if failing_since.is_none() {
                        tracing::warn!(%error, store = %self.target.name(), "cannot write the archive; retrying until the database answers");
                    }
                    failing_since.get_or_insert_with(Instant::now);
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(RETRY_MAX);
                }
                Err(error) => return Err(error),
            }
        }
    }

    fn flush(&mut self) -> Result<(), BackendError> {
        // Every batch was committed before `apply` returned.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ssl_mode(url: &str) -> SslMode {
        PgTarget::new(url, None).unwrap().config.get_ssl_mode()
    }

    #[test]
    fn tls_is_required_off_this_machine_unless_disabled_by_name() {
        // libpq's default (`prefer`) would fall back to plain text on a "no" from anyone.
        assert_eq!(ssl_mode("postgres://gw:pw@db.example.com/gw"), SslMode::Require);
        assert_eq!(ssl_mode("postgres://gw:pw@db.example.com/gw?sslmode=prefer"), SslMode::Require);
        assert_eq!(ssl_mode("host=10.0.0.5 user=gw dbname=gw"), SslMode::Require);
        assert_eq!(ssl_mode("postgres://gw:pw@db.example.com/gw?sslmode=disable"), SslMode::Disable);
        // On this machine nobody is in between.
        for local in ["postgres://gw:pw@127.0.0.1/gw", "postgres://gw:pw@localhost/gw", "postgres://gw:pw@[::1]:5432/gw", "host=/run/postgresql user=gw"] {
            assert_eq!(ssl_mode(local), SslMode::Prefer, "{local}");
        }
    }
}
