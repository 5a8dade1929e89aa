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
//! (a snapshot back to files, a stream or a device), [`ops::check`],
//! [`ops::forget`], [`ops::prune`]. Long operations take a [`Progress`] sink and a [`CancelToken`].
//! Writers announce themselves with a [`session::Session`], which is what lets
//! prune run beside backups without a lock.
//!
//! Public modules, for the callers (CLI, packagers, worker): `backup`
//! (pipeline, walker, packager source trees), `cache` (the local copy of
//! index files, manifests and tree packs), `restore`, `ops` (check,
//! verify, forget, prune, repair, key, used), `repository`'s
//! [`Repository`], `config`, `crypto` (keys, key slots, sealing), `index`,
//! `pack`, `tree`, `session`, `id`, `sys` (file metadata, xattrs: the engine's
//! tests use it). Internal: `chunker` (CDC and fixed chunks, buffer pool),
//! `damage` (damage records), `error`, `filter` (exclude patterns),
//! `progress`, `snapshot`, `util`, `wire`; what callers need of them is
//! re-exported here.

pub mod backup;
pub mod cache;
pub(crate) mod chunker;
pub mod config;
pub mod crypto;
pub(crate) mod damage;
pub(crate) mod error;
pub(crate) mod filter;
pub mod id;
pub mod imagefs;
pub mod index;
pub mod ops;
pub mod pack;
pub(crate) mod progress;
pub(crate) mod repository;
pub mod restore;
pub mod session;
pub(crate) mod snapshot;
pub mod sys;
pub mod tree;
pub(crate) mod trees;
pub(crate) mod util;
mod wire;

pub use config::Config;
pub use crypto::Password;
pub use error::{Error, Result};
pub use id::{BlobId, IndexId, KeyId, PackId, SessionId, SnapshotId};
pub use progress::{CancelToken, NoProgress, Progress};
pub use repository::{InitOptions, Repository};
pub use snapshot::{Snapshot, SnapshotKind, Summary};
pub use util::{hostname, process_alive};
pub use wire::DecodeError;
