//! Files inside a stored disk image, without restoring the disk: its
//! partition table ([`parts`]: MBR, GPT) and the ext2/3/4 file systems in
//! it ([`ext`]), read straight from the snapshot's chunks ([`StoredImage`]
//! fetches only the chunks a read touches, neighbours in one request).
//!
//! Paths inside an image name the partition first, as Linux does:
//! `/p1/etc/hostname` is `/etc/hostname` of partition 1. A disk whose
//! file system fills it whole (no table) has no such component.
//!
//! The parsers take nothing from the disk on trust (a guest wrote it):
//! damage or a file system they do not read is an error naming the
//! image and the partition, never a panic.

pub mod ext;
pub mod journal;
pub mod parts;
mod restore;
mod stored;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

pub use restore::restore;
pub use stored::StoredImage;

use crate::error::{Error, Result};
use crate::index::Index;
use crate::progress::Progress;
use crate::repository::Repository;
use crate::snapshot::Snapshot;
use crate::tree::{Node, NodeData, NodeType};
use ext::{ExtFs, Inode};
use parts::{Partition, Table};

/// What went wrong reading a disk's structures.
#[derive(Debug)]
pub enum DiskError {
    /// The structures are damaged (or were never what they claim).
    Damaged(String),
    /// No file system this reader knows is there.
    Unknown(String),
    /// A file system (or a feature of it) this reader does not read.
    Unsupported(String),
    NotFound,
    NotADirectory,
    /// A path runs through this symlink (inside the image).
    Symlink(String),
    /// The image's own chunks could not be read from the repository.
    Read(Error),
}

impl DiskError {
    pub(crate) fn damaged(what: impl Into<String>) -> DiskError {
        DiskError::Damaged(what.into())
    }
}

impl std::fmt::Display for DiskError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DiskError::Damaged(what) => write!(f, "damaged: {what}"),
            DiskError::Unknown(what) | DiskError::Unsupported(what) => f.write_str(what),
            DiskError::NotFound => f.write_str("no such file or directory"),
            DiskError::NotADirectory => f.write_str("not a directory"),
            DiskError::Symlink(at) => write!(f, "{at} is a symbolic link; give the path it points to"),
            DiskError::Read(e) => write!(f, "{e}"),
        }
    }
}

/// Bytes at offsets: a stored image, a partition of it, a test's buffer.
pub trait ReadAt: Sync {
    fn size(&self) -> u64;
    /// Exactly `buf.len()` bytes from `offset`; past the end is an error.
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError>;
}

impl ReadAt for [u8] {
    fn size(&self) -> u64 {
        self.len() as u64
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        let src = usize::try_from(offset)
            .ok()
            .and_then(|at| self.get(at..at.checked_add(buf.len())?))
            .ok_or_else(|| DiskError::damaged(format!("read of {} bytes at {offset} past the end", buf.len())))?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

impl ReadAt for Vec<u8> {
    fn size(&self) -> u64 {
        self.len() as u64
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        self.as_slice().read_exact_at(offset, buf)
    }
}

/// A part of a disk (a partition), read as a disk of its own.
pub struct Slice<'a> {
    pub disk: &'a dyn ReadAt,
    pub start: u64,
    pub len: u64,
}

impl ReadAt for Slice<'_> {
    fn size(&self) -> u64 {
        self.len
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        if offset.checked_add(buf.len() as u64).is_none_or(|end| end > self.len) {
            return Err(DiskError::damaged(format!(
                "read of {} bytes at {offset} past the partition's end",
                buf.len()
            )));
        }
        self.disk.read_exact_at(self.start + offset, buf)
    }
}

pub(crate) fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

pub(crate) fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

pub(crate) fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// One disk image of a snapshot, opened for its files.
pub struct ImageView<'a> {
    /// The image's path in the snapshot.
    pub entry: PathBuf,
    pub image: StoredImage<'a>,
    /// Its partition table, if it has one.
    pub table: Option<(Table, Vec<Partition>)>,
}

/// Where a path inside the image leads: the list of partitions, or a
/// path in one file system.
enum Place<'p> {
    Partitions,
    Volume { partition: Option<&'p Partition>, path: Vec<Vec<u8>> },
}

/// A file system, open, with the partition it is in.
pub(crate) struct Volume<'v> {
    pub fs: ExtFs<'v>,
    /// For a file system whose journal held changes: what was applied of
    /// it, or why it could not be.
    pub replayed: Option<Result<journal::Applied, String>>,
    /// `p1` or empty (a whole-disk file system).
    pub prefix: PathBuf,
    /// The device number its nodes carry (the partition's number).
    pub device: u64,
}

impl<'a> ImageView<'a> {
    /// Open the disk image `entry` (its path in the snapshot, e.g.
    /// `drive0.raw`) of `snapshot`.
    pub fn open(repo: &'a Repository, index: &'a Index, snapshot: &Snapshot, entry: &Path) -> Result<ImageView<'a>> {
        let entry = Path::new("/").join(entry);
        let node = crate::ops::ls::find(repo, index, snapshot, &entry)?
            .ok_or_else(|| Error::Invalid("--image names a disk image of the snapshot, not its root".into()))?;
        if node.node_type != NodeType::File {
            return Err(Error::Invalid(format!(
                "{} is a {}, not a disk image",
                entry.display(),
                node.node_type.as_str()
            )));
        }
        let image = StoredImage::open(repo, index, node.content())?;
        let table = parts::read(&image).map_err(|e| disk_error(&entry, None, e))?;
        Ok(ImageView { entry, image, table })
    }

    fn place<'p>(&'p self, path: &Path) -> Result<Place<'p>> {
        let mut comps = Vec::new();
        for c in path.components() {
            match c {
                Component::Normal(name) => comps.push(name.as_bytes().to_vec()),
                Component::RootDir | Component::CurDir => {}
                Component::ParentDir | Component::Prefix(_) => {
                    return Err(Error::Invalid(format!(
                        "{}: `..` is not allowed in a path inside an image",
                        path.display()
                    )));
                }
            }
        }
        let Some((_, partitions)) = &self.table else {
            return Ok(Place::Volume { partition: None, path: comps });
        };
        let Some(first) = comps.first() else { return Ok(Place::Partitions) };
        let number =
            std::str::from_utf8(first).ok().and_then(|s| s.strip_prefix('p')).and_then(|n| n.parse::<u32>().ok());
        let partition = number.and_then(|n| partitions.iter().find(|p| p.number == n)).ok_or_else(|| {
            let names: Vec<String> = partitions.iter().map(|p| format!("p{}", p.number)).collect();
            Error::not_found(format!(
                "{} in {} (its partitions are {}; a path inside starts with one)",
                path.display(),
                self.entry.display(),
                names.join(", ")
            ))
        })?;
        Ok(Place::Volume { partition: Some(partition), path: comps[1..].to_vec() })
    }

    /// The disk's partitions (none without a table).
    pub fn partitions(&self) -> &[Partition] {
        self.table.as_ref().map_or(&[], |(_, partitions)| partitions.as_slice())
    }

    /// Call `f` with partition `p`'s file system and its root directory; a
    /// partition holding none this reader knows is passed by (and said).
    pub(crate) fn with_partition_root(
        &self,
        p: &Partition,
        progress: &dyn Progress,
        f: impl FnOnce(&Volume, &Inode) -> Result<()>,
    ) -> Result<()> {
        if !self.has_file_system(p, progress)? {
            return Ok(());
        }
        self.with_volume(Some(p), progress, |vol| {
            let root = self.lookup(vol, Some(p), &[])?;
            f(vol, &root)
        })
    }

    /// Whether partition `p` holds a file system this reader knows; one
    /// that holds none (swap, a boot loader's) is said so and passed by.
    pub(crate) fn has_file_system(&self, p: &Partition, progress: &dyn Progress) -> Result<bool> {
        let slice = Slice { disk: &self.image, start: p.start, len: p.len };
        let known = ExtFs::probe(&slice).map_err(|e| disk_error(&self.entry, Some(p), e))?;
        if !known {
            progress.info(&format!(
                "{}: p{} ({}) holds no ext2/3/4 file system; passed by",
                self.entry.display(),
                p.number,
                p.kind
            ));
        }
        Ok(known)
    }

    /// Call `f` with the file system of `partition` (or the whole disk's);
    /// whether its journal had to be replayed is said to `progress` first.
    pub(crate) fn with_volume<T>(
        &self,
        partition: Option<&Partition>,
        progress: &dyn Progress,
        f: impl FnOnce(&Volume) -> Result<T>,
    ) -> Result<T> {
        let f = |vol: &Volume| {
            self.recovery_note(vol, progress);
            f(vol)
        };
        let (start, len) = partition.map_or((0, self.image.size()), |p| (p.start, p.len));
        let slice = Slice { disk: &self.image, start, len };
        let fs = ExtFs::open(&slice).map_err(|e| disk_error(&self.entry, partition, e))?;
        let prefix = partition.map_or_else(PathBuf::new, |p| PathBuf::from(format!("p{}", p.number)));
        let device = partition.map_or(0, |p| p.number as u64);
        if !fs.needs_recovery() {
            return f(&Volume { fs, replayed: None, prefix, device });
        }
        // Read as mounting it would: with its journal's committed changes.
        let journal = match journal::Journal::read(&fs) {
            Ok(journal) => journal,
            Err(DiskError::Read(e)) => return Err(e),
            Err(e) => return f(&Volume { fs, replayed: Some(Err(e.to_string())), prefix, device }),
        };
        let replayed = journal::Replayed { dev: &slice, block_size: fs.block_size(), journal: &journal };
        let fs = ExtFs::open(&replayed).map_err(|e| disk_error(&self.entry, partition, e))?;
        f(&Volume { fs, replayed: Some(Ok(journal.applied)), prefix, device })
    }

    /// A note for the log when a file system's journal held changes.
    fn recovery_note(&self, vol: &Volume, progress: &dyn Progress) {
        let at = format!("{}{}", self.entry.display(), Path::new("/").join(&vol.prefix).display());
        match &vol.replayed {
            None => {}
            Some(Ok(applied)) => progress.info(&format!(
                "{at}: the {} journal held {} committed transaction(s) not yet in place (the disk was captured \
                 while mounted and not frozen): {} block(s) read from the journal, as mounting would",
                vol.fs.flavour, applied.transactions, applied.blocks
            )),
            Some(Err(why)) => progress.info(&format!(
                "{at}: the {} journal holds changes not yet applied and cannot be replayed ({why}): the files \
                 are as of its last checkpoint, the last seconds' changes may be missing",
                vol.fs.flavour
            )),
        }
    }

    /// Call `f` for the entry at `path` and every entry below it, in
    /// order, with its path inside the image. A directory that cannot be
    /// read is reported to `progress` and skipped.
    pub fn walk(&self, path: &Path, progress: &dyn Progress, f: &mut dyn FnMut(&Path, &Node)) -> Result<()> {
        match self.place(path)? {
            Place::Partitions => {
                for p in self.partitions() {
                    let at = PathBuf::from(format!("/p{}", p.number));
                    f(&at, &partition_node(p));
                    let walked = self.with_partition_root(p, progress, |vol, root| {
                        self.walk_dir(vol, root, &at, progress, f);
                        Ok(())
                    });
                    if let Err(e) = walked {
                        progress.warning(&at, &format!("not listed: {e}"));
                    }
                }
                Ok(())
            }
            Place::Volume { partition, path: comps } => self.with_volume(partition, progress, |vol| {
                let inode = self.lookup(vol, partition, &comps)?;
                let at = Path::new("/").join(&vol.prefix).join(join(&comps));
                if !comps.is_empty() || partition.is_some() {
                    let name = comps.last().cloned().unwrap_or_else(|| vol.prefix.as_os_str().as_bytes().to_vec());
                    f(&at, &node_of(vol, &name, &inode));
                }
                if inode.kind == NodeType::Dir {
                    self.walk_dir(vol, &inode, &at, progress, f);
                }
                Ok(())
            }),
        }
    }

    /// The entries of the directory at `path` inside the image, by name
    /// (at `/` of a partitioned disk: its partitions); one level only.
    pub fn read_dir(&self, path: &Path, progress: &dyn Progress) -> Result<Vec<Node>> {
        match self.place(path)? {
            Place::Partitions => Ok(self.partitions().iter().map(partition_node).collect()),
            Place::Volume { partition, path: comps } => self.with_volume(partition, progress, |vol| {
                let dir = self.lookup(vol, partition, &comps)?;
                if dir.kind != NodeType::Dir {
                    return Err(Error::Invalid(format!(
                        "{} is a {}, not a directory",
                        path.display(),
                        dir.kind.as_str()
                    )));
                }
                let at = Path::new("/").join(&vol.prefix).join(join(&comps));
                Ok(self
                    .children(vol, &dir, &at, progress)
                    .iter()
                    .map(|(name, inode)| node_of(vol, name, inode))
                    .collect())
            }),
        }
    }

    fn walk_dir(&self, vol: &Volume, dir: &Inode, at: &Path, progress: &dyn Progress, f: &mut dyn FnMut(&Path, &Node)) {
        let mut above = Vec::new();
        self.walk_below(vol, dir, at, &mut above, progress, f);
    }

    /// `above`: the directories above `dir`, by inode: a damaged file
    /// system may make a directory its own descendant.
    fn walk_below(
        &self,
        vol: &Volume,
        dir: &Inode,
        at: &Path,
        above: &mut Vec<u32>,
        progress: &dyn Progress,
        f: &mut dyn FnMut(&Path, &Node),
    ) {
        if let Err(e) = enter(above, dir) {
            progress.warning(at, &format!("not listed: {}", disk_error(&self.entry, None, e)));
            return;
        }
        for (name, inode) in self.children(vol, dir, at, progress) {
            let path = at.join(OsStr::from_bytes(&name));
            f(&path, &node_of(vol, &name, &inode));
            if inode.kind == NodeType::Dir {
                self.walk_below(vol, &inode, &path, above, progress, f);
            }
        }
        above.pop();
    }

    /// The entries of `dir` with their inodes, sorted by name; what cannot
    /// be read is reported and left out.
    pub(crate) fn children(
        &self,
        vol: &Volume,
        dir: &Inode,
        at: &Path,
        progress: &dyn Progress,
    ) -> Vec<(Vec<u8>, Inode)> {
        let entries = match vol.fs.read_dir(dir) {
            Ok(entries) => entries,
            Err(e) => {
                progress.warning(at, &format!("directory not read: {e}"));
                return Vec::new();
            }
        };
        let mut out = BTreeMap::new();
        for entry in entries {
            if !crate::tree::valid_name(&entry.name) {
                progress.warning(at, "an entry with an unsafe name is left out");
                continue;
            }
            match vol.fs.inode(entry.ino) {
                Ok(inode) => {
                    out.insert(entry.name, inode);
                }
                Err(e) => progress.warning(&at.join(OsStr::from_bytes(&entry.name)), &format!("left out: {e}")),
            }
        }
        out.into_iter().collect()
    }

    pub(crate) fn lookup(&self, vol: &Volume, partition: Option<&Partition>, comps: &[Vec<u8>]) -> Result<Inode> {
        let names: Vec<&[u8]> = comps.iter().map(Vec::as_slice).collect();
        vol.fs.lookup(&names).map_err(|e| match e {
            DiskError::NotFound => Error::not_found(format!(
                "{} in {}",
                Path::new("/").join(&vol.prefix).join(join(comps)).display(),
                self.entry.display()
            )),
            e => disk_error(&self.entry, partition, e),
        })
    }

    /// The entry at `path` inside the image.
    pub fn stat(&self, path: &Path, progress: &dyn Progress) -> Result<Node> {
        match self.place(path)? {
            Place::Partitions => Err(Error::Invalid("`/` of a partitioned disk holds its partitions".into())),
            Place::Volume { partition, path: comps } => self.with_volume(partition, progress, |vol| {
                let inode = self.lookup(vol, partition, &comps)?;
                let name = comps.last().cloned().unwrap_or_else(|| vol.prefix.as_os_str().as_bytes().to_vec());
                Ok(node_of(vol, &name, &inode))
            }),
        }
    }

    /// Write the file at `path` inside the image to `out`. Returns its length.
    pub fn dump(&self, path: &Path, out: &mut dyn Write, progress: &dyn Progress) -> Result<u64> {
        let Place::Volume { partition, path: comps } = self.place(path)? else {
            return Err(Error::Invalid("give the path of a file inside the image".into()));
        };
        self.with_volume(partition, progress, |vol| {
            let inode = self.lookup(vol, partition, &comps)?;
            if inode.kind != NodeType::File {
                return Err(Error::Invalid(format!(
                    "{} is a {}, not a file; use `backstop restore --image` for directories",
                    path.display(),
                    inode.kind.as_str()
                )));
            }
            let write_err = |e: std::io::Error| Error::io("output", e);
            let zeros = vec![0u8; PIECE];
            copy_file(vol, &inode, &mut |_, piece| match piece {
                Piece::Data(bytes) => out.write_all(bytes).map_err(write_err),
                Piece::Zeros(mut len) => {
                    while len > 0 {
                        let n = len.min(PIECE as u64) as usize;
                        out.write_all(&zeros[..n]).map_err(write_err)?;
                        len -= n as u64;
                    }
                    Ok(())
                }
            })
            .map_err(|e| self.file_error(partition, e))?;
            out.flush().map_err(write_err)?;
            Ok(inode.size)
        })
    }

    fn file_error(&self, partition: Option<&Partition>, e: CopyError) -> Error {
        match e {
            CopyError::Disk(e) => disk_error(&self.entry, partition, e),
            CopyError::Out(e) => e,
        }
    }
}

/// What stopped copying a file out of an image.
pub(crate) enum CopyError {
    Disk(DiskError),
    Out(Error),
}

impl From<DiskError> for CopyError {
    fn from(e: DiskError) -> CopyError {
        CopyError::Disk(e)
    }
}

impl From<Error> for CopyError {
    fn from(e: Error) -> CopyError {
        CopyError::Out(e)
    }
}

/// Directories deeper than this are not followed (PATH_MAX allows 2048).
const MAX_DEPTH: usize = 2048;

/// Step into directory `dir` below the directories `above` (by inode),
/// unless that makes a loop or goes too deep.
pub(crate) fn enter(above: &mut Vec<u32>, dir: &Inode) -> Result<(), DiskError> {
    if above.contains(&dir.ino) {
        return Err(DiskError::damaged(format!("directory inode {} is its own descendant", dir.ino)));
    }
    if above.len() >= MAX_DEPTH {
        return Err(DiskError::damaged(format!("directories nested deeper than {MAX_DEPTH}")));
    }
    above.push(dir.ino);
    Ok(())
}

/// Bytes read from an image file at a time.
const PIECE: usize = 1 << 20;

/// A piece of a file's content.
pub(crate) enum Piece<'b> {
    Data(&'b [u8]),
    /// Zeros that were never read: a hole or an unwritten extent.
    Zeros(u64),
}

/// Hand the file's content to `put` in order, a piece at a time, each with
/// its offset.
pub(crate) fn copy_file(
    vol: &Volume,
    inode: &Inode,
    put: &mut dyn FnMut(u64, Piece) -> Result<()>,
) -> Result<(), CopyError> {
    let extents = vol.fs.extents(inode)?;
    let mut buf = vec![0u8; PIECE.min(inode.size as usize)];
    let bs = vol.fs.block_size();
    let mut offset = 0u64;
    while offset < inode.size {
        // Zeros known from the extents are never read.
        let block = offset / bs;
        let i = extents.partition_point(|e| e.logical + e.len <= block);
        let data_at = match extents.get(i) {
            _ if vol.fs.is_inline(inode) => offset,
            Some(e) if e.logical <= block && !e.unwritten => offset,
            Some(e) if e.logical <= block => (e.logical + e.len) * bs,
            Some(e) => e.logical * bs,
            None => inode.size,
        }
        .min(inode.size);
        if data_at > offset {
            put(offset, Piece::Zeros(data_at - offset))?;
            offset = data_at;
            continue;
        }
        // Up to the end of this extent, at most a piece.
        let extent_end = extents.get(i).map_or(inode.size, |e| (e.logical + e.len) * bs);
        let n = (extent_end.max(offset + 1).min(inode.size) - offset).min(PIECE as u64) as usize;
        vol.fs.read_file(inode, &extents, offset, &mut buf[..n])?;
        put(offset, Piece::Data(&buf[..n]))?;
        offset += n as u64;
    }
    Ok(())
}

fn join(comps: &[Vec<u8>]) -> PathBuf {
    comps.iter().map(|c| OsStr::from_bytes(c)).collect()
}

/// An error about the image (and partition) as the engine says it.
pub(crate) fn disk_error(entry: &Path, partition: Option<&Partition>, e: DiskError) -> Error {
    let place = match partition {
        Some(p) => format!("{} partition p{} ({})", entry.display(), p.number, p.kind),
        None => entry.display().to_string(),
    };
    match e {
        DiskError::Read(e) => e,
        // The guest's own structures, not the repository's: what was backed
        // up is damaged (or is no disk), and the snapshot is as it was.
        DiskError::Damaged(what) => Error::Invalid(format!("{place}: damaged or not a disk image: {what}")),
        DiskError::Unknown(what) => Error::Invalid(format!(
            "{place}: {what}; files can be listed and restored from ext2, ext3 and ext4 only \
             (restore the whole disk with `--to image:PATH` instead)"
        )),
        e => Error::Invalid(format!("{place}: {e}")),
    }
}

/// A file system's inode as a snapshot node (for listings and restores).
/// A symlink whose target cannot be read gets an empty one.
pub(crate) fn node_of(vol: &Volume, name: &[u8], inode: &Inode) -> Node {
    let data = match inode.kind {
        NodeType::Symlink => NodeData::Symlink { target: vol.fs.read_link(inode).unwrap_or_default() },
        NodeType::BlockDevice | NodeType::CharDevice => NodeData::Device { rdev: inode.rdev() },
        NodeType::File => NodeData::File { content: Vec::new(), partial: false },
        _ => NodeData::Other,
    };
    Node {
        name: name.to_vec(),
        node_type: inode.kind,
        mode: inode.mode,
        uid: inode.uid,
        gid: inode.gid,
        user: Vec::new(),
        group: Vec::new(),
        mtime_ns: inode.mtime_ns,
        atime_ns: inode.atime_ns,
        ctime_ns: inode.ctime_ns,
        device: vol.device,
        inode: inode.ino as u64,
        nlink: inode.links as u64,
        size: if inode.kind == NodeType::Dir { 0 } else { inode.size },
        xattrs: Vec::new(),
        data,
    }
}

/// A partition, listed as a directory of the image.
fn partition_node(p: &Partition) -> Node {
    Node {
        name: format!("p{}", p.number).into_bytes(),
        node_type: NodeType::Dir,
        mode: 0o755,
        uid: 0,
        gid: 0,
        user: Vec::new(),
        group: Vec::new(),
        mtime_ns: 0,
        atime_ns: 0,
        ctime_ns: 0,
        device: p.number as u64,
        inode: 0,
        nlink: 1,
        size: p.len,
        xattrs: Vec::new(),
        data: NodeData::Other,
    }
}
