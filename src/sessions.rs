//! The live (user, network) sessions, started on demand by the bridge that serves the
//! network and ended when the user goes offline, unregisters, or the gateway stops.

use std::collections::HashMap;
use std::sync::Arc;

use bridge_core::model::{Command, Credentials, NetworkId, SessionKey, UserId};
use bridge_core::{Bridge, EventSink, Session};

/// No bridge in this build serves the network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("this gateway has no bridge for {0:?}")]
pub struct NoBridge(pub NetworkId);

/// One user's live sessions, with their network.
type UserSessions = Vec<(NetworkId, Box<dyn Session>)>;

/// Every live session, by user.
pub struct Sessions {
    /// The bridges, asked in order which one serves a network.
    bridges: Vec<Arc<dyn Bridge>>,
    /// Live sessions, by user, then network: what concerns one user (a join's session
    /// count, an availability change told to their IRC sessions, a logout) looks at that
    /// user's sessions only, so its cost stays flat with 10,000 users (issue 12). A user
    /// has a session or a few; one without any has no entry. A closed session is replaced
    /// on the next command.
    live: HashMap<UserId, UserSessions>,
    /// Handed to each new session for its events.
    events: EventSink,
}

impl Sessions {
    /// An empty registry over `bridges`.
    pub fn new(bridges: Vec<Arc<dyn Bridge>>, events: EventSink) -> Self {
        Sessions { bridges, live: HashMap::new(), events }
    }

    /// The session of `key`, live or closed.
    fn get(&self, key: &SessionKey) -> Option<&dyn Session> {
        self.live.get(&key.user)?.iter().find(|(network, _)| *network == key.network).map(|(_, session)| &**session)
    }

    /// Removes the session of `key` (its user's entry too, when it was the last).
    fn remove(&mut self, key: &SessionKey) {
        let Some(list) = self.live.get_mut(&key.user) else { return };
        list.retain(|(network, _)| *network != key.network);
        if list.is_empty() {
            self.live.remove(&key.user);
        }
    }

    /// Hands `command` to the session of `key`, starting it with `credentials()` first if
    /// it is not running.
    pub fn dispatch(
        &mut self,
        key: SessionKey,
        credentials: impl FnOnce() -> Credentials,
        command: Command,
    ) -> Result<(), NoBridge> {
        if let Some(session) = self.get(&key) {
            if session.send(command.clone()).is_ok() {
                return Ok(());
            }
            self.remove(&key);
        }
        // A session that dies at once reports it through its events; nothing to do here.
        self.start(key, credentials(), Some(command))
    }

    /// Starts the session of `key` with the bridge that serves its network, hands it
    /// `first` if given, and keeps it as live.
    fn start(&mut self, key: SessionKey, credentials: Credentials, first: Option<Command>) -> Result<(), NoBridge> {
        let bridge = self
            .bridges
            .iter()
            .find(|b| b.serves(&key.network))
            .ok_or_else(|| NoBridge(key.network.clone()))?;
        tracing::info!(user = %key.user.0, network = ?key.network, "starting a session");
        let session = bridge.start(key.clone(), credentials, self.events.clone());
        if let Some(command) = first {
            let _ = session.send(command);
        }
        let SessionKey { user, network } = key;
        let list = self.live.entry(user).or_default();
        match list.iter_mut().find(|(known, _)| *known == network) {
            Some((_, slot)) => *slot = session,
            None => list.push((network, session)),
        }
        Ok(())
    }

    /// Hands `command` to the session of `key` if it is live; starts none.
    pub fn tell(&mut self, key: &SessionKey, command: Command) {
        if let Some(session) = self.get(key) {
            let _ = session.send(command);
        }
    }

    /// Hands `command` to every live session of `user` on an IRC server, starting none.
    pub fn tell_irc_sessions(&mut self, user: &UserId, command: &Command) {
        for (network, session) in self.live.get(user).into_iter().flatten() {
            if matches!(network, NetworkId::Irc { .. }) {
                let _ = session.send(command.clone());
            }
        }
    }

    /// Starts the session of `key` if it is not running.
    pub fn ensure(&mut self, key: SessionKey, credentials: Credentials) -> Result<(), NoBridge> {
        if self.get(&key).is_some_and(|s| !s.is_closed()) {
            return Ok(());
        }
        self.start(key, credentials, None)
    }

    /// Ends the IRC sessions of `user` (they went offline; email keeps watching, so mail
    /// reaches their offline storage).
    pub fn end_user_irc(&mut self, user: &UserId, reason: &str) {
        self.end_where(user, |network| matches!(network, NetworkId::Irc { .. }), reason);
    }

    /// Ends the IRC sessions of `user` except those on `keep` (always-on channels there).
    pub fn end_user_irc_except(&mut self, user: &UserId, keep: &std::collections::HashSet<NetworkId>, reason: &str) {
        self.end_where(user, |network| matches!(network, NetworkId::Irc { .. }) && !keep.contains(network), reason);
    }

    /// Ends every session of `user`.
    pub fn end_user(&mut self, user: &UserId, reason: &str) {
        self.end_where(user, |_| true, reason);
    }

    /// Ends the sessions of `user` on the networks that `matches`.
    fn end_where(&mut self, user: &UserId, mut matches: impl FnMut(&NetworkId) -> bool, reason: &str) {
        let Some(list) = self.live.get_mut(user) else { return };
        list.retain(|(network, session)| {
            if !matches(network) {
                return true;
            }
            let _ = session.send(Command::Shutdown { reason: reason.to_owned() });
            false
        });
        if list.is_empty() {
            self.live.remove(user);
        }
    }

    /// Ends every session.
    pub fn end_all(&mut self, reason: &str) {
        for (_, session) in self.live.drain().flat_map(|(_, list)| list) {
            let _ = session.send(Command::Shutdown { reason: reason.to_owned() });
        }
    }

    /// Drops a session that reported its own end. A session started since under the
    /// same key (after a registration change) is live and stays: only a closed one goes.
    pub fn forget(&mut self, key: &SessionKey) {
        if self.get(key).is_some_and(|s| s.is_closed()) {
            self.remove(key);
        }
    }

    /// Whether the session of `key` is running.
    pub fn is_live(&self, key: &SessionKey) -> bool {
        self.get(key).is_some_and(|s| !s.is_closed())
    }

    /// Whether any user's session on `network` is running (one pass over the sessions:
    /// asked when a session ends, not per line).
    pub fn any_on(&self, network: &NetworkId) -> bool {
        self.live.values().flatten().any(|(known, session)| known == network && !session.is_closed())
    }

    /// How many IRC sessions of `user` are running.
    pub fn irc_sessions_of(&self, user: &UserId) -> usize {
        self.live
            .get(user)
            .into_iter()
            .flatten()
            .filter(|(network, session)| matches!(network, NetworkId::Irc { .. }) && !session.is_closed())
            .count()
    }

    /// The users with a running session.
    pub fn users(&self) -> impl Iterator<Item = &UserId> {
        self.live.iter().filter(|(_, list)| list.iter().any(|(_, session)| !session.is_closed())).map(|(user, _)| user)
    }

    /// The networks `user` has a running session on (for the administrators' list).
    pub fn networks_of(&self, user: &UserId) -> Vec<&NetworkId> {
        let mut networks: Vec<&NetworkId> =
            self.live.get(user).into_iter().flatten().filter(|(_, session)| !session.is_closed()).map(|(network, _)| network).collect();
        networks.sort_by_key(|network| format!("{network:?}"));
        networks
    }

    /// How many sessions are live.
    pub fn len(&self) -> usize {
        self.live.values().map(Vec::len).sum()
    }

    /// Whether no session is live.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bridge_core::Commands;
    use std::sync::Mutex;
    use tokio::sync::mpsc;

    /// A bridge for IRC servers whose sessions record the commands they get.
    #[derive(Default)]
    struct Recorder {
        started: Mutex<Vec<(SessionKey, Credentials)>>,
        receivers: Mutex<Vec<Commands>>,
    }

    impl Bridge for Recorder {
        fn serves(&self, network: &NetworkId) -> bool {
            matches!(network, NetworkId::Irc { .. })
        }
        fn start(&self, key: SessionKey, credentials: Credentials, _: EventSink) -> Box<dyn Session> {
            self.started.lock().unwrap().push((key, credentials));
            let (tx, rx) = bridge_core::command_queue();
            self.receivers.lock().unwrap().push(rx);
            Box::new(tx)
        }
    }

    fn key(user: &str, network: NetworkId) -> SessionKey {
        SessionKey { user: UserId(user.into()), network }
    }

    fn irc(server: &str) -> NetworkId {
        NetworkId::Irc { server: server.into() }
    }

    fn leave() -> Command {
        Command::Leave { channel: "#c".into(), reason: None }
    }

    #[test]
    fn starts_once_per_user_and_network_from_credentials() {
        let bridge = Arc::new(Recorder::default());
        let (events, _rx) = mpsc::channel(8);
        let mut sessions = Sessions::new(vec![bridge.clone()], events);
        sessions.dispatch(key("u@h", irc("a")), || Credentials::Anonymous, leave()).unwrap();
        sessions.dispatch(key("u@h", irc("a")), || panic!("must not start twice"), leave()).unwrap();
        sessions.dispatch(key("u@h", irc("b")), || Credentials::Anonymous, leave()).unwrap();
        sessions.dispatch(key("v@h", irc("a")), || Credentials::Anonymous, leave()).unwrap();
        assert_eq!(bridge.started.lock().unwrap().len(), 3);
        assert_eq!(sessions.len(), 3);
        let mut receivers = bridge.receivers.lock().unwrap();
        assert_eq!(receivers[0].try_recv().unwrap(), leave());
        assert_eq!(receivers[0].try_recv().unwrap(), leave());
    }

    #[test]
    fn ending_a_user_leaves_others_alone_and_a_dead_session_is_restarted() {
        let bridge = Arc::new(Recorder::default());
        let (events, _rx) = mpsc::channel(8);
        let mut sessions = Sessions::new(vec![bridge.clone()], events);
        sessions.dispatch(key("u@h", irc("a")), || Credentials::Anonymous, leave()).unwrap();
        sessions.dispatch(key("v@h", irc("a")), || Credentials::Anonymous, leave()).unwrap();
        sessions.end_user(&UserId("u@h".into()), "offline");
        assert_eq!(sessions.len(), 1);
        {
            let mut receivers = bridge.receivers.lock().unwrap();
            receivers[0].try_recv().unwrap();
            assert!(matches!(receivers[0].try_recv().unwrap(), Command::Shutdown { .. }));
            // The session task of v@h dies on its own.
            receivers.remove(1);
        }
        sessions.dispatch(key("v@h", irc("a")), || Credentials::Anonymous, leave()).unwrap();
        assert_eq!(bridge.started.lock().unwrap().len(), 3);
    }

    #[test]
    fn a_late_end_of_an_old_session_does_not_drop_its_successor() {
        let bridge = Arc::new(Recorder::default());
        let (events, _rx) = mpsc::channel(8);
        let mut sessions = Sessions::new(vec![bridge.clone()], events);
        let k = key("u@h", irc("a"));
        sessions.ensure(k.clone(), Credentials::Anonymous).unwrap();
        sessions.end_user(&UserId("u@h".into()), "registration changed");
        sessions.ensure(k.clone(), Credentials::Anonymous).unwrap();
        // The first session's task ends and reports it.
        bridge.receivers.lock().unwrap().remove(0);
        sessions.forget(&k);
        assert!(sessions.is_live(&k), "the new session must stay");
        // When the live one itself has ended, it goes.
        bridge.receivers.lock().unwrap().clear();
        sessions.forget(&k);
        assert!(!sessions.is_live(&k) && sessions.is_empty());
    }

    #[test]
    fn no_bridge_is_an_error() {
        let (events, _rx) = mpsc::channel(8);
        let mut sessions = Sessions::new(vec![Arc::new(Recorder::default())], events);
        let err = sessions
            .dispatch(key("u@h", NetworkId::Email), || Credentials::Anonymous, leave())
            .unwrap_err();
        assert_eq!(err, NoBridge(NetworkId::Email));
    }
}
