//! Session tasks that cannot fail unnoticed.
//!
//! A session is one task per (user, network). Were it to panic (a bug, or input nobody
//! foresaw), tokio would drop it silently: the user's rooms would stay open on the XMPP
//! side with nobody behind them. [`spawn_session`] turns a panic into the session's
//! `Event::Ended`, so the gateway closes what the session served and tells the user, and
//! logs it (the binary's panic hook logs the backtrace).

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures::FutureExt;

use crate::model::{Event, SessionKey};
use crate::{EventSink, SessionEvent};

/// Runs `session` (the task of the session `key`) on the runtime; a panic in it is
/// reported on `events` as `Event::Ended` with the panic's message.
pub fn spawn_session<F>(key: SessionKey, events: EventSink, session: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        let Err(payload) = AssertUnwindSafe(session).catch_unwind().await else { return };
        let message = panic_message(payload.as_ref());
        tracing::error!(user = %key.user.0, network = ?key.network, panic = %message, "a session task panicked; its session is ended");
        let reason = format!("the gateway's session failed (a bug, logged for the administrator): {message}");
        // Commands still queued were dropped with the task: nothing to hand back.
        let _ = events.send(SessionEvent { key, event: Event::Ended { reason, unhandled: Vec::new() } }).await;
    });
}

/// The text of a panic (`panic!("...")` carries a `&str` or a `String`).
fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{NetworkId, UserId};

    #[tokio::test]
    async fn a_panicking_session_ends_with_the_panics_message() {
        let (events, mut rx) = tokio::sync::mpsc::channel(4);
        let key = SessionKey { user: UserId("u@h".into()), network: NetworkId::Irc { server: "s".into() } };
        let index: usize = "3".parse().unwrap();
        spawn_session(key.clone(), events, async move {
            let empty: Vec<u8> = Vec::new();
            let _ = empty[index];
        });
        let SessionEvent { key: ended, event } = rx.recv().await.unwrap();
        assert_eq!(ended, key);
        match event {
            Event::Ended { reason, unhandled } => {
                assert!(reason.contains("index out of bounds"), "{reason}");
                assert!(unhandled.is_empty());
            }
            other => panic!("expected Ended, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_session_that_ends_normally_reports_nothing_more() {
        let (events, mut rx) = tokio::sync::mpsc::channel(4);
        let key = SessionKey { user: UserId("u@h".into()), network: NetworkId::Email };
        spawn_session(key, events, async {});
        assert!(rx.recv().await.is_none(), "the sender is dropped without a word");
    }
}
