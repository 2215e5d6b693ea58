//! What the gateway says about itself and its addresses: service discovery (XEP-0030),
//! software version (XEP-0092), ping (XEP-0199), and address translation (XEP-0100's
//! `jabber:iq:gateway`). All pure: each takes a request payload and returns the answer.

use bridge_core::model::{ChannelInfo, ChannelListing, ListedChannel};
use minidom::Element;
use xmpp_parsers::data_forms::{DataForm, DataFormType, Field, FieldType};
use xmpp_parsers::disco::{DiscoInfoResult, DiscoItemsQuery, DiscoItemsResult, Identity, Item};
use xmpp_parsers::rsm::{First, SetResult};
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
    crate::multicast::NS_ADDRESS,
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
        Address::EmailGroup { addresses } => {
            (vec![Identity::new("client", "pc", "en", addresses.join(", "))], &[NS_DISCO_INFO])
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

/// XEP-0045 §6.4's extended room information (XEP-0128).
pub const NS_ROOMINFO: &str = "http://jabber.org/protocol/muc#roominfo";

/// disco#info of a room the asking user is in, from what their IRC session knows of the
/// channel: `muc_moderated` for `+m` (else `muc_unmoderated`), `muc_passwordprotected`
/// for `+k` (else `muc_unsecured`), and the `muc#roominfo` form (subject and description
/// from the topic, the occupant count).
pub fn live_room_info(address: &Address, extra: Features, live: &ChannelInfo) -> Result<DiscoInfoResult, Refusal> {
    let mut info = info(address, None, extra)?;
    if live.moderated {
        info.features.remove("muc_unmoderated");
        info.features.insert("muc_moderated".to_owned());
    }
    info.features.insert(if live.keyed { "muc_passwordprotected" } else { "muc_unsecured" }.to_owned());
    info.extensions.push(roominfo_form(live));
    Ok(info)
}

/// The `muc#roominfo` form of a channel (a result form: values only).
fn roominfo_form(live: &ChannelInfo) -> DataForm {
    let mut fields = vec![Field::new("muc#roominfo_occupants", FieldType::TextSingle).with_value(&live.occupants.to_string())];
    if let Some(topic) = live.topic.as_deref().filter(|t| !t.is_empty()) {
        fields.push(Field::new("muc#roominfo_subject", FieldType::TextSingle).with_value(topic));
        fields.push(Field::new("muc#roominfo_description", FieldType::TextSingle).with_value(topic));
    }
    DataForm::new(DataFormType::Result_, NS_ROOMINFO, fields)
}

/// Items answered when the client names no `max` (and the most it may ask for): a
/// page of a big server's channels, with the `<set/>` that lets a client page on.
pub const MAX_ITEMS: usize = 500;

/// What page of a list a disco#items query asks for (XEP-0059).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    /// At most this many items (capped at [`MAX_ITEMS`]); 0 asks only for the count.
    pub max: usize,
    /// Items after this one (by name).
    pub after: Option<String>,
    /// Items before this one; `Some(None)` for an empty `<before/>`: the last page.
    pub before: Option<Option<String>>,
    /// Items from this position (XEP-0059 §2.6's page jump), without `after`/`before`.
    pub index: Option<usize>,
}

/// Reads a disco#items query's paging (none: the first [`MAX_ITEMS`]).
pub fn page_request(query: &Element) -> Result<PageRequest, Refusal> {
    let query = DiscoItemsQuery::try_from(query.clone()).map_err(|e| (DefinedCondition::BadRequest, format!("malformed disco#items query: {e}")))?;
    let Some(set) = query.rsm else {
        return Ok(PageRequest { max: MAX_ITEMS, after: None, before: None, index: None });
    };
    Ok(PageRequest {
        max: set.max.unwrap_or(MAX_ITEMS).min(MAX_ITEMS),
        after: set.after.filter(|a| !a.is_empty()),
        before: set.before.map(|b| Some(b).filter(|b| !b.is_empty())),
        index: set.index,
    })
}

/// The page `request` asks for of `names`, which are in byte order, each once: the
/// position of its first item and how many it holds. Positions follow the order, not
/// the items: `after` a name that is gone (the list was fetched again meanwhile) starts
/// where it stood, so a client paging on misses nothing and gets nothing twice.
pub fn page<'a>(names: impl ExactSizeIterator<Item = &'a str> + Clone, request: &PageRequest) -> (usize, usize) {
    let count = names.len();
    let position = |bound: &str, inclusive: bool| names.clone().take_while(|name| if inclusive { *name <= bound } else { *name < bound }).count();
    let (start, end) = match (&request.after, &request.before, request.index) {
        (_, Some(before), _) => {
            let end = before.as_deref().map_or(count, |b| position(b, false));
            let start = request.after.as_deref().map_or(0, |a| position(a, true));
            (end.saturating_sub(request.max).max(start), end)
        }
        (Some(after), None, _) => (position(after, true), count),
        (None, None, Some(index)) => (index.min(count), count),
        (None, None, None) => (0, count),
    };
    let end = end.max(start);
    (start, (end - start).min(request.max))
}

/// The `<set/>` of a page: its first item (with its position) and last, and the count.
fn page_set(first: Option<(&str, usize)>, last: Option<&str>, count: usize) -> SetResult {
    SetResult { first: first.map(|(item, index)| First { index: Some(index), item: item.to_owned() }), last: last.map(str::to_owned), count: Some(count) }
}

/// disco#items of an IRC server: a page of its channels (`#chan%server@gw`, named
/// `#chan (N users): topic`), paged by channel name. Channels no room address can
/// name (`+chan`, `!chan`, control characters) are left out, and not counted.
pub fn channel_items(listing: &ChannelListing, request: &PageRequest, server: &str, gateway: &str) -> DiscoItemsResult {
    let addressable = |c: &&ListedChannel| c.name.starts_with(['#', '&']) && !c.name.chars().any(char::is_control);
    let channels: Vec<&ListedChannel> = listing.channels.iter().filter(addressable).collect();
    let (start, len) = page(channels.iter().map(|c| c.name.as_str()), request);
    let shown = channels.get(start..start + len).unwrap_or_default();
    let items = shown
        .iter()
        .filter_map(|c| {
            let local = address::format_localpart(&Address::IrcChannel { channel: c.name.clone(), server: server.to_owned() });
            let jid: Jid = format!("{local}@{gateway}").parse().ok()?;
            let users = if c.users == 1 { "1 user".to_owned() } else { format!("{} users", c.users) };
            let name = if c.topic.is_empty() { format!("{} ({users})", c.name) } else { format!("{} ({users}): {}", c.name, c.topic) };
            Some(Item { jid, node: None, name: Some(name) })
        })
        .collect();
    let first = shown.first().map(|c| (c.name.as_str(), start));
    DiscoItemsResult { node: None, items, rsm: Some(page_set(first, shown.last().map(|c| c.name.as_str()), channels.len())) }
}

/// disco#items of a room: a page of its occupants (`room/nick`, named by the nick),
/// paged by nick. `nicks` in any order.
pub fn occupant_items(room: &str, mut nicks: Vec<String>, request: &PageRequest) -> DiscoItemsResult {
    nicks.sort_unstable();
    nicks.dedup();
    let (start, len) = page(nicks.iter().map(String::as_str), request);
    let shown = nicks.get(start..start + len).unwrap_or_default();
    let items = shown.iter().filter_map(|nick| Some(Item { jid: format!("{room}/{nick}").parse().ok()?, node: None, name: Some(nick.clone()) })).collect();
    let first = shown.first().map(|nick| (nick.as_str(), start));
    DiscoItemsResult { node: None, items, rsm: Some(page_set(first, shown.last().map(String::as_str), nicks.len())) }
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

    fn channel(name: &str, users: u32, topic: &str) -> ListedChannel {
        ListedChannel { name: name.into(), users, topic: topic.into() }
    }

    fn request(xml: &str) -> PageRequest {
        page_request(&xml.parse().unwrap()).unwrap()
    }

    #[test]
    fn a_joined_room_shows_its_modes_and_the_roominfo_form() {
        let room = Address::IrcChannel { channel: "#rust".into(), server: "irc.example.org".into() };
        let live = ChannelInfo { name: "#rust".into(), topic: Some("Rust & more".into()), moderated: true, keyed: true, occupants: 3, nicks: Vec::new() };
        let info = live_room_info(&room, Features { archive: true, persistent: false }, &live).unwrap();
        assert!(info.features.contains("muc_moderated") && !info.features.contains("muc_unmoderated"));
        assert!(info.features.contains("muc_passwordprotected") && !info.features.contains("muc_unsecured"));
        assert!(info.features.contains("muc_semianonymous") && info.features.contains("urn:xmpp:mam:2"));
        let xml = String::from(&Element::from(info));
        assert!(
            xml.ends_with(
                "<x xmlns='jabber:x:data' type='result'><field type='hidden' var='FORM_TYPE'><value>http://jabber.org/protocol/muc#roominfo</value></field>\
                 <field var='muc#roominfo_occupants'><value>3</value></field>\
                 <field var='muc#roominfo_subject'><value>Rust &amp; more</value></field>\
                 <field var='muc#roominfo_description'><value>Rust &amp; more</value></field></x></query>"
            ),
            "{xml}"
        );
        let form = DataForm::try_from(Element::from(live_room_info(&room, Features::default(), &live).unwrap()).get_child("x", "jabber:x:data").unwrap().clone()).unwrap();
        assert_eq!(form.form_type(), Some(NS_ROOMINFO));
        let value = |var: &str| form.fields.iter().find(|f| f.var.as_deref() == Some(var)).map(|f| f.values.clone());
        assert_eq!(value("muc#roominfo_occupants"), Some(vec!["3".to_owned()]));
        assert_eq!(value("muc#roominfo_subject"), Some(vec!["Rust & more".to_owned()]));
        assert_eq!(value("muc#roominfo_description"), Some(vec!["Rust & more".to_owned()]));

        let open = ChannelInfo { topic: None, moderated: false, keyed: false, ..live };
        let info = live_room_info(&room, Features::default(), &open).unwrap();
        assert!(info.features.contains("muc_unmoderated") && info.features.contains("muc_unsecured"));
        let form = &info.extensions[0];
        assert_eq!(form.fields.iter().filter_map(|f| f.var.as_deref()).collect::<Vec<_>>(), ["FORM_TYPE", "muc#roominfo_occupants"], "no topic, no subject");
    }

    #[test]
    fn paging_requests_are_read_from_rsm() {
        let none = request("<query xmlns='http://jabber.org/protocol/disco#items'/>");
        assert_eq!(none, PageRequest { max: MAX_ITEMS, after: None, before: None, index: None });
        let after = request("<query xmlns='http://jabber.org/protocol/disco#items'><set xmlns='http://jabber.org/protocol/rsm'><max>10</max><after>#c09</after></set></query>");
        assert_eq!(after, PageRequest { max: 10, after: Some("#c09".into()), before: None, index: None });
        let last = request("<query xmlns='http://jabber.org/protocol/disco#items'><set xmlns='http://jabber.org/protocol/rsm'><max>5</max><before/></set></query>");
        assert_eq!(last.before, Some(None));
        let huge = request("<query xmlns='http://jabber.org/protocol/disco#items'><set xmlns='http://jabber.org/protocol/rsm'><max>100000</max><index>3</index></set></query>");
        assert_eq!((huge.max, huge.index), (MAX_ITEMS, Some(3)));
        let bad = "<query xmlns='http://jabber.org/protocol/disco#items'><set xmlns='http://jabber.org/protocol/rsm'><max>many</max></set></query>";
        assert_eq!(page_request(&bad.parse().unwrap()).unwrap_err().0, DefinedCondition::BadRequest);
    }

    #[test]
    fn pages_follow_the_order_and_never_overlap() {
        let names: Vec<String> = (0..25).map(|i| format!("#c{i:02}")).collect();
        let at = |r: &PageRequest| page(names.iter().map(String::as_str), r);
        let first = PageRequest { max: 10, after: None, before: None, index: None };
        assert_eq!(at(&first), (0, 10));
        assert_eq!(at(&PageRequest { after: Some("#c09".into()), ..first.clone() }), (10, 10));
        assert_eq!(at(&PageRequest { after: Some("#c19".into()), ..first.clone() }), (20, 5));
        assert_eq!(at(&PageRequest { after: Some("#c24".into()), ..first.clone() }), (25, 0), "past the end: empty");
        // After a name that is gone: where it stood.
        assert_eq!(at(&PageRequest { after: Some("#c095".into()), ..first.clone() }), (10, 10));
        assert_eq!(at(&PageRequest { before: Some(None), ..first.clone() }), (15, 10), "the last page");
        assert_eq!(at(&PageRequest { before: Some(Some("#c05".into())), ..first.clone() }), (0, 5));
        assert_eq!(at(&PageRequest { index: Some(20), ..first.clone() }), (20, 5));
        assert_eq!(at(&PageRequest { index: Some(99), ..first.clone() }), (25, 0));
        assert_eq!(at(&PageRequest { max: 0, ..first }), (0, 0), "max 0: the count only");
    }

    #[test]
    fn a_servers_channels_are_items_with_users_and_topic_and_a_result_set() {
        let listing = ChannelListing {
            channels: vec![channel("!weird", 1, ""), channel("#\u{4}bad", 1, ""), channel("#a", 1, ""), channel("#b", 12, "the b channel"), channel("&local", 2, "")],
            complete: true,
            refused: None,
        };
        let page = PageRequest { max: 2, after: None, before: None, index: None };
        let items = channel_items(&listing, &page, "irc.example.org", "gw");
        assert_eq!(
            String::from(&Element::from(items)),
            "<query xmlns='http://jabber.org/protocol/disco#items'>\
             <item jid='#a%irc.example.org@gw' name='#a (1 user)'/>\
             <item jid='#b%irc.example.org@gw' name='#b (12 users): the b channel'/>\
             <set xmlns='http://jabber.org/protocol/rsm'><first index='0'>#a</first><last>#b</last><count>3</count></set></query>"
        );
        let rest = channel_items(&listing, &PageRequest { after: Some("#b".into()), ..page.clone() }, "irc.example.org", "gw");
        assert_eq!(rest.items.iter().map(|i| i.jid.to_string()).collect::<Vec<_>>(), ["\\26local%irc.example.org@gw"]);
        assert_eq!(rest.rsm.as_ref().and_then(|s| s.first.as_ref()).map(|f| (f.item.as_str(), f.index)), Some(("&local", Some(2))));
        let count = channel_items(&listing, &PageRequest { max: 0, ..page }, "irc.example.org", "gw");
        assert_eq!(String::from(&Element::from(count)), "<query xmlns='http://jabber.org/protocol/disco#items'><set xmlns='http://jabber.org/protocol/rsm'><count>3</count></set></query>");
    }

    #[test]
    fn a_rooms_occupants_are_items_by_nick() {
        let items = occupant_items("#r%irc@gw", vec!["zed".into(), "alice".into(), "bob".into()], &PageRequest { max: 2, after: None, before: None, index: None });
        assert_eq!(
            String::from(&Element::from(items)),
            "<query xmlns='http://jabber.org/protocol/disco#items'>\
             <item jid='#r%irc@gw/alice' name='alice'/><item jid='#r%irc@gw/bob' name='bob'/>\
             <set xmlns='http://jabber.org/protocol/rsm'><first index='0'>alice</first><last>bob</last><count>3</count></set></query>"
        );
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
