//! Session tasks that cannot fail unnoticed.
//!
//! A session is one task per (user, network). Were it to panic (a bug, or input nobody
//! foresaw), tokio would drop it silently: the user's rooms would stay open on the XMPP
//! side with nobody behind them. So each session runs its life through [`catch_panic`]
//! and hands the outcome to [`end_if_panicked`], which turns a panic into the session's
//! `Event::Ended`, with the commands the task never took, so that the gateway closes what
//! the session served, tells the user and hands those commands to a new session; and it
//! logs it (the binary's panic hook logs the backtrace).
//!
//! The session does this itself, from its own key, event sink and command queue, rather
//! than a wrapper task holding copies of them: thousands of idle sessions each paying
//! for a second key, a hand-back channel and a wrapper cost half a KiB per IRC
//! connection (measured with bench/'s scale scenario).

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures::future::CatchUnwind;
use futures::FutureExt;

use crate::bridge::{command_queue, CommandQueue, Commands};
use crate::model::{Command, Event, SessionKey};
use crate::{EventSink, SessionEvent};

/// Starts a session on the runtime: `session` gets the session's end of a new command
/// queue and returns the task, which must run its life through [`catch_panic`] and
/// [`end_if_panicked`]; the gateway's end of the queue is returned.
pub fn spawn_session<F>(session: impl FnOnce(Commands) -> F) -> CommandQueue
where
    F: Future<Output = ()> + Send + 'static,
{
    let (queue, commands) = command_queue();
    tokio::spawn(session(commands));
    queue
}

/// `life` (a session's life, borrowing the session), with a panic in it caught as its
/// outcome instead of unwinding through the runtime. Adds nothing to the task's size.
pub fn catch_panic<F: Future<Output = ()>>(life: F) -> CatchUnwind<AssertUnwindSafe<F>> {
    AssertUnwindSafe(life).catch_unwind()
}

/// After a session's life: if it panicked, logs it, closes the command queue and sends
/// `Event::Ended` with the panic's message and the commands still queued.
pub async fn end_if_panicked(outcome: std::thread::Result<()>, key: &SessionKey, events: &EventSink, commands: &mut Commands) {
    let Err(payload) = outcome else { return };
    let message = panic_message(payload.as_ref());
    tracing::error!(user = %key.user.0, network = ?key.network, panic = %message, "a session task panicked; its session is ended");
    let reason = format!("the gateway's session failed (a bug, logged for the administrator): {message}");
    commands.close();
    let unhandled: Vec<Command> = std::iter::from_fn(|| commands.try_recv()).collect();
    let _ = events.send(SessionEvent { key: key.clone(), event: Event::Ended { reason, unhandled } }).await;
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
    use tokio::sync::oneshot;

    fn key() -> SessionKey {
        SessionKey { user: UserId("u@h".into()), network: NetworkId::Irc { server: "s".into() } }
    }

    fn leave(channel: &str) -> Command {
        Command::Leave { channel: channel.into(), reason: None }
    }

    /// A session as the bridges write them: its life borrows it, and it ends itself.
    struct Panicking {
        key: SessionKey,
        events: EventSink,
        commands: Commands,
        go: Option<oneshot::Receiver<()>>,
    }

    impl Panicking {
        async fn life(&mut self) {
            let first = self.commands.recv().await;
            self.go.take().unwrap().await.ok();
            let index: usize = "3".parse().unwrap();
            let empty: Vec<u8> = Vec::new();
            let _ = empty[index];
            drop(first);
        }

        #[allow(clippy::manual_async_fn, reason = "written as the bridges write it: an async fn would hold the session twice")]
        fn run(mut self) -> impl Future<Output = ()> + Send {
            async move {
                let outcome = catch_panic(self.life()).await;
                end_if_panicked(outcome, &self.key, &self.events, &mut self.commands).await;
            }
        }
    }

    #[tokio::test]
    async fn a_panicking_session_ends_with_its_message_its_queued_commands_and_a_closed_queue() {
        let (events, mut rx) = tokio::sync::mpsc::channel(4);
        let (go, wait) = oneshot::channel::<()>();
        let queue = spawn_session(|commands| Panicking { key: key(), events, commands, go: Some(wait) }.run());
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
    fn catching_a_panic_adds_nothing_to_a_sessions_task() {
        // Thousands of idle sessions: what each task's allocation holds is their memory.
        let life = async {
            let held = [0u8; 4096];
            tokio::task::yield_now().await;
            std::hint::black_box(&held);
        };
        let alone = std::mem::size_of_val(&life);
        let caught = catch_panic(life);
        assert_eq!(std::mem::size_of_val(&caught), alone);
    }

    #[tokio::test]
    async fn a_session_that_ends_normally_reports_nothing_more() {
        let (events, mut rx) = tokio::sync::mpsc::channel(4);
        let key = SessionKey { user: UserId("u@h".into()), network: NetworkId::Email };
        let queue = spawn_session(|mut commands| async move {
            let outcome = catch_panic(async { while commands.recv().await.is_some() {} }).await;
            end_if_panicked(outcome, &key, &events, &mut commands).await;
        });
        queue.send(leave("#a")).unwrap();
        drop(queue);
        assert!(rx.recv().await.is_none(), "the sender is dropped without a word");
    }
}
