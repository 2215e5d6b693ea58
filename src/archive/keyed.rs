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
//!
//! The lines of one channel written in one batch share one value, a block, under the
//! first one's id: a busy channel costs the database one write per batch rather than
//! one per line (sled's insert was three quarters of the archive thread's time). A
//! block is [`BLOCK`], then per line its id (8 bytes), the length of its entry (4 bytes)
//! and the entry as above; a line alone is written as an entry. A block's lines are in
//! id order and within [`BLOCK_SPAN`] of its first, which is how a read from id `x` knows
//! to start at the key of `x - BLOCK_SPAN`; blocks of different batches may overlap (a
//! line can reach the thread after later ones did), so a read puts what it reads in
//! order before handing it out.

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
/// The first byte of a block's value (an entry's first byte is its direction, 0 to 2).
const BLOCK: u8 = 0x10;
/// A block's lines are at most this many µs of id after its first (a 200 ms batch of a
/// busy channel makes a few blocks). A read backward holds what it read until a
/// value this much older comes, so a larger span would cost every "last 50 lines" query
/// that much more of a busy channel's lines read.
const BLOCK_SPAN: u64 = 60_000;
/// Lines in one block at most, and its size at most: a query reads whole blocks.
const BLOCK_LINES: usize = 64;
const BLOCK_BYTES: usize = 16 * 1024;

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

/// A line of a log (or a private entry): its id and its entry as [`encode`] wrote it.
type Raw<'a> = (u64, &'a [u8]);

/// The lines of the value under a key whose id is `first`, in id order: the entry itself,
/// or a block's lines. `None` when a block cannot be read.
fn lines_of(first: u64, value: &[u8]) -> Option<Vec<Raw<'_>>> {
    let Some(mut rest) = value.strip_prefix(&[BLOCK]) else { return Some(vec![(first, value)]) };
    let mut lines = Vec::new();
    while !rest.is_empty() {
        let id = u64::from_be_bytes(rest.get(..8)?.try_into().ok()?);
        let length = usize::try_from(u32::from_be_bytes(rest.get(8..12)?.try_into().ok()?)).ok()?;
        let end = length.checked_add(12)?;
        lines.push((id, rest.get(12..end)?));
        rest = rest.get(end..)?;
    }
    Some(lines)
}

/// The value holding `lines` (in id order, at least one): the entry when alone, else a
/// block.
fn value_of(lines: &[Raw<'_>]) -> Vec<u8> {
    if let [(_, entry)] = lines {
        return entry.to_vec();
    }
    let mut value = Vec::with_capacity(1 + lines.iter().map(|(_, entry)| 12 + entry.len()).sum::<usize>());
    value.push(BLOCK);
    for (id, entry) in lines {
        value.extend_from_slice(&id.to_be_bytes());
        // An entry is a nick and one message: far below 4 GiB.
        value.extend_from_slice(&(entry.len() as u32).to_be_bytes());
        value.extend_from_slice(entry);
    }
    value
}

/// `lines` (one log's, in id order) cut into blocks: runs within [`BLOCK_SPAN`] of their
/// first line, of at most [`BLOCK_LINES`] lines and [`BLOCK_BYTES`] (or one line).
fn blocks<'a, 'b>(lines: &'a [Raw<'b>]) -> Vec<&'a [Raw<'b>]> {
    let mut blocks = Vec::new();
    let mut rest = lines;
    while let Some(&(first, _)) = rest.first() {
        let mut bytes = 0;
        let length = rest
            .iter()
            .take(BLOCK_LINES)
            .take_while(|(id, entry)| {
                bytes += 12 + entry.len();
                id.saturating_sub(first) <= BLOCK_SPAN && bytes <= BLOCK_BYTES
            })
            .count()
            .max(1);
        let (block, after) = rest.split_at(length);
        blocks.push(block);
        rest = after;
    }
    blocks
}

/// Puts under `scope` the lines of a value (under `key_now`, `lines` of them) that are kept,
/// `kept`, in place of the value: under the first kept line's id, or none when none is.
/// How many lines went.
fn replace(batch: &mut Batch, scope: &[u8], key_now: Vec<u8>, lines: usize, kept: &[Raw<'_>]) -> u64 {
    if kept.len() == lines {
        return 0;
    }
    // A later write of the same key wins: removing then putting it again is a rewrite.
    batch.remove(key_now);
    if let Some(&(first, _)) = kept.first() {
        batch.insert(key(scope, first), value_of(kept));
    }
    (lines - kept.len()) as u64
}

/// Lines read but not yet handed out by a query, because a value read later may hold one
/// that comes between them (see the module's documentation).
#[derive(Default)]
struct Waiting {
    /// The values read so far, which the lines point into.
    values: Vec<Vec<u8>>,
    /// Each line's id, value (index in `values`) and the place of its entry there.
    lines: Vec<(u64, usize, std::ops::Range<usize>)>,
}

impl Waiting {
    /// Keeps the lines of `value` (the value under `first`) whose ids are within `ids`.
    fn add(&mut self, first: u64, value: Vec<u8>, ids: std::ops::RangeInclusive<u64>) {
        let Some(lines) = lines_of(first, &value) else {
            return tracing::warn!(first, "an archived block cannot be read; skipped");
        };
        let at = self.values.len();
        let start = value.as_ptr() as usize;
        let wanted = lines.iter().filter(|(id, _)| ids.contains(id));
        let places: Vec<_> = wanted.map(|(id, entry)| (*id, at, entry.as_ptr() as usize - start..entry.as_ptr() as usize - start + entry.len())).collect();
        if !places.is_empty() {
            self.lines.extend(places);
            self.values.push(value);
        }
    }

    /// Hands out to `items`, in reading order (descending when `backward`), the lines no
    /// value still to be read can come before (those `ready` says so of), until `items`
    /// holds `up_to`.
    fn release(&mut self, items: &mut Vec<Item>, up_to: usize, backward: bool, ready: impl Fn(u64) -> bool) {
        if !self.lines.iter().any(|(id, ..)| ready(*id)) {
            return;
        }
        self.lines.sort_unstable_by_key(|&(id, ..)| if backward { u64::MAX - id } else { id });
        let count = self.lines.iter().take_while(|(id, ..)| ready(*id)).count().min(up_to.saturating_sub(items.len()));
        for (id, value, place) in self.lines.drain(..count) {
            match self.values.get(value).and_then(|value| value.get(place)).and_then(|entry| decode(id, entry)) {
                Some(item) => items.push(item),
                None => tracing::warn!(id, "an archived message cannot be read; skipped"),
            }
        }
        if self.lines.is_empty() {
            self.values.clear();
        }
    }
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

    /// One page of the lines of `scope` (a log or a private conversation) whose ids are
    /// within `ranges` (ascending, disjoint, inclusive), read backward when `backward`
    /// (the last page first).
    fn page(&self, scope: &[u8], ranges: &[(u64, u64)], backward: bool, max: usize) -> Result<Page, ArchiveError> {
        // One more than the page, to know whether the page reaches the end.
        let up_to = max + 1;
        let mut items = Vec::with_capacity(up_to.min(65));
        let mut waiting = Waiting::default();
        for &(from, to) in ordered(ranges, backward) {
            let (low, high) = (key(scope, from.saturating_sub(BLOCK_SPAN)), key(scope, to));
            for entry in self.tree.range(Bound::Included(&low), Bound::Included(&high), backward) {
                let (k, value) = entry.map_err(failed("read"))?;
                let first = id_of(&k);
                // Every value from here on holds lines from `first` on (reading forward),
                // or up to `first + BLOCK_SPAN` (backward): the waiting lines past that
                // are in their place.
                waiting.release(&mut items, up_to, backward, |id| if backward { id > first.saturating_add(BLOCK_SPAN) } else { id < first });
                if items.len() >= up_to {
                    break;
                }
                waiting.add(first, value, from..=to);
            }
            waiting.release(&mut items, up_to, backward, |_| true);
            if items.len() >= up_to {
                break;
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
        let log = prefix(Some(LINES), &[room]);
        let mut batch = Batch::default();
        let mut removed = 0;
        for entry in scan_prefix(&*self.tree, &log) {
            let (k, value) = entry.map_err(failed("read"))?;
            let first = id_of(&k);
            if first > settled {
                // Its readers' spans may not be written yet (and so every later value's).
                break;
            }
            let is_covered = |id: u64| covered.get(covered.partition_point(|(_, end)| *end < id)).is_some_and(|(start, _)| *start <= id);
            let lines = lines_of(first, &value).unwrap_or_else(|| vec![(first, value.as_slice())]);
            let kept: Vec<Raw<'_>> = lines.iter().copied().filter(|&(id, _)| id > settled || is_covered(id)).collect();
            removed += replace(&mut batch, &log, k, lines.len(), &kept);
        }
        self.tree.apply(batch).map_err(failed("delete"))?;
        Ok(removed)
    }

    /// Removes the lines of `scope` older than `oldest` (by age) or past the newest `keep`
    /// (by count); how many. (Counted newest value first: a line that reached the
    /// archive late, in a value of its own, counts as newer than the lines of the value
    /// it came between.)
    fn cut(&mut self, scope: &[u8], oldest: Option<u64>, keep: Option<u64>) -> Result<u64, ArchiveError> {
        let oldest = oldest.unwrap_or(0);
        let mut batch = Batch::default();
        let mut removed = 0;
        // Without a count, only the values that may hold lines too old.
        let newest = key(scope, if keep.is_some() { u64::MAX } else { oldest });
        let mut left = keep.map_or(usize::MAX, |keep| usize::try_from(keep).unwrap_or(usize::MAX));
        for entry in self.tree.range(Bound::Included(&key(scope, 0)), Bound::Included(&newest), true) {
            let (k, value) = entry.map_err(failed("read"))?;
            let first = id_of(&k);
            let lines = lines_of(first, &value).unwrap_or_else(|| vec![(first, value.as_slice())]);
            // In id order: the old ones first, the newest last.
            let young = lines.partition_point(|&(id, _)| id < oldest);
            let from = young.max(lines.len().saturating_sub(left));
            let kept = lines.get(from..).unwrap_or_default();
            left -= kept.len();
            removed += replace(&mut batch, scope, k, lines.len(), kept);
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
            match first.len().checked_sub(8).map(|at| &first[..at]) {
                Some(scope) if scope.len() > from.len() => {
                    next = Bound::Excluded(key(scope, u64::MAX));
                    scopes.push(scope.to_vec());
                }
                // Too short to hold a scope: not a key the archive wrote (a damaged or
                // foreign row), passed over so the scopes after it are still found.
                _ => next = Bound::Excluded(first.to_vec()),
            }
        }
        Ok(scopes)
    }
}

/// `ranges` in reading order.
fn ordered(ranges: &[(u64, u64)], backward: bool) -> Box<dyn Iterator<Item = &(u64, u64)> + '_> {
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
        // Channel lines, gathered into blocks per log.
        let mut lines: Vec<(&str, u64, Vec<u8>)> = Vec::new();
        for write in writes {
            match write {
                Write::Private(entry) => {
                    let value = encode(entry.direction, &entry.who, &entry.body);
                    batch.insert(key(&private_scope(&entry.user, &Conversation::AllPrivate), entry.id), value.clone());
                    batch.insert(key(&private_scope(&entry.user, &entry.conversation), entry.id), value);
                    last = last.max(entry.id);
                }
                Write::Line { room, id, who, body } => {
                    lines.push((room.as_str(), *id, encode(Direction::Room, who, body)));
                    last = last.max(*id);
                }
                Write::Span { room, user, start, end } => {
                    batch.insert(key(&prefix(Some(SPANS), &[room, user]), *start), end.to_be_bytes());
                }
            }
        }
        lines.sort_unstable_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        for same_log in lines.chunk_by(|a, b| a.0 == b.0) {
            let Some(&(room, ..)) = same_log.first() else { continue };
            let log = prefix(Some(LINES), &[room]);
            let raw: Vec<Raw<'_>> = same_log.iter().map(|(_, id, entry)| (*id, entry.as_slice())).collect();
            for block in blocks(&raw) {
                if let Some(&(first, _)) = block.first() {
                    batch.insert(key(&log, first), value_of(block));
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
        let (scope, ranges) = match &query.conversation {
            Conversation::Room(room) => {
                let spans = self.spans_of(room, &query.user)?;
                let within = spans.into_iter().filter_map(|(start, end)| {
                    let (from, to) = (start.max(low), end.min(high));
                    (from <= to).then_some((from, to))
                });
                (prefix(Some(LINES), &[room]), within.collect())
            }
            private => (private_scope(&query.user, private), vec![(low, high)]),
        };
        self.page(&scope, &ranges, query.before.is_some(), max)
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
            // `scopes` only gives logs longer than their kind byte: one byte of room at least.
            let room = String::from_utf8_lossy(log.get(1..log.len() - 1).unwrap_or_default()).into_owned();
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
    fn keys_too_short_for_a_log_are_passed_over_by_trimming() {
        let (mut archive, _dir) = filled();
        let mut batch = Batch::default();
        // A log kind byte and an id, nothing between (8 and 9 bytes): no archive wrote these.
        batch.insert([LINES, 0, 0, 0, 0, 0, 0, 0].to_vec(), [9u8]);
        batch.insert([LINES, 0, 0, 0, 0, 0, 0, 0, 1].to_vec(), [9u8]);
        archive.tree.apply(batch).unwrap();
        let removed = archive.trim(Retention { max_age: None, max_count: Some(5) }, 1000, u64::MAX).unwrap();
        assert_eq!(removed, 20, "the logs after them trimmed as before");
        assert_eq!(ids(&archive.query(&query(Conversation::Room(room()))).unwrap()), [210, 220, 230, 240, 250]);
    }

    /// How many values `room`'s log takes in the tree.
    fn values(archive: &KeyedArchive, room: &str) -> usize {
        scan_prefix(&*archive.tree, &prefix(Some(LINES), &[room])).count()
    }

    #[test]
    fn the_lines_of_one_batch_share_a_value_cut_by_span_count_and_size() {
        let (archive, _dir) = filled();
        assert_eq!(values(&archive, &room()), 1, "25 lines of one batch, one value");
        let entry = encode(Direction::Room, "nick", "hi");
        let close: Vec<Raw<'_>> = (0..200).map(|n| (1_000 + n, entry.as_slice())).collect();
        let sizes: Vec<usize> = blocks(&close).iter().map(|b| b.len()).collect();
        assert_eq!(sizes, [64, 64, 64, 8]);
        let spread: Vec<Raw<'_>> = [0, 10, BLOCK_SPAN, BLOCK_SPAN + 1, 3 * BLOCK_SPAN].iter().map(|&id| (id, entry.as_slice())).collect();
        let sizes: Vec<usize> = blocks(&spread).iter().map(|b| b.len()).collect();
        assert_eq!(sizes, [3, 1, 1]);
        let big = vec![b'x'; BLOCK_BYTES / 3];
        let heavy: Vec<Raw<'_>> = (0..5).map(|n| (n, big.as_slice())).collect();
        let sizes: Vec<usize> = blocks(&heavy).iter().map(|b| b.len()).collect();
        assert_eq!(sizes, [2, 2, 1]);
        let huge = vec![b'x'; 2 * BLOCK_BYTES];
        assert_eq!(blocks(&[(1, huge.as_slice())]).len(), 1, "a line bigger than a block is a block");
        // What a value holds reads back as written, alone or in a block.
        assert_eq!(lines_of(7, &value_of(&close[..1])), Some(vec![(7, entry.as_slice())]));
        assert_eq!(lines_of(1_000, &value_of(&close[..3])), Some(close[..3].to_vec()));
        assert_eq!(lines_of(1, &[BLOCK, 0, 0]), None);
    }

    #[test]
    fn values_written_one_line_each_read_back_among_blocks() {
        // An archive written before blocks: one value per line.
        let (mut archive, _dir) = archive();
        let log = prefix(Some(LINES), &[&room()]);
        let mut batch = Batch::default();
        for id in [10, 30, 50] {
            batch.insert(key(&log, id), encode(Direction::Room, "old", &format!("line {id}")));
        }
        archive.tree.apply(batch).unwrap();
        archive.write(&[line(&room(), 20, "new"), line(&room(), 40, "new"), line(&room(), 60, "new"), span(&room(), "alice@x", 10, 60)]).unwrap();
        let page = archive.query(&query(Conversation::Room(room()))).unwrap();
        assert_eq!(ids(&page), [10, 20, 30, 40, 50, 60]);
        assert_eq!(page.items[2].who, "old");
        let back = archive.query(&Query { before: Some(Some(50)), max: 2, ..query(Conversation::Room(room())) }).unwrap();
        assert_eq!((ids(&back), back.complete), (vec![30, 40], false));
    }

    #[test]
    fn trimming_and_collecting_rewrite_a_block_keeping_its_other_lines() {
        let (mut archive, _dir) = filled();
        // Alice leaves: bob's two spans keep 100..=150 and 200..=250, alice@xx's 10..=20.
        assert_eq!(archive.delete_user("alice@x", u64::MAX).unwrap(), 11 + 1);
        assert_eq!(values(&archive, &room()), 1);
        let bob = Query { user: "bob@x".into(), max: 100, ..query(Conversation::Room(room())) };
        assert_eq!(ids(&archive.query(&bob).unwrap()), [100, 110, 120, 130, 140, 150, 200, 210, 220, 230, 240, 250]);
        assert_eq!(archive.trim(Retention { max_age: None, max_count: Some(3) }, 1000, u64::MAX).unwrap(), 11);
        assert_eq!(ids(&archive.query(&bob).unwrap()), [230, 240, 250]);
        let kept: Vec<_> = scan_prefix(&*archive.tree, &prefix(Some(LINES), &[&room()])).map(|e| id_of(&e.unwrap().0)).collect();
        assert_eq!(kept, [230], "the block is now under its first line's id");
    }

    proptest::proptest! {
        /// Lines reach the archive's thread a little out of order, so blocks of different
        /// batches overlap: a query still reads every line once, in id order, page after
        /// page both ways.
        #[test]
        fn lines_written_out_of_order_page_in_id_order_both_ways(
            gaps in proptest::collection::vec(1u64..BLOCK_SPAN / 3, 1..120),
            swaps in proptest::collection::vec((0usize..120, 0usize..6), 0..40),
            cuts in proptest::collection::vec(0usize..120, 0..8),
            max in 1usize..20,
        ) {
            let (mut archive, _dir) = archive();
            let all: Vec<u64> = gaps.iter().scan(1_000u64, |id, gap| { *id += gap; Some(*id) }).collect();
            // The order the lines reach the thread: each moved a few places.
            let mut arrival = all.clone();
            for (at, by) in swaps {
                let (at, to) = (at % arrival.len(), (at + by) % arrival.len());
                arrival.swap(at, to);
            }
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % arrival.len()).collect();
            cuts.extend([0, arrival.len()]);
            cuts.sort_unstable();
            for batch in cuts.windows(2) {
                let writes: Vec<Write> = arrival[batch[0]..batch[1]].iter().map(|&id| line(&room(), id, &format!("{id}"))).collect();
                archive.write(&writes).unwrap();
            }
            archive.write(&[span(&room(), "alice@x", 0, u64::MAX)]).unwrap();
            let conversation = Conversation::Room(room());
            let (mut forward, mut after) = (Vec::new(), None);
            loop {
                let page = archive.query(&Query { after, max, ..query(conversation.clone()) }).unwrap();
                proptest::prop_assert!(page.items.iter().all(|item| item.body == item.id.to_string()));
                forward.extend(ids(&page));
                after = page.items.last().map(|item| item.id);
                if page.complete { break; }
            }
            proptest::prop_assert_eq!(&forward, &all);
            let (mut backward, mut before) = (Vec::new(), None);
            loop {
                let page = archive.query(&Query { before: Some(before), max, ..query(conversation.clone()) }).unwrap();
                backward.splice(0..0, ids(&page));
                before = page.items.first().map(|item| item.id);
                if page.complete { break; }
            }
            proptest::prop_assert_eq!(&backward, &all);
        }
    }

    #[test]
    fn spans_merge_and_parse_back() {
        assert_eq!(union(vec![(5, 9), (1, 3), (4, 4), (20, 30), (25, 26)]), [(1, 9), (20, 30)]);
        let k = key(&prefix(Some(SPANS), &["irc.x/#c", "a@x"]), 42);
        assert_eq!(parse_span(&k), Some((&b"irc.x/#c"[..], &b"a@x"[..], 42)));
    }
}
