//! A server's channel list (`LIST`) for service discovery: fetched on the user's own
//! connection when asked, kept a minute so that a client paging through it (XEP-0059)
//! does not list the server again per page, bounded in channels and in time. Pure: the
//! session feeds it lines and the clock.
//!
//! A session holds `Option<Box<Listing>>`: nothing at all for the sessions that never
//! list (most), and nothing once the minute is over.

use std::sync::Arc;
use std::time::Duration;

use bridge_core::model::{ChannelListing, ListedChannel, Reply};
use tokio::time::Instant;

/// How long a server may take to end its list (RPL_LISTEND); then what arrived is the answer.
pub const LIST_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a listing is kept for the pages that follow the first.
pub const LIST_KEPT: Duration = Duration::from_secs(60);
/// The most bytes of a channel's topic kept (cut on a character boundary).
pub const MAX_TOPIC_BYTES: usize = 200;
/// The longest channel name kept (servers allow 50 to 64); a longer one is left out, so
/// a listing holds at most about 4 MB however a server fills its lines.
pub const MAX_NAME_BYTES: usize = 200;

/// A listing being fetched, or fetched a moment ago.
#[derive(Debug)]
pub enum Listing {
    /// `LIST` was sent; RPL_LIST lines are gathered until RPL_LISTEND or `until`.
    Fetching {
        /// What arrived so far, in the server's order.
        channels: Vec<ListedChannel>,
        /// Whether a channel was dropped for the bound on channels.
        truncated: bool,
        /// Who waits for it.
        waiters: Vec<Reply<Arc<ChannelListing>>>,
        /// When it is answered with what arrived.
        until: Instant,
    },
    /// The last listing, handed to whoever asks until `until`.
    Kept {
        /// The listing.
        listing: Arc<ChannelListing>,
        /// When it is forgotten.
        until: Instant,
    },
}

impl Listing {
    /// When the listing next needs the session: the end of the fetch, or of the keeping.
    #[must_use]
    pub fn deadline(&self) -> Instant {
        match self {
            Listing::Fetching { until, .. } | Listing::Kept { until, .. } => *until,
        }
    }
}

/// Someone asks for the listing: answered at once from a listing kept and still fresh,
/// else added to the waiters of the fetch under way, else a fetch starts. Returns
/// whether `LIST` must be sent.
pub fn ask(listing: &mut Option<Box<Listing>>, reply: Reply<Arc<ChannelListing>>, now: Instant) -> bool {
    match listing.as_deref_mut() {
        Some(Listing::Kept { listing, until }) if now < *until => {
            reply.send(Arc::clone(listing));
            false
        }
        Some(Listing::Fetching { waiters, .. }) => {
            waiters.push(reply);
            false
        }
        _ => {
            *listing = Some(Box::new(Listing::Fetching { channels: Vec::new(), truncated: false, waiters: vec![reply], until: now + LIST_TIMEOUT }));
            true
        }
    }
}

/// Whether a fetch is under way (RPL_LIST lines are ours, not a raw command's).
#[must_use]
pub fn fetching(listing: &Option<Box<Listing>>) -> bool {
    matches!(listing.as_deref(), Some(Listing::Fetching { .. }))
}

/// An RPL_LIST line's arguments after our nick: channel, user count, topic. Kept while
/// fetching, within `most` channels (`ServerLimits::list_channels`; the rest of a larger
/// list is dropped and the listing says it is incomplete) and [`MAX_NAME_BYTES`]; a
/// malformed count counts as 0.
pub fn entry(listing: &mut Option<Box<Listing>>, most: usize, channel: &str, users: &str, topic: &str) {
    let Some(Listing::Fetching { channels, truncated, .. }) = listing.as_deref_mut() else { return };
    if channels.len() >= most || channel.len() > MAX_NAME_BYTES {
        *truncated = true;
        return;
    }
    channels.push(ListedChannel { name: channel.to_owned(), users: users.trim().parse().unwrap_or(0), topic: short_topic(topic) });
}

/// RPL_LISTEND: the waiters get the whole listing, which is kept for [`LIST_KEPT`].
pub fn end(listing: &mut Option<Box<Listing>>, now: Instant) {
    finish(listing, now, true, None);
}

/// The server will not list now (RPL_TRYAGAIN), in these words: the waiters get what
/// arrived (nothing, usually) and why; it is kept, so the pages that follow do not ask
/// a busy server again at once.
pub fn refused(listing: &mut Option<Box<Listing>>, now: Instant, text: &str) {
    finish(listing, now, false, Some(text.to_owned()));
}

/// The session's clock passed [`Listing::deadline`]: a fetch is answered with what
/// arrived (incomplete); a kept listing is forgotten.
pub fn tick(listing: &mut Option<Box<Listing>>, now: Instant) {
    match listing.as_deref() {
        Some(Listing::Fetching { until, .. }) if now >= *until => finish(listing, now, false, None),
        Some(Listing::Kept { until, .. }) if now >= *until => *listing = None,
        _ => {}
    }
}

/// Ends a fetch: sorted by name, each name once, sent to every waiter and kept.
fn finish(listing: &mut Option<Box<Listing>>, now: Instant, ended: bool, refused: Option<String>) {
    let Some(Listing::Fetching { channels, truncated, waiters, .. }) = listing.as_deref_mut() else { return };
    let mut channels = std::mem::take(channels);
    channels.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    channels.dedup_by(|a, b| a.name == b.name);
    channels.shrink_to_fit();
    let done = Arc::new(ChannelListing { channels, complete: ended && !*truncated, refused });
    for waiter in std::mem::take(waiters) {
        waiter.send(Arc::clone(&done));
    }
    *listing = Some(Box::new(Listing::Kept { listing: done, until: now + LIST_KEPT }));
}

/// A topic cut to [`MAX_TOPIC_BYTES`] on a character boundary, with `…` when cut.
fn short_topic(topic: &str) -> String {
    if topic.len() <= MAX_TOPIC_BYTES {
        return topic.to_owned();
    }
    let mut end = MAX_TOPIC_BYTES;
    while !topic.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", topic.get(..end).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The default of `ServerLimits::list_channels`.
    const MAX_CHANNELS: usize = 10_000;

    fn names(listing: &ChannelListing) -> Vec<&str> {
        listing.channels.iter().map(|c| c.name.as_str()).collect()
    }

    #[tokio::test]
    async fn a_listing_is_fetched_once_for_every_waiter_sorted_and_kept_a_minute() {
        let now = Instant::now();
        let mut listing = None;
        let (first, first_rx) = Reply::new();
        assert!(ask(&mut listing, first, now), "the first asker sends LIST");
        let (second, second_rx) = Reply::new();
        assert!(!ask(&mut listing, second, now), "a second asker waits for the same LIST");
        assert!(fetching(&listing));
        entry(&mut listing, MAX_CHANNELS, "#b", "3", "bee");
        entry(&mut listing, MAX_CHANNELS, "#a", "x", "");
        entry(&mut listing, MAX_CHANNELS, "#b", "3", "bee");
        end(&mut listing, now);
        let got = first_rx.await.unwrap();
        assert_eq!(names(&got), ["#a", "#b"], "sorted, each name once");
        assert_eq!((got.channels[0].users, got.channels[1].users), (0, 3), "a bad count is 0");
        assert!(got.complete);
        assert!(Arc::ptr_eq(&got, &second_rx.await.unwrap()));
        // Kept: the next page is answered at once, without LIST.
        let (third, third_rx) = Reply::new();
        assert!(!ask(&mut listing, third, now + LIST_KEPT / 2));
        assert!(Arc::ptr_eq(&got, &third_rx.await.unwrap()));
        // Forgotten after the minute: nothing held.
        tick(&mut listing, now + LIST_KEPT);
        assert!(listing.is_none());
    }

    #[tokio::test]
    async fn a_list_that_never_ends_is_answered_with_what_arrived_and_a_huge_one_is_bounded() {
        let now = Instant::now();
        let mut listing = None;
        let (reply, rx) = Reply::new();
        assert!(ask(&mut listing, reply, now));
        entry(&mut listing, MAX_CHANNELS, &format!("#{}", "x".repeat(MAX_NAME_BYTES)), "1", "a name too long is left out");
        for i in 0..MAX_CHANNELS + 5 {
            entry(&mut listing, MAX_CHANNELS, &format!("#c{i:05}"), "1", "");
        }
        tick(&mut listing, now + LIST_TIMEOUT / 2);
        assert!(fetching(&listing), "not yet");
        tick(&mut listing, now + LIST_TIMEOUT);
        let got = rx.await.unwrap();
        assert_eq!(got.channels.len(), MAX_CHANNELS);
        assert!(got.channels.iter().all(|c| c.name.len() <= MAX_NAME_BYTES));
        assert!(!got.complete);
        // An expired listing is fetched again.
        let (reply, _rx) = Reply::new();
        assert!(ask(&mut listing, reply, now + LIST_TIMEOUT + LIST_KEPT));
    }

    #[tokio::test]
    async fn a_server_too_busy_to_list_says_so_and_is_not_asked_again_at_once() {
        let now = Instant::now();
        let mut listing = None;
        let (reply, rx) = Reply::new();
        assert!(ask(&mut listing, reply, now));
        refused(&mut listing, now, "Server load is temporarily too heavy");
        let got = rx.await.unwrap();
        assert!(!got.complete && got.channels.is_empty());
        assert_eq!(got.refused.as_deref(), Some("Server load is temporarily too heavy"));
        let (reply, _rx) = Reply::new();
        assert!(!ask(&mut listing, reply, now + Duration::from_secs(1)));
    }

    #[test]
    fn long_topics_are_cut_on_a_character_boundary() {
        assert_eq!(short_topic("short"), "short");
        let long = "é".repeat(150);
        let cut = short_topic(&long);
        assert!(cut.ends_with('…') && cut.len() <= MAX_TOPIC_BYTES + '…'.len_utf8(), "{}", cut.len());
        assert!(cut.trim_end_matches('…').chars().all(|c| c == 'é'));
    }
}
