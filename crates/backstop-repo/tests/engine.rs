//! Engine integration tests: backup, restore, incremental reuse, streams,
//! concurrency, checkpoints. Damage and crash tests live in their own files.

mod common;

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use backstop_backend::PathScope;
use backstop_repo::backup::{self, BackupOptions, BackupSource, ParentChoice};
use backstop_repo::restore::{self, RestoreOptions};
use backstop_repo::{CancelToken, NoProgress, SnapshotKind};
use common::*;

fn fixture(root: &Path) {
    build(
        root,
        &[
            Entry::File("small.txt", b"hello backstop\n".to_vec()),
            Entry::File("empty", Vec::new()),
            Entry::File("docs/big.bin", noise(3 << 20, 1)),
            Entry::File("docs/text.log", text(2 << 20, 2)),
            Entry::File("docs/nested/deep/file", text(5000, 3)),
            Entry::Dir("empty-dir"),
            Entry::Symlink("link-to-small", "small.txt"),
            Entry::Symlink("dangling", "/does/not/exist"),
            Entry::Sparse("disk.raw", 8 << 20, vec![(1 << 20, noise(200_000, 4)), (6 << 20, text(70_000, 5))]),
            Entry::Sparse("holey.dat", 4 << 20, vec![(3 << 20, noise(4096, 6))]),
            Entry::HardLink("docs/hardlink", "small.txt"),
            Entry::Fifo("pipe"),
        ],
    );
    // A name that is not UTF-8.
    fs::write(root.join(std::ffi::OsStr::from_bytes(b"caf\xe9.txt")), b"latin-1 name").unwrap();
    fs::set_permissions(root.join("docs/text.log"), std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
}

#[test]
fn backup_and_restore_reproduce_contents_and_metadata() {
    let t = TestRepo::new();
    let src = t.dir.path().join("src");
    fixture(&src);
    let out = t.backup(&[&src]);
    assert_eq!(out.snapshot.kind, SnapshotKind::Files);
    assert_eq!(out.snapshot.summary.warnings, 0);
    assert!(out.snapshot.summary.files_new >= 8);

    let target = t.dir.path().join("restore");
    let summary = t.restore("latest", &target);
    assert_eq!(summary.errors, 0, "{summary:?}");
    assert_same_tree(&src, &restored_path(&target, &src));

    // Holes stay holes: the 8 MiB image with ~270 KiB of data allocates little.
    let restored = restored_path(&target, &src.join("disk.raw"));
    let blocks = std::os::unix::fs::MetadataExt::blocks(&fs::metadata(&restored).unwrap());
    assert!(blocks * 512 < 2 << 20, "restored sparse file allocates {} bytes", blocks * 512);
}

#[test]
fn an_unchanged_tree_reads_nothing_and_adds_no_data() {
    let t = TestRepo::new();
    let src = t.dir.path().join("src");
    fixture(&src);
    let first = t.backup(&[&src]);
    let second = t.backup(&[&src]);
    assert_eq!(second.parent, Some(first.id));
    assert_eq!(second.snapshot.summary.bytes_read, 0, "{:?}", second.snapshot.summary);
    assert_eq!(second.snapshot.summary.data_blobs_added, 0);
    assert_eq!(second.snapshot.summary.files_new + second.snapshot.summary.files_changed, 0);
}

#[test]
fn a_changed_file_is_read_again_and_only_new_chunks_are_stored() {
    let t = TestRepo::new();
    let src = t.dir.path().join("src");
    fixture(&src);
    t.backup(&[&src]);
    // Insert in the middle of a large file: content-defined chunks
    // resynchronise after the change. (Cut points depend on the random
    // repository key, so bound the cost loosely: a few chunks of a 16 MiB file.)
    let path = src.join("docs/text.log");
    fs::write(&path, text(16 << 20, 98)).unwrap();
    t.backup(&[&src]);
    let mut data = fs::read(&path).unwrap();
    data.splice(8_000_000..8_000_000, text(10_000, 99));
    fs::write(&path, &data).unwrap();
    let second = t.backup(&[&src]);
    let s = &second.snapshot.summary;
    assert_eq!(s.files_changed, 1, "{s:?}");
    assert_eq!(s.bytes_read, data.len() as u64);
    assert!(s.data_blobs_added <= 3, "an insertion re-stores the chunks around it, not the file: {s:?}");
    assert!(s.bytes_added < 6 << 20, "an insertion re-stores the chunks around it, not the file: {s:?}");

    let target = t.dir.path().join("restore");
    t.restore("latest", &target);
    assert_eq!(fs::read(restored_path(&target, &path)).unwrap(), data);
}

#[test]
fn fixed_chunks_make_scattered_writes_to_images_cheap() {
    let t = TestRepo::new();
    let src = t.dir.path().join("src");
    build(&src, &[Entry::Sparse("vm.img", 64 << 20, vec![(0, noise(8 << 20, 7)), (32 << 20, noise(8 << 20, 8))])]);
    t.backup(&[&src]);
    let f = fs::OpenOptions::new().write(true).open(src.join("vm.img")).unwrap();
    for i in 0..16u64 {
        std::os::unix::fs::FileExt::write_all_at(&f, &noise(4096, 100 + i), i * 1_000_003 % (8 << 20)).unwrap();
    }
    drop(f);
    let second = t.backup(&[&src]);
    let s = &second.snapshot.summary;
    // 16 scattered 4 KiB writes touch at most 32 chunks of 32 KiB (a write
    // may straddle two), plus the trees.
    assert!(s.bytes_added <= 2 * 16 * 32768 + 65536, "{s:?}");
    assert!(s.bytes_read <= 17 << 20, "holes are not read: {s:?}");
    let target = t.dir.path().join("restore");
    t.restore("latest", &target);
    assert_eq!(
        blake3::hash(&fs::read(restored_path(&target, &src.join("vm.img"))).unwrap()),
        blake3::hash(&fs::read(src.join("vm.img")).unwrap())
    );
}

#[test]
fn a_stream_is_stored_as_one_file() {
    let t = TestRepo::new();
    let data = text(3 << 20, 11);
    let source =
        BackupSource::Stream { reader: Box::new(std::io::Cursor::new(data.clone())), filename: "db.sql".into() };
    let out = backup::run(&t.repo, source, &BackupOptions::default(), &NoProgress, &CancelToken::new()).unwrap();
    assert_eq!(out.snapshot.kind, SnapshotKind::Stream);
    assert_eq!(out.snapshot.paths, vec!["/db.sql".to_string()]);
    let target = t.dir.path().join("restore");
    t.restore("latest", &target);
    assert_eq!(fs::read(target.join("db.sql")).unwrap(), data);
}

#[test]
fn an_image_streamed_with_fixed_chunks_stores_only_changed_blocks() {
    let t = TestRepo::new();
    let mut image = vec![0u8; 8 << 20];
    image[1 << 20..3 << 20].copy_from_slice(&noise(2 << 20, 21));
    let options = BackupOptions { fixed_chunking: backstop_repo::backup::FixedChunking::Always, ..Default::default() };
    let stream = |data: &[u8]| BackupSource::Stream {
        reader: Box::new(std::io::Cursor::new(data.to_vec())),
        filename: "vm.raw".into(),
    };
    let first = backup::run(&t.repo, stream(&image), &options, &NoProgress, &CancelToken::new()).unwrap();
    // Zeros are not stored: only the 2 MiB of data, in 32 KiB chunks.
    assert_eq!(first.snapshot.summary.data_blobs_added, 64);
    // One 4 KiB write costs one 32 KiB chunk, not a shifted CDC chunk.
    image[(2 << 20) + 100..(2 << 20) + 4196].copy_from_slice(&noise(4096, 22));
    let second = backup::run(&t.repo, stream(&image), &options, &NoProgress, &CancelToken::new()).unwrap();
    assert_eq!(second.snapshot.summary.data_blobs_added, 1);
    let mut out = Vec::new();
    let index = t.repo.load_index().unwrap();
    backstop_repo::ops::dump::dump(&t.repo, &index, &second.snapshot, Path::new("/"), &mut out).unwrap();
    assert_eq!(out, image);
}

#[test]
fn excludes_leave_matching_entries_out() {
    let t = TestRepo::new();
    let src = t.dir.path().join("src");
    build(
        &src,
        &[
            Entry::File("keep.txt", b"k".to_vec()),
            Entry::File("drop.tmp", b"d".to_vec()),
            Entry::File("cache/x", b"x".to_vec()),
            Entry::File("sub/also.tmp", b"a".to_vec()),
        ],
    );
    let options = BackupOptions { excludes: vec!["*.tmp".into(), "cache/".into()], ..Default::default() };
    t.backup_with(&[&src], &options);
    let target = t.dir.path().join("restore");
    t.restore("latest", &target);
    let r = restored_path(&target, &src);
    assert!(r.join("keep.txt").exists());
    assert!(!r.join("drop.tmp").exists() && !r.join("cache").exists() && !r.join("sub/also.tmp").exists());
    assert!(r.join("sub").is_dir());
}

#[test]
fn include_and_exclude_select_what_is_restored() {
    let t = TestRepo::new();
    let src = t.dir.path().join("src");
    fixture(&src);
    t.backup(&[&src]);
    let (_, snap) = t.repo.find_snapshot("latest").unwrap();
    let target = t.dir.path().join("restore");
    let mut options = RestoreOptions::new(&target);
    options.include = vec!["docs/".into()];
    options.exclude = vec!["*.bin".into()];
    let summary = restore::run(&t.repo, &snap, &options, &NoProgress, &CancelToken::new()).unwrap();
    let r = restored_path(&target, &src);
    assert!(r.join("docs/text.log").exists() && r.join("docs/nested/deep/file").exists());
    assert!(!r.join("docs/big.bin").exists(), "excluded");
    assert!(!r.join("small.txt").exists(), "not included");
    assert_eq!(summary.errors, 0);
}

#[test]
fn restore_verify_reads_back_every_file() {
    let t = TestRepo::new();
    let src = t.dir.path().join("src");
    fixture(&src);
    t.backup(&[&src]);
    let (_, snap) = t.repo.find_snapshot("latest").unwrap();
    let target = t.dir.path().join("restore");
    let mut options = RestoreOptions::new(&target);
    options.verify = true;
    let summary = restore::run(&t.repo, &snap, &options, &NoProgress, &CancelToken::new()).unwrap();
    assert_eq!(summary.errors, 0);
    assert!(summary.verified >= 8, "{summary:?}");
}

#[test]
fn two_concurrent_backups_into_one_repository_both_succeed() {
    let t = TestRepo::new();
    let a = t.dir.path().join("a");
    let b = t.dir.path().join("b");
    build(&a, &[Entry::File("x", noise(4 << 20, 20)), Entry::File("shared", text(1 << 20, 21))]);
    build(&b, &[Entry::File("y", noise(4 << 20, 22)), Entry::File("shared", text(1 << 20, 21))]);
    let repo_b = t.reopen();
    std::thread::scope(|s| {
        let ha = s.spawn(|| t.backup(&[&a]));
        let hb = s.spawn(|| {
            let source = BackupSource::Paths(vec![b.clone()]);
            backup::run(&repo_b, source, &BackupOptions::default(), &NoProgress, &CancelToken::new()).unwrap()
        });
        ha.join().unwrap();
        hb.join().unwrap();
    });
    assert_eq!(t.repo.snapshots().unwrap().len(), 2);
    for (id, snap) in t.repo.snapshots().unwrap() {
        let target = t.dir.path().join(format!("restore-{}", id.short()));
        restore::run(&t.repo, &snap, &RestoreOptions::new(&target), &NoProgress, &CancelToken::new()).unwrap();
        let src = Path::new(&snap.paths[0]);
        assert_same_tree(src, &restored_path(&target, src));
    }
}

#[test]
fn parent_none_reads_everything_again() {
    let t = TestRepo::new();
    let src = t.dir.path().join("src");
    build(&src, &[Entry::File("f", text(100_000, 1))]);
    t.backup(&[&src]);
    let out = t.backup_with(&[&src], &BackupOptions { parent: ParentChoice::None, ..Default::default() });
    assert_eq!(out.parent, None);
    assert_eq!(out.snapshot.summary.bytes_read, 100_000);
    assert_eq!(out.snapshot.summary.data_blobs_added, 0, "but deduplicates");
}

#[test]
fn a_cancelled_backup_leaves_a_checkpoint_that_the_next_backup_resumes() {
    let t = TestRepo::new();
    let src = t.dir.path().join("src");
    let files: Vec<Entry> = (0..40)
        .map(|i| Entry::File(Box::leak(format!("f{i:02}").into_boxed_str()), noise(256 << 10, 300 + i)))
        .collect();
    build(&src, &files);

    // Cancel after about half the bytes.
    struct CancelHalfway {
        token: CancelToken,
        seen: std::sync::atomic::AtomicU64,
    }
    impl backstop_repo::Progress for CancelHalfway {
        fn advance(&self, _files: u64, bytes: u64) {
            if self.seen.fetch_add(bytes, std::sync::atomic::Ordering::SeqCst) + bytes > 5 << 20 {
                self.token.cancel();
            }
        }
    }
    let token = CancelToken::new();
    let progress = CancelHalfway { token: token.clone(), seen: Default::default() };
    let options = BackupOptions { readers: 1, workers: 1, ..Default::default() };
    let err = backup::run(&t.repo, BackupSource::Paths(vec![src.clone()]), &options, &progress, &token).unwrap_err();
    assert!(matches!(err, backstop_repo::Error::Cancelled), "{err}");
    let checkpoints = t.repo.checkpoints().unwrap();
    assert_eq!(checkpoints.len(), 1, "a cancelled backup leaves one checkpoint");
    assert!(t.repo.snapshots().unwrap().is_empty(), "but no snapshot");

    let out = t.backup(&[&src]);
    assert_eq!(out.resumed, Some(checkpoints[0].0));
    let s = &out.snapshot.summary;
    assert!(s.files_unchanged >= 10, "finished files are reused: {s:?}");
    assert!(s.bytes_read < 10 << 20, "only the remainder is read: {s:?}");
    assert!(t.repo.checkpoints().unwrap().is_empty(), "the checkpoint is removed once resumed");
    let target = t.dir.path().join("restore");
    t.restore("latest", &target);
    assert_same_tree(&src, &restored_path(&target, &src));
}

#[test]
fn a_flush_covers_every_blob_saved_before_it_while_other_threads_keep_saving() {
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    use backstop_repo::backup::saver::Saver;
    use backstop_repo::crypto::Sealer;
    use backstop_repo::index::WriteIndex;
    use backstop_repo::pack::BlobKind;

    let t = TestRepo::new();
    let index = Arc::new(WriteIndex::new(Arc::new(t.repo.load_index().unwrap())));
    let sealer = Arc::new(Sealer::new(t.repo.key(), backstop_repo::SessionId::random()));
    let saver = Saver::start(&t.repo, sealer, index, 2, &CancelToken::new()).unwrap();
    let saved = Mutex::new(Vec::new());
    let stop = AtomicBool::new(false);
    let mut uploaded = HashSet::new();
    std::thread::scope(|s| {
        for thread in 0..4u64 {
            let (saver, saved, stop) = (&saver, &saved, &stop);
            s.spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    // Small blobs, so that the threads contend for pack slots.
                    let (id, _) = saver.save(BlobKind::Data, &noise(4096, thread << 32 | n)).unwrap();
                    saved.lock().unwrap().push(id);
                    n += 1;
                }
            });
        }
        // Stops the savers however this thread leaves the scope, so that a
        // failed assertion fails the test instead of hanging it.
        struct StopOnDrop<'a>(&'a AtomicBool);
        impl Drop for StopOnDrop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let _stop = StopOnDrop(&stop);
        for _ in 0..20 {
            std::thread::sleep(std::time::Duration::from_millis(20));
            let before: Vec<_> = saved.lock().unwrap().clone();
            saver.flush().unwrap();
            for pack in saver.take_uploaded() {
                uploaded.extend(pack.blobs.iter().map(|b| b.id));
            }
            let missing = before.iter().filter(|id| !uploaded.contains(*id)).count();
            assert_eq!(
                missing,
                0,
                "{missing} of {} blobs saved before the flush are not in uploaded packs",
                before.len()
            );
        }
    });
}

#[test]
fn extended_attributes_and_modes_of_files_are_restored() {
    use std::os::unix::fs::PermissionsExt;
    let t = TestRepo::new();
    let src = t.dir.path().join("src");
    build(&src, &[Entry::File("tagged.txt", b"has attributes".to_vec()), Entry::File("big.bin", noise(3 << 20, 9))]);
    for name in ["tagged.txt", "big.bin"] {
        let path = src.join(name);
        backstop_repo::sys::set_xattr(&path, b"user.backstop.test", format!("value of {name}").as_bytes())
            .expect("the test directory's file system must support user xattrs");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o604)).unwrap();
    }
    t.backup(&[&src]);
    let target = t.dir.path().join("restore");
    assert_eq!(t.restore("latest", &target).errors, 0);
    for name in ["tagged.txt", "big.bin"] {
        let restored = restored_path(&target, &src.join(name));
        let xattrs = backstop_repo::sys::xattrs(&restored).unwrap();
        assert!(
            xattrs.contains(&(b"user.backstop.test".to_vec(), format!("value of {name}").into_bytes())),
            "{name}: {xattrs:?}"
        );
        assert_eq!(fs::metadata(&restored).unwrap().permissions().mode() & 0o7777, 0o604, "{name}");
    }
    assert_same_tree(&src, &restored_path(&target, &src));
}

#[test]
fn a_job_log_lives_beside_its_snapshot_and_goes_with_it() {
    let t = TestRepo::new();
    let src = t.dir.path().join("src");
    build(&src, &[Entry::File("a", b"x".to_vec())]);
    let out = t.backup(&[&src]);
    let log = b"{\"level\":\"info\",\"message\":\"snapshot saved\"}\n";
    t.repo.put_job_log(&out.id, "01a2b3c4-0000-7000-8000-000000000001", log).unwrap();
    assert_eq!(
        t.reopen().job_logs(&out.id).unwrap(),
        vec![("01a2b3c4-0000-7000-8000-000000000001".to_string(), log.to_vec())]
    );
    assert!(t.repo.put_job_log(&out.id, "../escape", log).is_err(), "job ids are checked");
    t.repo.delete_snapshot(&out.id).unwrap();
    assert!(t.repo.job_logs(&out.id).unwrap().is_empty());
}

/// A tenant's tree beside the service's own files, with links out of it.
fn tenant_layout(base: &Path) -> (PathBuf, PathBuf) {
    let root = base.join("tenants/tb");
    let service = base.join("service");
    std::fs::create_dir_all(root.join("data/sub")).unwrap();
    std::fs::write(root.join("data/sub/mine.txt"), b"the tenant's own").unwrap();
    std::fs::create_dir_all(&service).unwrap();
    std::fs::write(service.join("server.key"), b"the service's secret").unwrap();
    std::os::unix::fs::symlink(&service, root.join("svcdir")).unwrap();
    std::os::unix::fs::symlink(&service, root.join("data/escape")).unwrap();
    (root, service)
}

#[test]
fn a_confined_backup_never_reads_through_a_link_out_of_its_root() {
    let t = TestRepo::new();
    let (root, _service) = tenant_layout(t.dir.path());
    let options = BackupOptions { paths: PathScope::Beneath { roots: vec![root.clone()] }, ..Default::default() };
    // A path through the link is refused before anything is read.
    let source = BackupSource::Paths(vec![root.join("svcdir/server.key")]);
    let err = backup::run(&t.repo, source, &options, &NoProgress, &CancelToken::new()).unwrap_err();
    assert!(err.to_string().contains("leads outside"), "{err}");
    // So is a path outside the root.
    let source = BackupSource::Paths(vec![t.dir.path().join("service")]);
    assert!(backup::run(&t.repo, source, &options, &NoProgress, &CancelToken::new()).is_err());
    // The tenant's own tree is backed up; its link out is kept as a link.
    let out = t.backup_with(&[&root.join("data")], &options);
    let target = t.dir.path().join("restored");
    t.restore(&out.id.to_string(), &target);
    let restored = target.join(root.strip_prefix("/").unwrap()).join("data");
    assert_eq!(std::fs::read(restored.join("sub/mine.txt")).unwrap(), b"the tenant's own");
    assert!(std::fs::symlink_metadata(restored.join("escape")).unwrap().file_type().is_symlink());
}

#[test]
fn a_confined_restore_never_writes_through_a_link_out_of_its_root() {
    let t = TestRepo::new();
    let src = t.dir.path().join("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::write(src.join("d/planted"), b"written by the restore").unwrap();
    let out = t.backup(&[&src]);
    let (root, service) = tenant_layout(t.dir.path());
    let (_, snap) = t.repo.find_snapshot(&out.id.to_string()).unwrap();
    let scope = PathScope::Beneath { roots: vec![root.clone()] };
    for target in [root.join("svcdir"), root.join("svcdir/deeper"), root.join("data/escape/x")] {
        let mut options = RestoreOptions::new(&target);
        options.paths = scope.clone();
        let err = restore::run(&t.repo, &snap, &options, &NoProgress, &CancelToken::new()).unwrap_err();
        assert!(err.to_string().contains("leads outside"), "{}: {err}", target.display());
    }
    let mut left: Vec<_> = std::fs::read_dir(&service).unwrap().map(|e| e.unwrap().file_name()).collect();
    left.sort();
    assert_eq!(left, ["server.key"], "nothing was written outside the tenant's root");
    // A target beneath the root works, its missing directories made there.
    let mut options = RestoreOptions::new(root.join("restores/one"));
    options.paths = scope;
    restore::run(&t.repo, &snap, &options, &NoProgress, &CancelToken::new()).unwrap();
    let restored = root.join("restores/one").join(src.strip_prefix("/").unwrap());
    assert_eq!(std::fs::read(restored.join("d/planted")).unwrap(), b"written by the restore");
}

#[test]
fn a_link_in_a_restore_target_is_replaced_never_written_through() {
    let t = TestRepo::new();
    let src = t.dir.path().join("src");
    std::fs::create_dir_all(src.join("d/e")).unwrap();
    std::fs::write(src.join("d/e/f"), b"data").unwrap();
    std::fs::write(src.join("g"), b"data").unwrap();
    let out = t.backup(&[&src]);
    let outside = t.dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let target = t.dir.path().join("target");
    let inner = target.join(src.strip_prefix("/").unwrap());
    std::fs::create_dir_all(&inner).unwrap();
    // Where a directory and a file of the snapshot go, links to elsewhere.
    std::os::unix::fs::symlink(&outside, inner.join("d")).unwrap();
    std::os::unix::fs::symlink(outside.join("g"), inner.join("g")).unwrap();
    t.restore(&out.id.to_string(), &target);
    assert_eq!(std::fs::read(inner.join("d/e/f")).unwrap(), b"data");
    assert!(!std::fs::symlink_metadata(inner.join("d")).unwrap().file_type().is_symlink());
    assert!(std::fs::read_dir(&outside).unwrap().next().is_none(), "nothing went through the links");
}

#[test]
fn a_confined_restore_gives_a_tenant_no_setuid_files_device_nodes_or_privileged_attributes() {
    use std::os::unix::fs::PermissionsExt;
    let t = TestRepo::new();
    let src = t.dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("suid"), b"#!/bin/sh\n").unwrap();
    fs::set_permissions(src.join("suid"), fs::Permissions::from_mode(0o4755)).unwrap();
    let dev = std::ffi::CString::new(src.join("disk").as_os_str().as_bytes()).unwrap();
    // SAFETY: dev is NUL-terminated.
    let rc = unsafe { libc::mknod(dev.as_ptr(), libc::S_IFBLK | 0o666, libc::makedev(7, 0)) };
    assert_eq!(rc, 0, "this test makes a device node and needs root: {}", std::io::Error::last_os_error());
    backstop_repo::sys::set_xattr(&src.join("suid"), b"trusted.backstop", b"privileged").unwrap();
    backstop_repo::sys::set_xattr(&src.join("suid"), b"user.backstop", b"plain").unwrap();
    let out = t.backup(&[&src]);
    let (_, snap) = t.repo.find_snapshot(&out.id.to_string()).unwrap();

    let root = t.dir.path().join("tenants/tb");
    fs::create_dir_all(&root).unwrap();
    let mut options = RestoreOptions::new(root.join("r"));
    options.paths = PathScope::Beneath { roots: vec![root.clone()] };
    let summary = restore::run(&t.repo, &snap, &options, &NoProgress, &CancelToken::new()).unwrap();
    assert_eq!(summary.errors, 1, "the device node is refused, by name: {summary:?}");
    let restored = root.join("r").join(src.strip_prefix("/").unwrap());
    let mode = fs::metadata(restored.join("suid")).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o755, "no setuid bit in a tenant's tree");
    assert!(fs::symlink_metadata(restored.join("disk")).is_err(), "no device node");
    let names: Vec<Vec<u8>> =
        backstop_repo::sys::xattrs(&restored.join("suid")).unwrap().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, vec![b"user.backstop".to_vec()], "only user.* attributes");

    // The system tenant's restore keeps all of it.
    let target = t.dir.path().join("admin");
    t.restore(&out.id.to_string(), &target);
    let restored = target.join(src.strip_prefix("/").unwrap());
    assert_eq!(fs::metadata(restored.join("suid")).unwrap().permissions().mode() & 0o7777, 0o4755);
    assert!(std::os::unix::fs::FileTypeExt::is_block_device(
        &fs::symlink_metadata(restored.join("disk")).unwrap().file_type()
    ));
}

#[test]
fn a_fifo_named_like_a_cache_tag_does_not_stop_the_walk() {
    let t = TestRepo::new();
    let src = t.dir.path().join("src");
    fs::create_dir_all(src.join("cache")).unwrap();
    fs::write(src.join("cache/data"), b"x").unwrap();
    let fifo = std::ffi::CString::new(src.join("cache/CACHEDIR.TAG").as_os_str().as_bytes()).unwrap();
    // SAFETY: fifo is NUL-terminated.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    let options = BackupOptions { exclude_caches: true, ..Default::default() };
    let out = t.backup_with(&[&src], &options);
    assert_eq!(out.snapshot.summary.files_new, 1, "the directory is no cache, its file is kept");
}
