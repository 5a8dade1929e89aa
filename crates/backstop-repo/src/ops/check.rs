//! Check: is everything every snapshot needs present and intact?
//!
//! Structure (index files, manifests, trees) is always checked; pack
//! headers are compared with the index; with `read_data` the packs' bytes
//! are read and every blob is decrypted and hashed. Every finding names the
//! object and what is wrong with it.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use super::used::{collect_used, snapshots_missing_blobs};
use crate::damage::DamagedBlob;
use crate::error::{Error, Result};
use crate::id::PackId;
use crate::index::Index;
use crate::pack::{self, BlobLocation};
use crate::progress::{CancelToken, Progress};
use crate::repository::Repository;
use crate::util::parallel_map;

/// How much pack data to read.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum ReadData {
    #[default]
    None,
    All,
    /// This fraction of the packs, chosen at random.
    Fraction(f64),
    /// Packs whose first id byte is `n - 1` modulo `m` (`n/m`), so that `m`
    /// runs with n = 1..m read every pack once.
    Slice {
        n: u32,
        m: u32,
    },
}

impl std::str::FromStr for ReadData {
    type Err = String;
    /// `10%` or `2/5`.
    fn from_str(s: &str) -> Result<ReadData, String> {
        let bad = || format!("{s:?} is not a subset: use a percentage like 10% or a slice like 1/5");
        if let Some(p) = s.strip_suffix('%') {
            let p: f64 = p.trim().parse().map_err(|_| bad())?;
            if !(p > 0.0 && p <= 100.0) {
                return Err(bad());
            }
            return Ok(ReadData::Fraction(p / 100.0));
        }
        let (n, m) = s.split_once('/').ok_or_else(bad)?;
        let (n, m): (u32, u32) = (n.trim().parse().map_err(|_| bad())?, m.trim().parse().map_err(|_| bad())?);
        if m == 0 || n == 0 || n > m || m > 256 {
            return Err(bad());
        }
        Ok(ReadData::Slice { n, m })
    }
}

#[derive(Debug, Clone, Default)]
pub struct CheckOptions {
    pub read_data: ReadData,
    pub threads: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub object: String,
    pub problem: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct CheckReport {
    /// Damage: data some snapshot needs is missing or wrong.
    pub errors: Vec<Finding>,
    /// Not damage, but worth knowing (leftovers of interrupted backups, …).
    pub notes: Vec<Finding>,
    pub snapshots: usize,
    pub packs: usize,
    /// Bytes of every pack the repository holds: what its data takes on
    /// the storage (index files and manifests aside).
    pub pack_bytes: u64,
    pub packs_read: usize,
    pub blobs_read: u64,
    /// Damaged or lost blob copies this check wrote down (`damage`): no
    /// backup deduplicates against them any more.
    pub damage_recorded: usize,
    /// Snapshots that need a blob no intact copy of which is stored (their
    /// restores fail for the files that hold it).
    pub affected_snapshots: Vec<String>,
}

impl CheckReport {
    pub fn is_clean(&self) -> bool {
        self.errors.is_empty()
    }

    fn error(&mut self, object: impl Into<String>, problem: impl Into<String>) {
        self.errors.push(Finding { object: object.into(), problem: problem.into() });
    }

    fn note(&mut self, object: impl Into<String>, problem: impl Into<String>) {
        self.notes.push(Finding { object: object.into(), problem: problem.into() });
    }
}

/// A check's session, started even on a full disk; when it ends, the room
/// it took from the repository's reserve is given back.
struct CheckSession {
    session: Option<crate::session::Session>,
    repo: Repository,
    full: bool,
}

impl CheckSession {
    fn start(repo: &Repository, progress: &dyn Progress) -> Result<CheckSession> {
        let (session, full) = crate::session::Session::start_on_full_disk(repo, "check", progress)?;
        Ok(CheckSession { session: Some(session), repo: repo.clone(), full })
    }
}

impl Drop for CheckSession {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            let _ = session.end();
        }
        if self.full {
            self.repo.ensure_reserve();
        }
    }
}

impl CheckReport {
    /// Write down the damaged copies found, so that the next backup stores
    /// fresh copies instead of deduplicating against them.
    fn record(&mut self, repo: &Repository, lost: &[DamagedBlob]) {
        if lost.is_empty() {
            return;
        }
        match repo.record_damage("check", lost) {
            Ok(n) => self.damage_recorded = n,
            Err(e) => self.note("damaged/", format!("the damaged blobs could not be recorded: {e}")),
        }
    }
}

pub fn run(
    repo: &Repository,
    options: &CheckOptions,
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<CheckReport> {
    let _session = CheckSession::start(repo, progress)?;
    let threads = options.threads.max(1);
    let mut report = CheckReport::default();

    progress.info("loading index");
    let (index, damaged_indexes) = repo.load_index_report()?;
    for d in damaged_indexes {
        report
            .error(d.object, format!("{}; run `backstop repair index` to rebuild the index from the packs", d.problem));
    }
    progress.info("checking packs");
    let by_pack = blobs_by_pack(&index);
    // Copies that are damaged or gone, to be written down.
    let mut lost: Vec<DamagedBlob> = Vec::new();
    let packs = check_packs(repo, &index, &by_pack, &mut report, &mut lost)?;
    check_headers(repo, &packs, &by_pack, threads, cancel, &mut report)?;

    progress.info("checking snapshots and trees");
    let roots = check_snapshots(repo, &index, &mut report)?;

    let selected = select_packs(&options.read_data, &packs);
    if !selected.is_empty() {
        progress.info(&format!("reading {} packs", selected.len()));
        let total: u64 = selected.iter().map(|(_, s)| s).sum();
        progress.total(selected.len() as u64, total);
        let results = parallel_map(&selected, threads, |(pack, size)| {
            if cancel.is_cancelled() {
                return (0, vec![], vec![]);
            }
            let r = read_pack(repo, pack, *size, &by_pack[pack]);
            progress.advance(1, *size);
            r
        });
        if cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        report.packs_read = selected.len();
        for (blobs, findings, damaged) in results {
            report.blobs_read += blobs;
            report.errors.extend(findings);
            lost.extend(damaged);
        }
    }

    report.record(repo, &lost);
    if !report.errors.is_empty() {
        name_affected_snapshots(repo, &roots, &mut report)?;
    }
    Ok(report)
}

/// Packs listed in the index ⇔ present, with plausible sizes; the indexed
/// packs that are present, with their sizes. A missing pack's blobs are
/// `lost`.
fn check_packs(
    repo: &Repository,
    index: &Index,
    by_pack: &HashMap<PackId, Vec<(crate::id::BlobId, BlobLocation)>>,
    report: &mut CheckReport,
    lost: &mut Vec<DamagedBlob>,
) -> Result<Vec<(PackId, u64)>> {
    let present: HashMap<PackId, u64> = repo.present_packs()?;
    report.packs = present.len();
    report.pack_bytes = present.values().sum();
    let mut expected_min: HashMap<PackId, u64> = HashMap::new();
    for (_, loc) in index.iter() {
        let end = loc.offset as u64 + loc.stored_len as u64 + pack::TRAILER_LEN as u64;
        let e = expected_min.entry(loc.pack).or_default();
        *e = (*e).max(end);
    }
    let live_writers = crate::session::list_sessions(repo)?.into_iter().any(|s| !s.stale && s.info.kind == "backup");
    for pack in index.packs() {
        match present.get(pack) {
            None => {
                report.error(pack::pack_key(pack), "is listed in the index but missing");
                lost.extend(by_pack[pack].iter().map(|(id, loc)| DamagedBlob { kind: loc.kind, id: *id, pack: *pack }));
            }
            Some(size) if *size < expected_min.get(pack).copied().unwrap_or(0) => {
                report.error(pack::pack_key(pack), format!("is truncated ({size} bytes; the index needs more)"))
            }
            Some(_) => {}
        }
    }
    let indexed: HashSet<PackId> = index.packs().iter().copied().collect();
    for id in present.keys().filter(|p| !indexed.contains(p)) {
        let why = if live_writers {
            "is not in the index yet (a backup is running)"
        } else {
            "is not in the index (left by an interrupted backup; prune removes it, `repair index` adopts it)"
        };
        report.note(pack::pack_key(id), why);
    }
    Ok(index.packs().iter().filter_map(|p| present.get(p).map(|size| (*p, *size))).collect())
}

/// Each pack's header agrees with the index.
fn check_headers(
    repo: &Repository,
    packs: &[(PackId, u64)],
    by_pack: &HashMap<PackId, Vec<(crate::id::BlobId, BlobLocation)>>,
    threads: usize,
    cancel: &CancelToken,
    report: &mut CheckReport,
) -> Result<()> {
    let findings = parallel_map(packs, threads, |(pack, size)| {
        if cancel.is_cancelled() {
            return None;
        }
        let expected = &by_pack[pack];
        match pack::reader::read_header(repo.backend().as_ref(), repo.key(), pack, *size) {
            Err(e) => Some(e.to_string()),
            Ok(entries) => {
                let mut offset = 0u32;
                let mut in_header = HashMap::new();
                for e in &entries {
                    in_header.insert((e.kind, e.id), (offset, e.stored_len, e.raw_len));
                    offset = offset.wrapping_add(e.stored_len);
                }
                let wrong = expected.iter().filter(|(id, loc)| {
                    in_header.get(&(loc.kind, *id)) != Some(&(loc.offset, loc.stored_len, loc.raw_len))
                });
                let n = wrong.count();
                (n > 0).then(|| format!("{n} blobs in the index do not match the pack header"))
            }
        }
    });
    if cancel.is_cancelled() {
        return Err(Error::Cancelled);
    }
    for ((pack, _), finding) in packs.iter().zip(findings) {
        if let Some(problem) = finding {
            report.error(pack::pack_key(pack), problem);
        }
    }
    Ok(())
}

/// Snapshots and checkpoints load, and every tree they need is readable;
/// their roots, by label.
fn check_snapshots(
    repo: &Repository,
    index: &Index,
    report: &mut CheckReport,
) -> Result<Vec<(String, crate::id::BlobId)>> {
    let (snapshots, damaged) = repo.snapshots_report()?;
    let (checkpoints, damaged_cp) = repo.checkpoints_report()?;
    for d in damaged.into_iter().chain(damaged_cp) {
        report.error(d.object, format!("{}; `backstop forget` it if it cannot be recovered", d.problem));
    }
    report.snapshots = snapshots.len();
    let roots: Vec<(String, crate::id::BlobId)> = snapshots
        .iter()
        .map(|(id, s)| (format!("snapshot {}", id.short()), s.tree))
        .chain(checkpoints.iter().map(|(id, s)| (format!("checkpoint {}", id.short()), s.tree)))
        .collect();
    let used = collect_used(repo, index, &roots);
    for d in used.damage {
        report.error(d.object, d.problem);
    }
    for pending in repo.backend().list("prune/")? {
        report.note(pending.key, "a prune deletion is pending (it finishes when the backups that were running end)");
    }
    Ok(roots)
}

/// The packs whose data `read_data` asks to read.
fn select_packs(read_data: &ReadData, packs: &[(PackId, u64)]) -> Vec<(PackId, u64)> {
    match *read_data {
        ReadData::None => Vec::new(),
        ReadData::All => packs.to_vec(),
        ReadData::Fraction(f) => {
            let want = ((packs.len() as f64 * f).ceil() as usize).min(packs.len());
            // A random order: keyed hashes of the pack ids under a fresh key.
            let key = crate::id::BlobId::random().0;
            let mut shuffled = packs.to_vec();
            shuffled.sort_by_key(|(p, _)| *blake3::keyed_hash(&key, p.as_bytes()).as_bytes());
            shuffled.truncate(want);
            shuffled
        }
        ReadData::Slice { n, m } => packs.iter().filter(|(p, _)| (p.0[0] as u32) % m == n - 1).copied().collect(),
    }
}

/// Name every snapshot that needs a blob of which no intact copy is
/// stored, against the index without the damaged copies: a snapshot whose
/// lost blobs a later backup stored again is whole.
fn name_affected_snapshots(
    repo: &Repository,
    roots: &[(String, crate::id::BlobId)],
    report: &mut CheckReport,
) -> Result<()> {
    let index = repo.load_index()?;
    for (label, missing) in snapshots_missing_blobs(repo, &index, roots) {
        report.error(
            label.clone(),
            format!(
                "needs {missing} blob(s) of which no intact copy is stored: restoring it fails for the files \
                 that hold them. Back the same data up again to store fresh copies (`backstop repair packs` \
                 then reports it whole); if it is gone, `backstop repair packs` and `backstop repair \
                 snapshots --forget` keep what can be restored"
            ),
        );
        report.affected_snapshots.push(label);
    }
    Ok(())
}

/// Verify one snapshot: every tree it references is read and opened (the
/// walk does), and `fraction` of its data blobs, chosen at random (all of
/// them at 1.0), are read and checked against their ids. The cost is that
/// of the snapshot, not of the repository. Damage is named, recorded as
/// `check` records it, and the snapshot is named as affected.
pub fn verify_snapshot(
    repo: &Repository,
    id: &crate::id::SnapshotId,
    fraction: f64,
    threads: usize,
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<CheckReport> {
    let _session = CheckSession::start(repo, progress)?;
    let threads = threads.max(1);
    let mut report = CheckReport { snapshots: 1, ..CheckReport::default() };
    let snapshot = repo.load_snapshot(id)?;
    let index = repo.load_index()?;
    let label = format!("snapshot {}", id.short());
    progress.info(&format!("reading the trees of {label}"));
    let used = collect_used(repo, &index, &[(label.clone(), snapshot.tree)]);
    for d in used.damage {
        report.error(d.object, d.problem);
    }
    // A random share of the data blobs: keyed hashes of their ids under a fresh key.
    let key = crate::id::BlobId::random().0;
    let mut data: Vec<crate::id::BlobId> =
        used.data.into_iter().filter(|b| index.contains(crate::pack::BlobKind::Data, b)).collect();
    data.sort_by_key(|b| *blake3::keyed_hash(&key, &b.0).as_bytes());
    data.truncate(((data.len() as f64 * fraction.clamp(0.0, 1.0)).ceil() as usize).min(data.len()));
    // In pack order, so that reads of one pack follow one another.
    let mut selected: Vec<(crate::id::BlobId, BlobLocation)> =
        data.iter().filter_map(|b| index.lookup(crate::pack::BlobKind::Data, b).map(|l| (*b, l))).collect();
    selected.sort_by_key(|(_, l)| (l.pack, l.offset));
    progress.info(&format!("reading {} of its data blobs", selected.len()));
    progress.total(selected.len() as u64, selected.iter().map(|(_, l)| l.stored_len as u64).sum());
    let results = parallel_map(&selected, threads, |(blob, loc)| {
        if cancel.is_cancelled() {
            return None;
        }
        let r = pack::reader::load_blob(repo.backend().as_ref(), repo.key(), loc, blob);
        progress.advance(1, loc.stored_len as u64);
        Some(r.err())
    });
    if cancel.is_cancelled() {
        return Err(Error::Cancelled);
    }
    let mut lost = Vec::new();
    for ((blob, loc), result) in selected.iter().zip(results) {
        match result.flatten() {
            None => {}
            Some(e @ Error::Corrupt { .. }) => {
                report.error(format!("data blob {} in {}", blob.short(), pack::pack_key(&loc.pack)), e.to_string());
                lost.push(DamagedBlob { kind: loc.kind, id: *blob, pack: loc.pack });
            }
            Some(e) => return Err(e),
        }
    }
    report.blobs_read = selected.len() as u64;
    report.packs_read = selected.iter().map(|(_, l)| l.pack).collect::<HashSet<_>>().len();
    report.record(repo, &lost);
    if !report.errors.is_empty() {
        report.affected_snapshots.push(label);
    }
    Ok(report)
}

fn blobs_by_pack(index: &Index) -> HashMap<PackId, Vec<(crate::id::BlobId, BlobLocation)>> {
    let mut out: HashMap<PackId, Vec<_>> = index.packs().iter().map(|p| (*p, Vec::new())).collect();
    for (id, loc) in index.iter() {
        out.entry(loc.pack).or_default().push((id, loc));
    }
    out
}

/// Read a whole pack: its hash, its header, and every blob the index lists.
/// Returns the blobs read, the findings, and the copies that are damaged.
fn read_pack(
    repo: &Repository,
    pack: &PackId,
    size: u64,
    blobs: &[(crate::id::BlobId, BlobLocation)],
) -> (u64, Vec<Finding>, Vec<DamagedBlob>) {
    let key = pack::pack_key(pack);
    let mut findings = Vec::new();
    let mut damaged = Vec::new();
    let bytes = match repo.backend().get(&key) {
        Ok(b) => b,
        Err(e) => {
            if e.is_not_found() {
                damaged.extend(blobs.iter().map(|(id, loc)| DamagedBlob { kind: loc.kind, id: *id, pack: *pack }));
            }
            return (0, vec![Finding { object: key, problem: format!("cannot be read: {e}") }], damaged);
        }
    };
    if *blake3::hash(&bytes).as_bytes() != pack.0 {
        findings.push(Finding { object: key.clone(), problem: "content does not match its name (damaged)".into() });
    }
    if bytes.len() as u64 != size {
        findings.push(Finding { object: key.clone(), problem: "changed size while being read".into() });
    }
    let mut read = 0;
    for (id, loc) in blobs {
        let start = loc.offset as usize;
        let Some(sealed) = bytes.get(start..start + loc.stored_len as usize) else {
            findings.push(Finding {
                object: format!("{} blob {}", loc.kind, id.short()),
                problem: format!("lies beyond the end of {key}"),
            });
            damaged.push(DamagedBlob { kind: loc.kind, id: *id, pack: *pack });
            continue;
        };
        if let Err(e) = pack::reader::open_blob(repo.key(), loc, id, sealed) {
            findings
                .push(Finding { object: format!("{} blob {} in {key}", loc.kind, id.short()), problem: e.to_string() });
            damaged.push(DamagedBlob { kind: loc.kind, id: *id, pack: *pack });
        }
        read += 1;
    }
    (read, findings, damaged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subsets_parse() {
        assert_eq!("10%".parse::<ReadData>().unwrap(), ReadData::Fraction(0.1));
        assert_eq!("2/5".parse::<ReadData>().unwrap(), ReadData::Slice { n: 2, m: 5 });
        for bad in ["0%", "101%", "x%", "0/5", "6/5", "1/0", "1", ""] {
            assert!(bad.parse::<ReadData>().is_err(), "{bad}");
        }
    }
}
