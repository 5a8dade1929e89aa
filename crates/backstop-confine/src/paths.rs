//! [`PathScope`]: which local paths a job may name, and how they open.

use std::fs::File;
use std::io;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::dir::{Dir, Links};

/// The local paths a job may name on its worker's host.
///
/// A tenant's paths must lie strictly beneath one of its roots (the
/// administrator's `serve --tenant-root DIR`, joined with the tenant's id)
/// and are resolved beneath that root when they are used: a symbolic link
/// may lead from one place beneath the root to another, never out of it.
/// The roots themselves are the administrator's and are opened as named.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "scope", rename_all = "snake_case")]
pub enum PathScope {
    /// Any path, links and all: the system tenant's administrators.
    Any,
    /// Only paths beneath these roots (none: no local path at all).
    Beneath { roots: Vec<PathBuf> },
}

/// `path` is absolute and has neither `.` nor `..` in it.
fn is_clean(path: &Path) -> bool {
    path.is_absolute() && path.components().all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
}

impl PathScope {
    /// A scope with no paths at all.
    pub fn nowhere() -> PathScope {
        PathScope::Beneath { roots: Vec::new() }
    }

    /// Whether any path goes.
    pub fn is_any(&self) -> bool {
        matches!(self, PathScope::Any)
    }

    /// The root `path` lies beneath and the rest of it, checked by its
    /// text (the early answer an API gives; [`open_file`](Self::open_file)
    /// and the others check again at the moment of use). `None` for
    /// [`PathScope::Any`].
    pub fn locate<'a>(&'a self, path: &Path) -> io::Result<Option<(&'a Path, PathBuf)>> {
        let PathScope::Beneath { roots } = self else { return Ok(None) };
        let found = is_clean(path)
            .then(|| {
                roots.iter().find_map(|root| {
                    let rel = path.strip_prefix(root).ok()?;
                    (rel.components().next().is_some()).then(|| (root.as_path(), rel.to_path_buf()))
                })
            })
            .flatten();
        match found {
            Some(found) => Ok(Some(found)),
            None => Err(self.outside(path)),
        }
    }

    /// The error for a path outside every root.
    fn outside(&self, path: &Path) -> io::Error {
        let PathScope::Beneath { roots } = self else { unreachable!("Any has no outside") };
        let message = if roots.is_empty() {
            format!(
                "{} is a local path, and this tenant may use none on the service's hosts; an administrator can \
                 allow a directory per tenant with `backstop serve --tenant-root DIR`",
                path.display()
            )
        } else {
            let list: Vec<String> = roots.iter().map(|r| format!("{}/", r.display())).collect();
            format!(
                "{} is not beneath {} (an absolute path without . or .., below the tenant's own directory)",
                path.display(),
                list.join(" or ")
            )
        };
        io::Error::new(io::ErrorKind::PermissionDenied, message)
    }

    /// Check `path` by its text only.
    pub fn check(&self, path: &Path) -> io::Result<()> {
        self.locate(path).map(drop)
    }

    /// Why opening `path` beneath `root` failed, in words, keeping the kind.
    fn explain(path: &Path, root: &Path, e: io::Error) -> io::Error {
        let what = match e.raw_os_error() {
            Some(libc::EXDEV) => format!("a symbolic link on the way leads outside {}", root.display()),
            Some(libc::ELOOP) => "too many symbolic links, or a link where none may be".to_string(),
            _ => return io::Error::new(e.kind(), format!("{}: {e}", path.display())),
        };
        io::Error::new(io::ErrorKind::PermissionDenied, format!("{}: {what}", path.display()))
    }

    /// Open the file at `path` with `open(2)` `flags`: as named for
    /// [`PathScope::Any`], else resolved beneath its root.
    pub fn open_file(&self, path: &Path, flags: libc::c_int, mode: u32) -> io::Result<File> {
        match self.locate(path)? {
            None => crate::dir::open_path(path, flags, mode)
                .map(File::from)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
            Some((root, rel)) => {
                Dir::open(root)?.open_file(&rel, flags, mode, Links::Beneath).map_err(|e| Self::explain(path, root, e))
            }
        }
    }

    /// Open the directory at `path`.
    pub fn open_dir(&self, path: &Path) -> io::Result<Dir> {
        match self.locate(path)? {
            None => Dir::open(path).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
            Some((root, rel)) => {
                Dir::open(root)?.open_dir(&rel, Links::Beneath).map_err(|e| Self::explain(path, root, e))
            }
        }
    }

    /// The directory at `path`, created with what is missing above it.
    pub fn create_dir_all(&self, path: &Path, mode: u32) -> io::Result<Dir> {
        match self.locate(path)? {
            None => {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .create(path)
                    .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
                self.open_dir(path)
            }
            Some((root, rel)) => {
                Dir::create(root)?.create_dir_all(&rel, mode, Links::Beneath).map_err(|e| Self::explain(path, root, e))
            }
        }
    }

    /// The directory `path` is in, and its last name: to create or replace
    /// the entry itself.
    pub fn parent_of(&self, path: &Path) -> io::Result<(Dir, std::ffi::OsString)> {
        let name = path
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("{} names no file", path.display())))?;
        match self.locate(path)? {
            None => Ok((self.open_dir(path.parent().unwrap_or(Path::new("/")))?, name.to_os_string())),
            Some((root, rel)) => {
                Dir::open(root)?.parent_of(&rel, Links::Beneath).map_err(|e| Self::explain(path, root, e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn paths_are_checked_by_text_then_resolved_beneath_their_root() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("tenants/tb");
        std::fs::create_dir_all(root.join("data")).unwrap();
        std::fs::write(root.join("data/f"), b"mine").unwrap();
        std::fs::write(t.path().join("server.key"), b"secret").unwrap();
        symlink(t.path(), root.join("svcdir")).unwrap();
        symlink("data", root.join("mine")).unwrap();
        let scope = PathScope::Beneath { roots: vec![root.clone()] };

        for bad in ["/etc/passwd", "relative", &format!("{}/../x", root.display()), &root.display().to_string()] {
            assert!(scope.check(Path::new(bad)).is_err(), "{bad}");
        }
        let read = |p: &Path| -> io::Result<Vec<u8>> {
            let mut f = scope.open_file(p, libc::O_RDONLY, 0)?;
            let mut v = Vec::new();
            io::Read::read_to_end(&mut f, &mut v)?;
            Ok(v)
        };
        assert_eq!(read(&root.join("mine/f")).unwrap(), b"mine", "a link inside the root is fine");
        let e = read(&root.join("svcdir/server.key")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        assert!(e.to_string().contains("leads outside"), "{e}");
        assert!(scope.create_dir_all(&root.join("svcdir/planted"), 0o755).is_err());
        assert!(!t.path().join("planted").exists());
        let (dir, name) = scope.parent_of(&root.join("mine/new")).unwrap();
        assert_eq!(name, "new");
        assert_eq!(
            dir.stat().unwrap().st_ino,
            std::fs::metadata(root.join("data"))
                .map(|m| {
                    use std::os::unix::fs::MetadataExt;
                    m.ino()
                })
                .unwrap()
        );

        let none = PathScope::nowhere();
        assert!(none.check(&root.join("data")).unwrap_err().to_string().contains("--tenant-root"));
        assert!(PathScope::Any.check(Path::new("/anything")).is_ok());
        assert_eq!(PathScope::Any.open_dir(&root.join("svcdir")).unwrap().stat().unwrap().st_ino, {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(t.path()).unwrap().ino()
        });
    }

    #[test]
    fn scopes_travel_as_json() {
        let scope = PathScope::Beneath { roots: vec![PathBuf::from("/srv/t/a")] };
        let text = serde_json::to_string(&scope).unwrap();
        assert_eq!(text, r#"{"scope":"beneath","roots":["/srv/t/a"]}"#);
        assert_eq!(serde_json::from_str::<PathScope>(&text).unwrap(), scope);
        assert_eq!(serde_json::to_string(&PathScope::Any).unwrap(), r#"{"scope":"any"}"#);
    }
}
