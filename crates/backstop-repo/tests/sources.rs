//! Packagers' trees: streams, bytes and block images with changed-block
//! maps, backed up as one snapshot of kind `Source`.

mod common;

use std::fs;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use backstop_repo::backup::source::{ChangeMap, EntryData, RawImage, SourceEntry, SourceTree};
use backstop_repo::backup::{self, BackupOptions, BackupOutcome, BackupSource};
use backstop_repo::ops::dump;
use backstop_repo::{CancelToken, Error, NoProgress, Progress, SnapshotKind};
use common::*;

/// Collects the info lines a backup reports (they go to the job log).
#[derive(Default)]
struct Notes(Mutex<Vec<String>>);

impl Progress for Notes {
    fn info(&self, message: &str) {
        self.0.lock().unwrap().push(message.to_string());
    }
}

impl Notes {
    fn text(&self) -> String {
        self.0.lock().unwrap().join("\n")
    }
}

fn tree(kind: &str, label: &str, entries: Vec<SourceEntry>) -> BackupSource {
    BackupSource::Tree(SourceTree {
        kind: kind.into(),
        label: label.into(),
        entries,
        image_chunk_size: 8 << 10,
        notes: Vec::new(),
        capture: None,
    })
}

fn entry(path: &str, data: EntryData) -> SourceEntry {
    SourceEntry { path: path.into(), mode: 0o600, data }
}

fn run(t: &TestRepo, source: BackupSource, progress: &dyn Progress) -> backstop_repo::Result<BackupOutcome> {
    backup::run(&t.repo, source, &BackupOptions::default(), progress, &CancelToken::new())
}

fn dumped(t: &TestRepo, out: &BackupOutcome, path: &str) -> Vec<u8> {
    let index = t.repo.load_index().unwrap();
    let mut bytes = Vec::new();
    dump::dump(&t.repo, &index, &out.snapshot, Path::new(path), &mut bytes).unwrap();
    bytes
}

/// A stream that fails at its end, as a dump tool exiting non-zero does.
struct FailsAtEnd(std::io::Cursor<Vec<u8>>);

impl Read for FailsAtEnd {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self.0.read(buf)? {
            0 => Err(std::io::Error::other("pg_dump exited with status 1")),
            n => Ok(n),
        }
    }
}

#[test]
fn a_tree_of_streams_and_bytes_is_one_snapshot_with_every_entry() {
    let t = TestRepo::new();
    let dump_bytes = text(3 << 20, 7);
    let copy = dump_bytes.clone();
    let entries = vec![
        entry("globals.sql", EntryData::Bytes(b"CREATE ROLE app;\n".to_vec())),
        entry("databases/app.dump", EntryData::Stream(Box::new(move || Ok(Box::new(std::io::Cursor::new(copy)) as _)))),
        entry("databases/empty.dump", EntryData::Bytes(Vec::new())),
    ];
    let out = run(&t, tree("postgres", "postgres://db1/", entries), &NoProgress).unwrap();
    assert_eq!(out.snapshot.kind, SnapshotKind::Source);
    assert_eq!(out.snapshot.paths, vec!["postgres://db1/".to_string()]);
    assert_eq!(out.snapshot.source.as_ref().unwrap().kind, "postgres");
    assert_eq!(out.snapshot.summary.files_new, 3);
    assert_eq!(dumped(&t, &out, "/databases/app.dump"), dump_bytes);
    assert_eq!(dumped(&t, &out, "/globals.sql"), b"CREATE ROLE app;\n");
    assert_eq!(dumped(&t, &out, "/databases/empty.dump"), b"");

    // The same source again: the older snapshot is its parent, and the
    // unchanged dump adds no data.
    let copy = dump_bytes.clone();
    let again = vec![
        entry("globals.sql", EntryData::Bytes(b"CREATE ROLE app;\n".to_vec())),
        entry("databases/app.dump", EntryData::Stream(Box::new(move || Ok(Box::new(std::io::Cursor::new(copy)) as _)))),
    ];
    let second = run(&t, tree("postgres", "postgres://db1/", again), &NoProgress).unwrap();
    assert_eq!(second.parent, Some(out.id));
    assert_eq!(second.snapshot.summary.data_blobs_added, 0, "only the trees are new");
}

#[test]
fn a_failing_stream_fails_the_backup_and_writes_no_snapshot() {
    let t = TestRepo::new();
    let entries = vec![
        entry("ok.sql", EntryData::Bytes(b"fine".to_vec())),
        entry(
            "app.dump",
            EntryData::Stream(Box::new(|| Ok(Box::new(FailsAtEnd(std::io::Cursor::new(text(100_000, 1)))) as _))),
        ),
    ];
    let err = run(&t, tree("postgres", "postgres://db1/app", entries), &NoProgress).unwrap_err();
    assert!(matches!(err, Error::Source(_)), "{err}");
    assert!(err.to_string().contains("pg_dump exited with status 1"), "{err}");
    assert!(t.repo.snapshots().unwrap().is_empty(), "no snapshot without the failed entry");

    // A stream that cannot even start fails the same way.
    let entries =
        vec![entry("x", EntryData::Stream(Box::new(|| Err(std::io::Error::other("cannot run mariadb-dump")))))];
    let err = run(&t, tree("mysql", "mysql://db/x", entries), &NoProgress).unwrap_err();
    assert!(err.to_string().contains("cannot run mariadb-dump"), "{err}");
    assert!(t.repo.snapshots().unwrap().is_empty());
}

#[test]
fn entry_paths_are_checked_before_anything_runs() {
    let t = TestRepo::new();
    for (paths, expect) in [
        (vec!["a/../b"], "not a valid entry path"),
        (vec!["a", "a"], "given twice"),
        (vec!["a", "a/b"], "below another entry"),
        (vec![""], "not a valid entry path"),
    ] {
        let entries = paths.iter().map(|p| entry(p, EntryData::Bytes(Vec::new()))).collect();
        let err = run(&t, tree("command", "cmd", entries), &NoProgress).unwrap_err();
        assert!(err.to_string().contains(expect), "{paths:?}: {err}");
    }
    let err = run(&t, tree("command", "cmd", Vec::new()), &NoProgress).unwrap_err();
    assert!(err.to_string().contains("nothing to back up"), "{err}");
}

/// A sparse 16 MiB image with data at a few places.
fn make_image(path: &Path) {
    let f = fs::File::create(path).unwrap();
    f.set_len(16 << 20).unwrap();
    f.write_all_at(&noise(1 << 20, 1), 0).unwrap();
    f.write_all_at(&text(2 << 20, 2), 5 << 20).unwrap();
    f.write_all_at(&noise(512 << 10, 3), 12 << 20).unwrap();
}

fn image_source(path: &Path, changes: Option<ChangeMap>, generation: Option<&str>) -> BackupSource {
    let image = RawImage::open(path).unwrap().with_changes(changes).with_generation(generation.map(str::to_string));
    tree("image", &format!("image:{}", path.display()), vec![entry("disk.raw", EntryData::Image(Arc::new(image)))])
}

#[test]
fn an_image_with_a_changed_block_map_reads_only_the_changed_blocks() {
    let t = TestRepo::new();
    let path = t.dir.path().join("disk.raw");
    make_image(&path);
    let first = run(&t, image_source(&path, None, Some("1")), &NoProgress).unwrap();
    assert_eq!(first.snapshot.source.as_ref().unwrap().generations.get("disk.raw").map(String::as_str), Some("1"));
    assert!(first.snapshot.summary.bytes_read < 4 << 20, "holes are not read: {}", first.snapshot.summary.bytes_read);
    assert_eq!(dumped(&t, &first, "/disk.raw"), fs::read(&path).unwrap());

    // 4 KiB writes: in data, in a hole, and two adjacent ones.
    let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
    let writes = [(4096u64, 1u64), (3 << 20, 2), (5 << 20, 3), ((5 << 20) + 4096, 4), ((16 << 20) - 4096, 5)];
    for (offset, seed) in writes {
        f.write_all_at(&noise(4096, seed + 100), offset).unwrap();
    }
    let extents = vec![(4096, 4096), (3 << 20, 4096), (5 << 20, 8192), ((16 << 20) - 4096, 4096)];
    let changed: u64 = extents.iter().map(|e: &(u64, u64)| e.1).sum();
    let map = ChangeMap { generation: "2".into(), parent_generation: "1".into(), extents };
    let notes = Notes::default();
    let second = run(&t, image_source(&path, Some(map), None), &notes).unwrap();
    let read = second.snapshot.summary.bytes_read;
    assert!(read <= 2 * changed, "read {read} bytes for {changed} changed");
    assert!(notes.text().contains("changed-block map from generation 1 to 2"), "{}", notes.text());
    assert_eq!(second.snapshot.source.as_ref().unwrap().generations.get("disk.raw").map(String::as_str), Some("2"));
    assert_eq!(dumped(&t, &second, "/disk.raw"), fs::read(&path).unwrap(), "the restored image is the new one");
}

#[test]
fn a_map_that_does_not_follow_the_parent_is_not_trusted() {
    let t = TestRepo::new();
    let path = t.dir.path().join("disk.raw");
    make_image(&path);
    run(&t, image_source(&path, None, Some("1")), &NoProgress).unwrap();
    // A write the map does not mention, and a map from the wrong generation:
    // trusting it would lose the write.
    fs::OpenOptions::new().write(true).open(&path).unwrap().write_all_at(&noise(4096, 9), 9 << 20).unwrap();
    let map = ChangeMap { generation: "4".into(), parent_generation: "3".into(), extents: vec![(0, 4096)] };
    let notes = Notes::default();
    let out = run(&t, image_source(&path, Some(map), None), &notes).unwrap();
    let log = notes.text();
    assert!(log.contains("the map follows generation 3, but the parent snapshot holds generation 1"), "{log}");
    assert!(log.contains("comparing block hashes"), "{log}");
    assert!(out.snapshot.summary.bytes_read >= 3 << 20, "the whole image was read");
    assert_eq!(dumped(&t, &out, "/disk.raw"), fs::read(&path).unwrap());

    // A map past the image's end is refused the same way.
    let map = ChangeMap { generation: "5".into(), parent_generation: "4".into(), extents: vec![(32 << 20, 4096)] };
    let notes = Notes::default();
    let out = run(&t, image_source(&path, Some(map), None), &notes).unwrap();
    assert!(notes.text().contains("beyond the image's end"), "{}", notes.text());
    assert_eq!(dumped(&t, &out, "/disk.raw"), fs::read(&path).unwrap());
}
