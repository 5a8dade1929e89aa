//! A repository in a local directory or on a mounted share (NFS, SMB).
//!
//! Written with `std::fs` rather than `object_store::local` because the
//! repository's crash safety rests on write ordering that survives power
//! loss: each object is written to `tmp/`, fsynced, moved into place without
//! replacing (for `PutMode::Create`) and its directory fsynced before `put`
//! returns. `object_store`'s local store does not fsync
//! (see `docs/decisions/0002-storage-backends.md`).

use std::collections::HashSet;
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::ops::Range;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::{Backend, Error, ErrorKind, ObjectMeta, PutMode, Result, validate_key, validate_prefix};

const STAGING: &str = "tmp";

#[derive(Debug)]
pub struct LocalBackend {
    root: PathBuf,
    /// Directories known to exist, so that most puts skip `create_dir_all`.
    known_dirs: Mutex<HashSet<PathBuf>>,
}

impl LocalBackend {
    pub fn new(root: impl Into<PathBuf>) -> LocalBackend {
        LocalBackend { root: root.into(), known_dirs: Mutex::new(HashSet::new()) }
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    fn staging(&self) -> PathBuf {
        self.root.join(STAGING)
    }

    /// Create `dir` and any missing parents, fsyncing each parent that gained
    /// an entry so the new directories survive a crash.
    fn ensure_dir(&self, dir: &Path) -> io::Result<()> {
        if self.known_dirs.lock().unwrap_or_else(|e| e.into_inner()).contains(dir) {
            return Ok(());
        }
        if !dir.is_dir() {
            if let Some(parent) = dir.parent() {
                self.ensure_dir(parent)?;
            }
            match fs::create_dir(dir) {
                Ok(()) => {
                    if let Some(parent) = dir.parent() {
                        sync_dir(parent)?;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        self.known_dirs.lock().unwrap_or_else(|e| e.into_inner()).insert(dir.to_path_buf());
        Ok(())
    }

    fn new_staging_file(&self) -> io::Result<(PathBuf, File)> {
        let dir = self.staging();
        self.ensure_dir(&dir)?;
        loop {
            let path = dir.join(format!("{}.tmp", random_hex()));
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(f) => return Ok((path, f)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Move the fsynced staging file `tmp` to `key`. On failure `tmp` stays.
    fn place(&self, key: &str, tmp: &Path, mode: PutMode) -> Result<()> {
        let dest = self.path(key);
        let parent = dest.parent().expect("a validated key has a parent under the root");
        self.ensure_dir(parent).map_err(|e| Error::io(key, e))?;
        let placed = match mode {
            PutMode::Overwrite => fs::rename(tmp, &dest),
            PutMode::Create => rename_noreplace(tmp, &dest),
        };
        placed.map_err(|e| Error::io(key, e))?;
        sync_dir(parent).map_err(|e| Error::io(key, e))
    }
}

impl Backend for LocalBackend {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn put(&self, key: &str, data: &[u8], mode: PutMode) -> Result<()> {
        validate_key(key)?;
        let (tmp, mut file) = self.new_staging_file().map_err(|e| Error::io(key, e))?;
        let written = file.write_all(data).and_then(|()| file.sync_all());
        drop(file);
        let placed = written.map_err(|e| Error::io(key, e)).and_then(|()| self.place(key, &tmp, mode));
        if placed.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        placed
    }

    fn put_file(&self, key: &str, path: &Path, mode: PutMode) -> Result<()> {
        validate_key(key)?;
        if path.parent() != Some(self.staging().as_path()) {
            let data = fs::read(path).map_err(|e| Error::io(key, e))?;
            self.put(key, &data, mode)?;
            let _ = fs::remove_file(path);
            return Ok(());
        }
        File::open(path).and_then(|f| f.sync_all()).map_err(|e| Error::io(key, e))?;
        self.place(key, path, mode)
    }

    fn get(&self, key: &str) -> Result<Vec<u8>> {
        validate_key(key)?;
        fs::read(self.path(key)).map_err(|e| Error::io(key, e))
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        self.get_range_into(key, range, &mut buf)?;
        Ok(buf)
    }

    fn get_range_into(&self, key: &str, range: Range<u64>, buf: &mut Vec<u8>) -> Result<()> {
        validate_key(key)?;
        let file = File::open(self.path(key)).map_err(|e| Error::io(key, e))?;
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
        let meta = fs::metadata(self.path(key)).map_err(|e| Error::io(key, e))?;
        if !meta.is_file() {
            return Err(Error::not_found(key));
        }
        Ok(ObjectMeta {
            key: key.to_string(),
            size: meta.len(),
            last_modified: meta.modified().map_err(|e| Error::io(key, e))?,
        })
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        validate_prefix(prefix)?;
        // Walk the deepest directory the prefix names; filter the rest by name.
        let dir_part = match prefix.rfind('/') {
            Some(i) => &prefix[..i],
            None => "",
        };
        let mut out = Vec::new();
        let start = if dir_part.is_empty() { self.root.clone() } else { self.root.join(dir_part) };
        walk(&self.root, &start, prefix, &mut out)?;
        Ok(out)
    }

    fn delete(&self, key: &str) -> Result<()> {
        validate_key(key)?;
        match fs::remove_file(self.path(key)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(key, e)),
        }
    }

    fn staging_dir(&self) -> Option<PathBuf> {
        let dir = self.staging();
        self.ensure_dir(&dir).ok()?;
        Some(dir)
    }
}

fn walk(root: &Path, dir: &Path, prefix: &str, out: &mut Vec<ObjectMeta>) -> Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(&dir.display().to_string(), e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(&dir.display().to_string(), e))?;
        let path = entry.path();
        let Ok(rel) = path.strip_prefix(root) else { continue };
        let Some(key) = rel.to_str() else { continue }; // not one of ours
        if key == STAGING {
            continue;
        }
        let file_type = entry.file_type().map_err(|e| Error::io(key, e))?;
        if file_type.is_dir() {
            // Descend only where keys with this prefix can live.
            let as_dir = format!("{key}/");
            if as_dir.starts_with(prefix) || prefix.starts_with(&as_dir) {
                walk(root, &path, prefix, out)?;
            }
        } else if file_type.is_file() && key.starts_with(prefix) {
            let meta = match entry.metadata() {
                Ok(meta) => meta,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue, // deleted meanwhile
                Err(e) => return Err(Error::io(key, e)),
            };
            out.push(ObjectMeta {
                key: key.to_string(),
                size: meta.len(),
                last_modified: meta.modified().map_err(|e| Error::io(key, e))?,
            });
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

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Move `from` to `to` unless `to` exists. `renameat2(RENAME_NOREPLACE)` where
/// the filesystem supports it; otherwise a hard link (atomic on NFS too)
/// followed by removing the source.
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    let c_from = CString::new(from.as_os_str().as_bytes())?;
    let c_to = CString::new(to.as_os_str().as_bytes())?;
    // SAFETY: both arguments are valid NUL-terminated paths that outlive the call.
    let rc = unsafe {
        libc::renameat2(libc::AT_FDCWD, c_from.as_ptr(), libc::AT_FDCWD, c_to.as_ptr(), libc::RENAME_NOREPLACE)
    };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EINVAL | libc::ENOSYS | libc::ENOTSUP) => {
            fs::hard_link(from, to)?;
            let _ = fs::remove_file(from);
            Ok(())
        }
        _ => Err(err),
    }
}

fn random_hex() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let src = staging.join("pack.tmp");
        fs::write(&src, b"pack bytes").unwrap();
        backend.put_file("data/ab/abcd", &src, PutMode::Create).unwrap();
        assert!(!src.exists());
        assert_eq!(backend.get("data/ab/abcd").unwrap(), b"pack bytes");
        // The staging directory never shows up as objects.
        let keys: Vec<_> = backend.list("").unwrap().into_iter().map(|m| m.key).collect();
        assert_eq!(keys, vec!["data/ab/abcd".to_string()]);
    }
}
