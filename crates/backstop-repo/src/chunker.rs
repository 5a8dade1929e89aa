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

    /// The length of the first chunk of `data`. The caller passes at least
    /// `max_size()` bytes unless `data` is the end of the stream.
    pub fn cut(&self, data: &[u8]) -> usize {
        let n = data.len().min(self.max);
        if n <= self.min {
            return n;
        }
        let center = self.avg.min(n);
        let mut hash: u64 = 0;
        if let Some(cut) = self.scan(data, self.min, center, self.mask_small, &mut hash) {
            return cut;
        }
        self.scan(data, center, n, self.mask_large, &mut hash).unwrap_or(n)
    }

    /// Roll the gear hash over `data[from..to]`; the first position after
    /// which `hash & mask == 0` ends the chunk. Two bytes per step: the
    /// hash after both, `4h + 2g0 + g1`, does not wait for the hash after
    /// the first, so the loop runs at twice the speed of the one-byte
    /// recurrence `h = 2h + g` with exactly the same cut points.
    fn scan(&self, data: &[u8], from: usize, to: usize, mask: u64, hash: &mut u64) -> Option<usize> {
        let gear = &*self.gear;
        let mut h = *hash;
        let pairs = data[from..to].chunks_exact(2);
        let odd = pairs.remainder().first().copied();
        for (k, pair) in pairs.enumerate() {
            let (g0, g1) = (gear[pair[0] as usize], gear[pair[1] as usize]);
            let first = (h << 1).wrapping_add(g0);
            h = (h << 2).wrapping_add((g0 << 1).wrapping_add(g1));
            if first & mask == 0 {
                return Some(from + 2 * k + 1);
            }
            if h & mask == 0 {
                return Some(from + 2 * k + 2);
            }
        }
        if let Some(b) = odd {
            h = (h << 1).wrapping_add(gear[b as usize]);
            if h & mask == 0 {
                return Some(to);
            }
        }
        *hash = h;
        None
    }
}

/// Splits a byte stream into chunks, content-defined or fixed-size.
pub struct StreamChunker<'c, R> {
    reader: R,
    cut: Cut<'c>,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    eof: bool,
}

#[derive(Debug, Clone, Copy)]
pub enum Cut<'c> {
    Cdc(&'c Cdc),
    Fixed(usize),
}

impl Cut<'_> {
    fn max(&self) -> usize {
        match self {
            Cut::Cdc(cdc) => cdc.max_size(),
            Cut::Fixed(size) => *size,
        }
    }
}

impl<'c, R: Read> StreamChunker<'c, R> {
    pub fn new(reader: R, cut: Cut<'c>) -> StreamChunker<'c, R> {
        Self::with_buffer(reader, cut, Vec::new())
    }

    /// Reuse `buf` (from [`into_buffer`](Self::into_buffer)) instead of
    /// allocating: zeroing a fresh 8 MiB buffer for every small file cost
    /// a tenth of a backup's CPU.
    pub fn with_buffer(reader: R, cut: Cut<'c>, mut buf: Vec<u8>) -> StreamChunker<'c, R> {
        let capacity = (2 * cut.max()).max(1 << 20);
        if buf.len() < capacity {
            buf.resize(capacity, 0);
        }
        StreamChunker { reader, cut, buf, start: 0, end: 0, eof: false }
    }

    /// The buffer, for the next chunker.
    pub fn into_buffer(self) -> Vec<u8> {
        self.buf
    }

    /// Whether the stream has been read to its end and every chunk returned.
    pub fn is_done(&self) -> bool {
        self.eof && self.start == self.end
    }

    /// The next chunk, or `None` at the end of the stream.
    pub fn next_chunk(&mut self) -> io::Result<Option<Vec<u8>>> {
        if self.end - self.start < self.cut.max() && !self.eof {
            self.fill()?;
        }
        let available = &self.buf[self.start..self.end];
        if available.is_empty() {
            return Ok(None);
        }
        let len = match self.cut {
            Cut::Cdc(cdc) => cdc.cut(available),
            Cut::Fixed(size) => size.min(available.len()),
        };
        let chunk = available[..len].to_vec();
        self.start += len;
        Ok(Some(chunk))
    }

    fn fill(&mut self) -> io::Result<()> {
        self.buf.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
        while self.end < self.buf.len() {
            match self.reader.read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(n) => self.end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Whether every byte is zero (vectorises well).
pub fn is_zero(data: &[u8]) -> bool {
    let (prefix, words, suffix) = unsafe {
        // SAFETY: any byte pattern is a valid u128.
        data.align_to::<u128>()
    };
    prefix.iter().all(|&b| b == 0) && words.iter().fold(0u128, |acc, &w| acc | w) == 0 && suffix.iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use backstop_testkit::fixture::noise;
    use proptest::prelude::*;

    fn small() -> CdcParams {
        CdcParams { min: 1 << 10, avg: 4 << 10, max: 16 << 10 }
    }

    fn chunks(data: &[u8], cut: Cut) -> Vec<Vec<u8>> {
        let mut c = StreamChunker::new(data, cut);
        let mut out = Vec::new();
        while let Some(chunk) = c.next_chunk().unwrap() {
            out.push(chunk);
        }
        out
    }

    proptest! {
        #[test]
        fn chunks_concatenate_to_the_input(len in 0usize..200_000, seed in any::<u64>()) {
            let data = noise(len, seed);
            let cdc = Cdc::new(&[1; 32], small());
            let cs = chunks(&data, Cut::Cdc(&cdc));
            prop_assert_eq!(cs.concat(), data.clone());
            for c in &cs[..cs.len().saturating_sub(1)] {
                prop_assert!(c.len() >= 1 << 10 && c.len() <= 16 << 10);
            }
            let fixed = chunks(&data, Cut::Fixed(4096));
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

    #[test]
    fn average_chunk_size_is_near_the_target() {
        let data = noise(8 << 20, 7);
        let cdc = Cdc::new(&[2; 32], small());
        let n = chunks(&data, Cut::Cdc(&cdc)).len();
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
        let a: std::collections::HashSet<_> = chunks(&data, Cut::Cdc(&cdc)).into_iter().collect();
        let b = chunks(&shifted, Cut::Cdc(&cdc));
        let shared = b.iter().filter(|c| a.contains(*c)).count();
        assert!(shared * 10 >= b.len() * 9, "{shared} of {} chunks survive the insertion", b.len());
    }

    #[test]
    fn the_key_changes_the_boundaries() {
        let data = noise(1 << 20, 5);
        let a = chunks(&data, Cut::Cdc(&Cdc::new(&[4; 32], small())));
        let b = chunks(&data, Cut::Cdc(&Cdc::new(&[5; 32], small())));
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
