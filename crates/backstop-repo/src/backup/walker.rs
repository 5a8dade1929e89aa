//! The walker visits the source in snapshot order (depth first, names
//! sorted), decides for each file whether its parent's content can be
//! reused, and emits [`Item`]s to the tree assembler and [`FileJob`]s to the
//! readers.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use backstop_backend::{Dir, Links, PathScope};
use crossbeam_channel::{Receiver, Sender};

use super::FixedChunking;
use super::reader::{FileJob, FileOutcome, FileSource, Reuse};
use super::source::{BlockImage, EntryData, SourceEntry, StreamOpener, is_disk_image, valid_entry_path};
use crate::error::{Error, Result};
use crate::filter::PathFilter;
use crate::index::Index;
use crate::pack::BlobKind;
use crate::progress::{CancelToken, Progress};
use crate::repository::Repository;
use crate::sys::{self, Stat};
use crate::tree::{ContentRef, Node, NodeData, NodeType, Tree};
use crate::trees::Trees;

/// How a file relates to the parent snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileStatus {
    New,
    Changed,
    Unchanged,
}

pub(crate) enum Item {
    EnterDir(Node),
    LeaveDir,
    /// A finished node (symlink, device, unchanged file, …).
    Node(Node, Option<FileStatus>),
    /// A file being read; its content arrives on `reply`.
    File {
        node: Node,
        status: FileStatus,
        reply: Receiver<FileOutcome>,
        prefix: Arc<Mutex<Vec<ContentRef>>>,
    },
}

/// The parent snapshots' view of the directory being walked: one tree per
/// parent source, newest first (a checkpoint, then the parent snapshot).
#[derive(Default, Clone)]
pub(crate) struct ParentDir {
    trees: Vec<Arc<Tree>>,
}

impl ParentDir {
    pub fn new(trees: Vec<Arc<Tree>>) -> ParentDir {
        ParentDir { trees }
    }

    fn node(&self, name: &[u8]) -> impl Iterator<Item = &Node> {
        self.trees.iter().filter_map(move |t| t.find(name))
    }
}

/// Names of users and groups, looked up once per id.
#[derive(Default)]
struct Names {
    users: HashMap<u32, Vec<u8>>,
    groups: HashMap<u32, Vec<u8>>,
}

impl Names {
    fn user(&mut self, uid: u32) -> Vec<u8> {
        self.users.entry(uid).or_insert_with(|| crate::util::user_name(uid).unwrap_or_default().into_bytes()).clone()
    }

    fn group(&mut self, gid: u32) -> Vec<u8> {
        self.groups.entry(gid).or_insert_with(|| crate::util::group_name(gid).unwrap_or_default().into_bytes()).clone()
    }
}

/// What a walk shares with the rest of its backup.
pub(crate) struct WalkShared<'a> {
    pub repo: &'a Repository,
    pub index: &'a Index,
    /// The parents' trees and chunk lists, read ahead.
    pub parents: &'a Trees<'a>,
    pub excludes: &'a PathFilter,
    pub cancel: &'a CancelToken,
    pub progress: &'a dyn Progress,
    /// Counts what the walk could not read.
    pub warnings: &'a AtomicU64,
}

/// How a walk treats what it meets (the backup's options).
#[derive(Debug, Clone)]
pub(crate) struct WalkOptions {
    pub fixed: FixedChunking,
    /// See [`Walker::one_file_system`].
    pub one_file_system: bool,
    /// See [`Walker::exclude_caches`].
    pub exclude_caches: bool,
    pub scope: PathScope,
}

pub(crate) struct Walker<'a> {
    pub index: &'a Index,
    pub parents: &'a Trees<'a>,
    pub excludes: &'a PathFilter,
    pub fixed: FixedChunking,
    pub items: Sender<Item>,
    pub files: Sender<FileJob>,
    pub cancel: &'a CancelToken,
    pub progress: &'a dyn Progress,
    pub warnings: &'a AtomicU64,
    /// Do not descend into directories on another file system than the
    /// selected path they are under (they are kept, empty, as mount points).
    pub one_file_system: bool,
    /// Keep only the tag of directories marked by a CACHEDIR.TAG.
    pub exclude_caches: bool,
    /// Where the selected paths may be (see [`trusted`]).
    pub scope: PathScope,
    /// The device of the selected path being walked.
    root_dev: Option<u64>,
    names: Names,
}

/// The signature a CACHEDIR.TAG starts with (bford.info/cachedir).
const CACHEDIR_SIGNATURE: &[u8] = b"Signature: 8a477f597d28d172789f06886806bc55";

/// Whether `dir` holds a valid CACHEDIR.TAG.
fn is_cache_dir(dir: &Dir) -> bool {
    let mut head = [0u8; 43];
    // Non-blocking: a FIFO by that name must not stop the walk.
    dir.open_file(Path::new("CACHEDIR.TAG"), libc::O_RDONLY | libc::O_NONBLOCK, 0, Links::Refuse)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
        .is_ok_and(|()| head == CACHEDIR_SIGNATURE)
}

/// Whether the directory at `path` is one the walk opens as named: a
/// confined job's roots and what lies above them are its administrator's.
/// Everything else is opened relative to the directory it is in, without
/// following a link, so no path is resolved twice and nothing a link
/// points to is read — wherever the link is, and whenever it appeared.
fn trusted(scope: &PathScope, path: &Path) -> bool {
    match scope {
        PathScope::Any => false,
        PathScope::Beneath { roots } => roots.iter().any(|root| root.starts_with(path)),
    }
}

/// Entry `name` (at `path`) of `parent` as a directory: see [`trusted`].
fn open_dir_step(scope: &PathScope, parent: &Dir, name: &OsStr, path: &Path) -> std::io::Result<Dir> {
    if trusted(scope, path) { Dir::open(path) } else { parent.open_dir(Path::new(name), Links::Refuse) }
}

/// The selected paths as a tree of components: intermediate directories are
/// recorded with their own metadata but only the selected children.
#[derive(Default, Debug)]
pub(crate) struct PathTrie {
    children: BTreeMap<Vec<u8>, PathTrie>,
    selected: bool,
}

impl PathTrie {
    pub fn new(paths: &[PathBuf]) -> PathTrie {
        let mut root = PathTrie::default();
        for path in paths {
            let mut node = &mut root;
            for comp in path.components().skip(1) {
                if node.selected {
                    break; // an ancestor is already selected
                }
                node = node.children.entry(comp.as_os_str().as_bytes().to_vec()).or_default();
            }
            node.selected = true;
            node.children.clear();
        }
        root
    }
}

/// Stop walking: the consumer is gone or the job was cancelled.
struct Stop;

impl<'a> Walker<'a> {
    pub fn new(
        shared: WalkShared<'a>,
        options: WalkOptions,
        items: Sender<Item>,
        files: Sender<FileJob>,
    ) -> Walker<'a> {
        let WalkShared { repo: _, index, parents, excludes, cancel, progress, warnings } = shared;
        Walker {
            index,
            parents,
            excludes,
            fixed: options.fixed,
            items,
            files,
            cancel,
            progress,
            warnings,
            one_file_system: options.one_file_system,
            exclude_caches: options.exclude_caches,
            scope: options.scope,
            root_dev: None,
            names: Names::default(),
        }
    }

    fn emit(&self, item: Item) -> std::result::Result<(), Stop> {
        if self.cancel.is_cancelled() {
            return Err(Stop);
        }
        self.items.send(item).map_err(|_| Stop)
    }

    fn warn(&self, path: &Path, message: &str) {
        self.warnings.fetch_add(1, Ordering::Relaxed);
        self.progress.warning(path, message);
    }

    /// Walk every selected path. Returns when done, cancelled, or when the
    /// assembler stopped listening.
    pub fn walk_paths(&mut self, trie: &PathTrie, parent: ParentDir) {
        match Dir::open(Path::new("/")) {
            Ok(root) => {
                let _ = self.walk_trie(trie, Path::new("/"), &Arc::new(root), &parent);
            }
            Err(e) => self.warn(Path::new("/"), &format!("cannot read directory: {e}")),
        }
    }

    fn walk_trie(
        &mut self,
        trie: &PathTrie,
        path: &Path,
        dir: &Arc<Dir>,
        parent: &ParentDir,
    ) -> std::result::Result<(), Stop> {
        if trie.selected {
            // The whole directory (only "/" reaches here).
            self.root_dev = dir.stat().ok().map(|st| st.st_dev);
            return self.walk_dir_entries(path, dir, parent);
        }
        for (name, child) in &trie.children {
            let name_os = sys::os_str(name);
            let child_path = path.join(name_os);
            let (stat, opened) = if trusted(&self.scope, &child_path) {
                match Dir::open(&child_path).and_then(|d| d.stat().map(|st| (Stat::from_raw(&st), d))) {
                    Ok((st, d)) => (st, Some(Arc::new(d))),
                    Err(e) => {
                        self.warn(&child_path, &format!("cannot back up: {e}"));
                        continue;
                    }
                }
            } else {
                match dir.stat_at(name_os) {
                    Ok(st) => (Stat::from_raw(&st), None),
                    Err(e) => {
                        self.warn(&child_path, &format!("cannot back up: {e}"));
                        continue;
                    }
                }
            };
            if child.selected {
                self.root_dev = Some(stat.dev);
                self.walk_entry(&child_path, name, &stat, dir, parent)?;
            } else if stat.is_dir() {
                let sub_dir = match opened
                    .map(Ok)
                    .unwrap_or_else(|| dir.open_dir(Path::new(name_os), Links::Refuse).map(Arc::new))
                {
                    Ok(d) => d,
                    Err(e) => {
                        self.warn(&child_path, &format!("cannot read directory: {e}"));
                        continue;
                    }
                };
                let node = self.node(name.clone(), &stat, &child_path, dir, None);
                self.emit(Item::EnterDir(node))?;
                let sub = self.enter(parent, name);
                self.walk_trie(child, &child_path, &sub_dir, &sub)?;
                self.emit(Item::LeaveDir)?;
            } else {
                self.warn(&child_path, "is not a directory, so the paths below it cannot be backed up");
            }
        }
        Ok(())
    }

    fn walk_dir_entries(&mut self, path: &Path, dir: &Arc<Dir>, parent: &ParentDir) -> std::result::Result<(), Stop> {
        let entries = match dir.read_dir() {
            Ok(entries) => entries,
            Err(e) => {
                self.warn(path, &format!("cannot read directory: {e}"));
                return Ok(());
            }
        };
        for (name, stat) in entries {
            self.walk_entry(&path.join(&name), name.as_bytes(), &Stat::from_raw(&stat), dir, parent)?;
        }
        Ok(())
    }

    /// The parent view of subdirectory `name`.
    fn enter(&self, parent: &ParentDir, name: &[u8]) -> ParentDir {
        let mut trees = Vec::new();
        for node in parent.node(name) {
            if let Some(subtree) = node.subtree() {
                match self.parents.tree(&subtree) {
                    Ok(tree) => trees.push(tree),
                    // A parent we cannot read only costs re-reading files.
                    Err(e) => self.progress.info(&format!("parent tree {}: {e}", subtree.short())),
                }
            }
        }
        ParentDir { trees }
    }

    /// Entry `name` of `dir`, found at `path` with `stat`.
    fn walk_entry(
        &mut self,
        path: &Path,
        name: &[u8],
        stat: &Stat,
        dir: &Arc<Dir>,
        parent: &ParentDir,
    ) -> std::result::Result<(), Stop> {
        if self.excludes.matches(path, stat.is_dir()) {
            return Ok(());
        }
        let name_os = sys::os_str(name);
        match stat.file_type() {
            libc::S_IFDIR => {
                let node = self.node(name.to_vec(), stat, path, dir, parent.node(name).next());
                self.emit(Item::EnterDir(node))?;
                let sub = self.enter(parent, name);
                if self.one_file_system && self.root_dev.is_some_and(|dev| dev != stat.dev) {
                    // A mount point: recorded, not entered.
                } else {
                    match dir.open_dir(Path::new(name_os), Links::Refuse) {
                        Err(e) => self.warn(path, &format!("cannot read directory: {e}")),
                        Ok(sub_dir) => {
                            let sub_dir = Arc::new(sub_dir);
                            if self.exclude_caches && is_cache_dir(&sub_dir) {
                                let tag = OsStr::new("CACHEDIR.TAG");
                                if let Ok(st) = sub_dir.stat_at(tag) {
                                    let st = Stat::from_raw(&st);
                                    self.walk_entry(&path.join(tag), tag.as_bytes(), &st, &sub_dir, &sub)?;
                                }
                            } else {
                                self.walk_dir_entries(path, &sub_dir, &sub)?;
                            }
                        }
                    }
                }
                self.emit(Item::LeaveDir)
            }
            libc::S_IFREG => self.walk_file(path, name, stat, dir, parent),
            _ => {
                let old = parent.node(name).next();
                let mut node = self.node(name.to_vec(), stat, path, dir, old);
                if node.node_type == NodeType::Symlink {
                    match dir.read_link_at(name_os) {
                        Ok(target) => node.data = NodeData::Symlink { target },
                        Err(e) => {
                            self.warn(path, &format!("cannot read symlink: {e}"));
                            return Ok(());
                        }
                    }
                }
                self.emit(Item::Node(node, None))
            }
        }
    }

    fn walk_file(
        &mut self,
        path: &Path,
        name: &[u8],
        stat: &Stat,
        dir: &Arc<Dir>,
        parent: &ParentDir,
    ) -> std::result::Result<(), Stop> {
        let candidates: Vec<&Node> = parent.node(name).filter(|n| n.node_type == NodeType::File).collect();
        let same = |old: &Node| {
            old.size == stat.size
                && old.mtime_ns == stat.mtime_ns
                && old.ctime_ns == stat.ctime_ns
                && old.inode == stat.ino
        };
        let stored = |old: &Node| old.content().iter().all(|c| self.stored(c));
        let status = if candidates.is_empty() { FileStatus::New } else { FileStatus::Changed };

        if let Some(old) = candidates.iter().find(|old| !old.is_partial() && same(old) && stored(old)) {
            let mut node = self.node(name.to_vec(), stat, path, dir, Some(old));
            node.data = NodeData::File { content: old.content().to_vec(), partial: false };
            self.progress.advance(1, stat.size);
            self.progress.stored(0, stat.size);
            return self.emit(Item::Node(node, Some(FileStatus::Unchanged)));
        }
        // A file an interrupted backup had started: resume after its prefix.
        let resume = candidates
            .iter()
            .find(|old| old.is_partial() && same(old) && stored(old))
            .map(|old| old.content().to_vec())
            .unwrap_or_default();
        let resume = self.parents.expand(&resume).unwrap_or_default();
        self.progress.advance(0, resume.iter().map(ContentRef::len).sum());

        let node = self.node(name.to_vec(), stat, path, dir, candidates.first().copied());
        let fixed = match self.fixed {
            FixedChunking::Always => true,
            FixedChunking::Never => false,
            FixedChunking::Auto => stat.is_sparse() || is_disk_image(name),
        };
        let (reply_tx, reply_rx) = crossbeam_channel::bounded(1);
        let prefix = Arc::new(Mutex::new(Vec::new()));
        let job = FileJob {
            source: FileSource::At {
                dir: dir.clone(),
                name: sys::os_str(name).to_os_string(),
                path: path.to_path_buf(),
            },
            stat: Some(*stat),
            resume,
            fixed,
            strict: false,
            prefix: prefix.clone(),
            reply: reply_tx,
        };
        // The item first: the assembler must know the file before a reader
        // can finish it.
        self.emit(Item::File { node, status, reply: reply_rx, prefix })?;
        self.files.send(job).map_err(|_| Stop)
    }

    /// Whether a parent's content reference is still in the index.
    fn stored(&self, c: &ContentRef) -> bool {
        match c {
            ContentRef::Data { id, .. } => self.index.contains(BlobKind::Data, id),
            ContentRef::List { id, .. } => self.index.contains(BlobKind::Tree, id),
            ContentRef::Zero { .. } => true,
        }
    }

    /// A node with the metadata of entry `name` of `dir` (at `path`).
    /// Extended attributes are reused from `old` when the inode's ctime is
    /// unchanged (any xattr change bumps it).
    fn node(&mut self, name: Vec<u8>, st: &Stat, path: &Path, dir: &Dir, old: Option<&Node>) -> Node {
        let node_type = match st.file_type() {
            libc::S_IFREG => NodeType::File,
            libc::S_IFDIR => NodeType::Dir,
            libc::S_IFLNK => NodeType::Symlink,
            libc::S_IFBLK => NodeType::BlockDevice,
            libc::S_IFCHR => NodeType::CharDevice,
            libc::S_IFIFO => NodeType::Fifo,
            _ => NodeType::Socket,
        };
        let xattrs = match old {
            Some(old) if old.ctime_ns == st.ctime_ns && old.inode == st.ino => old.xattrs.clone(),
            _ => match dir.entry_path(sys::os_str(&name)).and_then(|p| sys::xattrs(&p)) {
                Ok(x) => x,
                Err(e) => {
                    if e.raw_os_error() != Some(libc::EPERM) && e.kind() != std::io::ErrorKind::NotFound {
                        self.warn(path, &format!("cannot read extended attributes: {e}"));
                    }
                    Vec::new()
                }
            },
        };
        let data = match node_type {
            NodeType::File => NodeData::File { content: Vec::new(), partial: false },
            NodeType::Dir => NodeData::Dir { subtree: crate::id::BlobId([0; 32]) },
            NodeType::Symlink => NodeData::Symlink { target: Vec::new() },
            NodeType::BlockDevice | NodeType::CharDevice => NodeData::Device { rdev: st.rdev },
            NodeType::Fifo | NodeType::Socket => NodeData::Other,
        };
        Node {
            name,
            node_type,
            mode: st.mode & 0o7777,
            uid: st.uid,
            gid: st.gid,
            user: self.names.user(st.uid),
            group: self.names.group(st.gid),
            mtime_ns: st.mtime_ns,
            atime_ns: st.atime_ns,
            ctime_ns: st.ctime_ns,
            device: st.dev,
            inode: st.ino,
            nlink: st.nlink,
            size: if node_type == NodeType::File { st.size } else { 0 },
            xattrs,
            data,
        }
    }

    /// A node for something that is not on this file system: owned by
    /// us, timed now.
    fn synthetic_node(&mut self, name: &[u8], node_type: NodeType, mode: u32) -> Node {
        let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0);
        // SAFETY: getuid/getgid have no preconditions.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let data = match node_type {
            NodeType::Dir => NodeData::Dir { subtree: crate::id::BlobId([0; 32]) },
            _ => NodeData::File { content: Vec::new(), partial: false },
        };
        Node {
            name: name.to_vec(),
            node_type,
            mode,
            uid,
            gid,
            user: self.names.user(uid),
            group: self.names.group(gid),
            mtime_ns: now,
            atime_ns: now,
            ctime_ns: now,
            device: 0,
            inode: 0,
            nlink: 1,
            size: 0,
            xattrs: Vec::new(),
            data,
        }
    }

    /// Send a stream's or a packager's entry to the readers: unlike a
    /// local file, one that cannot be read fails the backup (`strict`).
    fn send_entry(&self, node: Node, status: FileStatus, source: FileSource, fixed: bool) -> Result<()> {
        let (reply_tx, reply_rx) = crossbeam_channel::bounded(1);
        let prefix = Arc::new(Mutex::new(Vec::new()));
        let job = FileJob {
            source,
            stat: None,
            resume: Vec::new(),
            fixed,
            strict: true,
            prefix: prefix.clone(),
            reply: reply_tx,
        };
        self.emit(Item::File { node, status, reply: reply_rx, prefix }).map_err(|_| Error::Cancelled)?;
        self.files.send(job).map_err(|_| Error::Cancelled)
    }

    /// Emit one stream as a file named `name`.
    pub fn walk_stream(&mut self, name: &str, reader: Box<dyn std::io::Read + Send>) -> Result<()> {
        let node = self.synthetic_node(name.as_bytes(), NodeType::File, 0o600);
        let open: StreamOpener = Box::new(move || Ok(reader));
        let source = FileSource::Open(Mutex::new(Some(open)));
        self.send_entry(node, FileStatus::New, source, self.fixed == FixedChunking::Always)
    }

    /// Emit a packager's entries as a tree. `generations` are the parent
    /// snapshot's image generations, which decide whether an image's
    /// changed-block map can be trusted.
    pub fn walk_source(
        &mut self,
        dir: SourceDir,
        block: usize,
        parent: &ParentDir,
        generations: &BTreeMap<String, String>,
        prefix: &str,
    ) -> Result<()> {
        for (name, child) in dir.children {
            let name_str = String::from_utf8_lossy(&name).into_owned();
            let path = if prefix.is_empty() { name_str } else { format!("{prefix}/{name_str}") };
            match child {
                SourceNode::Dir(sub) => {
                    let node = self.synthetic_node(&name, NodeType::Dir, 0o755);
                    self.emit(Item::EnterDir(node)).map_err(|_| Error::Cancelled)?;
                    let sub_parent = self.enter(parent, &name);
                    self.walk_source(sub, block, &sub_parent, generations, &path)?;
                    self.emit(Item::LeaveDir).map_err(|_| Error::Cancelled)?;
                }
                SourceNode::Entry(entry) => {
                    let old = parent.node(&name).find(|n| n.node_type == NodeType::File);
                    let status = if old.is_some() { FileStatus::Changed } else { FileStatus::New };
                    let node = self.synthetic_node(&name, NodeType::File, entry.mode & 0o7777);
                    let (source, fixed) = match entry.data {
                        EntryData::Bytes(bytes) => {
                            let open: StreamOpener = Box::new(move || Ok(Box::new(std::io::Cursor::new(bytes)) as _));
                            (FileSource::Open(Mutex::new(Some(open))), false)
                        }
                        EntryData::Stream(open) => (FileSource::Open(Mutex::new(Some(open))), false),
                        EntryData::Image(image) => {
                            let reuse = self.image_reuse(&path, image.as_ref(), old, generations, block);
                            (FileSource::Image { image, block, reuse }, true)
                        }
                    };
                    self.send_entry(node, status, source, fixed)?;
                }
            }
        }
        Ok(())
    }

    /// The parent's content and the changed extents of an image, when its
    /// changed-block map follows the parent's generation; otherwise `None`
    /// (the whole image is read and its blocks compared by hash) and the
    /// job log says why.
    fn image_reuse(
        &self,
        path: &str,
        image: &dyn BlockImage,
        old: Option<&Node>,
        generations: &BTreeMap<String, String>,
        block: usize,
    ) -> Option<Reuse> {
        let changes = image.changes()?;
        let fallback = |why: String| -> Option<Reuse> {
            self.progress.info(&format!(
                "{path}: {why}; not using its changed-block map, reading the whole image and comparing block hashes"
            ));
            None
        };
        let Some(old) = old else {
            return fallback("the parent snapshot has no such image".into());
        };
        match generations.get(path) {
            Some(g) if *g == changes.parent_generation => {}
            Some(g) => {
                return fallback(format!(
                    "the map follows generation {}, but the parent snapshot holds generation {g}",
                    changes.parent_generation
                ));
            }
            None => return fallback("the parent snapshot recorded no generation for it".into()),
        }
        let size = image.size();
        if old.size != size || old.is_partial() {
            return fallback(format!("its size changed from {} to {size} bytes", old.size));
        }
        if let Some(&(offset, len)) = changes.extents.iter().find(|&&(o, l)| o.checked_add(l).is_none_or(|e| e > size))
        {
            return fallback(format!("the map names [{offset}, +{len}), beyond the image's end"));
        }
        let parent = match self.parents.expand(old.content()) {
            Ok(content) => content,
            Err(e) => return fallback(format!("the parent's content cannot be read ({e})")),
        };
        if !aligned(&parent, block as u64, size) || !parent.iter().all(|c| self.stored(c)) {
            return fallback(format!("the parent was not stored in {block}-byte chunks"));
        }
        let changed: u64 = changes.extents.iter().fold(0u64, |sum, e| sum.saturating_add(e.1));
        self.progress.info(&format!(
            "{path}: changed-block map from generation {} to {}: reading {} changed extent(s), {changed} bytes",
            changes.parent_generation,
            changes.generation,
            changes.extents.len()
        ));
        Some(Reuse::new(parent, changes.extents.clone()))
    }
}

/// Whether `content` (expanded) covers `size` bytes with every data chunk
/// starting on a block boundary and a block long (the last may be short).
fn aligned(content: &[ContentRef], block: u64, size: u64) -> bool {
    let mut pos = 0u64;
    for c in content {
        if let ContentRef::Data { len, .. } = c
            && (!pos.is_multiple_of(block) || (*len != block && pos + len != size))
        {
            return false;
        }
        pos += c.len();
    }
    pos == size
}

/// A packager's entries arranged as directories.
#[derive(Default)]
pub(crate) struct SourceDir {
    children: BTreeMap<Vec<u8>, SourceNode>,
}

pub(crate) enum SourceNode {
    Dir(SourceDir),
    Entry(SourceEntry),
}

impl SourceDir {
    /// Arrange `entries` by path; paths must be valid and distinct, and no
    /// entry may be another's directory.
    pub fn build(entries: Vec<SourceEntry>) -> Result<SourceDir> {
        let mut root = SourceDir::default();
        for entry in entries {
            if !valid_entry_path(&entry.path) {
                return Err(Error::Invalid(format!("{:?} is not a valid entry path", entry.path)));
            }
            let path = entry.path.clone();
            let mut names: Vec<&str> = path.split('/').collect();
            let last = names.pop().unwrap_or_default();
            let mut dir = &mut root;
            for name in names {
                let child = dir
                    .children
                    .entry(name.as_bytes().to_vec())
                    .or_insert_with(|| SourceNode::Dir(SourceDir::default()));
                dir = match child {
                    SourceNode::Dir(d) => d,
                    SourceNode::Entry(_) => return Err(Error::Invalid(format!("{path:?} is below another entry"))),
                };
            }
            if dir.children.insert(last.as_bytes().to_vec(), SourceNode::Entry(entry)).is_some() {
                return Err(Error::Invalid(format!("{path:?} is given twice")));
            }
        }
        Ok(root)
    }
}

/// Count files and bytes under the selected paths (for progress totals),
/// opening directories the way the walk does.
pub(crate) fn scan_totals(
    trie: &PathTrie,
    scope: &PathScope,
    excludes: &PathFilter,
    cancel: &CancelToken,
    progress: &dyn Progress,
) {
    fn walk(dir: &Dir, path: &Path, excludes: &PathFilter, cancel: &CancelToken, totals: &mut (u64, u64)) {
        let Ok(entries) = dir.read_dir() else { return };
        for (name, st) in entries {
            if cancel.is_cancelled() {
                return;
            }
            let st = Stat::from_raw(&st);
            let p = path.join(&name);
            if excludes.matches(&p, st.is_dir()) {
                continue;
            }
            if st.is_dir() {
                if let Ok(sub) = dir.open_dir(Path::new(&name), Links::Refuse) {
                    walk(&sub, &p, excludes, cancel, totals);
                }
            } else if st.is_file() {
                totals.0 += 1;
                totals.1 += st.size;
            }
        }
    }
    struct Scan<'a> {
        scope: &'a PathScope,
        excludes: &'a PathFilter,
        cancel: &'a CancelToken,
        totals: (u64, u64),
    }
    impl Scan<'_> {
        fn visit(&mut self, trie: &PathTrie, dir: &Dir, path: &Path) {
            if trie.selected {
                walk(dir, path, self.excludes, self.cancel, &mut self.totals);
                return;
            }
            for (name, child) in &trie.children {
                let name = sys::os_str(name);
                let child_path = path.join(name);
                if child.selected && !trusted(self.scope, &child_path) {
                    match dir.stat_at(name).map(|st| Stat::from_raw(&st)) {
                        Ok(st) if st.is_file() => {
                            self.totals.0 += 1;
                            self.totals.1 += st.size;
                            continue;
                        }
                        Ok(st) if st.is_dir() => {}
                        _ => continue,
                    }
                }
                if let Ok(sub) = open_dir_step(self.scope, dir, name, &child_path) {
                    self.visit(child, &sub, &child_path);
                }
            }
        }
    }
    let Ok(root) = Dir::open(Path::new("/")) else { return };
    let mut scan = Scan { scope, excludes, cancel, totals: (0, 0) };
    scan.visit(trie, &root, Path::new("/"));
    progress.total(scan.totals.0, scan.totals.1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trie_merges_paths_and_drops_nested_ones() {
        let trie =
            PathTrie::new(&[PathBuf::from("/home/alice"), PathBuf::from("/home/alice/docs"), PathBuf::from("/etc")]);
        assert_eq!(trie.children.keys().cloned().collect::<Vec<_>>(), vec![b"etc".to_vec(), b"home".to_vec()]);
        let home = &trie.children[&b"home".to_vec()];
        assert!(!home.selected);
        assert!(home.children[&b"alice".to_vec()].selected);
        assert!(home.children[&b"alice".to_vec()].children.is_empty(), "nested paths are covered by their ancestor");
        let reversed = PathTrie::new(&[PathBuf::from("/home/alice/docs"), PathBuf::from("/home/alice")]);
        assert!(reversed.children[&b"home".to_vec()].children[&b"alice".to_vec()].children.is_empty());
    }

    #[test]
    fn disk_images_are_recognised_by_extension() {
        assert!(is_disk_image(b"vm-01.RAW"));
        assert!(is_disk_image(b"disk.qcow2"));
        assert!(!is_disk_image(b"notes.txt"));
    }
}
