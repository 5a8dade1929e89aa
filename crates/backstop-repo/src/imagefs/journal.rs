//! The ext3/4 journal (JBD2), replayed in memory: a disk captured while
//! its file system was mounted and not frozen holds committed
//! transactions whose blocks are not yet in their places. Reading it as
//! the kernel's recovery would: the log is scanned from its start for
//! complete transactions (descriptor blocks naming where each following
//! block belongs, revoke blocks, a commit block ending each), and the
//! newest copy of each block not revoked by its own or a later
//! transaction is read instead of the block in place ([`Replayed`]).
//! Nothing is written. A transaction without its commit block is not
//! applied, as the kernel would not apply it.

use std::collections::HashMap;

use super::ext::ExtFs;
use super::{DiskError, ReadAt};

const MAGIC: u32 = 0xC03B_3998;
const DESCRIPTOR: u32 = 1;
const COMMIT: u32 = 2;
const SUPERBLOCK_V1: u32 = 3;
const SUPERBLOCK_V2: u32 = 4;
const REVOKE: u32 = 5;

// Incompatible features of the journal.
const FEATURE_REVOKE: u32 = 0x1;
const FEATURE_64BIT: u32 = 0x2;
const FEATURE_ASYNC_COMMIT: u32 = 0x4;
const FEATURE_CSUM_V2: u32 = 0x8;
const FEATURE_CSUM_V3: u32 = 0x10;
const FEATURE_FAST_COMMIT: u32 = 0x20;
const KNOWN: u32 =
    FEATURE_REVOKE | FEATURE_64BIT | FEATURE_ASYNC_COMMIT | FEATURE_CSUM_V2 | FEATURE_CSUM_V3 | FEATURE_FAST_COMMIT;

// Tag flags.
const TAG_ESCAPE: u32 = 0x1;
const TAG_SAME_UUID: u32 = 0x2;
const TAG_LAST: u32 = 0x8;

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// A journaled block: where it belongs (a file system block), where its
/// copy lies on the volume (bytes), whether its first four bytes were escaped.
type Logged = (u64, u64, bool);

/// What a replay applied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    pub transactions: u64,
    pub blocks: u64,
}

/// Where the newest committed copy of each journaled block lies on the
/// volume (in bytes), and whether its first four bytes were escaped.
pub struct Journal {
    blocks: HashMap<u64, (u64, bool)>,
    pub applied: Applied,
}

impl Journal {
    /// Read the journal of `fs` (whose superblock says it needs recovery).
    pub fn read(fs: &ExtFs) -> Result<Journal, DiskError> {
        let bad = |what: String| DiskError::damaged(format!("journal: {what}"));
        let ino = fs
            .journal_inode()
            .ok_or_else(|| bad("the file system names no journal inode (an external journal?)".into()))?;
        let inode = fs.inode(ino)?;
        let extents = fs.extents(&inode)?;
        let bs = fs.block_size();
        // Journal block n as a byte offset on the volume.
        let place = |n: u64| -> Result<u64, DiskError> {
            let i = extents.partition_point(|e| e.logical + e.len <= n);
            match extents.get(i) {
                Some(e) if e.logical <= n && !e.unwritten => Ok((e.physical + n - e.logical) * bs),
                _ => Err(bad(format!("block {n} of the journal is not mapped"))),
            }
        };
        let dev = fs.device();
        let read = |n: u64, buf: &mut [u8]| -> Result<(), DiskError> { dev.read_exact_at(place(n)?, buf) };

        let mut sb = vec![0u8; bs as usize];
        read(0, &mut sb)?;
        if be32(&sb, 0) != MAGIC || !matches!(be32(&sb, 4), SUPERBLOCK_V1 | SUPERBLOCK_V2) {
            return Err(bad("no journal superblock".into()));
        }
        if be32(&sb, 0xC) as u64 != bs {
            return Err(bad(format!("block size {} differs from the file system's {bs}", be32(&sb, 0xC))));
        }
        let (maxlen, first, mut sequence, start) =
            (be32(&sb, 0x10) as u64, be32(&sb, 0x14) as u64, be32(&sb, 0x18), be32(&sb, 0x1C) as u64);
        let incompat = if be32(&sb, 4) == SUPERBLOCK_V2 { be32(&sb, 0x28) } else { 0 };
        if incompat & !KNOWN != 0 {
            return Err(DiskError::Unsupported(format!(
                "the journal uses unknown features (0x{:x})",
                incompat & !KNOWN
            )));
        }
        if maxlen > inode.size / bs || first == 0 || first >= maxlen {
            return Err(bad(format!("impossible geometry (first {first}, length {maxlen})")));
        }
        let mut journal = Journal { blocks: HashMap::new(), applied: Applied::default() };
        if start == 0 {
            return Ok(journal);
        }
        if start < first || start >= maxlen {
            return Err(bad(format!("its log starts at {start}, outside {first}..{maxlen}")));
        }
        let next = |n: u64| if n + 1 >= maxlen { first } else { n + 1 };
        let tag_bytes = if incompat & FEATURE_CSUM_V3 != 0 {
            16
        } else {
            let mut size = 12;
            if incompat & FEATURE_CSUM_V2 != 0 {
                size += 2;
            }
            if incompat & FEATURE_64BIT == 0 {
                size -= 4;
            }
            size
        };
        let tail = if incompat & (FEATURE_CSUM_V2 | FEATURE_CSUM_V3) != 0 { 4 } else { 0 };
        let record = if incompat & FEATURE_64BIT != 0 { 8 } else { 4 };

        // Scan: committed transactions, in order, and revocations.
        let mut committed: Vec<(u32, Vec<Logged>)> = Vec::new();
        let mut pending: Vec<Logged> = Vec::new();
        let mut revoked: HashMap<u64, u32> = HashMap::new();
        let mut pending_revokes: Vec<u64> = Vec::new();
        let mut at = start;
        let mut block = vec![0u8; bs as usize];
        // A log is at most the journal long; a loop past that is damage.
        let mut budget = maxlen;
        loop {
            budget = budget.checked_sub(1).ok_or_else(|| bad("the log runs in circles".into()))?;
            read(at, &mut block)?;
            if be32(&block, 0) != MAGIC || be32(&block, 8) != sequence {
                break;
            }
            match be32(&block, 4) {
                DESCRIPTOR => {
                    let mut off = 12usize;
                    loop {
                        if off + tag_bytes > block.len() - tail {
                            break;
                        }
                        let low = be32(&block, off) as u64;
                        let (flags, high) = if tag_bytes == 16 {
                            (be32(&block, off + 4), be32(&block, off + 8) as u64)
                        } else {
                            let high = if incompat & FEATURE_64BIT != 0 { be32(&block, off + 8) as u64 } else { 0 };
                            (be16(&block, off + 6) as u32, high)
                        };
                        at = next(at);
                        budget = budget.checked_sub(1).ok_or_else(|| bad("the log runs in circles".into()))?;
                        let target = high << 32 | low;
                        if target >= fs.blocks() {
                            return Err(bad(format!("a journaled block {target} lies outside the file system")));
                        }
                        pending.push((target, place(at)?, flags & TAG_ESCAPE != 0));
                        off += tag_bytes;
                        if flags & TAG_SAME_UUID == 0 {
                            off += 16;
                        }
                        if flags & TAG_LAST != 0 {
                            break;
                        }
                    }
                }
                COMMIT => {
                    committed.push((sequence, std::mem::take(&mut pending)));
                    for b in pending_revokes.drain(..) {
                        let seq = revoked.entry(b).or_insert(sequence);
                        *seq = (*seq).max(sequence);
                    }
                    sequence = sequence.wrapping_add(1);
                }
                REVOKE => {
                    let count = (be32(&block, 12) as usize).min(block.len() - tail);
                    let mut off = 16;
                    while off + record <= count {
                        let b = if record == 8 {
                            (be32(&block, off) as u64) << 32 | be32(&block, off + 4) as u64
                        } else {
                            be32(&block, off) as u64
                        };
                        pending_revokes.push(b);
                        off += record;
                    }
                }
                _ => break,
            }
            at = next(at);
        }
        // Replay: the newest copy of each block, unless revoked by its own
        // transaction or a later one.
        for (seq, blocks) in committed {
            journal.applied.transactions += 1;
            for (target, location, escaped) in blocks {
                if revoked.get(&target).is_some_and(|&r| r >= seq) {
                    continue;
                }
                journal.blocks.insert(target, (location, escaped));
            }
        }
        journal.applied.blocks = journal.blocks.len() as u64;
        Ok(journal)
    }
}

/// A volume read with its journal replayed.
pub struct Replayed<'a> {
    pub dev: &'a dyn ReadAt,
    pub block_size: u64,
    pub journal: &'a Journal,
}

impl ReadAt for Replayed<'_> {
    fn size(&self) -> u64 {
        self.dev.size()
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        let bs = self.block_size;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let (block, within) = (pos / bs, pos % bs);
            let n = ((bs - within) as usize).min(buf.len() - done);
            let out = &mut buf[done..done + n];
            match self.journal.blocks.get(&block) {
                Some(&(at, escaped)) => {
                    self.dev.read_exact_at(at + within, out)?;
                    // An escaped block began with the journal's magic number.
                    if escaped && within < 4 {
                        let magic = MAGIC.to_be_bytes();
                        for (i, byte) in out.iter_mut().enumerate().take(4 - within as usize) {
                            *byte = magic[within as usize + i];
                        }
                    }
                }
                None => self.dev.read_exact_at(pos, out)?,
            }
            done += n;
        }
        Ok(())
    }
}
