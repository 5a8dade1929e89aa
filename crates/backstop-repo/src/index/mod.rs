//! The index: where every blob is stored.
//!
//! [`Index`] is the read-only, merged view of all index files, kept as sorted
//! arrays of 48-byte entries (`docs/format.md` §6). [`WriteIndex`] layers a
//! writer's own new blobs on top and decides, atomically across threads,
//! which thread stores a blob that several found at once.

mod file;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

pub use file::{IndexBlob, IndexFile, IndexPack};

use crate::id::{BlobId, IndexId, PackId};
use crate::pack::{BlobKind, BlobLocation};

#[derive(Clone, Copy)]
struct Entry {
    id: [u8; 32],
    pack: u32,
    offset: u32,
    stored_len: u32,
    raw_len: u32,
}

const _: () = assert!(std::mem::size_of::<Entry>() == 48);

impl Entry {
    fn key(&self) -> u64 {
        u64::from_be_bytes(self.id[..8].try_into().expect("8 bytes"))
    }
}

/// The merged index of a repository.
#[derive(Default)]
pub struct Index {
    packs: Vec<PackId>,
    data: Vec<Entry>,
    tree: Vec<Entry>,
    /// The index files this was built from.
    files: Vec<IndexId>,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index")
            .field("packs", &self.packs.len())
            .field("data_blobs", &self.data.len())
            .field("tree_blobs", &self.tree.len())
            .field("files", &self.files.len())
            .finish()
    }
}

impl Index {
    /// Merge index files. Files superseded by another file in the set are
    /// skipped; a blob listed in several packs keeps one location.
    pub fn from_files(files: Vec<(IndexId, IndexFile)>) -> Index {
        let superseded: HashSet<IndexId> = files.iter().flat_map(|(_, f)| f.supersedes.iter().copied()).collect();
        let mut builder = IndexBuilder::default();
        let mut used = Vec::new();
        for (id, file) in files {
            if superseded.contains(&id) {
                continue;
            }
            used.push(id);
            for pack in &file.packs {
                builder.add_pack(pack);
            }
        }
        let mut index = builder.build();
        used.sort();
        index.files = used;
        index
    }

    pub fn files(&self) -> &[IndexId] {
        &self.files
    }

    fn entries(&self, kind: BlobKind) -> &[Entry] {
        match kind {
            BlobKind::Data => &self.data,
            BlobKind::Tree => &self.tree,
        }
    }

    pub fn lookup(&self, kind: BlobKind, id: &BlobId) -> Option<BlobLocation> {
        let entries = self.entries(kind);
        let i = find(entries, id)?;
        let e = &entries[i];
        Some(BlobLocation {
            pack: self.packs[e.pack as usize],
            kind,
            offset: e.offset,
            stored_len: e.stored_len,
            raw_len: e.raw_len,
        })
    }

    pub fn contains(&self, kind: BlobKind, id: &BlobId) -> bool {
        find(self.entries(kind), id).is_some()
    }

    pub fn packs(&self) -> &[PackId] {
        &self.packs
    }

    pub fn blob_count(&self) -> usize {
        self.data.len() + self.tree.len()
    }

    /// Every blob with its location.
    pub fn iter(&self) -> impl Iterator<Item = (BlobId, BlobLocation)> + '_ {
        [(BlobKind::Data, &self.data), (BlobKind::Tree, &self.tree)].into_iter().flat_map(move |(kind, entries)| {
            entries.iter().map(move |e| {
                (
                    BlobId(e.id),
                    BlobLocation {
                        pack: self.packs[e.pack as usize],
                        kind,
                        offset: e.offset,
                        stored_len: e.stored_len,
                        raw_len: e.raw_len,
                    },
                )
            })
        })
    }

    /// The tree-kind blobs of `packs`, by pack, in no particular order: a
    /// scan of every tree blob the index lists.
    pub fn tree_blobs_in(&self, packs: &HashSet<PackId>) -> HashMap<PackId, Vec<(BlobId, BlobLocation)>> {
        let numbers: HashSet<u32> =
            self.packs.iter().enumerate().filter(|(_, p)| packs.contains(p)).map(|(i, _)| i as u32).collect();
        let mut out: HashMap<PackId, Vec<(BlobId, BlobLocation)>> = HashMap::new();
        for e in self.tree.iter().filter(|e| numbers.contains(&e.pack)) {
            let pack = self.packs[e.pack as usize];
            let loc = BlobLocation {
                pack,
                kind: BlobKind::Tree,
                offset: e.offset,
                stored_len: e.stored_len,
                raw_len: e.raw_len,
            };
            out.entry(pack).or_default().push((BlobId(e.id), loc));
        }
        out
    }

    /// Bytes of memory the lookup tables use.
    pub fn memory_bytes(&self) -> usize {
        (self.data.capacity() + self.tree.capacity()) * std::mem::size_of::<Entry>()
            + self.packs.capacity() * std::mem::size_of::<PackId>()
    }
}

/// The blobs of every pack the index files in force list (files another
/// one supersedes are skipped), merged per pack: a pack may be in several.
pub fn packs_in_force(files: &[(IndexId, IndexFile)]) -> HashMap<PackId, Vec<IndexBlob>> {
    let superseded: HashSet<IndexId> = files.iter().flat_map(|(_, f)| f.supersedes.iter().copied()).collect();
    let mut packs: HashMap<PackId, Vec<IndexBlob>> = HashMap::new();
    for (_, file) in files.iter().filter(|(id, _)| !superseded.contains(id)) {
        for p in &file.packs {
            let blobs = packs.entry(p.id).or_default();
            for b in &p.blobs {
                if !blobs.iter().any(|x| x.kind == b.kind && x.id == b.id) {
                    blobs.push(*b);
                }
            }
        }
    }
    packs
}

/// Interpolation search on ids, which are uniformly distributed hashes, with
/// a fall-back to bisection so that a skewed (forged) index stays O(log n).
fn find(entries: &[Entry], id: &BlobId) -> Option<usize> {
    let key = u64::from_be_bytes(id.0[..8].try_into().expect("8 bytes"));
    let (mut lo, mut hi) = (0usize, entries.len());
    let mut rounds = 0;
    while lo < hi {
        let pos = if rounds < 6 {
            let (lk, hk) = (entries[lo].key(), entries[hi - 1].key());
            if key < lk || key > hk {
                return None;
            }
            if hk == lk { lo } else { lo + ((key - lk) as u128 * (hi - 1 - lo) as u128 / (hk - lk) as u128) as usize }
        } else {
            lo + (hi - lo) / 2
        };
        rounds += 1;
        // The first 8 bytes as a number decide nearly every comparison
        // without a call to memcmp (a tenth of an image incremental's CPU,
        // which looks up every chunk of the parent).
        match entries[pos].key().cmp(&key).then_with(|| entries[pos].id.cmp(&id.0)) {
            std::cmp::Ordering::Equal => return Some(pos),
            std::cmp::Ordering::Less => lo = pos + 1,
            std::cmp::Ordering::Greater => hi = pos,
        }
    }
    None
}

/// Collects packs, then sorts once.
#[derive(Default)]
pub struct IndexBuilder {
    packs: Vec<PackId>,
    pack_numbers: HashMap<PackId, u32>,
    data: Vec<Entry>,
    tree: Vec<Entry>,
}

impl IndexBuilder {
    pub fn add_pack(&mut self, pack: &IndexPack) {
        let number = *self.pack_numbers.entry(pack.id).or_insert_with(|| {
            self.packs.push(pack.id);
            (self.packs.len() - 1) as u32
        });
        for b in &pack.blobs {
            let entry =
                Entry { id: b.id.0, pack: number, offset: b.offset, stored_len: b.stored_len, raw_len: b.raw_len };
            match b.kind {
                BlobKind::Data => self.data.push(entry),
                BlobKind::Tree => self.tree.push(entry),
            }
        }
    }

    pub fn build(mut self) -> Index {
        for entries in [&mut self.data, &mut self.tree] {
            entries.sort_unstable_by_key(|e| e.id);
            entries.dedup_by(|a, b| a.id == b.id);
            entries.shrink_to_fit();
        }
        self.packs.shrink_to_fit();
        Index { packs: self.packs, data: self.data, tree: self.tree, files: Vec::new() }
    }
}

/// Where a blob this session stores is on its way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    /// A thread is compressing and sealing it.
    Claimed,
    /// It is in an open pack of this session.
    Packed,
    /// Its pack is uploaded.
    Stored(BlobLocation),
}

/// The answer to [`WriteIndex::claim`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The caller must store the blob, then call `packed` (or `release`).
    Mine,
    /// The blob is stored or in one of this session's packs.
    Known,
}

/// A writer's view: the loaded index plus blobs this session stored or is
/// storing. Shared by all threads of a backup.
#[derive(Debug)]
pub struct WriteIndex {
    base: Arc<Index>,
    added: Mutex<HashMap<(BlobKind, BlobId), Pending>>,
    settled: Condvar,
}

impl WriteIndex {
    pub fn new(base: Arc<Index>) -> WriteIndex {
        WriteIndex { base, added: Mutex::new(HashMap::new()), settled: Condvar::new() }
    }

    pub fn base(&self) -> &Arc<Index> {
        &self.base
    }

    fn added(&self) -> MutexGuard<'_, HashMap<(BlobKind, BlobId), Pending>> {
        self.added.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the blob is stored or being stored.
    pub fn contains(&self, kind: BlobKind, id: &BlobId) -> bool {
        self.base.contains(kind, id) || self.added().contains_key(&(kind, *id))
    }

    /// Decide who stores a blob. If another thread is storing it right now,
    /// wait until it is at least in a pack: a caller that gets `Known` may
    /// reference the blob, and the next flush of the packs covers it.
    pub fn claim(&self, kind: BlobKind, id: &BlobId) -> Claim {
        if self.base.contains(kind, id) {
            return Claim::Known;
        }
        let mut added = self.added();
        loop {
            match added.get(&(kind, *id)) {
                None => {
                    added.insert((kind, *id), Pending::Claimed);
                    return Claim::Mine;
                }
                Some(Pending::Claimed) => {
                    added = self.settled.wait(added).unwrap_or_else(|e| e.into_inner());
                }
                Some(_) => return Claim::Known,
            }
        }
    }

    /// The claimed blob is now in an open pack.
    pub fn packed(&self, kind: BlobKind, id: &BlobId) {
        let mut added = self.added();
        if let Some(p @ Pending::Claimed) = added.get_mut(&(kind, *id)) {
            *p = Pending::Packed;
        }
        drop(added);
        self.settled.notify_all();
    }

    /// Give up a claim after a failure, so another writer may store the blob.
    pub fn release(&self, kind: BlobKind, id: &BlobId) {
        let mut added = self.added();
        if matches!(added.get(&(kind, *id)), Some(Pending::Claimed)) {
            added.remove(&(kind, *id));
        }
        drop(added);
        self.settled.notify_all();
    }

    /// Record an uploaded pack's blobs.
    pub fn record(&self, pack: &IndexPack) {
        let mut added = self.added();
        for b in &pack.blobs {
            let loc = BlobLocation {
                pack: pack.id,
                kind: b.kind,
                offset: b.offset,
                stored_len: b.stored_len,
                raw_len: b.raw_len,
            };
            added.insert((b.kind, b.id), Pending::Stored(loc));
        }
        drop(added);
        self.settled.notify_all();
    }

    /// Where a blob is, if it is in the loaded index or an uploaded pack.
    pub fn lookup(&self, kind: BlobKind, id: &BlobId) -> Option<BlobLocation> {
        self.base.lookup(kind, id).or_else(|| match self.added().get(&(kind, *id)) {
            Some(Pending::Stored(loc)) => Some(*loc),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pack(seed: u8, n: usize) -> IndexPack {
        IndexPack {
            id: PackId(*blake3::hash(&[seed]).as_bytes()),
            blobs: (0..n)
                .map(|i| IndexBlob {
                    kind: if i % 5 == 0 { BlobKind::Tree } else { BlobKind::Data },
                    id: BlobId(*blake3::hash(&[seed, i as u8, (i >> 8) as u8]).as_bytes()),
                    offset: i as u32 * 100,
                    stored_len: 100,
                    raw_len: 90 + seed as u32,
                })
                .collect(),
        }
    }

    #[test]
    fn every_indexed_blob_is_found_and_others_are_not() {
        let packs: Vec<_> = (0..20).map(|s| pack(s, 300)).collect();
        let files = packs
            .iter()
            .enumerate()
            .map(|(i, p)| (IndexId([i as u8; 32]), IndexFile { supersedes: vec![], packs: vec![p.clone()] }))
            .collect();
        let index = Index::from_files(files);
        for p in &packs {
            for b in &p.blobs {
                let loc = index.lookup(b.kind, &b.id).expect("indexed blob found");
                assert_eq!((loc.pack, loc.offset, loc.raw_len), (p.id, b.offset, b.raw_len));
                let other = if b.kind == BlobKind::Data { BlobKind::Tree } else { BlobKind::Data };
                assert!(!index.contains(other, &b.id), "kinds are separate");
            }
        }
        for i in 0..1000u32 {
            assert!(!index.contains(BlobKind::Data, &BlobId(*blake3::hash(&i.to_le_bytes()).as_bytes())));
        }
        assert_eq!(index.blob_count(), 20 * 300);
    }

    #[test]
    fn superseded_files_are_ignored_and_union_is_order_independent() {
        let a = (IndexId([1; 32]), IndexFile { supersedes: vec![], packs: vec![pack(1, 10)] });
        let b = (IndexId([2; 32]), IndexFile { supersedes: vec![], packs: vec![pack(2, 10)] });
        let compacted = (IndexId([3; 32]), IndexFile { supersedes: vec![IndexId([1; 32])], packs: vec![pack(3, 10)] });
        let forward = Index::from_files(vec![a.clone(), b.clone(), compacted.clone()]);
        let backward = Index::from_files(vec![compacted, b, a]);
        assert_eq!(forward.files(), backward.files());
        assert_eq!(forward.files(), &[IndexId([2; 32]), IndexId([3; 32])]);
        assert!(!forward.contains(pack(1, 10).blobs[1].kind, &pack(1, 10).blobs[1].id));
        assert_eq!(forward.blob_count(), backward.blob_count());
    }

    #[test]
    fn claims_are_exclusive_until_released() {
        let index = WriteIndex::new(Arc::new(Index::default()));
        let id = BlobId([7; 32]);
        assert_eq!(index.claim(BlobKind::Data, &id), Claim::Mine);
        assert_eq!(index.claim(BlobKind::Tree, &id), Claim::Mine, "kinds are separate");
        index.release(BlobKind::Data, &id);
        assert_eq!(index.claim(BlobKind::Data, &id), Claim::Mine, "released claims can be taken again");
        index.packed(BlobKind::Data, &id);
        assert_eq!(index.claim(BlobKind::Data, &id), Claim::Known);
        assert!(index.lookup(BlobKind::Data, &id).is_none(), "packed but not yet uploaded");
    }

    #[test]
    fn a_second_claimant_waits_until_the_blob_is_packed() {
        let index = Arc::new(WriteIndex::new(Arc::new(Index::default())));
        let id = BlobId([9; 32]);
        assert_eq!(index.claim(BlobKind::Data, &id), Claim::Mine);
        let waiter = {
            let index = index.clone();
            std::thread::spawn(move || {
                let claim = index.claim(BlobKind::Data, &id);
                (claim, index.contains(BlobKind::Data, &id))
            })
        };
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!waiter.is_finished(), "the second claimant waits");
        index.packed(BlobKind::Data, &id);
        assert_eq!(waiter.join().unwrap(), (Claim::Known, true));
    }

    #[test]
    fn lookup_memory_is_under_64_bytes_per_blob_at_a_million_blobs() {
        let mut builder = IndexBuilder::default();
        // 1M blobs in 1000 packs of 1000.
        for p in 0..1000u32 {
            let blobs = (0..1000u32)
                .map(|i| IndexBlob {
                    kind: BlobKind::Data,
                    id: BlobId(*blake3::hash(&(p * 1000 + i).to_le_bytes()).as_bytes()),
                    offset: i,
                    stored_len: 1,
                    raw_len: 1,
                })
                .collect();
            builder.add_pack(&IndexPack { id: PackId(*blake3::hash(&p.to_be_bytes()).as_bytes()), blobs });
        }
        let index = builder.build();
        assert_eq!(index.blob_count(), 1_000_000);
        let per_blob = index.memory_bytes() as f64 / 1e6;
        assert!(per_blob <= 64.0, "{per_blob} bytes per blob");
        assert!(index.contains(BlobKind::Data, &BlobId(*blake3::hash(&123_456u32.to_le_bytes()).as_bytes())));
    }
}
