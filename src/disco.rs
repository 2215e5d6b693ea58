//! What the gateway says about itself and its addresses: service discovery (XEP-0030),
//! software version (XEP-0092), ping (XEP-0199), and address translation (XEP-0100's
//! `jabber:iq:gateway`). All pure: each takes a request payload and returns the answer.

use minidom::Element;
use xmpp_parsers::disco::{DiscoInfoResult, DiscoItemsResult, Identity, Item};
use xmpp_parsers::jid::Jid;
use xmpp_parsers::stanza_error::DefinedCondition;
use xmpp_parsers::version::VersionResult;

use crate::address::{self, Address};
use crate::config::Config;

/// Namespaces answered here.
pub const NS_DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
/// Items discovery.
pub const NS_DISCO_ITEMS: &str = "http://jabber.org/protocol/disco#items";
/// XEP-0092.
pub const NS_VERSION: &str = "jabber:iq:version";
/// XEP-0199.
pub const NS_PING: &str = "urn:xmpp:ping";
/// XEP-0100 address translation.
pub const NS_GATEWAY: &str = "jabber:iq:gateway";
/// XEP-0050; the node under which commands are listed.
pub const NS_COMMANDS: &str = "http://jabber.org/protocol/commands";
/// XEP-0045.
pub const NS_MUC: &str = "http://jabber.org/protocol/muc";

/// Features of the gateway JID itself.
const GATEWAY_FEATURES: &[&str] = &[
    NS_DISCO_INFO,
    NS_DISCO_ITEMS,
    crate::registration::NS_REGISTER,
    NS_GATEWAY,
    NS_MUC,
    NS_PING,
    NS_VERSION,
    NS_COMMANDS,
];

/// An answer that is an error: the condition and a text for the user.
pub type Refusal = (DefinedCondition, String);

/// What the archive adds to the gateway's and the rooms' features (XEP-0313, XEP-0359).
const ARCHIVE_FEATURES: &[&str] = &[crate::mam::NS_MAM, crate::mam::NS_SID];

/// What disco#info says beyond the address's kind.
#[derive(Debug, Clone, Copy, Default)]
pub struct Features {
    /// Messages are archived (XEP-0313).
    pub archive: bool,
    /// The room is always on for the user who asks (`muc_persistent`).
    pub persistent: bool,
}

/// disco#info of `address` (a JID on the gateway's domain).
pub fn info(address: &Address, node: Option<&str>, extra: Features) -> Result<DiscoInfoResult, Refusal> {
    if node.is_some_and(|n| n != NS_COMMANDS) {
        return Err((DefinedCondition::ItemNotFound, "no such node".into()));
    }
    let (identities, features): (Vec<Identity>, &[&str]) = match address {
        Address::Gateway => (
            vec![
                Identity::new("gateway", "irc", "en", "IRC gateway"),
                Identity::new("gateway", "smtp", "en", "Email gateway"),
            ],
            GATEWAY_FEATURES,
        ),
        // XEP-0045's registered identity; an IRC channel is open (anyone may join, as
        // IRC says at the JOIN), semi-anonymous (no real JIDs) and unmoderated until its
        // modes say otherwise; occupants answer self-pings (XEP-0410).
        Address::IrcChannel { channel, .. } => (
            vec![Identity::new("conference", "text", "en", channel.clone())],
            &[NS_DISCO_INFO, NS_MUC, "muc_open", "muc_semianonymous", "muc_unmoderated", NS_PING, "http://jabber.org/protocol/muc#self-ping-optimization"],
        ),
        Address::IrcServer { server } => {
            (vec![Identity::new("gateway", "irc", "en", server.clone())], &[NS_DISCO_INFO])
        }
        Address::IrcUser { nick, .. } => {
            (vec![Identity::new("client", "pc", "en", nick.clone())], &[NS_DISCO_INFO])
        }
        Address::Email { address } => {
            (vec![Identity::new("client", "pc", "en", address.clone())], &[NS_DISCO_INFO])
        }
    };
    let archived = match address {
        Address::Gateway | Address::IrcChannel { .. } if extra.archive && node.is_none() => ARCHIVE_FEATURES,
        _ => &[],
    };
    // A room lives as long as a client is in it, unless the user keeps it always on.
    let lifetime: &[&str] = match address {
        Address::IrcChannel { .. } if extra.persistent => &["muc_persistent"],
        Address::IrcChannel { .. } => &["muc_temporary"],
        _ => &[],
    };
    Ok(DiscoInfoResult {
        node: node.map(str::to_owned),
        identities,
        features: features.iter().chain(archived).chain(lifetime).map(|f| (*f).to_owned()).collect(),
        extensions: Vec::new(),
    })
}

/// disco#items of the gateway: the IRC servers the administrator configured.
pub fn items(address: &Address, node: Option<&str>, gateway: &str, config: &Config) -> DiscoItemsResult {
    let items = match (address, node) {
        (Address::Gateway, None) => config
            .irc
            .networks
            .keys()
            .filter_map(|server| {
                let local = address::format_localpart(&Address::IrcServer { server: server.clone() });
                let jid: Jid = format!("{local}@{gateway}").parse().ok()?;
                Some(Item { jid, node: None, name: Some(format!("IRC server {server}")) })
            })
            .collect(),
        // Other addresses and nodes have no items (the commands node is answered by the
        // router, which knows who is an administrator: see adhoc.rs).
        _ => Vec::new(),
    };
    DiscoItemsResult { node: node.map(str::to_owned), items, rsm: None }
}

/// XEP-0092 answer.
pub fn version() -> VersionResult {
    VersionResult {
        name: "xmpp-gateway".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        os: Some(std::env::consts::OS.into()),
    }
}

/// XEP-0100 `get`: what to type.
pub fn gateway_prompt() -> Element {
    Element::builder("query", NS_GATEWAY)
        .append(Element::builder("desc", NS_GATEWAY).append(
            "Enter an email address (alice@example.org), an IRC channel with its server \
             (#chan%irc.example.org) or an IRC nick with its server (nick%irc.example.org)",
        ))
        .append(Element::builder("prompt", NS_GATEWAY).append("Address"))
        .build()
}

/// XEP-0100 `set`: the JID for what the user typed.
pub fn gateway_translate(query: &Element, gateway: &str) -> Result<Element, Refusal> {
    let prompt = query
        .get_child("prompt", NS_GATEWAY)
        .map(Element::text)
        .ok_or_else(|| (DefinedCondition::BadRequest, "missing <prompt/>".to_owned()))?;
    let address = address::from_legacy_prompt(&prompt)
        .map_err(|e| (DefinedCondition::JidMalformed, e.to_string()))?;
    let jid = format!("{}@{gateway}", address::format_localpart(&address));
    Ok(Element::builder("query", NS_GATEWAY)
        .append(Element::builder("jid", NS_GATEWAY).append(jid))
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_info_has_both_identities_and_all_features() {
        let info = info(&Address::Gateway, None, Features { archive: true, persistent: false }).unwrap();
        let ids: Vec<_> = info.identities.iter().map(|i| (i.category.as_str(), i.type_.as_str())).collect();
        assert_eq!(ids, vec![("gateway", "irc"), ("gateway", "smtp")]);
        for f in ["jabber:iq:register", "jabber:iq:gateway", NS_MUC, NS_PING, NS_VERSION, NS_COMMANDS, "urn:xmpp:mam:2", "urn:xmpp:sid:0"] {
            assert!(info.features.contains(f), "{f}");
        }
        let without_archive = super::info(&Address::Gateway, None, Features::default()).unwrap();
        assert!(!without_archive.features.iter().any(|f| f.starts_with("urn:xmpp:mam") || f == "urn:xmpp:sid:0"));
    }

    #[test]
    fn channel_info_is_a_muc_room() {
        let room = Address::IrcChannel { channel: "#rust".into(), server: "irc.example.org".into() };
        let info = info(&room, None, Features { archive: true, persistent: false }).unwrap();
        assert_eq!((info.identities[0].category.as_str(), info.identities[0].type_.as_str()), ("conference", "text"));
        for feature in [NS_MUC, "muc_open", "muc_semianonymous", NS_PING, "http://jabber.org/protocol/muc#self-ping-optimization", "urn:xmpp:mam:2", "urn:xmpp:sid:0"] {
            assert!(info.features.contains(feature), "{feature}");
        }
        assert!(info.features.contains("muc_temporary") && !info.features.contains("muc_persistent"));
        let always_on = super::info(&room, None, Features { archive: true, persistent: true }).unwrap();
        assert!(always_on.features.contains("muc_persistent") && !always_on.features.contains("muc_temporary"));
        assert_eq!(super::info(&room, Some("x"), Features::default()).unwrap_err().0, DefinedCondition::ItemNotFound);
    }

    #[test]
    fn translates_typed_addresses() {
        let q: Element = "<query xmlns='jabber:iq:gateway'><prompt>alice@example.org</prompt></query>".parse().unwrap();
        let answer = gateway_translate(&q, "gw.localhost").unwrap();
        assert_eq!(
            answer.get_child("jid", NS_GATEWAY).unwrap().text(),
            "alice\\40example.org@gw.localhost"
        );
        let q: Element = "<query xmlns='jabber:iq:gateway'><prompt>#rust%irc.example.org</prompt></query>".parse().unwrap();
        assert_eq!(
            gateway_translate(&q, "gw").unwrap().get_child("jid", NS_GATEWAY).unwrap().text(),
            "#rust%irc.example.org@gw"
        );
        let q: Element = "<query xmlns='jabber:iq:gateway'><prompt>what?</prompt></query>".parse().unwrap();
        assert_eq!(gateway_translate(&q, "gw").unwrap_err().0, DefinedCondition::JidMalformed);
        let q: Element = "<query xmlns='jabber:iq:gateway'/>".parse().unwrap();
        assert_eq!(gateway_translate(&q, "gw").unwrap_err().0, DefinedCondition::BadRequest);
    }
}
