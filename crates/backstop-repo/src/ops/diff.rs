//! Comparing two snapshots.

use std::path::Path;

use serde::Serialize;

use crate::error::Result;
use crate::id::BlobId;
use crate::index::Index;
use crate::repository::Repository;
use crate::sys::os_str;
use crate::tree::{Node, NodeType, Tree};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    /// Only in the second snapshot.
    Added,
    /// Only in the first.
    Removed,
    /// The file's content differs.
    Modified,
    /// Same content, other metadata (mode, owner, times, xattrs, link target).
    Metadata,
    /// A different kind of entry under the same name.
    TypeChanged,
}

impl Change {
    /// One-letter code, as restic prints it.
    pub fn code(self) -> char {
        match self {
            Change::Added => '+',
            Change::Removed => '-',
            Change::Modified => 'M',
            Change::Metadata => 'U',
            Change::TypeChanged => 'T',
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct DiffStats {
    pub added: u64,
    pub removed: u64,
    pub modified: u64,
    pub metadata: u64,
    pub type_changed: u64,
}

/// Compare the trees `a` and `b`, calling `f` for every changed path.
/// Directories with identical tree ids are skipped without reading them.
pub fn diff(
    repo: &Repository,
    index: &Index,
    a: &BlobId,
    b: &BlobId,
    f: &mut dyn FnMut(&Path, Change, &Node),
) -> Result<DiffStats> {
    let mut stats = DiffStats::default();
    let mut emit = |path: &Path, change: Change, node: &Node| {
        match change {
            Change::Added => stats.added += 1,
            Change::Removed => stats.removed += 1,
            Change::Modified => stats.modified += 1,
            Change::Metadata => stats.metadata += 1,
            Change::TypeChanged => stats.type_changed += 1,
        }
        f(path, change, node);
    };
    compare(repo, index, Some(a), Some(b), Path::new("/"), &mut emit)?;
    Ok(stats)
}

fn compare(
    repo: &Repository,
    index: &Index,
    a: Option<&BlobId>,
    b: Option<&BlobId>,
    dir: &Path,
    emit: &mut dyn FnMut(&Path, Change, &Node),
) -> Result<()> {
    if a == b {
        return Ok(());
    }
    let load = |id: Option<&BlobId>| -> Result<Tree> {
        match id {
            Some(id) => repo.load_tree(index, id),
            None => Ok(Tree::default()),
        }
    };
    let (ta, tb) = (load(a)?, load(b)?);
    let (mut i, mut j) = (0, 0);
    while i < ta.nodes.len() || j < tb.nodes.len() {
        let order = match (ta.nodes.get(i), tb.nodes.get(j)) {
            (Some(x), Some(y)) => x.name.cmp(&y.name),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        match order {
            std::cmp::Ordering::Less => {
                let x = &ta.nodes[i];
                let path = dir.join(os_str(&x.name));
                emit(&path, Change::Removed, x);
                if let Some(sub) = x.subtree() {
                    compare(repo, index, Some(&sub), None, &path, emit)?;
                }
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                let y = &tb.nodes[j];
                let path = dir.join(os_str(&y.name));
                emit(&path, Change::Added, y);
                if let Some(sub) = y.subtree() {
                    compare(repo, index, None, Some(&sub), &path, emit)?;
                }
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                let (x, y) = (&ta.nodes[i], &tb.nodes[j]);
                let path = dir.join(os_str(&x.name));
                if x.node_type != y.node_type {
                    emit(&path, Change::TypeChanged, y);
                    compare(repo, index, x.subtree().as_ref(), y.subtree().as_ref(), &path, emit)?;
                } else if x.node_type == NodeType::Dir {
                    if !same_metadata(x, y) {
                        emit(&path, Change::Metadata, y);
                    }
                    compare(repo, index, x.subtree().as_ref(), y.subtree().as_ref(), &path, emit)?;
                } else if x.content() != y.content() || x.size != y.size {
                    emit(&path, Change::Modified, y);
                } else if !same_metadata(x, y) || x.data != y.data {
                    emit(&path, Change::Metadata, y);
                }
                i += 1;
                j += 1;
            }
        }
    }
    Ok(())
}

fn same_metadata(x: &Node, y: &Node) -> bool {
    x.mode == y.mode && x.uid == y.uid && x.gid == y.gid && x.mtime_ns == y.mtime_ns && x.xattrs == y.xattrs
}
