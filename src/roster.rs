//! The user's roster: the network contacts a user deals with are put into their roster,
//! best method first, as Spectrum 2 and Slidge do.
//!
//! - Where the user's server grants the gateway roster access (XEP-0356 privileged
//!   entity: Prosody's `mod_privilege`, ejabberd's `privilege_access`), the contact is
//!   pushed into the roster with a name, in a group per network ("Email", "IRC"),
//!   subscribed both ways. The server says what it grants in a `<message/>` right after
//!   the component connects ([`granted_roster_host`]).
//! - Elsewhere, the user's online clients that take XEP-0144 roster item exchange (asked
//!   once per resource by disco#info, through the router's list of online resources)
//!   get a suggestion to add the contact, named and grouped;
//! - else (offline, or no client takes suggestions) the contact asks the user for a
//!   subscription (`<presence type='subscribe'/>` from the contact's JID, with its name
//!   as an XEP-0172 nick), which every client shows.
//!
//! Which contacts: every email correspondent (mail in or out) and every IRC user the user
//! has a private conversation with; each is offered once (recorded in the user's bridge
//! state under `roster/`, so also across restarts and instances). Unregistering removes
//! what was pushed.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bridge_core::model::UserId;
use bridge_core::BridgeStore;
use minidom::Element;
use tracing::{debug, info, warn};
use xmpp_parsers::iq::Iq;
use xmpp_parsers::jid::{BareJid, Jid};
use xmpp_parsers::presence::{Presence, Type as PresenceType};
use xmpp_parsers::roster::{Group, Item, Roster as RosterQuery, Subscription};

use crate::requests::Requests;
use crate::store::Store;
use crate::writer::Outbox;

/// XEP-0356 as Prosody's `mod_privilege` and recent ejabberd speak it.
pub const NS_PRIVILEGE_2: &str = "urn:xmpp:privilege:2";
/// XEP-0356 before version 0.4 (older ejabberd).
pub const NS_PRIVILEGE_1: &str = "urn:xmpp:privilege:1";
/// Where a contact offered to the user is recorded (bridge state of the user).
const KEY_PREFIX: &str = "roster/";
/// How long a roster push may wait for the server's answer.
const PUSH_TIMEOUT: Duration = Duration::from_secs(10);
/// The roster group of email contacts.
pub const GROUP_EMAIL: &str = "Email";
/// The roster group of IRC users.
pub const GROUP_IRC: &str = "IRC";

/// How many (user, contact) pairs the process remembers as offered, sparing the store a
/// lookup per message; past it the memory starts again (the store still knows).
const REMEMBERED: usize = 100_000;

/// A network contact for the roster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contact {
    /// The contact's bare JID on the gateway (`bob\40example.org@gw`, `bob%irc.x@gw`).
    pub jid: String,
    /// The name to show: a mail's From display name, an IRC nick.
    pub name: Option<String>,
    /// The roster group of its network ("Email", "IRC").
    pub group: &'static str,
}

/// Whether `stanza` is a server's XEP-0356 advertisement granting the gateway write
/// access to rosters: the server's domain, if so (the grant covers its users).
#[must_use]
pub fn granted_roster_host(stanza: &Element) -> Option<String> {
    if stanza.name() != "message" {
        return None;
    }
    let from = stanza.attr("from")?;
    // Only a server speaks for its users: a bare domain, no user or resource.
    if from.contains(['@', '/']) {
        return None;
    }
    let privilege = [NS_PRIVILEGE_2, NS_PRIVILEGE_1].iter().find_map(|ns| stanza.get_child("privilege", *ns))?;
    let writes = privilege
        .children()
        .any(|perm| perm.name() == "perm" && perm.attr("access") == Some("roster") && matches!(perm.attr("type"), Some("set" | "both")));
    writes.then(|| from.to_ascii_lowercase())
}

/// Whether `stanza` is any XEP-0356 advertisement (granting roster access or not).
#[must_use]
pub fn is_advertisement(stanza: &Element) -> bool {
    stanza.name() == "message" && (stanza.has_child("privilege", NS_PRIVILEGE_2) || stanza.has_child("privilege", NS_PRIVILEGE_1))
}

/// The roster push from `gateway` that puts `contact` into `user`'s roster, subscribed
/// both ways (one item per push, as RFC 6121 has it and ejabberd insists).
#[must_use]
pub fn push(gateway: &Jid, user: &BareJid, contact: &Contact) -> Option<Iq> {
    let item = Item {
        jid: contact.jid.parse().ok()?,
        name: contact.name.clone(),
        subscription: Subscription::Both,
        ask: Default::default(),
        groups: vec![Group(contact.group.to_owned())],
        approved: None,
    };
    Some(roster_set(gateway, user, item))
}

/// The roster push from `gateway` that takes `jid` out of `user`'s roster.
#[must_use]
pub fn removal(gateway: &Jid, user: &BareJid, jid: &str) -> Option<Iq> {
    let item = Item { jid: jid.parse().ok()?, name: None, subscription: Subscription::Remove, ask: Default::default(), groups: Vec::new(), approved: None };
    Some(roster_set(gateway, user, item))
}

/// A roster set of one item, from the gateway (a component's stanza without `from` ends
/// its stream on ejabberd).
fn roster_set(gateway: &Jid, user: &BareJid, item: Item) -> Iq {
    Iq::from_set("", RosterQuery { ver: None, items: vec![item] }).with_to(Jid::from(user.clone())).with_from(gateway.clone())
}

/// The subscription request of `contact` to `user`, named by an XEP-0172 nick.
#[must_use]
pub fn subscription_request(user: &BareJid, contact: &Contact) -> Option<Element> {
    let mut presence = Presence::new(PresenceType::Subscribe).with_to(Jid::from(user.clone())).with_from(contact.jid.parse::<Jid>().ok()?);
    if let Some(name) = &contact.name {
        presence.payloads.push(xmpp_parsers::nick::Nick(name.clone()).into());
    }
    Some(presence.into())
}

/// A XEP-0144 suggestion to the client `full` to add `contact` (named, grouped), with a
/// line of text saying so.
#[must_use]
pub fn suggestion(gateway: &Jid, full: &str, contact: &Contact) -> Option<Element> {
    let to = full.parse::<Jid>().ok()?;
    contact.jid.parse::<Jid>().ok()?;
    let mut item = Element::builder("item", NS_ROSTERX)
        .attr(rxml::xml_ncname!("action").into(), "add")
        .attr(rxml::xml_ncname!("jid").into(), contact.jid.as_str());
    if let Some(name) = &contact.name {
        item = item.attr(rxml::xml_ncname!("name").into(), name.as_str());
    }
    let item = item.append(Element::builder("group", NS_ROSTERX).append(contact.group).build()).build();
    let mut message = xmpp_parsers::message::Message::new(Some(to));
    message.from = Some(gateway.clone());
    let shown = contact.name.as_ref().map_or_else(|| contact.jid.clone(), |name| format!("{name} ({})", contact.jid));
    message.bodies.insert(xmpp_parsers::message::Lang::new(), format!("Add {shown} to your contacts?"));
    message.payloads.push(Element::builder("x", NS_ROSTERX).append(item).build());
    Some(message.into())
}

/// The roster keeper: which servers grant roster access, and who was offered to whom.
/// Shared by the router and the sides (cheap to clone).
#[derive(Clone)]
pub struct Roster {
    /// What is shared.
    inner: Arc<Inner>,
}

/// XEP-0144 roster item exchange.
pub const NS_ROSTERX: &str = "http://jabber.org/protocol/rosterx";
/// How long a client may take to say whether it takes roster item exchange.
const DISCO_TIMEOUT: Duration = Duration::from_secs(3);
/// Client resources whose answer (takes XEP-0144 or not) is remembered.
const RESOURCES_REMEMBERED: usize = 10_000;

/// The state behind [`Roster`].
struct Inner {
    /// The gateway's JID, the sender of every push.
    gateway: Jid,
    /// Where pushes and subscription requests go.
    out: Outbox,
    /// Waits for the answer to a push.
    requests: Requests,
    /// Where offered contacts are recorded.
    store: Store,
    /// The servers (domains) that granted roster write access on this connection.
    granted: Mutex<HashSet<String>>,
    /// (user, contact) pairs known to be offered, a cache of the store, by hash (no
    /// allocation per message; a collision, one in 2^64, leaves a contact unoffered).
    offered: Mutex<HashSet<u64>>,
    /// Where to ask which resources of a user are online (the router), set once.
    router: std::sync::OnceLock<tokio::sync::mpsc::Sender<crate::router::RouterTask>>,
    /// Full JIDs of clients asked whether they take XEP-0144 suggestions, with the
    /// answer (no answer in time: no) once it came. A cell being filled makes the
    /// contacts offered at once to one client (an import) wait for its first answer
    /// instead of asking it hundreds of times, without holding up other clients' checks.
    /// Bounded by [`RESOURCES_REMEMBERED`].
    rosterx: Mutex<std::collections::HashMap<String, Arc<tokio::sync::OnceCell<bool>>>>,
}

impl Roster {
    /// A roster keeper for the component `gateway`, writing through `out`.
    ///
    /// # Panics
    ///
    /// If `gateway` is no JID (the configuration is validated long before).
    #[must_use]
    pub fn new(gateway: &str, out: Outbox, requests: Requests, store: Store) -> Self {
        let gateway = gateway.parse().expect("the component's JID is validated with the configuration");
        Roster {
            inner: Arc::new(Inner {
                gateway,
                out,
                requests,
                store,
                granted: Mutex::default(),
                offered: Mutex::default(),
                router: std::sync::OnceLock::new(),
                rosterx: Mutex::default(),
            }),
        }
    }

    /// Has the keeper ask `router` which resources of a user are online.
    pub fn ask_resources_of(&self, router: tokio::sync::mpsc::Sender<crate::router::RouterTask>) {
        let _ = self.inner.router.set(router);
    }

    /// Takes a server's XEP-0356 advertisement; `false` if `stanza` is none.
    pub fn advertised(&self, stanza: &Element) -> bool {
        if !is_advertisement(stanza) {
            return false;
        }
        let host = stanza.attr("from").unwrap_or_default().to_ascii_lowercase();
        let mut granted = self.inner.granted.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match granted_roster_host(stanza) {
            Some(host) => {
                info!(%host, "the server lets the gateway put contacts into its users' rosters (XEP-0356)");
                granted.insert(host);
            }
            None => {
                info!(%host, "the server grants no roster access; contacts ask for subscriptions instead");
                granted.remove(&host);
            }
        }
        true
    }

    /// Whether `user`'s server lets the gateway write their roster.
    fn may_push(&self, user: &BareJid) -> bool {
        let granted = self.inner.granted.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        granted.contains(&user.domain().as_str().to_ascii_lowercase())
    }

    /// Offers `contact` to `user` unless it was offered before: a roster push where the
    /// server allows it, else a subscription request from the contact.
    pub async fn contact(&self, user: &str, contact: Contact) {
        let pair = pair_hash(user, &contact.jid);
        if self.inner.offered.lock().unwrap_or_else(std::sync::PoisonError::into_inner).contains(&pair) {
            return;
        }
        let key = format!("{KEY_PREFIX}{}", contact.jid);
        let user_id = UserId(user.to_owned());
        let known = BridgeStore::load(&self.inner.store, &user_id, &key);
        self.remember(pair);
        match known {
            Ok(Some(_)) => return,
            Ok(None) => {}
            Err(error) => return warn!(%user, %error, "cannot read the roster record; the contact is not offered"),
        }
        // Recorded before it is sent: a contact is offered at most once, even if the
        // gateway stops in between (the user can add it by hand, or sync it).
        if let Err(error) = BridgeStore::save(&self.inner.store, &user_id, &key, contact.name.as_deref().unwrap_or_default().as_bytes()).await {
            return warn!(%user, %error, "cannot record the contact; it is not offered");
        }
        self.offer(user, contact).await;
    }

    /// Puts `contact` into `user`'s roster, best method first: a push (XEP-0356), else
    /// (no grant, or the push refused) a suggestion to the user's clients that take
    /// XEP-0144 roster item exchange, else a subscription request.
    pub async fn offer(&self, user: &str, contact: Contact) {
        let Ok(bare) = user.parse::<BareJid>() else { return };
        let push = self.may_push(&bare).then(|| push(&self.inner.gateway, &bare, &contact)).flatten();
        let Some(iq) = push else {
            let this = self.clone();
            tokio::spawn(async move { this.suggest_or_ask(&bare, &contact).await });
            return;
        };
        let this = self.clone();
        tokio::spawn(async move {
            match this.inner.requests.ask(&this.inner.out, iq, PUSH_TIMEOUT).await {
                Ok(_) => debug!(user = %bare, contact = %contact.jid, "contact pushed into the roster"),
                Err(error) => {
                    // ejabberd 23.01 grants roster access and then fails every push
                    // (its mod_roster looks the component's domain up as a host): asked
                    // again at the next connection's grant, not at every contact.
                    warn!(user = %bare, %error, "the roster push failed; contacts of this server ask for subscriptions from now on");
                    this.inner.granted.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&bare.domain().as_str().to_ascii_lowercase());
                    this.suggest_or_ask(&bare, &contact).await;
                }
            }
        });
    }

    /// Without roster access: a XEP-0144 suggestion to each online client of `user` that
    /// takes them, else (none online, or none takes them) `contact`'s subscription request.
    async fn suggest_or_ask(&self, user: &BareJid, contact: &Contact) {
        let mut takers = Vec::new();
        for full in self.resources_of(user).await {
            if self.takes_suggestions(&full).await {
                takers.push(full);
            }
        }
        if takers.is_empty() {
            if let Some(request) = subscription_request(user, contact) {
                self.inner.out.send(request).await;
            }
            return;
        }
        for full in takers {
            if let Some(message) = suggestion(&self.inner.gateway, &full, contact) {
                debug!(client = %full, contact = %contact.jid, "contact suggested (XEP-0144)");
                self.inner.out.send(message).await;
            }
        }
    }

    /// The full JIDs of `user`'s online resources, as the router knows them.
    async fn resources_of(&self, user: &BareJid) -> Vec<String> {
        let Some(router) = self.inner.router.get() else { return Vec::new() };
        let (reply, answer) = tokio::sync::oneshot::channel();
        if router.send(crate::router::RouterTask::Resources { user: user.to_string(), reply }).await.is_err() {
            return Vec::new();
        }
        answer.await.unwrap_or_default()
    }

    /// Whether the client `full` takes XEP-0144 suggestions (asked once by disco#info).
    async fn takes_suggestions(&self, full: &str) -> bool {
        let Ok(to) = full.parse::<Jid>() else { return false };
        let answer = {
            let mut known = self.inner.rosterx.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if known.len() >= RESOURCES_REMEMBERED && !known.contains_key(full) {
                known.clear();
            }
            Arc::clone(known.entry(full.to_owned()).or_default())
        };
        *answer
            .get_or_init(|| async {
                let iq = Iq::from_get("", xmpp_parsers::disco::DiscoInfoQuery { node: None }).with_to(to).with_from(self.inner.gateway.clone());
                match self.inner.requests.ask(&self.inner.out, iq, DISCO_TIMEOUT).await {
                    Ok(Some(payload)) => xmpp_parsers::disco::DiscoInfoResult::try_from(payload).is_ok_and(|info| info.features.contains(NS_ROSTERX)),
                    _ => false,
                }
            })
            .await
    }

    /// The contacts offered to `user` so far, in JID order.
    #[must_use]
    pub fn offered(&self, user: &str) -> Vec<Contact> {
        let entries = BridgeStore::list(&self.inner.store, &UserId(user.to_owned()), KEY_PREFIX).unwrap_or_default();
        entries
            .into_iter()
            .filter_map(|(key, name)| {
                let jid = key.strip_prefix(KEY_PREFIX)?.to_owned();
                let name = String::from_utf8(name).ok().filter(|n| !n.is_empty());
                Some(Contact { group: group_of(&jid), jid, name })
            })
            .collect()
    }

    /// Takes what was pushed out of `user`'s roster (their registration is gone; its
    /// records went with it, so the caller read `jids` before).
    pub async fn remove(&self, user: &str, jids: Vec<String>) {
        {
            let mut offered = self.inner.offered.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            for jid in &jids {
                offered.remove(&pair_hash(user, jid));
            }
        }
        let Ok(bare) = user.parse::<BareJid>() else { return };
        if jids.is_empty() || !self.may_push(&bare) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            for jid in jids {
                let Some(iq) = removal(&this.inner.gateway, &bare, &jid) else { continue };
                if let Err(error) = this.inner.requests.ask(&this.inner.out, iq, PUSH_TIMEOUT).await {
                    return warn!(user = %bare, %error, "the gateway's contacts could not be taken out of the roster");
                }
            }
        });
    }

    fn remember(&self, pair: u64) {
        let mut offered = self.inner.offered.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if offered.len() >= REMEMBERED {
            offered.clear();
        }
        offered.insert(pair);
    }
}

/// The key of (user, contact) in [`Inner::offered`].
fn pair_hash(user: &str, jid: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (user, jid).hash(&mut hasher);
    hasher.finish()
}

/// The group of a contact JID of the gateway: IRC users have a `%` (`nick%server`).
fn group_of(jid: &str) -> &'static str {
    let local = jid.split('@').next().unwrap_or_default();
    if local.contains('%') {
        GROUP_IRC
    } else {
        GROUP_EMAIL
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(xml: &str) -> Element {
        xml.parse().unwrap()
    }

    #[test]
    fn a_grant_of_roster_writes_is_read_in_either_version() {
        for ns in [NS_PRIVILEGE_2, NS_PRIVILEGE_1] {
            for kind in ["both", "set"] {
                let message = parse(&format!(
                    "<message xmlns='jabber:component:accept' from='Example.org' to='gw.example.org'>\
                     <privilege xmlns='{ns}'><perm access='roster' type='{kind}'/><perm access='message' type='outgoing'/></privilege></message>"
                ));
                assert_eq!(granted_roster_host(&message).as_deref(), Some("example.org"), "{ns} {kind}");
                assert!(is_advertisement(&message));
            }
        }
    }

    #[test]
    fn read_only_or_no_roster_access_or_a_user_grants_nothing() {
        let read_only = parse(
            "<message xmlns='jabber:component:accept' from='example.org'><privilege xmlns='urn:xmpp:privilege:2'>\
             <perm access='roster' type='get'/></privilege></message>",
        );
        assert_eq!(granted_roster_host(&read_only), None);
        assert!(is_advertisement(&read_only), "still an advertisement: it withdraws a grant");
        let messages_only = parse(
            "<message xmlns='jabber:component:accept' from='example.org'><privilege xmlns='urn:xmpp:privilege:2'>\
             <perm access='message' type='outgoing'/></privilege></message>",
        );
        assert_eq!(granted_roster_host(&messages_only), None);
        let from_a_user = parse(
            "<message xmlns='jabber:component:accept' from='mallory@example.org/x'><privilege xmlns='urn:xmpp:privilege:2'>\
             <perm access='roster' type='both'/></privilege></message>",
        );
        assert_eq!(granted_roster_host(&from_a_user), None);
        let chat = parse("<message xmlns='jabber:component:accept' from='example.org'><body>hi</body></message>");
        assert!(!is_advertisement(&chat));
    }

    /// The one item of a roster set.
    fn item_of(iq: Iq) -> Item {
        let iq: Element = iq.into();
        let mut query = RosterQuery::try_from(iq.get_child("query", "jabber:iq:roster").unwrap().clone()).unwrap();
        assert_eq!(query.items.len(), 1, "one item per set (RFC 6121)");
        query.items.remove(0)
    }

    #[test]
    fn a_push_names_and_groups_the_contact() {
        let user: BareJid = "alice@example.org".parse().unwrap();
        let gateway: Jid = "gw.example.org".parse().unwrap();
        let bob = Contact { jid: "bob\\40mail.example@gw.example.org".into(), name: Some("Bob".into()), group: "Email" };
        let iq: Element = push(&gateway, &user, &bob).unwrap().into();
        assert_eq!(iq.attr("type"), Some("set"));
        assert_eq!(iq.attr("to"), Some("alice@example.org"));
        assert_eq!(iq.attr("from"), Some("gw.example.org"), "a component's stanza without from ends its stream on ejabberd");
        let item = item_of(push(&gateway, &user, &bob).unwrap());
        assert_eq!(item.jid.to_string(), "bob\\40mail.example@gw.example.org");
        assert_eq!(item.name.as_deref(), Some("Bob"));
        assert_eq!(item.subscription, Subscription::Both);
        assert_eq!(item.groups, vec![Group("Email".into())]);
        let carol = Contact { jid: "carol%irc.example@gw.example.org".into(), name: None, group: "IRC" };
        let item = item_of(push(&gateway, &user, &carol).unwrap());
        assert_eq!((item.name, item.groups), (None, vec![Group("IRC".into())]));
        assert!(push(&gateway, &user, &Contact { jid: "@".into(), name: None, group: "IRC" }).is_none());
    }

    #[test]
    fn the_group_follows_the_kind_of_address() {
        assert_eq!(group_of("bob%irc.example@gw"), GROUP_IRC);
        assert_eq!(group_of("bob\\40mail.example@gw"), GROUP_EMAIL);
    }

    #[test]
    fn a_removal_takes_each_contact_out() {
        let user: BareJid = "alice@example.org".parse().unwrap();
        let iq = removal(&"gw".parse().unwrap(), &user, "bob\\40mail.example@gw").unwrap();
        assert_eq!(Element::from(iq.clone()).attr("from"), Some("gw"));
        assert_eq!(item_of(iq).subscription, Subscription::Remove);
    }

    #[test]
    fn a_suggestion_names_and_groups_the_contact_for_one_client() {
        let gateway: Jid = "gw".parse().unwrap();
        let contact = Contact { jid: "bob\\40example.org@gw".into(), name: Some("Bob".into()), group: GROUP_EMAIL };
        let message = suggestion(&gateway, "u@h/phone", &contact).unwrap();
        assert_eq!((message.attr("from"), message.attr("to")), (Some("gw"), Some("u@h/phone")));
        let item = message.get_child("x", NS_ROSTERX).and_then(|x| x.get_child("item", NS_ROSTERX)).unwrap();
        assert_eq!((item.attr("action"), item.attr("jid"), item.attr("name")), (Some("add"), Some("bob\\40example.org@gw"), Some("Bob")));
        assert_eq!(item.get_child("group", NS_ROSTERX).map(Element::text).as_deref(), Some("Email"));
        assert!(suggestion(&gateway, "not a jid@@", &contact).is_none());
    }

    #[test]
    fn without_privilege_the_contact_asks_with_its_name() {
        let user: BareJid = "alice@example.org".parse().unwrap();
        let contact = Contact { jid: "bob\\40mail.example@gw".into(), name: Some("Bob".into()), group: "Email" };
        let request = subscription_request(&user, &contact).unwrap();
        assert_eq!(request.attr("type"), Some("subscribe"));
        assert_eq!(request.attr("from"), Some("bob\\40mail.example@gw"));
        assert_eq!(request.attr("to"), Some("alice@example.org"));
        assert_eq!(request.get_child("nick", xmpp_parsers::ns::NICK).map(Element::text).as_deref(), Some("Bob"));
    }

    #[tokio::test]
    async fn a_slow_client_holds_up_only_the_checks_of_that_client() {
        let (out, mut written) = crate::writer::Outbox::for_tests();
        let (store, _tmp) = crate::side::testing::store();
        let requests = Requests::default();
        let roster = Roster::new("gw.example.org", out, requests.clone(), store);
        let slow = "alice@example.org/phone";
        let asks = |full: &'static str| {
            let roster = roster.clone();
            tokio::spawn(async move { roster.takes_suggestions(full).await })
        };
        // An import: three contacts offered at once to the slow client, then one to another.
        let slow_checks = [asks(slow), asks(slow), asks(slow)];
        let first = written.recv().await.unwrap();
        assert_eq!(first.attr("to"), Some(slow));
        let other = asks("bob@example.org/desktop");
        let second = written.recv().await.unwrap();
        assert_eq!(second.attr("to"), Some("bob@example.org/desktop"), "the other client is asked while the slow one is silent");
        let answer = |asked: &Element, features: &str| {
            format!(
                "<iq xmlns='jabber:component:accept' type='result' id='{}' from='{}'>\
                 <query xmlns='http://jabber.org/protocol/disco#info'><identity category='client' type='pc'/>{features}</query></iq>",
                asked.attr("id").unwrap(),
                asked.attr("to").unwrap()
            )
        };
        assert!(requests.resolve(parse(&answer(&second, ""))));
        assert!(!other.await.unwrap(), "answered without the feature");
        assert!(requests.resolve(parse(&answer(&first, &format!("<feature var='{NS_ROSTERX}'/>")))));
        for check in slow_checks {
            assert!(check.await.unwrap(), "every check of the slow client has its one answer");
        }
        assert!(written.try_recv().is_err(), "the slow client was asked once");
        assert!(roster.takes_suggestions(slow).await, "and its answer is remembered");
    }
}
