//! Small pure helpers on raw stanzas: who sent them, and the error reply to any of them.
//!
//! Replies are built from the raw element rather than from a parsed xmpp-parsers type so
//! that a stanza too broken to parse still gets its error back.

use minidom::Element;
use xmpp_parsers::iq::Iq;
use xmpp_parsers::jid::Jid;
use xmpp_parsers::message::{Message, MessageType};
use xmpp_parsers::presence::{Presence, Type as PresenceType};
use xmpp_parsers::stanza_error::{DefinedCondition, ErrorType, StanzaError};

/// The language of the texts the gateway writes.
pub const LANG: &str = "en";

/// Builds the `<error/>` for a condition, with the type RFC 6120 §8.3.3 gives it.
pub fn stanza_error(condition: DefinedCondition, text: &str) -> StanzaError {
    use DefinedCondition as C;
    let type_ = match condition {
        C::BadRequest
        | C::JidMalformed
        | C::NotAcceptable
        | C::NotAllowed
        | C::PolicyViolation
        | C::UnexpectedRequest => ErrorType::Modify,
        C::Forbidden | C::NotAuthorized | C::RegistrationRequired | C::SubscriptionRequired => {
            ErrorType::Auth
        }
        C::RemoteServerTimeout | C::ResourceConstraint => ErrorType::Wait,
        _ => ErrorType::Cancel,
    };
    StanzaError::new(type_, condition, LANG, text)
}

/// The error reply to `stanza`: same kind and id, addresses swapped, or `None` when no
/// reply is due (it is itself an error or a result, or has no usable sender).
pub fn error_reply(stanza: &Element, condition: DefinedCondition, text: &str) -> Option<Element> {
    let kind = stanza.attr("type").unwrap_or("");
    if kind == "error" || kind == "result" {
        return None;
    }
    let to: Jid = stanza.attr("from")?.parse().ok()?;
    // From the address written to; if that is no valid JID (`x@y@gw`), from its domain
    // (the gateway's: the router takes nothing else), never from nobody.
    let from: Option<Jid> = stanza.attr("to").and_then(|t| t.parse().ok().or_else(|| crate::router::split_jid(t).1.parse().ok()));
    let id = stanza.attr("id");
    let error = stanza_error(condition, text);
    let reply = match stanza.name() {
        "iq" => {
            // An iq without an id cannot be matched to anything: nothing to answer.
            let mut iq = Iq::from_error(id?, error).with_to(to);
            *iq.from_mut() = from;
            Element::from(iq)
        }
        "message" => {
            let mut message = Message::new_with_type(MessageType::Error, Some(to));
            message.from = from;
            message.id = id.map(|id| xmpp_parsers::message::Id(id.to_owned()));
            message.payloads.push(error.into());
            Element::from(message)
        }
        "presence" => {
            let mut presence = Presence::new(PresenceType::Error).with_to(to);
            presence.from = from;
            presence.id = id.map(str::to_owned);
            presence.payloads.push(error.into());
            Element::from(presence)
        }
        _ => return None,
    };
    Some(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(xml: &str) -> Element {
        xml.parse().unwrap()
    }

    #[test]
    fn iq_error_keeps_id_and_swaps_addresses() {
        let iq = parse("<iq xmlns='jabber:component:accept' type='get' id='q1' from='u@localhost/r' to='gw.localhost'><foo xmlns='urn:x'/></iq>");
        let reply = error_reply(&iq, DefinedCondition::ServiceUnavailable, "nope").unwrap();
        assert_eq!(reply.attr("type"), Some("error"));
        assert_eq!(reply.attr("id"), Some("q1"));
        assert_eq!(reply.attr("to"), Some("u@localhost/r"));
        assert_eq!(reply.attr("from"), Some("gw.localhost"));
        let error = reply.get_child("error", "jabber:component:accept").unwrap();
        assert_eq!(error.attr("type"), Some("cancel"));
        assert!(error.has_child("service-unavailable", "urn:ietf:params:xml:ns:xmpp-stanzas"));
        assert_eq!(
            error.get_child("text", "urn:ietf:params:xml:ns:xmpp-stanzas").map(|t| t.text()).as_deref(),
            Some("nope")
        );
    }

    #[test]
    fn message_and_presence_errors() {
        let m = parse("<message xmlns='jabber:component:accept' from='u@localhost/r' to='x@gw' id='m'><body>hi</body></message>");
        let reply = error_reply(&m, DefinedCondition::RegistrationRequired, "register first").unwrap();
        assert_eq!((reply.name(), reply.attr("type"), reply.attr("id")), ("message", Some("error"), Some("m")));
        let p = parse("<presence xmlns='jabber:component:accept' from='u@localhost/r' to='x@gw'/>");
        let reply = error_reply(&p, DefinedCondition::JidMalformed, "bad").unwrap();
        assert_eq!((reply.name(), reply.attr("type")), ("presence", Some("error")));
        let error = reply.get_child("error", "jabber:component:accept").unwrap();
        assert_eq!(error.attr("type"), Some("modify"));
    }

    #[test]
    fn never_answers_errors_results_or_the_unanswerable() {
        for xml in [
            "<message xmlns='jabber:component:accept' type='error' from='u@localhost' to='gw'/>",
            "<iq xmlns='jabber:component:accept' type='result' id='1' from='u@localhost' to='gw'/>",
            "<iq xmlns='jabber:component:accept' type='get' from='u@localhost' to='gw'/>",
            "<message xmlns='jabber:component:accept' to='gw'/>",
            "<message xmlns='jabber:component:accept' from='not a jid@@' to='gw'/>",
            "<handshake xmlns='jabber:component:accept' from='u@localhost'/>",
        ] {
            assert!(error_reply(&parse(xml), DefinedCondition::BadRequest, "x").is_none(), "{xml}");
        }
    }

    #[test]
    fn an_error_to_a_malformed_address_comes_from_its_domain() {
        for to in ["x@y@gw.localhost", "a\"b\\40example.test@gw.localhost"] {
            let xml = format!("<iq xmlns='jabber:component:accept' type='get' id='1' from='u@h/r' to='{}'/>", to.replace('"', "&quot;"));
            let stanza: Element = xml.parse().unwrap();
            let reply = error_reply(&stanza, DefinedCondition::JidMalformed, "bad").unwrap();
            assert_eq!(reply.attr("from"), Some("gw.localhost"), "{to}");
        }
    }
}
