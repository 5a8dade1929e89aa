//! The Backstop repository engine.
//!
//! A [`Repository`] is a set of objects on a [`Backend`](backstop_backend::Backend):
//! packs of sealed blobs (`pack`), index files that say where each blob is
//! (`index`), trees that describe directories (`tree`) and snapshot manifests
//! that commit a backup (`snapshot`). The format is specified in
//! `docs/format.md`.
//!
//! Operations are modules with an `*Options` input and a summary or report
//! output: [`backup`] (trees, streams and images into a snapshot), [`restore`]
//! (a snapshot back to files, a stream or a device), [`check`], [`forget`],
//! [`prune`]. Long operations take a [`Progress`] sink and a [`CancelToken`].
//! Writers announce themselves with a [`session::Session`], which is what lets
//! prune run beside backups without a lock.

pub mod backup;
pub mod chunker;
pub mod config;
pub mod crypto;
pub mod damage;
pub mod error;
pub mod filter;
pub mod id;
pub mod index;
pub mod ops;
pub mod pack;
pub mod progress;
pub mod repository;
pub mod restore;
pub mod session;
pub mod snapshot;
pub mod sys;
pub mod tree;
pub mod util;
mod wire;

pub use config::Config;
pub use crypto::Password;
pub use error::{Error, Result};
pub use id::{BlobId, IndexId, KeyId, PackId, SessionId, SnapshotId};
pub use progress::{CancelToken, NoProgress, Progress};
pub use repository::{InitOptions, Repository};
pub use snapshot::{Snapshot, SnapshotKind, Summary};
pub use wire::DecodeError;
