//! IRC channel privileges mapped to XEP-0045 roles and affiliations: pure, no I/O.
//!
//! A [`PrefixMap`] (from ISUPPORT `PREFIX`) tells which channel modes give a nick a
//! status and which prefix character stands for each in NAMES replies.
//! [`ChannelPrivileges`] keeps, per nick, the set of status modes it holds in one channel,
//! fed by NAMES entries and MODE changes, and reports each occupant's role and
//! affiliation, as biboumi maps them:
//!
//! | mode | prefix | affiliation | role |
//! | --- | --- | --- | --- |
//! | `q` | `~` | Owner | Moderator |
//! | `a` | `&` | Admin | Moderator |
//! | `o` | `@` | Admin | Moderator |
//! | `h` | `%` | Member | Moderator |
//! | `v` | `+` | Member | Participant |
//! | none | | None | Participant |
//!
//! A nick holding several modes gets the highest. Nicks are compared with the rfc1459
//! case mapping (`bridge_core::model::CaseMapping`, as the server announced it).

use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::Arc;

use hashbrown::HashTable;

use bridge_core::model::{Affiliation, CaseMapping, Occupant, Role};

/// The `PREFIX` ngircd and most ircds advertise, used by [`PrefixMap::default`].
pub const DEFAULT_PREFIX: &str = "(qaohv)~&@%+";

/// The `CHANMODES` ngircd advertises, the default of [`ChannelPrivileges`].
pub const DEFAULT_CHANMODES: &str = "beI,k,l,imMnOPQRstVz";

/// The channel status modes a server supports, highest first, each with its NAMES prefix
/// character, from ISUPPORT `PREFIX=(qaohv)~&@%+`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefixMap {
    /// `(mode letter, prefix character)`, highest privilege first.
    entries: Vec<(char, char)>,
}

impl Default for PrefixMap {
    /// `(qaohv)~&@%+`: owner, admin, operator, half-operator, voice.
    fn default() -> Self {
        Self::from_isupport(DEFAULT_PREFIX).expect("the default PREFIX parses")
    }
}

impl PrefixMap {
    /// Parses the value of ISUPPORT `PREFIX`, such as `(qaohv)~&@%+` (a leading `PREFIX=`
    /// is accepted too). An empty value means no status modes at all. `None` when the
    /// value is malformed: no parentheses, or not as many prefixes as modes.
    #[must_use]
    pub fn from_isupport(value: &str) -> Option<PrefixMap> {
        let value = value.strip_prefix("PREFIX=").unwrap_or(value);
        if value.is_empty() {
            return Some(PrefixMap {
                entries: Vec::new(),
            });
        }
        let (modes, prefixes) = value.strip_prefix('(')?.split_once(')')?;
        if modes.chars().count() != prefixes.chars().count() {
            return None;
        }
        Some(PrefixMap {
            entries: modes.chars().zip(prefixes.chars()).collect(),
        })
    }

    /// The mode letter a NAMES prefix character stands for: `'@'` gives `Some('o')`.
    #[must_use]
    pub fn mode_for_prefix(&self, prefix: char) -> Option<char> {
        self.entries
            .iter()
            .find(|&&(_, p)| p == prefix)
            .map(|&(m, _)| m)
    }

    /// The NAMES prefix character of a status mode: `'o'` gives `Some('@')`.
    #[must_use]
    pub fn prefix_for_mode(&self, mode: char) -> Option<char> {
        self.entries
            .iter()
            .find(|&&(m, _)| m == mode)
            .map(|&(_, p)| p)
    }

    /// Whether `mode` is a status mode (one that takes a nick, like `o` or `v`).
    #[must_use]
    pub fn is_prefix_mode(&self, mode: char) -> bool {
        self.prefix_for_mode(mode).is_some()
    }

    /// The status mode letters, highest first.
    pub fn modes(&self) -> impl Iterator<Item = char> + '_ {
        self.entries.iter().map(|&(m, _)| m)
    }

    /// The role and affiliation that status mode `mode` gives, per the table in the
    /// module documentation; `None` when `mode` is not a status mode here.
    ///
    /// A status mode outside that table (`Y`, `y`…) gives Admin/Moderator when the server
    /// ranks it above `o`, and Member/Participant otherwise.
    #[must_use]
    pub fn privilege(&self, mode: char) -> Option<(Role, Affiliation)> {
        let rank = self.entries.iter().position(|&(m, _)| m == mode)?;
        Some(match mode {
            'q' => (Role::Moderator, Affiliation::Owner),
            'a' | 'o' => (Role::Moderator, Affiliation::Admin),
            'h' => (Role::Moderator, Affiliation::Member),
            'v' => (Role::Participant, Affiliation::Member),
            _ => match self.entries.iter().position(|&(m, _)| m == 'o') {
                Some(op_rank) if rank < op_rank => (Role::Moderator, Affiliation::Admin),
                _ => (Role::Participant, Affiliation::Member),
            },
        })
    }

    /// The highest role and affiliation among `modes`; Participant/None when none of them
    /// is a status mode.
    pub fn highest(&self, modes: impl IntoIterator<Item = char>) -> (Role, Affiliation) {
        modes.into_iter().filter_map(|m| self.privilege(m)).fold(
            (Role::Participant, Affiliation::None),
            |(role, aff), (r, a)| (role.max(r), aff.max(a)),
        )
    }

    /// Splits a NAMES entry into its status modes and its nick: leading prefix characters
    /// (several with `multi-prefix`) become modes, and of `nick!user@host`
    /// (`userhost-in-names`) only the nick is kept.
    fn parse_names_entry<'a>(&self, entry: &'a str) -> (&'a str, ModeSet) {
        let mut modes = ModeSet::default();
        let mut nick = entry;
        while let Some(c) = nick.chars().next() {
            match self.mode_for_prefix(c) {
                Some(mode) => {
                    modes.set(mode, true);
                    nick = nick.get(c.len_utf8()..).unwrap_or_default();
                }
                None => break,
            }
        }
        let nick = nick.split_once('!').map_or(nick, |(nick, _)| nick);
        (nick, modes)
    }
}

/// The occupant a NAMES (353) entry describes: `"@+alice"` (with `multi-prefix`) gives
/// alice as Admin/Moderator, `"alice!al@host"` (with `userhost-in-names`) gives alice,
/// with no privilege. The highest privilege among the prefixes wins.
#[must_use]
pub fn occupant_from_names_entry(entry: &str, prefixes: &PrefixMap) -> Occupant {
    let (nick, modes) = prefixes.parse_names_entry(entry);
    let (role, affiliation) = prefixes.highest(modes.letters());
    Occupant::new(nick.to_owned(), role, affiliation)
}

/// How a channel mode that is not a status mode uses arguments, from ISUPPORT
/// `CHANMODES=A,B,C,D`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ChanModes {
    /// Type A (lists, like `b`) and B (always with an argument, like `k`).
    always: String,
    /// Type C: an argument only when set (like `l`).
    when_set: String,
    /// Type A alone: lists, which no channel flag records.
    lists: String,
}

impl ChanModes {
    /// Parses `A,B,C,D`; groups past the fourth, and D, take no argument.
    fn parse(value: &str) -> ChanModes {
        let mut groups = value.split(',');
        let a = groups.next().unwrap_or("");
        let b = groups.next().unwrap_or("");
        let c = groups.next().unwrap_or("");
        ChanModes {
            always: format!("{a}{b}"),
            when_set: c.to_owned(),
            lists: a.to_owned(),
        }
    }

    /// Whether `mode`, being set (`adding`) or unset, takes an argument.
    fn takes_arg(&self, mode: char, adding: bool) -> bool {
        self.always.contains(mode) || (adding && self.when_set.contains(mode))
    }
}

/// A set of mode letters, one bit per ASCII letter: a channel's own modes (`+m`, `+k`,
/// `+n`...: every letter mode but the lists and the status modes), or the status modes a
/// nick holds. No allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ModeSet(u64);

impl ModeSet {
    /// The bit of `mode`, for ASCII letters only.
    fn bit(mode: char) -> Option<u64> {
        match mode {
            'a'..='z' => Some(1 << (mode as u32 - 'a' as u32)),
            'A'..='Z' => Some(1 << (26 + mode as u32 - 'A' as u32)),
            _ => None,
        }
    }

    /// Sets or unsets `mode` (anything but an ASCII letter is ignored).
    pub fn set(&mut self, mode: char, on: bool) {
        if let Some(bit) = Self::bit(mode) {
            if on {
                self.0 |= bit;
            } else {
                self.0 &= !bit;
            }
        }
    }

    /// Whether `mode` is set.
    #[must_use]
    pub fn has(self, mode: char) -> bool {
        Self::bit(mode).is_some_and(|bit| self.0 & bit != 0)
    }

    /// The letters set, `a-z` then `A-Z`.
    pub fn letters(self) -> impl Iterator<Item = char> {
        ('a'..='z').chain('A'..='Z').filter(move |&mode| self.has(mode))
    }

    /// `+m`: only voiced nicks and operators may speak.
    #[must_use]
    pub fn moderated(self) -> bool {
        self.has('m')
    }

    /// `+k`: joining takes a key.
    #[must_use]
    pub fn keyed(self) -> bool {
        self.has('k')
    }
}

/// One nick's state in a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Member {
    /// The nick as the server last spelled it (also what the member is found by, folded).
    nick: String,
    /// The status modes it holds.
    modes: ModeSet,
}

/// What a server says of all its channels in ISUPPORT, shared by every channel of a
/// session: one copy per connection, not one per channel.
#[derive(Debug, Clone)]
pub struct ServerModes {
    /// The server's status modes (`PREFIX`).
    prefixes: PrefixMap,
    /// Which other channel modes take an argument (`CHANMODES`).
    chanmodes: ChanModes,
    /// How the server compares nicks (`CASEMAPPING`).
    mapping: CaseMapping,
    /// Keys the hash members are found by (IRC users choose their nicks).
    hasher: RandomState,
}

impl Default for ServerModes {
    /// ngircd's: `PREFIX=(qaohv)~&@%+`, `CHANMODES=beI,k,l,imMnOPQRstVz`, `rfc1459`.
    fn default() -> Self {
        ServerModes {
            prefixes: PrefixMap::default(),
            chanmodes: ChanModes::parse(DEFAULT_CHANMODES),
            mapping: CaseMapping::default(),
            hasher: RandomState::new(),
        }
    }
}

impl ServerModes {
    /// Uses the server's status modes (from ISUPPORT `PREFIX`).
    pub fn set_prefixes(&mut self, prefixes: PrefixMap) {
        self.prefixes = prefixes;
    }

    /// Uses the server's ISUPPORT `CHANMODES=A,B,C,D` value (a leading `CHANMODES=` is
    /// accepted too) to know which non-status modes in a MODE change take an argument:
    /// A and B always, C only when set, D never. Modes in no group take none; missing
    /// groups are empty, and groups past the fourth are ignored.
    pub fn set_chanmodes(&mut self, value: &str) {
        let value = value.strip_prefix("CHANMODES=").unwrap_or(value);
        self.chanmodes = ChanModes::parse(value);
    }

    /// Compares nicks as the server does (ISUPPORT `CASEMAPPING`).
    pub fn set_mapping(&mut self, mapping: CaseMapping) {
        self.mapping = mapping;
    }

    /// The hash `nick` (or a channel name) is found by: of its characters folded (no
    /// folded copy made).
    pub(crate) fn hash(&self, nick: &str) -> u64 {
        let mut hasher = self.hasher.build_hasher();
        // Folded a chunk at a time on the stack, and hashed as one write per chunk
        // (a nick or channel name is nearly always one).
        let mut chunk = [0; 32];
        for part in nick.as_bytes().chunks(chunk.len()) {
            for (to, from) in chunk.iter_mut().zip(part) {
                *to = self.mapping.fold_byte(*from);
            }
            hasher.write(chunk.get(..part.len()).unwrap_or_default());
        }
        hasher.finish()
    }

    /// Whether two nicks (or channel names) are one for the server.
    pub(crate) fn same(&self, a: &str, b: &str) -> bool {
        self.mapping.same(a, b)
    }
}

/// The status modes each nick holds in one IRC channel, and so each occupant's XEP-0045
/// role and affiliation.
///
/// Holding the set of modes, not only the highest, means `-o` on a nick that is also `+v`
/// leaves it Member/Participant. Without the `multi-prefix` capability, NAMES shows only
/// the highest prefix, so a lower mode held under it is not known until a MODE shows it.
#[derive(Debug, Clone)]
pub struct ChannelPrivileges {
    /// The server's ISUPPORT modes, shared with the session's other channels.
    server: Arc<ServerModes>,
    /// The members, found by the hash of their folded nick: each nick is kept once (not
    /// again, folded, as a key), and a one-person channel holds one small table.
    members: HashTable<Member>,
    /// The channel's own modes (MODE changes and RPL_CHANNELMODEIS).
    flags: ModeSet,
}

impl Default for ChannelPrivileges {
    fn default() -> Self {
        Self::new()
    }
}

impl ChannelPrivileges {
    /// An empty channel with ngircd's defaults (see [`ServerModes::default`]).
    #[must_use]
    pub fn new() -> Self {
        Self::on(Arc::default())
    }

    /// An empty channel of a server that said `server` of its channels.
    #[must_use]
    pub fn on(server: Arc<ServerModes>) -> Self {
        ChannelPrivileges { server, members: HashTable::new(), flags: ModeSet::default() }
    }

    /// Takes what the server now says of its channels (the session's new copy); members
    /// already known are found again under a new case mapping.
    pub fn share(&mut self, server: Arc<ServerModes>) {
        let rekey = server.mapping != self.server.mapping;
        self.server = server;
        if rekey {
            let members: Vec<Member> = self.members.drain().collect();
            for member in members {
                self.put(member);
            }
        }
    }

    /// Compares nicks as the server does (ISUPPORT `CASEMAPPING`); members already known
    /// are keyed again.
    #[cfg(test)]
    pub fn set_mapping(&mut self, mapping: CaseMapping) {
        let mut server = ServerModes::clone(&self.server);
        server.set_mapping(mapping);
        self.share(Arc::new(server));
    }

    /// Uses the server's status modes (from ISUPPORT `PREFIX`). Modes already recorded
    /// are kept; set this before the NAMES reply.
    #[cfg(test)]
    pub fn set_prefixes(&mut self, prefixes: PrefixMap) {
        Arc::make_mut(&mut self.server).set_prefixes(prefixes);
    }

    /// The status modes in use.
    #[cfg(test)]
    #[must_use]
    pub fn prefixes(&self) -> &PrefixMap {
        &self.server.prefixes
    }

    /// [`ServerModes::set_chanmodes`] for this channel alone (tests: a session shares
    /// one copy, [`ChannelPrivileges::on`]).
    #[cfg(test)]
    pub fn set_chanmodes(&mut self, value: &str) {
        Arc::make_mut(&mut self.server).set_chanmodes(value);
    }

    /// The member `nick` is, if here.
    fn find(&self, nick: &str) -> Option<&Member> {
        self.members.find(self.server.hash(nick), |m| self.server.same(&m.nick, nick))
    }

    /// Records `member`, replacing what was known of the same nick.
    fn put(&mut self, member: Member) {
        let server = &self.server;
        let hash = server.hash(&member.nick);
        match self.members.find_mut(hash, |m| server.same(&m.nick, &member.nick)) {
            Some(known) => *known = member,
            None => {
                self.members.insert_unique(hash, member, |m| server.hash(&m.nick));
            }
        }
    }

    /// Takes `nick` out, if here.
    fn take(&mut self, nick: &str) -> Option<Member> {
        let server = &self.server;
        let entry = self.members.find_entry(server.hash(nick), |m| server.same(&m.nick, nick)).ok()?;
        Some(entry.remove().0)
    }

    /// Records a NAMES (353) entry (`"@+alice"`, `"alice!al@host"`), replacing what was
    /// known of that nick, and returns the occupant. A JOIN's bare nick works the same.
    pub fn set_from_names(&mut self, entry: &str) -> Occupant {
        let (nick, modes) = self.server.prefixes.parse_names_entry(entry);
        let member = Member { nick: nick.to_owned(), modes };
        let occupant = self.occupant_of(&member);
        self.put(member);
        occupant
    }

    /// [`ChannelPrivileges::set_from_names`], unless the nick is new and the channel
    /// already holds `most` members: then nothing is recorded and `None` comes back.
    pub fn add_within(&mut self, entry: &str, most: usize) -> Option<Occupant> {
        if self.members.len() >= most {
            let (nick, _) = self.server.prefixes.parse_names_entry(entry);
            self.find(nick)?;
        }
        Some(self.set_from_names(entry))
    }

    /// Applies a channel MODE change, such as `("+ov-v", ["alice", "bob", "carol"])`,
    /// and returns the occupants whose role or affiliation it changed, each once, in
    /// their final state, in the order first touched.
    ///
    /// Arguments are consumed as the server's `PREFIX` and `CHANMODES` say (`+k key`,
    /// `+l 10` but `-l`, `+b mask`…), so status changes later in the string find their
    /// nick. A change without a leading sign is taken as `+`. Nicks not in the channel,
    /// and status modes missing their argument, are ignored.
    pub fn apply_mode(&mut self, modes: &str, args: &[&str]) -> Vec<Occupant> {
        let mut args = args.iter();
        let mut adding = true;
        // (nick, state before this change), in the order first touched.
        let mut touched: Vec<(&str, (Role, Affiliation))> = Vec::new();
        for mode in modes.chars() {
            match mode {
                '+' => adding = true,
                '-' => adding = false,
                mode if self.server.prefixes.is_prefix_mode(mode) => {
                    let Some(&nick) = args.next() else { continue };
                    let Some(member) = self.find(nick) else {
                        continue;
                    };
                    if !touched.iter().any(|(known, _)| self.server.same(known, nick)) {
                        touched.push((nick, self.server.prefixes.highest(member.modes.letters())));
                    }
                    let server = &self.server;
                    if let Some(member) = self.members.find_mut(server.hash(nick), |m| server.same(&m.nick, nick)) {
                        member.modes.set(mode, adding);
                    }
                }
                mode => {
                    if self.server.chanmodes.takes_arg(mode, adding) {
                        args.next();
                    }
                    if !self.server.chanmodes.lists.contains(mode) {
                        self.flags.set(mode, adding);
                    }
                }
            }
        }
        touched
            .into_iter()
            .filter_map(|(nick, before)| {
                let occupant = self.occupant_of(self.find(nick)?);
                (before != (occupant.role, occupant.affiliation)).then_some(occupant)
            })
            .collect()
    }

    /// The channel's own modes that are set, as MODE changes (and the RPL_CHANNELMODEIS
    /// reply, applied as a change) left them.
    #[must_use]
    pub fn channel_modes(&self) -> ModeSet {
        self.flags
    }

    /// Records a NICK change, keeping the nick's modes; returns whether `old` was here.
    /// When `new` was already listed (a stale entry), it is replaced.
    pub fn rename(&mut self, old: &str, new: &str) -> bool {
        let Some(mut member) = self.take(old) else {
            return false;
        };
        new.clone_into(&mut member.nick);
        self.put(member);
        true
    }

    /// Forgets a nick that left (PART, KICK, QUIT); returns its last state if it was here.
    pub fn remove(&mut self, nick: &str) -> Option<Occupant> {
        let member = self.take(nick)?;
        Some(self.occupant_of(&member))
    }

    /// The occupant with this nick (compared as the server compares nicks), if here.
    #[must_use]
    pub fn occupant(&self, nick: &str) -> Option<Occupant> {
        self.find(nick).map(|m| self.occupant_of(m))
    }

    /// Whether `nick` is here.
    #[must_use]
    pub fn contains(&self, nick: &str) -> bool {
        self.find(nick).is_some()
    }

    /// Everybody here, ordered by their folded nick.
    #[must_use]
    pub fn occupants(&self) -> Vec<Occupant> {
        let mapping = self.server.mapping;
        let mut members: Vec<&Member> = self.members.iter().collect();
        members.sort_unstable_by(|a, b| mapping.folded(&a.nick).cmp(&mapping.folded(&b.nick)));
        members.into_iter().map(|m| self.occupant_of(m)).collect()
    }

    /// The status mode letters `nick` holds, highest first; `None` if not here.
    #[must_use]
    pub fn modes_of(&self, nick: &str) -> Option<Vec<char>> {
        let member = self.find(nick)?;
        Some(self.server.prefixes.modes().filter(|&m| member.modes.has(m)).collect())
    }

    /// How many nicks are here.
    #[must_use]
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether nobody is here.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Forgets every nick (before a new NAMES reply, or after leaving), keeping the
    /// server's `PREFIX` and `CHANMODES`.
    pub fn clear(&mut self) {
        self.members.clear();
    }

    /// The occupant a member is now.
    fn occupant_of(&self, member: &Member) -> Occupant {
        let (role, affiliation) = self.server.prefixes.highest(member.modes.letters());
        Occupant::new(member.nick.clone(), role, affiliation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn occ(nick: &str, role: Role, affiliation: Affiliation) -> Occupant {
        Occupant::new(nick.to_owned(), role, affiliation)
    }

    #[test]
    fn channel_modes_follow_changes_and_the_mode_reply_but_not_lists_or_statuses() {
        let mut channel = ChannelPrivileges::new();
        channel.set_from_names("@bob");
        // RPL_CHANNELMODEIS `+ntk secret`, applied as a change.
        channel.apply_mode("+ntk", &["secret"]);
        let modes = channel.channel_modes();
        assert!(modes.keyed() && modes.has('n') && modes.has('t') && !modes.moderated());
        channel.apply_mode("+mb-k+o", &["*!*@spam", "secret", "bob"]);
        let modes = channel.channel_modes();
        assert!(modes.moderated() && !modes.keyed());
        assert!(!modes.has('b') && !modes.has('o'), "a list entry and a status are not channel flags");
        channel.apply_mode("+l-m", &["10"]);
        let modes = channel.channel_modes();
        assert!(modes.has('l') && !modes.moderated());
        let mut flags = ModeSet::default();
        flags.set('Z', true);
        flags.set('!', true);
        assert!(flags.has('Z') && !flags.has('z') && !flags.has('!'));
    }

    #[test]
    fn channels_share_their_servers_modes_and_find_members_again_when_the_mapping_changes() {
        let mut server = ServerModes::default();
        server.set_prefixes(PrefixMap::from_isupport("(ov)@+").unwrap());
        let server = Arc::new(server);
        let mut one = ChannelPrivileges::on(Arc::clone(&server));
        let mut two = ChannelPrivileges::on(Arc::clone(&server));
        assert_eq!(Arc::strong_count(&server), 3, "one copy for the session's channels");
        one.set_from_names("@[Bob]");
        two.set_from_names("+carol");
        assert_eq!(one.modes_of("{bob}"), Some(vec!['o']), "rfc1459 at first");
        let mut ascii = ServerModes::clone(&server);
        ascii.set_mapping(CaseMapping::Ascii);
        let ascii = Arc::new(ascii);
        one.share(Arc::clone(&ascii));
        two.share(ascii);
        assert!(one.occupant("{bob}").is_none() && one.occupant("[BOB]").is_some(), "found again under ascii");
        assert_eq!(two.occupants(), vec![occ("carol", Role::Participant, Affiliation::Member)]);
        assert_eq!(one.len(), 1);
    }

    #[test]
    fn a_members_modes_are_a_set_of_letters() {
        let mut chan = ChannelPrivileges::new();
        chan.set_from_names("@+~alice");
        assert_eq!(chan.modes_of("alice"), Some(vec!['q', 'o', 'v']), "highest first, as PREFIX orders them");
        chan.apply_mode("-q-o", &["alice", "alice"]);
        assert_eq!(chan.modes_of("alice"), Some(vec!['v']));
        let mut set = ModeSet::default();
        set.set('v', true);
        set.set('Y', true);
        set.set('v', true);
        assert_eq!(set.letters().collect::<String>(), "vY");
    }

    #[test]
    fn nicks_are_compared_with_the_servers_case_mapping() {
        let mut rfc = ChannelPrivileges::new();
        rfc.set_from_names("[Alice]");
        assert!(rfc.occupant("{alice}").is_some(), "rfc1459 folds [] to {{}}");
        let mut ascii = ChannelPrivileges::new();
        ascii.set_mapping(CaseMapping::Ascii);
        ascii.set_from_names("[Alice]");
        assert!(ascii.occupant("[ALICE]").is_some());
        assert!(ascii.occupant("{alice}").is_none(), "ascii does not");
    }

    #[test]
    fn prefix_map_parse() {
        let map = PrefixMap::from_isupport("(qaohv)~&@%+").unwrap();
        assert_eq!(map, PrefixMap::default());
        assert_eq!(map.mode_for_prefix('@'), Some('o'));
        assert_eq!(map.prefix_for_mode('q'), Some('~'));
        assert_eq!(map.mode_for_prefix('!'), None);
        assert!(map.is_prefix_mode('h'));
        assert!(!map.is_prefix_mode('b'));
        assert_eq!(map.modes().collect::<String>(), "qaohv");
        assert_eq!(
            PrefixMap::from_isupport("PREFIX=(ov)@+")
                .unwrap()
                .modes()
                .collect::<String>(),
            "ov"
        );
        assert_eq!(PrefixMap::from_isupport("").unwrap().modes().count(), 0);
        assert_eq!(PrefixMap::from_isupport("(ov)@"), None);
        assert_eq!(PrefixMap::from_isupport("ov@+"), None);
        assert_eq!(PrefixMap::from_isupport("(ov@+"), None);
    }

    #[test]
    fn each_prefix() {
        let map = PrefixMap::default();
        let cases = [
            ("~n", Role::Moderator, Affiliation::Owner),
            ("&n", Role::Moderator, Affiliation::Admin),
            ("@n", Role::Moderator, Affiliation::Admin),
            ("%n", Role::Moderator, Affiliation::Member),
            ("+n", Role::Participant, Affiliation::Member),
            ("n", Role::Participant, Affiliation::None),
        ];
        for (entry, role, affiliation) in cases {
            assert_eq!(
                occupant_from_names_entry(entry, &map),
                occ("n", role, affiliation),
                "{entry}"
            );
        }
    }

    #[test]
    fn multi_prefix_highest_wins() {
        let map = PrefixMap::default();
        assert_eq!(
            occupant_from_names_entry("@+alice", &map),
            occ("alice", Role::Moderator, Affiliation::Admin)
        );
        assert_eq!(
            occupant_from_names_entry("+%bob", &map),
            occ("bob", Role::Moderator, Affiliation::Member)
        );
        assert_eq!(
            occupant_from_names_entry("~&@%+carol", &map),
            occ("carol", Role::Moderator, Affiliation::Owner)
        );
    }

    #[test]
    fn userhost_in_names() {
        let map = PrefixMap::default();
        assert_eq!(
            occupant_from_names_entry("alice!al@example.org", &map),
            occ("alice", Role::Participant, Affiliation::None)
        );
        assert_eq!(
            occupant_from_names_entry("@+alice!~al@host", &map),
            occ("alice", Role::Moderator, Affiliation::Admin)
        );
    }

    #[test]
    fn custom_prefix_map() {
        // Only op and voice: '%' is not a prefix, so it is part of the nick.
        let map = PrefixMap::from_isupport("(ov)@+").unwrap();
        assert_eq!(
            occupant_from_names_entry("%x", &map),
            occ("%x", Role::Participant, Affiliation::None)
        );
        // An unknown status mode ranked above 'o' counts as Admin, below as Member.
        let map = PrefixMap::from_isupport("(Yqaohvz)!~&@%+-").unwrap();
        assert_eq!(
            map.privilege('Y'),
            Some((Role::Moderator, Affiliation::Admin))
        );
        assert_eq!(
            map.privilege('z'),
            Some((Role::Participant, Affiliation::Member))
        );
        assert_eq!(map.privilege('b'), None);
        assert_eq!(
            occupant_from_names_entry("!y", &map),
            occ("y", Role::Moderator, Affiliation::Admin)
        );
    }

    #[test]
    fn names_then_lookup() {
        let mut chan = ChannelPrivileges::new();
        assert!(chan.is_empty());
        assert_eq!(
            chan.set_from_names("@Alice"),
            occ("Alice", Role::Moderator, Affiliation::Admin)
        );
        chan.set_from_names("bob");
        assert_eq!(chan.len(), 2);
        assert_eq!(
            chan.occupant("alice"),
            Some(occ("Alice", Role::Moderator, Affiliation::Admin))
        );
        assert_eq!(chan.occupant("nobody"), None);
        assert_eq!(
            chan.occupants(),
            [
                occ("Alice", Role::Moderator, Affiliation::Admin),
                occ("bob", Role::Participant, Affiliation::None),
            ]
        );
        // A later NAMES replaces what was known.
        chan.set_from_names("+alice");
        assert_eq!(
            chan.occupant("ALICE"),
            Some(occ("alice", Role::Participant, Affiliation::Member))
        );
    }

    #[test]
    fn op_then_deop_voiced_user() {
        let mut chan = ChannelPrivileges::new();
        chan.set_from_names("+alice");
        assert_eq!(
            chan.apply_mode("+o", &["alice"]),
            [occ("alice", Role::Moderator, Affiliation::Admin)]
        );
        assert_eq!(chan.modes_of("alice"), Some(vec!['o', 'v']));
        assert_eq!(
            chan.apply_mode("-o", &["alice"]),
            [occ("alice", Role::Participant, Affiliation::Member)]
        );
        assert_eq!(
            chan.apply_mode("-v", &["alice"]),
            [occ("alice", Role::Participant, Affiliation::None)]
        );
    }

    #[test]
    fn multi_prefix_names_then_deop() {
        let mut chan = ChannelPrivileges::new();
        chan.set_from_names("@+alice");
        assert_eq!(
            chan.apply_mode("-o", &["alice"]),
            [occ("alice", Role::Participant, Affiliation::Member)]
        );
    }

    #[test]
    fn plus_ov_two_args() {
        let mut chan = ChannelPrivileges::new();
        chan.set_from_names("alice");
        chan.set_from_names("bob");
        assert_eq!(
            chan.apply_mode("+ov", &["alice", "bob"]),
            [
                occ("alice", Role::Moderator, Affiliation::Admin),
                occ("bob", Role::Participant, Affiliation::Member),
            ]
        );
    }

    #[test]
    fn plus_ov_minus_v() {
        let mut chan = ChannelPrivileges::new();
        for nick in ["alice", "bob", "+carol"] {
            chan.set_from_names(nick);
        }
        assert_eq!(
            chan.apply_mode("+ov-v", &["alice", "bob", "carol"]),
            [
                occ("alice", Role::Moderator, Affiliation::Admin),
                occ("bob", Role::Participant, Affiliation::Member),
                occ("carol", Role::Participant, Affiliation::None),
            ]
        );
    }

    #[test]
    fn mixed_with_argument_modes() {
        let mut chan = ChannelPrivileges::new();
        chan.set_from_names("alice");
        chan.set_from_names("bob");
        chan.set_from_names("carol");
        // k, l and b take an argument when set; n and t never.
        assert_eq!(
            chan.apply_mode(
                "+kontlbv",
                &["secret", "alice", "10", "*!*@bad.example", "bob"]
            ),
            [
                occ("alice", Role::Moderator, Affiliation::Admin),
                occ("bob", Role::Participant, Affiliation::Member),
            ]
        );
        // -l takes no argument, -k does (type B), -b does (type A).
        assert_eq!(
            chan.apply_mode("-lkbo+v", &["secret", "*!*@bad.example", "alice", "carol"]),
            [
                occ("alice", Role::Participant, Affiliation::None),
                occ("carol", Role::Participant, Affiliation::Member),
            ]
        );
    }

    #[test]
    fn custom_chanmodes() {
        let mut chan = ChannelPrivileges::new();
        chan.set_chanmodes("CHANMODES=beIq,k,lj,imnpst");
        chan.set_from_names("alice");
        // 'j' (type C) takes an argument when set, then 'o' gets alice.
        assert_eq!(
            chan.apply_mode("+jo", &["3:5", "alice"]),
            [occ("alice", Role::Moderator, Affiliation::Admin)]
        );
        // Missing groups: nothing takes an argument but the status modes.
        chan.set_chanmodes("");
        assert_eq!(
            chan.apply_mode("-ko", &["alice"]),
            [occ("alice", Role::Participant, Affiliation::None)]
        );
    }

    #[test]
    fn unknown_nicks_ignored() {
        let mut chan = ChannelPrivileges::new();
        chan.set_from_names("alice");
        assert_eq!(
            chan.apply_mode("+oo", &["ghost", "alice"]),
            [occ("alice", Role::Moderator, Affiliation::Admin)]
        );
        assert_eq!(chan.occupant("ghost"), None);
        assert_eq!(chan.len(), 1);
        // Missing arguments are ignored too.
        assert!(chan.apply_mode("+v", &[]).is_empty());
    }

    #[test]
    fn unchanged_not_reported() {
        let mut chan = ChannelPrivileges::new();
        chan.set_from_names("@alice");
        // +v under +o changes neither role nor affiliation.
        assert!(chan.apply_mode("+v", &["alice"]).is_empty());
        // +o then -o in one change: back where it was.
        chan.set_from_names("bob");
        assert!(chan.apply_mode("+o-o", &["bob", "bob"]).is_empty());
        // Reported once, in the final state.
        assert_eq!(
            chan.apply_mode("+vho", &["bob", "bob", "bob"]),
            [occ("bob", Role::Moderator, Affiliation::Admin)]
        );
    }

    #[test]
    fn no_sign_means_plus() {
        let mut chan = ChannelPrivileges::new();
        chan.set_from_names("alice");
        assert_eq!(
            chan.apply_mode("v", &["alice"]),
            [occ("alice", Role::Participant, Affiliation::Member)]
        );
    }

    #[test]
    fn case_insensitive_nicks() {
        let mut chan = ChannelPrivileges::new();
        chan.set_from_names("Alice");
        chan.set_from_names("[x]");
        assert_eq!(
            chan.apply_mode("+ov", &["alice", "{X}"]),
            [
                occ("Alice", Role::Moderator, Affiliation::Admin),
                occ("[x]", Role::Participant, Affiliation::Member),
            ]
        );
        assert!(chan.occupant("ALICE").is_some());
        assert!(chan.occupant("{x}").is_some());
        assert!(chan.remove("{X}").is_some());
        assert!(chan.occupant("[x]").is_none());
    }

    #[test]
    fn rename_keeps_modes() {
        let mut chan = ChannelPrivileges::new();
        chan.set_from_names("@alice");
        assert!(chan.rename("Alice", "alice_"));
        assert_eq!(chan.occupant("alice"), None);
        assert_eq!(
            chan.occupant("ALICE_"),
            Some(occ("alice_", Role::Moderator, Affiliation::Admin))
        );
        // A change of case only.
        assert!(chan.rename("alice_", "Alice_"));
        assert_eq!(
            chan.occupants(),
            [occ("Alice_", Role::Moderator, Affiliation::Admin)]
        );
        assert!(!chan.rename("ghost", "spirit"));
        assert_eq!(chan.len(), 1);
    }

    #[test]
    fn remove_and_clear() {
        let mut chan = ChannelPrivileges::new();
        chan.set_from_names("+alice");
        chan.set_from_names("bob");
        assert_eq!(
            chan.remove("ALICE"),
            Some(occ("alice", Role::Participant, Affiliation::Member))
        );
        assert_eq!(chan.remove("alice"), None);
        chan.clear();
        assert!(chan.is_empty());
        assert!(chan.occupants().is_empty());
    }

    #[test]
    fn set_prefixes_changes_parsing() {
        let mut chan = ChannelPrivileges::default();
        chan.set_prefixes(PrefixMap::from_isupport("(ov)@+").unwrap());
        assert_eq!(chan.prefixes().modes().collect::<String>(), "ov");
        // 'h' is no longer a status mode: with no CHANMODES group it takes no argument.
        chan.set_from_names("alice");
        assert_eq!(
            chan.apply_mode("+ho", &["alice"]),
            [occ("alice", Role::Moderator, Affiliation::Admin)]
        );
    }

    #[test]
    fn a_full_channel_takes_no_new_nick_but_still_updates_known_ones() {
        let mut chan = ChannelPrivileges::new();
        assert!(chan.add_within("@alice", 2).is_some());
        assert!(chan.add_within("bob", 2).is_some());
        assert_eq!(chan.add_within("carol", 2), None);
        assert_eq!(chan.add_within("+BOB", 2), Some(occ("BOB", Role::Participant, Affiliation::Member)));
        assert_eq!(chan.occupants().len(), 2);
    }
}
