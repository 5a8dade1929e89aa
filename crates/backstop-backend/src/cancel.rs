//! A job's cancellation, seen by the engine (which checks it between units
//! of work) and by the backend decorators (which stop waiting for a
//! cancelled job: a throttled transfer, a retry's backoff).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// How long a cancelled job's transfers may go on waiting (for bandwidth,
/// for a retry) to finish what they began: a checkpoint, when uploads keep
/// up. Past it, a transfer still waiting fails with
/// [`ErrorKind::Cancelled`](crate::ErrorKind::Cancelled), and the few small
/// writes that leave the repository consistent (the index of the packs that
/// were uploaded) go ahead unthrottled.
pub const CANCEL_GRACE: Duration = Duration::from_secs(2);

/// A cooperative cancellation flag. Operations check it between units of
/// work and return a cancellation error after leaving the repository
/// consistent.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    cancelled: AtomicBool,
    at: OnceLock<Instant>,
    /// Wakes the tasks waiting in [`CancelToken::cancelled`].
    woken: tokio::sync::Notify,
}

impl CancelToken {
    pub fn new() -> CancelToken {
        CancelToken::default()
    }

    pub fn cancel(&self) {
        self.0.at.get_or_init(Instant::now);
        self.0.cancelled.store(true, Ordering::SeqCst);
        self.0.woken.notify_waiters();
    }

    /// Returns once the token is cancelled (at once if it is), woken by
    /// [`cancel`](CancelToken::cancel), not by polling.
    pub async fn cancelled(&self) {
        let mut woken = std::pin::pin!(self.0.woken.notified());
        // Registered before the flag is read: a cancel in between still wakes it.
        woken.as_mut().enable();
        if !self.is_cancelled() {
            woken.await;
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.cancelled.load(Ordering::Relaxed)
    }

    /// Cancelled more than [`CANCEL_GRACE`] ago: stop waiting now.
    pub fn is_overdue(&self) -> bool {
        self.is_cancelled() && self.0.at.get().is_some_and(|at| at.elapsed() >= CANCEL_GRACE)
    }

    /// Sleep for `d`, or until the grace of a cancellation runs out;
    /// whether the whole time was slept.
    pub fn sleep(&self, d: Duration) -> bool {
        let until = Instant::now() + d;
        loop {
            if self.is_overdue() {
                return false;
            }
            let now = Instant::now();
            if now >= until {
                return true;
            }
            std::thread::sleep((until - now).min(Duration::from_millis(50)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_waiter_wakes_when_cancelled_and_a_late_one_returns_at_once() {
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_time().build().unwrap();
        runtime.block_on(async {
            let token = CancelToken::new();
            let waiter = tokio::spawn({
                let token = token.clone();
                async move { token.cancelled().await }
            });
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert!(!waiter.is_finished(), "waits while not cancelled");
            token.cancel();
            tokio::time::timeout(Duration::from_secs(1), waiter).await.expect("woken").unwrap();
            tokio::time::timeout(Duration::from_millis(100), token.cancelled()).await.expect("already cancelled");
        });
    }

    #[test]
    fn a_cancelled_sleep_ends_after_the_grace() {
        let token = CancelToken::new();
        assert!(token.sleep(Duration::from_millis(10)));
        token.cancel();
        assert!(token.is_cancelled() && !token.is_overdue());
        let start = Instant::now();
        assert!(!token.sleep(Duration::from_secs(60)));
        let slept = start.elapsed();
        assert!(slept >= CANCEL_GRACE && slept < CANCEL_GRACE + Duration::from_secs(1), "{slept:?}");
        assert!(token.is_overdue());
    }
}
