//! The XMPP side of IRC: channels as MUC rooms, IRC users as contacts.
//!
//! Owns the rooms (`muc::Rooms`: which of a user's resources are in which room under
//! which nick) and is the only code that changes them; owns the IRC sessions; builds the
//! room stanzas. Grouped as biboumi's Bridge: "from XMPP to IRC" (stanzas from the
//! router), then "from IRC to XMPP" (session events).

use std::collections::{BTreeSet, HashMap, HashSet};

use async_trait::async_trait;
use bridge_core::model::{Availability, CaseMapping, Command, Departure, Event, FailureKind, Message, MessageKind, NetworkId, Occupant, Peer, SessionKey, Typing, UserId};
use bridge_core::model::{ChannelInfo, ChannelListing, Reply};
use minidom::Element;
use tracing::{debug, info, warn};
use xmpp_parsers::jid::Jid;
use xmpp_parsers::message::Lang;
use xmpp_parsers::muc::user::Status;
use xmpp_parsers::presence::{Presence, Type as PresenceType};
use xmpp_parsers::stanza_error::DefinedCondition;

use crate::address::{self, Address};
use crate::archive::{Archive, Conversation, Direction, Entry};
use crate::config::Reactions;
use crate::connection::NS_COMPONENT;
use crate::disco::{self, Refusal};
use crate::extensions::{self, Outgoing, Said};
use crate::muc::{self, room_key, Room, RoomKeyRef, Rooms};
use crate::roster::{self, Contact, Roster};
use crate::sessions::Sessions;
use crate::side::{self, peer_jid, refuse, stanza_to, Conversations, Envelope, NetworkSide, SavedRoom};
use crate::stanza;
use crate::store::{Store, UserRecord};
use crate::writer::Outbox;

/// The XMPP side of every IRC network.
pub struct IrcSide {
    /// Our domain, the domain of every room and contact JID.
    gateway: String,
    /// Stanzas to the server, through the single writer.
    out: Outbox,
    /// Where a new session's credentials come from.
    store: Store,
    /// The live IRC sessions, one per (user, server).
    sessions: Sessions,
    /// IRC channels as rooms: which resources are in which room. Changed here only.
    rooms: Rooms,
    /// Which resources wrote to which IRC user: their errors and QUITs go there.
    conversations: Conversations,
    /// Which networks users may reach, and how much of IRC one user may use.
    policy: IrcPolicy,
    /// How each network compares names (default rfc1459 until a session there says): a
    /// property of the server, so one entry per network, kept while a session is there.
    mappings: HashMap<NetworkId, CaseMapping>,
    /// Where every channel line and private message is kept (XEP-0313), and the ids the
    /// live copies carry.
    archive: Archive,
    /// The last room epoch given out (`Room::archive_epoch`).
    epochs: u64,
    /// Sessions whose server echoes the user's messages (IRCv3 `echo-message`): their
    /// rooms' reflections are those echoes, with the text as the server took it.
    echoing: HashSet<SessionKey>,
    /// Messages of the user's the gateway reflected itself although their session echoes
    /// (corrections, replies, reactions, links: the reflection keeps the XMPP markup the
    /// echo would lose), by (user, XMPP id): their echoes are dropped.
    reflected: HashSet<(UserId, String)>,
    /// The user's last message in each room (by archive key) and private conversation (by
    /// contact JID), for XEP-0308 corrections.
    said: HashMap<(UserId, String), Said>,
    /// Private messages whose senders asked for a XEP-0184 receipt, by (user, XMPP id),
    /// with the contact JID the receipt comes from, until the server takes them.
    receipts: HashMap<(UserId, String), String>,
    /// Puts the IRC users a user talks with privately into their roster (none in unit
    /// tests).
    roster: Option<Roster>,
}

/// Entries [`IrcSide`]'s per-message maps (`reflected`, `receipts`) hold at most: a server
/// that never answers costs this much, then they start again.
const MOST_PENDING: usize = 10_000;

/// Children of a user's room message that its reflection keeps (the markup clients need to
/// show a correction, reply, reaction or link as one), by namespace.
const REFLECTED_MARKUP: [&str; 5] = [extensions::NS_CORRECT, extensions::NS_REPLY, extensions::NS_FALLBACK, extensions::NS_REACTIONS, extensions::NS_OOB];

/// Whether `child` of a user's room message goes into its reflection: the markup above,
/// and the client's XEP-0359 origin-id (never a stanza-id: only the room gives those).
fn reflected(child: &Element) -> bool {
    REFLECTED_MARKUP.contains(&child.ns().as_str()) || child.is("origin-id", "urn:xmpp:sid:0")
}

impl IrcSide {
    /// The IRC side, its sessions started by the IRC bridge in `sessions`.
    pub fn new(gateway: &str, out: Outbox, store: Store, sessions: Sessions, policy: IrcPolicy, archive: Archive) -> Self {
        IrcSide {
            gateway: gateway.to_owned(),
            out,
            store,
            sessions,
            rooms: Rooms::default(),
            conversations: Conversations::default(),
            mappings: HashMap::new(),
            policy,
            archive,
            epochs: 0,
            echoing: HashSet::new(),
            reflected: HashSet::new(),
            said: HashMap::new(),
            receipts: HashMap::new(),
            roster: None,
        }
    }

    /// The same side, offering every IRC user the user talks with privately to their
    /// roster.
    #[must_use]
    pub fn with_roster(self, roster: Roster) -> Self {
        IrcSide { roster: Some(roster), ..self }
    }

    /// Offers `nick` (whose JID is `jid`) to `user`'s roster, once.
    async fn offer_contact(&self, user: &str, jid: &str, nick: &str) {
        if let Some(roster) = &self.roster {
            roster.contact(user, Contact { jid: jid.to_owned(), name: Some(nick.to_owned()), group: roster::GROUP_IRC }).await;
        }
    }

    /// A new room epoch (see `Room::archive_epoch`).
    fn next_epoch(&mut self) -> u64 {
        self.epochs += 1;
        self.epochs
    }

    /// The stored settings of `user`, to tell which of their channels are always on
    /// (none when they cannot be read: the channels are left).
    fn settings(&self, user: &UserId) -> Option<UserRecord> {
        self.store.user(&user.0).unwrap_or_else(|error| {
            warn!(user = %user.0, %error, "cannot read whether channels are always on; leaving them");
            None
        })
    }

    /// Whether `user` keeps `channel` on `network` always on (their stored settings).
    fn is_persistent(&self, user: &UserId, network: &NetworkId, channel: &str) -> bool {
        let NetworkId::Irc { server } = network else { return false };
        self.store.is_persistent(&user.0, server, channel).unwrap_or_else(|error| {
            warn!(user = %user.0, %error, "cannot read whether a channel is always on; leaving it");
            false
        })
    }

    /// Archives a line of `user`'s and gives its id, for the live copies' stanza-id
    /// (`None` when the archive is off).
    async fn archive(&self, user: &UserId, conversation: Conversation, direction: Direction, who: &str, body: &str) -> Option<String> {
        let id = self.archive.next_id()?;
        let entry = Entry { id, user: user.0.clone(), conversation, direction, who: who.to_owned(), body: body.to_owned() };
        self.archive.append(entry).await;
        Some(crate::mam::id_text(id))
    }

    /// How the network of `session` compares names, as a session there last said.
    fn mapping(&self, session: &SessionKey) -> CaseMapping {
        self.mappings.get(&session.network).copied().unwrap_or_default()
    }

    /// The key of `channel` for the user of `session` on its network, folded as that
    /// network folds names. Takes the session's key as events carry it: one lookup, no
    /// copy, on the path of every line a channel delivers.
    fn key<'a>(&self, session: &'a SessionKey, channel: &'a str) -> RoomKeyRef<'a> {
        RoomKeyRef::new(&session.user, &session.network, channel, self.mapping(session))
    }

    async fn send_all(&self, stanzas: Vec<Element>) {
        for stanza in stanzas {
            self.out.send(stanza).await;
        }
    }

    /// Hands a command to the user's session on `network` (see `side::hand_to_session`),
    /// where the network policy allows it: every way a user can reach an IRC network
    /// comes through here, before any connection.
    fn hand_to_session(&mut self, user: &UserId, network: NetworkId, command: Command) -> Result<(), Refusal> {
        let key = SessionKey { user: user.clone(), network };
        let policy = &self.policy;
        side::hand_to_session_if(&mut self.sessions, &self.store, key, command, |sessions, key| policy.may_start(sessions, key))
    }

    // ---------------------------------------------------------------------------------
    // From XMPP to IRC
    // ---------------------------------------------------------------------------------

    /// Joining, leaving, changing nick in, or updating presence in a room.
    async fn room_presence(&mut self, stanza: &Element, envelope: &Envelope, channel: &str, server: &str, kind: &str) {
        let network = NetworkId::Irc { server: server.to_owned() };
        let user = envelope.user_id();
        let session = SessionKey { user: user.clone(), network: network.clone() };
        let mapping = self.mapping(&session);
        let key = room_key(&user, &network, channel, mapping);
        let full = envelope.from.to_string();
        match kind {
            "available" => {
                let Some(nick) = envelope.resource.as_deref() else {
                    let text = "join a room with a nick: #chan%irc.example.org@gateway/nick";
                    return refuse(&self.out, stanza, DefinedCondition::JidMalformed, text).await;
                };
                if let Err(error) = address::parse_occupant_nick(nick) {
                    return refuse(&self.out, stanza, DefinedCondition::JidMalformed, &error.to_string()).await;
                }
                let join = Command::Join {
                    channel: channel.to_owned(),
                    nick: nick.to_owned(),
                    password: muc_password(stanza).map(bridge_core::Secret::new),
                };
                if self.rooms.get(&key).is_none() && self.rooms.count_of(&user) >= self.policy.channels_per_user {
                    let most = self.policy.channels_per_user;
                    let text = format!("you are in {most} IRC channels, the most this gateway allows per user: leave one first");
                    return refuse(&self.out, stanza, DefinedCondition::ResourceConstraint, &text).await;
                }
                let history = muc::history_request(stanza, crate::archive::now_micros()).filter(|_| self.archive.is_enabled());
                let epoch = self.next_epoch();
                let command = match self.rooms.get_mut(&key) {
                    None => {
                        let jid = address::room_jid(&envelope.target, &self.gateway);
                        let mut room = Room::new(jid, channel.to_owned(), full.clone(), nick.to_owned());
                        room.archive_key = crate::archive::room_key(server, channel);
                        room.archive_epoch = epoch;
                        room.mapping = mapping;
                        room.key = muc_password(stanza).map(bridge_core::Secret::new);
                        room.history.extend(history.map(|h| (full, h)));
                        self.rooms.insert(key.clone(), room);
                        Some(join)
                    }
                    Some(room) if room.resources.contains(&full) => {
                        (!room.is_me(nick)).then(|| Command::ChangeNick { nick: nick.to_owned() })
                    }
                    // Another resource enters: the session reports the room again (its
                    // roster is the only one), and this resource gets the entry then.
                    Some(room) => {
                        let jid = address::room_jid(&envelope.target, &self.gateway);
                        if jid != room.jid {
                            room.aliases.insert(full.clone(), jid);
                        }
                        room.history.extend(history.map(|h| (full.clone(), h)));
                        room.resources.insert(full);
                        room.joined.then_some(join)
                    }
                };
                if let Some(command) = command {
                    let first = matches!(command, Command::Join { .. }) && self.rooms.get(&key).is_some_and(|r| r.resources.len() == 1);
                    if let Err((condition, text)) = self.hand_to_session(&user, network, command) {
                        if first {
                            self.rooms.remove(&key);
                        }
                        return refuse(&self.out, stanza, condition, &text).await;
                    }
                }
                if let Some((availability, status)) = availability_of(stanza) {
                    self.sessions.tell_irc_sessions(&user, &Command::SetAvailability { availability, status });
                }
            }
            "unavailable" => {
                let Some(room) = self.rooms.get_mut(&key) else { return };
                if !room.resources.remove(&full) {
                    return;
                }
                let goodbye = muc::departure_presence(&room.occupant_jid(&full, room.nick()), &full, &room.me, &[Status::SelfPresence], None, None);
                room.aliases.remove(&full);
                room.history.retain(|(r, _)| *r != full);
                let emptied = room.resources.is_empty();
                self.out.send(goodbye).await;
                // An always-on channel stays joined (and archived) for nobody.
                if emptied && !self.is_persistent(&user, &network, channel) {
                    self.rooms.remove(&key);
                    let reason = stanza.get_child("status", NS_COMPONENT).map(Element::text);
                    let session = SessionKey { user, network };
                    self.sessions.tell(&session, Command::Leave { channel: channel.to_owned(), reason });
                }
            }
            _ => {}
        }
    }

    /// A group chat message or a subject change from one of the user's resources.
    async fn room_message(&mut self, stanza: &Element, envelope: &Envelope, channel: &str, server: &str) {
        let session = SessionKey { user: envelope.user_id(), network: NetworkId::Irc { server: server.to_owned() } };
        let key = self.key(&session, channel);
        let full = envelope.from.to_string();
        let Some(room) = self.rooms.get(&key).filter(|r| (r.joined || r.rejoining) && r.resources.contains(&full)) else {
            let text = "you are not in this room: join it first";
            return refuse(&self.out, stanza, DefinedCondition::NotAcceptable, text).await;
        };
        if let Some(refusal) = stanza.get_child("body", NS_COMPONENT).and_then(|body| self.policy.too_long(&body.text())) {
            return refuse(&self.out, stanza, DefinedCondition::PolicyViolation, &refusal).await;
        }
        let said_key = (session.user.clone(), room.archive_key.clone());
        let id = stanza.attr("id").map(str::to_owned);
        let markup: Vec<Element> = stanza.children().filter(|child| reflected(child)).cloned().collect();
        let (body, kind) = match extensions::irc_text(stanza, self.said.get(&said_key), true) {
            Outgoing::Nothing => {
                if let Some(typing) = extensions::chat_state(stanza) {
                    let command = Command::Typing { peer: Peer::Channel(room.channel.clone()), typing };
                    return self.sessions.tell(&session, command);
                }
                let Some(topic) = stanza.get_child("subject", NS_COMPONENT).map(Element::text) else { return };
                let command = Command::SetTopic { channel: room.channel.clone(), topic };
                return self.room_command(stanza, session, command).await;
            }
            Outgoing::Unchanged => return self.reflect(&session, channel, None, &markup, id.as_deref(), stanza).await,
            Outgoing::Reaction { to, emojis } => {
                if emojis.is_empty() || self.policy.reactions == Reactions::Off {
                    // Other resources still see it; IRC gets nothing.
                    return self.reflect(&session, channel, None, &markup, id.as_deref(), stanza).await;
                }
                let to = self.reacted_to(&session.user, Conversation::Room(said_key.1.clone()), &to).await;
                (extensions::reaction_text(&emojis, to.as_ref().map(|(who, body)| (who.as_str(), body.as_str()))), MessageKind::Action)
            }
            Outgoing::Text(text) => {
                if let Some(id) = &id {
                    // A correction keeps pointing at the first message's id.
                    let first = stanza.get_child("replace", extensions::NS_CORRECT).and_then(|r| r.attr("id")).unwrap_or(id);
                    let said = Said { id: first.to_owned(), body: stanza.get_child("body", NS_COMPONENT).map(Element::text).unwrap_or_default() };
                    self.said.insert(said_key, said);
                }
                let plain = markup.iter().all(|child| child.name() == "origin-id");
                if plain && self.echoing.contains(&session) {
                    // The server's echo is the reflection.
                    let channel = self.rooms.get(&key).map(|r| r.channel.clone()).unwrap_or_default();
                    let message = Message { peer: Peer::Channel(channel), sender: None, kind: MessageKind::Group, body: text, subject: None, thread: None, id, delay: None, links: Vec::new() };
                    return self.room_command(stanza, session, Command::Send(message)).await;
                }
                (text, MessageKind::Group)
            }
        };
        self.reflect(&session, channel, Some(&body), &markup, id.as_deref(), stanza).await;
        let Some(room) = self.rooms.get(&self.key(&session, channel)) else { return };
        let message = Message { peer: Peer::Channel(room.channel.clone()), sender: None, kind, body, subject: None, thread: None, id, delay: None, links: Vec::new() };
        self.room_command(stanza, session, Command::Send(message)).await;
    }

    /// Reflects a user's room message to every resource in the room (IRC does not, or its
    /// echo would lose the markup): the XMPP body with `markup`, archived as `irc_text`
    /// (what IRC got; `None`: nothing went to IRC, nothing is archived).
    async fn reflect(&mut self, session: &SessionKey, channel: &str, irc_text: Option<&str>, markup: &[Element], id: Option<&str>, stanza: &Element) {
        let key = self.key(session, channel);
        let Some(room) = self.rooms.get_mut(&key) else { return };
        let archived = match irc_text {
            // The nick as a field, borrowed beside the place (`nick()` would borrow the room).
            Some(text) => self.archive.room_line(&mut room.archive_place, &session.user.0, &room.archive_key, room.archive_epoch, &room.me.nick, text).await.map(crate::mam::id_text),
            None => None,
        };
        let room = &*room;
        let body = stanza.get_child("body", NS_COMPONENT).map(Element::text);
        let echoes: Vec<Element> = room
            .resources
            .iter()
            .map(|to| {
                let mut echo = match &body {
                    Some(body) => muc::groupchat(&room.occupant_jid(to, room.nick()), to, body, id, archived.as_deref()),
                    None => muc::groupchat_without_body(&room.occupant_jid(to, room.nick()), to, id),
                };
                for child in markup {
                    echo.append_child(child.clone());
                }
                echo
            })
            .collect();
        self.send_all(echoes).await;
        if let (Some(id), true) = (id, irc_text.is_some()) {
            self.expect_echo(session, id);
        }
    }

    /// The gateway reflected message `id` itself: where the server echoes, that echo is
    /// dropped, not sent as a second reflection.
    fn expect_echo(&mut self, session: &SessionKey, id: &str) {
        if !self.echoing.contains(session) {
            return;
        }
        if self.reflected.len() >= MOST_PENDING {
            self.reflected.clear();
        }
        self.reflected.insert((session.user.clone(), id.to_owned()));
    }

    /// Hands a room's command to the session, or refuses the stanza that asked for it.
    async fn room_command(&mut self, stanza: &Element, session: SessionKey, command: Command) {
        let SessionKey { user, network } = session;
        if let Err((condition, text)) = self.hand_to_session(&user, network, command) {
            refuse(&self.out, stanza, condition, &text).await;
        }
    }

    /// Forgets `user`'s last messages and pending receipts (gone offline, unregistered).
    fn forget_said(&mut self, user: &UserId) {
        self.said.retain(|(who, _), _| who != user);
        self.receipts.retain(|(who, _), _| who != user);
    }

    /// Who said what in the archived message a reaction points at (its archive id).
    async fn reacted_to(&self, user: &UserId, conversation: Conversation, id: &str) -> Option<(String, String)> {
        let id: u64 = id.trim().parse().ok()?;
        let query = crate::archive::Query { user: user.0.clone(), conversation, start: None, end: None, after: Some(id.checked_sub(1)?), before: None, max: 1 };
        let item = self.archive.query(query).await.ok()?.items.into_iter().next().filter(|item| item.id == id)?;
        Some((item.who, item.body))
    }

    /// A mediated invitation (XEP-0045 §7.8.2) from a resource in the room: an IRC user
    /// of the same network gets an IRC INVITE; anyone else on XMPP gets the invitation
    /// from the room, as a MUC service sends it.
    async fn invite(&mut self, stanza: &Element, envelope: &Envelope, channel: &str, server: &str) {
        let session = SessionKey { user: envelope.user_id(), network: NetworkId::Irc { server: server.to_owned() } };
        let full = envelope.from.to_string();
        let Some(room) = self.rooms.get(&self.key(&session, channel)).filter(|r| r.joined && r.resources.contains(&full)) else {
            return refuse(&self.out, stanza, DefinedCondition::NotAcceptable, "you are not in this room: join it first").await;
        };
        let (room_jid, room_channel) = (room.jid_for(&full).to_owned(), room.channel.clone());
        let invites: Vec<Element> = stanza.get_child("x", NS_MUC_USER).into_iter().flat_map(|x| x.children().filter(|c| c.is("invite", NS_MUC_USER)).cloned()).collect();
        let mut commands = Vec::new();
        let mut forwards = Vec::new();
        for invite in &invites {
            let reason = invite.get_child("reason", NS_MUC_USER).map(Element::text);
            let to = invite.attr("to").and_then(|to| to.parse::<Jid>().ok());
            let Some(to) = to else {
                return refuse(&self.out, stanza, DefinedCondition::JidMalformed, "an invitation needs to='a JID'").await;
            };
            if !to.domain().as_str().eq_ignore_ascii_case(&self.gateway) {
                forwards.push(invitation_from_room(&room_jid, &to.to_string(), &envelope.user, reason.as_deref()));
                continue;
            }
            match to.node().map(|n| address::parse_localpart(n.as_str())) {
                Some(Ok(Address::IrcUser { nick, server: theirs })) if theirs.eq_ignore_ascii_case(server) => {
                    commands.push(Command::Invite { channel: room_channel.clone(), nick });
                }
                _ => {
                    let text = format!("{to} is not a user of this room's IRC network ({server}): invite nick%{server}@{}", self.gateway);
                    return refuse(&self.out, stanza, DefinedCondition::NotAcceptable, &text).await;
                }
            }
        }
        self.send_all(forwards).await;
        for command in commands {
            if let Err((condition, text)) = self.hand_to_session(&session.user, session.network.clone(), command) {
                return refuse(&self.out, stanza, condition, &text).await;
            }
        }
    }

    /// Rooms whose session is gone: each resource that was in is told it is out (110 +
    /// 332, with why), each still joining gets the join's error.
    async fn close_rooms(&self, rooms: Vec<Room>, reason: &str) {
        for room in rooms {
            if room.joined {
                self.send_all(room.self_departures(&[Status::ServiceShutdown], Some(reason))).await;
            } else {
                self.send_all(join_errors(&room, DefinedCondition::ServiceUnavailable, reason)).await;
            }
        }
    }

    // ---------------------------------------------------------------------------------
    // From IRC to XMPP
    // ---------------------------------------------------------------------------------

    /// A channel line to every entered resource, or a private message from a nick or the
    /// server to the user.
    async fn network_message(&mut self, key: &SessionKey, server: &str, message: Message) {
        if let Peer::Channel(channel) = &message.peer {
            // The echo of a message the gateway reflected itself (`reflect`).
            if let Some(id) = &message.id {
                if self.reflected.remove(&(key.user.clone(), id.clone())) {
                    return;
                }
            }
            let room_key = self.key(key, channel);
            let Some(room) = self.rooms.get_mut(&room_key) else { return };
            let body = match message.kind {
                MessageKind::Action => format!("/me {}", message.body),
                _ => message.body,
            };
            let who = message.sender.as_deref().unwrap_or_default();
            // Lines played back by the server (history on join, with their time) are not
            // archived again: the archive keeps what the gateway was there for.
            let archived = match message.delay {
                None => self.archive.room_line(&mut room.archive_place, &key.user.0, &room.archive_key, room.archive_epoch, who, &body).await,
                Some(_) => None,
            };
            let room = &*room;
            let from = |to: &str| match &message.sender {
                Some(nick) => room.occupant_jid(to, nick),
                None => room.jid_for(to).to_owned(),
            };
            if let Some(stamp) = &message.delay {
                // Played back by the server: with its time.
                let stanzas = room.resources.entered().map(|to| {
                    let mut stanza = muc::groupchat(&from(to), to, &body, None, None);
                    stanza.append_child(muc::delay(room.jid_for(to), *stamp));
                    stanza
                });
                let stanzas = stanzas.collect();
                return self.send_all(stanzas).await;
            }
            // `id`: an echo of the user's own message (`echo-message`), which the
            // user's client matches to what it sent.
            let id = message.id.as_deref();
            // Serialised once for every resource; as an element (cleaned by the writer)
            // only when a character XML forbids is in it.
            let line = muc::GroupchatLine::new(&body, id, archived);
            for to in room.resources.entered() {
                let from = from(to);
                match line.as_ref().and_then(|line| line.stanza(&from, to)) {
                    Some(bytes) => self.out.send_encoded(bytes).await,
                    None => self.out.send(muc::groupchat(&from, to, &body, id, archived.map(crate::mam::id_text).as_deref())).await,
                }
            }
            return;
        }
        let Some(from) = peer_jid(&message.peer, Some(server), None, &self.gateway) else {
            return warn!(user = %key.user.0, "a session reported a message from an address we cannot form");
        };
        let body = match message.kind {
            MessageKind::Action => format!("/me {}", message.body),
            _ => message.body.clone(),
        };
        let delay = message.delay;
        // A person writing (not the server, not a service's notice): a contact.
        if let (Peer::Nick(nick), MessageKind::Chat | MessageKind::Action) = (&message.peer, &message.kind) {
            self.offer_contact(&key.user.0, &from, nick).await;
        }
        let archived = match delay {
            None => self.archive(&key.user, Conversation::private(&from), Direction::FromContact, &from, &body).await,
            Some(_) => None,
        };
        if let Some(mut stanza) = side::chat_from(&from, &key.user.0, message) {
            if let Some(time) = delay {
                stanza.append_child(muc::delay(&self.gateway, time));
            }
            if let Some(archived) = archived {
                stanza.append_child(crate::mam::stanza_id(&archived, &self.gateway));
            }
            self.out.send(stanza).await;
        }
    }

    /// A message to a room was not sent: an error from the room, with the message's id,
    /// to every resource in it (any of them may have sent it).
    async fn room_failure(&mut self, key: &SessionKey, channel: &str, id: Option<String>, kind: FailureKind, text: &str) {
        let Some(room) = self.rooms.get(&self.key(key, channel)) else { return };
        let condition = side::condition_of(kind);
        let errors: Vec<Element> = room
            .resources
            .iter()
            .map(|to| {
                let mut error = xmpp_parsers::message::Message::new_with_type(xmpp_parsers::message::MessageType::Error, to.parse::<Jid>().ok());
                error.from = room.jid_for(to).parse().ok();
                error.id = id.clone().map(xmpp_parsers::message::Id);
                error.payloads.push(crate::stanza::stanza_error(condition.clone(), text).into());
                error.into()
            })
            .collect();
        self.send_all(errors).await;
    }

    /// The session confirmed a join (or reported the room again for another resource):
    /// the resources that have not entered yet get the room's entry.
    async fn joined(&mut self, key: &SessionKey, channel: &str, nick: String, occupants: Vec<Occupant>, topic: Option<String>) {
        let Some(room) = self.rooms.get_mut(&self.key(key, channel)) else { return };
        room.joined = true;
        room.rejoining = false;
        room.given_nick(nick);
        if let Some(me) = occupants.iter().find(|o| room.is_me(&o.nick)) {
            // Its role and affiliation; the nick as the server gave it to us.
            let nick = std::mem::take(&mut room.me.nick);
            room.me = Occupant { nick, ..me.clone() };
        }
        let newcomers = room.resources.enter_all();
        let asked = std::mem::take(&mut room.history);
        // The history each newcomer asked for, read from the archive before its entry
        // (the router waits: no other stanza changes the room meanwhile).
        let conversation = Conversation::Room(room.archive_key.clone());
        let mut histories = HashMap::new();
        for (to, request) in asked.into_iter().filter(|(to, _)| newcomers.contains(to)) {
            let query = crate::archive::Query {
                user: key.user.0.clone(),
                conversation: conversation.clone(),
                start: request.since,
                end: None,
                after: None,
                before: Some(None),
                max: request.max,
            };
            match self.archive.query(query).await {
                Ok(page) => {
                    histories.insert(to, page.items);
                }
                Err(error) => warn!(user = %key.user.0, %error, "no history for a join: the archive failed"),
            }
        }
        let Some(room) = self.rooms.get(&self.key(key, channel)) else { return };
        for to in &newcomers {
            let history = histories.get(to).map_or(&[][..], Vec::as_slice);
            for stanza in room.entry_stanzas(to, &occupants, history, topic.as_deref()) {
                self.out.send(stanza).await;
            }
        }
    }

    async fn occupant_changed(&mut self, key: &SessionKey, channel: &str, occupant: Occupant) {
        let Some(room) = self.rooms.get_mut(&self.key(key, channel)) else { return };
        let me = room.is_me(&occupant.nick);
        if me {
            room.me = occupant.clone();
        }
        let codes: &[Status] = if me { &[Status::SelfPresence] } else { &[] };
        let stanzas = room.resources.entered().map(|to| muc::occupant_presence(&room.occupant_jid(to, &occupant.nick), to, &occupant, codes)).collect();
        self.send_all(stanzas).await;
    }

    async fn left(&mut self, key: &SessionKey, channel: &str, occupant: Occupant, departure: Departure, reason: Option<String>) {
        let room_key = self.key(key, channel);
        let Some(room) = self.rooms.get(&room_key) else { return };
        let me = room.is_me(&occupant.nick);
        let mut codes = Vec::new();
        if me {
            codes.push(Status::SelfPresence);
        }
        if let Departure::Kicked { .. } = departure {
            codes.push(Status::Kicked);
        }
        let stanzas = room
            .resources
            .entered()
            .map(|to| muc::departure_presence(&room.occupant_jid(to, &occupant.nick), to, &occupant, &codes, None, reason.as_deref()))
            .collect();
        if me {
            self.rooms.remove(&room_key);
        }
        self.send_all(stanzas).await;
    }

    async fn nick_changed(&mut self, key: &SessionKey, channel: &str, old: &str, occupant: Occupant) {
        let Some(room) = self.rooms.get_mut(&self.key(key, channel)) else { return };
        let me = room.is_me(old);
        let codes: &[Status] = if me { &[Status::NewNick, Status::SelfPresence] } else { &[Status::NewNick] };
        let before = Occupant { nick: old.to_owned(), ..occupant.clone() };
        let mut stanzas: Vec<Element> = room
            .resources
            .entered()
            .map(|to| muc::departure_presence(&room.occupant_jid(to, old), to, &before, codes, Some(&occupant.nick), None))
            .collect();
        if me {
            room.renamed(occupant.clone());
        }
        let back_codes: &[Status] = if me { &[Status::SelfPresence] } else { &[] };
        stanzas.extend(room.resources.entered().map(|to| muc::occupant_presence(&room.occupant_jid(to, &occupant.nick), to, &occupant, back_codes)));
        self.send_all(stanzas).await;
    }

    async fn topic(&mut self, key: &SessionKey, channel: &str, topic: String, by: Option<String>) {
        let Some(room) = self.rooms.get(&self.key(key, channel)) else { return };
        let from = |to: &str| by.as_ref().map_or_else(|| room.jid_for(to).to_owned(), |nick| room.occupant_jid(to, nick));
        let stanzas = room.resources.entered().map(|to| muc::subject_message(&from(to), to, &topic)).collect();
        self.send_all(stanzas).await;
    }

    /// The connection dropped; the session reconnects and rejoins. Each entered resource
    /// is out until the next `Joined`.
    async fn disconnected(&mut self, key: &SessionKey, channels: Vec<String>, reason: &str) {
        let mut stanzas = Vec::new();
        for channel in channels {
            self.epochs += 1;
            let (epoch, room_key) = (self.epochs, self.key(key, &channel));
            let Some(room) = self.rooms.get_mut(&room_key) else { continue };
            stanzas.extend(room.self_departures(&[Status::ServiceShutdown], Some(reason)));
            // Lines said until the rejoin are not the user's.
            room.archive_epoch = epoch;
            room.joined = false;
            room.resources.forget_entries();
        }
        self.send_all(stanzas).await;
    }

    async fn peer_quit(&mut self, key: &SessionKey, server: &str, nick: String, reason: Option<String>) {
        let Some(from) = peer_jid(&Peer::Nick(nick), Some(server), None, &self.gateway) else { return };
        let mut targets = self.conversations.resources(&key.user.0, &from);
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

    /// An IRC INVITE: a XEP-0249 direct invitation to the room, from the inviter, with a
    /// body for clients that do not show those.
    async fn invited(&mut self, key: &SessionKey, server: &str, channel: &str, by: Option<String>) {
        let peer = by.as_ref().map_or(Peer::Server, |nick| Peer::Nick(nick.clone()));
        let (Some(from), Some(room)) = (peer_jid(&peer, Some(server), None, &self.gateway), peer_jid(&Peer::Channel(channel.to_owned()), Some(server), None, &self.gateway)) else {
            return;
        };
        let who = by.as_deref().unwrap_or(server);
        self.out.send(direct_invitation(&from, &key.user.0, &room, &format!("{who} invites you to {channel} on {server}"))).await;
    }

    /// The network told how it compares names: rooms are keyed that way from now on.
    fn case_mapping(&mut self, key: &SessionKey, mapping: CaseMapping) {
        if self.mapping(key) != mapping {
            self.rooms.rekey(&key.network, mapping);
            self.mappings.insert(key.network.clone(), mapping);
        }
    }

    /// The session ended on its own: commands it did not take start a new one; if none
    /// runs, the user's rooms on that network are closed and they are told why.
    /// Someone typing (IRCv3 `+typing`): a chat state from the contact, or in a room from
    /// the occupant to every resource in it.
    async fn typing(&mut self, key: &SessionKey, server: &str, peer: Peer, sender: Option<String>, typing: Typing) {
        let state = extensions::chat_state_element(typing);
        if let (Peer::Channel(channel), Some(nick)) = (&peer, &sender) {
            let Some(room) = self.rooms.get(&self.key(key, channel)) else { return };
            let stanzas = room
                .resources
                .entered()
                .map(|to| {
                    let mut stanza = muc::groupchat_without_body(&room.occupant_jid(to, nick), to, None);
                    stanza.append_child(state.clone());
                    stanza
                })
                .collect();
            return self.send_all(stanzas).await;
        }
        let Some(contact) = peer_jid(&peer, Some(server), None, &self.gateway) else { return };
        for to in self.conversations.resources(&key.user.0, &contact) {
            let stanza = Element::builder("message", NS_COMPONENT)
                .attr(rxml::xml_ncname!("type").into(), "chat")
                .attr(rxml::xml_ncname!("from").into(), contact.as_str())
                .attr(rxml::xml_ncname!("to").into(), to.as_str())
                .append(state.clone())
                .build();
            self.out.send(stanza).await;
        }
    }

    /// The server took a private message: its receipt, if its sender asked for one.
    async fn accepted(&mut self, key: &SessionKey, id: String) {
        let Some(contact) = self.receipts.remove(&(key.user.clone(), id.clone())) else { return };
        for to in self.conversations.resources(&key.user.0, &contact) {
            self.out.send(extensions::receipt(&contact, &to, &id)).await;
        }
    }

    async fn ended(&mut self, key: SessionKey, reason: String, unhandled: Vec<Command>) {
        info!(user = %key.user.0, network = ?key.network, %reason, "session ended");
        self.sessions.forget(&key);
        self.echoing.remove(&key);
        for command in unhandled {
            if let Err((_, text)) = self.hand_to_session(&key.user, key.network.clone(), command) {
                warn!(user = %key.user.0, %text, "a command the ended session did not take is lost");
            }
        }
        if !self.sessions.is_live(&key) {
            let rooms = self.rooms.take(&key.user, Some(&key.network));
            if !self.sessions.any_on(&key.network) {
                self.mappings.remove(&key.network);
            }
            self.close_rooms(rooms, &reason).await;
        }
    }
}

/// Which IRC networks users may reach, and how much of IRC one user may use
/// (`[irc] networks_only` and `[limits]`).
#[derive(Debug, Clone)]
pub struct IrcPolicy {
    /// The only networks users may reach, by host in lower case; `None`: any public one.
    pub allowed: Option<BTreeSet<String>>,
    /// IRC networks one user may be connected to at once.
    pub networks_per_user: usize,
    /// Channels one user may be in at once.
    pub channels_per_user: usize,
    /// Bytes of one message body to IRC.
    pub message_bytes: usize,
    /// What reactions become on IRC (`[irc] reactions`).
    pub reactions: Reactions,
}

impl IrcPolicy {
    /// The policy of `config`.
    #[must_use]
    pub fn of(config: &crate::config::Config) -> Self {
        IrcPolicy { reactions: config.irc.reactions, ..IrcPolicy::of_limits(config.irc.allowed_networks(), &config.limits) }
    }

    /// Whether the session of `key` may start: its network is one users may reach, and
    /// its user is not at the limit of networks.
    fn may_start(&self, sessions: &Sessions, key: &SessionKey) -> Result<(), Refusal> {
        if let (NetworkId::Irc { server }, Some(allowed)) = (&key.network, &self.allowed) {
            if !allowed.contains(&server.to_ascii_lowercase()) {
                let networks: Vec<&str> = allowed.iter().map(String::as_str).collect();
                let text = format!("this gateway only connects to the IRC networks it is configured for ({}), not to {server}", networks.join(", "));
                return Err((DefinedCondition::NotAllowed, text));
            }
        }
        let most = self.networks_per_user;
        if sessions.irc_sessions_of(&key.user) >= most {
            let text = format!("you are connected to {most} IRC networks, the most this gateway allows per user: leave the rooms of one first");
            return Err((DefinedCondition::ResourceConstraint, text));
        }
        Ok(())
    }

    /// Why `body` is too long for IRC, if it is.
    fn too_long(&self, body: &str) -> Option<String> {
        (body.len() > self.message_bytes)
            .then(|| format!("a message to IRC may have at most {} bytes; this one has {}", self.message_bytes, body.len()))
    }
}

impl Default for IrcPolicy {
    /// The defaults of `[limits]`, any public network.
    fn default() -> Self {
        IrcPolicy::of_limits(None, &crate::config::LimitsConfig::default())
    }
}

impl IrcPolicy {
    /// `allowed` networks, and the IRC part of `limits`.
    fn of_limits(allowed: Option<BTreeSet<String>>, limits: &crate::config::LimitsConfig) -> Self {
        IrcPolicy {
            allowed,
            networks_per_user: limits.irc_networks_per_user,
            channels_per_user: limits.channels_per_user,
            message_bytes: limits.message_bytes_irc,
            reactions: Reactions::default(),
        }
    }
}

#[async_trait(?Send)]
impl NetworkSide for IrcSide {
    fn serves(&self, network: &NetworkId) -> bool {
        matches!(network, NetworkId::Irc { .. })
    }

    async fn presence(&mut self, stanza: &Element, envelope: &Envelope, kind: &str) {
        match (&envelope.target, kind) {
            (Address::IrcChannel { channel, server }, _) => {
                let (channel, server) = (channel.clone(), server.clone());
                self.room_presence(stanza, envelope, &channel, &server, kind).await;
            }
            (Address::IrcUser { .. } | Address::IrcServer { .. }, "subscribe") => {
                // IRC users cannot answer subscription requests: the gateway does.
                let contact = stanza_to(stanza).map(|j| j.to_bare().to_string()).unwrap_or_default();
                let (Ok(to), Ok(from)) = (envelope.user.parse::<Jid>(), contact.parse::<Jid>()) else { return };
                self.out.send(Presence::subscribed().with_to(to).with_from(from).into()).await;
            }
            _ => debug!(kind, "presence to an IRC address ignored"),
        }
    }

    async fn message(&mut self, stanza: &Element, envelope: &Envelope, kind: &str) {
        if let (Address::IrcChannel { channel, server }, "groupchat") = (&envelope.target, kind) {
            let (channel, server) = (channel.clone(), server.clone());
            return self.room_message(stanza, envelope, &channel, &server).await;
        }
        if let (Address::IrcChannel { channel, server }, Some(x)) = (&envelope.target, stanza.get_child("x", NS_MUC_USER)) {
            if x.has_child("invite", NS_MUC_USER) {
                let (channel, server) = (channel.clone(), server.clone());
                return self.invite(stanza, envelope, &channel, &server).await;
            }
        }
        if let Some(refusal) = stanza.get_child("body", NS_COMPONENT).and_then(|body| self.policy.too_long(&body.text())) {
            return refuse(&self.out, stanza, DefinedCondition::PolicyViolation, &refusal).await;
        }
        let (peer, server) = match (&envelope.target, envelope.resource.as_deref()) {
            // A private message through the room goes to the nick itself, checked as a
            // join's nick is (a resource may hold a space, which would split the line).
            (Address::IrcChannel { server, .. }, Some(nick)) => match address::parse_occupant_nick(nick) {
                Ok(nick) => (Peer::Nick(nick), server),
                Err(error) => return refuse(&self.out, stanza, DefinedCondition::JidMalformed, &error.to_string()).await,
            },
            (Address::IrcChannel { .. }, None) => {
                let text = "send group messages with type='groupchat' after joining the room";
                return refuse(&self.out, stanza, DefinedCondition::NotAcceptable, text).await;
            }
            (Address::IrcUser { nick, server }, _) => (Peer::Nick(nick.clone()), server),
            (Address::IrcServer { server }, _) => (Peer::Server, server),
            _ => return,
        };
        let network = NetworkId::Irc { server: server.clone() };
        let contact = peer_jid(&peer, Some(server), None, &self.gateway);
        let user = envelope.user_id();
        let said_key = (user.clone(), contact.clone().unwrap_or_default().to_lowercase());
        // Chat states (typing, where the network carries it), markers and receipts
        // without a body: nothing else to carry, and no session started for them.
        let (body, action) = match extensions::irc_text(stanza, self.said.get(&said_key), false) {
            Outgoing::Nothing => {
                if let (Some(typing), Peer::Nick(_)) = (extensions::chat_state(stanza), &peer) {
                    self.sessions.tell(&SessionKey { user, network }, Command::Typing { peer, typing });
                }
                return;
            }
            Outgoing::Unchanged => return,
            Outgoing::Reaction { emojis, .. } if emojis.is_empty() || self.policy.reactions == Reactions::Off => return,
            Outgoing::Reaction { to, emojis } => {
                // The archive keeps the contact as the gateway spells it (nick case kept).
                let conversation = Conversation::private(contact.as_deref().unwrap_or_default());
                let to = self.reacted_to(&user, conversation, &to).await.map(|(_, said)| (String::new(), said));
                (extensions::reaction_text(&emojis, to.as_ref().map(|(who, body)| (who.as_str(), body.as_str()))), true)
            }
            Outgoing::Text(text) => {
                if let Some(id) = stanza.attr("id") {
                    let first = stanza.get_child("replace", extensions::NS_CORRECT).and_then(|r| r.attr("id")).unwrap_or(id);
                    let said = Said { id: first.to_owned(), body: stanza.get_child("body", NS_COMPONENT).map(Element::text).unwrap_or_default() };
                    self.said.insert(said_key.clone(), said);
                }
                (text, false)
            }
        };
        let mut message = side::chat_to(stanza, peer, body);
        if action {
            message.kind = MessageKind::Action;
        }
        self.conversations.note(stanza, envelope);
        let body = message.body.clone();
        let receipt = (extensions::wants_receipt(stanza), message.id.clone(), contact.clone());
        match self.hand_to_session(&user, network, Command::Send(message)) {
            Err((condition, text)) => refuse(&self.out, stanza, condition, &text).await,
            Ok(()) => {
                if let (Address::IrcUser { nick, .. }, Some(contact)) = (&envelope.target, &contact) {
                    self.offer_contact(&envelope.user, contact, nick).await;
                }
                if let (true, Some(id), Some(contact)) = receipt {
                    if self.receipts.len() >= MOST_PENDING {
                        self.receipts.clear();
                    }
                    self.receipts.insert((user.clone(), id), contact);
                }
                if let Some(contact) = contact {
                    self.archive(&user, Conversation::private(&contact), Direction::ToContact, &contact, &body).await;
                }
            }
        }
    }

    async fn event(&mut self, key: SessionKey, event: Event) {
        let NetworkId::Irc { server } = &key.network else { return };
        match event {
            Event::Message(message) => self.network_message(&key, server, message).await,
            Event::Failure { peer: Some(Peer::Channel(channel)), id, kind, text } => self.room_failure(&key, &channel, id, kind, &text).await,
            Event::Failure { peer, id, kind, text } => {
                let from = peer.and_then(|p| peer_jid(&p, Some(server.as_str()), None, &self.gateway)).unwrap_or_else(|| self.gateway.clone());
                self.conversations.send_failure(&self.out, &key.user.0, &from, id, kind, &text).await;
            }
            Event::Joined { channel, nick, occupants, topic } => self.joined(&key, &channel, nick, occupants, topic).await,
            Event::JoinFailed { channel, kind, text } => {
                let Some(room) = self.rooms.remove(&self.key(&key, &channel)) else { return };
                self.send_all(join_errors(&room, side::condition_of(kind), &text)).await;
            }
            Event::Occupant { channel, occupant } => self.occupant_changed(&key, &channel, occupant).await,
            Event::Left { channel, occupant, departure, reason } => self.left(&key, &channel, occupant, departure, reason).await,
            Event::NickChanged { channel, old, occupant } => self.nick_changed(&key, &channel, &old, occupant).await,
            Event::Topic { channel, topic, by } => self.topic(&key, &channel, topic, by).await,
            Event::Disconnected { channels, reason } => self.disconnected(&key, channels, &reason).await,
            Event::PeerQuit { nick, reason } => self.peer_quit(&key, server, nick, reason).await,
            Event::Invited { channel, by } => self.invited(&key, server, &channel, by).await,
            Event::CaseMapping(mapping) => self.case_mapping(&key, mapping),
            Event::Echoes(true) => {
                self.echoing.insert(key);
            }
            Event::Echoes(false) => {
                self.echoing.remove(&key);
            }
            // The contact the receipt comes from was kept with the request.
            Event::Accepted { id, .. } => self.accepted(&key, id).await,
            Event::Typing { peer, sender, typing } => self.typing(&key, server, peer, sender, typing).await,
            Event::Ended { reason, unhandled } => self.ended(key, reason, unhandled).await,
            Event::Attachment { .. } | Event::NetworkStatus { .. } | Event::WhenRouted(_) | Event::Correspondents(_) => {
                debug!("an IRC session reported an email event");
            }
        }
    }

    async fn resource_offline(&mut self, user: &UserId, full: &str, last: bool) {
        if last {
            // Always-on channels stay joined for nobody, with their sessions; the other
            // rooms are left, and sessions without an always-on channel end.
            self.conversations.forget_user(&user.0);
            self.forget_said(user);
            let mut leaves = Vec::new();
            let mut kept = std::collections::HashSet::new();
            let settings = self.settings(user);
            for (key, mut room) in self.rooms.take_keyed(user, None) {
                if always_on(settings.as_ref(), &key.1, &room.channel) {
                    room.forget_resources();
                    kept.insert(key.1.clone());
                    self.rooms.insert(key, room);
                } else {
                    leaves.push((key.1, room.channel));
                }
            }
            self.sessions.end_user_irc_except(user, &kept, "user went offline");
            for (network, channel) in leaves.into_iter().filter(|(network, _)| kept.contains(network)) {
                self.sessions.tell(&SessionKey { user: user.clone(), network }, Command::Leave { channel, reason: None });
            }
            return;
        }
        let emptied = self.rooms.remove_resource(user, full);
        let settings = if emptied.is_empty() { None } else { self.settings(user) };
        for (key, mut room) in emptied {
            if always_on(settings.as_ref(), &key.1, &room.channel) {
                room.forget_resources();
                self.rooms.insert(key, room);
                continue;
            }
            let session = SessionKey { user: user.clone(), network: key.1 };
            self.sessions.tell(&session, Command::Leave { channel: room.channel, reason: None });
        }
    }

    async fn persistence_changed(&mut self, user: &UserId, network: &NetworkId, channel: &str, persistent: bool) {
        let session = SessionKey { user: user.clone(), network: network.clone() };
        let key = self.key(&session, channel).to_owned_key();
        if persistent || self.rooms.get(&key).is_none_or(|room| !room.resources.is_empty()) {
            return;
        }
        // Turned off while no client is in it: leave it now.
        if let Some(room) = self.rooms.remove(&key) {
            self.sessions.tell(&session, Command::Leave { channel: room.channel, reason: None });
        }
    }

    /// The gateway is (re)connected: the user's always-on channels that are not joined yet
    /// (after a start) are joined for nobody, so they are archived until a client comes.
    async fn connected(&mut self, user: &UserId, record: &UserRecord) {
        for persistent in &record.persistent_channels {
            let network = NetworkId::Irc { server: persistent.server.clone() };
            let session = SessionKey { user: user.clone(), network: network.clone() };
            let key = self.key(&session, &persistent.channel).to_owned_key();
            if self.rooms.get(&key).is_some() {
                continue;
            }
            let nick = record.irc.as_ref().map_or_else(|| user.0.split('@').next().unwrap_or_default().to_owned(), |irc| irc.nick.clone());
            let address = Address::IrcChannel { channel: persistent.channel.clone(), server: persistent.server.clone() };
            let jid = address::room_jid(&address, &self.gateway);
            let mut room = Room::always_on(jid, persistent.channel.clone(), nick.clone());
            room.archive_key = crate::archive::room_key(&persistent.server, &persistent.channel);
            room.archive_epoch = self.next_epoch();
            room.mapping = self.mapping(&session);
            self.rooms.insert(key.clone(), room);
            let join = Command::Join { channel: persistent.channel.clone(), nick, password: None };
            if let Err((_, text)) = self.hand_to_session(user, network, join) {
                warn!(user = %user.0, channel = %persistent.channel, %text, "an always-on channel cannot be joined");
                self.rooms.remove(&key);
            }
        }
    }

    fn availability(&mut self, user: &UserId, availability: Availability, status: Option<String>) {
        self.sessions.tell_irc_sessions(user, &Command::SetAvailability { availability, status });
    }

    async fn registration_changed(&mut self, user: &UserId, record: Option<&UserRecord>) {
        let reason = if record.is_some() { "registration changed" } else { "unregistered" };
        self.sessions.end_user(user, reason);
        if record.is_none() {
            self.conversations.forget_user(&user.0);
            self.forget_said(user);
            let rooms = self.rooms.take(user, None);
            return self.close_rooms(rooms, "you unregistered from the gateway").await;
        }
        // The rooms stay: each is joined again by a session with the new credentials,
        // and the resources in it see a reconnection (out with 332, back in on Joined).
        let mut stanzas = Vec::new();
        let mut joins = Vec::new();
        for (network, room) in self.rooms.of_mut(user) {
            stanzas.extend(room.self_departures(&[Status::ServiceShutdown], Some("your registration changed; joining again")));
            self.epochs += 1;
            room.archive_epoch = self.epochs;
            room.joined = false;
            room.resources.forget_entries();
            joins.push((network.clone(), room.channel.clone(), room.requested_nick().to_owned(), room.key.clone()));
        }
        self.send_all(stanzas).await;
        for (network, channel, nick, password) in joins {
            let join = Command::Join { channel: channel.clone(), nick, password };
            if let Err((_, text)) = self.hand_to_session(user, network.clone(), join) {
                if let Some(room) = self.rooms.remove(&self.key(&SessionKey { user: user.clone(), network }, &channel)) {
                    self.close_rooms(vec![room], &text).await;
                }
            }
        }
    }

    fn shutdown(&mut self, reason: &str) {
        self.sessions.end_all(reason);
    }

    fn self_ping(&self, envelope: &Envelope) -> Option<bool> {
        let (Address::IrcChannel { channel, server }, Some(nick)) = (&envelope.target, envelope.resource.as_deref()) else { return None };
        let session = SessionKey { user: envelope.user_id(), network: NetworkId::Irc { server: server.clone() } };
        let full = envelope.from.to_string();
        let joined = self.rooms.get(&self.key(&session, channel)).is_some_and(|room| {
            room.joined && room.resources.entered().any(|r| *r == full) && room.is_me(nick)
        });
        Some(joined)
    }

    /// A room the user is in is described by their session (modes, topic, occupants);
    /// a server's channels are listed by it. Others are answered as before: a room the
    /// user is not in by its static features and, for its items, an empty list
    /// (XEP-0045 §6.5 lets a semi-anonymous room keep its occupants to its occupants,
    /// and an empty list tells a stranger nothing, not even whether the channel exists).
    fn discover(&mut self, envelope: &Envelope, query: &Element, extra: disco::Features) -> Option<side::Discovery> {
        let items = query.ns() == disco::NS_DISCO_ITEMS;
        match &envelope.target {
            Address::IrcChannel { channel, server } => {
                let session = SessionKey { user: envelope.user_id(), network: NetworkId::Irc { server: server.clone() } };
                let channel = self.rooms.get(&self.key(&session, channel)).filter(|room| room.joined)?.channel.clone();
                let page = match items.then(|| disco::page_request(query)).transpose() {
                    Ok(page) => page,
                    Err(refusal) => return Some(Box::pin(async move { Err(refusal) })),
                };
                let (reply, answer) = Reply::new();
                self.sessions.tell(&session, Command::DescribeChannel { channel, nicks: items, reply });
                let room = format!("{}@{}", address::format_localpart(&envelope.target), self.gateway);
                Some(Box::pin(describe_room(envelope.target.clone(), room, page, extra, answer)))
            }
            Address::IrcServer { server } if items => {
                // Browsing a server's channels is how a user finds one to join, often
                // before joining any: so the query opens the user's own session there
                // (their credentials, the network policy and limits, as a join would)
                // rather than answering "join a channel first". It lingers while the
                // listing is kept, for the pages that follow.
                let request = disco::page_request(query);
                let (reply, answer) = Reply::new();
                let listed = request.and_then(|request| {
                    self.hand_to_session(&envelope.user_id(), NetworkId::Irc { server: server.clone() }, Command::ListChannels { reply })?;
                    Ok(request)
                });
                Some(Box::pin(list_channels(server.clone(), self.gateway.clone(), listed, answer)))
            }
            _ => None,
        }
    }

    fn active_users(&self) -> Vec<UserId> {
        self.sessions.users().cloned().collect()
    }

    fn user_activity(&self, user: &UserId) -> Vec<String> {
        self.sessions
            .networks_of(user)
            .into_iter()
            .map(|network| {
                let NetworkId::Irc { server } = network else { return format!("{network:?}") };
                let mut channels: Vec<&str> =
                    self.rooms.of(user).filter(|(n, _)| *n == network).map(|(_, room)| room.channel.as_str()).collect();
                channels.sort_unstable();
                format!("IRC {server}: {}", if channels.is_empty() { "no channel".to_owned() } else { channels.join(", ") })
            })
            .collect()
    }

    async fn disconnect_user(&mut self, user: &UserId, reason: &str) {
        let rooms = self.rooms.take(user, None);
        self.close_rooms(rooms, reason).await;
        self.conversations.forget_user(&user.0);
        self.sessions.end_user(user, reason);
    }

    fn sessions(&self) -> usize {
        self.sessions.len()
    }

    fn rooms(&self) -> usize {
        self.rooms.len()
    }

    fn saved_rooms(&self) -> Vec<(UserId, Vec<SavedRoom>)> {
        let mut by_user: HashMap<UserId, Vec<SavedRoom>> = HashMap::new();
        for (user, network, room) in self.rooms.all() {
            if room.resources.is_empty() {
                continue; // always on for nobody: the user's settings bring it back
            }
            let NetworkId::Irc { server } = network else { continue };
            by_user.entry(user.clone()).or_default().push(SavedRoom {
                network: server.clone(),
                channel: room.channel.clone(),
                nick: room.requested_nick().to_owned(),
                resources: room.resources.iter().cloned().collect(),
            });
        }
        by_user.into_iter().collect()
    }

    async fn restore_rooms(&mut self, user: &UserId, rooms: Vec<SavedRoom>) {
        for saved in rooms {
            let mut resources = saved.resources.into_iter();
            let Some(first) = resources.next() else { continue };
            let network = NetworkId::Irc { server: saved.network.clone() };
            let session = SessionKey { user: user.clone(), network: network.clone() };
            let key = self.key(&session, &saved.channel).to_owned_key();
            if self.rooms.get(&key).is_some() {
                continue;
            }
            let address = Address::IrcChannel { channel: saved.channel.clone(), server: saved.network.clone() };
            let jid = address::room_jid(&address, &self.gateway);
            let mut room = Room::new(jid, saved.channel.clone(), first, saved.nick.clone());
            for resource in resources {
                room.resources.insert(resource);
            }
            room.archive_key = crate::archive::room_key(&saved.network, &saved.channel);
            room.archive_epoch = self.next_epoch();
            room.mapping = self.mapping(&session);
            room.rejoining = true;
            self.rooms.insert(key.clone(), room);
            let join = Command::Join { channel: saved.channel.clone(), nick: saved.nick, password: None };
            match self.hand_to_session(user, network, join) {
                Err((_, text)) => {
                    warn!(user = %user.0, channel = %saved.channel, %text, "a room taken over cannot be joined again");
                    if let Some(room) = self.rooms.remove(&key) {
                        self.close_rooms(vec![room], &text).await;
                    }
                }
                Ok(()) => {
                    // What the server wrote into the last instance's connection as it died
                    // is gone without a trace (XEP-0114 has no acknowledgements): the room
                    // says so, so that nothing is lost silently.
                    let notices = self.rooms.get(&key).map(|room| room.resources.iter().map(|to| muc::groupchat(room.jid_for(to), to, TAKEOVER_NOTICE, None, None)).collect());
                    self.send_all(notices.unwrap_or_default()).await;
                }
            }
        }
    }

    async fn release_user(&mut self, user: &UserId) {
        // No goodbye to the user's resources: the new owner joins the rooms again and
        // they see their own presence there, not a departure.
        drop(self.rooms.take(user, None));
        self.conversations.forget_user(&user.0);
        self.forget_said(user);
        self.sessions.end_user(user, "moving to another gateway instance");
    }
}

/// Told in each room of a user taken over from another instance (`restore_rooms`).
pub const TAKEOVER_NOTICE: &str = "This room is served by another instance of the gateway now: the one before stopped. \
    What you sent here in the seconds before may not have reached IRC; check your last messages.";

/// Whether `settings` keep `channel` on `network` always on.
fn always_on(settings: Option<&UserRecord>, network: &NetworkId, channel: &str) -> bool {
    matches!((settings, network), (Some(record), NetworkId::Irc { server }) if record.is_persistent(server, channel))
}

/// How long discovery of a room waits for the session's answer (it answers at once when
/// connected); past it, the room is described as if the user were not in it.
const DESCRIBE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// How long discovery of a server waits for its channel list: a session to connect and
/// log in (30 s at most), then the server's LIST (15 s at most).
const LIST_WAIT: std::time::Duration = std::time::Duration::from_secs(50);

/// disco#info (`page` is `None`) or a page of the items of a room the user is in, once
/// the session said what it knows (if it did not in time: as for a stranger).
async fn describe_room(
    address: Address,
    room: String,
    page: Option<disco::PageRequest>,
    extra: disco::Features,
    answer: tokio::sync::oneshot::Receiver<Option<ChannelInfo>>,
) -> Result<Element, Refusal> {
    let live = tokio::time::timeout(DESCRIBE_WAIT, answer).await.ok().and_then(Result::ok).flatten();
    match (live, page) {
        (Some(live), None) => disco::live_room_info(&address, extra, &live).map(Into::into),
        (None, None) => disco::info(&address, None, extra).map(Into::into),
        (live, Some(page)) => Ok(disco::occupant_items(&room, live.map(|l| l.nicks).unwrap_or_default(), &page).into()),
    }
}

/// disco#items of an IRC server, once the user's session listed its channels.
async fn list_channels(
    server: String,
    gateway: String,
    request: Result<disco::PageRequest, Refusal>,
    answer: tokio::sync::oneshot::Receiver<std::sync::Arc<ChannelListing>>,
) -> Result<Element, Refusal> {
    let request = request?;
    let timeout = || (DefinedCondition::RemoteServerTimeout, format!("the IRC server {server} did not list its channels in time"));
    let listing = match tokio::time::timeout(LIST_WAIT, answer).await {
        Err(_) => return Err(timeout()),
        Ok(Err(_)) => return Err((DefinedCondition::ServiceUnavailable, format!("the connection to the IRC server {server} ended before it listed its channels"))),
        Ok(Ok(listing)) => listing,
    };
    if let (Some(text), true) = (&listing.refused, listing.channels.is_empty()) {
        return Err((DefinedCondition::ServiceUnavailable, format!("the IRC server {server} will not list its channels now: {text}")));
    }
    if !listing.complete && listing.channels.is_empty() {
        return Err(timeout());
    }
    Ok(disco::channel_items(&listing, &request, &server, &gateway).into())
}

/// XEP-0045's `muc#user`.
const NS_MUC_USER: &str = "http://jabber.org/protocol/muc#user";
/// XEP-0249.
const NS_CONFERENCE: &str = "jabber:x:conference";

/// A XEP-0249 direct invitation from `from` to `to` into `room`, `text` its reason and body.
fn direct_invitation(from: &str, to: &str, room: &str, text: &str) -> Element {
    use rxml::xml_ncname;
    let ns = xmpp_parsers::ns::DEFAULT_NS;
    Element::builder("message", ns)
        .attr(xml_ncname!("from").into(), from)
        .attr(xml_ncname!("to").into(), to)
        .append(Element::builder("body", ns).append(format!("{text}: xmpp:{room}?join")))
        .append(Element::builder("x", NS_CONFERENCE).attr(xml_ncname!("jid").into(), room).attr(xml_ncname!("reason").into(), text))
        .build()
}

/// A mediated invitation (XEP-0045 §7.8.2) sent by the room `room` to `to` on behalf of
/// `inviter`.
fn invitation_from_room(room: &str, to: &str, inviter: &str, reason: Option<&str>) -> Element {
    use rxml::xml_ncname;
    let ns = xmpp_parsers::ns::DEFAULT_NS;
    let mut invite = Element::builder("invite", NS_MUC_USER).attr(xml_ncname!("from").into(), inviter);
    if let Some(reason) = reason {
        invite = invite.append(Element::builder("reason", NS_MUC_USER).append(reason));
    }
    Element::builder("message", ns)
        .attr(xml_ncname!("from").into(), room)
        .attr(xml_ncname!("to").into(), to)
        .append(Element::builder("body", ns).append(format!("{inviter} invites you to {room}: xmpp:{room}?join")))
        .append(Element::builder("x", NS_MUC_USER).append(invite))
        .build()
}

/// The error presences of a join that failed, from the nick the user asked for.
fn join_errors(room: &Room, condition: DefinedCondition, text: &str) -> Vec<Element> {
    room.resources
        .iter()
        .filter_map(|to| {
            let mut presence = Presence::new(PresenceType::Error).with_to(to.parse::<Jid>().ok()?);
            presence.from = room.occupant_jid(to, room.requested_nick()).parse().ok();
            presence.payloads.push(stanza::stanza_error(condition.clone(), text).into());
            Some(presence.into())
        })
        .collect()
}

/// The availability a presence announces, when it says something IRC can show (AWAY).
pub fn availability_of(stanza: &Element) -> Option<(Availability, Option<String>)> {
    let status = stanza.get_child("status", NS_COMPONENT).map(Element::text).filter(|s| !s.is_empty());
    let availability = match stanza.get_child("show", NS_COMPONENT).map(Element::text).as_deref() {
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bridge_core::model::{Affiliation, Role};

    use super::*;
    use crate::side::testing::{codes, drain, sessions, stanza, store, Recorder};

    const ROOM: &str = "#c%irc.x@gw";

    /// The IRC side with a recording bridge; its outbox; the temporary store's guard.
    struct Fixture {
        side: IrcSide,
        out: crate::writer::TestReceiver,
        bridge: Arc<Recorder>,
        _tmp: tempfile::TempDir,
    }

    fn fixture() -> Fixture {
        let (outbox, out) = Outbox::for_tests();
        let (store, tmp) = store();
        let bridge = Arc::new(Recorder::default());
        let side = IrcSide::new("gw", outbox, store, sessions(&bridge), IrcPolicy::default(), Archive::default());
        Fixture { side, out, bridge, _tmp: tmp }
    }

    fn envelope(stanza: &Element) -> Envelope {
        let from: Jid = stanza.attr("from").unwrap().parse().unwrap();
        let (local, _, resource) = crate::router::split_jid(stanza.attr("to").unwrap());
        let target = address::parse_localpart(local.unwrap()).unwrap();
        Envelope { user: from.to_bare().to_string(), from, target, resource: resource.map(str::to_owned) }
    }

    fn occupant(nick: &str, role: Role, affiliation: Affiliation) -> Occupant {
        Occupant::new(nick.into(), role, affiliation)
    }

    fn key() -> SessionKey {
        SessionKey { user: UserId("u@h".into()), network: NetworkId::Irc { server: "irc.x".into() } }
    }

    fn joined(nick: &str) -> Event {
        Event::Joined {
            channel: "#c".into(),
            nick: nick.into(),
            occupants: vec![occupant(nick, Role::Participant, Affiliation::None), occupant("bob", Role::Moderator, Affiliation::Admin)],
            topic: Some("welcome".into()),
        }
    }

    impl Fixture {
        async fn join(&mut self, resource: &str, nick: &str) {
            let join = stanza(&format!("<presence from='u@h/{resource}' to='{ROOM}/{nick}'/>"));
            self.side.presence(&join, &envelope(&join), "available").await;
        }

        async fn leave(&mut self, resource: &str, nick: &str) {
            let leave = stanza(&format!("<presence from='u@h/{resource}' to='{ROOM}/{nick}' type='unavailable'/>"));
            self.side.presence(&leave, &envelope(&leave), "unavailable").await;
        }

        async fn say(&mut self, resource: &str, body: &str) {
            let message = stanza(&format!("<message from='u@h/{resource}' to='{ROOM}' type='groupchat' id='m'><body>{body}</body></message>"));
            self.side.message(&message, &envelope(&message), "groupchat").await;
        }

        /// `u@h/a` in `#c` as `alice`, with bob: the entry already drained.
        async fn in_room() -> Fixture {
            let mut f = fixture();
            f.join("a", "alice").await;
            f.side.event(key(), joined("alice")).await;
            drain(&mut f.out);
            f.bridge.commands(0);
            f
        }
    }

    fn to(stanzas: &[Element]) -> Vec<&str> {
        stanzas.iter().filter_map(|s| s.attr("to")).collect()
    }

    #[tokio::test]
    async fn a_join_starts_a_session_and_the_entry_follows_the_servers_confirmation() {
        let mut f = fixture();
        f.join("a", "alice").await;
        assert_eq!(f.bridge.started(), 1);
        assert!(matches!(f.bridge.commands(0).first(), Some(Command::Join { channel, nick, .. }) if channel == "#c" && nick == "alice"));
        assert!(drain(&mut f.out).is_empty(), "nothing before IRC confirms");
        f.side.event(key(), joined("alice")).await;
        let entry = drain(&mut f.out);
        assert_eq!(entry.len(), 3, "bob, self, subject");
        assert_eq!(entry[0].attr("from"), Some("#c%irc.x@gw/bob"));
        assert_eq!(codes(&entry[1]), ["110"]);
        assert_eq!(entry[2].get_child("subject", NS_COMPONENT).map(Element::text).as_deref(), Some("welcome"));
        assert_eq!(f.side.rooms(), 1);
    }

    #[tokio::test]
    async fn saved_rooms_are_joined_again_elsewhere_and_their_messages_follow_the_join() {
        let f = Fixture::in_room().await;
        let saved = f.side.saved_rooms();
        assert_eq!(saved.len(), 1);
        let (user, rooms) = &saved[0];
        assert_eq!(user.0, "u@h");
        assert_eq!(rooms, &[SavedRoom { network: "irc.x".into(), channel: "#c".into(), nick: "alice".into(), resources: vec!["u@h/a".into()] }]);
        // Another instance restores them: the session joins, and the resource's message
        // goes after the JOIN without waiting for the confirmation.
        let mut other = fixture();
        other.side.restore_rooms(user, rooms.clone()).await;
        assert!(matches!(other.bridge.commands(0).first(), Some(Command::Join { channel, nick, .. }) if channel == "#c" && nick == "alice"));
        // The resource is told that what it sent as the last instance died may be lost.
        let told = drain(&mut other.out);
        assert!(
            told.iter().any(|s| s.attr("to") == Some("u@h/a") && s.attr("type") == Some("groupchat") && s.get_child("body", xmpp_parsers::ns::DEFAULT_NS).is_some_and(|b| b.text() == TAKEOVER_NOTICE)),
            "{told:?}"
        );
        other.say("a", "still here").await;
        assert!(drain(&mut other.out).iter().all(|s| s.attr("type") != Some("error")), "not refused");
        assert!(matches!(other.bridge.commands(0).last(), Some(Command::Send { .. })), "{:?}", other.bridge.commands(0));
        // Once joined, the resource gets the room's entry again.
        other.side.event(key(), joined("alice")).await;
        let entry = drain(&mut other.out);
        assert!(entry.iter().any(|s| codes(s) == ["110"]), "{entry:?}");
    }

    #[tokio::test]
    async fn a_released_user_leaves_no_room_and_no_word() {
        let mut f = Fixture::in_room().await;
        f.side.release_user(&UserId("u@h".into())).await;
        assert_eq!(f.side.rooms(), 0);
        assert!(drain(&mut f.out).is_empty(), "no departure: the new owner sends the entry");
    }

    #[tokio::test]
    async fn a_second_resource_gets_the_room_from_the_sessions_roster_and_only_it() {
        let mut f = Fixture::in_room().await;
        f.join("b", "alice").await;
        assert_eq!(f.bridge.started(), 1, "the same session");
        assert!(matches!(f.bridge.commands(0).first(), Some(Command::Join { .. })), "the session is asked to report the room again");
        assert!(drain(&mut f.out).is_empty());
        f.side.event(key(), joined("alice")).await;
        let entry = drain(&mut f.out);
        assert_eq!(to(&entry), ["u@h/b"; 3], "the first resource is not sent the entry twice");
        // From now on both get the channel.
        let line = Message { peer: Peer::Channel("#c".into()), sender: Some("bob".into()), kind: MessageKind::Group, body: "hi".into(), subject: None, thread: None, id: None, delay: None, links: Vec::new() };
        f.side.event(key(), Event::Message(line)).await;
        let mut got = to(&drain(&mut f.out)).into_iter().map(str::to_owned).collect::<Vec<_>>();
        got.sort();
        assert_eq!(got, ["u@h/a", "u@h/b"]);
    }

    #[tokio::test]
    async fn nick_changes_of_others_and_of_the_user() {
        let mut f = Fixture::in_room().await;
        let bobby = occupant("bobby", Role::Moderator, Affiliation::Admin);
        f.side.event(key(), Event::NickChanged { channel: "#c".into(), old: "bob".into(), occupant: bobby }).await;
        let stanzas = drain(&mut f.out);
        assert_eq!(stanzas.len(), 2);
        assert_eq!((stanzas[0].attr("from"), stanzas[0].attr("type")), (Some("#c%irc.x@gw/bob"), Some("unavailable")));
        assert_eq!(codes(&stanzas[0]), ["303"]);
        assert_eq!(stanzas[1].attr("from"), Some("#c%irc.x@gw/bobby"));

        let alicia = occupant("alicia", Role::Participant, Affiliation::None);
        f.side.event(key(), Event::NickChanged { channel: "#c".into(), old: "ALICE".into(), occupant: alicia }).await;
        let stanzas = drain(&mut f.out);
        assert_eq!(codes(&stanzas[0]), ["303", "110"]);
        assert_eq!(codes(&stanzas[1]), ["110"]);
        // The echo of the user's next message comes from the new nick.
        f.say("a", "hello").await;
        assert_eq!(drain(&mut f.out)[0].attr("from"), Some("#c%irc.x@gw/alicia"));
    }

    #[tokio::test]
    async fn a_kick_takes_the_user_out_and_messages_are_refused_after() {
        let mut f = Fixture::in_room().await;
        let me = occupant("alice", Role::Participant, Affiliation::None);
        let kick = Event::Left { channel: "#c".into(), occupant: me, departure: Departure::Kicked { by: "bob".into() }, reason: Some("behave".into()) };
        f.side.event(key(), kick).await;
        let stanzas = drain(&mut f.out);
        assert_eq!(codes(&stanzas[0]), ["110", "307"]);
        assert_eq!(f.side.rooms(), 0);
        f.say("a", "still here?").await;
        let refusal = drain(&mut f.out);
        assert_eq!(refusal[0].attr("type"), Some("error"));
        assert!(f.bridge.commands(0).is_empty(), "nothing reaches IRC");
    }

    #[tokio::test]
    async fn a_session_end_hands_unhandled_commands_to_a_new_session_else_closes_the_rooms() {
        let mut f = Fixture::in_room().await;
        f.bridge.end(0);
        let late = Command::Send(Message { peer: Peer::Channel("#c".into()), sender: None, kind: MessageKind::Group, body: "late".into(), subject: None, thread: None, id: None, delay: None, links: Vec::new() });
        f.side.event(key(), Event::Ended { reason: "lingered".into(), unhandled: vec![late.clone()] }).await;
        assert_eq!(f.bridge.started(), 2, "a new session takes the command");
        assert_eq!(f.bridge.commands(1), [late]);
        assert_eq!(f.side.rooms(), 1, "a session runs: the room stays");

        f.bridge.end(1);
        f.side.event(key(), Event::Ended { reason: "the server went away".into(), unhandled: Vec::new() }).await;
        assert_eq!(f.side.rooms(), 0);
        let told = drain(&mut f.out);
        assert_eq!(codes(&told[0]), ["110", "332"], "the user is told they are out");
        assert_eq!(told[0].get_child("status", NS_COMPONENT).map(Element::text).as_deref(), Some("the server went away"));
    }

    #[tokio::test]
    async fn leaving_and_joining_again_within_the_linger_reuses_the_session() {
        let mut f = Fixture::in_room().await;
        f.leave("a", "alice").await;
        assert!(matches!(&f.bridge.commands(0)[..], [Command::Leave { channel, .. }] if channel == "#c"));
        assert_eq!(codes(&drain(&mut f.out)[0]), ["110"]);
        f.join("a", "alice").await;
        assert_eq!(f.bridge.started(), 1, "the lingering session is reused");
        assert!(matches!(f.bridge.commands(0).first(), Some(Command::Join { .. })));
        f.side.event(key(), joined("alice")).await;
        assert_eq!(drain(&mut f.out).len(), 3, "the entry again");
    }

    #[tokio::test]
    async fn a_registration_change_rejoins_with_the_new_credentials_and_tells_the_client() {
        let mut f = Fixture::in_room().await;
        let record = UserRecord { irc: Some(crate::store::IrcAccount::new("alicia")), email: None, ..UserRecord::default()  };
        f.side.store.put_user("u@h", &record).await.unwrap();
        f.side.registration_changed(&UserId("u@h".into()), Some(&record)).await;
        assert!(matches!(&f.bridge.commands(0)[..], [Command::Shutdown { .. }]), "the old session ends");
        let told = drain(&mut f.out);
        assert_eq!(codes(&told[0]), ["110", "332"]);
        assert_eq!(f.bridge.started(), 2);
        assert!(matches!(&f.bridge.started.lock().unwrap()[1].1, bridge_core::model::Credentials::Irc { nick, .. } if nick == "alicia"));
        assert!(matches!(&f.bridge.commands(1)[..], [Command::Join { channel, .. }] if channel == "#c"));
        f.side.event(key(), joined("alicia")).await;
        let entry = drain(&mut f.out);
        assert_eq!(entry.len(), 3);
        assert_eq!(codes(&entry[1]), ["110", "210"], "the server's nick differs from the one asked");
    }

    #[tokio::test]
    async fn rooms_follow_the_networks_case_mapping() {
        let mut f = fixture();
        f.side.event(key(), Event::CaseMapping(CaseMapping::Ascii)).await;
        let first = stanza("<presence from='u@h/a' to='#Foo[%irc.x@gw/alice'/>");
        f.side.presence(&first, &envelope(&first), "available").await;
        let second = stanza("<presence from='u@h/b' to='#foo{%irc.x@gw/alice'/>");
        f.side.presence(&second, &envelope(&second), "available").await;
        assert_eq!(f.side.rooms(), 2, "two channels under ascii");
        f.side.event(key(), Event::CaseMapping(CaseMapping::Rfc1459)).await;
        assert_eq!(f.side.rooms(), 1, "one channel under rfc1459");
        let confirmed = Event::Joined { channel: "#FOO[".into(), nick: "alice".into(), occupants: Vec::new(), topic: None };
        f.side.event(key(), confirmed).await;
        let entry = drain(&mut f.out);
        let mut got = to(&entry).into_iter().map(str::to_owned).collect::<Vec<_>>();
        got.sort();
        got.dedup();
        assert_eq!(got, ["u@h/a", "u@h/b"], "both resources entered");
        for stanza in &entry {
            // Localparts are case-folded (as the XMPP server folds them too).
            let expected = if stanza.attr("to") == Some("u@h/a") { "#foo[%irc.x@gw" } else { "#foo{%irc.x@gw" };
            assert!(stanza.attr("from").unwrap().starts_with(expected), "each resource hears the room at the address it joined: {stanza:?}");
        }
    }

    /// The condition of the error in `stanza`.
    fn condition(stanza: &Element) -> Option<String> {
        let error = stanza.get_child("error", NS_COMPONENT)?;
        error.children().find(|c| c.name() != "text").map(|c| c.name().to_owned())
    }

    fn with_policy(policy: IrcPolicy) -> Fixture {
        let mut f = fixture();
        f.side.policy = policy;
        f
    }

    #[tokio::test]
    async fn a_user_past_the_channel_limit_is_refused_and_keeps_the_other_rooms() {
        let mut f = with_policy(IrcPolicy { channels_per_user: 1, ..IrcPolicy::default() });
        f.join("a", "alice").await;
        f.side.event(key(), joined("alice")).await;
        drain(&mut f.out);
        let second = stanza("<presence from='u@h/a' to='#d%irc.x@gw/alice'/>");
        f.side.presence(&second, &envelope(&second), "available").await;
        let answers = drain(&mut f.out);
        assert_eq!(answers.iter().map(condition).collect::<Vec<_>>(), [Some("resource-constraint".to_owned())], "{answers:?}");
        let commands = f.bridge.commands(0);
        assert_eq!(commands.iter().filter(|c| matches!(c, Command::Join { .. })).count(), 1, "only the first join reached IRC: {commands:?}");
        assert!(f.side.rooms.get(&(UserId("u@h".into()), NetworkId::Irc { server: "irc.x".into() }, "#c".to_owned())).is_some());
        // Joining the room one is in again is no new channel.
        f.join("b", "alice").await;
        assert!(drain(&mut f.out).iter().all(|e| condition(e).is_none()));
    }

    #[tokio::test]
    async fn a_user_past_the_network_limit_is_refused() {
        let mut f = with_policy(IrcPolicy { networks_per_user: 1, ..IrcPolicy::default() });
        f.join("a", "alice").await;
        let other = stanza("<presence from='u@h/a' to='#c%irc.y@gw/alice'/>");
        f.side.presence(&other, &envelope(&other), "available").await;
        let answers = drain(&mut f.out);
        assert_eq!(answers.iter().map(condition).collect::<Vec<_>>(), [Some("resource-constraint".to_owned())], "{answers:?}");
        assert_eq!(f.bridge.started.lock().unwrap().len(), 1, "no second connection");
        let message = stanza("<message from='u@h/a' to='bob%irc.y@gw' type='chat'><body>hi</body></message>");
        f.side.message(&message, &envelope(&message), "chat").await;
        assert_eq!(drain(&mut f.out).iter().map(condition).collect::<Vec<_>>(), [Some("resource-constraint".to_owned())]);
    }

    #[tokio::test]
    async fn a_message_too_long_for_irc_is_refused_whole() {
        let mut f = Fixture::in_room().await;
        f.side.policy.message_bytes = 10;
        f.say("a", "0123456789").await;
        assert_eq!(f.bridge.commands(0).len(), 1, "10 bytes are allowed");
        drain(&mut f.out);
        f.say("a", "0123456789!").await;
        let answers = drain(&mut f.out);
        assert_eq!(answers.iter().map(condition).collect::<Vec<_>>(), [Some("policy-violation".to_owned())], "no echo, the error only");
        assert!(f.bridge.commands(0).is_empty(), "nothing of it went to IRC");
    }

    #[test]
    fn invitations_read_back_as_xep_0249_and_xep_0045() {
        let direct = direct_invitation("bob%irc.x@gw", "u@h", "#c%irc.x@gw", "bob invites you to #c on irc.x");
        let x = direct.get_child("x", NS_CONFERENCE).unwrap();
        assert_eq!((x.attr("jid"), x.attr("reason")), (Some("#c%irc.x@gw"), Some("bob invites you to #c on irc.x")));
        assert!(direct.get_child("body", NS_COMPONENT).unwrap().text().ends_with("xmpp:#c%irc.x@gw?join"));
        let mediated = invitation_from_room("#c%irc.x@gw", "carol@h", "u@h", Some("come"));
        let muc_user = xmpp_parsers::muc::MucUser::try_from(mediated.get_child("x", NS_MUC_USER).unwrap().clone());
        assert!(muc_user.is_ok(), "{muc_user:?}");
        let invite = mediated.get_child("x", NS_MUC_USER).unwrap().get_child("invite", NS_MUC_USER).unwrap();
        assert_eq!((invite.attr("from"), invite.get_child("reason", NS_MUC_USER).map(Element::text)), (Some("u@h"), Some("come".to_owned())));
    }

    #[tokio::test]
    async fn a_mediated_invitation_to_an_irc_user_is_an_invite_and_to_another_network_is_refused() {
        let mut f = Fixture::in_room().await;
        drain(&mut f.out);
        let invite = stanza("<message from='u@h/a' to='#c%irc.x@gw'><x xmlns='http://jabber.org/protocol/muc#user'><invite to='bob%irc.x@gw'/></x></message>");
        f.side.message(&invite, &envelope(&invite), "normal").await;
        assert_eq!(f.bridge.commands(0), [Command::Invite { channel: "#c".into(), nick: "bob".into() }]);
        let elsewhere = stanza("<message from='u@h/a' to='#c%irc.x@gw'><x xmlns='http://jabber.org/protocol/muc#user'><invite to='bob%irc.y@gw'/></x></message>");
        f.side.message(&elsewhere, &envelope(&elsewhere), "normal").await;
        assert_eq!(drain(&mut f.out).iter().map(condition).collect::<Vec<_>>(), [Some("not-acceptable".to_owned())]);
        assert!(f.bridge.commands(0).is_empty());
    }

    #[tokio::test]
    async fn an_always_on_room_is_kept_for_nobody_rejoined_without_irc_and_left_once_turned_off() {
        let mut f = Fixture::in_room().await;
        f.side.store.put_user("u@h", &UserRecord::default()).await.unwrap();
        f.side.store.set_persistent("u@h", "irc.x", "#C", true).await.unwrap();
        let user = UserId("u@h".into());
        f.leave("a", "alice").await;
        f.side.resource_offline(&user, "u@h/a", true).await;
        drain(&mut f.out);
        assert!(f.bridge.commands(0).is_empty(), "no PART, no QUIT");
        assert_eq!(f.side.rooms(), 1, "kept for nobody");
        // A line meanwhile goes to nobody (and to the archive).
        let line = Message { peer: Peer::Channel("#c".into()), sender: Some("bob".into()), kind: MessageKind::Group, body: "hi".into(), subject: None, thread: None, id: None, delay: None, links: Vec::new() };
        f.side.event(key(), Event::Message(line)).await;
        assert!(drain(&mut f.out).is_empty());
        // Back: the session replays the room (no new session, a Join it answers itself).
        f.join("b", "alice").await;
        assert_eq!(f.bridge.started.lock().unwrap().len(), 1);
        assert!(matches!(f.bridge.commands(0).as_slice(), [Command::Join { .. }, ..]));
        // Turned off while nobody is in: left at once.
        f.leave("b", "alice").await;
        f.side.store.set_persistent("u@h", "irc.x", "#c", false).await.unwrap();
        f.side.persistence_changed(&user, &key().network, "#c", false).await;
        assert!(matches!(f.bridge.commands(0).as_slice(), [Command::Leave { .. }]));
        assert_eq!(f.side.rooms(), 0);
    }

    #[tokio::test]
    async fn discovery_asks_the_session_of_a_joined_room_and_lists_a_server_over_the_users_own_session() {
        let mut f = Fixture::in_room().await;
        let info = stanza(&format!("<iq from='u@h/a' to='{ROOM}' type='get' id='i'><query xmlns='{}'/></iq>", disco::NS_DISCO_INFO));
        let query = info.children().next().unwrap().clone();
        let answer = f.side.discover(&envelope(&info), &query, disco::Features::default()).expect("a joined room is described live");
        let Some(Command::DescribeChannel { channel, nicks: false, reply }) = f.bridge.commands(0).pop() else { panic!("no DescribeChannel") };
        assert_eq!(channel, "#c");
        reply.send(Some(ChannelInfo { name: "#c".into(), topic: Some("welcome".into()), moderated: true, keyed: false, occupants: 2, nicks: Vec::new() }));
        let payload = answer.await.unwrap();
        assert!(payload.children().any(|f| f.attr("var") == Some("muc_moderated")), "{payload:?}");
        assert!(payload.has_child("x", "jabber:x:data"));

        // Another user, not in the room: answered as before (static), no session asked.
        let stranger = stanza(&format!("<iq from='v@h/a' to='{ROOM}' type='get' id='i'><query xmlns='{}'/></iq>", disco::NS_DISCO_ITEMS));
        let query = stranger.children().next().unwrap().clone();
        assert!(f.side.discover(&envelope(&stranger), &query, disco::Features::default()).is_none());
        assert_eq!(f.bridge.started(), 1);

        // A server's channels: over the user's own session (one is started for v@h).
        let list = stanza(&format!("<iq from='v@h/a' to='irc.x@gw' type='get' id='l'><query xmlns='{}'/></iq>", disco::NS_DISCO_ITEMS));
        let query = list.children().next().unwrap().clone();
        let answer = f.side.discover(&envelope(&list), &query, disco::Features::default()).expect("a server lists its channels");
        assert_eq!(f.bridge.started(), 2);
        assert_eq!(f.bridge.started.lock().unwrap()[1].0.user, UserId("v@h".into()));
        let Some(Command::ListChannels { reply }) = f.bridge.commands(1).pop() else { panic!("no ListChannels") };
        reply.send(Arc::new(ChannelListing { channels: vec![bridge_core::model::ListedChannel { name: "#c".into(), users: 2, topic: String::new() }], complete: true, refused: None }));
        let payload = answer.await.unwrap();
        assert_eq!(payload.children().filter(|c| c.name() == "item").filter_map(|c| c.attr("jid")).collect::<Vec<_>>(), ["#c%irc.x@gw"]);

        // A session that ends without listing: a clear error, not silence.
        let answer = f.side.discover(&envelope(&list), &query, disco::Features::default()).unwrap();
        f.bridge.end(1);
        assert_eq!(answer.await.unwrap_err().0, DefinedCondition::ServiceUnavailable);
    }
}
