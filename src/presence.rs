//! Which resources of which users are online, learned from the presence they send the
//! gateway (XEP-0100: the gateway is subscribed to its registered users' presence).
//!
//! Pure state: the router feeds it presences and acts on what it returns.

use std::collections::{HashMap, HashSet};

/// What a presence update changed for its user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The user's first resource came online.
    CameOnline,
    /// The user's last resource went offline: their sessions should end.
    WentOffline,
    /// Another resource came or went; the user stays online (or stays offline).
    Unchanged,
}

/// Online resources per bare JID.
#[derive(Debug, Default)]
pub struct OnlineUsers {
    /// Bare JID -> its online resources. A user with no resource has no entry.
    resources: HashMap<String, HashSet<String>>,
}

impl OnlineUsers {
    /// Records that `resource` of `bare` is available.
    pub fn available(&mut self, bare: &str, resource: &str) -> Change {
        let entry = self.resources.entry(bare.to_owned()).or_default();
        let was_empty = entry.is_empty();
        entry.insert(resource.to_owned());
        if was_empty {
            Change::CameOnline
        } else {
            Change::Unchanged
        }
    }

    /// Records that `resource` of `bare` went offline (`None`: every resource, as when the
    /// server says the bare JID is unavailable).
    pub fn unavailable(&mut self, bare: &str, resource: Option<&str>) -> Change {
        let Some(entry) = self.resources.get_mut(bare) else {
            return Change::Unchanged;
        };
        match resource {
            Some(resource) => {
                entry.remove(resource);
            }
            None => entry.clear(),
        }
        if entry.is_empty() {
            self.resources.remove(bare);
            Change::WentOffline
        } else {
            Change::Unchanged
        }
    }

    /// How many users have a resource online.
    pub fn users(&self) -> usize {
        self.resources.len()
    }

    /// Whether any resource of `bare` is online.
    pub fn is_online(&self, bare: &str) -> bool {
        self.resources.contains_key(bare)
    }

    /// The online resources of `bare`.
    pub fn resources_of(&self, bare: &str) -> Vec<String> {
        self.resources.get(bare).map(|set| set.iter().cloned().collect()).unwrap_or_default()
    }

    /// Every online (bare JID, resource) pair, for the goodbye presences at shutdown.
    pub fn all(&self) -> impl Iterator<Item = (&str, &str)> {
        self.resources
            .iter()
            .flat_map(|(bare, set)| set.iter().map(move |r| (bare.as_str(), r.as_str())))
    }

    /// Forgets everything, when the server connection is lost (presence will be probed
    /// again on reconnect).
    pub fn clear(&mut self) {
        self.resources.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_and_last_resource_are_reported() {
        let mut online = OnlineUsers::default();
        assert_eq!(online.available("u@h", "phone"), Change::CameOnline);
        assert_eq!(online.available("u@h", "laptop"), Change::Unchanged);
        assert_eq!(online.available("u@h", "laptop"), Change::Unchanged);
        assert!(online.is_online("u@h"));
        assert_eq!(online.unavailable("u@h", Some("phone")), Change::Unchanged);
        assert_eq!(online.unavailable("u@h", Some("laptop")), Change::WentOffline);
        assert!(!online.is_online("u@h"));
        assert_eq!(online.unavailable("u@h", Some("laptop")), Change::Unchanged);
    }

    #[test]
    fn bare_unavailable_ends_every_resource() {
        let mut online = OnlineUsers::default();
        online.available("u@h", "a");
        online.available("u@h", "b");
        online.available("v@h", "a");
        assert_eq!(online.all().count(), 3);
        assert_eq!(online.unavailable("u@h", None), Change::WentOffline);
        assert_eq!(online.all().collect::<Vec<_>>(), vec![("v@h", "a")]);
    }
}
