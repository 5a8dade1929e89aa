//! Which blobs the snapshots use: a walk over every tree reachable from a
//! set of roots, each tree loaded once, a level at a time (neighbours in a
//! pack in one request, see [`crate::trees`]).

use std::collections::{HashMap, HashSet};

use crate::id::BlobId;
use crate::index::Index;
use crate::pack::BlobKind;
use crate::repository::{Damage, Repository};
use crate::tree::{ContentRef, NodeData, decode_list};

#[derive(Debug, Default)]
pub struct UsedBlobs {
    /// Directory trees and chunk lists.
    pub trees: HashSet<BlobId>,
    pub data: HashSet<BlobId>,
    /// Trees or lists that could not be loaded, and data blobs missing from
    /// the index, each with the first root (by label) that needs it.
    pub damage: Vec<Damage>,
}

impl UsedBlobs {
    pub fn contains(&self, kind: BlobKind, id: &BlobId) -> bool {
        match kind {
            BlobKind::Data => self.data.contains(id),
            BlobKind::Tree => self.trees.contains(id),
        }
    }
}

/// Walk the trees under each `(label, root)`; `label` names the snapshot in
/// damage reports.
pub fn collect_used(repo: &Repository, index: &Index, roots: &[(String, BlobId)]) -> UsedBlobs {
    let mut used = UsedBlobs::default();
    let mut reader = crate::trees::TreeReader::new(repo, index);
    for (label, root) in roots {
        let mut frontier = Vec::new();
        if used.trees.insert(*root) {
            frontier.push(*root);
        }
        while !frontier.is_empty() {
            let loaded = reader.read(&frontier);
            frontier = Vec::new();
            for (id, result) in loaded {
                let plain = match result {
                    Ok(plain) => plain,
                    Err(e) => {
                        used.damage.push(Damage {
                            object: format!("tree {}", id.short()),
                            problem: format!("{e} (needed by {label})"),
                        });
                        continue;
                    }
                };
                let refs: Vec<ContentRef> = match plain.first() {
                    Some(1) => match crate::tree::Tree::decode(&plain) {
                        Ok(tree) => {
                            let mut refs = Vec::new();
                            for node in tree.nodes {
                                match node.data {
                                    NodeData::Dir { subtree } if used.trees.insert(subtree) => frontier.push(subtree),
                                    NodeData::File { content, .. } => refs.extend(content),
                                    _ => {}
                                }
                            }
                            refs
                        }
                        Err(e) => {
                            used.damage.push(Damage {
                                object: format!("tree {}", id.short()),
                                problem: format!("{e} (needed by {label})"),
                            });
                            continue;
                        }
                    },
                    _ => match decode_list(&plain) {
                        Ok(refs) => refs,
                        Err(e) => {
                            used.damage.push(Damage {
                                object: format!("chunk list {}", id.short()),
                                problem: format!("{e} (needed by {label})"),
                            });
                            continue;
                        }
                    },
                };
                for r in refs {
                    match r {
                        ContentRef::Data { id, .. } => {
                            if used.data.insert(id) && !index.contains(BlobKind::Data, &id) {
                                used.damage.push(Damage {
                                    object: format!("data blob {}", id.short()),
                                    problem: format!(
                                        "not in the index: its pack is missing or unindexed (needed by {label})"
                                    ),
                                });
                            }
                        }
                        ContentRef::List { id, .. } => {
                            if used.trees.insert(id) {
                                frontier.push(id);
                            }
                        }
                        ContentRef::Zero { .. } => {}
                    }
                }
            }
        }
    }
    used
}

/// For each `(label, root)` that needs blobs no index entry leads to (lost,
/// or stored only in copies recorded as damaged): its label and how many
/// such blobs it needs. Every tree is read once, however many roots share it.
pub fn snapshots_missing_blobs(repo: &Repository, index: &Index, roots: &[(String, BlobId)]) -> Vec<(String, usize)> {
    let mut memo: HashMap<BlobId, Vec<BlobId>> = HashMap::new();
    roots
        .iter()
        .filter_map(|(label, root)| {
            let n = missing_under(repo, index, *root, &mut memo).len();
            (n > 0).then(|| (label.clone(), n))
        })
        .collect()
}

/// The blobs under tree (or chunk list) `id` that the index cannot supply,
/// `id` itself if it cannot be read.
pub(crate) fn missing_under(
    repo: &Repository,
    index: &Index,
    id: BlobId,
    memo: &mut HashMap<BlobId, Vec<BlobId>>,
) -> Vec<BlobId> {
    if let Some(known) = memo.get(&id) {
        return known.clone();
    }
    // Ids are hashes of contents, so no tree holds itself; this only stops
    // a forged cycle.
    memo.insert(id, Vec::new());
    let mut missing = Vec::new();
    // Directory trees and chunk lists are both tree blobs, told apart by
    // their first byte.
    let refs = match repo.read_blob(index, BlobKind::Tree, &id) {
        Err(_) => None,
        Ok(plain) => match plain.first() {
            Some(1) => crate::tree::Tree::decode(&plain).ok().map(|tree| {
                let mut refs = Vec::new();
                for node in tree.nodes {
                    match node.data {
                        NodeData::Dir { subtree } => refs.push(ContentRef::List { id: subtree, len: 0 }),
                        NodeData::File { content, .. } => refs.extend(content),
                        _ => {}
                    }
                }
                refs
            }),
            _ => decode_list(&plain).ok(),
        },
    };
    match refs {
        None => missing.push(id),
        Some(refs) => {
            for r in refs {
                match r {
                    ContentRef::Data { id, .. } if !index.contains(BlobKind::Data, &id) => missing.push(id),
                    // A subtree or a chunk list: another tree blob.
                    ContentRef::List { id, .. } => missing.extend(missing_under(repo, index, id, memo)),
                    _ => {}
                }
            }
        }
    }
    missing.sort();
    missing.dedup();
    memo.insert(id, missing.clone());
    missing
}
