//! Mail going out: what the XMPP user wrote becomes an RFC 5322 message, ready for SMTP.
//! Pure functions, no I/O (but [`new_message_id`] reads the clock and a random number).
//!
//! [`build`] makes a `text/plain; charset=utf-8` message with From, To, Subject, Date,
//! Message-ID and, for a reply, In-Reply-To and References; with attachments, a
//! `multipart/mixed` of that text and one part per file. Nothing the user typed can add
//! a header: the subject goes through [`sanitize_header_text`], addresses through
//! [`validate_address`], and message ids are checked to be one printable ASCII token
//! each. Non-ASCII subjects are encoded as RFC 2047 words by lettre.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bridge_core::model::Attachment;
use lettre::message::header::ContentType;
use lettre::message::{Mailbox, Mailboxes, MultiPart, SinglePart};
use lettre::Address;

/// The first instant after the last one a `Date` header can show (year 10000); lettre's
/// date formatting panics from there on.
const LAST_DATE: Duration = Duration::from_secs(253_402_300_800);

/// A mail to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingMail {
    /// The user's own address, a bare `local@domain` (see [`validate_address`]).
    pub from: String,
    /// The user's name, shown beside `from` (`"Alice Liddell" <alice@...>`); controls
    /// and line breaks become spaces, and lettre quotes or encodes the rest.
    pub from_name: Option<String>,
    /// The recipients, one or more bare `local@domain`, all in `To`.
    pub to: Vec<String>,
    /// The subject as the user wrote it; controls and line breaks become spaces.
    pub subject: String,
    /// The text; any line ends (`\n`, `\r\n`, `\r`) become CRLF on the wire.
    pub body: String,
    /// The Message-ID of the mail this one answers, with or without angle brackets.
    pub in_reply_to: Option<String>,
    /// The Message-IDs of the conversation so far, oldest first, with or without angle
    /// brackets. [`build`] adds `in_reply_to` at the end when it is missing, as RFC 5322
    /// §3.6.4 has it, and drops repeats.
    pub references: Vec<String>,
    /// This mail's own Message-ID, without angle brackets: see [`new_message_id`].
    pub message_id: String,
    /// Files attached after the text, each with its name and content type.
    pub attachments: Vec<Attachment>,
}

/// Why a mail could not be built. Each message names the header field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutgoingError {
    /// An address is not a bare, syntactically valid mailbox.
    #[error("invalid {field} address {address:?}: {reason}")]
    InvalidAddress {
        /// The header field (`From`, `To`), or `address` from [`validate_address`].
        field: &'static str,
        /// The address as given.
        address: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A message id is empty or not one printable ASCII token.
    #[error("invalid {field} message id {id:?}: it must be printable ASCII without spaces or angle brackets inside")]
    InvalidMessageId {
        /// The header field (`Message-ID`, `In-Reply-To`, `References`).
        field: &'static str,
        /// The id as given.
        id: String,
    },
    /// The date is before 1970 or after the year 9999, which the Date header cannot show.
    #[error("invalid Date: {0:?} is outside 1970..=9999")]
    InvalidDate(SystemTime),
    /// lettre refused the message (not expected once the fields above are checked).
    #[error("the message could not be built: {0}")]
    Build(String),
}

/// A new, unique Message-ID for a mail sent from `domain`, without angle brackets:
/// `xgw.<hex>@domain`, where the hex is the time in nanoseconds, a per-process counter
/// and 64 random bits.
///
/// `domain` is lower-cased and stripped of anything but letters, digits, `-` and `.`;
/// when nothing is left, `localhost` is used.
#[must_use]
pub fn new_message_id(domain: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let random = fastrand::u64(..);
    let domain: String = domain
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'))
        .collect::<String>()
        .trim_matches('.')
        .to_ascii_lowercase();
    let domain = if domain.is_empty() { "localhost" } else { &domain };
    format!("xgw.{nanos:x}{count:x}{random:016x}@{domain}")
}

/// Builds the message, dated `date`: From, To, Subject, Date, Message-ID, In-Reply-To and
/// References (when replying), MIME-Version, and a `text/plain; charset=utf-8` body in
/// the most compact transfer encoding lettre finds (7bit, quoted-printable or base64).
///
/// # Errors
///
/// [`OutgoingError::InvalidAddress`] for a bad From or To, [`OutgoingError::InvalidMessageId`]
/// for a bad Message-ID, In-Reply-To or References, [`OutgoingError::InvalidDate`] for a
/// date the header cannot show, [`OutgoingError::Build`] if lettre refuses anyway.
pub fn build(mail: &OutgoingMail, date: SystemTime) -> Result<lettre::Message, OutgoingError> {
    let from = check_address("From", &mail.from)?;
    if mail.to.is_empty() {
        return Err(OutgoingError::InvalidAddress { field: "To", address: String::new(), reason: "there is no recipient".into() });
    }
    let mut to = Mailboxes::new();
    for address in &mail.to {
        to.push(Mailbox::new(None, check_address("To", address)?));
    }
    match date.duration_since(UNIX_EPOCH) {
        Ok(since) if since < LAST_DATE => {}
        _ => return Err(OutgoingError::InvalidDate(date)),
    }
    let message_id = check_message_id("Message-ID", &mail.message_id)?;
    let in_reply_to = mail
        .in_reply_to
        .as_deref()
        .map(|id| check_message_id("In-Reply-To", id))
        .transpose()?;
    let mut references: Vec<String> = Vec::new();
    for id in &mail.references {
        let id = check_message_id("References", id)?;
        if !references.contains(&id) {
            references.push(id);
        }
    }
    if let Some(parent) = &in_reply_to {
        if !references.contains(parent) {
            references.push(parent.clone());
        }
    }

    let mut builder = lettre::Message::builder()
        .from(Mailbox::new(mail.from_name.as_deref().map(sanitize_header_text).filter(|n| !n.is_empty()), from))
        .mailbox(lettre::message::header::To::from(to))
        .subject(sanitize_header_text(&mail.subject))
        .date(date)
        .message_id(Some(message_id));
    if let Some(parent) = in_reply_to {
        builder = builder.in_reply_to(parent);
    }
    if !references.is_empty() {
        builder = builder.references(references.join(" "));
    }
    let text = SinglePart::plain(normalize_line_ends(&mail.body));
    let built = if mail.attachments.is_empty() {
        builder.singlepart(text)
    } else {
        let mut parts = MultiPart::mixed().singlepart(text);
        for file in &mail.attachments {
            parts = parts.singlepart(attachment_part(file));
        }
        builder.multipart(parts)
    };
    built.map_err(|e| OutgoingError::Build(e.to_string()))
}

/// The MIME part of one file: `Content-Disposition: attachment` with its name (lettre
/// encodes a name that is not plain ASCII), its content type (`application/octet-stream`
/// when it does not parse), base64 unless the bytes are plain text lines.
fn attachment_part(file: &Attachment) -> SinglePart {
    let content_type = ContentType::parse(&file.content_type)
        .unwrap_or_else(|_| ContentType::parse("application/octet-stream").expect("a valid content type"));
    let name = sanitize_header_text(&file.name.replace(['/', '\\', '"'], "_"));
    let name = if name.is_empty() { "attachment".to_owned() } else { name };
    lettre::message::Attachment::new(name).body(file.content.clone(), content_type)
}

/// Text made safe for one header field: CR, LF, TAB and every other control character
/// become a space, runs of whitespace become one space, and the ends are trimmed. So
/// `"Hi\r\nBcc: x"` becomes `"Hi Bcc: x"`, which cannot start a header of its own.
#[must_use]
pub fn sanitize_header_text(value: &str) -> String {
    let spaced: String = value
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    spaced.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Checks that `address` is a bare mailbox, `local@domain`, as lettre accepts it: no
/// display name or angle brackets, no whitespace, CR, LF or other control characters.
///
/// # Errors
///
/// [`OutgoingError::InvalidAddress`] (field `address`) saying what is wrong.
pub fn validate_address(address: &str) -> Result<Address, OutgoingError> {
    check_address("address", address)
}

/// [`validate_address`], naming `field` in the error.
fn check_address(field: &'static str, address: &str) -> Result<Address, OutgoingError> {
    let invalid = |reason: &str| OutgoingError::InvalidAddress {
        field,
        address: address.to_owned(),
        reason: reason.to_owned(),
    };
    if address.is_empty() {
        return Err(invalid("it is empty"));
    }
    if address.chars().any(|c| c == '\r' || c == '\n') {
        return Err(invalid("it contains a line break"));
    }
    if address.chars().any(char::is_control) {
        return Err(invalid("it contains a control character"));
    }
    if address.chars().any(char::is_whitespace) {
        return Err(invalid("it contains whitespace"));
    }
    if address.contains(['<', '>', ',', ';']) {
        return Err(invalid("it must be a bare address, without a name, brackets or a list"));
    }
    address
        .parse::<Address>()
        .map_err(|e| invalid(&e.to_string()))
}

/// A message id with angle brackets for a header: `id` may come with or without them,
/// and must then be non-empty printable ASCII without spaces or further brackets.
fn check_message_id(field: &'static str, id: &str) -> Result<String, OutgoingError> {
    let bare = id
        .strip_prefix('<')
        .and_then(|rest| rest.strip_suffix('>'))
        .unwrap_or(id);
    let valid = !bare.is_empty() && bare.bytes().all(|b| b.is_ascii_graphic() && b != b'<' && b != b'>');
    if valid {
        Ok(format!("<{bare}>"))
    } else {
        Err(OutgoingError::InvalidMessageId { field, id: id.to_owned() })
    }
}

/// `\r\n` and a lone `\r` become `\n` (lettre then writes every line end as CRLF).
fn normalize_line_ends(body: &str) -> String {
    body.replace("\r\n", "\n").replace('\r', "\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use mail_parser::{HeaderValue, MessageParser, MimeHeaders};
    use proptest::prelude::*;
    use std::collections::HashSet;

    /// 2024-03-01 12:34:56 UTC.
    fn date() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_709_296_496)
    }

    fn mail() -> OutgoingMail {
        OutgoingMail {
            from: "alice@example.org".into(),
            from_name: None,
            to: vec!["bob@example.net".into()],
            subject: "Lunch?".into(),
            body: "Shall we have lunch?\n\n-- \nAlice\n".into(),
            in_reply_to: None,
            references: Vec::new(),
            message_id: "xgw.1234abcd@example.org".into(),
            attachments: Vec::new(),
        }
    }

    /// The formatted message as text, and its header block.
    fn render(mail: &OutgoingMail) -> (String, String) {
        let raw = String::from_utf8(build(mail, date()).unwrap().formatted()).unwrap();
        let headers = raw.split("\r\n\r\n").next().unwrap().to_owned();
        (raw, headers)
    }

    /// The header lines starting with `name:` (case-insensitive), unfolded.
    fn header_lines(headers: &str, name: &str) -> Vec<String> {
        let prefix = format!("{}:", name.to_ascii_lowercase());
        let unfolded = headers.replace("\r\n ", " ").replace("\r\n\t", " ");
        unfolded
            .split("\r\n")
            .filter(|l| l.to_ascii_lowercase().starts_with(&prefix))
            .map(str::to_owned)
            .collect()
    }

    /// The text body parsed back, with LF line ends and without trailing ones: lettre ends
    /// a 7bit or quoted-printable body with one more CRLF, a base64 body not.
    fn body_of(parsed: &mail_parser::Message<'_>) -> String {
        let text = parsed.body_text(0).unwrap_or_default().replace("\r\n", "\n");
        text.trim_end_matches('\n').to_owned()
    }

    fn text_list(value: &HeaderValue<'_>) -> Vec<String> {
        match value {
            HeaderValue::Text(t) => vec![t.to_string()],
            HeaderValue::TextList(l) => l.iter().map(ToString::to_string).collect(),
            _ => Vec::new(),
        }
    }

    #[test]
    fn headers_are_present_and_exact() {
        let (raw, headers) = render(&mail());
        assert_eq!(header_lines(&headers, "From"), ["From: alice@example.org"]);
        assert_eq!(header_lines(&headers, "To"), ["To: bob@example.net"]);
        assert_eq!(header_lines(&headers, "Subject"), ["Subject: Lunch?"]);
        assert_eq!(header_lines(&headers, "Date"), ["Date: Fri, 01 Mar 2024 12:34:56 +0000"]);
        assert_eq!(header_lines(&headers, "Message-ID"), ["Message-ID: <xgw.1234abcd@example.org>"]);
        assert_eq!(header_lines(&headers, "MIME-Version"), ["MIME-Version: 1.0"]);
        assert_eq!(header_lines(&headers, "Content-Type"), ["Content-Type: text/plain; charset=utf-8"]);
        assert!(header_lines(&headers, "In-Reply-To").is_empty());
        assert!(header_lines(&headers, "References").is_empty());

        let parsed = MessageParser::default().parse(raw.as_bytes()).unwrap();
        let from = parsed.from().unwrap().first().unwrap();
        assert_eq!(from.address(), Some("alice@example.org"));
        assert_eq!(from.name(), None);
        assert_eq!(parsed.to().unwrap().first().unwrap().address(), Some("bob@example.net"));
        assert_eq!(parsed.subject(), Some("Lunch?"));
        assert_eq!(parsed.message_id(), Some("xgw.1234abcd@example.org"));
        assert_eq!(parsed.date().unwrap().to_timestamp(), 1_709_296_496);
        assert_eq!(body_of(&parsed), "Shall we have lunch?\n\n-- \nAlice");
    }

    #[test]
    fn several_recipients_share_one_to_header() {
        let to = vec!["bob@example.net".to_owned(), "carol@example.com".to_owned(), "dave@example.org".to_owned()];
        let (raw, headers) = render(&OutgoingMail { to: to.clone(), ..mail() });
        assert_eq!(header_lines(&headers, "To").len(), 1, "{headers}");
        let parsed = MessageParser::default().parse(raw.as_bytes()).unwrap();
        let got: Vec<&str> = parsed.to().unwrap().iter().filter_map(|a| a.address()).collect();
        assert_eq!(got, to);
        let err = build(&OutgoingMail { to: Vec::new(), ..mail() }, date()).unwrap_err();
        assert!(err.to_string().starts_with("invalid To address"), "{err}");
        let err = build(&OutgoingMail { to: vec!["bob@example.net".into(), "x\r\nBcc: e@v.il".into()], ..mail() }, date()).unwrap_err();
        assert!(matches!(err, OutgoingError::InvalidAddress { field: "To", .. }), "{err}");
    }

    #[test]
    fn attachments_become_named_parts_with_the_same_bytes() {
        let photo: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
        let files = vec![
            Attachment { name: "photo.jpg".into(), content_type: "image/jpeg".into(), content: photo.clone() },
            Attachment { name: "Grüße\r\nBcc: x@y.z/../a\"b.txt".into(), content_type: "not a type".into(), content: b"plain".to_vec() },
        ];
        let (raw, headers) = render(&OutgoingMail { attachments: files, ..mail() });
        assert!(header_lines(&headers, "Content-Type")[0].starts_with("Content-Type: multipart/mixed"), "{headers}");
        assert!(!raw.contains("\r\nBcc:"), "{raw}");
        let parsed = MessageParser::default().parse(raw.as_bytes()).unwrap();
        assert_eq!(body_of(&parsed), "Shall we have lunch?\n\n-- \nAlice");
        let attachments: Vec<_> = parsed.attachments().collect();
        assert_eq!(attachments.len(), 2);
        assert_eq!(attachments[0].attachment_name(), Some("photo.jpg"));
        assert_eq!(attachments[0].content_type().map(|c| (c.ctype(), c.subtype())), Some(("image", Some("jpeg"))));
        assert_eq!(attachments[0].contents(), &photo[..]);
        assert_eq!(attachments[1].attachment_name(), Some("Grüße Bcc: x@y.z_.._a_b.txt"));
        assert_eq!(attachments[1].content_type().map(|c| c.ctype()), Some("application"));
        assert_eq!(attachments[1].contents(), b"plain");
        // And the gateway reading it back lists them.
        let incoming = crate::incoming::parse_mail(raw.as_bytes()).unwrap();
        assert_eq!(incoming.attachments.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(), ["photo.jpg", "Grüße Bcc: x@y.z_.._a_b.txt"]);
    }

    #[test]
    fn utf8_subject_is_encoded_and_decodes_back() {
        let subject = "Grüße aus Köln — 你好 🎉 and a fairly long tail so that the header has to be folded";
        let (raw, headers) = render(&OutgoingMail { subject: subject.into(), ..mail() });
        assert!(headers.is_ascii(), "{headers}");
        let line = &header_lines(&headers, "Subject")[0];
        assert!(line.contains("=?utf-8?"), "{line}");
        let parsed = MessageParser::default().parse(raw.as_bytes()).unwrap();
        assert_eq!(parsed.subject(), Some(subject));
    }

    #[test]
    fn the_display_name_is_shown_quoted_or_encoded_and_cannot_add_a_header() {
        for name in ["Alice Liddell", "Liddell, Alice \"Al\"", "Zoë Ångström", "Eve\r\nBcc: all@evil.example"] {
            let (raw, headers) = render(&OutgoingMail { from_name: Some(name.into()), ..mail() });
            assert!(header_lines(&headers, "Bcc").is_empty(), "{headers}");
            let parsed = MessageParser::default().parse(raw.as_bytes()).unwrap();
            let from = parsed.from().and_then(|a| a.first()).unwrap();
            assert_eq!(from.address(), Some("alice@example.org"), "{headers}");
            assert_eq!(from.name(), Some(sanitize_header_text(name).as_str()), "{headers}");
        }
        // Blank: the address alone.
        let (raw, _) = render(&OutgoingMail { from_name: Some(" \t".into()), ..mail() });
        let parsed = MessageParser::default().parse(raw.as_bytes()).unwrap();
        assert_eq!(parsed.from().and_then(|a| a.first()).unwrap().name(), None);
    }

    #[test]
    fn bcc_injection_in_the_subject_adds_no_header() {
        let evil = OutgoingMail { subject: "Hello\r\nBcc: eve@evil.example\r\n\r\nbody".into(), ..mail() };
        let (raw, headers) = render(&evil);
        assert_eq!(header_lines(&headers, "Subject").len(), 1, "{headers}");
        assert!(header_lines(&headers, "Bcc").is_empty(), "{headers}");
        let parsed = MessageParser::default().parse(raw.as_bytes()).unwrap();
        assert!(parsed.bcc().is_none());
        assert_eq!(parsed.subject(), Some("Hello Bcc: eve@evil.example body"));
        let lone = OutgoingMail { subject: "a\rBcc: x@y.z\nCc: w@y.z\u{0}".into(), ..mail() };
        let (_, headers) = render(&lone);
        assert!(header_lines(&headers, "Bcc").is_empty() && header_lines(&headers, "Cc").is_empty());
    }

    #[test]
    fn sanitize_header_text_cases() {
        assert_eq!(sanitize_header_text("  Re:\r\n\tLunch\u{7}?\u{0} "), "Re: Lunch ?");
        assert_eq!(sanitize_header_text("\r\nBcc: x"), "Bcc: x");
        assert_eq!(sanitize_header_text("a\u{85}b"), "a b");
        assert_eq!(sanitize_header_text("Grüße"), "Grüße");
        assert_eq!(sanitize_header_text(""), "");
    }

    #[test]
    fn addresses_are_validated() {
        assert_eq!(validate_address("bob@example.net").unwrap().to_string(), "bob@example.net");
        assert!(validate_address("o'neil+tag@sub.example.co.uk").is_ok());
        for bad in [
            "",
            "bob@example.net\r\nBcc: eve@evil.example",
            "bob@example.net\n",
            "bob\r@example.net",
            "Bob <bob@example.net>",
            "<bob@example.net>",
            "bob example@net",
            "bob@",
            "@example.net",
            "bob",
            "a@b.example,c@d.example",
            "bob@exa\u{0}mple.net",
        ] {
            let err = validate_address(bad).unwrap_err();
            assert!(matches!(err, OutgoingError::InvalidAddress { field: "address", .. }), "{bad:?}: {err}");
        }
        let err = validate_address("bob@example.net\r\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid address address \"bob@example.net\\r\\n\": it contains a line break"
        );
    }

    #[test]
    fn build_names_the_bad_field() {
        let err = build(&OutgoingMail { to: vec!["x\r\nBcc: e@v.il".into()], ..mail() }, date()).unwrap_err();
        assert!(matches!(err, OutgoingError::InvalidAddress { field: "To", .. }), "{err}");
        assert!(err.to_string().starts_with("invalid To address"), "{err}");
        let err = build(&OutgoingMail { from: "Alice <alice@example.org>".into(), ..mail() }, date()).unwrap_err();
        assert!(err.to_string().starts_with("invalid From address"), "{err}");
        let err = build(&OutgoingMail { message_id: "a b@c".into(), ..mail() }, date()).unwrap_err();
        assert_eq!(err, OutgoingError::InvalidMessageId { field: "Message-ID", id: "a b@c".into() });
        let err = build(&OutgoingMail { in_reply_to: Some("<>".into()), ..mail() }, date()).unwrap_err();
        assert!(err.to_string().starts_with("invalid In-Reply-To message id"), "{err}");
        let err =
            build(&OutgoingMail { references: vec!["ok@x".into(), "x\r\nBcc: y".into()], ..mail() }, date())
                .unwrap_err();
        assert!(err.to_string().starts_with("invalid References message id"), "{err}");
        let err = build(&mail(), UNIX_EPOCH - Duration::from_secs(1)).unwrap_err();
        assert!(matches!(err, OutgoingError::InvalidDate(_)));
        assert!(err.to_string().starts_with("invalid Date"), "{err}");
        assert!(build(&mail(), UNIX_EPOCH + LAST_DATE).is_err());
        assert!(build(&mail(), UNIX_EPOCH + LAST_DATE - Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn reply_headers_have_angle_brackets() {
        let reply = OutgoingMail {
            subject: "Re: Lunch?".into(),
            in_reply_to: Some("reply1@example.net".into()),
            references: vec!["<root@example.org>".into(), "root@example.org".into()],
            ..mail()
        };
        let (raw, headers) = render(&reply);
        assert_eq!(header_lines(&headers, "In-Reply-To"), ["In-Reply-To: <reply1@example.net>"]);
        assert_eq!(
            header_lines(&headers, "References"),
            ["References: <root@example.org> <reply1@example.net>"]
        );
        let parsed = MessageParser::default().parse(raw.as_bytes()).unwrap();
        assert_eq!(text_list(parsed.in_reply_to()), ["reply1@example.net"]);
        assert_eq!(text_list(parsed.references()), ["root@example.org", "reply1@example.net"]);

        // And the gateway reading that reply back files it under the root.
        let incoming = crate::incoming::parse_mail(raw.as_bytes()).unwrap();
        assert_eq!(incoming.thread.as_deref(), Some("root@example.org"));
        assert_eq!(incoming.subject.as_deref(), Some("Re: Lunch?"));
    }

    #[test]
    fn many_references_fold_and_parse_back() {
        let ids: Vec<String> = (0..40).map(|i| format!("msg{i}.{}@example.org", "x".repeat(20))).collect();
        let (raw, headers) = render(&OutgoingMail { references: ids.clone(), ..mail() });
        assert!(headers.split("\r\n").all(|l| l.len() <= 998));
        let parsed = MessageParser::default().parse(raw.as_bytes()).unwrap();
        assert_eq!(text_list(parsed.references()), ids);
    }

    #[test]
    fn a_10_kb_body_round_trips() {
        let line = "Zeile mit Umlauten äöü, 中文, emoji 🎉, and = signs = everywhere.\n";
        let mut body = line.repeat(10 * 1024 / line.len() + 1);
        body.push_str(&"long line without a break ".repeat(60));
        body.push('\n');
        assert!(body.len() > 10 * 1024);
        let (raw, headers) = render(&OutgoingMail { body: body.clone(), ..mail() });
        assert!(raw.is_ascii());
        assert!(raw.split("\r\n").all(|l| l.len() <= 998));
        assert_eq!(header_lines(&headers, "Content-Type"), ["Content-Type: text/plain; charset=utf-8"]);
        let parsed = MessageParser::default().parse(raw.as_bytes()).unwrap();
        assert_eq!(body_of(&parsed), body.trim_end_matches('\n'));
    }

    #[test]
    fn line_ends_become_crlf() {
        let (raw, _) = render(&OutgoingMail { body: "one\ntwo\r\nthree\rfour".into(), ..mail() });
        let body = raw.split_once("\r\n\r\n").unwrap().1;
        assert_eq!(body, "one\r\ntwo\r\nthree\r\nfour\r\n");
    }

    #[test]
    fn message_ids_are_unique_and_well_formed() {
        let ids: Vec<String> = (0..10_000).map(|_| new_message_id("Example.ORG")).collect();
        let unique: HashSet<&String> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len());
        for id in &ids[..10] {
            let (left, domain) = id.split_once('@').unwrap();
            assert_eq!(domain, "example.org");
            let hex = left.strip_prefix("xgw.").unwrap();
            assert!(hex.len() >= 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
            assert!(check_message_id("Message-ID", id).is_ok());
        }
        assert!(new_message_id("a b\r\n<c>").ends_with("@abc"));
        assert!(new_message_id("").ends_with("@localhost"));
        let threads: Vec<String> = (0..4).map(|_| std::thread::spawn(|| new_message_id("x.org")))
            .map(|h| h.join().unwrap())
            .collect();
        assert_eq!(threads.iter().collect::<HashSet<_>>().len(), 4);
    }

    proptest! {
        #[test]
        fn no_subject_adds_a_header(subject in "\\PC{0,40}(\r|\n|\r\n)[A-Za-z-]{1,10}: [ -~]{0,20}(\r\n)?\\PC{0,10}") {
            let raw = build(&OutgoingMail { subject: subject.clone(), ..mail() }, date()).unwrap().formatted();
            let raw = String::from_utf8(raw).unwrap();
            let headers = raw.split("\r\n\r\n").next().unwrap();
            let names: Vec<&str> = headers
                .split("\r\n")
                .filter(|l| !l.starts_with(' ') && !l.starts_with('\t'))
                .map(|l| l.split(':').next().unwrap())
                .collect();
            prop_assert_eq!(
                names,
                ["From", "To", "Subject", "Date", "Message-ID", "MIME-Version", "Content-Type", "Content-Transfer-Encoding"]
            );
            let parsed = MessageParser::default().parse(raw.as_bytes()).unwrap();
            let expected = sanitize_header_text(&subject);
            prop_assert_eq!(parsed.subject().unwrap_or(""), expected.as_str());
        }

        #[test]
        fn any_body_round_trips(body in "\\PC{0,300}(\n\\PC{0,100}){0,5}") {
            let raw = build(&OutgoingMail { body: body.clone(), ..mail() }, date()).unwrap().formatted();
            let parsed = MessageParser::default().parse(&raw).unwrap();
            prop_assert_eq!(body_of(&parsed), body.trim_end_matches('\n'));
        }
    }
}
