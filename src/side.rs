//! The XMPP side of a network: what the router hands to the part that serves one kind of
//! legacy network, and what those parts share.
//!
//! The router knows the gateway's own addresses (registration, discovery, presence to
//! the gateway); every stanza to a network address and every event from a network's
//! sessions goes to that network's [`NetworkSide`]: `irc_side.rs` (channels as rooms,
//! private conversations) and `email_side.rs` (account status, contacts, uploads). A new
//! network is one bridge crate, one `NetworkSide`, and one line in `Router::new`.

use std::collections::{BTreeSet, HashMap};

use async_trait::async_trait;
use bridge_core::model::{Availability, Command, Credentials, Event, FailureKind, Message, MessageKind, NetworkId, Peer, SessionKey, UserId};
use minidom::Element;
use tracing::debug;
use xmpp_parsers::jid::{BareJid, Jid};
use xmpp_parsers::message::{Lang, MessageType};
use xmpp_parsers::stanza_error::DefinedCondition;

use crate::address::{self, Address};
use crate::disco::Refusal;
use crate::sessions::Sessions;
use crate::stanza::{self, error_reply};
use crate::store::{Store, StoreError, UserRecord};
use crate::writer::Outbox;

/// A stanza's sender and target, once both are known to be sound.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// The sender as the server stamped it.
    pub from: Jid,
    /// The sender's bare JID as text: the key of everything stored about them.
    pub user: String,
    /// What the `to` address points at.
    pub target: Address,
    /// The `to` resource (a room occupant nick), if any.
    pub resource: Option<String>,
}

impl Envelope {
    /// The sender as a session's user.
    pub fn user_id(&self) -> UserId {
        UserId(self.user.clone())
    }
}

/// The XMPP side of one kind of network. Every method is called from the router's task,
/// one at a time; none may wait on the network (sessions do that).
#[async_trait(?Send)]
pub trait NetworkSide {
    /// Whether this side serves `network` (its sessions, its addresses).
    fn serves(&self, network: &NetworkId) -> bool;

    /// A presence from a user to one of this network's addresses (`kind` is its type,
    /// `available` when absent).
    async fn presence(&mut self, stanza: &Element, envelope: &Envelope, kind: &str);

    /// A message from a user to one of this network's addresses (`kind` is its type,
    /// `normal` when absent; never `error`).
    async fn message(&mut self, stanza: &Element, envelope: &Envelope, kind: &str);

    /// An event from one of this side's sessions.
    async fn event(&mut self, key: SessionKey, event: Event);

    /// One of the user's resources went offline; `last` when it was their last.
    async fn resource_offline(&mut self, user: &UserId, full: &str, last: bool);

    /// The user said how available they are (a presence to the gateway).
    fn availability(&mut self, _user: &UserId, _availability: Availability, _status: Option<String>) {}

    /// The user's registration was stored (`Some`) or removed (`None`): sessions restart
    /// with the new credentials or end.
    async fn registration_changed(&mut self, user: &UserId, record: Option<&UserRecord>);

    /// A connection to the XMPP server is up; `user` is registered as `record`.
    async fn connected(&mut self, _user: &UserId, _record: &UserRecord) {}

    /// The gateway is stopping: end every session.
    fn shutdown(&mut self, reason: &str);

    /// How many sessions this side has live.
    fn sessions(&self) -> usize;

    /// XEP-0410 MUC self-ping: for a ping to an occupant address of one of this side's
    /// rooms, whether the sender is in that room under that nick (`None`: the address
    /// is no occupant of this side's, the ping is answered as any other).
    fn self_ping(&self, _envelope: &Envelope) -> Option<bool> {
        None
    }

    /// A disco#info or disco#items query (no node) to one of this side's addresses that
    /// what the user's session knows answers better than the static description (a room
    /// the user is in, a server's channels): the answer's payload, awaited off the
    /// router's task. `None`: answered as any other address. `extra` is what disco#info
    /// says beyond the address's kind.
    fn discover(&mut self, _envelope: &Envelope, _query: &Element, _extra: crate::disco::Features) -> Option<Discovery> {
        None
    }

    /// The user turned a channel of `network` always on or off (the store already has
    /// it): a room kept for nobody is left when it is turned off.
    async fn persistence_changed(&mut self, _user: &UserId, _network: &NetworkId, _channel: &str, _persistent: bool) {}

    /// The users with a session on this side (whether or not they sent the gateway
    /// their presence).
    fn active_users(&self) -> Vec<UserId>;

    /// What `user` has open on this side, one line each (for the administrators' list
    /// of online users).
    fn user_activity(&self, user: &UserId) -> Vec<String>;

    /// An administrator disconnects `user`: their rooms close with `reason` and their
    /// sessions end (they start again when the user next uses the network).
    async fn disconnect_user(&mut self, user: &UserId, reason: &str);

    /// How many rooms this side has open (for the administrators' status).
    fn rooms(&self) -> usize {
        0
    }

    /// The rooms each user's resources are in, for another instance to restore if this
    /// one dies (several instances: `cluster`). Users in none are left out.
    fn saved_rooms(&self) -> Vec<(UserId, Vec<SavedRoom>)> {
        Vec::new()
    }

    /// This instance took `user` over from a dead one: the rooms it saved are joined
    /// again, and their resources get the room's entry once joined.
    async fn restore_rooms(&mut self, _user: &UserId, _rooms: Vec<SavedRoom>) {}

    /// `user` now belongs to another instance: end their sessions without a word to
    /// them (the new owner takes the rooms over).
    async fn release_user(&mut self, user: &UserId) {
        self.disconnect_user(user, "your sessions moved to another instance of the gateway").await;
    }
}

/// A room a user is in, as an instance saves it for its successor.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SavedRoom {
    /// The network's name (an IRC server).
    pub network: String,
    /// The channel, as the user spelled it.
    pub channel: String,
    /// The user's nick there.
    pub nick: String,
    /// The user's full JIDs in the room.
    pub resources: Vec<String>,
}

/// The answer to a discovery query, once the session has told what it knows.
pub type Discovery = futures::future::BoxFuture<'static, Result<Element, Refusal>>;

/// The network a target address belongs to, `None` for the gateway itself.
pub fn network_of(target: &Address) -> Option<NetworkId> {
    match target {
        Address::IrcChannel { server, .. } | Address::IrcUser { server, .. } | Address::IrcServer { server } => {
            Some(NetworkId::Irc { server: server.clone() })
        }
        Address::Email { .. } | Address::EmailGroup { .. } => Some(NetworkId::Email),
        Address::Gateway => None,
    }
}

/// The credentials a session on `network` uses, from the user's registration; an error
/// text when the network needs a registration the user lacks.
pub fn credentials_for(record: Option<&UserRecord>, network: &NetworkId) -> Result<Credentials, String> {
    match network {
        // A password goes only to the network the user gave it for.
        NetworkId::Irc { server } => Ok(record
            .and_then(|r| r.irc.as_ref())
            .map(|irc| Credentials::Irc { nick: irc.nick.clone(), password: irc.password_for(server).cloned() })
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
                save_sent: e.save_sent,
                display_name: e.display_name.clone(),
                mark_displayed: e.mark_displayed,
                import_contacts: e.import_contacts,
                folders: e.folders.clone(),
            })
            .ok_or_else(|| "register your email account with the gateway first".to_owned()),
    }
}

/// Hands a command to the user's session on `network`. Only when none is live is one
/// started, with the user's own credentials read (and unsealed) from the store then: a
/// live session keeps its own, so a message costs no decryption.
pub fn hand_to_session(sessions: &mut Sessions, store: &Store, user: &UserId, network: NetworkId, command: Command) -> Result<(), Refusal> {
    hand_to_session_if(sessions, store, SessionKey { user: user.clone(), network }, command, |_, _| Ok(()))
}

/// [`hand_to_session`], where a session that is not running starts only if `may_start`
/// allows it (a network policy, a limit); a running one is told at once, with one lookup.
pub fn hand_to_session_if(
    sessions: &mut Sessions,
    store: &Store,
    key: SessionKey,
    command: Command,
    may_start: impl FnOnce(&Sessions, &SessionKey) -> Result<(), Refusal>,
) -> Result<(), Refusal> {
    if sessions.is_live(&key) {
        sessions.tell(&key, command);
        return Ok(());
    }
    may_start(sessions, &key)?;
    let record = store.user(&key.user.0).map_err(internal)?;
    let credentials = credentials_for(record.as_ref(), &key.network).map_err(|text| (DefinedCondition::RegistrationRequired, text))?;
    sessions
        .dispatch(key, || credentials, command)
        .map_err(|e| (DefinedCondition::ServiceUnavailable, e.to_string()))
}

/// The JID a peer speaks from: a room occupant `#chan%server@gw/nick`, a nick, a server,
/// an email address.
pub fn peer_jid(peer: &Peer, server: Option<&str>, sender: Option<&str>, gateway: &str) -> Option<String> {
    let address = match (peer, server) {
        (Peer::Channel(channel), Some(server)) => Address::IrcChannel { channel: channel.clone(), server: server.to_owned() },
        (Peer::Nick(nick), Some(server)) => Address::IrcUser { nick: nick.clone(), server: server.to_owned() },
        (Peer::Server, Some(server)) => Address::IrcServer { server: server.to_owned() },
        (Peer::EmailAddress(address), None) => Address::Email { address: address.clone() },
        (Peer::EmailGroup(addresses), None) => Address::EmailGroup { addresses: addresses.clone() },
        _ => return None,
    };
    let bare = format!("{}@{gateway}", address::format_localpart(&address));
    Some(match (peer, sender) {
        (Peer::Channel(_), Some(nick)) => format!("{bare}/{nick}"),
        _ => bare,
    })
}

/// A one-to-one message from a network contact (`from`) to the user's bare JID; the
/// contact's name (`sender`: a mail's From display name) as its XEP-0172 nick, which
/// clients show for a contact not in the roster and offer when it is added.
pub fn chat_from(from: &str, user: &str, message: Message) -> Option<Element> {
    let body = match message.kind {
        MessageKind::Action => format!("/me {}", message.body),
        _ => message.body,
    };
    let to = user.parse::<BareJid>().ok()?;
    let mut stanza = xmpp_parsers::message::Message::new_with_type(MessageType::Chat, Some(to.into()));
    stanza.from = from.parse().ok();
    stanza.id = message.id.map(xmpp_parsers::message::Id);
    stanza.bodies.insert(Lang::new(), body);
    if let Some(subject) = message.subject {
        stanza.subjects.insert(Lang::new(), subject);
    }
    if let Some(thread) = message.thread {
        stanza.thread = Some(xmpp_parsers::message::Thread { parent: None, id: thread });
    }
    if let Some(name) = message.sender.filter(|name| !name.trim().is_empty()) {
        stanza.payloads.push(xmpp_parsers::nick::Nick(name).into());
    }
    Some(stanza.into())
}

/// The XEP-0172 nick a stanza carries (the writer's chosen name), if not blank.
fn nick_of(stanza: &Element) -> Option<String> {
    let nick = stanza.get_child("nick", xmpp_parsers::ns::NICK)?.text();
    let nick = nick.trim();
    (!nick.is_empty()).then(|| nick.to_owned())
}

/// The neutral form of a user's one-to-one message (`stanza`, whose body is `body`) to
/// `peer`: subject, thread and id carried along, and the user's XEP-0172 nick as
/// `sender` (the name a mail shows beside their address when they set none).
pub fn chat_to(stanza: &Element, peer: Peer, body: String) -> Message {
    let ns = crate::connection::NS_COMPONENT;
    Message {
        kind: MessageKind::Chat,
        peer,
        sender: nick_of(stanza),
        body,
        subject: stanza.get_child("subject", ns).map(Element::text),
        thread: stanza.get_child("thread", ns).map(Element::text),
        id: stanza.attr("id").map(str::to_owned),
        delay: None,
        links: Vec::new(),
    }
}

/// The XMPP error condition of a network failure.
pub fn condition_of(kind: FailureKind) -> DefinedCondition {
    match kind {
        FailureKind::Forbidden => DefinedCondition::Forbidden,
        FailureKind::NotAuthorized => DefinedCondition::NotAuthorized,
        FailureKind::NotFound => DefinedCondition::ItemNotFound,
        FailureKind::NotAcceptable => DefinedCondition::NotAcceptable,
        FailureKind::Unavailable => DefinedCondition::ServiceUnavailable,
        FailureKind::RegistrationRequired => DefinedCondition::RegistrationRequired,
        FailureKind::NotAllowed => DefinedCondition::NotAllowed,
        FailureKind::ResourceConstraint => DefinedCondition::ResourceConstraint,
    }
}

/// A store failure as the user sees it: no details, which stay in the log.
pub fn internal(error: StoreError) -> Refusal {
    tracing::warn!(%error, "store failure");
    (DefinedCondition::InternalServerError, "the gateway could not access its store".into())
}

/// Answers `stanza` with an error, when it is a kind that gets one.
pub async fn refuse(out: &Outbox, stanza: &Element, condition: DefinedCondition, text: &str) {
    debug!(name = stanza.name(), ?condition, %text, "refusing a stanza");
    if let Some(reply) = error_reply(stanza, condition, text) {
        out.send(reply).await;
    }
}

/// The `to` of a stanza as a JID, for the `from` of our reply.
pub fn stanza_to(stanza: &Element) -> Option<Jid> {
    stanza.attr("to").and_then(|t| t.parse().ok())
}

/// How many resources are remembered per conversation, and conversations per user: a
/// presence from a contact outside the roster only reaches full JIDs, so these are where
/// errors and QUITs go; older ones are forgotten first.
const CONVERSATIONS_PER_USER: usize = 256;

/// Which of a user's resources wrote to which contact: errors from a contact and its
/// departures go to those full JIDs (an error to a bare JID is dropped by the server,
/// RFC 6121 §8.5.2.1.1).
#[derive(Debug, Default)]
pub struct Conversations {
    /// User bare JID -> contact bare JID -> the user's full JIDs that wrote to it, in the
    /// order the contacts were last written to (the last is the most recent).
    by_user: HashMap<String, Vec<(String, BTreeSet<String>)>>,
}

impl Conversations {
    /// `full` (a resource of `user`) wrote to `contact`.
    pub fn wrote(&mut self, user: &str, contact: String, full: String) {
        let contacts = self.by_user.entry(user.to_owned()).or_default();
        let mut entry = match contacts.iter().position(|(c, _)| *c == contact) {
            Some(i) => contacts.remove(i),
            None => (contact, BTreeSet::new()),
        };
        entry.1.insert(full);
        contacts.push(entry);
        if contacts.len() > CONVERSATIONS_PER_USER {
            contacts.remove(0);
        }
    }

    /// The sender of `stanza` wrote to its `to`.
    pub fn note(&mut self, stanza: &Element, envelope: &Envelope) {
        if let Some(contact) = stanza_to(stanza) {
            self.wrote(&envelope.user, contact.to_bare().to_string(), envelope.from.to_string());
        }
    }

    /// The user's full JIDs that wrote to `contact`, else their bare JID.
    pub fn resources(&self, user: &str, contact: &str) -> BTreeSet<String> {
        self.by_user
            .get(user)
            .and_then(|contacts| contacts.iter().find(|(c, _)| c == contact))
            .map(|(_, resources)| resources.clone())
            .filter(|resources| !resources.is_empty())
            .unwrap_or_else(|| BTreeSet::from([user.to_owned()]))
    }

    /// Forgets the user (their last resource went offline, or they unregistered).
    pub fn forget_user(&mut self, user: &str) {
        self.by_user.remove(user);
    }

    /// Sends the error of a failed request about `from` to the resources that wrote to it.
    pub async fn send_failure(&self, out: &Outbox, user: &str, from: &str, id: Option<String>, kind: FailureKind, text: &str) {
        for to in self.resources(user, from) {
            let Ok(to) = to.parse::<Jid>() else { continue };
            let mut stanza = xmpp_parsers::message::Message::new_with_type(MessageType::Error, Some(to));
            stanza.from = from.parse().ok();
            stanza.id = id.clone().map(xmpp_parsers::message::Id);
            stanza.payloads.push(stanza::stanza_error(condition_of(kind), text).into());
            out.send(stanza.into()).await;
        }
    }
}

/// What the XMPP sides' unit tests share: a bridge whose sessions record the commands
/// they get, a store in a temporary directory, and stanza helpers.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::{Arc, Mutex};

    use bridge_core::model::{Command, Credentials, NetworkId, SessionKey};
    use bridge_core::{Bridge, Commands, EventSink, Session};
    use minidom::Element;
    use tokio::sync::mpsc;

    use crate::sessions::Sessions;
    use crate::store::Store;

    /// A bridge for every network whose sessions record the commands they get.
    #[derive(Default)]
    pub struct Recorder {
        /// Each session started, in order, with its credentials.
        pub started: Mutex<Vec<(SessionKey, Credentials)>>,
        /// The sessions' ends of their command queues, in the same order.
        pub queues: Mutex<Vec<Commands>>,
    }

    impl Bridge for Recorder {
        fn serves(&self, _: &NetworkId) -> bool {
            true
        }
        fn start(&self, key: SessionKey, credentials: Credentials, _: EventSink) -> Box<dyn Session> {
            self.started.lock().unwrap().push((key, credentials));
            let (tx, rx) = bridge_core::command_queue();
            self.queues.lock().unwrap().push(rx);
            Box::new(tx)
        }
    }

    impl Recorder {
        /// How many sessions were started.
        pub fn started(&self) -> usize {
            self.started.lock().unwrap().len()
        }

        /// The commands session `index` got so far.
        pub fn commands(&self, index: usize) -> Vec<Command> {
            let mut queues = self.queues.lock().unwrap();
            std::iter::from_fn(|| queues[index].try_recv()).collect()
        }

        /// Session `index` ends on its own (its task is gone).
        pub fn end(&self, index: usize) {
            self.queues.lock().unwrap()[index].close();
            while self.queues.lock().unwrap()[index].try_recv().is_some() {}
        }
    }

    /// A store in a fresh temporary directory (kept alive by the returned guard).
    pub fn store() -> (Store, tempfile::TempDir) {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(&tmp.path().join("db"), &tmp.path().join("key")).unwrap();
        (store, tmp)
    }

    /// Sessions served by `recorder`.
    pub fn sessions(recorder: &Arc<Recorder>) -> Sessions {
        let (events, _) = mpsc::channel(8);
        Sessions::new(vec![recorder.clone()], events)
    }

    /// Parses a stanza written in the component namespace.
    pub fn stanza(xml: &str) -> Element {
        let (name, rest) = xml.trim_start_matches('<').split_once(' ').unwrap();
        format!("<{name} xmlns='jabber:component:accept' {rest}").parse().unwrap()
    }

    /// Every stanza waiting in the outbox.
    pub fn drain(rx: &mut crate::writer::TestReceiver) -> Vec<Element> {
        std::iter::from_fn(|| rx.try_recv().ok()).collect()
    }

    /// The MUC status codes of a presence.
    pub fn codes(stanza: &Element) -> Vec<String> {
        let ns = "http://jabber.org/protocol/muc#user";
        stanza
            .get_child("x", ns)
            .map(|x| x.children().filter(|c| c.name() == "status").filter_map(|c| c.attr("code")).map(str::to_owned).collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn a_contacts_name_travels_as_an_xep_0172_nick_both_ways() {
        let message = |sender: Option<&str>| Message {
            peer: Peer::EmailAddress("bob@example.org".into()),
            sender: sender.map(str::to_owned),
            kind: MessageKind::Chat,
            body: "hi".into(),
            subject: None,
            thread: None,
            id: None,
            delay: None,
            links: Vec::new(),
        };
        let stanza = chat_from("bob\\40example.org@gw", "u@h", message(Some("Bob Dylan"))).unwrap();
        assert_eq!(nick_of(&stanza).as_deref(), Some("Bob Dylan"), "{}", String::from_utf8_lossy(&crate::xml_stream::to_bytes(&stanza)));
        for blank in [None, Some(""), Some("  ")] {
            assert!(!chat_from("b@gw", "u@h", message(blank)).unwrap().has_child("nick", xmpp_parsers::ns::NICK));
        }
        let from_user: Element = "<message xmlns='jabber:component:accept' to='b@gw' type='chat'><body>x</body>\
            <nick xmlns='http://jabber.org/protocol/nick'> Alice L. </nick></message>"
            .parse()
            .unwrap();
        assert_eq!(chat_to(&from_user, Peer::EmailAddress("b@x".into()), "x".into()).sender.as_deref(), Some("Alice L."));
        let without: Element = "<message xmlns='jabber:component:accept' to='b@gw'><body>x</body></message>".parse().unwrap();
        assert_eq!(chat_to(&without, Peer::EmailAddress("b@x".into()), "x".into()).sender, None);
    }

    #[test]
    fn email_needs_registration_irc_does_not() {
        assert_eq!(credentials_for(None, &NetworkId::Irc { server: "x".into() }), Ok(Credentials::Anonymous));
        assert!(credentials_for(None, &NetworkId::Email).unwrap_err().contains("register"));
    }

    #[test]
    fn conversations_go_to_the_resources_that_wrote_else_the_bare_jid() {
        let mut conversations = Conversations::default();
        conversations.wrote("u@h", "bob%irc@gw".into(), "u@h/phone".into());
        conversations.wrote("u@h", "bob%irc@gw".into(), "u@h/laptop".into());
        assert_eq!(conversations.resources("u@h", "bob%irc@gw").len(), 2);
        assert_eq!(conversations.resources("u@h", "carol%irc@gw"), BTreeSet::from(["u@h".to_owned()]));
        conversations.forget_user("u@h");
        assert_eq!(conversations.resources("u@h", "bob%irc@gw"), BTreeSet::from(["u@h".to_owned()]));
    }

    #[test]
    fn conversations_are_bounded_per_user_oldest_first() {
        let mut conversations = Conversations::default();
        for i in 0..=CONVERSATIONS_PER_USER {
            conversations.wrote("u@h", format!("c{i}@gw"), "u@h/r".into());
        }
        assert_eq!(conversations.resources("u@h", "c0@gw"), BTreeSet::from(["u@h".to_owned()]), "the oldest is forgotten");
        assert!(conversations.resources("u@h", &format!("c{CONVERSATIONS_PER_USER}@gw")).contains("u@h/r"));
    }

    #[test]
    fn targets_map_to_networks() {
        assert_eq!(network_of(&Address::Gateway), None);
        assert_eq!(network_of(&Address::Email { address: "a@b".into() }), Some(NetworkId::Email));
        assert_eq!(network_of(&Address::IrcServer { server: "s".into() }), Some(NetworkId::Irc { server: "s".into() }));
    }
}
