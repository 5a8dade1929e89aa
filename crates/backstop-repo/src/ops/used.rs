//! Which blobs the snapshots use: a walk over every tree reachable from a
//! set of roots, each tree loaded once, several at a time.

use std::collections::HashSet;

use crate::id::BlobId;
use crate::index::Index;
use crate::pack::BlobKind;
use crate::repository::{Damage, Repository};
use crate::tree::{ContentRef, NodeData, decode_list};
use crate::util::parallel_map;

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
    for (label, root) in roots {
        let mut frontier = Vec::new();
        if used.trees.insert(*root) {
            frontier.push(*root);
        }
        while !frontier.is_empty() {
            let loaded = parallel_map(&frontier, 8, |id| (*id, repo.read_blob(index, BlobKind::Tree, id)));
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
