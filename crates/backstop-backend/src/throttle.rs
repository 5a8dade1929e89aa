//! Bandwidth limits: keep uploads and downloads under a rate, so a backup
//! does not saturate a site's uplink.

use std::ffi::OsStr;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backstop_confine::Dir;

use crate::{Backend, ObjectMeta, PutMode, Result};

/// A shared schedule: each transfer books the time its bytes take at the
/// rate and waits until its booking ends, so concurrent transfers add up
/// to at most the rate.
#[derive(Debug)]
struct Rate {
    bytes_per_sec: u64,
    next_free: Mutex<Instant>,
}

impl Rate {
    fn new(bytes_per_sec: u64) -> Rate {
        Rate { bytes_per_sec: bytes_per_sec.max(1), next_free: Mutex::new(Instant::now()) }
    }

    fn take(&self, bytes: u64) {
        let cost = Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec as f64);
        let until = {
            let mut next = self.next_free.lock().unwrap_or_else(|e| e.into_inner());
            let start = (*next).max(Instant::now());
            *next = start + cost;
            *next
        };
        let now = Instant::now();
        if until > now {
            std::thread::sleep(until - now);
        }
    }
}

/// Limits the bytes per second of `put`s and of `get`s (either may be
/// unlimited).
#[derive(Debug)]
pub struct ThrottleBackend<B> {
    inner: B,
    upload: Option<Rate>,
    download: Option<Rate>,
}

impl<B: Backend> ThrottleBackend<B> {
    pub fn new(inner: B, upload_bytes_per_sec: Option<u64>, download_bytes_per_sec: Option<u64>) -> ThrottleBackend<B> {
        ThrottleBackend {
            inner,
            upload: upload_bytes_per_sec.map(Rate::new),
            download: download_bytes_per_sec.map(Rate::new),
        }
    }

    /// Wait until `bytes` more may be downloaded.
    fn downloaded(&self, bytes: usize) {
        if let Some(rate) = &self.download {
            rate.take(bytes as u64);
        }
    }
}

impl<B: Backend> Backend for ThrottleBackend<B> {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn put(&self, key: &str, data: &[u8], mode: PutMode) -> Result<()> {
        if let Some(rate) = &self.upload {
            rate.take(data.len() as u64);
        }
        self.inner.put(key, data, mode)
    }
    fn put_file(&self, key: &str, staging: &Dir, name: &OsStr, mode: PutMode) -> Result<()> {
        if let Some(rate) = &self.upload {
            rate.take(staging.stat_at(name).map(|st| st.st_size as u64).unwrap_or(0));
        }
        self.inner.put_file(key, staging, name, mode)
    }
    fn get(&self, key: &str) -> Result<Vec<u8>> {
        let data = self.inner.get(key)?;
        self.downloaded(data.len());
        Ok(data)
    }
    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>> {
        let data = self.inner.get_range(key, range)?;
        self.downloaded(data.len());
        Ok(data)
    }
    fn get_range_into(&self, key: &str, range: Range<u64>, buf: &mut Vec<u8>) -> Result<()> {
        self.inner.get_range_into(key, range, buf)?;
        self.downloaded(buf.len());
        Ok(())
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
    fn staging_dir(&self) -> Option<Arc<Dir>> {
        self.inner.staging_dir()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryBackend;

    #[test]
    fn uploads_and_downloads_keep_to_the_rate() {
        let b = ThrottleBackend::new(MemoryBackend::new(), Some(1 << 20), Some(2 << 20));
        let data = vec![7u8; 256 << 10];
        let start = Instant::now();
        for i in 0..4 {
            b.put(&format!("k{i}"), &data, PutMode::Overwrite).unwrap();
        }
        // 1 MiB at 1 MiB/s: about a second (the first booking starts at once).
        let up = start.elapsed();
        assert!(up >= Duration::from_millis(900), "{up:?}");
        let start = Instant::now();
        for i in 0..4 {
            assert_eq!(b.get(&format!("k{i}")).unwrap().len(), data.len());
        }
        let down = start.elapsed();
        assert!(down >= Duration::from_millis(450), "{down:?}");
    }

    #[test]
    fn unlimited_is_a_pass_through() {
        let b = ThrottleBackend::new(MemoryBackend::new(), None, None);
        b.put("k", b"v", PutMode::Create).unwrap();
        assert_eq!(b.get_range("k", 0..1).unwrap(), b"v");
    }
}
