//! The router: every stanza from the server goes to the handler for its address and kind,
//! and every event from a session comes back here to become a stanza for the one writer.
//!
//! The router serves the gateway's own address (registration, discovery, ad-hoc
//! commands, the users' presence) and dispatches everything about a network to that
//! network's XMPP side (`side.rs`: `irc_side.rs`, `email_side.rs`). Grouped "from XMPP"
//! (stanzas in), "from the networks" (session events in), then the life cycle.

use std::sync::Arc;

use bridge_core::model::{Event, NetworkId, RoutedAck, UserId};
use bridge_core::{Bridge, SessionEvent};
use minidom::Element;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};
use xmpp_parsers::iq::Iq;
use xmpp_parsers::jid::Jid;
use xmpp_parsers::message::Lang;
use xmpp_parsers::presence::{Presence, Type as PresenceType};
use xmpp_parsers::stanza_error::DefinedCondition;

use crate::address::{self, Address};
use crate::adhoc;
use crate::archive::{self, Archive};
use crate::admin::{self, Bans, Gauges};
use crate::config::Config;
use crate::disco;
use crate::irc_side::availability_of;
use crate::mam;
use crate::presence::{Change, OnlineUsers};
use crate::registration::{self, Request, NS_REGISTER};
use crate::requests::Requests;
use crate::roster::Roster;
use crate::side::{self, internal, network_of, refuse, stanza_to, Envelope, NetworkSide};
use crate::stanza;
use crate::store::{Store, StoreError, UserRecord};
use crate::writer::Outbox;

/// How long a registration may wait for the mail servers to accept a login.
const CREDENTIAL_CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// How long the server may take to answer a routing barrier's ping, and how many times
/// it is asked (while it is away, the pings wait in the outbox).
const ROUTED_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
const ROUTED_ATTEMPTS: u32 = 20;

/// Prefix of the ids of our own keepalive pings.
const KEEPALIVE_ID: &str = "keepalive-";

/// Text of a chat message sent to the gateway itself.
const HELP: &str = "This is xmpp-gateway. Write to alice\\40example.org@<this gateway> to send an \
email, join #channel%irc.example.org@<this gateway> as a group chat, or write to \
nick%irc.example.org@<this gateway> for an IRC private message. Register (XEP-0077) to store \
your IRC and email credentials.";

/// Routes stanzas and session events. Owned by the connection supervisor's task.
pub struct Router {
    /// Settings: access control, administrators.
    config: Arc<Config>,
    /// Our domain, the `from` of everything the gateway says as itself.
    gateway: String,
    /// Users and credentials.
    store: Store,
    /// Stanzas to the server, through the single writer.
    out: Outbox,
    /// Which user resources are online (XEP-0100 presence tracking).
    online: OnlineUsers,
    /// The XMPP side of each kind of network, asked in order which serves a network.
    sides: Vec<Box<dyn NetworkSide>>,
    /// Counter for keepalive ping ids.
    pings_sent: u64,
    /// The email bridge, asked to check credentials before they are stored.
    email: Arc<dyn Bridge>,
    /// Work done in spawned tasks (credential checks, durable writes), handed back to
    /// this task.
    tasks_tx: mpsc::Sender<RouterTask>,
    /// The other end of `tasks_tx`.
    tasks_rx: mpsc::Receiver<RouterTask>,
    /// IQs the gateway asked (disco, upload slots), waiting for their answers.
    requests: Requests,
    /// Who the administrators banned: their stanzas are refused (`forbidden`). Kept in
    /// the store, read at start.
    bans: Bans,
    /// New registrations per domain this hour (`[limits]`).
    new_registrations: registration::NewRegistrations,
    /// What was said in users' channels and private conversations (XEP-0313 queries).
    archive: Archive,
    /// This instance's part in a cluster (several instances on one domain), if any.
    cluster: Option<ClusterPart>,
    /// Puts network contacts into users' rosters (XEP-0356 where granted); takes the
    /// server's grants. `None` until [`Router::keep_rosters`].
    roster: Option<Roster>,
    /// The contacts pushed into each user being unregistered, read before their records
    /// go, taken out of the roster once the removal is durable.
    leaving: std::collections::HashMap<String, Vec<String>>,
}

/// What the router keeps as one instance of a cluster.
struct ClusterPart {
    /// Ownership in the database: which users this instance serves.
    lease: Arc<crate::cluster::lease::Lease>,
    /// Before our keepalive ids (`cluster::id_prefix`), so the answer comes back here.
    id_prefix: String,
    /// The rooms each user was last saved in (the stored bytes), to write only changes.
    saved_rooms: std::collections::HashMap<UserId, Vec<u8>>,
}

/// Where an instance saves the rooms a user is in (bridge state of the user).
const SAVED_ROOMS_KEY: &str = "cluster-rooms";

/// Work finished outside the router's task.
pub enum RouterTask {
    /// A registration whose email credentials were checked with a real login.
    Checked {
        /// The registration, waiting to be stored.
        registration: Registration,
        /// The outcome of the login.
        check: Result<(), String>,
    },
    /// A registration is durable (or failed to be written): answer and restart sessions.
    Stored {
        /// The registration that was written.
        registration: Registration,
        /// Whether the write is durable.
        result: Result<(), StoreError>,
    },
    /// An unregistration is durable (or failed to be written).
    Removed {
        /// The `<iq type='set'/>` to answer.
        stanza: Element,
        /// The user's bare JID.
        user: String,
        /// Whether the removal is durable.
        result: Result<bool, StoreError>,
    },
    /// Registrations an administrator deleted are durably gone (or failed to be).
    Deleted {
        /// The administrator's command to answer.
        stanza: Element,
        /// The command's completion.
        done: Element,
        /// Each user and whether their removal is durable.
        removed: Vec<(String, Result<bool, StoreError>)>,
    },
    /// A durable write an administrator asked for (the ban list) is done: answer.
    Answer {
        /// The command to answer.
        stanza: Element,
        /// The completion, or why the write failed.
        result: Result<Element, StoreError>,
    },
    /// The metrics endpoint asks for the current gauges.
    Gauges(tokio::sync::oneshot::Sender<Gauges>),
    /// The roster keeper asks which resources of a user are online (to offer a contact
    /// by XEP-0144 to the clients that take that).
    Resources {
        /// The user's bare JID.
        user: String,
        /// Where their full JIDs go.
        reply: tokio::sync::oneshot::Sender<Vec<String>>,
    },
}

/// A registration on its way: checked, then stored, then answered.
pub struct Registration {
    /// The `<iq type='set'/>` to answer.
    stanza: Element,
    /// The user's bare JID.
    user: String,
    /// The record to store.
    record: UserRecord,
    /// Whether the user was registered before.
    existed: bool,
    /// The result payload (an ad-hoc command's completion), if any.
    done: Option<Element>,
}

impl Router {
    /// A router for `config`, writing through `out`, with one XMPP side per kind of network.
    pub fn new(
        config: Arc<Config>,
        store: Store,
        out: Outbox,
        sides: Vec<Box<dyn NetworkSide>>,
        email: Arc<dyn Bridge>,
        requests: Requests,
        archive: Archive,
    ) -> Self {
        let gateway = config.component.jid.to_ascii_lowercase();
        let (tasks_tx, tasks_rx) = mpsc::channel(64);
        let bans = Bans::new(store.bans().unwrap_or_else(|error| {
            warn!(%error, "the ban list cannot be read; nobody is banned until it is set again");
            Vec::new()
        }));
        Router {
            bans,
            new_registrations: registration::NewRegistrations::new(config.limits.registrations_per_domain_per_hour),
            config,
            gateway,
            store,
            out,
            online: OnlineUsers::default(),
            sides,
            pings_sent: 0,
            email,
            tasks_tx,
            tasks_rx,
            requests,
            archive,
            cluster: None,
            roster: None,
            leaving: std::collections::HashMap::new(),
        }
    }

    /// Has `roster` take the servers' XEP-0356 grants and clean up after unregistered
    /// users (the sides offer it contacts).
    pub fn keep_rosters(&mut self, roster: Roster) {
        roster.ask_resources_of(self.tasks_tx.clone());
        self.roster = Some(roster);
    }

    /// Reads what was pushed into `user`'s roster, before their records are removed.
    fn note_leaving(&mut self, user: &str) {
        if let Some(roster) = &self.roster {
            let jids = roster.offered(user).into_iter().map(|contact| contact.jid).collect();
            self.leaving.insert(user.to_owned(), jids);
        }
    }

    /// Makes this router one instance of a cluster: it serves only the users `lease`
    /// gives it, and saves their rooms for a successor.
    pub fn join_cluster(&mut self, lease: Arc<crate::cluster::lease::Lease>) {
        let id_prefix = crate::cluster::id_prefix(lease.me());
        self.cluster = Some(ClusterPart { lease, id_prefix, saved_rooms: std::collections::HashMap::new() });
    }

    /// The next piece of work finished by a spawned task.
    pub async fn next_task(&mut self) -> RouterTask {
        match self.tasks_rx.recv().await {
            Some(task) => task,
            // The router holds a sender itself: the channel never closes.
            None => std::future::pending().await,
        }
    }

    /// The side that serves `network`.
    fn side(&mut self, network: &NetworkId) -> Option<&mut Box<dyn NetworkSide>> {
        self.sides.iter_mut().find(|side| side.serves(network))
    }

    // From XMPP
    // ---------------------------------------------------------------------------------

    /// A stanza the reader skipped for passing the limits (`xml_stream::StanzaLimits`):
    /// its sender is told why, from its top element (nothing of its content was kept).
    pub async fn handle_too_large(&mut self, stanza: Element, reason: &str) {
        bridge_core::counters::count(&bridge_core::counters::COUNTERS.stanzas_in);
        let text = format!("the stanza is {reason}, more than this gateway takes");
        refuse(&self.out, &stanza, DefinedCondition::PolicyViolation, &text).await;
    }

    /// A stanza the reader skipped as unreadable (`xml_stream::StreamEvent::Unreadable`):
    /// its sender is told why, when its top element's head could be read.
    pub async fn handle_unreadable(&mut self, stanza: Element, reason: &str) {
        bridge_core::counters::count(&bridge_core::counters::COUNTERS.stanzas_in);
        refuse(&self.out, &stanza, DefinedCondition::BadRequest, &format!("the stanza could not be read: {reason}")).await;
    }

    /// Handles one stanza from the server. Never fails: a bad stanza gets an error reply
    /// or a log line, and nothing else is affected.
    pub async fn handle_stanza(&mut self, stanza: Element) {
        bridge_core::counters::count(&bridge_core::counters::COUNTERS.stanzas_in);
        tracing::trace!(name = stanza.name(), from = stanza.attr("from"), to = stanza.attr("to"), kind = stanza.attr("type"), "stanza in");
        let envelope = match self.envelope(&stanza) {
            Ok(envelope) => envelope,
            Err(Some((condition, text))) => return refuse(&self.out, &stanza, condition, &text).await,
            Err(None) => return,
        };
        // A banned user going offline is still noted; anything else is refused.
        if self.bans.covers(&envelope.from) && stanza.attr("type") != Some("unavailable") && !self.is_admin(&envelope.user) {
            return refuse(&self.out, &stanza, DefinedCondition::Forbidden, "you are banned from this gateway").await;
        }
        match stanza.name() {
            "iq" => self.handle_iq(stanza, envelope).await,
            "presence" => self.handle_presence(stanza, envelope).await,
            "message" => self.handle_message(stanza, envelope).await,
            other => debug!(name = other, "ignoring an unknown top-level element"),
        }
    }

    /// Reads sender and target. `Err(None)`: drop silently (no one to answer).
    fn envelope(&self, stanza: &Element) -> Result<Envelope, Option<disco::Refusal>> {
        let Some(from) = stanza.attr("from").and_then(|f| f.parse::<Jid>().ok()) else {
            warn!(name = stanza.name(), "dropping a stanza without a valid from");
            return Err(None);
        };
        let to = stanza.attr("to").unwrap_or_default();
        let (local, domain, resource) = split_jid(to);
        if !domain.eq_ignore_ascii_case(&self.gateway) {
            warn!(%to, "dropping a stanza for another domain");
            return Err(None);
        }
        let target = address::parse_localpart(local.unwrap_or_default())
            .map_err(|e| Some((DefinedCondition::JidMalformed, e.to_string())))?;
        let user = from.to_bare().to_string();
        Ok(Envelope { from, user, target, resource: resource.map(str::to_owned) })
    }

    async fn handle_iq(&mut self, stanza: Element, envelope: Envelope) {
        let kind = stanza.attr("type").unwrap_or_default().to_owned();
        if kind == "result" || kind == "error" {
            let id = stanza.attr("id").unwrap_or_default().to_owned();
            if self.requests.resolve(stanza) {
                return;
            }
            if !id.contains(KEEPALIVE_ID) {
                debug!(%id, kind, "unexpected iq response");
            }
            return;
        }
        let iq = match Iq::try_from(stanza.clone()) {
            Ok(iq) => iq,
            Err(error) => {
                let text = format!("malformed iq: {error}");
                return refuse(&self.out, &stanza, DefinedCondition::BadRequest, &text).await;
            }
        };
        let (payload, is_get) = match &iq {
            Iq::Get { payload, .. } => (payload.clone(), true),
            Iq::Set { payload, .. } => (payload.clone(), false),
            _ => return,
        };
        let ns = payload.ns();
        let public = matches!(ns.as_str(), disco::NS_DISCO_INFO | disco::NS_DISCO_ITEMS | disco::NS_VERSION | disco::NS_PING);
        if !public && !self.domain_allowed(&envelope.from) {
            return self.refuse_forbidden(&stanza).await;
        }
        let node = payload.attr("node");
        let gateway = matches!(envelope.target, Address::Gateway);
        if is_get && node.is_none() && matches!(ns.as_str(), disco::NS_DISCO_INFO | disco::NS_DISCO_ITEMS) {
            if let Some(discovery) = self.discover(&envelope, &payload) {
                return self.answer_later(stanza, envelope, discovery);
            }
        }
        let answer: Result<Option<Element>, disco::Refusal> = match (is_get, ns.as_str()) {
            (true, disco::NS_DISCO_INFO) => disco::info(&envelope.target, node, self.disco_features(&envelope)).map(|r| Some(r.into())),
            (true, disco::NS_DISCO_ITEMS) if gateway && node == Some(disco::NS_COMMANDS) => {
                let is_admin = self.is_admin(&envelope.user);
                let items = adhoc::items(&self.gateway_jid(), is_admin);
                Ok(Some(xmpp_parsers::disco::DiscoItemsResult { node: node.map(str::to_owned), items, rsm: None }.into()))
            }
            (false, disco::NS_COMMANDS) if gateway => return self.handle_command(&payload, &envelope, &stanza).await,
            (true, disco::NS_DISCO_ITEMS) if node == Some(disco::NS_COMMANDS) && matches!(envelope.target, Address::IrcChannel { .. }) => {
                let room = stanza_to(&stanza).map(|jid| jid.to_bare().into()).unwrap_or_else(|| self.gateway_jid());
                Ok(Some(xmpp_parsers::disco::DiscoItemsResult { node: node.map(str::to_owned), items: adhoc::room_items(&room), rsm: None }.into()))
            }
            (false, disco::NS_COMMANDS) if matches!(envelope.target, Address::IrcChannel { .. }) => {
                return self.handle_room_command(&payload, &envelope, &stanza).await;
            }
            (true, disco::NS_DISCO_ITEMS) => {
                Ok(Some(disco::items(&envelope.target, node, &self.gateway, &self.config).into()))
            }
            (true, disco::NS_VERSION) if gateway => Ok(Some(disco::version().into())),
            (true, disco::NS_PING) => match network_of(&envelope.target).and_then(|n| self.sides.iter().find(|side| side.serves(&n))).and_then(|side| side.self_ping(&envelope)) {
                // XEP-0410: a client checking it is still in a room.
                Some(false) => Err((DefinedCondition::NotAcceptable, "you are not in this room under this nick".to_owned())),
                Some(true) | None => Ok(None),
            },
            (true, disco::NS_GATEWAY) if gateway => Ok(Some(disco::gateway_prompt())),
            (false, disco::NS_GATEWAY) if gateway => disco::gateway_translate(&payload, &self.gateway).map(Some),
            (_, NS_REGISTER) if gateway => return self.handle_register(is_get, &payload, &envelope, &stanza).await,
            (true, mam::NS_MAM) if self.archive.is_enabled() => Ok(Some(mam::form())),
            (false, mam::NS_MAM) => return self.handle_archive_query(&payload, envelope, &stanza),
            _ => Err((DefinedCondition::ServiceUnavailable, format!("{ns} is not served at this address"))),
        };
        match answer {
            Ok(payload) => {
                let reply = Iq::Result { from: stanza_to(&stanza), to: Some(envelope.from), id: iq.id().to_owned(), payload };
                self.out.send(reply.into()).await;
            }
            Err((condition, text)) => refuse(&self.out, &stanza, condition, &text).await,
        }
    }

    /// XEP-0313: a query of the archive of a room (to its JID) or of the user's private
    /// conversations (to the gateway, or to the contact). The page is read on the
    /// archive's thread and sent by a task of its own: results, then the `<fin/>`.
    fn handle_archive_query(&self, payload: &Element, envelope: Envelope, stanza: &Element) {
        let out = self.out.clone();
        let stanza = stanza.clone();
        let conversation = match (&envelope.target, self.archive.is_enabled()) {
            (_, false) => Err((DefinedCondition::FeatureNotImplemented, "this gateway keeps no message archive".to_owned())),
            (Address::Gateway, true) => Ok(None),
            (Address::IrcChannel { server, channel }, true) => Ok(Some(archive::Conversation::room(server, channel))),
            (Address::IrcUser { .. }, true) => {
                Ok(Some(archive::Conversation::private(&format!("{}@{}", address::format_localpart(&envelope.target), self.gateway))))
            }
            (_, true) => Err((DefinedCondition::ServiceUnavailable, "there is no archive at this address".to_owned())),
        };
        let request = conversation.and_then(|conversation| Ok((conversation, mam::parse(payload)?)));
        let (conversation, request) = match request {
            Ok((Some(_), request)) if request.with.is_some() && !matches!(envelope.target, Address::Gateway) => {
                let text = "with filters the gateway's archive of private conversations; a room's archive is not filtered";
                return self.spawn_refusal(stanza, DefinedCondition::FeatureNotImplemented, text.to_owned());
            }
            Ok((Some(conversation), request)) => (conversation, request),
            Ok((None, request)) => match &request.with {
                Some(with) => (archive::Conversation::private(with.split('/').next().unwrap_or_default()), request),
                None => (archive::Conversation::AllPrivate, request),
            },
            Err((condition, text)) => return self.spawn_refusal(stanza, condition, text),
        };
        let query = archive::Query {
            user: envelope.user.clone(),
            conversation,
            start: request.start,
            end: request.end,
            after: request.after,
            before: request.before,
            max: request.max,
        };
        let archive = self.archive.clone();
        tokio::spawn(async move {
            let page = match archive.query(query).await {
                Ok(page) => page,
                Err(error) => {
                    warn!(%error, "an archive query failed");
                    return refuse(&out, &stanza, DefinedCondition::InternalServerError, "the archive could not be read").await;
                }
            };
            // The JID queried, bare, as the client wrote it.
            let archive_jid = match split_jid(stanza.attr("to").unwrap_or_default()) {
                (Some(local), domain, _) => format!("{local}@{domain}"),
                (None, domain, _) => domain.to_owned(),
            };
            let to = envelope.from.to_string();
            let origin = mam::Origin { archive: &archive_jid, user: &envelope.user, to: &to };
            for item in mam::in_order(&page, request.flip) {
                out.send(mam::result(origin, request.queryid.as_deref(), item)).await;
            }
            let reply = Iq::Result { from: stanza_to(&stanza), to: Some(envelope.from.clone()), id: stanza.attr("id").unwrap_or_default().to_owned(), payload: Some(mam::fin(&page)) };
            out.send(reply.into()).await;
        });
    }

    /// What disco#info says of `envelope`'s target beyond its kind: the archive, and
    /// whether the user keeps the room always on.
    fn disco_features(&self, envelope: &Envelope) -> disco::Features {
        let persistent = match &envelope.target {
            Address::IrcChannel { channel, server } => self.store.user(&envelope.user).ok().flatten().is_some_and(|r| r.is_persistent(server, channel)),
            _ => false,
        };
        disco::Features { archive: self.archive.is_enabled(), persistent }
    }

    /// A discovery query the side of the target's network answers from what the
    /// user's session knows (see `NetworkSide::discover`), if it does. Users of a domain
    /// the gateway does not serve get the static answers: no session is opened for them.
    fn discover(&mut self, envelope: &Envelope, query: &Element) -> Option<side::Discovery> {
        if !self.domain_allowed(&envelope.from) {
            return None;
        }
        let network = network_of(&envelope.target)?;
        let extra = self.disco_features(envelope);
        self.side(&network)?.discover(envelope, query, extra)
    }

    /// Answers the iq `stanza` with what `answer` gives, from a task of its own: other
    /// users' stanzas go on meanwhile.
    fn answer_later(&self, stanza: Element, envelope: Envelope, answer: side::Discovery) {
        let out = self.out.clone();
        tokio::spawn(async move {
            match answer.await {
                Ok(payload) => {
                    let id = stanza.attr("id").unwrap_or_default().to_owned();
                    let reply = Iq::Result { from: stanza_to(&stanza), to: Some(envelope.from), id, payload: Some(payload) };
                    out.send(reply.into()).await;
                }
                Err((condition, text)) => refuse(&out, &stanza, condition, &text).await,
            }
        });
    }

    /// Refuses `stanza` from a task of its own (for handlers that do not await).
    fn spawn_refusal(&self, stanza: Element, condition: DefinedCondition, text: String) {
        let out = self.out.clone();
        tokio::spawn(async move { refuse(&out, &stanza, condition, &text).await });
    }

    /// XEP-0050: the settings command and the administrators' status.
    async fn handle_command(&mut self, command: &Element, envelope: &Envelope, stanza: &Element) {
        let request = match adhoc::parse(command) {
            Ok(request) => request,
            Err((condition, text)) => return refuse(&self.out, stanza, condition, &text).await,
        };
        let user = envelope.user.clone();
        if let adhoc::Request::Execute { node } | adhoc::Request::Complete { node, .. } = &request {
            if admin::COMMANDS.iter().any(|(admin_node, _)| admin_node == node) {
                if !self.is_admin(&user) {
                    let text = format!("only the gateway's administrators may run {node}");
                    return refuse(&self.out, stanza, DefinedCondition::Forbidden, &text).await;
                }
                return self.handle_admin_command(request, stanza).await;
            }
        }
        match request {
            adhoc::Request::Cancel { node, session } => self.reply(stanza, Some(adhoc::canceled(&node, &session))).await,
            adhoc::Request::Execute { node } if node == adhoc::NODE_CONFIGURE => {
                let record = match self.store.user(&user) {
                    Ok(record) => record,
                    Err(error) => {
                        let (condition, text) = internal(error);
                        return refuse(&self.out, stanza, condition, &text).await;
                    }
                };
                let query = registration::query_for(record.as_ref(), &self.config);
                let Some(form) = query.get_child("x", "jabber:x:data").cloned() else { return };
                let session = format!("{:016x}", fastrand::u64(..));
                self.reply(stanza, Some(adhoc::executing(&node, &session, form))).await;
            }
            adhoc::Request::Execute { node } if node == adhoc::NODE_CONTACTS => {
                let (Some(roster), Ok(Some(_))) = (&self.roster, self.store.user(&user)) else {
                    return refuse(&self.out, stanza, DefinedCondition::RegistrationRequired, "register with the gateway first").await;
                };
                let contacts = roster.offered(&user);
                let lines: Vec<String> = contacts
                    .iter()
                    .map(|c| format!("{} <{}> ({})", c.name.as_deref().unwrap_or("(no name)"), c.jid, c.group))
                    .collect();
                let note = match lines.len() {
                    0 => "No contacts yet: people you write to or who write to you through the gateway are added.".to_owned(),
                    1 => format!("1 contact, put in your roster again:\n{}", lines[0]),
                    n => format!("{n} contacts, put in your roster again:\n{}", lines.join("\n")),
                };
                for contact in contacts {
                    roster.offer(&user, contact).await;
                }
                let session = format!("{:016x}", fastrand::u64(..));
                self.reply(stanza, Some(adhoc::completed(&node, &session, &note, None))).await;
            }
            adhoc::Request::Complete { node, session, form } if node == adhoc::NODE_CONFIGURE => {
                let query = Element::builder("query", NS_REGISTER).append(form).build();
                let done = adhoc::completed(&node, &session, "Settings saved.", None);
                match self.register(false, &query, envelope, stanza, Some(done)).await {
                    Ok(Some(payload)) => self.reply(stanza, payload).await,
                    Ok(None) => {}
                    Err((condition, text)) => refuse(&self.out, stanza, condition, &text).await,
                }
            }
            adhoc::Request::Execute { node } | adhoc::Request::Complete { node, .. } => {
                refuse(&self.out, stanza, DefinedCondition::ItemNotFound, &format!("no command {node:?}")).await;
            }
        }
    }

    /// A room's `configure` command: whether the channel is always on for this user
    /// (kept in their registration, so only registered users have it).
    async fn handle_room_command(&mut self, command: &Element, envelope: &Envelope, stanza: &Element) {
        let Address::IrcChannel { channel, server } = &envelope.target else { return };
        let request = match adhoc::parse(command) {
            Ok(request) => request,
            Err((condition, text)) => return refuse(&self.out, stanza, condition, &text).await,
        };
        let record = match self.store.user(&envelope.user) {
            Ok(Some(record)) => record,
            Ok(None) => {
                let text = "register with the gateway first: channel settings are kept with your registration";
                return refuse(&self.out, stanza, DefinedCondition::RegistrationRequired, text).await;
            }
            Err(error) => {
                let (condition, text) = internal(error);
                return refuse(&self.out, stanza, condition, &text).await;
            }
        };
        match request {
            adhoc::Request::Cancel { node, session } => self.reply(stanza, Some(adhoc::canceled(&node, &session))).await,
            adhoc::Request::Execute { node } if node == adhoc::NODE_CONFIGURE => {
                let session = format!("{:016x}", fastrand::u64(..));
                let form = adhoc::room_form(record.is_persistent(server, channel));
                self.reply(stanza, Some(adhoc::executing(&node, &session, form))).await;
            }
            adhoc::Request::Complete { node, session, form } if node == adhoc::NODE_CONFIGURE => {
                let persistent = match adhoc::room_persistent(&form) {
                    Ok(persistent) => persistent,
                    Err((condition, text)) => return refuse(&self.out, stanza, condition, &text).await,
                };
                let write = self.store.set_persistent(&envelope.user, server, channel, persistent);
                let user = envelope.user_id();
                let network = NetworkId::Irc { server: server.clone() };
                if let Some(side) = self.side(&network) {
                    side.persistence_changed(&user, &network, channel, persistent).await;
                }
                let note = if persistent { "The channel is always on." } else { "The channel is no longer always on." };
                let (tasks, stanza, done) = (self.tasks_tx.clone(), stanza.clone(), adhoc::completed(&node, &session, note, None));
                tokio::spawn(async move {
                    let result = write.await.map(|()| done);
                    let _ = tasks.send(RouterTask::Answer { stanza, result }).await;
                });
            }
            adhoc::Request::Execute { node } | adhoc::Request::Complete { node, .. } => {
                refuse(&self.out, stanza, DefinedCondition::ItemNotFound, &format!("no command {node:?} on a room")).await;
            }
        }
    }

    /// An administrators' command (`admin`): a form to fill first where it takes one,
    /// else done at once. The caller checked that the sender is an administrator.
    async fn handle_admin_command(&mut self, request: adhoc::Request, stanza: &Element) {
        let (node, submitted) = match request {
            adhoc::Request::Execute { node } => (node, None),
            adhoc::Request::Complete { node, form, .. } => (node, Some(form)),
            adhoc::Request::Cancel { .. } => return,
        };
        let session = format!("{:016x}", fastrand::u64(..));
        let done = |note: &str, form: Option<Element>| adhoc::completed(&node, &session, note, form);
        let ask = |form: Element| adhoc::executing(&node, &session, form);
        let bad = |text: String| (DefinedCondition::BadRequest, text);
        let answer: Result<Element, disco::Refusal> = match (node.as_str(), submitted) {
            (admin::NODE_STATUS, _) => Ok(done("Gateway status", Some(admin::status_form(self.gauges())))),
            (admin::NODE_REGISTERED_USERS, _) => match self.store.user_jids() {
                Ok(users) => {
                    let note = format!("{} registered users", users.len());
                    Ok(done(&note, Some(admin::jids_result("Registered users", "registereduserjids", users, None))))
                }
                Err(error) => Err(internal(error)),
            },
            (admin::NODE_ONLINE_USERS, _) => {
                let users = self.online_users();
                let details = users
                    .iter()
                    .map(|user| {
                        let id = UserId(user.clone());
                        let open: Vec<String> = self.sides.iter().flat_map(|side| side.user_activity(&id)).collect();
                        format!("{user}: {}", if open.is_empty() { "nothing open".to_owned() } else { open.join("; ") })
                    })
                    .collect();
                let note = format!("{} online users", users.len());
                Ok(done(&note, Some(admin::jids_result("Online users", "onlineuserjids", users.into_iter().collect(), Some(details)))))
            }
            (admin::NODE_END_SESSIONS, None) => Ok(ask(admin::jids_request("Disconnect users", admin::FIELD_JIDS, "Users to disconnect", Vec::new()))),
            (admin::NODE_END_SESSIONS, Some(form)) => match admin::jids(&form, admin::FIELD_JIDS) {
                Ok(users) => {
                    for user in &users {
                        self.disconnect_user(user, "disconnected by the gateway's administrator").await;
                    }
                    Ok(done(&format!("Disconnected {} users", users.len()), None))
                }
                Err(text) => Err(bad(text)),
            },
            (admin::NODE_DELETE_USERS, None) => {
                Ok(ask(admin::jids_request("Delete registrations", admin::FIELD_JIDS, "Users whose registration to delete", Vec::new())))
            }
            (admin::NODE_DELETE_USERS, Some(form)) => match admin::jids(&form, admin::FIELD_JIDS) {
                Ok(users) => {
                    for user in &users {
                        self.note_leaving(user);
                    }
                    let removals: Vec<_> = users.iter().map(|user| (user.clone(), self.store.remove_user(user))).collect();
                    let (tasks, stanza, done) = (self.tasks_tx.clone(), stanza.clone(), done("Registrations deleted", None));
                    tokio::spawn(async move {
                        let mut removed = Vec::new();
                        for (user, removal) in removals {
                            removed.push((user, removal.await));
                        }
                        let _ = tasks.send(RouterTask::Deleted { stanza, done, removed }).await;
                    });
                    return;
                }
                Err(text) => Err(bad(text)),
            },
            (admin::NODE_BANS, None) => {
                let current = self.bans.entries().cloned().collect();
                Ok(ask(admin::jids_request("Banned JIDs and domains", admin::FIELD_BANS, "Bare JIDs and domains, one per line", current)))
            }
            (admin::NODE_BANS, Some(form)) => match admin::jids(&form, admin::FIELD_BANS) {
                Ok(entries) => {
                    self.bans = Bans::new(entries.clone());
                    // Banned users online lose what they have open at once.
                    let banned: Vec<String> = self
                        .online_users()
                        .into_iter()
                        .filter(|bare| bare.parse::<Jid>().is_ok_and(|jid| self.bans.covers(&jid)) && !self.is_admin(bare))
                        .collect();
                    for user in banned {
                        self.disconnect_user(&user, "banned by the gateway's administrator").await;
                    }
                    let write = self.store.put_bans(&entries);
                    let note = format!("{} JIDs and domains banned", entries.len());
                    let (tasks, stanza, done) = (self.tasks_tx.clone(), stanza.clone(), done(&note, None));
                    tokio::spawn(async move {
                        let result = write.await.map(|()| done);
                        let _ = tasks.send(RouterTask::Answer { stanza, result }).await;
                    });
                    return;
                }
                Err(text) => Err(bad(text)),
            },
            (admin::NODE_ANNOUNCE, None) => Ok(ask(admin::announce_request())),
            (admin::NODE_ANNOUNCE, Some(form)) => {
                let subject = admin::values(&form, admin::FIELD_SUBJECT).join(" ");
                let body = admin::values(&form, admin::FIELD_BODY).join("\n");
                if body.trim().is_empty() {
                    Err(bad(format!("field {}: the announcement is empty", admin::FIELD_BODY)))
                } else {
                    let users = self.online_users();
                    for user in &users {
                        self.send_announcement(user, &subject, &body).await;
                    }
                    Ok(done(&format!("Sent to {} online users", users.len()), None))
                }
            }
            _ => Err((DefinedCondition::ItemNotFound, format!("no command {node:?}"))),
        };
        match answer {
            Ok(payload) => self.reply(stanza, Some(payload)).await,
            Err((condition, text)) => refuse(&self.out, stanza, condition, &text).await,
        }
    }

    /// The users online: those who sent the gateway their presence, and those with a
    /// live session (a room joined, a mailbox watched).
    fn online_users(&self) -> std::collections::BTreeSet<String> {
        let mut users: std::collections::BTreeSet<String> = self.online.all().map(|(bare, _)| bare.to_owned()).collect();
        users.extend(self.sides.iter().flat_map(|side| side.active_users()).map(|user| user.0));
        users
    }

    /// What the status command and the metrics show besides the counters.
    fn gauges(&self) -> Gauges {
        let sessions_where = |email: bool| -> usize {
            self.sides.iter().filter(|side| side.serves(&NetworkId::Email) == email).map(|side| side.sessions()).sum()
        };
        Gauges {
            registered: self.store.user_count(),
            online: self.online_users().len(),
            irc_connections: sessions_where(false),
            mail_sessions: sessions_where(true),
            rooms: self.sides.iter().map(|side| side.rooms()).sum(),
            rss_kib: admin::rss_kib(),
        }
    }

    /// Closes what `user` has open on every network, telling them `reason`.
    async fn disconnect_user(&mut self, user: &str, reason: &str) {
        info!(%user, %reason, "disconnecting a user");
        let id = UserId(user.to_owned());
        for side in &mut self.sides {
            side.disconnect_user(&id, reason).await;
        }
    }

    /// An administrator's announcement to `user` (all their resources): a headline.
    async fn send_announcement(&self, user: &str, subject: &str, body: &str) {
        let (Ok(to), Ok(from)) = (user.parse::<Jid>(), self.gateway.parse::<Jid>()) else { return };
        let mut message = xmpp_parsers::message::Message::new_with_type(xmpp_parsers::message::MessageType::Headline, Some(to));
        message.from = Some(from);
        message.bodies.insert(Lang::new(), body.to_owned());
        if !subject.trim().is_empty() {
            message.subjects.insert(Lang::new(), subject.to_owned());
        }
        self.out.send(message.into()).await;
    }

    /// Whether `user` (a bare JID) is one of the configured administrators.
    fn is_admin(&self, user: &str) -> bool {
        self.config.registration.admins.iter().any(|a| a.eq_ignore_ascii_case(user))
    }

    fn gateway_jid(&self) -> Jid {
        self.gateway.parse().unwrap_or_else(|_| Jid::new("invalid").expect("a literal domain"))
    }

    /// XEP-0077: answers `stanza` itself, at once or after a credential check.
    async fn handle_register(&mut self, is_get: bool, query: &Element, envelope: &Envelope, stanza: &Element) {
        match self.register(is_get, query, envelope, stanza, None).await {
            Ok(Some(payload)) => self.reply(stanza, payload).await,
            Ok(None) => {}
            Err((condition, text)) => refuse(&self.out, stanza, condition, &text).await,
        }
    }

    /// `Ok(Some(payload))`: answer now; `Ok(None)`: answered later, once the registration
    /// is checked and durable. A stored registration is answered with `done` as the
    /// result payload (an ad-hoc command's completion), or an empty result.
    ///
    /// Nothing here waits: the mail servers' login check and the store's fsync run in
    /// spawned tasks and come back as `RouterTask`s, so other users' stanzas flow on.
    async fn register(
        &mut self,
        is_get: bool,
        query: &Element,
        envelope: &Envelope,
        stanza: &Element,
        done: Option<Element>,
    ) -> Result<Option<Option<Element>>, disco::Refusal> {
        let user = envelope.user.as_str();
        let existing = self.store.user(user).map_err(internal)?;
        if is_get {
            return Ok(Some(Some(registration::query_for(existing.as_ref(), &self.config))));
        }
        let request = registration::parse_request(query, &self.config).map_err(|e| (DefinedCondition::NotAcceptable, e.to_string()))?;
        let values = match request {
            Request::Remove => {
                if existing.is_none() {
                    return Err((DefinedCondition::RegistrationRequired, "you are not registered".into()));
                }
                self.note_leaving(user);
                let removal = self.store.remove_user(user);
                let (tasks, stanza, user) = (self.tasks_tx.clone(), stanza.clone(), user.to_owned());
                tokio::spawn(async move {
                    let result = removal.await;
                    let _ = tasks.send(RouterTask::Removed { stanza, user, result }).await;
                });
                return Ok(None);
            }
            Request::Submit(values) => values,
        };
        let record = registration::apply(existing.as_ref(), &values, &self.config)
            .map_err(|e| (DefinedCondition::NotAcceptable, e.to_string()))?;
        let domain = envelope.from.domain().as_str();
        if existing.is_none() && !self.is_admin(user) && !self.new_registrations.admit(domain, std::time::Instant::now()) {
            let text = format!(
                "{domain} had its {} new registrations of this hour (limits.registrations_per_domain_per_hour); try again later",
                self.new_registrations.per_hour()
            );
            return Err((DefinedCondition::ResourceConstraint, text));
        }
        let email_changed = record.email.is_some() && record.email != existing.as_ref().and_then(|r| r.email.clone());
        let registration = Registration { stanza: stanza.clone(), user: user.to_owned(), record, existed: existing.is_some(), done };
        if !email_changed {
            self.store_registration(registration);
            return Ok(None);
        }
        // A real IMAP and SMTP login first.
        let credentials = side::credentials_for(Some(&registration.record), &NetworkId::Email)
            .map_err(|e| (DefinedCondition::NotAcceptable, e))?;
        let check = self.email.check_credentials(&envelope.user_id(), &credentials);
        let tasks = self.tasks_tx.clone();
        tokio::spawn(async move {
            let check = match tokio::time::timeout(CREDENTIAL_CHECK_TIMEOUT, check).await {
                Ok(check) => check,
                Err(_) => Err(format!("no answer from the mail servers within {CREDENTIAL_CHECK_TIMEOUT:?}")),
            };
            let _ = tasks.send(RouterTask::Checked { registration, check }).await;
        });
        Ok(None)
    }

    /// Writes a checked registration; it is answered once durable (`RouterTask::Stored`).
    fn store_registration(&mut self, registration: Registration) {
        let write = self.store.put_user(&registration.user, &registration.record);
        let tasks = self.tasks_tx.clone();
        tokio::spawn(async move {
            let result = write.await;
            let _ = tasks.send(RouterTask::Stored { registration, result }).await;
        });
    }

    /// Finishes work handed back by a spawned task.
    pub async fn handle_task(&mut self, task: RouterTask) {
        match task {
            RouterTask::Checked { registration, check: Ok(()) } => self.store_registration(registration),
            RouterTask::Checked { registration, check: Err(reason) } => {
                info!(user = %registration.user, "email credentials refused");
                let text = format!("field email_password: the mail server refused the login: {reason}");
                refuse(&self.out, &registration.stanza, DefinedCondition::NotAcceptable, &text).await;
            }
            RouterTask::Stored { registration, result: Err(error) } => {
                let (condition, text) = internal(error);
                refuse(&self.out, &registration.stanza, condition, &text).await;
            }
            RouterTask::Stored { registration: Registration { stanza, user, record, existed, done }, result: Ok(()) } => {
                self.reply(&stanza, done).await;
                let user_id = UserId(user.clone());
                // New credentials: sessions restart with them.
                for side in &mut self.sides {
                    side.registration_changed(&user_id, Some(&record)).await;
                }
                if existed {
                    info!(%user, "registration updated");
                } else {
                    info!(%user, "registered");
                    // XEP-0100 §4.1.1: the gateway asks for the user's presence.
                    self.send_presence(Presence::subscribe(), &user).await;
                }
            }
            RouterTask::Removed { stanza, result: Err(error), .. } => {
                let (condition, text) = internal(error);
                refuse(&self.out, &stanza, condition, &text).await;
            }
            RouterTask::Removed { stanza, user, result: Ok(existed) } => {
                if !existed {
                    return refuse(&self.out, &stanza, DefinedCondition::RegistrationRequired, "you are not registered").await;
                }
                self.reply(&stanza, None).await;
                self.unregistered(&user).await;
            }
            RouterTask::Deleted { stanza, done, removed } => {
                let mut failed = Vec::new();
                for (user, result) in removed {
                    match result {
                        Ok(true) => self.unregistered(&user).await,
                        Ok(false) => {}
                        Err(error) => failed.push(format!("{user}: {error}")),
                    }
                }
                if failed.is_empty() {
                    self.reply(&stanza, Some(done)).await;
                } else {
                    let text = format!("not deleted: {}", failed.join("; "));
                    refuse(&self.out, &stanza, DefinedCondition::InternalServerError, &text).await;
                }
            }
            RouterTask::Answer { stanza, result: Ok(done) } => self.reply(&stanza, Some(done)).await,
            RouterTask::Answer { stanza, result: Err(error) } => {
                let (condition, text) = internal(error);
                refuse(&self.out, &stanza, condition, &text).await;
            }
            RouterTask::Gauges(answer) => {
                let _ = answer.send(self.gauges());
            }
            RouterTask::Resources { user, reply } => {
                let full = self.online.resources_of(&user).into_iter().map(|resource| format!("{user}/{resource}")).collect();
                let _ = reply.send(full);
            }
        }
    }

    /// `user`'s registration is durably gone: sessions end, and the gateway leaves their
    /// roster.
    async fn unregistered(&mut self, user: &str) {
        info!(%user, "unregistered");
        self.archive.delete_user(user).await;
        let user_id = UserId(user.to_owned());
        for side in &mut self.sides {
            side.registration_changed(&user_id, None).await;
        }
        for type_ in [PresenceType::Unsubscribe, PresenceType::Unsubscribed, PresenceType::Unavailable] {
            self.send_presence(Presence::new(type_), user).await;
        }
        if let (Some(roster), Some(jids)) = (&self.roster, self.leaving.remove(user)) {
            roster.remove(user, jids).await;
        }
    }

    /// Where the metrics endpoint asks for gauges ([`RouterTask::Gauges`]).
    pub fn tasks(&self) -> mpsc::Sender<RouterTask> {
        self.tasks_tx.clone()
    }

    /// A presence to the gateway (the user's availability, subscriptions) or to a network
    /// address (handed to that network's side).
    async fn handle_presence(&mut self, stanza: Element, envelope: Envelope) {
        let kind = stanza.attr("type").unwrap_or("available");
        if let Some(network) = network_of(&envelope.target) {
            if !self.domain_allowed(&envelope.from) {
                if kind == "available" {
                    self.refuse_forbidden(&stanza).await;
                }
                return;
            }
            let Some(side) = self.side(&network) else {
                return debug!(?network, "presence to a network no side serves");
            };
            return side.presence(&stanza, &envelope, kind).await;
        }
        let user = envelope.user.as_str();
        let registered = match self.store.user(user) {
            Ok(record) => record.is_some(),
            Err(error) => {
                warn!(%user, %error, "cannot read the store");
                false
            }
        };
        match kind {
            "subscribe" if registered && self.domain_allowed(&envelope.from) => {
                self.send_presence(Presence::subscribed(), user).await;
                self.send_presence(Presence::available(), user).await;
            }
            "subscribe" | "unsubscribe" => self.send_presence(Presence::new(PresenceType::Unsubscribed), user).await,
            "probe" if registered => self.send_presence(Presence::available(), envelope.from.as_str()).await,
            "available" => {
                let resource = envelope.from.resource().map(|r| r.as_str()).unwrap_or_default();
                if self.online.available(user, resource) == Change::CameOnline {
                    info!(%user, "user online");
                }
                if let Some((availability, status)) = availability_of(&stanza) {
                    let user_id = envelope.user_id();
                    for side in &mut self.sides {
                        side.availability(&user_id, availability, status.clone());
                    }
                }
                if registered {
                    self.send_presence(Presence::available(), envelope.from.as_str()).await;
                }
            }
            // From the bare JID, unavailable is the server's answer to a probe or to a
            // subscription it holds back, not a resource leaving: resources leave from
            // their full JIDs.
            "unavailable" if envelope.from.resource().is_none() => {
                debug!(%user, "unavailable from the bare JID ignored");
            }
            "unavailable" => {
                let resource = envelope.from.resource().map(|r| r.as_str());
                let last = self.online.unavailable(user, resource) == Change::WentOffline;
                if last {
                    info!(%user, "user offline; ending their IRC sessions");
                }
                let (user_id, full) = (envelope.user_id(), envelope.from.to_string());
                for side in &mut self.sides {
                    side.resource_offline(&user_id, &full, last).await;
                }
            }
            _ => debug!(%user, kind, "presence to the gateway ignored"),
        }
    }

    async fn handle_message(&mut self, stanza: Element, mut envelope: Envelope) {
        // The server saying what it grants the gateway (XEP-0356), on each connection.
        if self.roster.as_ref().is_some_and(|roster| roster.advertised(&stanza)) {
            return;
        }
        let kind = stanza.attr("type").unwrap_or("normal");
        if kind == "error" {
            return debug!(user = %envelope.user, "error message ignored");
        }
        // XEP-0033: one message to several email addresses is one mail to all of them.
        let multicast = matches!(envelope.target, Address::Gateway | Address::Email { .. } | Address::EmailGroup { .. });
        if let Some(addresses) = stanza.get_child("addresses", crate::multicast::NS_ADDRESS).filter(|_| multicast) {
            match crate::multicast::email_target(&envelope.target, addresses, &self.gateway) {
                Ok(target) => envelope.target = target,
                Err((condition, text)) => return refuse(&self.out, &stanza, condition, &text).await,
            }
        }
        let Some(network) = network_of(&envelope.target) else {
            if stanza.get_child("body", crate::connection::NS_COMPONENT).is_some() {
                let mut reply = xmpp_parsers::message::Message::chat(Some(envelope.from.clone()));
                reply.from = stanza_to(&stanza);
                reply.bodies.insert(Lang::from(stanza::LANG), HELP.to_owned());
                self.out.send(reply.into()).await;
            }
            return;
        };
        if !self.domain_allowed(&envelope.from) {
            return self.refuse_forbidden(&stanza).await;
        }
        match self.side(&network) {
            Some(side) => side.message(&stanza, &envelope, kind).await,
            None => refuse(&self.out, &stanza, DefinedCondition::ServiceUnavailable, "this gateway does not serve that network").await,
        }
    }

    // ---------------------------------------------------------------------------------
    // From the networks
    // ---------------------------------------------------------------------------------

    /// Hands a session event to the side of its network, which makes stanzas of it.
    pub async fn handle_event(&mut self, event: SessionEvent) {
        let SessionEvent { key, event } = event;
        if let Event::WhenRouted(ack) = event {
            return self.when_routed(ack);
        }
        match self.side(&key.network) {
            Some(side) => side.event(key, event).await,
            None => warn!(network = ?key.network, "an event from a network no side serves"),
        }
    }

    /// Has `ack` done once the server has routed every stanza queued so far (all that a
    /// session's earlier events became is queued already). A stream is processed in
    /// order, so the server's answer to a ping the gateway sends itself through it comes
    /// only after it routed everything written before the ping. Asked again while the
    /// server is away, never answered in its place.
    fn when_routed(&self, ack: RoutedAck) {
        let (out, requests, gateway) = (self.out.clone(), self.requests.clone(), self.gateway_jid());
        tokio::spawn(async move {
            for _ in 0..ROUTED_ATTEMPTS {
                let ping = Iq::from_get("", xmpp_parsers::ping::Ping).with_to(gateway.clone()).with_from(gateway.clone());
                if requests.ask(&out, ping, ROUTED_TIMEOUT).await.is_ok() {
                    return ack.done();
                }
            }
            warn!("the XMPP server never confirmed routing; what waited on it will be delivered again");
        });
    }

    // ---------------------------------------------------------------------------------
    // Life cycle
    // ---------------------------------------------------------------------------------

    /// A new connection is up: ask every registered user's presence again, since what we
    /// knew may be stale, and start the sessions that run while users are offline.
    pub async fn on_connected(&mut self) {
        self.online.clear();
        let users = match self.store.user_jids() {
            Ok(users) => users,
            Err(error) => return warn!(%error, "cannot list registered users to probe"),
        };
        // In a cluster, only our users with sessions that run while they are offline
        // (always-on channels, a mailbox), taking those nobody serves yet; the others are
        // taken by whichever instance gets their next stanza, which spreads them.
        let users = match &self.cluster {
            None => users,
            Some(cluster) => {
                let with_sessions: Vec<String> = users
                    .into_iter()
                    .filter(|user| self.store.user(user).ok().flatten().is_some_and(|r| r.email.is_some() || !r.persistent_channels.is_empty()))
                    .collect();
                match cluster.lease.claim(&with_sessions).await {
                    Ok(ours) => ours,
                    Err(error) => {
                        warn!(%error, "cannot tell which users are this instance's; each starts with their next stanza");
                        Vec::new()
                    }
                }
            }
        };
        for user in users {
            self.send_presence(Presence::probe(), &user).await;
            let Ok(Some(record)) = self.store.user(&user) else { continue };
            let user_id = UserId(user);
            for side in &mut self.sides {
                side.connected(&user_id, &record).await;
            }
        }
    }

    // ---------------------------------------------------------------------------------
    // Several instances (cluster)
    // ---------------------------------------------------------------------------------

    /// Work from the cluster: a stanza handed over by another instance (or one whose
    /// owner was looked up), users taken over or taken away, the rooms to save.
    pub async fn handle_cluster_work(&mut self, work: crate::cluster::Work) {
        use crate::cluster::Work;
        match work {
            Work::Stanza(stanza) => self.handle_stanza(stanza).await,
            Work::Adopt(users) => self.adopt(users).await,
            Work::Release(users) => self.release(users).await,
            Work::SaveRooms => self.save_rooms(),
            Work::Leave => {}
        }
    }

    /// Users taken over from a dead instance: their stored state is read again (the dead
    /// one wrote it), the rooms it saved are joined again, their always-on channels and
    /// presence come back as at a start.
    async fn adopt(&mut self, users: Vec<String>) {
        info!(users = users.len(), "starting the sessions of users taken over");
        for user in users {
            if let Err(error) = self.store.reload_user(&user).await {
                warn!(%user, %error, "cannot read a user taken over again; using what this instance has");
            }
            let user_id = UserId(user.clone());
            let saved: Vec<side::SavedRoom> = match bridge_core::BridgeStore::load(&self.store, &user_id, SAVED_ROOMS_KEY) {
                Ok(Some(bytes)) => serde_json::from_slice(&bytes).unwrap_or_default(),
                _ => Vec::new(),
            };
            debug!(%user, rooms = saved.len(), "restoring the rooms of a user taken over");
            for side in &mut self.sides {
                side.restore_rooms(&user_id, saved.clone()).await;
            }
            if let Ok(Some(record)) = self.store.user(&user) {
                for side in &mut self.sides {
                    side.connected(&user_id, &record).await;
                }
            }
            if let Some(cluster) = &mut self.cluster {
                cluster.saved_rooms.remove(&user_id);
            }
            // Also for what went to IRC users and mail contacts: nobody can say which
            // stanzas died with the last instance (each room says so too).
            let notice = bridge_core::model::Message { peer: bridge_core::model::Peer::Server, sender: None, kind: bridge_core::model::MessageKind::Notice, body: TAKEOVER_NOTICE.to_owned(), subject: None, thread: None, id: None, delay: None, links: Vec::new() };
            if let Some(stanza) = side::chat_from(&self.gateway, &user, notice) {
                self.out.send(stanza).await;
            }
            self.send_presence(Presence::probe(), &user).await;
        }
    }

    /// Users now served by another instance: their sessions end here, quietly.
    async fn release(&mut self, users: Vec<String>) {
        info!(users = users.len(), "ending the sessions of users another instance serves now");
        for user in users {
            let user_id = UserId(user.clone());
            for side in &mut self.sides {
                side.release_user(&user_id).await;
            }
            self.online.unavailable(&user, None);
            if let Some(cluster) = &mut self.cluster {
                // Not deleted: the new owner writes them from now on.
                cluster.saved_rooms.remove(&user_id);
            }
        }
    }

    /// Saves the rooms each user is in, where they changed, for whoever takes the users
    /// over if this instance dies (not awaited: a lost save costs the latest joins only).
    fn save_rooms(&mut self) {
        let Some(cluster) = &mut self.cluster else { return };
        let mut rooms: std::collections::HashMap<UserId, Vec<side::SavedRoom>> = std::collections::HashMap::new();
        for side in &self.sides {
            for (user, list) in side.saved_rooms() {
                rooms.entry(user).or_default().extend(list);
            }
        }
        // Sorted, so that the same rooms give the same bytes and are not written again.
        let now: std::collections::HashMap<UserId, Vec<u8>> = rooms
            .into_iter()
            .map(|(user, mut list)| {
                list.sort_by(|a, b| (&a.network, &a.channel).cmp(&(&b.network, &b.channel)));
                (user, serde_json::to_vec(&list).unwrap_or_default())
            })
            .collect();
        for (user, bytes) in &now {
            if cluster.saved_rooms.get(user) != Some(bytes) {
                debug!(user = %user.0, "saving the rooms of a user for a successor");
                drop(bridge_core::BridgeStore::save(&self.store, user, SAVED_ROOMS_KEY, bytes));
            }
        }
        for user in cluster.saved_rooms.keys().filter(|user| !now.contains_key(*user)) {
            drop(bridge_core::BridgeStore::delete(&self.store, user, SAVED_ROOMS_KEY));
        }
        cluster.saved_rooms = now;
    }

    /// The gateway stops: tell online users, end sessions, make the store durable.
    pub async fn on_shutdown(&mut self) {
        let online: Vec<String> = self.online.all().map(|(bare, resource)| format!("{bare}/{resource}")).collect();
        for full in online {
            self.send_presence(Presence::unavailable(), &full).await;
        }
        for side in &mut self.sides {
            side.shutdown("the gateway is shutting down");
        }
        if let Err(error) = self.store.flush().await {
            warn!(%error, "flushing the store at shutdown");
        }
        info!("shut down");
    }

    /// Checks that the server still answers: a ping to ourselves goes through the server
    /// and back.
    pub async fn send_keepalive_ping(&mut self) {
        self.pings_sent += 1;
        let Ok(gateway) = self.gateway.parse::<Jid>() else { return };
        let prefix = self.cluster.as_ref().map_or("", |cluster| cluster.id_prefix.as_str());
        let ping = Iq::from_get(format!("{prefix}{KEEPALIVE_ID}{}", self.pings_sent), xmpp_parsers::ping::Ping)
            .with_to(gateway.clone())
            .with_from(gateway);
        self.out.send(ping.into()).await;
    }

    // ---------------------------------------------------------------------------------
    // Helpers
    // ---------------------------------------------------------------------------------

    fn domain_allowed(&self, from: &Jid) -> bool {
        self.config.domain_allowed(from.domain().as_str())
    }

    /// The result of an iq, with an optional payload.
    async fn reply(&self, stanza: &Element, payload: Option<Element>) {
        let (Some(id), Some(to)) = (stanza.attr("id"), stanza.attr("from").and_then(|f| f.parse::<Jid>().ok())) else {
            return;
        };
        let reply = Iq::Result { from: stanza_to(stanza), to: Some(to), id: id.to_owned(), payload };
        self.out.send(reply.into()).await;
    }

    async fn refuse_forbidden(&self, stanza: &Element) {
        let text = "users of your server may not use this gateway (registration.allowed_domains)";
        refuse(&self.out, stanza, DefinedCondition::Forbidden, text).await;
    }

    async fn send_presence(&self, presence: Presence, to: &str) {
        let (Ok(to), Ok(from)) = (to.parse::<Jid>(), self.gateway.parse::<Jid>()) else { return };
        self.out.send(presence.with_to(to).with_from(from).into()).await;
    }
}

/// What the gateway tells a user it took over from another instance (`adopt`).
pub const TAKEOVER_NOTICE: &str = "The gateway instance that served you stopped and this one took over: \
    messages you sent through the gateway in the seconds before may not have been delivered; check your last ones.";

/// Whether `stanza` answers one of our keepalive pings.
pub fn is_keepalive_answer(stanza: &Element) -> bool {
    stanza.name() == "iq" && matches!(stanza.attr("type"), Some("result" | "error")) && stanza.attr("id").is_some_and(|id| id.contains(KEEPALIVE_ID))
}

/// Splits a JID string into (localpart, domain, resource) without normalising, so that
/// channel and nick case survive.
pub fn split_jid(jid: &str) -> (Option<&str>, &str, Option<&str>) {
    let (bare, resource) = match jid.split_once('/') {
        Some((bare, resource)) => (bare, Some(resource)),
        None => (jid, None),
    };
    match bare.rsplit_once('@') {
        Some((local, domain)) => (Some(local), domain, resource),
        None => (None, bare, resource),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::email_side::EmailSide;
    use crate::irc_side::{IrcPolicy, IrcSide};
    use crate::side::testing::{sessions, store, Recorder};
    use proptest::prelude::*;

    /// A router with both sides, sessions that record, a user `user@example.test`
    /// registered for IRC and email, and the outbox's receiving end.
    fn router() -> (Router, crate::writer::TestReceiver, tempfile::TempDir, Arc<Recorder>) {
        router_with("")
    }

    /// [`router`], with `registration` settings added (a line each).
    fn router_with(registration: &str) -> (Router, crate::writer::TestReceiver, tempfile::TempDir, Arc<Recorder>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gw.toml");
        std::fs::write(
            &path,
            format!(
                "[component]\njid = \"gw.localhost\"\nsecret = \"s\"\n[storage]\npath = \"/tmp/x\"\n\
                 [registration]\nadmins = [\"admin@example.test\"]\n{registration}[irc.networks.\"irc.one\"]\n\
                 [email.providers.\"example.test\"]\nimap = \"127.0.0.1:1143\"\nsmtp = \"127.0.0.1:2525\"\n"
            ),
        )
        .unwrap();
        let config = Arc::new(Config::load_with_env(&path, std::iter::empty()).unwrap());
        let (outbox, out) = Outbox::for_tests();
        let (store, tmp) = store();
        let recorder = Arc::new(Recorder::default());
        let archive = Archive::start(store.archive().unwrap(), archive::Retention { max_age: None, max_count: None }).unwrap();
        let sides: Vec<Box<dyn NetworkSide>> = vec![
            Box::new(IrcSide::new("gw.localhost", outbox.clone(), store.clone(), sessions(&recorder), IrcPolicy::of(&config), archive.clone())),
            Box::new(EmailSide::new("gw.localhost", outbox.clone(), store.clone(), sessions(&recorder), None, 1024)),
        ];
        let record = UserRecord { irc: Some(crate::store::IrcAccount::new("user")), ..UserRecord::default() };
        futures::executor::block_on(store.put_user("user@example.test", &record)).unwrap();
        let router = Router::new(config, store, outbox, sides, recorder.clone(), Requests::default(), archive);
        drop(dir);
        (router, out, tmp, recorder)
    }

    /// Stanzas a user's server may route to the gateway, built from parts that reach
    /// every path of the router: addresses of every kind, types, payloads (forms,
    /// commands, MUC joins, bodies with what XML forbids escaped as references).
    fn any_stanza() -> impl Strategy<Value = String> {
        let to = prop::sample::select(vec![
            "gw.localhost", "gw.localhost/x", "#c%irc.one@gw.localhost/nick", "#c%irc.one@gw.localhost", "bob%irc.one@gw.localhost",
            "irc.one@gw.localhost", "bob\\40example.test@gw.localhost", "#c%10.0.0.1@gw.localhost/n", "%%@gw.localhost", "@gw.localhost",
            "other.example", "#c%irc.one@gw.localhost/",
        ]);
        let from = prop::sample::select(vec!["user@example.test/r", "admin@example.test/r", "stranger@else.example/r", "example.test"]);
        let name = prop::sample::select(vec!["message", "presence", "iq"]);
        let kind = prop::sample::select(vec!["", "get", "set", "result", "error", "chat", "groupchat", "unavailable", "subscribe", "headline"]);
        let text = "[ -~\u{80}-\u{2FF}]{0,40}";
        let payload = prop::sample::select(vec![
            String::new(),
            "<body>{t}</body>".into(),
            "<subject>{t}</subject>".into(),
            "<x xmlns='http://jabber.org/protocol/muc'><password>{t}</password></x>".into(),
            "<query xmlns='jabber:iq:register'/>".into(),
            "<query xmlns='jabber:iq:register'><remove/></query>".into(),
            "<query xmlns='jabber:iq:register'><x xmlns='jabber:x:data' type='submit'><field var='irc_nick'><value>{t}</value></field></x></query>".into(),
            "<query xmlns='http://jabber.org/protocol/disco#info' node='{t}'/>".into(),
            "<query xmlns='http://jabber.org/protocol/disco#items' node='http://jabber.org/protocol/commands'/>".into(),
            "<command xmlns='http://jabber.org/protocol/commands' node='{t}' action='execute'/>".into(),
            "<command xmlns='http://jabber.org/protocol/commands' node='status'/>".into(),
            "<command xmlns='http://jabber.org/protocol/commands' node='http://jabber.org/protocol/admin#edit-blacklist' sessionid='s'>\
             <x xmlns='jabber:x:data' type='submit'><field var='blacklistjids'><value>{t}</value></field></x></command>".into(),
            "<command xmlns='http://jabber.org/protocol/commands' node='http://jabber.org/protocol/admin#announce' sessionid='s'>\
             <x xmlns='jabber:x:data' type='submit'><field var='body'><value>{t}</value></field></x></command>".into(),
            "<query xmlns='jabber:iq:gateway'><prompt>{t}</prompt></query>".into(),
            "<ping xmlns='urn:xmpp:ping'/>".into(),
            "<query xmlns='urn:xmpp:mam:2' queryid='{t}'><set xmlns='http://jabber.org/protocol/rsm'><max>5</max><before/></set></query>".into(),
            "<query xmlns='urn:xmpp:mam:2'><x xmlns='jabber:x:data' type='submit'><field var='with'><value>{t}</value></field>\
             <field var='start'><value>{t}</value></field></x><set xmlns='http://jabber.org/protocol/rsm'><after>{t}</after></set></query>".into(),
            "<show>away</show><status>{t}</status>".into(),
        ]);
        (name, to, from, kind, payload, text).prop_map(|(name, to, from, kind, payload, text)| {
            let text = text.replace('&', "&amp;").replace('<', "&lt;").replace('\'', "&apos;");
            let kind = if kind.is_empty() { String::new() } else { format!(" type='{kind}'") };
            format!(
                "<{name} xmlns='jabber:component:accept' to='{to}' from='{from}' id='i'{kind}>{}</{name}>",
                payload.replace("{t}", &text)
            )
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        /// The proptest twin of the `stanza` fuzz target: no panic, and everything the
        /// router answers is written by the writer's encoder as XML that parses again.
        #[test]
        fn any_stanza_through_the_router_gives_writable_answers(stanzas in prop::collection::vec(any_stanza(), 1..12)) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                let (mut router, mut out, _tmp, recorder) = router();
                for xml in &stanzas {
                    let Ok(stanza) = xml.parse::<Element>() else { continue };
                    router.handle_stanza(stanza).await;
                    while let Ok(Some(task)) = tokio::time::timeout(std::time::Duration::from_millis(5), router.next_task()).await.map(Some) {
                        router.handle_task(task).await;
                    }
                    for answer in std::iter::from_fn(|| out.try_recv().ok()) {
                        let mut bytes = Vec::new();
                        prop_assert!(crate::xml_stream::append_bytes(&answer, &mut bytes), "{answer:?}");
                        let text = String::from_utf8(bytes).unwrap();
                        let wrapped = format!("<s xmlns='jabber:component:accept'>{text}</s>");
                        prop_assert!(wrapped.parse::<Element>().is_ok(), "{text}");
                    }
                    for index in 0..recorder.started() {
                        drop(recorder.commands(index));
                    }
                }
                Ok(())
            })?;
        }
    }

    #[tokio::test]
    async fn the_router_harness_sees_answers_and_commands() {
        let (mut router, mut out, _tmp, recorder) = router();
        let disco = "<iq xmlns='jabber:component:accept' to='gw.localhost' from='user@example.test/r' id='d' type='get'>\
                     <query xmlns='http://jabber.org/protocol/disco#info'/></iq>";
        router.handle_stanza(disco.parse().unwrap()).await;
        assert_eq!(out.try_recv().unwrap().attr("type"), Some("result"));
        let join = "<presence xmlns='jabber:component:accept' to='#c%irc.one@gw.localhost/nick' from='user@example.test/r'>\
                    <x xmlns='http://jabber.org/protocol/muc'/></presence>";
        router.handle_stanza(join.parse().unwrap()).await;
        assert_eq!(recorder.started(), 1, "the join started the user's IRC session");
        let commands = recorder.commands(0);
        assert!(commands.iter().any(|c| matches!(c, bridge_core::model::Command::Join { .. })), "{commands:?}");
    }

    #[tokio::test]
    async fn listing_a_servers_channels_opens_a_session_only_for_users_the_gateway_serves() {
        let (mut router, mut out, _tmp, recorder) = router_with("allowed_domains = [\"example.test\"]\n");
        let items = |from: &str| {
            format!("<iq xmlns='jabber:component:accept' to='irc.one@gw.localhost' from='{from}' id='l' type='get'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>")
        };
        router.handle_stanza(items("stranger@else.example/r").parse().unwrap()).await;
        let answer = out.try_recv().expect("answered at once");
        assert_eq!(answer.attr("type"), Some("result"));
        assert_eq!(answer.get_child("query", disco::NS_DISCO_ITEMS).map(|q| q.children().count()), Some(0), "{answer:?}");
        assert_eq!(recorder.started(), 0, "no IRC session for a user of another domain");

        router.handle_stanza(items("user@example.test/r").parse().unwrap()).await;
        assert_eq!(recorder.started(), 1, "the user's own session lists");
        assert!(matches!(recorder.commands(0).as_slice(), [bridge_core::model::Command::ListChannels { .. }]));
    }

    #[test]
    fn splits_jids_keeping_case() {
        assert_eq!(split_jid("#Rust%irc.x@gw/Nick/x"), (Some("#Rust%irc.x"), "gw", Some("Nick/x")));
        assert_eq!(split_jid("gw"), (None, "gw", None));
        assert_eq!(split_jid("a\\40b.org@gw"), (Some("a\\40b.org"), "gw", None));
    }
}
