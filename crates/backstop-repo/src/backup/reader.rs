//! Reading one file (or stream) into chunks. The reader thread cuts chunks;
//! the chunk workers hash, deduplicate, compress and seal them in parallel;
//! the [`Collector`] puts their references back in order.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use super::saver::Saver;
use crate::chunker::{Cdc, Cut, StreamChunker, is_zero};
use crate::error::{Error, Result};
use crate::pack::BlobKind;
use crate::progress::{CancelToken, Progress};
use crate::sys::{self, Stat};
use crate::tree::ContentRef;

pub(crate) enum FileSource {
    Path(PathBuf),
    Stream(Mutex<Option<Box<dyn Read + Send>>>),
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
    pub data: Vec<u8>,
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

/// Chunk worker: store each chunk of each job.
pub(crate) fn chunk_worker(saver: &Saver, jobs: Receiver<ChunkJob>, progress: &dyn Progress) {
    for job in jobs {
        for (i, piece) in job.data.chunks(job.piece.max(1)).enumerate() {
            let _ = job.reply.send((job.seq + i, store_chunk(saver, piece, progress)));
        }
    }
}

pub(crate) struct ReadContext<'a> {
    pub saver: &'a Saver,
    pub chunks: &'a Sender<ChunkJob>,
    pub cdc: &'a Cdc,
    pub fixed_size: usize,
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
    fn submit(&mut self, data: Vec<u8>, piece: usize) -> Result<()> {
        let len = data.len() as u64;
        self.ctx.bytes_read.fetch_add(len, Ordering::Relaxed);
        let pieces = data.len().div_ceil(piece.max(1));
        let job = ChunkJob { data, piece, seq: self.next_seq, reply: self.reply_tx.clone() };
        match self.ctx.chunks.try_send(job) {
            Ok(()) => self.next_seq += pieces,
            Err(TrySendError::Full(job)) => self.store_here(&job.data, piece)?,
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
        Ok(outcome) => outcome,
        Err(Error::Cancelled) => FileOutcome::Cancelled,
        Err(e) => FileOutcome::Fatal(e),
    }
}

fn read(ctx: &ReadContext, job: &FileJob) -> Result<FileOutcome> {
    let start: u64 = job.resume.iter().map(ContentRef::len).sum();
    let collector = Collector::new(ctx, job.resume.clone(), job.prefix.clone());
    match &job.source {
        FileSource::Stream(stream) => {
            let Some(mut reader) = stream.lock().unwrap_or_else(|e| e.into_inner()).take() else {
                return Ok(FileOutcome::Failed("the stream was already consumed".into()));
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
        FileSource::Path(path) => {
            let file = match sys::open_read(path) {
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
                fixed_chunks(ctx, &file, &before, start, collector)?
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
    thread_local! {
        static BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let buf = BUFFER.with(|b| std::mem::take(&mut *b.borrow_mut()));
    let mut chunker = StreamChunker::with_buffer(reader, cut, buf);
    let result = loop {
        if ctx.cancel.is_cancelled() {
            break Err(Error::Cancelled);
        }
        match chunker.next_chunk() {
            Ok(Some(chunk)) => {
                let only = collector.next_seq == 0 && chunker.is_done();
                let len = chunk.len();
                let stored = if only { collector.store_only_chunk(&chunk) } else { collector.submit(chunk, len) };
                if let Err(e) = stored {
                    break Err(e);
                }
            }
            Ok(None) => break Ok(None),
            Err(e) => break Ok(Some(format!("read error: {e}"))),
        }
    };
    BUFFER.with(|b| *b.borrow_mut() = chunker.into_buffer());
    if let Some(message) = result? {
        return Ok(Err(message));
    }
    Ok(Ok(collector.finish()?))
}

/// Fixed-size chunks at offsets that are multiples of the chunk size, with
/// holes skipped (never read) and recorded as zero runs.
fn fixed_chunks(
    ctx: &ReadContext,
    file: &File,
    stat: &Stat,
    start: u64,
    mut collector: Collector,
) -> Result<std::result::Result<Vec<ContentRef>, String>> {
    let size = stat.size;
    let block = ctx.fixed_size as u64;
    let extents = if stat.is_sparse() {
        match sys::data_extents(file, size) {
            Ok(extents) => extents,
            Err(e) => return Ok(Err(format!("cannot find holes: {e}"))),
        }
    } else {
        vec![(0, size)]
    };
    const BATCH_BLOCKS: u64 = 16;
    let mut pos = start - start % block;
    for (data_start, data_end) in extents {
        let a = (data_start / block * block).max(pos);
        let b = data_end.div_ceil(block).saturating_mul(block).min(size);
        if b <= a {
            continue;
        }
        collector.zero(a - pos);
        pos = a;
        while pos < b {
            if ctx.cancel.is_cancelled() {
                return Err(Error::Cancelled);
            }
            let want = (b - pos).min(block * BATCH_BLOCKS) as usize;
            let mut batch = vec![0u8; want];
            let got = match read_full_at(file, &mut batch, pos) {
                Ok(n) => n,
                Err(e) => return Ok(Err(format!("read error at offset {pos}: {e}"))),
            };
            batch.truncate(got);
            if got > 0 {
                collector.submit(batch, block as usize)?;
            }
            pos += got as u64;
            if got < want {
                // The file shrank while we read it; keep what we have.
                return Ok(Ok(collector.finish()?));
            }
        }
    }
    collector.zero(size.saturating_sub(pos));
    Ok(Ok(collector.finish()?))
}

fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(done)
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
}
