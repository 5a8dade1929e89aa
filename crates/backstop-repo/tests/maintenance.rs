//! Check, forget, prune and repair, including prune beside a running backup.

mod common;

use std::path::Path;
use std::time::Duration;

use backstop_repo::ops::check::{self, CheckOptions, ReadData};
use backstop_repo::ops::forget::{self, KeepPolicy};
use backstop_repo::ops::prune::{self, PruneOptions};
use backstop_repo::ops::{diff, dump, ls, repair};
use backstop_repo::session::{Session, SessionTiming};
use backstop_repo::{CancelToken, NoProgress, Repository};
use common::*;

fn check_all(repo: &Repository) -> check::CheckReport {
    let options = CheckOptions { read_data: ReadData::All, threads: 2 };
    check::run(repo, &options, &NoProgress, &CancelToken::new()).unwrap()
}

fn repo_bytes(root: &Path) -> u64 {
    fn walk(p: &Path) -> u64 {
        std::fs::read_dir(p)
            .map(|d| {
                d.map(|e| {
                    let e = e.unwrap();
                    if e.file_type().unwrap().is_dir() { walk(&e.path()) } else { e.metadata().unwrap().len() }
                })
                .sum()
            })
            .unwrap_or(0)
    }
    walk(&root.join("data"))
}

#[test]
fn check_is_clean_after_backups_and_reads_every_blob() {
    let t = TestRepo::new();
    let src = t.dir.path().join("src");
    build(&src, &[Entry::File("a", noise(3 << 20, 1)), Entry::File("b/c", text(2 << 20, 2))]);
    t.backup(&[&src]);
    let report = check_all(&t.repo);
    assert!(report.is_clean(), "{:?}", report.errors);
    assert_eq!(report.snapshots, 1);
    assert!(report.blobs_read >= 4, "{report:?}");
    assert_eq!(report.packs_read, report.packs);
}

#[test]
fn forget_and_prune_free_the_space_of_forgotten_data_and_keep_the_rest() {
    let t = TestRepo::new();
    let src = t.dir.path().join("src");
    build(&src, &[Entry::File("keep", noise(2 << 20, 1)), Entry::File("gone", noise(4 << 20, 2))]);
    let first = t.backup(&[&src]);
    std::fs::remove_file(src.join("gone")).unwrap();
    std::fs::write(src.join("new"), noise(1 << 20, 3)).unwrap();
    t.backup(&[&src]);
    let before = repo_bytes(&t.root());

    let decisions = forget::apply(&t.repo.snapshots().unwrap(), &KeepPolicy { last: 1, ..Default::default() }).unwrap();
    let forgotten: Vec<_> = decisions.iter().filter(|d| !d.keep).map(|d| d.id).collect();
    assert_eq!(forgotten, vec![first.id]);
    t.repo.delete_snapshot(&first.id).unwrap();

    let dry =
        prune::run(&t.repo, &PruneOptions { dry_run: true, ..Default::default() }, &NoProgress, &CancelToken::new())
            .unwrap();
    assert!(dry.bytes_marked > 0 && dry.packs_deleted == 0, "{dry:?}");
    assert_eq!(repo_bytes(&t.root()), before, "a dry run changes nothing");

    let report = prune::run(&t.repo, &PruneOptions::default(), &NoProgress, &CancelToken::new()).unwrap();
    assert!(report.packs_deleted > 0 && report.plans_pending == 0, "{report:?}");
    let after = repo_bytes(&t.root());
    assert!(after + (3 << 20) < before, "about 4 MiB freed: {before} -> {after}");

    let c = check_all(&t.repo);
    assert!(c.is_clean(), "{:?}", c.errors);
    assert!(c.notes.is_empty(), "{:?}", c.notes);
    let target = t.dir.path().join("restore");
    t.restore("latest", &target);
    assert_same_tree(&src, &restored_path(&target, &src));
    assert!(t.repo.backend().list("prune/").unwrap().is_empty(), "the plan is done and removed");
}

#[test]
fn prune_repacks_half_used_packs_without_losing_blobs() {
    let t = TestRepo::new();
    let src = t.dir.path().join("src");
    // Many small files share packs; forgetting half the files leaves packs half used.
    let files: Vec<Entry> =
        (0..60).map(|i| Entry::File(Box::leak(format!("f{i}").into_boxed_str()), noise(40_000, i))).collect();
    build(&src, &files);
    let first = t.backup(&[&src]);
    for i in (0..60).step_by(2) {
        std::fs::remove_file(src.join(format!("f{i}"))).unwrap();
    }
    t.backup(&[&src]);
    t.repo.delete_snapshot(&first.id).unwrap();
    let report = prune::run(&t.repo, &PruneOptions::default(), &NoProgress, &CancelToken::new()).unwrap();
    assert!(report.packs_repacked > 0, "{report:?}");
    let c = check_all(&t.repo);
    assert!(c.is_clean(), "{:?}", c.errors);
    let target = t.dir.path().join("restore");
    t.restore("latest", &target);
    assert_same_tree(&src, &restored_path(&target, &src));
}

#[test]
fn prune_waits_for_a_backup_that_was_running_when_it_marked() {
    let t = TestRepo::new();
    let src = t.dir.path().join("src");
    build(&src, &[Entry::File("old", noise(2 << 20, 1))]);
    let first = t.backup(&[&src]);
    t.repo.delete_snapshot(&first.id).unwrap();

    // A backup session that loaded the old index and is still running.
    let running = Session::start(&t.repo, "backup").unwrap();
    let report = prune::run(&t.repo, &PruneOptions::default(), &NoProgress, &CancelToken::new()).unwrap();
    assert_eq!(report.packs_deleted, 0, "nothing deleted while the backup runs: {report:?}");
    assert_eq!(report.plans_pending, 1);
    assert!(repo_bytes(&t.root()) > 2 << 20);

    // The running backup, having deduplicated against the old data, commits
    // a snapshot that uses it.
    let again = t.backup(&[&src]);
    assert_eq!(
        again.snapshot.summary.data_blobs_added, first.snapshot.summary.data_blobs_added,
        "the doomed blobs are gone from the new index, so they are stored again"
    );
    running.end().unwrap();

    let report = prune::run(&t.repo, &PruneOptions::default(), &NoProgress, &CancelToken::new()).unwrap();
    assert_eq!(report.plans_pending, 0, "{report:?}");
    let c = check_all(&t.repo);
    assert!(c.is_clean(), "{:?}", c.errors);
}

#[test]
fn a_snapshot_committed_by_a_session_live_at_mark_time_keeps_its_doomed_packs() {
    let t = TestRepo::new();
    let src = t.dir.path().join("src");
    build(&src, &[Entry::File("data", noise(2 << 20, 9))]);
    let first = t.backup(&[&src]);
    // Another process opened the repository (and loaded the index) before prune marks.
    let other = t.reopen();
    let old_index = other.load_index().unwrap();
    let running = Session::start(&other, "backup").unwrap();
    t.repo.delete_snapshot(&first.id).unwrap();
    prune::run(&t.repo, &PruneOptions::default(), &NoProgress, &CancelToken::new()).unwrap();

    // That process now commits a snapshot reusing the old blobs (as a backup
    // deduplicating against its stale index would), then ends.
    let (_, snap) = {
        let mut s = first.snapshot.clone();
        s.time = chrono::Utc::now();
        (0, s)
    };
    assert!(old_index.blob_count() > 0);
    let sealer = running.sealer().clone();
    let json = serde_json::to_vec(&snap).unwrap();
    let sealed =
        sealer.seal(backstop_repo::crypto::ObjectKind::Snapshot, None, &json, backstop_repo::crypto::Compression::None);
    let name = blake3::hash(&sealed).to_hex();
    other.backend().put(&format!("snapshots/{name}"), &sealed, backstop_backend::PutMode::Create).unwrap();
    running.end().unwrap();

    let report = prune::run(&t.repo, &PruneOptions::default(), &NoProgress, &CancelToken::new()).unwrap();
    assert!(report.packs_kept > 0, "the doomed packs are kept: {report:?}");
    let c = check_all(&t.repo);
    assert!(c.is_clean(), "{:?}", c.errors);
    let target = t.dir.path().join("restore");
    t.restore("latest", &target);
    assert_same_tree(&src, &restored_path(&target, &src));
}

#[test]
fn a_dead_sessions_marker_stops_blocking_prune_once_stale() {
    let t = TestRepo::new();
    let repo = t.repo.clone().with_session_timing(SessionTiming {
        heartbeat: Duration::from_millis(100),
        stale_after: Duration::from_millis(600),
    });
    let src = t.dir.path().join("src");
    build(&src, &[Entry::File("x", noise(1 << 20, 1))]);
    let first = t.backup(&[&src]);
    repo.delete_snapshot(&first.id).unwrap();
    // A session whose process died: the marker stays, nobody refreshes it.
    Session::start(&repo, "backup").unwrap().abandon();
    let report = prune::run(&repo, &PruneOptions::default(), &NoProgress, &CancelToken::new()).unwrap();
    assert_eq!(report.plans_pending, 1);
    std::thread::sleep(Duration::from_millis(1200));
    let report = prune::run(&repo, &PruneOptions::default(), &NoProgress, &CancelToken::new()).unwrap();
    assert_eq!(report.plans_pending, 0, "{report:?}");
    assert!(report.packs_deleted > 0);
    assert_eq!(report.sessions_removed, 1, "the stale marker is removed: {report:?}");
    assert!(repo.backend().list("sessions/").unwrap().is_empty());
}

#[test]
fn a_second_prune_refuses_while_one_runs() {
    let t = TestRepo::new();
    let other = Session::start(&t.repo, "prune").unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let err = prune::run(&t.repo, &PruneOptions::default(), &NoProgress, &CancelToken::new()).unwrap_err();
    assert!(matches!(err, backstop_repo::Error::Busy(_)), "{err}");
    other.end().unwrap();
    prune::run(&t.repo, &PruneOptions::default(), &NoProgress, &CancelToken::new()).unwrap();
}

#[test]
fn repair_index_rebuilds_a_lost_index_from_pack_headers() {
    let t = TestRepo::new();
    let src = t.dir.path().join("src");
    build(&src, &[Entry::File("x", noise(3 << 20, 5)), Entry::File("y", text(1 << 20, 6))]);
    t.backup(&[&src]);
    for m in t.repo.backend().list("index/").unwrap() {
        t.repo.backend().delete(&m.key).unwrap();
    }
    let broken = check_all(&t.repo);
    assert!(!broken.is_clean(), "blobs are not in any index");
    let report = repair::rebuild_index(&t.repo, &NoProgress).unwrap();
    assert!(report.packs > 0 && report.unreadable.is_empty(), "{report:?}");
    let fixed = check_all(&t.repo);
    assert!(fixed.is_clean(), "{:?}", fixed.errors);
}

#[test]
fn ls_diff_and_dump_show_what_a_snapshot_holds() {
    let t = TestRepo::new();
    let src = t.dir.path().join("src");
    build(
        &src,
        &[
            Entry::File("a.txt", b"first".to_vec()),
            Entry::File("d/b.txt", text(300_000, 1)),
            Entry::File("gone", vec![1]),
        ],
    );
    let one = t.backup(&[&src]);
    std::fs::write(src.join("a.txt"), b"second").unwrap();
    std::fs::remove_file(src.join("gone")).unwrap();
    std::fs::write(src.join("d/new"), b"n").unwrap();
    let two = t.backup(&[&src]);
    let index = t.repo.load_index().unwrap();

    let mut listed = Vec::new();
    ls::walk(&t.repo, &index, &two.snapshot, &src.join("d"), &mut |p, _| listed.push(p.to_path_buf())).unwrap();
    assert_eq!(listed, vec![src.join("d"), src.join("d/b.txt"), src.join("d/new")]);

    let mut changes = Vec::new();
    let stats = diff::diff(&t.repo, &index, &one.snapshot.tree, &two.snapshot.tree, &mut |p, c, _| {
        changes.push((c.code(), p.strip_prefix(&src).map(|p| p.to_path_buf()).unwrap_or_default()))
    })
    .unwrap();
    assert!(changes.contains(&('M', "a.txt".into())), "{changes:?}");
    assert!(changes.contains(&('-', "gone".into())), "{changes:?}");
    assert!(changes.contains(&('+', "d/new".into())), "{changes:?}");
    assert_eq!((stats.added, stats.removed, stats.modified), (1, 1, 1), "{changes:?}");

    let mut out = Vec::new();
    dump::dump(&t.repo, &index, &two.snapshot, &src.join("d/b.txt"), &mut out).unwrap();
    assert_eq!(out, std::fs::read(src.join("d/b.txt")).unwrap());
    let err = dump::dump(&t.repo, &index, &two.snapshot, &src.join("d"), &mut Vec::new()).unwrap_err();
    assert!(err.to_string().contains("not a file"), "{err}");
}
