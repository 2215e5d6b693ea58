//! Reconnection delays: exponential, capped, with jitter so that many gateways (or one
//! gateway's sessions) do not hit a restarting server in lock-step. One implementation
//! for the component connection, IRC reconnections, IMAP reconnections and the mail
//! outbox's retries.

use std::time::Duration;

use tokio::time::Instant;

/// The next delays of a reconnection loop.
#[derive(Debug, Clone)]
pub struct Backoff {
    /// The first delay, and the one after a [`reset`](Backoff::reset).
    initial: Duration,
    /// The cap: delays never exceed it.
    max: Duration,
    /// The delay before jitter that the next call will use.
    next: Duration,
}

impl Backoff {
    /// Delays start at `initial` and double up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff { initial, max: max.max(initial), next: initial }
    }

    /// The delay to wait now: the current step with ±25 % jitter (never above the cap),
    /// then the step doubles.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        // Saturating: a cap near `Duration::MAX` (configured) must not overflow.
        self.next = self.next.saturating_mul(2).min(self.max);
        let jitter = 0.75 + fastrand::f64() * 0.5;
        Duration::try_from_secs_f64(base.as_secs_f64() * jitter).unwrap_or(self.max).min(self.max)
    }

    /// Back to the first step, after a connection that worked.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

/// Sleeps until `at`, or for ever when there is nothing to wait for (a `select!` arm
/// that is idle until a deadline is set).
pub async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_with_bounded_jitter() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let steps: Vec<u128> = (0..8).map(|_| b.next_delay().as_millis()).collect();
        let bases = [100, 200, 400, 800, 1000, 1000, 1000, 1000];
        for (got, base) in steps.iter().zip(bases) {
            assert!(*got >= base * 3 / 4 && *got <= (base * 5 / 4).min(1000), "{steps:?}");
        }
    }

    #[test]
    fn reset_starts_over() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        for _ in 0..5 {
            b.next_delay();
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(125));
    }
}
