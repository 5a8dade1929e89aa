//! Many trees at once. A walk over a snapshot needs every directory tree
//! and chunk list below its root; read one at a time, each costs a round
//! trip to the storage (a restore of the benchmark's tree made 801 range
//! requests in a row, 16 s of waiting at 20 ms a request). Here they are
//! read level by level: each level's blobs grouped by pack, neighbours in
//! one range request, several requests in flight.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::error::Result;
use crate::id::{BlobId, PackId};
use crate::index::Index;
use crate::pack::{self, BlobKind, BlobLocation};
use crate::progress::CancelToken;
use crate::repository::Repository;
use crate::tree::{ContentRef, NodeData, Tree, decode_list};
use crate::util::parallel_map;

/// Blobs of one pack this close together are read in one request; the
/// bytes between them are read and dropped.
const MAX_GAP: u64 = 256 << 10;
/// No request reads more than this.
const MAX_RUN: u64 = 8 << 20;
/// Requests in flight at once (the backend's own connection limit still
/// holds).
const PARALLEL: usize = 8;

/// Read the tree-kind blobs `ids` (directory trees and chunk lists), each
/// once: its plaintext, or why it cannot be read, in no particular order.
pub(crate) fn read_tree_blobs(repo: &Repository, index: &Index, ids: &[BlobId]) -> Vec<(BlobId, Result<Vec<u8>>)> {
    let mut out = Vec::with_capacity(ids.len());
    let mut by_pack: HashMap<PackId, Vec<(BlobId, BlobLocation)>> = HashMap::new();
    let mut seen = HashSet::with_capacity(ids.len());
    for id in ids {
        if !seen.insert(*id) {
            continue;
        }
        match index.lookup(BlobKind::Tree, id) {
            Some(loc) => by_pack.entry(loc.pack).or_default().push((*id, loc)),
            // Says what is missing, without a request.
            None => out.push((*id, repo.read_blob(index, BlobKind::Tree, id))),
        }
    }
    let mut runs: Vec<Vec<(BlobId, BlobLocation)>> = Vec::new();
    for (_, mut blobs) in by_pack {
        blobs.sort_by_key(|(_, loc)| loc.offset);
        let mut run: Vec<(BlobId, BlobLocation)> = Vec::new();
        let mut run_end = 0u64;
        for blob in blobs {
            let (start, end) = span(&blob.1);
            if let Some((_, first)) = run.first()
                && (start > run_end + MAX_GAP || end - first.offset as u64 > MAX_RUN)
            {
                runs.push(std::mem::take(&mut run));
            }
            run_end = if run.is_empty() { end } else { run_end.max(end) };
            run.push(blob);
        }
        if !run.is_empty() {
            runs.push(run);
        }
    }
    out.extend(parallel_map(&runs, PARALLEL, |run| read_run(repo, run)).into_iter().flatten());
    out
}

fn span(loc: &BlobLocation) -> (u64, u64) {
    let start = loc.offset as u64;
    (start, start + loc.stored_len as u64)
}

/// One range request for blobs that lie together in a pack. If it fails,
/// each blob is read alone, so that each reports its own damage (a
/// truncated pack fails only the blobs past its end).
fn read_run(repo: &Repository, run: &[(BlobId, BlobLocation)]) -> Vec<(BlobId, Result<Vec<u8>>)> {
    let backend = repo.backend();
    let alone =
        |(id, loc): &(BlobId, BlobLocation)| (*id, pack::reader::load_blob(backend.as_ref(), repo.key(), loc, id));
    let start = run[0].1.offset as u64;
    let end = run.iter().map(|(_, loc)| span(loc).1).max().unwrap_or(start);
    if run.len() == 1 {
        return run.iter().map(alone).collect();
    }
    let Ok(mut bytes) = backend.get_range(&pack::pack_key(&run[0].1.pack), start..end) else {
        return run.iter().map(alone).collect();
    };
    let mut scratch = Vec::new();
    run.iter()
        .map(|(id, loc)| {
            let from = (loc.offset as u64 - start) as usize;
            let sealed = &mut bytes[from..from + loc.stored_len as usize];
            let plain = pack::reader::open_blob_in_place(repo.key(), loc, id, sealed, &mut scratch).map(<[u8]>::to_vec);
            (*id, plain)
        })
        .collect()
}

/// Whether [`Trees::below`] reads files' chunk lists ahead too: a restore
/// needs every file's; a backup only those of files that changed (a large
/// image's lists are megabytes, read when its file is reached).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lists {
    ReadAhead,
    WhenAsked,
}

/// What a blob below the roots is, by what refers to it.
#[derive(Clone, Copy)]
enum Kind {
    Tree,
    List,
}

/// The directory trees and chunk lists below some roots, read ahead of a
/// walk that needs them. What could not be read ahead is read when asked
/// for, and then reports why it cannot be.
pub(crate) struct Trees<'a> {
    repo: &'a Repository,
    index: &'a Index,
    trees: HashMap<BlobId, Arc<Tree>>,
    lists: HashMap<BlobId, Arc<[ContentRef]>>,
}

impl<'a> Trees<'a> {
    /// Nothing read ahead: every question is a read.
    pub(crate) fn none(repo: &'a Repository, index: &'a Index) -> Trees<'a> {
        Trees { repo, index, trees: HashMap::new(), lists: HashMap::new() }
    }

    /// Every tree below `roots` (trees themselves), and with
    /// [`Lists::ReadAhead`] every chunk list of their files. Once `cancel`
    /// is set it stops between levels, with what it has; the walk that
    /// follows sees the cancellation.
    pub(crate) fn below(
        repo: &'a Repository,
        index: &'a Index,
        roots: &[BlobId],
        lists: Lists,
        cancel: &CancelToken,
    ) -> Trees<'a> {
        let mut trees = Trees::none(repo, index);
        let mut seen: HashSet<BlobId> = roots.iter().copied().collect();
        let mut level: Vec<(BlobId, Kind)> = seen.iter().map(|id| (*id, Kind::Tree)).collect();
        while !level.is_empty() && !cancel.is_cancelled() {
            let kinds: HashMap<BlobId, Kind> = level.iter().copied().collect();
            let ids: Vec<BlobId> = level.iter().map(|(id, _)| *id).collect();
            let mut next = Vec::new();
            let mut refer = |id: BlobId, kind: Kind| {
                if seen.insert(id) {
                    next.push((id, kind));
                }
            };
            for (id, plain) in read_tree_blobs(repo, index, &ids) {
                let Ok(plain) = plain else { continue };
                match kinds[&id] {
                    Kind::Tree => {
                        let Ok(tree) = Tree::decode(&plain) else { continue };
                        for node in &tree.nodes {
                            match &node.data {
                                NodeData::Dir { subtree } => refer(*subtree, Kind::Tree),
                                NodeData::File { content, .. } if lists == Lists::ReadAhead => {
                                    lists_in(content).for_each(|l| refer(l, Kind::List))
                                }
                                _ => {}
                            }
                        }
                        trees.trees.insert(id, Arc::new(tree));
                    }
                    Kind::List => {
                        let Ok(list) = decode_list(&plain) else { continue };
                        lists_in(&list).for_each(|l| refer(l, Kind::List));
                        trees.lists.insert(id, list.into());
                    }
                }
            }
            level = next;
        }
        trees
    }

    /// The directory tree `id`.
    pub(crate) fn tree(&self, id: &BlobId) -> Result<Arc<Tree>> {
        match self.trees.get(id) {
            Some(tree) => Ok(tree.clone()),
            None => self.repo.load_tree(self.index, id).map(Arc::new),
        }
    }

    /// A file's content with every chunk list expanded.
    pub(crate) fn expand(&self, content: &[ContentRef]) -> Result<Vec<ContentRef>> {
        crate::repository::expand_lists(content, &|id| match self.lists.get(id) {
            Some(list) => Ok(list.to_vec()),
            None => self.repo.load_list(self.index, id),
        })
    }
}

fn lists_in(content: &[ContentRef]) -> impl Iterator<Item = BlobId> + '_ {
    content.iter().filter_map(|c| match c {
        ContentRef::List { id, .. } => Some(*id),
        _ => None,
    })
}
