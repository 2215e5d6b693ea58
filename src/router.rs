//! The router: every stanza from the server goes to the handler for its address and kind,
//! and every event from a session comes back here to become a stanza for the one writer.
//!
//! Grouped as biboumi's Bridge is: "from XMPP" (stanzas in) and "from the networks"
//! (session events in), then the gateway's own life cycle (connect, shutdown).

use std::sync::Arc;

use bridge_core::model::{Command, Credentials, Event, Message, MessageKind, NetworkId, Peer, SessionKey, UserId};
use bridge_core::SessionEvent;
use minidom::Element;
use tracing::{debug, info, warn};
use xmpp_parsers::iq::Iq;
use xmpp_parsers::jid::{BareJid, Jid};
use xmpp_parsers::message::{Lang, MessageType};
use xmpp_parsers::presence::{Presence, Type as PresenceType};
use xmpp_parsers::stanza_error::DefinedCondition;

use crate::address::{self, Address};
use crate::config::Config;
use crate::disco;
use crate::presence::{Change, OnlineUsers};
use crate::registration::{self, Request, NS_REGISTER};
use crate::sessions::Sessions;
use crate::stanza::{self, error_reply};
use crate::store::{Store, UserRecord};
use crate::writer::Outbox;

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
    /// Counter for keepalive ping ids.
    pings_sent: u64,
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
    pub fn new(config: Arc<Config>, store: Store, out: Outbox, sessions: Sessions) -> Self {
        let gateway = config.component.jid.to_ascii_lowercase();
        Router { config, gateway, store, out, online: OnlineUsers::default(), sessions, pings_sent: 0 }
    }

    // ---------------------------------------------------------------------------------
    // From XMPP
    // ---------------------------------------------------------------------------------

    /// Handles one stanza from the server. Never fails: a bad stanza gets an error reply
    /// or a log line, and nothing else is affected.
    pub async fn handle_stanza(&mut self, stanza: Element) {
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
        let kind = stanza.attr("type").unwrap_or_default();
        if kind == "result" || kind == "error" {
            let id = stanza.attr("id").unwrap_or_default();
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
            (true, disco::NS_DISCO_ITEMS) => {
                Ok(Some(disco::items(&envelope.target, node, &self.gateway, &self.config).into()))
            }
            (true, disco::NS_VERSION) if gateway => Ok(Some(disco::version().into())),
            (true, disco::NS_PING) => Ok(None),
            (true, disco::NS_GATEWAY) if gateway => Ok(Some(disco::gateway_prompt())),
            (false, disco::NS_GATEWAY) if gateway => disco::gateway_translate(&payload, &self.gateway).map(Some),
            (_, NS_REGISTER) if gateway => self.handle_register(is_get, &payload, &envelope).await,
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

    async fn handle_register(
        &mut self,
        is_get: bool,
        query: &Element,
        envelope: &Envelope,
    ) -> Result<Option<Element>, disco::Refusal> {
        let user = envelope.user.as_str();
        let existing = self.store.user(user).map_err(internal)?;
        if is_get {
            return Ok(Some(registration::query_for(existing.as_ref())));
        }
        let request = registration::parse_request(query).map_err(|e| (DefinedCondition::NotAcceptable, e.to_string()))?;
        match request {
            Request::Remove => {
                if !self.store.remove_user(user).await.map_err(internal)? {
                    return Err((DefinedCondition::RegistrationRequired, "you are not registered".into()));
                }
                info!(%user, "unregistered");
                self.sessions.end_user(&UserId(user.to_owned()), "unregistered");
                for type_ in [PresenceType::Unsubscribe, PresenceType::Unsubscribed, PresenceType::Unavailable] {
                    self.send_presence(Presence::new(type_), user).await;
                }
                Ok(None)
            }
            Request::Submit(values) => {
                let record = registration::apply(existing.as_ref(), &values, &self.config)
                    .map_err(|e| (DefinedCondition::NotAcceptable, e.to_string()))?;
                self.store.put_user(user, &record).await.map_err(internal)?;
                // New credentials: sessions restart with them on next use.
                self.sessions.end_user(&UserId(user.to_owned()), "registration changed");
                if existing.is_none() {
                    info!(%user, "registered");
                    // XEP-0100 §4.1.1: the gateway asks for the user's presence.
                    self.send_presence(Presence::subscribe(), user).await;
                } else {
                    info!(%user, "registration updated");
                }
                Ok(None)
            }
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
                if registered {
                    self.send_presence(Presence::available(), envelope.from.as_str()).await;
                }
            }
            "unavailable" => {
                let resource = envelope.from.resource().map(|r| r.as_str());
                if self.online.unavailable(user, resource) == Change::WentOffline {
                    info!(%user, "user offline; ending their sessions");
                    self.sessions.end_user(&UserId(user.to_owned()), "user went offline");
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
        let command = match (&envelope.target, kind, envelope.resource.as_deref()) {
            (Address::IrcChannel { channel, .. }, "available", Some(nick)) => Command::Join {
                channel: channel.clone(),
                nick: nick.to_owned(),
                password: muc_password(stanza).map(bridge_core::Secret::new),
            },
            (Address::IrcChannel { channel, .. }, "unavailable", _) => Command::Leave {
                channel: channel.clone(),
                reason: stanza.get_child("status", crate::connection::NS_COMPONENT).map(Element::text),
            },
            (Address::IrcChannel { .. }, "available", None) => {
                let text = "join a room with a nick: #chan%irc.example.org@gateway/nick";
                return self.refuse(stanza, DefinedCondition::JidMalformed, text).await;
            }
            _ => return debug!(kind, "presence to a network address ignored"),
        };
        if let Err(text) = self.to_session(&envelope, command) {
            self.refuse(stanza, DefinedCondition::ServiceUnavailable, &text).await;
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
        // Chat states and receipts without a body: nothing to carry yet.
        let Some(body) = body else { return };
        let peer = match (&envelope.target, envelope.resource.as_deref()) {
            (Address::IrcChannel { .. }, Some(nick)) => Peer::Nick(nick.to_owned()),
            (Address::IrcChannel { channel, .. }, None) => Peer::Channel(channel.clone()),
            (Address::IrcUser { nick, .. }, _) => Peer::Nick(nick.clone()),
            (Address::IrcServer { .. }, _) => Peer::Server,
            (Address::Email { address }, _) => Peer::EmailAddress(address.clone()),
            (Address::Gateway, _) => return,
        };
        let message = Message {
            kind: if matches!(peer, Peer::Channel(_)) { MessageKind::Group } else { MessageKind::Chat },
            peer,
            sender: None,
            body,
            subject: stanza.get_child("subject", crate::connection::NS_COMPONENT).map(Element::text),
            thread: stanza.get_child("thread", crate::connection::NS_COMPONENT).map(Element::text),
        };
        if let Err(text) = self.to_session(&envelope, Command::Send(message)) {
            let condition = if text.contains("register") {
                DefinedCondition::RegistrationRequired
            } else {
                DefinedCondition::ServiceUnavailable
            };
            self.refuse(&stanza, condition, &text).await;
        }
    }

    /// Hands a command to the user's session for the target's network, starting it with
    /// the user's own stored credentials. `Err` is a text for the user.
    fn to_session(&mut self, envelope: &Envelope, command: Command) -> Result<(), String> {
        let network = match &envelope.target {
            Address::IrcChannel { server, .. } | Address::IrcUser { server, .. } | Address::IrcServer { server } => {
                NetworkId::Irc { server: server.clone() }
            }
            Address::Email { .. } => NetworkId::Email,
            Address::Gateway => return Err("the gateway itself is not a network".into()),
        };
        if !self.sessions.has_bridge(&network) {
            let name = if network == NetworkId::Email { "email" } else { "IRC" };
            return Err(format!("this gateway build has no {name} bridge yet"));
        }
        let record = self.store.user(&envelope.user).map_err(|e| {
            warn!(user = %envelope.user, error = %e, "cannot read the store");
            "the gateway cannot read its store; try again later".to_owned()
        })?;
        let credentials = credentials_for(record.as_ref(), &network)?;
        let key = SessionKey { user: UserId(envelope.user.clone()), network };
        self.sessions
            .dispatch(key, || credentials, command)
            .map_err(|e| e.to_string())
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
            Event::Message(message) => {
                let Some(from) = peer_jid(&message.peer, server.as_deref(), message.sender.as_deref(), &self.gateway) else {
                    return warn!(user = %key.user.0, "a session reported a message from an address we cannot form");
                };
                let kind = match message.kind {
                    MessageKind::Group => MessageType::Groupchat,
                    _ => MessageType::Chat,
                };
                let Ok(to) = key.user.0.parse::<BareJid>() else { return };
                let mut stanza = xmpp_parsers::message::Message::new_with_type(kind, Some(to.into()));
                stanza.from = from.parse().ok();
                let body = match message.kind {
                    MessageKind::Action => format!("/me {}", message.body),
                    _ => message.body,
                };
                stanza.bodies.insert(Lang::new(), body);
                if let Some(subject) = message.subject {
                    stanza.subjects.insert(Lang::new(), subject);
                }
                if let Some(thread) = message.thread {
                    stanza.thread = Some(xmpp_parsers::message::Thread { parent: None, id: thread });
                }
                self.out.send(stanza.into()).await;
            }
            Event::Failure { peer, kind, text } => {
                let from = peer
                    .and_then(|p| peer_jid(&p, server.as_deref(), None, &self.gateway))
                    .unwrap_or_else(|| self.gateway.clone());
                let condition = match kind {
                    bridge_core::model::FailureKind::Forbidden => DefinedCondition::Forbidden,
                    bridge_core::model::FailureKind::NotFound => DefinedCondition::ItemNotFound,
                    bridge_core::model::FailureKind::NotAcceptable => DefinedCondition::NotAcceptable,
                    bridge_core::model::FailureKind::Unavailable => DefinedCondition::ServiceUnavailable,
                    bridge_core::model::FailureKind::RegistrationRequired => DefinedCondition::RegistrationRequired,
                };
                let Ok(to) = key.user.0.parse::<Jid>() else { return };
                let mut stanza = xmpp_parsers::message::Message::new_with_type(MessageType::Error, Some(to));
                stanza.from = from.parse().ok();
                stanza.payloads.push(stanza::stanza_error(condition, &text).into());
                self.out.send(stanza.into()).await;
            }
            Event::Ended { reason } => {
                info!(user = %key.user.0, network = ?key.network, %reason, "session ended");
                self.sessions.forget(&key);
            }
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
