//! Mail in: one IMAP connection per user and watched folder (INBOX, and those the user
//! listed), IDLE on it (polling where the server has no IDLE), each new mail delivered,
//! the last delivered UID kept durably, per folder, once the XMPP server routed it (at
//! least once: after a crash, the one mail in flight may come again, same id).

use std::sync::Arc;
use std::time::Duration;

use bridge_core::model::{Attachment, Event, RoutedAck, SessionKey, UserId};
use bridge_core::backoff::Backoff;
use bridge_core::{BridgeStore, EventSink, SessionEvent};
use bridge_net::Stream;
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use crate::incoming;
use crate::settings::{Account, EmailSettings, Security};

/// The IMAP session type over our stream.
pub(crate) type ImapSession = async_imap::Session<Stream>;

/// Where the last delivered mail of INBOX is recorded (per user); another folder's is
/// below it (`imap/state/<folder>`).
const STATE_KEY: &str = "imap/state";
/// The folder every account has, watched always.
pub const INBOX: &str = "INBOX";
/// Where the account whose correspondents were imported is recorded (its INBOX's
/// [`mailbox_id`]): once per account.
const IMPORTED_KEY: &str = "imap/correspondents-imported";
/// How long to wait before trying again after the server refused the password.
const AUTH_RETRY: Duration = Duration::from_secs(300);

/// Why IMAP failed.
#[derive(Debug, thiserror::Error)]
pub enum ImapError {
    /// Could not connect (TCP or TLS).
    #[error(transparent)]
    Connect(#[from] bridge_net::ConnectError),
    /// The server refused the login.
    #[error("IMAP login refused: {0}")]
    Login(String),
    /// Any other protocol failure.
    #[error("IMAP: {0}")]
    Protocol(String),
    /// The registration moved to another mailbox, whose start is recorded: this watcher
    /// (the old account's, until its session is stopped) must not move the checkpoint.
    #[error("the registration moved to another mailbox")]
    Superseded,
}

impl From<async_imap::error::Error> for ImapError {
    fn from(error: async_imap::error::Error) -> Self {
        ImapError::Protocol(error.to_string())
    }
}

/// What was delivered so far, for one mailbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Which mailbox (see [`mailbox_id`]): a registration changed to another account
    /// must not inherit this one's position, even where both INBOXes have the same
    /// UIDVALIDITY (Dovecot takes it from the creation second; some servers use 1).
    /// `None` in checkpoints written before it was recorded: they match on UIDVALIDITY.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mailbox: Option<String>,
    /// The mailbox's UIDVALIDITY: UIDs only compare within one.
    pub uid_validity: u32,
    /// The highest UID delivered to the user.
    pub last_uid: u32,
}

/// What names an account's INBOX across registrations: the login and the IMAP server.
#[must_use]
pub fn mailbox_id(account: &Account) -> String {
    folder_id(account, INBOX)
}

/// What names one folder of an account: [`mailbox_id`] with the folder's name.
#[must_use]
pub fn folder_id(account: &Account, folder: &str) -> String {
    format!("{}@{}:{}/{folder}", account.login, account.imap.host, account.imap.port)
}

/// The id of a mail without a Message-ID, stable across deliveries: its UID in its
/// folder (`imap-<uidvalidity>-<uid>` in INBOX, with `-<folder>` after it elsewhere).
#[must_use]
pub fn fallback_id(folder: &str, uid_validity: u32, uid: u32) -> String {
    if folder == INBOX { format!("imap-{uid_validity}-{uid}") } else { format!("imap-{uid_validity}-{uid}-{folder}") }
}

/// The folder, UIDVALIDITY and UID of a [`fallback_id`].
#[must_use]
pub fn parse_fallback_id(id: &str) -> Option<(String, u32, u32)> {
    let mut parts = id.strip_prefix("imap-")?.splitn(3, '-');
    let uid_validity = parts.next()?.parse().ok()?;
    let uid = parts.next()?.parse().ok()?;
    let folder = parts.next().unwrap_or(INBOX).to_owned();
    Some((folder, uid_validity, uid))
}

/// Where a folder's checkpoint is kept.
fn state_key(folder: &str) -> String {
    if folder == INBOX { STATE_KEY.to_owned() } else { format!("{STATE_KEY}/{folder}") }
}

/// Where delivery goes on from in a mailbox just selected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    /// From the saved checkpoint: it is this mailbox's.
    Saved(Checkpoint),
    /// From the mailbox's current end (first start, another account, or the mailbox was
    /// rebuilt: not from the beginning of the user's history); to be saved.
    Fresh {
        /// The new checkpoint.
        start: Checkpoint,
        /// The checkpoint it replaces, if there was one (worth a warning).
        replaced: Option<Checkpoint>,
    },
}

/// How a saved checkpoint must match the INBOX just selected to be resumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Matching {
    /// At a registration: the account may be another one now, so only a checkpoint of
    /// this account (or one from before accounts were recorded) with this UIDVALIDITY.
    SameAccount,
    /// At a session's start: the checkpoint was recorded for the registered account, so
    /// the same UIDVALIDITY is enough (an account named differently is the same mailbox
    /// reached another way, e.g. the administrator renamed the server).
    SameUidValidity,
}

/// Where delivery goes on from in the INBOX `mailbox` ([`mailbox_id`]) as selected now:
/// the saved checkpoint if it matches (see [`Matching`]), else the mailbox's current end.
/// A resumed checkpoint is named after `mailbox` from now on.
#[must_use]
pub fn resume_point(saved: Option<Checkpoint>, mailbox: &str, uid_validity: u32, uid_next: Option<u32>, matching: Matching) -> Resume {
    let resumable = |saved: &Checkpoint| {
        saved.uid_validity == uid_validity
            && (matching == Matching::SameUidValidity || saved.mailbox.as_deref().is_none_or(|m| m == mailbox))
    };
    match saved {
        Some(saved) if resumable(&saved) => Resume::Saved(Checkpoint { mailbox: Some(mailbox.to_owned()), ..saved }),
        replaced => Resume::Fresh {
            start: Checkpoint { mailbox: Some(mailbox.to_owned()), uid_validity, last_uid: uid_next.unwrap_or(1).saturating_sub(1) },
            replaced,
        },
    }
}

/// Records where the mailbox ends now as `user`'s checkpoint, unless one for this
/// mailbox (same account and UIDVALIDITY) is already there: their session starts from it.
pub async fn record_start(session: &mut ImapSession, account: &Account, store: &dyn BridgeStore, user: &UserId) -> Result<(), ImapError> {
    let mailbox = session.select(INBOX).await?;
    let saved = load_checkpoint(store, user, INBOX);
    match resume_point(saved, &mailbox_id(account), mailbox.uid_validity.unwrap_or(0), mailbox.uid_next, Matching::SameAccount) {
        Resume::Saved(_) => Ok(()),
        Resume::Fresh { start, .. } => save_checkpoint(store, user, INBOX, &start)
            .await
            .map_err(|e| ImapError::Protocol(format!("cannot record the mailbox's start: {e}"))),
    }
}

/// Whether the checkpoint `stored` belongs to another mailbox than `mine`: the
/// registration moved there (its login check recorded that mailbox's start).
#[must_use]
pub fn superseded(stored: Option<&Checkpoint>, mine: &Checkpoint) -> bool {
    stored.is_some_and(|stored| stored.mailbox.is_some() && stored.mailbox != mine.mailbox)
}

fn load_checkpoint(store: &dyn BridgeStore, user: &UserId, folder: &str) -> Option<Checkpoint> {
    let bytes = store.load(user, &state_key(folder)).ok()??;
    serde_json::from_slice(&bytes).ok()
}

async fn save_checkpoint(store: &dyn BridgeStore, user: &UserId, folder: &str, checkpoint: &Checkpoint) -> Result<(), String> {
    let bytes = serde_json::to_vec(checkpoint).map_err(|e| e.to_string())?;
    store.save(user, &state_key(folder), &bytes).await.map_err(|e| e.to_string())
}

/// Connects and logs in: implicit TLS, STARTTLS (required) or plain, as configured.
pub async fn login(account: &Account, settings: &EmailSettings) -> Result<ImapSession, ImapError> {
    let endpoint = &account.imap;
    let ca_file = settings.ca_file.as_deref();
    let stream = match endpoint.security {
        Security::Tls => bridge_net::connect_tls(&endpoint.host, endpoint.port, endpoint.reach, ca_file).await?,
        Security::Starttls | Security::Plain => bridge_net::connect_tcp(&endpoint.host, endpoint.port, endpoint.reach).await?,
    };
    let mut client = async_imap::Client::new(stream);
    // async-imap leaves the greeting to us.
    client
        .read_response()
        .await
        .map_err(|e| ImapError::Protocol(format!("no greeting: {e}")))?
        .ok_or_else(|| ImapError::Protocol("the server closed the connection before its greeting".into()))?;
    if endpoint.security == Security::Starttls {
        client.run_command_and_check_ok("STARTTLS", None).await?;
        let stream = client.into_inner().upgrade(&endpoint.host, endpoint.port, ca_file).await?;
        client = async_imap::Client::new(stream);
    }
    client
        .login(&account.login, account.password.expose())
        .await
        .map_err(|(error, _)| ImapError::Login(error.to_string()))
}

/// Watches one user's INBOX until told to stop.
pub struct Watcher {
    /// Whose mailbox: the tag of every event.
    pub key: SessionKey,
    /// The account.
    pub account: Account,
    /// Bridge settings (CA file, IDLE timeout).
    pub settings: Arc<EmailSettings>,
    /// Where the checkpoint lives.
    pub store: Arc<dyn BridgeStore>,
    /// Events to the gateway.
    pub events: EventSink,
    /// The folder watched: INBOX (whose watcher also reports the account's health and
    /// imports correspondents) or one the user listed.
    pub folder: String,
    /// The last mail of each of the user's threads, shared with the session that sends:
    /// a reply arriving here is what the user's next mail in the thread answers.
    pub threads: Arc<crate::thread::ThreadMemory>,
}

impl Watcher {
    /// Runs until `stop` fires, reconnecting with backoff.
    #[allow(clippy::manual_async_fn, reason = "an async fn would hold the watcher twice")]
    pub fn run(self, mut stop: oneshot::Receiver<()>) -> impl std::future::Future<Output = ()> + Send {
        // Not an `async fn`: it would hold its arguments twice (see `EmailSession::run`).
        async move { self.watch_until_stopped(&mut stop).await }
    }

    /// What `run` does.
    async fn watch_until_stopped(&self, stop: &mut oneshot::Receiver<()>) {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(120));
        let mut healthy: Option<bool> = None;
        loop {
            let result = tokio::select! {
                result = self.watch(&mut healthy) => result,
                _ = &mut *stop => return,
            };
            if healthy == Some(true) {
                // The mailbox was being watched: the next attempt starts from the first delay.
                backoff.reset();
            }
            let (reason, wait) = match result {
                Ok(()) => return,
                Err(ImapError::Superseded) => {
                    info!(user = %self.key.user.0, "the registration moved to another mailbox; this one is no longer watched");
                    return;
                }
                Err(ImapError::Login(reason)) => (format!("IMAP login refused: {reason}"), AUTH_RETRY),
                Err(error) => (error.to_string(), backoff.next_delay()),
            };
            warn!(user = %self.key.user.0, %reason, "IMAP session failed");
            if healthy != Some(false) {
                healthy = Some(false);
                if self.folder == INBOX {
                    Box::pin(self.emit(Event::NetworkStatus { online: false, reason: Some(reason) })).await;
                }
            }
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = &mut *stop => return,
            }
        }
    }

    async fn emit(&self, event: Event) {
        let _ = self.events.send(SessionEvent { key: self.key.clone(), event }).await;
    }

    /// One connection's life: log in, catch up, IDLE, repeat. Returns only on errors.
    ///
    /// The steps that run now and then (login, catching up, a mail's delivery) are boxed
    /// while they run: a task is as large as its largest state, and this one spends its
    /// life in IDLE, once per user (issue 12: 1,000 IDLE sessions).
    async fn watch(&self, healthy: &mut Option<bool>) -> Result<(), ImapError> {
        let mut session = Box::pin(login(&self.account, &self.settings)).await?;
        // Only what is read of it is kept across the awaits below.
        let (uid_validity, uid_next) = Box::pin(session.select(&self.folder)).await.map(|mailbox| (mailbox.uid_validity, mailbox.uid_next))?;
        let inbox = self.folder == INBOX;
        if *healthy != Some(true) {
            *healthy = Some(true);
            if inbox {
                Box::pin(self.emit(Event::NetworkStatus { online: true, reason: None })).await;
            }
        }
        if inbox && self.account.import_contacts > 0 {
            Box::pin(self.import_correspondents(&mut session, uid_next)).await?;
        }
        let saved = load_checkpoint(self.store.as_ref(), &self.key.user, &self.folder);
        let id = folder_id(&self.account, &self.folder);
        let mut checkpoint = match resume_point(saved.clone(), &id, uid_validity.unwrap_or(0), uid_next, Matching::SameUidValidity) {
            Resume::Saved(resumed) => {
                if saved.is_some_and(|saved| saved.mailbox != resumed.mailbox) {
                    // Named after this account from now on (see `superseded`).
                    Box::pin(self.save_checkpoint(&resumed)).await?;
                }
                resumed
            }
            Resume::Fresh { start, replaced } => {
                if replaced.is_some() {
                    warn!(user = %self.key.user.0, "UIDVALIDITY or account changed; starting from the newest mail");
                }
                Box::pin(self.save_checkpoint(&start)).await?;
                start
            }
        };
        let has_idle = Box::pin(session.capabilities()).await?.has_str("IDLE");
        info!(user = %self.key.user.0, has_idle, last_uid = checkpoint.last_uid, "watching {}", self.folder);
        loop {
            session = Box::pin(self.deliver_new(session, &mut checkpoint)).await?;
            // What the server said unasked (FETCH flags, RECENT...) waits in the session's
            // queue until read, each holding the buffer it was read into (4 KiB); new mail
            // is found by the FETCH above whatever it said.
            while session.unsolicited_responses.try_recv().is_ok() {}
            if has_idle {
                let mut idle = session.idle();
                Box::pin(idle.init()).await?;
                let (wait, _interrupt) = idle.wait_with_timeout(self.settings.idle_timeout);
                let response = wait.await?;
                debug!(?response, "IDLE returned");
                session = Box::pin(idle.done()).await?;
            } else {
                tokio::time::sleep(self.settings.poll_interval).await;
                Box::pin(session.noop()).await?;
            }
        }
    }

    /// Fetches and delivers every mail above the checkpoint, oldest first, moving the
    /// checkpoint after each delivery.
    async fn deliver_new(&self, mut session: ImapSession, checkpoint: &mut Checkpoint) -> Result<ImapSession, ImapError> {
        let Some(range) = uids_above(checkpoint.last_uid) else {
            return Ok(session);
        };
        let mut sizes: Vec<(u32, u32)> = session
            .uid_fetch(&range, "(UID RFC822.SIZE)")
            .await?
            .try_collect::<Vec<_>>()
            .await?
            .iter()
            .filter_map(|f| Some((f.uid?, f.size.unwrap_or(0))))
            // "n:*" also returns the newest mail when nothing is above n.
            .filter(|(uid, _)| *uid > checkpoint.last_uid)
            .collect();
        sizes.sort_unstable();
        let limits = self.settings.limits;
        for (uid, size) in sizes {
            // Larger than the limit: announced, not fetched (only the header is read).
            let query = if size > limits.fetch_bytes { "(UID BODY.PEEK[HEADER])" } else { "(UID BODY.PEEK[])" };
            let fetched = session.uid_fetch(uid.to_string(), query).await?.try_collect::<Vec<_>>().await?;
            let raw = fetched
                .iter()
                .find(|f| f.uid == Some(uid))
                .and_then(|f| f.body().or_else(|| f.header()))
                .unwrap_or_default();
            match incoming::parse_mail_within(raw, &limits) {
                Ok(mut mail) => {
                    if size > limits.fetch_bytes {
                        mail.notes.push(format!("[this mail is {} MiB: too large to fetch; read it in your mail client]", size / (1024 * 1024)));
                    }
                    bridge_core::counters::count(&bridge_core::counters::COUNTERS.mails_in);
                    let message = mail.to_message(&self.account.address, || fallback_id(&self.folder, checkpoint.uid_validity, uid));
                    if let (Some(root), Some(id)) = (&mail.thread, &message.id) {
                        if let Some(thread) = crate::thread::client_thread(root) {
                            self.threads.note(&thread, root, id);
                        }
                    }
                    let peer = message.peer.clone();
                    self.emit(Event::Message(message)).await;
                    for file in mail.attachments.into_iter().filter(|file| !file.is_withheld()) {
                        let attachment = Attachment { name: file.name, content_type: file.content_type, content: file.content };
                        self.emit(Event::Attachment { peer: peer.clone(), attachment }).await;
                    }
                }
                Err(error) => warn!(user = %self.key.user.0, uid, %error, "undeliverable mail skipped"),
            }
            // The checkpoint moves only once the XMPP server has routed the mail's
            // stanzas: a crash before that delivers the mail again after the restart.
            let (ack, written) = RoutedAck::new();
            self.emit(Event::WhenRouted(ack)).await;
            if written.await.is_err() {
                return Err(ImapError::Protocol("the gateway stopped before the mail was handed to the XMPP server".into()));
            }
            if self.account.mark_seen {
                session.uid_store(uid.to_string(), "+FLAGS.SILENT (\\Seen)").await?.try_collect::<Vec<_>>().await?;
            }
            checkpoint.last_uid = uid;
            // Checked and written with no await in between: on the gateway's one thread,
            // a registration's login check cannot slip its record in between.
            if superseded(load_checkpoint(self.store.as_ref(), &self.key.user, &self.folder).as_ref(), checkpoint) {
                return Err(ImapError::Superseded);
            }
            self.save_checkpoint(checkpoint).await?;
        }
        Ok(session)
    }

    /// Reports the people of the newest `import_contacts` mails of INBOX (`From`, `To`,
    /// `Cc`, the user's own address left out) once per account, for the user's roster.
    async fn import_correspondents(&self, session: &mut ImapSession, uid_next: Option<u32>) -> Result<(), ImapError> {
        let account = mailbox_id(&self.account);
        if self.store.load(&self.key.user, IMPORTED_KEY).ok().flatten().as_deref() == Some(account.as_bytes()) {
            return Ok(());
        }
        let mut uids: Vec<u32> = session.uid_search("ALL").await?.into_iter().filter(|uid| uid_next.is_none_or(|next| *uid < next)).collect();
        uids.sort_unstable();
        let newest = uids.get(uids.len().saturating_sub(self.account.import_contacts as usize)..).unwrap_or_default();
        let mut people: Vec<(String, Option<String>)> = Vec::new();
        if !newest.is_empty() {
            let set = newest.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
            let fetched: Vec<_> = session.uid_fetch(&set, "(UID BODY.PEEK[HEADER.FIELDS (FROM TO CC)])").await?.try_collect().await?;
            // Newest first, so a name seen twice is the latest one.
            for fetch in fetched.iter().rev() {
                let Some(header) = fetch.header().or_else(|| fetch.body()) else { continue };
                for (address, name) in incoming::correspondents(header, &self.account.address) {
                    if !people.iter().any(|(known, _)| *known == address) {
                        people.push((address, name));
                    }
                }
            }
        }
        info!(user = %self.key.user.0, mails = newest.len(), people = people.len(), "correspondents of the latest mails imported");
        if !people.is_empty() {
            self.emit(Event::Correspondents(people)).await;
        }
        self.store
            .save(&self.key.user, IMPORTED_KEY, account.as_bytes())
            .await
            .map_err(|e| ImapError::Protocol(format!("cannot record the import: {e}")))
    }

    async fn save_checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), ImapError> {
        save_checkpoint(self.store.as_ref(), &self.key.user, &self.folder, checkpoint)
            .await
            .map_err(|e| ImapError::Protocol(format!("cannot record delivery: {e}")))
    }
}

/// The UID set of the mails above `last_uid` (`n+1:*`); none above the largest UID
/// (RFC 3501 allows 2^32-1, and a server could hand it out).
fn uids_above(last_uid: u32) -> Option<String> {
    last_uid.checked_add(1).map(|first| format!("{first}:*"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HERE: &str = "alice@example.test@127.0.0.1:1143/INBOX";

    fn at(mailbox: Option<&str>, uid_validity: u32, last_uid: u32) -> Checkpoint {
        Checkpoint { mailbox: mailbox.map(str::to_owned), uid_validity, last_uid }
    }

    #[test]
    fn nothing_is_fetched_above_the_largest_uid() {
        assert_eq!(uids_above(0).as_deref(), Some("1:*"));
        assert_eq!(uids_above(41).as_deref(), Some("42:*"));
        assert_eq!(uids_above(u32::MAX), None);
    }

    #[test]
    fn fallback_ids_name_the_folder_outside_inbox_and_parse_back() {
        assert_eq!(fallback_id(INBOX, 7, 42), "imap-7-42", "as before folders");
        assert_eq!(parse_fallback_id("imap-7-42"), Some((INBOX.to_owned(), 7, 42)));
        let id = fallback_id("Lists/rust-users", 7, 42);
        assert_eq!(parse_fallback_id(&id), Some(("Lists/rust-users".to_owned(), 7, 42)));
        for other in ["m1@example.org", "imap-x-1", "imap-7", "imap--1"] {
            assert_eq!(parse_fallback_id(other), None, "{other}");
        }
        assert_eq!(state_key(INBOX), "imap/state");
        assert_eq!(state_key("Lists"), "imap/state/Lists");
    }

    #[test]
    fn the_saved_checkpoint_of_this_mailbox_is_resumed() {
        assert_eq!(resume_point(Some(at(Some(HERE), 7, 41)), HERE, 7, Some(90), Matching::SameAccount), Resume::Saved(at(Some(HERE), 7, 41)));
    }

    #[test]
    fn a_checkpoint_from_before_mailboxes_were_recorded_is_resumed_and_learns_its_mailbox() {
        for matching in [Matching::SameAccount, Matching::SameUidValidity] {
            assert_eq!(resume_point(Some(at(None, 7, 41)), HERE, 7, Some(90), matching), Resume::Saved(at(Some(HERE), 7, 41)));
        }
        let old: Checkpoint = serde_json::from_str(r#"{"uid_validity":7,"last_uid":41}"#).unwrap();
        assert_eq!(old, at(None, 7, 41));
    }

    #[test]
    fn without_a_checkpoint_delivery_starts_at_the_mailboxs_end() {
        assert_eq!(resume_point(None, HERE, 7, Some(90), Matching::SameUidValidity), Resume::Fresh { start: at(Some(HERE), 7, 89), replaced: None });
        assert_eq!(resume_point(None, HERE, 7, None, Matching::SameAccount), Resume::Fresh { start: at(Some(HERE), 7, 0), replaced: None });
    }

    #[test]
    fn a_rebuilt_mailbox_starts_at_its_end() {
        let saved = at(Some(HERE), 7, 41);
        for matching in [Matching::SameAccount, Matching::SameUidValidity] {
            let expected = Resume::Fresh { start: at(Some(HERE), 8, 2), replaced: Some(saved.clone()) };
            assert_eq!(resume_point(Some(saved.clone()), HERE, 8, Some(3), matching), expected);
        }
    }

    /// A registration changed to another account whose INBOX has the same UIDVALIDITY
    /// (Dovecot: created in the same second) used to inherit the old position: with
    /// last UID 500 there and 10 mails here, the next 490 mails were skipped.
    #[test]
    fn another_accounts_checkpoint_is_not_inherited_even_with_the_same_uidvalidity() {
        let other = at(Some("bob@example.test@127.0.0.1:1143/INBOX"), 7, 500);
        let expected = Resume::Fresh { start: at(Some(HERE), 7, 10), replaced: Some(other.clone()) };
        assert_eq!(resume_point(Some(other), HERE, 7, Some(11), Matching::SameAccount), expected);
    }

    /// At a session's start the checkpoint is the registered account's, whatever it was
    /// named when written: a server the administrator renamed loses no mail.
    #[test]
    fn a_session_resumes_its_checkpoint_under_a_new_name_of_the_same_mailbox() {
        let renamed = at(Some("alice@example.test@old-name:1143/INBOX"), 7, 41);
        assert_eq!(resume_point(Some(renamed), HERE, 7, Some(90), Matching::SameUidValidity), Resume::Saved(at(Some(HERE), 7, 41)));
    }

    /// A registration changed to bob's box records its start there; alice's watcher, still
    /// running until her session is stopped, must not overwrite it with her position (bob's
    /// session would then find another mailbox's checkpoint and skip what landed meanwhile).
    #[test]
    fn a_checkpoint_of_another_mailbox_supersedes_this_watcher() {
        let alice = at(Some(HERE), 7, 41);
        let bob = at(Some("bob@example.test@127.0.0.1:1143/INBOX"), 9, 3);
        assert!(superseded(Some(&bob), &alice));
        assert!(!superseded(Some(&at(Some(HERE), 7, 40)), &alice), "its own earlier position");
        assert!(!superseded(Some(&at(None, 7, 40)), &alice), "a checkpoint from before mailboxes were recorded");
        assert!(!superseded(None, &alice));
    }

    #[test]
    fn the_mailbox_is_named_by_login_and_server() {
        let account = Account {
            address: "alice@example.test".into(),
            login: "alice".into(),
            password: bridge_core::Secret::new("pw"),
            imap: crate::Endpoint::parse("imap.example.test:993", None).unwrap(),
            smtp: crate::Endpoint::parse("smtp.example.test:465", None).unwrap(),
            mark_seen: false,
            save_sent: false,
            display_name: None,
            mark_displayed: false,
            import_contacts: 0,
            folders: Vec::new(),
        };
        assert_eq!(mailbox_id(&account), "alice@imap.example.test:993/INBOX");
        assert!(!mailbox_id(&account).contains("pw"));
    }
}

#[cfg(test)]
pub(crate) mod size_tests {
    use super::*;
    use bridge_core::model::NetworkId;
    use bridge_core::{BoxFuture, StoreFailure};

    /// A store that keeps nothing (tasks' sizes only).
    pub(crate) struct NoStore;

    impl BridgeStore for NoStore {
        fn load(&self, _: &UserId, _: &str) -> Result<Option<Vec<u8>>, StoreFailure> {
            Ok(None)
        }
        fn save(&self, _: &UserId, _: &str, _: &[u8]) -> BoxFuture<'static, Result<(), StoreFailure>> {
            Box::pin(async { Ok(()) })
        }
        fn delete(&self, _: &UserId, _: &str) -> BoxFuture<'static, Result<(), StoreFailure>> {
            Box::pin(async { Ok(()) })
        }
        fn list(&self, _: &UserId, _: &str) -> Result<Vec<(String, Vec<u8>)>, StoreFailure> {
            Ok(Vec::new())
        }
    }

    /// An account on local servers, every option off (tasks' sizes only).
    pub(crate) fn account() -> Account {
        Account {
            address: "a@b".into(),
            login: "a".into(),
            password: bridge_core::Secret::new("pw"),
            imap: crate::Endpoint::parse("127.0.0.1:1143", None).unwrap(),
            smtp: crate::Endpoint::parse("127.0.0.1:1587", None).unwrap(),
            mark_seen: false,
            save_sent: false,
            display_name: None,
            mark_displayed: false,
            import_contacts: 0,
            folders: Vec::new(),
        }
    }

    /// Each registered user's watcher is a task that lives in IDLE: its size is paid once
    /// per user (issue 12: 1,000 IDLE sessions; bench/ measures the RSS per session).
    #[test]
    fn a_watcher_task_stays_small() {
        let account = account();
        let (events, _) = tokio::sync::mpsc::channel(1);
        let watcher = Watcher {
            key: SessionKey { user: UserId("a@b".into()), network: NetworkId::Email },
            account,
            settings: Arc::new(EmailSettings::default()),
            store: Arc::new(NoStore),
            events,
            folder: INBOX.to_owned(),
            threads: Arc::default(),
        };
        let (_stop, stopped) = oneshot::channel();
        let task = watcher.run(stopped);
        let size = std::mem::size_of_val(&task);
        // 2,768 bytes before issue 12 boxed the steps that run now and then; 1,744 after.
        assert!(size <= 1800, "an IMAP watcher's task takes {size} bytes");
    }
}
