//! Which lines of each channel each user got, worked out on the live path, so that a line
//! fifty users of the gateway get (each through their own IRC connection) is archived
//! once, and each user's archive is the runs of the channel's log they were there for.
//!
//! The first session to deliver a line (or the user who says it, when it is reflected)
//! appends it to the channel's log; the other sessions find it among the channel's
//! recent lines by speaker and text, a line each user takes once (`claims`), so the same
//! text said twice is two lines. Sessions need not agree on the order: a user's own line
//! is logged when they send it, before the server has placed it among the others.
//!
//! A user's span covers the log from the first line they took to the last; it ends, and
//! the next line starts a new one, when the room's `epoch` changes: the IRC side gives a
//! room a new epoch whenever the user may have missed lines (a new join, a dropped
//! connection), so a span never covers what a user was not there for. Pure: the writes it
//! decides go to the archive's thread.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher, RandomState};


use super::Write;

/// Lines of a channel always kept in memory for the other sessions to find.
const RECENT: usize = 64;
/// More are kept while they are this recent (µs): sessions read their sockets in turn,
/// so under a flood one may be thousands of lines behind another.
const MATCH_WINDOW: u64 = 30_000_000;
/// But never more than this many per channel (a flood of 10 s at the cut-off rate).
const MOST_RECENT: usize = 16_384;
/// Lines looked at from a reader's place before asking the index: a session gets the
/// lines in the server's order but not its user's own (logged as sent), and lines sent
/// by several users at once are logged in an order a little different from the server's.
const AHEAD: usize = 4;

/// The live state of every channel some user of the gateway is getting lines from.
#[derive(Debug, Default)]
pub struct Live {
    /// The channels, each in a slot that the rooms reading it keep (their [`Place`]), so
    /// that a delivery finds its channel and reader without hashing and comparing the
    /// room's key and the user's JID (strings a delivery otherwise reads from cold
    /// memory, a quarter of what the archive cost the live path).
    slots: Vec<Option<Channel>>,
    /// Slots whose channel was forgotten, taken again before `slots` grows.
    free: Vec<usize>,
    /// The slot of each channel by archive room key (`server/channel`): for a room's
    /// first line and for places gone stale.
    by_room: HashMap<String, usize>,
    /// The serial the next reader gets: a place names its reader's serial, so a place
    /// kept across the reader's removal (and the reuse of its bit, or of the channel's
    /// slot) is stale.
    next_serial: u64,
    /// Hashes speaker and text for `Log::index` (randomly keyed: IRC users choose
    /// the text).
    hasher: RandomState,
}

/// Where a room's reader is in [`Live`]: what a room keeps between deliveries (a new
/// room starts with none; [`Live::saw`] fills it in, and looks it up again when it went
/// stale).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    /// The channel's slot.
    slot: usize,
    /// The serial of the reader it was given for (see [`Live::next_serial`]).
    serial: u64,
    /// The reader's bit in the channel (given to another reader only well after this
    /// one is forgotten: [`Channel::retired`]).
    bit: usize,
}

#[derive(Debug, Default)]
struct Channel {
    /// Its archive room key (for the writes, and to leave `Live::by_room`).
    room: String,
    /// The channel's recent lines (apart from the readers, so that a delivery borrows
    /// its reader and the lines at once).
    log: Log,
    /// Each user's span in progress, by bit (see `Line::claims`); `None` once forgotten.
    readers: Vec<Option<Reader>>,
    /// The bit of each user reading, for a place gone stale and for `flush` by user.
    bits: HashMap<String, usize>,
    /// The bits of readers forgotten, each with the time (µs) from which no line a new
    /// reader can take still carries the old one's claim: then a new reader takes it, so
    /// that `readers` and every line's claims stay as long as the users reading at once,
    /// however many come and go while the channel stays in memory (months, for a busy
    /// always-on channel).
    retired: Vec<(usize, u64)>,
}

impl Channel {
    /// Forgets the reader of `bit`, whose bit goes to `retired` (see there); the reader.
    fn retire(&mut self, bit: usize) -> Option<Reader> {
        let reader = self.readers.get_mut(bit).and_then(Option::take)?;
        self.retired.push((bit, reader.bit_free_at()));
        Some(reader)
    }
}

/// The newest lines of a channel's log, and how to find one by speaker and text.
#[derive(Debug, Default)]
struct Log {
    /// The lines, oldest (lowest id) first, each with who took it: one place for
    /// everything a delivery reads and changes, next to the lines delivered just before.
    recent: VecDeque<Line>,
    /// The sequence number of `recent[0]` (each line pushed takes the next): how the
    /// index names a line, whatever left the front since.
    first: u64,
    /// The recent lines by the hash of speaker and text (their sequence numbers,
    /// ascending): one lookup finds a line without touching its text. The key is itself
    /// a keyed hash, so the map uses it as it is rather than hashing it again. (Two
    /// different lines share a 64-bit keyed hash with a chance of one in 2^64: then a
    /// user's copy of one would carry the other's id.)
    index: hashbrown::HashMap<u64, Seqs, Prehashed>,
}

/// A recent line.
#[derive(Debug)]
struct Line {
    /// Its archive id.
    id: u64,
    /// The hash of its speaker and text, to take it out of the index when it leaves.
    hash: u64,
    /// Whether an older recent line had the same hash when this one was pushed: only
    /// then may a reader's copy of this text be an older line, so only then must the
    /// index be asked rather than the line after the reader's last.
    repeated: bool,
    /// Which readers took this line (bit `Reader::bit`).
    claims: Claims,
}

/// The sequence numbers of the recent lines one hash names, ascending: nearly always
/// one (the same speaker saying the same text again is the exception), kept inline.
#[derive(Debug)]
struct Seqs {
    /// The oldest.
    first: u64,
    /// The others, oldest first (empty, so unallocated, for a line said once; a deque, so
    /// that the oldest leaves at once even when a flood repeats one text 16,384 times).
    more: VecDeque<u64>,
}

/// Builds [`PrehashedHasher`]s: for keys that already are keyed hashes.
#[derive(Debug, Default, Clone, Copy)]
struct Prehashed;

/// Takes a `u64` key, a keyed hash already, as its own hash.
#[derive(Debug, Default)]
struct PrehashedHasher(
    /// The key, which is the hash.
    u64,
);

impl Hasher for PrehashedHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys are hashed here; any other is folded in, still correctly.
        for byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*byte);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

impl BuildHasher for Prehashed {
    type Hasher = PrehashedHasher;

    fn build_hasher(&self) -> PrehashedHasher {
        PrehashedHasher::default()
    }
}

/// A set of reader bits, the first 64 without allocating.
#[derive(Debug, Default)]
struct Claims {
    first: u64,
    more: Vec<u64>,
}

impl Claims {
    fn has(&self, bit: usize) -> bool {
        match bit {
            0..64 => self.first & (1 << bit) != 0,
            _ => self.more.get(bit / 64 - 1).is_some_and(|word| word & (1 << (bit % 64)) != 0),
        }
    }

    fn add(&mut self, bit: usize) {
        if bit < 64 {
            self.first |= 1 << bit;
            return;
        }
        let word = bit / 64 - 1;
        if self.more.len() <= word {
            self.more.resize(word + 1, 0);
        }
        self.more[word] |= 1 << (bit % 64);
    }
}

/// A user's span in progress.
#[derive(Debug, Clone)]
struct Reader {
    /// Its serial (see [`Place::serial`]).
    serial: u64,
    /// The user's JID (for the span's writes).
    user: String,
    /// The room epoch the span belongs to.
    epoch: u64,
    /// The first line of the span.
    start: u64,
    /// The newest line the user took (the span's end).
    end: u64,
    /// The end last written to the archive.
    persisted: u64,
    /// When the user last got a line (µs), to forget idle readers.
    touched: u64,
    /// The sequence number (`Log::first`) after the line the user took last: sessions
    /// get a channel's lines in the server's order, so this is nearly always the next
    /// one they get, found without the index (whose lookups miss the cache when
    /// sessions are thousands of lines apart).
    next: u64,
}

impl Reader {
    /// When its bit may go to another reader: lines it took have ids up to about when it
    /// took them, and a line is taken only while younger than [`MATCH_WINDOW`] (twice
    /// that, for ids a flood ran ahead of the clock).
    fn bit_free_at(&self) -> u64 {
        self.end.max(self.touched).saturating_add(2 * MATCH_WINDOW)
    }

    /// Its span, if it moved since it was last written; then it counts as written.
    fn unwritten(&mut self, room: &str) -> Option<Write> {
        (self.end > self.persisted).then(|| {
            self.persisted = self.end;
            Write::Span { room: room.to_owned(), user: self.user.clone(), start: self.start, end: self.end }
        })
    }
}

impl Log {
    /// Takes for reader `bit` the oldest recent line hashed `hash`, logged at or after
    /// `oldest`, it has not taken yet: its id and sequence number. Looks first at the
    /// [`AHEAD`] lines from the one numbered `next`: a line there hashed `hash` whose
    /// text was not said shortly before (not `repeated`) is the oldest so hashed, so it
    /// is that line if the reader has not taken it. Else asks the index.
    fn take(&mut self, hash: u64, bit: usize, oldest: u64, next: u64) -> Option<(u64, u64)> {
        let first = self.first;
        let at = |seq: u64| usize::try_from(seq.checked_sub(first)?).ok();
        if let Some(from) = at(next) {
            for (seq, line) in (next..).zip(self.recent.range_mut(from.min(self.recent.len())..).take(AHEAD)) {
                if line.hash == hash {
                    if !line.repeated && line.id >= oldest && !line.claims.has(bit) {
                        line.claims.add(bit);
                        return Some((line.id, seq));
                    }
                    break;
                }
            }
        }
        let seqs = self.index.get(&hash)?;
        for &seq in std::iter::once(&seqs.first).chain(&seqs.more) {
            let Some(line) = at(seq).and_then(|at| self.recent.get_mut(at)) else { continue };
            if line.id >= oldest && !line.claims.has(bit) {
                line.claims.add(bit);
                return Some((line.id, seq));
            }
        }
        None
    }

    /// Adds the newest line `id` (hashed `hash`), taken by reader `bit`, and lets go of
    /// the oldest ones past [`RECENT`] that are older than `oldest`, or past `most`; its
    /// sequence number.
    fn push(&mut self, id: u64, hash: u64, bit: usize, oldest: u64, most: usize) -> u64 {
        let mut claims = Claims::default();
        claims.add(bit);
        let seq = self.first + self.recent.len() as u64;
        let mut repeated = true;
        self.index.entry(hash).and_modify(|seqs| seqs.more.push_back(seq)).or_insert_with(|| {
            repeated = false;
            Seqs { first: seq, more: VecDeque::new() }
        });
        self.recent.push_back(Line { id, hash, repeated, claims });
        while self.recent.len() > most || (self.recent.len() > RECENT && self.recent.front().is_some_and(|line| line.id < oldest)) {
            let Some(old) = self.recent.pop_front() else { break };
            // The oldest line is the first its hash names.
            if let hashbrown::hash_map::Entry::Occupied(mut seqs) = self.index.entry(old.hash) {
                match seqs.get_mut().more.pop_front() {
                    Some(next) => seqs.get_mut().first = next,
                    None => {
                        seqs.remove();
                    }
                }
            }
            self.first += 1;
        }
        seq
    }
}

/// The bit for a new reader of a channel with `readers` bits: one `retired` whose old
/// claims can no longer matter at `now`, else a new one.
fn free_bit(readers: usize, retired: &mut Vec<(usize, u64)>, now: u64) -> usize {
    match retired.iter().position(|&(_, free_at)| free_at <= now) {
        Some(at) => retired.swap_remove(at).0,
        None => readers,
    }
}

impl Live {
    /// `user` got (or said) the line `body` of `who` (empty: the server) in `room`, in
    /// the room's `epoch`, at `now` (µs): the line's id, an existing one when another
    /// user's session delivered it already, else `new_id()`. What must be written is
    /// pushed to `writes`. `place` is the room's: where its reader was last time (used
    /// when still valid, else looked up and kept there).
    #[allow(clippy::too_many_arguments, reason = "each is one fact of the line")]
    pub fn saw(&mut self, place: &mut Option<Place>, room: &str, user: &str, epoch: u64, who: &str, body: &str, now: u64, new_id: impl FnOnce() -> u64, writes: &mut Vec<Write>) -> u64 {
        let hash = self.hasher.hash_one((who, body));
        let oldest = now.saturating_sub(MATCH_WINDOW);
        let (slot, bit) = match place.filter(|place| self.holds(place)) {
            Some(place) => (place.slot, Some(place.bit)),
            None => self.find(room, user),
        };
        let channel = self.slots.get_mut(slot).and_then(Option::as_mut).expect("`holds` and `find` give a slot with a channel in it");
        let Channel { room, log, readers, bits, retired } = channel;
        // One reader has nobody to match with: a flood on a channel only one user of the
        // gateway is in costs [`RECENT`] lines, not [`MOST_RECENT`].
        let most = if bits.len() > 1 { MOST_RECENT } else { RECENT };
        let (bit, next) = match bit.and_then(|bit| readers.get(bit)?.as_ref().map(|reader| (bit, reader.next))) {
            Some(found) => found,
            None => (free_bit(readers.len(), retired, now), 0),
        };
        let (id, seq) = match log.take(hash, bit, oldest, next) {
            Some(taken) => taken,
            None => {
                let id = new_id();
                let seq = log.push(id, hash, bit, oldest, most);
                writes.push(Write::Line { room: room.clone(), id, who: who.to_owned(), body: body.to_owned() });
                (id, seq)
            }
        };
        let next = seq + 1;
        let serial = match readers.get_mut(bit).and_then(Option::as_mut) {
            Some(reader) if reader.epoch == epoch => {
                reader.end = reader.end.max(id);
                reader.start = reader.start.min(id);
                reader.touched = now;
                reader.next = next;
                reader.serial
            }
            Some(reader) => {
                writes.extend(reader.unwritten(room));
                *reader = Reader { serial: reader.serial, user: std::mem::take(&mut reader.user), epoch, start: id, end: id, persisted: id, touched: now, next };
                writes.push(Write::Span { room: room.clone(), user: reader.user.clone(), start: id, end: id });
                reader.serial
            }
            None => {
                self.next_serial += 1;
                let reader = Reader { serial: self.next_serial, user: user.to_owned(), epoch, start: id, end: id, persisted: id, touched: now, next };
                match readers.get_mut(bit) {
                    Some(free) => *free = Some(reader),
                    None => readers.push(Some(reader)),
                }
                bits.insert(user.to_owned(), bit);
                writes.push(Write::Span { room: room.clone(), user: user.to_owned(), start: id, end: id });
                self.next_serial
            }
        };
        *place = Some(Place { slot, serial, bit });
        id
    }

    /// Whether `place` still names the reader it was given for.
    fn holds(&self, place: &Place) -> bool {
        matches!(self.slots.get(place.slot), Some(Some(channel)) if matches!(channel.readers.get(place.bit), Some(Some(reader)) if reader.serial == place.serial))
    }

    /// The slot of `room` (made for it when it has none) and `user`'s bit there, if any.
    fn find(&mut self, room: &str, user: &str) -> (usize, Option<usize>) {
        if let Some(&slot) = self.by_room.get(room) {
            let bit = self.slots.get(slot).and_then(Option::as_ref).and_then(|channel| channel.bits.get(user).copied());
            return (slot, bit);
        }
        let channel = Channel { room: room.to_owned(), ..Channel::default() };
        let slot = match self.free.pop() {
            Some(slot) => {
                if let Some(free) = self.slots.get_mut(slot) {
                    *free = Some(channel);
                }
                slot
            }
            None => {
                self.slots.push(Some(channel));
                self.slots.len() - 1
            }
        };
        self.by_room.insert(room.to_owned(), slot);
        (slot, None)
    }

    /// The channels in memory.
    fn channels(&mut self) -> impl Iterator<Item = &mut Channel> {
        self.slots.iter_mut().flatten()
    }

    /// The spans of `user` (every user when `None`) whose end moved since it was last
    /// written.
    pub fn flush(&mut self, user: Option<&str>, writes: &mut Vec<Write>) {
        for channel in self.channels() {
            let Channel { room, readers, bits, .. } = channel;
            match user {
                Some(user) => {
                    if let Some(reader) = bits.get(user).and_then(|&bit| readers.get_mut(bit)?.as_mut()) {
                        writes.extend(reader.unwritten(room));
                    }
                }
                None => writes.extend(readers.iter_mut().flatten().filter_map(|reader| reader.unwritten(room))),
            }
        }
    }

    /// Forgets the spans of `user` (unregistered), after writing them.
    pub fn forget_user(&mut self, user: &str, writes: &mut Vec<Write>) {
        self.flush(Some(user), writes);
        for channel in self.channels() {
            if let Some(bit) = channel.bits.remove(user) {
                channel.retire(bit);
            }
        }
    }

    /// Forgets readers who got nothing since `before` (µs), after writing their spans,
    /// and the channels nobody reads: memory for channels in use only.
    pub fn forget_idle(&mut self, before: u64, writes: &mut Vec<Write>) {
        self.flush(None, writes);
        for (slot, entry) in self.slots.iter_mut().enumerate() {
            let Some(channel) = entry else { continue };
            for bit in 0..channel.readers.len() {
                if channel.readers.get(bit).and_then(Option::as_ref).is_some_and(|reader| reader.touched < before) {
                    if let Some(reader) = channel.retire(bit) {
                        channel.bits.remove(&reader.user);
                    }
                }
            }
            if channel.bits.is_empty() {
                self.by_room.remove(&channel.room);
                *entry = None;
                self.free.push(slot);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ids handed out in order from `start` + 100, as the archive's clock (µs) would.
    struct Clock(u64);

    impl Clock {
        fn next(&mut self) -> u64 {
            self.0 += 100;
            self.0
        }
    }

    const NOW: u64 = 1_000_000_000;

    impl Live {
        fn channel(&self, room: &str) -> &Channel {
            self.by_room.get(room).and_then(|&slot| self.slots.get(slot)?.as_ref()).expect("a channel in memory")
        }
    }

    fn spans(writes: &[Write]) -> Vec<(&str, u64, u64)> {
        let mut spans: Vec<_> = writes.iter().filter_map(|w| if let Write::Span { user, start, end, .. } = w { Some((user.as_str(), *start, *end)) } else { None }).collect();
        spans.sort_unstable();
        spans
    }

    fn lines(writes: &[Write]) -> usize {
        writes.iter().filter(|w| matches!(w, Write::Line { .. })).count()
    }

    #[test]
    fn a_line_fifty_users_get_is_logged_once_and_their_spans_grow_without_writes() {
        let (mut live, mut clock, mut writes) = (Live::default(), Clock(NOW), Vec::new());
        let users: Vec<String> = (0..50).map(|u| format!("u{u}@x")).collect();
        for n in 0..10 {
            let body = format!("line {n}");
            let ids: Vec<u64> = users.iter().map(|u| live.saw(&mut None, "s/#c", u, 1, "bob", &body, NOW, || clock.next(), &mut writes)).collect();
            assert!(ids.iter().all(|id| *id == ids[0]), "one id for everyone");
        }
        assert_eq!(lines(&writes), 10, "each line once");
        assert_eq!(spans(&writes).len(), 50, "one span opened per user, then nothing until a flush");
        writes.clear();
        live.flush(None, &mut writes);
        assert_eq!(spans(&writes).len(), 50);
        assert!(spans(&writes).iter().all(|(_, start, end)| (*start, *end) == (NOW + 100, NOW + 1000)));
        writes.clear();
        live.flush(None, &mut writes);
        assert!(writes.is_empty(), "nothing moved since");
    }

    #[test]
    fn sessions_need_not_agree_on_the_order_and_the_same_text_twice_is_two_lines() {
        let (mut live, mut clock, mut writes) = (Live::default(), Clock(NOW), Vec::new());
        // a says "mine" (logged as sent), while b's session already got "yours" and "lol"
        // twice from the server; a gets them after.
        let mine = live.saw(&mut None, "s/#c", "a", 1, "a", "mine", NOW, || clock.next(), &mut writes);
        let yours = live.saw(&mut None, "s/#c", "b", 1, "c", "yours", NOW, || clock.next(), &mut writes);
        let lol1 = live.saw(&mut None, "s/#c", "b", 1, "c", "lol", NOW, || clock.next(), &mut writes);
        let lol2 = live.saw(&mut None, "s/#c", "b", 1, "c", "lol", NOW, || clock.next(), &mut writes);
        assert_ne!(lol1, lol2);
        assert_eq!(live.saw(&mut None, "s/#c", "a", 1, "c", "yours", NOW, || clock.next(), &mut writes), yours);
        assert_eq!(live.saw(&mut None, "s/#c", "b", 1, "a", "mine", NOW, || clock.next(), &mut writes), mine);
        let a_lols = [live.saw(&mut None, "s/#c", "a", 1, "c", "lol", NOW, || clock.next(), &mut writes), live.saw(&mut None, "s/#c", "a", 1, "c", "lol", NOW, || clock.next(), &mut writes)];
        assert!(a_lols.contains(&lol1) && a_lols.contains(&lol2), "each lol taken once");
        assert_eq!(lines(&writes), 4);
        writes.clear();
        live.flush(None, &mut writes);
        assert_eq!(spans(&writes), [("a", mine, lol2), ("b", mine, lol2)]);
    }

    #[test]
    fn a_new_epoch_ends_the_span_so_lines_missed_meanwhile_are_outside_it() {
        let (mut live, mut clock, mut writes) = (Live::default(), Clock(NOW), Vec::new());
        let first = live.saw(&mut None, "s/#c", "a", 1, "bob", "one", NOW, || clock.next(), &mut writes);
        live.saw(&mut None, "s/#c", "b", 1, "bob", "one", NOW, || clock.next(), &mut writes);
        live.saw(&mut None, "s/#c", "a", 1, "bob", "two", NOW, || clock.next(), &mut writes);
        // b's connection dropped and came back (epoch 2): b missed "two".
        live.saw(&mut None, "s/#c", "a", 1, "bob", "three", NOW, || clock.next(), &mut writes);
        writes.clear();
        let three = live.saw(&mut None, "s/#c", "b", 2, "bob", "three", NOW, || clock.next(), &mut writes);
        assert_eq!(spans(&writes), [("b", three, three)], "a new span; the old one had nothing more to write");
        writes.clear();
        live.flush(None, &mut writes);
        assert_eq!(spans(&writes), [("a", first, three)]);
    }

    #[test]
    fn lines_older_than_the_window_or_the_recent_lines_are_not_taken() {
        let (mut live, mut clock, mut writes) = (Live::default(), Clock(NOW), Vec::new());
        let old = live.saw(&mut None, "s/#c", "a", 1, "bob", "hi", NOW, || clock.next(), &mut writes);
        // b gets "hi" long after: bob said it again.
        let later = NOW + MATCH_WINDOW + 1_000;
        clock.0 = later;
        assert_ne!(live.saw(&mut None, "s/#c", "b", 1, "bob", "hi", later, || clock.next(), &mut writes), old);
        // Within the window a session thousands of lines behind still finds them (with
        // two readers: one alone keeps only the last few)...
        let (mut live, mut writes) = (Live::default(), Vec::new());
        clock.0 = NOW;
        live.saw(&mut None, "s/#c", "slow", 1, "bob", "before", NOW, || clock.next(), &mut writes);
        for n in 0..5000 {
            live.saw(&mut None, "s/#c", "fast", 1, "bob", &n.to_string(), NOW, || clock.next(), &mut writes);
        }
        writes.clear();
        live.saw(&mut None, "s/#c", "slow", 1, "bob", "0", NOW, || clock.next(), &mut writes);
        assert_eq!(lines(&writes), 0, "5,000 lines behind, line 0 is found");
        // ...but past the most kept, a session that far behind logs its own copies.
        for n in 5000..MOST_RECENT + 10 {
            live.saw(&mut None, "s/#c", "fast", 1, "bob", &n.to_string(), NOW, || clock.next(), &mut writes);
        }
        writes.clear();
        live.saw(&mut None, "s/#c", "slow", 1, "bob", "1", NOW, || clock.next(), &mut writes);
        assert_eq!(lines(&writes), 1, "line 1 left the recent lines: logged again for the slow session");
        let log = &live.channel("s/#c").log;
        assert_eq!(log.recent.len(), MOST_RECENT);
        assert_eq!(log.index.values().map(|seqs| 1 + seqs.more.len()).sum::<usize>(), MOST_RECENT, "the index follows");
    }

    #[test]
    fn idle_readers_and_unread_channels_are_forgotten_after_their_spans_are_written() {
        let (mut live, mut clock, mut writes) = (Live::default(), Clock(NOW), Vec::new());
        live.saw(&mut None, "s/#c", "a", 1, "bob", "one", NOW, || clock.next(), &mut writes);
        live.saw(&mut None, "s/#c", "a", 1, "bob", "two", NOW + 1, || clock.next(), &mut writes);
        live.saw(&mut None, "s/#d", "b", 1, "bob", "one", NOW + 9, || clock.next(), &mut writes);
        writes.clear();
        live.forget_idle(NOW + 5, &mut writes);
        assert_eq!(spans(&writes).len(), 1, "a's span written before it is forgotten");
        assert_eq!(live.channels().count(), 1);
        writes.clear();
        live.forget_user("b", &mut writes);
        assert!(live.channel("s/#d").bits.is_empty());
    }

    #[test]
    fn the_same_text_said_again_and_again_leaves_the_index_in_step_with_the_lines() {
        let (mut live, mut clock, mut writes) = (Live::default(), Clock(NOW), Vec::new());
        // Two readers: a keeps far ahead, b takes the copies it got later, oldest first.
        let said: Vec<u64> = (0..RECENT + 40).map(|_| live.saw(&mut None, "s/#c", "a", 1, "bob", "again", NOW, || clock.next(), &mut writes)).collect();
        let log = &live.channel("s/#c").log;
        assert_eq!(log.recent.len(), RECENT, "one reader: the last few kept");
        assert_eq!(log.index.len(), 1);
        assert_eq!(log.index.values().map(|seqs| 1 + seqs.more.len()).sum::<usize>(), RECENT);
        writes.clear();
        assert_eq!(live.saw(&mut None, "s/#c", "b", 1, "bob", "again", NOW, || clock.next(), &mut writes), said[40], "the oldest kept copy b has not taken");
        assert_eq!(live.saw(&mut None, "s/#c", "b", 1, "bob", "again", NOW, || clock.next(), &mut writes), said[41]);
        assert_eq!(lines(&writes), 0);
    }

    #[test]
    fn a_reader_finds_the_next_lines_past_its_own_and_a_repeated_text_still_takes_the_oldest_copy() {
        let (mut live, mut clock, mut writes) = (Live::default(), Clock(NOW), Vec::new());
        let one = live.saw(&mut None, "s/#c", "a", 1, "bob", "one", NOW, || clock.next(), &mut writes);
        // b says something (logged as sent), then gets the lines a got, in order.
        let own = live.saw(&mut None, "s/#c", "b", 1, "b", "mine", NOW, || clock.next(), &mut writes);
        let two = live.saw(&mut None, "s/#c", "a", 1, "bob", "two", NOW, || clock.next(), &mut writes);
        let again = live.saw(&mut None, "s/#c", "a", 1, "bob", "one", NOW, || clock.next(), &mut writes);
        assert_eq!(live.saw(&mut None, "s/#c", "b", 1, "bob", "one", NOW, || clock.next(), &mut writes), one);
        assert_eq!(live.saw(&mut None, "s/#c", "b", 1, "bob", "two", NOW, || clock.next(), &mut writes), two, "past b's own line");
        assert_eq!(live.saw(&mut None, "s/#c", "b", 1, "bob", "one", NOW, || clock.next(), &mut writes), again);
        assert_eq!(live.saw(&mut None, "s/#c", "a", 1, "b", "mine", NOW, || clock.next(), &mut writes), own);
        // c joins late and gets "one" said again: the oldest copy it has not taken.
        assert_eq!(live.saw(&mut None, "s/#c", "c", 1, "bob", "one", NOW, || clock.next(), &mut writes), one);
        assert_eq!(live.saw(&mut None, "s/#c", "c", 1, "bob", "one", NOW, || clock.next(), &mut writes), again);
        assert_eq!(lines(&writes), 4);
    }

    #[test]
    fn a_room_keeps_its_place_and_a_stale_place_is_looked_up_again() {
        let (mut live, mut clock, mut writes) = (Live::default(), Clock(NOW), Vec::new());
        let (mut a_place, mut b_place) = (None, None);
        let one = live.saw(&mut a_place, "s/#c", "a", 1, "bob", "one", NOW, || clock.next(), &mut writes);
        let place = a_place.expect("a place given with the first line");
        assert_eq!(live.saw(&mut b_place, "s/#c", "b", 1, "bob", "one", NOW, || clock.next(), &mut writes), one, "b's own place, the same line");
        assert_ne!(a_place, b_place, "each reader its own bit");
        let two = live.saw(&mut a_place, "s/#c", "a", 1, "bob", "two", NOW + 1, || clock.next(), &mut writes);
        assert_eq!(a_place, Some(place), "kept while valid");
        // b goes idle: #c keeps a; then a goes idle too and #c is forgotten, its slot
        // taken by #d (read by c).
        live.forget_idle(NOW + 1, &mut writes);
        assert!(!live.holds(&b_place.expect("b's place")), "b forgotten");
        assert_eq!(live.saw(&mut b_place, "s/#c", "b", 1, "bob", "two", NOW + 2, || clock.next(), &mut writes), two, "b back: a new bit, the same log");
        live.forget_idle(NOW + 10, &mut writes);
        assert_eq!(live.channels().count(), 0);
        let mut c_place = None;
        live.saw(&mut c_place, "s/#d", "c", 1, "bob", "three", NOW + 20, || clock.next(), &mut writes);
        assert_eq!(c_place.map(|p| p.slot), Some(place.slot), "the slot taken again");
        assert!(!live.holds(&place), "so a's old place is stale");
        writes.clear();
        let four = live.saw(&mut a_place, "s/#c", "a", 1, "bob", "four", NOW + 30, || clock.next(), &mut writes);
        assert_eq!(writes.iter().filter(|w| matches!(w, Write::Line { room, .. } if room == "s/#c")).count(), 1, "a's line goes to #c, not to #d");
        assert_eq!(spans(&writes), [("a", four, four)]);
        assert!(a_place.is_some_and(|p| p.slot != place.slot));
    }

    #[test]
    fn a_forgotten_readers_bit_goes_to_a_new_reader_once_its_claims_are_too_old_to_matter() {
        let (mut live, mut clock, mut writes) = (Live::default(), Clock(NOW), Vec::new());
        let (mut a_place, mut p_place) = (None, None);
        let one = live.saw(&mut a_place, "s/#c", "a", 1, "bob", "one", NOW, || clock.next(), &mut writes);
        live.saw(&mut p_place, "s/#c", "p", 1, "bob", "one", NOW, || clock.next(), &mut writes);
        live.forget_user("a", &mut writes);
        // Within the window a's claim on "one" still counts: c gets a bit of its own,
        // and takes "one" (a's old claim is not c's).
        assert_eq!(live.saw(&mut None, "s/#c", "c", 1, "bob", "one", NOW + 1, || clock.next(), &mut writes), one);
        assert_eq!(live.channel("s/#c").readers.len(), 3);
        // Later, d takes a's bit; a's old place does not name d's reader.
        let later = NOW + 3 * MATCH_WINDOW;
        clock = Clock(later);
        let mut d_place = None;
        let two = live.saw(&mut d_place, "s/#c", "d", 1, "bob", "two", later, || clock.next(), &mut writes);
        assert_eq!(live.channel("s/#c").readers.len(), 3, "a's bit again");
        assert_eq!(d_place.map(|p| p.bit), a_place.map(|p| p.bit));
        assert!(!live.holds(&a_place.expect("a's place")), "a's place is stale");
        writes.clear();
        assert_eq!(live.saw(&mut a_place, "s/#c", "a", 1, "bob", "two", later, || clock.next(), &mut writes), two, "a back: the same line as d's");
        assert_eq!(lines(&writes), 0);
        assert_ne!(a_place.map(|p| p.bit), d_place.map(|p| p.bit), "a a new bit, d keeps its own");
        assert_eq!(spans(&writes), [("a", two, two)]);

        // Users coming and going for months while p stays: the readers stay few.
        for n in 0..500u64 {
            let (user, at) = (format!("u{n}"), later + (n + 1) * 3 * MATCH_WINDOW);
            let body = format!("line {n}");
            clock = Clock(at);
            let id = live.saw(&mut p_place, "s/#c", "p", 1, "bob", &body, at, || clock.next(), &mut writes);
            assert_eq!(live.saw(&mut None, "s/#c", &user, 1, "bob", &body, at, || clock.next(), &mut writes), id);
            live.forget_user(&user, &mut writes);
        }
        assert!(live.channel("s/#c").readers.len() <= 5, "bits reused: {}", live.channel("s/#c").readers.len());
    }

    #[test]
    fn a_prehashed_key_is_its_own_hash() {
        assert_eq!(Prehashed.hash_one(0xdead_beef_u64), 0xdead_beef);
        assert_ne!(Prehashed.hash_one("text"), Prehashed.hash_one("texu"), "other keys still hash");
    }

    #[test]
    fn claims_grow_past_64_readers() {
        let mut claims = Claims::default();
        claims.add(130);
        claims.add(3);
        assert!(claims.has(130) && claims.has(3) && !claims.has(2) && !claims.has(500));
        assert_eq!(claims.more.len(), 2);
    }
}
