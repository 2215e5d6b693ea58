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
use std::hash::{BuildHasher, RandomState};

use super::Write;

/// Lines of a channel always kept in memory for the other sessions to find.
const RECENT: usize = 64;
/// More are kept while they are this recent (µs): sessions read their sockets in turn,
/// so under a flood one may be thousands of lines behind another.
const MATCH_WINDOW: u64 = 30_000_000;
/// But never more than this many per channel (a flood of 10 s at the cut-off rate).
const MOST_RECENT: usize = 16_384;

/// The live state of every channel some user of the gateway is getting lines from.
#[derive(Debug, Default)]
pub struct Live {
    /// By archive room key (`server/channel`); hashbrown's map to look up by `&str` and
    /// insert on a miss with one hash.
    channels: hashbrown::HashMap<String, Channel, RandomState>,
    /// Hashes speaker and text for `Channel::index` (randomly keyed: IRC users choose
    /// the text).
    hasher: RandomState,
}

#[derive(Debug, Default)]
struct Channel {
    /// The newest lines of the channel's log, oldest (lowest id) first: id and the hash
    /// of speaker and text, to let go of them in order.
    recent: VecDeque<(u64, u64)>,
    /// The recent lines by the hash of speaker and text, ascending ids, with who took
    /// each: one lookup finds a line without touching its text. (Two different lines
    /// share a 64-bit keyed hash with a chance of one in 2^64: then a user's copy of one
    /// would carry the other's id.)
    index: HashMap<u64, Vec<Recent>>,
    /// Each user's span in progress, with the index of their bit in `Recent::claims`.
    readers: HashMap<String, Reader>,
    /// Bits given out so far (never reused while the channel is in memory).
    next_bit: usize,
}

/// A recent line as the index keeps it.
#[derive(Debug)]
struct Recent {
    id: u64,
    /// Which readers took this line (bit `Reader::bit`).
    claims: Claims,
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
#[derive(Debug, Clone, Copy)]
struct Reader {
    /// Their bit in the lines' claims.
    bit: usize,
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
}

impl Channel {
    /// Takes for reader `bit` the oldest recent line hashed `hash`, logged at or after
    /// `oldest`, it has not taken yet; its id.
    fn take(&mut self, hash: u64, bit: usize, oldest: u64) -> Option<u64> {
        let line = self.index.get_mut(&hash)?.iter_mut().find(|l| l.id >= oldest && !l.claims.has(bit))?;
        line.claims.add(bit);
        Some(line.id)
    }

    /// Adds the newest line `id` (hashed `hash`), taken by reader `bit`, and lets go of
    /// the oldest ones past [`RECENT`] that are older than `oldest`, or past
    /// [`MOST_RECENT`].
    fn push(&mut self, id: u64, hash: u64, bit: usize, oldest: u64) {
        let mut claims = Claims::default();
        claims.add(bit);
        self.index.entry(hash).or_default().push(Recent { id, claims });
        self.recent.push_back((id, hash));
        // One reader has nobody to match with: a flood on a channel only one user of the
        // gateway is in costs [`RECENT`] lines, not [`MOST_RECENT`].
        let most = if self.readers.len() > 1 { MOST_RECENT } else { RECENT };
        while self.recent.len() > most || (self.recent.len() > RECENT && self.recent.front().is_some_and(|(id, _)| *id < oldest)) {
            let Some((old, old_hash)) = self.recent.pop_front() else { break };
            if let Some(lines) = self.index.get_mut(&old_hash) {
                lines.retain(|l| l.id != old);
                if lines.is_empty() {
                    self.index.remove(&old_hash);
                }
            }
        }
    }
}

impl Live {
    /// `user` got (or said) the line `body` of `who` (empty: the server) in `room`, in
    /// the room's `epoch`, at `now` (µs): the line's id, an existing one when another
    /// user's session delivered it already, else `new_id()`. What must be written is
    /// pushed to `writes`.
    #[allow(clippy::too_many_arguments, reason = "each is one fact of the line")]
    pub fn saw(&mut self, room: &str, user: &str, epoch: u64, who: &str, body: &str, now: u64, new_id: impl FnOnce() -> u64, writes: &mut Vec<Write>) -> u64 {
        let channel = self.channels.entry_ref(room).or_default();
        let bit = match channel.readers.get(user) {
            Some(reader) => reader.bit,
            None => channel.next_bit,
        };
        let hash = self.hasher.hash_one((who, body));
        let oldest = now.saturating_sub(MATCH_WINDOW);
        let id = match channel.take(hash, bit, oldest) {
            Some(id) => id,
            None => {
                let id = new_id();
                channel.push(id, hash, bit, oldest);
                writes.push(Write::Line { room: room.to_owned(), id, who: who.to_owned(), body: body.to_owned() });
                id
            }
        };
        match channel.readers.get_mut(user) {
            Some(reader) if reader.epoch == epoch => {
                reader.end = reader.end.max(id);
                reader.start = reader.start.min(id);
                reader.touched = now;
            }
            Some(reader) => {
                if reader.end > reader.persisted {
                    writes.push(Write::Span { room: room.to_owned(), user: user.to_owned(), start: reader.start, end: reader.end });
                }
                *reader = Reader { bit, epoch, start: id, end: id, persisted: id, touched: now };
                writes.push(Write::Span { room: room.to_owned(), user: user.to_owned(), start: id, end: id });
            }
            None => {
                channel.next_bit += 1;
                channel.readers.insert(user.to_owned(), Reader { bit, epoch, start: id, end: id, persisted: id, touched: now });
                writes.push(Write::Span { room: room.to_owned(), user: user.to_owned(), start: id, end: id });
            }
        }
        id
    }

    /// The spans of `user` (every user when `None`) whose end moved since it was last
    /// written.
    pub fn flush(&mut self, user: Option<&str>, writes: &mut Vec<Write>) {
        for (room, channel) in &mut self.channels {
            for (reader, state) in channel.readers.iter_mut().filter(|(reader, _)| user.is_none_or(|u| u == reader.as_str())) {
                if state.end > state.persisted {
                    writes.push(Write::Span { room: room.clone(), user: reader.clone(), start: state.start, end: state.end });
                    state.persisted = state.end;
                }
            }
        }
    }

    /// Forgets the spans of `user` (unregistered), after writing them.
    pub fn forget_user(&mut self, user: &str, writes: &mut Vec<Write>) {
        self.flush(Some(user), writes);
        for channel in self.channels.values_mut() {
            channel.readers.remove(user);
        }
    }

    /// Forgets readers who got nothing since `before` (µs), after writing their spans,
    /// and the channels nobody reads: memory for channels in use only.
    pub fn forget_idle(&mut self, before: u64, writes: &mut Vec<Write>) {
        self.flush(None, writes);
        for channel in self.channels.values_mut() {
            channel.readers.retain(|_, reader| reader.touched >= before);
        }
        self.channels.retain(|_, channel| !channel.readers.is_empty());
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
            let ids: Vec<u64> = users.iter().map(|u| live.saw("s/#c", u, 1, "bob", &body, NOW, || clock.next(), &mut writes)).collect();
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
        let mine = live.saw("s/#c", "a", 1, "a", "mine", NOW, || clock.next(), &mut writes);
        let yours = live.saw("s/#c", "b", 1, "c", "yours", NOW, || clock.next(), &mut writes);
        let lol1 = live.saw("s/#c", "b", 1, "c", "lol", NOW, || clock.next(), &mut writes);
        let lol2 = live.saw("s/#c", "b", 1, "c", "lol", NOW, || clock.next(), &mut writes);
        assert_ne!(lol1, lol2);
        assert_eq!(live.saw("s/#c", "a", 1, "c", "yours", NOW, || clock.next(), &mut writes), yours);
        assert_eq!(live.saw("s/#c", "b", 1, "a", "mine", NOW, || clock.next(), &mut writes), mine);
        let a_lols = [live.saw("s/#c", "a", 1, "c", "lol", NOW, || clock.next(), &mut writes), live.saw("s/#c", "a", 1, "c", "lol", NOW, || clock.next(), &mut writes)];
        assert!(a_lols.contains(&lol1) && a_lols.contains(&lol2), "each lol taken once");
        assert_eq!(lines(&writes), 4);
        writes.clear();
        live.flush(None, &mut writes);
        assert_eq!(spans(&writes), [("a", mine, lol2), ("b", mine, lol2)]);
    }

    #[test]
    fn a_new_epoch_ends_the_span_so_lines_missed_meanwhile_are_outside_it() {
        let (mut live, mut clock, mut writes) = (Live::default(), Clock(NOW), Vec::new());
        let first = live.saw("s/#c", "a", 1, "bob", "one", NOW, || clock.next(), &mut writes);
        live.saw("s/#c", "b", 1, "bob", "one", NOW, || clock.next(), &mut writes);
        live.saw("s/#c", "a", 1, "bob", "two", NOW, || clock.next(), &mut writes);
        // b's connection dropped and came back (epoch 2): b missed "two".
        live.saw("s/#c", "a", 1, "bob", "three", NOW, || clock.next(), &mut writes);
        writes.clear();
        let three = live.saw("s/#c", "b", 2, "bob", "three", NOW, || clock.next(), &mut writes);
        assert_eq!(spans(&writes), [("b", three, three)], "a new span; the old one had nothing more to write");
        writes.clear();
        live.flush(None, &mut writes);
        assert_eq!(spans(&writes), [("a", first, three)]);
    }

    #[test]
    fn lines_older_than_the_window_or_the_recent_lines_are_not_taken() {
        let (mut live, mut clock, mut writes) = (Live::default(), Clock(NOW), Vec::new());
        let old = live.saw("s/#c", "a", 1, "bob", "hi", NOW, || clock.next(), &mut writes);
        // b gets "hi" long after: bob said it again.
        let later = NOW + MATCH_WINDOW + 1_000;
        clock.0 = later;
        assert_ne!(live.saw("s/#c", "b", 1, "bob", "hi", later, || clock.next(), &mut writes), old);
        // Within the window a session thousands of lines behind still finds them (with
        // two readers: one alone keeps only the last few)...
        let (mut live, mut writes) = (Live::default(), Vec::new());
        clock.0 = NOW;
        live.saw("s/#c", "slow", 1, "bob", "before", NOW, || clock.next(), &mut writes);
        for n in 0..5000 {
            live.saw("s/#c", "fast", 1, "bob", &n.to_string(), NOW, || clock.next(), &mut writes);
        }
        writes.clear();
        live.saw("s/#c", "slow", 1, "bob", "0", NOW, || clock.next(), &mut writes);
        assert_eq!(lines(&writes), 0, "5,000 lines behind, line 0 is found");
        // ...but past the most kept, a session that far behind logs its own copies.
        for n in 5000..MOST_RECENT + 10 {
            live.saw("s/#c", "fast", 1, "bob", &n.to_string(), NOW, || clock.next(), &mut writes);
        }
        writes.clear();
        live.saw("s/#c", "slow", 1, "bob", "1", NOW, || clock.next(), &mut writes);
        assert_eq!(lines(&writes), 1, "line 1 left the recent lines: logged again for the slow session");
        assert_eq!(live.channels["s/#c"].recent.len(), MOST_RECENT);
        assert_eq!(live.channels["s/#c"].index.values().map(Vec::len).sum::<usize>(), MOST_RECENT, "the index follows");
    }

    #[test]
    fn idle_readers_and_unread_channels_are_forgotten_after_their_spans_are_written() {
        let (mut live, mut clock, mut writes) = (Live::default(), Clock(NOW), Vec::new());
        live.saw("s/#c", "a", 1, "bob", "one", NOW, || clock.next(), &mut writes);
        live.saw("s/#c", "a", 1, "bob", "two", NOW + 1, || clock.next(), &mut writes);
        live.saw("s/#d", "b", 1, "bob", "one", NOW + 9, || clock.next(), &mut writes);
        writes.clear();
        live.forget_idle(NOW + 5, &mut writes);
        assert_eq!(spans(&writes).len(), 1, "a's span written before it is forgotten");
        assert_eq!(live.channels.len(), 1);
        writes.clear();
        live.forget_user("b", &mut writes);
        assert!(live.channels["s/#d"].readers.is_empty());
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
