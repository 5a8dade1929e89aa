//! A local cache of a repository's metadata: index files, snapshot
//! manifests and tree packs, kept on the machine that reads them.
//!
//! Each is an immutable object named by the BLAKE3 hash of its bytes, so a
//! cached copy never goes stale: it is either the object or damaged, and a
//! copy whose hash does not match its name is dropped and fetched again
//! (damage in the cache is never reported as damage of the repository).
//! What a listing of the repository no longer shows (prune removed it) is
//! dropped from the cache at the next listing. Only sealed bytes are kept,
//! as stored: the cache holds nothing the repository does not.
//!
//! On object storage this saves a backup the round trips that fetch the
//! index and the parent's trees (a `restic`/`rustic` user has the same
//! cache), and the bytes: a large repository's index is fetched once,
//! not by every backup. `check` and `repair` read the repository itself
//! ([`crate::Repository::without_cache`]).
//!
//! Several processes may share a cache: files are written under a
//! temporary name and renamed into place, and a file that vanishes while
//! being read is simply fetched again.

use std::collections::HashSet;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::id::object_hash;

/// How long a file just kept outlives a listing that does not show it.
const FRESH: std::time::Duration = std::time::Duration::from_secs(600);

/// The kinds of object kept, by the directory of the repository they come
/// from and the directory they are kept in.
const KEPT: [(&str, &str); 3] = [("index/", "index"), ("snapshots/", "snapshots"), ("data/", "trees")];

/// The cache of one repository: a directory per repository id below the
/// cache's base directory.
#[derive(Debug)]
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    /// The cache of repository `id` below `base` (both made if missing,
    /// readable by their owner only). `base` is marked with a
    /// `CACHEDIR.TAG`, so that backup tools (Backstop's own
    /// `--exclude-caches` too) leave it out.
    pub fn open(base: &Path, id: &str) -> std::io::Result<Cache> {
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a repository id"));
        }
        let dir = base.join(id);
        for (_, sub) in KEPT {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir.join(sub))?;
        }
        // Made once, never through a link (create_new refuses any path that exists).
        if let Ok(mut tag) =
            std::fs::OpenOptions::new().write(true).create_new(true).mode(0o644).open(base.join("CACHEDIR.TAG"))
        {
            let _ = tag.write_all(
                b"Signature: 8a477f597d28d172789f06886806bc55\n\
                  # This is Backstop's cache of repository metadata; it is rebuilt when deleted.\n",
            );
        }
        Ok(Cache { dir })
    }

    /// Where the object `key` of the repository is kept, if it is a kind
    /// that is (its name is the hash of its bytes).
    fn path(&self, key: &str) -> Option<PathBuf> {
        let (from, to) = KEPT.iter().find(|(from, _)| key.starts_with(from))?;
        let name = key[from.len()..].rsplit('/').next()?;
        (name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit())).then(|| self.dir.join(to).join(name))
    }

    /// The kept copy of `key`, if there is one and it is intact (a damaged
    /// one is removed).
    pub(crate) fn get(&self, key: &str) -> Option<Vec<u8>> {
        let path = self.path(key)?;
        let bytes = std::fs::read(&path).ok()?;
        let name = path.file_name()?.to_str()?;
        if crate::id::hex(&object_hash(&bytes)) == name {
            Some(bytes)
        } else {
            let _ = std::fs::remove_file(&path);
            None
        }
    }

    /// Keep `bytes` as the object `key` (when it is a kind that is kept and
    /// they are what its name says). A cache that cannot be written costs
    /// only the next fetch, so failures are ignored.
    pub(crate) fn put(&self, key: &str, bytes: &[u8]) {
        let Some(path) = self.path(key) else { return };
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else { return };
        if path.exists() || crate::id::hex(&object_hash(bytes)) != name {
            return;
        }
        let temp = path.with_extension(format!("tmp-{}", crate::id::SessionId::random().to_hex()));
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
            .and_then(|mut f| f.write_all(bytes));
        if written.and_then(|()| std::fs::rename(&temp, &path)).is_err() {
            let _ = std::fs::remove_file(&temp);
        }
    }

    /// Drop the copy of `key`: this process removed it from the repository.
    pub(crate) fn evict(&self, key: &str) {
        if let Some(path) = self.path(key) {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Drop what is kept of the repository's directory `prefix` (`index/`,
    /// `snapshots/`, `data/`) but is not among `listed` (names, as in the
    /// repository): the repository no longer has it. What was kept in the
    /// last [`FRESH`] stays: another process sharing the cache may have
    /// written it after this one's listing (it goes at a later listing).
    pub(crate) fn retain(&self, prefix: &str, listed: &HashSet<String>) {
        let Some((_, to)) = KEPT.iter().find(|(from, _)| *from == prefix) else { return };
        let Ok(entries) = std::fs::read_dir(self.dir.join(to)) else { return };
        let fresh = |entry: &std::fs::DirEntry| {
            entry.metadata().and_then(|m| m.modified()).is_ok_and(|t| t.elapsed().is_ok_and(|age| age < FRESH))
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if !listed.contains(name.as_ref()) && !fresh(&entry) {
                // A temporary file left by a process that died is old too.
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    /// The directory of this repository's cache.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Where a cache lives when none is given: `$XDG_CACHE_HOME/backstop`, or
/// `~/.cache/backstop`; none without either.
pub fn default_base() -> Option<PathBuf> {
    let from = |var: &str| std::env::var_os(var).filter(|v| !v.is_empty()).map(PathBuf::from);
    from("XDG_CACHE_HOME").or_else(|| from("HOME").map(|h| h.join(".cache"))).map(|d| d.join("backstop"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(bytes: &[u8]) -> String {
        crate::id::hex(&object_hash(bytes))
    }

    #[test]
    fn objects_are_kept_by_their_hash_and_damage_is_dropped() {
        let base = tempfile::tempdir().unwrap();
        let cache = Cache::open(base.path(), "repo-1").unwrap();
        let bytes = b"an index file".to_vec();
        let key = format!("index/{}", named(&bytes));
        assert_eq!(cache.get(&key), None);
        cache.put(&key, &bytes);
        assert_eq!(cache.get(&key), Some(bytes.clone()));

        // Bytes that are not what the name says are not kept.
        let other = format!("index/{}", named(b"something else"));
        cache.put(&other, &bytes);
        assert_eq!(cache.get(&other), None);

        // A copy damaged on disk is dropped, not returned.
        let path = cache.dir().join("index").join(named(&bytes));
        std::fs::write(&path, b"an index fil3").unwrap();
        assert_eq!(cache.get(&key), None);
        assert!(!path.exists());

        // Packs are kept by their name, without the fan-out directory.
        let pack = b"a tree pack".to_vec();
        let pack_key = format!("data/{}/{}", &named(&pack)[..2], named(&pack));
        cache.put(&pack_key, &pack);
        assert_eq!(cache.get(&pack_key), Some(pack));
        assert!(base.path().join("CACHEDIR.TAG").exists());
    }

    #[test]
    fn what_the_repository_no_longer_lists_is_dropped() {
        let base = tempfile::tempdir().unwrap();
        let cache = Cache::open(base.path(), "repo-1").unwrap();
        let (a, b) = (b"first".to_vec(), b"second".to_vec());
        for bytes in [&a, &b] {
            cache.put(&format!("snapshots/{}", named(bytes)), bytes);
        }
        // Kept just now, another process's listing may not show it yet: it stays.
        cache.retain("snapshots/", &HashSet::from([named(&a)]));
        assert!(cache.get(&format!("snapshots/{}", named(&b))).is_some());
        let old = std::time::SystemTime::now() - FRESH - std::time::Duration::from_secs(1);
        let path = cache.dir().join("snapshots").join(named(&b));
        std::fs::File::options().write(true).open(&path).unwrap().set_modified(old).unwrap();
        cache.retain("snapshots/", &HashSet::from([named(&a)]));
        assert!(cache.get(&format!("snapshots/{}", named(&a))).is_some());
        assert!(cache.get(&format!("snapshots/{}", named(&b))).is_none());
    }

    #[test]
    fn other_objects_and_odd_ids_are_not_kept() {
        let base = tempfile::tempdir().unwrap();
        assert!(Cache::open(base.path(), "../escape").is_err());
        assert!(Cache::open(base.path(), "").is_err());
        let cache = Cache::open(base.path(), "r").unwrap();
        let bytes = b"config".to_vec();
        cache.put("config", &bytes);
        cache.put(&format!("keys/{}", named(&bytes)), &bytes);
        cache.put(&format!("checkpoints/{}", named(&bytes)), &bytes);
        assert_eq!(std::fs::read_dir(cache.dir()).unwrap().count(), 3, "only its three directories");
        for (_, sub) in KEPT {
            assert_eq!(std::fs::read_dir(cache.dir().join(sub)).unwrap().count(), 0);
        }
    }
}
