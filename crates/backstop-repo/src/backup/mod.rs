//! Backup: a file tree or a stream into a new snapshot.
//!
//! The pipeline (one thread each unless noted):
//!
//! ```text
//! walker ──items──▶ assembler ──tree blobs──▶ saver ──packs──▶ uploaders (N)
//!    └──file jobs──▶ readers (R) ──chunks──▶ chunk workers (W) ──▶ saver
//! ```
//!
//! The walker visits the source in order and reuses unchanged files'
//! content from the parent snapshot; readers cut the rest into chunks;
//! chunk workers deduplicate, compress and seal them; the assembler writes
//! directory trees in order and checkpoints on a timer. The snapshot is
//! written last, after every pack and index file it needs
//! (`docs/format.md` §12).
//!
//! Hand-offs cost more than small chunks: a reader stores a file that is a
//! single chunk itself, stores a chunk itself when every worker is busy,
//! and hands an image's fixed-size chunks over a read batch at a time. The
//! saver keeps several data packs open so that threads do not queue behind
//! one pack's writes.

mod assembler;
mod reader;
pub mod saver;
pub mod source;
mod walker;

use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use self::assembler::Assembler;
use self::reader::{ChunkJob, FileJob, ReadContext, chunk_worker, read_file};
use self::saver::Saver;
use self::source::{EntryData, SourceTree};
use self::walker::{ParentDir, PathTrie, SourceDir, WalkOptions, WalkShared, Walker, scan_totals};
use backstop_backend::PathScope;

use crate::chunker::BufferPool;
use crate::error::{Error, Result};
use crate::filter::PathFilter;
use crate::id::SnapshotId;
use crate::index::WriteIndex;
use crate::progress::{CancelToken, Progress};
use crate::repository::Repository;
use crate::session::Session;
use crate::snapshot::{Snapshot, SnapshotKind, SourceRecord, Summary};
use crate::trees::{Lists, Trees};

/// Which files get fixed-size chunks instead of content-defined ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FixedChunking {
    /// Sparse files and disk images (`.raw`, `.img`, `.qcow2`, …).
    #[default]
    Auto,
    Always,
    Never,
}

/// Which snapshot to compare against.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ParentChoice {
    /// The newest snapshot of the same host and paths.
    #[default]
    Latest,
    /// Read every file.
    None,
    Snapshot(SnapshotId),
}

/// What to back up.
pub enum BackupSource {
    /// Files and directories; relative paths are made absolute.
    Paths(Vec<PathBuf>),
    /// A byte stream, stored as one file named `filename`.
    Stream { reader: Box<dyn Read + Send>, filename: String },
    /// A packager's entries (images, dumps, manifests).
    Tree(SourceTree),
}

#[derive(Debug, Clone)]
pub struct BackupOptions {
    pub tags: Vec<String>,
    /// Recorded host name; defaults to this machine's.
    pub hostname: Option<String>,
    pub excludes: Vec<String>,
    /// Do not cross into other file systems below the given paths.
    pub one_file_system: bool,
    /// Leave out the contents of directories tagged with CACHEDIR.TAG.
    pub exclude_caches: bool,
    pub parent: ParentChoice,
    pub fixed_chunking: FixedChunking,
    pub checkpoint_interval: Duration,
    /// Snapshot time; defaults to now.
    pub time: Option<DateTime<Utc>>,
    /// Count files and bytes first, for progress totals.
    pub scan_totals: bool,
    pub readers: usize,
    pub workers: usize,
    /// Threads uploading closed packs; `None` picks 2 for a repository on
    /// a local file system (they only move files) and 4 on object storage,
    /// where each waits on the network and the last packs of a backup go
    /// up together.
    pub uploaders: Option<usize>,
    /// Where the paths of a file-tree backup may be: a confined tenant's
    /// lie beneath its roots and are read without following a link out.
    pub paths: PathScope,
    /// The service job this backup runs for, recorded in the manifest.
    pub job: Option<String>,
}

impl Default for BackupOptions {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        BackupOptions {
            tags: Vec::new(),
            hostname: None,
            excludes: Vec::new(),
            one_file_system: false,
            exclude_caches: false,
            parent: ParentChoice::Latest,
            fixed_chunking: FixedChunking::Auto,
            checkpoint_interval: Duration::from_secs(300),
            time: None,
            scan_totals: true,
            readers: 2,
            workers: cores,
            uploaders: None,
            paths: PathScope::Any,
            job: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct BackupOutcome {
    pub id: SnapshotId,
    pub snapshot: Snapshot,
    pub parent: Option<SnapshotId>,
    /// The checkpoint of an interrupted backup that this one resumed.
    pub resumed: Option<SnapshotId>,
}

/// Whether a selected path is there, found the way the walk will find it:
/// an administrator's as named, a confined tenant's beneath its root with
/// no symbolic link on the way (the walk follows none there either, so a
/// path through one would back up nothing).
fn selected_exists(scope: &PathScope, path: &Path) -> std::io::Result<()> {
    match scope.locate(path)? {
        None if path.parent().is_none() => scope.open_dir(path).map(drop),
        None => scope.parent_of(path).and_then(|(dir, name)| dir.stat_at(&name).map(drop)),
        Some((root, rel)) => {
            let found = backstop_backend::Dir::open(root)
                .and_then(|r| r.parent_of(&rel, backstop_backend::Links::Refuse))
                .and_then(|(dir, name)| dir.stat_at(&name).map(drop));
            found.map_err(|e| match e.raw_os_error() {
                Some(libc::ELOOP | libc::ENOTDIR | libc::EXDEV) => std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    "a symbolic link (or a file) is on the way: a tenant's file tree is named by its real \
                     directories, and a link that leads outside its root is never followed",
                ),
                _ => e,
            })
        }
    }
}

/// Make paths absolute and lexically normal (no `.`/`..`), without
/// resolving symlinks, so the snapshot records what the user named.
pub fn absolute_paths(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let cwd = std::env::current_dir().map_err(|e| Error::io(".", e))?;
    let mut out = Vec::new();
    for p in paths {
        let joined = if p.is_absolute() { p.clone() } else { cwd.join(p) };
        let mut norm = PathBuf::from("/");
        for comp in joined.components() {
            match comp {
                Component::ParentDir => {
                    norm.pop();
                }
                Component::Normal(c) => norm.push(c),
                _ => {}
            }
        }
        out.push(norm);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

fn path_strings(paths: &[PathBuf]) -> Vec<String> {
    paths.iter().map(|p| p.to_string_lossy().into_owned()).collect()
}

/// Run a backup and write its snapshot: check the source, find its
/// parents, run the pipeline (walk → read → chunk → store → assemble
/// trees), then commit the snapshot.
pub fn run(
    repo: &Repository,
    mut source: BackupSource,
    options: &BackupOptions,
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<BackupOutcome> {
    let started = Instant::now();
    let excludes = PathFilter::new(&options.excludes)?;
    let (kind, paths) = check_source(&source, options, progress)?;

    // The marker goes first: a prune that starts after it will wait for us;
    // one that started before has already removed what it doomed from the
    // index we load next (docs/format.md §13).
    // The parent and checkpoint candidates are read meanwhile: they are
    // only compared with the index, never trusted without it.
    let (opened, candidates) = crate::util::join(
        || Session::start(repo, "backup").and_then(|session| Ok((session, repo.load_index()?))),
        || read_candidates(repo, options, kind),
    );
    let (session, index) = opened?;
    let index = Arc::new(index);
    let mut template = Snapshot {
        version: 1,
        time: options.time.unwrap_or_else(Utc::now),
        hostname: options.hostname.clone().unwrap_or_else(crate::util::hostname),
        username: crate::util::username(),
        // SAFETY: getuid/getgid have no preconditions.
        uid: unsafe { libc::getuid() },
        gid: unsafe { libc::getgid() },
        paths: path_strings(&paths),
        tags: options.tags.clone(),
        kind,
        tree: crate::id::BlobId([0; 32]),
        parent: None,
        session: session.id(),
        excludes: options.excludes.clone(),
        program_version: concat!("backstop ", env!("CARGO_PKG_VERSION")).to_string(),
        summary: Summary::default(),
        source: None,
        job: options.job.clone(),
    };
    let parents = find_parents(repo, &index, &template, options, candidates?, progress, cancel)?;
    if let BackupSource::Tree(tree) = &mut source
        && let Some(capture) = tree.capture.take()
    {
        // The session ends when dropped, on these errors too; nothing is
        // uploaded yet.
        let taken = capture(&parents.generations, cancel, progress);
        if cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        tree.entries = taken.map_err(|e| Error::io(&tree.label, e))?;
        if tree.entries.is_empty() {
            return Err(Error::Invalid(format!("the {} source {} has nothing to back up", tree.kind, tree.label)));
        }
    }
    template.source = source_record(&source);
    let source_dir = match &mut source {
        BackupSource::Tree(tree) => Some(SourceDir::build(std::mem::take(&mut tree.entries))?),
        _ => None,
    };

    let write_index = Arc::new(WriteIndex::new(index.clone()));
    let uploaders = options.uploaders.unwrap_or(if repo.backend().staging_dir().is_some() { 2 } else { 4 });
    let saver = Saver::start(repo, session.sealer().clone(), write_index, uploaders, cancel)?;
    let warnings = AtomicU64::new(0);
    let bytes_read = AtomicU64::new(0);
    let mut own_checkpoints: Vec<SnapshotId> = Vec::new();
    let shared = WalkShared {
        repo,
        index: &index,
        parents: &parents.below,
        excludes: &excludes,
        cancel,
        progress,
        warnings: &warnings,
    };
    let pipeline = Pipeline { saver: &saver, template: &template, bytes_read: &bytes_read, options };
    let result = pipeline.run(shared, &paths, source, source_dir, &parents, &mut own_checkpoints);

    // Cancellation is checked at every step of the commit, up to the
    // manifest: a cancelled backup never writes its snapshot.
    let (root, mut summary) = match result {
        Ok(r) if !cancel.is_cancelled() => r,
        Ok(_) => return Err(stop_cancelled(saver, session, progress)),
        Err(_) if cancel.is_cancelled() => return Err(stop_cancelled(saver, session, progress)),
        Err(e) => {
            drop(saver);
            let _ = session.end();
            return Err(e);
        }
    };
    match saver.flush() {
        Ok(()) if !cancel.is_cancelled() => {}
        Err(e) if !cancel.is_cancelled() => return Err(e),
        _ => return Err(stop_cancelled(saver, session, progress)),
    }
    saver.write_index(Vec::new())?;

    // If our heartbeat lapsed, a prune may have counted us as dead and
    // removed packs we reference; make sure they are all still there.
    if session.may_have_lapsed() {
        session.refresh()?;
        verify_packs_exist(repo, &saver)?;
    }
    if cancel.is_cancelled() {
        return Err(stop_cancelled(saver, session, progress));
    }

    summary.warnings += warnings.load(Ordering::Relaxed);
    summary.bytes_read = bytes_read.load(Ordering::Relaxed);
    summary.data_blobs_added = saver.stats.data_blobs_added.load(Ordering::Relaxed);
    summary.bytes_added = saver.stats.bytes_added.load(Ordering::Relaxed);
    summary.bytes_added_stored = saver.stats.bytes_added_stored.load(Ordering::Relaxed);
    summary.duration_ms = started.elapsed().as_millis() as u64;
    let mut snapshot = template;
    snapshot.tree = root;
    snapshot.parent = parents.id;
    snapshot.summary = summary;
    let id = repo.save_manifest(saver.sealer(), &snapshot, false)?;
    drop(saver);

    for cp in own_checkpoints.iter().chain(parents.resumed.as_ref().map(|(id, _)| id)) {
        let _ = repo.delete_checkpoint(cp);
    }
    session.end()?;
    Ok(BackupOutcome { id, snapshot, parent: parents.id, resumed: parents.resumed.map(|(id, _)| id) })
}

/// What the backup will record of `source` (its kind and paths), once
/// checked: paths that exist (beneath the job's scope), a stream's valid
/// name, a packager's tree with entries and a valid chunk size (its notes
/// go to the log).
fn check_source(
    source: &BackupSource,
    options: &BackupOptions,
    progress: &dyn Progress,
) -> Result<(SnapshotKind, Vec<PathBuf>)> {
    Ok(match source {
        BackupSource::Paths(paths) => {
            if paths.is_empty() {
                return Err(Error::Invalid("nothing to back up: give at least one path".into()));
            }
            let abs = absolute_paths(paths)?;
            for p in &abs {
                if let Err(e) = selected_exists(&options.paths, p) {
                    return Err(Error::Invalid(format!("cannot back up {}: {e}", p.display())));
                }
            }
            (SnapshotKind::Files, abs)
        }
        BackupSource::Stream { filename, .. } => {
            if !crate::tree::valid_name(filename.as_bytes()) {
                return Err(Error::Invalid(format!("{filename:?} is not a valid file name for the stream")));
            }
            (SnapshotKind::Stream, vec![PathBuf::from("/").join(filename)])
        }
        BackupSource::Tree(tree) => {
            let block = tree.image_chunk_size;
            if !block.is_power_of_two() || !(4096..=16 << 20).contains(&block) {
                return Err(Error::Invalid(format!(
                    "image chunk size {block} is not a power of two between 4 KiB and 16 MiB"
                )));
            }
            if tree.entries.is_empty() && tree.capture.is_none() {
                return Err(Error::Invalid(format!("the {} source {} has nothing to back up", tree.kind, tree.label)));
            }
            for note in &tree.notes {
                progress.info(note);
            }
            (SnapshotKind::Source, vec![PathBuf::from(&tree.label)])
        }
    })
}

/// A packager's record in the snapshot: its kind and each image's generation.
fn source_record(source: &BackupSource) -> Option<SourceRecord> {
    let BackupSource::Tree(tree) = source else { return None };
    let generations = tree
        .entries
        .iter()
        .filter_map(|e| match &e.data {
            EntryData::Image(image) => image.generation().map(|g| (e.path.clone(), g)),
            _ => None,
        })
        .collect();
    Some(SourceRecord { kind: tree.kind.clone(), generations })
}

/// What a backup compares against: the latest snapshot of the same source
/// (or the one asked for), and a newer checkpoint of an interrupted
/// backup of it.
struct Parents<'a> {
    id: Option<SnapshotId>,
    resumed: Option<(SnapshotId, Snapshot)>,
    /// Their trees, the checkpoint's first.
    trees: Vec<Arc<crate::tree::Tree>>,
    /// Every tree and chunk list below them, read ahead: the walk compares
    /// each directory with its parent's.
    below: Trees<'a>,
    /// The image generations the parent recorded (changed-block maps).
    generations: std::collections::BTreeMap<String, String>,
}

/// The manifests a backup picks its parent and checkpoint from.
struct Candidates {
    /// The snapshot asked for, or every snapshot ([`ParentChoice::Latest`]).
    snapshots: Vec<(SnapshotId, Snapshot)>,
    /// Checkpoints of interrupted backups (only files resume).
    checkpoints: Vec<(SnapshotId, Snapshot)>,
}

/// Read the [`Candidates`] for a backup of `kind`: the snapshots and the
/// checkpoints at once.
fn read_candidates(repo: &Repository, options: &BackupOptions, kind: SnapshotKind) -> Result<Candidates> {
    if kind == SnapshotKind::Stream {
        return Ok(Candidates { snapshots: Vec::new(), checkpoints: Vec::new() });
    }
    // A packager's output is read again whole; only files resume.
    let resumable = options.parent != ParentChoice::None && kind == SnapshotKind::Files;
    let (snapshots, checkpoints) = crate::util::join(
        || match &options.parent {
            ParentChoice::None => Ok(Vec::new()),
            ParentChoice::Snapshot(id) => Ok(vec![(*id, repo.load_snapshot(id)?)]),
            ParentChoice::Latest => repo.snapshots(),
        },
        || if resumable { repo.checkpoints() } else { Ok(Vec::new()) },
    );
    Ok(Candidates { snapshots: snapshots?, checkpoints: checkpoints? })
}

fn find_parents<'a>(
    repo: &'a Repository,
    index: &'a crate::index::Index,
    template: &Snapshot,
    options: &BackupOptions,
    candidates: Candidates,
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<Parents<'a>> {
    let mut out = Parents {
        id: None,
        resumed: None,
        trees: Vec::new(),
        below: Trees::none(repo, index),
        generations: Default::default(),
    };
    if template.kind == SnapshotKind::Stream {
        return Ok(out);
    }
    let mut snapshots = candidates.snapshots.into_iter();
    let parent = match &options.parent {
        ParentChoice::Latest => snapshots.rev().find(|(_, s)| s.same_source(template)),
        _ => snapshots.next(),
    };
    if let Some(record) = parent.as_ref().and_then(|(_, p)| p.source.as_ref()) {
        out.generations = record.generations.clone();
    }
    let newer_than = parent.as_ref().map(|(_, s)| s.time);
    out.resumed = candidates
        .checkpoints
        .into_iter()
        .rev()
        .find(|(_, c)| c.same_source(template) && newer_than.is_none_or(|t| c.time > t));
    let roots: Vec<_> = out.resumed.iter().chain(&parent).map(|(_, s)| s.tree).collect();
    out.below = Trees::below(repo, index, &roots, Lists::WhenAsked, cancel);
    if let Some((id, cp)) = &out.resumed {
        progress.info(&format!("resuming the interrupted backup from checkpoint {}", id.short()));
        match out.below.tree(&cp.tree) {
            Ok(tree) => out.trees.push(tree),
            Err(e) => progress.info(&format!("checkpoint {} is unusable: {e}", id.short())),
        }
    }
    if let Some((id, p)) = &parent {
        progress.info(&format!("using parent snapshot {}", id.short()));
        out.id = Some(*id);
        match out.below.tree(&p.tree) {
            Ok(tree) => out.trees.push(tree),
            Err(e) => progress.info(&format!("parent snapshot {} is unusable: {e}", id.short())),
        }
    }
    Ok(out)
}

/// The backup's threads: the walker (this thread) feeds readers, which
/// feed chunk workers, which store blobs through the saver; the assembler
/// builds the trees and writes checkpoints.
struct Pipeline<'a> {
    saver: &'a Saver,
    template: &'a Snapshot,
    bytes_read: &'a AtomicU64,
    options: &'a BackupOptions,
}

impl Pipeline<'_> {
    /// Walk `source` to its end; the root tree and the summary.
    fn run(
        &self,
        shared: WalkShared<'_>,
        paths: &[PathBuf],
        source: BackupSource,
        source_dir: Option<SourceDir>,
        parents: &Parents<'_>,
        own_checkpoints: &mut Vec<SnapshotId>,
    ) -> Result<(crate::id::BlobId, Summary)> {
        let Pipeline { saver, template, bytes_read, options } = *self;
        let WalkShared { repo, cancel, progress, excludes, .. } = shared;
        let kind = template.kind;
        let trie = PathTrie::new(paths);
        // Enough for every chunk in flight: queued, being stored, being read.
        let pool = BufferPool::new(options.workers.max(1) * 3 + options.readers.max(1) * 2);
        std::thread::scope(|s| {
            let (item_tx, item_rx) = crossbeam_channel::bounded(8192);
            let (file_tx, file_rx) = crossbeam_channel::bounded::<FileJob>(256);
            let (chunk_tx, chunk_rx) = crossbeam_channel::bounded::<ChunkJob>(options.workers.max(1) * 2);

            for _ in 0..options.workers.max(1) {
                let rx = chunk_rx.clone();
                let pool = &pool;
                s.spawn(move || chunk_worker(saver, rx, pool, progress));
            }
            drop(chunk_rx);
            for _ in 0..options.readers.max(1) {
                let rx = file_rx.clone();
                let chunk_tx = chunk_tx.clone();
                let pool = &pool;
                let cdc = repo.cdc();
                let fixed_size = repo.config().fixed_chunk_size as usize;
                s.spawn(move || {
                    let ctx =
                        ReadContext { saver, chunks: &chunk_tx, cdc, fixed_size, pool, cancel, progress, bytes_read };
                    for job in rx {
                        let reply = job.reply.clone();
                        let outcome =
                            if cancel.is_cancelled() { reader::FileOutcome::Cancelled } else { read_file(&ctx, job) };
                        let _ = reply.send(outcome);
                    }
                });
            }
            drop((file_rx, chunk_tx));

            if options.scan_totals && kind == SnapshotKind::Files {
                let trie = &trie;
                let scope = &options.paths;
                s.spawn(move || scan_totals(trie, scope, excludes, cancel, progress));
            }

            let assembler = {
                let checkpoint_interval = options.checkpoint_interval;
                s.spawn(move || {
                    let mut assembler = Assembler::new(saver, progress, cancel, checkpoint_interval);
                    let mut checkpoint = |root: crate::id::BlobId| -> Result<()> {
                        if kind == SnapshotKind::Source {
                            return Ok(()); // never resumed: no checkpoints
                        }
                        saver.flush()?;
                        saver.write_index(Vec::new())?;
                        let mut manifest = template.clone();
                        manifest.tree = root;
                        manifest.time = Utc::now();
                        let id = repo.save_manifest(saver.sealer(), &manifest, true)?;
                        for old in own_checkpoints.drain(..) {
                            let _ = repo.delete_checkpoint(&old);
                        }
                        own_checkpoints.push(id);
                        progress.info(&format!("checkpoint {} written", id.short()));
                        Ok(())
                    };
                    let root = assembler.run(item_rx, &mut checkpoint);
                    root.map(|r| (r, assembler.summary))
                })
            };

            let walk = WalkOptions {
                fixed: options.fixed_chunking,
                one_file_system: options.one_file_system,
                exclude_caches: options.exclude_caches,
                scope: options.paths.clone(),
            };
            let mut walker = Walker::new(shared, walk, item_tx, file_tx);
            let parent = ParentDir::new(parents.trees.clone());
            match source {
                BackupSource::Paths(_) => walker.walk_paths(&trie, parent),
                BackupSource::Stream { reader, filename } => {
                    let _ = walker.walk_stream(&filename, reader);
                }
                BackupSource::Tree(tree) => {
                    if let Some(dir) = source_dir {
                        let _ = walker.walk_source(dir, tree.image_chunk_size, &parent, &parents.generations, "");
                    }
                }
            }
            drop(walker); // closes the channels: the pipeline drains and ends
            assembler.join().expect("the assembler thread panicked")
        })
    }
}

/// End a cancelled backup: let the uploads under way end (past the grace,
/// queued packs are dropped and a throttled transfer stops waiting), keep
/// what was uploaded by writing its index, so the next run stores none of
/// it again, and end the session. No snapshot is written.
fn stop_cancelled(saver: Saver, session: Session, progress: &dyn Progress) -> Error {
    let _ = saver.settle();
    match saver.write_index(Vec::new()) {
        Ok(Some(id)) => {
            progress.info(&format!("cancelled: the packs already uploaded are kept (index {})", id.short()))
        }
        Ok(None) => {}
        Err(e) => progress.info(&format!("cancelled: the packs already uploaded could not be indexed: {e}")),
    }
    drop(saver);
    let _ = session.end();
    Error::Cancelled
}

/// Every pack this session relies on through the index it loaded must
/// still exist.
fn verify_packs_exist(repo: &Repository, saver: &Saver) -> Result<()> {
    let present: std::collections::HashSet<String> = repo.backend().list("data/")?.into_iter().map(|m| m.key).collect();
    for pack in saver.index().base().packs() {
        let key = crate::pack::pack_key(pack);
        if !present.contains(&key) {
            return Err(Error::Invalid(format!(
                "pack {} disappeared while this backup ran (a prune took the backup for dead); run the backup again",
                pack.short()
            )));
        }
    }
    Ok(())
}
