//! The IRC bridge: one IRC connection per (user, IRC server), shared by all the user's
//! resources; channels become rooms, nicks become contacts.
//!
//! - `session`: the per-(user, server) task: login, channels, reconnection, rate limit.
//! - `transport`: TCP/TLS and line framing (UTF-8, else Latin-1).
//! - `text`: pure text conversions (injection-proof lines, splitting, formatting codes).
//! - `modes`: pure channel privileges to room roles and affiliations, and channel modes.
//! - `listing`: the server's channel list (`LIST`) for discovery, fetched and kept briefly.

// Protocol code reads what remote servers send: no indexing that can panic on it.
#![cfg_attr(not(test), warn(clippy::indexing_slicing))]

mod channels;
mod listing;
pub mod modes;
pub mod ircv3;
mod session;
mod settings;
pub mod text;
mod transport;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use bridge_core::model::{Credentials, NetworkId, SessionKey};
use bridge_core::{Bridge, EventSink, Session};
use tokio::sync::Semaphore;
use tracing::Instrument;

pub use session::next_nick_variant;
pub use bridge_net::Reach;
pub use settings::{NetworkSettings, ServerLimits};

/// Serves every IRC server: the configured ones with their settings, others with
/// [`NetworkSettings::default`] (TLS on 6697, public addresses only).
#[derive(Debug, Clone, Default)]
pub struct IrcBridge {
    /// Settings per server host name (lower-case).
    networks: BTreeMap<String, NetworkSettings>,
    /// What any other server gets: [`NetworkSettings::default`] with the gateway's
    /// [`ServerLimits`].
    unknown: NetworkSettings,
    /// Per server (lower-case), the connections it may be setting up at once (see
    /// [`CONNECTING_AT_ONCE`]), shared by every session to that server.
    connecting: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
}

/// How many new connections to one IRC server may be waiting for its first word at
/// once. A server accepts connections at its own pace and resets (or throttles) those
/// beyond its accept queue (ngIRCd's holds 10); when the gateway (re)connects a thousand
/// users at once, they queue here instead.
pub const CONNECTING_AT_ONCE: usize = 8;

impl IrcBridge {
    /// A bridge with per-server settings; servers not among them get the defaults with
    /// `limits`.
    pub fn new(networks: BTreeMap<String, NetworkSettings>, limits: ServerLimits) -> Self {
        let networks = networks.into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v)).collect();
        let unknown = NetworkSettings { limits, ..NetworkSettings::default() };
        IrcBridge { networks, unknown, connecting: Arc::default() }
    }

    /// The gate of `server`'s new connections.
    fn connecting(&self, server: &str) -> Arc<Semaphore> {
        let mut gates = self.connecting.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        gates.entry(server.to_ascii_lowercase()).or_insert_with(|| Arc::new(Semaphore::new(CONNECTING_AT_ONCE))).clone()
    }

    /// The settings used for `server`.
    pub fn settings(&self, server: &str) -> NetworkSettings {
        self.networks.get(&server.to_ascii_lowercase()).unwrap_or(&self.unknown).clone()
    }
}

impl Bridge for IrcBridge {
    fn serves(&self, network: &NetworkId) -> bool {
        matches!(network, NetworkId::Irc { .. })
    }

    fn start(&self, key: SessionKey, credentials: Credentials, events: EventSink) -> Box<dyn Session> {
        let NetworkId::Irc { server } = &key.network else {
            // Not ours: a closed queue, so the router sees the session as ended.
            return Box::new(bridge_core::command_queue().0);
        };
        let server = server.clone();
        let span = tracing::info_span!("irc", user = %key.user.0, %server);
        let settings = self.settings(&server);
        let gate = self.connecting(&server);
        let queue = bridge_core::spawn_session(|commands| {
            session::IrcSession::new(key, server, settings, gate, credentials, events, commands).run().instrument(span)
        });
        Box::new(queue)
    }
}


#[cfg(test)]
mod tests {
    use bridge_core::model::{Credentials, NetworkId, SessionKey, UserId};

    /// Thousands of IRC connections are mostly idle sessions: what each one's task holds
    /// is its memory cost (bench/ measures the total per connection).
    #[test]
    fn a_session_task_stays_small() {
        let (_queue, commands) = bridge_core::command_queue();
        let (events, _) = tokio::sync::mpsc::channel(1);
        let key = SessionKey { user: UserId("a@b".into()), network: NetworkId::Irc { server: "s".into() } };
        let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(1));
        let session =
            crate::session::IrcSession::new(key, "s".into(), Default::default(), gate, Credentials::Anonymous, events, commands);
        let task = session.run();
        let size = std::mem::size_of_val(&task);
        // 2,488 bytes before IRCv3 (issue 11); capabilities, their state's pointer and the
        // delay every message event may carry added 96 (2,552). 1,728 since what runs
        // only when a connection or the session ends is boxed and one timer serves the
        // connection's four deadlines (issue 12: RSS per connection). 1,672 since the
        // session keeps only the password of its credentials (issue 13 grew the email ones).
        assert!(size <= 1700, "an IRC session's task takes {size} bytes");
    }
}
