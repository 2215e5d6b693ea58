//! XMPP threads (XEP-0201 `<thread/>`) and mail threads (Message-ID chains), kept the same.
//!
//! A mail answering a mail the user got carries that mail's id as `In-Reply-To`, and the
//! thread of what comes back is the first mail's Message-ID, as before. A client's own
//! thread id (a random token, no mail's id) is written into the Message-ID of each mail
//! sent in it (`xgw.<unique>.t<hex of the thread>@domain`): a reply, or a reply to all,
//! names that id first in its `References`, and the gateway reads the client's thread
//! back from it. No state is needed for that; [`ThreadMemory`] only remembers, per
//! thread, the last mail seen in it, so the user's next mail in the thread answers it.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// Longest client thread id written into a Message-ID, in bytes (its hex is twice as
/// long; a Message-ID line stays far below 998 characters).
pub const MAX_THREAD_BYTES: usize = 64;
/// Threads remembered per user by [`ThreadMemory`]; the oldest is forgotten first.
const REMEMBERED_THREADS: usize = 256;

/// The Message-ID (without angle brackets) of a mail sent in the client's thread
/// `thread`: `unique` (from `outgoing::new_message_id`, `local@domain`) with the thread's
/// hex appended to its local part. `unique` itself when `thread` is empty or longer than
/// [`MAX_THREAD_BYTES`].
#[must_use]
pub fn message_id_in(unique: &str, thread: &str) -> String {
    let Some((local, domain)) = unique.rsplit_once('@') else { return unique.to_owned() };
    if thread.is_empty() || thread.len() > MAX_THREAD_BYTES {
        return unique.to_owned();
    }
    let hex: String = thread.bytes().map(|b| format!("{b:02x}")).collect();
    format!("{local}.t{hex}@{domain}")
}

/// The client's thread written into `message_id` by [`message_id_in`], if it is one of
/// ours and the hex decodes to UTF-8.
#[must_use]
pub fn client_thread(message_id: &str) -> Option<String> {
    let (local, _) = message_id.rsplit_once('@')?;
    if !local.starts_with("xgw.") {
        return None;
    }
    let (_, hex) = local.rsplit_once(".t")?;
    if hex.is_empty() || hex.len() % 2 != 0 || hex.len() > 2 * MAX_THREAD_BYTES {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| hex.get(i..i + 2).and_then(|pair| u8::from_str_radix(pair, 16).ok()))
        .collect();
    String::from_utf8(bytes?).ok().filter(|thread| !thread.is_empty())
}

/// The last mail of each client thread of one user, so that their next mail in it is
/// sent as a reply (`In-Reply-To`, `References`). In memory, bounded; after a restart a
/// thread's next mail starts without `In-Reply-To` and still carries the thread in its
/// Message-ID.
#[derive(Debug, Default)]
pub struct ThreadMemory {
    /// The threads, behind one lock (the watcher notes, the session reads).
    threads: Mutex<Threads>,
}

/// What [`ThreadMemory`] holds.
#[derive(Debug, Default)]
struct Threads {
    /// Thread -> (its first mail's id, its last mail's id).
    ends: HashMap<String, (String, String)>,
    /// The threads, least recently noted first.
    order: VecDeque<String>,
}

impl ThreadMemory {
    /// Notes that mail `message_id` is in client thread `thread`, whose first mail is
    /// `root`.
    pub fn note(&self, thread: &str, root: &str, message_id: &str) {
        let mut guard = self.threads.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Threads { ends: threads, order } = &mut *guard;
        let root = threads.get(thread).map_or_else(|| root.to_owned(), |(root, _)| root.clone());
        if threads.insert(thread.to_owned(), (root, message_id.to_owned())).is_some() {
            order.retain(|t| t != thread);
        }
        order.push_back(thread.to_owned());
        while order.len() > REMEMBERED_THREADS {
            if let Some(oldest) = order.pop_front() {
                threads.remove(&oldest);
            }
        }
    }

    /// The first and the last mail of `thread`, if it is remembered.
    #[must_use]
    pub fn ends_of(&self, thread: &str) -> Option<(String, String)> {
        self.threads.lock().unwrap_or_else(std::sync::PoisonError::into_inner).ends.get(thread).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_thread_goes_into_the_message_id_and_comes_back() {
        for thread in ["e4c1-77ab", "Ünïcode thread ✓", "a b\r\n<c>", &"x".repeat(MAX_THREAD_BYTES)] {
            let id = message_id_in("xgw.abc123@example.org", thread);
            assert!(id.ends_with("@example.org") && id.starts_with("xgw.abc123.t"), "{id}");
            assert!(id.bytes().all(|b| b.is_ascii_alphanumeric() || b"@.".contains(&b)), "{id}");
            assert_eq!(client_thread(&id).as_deref(), Some(thread));
        }
    }

    #[test]
    fn other_ids_carry_no_client_thread() {
        assert_eq!(message_id_in("xgw.abc@x.org", ""), "xgw.abc@x.org");
        assert_eq!(message_id_in("xgw.abc@x.org", &"x".repeat(MAX_THREAD_BYTES + 1)), "xgw.abc@x.org");
        for id in ["xgw.abc@x.org", "abc.t6162@x.org", "xgw.abc.t616@x.org", "xgw.abc.tzz@x.org", "xgw.abc.tff@x.org", "no-at", "xgw.a.t@x"] {
            assert_eq!(client_thread(id), None, "{id}");
        }
    }

    #[test]
    fn the_memory_keeps_the_root_and_the_latest_and_forgets_the_oldest_thread() {
        let memory = ThreadMemory::default();
        memory.note("t", "m1@x", "m1@x");
        memory.note("t", "ignored@x", "m2@x");
        assert_eq!(memory.ends_of("t"), Some(("m1@x".into(), "m2@x".into())));
        for i in 0..REMEMBERED_THREADS {
            memory.note(&format!("other{i}"), "r@x", "r@x");
        }
        assert_eq!(memory.ends_of("t"), None);
        assert!(memory.ends_of("other0").is_some());
    }
}
