//! What the gateway has done since it started, counted where it happens (the router, the
//! writer, the IRC and email sessions) and read by the administrators' `status` command
//! and the Prometheus endpoint. Relaxed atomic increments: nothing waits on them.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counts since the process started; each only grows.
#[derive(Debug)]
pub struct Counters {
    /// Stanzas read from the XMPP server (refused ones included).
    pub stanzas_in: AtomicU64,
    /// Stanzas written to the XMPP server.
    pub stanzas_out: AtomicU64,
    /// Of those, errors (`type='error'`): refusals, failures told to users.
    pub errors_out: AtomicU64,
    /// Lines read from IRC servers.
    pub irc_lines_in: AtomicU64,
    /// Lines written to IRC servers.
    pub irc_lines_out: AtomicU64,
    /// Mails fetched from users' mailboxes and delivered as messages.
    pub mails_in: AtomicU64,
    /// Mails the SMTP servers accepted from users.
    pub mails_out: AtomicU64,
    /// IRC servers cut off for passing a limit (`[limits] irc_lines_per_second`).
    pub irc_servers_cut_off: AtomicU64,
}

/// The process's counters.
pub static COUNTERS: Counters = Counters {
    stanzas_in: AtomicU64::new(0),
    stanzas_out: AtomicU64::new(0),
    errors_out: AtomicU64::new(0),
    irc_lines_in: AtomicU64::new(0),
    irc_lines_out: AtomicU64::new(0),
    mails_in: AtomicU64::new(0),
    mails_out: AtomicU64::new(0),
    irc_servers_cut_off: AtomicU64::new(0),
};

/// Adds one to `counter`.
pub fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// The value of `counter` now.
#[must_use]
pub fn read(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}
