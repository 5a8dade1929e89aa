//! Reading one file (or stream) into chunks. The reader thread cuts chunks;
//! the chunk workers hash, deduplicate, compress and seal them in parallel;
//! the [`Collector`] puts their references back in order.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use backstop_backend::Dir;
use crossbeam_channel::{Receiver, Sender, TrySendError};

use super::saver::Saver;
use super::source::{BlockImage, StreamOpener, read_full_at};
use crate::chunker::{BufferPool, Cdc, ChunkBuf, Cut, StreamChunker, is_zero};
use crate::error::{Error, Result};
use crate::pack::BlobKind;
use crate::progress::{CancelToken, Progress};
use crate::sys::{self, Stat};
use crate::tree::ContentRef;

pub(crate) enum FileSource {
    /// Entry `name` of the directory the walker opened (`path`, for messages).
    At { dir: Arc<Dir>, name: OsString, path: PathBuf },
    /// A stream (standard input, a packager's output), opened when a
    /// reader takes the job.
    Open(Mutex<Option<StreamOpener>>),
    /// A block image in fixed chunks of `block` bytes; with `reuse`, only
    /// the blocks its changed-block map names are read.
    Image { image: Arc<dyn BlockImage>, block: usize, reuse: Option<Reuse> },
}

/// The parent's content of an image and what changed since.
pub(crate) struct Reuse {
    /// The parent's content, expanded, in fixed chunks of the same size.
    parent: Vec<ContentRef>,
    /// Where each of `parent`'s references starts: a slice is found by
    /// binary search, not by walking the parent from its start once per
    /// gap between changed extents (a disk with a million chunks and
    /// thousands of changed extents made that billions of steps).
    starts: Vec<u64>,
    /// `(offset, length)` of the changed extents.
    pub changed: Vec<(u64, u64)>,
}

impl Reuse {
    pub fn new(parent: Vec<ContentRef>, changed: Vec<(u64, u64)>) -> Reuse {
        let starts = parent
            .iter()
            .scan(0u64, |pos, c| {
                let start = *pos;
                *pos += c.len();
                Some(start)
            })
            .collect();
        Reuse { parent, starts, changed }
    }

    /// The parent's content of `[a, b)`, when every data chunk in it lies
    /// wholly inside (zero runs are split at will).
    pub fn slice(&self, a: u64, b: u64) -> Option<Vec<ContentRef>> {
        if a == b {
            return Some(Vec::new());
        }
        // The last reference starting at or before `a` holds it (one that
        // starts there and is empty is skipped below).
        let first = self.starts.partition_point(|&s| s <= a).saturating_sub(1);
        let mut out = Vec::new();
        for (c, &start) in self.parent[first..].iter().zip(&self.starts[first..]) {
            let end = start + c.len();
            if end <= a || c.is_empty() {
                continue;
            }
            if start >= b {
                break;
            }
            match c {
                ContentRef::Zero { .. } => out.push(ContentRef::Zero { len: end.min(b) - start.max(a) }),
                ContentRef::Data { .. } if start >= a && end <= b => out.push(*c),
                _ => return None,
            }
        }
        (out.iter().map(ContentRef::len).sum::<u64>() == b - a).then_some(out)
    }
}

/// A file to read, sent from the walker to a reader thread.
pub(crate) struct FileJob {
    pub source: FileSource,
    /// What the walker saw; `None` for streams.
    pub stat: Option<Stat>,
    /// Content already stored by an interrupted backup (a checkpoint's
    /// partial node): reading resumes after it.
    pub resume: Vec<ContentRef>,
    pub fixed: bool,
    /// A read error fails the backup instead of leaving the file out
    /// (packagers' entries: a snapshot without them would be a lie).
    pub strict: bool,
    /// The finished prefix of the content, for checkpoints.
    pub prefix: Arc<Mutex<Vec<ContentRef>>>,
    pub reply: Sender<FileOutcome>,
}

pub(crate) enum FileOutcome {
    Done {
        content: Vec<ContentRef>,
        size: u64,
    },
    /// Could not be read; the message names the problem. The backup goes on.
    Failed(String),
    /// A fatal error (the repository, not the source, failed).
    Fatal(Error),
    Cancelled,
}

/// Chunks for the chunk workers: `data` cut into pieces of `piece` bytes
/// (the last one may be shorter), numbered from `seq`. Batching the small
/// fixed-size chunks of an image saves a hand-off per chunk.
pub(crate) struct ChunkJob {
    pub data: ChunkBuf,
    pub piece: usize,
    pub seq: usize,
    pub reply: Sender<(usize, Result<ContentRef>)>,
}

/// Store one chunk; zero chunks are not stored.
fn store_chunk(saver: &Saver, data: &[u8], progress: &dyn Progress) -> Result<ContentRef> {
    let len = data.len() as u64;
    if is_zero(data) {
        Ok(ContentRef::Zero { len })
    } else {
        let (id, new) = saver.save(BlobKind::Data, data)?;
        if new {
            progress.stored(len, 0)
        } else {
            progress.stored(0, len)
        }
        Ok(ContentRef::Data { id, len })
    }
}

/// Chunk worker: store each chunk of each job, and give its buffer back.
pub(crate) fn chunk_worker(saver: &Saver, jobs: Receiver<ChunkJob>, pool: &BufferPool, progress: &dyn Progress) {
    for job in jobs {
        for (i, piece) in job.data.chunks(job.piece.max(1)).enumerate() {
            let _ = job.reply.send((job.seq + i, store_chunk(saver, piece, progress)));
        }
        pool.give(job.data);
    }
}

pub(crate) struct ReadContext<'a> {
    pub saver: &'a Saver,
    pub chunks: &'a Sender<ChunkJob>,
    pub cdc: &'a Cdc,
    pub fixed_size: usize,
    /// Chunk buffers, shared with the chunk workers that give them back.
    pub pool: &'a BufferPool,
    pub cancel: &'a CancelToken,
    pub progress: &'a dyn Progress,
    pub bytes_read: &'a AtomicU64,
}

/// Puts chunk results back in order and publishes the finished prefix.
struct Collector<'a> {
    ctx: &'a ReadContext<'a>,
    reply_tx: Sender<(usize, Result<ContentRef>)>,
    reply_rx: Receiver<(usize, Result<ContentRef>)>,
    ready: BTreeMap<usize, ContentRef>,
    next_seq: usize,
    next_emit: usize,
    content: Vec<ContentRef>,
    prefix: Arc<Mutex<Vec<ContentRef>>>,
}

impl<'a> Collector<'a> {
    fn new(ctx: &'a ReadContext<'a>, resume: Vec<ContentRef>, prefix: Arc<Mutex<Vec<ContentRef>>>) -> Collector<'a> {
        let (reply_tx, reply_rx) = crossbeam_channel::unbounded();
        *prefix.lock().unwrap_or_else(|e| e.into_inner()) = resume.clone();
        Collector {
            ctx,
            reply_tx,
            reply_rx,
            ready: BTreeMap::new(),
            next_seq: 0,
            next_emit: 0,
            content: resume,
            prefix,
        }
    }

    fn zero(&mut self, len: u64) {
        if len > 0 {
            self.ready.insert(self.next_seq, ContentRef::Zero { len });
            self.next_seq += 1;
            self.ctx.progress.advance(0, len);
        }
    }

    /// Hand `data`, cut into pieces of `piece` bytes, to the chunk
    /// workers; when they are all busy, store it on this thread instead
    /// (so the cores stay busy without a queue of hand-offs).
    fn submit(&mut self, data: ChunkBuf, piece: usize) -> Result<()> {
        let len = data.len() as u64;
        self.ctx.bytes_read.fetch_add(len, Ordering::Relaxed);
        let pieces = data.len().div_ceil(piece.max(1));
        let job = ChunkJob { data, piece, seq: self.next_seq, reply: self.reply_tx.clone() };
        match self.ctx.chunks.try_send(job) {
            Ok(()) => self.next_seq += pieces,
            Err(TrySendError::Full(job)) => {
                let stored = self.store_here(&job.data, piece);
                self.ctx.pool.give(job.data);
                stored?
            }
            Err(TrySendError::Disconnected(_)) => return Err(Error::Invalid("the chunk workers stopped".into())),
        }
        self.ctx.progress.advance(0, len);
        while let Ok((seq, result)) = self.reply_rx.try_recv() {
            self.ready.insert(seq, result?);
        }
        self.emit();
        Ok(())
    }

    /// Store `data`, cut into pieces of `piece` bytes, on this thread.
    fn store_here(&mut self, data: &[u8], piece: usize) -> Result<()> {
        for piece in data.chunks(piece.max(1)) {
            let stored = store_chunk(self.ctx.saver, piece, self.ctx.progress)?;
            self.ready.insert(self.next_seq, stored);
            self.next_seq += 1;
        }
        Ok(())
    }

    /// A file that is a single chunk: store it on this thread, since the
    /// reader would only wait for a worker to do it.
    fn store_only_chunk(&mut self, data: &[u8]) -> Result<()> {
        self.ctx.bytes_read.fetch_add(data.len() as u64, Ordering::Relaxed);
        self.store_here(data, data.len())?;
        self.ctx.progress.advance(0, data.len() as u64);
        self.emit();
        Ok(())
    }

    /// Content taken over from the parent without reading it.
    fn reuse(&mut self, refs: Vec<ContentRef>) {
        for r in refs {
            let len = r.len();
            self.ready.insert(self.next_seq, r);
            self.next_seq += 1;
            self.ctx.progress.advance(0, len);
            self.ctx.progress.stored(0, len);
        }
    }

    fn emit(&mut self) {
        let start = self.content.len();
        while let Some(c) = self.ready.remove(&self.next_emit) {
            self.content.push(c);
            self.next_emit += 1;
        }
        if self.content.len() > start {
            self.prefix.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(&self.content[start..]);
        }
    }

    fn finish(mut self) -> Result<Vec<ContentRef>> {
        while self.next_emit + self.ready.len() < self.next_seq {
            let (seq, result) = self.reply_rx.recv().map_err(|_| Error::Invalid("the chunk workers stopped".into()))?;
            self.ready.insert(seq, result?);
        }
        self.emit();
        Ok(merge_zero_runs(self.content))
    }
}

fn merge_zero_runs(content: Vec<ContentRef>) -> Vec<ContentRef> {
    let mut out: Vec<ContentRef> = Vec::with_capacity(content.len());
    for c in content {
        match (out.last_mut(), c) {
            (Some(ContentRef::Zero { len: a }), ContentRef::Zero { len: b }) => *a += b,
            (_, c) if c.is_empty() => {}
            (_, c) => out.push(c),
        }
    }
    out
}

/// Read one file job to the end.
pub(crate) fn read_file(ctx: &ReadContext, job: FileJob) -> FileOutcome {
    match read(ctx, &job) {
        Ok(FileOutcome::Failed(message)) if job.strict => FileOutcome::Fatal(Error::Source(message)),
        Ok(outcome) => outcome,
        Err(Error::Cancelled) => FileOutcome::Cancelled,
        Err(e) => FileOutcome::Fatal(e),
    }
}

fn read(ctx: &ReadContext, job: &FileJob) -> Result<FileOutcome> {
    let start: u64 = job.resume.iter().map(ContentRef::len).sum();
    let collector = Collector::new(ctx, job.resume.clone(), job.prefix.clone());
    match &job.source {
        FileSource::Open(opener) => {
            let Some(open) = opener.lock().unwrap_or_else(|e| e.into_inner()).take() else {
                return Ok(FileOutcome::Failed("the stream was already consumed".into()));
            };
            let mut reader = match open() {
                Ok(reader) => reader,
                Err(e) => return Ok(FileOutcome::Failed(e.to_string())),
            };
            // A stream has no holes to skip; fixed chunks still make an
            // image streamed from a device or a hypervisor dedup by block.
            let cut = if job.fixed { Cut::Fixed(ctx.fixed_size) } else { Cut::Cdc(ctx.cdc) };
            let content = match stream_chunks(ctx, &mut reader, cut, collector)? {
                Ok(content) => content,
                Err(message) => return Ok(FileOutcome::Failed(message)),
            };
            let size = content.iter().map(ContentRef::len).sum();
            Ok(FileOutcome::Done { content: ctx.saver.compact_content(content)?, size })
        }
        FileSource::Image { image, block, reuse } => {
            let content = match image_chunks(ctx, image.as_ref(), 0, reuse.as_ref(), *block, collector)? {
                Ok(content) => content,
                Err(message) => return Ok(FileOutcome::Failed(message)),
            };
            let size = content.iter().map(ContentRef::len).sum();
            if size != image.size() {
                return Ok(FileOutcome::Failed(format!(
                    "the image changed size while it was read ({} bytes, then {size})",
                    image.size()
                )));
            }
            Ok(FileOutcome::Done { content: ctx.saver.compact_content(content)?, size })
        }
        FileSource::At { dir, name, path } => {
            let file = match sys::open_read_at(dir, name) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Ok(FileOutcome::Failed("vanished before it could be read".into()));
                }
                Err(e) => return Ok(FileOutcome::Failed(format!("cannot open: {e}"))),
            };
            let before = match sys::fstat(&file) {
                Ok(st) => st,
                Err(e) => return Ok(FileOutcome::Failed(format!("cannot stat: {e}"))),
            };
            if !before.is_file() || job.stat.is_some_and(|s| s.ino != before.ino || s.dev != before.dev) {
                return Ok(FileOutcome::Failed("was replaced while the backup ran".into()));
            }
            let result = if job.fixed {
                let image = FileBlocks { file: &file, size: before.size, sparse: before.is_sparse() };
                image_chunks(ctx, &image, start, None, ctx.fixed_size, collector)?
            } else {
                let mut reader = &file;
                if start > 0 {
                    reader.seek(SeekFrom::Start(start)).map_err(|e| Error::io(path, e))?;
                }
                stream_chunks(ctx, &mut reader, Cut::Cdc(ctx.cdc), collector)?
            };
            let content = match result {
                Ok(content) => content,
                Err(message) => return Ok(FileOutcome::Failed(message)),
            };
            let size: u64 = content.iter().map(ContentRef::len).sum();
            if let Ok(after) = sys::fstat(&file)
                && (after.mtime_ns != before.mtime_ns || after.size != size)
            {
                ctx.progress.warning(path, "changed while it was read; the snapshot holds what was read");
            }
            Ok(FileOutcome::Done { content: ctx.saver.compact_content(content)?, size })
        }
    }
}

/// Chunks of a byte stream, cut by `cut`. The outer error is fatal; the
/// inner one is a read error of this file.
fn stream_chunks(
    ctx: &ReadContext,
    reader: &mut dyn Read,
    cut: Cut,
    mut collector: Collector,
) -> Result<std::result::Result<Vec<ContentRef>, String>> {
    let mut chunker = StreamChunker::new(reader, cut, ctx.pool);
    let result = loop {
        if ctx.cancel.is_cancelled() {
            break Err(Error::Cancelled);
        }
        match chunker.next_chunk() {
            Ok(Some(chunk)) => {
                let only = collector.next_seq == 0 && chunker.is_done();
                let len = chunk.len();
                let stored = if only {
                    let stored = collector.store_only_chunk(&chunk);
                    ctx.pool.give(chunk);
                    stored
                } else {
                    collector.submit(chunk, len)
                };
                if let Err(e) = stored {
                    break Err(e);
                }
            }
            Ok(None) => break Ok(None),
            Err(e) => break Ok(Some(format!("read error: {e}"))),
        }
    };
    if let Some(message) = result? {
        return Ok(Err(message));
    }
    Ok(Ok(collector.finish()?))
}

/// A file read as an image (fixed chunks, holes skipped).
struct FileBlocks<'a> {
    file: &'a File,
    size: u64,
    sparse: bool,
}

impl BlockImage for FileBlocks<'_> {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        self.file.read_at(buf, offset)
    }

    fn data_extents(&self) -> std::io::Result<Vec<(u64, u64)>> {
        if self.sparse { sys::data_extents(self.file, self.size) } else { Ok(vec![(0, self.size)]) }
    }

    fn will_need(&self, ranges: &[(u64, u64)]) {
        super::source::will_need(self.file, ranges);
    }
}

/// The `(start, end)` ranges to read: `wanted` widened to whole blocks,
/// merged, and clipped to `[from, size)`.
pub(crate) fn read_plan(wanted: &[(u64, u64)], size: u64, block: u64, from: u64) -> Vec<(u64, u64)> {
    let mut wanted = wanted.to_vec();
    wanted.sort_unstable();
    let mut plan: Vec<(u64, u64)> = Vec::new();
    for &(start, end) in &wanted {
        let a = (start / block * block).max(from);
        let b = end.div_ceil(block).saturating_mul(block).min(size);
        if b <= a {
            continue;
        }
        match plan.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => plan.push((a, b)),
        }
    }
    plan
}

/// Asks for the planned ranges up to a window ahead of the reads, so the
/// kernel fetches them in parallel without pulling a whole disk into memory.
struct Prefetch {
    plan: Vec<(u64, u64)>,
    /// The first range not wholly advised yet, and how far it is.
    next: usize,
    done_to: u64,
}

impl Prefetch {
    const WINDOW: u64 = 32 << 20;
    /// Advise ahead when less than half the window is left.
    fn advance(&mut self, image: &dyn BlockImage, pos: u64) {
        if self.done_to > pos + Self::WINDOW / 2 || self.next >= self.plan.len() {
            return;
        }
        let limit = pos + Self::WINDOW;
        let mut ranges = Vec::new();
        while let Some(&(a, b)) = self.plan.get(self.next) {
            let start = a.max(self.done_to);
            if start >= limit {
                break;
            }
            let end = b.min(limit);
            ranges.push((start, end));
            self.done_to = end;
            if end < b {
                break;
            }
            self.next += 1;
        }
        image.will_need(&ranges);
    }
}

/// Fixed-size chunks of an image at offsets that are multiples of `block`.
/// Without `reuse`, holes are skipped (never read) and recorded as zero
/// runs; with it, only the changed blocks are read and the rest is the
/// parent's content.
fn image_chunks(
    ctx: &ReadContext,
    image: &dyn BlockImage,
    start: u64,
    reuse: Option<&Reuse>,
    block: usize,
    mut collector: Collector,
) -> Result<std::result::Result<Vec<ContentRef>, String>> {
    let size = image.size();
    let block = block as u64;
    let wanted = match reuse {
        Some(r) => r.changed.iter().map(|&(offset, len)| (offset, offset.saturating_add(len))).collect(),
        None => match image.data_extents() {
            Ok(extents) => extents,
            Err(e) => return Ok(Err(format!("cannot find holes: {e}"))),
        },
    };
    let mut pos = start - start % block;
    let fill = |collector: &mut Collector, a: u64, b: u64| -> std::result::Result<(), String> {
        match reuse {
            None => collector.zero(b - a),
            Some(r) => match r.slice(a, b) {
                Some(refs) => collector.reuse(refs),
                None => return Err(format!("the parent's chunks of [{a}, {b}) are not aligned to {block} bytes")),
            },
        }
        Ok(())
    };
    const BATCH_BLOCKS: u64 = 16;
    let plan = read_plan(&wanted, size, block, pos);
    // Scattered changed blocks, or data between holes: fetch exactly those,
    // a window ahead, rather than one read (and readahead into the holes)
    // at a time.
    let mut prefetch = (reuse.is_some() || plan.first().is_some_and(|&(a, b)| (a, b) != (pos, size)))
        .then(|| Prefetch { plan: plan.clone(), next: 0, done_to: 0 });
    for (a, b) in plan {
        if let Err(message) = fill(&mut collector, pos, a) {
            return Ok(Err(message));
        }
        pos = a;
        while pos < b {
            if ctx.cancel.is_cancelled() {
                return Err(Error::Cancelled);
            }
            if let Some(p) = prefetch.as_mut() {
                p.advance(image, pos);
            }
            let want = (b - pos).min(block * BATCH_BLOCKS) as usize;
            let mut batch = ctx.pool.take();
            let got = match read_full_at(image, batch.spare(want), pos) {
                Ok(n) => n,
                Err(e) => {
                    ctx.pool.give(batch);
                    return Ok(Err(format!("read error at offset {pos}: {e}")));
                }
            };
            batch.commit(got);
            if got > 0 {
                collector.submit(batch, block as usize)?;
            } else {
                ctx.pool.give(batch);
            }
            pos += got as u64;
            if got < want {
                if reuse.is_some() {
                    return Ok(Err(format!("the image ended at {pos}, before its size of {size}")));
                }
                // The file shrank while we read it; keep what we have.
                return Ok(Ok(collector.finish()?));
            }
        }
    }
    if let Err(message) = fill(&mut collector, pos, size.max(pos)) {
        return Ok(Err(message));
    }
    Ok(Ok(collector.finish()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_runs_merge_and_empty_refs_vanish() {
        let id = crate::id::BlobId([1; 32]);
        let merged = merge_zero_runs(vec![
            ContentRef::Zero { len: 5 },
            ContentRef::Zero { len: 0 },
            ContentRef::Zero { len: 7 },
            ContentRef::Data { id, len: 3 },
            ContentRef::Zero { len: 1 },
        ]);
        assert_eq!(
            merged,
            vec![ContentRef::Zero { len: 12 }, ContentRef::Data { id, len: 3 }, ContentRef::Zero { len: 1 }]
        );
    }

    #[test]
    fn a_read_plan_widens_to_blocks_merges_and_clips() {
        // 4 KiB writes in 8 KiB blocks; two in one block, one at the very end.
        let plan = read_plan(&[(4096, 8192), (8192, 12288), (30000, 30001), (65536 - 10, 70000)], 65536, 8192, 0);
        assert_eq!(plan, vec![(0, 16384), (24576, 32768), (57344, 65536)]);
        assert_eq!(read_plan(&[(0, 100)], 65536, 8192, 16384), Vec::<(u64, u64)>::new(), "before `from`");
        // Out of order (maps concatenated): nothing is swallowed.
        assert_eq!(read_plan(&[(65536, 69632), (0, 4096)], 131072, 8192, 0), vec![(0, 8192), (65536, 73728)]);
    }

    #[test]
    fn slices_of_the_parent_split_zero_runs_but_never_a_chunk() {
        let id = crate::id::BlobId([1; 32]);
        let content = vec![
            ContentRef::Data { id, len: 8 },
            ContentRef::Zero { len: 0 },
            ContentRef::Zero { len: 24 },
            ContentRef::Data { id, len: 8 },
            ContentRef::Data { id, len: 3 },
        ];
        let reuse = Reuse::new(content, Vec::new());
        assert_eq!(reuse.slice(0, 8), Some(vec![ContentRef::Data { id, len: 8 }]));
        assert_eq!(reuse.slice(16, 24), Some(vec![ContentRef::Zero { len: 8 }]));
        assert_eq!(
            reuse.slice(24, 43),
            Some(vec![ContentRef::Zero { len: 8 }, ContentRef::Data { id, len: 8 }, ContentRef::Data { id, len: 3 }])
        );
        assert_eq!(reuse.slice(4, 16), None, "would cut a chunk");
        assert_eq!(reuse.slice(40, 50), None, "past the end");
        assert_eq!(reuse.slice(8, 32), Some(vec![ContentRef::Zero { len: 24 }]), "an empty reference is skipped");
        assert_eq!(reuse.slice(0, 0), Some(vec![]));
    }

    /// The slice worked out byte by byte: which reference holds each byte
    /// of `[a, b)`, every data chunk touched lying wholly inside.
    fn slice_by_bytes(content: &[ContentRef], a: u64, b: u64) -> Option<Vec<ContentRef>> {
        if a == b {
            return Some(Vec::new());
        }
        let owner: Vec<usize> =
            content.iter().enumerate().flat_map(|(i, c)| std::iter::repeat_n(i, c.len() as usize)).collect();
        let held = owner.get(a as usize..b as usize)?;
        let mut out: Vec<ContentRef> = Vec::new();
        for (k, &i) in held.iter().enumerate() {
            if k > 0 && held[k - 1] == i {
                if let Some(ContentRef::Zero { len }) = out.last_mut() {
                    *len += 1;
                }
                continue;
            }
            match content[i] {
                ContentRef::Zero { .. } => out.push(ContentRef::Zero { len: 1 }),
                data => {
                    let first = owner.iter().position(|&o| o == i)? as u64;
                    let last = owner.iter().rposition(|&o| o == i)? as u64;
                    if first < a || last >= b {
                        return None;
                    }
                    out.push(data);
                }
            }
        }
        Some(out)
    }

    proptest::proptest! {
        #[test]
        fn slices_found_by_search_are_the_slices_worked_out_byte_by_byte(
            refs in proptest::collection::vec((proptest::bool::ANY, 0u64..4), 0..40),
            a in 0u64..100,
            len in 0u64..40,
        ) {
            let id = crate::id::BlobId([7; 32]);
            let content: Vec<ContentRef> = refs
                .iter()
                .map(|&(data, n)| if data && n > 0 { ContentRef::Data { id, len: n * 8 } } else { ContentRef::Zero { len: n * 8 } })
                .collect();
            let reuse = Reuse::new(content.clone(), Vec::new());
            proptest::prop_assert_eq!(reuse.slice(a, a + len), slice_by_bytes(&content, a, a + len));
        }
    }
}
