//! Restore: a snapshot (or part of it) back into a directory.
//!
//! Restore first builds a [`RestorePlan`]: the directories, files and links
//! to create, and for every pack the blobs to read from it and where each
//! goes. Then it creates the directories, reads the packs in parallel (each
//! pack once, adjacent blobs in one request), writes every blob to its
//! files at their offsets, and leaves zero runs as holes. Links, special
//! files and directory metadata come last.
//!
//! Nothing is written outside the target. The target is opened once (for a
//! confined tenant, resolved beneath its root, its missing directories
//! made there); every entry is a path beneath it of names the tree decoder
//! checked to be single safe components, resolved beneath that handle
//! without following any symbolic link ([`Links::Refuse`]); what stands
//! in an entry's place (a file where a directory goes, a link where a
//! file goes) is replaced, never followed; and symlinks are created only
//! after all data is written. A link someone else plants while the
//! restore runs makes that entry fail; it is never written through.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use backstop_backend::{Dir, Links, PathScope};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use crate::damage::DamagedBlob;
use crate::error::{Error, Result};
use crate::filter::PathFilter;
use crate::id::{BlobId, PackId};
use crate::index::Index;
use crate::pack::{self, BlobKind, BlobLocation};
use crate::progress::{CancelToken, Progress};
use crate::repository::Repository;
use crate::snapshot::Snapshot;
use crate::sys;
use crate::tree::{ContentRef, Node, NodeData, NodeType, valid_name};
use crate::trees::{Lists, Trees};

#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub target: PathBuf,
    /// Restore only entries matching these patterns (and what is below them).
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    /// Read every restored file back and check it against the snapshot.
    pub verify: bool,
    pub threads: usize,
    /// Where the target may be: a confined tenant's lies beneath its roots.
    pub paths: PathScope,
}

impl RestoreOptions {
    pub fn new(target: impl Into<PathBuf>) -> RestoreOptions {
        RestoreOptions {
            target: target.into(),
            include: Vec::new(),
            exclude: Vec::new(),
            verify: false,
            threads: 4,
            paths: PathScope::Any,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RestoreSummary {
    pub files: u64,
    pub dirs: u64,
    pub links: u64,
    pub bytes: u64,
    /// Entries that could not be restored (each reported as a warning).
    pub errors: u64,
    /// Files read back and found identical (with `verify`).
    pub verified: u64,
}

/// Paths in a plan are relative to the target.
struct PlannedFile {
    path: PathBuf,
    node: Node,
    /// The content with chunk lists expanded.
    content: Vec<ContentRef>,
    size: u64,
    /// Data blobs still to be written; metadata is applied at zero.
    remaining: AtomicUsize,
    state: Mutex<FileState>,
}

#[derive(Default)]
struct FileState {
    created: bool,
    failed: Option<String>,
}

enum Late {
    Symlink { path: PathBuf, node: Node },
    HardLink { path: PathBuf, to: PathBuf },
    Special { path: PathBuf, node: Node },
}

/// One blob to read from a pack, and where it goes.
struct BlobJob {
    id: BlobId,
    loc: BlobLocation,
    targets: Vec<(usize, u64)>,
}

/// What a restore will do, computed before it touches the target.
pub struct RestorePlan {
    dirs: Vec<(PathBuf, Node)>,
    files: Vec<PlannedFile>,
    late: Vec<Late>,
    packs: Vec<(PackId, Vec<BlobJob>)>,
    /// Problems found while planning (missing blobs, …).
    problems: Vec<(PathBuf, String)>,
    pub total_bytes: u64,
}

impl RestorePlan {
    pub fn file_count(&self) -> usize {
        self.files.len()
    }

    pub fn dir_count(&self) -> usize {
        self.dirs.len()
    }

    pub fn pack_count(&self) -> usize {
        self.packs.len()
    }
}

struct Planner<'a> {
    index: &'a Index,
    /// Every tree and chunk list of the snapshot, read ahead.
    trees: Trees<'a>,
    include: PathFilter,
    exclude: PathFilter,
    plan: RestorePlan,
    hardlinks: HashMap<(u64, u64), PathBuf>,
    blob_jobs: HashMap<PackId, Vec<BlobJob>>,
    blob_slot: HashMap<(PackId, u32), usize>,
    cancel: &'a CancelToken,
}

impl Planner<'_> {
    /// Plan the directory `tree` found at snapshot path `snap`. Returns
    /// whether anything below was selected.
    fn plan_tree(&mut self, tree_id: &BlobId, snap: &Path, dest: &Path, selected: bool) -> Result<bool> {
        if self.cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        let tree = match self.trees.tree(tree_id) {
            Ok(t) => t,
            Err(e) => {
                self.plan.problems.push((dest.to_path_buf(), format!("directory contents lost: {e}")));
                return Ok(selected);
            }
        };
        let mut any = false;
        for node in tree.nodes.iter().cloned() {
            if !valid_name(&node.name) {
                // The decoder refuses these; a second check costs nothing.
                self.plan.problems.push((dest.to_path_buf(), "unsafe name skipped".into()));
                continue;
            }
            let name = sys::os_str(&node.name);
            let snap_path = snap.join(name);
            let dest_path = dest.join(name);
            let is_dir = node.node_type == NodeType::Dir;
            if self.exclude.matches(&snap_path, is_dir) {
                continue;
            }
            let here = selected || self.include.is_empty() || self.include.matches(&snap_path, is_dir);
            match node.node_type {
                NodeType::Dir => {
                    let slot = self.plan.dirs.len();
                    self.plan.dirs.push((dest_path.clone(), node.clone()));
                    let subtree = node.subtree().expect("dir nodes have subtrees");
                    let below = self.plan_tree(&subtree, &snap_path, &dest_path, here)?;
                    if here || below {
                        any = true;
                    } else {
                        // Nothing selected inside: the directory is not needed.
                        self.plan.dirs.truncate(slot);
                    }
                }
                _ if !here => {}
                NodeType::File => {
                    any = true;
                    self.plan_file(dest_path, node)?;
                }
                NodeType::Symlink => {
                    any = true;
                    self.plan.late.push(Late::Symlink { path: dest_path, node });
                }
                _ => {
                    any = true;
                    self.plan.late.push(Late::Special { path: dest_path, node });
                }
            }
        }
        Ok(any)
    }

    fn plan_file(&mut self, path: PathBuf, node: Node) -> Result<()> {
        if node.nlink > 1 {
            let key = (node.device, node.inode);
            if let Some(first) = self.hardlinks.get(&key) {
                self.plan.late.push(Late::HardLink { path, to: first.clone() });
                return Ok(());
            }
            self.hardlinks.insert(key, path.clone());
        }
        let content = match self.trees.expand(node.content()) {
            Ok(c) => c,
            Err(e) => {
                self.plan.problems.push((path, format!("cannot be restored: {e}")));
                return Ok(());
            }
        };
        let size: u64 = content.iter().map(ContentRef::len).sum();
        let mut locations = Vec::new();
        let mut offset = 0u64;
        for c in &content {
            if let ContentRef::Data { id, len } = c {
                match self.index.lookup(BlobKind::Data, id) {
                    Some(loc) if loc.raw_len as u64 == *len => locations.push((*id, loc, offset)),
                    Some(_) => {
                        self.plan.problems.push((path, format!("blob {} has the wrong length", id.short())));
                        return Ok(());
                    }
                    None => {
                        self.plan.problems.push((
                            path,
                            format!(
                                "cannot be restored: data blob {} is not in the index (damaged or missing pack)",
                                id.short()
                            ),
                        ));
                        return Ok(());
                    }
                }
            }
            offset += c.len();
        }
        let file_idx = self.plan.files.len();
        for (id, loc, offset) in &locations {
            let jobs = self.blob_jobs.entry(loc.pack).or_default();
            let slot = *self.blob_slot.entry((loc.pack, loc.offset)).or_insert_with(|| {
                jobs.push(BlobJob { id: *id, loc: *loc, targets: Vec::new() });
                jobs.len() - 1
            });
            jobs[slot].targets.push((file_idx, *offset));
        }
        self.plan.total_bytes += size;
        self.plan.files.push(PlannedFile {
            path,
            node,
            content,
            size,
            remaining: AtomicUsize::new(locations.len()),
            state: Mutex::new(FileState::default()),
        });
        Ok(())
    }
}

/// Plan restoring `snapshot` into `options.target`.
pub fn plan(
    repo: &Repository,
    index: &Index,
    snapshot: &Snapshot,
    options: &RestoreOptions,
    cancel: &CancelToken,
) -> Result<RestorePlan> {
    let mut planner = Planner {
        index,
        trees: Trees::below(repo, index, &[snapshot.tree], Lists::ReadAhead, cancel),
        include: PathFilter::new(&options.include)?,
        exclude: PathFilter::new(&options.exclude)?,
        plan: RestorePlan {
            dirs: Vec::new(),
            files: Vec::new(),
            late: Vec::new(),
            packs: Vec::new(),
            problems: Vec::new(),
            total_bytes: 0,
        },
        hardlinks: HashMap::new(),
        blob_jobs: HashMap::new(),
        blob_slot: HashMap::new(),
        cancel,
    };
    planner.plan_tree(&snapshot.tree, Path::new("/"), Path::new(""), false)?;
    let mut packs: Vec<_> = planner.blob_jobs.into_iter().collect();
    packs.sort_by_key(|p| p.0);
    for (_, jobs) in &mut packs {
        jobs.sort_by_key(|j| j.loc.offset);
    }
    planner.plan.packs = packs;
    Ok(planner.plan)
}

/// Restore `snapshot` into `options.target`.
pub fn run(
    repo: &Repository,
    snapshot: &Snapshot,
    options: &RestoreOptions,
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<RestoreSummary> {
    let _session = crate::session::Session::start(repo, "restore")?;
    let index = repo.load_index()?;
    let plan = plan(repo, &index, snapshot, options, cancel)?;
    execute(repo, &plan, options, progress, cancel)
}

/// Carry out a plan.
pub fn execute(
    repo: &Repository,
    plan: &RestorePlan,
    options: &RestoreOptions,
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<RestoreSummary> {
    let mut summary = RestoreSummary::default();
    let errors = AtomicU64::new(0);
    let report = |rel: &Path, message: &str| {
        errors.fetch_add(1, Ordering::Relaxed);
        progress.warning(&options.target.join(rel), message);
    };
    for (path, problem) in &plan.problems {
        report(path, problem);
    }
    progress.total(plan.files.len() as u64, plan.total_bytes);

    let target = options.paths.create_dir_all(&options.target, 0o777).map_err(|e| Error::io(&options.target, e))?;
    let direct = AtomicBool::new(sys::local_disk_fs_of(&target));
    for (path, _) in &plan.dirs {
        if let Err(e) = ensure_dir(&target, path) {
            return Err(Error::io(options.target.join(path), e));
        }
    }
    summary.dirs = plan.dirs.len() as u64;

    let meta = Meta::for_target(&options.paths);
    // Files without data (empty, or all holes) are complete at once.
    for f in &plan.files {
        if f.remaining.load(Ordering::Relaxed) == 0 {
            match create_file(&target, f).and_then(|file| apply_file_metadata(&file, &f.node, meta)) {
                Ok(()) => progress.advance(1, f.size),
                Err(e) => mark_failed(f, &format!("cannot create: {e}")),
            }
        }
    }

    let next = AtomicUsize::new(0);
    let bytes = AtomicU64::new(0);
    let fatal: Mutex<Option<Error>> = Mutex::new(None);
    let damaged = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..options.threads.max(1) {
            s.spawn(|| {
                let mut buffers = Buffers::default();
                loop {
                    if cancel.is_cancelled() {
                        return;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((pack_id, jobs)) = plan.packs.get(i) else { return };
                    let out = Output { target: &target, meta, direct: &direct, bytes: &bytes, damaged: &damaged };
                    if let Err(e) = restore_pack(repo, plan, pack_id, jobs, &out, &mut buffers, progress) {
                        if !matches!(e, Error::Corrupt { .. } | Error::Backend(_)) {
                            fatal.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(e);
                            return;
                        }
                        // A damaged or missing pack fails only the files that need it.
                        let message = e.to_string();
                        if matches!(e, Error::Corrupt { .. }) {
                            let lost = jobs.iter().map(|j| DamagedBlob { kind: j.loc.kind, id: j.id, pack: *pack_id });
                            damaged.lock().unwrap_or_else(|e| e.into_inner()).extend(lost);
                        }
                        for job in jobs {
                            for (file, _) in &job.targets {
                                mark_failed(&plan.files[*file], &message);
                            }
                        }
                    }
                }
            });
        }
    });
    if cancel.is_cancelled() {
        return Err(Error::Cancelled);
    }
    if let Some(e) = fatal.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(e);
    }
    // What did not open is written down: the next backup of the same data
    // stores fresh copies instead of deduplicating against it.
    let damaged = damaged.into_inner().unwrap_or_else(|e| e.into_inner());
    if !damaged.is_empty() {
        match repo.record_damage("restore", &damaged) {
            Ok(n) if n > 0 => progress
                .info(&format!("{n} damaged blob(s) recorded: the next backup of the same data stores fresh copies")),
            Ok(_) => {}
            Err(e) => progress.info(&format!("the damaged blobs could not be recorded: {e}")),
        }
    }

    // Files whose data could not be restored are removed, not left wrong.
    for f in &plan.files {
        let state = f.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(reason) = &state.failed {
            report(&f.path, &format!("not restored: {reason}"));
            let _ = target.parent_of(&f.path, Links::Refuse).and_then(|(dir, name)| dir.remove_at(&name));
        } else {
            summary.files += 1;
        }
    }

    for late in &plan.late {
        let result = match late {
            Late::HardLink { path, to } => restore_hard_link(&target, path, to).map(|_| summary.files += 1),
            Late::Symlink { path, node } => restore_symlink(&target, path, node, meta).map(|_| summary.links += 1),
            Late::Special { path, node } => restore_special(&target, path, node, meta),
        };
        if let Err(e) = result {
            let path = match late {
                Late::HardLink { path, .. } | Late::Symlink { path, .. } | Late::Special { path, .. } => path,
            };
            report(path, &e.to_string());
        }
    }

    // Deepest directories first, so a read-only parent is set after its children.
    for (path, node) in plan.dirs.iter().rev() {
        let dir = target.open_file(path, libc::O_RDONLY | libc::O_DIRECTORY, 0, Links::Refuse);
        if let Err(e) = dir.and_then(|dir| apply_file_metadata(&dir, node, meta)) {
            report(path, &format!("cannot set metadata: {e}"));
        }
    }

    if options.verify {
        let results = crate::util::parallel_map(&plan.files, options.threads.max(1), |f| {
            if f.state.lock().unwrap_or_else(|e| e.into_inner()).failed.is_some() {
                return None;
            }
            Some(verify_file(repo, &target, f))
        });
        for (f, result) in plan.files.iter().zip(results) {
            match result {
                Some(Ok(())) => summary.verified += 1,
                Some(Err(problem)) => report(&f.path, &format!("verification failed: {problem}")),
                None => {}
            }
        }
    }
    summary.bytes = bytes.load(Ordering::Relaxed);
    summary.errors = errors.load(Ordering::Relaxed);
    Ok(summary)
}

fn mark_failed(file: &PlannedFile, reason: &str) {
    let mut state = file.state.lock().unwrap_or_else(|e| e.into_inner());
    state.failed.get_or_insert_with(|| reason.to_string());
}

/// Make `rel` a real directory: replace a symlink or file in its place.
pub(crate) fn ensure_dir(target: &Dir, rel: &Path) -> io::Result<()> {
    let (parent, name) = target.parent_of(rel, Links::Refuse)?;
    match parent.stat_at(&name) {
        Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => Ok(()),
        Ok(_) => {
            parent.remove_at(&name)?;
            parent.mkdir_at(&name, 0o700)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => parent.mkdir_at(&name, 0o700),
        Err(e) => Err(e),
    }
}

/// Remove what stands at `name` of `dir` unless it is a directory.
fn remove_non_dir(dir: &Dir, name: &OsStr) -> io::Result<()> {
    match dir.stat_at(name) {
        Ok(st) if st.st_mode & libc::S_IFMT != libc::S_IFDIR => dir.remove_at(name),
        _ => Ok(()),
    }
}

/// Create (truncate) the file at its full size, leaving holes unwritten.
fn create_file(target: &Dir, f: &PlannedFile) -> io::Result<File> {
    create_file_at(target, &f.path, f.size)
}

/// Create (truncate) the file at `path` beneath `target` with `size`
/// bytes, all holes, replacing what stands there but a directory.
pub(crate) fn create_file_at(target: &Dir, path: &Path, size: u64) -> io::Result<File> {
    // O_NONBLOCK: a FIFO in the way answers ENXIO instead of waiting for a reader.
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_NOFOLLOW | libc::O_NONBLOCK;
    let open = || target.open_file(path, flags, 0o600, Links::Refuse);
    let file = match open() {
        Ok(file) => file,
        // A symlink (or a special file) stands where the file goes: replace it.
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) || e.raw_os_error() == Some(libc::ENXIO) => {
            let (parent, name) = target.parent_of(path, Links::Refuse)?;
            parent.remove_at(&name)?;
            open()?
        }
        Err(e) => return Err(e),
    };
    file.set_len(size)?;
    Ok(file)
}

/// The file to write a blob into: created by the first writer (whose
/// handle is used right away: most files are a single blob), opened again
/// by later ones.
fn open_for_write(target: &Dir, f: &PlannedFile) -> io::Result<File> {
    {
        let mut state = f.state.lock().unwrap_or_else(|e| e.into_inner());
        if !state.created {
            let file = create_file(target, f)?;
            state.created = true;
            return Ok(file);
        }
    }
    target.open_file(&f.path, libc::O_WRONLY | libc::O_NONBLOCK, 0, Links::Refuse)
}

/// How the restore threads write.
struct Output<'a> {
    target: &'a Dir,
    /// What metadata goes back.
    meta: Meta,
    /// Write large blobs with direct I/O (see [`write_blob`]); turned off
    /// for the rest of the restore when the file system refuses it.
    direct: &'a AtomicBool,
    /// Bytes written so far.
    bytes: &'a AtomicU64,
    /// Blob copies that did not open, or whose pack is gone.
    damaged: &'a Mutex<Vec<DamagedBlob>>,
}

/// A restore thread's buffers, used again for every pack: fresh memory
/// for each would cost a page fault per 4 KiB.
#[derive(Default)]
struct Buffers {
    /// Sealed blobs read from a pack, opened where they lie.
    sealed: Vec<u8>,
    /// A decompressed blob.
    plain: Vec<u8>,
}

fn restore_pack(
    repo: &Repository,
    plan: &RestorePlan,
    pack_id: &PackId,
    jobs: &[BlobJob],
    out: &Output,
    buffers: &mut Buffers,
    progress: &dyn Progress,
) -> Result<()> {
    let key = pack::pack_key(pack_id);
    // Read runs of blobs that lie close together in one request, half a
    // data pack at most: each thread's buffer grows to the longest run, and
    // fresh memory costs a page fault per 4 KiB.
    const MAX_GAP: u64 = 1 << 20;
    const MAX_RUN: u64 = 16 << 20;
    let mut i = 0;
    while i < jobs.len() {
        let start = jobs[i].loc.offset as u64;
        let mut end = start + jobs[i].loc.stored_len as u64;
        let mut j = i + 1;
        while j < jobs.len() {
            let s = jobs[j].loc.offset as u64;
            let e = s + jobs[j].loc.stored_len as u64;
            if s > end + MAX_GAP || e - start > MAX_RUN {
                break;
            }
            end = end.max(e);
            j += 1;
        }
        repo.backend().get_range_into(&key, start..end, &mut buffers.sealed).map_err(|e| {
            if e.is_not_found() {
                Error::corrupt(key.clone(), "pack is missing")
            } else if e.kind() == backstop_backend::ErrorKind::InvalidRange {
                Error::corrupt(key.clone(), "pack is truncated")
            } else {
                Error::Backend(e)
            }
        })?;
        for job in &jobs[i..j] {
            let from = (job.loc.offset as u64 - start) as usize;
            let sealed = &mut buffers.sealed[from..from + job.loc.stored_len as usize];
            let plain =
                match pack::reader::open_blob_in_place(repo.key(), &job.loc, &job.id, sealed, &mut buffers.plain) {
                    Ok(plain) => plain,
                    Err(e) => {
                        out.damaged.lock().unwrap_or_else(|e| e.into_inner()).push(DamagedBlob {
                            kind: job.loc.kind,
                            id: job.id,
                            pack: *pack_id,
                        });
                        for (file, _) in &job.targets {
                            mark_failed(&plan.files[*file], &e.to_string());
                        }
                        continue;
                    }
                };
            for &(file_idx, offset) in &job.targets {
                let f = &plan.files[file_idx];
                let written = open_for_write(out.target, f)
                    .and_then(|file| write_blob(&file, plain, offset, out.direct).map(|()| file));
                let file = match written {
                    Ok(file) => Some(file),
                    Err(e) => {
                        mark_failed(f, &format!("cannot write: {e}"));
                        None
                    }
                };
                out.bytes.fetch_add(plain.len() as u64, Ordering::Relaxed);
                progress.advance(0, plain.len() as u64);
                if f.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
                    let ok = f.state.lock().unwrap_or_else(|e| e.into_inner()).failed.is_none();
                    if let (true, Some(file)) = (ok, &file)
                        && let Err(e) = apply_file_metadata(file, &f.node, out.meta)
                    {
                        progress.warning(&f.path, &format!("cannot set metadata: {e}"));
                    }
                    progress.advance(1, 0);
                }
            }
        }
        i = j;
    }
    Ok(())
}

/// Alignment of direct I/O: offsets, lengths and memory in whole 4 KiB
/// blocks suit every disk and file system that has it.
const DIRECT_ALIGN: usize = 4096;
/// Blobs with fewer whole blocks than this are written through the page cache.
const DIRECT_MIN: u64 = 128 << 10;
/// The aligned copy a direct write is made from.
const DIRECT_BUFFER: usize = 1 << 20;

/// Write a blob's bytes at `offset` of `file`.
///
/// With `direct`, the whole 4 KiB blocks of a large blob go around the page
/// cache (`O_DIRECT`, from an aligned copy), and only its partial first and
/// last blocks through it. A restore writes gigabytes it will not read
/// again; through the page cache each of them takes a fresh page, which on
/// virtual machines whose idle memory the host reclaims costs more than the
/// disk write (a restore of the benchmark's tree spent 60 % of its time
/// copying into such pages). Neighbouring blobs share only partial blocks,
/// so a block is written either always directly or always through the
/// cache. A file system that refuses direct I/O turns it off for the rest
/// of the restore; the blob is then written normally.
fn write_blob(file: &File, data: &[u8], offset: u64, direct: &AtomicBool) -> io::Result<()> {
    let align = DIRECT_ALIGN as u64;
    let end = offset + data.len() as u64;
    let (a, b) = (offset.next_multiple_of(align), end / align * align);
    if !direct.load(Ordering::Relaxed) || b < a + DIRECT_MIN {
        return file.write_all_at(data, offset);
    }
    let (head, rest) = data.split_at((a - offset) as usize);
    let (middle, tail) = rest.split_at((b - a) as usize);
    file.write_all_at(head, offset)?;
    file.write_all_at(tail, b)?;
    if write_direct(file, middle, a).is_ok() {
        return Ok(());
    }
    direct.store(false, Ordering::Relaxed);
    sys::set_direct(file, false)?;
    file.write_all_at(middle, a)
}

/// Write whole blocks from `offset` (aligned) with `O_DIRECT`.
fn write_direct(file: &File, data: &[u8], offset: u64) -> io::Result<()> {
    thread_local! {
        static ALIGNED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    sys::set_direct(file, true)?;
    ALIGNED.with(|buffer| {
        let mut buffer = buffer.borrow_mut();
        if buffer.len() < DIRECT_BUFFER + DIRECT_ALIGN {
            buffer.resize(DIRECT_BUFFER + DIRECT_ALIGN, 0);
        }
        let skew = buffer.as_ptr().align_offset(DIRECT_ALIGN);
        let aligned = &mut buffer[skew..skew + DIRECT_BUFFER];
        let mut pos = offset;
        for piece in data.chunks(DIRECT_BUFFER) {
            aligned[..piece.len()].copy_from_slice(piece);
            file.write_all_at(&aligned[..piece.len()], pos)?;
            pos += piece.len() as u64;
        }
        Ok::<(), io::Error>(())
    })?;
    sys::set_direct(file, false)
}

/// What of the snapshot's metadata a restore puts back.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Meta {
    /// Owners (running as root).
    owners: bool,
    /// Into a confined tenant's tree, which others may use as themselves:
    /// no owners (everything is the worker's), no setuid or setgid bits,
    /// no device nodes, only `user.*` extended attributes (not
    /// `security.capability`) — what a snapshot says is the tenant's to say.
    confined: bool,
}

impl Meta {
    pub(crate) fn for_target(paths: &PathScope) -> Meta {
        let confined = !paths.is_any();
        Meta { owners: sys::is_root() && !confined, confined }
    }

    fn mode(self, mode: u32) -> u32 {
        if self.confined { mode & 0o1777 } else { mode & 0o7777 }
    }

    fn xattrs(self, all: &[(Vec<u8>, Vec<u8>)]) -> std::borrow::Cow<'_, [(Vec<u8>, Vec<u8>)]> {
        if self.confined {
            all.iter().filter(|(name, _)| name.starts_with(b"user.")).cloned().collect::<Vec<_>>().into()
        } else {
            all.into()
        }
    }
}

/// Owner (as root), mode, extended attributes and times of entry `name`
/// of `dir`, in that order (chown clears setuid bits; times last because
/// the others change ctime only), never through a link in its place.
fn apply_metadata(dir: &Dir, name: &OsStr, node: &Node, meta: Meta) -> io::Result<()> {
    if meta.owners {
        dir.chown_at(name, node.uid, node.gid)?;
    }
    if node.node_type != NodeType::Symlink {
        dir.chmod_at(name, meta.mode(node.mode))?;
        let path = dir.entry_path(name)?;
        for (key, value) in meta.xattrs(&node.xattrs).iter() {
            if let Err(e) = sys::set_xattr(&path, key, value) {
                // Unprivileged restores cannot set trusted.* or security.*;
                // filesystems without xattrs refuse all. Neither loses data.
                if !matches!(e.raw_os_error(), Some(libc::EPERM | libc::ENOTSUP | libc::EACCES)) {
                    return Err(e);
                }
            }
        }
    }
    dir.set_times_at(name, times_of(node))
}

/// [`apply_metadata`] for a regular file or directory through its open handle.
pub(crate) fn apply_file_metadata(file: &File, node: &Node, meta: Meta) -> io::Result<()> {
    let xattrs = meta.xattrs(&node.xattrs);
    let file_meta = sys::FileMeta {
        owner: meta.owners.then_some((node.uid, node.gid)),
        mode: meta.mode(node.mode),
        xattrs: &xattrs,
        atime_ns: node.atime_ns,
        mtime_ns: node.mtime_ns,
    };
    sys::set_file_meta(file, &file_meta)
}

pub(crate) fn restore_hard_link(target: &Dir, path: &Path, to: &Path) -> io::Result<()> {
    let (from_dir, from_name) = target.parent_of(to, Links::Refuse)?;
    let (dir, name) = target.parent_of(path, Links::Refuse)?;
    remove_non_dir(&dir, &name)?;
    from_dir.hard_link_at(&from_name, &dir, &name)
}

pub(crate) fn restore_symlink(target: &Dir, path: &Path, node: &Node, meta: Meta) -> io::Result<()> {
    let NodeData::Symlink { target: link } = &node.data else { return Ok(()) };
    let (dir, name) = target.parent_of(path, Links::Refuse)?;
    remove_non_dir(&dir, &name)?;
    dir.symlink_at(link, &name)?;
    if meta.owners {
        dir.chown_at(&name, node.uid, node.gid)?;
    }
    dir.set_times_at(&name, times_of(node))
}

pub(crate) fn restore_special(target: &Dir, path: &Path, node: &Node, meta: Meta) -> io::Result<()> {
    let (kind, rdev) = match (&node.node_type, &node.data) {
        (NodeType::Fifo, _) => (libc::S_IFIFO, 0),
        (NodeType::BlockDevice | NodeType::CharDevice, _) if meta.confined => {
            return Err(io::Error::other("device nodes are not restored into a tenant's directory"));
        }
        (NodeType::BlockDevice, NodeData::Device { rdev }) if meta.owners => (libc::S_IFBLK, *rdev),
        (NodeType::CharDevice, NodeData::Device { rdev }) if meta.owners => (libc::S_IFCHR, *rdev),
        (NodeType::BlockDevice | NodeType::CharDevice, _) => {
            return Err(io::Error::other("device nodes can only be restored as root"));
        }
        // A socket is created by the program that listens on it.
        _ => return Ok(()),
    };
    let (dir, name) = target.parent_of(path, Links::Refuse)?;
    remove_non_dir(&dir, &name)?;
    dir.mknod_at(&name, kind | meta.mode(node.mode), rdev)?;
    apply_metadata(&dir, &name, node, meta)
}

/// Read a restored file and compare it with the snapshot's content.
fn verify_file(repo: &Repository, target: &Dir, f: &PlannedFile) -> std::result::Result<(), String> {
    let file =
        target.open_file(&f.path, libc::O_RDONLY | libc::O_NONBLOCK, 0, Links::Refuse).map_err(|e| e.to_string())?;
    if !file.metadata().map_err(|e| e.to_string())?.is_file() {
        return Err("is no longer a regular file".into());
    }
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    if len != f.size {
        return Err(format!("size is {len}, expected {}", f.size));
    }
    let mut offset = 0u64;
    let mut buf = Vec::new();
    for c in &f.content {
        buf.resize(c.len() as usize, 0);
        file.read_exact_at(&mut buf, offset).map_err(|e| format!("read at {offset}: {e}"))?;
        match c {
            ContentRef::Data { id, .. } if repo.key().blob_id(&buf) != *id => {
                return Err(format!("bytes at offset {offset} differ from blob {}", id.short()));
            }
            ContentRef::Zero { .. } if !crate::chunker::is_zero(&buf) => {
                return Err(format!("bytes at offset {offset} should be zero"));
            }
            _ => {}
        }
        offset += c.len();
    }
    Ok(())
}

/// A node's times, to set on what it was restored to.
fn times_of(node: &Node) -> backstop_backend::FileTimes {
    backstop_backend::FileTimes { atime_ns: node.atime_ns, mtime_ns: node.mtime_ns }
}

#[cfg(test)]
mod tests {
    use super::*;
    use backstop_testkit::fixture::noise;
    use std::fs::{self, OpenOptions};

    /// Blobs that share partial blocks, one ending the file, written
    /// around the page cache where the file system allows it.
    fn write_blobs_in(dir: &Path, direct_first: bool) -> (Vec<u8>, bool) {
        let data = noise(3_000_123, 11);
        let path = dir.join("f");
        let file = OpenOptions::new().write(true).create(true).truncate(true).open(&path).unwrap();
        file.set_len(data.len() as u64).unwrap();
        let direct = AtomicBool::new(direct_first);
        // Out of order, as packs deliver them; the small one stays buffered.
        for (a, b) in [(1_000_000, 2_999_999), (1000, 1_000_000), (0, 1000), (2_999_999, 3_000_123)] {
            write_blob(&file, &data[a..b], a as u64, &direct).unwrap();
        }
        drop(file);
        (data, direct.load(Ordering::Relaxed))
    }

    #[test]
    fn large_blobs_go_around_the_page_cache_and_read_back_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let on_disk = sys::local_disk_fs(dir.path());
        let (data, still_direct) = write_blobs_in(dir.path(), on_disk);
        assert_eq!(fs::read(dir.path().join("f")).unwrap(), data);
        assert_eq!(still_direct, on_disk, "direct I/O works wherever local_disk_fs says it does");
    }

    #[test]
    fn memory_file_systems_are_written_through_the_page_cache() {
        let dir = tempfile::tempdir_in("/dev/shm").expect("/dev/shm (tmpfs)");
        assert!(!sys::local_disk_fs(dir.path()), "tmpfs is not a local disk file system");
    }

    #[test]
    fn a_failed_direct_write_turns_direct_io_off_and_reports_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        fs::write(&path, vec![0u8; 1 << 20]).unwrap();
        // Whole blocks only, so the direct write is the first to fail.
        let read_only = File::open(&path).unwrap();
        let direct = AtomicBool::new(true);
        let err = write_blob(&read_only, &noise(512 << 10, 3), 4096, &direct).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EBADF), "the normal write's error is returned: {err}");
        assert!(!direct.load(Ordering::Relaxed), "direct I/O is off for the rest of the restore");
    }
}
