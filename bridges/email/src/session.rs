//! One user's email session: the IMAP watcher runs as its own task, and this task sends
//! the user's messages as mails through a durable outbox, retrying temporary failures.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bridge_core::model::{Command, Event, FailureKind, Message, Peer, SessionKey};
use bridge_core::backoff::{sleep_until_opt, Backoff};
use bridge_core::{BridgeStore, Commands, EventSink, SessionEvent};
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

/// A mail accepted from the user and not yet accepted by their SMTP server. Stored
/// formatted, so a retry after a restart sends the very same bytes (same Message-ID).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct OutboxEntry {
    /// Envelope sender.
    from: String,
    /// Envelope recipient.
    to: String,
    /// The formatted message.
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
        EmailSession { key, account, settings, store, events, commands }
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
        let watcher = Watcher {
            key: self.key.clone(),
            account: self.account.clone(),
            settings: self.settings.clone(),
            store: self.store.clone(),
            events: self.events.clone(),
        };
        let mut watching = tokio::spawn(watcher.run(stopped).in_current_span());
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
                        if self.enqueue(message).await {
                            retry_at = Some(Instant::now());
                        }
                    }
                    Some(_) => {}
                },
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
                        match smtp::transport(&self.account, &self.settings).await {
                            Ok(built) => transport = Some(built),
                            Err(error @ smtp::TransportError::Refused(_)) => {
                                // It will not change by waiting: each mail is reported.
                                warn!(%error, "the SMTP server is refused by the network policy");
                                self.refuse_outbox(&error.to_string()).await;
                                retry_at = None;
                                continue;
                            }
                            Err(error) => warn!(%error, "no SMTP transport yet; mail waits in the outbox"),
                        }
                    }
                    retry_at = match &transport {
                        Some(transport) if self.flush_outbox(transport).await && self.file_sent_copies().await => {
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
        let _ = self.events.send(SessionEvent { key: self.key.clone(), event: Event::Ended { reason: "session closed".into(), unhandled: Vec::new() } }).await;
    }

    async fn fail(&self, peer: Peer, id: Option<String>, kind: FailureKind, text: String) {
        let event = Event::Failure { peer: Some(peer), id, kind, text };
        let _ = self.events.send(SessionEvent { key: self.key.clone(), event }).await;
    }

    /// Turns a message into a mail in the outbox; false if it was refused at once.
    async fn enqueue(&self, message: Message) -> bool {
        let Peer::EmailAddress(to) = &message.peer else { return false };
        let domain = self.account.address.rsplit_once('@').map(|(_, d)| d).unwrap_or("localhost");
        let mail = OutgoingMail {
            from: self.account.address.clone(),
            // The name the user set, else the one their client gave (XEP-0172).
            from_name: self.account.display_name.clone().or_else(|| message.sender.clone()),
            to: to.clone(),
            subject: message.subject.clone().unwrap_or_else(|| self.settings.default_subject.clone()),
            body: message.body.clone(),
            in_reply_to: message.thread.as_deref().and_then(as_message_id),
            references: message.thread.as_deref().and_then(as_message_id).into_iter().collect(),
            message_id: outgoing::new_message_id(domain),
        };
        let built = match outgoing::build(&mail, SystemTime::now()) {
            Ok(built) => built,
            Err(error) => {
                self.fail(message.peer.clone(), message.id.clone(), FailureKind::NotAcceptable, error.to_string()).await;
                return false;
            }
        };
        let entry = OutboxEntry { from: mail.from.clone(), to: mail.to.clone(), raw: built.formatted(), xmpp_id: message.id.clone() };
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

    /// Reports every mail in the outbox as not sent (`not-allowed`, `text`), and drops it.
    async fn refuse_outbox(&self, text: &str) {
        for (key, bytes) in self.store.list(&self.key.user, OUTBOX).unwrap_or_default() {
            let _ = self.store.delete(&self.key.user, &key).await;
            if let Ok(entry) = serde_json::from_slice::<OutboxEntry>(&bytes) {
                let text = format!("not sent: {text}");
                self.fail(Peer::EmailAddress(entry.to), entry.xmpp_id, FailureKind::NotAllowed, text).await;
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
            let envelope = match (entry.from.parse(), entry.to.parse()) {
                (Ok(from), Ok(to)) => lettre::address::Envelope::new(Some(from), vec![to]),
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
                    self.fail(Peer::EmailAddress(entry.to.clone()), entry.xmpp_id.clone(), FailureKind::NotAcceptable, text).await;
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

    #[test]
    fn only_mail_ids_become_references() {
        assert_eq!(as_message_id("abc.123@example.org").as_deref(), Some("abc.123@example.org"));
        for thread in ["e4c1-77ab", "a b@c", "<x@y>", "x@y\r\nBcc: z", "", "é@x"] {
            assert_eq!(as_message_id(thread), None, "{thread:?}");
        }
    }
}
