//! Bandwidth limits: keep uploads and downloads under a rate, so a backup
//! does not saturate a site's uplink.

use std::ffi::OsStr;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backstop_confine::Dir;

use crate::{Backend, CancelToken, Error, ErrorKind, ObjectMeta, PutMode, Result};

/// A process's bandwidth limits: every backend opened with (a clone of)
/// the same `Bandwidth` shares its schedules, so the jobs a worker runs at
/// once add up to at most the limits.
#[derive(Debug, Clone, Default)]
pub struct Bandwidth {
    upload: Option<Arc<Rate>>,
    download: Option<Arc<Rate>>,
}

impl Bandwidth {
    /// Limits in bytes per second (either may be unlimited).
    pub fn new(upload_bytes_per_sec: Option<u64>, download_bytes_per_sec: Option<u64>) -> Bandwidth {
        Bandwidth {
            upload: upload_bytes_per_sec.map(|r| Arc::new(Rate::new(r))),
            download: download_bytes_per_sec.map(|r| Arc::new(Rate::new(r))),
        }
    }
}

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

    /// Wait for `bytes`' turn. A cancelled job's transfer waits no longer
    /// than the grace ([`CANCEL_GRACE`](crate::CANCEL_GRACE)) and then fails;
    /// one that starts after the grace is not held back (what a cancelled
    /// job still writes is the little that keeps the repository consistent).
    fn take(&self, bytes: u64, cancel: &CancelToken) -> Result<()> {
        if cancel.is_overdue() {
            return Ok(());
        }
        let cost = Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec as f64);
        let until = {
            let mut next = self.next_free.lock().unwrap_or_else(|e| e.into_inner());
            let start = (*next).max(Instant::now());
            *next = start + cost;
            *next
        };
        let now = Instant::now();
        if until > now && !cancel.sleep(until - now) {
            return Err(Error::new(ErrorKind::Cancelled, "cancelled while waiting for bandwidth"));
        }
        Ok(())
    }
}

/// Limits the bytes per second of `put`s and of `get`s (either may be
/// unlimited).
#[derive(Debug)]
pub struct ThrottleBackend<B> {
    inner: B,
    upload: Option<Arc<Rate>>,
    download: Option<Arc<Rate>>,
    cancel: CancelToken,
}

impl<B: Backend> ThrottleBackend<B> {
    pub fn new(inner: B, upload_bytes_per_sec: Option<u64>, download_bytes_per_sec: Option<u64>) -> ThrottleBackend<B> {
        ThrottleBackend::sharing(inner, &Bandwidth::new(upload_bytes_per_sec, download_bytes_per_sec))
    }

    /// Keep to `bandwidth`'s schedules, shared with every backend given it.
    pub fn sharing(inner: B, bandwidth: &Bandwidth) -> ThrottleBackend<B> {
        ThrottleBackend {
            inner,
            upload: bandwidth.upload.clone(),
            download: bandwidth.download.clone(),
            cancel: CancelToken::default(),
        }
    }

    /// Stop waiting once `cancel` is cancelled.
    pub fn with_cancel(mut self, cancel: CancelToken) -> ThrottleBackend<B> {
        self.cancel = cancel;
        self
    }

    /// Wait until `bytes` more may be uploaded.
    fn uploading(&self, bytes: u64) -> Result<()> {
        match &self.upload {
            Some(rate) => rate.take(bytes, &self.cancel),
            None => Ok(()),
        }
    }

    /// Wait until `bytes` more may be downloaded.
    fn downloaded(&self, bytes: usize) -> Result<()> {
        match &self.download {
            Some(rate) => rate.take(bytes as u64, &self.cancel),
            None => Ok(()),
        }
    }
}

impl<B: Backend> Backend for ThrottleBackend<B> {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn put(&self, key: &str, data: &[u8], mode: PutMode) -> Result<()> {
        self.uploading(data.len() as u64).map_err(|e| e.with_key(key))?;
        self.inner.put(key, data, mode)
    }
    fn put_file(&self, key: &str, staging: &Dir, name: &OsStr, mode: PutMode) -> Result<()> {
        self.uploading(staging.stat_at(name).map(|st| st.st_size as u64).unwrap_or(0)).map_err(|e| e.with_key(key))?;
        self.inner.put_file(key, staging, name, mode)
    }
    fn get(&self, key: &str) -> Result<Vec<u8>> {
        let data = self.inner.get(key)?;
        self.downloaded(data.len()).map_err(|e| e.with_key(key))?;
        Ok(data)
    }
    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>> {
        let data = self.inner.get_range(key, range)?;
        self.downloaded(data.len()).map_err(|e| e.with_key(key))?;
        Ok(data)
    }
    fn get_range_into(&self, key: &str, range: Range<u64>, buf: &mut Vec<u8>) -> Result<()> {
        self.inner.get_range_into(key, range, buf)?;
        self.downloaded(buf.len()).map_err(|e| e.with_key(key))
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
    fn backends_sharing_a_bandwidth_share_its_rate() {
        let bandwidth = Bandwidth::new(Some(1 << 20), None);
        let (a, b) = (
            ThrottleBackend::sharing(MemoryBackend::new(), &bandwidth),
            ThrottleBackend::sharing(MemoryBackend::new(), &bandwidth),
        );
        let data = vec![7u8; 256 << 10];
        let start = Instant::now();
        for i in 0..2 {
            a.put(&format!("k{i}"), &data, PutMode::Overwrite).unwrap();
            b.put(&format!("k{i}"), &data, PutMode::Overwrite).unwrap();
        }
        // 1 MiB through two backends at 1 MiB/s between them.
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(700), "{took:?}");
    }

    #[test]
    fn a_cancelled_upload_stops_waiting_after_the_grace() {
        let cancel = CancelToken::new();
        let b = Arc::new(ThrottleBackend::new(MemoryBackend::new(), Some(64 << 10), None).with_cancel(cancel.clone()));
        // 1 MiB at 64 KiB/s books 16 s.
        let put = {
            let b = b.clone();
            std::thread::spawn(move || b.put("big", &vec![1u8; 1 << 20], PutMode::Overwrite))
        };
        std::thread::sleep(Duration::from_millis(100));
        let start = Instant::now();
        cancel.cancel();
        let err = put.join().unwrap().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Cancelled, "{err}");
        assert!(start.elapsed() < crate::CANCEL_GRACE + Duration::from_secs(1), "{:?}", start.elapsed());
        assert!(b.head("big").is_err(), "nothing was written");
        // After the grace, what the job still writes is not held back.
        let start = Instant::now();
        b.put("index", &vec![2u8; 256 << 10], PutMode::Overwrite).unwrap();
        assert!(start.elapsed() < Duration::from_secs(1), "{:?}", start.elapsed());
    }

    #[test]
    fn unlimited_is_a_pass_through() {
        let b = ThrottleBackend::new(MemoryBackend::new(), None, None);
        b.put("k", b"v", PutMode::Create).unwrap();
        assert_eq!(b.get_range("k", 0..1).unwrap(), b"v");
    }
}
