//! The behaviour every [`Backend`] must show, as one suite that each
//! implementation's tests run against a fresh, empty backend. The engine
//! relies on exactly these properties; a new backend is ready when it passes.
//!
//! The functions panic on the first violation, naming it.

use std::collections::BTreeSet;

use crate::{Backend, Dir, ErrorKind, Links, PutMode};

/// Run every check against an empty backend.
pub fn run_all(backend: &dyn Backend) {
    assert!(backend.list("").expect("list an empty backend").is_empty(), "the backend under test must start empty");
    put_get_round_trip(backend);
    overwrite_and_create(backend);
    missing_objects(backend);
    ranges(backend);
    listing(backend);
    deletes(backend);
    put_file(backend);
    concurrent_puts(backend);
    invalid_keys(backend);
    clean_up(backend);
}

fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

fn put_get_round_trip(b: &dyn Backend) {
    for (key, len) in [("conf/empty", 0), ("conf/small", 7), ("conf/nested/deeper/big", 3 << 20)] {
        let data = payload(len, 1);
        b.put(key, &data, PutMode::Create).unwrap_or_else(|e| panic!("put {key}: {e}"));
        assert_eq!(b.get(key).unwrap_or_else(|e| panic!("get {key}: {e}")), data, "get {key} returns what was put");
        let meta = b.head(key).unwrap_or_else(|e| panic!("head {key}: {e}"));
        assert_eq!(meta.size, len as u64, "head {key} reports the size");
        assert_eq!(meta.key, key, "head reports the key");
    }
}

fn overwrite_and_create(b: &dyn Backend) {
    let key = "conf/overwrite";
    b.put(key, b"first", PutMode::Create).unwrap();
    let err = b.put(key, b"second", PutMode::Create).expect_err("Create on an existing object must fail");
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "Create on an existing object: {err}");
    assert_eq!(b.get(key).unwrap(), b"first", "a refused Create leaves the object untouched");
    b.put(key, b"third", PutMode::Overwrite).unwrap();
    assert_eq!(b.get(key).unwrap(), b"third", "Overwrite replaces");
}

fn missing_objects(b: &dyn Backend) {
    for result in [b.get("conf/missing").err(), b.head("conf/missing").err(), b.get_range("conf/missing", 0..1).err()] {
        let err = result.expect("a missing object must be an error");
        assert_eq!(err.kind(), ErrorKind::NotFound, "missing object: {err}");
    }
}

fn ranges(b: &dyn Backend) {
    let key = "conf/ranges";
    let data = payload(100_000, 2);
    b.put(key, &data, PutMode::Create).unwrap();
    assert_eq!(b.get_range(key, 0..10).unwrap(), &data[..10]);
    assert_eq!(b.get_range(key, 50_000..50_017).unwrap(), &data[50_000..50_017]);
    assert_eq!(b.get_range(key, 99_990..100_000).unwrap(), &data[99_990..], "a range ending at the end");
    assert_eq!(b.get_range(key, 0..100_000).unwrap(), data, "the whole object as a range");
    for bad in [99_990..100_001, 100_000..100_010, 200_000..200_001] {
        let err = b.get_range(key, bad.clone()).expect_err("a range past the end must fail");
        assert_eq!(err.kind(), ErrorKind::InvalidRange, "range {bad:?}: {err}");
        let err = b.get_range_into(key, bad.clone(), &mut Vec::new()).expect_err("a range past the end must fail");
        assert_eq!(err.kind(), ErrorKind::InvalidRange, "range {bad:?} into a buffer: {err}");
    }
    // Into a buffer that held more, then less, than the range.
    let mut buf = vec![7u8; 60_000];
    b.get_range_into(key, 100..20_100, &mut buf).unwrap();
    assert_eq!(buf, &data[100..20_100], "a longer buffer is cut to the range");
    b.get_range_into(key, 30_000..90_000, &mut buf).unwrap();
    assert_eq!(buf, &data[30_000..90_000], "a shorter buffer grows to the range");
    let err = b.get_range_into("conf/missing", 0..1, &mut buf).expect_err("a missing object");
    assert!(err.is_not_found(), "{err}");
}

fn listing(b: &dyn Backend) {
    let keys = ["list/a/1", "list/a/2", "list/b/1", "list/c", "listing-not-in-dir"];
    for k in keys {
        b.put(k, k.as_bytes(), PutMode::Create).unwrap();
    }
    let names = |prefix: &str| -> BTreeSet<String> {
        b.list(prefix).unwrap_or_else(|e| panic!("list {prefix}: {e}")).into_iter().map(|m| m.key).collect()
    };
    let set = |ks: &[&str]| ks.iter().map(|k| k.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(names("list/"), set(&["list/a/1", "list/a/2", "list/b/1", "list/c"]), "list recurses under a directory");
    assert_eq!(names("list/a/"), set(&["list/a/1", "list/a/2"]));
    assert_eq!(names("list/a/1"), set(&["list/a/1"]), "a prefix can be a whole key");
    assert_eq!(names("listing"), set(&["listing-not-in-dir"]), "a prefix can end inside a name");
    assert!(names("list/zzz/").is_empty(), "a prefix with no objects lists nothing");
    let sizes: Vec<u64> = b.list("list/a/").unwrap().into_iter().map(|m| m.size).collect();
    assert_eq!(sizes, vec![8, 8], "list reports sizes");
    for k in keys {
        b.delete(k).unwrap();
    }
}

fn deletes(b: &dyn Backend) {
    b.put("conf/delete-me", b"x", PutMode::Create).unwrap();
    b.delete("conf/delete-me").unwrap();
    assert_eq!(b.get("conf/delete-me").unwrap_err().kind(), ErrorKind::NotFound, "deleted objects are gone");
    b.delete("conf/delete-me").expect("deleting a missing object succeeds");
    assert!(b.list("conf/delete-me").unwrap().is_empty(), "deleted objects are not listed");
}

fn put_file(b: &dyn Backend) {
    let own = b.staging_dir();
    let temp = tempfile_dir();
    let dir: &Dir = own.as_deref().unwrap_or(&temp.1);
    let name = std::ffi::OsString::from(format!("conformance-{}.tmp", std::process::id()));
    let data = payload(1 << 20, 3);
    let mut f = dir
        .open_file(std::path::Path::new(&name), libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, 0o600, Links::Refuse)
        .unwrap();
    std::io::Write::write_all(&mut f, &data).unwrap();
    drop(f);
    b.put_file("conf/from-file", dir, &name, PutMode::Create).unwrap();
    assert!(dir.stat_at(&name).is_err(), "put_file consumes the source file");
    assert_eq!(b.get("conf/from-file").unwrap(), data);
}

/// A private directory under the system's temporary one (removed on drop).
fn tempfile_dir() -> (TempDir, Dir) {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let path = std::env::temp_dir().join(format!("backstop-conformance-{}-{nanos}", std::process::id()));
    let _ = std::fs::remove_dir_all(&path);
    std::fs::create_dir(&path).unwrap();
    let dir = Dir::open(&path).unwrap();
    (TempDir(path), dir)
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn concurrent_puts(b: &dyn Backend) {
    std::thread::scope(|s| {
        for t in 0..4u8 {
            s.spawn(move || {
                for i in 0..8 {
                    let key = format!("conc/{t}/{i}");
                    b.put(&key, &payload(1000, t ^ i), PutMode::Create).unwrap();
                }
            });
        }
    });
    assert_eq!(b.list("conc/").unwrap().len(), 32, "every concurrent put landed");
    // Racing writers of one key: at least one Create wins and the object
    // holds exactly one writer's bytes, never a mix. (Exclusivity under races
    // is not required: some S3-compatible servers check If-None-Match without
    // a lock, and the engine never uses Create for mutual exclusion.)
    let wins: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4u8)
            .map(|t| s.spawn(move || b.put("conc/race", &payload(100_000, t), PutMode::Create).is_ok() as usize))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert!(wins >= 1, "one of several racing Creates succeeds");
    let got = b.get("conc/race").unwrap();
    assert!((0..4u8).any(|t| got == payload(100_000, t)), "racing puts leave one whole object");
    for m in b.list("conc/").unwrap() {
        b.delete(&m.key).unwrap();
    }
}

fn invalid_keys(b: &dyn Backend) {
    for key in ["../escape", "/absolute", "a//b", ""] {
        let err = b.put(key, b"x", PutMode::Overwrite).expect_err("an invalid key must be refused");
        assert_eq!(err.kind(), ErrorKind::InvalidKey, "key {key:?}: {err}");
    }
}

fn clean_up(b: &dyn Backend) {
    for m in b.list("").unwrap() {
        b.delete(&m.key).unwrap();
    }
    assert!(b.list("").unwrap().is_empty(), "everything deleted");
}
