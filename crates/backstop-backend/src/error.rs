use std::fmt;
use std::io;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, in terms a caller can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The object does not exist.
    NotFound,
    /// `PutMode::Create` found the object present.
    AlreadyExists,
    /// A byte range beyond the end of the object.
    InvalidRange,
    /// The key is not a valid object key.
    InvalidKey,
    /// Credentials or permissions were refused.
    PermissionDenied,
    /// The location or the backend settings are wrong.
    InvalidConfig,
    /// A failure that may go away if retried (network, throttling, timeouts).
    Transient,
    /// The storage has no room left (a full disk, a quota, a full bucket):
    /// retrying will not help until space is freed.
    StorageFull,
    /// The job this transfer served was cancelled while it waited.
    Cancelled,
    /// Anything else; retrying will not help.
    Other,
}

/// A backend error: its kind, the object key if there is one, and the cause.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    key: Option<String>,
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error { kind, key: None, message: message.into(), source: None }
    }

    pub fn with_key(mut self, key: &str) -> Error {
        self.key = Some(key.to_string());
        self
    }

    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Error {
        self.source = Some(Box::new(source));
        self
    }

    pub fn not_found(key: &str) -> Error {
        Error::new(ErrorKind::NotFound, "object not found").with_key(key)
    }

    /// Classify an I/O error on `key` (the classes: `docs/errors.md`).
    pub fn io(key: &str, err: io::Error) -> Error {
        let kind = match err.kind() {
            io::ErrorKind::NotFound => ErrorKind::NotFound,
            io::ErrorKind::AlreadyExists => ErrorKind::AlreadyExists,
            io::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
            _ if is_storage_full(&err) => ErrorKind::StorageFull,
            _ if is_transient_io(&err) => ErrorKind::Transient,
            _ => match err.raw_os_error() {
                // A link in the way of a local repository's object: refused,
                // never followed (a repository holds no links); a read-only
                // file system refuses too.
                Some(libc::ELOOP | libc::EXDEV | libc::EROFS) => ErrorKind::PermissionDenied,
                _ => ErrorKind::Other,
            },
        };
        let message = match err.raw_os_error() {
            Some(libc::ELOOP | libc::EXDEV) => {
                "a symbolic link is in the way; a repository holds none, so it was not followed (remove it)".to_string()
            }
            _ if kind == ErrorKind::StorageFull => format!("{err}: {STORAGE_FULL_HINT}"),
            _ => err.to_string(),
        };
        Error { kind, key: Some(key.to_string()), message, source: None }
    }

    /// The storage is full.
    pub fn storage_full(message: impl std::fmt::Display) -> Error {
        Error::new(ErrorKind::StorageFull, format!("{message}: {STORAGE_FULL_HINT}"))
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    pub fn is_transient(&self) -> bool {
        self.kind == ErrorKind::Transient
    }

    pub fn is_not_found(&self) -> bool {
        self.kind == ErrorKind::NotFound
    }
}

/// What an operator is told when the repository's storage is full.
pub const STORAGE_FULL_HINT: &str = "the repository's disk is full: run prune or free space";

/// Whether an I/O error says the storage has no room left (`ENOSPC`, a
/// quota's `EDQUOT`, a file size limit's `EFBIG`).
pub fn is_storage_full(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::StorageFull
        || err.kind() == io::ErrorKind::QuotaExceeded
        || matches!(err.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT | libc::EFBIG))
}

/// Whether an I/O error may pass if the operation is tried again: an
/// interrupted or timed-out call, a connection that dropped, and what NFS
/// shares report for server trouble (`EIO`, `ESTALE`). Everything else, a
/// full disk above all, is permanent.
pub fn is_transient_io(err: &io::Error) -> bool {
    use io::ErrorKind as K;
    if is_storage_full(err) {
        return false;
    }
    matches!(
        err.kind(),
        K::Interrupted
            | K::TimedOut
            | K::WouldBlock
            | K::ConnectionReset
            | K::ConnectionAborted
            | K::ConnectionRefused
            | K::BrokenPipe
    ) || matches!(
        err.raw_os_error(),
        Some(
            libc::EIO
                | libc::ESTALE
                | libc::EAGAIN
                | libc::ETIMEDOUT
                | libc::ECONNRESET
                | libc::ENETUNREACH
                | libc::EHOSTUNREACH
        )
    )
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(key) => write!(f, "{key}: {}", self.message)?,
            None => write!(f, "{}", self.message)?,
        }
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn std::error::Error + 'static))
    }
}
