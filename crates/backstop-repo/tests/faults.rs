//! What a backup promises under faults: cancel stops it in every phase
//! without a snapshot and keeps what it uploaded; a full disk is a
//! permanent failure that says what to do.

mod common;

use std::ffi::OsStr;
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use backstop_backend::{Backend, Bandwidth, Dir, ObjectMeta, OpenOptions, PutMode};
use backstop_repo::backup::{self, BackupOptions, BackupSource};
use backstop_repo::{CancelToken, Error, NoProgress, Password, Progress, Repository};
use common::*;

/// The read side of a test decorator: everything but writes goes to `self.inner`.
macro_rules! reads_from_inner {
    () => {
        fn location(&self) -> String {
            self.inner.location()
        }
        fn get(&self, key: &str) -> backstop_backend::Result<Vec<u8>> {
            self.inner.get(key)
        }
        fn get_range(&self, key: &str, range: Range<u64>) -> backstop_backend::Result<Vec<u8>> {
            self.inner.get_range(key, range)
        }
        fn head(&self, key: &str) -> backstop_backend::Result<ObjectMeta> {
            self.inner.head(key)
        }
        fn list(&self, prefix: &str) -> backstop_backend::Result<Vec<ObjectMeta>> {
            self.inner.list(prefix)
        }
        fn delete(&self, key: &str) -> backstop_backend::Result<()> {
            self.inner.delete(key)
        }
        fn staging_dir(&self) -> Option<Arc<Dir>> {
            self.inner.staging_dir()
        }
    };
}

/// Where a test cancels the backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// After the first megabyte was read.
    Reading,
    /// When the first pack upload starts.
    Uploading,
    /// When everything was read: the packs still open are being flushed.
    Flushing,
    /// When the index is written, just before the manifest.
    Index,
}

/// Cancels `token` once, at `phase`, and remembers when.
#[derive(Debug)]
struct Canceller {
    phase: Phase,
    token: CancelToken,
    at: OnceLock<Instant>,
    read: AtomicU64,
    total: u64,
}

impl Canceller {
    fn fire(&self, phase: Phase) {
        if phase == self.phase && self.at.set(Instant::now()).is_ok() {
            self.token.cancel();
        }
    }
}

impl Progress for Canceller {
    fn advance(&self, _files: u64, bytes: u64) {
        let read = self.read.fetch_add(bytes, Ordering::SeqCst) + bytes;
        if read >= 1 << 20 {
            self.fire(Phase::Reading);
        }
        if read >= self.total {
            self.fire(Phase::Flushing);
        }
    }
}

/// A backend that tells the canceller what is being written.
#[derive(Debug)]
struct Watch {
    inner: Arc<dyn Backend>,
    canceller: Arc<Canceller>,
}

impl Watch {
    fn saw(&self, key: &str) {
        if key.starts_with("data/") {
            self.canceller.fire(Phase::Uploading);
        } else if key.starts_with("index/") {
            self.canceller.fire(Phase::Index);
        }
    }
}

impl Backend for Watch {
    reads_from_inner!();
    fn put(&self, key: &str, data: &[u8], mode: PutMode) -> backstop_backend::Result<()> {
        self.saw(key);
        self.inner.put(key, data, mode)
    }
    fn put_file(&self, key: &str, staging: &Dir, name: &OsStr, mode: PutMode) -> backstop_backend::Result<()> {
        self.saw(key);
        self.inner.put_file(key, staging, name, mode)
    }
}

const SOURCE_BYTES: usize = 6 << 20;

/// Back up 6 MiB of incompressible files through a repository throttled to
/// `upload` bytes per second, cancelled at `phase`; check that the backup
/// stops within 5 s of the cancellation and writes no snapshot, and return
/// the repository for a second look.
fn cancel_at(phase: Phase, upload: u64) -> (TestRepo, std::path::PathBuf) {
    let t = TestRepo::new();
    let src = t.dir.path().join("src");
    build(
        &src,
        &[
            Entry::File("a", noise(SOURCE_BYTES / 3, 1)),
            Entry::File("b", noise(SOURCE_BYTES / 3, 2)),
            Entry::File("c", noise(SOURCE_BYTES / 3, 3)),
        ],
    );
    let token = CancelToken::new();
    let canceller = Arc::new(Canceller {
        phase,
        token: token.clone(),
        at: OnceLock::new(),
        read: AtomicU64::new(0),
        total: SOURCE_BYTES as u64,
    });
    let options = OpenOptions {
        bandwidth: Bandwidth::new(Some(upload), None),
        cancel: Some(token.clone()),
        ..OpenOptions::default()
    };
    let throttled = backstop_backend::open(t.root().to_str().unwrap(), &options).unwrap();
    let backend: Arc<dyn Backend> = Arc::new(Watch { inner: throttled, canceller: canceller.clone() });
    let repo = Repository::open(backend, &Password::new(PASSWORD)).unwrap();

    let backup_options = BackupOptions { readers: 1, workers: 1, scan_totals: false, ..BackupOptions::default() };
    let err = backup::run(&repo, BackupSource::Paths(vec![src.clone()]), &backup_options, canceller.as_ref(), &token)
        .expect_err("a cancelled backup does not succeed");
    let stopped = Instant::now();
    assert!(matches!(err, Error::Cancelled), "{phase:?}: {err}");
    let at = *canceller.at.get().unwrap_or_else(|| panic!("{phase:?} was never reached"));
    let took = stopped - at;
    assert!(took < Duration::from_secs(5), "{phase:?}: stopped {took:?} after the cancellation");
    assert!(t.repo.snapshots().unwrap().is_empty(), "{phase:?}: a cancelled backup writes no snapshot");
    assert!(t.repo.backend().list("sessions/").unwrap().is_empty(), "{phase:?}: the cancelled backup's session ended");
    (t, src)
}

#[test]
fn a_backup_cancelled_while_reading_stops_without_a_snapshot() {
    // 64 KiB/s: nothing gets far; the checkpoint's flush gives up after the grace.
    cancel_at(Phase::Reading, 64 << 10);
}

#[test]
fn a_backup_cancelled_while_uploading_stops_without_a_snapshot() {
    cancel_at(Phase::Uploading, 128 << 10);
}

#[test]
fn a_backup_cancelled_while_flushing_stops_and_keeps_what_it_uploaded() {
    // 1 MiB/s: some packs are up when reading ends, the rest are queued.
    let (t, src) = cancel_at(Phase::Flushing, 1 << 20);
    let kept = t.repo.load_index().unwrap().blob_count();
    assert!(kept > 0, "the uploaded packs are indexed");
    // The next backup does not store the kept blobs again.
    let out = t.backup(&[&src]);
    let s = &out.snapshot.summary;
    assert!(s.bytes_added < SOURCE_BYTES as u64, "what the cancelled run uploaded is reused: {s:?}");
    let target = t.dir.path().join("restore");
    t.restore("latest", &target);
    assert_same_tree(&src, &restored_path(&target, &src));
}

#[test]
fn a_backup_cancelled_at_its_index_writes_no_snapshot() {
    let (t, src) = cancel_at(Phase::Index, 8 << 20);
    // Everything was uploaded and indexed: the next run stores no data again.
    let out = t.backup(&[&src]);
    assert_eq!(out.snapshot.summary.data_blobs_added, 0, "{:?}", out.snapshot.summary);
}

/// A backend whose disk is full: every write fails with `ENOSPC` (or `EDQUOT`).
#[derive(Debug)]
struct Full {
    inner: Arc<dyn Backend>,
}

impl Backend for Full {
    reads_from_inner!();
    fn put(&self, key: &str, _: &[u8], _: PutMode) -> backstop_backend::Result<()> {
        Err(backstop_backend::Error::io(key, std::io::Error::from_raw_os_error(libc::ENOSPC)))
    }
    fn put_file(&self, key: &str, _: &Dir, _: &OsStr, _: PutMode) -> backstop_backend::Result<()> {
        Err(backstop_backend::Error::io(key, std::io::Error::from_raw_os_error(libc::EDQUOT)))
    }
}

#[test]
fn a_full_disk_is_a_permanent_failure_that_says_what_to_do() {
    let t = TestRepo::new();
    let src = t.dir.path().join("src");
    build(&src, &[Entry::File("f", noise(1 << 20, 9))]);
    let backend: Arc<dyn Backend> = Arc::new(Full { inner: t.repo.backend().clone() });
    let repo = Repository::open(backend, &Password::new(PASSWORD)).unwrap();
    let err =
        backup::run(&repo, BackupSource::Paths(vec![src]), &BackupOptions::default(), &NoProgress, &CancelToken::new())
            .unwrap_err();
    assert!(matches!(err, Error::StorageFull(_)), "{err:?}");
    assert!(!err.is_transient(), "a full disk is not retried");
    assert!(err.to_string().contains("the repository's disk is full: run prune or free space"), "{err}");
}

#[test]
fn io_errors_are_classed_once() {
    use std::io::Error as IoError;
    let class = |e: IoError| {
        let repo = Error::io(Path::new("/x"), IoError::new(e.kind(), e.to_string()));
        let from_raw = e.raw_os_error().map(|n| Error::io(Path::new("/x"), IoError::from_raw_os_error(n)));
        let backend = backstop_backend::Error::io("k", e);
        (repo.is_transient(), from_raw.map(|e| (e.is_transient(), matches!(e, Error::StorageFull(_)))), backend.kind())
    };
    use backstop_backend::ErrorKind as K;
    for errno in [libc::ENOSPC, libc::EDQUOT] {
        let (_, raw, kind) = class(IoError::from_raw_os_error(errno));
        assert_eq!(raw, Some((false, true)), "errno {errno}: permanent, storage full");
        assert_eq!(kind, K::StorageFull, "errno {errno}");
    }
    for errno in [libc::EIO, libc::ETIMEDOUT, libc::ECONNRESET, libc::ESTALE, libc::EAGAIN] {
        let (_, raw, kind) = class(IoError::from_raw_os_error(errno));
        assert_eq!(raw, Some((true, false)), "errno {errno}: transient");
        assert_eq!(kind, K::Transient, "errno {errno}");
    }
    for (errno, expected) in [
        (libc::EACCES, K::PermissionDenied),
        (libc::EROFS, K::PermissionDenied),
        (libc::ENOENT, K::NotFound),
        (libc::EINVAL, K::Other),
    ] {
        let (_, raw, kind) = class(IoError::from_raw_os_error(errno));
        assert_eq!(raw, Some((false, false)), "errno {errno}: permanent");
        assert_eq!(kind, expected, "errno {errno}");
    }
    let (transient, _, kind) = class(IoError::from(std::io::ErrorKind::Interrupted));
    assert!(transient && kind == K::Transient);
}

fn check_all(repo: &Repository) -> backstop_repo::ops::check::CheckReport {
    use backstop_repo::ops::check::{self, CheckOptions, ReadData};
    check::run(repo, &CheckOptions { read_data: ReadData::All, threads: 2 }, &NoProgress, &CancelToken::new()).unwrap()
}

/// Flip 16 bytes inside the first blob of the biggest data pack.
fn damage_a_pack(t: &TestRepo) -> std::path::PathBuf {
    let packs = t.repo.backend().list("data/").unwrap();
    let biggest = packs.iter().max_by_key(|m| m.size).unwrap();
    let victim = t.root().join(&biggest.key);
    let mut bytes = std::fs::read(&victim).unwrap();
    for b in &mut bytes[100..116] {
        *b ^= 0x5a;
    }
    std::fs::write(&victim, bytes).unwrap();
    victim
}

#[test]
fn damage_found_by_check_is_healed_by_the_next_backup_and_repair_packs() {
    use backstop_repo::ops::repair;
    let t = TestRepo::new();
    let src = t.dir.path().join("src");
    build(&src, &[Entry::File("a", noise(3 << 20, 11)), Entry::File("b", noise(2 << 20, 12))]);
    let first = t.backup(&[&src]);
    let victim = damage_a_pack(&t);

    let found = check_all(&t.repo);
    assert!(!found.is_clean());
    assert!(found.damage_recorded > 0, "check writes the damage down: {found:?}");
    assert_eq!(found.affected_snapshots, vec![format!("snapshot {}", first.id.short())], "{found:?}");

    // The same data again: nothing deduplicates against the damaged copy.
    let second = t.backup(&[&src]);
    assert!(second.snapshot.summary.data_blobs_added > 0, "a fresh copy is stored: {:?}", second.snapshot.summary);
    let target = t.dir.path().join("second");
    let summary = t.restore(&second.id.to_string(), &target);
    assert_eq!(summary.errors, 0);
    assert_same_tree(&src, &restored_path(&target, &src));

    // The first snapshot needs nothing that is not stored intact now.
    let again = check_all(&t.repo);
    assert!(again.affected_snapshots.is_empty(), "{again:?}");

    let repaired = repair::repair_packs(&t.repo, &NoProgress, &CancelToken::new()).unwrap();
    assert_eq!(repaired.packs_removed.len(), 1, "{repaired:?}");
    assert!(!victim.exists(), "the damaged pack is gone");
    assert!(repaired.blobs_lost > 0 && repaired.blobs_resupplied == repaired.blobs_lost, "{repaired:?}");
    assert!(repaired.affected_snapshots.is_empty(), "{repaired:?}");
    assert_eq!(repaired.records_removed, 1, "{repaired:?}");
    let clean = check_all(&t.repo);
    assert!(clean.is_clean(), "{:?}", clean.errors);
    let target = t.dir.path().join("first");
    let summary = t.restore(&first.id.to_string(), &target);
    assert_eq!(summary.errors, 0, "the first snapshot is whole again");
    assert_same_tree(&src, &restored_path(&target, &src));
}

#[test]
fn damage_found_by_a_restore_is_recorded_and_repair_reports_what_stays_lost() {
    use backstop_repo::ops::repair;
    let t = TestRepo::new();
    let src = t.dir.path().join("src");
    build(&src, &[Entry::File("a", noise(3 << 20, 21))]);
    let first = t.backup(&[&src]);
    damage_a_pack(&t);

    let (_, snap) = t.repo.find_snapshot("latest").unwrap();
    let target = t.dir.path().join("broken");
    let options = backstop_repo::restore::RestoreOptions::new(&target);
    let summary = backstop_repo::restore::run(&t.repo, &snap, &options, &NoProgress, &CancelToken::new()).unwrap();
    assert!(summary.errors > 0, "the damaged file is not restored");
    let (records, _) = t.repo.damage_records().unwrap();
    assert_eq!(records.len(), 1, "the restore wrote the damage down");
    assert_eq!(records[0].1.found_by, "restore");

    // Without a new backup, the salvage keeps what is intact and names the
    // snapshot that stays broken.
    let repaired = repair::repair_packs(&t.repo, &NoProgress, &CancelToken::new()).unwrap();
    assert!(repaired.blobs_lost > 0 && repaired.blobs_resupplied == 0, "{repaired:?}");
    assert_eq!(repaired.affected_snapshots, vec![format!("snapshot {}", first.id.short())]);
    let found = check_all(&t.repo);
    assert_eq!(found.affected_snapshots, vec![format!("snapshot {}", first.id.short())], "{found:?}");

    // A copy without the lost file can be made; prune refuses while the
    // original needs a lost blob, and runs once it is forgotten.
    let keep = t.repo.snapshots().unwrap();
    let repaired = repair::repair_snapshots(&t.repo, false, &NoProgress, &CancelToken::new()).unwrap();
    assert_eq!(repaired.repaired.len(), 1, "{repaired:?}");
    assert!(repaired.repaired[0].removed.iter().any(|p| p.ends_with("/a")), "{repaired:?}");
    let prune = || backstop_repo::ops::prune::run(&t.repo, &Default::default(), &NoProgress, &CancelToken::new());
    assert!(prune().is_err(), "prune refuses while a snapshot needs a lost blob");
    let copy: backstop_repo::SnapshotId = repaired.repaired[0].new.parse().unwrap();
    assert!(t.repo.load_snapshot(&copy).unwrap().tags.contains(&"repaired".to_string()));
    t.repo.delete_snapshot(&copy).unwrap();
    assert_eq!(t.repo.snapshots().unwrap().len(), keep.len());

    // A backup of the same data makes it whole.
    let second = t.backup(&[&src]);
    assert!(second.snapshot.summary.data_blobs_added > 0);
    let clean = check_all(&t.repo);
    assert!(clean.is_clean(), "{:?}", clean.errors);
    let target = t.dir.path().join("healed");
    assert_eq!(t.restore(&first.id.to_string(), &target).errors, 0);
    assert_same_tree(&src, &restored_path(&target, &src));
    prune().unwrap();
}

#[test]
fn repair_snapshots_forgets_what_cannot_be_restored_and_prune_runs_again() {
    use backstop_repo::ops::repair;
    let t = TestRepo::new();
    let src = t.dir.path().join("src");
    build(&src, &[Entry::File("big", noise(3 << 20, 31)), Entry::File("small", text(10_000, 32))]);
    t.backup(&[&src]);
    damage_a_pack(&t);
    check_all(&t.repo);
    repair::repair_packs(&t.repo, &NoProgress, &CancelToken::new()).unwrap();

    let report = repair::repair_snapshots(&t.repo, true, &NoProgress, &CancelToken::new()).unwrap();
    assert_eq!(report.forgotten, 1);
    assert_eq!(report.repaired[0].removed.len(), 1, "{report:?}");
    let snapshots = t.repo.snapshots().unwrap();
    assert_eq!(snapshots.len(), 1);
    let clean = check_all(&t.repo);
    assert!(clean.is_clean(), "{:?}", clean.errors);
    backstop_repo::ops::prune::run(&t.repo, &Default::default(), &NoProgress, &CancelToken::new()).unwrap();
    // What survived restores; what was lost is left out.
    let target = t.dir.path().join("survivors");
    t.restore("latest", &target);
    for name in ["big", "small"] {
        let file = src.join(name);
        let restored = restored_path(&target, &file);
        if report.repaired[0].removed.contains(&file.display().to_string()) {
            assert!(!restored.exists(), "{name} was left out");
        } else {
            assert_eq!(std::fs::read(restored).unwrap(), std::fs::read(&file).unwrap(), "{name} survives");
        }
    }
}

/// A small file system: a tmpfs, where this process may mount one.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(mib: u64) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Tmpfs { dir })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

/// A local repository whose disk holds `capacity` bytes: writes beyond it
/// fail with `ENOSPC`, deletes give room back. Stands in for a small file
/// system where none can be mounted.
#[derive(Debug)]
struct Quota {
    inner: Arc<dyn Backend>,
    capacity: std::sync::atomic::AtomicU64,
}

impl Quota {
    fn used(&self) -> u64 {
        ["config", "keys/", "data/", "index/", "snapshots/", "sessions/", "prune/", "damaged/", "reserve"]
            .iter()
            .flat_map(|p| self.inner.list(p).unwrap_or_default())
            .map(|m| m.size)
            .sum()
    }
    fn room(&self, key: &str, bytes: u64) -> backstop_backend::Result<()> {
        if self.used() + bytes > self.capacity.load(Ordering::SeqCst) {
            return Err(backstop_backend::Error::io(key, std::io::Error::from_raw_os_error(libc::ENOSPC)));
        }
        Ok(())
    }
}

impl Backend for Quota {
    reads_from_inner!();
    fn put(&self, key: &str, data: &[u8], mode: PutMode) -> backstop_backend::Result<()> {
        self.room(key, data.len() as u64)?;
        self.inner.put(key, data, mode)
    }
    fn put_file(&self, key: &str, staging: &Dir, name: &OsStr, mode: PutMode) -> backstop_backend::Result<()> {
        let size = staging.stat_at(name).map(|st| st.st_size as u64).unwrap_or(0);
        self.room(key, size)?;
        self.inner.put_file(key, staging, name, mode)
    }
}

/// Fill the repository's disk with backups until one fails, leave it with
/// no room at all (`fill`), and recover from inside Backstop: check and
/// prune run, and prune frees space.
fn a_full_disk_is_recovered_by_prune(repo: &Repository, src_root: &Path, fill: &dyn Fn()) {
    use backstop_repo::ops::check::{self, CheckOptions};
    use backstop_repo::ops::prune::{self, PruneOptions};
    let mut full = None;
    for round in 0..20u64 {
        let src = src_root.join(format!("r{round}"));
        build(&src, &[Entry::File("f", noise(3 << 20, 100 + round))]);
        let out = backup::run(
            repo,
            BackupSource::Paths(vec![src]),
            &BackupOptions::default(),
            &NoProgress,
            &CancelToken::new(),
        );
        if let Err(e) = out {
            full = Some(e);
            break;
        }
    }
    let err = full.expect("the disk never filled up");
    assert!(matches!(err, Error::StorageFull(_)), "{err:?}");
    assert!(!err.is_transient());
    assert!(err.to_string().contains("run prune or free space"), "{err}");
    fill();

    // Check starts at 0 bytes free, and gives the room back.
    let report = check::run(repo, &CheckOptions::default(), &NoProgress, &CancelToken::new()).unwrap();
    assert!(report.is_clean(), "{:?}", report.errors);
    // All snapshots but the newest are forgotten (a delete needs no room); prune frees their packs.
    let snapshots = repo.snapshots().unwrap();
    for (id, _) in &snapshots[..snapshots.len() - 1] {
        repo.delete_snapshot(id).unwrap();
    }
    let pruned = prune::run(repo, &PruneOptions::default(), &NoProgress, &CancelToken::new()).unwrap();
    assert!(pruned.packs_deleted > 0, "{pruned:?}");
    assert_eq!(pruned.plans_pending, 0, "{pruned:?}");
    assert!(repo.backend().head("reserve").is_ok(), "prune wrote the reserve again");
    // There is room for backups again.
    let src = src_root.join("after");
    build(&src, &[Entry::File("f", noise(1 << 20, 999))]);
    backup::run(repo, BackupSource::Paths(vec![src]), &BackupOptions::default(), &NoProgress, &CancelToken::new())
        .unwrap();
}

#[test]
fn a_full_disk_can_be_freed_by_prune() {
    let src = tempfile::tempdir().unwrap();
    match Tmpfs::mount(40) {
        Some(fs) => {
            let root = fs.dir.path().join("repo");
            let backend: Arc<dyn Backend> = Arc::new(backstop_backend::LocalBackend::new(&root));
            let repo = Repository::init(backend, &Password::new(PASSWORD), cheap_init()).unwrap();
            let filler = fs.dir.path().join("filler");
            // What is left, to the last byte.
            let fill = || {
                let mut f = std::fs::File::create(&filler).unwrap();
                let block = vec![7u8; 4096];
                while std::io::Write::write_all(&mut f, &block).is_ok() {}
                for _ in 0..4096 {
                    if std::io::Write::write_all(&mut f, &[7u8]).is_err() {
                        break;
                    }
                }
                let _ = f.sync_all();
            };
            a_full_disk_is_recovered_by_prune(&repo, src.path(), &fill);
        }
        None => {
            eprintln!("no tmpfs can be mounted here: a backend with a quota stands in for the small disk");
            a_full_quota_can_be_freed_by_prune();
        }
    }
}

#[test]
fn a_full_quota_can_be_freed_by_prune() {
    let src = tempfile::tempdir().unwrap();
    let t = TestRepo::new();
    let quota = Arc::new(Quota { inner: t.repo.backend().clone(), capacity: AtomicU64::new(40 << 20) });
    let repo = Repository::open(quota.clone(), &Password::new(PASSWORD)).unwrap();
    repo.ensure_reserve();
    let fill = || quota.capacity.store(quota.used(), Ordering::SeqCst);
    a_full_disk_is_recovered_by_prune(&repo, src.path(), &fill);
}
