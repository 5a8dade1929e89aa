//! A disk image read straight from a snapshot's chunks: a read fetches the
//! chunks it touches that are not in memory yet, those of one pack that
//! lie together in one request, several requests in flight; chunks stay
//! in a bounded cache (a file system reads its metadata again and again).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::{DiskError, ReadAt};
use crate::error::{Error, Result};
use crate::id::BlobId;
use crate::index::Index;
use crate::pack::{BlobKind, BlobLocation};
use crate::repository::Repository;
use crate::tree::ContentRef;
use crate::trees::{read_run, run_span, runs_of};
use crate::util::parallel_map;

/// Decoded chunks kept in memory.
const CACHE_BYTES: usize = 64 << 20;
/// Range requests in flight at once.
const PARALLEL: usize = 8;

pub struct StoredImage<'a> {
    repo: &'a Repository,
    index: &'a Index,
    /// The image's content, chunk lists expanded, and where each piece starts.
    content: Vec<ContentRef>,
    starts: Vec<u64>,
    size: u64,
    cache: Mutex<Cache>,
    fetched: AtomicU64,
    requests: AtomicU64,
}

#[derive(Default)]
struct Cache {
    chunks: HashMap<usize, Arc<Vec<u8>>>,
    order: VecDeque<usize>,
    bytes: usize,
}

impl Cache {
    fn insert(&mut self, i: usize, data: Arc<Vec<u8>>) {
        self.bytes += data.len();
        if self.chunks.insert(i, data).is_none() {
            self.order.push_back(i);
        }
        while self.bytes > CACHE_BYTES {
            let Some(old) = self.order.pop_front() else { break };
            if let Some(gone) = self.chunks.remove(&old) {
                self.bytes -= gone.len();
            }
        }
    }
}

impl<'a> StoredImage<'a> {
    pub fn open(repo: &'a Repository, index: &'a Index, content: &[ContentRef]) -> Result<StoredImage<'a>> {
        let content = repo.expand_content(index, content)?;
        let mut starts = Vec::with_capacity(content.len());
        let mut size = 0u64;
        for c in &content {
            starts.push(size);
            size += c.len();
        }
        Ok(StoredImage {
            repo,
            index,
            content,
            starts,
            size,
            cache: Mutex::new(Cache::default()),
            fetched: AtomicU64::new(0),
            requests: AtomicU64::new(0),
        })
    }

    /// Bytes read from the repository so far, and the requests that read them.
    pub fn fetched(&self) -> (u64, u64) {
        (self.fetched.load(Ordering::Relaxed), self.requests.load(Ordering::Relaxed))
    }

    /// The chunks (by their place in the content) of `wanted` not in memory,
    /// read and kept.
    fn fetch(&self, wanted: &[usize]) -> Result<()> {
        let mut by_pack: HashMap<_, Vec<(BlobId, BlobLocation)>> = HashMap::new();
        let mut places: HashMap<BlobId, Vec<usize>> = HashMap::new();
        for &i in wanted {
            let ContentRef::Data { id, len } = self.content[i] else { continue };
            let loc = self.index.lookup(BlobKind::Data, &id).ok_or_else(|| {
                Error::corrupt(
                    format!("data blob {}", id.short()),
                    "not in the index (its pack is missing or unindexed)",
                )
            })?;
            if loc.raw_len as u64 != len {
                return Err(Error::corrupt(format!("data blob {}", id.short()), "its length differs from the image's"));
            }
            let at = places.entry(id).or_default();
            if at.is_empty() {
                by_pack.entry(loc.pack).or_default().push((id, loc));
            }
            at.push(i);
        }
        let runs: Vec<_> = by_pack.into_values().flat_map(runs_of).collect();
        let results = parallel_map(&runs, PARALLEL, |run| read_run(self.repo, run));
        for run in &runs {
            let (start, end) = run_span(run);
            let requested = if run.len() == 1 { run[0].1.stored_len as u64 } else { end - start };
            self.fetched.fetch_add(requested, Ordering::Relaxed);
            self.requests.fetch_add(1, Ordering::Relaxed);
        }
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        for (id, data) in results.into_iter().flatten() {
            let data = Arc::new(data?);
            for &i in places.get(&id).into_iter().flatten() {
                cache.insert(i, data.clone());
            }
        }
        Ok(())
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let end = offset + buf.len() as u64;
        let first = self.starts.partition_point(|&s| s <= offset).saturating_sub(1);
        let last = self.starts.partition_point(|&s| s < end);
        let missing: Vec<usize> = {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            (first..last)
                .filter(|i| matches!(self.content[*i], ContentRef::Data { .. }) && !cache.chunks.contains_key(i))
                .collect()
        };
        if !missing.is_empty() {
            self.fetch(&missing)?;
        }
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        for i in first..last {
            let (start, len) = (self.starts[i], self.content[i].len());
            let (from, to) = (offset.max(start), end.min(start + len));
            if from >= to {
                continue;
            }
            let out = &mut buf[(from - offset) as usize..(to - offset) as usize];
            match self.content[i] {
                ContentRef::Data { .. } => match cache.chunks.get(&i) {
                    Some(data) => out.copy_from_slice(&data[(from - start) as usize..(to - start) as usize]),
                    // Pushed out by a larger read's own chunks: read alone.
                    None => {
                        drop(cache);
                        return self.read_alone(offset, buf);
                    }
                },
                _ => out.fill(0),
            }
        }
        Ok(())
    }

    /// A read larger than the cache: chunk by chunk.
    fn read_alone(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let step = 1 << 20;
        if buf.len() <= step {
            return Err(Error::Invalid(format!("a read of {} bytes does not fit the image's chunk cache", buf.len())));
        }
        for (k, piece) in buf.chunks_mut(step).enumerate() {
            self.read(offset + (k * step) as u64, piece)?;
        }
        Ok(())
    }
}

impl ReadAt for StoredImage<'_> {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        if offset.checked_add(buf.len() as u64).is_none_or(|end| end > self.size) {
            return Err(DiskError::damaged(format!("read of {} bytes at {offset} past the image's end", buf.len())));
        }
        self.read(offset, buf).map_err(DiskError::Read)
    }
}
