//! Listing a snapshot's contents.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::id::BlobId;
use crate::index::Index;
use crate::repository::Repository;
use crate::snapshot::Snapshot;
use crate::sys::os_str;
use crate::tree::{Node, NodeType, Tree};

/// Find the node at `path` (absolute, as backed up) in a snapshot. `/` is
/// the root, which has no node: `Ok(None)`.
pub fn find(repo: &Repository, index: &Index, snapshot: &Snapshot, path: &Path) -> Result<Option<Node>> {
    let mut tree = repo.load_tree(index, &snapshot.tree)?;
    let comps: Vec<_> = path.components().filter(|c| matches!(c, std::path::Component::Normal(_))).collect();
    let mut found = None;
    for (i, comp) in comps.iter().enumerate() {
        let name = comp.as_os_str().as_encoded_bytes();
        let node =
            tree.find(name).cloned().ok_or_else(|| Error::not_found(format!("{} in the snapshot", path.display())))?;
        if i + 1 < comps.len() {
            let subtree = node.subtree().ok_or_else(|| {
                Error::not_found(format!("{} in the snapshot (a parent is not a directory)", path.display()))
            })?;
            tree = repo.load_tree(index, &subtree)?;
        }
        found = Some(node);
    }
    Ok(found)
}

/// Call `f` for every entry at or below `path`, in order, with its path.
pub fn walk(
    repo: &Repository,
    index: &Index,
    snapshot: &Snapshot,
    path: &Path,
    f: &mut dyn FnMut(&Path, &Node),
) -> Result<()> {
    let start = PathBuf::from("/").join(path.strip_prefix("/").unwrap_or(path));
    match find(repo, index, snapshot, &start)? {
        None => walk_tree(repo, index, &snapshot.tree, Path::new("/"), f),
        Some(node) => {
            f(&start, &node);
            match node.subtree() {
                Some(subtree) => walk_tree(repo, index, &subtree, &start, f),
                None => Ok(()),
            }
        }
    }
}

fn walk_tree(repo: &Repository, index: &Index, id: &BlobId, dir: &Path, f: &mut dyn FnMut(&Path, &Node)) -> Result<()> {
    let tree: Tree = repo.load_tree(index, id)?;
    for node in &tree.nodes {
        let path = dir.join(os_str(&node.name));
        f(&path, node);
        if node.node_type == NodeType::Dir
            && let Some(subtree) = node.subtree()
        {
            walk_tree(repo, index, &subtree, &path, f)?;
        }
    }
    Ok(())
}
