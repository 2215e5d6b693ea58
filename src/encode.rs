//! One stanza to bytes, in one pass, refusing what XML 1.0 forbids instead of panicking.
//!
//! Every stanza the gateway sends goes through here, so it is the hottest code after the
//! sockets. minidom's `Element::write_to` drives rxml's encoder one item at a time, with a
//! fresh buffer (one allocation) per tag, attribute and text and an owned copy of every
//! namespace, and it panics when rxml refuses a character. This writer appends straight
//! to the caller's buffer, allocates nothing, and returns [`Refused`] for a character XML
//! 1.0 does not allow, so that the caller can clean the stanza and try again
//! (`xml_stream::append_bytes`): checking and escaping are the same scan, and clean
//! stanzas (all legitimate traffic) are scanned once.
//!
//! The output is what rxml writes for the same element (same escapes, namespaces as
//! default-namespace declarations where they change); the tests at the bottom parse it
//! back with minidom and compare.

use minidom::{Element, Node};

/// The namespace of the `xml:` prefix, which is never declared.
const NS_XML: &str = "http://www.w3.org/XML/1998/namespace";

/// What an element cannot be written with: XML 1.0 allows neither.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// A text or attribute value holds a character XML 1.0 forbids (a C0 control other
    /// than TAB, LF and CR, or U+FFFE/U+FFFF).
    #[error("a character XML 1.0 forbids")]
    Character,
    /// An element name that is not an XML name (minidom's builder takes any string).
    #[error("an element name that is not an XML name")]
    Name,
}

/// Appends `element`, its namespace declared on it, at the end of `out`. On
/// [`Refused`], `out` holds a partial element: the caller truncates it.
pub fn element(element: &Element, out: &mut Vec<u8>) -> Result<(), Refused> {
    write_element(element, None, out)
}

/// Writes `element` whose parent's default namespace is `parent_ns` (none at the top).
fn write_element(element: &Element, parent_ns: Option<&str>, out: &mut Vec<u8>) -> Result<(), Refused> {
    let name = element.name();
    if rxml::NcNameStr::from_str(name).is_err() {
        return Err(Refused::Name);
    }
    out.push(b'<');
    out.extend_from_slice(name.as_bytes());
    // The namespace is compared in place; minidom hands out an owned copy only, which is
    // taken when it changes (at most once per namespaced child: `<x xmlns=...>`).
    let own_ns = match parent_ns {
        Some(parent) if element.has_ns(parent) => None,
        _ => Some(element.ns()),
    };
    if let Some(ns) = &own_ns {
        out.extend_from_slice(b" xmlns='");
        escape(ns, true, out)?;
        out.push(b'\'');
    }
    let in_scope = own_ns.as_deref().or(parent_ns);
    let mut declared = 0_usize;
    for ((ns, key), value) in element.attrs() {
        out.push(b' ');
        match ns.as_namespace_name() {
            None => {}
            Some(NS_XML) => out.extend_from_slice(b"xml:"),
            Some(uri) => {
                // Another namespace gets a prefix of its own, declared on this element.
                let prefix = format!("ns{declared}");
                declared += 1;
                out.extend_from_slice(b"xmlns:");
                out.extend_from_slice(prefix.as_bytes());
                out.extend_from_slice(b"='");
                escape(uri, true, out)?;
                out.extend_from_slice(b"' ");
                out.extend_from_slice(prefix.as_bytes());
                out.push(b':');
            }
        }
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"='");
        escape(value, true, out)?;
        out.push(b'\'');
    }
    let mut nodes = element.nodes().peekable();
    if nodes.peek().is_none() {
        out.extend_from_slice(b"/>");
        return Ok(());
    }
    out.push(b'>');
    for node in nodes {
        match node {
            Node::Text(text) => escape(text, false, out)?,
            Node::Element(child) => write_element(child, in_scope, out)?,
        }
    }
    out.extend_from_slice(b"</");
    out.extend_from_slice(name.as_bytes());
    out.push(b'>');
    Ok(())
}

/// What a byte needs: written as it is, escaped, or refused.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Written as it is.
    Plain,
    /// Escaped everywhere (`<`, `>`, `&`, CR).
    Markup,
    /// Escaped in attribute values only (quotes, LF, TAB).
    InAttribute,
    /// A C0 control XML forbids.
    Forbidden,
    /// `0xBE`/`0xBF`: the last byte of U+FFFE/U+FFFF when after `EF BF`.
    MaybeNonCharacter,
}

/// Every byte's [`Class`], so that the scan is one table lookup per byte.
const CLASSES: [Class; 256] = {
    let mut table = [Class::Plain; 256];
    let mut byte = 0;
    while byte < 0x20 {
        table[byte] = Class::Forbidden;
        byte += 1;
    }
    table[b'\t' as usize] = Class::InAttribute;
    table[b'\n' as usize] = Class::InAttribute;
    table[b'\r' as usize] = Class::Markup;
    table[b'\'' as usize] = Class::InAttribute;
    table[b'"' as usize] = Class::InAttribute;
    table[b'<' as usize] = Class::Markup;
    table[b'>' as usize] = Class::Markup;
    table[b'&' as usize] = Class::Markup;
    table[0xBE] = Class::MaybeNonCharacter;
    table[0xBF] = Class::MaybeNonCharacter;
    table
};

/// Appends `text` escaped for element content or, if `in_attribute`, for a value in
/// single quotes; refuses what XML 1.0 forbids. The escapes are rxml's.
pub fn escape(text: &str, in_attribute: bool, out: &mut Vec<u8>) -> Result<(), Refused> {
    let bytes = text.as_bytes();
    let mut copied = 0;
    for (i, &byte) in bytes.iter().enumerate() {
        let escaped: &[u8] = match CLASSES[usize::from(byte)] {
            Class::Plain => continue,
            Class::InAttribute if !in_attribute => continue,
            Class::Forbidden => return Err(Refused::Character),
            Class::MaybeNonCharacter => {
                // U+FFFE and U+FFFF are EF BF BE and EF BF BF.
                if i >= 2 && bytes[i - 2] == 0xEF && bytes[i - 1] == 0xBF {
                    return Err(Refused::Character);
                }
                continue;
            }
            Class::Markup | Class::InAttribute => match byte {
                b'<' => b"&lt;",
                b'>' => b"&gt;",
                b'&' => b"&amp;",
                b'\r' => b"&#xd;",
                b'\'' => b"&#39;",
                b'"' => b"&#34;",
                b'\n' => b"&#xa;",
                _ => b"&#x9;",
            },
        };
        out.extend_from_slice(&bytes[copied..i]);
        out.extend_from_slice(escaped);
        copied = i + 1;
    }
    out.extend_from_slice(&bytes[copied..]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(element: &Element) -> String {
        let mut out = Vec::new();
        super::element(element, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    fn parsed(xml: &str) -> Element {
        xml.parse().unwrap()
    }

    /// Written, then read back by minidom: the same element.
    fn round_trips(xml: &str) {
        let element = parsed(xml);
        let written = encoded(&element);
        assert_eq!(parsed(&written), element, "{xml} was written as {written}");
    }

    #[test]
    fn stanzas_round_trip() {
        for xml in [
            "<message xmlns='jabber:component:accept' from='#c%irc@gw/nick' to='a@b/r' type='groupchat' id='1'><body>hi</body></message>",
            "<presence xmlns='jabber:component:accept' to='a@b'><x xmlns='http://jabber.org/protocol/muc#user'><item affiliation='none' role='participant'/><status code='110'/></x></presence>",
            "<iq xmlns='jabber:component:accept' type='result' id='x'><query xmlns='jabber:iq:register'><x xmlns='jabber:x:data' type='form'><field var='a'><value/></field></x></query></iq>",
            "<message xmlns='jabber:component:accept' xml:lang='en'><body xml:lang='fr'>salut</body><a xmlns='urn:one'><b xmlns='urn:two'><c/></b><d/></a><e/></message>",
            "<m xmlns='urn:x' xmlns:p='urn:attrs' p:one='1' p:two='2'><n xmlns:q='urn:other' q:three='3'/></m>",
            "<m xmlns='urn:x'>mixed <b>bold</b> text</m>",
        ] {
            round_trips(xml);
        }
    }

    #[test]
    fn text_and_attributes_are_escaped_as_rxml_does() {
        let element = parsed("<m xmlns='urn:x' a='&lt;&amp;&gt;&apos;&quot;&#9;&#10;&#13;'>&lt;&amp;&gt;'\"\t\n&#13;</m>");
        assert_eq!(
            encoded(&element),
            "<m xmlns='urn:x' a='&lt;&amp;&gt;&#39;&#34;&#x9;&#xa;&#xd;'>&lt;&amp;&gt;'\"\t\n&#xd;</m>"
        );
        let mut minidom = Vec::new();
        element.write_to(&mut minidom).unwrap();
        assert_eq!(encoded(&element).into_bytes(), minidom);
    }

    #[test]
    fn a_namespace_is_declared_where_it_changes_only() {
        let element = parsed("<message xmlns='jabber:component:accept'><body>x</body><x xmlns='urn:y'><item/></x></message>");
        assert_eq!(
            encoded(&element),
            "<message xmlns='jabber:component:accept'><body>x</body><x xmlns='urn:y'><item/></x></message>"
        );
    }

    #[test]
    fn forbidden_characters_are_refused_wherever_they_are() {
        for text in ["\u{0}", "a\x03b", "\x1F", "x\u{FFFE}", "\u{FFFF}y"] {
            let in_text = Element::builder("m", "urn:x").append(text).build();
            assert_eq!(super::element(&in_text, &mut Vec::new()), Err(Refused::Character), "{text:?}");
            let in_attribute = Element::builder("m", "urn:x").attr(rxml::xml_ncname!("a").into(), text).build();
            assert_eq!(super::element(&in_attribute, &mut Vec::new()), Err(Refused::Character), "{text:?}");
            let in_child = Element::builder("m", "urn:x").append(in_text).build();
            assert_eq!(super::element(&in_child, &mut Vec::new()), Err(Refused::Character), "{text:?}");
        }
    }

    #[test]
    fn what_xml_allows_is_written() {
        // U+FFFD and U+FFEF share lead bytes with the non-characters; DEL is allowed.
        let text = "\u{FFFD}\u{FFEF}\u{FFBF}\u{BF}\u{7F} ☃ 𝄞";
        let element = Element::builder("m", "urn:x").attr(rxml::xml_ncname!("a").into(), text).append(text).build();
        let written = encoded(&element);
        assert_eq!(parsed(&written), element);
    }

    #[test]
    fn a_name_that_is_not_an_xml_name_is_refused() {
        let element = Element::builder("not a name", "urn:x").build();
        assert_eq!(super::element(&element, &mut Vec::new()), Err(Refused::Name));
    }

    /// Whether rxml's own encoder takes `text` as element content.
    fn rxml_takes(text: &str) -> bool {
        let mut encoder = rxml::Encoder::new();
        let mut out = Vec::new();
        encoder.encode(rxml::Item::ElementHeadStart(rxml::Namespace::NONE, rxml::xml_ncname!("m")), &mut out).unwrap();
        encoder.encode(rxml::Item::ElementHeadEnd, &mut out).unwrap();
        encoder.encode(rxml::Item::Text(text), &mut out).is_ok()
    }

    #[test]
    fn every_character_is_refused_exactly_when_rxml_refuses_it() {
        let mut text = String::new();
        for c in (0..=0x10FFFF_u32).filter_map(char::from_u32) {
            text.clear();
            text.push(c);
            let in_text = escape(&text, false, &mut Vec::new()).is_ok();
            let in_attribute = escape(&text, true, &mut Vec::new()).is_ok();
            assert_eq!(in_text, in_attribute, "{c:?}");
            assert_eq!(in_text, rxml_takes(&text), "{c:?}");
        }
    }

    proptest::proptest! {
        /// Any text in an attribute or as content: written and read back the same, or
        /// refused because it holds what XML forbids (the fuzz target `xml_stream` goes
        /// further; this runs in every test run).
        #[test]
        fn prop_any_text_round_trips_or_is_refused(text in proptest::prelude::any::<String>()) {
            let element = Element::builder("m", "urn:x").attr(rxml::xml_ncname!("a").into(), text.as_str()).append(text.as_str()).build();
            let mut out = Vec::new();
            match super::element(&element, &mut out) {
                Ok(()) => {
                    let again = parsed(&String::from_utf8(out).unwrap());
                    proptest::prop_assert_eq!(again.attr("a"), Some(text.as_str()));
                    proptest::prop_assert_eq!(again.text(), text);
                }
                Err(refused) => {
                    proptest::prop_assert_eq!(refused, Refused::Character);
                    proptest::prop_assert!(!crate::sanitize::is_clean(&text));
                }
            }
        }
    }
}
