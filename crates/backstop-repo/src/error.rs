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

    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },

    #[error(transparent)]
    Backend(#[from] backstop_backend::Error),

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

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io { path: path.into(), source }
    }

    pub fn not_found(what: impl Into<String>) -> Error {
        Error::NotFound { what: what.into() }
    }

    /// Whether retrying the whole operation later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Backend(e) => e.is_transient(),
            Error::Busy(_) => true,
            _ => false,
        }
    }
}
