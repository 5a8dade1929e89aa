//! Storage backends for Backstop repositories.
//!
//! A repository lives in a flat namespace of immutable objects (`data/ab/…`,
//! `index/…`, `snapshots/…`). [`Backend`] is the small, object-store-shaped
//! interface the engine needs from a storage system: put (optionally only if
//! absent), get (whole or a byte range), head, list by prefix, delete. It is
//! deliberately blocking; the engine runs it from worker threads.
//!
//! Implementations: [`LocalBackend`] (a directory, including NFS shares),
//! [`S3Backend`] (any S3-compatible store, through the `object_store` crate)
//! and [`MemoryBackend`] (tests). Cross-cutting behaviour is layered on as
//! decorators: [`RetryBackend`] retries transient failures with backoff and
//! [`LimitBackend`] bounds the number of concurrent operations, and
//! [`ThrottleBackend`] shares a [`Bandwidth`] limit. [`open`] parses a
//! repository location and returns the decorated stack. A job's
//! [`CancelToken`] (`cancel`) stops their waits; `error` classifies
//! failures ([`ErrorKind`]: transient, full, cancelled, …).
//!
//! Every implementation must pass [`conformance::run_all`].

use std::ffi::OsStr;
use std::fmt;
use std::io::Read;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

pub use backstop_confine::{Dir, FileTimes, Links, NetScope, PathScope};

mod cancel;
mod error;
mod limit;
mod local;
mod mapped;
mod memory;
mod retry;
mod s3;
mod throttle;

pub mod conformance;

pub use cancel::{CANCEL_GRACE, CancelToken};
pub use error::{Error, ErrorKind, Result, STORAGE_FULL_HINT, is_storage_full, is_transient_io};
pub use limit::LimitBackend;
pub use local::LocalBackend;
pub use memory::MemoryBackend;
pub use retry::{RetryBackend, RetryPolicy};
pub use s3::{S3Backend, S3Options};
pub use throttle::{Bandwidth, ThrottleBackend};

/// What `put` does when the object already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutMode {
    /// Replace it (atomically: readers see the old or the new bytes, never a mix).
    Overwrite,
    /// Fail with [`ErrorKind::AlreadyExists`] and leave it untouched.
    /// Two racing `Create`s may both succeed on some S3-compatible servers;
    /// never use it as a lock.
    Create,
}

/// Size and modification time of one object, as the backend reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
    /// The backend's clock (the server's, for S3 and NFS).
    pub last_modified: SystemTime,
}

/// A blocking object store.
///
/// Contracts every implementation keeps (the conformance suite checks them):
///
/// - Keys are relative `/`-separated paths of non-empty components without
///   `.` or `..`; anything else is [`ErrorKind::InvalidKey`].
/// - `put` is atomic: a concurrent or later `get` sees the whole object or
///   nothing. When `put` returns, the object is durable (local: fsynced, with
///   its directory).
/// - `get_range` returns exactly `range.end - range.start` bytes or fails with
///   [`ErrorKind::InvalidRange`] if the object is shorter.
/// - `list` returns every object whose key starts with `prefix`, in no
///   particular order; it is consistent with completed `put`s and `delete`s.
/// - `delete` of a missing object succeeds (deletes are idempotent).
/// - Methods block; call them from threads, not from inside an async task.
pub trait Backend: Send + Sync + fmt::Debug {
    /// Where the repository is, for messages. Never contains a secret.
    fn location(&self) -> String;

    fn put(&self, key: &str, data: &[u8], mode: PutMode) -> Result<()>;

    /// Store the contents of the file `name` in the directory `staging`
    /// under `key` and remove the file; on failure the file is left where
    /// it was, so the call can be retried. The local backend moves the
    /// file into place when `staging` is its own
    /// [`staging_dir`](Backend::staging_dir), which avoids a copy for large
    /// packs. The file is named by a handle and one name, never a path, so
    /// nothing resolves a path twice.
    fn put_file(&self, key: &str, staging: &Dir, name: &OsStr, mode: PutMode) -> Result<()> {
        copy_staged(self, key, staging, name, mode)
    }

    fn get(&self, key: &str) -> Result<Vec<u8>>;

    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>>;

    /// [`get_range`](Backend::get_range) into `buf`, replacing what it
    /// held: a caller reading many ranges (a restore reads every pack)
    /// reuses one buffer instead of faulting in fresh memory for each.
    /// On error `buf` holds no particular bytes.
    fn get_range_into(&self, key: &str, range: Range<u64>, buf: &mut Vec<u8>) -> Result<()> {
        *buf = self.get_range(key, range)?;
        Ok(())
    }

    fn head(&self, key: &str) -> Result<ObjectMeta>;

    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>>;

    fn delete(&self, key: &str) -> Result<()>;

    /// A local directory where files destined for [`put_file`](Backend::put_file)
    /// should be written, if this backend can move them into place cheaply.
    fn staging_dir(&self) -> Option<Arc<Dir>> {
        None
    }
}

/// [`Backend::put_file`] by reading the staged file and putting its bytes.
pub(crate) fn copy_staged<B: Backend + ?Sized>(
    backend: &B,
    key: &str,
    staging: &Dir,
    name: &OsStr,
    mode: PutMode,
) -> Result<()> {
    let mut data = Vec::new();
    staging
        .open_file(Path::new(name), libc::O_RDONLY, 0, Links::Refuse)
        .and_then(|mut f| f.read_to_end(&mut data))
        .map_err(|e| Error::io(key, e))?;
    backend.put(key, &data, mode)?;
    let _ = staging.remove_at(name);
    Ok(())
}

impl<B: Backend + ?Sized> Backend for Arc<B> {
    fn location(&self) -> String {
        (**self).location()
    }
    fn put(&self, key: &str, data: &[u8], mode: PutMode) -> Result<()> {
        (**self).put(key, data, mode)
    }
    fn put_file(&self, key: &str, staging: &Dir, name: &OsStr, mode: PutMode) -> Result<()> {
        (**self).put_file(key, staging, name, mode)
    }
    fn get(&self, key: &str) -> Result<Vec<u8>> {
        (**self).get(key)
    }
    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>> {
        (**self).get_range(key, range)
    }
    fn get_range_into(&self, key: &str, range: Range<u64>, buf: &mut Vec<u8>) -> Result<()> {
        (**self).get_range_into(key, range, buf)
    }
    fn head(&self, key: &str) -> Result<ObjectMeta> {
        (**self).head(key)
    }
    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        (**self).list(prefix)
    }
    fn delete(&self, key: &str) -> Result<()> {
        (**self).delete(key)
    }
    fn staging_dir(&self) -> Option<Arc<Dir>> {
        (**self).staging_dir()
    }
}

/// Reject keys that could escape a local root or that object stores treat
/// specially.
pub(crate) fn validate_key(key: &str) -> Result<()> {
    let bad = key.is_empty()
        || key.starts_with('/')
        || key.contains('\\')
        || key.contains('\0')
        || key.split('/').any(|c| c.is_empty() || c == "." || c == "..");
    if bad {
        return Err(Error::new(ErrorKind::InvalidKey, format!("invalid object key {key:?}")).with_key(key));
    }
    Ok(())
}

/// A prefix is a key, possibly with a trailing `/`, or empty.
pub(crate) fn validate_prefix(prefix: &str) -> Result<()> {
    let trimmed = prefix.trim_end_matches('/');
    if trimmed.is_empty() { Ok(()) } else { validate_key(trimmed) }
}

/// How [`open`] builds the backend stack.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// S3 settings; unset fields come from the `AWS_*` environment variables.
    pub s3: S3Options,
    /// Maximum concurrent backend operations.
    pub connections: usize,
    pub retry: RetryPolicy,
    /// Upload and download limits, shared by every backend opened with a
    /// clone of these options (a worker's jobs together keep to them).
    pub bandwidth: Bandwidth,
    /// Where a local repository may be (a confined tenant's: beneath its root).
    pub paths: PathScope,
    /// What an S3 endpoint may resolve to (a confined tenant's: what it was granted).
    pub net: NetScope,
    /// The job this backend serves: once it is cancelled, throttled
    /// transfers and retries stop waiting (see [`CANCEL_GRACE`]).
    pub cancel: Option<CancelToken>,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            s3: S3Options::default(),
            connections: 8,
            retry: RetryPolicy::default(),
            bandwidth: Bandwidth::default(),
            paths: PathScope::Any,
            net: NetScope::Any,
            cancel: None,
        }
    }
}

/// Parse a repository location and return its backend, wrapped in the retry,
/// bandwidth-limit and concurrency-limit decorators.
///
/// Accepted forms: `s3://bucket[/prefix]`, `memory:` (a fresh in-memory store,
/// for tests), `file:/path`, or a plain filesystem path.
pub fn open(location: &str, options: &OpenOptions) -> Result<Arc<dyn Backend>> {
    let inner: Arc<dyn Backend> = if let Some(rest) = location.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        Arc::new(S3Backend::new(bucket, prefix, &options.s3, &options.net)?)
    } else if location == "memory:" {
        Arc::new(MemoryBackend::new())
    } else if location.contains("://") {
        return Err(Error::new(
            ErrorKind::InvalidConfig,
            format!("unsupported repository location {location:?}: use a directory path or s3://bucket/prefix"),
        ));
    } else {
        let path = location.strip_prefix("file:").unwrap_or(location);
        if path.is_empty() {
            return Err(Error::new(ErrorKind::InvalidConfig, "the repository location is empty"));
        }
        Arc::new(LocalBackend::confined(Path::new(path), &options.paths)?)
    };
    let cancel = options.cancel.clone().unwrap_or_default();
    let retried = RetryBackend::new(inner, options.retry.clone()).with_cancel(cancel.clone());
    let throttled = ThrottleBackend::sharing(retried, &options.bandwidth).with_cancel(cancel);
    Ok(Arc::new(LimitBackend::new(throttled, options.connections.max(1))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_that_escape_or_are_empty_are_rejected() {
        for bad in ["", "/abs", "a//b", "a/../b", "..", ".", "a/.", "a\\b", "a\0b", "a/"] {
            assert_eq!(validate_key(bad).unwrap_err().kind(), ErrorKind::InvalidKey, "{bad:?}");
        }
        for good in ["config", "data/ab/abcdef", "keys/x.y"] {
            validate_key(good).unwrap();
        }
        validate_prefix("").unwrap();
        validate_prefix("data/").unwrap();
        assert!(validate_prefix("../").is_err());
    }

    #[test]
    fn open_rejects_unknown_schemes_with_a_hint() {
        let err = open("ftp://host/x", &OpenOptions::default()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidConfig);
        assert!(err.to_string().contains("s3://"), "{err}");
    }
}
