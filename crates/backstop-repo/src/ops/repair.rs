//! Repairs: rebuild the index from the packs' own headers; salvage the
//! intact blobs of damaged packs and remove the packs.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde::Serialize;

use super::used::snapshots_missing_blobs;
use crate::backup::saver::Saver;
use crate::crypto::ObjectKind;
use crate::damage::{DamagedBlob, damaged_set};
use crate::error::{Error, Result};
use crate::id::{IndexId, PackId};
use crate::index::{Index, IndexBlob, IndexFile, IndexPack, WriteIndex};
use crate::pack::{self, BlobLocation};
use crate::progress::{CancelToken, Progress};
use crate::repository::Repository;
use crate::session::{Session, list_sessions};
use crate::util::parallel_map;

#[derive(Debug, Clone, Default, Serialize)]
pub struct RepairReport {
    pub packs: usize,
    pub blobs: usize,
    /// Packs whose header could not be read (left out of the index; check
    /// names them, prune removes them).
    pub unreadable: Vec<String>,
    pub index_files_replaced: usize,
}

/// Read every pack's header and write one index describing them all, which
/// supersedes (and replaces) every existing index file.
pub fn rebuild_index(repo: &Repository, progress: &dyn Progress) -> Result<RepairReport> {
    let session = Session::start(repo, "repair")?;
    let packs: Vec<(PackId, u64)> = repo
        .backend()
        .list("data/")?
        .into_iter()
        .filter_map(|m| m.key.rsplit('/').next().and_then(|n| n.parse().ok()).map(|id| (id, m.size)))
        .collect();
    let old: Vec<IndexId> =
        repo.backend().list("index/")?.into_iter().filter_map(|m| m.key.strip_prefix("index/")?.parse().ok()).collect();
    progress.total(packs.len() as u64, 0);
    let headers = parallel_map(&packs, 8, |(id, size)| {
        let r = pack::reader::read_header(repo.backend().as_ref(), repo.key(), id, *size);
        progress.advance(1, 0);
        (*id, r)
    });
    let mut report = RepairReport::default();
    // Copies recorded as damaged stay out of the rebuilt index too.
    let damaged = damaged_set(&repo.damage_records()?.0);
    let mut file = IndexFile { supersedes: old.clone(), packs: Vec::new() };
    for (id, result) in headers {
        match result {
            Ok(entries) => {
                let mut offset = 0u32;
                let blobs: Vec<IndexBlob> = entries
                    .iter()
                    .map(|e| {
                        let b =
                            IndexBlob { kind: e.kind, id: e.id, offset, stored_len: e.stored_len, raw_len: e.raw_len };
                        offset += e.stored_len;
                        b
                    })
                    .filter(|b| !damaged.contains(&DamagedBlob { kind: b.kind, id: b.id, pack: id }))
                    .collect();
                report.blobs += blobs.len();
                report.packs += 1;
                file.packs.push(IndexPack { id, blobs });
            }
            Err(e) => report.unreadable.push(e.to_string()),
        }
    }
    repo.put_sealed(session.sealer(), "index", ObjectKind::Index, &file.encode())?;
    for id in &old {
        repo.backend().delete(&format!("index/{id}"))?;
    }
    report.index_files_replaced = old.len();
    session.end()?;
    Ok(report)
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PackRepairReport {
    /// Packs with recorded damage that were removed (their intact blobs copied first).
    pub packs_removed: Vec<String>,
    /// Intact blobs copied out of them (those stored nowhere else).
    pub blobs_salvaged: usize,
    /// Blobs of which no intact copy was found in them.
    pub blobs_lost: usize,
    /// Of those, the ones a later backup stored again: nothing needs them from the damaged pack.
    pub blobs_resupplied: usize,
    /// Each lost blob, and whether a later backup stored it again.
    pub lost: Vec<LostBlob>,
    /// Snapshots that still need a blob no intact copy of which is stored.
    pub affected_snapshots: Vec<String>,
    pub records_removed: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct LostBlob {
    pub blob: String,
    /// The damaged (or missing) pack it was in.
    pub pack: String,
    /// A later backup stored an intact copy: the snapshots that need it are whole.
    pub resupplied: bool,
}

/// Repair the packs that damage records name: copy each one's intact blobs
/// that are stored nowhere else into new packs, write an index without the
/// damaged packs that supersedes every index file, delete the packs and
/// their records, and report which snapshots still need a lost blob.
/// Runs alone: any other live session makes it refuse.
pub fn repair_packs(repo: &Repository, progress: &dyn Progress, cancel: &CancelToken) -> Result<PackRepairReport> {
    let session = Session::start(repo, "repair")?;
    let result = repair_packs_in(repo, &session, progress, cancel);
    let _ = session.end();
    result
}

fn repair_packs_in(
    repo: &Repository,
    session: &Session,
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<PackRepairReport> {
    if let Some(other) = list_sessions(repo)?.into_iter().find(|s| !s.stale && s.info.id != session.id()) {
        return Err(Error::Busy(format!(
            "a {} is running (host {}, pid {}); repair packs runs alone: try again when it has finished",
            other.info.kind, other.info.hostname, other.info.pid
        )));
    }
    let mut report = PackRepairReport::default();
    let (records, _) = repo.damage_records()?;
    let damaged = damaged_set(&records);
    let damaged_packs: HashSet<PackId> = damaged.iter().map(|b| b.pack).collect();
    if damaged_packs.is_empty() {
        progress.info("no damage is recorded: run `backstop check --read-data` to look for it");
        return Ok(report);
    }
    let files = repo.intact_index_files("repair packs")?;
    let all_index_ids: Vec<IndexId> = files.iter().map(|(id, _)| *id).collect();
    let packs = crate::index::packs_in_force(&files);
    let index = Index::from_files(files);
    let present = repo.present_packs()?;
    // Stored intact somewhere other than the damaged packs.
    let elsewhere = |kind: crate::pack::BlobKind, id: &crate::id::BlobId| {
        index.lookup(kind, id).is_some_and(|l| !damaged_packs.contains(&l.pack))
    };

    let saver =
        Saver::start(repo, session.sealer().clone(), Arc::new(WriteIndex::new(Arc::new(Index::default()))), 2, cancel)?;
    let mut lost: Vec<DamagedBlob> = damaged.iter().copied().collect();
    for pack in &damaged_packs {
        if cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        let Some(blobs) = packs.get(pack) else { continue };
        let key = pack::pack_key(pack);
        let bytes = if present.contains_key(pack) { repo.backend().get(&key).ok() } else { None };
        for b in blobs {
            if elsewhere(b.kind, &b.id) {
                continue;
            }
            let loc = BlobLocation {
                pack: *pack,
                kind: b.kind,
                offset: b.offset,
                stored_len: b.stored_len,
                raw_len: b.raw_len,
            };
            let sealed =
                bytes.as_ref().and_then(|bytes| bytes.get(b.offset as usize..(b.offset + b.stored_len) as usize));
            match sealed {
                Some(sealed) if pack::reader::open_blob(repo.key(), &loc, &b.id, sealed).is_ok() => {
                    saver.save_sealed(b.kind, b.id, sealed, b.raw_len as usize)?;
                    report.blobs_salvaged += 1;
                }
                _ => lost.push(DamagedBlob { kind: b.kind, id: b.id, pack: *pack }),
            }
        }
        progress.info(&format!("{key}: intact blobs copied out"));
    }
    saver.flush()?;
    let new_packs = saver.take_uploaded();
    drop(saver);

    lost.sort_by_key(|b| (b.kind, b.id));
    lost.dedup_by_key(|b| (b.kind, b.id));
    report.lost = lost
        .iter()
        .map(|b| LostBlob {
            blob: format!("{} blob {}", b.kind, b.id),
            pack: pack::pack_key(&b.pack),
            resupplied: elsewhere(b.kind, &b.id),
        })
        .collect();
    report.blobs_lost = report.lost.len();
    report.blobs_resupplied = report.lost.iter().filter(|l| l.resupplied).count();

    // The index without the damaged packs, with the copies made.
    let kept = packs.into_iter().filter(|(id, _)| !damaged_packs.contains(id));
    repo.replace_index(session.sealer(), kept, new_packs, &all_index_ids)?;
    for pack in &damaged_packs {
        if present.contains_key(pack) {
            repo.backend().delete(&pack::pack_key(pack))?;
            report.packs_removed.push(pack::pack_key(pack));
        }
    }
    let remaining = repo.present_packs()?.into_keys().collect();
    report.records_removed = repo.forget_damage_of_deleted_packs(&remaining)?;

    let index = repo.load_index()?;
    let roots: Vec<_> = repo.snapshots()?.iter().map(|(id, s)| (format!("snapshot {}", id.short()), s.tree)).collect();
    report.affected_snapshots =
        snapshots_missing_blobs(repo, &index, &roots).into_iter().map(|(label, _)| label).collect();
    Ok(report)
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct SnapshotRepairReport {
    pub repaired: Vec<RepairedSnapshot>,
    /// Originals forgotten once their repaired copy was written.
    pub forgotten: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct RepairedSnapshot {
    pub old: String,
    pub new: String,
    /// Files left out (their data is lost) and directories emptied (their
    /// tree is lost), by path.
    pub removed: Vec<String>,
}

/// Tag of a snapshot written by `repair snapshots`.
pub const REPAIRED_TAG: &str = "repaired";

/// For every snapshot that needs a blob no intact copy of which is stored,
/// write a copy without what cannot be restored: files whose data is lost
/// are left out, directories whose tree is lost become empty. The copy
/// keeps the original's time, host and paths, with the tag `repaired`;
/// with `forget`, the original is forgotten once the copy is written (and
/// prune can run again). Run `repair packs` first, and back the data up
/// again if it still exists: a blob stored again heals a snapshot without
/// losing anything.
pub fn repair_snapshots(
    repo: &Repository,
    forget: bool,
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<SnapshotRepairReport> {
    let session = Session::start(repo, "repair")?;
    let result = repair_snapshots_in(repo, &session, forget, progress, cancel);
    let _ = session.end();
    result
}

fn repair_snapshots_in(
    repo: &Repository,
    session: &Session,
    forget: bool,
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<SnapshotRepairReport> {
    use crate::tree::Tree;
    let index = Arc::new(repo.load_index()?);
    let snapshots = repo.snapshots()?;
    let roots: Vec<(String, crate::id::BlobId)> = snapshots.iter().map(|(id, s)| (id.to_string(), s.tree)).collect();
    let broken: HashSet<String> =
        snapshots_missing_blobs(repo, &index, &roots).into_iter().map(|(label, _)| label).collect();
    let mut report = SnapshotRepairReport::default();
    if broken.is_empty() {
        progress.info("every snapshot has all it needs");
        return Ok(report);
    }
    let saver = Saver::start(repo, session.sealer().clone(), Arc::new(WriteIndex::new(index.clone())), 2, cancel)?;
    let mut memo = HashMap::new();
    let mut copies = Vec::new();
    for (id, snapshot) in snapshots.iter().filter(|(id, _)| broken.contains(&id.to_string())) {
        if cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        let mut removed = Vec::new();
        let tree = rewrite_tree(repo, &index, &saver, snapshot.tree, "", &mut removed, &mut memo)?
            .unwrap_or(saver.save(crate::pack::BlobKind::Tree, &Tree { nodes: Vec::new() }.encode())?.0);
        let mut copy = snapshot.clone();
        copy.tree = tree;
        if !copy.tags.iter().any(|t| t == REPAIRED_TAG) {
            copy.tags.push(REPAIRED_TAG.to_string());
        }
        copies.push((*id, copy, removed));
    }
    // Trees first, then the manifests that need them (format §12).
    saver.flush()?;
    saver.write_index(Vec::new())?;
    drop(saver);
    for (old, copy, removed) in copies {
        let new = repo.save_manifest(session.sealer(), &copy, false)?;
        progress.info(&format!(
            "snapshot {} repaired as {}: {} entries left out",
            old.short(),
            new.short(),
            removed.len()
        ));
        if forget {
            repo.delete_snapshot(&old)?;
            report.forgotten += 1;
        }
        report.repaired.push(RepairedSnapshot { old: old.to_string(), new: new.to_string(), removed });
    }
    Ok(report)
}

/// Tree `id` (at `path`) without what cannot be restored; `None` if the
/// tree itself is lost. Trees that need no change keep their id.
fn rewrite_tree(
    repo: &Repository,
    index: &Index,
    saver: &Saver,
    id: crate::id::BlobId,
    path: &str,
    removed: &mut Vec<String>,
    memo: &mut HashMap<crate::id::BlobId, Vec<crate::id::BlobId>>,
) -> Result<Option<crate::id::BlobId>> {
    use crate::tree::{ContentRef, NodeData, Tree};
    if super::used::missing_under(repo, index, id, memo).is_empty() {
        return Ok(Some(id));
    }
    let Ok(mut tree) = repo.load_tree(index, &id) else { return Ok(None) };
    let mut nodes = Vec::with_capacity(tree.nodes.len());
    for mut node in std::mem::take(&mut tree.nodes) {
        let name = String::from_utf8_lossy(&node.name).into_owned();
        let at = format!("{path}/{name}");
        match &mut node.data {
            NodeData::Dir { subtree } => match rewrite_tree(repo, index, saver, *subtree, &at, removed, memo)? {
                Some(new) => *subtree = new,
                None => {
                    removed.push(format!("{at}/ (emptied: its directory tree is lost)"));
                    *subtree = saver.save(crate::pack::BlobKind::Tree, &Tree { nodes: Vec::new() }.encode())?.0;
                }
            },
            NodeData::File { content, .. } => {
                let lost = content.iter().any(|c| match c {
                    ContentRef::Data { id, .. } => !index.contains(crate::pack::BlobKind::Data, id),
                    ContentRef::List { id, .. } => !super::used::missing_under(repo, index, *id, memo).is_empty(),
                    ContentRef::Zero { .. } => false,
                });
                if lost {
                    removed.push(at);
                    continue;
                }
            }
            _ => {}
        }
        nodes.push(node);
    }
    tree.nodes = nodes;
    Ok(Some(saver.save(crate::pack::BlobKind::Tree, &tree.encode())?.0))
}
