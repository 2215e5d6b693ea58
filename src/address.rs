//! Gateway addresses: what the localpart (and, for rooms, the resource) of a JID on the
//! gateway's domain points at, and back.
//!
//! This module is pure: no I/O, no XMPP types, only `std` and `thiserror`. The XMPP layer
//! splits a JID and hands the localpart to [`parse_localpart`]; it builds JIDs from the
//! string returned by [`format_localpart`].
//!
//! | localpart                 | [`Address`]                                   |
//! |---------------------------|-----------------------------------------------|
//! | (none)                    | [`Address::Gateway`]                          |
//! | `#chan%irc.example.org`   | [`Address::IrcChannel`] (a MUC room)          |
//! | `nick%irc.example.org`    | [`Address::IrcUser`]                          |
//! | `irc.example.org`         | [`Address::IrcServer`]                        |
//! | `alice\40example.org`     | [`Address::Email`]                            |
//! | `a\40x.org,b\40y.org`     | [`Address::EmailGroup`] (one mail to all)     |
//!
//! How a localpart is read, after XEP-0106 unescaping:
//!
//! 1. empty: the gateway itself;
//! 2. an `@` after the last `%` (or an `@` and no `%` at all): an email address. An IRC
//!    server name can never hold an `@`, so this reading only applies to localparts that
//!    would otherwise be invalid IRC addresses; it lets email addresses with a `%` in
//!    their local part (XEP-0106's own example `here's_a_wild_&_/cr%zy/_address`) through.
//!    Commas separate the addresses of a group (no address holds one);
//! 3. otherwise, with a `%`: IRC. The text is split at the **last** `%` into a name and a
//!    server; a name starting with `#` or `&` is a channel, any other a nick;
//! 4. otherwise: an IRC server (a hostname or an IPv4 address). A lone `#chan` or `&chan`
//!    gets a specific "names no server" error.
//!
//! Everything is validated; nothing is guessed. Servers and email domains are lower-cased,
//! channel names, nicks and email local parts keep their case.
//!
//! Characters a JID localpart cannot hold (space `"` `&` `'` `/` `:` `<` `>` `@`) are
//! escaped as in XEP-0106 (`\20` … `\40`), and a backslash is escaped (`\5c`) only where
//! it would otherwise start one of those ten escape sequences (XEP-0106 §4.2, §4.3 and the
//! business rules). Escape sequences are lower-case only ("CASE IS SIGNIFICANT"): `\3A`
//! is plain text.
//!
//! This module does not apply PRECIS/nodeprep to non-ASCII text; the XMPP server does that.
//! Every address it formats fits in a 1023-byte localpart (at most 200-byte channels and
//! 253-byte servers, and escaping at most triples ASCII).

use std::fmt;
use std::net::Ipv4Addr;

/// Longest IRC channel name accepted, in bytes (prefix included).
pub const MAX_CHANNEL_LEN: usize = 200;
/// Longest IRC nick accepted, in bytes.
pub const MAX_NICK_LEN: usize = 64;
/// Longest hostname accepted (IRC server or email domain), in bytes.
pub const MAX_HOSTNAME_LEN: usize = 253;
/// Longest label (the text between two dots) of a hostname, in bytes.
pub const MAX_LABEL_LEN: usize = 63;
/// Longest email local part (before the `@`), in bytes (RFC 5321 §4.5.3.1.1).
pub const MAX_EMAIL_LOCAL_LEN: usize = 64;
/// Longest email address, in bytes (RFC 5321 path limit less the angle brackets).
pub const MAX_EMAIL_LEN: usize = 254;
/// Most addresses in one group address (`a\40x.org,b\40y.org@gw`): one mail goes to
/// all of them.
pub const MAX_GROUP_ADDRESSES: usize = 20;

/// The forms [`from_legacy_prompt`] accepts, for the `<desc>` of an XEP-0100
/// `jabber:iq:gateway` answer and for error messages.
pub const PROMPT_FORMS: &str = "an email address (`alice@example.org`), an IRC channel \
(`#chan%irc.example.org`, `#chan@irc.example.org`, `#chan irc.example.org`, \
`irc://irc.example.org/#chan` or `ircs://irc.example.org/#chan`) or an IRC user \
(`nick%irc.example.org`)";

/// What a JID on the gateway's domain points at.
///
/// Values built by [`parse_localpart`] and [`from_legacy_prompt`] are valid and
/// normalised (servers and email domains lower-case); for those,
/// `parse_localpart(&format_localpart(&a)) == Ok(a)`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Address {
    /// The gateway itself (empty localpart): registration, disco, ad-hoc commands.
    Gateway,
    /// An IRC channel, served as a MUC room (`#chan%irc.example.org`); the JID resource,
    /// if any, is an occupant nick (see [`parse_occupant_nick`]).
    IrcChannel {
        /// The channel name with its `#` or `&` prefix, case kept (`#Rust`).
        channel: String,
        /// The IRC server: a lower-case hostname or an IPv4 address.
        server: String,
    },
    /// An IRC user, for private messages (`nick%irc.example.org`).
    IrcUser {
        /// The nick, case kept.
        nick: String,
        /// The IRC server: a lower-case hostname or an IPv4 address.
        server: String,
    },
    /// An IRC server: its notices, and raw commands from the user (`irc.example.org`).
    IrcServer {
        /// The IRC server: a lower-case hostname or an IPv4 address.
        server: String,
    },
    /// An email address (`alice\40example.org` in the localpart).
    Email {
        /// The address, unescaped, local part as given, domain lower-cased:
        /// `alice@example.org`.
        address: String,
    },
    /// Several email addresses, separated by commas in the localpart
    /// (`bob\40example.org,carol\40example.net`): one conversation with all of them.
    EmailGroup {
        /// Two or more addresses as [`Address::Email`] holds one, sorted, without repeats.
        addresses: Vec<String>,
    },
}

/// Why a string is not a valid IRC server name (or email domain).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServerProblem {
    /// Nothing at all.
    Empty,
    /// Longer than [`MAX_HOSTNAME_LEN`] bytes.
    TooLong,
    /// A character other than an ASCII letter, digit, hyphen or dot.
    ForbiddenChar(char),
    /// An empty label: a leading, trailing or doubled dot.
    EmptyLabel,
    /// A label longer than [`MAX_LABEL_LEN`] bytes.
    LabelTooLong,
    /// A label that starts or ends with a hyphen.
    HyphenAtLabelEdge,
    /// Only digits and dots, but not an IPv4 address (`256.1.1.1`, `1.2.3`, `01.2.3.4`).
    InvalidIpv4,
}

impl fmt::Display for ServerProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("it is empty"),
            Self::TooLong => write!(f, "it is longer than {MAX_HOSTNAME_LEN} bytes"),
            Self::ForbiddenChar(c) => write!(
                f,
                "it contains {}, but a hostname has only ASCII letters, digits, `-` and `.`",
                ShownChar(*c)
            ),
            Self::EmptyLabel => {
                f.write_str("it has an empty label (a leading, trailing or doubled `.`)")
            }
            Self::LabelTooLong => write!(f, "a label is longer than {MAX_LABEL_LEN} bytes"),
            Self::HyphenAtLabelEdge => f.write_str("a label starts or ends with `-`"),
            Self::InvalidIpv4 => {
                f.write_str("it is all digits and dots but not an IPv4 address like `192.0.2.1`")
            }
        }
    }
}

/// Why a string is not a valid IRC channel name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChannelProblem {
    /// It does not start with `#` or `&`.
    NoPrefix,
    /// Longer than [`MAX_CHANNEL_LEN`] bytes.
    TooLong,
    /// A space or other whitespace character.
    Whitespace(char),
    /// A comma (it separates channels in IRC commands).
    Comma,
    /// A control character: NUL, BEL, CR, LF, IRC formatting codes…
    ControlChar(char),
}

impl fmt::Display for ChannelProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoPrefix => f.write_str("it does not start with `#` or `&`"),
            Self::TooLong => write!(f, "it is longer than {MAX_CHANNEL_LEN} bytes"),
            Self::Whitespace(c) => write!(f, "it contains whitespace ({})", ShownChar(*c)),
            Self::Comma => f.write_str("it contains `,`"),
            Self::ControlChar(c) => write!(f, "it contains {}", ShownChar(*c)),
        }
    }
}

/// Why a string is not a valid IRC nick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NickProblem {
    /// Nothing at all.
    Empty,
    /// Longer than [`MAX_NICK_LEN`] bytes.
    TooLong,
    /// A space or other whitespace character.
    Whitespace(char),
    /// A control character: NUL, BEL, CR, LF, IRC formatting codes…
    ControlChar(char),
    /// One of `,` `!` `@` `*` `?`.
    ForbiddenChar(char),
    /// It starts with `#`, `&`, `:`, `$`, a digit or `-`.
    BadFirstChar(char),
}

impl fmt::Display for NickProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("it is empty"),
            Self::TooLong => write!(f, "it is longer than {MAX_NICK_LEN} bytes"),
            Self::Whitespace(c) => write!(f, "it contains whitespace ({})", ShownChar(*c)),
            Self::ControlChar(c) => write!(f, "it contains {}", ShownChar(*c)),
            Self::ForbiddenChar(c) => write!(
                f,
                "it contains {}; a nick has none of `,` `!` `@` `*` `?`",
                ShownChar(*c)
            ),
            Self::BadFirstChar(c) => write!(
                f,
                "it starts with {}; a nick does not start with `#` `&` `:` `$`, a digit or `-`",
                ShownChar(*c)
            ),
        }
    }
}

/// Why a string is not a valid email address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EmailProblem {
    /// There is no `@`.
    NoAt,
    /// There is more than one `@`.
    MoreThanOneAt,
    /// Nothing before the `@`.
    EmptyLocalPart,
    /// The local part is longer than [`MAX_EMAIL_LOCAL_LEN`] bytes.
    LocalPartTooLong,
    /// The local part has a character outside RFC 5322 `atext` and `.`: whitespace, a
    /// control character, or one of `<` `>` `,` `;` `"` `(` `)` `[` `]` `\` `:`, or
    /// anything non-ASCII.
    ForbiddenChar(char),
    /// The local part starts or ends with `.`, or has `..`.
    MisplacedDot,
    /// The domain is not a valid hostname.
    Domain(ServerProblem),
    /// The domain is an IP address (a mail domain is a hostname).
    IpDomain,
    /// The whole address is longer than [`MAX_EMAIL_LEN`] bytes.
    TooLong,
}

impl fmt::Display for EmailProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoAt => f.write_str("it has no `@`"),
            Self::MoreThanOneAt => f.write_str("it has more than one `@`"),
            Self::EmptyLocalPart => f.write_str("nothing comes before the `@`"),
            Self::LocalPartTooLong => {
                write!(
                    f,
                    "the part before the `@` is longer than {MAX_EMAIL_LOCAL_LEN} bytes"
                )
            }
            Self::ForbiddenChar(c) => write!(
                f,
                "the part before the `@` contains {}, which the gateway does not accept there",
                ShownChar(*c)
            ),
            Self::MisplacedDot => {
                f.write_str("the part before the `@` starts or ends with `.` or has `..`")
            }
            Self::Domain(problem) => write!(f, "its domain is not a valid hostname: {problem}"),
            Self::IpDomain => f.write_str("its domain is an IP address, not a hostname"),
            Self::TooLong => write!(f, "it is longer than {MAX_EMAIL_LEN} bytes"),
        }
    }
}

/// Why an `irc://` or `ircs://` URL typed at the XEP-0100 prompt was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UrlProblem {
    /// No channel after the server (`irc://irc.example.org/`).
    NoChannel,
    /// A user name or password before the server (`irc://nick@irc.example.org/#chan`).
    Credentials,
    /// A port that is not a number from 1 to 65535.
    BadPort,
    /// A `%` not followed by two hex digits, or percent-encoded bytes that are not UTF-8.
    BadPercentEncoding,
}

impl fmt::Display for UrlProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoChannel => f.write_str("it names no channel"),
            Self::Credentials => {
                f.write_str("it has a user name or password, which belong in the registration form")
            }
            Self::BadPort => f.write_str("its port is not a number from 1 to 65535"),
            Self::BadPercentEncoding => {
                f.write_str("it has a `%` not followed by two hex digits, or encodes invalid UTF-8")
            }
        }
    }
}

/// Why a localpart, occupant nick or typed address does not point at anything.
///
/// Every message says what is wrong and what a valid address looks like. Values from the
/// input are shown with control characters as `U+XXXX` and cut after 100 characters, so a
/// message is always safe to put in an XMPP error `<text>`.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AddressError {
    /// Nothing before the last `%` (`%irc.example.org`).
    #[error(
        "nothing comes before the `%` in `{}`: write `#chan%irc.example.org` for an IRC \
         channel or `nick%irc.example.org` for an IRC user (and `alice\\40example.org`, \
         not `alice%example.org`, for an email address)",
        Shown(.input)
    )]
    MissingName {
        /// The unescaped localpart or typed text.
        input: String,
    },
    /// A channel or nick without a server (`#chan`, `#chan%`, `nick%`).
    #[error("`{}` names no IRC server: write `{}%irc.example.org`", Shown(.name), Shown(.name))]
    MissingServer {
        /// The channel name or nick that lacks a server.
        name: String,
    },
    /// The server part is not a hostname or IPv4 address.
    #[error(
        "`{}` is not a valid IRC server: {problem}; a server is a hostname or IPv4 address \
         such as `irc.example.org` (as in `#chan%irc.example.org` or `nick%irc.example.org`; \
         an email address is written `alice\\40example.org`)",
        Shown(.server)
    )]
    InvalidServer {
        /// The server as given (unescaped).
        server: String,
        /// What is wrong with it.
        problem: ServerProblem,
    },
    /// The name before the `%` starts with `#` or `&` but is not a valid channel name.
    #[error(
        "`{}` is not a valid IRC channel name: {problem}; a channel is joined as \
         `#chan%irc.example.org`",
        Shown(.channel)
    )]
    InvalidChannel {
        /// The channel name as given (unescaped).
        channel: String,
        /// What is wrong with it.
        problem: ChannelProblem,
    },
    /// The name before the `%` (or an occupant resource) is not a valid IRC nick.
    #[error(
        "`{}` is not a valid IRC nick: {problem}; an IRC user is addressed as \
         `nick%irc.example.org`",
        Shown(.nick)
    )]
    InvalidNick {
        /// The nick as given (unescaped).
        nick: String,
        /// What is wrong with it.
        problem: NickProblem,
    },
    /// The text has an `@` but is not a valid email address.
    #[error(
        "`{}` is not a valid email address: {problem}; an email address such as \
         `alice@example.org` is written `alice\\40example.org` before the gateway's domain",
        Shown(.address)
    )]
    InvalidEmail {
        /// The address as given (unescaped).
        address: String,
        /// What is wrong with it.
        problem: EmailProblem,
    },
    /// A group of email addresses with more than [`MAX_GROUP_ADDRESSES`] of them.
    #[error("{count} addresses is more than the {MAX_GROUP_ADDRESSES} one group of email addresses may have")]
    TooManyAddresses {
        /// How many the group has.
        count: usize,
    },
    /// An `irc://` or `ircs://` URL typed at the prompt that cannot be used.
    #[error(
        "`{}` is not a usable IRC URL: {problem}; write `irc://irc.example.org/#chan`",
        Shown(.url)
    )]
    InvalidIrcUrl {
        /// The URL as typed.
        url: String,
        /// What is wrong with it.
        problem: UrlProblem,
    },
    /// Typed text with both `%` and `@`, which could be a pasted JID or several forms at
    /// once.
    #[error(
        "`{}` is ambiguous: it has both `%` and `@`; type {} (for a channel \
         whose name holds `%` or `@`, use the form `#chan irc.example.org`)",
        Shown(.prompt),
        PROMPT_FORMS
    )]
    AmbiguousPrompt {
        /// The text as typed (trimmed).
        prompt: String,
    },
    /// Typed text that matches none of the forms of [`PROMPT_FORMS`].
    #[error("`{}` is not an address the gateway knows: type {}", Shown(.prompt), PROMPT_FORMS)]
    UnrecognizedPrompt {
        /// The text as typed (trimmed).
        prompt: String,
    },
}

/// Displays user-supplied text for an error message: control characters as `U+XXXX`,
/// cut after 100 characters.
struct Shown<'a>(&'a str);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MAX_CHARS: usize = 100;
        for (i, c) in self.0.chars().enumerate() {
            if i == MAX_CHARS {
                return f.write_str("…");
            }
            if c.is_control() {
                write!(f, "<U+{:04X}>", u32::from(c))?;
            } else {
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}

/// Displays one offending character for an error message: `` `,` `` or `U+0007`.
struct ShownChar(char);

impl fmt::Display for ShownChar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.0;
        if c.is_control() || c.is_whitespace() {
            write!(f, "U+{:04X}", u32::from(c))
        } else {
            write!(f, "`{c}` (U+{:04X})", u32::from(c))
        }
    }
}

// ---------------------------------------------------------------------------------------
// XEP-0106 escaping
// ---------------------------------------------------------------------------------------

/// The XEP-0106 escape code (the two characters after `\`) of a character, if it has one.
fn escape_code(c: char) -> Option<&'static str> {
    Some(match c {
        ' ' => "20",
        '"' => "22",
        '&' => "26",
        '\'' => "27",
        '/' => "2f",
        ':' => "3a",
        '<' => "3c",
        '>' => "3e",
        '@' => "40",
        '\\' => "5c",
        _ => return None,
    })
}

/// The character escaped by the sequence `\` + the first two bytes of `after`, if those
/// form one of the ten XEP-0106 escape codes (lower-case hex only).
fn escaped_char(after: &str) -> Option<char> {
    let code = after.as_bytes().get(..2)?;
    Some(match code {
        b"20" => ' ',
        b"22" => '"',
        b"26" => '&',
        b"27" => '\'',
        b"2f" => '/',
        b"3a" => ':',
        b"3c" => '<',
        b"3e" => '>',
        b"40" => '@',
        b"5c" => '\\',
        _ => return None,
    })
}

/// Escapes `raw` for a JID localpart (XEP-0106).
///
/// Space `"` `&` `'` `/` `:` `<` `>` `@` become `\20` `\22` `\26` `\27` `\2f` `\3a` `\3c`
/// `\3e` `\40`; a backslash becomes `\5c` only when the two characters after it form one
/// of the ten escape codes (so `c:\net` becomes `c\3a\net` but `c:\5commas` becomes
/// `c\3a\5c5commas`). Everything else, `%` and non-ASCII included, is kept.
///
/// Total and the exact inverse of [`unescape_localpart`]: for every string `s`,
/// `unescape_localpart(&escape_localpart(s)) == s`. XEP-0106 forbids `\20` at either end
/// of a localpart; this function still escapes such spaces (no valid [`Address`] has
/// them), so callers escaping other text should reject leading or trailing spaces first.
#[must_use]
pub fn escape_localpart(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len() + raw.len() / 4);
    for (i, c) in raw.char_indices() {
        if c == '\\' {
            // `\` is one byte, so `i + 1` is a char boundary.
            if escaped_char(&raw[i + 1..]).is_some() {
                out.push_str("\\5c");
            } else {
                out.push('\\');
            }
        } else if let Some(code) = escape_code(c) {
            out.push('\\');
            out.push_str(code);
        } else {
            out.push(c);
        }
    }
    out
}

/// Unescapes a JID localpart (XEP-0106).
///
/// Each of the ten sequences `\20` `\22` `\26` `\27` `\2f` `\3a` `\3c` `\3e` `\40` `\5c`
/// becomes its character; anything else (`\3A`, `\41`, `\2`, a lone `\`) is kept as it is,
/// as XEP-0106 requires. Total: never fails.
#[must_use]
pub fn unescape_localpart(escaped: &str) -> String {
    let mut out = String::with_capacity(escaped.len());
    let mut rest = escaped;
    while let Some(pos) = rest.find('\\') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        match escaped_char(after) {
            Some(c) => {
                out.push(c);
                // The two code bytes are ASCII, so this is a char boundary.
                rest = &after[2..];
            }
            None => {
                out.push('\\');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

// ---------------------------------------------------------------------------------------
// Validation of the parts
// ---------------------------------------------------------------------------------------

/// True for a name that is an IRC channel rather than a nick.
fn is_channel_name(name: &str) -> bool {
    name.starts_with(['#', '&'])
}

/// Validates an IRC server (hostname or IPv4 address) and returns it lower-cased.
pub fn normalize_server(server: &str) -> Result<String, ServerProblem> {
    if server.is_empty() {
        return Err(ServerProblem::Empty);
    }
    if let Some(c) = server
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '.'))
    {
        return Err(ServerProblem::ForbiddenChar(c));
    }
    if server.len() > MAX_HOSTNAME_LEN {
        return Err(ServerProblem::TooLong);
    }
    if server.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        // std rejects leading zeros, so the accepted text is already canonical.
        return match server.parse::<Ipv4Addr>() {
            Ok(_) => Ok(server.to_owned()),
            Err(_) => Err(ServerProblem::InvalidIpv4),
        };
    }
    for label in server.split('.') {
        if label.is_empty() {
            return Err(ServerProblem::EmptyLabel);
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(ServerProblem::LabelTooLong);
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(ServerProblem::HyphenAtLabelEdge);
        }
    }
    Ok(server.to_ascii_lowercase())
}

/// Checks an IRC channel name (prefix included).
fn check_channel(channel: &str) -> Result<(), ChannelProblem> {
    if !is_channel_name(channel) {
        return Err(ChannelProblem::NoPrefix);
    }
    if channel.len() > MAX_CHANNEL_LEN {
        return Err(ChannelProblem::TooLong);
    }
    for c in channel.chars() {
        if c.is_control() {
            return Err(ChannelProblem::ControlChar(c));
        }
        if c.is_whitespace() {
            return Err(ChannelProblem::Whitespace(c));
        }
        if c == ',' {
            return Err(ChannelProblem::Comma);
        }
    }
    Ok(())
}

/// Checks an IRC nick.
fn check_nick(nick: &str) -> Result<(), NickProblem> {
    let Some(first) = nick.chars().next() else {
        return Err(NickProblem::Empty);
    };
    if nick.len() > MAX_NICK_LEN {
        return Err(NickProblem::TooLong);
    }
    for c in nick.chars() {
        if c.is_control() {
            return Err(NickProblem::ControlChar(c));
        }
        if c.is_whitespace() {
            return Err(NickProblem::Whitespace(c));
        }
        if matches!(c, ',' | '!' | '@' | '*' | '?') {
            return Err(NickProblem::ForbiddenChar(c));
        }
    }
    if matches!(first, '#' | '&' | ':' | '$' | '-') || first.is_ascii_digit() {
        return Err(NickProblem::BadFirstChar(first));
    }
    Ok(())
}

/// True for RFC 5322 `atext`: ASCII letters, digits and ``!#$%&'*+-/=?^_`{|}~``.
fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c)
}

/// Validates an email address (a conservative RFC 5322 `dot-atom@hostname`) and returns it
/// with its domain lower-cased.
fn normalize_email(address: &str) -> Result<String, EmailProblem> {
    let (local, domain) = address.split_once('@').ok_or(EmailProblem::NoAt)?;
    if domain.contains('@') {
        return Err(EmailProblem::MoreThanOneAt);
    }
    if local.is_empty() {
        return Err(EmailProblem::EmptyLocalPart);
    }
    if local.len() > MAX_EMAIL_LOCAL_LEN {
        return Err(EmailProblem::LocalPartTooLong);
    }
    if let Some(c) = local.chars().find(|&c| !(is_atext(c) || c == '.')) {
        return Err(EmailProblem::ForbiddenChar(c));
    }
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return Err(EmailProblem::MisplacedDot);
    }
    if domain.parse::<Ipv4Addr>().is_ok() {
        return Err(EmailProblem::IpDomain);
    }
    let domain = normalize_server(domain).map_err(EmailProblem::Domain)?;
    if local.len() + 1 + domain.len() > MAX_EMAIL_LEN {
        return Err(EmailProblem::TooLong);
    }
    Ok(format!("{local}@{domain}"))
}

/// Builds a channel or user address from an unescaped `name` and `server`; `input` is the
/// whole text, for the error message.
fn irc_address(input: &str, name: &str, server: &str) -> Result<Address, AddressError> {
    if name.is_empty() {
        return Err(AddressError::MissingName {
            input: input.to_owned(),
        });
    }
    if server.is_empty() {
        return Err(AddressError::MissingServer {
            name: name.to_owned(),
        });
    }
    if is_channel_name(name) {
        check_channel(name).map_err(|problem| AddressError::InvalidChannel {
            channel: name.to_owned(),
            problem,
        })?;
    } else {
        check_nick(name).map_err(|problem| AddressError::InvalidNick {
            nick: name.to_owned(),
            problem,
        })?;
    }
    let server = normalize_server(server).map_err(|problem| AddressError::InvalidServer {
        server: server.to_owned(),
        problem,
    })?;
    Ok(if is_channel_name(name) {
        Address::IrcChannel {
            channel: name.to_owned(),
            server,
        }
    } else {
        Address::IrcUser {
            nick: name.to_owned(),
            server,
        }
    })
}

/// Builds an email address, or a group of them when `text` holds commas (an address
/// never does: a comma is no `atext`), from unescaped text.
fn email_address_or_group(text: &str) -> Result<Address, AddressError> {
    if !text.contains(',') {
        return email_address(text);
    }
    let mut addresses = Vec::new();
    for member in text.split(',') {
        if let Address::Email { address } = email_address(member)? {
            addresses.push(address);
        }
    }
    addresses.sort();
    addresses.dedup();
    match addresses.len() {
        1 => Ok(Address::Email { address: addresses.remove(0) }),
        count if count > MAX_GROUP_ADDRESSES => Err(AddressError::TooManyAddresses { count }),
        _ => Ok(Address::EmailGroup { addresses }),
    }
}

/// Builds an email address from unescaped text.
fn email_address(address: &str) -> Result<Address, AddressError> {
    normalize_email(address)
        .map(|address| Address::Email { address })
        .map_err(|problem| AddressError::InvalidEmail {
            address: address.to_owned(),
            problem,
        })
}

// ---------------------------------------------------------------------------------------
// Localparts
// ---------------------------------------------------------------------------------------

/// Reads the localpart of a JID on the gateway's domain (still XEP-0106-escaped, as it
/// arrives in a stanza) and says what it points at.
///
/// `""` is [`Address::Gateway`]. See the module documentation for the rules.
///
/// # Errors
///
/// An [`AddressError`] naming the part that is wrong (a missing name or server, an invalid
/// server, channel, nick or email address) and showing a valid form. No error is a guess
/// at what was meant; the XMPP layer turns each into an error stanza.
pub fn parse_localpart(local: &str) -> Result<Address, AddressError> {
    if local.is_empty() {
        return Ok(Address::Gateway);
    }
    let text = unescape_localpart(local);
    let last_percent = text.rfind('%');
    let last_at = text.rfind('@');
    match (last_percent, last_at) {
        // An `@` after the last `%` can only be an email address: a server has no `@`.
        (_, Some(at)) if last_percent.is_none_or(|percent| percent < at) => email_address_or_group(&text),
        (Some(percent), _) => irc_address(&text, &text[..percent], &text[percent + 1..]),
        (None, _) if is_channel_name(&text) => Err(AddressError::MissingServer { name: text }),
        (None, _) => normalize_server(&text)
            .map(|server| Address::IrcServer { server })
            .map_err(|problem| AddressError::InvalidServer {
                server: text,
                problem,
            }),
    }
}

/// The bare JID of `address` on the `gateway`'s domain, as XMPP servers spell it: the
/// localpart of [`format_localpart`] case-folded (nodeprep), so that what the gateway
/// sends from a room matches the address the server routes (`#Foo%irc.x@gw` is
/// `#foo%irc.x@gw`). Made once per room, not per stanza; an address no JID can hold is
/// left as written.
#[must_use]
pub fn room_jid(address: &Address, gateway: &str) -> String {
    let written = format!("{}@{gateway}", format_localpart(address));
    written.parse::<xmpp_parsers::jid::BareJid>().map_or(written, |jid| jid.to_string())
}

/// Writes the localpart (XEP-0106-escaped) of the JID for `address`: the inverse of
/// [`parse_localpart`].
///
/// [`Address::Gateway`] gives `""` (the bare domain). Servers and email domains are written
/// lower-case. Never fails; for an address that [`parse_localpart`] would reject (say a
/// channel with a comma) the result is escaped but still invalid.
#[must_use]
pub fn format_localpart(address: &Address) -> String {
    match address {
        Address::Gateway => String::new(),
        Address::IrcChannel {
            channel: name,
            server,
        }
        | Address::IrcUser { nick: name, server } => {
            let mut out = escape_localpart(name);
            out.push('%');
            out.push_str(&escape_localpart(&server.to_ascii_lowercase()));
            out
        }
        Address::IrcServer { server } => escape_localpart(&server.to_ascii_lowercase()),
        Address::Email { address } => match address.rsplit_once('@') {
            Some((local, domain)) => {
                escape_localpart(&format!("{local}@{}", domain.to_ascii_lowercase()))
            }
            None => escape_localpart(address),
        },
        Address::EmailGroup { addresses } => addresses
            .iter()
            .map(|address| format_localpart(&Address::Email { address: address.clone() }))
            .collect::<Vec<_>>()
            .join(","),
    }
}

/// Validates the resource of a room JID (`#chan%irc.example.org@gw/nick`) as an IRC nick
/// and returns it.
///
/// Resources are not XEP-0106-escaped, so the text is used as it is.
///
/// # Errors
///
/// [`AddressError::InvalidNick`] if the resource is not a valid IRC nick.
pub fn parse_occupant_nick(resource: &str) -> Result<String, AddressError> {
    check_nick(resource)
        .map(|()| resource.to_owned())
        .map_err(|problem| AddressError::InvalidNick {
            nick: resource.to_owned(),
            problem,
        })
}

// ---------------------------------------------------------------------------------------
// XEP-0100 prompt
// ---------------------------------------------------------------------------------------

/// Turns what a user typed at the XEP-0100 (`jabber:iq:gateway`) prompt into an address,
/// so that users need not know the JID escaping; format the result with
/// [`format_localpart`].
///
/// The text is trimmed and read as typed (it is not unescaped). Accepted forms:
/// - `alice@example.org`: an email address;
/// - `#chan%irc.example.org`, `#chan@irc.example.org`, `#chan irc.example.org` (any
///   whitespace between): an IRC channel (`&chan` too);
/// - `irc://irc.example.org/#chan`, `ircs://…` (the channel may be percent-encoded as
///   `%23chan`; a port is accepted and dropped, since the network's port and TLS come from
///   the gateway's configuration);
/// - `nick%irc.example.org`: an IRC user.
///
/// Anything else is an error naming these forms. Text with both `%` and `@` outside the
/// whitespace form is rejected as ambiguous (it is often a pasted JID such as
/// `#chan%irc.example.org@gateway.example.com`); so an email address whose local part
/// starts with `#` or `&` cannot be typed here (it reads as a channel), but its JID still
/// works.
///
/// # Errors
///
/// [`AddressError::UnrecognizedPrompt`] or [`AddressError::AmbiguousPrompt`] (both list the
/// accepted forms), [`AddressError::InvalidIrcUrl`], or the error for the invalid part, as
/// from [`parse_localpart`].
pub fn from_legacy_prompt(prompt: &str) -> Result<Address, AddressError> {
    let text = prompt.trim();
    let unrecognized = || AddressError::UnrecognizedPrompt {
        prompt: text.to_owned(),
    };
    if text.is_empty() {
        return Err(unrecognized());
    }
    if let Some(rest) = strip_prefix_ignore_ascii_case(text, "irc://")
        .or_else(|| strip_prefix_ignore_ascii_case(text, "ircs://"))
    {
        return parse_irc_url(text, rest);
    }
    // Several email addresses, comma-separated (spaces after the commas allowed).
    if text.contains(',') && text.contains('@') && !text.contains('%') {
        return email_address_or_group(&text.split(',').map(str::trim).collect::<Vec<_>>().join(","));
    }
    if text.contains(char::is_whitespace) {
        let mut words = text.split_whitespace();
        return match (words.next(), words.next(), words.next()) {
            (Some(channel), Some(server), None) if is_channel_name(channel) => {
                irc_address(text, channel, server)
            }
            _ => Err(unrecognized()),
        };
    }
    let last_percent = text.rfind('%');
    let last_at = text.rfind('@');
    match (last_percent, last_at) {
        (Some(_), Some(_)) => Err(AddressError::AmbiguousPrompt {
            prompt: text.to_owned(),
        }),
        (Some(sep), None) | (None, Some(sep)) if is_channel_name(text) => {
            irc_address(text, &text[..sep], &text[sep + 1..])
        }
        (Some(sep), None) => irc_address(text, &text[..sep], &text[sep + 1..]),
        (None, Some(_)) => email_address(text),
        (None, None) if is_channel_name(text) => Err(AddressError::MissingServer {
            name: text.to_owned(),
        }),
        (None, None) => Err(unrecognized()),
    }
}

/// `text` without `prefix`, compared ignoring ASCII case.
fn strip_prefix_ignore_ascii_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

/// Reads `irc://host[:port]/channel` (`rest` is what follows the scheme).
fn parse_irc_url(url: &str, rest: &str) -> Result<Address, AddressError> {
    let url_error = |problem| AddressError::InvalidIrcUrl {
        url: url.to_owned(),
        problem,
    };
    let (authority, target) = rest.split_once('/').unwrap_or((rest, ""));
    if authority.contains('@') {
        return Err(url_error(UrlProblem::Credentials));
    }
    // An IPv6 literal (`[::1]`) is not split at its colons; it fails as a server below.
    let port_split = if authority.contains('[') {
        None
    } else {
        authority.rsplit_once(':')
    };
    let host = match port_split {
        Some((host, port)) => {
            let port_ok = !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && port.parse::<u16>().is_ok_and(|p| p != 0);
            if !port_ok {
                return Err(url_error(UrlProblem::BadPort));
            }
            host
        }
        None => authority,
    };
    let server = normalize_server(host).map_err(|problem| AddressError::InvalidServer {
        server: host.to_owned(),
        problem,
    })?;
    if target.is_empty() {
        return Err(url_error(UrlProblem::NoChannel));
    }
    let channel =
        percent_decode(target).ok_or_else(|| url_error(UrlProblem::BadPercentEncoding))?;
    check_channel(&channel).map_err(|problem| AddressError::InvalidChannel {
        channel: channel.clone(),
        problem,
    })?;
    Ok(Address::IrcChannel { channel, server })
}

/// Decodes RFC 3986 percent-encoding; `None` for a bad `%` sequence or non-UTF-8 result.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn channel(channel: &str, server: &str) -> Address {
        Address::IrcChannel {
            channel: channel.into(),
            server: server.into(),
        }
    }

    fn user(nick: &str, server: &str) -> Address {
        Address::IrcUser {
            nick: nick.into(),
            server: server.into(),
        }
    }

    fn server(server: &str) -> Address {
        Address::IrcServer {
            server: server.into(),
        }
    }

    fn email(address: &str) -> Address {
        Address::Email {
            address: address.into(),
        }
    }

    /// Asserts that `local` parses to `address` and that `address` formats back to `local`.
    fn assert_both_ways(local: &str, address: Address) {
        assert_eq!(
            parse_localpart(local),
            Ok(address.clone()),
            "parsing {local:?}"
        );
        assert_eq!(format_localpart(&address), local, "formatting {address:?}");
    }

    fn server_error(local: &str) -> ServerProblem {
        match parse_localpart(local) {
            Err(AddressError::InvalidServer { problem, .. }) => problem,
            other => panic!("{local:?}: expected InvalidServer, got {other:?}"),
        }
    }

    fn channel_error(local: &str) -> ChannelProblem {
        match parse_localpart(local) {
            Err(AddressError::InvalidChannel { problem, .. }) => problem,
            other => panic!("{local:?}: expected InvalidChannel, got {other:?}"),
        }
    }

    fn nick_error(local: &str) -> NickProblem {
        match parse_localpart(local) {
            Err(AddressError::InvalidNick { problem, .. }) => problem,
            other => panic!("{local:?}: expected InvalidNick, got {other:?}"),
        }
    }

    fn email_error(local: &str) -> EmailProblem {
        match parse_localpart(local) {
            Err(AddressError::InvalidEmail { problem, .. }) => problem,
            other => panic!("{local:?}: expected InvalidEmail, got {other:?}"),
        }
    }

    // ----- XEP-0106 -------------------------------------------------------------------

    /// XEP-0106 §5.1 "JID Examples", localparts only (user input, escaped).
    const XEP_0106_EXAMPLES: &[(&str, &str)] = &[
        ("space cadet", "space\\20cadet"),
        ("call me \"ishmael\"", "call\\20me\\20\\22ishmael\\22"),
        ("at&t guy", "at\\26t\\20guy"),
        ("d'artagnan", "d\\27artagnan"),
        ("/.fanboy", "\\2f.fanboy"),
        ("::foo::", "\\3a\\3afoo\\3a\\3a"),
        ("<foo>", "\\3cfoo\\3e"),
        ("user@host", "user\\40host"),
        ("c:\\net", "c\\3a\\net"),
        ("c:\\\\net", "c\\3a\\\\net"),
        ("c:\\cool stuff", "c\\3a\\cool\\20stuff"),
        ("c:\\5commas", "c\\3a\\5c5commas"),
    ];

    #[test]
    fn xep_0106_examples_escape() {
        for (raw, escaped) in XEP_0106_EXAMPLES {
            assert_eq!(escape_localpart(raw), *escaped, "escaping {raw:?}");
        }
    }

    #[test]
    fn xep_0106_examples_unescape() {
        for (raw, escaped) in XEP_0106_EXAMPLES {
            assert_eq!(unescape_localpart(escaped), *raw, "unescaping {escaped:?}");
        }
    }

    #[test]
    fn xep_0106_exceptions_are_left_alone() {
        // §4.4 "Exceptions": partial and unknown escape sequences are not modified.
        for text in ["\\2plus\\2is\\4", "foo\\bar", "foob\\41r"] {
            assert_eq!(escape_localpart(text), text);
            assert_eq!(unescape_localpart(text), text);
        }
    }

    #[test]
    fn xep_0106_email_example() {
        let raw = "here's_a_wild_&_/cr%zy/_address@example.com";
        let escaped = "here\\27s_a_wild_\\26_\\2fcr%zy\\2f_address\\40example.com";
        assert_eq!(escape_localpart(raw), escaped);
        assert_eq!(unescape_localpart(escaped), raw);
        // `%` in the local part, but the `@` after it makes it an email address.
        assert_both_ways(escaped, email(raw));
    }

    #[test]
    fn xep_0106_wireless_village_example() {
        let raw = "\\3and\\2is\\5cool@example.com";
        let escaped = "\\5c3and\\2is\\5c5cool\\40example.com";
        assert_eq!(escape_localpart(raw), escaped);
        assert_eq!(unescape_localpart(escaped), raw);
    }

    #[test]
    fn xep_0106_irc_example() {
        let raw = "somenick!user\"&'/:<>\\3address";
        let escaped = "somenick!user\\22\\26\\27\\2f\\3a\\3c\\3e\\5c3address";
        assert_eq!(escape_localpart(raw), escaped);
        assert_eq!(unescape_localpart(escaped), raw);
    }

    #[test]
    fn always_escaped_backslash_is_read_too() {
        // Some copies of the spec's table escape every backslash (`c\3a\5cnet`); such
        // JIDs unescape to the same text.
        assert_eq!(unescape_localpart("c\\3a\\5cnet"), "c:\\net");
        assert_eq!(unescape_localpart("c\\3a\\5c\\5cnet"), "c:\\\\net");
    }

    #[test]
    fn escape_codes_are_lower_case_only() {
        assert_eq!(unescape_localpart("a\\3Ab\\2Fc\\5C"), "a\\3Ab\\2Fc\\5C");
        assert_eq!(escape_localpart("a\\3Ab"), "a\\3Ab");
        assert_eq!(escape_localpart("a\\3ab"), "a\\5c3ab");
    }

    #[test]
    fn every_escape_code() {
        let raw = " \"&'/:<>@";
        assert_eq!(
            escape_localpart(raw),
            "\\20\\22\\26\\27\\2f\\3a\\3c\\3e\\40"
        );
        assert_eq!(
            unescape_localpart("\\20\\22\\26\\27\\2f\\3a\\3c\\3e\\40\\5c"),
            " \"&'/:<>@\\"
        );
    }

    #[test]
    fn backslash_edge_cases() {
        assert_eq!(escape_localpart("\\"), "\\");
        assert_eq!(unescape_localpart("\\"), "\\");
        assert_eq!(escape_localpart("a\\"), "a\\");
        assert_eq!(escape_localpart("\\2"), "\\2");
        assert_eq!(escape_localpart("\\5c"), "\\5c5c");
        assert_eq!(unescape_localpart("\\5c5c"), "\\5c");
        assert_eq!(escape_localpart("\\\\20"), "\\\\5c20");
        assert_eq!(unescape_localpart("\\\\5c20"), "\\\\20");
        // A backslash before a character that gets escaped stays a plain backslash.
        assert_eq!(escape_localpart("\\:"), "\\\\3a");
        assert_eq!(unescape_localpart("\\\\3a"), "\\:");
        // A backslash before a multi-byte character.
        assert_eq!(escape_localpart("\\é"), "\\é");
        assert_eq!(unescape_localpart("\\é\\"), "\\é\\");
    }

    #[test]
    fn escaping_keeps_other_characters() {
        let text = "%#+!$*?,;=~é漢字🦀";
        assert_eq!(escape_localpart(text), text);
        assert_eq!(unescape_localpart(text), text);
        assert_eq!(escape_localpart(""), "");
        assert_eq!(unescape_localpart(""), "");
    }

    // ----- parse_localpart / format_localpart: each form ---------------------------

    #[test]
    fn gateway() {
        assert_both_ways("", Address::Gateway);
    }

    #[test]
    fn channel_forms() {
        assert_both_ways("#rust%irc.libera.chat", channel("#rust", "irc.libera.chat"));
        // `&` is one of the escaped characters; unescaped it is read all the same.
        assert_both_ways(
            "\\26local%irc.example.org",
            channel("&local", "irc.example.org"),
        );
        assert_eq!(
            parse_localpart("&local%irc.example.org"),
            Ok(channel("&local", "irc.example.org"))
        );
        assert_both_ways("##c++%irc.example.org", channel("##c++", "irc.example.org"));
        assert_both_ways("#%127.0.0.1", channel("#", "127.0.0.1"));
        assert_both_ways(
            "#é漢🦀%irc.example.org",
            channel("#é漢🦀", "irc.example.org"),
        );
    }

    #[test]
    fn channel_case_is_kept_and_server_lower_cased() {
        assert_eq!(
            parse_localpart("#RuSt%IRC.Libera.CHAT"),
            Ok(channel("#RuSt", "irc.libera.chat"))
        );
        assert_eq!(
            format_localpart(&channel("#RuSt", "IRC.Libera.CHAT")),
            "#RuSt%irc.libera.chat"
        );
        assert_eq!(room_jid(&channel("#RuSt", "IRC.Libera.CHAT"), "gw.example"), "#rust%irc.libera.chat@gw.example", "as servers fold it");
    }

    #[test]
    fn percent_inside_channel_and_nick_names() {
        assert_both_ways("#a%b%irc.x", channel("#a%b", "irc.x"));
        assert_both_ways("#100%%irc.x", channel("#100%", "irc.x"));
        assert_both_ways("a%b%irc.x", user("a%b", "irc.x"));
    }

    #[test]
    fn escaped_characters_in_channels() {
        assert_both_ways(
            "#c++\\3atalk\\2fdev%irc.example.org",
            channel("#c++:talk/dev", "irc.example.org"),
        );
        assert_both_ways(
            "#b\\40byfoot%irc.example.org",
            channel("#b@byfoot", "irc.example.org"),
        );
        assert_both_ways("#back\\slash%irc.x", channel("#back\\slash", "irc.x"));
        assert_both_ways("#lit\\5c20eral%irc.x", channel("#lit\\20eral", "irc.x"));
        assert_both_ways(
            "#\\22q\\22\\26\\27\\3c\\3e%irc.x",
            channel("#\"q\"&'<>", "irc.x"),
        );
        // A channel whose name looks like an email address or a whole gateway address.
        assert_both_ways("#a\\40b.org%irc.x", channel("#a@b.org", "irc.x"));
        assert_both_ways("#a%irc.y\\40gw%irc.x", channel("#a%irc.y@gw", "irc.x"));
    }

    #[test]
    fn non_canonical_escapes_are_accepted() {
        // A needlessly escaped backslash, or a raw character, means the same.
        assert_eq!(
            parse_localpart("#a\\5cb%irc.x"),
            Ok(channel("#a\\b", "irc.x"))
        );
        assert_eq!(parse_localpart("#a:b%irc.x"), Ok(channel("#a:b", "irc.x")));
        assert_eq!(format_localpart(&channel("#a\\b", "irc.x")), "#a\\b%irc.x");
    }

    #[test]
    fn user_forms() {
        assert_both_ways("alice%irc.example.org", user("alice", "irc.example.org"));
        assert_both_ways("Alice_%irc.example.org", user("Alice_", "irc.example.org"));
        assert_both_ways("[away]\\`^{|}%irc.x", user("[away]\\`^{|}", "irc.x"));
        assert_both_ways("a\\5c3ab%irc.x", user("a\\3ab", "irc.x"));
        assert_both_ways("d\\27artagnan%irc.x", user("d'artagnan", "irc.x"));
        assert_both_ways(
            "a\\3ab\\2fc\\3cd\\3e\\22%irc.x",
            user("a:b/c<d>\"", "irc.x"),
        );
        assert_both_ways("a\\26b%irc.x", user("a&b", "irc.x"));
        assert_both_ways("nick%192.0.2.1", user("nick", "192.0.2.1"));
        assert_both_ways("+voice%irc.x", user("+voice", "irc.x"));
        assert_eq!(parse_localpart("BoB%IRC.X"), Ok(user("BoB", "irc.x")));
    }

    #[test]
    fn server_forms() {
        assert_both_ways("irc.example.org", server("irc.example.org"));
        assert_both_ways("localhost", server("localhost"));
        assert_both_ways("127.0.0.1", server("127.0.0.1"));
        assert_both_ways("255.255.255.255", server("255.255.255.255"));
        assert_both_ways("0.0.0.0", server("0.0.0.0"));
        assert_both_ways("irc-1.x-y.example", server("irc-1.x-y.example"));
        assert_both_ways("1irc.123", server("1irc.123"));
        assert_eq!(
            parse_localpart("IRC.Example.ORG"),
            Ok(server("irc.example.org"))
        );
        assert_eq!(
            format_localpart(&server("IRC.Example.ORG")),
            "irc.example.org"
        );
        let longest = [
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(61),
        ]
        .join(".");
        assert_eq!(longest.len(), MAX_HOSTNAME_LEN);
        assert_both_ways(&longest, server(&longest));
    }

    #[test]
    fn email_forms() {
        assert_both_ways("alice\\40example.org", email("alice@example.org"));
        assert_both_ways(
            "Alice.Smith\\40example.org",
            email("Alice.Smith@example.org"),
        );
        assert_both_ways(
            "d\\27artagnan\\40musketeers.lit",
            email("d'artagnan@musketeers.lit"),
        );
        assert_both_ways(
            "a\\26b\\2fc+tag\\40example.org",
            email("a&b/c+tag@example.org"),
        );
        assert_both_ways(
            "!#$%&*+-=?^_`{|}~\\40x.y".replace('&', "\\26").as_str(),
            email("!#$%&*+-=?^_`{|}~@x.y"),
        );
        assert_both_ways("a%b\\40example.org", email("a%b@example.org"));
        assert_both_ways("bob\\40localhost", email("bob@localhost"));
        // The domain is lower-cased, the local part kept.
        assert_eq!(
            parse_localpart("Alice\\40Example.ORG"),
            Ok(email("Alice@example.org"))
        );
        assert_eq!(
            format_localpart(&email("Alice@Example.ORG")),
            "Alice\\40example.org"
        );
    }

    #[test]
    fn email_groups() {
        let group = |addresses: &[&str]| Address::EmailGroup { addresses: addresses.iter().map(|a| (*a).to_owned()).collect() };
        // Sorted and without repeats, so one group has one JID.
        assert_both_ways("bob\\40b.example,carol\\40c.example", group(&["bob@b.example", "carol@c.example"]));
        assert_eq!(
            parse_localpart("carol\\40C.example,bob\\40b.example,carol\\40c.example"),
            Ok(group(&["bob@b.example", "carol@c.example"]))
        );
        // One address, written twice, is that address.
        assert_eq!(parse_localpart("bob\\40b.example,bob\\40B.example"), Ok(email("bob@b.example")));
        // Each member is checked, and named when wrong.
        assert!(matches!(
            parse_localpart("bob\\40b.example,carol"),
            Err(AddressError::InvalidEmail { address, .. }) if address == "carol"
        ));
        assert!(matches!(parse_localpart("bob\\40b.example,"), Err(AddressError::InvalidEmail { .. })));
        let many: Vec<String> = (0..=MAX_GROUP_ADDRESSES).map(|i| format!("u{i}\\40x.example")).collect();
        assert_eq!(parse_localpart(&many.join(",")), Err(AddressError::TooManyAddresses { count: MAX_GROUP_ADDRESSES + 1 }));
        assert!(matches!(parse_localpart(&many[1..].join(",")), Ok(Address::EmailGroup { addresses }) if addresses.len() == MAX_GROUP_ADDRESSES));
        // Typed at the prompt, with spaces after the commas.
        assert_eq!(from_legacy_prompt("carol@c.example, bob@b.example"), Ok(group(&["bob@b.example", "carol@c.example"])));
    }

    #[test]
    fn email_length_limits() {
        let local = "a".repeat(MAX_EMAIL_LOCAL_LEN);
        let ok = format!("{local}@example.org");
        assert_eq!(parse_localpart(&escape_localpart(&ok)), Ok(email(&ok)));
        let domain = ["a".repeat(63), "b".repeat(63), "c".repeat(61)].join(".");
        let longest = format!("{local}@{domain}");
        assert_eq!(longest.len(), MAX_EMAIL_LEN);
        assert_eq!(
            parse_localpart(&escape_localpart(&longest)),
            Ok(email(&longest))
        );
    }

    #[test]
    fn channel_length_limit_is_in_bytes() {
        let ok = format!("#{}", "a".repeat(MAX_CHANNEL_LEN - 1));
        assert_both_ways(&format!("{ok}%irc.x"), channel(&ok, "irc.x"));
        let too_long = format!("#{}", "a".repeat(MAX_CHANNEL_LEN));
        assert_eq!(
            channel_error(&format!("{too_long}%irc.x")),
            ChannelProblem::TooLong
        );
        // 1 + 67 * 3 = 202 bytes but only 68 characters.
        let wide = format!("#{}", "漢".repeat(67));
        assert_eq!(
            channel_error(&format!("{wide}%irc.x")),
            ChannelProblem::TooLong
        );
    }

    #[test]
    fn nick_length_limit_is_in_bytes() {
        let ok = "n".repeat(MAX_NICK_LEN);
        assert_both_ways(&format!("{ok}%irc.x"), user(&ok, "irc.x"));
        let too_long = "n".repeat(MAX_NICK_LEN + 1);
        assert_eq!(
            nick_error(&format!("{too_long}%irc.x")),
            NickProblem::TooLong
        );
        assert_eq!(
            nick_error(&format!("{}%irc.x", "é".repeat(33))),
            NickProblem::TooLong
        );
    }

    // ----- rejections -------------------------------------------------------------

    #[test]
    fn missing_name_or_server() {
        assert_eq!(
            parse_localpart("%irc.example.org"),
            Err(AddressError::MissingName {
                input: "%irc.example.org".into()
            })
        );
        assert_eq!(
            parse_localpart("#rust"),
            Err(AddressError::MissingServer {
                name: "#rust".into()
            })
        );
        assert_eq!(
            parse_localpart("&local"),
            Err(AddressError::MissingServer {
                name: "&local".into()
            })
        );
        assert_eq!(
            parse_localpart("#rust%"),
            Err(AddressError::MissingServer {
                name: "#rust".into()
            })
        );
        assert_eq!(
            parse_localpart("bob%"),
            Err(AddressError::MissingServer { name: "bob".into() })
        );
        assert_eq!(
            parse_localpart("%"),
            Err(AddressError::MissingName { input: "%".into() })
        );
    }

    #[test]
    fn invalid_servers() {
        use ServerProblem::*;
        assert_eq!(server_error("#c%irc_x.org"), ForbiddenChar('_'));
        assert_eq!(server_error("irc.exa\\20mple.org"), ForbiddenChar(' '));
        assert_eq!(server_error("ïrc.example.org"), ForbiddenChar('ï'));
        assert_eq!(server_error("#c%\\3a\\3a1"), ForbiddenChar(':'));
        assert_eq!(server_error("#c%[::1]"), ForbiddenChar('['));
        assert_eq!(server_error("bob%irc.x\\2f"), ForbiddenChar('/'));
        assert_eq!(server_error("irc..example.org"), EmptyLabel);
        assert_eq!(server_error(".irc.example.org"), EmptyLabel);
        assert_eq!(server_error("irc.example.org."), EmptyLabel);
        assert_eq!(
            server_error(&format!("{}.org", "a".repeat(64))),
            LabelTooLong
        );
        let too_long = [
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(62),
        ]
        .join(".");
        assert_eq!(server_error(&too_long), TooLong);
        assert_eq!(server_error("-irc.example.org"), HyphenAtLabelEdge);
        assert_eq!(server_error("irc-.example.org"), HyphenAtLabelEdge);
        assert_eq!(server_error("#c%irc.example.-org"), HyphenAtLabelEdge);
        assert_eq!(server_error("256.1.1.1"), InvalidIpv4);
        assert_eq!(server_error("1.2.3"), InvalidIpv4);
        assert_eq!(server_error("1.2.3.4.5"), InvalidIpv4);
        assert_eq!(server_error("01.2.3.4"), InvalidIpv4);
        assert_eq!(server_error("1..2.3"), InvalidIpv4);
        assert_eq!(server_error("#c%1234"), InvalidIpv4);
        // A plain word with a character no hostname has.
        assert_eq!(server_error("alice\\20smith"), ForbiddenChar(' '));
    }

    #[test]
    fn invalid_channels() {
        use ChannelProblem::*;
        assert_eq!(channel_error("#a\u{7}b%irc.x"), ControlChar('\u{7}'));
        assert_eq!(channel_error("#a\rb%irc.x"), ControlChar('\r'));
        assert_eq!(channel_error("#a\nb%irc.x"), ControlChar('\n'));
        assert_eq!(channel_error("#a\0b%irc.x"), ControlChar('\0'));
        assert_eq!(channel_error("#a\u{2}bold%irc.x"), ControlChar('\u{2}'));
        assert_eq!(channel_error("#a\tb%irc.x"), ControlChar('\t'));
        assert_eq!(channel_error("#a\u{85}b%irc.x"), ControlChar('\u{85}'));
        assert_eq!(channel_error("#a\\20b%irc.x"), Whitespace(' '));
        assert_eq!(channel_error("#a b%irc.x"), Whitespace(' '));
        assert_eq!(channel_error("#a\u{a0}b%irc.x"), Whitespace('\u{a0}'));
        assert_eq!(channel_error("#a,#b%irc.x"), Comma);
    }

    #[test]
    fn invalid_nicks() {
        use NickProblem::*;
        assert_eq!(nick_error("a\\20b%irc.x"), Whitespace(' '));
        assert_eq!(nick_error("a\u{3000}b%irc.x"), Whitespace('\u{3000}'));
        assert_eq!(nick_error("a\u{7}%irc.x"), ControlChar('\u{7}'));
        assert_eq!(nick_error("a\r\nQUIT%irc.x"), ControlChar('\r'));
        assert_eq!(nick_error("a\0%irc.x"), ControlChar('\0'));
        for c in [',', '!', '*', '?'] {
            assert_eq!(nick_error(&format!("a{c}b%irc.x")), ForbiddenChar(c));
        }
        // `@` before the last `%` keeps it IRC, and a nick has no `@`.
        assert_eq!(nick_error("a\\40b%irc.x"), ForbiddenChar('@'));
        assert_eq!(nick_error("\\3anick%irc.x"), BadFirstChar(':'));
        assert_eq!(nick_error("$mask%irc.x"), BadFirstChar('$'));
        assert_eq!(nick_error("1nick%irc.x"), BadFirstChar('1'));
        assert_eq!(nick_error("9%irc.x"), BadFirstChar('9'));
        assert_eq!(nick_error("-nick%irc.x"), BadFirstChar('-'));
    }

    #[test]
    fn invalid_emails() {
        use EmailProblem::*;
        assert_eq!(email_error("a\\40b\\40example.org"), MoreThanOneAt);
        assert_eq!(email_error("a\\40b%c\\40example.org"), MoreThanOneAt);
        assert_eq!(email_error("\\40example.org"), EmptyLocalPart);
        assert_eq!(
            email_error(&format!("{}\\40example.org", "a".repeat(65))),
            LocalPartTooLong
        );
        for c in [
            '<', '>', ';', '"', '(', ')', '[', ']', '\\', ' ', ':', '\t', '\r', '\n', '\0',
            'é',
        ] {
            let local = escape_localpart(&format!("a{c}b@example.org"));
            assert_eq!(email_error(&local), ForbiddenChar(c), "{c:?}");
        }
        // A comma separates the addresses of a group: `a` is the one at fault.
        assert_eq!(email_error(&escape_localpart("a,b@example.org")), NoAt);
        assert_eq!(email_error(".alice\\40example.org"), MisplacedDot);
        assert_eq!(email_error("alice.\\40example.org"), MisplacedDot);
        assert_eq!(email_error("al..ice\\40example.org"), MisplacedDot);
        assert_eq!(email_error("alice\\40"), Domain(ServerProblem::Empty));
        assert_eq!(
            email_error("alice\\40exa_mple.org"),
            Domain(ServerProblem::ForbiddenChar('_'))
        );
        assert_eq!(
            email_error("alice\\40example..org"),
            Domain(ServerProblem::EmptyLabel)
        );
        assert_eq!(
            email_error("alice\\40-example.org"),
            Domain(ServerProblem::HyphenAtLabelEdge)
        );
        assert_eq!(
            email_error("alice\\40[192.0.2.1]"),
            Domain(ServerProblem::ForbiddenChar('['))
        );
        assert_eq!(email_error("alice\\40192.0.2.1"), IpDomain);
        assert_eq!(
            email_error("alice\\40192.0.2"),
            Domain(ServerProblem::InvalidIpv4)
        );
        let local = "a".repeat(64);
        let domain = ["a".repeat(63), "b".repeat(63), "c".repeat(62)].join(".");
        assert_eq!(email_error(&format!("{local}\\40{domain}")), TooLong);
    }

    #[test]
    fn occupant_nick() {
        assert_eq!(parse_occupant_nick("Alice"), Ok("Alice".into()));
        assert_eq!(
            parse_occupant_nick("d'art:a/g\\n"),
            Ok("d'art:a/g\\n".into())
        );
        let err = |resource: &str| match parse_occupant_nick(resource) {
            Err(AddressError::InvalidNick { problem, .. }) => problem,
            other => panic!("{resource:?}: {other:?}"),
        };
        assert_eq!(err(""), NickProblem::Empty);
        assert_eq!(err("#chan"), NickProblem::BadFirstChar('#'));
        assert_eq!(err("&chan"), NickProblem::BadFirstChar('&'));
        assert_eq!(err("a b"), NickProblem::Whitespace(' '));
        assert_eq!(err("a@b"), NickProblem::ForbiddenChar('@'));
        assert_eq!(err("a\nPRIVMSG"), NickProblem::ControlChar('\n'));
        assert_eq!(err(&"n".repeat(65)), NickProblem::TooLong);
    }

    // ----- from_legacy_prompt ---------------------------------------------------------

    #[test]
    fn prompt_email() {
        assert_eq!(
            from_legacy_prompt("alice@example.org"),
            Ok(email("alice@example.org"))
        );
        assert_eq!(
            from_legacy_prompt("  Alice@Example.ORG\n"),
            Ok(email("Alice@example.org"))
        );
        assert_eq!(
            from_legacy_prompt("d'art&co/x@example.org"),
            Ok(email("d'art&co/x@example.org"))
        );
        assert!(matches!(
            from_legacy_prompt("alice@exa mple.org"),
            Err(AddressError::UnrecognizedPrompt { .. })
        ));
        assert_eq!(
            from_legacy_prompt("alice@bob@example.org"),
            Err(AddressError::InvalidEmail {
                address: "alice@bob@example.org".into(),
                problem: EmailProblem::MoreThanOneAt,
            })
        );
    }

    #[test]
    fn prompt_channel_forms() {
        let rust = channel("#rust", "irc.libera.chat");
        for typed in [
            "#rust%irc.libera.chat",
            "#rust@irc.libera.chat",
            "#rust irc.libera.chat",
            "  #rust \t irc.libera.chat  ",
            "#rust%IRC.Libera.Chat",
            "irc://irc.libera.chat/#rust",
            "ircs://irc.libera.chat/#rust",
            "IRCS://irc.libera.chat/%23rust",
            "ircs://irc.libera.chat:6697/#rust",
            "irc://IRC.LIBERA.CHAT:6667/#rust",
        ] {
            assert_eq!(from_legacy_prompt(typed), Ok(rust.clone()), "{typed:?}");
        }
        assert_eq!(
            from_legacy_prompt("&local@127.0.0.1"),
            Ok(channel("&local", "127.0.0.1"))
        );
        assert_eq!(
            from_legacy_prompt("#Rust irc.x"),
            Ok(channel("#Rust", "irc.x"))
        );
        // Typed text is not unescaped: a backslash is a backslash.
        assert_eq!(
            from_legacy_prompt("#c:\\3a%irc.x"),
            Ok(channel("#c:\\3a", "irc.x"))
        );
        // The whitespace form takes any channel, `%` and `@` included.
        assert_eq!(
            from_legacy_prompt("#a%b@c irc.x"),
            Ok(channel("#a%b@c", "irc.x"))
        );
        assert_eq!(
            from_legacy_prompt("irc://irc.x/%23c%2B%2B%3Atalk"),
            Ok(channel("#c++:talk", "irc.x"))
        );
        assert_eq!(
            from_legacy_prompt("irc://irc.x/&local"),
            Ok(channel("&local", "irc.x"))
        );
    }

    #[test]
    fn prompt_user() {
        assert_eq!(
            from_legacy_prompt("bob%irc.example.org"),
            Ok(user("bob", "irc.example.org"))
        );
        assert_eq!(from_legacy_prompt(" Bob%IRC.x "), Ok(user("Bob", "irc.x")));
        assert_eq!(from_legacy_prompt("a%b%irc.x"), Ok(user("a%b", "irc.x")));
    }

    #[test]
    fn prompt_rejections() {
        let unrecognized = |typed: &str| {
            assert_eq!(
                from_legacy_prompt(typed),
                Err(AddressError::UnrecognizedPrompt {
                    prompt: typed.trim().into()
                }),
                "{typed:?}"
            );
        };
        unrecognized("");
        unrecognized("   ");
        unrecognized("bob");
        unrecognized("irc.example.org");
        unrecognized("alice\\40example.org");
        unrecognized("bob irc.example.org");
        unrecognized("#rust irc.libera.chat extra");
        unrecognized("alice smith@example.org");
        assert_eq!(
            from_legacy_prompt("#rust"),
            Err(AddressError::MissingServer {
                name: "#rust".into()
            })
        );
        assert_eq!(
            from_legacy_prompt("#rust@"),
            Err(AddressError::MissingServer {
                name: "#rust".into()
            })
        );
        assert_eq!(
            from_legacy_prompt("%irc.x"),
            Err(AddressError::MissingName {
                input: "%irc.x".into()
            })
        );
        for typed in [
            "#rust%irc.libera.chat@gw.example.com",
            "bob%irc.x@gw.example.com",
            "a%b@example.org",
        ] {
            assert_eq!(
                from_legacy_prompt(typed),
                Err(AddressError::AmbiguousPrompt {
                    prompt: typed.into()
                }),
                "{typed:?}"
            );
        }
        assert!(matches!(
            from_legacy_prompt("#a,b%irc.x"),
            Err(AddressError::InvalidChannel {
                problem: ChannelProblem::Comma,
                ..
            })
        ));
        assert!(matches!(
            from_legacy_prompt("#a irc_x"),
            Err(AddressError::InvalidServer {
                problem: ServerProblem::ForbiddenChar('_'),
                ..
            })
        ));
        assert!(matches!(
            from_legacy_prompt("1bob%irc.x"),
            Err(AddressError::InvalidNick {
                problem: NickProblem::BadFirstChar('1'),
                ..
            })
        ));
    }

    #[test]
    fn prompt_url_rejections() {
        let url_problem = |typed: &str| match from_legacy_prompt(typed) {
            Err(AddressError::InvalidIrcUrl { problem, .. }) => problem,
            other => panic!("{typed:?}: {other:?}"),
        };
        assert_eq!(url_problem("irc://irc.x"), UrlProblem::NoChannel);
        assert_eq!(url_problem("irc://irc.x/"), UrlProblem::NoChannel);
        assert_eq!(
            url_problem("irc://bob:pw@irc.x/#c"),
            UrlProblem::Credentials
        );
        assert_eq!(url_problem("irc://irc.x:/#c"), UrlProblem::BadPort);
        assert_eq!(url_problem("irc://irc.x:0/#c"), UrlProblem::BadPort);
        assert_eq!(url_problem("irc://irc.x:65536/#c"), UrlProblem::BadPort);
        assert_eq!(url_problem("irc://irc.x:+1/#c"), UrlProblem::BadPort);
        assert_eq!(
            url_problem("irc://irc.x/%23c%2"),
            UrlProblem::BadPercentEncoding
        );
        assert_eq!(
            url_problem("irc://irc.x/%23c%zz"),
            UrlProblem::BadPercentEncoding
        );
        assert_eq!(
            url_problem("irc://irc.x/%23c%ff"),
            UrlProblem::BadPercentEncoding
        );
        assert!(matches!(
            from_legacy_prompt("irc://irc.x/rust"),
            Err(AddressError::InvalidChannel {
                problem: ChannelProblem::NoPrefix,
                ..
            })
        ));
        assert!(matches!(
            from_legacy_prompt("irc://irc.x/#chan,needkey"),
            Err(AddressError::InvalidChannel {
                problem: ChannelProblem::Comma,
                ..
            })
        ));
        assert!(matches!(
            from_legacy_prompt("irc:///#chan"),
            Err(AddressError::InvalidServer {
                problem: ServerProblem::Empty,
                ..
            })
        ));
        assert!(matches!(
            from_legacy_prompt("irc://[::1]/#chan"),
            Err(AddressError::InvalidServer { .. })
        ));
    }

    // ----- error messages -------------------------------------------------------------

    #[test]
    fn error_messages_show_a_valid_form() {
        let cases: Vec<(AddressError, &str)> = vec![
            (
                parse_localpart("%irc.x").unwrap_err(),
                "#chan%irc.example.org",
            ),
            (
                parse_localpart("%irc.x").unwrap_err(),
                "alice\\40example.org",
            ),
            (
                parse_localpart("#rust").unwrap_err(),
                "#rust%irc.example.org",
            ),
            (parse_localpart("irc..x").unwrap_err(), "irc.example.org"),
            (
                parse_localpart("irc..x").unwrap_err(),
                "alice\\40example.org",
            ),
            (
                parse_localpart("#a,b%irc.x").unwrap_err(),
                "#chan%irc.example.org",
            ),
            (
                parse_localpart("1a%irc.x").unwrap_err(),
                "nick%irc.example.org",
            ),
            (
                parse_localpart("a\\40b\\40c").unwrap_err(),
                "alice\\40example.org",
            ),
            (
                from_legacy_prompt("irc://irc.x/").unwrap_err(),
                "irc://irc.example.org/#chan",
            ),
            (
                from_legacy_prompt("a%b@c").unwrap_err(),
                "#chan irc.example.org",
            ),
            (from_legacy_prompt("bob").unwrap_err(), "alice@example.org"),
            (
                from_legacy_prompt("bob").unwrap_err(),
                "nick%irc.example.org",
            ),
        ];
        for (error, form) in cases {
            let message = error.to_string();
            assert!(
                message.contains(form),
                "{message:?} should mention {form:?}"
            );
        }
        assert_eq!(
            parse_localpart("#a,b%irc.x").unwrap_err().to_string(),
            "`#a,b` is not a valid IRC channel name: it contains `,`; a channel is joined as \
             `#chan%irc.example.org`"
        );
    }

    #[test]
    fn error_messages_hide_control_characters_and_are_bounded() {
        let message = parse_localpart("#a\u{7}\r\n%irc.x")
            .unwrap_err()
            .to_string();
        assert!(!message.chars().any(char::is_control), "{message:?}");
        assert!(message.contains("<U+0007>"), "{message:?}");
        assert!(message.contains("U+0007"), "{message:?}");
        let long = format!("#{}", "x,".repeat(1000));
        let message = parse_localpart(&format!("{long}%irc.x"))
            .unwrap_err()
            .to_string();
        assert!(message.len() < 400, "{message:?}");
        assert!(message.contains('…'));
    }

    #[test]
    fn every_problem_has_a_message() {
        let problems: Vec<String> = vec![
            ServerProblem::Empty.to_string(),
            ServerProblem::TooLong.to_string(),
            ServerProblem::ForbiddenChar('_').to_string(),
            ServerProblem::EmptyLabel.to_string(),
            ServerProblem::LabelTooLong.to_string(),
            ServerProblem::HyphenAtLabelEdge.to_string(),
            ServerProblem::InvalidIpv4.to_string(),
            ChannelProblem::NoPrefix.to_string(),
            ChannelProblem::TooLong.to_string(),
            ChannelProblem::Whitespace(' ').to_string(),
            ChannelProblem::Comma.to_string(),
            ChannelProblem::ControlChar('\0').to_string(),
            NickProblem::Empty.to_string(),
            NickProblem::TooLong.to_string(),
            NickProblem::Whitespace(' ').to_string(),
            NickProblem::ControlChar('\0').to_string(),
            NickProblem::ForbiddenChar('!').to_string(),
            NickProblem::BadFirstChar('$').to_string(),
            EmailProblem::NoAt.to_string(),
            EmailProblem::MoreThanOneAt.to_string(),
            EmailProblem::EmptyLocalPart.to_string(),
            EmailProblem::LocalPartTooLong.to_string(),
            EmailProblem::ForbiddenChar('<').to_string(),
            EmailProblem::MisplacedDot.to_string(),
            EmailProblem::Domain(ServerProblem::EmptyLabel).to_string(),
            EmailProblem::IpDomain.to_string(),
            EmailProblem::TooLong.to_string(),
            UrlProblem::NoChannel.to_string(),
            UrlProblem::Credentials.to_string(),
            UrlProblem::BadPort.to_string(),
            UrlProblem::BadPercentEncoding.to_string(),
        ];
        for message in &problems {
            assert!(!message.is_empty());
            assert!(!message.chars().any(char::is_control), "{message:?}");
        }
    }

    // ----- property tests -------------------------------------------------------------

    /// Pieces of names, weighted towards characters that need escaping and text that looks
    /// like escape sequences.
    fn tricky_piece() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => "[a-zA-Z0-9_|^`{}\\[\\]-]{1,4}",
            3 => prop::sample::select(vec![
                "\"", "&", "'", "/", ":", "<", ">", "@", "\\", "%", "#", "+", ".", "=",
                "\\20", "\\5c", "\\3a", "\\40", "\\2", "\\5", "\\\\", "\\3A", "%%",
            ])
            .prop_map(str::to_owned),
            1 => any::<char>().prop_map(String::from),
        ]
    }

    fn chars_ok_in_irc_names(text: &str) -> bool {
        !text
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || c == ',')
    }

    fn arb_server() -> impl Strategy<Value = String> {
        let label = "[a-zA-Z0-9]([a-zA-Z0-9-]{0,20}[a-zA-Z0-9])?";
        prop_oneof![
            any::<[u8; 4]>().prop_map(|octets| Ipv4Addr::from(octets).to_string()),
            prop::collection::vec(label, 1..5)
                .prop_map(|labels| labels.join(".").to_ascii_lowercase())
                .prop_filter("all-numeric names are IPv4 addresses", |host| {
                    !host.bytes().all(|b| b.is_ascii_digit() || b == b'.')
                }),
        ]
    }

    fn arb_channel() -> impl Strategy<Value = String> {
        ("[#&]", prop::collection::vec(tricky_piece(), 0..12))
            .prop_map(|(prefix, pieces)| format!("{prefix}{}", pieces.concat()))
            .prop_filter("valid channel", |channel| {
                channel.len() <= MAX_CHANNEL_LEN && chars_ok_in_irc_names(channel)
            })
    }

    fn arb_nick() -> impl Strategy<Value = String> {
        (
            "[a-zA-Z_\\[\\]\\\\`^{}|'\"/<>]",
            prop::collection::vec(tricky_piece(), 0..8),
        )
            .prop_map(|(first, pieces)| format!("{first}{}", pieces.concat()))
            .prop_filter("valid nick", |nick| check_nick(nick).is_ok())
    }

    fn arb_email() -> impl Strategy<Value = String> {
        let atom = "[a-zA-Z0-9!#$%&'*+/=?^_`{|}~-]{1,8}";
        (prop::collection::vec(atom, 1..4), arb_server())
            .prop_map(|(atoms, domain)| format!("{}@{domain}", atoms.join(".")))
            .prop_filter("valid email", |address| normalize_email(address).is_ok())
    }

    fn arb_address() -> impl Strategy<Value = Address> {
        prop_oneof![
            Just(Address::Gateway),
            (arb_channel(), arb_server())
                .prop_map(|(channel, server)| Address::IrcChannel { channel, server }),
            (arb_nick(), arb_server()).prop_map(|(nick, server)| Address::IrcUser { nick, server }),
            arb_server().prop_map(|server| Address::IrcServer { server }),
            arb_email().prop_map(|address| Address::Email { address }),
        ]
    }

    fn arb_text() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            prop::collection::vec(tricky_piece(), 0..16).prop_map(|pieces| pieces.concat()),
            "[\\\\0-9a-fA-F :@/&'\"<>%]{0,24}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn format_then_parse_is_identity(address in arb_address()) {
            let local = format_localpart(&address);
            prop_assert_eq!(parse_localpart(&local), Ok(address));
        }

        #[test]
        fn formatted_localparts_hold_no_disallowed_character(address in arb_address()) {
            let local = format_localpart(&address);
            prop_assert!(!local.contains([' ', '"', '&', '\'', '/', ':', '<', '>', '@']), "{:?}", local);
            prop_assert!(!local.starts_with("\\20") && !local.ends_with("\\20"));
            prop_assert!(local.len() <= 1023);
        }

        #[test]
        fn unescape_inverts_escape(text in arb_text()) {
            let escaped = escape_localpart(&text);
            prop_assert!(!escaped.contains([' ', '"', '&', '\'', '/', ':', '<', '>', '@']));
            prop_assert_eq!(unescape_localpart(&escaped), text);
        }

        #[test]
        fn parse_never_panics_and_is_stable(local in arb_text()) {
            // Whatever parses, formats to a localpart that parses to the same address.
            if let Ok(address) = parse_localpart(&local) {
                prop_assert_eq!(parse_localpart(&format_localpart(&address)), Ok(address));
            }
        }

        #[test]
        fn prompt_never_panics(typed in arb_text()) {
            if let Ok(address) = from_legacy_prompt(&typed) {
                prop_assert_eq!(parse_localpart(&format_localpart(&address)), Ok(address));
            }
        }

        #[test]
        fn prompt_whitespace_form_takes_any_channel(channel in arb_channel(), server in arb_server()) {
            prop_assert_eq!(
                from_legacy_prompt(&format!("  {channel}  {}\n", server.to_ascii_uppercase())),
                Ok(Address::IrcChannel { channel, server })
            );
        }

        #[test]
        fn prompt_percent_form_matches_the_jid(nick in arb_nick(), server in arb_server()) {
            prop_assert_eq!(
                from_legacy_prompt(&format!("{nick}%{server}")),
                Ok(Address::IrcUser { nick, server })
            );
        }

        #[test]
        fn prompt_takes_plain_emails(address in arb_email()) {
            prop_assume!(!address.contains('%') && !is_channel_name(&address));
            prop_assert_eq!(from_legacy_prompt(&address), Ok(Address::Email { address }));
        }
    }
}
