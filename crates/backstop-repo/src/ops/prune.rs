//! Prune: remove data no snapshot needs, without a lock that blocks backups.
//!
//! Two phases (`docs/format.md` §13). **Mark** finds the packs to remove
//! (unused, unindexed leftovers, and half-empty packs after copying their
//! live blobs into new packs), writes a compacted index without them, and
//! records a deletion plan with the sessions that were live. **Delete** runs
//! when the plan's grace period has passed and each of those sessions has
//! ended: packs that a later index or snapshot came to need are kept, the
//! rest are deleted. A `prune` run finishes any plan that is ready, marks,
//! and deletes at once when nothing else was running.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::used::{UsedBlobs, collect_used};
use crate::backup::saver::Saver;
use crate::crypto::ObjectKind;
use crate::error::{Error, Result};
use crate::id::{BlobId, IndexId, PackId, PlanId, SessionId};
use crate::index::{Index, IndexBlob, IndexFile, IndexPack, WriteIndex};
use crate::pack::{self, BlobKind};
use crate::progress::{CancelToken, Progress};
use crate::repository::Repository;
use crate::session::{Session, list_sessions};

#[derive(Debug, Clone)]
pub struct PruneOptions {
    /// Wait at least this long between marking and deleting.
    pub grace: Duration,
    /// Repack packs of which more than this fraction is unused.
    pub max_unused: f64,
    /// Compute and report, change nothing.
    pub dry_run: bool,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions { grace: Duration::ZERO, max_unused: 0.1, dry_run: false }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PruneReport {
    pub dry_run: bool,
    pub packs: usize,
    pub blobs_used: usize,
    pub blobs_unused: usize,
    /// Packs with no used blob.
    pub packs_unused: usize,
    /// Packs in no index (left by interrupted backups).
    pub packs_unindexed: usize,
    /// Packs whose used blobs were copied into new packs.
    pub packs_repacked: usize,
    pub bytes_repacked: u64,
    /// Bytes of the packs marked for deletion.
    pub bytes_marked: u64,
    pub checkpoints_removed: usize,
    /// Markers of sessions whose processes are gone (killed, or silent past
    /// the stale age), removed.
    pub sessions_removed: usize,
    /// The plan written by this run.
    pub plan: Option<PlanId>,
    /// Packs deleted by this run (from any plan).
    pub packs_deleted: usize,
    pub bytes_deleted: u64,
    /// Marked packs kept after all, because something came to need them.
    pub packs_kept: usize,
    /// Plans that still wait for running sessions or their grace period.
    pub plans_pending: usize,
}

/// A deletion plan, stored sealed under `prune/<id>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct DeletionPlan {
    version: u32,
    created: DateTime<Utc>,
    not_before: DateTime<Utc>,
    /// Sessions live at mark time; deletion waits until each has ended.
    sessions: Vec<SessionId>,
    /// Snapshot and checkpoint keys present at mark time.
    manifests: Vec<String>,
    packs: Vec<PackId>,
}

pub fn run(
    repo: &Repository,
    options: &PruneOptions,
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<PruneReport> {
    let (session, full) = Session::start_on_full_disk(repo, "prune", progress)?;
    // On a full disk there is no room for repacked copies: only packs
    // nothing uses are deleted; the next prune repacks.
    let options = if full { &PruneOptions { max_unused: f64::INFINITY, ..options.clone() } } else { options };
    if full {
        progress.info("only packs nothing uses are deleted this time; run prune again to repack the rest");
    }
    let result = run_in_session(repo, &session, options, progress, cancel);
    let _ = session.end();
    // Room for the next full disk's prune, if this one made some.
    if !options.dry_run {
        repo.ensure_reserve();
    }
    result
}

fn run_in_session(
    repo: &Repository,
    session: &Session,
    options: &PruneOptions,
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<PruneReport> {
    let mut report = PruneReport { dry_run: options.dry_run, ..Default::default() };
    ensure_exclusive(repo, session, (!options.dry_run).then_some(&mut report))?;
    let already_planned =
        if options.dry_run { HashSet::new() } else { finish_pending(repo, session, progress, &mut report)? };
    if cancel.is_cancelled() {
        return Err(Error::Cancelled);
    }
    if let Some((id, plan)) = mark(repo, session, options, &already_planned, progress, cancel, &mut report)? {
        report.plan = Some(id);
        report.plans_pending += 1;
        if finish_plan(repo, session, &id, &plan, progress, &mut report)? {
            report.plans_pending -= 1;
        }
    }
    if report.packs_deleted > 0 {
        // Damage records of packs that are gone name nothing any more.
        let present = repo.present_packs()?.into_keys().collect();
        repo.forget_damage_of_deleted_packs(&present)?;
    }
    Ok(report)
}

/// One prune at a time: of several live prune sessions the oldest proceeds.
/// With a `report`, the markers of stale sessions are removed as they are
/// seen (they count for nothing already; a process that was only cut off
/// writes its marker again and checks its packs before it commits).
fn ensure_exclusive(repo: &Repository, session: &Session, mut report: Option<&mut PruneReport>) -> Result<()> {
    let me = session.info();
    for other in list_sessions(repo)? {
        let o = &other.info;
        if other.stale && o.id != me.id {
            if let Some(report) = report.as_deref_mut() {
                match repo.backend().delete(&crate::session::session_key(&o.id)) {
                    Ok(()) => report.sessions_removed += 1,
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e.into()),
                }
            }
            continue;
        }
        if o.kind != "prune" || o.id == me.id {
            continue;
        }
        if (o.started, o.id) < (me.started, me.id) {
            return Err(Error::Busy(format!(
                "another prune is running (host {}, pid {}, since {}); try again when it has finished",
                o.hostname, o.pid, o.started
            )));
        }
    }
    Ok(())
}

fn plan_key(id: &PlanId) -> String {
    format!("prune/{id}")
}

/// Finish the plans that are ready; returns the packs of those still pending.
fn finish_pending(
    repo: &Repository,
    session: &Session,
    progress: &dyn Progress,
    report: &mut PruneReport,
) -> Result<HashSet<PackId>> {
    let mut pending = HashSet::new();
    for meta in repo.backend().list("prune/")? {
        let Some(id) = meta.key.strip_prefix("prune/").and_then(|s| s.parse::<PlanId>().ok()) else { continue };
        let plan = repo
            .get_sealed(&meta.key, ObjectKind::Plan, false)
            .and_then(|p| serde_json::from_slice::<DeletionPlan>(&p).map_err(|e| Error::corrupt(meta.key.clone(), e)));
        match plan {
            Ok(plan) => {
                if !finish_plan(repo, session, &id, &plan, progress, report)? {
                    report.plans_pending += 1;
                    pending.extend(plan.packs.iter().copied());
                }
            }
            Err(Error::Corrupt { object, reason }) => {
                // A plan only records intent; its packs are unindexed and the
                // next mark finds them again.
                progress.info(&format!("dropping damaged deletion plan {object}: {reason}"));
                repo.backend().delete(&meta.key)?;
            }
            Err(Error::Backend(e)) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(pending)
}

fn manifest_keys(repo: &Repository) -> Result<Vec<String>> {
    let mut keys: Vec<String> = repo.backend().list("snapshots/")?.into_iter().map(|m| m.key).collect();
    keys.extend(repo.backend().list("checkpoints/")?.into_iter().map(|m| m.key));
    keys.sort();
    Ok(keys)
}

/// The mark phase. Returns the plan it wrote, if there is anything to delete.
fn mark(
    repo: &Repository,
    session: &Session,
    options: &PruneOptions,
    already_planned: &HashSet<PackId>,
    progress: &dyn Progress,
    cancel: &CancelToken,
    report: &mut PruneReport,
) -> Result<Option<(PlanId, DeletionPlan)>> {
    progress.info("loading index and snapshots");
    let files = repo.intact_index_files("prune")?;
    let all_index_ids: Vec<IndexId> = files.iter().map(|(id, _)| *id).collect();
    let index = Index::from_files(files.clone());
    let manifests_at_mark = manifest_keys(repo)?;
    let roots = roots(repo, options, report)?;

    progress.info("finding used data");
    let used = collect_used(repo, &index, &roots);
    if let Some(d) = used.damage.first() {
        return Err(Error::Invalid(format!(
            "{} is damaged or missing ({}); prune refuses to run on a damaged repository. Run `backstop check`; \
             back the data up again if it still exists, else `backstop repair packs` and `backstop repair \
             snapshots --forget`",
            d.object, d.problem
        )));
    }
    if cancel.is_cancelled() {
        return Err(Error::Cancelled);
    }

    let present = repo.present_packs()?;
    let packs = crate::index::packs_in_force(&files);
    let Sorted { mut doomed, repack } = sort_packs(&index, &used, &packs, &present, already_planned, options, report);
    if options.dry_run || (doomed.is_empty() && repack.is_empty()) {
        return Ok(None);
    }
    let new_packs =
        if repack.is_empty() { Vec::new() } else { copy_live_blobs(repo, session, &repack, progress, cancel)? };
    doomed.extend(repack.iter().map(|(pack, _)| *pack));

    // The compacted index: every pack in force that is not doomed, plus the
    // new ones; it supersedes every index file we read.
    let doomed_set: HashSet<PackId> = doomed.iter().copied().collect();
    let kept = packs.into_iter().filter(|(id, _)| !doomed_set.contains(id) && present.contains_key(id));
    repo.replace_index(session.sealer(), kept, new_packs, &all_index_ids)?;

    // Sessions that may have loaded the old index are live now, or ended.
    let sessions: Vec<SessionId> =
        list_sessions(repo)?.into_iter().filter(|s| !s.stale && s.info.id != session.id()).map(|s| s.info.id).collect();
    let now = Utc::now();
    let plan = DeletionPlan {
        version: 1,
        created: now,
        not_before: now + chrono::Duration::from_std(options.grace).unwrap_or(chrono::Duration::MAX),
        sessions,
        manifests: manifests_at_mark,
        packs: doomed,
    };
    let json = serde_json::to_vec(&plan).expect("plan serialises");
    let id = PlanId(repo.put_sealed(session.sealer(), "prune", ObjectKind::Plan, &json)?);
    Ok(Some((id, plan)))
}

/// The trees whose data stays: every snapshot's, and every checkpoint's
/// that no newer snapshot of the same source superseded (or whose backup
/// still runs). Superseded checkpoints are deleted (counted in `report`).
fn roots(repo: &Repository, options: &PruneOptions, report: &mut PruneReport) -> Result<Vec<(String, BlobId)>> {
    let (snapshots, damaged) = repo.snapshots_report()?;
    let (checkpoints, damaged_cp) = repo.checkpoints_report()?;
    if let Some(d) = damaged.iter().chain(&damaged_cp).next() {
        return Err(Error::Invalid(format!(
            "{} is damaged ({}); prune cannot tell what it needs. Forget it first if it cannot be recovered",
            d.object, d.problem
        )));
    }
    // Checkpoints of finished or abandoned backups that a newer snapshot of
    // the same source has superseded only hold data alive.
    let live: HashSet<SessionId> = list_sessions(repo)?.into_iter().filter(|s| !s.stale).map(|s| s.info.id).collect();
    let mut roots: Vec<(String, BlobId)> =
        snapshots.iter().map(|(id, s)| (format!("snapshot {}", id.short()), s.tree)).collect();
    for (id, cp) in &checkpoints {
        let superseded_cp = snapshots.iter().any(|(_, s)| s.same_source(cp) && s.time > cp.time);
        if superseded_cp && !live.contains(&cp.session) {
            if !options.dry_run {
                repo.delete_checkpoint(id)?;
            }
            report.checkpoints_removed += 1;
        } else {
            roots.push((format!("checkpoint {}", id.short()), cp.tree));
        }
    }
    Ok(roots)
}

/// Packs by what becomes of them.
struct Sorted {
    /// Nothing in them is used (or no index names them): deleted.
    doomed: Vec<PackId>,
    /// More than `max_unused` of them is unused: their live blobs are
    /// copied out, then they are deleted.
    repack: Vec<(PackId, Vec<IndexBlob>)>,
}

/// Account per pack, from the index files in force (`packs`) and the packs
/// `present` in storage; a blob counts as used where the index finds it.
fn sort_packs(
    index: &Index,
    used: &UsedBlobs,
    packs: &std::collections::HashMap<PackId, Vec<IndexBlob>>,
    present: &std::collections::HashMap<PackId, u64>,
    already_planned: &HashSet<PackId>,
    options: &PruneOptions,
    report: &mut PruneReport,
) -> Sorted {
    let canonical =
        |kind: BlobKind, id: &BlobId, pack: &PackId| index.lookup(kind, id).is_some_and(|l| l.pack == *pack);
    report.packs = present.len();
    report.blobs_used = used.data.len() + used.trees.len();
    let mut out = Sorted { doomed: Vec::new(), repack: Vec::new() };
    for (pack, blobs) in packs {
        let Some(size) = present.get(pack) else { continue }; // missing: check reports it
        let (mut used_bytes, mut total_bytes) = (0u64, 0u64);
        let mut live_blobs = Vec::new();
        for b in blobs {
            total_bytes += b.stored_len as u64;
            if used.contains(b.kind, &b.id) && canonical(b.kind, &b.id, pack) {
                used_bytes += b.stored_len as u64;
                live_blobs.push(*b);
            } else {
                report.blobs_unused += 1;
            }
        }
        if live_blobs.is_empty() {
            report.packs_unused += 1;
            report.bytes_marked += size;
            out.doomed.push(*pack);
        } else if total_bytes > 0 && (total_bytes - used_bytes) as f64 / total_bytes as f64 > options.max_unused {
            report.packs_repacked += 1;
            report.bytes_repacked += used_bytes;
            report.bytes_marked += size;
            out.repack.push((*pack, live_blobs));
        }
    }
    for (pack, size) in present {
        // Packs a pending plan will delete are not marked twice.
        if !packs.contains_key(pack) && !already_planned.contains(pack) {
            report.packs_unindexed += 1;
            report.bytes_marked += size;
            out.doomed.push(*pack);
        }
    }
    out
}

/// Copy the live blobs out of half-empty packs (sealed bytes, unchanged,
/// each opened first: damage is never copied silently); the new packs.
fn copy_live_blobs(
    repo: &Repository,
    session: &Session,
    repack: &[(PackId, Vec<IndexBlob>)],
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<Vec<IndexPack>> {
    progress.info(&format!("repacking {} packs", repack.len()));
    let fresh = Arc::new(WriteIndex::new(Arc::new(Index::default())));
    let saver = Saver::start(repo, session.sealer().clone(), fresh, 2, cancel)?;
    for (pack, blobs) in repack {
        if cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        let bytes = repo.backend().get(&pack::pack_key(pack))?;
        for b in blobs {
            let sealed = bytes.get(b.offset as usize..b.offset as usize + b.stored_len as usize).ok_or_else(|| {
                Error::corrupt(pack::pack_key(pack), "shorter than the index says; run `backstop check`")
            })?;
            let loc = crate::pack::BlobLocation {
                pack: *pack,
                kind: b.kind,
                offset: b.offset,
                stored_len: b.stored_len,
                raw_len: b.raw_len,
            };
            pack::reader::open_blob(repo.key(), &loc, &b.id, sealed)?;
            saver.save_sealed(b.kind, b.id, sealed, b.raw_len as usize)?;
        }
    }
    saver.flush()?;
    Ok(saver.take_uploaded())
}

/// The delete phase. Returns whether the plan is done.
fn finish_plan(
    repo: &Repository,
    session: &Session,
    id: &PlanId,
    plan: &DeletionPlan,
    progress: &dyn Progress,
    report: &mut PruneReport,
) -> Result<bool> {
    if Utc::now() < plan.not_before {
        progress.info(&format!("deletion plan {} waits for its grace period (until {})", id.short(), plan.not_before));
        return Ok(false);
    }
    let live: HashSet<SessionId> = list_sessions(repo)?.into_iter().filter(|s| !s.stale).map(|s| s.info.id).collect();
    if let Some(waiting) = plan.sessions.iter().find(|s| live.contains(s)) {
        progress.info(&format!(
            "deletion plan {} waits for session {} (running since the plan was made) to end",
            id.short(),
            waiting.short()
        ));
        return Ok(false);
    }

    // Packs an index written since the mark lists again are kept.
    let (files, damage) = repo.load_index_files()?;
    if !damage.is_empty() {
        progress.info(&format!("deletion plan {} waits: an index file is damaged", id.short()));
        return Ok(false);
    }
    let indexed: HashSet<PackId> = files.iter().flat_map(|(_, f)| f.packs.iter().map(|p| p.id)).collect();
    let present = repo.present_packs()?;
    let candidates: Vec<PackId> =
        plan.packs.iter().filter(|p| !indexed.contains(p) && present.contains_key(p)).copied().collect();
    report.packs_kept += plan.packs.iter().filter(|p| indexed.contains(p)).count();

    // Snapshots and checkpoints written since the mark may use blobs that
    // were only in doomed packs (their backups loaded the index before it).
    let known: HashSet<&String> = plan.manifests.iter().collect();
    let new_manifests: Vec<String> = manifest_keys(repo)?.into_iter().filter(|k| !known.contains(k)).collect();
    let mut keep: Vec<IndexPack> = Vec::new();
    if !new_manifests.is_empty() && !candidates.is_empty() {
        let headers = crate::util::parallel_map(&candidates, 8, |p| {
            pack::reader::read_header(repo.backend().as_ref(), repo.key(), p, present[p]).map(|entries| {
                let mut offset = 0u32;
                let blobs = entries
                    .iter()
                    .map(|e| {
                        let b =
                            IndexBlob { kind: e.kind, id: e.id, offset, stored_len: e.stored_len, raw_len: e.raw_len };
                        offset += e.stored_len;
                        b
                    })
                    .collect();
                IndexPack { id: *p, blobs }
            })
        });
        let mut doomed_packs = Vec::new();
        for h in headers {
            match h {
                Ok(p) => doomed_packs.push(p),
                // An unreadable doomed pack holds nothing anyone can use.
                Err(e) => progress.info(&format!("doomed pack unreadable, deleting anyway: {e}")),
            }
        }
        let current = Index::from_files(files.clone());
        let mut all_files = files;
        all_files.push((IndexId([0; 32]), IndexFile { supersedes: vec![], packs: doomed_packs.clone() }));
        let combined = Index::from_files(all_files);
        let mut roots = Vec::new();
        for key in &new_manifests {
            let kind = if key.starts_with("checkpoints/") { "checkpoint" } else { "snapshot" };
            let plain = match repo.get_sealed(key, ObjectKind::Snapshot, false) {
                Ok(p) => p,
                Err(Error::Backend(e)) if e.is_not_found() => continue,
                Err(e) => return Err(e),
            };
            let snap: crate::snapshot::Snapshot =
                serde_json::from_slice(&plain).map_err(|e| Error::corrupt(key.clone(), e))?;
            roots.push((format!("{kind} {key}"), snap.tree));
        }
        let used: UsedBlobs = collect_used(repo, &combined, &roots);
        if !used.damage.is_empty() {
            progress.info(&format!("deletion plan {} waits: a new snapshot cannot be read completely", id.short()));
            return Ok(false);
        }
        for p in doomed_packs {
            let needed = p.blobs.iter().any(|b| used.contains(b.kind, &b.id) && !current.contains(b.kind, &b.id));
            if needed {
                keep.push(p);
            }
        }
    }
    if !keep.is_empty() {
        report.packs_kept += keep.len();
        let file = IndexFile { supersedes: vec![], packs: keep.clone() };
        repo.put_sealed(session.sealer(), "index", ObjectKind::Index, &file.encode())?;
    }
    let keep_ids: HashSet<PackId> = keep.iter().map(|p| p.id).collect();
    for pack in candidates.iter().filter(|p| !keep_ids.contains(p)) {
        repo.backend().delete(&pack::pack_key(pack))?;
        report.packs_deleted += 1;
        report.bytes_deleted += present[pack];
    }
    repo.backend().delete(&plan_key(id))?;
    Ok(true)
}
