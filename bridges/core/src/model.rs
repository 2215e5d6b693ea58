//! The neutral model: what the gateway and a bridge tell each other, in words neither
//! XMPP nor IRC nor SMTP.

use crate::Secret;

/// The user a session belongs to: their bare XMPP address as text. The core does not parse
/// it; it is an opaque, stable key that `src/` guarantees to be a normalised bare JID.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(pub String);

/// Which legacy network a session talks to. One session exists per (user, network).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NetworkId {
    /// One IRC server, by the host name the user wrote in the address.
    Irc {
        /// Lower-cased host name or IPv4 address.
        server: String,
    },
    /// The user's email account (one per user).
    Email,
}

/// The key of a session: whose, and on which network.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionKey {
    /// The user the session acts for, with their own credentials only.
    pub user: UserId,
    /// The network it is connected to.
    pub network: NetworkId,
}

/// Somebody or something on a legacy network that messages come from or go to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Peer {
    /// An IRC channel (`#rust`), seen as a group chat.
    Channel(String),
    /// An IRC user by nick.
    Nick(String),
    /// The network's server itself (IRC server notices).
    Server,
    /// An email address (`alice@example.org`).
    EmailAddress(String),
    /// Several email addresses at once, sorted and without repeats: a mail to all of
    /// them going out, a mail to the user and others (reply to all) coming in.
    EmailGroup(Vec<String>),
}

/// How a message is meant, which decides how each side renders it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// One-to-one conversation.
    Chat,
    /// To or from a channel.
    Group,
    /// An IRC NOTICE or similar automated text.
    Notice,
    /// An action (`/me waves`); the body holds the action without `/me`.
    Action,
}

/// One message, either direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The other party: the recipient going out, the sender coming in.
    pub peer: Peer,
    /// For channel messages coming in: the nick who spoke.
    pub sender: Option<String>,
    /// How to render it.
    pub kind: MessageKind,
    /// The text.
    pub body: String,
    /// A subject line (email subjects, IRC topics).
    pub subject: Option<String>,
    /// A conversation thread id (email Message-ID chains).
    pub thread: Option<String>,
    /// Going out, the XMPP id, so that a failure can point at it; coming in, a stable id
    /// (a mail's Message-ID), so that a copy delivered again after a crash is recognised.
    pub id: Option<String>,
    /// Coming in, when the network says the message was sent well before it arrives (a
    /// channel's history played back on join, with IRC `server-time`): that time, for a
    /// XEP-0203 delay. `None` for live messages.
    pub delay: Option<std::time::SystemTime>,
    /// Going out, the URLs of files the user sent (XEP-0066, as XEP-0363 clients share
    /// uploads): a bridge that carries files fetches them ([`crate::FileFetcher`]) and
    /// sends them as files (a mail's attachments). Empty coming in (a mail's files come
    /// as [`Event::Attachment`]s after its message).
    pub links: Vec<String>,
}

/// Availability of the XMPP user, which a bridge may reflect (IRC AWAY).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    /// Online and available.
    Available,
    /// Away for a short while.
    Away,
    /// Away for a long while.
    ExtendedAway,
    /// Busy.
    DoNotDisturb,
}

/// The credentials a session logs in with, as the user registered them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// No registration: IRC works with the nick of the room join, as in biboumi.
    Anonymous,
    /// IRC account.
    Irc {
        /// The nick to use on every IRC server.
        nick: String,
        /// SASL PLAIN or NickServ password.
        password: Option<Secret>,
    },
    /// Email account.
    Email {
        /// The user's address, the From of every mail.
        address: String,
        /// IMAP/SMTP password.
        password: Secret,
        /// Login name when it is not the address.
        login: Option<String>,
        /// `host:port` of the IMAP server when not from a provider preset.
        imap_server: Option<String>,
        /// `host:port` of the SMTP server when not from a provider preset.
        smtp_server: Option<String>,
        /// Whether delivered mail is marked read in the mailbox.
        mark_seen: bool,
        /// Whether a copy of each mail sent goes to the mailbox's Sent folder.
        save_sent: bool,
        /// The name shown with the address in the From of mail sent (`None`: the
        /// address alone).
        display_name: Option<String>,
        /// Whether mail the user's client marks displayed (XEP-0333) is marked read.
        mark_displayed: bool,
        /// How many of the newest mails' correspondents join the user's roster when the
        /// session first opens this account (0: none).
        import_contacts: u32,
        /// Folders watched besides INBOX.
        folders: Vec<String>,
    },
}

/// What the gateway asks a session to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Send a message to `message.peer`.
    Send(Message),
    /// Set a channel's topic.
    SetTopic {
        /// The channel.
        channel: String,
        /// The new topic.
        topic: String,
    },
    /// Change the user's nick on this network.
    ChangeNick {
        /// The new nick.
        nick: String,
    },
    /// Join a channel under a nick.
    Join {
        /// The channel.
        channel: String,
        /// The nick asked for (a registered nick wins).
        nick: String,
        /// A channel key, if the user gave one.
        password: Option<Secret>,
    },
    /// Leave a channel.
    Leave {
        /// The channel.
        channel: String,
        /// Why, shown to the others.
        reason: Option<String>,
    },
    /// The user's availability changed.
    SetAvailability {
        /// The new availability.
        availability: Availability,
        /// Their status text.
        status: Option<String>,
    },
    /// Invite `nick` to `channel`.
    Invite {
        /// The channel.
        channel: String,
        /// Who is invited.
        nick: String,
    },
    /// The user is typing to `peer`, or stopped (XEP-0085 chat states): IRCv3 `+typing`
    /// where the server carries client tags, nothing elsewhere.
    Typing {
        /// To whom: a nick or a channel.
        peer: Peer,
        /// How far along.
        typing: Typing,
    },
    /// Say what the session knows of a joined channel (service discovery): `None` when
    /// it is not in the channel on the current connection.
    DescribeChannel {
        /// The channel.
        channel: String,
        /// Whether the occupants' nicks are wanted (room items), or only their count.
        nicks: bool,
        /// Where the answer goes.
        reply: Reply<Option<ChannelInfo>>,
    },
    /// List the server's channels (IRC `LIST`, service discovery of the server): the
    /// listing fetched on this session's connection, or one it fetched a moment ago.
    ListChannels {
        /// Where the listing goes.
        reply: Reply<std::sync::Arc<ChannelListing>>,
    },
    /// The user's client showed the message `id` from `peer` to them (XEP-0333
    /// `displayed`): a mailbox marks that mail read, if the user chose so.
    MarkRead {
        /// Whom the message came from.
        peer: Peer,
        /// The message's id as the gateway gave it (a mail's Message-ID).
        id: String,
    },
    /// End the session: the user went offline, unregistered, or the gateway stops.
    Shutdown {
        /// Why, for a QUIT message or a log line.
        reason: String,
    },
}

/// Where a session sends the answer to a question of the gateway's (a `Command` that
/// asks): sent once; a session that drops it unanswered (it ended) makes the waiter's
/// receiver fail. Clones share one answer; equal when they do.
pub struct Reply<T>(std::sync::Arc<std::sync::Mutex<Option<tokio::sync::oneshot::Sender<T>>>>);

impl<T> Reply<T> {
    /// A reply, and where its waiter gets the answer.
    #[must_use]
    pub fn new() -> (Reply<T>, tokio::sync::oneshot::Receiver<T>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (Reply(std::sync::Arc::new(std::sync::Mutex::new(Some(tx)))), rx)
    }

    /// Answers (the first call only; a waiter gone meanwhile is no error).
    pub fn send(&self, answer: T) {
        let sender = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        if let Some(sender) = sender {
            let _ = sender.send(answer);
        }
    }
}

impl<T> Clone for Reply<T> {
    fn clone(&self) -> Self {
        Reply(std::sync::Arc::clone(&self.0))
    }
}

impl<T> std::fmt::Debug for Reply<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reply")
    }
}

impl<T> PartialEq for Reply<T> {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

impl<T> Eq for Reply<T> {}

/// What a session knows of a channel it is in, for service discovery (XEP-0045 §6.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelInfo {
    /// The channel's name as the server spells it.
    pub name: String,
    /// Its topic, if one is set.
    pub topic: Option<String>,
    /// `+m`: only voiced nicks and operators may speak.
    pub moderated: bool,
    /// `+k`: joining takes a key.
    pub keyed: bool,
    /// How many nicks are in it (the user included).
    pub occupants: usize,
    /// Their nicks, when asked for (`Command::DescribeChannel::nicks`); else empty.
    pub nicks: Vec<String>,
}

/// One channel of a server's `LIST` (RPL_LIST).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedChannel {
    /// Its name as the server spells it.
    pub name: String,
    /// How many users the server says are in it.
    pub users: u32,
    /// Its topic (empty when none; shortened when long).
    pub topic: String,
}

/// A server's channels, as its `LIST` gave them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChannelListing {
    /// The channels ordered by name (byte order), each name once.
    pub channels: Vec<ListedChannel>,
    /// Whether the server ended the list (RPL_LISTEND) within the time allowed and
    /// every channel was kept; else it holds what arrived (up to the session's bound).
    pub complete: bool,
    /// The server's words when it refused to list (RPL_TRYAGAIN: "server load is
    /// temporarily too heavy").
    pub refused: Option<String>,
}

/// Typing notifications (IRCv3 `+typing`, XEP-0085 chat states).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Typing {
    /// Typing now (`composing`).
    Active,
    /// Stopped for a while, text still there (`paused`).
    Paused,
    /// Not typing any more: sent, or the text cleared (`active`, `inactive`, `gone`).
    Done,
}

/// A room occupant's role (XEP-0045 §5.1), from IRC channel prefixes and modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// No voice in a moderated channel.
    Visitor,
    /// An ordinary member (or voiced: `+v`).
    Participant,
    /// May kick and set the topic (`%`, `@`, `&`, `~`).
    Moderator,
}

/// A room occupant's affiliation (XEP-0045 §5.2), from IRC channel prefixes and modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Affiliation {
    /// No standing.
    None,
    /// Voiced or half-op.
    Member,
    /// Channel operator (`@`) or admin (`&`).
    Admin,
    /// Channel founder (`~`).
    Owner,
}

/// Somebody in a channel.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Occupant {
    /// Their nick, which is their occupant resource.
    pub nick: String,
    /// What they may do.
    pub role: Role,
    /// Their standing.
    pub affiliation: Affiliation,
    /// Their away message while they are away (IRCv3 `away-notify`), shown as their
    /// presence's `away` show and status.
    pub away: Option<String>,
    /// The services account they are logged in to (IRCv3 `account-notify`,
    /// `extended-join`), shown in their presence's status.
    pub account: Option<String>,
}

impl Occupant {
    /// Somebody known by nick, role and affiliation only.
    #[must_use]
    pub fn new(nick: String, role: Role, affiliation: Affiliation) -> Self {
        Occupant { nick, role, affiliation, away: None, account: None }
    }
}

/// How a network folds names before comparing them (IRC's `CASEMAPPING`): `#Foo[` and
/// `#foo{` are one channel under `rfc1459`, two under `ascii`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum CaseMapping {
    /// Only `A-Z` fold to `a-z`.
    Ascii,
    /// `ascii`, plus `[]\~` fold to `{}|^` (the IRC default).
    #[default]
    Rfc1459,
    /// `ascii`, plus `[]\` fold to `{}|` (not `~`).
    StrictRfc1459,
}

impl CaseMapping {
    /// The mapping an `RPL_ISUPPORT` `CASEMAPPING=` value names, if we know it.
    #[must_use]
    pub fn from_isupport(value: &str) -> Option<CaseMapping> {
        match value.to_ascii_lowercase().as_str() {
            "ascii" => Some(CaseMapping::Ascii),
            "rfc1459" => Some(CaseMapping::Rfc1459),
            "strict-rfc1459" => Some(CaseMapping::StrictRfc1459),
            _ => None,
        }
    }

    /// `name` folded: equal results mean the same channel or nick. Non-ASCII characters
    /// are left alone, as every mapping above does.
    #[must_use]
    pub fn fold(self, name: &str) -> String {
        self.folded(name).into_owned()
    }

    /// [`fold`](Self::fold), borrowing `name` when it is folded already (most names are):
    /// for lookups on the path of every line.
    #[must_use]
    pub fn folded(self, name: &str) -> std::borrow::Cow<'_, str> {
        if !name.bytes().any(|b| self.fold_byte(b) != b) {
            return std::borrow::Cow::Borrowed(name);
        }
        std::borrow::Cow::Owned(name.chars().map(|c| self.fold_char(c)).collect())
    }

    /// One character folded (every mapping folds characters one to one).
    #[must_use]
    pub fn fold_char(self, c: char) -> char {
        self.folds(c).unwrap_or(c)
    }

    /// Whether `a` and `b` are one name, compared without folding either into a string.
    #[must_use]
    pub fn same(self, a: &str, b: &str) -> bool {
        a.len() == b.len() && a.bytes().zip(b.bytes()).all(|(x, y)| self.fold_byte(x) == self.fold_byte(y))
    }

    /// One byte of a UTF-8 name folded. Every mapping folds ASCII characters to ASCII
    /// characters and leaves the others alone, so a name folds byte by byte: what the
    /// lookups on the path of every line use (no character decoding).
    #[must_use]
    pub fn fold_byte(self, b: u8) -> u8 {
        match (self, b) {
            (_, b'A'..=b'Z') => b.to_ascii_lowercase(),
            (CaseMapping::Rfc1459 | CaseMapping::StrictRfc1459, b'[') => b'{',
            (CaseMapping::Rfc1459 | CaseMapping::StrictRfc1459, b']') => b'}',
            (CaseMapping::Rfc1459 | CaseMapping::StrictRfc1459, b'\\') => b'|',
            (CaseMapping::Rfc1459, b'~') => b'^',
            _ => b,
        }
    }

    /// What `c` folds to, if it changes.
    fn folds(self, c: char) -> Option<char> {
        let b = u8::try_from(c).ok().filter(u8::is_ascii)?;
        let folded = self.fold_byte(b);
        (folded != b).then_some(char::from(folded))
    }
}

/// Told once the XMPP server has routed what the gateway wrote before (see
/// `Event::WhenRouted`). Clones share one acknowledgement; equal when they do.
#[derive(Debug, Clone)]
pub struct RoutedAck(std::sync::Arc<std::sync::Mutex<Option<tokio::sync::oneshot::Sender<()>>>>);

impl RoutedAck {
    /// An acknowledgement, and where its waiter learns it came (the receiver fails if the
    /// acknowledgement is dropped undone: the gateway stopped first).
    #[must_use]
    pub fn new() -> (RoutedAck, tokio::sync::oneshot::Receiver<()>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (RoutedAck(std::sync::Arc::new(std::sync::Mutex::new(Some(tx)))), rx)
    }

    /// Acknowledges (once; later calls do nothing).
    pub fn done(&self) {
        let sender = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        if let Some(sender) = sender {
            let _ = sender.send(());
        }
    }
}

impl PartialEq for RoutedAck {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for RoutedAck {}

/// Why an occupant left a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Departure {
    /// PART.
    Part,
    /// QUIT: they left the whole network.
    Quit,
    /// KICK by this nick.
    Kicked {
        /// Who kicked them.
        by: String,
    },
}

/// Why something a user asked for failed, in the terms the gateway maps to XMPP errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The network refused: banned, or not allowed.
    Forbidden,
    /// A password or key was wrong or missing.
    NotAuthorized,
    /// Not found: no such nick or channel.
    NotFound,
    /// The request made no sense to the network.
    NotAcceptable,
    /// The network is unreachable or the session is down.
    Unavailable,
    /// The user must register first.
    RegistrationRequired,
    /// The gateway's network policy forbids it (a server on a private address, say).
    NotAllowed,
    /// A limit of the gateway's (`[limits]`) is reached: try again later.
    ResourceConstraint,
}

/// A file that came with a message (a mail's attachment).
#[derive(Clone, PartialEq, Eq)]
pub struct Attachment {
    /// The file name as the sender gave it (may be anything: the gateway sanitises it
    /// before it becomes part of a URL).
    pub name: String,
    /// The MIME type, lower-cased (`application/pdf`).
    pub content_type: String,
    /// The decoded bytes.
    pub content: Vec<u8>,
}

impl std::fmt::Debug for Attachment {
    /// Name, type and size: the bytes would flood a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attachment")
            .field("name", &self.name)
            .field("content_type", &self.content_type)
            .field("size", &self.content.len())
            .finish()
    }
}

/// What a session reports to the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A message arrived from the network.
    Message(Message),
    /// People the user corresponded with (the addresses of their latest mails, with
    /// names), for the roster: reported once, when the user asked for an import.
    Correspondents(Vec<(String, Option<String>)>),
    /// A file came with the last message from `peer` (already listed in its body): the
    /// gateway shares it by HTTP upload (XEP-0363) where the user's server offers that.
    Attachment {
        /// Who sent it.
        peer: Peer,
        /// The file.
        attachment: Attachment,
    },
    /// Something the user asked for failed.
    Failure {
        /// Whom the failed request was about, so the error goes back from that address.
        peer: Option<Peer>,
        /// The XMPP id of the message that failed, when known.
        id: Option<String>,
        /// The kind of failure.
        kind: FailureKind,
        /// The network's own words.
        text: String,
    },
    /// The user is in `channel`, under `nick` (which may differ from the nick asked for),
    /// among `occupants` (the user included), with the current topic.
    Joined {
        /// The channel.
        channel: String,
        /// The nick the server gave the user.
        nick: String,
        /// Everybody present, the user included.
        occupants: Vec<Occupant>,
        /// The topic, if one is set.
        topic: Option<String>,
    },
    /// The user could not join `channel`.
    JoinFailed {
        /// The channel.
        channel: String,
        /// Why, as a failure kind.
        kind: FailureKind,
        /// The server's words.
        text: String,
    },
    /// Somebody else joined, or their role or affiliation changed.
    Occupant {
        /// The channel.
        channel: String,
        /// Who, with their current role.
        occupant: Occupant,
    },
    /// Somebody (possibly the user) left a channel.
    Left {
        /// The channel.
        channel: String,
        /// Who left, with the role and affiliation they had.
        occupant: Occupant,
        /// How.
        departure: Departure,
        /// Their reason.
        reason: Option<String>,
    },
    /// Somebody (possibly the user) changed nick; reported once per channel they are in.
    NickChanged {
        /// The channel.
        channel: String,
        /// The old nick.
        old: String,
        /// Who they are now: the new nick, with their role and affiliation.
        occupant: Occupant,
    },
    /// A barrier: `ack` is done once the XMPP server has routed every stanza made of this
    /// session's earlier events. The email session moves its IMAP checkpoint only then,
    /// so a crash never loses a mail it counted as delivered.
    WhenRouted(RoutedAck),
    /// How this network compares channel names and nicks; reported once per connection
    /// before any `Joined`, so that the gateway keys rooms the way the network does.
    CaseMapping(CaseMapping),
    /// The topic of a channel changed (or was reported on join).
    Topic {
        /// The channel.
        channel: String,
        /// The topic text (empty when cleared).
        topic: String,
        /// Who set it, if known.
        by: Option<String>,
    },
    /// The network connection dropped; the session is reconnecting. The user is out of
    /// these channels until a `Joined` for each comes again.
    Disconnected {
        /// The channels the user was in.
        channels: Vec<String>,
        /// Why.
        reason: String,
    },
    /// Whether the network echoes the user's own messages back on this connection (IRCv3
    /// `echo-message`): then those echoes, as `Message`s from the user's own nick with the
    /// message's id, are the room's reflection, and the gateway makes none itself.
    /// Reported once per connection, before any `Joined`.
    Echoes(bool),
    /// The network took a private message of the user's (its last line was written, or
    /// echoed back): the gateway's answer to a XEP-0184 receipt request. Not a human
    /// reading it, which IRC cannot tell.
    Accepted {
        /// To whom.
        peer: Peer,
        /// The message's XMPP id.
        id: String,
    },
    /// Someone is typing to the user, or in a channel (IRCv3 `+typing`).
    Typing {
        /// Where: the nick (privately) or the channel.
        peer: Peer,
        /// Who, in a channel.
        sender: Option<String>,
        /// How far along.
        typing: Typing,
    },
    /// Someone invited the user to a channel (IRC INVITE).
    Invited {
        /// The channel.
        channel: String,
        /// Who invited them (`None`: the server).
        by: Option<String>,
    },
    /// A private contact left the network (QUIT): show them offline.
    PeerQuit {
        /// Their nick.
        nick: String,
        /// Their quit message.
        reason: Option<String>,
    },
    /// The network account became usable or unusable (an email session's IMAP login
    /// worked, or the password was refused, or the server is down): contacts of that
    /// network show as available or unavailable with the reason.
    NetworkStatus {
        /// Whether the account works now.
        online: bool,
        /// Why not, for the user.
        reason: Option<String>,
    },
    /// The session ended on its own (connection lost for good, credentials refused).
    Ended {
        /// Why, for the user.
        reason: String,
        /// Commands that reached the session after it decided to end: the gateway hands
        /// them to a new session, so nothing the user asked for is lost.
        unhandled: Vec<Command>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_mappings_fold_as_their_names_say() {
        let name = "#Foo[]\\~Ü";
        assert_eq!(CaseMapping::Ascii.fold(name), "#foo[]\\~Ü");
        assert_eq!(CaseMapping::Rfc1459.fold(name), "#foo{}|^Ü");
        assert_eq!(CaseMapping::StrictRfc1459.fold(name), "#foo{}|~Ü");
        assert_eq!(CaseMapping::Rfc1459.fold("#Foo["), CaseMapping::Rfc1459.fold("#foo{"));
        assert_ne!(CaseMapping::Ascii.fold("#Foo["), CaseMapping::Ascii.fold("#foo{"));
        for mapping in [CaseMapping::Ascii, CaseMapping::Rfc1459, CaseMapping::StrictRfc1459] {
            for (a, b) in [("#Foo[", "#foo{"), ("Bob~", "bob^"), ("Ü", "ü"), ("ab", "abc"), ("x", "x"), ("#Ü[", "#Ü{"), ("Ā", "ā"), ("é~", "é^")] {
                assert_eq!(mapping.same(a, b), mapping.fold(a) == mapping.fold(b), "{mapping:?}: {a} vs {b}");
            }
            // Byte by byte is character by character: no byte of another character is
            // ASCII, and none is changed.
            for c in ['A', 'z', '[', '~', '\\', 'Ü', 'ā', '€', '\u{10FFFF}'] {
                let mut utf8 = [0; 4];
                let folded: Vec<u8> = c.encode_utf8(&mut utf8).bytes().map(|b| mapping.fold_byte(b)).collect();
                assert_eq!(folded, mapping.fold_char(c).to_string().into_bytes(), "{mapping:?}: {c}");
            }
        }
    }

    #[tokio::test]
    async fn a_reply_is_answered_once_and_a_dropped_one_fails_its_waiter() {
        let (reply, answer) = Reply::<u32>::new();
        let copy = reply.clone();
        assert_eq!(reply, copy);
        copy.send(1);
        reply.send(2);
        assert_eq!(answer.await.unwrap(), 1, "the first answer only");
        let (reply, answer) = Reply::<u32>::new();
        drop(reply);
        assert!(answer.await.is_err(), "a session that ended never answers: its waiter knows");
    }

    #[test]
    fn case_mappings_are_read_from_isupport() {
        assert_eq!(CaseMapping::from_isupport("ascii"), Some(CaseMapping::Ascii));
        assert_eq!(CaseMapping::from_isupport("rfc1459"), Some(CaseMapping::Rfc1459));
        assert_eq!(CaseMapping::from_isupport("strict-rfc1459"), Some(CaseMapping::StrictRfc1459));
        assert_eq!(CaseMapping::from_isupport("rfc7613"), None);
        assert_eq!(CaseMapping::default(), CaseMapping::Rfc1459);
    }
}
