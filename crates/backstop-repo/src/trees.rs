//! Many trees at once. A walk over a snapshot needs every directory tree
//! and chunk list below its root; read one at a time, each costs a round
//! trip to the storage (a restore of the benchmark's tree made 801 range
//! requests in a row, 16 s of waiting at 20 ms a request). Here they are
//! read level by level: each level's blobs grouped by pack, neighbours in
//! one range request, several requests in flight, and every pack reached
//! read for all its trees at once ([`TreeReader`]) — with a local cache
//! ([`crate::cache`]), the whole tree pack, kept for the next walk.

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

/// A pack's tree blobs are read whole when a walk first reaches it if they
/// take no more than this...
const SWEEP_PACK: u64 = 32 << 20;
/// ...and the walk has read no more than this ahead of being asked.
const SWEEP_BUDGET: u64 = 64 << 20;
/// A pack read whole for the cache is at most this large (its trees, at
/// most [`SWEEP_PACK`], and its header); a larger one is read by range.
const WHOLE_PACK: u64 = SWEEP_PACK + (8 << 20);

/// Reads the tree-kind blobs (directory trees and chunk lists) of one walk,
/// a level at a time. The first time a level needs a blob of some pack,
/// every tree blob of that pack is read (within [`SWEEP_PACK`] and
/// [`SWEEP_BUDGET`]) and kept sealed: a backup writes a snapshot's trees
/// together, so the levels below then cost no request at all. A tree is
/// ten levels deep in the benchmark's tree, ten round trips otherwise.
pub(crate) struct TreeReader<'a> {
    repo: &'a Repository,
    index: &'a Index,
    /// Runs of sealed blobs read ahead, each with its offset in its pack.
    runs: Vec<(u64, Vec<u8>)>,
    /// Every blob read ahead: the run that holds it, and where it is.
    ahead: HashMap<BlobId, (usize, BlobLocation)>,
    /// Packs reached so far (swept, or too large to be).
    reached: HashSet<PackId>,
    /// Bytes read ahead so far.
    ahead_bytes: u64,
}

impl<'a> TreeReader<'a> {
    pub(crate) fn new(repo: &'a Repository, index: &'a Index) -> TreeReader<'a> {
        TreeReader { repo, index, runs: Vec::new(), ahead: HashMap::new(), reached: HashSet::new(), ahead_bytes: 0 }
    }

    /// Read the tree-kind blobs `ids`, each once: its plaintext, or why it
    /// cannot be read, in no particular order.
    pub(crate) fn read(&mut self, ids: &[BlobId]) -> Vec<(BlobId, Result<Vec<u8>>)> {
        let (repo, index) = (self.repo, self.index);
        let mut out = Vec::with_capacity(ids.len());
        let mut wanted: HashMap<PackId, Vec<(BlobId, BlobLocation)>> = HashMap::new();
        let mut seen = HashSet::with_capacity(ids.len());
        for id in ids {
            if !seen.insert(*id) {
                continue;
            }
            if let Some(&(run, loc)) = self.ahead.get(id) {
                out.push((*id, self.open_ahead(run, &loc, id)));
                continue;
            }
            match index.lookup(BlobKind::Tree, id) {
                Some(loc) => wanted.entry(loc.pack).or_default().push((*id, loc)),
                // Says what is missing, without a request.
                None => out.push((*id, repo.read_blob(index, BlobKind::Tree, id))),
            }
        }
        let fresh: HashSet<PackId> = wanted.keys().filter(|p| !self.reached.contains(*p)).copied().collect();
        let mut reads: Vec<(Read, Vec<(BlobId, BlobLocation)>)> = Vec::new();
        if !fresh.is_empty() && self.ahead_bytes < SWEEP_BUDGET {
            for (pack, blobs) in index.tree_blobs_in(&fresh) {
                let bytes: u64 = blobs.iter().map(|(_, loc)| loc.stored_len as u64).sum();
                if bytes <= SWEEP_PACK && self.ahead_bytes + bytes <= SWEEP_BUDGET {
                    self.ahead_bytes += bytes;
                    wanted.remove(&pack);
                    if repo.cache().is_some() {
                        // Kept whole, so the next walk reads it locally.
                        reads.push((Read::Pack, blobs));
                    } else {
                        reads.extend(runs_of(blobs).into_iter().map(|run| (Read::Ahead, run)));
                    }
                }
            }
        }
        self.reached.extend(fresh);
        for (_, blobs) in wanted {
            reads.extend(runs_of(blobs).into_iter().map(|run| (Read::Asked, run)));
        }
        let results = parallel_map(&reads, PARALLEL, |(how, run)| match how {
            Read::Asked => Fetched::Answered(read_run(repo, run)),
            Read::Ahead => {
                let (start, end) = run_span(run);
                match repo.backend().get_range(&pack::pack_key(&run[0].1.pack), start..end) {
                    Ok(bytes) => Fetched::Sealed(start, bytes),
                    Err(_) => Fetched::Failed,
                }
            }
            Read::Pack => match repo.tree_pack(&run[0].1.pack, WHOLE_PACK) {
                Ok(bytes) if run.iter().all(|(_, loc)| span(loc).1 <= bytes.len() as u64) => Fetched::Sealed(0, bytes),
                _ => Fetched::Failed,
            },
        });
        for ((_, run), result) in reads.into_iter().zip(results) {
            match result {
                Fetched::Answered(read) => out.extend(read),
                Fetched::Failed => {}
                Fetched::Sealed(start, bytes) => {
                    let number = self.runs.len();
                    self.runs.push((start, bytes));
                    for (id, loc) in run {
                        self.ahead.insert(id, (number, loc));
                        if seen.contains(&id) {
                            out.push((id, self.open_ahead(number, &loc, &id)));
                        }
                    }
                }
            }
        }
        // What a failed read ahead held, and this level asked for, is read
        // blob by blob, so that each reports its own damage.
        let answered: HashSet<BlobId> = out.iter().map(|(id, _)| *id).collect();
        for id in seen.iter().filter(|id| !answered.contains(*id)) {
            out.push((*id, repo.read_blob(index, BlobKind::Tree, id)));
        }
        out
    }

    /// Open the blob `id`, read ahead into run `run`.
    fn open_ahead(&self, run: usize, loc: &BlobLocation, id: &BlobId) -> Result<Vec<u8>> {
        let (start, bytes) = &self.runs[run];
        let from = (loc.offset as u64 - start) as usize;
        let mut sealed = bytes[from..from + loc.stored_len as usize].to_vec();
        let mut plain = Vec::new();
        pack::reader::open_blob_in_place(self.repo.key(), loc, id, &mut sealed, &mut plain).map(<[u8]>::to_vec)
    }
}

/// How a run of blobs is read.
enum Read {
    /// The blobs were asked for: each is answered, and if the run cannot be
    /// read, read alone.
    Asked,
    /// Some were asked for, the rest are the pack's other tree blobs: kept.
    Ahead,
    /// As `Ahead`, for all the tree blobs of one pack at once: the whole
    /// pack is read, through the repository's cache.
    Pack,
}

/// What reading a run gave.
enum Fetched {
    /// Each blob asked for, opened or with why it could not be.
    Answered(Vec<(BlobId, Result<Vec<u8>>)>),
    /// A run read ahead, still sealed, and its offset in its pack.
    Sealed(u64, Vec<u8>),
    /// A run read ahead that could not be read: what the level asked of it
    /// is read blob by blob.
    Failed,
}

/// `blobs` of one pack in runs that lie close together, each read in one
/// request.
pub(crate) fn runs_of(mut blobs: Vec<(BlobId, BlobLocation)>) -> Vec<Vec<(BlobId, BlobLocation)>> {
    blobs.sort_by_key(|(_, loc)| loc.offset);
    let mut runs = Vec::new();
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
    runs
}

/// The bytes of its pack a run covers.
pub(crate) fn run_span(run: &[(BlobId, BlobLocation)]) -> (u64, u64) {
    let start = run[0].1.offset as u64;
    (start, run.iter().map(|(_, loc)| span(loc).1).max().unwrap_or(start))
}

fn span(loc: &BlobLocation) -> (u64, u64) {
    let start = loc.offset as u64;
    (start, start + loc.stored_len as u64)
}

/// One range request for blobs that lie together in a pack. If it fails,
/// each blob is read alone, so that each reports its own damage (a
/// truncated pack fails only the blobs past its end).
pub(crate) fn read_run(repo: &Repository, run: &[(BlobId, BlobLocation)]) -> Vec<(BlobId, Result<Vec<u8>>)> {
    let backend = repo.backend();
    let alone =
        |(id, loc): &(BlobId, BlobLocation)| (*id, pack::reader::load_blob(backend.as_ref(), repo.key(), loc, id));
    let (start, end) = run_span(run);
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
        let mut reader = TreeReader::new(repo, index);
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
            for (id, plain) in reader.read(&ids) {
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
