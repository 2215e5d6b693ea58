//! Several instances on one component domain: each user's stanzas reach the one instance
//! that owns the user's live sessions.
//!
//! With `[cluster]` configured, every instance connects to the XMPP server (an ejabberd
//! cluster) as the same domain, and the server hands each stanza to any of them. The
//! [`Cluster`] sits between the connection and the router: a stanza of a user this
//! instance owns goes to the router; one of a user another instance owns goes to that
//! instance over the peer link ([`peer`]); one of a user nobody owns yet makes this
//! instance the owner ([`lease::Lease::resolve`]). Ownership lives in PostgreSQL
//! ([`lease`]): when an instance dies, the others take its users within seconds and start
//! their sessions again ([`Work::Adopt`]), from the rooms each owner saves
//! ([`Work::SaveRooms`]).
//!
//! Without `[cluster]`, [`Cluster::single`] passes every stanza straight through.

pub mod lease;
pub mod peer;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bridge_core::Secret;
use minidom::Element;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};
use xmpp_parsers::stanza_error::DefinedCondition;

use crate::side::refuse;
use crate::writer::Outbox;
use lease::{Lease, LeaseEvent, OwnerRow};
use peer::{Forwarded, LinkFailed};

/// How many times a stanza may be handed on between instances (a stale owner cache may
/// cost one extra hop; more means a loop).
const MAX_HOPS: u8 = 2;
/// How often the owner saves the rooms its users are in, for a successor.
const SAVE_ROOMS: Duration = Duration::from_secs(1);
/// Stanzas other instances may have handed us before the router takes them.
const FORWARDED_QUEUE: usize = 1024;

/// What the router must do next, from the cluster.
#[derive(Debug)]
pub enum Work {
    /// Handle this stanza: its user is ours.
    Stanza(Element),
    /// These users are ours now: start their sessions again (rooms, always-on channels,
    /// presence).
    Adopt(Vec<String>),
    /// These users are no longer ours: end their sessions without a word to them (their
    /// new owner takes over).
    Release(Vec<String>),
    /// Save the rooms the users are in, for whoever takes them over.
    SaveRooms,
    /// We are fenced, our users' sessions ended (the `Release` came first): leave the XMPP
    /// server, so that the others get the stanzas we can no longer serve, and come back
    /// once [`Cluster::unfenced`].
    Leave,
}

/// This instance's place in a cluster, or nothing for a single instance.
pub struct Cluster {
    /// `None` for a single instance.
    node: Option<Box<Node>>,
}

/// What an instance of a cluster keeps to route stanzas.
struct Node {
    /// Our id and the database side.
    lease: Arc<Lease>,
    /// Our domain: stanzas from it are our own (keepalive), not a user's.
    gateway: String,
    /// For the peer links' handshakes.
    secret: Secret,
    /// Where refusals go.
    out: Outbox,
    /// Known owners by bare JID (lower case), ours included. An entry naming another
    /// instance may be stale only if that instance died: its link then breaks, and the
    /// entry is dropped.
    owners: HashMap<String, String>,
    /// Stanzas of users whose owner is being looked up, in arrival order.
    pending: HashMap<String, Vec<(Element, u8)>>,
    /// Peer link addresses of the live instances (from the watcher).
    addresses: HashMap<String, String>,
    /// Open links by instance.
    links: HashMap<String, mpsc::UnboundedSender<(Element, u8)>>,
    /// Work ready for the router, in order.
    ready: VecDeque<Work>,
    /// Results of owner lookups.
    resolved: mpsc::UnboundedReceiver<Resolved>,
    resolved_tx: mpsc::UnboundedSender<Resolved>,
    /// What the heartbeat and the watcher say.
    lease_events: mpsc::UnboundedReceiver<LeaseEvent>,
    /// Stanzas other instances hand us.
    forwarded: mpsc::Receiver<Forwarded>,
    /// Links that broke, with what they did not deliver.
    failed: mpsc::UnboundedReceiver<LinkFailed>,
    failed_tx: mpsc::UnboundedSender<LinkFailed>,
    /// Ticks of [`Work::SaveRooms`].
    save_rooms: tokio::time::Interval,
    /// Whether we are fenced (`Lease::fenced`).
    fenced: tokio::sync::watch::Receiver<bool>,
}

/// An owner lookup's answer.
struct Resolved {
    /// The user (bare JID, lower case).
    user: String,
    /// The owner, or why none could be reached.
    owner: Result<OwnerRow, String>,
    /// Whether the lookup followed a broken link (the user may have just moved to us).
    after_failure: bool,
}

/// How the cluster is set up: the instance's id and the addresses of its peer link.
pub struct Membership {
    /// The database side.
    pub lease: Arc<Lease>,
    /// The bound peer listener.
    pub listener: tokio::net::TcpListener,
}

/// Why the cluster could not be joined.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The peer listener could not be bound.
    #[error(transparent)]
    Listen(#[from] peer::ListenError),
    /// The configured or bound address cannot be advertised.
    #[error("cluster.advertise: {0}")]
    Advertise(String),
}

/// A new random instance id: 8 hex digits (our request ids carry it, see [`tag_of`]).
pub fn new_instance_id() -> String {
    format!("{:08x}", fastrand::u32(..))
}

/// The prefix of the ids of iq requests instance `id` sends, so that their answers,
/// which the server may hand to any instance, find their way back.
pub fn id_prefix(id: &str) -> String {
    format!("c{id}-")
}

/// The instance whose request an iq id answers, when it carries one ([`id_prefix`]).
pub fn tag_of(id: &str) -> Option<&str> {
    let rest = id.strip_prefix('c')?;
    let (tag, _) = rest.split_once('-')?;
    (tag.len() == 8 && tag.bytes().all(|b| b.is_ascii_hexdigit())).then_some(tag)
}

/// Binds the peer listener of `listen` and works out the address to advertise.
pub async fn bind(listen: &str, advertise: Option<&str>) -> Result<(tokio::net::TcpListener, String), ClusterError> {
    let listener = peer::bind(listen).await?;
    let bound = listener.local_addr().map_err(|e| ClusterError::Advertise(e.to_string()))?;
    let advertised = match advertise {
        Some(address) => address.to_owned(),
        None if bound.ip().is_unspecified() => {
            return Err(ClusterError::Advertise(format!(
                "cluster.listen = {listen} binds every address; set cluster.advertise to the one other instances can reach"
            )))
        }
        None => bound.to_string(),
    };
    Ok((listener, advertised))
}

/// Where a stanza goes.
#[derive(Debug, PartialEq, Eq)]
enum Destination {
    /// This instance, whatever the owners say (our own stanzas, the server's).
    Here,
    /// The instance that sent the request this answers.
    Instance(String),
    /// The owner of this user (bare JID, lower case).
    User(String),
}

/// Where `stanza` belongs: answers to our requests go back to the instance that asked
/// ([`tag_of`]); anything else from a user goes to the user's owner.
fn destination(stanza: &Element, gateway: &str) -> Destination {
    if stanza.name() == "iq" && matches!(stanza.attr("type"), Some("result" | "error")) {
        if let Some(tag) = stanza.attr("id").and_then(tag_of) {
            return Destination::Instance(tag.to_owned());
        }
    }
    let Some(from) = stanza.attr("from") else { return Destination::Here };
    let bare = from.split('/').next().unwrap_or_default();
    let Some((_, domain)) = bare.split_once('@') else { return Destination::Here };
    if domain.eq_ignore_ascii_case(gateway) {
        return Destination::Here;
    }
    Destination::User(bare.to_lowercase())
}

impl Cluster {
    /// A single instance: every stanza is ours.
    pub fn single() -> Cluster {
        Cluster { node: None }
    }

    /// Joins the cluster: starts the heartbeat, the watcher and the peer listener.
    pub fn join(membership: Membership, gateway: &str, secret: Secret, out: Outbox, max_stanza_bytes: usize) -> Cluster {
        let Membership { lease, listener } = membership;
        let (lease_tx, lease_events) = mpsc::unbounded_channel();
        tokio::spawn(lease::heartbeat(lease.clone(), lease_tx.clone()));
        tokio::spawn(lease::watch(lease.clone(), lease_tx));
        let (forwarded_tx, forwarded) = mpsc::channel(FORWARDED_QUEUE);
        tokio::spawn(peer::serve(listener, secret.clone(), max_stanza_bytes, forwarded_tx, lease.fenced()));
        Cluster { node: Some(Box::new(Node::new(lease, gateway, secret, out, lease_events, forwarded))) }
    }

    /// A stanza from the server: `Some` when it is ours to handle now; otherwise it was
    /// handed to its owner, or waits for the owner to be known.
    pub async fn gate(&mut self, stanza: Element) -> Option<Element> {
        match &mut self.node {
            None => Some(stanza),
            Some(node) => node.route(stanza, 0).await,
        }
    }

    /// Resolves once this instance is not fenced (at once, for a single instance).
    pub async fn unfenced(&mut self) {
        if let Some(node) = &mut self.node {
            if *node.fenced.borrow() {
                info!("fenced: staying away from the XMPP server until the database answers");
            }
            drop(node.fenced.wait_for(|fenced| !*fenced).await);
        }
    }

    /// The next piece of work for the router (never, for a single instance).
    pub async fn next(&mut self) -> Work {
        let Some(node) = &mut self.node else { return std::future::pending().await };
        loop {
            if let Some(work) = node.ready.pop_front() {
                return work;
            }
            let mut fenced = node.fenced.clone();
            tokio::select! {
                Some(forwarded) = node.forwarded.recv() => {
                    if let Some(stanza) = node.route(forwarded.stanza, forwarded.hops).await {
                        return Work::Stanza(stanza);
                    }
                }
                Some(resolved) = node.resolved.recv() => node.on_resolved(resolved).await,
                Some(failed) = node.failed.recv() => node.on_link_failed(failed).await,
                Some(event) = node.lease_events.recv() => node.on_lease_event(event),
                _ = node.save_rooms.tick() => return Work::SaveRooms,
                _ = fenced.wait_for(|fenced| *fenced) => {
                    // What the lease said before the fence (its Release) goes first.
                    while let Ok(event) = node.lease_events.try_recv() {
                        node.on_lease_event(event);
                    }
                    return node.ready.pop_front().unwrap_or(Work::Leave);
                }
            }
        }
    }

    /// The instance stops cleanly: the others may take its users at once.
    pub async fn leave(&self) {
        if let Some(node) = &self.node {
            if let Err(error) = node.lease.leave().await {
                warn!(%error, "could not tell the cluster this instance leaves; its users move after the lease");
            }
        }
    }
}

impl Node {
    /// A node knowing no owner yet, fed by the lease tasks and the peer listener.
    fn new(
        lease: Arc<Lease>,
        gateway: &str,
        secret: Secret,
        out: Outbox,
        lease_events: mpsc::UnboundedReceiver<LeaseEvent>,
        forwarded: mpsc::Receiver<Forwarded>,
    ) -> Node {
        let (resolved_tx, resolved) = mpsc::unbounded_channel();
        let (failed_tx, failed) = mpsc::unbounded_channel();
        let mut save_rooms = tokio::time::interval(SAVE_ROOMS);
        save_rooms.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Node {
            fenced: lease.fenced(),
            lease,
            gateway: gateway.to_ascii_lowercase(),
            secret,
            out,
            owners: HashMap::new(),
            pending: HashMap::new(),
            addresses: HashMap::new(),
            links: HashMap::new(),
            ready: VecDeque::new(),
            resolved,
            resolved_tx,
            lease_events,
            forwarded,
            failed,
            failed_tx,
            save_rooms,
        }
    }

    fn me(&self) -> &str {
        self.lease.me()
    }

    /// Routes one stanza: `Some` when it is ours to handle now.
    async fn route(&mut self, stanza: Element, hops: u8) -> Option<Element> {
        let user = match destination(&stanza, &self.gateway) {
            Destination::Here => return Some(stanza),
            Destination::Instance(id) if id == self.me() => return Some(stanza),
            Destination::Instance(id) => {
                if self.addresses.contains_key(&id) {
                    self.forward(&id, stanza, hops).await;
                    return None;
                }
                // An instance we do not know (gone): nobody waits for this answer.
                debug!(instance = %id, "dropping an answer to a request of an instance that is gone");
                return None;
            }
            Destination::User(user) => user,
        };
        if let Some(waiting) = self.pending.get_mut(&user) {
            waiting.push((stanza, hops));
            return None;
        }
        match self.owners.get(&user) {
            Some(owner) if owner == self.me() => Some(stanza),
            Some(owner) => {
                let owner = owner.clone();
                self.forward(&owner, stanza, hops).await;
                None
            }
            None => {
                self.pending.insert(user.clone(), vec![(stanza, hops)]);
                self.look_up(user, None);
                None
            }
        }
    }

    /// Starts looking up `user`'s owner, avoiding `avoid` (whose link just broke) until
    /// the database names another; past 10 s (five times the grace after which a killed
    /// owner's users move) the user's waiting stanzas are refused.
    fn look_up(&self, user: String, avoid: Option<String>) {
        let lease = self.lease.clone();
        let results = self.resolved_tx.clone();
        let patience = lease::GRACE * 5;
        tokio::spawn(async move {
            let started = Instant::now();
            let after_failure = avoid.is_some();
            let owner = loop {
                match lease.resolve(&user).await {
                    Ok(row) if row.peer.is_some() && avoid.as_deref() != Some(row.instance.as_str()) => break Ok(row),
                    Ok(row) if row.instance == lease.me() => break Ok(row),
                    Ok(row) if started.elapsed() > patience => {
                        break Err(format!("the gateway instance serving you ({}) is unreachable; retry in a few seconds", row.instance))
                    }
                    Err(error) if started.elapsed() > patience => {
                        warn!(%error, "cannot look up a user's gateway instance");
                        break Err("the gateway cannot reach its database; retry in a few seconds".to_owned());
                    }
                    Ok(_) | Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
                }
            };
            let _ = results.send(Resolved { user, owner, after_failure });
        });
    }

    /// An owner lookup came back: the user's waiting stanzas go on, in order.
    async fn on_resolved(&mut self, resolved: Resolved) {
        let Resolved { user, owner, after_failure } = resolved;
        let waiting = self.pending.remove(&user).unwrap_or_default();
        match owner {
            Ok(row) => {
                if let Some(peer) = &row.peer {
                    self.addresses.insert(row.instance.clone(), peer.clone());
                }
                let mine = row.instance == self.me();
                let known_mine = self.owners.get(&user).is_some_and(|owner| owner == self.me());
                if mine && !known_mine && (after_failure || row.epoch > 1) {
                    // Taken from a dead owner by our watcher, whose word may not have
                    // come yet: start the sessions before the stanzas.
                    self.ready.push_back(Work::Adopt(vec![user.clone()]));
                }
                self.owners.insert(user, row.instance.clone());
                for (stanza, hops) in waiting {
                    if mine {
                        self.ready.push_back(Work::Stanza(stanza));
                    } else {
                        self.forward(&row.instance, stanza, hops).await;
                    }
                }
            }
            Err(text) => {
                for (stanza, _) in waiting {
                    refuse(&self.out, &stanza, DefinedCondition::RemoteServerTimeout, &text).await;
                }
            }
        }
    }

    /// Hands `stanza` to instance `to` over its link (opened if need be).
    async fn forward(&mut self, to: &str, stanza: Element, hops: u8) {
        if hops >= MAX_HOPS {
            warn!(to, "a stanza went round the instances; refusing it");
            let text = "the gateway's instances disagree on who serves you; retry in a few seconds";
            return refuse(&self.out, &stanza, DefinedCondition::RemoteServerTimeout, text).await;
        }
        let link = match self.links.get(to) {
            Some(link) if !link.is_closed() => link,
            _ => {
                let Some(address) = self.addresses.get(to).cloned() else {
                    // Not known as alive: look the owner up again.
                    return self.reroute(to, vec![(stanza, hops)]);
                };
                let link = peer::connect(self.me().to_owned(), to.to_owned(), address, self.secret.clone(), self.failed_tx.clone());
                self.links.entry(to.to_owned()).insert_entry(link).into_mut()
            }
        };
        if let Err(mpsc::error::SendError(back)) = link.send((stanza, hops + 1)) {
            self.links.remove(to);
            self.reroute(to, vec![(back.0, back.1.saturating_sub(1))]);
        }
    }

    /// A link broke: what it did not deliver is routed again, away from that instance.
    async fn on_link_failed(&mut self, failed: LinkFailed) {
        warn!(peer = %failed.peer, reason = %failed.reason, undelivered = failed.stanzas.len(), "a link to another gateway instance broke");
        self.links.remove(&failed.peer);
        let stanzas = failed.stanzas.into_iter().map(|(stanza, hops)| (stanza, hops.saturating_sub(1))).collect();
        self.reroute(&failed.peer, stanzas);
    }

    /// Stanzas that could not reach instance `from`: their users' owners are looked up
    /// again, avoiding it.
    fn reroute(&mut self, from: &str, stanzas: Vec<(Element, u8)>) {
        self.owners.retain(|_, owner| owner != from);
        for (stanza, hops) in stanzas {
            let Destination::User(user) = destination(&stanza, &self.gateway) else {
                debug!(instance = from, "dropping an answer to a request of an instance that is unreachable");
                continue;
            };
            match self.pending.get_mut(&user) {
                Some(waiting) => waiting.push((stanza, hops)),
                None => {
                    self.pending.insert(user.clone(), vec![(stanza, hops)]);
                    self.look_up(user, Some(from.to_owned()));
                }
            }
        }
    }

    fn on_lease_event(&mut self, event: LeaseEvent) {
        match event {
            LeaseEvent::Instances(addresses) => {
                // Owners gone from the table died and their users moved: forget them (we
                // are ours even before our row is written).
                let me = self.me().to_owned();
                self.owners.retain(|_, owner| *owner == me || addresses.contains_key(owner));
                self.addresses = addresses;
            }
            LeaseEvent::Adopted(users) => {
                let me = self.me().to_owned();
                // Those a lookup found ours first are started already.
                let users: Vec<String> = users.into_iter().filter(|user| self.owners.get(user) != Some(&me)).collect();
                for user in &users {
                    self.owners.insert(user.clone(), me.clone());
                }
                if !users.is_empty() {
                    self.ready.push_back(Work::Adopt(users));
                }
            }
            LeaseEvent::Owned(owned) => {
                let me = self.me().to_owned();
                let served: HashSet<String> = self.owners.iter().filter(|(_, o)| **o == me).map(|(u, _)| u.clone()).collect();
                let released: Vec<String> = served.difference(&owned).cloned().collect();
                let adopted: Vec<String> = owned.difference(&served).cloned().collect();
                for user in &released {
                    self.owners.remove(user);
                }
                for user in &adopted {
                    self.owners.insert(user.clone(), me.clone());
                }
                if !released.is_empty() {
                    info!(released = released.len(), "users taken by other instances while this one was away from the database");
                    self.ready.push_back(Work::Release(released));
                }
                if !adopted.is_empty() {
                    self.ready.push_back(Work::Adopt(adopted));
                }
            }
            LeaseEvent::Fenced => {
                let me = self.me().to_owned();
                let served: Vec<String> = self.owners.iter().filter(|(_, o)| **o == me).map(|(u, _)| u.clone()).collect();
                self.owners.clear();
                warn!(users = served.len(), "fenced: ending this instance's sessions until the database answers");
                self.ready.push_back(Work::Release(served));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: &str = "aaaaaaaa";
    const OTHER: &str = "bbbbbbbb";

    /// A node that never reaches a database (none of these tests asks it anything).
    fn node() -> Node {
        let target = crate::store::postgres::PgTarget::new("postgres://u:p@127.0.0.1:1/db", None).unwrap();
        let lease = Lease::new(target, ME.into(), "127.0.0.1:1".into(), Duration::from_secs(10));
        let (out, _) = Outbox::for_tests();
        let (_, lease_events) = mpsc::unbounded_channel();
        let (_, forwarded) = mpsc::channel(1);
        Node::new(lease, "gw.localhost", Secret::new("s".to_owned()), out, lease_events, forwarded)
    }

    fn users(list: &[&str]) -> Vec<String> {
        let mut users: Vec<String> = list.iter().map(|u| (*u).to_owned()).collect();
        users.sort();
        users
    }

    fn sorted(work: Option<Work>) -> (String, Vec<String>) {
        match work {
            Some(Work::Adopt(mut u)) => {
                u.sort();
                ("adopt".into(), u)
            }
            Some(Work::Release(mut u)) => {
                u.sort();
                ("release".into(), u)
            }
            other => (format!("{other:?}"), Vec::new()),
        }
    }

    #[tokio::test]
    async fn after_a_reconnection_users_moved_away_are_released_and_ours_started() {
        let mut node = node();
        node.owners.insert("u1@h".into(), ME.into());
        node.owners.insert("u2@h".into(), ME.into());
        node.owners.insert("u3@h".into(), OTHER.into());
        node.on_lease_event(LeaseEvent::Owned(["u2@h", "u4@h"].iter().map(|u| (*u).to_owned()).collect()));
        assert_eq!(sorted(node.ready.pop_front()), ("release".into(), users(&["u1@h"])));
        assert_eq!(sorted(node.ready.pop_front()), ("adopt".into(), users(&["u4@h"])));
        assert_eq!(node.owners.get("u4@h").map(String::as_str), Some(ME));
        assert_eq!(node.owners.get("u1@h"), None);
        assert_eq!(node.owners.get("u3@h").map(String::as_str), Some(OTHER));
    }

    #[tokio::test]
    async fn a_fence_releases_every_user_of_ours_and_forgets_all_owners() {
        let mut node = node();
        node.owners.insert("u1@h".into(), ME.into());
        node.owners.insert("u2@h".into(), OTHER.into());
        node.on_lease_event(LeaseEvent::Fenced);
        assert_eq!(sorted(node.ready.pop_front()), ("release".into(), users(&["u1@h"])));
        assert!(node.owners.is_empty());
    }

    #[tokio::test]
    async fn owners_gone_from_the_instances_are_forgotten_but_we_are_not() {
        let mut node = node();
        node.owners.insert("u1@h".into(), ME.into());
        node.owners.insert("u2@h".into(), OTHER.into());
        node.on_lease_event(LeaseEvent::Instances(HashMap::new()));
        assert_eq!(node.owners.get("u1@h").map(String::as_str), Some(ME));
        assert_eq!(node.owners.get("u2@h"), None, "a dead owner's users are looked up again");
    }

    #[tokio::test]
    async fn adopted_users_are_ours_and_started() {
        let mut node = node();
        node.on_lease_event(LeaseEvent::Adopted(vec!["u1@h".into()]));
        assert_eq!(sorted(node.ready.pop_front()), ("adopt".into(), users(&["u1@h"])));
        assert_eq!(node.owners.get("u1@h").map(String::as_str), Some(ME));
    }

    #[tokio::test]
    async fn a_user_a_lookup_finds_taken_over_by_us_is_started_before_its_stanza_and_once() {
        let mut node = node();
        let stanza = parse("<message xmlns='jabber:component:accept' from='u@h/r' to='#c%irc@gw.localhost' id='1'/>");
        assert!(node.route(stanza, 0).await.is_none());
        // The watcher took the user over (epoch 2) but its word comes after the lookup's.
        let owner = Ok(OwnerRow { instance: ME.into(), peer: Some("127.0.0.1:1".into()), epoch: 2 });
        node.on_resolved(Resolved { user: "u@h".into(), owner, after_failure: false }).await;
        assert_eq!(sorted(node.ready.pop_front()), ("adopt".into(), users(&["u@h"])));
        assert!(matches!(node.ready.pop_front(), Some(Work::Stanza(_))));
        node.on_lease_event(LeaseEvent::Adopted(vec!["u@h".into()]));
        assert!(node.ready.is_empty(), "not started twice");
    }

    #[tokio::test]
    async fn a_users_stanzas_wait_in_order_behind_the_lookup_of_their_owner() {
        let mut node = node();
        let first = parse("<message xmlns='jabber:component:accept' from='u@h/r' to='#c%irc@gw.localhost' id='1'/>");
        let second = parse("<message xmlns='jabber:component:accept' from='u@h/r' to='#c%irc@gw.localhost' id='2'/>");
        assert!(node.route(first, 0).await.is_none());
        assert!(node.route(second, 0).await.is_none());
        let waiting: Vec<_> = node.pending["u@h"].iter().map(|(s, _)| s.attr("id").unwrap().to_owned()).collect();
        assert_eq!(waiting, ["1", "2"]);
        // The owner turns out to be us: both go to the router, in order.
        let owner = Ok(OwnerRow { instance: ME.into(), peer: Some("127.0.0.1:1".into()), epoch: 1 });
        node.on_resolved(Resolved { user: "u@h".into(), owner, after_failure: false }).await;
        let ids: Vec<_> = node.ready.iter().map(|w| match w {
            Work::Stanza(s) => s.attr("id").unwrap().to_owned(),
            other => format!("{other:?}"),
        }).collect();
        assert_eq!(ids, ["1", "2"]);
        // And the next one passes straight through.
        let third = parse("<message xmlns='jabber:component:accept' from='u@h/r' to='#c%irc@gw.localhost' id='3'/>");
        assert!(node.route(third, 0).await.is_some());
    }

    fn parse(xml: &str) -> Element {
        xml.parse().unwrap()
    }

    #[test]
    fn request_ids_carry_the_instance_and_are_read_back() {
        let id = format!("{}gw-req-7", id_prefix("0a1b2c3d"));
        assert_eq!(tag_of(&id), Some("0a1b2c3d"));
        assert_eq!(tag_of("gw-req-7"), None);
        assert_eq!(tag_of("client-id-1"), None);
        assert_eq!(tag_of("cxyz12345-1"), None);
        assert_eq!(new_instance_id().len(), 8);
        assert!(tag_of(&id_prefix(&new_instance_id())).is_some());
    }

    #[test]
    fn answers_to_requests_go_to_the_asker_and_the_rest_to_the_users_owner() {
        let gw = "gw.localhost";
        let answer = parse("<iq xmlns='jabber:component:accept' type='result' id='c0a1b2c3d-gw-req-1' from='localhost' to='gw.localhost'/>");
        assert_eq!(destination(&answer, gw), Destination::Instance("0a1b2c3d".into()));
        let message = parse("<message xmlns='jabber:component:accept' from='Alice@Localhost/phone' to='#c%irc@gw.localhost'/>");
        assert_eq!(destination(&message, gw), Destination::User("alice@localhost".into()));
        let own = parse("<iq xmlns='jabber:component:accept' type='get' id='x' from='gw.localhost' to='gw.localhost'/>");
        assert_eq!(destination(&own, gw), Destination::Here);
        let server = parse("<message xmlns='jabber:component:accept' from='localhost' to='gw.localhost'/>");
        assert_eq!(destination(&server, gw), Destination::Here);
        // A user's own iq with an id shaped like ours is still the user's.
        let get = parse("<iq xmlns='jabber:component:accept' type='get' id='c0a1b2c3d-x' from='bob@localhost/r' to='gw.localhost'/>");
        assert_eq!(destination(&get, gw), Destination::User("bob@localhost".into()));
    }
}
