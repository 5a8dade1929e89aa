//! ext2, ext3 and ext4, read-only: the superblock, group descriptors
//! (also `64bit` and `meta_bg`), inodes, extent trees (unwritten extents
//! read as zeros, as the kernel reads them) and ext2/3 block maps, inline
//! data, directories (htree ones read linearly), symlinks and device
//! numbers. Only what a listing or a file needs is read. The journal is
//! not replayed: an image taken without freezing the guest may show its
//! last changes not yet applied, and [`ExtFs::needs_recovery`] says so.
//!
//! Everything read from the disk is checked before it is used (block
//! numbers against the file system's size, counts against what fits,
//! tree depths, loops); damage is a [`DiskError`], never a panic.

use super::{DiskError, ReadAt, le16, le32};
use crate::tree::NodeType;

const SUPERBLOCK_AT: u64 = 1024;
const MAGIC: u16 = 0xEF53;
pub const ROOT: u32 = 2;

// Incompatible features (s_feature_incompat).
const COMPRESSION: u32 = 0x1;
const FILETYPE: u32 = 0x2;
const RECOVER: u32 = 0x4;
const JOURNAL_DEV: u32 = 0x8;
const META_BG: u32 = 0x10;
const BIT64: u32 = 0x80;
const DIRDATA: u32 = 0x1000;
/// What this reader understands; anything else is refused by name.
const KNOWN_INCOMPAT: u32 =
    FILETYPE | RECOVER | META_BG | 0x40 | BIT64 | 0x100 | 0x200 | 0x400 | 0x2000 | 0x4000 | 0x8000 | 0x10000 | 0x20000;
// Compatible features (s_feature_compat).
const HAS_JOURNAL: u32 = 0x4;
// Read-only compatible features (s_feature_ro_compat).
const SPARSE_SUPER: u32 = 0x1;

// Inode flags.
const ENCRYPT_FL: u32 = 0x800;
const EXTENTS_FL: u32 = 0x80000;
const INLINE_DATA_FL: u32 = 0x1000_0000;

const EXTENT_MAGIC: u16 = 0xF30A;
/// The kernel's limit on extent tree depth.
const MAX_DEPTH: u16 = 5;
/// An extent longer than this is unwritten (its length is `len - 32768`).
const INIT_MAX_LEN: u16 = 32768;

/// An inode, as far as a listing or a restore needs it.
#[derive(Debug, Clone)]
pub struct Inode {
    pub ino: u32,
    pub kind: NodeType,
    /// Permission bits (with setuid, setgid, sticky).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub links: u32,
    pub atime_ns: i64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    flags: u32,
    block: [u8; 60],
    /// The inode's bytes past the first 128 (extended attributes live there).
    extra: Vec<u8>,
}

impl Inode {
    /// A device's number, as `makedev(major, minor)`.
    pub fn rdev(&self) -> u64 {
        let (old, new) = (le32(&self.block, 0), le32(&self.block, 4));
        let (major, minor) = if old != 0 {
            ((old >> 8) & 0xff, old & 0xff)
        } else {
            ((new & 0xfff00) >> 8, (new & 0xff) | ((new >> 12) & 0xfff00))
        };
        libc::makedev(major, minor)
    }
}

/// A piece of a file: `len` blocks from `logical` on lie at `physical`;
/// an unwritten one reads as zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub logical: u64,
    pub physical: u64,
    pub len: u64,
    pub unwritten: bool,
}

/// A directory entry.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: Vec<u8>,
    pub ino: u32,
}

pub struct ExtFs<'a> {
    dev: &'a dyn ReadAt,
    block_size: u64,
    blocks: u64,
    first_data_block: u64,
    blocks_per_group: u64,
    inodes_per_group: u64,
    inodes: u64,
    inode_size: u64,
    desc_size: u64,
    incompat: u32,
    ro_compat: u32,
    first_meta_bg: u64,
    /// The journal's inode (ext3/4 with an internal journal).
    journal_inode: Option<u32>,
    /// ext2, ext3 or ext4, by the features it uses.
    pub flavour: &'static str,
    pub label: String,
}

impl<'a> ExtFs<'a> {
    /// Whether `dev` starts with an ext2/3/4 superblock.
    pub fn probe(dev: &dyn ReadAt) -> Result<bool, DiskError> {
        if dev.size() < SUPERBLOCK_AT + 1024 {
            return Ok(false);
        }
        let mut magic = [0u8; 2];
        dev.read_exact_at(SUPERBLOCK_AT + 0x38, &mut magic)?;
        Ok(u16::from_le_bytes(magic) == MAGIC)
    }

    pub fn open(dev: &'a dyn ReadAt) -> Result<ExtFs<'a>, DiskError> {
        let mut sb = [0u8; 1024];
        if dev.size() < SUPERBLOCK_AT + 1024 {
            return Err(DiskError::Unknown("too small for an ext2/3/4 file system".into()));
        }
        dev.read_exact_at(SUPERBLOCK_AT, &mut sb)?;
        if le16(&sb, 0x38) != MAGIC {
            return Err(DiskError::Unknown("no ext2/3/4 file system (no superblock)".into()));
        }
        let log = le32(&sb, 0x18);
        if log > 6 {
            return Err(DiskError::damaged(format!("superblock: block size 1024 << {log}")));
        }
        let block_size = 1024u64 << log;
        let incompat = le32(&sb, 0x60);
        let ro_compat = le32(&sb, 0x64);
        let compat = le32(&sb, 0x5C);
        let refused = [(COMPRESSION, "compression"), (JOURNAL_DEV, "an external journal device"), (DIRDATA, "dirdata")];
        if let Some((_, what)) = refused.iter().find(|(bit, _)| incompat & bit != 0) {
            return Err(DiskError::Unsupported(format!(
                "the file system uses {what}, which file-level restore does not read"
            )));
        }
        if incompat & !KNOWN_INCOMPAT != 0 {
            return Err(DiskError::Unsupported(format!(
                "the file system uses unknown features (0x{:x})",
                incompat & !KNOWN_INCOMPAT
            )));
        }
        let blocks = le32(&sb, 0x04) as u64 | if incompat & BIT64 != 0 { (le32(&sb, 0x150) as u64) << 32 } else { 0 };
        let first_data_block = le32(&sb, 0x14) as u64;
        let blocks_per_group = le32(&sb, 0x20) as u64;
        let inodes_per_group = le32(&sb, 0x28) as u64;
        let inodes = le32(&sb, 0x00) as u64;
        let rev = le32(&sb, 0x4C);
        let inode_size = if rev == 0 { 128 } else { le16(&sb, 0x58) as u64 };
        let desc_size = if incompat & BIT64 != 0 { le16(&sb, 0xFE) as u64 } else { 32 };
        let fits = blocks.checked_mul(block_size).is_some_and(|bytes| bytes <= dev.size());
        if !fits {
            return Err(DiskError::damaged(format!(
                "superblock: {blocks} blocks of {block_size} bytes do not fit in the {}-byte volume",
                dev.size()
            )));
        }
        if blocks_per_group == 0
            || blocks_per_group > 8 * block_size
            || inodes_per_group == 0
            || inodes_per_group > 8 * block_size
        {
            return Err(DiskError::damaged("superblock: impossible group geometry"));
        }
        if !(128..=block_size).contains(&inode_size) || !inode_size.is_power_of_two() {
            return Err(DiskError::damaged(format!("superblock: inode size {inode_size}")));
        }
        if !(32..=block_size).contains(&desc_size) || !desc_size.is_power_of_two() {
            return Err(DiskError::damaged(format!("superblock: group descriptor size {desc_size}")));
        }
        if first_data_block >= blocks || inodes < ROOT as u64 {
            return Err(DiskError::damaged("superblock: impossible sizes"));
        }
        let flavour = if incompat & (0x40 | BIT64 | 0x200 | 0x8000) != 0 {
            "ext4"
        } else if compat & HAS_JOURNAL != 0 {
            "ext3"
        } else {
            "ext2"
        };
        let label = String::from_utf8_lossy(sb[0x78..0x88].split(|&b| b == 0).next().unwrap_or_default()).into_owned();
        Ok(ExtFs {
            dev,
            block_size,
            blocks,
            first_data_block,
            blocks_per_group,
            inodes_per_group,
            inodes,
            inode_size,
            desc_size,
            incompat,
            ro_compat,
            first_meta_bg: le32(&sb, 0x104) as u64,
            journal_inode: (compat & HAS_JOURNAL != 0 && le32(&sb, 0xE0) != 0).then(|| le32(&sb, 0xE0)),
            flavour,
            label,
        })
    }

    /// The journal holds changes not yet written to their places: the
    /// image was taken from a mounted, unfrozen file system.
    pub fn needs_recovery(&self) -> bool {
        self.incompat & RECOVER != 0
    }

    pub fn block_size(&self) -> u64 {
        self.block_size
    }

    /// Blocks in the file system.
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// The journal's inode, if the journal is internal.
    pub fn journal_inode(&self) -> Option<u32> {
        self.journal_inode
    }

    /// The volume the file system is read from.
    pub fn device(&self) -> &'a dyn ReadAt {
        self.dev
    }

    fn read_block(&self, block: u64, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        if block == 0 || block >= self.blocks || offset + buf.len() as u64 > self.block_size {
            return Err(DiskError::damaged(format!("block {block} is outside the file system")));
        }
        self.dev.read_exact_at(block * self.block_size + offset, buf)
    }

    fn groups(&self) -> u64 {
        (self.blocks - self.first_data_block).div_ceil(self.blocks_per_group)
    }

    /// Whether group `g` begins with a copy of the superblock.
    fn has_superblock(&self, g: u64) -> bool {
        let power_of = |mut n: u64, base: u64| {
            while n > 1 && n.is_multiple_of(base) {
                n /= base;
            }
            n == 1
        };
        self.ro_compat & SPARSE_SUPER == 0 || g <= 1 || power_of(g, 3) || power_of(g, 5) || power_of(g, 7)
    }

    /// The block of group `g`'s descriptor, and its offset in it.
    fn descriptor_at(&self, g: u64) -> (u64, u64) {
        let per_block = self.block_size / self.desc_size;
        let (index, offset) = (g / per_block, (g % per_block) * self.desc_size);
        if self.incompat & META_BG == 0 || index < self.first_meta_bg {
            return (self.first_data_block + 1 + index, offset);
        }
        let first = index * per_block;
        let start = self.first_data_block + first * self.blocks_per_group;
        (start + self.has_superblock(first) as u64, offset)
    }

    pub fn inode(&self, ino: u32) -> Result<Inode, DiskError> {
        if ino == 0 || ino as u64 > self.inodes {
            return Err(DiskError::damaged(format!("inode {ino} does not exist")));
        }
        let index = ino as u64 - 1;
        let group = index / self.inodes_per_group;
        if group >= self.groups() {
            return Err(DiskError::damaged(format!("inode {ino} lies past the last group")));
        }
        let (desc_block, desc_offset) = self.descriptor_at(group);
        let mut desc = [0u8; 64];
        let desc = &mut desc[..self.desc_size.min(64) as usize];
        self.read_block(desc_block, desc_offset, desc)?;
        let table = le32(desc, 0x8) as u64 | if self.desc_size >= 64 { (le32(desc, 0x28) as u64) << 32 } else { 0 };
        let at = (index % self.inodes_per_group) * self.inode_size;
        let (block, offset) = (table + at / self.block_size, at % self.block_size);
        let mut raw = vec![0u8; self.inode_size as usize];
        self.read_block(block, offset, &mut raw)?;
        self.parse_inode(ino, &raw)
    }

    fn parse_inode(&self, ino: u32, raw: &[u8]) -> Result<Inode, DiskError> {
        let mode = le16(raw, 0) as u32;
        let kind = match mode & 0o170000 {
            0o100000 => NodeType::File,
            0o040000 => NodeType::Dir,
            0o120000 => NodeType::Symlink,
            0o060000 => NodeType::BlockDevice,
            0o020000 => NodeType::CharDevice,
            0o010000 => NodeType::Fifo,
            0o140000 => NodeType::Socket,
            _ => return Err(DiskError::damaged(format!("inode {ino} has no valid type (mode {mode:o})"))),
        };
        let extra_isize = if raw.len() > 128 { le16(raw, 0x80) as usize } else { 0 };
        if raw.len() > 128 && 128 + extra_isize > raw.len() {
            return Err(DiskError::damaged(format!("inode {ino}: extra size {extra_isize}")));
        }
        // Seconds (signed 32 bits) with two epoch bits and nanoseconds in
        // the extra field, where the inode is large enough to have one.
        let time = |at: usize, extra_at: usize| {
            let secs = le32(raw, at) as i32 as i64;
            if extra_at + 4 <= 128 + extra_isize {
                let extra = le32(raw, extra_at);
                let secs = secs + (((extra & 3) as i64) << 32);
                secs.saturating_mul(1_000_000_000).saturating_add((extra >> 2) as i64)
            } else {
                secs.saturating_mul(1_000_000_000)
            }
        };
        let size = le32(raw, 0x4) as u64 | (le32(raw, 0x6C) as u64) << 32;
        Ok(Inode {
            ino,
            kind,
            mode: mode & 0o7777,
            uid: le16(raw, 0x2) as u32 | (le16(raw, 0x78) as u32) << 16,
            gid: le16(raw, 0x18) as u32 | (le16(raw, 0x7A) as u32) << 16,
            size,
            links: le16(raw, 0x1A) as u32,
            atime_ns: time(0x8, 0x8C),
            ctime_ns: time(0xC, 0x84),
            mtime_ns: time(0x10, 0x88),
            flags: le32(raw, 0x20),
            block: raw[0x28..0x64].try_into().expect("60 bytes"),
            extra: raw.get(128 + extra_isize..).unwrap_or_default().to_vec(),
        })
    }

    /// The inline data of an inode: the 60 bytes of its block map and the
    /// rest in its `system.data` extended attribute.
    fn inline_data(&self, inode: &Inode) -> Result<Vec<u8>, DiskError> {
        let mut data = inode.block.to_vec();
        if let Some(more) = ibody_xattr(&inode.extra, 7, b"data") {
            data.extend_from_slice(more);
        }
        Ok(data)
    }

    /// Whether the inode's data lies in the inode itself.
    pub fn is_inline(&self, inode: &Inode) -> bool {
        inode.flags & INLINE_DATA_FL != 0
    }

    /// The extents of a file, directory or slow symlink, in logical order;
    /// holes are where none lies. Block maps (ext2/3) become extents too.
    pub fn extents(&self, inode: &Inode) -> Result<Vec<Extent>, DiskError> {
        if inode.flags & ENCRYPT_FL != 0 && inode.kind == NodeType::File {
            return Err(DiskError::Unsupported("the file is encrypted (fscrypt)".into()));
        }
        let blocks = inode.size.div_ceil(self.block_size);
        let mut out = Vec::new();
        if self.is_inline(inode) {
            return Ok(out);
        }
        if inode.flags & EXTENTS_FL != 0 {
            // A tree names no block twice: more reads than the file system
            // has blocks means its nodes point at each other.
            let mut budget = self.blocks;
            self.extent_node(inode, &inode.block, None, blocks, &mut budget, &mut out)?;
            out.sort_by_key(|e| e.logical);
            if out.windows(2).any(|w| w[0].logical + w[0].len > w[1].logical) {
                return Err(DiskError::damaged(format!("inode {}: extents overlap", inode.ino)));
            }
        } else {
            let mut mapper = BlockMap { fs: self, ino: inode.ino, limit: blocks, budget: self.blocks, out: &mut out };
            // Twelve direct blocks, then one indirect, double and triple block.
            let mut logical = 0u64;
            for i in 0..15 {
                mapper.map((i as u32).saturating_sub(11), le32(&inode.block, i * 4), &mut logical)?;
            }
        }
        Ok(out)
    }

    /// The extents below the node `node` (the inode's 60 bytes or a tree block).
    fn extent_node(
        &self,
        inode: &Inode,
        node: &[u8],
        depth: Option<u16>,
        blocks: u64,
        budget: &mut u64,
        out: &mut Vec<Extent>,
    ) -> Result<(), DiskError> {
        let bad = |what: &str| DiskError::damaged(format!("inode {}: extent tree: {what}", inode.ino));
        if node.len() < 12 || le16(node, 0) != EXTENT_MAGIC {
            return Err(bad("bad header"));
        }
        let (entries, max, here) = (le16(node, 2) as usize, le16(node, 4) as usize, le16(node, 6));
        if entries > max || 12 + 12 * max > node.len() || here > MAX_DEPTH || depth.is_some_and(|d| d != here) {
            return Err(bad("bad header"));
        }
        for e in node[12..12 + 12 * entries].chunks_exact(12) {
            let logical = le32(e, 0) as u64;
            if here == 0 {
                let raw_len = le16(e, 4);
                let (len, unwritten) = if raw_len > INIT_MAX_LEN {
                    ((raw_len - INIT_MAX_LEN) as u64, true)
                } else {
                    (raw_len as u64, false)
                };
                let physical = le32(e, 8) as u64 | (le16(e, 6) as u64) << 32;
                if len == 0 || physical == 0 || physical + len > self.blocks {
                    return Err(bad("an extent lies outside the file system"));
                }
                // Blocks past the file's size (preallocated) are never read.
                if logical < blocks {
                    out.push(Extent { logical, physical, len: len.min(blocks - logical), unwritten });
                }
                if out.len() as u64 > blocks {
                    return Err(bad("more extents than blocks"));
                }
            } else {
                let child = le32(e, 4) as u64 | (le16(e, 8) as u64) << 32;
                *budget = budget.checked_sub(1).ok_or_else(|| bad("its nodes loop"))?;
                let mut block = vec![0u8; self.block_size as usize];
                self.read_block(child, 0, &mut block)?;
                self.extent_node(inode, &block, Some(here - 1), blocks, budget, out)?;
            }
        }
        Ok(())
    }

    /// Read `buf.len()` bytes of the file at `offset` (within its size),
    /// through its extents; holes and unwritten extents read as zeros.
    pub fn read_file(&self, inode: &Inode, extents: &[Extent], offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        if offset + buf.len() as u64 > inode.size {
            return Err(DiskError::damaged(format!("inode {}: read past its end", inode.ino)));
        }
        if inode.flags & INLINE_DATA_FL != 0 {
            let data = self.inline_data(inode)?;
            let src = data
                .get(offset as usize..offset as usize + buf.len())
                .ok_or_else(|| DiskError::damaged(format!("inode {}: inline data shorter than its size", inode.ino)))?;
            buf.copy_from_slice(src);
            return Ok(());
        }
        let bs = self.block_size;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let block = pos / bs;
            let in_block = pos % bs;
            let i = extents.partition_point(|e| e.logical + e.len <= block);
            match extents.get(i).filter(|e| e.logical <= block) {
                Some(e) => {
                    // As much of this extent as the buffer wants, in one read.
                    let end = ((e.logical + e.len) * bs).min(offset + buf.len() as u64);
                    let n = (end - pos) as usize;
                    let out = &mut buf[done..done + n];
                    if e.unwritten {
                        out.fill(0);
                    } else {
                        let at = (e.physical + (block - e.logical)) * bs + in_block;
                        self.dev.read_exact_at(at, out)?;
                    }
                    done += n;
                }
                None => {
                    // A hole, up to the next extent.
                    let next = extents.get(i).map_or(u64::MAX, |e| e.logical * bs);
                    let n = (next.min(offset + buf.len() as u64) - pos) as usize;
                    buf[done..done + n].fill(0);
                    done += n;
                }
            }
        }
        Ok(())
    }

    /// A symlink's target.
    pub fn read_link(&self, inode: &Inode) -> Result<Vec<u8>, DiskError> {
        if inode.size > 4096 {
            return Err(DiskError::damaged(format!("inode {}: a symlink of {} bytes", inode.ino, inode.size)));
        }
        if inode.flags & ENCRYPT_FL != 0 {
            return Err(DiskError::Unsupported("the symlink is encrypted (fscrypt)".into()));
        }
        let mut target = vec![0u8; inode.size as usize];
        if inode.size < 60 && inode.flags & (EXTENTS_FL | INLINE_DATA_FL) == 0 {
            target.copy_from_slice(&inode.block[..inode.size as usize]);
        } else {
            let extents = self.extents(inode)?;
            self.read_file(inode, &extents, 0, &mut target)?;
        }
        Ok(target)
    }

    /// The entries of a directory, but `.` and `..`.
    pub fn read_dir(&self, dir: &Inode) -> Result<Vec<Entry>, DiskError> {
        if dir.kind != NodeType::Dir {
            return Err(DiskError::NotADirectory);
        }
        if dir.flags & ENCRYPT_FL != 0 {
            return Err(DiskError::Unsupported("the directory is encrypted (fscrypt)".into()));
        }
        if dir.size > 1 << 32 {
            return Err(DiskError::damaged(format!("inode {}: a directory of {} bytes", dir.ino, dir.size)));
        }
        let mut out = Vec::new();
        if dir.flags & INLINE_DATA_FL != 0 {
            // The parent's number, then entries; then more in the attribute.
            let data = self.inline_data(dir)?;
            self.dirents(dir, &data[4..60], &mut out)?;
            if data.len() > 60 {
                self.dirents(dir, &data[60..], &mut out)?;
            }
            return Ok(out);
        }
        let extents = self.extents(dir)?;
        let mut block = vec![0u8; self.block_size as usize];
        let mut offset = 0;
        while offset < dir.size {
            let n = (dir.size - offset).min(self.block_size) as usize;
            self.read_file(dir, &extents, offset, &mut block[..n])?;
            self.dirents(dir, &block[..n], &mut out)?;
            offset += n as u64;
        }
        Ok(out)
    }

    fn dirents(&self, dir: &Inode, mut data: &[u8], out: &mut Vec<Entry>) -> Result<(), DiskError> {
        while data.len() >= 8 {
            let ino = le32(data, 0);
            let rec_len = le16(data, 4) as usize;
            let name_len = if self.incompat & FILETYPE != 0 { data[6] as usize } else { le16(data, 6) as usize };
            if rec_len < 8 || rec_len > data.len() || !rec_len.is_multiple_of(4) || 8 + name_len > rec_len {
                return Err(DiskError::damaged(format!("directory inode {}: a damaged entry", dir.ino)));
            }
            let name = &data[8..8 + name_len];
            if ino != 0 && name != b"." && name != b".." {
                out.push(Entry { name: name.to_vec(), ino });
            }
            data = &data[rec_len..];
        }
        Ok(())
    }

    /// The inode at `path` (components below the root), following no
    /// symlink: one in the way is an error that names it.
    pub fn lookup(&self, path: &[&[u8]]) -> Result<Inode, DiskError> {
        let mut inode = self.inode(ROOT)?;
        for (i, name) in path.iter().enumerate() {
            if inode.kind == NodeType::Symlink {
                return Err(DiskError::Symlink(
                    path[..i].iter().map(|c| String::from_utf8_lossy(c)).collect::<Vec<_>>().join("/"),
                ));
            }
            if inode.kind != NodeType::Dir {
                return Err(DiskError::NotADirectory);
            }
            let entry = self.read_dir(&inode)?.into_iter().find(|e| e.name == *name).ok_or(DiskError::NotFound)?;
            inode = self.inode(entry.ino)?;
        }
        Ok(inode)
    }
}

/// An extended attribute stored in the inode's body: `(index, name)`'s value.
fn ibody_xattr<'b>(extra: &'b [u8], index: u8, name: &[u8]) -> Option<&'b [u8]> {
    if extra.len() < 4 || le32(extra, 0) != 0xEA02_0000 {
        return None;
    }
    let entries = &extra[4..];
    let mut at = 0usize;
    while at + 16 <= entries.len() && le32(entries, at) != 0 {
        let name_len = entries[at] as usize;
        let e_index = entries[at + 1];
        let value_offs = le16(entries, at + 2) as usize;
        let value_size = le32(entries, at + 8) as usize;
        let e_name = entries.get(at + 16..at + 16 + name_len)?;
        if e_index == index && e_name == name {
            return entries.get(value_offs..value_offs.checked_add(value_size)?);
        }
        at += (16 + name_len).div_ceil(4) * 4;
    }
    None
}

/// Turns an ext2/3 block map into extents.
struct BlockMap<'f, 'a> {
    fs: &'f ExtFs<'a>,
    ino: u32,
    /// The file's length in blocks: nothing past it is read.
    limit: u64,
    /// Blocks it may still name: a map that names more than the file
    /// system has is damaged (and would take forever to follow).
    budget: u64,
    out: &'f mut Vec<Extent>,
}

impl BlockMap<'_, '_> {
    /// Map the block `ptr` of indirection `level` (0: a data block)
    /// covering the blocks from `*logical` on.
    fn map(&mut self, level: u32, ptr: u32, logical: &mut u64) -> Result<(), DiskError> {
        let per = self.fs.block_size / 4;
        let span = per.pow(level);
        if *logical >= self.limit {
            return Ok(());
        }
        if ptr == 0 {
            *logical += span;
            return Ok(());
        }
        let ptr = ptr as u64;
        self.budget = self.budget.checked_sub(1).ok_or_else(|| {
            DiskError::damaged(format!("inode {}: block map names more blocks than the file system has", self.ino))
        })?;
        if ptr >= self.fs.blocks {
            return Err(DiskError::damaged(format!("inode {}: block map points outside the file system", self.ino)));
        }
        if level == 0 {
            match self.out.last_mut() {
                Some(e) if !e.unwritten && e.logical + e.len == *logical && e.physical + e.len == ptr => e.len += 1,
                _ => self.out.push(Extent { logical: *logical, physical: ptr, len: 1, unwritten: false }),
            }
            *logical += 1;
            return Ok(());
        }
        let mut block = vec![0u8; self.fs.block_size as usize];
        self.fs.read_block(ptr, 0, &mut block)?;
        for i in 0..per as usize {
            self.map(level - 1, le32(&block, i * 4), logical)?;
            if *logical >= self.limit {
                break;
            }
        }
        Ok(())
    }
}
