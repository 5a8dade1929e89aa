//! An open repository: backend, master key and config, and the reads every
//! operation shares (index, snapshots, trees, blobs).

use std::sync::Arc;

use backstop_backend::{Backend, PutMode};

use crate::cache::Cache;
use crate::chunker::Cdc;
use crate::config::Config;
use crate::crypto::keyslot::{KdfParams, KeySlot, SlotError};
use crate::crypto::{self, Compression, MasterKey, ObjectKind, Password, Sealer};
use crate::error::{Error, Result};
use crate::id::{BlobId, IndexId, KeyId, PackId, SessionId, SnapshotId, object_hash};
use crate::index::{Index, IndexFile};
use crate::pack::{self, BlobKind};
use crate::session::SessionTiming;
use crate::snapshot::{Snapshot, checkpoint_key, snapshot_key};
use crate::tree::{ContentRef, Tree, decode_list};
use crate::util::parallel_map;

/// Options for [`Repository::init`].
#[derive(Debug, Clone, Default)]
pub struct InitOptions {
    pub kdf: KdfParams,
    pub config: Config,
}

struct Inner {
    backend: Arc<dyn Backend>,
    key: MasterKey,
    key_id: KeyId,
    config: Config,
    cdc: Cdc,
    timing: SessionTiming,
    cache: Option<Arc<Cache>>,
}

/// An open repository. Cheap to clone; safe to share between threads.
#[derive(Clone)]
pub struct Repository {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository")
            .field("location", &self.inner.backend.location())
            .field("id", &self.inner.config.id)
            .finish_non_exhaustive()
    }
}

/// Index files with their ids.
pub type IndexFiles = Vec<(IndexId, IndexFile)>;

/// Space a local repository keeps on its own file system, so that prune
/// and check can start when the disk is full: they release it to write
/// their session marker, plan and index, and prune writes it again once it
/// has freed space.
pub const RESERVE_KEY: &str = "reserve";
/// Enough for a prune's plan and the compacted index of about 150,000 blobs.
pub const RESERVE_BYTES: usize = 8 << 20;

/// Manifests with their ids, oldest first.
pub type Manifests = Vec<(SnapshotId, Snapshot)>;

/// A damaged or unreadable object met while loading, reported instead of
/// failing the whole operation.
#[derive(Debug, Clone)]
pub struct Damage {
    pub object: String,
    pub problem: String,
}

impl Repository {
    /// Create a repository on an empty backend.
    pub fn init(backend: Arc<dyn Backend>, password: &Password, options: InitOptions) -> Result<Repository> {
        if password.is_empty() {
            return Err(Error::Invalid("the password is empty; choose a non-empty password".into()));
        }
        options.config.check().map_err(Error::Invalid)?;
        match backend.head("config") {
            Ok(_) => return Err(Error::AlreadyInitialized { location: backend.location() }),
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
        let key = MasterKey::generate();
        let slot = KeySlot::wrap(&key, password, options.kdf, &crate::util::hostname(), &crate::util::username());
        let key_id = write_key_slot(backend.as_ref(), &slot)?;
        let sealer = Sealer::new(&key, SessionId::random());
        let config_json = serde_json::to_vec(&options.config).expect("config serialises");
        let sealed = sealer.seal(ObjectKind::Config, None, &config_json, Compression::None);
        if let Err(e) = backend.put("config", &sealed, PutMode::Create) {
            let _ = backend.delete(&key_key(&key_id));
            if e.kind() == backstop_backend::ErrorKind::AlreadyExists {
                return Err(Error::AlreadyInitialized { location: backend.location() });
            }
            return Err(e.into());
        }
        let repo = Repository::assemble(backend, key, key_id, options.config);
        repo.ensure_reserve();
        Ok(repo)
    }

    /// Open an existing repository with a password.
    pub fn open(backend: Arc<dyn Backend>, password: &Password) -> Result<Repository> {
        // The config and the key slots at once, the slots in parallel: an
        // object store's round trips are the time a short command takes.
        let (sealed, listed) = crate::util::join(|| backend.get("config"), || backend.list("keys/"));
        let sealed = match sealed {
            Ok(bytes) => bytes,
            Err(e) if e.is_not_found() => return Err(Error::NoRepository { location: backend.location() }),
            Err(e) => return Err(e.into()),
        };
        let listed: Vec<(KeyId, String)> = listed?
            .into_iter()
            .filter_map(|meta| Some((meta.key.strip_prefix("keys/")?.parse::<KeyId>().ok()?, meta.key)))
            .collect();
        let fetched = parallel_map(&listed, 8, |(_, key)| backend.get(key));
        let mut slots = Vec::new();
        for ((id, key), bytes) in listed.into_iter().zip(fetched) {
            match serde_json::from_slice::<KeySlot>(&bytes?) {
                Ok(slot) => slots.push((id, slot)),
                Err(e) => return Err(Error::corrupt(key, format!("key slot is not valid JSON: {e}"))),
            }
        }
        if slots.is_empty() {
            return Err(Error::corrupt("keys/", "the repository has no key slots"));
        }
        // Newest first: a freshly changed password is found at once.
        slots.sort_by_key(|s| std::cmp::Reverse(s.1.created));
        let mut opened = None;
        for (id, slot) in &slots {
            match slot.unwrap(password) {
                Ok(key) => {
                    opened = Some((*id, key));
                    break;
                }
                Err(SlotError::WrongPassword) => continue,
                Err(SlotError::Invalid(reason)) => return Err(Error::corrupt(key_key(id), reason)),
            }
        }
        let Some((key_id, key)) = opened else { return Err(Error::WrongPassword) };
        let config_json =
            crypto::open(&key, ObjectKind::Config, None, &sealed, None).map_err(|e| Error::corrupt("config", e))?;
        let config: Config = serde_json::from_slice(&config_json)
            .map_err(|e| Error::corrupt("config", format!("not valid JSON: {e}")))?;
        config.check().map_err(|reason| Error::corrupt("config", reason))?;
        Ok(Repository::assemble(backend, key, key_id, config))
    }

    fn assemble(backend: Arc<dyn Backend>, key: MasterKey, key_id: KeyId, config: Config) -> Repository {
        let cdc = Cdc::new(key.gear_key(), config.chunker);
        let timing = SessionTiming::default();
        Repository { inner: Arc::new(Inner { backend, key, key_id, config, cdc, timing, cache: None }) }
    }

    /// The same repository with `change` made to its settings.
    fn changed(self, change: impl FnOnce(&mut Inner)) -> Repository {
        let mut inner = Arc::try_unwrap(self.inner).unwrap_or_else(|arc| Inner {
            backend: arc.backend.clone(),
            key: MasterKey::from_secret(*arc.key.secret()),
            key_id: arc.key_id,
            config: arc.config.clone(),
            cdc: Cdc::new(arc.key.gear_key(), arc.config.chunker),
            timing: arc.timing,
            cache: arc.cache.clone(),
        });
        change(&mut inner);
        Repository { inner: Arc::new(inner) }
    }

    /// Change the session heartbeat and staleness times (tests use short ones).
    pub fn with_session_timing(self, timing: SessionTiming) -> Repository {
        self.changed(|inner| inner.timing = timing)
    }

    /// Keep index files, manifests and tree packs in `cache` and read them
    /// from there ([`crate::cache`]).
    pub fn with_cache(self, cache: Cache) -> Repository {
        self.changed(|inner| inner.cache = Some(Arc::new(cache)))
    }

    /// The same repository read without a cache: `check` and `repair` judge
    /// what is stored, not a local copy of it.
    pub fn without_cache(self) -> Repository {
        self.changed(|inner| inner.cache = None)
    }

    /// The cache of this repository below `base` (see [`crate::cache`]).
    pub fn open_cache(&self, base: &std::path::Path) -> std::io::Result<Cache> {
        Cache::open(base, &self.inner.config.id)
    }

    pub(crate) fn cache(&self) -> Option<&Cache> {
        self.inner.cache.as_deref()
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.inner.backend
    }

    pub fn key(&self) -> &MasterKey {
        &self.inner.key
    }

    /// The key slot this repository was opened with.
    pub fn key_id(&self) -> KeyId {
        self.inner.key_id
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub fn cdc(&self) -> &Cdc {
        &self.inner.cdc
    }

    pub fn session_timing(&self) -> SessionTiming {
        self.inner.timing
    }

    pub fn location(&self) -> String {
        self.inner.backend.location()
    }

    // ---------------------------------------------------------------- objects

    /// Seal and store a content-addressed object (`index/`, `snapshots/`,
    /// `checkpoints/`, `prune/`); returns the hash that names it.
    pub(crate) fn put_sealed(
        &self,
        sealer: &Sealer,
        prefix: &str,
        kind: ObjectKind,
        payload: &[u8],
    ) -> Result<[u8; 32]> {
        let sealed = sealer.seal(kind, None, payload, Compression::Zstd(self.config().compression_level));
        let hash = object_hash(&sealed);
        let key = format!("{prefix}/{}", crate::id::hex(&hash));
        self.backend().put(&key, &sealed, PutMode::Overwrite)?;
        if let Some(cache) = self.cache() {
            cache.put(&key, &sealed);
        }
        Ok(hash)
    }

    /// Fetch and open a sealed object, checking that its name matches; from
    /// the cache when it has the object, into it when it is a kind kept
    /// there.
    pub(crate) fn get_sealed(&self, key: &str, kind: ObjectKind, cached: bool) -> Result<Vec<u8>> {
        let open = |bytes: &[u8]| {
            if let Some(name) = key.rsplit('/').next()
                && name.len() == 64
                && crate::id::hex(&object_hash(bytes)) != name
            {
                return Err(Error::corrupt(key, "content does not match its name (damaged or replaced)"));
            }
            crypto::open(self.key(), kind, None, bytes, None).map_err(|e| Error::corrupt(key, e))
        };
        // A kept copy matches its name (the cache checks that); one that
        // still does not open was kept under another key: fetch it.
        let cache = self.cache().filter(|_| cached);
        if let Some(plain) = cache.and_then(|c| c.get(key)).and_then(|bytes| open(&bytes).ok()) {
            return Ok(plain);
        }
        let bytes = self.backend().get(key)?;
        let plain = open(&bytes)?;
        if let Some(cache) = cache {
            cache.put(key, &bytes);
        }
        Ok(plain)
    }

    /// A tree pack, whole: from the cache, or fetched and kept there. A
    /// pack larger than `max` (a tree pack is a few MiB) is refused, not
    /// read: the caller reads the blobs it needs by range instead. Damage
    /// is not checked here: each blob is opened on its own.
    pub(crate) fn tree_pack(&self, id: &PackId, max: u64) -> Result<Vec<u8>> {
        let key = pack::pack_key(id);
        if let Some(bytes) = self.cache().and_then(|c| c.get(&key)) {
            return Ok(bytes);
        }
        let size = self.backend().head(&key)?.size;
        if size > max {
            return Err(Error::Invalid(format!("{key} is {size} bytes, too large to read whole")));
        }
        let bytes = self.backend().get(&key)?;
        if let Some(cache) = self.cache() {
            cache.put(&key, &bytes);
        }
        Ok(bytes)
    }

    /// Write the reserve (`docs/format.md` §1) if the repository is on a
    /// local file system and has none. A full disk leaves it for later.
    pub fn ensure_reserve(&self) {
        if self.backend().staging_dir().is_none() {
            return; // object stores have no disk of ours to fill
        }
        if self.backend().head(RESERVE_KEY).is_ok_and(|m| m.size == RESERVE_BYTES as u64) {
            return;
        }
        // Random bytes: a file system that compresses or deduplicates
        // zeros would keep no room for them.
        let mut bytes = vec![0u8; RESERVE_BYTES];
        if getrandom::fill(&mut bytes).is_ok() {
            let _ = self.backend().put(RESERVE_KEY, &bytes, PutMode::Overwrite);
        }
    }

    /// Delete the reserve, to make room on a full disk; whether there was one.
    pub fn release_reserve(&self) -> Result<bool> {
        match self.backend().delete(RESERVE_KEY) {
            Ok(()) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Every pack on the backend, with its size.
    pub fn present_packs(&self) -> Result<std::collections::HashMap<crate::id::PackId, u64>> {
        Ok(self
            .backend()
            .list("data/")?
            .into_iter()
            .filter_map(|m| m.key.rsplit('/').next().and_then(|n| n.parse().ok()).map(|id| (id, m.size)))
            .collect())
    }

    // ------------------------------------------------------------------ index

    /// Every index file, for an operation that rewrites the index (`who`:
    /// prune, repair packs): one that cannot be read is refused, since what
    /// it lists would be lost.
    pub fn intact_index_files(&self, who: &str) -> Result<IndexFiles> {
        let (files, unreadable) = self.load_index_files()?;
        if let Some(d) = unreadable.first() {
            return Err(Error::Invalid(format!(
                "{} is damaged ({}); {who} cannot tell what is stored. Run `backstop repair index` first",
                d.object, d.problem
            )));
        }
        Ok(files)
    }

    /// Every readable index file (superseded ones included), without the
    /// blob copies recorded as damaged (`damage`), and the files that could
    /// not be read.
    pub fn load_index_files(&self) -> Result<(IndexFiles, Vec<Damage>)> {
        // Both lists at once: one round trip instead of two.
        let (records, stored) = crate::util::join(|| self.damage_records(), || self.load_index_files_as_stored());
        let ((records, _), (mut files, damage)) = (records?, stored?);
        crate::damage::without_damaged(&mut files, &crate::damage::damaged_set(&records));
        Ok((files, damage))
    }

    fn load_index_files_as_stored(&self) -> Result<(IndexFiles, Vec<Damage>)> {
        for attempt in 0..3 {
            let metas = self.backend().list("index/")?;
            let ids: Vec<IndexId> =
                metas.iter().filter_map(|m| m.key.strip_prefix("index/").and_then(|s| s.parse().ok())).collect();
            if let Some(cache) = self.cache() {
                cache.retain("index/", &ids.iter().map(|id| id.to_string()).collect());
            }
            let loaded = parallel_map(&ids, 8, |id| {
                let key = format!("index/{id}");
                let result = self
                    .get_sealed(&key, ObjectKind::Index, true)
                    .and_then(|plain| IndexFile::decode(&plain).map_err(|e| Error::corrupt(key.clone(), e)));
                (*id, result)
            });
            let mut files = Vec::new();
            let mut damage = Vec::new();
            let mut vanished = false;
            for (id, result) in loaded {
                match result {
                    Ok(file) => files.push((id, file)),
                    // Prune replaced it between our list and get: list again.
                    Err(Error::Backend(e)) if e.is_not_found() => vanished = true,
                    Err(Error::Corrupt { object, reason }) => damage.push(Damage { object, problem: reason }),
                    Err(e) => return Err(e),
                }
            }
            if vanished && attempt < 2 {
                continue;
            }
            if let Some(cache) = self.cache() {
                let packs = files.iter().flat_map(|(_, f)| f.packs.iter().map(|p| p.id.to_string()));
                cache.retain("data/", &packs.collect());
            }
            return Ok((files, damage));
        }
        unreachable!("the loop returns on its last attempt")
    }

    /// Write one index of `packs` and `new_packs` that supersedes
    /// `replaced`, then delete those files (prune's compaction, repair).
    pub(crate) fn replace_index(
        &self,
        sealer: &Sealer,
        packs: impl IntoIterator<Item = (crate::id::PackId, Vec<crate::index::IndexBlob>)>,
        new_packs: Vec<crate::index::IndexPack>,
        replaced: &[IndexId],
    ) -> Result<()> {
        let mut kept: Vec<crate::index::IndexPack> =
            packs.into_iter().map(|(id, blobs)| crate::index::IndexPack { id, blobs }).collect();
        kept.sort_by_key(|p| p.id);
        kept.extend(new_packs);
        let file = IndexFile { supersedes: replaced.to_vec(), packs: kept };
        self.put_sealed(sealer, "index", ObjectKind::Index, &file.encode())?;
        for id in replaced {
            let key = format!("index/{id}");
            self.backend().delete(&key)?;
            if let Some(cache) = self.cache() {
                cache.evict(&key);
            }
        }
        Ok(())
    }

    /// Load and merge every index file. Unreadable files are skipped and
    /// reported; their packs then look unindexed (`check` says so and
    /// `repair index` rebuilds them).
    pub fn load_index_report(&self) -> Result<(Index, Vec<Damage>)> {
        let (files, damage) = self.load_index_files()?;
        Ok((Index::from_files(files), damage))
    }

    /// Load the index, failing on nothing: damaged index files are skipped.
    pub fn load_index(&self) -> Result<Index> {
        Ok(self.load_index_report()?.0)
    }

    // -------------------------------------------------------------- snapshots

    fn load_manifests(&self, prefix: &str) -> Result<(Manifests, Vec<Damage>)> {
        let metas = self.backend().list(&format!("{prefix}/"))?;
        let ids: Vec<SnapshotId> = metas
            .iter()
            .filter_map(|m| m.key.strip_prefix(prefix).and_then(|s| s.strip_prefix('/')).and_then(|s| s.parse().ok()))
            .collect();
        if let Some(cache) = self.cache() {
            cache.retain(&format!("{prefix}/"), &ids.iter().map(|id| id.to_string()).collect());
        }
        let loaded = parallel_map(&ids, 8, |id| (*id, self.load_manifest(prefix, id)));
        let mut out = Vec::new();
        let mut damage = Vec::new();
        for (id, result) in loaded {
            match result {
                Ok(s) => out.push((id, s)),
                Err(Error::Backend(e)) if e.is_not_found() => {} // forgotten meanwhile
                Err(Error::Corrupt { object, reason }) => damage.push(Damage { object, problem: reason }),
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| a.1.time.cmp(&b.1.time).then(a.0.cmp(&b.0)));
        Ok((out, damage))
    }

    fn load_manifest(&self, prefix: &str, id: &SnapshotId) -> Result<Snapshot> {
        let key = format!("{prefix}/{id}");
        let plain = self.get_sealed(&key, ObjectKind::Snapshot, true)?;
        serde_json::from_slice(&plain).map_err(|e| Error::corrupt(key, format!("not a valid manifest: {e}")))
    }

    /// All snapshots, oldest first, and the manifests that could not be read.
    pub fn snapshots_report(&self) -> Result<(Manifests, Vec<Damage>)> {
        self.load_manifests("snapshots")
    }

    /// All readable snapshots, oldest first.
    pub fn snapshots(&self) -> Result<Vec<(SnapshotId, Snapshot)>> {
        Ok(self.snapshots_report()?.0)
    }

    /// Checkpoints of unfinished backups, oldest first.
    pub fn checkpoints(&self) -> Result<Vec<(SnapshotId, Snapshot)>> {
        Ok(self.load_manifests("checkpoints")?.0)
    }

    pub fn checkpoints_report(&self) -> Result<(Manifests, Vec<Damage>)> {
        self.load_manifests("checkpoints")
    }

    /// Snapshot `id`, read from the repository itself (not a cached copy:
    /// without a listing, a copy could be of a snapshot since forgotten).
    pub fn load_snapshot(&self, id: &SnapshotId) -> Result<Snapshot> {
        let key = snapshot_key(id);
        let read = self.get_sealed(&key, ObjectKind::Snapshot, false).and_then(|plain| {
            serde_json::from_slice(&plain)
                .map_err(|e| Error::corrupt(key.clone(), format!("not a valid manifest: {e}")))
        });
        read.map_err(|e| match e {
            Error::Backend(b) if b.is_not_found() => Error::not_found(format!("snapshot {}", id.short())),
            e => e,
        })
    }

    /// Find a snapshot by `latest` or by a unique prefix of its id.
    pub fn find_snapshot(&self, spec: &str) -> Result<(SnapshotId, Snapshot)> {
        let snapshots = self.snapshots()?;
        if spec == "latest" {
            return snapshots
                .into_iter()
                .last()
                .ok_or_else(|| Error::not_found("snapshot \"latest\" (the repository has no snapshots)"));
        }
        let spec_lower = spec.to_ascii_lowercase();
        if spec_lower.is_empty() || !spec_lower.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::Invalid(format!(
                "{spec:?} is not a snapshot id; use `latest` or an id from `backstop snapshots`"
            )));
        }
        let mut matches = snapshots.into_iter().filter(|(id, _)| id.to_hex().starts_with(&spec_lower));
        match (matches.next(), matches.next()) {
            (Some(found), None) => Ok(found),
            (Some(_), Some(_)) => {
                Err(Error::Invalid(format!("snapshot id prefix {spec:?} is ambiguous; give more digits")))
            }
            (None, _) => Err(Error::not_found(format!("snapshot {spec:?}"))),
        }
    }

    pub(crate) fn save_manifest(&self, sealer: &Sealer, snapshot: &Snapshot, checkpoint: bool) -> Result<SnapshotId> {
        let json = serde_json::to_vec(snapshot).expect("snapshot serialises");
        let prefix = if checkpoint { "checkpoints" } else { "snapshots" };
        Ok(SnapshotId(self.put_sealed(sealer, prefix, ObjectKind::Snapshot, &json)?))
    }

    /// Delete a snapshot manifest (its data stays until prune), then the
    /// job logs stored beside it.
    pub fn delete_snapshot(&self, id: &SnapshotId) -> Result<()> {
        self.backend().delete(&snapshot_key(id))?;
        if let Some(cache) = self.cache() {
            cache.evict(&snapshot_key(id));
        }
        for meta in self.backend().list(&job_log_prefix(id))? {
            // Best effort: a log left behind by a crash here is harmless.
            let _ = self.backend().delete(&meta.key);
        }
        Ok(())
    }

    /// Store the log of the job that wrote snapshot `id` beside it
    /// (`logs/<snapshot>/<job>`), so it survives the service's catalog.
    pub fn put_job_log(&self, id: &SnapshotId, job: &str, log: &[u8]) -> Result<()> {
        let ok = !job.is_empty() && job.len() <= 64 && job.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !ok {
            return Err(Error::Invalid(format!("{job:?} is not a job id (letters, digits and '-')")));
        }
        let sealer = Sealer::new(self.key(), SessionId::random());
        let sealed = sealer.seal(ObjectKind::JobLog, None, log, Compression::Zstd(self.config().compression_level));
        self.backend().put(&format!("{}{job}", job_log_prefix(id)), &sealed, PutMode::Overwrite)?;
        Ok(())
    }

    /// The job logs stored beside snapshot `id`: (job id, log).
    pub fn job_logs(&self, id: &SnapshotId) -> Result<Vec<(String, Vec<u8>)>> {
        let mut out = Vec::new();
        for meta in self.backend().list(&job_log_prefix(id))? {
            let job = meta.key.rsplit('/').next().unwrap_or_default().to_string();
            let bytes = self.backend().get(&meta.key)?;
            let log = crypto::open(self.key(), ObjectKind::JobLog, None, &bytes, None)
                .map_err(|e| Error::corrupt(&meta.key, e))?;
            out.push((job, log));
        }
        Ok(out)
    }

    pub fn delete_checkpoint(&self, id: &SnapshotId) -> Result<()> {
        Ok(self.backend().delete(&checkpoint_key(id))?)
    }

    // ------------------------------------------------------------ blobs, trees

    /// Read one blob through the index.
    pub fn read_blob(&self, index: &Index, kind: BlobKind, id: &BlobId) -> Result<Vec<u8>> {
        let loc = index.lookup(kind, id).ok_or_else(|| {
            Error::corrupt(format!("{kind} blob {}", id.short()), "not in the index (its pack is missing or unindexed)")
        })?;
        pack::reader::load_blob(self.backend().as_ref(), self.key(), &loc, id)
    }

    pub fn load_tree(&self, index: &Index, id: &BlobId) -> Result<Tree> {
        let plain = self.read_blob(index, BlobKind::Tree, id)?;
        Tree::decode(&plain).map_err(|e| Error::corrupt(format!("tree {}", id.short()), e))
    }

    /// A file's content with every chunk list expanded.
    pub fn expand_content(&self, index: &Index, content: &[ContentRef]) -> Result<Vec<ContentRef>> {
        expand_lists(content, &|id| self.load_list(index, id))
    }

    /// The chunk list `id`, one level of it.
    pub(crate) fn load_list(&self, index: &Index, id: &BlobId) -> Result<Vec<ContentRef>> {
        let plain = self.read_blob(index, BlobKind::Tree, id)?;
        decode_list(&plain).map_err(|e| Error::corrupt(format!("chunk list {}", id.short()), e))
    }

    // -------------------------------------------------------------------- keys

    /// Every key slot with its id.
    pub fn keys(&self) -> Result<Vec<(KeyId, KeySlot)>> {
        let mut out = Vec::new();
        for meta in self.backend().list("keys/")? {
            let Some(id) = meta.key.strip_prefix("keys/").and_then(|s| s.parse::<KeyId>().ok()) else { continue };
            let bytes = self.backend().get(&meta.key)?;
            let slot: KeySlot = serde_json::from_slice(&bytes).map_err(|e| Error::corrupt(meta.key.clone(), e))?;
            out.push((id, slot));
        }
        out.sort_by_key(|k| k.1.created);
        Ok(out)
    }

    /// Add a key slot for another password.
    pub fn add_key(&self, password: &Password, kdf: KdfParams) -> Result<KeyId> {
        if password.is_empty() {
            return Err(Error::Invalid("the new password is empty".into()));
        }
        let slot = KeySlot::wrap(self.key(), password, kdf, &crate::util::hostname(), &crate::util::username());
        write_key_slot(self.backend().as_ref(), &slot)
    }

    /// Remove a key slot. The slot this repository was opened with, and the
    /// last slot, cannot be removed.
    pub fn remove_key(&self, id: &KeyId) -> Result<()> {
        let keys = self.keys()?;
        if !keys.iter().any(|(k, _)| k == id) {
            return Err(Error::not_found(format!("key {}", id.short())));
        }
        if *id == self.key_id() {
            return Err(Error::Invalid(
                "this is the key you opened the repository with; open it with another key to remove this one".into(),
            ));
        }
        if keys.len() <= 1 {
            return Err(Error::Invalid("cannot remove the repository's last key".into()));
        }
        Ok(self.backend().delete(&key_key(id))?)
    }

    /// Replace the current key slot with one for `new_password`.
    pub fn change_password(&self, new_password: &Password, kdf: KdfParams) -> Result<KeyId> {
        let new_id = self.add_key(new_password, kdf)?;
        self.backend().delete(&key_key(&self.key_id()))?;
        Ok(new_id)
    }
}

fn job_log_prefix(id: &SnapshotId) -> String {
    format!("logs/{}/", id.to_hex())
}

pub fn key_key(id: &KeyId) -> String {
    format!("keys/{id}")
}

fn write_key_slot(backend: &dyn Backend, slot: &KeySlot) -> Result<KeyId> {
    let json = serde_json::to_vec_pretty(slot).expect("key slot serialises");
    let id = KeyId(object_hash(&json));
    backend.put(&key_key(&id), &json, PutMode::Create)?;
    Ok(id)
}

/// `content` with every chunk list expanded, each list's one level given
/// by `list`: nested no deeper than 8, each covering the length its
/// reference says.
pub(crate) fn expand_lists(
    content: &[ContentRef],
    list: &dyn Fn(&BlobId) -> Result<Vec<ContentRef>>,
) -> Result<Vec<ContentRef>> {
    fn expand_into(
        content: &[ContentRef],
        list: &dyn Fn(&BlobId) -> Result<Vec<ContentRef>>,
        out: &mut Vec<ContentRef>,
        depth: u32,
    ) -> Result<()> {
        for c in content {
            match *c {
                ContentRef::List { id, len } => {
                    if depth > 8 {
                        return Err(Error::corrupt(format!("chunk list {}", id.short()), "nested too deeply"));
                    }
                    let inner = list(&id)?;
                    let covered: u64 = inner.iter().map(ContentRef::len).sum();
                    if covered != len {
                        return Err(Error::corrupt(
                            format!("chunk list {}", id.short()),
                            format!("covers {covered} bytes, its reference says {len}"),
                        ));
                    }
                    expand_into(&inner, list, out, depth + 1)?;
                }
                other => out.push(other),
            }
        }
        Ok(())
    }
    let mut out = Vec::with_capacity(content.len());
    expand_into(content, list, &mut out, 0)?;
    Ok(out)
}
