//! The router: every stanza from the server goes to the handler for its address and kind,
//! and every event from a session comes back here to become a stanza for the one writer.
//!
//! Grouped as biboumi's Bridge is: "from XMPP" (stanzas in) and "from the networks"
//! (session events in), then the gateway's own life cycle (connect, shutdown).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use bridge_core::model::{Availability, Command, Credentials, Departure, Event, FailureKind, Message, MessageKind, NetworkId, Peer, SessionKey, UserId};
use bridge_core::{Bridge, SessionEvent};
use tokio::sync::mpsc;
use minidom::Element;
use tracing::{debug, info, warn};
use xmpp_parsers::iq::Iq;
use xmpp_parsers::jid::{BareJid, Jid};
use xmpp_parsers::message::{Lang, MessageType};
use xmpp_parsers::presence::{Presence, Type as PresenceType};
use xmpp_parsers::muc::user::Status;
use xmpp_parsers::stanza_error::DefinedCondition;

use crate::address::{self, Address};
use crate::config::Config;
use crate::adhoc;
use crate::disco;
use crate::muc::{self, room_key, Room, Rooms};
use crate::presence::{Change, OnlineUsers};
use crate::registration::{self, Request, NS_REGISTER};
use crate::requests::Requests;
use crate::sessions::Sessions;
use crate::stanza::{self, error_reply};
use crate::store::{Store, UserRecord};
use crate::upload::{self, UploadQueues, Uploader};
use crate::writer::Outbox;

/// How long a registration may wait for the mail servers to accept a login.
const CREDENTIAL_CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Prefix of the ids of our own keepalive pings.
const KEEPALIVE_ID: &str = "keepalive-";

/// Text of a chat message sent to the gateway itself.
const HELP: &str = "This is xmpp-gateway. Write to alice\\40example.org@<this gateway> to send an \
email, join #channel%irc.example.org@<this gateway> as a group chat, or write to \
nick%irc.example.org@<this gateway> for an IRC private message. Register (XEP-0077) to store \
your IRC and email credentials.";

/// Routes stanzas and session events. Owned by the connection supervisor's task.
pub struct Router {
    /// Settings: access control, IRC networks, email presets.
    config: Arc<Config>,
    /// Our domain, the `from` of everything the gateway says as itself.
    gateway: String,
    /// Users and credentials.
    store: Store,
    /// Stanzas to the server, through the single writer.
    out: Outbox,
    /// Which user resources are online (XEP-0100 presence tracking).
    online: OnlineUsers,
    /// Live (user, network) sessions.
    sessions: Sessions,
    /// IRC channels as rooms: which resources are in which room.
    rooms: Rooms,
    /// (user, contact bare JID) -> the user's full JIDs that wrote to that contact. A
    /// presence from a contact outside the roster only reaches full JIDs, so a contact's
    /// QUIT is shown to these.
    conversations: HashMap<(String, String), BTreeSet<String>>,
    /// Counter for keepalive ping ids.
    pings_sent: u64,
    /// The email bridge, asked to check credentials before they are stored.
    email: Arc<dyn Bridge>,
    /// Whether each user's email account works (`Err` holds why not), as their email
    /// session last reported.
    email_status: HashMap<String, Result<(), String>>,
    /// Email contacts whose presence each user's server asked for (probes): they are
    /// told when the account's status changes.
    email_contacts: HashMap<String, BTreeSet<String>>,
    /// Work done in spawned tasks (credential checks), handed back to this task.
    tasks_tx: mpsc::Sender<RouterTask>,
    /// The other end of `tasks_tx`.
    tasks_rx: mpsc::Receiver<RouterTask>,
    /// IQs the gateway asked (disco, upload slots), waiting for their answers.
    requests: Requests,
    /// Mail attachments on their way to the users' upload services; `None` when no HTTP
    /// client could be built (then attachments are only listed).
    uploads: Option<UploadQueues>,
}

/// Work finished outside the router's task.
pub enum RouterTask {
    /// A registration whose email credentials were checked with a real login.
    Registration {
        /// The `<iq type='set'/>` to answer.
        stanza: Element,
        /// The user's bare JID.
        user: String,
        /// The record to store if the check passed.
        record: UserRecord,
        /// Whether the user was registered before.
        existed: bool,
        /// The outcome of the login.
        check: Result<(), String>,
        /// The result payload (an ad-hoc command's completion), if any.
        done: Option<Element>,
    },
}

/// A request's sender and target, once both are known to be sound.
struct Envelope {
    /// The sender as the server stamped it.
    from: Jid,
    /// The sender's bare JID as text: the key of everything stored about them.
    user: String,
    /// What the `to` address points at.
    target: Address,
    /// The `to` resource (a room occupant nick), if any.
    resource: Option<String>,
}

impl Router {
    /// A router for `config`, writing through `out`.
    pub fn new(config: Arc<Config>, store: Store, out: Outbox, sessions: Sessions, email: Arc<dyn Bridge>) -> Self {
        let gateway = config.component.jid.to_ascii_lowercase();
        let (tasks_tx, tasks_rx) = mpsc::channel(64);
        let requests = Requests::default();
        let uploads = match Uploader::new(&gateway, out.clone(), requests.clone()) {
            Ok(uploader) => Some(UploadQueues::new(Arc::new(uploader), out.clone())),
            Err(error) => {
                warn!(%error, "attachments will not be uploaded");
                None
            }
        };
        Router {
            config,
            gateway,
            store,
            out,
            online: OnlineUsers::default(),
            sessions,
            rooms: Rooms::default(),
            conversations: HashMap::new(),
            pings_sent: 0,
            email,
            email_status: HashMap::new(),
            email_contacts: HashMap::new(),
            tasks_tx,
            tasks_rx,
            requests,
            uploads,
        }
    }

    /// The next piece of work finished by a spawned task.
    pub async fn next_task(&mut self) -> RouterTask {
        match self.tasks_rx.recv().await {
            Some(task) => task,
            // The router holds a sender itself: the channel never closes.
            None => std::future::pending().await,
        }
    }

    // ---------------------------------------------------------------------------------
    // From XMPP
    // ---------------------------------------------------------------------------------

    /// Handles one stanza from the server. Never fails: a bad stanza gets an error reply
    /// or a log line, and nothing else is affected.
    pub async fn handle_stanza(&mut self, stanza: Element) {
        tracing::trace!(name = stanza.name(), from = stanza.attr("from"), to = stanza.attr("to"), kind = stanza.attr("type"), "stanza in");
        let envelope = match self.envelope(&stanza) {
            Ok(envelope) => envelope,
            Err(Some((condition, text))) => return self.refuse(&stanza, condition, &text).await,
            Err(None) => return,
        };
        match stanza.name() {
            "iq" => self.handle_iq(stanza, envelope).await,
            "presence" => self.handle_presence(stanza, envelope).await,
            "message" => self.handle_message(stanza, envelope).await,
            other => debug!(name = other, "ignoring an unknown top-level element"),
        }
    }

    /// Reads sender and target. `Err(None)`: drop silently (no one to answer).
    fn envelope(&self, stanza: &Element) -> Result<Envelope, Option<disco::Refusal>> {
        let Some(from) = stanza.attr("from").and_then(|f| f.parse::<Jid>().ok()) else {
            warn!(name = stanza.name(), "dropping a stanza without a valid from");
            return Err(None);
        };
        let to = stanza.attr("to").unwrap_or_default();
        let (local, domain, resource) = split_jid(to);
        if !domain.eq_ignore_ascii_case(&self.gateway) {
            warn!(%to, "dropping a stanza for another domain");
            return Err(None);
        }
        let target = address::parse_localpart(local.unwrap_or_default())
            .map_err(|e| Some((DefinedCondition::JidMalformed, e.to_string())))?;
        let user = from.to_bare().to_string();
        Ok(Envelope { from, user, target, resource: resource.map(str::to_owned) })
    }

    async fn handle_iq(&mut self, stanza: Element, envelope: Envelope) {
        let kind = stanza.attr("type").unwrap_or_default().to_owned();
        if kind == "result" || kind == "error" {
            let id = stanza.attr("id").unwrap_or_default().to_owned();
            if self.requests.resolve(stanza) {
                return;
            }
            if !id.starts_with(KEEPALIVE_ID) {
                debug!(%id, kind, "unexpected iq response");
            }
            return;
        }
        let iq = match Iq::try_from(stanza.clone()) {
            Ok(iq) => iq,
            Err(error) => {
                let text = format!("malformed iq: {error}");
                return self.refuse(&stanza, DefinedCondition::BadRequest, &text).await;
            }
        };
        let (payload, is_get) = match &iq {
            Iq::Get { payload, .. } => (payload.clone(), true),
            Iq::Set { payload, .. } => (payload.clone(), false),
            _ => return,
        };
        let ns = payload.ns();
        let public = matches!(ns.as_str(), disco::NS_DISCO_INFO | disco::NS_DISCO_ITEMS | disco::NS_VERSION | disco::NS_PING);
        if !public && !self.domain_allowed(&envelope.from) {
            return self.refuse_forbidden(&stanza).await;
        }
        let node = payload.attr("node");
        let gateway = matches!(envelope.target, Address::Gateway);
        let answer: Result<Option<Element>, disco::Refusal> = match (is_get, ns.as_str()) {
            (true, disco::NS_DISCO_INFO) => disco::info(&envelope.target, node).map(|r| Some(r.into())),
            (true, disco::NS_DISCO_ITEMS) if gateway && node == Some(disco::NS_COMMANDS) => {
                let is_admin = self.is_admin(&envelope.user);
                let items = adhoc::items(&self.gateway_jid(), is_admin);
                Ok(Some(xmpp_parsers::disco::DiscoItemsResult { node: node.map(str::to_owned), items, rsm: None }.into()))
            }
            (false, disco::NS_COMMANDS) if gateway => return self.handle_command(&payload, &envelope, &stanza).await,
            (true, disco::NS_DISCO_ITEMS) => {
                Ok(Some(disco::items(&envelope.target, node, &self.gateway, &self.config).into()))
            }
            (true, disco::NS_VERSION) if gateway => Ok(Some(disco::version().into())),
            (true, disco::NS_PING) => Ok(None),
            (true, disco::NS_GATEWAY) if gateway => Ok(Some(disco::gateway_prompt())),
            (false, disco::NS_GATEWAY) if gateway => disco::gateway_translate(&payload, &self.gateway).map(Some),
            (_, NS_REGISTER) if gateway => return self.handle_register(is_get, &payload, &envelope, &stanza).await,
            _ => Err((DefinedCondition::ServiceUnavailable, format!("{ns} is not served at this address"))),
        };
        match answer {
            Ok(payload) => {
                let reply = Iq::Result { from: stanza_to(&stanza), to: Some(envelope.from), id: iq.id().to_owned(), payload };
                self.out.send(reply.into()).await;
            }
            Err((condition, text)) => self.refuse(&stanza, condition, &text).await,
        }
    }

    /// XEP-0050: the settings command and the administrators' status.
    async fn handle_command(&mut self, command: &Element, envelope: &Envelope, stanza: &Element) {
        let request = match adhoc::parse(command) {
            Ok(request) => request,
            Err((condition, text)) => return self.refuse(stanza, condition, &text).await,
        };
        let user = envelope.user.clone();
        match request {
            adhoc::Request::Cancel { node, session } => self.reply(stanza, Some(adhoc::canceled(&node, &session))).await,
            adhoc::Request::Execute { node } if node == adhoc::NODE_CONFIGURE => {
                let record = match self.store.user(&user) {
                    Ok(record) => record,
                    Err(error) => {
                        let (condition, text) = internal(error);
                        return self.refuse(stanza, condition, &text).await;
                    }
                };
                let query = registration::query_for(record.as_ref());
                let Some(form) = query.get_child("x", "jabber:x:data").cloned() else { return };
                let session = format!("{:016x}", fastrand::u64(..));
                self.reply(stanza, Some(adhoc::executing(&node, &session, form))).await;
            }
            adhoc::Request::Complete { node, session, form } if node == adhoc::NODE_CONFIGURE => {
                let query = Element::builder("query", NS_REGISTER).append(form).build();
                let done = adhoc::completed(&node, &session, "Settings saved.", None);
                match self.register(false, &query, envelope, stanza, Some(done)).await {
                    Ok(Some(payload)) => self.reply(stanza, payload).await,
                    Ok(None) => {}
                    Err((condition, text)) => self.refuse(stanza, condition, &text).await,
                }
            }
            adhoc::Request::Execute { node } if node == adhoc::NODE_STATUS => {
                if !self.is_admin(&user) {
                    return self.refuse(stanza, DefinedCondition::Forbidden, "only the gateway's administrators may see its status").await;
                }
                let status = adhoc::Status {
                    registered: self.store.user_jids().map(|u| u.len()).unwrap_or(0),
                    online: self.online.users(),
                    sessions: self.sessions.len(),
                    rooms: self.rooms.len(),
                };
                let session = format!("{:016x}", fastrand::u64(..));
                let done = adhoc::completed(&node, &session, "Gateway status", Some(adhoc::status_form(status)));
                self.reply(stanza, Some(done)).await;
            }
            adhoc::Request::Execute { node } | adhoc::Request::Complete { node, .. } => {
                self.refuse(stanza, DefinedCondition::ItemNotFound, &format!("no command {node:?}")).await;
            }
        }
    }

    /// Whether `user` (a bare JID) is one of the configured administrators.
    fn is_admin(&self, user: &str) -> bool {
        self.config.registration.admins.iter().any(|a| a.eq_ignore_ascii_case(user))
    }

    fn gateway_jid(&self) -> Jid {
        self.gateway.parse().unwrap_or_else(|_| Jid::new("invalid").expect("a literal domain"))
    }

    /// XEP-0077: answers `stanza` itself, at once or after a credential check.
    async fn handle_register(&mut self, is_get: bool, query: &Element, envelope: &Envelope, stanza: &Element) {
        match self.register(is_get, query, envelope, stanza, None).await {
            Ok(Some(payload)) => self.reply(stanza, payload).await,
            Ok(None) => {}
            Err((condition, text)) => self.refuse(stanza, condition, &text).await,
        }
    }

    /// `Ok(Some(payload))`: answer now; `Ok(None)`: answered already or later. A stored
    /// registration is answered with `done` as the result payload (the ad-hoc command's
    /// completion), or an empty result.
    async fn register(
        &mut self,
        is_get: bool,
        query: &Element,
        envelope: &Envelope,
        stanza: &Element,
        done: Option<Element>,
    ) -> Result<Option<Option<Element>>, disco::Refusal> {
        let user = envelope.user.as_str();
        let existing = self.store.user(user).map_err(internal)?;
        if is_get {
            return Ok(Some(Some(registration::query_for(existing.as_ref()))));
        }
        let request = registration::parse_request(query).map_err(|e| (DefinedCondition::NotAcceptable, e.to_string()))?;
        let values = match request {
            Request::Remove => {
                if !self.store.remove_user(user).await.map_err(internal)? {
                    return Err((DefinedCondition::RegistrationRequired, "you are not registered".into()));
                }
                info!(%user, "unregistered");
                let user_id = UserId(user.to_owned());
                self.rooms.remove_user(&user_id);
                self.sessions.end_user(&user_id, "unregistered");
                self.email_status.remove(user);
                self.reply(stanza, None).await;
                for type_ in [PresenceType::Unsubscribe, PresenceType::Unsubscribed, PresenceType::Unavailable] {
                    self.send_presence(Presence::new(type_), user).await;
                }
                return Ok(None);
            }
            Request::Submit(values) => values,
        };
        let record = registration::apply(existing.as_ref(), &values, &self.config)
            .map_err(|e| (DefinedCondition::NotAcceptable, e.to_string()))?;
        let existed = existing.is_some();
        let email_changed = record.email.is_some() && record.email != existing.and_then(|r| r.email);
        if !email_changed {
            self.store_registration(stanza, user, record, existed, done).await;
            return Ok(None);
        }
        // A real IMAP and SMTP login first, without holding up everybody else's stanzas.
        let credentials = credentials_for(Some(&record), &NetworkId::Email).map_err(|e| (DefinedCondition::NotAcceptable, e))?;
        let check = self.email.check_credentials(&credentials);
        let tasks = self.tasks_tx.clone();
        let (stanza, user) = (stanza.clone(), user.to_owned());
        tokio::spawn(async move {
            let check = match tokio::time::timeout(CREDENTIAL_CHECK_TIMEOUT, check).await {
                Ok(check) => check,
                Err(_) => Err(format!("no answer from the mail servers within {CREDENTIAL_CHECK_TIMEOUT:?}")),
            };
            let _ = tasks.send(RouterTask::Registration { stanza, user, record, existed, check, done }).await;
        });
        Ok(None)
    }

    /// Finishes work handed back by a spawned task.
    pub async fn handle_task(&mut self, task: RouterTask) {
        match task {
            RouterTask::Registration { stanza, user, record, existed, check, done } => match check {
                Ok(()) => self.store_registration(&stanza, &user, record, existed, done).await,
                Err(reason) => {
                    info!(%user, "email credentials refused");
                    let text = format!("field email_password: the mail server refused the login: {reason}");
                    self.refuse(&stanza, DefinedCondition::NotAcceptable, &text).await;
                }
            },
        }
    }

    /// Stores a checked registration, answers, and restarts the user's sessions.
    async fn store_registration(&mut self, stanza: &Element, user: &str, record: UserRecord, existed: bool, done: Option<Element>) {
        if let Err(error) = self.store.put_user(user, &record).await {
            let (condition, text) = internal(error);
            return self.refuse(stanza, condition, &text).await;
        }
        self.reply(stanza, done).await;
        let user_id = UserId(user.to_owned());
        // New credentials: sessions restart with them.
        self.sessions.end_user(&user_id, "registration changed");
        self.rooms.remove_user(&user_id);
        if record.email.is_some() {
            self.start_email(user, &record);
        }
        if existed {
            info!(%user, "registration updated");
        } else {
            info!(%user, "registered");
            // XEP-0100 §4.1.1: the gateway asks for the user's presence.
            self.send_presence(Presence::subscribe(), user).await;
        }
    }

    /// Starts the email session of a registered user (it runs while they are offline too,
    /// so mail reaches their offline storage).
    fn start_email(&mut self, user: &str, record: &UserRecord) {
        let Ok(credentials) = credentials_for(Some(record), &NetworkId::Email) else { return };
        let key = SessionKey { user: UserId(user.to_owned()), network: NetworkId::Email };
        if let Err(error) = self.sessions.ensure(key, credentials) {
            warn!(%user, %error, "cannot start the email session");
        }
    }

    async fn handle_presence(&mut self, stanza: Element, envelope: Envelope) {
        let kind = stanza.attr("type").unwrap_or("available");
        let Address::Gateway = envelope.target else {
            return self.presence_to_network(&stanza, envelope, kind).await;
        };
        let user = envelope.user.as_str();
        let registered = match self.store.user(user) {
            Ok(record) => record.is_some(),
            Err(error) => {
                warn!(%user, %error, "cannot read the store");
                false
            }
        };
        match kind {
            "subscribe" if registered && self.domain_allowed(&envelope.from) => {
                self.send_presence(Presence::subscribed(), user).await;
                self.send_presence(Presence::available(), user).await;
            }
            "subscribe" | "unsubscribe" => self.send_presence(Presence::new(PresenceType::Unsubscribed), user).await,
            "probe" if registered => self.send_presence(Presence::available(), envelope.from.as_str()).await,
            "available" => {
                let resource = envelope.from.resource().map(|r| r.as_str()).unwrap_or_default();
                if self.online.available(user, resource) == Change::CameOnline {
                    info!(%user, "user online");
                }
                if let Some((availability, status)) = availability_of(&stanza) {
                    let command = Command::SetAvailability { availability, status };
                    self.sessions.tell_irc_sessions(&UserId(user.to_owned()), &command);
                }
                if registered {
                    self.send_presence(Presence::available(), envelope.from.as_str()).await;
                }
            }
            // From the bare JID, unavailable is the server's answer to a probe or to a
            // subscription it holds back, not a resource leaving: resources leave from
            // their full JIDs.
            "unavailable" if envelope.from.resource().is_none() => {
                debug!(%user, "unavailable from the bare JID ignored");
            }
            "unavailable" => {
                let resource = envelope.from.resource().map(|r| r.as_str());
                let user_id = UserId(user.to_owned());
                if self.online.unavailable(user, resource) == Change::WentOffline {
                    info!(%user, "user offline; ending their sessions");
                    self.rooms.remove_user(&user_id);
                    self.conversations.retain(|(u, _), _| u != user);
                    self.sessions.end_user_irc(&user_id, "user went offline");
                } else {
                    self.leave_rooms_of(&user_id, envelope.from.as_str());
                }
            }
            _ => debug!(%user, kind, "presence to the gateway ignored"),
        }
    }

    async fn presence_to_network(&mut self, stanza: &Element, envelope: Envelope, kind: &str) {
        if !self.domain_allowed(&envelope.from) {
            if kind == "available" {
                self.refuse_forbidden(stanza).await;
            }
            return;
        }
        match envelope.target.clone() {
            Address::IrcChannel { channel, server } => {
                self.room_presence(stanza, &envelope, &channel, &server, kind).await
            }
            Address::Email { .. } if kind == "probe" => {
                let contact = stanza_to(stanza).map(|j| j.to_bare().to_string()).unwrap_or_default();
                self.email_contacts.entry(envelope.user.clone()).or_default().insert(contact.clone());
                let presence = self.email_presence(&envelope.user);
                self.send_presence_from(presence, &contact, envelope.from.as_str()).await;
            }
            Address::IrcUser { .. } | Address::Email { .. } | Address::IrcServer { .. } if kind == "subscribe" => {
                // Legacy contacts cannot answer subscription requests: the gateway does,
                // then sends the contact's presence as a contact's server would.
                let contact = stanza_to(stanza).map(|j| j.to_bare().to_string()).unwrap_or_default();
                let user = envelope.from.to_bare().to_string();
                self.send_presence_from(Presence::subscribed(), &contact, &user).await;
                if let Address::Email { .. } = envelope.target {
                    self.email_contacts.entry(envelope.user.clone()).or_default().insert(contact.clone());
                    let presence = self.email_presence(&envelope.user);
                    self.send_presence_from(presence, &contact, &user).await;
                }
            }
            _ => debug!(kind, "presence to a network address ignored"),
        }
    }

    /// Joining, leaving, changing nick in, or updating presence in a room.
    async fn room_presence(&mut self, stanza: &Element, envelope: &Envelope, channel: &str, server: &str, kind: &str) {
        let network = NetworkId::Irc { server: server.to_owned() };
        let user = UserId(envelope.user.clone());
        let key = room_key(&user, &network, channel);
        let full = envelope.from.to_string();
        match kind {
            "available" => {
                let Some(nick) = envelope.resource.as_deref() else {
                    let text = "join a room with a nick: #chan%irc.example.org@gateway/nick";
                    return self.refuse(stanza, DefinedCondition::JidMalformed, text).await;
                };
                if let Err(error) = address::parse_occupant_nick(nick) {
                    return self.refuse(stanza, DefinedCondition::JidMalformed, &error.to_string()).await;
                }
                let availability = availability_of(stanza);
                match self.rooms.get_mut(&key) {
                    None => {
                        let jid = format!("{}@{}", address::format_localpart(&envelope.target), self.gateway);
                        self.rooms.insert(key.clone(), Room::new(jid, channel.to_owned(), full, nick.to_owned()));
                        let join = Command::Join {
                            channel: channel.to_owned(),
                            nick: nick.to_owned(),
                            password: muc_password(stanza).map(bridge_core::Secret::new),
                        };
                        if let Err((condition, text)) = self.hand_to_session(envelope, join) {
                            self.rooms.remove(&key);
                            return self.refuse(stanza, condition, &text).await;
                        }
                    }
                    Some(room) if room.resources.contains(&full) => {
                        if !room.is_me(nick) {
                            let command = Command::ChangeNick { nick: nick.to_owned() };
                            let _ = self.hand_to_session(envelope, command);
                        }
                    }
                    Some(room) => {
                        room.resources.insert(full.clone());
                        let stanzas = if room.joined { room.entry_stanzas(&full) } else { Vec::new() };
                        for stanza in stanzas {
                            self.out.send(stanza).await;
                        }
                    }
                }
                if let Some((availability, status)) = availability {
                    self.sessions.tell_irc_sessions(&user, &Command::SetAvailability { availability, status });
                }
            }
            "unavailable" => {
                let Some(room) = self.rooms.get_mut(&key) else { return };
                if !room.resources.remove(&full) {
                    return;
                }
                let me = room.me();
                let goodbye = muc::departure_presence(&room.occupant_jid(&room.nick), &full, &me, &[Status::SelfPresence], None, None);
                let emptied = room.resources.is_empty();
                self.out.send(goodbye).await;
                if emptied {
                    self.rooms.remove(&key);
                    let reason = stanza.get_child("status", crate::connection::NS_COMPONENT).map(Element::text);
                    let session = SessionKey { user, network };
                    self.sessions.tell(&session, Command::Leave { channel: channel.to_owned(), reason });
                }
            }
            _ => {}
        }
    }

    async fn handle_message(&mut self, stanza: Element, envelope: Envelope) {
        let kind = stanza.attr("type").unwrap_or("normal");
        if kind == "error" {
            return debug!(user = %envelope.user, "error message ignored");
        }
        let body = stanza.get_child("body", crate::connection::NS_COMPONENT).map(Element::text);
        if let Address::Gateway = envelope.target {
            if body.is_some() {
                let mut reply = xmpp_parsers::message::Message::chat(Some(envelope.from.clone()));
                reply.from = stanza_to(&stanza);
                reply.bodies.insert(Lang::from(stanza::LANG), HELP.to_owned());
                self.out.send(reply.into()).await;
            }
            return;
        }
        if !self.domain_allowed(&envelope.from) {
            return self.refuse_forbidden(&stanza).await;
        }
        let subject = stanza.get_child("subject", crate::connection::NS_COMPONENT).map(Element::text);
        if let (Address::IrcChannel { channel, server }, "groupchat") = (&envelope.target, kind) {
            return self.room_message(&stanza, &envelope, channel, server, body, subject).await;
        }
        // Chat states and receipts without a body: nothing to carry yet.
        let Some(body) = body else { return };
        let peer = match (&envelope.target, envelope.resource.as_deref()) {
            // A private message through the room goes to the nick itself.
            (Address::IrcChannel { .. }, Some(nick)) => Peer::Nick(nick.to_owned()),
            (Address::IrcChannel { .. }, None) => {
                let text = "send group messages with type='groupchat' after joining the room";
                return self.refuse(&stanza, DefinedCondition::NotAcceptable, text).await;
            }
            (Address::IrcUser { nick, .. }, _) => Peer::Nick(nick.clone()),
            (Address::IrcServer { .. }, _) => Peer::Server,
            (Address::Email { address }, _) => Peer::EmailAddress(address.clone()),
            (Address::Gateway, _) => return,
        };
        let message = Message {
            kind: MessageKind::Chat,
            peer,
            sender: None,
            body,
            subject,
            thread: stanza.get_child("thread", crate::connection::NS_COMPONENT).map(Element::text),
            id: stanza.attr("id").map(str::to_owned),
        };
        if let Some(contact) = stanza_to(&stanza) {
            let key = (envelope.user.clone(), contact.to_bare().to_string());
            self.conversations.entry(key).or_default().insert(envelope.from.to_string());
        }
        if let Err((condition, text)) = self.hand_to_session(&envelope, Command::Send(message)) {
            self.refuse(&stanza, condition, &text).await;
        }
    }

    /// A group chat message or a subject change from one of the user's resources.
    async fn room_message(
        &mut self,
        stanza: &Element,
        envelope: &Envelope,
        channel: &str,
        server: &str,
        body: Option<String>,
        subject: Option<String>,
    ) {
        let network = NetworkId::Irc { server: server.to_owned() };
        let key = room_key(&UserId(envelope.user.clone()), &network, channel);
        let full = envelope.from.to_string();
        let Some(room) = self.rooms.get(&key).filter(|r| r.joined && r.resources.contains(&full)) else {
            let text = "you are not in this room: join it first";
            return self.refuse(stanza, DefinedCondition::NotAcceptable, text).await;
        };
        let (from, resources) = (room.occupant_jid(&room.nick), room.resources.clone());
        let command = match (body, subject) {
            (None, Some(topic)) => Command::SetTopic { channel: room.channel.clone(), topic },
            (Some(body), _) => {
                // IRC does not echo: reflect the message to every resource in the room.
                for to in &resources {
                    self.out.send(muc::groupchat(&from, to, &body, stanza.attr("id"))).await;
                }
                Command::Send(Message {
                    peer: Peer::Channel(room.channel.clone()),
                    sender: None,
                    kind: MessageKind::Group,
                    body,
                    subject: None,
                    thread: None,
                    id: stanza.attr("id").map(str::to_owned),
                })
            }
            (None, None) => return,
        };
        if let Err((condition, text)) = self.hand_to_session(envelope, command) {
            self.refuse(stanza, condition, &text).await;
        }
    }

    /// A resource went offline: it leaves its rooms, and rooms nobody is left in are
    /// left on IRC.
    fn leave_rooms_of(&mut self, user: &UserId, full: &str) {
        for ((_, network, _), room) in self.rooms.remove_resource(user, full) {
            let key = SessionKey { user: user.clone(), network };
            self.sessions.tell(&key, Command::Leave { channel: room.channel, reason: None });
        }
    }

    /// Hands a command to the user's session for the target's network, starting it with
    /// the user's own stored credentials. `Err` is a text for the user.
    fn hand_to_session(&mut self, envelope: &Envelope, command: Command) -> Result<(), disco::Refusal> {
        let unavailable = |text: String| (DefinedCondition::ServiceUnavailable, text);
        let network = match &envelope.target {
            Address::IrcChannel { server, .. } | Address::IrcUser { server, .. } | Address::IrcServer { server } => {
                NetworkId::Irc { server: server.clone() }
            }
            Address::Email { .. } => NetworkId::Email,
            Address::Gateway => return Err(unavailable("the gateway itself is not a network".into())),
        };
        let record = self.store.user(&envelope.user).map_err(internal)?;
        let credentials = credentials_for(record.as_ref(), &network)
            .map_err(|text| (DefinedCondition::RegistrationRequired, text))?;
        let key = SessionKey { user: UserId(envelope.user.clone()), network };
        self.sessions.dispatch(key, || credentials, command).map_err(|e| unavailable(e.to_string()))
    }

    // ---------------------------------------------------------------------------------
    // From the networks
    // ---------------------------------------------------------------------------------

    /// Turns a session event into stanzas for the user.
    pub async fn handle_event(&mut self, event: SessionEvent) {
        let SessionEvent { key, event } = event;
        let server = match &key.network {
            NetworkId::Irc { server } => Some(server.clone()),
            NetworkId::Email => None,
        };
        match event {
            Event::Message(message) => self.network_message(&key, server.as_deref(), message).await,
            Event::Attachment { peer, attachment } => {
                let Some(from) = peer_jid(&peer, server.as_deref(), None, &self.gateway) else { return };
                if let Some(uploads) = &mut self.uploads {
                    uploads.push(upload::Job { from, to: key.user.0.clone(), file: attachment });
                }
            }
            Event::Failure { peer, id, kind, text } => {
                let from = peer
                    .and_then(|p| peer_jid(&p, server.as_deref(), None, &self.gateway))
                    .unwrap_or_else(|| self.gateway.clone());
                // An error to a bare JID is dropped by the server (RFC 6121 §8.5.2.1.1):
                // it goes to the resources that wrote to that contact.
                let targets = self.conversation_resources(&key.user.0, &from);
                for to in targets {
                    let Ok(to) = to.parse::<Jid>() else { continue };
                    let mut stanza = xmpp_parsers::message::Message::new_with_type(MessageType::Error, Some(to));
                    stanza.from = from.parse().ok();
                    stanza.id = id.clone().map(xmpp_parsers::message::Id);
                    stanza.payloads.push(stanza::stanza_error(condition_of(kind), &text).into());
                    self.out.send(stanza.into()).await;
                }
            }
            Event::Joined { channel, nick, occupants, topic } => {
                let Some(room) = self.rooms.get_mut(&room_key(&key.user, &key.network, &channel)) else { return };
                room.joined = true;
                room.nick = nick;
                room.topic = topic;
                room.occupants = occupants.into_iter().map(|o| (o.nick.to_lowercase(), o)).collect();
                let stanzas: Vec<Element> = room.resources.iter().flat_map(|to| room.entry_stanzas(to)).collect();
                self.send_all(stanzas).await;
            }
            Event::JoinFailed { channel, kind, text } => {
                let Some(room) = self.rooms.remove(&room_key(&key.user, &key.network, &channel)) else { return };
                let from = room.occupant_jid(&room.requested_nick);
                for to in &room.resources {
                    let Ok(to) = to.parse::<Jid>() else { continue };
                    let mut presence = Presence::new(PresenceType::Error).with_to(to);
                    presence.from = from.parse().ok();
                    presence.payloads.push(stanza::stanza_error(condition_of(kind), &text).into());
                    self.out.send(presence.into()).await;
                }
            }
            Event::Occupant { channel, occupant } => {
                let Some(room) = self.rooms.get_mut(&room_key(&key.user, &key.network, &channel)) else { return };
                room.occupants.insert(occupant.nick.to_lowercase(), occupant.clone());
                let codes: &[Status] = if room.is_me(&occupant.nick) { &[Status::SelfPresence] } else { &[] };
                let from = room.occupant_jid(&occupant.nick);
                let stanzas = room.resources.iter().map(|to| muc::occupant_presence(&from, to, &occupant, codes, None)).collect();
                self.send_all(stanzas).await;
            }
            Event::Left { channel, nick, departure, reason } => {
                let room_key = room_key(&key.user, &key.network, &channel);
                let Some(room) = self.rooms.get_mut(&room_key) else { return };
                let me = room.is_me(&nick);
                let occupant = room.occupants.remove(&nick.to_lowercase()).unwrap_or(bridge_core::model::Occupant {
                    nick: nick.clone(),
                    role: bridge_core::model::Role::Participant,
                    affiliation: bridge_core::model::Affiliation::None,
                });
                let mut codes = Vec::new();
                if me {
                    codes.push(Status::SelfPresence);
                }
                if let Departure::Kicked { .. } = departure {
                    codes.push(Status::Kicked);
                }
                let from = room.occupant_jid(&nick);
                let stanzas = room
                    .resources
                    .iter()
                    .map(|to| muc::departure_presence(&from, to, &occupant, &codes, None, reason.as_deref()))
                    .collect();
                if me {
                    self.rooms.remove(&room_key);
                }
                self.send_all(stanzas).await;
            }
            Event::NickChanged { channel, old, new } => {
                let Some(room) = self.rooms.get_mut(&room_key(&key.user, &key.network, &channel)) else { return };
                let me = room.is_me(&old);
                let Some(mut occupant) = room.occupants.remove(&old.to_lowercase()) else { return };
                let codes: Vec<Status> = if me { vec![Status::NewNick, Status::SelfPresence] } else { vec![Status::NewNick] };
                let gone = room.occupant_jid(&old);
                let mut stanzas: Vec<Element> =
                    room.resources.iter().map(|to| muc::departure_presence(&gone, to, &occupant, &codes, Some(&new), None)).collect();
                occupant.nick = new.clone();
                if me {
                    room.nick = new.clone();
                    room.requested_nick = new.clone();
                }
                let back = room.occupant_jid(&new);
                let back_codes: &[Status] = if me { &[Status::SelfPresence] } else { &[] };
                stanzas.extend(room.resources.iter().map(|to| muc::occupant_presence(&back, to, &occupant, back_codes, None)));
                room.occupants.insert(new.to_lowercase(), occupant);
                self.send_all(stanzas).await;
            }
            Event::Topic { channel, topic, by } => {
                let Some(room) = self.rooms.get_mut(&room_key(&key.user, &key.network, &channel)) else { return };
                room.topic = Some(topic.clone());
                let from = by.map(|nick| room.occupant_jid(&nick)).unwrap_or_else(|| room.jid.clone());
                let stanzas = room.resources.iter().map(|to| muc::subject_message(&from, to, &topic)).collect();
                self.send_all(stanzas).await;
            }
            Event::Disconnected { channels, reason } => {
                let mut stanzas = Vec::new();
                for channel in channels {
                    let Some(room) = self.rooms.get_mut(&room_key(&key.user, &key.network, &channel)) else { continue };
                    room.joined = false;
                    let me = room.me();
                    room.occupants.clear();
                    let from = room.occupant_jid(&room.nick);
                    let codes = [Status::SelfPresence, Status::ServiceShutdown];
                    stanzas.extend(room.resources.iter().map(|to| muc::departure_presence(&from, to, &me, &codes, None, Some(&reason))));
                }
                self.send_all(stanzas).await;
            }
            Event::PeerQuit { nick, reason } => {
                let Some(from) = peer_jid(&Peer::Nick(nick), server.as_deref(), None, &self.gateway) else { return };
                let mut targets = self.conversation_resources(&key.user.0, &from);
                targets.insert(key.user.0.clone());
                for to in targets {
                    let Ok(to) = to.parse::<Jid>() else { continue };
                    let mut presence = Presence::unavailable().with_to(to);
                    presence.from = from.parse().ok();
                    if let Some(reason) = &reason {
                        presence.set_status(Lang::new(), reason.clone());
                    }
                    self.out.send(presence.into()).await;
                }
            }
            Event::NetworkStatus { online, reason } => {
                let user = key.user.0.clone();
                info!(%user, online, reason = reason.as_deref().unwrap_or(""), "network status");
                let status = if online { Ok(()) } else { Err(reason.unwrap_or_else(|| "unavailable".into())) };
                self.email_status.insert(user.clone(), status);
                let contacts = self.email_contacts.get(&user).cloned().unwrap_or_default();
                for contact in contacts {
                    let presence = self.email_presence(&user);
                    self.send_presence_from(presence, &contact, &user).await;
                }
            }
            Event::Ended { reason, unhandled } => {
                info!(user = %key.user.0, network = ?key.network, %reason, "session ended");
                self.sessions.forget(&key);
                // Commands that came too late for the ended session start a new one.
                for command in unhandled {
                    let record = self.store.user(&key.user.0).ok().flatten();
                    let Ok(credentials) = credentials_for(record.as_ref(), &key.network) else { continue };
                    let _ = self.sessions.dispatch(key.clone(), || credentials, command);
                }
                if !self.sessions.is_live(&key) {
                    self.rooms.remove_network(&key.user, &key.network);
                }
            }
        }
    }

    /// A message from a network: group chat to every resource in the room, or a chat
    /// message from the contact.
    async fn network_message(&mut self, key: &SessionKey, server: Option<&str>, message: Message) {
        let body = match message.kind {
            MessageKind::Action => format!("/me {}", message.body),
            _ => message.body,
        };
        if let Peer::Channel(channel) = &message.peer {
            let Some(room) = self.rooms.get(&room_key(&key.user, &key.network, channel)) else { return };
            let from = match &message.sender {
                Some(nick) => room.occupant_jid(nick),
                None => room.jid.clone(),
            };
            let stanzas = room.resources.iter().map(|to| muc::groupchat(&from, to, &body, None)).collect();
            return self.send_all(stanzas).await;
        }
        let Some(from) = peer_jid(&message.peer, server, None, &self.gateway) else {
            return warn!(user = %key.user.0, "a session reported a message from an address we cannot form");
        };
        let Ok(to) = key.user.0.parse::<BareJid>() else { return };
        let mut stanza = xmpp_parsers::message::Message::new_with_type(MessageType::Chat, Some(to.into()));
        stanza.from = from.parse().ok();
        stanza.bodies.insert(Lang::new(), body);
        if let Some(subject) = message.subject {
            stanza.subjects.insert(Lang::new(), subject);
        }
        if let Some(thread) = message.thread {
            stanza.thread = Some(xmpp_parsers::message::Thread { parent: None, id: thread });
        }
        self.out.send(stanza.into()).await;
    }

    /// The user's full JIDs that wrote to `contact`, else their bare JID.
    fn conversation_resources(&self, user: &str, contact: &str) -> BTreeSet<String> {
        match self.conversations.get(&(user.to_owned(), contact.to_owned())) {
            Some(resources) if !resources.is_empty() => resources.clone(),
            _ => BTreeSet::from([user.to_owned()]),
        }
    }

    async fn send_all(&self, stanzas: Vec<Element>) {
        for stanza in stanzas {
            self.out.send(stanza).await;
        }
    }

    // ---------------------------------------------------------------------------------
    // Life cycle
    // ---------------------------------------------------------------------------------

    /// A new connection is up: ask every registered user's presence again, since what we
    /// knew may be stale.
    pub async fn on_connected(&mut self) {
        self.online.clear();
        match self.store.user_jids() {
            Ok(users) => {
                for user in users {
                    self.send_presence(Presence::probe(), &user).await;
                    if let Ok(Some(record)) = self.store.user(&user) {
                        self.start_email(&user, &record);
                    }
                }
            }
            Err(error) => warn!(%error, "cannot list registered users to probe"),
        }
    }

    /// The gateway stops: tell online users, end sessions, make the store durable.
    pub async fn on_shutdown(&mut self) {
        let online: Vec<String> = self.online.all().map(|(bare, resource)| format!("{bare}/{resource}")).collect();
        for full in online {
            self.send_presence(Presence::unavailable(), &full).await;
        }
        self.sessions.end_all("the gateway is shutting down");
        if let Err(error) = self.store.flush().await {
            warn!(%error, "flushing the store at shutdown");
        }
        info!("shut down");
    }

    /// Checks that the server still answers: a ping to ourselves goes through the server
    /// and back.
    pub async fn send_keepalive_ping(&mut self) {
        self.pings_sent += 1;
        let Ok(gateway) = self.gateway.parse::<Jid>() else { return };
        let ping = Iq::from_get(format!("{KEEPALIVE_ID}{}", self.pings_sent), xmpp_parsers::ping::Ping)
            .with_to(gateway.clone())
            .with_from(gateway);
        self.out.send(ping.into()).await;
    }

    // ---------------------------------------------------------------------------------
    // Helpers
    // ---------------------------------------------------------------------------------

    fn domain_allowed(&self, from: &Jid) -> bool {
        self.config.domain_allowed(from.domain().as_str())
    }

    /// The result of an iq, with an optional payload.
    async fn reply(&self, stanza: &Element, payload: Option<Element>) {
        let (Some(id), Some(to)) = (stanza.attr("id"), stanza.attr("from").and_then(|f| f.parse::<Jid>().ok())) else {
            return;
        };
        let reply = Iq::Result { from: stanza_to(stanza), to: Some(to), id: id.to_owned(), payload };
        self.out.send(reply.into()).await;
    }

    async fn refuse(&self, stanza: &Element, condition: DefinedCondition, text: &str) {
        debug!(name = stanza.name(), ?condition, %text, "refusing a stanza");
        if let Some(reply) = error_reply(stanza, condition, text) {
            self.out.send(reply).await;
        }
    }

    async fn refuse_forbidden(&self, stanza: &Element) {
        let text = "users of your server may not use this gateway (registration.allowed_domains)";
        self.refuse(stanza, DefinedCondition::Forbidden, text).await;
    }

    /// How a user's email contacts look: available while their mail account works.
    fn email_presence(&self, user: &str) -> Presence {
        match self.email_status.get(user) {
            Some(Ok(())) => Presence::available(),
            Some(Err(reason)) => {
                let mut presence = Presence::unavailable();
                presence.set_status(Lang::new(), reason.clone());
                presence
            }
            None => {
                let mut presence = Presence::unavailable();
                let text = if self.store.user(user).ok().flatten().is_some_and(|r| r.email.is_some()) {
                    "connecting to your mailbox"
                } else {
                    "register your email account with the gateway first"
                };
                presence.set_status(Lang::new(), text.to_owned());
                presence
            }
        }
    }

    async fn send_presence_from(&self, presence: Presence, from: &str, to: &str) {
        let (Ok(to), Ok(from)) = (to.parse::<Jid>(), from.parse::<Jid>()) else { return };
        self.out.send(presence.with_to(to).with_from(from).into()).await;
    }

    async fn send_presence(&self, presence: Presence, to: &str) {
        let (Ok(to), Ok(from)) = (to.parse::<Jid>(), self.gateway.parse::<Jid>()) else { return };
        self.out.send(presence.with_to(to).with_from(from).into()).await;
    }
}

/// The credentials a session on `network` uses, from the user's registration; an error
/// text when the network needs a registration the user lacks.
fn credentials_for(record: Option<&UserRecord>, network: &NetworkId) -> Result<Credentials, String> {
    match network {
        NetworkId::Irc { .. } => Ok(record
            .and_then(|r| r.irc.as_ref())
            .map(|irc| Credentials::Irc { nick: irc.nick.clone(), password: irc.password.clone() })
            .unwrap_or(Credentials::Anonymous)),
        NetworkId::Email => record
            .and_then(|r| r.email.as_ref())
            .map(|e| Credentials::Email {
                address: e.address.clone(),
                password: e.password.clone(),
                login: e.login.clone(),
                imap_server: e.imap_server.clone(),
                smtp_server: e.smtp_server.clone(),
                mark_seen: e.mark_seen,
            })
            .ok_or_else(|| "register your email account with the gateway first".to_owned()),
    }
}

/// The JID a peer speaks from: a room occupant `#chan%server@gw/nick`, a nick, a server,
/// an email address.
fn peer_jid(peer: &Peer, server: Option<&str>, sender: Option<&str>, gateway: &str) -> Option<String> {
    let address = match (peer, server) {
        (Peer::Channel(channel), Some(server)) => Address::IrcChannel { channel: channel.clone(), server: server.to_owned() },
        (Peer::Nick(nick), Some(server)) => Address::IrcUser { nick: nick.clone(), server: server.to_owned() },
        (Peer::Server, Some(server)) => Address::IrcServer { server: server.to_owned() },
        (Peer::EmailAddress(address), None) => Address::Email { address: address.clone() },
        _ => return None,
    };
    let bare = format!("{}@{gateway}", address::format_localpart(&address));
    Some(match (peer, sender) {
        (Peer::Channel(_), Some(nick)) => format!("{bare}/{nick}"),
        _ => bare,
    })
}

/// Splits a JID string into (localpart, domain, resource) without normalising, so that
/// channel and nick case survive.
pub fn split_jid(jid: &str) -> (Option<&str>, &str, Option<&str>) {
    let (bare, resource) = match jid.split_once('/') {
        Some((bare, resource)) => (bare, Some(resource)),
        None => (jid, None),
    };
    match bare.rsplit_once('@') {
        Some((local, domain)) => (Some(local), domain, resource),
        None => (None, bare, resource),
    }
}

/// The `to` of a stanza as a JID, for the `from` of our reply.
fn stanza_to(stanza: &Element) -> Option<Jid> {
    stanza.attr("to").and_then(|t| t.parse().ok())
}

/// The XMPP error condition of a network failure.
fn condition_of(kind: FailureKind) -> DefinedCondition {
    match kind {
        FailureKind::Forbidden => DefinedCondition::Forbidden,
        FailureKind::NotAuthorized => DefinedCondition::NotAuthorized,
        FailureKind::NotFound => DefinedCondition::ItemNotFound,
        FailureKind::NotAcceptable => DefinedCondition::NotAcceptable,
        FailureKind::Unavailable => DefinedCondition::ServiceUnavailable,
        FailureKind::RegistrationRequired => DefinedCondition::RegistrationRequired,
    }
}

/// The availability a presence announces, when it says something IRC can show (AWAY).
fn availability_of(stanza: &Element) -> Option<(Availability, Option<String>)> {
    let ns = crate::connection::NS_COMPONENT;
    let status = stanza.get_child("status", ns).map(Element::text).filter(|s| !s.is_empty());
    let availability = match stanza.get_child("show", ns).map(Element::text).as_deref() {
        None | Some("chat") => Availability::Available,
        Some("away") => Availability::Away,
        Some("xa") => Availability::ExtendedAway,
        Some("dnd") => Availability::DoNotDisturb,
        Some(_) => return None,
    };
    Some((availability, status))
}

/// The room password of a MUC join, if any.
fn muc_password(stanza: &Element) -> Option<String> {
    stanza
        .get_child("x", disco::NS_MUC)
        .and_then(|x| x.get_child("password", disco::NS_MUC))
        .map(Element::text)
}

/// A store failure as the user sees it: no details, which stay in the log.
fn internal(error: crate::store::StoreError) -> disco::Refusal {
    warn!(%error, "store failure");
    (DefinedCondition::InternalServerError, "the gateway could not access its store".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_jids_keeping_case() {
        assert_eq!(split_jid("#Rust%irc.x@gw/Nick/x"), (Some("#Rust%irc.x"), "gw", Some("Nick/x")));
        assert_eq!(split_jid("gw"), (None, "gw", None));
        assert_eq!(split_jid("a\\40b.org@gw"), (Some("a\\40b.org"), "gw", None));
    }

    #[test]
    fn peers_map_to_their_jids() {
        let irc = Some("irc.x");
        assert_eq!(peer_jid(&Peer::Channel("#r".into()), irc, Some("bob"), "gw").unwrap(), "#r%irc.x@gw/bob");
        assert_eq!(peer_jid(&Peer::Nick("bob".into()), irc, None, "gw").unwrap(), "bob%irc.x@gw");
        assert_eq!(peer_jid(&Peer::Server, irc, None, "gw").unwrap(), "irc.x@gw");
        assert_eq!(peer_jid(&Peer::EmailAddress("a@b.org".into()), None, None, "gw").unwrap(), "a\\40b.org@gw");
        assert!(peer_jid(&Peer::Server, None, None, "gw").is_none());
    }

    #[test]
    fn email_needs_registration_irc_does_not() {
        assert_eq!(credentials_for(None, &NetworkId::Irc { server: "x".into() }), Ok(Credentials::Anonymous));
        assert!(credentials_for(None, &NetworkId::Email).unwrap_err().contains("register"));
    }
}
