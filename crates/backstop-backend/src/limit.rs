//! Bound the number of backend operations in flight.

use std::ffi::OsStr;
use std::ops::Range;
use std::sync::{Arc, Condvar, Mutex};

use backstop_confine::Dir;

use crate::{Backend, ObjectMeta, PutMode, Result};

/// Lets at most `limit` operations run at once; the rest wait. Object stores
/// throttle clients that open too many connections, and NFS servers slow
/// down under deep queues.
#[derive(Debug)]
pub struct LimitBackend<B> {
    inner: B,
    limit: usize,
    running: Mutex<usize>,
    freed: Condvar,
}

impl<B: Backend> LimitBackend<B> {
    pub fn new(inner: B, limit: usize) -> LimitBackend<B> {
        LimitBackend { inner, limit: limit.max(1), running: Mutex::new(0), freed: Condvar::new() }
    }

    fn limited<T>(&self, op: impl FnOnce() -> Result<T>) -> Result<T> {
        {
            let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
            while *running >= self.limit {
                running = self.freed.wait(running).unwrap_or_else(|e| e.into_inner());
            }
            *running += 1;
        }
        struct Release<'a, B>(&'a LimitBackend<B>);
        impl<B> Drop for Release<'_, B> {
            fn drop(&mut self) {
                *self.0.running.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
                self.0.freed.notify_one();
            }
        }
        let _release = Release(self);
        op()
    }
}

impl<B: Backend> Backend for LimitBackend<B> {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn put(&self, key: &str, data: &[u8], mode: PutMode) -> Result<()> {
        self.limited(|| self.inner.put(key, data, mode))
    }
    fn put_file(&self, key: &str, staging: &Dir, name: &OsStr, mode: PutMode) -> Result<()> {
        self.limited(|| self.inner.put_file(key, staging, name, mode))
    }
    fn get(&self, key: &str) -> Result<Vec<u8>> {
        self.limited(|| self.inner.get(key))
    }
    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>> {
        self.limited(|| self.inner.get_range(key, range))
    }
    fn get_range_into(&self, key: &str, range: Range<u64>, buf: &mut Vec<u8>) -> Result<()> {
        self.limited(|| self.inner.get_range_into(key, range, buf))
    }
    fn head(&self, key: &str) -> Result<ObjectMeta> {
        self.limited(|| self.inner.head(key))
    }
    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        self.limited(|| self.inner.list(prefix))
    }
    fn delete(&self, key: &str) -> Result<()> {
        self.limited(|| self.inner.delete(key))
    }
    fn staging_dir(&self) -> Option<Arc<Dir>> {
        self.inner.staging_dir()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Error, MemoryBackend};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// Records the highest number of concurrent `get`s it saw.
    #[derive(Debug, Default)]
    struct Gauge {
        now: AtomicUsize,
        peak: AtomicUsize,
    }

    impl Backend for Gauge {
        fn location(&self) -> String {
            "gauge".into()
        }
        fn put(&self, _: &str, _: &[u8], _: PutMode) -> Result<()> {
            Ok(())
        }
        fn get(&self, _: &str) -> Result<Vec<u8>> {
            let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
            self.peak.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(5));
            self.now.fetch_sub(1, Ordering::SeqCst);
            Ok(Vec::new())
        }
        fn get_range(&self, key: &str, _: Range<u64>) -> Result<Vec<u8>> {
            self.get(key)
        }
        fn head(&self, key: &str) -> Result<ObjectMeta> {
            Err(Error::not_found(key))
        }
        fn list(&self, _: &str) -> Result<Vec<ObjectMeta>> {
            Ok(Vec::new())
        }
        fn delete(&self, _: &str) -> Result<()> {
            Ok(())
        }
    }

    #[test]
    fn no_more_than_the_limit_run_at_once() {
        let backend = LimitBackend::new(Gauge::default(), 3);
        std::thread::scope(|s| {
            for _ in 0..12 {
                s.spawn(|| backend.get("x").unwrap());
            }
        });
        let peak = backend.inner.peak.load(Ordering::SeqCst);
        assert!((1..=3).contains(&peak), "peak concurrency {peak}");
    }

    #[test]
    fn limited_memory_backend_passes_the_conformance_suite() {
        crate::conformance::run_all(&LimitBackend::new(MemoryBackend::new(), 2));
    }
}
