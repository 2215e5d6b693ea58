//! XEP-0033 extended addressing: one message to several email addresses becomes one mail
//! to all of them.
//!
//! The gateway is a multicast service for its own email addresses (it says so in its
//! disco#info). A message to the gateway, or to one of its email addresses, carrying
//! `<addresses xmlns='http://jabber.org/protocol/address'/>` goes to every `to` and `cc`
//! address that is an email address on the gateway (`bob\40example.org@gw`, or a
//! group of them) or a `mailto:` URI, and to the address it was sent to: the same group
//! address a client could have written by hand. The result is what the router then
//! serves as that message's target.

use minidom::Element;
use xmpp_parsers::jid::Jid;
use xmpp_parsers::stanza_error::DefinedCondition;

use crate::address::{self, Address, MAX_GROUP_ADDRESSES};
use crate::disco::Refusal;

/// XEP-0033.
pub const NS_ADDRESS: &str = "http://jabber.org/protocol/address";

/// The email address or group a message with extended addressing `addresses` goes to,
/// `target` being where it was sent (the gateway itself or an email address on it), on
/// the gateway `gateway`.
///
/// Addresses another multicast service already marked `delivered` were each sent their
/// own copy: then only `target` is served, so nobody gets the mail twice. `bcc` is
/// refused (a mail's Bcc would show in the copy in the user's Sent folder); `replyto`,
/// `noreply` and the others say nothing about recipients and are passed over.
///
/// # Errors
/// `feature-not-implemented` for `bcc`, `not-acceptable` for an address that is no email
/// address on the gateway, for too many addresses and for none at all.
pub fn email_target(target: &Address, addresses: &Element, gateway: &str) -> Result<Address, Refusal> {
    let refuse = |condition, text: String| Err((condition, text));
    let mut emails: Vec<String> = match target {
        Address::Email { address } => vec![address.clone()],
        Address::EmailGroup { addresses } => addresses.clone(),
        _ => Vec::new(),
    };
    let entries: Vec<&Element> = addresses.children().filter(|child| child.is("address", NS_ADDRESS)).collect();
    if entries.iter().any(|entry| entry.attr("delivered") == Some("true")) {
        return if emails.is_empty() {
            refuse(DefinedCondition::NotAcceptable, "every address was delivered already".into())
        } else {
            Ok(target.clone())
        };
    }
    for entry in entries {
        match entry.attr("type") {
            Some("to" | "cc") => {}
            Some("bcc") => return refuse(DefinedCondition::FeatureNotImplemented, "bcc is not supported: send those a message of their own".into()),
            _ => continue,
        }
        let found = match (entry.attr("jid"), entry.attr("uri")) {
            (Some(jid), _) => email_of_jid(jid, gateway),
            (None, Some(uri)) => email_of_uri(uri),
            (None, None) => Err("an address has neither a jid nor a uri".into()),
        };
        match found {
            Ok(found) => emails.extend(found),
            Err(text) => return refuse(DefinedCondition::NotAcceptable, text),
        }
    }
    emails.sort();
    emails.dedup();
    match emails.len() {
        0 => refuse(DefinedCondition::NotAcceptable, format!("no email address to send to: write to addresses such as bob\\40example.org@{gateway}")),
        1 => Ok(Address::Email { address: emails.remove(0) }),
        count if count > MAX_GROUP_ADDRESSES => {
            refuse(DefinedCondition::NotAcceptable, format!("{count} addresses is more than the {MAX_GROUP_ADDRESSES} one mail may go to here"))
        }
        _ => Ok(Address::EmailGroup { addresses: emails }),
    }
}

/// The email addresses behind a JID on the gateway.
fn email_of_jid(jid: &str, gateway: &str) -> Result<Vec<String>, String> {
    let parsed = jid.parse::<Jid>().map_err(|e| format!("{jid:?} is not a JID: {e}"))?;
    if !parsed.domain().as_str().eq_ignore_ascii_case(gateway) {
        return Err(format!("{jid} is not on {gateway}: only email addresses on {gateway} can share one mail"));
    }
    let local = parsed.node().map(|node| node.as_str().to_owned()).unwrap_or_default();
    match address::parse_localpart(&local) {
        Ok(Address::Email { address }) => Ok(vec![address]),
        Ok(Address::EmailGroup { addresses }) => Ok(addresses),
        Ok(_) => Err(format!("{jid} is not an email address: only email addresses can share one mail")),
        Err(error) => Err(error.to_string()),
    }
}

/// The email address of a `mailto:` URI (without its `?headers`, which could name
/// more recipients or headers).
fn email_of_uri(uri: &str) -> Result<Vec<String>, String> {
    let address = uri
        .strip_prefix("mailto:")
        .map(|rest| rest.split('?').next().unwrap_or_default())
        .ok_or_else(|| format!("{uri:?} is not a mailto: URI"))?;
    let address = percent_encoding::percent_decode_str(address).decode_utf8_lossy();
    match address::parse_localpart(&address::escape_localpart(&address)) {
        Ok(Address::Email { address }) => Ok(vec![address]),
        Ok(_) => Err(format!("{uri:?} does not hold one email address")),
        Err(error) => Err(error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addresses(xml: &str) -> Element {
        format!("<addresses xmlns='{NS_ADDRESS}'>{xml}</addresses>").parse().unwrap()
    }

    fn group(list: &[&str]) -> Address {
        Address::EmailGroup { addresses: list.iter().map(|a| (*a).to_owned()).collect() }
    }

    #[test]
    fn to_and_cc_on_the_gateway_and_mailto_make_one_group_with_the_target() {
        let found = email_target(
            &Address::Email { address: "bob@b.example".into() },
            &addresses(
                "<address type='to' jid='carol\\40c.example@gw'/>\
                 <address type='cc' jid='dave\\40d.example,erin\\40e.example@GW'/>\
                 <address type='cc' uri='mailto:frank%40f.example?subject=x'/>\
                 <address type='replyto' jid='somewhere@else.example'/>\
                 <address type='to' jid='bob\\40b.example@gw'/>",
            ),
            "gw",
        );
        assert_eq!(found, Ok(group(&["bob@b.example", "carol@c.example", "dave@d.example", "erin@e.example", "frank@f.example"])));
        // Sent to the gateway itself: only the listed addresses.
        let found = email_target(&Address::Gateway, &addresses("<address type='to' jid='carol\\40c.example@gw'/>"), "gw");
        assert_eq!(found, Ok(Address::Email { address: "carol@c.example".into() }));
    }

    #[test]
    fn what_cannot_be_one_mail_is_refused_with_a_reason() {
        let refused = |target: Address, xml: &str| email_target(&target, &addresses(xml), "gw").unwrap_err();
        let bob = Address::Email { address: "bob@b.example".into() };
        let (condition, text) = refused(bob.clone(), "<address type='bcc' jid='carol\\40c.example@gw'/>");
        assert_eq!(condition, DefinedCondition::FeatureNotImplemented, "{text}");
        let (condition, text) = refused(bob.clone(), "<address type='to' jid='carol@xmpp.example'/>");
        assert!(condition == DefinedCondition::NotAcceptable && text.contains("not on gw"), "{text}");
        let (_, text) = refused(bob.clone(), "<address type='to' jid='#chan%irc.example@gw'/>");
        assert!(text.contains("not an email address"), "{text}");
        let (_, text) = refused(bob.clone(), "<address type='to' uri='tel:+123'/>");
        assert!(text.contains("mailto"), "{text}");
        let (_, text) = refused(Address::Gateway, "");
        assert!(text.contains("no email address"), "{text}");
        let many: String = (0..MAX_GROUP_ADDRESSES).map(|i| format!("<address type='to' jid='u{i}\\40x.example@gw'/>")).collect();
        let (_, text) = refused(bob, &many);
        assert!(text.contains("more than"), "{text}");
    }

    #[test]
    fn copies_another_service_delivered_go_to_their_target_alone() {
        let bob = Address::Email { address: "bob@b.example".into() };
        let xml = "<address type='to' jid='bob\\40b.example@gw' delivered='true'/><address type='to' jid='carol\\40c.example@gw' delivered='true'/>";
        assert_eq!(email_target(&bob, &addresses(xml), "gw"), Ok(bob));
    }
}
