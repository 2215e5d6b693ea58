//! IRC channels served as MUC rooms (XEP-0045): which of the user's resources are in which
//! room under which nick, and the pure builders of room presences and messages.
//!
//! The IRC session knows the channel and holds its one roster; this module knows the XMPP
//! side of it. Only `irc_side.rs` changes room state.

use std::collections::HashMap;

use bridge_core::model::{Affiliation, CaseMapping, NetworkId, Occupant, Role, UserId};
use minidom::Element;
use xmpp_parsers::muc::user::Status;

/// A room as one user sees it. Its occupants and topic are not kept here: the IRC session
/// holds the one roster and topic of the channel and reports them in `Event::Joined`
/// (again when another resource of the user enters), so the two sides cannot disagree.
#[derive(Debug, Clone)]
pub struct Room {
    /// The room's bare JID, `#chan%server@gw`.
    pub jid: String,
    /// The channel name as the IRC side spells it.
    pub channel: String,
    /// The user's resources in the room (or joining it), and which of them were sent
    /// the room's entry since the IRC side last confirmed the join.
    pub resources: Resources,
    /// The nick the user asked for, when the server gave another (status 210 tells
    /// them; a rejoin asks for it again); `None` while it is the one in `me`.
    requested_nick: Option<Box<str>>,
    /// Whether the IRC side confirmed the join (else resources wait for it).
    pub joined: bool,
    /// Joined again after a takeover from another instance (`cluster`): the resources
    /// were in the room all along, so their messages go to the session (which sends them
    /// after its JOIN) instead of being refused until the join is confirmed.
    pub rejoining: bool,
    /// The user as an occupant: their nick in the room (asked for until joined, then as
    /// the server gave it), role and affiliation, for the presences about themselves.
    pub me: Occupant,
    /// How the network compares nicks (and channel names).
    pub mapping: CaseMapping,
    /// The channel key the room was joined with, for joining again (a registration
    /// change restarts the session).
    pub key: Option<bridge_core::Secret>,
    /// Resources that joined under another spelling of the channel (`#foo{` for `#Foo[`
    /// where the network folds them together): the room JID each used, which is where it
    /// hears the room from. Empty in practice, so a list (half a map's size inline).
    pub aliases: Aliases,
    /// Resources that asked for the room's history when joining, until they get the entry.
    pub history: Vec<(String, HistoryRequest)>,
    /// The channel's key in the archive (`archive::room_key`), made once.
    pub archive_key: String,
    /// Changes whenever the user may have missed lines of the channel (a new join, a
    /// dropped connection): the archive ends their span there (`archive/live.rs`).
    pub archive_epoch: u64,
    /// Where the room's reader is in the archive's live state, kept so that a delivery
    /// skips looking up the channel and the user there (`None` until the first line).
    pub archive_place: Option<crate::archive::Place>,
}

/// The history a resource asked for when joining (XEP-0045 `<history/>`), to be sent from
/// the archive between the presences and the subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryRequest {
    /// The newest lines, at most this many.
    pub max: usize,
    /// Only lines from this time on (microseconds since the epoch).
    pub since: Option<u64>,
}

/// Lines sent when a join asks for history by time alone.
const HISTORY_BY_TIME: usize = 100;

/// The `<history/>` of a join presence, as of `now` (microseconds); `None` when it asks
/// for none (no element, `maxstanzas='0'` or `maxchars='0'`, as clients that read the
/// archive themselves send).
pub fn history_request(join: &Element, now: u64) -> Option<HistoryRequest> {
    let x = join.get_child("x", crate::disco::NS_MUC)?;
    let history = xmpp_parsers::muc::muc::History::try_from(x.get_child("history", crate::disco::NS_MUC)?.clone()).ok()?;
    if history.maxstanzas == Some(0) || history.maxchars == Some(0) {
        return None;
    }
    let by_seconds = history.seconds.map(|seconds| now.saturating_sub(u64::from(seconds) * 1_000_000));
    let by_date = history.since.map(|since| u64::try_from(since.0.timestamp_micros()).unwrap_or(0));
    let since = by_seconds.max(by_date);
    let max = match (history.maxstanzas, since) {
        (Some(max), _) => max as usize,
        (None, Some(_)) => HISTORY_BY_TIME,
        // maxchars alone: lines of any length, as many as a time request gets.
        (None, None) => HISTORY_BY_TIME,
    };
    Some(HistoryRequest { max: max.min(crate::archive::MAX_PAGE), since })
}

/// The user's resources in a room, by full JID, each with whether it was sent the
/// room's entry (occupants, self-presence, subject) since the IRC side last confirmed the
/// join: occupant changes go to those only, and the others get the entry with the next
/// `Joined`. A short list rather than a map: a room holds the few resources of one user
/// (most often one), thousands of times over, and an always-on room none.
#[derive(Debug, Clone, Default)]
pub struct Resources(Vec<(String, bool)>);

impl Resources {
    /// One resource, not entered yet.
    pub fn of(resource: String) -> Self {
        Resources(vec![(resource, false)])
    }

    /// Whether `resource` is in the room (or joining it).
    pub fn contains(&self, resource: &str) -> bool {
        self.0.iter().any(|(known, _)| known == resource)
    }

    /// Adds `resource`, not entered yet; false if it was there already.
    pub fn insert(&mut self, resource: String) -> bool {
        if self.contains(&resource) {
            return false;
        }
        self.0.push((resource, false));
        true
    }

    /// Removes `resource`; false if it was not there. The last one leaving frees the list.
    pub fn remove(&mut self, resource: &str) -> bool {
        let Some(at) = self.0.iter().position(|(known, _)| known == resource) else { return false };
        self.0.swap_remove(at);
        if self.0.is_empty() {
            self.0 = Vec::new();
        }
        true
    }

    /// How many resources are in the room.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no resource is left.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Every resource, entered or not.
    pub fn iter(&self) -> impl Iterator<Item = &String> {
        self.0.iter().map(|(resource, _)| resource)
    }

    /// The resources that were sent the room's entry.
    pub fn entered(&self) -> impl Iterator<Item = &String> {
        self.0.iter().filter(|(_, entered)| *entered).map(|(resource, _)| resource)
    }

    /// Marks every resource entered; returns those that were not (they get the entry now).
    pub fn enter_all(&mut self) -> Vec<String> {
        let mut newcomers = Vec::new();
        for (resource, entered) in &mut self.0 {
            if !*entered {
                *entered = true;
                newcomers.push(resource.clone());
            }
        }
        newcomers
    }

    /// Marks every resource as not entered (the join is to be confirmed again).
    pub fn forget_entries(&mut self) {
        self.0.iter_mut().for_each(|(_, entered)| *entered = false);
    }

    /// Adds the resources of `other` that are not here yet, not entered.
    pub fn merge(&mut self, other: Resources) {
        for (resource, _) in other.0 {
            self.insert(resource);
        }
    }
}

impl Room {
    /// A room joined by `resource` under `nick`, not yet confirmed by IRC.
    pub fn new(jid: String, channel: String, resource: String, nick: String) -> Self {
        Room {
            jid,
            channel,
            resources: Resources::of(resource),
            requested_nick: None,
            me: Occupant::new(nick, Role::Participant, Affiliation::None),
            joined: false,
            rejoining: false,
            mapping: CaseMapping::default(),
            key: None,
            aliases: Aliases::default(),
            history: Vec::new(),
            archive_key: String::new(),
            archive_epoch: 0,
            archive_place: None,
        }
    }

    /// An always-on room joined for nobody (at start, from the user's settings).
    pub fn always_on(jid: String, channel: String, nick: String) -> Self {
        let mut room = Room::new(jid, channel, String::new(), nick);
        room.forget_resources();
        room
    }

    /// Drops every resource (the room stays, always on, for nobody).
    pub fn forget_resources(&mut self) {
        self.resources = Resources::default();
        self.aliases.clear();
        self.history.clear();
    }

    /// The room's JID as the resource `to` joined it.
    pub fn jid_for(&self, to: &str) -> &str {
        self.aliases.get(to).unwrap_or(&self.jid)
    }

    /// The occupant JID of `nick` in this room, as the resource `to` knows the room.
    pub fn occupant_jid(&self, to: &str, nick: &str) -> String {
        format!("{}/{nick}", self.jid_for(to))
    }

    /// Whether `nick` is the user's, compared as the network compares nicks.
    pub fn is_me(&self, nick: &str) -> bool {
        self.mapping.fold(nick) == self.mapping.fold(self.nick())
    }

    /// The user's nick in the room.
    pub fn nick(&self) -> &str {
        &self.me.nick
    }

    /// The nick the user asked for (the one the server gave, unless it gave another).
    pub fn requested_nick(&self) -> &str {
        self.requested_nick.as_deref().unwrap_or(&self.me.nick)
    }

    /// The server gave the user `nick` in the channel (joining it): the nick asked for is
    /// kept when it differs.
    pub fn given_nick(&mut self, nick: String) {
        if nick != self.requested_nick() {
            self.requested_nick.get_or_insert_with(|| self.me.nick.clone().into_boxed_str());
        } else {
            self.requested_nick = None;
        }
        self.me.nick = nick;
    }

    /// The user changed their nick (or their status) to `me`'s: now the one asked for.
    pub fn renamed(&mut self, me: Occupant) {
        self.me = me;
        self.requested_nick = None;
    }

    /// Everything a resource needs on (re)entering: others' presences, then the user's
    /// own with 110 (and 210 when the nick was changed), then the `history` it asked for,
    /// then the subject (`topic`, as the IRC side reports it with each join: the room
    /// does not keep a second copy).
    ///
    /// Made one at a time as they are sent: a channel of 10,000 nicks would otherwise be
    /// 10,000 elements (40 MiB) held at once.
    pub fn entry_stanzas<'a>(&'a self, to: &'a str, occupants: &'a [Occupant], history: &'a [crate::archive::Item], topic: Option<&'a str>) -> impl Iterator<Item = Element> + 'a {
        let others = occupants
            .iter()
            .filter(|o| !self.is_me(&o.nick))
            .map(move |o| occupant_presence(&self.occupant_jid(to, &o.nick), to, o, &[]));
        let mut codes = vec![Status::SelfPresence];
        if self.requested_nick.is_some() {
            codes.push(Status::AssignedNick);
        }
        let own = std::iter::once_with(move || occupant_presence(&self.occupant_jid(to, self.nick()), to, &self.me, &codes));
        let history = history.iter().map(move |item| crate::mam::history_message(self.jid_for(to), to, item));
        let subject = std::iter::once_with(move || subject_message(self.jid_for(to), to, topic.unwrap_or("")));
        others.chain(own).chain(history).chain(subject)
    }

    /// The user's own departure, as each entered resource is told it: 110, the `codes`,
    /// and the reason.
    pub fn self_departures(&self, codes: &[Status], reason: Option<&str>) -> Vec<Element> {
        let mut all = vec![Status::SelfPresence];
        all.extend_from_slice(codes);
        self.resources.entered().map(|to| departure_presence(&self.occupant_jid(to, self.nick()), to, &self.me, &all, None, reason)).collect()
    }
}

/// The room JID each resource used where it is not the room's own (see [`Room::aliases`]):
/// a short list, by full JID.
#[derive(Debug, Clone, Default)]
pub struct Aliases(Vec<(String, String)>);

impl Aliases {
    /// The room JID `resource` used, if another.
    pub fn get(&self, resource: &str) -> Option<&str> {
        self.0.iter().find(|(r, _)| r == resource).map(|(_, jid)| jid.as_str())
    }

    /// `resource` used `jid` (replacing what it used before).
    pub fn insert(&mut self, resource: String, jid: String) {
        self.remove(&resource);
        self.0.push((resource, jid));
    }

    /// `resource` is gone.
    pub fn remove(&mut self, resource: &str) {
        self.0.retain(|(r, _)| r != resource);
        if self.0.is_empty() {
            self.0 = Vec::new();
        }
    }

    /// Every alias of `other` too (its own win).
    pub fn merge(&mut self, other: Aliases) {
        for (resource, jid) in other.0 {
            self.insert(resource, jid);
        }
    }

    /// None left.
    pub fn clear(&mut self) {
        self.0 = Vec::new();
    }
}

/// Key of a room among all users' rooms: the channel name folded with the network's
/// case mapping.
pub type RoomKey = (UserId, NetworkId, String);

/// The key of `channel` for `user` on `network`, whose names fold with `mapping`.
pub fn room_key(user: &UserId, network: &NetworkId, channel: &str, mapping: CaseMapping) -> RoomKey {
    (user.clone(), network.clone(), mapping.fold(channel))
}

/// A [`RoomKey`] borrowed from what an event carries, to look a room up without copying
/// the user, the network and the channel on the path of every line a channel delivers.
#[derive(Debug)]
pub struct RoomKeyRef<'a> {
    /// Whose room.
    pub user: &'a UserId,
    /// On which network.
    pub network: &'a NetworkId,
    /// The channel, folded with the network's case mapping.
    pub channel: std::borrow::Cow<'a, str>,
}

impl<'a> RoomKeyRef<'a> {
    /// The key of `channel` for `user` on `network`, whose names fold with `mapping`.
    pub fn new(user: &'a UserId, network: &'a NetworkId, channel: &'a str, mapping: CaseMapping) -> Self {
        RoomKeyRef { user, network, channel: mapping.folded(channel) }
    }

    /// The owned key, to insert a room.
    pub fn to_owned_key(&self) -> RoomKey {
        (self.user.clone(), self.network.clone(), self.channel.clone().into_owned())
    }
}

/// What names a room for a lookup: an owned [`RoomKey`] or a borrowed [`RoomKeyRef`].
pub trait RoomLookup {
    /// Whose room.
    fn user(&self) -> &UserId;
    /// On which network.
    fn network(&self) -> &NetworkId;
    /// The channel, folded with the network's case mapping.
    fn channel(&self) -> &str;
}

impl RoomLookup for RoomKey {
    fn user(&self) -> &UserId {
        &self.0
    }
    fn network(&self) -> &NetworkId {
        &self.1
    }
    fn channel(&self) -> &str {
        &self.2
    }
}

impl RoomLookup for RoomKeyRef<'_> {
    fn user(&self) -> &UserId {
        self.user
    }
    fn network(&self) -> &NetworkId {
        self.network
    }
    fn channel(&self) -> &str {
        &self.channel
    }
}

/// One room of a user, in [`Rooms`]: where it is and what it is.
#[derive(Debug)]
struct UserRoom {
    /// The network of the channel.
    network: NetworkId,
    /// The channel, folded with the network's case mapping (the key's last part).
    folded: String,
    /// The room. Boxed: a room is some 400 bytes, and a user's list is moved around
    /// as it grows.
    room: Box<Room>,
}

/// Every room of every user, by user: what concerns one user's rooms (the count checked
/// at each join, a logout, a registration change) looks at that user's rooms only, so
/// its cost does not grow with the number of users on the gateway (issue 12: 10,000).
#[derive(Debug, Default)]
pub struct Rooms {
    /// Each user's rooms; std's randomly seeded hasher (JIDs are users' input). A user
    /// without a room has no entry.
    users: HashMap<UserId, Vec<UserRoom>>,
    /// How many rooms in all (the statistics read it without a walk over every user).
    count: usize,
}

impl Rooms {
    /// The room, if the user is in it (or joining).
    pub fn get(&self, key: &impl RoomLookup) -> Option<&Room> {
        let list = self.users.get(key.user())?;
        list.iter().find(|r| r.folded == key.channel() && r.network == *key.network()).map(|r| &*r.room)
    }

    /// Mutable access.
    pub fn get_mut(&mut self, key: &impl RoomLookup) -> Option<&mut Room> {
        let list = self.users.get_mut(key.user())?;
        list.iter_mut().find(|r| r.folded == key.channel() && r.network == *key.network()).map(|r| &mut *r.room)
    }

    /// How many rooms are joined, over all users.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether no room is joined.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Adds a room (replacing the one of the same key, as a map would).
    pub fn insert(&mut self, key: RoomKey, room: Room) {
        let (user, network, folded) = key;
        let list = self.users.entry(user).or_default();
        if let Some(existing) = list.iter_mut().find(|r| r.folded == folded && r.network == network) {
            *existing.room = room;
            return;
        }
        // Grown one at a time: most users are in a room or two, and a list's spare
        // capacity would be paid by every one of thousands of users.
        list.reserve_exact(1);
        list.push(UserRoom { network, folded, room: Box::new(room) });
        self.count += 1;
    }

    /// How many rooms `user` is in (or joining), over all networks.
    pub fn count_of(&self, user: &UserId) -> usize {
        self.users.get(user).map_or(0, Vec::len)
    }

    /// Removes a room.
    pub fn remove(&mut self, key: &impl RoomLookup) -> Option<Room> {
        let list = self.users.get_mut(key.user())?;
        let at = list.iter().position(|r| r.folded == key.channel() && r.network == *key.network())?;
        let removed = list.swap_remove(at);
        if list.is_empty() {
            self.users.remove(key.user());
        } else {
            list.shrink_to_fit();
        }
        self.count -= 1;
        Some(*removed.room)
    }

    /// Removes and returns the rooms of `user` on `network` (every network if `None`).
    pub fn take(&mut self, user: &UserId, network: Option<&NetworkId>) -> Vec<Room> {
        self.take_keyed(user, network).into_iter().map(|(_, room)| room).collect()
    }

    /// The rooms of `user`, with their network.
    pub fn of<'a>(&'a self, user: &UserId) -> impl Iterator<Item = (&'a NetworkId, &'a Room)> + 'a {
        self.users.get(user).into_iter().flatten().map(|r| (&r.network, &*r.room))
    }

    /// Every room of every user, with its user and network.
    pub fn all(&self) -> impl Iterator<Item = (&UserId, &NetworkId, &Room)> + '_ {
        self.users.iter().flat_map(|(user, list)| list.iter().map(move |r| (user, &r.network, &*r.room)))
    }

    /// The rooms of `user`, with their network, to change.
    pub fn of_mut<'a>(&'a mut self, user: &UserId) -> impl Iterator<Item = (&'a NetworkId, &'a mut Room)> + 'a {
        self.users.get_mut(user).into_iter().flatten().map(|r| (&r.network, &mut *r.room))
    }

    /// Keys every user's rooms on `network` again with `mapping` (the network told how it
    /// compares names). Rooms of one user that turn out to be one channel become one room
    /// with the resources of both.
    pub fn rekey(&mut self, network: &NetworkId, mapping: CaseMapping) {
        for list in self.users.values_mut() {
            let mut kept: Vec<UserRoom> = Vec::with_capacity(list.len());
            for mut entry in std::mem::take(list) {
                if entry.network != *network {
                    kept.push(entry);
                    continue;
                }
                entry.room.mapping = mapping;
                entry.folded = mapping.fold(&entry.room.channel);
                match kept.iter_mut().find(|r| r.folded == entry.folded && r.network == *network) {
                    Some(existing) => {
                        let (existing, room) = (&mut existing.room, &mut entry.room);
                        let jid = room.jid.clone();
                        for resource in room.resources.iter().filter(|_| jid != existing.jid) {
                            existing.aliases.insert(resource.clone(), jid.clone());
                        }
                        existing.aliases.merge(std::mem::take(&mut room.aliases));
                        existing.resources.merge(std::mem::take(&mut room.resources));
                        self.count -= 1;
                    }
                    None => kept.push(entry),
                }
            }
            kept.shrink_to_fit();
            *list = kept;
        }
    }

    /// Removes `resource` (a full JID) of `user` from every room; returns the rooms left
    /// empty, which the IRC side should leave.
    pub fn remove_resource(&mut self, user: &UserId, resource: &str) -> Vec<(RoomKey, Room)> {
        let Some(list) = self.users.get_mut(user) else { return Vec::new() };
        let mut emptied = Vec::new();
        let mut at = 0;
        while let Some(entry) = list.get_mut(at) {
            let room = &mut entry.room;
            room.aliases.remove(resource);
            room.history.retain(|(r, _)| r != resource);
            // Only the rooms this resource was the last in: an always-on room kept for
            // nobody is not emptied again.
            if room.resources.remove(resource) && room.resources.is_empty() {
                let gone = list.swap_remove(at);
                emptied.push(((user.clone(), gone.network, gone.folded), *gone.room));
            } else {
                at += 1;
            }
        }
        self.count -= emptied.len();
        if list.is_empty() {
            self.users.remove(user);
        } else if !emptied.is_empty() {
            list.shrink_to_fit();
        }
        emptied
    }

    /// Every room of `user` (on `network`, or on all), removed, with its key.
    pub fn take_keyed(&mut self, user: &UserId, network: Option<&NetworkId>) -> Vec<(RoomKey, Room)> {
        let Some(list) = self.users.get_mut(user) else { return Vec::new() };
        let (taken, kept): (Vec<UserRoom>, Vec<UserRoom>) = std::mem::take(list).into_iter().partition(|r| network.is_none_or(|network| r.network == *network));
        self.count -= taken.len();
        if kept.is_empty() {
            self.users.remove(user);
        } else {
            *list = kept;
        }
        taken.into_iter().map(|r| ((user.clone(), r.network, r.folded), *r.room)).collect()
    }
}

/// An occupant's available presence, with status codes; away (`<show>away</show>`) with
/// their away message and services account as its status, where IRC tells them.
///
/// On the path of every join (the self-presence, and one per occupant of a channel
/// entered), so built as an element directly, like [`groupchat`]: going through
/// `xmpp_parsers`' `Presence` and `MucUser` re-parsed both JIDs and built the element from
/// a stream of events. `from` and `to` are JIDs the gateway formed itself.
pub fn occupant_presence(from: &str, to: &str, occupant: &Occupant, codes: &[Status]) -> Element {
    let item = item(occupant.affiliation, role_name(occupant.role)).build();
    let status = occupant_status(occupant);
    let mut stanza = presence(None, from, to, item, codes, status.as_deref());
    if occupant.away.is_some() {
        stanza.append_child(Element::builder("show", xmpp_parsers::ns::DEFAULT_NS).append("away").build());
    }
    stanza
}

/// A `muc#user` `<item/>` with the occupant's affiliation and the `role` named.
fn item(affiliation: Affiliation, role: &str) -> minidom::element::ElementBuilder {
    Element::builder("item", xmpp_parsers::ns::MUC_USER)
        .attr(rxml::xml_ncname!("affiliation").into(), affiliation_name(affiliation))
        .attr(rxml::xml_ncname!("role").into(), role)
}

/// The name XEP-0045 gives a role in an `<item/>`.
fn role_name(role: Role) -> &'static str {
    match role {
        Role::Visitor => "visitor",
        Role::Participant => "participant",
        Role::Moderator => "moderator",
    }
}

/// The name XEP-0045 gives an affiliation in an `<item/>`.
fn affiliation_name(affiliation: Affiliation) -> &'static str {
    match affiliation {
        Affiliation::None => "none",
        Affiliation::Member => "member",
        Affiliation::Admin => "admin",
        Affiliation::Owner => "owner",
    }
}

/// The status text of an occupant: their away message, and the account they are logged
/// in to (`gone fishing (account bob)`).
fn occupant_status(occupant: &Occupant) -> Option<String> {
    match (occupant.away.as_deref().filter(|away| !away.is_empty()), occupant.account.as_deref()) {
        (Some(away), Some(account)) => Some(format!("{away} (account {account})")),
        (Some(away), None) => Some(away.to_owned()),
        (None, Some(account)) => Some(format!("account {account}")),
        (None, None) => None,
    }
}

/// A XEP-0203 delay: sent at `time`, says `from`.
pub fn delay(from: &str, time: std::time::SystemTime) -> Element {
    use rxml::xml_ncname;
    let micros = time.duration_since(std::time::UNIX_EPOCH).map_or(0, |since| u64::try_from(since.as_micros()).unwrap_or(u64::MAX));
    let stamp = crate::mam::stamp(micros);
    Element::builder("delay", "urn:xmpp:delay").attr(xml_ncname!("from").into(), from).attr(xml_ncname!("stamp").into(), stamp).build()
}

/// An occupant leaving: unavailable, with role none, the codes (110 for the user, 303 with
/// the new nick, 307 for a kick, 332 for a shutdown) and the reason.
pub fn departure_presence(
    from: &str,
    to: &str,
    occupant: &Occupant,
    codes: &[Status],
    new_nick: Option<&str>,
    reason: Option<&str>,
) -> Element {
    let mut item = item(occupant.affiliation, "none");
    if let Some(nick) = new_nick {
        item = item.attr(rxml::xml_ncname!("nick").into(), nick);
    }
    if let Some(reason) = reason {
        item = item.append(Element::builder("reason", xmpp_parsers::ns::MUC_USER).append(reason));
    }
    presence(Some("unavailable"), from, to, item.build(), codes, reason)
}

/// A room presence of `type_` (available when `None`): the status text, then the
/// `muc#user` payload with the status `codes` and the `item`.
fn presence(type_: Option<&str>, from: &str, to: &str, item: Element, codes: &[Status], status: Option<&str>) -> Element {
    use rxml::xml_ncname;
    let ns = xmpp_parsers::ns::DEFAULT_NS;
    let mut presence = Element::builder("presence", ns).attr(xml_ncname!("from").into(), from).attr(xml_ncname!("to").into(), to);
    if let Some(type_) = type_ {
        presence = presence.attr(xml_ncname!("type").into(), type_);
    }
    if let Some(status) = status {
        presence = presence.append(Element::builder("status", ns).append(status));
    }
    let muc_user = Element::builder("x", xmpp_parsers::ns::MUC_USER).append_all(codes.iter().map(|code| Element::from(code.clone()))).append(item);
    presence.append(muc_user).build()
}

/// The room subject (sent on entry, even empty, since it ends the join sequence).
pub fn subject_message(from: &str, to: &str, subject: &str) -> Element {
    use rxml::xml_ncname;
    let ns = xmpp_parsers::ns::DEFAULT_NS;
    Element::builder("message", ns)
        .attr(xml_ncname!("type").into(), "groupchat")
        .attr(xml_ncname!("from").into(), from)
        .attr(xml_ncname!("to").into(), to)
        .append(Element::builder("subject", ns).append(subject))
        .build()
}

/// A group chat message; `id` is kept when reflecting the user's own message, so their
/// client can match the echo (XEP-0045 §7.4); `archived` is its id in the user's archive,
/// sent as a XEP-0359 stanza-id by the room (the bare `from`), so the client matches it
/// with the archived copy.
///
/// The hot path of the gateway (one per occupant for every channel line), so it is built
/// as an element directly: going through `xmpp_parsers::message::Message` re-parses both
/// JIDs and builds the element from a stream of events, which cost a fifth of the
/// gateway's CPU under fan-out. `from` and `to` are JIDs the gateway formed itself.
pub fn groupchat(from: &str, to: &str, body: &str, id: Option<&str>, archived: Option<&str>) -> Element {
    groupchat_builder(from, to, Some(body), id, archived)
}

/// A group chat message without a body (a reflected reaction, say).
pub fn groupchat_without_body(from: &str, to: &str, id: Option<&str>) -> Element {
    groupchat_builder(from, to, None, id, None)
}

fn groupchat_builder(from: &str, to: &str, body: Option<&str>, id: Option<&str>, archived: Option<&str>) -> Element {
    use rxml::xml_ncname;
    let ns = xmpp_parsers::ns::DEFAULT_NS;
    let mut message = Element::builder("message", ns)
        .attr(xml_ncname!("type").into(), "groupchat")
        .attr(xml_ncname!("from").into(), from)
        .attr(xml_ncname!("to").into(), to);
    if let Some(id) = id {
        message = message.attr(xml_ncname!("id").into(), id);
    }
    if let Some(body) = body {
        message = message.append(Element::builder("body", ns).append(body));
    }
    match archived {
        Some(archived) => {
            let room = from.split_once('/').map_or(from, |(room, _)| room);
            message.append(crate::mam::stanza_id(archived, room)).build()
        }
        None => message.build(),
    }
}

/// A channel line as group chat messages, serialised once for every recipient: only
/// `from`, `to` and the stanza-id's `by` differ between them, and the text is escaped
/// once. What [`groupchat`] builds, as bytes for the writer (`Outbox::send_encoded`): the
/// gateway's hot path, where building an element per recipient only to serialise it
/// again cost a third of the CPU of a delivery.
pub struct GroupchatLine {
    /// The body, escaped for element content.
    body: Vec<u8>,
    /// The XMPP id (a reflection's), escaped for an attribute.
    id: Option<Vec<u8>>,
    /// The archive id of the line: written as digits straight into each copy (digits
    /// need no escaping), with no text made for it per delivery.
    archived: Option<u64>,
}

impl GroupchatLine {
    /// The line `body`, with the XMPP `id` and the archive id; `None` when a character
    /// XML forbids is in them (the caller builds an element, which the writer cleans).
    pub fn new(body: &str, id: Option<&str>, archived: Option<u64>) -> Option<Self> {
        let escaped = |text: &str, in_attribute: bool| {
            let mut out = Vec::with_capacity(text.len() + 8);
            crate::encode::escape(text, in_attribute, &mut out).map(|()| out)
        };
        Some(GroupchatLine { body: escaped(body, false).ok()?, id: id.map(|id| escaped(id, true)).transpose().ok()?, archived })
    }

    /// The message from `from` (an occupant or the room) to `to`; the stanza-id is by
    /// the room, the bare `from` (copied from `from` as escaped there). `None` when a JID
    /// holds a character XML forbids.
    pub fn stanza(&self, from: &str, to: &str) -> Option<Vec<u8>> {
        use crate::encode::escape;
        // Room for what is written below with its JIDs unescaped (the room's twice), so
        // that a copy is made in one allocation.
        let archived = self.archived.map_or(0, |_| 100 + from.len());
        let mut out = Vec::with_capacity(110 + from.len() + to.len() + self.id.as_ref().map_or(0, Vec::len) + self.body.len() + archived);
        out.extend_from_slice(b"<message xmlns='jabber:component:accept' type='groupchat' from='");
        let (room, nick) = from.split_once('/').map_or((from, None), |(room, nick)| (room, Some(nick)));
        let room_at = out.len();
        escape(room, true, &mut out).ok()?;
        let room_end = out.len();
        if let Some(nick) = nick {
            out.push(b'/');
            escape(nick, true, &mut out).ok()?;
        }
        out.extend_from_slice(b"' to='");
        escape(to, true, &mut out).ok()?;
        out.push(b'\'');
        if let Some(id) = &self.id {
            out.extend_from_slice(b" id='");
            out.extend_from_slice(id);
            out.push(b'\'');
        }
        out.extend_from_slice(b"><body>");
        out.extend_from_slice(&self.body);
        out.extend_from_slice(b"</body>");
        if let Some(archived) = self.archived {
            out.extend_from_slice(b"<stanza-id xmlns='urn:xmpp:sid:0' id='");
            push_decimal(archived, &mut out);
            out.extend_from_slice(b"' by='");
            out.extend_from_within(room_at..room_end);
            out.extend_from_slice(b"'/>");
        }
        out.extend_from_slice(b"</message>");
        Some(out)
    }
}

/// Appends `n` in decimal, as `n.to_string()` spells it, without making a string.
fn push_decimal(mut n: u64, out: &mut Vec<u8>) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use xmpp_parsers::message::{Message, MessageType};

    #[test]
    fn resources_are_a_short_list_freed_when_the_last_leaves() {
        let mut resources = Resources::of("a@x/phone".to_owned());
        assert!(resources.insert("a@x/laptop".to_owned()));
        assert!(!resources.insert("a@x/phone".to_owned()), "once each");
        assert_eq!(resources.enter_all().len(), 2);
        assert!(resources.insert("a@x/tablet".to_owned()));
        assert_eq!(resources.entered().count(), 2, "the newcomer has not had the entry");
        assert!(resources.remove("a@x/phone") && !resources.remove("a@x/phone"));
        assert!(resources.remove("a@x/laptop") && resources.remove("a@x/tablet"));
        assert!(resources.is_empty());
        assert_eq!(resources.0.capacity(), 0, "an always-on room kept for nobody holds no list");
    }

    #[test]
    fn aliases_are_one_per_resource_merged_and_freed_when_the_last_goes() {
        let mut aliases = Aliases::default();
        aliases.insert("a@x/phone".into(), "#foo{%irc.x@gw".into());
        aliases.insert("a@x/phone".into(), "#FOO{%irc.x@gw".into());
        assert_eq!(aliases.get("a@x/phone"), Some("#FOO{%irc.x@gw"), "the last spelling a resource used");
        assert_eq!(aliases.get("a@x/laptop"), None);
        let mut other = Aliases::default();
        other.insert("a@x/laptop".into(), "#Foo{%irc.x@gw".into());
        other.insert("a@x/phone".into(), "#foo[%irc.x@gw".into());
        aliases.merge(other);
        assert_eq!((aliases.get("a@x/phone"), aliases.get("a@x/laptop")), (Some("#foo[%irc.x@gw"), Some("#Foo{%irc.x@gw")));
        aliases.remove("a@x/phone");
        aliases.remove("a@x/laptop");
        assert_eq!(aliases.0.capacity(), 0, "no list kept once empty");
    }

    const NS: &str = "jabber:component:accept";
    const MUC_USER: &str = "http://jabber.org/protocol/muc#user";

    #[test]
    fn a_line_serialised_once_reads_back_as_the_element_groupchat_builds() {
        let from = "#c%irc.test@gw/bob";
        for (from, body, id, archived) in [
            (from, "hi <there> & 'you' \"all\"\n\ttabbed", None, Some(1_796_533_239_000_001)),
            (from, "plain", Some("m'1"), None),
            (from, "😀 ünïcode", Some("x"), Some(42)),
            ("#c'&%irc.test@gw/b<o>b/x", "from the room's own escaped name", None, Some(0)),
            ("#c'&%irc.test@gw", "the server itself", None, Some(u64::MAX)),
        ] {
            let line = GroupchatLine::new(body, id, archived).unwrap();
            let bytes = line.stanza(from, "alice@localhost/phone").unwrap();
            let parsed: Element = std::str::from_utf8(&bytes).unwrap().parse().unwrap();
            let archived = archived.map(crate::mam::id_text);
            assert_eq!(parsed, groupchat(from, "alice@localhost/phone", body, id, archived.as_deref()), "{}", String::from_utf8_lossy(&bytes));
        }
        assert!(GroupchatLine::new("ok", None, Some(1)).unwrap().stanza("#c%x@gw/bad\u{1}", "a@b").is_none());
        assert!(GroupchatLine::new("bell \u{7}", None, None).is_none(), "what XML forbids goes the element's way");
        assert!(GroupchatLine::new("ok", None, None).unwrap().stanza("bad\u{1}@gw", "a@b").is_none());
    }

    #[test]
    fn decimals_are_spelled_as_to_string_spells_them() {
        for n in [0, 7, 10, 99, 1_796_533_239_000_001, u64::MAX] {
            let mut out = b"x".to_vec();
            push_decimal(n, &mut out);
            assert_eq!(out, format!("x{n}").into_bytes());
        }
    }

    #[test]
    fn a_groupchat_message_is_what_xmpp_parsers_reads() {
        let stanza = groupchat("#rust%irc.example.org@gw/bob", "alice@example.org/phone", "a < b & 'c' \"d\"", Some("m1"), None);
        let xml = String::from_utf8(crate::xml_stream::to_bytes(&stanza)).unwrap();
        let message = Message::try_from(xml.parse::<Element>().unwrap()).unwrap();
        assert_eq!(message.type_, MessageType::Groupchat);
        assert_eq!(message.from.unwrap().to_string(), "#rust%irc.example.org@gw/bob");
        assert_eq!(message.to.unwrap().to_string(), "alice@example.org/phone");
        assert_eq!(message.id.unwrap().0, "m1");
        assert_eq!(message.bodies[""], "a < b & 'c' \"d\"");
        let without_id = groupchat("r@gw/n", "u@x/r", "hi", None, None);
        assert_eq!(without_id.attr("id"), None);
        assert!(without_id.get_child("stanza-id", crate::mam::NS_SID).is_none());
        let archived = groupchat("#rust%irc.example.org@gw/bob", "u@x/r", "hi", None, Some("1234"));
        let sid = xmpp_parsers::stanza_id::StanzaId::try_from(archived.get_child("stanza-id", crate::mam::NS_SID).unwrap().clone()).unwrap();
        assert_eq!((sid.id.as_str(), sid.by.to_string().as_str()), ("1234", "#rust%irc.example.org@gw"));
    }

    fn codes(stanza: &Element) -> Vec<String> {
        stanza
            .get_child("x", MUC_USER)
            .map(|x| x.children().filter(|c| c.name() == "status").filter_map(|c| c.attr("code")).map(str::to_owned).collect())
            .unwrap_or_default()
    }

    fn occupant(nick: &str, role: Role, affiliation: Affiliation) -> Occupant {
        Occupant::new(nick.into(), role, affiliation)
    }

    fn joined_room() -> (Room, Vec<Occupant>) {
        let mut room = Room::new("#r%irc.x@gw".into(), "#r".into(), "u@h/a".into(), "alice".into());
        room.given_nick("alice_".into());
        room.joined = true;
        let occupants = vec![occupant("alice_", Role::Participant, Affiliation::None), occupant("bob", Role::Moderator, Affiliation::Admin)];
        (room, occupants)
    }

    #[test]
    fn entry_replays_others_then_self_with_110_210_then_subject() {
        let (room, occupants) = joined_room();
        let stanzas: Vec<Element> = room.entry_stanzas("u@h/a", &occupants, &[], Some("welcome")).collect();
        assert_eq!(stanzas.len(), 3);
        assert_eq!(stanzas[0].attr("from"), Some("#r%irc.x@gw/bob"));
        let item = stanzas[0].get_child("x", MUC_USER).unwrap().get_child("item", MUC_USER).unwrap();
        assert_eq!((item.attr("role"), item.attr("affiliation")), (Some("moderator"), Some("admin")));
        assert_eq!(stanzas[1].attr("from"), Some("#r%irc.x@gw/alice_"));
        assert_eq!(codes(&stanzas[1]), vec!["110", "210"]);
        assert_eq!(stanzas[2].get_child("subject", NS).unwrap().text(), "welcome");
    }

    #[test]
    fn asked_history_comes_after_the_own_presence_and_before_the_subject_with_its_time_and_id() {
        use crate::archive::{Direction, Item};
        let (room, occupants) = joined_room();
        let history = [
            Item { id: 1_000_000, direction: Direction::Room, who: "bob".into(), body: "earlier".into() },
            Item { id: 2_000_000, direction: Direction::Room, who: String::new(), body: "a server notice".into() },
        ];
        let stanzas: Vec<Element> = room.entry_stanzas("u@h/a", &occupants, &history, Some("welcome")).collect();
        assert_eq!(stanzas.len(), 5);
        assert_eq!(codes(&stanzas[1]), vec!["110", "210"]);
        let line = Message::try_from(stanzas[2].clone()).unwrap();
        assert_eq!((line.from.unwrap().to_string(), line.bodies[""].as_str()), ("#r%irc.x@gw/bob".to_owned(), "earlier"));
        let delay = xmpp_parsers::delay::Delay::try_from(stanzas[2].get_child("delay", "urn:xmpp:delay").unwrap().clone()).unwrap();
        assert_eq!((delay.stamp.0.timestamp_micros(), delay.from.unwrap().to_string()), (1_000_000, "#r%irc.x@gw".to_owned()));
        assert_eq!(stanzas[2].get_child("stanza-id", crate::mam::NS_SID).unwrap().attr("id"), Some("1000000"));
        assert_eq!(stanzas[3].attr("from"), Some("#r%irc.x@gw"));
        assert!(stanzas[4].get_child("subject", NS).is_some());
    }

    #[test]
    fn history_requests_read_maxstanzas_seconds_and_since() {
        let join = |history: &str| format!("<presence xmlns='{NS}'><x xmlns='http://jabber.org/protocol/muc'>{history}</x></presence>").parse::<Element>().unwrap();
        let now = 1_000_000_000_000;
        assert_eq!(history_request(&join(""), now), None, "no <history/>: none");
        assert_eq!(history_request(&join("<history maxstanzas='0'/>"), now), None);
        assert_eq!(history_request(&join("<history maxchars='0'/>"), now), None);
        assert_eq!(history_request(&join("<history maxstanzas='20'/>"), now), Some(HistoryRequest { max: 20, since: None }));
        assert_eq!(history_request(&join("<history maxstanzas='100000'/>"), now).unwrap().max, crate::archive::MAX_PAGE);
        assert_eq!(history_request(&join("<history seconds='10'/>"), now), Some(HistoryRequest { max: HISTORY_BY_TIME, since: Some(now - 10_000_000) }));
        let since = history_request(&join("<history since='1970-01-01T00:16:40Z' maxstanzas='5'/>"), now);
        assert_eq!(since, Some(HistoryRequest { max: 5, since: Some(1_000_000_000) }));
        let presence = format!("<presence xmlns='{NS}'/>").parse::<Element>().unwrap();
        assert_eq!(history_request(&presence, now), None, "not a MUC join");
    }

    #[test]
    fn departures_carry_codes_new_nick_and_reason() {
        let o = occupant("bob", Role::Participant, Affiliation::None);
        let p = departure_presence("#r%x@gw/bob", "u@h/a", &o, &[Status::NewNick], Some("bobby"), None);
        assert_eq!(p.attr("type"), Some("unavailable"));
        assert_eq!(codes(&p), vec!["303"]);
        let item = p.get_child("x", MUC_USER).unwrap().get_child("item", MUC_USER).unwrap();
        assert_eq!(item.attr("nick"), Some("bobby"));
        let kicked = departure_presence("#r%x@gw/bob", "u@h/a", &o, &[Status::Kicked], None, Some("spam"));
        assert_eq!(codes(&kicked), vec!["307"]);
        assert_eq!(kicked.get_child("status", NS).unwrap().text(), "spam");
    }

    #[test]
    fn presences_and_the_subject_read_back_as_xmpp_parsers_reads_them() {
        use xmpp_parsers::muc::user::{Affiliation as XAffiliation, MucUser, Role as XRole};
        use xmpp_parsers::presence::{Presence, Show, Type};
        let mut o = occupant("bob", Role::Moderator, Affiliation::Owner);
        o.away = Some("lunch & <back>".into());
        o.account = Some("bob_acct".into());
        let p = Presence::try_from(occupant_presence("#r%x@gw/bob", "u@h/a", &o, &[Status::SelfPresence, Status::AssignedNick])).unwrap();
        assert_eq!((p.from.unwrap().to_string(), p.to.unwrap().to_string()), ("#r%x@gw/bob".to_owned(), "u@h/a".to_owned()));
        assert_eq!((p.type_, p.show), (Type::None, Some(Show::Away)));
        assert_eq!(p.statuses[""], "lunch & <back> (account bob_acct)");
        let x = MucUser::try_from(p.payloads[0].clone()).unwrap();
        assert_eq!(x.status, vec![Status::SelfPresence, Status::AssignedNick]);
        assert_eq!((x.items[0].affiliation.clone(), x.items[0].role.clone()), (XAffiliation::Owner, XRole::Moderator));

        let gone = Presence::try_from(departure_presence("#r%x@gw/bob", "u@h/a", &o, &[Status::Kicked], Some("bobby"), Some("spam"))).unwrap();
        assert_eq!((gone.type_, gone.statuses[""].as_str()), (Type::Unavailable, "spam"));
        let x = MucUser::try_from(gone.payloads[0].clone()).unwrap();
        assert_eq!((x.status, x.items[0].role.clone(), x.items[0].nick.as_deref()), (vec![Status::Kicked], XRole::None, Some("bobby")));
        assert_eq!(x.items[0].reason.as_ref().map(|r| r.0.as_str()), Some("spam"));

        let subject = Message::try_from(subject_message("#r%x@gw", "u@h/a", "topic <1>")).unwrap();
        assert_eq!((subject.type_, subject.subjects[""].as_str(), subject.from.unwrap().to_string()), (MessageType::Groupchat, "topic <1>", "#r%x@gw".to_owned()));
    }

    #[test]
    fn a_resource_leaving_empties_only_its_rooms() {
        let user = UserId("u@h".into());
        let net = NetworkId::Irc { server: "irc.x".into() };
        let mut rooms = Rooms::default();
        let (mut shared, _) = joined_room();
        shared.resources.insert("u@h/b".into());
        let rfc = CaseMapping::Rfc1459;
        rooms.insert(room_key(&user, &net, "#R", rfc), shared);
        rooms.insert(room_key(&user, &net, "#solo", rfc), Room::new("#solo%irc.x@gw".into(), "#solo".into(), "u@h/a".into(), "alice".into()));
        let emptied = rooms.remove_resource(&user, "u@h/a");
        assert_eq!(emptied.len(), 1);
        assert_eq!(emptied[0].1.channel, "#solo");
        assert!(rooms.get(&room_key(&user, &net, "#r", rfc)).is_some());
    }

    #[test]
    fn rooms_are_keyed_by_the_networks_case_mapping() {
        let user = UserId("u@h".into());
        let net = NetworkId::Irc { server: "irc.x".into() };
        let new_room = |channel: &str, resource: &str| Room::new(format!("{channel}%irc.x@gw"), channel.into(), resource.into(), "alice".into());
        let mut rooms = Rooms::default();
        // Before the network says otherwise, rfc1459: `#Foo[` and `#foo{` are one room.
        assert_eq!(room_key(&user, &net, "#Foo[", CaseMapping::Rfc1459), room_key(&user, &net, "#foo{", CaseMapping::Rfc1459));
        // Keyed under ascii, they are two rooms; the network then says rfc1459: one room
        // with both resources.
        rooms.insert(room_key(&user, &net, "#Foo[", CaseMapping::Ascii), new_room("#Foo[", "u@h/a"));
        rooms.insert(room_key(&user, &net, "#foo{", CaseMapping::Ascii), new_room("#foo{", "u@h/b"));
        assert_eq!(rooms.len(), 2);
        rooms.rekey(&net, CaseMapping::Rfc1459);
        assert_eq!(rooms.len(), 1);
        let room = rooms.get(&room_key(&user, &net, "#FOO[", CaseMapping::Rfc1459)).unwrap();
        assert_eq!(room.resources.len(), 2);
    }

    #[test]
    fn resources_enter_once_and_are_forgotten_on_a_new_join() {
        let mut resources = Resources::of("u@h/a".into());
        assert!(resources.insert("u@h/b".into()));
        assert!(!resources.insert("u@h/a".into()), "already there");
        assert_eq!(resources.entered().count(), 0);
        let mut newcomers = resources.enter_all();
        newcomers.sort();
        assert_eq!(newcomers, ["u@h/a", "u@h/b"]);
        assert!(resources.enter_all().is_empty(), "each enters once");
        assert!(resources.insert("u@h/c".into()));
        assert_eq!(resources.enter_all(), ["u@h/c"]);
        assert!(resources.remove("u@h/a"));
        assert!(!resources.contains("u@h/a") && !resources.entered().any(|r| r == "u@h/a"));
        resources.forget_entries();
        assert_eq!(resources.entered().count(), 0);
        assert_eq!(resources.len(), 2);
        let mut other = Resources::of("u@h/b".into());
        other.insert("u@h/d".into());
        resources.enter_all();
        resources.merge(other);
        let mut entered: Vec<&String> = resources.entered().collect();
        entered.sort();
        assert_eq!(entered, ["u@h/b", "u@h/c"], "a merged resource keeps its state here; a new one has not entered");
        assert_eq!(resources.len(), 3);
    }
}
