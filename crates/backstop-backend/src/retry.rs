//! Retry transient failures with exponential backoff.

use std::ffi::OsStr;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use backstop_confine::Dir;

use crate::{Backend, CancelToken, ObjectMeta, PutMode, Result};

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in all, including the first.
    pub max_attempts: u32,
    pub initial_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { max_attempts: 6, initial_delay: Duration::from_millis(200), max_delay: Duration::from_secs(10) }
    }
}

/// Retries operations that fail with [`ErrorKind::Transient`](crate::ErrorKind::Transient).
/// Every operation of [`Backend`] is idempotent (a retried `PutMode::Create`
/// whose first attempt landed reports `AlreadyExists`), so retrying is safe.
#[derive(Debug)]
pub struct RetryBackend<B> {
    inner: B,
    policy: RetryPolicy,
    cancel: CancelToken,
}

impl<B: Backend> RetryBackend<B> {
    pub fn new(inner: B, policy: RetryPolicy) -> RetryBackend<B> {
        RetryBackend { inner, policy, cancel: CancelToken::default() }
    }

    /// Stop retrying once `cancel` is cancelled (past its grace).
    pub fn with_cancel(mut self, cancel: CancelToken) -> RetryBackend<B> {
        self.cancel = cancel;
        self
    }

    fn retry<T>(&self, mut op: impl FnMut() -> Result<T>) -> Result<T> {
        let mut delay = self.policy.initial_delay;
        let mut attempt = 1;
        loop {
            match op() {
                Err(e) if e.is_transient() && attempt < self.policy.max_attempts && !self.cancel.is_overdue() => {
                    if !self.cancel.sleep(delay) {
                        return Err(e);
                    }
                    delay = (delay * 2).min(self.policy.max_delay);
                    attempt += 1;
                }
                result => return result,
            }
        }
    }
}

impl<B: Backend> Backend for RetryBackend<B> {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn put(&self, key: &str, data: &[u8], mode: PutMode) -> Result<()> {
        self.retry(|| self.inner.put(key, data, mode))
    }
    fn put_file(&self, key: &str, staging: &Dir, name: &OsStr, mode: PutMode) -> Result<()> {
        self.retry(|| self.inner.put_file(key, staging, name, mode))
    }
    fn get(&self, key: &str) -> Result<Vec<u8>> {
        self.retry(|| self.inner.get(key))
    }
    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>> {
        self.retry(|| self.inner.get_range(key, range.clone()))
    }
    fn get_range_into(&self, key: &str, range: Range<u64>, buf: &mut Vec<u8>) -> Result<()> {
        self.retry(|| self.inner.get_range_into(key, range.clone(), buf))
    }
    fn head(&self, key: &str) -> Result<ObjectMeta> {
        self.retry(|| self.inner.head(key))
    }
    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        self.retry(|| self.inner.list(prefix))
    }
    fn delete(&self, key: &str) -> Result<()> {
        self.retry(|| self.inner.delete(key))
    }
    fn staging_dir(&self) -> Option<Arc<Dir>> {
        self.inner.staging_dir()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Error, ErrorKind, MemoryBackend};
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Fails the first `failures` gets with the given kind.
    #[derive(Debug)]
    struct Flaky {
        inner: MemoryBackend,
        failures: AtomicU32,
        kind: ErrorKind,
    }

    impl Backend for Flaky {
        fn location(&self) -> String {
            "flaky".into()
        }
        fn put(&self, key: &str, data: &[u8], mode: PutMode) -> Result<()> {
            self.inner.put(key, data, mode)
        }
        fn get(&self, key: &str) -> Result<Vec<u8>> {
            if self.failures.load(Ordering::SeqCst) > 0 {
                self.failures.fetch_sub(1, Ordering::SeqCst);
                return Err(Error::new(self.kind, "injected"));
            }
            self.inner.get(key)
        }
        fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>> {
            self.inner.get_range(key, range)
        }
        fn head(&self, key: &str) -> Result<ObjectMeta> {
            self.inner.head(key)
        }
        fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
            self.inner.list(prefix)
        }
        fn delete(&self, key: &str) -> Result<()> {
            self.inner.delete(key)
        }
    }

    fn flaky(failures: u32, kind: ErrorKind) -> RetryBackend<Flaky> {
        let inner = Flaky { inner: MemoryBackend::new(), failures: AtomicU32::new(failures), kind };
        inner.put("k", b"v", PutMode::Create).unwrap();
        let policy = RetryPolicy {
            max_attempts: 3,
            initial_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
        };
        RetryBackend::new(inner, policy)
    }

    #[test]
    fn transient_errors_are_retried_until_success() {
        assert_eq!(flaky(2, ErrorKind::Transient).get("k").unwrap(), b"v");
    }

    #[test]
    fn retries_give_up_after_max_attempts() {
        let err = flaky(3, ErrorKind::Transient).get("k").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Transient);
    }

    #[test]
    fn permanent_errors_are_not_retried() {
        let backend = flaky(1, ErrorKind::PermissionDenied);
        assert_eq!(backend.get("k").unwrap_err().kind(), ErrorKind::PermissionDenied);
        // The one injected failure was consumed by the single attempt.
        assert_eq!(backend.get("k").unwrap(), b"v");
    }
}
