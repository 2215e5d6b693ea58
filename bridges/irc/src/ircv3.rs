//! IRCv3 capabilities: which ones the gateway asks for, and the pure parts of using them
//! (server-time stamps, playback batches, matching `echo-message` echoes to the user's
//! messages). The session ([`crate::session`]) does the I/O.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use bridge_core::model::Typing;

/// A capability the gateway uses when the server offers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cap {
    /// `sasl`: login (asked for only with a password).
    Sasl,
    /// `server-time`: each line's time, so replayed lines keep theirs (XEP-0203 delay).
    ServerTime,
    /// `message-tags`: tags on client lines (needed by the others to carry theirs).
    MessageTags,
    /// `echo-message`: the server sends the user's own messages back; the echo is the
    /// reflection the XMPP user sees, so they see exactly what the server took.
    EchoMessage,
    /// `away-notify`: others' AWAY changes, shown in occupant presence.
    AwayNotify,
    /// `account-notify`: others logging in or out of services accounts.
    AccountNotify,
    /// `extended-join`: JOIN carries the account of whoever joins.
    ExtendedJoin,
    /// `multi-prefix`: NAMES shows every status (`@+nick`), not only the highest.
    MultiPrefix,
    /// `chghost`: host changes as CHGHOST, not as a fake QUIT and JOIN (no noise).
    Chghost,
    /// `batch`: lines grouped, e.g. a channel's history played back on join.
    Batch,
}

impl Cap {
    /// Every capability, in the order they are requested.
    pub const ALL: [Cap; 10] = [
        Cap::Sasl,
        Cap::ServerTime,
        Cap::MessageTags,
        Cap::EchoMessage,
        Cap::AwayNotify,
        Cap::AccountNotify,
        Cap::ExtendedJoin,
        Cap::MultiPrefix,
        Cap::Chghost,
        Cap::Batch,
    ];

    /// Its name on the wire.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Cap::Sasl => "sasl",
            Cap::ServerTime => "server-time",
            Cap::MessageTags => "message-tags",
            Cap::EchoMessage => "echo-message",
            Cap::AwayNotify => "away-notify",
            Cap::AccountNotify => "account-notify",
            Cap::ExtendedJoin => "extended-join",
            Cap::MultiPrefix => "multi-prefix",
            Cap::Chghost => "chghost",
            Cap::Batch => "batch",
        }
    }

    /// The capability a `CAP` list entry names (`sasl=PLAIN` names `sasl`).
    #[must_use]
    pub fn named(entry: &str) -> Option<Cap> {
        let name = entry.split_once('=').map_or(entry, |(name, _)| name);
        Cap::ALL.into_iter().find(|cap| cap.name() == name)
    }

    fn bit(self) -> u16 {
        1 << self as u16
    }
}

/// A set of capabilities: two bytes per session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Caps(u16);

impl Caps {
    /// Whether `cap` is in the set.
    #[must_use]
    pub fn has(self, cap: Cap) -> bool {
        self.0 & cap.bit() != 0
    }

    /// Adds `cap`.
    pub fn insert(&mut self, cap: Cap) {
        self.0 |= cap.bit();
    }

    /// Removes `cap`.
    pub fn remove(&mut self, cap: Cap) {
        self.0 &= !cap.bit();
    }

    /// Only `cap`.
    #[must_use]
    pub fn only(cap: Cap) -> Caps {
        Caps(cap.bit())
    }

    /// Both sets together.
    #[must_use]
    pub fn union(self, other: Caps) -> Caps {
        Caps(self.0 | other.0)
    }

    /// This set without `other`'s.
    #[must_use]
    pub fn without(self, other: Caps) -> Caps {
        Caps(self.0 & !other.0)
    }

    /// Whether any of these capabilities needs state kept on the connection (echoes,
    /// batches, others' away messages and accounts).
    #[must_use]
    pub fn needs_state(self) -> bool {
        [Cap::EchoMessage, Cap::Batch, Cap::AwayNotify, Cap::AccountNotify, Cap::ExtendedJoin].into_iter().any(|cap| self.has(cap))
    }

    /// The capabilities a space-separated `CAP` list names (unknown ones skipped).
    #[must_use]
    pub fn parse(list: &str) -> Caps {
        let mut caps = Caps::default();
        for cap in list.split(' ').filter_map(Cap::named) {
            caps.insert(cap);
        }
        caps
    }

    /// `CAP REQ :...` for these capabilities, `None` when there are none.
    #[must_use]
    pub fn request_line(self) -> Option<String> {
        let names: Vec<&str> = Cap::ALL.into_iter().filter(|cap| self.has(*cap)).map(Cap::name).collect();
        (!names.is_empty()).then(|| format!("CAP REQ :{}", names.join(" ")))
    }
}

/// What the gateway asks for among what a server offers: everything it uses, `sasl` only
/// when it has a password to log in with.
#[must_use]
pub fn wanted(offered: Caps, has_password: bool) -> Caps {
    let mut wanted = offered;
    if !has_password {
        wanted.remove(Cap::Sasl);
    }
    wanted
}

/// How old a line's server-time must be to count as delayed when it is not in a playback
/// batch: above ordinary clock differences between servers.
pub const DELAYED_AFTER: Duration = Duration::from_secs(10);

/// Batch types whose lines are a channel's past played back (InspIRCd's `chanhistory`
/// sends `chathistory`; ZNC sends `znc.in/playback`), upper-cased as the parser gives them.
fn is_playback(kind: &str) -> bool {
    matches!(kind.to_ascii_uppercase().as_str(), "CHATHISTORY" | "DRAFT/CHATHISTORY" | "ZNC.IN/PLAYBACK")
}

/// The playback batches open on a connection (by reference tag).
#[derive(Debug, Default)]
pub struct Batches {
    /// Reference tags of open playback batches; others are not kept.
    playback: Vec<String>,
}

impl Batches {
    /// `BATCH +tag type ...` or `BATCH -tag`.
    pub fn on_batch(&mut self, reference: &str, kind: Option<&str>) {
        if let Some(tag) = reference.strip_prefix('+') {
            // A hostile server opening endless batches holds a few tags at most.
            if kind.is_some_and(is_playback) && self.playback.len() < 16 {
                self.playback.push(tag.to_owned());
            }
        } else if let Some(tag) = reference.strip_prefix('-') {
            self.playback.retain(|open| open != tag);
        }
    }

    /// Whether a line with this `batch` tag is played back.
    #[must_use]
    pub fn is_playback(&self, batch: Option<&str>) -> bool {
        batch.is_some_and(|batch| self.playback.iter().any(|open| open == batch))
    }
}

/// When a line was sent, by its `time` tag, if it is played back or older than
/// [`DELAYED_AFTER`] (for a XEP-0203 delay); `None` for a live line or a malformed time.
#[must_use]
pub fn delay(time: Option<&str>, played_back: bool, now: SystemTime) -> Option<SystemTime> {
    let then = SystemTime::from(chrono::DateTime::parse_from_rfc3339(time?).ok()?);
    let old = now.duration_since(then).is_ok_and(|age| age > DELAYED_AFTER);
    (played_back || old).then_some(then)
}

/// The `TAGMSG` that tells `target` (a nick or a channel, already safe as a word) how
/// far the user's typing is (IRCv3 `+typing`, needs `message-tags`).
#[must_use]
pub fn typing_line(target: &str, typing: Typing) -> String {
    let value = match typing {
        Typing::Active => "active",
        Typing::Paused => "paused",
        Typing::Done => "done",
    };
    format!("@+typing={value} TAGMSG {target}")
}

/// The `+typing` tag's value read (`None` for anything else).
#[must_use]
pub fn typing_of(value: Option<&str>) -> Option<Typing> {
    match value? {
        "active" => Some(Typing::Active),
        "paused" => Some(Typing::Paused),
        "done" => Some(Typing::Done),
        _ => None,
    }
}

/// The token of the gateway's WHOX queries, to tell their replies from a user's `/who`.
const WHOX_TOKEN: &str = "152";

/// Channels with more members than this are not asked who is away or logged in when
/// joined: that many replies (and occupant updates) for one join cost more than the
/// statuses are worth.
pub const WHOX_MOST_MEMBERS: usize = 500;

/// The WHOX query (ISUPPORT `WHOX`) that asks, once joined, what `away-notify` and
/// `account-notify` only tell of changes: who in `channel` is away and who is logged in
/// (token, nick, flags, account).
#[must_use]
pub fn whox_query(channel: &str) -> String {
    format!("WHO {channel} %tnfa,{WHOX_TOKEN}")
}

/// A reply (354) to [`whox_query`]: one member of the channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WhoxMember {
    /// Their nick.
    pub nick: String,
    /// Whether they are away (flags `G`, not `H`); the message is not in the reply.
    pub away: bool,
    /// Their services account (`None`: not logged in, `0` in the reply).
    pub account: Option<String>,
}

/// The member a 354 reply's arguments (our nick, token, nick, flags, account) describe,
/// if it answers the gateway's own query.
#[must_use]
pub fn whox_member(args: &[String]) -> Option<WhoxMember> {
    let [_, token, nick, flags, account] = args else { return None };
    if token != WHOX_TOKEN || nick.is_empty() {
        return None;
    }
    Some(WhoxMember { nick: nick.clone(), away: flags.starts_with('G'), account: (account != "0" && !account.is_empty()).then(|| account.clone()) })
}

/// One line of the user's, written and waiting for its `echo-message` echo.
#[derive(Debug)]
struct Written<O> {
    /// Its target, folded.
    target: String,
    /// The text after `PRIVMSG target :`, as written.
    payload: String,
    /// The message it is part of.
    origin: O,
    /// Whether it is the message's last line.
    last: bool,
}

/// What an echo turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub struct Echoed<O> {
    /// The message the echoed line belongs to.
    pub origin: O,
    /// Whether it was the message's last line (the whole message is echoed now).
    pub last: bool,
    /// Earlier messages to the same target that the server never echoed (it refused
    /// them, e.g. a moderated channel, and said so with a numeric).
    pub skipped: Vec<O>,
}

/// The user's lines written and not yet echoed, oldest first. Servers echo in the order
/// lines were written; a line they refuse is never echoed.
#[derive(Debug)]
pub struct EchoQueue<O> {
    /// The lines, oldest first.
    written: VecDeque<Written<O>>,
}

impl<O> Default for EchoQueue<O> {
    fn default() -> Self {
        EchoQueue { written: VecDeque::new() }
    }
}

/// Lines kept waiting for echoes at most: a server that never echoes costs this much.
const MAX_WAITING: usize = 1000;

impl<O: Clone + PartialEq> EchoQueue<O> {
    /// A line of the user's went out.
    pub fn written(&mut self, target: String, payload: String, origin: O, last: bool) {
        if self.written.len() >= MAX_WAITING {
            self.written.pop_front();
        }
        self.written.push_back(Written { target, payload, origin, last });
    }

    /// An echo of the user's came: the first waiting line to `target` with this text
    /// (a server may alter text, e.g. strip colours: then the first line to `target`).
    /// Lines to `target` before it were refused, and their messages are returned as
    /// skipped (each once, and not the echoed one's).
    pub fn echo(&mut self, target: &str, payload: &str) -> Option<Echoed<O>> {
        let to_target = |w: &Written<O>| w.target == target;
        let index = self
            .written
            .iter()
            .position(|w| to_target(w) && w.payload == payload)
            .or_else(|| self.written.iter().position(to_target))?;
        let line = self.written.remove(index)?;
        let mut skipped: Vec<O> = Vec::new();
        // The usual case: nothing to the target was waiting before it (no refusal).
        if !self.written.iter().take(index).any(to_target) {
            return Some(Echoed { origin: line.origin, last: line.last, skipped });
        }
        let mut kept = VecDeque::with_capacity(self.written.len());
        for (i, waiting) in self.written.drain(..).enumerate() {
            if i < index && to_target(&waiting) {
                if waiting.origin != line.origin && !skipped.contains(&waiting.origin) {
                    skipped.push(waiting.origin);
                }
            } else {
                kept.push_back(waiting);
            }
        }
        self.written = kept;
        Some(Echoed { origin: line.origin, last: line.last, skipped })
    }

    /// The server refused a line to `target` (a numeric such as 404): the message of the
    /// first line waiting for it, whose other lines are dropped too.
    pub fn refused(&mut self, target: &str) -> Option<O> {
        let index = self.written.iter().position(|w| w.target == target)?;
        let origin = self.written.remove(index)?.origin;
        self.written.retain(|w| w.origin != origin);
        Some(origin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whox_asks_for_token_nick_flags_and_account_and_reads_only_its_own_replies() {
        assert_eq!(whox_query("#rust"), "WHO #rust %tnfa,152");
        let args = |line: &str| line.split(' ').map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(
            whox_member(&args("alice 152 bob G@ bobacct")),
            Some(WhoxMember { nick: "bob".into(), away: true, account: Some("bobacct".into()) })
        );
        assert_eq!(whox_member(&args("alice 152 carol H 0")), Some(WhoxMember { nick: "carol".into(), away: false, account: None }));
        assert_eq!(whox_member(&args("alice 7 bob G bobacct")), None, "a user's own /who with another token");
        assert_eq!(whox_member(&args("alice 152 bob G")), None, "missing a field");
        assert_eq!(whox_member(&args("alice 152 bob G acct extra")), None);
    }

    #[test]
    fn requests_what_is_offered_and_used_with_sasl_only_given_a_password() {
        let offered = Caps::parse("account-notify account-tag away-notify batch cap-notify chghost echo-message extended-join inspircd.org/poison message-tags multi-prefix sasl=PLAIN server-time");
        assert_eq!(
            wanted(offered, true).request_line().as_deref(),
            Some("CAP REQ :sasl server-time message-tags echo-message away-notify account-notify extended-join multi-prefix chghost batch")
        );
        assert!(!wanted(offered, false).has(Cap::Sasl));
        assert_eq!(wanted(Caps::parse("multi-prefix"), false).request_line().as_deref(), Some("CAP REQ :multi-prefix"));
        assert_eq!(wanted(Caps::parse("sasl unknown-thing"), false).request_line(), None);
    }

    #[test]
    fn server_time_is_a_delay_only_for_played_back_or_old_lines() {
        let at = |text: &str| SystemTime::from(chrono::DateTime::parse_from_rfc3339(text).unwrap());
        let now = at("2026-12-06T05:00:45.490Z");
        assert_eq!(delay(Some("2026-12-06T05:00:44.990Z"), false, now), None, "a live line");
        assert_eq!(delay(Some("2026-12-06T05:00:44.990Z"), true, now), Some(at("2026-12-06T05:00:44.990Z")));
        assert_eq!(delay(Some("2026-12-06T04:00:00Z"), false, now), Some(at("2026-12-06T04:00:00Z")));
        assert_eq!(delay(Some("2026-12-06T06:00:00+01:00"), true, now), Some(at("2026-12-06T05:00:00Z")), "any offset");
        assert_eq!(delay(Some("yesterday"), true, now), None);
        assert_eq!(delay(None, true, now), None);
    }

    #[test]
    fn typing_is_a_client_tag_on_tagmsg_both_ways() {
        assert_eq!(typing_line("bob", Typing::Active), "@+typing=active TAGMSG bob");
        assert_eq!(typing_line("#c", Typing::Done), "@+typing=done TAGMSG #c");
        assert_eq!(typing_of(Some("paused")), Some(Typing::Paused));
        assert_eq!(typing_of(Some("typing")), None);
        assert_eq!(typing_of(None), None);
    }

    #[test]
    fn playback_batches_are_tracked_by_reference() {
        let mut batches = Batches::default();
        batches.on_batch("+1", Some("CHATHISTORY"));
        batches.on_batch("+2", Some("NETSPLIT"));
        assert!(batches.is_playback(Some("1")));
        assert!(!batches.is_playback(Some("2")));
        assert!(!batches.is_playback(None));
        batches.on_batch("-1", None);
        assert!(!batches.is_playback(Some("1")));
    }

    #[test]
    fn echoes_match_lines_in_order_and_report_refused_messages() {
        let mut queue = EchoQueue::default();
        queue.written("#a".into(), "one".into(), "m1", true);
        queue.written("#a".into(), "two, line 1".into(), "m2", false);
        queue.written("#a".into(), "two, line 2".into(), "m2", true);
        queue.written("#b".into(), "three".into(), "m3", true);
        // m1 was refused (moderated channel): the echo of m2 skips it.
        assert_eq!(queue.echo("#a", "two, line 1"), Some(Echoed { origin: "m2", last: false, skipped: vec!["m1"] }));
        // Text altered by the server: still the first line waiting for the target.
        assert_eq!(queue.echo("#a", "two, LINE 2"), Some(Echoed { origin: "m2", last: true, skipped: vec![] }));
        assert_eq!(queue.echo("#a", "nothing waits"), None);
        assert_eq!(queue.refused("#b"), Some("m3"));
        assert_eq!(queue.refused("#b"), None, "nothing waits any more");
    }

    #[test]
    fn a_refused_multi_line_message_drops_all_its_lines() {
        let mut queue = EchoQueue::default();
        queue.written("#a".into(), "1".into(), "m1", false);
        queue.written("#a".into(), "2".into(), "m1", true);
        queue.written("#a".into(), "3".into(), "m2", true);
        assert_eq!(queue.refused("#a"), Some("m1"));
        assert_eq!(queue.echo("#a", "3"), Some(Echoed { origin: "m2", last: true, skipped: vec![] }));
        assert_eq!(queue.refused("#a"), None);
    }
}
