//! What packagers hand the engine: a tree of entries that are not files
//! on this machine's file system — streams (a dump's or a command's
//! output), bytes (manifests) and block images (disks, with an optional
//! changed-block map).
//!
//! Every entry of a [`SourceTree`] must be read completely: a stream that
//! fails (a dump tool exits non-zero) fails the backup, and no snapshot is
//! written without it.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::sys;

/// Opens a stream when a reader gets to it, so that a packager's dump
/// processes start one reader at a time rather than all at once.
pub type StreamOpener = Box<dyn FnOnce() -> std::io::Result<Box<dyn Read + Send>> + Send>;

/// Takes a source's point in time once the parent snapshot is known: called
/// with the image generations the parent recorded (entry path →
/// generation; empty without a parent), the backup's cancellation and its
/// log (for what the capture has to say, also when it fails), it returns
/// the entries. A running VM's disks are captured this way: whether its
/// hypervisor copies only what changed depends on the parent.
pub type Capture = Box<
    dyn FnOnce(
            &std::collections::BTreeMap<String, String>,
            &crate::progress::CancelToken,
            &dyn crate::progress::Progress,
        ) -> std::io::Result<Vec<SourceEntry>>
        + Send,
>;

/// A packager's output, backed up as one snapshot of kind `Source`.
pub struct SourceTree {
    /// The packager (`image`, `postgres`, …), recorded in the snapshot.
    pub kind: String,
    /// What was backed up, without secrets (`postgres://db1/app`): the
    /// snapshot's path, and with the host what makes two backups the same
    /// source (the newer one's parent is the older one).
    pub label: String,
    pub entries: Vec<SourceEntry>,
    /// Fixed chunk size for image entries (a power of two, 4 KiB–16 MiB).
    pub image_chunk_size: usize,
    /// What the packager wants said in the backup's log (parts of the
    /// source it left out, and why).
    pub notes: Vec<String>,
    /// Entries taken only after the parent is found (`entries` is then
    /// empty), see [`Capture`].
    pub capture: Option<Capture>,
}

pub struct SourceEntry {
    /// `/`-separated path in the snapshot's tree (`db/app.dump`); directories
    /// on the way are created.
    pub path: String,
    /// Permission bits recorded for the entry.
    pub mode: u32,
    pub data: EntryData,
}

pub enum EntryData {
    Bytes(Vec<u8>),
    Stream(StreamOpener),
    Image(Arc<dyn BlockImage>),
}

/// A block-addressed image: a disk as the guest sees it.
pub trait BlockImage: Send + Sync {
    /// Virtual size in bytes.
    fn size(&self) -> u64;
    /// Read at `offset`; reads past the end return 0 bytes.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize>;
    /// `(start, end)` ranges that may hold data, sorted; the rest reads as
    /// zeros and is never read.
    fn data_extents(&self) -> std::io::Result<Vec<(u64, u64)>>;
    /// `(start, end)` ranges about to be read, scattered: start fetching
    /// them all now (a changed-block incremental would otherwise wait for
    /// one random read at a time).
    fn will_need(&self, _ranges: &[(u64, u64)]) {}
    /// What changed since an earlier generation, if the hypervisor said.
    fn changes(&self) -> Option<&ChangeMap> {
        None
    }
    /// The image's changed-block generation now, recorded in the snapshot.
    fn generation(&self) -> Option<String> {
        self.changes().map(|c| c.generation.clone())
    }
}

/// A changed-block map: the extents written between two generations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeMap {
    pub generation: String,
    pub parent_generation: String,
    /// `(offset, length)` of each changed extent.
    pub extents: Vec<(u64, u64)>,
}

/// A raw image: a regular file (holes found with `SEEK_DATA`) or a block
/// device (its whole size).
pub struct RawImage {
    file: File,
    path: PathBuf,
    size: u64,
    sparse: bool,
    changes: Option<ChangeMap>,
    generation: Option<String>,
}

impl RawImage {
    pub fn open(path: &Path) -> std::io::Result<RawImage> {
        RawImage::from_file(sys::open_read(path)?, path)
    }

    /// The image in `file`, already open for reading (`path` for messages).
    pub fn from_file(file: File, path: &Path) -> std::io::Result<RawImage> {
        let st = sys::fstat(&file)?;
        let size = match st.file_type() {
            libc::S_IFREG => st.size,
            libc::S_IFBLK => {
                let mut f = &file;
                std::io::Seek::seek(&mut f, std::io::SeekFrom::End(0))?
            }
            _ => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("{} is neither a regular file nor a block device", path.display()),
                ));
            }
        };
        Ok(RawImage { file, path: path.to_path_buf(), size, sparse: st.is_sparse(), changes: None, generation: None })
    }

    /// Attach a changed-block map.
    pub fn with_changes(mut self, changes: Option<ChangeMap>) -> RawImage {
        self.changes = changes;
        self
    }

    /// Record `generation` as the image's generation when no map says.
    pub fn with_generation(mut self, generation: Option<String>) -> RawImage {
        self.generation = generation;
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl BlockImage for RawImage {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        self.file.read_at(buf, offset)
    }

    fn data_extents(&self) -> std::io::Result<Vec<(u64, u64)>> {
        if self.sparse { sys::data_extents(&self.file, self.size) } else { Ok(vec![(0, self.size)]) }
    }

    fn will_need(&self, ranges: &[(u64, u64)]) {
        will_need(&self.file, ranges);
    }

    fn changes(&self) -> Option<&ChangeMap> {
        self.changes.as_ref()
    }

    fn generation(&self) -> Option<String> {
        self.changes.as_ref().map(|c| c.generation.clone()).or_else(|| self.generation.clone())
    }
}

/// Ask the kernel to start reading `ranges` of `file` (`POSIX_FADV_WILLNEED`),
/// and to read nothing else ahead (`POSIX_FADV_RANDOM`): readahead past a
/// range would read holes, or blocks that did not change.
pub fn will_need(file: &File, ranges: &[(u64, u64)]) {
    use std::os::fd::AsRawFd;
    // SAFETY: advice on an open descriptor; failure only loses the hint.
    unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) };
    for &(start, end) in ranges {
        // SAFETY: advice on an open descriptor; failure only loses the hint.
        unsafe {
            libc::posix_fadvise(
                file.as_raw_fd(),
                start as i64,
                end.saturating_sub(start) as i64,
                libc::POSIX_FADV_WILLNEED,
            )
        };
    }
}

/// Read until `buf` is full or the image ends.
pub fn read_full_at(image: &dyn BlockImage, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match image.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Whether `path` is a valid entry path: `/`-separated valid names.
pub(crate) fn valid_entry_path(path: &str) -> bool {
    !path.is_empty() && path.split('/').all(|c| crate::tree::valid_name(c.as_bytes()))
}

/// Disk image files by extension: block-addressed content, so fixed-size
/// chunks keep scattered writes cheap (docs/decisions/0004).
pub fn is_disk_image(name: &[u8]) -> bool {
    let lower = name.to_ascii_lowercase();
    [&b".raw"[..], b".img", b".qcow2", b".vmdk", b".vdi", b".vhd", b".vhdx"].iter().any(|ext| lower.ends_with(ext))
}
