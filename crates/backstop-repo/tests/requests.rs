//! How many requests the engine makes of object storage, counted by a real
//! S3-protocol server: a walk over a snapshot reads its trees a level at a
//! time, neighbours in one request, not one request per directory (which
//! costs a round trip each: 801 of them in a row for the benchmark's tree).

#[allow(unused_imports)]
mod common;

use std::path::Path;

use backstop_backend::{OpenOptions, S3Options};
use backstop_repo::backup::{self, BackupOptions, BackupSource};
use backstop_repo::ops::check::{self, CheckOptions};
use backstop_repo::restore::{self, RestoreOptions};
use backstop_repo::{CancelToken, NoProgress, Password, Repository};
use backstop_testkit::{ACCESS_KEY, REGION, S3Server, S3Stats, SECRET_KEY};
use common::{PASSWORD, cheap_init};

const DIRS: usize = 120;
const FILES_PER_DIR: usize = 20;

/// 120 directories three levels deep, 20 small files in each.
fn many_small_files(root: &Path) {
    for d in 0..DIRS {
        let dir = root.join(format!("a{}/b{}/c{d}", d % 4, d % 12));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..FILES_PER_DIR {
            let body = format!("file {f} of directory {d}\n").repeat(1 + (d * 7 + f) % 50);
            std::fs::write(dir.join(format!("f{f}.txt")), body).unwrap();
        }
    }
}

fn open(server: &S3Server) -> Repository {
    Repository::init(backend(server), &Password::new(PASSWORD), cheap_init()).unwrap()
}

/// The repository `open` made, opened again (as another process would).
fn reopen(server: &S3Server) -> Repository {
    Repository::open(backend(server), &Password::new(PASSWORD)).unwrap()
}

fn backend(server: &S3Server) -> std::sync::Arc<dyn backstop_backend::Backend> {
    let options = OpenOptions {
        s3: S3Options {
            endpoint: Some(server.endpoint()),
            region: Some(REGION.into()),
            access_key_id: Some(ACCESS_KEY.into()),
            secret_access_key: Some(SECRET_KEY.into()),
            session_token: None,
            allow_http: Some(true),
        },
        ..OpenOptions::default()
    };
    backstop_backend::open("s3://bench/repo", &options).unwrap()
}

fn directory_reads(stats: &S3Stats) -> u64 {
    stats.count("GET range") + stats.count("GET")
}

#[test]
fn walks_over_a_snapshot_read_its_trees_a_level_at_a_time() {
    let server = S3Server::start(&["bench"]);
    let data = tempfile::tempdir().unwrap();
    many_small_files(data.path());
    let repo = open(&server);
    let source = || BackupSource::Paths(vec![data.path().to_path_buf()]);
    backup::run(&repo, source(), &BackupOptions::default(), &NoProgress, &CancelToken::new()).unwrap();
    let dirs = DIRS as u64;

    // Nothing changed: the walk compares every directory with its parent's.
    server.take_stats();
    backup::run(&repo, source(), &BackupOptions::default(), &NoProgress, &CancelToken::new()).unwrap();
    let again = server.take_stats();
    assert!(directory_reads(&again) < dirs / 4, "a backup with nothing changed read {again:?}");
    // Its parent's trees lie in one pack, read whole when the walk first
    // reaches it: one request, not one per level of the tree.
    assert_eq!(again.count("GET range"), 1, "a backup with nothing changed read its trees in {again:?}");

    let target = tempfile::tempdir().unwrap();
    let (_, snapshot) = repo.find_snapshot("latest").unwrap();
    restore::run(&repo, &snapshot, &RestoreOptions::new(target.path()), &NoProgress, &CancelToken::new()).unwrap();
    let restored = server.take_stats();
    assert!(directory_reads(&restored) < dirs / 4, "a restore of {dirs} directories read {restored:?}");
    let sample = data.path().join("a1/b5/c17/f3.txt");
    let back = target.path().join(sample.strip_prefix("/").unwrap());
    assert_eq!(std::fs::read(&back).unwrap(), std::fs::read(&sample).unwrap());
    assert_eq!(walkdir_count(target.path()), DIRS * FILES_PER_DIR, "every file restored ({restored:?})");

    // Cancelled before it starts, a restore reads no tree ahead.
    let cancel = CancelToken::new();
    cancel.cancel();
    let stopped = tempfile::tempdir().unwrap();
    let result = restore::run(&repo, &snapshot, &RestoreOptions::new(stopped.path()), &NoProgress, &cancel);
    assert!(matches!(result, Err(backstop_repo::Error::Cancelled)), "{:?}", result.err());
    let cancelled = server.take_stats();
    assert_eq!(cancelled.count("GET range"), 0, "a cancelled restore read trees: {cancelled:?}");

    let report = check::run(&repo, &CheckOptions::default(), &NoProgress, &CancelToken::new()).unwrap();
    assert!(report.is_clean(), "{report:?}");
    let checked = server.take_stats();
    assert!(directory_reads(&checked) < dirs / 4, "a check of two snapshots read {checked:?}");
}

fn walkdir_count(dir: &Path) -> usize {
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            n += walkdir_count(&entry.path());
        } else {
            n += 1;
        }
    }
    n
}

/// Trees read together fail alone: one directory's tree damaged in its
/// pack loses that directory, and its neighbours, read in the same
/// request, restore whole.
#[test]
fn a_damaged_tree_read_with_its_neighbours_loses_only_its_directory() {
    use backstop_repo::pack::{BlobKind, pack_key};
    let t = common::TestRepo::new();
    let data = tempfile::tempdir().unwrap();
    for d in 0..6 {
        let dir = data.path().join(format!("d{d}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("file"), format!("directory {d}\n")).unwrap();
    }
    t.backup(&[data.path()]);
    let repo = t.reopen();
    let index = repo.load_index().unwrap();
    let (_, snapshot) = repo.find_snapshot("latest").unwrap();
    let mut tree = repo.load_tree(&index, &snapshot.tree).unwrap();
    for name in data.path().strip_prefix("/").unwrap().components() {
        let subtree = tree.find(name.as_os_str().as_encoded_bytes()).unwrap().subtree().unwrap();
        tree = repo.load_tree(&index, &subtree).unwrap();
    }
    let victim = tree.find(b"d3").unwrap().subtree().unwrap();
    let loc = index.lookup(BlobKind::Tree, &victim).unwrap();
    let neighbour = tree.find(b"d2").unwrap().subtree().unwrap();
    assert_eq!(index.lookup(BlobKind::Tree, &neighbour).unwrap().pack, loc.pack, "the trees share a pack");
    let pack = t.root().join(pack_key(&loc.pack));
    let mut bytes = std::fs::read(&pack).unwrap();
    bytes[loc.offset as usize + loc.stored_len as usize / 2] ^= 0x20;
    std::fs::write(&pack, bytes).unwrap();

    let target = tempfile::tempdir().unwrap();
    let summary =
        restore::run(&repo, &snapshot, &RestoreOptions::new(target.path()), &NoProgress, &CancelToken::new()).unwrap();
    assert_eq!(summary.errors, 1, "the lost directory is reported once: {summary:?}");
    let restored = target.path().join(data.path().strip_prefix("/").unwrap());
    for d in [0, 1, 2, 4, 5] {
        let back = std::fs::read_to_string(restored.join(format!("d{d}/file"))).unwrap();
        assert_eq!(back, format!("directory {d}\n"));
    }
    assert!(!restored.join("d3/file").exists());
}

/// With a local cache, a backup finds its parent's index, manifest and
/// trees on the machine: what the last backup wrote costs no request. A
/// copy damaged in the cache is fetched again, and `check` reads the
/// repository itself.
#[test]
fn with_a_cache_a_backup_fetches_no_index_manifest_or_tree() {
    let server = S3Server::start(&["bench"]);
    let data = tempfile::tempdir().unwrap();
    many_small_files(data.path());
    let cache_dir = tempfile::tempdir().unwrap();
    let repo = open(&server);
    let repo = repo.clone().with_cache(repo.open_cache(cache_dir.path()).unwrap());
    let source = || BackupSource::Paths(vec![data.path().to_path_buf()]);
    let run = || backup::run(&repo, source(), &BackupOptions::default(), &NoProgress, &CancelToken::new()).unwrap();
    run();

    server.take_stats();
    run();
    let again = server.take_stats();
    assert_eq!(directory_reads(&again), 0, "the first backup's index, manifest and trees were cached: {again:?}");

    // A damaged copy in the cache is not trusted: the index is fetched again.
    let cached = repo.open_cache(cache_dir.path()).unwrap();
    let index_dir = cached.dir().join("index");
    let damaged = std::fs::read_dir(&index_dir).unwrap().next().unwrap().unwrap().path();
    let mut bytes = std::fs::read(&damaged).unwrap();
    bytes[40] ^= 1;
    std::fs::write(&damaged, bytes).unwrap();
    run();
    let refetched = server.take_stats();
    assert_eq!(refetched.count("GET"), 1, "only the damaged index file: {refetched:?}");
    assert!(std::fs::read(&damaged).is_ok_and(
        |b| backstop_repo::id::hex(blake3::hash(&b).as_bytes()) == damaged.file_name().unwrap().to_str().unwrap()
    ));

    // What this process removes leaves the cache at once; what another
    // removed leaves it at the next listing (once it is not fresh).
    let snapshots = repo.snapshots().unwrap();
    let kept = || std::fs::read_dir(cached.dir().join("snapshots")).unwrap().count();
    assert_eq!(kept(), 3);
    repo.delete_snapshot(&snapshots[0].0).unwrap();
    assert_eq!(kept(), 2);
    let other = reopen(&server);
    assert!(other.snapshots().unwrap().len() == 2);
    other.delete_snapshot(&snapshots[1].0).unwrap();
    let copy = cached.dir().join("snapshots").join(snapshots[1].0.to_string());
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    std::fs::File::options().write(true).open(&copy).unwrap().set_modified(old).unwrap();
    repo.snapshots().unwrap();
    assert_eq!(kept(), 1, "the listing no longer shows it");

    // check judges what is stored: it reads every index file from the repository.
    server.take_stats();
    let uncached = repo.without_cache();
    let report = check::run(&uncached, &CheckOptions::default(), &NoProgress, &CancelToken::new()).unwrap();
    assert!(report.is_clean(), "{report:?}");
    let checked = server.take_stats();
    assert!(checked.count("GET") >= 3, "check read the index and manifests: {checked:?}");
}
