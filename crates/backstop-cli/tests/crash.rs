//! `kill -9` at many points of backup and prune: afterwards the repository
//! checks clean, a new backup succeeds, and an interrupted first backup is
//! resumed rather than redone.

mod common;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

/// Many files of incompressible data.
fn bulky(root: &Path, files: usize, size: usize, seed: u64) {
    for i in 0..files {
        let path = root.join(format!("dir{}/file{i:03}.bin", i % 4));
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, noise(size, seed + i as u64)).unwrap();
    }
}

/// Slow the transfers down so that a kill lands mid-operation.
const SLOW: [&str; 4] = ["--limit-upload", "16384", "--limit-download", "16384"];

/// Start `args`, kill -9 it after `delay`; returns whether it was still running.
fn kill_after(cli: &Cli, args: &[&str], delay: Duration) -> bool {
    let mut child = cli.spawn(args);
    std::thread::sleep(delay);
    let running = child.try_wait().unwrap().is_none();
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    running
}

#[test]
fn kill_9_during_backup_at_many_points_leaves_a_sound_repository() {
    let cli = Cli::local();
    cli.ok(&["init", "--pack-size-kib", "1024"]);
    let src = cli.path("src");
    bulky(&src, 48, 1 << 20, 1);
    cli.backup(&[&src]);

    let mut interrupted = 0;
    for step in 1..=8u32 {
        // Change some files each round so every backup has work to do.
        for i in 0..12 {
            let f = src.join(format!("dir{}/file{:03}.bin", i % 4, (i * 4 + step as usize) % 48));
            fs::write(&f, noise(1 << 20, 1000 * step as u64 + i as u64)).unwrap();
        }
        // 12 MiB at 16 MiB/s: the kills spread over the backup's 0.75 s.
        let delay = Duration::from_millis(90 * step as u64);
        let args = [&SLOW[..], &["backup", "--checkpoint-interval", "1", src.to_str().unwrap()]].concat();
        if kill_after(&cli, &args, delay) {
            interrupted += 1;
        }
        cli.check_clean(false);
    }
    assert!(interrupted >= 4, "only {interrupted} of 8 kills hit a running backup");
    let last = cli.backup(&[&src]);
    assert!(last["snapshot_id"].is_string());
    // The killed processes' session markers are still there; prune sees
    // their processes are gone and removes them.
    let markers = || fs::read_dir(cli.repo_dir().join("sessions")).map(|d| d.count()).unwrap_or(0);
    assert!(markers() > 0, "kill -9 leaves session markers behind");
    let pruned = cli.json(&["prune"]);
    assert!(pruned["sessions_removed"].as_u64().unwrap_or(0) > 0, "{pruned}");
    assert_eq!(markers(), 0, "prune removed the dead sessions' markers: {pruned}");
    cli.check_clean(true);
    let target = cli.path("restore");
    cli.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_same_tree(&src, &restored_path(&target, &src));
}

#[test]
fn kill_9_during_prune_at_many_points_loses_nothing() {
    let cli = Cli::local();
    cli.ok(&["init", "--pack-size-kib", "1024"]);
    let src = cli.path("src");
    // Quarter-MiB files, four to a pack: forgetting some leaves packs
    // partly used, which prune repacks.
    bulky(&src, 96, 256 << 10, 2);
    cli.backup(&[&src]);

    let mut interrupted = 0;
    for step in 1..=8u32 {
        // New data, and old data for prune to delete and repack.
        for i in 0..24 {
            let f = src.join(format!("dir{}/file{:03}.bin", i % 4, (i * 4 + step as usize) % 96));
            fs::write(&f, noise(256 << 10, 5000 * step as u64 + i as u64)).unwrap();
        }
        cli.backup(&[&src]);
        cli.ok(&["forget", "--keep-last", "1"]);
        let delay = Duration::from_millis(60 * step as u64);
        if kill_after(&cli, &[&SLOW[..], &["prune"]].concat(), delay) {
            interrupted += 1;
        }
        cli.check_clean(false);
        // The latest snapshot is whole after every interruption.
        let target = cli.path(&format!("restore{step}"));
        cli.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
        assert_same_tree(&src, &restored_path(&target, &src));
        fs::remove_dir_all(&target).unwrap();
    }
    assert!(interrupted >= 3, "only {interrupted} of 8 kills hit a running prune");
    cli.ok(&["prune"]);
    cli.check_clean(true);
    cli.backup(&[&src]);
}

#[test]
fn a_killed_first_backup_is_resumed_not_redone() {
    let cli = Cli::local();
    cli.ok(&["init", "--pack-size-kib", "1024"]);
    let src = cli.path("src");
    bulky(&src, 64, 1 << 20, 3);
    let total: u64 = 64 << 20;

    // Kill once a checkpoint exists and some data is stored (at 16 MiB/s
    // the backup takes four seconds).
    let log = fs::File::create(cli.path("first.log")).unwrap();
    let mut child = cli
        .command(&[&SLOW[..], &["backup", "--checkpoint-interval", "1", src.to_str().unwrap()]].concat())
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let checkpoints = fs::read_dir(cli.repo_dir().join("checkpoints")).map(|d| d.count()).unwrap_or(0);
        if checkpoints > 0 && files_under(&cli.repo_dir().join("data")).len() >= 8 {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            let log = fs::read_to_string(cli.path("first.log")).unwrap();
            panic!("the backup ended ({status}) before it could be interrupted:\n{log}");
        }
        assert!(Instant::now() < deadline, "no checkpoint appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let second = cli.backup(&[&src]);
    assert!(second["resumed"].is_string(), "the checkpoint was not used: {second}");
    let read = second["summary"]["bytes_read"].as_u64().unwrap();
    assert!(read < total * 9 / 10, "the resumed backup read {read} of {total} bytes");
    assert!(read > 0, "the interrupted backup cannot have finished everything");
    cli.check_clean(true);
    let target = cli.path("restore");
    cli.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_same_tree(&src, &restored_path(&target, &src));
}
