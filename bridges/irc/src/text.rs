//! Text crossing between XMPP and IRC: pure functions, no I/O.
//!
//! Going out (XMPP → IRC), a message body becomes one or more PRIVMSG texts:
//! [`me_command`] recognises an action, [`to_irc_lines`] splits the body into lines that
//! cannot inject anything into the IRC stream (no CR, LF, NUL or CTCP `\x01`),
//! [`privmsg_budget`] tells how many bytes of text one PRIVMSG can carry, and
//! [`split_to_fit`] cuts a long line into pieces of that size; [`encode_action`] wraps an
//! action line in CTCP. [`sanitize_word`] makes a nick, key or password safe as one
//! command parameter.
//!
//! Coming in (IRC → XMPP), [`decode_line`] turns raw bytes into text (UTF-8, else
//! Latin-1), [`ctcp_action`] and [`is_ctcp`] sort out CTCP, and [`strip_formatting`]
//! removes mIRC colours and styles, which XMPP clients would show as garbage.

/// The IRC line limit in bytes, `\r\n` included (RFC 1459 §2.3, message tags excluded).
pub const MAX_LINE: usize = 512;

/// What the server puts around our text when it relays `PRIVMSG <target> :<text>`:
/// `PRIVMSG ` before the target, ` :` after it, and `\r\n` at the end.
const PRIVMSG_OVERHEAD: usize = "PRIVMSG ".len() + " :".len() + "\r\n".len();

/// The CTCP wrapping of an action: `\x01ACTION ` before the text and `\x01` after it.
const ACTION_OVERHEAD: usize = "\x01ACTION ".len() + "\x01".len();

/// Longest user name (ident, with a possible leading `~`) assumed by
/// [`estimated_prefix_len`].
const ESTIMATED_USER_LEN: usize = 10;

/// Longest host name assumed by [`estimated_prefix_len`]: ircds cap the host they show at
/// 63 bytes (`HOSTLEN`), and cloaks are shorter.
const ESTIMATED_HOST_LEN: usize = 63;

/// Splits an XMPP message body into texts for separate IRC PRIVMSGs.
///
/// Lines end at `\r\n`, `\r` or `\n`. A TAB becomes a space; every other C0 control
/// (U+0000..U+001F) is dropped, NUL and `\x01` included, so nothing can end the IRC line
/// early or inject a CTCP request. Lines left empty are dropped, since IRC cannot send an
/// empty PRIVMSG. No text returned contains `\r`, `\n`, `\0` or `\x01`, and none is empty.
///
/// The texts are not cut to length: pass each through [`split_to_fit`].
#[must_use]
pub fn to_irc_lines(body: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut current = String::new();
    for c in body.chars() {
        match c {
            // `\r\n` gives an empty line between the two, which is dropped like any other.
            '\r' | '\n' => {
                if !current.is_empty() {
                    lines.push(std::mem::take(&mut current));
                }
            }
            '\t' => current.push(' '),
            c if is_c0(c) => {}
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        lines.push(current);
    }
    lines
}

/// Cuts `line` into chunks of at most `max_bytes` bytes each, never inside a UTF-8
/// character, so that `chunks.concat() == line` exactly.
///
/// When the line must be cut, the cut goes right before the last space that falls in the
/// last quarter of the chunk, so words stay whole: that space starts the next chunk. It
/// must not end the earlier one, since IRC servers (ngIRCd among them) strip trailing
/// spaces, which would glue the two words together. With no space there, the chunk is
/// cut at the limit (at the end of the last whole character that fits).
///
/// No chunk is empty: an empty line gives no chunks. Callers pass `max_bytes >= 4` (the
/// longest UTF-8 character); with less, a character longer than `max_bytes` becomes a
/// chunk of its own, the only case where a chunk exceeds the limit. `max_bytes == 0` is
/// treated as 1.
pub fn split_to_fit(line: &str, max_bytes: usize) -> Vec<String> {
    let max_bytes = max_bytes.max(1);
    let mut chunks = Vec::new();
    let mut rest = line;
    while !rest.is_empty() {
        if rest.len() <= max_bytes {
            chunks.push(rest.to_owned());
            break;
        }
        // The end of the last whole character within the limit.
        let mut hard = max_bytes;
        while !rest.is_char_boundary(hard) {
            hard -= 1;
        }
        if hard == 0 {
            // The first character alone is longer than the limit: it goes out on its own.
            hard = rest.chars().next().map_or(rest.len(), char::len_utf8);
        }
        // Prefer to cut before a space in the last quarter of the chunk.
        let window_start = (hard - hard / 4).max(1);
        let cut = rest.as_bytes().get(..hard).unwrap_or_default()
            .iter()
            .rposition(|&b| b == b' ')
            .filter(|&space| space >= window_start)
            .unwrap_or(hard);
        let (chunk, tail) = rest.split_at(cut);
        chunks.push(chunk.to_owned());
        rest = tail;
    }
    chunks
}

/// How many bytes of text fit in one `PRIVMSG <target> :<text>\r\n` as the server relays
/// it to the other clients, `own_prefix_len` bytes of our prefix `:nick!user@host `
/// (the `:` and the trailing space included) before it, within [`MAX_LINE`].
///
/// With `action`, the room for the CTCP wrapping `\x01ACTION ` … `\x01` is taken off as
/// well, so the result is what the action's own text may use. Pass a conservative
/// (large) `own_prefix_len`, as the host the server shows is not always known: see
/// [`estimated_prefix_len`]. The result saturates at 0 for absurd inputs.
#[must_use]
pub fn privmsg_budget(target: &str, own_prefix_len: usize, action: bool) -> usize {
    let wrapping = if action { ACTION_OVERHEAD } else { 0 };
    MAX_LINE.saturating_sub(own_prefix_len + PRIVMSG_OVERHEAD + target.len() + wrapping)
}

/// A conservative length for our own relay prefix `:nick!user@host `, to pass to
/// [`privmsg_budget`] when the user and host the server shows for us are not known:
/// it assumes a user name of 10 bytes and a host of 63 bytes, the usual ircd limits.
#[must_use]
pub fn estimated_prefix_len(nick: &str) -> usize {
    ":".len()
        + nick.len()
        + "!".len()
        + ESTIMATED_USER_LEN
        + "@".len()
        + ESTIMATED_HOST_LEN
        + " ".len()
}

/// Decodes one received IRC line (or part of one): as UTF-8 when the bytes are valid
/// UTF-8, otherwise as Latin-1 (ISO-8859-1: each byte becomes the character U+00XX),
/// which is what most non-UTF-8 IRC clients send. Never fails.
///
/// Formatting codes and every other C0 control but TAB and CTCP's `\x01` are removed
/// here, once for the whole line ([`strip_formatting`]): topics, reasons, server errors
/// and nicks are IRC text as much as messages are, and none of them may carry a
/// character XML forbids towards the user.
#[must_use]
pub fn decode_line(bytes: &[u8]) -> String {
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text.to_owned(),
        Err(_) => bytes.iter().map(|&b| char::from(b)).collect(),
    };
    // Every line is scanned: a fold without an early exit, which the compiler vectorises
    // (most lines have nothing to strip, so an early exit would save nothing).
    let has_codes = text.bytes().fold(false, |found, b| found | (b < 0x20 && b != b'\t' && b != b'\x01'));
    if has_codes {
        strip_codes(&text, true)
    } else {
        text
    }
}

/// Removes mIRC formatting codes from received text, and every other C0 control but TAB.
///
/// Removed: `\x02` bold, `\x1D` italic, `\x1F` underline, `\x1E` strikethrough, `\x11`
/// monospace, `\x16` reverse, `\x0F` reset; `\x03` colour with its optional foreground
/// (1 or 2 digits) and, only after a foreground, its optional `,background` (1 or 2
/// digits); `\x04` hex colour with its optional foreground (exactly 6 hex digits) and,
/// only after a foreground, its optional `,background` (6 hex digits). What does not
/// match these shapes stays as text: `"\x03,5x"` gives `",5x"` (a comma with no
/// foreground before it), and `"\x031,text"` gives `",text"` (a comma with no digit
/// after it).
#[must_use]
pub fn strip_formatting(text: &str) -> String {
    strip_codes(text, false)
}

/// [`strip_formatting`], keeping CTCP's `\x01` delimiters when `keep_ctcp`.
fn strip_codes(text: &str, keep_ctcp: bool) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        rest = rest.get(c.len_utf8()..).unwrap_or_default();
        match c {
            '\x03' => rest = skip_colour(rest, u8::is_ascii_digit, 1, 2),
            '\x04' => rest = skip_colour(rest, u8::is_ascii_hexdigit, 6, 6),
            '\t' => out.push('\t'),
            '\x01' if keep_ctcp => out.push(c),
            c if is_c0(c) => {}
            c => out.push(c),
        }
    }
    out
}

/// Skips the arguments of a colour code: a foreground of `min..=max` bytes matching
/// `digit`, then, only if there was one, a `,` and a background of the same shape (the
/// comma is skipped only when a background follows it).
fn skip_colour(rest: &str, digit: fn(&u8) -> bool, min: usize, max: usize) -> &str {
    let colour_len = |s: &str| {
        let n = s
            .as_bytes()
            .iter()
            .take(max)
            .take_while(|b| digit(b))
            .count();
        if n >= min {
            n
        } else {
            0
        }
    };
    let fg = colour_len(rest);
    if fg == 0 {
        return rest;
    }
    let rest = rest.get(fg..).unwrap_or_default();
    if let Some(after_comma) = rest.strip_prefix(',') {
        let bg = colour_len(after_comma);
        if bg > 0 {
            return after_comma.get(bg..).unwrap_or_default();
        }
    }
    rest
}

/// The text of a CTCP ACTION (`/me`), if `text` (a received PRIVMSG's text) is one:
/// `\x01ACTION waves\x01` gives `Some("waves")`. The closing `\x01` is optional, as
/// clients vary, and the command name is matched without regard to ASCII case.
/// `\x01ACTION\x01` gives `Some("")`.
#[must_use]
pub fn ctcp_action(text: &str) -> Option<&str> {
    let inner = text.strip_prefix('\x01')?;
    let inner = inner.strip_suffix('\x01').unwrap_or(inner);
    let (command, action) = match inner.split_once(' ') {
        Some((command, action)) => (command, action),
        None => (inner, ""),
    };
    command.eq_ignore_ascii_case("ACTION").then_some(action)
}

/// Whether a received PRIVMSG or NOTICE text is a CTCP request or reply other than an
/// ACTION (VERSION, PING, DCC…), which the gateway should not show as text. An ACTION
/// gives `false`: use [`ctcp_action`] for it.
#[must_use]
pub fn is_ctcp(text: &str) -> bool {
    text.starts_with('\x01') && ctcp_action(text).is_none()
}

/// Wraps an action's text in CTCP for sending: `waves` gives `\x01ACTION waves\x01`.
///
/// `text` should be one line from [`to_irc_lines`]; as a safeguard, any CR, LF, NUL or
/// `\x01` left in it is dropped so the wrapping cannot be broken out of.
#[must_use]
pub fn encode_action(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + ACTION_OVERHEAD);
    out.push_str("\x01ACTION ");
    out.extend(
        text.chars()
            .filter(|c| !matches!(c, '\r' | '\n' | '\0' | '\x01')),
    );
    out.push('\x01');
    out
}

/// The action in an XMPP message body, by the `/me` convention (XEP-0245): a body that
/// starts with `/me ` gives `Some` of the rest (`"/me waves"` gives `Some("waves")`);
/// any other body gives `None`.
#[must_use]
pub fn me_command(body: &str) -> Option<&str> {
    body.strip_prefix("/me ")
}

/// Makes `word` safe as one middle parameter of an outgoing IRC command (a nick, the
/// USER name, a channel key, a `NickServ` password): every C0 control (CR, LF and NUL
/// included) and every ASCII space is dropped, and so are leading `:`s, which would
/// turn it into a trailing parameter. The result may be empty; callers decide what to
/// do then.
#[must_use]
pub fn sanitize_word(word: &str) -> String {
    let kept: String = word.chars().filter(|&c| c != ' ' && !is_c0(c)).collect();
    kept.trim_start_matches(':').to_owned()
}

/// Whether `target` can stand as the one target of a `PRIVMSG`: not empty, no space,
/// control character or comma (several targets), not starting with `:` (the text).
pub fn is_one_target(target: &str) -> bool {
    !target.is_empty() && !target.starts_with(':') && !target.chars().any(|c| c == ' ' || c == ',' || is_c0(c))
}

/// Whether `c` is a C0 control character (U+0000..U+001F).
fn is_c0(c: char) -> bool {
    c < '\x20'
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn crlf_injection_gives_separate_texts() {
        assert_eq!(to_irc_lines("hi\r\nQUIT :x"), ["hi", "QUIT :x"]);
        assert_eq!(to_irc_lines("a\rb\nc\r\n\r\nd"), ["a", "b", "c", "d"]);
    }

    #[test]
    fn nul_and_ctcp_injection_stripped() {
        assert_eq!(to_irc_lines("hi\0QUIT"), ["hiQUIT"]);
        assert_eq!(to_irc_lines("\x01VERSION\x01"), ["VERSION"]);
        assert_eq!(to_irc_lines("x\x01DCC SEND evil\x01"), ["xDCC SEND evil"]);
        assert_eq!(to_irc_lines("\x02bold\x03"), ["bold"]);
    }

    #[test]
    fn tab_becomes_space() {
        assert_eq!(to_irc_lines("a\tb"), ["a b"]);
    }

    #[test]
    fn empty_lines_dropped() {
        assert!(to_irc_lines("").is_empty());
        assert!(to_irc_lines("\r\n\n\r").is_empty());
        assert!(to_irc_lines("\0\x01\r\n\x01").is_empty());
        assert_eq!(to_irc_lines("\n\na\n\n"), ["a"]);
    }

    #[test]
    fn whitespace_only_line_kept() {
        assert_eq!(to_irc_lines(" \n"), [" "]);
    }

    #[test]
    fn unicode_kept() {
        assert_eq!(to_irc_lines("café 🎉\nñ"), ["café 🎉", "ñ"]);
    }

    fn check_chunks(line: &str, max: usize) -> Vec<String> {
        let chunks = split_to_fit(line, max);
        assert_eq!(chunks.concat(), line);
        for chunk in &chunks {
            assert!(!chunk.is_empty());
            assert!(chunk.len() <= max, "{} > {max}", chunk.len());
        }
        chunks
    }

    #[test]
    fn split_short_line_whole() {
        assert_eq!(split_to_fit("hello", 10), ["hello"]);
        assert_eq!(split_to_fit("hello", 5), ["hello"]);
        assert!(split_to_fit("", 10).is_empty());
    }

    #[test]
    fn split_multibyte_600_bytes() {
        let e_acute = "é".repeat(300); // 600 bytes, 2 each
        let chunks = check_chunks(&e_acute, 101);
        assert_eq!(chunks[0].len(), 100);
        assert_eq!(chunks.len(), 6);

        let emoji = "😀".repeat(150); // 600 bytes, 4 each
        let chunks = check_chunks(&emoji, 10);
        assert!(chunks.iter().all(|c| c.len() == 8));

        let mixed = "aé😀€".repeat(60); // 600 bytes
        for max in 4..40 {
            check_chunks(&mixed, max);
        }
        check_chunks(&mixed, 450);
    }

    #[test]
    fn split_prefers_space_in_last_quarter() {
        let line = "aaaaaaaaaaaaaaa bbbbbbbbbb";
        // Limit 20: the space at index 15 is in the last quarter (>= 15): cut before it.
        assert_eq!(split_to_fit(line, 20), ["aaaaaaaaaaaaaaa", " bbbbbbbbbb"]);
        // Limit 24: the space is before the last quarter (15 < 18): hard cut.
        assert_eq!(split_to_fit(line, 24), ["aaaaaaaaaaaaaaa bbbbbbbb", "bb"]);
    }

    #[test]
    fn split_words() {
        let line = "the quick brown fox jumps over the lazy dog";
        let chunks = check_chunks(line, 12);
        assert_eq!(
            chunks,
            ["the quick", " brown fox", " jumps over", " the lazy", " dog"]
        );
    }

    #[test]
    fn split_no_space_hard_cut() {
        assert_eq!(split_to_fit("abcdefghij", 4), ["abcd", "efgh", "ij"]);
    }

    #[test]
    fn split_tiny_limits_terminate() {
        assert_eq!(split_to_fit("ab", 0), ["a", "b"]);
        assert_eq!(split_to_fit("😀é", 1), ["😀", "é"]);
        assert_eq!(split_to_fit("😀a", 2), ["😀", "a"]);
        assert_eq!(split_to_fit("a😀", 3), ["a", "😀"]);
    }

    #[test]
    fn budget() {
        assert_eq!(MAX_LINE, 512);
        // ":n!u@h " is 7 bytes; "PRIVMSG #c :" 12; "\r\n" 2.
        assert_eq!(privmsg_budget("#c", 7, false), 512 - 7 - 12 - 2);
        assert_eq!(privmsg_budget("#c", 7, true), 512 - 7 - 12 - 2 - 9);
        assert_eq!(privmsg_budget("#c", 1000, false), 0);
        let prefix = ":nick!~user@host.example ";
        let text = "x".repeat(privmsg_budget("#rust", prefix.len(), true));
        let line = format!("{prefix}PRIVMSG #rust :{}\r\n", encode_action(&text));
        assert_eq!(line.len(), MAX_LINE);
    }

    #[test]
    fn estimated_prefix() {
        assert_eq!(estimated_prefix_len("nick"), 1 + 4 + 1 + 10 + 1 + 63 + 1);
        assert!(estimated_prefix_len("nick") >= ":nick!~user@host.example ".len());
    }

    #[test]
    fn decode_latin1_and_utf8() {
        assert_eq!(decode_line(b"caf\xe9"), "café");
        assert_eq!(decode_line("café 😀".as_bytes()), "café 😀");
        assert_eq!(decode_line(b"plain"), "plain");
        assert_eq!(decode_line(b"\xff\xfe"), "ÿþ");
        assert_eq!(decode_line(b""), "");
    }

    #[test]
    fn strip_styles() {
        assert_eq!(
            strip_formatting("\x02b\x02 \x1Di\x1D \x1Fu\x1F \x1Es\x1E \x11m\x11 \x16r\x16\x0F"),
            "b i u s m r"
        );
    }

    #[test]
    fn strip_colours() {
        assert_eq!(strip_formatting("\x0312,34text"), "text");
        assert_eq!(strip_formatting("\x03,5x"), ",5x");
        assert_eq!(strip_formatting("\x031,text"), ",text");
        assert_eq!(strip_formatting("\x034red\x03 plain"), "red plain");
        assert_eq!(strip_formatting("\x03123"), "3");
        assert_eq!(strip_formatting("\x034,123"), "3");
        assert_eq!(strip_formatting("\x0399,99x\x03"), "x");
        assert_eq!(strip_formatting("\x03"), "");
        assert_eq!(strip_formatting("a\x03,"), "a,");
    }

    #[test]
    fn strip_hex_colours() {
        assert_eq!(strip_formatting("\x04FF0000red"), "red");
        assert_eq!(strip_formatting("\x04ff0000,00FF00x"), "x");
        assert_eq!(strip_formatting("\x04ff0000,00FFx"), ",00FFx");
        assert_eq!(strip_formatting("\x04abcx"), "abcx");
        assert_eq!(strip_formatting("\x04"), "");
    }

    #[test]
    fn strip_other_controls_keeps_tab() {
        assert_eq!(strip_formatting("a\tb\0c\x01d\x07e"), "a\tbcde");
        assert_eq!(strip_formatting("café 😀"), "café 😀");
    }

    #[test]
    fn actions() {
        assert_eq!(ctcp_action("\x01ACTION waves\x01"), Some("waves"));
        assert_eq!(ctcp_action("\x01ACTION waves"), Some("waves"));
        assert_eq!(ctcp_action("\x01action waves\x01"), Some("waves"));
        assert_eq!(ctcp_action("\x01ACTION\x01"), Some(""));
        assert_eq!(
            ctcp_action("\x01ACTION  two spaces\x01"),
            Some(" two spaces")
        );
        assert_eq!(ctcp_action("\x01ACTIONS x\x01"), None);
        assert_eq!(ctcp_action("\x01VERSION\x01"), None);
        assert_eq!(ctcp_action("ACTION waves"), None);
        assert_eq!(ctcp_action("hello"), None);
    }

    #[test]
    fn other_ctcp() {
        assert!(is_ctcp("\x01VERSION\x01"));
        assert!(is_ctcp("\x01PING 123\x01"));
        assert!(is_ctcp("\x01DCC SEND x 1 2 3"));
        assert!(!is_ctcp("\x01ACTION waves\x01"));
        assert!(!is_ctcp("hello \x01"));
        assert!(!is_ctcp(""));
    }

    #[test]
    fn encode_actions() {
        assert_eq!(encode_action("waves"), "\x01ACTION waves\x01");
        assert_eq!(encode_action("a\x01b\r\nc\0"), "\x01ACTION abc\x01");
        assert_eq!(ctcp_action(&encode_action("waves")), Some("waves"));
    }

    #[test]
    fn me() {
        assert_eq!(me_command("/me waves"), Some("waves"));
        assert_eq!(me_command("/me "), Some(""));
        assert_eq!(me_command("/me"), None);
        assert_eq!(me_command("/meow"), None);
        assert_eq!(me_command(" /me waves"), None);
        assert_eq!(me_command("hello"), None);
    }

    #[test]
    fn one_target_is_one_word_that_is_not_the_text() {
        for good in ["#rust", "alice", "NickServ", "[m]", "#ops{"] {
            assert!(is_one_target(good), "{good}");
        }
        for bad in ["", "NickServ REGISTER", ":x", "a,b", "a\rb", "a\nb", "a\0b"] {
            assert!(!is_one_target(bad), "{bad:?}");
        }
    }

    #[test]
    fn sanitize_words() {
        assert_eq!(sanitize_word("alice"), "alice");
        assert_eq!(sanitize_word("pass word\r\nQUIT :x"), "passwordQUIT:x");
        assert_eq!(sanitize_word("::key"), "key");
        assert_eq!(sanitize_word(" :k\0\x01ey"), "key");
        assert_eq!(sanitize_word("\t \r\n"), "");
        assert_eq!(sanitize_word("ñick[]"), "ñick[]");
    }

    proptest! {
        #[test]
        fn prop_split_to_fit(line in "\\PC{0,300}", max in 4usize..120) {
            let chunks = split_to_fit(&line, max);
            prop_assert_eq!(chunks.concat(), line);
            for chunk in &chunks {
                prop_assert!(!chunk.is_empty());
                prop_assert!(chunk.len() <= max);
            }
        }

        #[test]
        fn prop_split_to_fit_words(line in "([a-zé😀]{1,12} ){0,40}", max in 4usize..60) {
            let chunks = split_to_fit(&line, max);
            prop_assert_eq!(chunks.concat(), line);
            for chunk in &chunks {
                prop_assert!(!chunk.is_empty());
                prop_assert!(chunk.len() <= max);
            }
        }

        #[test]
        fn prop_split_to_fit_any_limit(line in "\\PC{0,40}", max in 0usize..8) {
            let chunks = split_to_fit(&line, max);
            prop_assert_eq!(chunks.concat(), line);
            for chunk in &chunks {
                prop_assert!(!chunk.is_empty());
                prop_assert!(chunk.len() <= max.max(1) || chunk.chars().count() == 1);
            }
        }

        #[test]
        fn prop_decode_line_leaves_nothing_xml_or_irc_text_forbids(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let line = decode_line(&bytes);
            prop_assert!(!line.chars().any(|c| c < ' ' && c != '\t' && c != '\x01'), "{:?}", line);
        }

        #[test]
        fn prop_to_irc_lines_safe(body in any::<String>()) {
            for line in to_irc_lines(&body) {
                prop_assert!(!line.is_empty());
                prop_assert!(!line.contains(['\r', '\n', '\0', '\x01']));
                prop_assert!(!line.chars().any(|c| c < ' '));
            }
        }

        #[test]
        fn prop_to_irc_lines_controls(body in "[a\\x00-\\x1f ]{0,60}") {
            for line in to_irc_lines(&body) {
                prop_assert!(!line.is_empty());
                prop_assert!(!line.contains(['\r', '\n', '\0', '\x01']));
            }
        }

        #[test]
        fn prop_sanitize_word_is_one_param(word in any::<String>()) {
            let clean = sanitize_word(&word);
            prop_assert!(!clean.starts_with(':'));
            prop_assert!(!clean.chars().any(|c| c <= ' '));
        }

        #[test]
        fn prop_strip_formatting_no_controls(text in any::<String>()) {
            let stripped = strip_formatting(&text);
            prop_assert!(!stripped.chars().any(|c| c < ' ' && c != '\t'));
        }

        #[test]
        fn prop_decode_never_fails(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let text = decode_line(&bytes);
            prop_assert!(!text.chars().any(|c| c < ' ' && c != '\t' && c != '\x01'));
            let plain = !bytes.iter().any(|&b| b < b' ' && b != b'\t' && b != 1);
            match std::str::from_utf8(&bytes) {
                Ok(utf8) if plain => prop_assert_eq!(text, utf8),
                Err(_) if plain => prop_assert_eq!(text.chars().count(), bytes.len()),
                _ => {}
            }
        }
    }

    #[test]
    fn received_lines_lose_formatting_but_keep_ctcp() {
        assert_eq!(decode_line(b":srv 332 me #c :\x0304red\x03 and \x02bold\x02"), ":srv 332 me #c :red and bold");
        assert_eq!(decode_line(b":a!b@c KICK #c d :go\x07 away\x1f"), ":a!b@c KICK #c d :go away");
        assert_eq!(decode_line(b":a!b@c PRIVMSG #c :\x01ACTION \x0312waves\x01"), ":a!b@c PRIVMSG #c :\x01ACTION waves\x01");
        assert_eq!(decode_line(b"plain\ttext"), "plain\ttext");
    }
}
