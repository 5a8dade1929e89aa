//! [`Dir`]: an open directory, and everything beneath it resolved without
//! a link leading out.

use std::cell::Cell;
use std::ffi::{CStr, CString, OsStr, OsString};
use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// What a resolution does with the symbolic links it meets beneath its
/// directory. Whatever the choice, a link never leads out of it: an
/// absolute link, or one whose `..` climbs above the directory, fails
/// with `EXDEV`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Links {
    /// Follow links that stay beneath the directory: a tenant's own layout
    /// (`vm1 -> disks/vm1`) keeps working.
    Beneath,
    /// Follow none: a link anywhere on the path fails with `ELOOP`. For the
    /// trees Backstop writes itself (a restore's target, a repository),
    /// where a link can only be someone else's doing.
    Refuse,
}

/// Most links a resolution follows (the kernel's own limit).
const MAX_LINKS: usize = 40;

/// `openat2` turned out to be missing (`ENOSYS`: an old kernel, or a
/// seccomp filter that does not know it); the walk is used from then on.
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

thread_local! {
    static FORCE_WALK: Cell<bool> = const { Cell::new(false) };
}

/// Resolve with the component-wise walk on this thread even where
/// `openat2` exists, so tests hold both implementations to the same cases.
pub fn force_walk_for_tests(on: bool) {
    FORCE_WALK.with(|f| f.set(on));
}

fn cstr(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path contains a NUL byte"))
}

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Take ownership of a descriptor a call just returned.
fn owned(fd: libc::c_int) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by the kernel and nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn openat(dir: RawFd, name: &CStr, flags: libc::c_int, mode: u32) -> io::Result<OwnedFd> {
    // SAFETY: name is NUL-terminated; dir is a descriptor the caller holds.
    owned(unsafe { libc::openat(dir, name.as_ptr(), flags | libc::O_CLOEXEC, mode as libc::c_uint) })
}

fn fstatat(dir: RawFd, name: &CStr) -> io::Result<libc::stat> {
    // SAFETY: an all-zero stat is a valid value to be overwritten.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: name is NUL-terminated; st is a valid out-pointer.
    check(unsafe { libc::fstatat(dir, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) })?;
    Ok(st)
}

fn readlinkat(dir: RawFd, name: &CStr) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    loop {
        // SAFETY: buf is valid for its length; name is NUL-terminated.
        let n = unsafe { libc::readlinkat(dir, name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if (n as usize) < buf.len() {
            buf.truncate(n as usize);
            return Ok(buf);
        }
        buf.resize(buf.len() * 2, 0);
    }
}

fn is_link(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFLNK
}

/// The names of a relative path; `.` is dropped. Absolute paths and `..`
/// are refused: callers name things beneath a directory.
fn names(rel: &Path) -> io::Result<Vec<&OsStr>> {
    let mut out = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{} is not a path beneath a directory (no leading /, no ..)", rel.display()),
                ));
            }
        }
    }
    Ok(out)
}

/// A single name in a directory: no `/`, not `.` or `..`, not empty.
fn single(name: &OsStr) -> io::Result<CString> {
    let b = name.as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{:?} is not a single name in a directory", name),
        ));
    }
    cstr(b)
}

/// The kernel's resolution: one call, atomic against concurrent renames.
fn openat2(dir: RawFd, rel: &CStr, flags: libc::c_int, mode: u32, links: Links) -> io::Result<OwnedFd> {
    let mut resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
    if links == Links::Refuse {
        resolve |= libc::RESOLVE_NO_SYMLINKS;
    }
    let flags = flags | libc::O_CLOEXEC;
    let creates = flags & (libc::O_CREAT | libc::O_TMPFILE) != 0;
    // SAFETY: an all-zero open_how is valid; its fields are set below.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = flags as u64;
    how.mode = if creates { mode as u64 } else { 0 };
    how.resolve = resolve;
    for _ in 0..8 {
        // SAFETY: rel is NUL-terminated and `how` is a valid open_how of the size passed.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir,
                rel.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        match owned(fd as libc::c_int) {
            // A rename elsewhere on the path raced the lookup: look again.
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => continue,
            other => return other,
        }
    }
    Err(errno(libc::EAGAIN))
}

/// The same resolution in user space: one component at a time, each opened
/// with `O_NOFOLLOW` relative to the one before, links read and spliced
/// into the rest of the path, `..` only back to a directory this walk
/// entered.
fn walk(root: RawFd, rel: &[&OsStr], flags: libc::c_int, mode: u32, links: Links) -> io::Result<OwnedFd> {
    let mut pending: std::collections::VecDeque<OsString> = rel.iter().map(|n| n.to_os_string()).collect();
    // The directories entered beneath the root; empty: at the root.
    let mut stack: Vec<OwnedFd> = Vec::new();
    let mut followed = 0;
    while let Some(name) = pending.pop_front() {
        let cur = stack.last().map_or(root, |fd| fd.as_raw_fd());
        match name.as_bytes() {
            b"" | b"." => continue,
            b".." => {
                if stack.pop().is_none() {
                    return Err(errno(libc::EXDEV));
                }
                continue;
            }
            _ => {}
        }
        let c = cstr(name.as_bytes())?;
        let last = pending.is_empty();
        let opened = if last {
            openat(cur, &c, flags | libc::O_NOFOLLOW, mode)
        } else {
            openat(cur, &c, libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW, 0)
        };
        let err = match opened {
            Ok(fd) if last => return Ok(fd),
            Ok(fd) => {
                stack.push(fd);
                continue;
            }
            Err(e) => e,
        };
        // Was it a link in the way? (Creating exclusively, an existing name
        // is what it is, link or not: the kernel says EEXIST too.)
        let exclusive = last && flags & (libc::O_CREAT | libc::O_EXCL) == libc::O_CREAT | libc::O_EXCL;
        if exclusive || !fstatat(cur, &c).is_ok_and(|st| is_link(&st)) {
            return Err(err);
        }
        if links == Links::Refuse || (last && flags & libc::O_NOFOLLOW != 0) {
            return Err(errno(libc::ELOOP));
        }
        followed += 1;
        if followed > MAX_LINKS {
            return Err(errno(libc::ELOOP));
        }
        let target = readlinkat(cur, &c)?;
        if target.first() == Some(&b'/') {
            return Err(errno(libc::EXDEV));
        }
        for part in target.split(|&b| b == b'/').rev() {
            pending.push_front(OsString::from_vec(part.to_vec()));
        }
    }
    // Nothing left to open: the directory the walk ended in.
    let cur = stack.last().map_or(root, |fd| fd.as_raw_fd());
    openat(cur, c".", flags, mode)
}

/// Open `path` as named (links followed): an administrator's path.
pub(crate) fn open_path(path: &Path, flags: libc::c_int, mode: u32) -> io::Result<OwnedFd> {
    openat(libc::AT_FDCWD, &cstr(path.as_os_str().as_bytes())?, flags, mode)
}

/// An entry's access and modification times, in nanoseconds since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileTimes {
    pub atime_ns: i64,
    pub mtime_ns: i64,
}

/// An open directory. Every path given to its methods is resolved beneath
/// it and never leaves it (see [`Links`]); the methods that take a `name`
/// act on one entry of this very directory, without following a link in
/// its place.
pub struct Dir {
    fd: OwnedFd,
    /// Where it was opened, for messages only: it is never resolved again.
    path: PathBuf,
}

impl fmt::Debug for Dir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dir").field("path", &self.path).field("fd", &self.fd.as_raw_fd()).finish()
    }
}

impl AsFd for Dir {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Dir {
    /// Open the directory at `path` as named, links and all: for paths an
    /// administrator chose (a tenant root, a system tenant's target).
    pub fn open(path: &Path) -> io::Result<Dir> {
        let c = cstr(path.as_os_str().as_bytes())?;
        let fd = openat(libc::AT_FDCWD, &c, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
        Ok(Dir { fd, path: path.to_path_buf() })
    }

    /// [`open`](Dir::open), making the directory (and its parents) first
    /// when it is missing: for a tenant's root the first time it is used.
    pub fn create(path: &Path) -> io::Result<Dir> {
        match Dir::open(path) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                std::fs::create_dir_all(path)?;
                Dir::open(path)
            }
            other => other,
        }
    }

    /// A directory handle from an open descriptor (which must be one of a
    /// directory; `path` is for messages).
    pub fn from_fd(fd: OwnedFd, path: PathBuf) -> Dir {
        Dir { fd, path }
    }

    /// Where this directory was opened (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Another handle on the same directory.
    pub fn try_clone(&self) -> io::Result<Dir> {
        Ok(Dir { fd: self.fd.try_clone()?, path: self.path.clone() })
    }

    fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Open `rel` beneath this directory with `open(2)` `flags` (and
    /// `mode`, when creating). The descriptor is close-on-exec.
    pub fn open_at(&self, rel: &Path, flags: libc::c_int, mode: u32, links: Links) -> io::Result<OwnedFd> {
        let names = names(rel)?;
        if !NO_OPENAT2.load(Ordering::Relaxed) && !FORCE_WALK.with(Cell::get) {
            let joined: PathBuf = if names.is_empty() { PathBuf::from(".") } else { names.iter().collect() };
            match openat2(self.raw(), &cstr(joined.as_os_str().as_bytes())?, flags, mode, links) {
                Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => NO_OPENAT2.store(true, Ordering::Relaxed),
                // Retried by the walk: a rename raced the kernel's lookup, or
                // a seccomp filter answers EPERM for a call it does not know
                // (a real EPERM, say for O_NOATIME, comes back from the walk).
                Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EPERM)) => {}
                other => return other,
            }
        }
        walk(self.raw(), &names, flags, mode, links)
    }

    /// A file beneath this directory.
    pub fn open_file(&self, rel: &Path, flags: libc::c_int, mode: u32, links: Links) -> io::Result<File> {
        self.open_at(rel, flags, mode, links).map(File::from)
    }

    /// A directory beneath this one (`rel` empty: this one again).
    pub fn open_dir(&self, rel: &Path, links: Links) -> io::Result<Dir> {
        let fd = self.open_at(rel, libc::O_RDONLY | libc::O_DIRECTORY, 0, links)?;
        Ok(Dir { fd, path: self.path.join(rel) })
    }

    /// `rel` as a directory, creating what is missing (with `mode`) one
    /// component at a time beneath this one; each directory that gains an
    /// entry is synced, so new directories survive a crash.
    pub fn create_dir_all(&self, rel: &Path, mode: u32, links: Links) -> io::Result<Dir> {
        let names = names(rel)?;
        let mut prefix = PathBuf::new();
        for name in names {
            let parent = prefix.clone();
            prefix.push(name);
            match self.open_at(&prefix, libc::O_PATH | libc::O_DIRECTORY, 0, links) {
                Ok(_) => continue,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(e),
            }
            let parent = self.open_dir(&parent, links)?;
            match parent.mkdir_at(name, mode) {
                Ok(()) => parent.sync()?,
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => return Err(e),
            }
        }
        self.open_dir(&prefix, links)
    }

    /// The directory `rel` lies in, and its last name: for acting on the
    /// entry itself (create, replace, remove) without following it.
    pub fn parent_of(&self, rel: &Path, links: Links) -> io::Result<(Dir, OsString)> {
        let names = names(rel)?;
        let Some((last, dirs)) = names.split_last() else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "an empty path has no parent"));
        };
        let dir: PathBuf = dirs.iter().collect();
        Ok((self.open_dir(&dir, links)?, last.to_os_string()))
    }

    /// The directory's own metadata.
    pub fn stat(&self) -> io::Result<libc::stat> {
        fstatat(self.raw(), c".")
    }

    /// An entry's metadata, not following a link.
    pub fn stat_at(&self, name: &OsStr) -> io::Result<libc::stat> {
        fstatat(self.raw(), &single(name)?)
    }

    pub fn mkdir_at(&self, name: &OsStr, mode: u32) -> io::Result<()> {
        let c = single(name)?;
        // SAFETY: c is NUL-terminated; the descriptor is open.
        check(unsafe { libc::mkdirat(self.raw(), c.as_ptr(), mode as libc::mode_t) })
    }

    /// Remove a non-directory entry (a link itself, not what it points to).
    pub fn remove_at(&self, name: &OsStr) -> io::Result<()> {
        let c = single(name)?;
        // SAFETY: as in mkdir_at.
        check(unsafe { libc::unlinkat(self.raw(), c.as_ptr(), 0) })
    }

    /// Remove an empty directory.
    pub fn remove_dir_at(&self, name: &OsStr) -> io::Result<()> {
        let c = single(name)?;
        // SAFETY: as in mkdir_at.
        check(unsafe { libc::unlinkat(self.raw(), c.as_ptr(), libc::AT_REMOVEDIR) })
    }

    /// Move entry `from` to `to` in `dest`. With `noreplace`, fail with
    /// `EEXIST` if `to` exists (`RENAME_NOREPLACE`, or a hard link and an
    /// unlink where the file system lacks it, which is atomic on NFS too).
    pub fn rename_at(&self, from: &OsStr, dest: &Dir, to: &OsStr, noreplace: bool) -> io::Result<()> {
        let (f, t) = (single(from)?, single(to)?);
        if !noreplace {
            // SAFETY: both names are NUL-terminated; both descriptors are open.
            return check(unsafe { libc::renameat(self.raw(), f.as_ptr(), dest.raw(), t.as_ptr()) });
        }
        // SAFETY: as above.
        let rc = unsafe { libc::renameat2(self.raw(), f.as_ptr(), dest.raw(), t.as_ptr(), libc::RENAME_NOREPLACE) };
        match check(rc) {
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS | libc::ENOTSUP)) => {
                self.hard_link_at(from, dest, to)?;
                let _ = self.remove_at(from);
                Ok(())
            }
            other => other,
        }
    }

    /// A hard link `to` in `dest` of this directory's entry `from` (a link
    /// in `from`'s place is linked itself, not followed).
    pub fn hard_link_at(&self, from: &OsStr, dest: &Dir, to: &OsStr) -> io::Result<()> {
        let (f, t) = (single(from)?, single(to)?);
        // SAFETY: both names are NUL-terminated; both descriptors are open.
        check(unsafe { libc::linkat(self.raw(), f.as_ptr(), dest.raw(), t.as_ptr(), 0) })
    }

    /// A symbolic link `name` holding `target` (which is not resolved).
    pub fn symlink_at(&self, target: &[u8], name: &OsStr) -> io::Result<()> {
        let (t, n) = (cstr(target)?, single(name)?);
        // SAFETY: both are NUL-terminated; the descriptor is open.
        check(unsafe { libc::symlinkat(t.as_ptr(), self.raw(), n.as_ptr()) })
    }

    /// A special file (FIFO, device node) with `mode` including its type.
    pub fn mknod_at(&self, name: &OsStr, mode: u32, rdev: u64) -> io::Result<()> {
        let c = single(name)?;
        // SAFETY: c is NUL-terminated; the descriptor is open.
        check(unsafe { libc::mknodat(self.raw(), c.as_ptr(), mode as libc::mode_t, rdev as libc::dev_t) })
    }

    pub fn read_link_at(&self, name: &OsStr) -> io::Result<Vec<u8>> {
        readlinkat(self.raw(), &single(name)?)
    }

    /// Access and modification times of an entry, not following a link.
    pub fn set_times_at(&self, name: &OsStr, times: FileTimes) -> io::Result<()> {
        let c = single(name)?;
        let times = [timespec(times.atime_ns), timespec(times.mtime_ns)];
        // SAFETY: c is NUL-terminated; times has two entries.
        check(unsafe { libc::utimensat(self.raw(), c.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) })
    }

    /// Owner of an entry, not following a link.
    pub fn chown_at(&self, name: &OsStr, uid: u32, gid: u32) -> io::Result<()> {
        let c = single(name)?;
        // SAFETY: c is NUL-terminated.
        check(unsafe { libc::fchownat(self.raw(), c.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW) })
    }

    /// Permission bits of an entry that is not a link (links have none of
    /// their own): through a descriptor of the entry itself, so a link
    /// swapped into its place is not followed.
    pub fn chmod_at(&self, name: &OsStr, mode: u32) -> io::Result<()> {
        let c = single(name)?;
        let fd = openat(self.raw(), &c, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
        // SAFETY: an all-zero stat is valid to overwrite.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fd is open; st is a valid out-pointer.
        check(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
        if is_link(&st) {
            return Err(errno(libc::ELOOP));
        }
        // An O_PATH descriptor takes no fchmod; its /proc name stands for the
        // very inode it holds. Without /proc there is no way that cannot be
        // raced, so there is none.
        let proc = cstr(format!("/proc/self/fd/{}", fd.as_raw_fd()).as_bytes())?;
        // SAFETY: proc is NUL-terminated.
        check(unsafe { libc::chmod(proc.as_ptr(), (mode & 0o7777) as libc::mode_t) }).map_err(|e| {
            match e.raw_os_error() {
                Some(libc::ENOENT) => no_proc(),
                _ => e,
            }
        })
    }

    /// A path that names entry `name` of this very directory for the calls
    /// that take only paths (extended attributes): through `/proc/self/fd`,
    /// so nothing above the entry is resolved again (an error without /proc).
    pub fn entry_path(&self, name: &OsStr) -> io::Result<PathBuf> {
        single(name)?;
        if !proc_mounted() {
            return Err(no_proc());
        }
        Ok(PathBuf::from(format!("/proc/self/fd/{}", self.raw())).join(name))
    }

    /// The entries with their metadata (links not followed), sorted by
    /// name; entries that vanish meanwhile are left out.
    pub fn read_dir(&self) -> io::Result<Vec<(OsString, libc::stat)>> {
        // A descriptor of its own: the stream closes it and keeps its own offset.
        let fd = openat(self.raw(), c".", libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOATIME, 0)
            .or_else(|_| openat(self.raw(), c".", libc::O_RDONLY | libc::O_DIRECTORY, 0))?;
        // SAFETY: fdopendir takes a valid directory descriptor and owns it from here.
        let stream = unsafe { libc::fdopendir(fd.as_raw_fd()) };
        if stream.is_null() {
            return Err(io::Error::last_os_error());
        }
        std::mem::forget(fd);
        struct Stream(*mut libc::DIR);
        impl Drop for Stream {
            fn drop(&mut self) {
                // SAFETY: the pointer came from fdopendir and is closed once.
                unsafe { libc::closedir(self.0) };
            }
        }
        let stream = Stream(stream);
        // SAFETY: the stream is valid.
        let dfd = unsafe { libc::dirfd(stream.0) };
        let mut out = Vec::new();
        loop {
            // readdir reports errors only through errno.
            // SAFETY: errno is thread-local and always valid.
            unsafe { *libc::__errno_location() = 0 };
            // SAFETY: the stream is valid.
            let ent = unsafe { libc::readdir64(stream.0) };
            if ent.is_null() {
                // SAFETY: as above.
                let e = unsafe { *libc::__errno_location() };
                if e != 0 {
                    return Err(errno(e));
                }
                break;
            }
            // SAFETY: d_name is NUL-terminated within the entry.
            let name = unsafe { CStr::from_ptr((*ent).d_name.as_ptr()) };
            if matches!(name.to_bytes(), b"." | b"..") {
                continue;
            }
            match fstatat(dfd, name) {
                Ok(st) => out.push((OsString::from_vec(name.to_bytes().to_vec()), st)),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        Ok(out)
    }

    /// Make the directory's entries durable.
    pub fn sync(&self) -> io::Result<()> {
        // SAFETY: the descriptor is open.
        check(unsafe { libc::fsync(self.raw()) })
    }
}

/// Whether /proc is there (looked at once).
fn proc_mounted() -> bool {
    static MOUNTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *MOUNTED.get_or_init(|| Path::new("/proc/self/fd").is_dir())
}

fn no_proc() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "/proc is not mounted: permissions and extended attributes cannot be set without following a link",
    )
}

fn timespec(ns: i64) -> libc::timespec {
    libc::timespec { tv_sec: ns.div_euclid(1_000_000_000), tv_nsec: ns.rem_euclid(1_000_000_000) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// root/{a/b/file, inside -> a, up -> ../outside, abs -> /etc, loop -> loop, a/back -> ../a}
    /// beside outside/secret.
    fn layout() -> (tempfile::TempDir, Dir) {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/b/file"), b"inside").unwrap();
        std::fs::create_dir_all(t.path().join("outside")).unwrap();
        std::fs::write(t.path().join("outside/secret"), b"secret").unwrap();
        symlink("a", root.join("inside")).unwrap();
        symlink("../outside", root.join("up")).unwrap();
        symlink(t.path().join("outside"), root.join("abs")).unwrap();
        symlink("loop", root.join("loop")).unwrap();
        symlink("../a", root.join("a/back")).unwrap();
        let dir = Dir::open(&root).unwrap();
        (t, dir)
    }

    fn read(dir: &Dir, rel: &str, links: Links) -> io::Result<String> {
        let mut f = dir.open_file(Path::new(rel), libc::O_RDONLY, 0, links)?;
        let mut s = String::new();
        io::Read::read_to_string(&mut f, &mut s)?;
        Ok(s)
    }

    fn both(case: impl Fn()) {
        for walk in [false, true] {
            force_walk_for_tests(walk);
            case();
        }
        force_walk_for_tests(false);
    }

    #[test]
    fn links_that_stay_beneath_are_followed_and_links_out_are_refused() {
        both(|| {
            let (_t, dir) = layout();
            assert_eq!(read(&dir, "a/b/file", Links::Beneath).unwrap(), "inside");
            assert_eq!(read(&dir, "inside/b/file", Links::Beneath).unwrap(), "inside");
            assert_eq!(read(&dir, "a/back/b/file", Links::Beneath).unwrap(), "inside");
            for escape in ["up/secret", "abs/secret"] {
                let e = read(&dir, escape, Links::Beneath).unwrap_err();
                assert_eq!(e.raw_os_error(), Some(libc::EXDEV), "{escape}: {e}");
            }
            assert_eq!(read(&dir, "loop", Links::Beneath).unwrap_err().raw_os_error(), Some(libc::ELOOP));
            assert!(names(Path::new("../outside/secret")).is_err());
            assert!(dir.open_file(Path::new("/etc/passwd"), libc::O_RDONLY, 0, Links::Beneath).is_err());
        });
    }

    #[test]
    fn refusing_links_refuses_every_one_even_inside() {
        both(|| {
            let (_t, dir) = layout();
            assert_eq!(read(&dir, "a/b/file", Links::Refuse).unwrap(), "inside");
            for through in ["inside/b/file", "up/secret", "a/back/b/file"] {
                let e = read(&dir, through, Links::Refuse).unwrap_err();
                assert!(matches!(e.raw_os_error(), Some(libc::ELOOP | libc::EXDEV)), "{through}: {e}");
            }
            // A link as the last component is not followed either.
            std::fs::write(dir.path().join("a/real"), b"x").unwrap();
            symlink("real", dir.path().join("a/last")).unwrap();
            assert_eq!(read(&dir, "a/last", Links::Refuse).unwrap_err().raw_os_error(), Some(libc::ELOOP));
        });
    }

    #[test]
    fn creating_directories_never_passes_through_a_link_out() {
        both(|| {
            let (t, dir) = layout();
            let made = dir.create_dir_all(Path::new("new/deeper"), 0o755, Links::Refuse).unwrap();
            made.mkdir_at(OsStr::new("x"), 0o700).unwrap();
            assert!(dir.path().join("new/deeper/x").is_dir());
            let e = dir.create_dir_all(Path::new("up/planted"), 0o755, Links::Beneath).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EXDEV), "{e}");
            assert!(!t.path().join("outside/planted").exists(), "nothing was made outside");
            // Beneath follows the tenant's own links; Refuse does not.
            dir.create_dir_all(Path::new("inside/c"), 0o755, Links::Beneath).unwrap();
            assert!(dir.path().join("a/c").is_dir());
            assert!(dir.create_dir_all(Path::new("inside/d"), 0o755, Links::Refuse).is_err());
        });
    }

    #[test]
    fn creating_exclusively_over_a_link_is_eexist_in_both_resolvers() {
        both(|| {
            let (t, dir) = layout();
            for links in [Links::Refuse, Links::Beneath] {
                let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL;
                let e = dir.open_file(Path::new("up"), flags, 0o600, links).unwrap_err();
                assert_eq!(e.raw_os_error(), Some(libc::EEXIST), "{links:?}: {e}");
            }
            assert!(!t.path().join("outside/up").exists());
        });
    }

    #[test]
    fn entries_are_acted_on_without_following_a_link_in_their_place() {
        let (t, dir) = layout();
        let (parent, name) = dir.parent_of(Path::new("up"), Links::Refuse).unwrap();
        assert_eq!(name, "up");
        assert!(is_link(&parent.stat_at(&name).unwrap()));
        assert_eq!(parent.chmod_at(&name, 0o777).unwrap_err().raw_os_error(), Some(libc::ELOOP));
        parent.set_times_at(&name, FileTimes { atime_ns: 0, mtime_ns: 1_000_000_000 }).unwrap();
        parent.remove_at(&name).unwrap();
        assert!(t.path().join("outside/secret").exists(), "the link went, not its target");
        dir.symlink_at(b"/etc", OsStr::new("made")).unwrap();
        assert_eq!(dir.read_link_at(OsStr::new("made")).unwrap(), b"/etc");
        let a = dir.open_dir(Path::new("a"), Links::Refuse).unwrap();
        let names: Vec<OsString> = a.read_dir().unwrap().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["b", "back"]);
        std::fs::write(dir.path().join("a/f"), b"").unwrap();
        a.chmod_at(OsStr::new("f"), 0o640).unwrap();
        assert_eq!(a.stat_at(OsStr::new("f")).unwrap().st_mode & 0o777, 0o640);
        a.rename_at(OsStr::new("f"), &dir, OsStr::new("g"), true).unwrap();
        std::fs::write(dir.path().join("a/f2"), b"").unwrap();
        let e = a.rename_at(OsStr::new("f2"), &dir, OsStr::new("g"), true).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EEXIST));
        assert!(a.mkdir_at(OsStr::new("../escape"), 0o755).is_err(), "names are single components");
    }
}
