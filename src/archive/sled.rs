//! The archive in a sled tree (the store's database, tree `archive`).
//!
//! Key: `user \0 scope \0` then the id as 8 big-endian bytes, so one conversation is one
//! contiguous, time-ordered range, a user's whole archive one prefix, and a query a range
//! scan. `scope` is `r` + `server/channel`, `p` + the contact's JID, or `a` (every private
//! message of the user, written a second time there). Value: the direction (one byte),
//! the length of `who` (two bytes), `who`, then the body. JIDs and nicks hold no NUL.

use std::ops::Bound;

use super::{ArchiveBackend, ArchiveError, Conversation, Direction, Entry, Item, Page, Query, Retention, MAX_PAGE};

/// The key of the highest id written (sorts before every user's keys).
const LAST_ID_KEY: &[u8] = b"\0last-id";

/// The archive in one sled tree.
pub struct SledArchive {
    /// The `archive` tree of the store's database.
    tree: sled::Tree,
}

impl SledArchive {
    /// The archive kept in `tree`.
    pub fn new(tree: sled::Tree) -> Self {
        SledArchive { tree }
    }
}

fn failed(action: &'static str) -> impl Fn(sled::Error) -> ArchiveError {
    move |e| ArchiveError::Backend { action, message: e.to_string() }
}

/// `user \0 scope \0`: the prefix of every key of one conversation.
fn scope(user: &str, conversation: &Conversation) -> Vec<u8> {
    let (kind, name) = match conversation {
        Conversation::Room(room) => (b'r', room.as_str()),
        Conversation::Private(jid) => (b'p', jid.as_str()),
        Conversation::AllPrivate => (b'a', ""),
    };
    let mut key = Vec::with_capacity(user.len() + name.len() + 11);
    key.extend_from_slice(user.as_bytes());
    key.push(0);
    key.push(kind);
    key.extend_from_slice(name.as_bytes());
    key.push(0);
    key
}

fn key(scope: &[u8], id: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(scope.len() + 8);
    key.extend_from_slice(scope);
    key.extend_from_slice(&id.to_be_bytes());
    key
}

/// The id at the end of a key.
fn id_of(key: &[u8]) -> u64 {
    key.len().checked_sub(8).and_then(|at| key[at..].try_into().ok()).map_or(0, u64::from_be_bytes)
}

fn encode(direction: Direction, who: &str, body: &str) -> Vec<u8> {
    // A nick or JID longer than 64 KiB cannot come from IRC or XMPP; cut it rather than fail.
    let who = &who.as_bytes()[..who.len().min(usize::from(u16::MAX))];
    let mut value = Vec::with_capacity(3 + who.len() + body.len());
    value.push(match direction {
        Direction::Room => 0,
        Direction::FromContact => 1,
        Direction::ToContact => 2,
    });
    value.extend_from_slice(&(who.len() as u16).to_be_bytes());
    value.extend_from_slice(who);
    value.extend_from_slice(body.as_bytes());
    value
}

fn decode(id: u64, value: &[u8]) -> Option<Item> {
    let (&direction, rest) = value.split_first()?;
    let direction = match direction {
        0 => Direction::Room,
        1 => Direction::FromContact,
        2 => Direction::ToContact,
        _ => return None,
    };
    let length = usize::from(u16::from_be_bytes(rest.get(..2)?.try_into().ok()?));
    let who = rest.get(2..2 + length)?;
    let body = rest.get(2 + length..)?;
    Some(Item { id, direction, who: String::from_utf8_lossy(who).into_owned(), body: String::from_utf8_lossy(body).into_owned() })
}

impl ArchiveBackend for SledArchive {
    fn append(&mut self, entries: &[Entry]) -> Result<(), ArchiveError> {
        let mut batch = sled::Batch::default();
        let mut last = 0;
        for entry in entries {
            let value = encode(entry.direction, &entry.who, &entry.body);
            if matches!(entry.conversation, Conversation::Private(_)) {
                batch.insert(key(&scope(&entry.user, &Conversation::AllPrivate), entry.id), value.clone());
            }
            batch.insert(key(&scope(&entry.user, &entry.conversation), entry.id), value);
            last = last.max(entry.id);
        }
        batch.insert(LAST_ID_KEY, &last.max(self.last_id()?).to_be_bytes());
        self.tree.apply_batch(batch).map_err(failed("write"))
    }

    fn query(&self, query: &Query) -> Result<Page, ArchiveError> {
        let scope = scope(&query.user, &query.conversation);
        // The ids the query covers, inclusive.
        let low = query.start.unwrap_or(0).max(query.after.map_or(0, |a| a.saturating_add(1)));
        let high = query.end.unwrap_or(u64::MAX).min(match query.before {
            Some(Some(before)) => before.saturating_sub(1),
            _ => u64::MAX,
        });
        let max = query.max.min(MAX_PAGE);
        if low > high || (query.before == Some(Some(0))) {
            return Ok(Page { items: Vec::new(), complete: true });
        }
        let range = self.tree.range((Bound::Included(key(&scope, low)), Bound::Included(key(&scope, high))));
        // One more than the page, to know whether the page reaches the end.
        let mut items = Vec::with_capacity(max.min(64) + 1);
        let mut take = |entry: Result<(sled::IVec, sled::IVec), sled::Error>| -> Result<bool, ArchiveError> {
            let (k, v) = entry.map_err(failed("read"))?;
            let id = id_of(&k);
            match decode(id, &v) {
                Some(item) => items.push(item),
                None => tracing::warn!(id, "an archived message cannot be read; skipped"),
            }
            Ok(items.len() > max)
        };
        if query.before.is_some() {
            for entry in range.rev() {
                if take(entry)? {
                    break;
                }
            }
        } else {
            for entry in range {
                if take(entry)? {
                    break;
                }
            }
        }
        let complete = items.len() <= max;
        items.truncate(max);
        if query.before.is_some() {
            items.reverse();
        }
        Ok(Page { items, complete })
    }

    fn delete_user(&mut self, user: &str) -> Result<u64, ArchiveError> {
        let mut prefix = user.as_bytes().to_vec();
        prefix.push(0);
        let mut removed = 0;
        loop {
            let mut batch = sled::Batch::default();
            let mut count = 0;
            for entry in self.tree.scan_prefix(&prefix).keys().take(10_000) {
                batch.remove(entry.map_err(failed("read"))?);
                count += 1;
            }
            if count == 0 {
                return Ok(removed);
            }
            self.tree.apply_batch(batch).map_err(failed("delete"))?;
            removed += count;
        }
    }

    fn trim(&mut self, retention: Retention, now: u64) -> Result<u64, ArchiveError> {
        let oldest_kept = retention.max_age.map(|age| now.saturating_sub(age.as_micros() as u64));
        let mut removed = 0;
        // Each conversation in turn: from its first key, to past its last.
        let mut from = Bound::Excluded(LAST_ID_KEY.to_vec());
        while let Some(entry) = self.tree.range((from.clone(), Bound::Unbounded)).next() {
            let (first, _) = entry.map_err(failed("read"))?;
            let Some(scope) = first.len().checked_sub(8).map(|at| first[..at].to_vec()) else { break };
            let mut batch = sled::Batch::default();
            if let Some(oldest_kept) = oldest_kept {
                for key in self.tree.range(key(&scope, 0)..key(&scope, oldest_kept)).keys() {
                    batch.remove(key.map_err(failed("read"))?);
                    removed += 1;
                }
            }
            if let Some(max_count) = retention.max_count {
                let newest = self.tree.range(key(&scope, oldest_kept.unwrap_or(0))..=key(&scope, u64::MAX)).keys().rev();
                for key in newest.skip(max_count as usize) {
                    batch.remove(key.map_err(failed("read"))?);
                    removed += 1;
                }
            }
            self.tree.apply_batch(batch).map_err(failed("delete"))?;
            from = Bound::Excluded(key(&scope, u64::MAX));
        }
        Ok(removed)
    }

    fn last_id(&self) -> Result<u64, ArchiveError> {
        let last = self.tree.get(LAST_ID_KEY).map_err(failed("read"))?;
        Ok(last.and_then(|v| v.as_ref().try_into().ok()).map_or(0, u64::from_be_bytes))
    }

    fn flush(&self) -> Result<(), ArchiveError> {
        self.tree.flush().map(drop).map_err(failed("flush"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive() -> (SledArchive, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        (SledArchive::new(db.open_tree("archive").unwrap()), dir)
    }

    fn line(user: &str, conversation: Conversation, id: u64, body: &str) -> Entry {
        Entry { id, user: user.into(), conversation, direction: Direction::Room, who: "nick".into(), body: body.into() }
    }

    fn query(conversation: Conversation) -> Query {
        Query { user: "alice@x".into(), conversation, start: None, end: None, after: None, before: None, max: 10 }
    }

    fn ids(page: &Page) -> Vec<u64> {
        page.items.iter().map(|i| i.id).collect()
    }

    fn filled() -> (SledArchive, tempfile::TempDir) {
        let (mut archive, dir) = archive();
        let room = Conversation::room("irc.x", "#rust");
        let entries: Vec<Entry> = (1..=25).map(|id| line("alice@x", room.clone(), id * 10, &format!("line {id}"))).collect();
        archive.append(&entries).unwrap();
        // Other users and rooms around it must not leak in.
        archive.append(&[line("alice@x", Conversation::room("irc.x", "#rusty"), 55, "other room")]).unwrap();
        archive.append(&[line("alice@xx", Conversation::room("irc.x", "#rust"), 56, "other user")]).unwrap();
        archive.append(&[line("alic", Conversation::room("irc.x", "#rust"), 57, "prefix user")]).unwrap();
        (archive, dir)
    }

    #[test]
    fn pages_forward_with_after_and_backward_with_before() {
        let (archive, _dir) = filled();
        let room = Conversation::room("irc.x", "#rust");
        let first = archive.query(&Query { max: 10, ..query(room.clone()) }).unwrap();
        assert_eq!(ids(&first), (1..=10).map(|i| i * 10).collect::<Vec<_>>());
        assert!(!first.complete);
        let third = archive.query(&Query { after: Some(200), ..query(room.clone()) }).unwrap();
        assert_eq!(ids(&third), [210, 220, 230, 240, 250]);
        assert!(third.complete);
        let last = archive.query(&Query { before: Some(None), max: 4, ..query(room.clone()) }).unwrap();
        assert_eq!(ids(&last), [220, 230, 240, 250]);
        assert!(!last.complete);
        let before = archive.query(&Query { before: Some(Some(40)), ..query(room.clone()) }).unwrap();
        assert_eq!(ids(&before), [10, 20, 30]);
        assert!(before.complete);
        assert_eq!(archive.query(&Query { before: Some(Some(10)), ..query(room) }).unwrap(), Page { items: vec![], complete: true });
    }

    #[test]
    fn a_time_range_is_a_range_of_ids_and_combines_with_paging() {
        let (archive, _dir) = filled();
        let room = Conversation::room("irc.x", "#rust");
        let range = archive.query(&Query { start: Some(35), end: Some(80), ..query(room.clone()) }).unwrap();
        assert_eq!(ids(&range), [40, 50, 60, 70, 80]);
        assert!(range.complete);
        let paged = archive.query(&Query { start: Some(35), end: Some(80), before: Some(None), max: 2, ..query(room) }).unwrap();
        assert_eq!(ids(&paged), [70, 80]);
        assert!(!paged.complete);
    }

    #[test]
    fn entries_read_back_as_written_and_private_ones_also_under_all_private() {
        let (mut archive, _dir) = archive();
        let bob = Conversation::private("Bob%irc.x@gw");
        archive
            .append(&[
                Entry { id: 1, user: "alice@x".into(), conversation: bob.clone(), direction: Direction::FromContact, who: "bob%irc.x@gw".into(), body: "hi <&> é".into() },
                Entry { id: 2, user: "alice@x".into(), conversation: Conversation::private("carol%irc.x@gw"), direction: Direction::ToContact, who: "carol%irc.x@gw".into(), body: String::new() },
            ])
            .unwrap();
        let with_bob = archive.query(&query(Conversation::private("bob%IRC.x@gw"))).unwrap();
        assert_eq!(with_bob.items, [Item { id: 1, direction: Direction::FromContact, who: "bob%irc.x@gw".into(), body: "hi <&> é".into() }]);
        let all = archive.query(&query(Conversation::AllPrivate)).unwrap();
        assert_eq!(ids(&all), [1, 2]);
        assert_eq!(all.items[1].direction, Direction::ToContact);
    }

    #[test]
    fn deleting_a_user_removes_all_of_theirs_and_nothing_else() {
        let (mut archive, _dir) = filled();
        assert_eq!(archive.delete_user("alice@x").unwrap(), 26);
        assert!(archive.query(&query(Conversation::room("irc.x", "#rust"))).unwrap().items.is_empty());
        let other = Query { user: "alice@xx".into(), ..query(Conversation::room("irc.x", "#rust")) };
        assert_eq!(ids(&archive.query(&other).unwrap()), [56]);
        assert_eq!(archive.last_id().unwrap(), 250);
    }

    #[test]
    fn trimming_keeps_the_newest_per_conversation_and_nothing_too_old() {
        let (mut archive, _dir) = filled();
        let removed = archive.trim(Retention { max_age: None, max_count: Some(5) }, 1000).unwrap();
        assert_eq!(removed, 20);
        assert_eq!(ids(&archive.query(&query(Conversation::room("irc.x", "#rust"))).unwrap()), [210, 220, 230, 240, 250]);
        assert_eq!(ids(&archive.query(&query(Conversation::room("irc.x", "#rusty"))).unwrap()), [55]);
        let removed = archive.trim(Retention { max_age: Some(std::time::Duration::from_micros(30)), max_count: None }, 255).unwrap();
        // Older than 225: 210 and 220 of #rust, 55 of #rusty, 56 and 57 of the others.
        assert_eq!(removed, 5);
        assert_eq!(ids(&archive.query(&query(Conversation::room("irc.x", "#rust"))).unwrap()), [230, 240, 250]);
    }

    #[test]
    fn an_unreadable_value_is_skipped_not_fatal() {
        let (archive, _dir) = filled();
        let bad = key(&scope("alice@x", &Conversation::room("irc.x", "#rust")), 15);
        archive.tree.insert(bad, &[9u8][..]).unwrap();
        let page = archive.query(&Query { max: 3, ..query(Conversation::room("irc.x", "#rust")) }).unwrap();
        assert_eq!(ids(&page), [10, 20, 30]);
    }
}
