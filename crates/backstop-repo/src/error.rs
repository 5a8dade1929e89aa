//! Errors of the engine. Each variant says what a caller can do about it:
//! tell the user (`NoRepository`, `WrongPassword`, `Invalid`), retry
//! (`is_transient`), or report damage (`Corrupt`, which names the object).

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("there is no repository at {location}; create one with `backstop init`")]
    NoRepository { location: String },

    #[error("wrong password: none of this repository's keys opens with it")]
    WrongPassword,

    #[error("a repository already exists at {location}")]
    AlreadyInitialized { location: String },

    #[error("{object} is damaged: {reason}")]
    Corrupt { object: String, reason: String },

    #[error("{what} not found")]
    NotFound { what: String },

    /// The user asked for something that cannot be done as asked.
    #[error("{0}")]
    Invalid(String),

    /// Another maintenance operation holds the repository.
    #[error("{0}")]
    Busy(String),

    /// Its cause is part of its message, not a source of its own: shown
    /// with its chain (`{:#}`) it would be said twice.
    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: std::io::Error },

    /// The repository's storage (or the staging disk) has no room left:
    /// permanent until space is freed. The message ends with what to do.
    #[error("{0}")]
    StorageFull(String),

    #[error(transparent)]
    Backend(backstop_backend::Error),

    /// A packaged source (a dump, a command, an image) failed; the backup
    /// is abandoned rather than saved without it.
    #[error("the source failed: {0}")]
    Source(String),

    #[error("cancelled")]
    Cancelled,
}

impl Error {
    pub fn corrupt(object: impl Into<String>, reason: impl std::fmt::Display) -> Error {
        Error::Corrupt { object: object.into(), reason: reason.to_string() }
    }

    /// An I/O error on `path`; a full disk becomes [`Error::StorageFull`].
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        let path = path.into();
        if backstop_backend::is_storage_full(&source) {
            let hint = backstop_backend::STORAGE_FULL_HINT;
            return Error::StorageFull(format!("{}: {source}: {hint}", path.display()));
        }
        Error::Io { path, error: source }
    }

    pub fn not_found(what: impl Into<String>) -> Error {
        Error::NotFound { what: what.into() }
    }

    /// An error of the same class, for a second caller of something that
    /// failed once (an upload several threads wait on): a full disk stays
    /// a full disk, a transient failure stays transient.
    pub fn echo(&self, context: &str) -> Error {
        match self {
            Error::StorageFull(m) => Error::StorageFull(format!("{context}: {m}")),
            Error::Cancelled => Error::Cancelled,
            e if e.is_transient() => Error::Backend(backstop_backend::Error::new(
                backstop_backend::ErrorKind::Transient,
                format!("{context}: {e}"),
            )),
            e => Error::Invalid(format!("{context}: {e}")),
        }
    }

    /// Whether retrying the whole operation later may succeed: a backend's
    /// transient failure, an I/O error of a passing kind, a repository busy
    /// with maintenance. The classes are written down in `docs/errors.md`.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Backend(e) => e.is_transient(),
            Error::Io { error, .. } => backstop_backend::is_transient_io(error),
            Error::Busy(_) => true,
            _ => false,
        }
    }
}

impl From<backstop_backend::Error> for Error {
    fn from(e: backstop_backend::Error) -> Error {
        match e.kind() {
            backstop_backend::ErrorKind::Cancelled => Error::Cancelled,
            backstop_backend::ErrorKind::StorageFull => Error::StorageFull(e.to_string()),
            _ => Error::Backend(e),
        }
    }
}
