//! Building a pack in a local staging file, so a 32 MiB pack costs no
//! memory and a local repository receives it by a rename.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::sync::Arc;

use backstop_backend::{Dir, Links};

use super::{BlobKind, PackEntry, seal_header};
use crate::crypto::Sealer;
use crate::id::{BlobId, PackId};

pub struct PackWriter {
    kind: BlobKind,
    /// The staging file: its directory and name (empty once finished).
    dir: Arc<Dir>,
    name: OsString,
    file: Option<BufWriter<File>>,
    hasher: blake3::Hasher,
    entries: Vec<(PackEntry, u32)>,
    size: u64,
    /// Start writing the file to disk while it grows (see [`PackWriter::write_behind`]).
    write_behind: bool,
    /// Bytes already handed to the disk by `write_behind`.
    written_behind: u64,
}

/// With write-behind, the disk is told to start writing every this many bytes.
const WRITE_BEHIND_STEP: u64 = 4 << 20;

/// A complete pack file waiting to be uploaded. Its file is removed when
/// this is dropped, unless `upload` consumed it.
#[derive(Debug)]
pub struct FinishedPack {
    pub id: PackId,
    pub kind: BlobKind,
    /// The staging file, by directory handle and name.
    pub dir: Arc<Dir>,
    pub name: OsString,
    pub size: u64,
    /// Each blob with its offset in the pack.
    pub blobs: Vec<(PackEntry, u32)>,
}

impl FinishedPack {
    /// The pack's bytes, read from its staging file.
    pub fn read(&self) -> io::Result<Vec<u8>> {
        let mut file = self.dir.open_file(Path::new(&self.name), libc::O_RDONLY, 0, Links::Refuse)?;
        let mut bytes = Vec::with_capacity(self.size as usize);
        io::Read::read_to_end(&mut file, &mut bytes)?;
        Ok(bytes)
    }
}

impl Drop for FinishedPack {
    fn drop(&mut self) {
        let _ = self.dir.remove_at(&self.name);
    }
}

impl PackWriter {
    /// A new staging file in `dir` (created, never through a link).
    pub fn create(dir: &Arc<Dir>, kind: BlobKind) -> io::Result<PackWriter> {
        let name = OsString::from(format!("{}.pack.tmp", crate::id::SessionId::random().to_hex()));
        let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL;
        let file = dir.open_file(Path::new(&name), flags, 0o600, Links::Refuse)?;
        Ok(PackWriter {
            kind,
            dir: dir.clone(),
            name,
            file: Some(BufWriter::with_capacity(256 << 10, file)),
            hasher: blake3::Hasher::new(),
            entries: Vec::new(),
            size: 0,
            write_behind: false,
            written_behind: 0,
        })
    }

    /// Have the kernel start writing the file to disk as it grows, for a
    /// staging file that becomes the stored pack (a local repository): the
    /// fsync before it is placed then waits for little, instead of for the
    /// whole pack. Pointless for packs that are uploaded and deleted.
    pub fn write_behind(mut self, on: bool) -> PackWriter {
        self.write_behind = on;
        self
    }

    pub fn kind(&self) -> BlobKind {
        self.kind
    }

    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Append a sealed blob; returns its offset.
    pub fn add(&mut self, id: BlobId, sealed: &[u8], raw_len: u32) -> io::Result<u32> {
        let offset = u32::try_from(self.size).map_err(|_| io::Error::other("pack exceeds 4 GiB"))?;
        let stored_len = u32::try_from(sealed.len()).map_err(|_| io::Error::other("blob exceeds 4 GiB"))?;
        self.file.as_mut().expect("open until finished").write_all(sealed)?;
        self.hasher.update(sealed);
        self.size += sealed.len() as u64;
        self.entries.push((PackEntry { kind: self.kind, id, stored_len, raw_len }, offset));
        if self.write_behind && self.size - self.written_behind >= WRITE_BEHIND_STEP {
            let file = self.file.as_mut().expect("open until finished");
            file.flush()?;
            crate::sys::start_writeback(file.get_ref(), self.written_behind, self.size - self.written_behind);
            self.written_behind = self.size;
        }
        Ok(offset)
    }

    /// Write the header and close the file.
    pub fn finish(mut self, sealer: &Sealer) -> io::Result<FinishedPack> {
        let entries: Vec<PackEntry> = self.entries.iter().map(|(e, _)| *e).collect();
        let tail = seal_header(sealer, &entries);
        let mut file = self.file.take().expect("open until finished");
        file.write_all(&tail)?;
        file.flush()?;
        drop(file);
        self.hasher.update(&tail);
        let size = self.size + tail.len() as u64;
        Ok(FinishedPack {
            id: PackId(*self.hasher.finalize().as_bytes()),
            kind: self.kind,
            dir: self.dir.clone(),
            name: std::mem::take(&mut self.name),
            size,
            blobs: std::mem::take(&mut self.entries),
        })
    }
}

impl Drop for PackWriter {
    fn drop(&mut self) {
        if !self.name.is_empty() {
            self.file.take();
            let _ = self.dir.remove_at(&self.name);
        }
    }
}
