//! The channels of one IRC session: those the user wants, each with where it stands on
//! the current connection, found by name as the server compares names.
//!
//! One entry per channel, its name kept once: not again folded as a key, nor in a second
//! map for the channels joined (an always-on channel is kept for hours by a session whose
//! user is away, thousands of times over on a big gateway).

use std::sync::Arc;

use bridge_core::Secret;
use hashbrown::HashTable;

use crate::modes::{ChannelPrivileges, ServerModes};

/// A channel the user wants to be in.
#[derive(Debug)]
pub(crate) struct Channel {
    /// The name as the user wrote it: what events carry and a rejoin sends.
    pub name: String,
    /// Its key, if any, for rejoins.
    pub key: Option<Secret>,
    /// Where it stands on the current connection.
    pub state: State,
    /// Occupants and their privileges while joined (empty otherwise).
    pub privileges: ChannelPrivileges,
    /// The topic (RPL_TOPIC or TOPIC) while joined.
    pub topic: Option<String>,
}

/// Where a wanted channel stands on the current connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// Not joined: the JOIN is on its way, or waits for a connection.
    Wanted,
    /// The server said we joined; the member list is still coming.
    Joined,
    /// Joined, and `Event::Joined` sent (after RPL_ENDOFNAMES).
    Reported,
}

impl Channel {
    /// Whether the server has us in the channel on the current connection.
    pub fn is_joined(&self) -> bool {
        self.state != State::Wanted
    }

    /// Whether the gateway was told of the join (`Event::Joined`).
    pub fn is_reported(&self) -> bool {
        self.state == State::Reported
    }

    /// Joined on the current connection: what a former one told is forgotten.
    pub fn join(&mut self, server: &Arc<ServerModes>) {
        self.state = State::Joined;
        self.privileges = ChannelPrivileges::on(Arc::clone(server));
        self.topic = None;
    }

    /// Not joined any more (the connection is gone): wanted still.
    pub fn unjoin(&mut self) {
        self.state = State::Wanted;
        self.privileges.clear();
        self.topic = None;
    }
}

/// The channels of one session, by name under the server's case mapping.
#[derive(Debug, Default)]
pub(crate) struct Channels(HashTable<Channel>);

impl Channels {
    /// The channel `name` (any spelling the server takes for it), if wanted.
    pub fn get(&self, server: &ServerModes, name: &str) -> Option<&Channel> {
        self.0.find(server.hash(name), |c| server.same(&c.name, name))
    }

    /// Mutable access.
    pub fn get_mut(&mut self, server: &ServerModes, name: &str) -> Option<&mut Channel> {
        self.0.find_mut(server.hash(name), |c| server.same(&c.name, name))
    }

    /// The channel `name` if joined on the current connection.
    pub fn joined(&self, server: &ServerModes, name: &str) -> Option<&Channel> {
        self.get(server, name).filter(|c| c.is_joined())
    }

    /// Mutable access.
    pub fn joined_mut(&mut self, server: &ServerModes, name: &str) -> Option<&mut Channel> {
        self.get_mut(server, name).filter(|c| c.is_joined())
    }

    /// The user wants `name`, with `key`: a new entry, or the key of the one there
    /// replaced (and its spelling, while not joined under the old one).
    pub fn want(&mut self, server: &Arc<ServerModes>, name: String, key: Option<Secret>) {
        let hash = server.hash(&name);
        match self.0.find_mut(hash, |c| server.same(&c.name, &name)) {
            Some(channel) => {
                if !channel.is_joined() {
                    channel.name = name;
                }
                channel.key = key;
            }
            None => {
                let channel = Channel { name, key, state: State::Wanted, privileges: ChannelPrivileges::on(Arc::clone(server)), topic: None };
                self.0.insert_unique(hash, channel, |c| server.hash(&c.name));
            }
        }
    }

    /// Takes `name` out, if wanted.
    pub fn remove(&mut self, server: &ServerModes, name: &str) -> Option<Channel> {
        let entry = self.0.find_entry(server.hash(name), |c| server.same(&c.name, name)).ok()?;
        Some(entry.remove().0)
    }

    /// Keeps the channels `keep` says yes to.
    pub fn retain(&mut self, keep: impl FnMut(&mut Channel) -> bool) {
        self.0.retain(keep);
    }

    /// Every channel wanted.
    pub fn iter(&self) -> impl Iterator<Item = &Channel> {
        self.0.iter()
    }

    /// Every channel joined on the current connection.
    pub fn iter_joined(&self) -> impl Iterator<Item = &Channel> {
        self.0.iter().filter(|c| c.is_joined())
    }

    /// Mutable access.
    pub fn iter_joined_mut(&mut self) -> impl Iterator<Item = &mut Channel> {
        self.0.iter_mut().filter(|c| c.is_joined())
    }

    /// Whether no channel is wanted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Every channel, taken out.
    pub fn take_all(&mut self) -> impl Iterator<Item = Channel> + '_ {
        self.0.drain()
    }

    /// Finds the channels again under what `server` now says (a new case mapping), and
    /// has their member lists use it.
    pub fn rekey(&mut self, server: &Arc<ServerModes>) {
        let channels: Vec<Channel> = self.0.drain().collect();
        for mut channel in channels {
            channel.privileges.share(Arc::clone(server));
            let hash = server.hash(&channel.name);
            match self.0.find_mut(hash, |c| server.same(&c.name, &channel.name)) {
                // Two spellings the new mapping folds together: the joined one stays.
                Some(known) if known.is_joined() || !channel.is_joined() => {}
                Some(known) => *known = channel,
                None => {
                    self.0.insert_unique(hash, channel, |c| server.hash(&c.name));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bridge_core::model::CaseMapping;

    fn server(mapping: CaseMapping) -> Arc<ServerModes> {
        let mut server = ServerModes::default();
        server.set_mapping(mapping);
        Arc::new(server)
    }

    #[test]
    fn a_channel_is_found_under_any_spelling_the_server_folds_together() {
        let server = server(CaseMapping::Rfc1459);
        let mut channels = Channels::default();
        channels.want(&server, "#Foo[".into(), None);
        assert_eq!(channels.get(&server, "#foo{").map(|c| c.name.as_str()), Some("#Foo["));
        assert!(channels.get(&server, "#foo").is_none());
        // Longer than a chunk of the hash's folding, with characters beyond ASCII.
        let long = format!("#Ünïcode[{}]", "X".repeat(70));
        channels.want(&server, long.clone(), None);
        assert_eq!(channels.get(&server, &long.to_ascii_lowercase().replace('[', "{").replace(']', "}")).map(|c| c.name.as_str()), Some(long.as_str()));
        assert!(channels.joined(&server, "#FOO[").is_none(), "wanted, not joined yet");
        channels.get_mut(&server, "#FOO[").unwrap().join(&server);
        assert!(channels.joined(&server, "#foo{").is_some());
        assert_eq!(channels.iter().count(), 2);
    }

    #[test]
    fn wanting_again_changes_the_key_and_the_spelling_only_while_not_joined() {
        let server = server(CaseMapping::Ascii);
        let mut channels = Channels::default();
        channels.want(&server, "#Chan".into(), None);
        channels.want(&server, "#chan".into(), Some(Secret::new("k1")));
        let channel = channels.get(&server, "#CHAN").unwrap();
        assert_eq!((channel.name.as_str(), channel.key.as_ref().map(Secret::expose)), ("#chan", Some("k1")));
        channels.get_mut(&server, "#chan").unwrap().join(&server);
        channels.want(&server, "#CHAN".into(), None);
        let channel = channels.get(&server, "#chan").unwrap();
        assert_eq!((channel.name.as_str(), channel.key.is_none(), channel.is_joined()), ("#chan", true, true));
    }

    #[test]
    fn a_lost_connection_unjoins_and_forgets_what_it_told() {
        let server = server(CaseMapping::Ascii);
        let mut channels = Channels::default();
        channels.want(&server, "#a".into(), None);
        let channel = channels.get_mut(&server, "#a").unwrap();
        channel.join(&server);
        channel.privileges.set_from_names("@alice");
        channel.topic = Some("hello".into());
        channel.state = State::Reported;
        for channel in channels.iter_joined_mut() {
            channel.unjoin();
        }
        let channel = channels.get(&server, "#a").unwrap();
        assert_eq!((channel.state, channel.privileges.len(), channel.topic.as_deref()), (State::Wanted, 0, None));
        assert_eq!(channels.iter_joined().count(), 0);
        assert!(channels.remove(&server, "#A").is_some(), "ascii folds letters");
        assert!(channels.is_empty());
    }

    #[test]
    fn a_new_case_mapping_finds_the_channels_again_and_merges_what_it_folds_together() {
        let ascii = server(CaseMapping::Ascii);
        let mut channels = Channels::default();
        channels.want(&ascii, "#a[".into(), None);
        channels.want(&ascii, "#A{".into(), None);
        channels.get_mut(&ascii, "#a{").unwrap().join(&ascii);
        let mut rfc = ServerModes::clone(&ascii);
        rfc.set_mapping(CaseMapping::Rfc1459);
        let rfc = Arc::new(rfc);
        channels.rekey(&rfc);
        assert_eq!(channels.iter().count(), 1);
        let channel = channels.get(&rfc, "#a[").unwrap();
        assert_eq!((channel.name.as_str(), channel.is_joined()), ("#A{", true), "the joined spelling stays");
    }
}
