//! The XMPP side of email: addresses as contacts whose presence says whether the user's
//! mailbox works, mail as chat messages, attachments shared by HTTP upload.
//!
//! Owns the email sessions (one per registered user, running while they are offline too,
//! so mail reaches their offline storage), each account's status, the contacts to tell
//! when it changes, and the upload queues. Grouped "from XMPP to email", then "from
//! email to XMPP".

use std::collections::HashMap;

use async_trait::async_trait;
use bridge_core::model::{Command, Event, NetworkId, Peer, SessionKey, UserId};
use minidom::Element;
use tracing::{debug, info, warn};
use xmpp_parsers::jid::Jid;
use xmpp_parsers::message::Lang;
use xmpp_parsers::presence::Presence;
use xmpp_parsers::stanza_error::DefinedCondition;

use crate::address::Address;
use crate::roster::{self, Contact, Roster};
use crate::connection::NS_COMPONENT;
use crate::sessions::Sessions;
use crate::side::{self, peer_jid, refuse, stanza_to, Conversations, Envelope, NetworkSide};
use crate::store::{Store, UserRecord};
use crate::upload::{self, UploadQueues};
use crate::writer::Outbox;

/// How many email contacts per user are remembered to be told of the account's status;
/// beyond that the oldest are forgotten (their server probes again at the next login).
const CONTACTS_PER_USER: usize = 1024;
/// Files one message may link to that are attached to its mail.
const LINKS_PER_MESSAGE: usize = 10;

/// The XMPP side of the users' email accounts.
pub struct EmailSide {
    /// Our domain, the domain of every contact JID.
    gateway: String,
    /// Stanzas to the server, through the single writer.
    out: Outbox,
    /// Where a new session's credentials come from.
    store: Store,
    /// The live email sessions, one per registered user.
    sessions: Sessions,
    /// Whether each user's account works (`Err` holds why not), as their session last
    /// reported.
    status: HashMap<String, Result<(), String>>,
    /// Email contacts whose presence each user's server asked for (probes, subscriptions),
    /// oldest first: they are told when the account's status changes. Bounded by
    /// `CONTACTS_PER_USER`.
    contacts: HashMap<String, Vec<String>>,
    /// Which resources wrote to which address: a failed mail's error goes there.
    conversations: Conversations,
    /// Attachments on their way to the users' upload services; `None` when no HTTP client
    /// could be built (then attachments are only listed).
    uploads: Option<UploadQueues>,
    /// Bytes of one message body to email (`[limits] message_bytes_email`).
    message_bytes: usize,
    /// Puts correspondents into the users' rosters (none in unit tests).
    roster: Option<Roster>,
}

impl EmailSide {
    /// The email side, its sessions started by the email bridge in `sessions`.
    pub fn new(gateway: &str, out: Outbox, store: Store, sessions: Sessions, uploads: Option<UploadQueues>, message_bytes: usize) -> Self {
        EmailSide {
            gateway: gateway.to_owned(),
            out,
            store,
            sessions,
            status: HashMap::new(),
            contacts: HashMap::new(),
            conversations: Conversations::default(),
            uploads,
            message_bytes,
            roster: None,
        }
    }

    /// The same side, offering every correspondent to the user's roster.
    #[must_use]
    pub fn with_roster(self, roster: Roster) -> Self {
        EmailSide { roster: Some(roster), ..self }
    }

    /// Offers the address behind `jid` to `user`'s roster (once), named `name`.
    async fn offer_contact(&self, user: &str, jid: &str, name: Option<String>) {
        if let Some(roster) = &self.roster {
            roster.contact(user, Contact { jid: jid.to_owned(), name, group: roster::GROUP_EMAIL }).await;
        }
    }

    /// Starts the email session of a registered user if it is not running.
    fn start(&mut self, user: &UserId, record: &UserRecord) {
        let Ok(credentials) = side::credentials_for(Some(record), &NetworkId::Email) else { return };
        let key = SessionKey { user: user.clone(), network: NetworkId::Email };
        if let Err(error) = self.sessions.ensure(key, credentials) {
            warn!(user = %user.0, %error, "cannot start the email session");
        }
    }

    /// Remembers that `contact` wants to know how `user`'s account is.
    fn remember_contact(&mut self, user: &str, contact: String) {
        let contacts = self.contacts.entry(user.to_owned()).or_default();
        contacts.retain(|c| *c != contact);
        contacts.push(contact);
        if contacts.len() > CONTACTS_PER_USER {
            contacts.remove(0);
        }
    }

    /// How a user's email contacts look: available while their mail account works.
    fn contact_presence(&self, user: &str) -> Presence {
        let unavailable = |text: &str| {
            let mut presence = Presence::unavailable();
            presence.set_status(Lang::new(), text.to_owned());
            presence
        };
        match self.status.get(user) {
            Some(Ok(())) => Presence::available(),
            Some(Err(reason)) => unavailable(reason),
            None if self.store.user(user).ok().flatten().is_some_and(|r| r.email.is_some()) => unavailable("connecting to your mailbox"),
            None => unavailable("register your email account with the gateway first"),
        }
    }

    async fn send_presence(&self, presence: Presence, from: &str, to: &str) {
        let (Ok(to), Ok(from)) = (to.parse::<Jid>(), from.parse::<Jid>()) else { return };
        self.out.send(presence.with_to(to).with_from(from).into()).await;
    }

    // ---------------------------------------------------------------------------------
    // From email to XMPP
    // ---------------------------------------------------------------------------------

    /// The account became usable or not: every contact that asked is told.
    async fn network_status(&mut self, user: &str, online: bool, reason: Option<String>) {
        info!(%user, online, reason = reason.as_deref().unwrap_or(""), "email account status");
        let status = if online { Ok(()) } else { Err(reason.unwrap_or_else(|| "unavailable".into())) };
        self.status.insert(user.to_owned(), status);
        let presence = self.contact_presence(user);
        for contact in self.contacts.get(user).cloned().unwrap_or_default() {
            self.send_presence(presence.clone(), &contact, user).await;
        }
    }

    /// The session ended on its own: commands it did not take start a new one.
    fn ended(&mut self, key: &SessionKey, reason: &str, unhandled: Vec<Command>) {
        info!(user = %key.user.0, %reason, "email session ended");
        self.sessions.forget(key);
        for command in unhandled {
            if let Err((_, text)) = side::hand_to_session(&mut self.sessions, &self.store, &key.user, NetworkId::Email, command) {
                warn!(user = %key.user.0, %text, "a command the ended session did not take is lost");
            }
        }
    }
}

#[async_trait(?Send)]
impl NetworkSide for EmailSide {
    fn serves(&self, network: &NetworkId) -> bool {
        matches!(network, NetworkId::Email)
    }

    // ---------------------------------------------------------------------------------
    // From XMPP to email
    // ---------------------------------------------------------------------------------

    async fn presence(&mut self, stanza: &Element, envelope: &Envelope, kind: &str) {
        let contact = stanza_to(stanza).map(|j| j.to_bare().to_string()).unwrap_or_default();
        match kind {
            "probe" => {
                self.remember_contact(&envelope.user, contact.clone());
                self.send_presence(self.contact_presence(&envelope.user), &contact, envelope.from.as_str()).await;
            }
            // An address cannot answer a subscription request: the gateway does, then
            // sends the contact's presence as a contact's server would.
            "subscribe" => {
                self.send_presence(Presence::subscribed(), &contact, &envelope.user).await;
                self.remember_contact(&envelope.user, contact.clone());
                self.send_presence(self.contact_presence(&envelope.user), &contact, &envelope.user).await;
            }
            _ => debug!(kind, "presence to an email address ignored"),
        }
    }

    async fn message(&mut self, stanza: &Element, envelope: &Envelope, _kind: &str) {
        let peer = match &envelope.target {
            Address::Email { address } => Peer::EmailAddress(address.clone()),
            Address::EmailGroup { addresses } => Peer::EmailGroup(addresses.clone()),
            _ => return,
        };
        // Chat states and receipts without a body: nothing to mail; a mail shown to the
        // user may be marked read in the mailbox (the session knows whether they want it).
        let Some(body) = stanza.get_child("body", NS_COMPONENT).map(Element::text) else {
            if let Some(id) = displayed_marker(stanza) {
                let command = Command::MarkRead { peer, id };
                let key = SessionKey { user: envelope.user_id(), network: NetworkId::Email };
                self.sessions.tell(&key, command);
            }
            return;
        };
        if body.len() > self.message_bytes {
            let text = format!("a message to email may have at most {} bytes; this one has {}", self.message_bytes, body.len());
            return refuse(&self.out, stanza, DefinedCondition::PolicyViolation, &text).await;
        }
        let mut message = side::chat_to(stanza, peer.clone(), body);
        message.links = linked_files(stanza);
        // Keyed by the address written to (not the gateway, for XEP-0033 addressing), which
        // a failure comes back from.
        let contact = peer_jid(&peer, None, None, &self.gateway);
        if let Some(contact) = &contact {
            self.conversations.wrote(&envelope.user, contact.clone(), envelope.from.to_string());
        }
        let result = side::hand_to_session(&mut self.sessions, &self.store, &envelope.user_id(), NetworkId::Email, Command::Send(message));
        match result {
            Err((condition, text)) => refuse(&self.out, stanza, condition, &text).await,
            Ok(()) => {
                if let Some(contact) = contact {
                    self.offer_contact(&envelope.user, &contact, None).await;
                }
            }
        }
    }

    async fn event(&mut self, key: SessionKey, event: Event) {
        let user = key.user.0.clone();
        match event {
            Event::Message(message) => {
                let Some(from) = peer_jid(&message.peer, None, None, &self.gateway) else {
                    return warn!(%user, "an email session reported a message from an address we cannot form");
                };
                // In the roster first, so the message comes from a named contact.
                self.offer_contact(&user, &from, message.sender.clone()).await;
                if let Some(stanza) = side::chat_from(&from, &user, message) {
                    self.out.send(stanza).await;
                }
            }
            Event::Correspondents(correspondents) => {
                info!(%user, count = correspondents.len(), "correspondents imported for the roster");
                for (address, name) in correspondents {
                    if let Some(jid) = peer_jid(&Peer::EmailAddress(address), None, None, &self.gateway) {
                        self.offer_contact(&user, &jid, name).await;
                    }
                }
            }
            Event::Attachment { peer, attachment } => {
                let Some(from) = peer_jid(&peer, None, None, &self.gateway) else { return };
                if let Some(uploads) = &mut self.uploads {
                    uploads.push(upload::Job { from, to: user, file: attachment }).await;
                }
            }
            Event::Failure { peer, id, kind, text } => {
                let from = peer.and_then(|p| peer_jid(&p, None, None, &self.gateway)).unwrap_or_else(|| self.gateway.clone());
                self.conversations.send_failure(&self.out, &user, &from, id, kind, &text).await;
            }
            Event::NetworkStatus { online, reason } => self.network_status(&user, online, reason).await,
            Event::Ended { reason, unhandled } => self.ended(&key, &reason, unhandled),
            other => debug!(?other, "an email session reported an IRC event"),
        }
    }

    async fn resource_offline(&mut self, user: &UserId, _full: &str, last: bool) {
        // The session stays: mail goes to the user's offline storage.
        if last {
            self.conversations.forget_user(&user.0);
        }
    }

    async fn registration_changed(&mut self, user: &UserId, record: Option<&UserRecord>) {
        self.sessions.end_user(user, if record.is_some() { "registration changed" } else { "unregistered" });
        self.status.remove(&user.0);
        match record {
            Some(record) if record.email.is_some() => self.start(user, record),
            Some(_) => {}
            None => {
                self.contacts.remove(&user.0);
                self.conversations.forget_user(&user.0);
            }
        }
    }

    async fn connected(&mut self, user: &UserId, record: &UserRecord) {
        self.start(user, record);
    }

    fn shutdown(&mut self, reason: &str) {
        self.sessions.end_all(reason);
    }

    fn active_users(&self) -> Vec<UserId> {
        self.sessions.users().cloned().collect()
    }

    fn user_activity(&self, user: &UserId) -> Vec<String> {
        self.sessions.networks_of(user).into_iter().map(|_| "mailbox session (IMAP and SMTP)".to_owned()).collect()
    }

    async fn disconnect_user(&mut self, user: &UserId, reason: &str) {
        self.sessions.end_user(user, reason);
    }

    fn sessions(&self) -> usize {
        self.sessions.len()
    }
}

/// The id of the message an XEP-0333 `<displayed/>` marker says the user saw.
fn displayed_marker(stanza: &Element) -> Option<String> {
    let marker = stanza.get_child("displayed", "urn:xmpp:chat-markers:0")?;
    marker.attr("id").map(str::to_owned).filter(|id| !id.is_empty())
}

/// The URLs of the files a message links to (XEP-0066 `<x xmlns='jabber:x:oob'/>`, as
/// XEP-0363 clients share their uploads), at most [`LINKS_PER_MESSAGE`].
fn linked_files(stanza: &Element) -> Vec<String> {
    let mut links: Vec<String> = Vec::new();
    for payload in stanza.children().filter(|child| child.is("x", xmpp_parsers::ns::OOB)) {
        if let Ok(oob) = xmpp_parsers::oob::Oob::try_from(payload.clone()) {
            let url = oob.url.trim().to_owned();
            if !url.is_empty() && !links.contains(&url) && links.len() < LINKS_PER_MESSAGE {
                links.push(url);
            }
        }
    }
    links
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bridge_core::model::FailureKind;

    use super::*;
    use crate::side::testing::{drain, sessions, stanza, store, Recorder};

    const BOB: &str = "bob\\40example.org@gw";

    struct Fixture {
        side: EmailSide,
        out: crate::writer::TestReceiver,
        bridge: Arc<Recorder>,
        _tmp: tempfile::TempDir,
    }

    fn fixture() -> Fixture {
        let (outbox, out) = Outbox::for_tests();
        let (store, tmp) = store();
        let bridge = Arc::new(Recorder::default());
        let side = EmailSide::new("gw", outbox, store, sessions(&bridge), None, 1024);
        Fixture { side, out, bridge, _tmp: tmp }
    }

    fn envelope(stanza: &Element) -> Envelope {
        let from: Jid = stanza.attr("from").unwrap().parse().unwrap();
        let target = Address::Email { address: "bob@example.org".into() };
        Envelope { user: from.to_bare().to_string(), from, target, resource: None }
    }

    fn key() -> SessionKey {
        SessionKey { user: UserId("u@h".into()), network: NetworkId::Email }
    }

    fn status(stanza: &Element) -> Option<String> {
        stanza.get_child("status", NS_COMPONENT).map(Element::text)
    }

    #[tokio::test]
    async fn the_accounts_status_reaches_every_contact_that_asked() {
        let mut f = fixture();
        let probe = stanza(&format!("<presence from='u@h' to='{BOB}' type='probe'/>"));
        f.side.presence(&probe, &envelope(&probe), "probe").await;
        let first = drain(&mut f.out);
        assert_eq!((first[0].attr("from"), first[0].attr("type")), (Some(BOB), Some("unavailable")));
        assert_eq!(status(&first[0]).as_deref(), Some("register your email account with the gateway first"));

        f.side.event(key(), Event::NetworkStatus { online: true, reason: None }).await;
        let online = drain(&mut f.out);
        assert_eq!((online[0].attr("from"), online[0].attr("to"), online[0].attr("type")), (Some(BOB), Some("u@h"), None));
        f.side.event(key(), Event::NetworkStatus { online: false, reason: Some("login refused".into()) }).await;
        let offline = drain(&mut f.out);
        assert_eq!(status(&offline[0]).as_deref(), Some("login refused"));
    }

    #[tokio::test]
    async fn a_failed_mail_is_reported_to_the_resource_that_wrote_it() {
        let mut f = fixture();
        let record = UserRecord { irc: None, email: Some(crate::store::EmailAccount {
            address: "u@example.org".into(),
            password: bridge_core::Secret::new("pw".to_owned()),
            login: None,
            imap_server: None,
            smtp_server: None,
            mark_seen: false,
            save_sent: false,
            display_name: None,
            mark_displayed: false,
            import_contacts: 0,
            folders: Vec::new(),
        }), ..UserRecord::default()  };
        f.side.store.put_user("u@h", &record).await.unwrap();
        let mail = stanza(&format!("<message from='u@h/phone' to='{BOB}' id='m1' type='chat'><body>hi</body><subject>s</subject></message>"));
        f.side.message(&mail, &envelope(&mail), "chat").await;
        assert_eq!(f.bridge.started(), 1);
        let sent = f.bridge.commands(0);
        assert!(matches!(&sent[..], [Command::Send(m)] if m.body == "hi" && m.subject.as_deref() == Some("s") && m.id.as_deref() == Some("m1")));
        let failure = Event::Failure { peer: Some(Peer::EmailAddress("bob@example.org".into())), id: Some("m1".into()), kind: FailureKind::NotFound, text: "550 no such user".into() };
        f.side.event(key(), failure).await;
        let error = drain(&mut f.out);
        assert_eq!((error[0].attr("to"), error[0].attr("id"), error[0].attr("type")), (Some("u@h/phone"), Some("m1"), Some("error")));
    }

    #[tokio::test]
    async fn unregistering_ends_the_session_and_forgets_the_contacts() {
        let mut f = fixture();
        let probe = stanza(&format!("<presence from='u@h' to='{BOB}' type='probe'/>"));
        f.side.presence(&probe, &envelope(&probe), "probe").await;
        f.side.connected(&UserId("u@h".into()), &UserRecord { irc: None, email: None, ..UserRecord::default()  }).await;
        f.side.registration_changed(&UserId("u@h".into()), None).await;
        assert!(!f.side.contacts.contains_key("u@h"));
        drain(&mut f.out);
        f.side.event(key(), Event::NetworkStatus { online: true, reason: None }).await;
        assert!(drain(&mut f.out).is_empty(), "nobody is told any more");
    }


    #[test]
    fn contacts_are_bounded_oldest_first_and_deduplicated() {
        let (out, _rx) = Outbox::for_tests();
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(&tmp.path().join("db"), &tmp.path().join("key")).unwrap();
        let (events, _events_rx) = tokio::sync::mpsc::channel(8);
        let mut side = EmailSide::new("gw", out, store, Sessions::new(Vec::new(), events), None, 1024);
        for i in 0..=CONTACTS_PER_USER {
            side.remember_contact("u@h", format!("c{i}@gw"));
        }
        side.remember_contact("u@h", "c5@gw".into());
        let contacts = &side.contacts["u@h"];
        assert_eq!(contacts.len(), CONTACTS_PER_USER);
        assert!(!contacts.contains(&"c0@gw".to_owned()), "the oldest is forgotten");
        assert_eq!(contacts.last().map(String::as_str), Some("c5@gw"), "a contact seen again is the newest");
    }
}
