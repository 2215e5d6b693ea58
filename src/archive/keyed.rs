//! The archive as keys of an ordered map: the store's `archive` tree (sled) or table
//! (PostgreSQL), through [`Ordered`]; the same keys on both, so ids survive a move.
//!
//! Keys, each family one contiguous, ordered range:
//! - `\x02 room \0 id`: a channel's log, one entry per line whatever the number of users
//!   who got it (`room` as [`Conversation::Room`] keys it, `id` 8 bytes big-endian);
//! - `\x01 room \0 user \0 start` → `end`: the spans of the log each user got;
//! - `user \0 scope \0 id`: private messages, `scope` = `p` + the contact's JID, or `a`
//!   (every private message of the user, written a second time there);
//! - `\0last-id`: the highest id written.
//!
//! A user's archive of a channel is the log's lines within their spans; a query is a
//! range scan per span. Value of an entry: the direction (one byte), the length of `who`
//! (two bytes), `who`, then the body. JIDs, room keys and nicks hold no NUL, and a JID
//! starts with neither `\x01` nor `\x02`.

use std::ops::Bound;

use crate::store::backend::{bound_ref, scan_prefix, Batch, BackendError, Ordered};

use super::{ArchiveBackend, ArchiveError, Conversation, Direction, Item, Page, Query, Retention, Write, MAX_PAGE};

/// The key of the highest id written (sorts before every other key).
const LAST_ID_KEY: &[u8] = b"\0last-id";
/// The first byte of span keys.
const SPANS: u8 = 1;
/// The first byte of channel log keys.
const LINES: u8 = 2;
/// Every key from here on is a user's (private messages).
const USERS_FROM: &[u8] = &[3];

/// The archive in one ordered map of the store.
pub struct KeyedArchive {
    /// The `archive` tree (or table) of the store's database.
    tree: Box<dyn Ordered>,
}

impl KeyedArchive {
    /// The archive kept in `tree`.
    pub fn new(tree: Box<dyn Ordered>) -> Self {
        KeyedArchive { tree }
    }
}

fn failed(action: &'static str) -> impl Fn(BackendError) -> ArchiveError {
    move |e| ArchiveError::Backend { action, message: e.to_string() }
}

/// Joins `parts`, each followed by a NUL, after the byte `first` (if any).
fn prefix(first: Option<u8>, parts: &[&str]) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + parts.iter().map(|p| p.len() + 1).sum::<usize>() + 8);
    key.extend(first);
    for part in parts {
        key.extend_from_slice(part.as_bytes());
        key.push(0);
    }
    key
}

/// `user \0 scope \0`: the prefix of every key of one private conversation.
fn private_scope(user: &str, conversation: &Conversation) -> Vec<u8> {
    let scope = match conversation {
        Conversation::Private(jid) => format!("p{jid}"),
        Conversation::AllPrivate | Conversation::Room(_) => "a".to_owned(),
    };
    prefix(None, &[user, &scope])
}

fn key(prefix: &[u8], id: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + 8);
    key.extend_from_slice(prefix);
    key.extend_from_slice(&id.to_be_bytes());
    key
}

/// The id at the end of a key (or a span's end, as a value).
fn id_of(key: &[u8]) -> u64 {
    key.len().checked_sub(8).and_then(|at| key[at..].try_into().ok()).map_or(0, u64::from_be_bytes)
}

/// The room, user and start of a span key.
fn parse_span(key: &[u8]) -> Option<(&[u8], &[u8], u64)> {
    let rest = key.strip_prefix(&[SPANS])?;
    let (names, start) = rest.split_at(rest.len().checked_sub(8)?);
    let mut parts = names.split(|b| *b == 0);
    let (room, user) = (parts.next()?, parts.next()?);
    Some((room, user, u64::from_be_bytes(start.try_into().ok()?)))
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

/// Sorted, non-overlapping intervals covering `spans`.
fn union(mut spans: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    spans.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(spans.len());
    for (start, end) in spans {
        match merged.last_mut() {
            Some(last) if start <= last.1.saturating_add(1) => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    merged
}

impl KeyedArchive {
    /// The spans of `user` in `room`.
    fn spans_of(&self, room: &str, user: &str) -> Result<Vec<(u64, u64)>, ArchiveError> {
        let mut spans = Vec::new();
        for entry in scan_prefix(&*self.tree, &prefix(Some(SPANS), &[room, user])) {
            let (k, v) = entry.map_err(failed("read"))?;
            spans.push((id_of(&k), id_of(&v)));
        }
        Ok(union(spans))
    }

    /// One page over the key ranges `ranges` (ascending, inclusive), read backward when
    /// `backward` (the last page first).
    fn page(&self, ranges: &[(Vec<u8>, Vec<u8>)], backward: bool, max: usize) -> Result<Page, ArchiveError> {
        // One more than the page, to know whether the page reaches the end.
        let mut items = Vec::with_capacity(max.min(64) + 1);
        let mut take = |entry: Result<(Vec<u8>, Vec<u8>), BackendError>| -> Result<bool, ArchiveError> {
            let (k, v) = entry.map_err(failed("read"))?;
            let id = id_of(&k);
            match decode(id, &v) {
                Some(item) => items.push(item),
                None => tracing::warn!(id, "an archived message cannot be read; skipped"),
            }
            Ok(items.len() > max)
        };
        'ranges: for (from, to) in ordered(ranges, backward) {
            for entry in self.tree.range(Bound::Included(from.as_slice()), Bound::Included(to.as_slice()), backward) {
                if take(entry)? {
                    break 'ranges;
                }
            }
        }
        let complete = items.len() <= max;
        items.truncate(max);
        if backward {
            items.reverse();
        }
        Ok(Page { items, complete })
    }

    /// Removes the lines of `room` no span of any user covers; how many.
    fn collect_garbage(&mut self, room: &str, settled: u64) -> Result<u64, ArchiveError> {
        let mut spans = Vec::new();
        for entry in scan_prefix(&*self.tree, &prefix(Some(SPANS), &[room])) {
            let (k, v) = entry.map_err(failed("read"))?;
            spans.push((id_of(&k), id_of(&v)));
        }
        let covered = union(spans);
        let mut batch = Batch::default();
        let mut removed = 0;
        // Both in ascending order: one walk.
        let mut spans = covered.iter().peekable();
        for entry in scan_prefix(&*self.tree, &prefix(Some(LINES), &[room])) {
            let (k, _) = entry.map_err(failed("read"))?;
            let id = id_of(&k);
            if id > settled {
                // Its reader's span may not be written yet.
                break;
            }
            while spans.next_if(|(_, end)| *end < id).is_some() {}
            if spans.peek().is_none_or(|(start, _)| *start > id) {
                batch.remove(k);
                removed += 1;
            }
        }
        self.tree.apply(batch).map_err(failed("delete"))?;
        Ok(removed)
    }

    /// Removes every key of `prefix` whose id is below `oldest` (by age) or past the
    /// newest `keep` (by count); how many.
    fn cut(&mut self, prefix: &[u8], oldest: Option<u64>, keep: Option<u64>) -> Result<u64, ArchiveError> {
        let mut batch = Batch::default();
        let mut removed = 0;
        if let Some(oldest) = oldest {
            for entry in self.tree.range(Bound::Included(key(prefix, 0).as_slice()), Bound::Excluded(key(prefix, oldest).as_slice()), false) {
                batch.remove(entry.map_err(failed("read"))?.0);
                removed += 1;
            }
        }
        if let Some(keep) = keep {
            let newest = self.tree.range(Bound::Included(key(prefix, oldest.unwrap_or(0)).as_slice()), Bound::Included(key(prefix, u64::MAX).as_slice()), true);
            for entry in newest.skip(usize::try_from(keep).unwrap_or(usize::MAX)) {
                batch.remove(entry.map_err(failed("read"))?.0);
                removed += 1;
            }
        }
        self.tree.apply(batch).map_err(failed("delete"))?;
        Ok(removed)
    }

    /// The prefixes (a key without its id) of the keys from `from` on while `within`
    /// holds, each once.
    fn scopes(&self, from: &[u8], within: impl Fn(&[u8]) -> bool) -> Result<Vec<Vec<u8>>, ArchiveError> {
        let mut scopes = Vec::new();
        let mut next = Bound::Included(from.to_vec());
        while let Some(entry) = self.tree.range(bound_ref(&next), Bound::Unbounded, false).next() {
            let (first, _) = entry.map_err(failed("read"))?;
            if !within(&first) {
                break;
            }
            let Some(scope) = first.len().checked_sub(8).map(|at| first[..at].to_vec()) else { break };
            next = Bound::Excluded(key(&scope, u64::MAX));
            scopes.push(scope);
        }
        Ok(scopes)
    }
}

/// `ranges` in reading order.
fn ordered(ranges: &[(Vec<u8>, Vec<u8>)], backward: bool) -> Box<dyn Iterator<Item = &(Vec<u8>, Vec<u8>)> + '_> {
    if backward {
        Box::new(ranges.iter().rev())
    } else {
        Box::new(ranges.iter())
    }
}

impl ArchiveBackend for KeyedArchive {
    fn write(&mut self, writes: &[Write]) -> Result<(), ArchiveError> {
        let mut batch = Batch::default();
        let mut last = 0;
        for write in writes {
            match write {
                Write::Private(entry) => {
                    let value = encode(entry.direction, &entry.who, &entry.body);
                    batch.insert(key(&private_scope(&entry.user, &Conversation::AllPrivate), entry.id), value.clone());
                    batch.insert(key(&private_scope(&entry.user, &entry.conversation), entry.id), value);
                    last = last.max(entry.id);
                }
                Write::Line { room, id, who, body } => {
                    batch.insert(key(&prefix(Some(LINES), &[room]), *id), encode(Direction::Room, who, body));
                    last = last.max(*id);
                }
                Write::Span { room, user, start, end } => {
                    batch.insert(key(&prefix(Some(SPANS), &[room, user]), *start), end.to_be_bytes());
                }
            }
        }
        if last > 0 {
            batch.insert(LAST_ID_KEY, last.max(self.last_id()?).to_be_bytes());
        }
        self.tree.apply(batch).map_err(failed("write"))
    }

    fn query(&self, query: &Query) -> Result<Page, ArchiveError> {
        // The ids the query covers, inclusive.
        let low = query.start.unwrap_or(0).max(query.after.map_or(0, |a| a.saturating_add(1)));
        let high = query.end.unwrap_or(u64::MAX).min(match query.before {
            Some(Some(before)) => before.saturating_sub(1),
            _ => u64::MAX,
        });
        let max = query.max.min(MAX_PAGE);
        if low > high || query.before == Some(Some(0)) {
            return Ok(Page { items: Vec::new(), complete: true });
        }
        let ranges: Vec<(Vec<u8>, Vec<u8>)> = match &query.conversation {
            Conversation::Room(room) => {
                let log = prefix(Some(LINES), &[room]);
                self.spans_of(room, &query.user)?
                    .into_iter()
                    .filter_map(|(start, end)| {
                        let (from, to) = (start.max(low), end.min(high));
                        (from <= to).then(|| (key(&log, from), key(&log, to)))
                    })
                    .collect()
            }
            private => {
                let scope = private_scope(&query.user, private);
                vec![(key(&scope, low), key(&scope, high))]
            }
        };
        self.page(&ranges, query.before.is_some(), max)
    }

    fn delete_user(&mut self, user: &str, settled: u64) -> Result<u64, ArchiveError> {
        let mut removed = 0;
        let mut batch = Batch::default();
        for entry in scan_prefix(&*self.tree, &prefix(None, &[user])) {
            batch.remove(entry.map_err(failed("read"))?.0);
            removed += 1;
        }
        let mut rooms = Vec::new();
        for entry in scan_prefix(&*self.tree, &[SPANS]) {
            let (k, _) = entry.map_err(failed("read"))?;
            if let Some((room, owner, _)) = parse_span(&k) {
                if owner == user.as_bytes() {
                    if !rooms.iter().any(|r: &String| r.as_bytes() == room) {
                        rooms.push(String::from_utf8_lossy(room).into_owned());
                    }
                    batch.remove(k.clone());
                }
            }
        }
        self.tree.apply(batch).map_err(failed("delete"))?;
        for room in rooms {
            removed += self.collect_garbage(&room, settled)?;
        }
        Ok(removed)
    }

    fn trim(&mut self, retention: Retention, now: u64, settled: u64) -> Result<u64, ArchiveError> {
        let oldest = retention.max_age.map(|age| now.saturating_sub(age.as_micros() as u64));
        let mut removed = 0;
        // Channel logs: by age and count, then what no span covers any more.
        for log in self.scopes(&[LINES], |k| k.first() == Some(&LINES))? {
            removed += self.cut(&log, oldest, retention.max_count)?;
            let room = String::from_utf8_lossy(&log[1..log.len() - 1]).into_owned();
            removed += self.collect_garbage(&room, settled)?;
        }
        // Spans that end before the age limit cover nothing.
        if let Some(oldest) = oldest {
            let mut batch = Batch::default();
            for entry in scan_prefix(&*self.tree, &[SPANS]) {
                let (k, v) = entry.map_err(failed("read"))?;
                if id_of(&v) < oldest {
                    batch.remove(k);
                }
            }
            self.tree.apply(batch).map_err(failed("delete"))?;
        }
        // Private conversations.
        for scope in self.scopes(USERS_FROM, |_| true)? {
            removed += self.cut(&scope, oldest, retention.max_count)?;
        }
        Ok(removed)
    }

    fn last_id(&self) -> Result<u64, ArchiveError> {
        let last = self.tree.get(LAST_ID_KEY).map_err(failed("read"))?;
        Ok(last.and_then(|v| v.as_slice().try_into().ok()).map_or(0, u64::from_be_bytes))
    }

    fn flush(&mut self) -> Result<(), ArchiveError> {
        self.tree.flush().map_err(failed("flush"))
    }
}

#[cfg(test)]
mod tests {
    use super::super::Entry;
    use super::*;

    fn archive() -> (KeyedArchive, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        (KeyedArchive::new(Box::new(crate::store::sled::SledTree(db.open_tree("archive").unwrap()))), dir)
    }

    fn room() -> String {
        let Conversation::Room(room) = Conversation::room("irc.x", "#rust") else { unreachable!() };
        room
    }

    fn line(room: &str, id: u64, body: &str) -> Write {
        Write::Line { room: room.into(), id, who: "nick".into(), body: body.into() }
    }

    fn span(room: &str, user: &str, start: u64, end: u64) -> Write {
        Write::Span { room: room.into(), user: user.into(), start, end }
    }

    fn query(conversation: Conversation) -> Query {
        Query { user: "alice@x".into(), conversation, start: None, end: None, after: None, before: None, max: 10 }
    }

    fn ids(page: &Page) -> Vec<u64> {
        page.items.iter().map(|i| i.id).collect()
    }

    /// Lines 10..=250 of #rust; alice got them all, bob 100..=150 and 200..=250;
    /// another room and a user whose JID is a prefix of alice's around.
    fn filled() -> (KeyedArchive, tempfile::TempDir) {
        let (mut archive, dir) = archive();
        let mut writes: Vec<Write> = (1..=25).map(|n| line(&room(), n * 10, &format!("line {n}"))).collect();
        writes.push(span(&room(), "alice@x", 10, 250));
        writes.push(span(&room(), "bob@x", 100, 150));
        writes.push(span(&room(), "bob@x", 200, 250));
        let Conversation::Room(other) = Conversation::room("irc.x", "#rusty") else { unreachable!() };
        writes.push(line(&other, 55, "other room"));
        writes.push(span(&other, "alice@x", 55, 55));
        writes.push(span(&room(), "alice@xx", 10, 20));
        archive.write(&writes).unwrap();
        (archive, dir)
    }

    #[test]
    fn pages_forward_with_after_and_backward_with_before() {
        let (archive, _dir) = filled();
        let room = Conversation::Room(room());
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
    fn a_user_sees_the_lines_of_their_spans_only_paged_across_the_gap() {
        let (archive, _dir) = filled();
        let bob = |q: Query| Query { user: "bob@x".into(), ..q };
        let room = Conversation::Room(room());
        let all = archive.query(&bob(Query { max: 100, ..query(room.clone()) })).unwrap();
        assert_eq!(ids(&all), [100, 110, 120, 130, 140, 150, 200, 210, 220, 230, 240, 250]);
        let across = archive.query(&bob(Query { after: Some(130), max: 4, ..query(room.clone()) })).unwrap();
        assert_eq!((ids(&across), across.complete), (vec![140, 150, 200, 210], false));
        let back = archive.query(&bob(Query { before: Some(Some(210)), max: 3, ..query(room.clone()) })).unwrap();
        assert_eq!((ids(&back), back.complete), (vec![140, 150, 200], false));
        let nobody = Query { user: "carol@x".into(), ..query(room) };
        assert_eq!(archive.query(&nobody).unwrap(), Page { items: vec![], complete: true });
    }

    #[test]
    fn a_time_range_is_a_range_of_ids_and_combines_with_paging() {
        let (archive, _dir) = filled();
        let room = Conversation::Room(room());
        let range = archive.query(&Query { start: Some(35), end: Some(80), ..query(room.clone()) }).unwrap();
        assert_eq!(ids(&range), [40, 50, 60, 70, 80]);
        assert!(range.complete);
        let paged = archive.query(&Query { start: Some(35), end: Some(80), before: Some(None), max: 2, ..query(room) }).unwrap();
        assert_eq!(ids(&paged), [70, 80]);
        assert!(!paged.complete);
    }

    #[test]
    fn private_entries_read_back_as_written_and_also_under_all_private() {
        let (mut archive, _dir) = archive();
        let bob = Conversation::private("Bob%irc.x@gw");
        archive
            .write(&[
                Write::Private(Entry { id: 1, user: "alice@x".into(), conversation: bob, direction: Direction::FromContact, who: "bob%irc.x@gw".into(), body: "hi <&> é".into() }),
                Write::Private(Entry { id: 2, user: "alice@x".into(), conversation: Conversation::private("carol%irc.x@gw"), direction: Direction::ToContact, who: "carol%irc.x@gw".into(), body: String::new() }),
            ])
            .unwrap();
        let with_bob = archive.query(&query(Conversation::private("bob%IRC.x@gw"))).unwrap();
        assert_eq!(with_bob.items, [Item { id: 1, direction: Direction::FromContact, who: "bob%irc.x@gw".into(), body: "hi <&> é".into() }]);
        let all = archive.query(&query(Conversation::AllPrivate)).unwrap();
        assert_eq!(ids(&all), [1, 2]);
        assert_eq!(all.items[1].direction, Direction::ToContact);
        assert_eq!(archive.last_id().unwrap(), 2);
    }

    #[test]
    fn lines_after_the_settled_id_are_never_collected_their_spans_may_be_in_memory() {
        let (mut archive, _dir) = filled();
        // A line said after the spans were last written: its reader's span is not on disk.
        archive.write(&[line(&room(), 260, "just said")]).unwrap();
        archive.trim(Retention { max_age: None, max_count: None }, 1000, 250).unwrap();
        let bob = Query { user: "bob@x".into(), max: 100, ..query(Conversation::Room(room())) };
        archive.write(&[span(&room(), "bob@x", 200, 260)]).unwrap();
        assert_eq!(ids(&archive.query(&bob).unwrap()).last(), Some(&260), "kept until its span was written");
        archive.delete_user("alice@x", 250).unwrap();
        assert_eq!(ids(&archive.query(&bob).unwrap()).last(), Some(&260));
        // Settled past it with no span covering it, it goes.
        archive.write(&[line(&room(), 270, "nobody's")]).unwrap();
        let removed = archive.trim(Retention { max_age: None, max_count: None }, 1000, 270).unwrap();
        assert_eq!(removed, 1);
    }

    #[test]
    fn deleting_a_user_removes_their_spans_and_the_lines_nobody_else_got() {
        let (mut archive, _dir) = filled();
        archive.write(&[Write::Private(Entry { id: 7, user: "alice@x".into(), conversation: Conversation::private("b@gw"), direction: Direction::ToContact, who: "b@gw".into(), body: "x".into() })]).unwrap();
        let removed = archive.delete_user("alice@x", u64::MAX).unwrap();
        // 2 private keys; in #rust the lines outside bob's and alice@xx's spans (30..=90,
        // 160..=190: 11); #rusty's line.
        assert_eq!(removed, 2 + 11 + 1);
        assert!(archive.query(&query(Conversation::Room(room()))).unwrap().items.is_empty());
        let bob = Query { user: "bob@x".into(), max: 100, ..query(Conversation::Room(room())) };
        assert_eq!(archive.query(&bob).unwrap().items.len(), 12, "bob keeps what he got");
        let prefix_user = Query { user: "alice@xx".into(), ..query(Conversation::Room(room())) };
        assert_eq!(ids(&archive.query(&prefix_user).unwrap()), [10, 20]);
        assert_eq!(archive.last_id().unwrap(), 250);
    }

    #[test]
    fn trimming_keeps_the_newest_per_log_and_nothing_too_old() {
        let (mut archive, _dir) = filled();
        let removed = archive.trim(Retention { max_age: None, max_count: Some(5) }, 1000, u64::MAX).unwrap();
        assert_eq!(removed, 20);
        assert_eq!(ids(&archive.query(&query(Conversation::Room(room()))).unwrap()), [210, 220, 230, 240, 250]);
        let Conversation::Room(other) = Conversation::room("irc.x", "#rusty") else { unreachable!() };
        assert_eq!(ids(&archive.query(&query(Conversation::Room(other))).unwrap()), [55]);
        let removed = archive.trim(Retention { max_age: Some(std::time::Duration::from_micros(30)), max_count: None }, 255, u64::MAX).unwrap();
        // Older than 225: 210 and 220 of #rust, 55 of #rusty.
        assert_eq!(removed, 3);
        assert_eq!(ids(&archive.query(&query(Conversation::Room(room()))).unwrap()), [230, 240, 250]);
    }

    #[test]
    fn an_unreadable_value_is_skipped_not_fatal() {
        let (mut archive, _dir) = filled();
        let mut batch = Batch::default();
        batch.insert(key(&prefix(Some(LINES), &[&room()]), 15), [9u8]);
        archive.tree.apply(batch).unwrap();
        let page = archive.query(&Query { max: 3, ..query(Conversation::Room(room())) }).unwrap();
        assert_eq!(ids(&page), [10, 20, 30]);
    }

    #[test]
    fn spans_merge_and_parse_back() {
        assert_eq!(union(vec![(5, 9), (1, 3), (4, 4), (20, 30), (25, 26)]), [(1, 9), (20, 30)]);
        let k = key(&prefix(Some(SPANS), &["irc.x/#c", "a@x"]), 42);
        assert_eq!(parse_span(&k), Some((&b"irc.x/#c"[..], &b"a@x"[..], 42)));
    }
}
