//! The blob saver: deduplicate, compress, seal, pack, upload. Shared by all
//! threads of a backup (and by prune's repacking).

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use backstop_backend::{Dir, Links, PutMode};
use crossbeam_channel::{Receiver, Sender};

use crate::crypto::{Compression, Sealer};
use crate::error::{Error, Result};
use crate::id::BlobId;
use crate::index::{Claim, IndexFile, IndexPack, WriteIndex};
use crate::pack::{BlobKind, FinishedPack, PackWriter, pack_key};
use crate::progress::CancelToken;
use crate::repository::Repository;
use crate::tree::{ContentRef, LIST_FANOUT, encode_list};

/// Data packs open at once (see [`Saver::lock_slot`]).
const DATA_PACK_SLOTS: usize = 4;

/// Counters of what the saver stored.
#[derive(Debug, Default)]
pub struct SaverStats {
    pub blobs_added: AtomicU64,
    pub data_blobs_added: AtomicU64,
    pub bytes_added: AtomicU64,
    pub bytes_added_stored: AtomicU64,
}

struct Uploads {
    /// Tickets are handed out in order when a pack is closed, before it is
    /// finished and queued; `flush` waits for the tickets older than itself
    /// only, so a steady stream of new packs cannot starve it.
    next_ticket: u64,
    /// Tickets of packs closed and not yet uploaded (or abandoned).
    pending: BTreeSet<u64>,
    /// Packs uploaded and not yet written to an index file.
    done: Vec<IndexPack>,
    error: Option<Error>,
}

/// State shared with the upload threads.
struct Shared {
    repo: Repository,
    /// Past its grace, packs not yet uploaded are not uploaded.
    cancel: CancelToken,
    index: Arc<WriteIndex>,
    uploads: Mutex<Uploads>,
    uploads_changed: Condvar,
}

impl Shared {
    fn ticket(&self) -> u64 {
        let mut uploads = self.uploads.lock().unwrap_or_else(|e| e.into_inner());
        let t = uploads.next_ticket;
        uploads.next_ticket += 1;
        uploads.pending.insert(t);
        t
    }

    fn release(&self, ticket: u64) {
        self.uploads.lock().unwrap_or_else(|e| e.into_inner()).pending.remove(&ticket);
        self.uploads_changed.notify_all();
    }

    fn upload(&self, ticket: u64, pack: FinishedPack) {
        // A tree pack goes into the local cache too (before the upload: a
        // local repository takes the staging file itself), so that the next
        // backup reads this one's trees without a request.
        if pack.kind == BlobKind::Tree
            && let Some(cache) = self.repo.cache()
            && let Ok(bytes) = pack.read()
        {
            cache.put(&pack_key(&pack.id), &bytes);
        }
        let result = if self.cancel.is_overdue() {
            Err(Error::Cancelled)
        } else {
            self.repo
                .backend()
                .put_file(&pack_key(&pack.id), &pack.dir, &pack.name, PutMode::Overwrite)
                .map_err(Error::from)
        };
        let mut uploads = self.uploads.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(()) => {
                let entry = IndexPack::from_finished(&pack);
                self.index.record(&entry);
                uploads.done.push(entry);
            }
            Err(e) => {
                if uploads.error.is_none() {
                    uploads.error = Some(e);
                }
            }
        }
        uploads.pending.remove(&ticket);
        drop(uploads);
        self.uploads_changed.notify_all();
    }
}

/// Stops its upload threads when dropped; packs not flushed are discarded.
pub struct Saver {
    shared: Arc<Shared>,
    sealer: Arc<Sealer>,
    staging: Arc<Dir>,
    /// A staging directory of this saver's own (for backends that cannot
    /// take files by rename): its parent and name, removed at the end.
    private_staging: Option<(Dir, OsString)>,
    /// The staging directory is the backend's own: packs staged there become
    /// the stored objects, so they are written to disk as they grow.
    write_behind: bool,
    compression: Compression,
    /// Open data packs, several so that threads storing small blobs do not
    /// queue behind one another's pack writes; each is its own slot with
    /// the flush protocol of a single one.
    data_packs: Vec<Mutex<Option<PackWriter>>>,
    tree_pack: Mutex<Option<PackWriter>>,
    upload_tx: Mutex<Option<Sender<(u64, FinishedPack)>>>,
    uploaders: Mutex<Vec<std::thread::JoinHandle<()>>>,
    pub stats: SaverStats,
}

impl Saver {
    /// Start a saver with `uploaders` upload threads. Once `cancel` is
    /// past its grace, packs still waiting are dropped, not uploaded.
    pub fn start(
        repo: &Repository,
        sealer: Arc<Sealer>,
        index: Arc<WriteIndex>,
        uploaders: usize,
        cancel: &CancelToken,
    ) -> Result<Saver> {
        let backend_staging = repo.backend().staging_dir();
        let write_behind = backend_staging.is_some();
        let (staging, private_staging) = match backend_staging {
            Some(dir) => (dir, None),
            None => {
                let (dir, parent, name) = private_staging_dir()?;
                (Arc::new(dir), Some((parent, name)))
            }
        };
        let shared = Arc::new(Shared {
            repo: repo.clone(),
            cancel: cancel.clone(),
            index,
            uploads: Mutex::new(Uploads { next_ticket: 0, pending: BTreeSet::new(), done: Vec::new(), error: None }),
            uploads_changed: Condvar::new(),
        });
        // Closed packs wait in staging files (on disk, not in memory), so the
        // queue can be deep enough to ride out a slow fsync or upload.
        let (tx, rx) = crossbeam_channel::bounded::<(u64, FinishedPack)>(uploaders.max(1) * 4);
        let mut handles = Vec::new();
        for _ in 0..uploaders.max(1) {
            let shared = shared.clone();
            let rx: Receiver<(u64, FinishedPack)> = rx.clone();
            let handle = std::thread::Builder::new()
                .name("backstop-upload".into())
                .spawn(move || {
                    for (ticket, pack) in rx {
                        shared.upload(ticket, pack);
                    }
                })
                .map_err(|e| Error::io("upload thread", e))?;
            handles.push(handle);
        }
        Ok(Saver {
            shared,
            sealer,
            staging,
            private_staging,
            write_behind,
            compression: Compression::Zstd(repo.config().compression_level),
            data_packs: (0..DATA_PACK_SLOTS).map(|_| Mutex::new(None)).collect(),
            tree_pack: Mutex::new(None),
            upload_tx: Mutex::new(Some(tx)),
            uploaders: Mutex::new(handles),
            stats: SaverStats::default(),
        })
    }

    pub fn index(&self) -> &Arc<WriteIndex> {
        &self.shared.index
    }

    pub fn sealer(&self) -> &Arc<Sealer> {
        &self.sealer
    }

    fn repo(&self) -> &Repository {
        &self.shared.repo
    }

    /// Every open pack slot, for flushing.
    fn pack_slots(&self) -> impl Iterator<Item = &Mutex<Option<PackWriter>>> {
        self.data_packs.iter().chain(std::iter::once(&self.tree_pack))
    }

    /// A pack slot for a blob of `kind`, locked: the first data slot that
    /// is free (so a quiet backup fills one pack at a time), or this
    /// thread's own when all are busy.
    fn lock_slot(&self, kind: BlobKind) -> std::sync::MutexGuard<'_, Option<PackWriter>> {
        if kind == BlobKind::Tree {
            return self.tree_pack.lock().unwrap_or_else(|e| e.into_inner());
        }
        for slot in &self.data_packs {
            match slot.try_lock() {
                Ok(guard) => return guard,
                Err(std::sync::TryLockError::Poisoned(e)) => return e.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => {}
            }
        }
        thread_local! {
            static HOME: usize = {
                static NEXT: AtomicU64 = AtomicU64::new(0);
                NEXT.fetch_add(1, Ordering::Relaxed) as usize
            };
        }
        let home = HOME.with(|h| *h) % self.data_packs.len();
        self.data_packs[home].lock().unwrap_or_else(|e| e.into_inner())
    }

    fn target_size(&self, kind: BlobKind) -> u64 {
        match kind {
            BlobKind::Data => self.repo().config().pack_size as u64,
            BlobKind::Tree => self.repo().config().tree_pack_size as u64,
        }
    }

    fn first_error(&self) -> Option<Error> {
        let uploads = self.shared.uploads.lock().unwrap_or_else(|e| e.into_inner());
        uploads.error.as_ref().map(|e| e.echo("an earlier upload failed"))
    }

    /// Store `data` as a blob unless the repository has it. Returns its id
    /// and whether it was new. When this returns, the blob is in the
    /// repository or in an open pack that the next [`flush`](Self::flush)
    /// uploads.
    pub fn save(&self, kind: BlobKind, data: &[u8]) -> Result<(BlobId, bool)> {
        let id = self.repo().key().blob_id(data);
        if self.shared.index.claim(kind, &id) == Claim::Known {
            return Ok((id, false));
        }
        thread_local! {
            static SEALED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        SEALED.with(|buf| {
            let mut sealed = buf.borrow_mut();
            self.sealer.seal_into(kind.object_kind(), Some(&id), data, self.compression, &mut sealed);
            let stored = sealed.len() as u64;
            match self.add_to_pack(kind, id, &sealed, data.len()) {
                Ok(()) => {
                    self.shared.index.packed(kind, &id);
                    self.stats.blobs_added.fetch_add(1, Ordering::Relaxed);
                    if kind == BlobKind::Data {
                        self.stats.data_blobs_added.fetch_add(1, Ordering::Relaxed);
                    }
                    self.stats.bytes_added.fetch_add(data.len() as u64, Ordering::Relaxed);
                    self.stats.bytes_added_stored.fetch_add(stored, Ordering::Relaxed);
                    Ok((id, true))
                }
                Err(e) => {
                    self.shared.index.release(kind, &id);
                    Err(e)
                }
            }
        })
    }

    /// Copy an already sealed blob (prune's repacking) into a new pack.
    pub fn save_sealed(&self, kind: BlobKind, id: BlobId, sealed: &[u8], raw_len: usize) -> Result<bool> {
        if self.shared.index.claim(kind, &id) == Claim::Known {
            return Ok(false);
        }
        match self.add_to_pack(kind, id, sealed, raw_len) {
            Ok(()) => {
                self.shared.index.packed(kind, &id);
                Ok(true)
            }
            Err(e) => {
                self.shared.index.release(kind, &id);
                Err(e)
            }
        }
    }

    fn add_to_pack(&self, kind: BlobKind, id: BlobId, sealed: &[u8], raw_len: usize) -> Result<()> {
        if let Some(error) = self.first_error() {
            return Err(error);
        }
        let raw_len = u32::try_from(raw_len).map_err(|_| Error::Invalid("blob larger than 4 GiB".into()))?;
        let finished = {
            let mut slot = self.lock_slot(kind);
            if slot.is_none() {
                *slot = Some(
                    PackWriter::create(&self.staging, kind)
                        .map_err(|e| Error::io(self.staging.path(), e))?
                        .write_behind(self.write_behind),
                );
            }
            let writer = slot.as_mut().expect("just created");
            writer.add(id, sealed, raw_len).map_err(|e| Error::io(self.staging.path(), e))?;
            if writer.size() >= self.target_size(kind) {
                // The ticket is taken under the slot lock: a flush that
                // starts after this blob was added waits for this pack.
                Some((slot.take().expect("present"), self.shared.ticket()))
            } else {
                None
            }
        };
        match finished {
            Some((writer, ticket)) => self.finish_and_send(writer, ticket),
            None => Ok(()),
        }
    }

    fn finish_and_send(&self, writer: PackWriter, ticket: u64) -> Result<()> {
        let pack = match writer.finish(&self.sealer) {
            Ok(pack) => pack,
            Err(e) => {
                self.shared.release(ticket);
                return Err(Error::io(self.staging.path(), e));
            }
        };
        let tx = self.upload_tx.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match tx {
            Some(tx) if tx.send((ticket, pack)).is_ok() => Ok(()),
            _ => {
                self.shared.release(ticket);
                Err(Error::Invalid("the saver is shut down".into()))
            }
        }
    }

    /// Finish the open packs and wait until they and every pack closed
    /// before this call are uploaded (not packs closed meanwhile).
    /// Everything `save` returned before this call is then in the repository.
    pub fn flush(&self) -> Result<()> {
        for slot in self.pack_slots() {
            let taken = {
                let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
                slot.take().filter(|w| !w.is_empty()).map(|w| (w, self.shared.ticket()))
            };
            if let Some((writer, ticket)) = taken {
                self.finish_and_send(writer, ticket)?;
            }
        }
        let mut uploads = self.shared.uploads.lock().unwrap_or_else(|e| e.into_inner());
        let target = uploads.next_ticket;
        while uploads.pending.range(..target).next().is_some() {
            uploads = self.shared.uploads_changed.wait(uploads).unwrap_or_else(|e| e.into_inner());
        }
        match uploads.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Wait until no upload is under way (after a cancellation: the packs
    /// still queued are dropped), and return the first upload error.
    pub fn settle(&self) -> Result<()> {
        let mut uploads = self.shared.uploads.lock().unwrap_or_else(|e| e.into_inner());
        while !uploads.pending.is_empty() {
            uploads = self.shared.uploads_changed.wait(uploads).unwrap_or_else(|e| e.into_inner());
        }
        match uploads.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The packs uploaded since the last call (and not yet in an index file).
    pub fn take_uploaded(&self) -> Vec<IndexPack> {
        std::mem::take(&mut self.shared.uploads.lock().unwrap_or_else(|e| e.into_inner()).done)
    }

    /// Write an index file for the packs uploaded since the last call, if
    /// any. Call after [`flush`](Self::flush).
    pub fn write_index(&self, supersedes: Vec<crate::id::IndexId>) -> Result<Option<crate::id::IndexId>> {
        let packs = self.take_uploaded();
        if packs.is_empty() && supersedes.is_empty() {
            return Ok(None);
        }
        let file = IndexFile { supersedes, packs };
        let hash = self.repo().put_sealed(&self.sealer, "index", crate::crypto::ObjectKind::Index, &file.encode())?;
        Ok(Some(crate::id::IndexId(hash)))
    }

    /// Stop the upload threads. Unflushed packs are discarded.
    pub fn shutdown(&self) {
        self.upload_tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        for handle in std::mem::take(&mut *self.uploaders.lock().unwrap_or_else(|e| e.into_inner())) {
            let _ = handle.join();
        }
        for slot in self.pack_slots() {
            slot.lock().unwrap_or_else(|e| e.into_inner()).take();
        }
    }

    /// Store long content lists as chunk-list blobs so a node stays small.
    pub fn compact_content(&self, mut content: Vec<ContentRef>) -> Result<Vec<ContentRef>> {
        while content.len() > LIST_FANOUT {
            let mut lists = Vec::with_capacity(content.len() / LIST_FANOUT + 1);
            for group in content.chunks(LIST_FANOUT) {
                let len = group.iter().map(ContentRef::len).sum();
                let (id, _) = self.save(BlobKind::Tree, &encode_list(group))?;
                lists.push(ContentRef::List { id, len });
            }
            content = lists;
        }
        Ok(content)
    }
}

impl Drop for Saver {
    fn drop(&mut self) {
        self.shutdown();
        if let Some((parent, name)) = &self.private_staging {
            let _ = parent.remove_dir_at(name);
        }
    }
}

/// A fresh directory of this process's own under the system's temporary
/// one (`0700`, a random name, made with `mkdir`: nothing planted there
/// beforehand can stand in for it).
fn private_staging_dir() -> Result<(Dir, Dir, OsString)> {
    let tmp = std::env::temp_dir();
    let parent = Dir::open(&tmp).map_err(|e| Error::io(&tmp, e))?;
    loop {
        let name = OsString::from(format!("backstop-{}", crate::id::SessionId::random().to_hex()));
        match parent.mkdir_at(&name, 0o700) {
            Ok(()) => {
                let dir = parent.open_dir(Path::new(&name), Links::Refuse).map_err(|e| Error::io(&tmp, e))?;
                return Ok((dir, parent, name));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io(&tmp, e)),
        }
    }
}
