//! The email bridge: `alice\40example.org@gateway` is an email address. A message to it
//! is a mail sent with the user's own SMTP account; a mail arriving in the user's IMAP
//! INBOX is a message from it, pushed by IMAP IDLE.
//!
//! - `session`: one task per user: the durable outbox and SMTP sending.
//! - `imap`: the folder watchers, INBOX and those the user listed (IDLE, checkpoints: each mail delivered at least once, a repeat under the same id).
//! - `smtp`: lettre transport, verified TLS.
//! - `sent`: copies of sent mail filed in the Sent folder (SPECIAL-USE `\Sent`).
//! - `read_state`: mail the user's client showed them marked `\Seen` (XEP-0333), if they chose so.
//! - `incoming` / `outgoing`: pure MIME conversions (mail-parser, html2text, lettre).
//! - `settings`: accounts, servers, presets.
//! - `thread`: XMPP threads kept across mail replies (the client's thread in the Message-ID).

// Protocol code reads what remote servers send: no indexing that can panic on it.
#![cfg_attr(not(test), warn(clippy::indexing_slicing))]

pub mod imap;
pub mod incoming;
pub mod outgoing;
pub mod read_state;
pub mod sent;
mod session;
pub mod settings;
pub mod smtp;
pub mod thread;

use std::collections::BTreeMap;
use std::sync::Arc;

use bridge_core::model::{Credentials, NetworkId, SessionKey, UserId};
use bridge_core::{BoxFuture, Bridge, BridgeStore, EventSink, FileFetcher, Session};
use tracing::Instrument;

pub use settings::{Account, EmailSettings, Endpoint, OutboxLimits, Provider, Security};

/// Serves every user's email account.
pub struct EmailBridge {
    /// Presets by email domain (lower-case).
    providers: BTreeMap<String, Provider>,
    /// Bridge-wide settings.
    settings: Arc<EmailSettings>,
    /// Durable state: outboxes and IMAP checkpoints.
    store: Arc<dyn BridgeStore>,
    /// Fetches the files users link to, attached to their mails; `None`: links stay
    /// links in the text.
    files: Option<Arc<dyn FileFetcher>>,
}

impl EmailBridge {
    /// A bridge with the administrator's presets and settings.
    pub fn new(providers: BTreeMap<String, Provider>, settings: EmailSettings, store: Arc<dyn BridgeStore>) -> Self {
        let providers = providers.into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v)).collect();
        EmailBridge { providers, settings: Arc::new(settings), store, files: None }
    }

    /// The same bridge, attaching the files users link to, fetched by `files`.
    #[must_use]
    pub fn with_files(self, files: Arc<dyn FileFetcher>) -> Self {
        EmailBridge { files: Some(files), ..self }
    }

    /// The account of registered email credentials: servers the user gave (TLS or
    /// STARTTLS, never plain), else the preset of their domain.
    pub fn account(&self, credentials: &Credentials) -> Result<Account, String> {
        let Credentials::Email { address, password, login, imap_server, smtp_server, mark_seen, save_sent, display_name, mark_displayed, import_contacts, folders } =
            credentials
        else {
            return Err("no email account registered".into());
        };
        let domain = address.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase()).unwrap_or_default();
        let preset = self.providers.get(&domain);
        let endpoint = |given: &Option<String>, preset: Option<&Endpoint>, what: &str| -> Result<Endpoint, String> {
            match given {
                Some(value) => {
                    let endpoint = Endpoint::parse(value, None).ok_or_else(|| format!("{what} {value:?} is not host:port"))?;
                    // A server the administrator configured for some domain is trusted as
                    // written when a user names it too (same host, same port).
                    let configured = self.providers.values().flat_map(|p| [&p.imap, &p.smtp]).find(|c| {
                        c.host.eq_ignore_ascii_case(&endpoint.host) && c.port == endpoint.port
                    });
                    Ok(if configured.is_some() { endpoint.configured() } else { endpoint })
                }
                None => preset.cloned().ok_or_else(|| format!("no {what} given and no preset for {domain}")),
            }
        };
        Ok(Account {
            address: address.clone(),
            login: login.clone().unwrap_or_else(|| address.clone()),
            password: password.clone(),
            imap: endpoint(imap_server, preset.map(|p| &p.imap), "IMAP server")?,
            smtp: endpoint(smtp_server, preset.map(|p| &p.smtp), "SMTP server")?,
            mark_seen: *mark_seen,
            save_sent: *save_sent,
            display_name: display_name.clone(),
            mark_displayed: *mark_displayed,
            import_contacts: *import_contacts,
            folders: folders.clone(),
        })
    }
}

impl Bridge for EmailBridge {
    fn serves(&self, network: &NetworkId) -> bool {
        matches!(network, NetworkId::Email)
    }

    fn start(&self, key: SessionKey, credentials: Credentials, events: EventSink) -> Box<dyn Session> {
        let account = match self.account(&credentials) {
            Ok(account) => account,
            Err(error) => {
                tracing::warn!(user = %key.user.0, %error, "cannot start an email session");
                // A closed queue: the router sees the session as ended.
                return Box::new(bridge_core::command_queue().0);
            }
        };
        let span = tracing::info_span!("email", user = %key.user.0);
        let (settings, store, files) = (self.settings.clone(), self.store.clone(), self.files.clone());
        let queue = bridge_core::spawn_session(|commands| {
            session::EmailSession::new(key, account, settings, store, events, commands).with_files(files).run().instrument(span)
        });
        Box::new(queue)
    }

    fn check_credentials(&self, user: &UserId, credentials: &Credentials) -> BoxFuture<'static, Result<(), String>> {
        let account = self.account(credentials);
        let (settings, store, user) = (self.settings.clone(), self.store.clone(), user.clone());
        Box::pin(async move {
            let account = account?;
            // A server the policy refuses is named by its credentials field.
            let mut session = imap::login(&account, &settings).await.map_err(|error| match error {
                imap::ImapError::Connect(refused @ bridge_net::ConnectError::Refused { .. }) => format!("imap_server: {refused}"),
                error => error.to_string(),
            })?;
            // Mail that arrives from now on is the user's: their session starts from here,
            // however long after the registration's answer it gets to the mailbox.
            let recorded = imap::record_start(&mut session, &account, store.as_ref(), &user).await.map_err(|e| e.to_string());
            let _ = session.logout().await;
            recorded?;
            smtp::check(&account, &settings).await
        })
    }
}
