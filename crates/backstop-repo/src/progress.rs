//! Progress reporting and cancellation, shared by every long operation so
//! that the CLI draws bars and the service streams events from the same code.

use std::path::Path;

/// Receives progress from an operation. Called from several threads; keep
/// implementations cheap (count, and draw on a timer).
pub trait Progress: Send + Sync {
    /// The size of the whole job, when known (a backup learns it while it
    /// scans; a restore knows it up front).
    fn total(&self, _files: u64, _bytes: u64) {}
    /// Work done: whole files finished and bytes processed (read, reused,
    /// written or verified).
    fn advance(&self, _files: u64, _bytes: u64) {}
    /// Of the bytes processed, `new` were stored and `reused` were already
    /// in the repository (deduplicated, or unchanged since the parent).
    fn stored(&self, _new: u64, _reused: u64) {}
    /// A file or object that could not be processed; the operation goes on.
    fn warning(&self, _path: &Path, _message: &str) {}
    /// A line for the operator's log ("using parent snapshot 1a2b3c4d").
    fn info(&self, _message: &str) {}
}

/// Reports nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {}

/// A cooperative cancellation flag, shared with the backend decorators.
pub use backstop_backend::CancelToken;
