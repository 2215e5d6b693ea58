//! Everything the gateway persists, behind one type: [`Store`]. The engine under it is
//! one of two behind one trait ([`backend::Backend`]): sled in a directory (the default,
//! [`sled`]) or PostgreSQL ([`postgres`]); this module owns the formats, the same on both.
//!
//! # Layout
//!
//! Named trees of byte keys ([`backend::Tree`]; sled's trees, PostgreSQL's tables):
//!
//! * `users`: one entry per registered user, keyed by the bare JID (UTF-8 bytes, exactly as
//!   passed in; normalising the JID is the caller's job), whose value is JSON:
//!
//!   ```json
//!   {"version":1,
//!    "irc":{"nick":"alice_","passwords_sealed":{"irc.libera.chat":"<hex>"}},
//!    "email":{"address":"alice@example.org","password_sealed":"<hex>","login":null,
//!             "imap_server":null,"smtp_server":null}}
//!   ```
//!
//!   Passwords are never stored in plaintext: each is sealed by the [`Vault`] with the
//!   associated data `"<field>\0<bare JID>"` (`irc.password@<network>` or
//!   `email.password`), so a sealed value copied into another user's record, into the
//!   other field or to another IRC network, does not decrypt and the record reads as
//!   [`StoreError::Corrupt`]. A record written before IRC passwords were kept per
//!   network has one `password_sealed` (field `irc.password`), tied to no network: it is
//!   read as [`IrcAccount::unassigned_password`] and sent nowhere until
//!   [`Store::assign_unassigned_irc_passwords`] gives it to the one configured network.
//! * `bridge_state`: the bridges' durable state (`BridgeStore`), keyed `user \0 key`.
//! * `persistent`: always-on channels, keyed `user \0 server \0 folded channel`.
//! * `meta`: `key_check`, a constant sealed when the store is first opened, and opened on
//!   every later open, so that a wrong or replaced key file is caught at start-up
//!   ([`StoreError::WrongKey`]) instead of as undecryptable records later; the ban list.
//! * `archive`: the message archive (`archive/keyed.rs` owns its keys).
//!
//! # Durability
//!
//! Writes are made (and visible) at once, in call order; [`Store::put_user`],
//! [`Store::remove_user`] and the other writers return a future that resolves only once
//! the change is durable (sled: written and fsynced; PostgreSQL: committed), so a record
//! they reported as stored survives a crash or `kill -9`. They must be awaited within a
//! Tokio runtime.

pub mod backend;
pub mod migrate;
pub mod postgres;
pub mod sled;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bridge_core::model::UserId;
use bridge_core::{Secret, StoreFailure};
use serde::{Deserialize, Serialize};

use crate::vault::{Vault, VaultError};

use self::backend::{Backend, BackendError, Tree};

/// The version of the per-user JSON format written by this code. Records with a higher
/// version were written by a newer gateway and are refused rather than misread.
const FORMAT_VERSION: u32 = 1;

const KEY_CHECK_KEY: &[u8] = b"key_check";
/// Set once every unassigned IRC password was given to a network: later starts need not
/// read every record again.
const IRC_PASSWORDS_ASSIGNED_KEY: &[u8] = b"irc_passwords_assigned";
/// The administrators' ban list: a JSON array of bare JIDs and domains.
const BANS_KEY: &[u8] = b"bans";
/// Set once always-on channels were moved out of the users' records into their tree.
const PERSISTENT_MOVED_KEY: &[u8] = b"persistent_channels_moved";
const KEY_CHECK_PLAINTEXT: &str = "xmpp-gateway store key check v1";
/// Associated data of the key check value. JIDs cannot contain NUL, so this can never
/// equal the associated data of a password (`"<field>\0<jid>"` has a field name first).
const KEY_CHECK_AAD: &[u8] = b"store.key-check";

/// The field of the unassigned IRC password; a network's is `irc.password@<network>`.
const IRC_PASSWORD_FIELD: &str = "irc.password";
const EMAIL_PASSWORD_FIELD: &str = "email.password";

/// Everything the gateway knows about one registered user.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserRecord {
    /// The user's IRC registration, used to connect to IRC on their behalf; `None` if they
    /// have not registered with the IRC gateway.
    pub irc: Option<IrcAccount>,
    /// The user's mailbox, used to fetch and send mail on their behalf; `None` if they
    /// have not registered with the email gateway.
    pub email: Option<EmailAccount>,
    /// IRC channels the gateway stays in while none of the user's clients is (always-on,
    /// biboumi's `persistent`): set per room by its `configure` command, through
    /// [`Store::set_persistent`] (kept apart from the record: [`Store::put_user`] ignores
    /// this list; [`Store::user`] fills it).
    pub persistent_channels: Vec<PersistentChannel>,
}

/// An always-on IRC channel of one user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersistentChannel {
    /// The IRC server, lower case.
    pub server: String,
    /// The channel as the user first wrote it.
    pub channel: String,
}

impl PersistentChannel {
    /// Whether this is `channel` on `server` (names folded as RFC 1459 folds them).
    pub fn is(&self, server: &str, channel: &str) -> bool {
        use bridge_core::model::CaseMapping;
        self.server.eq_ignore_ascii_case(server) && CaseMapping::Rfc1459.folded(&self.channel) == CaseMapping::Rfc1459.folded(channel)
    }
}

impl UserRecord {
    /// Whether the user keeps `channel` on `server` always on.
    pub fn is_persistent(&self, server: &str, channel: &str) -> bool {
        self.persistent_channels.iter().any(|p| p.is(server, channel))
    }
}

/// How to appear on IRC for one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IrcAccount {
    /// The nickname to use on IRC, chosen at registration so that it is stable across
    /// reconnects and does not have to be derived from the JID.
    pub nick: String,
    /// The password that identifies the nick to each network's services (SASL, or
    /// NickServ where the network is configured to run it), by the network's host name
    /// in lower case: a password goes only to the network it was given for.
    pub passwords: BTreeMap<String, Secret>,
    /// A password stored before passwords were kept per network, tied to none: sent
    /// nowhere (see the module's doc).
    pub unassigned_password: Option<Secret>,
}

impl IrcAccount {
    /// An account with `nick` and no password.
    #[must_use]
    pub fn new(nick: &str) -> Self {
        IrcAccount { nick: nick.to_owned(), passwords: BTreeMap::new(), unassigned_password: None }
    }

    /// The password to give the network `server`, if the user gave one for it.
    #[must_use]
    pub fn password_for(&self, server: &str) -> Option<&Secret> {
        self.passwords.get(&server.to_ascii_lowercase())
    }
}

/// How to reach one user's mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailAccount {
    /// The email address: the `From` of mail the user sends, and by default the login and
    /// the domain from which the servers are found.
    pub address: String,
    /// The password for the IMAP and SMTP servers; mail access always needs one.
    pub password: Secret,
    /// The login name for IMAP and SMTP when it differs from `address`; `None` means log
    /// in with the address.
    pub login: Option<String>,
    /// The IMAP server (`host` or `host:port`) when it cannot be derived from the
    /// address's domain; `None` means derive it.
    pub imap_server: Option<String>,
    /// The SMTP submission server (`host` or `host:port`) when it cannot be derived from
    /// the address's domain; `None` means derive it.
    pub smtp_server: Option<String>,
    /// Whether mail delivered to XMPP is marked read (`\Seen`) in the mailbox; off by
    /// default, so the user's mailbox flags are left alone.
    pub mark_seen: bool,
    /// Whether a copy of every mail sent is appended to the mailbox's Sent folder, as a
    /// mail client does; on by default, off where the provider files sent mail itself.
    pub save_sent: bool,
    /// The name shown beside the address in the From of mail sent, if the user gave one.
    pub display_name: Option<String>,
    /// Whether mail the user's client reports displayed (XEP-0333) is marked `\Seen`.
    pub mark_displayed: bool,
    /// How many of the newest mails' correspondents go into the roster when the session
    /// first opens the account; 0 (the default): none.
    pub import_contacts: u32,
    /// Folders watched for new mail besides INBOX.
    pub folders: Vec<String>,
}

/// Why the store could not be opened, read or written.
///
/// No message ever contains a password or key.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled's lock on the store is held, by another process or another open [`Store`].
    #[error(
        "the store at {} is locked: another gateway is probably running on this store \
         (stop it, or give this one a different store directory)",
        store.display()
    )]
    Locked {
        /// The store directory.
        store: PathBuf,
    },
    /// The key file does not decrypt the store's key check value.
    #[error("the key file {} does not match {store}; restore the original key file", key_file.display())]
    WrongKey {
        /// The key file given.
        key_file: PathBuf,
        /// The store, as [`Backend::name`] names it.
        store: String,
    },
    /// The store has sealed data but its key file does not exist.
    #[error(
        "the key file {} does not exist, but {store} was created with one; \
         restore the original key file (a new key could not decrypt the stored passwords)",
        key_file.display()
    )]
    KeyMissing {
        /// The key file given.
        key_file: PathBuf,
        /// The store, as [`Backend::name`] names it.
        store: String,
    },
    /// The key file could not be read or created.
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// A stored user record does not decode (bad JSON, unknown format version, a password
    /// that does not decrypt for this user, ...).
    #[error("the stored record for {jid} is corrupt: {reason}")]
    Corrupt {
        /// The bare JID the record is stored under.
        jid: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The storage settings are unusable (a connection string that does not parse, a CA
    /// file that cannot be read); the message names the key, never the password.
    #[error("{0}")]
    Config(String),
    /// The database failed.
    #[error("cannot {action} {store}: {source}")]
    Db {
        /// What was being attempted, e.g. "open" or "flush".
        action: &'static str,
        /// The store, as [`Backend::name`] names it.
        store: String,
        /// The underlying error.
        #[source]
        source: BackendError,
    },
}

/// The gateway's persistent state. Cheap to clone (all clones share one database), and
/// `Send + Sync`.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    /// The database engine (sled or PostgreSQL).
    backend: Arc<dyn Backend>,
    /// Seals and opens the passwords in user records.
    vault: Vault,
    /// The sled engine itself, for tests that watch its fsyncs; `None` on PostgreSQL.
    #[cfg(test)]
    sled: Option<sled::SledBackend>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.inner.backend.name())
            .field("key_file", &self.inner.vault.key_file())
            .finish_non_exhaustive()
    }
}

// The on-disk form of a record: the public records with each password replaced by its
// sealed form.

#[derive(Deserialize)]
struct StoredVersion {
    version: u32,
}

#[derive(Serialize, Deserialize)]
struct StoredUser {
    version: u32,
    irc: Option<StoredIrc>,
    email: Option<StoredEmail>,
}

/// Always-on channels as records listed them before they had a tree of their own.
#[derive(Deserialize)]
struct LegacyChannels {
    #[serde(default)]
    persistent_channels: Vec<PersistentChannel>,
}

/// The key of an always-on channel in [`PERSISTENT_TREE`]: the user, the server in lower
/// case, the channel folded as RFC 1459 folds names (NUL is in neither a JID nor a name).
fn persistent_key(bare_jid: &str, server: &str, channel: &str) -> Vec<u8> {
    let folded = bridge_core::model::CaseMapping::Rfc1459.fold(channel);
    [bare_jid.as_bytes(), b"\0", server.to_ascii_lowercase().as_bytes(), b"\0", folded.as_bytes()].concat()
}

#[derive(Serialize, Deserialize)]
struct StoredIrc {
    nick: String,
    /// The unassigned password of a record from before passwords were per network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    password_sealed: Option<String>,
    /// Sealed passwords by network.
    #[serde(default)]
    passwords_sealed: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize)]
struct StoredEmail {
    address: String,
    password_sealed: String,
    login: Option<String>,
    imap_server: Option<String>,
    smtp_server: Option<String>,
    #[serde(default)]
    mark_seen: bool,
    /// Absent from records written before the setting existed: on, the default.
    #[serde(default = "yes")]
    save_sent: bool,
    #[serde(default)]
    display_name: Option<String>,
    #[serde(default)]
    mark_displayed: bool,
    #[serde(default)]
    import_contacts: u32,
    #[serde(default)]
    folders: Vec<String>,
}

fn yes() -> bool {
    true
}

/// The field of the IRC password for `network`.
fn irc_password_field(network: &str) -> String {
    format!("{IRC_PASSWORD_FIELD}@{network}")
}

/// The associated data a password is sealed with: the field and the user's bare JID.
fn aad(field: &str, bare_jid: &str) -> Vec<u8> {
    format!("{field}\0{bare_jid}").into_bytes()
}

impl Store {
    /// Opens (creating if needed) the sled store in `dir`, with the credential key in
    /// `key_file`.
    ///
    /// On a new store the key file is created if absent and a sealed check value is
    /// recorded; on an existing one the key file must exist and decrypt that value, or the
    /// open fails with [`StoreError::KeyMissing`] / [`StoreError::WrongKey`] (no key file
    /// is created then). Fails with [`StoreError::Locked`] if another process (or another
    /// open `Store`) holds the store, after retrying for two seconds. Blocks on disk I/O;
    /// call it at start-up.
    pub fn open(dir: &Path, key_file: &Path) -> Result<Store, StoreError> {
        let backend = sled::SledBackend::open(dir).map_err(|error| match error {
            sled::OpenError::Locked => StoreError::Locked { store: dir.to_owned() },
            sled::OpenError::Db(source) => StoreError::Db { action: "open", store: format!("the store at {}", dir.display()), source: source.into() },
        })?;
        let store = Self::on(Arc::new(backend.clone()), key_file, |_inner| {
            #[cfg(test)]
            {
                _inner.sled = Some(backend.clone());
            }
        })?;
        // What opening wrote (the key check, converted records) is durable before use.
        backend.flush_blocking().map_err(|e| store.db_error("flush", e))?;
        Ok(store)
    }

    /// Opens the PostgreSQL store `target` (migrating its schema, loading its small trees),
    /// with the credential key in `key_file`, checked as [`Store::open`] checks it.
    pub async fn open_postgres(target: postgres::PgTarget, key_file: &Path) -> Result<Store, StoreError> {
        let name = target.name().to_owned();
        let backend = postgres::PgBackend::open(target).await.map_err(|source| StoreError::Db { action: "open", store: name, source })?;
        let store = Self::on(Arc::new(backend), key_file, |_| {})?;
        store.flush().await?;
        Ok(store)
    }

    /// The store on `backend`: the key checked (or its check value made), old formats
    /// converted. `finish` completes the store's fields before it is used.
    fn on(backend: Arc<dyn Backend>, key_file: &Path, finish: impl FnOnce(&mut Inner)) -> Result<Store, StoreError> {
        let failed = |action, source| StoreError::Db { action, store: backend.name().to_owned(), source };
        let vault = match backend.get(Tree::Meta, KEY_CHECK_KEY).map_err(|e| failed("read", e))? {
            Some(check) => {
                let vault = match Vault::load(key_file) {
                    Err(VaultError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                        return Err(StoreError::KeyMissing { key_file: key_file.to_owned(), store: backend.name().to_owned() })
                    }
                    other => other?,
                };
                let matches = std::str::from_utf8(&check)
                    .ok()
                    .and_then(|check| vault.open(check, KEY_CHECK_AAD).ok())
                    .is_some_and(|plain| plain.expose() == KEY_CHECK_PLAINTEXT);
                if !matches {
                    return Err(StoreError::WrongKey { key_file: key_file.to_owned(), store: backend.name().to_owned() });
                }
                vault
            }
            None => {
                if backend.len(Tree::Users) > 0 {
                    tracing::warn!(
                        store = backend.name(),
                        "the store has users but no key check value; records sealed with \
                         another key will read as corrupt"
                    );
                }
                let vault = Vault::open_or_create(key_file)?;
                let check = vault.seal(KEY_CHECK_PLAINTEXT, KEY_CHECK_AAD);
                backend.insert(Tree::Meta, KEY_CHECK_KEY, check.as_bytes()).map_err(|e| failed("write", e))?;
                vault
            }
        };
        let mut inner = Inner {
            backend,
            vault,
            #[cfg(test)]
            sled: None,
        };
        finish(&mut inner);
        let store = Store { inner: Arc::new(inner) };
        store.move_persistent_channels_out_of_records()?;
        Ok(store)
    }

    /// The engine, for `migrate-store`.
    pub(crate) fn backend(&self) -> &dyn Backend {
        &*self.inner.backend
    }

    /// Records written before always-on channels had a tree of their own list them
    /// inside: moved to the tree, the records rewritten without them. Done once (a
    /// marker in `meta`).
    fn move_persistent_channels_out_of_records(&self) -> Result<(), StoreError> {
        if self.backend().get(Tree::Meta, PERSISTENT_MOVED_KEY).map_err(|e| self.db_error("read", e))?.is_some() {
            return Ok(());
        }
        for jid in self.user_jids()? {
            let Some(bytes) = self.backend().get(Tree::Users, jid.as_bytes()).map_err(|e| self.db_error("read", e))? else { continue };
            let Ok(legacy) = serde_json::from_slice::<LegacyChannels>(&bytes) else { continue };
            if legacy.persistent_channels.is_empty() {
                continue;
            }
            for channel in &legacy.persistent_channels {
                self.backend().insert(Tree::Persistent, &persistent_key(&jid, &channel.server, &channel.channel), channel.channel.as_bytes()).map_err(|e| self.db_error("write", e))?;
            }
            let record = self.decode(&jid, &bytes)?;
            self.backend().insert(Tree::Users, jid.as_bytes(), &self.encode(&jid, &record)).map_err(|e| self.db_error("write", e))?;
        }
        self.backend().insert(Tree::Meta, PERSISTENT_MOVED_KEY, b"1").map_err(|e| self.db_error("write", e))?;
        Ok(())
    }

    /// Turns `channel` on `server` always on (or off) for `bare_jid`; durable when the
    /// future resolves. A few bytes: the user's record is not rewritten.
    pub fn set_persistent(&self, bare_jid: &str, server: &str, channel: &str, on: bool) -> impl std::future::Future<Output = Result<(), StoreError>> + 'static {
        let key = persistent_key(bare_jid, server, channel);
        let written = if on { self.backend().insert(Tree::Persistent, &key, channel.as_bytes()) } else { self.backend().remove(Tree::Persistent, &key).map(drop) };
        let written = written.map(drop).map_err(|e| self.db_error("write", e));
        let store = self.clone();
        async move {
            written?;
            store.flush().await
        }
    }

    /// Whether `bare_jid` keeps `channel` on `server` always on: one key looked up (the
    /// user's record is not read).
    pub fn is_persistent(&self, bare_jid: &str, server: &str, channel: &str) -> Result<bool, StoreError> {
        Ok(self.backend().get(Tree::Persistent, &persistent_key(bare_jid, server, channel)).map_err(|e| self.db_error("read", e))?.is_some())
    }

    /// The always-on channels of `bare_jid`, by server then folded name.
    fn persistent_of(&self, bare_jid: &str) -> Result<Vec<PersistentChannel>, StoreError> {
        let prefix = [bare_jid.as_bytes(), b"\0"].concat();
        let entries = self.backend().scan_prefix(Tree::Persistent, &prefix).map_err(|e| self.db_error("read", e))?;
        Ok(entries
            .into_iter()
            .map(|(key, value)| {
                let server = key.get(prefix.len()..).and_then(|rest| rest.split(|&b| b == 0).next()).unwrap_or_default();
                PersistentChannel { server: String::from_utf8_lossy(server).into_owned(), channel: String::from_utf8_lossy(&value).into_owned() }
            })
            .collect())
    }

    /// The message archive, in the same database (`archive/keyed.rs`). On PostgreSQL this
    /// opens the archive's own connection (blocking): call it at start-up.
    pub fn archive(&self) -> Result<crate::archive::KeyedArchive, StoreError> {
        let tree = self.backend().archive().map_err(|e| self.db_error("open", e))?;
        Ok(crate::archive::KeyedArchive::new(tree))
    }

    /// Reads `bare_jid`'s record, settings and bridge state again from the database: they
    /// may have been written by another instance (a takeover in a cluster).
    pub async fn reload_user(&self, bare_jid: &str) -> Result<(), StoreError> {
        let under = [bare_jid.as_bytes(), b"\0"].concat();
        let prefixes = vec![(Tree::Users, bare_jid.as_bytes().to_vec()), (Tree::BridgeState, under.clone()), (Tree::Persistent, under)];
        self.backend().reload(prefixes).await.map_err(|e| self.db_error("read", e))
    }

    /// The record of `bare_jid`, or `None` if that user is not registered.
    ///
    /// A record that does not decode, including one whose password does not decrypt for
    /// this JID, is [`StoreError::Corrupt`].
    pub fn user(&self, bare_jid: &str) -> Result<Option<UserRecord>, StoreError> {
        let Some(bytes) = self.backend().get(Tree::Users, bare_jid.as_bytes()).map_err(|e| self.db_error("read", e))? else {
            return Ok(None);
        };
        self.decode(bare_jid, &bytes).map(Some)
    }

    /// Stores `record` as the record of `bare_jid`, replacing any previous one.
    ///
    /// The write is made (and visible to readers) at once, in call order; the returned
    /// future, which borrows nothing and may run in another task, resolves once it is
    /// durable (flushed and fsynced).
    pub fn put_user(&self, bare_jid: &str, record: &UserRecord) -> impl std::future::Future<Output = Result<(), StoreError>> + 'static {
        let bytes = self.encode(bare_jid, record);
        let written = self.backend().insert(Tree::Users, bare_jid.as_bytes(), &bytes).map_err(|e| self.db_error("write", e));
        let (store, jid) = (self.clone(), bare_jid.to_owned());
        async move {
            written?;
            store.flush().await?;
            tracing::debug!(%jid, "stored user record");
            Ok(())
        }
    }

    /// Deletes the record of `bare_jid` and the bridges' state of that user; `true` if
    /// there was a record.
    ///
    /// Made at once, in call order, like [`Store::put_user`]; the future resolves once the
    /// deletion is durable.
    pub fn remove_user(&self, bare_jid: &str) -> impl std::future::Future<Output = Result<bool, StoreError>> + 'static {
        let removed = self.remove_user_now(bare_jid);
        let (store, jid) = (self.clone(), bare_jid.to_owned());
        async move {
            let existed = removed?;
            if existed {
                store.flush().await?;
                tracing::debug!(%jid, "removed user record");
            }
            Ok(existed)
        }
    }

    fn remove_user_now(&self, bare_jid: &str) -> Result<bool, StoreError> {
        let backend = self.backend();
        let existed = backend.remove(Tree::Users, bare_jid.as_bytes()).map_err(|e| self.db_error("write", e))?;
        // The bridges' state and the always-on channels: keys `user \0 ...`.
        let prefix = bridge_key(bare_jid, "");
        for tree in [Tree::BridgeState, Tree::Persistent] {
            for (key, _) in backend.scan_prefix(tree, &prefix).map_err(|e| self.db_error("read", e))? {
                backend.remove(tree, &key).map_err(|e| self.db_error("write", e))?;
            }
        }
        Ok(existed)
    }

    /// Gives every unassigned IRC password (from a record written before passwords were
    /// per network) to `network`, the one IRC network configured: that is where such a
    /// password was meant to go. Returns how many records changed; durable on return. Done
    /// once: a marker in `meta` spares later starts reading every record.
    /// With several networks configured the gateway cannot tell, and does not call this.
    pub async fn assign_unassigned_irc_passwords(&self, network: &str) -> Result<usize, StoreError> {
        if self.backend().get(Tree::Meta, IRC_PASSWORDS_ASSIGNED_KEY).map_err(|e| self.db_error("read", e))?.is_some() {
            return Ok(0);
        }
        let mut changed = 0;
        for jid in self.user_jids()? {
            let Some(mut record) = self.user(&jid)? else { continue };
            let Some(irc) = record.irc.as_mut() else { continue };
            let Some(password) = irc.unassigned_password.take() else { continue };
            irc.passwords.entry(network.to_ascii_lowercase()).or_insert(password);
            let bytes = self.encode(&jid, &record);
            self.backend().insert(Tree::Users, jid.as_bytes(), &bytes).map_err(|e| self.db_error("write", e))?;
            changed += 1;
        }
        self.backend().insert(Tree::Meta, IRC_PASSWORDS_ASSIGNED_KEY, network.as_bytes()).map_err(|e| self.db_error("write", e))?;
        self.flush().await?;
        Ok(changed)
    }

    /// The ban list the administrators set (bare JIDs and domains), empty if never set.
    pub fn bans(&self) -> Result<Vec<String>, StoreError> {
        let Some(bytes) = self.backend().get(Tree::Meta, BANS_KEY).map_err(|e| self.db_error("read", e))? else { return Ok(Vec::new()) };
        serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt { jid: "(the ban list)".into(), reason: e.to_string() })
    }

    /// Replaces the ban list; the future resolves once it is durable.
    pub fn put_bans(&self, bans: &[String]) -> impl std::future::Future<Output = Result<(), StoreError>> + 'static {
        let bytes = serde_json::to_vec(bans).unwrap_or_default();
        let written = self.backend().insert(Tree::Meta, BANS_KEY, &bytes).map_err(|e| self.db_error("write", e));
        let store = self.clone();
        async move {
            written?;
            store.flush().await
        }
    }

    /// How many users are registered (a count of keys: nothing is decoded or copied, for
    /// the status and each metrics scrape).
    #[must_use]
    pub fn user_count(&self) -> usize {
        self.backend().len(Tree::Users)
    }

    /// The bare JIDs of all registered users, in byte order.
    pub fn user_jids(&self) -> Result<Vec<String>, StoreError> {
        let entries = self.backend().scan_prefix(Tree::Users, b"").map_err(|e| self.db_error("read", e))?;
        entries
            .into_iter()
            .map(|(key, _)| {
                String::from_utf8(key).map_err(|e| StoreError::Corrupt {
                    jid: String::from_utf8_lossy(e.as_bytes()).into_owned(),
                    reason: "the key is not UTF-8".into(),
                })
            })
            .collect()
    }

    /// Makes everything written so far durable (sled: written and fsynced, writers
    /// waiting together sharing one fsync; PostgreSQL: committed).
    ///
    /// Must be called from within a Tokio runtime (as every `async fn` here is).
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.backend().flush().await.map_err(|e| self.db_error("flush", e))
    }

    fn encode(&self, bare_jid: &str, record: &UserRecord) -> Vec<u8> {
        let vault = &self.inner.vault;
        let stored = StoredUser {
            version: FORMAT_VERSION,
            irc: record.irc.as_ref().map(|irc| StoredIrc {
                nick: irc.nick.clone(),
                password_sealed: irc
                    .unassigned_password
                    .as_ref()
                    .map(|password| vault.seal(password.expose(), &aad(IRC_PASSWORD_FIELD, bare_jid))),
                passwords_sealed: irc
                    .passwords
                    .iter()
                    .map(|(network, password)| {
                        (network.clone(), vault.seal(password.expose(), &aad(&irc_password_field(network), bare_jid)))
                    })
                    .collect(),
            }),
            email: record.email.as_ref().map(|email| StoredEmail {
                address: email.address.clone(),
                password_sealed: vault.seal(
                    email.password.expose(),
                    &aad(EMAIL_PASSWORD_FIELD, bare_jid),
                ),
                login: email.login.clone(),
                imap_server: email.imap_server.clone(),
                smtp_server: email.smtp_server.clone(),
                mark_seen: email.mark_seen,
                save_sent: email.save_sent,
                display_name: email.display_name.clone(),
                mark_displayed: email.mark_displayed,
                import_contacts: email.import_contacts,
                folders: email.folders.clone(),
            }),
        };
        serde_json::to_vec(&stored).expect("a struct of strings always serialises to JSON")
    }

    fn decode(&self, bare_jid: &str, bytes: &[u8]) -> Result<UserRecord, StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt {
            jid: bare_jid.to_owned(),
            reason,
        };
        let StoredVersion { version } = serde_json::from_slice(bytes)
            .map_err(|e| corrupt(format!("cannot read its format version: {e}")))?;
        if version != FORMAT_VERSION {
            return Err(corrupt(format!(
                "it has format version {version}, but this gateway only reads version \
                 {FORMAT_VERSION}"
            )));
        }
        let stored: StoredUser =
            serde_json::from_slice(bytes).map_err(|e| corrupt(format!("invalid JSON: {e}")))?;
        let open = |sealed: &str, field: &str| {
            self.inner
                .vault
                .open(sealed, &aad(field, bare_jid))
                .map_err(|e| corrupt(format!("the {field} does not decrypt: {e}")))
        };
        Ok(UserRecord {
            irc: stored
                .irc
                .map(|irc| -> Result<_, StoreError> {
                    Ok(IrcAccount {
                        nick: irc.nick,
                        unassigned_password: irc
                            .password_sealed
                            .map(|sealed| open(&sealed, IRC_PASSWORD_FIELD))
                            .transpose()?,
                        passwords: irc
                            .passwords_sealed
                            .into_iter()
                            .map(|(network, sealed)| Ok((network.clone(), open(&sealed, &irc_password_field(&network))?)))
                            .collect::<Result<_, StoreError>>()?,
                    })
                })
                .transpose()?,
            email: stored
                .email
                .map(|email| -> Result<_, StoreError> {
                    Ok(EmailAccount {
                        password: open(&email.password_sealed, EMAIL_PASSWORD_FIELD)?,
                        address: email.address,
                        login: email.login,
                        imap_server: email.imap_server,
                        smtp_server: email.smtp_server,
                        mark_seen: email.mark_seen,
                        save_sent: email.save_sent,
                        display_name: email.display_name,
                        mark_displayed: email.mark_displayed,
                        import_contacts: email.import_contacts,
                        folders: email.folders,
                    })
                })
                .transpose()?,
            persistent_channels: self.persistent_of(bare_jid)?,
        })
    }

    fn db_error(&self, action: &'static str, source: BackendError) -> StoreError {
        StoreError::Db { action, store: self.backend().name().to_owned(), source }
    }

    /// A bridge's write made just now (`written`), durable once the future resolves.
    fn durably(&self, written: Result<(), BackendError>) -> bridge_core::BoxFuture<'static, Result<(), StoreFailure>> {
        let written = written.map_err(|e| StoreFailure(self.db_error("write", e).to_string()));
        let store = self.clone();
        Box::pin(async move {
            written?;
            store.flush().await.map_err(|e| StoreFailure(e.to_string()))
        })
    }
}

/// The key of a bridge value: the user's bare JID, NUL (which no JID holds), the key.
fn bridge_key(user: &str, key: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(user.len() + 1 + key.len());
    out.extend_from_slice(user.as_bytes());
    out.push(0);
    out.extend_from_slice(key.as_bytes());
    out
}

impl bridge_core::BridgeStore for Store {
    fn load(&self, user: &UserId, key: &str) -> Result<Option<Vec<u8>>, StoreFailure> {
        let value = self.backend().get(Tree::BridgeState, &bridge_key(&user.0, key));
        value.map_err(|e| StoreFailure(self.db_error("read", e).to_string()))
    }

    fn save(&self, user: &UserId, key: &str, value: &[u8]) -> bridge_core::BoxFuture<'static, Result<(), StoreFailure>> {
        let written = self.backend().insert(Tree::BridgeState, &bridge_key(&user.0, key), value);
        self.durably(written)
    }

    fn delete(&self, user: &UserId, key: &str) -> bridge_core::BoxFuture<'static, Result<(), StoreFailure>> {
        let written = self.backend().remove(Tree::BridgeState, &bridge_key(&user.0, key)).map(drop);
        self.durably(written)
    }

    fn list(&self, user: &UserId, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreFailure> {
        let start = user.0.len() + 1;
        let entries = self.backend().scan_prefix(Tree::BridgeState, &bridge_key(&user.0, prefix));
        let entries = entries.map_err(|e| StoreFailure(self.db_error("read", e).to_string()))?;
        Ok(entries.into_iter().map(|(k, v)| (String::from_utf8_lossy(&k[start..]).into_owned(), v)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    const JID: &str = "alice@example.org";
    const IRC_PASSWORD: &str = "irc-pw-Zq7xK2mVb9";
    const EMAIL_PASSWORD: &str = "mail-pw-Hw3nR8tLp4";

    fn full_record() -> UserRecord {
        UserRecord {
            irc: Some(IrcAccount {
                nick: "alice_irc_nick".into(),
                passwords: [("irc.example".to_owned(), Secret::new(IRC_PASSWORD))].into(),
                unassigned_password: None,
            }),
            email: Some(EmailAccount {
                address: "alice@mail.example".into(),
                password: Secret::new(EMAIL_PASSWORD),
                login: Some("alice.login".into()),
                imap_server: Some("imap.mail.example:993".into()),
                smtp_server: Some("smtp.mail.example:465".into()),
                mark_seen: false,
                save_sent: true,
                display_name: None,
                mark_displayed: false,
                import_contacts: 0,
                folders: Vec::new(),
            }), ..UserRecord::default() 
        }
    }

    /// A temporary directory holding a store directory and, beside it, a key file.
    struct Fixture {
        tmp: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Self {
            Fixture {
                tmp: tempfile::tempdir().unwrap(),
            }
        }
        fn db(&self) -> PathBuf {
            self.tmp.path().join("db")
        }
        fn key(&self) -> PathBuf {
            self.tmp.path().join("store.key")
        }
        fn open(&self) -> Store {
            Store::open(&self.db(), &self.key()).unwrap()
        }
    }

    impl Store {
        /// The sled engine's fsyncs.
        fn sled_probe(&self) -> &sled::FsyncProbe {
            self.inner.sled.as_ref().expect("a sled store").fsync_probe()
        }
    }

    fn raw_get(store: &Store, jid: &str) -> Vec<u8> {
        store.backend().get(Tree::Users, jid.as_bytes()).unwrap().unwrap()
    }

    fn raw_put(store: &Store, jid: &str, value: &[u8]) {
        store.backend().insert(Tree::Users, jid.as_bytes(), value).unwrap();
    }

    fn raw_json(store: &Store, jid: &str) -> serde_json::Value {
        serde_json::from_slice(&raw_get(store, jid)).unwrap()
    }

    fn assert_corrupt(result: Result<Option<UserRecord>, StoreError>, jid: &str) -> String {
        match result {
            Err(err @ StoreError::Corrupt { .. }) => {
                let msg = err.to_string();
                assert!(msg.contains(jid), "{msg}");
                assert!(!msg.contains(IRC_PASSWORD) && !msg.contains(EMAIL_PASSWORD));
                msg
            }
            other => panic!("expected Corrupt for {jid}, got {other:?}"),
        }
    }

    #[test]
    fn store_is_clone_send_sync() {
        fn check<T: Clone + Send + Sync + 'static>() {}
        fn check_error<E: std::error::Error + Send + Sync + 'static>() {}
        check::<Store>();
        check_error::<StoreError>();
        check_error::<VaultError>();
    }

    #[tokio::test]
    async fn round_trips_a_full_record() {
        let fx = Fixture::new();
        let store = fx.open();
        assert_eq!(store.user(JID).unwrap(), None);
        store.put_user(JID, &full_record()).await.unwrap();
        assert_eq!(store.user(JID).unwrap(), Some(full_record()));
        // A clone sees the same data.
        assert_eq!(store.clone().user(JID).unwrap(), Some(full_record()));
    }

    #[tokio::test]
    async fn round_trips_records_with_missing_parts() {
        let fx = Fixture::new();
        let store = fx.open();
        let irc_only = UserRecord {
            email: None,
            ..full_record()
        };
        let no_irc_password = UserRecord {
            irc: Some(IrcAccount::new("bob")),
            email: None, ..UserRecord::default() 
        };
        let email_minimal = UserRecord {
            irc: None,
            email: Some(EmailAccount {
                address: "carol@mail.example".into(),
                password: Secret::new(""),
                login: None,
                imap_server: None,
                smtp_server: None,
                mark_seen: false,
                save_sent: true,
                display_name: None,
                mark_displayed: false,
                import_contacts: 0,
                folders: Vec::new(),
            }), ..UserRecord::default() 
        };
        let cases = [
            ("a@example.org", irc_only),
            ("b@example.org", no_irc_password),
            ("c@example.org", email_minimal),
            ("d@example.org", UserRecord::default()),
        ];
        for (jid, record) in &cases {
            store.put_user(jid, record).await.unwrap();
        }
        for (jid, record) in &cases {
            assert_eq!(store.user(jid).unwrap().as_ref(), Some(record), "{jid}");
        }
        assert_eq!(raw_json(&store, "a@example.org")["email"], serde_json::Value::Null);
        assert_eq!(raw_json(&store, "b@example.org")["irc"]["passwords_sealed"], serde_json::json!({}));
    }

    #[tokio::test]
    async fn stored_json_has_version_and_only_sealed_passwords() {
        let fx = Fixture::new();
        let store = fx.open();
        store.put_user(JID, &full_record()).await.unwrap();
        let json = raw_json(&store, JID);
        assert_eq!(json["version"], FORMAT_VERSION);
        assert_eq!(json["irc"]["nick"], "alice_irc_nick");
        assert_eq!(json["email"]["login"], "alice.login");
        let text = json.to_string();
        assert!(!text.contains(IRC_PASSWORD) && !text.contains(EMAIL_PASSWORD));
        assert!(json["irc"].get("password").is_none());
        assert!(json["irc"]["passwords_sealed"]["irc.example"].is_string());
        assert!(json["email"]["password_sealed"].is_string());
    }

    #[tokio::test]
    async fn passwords_never_reach_the_disk_in_plaintext() {
        let fx = Fixture::new();
        let store = fx.open();
        store.put_user(JID, &full_record()).await.unwrap();
        // Overwrite once, so older versions of the record are in the log too.
        store.put_user(JID, &full_record()).await.unwrap();
        store.flush().await.unwrap();
        drop(store);

        let mut files = Vec::new();
        let mut dirs = vec![fx.db()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else {
                    files.push(path);
                }
            }
        }
        let contains = |haystack: &[u8], needle: &str| {
            haystack
                .windows(needle.len())
                .any(|window| window == needle.as_bytes())
        };
        let mut nick_seen = false;
        for file in &files {
            let bytes = std::fs::read(file).unwrap();
            for password in [IRC_PASSWORD, EMAIL_PASSWORD] {
                assert!(
                    !contains(&bytes, password),
                    "{} contains a plaintext password",
                    file.display()
                );
            }
            nick_seen |= contains(&bytes, "alice_irc_nick");
        }
        // The scan does see record data, so the absence of passwords means something.
        assert!(nick_seen, "the record was not found in {files:?}");
    }

    #[tokio::test]
    async fn reopening_after_drop_keeps_data() {
        let fx = Fixture::new();
        let store = fx.open();
        store.put_user(JID, &full_record()).await.unwrap();
        store
            .put_user("bob@example.org", &UserRecord::default())
            .await
            .unwrap();
        drop(store);
        let store = fx.open();
        assert_eq!(store.user(JID).unwrap(), Some(full_record()));
        assert_eq!(
            store.user_jids().unwrap(),
            vec![JID.to_string(), "bob@example.org".to_string()]
        );
    }

    #[tokio::test]
    async fn remove_user_deletes_durably() {
        let fx = Fixture::new();
        let store = fx.open();
        store.put_user(JID, &full_record()).await.unwrap();
        store
            .put_user("bob@example.org", &full_record())
            .await
            .unwrap();
        assert!(store.remove_user(JID).await.unwrap());
        assert!(!store.remove_user(JID).await.unwrap());
        assert!(!store.remove_user("nobody@example.org").await.unwrap());
        assert_eq!(store.user(JID).unwrap(), None);
        drop(store);
        let store = fx.open();
        assert_eq!(store.user(JID).unwrap(), None);
        assert_eq!(store.user_jids().unwrap(), vec!["bob@example.org".to_string()]);
    }

    #[tokio::test]
    async fn the_ban_list_round_trips_and_survives_reopening() {
        let t = Fixture::new();
        {
            let store = t.open();
            assert!(store.bans().unwrap().is_empty());
            store.put_bans(&["evil.example".into(), "mallory@x.example".into()]).await.unwrap();
        }
        assert_eq!(t.open().bans().unwrap(), ["evil.example", "mallory@x.example"]);
        assert_eq!(t.open().user_count(), 0, "the ban list is no user");
    }

    #[tokio::test]
    async fn always_on_channels_are_keys_of_their_own_kept_across_record_writes_and_removed_with_the_user() {
        let fx = Fixture::new();
        let store = fx.open();
        let jid = "a@x.org";
        store.put_user(jid, &UserRecord::default()).await.unwrap();
        store.set_persistent(jid, "IRC.example", "#Rust[", true).await.unwrap();
        store.set_persistent(jid, "irc.example", "#go", true).await.unwrap();
        store.set_persistent("b@x.org", "irc.example", "#other", true).await.unwrap();
        let record = store.user(jid).unwrap().unwrap();
        assert!(record.is_persistent("irc.example", "#rust{"), "folded as RFC 1459: {record:?}");
        assert!(record.is_persistent("irc.example", "#go"));
        assert_eq!(record.persistent_channels.len(), 2, "only a@x.org's");
        assert!(store.is_persistent(jid, "IRC.EXAMPLE", "#RUST{").unwrap(), "one key looked up, folded the same way");
        assert!(!store.is_persistent(jid, "irc.example", "#other").unwrap(), "b@x.org's, not a@x.org's");
        assert!(!raw_json(&store, jid).to_string().contains("persistent"), "not in the record");
        // A record written again (registration changed) keeps them.
        store.put_user(jid, &UserRecord { persistent_channels: Vec::new(), ..record.clone() }).await.unwrap();
        assert_eq!(store.user(jid).unwrap().unwrap().persistent_channels.len(), 2);
        store.set_persistent(jid, "irc.example", "#GO", false).await.unwrap();
        assert!(!store.user(jid).unwrap().unwrap().is_persistent("irc.example", "#go"), "turned off by any spelling");
        assert!(!store.is_persistent(jid, "irc.example", "#go").unwrap());
        store.remove_user(jid).await.unwrap();
        store.put_user(jid, &UserRecord::default()).await.unwrap();
        assert!(store.user(jid).unwrap().unwrap().persistent_channels.is_empty(), "gone with the registration");
        assert_eq!(store.user("b@x.org").unwrap().map(|r| r.persistent_channels.len()), None, "b has no record, only a channel key");
    }

    #[tokio::test]
    async fn always_on_channels_listed_inside_records_are_moved_to_their_tree_once() {
        let fx = Fixture::new();
        let jid = "a@x.org";
        {
            let store = fx.open();
            store.put_user(jid, &UserRecord::default()).await.unwrap();
            // A record as the previous version wrote it, and no marker yet.
            let mut legacy = raw_json(&store, jid);
            legacy["persistent_channels"] = serde_json::json!([{ "server": "irc.example", "channel": "#Rust" }]);
            raw_put(&store, jid, &serde_json::to_vec(&legacy).unwrap());
            store.backend().remove(Tree::Meta, PERSISTENT_MOVED_KEY).unwrap();
            store.flush().await.unwrap();
        }
        let store = fx.open();
        assert!(store.user(jid).unwrap().unwrap().is_persistent("irc.example", "#rust"));
        assert!(!raw_json(&store, jid).to_string().contains("persistent"), "the record rewritten without them");
    }

    #[tokio::test]
    async fn user_jids_lists_every_user() {
        let fx = Fixture::new();
        let store = fx.open();
        assert!(store.user_jids().unwrap().is_empty());
        for jid in ["c@x.org", "a@x.org", "b@x.org"] {
            store.put_user(jid, &UserRecord::default()).await.unwrap();
        }
        assert_eq!(store.user_jids().unwrap(), ["a@x.org", "b@x.org", "c@x.org"]);
    }

    #[tokio::test]
    async fn concurrent_puts_from_clones() {
        let fx = Fixture::new();
        let store = fx.open();
        let tasks: Vec<_> = (0..16)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .put_user(&format!("user{i:02}@x.org"), &full_record())
                        .await
                        .unwrap();
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(store.user_jids().unwrap().len(), 16);
        assert_eq!(store.user("user07@x.org").unwrap(), Some(full_record()));
    }

    #[test]
    fn creates_a_0600_key_file_on_first_open() {
        use std::os::unix::fs::PermissionsExt;
        let fx = Fixture::new();
        let _store = fx.open();
        let mode = std::fs::metadata(fx.key()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[tokio::test]
    async fn key_file_inside_the_store_directory() {
        // The gateway's default: `<storage.path>/secret.key`, in a directory that does not
        // exist yet on first start.
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        let key = dir.join("secret.key");
        let store = Store::open(&dir, &key).unwrap();
        store.put_user(JID, &full_record()).await.unwrap();
        drop(store);
        let store = Store::open(&dir, &key).unwrap();
        assert_eq!(store.user(JID).unwrap(), Some(full_record()));
    }

    #[test]
    fn wrong_key_file_is_refused_on_open() {
        let fx = Fixture::new();
        drop(fx.open());
        let other_key = fx.tmp.path().join("other.key");
        Vault::open_or_create(&other_key).unwrap();
        let err = Store::open(&fx.db(), &other_key).unwrap_err();
        match &err {
            StoreError::WrongKey { key_file, store } => {
                assert_eq!(key_file, &other_key);
                assert_eq!(store, &format!("the store at {}", fx.db().display()));
            }
            other => panic!("expected WrongKey, got {other:?}"),
        }
        let msg = err.to_string();
        assert!(msg.contains(&other_key.display().to_string()), "{msg}");
        assert!(msg.contains(&fx.db().display().to_string()), "{msg}");
        assert!(msg.contains("restore the original key file"), "{msg}");
        // The right key still works.
        drop(fx.open());
    }

    #[test]
    fn missing_key_file_is_refused_and_not_recreated() {
        let fx = Fixture::new();
        drop(fx.open());
        std::fs::remove_file(fx.key()).unwrap();
        let err = Store::open(&fx.db(), &fx.key()).unwrap_err();
        assert!(matches!(err, StoreError::KeyMissing { .. }), "{err:?}");
        assert!(err.to_string().contains("restore the original key file"));
        assert!(!fx.key().exists(), "a new key file was created");
    }

    #[test]
    fn bad_key_files_are_refused_on_open() {
        use std::os::unix::fs::PermissionsExt;
        let fx = Fixture::new();
        std::fs::write(fx.key(), "ab".repeat(32)).unwrap();
        std::fs::set_permissions(fx.key(), std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Store::open(&fx.db(), &fx.key()).unwrap_err();
        assert!(
            matches!(err, StoreError::Vault(VaultError::Permissions { mode: 0o644, .. })),
            "{err:?}"
        );
        assert!(err.to_string().contains("0600"));

        std::fs::write(fx.key(), "not a key").unwrap();
        std::fs::set_permissions(fx.key(), std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = Store::open(&fx.db(), &fx.key()).unwrap_err();
        assert!(
            matches!(err, StoreError::Vault(VaultError::Malformed { .. })),
            "{err:?}"
        );
        assert!(err.to_string().contains(&fx.key().display().to_string()));
    }

    #[test]
    fn a_second_open_reports_the_lock() {
        let fx = Fixture::new();
        let _first = fx.open();
        let err = Store::open(&fx.db(), &fx.key()).unwrap_err();
        assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("another gateway is probably running"), "{msg}");
        assert!(msg.contains(&fx.db().display().to_string()), "{msg}");
    }

    #[tokio::test]
    async fn tampered_password_reads_as_corrupt() {
        let fx = Fixture::new();
        let store = fx.open();
        store.put_user(JID, &full_record()).await.unwrap();
        let mut json = raw_json(&store, JID);
        let sealed = json["email"]["password_sealed"].as_str().unwrap().to_owned();
        let last = if sealed.ends_with('0') { "1" } else { "0" };
        json["email"]["password_sealed"] = format!("{}{last}", &sealed[..sealed.len() - 1]).into();
        raw_put(&store, JID, json.to_string().as_bytes());
        let msg = assert_corrupt(store.user(JID), JID);
        assert!(msg.contains("email.password"), "{msg}");
    }

    #[tokio::test]
    async fn ciphertext_moved_to_another_user_does_not_decrypt() {
        let fx = Fixture::new();
        let store = fx.open();
        let bob = "bob@example.org";
        store.put_user(JID, &full_record()).await.unwrap();
        store
            .put_user(bob, &UserRecord::default())
            .await
            .unwrap();
        // Alice's whole record copied under Bob's JID.
        raw_put(&store, bob, &raw_get(&store, JID));
        assert_corrupt(store.user(bob), bob);
        // Only Alice's IRC password sealed value copied into Bob's otherwise valid record.
        let bob_record = UserRecord {
            irc: Some(IrcAccount {
                nick: "bob".into(),
                passwords: [("irc.example".to_owned(), Secret::new("bobs own"))].into(),
                unassigned_password: None,
            }),
            email: None, ..UserRecord::default() 
        };
        store.put_user(bob, &bob_record).await.unwrap();
        assert_eq!(store.user(bob).unwrap(), Some(bob_record));
        let mut json = raw_json(&store, bob);
        json["irc"]["passwords_sealed"] = raw_json(&store, JID)["irc"]["passwords_sealed"].clone();
        raw_put(&store, bob, json.to_string().as_bytes());
        assert_corrupt(store.user(bob), bob);
        // Alice is unaffected.
        assert_eq!(store.user(JID).unwrap(), Some(full_record()));
    }

    #[tokio::test]
    async fn ciphertext_moved_to_another_field_does_not_decrypt() {
        let fx = Fixture::new();
        let store = fx.open();
        store.put_user(JID, &full_record()).await.unwrap();
        let mut json = raw_json(&store, JID);
        json["irc"]["passwords_sealed"]["irc.example"] = json["email"]["password_sealed"].clone();
        raw_put(&store, JID, json.to_string().as_bytes());
        let msg = assert_corrupt(store.user(JID), JID);
        assert!(msg.contains("irc.password@irc.example"), "{msg}");
    }

    #[tokio::test]
    async fn an_irc_password_moved_to_another_network_does_not_decrypt() {
        let fx = Fixture::new();
        let store = fx.open();
        store.put_user(JID, &full_record()).await.unwrap();
        let mut json = raw_json(&store, JID);
        let sealed = json["irc"]["passwords_sealed"]["irc.example"].take();
        json["irc"]["passwords_sealed"] = serde_json::json!({ "evil.example": sealed });
        raw_put(&store, JID, json.to_string().as_bytes());
        let msg = assert_corrupt(store.user(JID), JID);
        assert!(msg.contains("irc.password@evil.example"), "{msg}");
    }

    #[tokio::test]
    async fn a_password_from_before_networks_is_sent_nowhere_until_assigned() {
        let fx = Fixture::new();
        let store = fx.open();
        // A record as the gateway wrote it before IRC passwords were per network.
        let old = UserRecord {
            irc: Some(IrcAccount { unassigned_password: Some(Secret::new("old-pw")), ..IrcAccount::new("alice") }),
            email: None, ..UserRecord::default() 
        };
        store.put_user(JID, &old).await.unwrap();
        let json = raw_json(&store, JID);
        assert!(json["irc"]["password_sealed"].is_string());
        let read = store.user(JID).unwrap().unwrap().irc.unwrap();
        assert_eq!(read.password_for("irc.example"), None);
        assert_eq!(read.unassigned_password.as_ref().map(Secret::expose), Some("old-pw"));

        assert_eq!(store.assign_unassigned_irc_passwords("IRC.example").await.unwrap(), 1);
        let read = store.user(JID).unwrap().unwrap().irc.unwrap();
        assert_eq!(read.password_for("irc.example").map(Secret::expose), Some("old-pw"));
        assert_eq!(read.unassigned_password, None);
        assert_eq!(store.assign_unassigned_irc_passwords("irc.example").await.unwrap(), 0);
    }

    #[tokio::test]
    async fn undecodable_records_are_corrupt() {
        let fx = Fixture::new();
        let store = fx.open();
        store.put_user(JID, &full_record()).await.unwrap();
        let mut future = raw_json(&store, JID);
        future["version"] = 2.into();
        let mut missing_nick = raw_json(&store, JID);
        missing_nick["irc"].as_object_mut().unwrap().remove("nick");
        let cases: [(&str, Vec<u8>); 4] = [
            ("garbage@x.org", b"\xff not json".to_vec()),
            ("noversion@x.org", br#"{"irc":null,"email":null}"#.to_vec()),
            ("future@x.org", future.to_string().into_bytes()),
            ("nonick@x.org", missing_nick.to_string().into_bytes()),
        ];
        for (jid, bytes) in &cases {
            raw_put(&store, jid, bytes);
            let msg = assert_corrupt(store.user(jid), jid);
            if *jid == "future@x.org" {
                assert!(msg.contains("format version 2"), "{msg}");
            }
        }
    }

    #[tokio::test]
    async fn a_bridge_write_is_durable_once_awaited() {
        use bridge_core::BridgeStore;
        let fx = Fixture::new();
        let a = UserId("a@x.org".into());
        {
            let store = fx.open();
            store.save(&a, "imap/state", b"7").await.unwrap();
        }
        let reopened = fx.open();
        assert_eq!(reopened.load(&a, "imap/state").unwrap().as_deref(), Some(&b"7"[..]));
    }

    /// Issue 9: flushes ran on the runtime's one thread, and every session and the writer
    /// stalled during each fsync. Now the thread runs other tasks while an fsync is in
    /// progress: a task ticking on the current-thread runtime sees one running. (With the
    /// fsync on the runtime's thread, the ticker can never run while one is on.)
    #[test]
    fn other_tasks_run_while_bridge_writes_are_flushed() {
        use bridge_core::BridgeStore;
        use std::sync::atomic::Ordering::SeqCst;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let fx = Fixture::new();
        let store = fx.open();
        let a = UserId("a@x.org".into());
        let (ticks, ticks_during_fsync) = runtime.block_on(async {
            let counts = Arc::new((std::sync::atomic::AtomicU64::new(0), std::sync::atomic::AtomicU64::new(0)));
            let (seen, watched) = (counts.clone(), store.clone());
            let ticker = tokio::spawn(async move {
                loop {
                    seen.0.fetch_add(1, SeqCst);
                    if watched.sled_probe().running.load(SeqCst) {
                        seen.1.fetch_add(1, SeqCst);
                    }
                    tokio::task::yield_now().await;
                }
            });
            // Enough writes for the ticker to catch an fsync in progress (one would do,
            // unless that fsync is quicker than one tick).
            for i in 0..200 {
                store.save(&a, &format!("outbox/{i}"), b"mail").await.unwrap();
                if counts.1.load(SeqCst) > 0 {
                    break;
                }
            }
            ticker.abort();
            (counts.0.load(SeqCst), counts.1.load(SeqCst))
        });
        assert!(ticks_during_fsync > 0, "the other task never ran while an fsync was in progress ({ticks} ticks in all)");
    }

    #[tokio::test]
    async fn writers_waiting_together_share_flushes() {
        use bridge_core::BridgeStore;
        let fx = Fixture::new();
        let store = fx.open();
        let a = UserId("a@x.org".into());
        let writes: Vec<_> = (0..50).map(|i| store.save(&a, &format!("outbox/{i}"), b"mail")).collect();
        for write in futures::future::join_all(writes).await {
            write.unwrap();
        }
        // The first writer's flush starts alone; the 49 that queued behind it share the next.
        let fsyncs = store.sled_probe().count.load(std::sync::atomic::Ordering::SeqCst);
        assert!(fsyncs <= 2, "50 writers waiting together took {fsyncs} fsyncs");
        assert_eq!(store.list(&a, "outbox/").unwrap().len(), 50);
    }

    #[tokio::test]
    async fn bridge_state_round_trips_per_user_and_goes_with_the_user() {
        use bridge_core::BridgeStore;
        let fx = Fixture::new();
        let store = fx.open();
        let (a, b) = (UserId("a@x.org".into()), UserId("b@x.org".into()));
        store.save(&a, "imap/uid", b"41").await.unwrap();
        store.save(&a, "outbox/1", b"m1").await.unwrap();
        store.save(&a, "outbox/2", b"m2").await.unwrap();
        store.save(&b, "outbox/1", b"other").await.unwrap();
        assert_eq!(store.load(&a, "imap/uid").unwrap().as_deref(), Some(&b"41"[..]));
        let outbox = store.list(&a, "outbox/").unwrap();
        assert_eq!(outbox, vec![("outbox/1".into(), b"m1".to_vec()), ("outbox/2".into(), b"m2".to_vec())]);
        store.delete(&a, "outbox/1").await.unwrap();
        assert_eq!(store.list(&a, "outbox/").unwrap().len(), 1);
        store.put_user("a@x.org", &full_record()).await.unwrap();
        store.remove_user("a@x.org").await.unwrap();
        assert!(store.list(&a, "").unwrap().is_empty(), "unregistering forgets bridge state");
        assert_eq!(store.list(&b, "").unwrap().len(), 1);
    }

    #[test]
    fn debug_output_hides_passwords() {
        let debug = format!("{:?}", full_record());
        assert!(!debug.contains(IRC_PASSWORD), "{debug}");
        assert!(!debug.contains(EMAIL_PASSWORD), "{debug}");
        assert!(debug.contains("alice_irc_nick"), "{debug}");
        let pretty = format!("{:#?}", full_record());
        assert!(!pretty.contains(IRC_PASSWORD) && !pretty.contains(EMAIL_PASSWORD));
        let fx = Fixture::new();
        let store_debug = format!("{:?}", fx.open());
        assert!(store_debug.contains("Store"), "{store_debug}");
    }

    const KILL_TEST_DIR_ENV: &str = "XMPP_GATEWAY_STORE_KILL_TEST_DIR";
    const KILL_TEST_MARKER: &str = "PUT-USER-RETURNED";

    /// The child side of [`put_user_survives_kill_9`]: stores a record, says so, and waits
    /// to be killed.
    fn kill_9_child(dir: &std::ffi::OsStr) {
        let fx_dir = PathBuf::from(dir);
        let store = Store::open(&fx_dir.join("db"), &fx_dir.join("store.key")).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(store.put_user(JID, &full_record())).unwrap();
        println!("{KILL_TEST_MARKER}");
        std::thread::sleep(std::time::Duration::from_secs(120));
    }

    /// The test binary runs itself as the child (with the directory in the environment),
    /// which stores a record and is killed with SIGKILL right after `put_user` returns.
    #[test]
    fn put_user_survives_kill_9() {
        if let Some(dir) = std::env::var_os(KILL_TEST_DIR_ENV) {
            return kill_9_child(&dir);
        }
        let fx = Fixture::new();
        // Create the store (and key) first, so the child only has to write the record.
        drop(fx.open());
        let module = module_path!();
        let test_name = format!(
            "{}::put_user_survives_kill_9",
            module.split_once("::").map_or(module, |(_, rest)| rest)
        );
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([&test_name, "--exact", "--nocapture"])
            .args(["--test-threads", "1"])
            .env(KILL_TEST_DIR_ENV, fx.tmp.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut seen = false;
        for line in stdout.lines() {
            if line.unwrap().contains(KILL_TEST_MARKER) {
                seen = true;
                break;
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        assert!(seen, "the child never reported storing the record ({test_name})");
        let store = fx.open();
        assert_eq!(store.user(JID).unwrap(), Some(full_record()));
    }
}
