//! Reading packs: their headers and single blobs.

use backstop_backend::Backend;

use super::{BlobLocation, PackEntry, TRAILER_LEN, TailError, pack_key, parse_tail};
use crate::crypto::{self, MasterKey};
use crate::error::{Error, Result};
use crate::id::{BlobId, PackId};

/// Most headers fit in this many bytes at the end of a pack, so one ranged
/// read usually suffices.
const TAIL_GUESS: u64 = 64 << 10;

/// Read and verify the header of `pack`, whose size is `size`.
pub fn read_header(backend: &dyn Backend, key: &MasterKey, pack: &PackId, size: u64) -> Result<Vec<PackEntry>> {
    let object = pack_key(pack);
    if size < TRAILER_LEN as u64 {
        return Err(Error::corrupt(object, "too short to be a pack"));
    }
    let guess = TAIL_GUESS.min(size);
    let tail = backend.get_range(&object, size - guess..size)?;
    match parse_tail(key, &tail, size) {
        Ok(entries) => Ok(entries),
        Err(TailError::NeedMore(n)) => {
            let tail = backend.get_range(&object, size - n as u64..size)?;
            parse_tail(key, &tail, size).map_err(|e| match e {
                TailError::NeedMore(_) => Error::corrupt(object, "inconsistent header length"),
                TailError::Corrupt(reason) => Error::corrupt(pack_key(pack), reason),
            })
        }
        Err(TailError::Corrupt(reason)) => Err(Error::corrupt(object, reason)),
    }
}

/// Open one sealed blob and check that its plaintext hashes to its id.
pub fn open_blob(key: &MasterKey, loc: &BlobLocation, id: &BlobId, sealed: &[u8]) -> Result<Vec<u8>> {
    let opened = crypto::open(key, loc.kind.object_kind(), Some(id), sealed, Some(loc.raw_len as usize));
    checked(key, loc, id, opened)
}

/// [`open_blob`] where `sealed` lies (see [`crypto::open_in_place`]).
pub fn open_blob_in_place<'a>(
    key: &MasterKey,
    loc: &BlobLocation,
    id: &BlobId,
    sealed: &'a mut [u8],
    scratch: &'a mut Vec<u8>,
) -> Result<&'a [u8]> {
    let opened =
        crypto::open_in_place(key, loc.kind.object_kind(), Some(id), sealed, Some(loc.raw_len as usize), scratch);
    checked(key, loc, id, opened)
}

/// An opened blob whose plaintext hashes to its id, or the damage named.
fn checked<P: AsRef<[u8]>>(
    key: &MasterKey,
    loc: &BlobLocation,
    id: &BlobId,
    opened: std::result::Result<P, crypto::SealError>,
) -> Result<P> {
    let object = || format!("{} blob {} in pack {}", loc.kind, id.short(), loc.pack.short());
    let plain = opened.map_err(|e| Error::corrupt(object(), e))?;
    if key.blob_id(plain.as_ref()) != *id {
        return Err(Error::corrupt(object(), "content does not match its id"));
    }
    Ok(plain)
}

/// Fetch and open one blob.
pub fn load_blob(backend: &dyn Backend, key: &MasterKey, loc: &BlobLocation, id: &BlobId) -> Result<Vec<u8>> {
    let start = loc.offset as u64;
    let sealed = backend.get_range(&pack_key(&loc.pack), start..start + loc.stored_len as u64).map_err(|e| {
        if e.is_not_found() {
            Error::corrupt(
                pack_key(&loc.pack),
                format!("pack is missing (needed for {} blob {})", loc.kind, id.short()),
            )
        } else if e.kind() == backstop_backend::ErrorKind::InvalidRange {
            Error::corrupt(pack_key(&loc.pack), "pack is truncated")
        } else {
            Error::Backend(e)
        }
    })?;
    open_blob(key, loc, id, &sealed)
}
