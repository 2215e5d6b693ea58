//! Session tasks that cannot fail unnoticed.
//!
//! A session is one task per (user, network). Were it to panic (a bug, or input nobody
//! foresaw), tokio would drop it silently: the user's rooms would stay open on the XMPP
//! side with nobody behind them. [`spawn_session`] turns a panic into the session's
//! `Event::Ended`, with the commands the task never took, so the gateway closes what the
//! session served, tells the user and hands those commands to a new session; and it
//! logs it (the binary's panic hook logs the backtrace).

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures::FutureExt;
use tokio::sync::oneshot;

use crate::bridge::{command_queue, CommandQueue, Commands};
use crate::model::{Command, Event, SessionKey};
use crate::{EventSink, SessionEvent};

/// Starts the session `key` on the runtime: `session` gets the session's end of a new
/// command queue and returns the task; the gateway's end is returned. Should the task
/// panic, `events` gets `Event::Ended` with the panic's message and the commands still
/// queued, and the queue is closed.
pub fn spawn_session<F>(key: SessionKey, events: EventSink, session: impl FnOnce(Commands) -> F) -> CommandQueue
where
    F: Future<Output = ()> + Send + 'static,
{
    let (queue, mut commands) = command_queue();
    let (salvage, salvaged) = oneshot::channel();
    commands.salvage_on_drop(salvage);
    let task = session(commands);
    tokio::spawn(supervised(key, events, task, salvaged));
    queue
}

/// `task`, then, should it panic, the report of it and the session's proper end.
///
/// Built with combinators rather than as an `async fn`: an `async fn` keeps its
/// arguments apart from what it awaits, so the task (a few KiB for an IRC session, and
/// thousands of them are idle) would take its room twice in every session's allocation.
fn supervised<F>(key: SessionKey, events: EventSink, task: F, salvaged: oneshot::Receiver<Vec<Command>>) -> impl Future<Output = ()> + Send
where
    F: Future<Output = ()> + Send + 'static,
{
    // The task is dropped once it has finished or panicked, and with it its end of the
    // command queue, which hands back the commands it still held.
    AssertUnwindSafe(task).catch_unwind().then(move |outcome| async move {
        let Err(payload) = outcome else { return };
        let message = panic_message(payload.as_ref());
        tracing::error!(user = %key.user.0, network = ?key.network, panic = %message, "a session task panicked; its session is ended");
        let reason = format!("the gateway's session failed (a bug, logged for the administrator): {message}");
        let unhandled = salvaged.await.unwrap_or_default();
        let _ = events.send(SessionEvent { key, event: Event::Ended { reason, unhandled } }).await;
    })
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
    use crate::Session;

    fn key() -> SessionKey {
        SessionKey { user: UserId("u@h".into()), network: NetworkId::Irc { server: "s".into() } }
    }

    fn leave(channel: &str) -> Command {
        Command::Leave { channel: channel.into(), reason: None }
    }

    #[tokio::test]
    async fn a_panicking_session_ends_with_its_message_its_queued_commands_and_a_closed_queue() {
        let (events, mut rx) = tokio::sync::mpsc::channel(4);
        let (go, wait) = oneshot::channel::<()>();
        let index: usize = "3".parse().unwrap();
        let queue = spawn_session(key(), events, |mut commands| async move {
            let first = commands.recv().await;
            wait.await.ok();
            let empty: Vec<u8> = Vec::new();
            let _ = empty[index];
            drop(first);
        });
        queue.send(leave("#a")).unwrap();
        tokio::task::yield_now().await;
        queue.send(leave("#b")).unwrap();
        queue.send(leave("#c")).unwrap();
        go.send(()).unwrap();
        let SessionEvent { key: ended, event } = rx.recv().await.unwrap();
        assert_eq!(ended, key());
        let Event::Ended { reason, unhandled } = event else { panic!("expected Ended, got {event:?}") };
        assert!(reason.contains("index out of bounds"), "{reason}");
        assert_eq!(unhandled, [leave("#b"), leave("#c")], "what the session never took goes to a new one");
        assert!(queue.is_closed(), "the gateway sees the session as gone");
        assert!(queue.send(leave("#d")).is_err());
    }

    #[test]
    fn supervision_adds_little_to_a_sessions_task() {
        // Thousands of idle sessions: what each task's allocation holds is their memory.
        let task = async {
            let held = [0u8; 4096];
            tokio::task::yield_now().await;
            std::hint::black_box(&held);
        };
        let alone = std::mem::size_of_val(&task);
        let (events, _rx) = tokio::sync::mpsc::channel(1);
        let (_salvage, salvaged) = oneshot::channel();
        let supervised = supervised(key(), events, task, salvaged);
        let size = std::mem::size_of_val(&supervised);
        assert!(size <= alone + 512, "the task takes {alone} bytes, supervised {size}");
    }

    #[tokio::test]
    async fn a_session_that_ends_normally_reports_nothing_more() {
        let (events, mut rx) = tokio::sync::mpsc::channel(4);
        let key = SessionKey { user: UserId("u@h".into()), network: NetworkId::Email };
        let queue = spawn_session(key, events, |mut commands| async move { while commands.recv().await.is_some() {} });
        queue.send(leave("#a")).unwrap();
        drop(queue);
        assert!(rx.recv().await.is_none(), "the sender is dropped without a word");
    }
}
