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
    /// Snapshots that still need a blob no intact copy of which is stored.
    pub affected_snapshots: Vec<String>,
    pub records_removed: usize,
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
    let (files, unreadable) = repo.load_index_files()?;
    if let Some(d) = unreadable.first() {
        return Err(Error::Invalid(format!(
            "{} is damaged ({}); run `backstop repair index` first",
            d.object, d.problem
        )));
    }
    let all_index_ids: Vec<IndexId> = files.iter().map(|(id, _)| *id).collect();
    let superseded: HashSet<IndexId> = files.iter().flat_map(|(_, f)| f.supersedes.iter().copied()).collect();
    let in_force: Vec<(IndexId, IndexFile)> = files.into_iter().filter(|(id, _)| !superseded.contains(id)).collect();
    let index = Index::from_files(in_force.clone());
    let present = repo.present_packs()?;

    // The packs in force, merged per pack (a pack may be in several files).
    let mut packs: HashMap<PackId, Vec<IndexBlob>> = HashMap::new();
    for (_, file) in &in_force {
        for p in &file.packs {
            let blobs = packs.entry(p.id).or_default();
            for b in &p.blobs {
                if !blobs.iter().any(|x| x.kind == b.kind && x.id == b.id) {
                    blobs.push(*b);
                }
            }
        }
    }
    // Stored intact somewhere other than the damaged packs.
    let elsewhere = |b: &IndexBlob| index.lookup(b.kind, &b.id).is_some_and(|l| !damaged_packs.contains(&l.pack));

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
            if elsewhere(b) {
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
    report.blobs_lost = lost.len();
    report.blobs_resupplied =
        lost.iter().filter(|b| index.lookup(b.kind, &b.id).is_some_and(|l| !damaged_packs.contains(&l.pack))).count();

    // The index without the damaged packs, with the copies made.
    let mut kept: Vec<IndexPack> = packs
        .into_iter()
        .filter(|(id, _)| !damaged_packs.contains(id))
        .map(|(id, blobs)| IndexPack { id, blobs })
        .collect();
    kept.sort_by_key(|p| p.id);
    kept.extend(new_packs);
    let file = IndexFile { supersedes: all_index_ids.clone(), packs: kept };
    repo.put_sealed(session.sealer(), "index", ObjectKind::Index, &file.encode())?;
    for id in &all_index_ids {
        repo.backend().delete(&format!("index/{id}"))?;
    }
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
