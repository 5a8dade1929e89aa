//! Content-defined chunking (keyed FastCDC) for files and streams, and the
//! helpers shared with fixed-size chunking (`docs/format.md` §4).

use std::io::{self, Read};

use serde::{Deserialize, Serialize};

/// Chunk size bounds of the content-defined chunker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CdcParams {
    pub min: u32,
    pub avg: u32,
    pub max: u32,
}

impl Default for CdcParams {
    fn default() -> Self {
        CdcParams { min: 256 << 10, avg: 1 << 20, max: 4 << 20 }
    }
}

impl CdcParams {
    pub fn check(&self) -> Result<(), String> {
        let ok = self.avg.is_power_of_two()
            && (64..=1 << 26).contains(&self.avg)
            && self.min >= 64
            && self.min < self.avg
            && self.avg < self.max
            && self.max <= 64 << 20;
        if ok { Ok(()) } else { Err(format!("invalid chunker parameters {self:?}")) }
    }
}

/// FastCDC with normalised chunking (level 2) and a gear table derived from
/// the repository key, so that chunk boundaries reveal nothing about content
/// to someone without the key.
pub struct Cdc {
    gear: Box<[u64; 256]>,
    min: usize,
    avg: usize,
    max: usize,
    /// Harder mask before the average size, easier after it.
    mask_small: u64,
    mask_large: u64,
}

impl std::fmt::Debug for Cdc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cdc").field("min", &self.min).field("avg", &self.avg).field("max", &self.max).finish()
    }
}

impl Cdc {
    pub fn new(gear_key: &[u8; 32], params: CdcParams) -> Cdc {
        let mut xof = blake3::Hasher::new_keyed(gear_key).finalize_xof();
        let mut bytes = [0u8; 256 * 8];
        xof.fill(&mut bytes);
        let mut gear = Box::new([0u64; 256]);
        for (i, g) in gear.iter_mut().enumerate() {
            *g = u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        }
        let bits = params.avg.trailing_zeros();
        let top = |n: u32| !0u64 << (64 - n);
        Cdc {
            gear,
            min: params.min as usize,
            avg: params.avg as usize,
            max: params.max as usize,
            mask_small: top(bits + 2),
            mask_large: top(bits - 2),
        }
    }

    pub fn max_size(&self) -> usize {
        self.max
    }

    /// The length of the first chunk of `data`, taken as the whole rest of
    /// the stream when shorter than `max_size()`.
    pub fn cut(&self, data: &[u8]) -> usize {
        self.find(data, &mut CutScan::default()).unwrap_or(data.len().min(self.max))
    }

    /// The length of the first chunk of `data` if `data` decides it: a cut
    /// point, or `max_size()` bytes without one. `None` means more bytes
    /// are needed (or, at the end of the stream, that all of `data` is the
    /// chunk). Only the bytes after `state` are scanned, so a caller
    /// appending to `data` between calls scans each byte once; the cut
    /// points are those of one scan over the whole chunk.
    pub fn find(&self, data: &[u8], state: &mut CutScan) -> Option<usize> {
        let n = data.len().min(self.max);
        // Positions below `min` are never cut points and are not hashed.
        let from = state.scanned.max(self.min);
        if from < n {
            let center = self.avg.min(n);
            if from < center
                && let Some(cut) = self.scan(data, from, center, self.mask_small, &mut state.hash)
            {
                return Some(cut);
            }
            if let Some(cut) = self.scan(data, from.max(center), n, self.mask_large, &mut state.hash) {
                return Some(cut);
            }
        }
        state.scanned = state.scanned.max(n);
        (data.len() >= self.max).then_some(self.max)
    }

    /// Roll the gear hash over `data[from..to]`; the first position after
    /// which `hash & mask == 0` ends the chunk. Four bytes per step: with
    /// `c` the hash of the step's first `j` bytes alone, the hash after
    /// them is `(h << j) + c`, so the four positions are tested without
    /// waiting for one another and the chain from step to step is one
    /// shift and one add; the cut points are exactly those of the
    /// one-byte recurrence `h = 2h + g`, at about twice its speed.
    fn scan(&self, data: &[u8], from: usize, to: usize, mask: u64, hash: &mut u64) -> Option<usize> {
        if from >= to {
            return None;
        }
        let gear = &*self.gear;
        let mut h = *hash;
        let quads = data[from..to].chunks_exact(4);
        let rest = quads.remainder();
        for (k, q) in quads.enumerate() {
            let c1 = gear[q[0] as usize];
            let c2 = (c1 << 1).wrapping_add(gear[q[1] as usize]);
            let c3 = (c2 << 1).wrapping_add(gear[q[2] as usize]);
            let c4 = (c3 << 1).wrapping_add(gear[q[3] as usize]);
            let at = from + 4 * k;
            if (h << 1).wrapping_add(c1) & mask == 0 {
                return Some(at + 1);
            }
            if (h << 2).wrapping_add(c2) & mask == 0 {
                return Some(at + 2);
            }
            if (h << 3).wrapping_add(c3) & mask == 0 {
                return Some(at + 3);
            }
            h = (h << 4).wrapping_add(c4);
            if h & mask == 0 {
                return Some(at + 4);
            }
        }
        let at = to - rest.len();
        for (i, &b) in rest.iter().enumerate() {
            h = (h << 1).wrapping_add(gear[b as usize]);
            if h & mask == 0 {
                return Some(at + i + 1);
            }
        }
        *hash = h;
        None
    }
}

/// How far [`Cdc::find`] has looked into the chunk being read, and the
/// gear hash there.
#[derive(Debug, Default, Clone, Copy)]
pub struct CutScan {
    scanned: usize,
    hash: u64,
}

/// A chunk in a buffer that is used again: `bytes[..len]` is the chunk;
/// the rest of `bytes` is memory initialised by earlier use, so reading
/// into it costs neither zeroing nor fresh pages.
#[derive(Debug, Default)]
pub struct ChunkBuf {
    bytes: Vec<u8>,
    len: usize,
}

impl ChunkBuf {
    /// `n` writable bytes after the chunk, to be kept with
    /// [`commit`](Self::commit).
    pub fn spare(&mut self, n: usize) -> &mut [u8] {
        let end = self.len + n;
        if self.bytes.len() < end {
            self.bytes.resize(end, 0);
        }
        &mut self.bytes[self.len..end]
    }

    /// Add the first `n` bytes of the last [`spare`](Self::spare) to the chunk.
    pub fn commit(&mut self, n: usize) {
        self.len = (self.len + n).min(self.bytes.len());
    }

    pub fn extend_from_slice(&mut self, data: &[u8]) {
        self.spare(data.len()).copy_from_slice(data);
        self.commit(data.len());
    }

    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }
}

impl std::ops::Deref for ChunkBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// Chunk buffers handed back after use, for the next chunks of a backup.
/// Taking one from here instead of allocating saves zeroing and faulting
/// in a megabyte of fresh memory per chunk.
#[derive(Debug)]
pub struct BufferPool {
    free: std::sync::Mutex<Vec<ChunkBuf>>,
    keep: usize,
}

impl BufferPool {
    /// A pool that keeps at most `keep` idle buffers.
    pub fn new(keep: usize) -> BufferPool {
        BufferPool { free: std::sync::Mutex::new(Vec::new()), keep }
    }

    /// An empty buffer.
    pub fn take(&self) -> ChunkBuf {
        self.free.lock().unwrap_or_else(|e| e.into_inner()).pop().unwrap_or_default()
    }

    pub fn give(&self, mut buf: ChunkBuf) {
        buf.clear();
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        if free.len() < self.keep {
            free.push(buf);
        }
    }
}

/// Splits a byte stream into chunks, content-defined or fixed-size.
///
/// Each chunk is read straight into its own buffer and scanned as it
/// grows; reading stops soon after the cut, and only the few bytes read
/// past it are copied, to the next chunk's buffer.
pub struct StreamChunker<'c, 'p, R> {
    reader: R,
    cut: Cut<'c>,
    pool: &'p BufferPool,
    /// Bytes read and not yet returned: the start of the next chunk.
    pending: ChunkBuf,
    scan: CutScan,
    eof: bool,
}

#[derive(Debug, Clone, Copy)]
pub enum Cut<'c> {
    Cdc(&'c Cdc),
    Fixed(usize),
}

/// How many bytes a chunker reads at a time once it looks for a cut: more
/// means fewer system calls, less means fewer bytes copied past the cut.
const READ_STEP: usize = 128 << 10;

impl Cut<'_> {
    fn find(&self, data: &[u8], state: &mut CutScan) -> Option<usize> {
        match self {
            Cut::Cdc(cdc) => cdc.find(data, state),
            Cut::Fixed(size) => (data.len() >= *size).then_some(*size),
        }
    }

    /// How much to read for a chunk that holds `have` bytes.
    fn read_size(&self, have: usize) -> usize {
        match self {
            Cut::Cdc(cdc) => (have.max(cdc.min) + READ_STEP).min(cdc.max) - have,
            Cut::Fixed(size) => size.saturating_sub(have).max(1),
        }
    }
}

impl<'c, 'p, R: Read> StreamChunker<'c, 'p, R> {
    pub fn new(reader: R, cut: Cut<'c>, pool: &'p BufferPool) -> StreamChunker<'c, 'p, R> {
        StreamChunker { reader, cut, pool, pending: pool.take(), scan: CutScan::default(), eof: false }
    }

    /// Whether the stream has been read to its end and every chunk returned.
    pub fn is_done(&self) -> bool {
        self.eof && self.pending.is_empty()
    }

    /// The next chunk, or `None` at the end of the stream. Give the buffer
    /// back to the pool when done with it.
    pub fn next_chunk(&mut self) -> io::Result<Option<ChunkBuf>> {
        loop {
            if let Some(len) = self.cut.find(&self.pending, &mut self.scan) {
                return Ok(Some(self.split(len)));
            }
            if self.eof {
                let len = self.pending.len();
                return Ok((len > 0).then(|| self.split(len)));
            }
            self.fill()?;
        }
    }

    fn split(&mut self, len: usize) -> ChunkBuf {
        let mut next = self.pool.take();
        next.extend_from_slice(&self.pending[len..]);
        self.pending.truncate(len);
        self.scan = CutScan::default();
        std::mem::replace(&mut self.pending, next)
    }

    fn fill(&mut self) -> io::Result<()> {
        let want = self.cut.read_size(self.pending.len());
        let n = loop {
            match self.reader.read(self.pending.spare(want)) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                read => break read?,
            }
        };
        self.pending.commit(n);
        self.eof = n == 0;
        Ok(())
    }
}

impl<R> Drop for StreamChunker<'_, '_, R> {
    fn drop(&mut self) {
        self.pool.give(std::mem::take(&mut self.pending));
    }
}

/// Whether every byte is zero. Blocks of 256 bytes vectorise well, and
/// data that is not zero is usually told at its first block.
pub fn is_zero(data: &[u8]) -> bool {
    let (prefix, words, suffix) = unsafe {
        // SAFETY: any byte pattern is a valid u128.
        data.align_to::<u128>()
    };
    prefix.iter().all(|&b| b == 0)
        && words.chunks(16).all(|block| block.iter().fold(0u128, |acc, &w| acc | w) == 0)
        && suffix.iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use backstop_testkit::fixture::noise;
    use proptest::prelude::*;

    fn small() -> CdcParams {
        CdcParams { min: 1 << 10, avg: 4 << 10, max: 16 << 10 }
    }

    fn chunks(reader: impl Read, cut: Cut) -> Vec<Vec<u8>> {
        let pool = BufferPool::new(4);
        let mut c = StreamChunker::new(reader, cut, &pool);
        let mut out = Vec::new();
        while let Some(chunk) = c.next_chunk().unwrap() {
            out.push(chunk.to_vec());
            pool.give(chunk);
        }
        out
    }

    /// A reader that returns at most a few bytes at a time, as pipes do.
    struct Trickle<'a> {
        data: &'a [u8],
        sizes: Vec<usize>,
        next: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.sizes[self.next % self.sizes.len()].min(buf.len()).min(self.data.len());
            self.next += 1;
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    proptest! {
        #[test]
        fn chunks_concatenate_to_the_input(len in 0usize..200_000, seed in any::<u64>()) {
            let data = noise(len, seed);
            let cdc = Cdc::new(&[1; 32], small());
            let cs = chunks(&data[..], Cut::Cdc(&cdc));
            prop_assert_eq!(cs.concat(), data.clone());
            for c in &cs[..cs.len().saturating_sub(1)] {
                prop_assert!(c.len() >= 1 << 10 && c.len() <= 16 << 10);
            }
            let fixed = chunks(&data[..], Cut::Fixed(4096));
            prop_assert_eq!(fixed.concat(), data);
            prop_assert!(fixed.iter().rev().skip(1).all(|c| c.len() == 4096));
        }
    }

    /// The plain one-byte-at-a-time FastCDC the unrolled scan must match.
    fn reference_cut(cdc: &Cdc, data: &[u8]) -> usize {
        let n = data.len().min(cdc.max);
        if n <= cdc.min {
            return n;
        }
        let mut hash: u64 = 0;
        for (i, &b) in data.iter().enumerate().take(n).skip(cdc.min) {
            hash = (hash << 1).wrapping_add(cdc.gear[b as usize]);
            let mask = if i < cdc.avg.min(n) { cdc.mask_small } else { cdc.mask_large };
            if hash & mask == 0 {
                return i + 1;
            }
        }
        n
    }

    proptest! {
        #[test]
        fn cut_points_match_the_one_byte_recurrence(
            len in 0usize..60_000,
            seed in any::<u64>(),
            key in any::<u8>(),
            min_kib in 1u32..4,
            text in any::<bool>(),
        ) {
            let mut data = noise(len, seed);
            if text {
                // Low-entropy bytes hit the masks at other places than noise.
                data.iter_mut().for_each(|b| *b = b"etaoin shrdlu"[*b as usize % 13]);
            }
            let params = CdcParams { min: min_kib << 10, avg: 4 << 10, max: 16 << 10 };
            let cdc = Cdc::new(&[key; 32], params);
            let mut rest = &data[..];
            while !rest.is_empty() {
                let cut = cdc.cut(rest);
                prop_assert_eq!(cut, reference_cut(&cdc, rest));
                rest = &rest[cut..];
            }
        }
    }

    proptest! {
        /// However the reads fall, the chunks are those of cutting the
        /// whole stream at once.
        #[test]
        fn short_reads_give_the_same_chunks(
            len in 0usize..120_000,
            seed in any::<u64>(),
            sizes in proptest::collection::vec(1usize..40_000, 1..8),
        ) {
            let data = noise(len, seed);
            let cdc = Cdc::new(&[6; 32], small());
            let mut expected = Vec::new();
            let mut rest = &data[..];
            while !rest.is_empty() {
                let cut = cdc.cut(rest);
                expected.push(rest[..cut].to_vec());
                rest = &rest[cut..];
            }
            let trickled = chunks(Trickle { data: &data, sizes: sizes.clone(), next: 0 }, Cut::Cdc(&cdc));
            prop_assert_eq!(trickled, expected);
            let fixed = chunks(Trickle { data: &data, sizes, next: 0 }, Cut::Fixed(5000));
            prop_assert_eq!(fixed, chunks(&data[..], Cut::Fixed(5000)));
        }
    }

    #[test]
    fn buffers_are_used_again() {
        let data = noise(200_000, 9);
        let cdc = Cdc::new(&[7; 32], small());
        let pool = BufferPool::new(2);
        let mut c = StreamChunker::new(&data[..], Cut::Cdc(&cdc), &pool);
        let first = c.next_chunk().unwrap().unwrap();
        let address = first.as_ptr();
        pool.give(first);
        // The next chunk after the one being read takes the buffer given back.
        let _second = c.next_chunk().unwrap().unwrap();
        let third = c.next_chunk().unwrap().unwrap();
        assert_eq!(third.as_ptr(), address);
    }

    #[test]
    fn average_chunk_size_is_near_the_target() {
        let data = noise(8 << 20, 7);
        let cdc = Cdc::new(&[2; 32], small());
        let n = chunks(&data[..], Cut::Cdc(&cdc)).len();
        let avg = data.len() / n;
        assert!((3 << 10..=7 << 10).contains(&avg), "average chunk {avg} bytes over {n} chunks");
    }

    #[test]
    fn boundaries_resynchronise_after_an_insertion() {
        let data = noise(1 << 20, 3);
        let mut shifted = data[..300_000].to_vec();
        shifted.extend_from_slice(b"an insertion that shifts everything after it");
        shifted.extend_from_slice(&data[300_000..]);
        let cdc = Cdc::new(&[3; 32], small());
        let a: std::collections::HashSet<_> = chunks(&data[..], Cut::Cdc(&cdc)).into_iter().collect();
        let b = chunks(&shifted[..], Cut::Cdc(&cdc));
        let shared = b.iter().filter(|c| a.contains(*c)).count();
        assert!(shared * 10 >= b.len() * 9, "{shared} of {} chunks survive the insertion", b.len());
    }

    #[test]
    fn the_key_changes_the_boundaries() {
        let data = noise(1 << 20, 5);
        let a = chunks(&data[..], Cut::Cdc(&Cdc::new(&[4; 32], small())));
        let b = chunks(&data[..], Cut::Cdc(&Cdc::new(&[5; 32], small())));
        assert_ne!(a.iter().map(Vec::len).collect::<Vec<_>>(), b.iter().map(Vec::len).collect::<Vec<_>>());
    }

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[]));
        assert!(is_zero(&vec![0; 100_003]));
        let mut v = vec![0; 100_003];
        for i in [0, 17, 50_000, 100_002] {
            v[i] = 1;
            assert!(!is_zero(&v), "nonzero at {i}");
            v[i] = 0;
        }
    }

    #[test]
    fn parameters_are_validated() {
        CdcParams::default().check().unwrap();
        assert!(CdcParams { min: 10, avg: 1000, max: 5000 }.check().is_err());
        assert!(CdcParams { min: 4096, avg: 2048, max: 8192 }.check().is_err());
    }
}
