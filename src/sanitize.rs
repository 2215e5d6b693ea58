//! What XML 1.0 forbids never reaches the wire.
//!
//! Text from the networks ends up in stanzas: IRC topics and reasons, nicks in `from`
//! attributes, server errors, IMAP replies in presence statuses. XML 1.0 (§2.2) allows
//! only TAB, LF, CR, U+0020..U+D7FF, U+E000..U+FFFD and U+10000 and above; rxml refuses
//! the rest, and so does our encoder ([`crate::encode`]). Every outgoing stanza passes
//! the stanza boundary (`xml_stream::append_bytes`); one the encoder refuses is cleaned
//! here and written again: C0 controls are dropped, the non-characters U+FFFE and U+FFFF
//! become U+FFFD (so the reader sees that something was there). IRC formatting codes are
//! stripped earlier, by the IRC bridge, where the text is known to be IRC's.
//!
//! The encoder's scan is the check, so a clean stanza (all legitimate traffic) costs
//! nothing here; only a refused one is copied and cleaned.

use std::borrow::Cow;

use minidom::{Element, Node};

/// Whether `text` holds only characters XML 1.0 allows. Works on bytes: C0 controls are
/// single bytes, and U+FFFE/U+FFFF are `EF BF BE`/`EF BF BF` in UTF-8.
#[must_use]
pub fn is_clean(text: &str) -> bool {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\t' | b'\n' | b'\r' => {}
            b if b < 0x20 => return false,
            0xEF if matches!(bytes.get(i + 1..i + 3), Some([0xBF, 0xBE | 0xBF])) => return false,
            _ => {}
        }
        i += 1;
    }
    true
}

/// `text` without what XML 1.0 forbids (see the module's doc). Borrows when it is clean.
#[must_use]
pub fn clean_text(text: &str) -> Cow<'_, str> {
    if is_clean(text) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.chars()
            .filter_map(|c| match c {
                '\t' | '\n' | '\r' => Some(c),
                c if c < '\x20' => None,
                '\u{FFFE}' | '\u{FFFF}' => Some('\u{FFFD}'),
                c => Some(c),
            })
            .collect(),
    )
}

/// A copy of `element` with every attribute value and text cleaned, children included.
#[must_use]
pub fn clean_element(element: &Element) -> Element {
    let mut owned = element.clone();
    clean_in_place(&mut owned);
    owned
}

fn clean_in_place(element: &mut Element) {
    for (_, value) in element.attrs_mut().iter_mut() {
        if let Cow::Owned(cleaned) = clean_text(value) {
            *value = cleaned;
        }
    }
    for node in element.nodes_mut() {
        match node {
            Node::Text(text) => {
                if let Cow::Owned(cleaned) = clean_text(text) {
                    *text = cleaned;
                }
            }
            Node::Element(child) => clean_in_place(child),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_text_is_borrowed() {
        for text in ["", "plain", "tab\tnew\nline\r", "héllo ☃ 𝄞", "\u{FFFD}", "\u{E000}"] {
            assert!(is_clean(text), "{text:?}");
            assert!(matches!(clean_text(text), Cow::Borrowed(_)));
        }
    }

    #[test]
    fn controls_are_dropped_and_non_characters_replaced() {
        assert_eq!(clean_text("\x0304red\x03 topic\x02!"), "04red topic!");
        assert_eq!(clean_text("a\u{0}b\u{1F}c\u{7F}"), "abc\u{7F}");
        assert_eq!(clean_text("x\u{FFFF}y\u{FFFE}z"), "x\u{FFFD}y\u{FFFD}z");
        // U+FFFD and U+FFEF share the lead bytes of the non-characters and stay.
        assert_eq!(clean_text("\u{FFFD}\u{FFEF}\u{FFBF}"), "\u{FFFD}\u{FFEF}\u{FFBF}");
    }

    #[test]
    fn an_element_is_cleaned_in_texts_attributes_and_children() {
        let dirty = Element::builder("message", "jabber:component:accept")
            .attr(rxml::xml_ncname!("from").into(), "#c%irc@gw/ni\x03ck")
            .append(Element::builder("body", "jabber:component:accept").append("red\x0304 \u{FFFF}").build())
            .build();
        assert!(crate::encode::element(&dirty, &mut Vec::new()).is_err());
        let clean = clean_element(&dirty);
        assert_eq!(clean.attr("from"), Some("#c%irc@gw/nick"));
        assert_eq!(clean.get_child("body", "jabber:component:accept").unwrap().text(), "red04 \u{FFFD}");
        assert!(crate::encode::element(&clean, &mut Vec::new()).is_ok());
    }
}
