//! Snapshot manifests: the commit point of a backup (`docs/format.md` §8).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::id::{BlobId, SessionId, SnapshotId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotKind {
    /// A tree of files and directories from the given paths.
    Files,
    /// One stream (standard input, a command's output), stored as one file.
    Stream,
    /// What a packager produced (images, dumps, manifests): see `source`.
    Source,
}

/// The packaged source a snapshot of kind `Source` was made from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceRecord {
    /// The packager: `image`, `command`, `postgres`, `mysql`, `kubernetes`.
    pub kind: String,
    /// Changed-block generation of each image entry (by its path in the
    /// tree) at the time of the backup; the next backup's changed-block
    /// map must follow it to be used.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub generations: std::collections::BTreeMap<String, String>,
}

/// What a backup did, for reports and the snapshot's record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Summary {
    pub files_new: u64,
    pub files_changed: u64,
    pub files_unchanged: u64,
    pub dirs: u64,
    /// Bytes read from the source.
    pub bytes_read: u64,
    /// Total size of all files in the snapshot.
    pub bytes_total: u64,
    pub data_blobs_added: u64,
    /// Plaintext bytes of new blobs.
    pub bytes_added: u64,
    /// Bytes those blobs take in the repository.
    pub bytes_added_stored: u64,
    /// Files that could not be read (named in the warnings).
    pub warnings: u64,
    pub duration_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub version: u32,
    pub time: DateTime<Utc>,
    pub hostname: String,
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
    pub paths: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    pub kind: SnapshotKind,
    pub tree: BlobId,
    #[serde(default)]
    pub parent: Option<SnapshotId>,
    pub session: SessionId,
    #[serde(default)]
    pub excludes: Vec<String>,
    #[serde(default)]
    pub program_version: String,
    #[serde(default)]
    pub summary: Summary,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceRecord>,
    /// The service job (its id) that wrote this snapshot: a retried job
    /// adopts the snapshot an earlier attempt wrote instead of writing a
    /// second one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
}

impl Snapshot {
    /// Whether `other` backs up the same thing (same host and paths): such
    /// a snapshot is a parent for incremental backups and a group for
    /// retention policies.
    pub fn same_source(&self, other: &Snapshot) -> bool {
        self.hostname == other.hostname && self.paths == other.paths && self.kind == other.kind
    }

    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t == tag)
    }
}

pub fn snapshot_key(id: &SnapshotId) -> String {
    format!("snapshots/{id}")
}

pub fn checkpoint_key(id: &SnapshotId) -> String {
    format!("checkpoints/{id}")
}
