//! Thin, safe wrappers over the Unix calls the archiver and restorer need and
//! neither `std` nor `backstop_confine::Dir` (every `*at` call beneath a
//! directory handle) offers: `stat` with nanosecond times, reads that do
//! not touch access times, extended attributes, hole detection, metadata
//! through an open file, direct I/O.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn cstr(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn cpath(path: &Path) -> io::Result<CString> {
    cstr(path.as_os_str().as_bytes())
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// `struct stat`, with times in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// Full `st_mode`: type and permission bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime_ns: i64,
    pub atime_ns: i64,
    pub ctime_ns: i64,
    pub dev: u64,
    pub ino: u64,
    pub nlink: u64,
    pub rdev: u64,
    /// Allocated 512-byte blocks.
    pub blocks: u64,
}

impl Stat {
    pub(crate) fn from_raw(st: &libc::stat) -> Stat {
        let ns = |s: i64, n: i64| s.saturating_mul(1_000_000_000).saturating_add(n);
        Stat {
            mode: st.st_mode,
            uid: st.st_uid,
            gid: st.st_gid,
            size: st.st_size as u64,
            mtime_ns: ns(st.st_mtime, st.st_mtime_nsec),
            atime_ns: ns(st.st_atime, st.st_atime_nsec),
            ctime_ns: ns(st.st_ctime, st.st_ctime_nsec),
            dev: st.st_dev,
            ino: st.st_ino,
            nlink: st.st_nlink,
            rdev: st.st_rdev,
            blocks: st.st_blocks as u64,
        }
    }

    pub fn file_type(&self) -> u32 {
        self.mode & libc::S_IFMT
    }

    pub fn is_dir(&self) -> bool {
        self.file_type() == libc::S_IFDIR
    }

    pub fn is_file(&self) -> bool {
        self.file_type() == libc::S_IFREG
    }

    /// Fewer blocks allocated than the size needs: the file has holes.
    pub fn is_sparse(&self) -> bool {
        self.is_file() && self.blocks.saturating_mul(512) + 64 * 1024 < self.size
    }
}

pub fn fstat(file: &File) -> io::Result<Stat> {
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: the descriptor is open for the life of `file`.
    check(unsafe { libc::fstat(file.as_raw_fd(), &mut st) })?;
    Ok(Stat::from_raw(&st))
}

/// Open with `O_NOATIME` when permitted (owner or root): a backup should
/// not change what it backs up. Falls back to a plain open.
fn open_noatime(path: &Path, flags: libc::c_int) -> io::Result<OwnedFd> {
    let c = cpath(path)?;
    let base = flags | libc::O_CLOEXEC | libc::O_NOFOLLOW;
    for extra in [libc::O_NOATIME, 0] {
        // SAFETY: c is NUL-terminated.
        let fd = unsafe { libc::open(c.as_ptr(), base | extra) };
        if fd >= 0 {
            // SAFETY: fd was just opened and is owned by nobody else.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let err = io::Error::last_os_error();
        if extra == 0 || err.raw_os_error() != Some(libc::EPERM) {
            return Err(err);
        }
    }
    unreachable!("the loop returns")
}

/// Open a regular file for reading without following a symlink in its place.
pub fn open_read(path: &Path) -> io::Result<File> {
    Ok(File::from(open_noatime(path, libc::O_RDONLY)?))
}

/// Open entry `name` of `dir` for reading, not following a link in its
/// place, with `O_NOATIME` when permitted; without waiting, should a FIFO
/// or a device have taken the file's place (the caller checks what it got).
pub fn open_read_at(dir: &backstop_backend::Dir, name: &OsStr) -> io::Result<File> {
    let rel = Path::new(name);
    let flags = libc::O_RDONLY | libc::O_NONBLOCK;
    match dir.open_file(rel, flags | libc::O_NOATIME, 0, backstop_backend::Links::Refuse) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            dir.open_file(rel, flags, 0, backstop_backend::Links::Refuse)
        }
        other => other,
    }
}

/// Extended attributes of `path` (not following symlinks). Filesystems
/// without xattr support give an empty list.
pub fn xattrs(path: &Path) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let c = cpath(path)?;
    let names = loop {
        // SAFETY: a null buffer with size 0 asks for the needed size.
        let size = unsafe { libc::llistxattr(c.as_ptr(), std::ptr::null_mut(), 0) };
        if size < 0 {
            let err = io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::ENOTSUP) => Ok(Vec::new()),
                _ => Err(err),
            };
        }
        if size == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; size as usize];
        // SAFETY: buf has the stated length.
        let got = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if got >= 0 {
            buf.truncate(got as usize);
            break buf;
        }
        if io::Error::last_os_error().raw_os_error() != Some(libc::ERANGE) {
            return Err(io::Error::last_os_error());
        }
    };
    let mut out = Vec::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let cname = cstr(name)?;
        loop {
            // SAFETY: as above.
            let size = unsafe { libc::lgetxattr(c.as_ptr(), cname.as_ptr(), std::ptr::null_mut(), 0) };
            if size < 0 {
                let err = io::Error::last_os_error();
                if err.raw_os_error() == Some(libc::ENODATA) {
                    break; // removed meanwhile
                }
                return Err(err);
            }
            let mut value = vec![0u8; size as usize];
            // SAFETY: value has the stated length.
            let got = unsafe { libc::lgetxattr(c.as_ptr(), cname.as_ptr(), value.as_mut_ptr().cast(), value.len()) };
            if got >= 0 {
                value.truncate(got as usize);
                out.push((name.to_vec(), value));
                break;
            }
            if io::Error::last_os_error().raw_os_error() != Some(libc::ERANGE) {
                return Err(io::Error::last_os_error());
            }
        }
    }
    out.sort();
    Ok(out)
}

pub fn set_xattr(path: &Path, name: &[u8], value: &[u8]) -> io::Result<()> {
    let c = cpath(path)?;
    let n = cstr(name)?;
    // SAFETY: pointers valid for the stated lengths.
    check(unsafe { libc::lsetxattr(c.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), 0) })
}

/// Owner, mode, extended attributes and times of an open regular file, in
/// that order (see `restore::apply_metadata`); by descriptor, so no path is
/// resolved again.
pub struct FileMeta<'a> {
    pub owner: Option<(u32, u32)>,
    pub mode: u32,
    pub xattrs: &'a [(Vec<u8>, Vec<u8>)],
    pub atime_ns: i64,
    pub mtime_ns: i64,
}

/// Apply `meta` to `file`. Extended attributes that the process may not
/// set (EPERM, EACCES) or the filesystem does not support are skipped.
pub fn set_file_meta(file: &File, meta: &FileMeta) -> io::Result<()> {
    let fd = file.as_raw_fd();
    if let Some((uid, gid)) = meta.owner {
        // SAFETY: fd is valid for the life of `file`.
        check(unsafe { libc::fchown(fd, uid, gid) })?;
    }
    // SAFETY: as above.
    check(unsafe { libc::fchmod(fd, meta.mode & 0o7777) })?;
    for (name, value) in meta.xattrs {
        let n = cstr(name)?;
        // SAFETY: pointers valid for the stated lengths; fd as above.
        let rc = unsafe { libc::fsetxattr(fd, n.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
        if let Err(e) = check(rc)
            && !matches!(e.raw_os_error(), Some(libc::EPERM | libc::ENOTSUP | libc::EACCES))
        {
            return Err(e);
        }
    }
    let ts = |ns: i64| libc::timespec { tv_sec: ns.div_euclid(1_000_000_000), tv_nsec: ns.rem_euclid(1_000_000_000) };
    let times = [ts(meta.atime_ns), ts(meta.mtime_ns)];
    // SAFETY: fd as above; times has two entries.
    check(unsafe { libc::futimens(fd, times.as_ptr()) })
}

/// The data extents `[start, end)` of a file, skipping holes. Filesystems
/// without SEEK_DATA report the whole file as data.
pub fn data_extents(file: &File, size: u64) -> io::Result<Vec<(u64, u64)>> {
    let fd = file.as_raw_fd();
    let mut extents = Vec::new();
    let mut pos: i64 = 0;
    while (pos as u64) < size {
        // SAFETY: fd is valid for the life of `file`.
        let data = unsafe { libc::lseek(fd, pos, libc::SEEK_DATA) };
        if data < 0 {
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::ENXIO) => break, // only a hole remains
                Some(libc::EINVAL | libc::ENOTSUP) if extents.is_empty() => return Ok(vec![(0, size)]),
                _ => return Err(err),
            }
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(io::Error::last_os_error());
        }
        let end = (hole as u64).min(size);
        if end > data as u64 {
            extents.push((data as u64, end));
        }
        pos = hole;
    }
    Ok(extents)
}

/// Ask the kernel to start writing `len` bytes of `file` from `offset` to
/// disk, without waiting. Only a hint: errors surface at the fsync.
#[cfg(target_os = "linux")]
pub fn start_writeback(file: &File, offset: u64, len: u64) {
    // SAFETY: the fd is valid for the life of `file`; the call only
    // schedules I/O.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset as i64, len as i64, libc::SYNC_FILE_RANGE_WRITE);
    }
}

#[cfg(not(target_os = "linux"))]
pub fn start_writeback(_file: &File, _offset: u64, _len: u64) {}

/// Turn `O_DIRECT` on or off for an open file. Fails (`EINVAL`) on file
/// systems without direct I/O.
#[cfg(target_os = "linux")]
pub fn set_direct(file: &File, on: bool) -> io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: the fd is valid for the life of `file`; F_GETFL reads flags.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    let wanted = if on { flags | libc::O_DIRECT } else { flags & !libc::O_DIRECT };
    if wanted == flags {
        return Ok(());
    }
    // SAFETY: as above; F_SETFL changes only the status flags.
    check(unsafe { libc::fcntl(fd, libc::F_SETFL, wanted) })
}

#[cfg(not(target_os = "linux"))]
pub fn set_direct(_file: &File, _on: bool) -> io::Result<()> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

/// Whether `path` lies on a local disk file system that does direct I/O
/// well (ext2/3/4, XFS, btrfs): not a network, FUSE or memory one, where
/// `O_DIRECT` is missing, slow or means something else.
pub fn local_disk_fs(path: &Path) -> bool {
    File::open(path).is_ok_and(|f| local_disk_fs_of(&f))
}

/// [`local_disk_fs`] for the file system an open file or directory is on.
#[cfg(target_os = "linux")]
pub fn local_disk_fs_of(fd: &impl std::os::fd::AsFd) -> bool {
    const EXT4: i64 = 0xEF53;
    const XFS: i64 = 0x5846_5342;
    const BTRFS: i64 = 0x9123_683E;
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: the descriptor is open; fstatfs fills `st` when it returns 0.
    if unsafe { libc::fstatfs(fd.as_fd().as_raw_fd(), st.as_mut_ptr()) } != 0 {
        return false;
    }
    // SAFETY: fstatfs returned 0, so `st` is initialised.
    #[allow(clippy::unnecessary_cast, reason = "f_type is i64 on x86_64 but not on every target")]
    let kind = unsafe { st.assume_init() }.f_type as i64;
    matches!(kind, EXT4 | XFS | BTRFS)
}

#[cfg(not(target_os = "linux"))]
pub fn local_disk_fs_of(_fd: &impl std::os::fd::AsFd) -> bool {
    false
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

pub fn os_str(bytes: &[u8]) -> &OsStr {
    OsStr::from_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};

    #[test]
    fn holes_are_found_in_sparse_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sparse");
        let mut f = File::create(&path).unwrap();
        f.seek(SeekFrom::Start(4 << 20)).unwrap();
        f.write_all(&[1; 65536]).unwrap();
        f.set_len(16 << 20).unwrap();
        drop(f);
        let f = File::open(&path).unwrap();
        let extents = data_extents(&f, 16 << 20).unwrap();
        let data: u64 = extents.iter().map(|(a, b)| b - a).sum();
        assert!(extents.iter().any(|&(a, b)| a <= 4 << 20 && b >= (4 << 20) + 65536), "{extents:?}");
        // tmpfs and ext4 report the hole; a filesystem without SEEK_HOLE reports all data.
        assert!(data == 16 << 20 || data < 1 << 20, "{extents:?}");
        assert!(fstat(&File::open(&path).unwrap()).unwrap().is_sparse() || data == 16 << 20);
    }

    #[test]
    fn open_read_refuses_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("target"), b"x").unwrap();
        std::os::unix::fs::symlink(dir.path().join("target"), dir.path().join("link")).unwrap();
        assert!(open_read(&dir.path().join("link")).is_err());
        assert!(open_read(&dir.path().join("target")).is_ok());
    }
}
