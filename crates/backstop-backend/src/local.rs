//! A repository in a local directory or on a mounted share (NFS, SMB).
//!
//! Written with the `*at` system calls rather than `object_store::local`
//! because the repository's crash safety rests on write ordering that
//! survives power loss: each object is written to `tmp/`, fsynced, moved
//! into place without replacing (for `PutMode::Create`) and its directory
//! fsynced before `put` returns. `object_store`'s local store does not
//! fsync (see `docs/decisions/0002-storage-backends.md`).
//!
//! The repository's directory is opened once; every key is resolved
//! beneath it without following a symbolic link ([`Links::Refuse`]): a
//! repository holds no links, so one in the way (a tenant swapping `tmp/`
//! or `data/ab/` for a link to elsewhere) is refused instead of written
//! through. A repository of a confined tenant is itself found beneath the
//! tenant's root ([`LocalBackend::confined`]).

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use backstop_confine::{Dir, Links, PathScope};

use crate::{Backend, Error, ErrorKind, ObjectMeta, PutMode, Result, validate_key, validate_prefix};

const STAGING: &str = "tmp";

/// How the repository's directory is found.
#[derive(Debug)]
enum Place {
    /// As named, links and all (an administrator's path).
    AsNamed(PathBuf),
    /// `rel` resolved beneath `root` (a confined tenant's repository).
    Beneath { root: PathBuf, rel: PathBuf },
}

#[derive(Debug)]
pub struct LocalBackend {
    location: PathBuf,
    place: Place,
    /// The repository's directory, once it exists.
    dir: OnceLock<Dir>,
    staging: OnceLock<Arc<Dir>>,
    /// Directories (relative to the repository) known to exist, so that
    /// most puts skip creating them.
    known_dirs: Mutex<HashSet<PathBuf>>,
}

fn meta_time(st: &libc::stat) -> SystemTime {
    let (s, ns) = (st.st_mtime, st.st_mtime_nsec);
    if s >= 0 {
        SystemTime::UNIX_EPOCH + Duration::new(s as u64, ns as u32)
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_secs(s.unsigned_abs()) + Duration::from_nanos(ns as u64)
    }
}

fn is_file(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFREG
}

fn not_found(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
}

/// Create `path` and any missing parents as named, fsyncing each parent
/// that gained an entry so the new directories survive a crash.
fn create_as_named(path: &Path) -> io::Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        create_as_named(parent)?;
    }
    match std::fs::create_dir(path) {
        Ok(()) => match path.parent() {
            Some(parent) => File::open(parent)?.sync_all(),
            None => Ok(()),
        },
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

impl LocalBackend {
    /// The repository at `root`, as named.
    pub fn new(root: impl Into<PathBuf>) -> LocalBackend {
        let root = root.into();
        LocalBackend::at(root.clone(), Place::AsNamed(root))
    }

    /// The repository at `path`, which `scope` must allow: beneath a
    /// confined tenant's root it is resolved there, at each open.
    pub fn confined(path: &Path, scope: &PathScope) -> Result<LocalBackend> {
        let place = match scope.locate(path) {
            Ok(None) => Place::AsNamed(path.to_path_buf()),
            Ok(Some((root, rel))) => Place::Beneath { root: root.to_path_buf(), rel },
            Err(e) => return Err(Error::new(ErrorKind::PermissionDenied, e.to_string())),
        };
        Ok(LocalBackend::at(path.to_path_buf(), place))
    }

    fn at(location: PathBuf, place: Place) -> LocalBackend {
        LocalBackend {
            location,
            place,
            dir: OnceLock::new(),
            staging: OnceLock::new(),
            known_dirs: Mutex::new(HashSet::new()),
        }
    }

    /// The repository's directory; with `create`, made if missing.
    fn dir(&self, create: bool) -> io::Result<&Dir> {
        if let Some(dir) = self.dir.get() {
            return Ok(dir);
        }
        let dir = match &self.place {
            Place::AsNamed(path) => match Dir::open(path) {
                Err(e) if create && not_found(&e) => {
                    create_as_named(path)?;
                    Dir::open(path)
                }
                other => other,
            },
            Place::Beneath { root, rel } => {
                let root_dir = if create { Dir::create(root)? } else { Dir::open(root)? };
                let explain = |e: io::Error| match e.raw_os_error() {
                    Some(libc::EXDEV | libc::ELOOP) => io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        format!(
                            "{}: a symbolic link on the way leads outside {}",
                            self.location.display(),
                            root.display()
                        ),
                    ),
                    _ => e,
                };
                match root_dir.open_dir(rel, Links::Beneath) {
                    Err(e) if create && not_found(&e) => {
                        root_dir.create_dir_all(rel, 0o777, Links::Beneath).map_err(explain)
                    }
                    other => other.map_err(explain),
                }
            }
        }?;
        let _ = self.dir.set(dir);
        Ok(self.dir.get().expect("set just above"))
    }

    fn staging(&self) -> io::Result<&Arc<Dir>> {
        if let Some(dir) = self.staging.get() {
            return Ok(dir);
        }
        let dir = self.dir(true)?.create_dir_all(Path::new(STAGING), 0o700, Links::Refuse)?;
        let _ = self.staging.set(Arc::new(dir));
        Ok(self.staging.get().expect("set just above"))
    }

    /// The directory `key` goes in, made if missing, and its last name.
    fn parent_for_put(&self, key: &str) -> io::Result<(Dir, OsString)> {
        let path = Path::new(key);
        let rel = path.parent().unwrap_or(Path::new(""));
        let name = path.file_name().expect("a validated key has a last name").to_os_string();
        let dir = self.dir(true)?;
        let known = self.known_dirs.lock().unwrap_or_else(|e| e.into_inner()).contains(rel);
        let parent = if known {
            dir.open_dir(rel, Links::Refuse)?
        } else {
            let parent = dir.create_dir_all(rel, 0o777, Links::Refuse)?;
            self.known_dirs.lock().unwrap_or_else(|e| e.into_inner()).insert(rel.to_path_buf());
            parent
        };
        Ok((parent, name))
    }

    fn new_staging_file(&self) -> io::Result<(Arc<Dir>, OsString, File)> {
        let staging = self.staging()?.clone();
        loop {
            let name = OsString::from(format!("{}.tmp", random_hex()));
            let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL;
            match staging.open_file(Path::new(&name), flags, 0o600, Links::Refuse) {
                Ok(f) => return Ok((staging, name, f)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Move the fsynced staging file `name` of `from` to `key`. On failure
    /// it stays.
    fn place(&self, key: &str, from: &Dir, name: &OsStr, mode: PutMode) -> Result<()> {
        let (parent, leaf) = self.parent_for_put(key).map_err(|e| Error::io(key, e))?;
        from.rename_at(name, &parent, &leaf, mode == PutMode::Create).map_err(|e| Error::io(key, e))?;
        parent.sync().map_err(|e| Error::io(key, e))
    }

    /// Open `key` for reading; a missing repository is a missing object,
    /// and only a regular file is one (a FIFO or a device planted in a
    /// tenant's repository is not waited on, nor read without end).
    fn open_key(&self, key: &str) -> io::Result<File> {
        let file = self.dir(false)?.open_file(Path::new(key), libc::O_RDONLY | libc::O_NONBLOCK, 0, Links::Refuse)?;
        if !file.metadata()?.is_file() {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "not a regular file (objects are)"));
        }
        Ok(file)
    }

    /// Whether `dir` is this backend's own staging directory.
    fn is_own_staging(&self, dir: &Dir) -> bool {
        let same = |a: &Dir, b: &Dir| match (a.stat(), b.stat()) {
            (Ok(x), Ok(y)) => x.st_dev == y.st_dev && x.st_ino == y.st_ino,
            _ => false,
        };
        self.staging.get().is_some_and(|own| same(own, dir))
    }
}

impl Backend for LocalBackend {
    fn location(&self) -> String {
        self.location.display().to_string()
    }

    fn put(&self, key: &str, data: &[u8], mode: PutMode) -> Result<()> {
        validate_key(key)?;
        let (staging, name, mut file) = self.new_staging_file().map_err(|e| Error::io(key, e))?;
        let written = file.write_all(data).and_then(|()| file.sync_all());
        drop(file);
        let placed = written.map_err(|e| Error::io(key, e)).and_then(|()| self.place(key, &staging, &name, mode));
        if placed.is_err() {
            let _ = staging.remove_at(&name);
        }
        placed
    }

    fn put_file(&self, key: &str, staging: &Dir, name: &OsStr, mode: PutMode) -> Result<()> {
        validate_key(key)?;
        if !self.is_own_staging(staging) {
            return crate::copy_staged(self, key, staging, name, mode);
        }
        staging
            .open_file(Path::new(name), libc::O_RDONLY, 0, Links::Refuse)
            .and_then(|f| f.sync_all())
            .map_err(|e| Error::io(key, e))?;
        self.place(key, staging, name, mode)
    }

    fn get(&self, key: &str) -> Result<Vec<u8>> {
        validate_key(key)?;
        let mut data = Vec::new();
        self.open_key(key).and_then(|mut f| f.read_to_end(&mut data)).map_err(|e| Error::io(key, e))?;
        Ok(data)
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        self.get_range_into(key, range, &mut buf)?;
        Ok(buf)
    }

    fn get_range_into(&self, key: &str, range: Range<u64>, buf: &mut Vec<u8>) -> Result<()> {
        validate_key(key)?;
        let file = self.open_key(key).map_err(|e| Error::io(key, e))?;
        let size = file.metadata().map_err(|e| Error::io(key, e))?.len();
        if range.start > range.end || range.end > size {
            return Err(invalid_range(key, &range, size));
        }
        // Only growth is zeroed: the bytes are overwritten by the read.
        buf.resize((range.end - range.start) as usize, 0);
        file.read_exact_at(buf, range.start).map_err(|e| Error::io(key, e))
    }

    fn head(&self, key: &str) -> Result<ObjectMeta> {
        validate_key(key)?;
        let stat = self
            .dir(false)
            .and_then(|d| d.parent_of(Path::new(key), Links::Refuse))
            .and_then(|(parent, name)| parent.stat_at(&name))
            .map_err(|e| Error::io(key, e))?;
        if !is_file(&stat) {
            return Err(Error::not_found(key));
        }
        Ok(ObjectMeta { key: key.to_string(), size: stat.st_size as u64, last_modified: meta_time(&stat) })
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        validate_prefix(prefix)?;
        // Walk the deepest directory the prefix names; filter the rest by name.
        let dir_part = match prefix.rfind('/') {
            Some(i) => &prefix[..i],
            None => "",
        };
        let start = match self.dir(false).and_then(|d| d.open_dir(Path::new(dir_part), Links::Refuse)) {
            Ok(dir) => dir,
            Err(e) if not_found(&e) => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(dir_part, e)),
        };
        let mut out = Vec::new();
        walk(&start, dir_part, prefix, &mut out)?;
        Ok(out)
    }

    fn delete(&self, key: &str) -> Result<()> {
        validate_key(key)?;
        let removed = self
            .dir(false)
            .and_then(|d| d.parent_of(Path::new(key), Links::Refuse))
            .and_then(|(parent, name)| parent.remove_at(&name));
        match removed {
            Ok(()) => Ok(()),
            Err(e) if not_found(&e) => Ok(()),
            Err(e) => Err(Error::io(key, e)),
        }
    }

    fn staging_dir(&self) -> Option<Arc<Dir>> {
        self.staging().ok().cloned()
    }
}

/// The objects under `dir` (at key `rel`) whose keys start with `prefix`.
fn walk(dir: &Dir, rel: &str, prefix: &str, out: &mut Vec<ObjectMeta>) -> Result<()> {
    let entries = match dir.read_dir() {
        Ok(entries) => entries,
        Err(e) if not_found(&e) => return Ok(()),
        Err(e) => return Err(Error::io(rel, e)),
    };
    for (name, stat) in entries {
        let Some(name) = name.to_str() else { continue }; // not one of ours
        let key = if rel.is_empty() { name.to_string() } else { format!("{rel}/{name}") };
        if key == STAGING {
            continue;
        }
        match stat.st_mode & libc::S_IFMT {
            libc::S_IFDIR => {
                // Descend only where keys with this prefix can live.
                let as_dir = format!("{key}/");
                if as_dir.starts_with(prefix) || prefix.starts_with(&as_dir) {
                    match dir.open_dir(Path::new(name), Links::Refuse) {
                        Ok(sub) => walk(&sub, &key, prefix, out)?,
                        Err(e) if not_found(&e) => {} // deleted meanwhile
                        Err(e) => return Err(Error::io(&key, e)),
                    }
                }
            }
            libc::S_IFREG if key.starts_with(prefix) => {
                out.push(ObjectMeta { key, size: stat.st_size as u64, last_modified: meta_time(&stat) });
            }
            // Links and anything else are not objects.
            _ => {}
        }
    }
    Ok(())
}

fn invalid_range(key: &str, range: &Range<u64>, size: u64) -> Error {
    Error::new(
        ErrorKind::InvalidRange,
        format!("byte range {}..{} is beyond the object's {size} bytes", range.start, range.end),
    )
    .with_key(key)
}

fn random_hex() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn local_backend_passes_the_conformance_suite() {
        let dir = tempfile::tempdir().unwrap();
        let backend = LocalBackend::new(dir.path().join("repo"));
        crate::conformance::run_all(&backend);
    }

    #[test]
    fn put_file_from_staging_moves_without_copying() {
        let dir = tempfile::tempdir().unwrap();
        let backend = LocalBackend::new(dir.path());
        let staging = backend.staging_dir().unwrap();
        std::fs::write(dir.path().join("tmp/pack.tmp"), b"pack bytes").unwrap();
        let before = std::fs::metadata(dir.path().join("tmp/pack.tmp")).unwrap();
        backend.put_file("data/ab/abcd", &staging, OsStr::new("pack.tmp"), PutMode::Create).unwrap();
        assert!(!dir.path().join("tmp/pack.tmp").exists());
        assert_eq!(backend.get("data/ab/abcd").unwrap(), b"pack bytes");
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            std::fs::metadata(dir.path().join("data/ab/abcd")).unwrap().ino(),
            before.ino(),
            "moved, not copied"
        );
        // The staging directory never shows up as objects.
        let keys: Vec<_> = backend.list("").unwrap().into_iter().map(|m| m.key).collect();
        assert_eq!(keys, vec!["data/ab/abcd".to_string()]);
    }

    #[test]
    fn links_inside_a_repository_are_refused_not_written_through() {
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        let repo = t.path().join("repo");
        std::fs::create_dir_all(repo.join("data")).unwrap();
        symlink(&outside, repo.join("data/ab")).unwrap();
        symlink(&outside, repo.join("index")).unwrap();
        std::fs::write(outside.join("secret"), b"s").unwrap();
        let backend = LocalBackend::new(&repo);
        let e = backend.put("data/ab/abcd", b"x", PutMode::Create).unwrap_err();
        assert!(!outside.join("abcd").exists(), "nothing written through the link: {e}");
        assert!(backend.get("index/secret").is_err(), "nothing read through a link");
        let e = backend.list("index/").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::PermissionDenied, "links are not listed into: {e}");
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert!(backend.delete("index/secret").is_err() || outside.join("secret").exists());
        assert!(outside.join("secret").exists());
        // A FIFO where an object should be is an error, not a wait.
        let fifo = std::ffi::CString::new(repo.join("config").as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: fifo is NUL-terminated.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        assert!(backend.get("config").is_err());
    }

    #[test]
    fn a_tenant_repository_is_found_beneath_its_root_at_every_open() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("tenants/tb");
        std::fs::create_dir_all(&root).unwrap();
        let data_dir = t.path().join("data");
        std::fs::create_dir_all(&data_dir).unwrap();
        symlink(&data_dir, root.join("svc")).unwrap();
        let scope = PathScope::Beneath { roots: vec![root.clone()] };
        let escaped = LocalBackend::confined(&root.join("svc/repository"), &scope).unwrap();
        let e = escaped.put("config", b"x", PutMode::Create).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
        assert!(e.to_string().contains("leads outside"), "{e}");
        assert!(std::fs::read_dir(&data_dir).unwrap().next().is_none(), "nothing was created outside");
        assert!(LocalBackend::confined(Path::new("/etc"), &scope).is_err());
        let own = LocalBackend::confined(&root.join("repo"), &scope).unwrap();
        own.put("config", b"mine", PutMode::Create).unwrap();
        assert_eq!(std::fs::read(root.join("repo/config")).unwrap(), b"mine");
    }
}
