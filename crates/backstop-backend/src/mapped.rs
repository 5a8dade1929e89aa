//! A staged file mapped read-only, to be an upload's body without being
//! copied into memory first: the request reads the page cache itself.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use bytes::Bytes;

/// The whole of `file` as [`Bytes`] over a private read-only mapping,
/// unmapped when the last clone is dropped. The file must not shrink while
/// the mapping lives (a read past its new end would fault): callers map
/// only their own staging files, which nothing else writes.
pub(crate) fn map(file: &File) -> io::Result<Bytes> {
    let len = usize::try_from(file.metadata()?.len()).map_err(|_| io::Error::other("staged file too large to map"))?;
    if len == 0 {
        return Ok(Bytes::new());
    }
    // SAFETY: a fresh mapping of `len` readable bytes of an open file at an
    // address the kernel chooses; nothing else refers to it yet.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_PRIVATE | libc::MAP_POPULATE,
            file.as_raw_fd(),
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(Bytes::from_owner(Mapping { ptr, len }))
}

struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mapping is read-only and owned by this value alone; reading
// it from any thread is sound.
unsafe impl Send for Mapping {}
// SAFETY: as above, shared reads of immutable memory.
unsafe impl Sync for Mapping {}

impl AsRef<[u8]> for Mapping {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `ptr` maps `len` readable bytes until `drop` unmaps them.
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<u8>(), self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `map` mapped, once.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn maps_the_whole_file_and_an_empty_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("staged");
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7) as u8).collect();
        File::create(&path).unwrap().write_all(&data).unwrap();
        let mapped = map(&File::open(&path).unwrap()).unwrap();
        // The mapping outlives the file's name and its handle.
        std::fs::remove_file(&path).unwrap();
        assert_eq!(&mapped[..], &data[..]);
        let clone = mapped.clone();
        drop(mapped);
        assert_eq!(clone.len(), data.len());

        let empty = dir.path().join("empty");
        File::create(&empty).unwrap();
        assert!(map(&File::open(&empty).unwrap()).unwrap().is_empty());
    }
}
