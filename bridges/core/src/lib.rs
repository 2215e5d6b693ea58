//! What every bridge shares: the neutral model of messages and presence, the
//! [`Bridge`]/[`Session`] traits, and the [`Secret`] credential type.
//!
//! Nothing here knows XMPP or does I/O: `src/` converts stanzas to and from these types,
//! and each bridge converts its own protocol to and from them.

// Protocol code reads what remote servers send: no indexing that can panic on it.
#![cfg_attr(not(test), warn(clippy::indexing_slicing))]

pub mod backoff;
mod bridge;
pub mod counters;
pub mod model;
mod secret;
mod supervise;

pub use bridge::{
    command_queue, BoxFuture, Bridge, BridgeStore, CommandQueue, Commands, EventSink, FetchError, FileFetcher, Session, SessionClosed, SessionEvent,
    StoreFailure,
};
pub use secret::Secret;
pub use supervise::{catch_panic, end_if_panicked, spawn_session};
