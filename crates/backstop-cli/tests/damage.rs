//! Damaged and malicious repositories: `check` names each damaged object,
//! restores of unaffected data still work, nothing panics, and restore
//! never writes outside its target.

mod common;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use common::*;

/// A repository with two snapshots of separate trees, in small packs.
fn damaged_fixture() -> (Cli, PathBuf, PathBuf) {
    let cli = Cli::local();
    cli.ok(&["init", "--pack-size-kib", "1024"]);
    let a = cli.path("a");
    let b = cli.path("b");
    let files_a: Vec<Entry> =
        (0..6).map(|i| Entry::File(["a0", "a1", "a2", "a3", "a4", "a5"][i], noise(700_000, i as u64))).collect();
    build(&a, &files_a);
    build(&b, &[Entry::File("b.txt", text(300_000, 9))]);
    cli.backup(&[&a]);
    cli.backup(&[&b]);
    (cli, a, b)
}

fn rel_key(cli: &Cli, path: &Path) -> String {
    path.strip_prefix(cli.repo_dir()).unwrap().to_string_lossy().into_owned()
}

/// Restore snapshot `spec` and require that each file either is intact or
/// was named in a warning; returns how many were intact.
fn restore_what_survives(cli: &Cli, spec: &str, src: &Path) -> usize {
    let target = cli.path(&format!("restore-{}", spec));
    let _ = fs::remove_dir_all(&target);
    let out = cli.run(&["restore", spec, "--target", target.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let mut intact = 0;
    for f in files_under(src) {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let restored = restored_path(&target, &f);
        if fs::read(&restored).ok() == Some(fs::read(&f).unwrap()) {
            intact += 1;
        } else {
            assert!(stderr.contains(&name), "{name} was restored wrong without a warning:\n{stderr}");
            assert_ne!(code(&out), 0);
        }
    }
    intact
}

#[test]
fn a_flipped_byte_in_a_pack_is_named_by_check_and_the_rest_restores() {
    let (cli, a, b) = damaged_fixture();
    let packs = files_under(&cli.repo_dir().join("data"));
    // The biggest pack holds file data of the first snapshot.
    let victim = packs.iter().max_by_key(|p| fs::metadata(p).unwrap().len()).unwrap().clone();
    let mut bytes = fs::read(&victim).unwrap();
    bytes[1000] ^= 0x40;
    fs::write(&victim, bytes).unwrap();

    let out = cli.run(&["check", "--read-data"]);
    assert_eq!(code(&out), 1, "{}", output_text(&out));
    let report = output_text(&out);
    assert!(report.contains(&rel_key(&cli, &victim)), "check does not name {}:\n{report}", victim.display());

    let intact = restore_what_survives(&cli, "latest", &b);
    assert_eq!(intact, 1, "the second snapshot does not use the damaged pack");
    let snaps = cli.json(&["snapshots"]);
    let first = snaps[0]["id"].as_str().unwrap().to_string();
    let intact_a = restore_what_survives(&cli, &first, &a);
    assert!((1..6).contains(&intact_a), "{intact_a} of 6 files survived one damaged pack");
}

#[test]
fn a_damaged_pack_heals_the_next_backup_and_repair_packs_removes_it() {
    let (cli, a, _) = damaged_fixture();
    let first = cli.json(&["snapshots"])[0]["id"].as_str().unwrap().to_string();
    let packs = files_under(&cli.repo_dir().join("data"));
    let victim = packs.iter().max_by_key(|p| fs::metadata(p).unwrap().len()).unwrap().clone();
    let mut bytes = fs::read(&victim).unwrap();
    for b in &mut bytes[1000..1016] {
        *b ^= 0x40;
    }
    fs::write(&victim, bytes).unwrap();

    // Check names the pack, the blob and the snapshot that needs it.
    let out = cli.run(&["check", "--read-data"]);
    assert_eq!(code(&out), 1);
    let report = output_text(&out);
    assert!(report.contains(&format!("snapshot {}", &first[..8])), "check names the affected snapshot:\n{report}");

    // The next backup of the same data stores a fresh copy and restores.
    let again = cli.backup(&[&a]);
    assert!(again["summary"]["data_blobs_added"].as_u64().unwrap() > 0, "{again}");
    assert_eq!(restore_what_survives(&cli, "latest", &a), 6);

    // Repair removes the damaged pack; every snapshot is whole again.
    let repaired = cli.json(&["repair", "packs"]);
    assert_eq!(repaired["packs_removed"].as_array().unwrap().len(), 1, "{repaired}");
    assert_eq!(repaired["affected_snapshots"].as_array().unwrap().len(), 0, "{repaired}");
    assert!(!victim.exists());
    cli.check_clean(true);
    assert_eq!(restore_what_survives(&cli, &first, &a), 6);
    assert!(cli.ok(&["repair", "snapshots"]).contains("every snapshot has all it needs"));
}

#[test]
fn a_missing_pack_is_named_by_check_and_the_rest_restores() {
    let (cli, a, b) = damaged_fixture();
    let packs = files_under(&cli.repo_dir().join("data"));
    let victim = packs.iter().max_by_key(|p| fs::metadata(p).unwrap().len()).unwrap().clone();
    fs::remove_file(&victim).unwrap();

    let out = cli.run(&["check"]);
    assert_eq!(code(&out), 1);
    let id = victim.file_name().unwrap().to_string_lossy().into_owned();
    assert!(output_text(&out).contains(&id), "check does not name the missing pack:\n{}", output_text(&out));

    assert_eq!(restore_what_survives(&cli, "latest", &b), 1);
    let first = cli.json(&["snapshots"])[0]["id"].as_str().unwrap().to_string();
    assert!(restore_what_survives(&cli, &first, &a) < 6);
}

#[test]
fn a_missing_index_file_is_named_and_repair_index_rebuilds_it() {
    let (cli, a, _) = damaged_fixture();
    let index_files = files_under(&cli.repo_dir().join("index"));
    assert!(index_files.len() >= 2);
    fs::remove_file(&index_files[0]).unwrap();

    let out = cli.run(&["check"]);
    assert_eq!(code(&out), 1);
    let report = output_text(&out);
    assert!(report.contains("repair index"), "check does not say what to do:\n{report}");

    cli.ok(&["repair", "index"]);
    cli.check_clean(true);
    let first = cli.json(&["snapshots"])[0]["id"].as_str().unwrap().to_string();
    assert_eq!(restore_what_survives(&cli, &first, &a), 6);
}

#[test]
fn a_truncated_snapshot_is_named_and_the_others_still_work() {
    let (cli, a, _) = damaged_fixture();
    let snaps = cli.json(&["snapshots"]);
    let second = snaps[1]["id"].as_str().unwrap().to_string();
    let key = cli.repo_dir().join("snapshots").join(&second);
    let bytes = fs::read(&key).unwrap();
    fs::write(&key, &bytes[..bytes.len() / 2]).unwrap();

    let out = cli.run(&["check"]);
    assert_eq!(code(&out), 1);
    assert!(output_text(&out).contains(&format!("snapshots/{second}")), "{}", output_text(&out));

    // Read from the repository (as another machine would), the damage is named.
    let out = cli.run(&["snapshots", "--no-cache"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("snapshots/{second}")), "the damage is reported");
    let first = snaps[0]["id"].as_str().unwrap().to_string();
    assert_eq!(restore_what_survives(&cli, &first, &a), 6);
    let out = cli.run(&["restore", "--no-cache", &second[..8], "--target", cli.path("x").to_str().unwrap()]);
    assert_eq!(code(&out), 1, "the damaged snapshot cannot be found");
    // This machine's cache kept an intact copy of the manifest: through it,
    // the snapshot still restores.
    cli.ok(&["restore", &second[..8], "--target", cli.path("y").to_str().unwrap()]);
}

#[test]
fn a_wrong_password_is_refused_without_touching_the_repository() {
    let (cli, _, _) = damaged_fixture();
    let before = files_under(&cli.repo_dir());
    for args in [&["snapshots"][..], &["check"], &["prune"], &["backup", "/etc/hostname"]] {
        let out = cli.command(args).env("BACKSTOP_PASSWORD", "not it").output().unwrap();
        assert_eq!(code(&out), 12, "{args:?}: {}", output_text(&out));
        assert!(output_text(&out).contains("wrong password"));
    }
    assert_eq!(files_under(&cli.repo_dir()), before);
}

#[test]
fn garbage_in_every_object_kind_never_panics() {
    for dir in ["keys", "snapshots", "index", "data"] {
        let (cli, _, _) = damaged_fixture();
        for f in files_under(&cli.repo_dir().join(dir)) {
            let mut bytes = fs::read(&f).unwrap();
            let n = bytes.len();
            for i in (0..n).step_by(n / 7 + 1) {
                bytes[i] = bytes[i].wrapping_add(1);
            }
            fs::write(&f, bytes).unwrap();
        }
        let target = cli.path("target");
        let target = target.to_str().unwrap();
        for args in [&["snapshots"][..], &["ls", "latest"], &["restore", "latest", "--target", target]] {
            cli.run(args); // `run` asserts that there was no panic
        }
        let out = cli.run(&["check", "--read-data"]);
        assert_ne!(code(&out), 0, "check passed garbage in {dir}/");
    }
}

#[test]
fn restore_never_follows_symlinks_out_of_the_target() {
    let cli = Cli::local();
    cli.init();
    let outside = cli.path("outside");
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("precious"), b"keep me").unwrap();

    // Snapshot 1: `d` and `f` are symlinks pointing outside.
    let src = cli.path("src");
    fs::create_dir_all(&src).unwrap();
    symlink(&outside, src.join("d")).unwrap();
    symlink(outside.join("precious"), src.join("f")).unwrap();
    let one = cli.backup(&[&src]);
    // Snapshot 2: the same names are a directory with files and a file.
    fs::remove_file(src.join("d")).unwrap();
    fs::remove_file(src.join("f")).unwrap();
    build(
        &src,
        &[
            Entry::File("d/precious", b"overwritten".to_vec()),
            Entry::File("d/new", b"new".to_vec()),
            Entry::File("f", b"not precious".to_vec()),
        ],
    );
    cli.backup(&[&src]);

    // Restore 1 then 2 into the same target: 2 must replace the links, not write through them.
    let target = cli.path("target");
    cli.ok(&["restore", one["snapshot_id"].as_str().unwrap(), "--target", target.to_str().unwrap()]);
    assert!(fs::symlink_metadata(restored_path(&target, &src).join("d")).unwrap().file_type().is_symlink());
    cli.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_eq!(fs::read(outside.join("precious")).unwrap(), b"keep me");
    assert!(!outside.join("new").exists());
    assert_same_tree(&src, &restored_path(&target, &src));

    // A target that is itself reached through a symlinked parent inside it.
    let target2 = cli.path("target2");
    fs::create_dir_all(&target2).unwrap();
    let first_component = src.components().nth(1).unwrap().as_os_str().to_owned();
    symlink(&outside, target2.join(&first_component)).unwrap();
    cli.ok(&["restore", "latest", "--target", target2.to_str().unwrap()]);
    assert_eq!(files_under(&outside), vec![outside.join("precious")], "restore wrote outside its target");
    assert_eq!(fs::read(outside.join("precious")).unwrap(), b"keep me");
}
