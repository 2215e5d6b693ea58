//! One user's email session: the IMAP watcher runs as its own task, and this task sends
//! the user's messages as mails through a durable outbox, retrying temporary failures.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bridge_core::model::{Attachment, Command, Event, FailureKind, Message, Peer, SessionKey};
use bridge_core::backoff::{sleep_until_opt, Backoff};
use bridge_core::{BridgeStore, Commands, EventSink, FileFetcher, SessionEvent};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::{info, warn, Instrument};

use crate::imap::Watcher;
use crate::outgoing::{self, OutgoingMail};
use crate::sent::{AppendError, SentFolder};
use crate::settings::{Account, EmailSettings};
use crate::smtp::{self, Transport};

/// Prefix of outbox keys in the bridge store.
const OUTBOX: &str = "outbox/";
/// Prefix of the copies of sent mail waiting to be appended to the Sent folder (the
/// same suffix as the outbox entry they were, so they keep its order).
const SENT_COPIES: &str = "sent-copy/";
/// First and last retry delays of the outbox.
const RETRY_FIRST: Duration = Duration::from_secs(5);
const RETRY_MAX: Duration = Duration::from_secs(600);
/// How long the mails a user read wait to be marked together (one IMAP login for a
/// client that marks every message of a conversation).
const READ_DELAY: Duration = Duration::from_secs(2);
/// When marking failed (the IMAP server away), how long until the next try.
const READ_RETRY: Duration = Duration::from_secs(60);
/// Most ids of read mail waiting to be marked; the oldest goes first.
const READS_WAITING: usize = 1000;

/// A mail accepted from the user and not yet accepted by their SMTP server. Stored
/// formatted, so a retry after a restart sends the very same bytes (same Message-ID).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct OutboxEntry {
    /// Envelope sender.
    from: String,
    /// Envelope recipient (the first, in entries from before groups).
    to: String,
    /// Every envelope recipient, when the mail went to several.
    #[serde(default)]
    recipients: Vec<String>,
    /// The formatted message: a JSON string in the store (see [`raw_mail`]).
    #[serde(with = "raw_mail")]
    raw: Vec<u8>,
    /// The XMPP id of the message it came from, for an error that points at it.
    #[serde(default)]
    xmpp_id: Option<String>,
}

/// The session of one user's mail account.
pub struct EmailSession {
    /// Whose session: the tag of every event.
    key: SessionKey,
    /// The account, with its servers resolved.
    account: Account,
    /// Bridge-wide settings.
    settings: Arc<EmailSettings>,
    /// Durable outbox and IMAP checkpoint.
    store: Arc<dyn BridgeStore>,
    /// Events to the gateway.
    events: EventSink,
    /// Commands from the gateway.
    commands: Commands,
    /// The last mail of each of the user's threads (the watcher notes replies).
    threads: Arc<crate::thread::ThreadMemory>,
    /// Fetches the files the user links to, to attach them; `None`: links stay text.
    files: Option<Arc<dyn FileFetcher>>,
}

impl OutboxEntry {
    /// Every recipient of the mail.
    fn recipients(&self) -> Vec<String> {
        if self.recipients.is_empty() { vec![self.to.clone()] } else { self.recipients.clone() }
    }

    /// Whom the mail was for, as the user addressed them: an error comes back from there.
    fn peer(&self) -> Peer {
        match self.recipients() {
            group if group.len() > 1 => Peer::EmailGroup(group),
            _ => Peer::EmailAddress(self.to.clone()),
        }
    }
}

impl EmailSession {
    /// A session; run it with [`EmailSession::run`].
    pub fn new(
        key: SessionKey,
        account: Account,
        settings: Arc<EmailSettings>,
        store: Arc<dyn BridgeStore>,
        events: EventSink,
        commands: Commands,
    ) -> Self {
        EmailSession { key, account, settings, store, events, commands, threads: Arc::default(), files: None }
    }

    /// The same session, attaching the files the user links to, fetched by `files`.
    #[must_use]
    pub fn with_files(self, files: Option<Arc<dyn FileFetcher>>) -> Self {
        EmailSession { files, ..self }
    }

    /// Runs until shut down.
    #[allow(clippy::manual_async_fn, reason = "an async fn would hold the session twice")]
    pub fn run(mut self) -> impl std::future::Future<Output = ()> + Send {
        // Not an `async fn run(mut self)`: that keeps the argument and the `mut` binding
        // as two copies of the session in the task (hundreds of bytes, times thousands
        // of idle sessions); this block holds one and lends it.
        // A panic ends the session properly (`bridge_core::end_if_panicked`).
        async move {
            let outcome = bridge_core::catch_panic(self.serve_until_ended()).await;
            bridge_core::end_if_panicked(outcome, &self.key, &self.events, &mut self.commands).await;
        }
    }

    /// The session's life: what `run` does.
    async fn serve_until_ended(&mut self) {
        let (stop, stopped) = oneshot::channel();
        let mut watching = tokio::spawn(self.watcher(crate::imap::INBOX).run(stopped).in_current_span());
        // The other folders the user listed, each watched on a connection of its own.
        let folders: Vec<_> = self
            .account
            .folders
            .iter()
            .map(|folder| {
                let (stop, stopped) = oneshot::channel();
                (stop, tokio::spawn(self.watcher(folder).run(stopped).in_current_span()))
            })
            .collect();
        // Ids of mail the user's client showed them, marked read together a moment later.
        let mut reads: Vec<String> = Vec::new();
        let mut read_at: Option<Instant> = None;
        // The watcher stops on its own only when a newer registration supersedes it; the
        // session then goes on sending mail.
        let mut watcher_stopped = false;
        // Built when there is mail to send (and again after it failed to build: its
        // server is resolved then, and DNS may have been down).
        let mut transport = None;
        let mut retries = Backoff::new(RETRY_FIRST, RETRY_MAX);
        // Mail left in the outbox by an earlier run goes first.
        let mut retry_at = Some(Instant::now());
        loop {
            tokio::select! {
                command = self.commands.recv() => match command {
                    None | Some(Command::Shutdown { .. }) => break,
                    Some(Command::Send(message)) => {
                        // Boxed, as every step below that runs now and then: the task
                        // lives in this `select!` for the user's whole registration, and
                        // an inline future would be paid for by every idle session.
                        if Box::pin(self.enqueue(message)).await {
                            retry_at = Some(Instant::now());
                        }
                    }
                    Some(Command::MarkRead { id, .. }) if self.account.mark_displayed => {
                        if reads.len() >= READS_WAITING {
                            reads.remove(0);
                        }
                        reads.push(id);
                        read_at = read_at.or_else(|| Some(Instant::now() + READ_DELAY));
                    }
                    Some(_) => {}
                },
                () = sleep_until_opt(read_at) => {
                    match Box::pin(crate::read_state::mark_read(&self.account, &self.settings, &reads)).await {
                        Ok(marked) => {
                            info!(asked = reads.len(), marked, "mail the user read marked \\Seen");
                            reads.clear();
                            read_at = None;
                        }
                        Err(error) => {
                            warn!(%error, waiting = reads.len(), "marking mail read failed; tried again later");
                            read_at = Some(Instant::now() + READ_RETRY);
                        }
                    }
                }
                joined = &mut watching, if !watcher_stopped => {
                    watcher_stopped = true;
                    if let Err(error) = joined {
                        if error.is_panic() {
                            // The watcher's panic is the session's: `run` ends the
                            // session (`bridge_core::end_if_panicked`), which tells the
                            // user and hands the commands not taken to a new one.
                            std::panic::resume_unwind(error.into_panic());
                        }
                    }
                }
                () = sleep_until_opt(retry_at) => {
                    if transport.is_none() {
                        match Box::pin(smtp::transport(&self.account, &self.settings)).await {
                            Ok(built) => transport = Some(Box::new(built)),
                            Err(error @ smtp::TransportError::Refused(_)) => {
                                // It will not change by waiting: each mail is reported.
                                warn!(%error, "the SMTP server is refused by the network policy");
                                Box::pin(self.refuse_outbox(&error.to_string())).await;
                                retry_at = None;
                                continue;
                            }
                            Err(error) => warn!(%error, "no SMTP transport yet; mail waits in the outbox"),
                        }
                    }
                    retry_at = match &transport {
                        Some(transport) if Box::pin(self.flush_outbox(transport)).await && Box::pin(self.file_sent_copies()).await => {
                            retries.reset();
                            None
                        }
                        _ => Some(Instant::now() + retries.next_delay()),
                    };
                }
            }
        }
        let _ = stop.send(());
        if !watcher_stopped {
            let _ = watching.await;
        }
        for (stop, watching) in folders {
            let _ = stop.send(());
            let _ = watching.await;
        }
        let ended = SessionEvent { key: self.key.clone(), event: Event::Ended { reason: "session closed".into(), unhandled: Vec::new() } };
        let _ = Box::pin(self.events.send(ended)).await;
    }

    /// The watcher of `folder`.
    fn watcher(&self, folder: &str) -> Watcher {
        Watcher {
            key: self.key.clone(),
            account: self.account.clone(),
            settings: self.settings.clone(),
            store: self.store.clone(),
            events: self.events.clone(),
            folder: folder.to_owned(),
            threads: self.threads.clone(),
        }
    }

    async fn fail(&self, peer: Peer, id: Option<String>, kind: FailureKind, text: String) {
        let event = Event::Failure { peer: Some(peer), id, kind, text };
        let _ = self.events.send(SessionEvent { key: self.key.clone(), event }).await;
    }

    /// Turns a message into a mail in the outbox; false if it was refused at once.
    async fn enqueue(&self, message: Message) -> bool {
        let to = match &message.peer {
            Peer::EmailAddress(to) => vec![to.clone()],
            Peer::EmailGroup(group) => group.clone(),
            _ => return false,
        };
        let Some((body, attachments)) = self.fetch_links(&message).await else { return false };
        let domain = self.account.address.rsplit_once('@').map(|(_, d)| d).unwrap_or("localhost");
        let unique = outgoing::new_message_id(domain);
        // A thread that is a mail's id is answered; a client's own thread goes into the
        // Message-ID (replies bring it back), answering its last mail when remembered.
        let (in_reply_to, references, message_id) = match message.thread.as_deref() {
            Some(thread) => match as_message_id(thread) {
                Some(id) => (Some(id.clone()), vec![id], unique),
                None => {
                    let ends = self.threads.ends_of(thread);
                    let message_id = crate::thread::message_id_in(&unique, thread);
                    match ends {
                        Some((root, last)) => (Some(last), vec![root], message_id),
                        None => (None, Vec::new(), message_id),
                    }
                }
            },
            None => (None, Vec::new(), unique),
        };
        let mail = OutgoingMail {
            from: self.account.address.clone(),
            // The name the user set, else the one their client gave (XEP-0172).
            from_name: self.account.display_name.clone().or_else(|| message.sender.clone()),
            to,
            subject: message.subject.clone().unwrap_or_else(|| self.settings.default_subject.clone()),
            body,
            in_reply_to,
            references,
            message_id,
            attachments,
        };
        let built = match outgoing::build(&mail, SystemTime::now()) {
            Ok(built) => built,
            Err(error) => {
                self.fail(message.peer.clone(), message.id.clone(), FailureKind::NotAcceptable, error.to_string()).await;
                return false;
            }
        };
        if let Some(thread) = message.thread.as_deref().filter(|thread| as_message_id(thread).is_none()) {
            let root = mail.references.first().cloned().unwrap_or_else(|| mail.message_id.clone());
            self.threads.note(thread, &root, &mail.message_id);
        }
        let recipients = if mail.to.len() > 1 { mail.to.clone() } else { Vec::new() };
        let first = mail.to.first().cloned().unwrap_or_default();
        let entry = OutboxEntry { from: mail.from.clone(), to: first, recipients, raw: built.formatted(), xmpp_id: message.id.clone() };
        let key = format!(
            "{OUTBOX}{:020}-{:08x}",
            SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0),
            fastrand::u32(..)
        );
        let saved = match serde_json::to_vec(&entry) {
            Ok(bytes) => {
                if let Some(text) = self.outbox_full(bytes.len()) {
                    self.fail(message.peer.clone(), message.id.clone(), FailureKind::ResourceConstraint, text).await;
                    return false;
                }
                self.store.save(&self.key.user, &key, &bytes).await.map_err(|e| e.to_string())
            }
            Err(error) => Err(error.to_string()),
        };
        if let Err(error) = saved {
            let text = format!("the gateway could not queue the mail: {error}");
            self.fail(message.peer.clone(), message.id.clone(), FailureKind::Unavailable, text).await;
            return false;
        }
        true
    }

    /// The files `message` links to, fetched, and its body without the links (the files
    /// are attached instead); `None` when one cannot be fetched, which is reported: the
    /// mail is not sent without it. Without a fetcher, the body and no files.
    async fn fetch_links(&self, message: &Message) -> Option<(String, Vec<Attachment>)> {
        let Some(files) = self.files.as_ref().filter(|_| !message.links.is_empty()) else {
            return Some((message.body.clone(), Vec::new()));
        };
        let mut attachments = Vec::new();
        for url in &message.links {
            match files.fetch(&self.key.user, url, self.settings.attachment_bytes).await {
                Ok(file) => {
                    info!(name = %file.name, size = file.content.len(), "linked file attached");
                    attachments.push(file);
                }
                Err(error) => {
                    let text = format!("not sent: the file you linked could not be attached: {}", error.text);
                    self.fail(message.peer.clone(), message.id.clone(), error.kind, text).await;
                    return None;
                }
            }
        }
        Some((body_without_links(&message.body, &message.links), attachments))
    }

    /// Reports every mail in the outbox as not sent (`not-allowed`, `text`), and drops it.
    async fn refuse_outbox(&self, text: &str) {
        for (key, bytes) in self.store.list(&self.key.user, OUTBOX).unwrap_or_default() {
            let _ = self.store.delete(&self.key.user, &key).await;
            if let Ok(entry) = serde_json::from_slice::<OutboxEntry>(&bytes) {
                let text = format!("not sent: {text}");
                self.fail(entry.peer(), entry.xmpp_id, FailureKind::NotAllowed, text).await;
            }
        }
    }

    /// Why a mail stored as `bytes` does not fit in the outbox (`[limits]`), if it does
    /// not. Counted as stored (the formatted mail in JSON), as the limit is on the store.
    fn outbox_full(&self, bytes: usize) -> Option<String> {
        let limits = self.settings.outbox;
        let waiting = self.store.list(&self.key.user, OUTBOX).unwrap_or_default();
        let waiting_bytes: usize = waiting.iter().map(|(_, entry)| entry.len()).sum();
        if waiting.len() >= limits.mails {
            Some(format!(
                "not sent: {} mails already wait for your mail server, the most this gateway keeps (limits.outbox_mails_per_user)",
                waiting.len()
            ))
        } else if waiting_bytes + bytes > limits.bytes {
            Some(format!(
                "not sent: with it, the mail waiting for your mail server would take more than {} bytes (limits.outbox_bytes_per_user)",
                limits.bytes
            ))
        } else {
            None
        }
    }

    /// Sends every queued mail in order; true when the outbox is empty afterwards (or
    /// only held mail the server refused for good, which is reported and dropped).
    async fn flush_outbox(&self, transport: &Transport) -> bool {
        let entries = match self.store.list(&self.key.user, OUTBOX) {
            Ok(entries) => entries,
            Err(error) => {
                warn!(%error, "cannot read the outbox");
                return false;
            }
        };
        for (key, bytes) in entries {
            let Ok(entry) = serde_json::from_slice::<OutboxEntry>(&bytes) else {
                warn!(%key, "dropping an unreadable outbox entry");
                let _ = self.store.delete(&self.key.user, &key).await;
                continue;
            };
            let to: Result<Vec<lettre::Address>, _> = entry.recipients().iter().map(|to| to.parse()).collect();
            let envelope = match (entry.from.parse(), to) {
                (Ok(from), Ok(to)) => lettre::address::Envelope::new(Some(from), to),
                _ => Err(lettre::error::Error::MissingTo),
            };
            let result = match envelope {
                Ok(envelope) => smtp::send(transport, &envelope, &entry.raw).await,
                Err(error) => Err(smtp::SendError { permanent: true, text: error.to_string() }),
            };
            match result {
                Ok(()) => {
                    info!(to = %entry.to, "mail sent");
                    // Out of the outbox first: a crash in between loses the copy, never
                    // sends the mail twice.
                    let _ = self.store.delete(&self.key.user, &key).await;
                    if self.account.save_sent {
                        self.keep_sent_copy(&key, &entry.raw).await;
                    }
                }
                Err(error) if error.permanent => {
                    warn!(to = %entry.to, %error, "mail refused");
                    let _ = self.store.delete(&self.key.user, &key).await;
                    let text = format!("your mail server refused the mail: {}", error.text);
                    self.fail(entry.peer(), entry.xmpp_id.clone(), FailureKind::NotAcceptable, text).await;
                }
                Err(error) => {
                    warn!(to = %entry.to, %error, "mail not sent yet; will retry");
                    return false;
                }
            }
        }
        true
    }
}

impl EmailSession {
    /// Keeps the copy of a mail just sent (outbox entry `key`) until it is in the Sent
    /// folder; skipped, with a warning, when as many copies as the outbox holds mails
    /// already wait (an IMAP server down for long must not fill the store).
    async fn keep_sent_copy(&self, key: &str, raw: &[u8]) {
        let waiting = self.store.list(&self.key.user, SENT_COPIES).map(|copies| copies.len()).unwrap_or(0);
        if waiting >= self.settings.outbox.mails {
            warn!(waiting, "too many copies wait for the Sent folder; this one is not kept");
            return;
        }
        let suffix = key.strip_prefix(OUTBOX).unwrap_or(key);
        if let Err(error) = self.store.save(&self.key.user, &format!("{SENT_COPIES}{suffix}"), raw).await {
            warn!(%error, "cannot keep the copy for the Sent folder");
        }
    }

    /// Appends the waiting copies of sent mail to the Sent folder, oldest first; true
    /// when none waits any more (a copy the server refuses is dropped with a warning:
    /// the mail itself went out).
    async fn file_sent_copies(&self) -> bool {
        let copies = match self.store.list(&self.key.user, SENT_COPIES) {
            Ok(copies) if copies.is_empty() => return true,
            Ok(copies) => copies,
            Err(error) => {
                warn!(%error, "cannot read the copies for the Sent folder");
                return false;
            }
        };
        let mut folder = match SentFolder::open(&self.account, &self.settings).await {
            Ok(folder) => folder,
            Err(error) => {
                warn!(%error, waiting = copies.len(), "no Sent folder yet; the copies wait");
                return false;
            }
        };
        for (key, raw) in copies {
            match folder.append(&raw).await {
                Ok(()) => info!(folder = %folder.name(), "copy of a sent mail filed"),
                Err(AppendError::Refused(text)) => warn!(folder = %folder.name(), %text, "the Sent folder refused a copy; dropped"),
                Err(error @ AppendError::Failed(_)) => {
                    warn!(%error, "filing a copy in the Sent folder failed; it waits");
                    return false;
                }
            }
            let _ = self.store.delete(&self.key.user, &key).await;
        }
        folder.close().await;
        true
    }
}

/// How an outbox entry's formatted mail is stored: as a JSON string when it is UTF-8,
/// which lettre's output always is (every part 7bit, quoted-printable or base64), so a
/// mail takes about its own size in the store; as an array of numbers otherwise, as
/// entries written before did (3 to 4 bytes a byte: a 10 MiB attachment would have
/// filled the outbox's 25 MiB alone). Both forms are read.
mod raw_mail {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(raw: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(raw) {
            Ok(text) => serializer.serialize_str(text),
            Err(_) => serializer.collect_seq(raw),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        /// Either form.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Stored {
            Text(String),
            Bytes(Vec<u8>),
        }
        Ok(match Stored::deserialize(deserializer)? {
            Stored::Text(text) => text.into_bytes(),
            Stored::Bytes(bytes) => bytes,
        })
    }
}

/// `body` without the lines that are only one of `links` (XEP-0363 clients send the
/// link as the whole body), trimmed.
fn body_without_links(body: &str, links: &[String]) -> String {
    body.lines().filter(|line| !links.iter().any(|link| line.trim() == link)).collect::<Vec<_>>().join("\n").trim().to_owned()
}

/// A thread id usable as a Message-ID reference: ids that came from mail look like
/// `local@domain`; a client's own random thread id is no mail's id and starts a new thread.
fn as_message_id(thread: &str) -> Option<String> {
    let valid = thread.contains('@')
        && thread.len() <= 250
        && thread.bytes().all(|b| b.is_ascii_graphic() && !matches!(b, b'<' | b'>' | b'"' | b'\\' | b','));
    valid.then(|| thread.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each registered user's session is a task that waits most of its life: its size is
    /// paid once per user, beside the watcher's (issue 12: RSS per IDLE session).
    #[test]
    fn a_session_task_stays_small() {
        let account = crate::imap::size_tests::account();
        let (events, _) = tokio::sync::mpsc::channel(1);
        let (_queue, commands) = bridge_core::command_queue();
        let key = SessionKey { user: bridge_core::model::UserId("a@b".into()), network: bridge_core::model::NetworkId::Email };
        let session = EmailSession::new(key, account, Arc::new(EmailSettings::default()), Arc::new(crate::imap::size_tests::NoStore), events, commands);
        let task = session.run();
        let size = std::mem::size_of_val(&task);
        // 3,224 bytes before the steps that run now and then (a mail queued or sent, the
        // transport built, the end) were boxed; 1,224 after.
        assert!(size <= 1300, "an email session's task takes {size} bytes");
    }

    #[test]
    fn a_mail_takes_about_its_own_size_in_the_outbox_and_old_entries_still_read() {
        let line = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAxMjM0\r\n";
        let raw = line.repeat(1024 * 1024 / line.len()).into_bytes();
        let entry = OutboxEntry { from: "a@x".into(), to: "b@y".into(), recipients: Vec::new(), raw: raw.clone(), xmpp_id: None };
        let stored = serde_json::to_vec(&entry).unwrap();
        assert!(stored.len() < raw.len() + raw.len() / 20, "{} bytes stored for {}", stored.len(), raw.len());
        let back: OutboxEntry = serde_json::from_slice(&stored).unwrap();
        assert_eq!(back.raw, raw);
        // An entry written before: the mail as an array of numbers, no recipients field.
        let old: OutboxEntry = serde_json::from_str(r#"{"from":"a@x","to":"b@y","raw":[72,105,13,10],"xmpp_id":"m1"}"#).unwrap();
        assert_eq!((old.raw.as_slice(), old.recipients(), old.xmpp_id.as_deref()), (&b"Hi\r\n"[..], vec!["b@y".to_owned()], Some("m1")));
        // Bytes that are no UTF-8 keep the array form and read back the same.
        let odd = OutboxEntry { raw: vec![0xff, 0x00, 0x41], ..old };
        assert_eq!(serde_json::from_slice::<OutboxEntry>(&serde_json::to_vec(&odd).unwrap()).unwrap().raw, vec![0xff, 0x00, 0x41]);
    }

    #[test]
    fn links_leave_the_body_when_their_files_are_attached() {
        let links = vec!["https://up.example.org/a/photo.jpg".to_owned()];
        assert_eq!(body_without_links("https://up.example.org/a/photo.jpg", &links), "");
        assert_eq!(body_without_links("Look:\n https://up.example.org/a/photo.jpg \nnice", &links), "Look:\nnice");
        assert_eq!(body_without_links("see https://up.example.org/a/photo.jpg", &links), "see https://up.example.org/a/photo.jpg");
    }

    #[test]
    fn only_mail_ids_become_references() {
        assert_eq!(as_message_id("abc.123@example.org").as_deref(), Some("abc.123@example.org"));
        for thread in ["e4c1-77ab", "a b@c", "<x@y>", "x@y\r\nBcc: z", "", "é@x"] {
            assert_eq!(as_message_id(thread), None, "{thread:?}");
        }
    }
}
