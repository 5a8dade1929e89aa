//! Packs: many sealed blobs of one kind in one object, with a sealed header
//! at the end (`docs/format.md` §5).

pub mod reader;
pub mod writer;

use crate::crypto::{Compression, MasterKey, ObjectKind, Sealer};
use crate::id::{BlobId, PackId};
use crate::wire::{self, DecodeResult, Reader, bad};

pub use writer::{FinishedPack, PackWriter};

pub(crate) const MAGIC: &[u8; 4] = b"BSPK";
/// header length (u32) + magic
pub(crate) const TRAILER_LEN: usize = 8;

/// The kind of blob: file data or a tree (directories and chunk lists).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BlobKind {
    Data,
    Tree,
}

impl BlobKind {
    pub fn object_kind(self) -> ObjectKind {
        match self {
            BlobKind::Data => ObjectKind::Data,
            BlobKind::Tree => ObjectKind::Tree,
        }
    }

    pub(crate) fn to_u8(self) -> u8 {
        self.object_kind() as u8
    }

    pub(crate) fn from_u8(v: u8) -> DecodeResult<BlobKind> {
        match v {
            1 => Ok(BlobKind::Data),
            2 => Ok(BlobKind::Tree),
            _ => bad(format!("unknown blob kind {v}")),
        }
    }
}

impl std::fmt::Display for BlobKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BlobKind::Data => "data",
            BlobKind::Tree => "tree",
        })
    }
}

/// One blob in a pack header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackEntry {
    pub kind: BlobKind,
    pub id: BlobId,
    pub stored_len: u32,
    pub raw_len: u32,
}

/// One blob with its position, as the index records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobLocation {
    pub pack: PackId,
    pub kind: BlobKind,
    pub offset: u32,
    pub stored_len: u32,
    pub raw_len: u32,
}

pub(crate) fn encode_header(entries: &[PackEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + entries.len() * 40);
    out.push(1);
    wire::put_varint(&mut out, entries.len() as u64);
    for e in entries {
        out.push(e.kind.to_u8());
        out.extend_from_slice(e.id.as_bytes());
        wire::put_varint(&mut out, e.stored_len as u64);
        wire::put_varint(&mut out, e.raw_len as u64);
    }
    out
}

pub fn decode_header(payload: &[u8]) -> DecodeResult<Vec<PackEntry>> {
    let mut r = Reader::new(payload);
    if r.u8()? != 1 {
        return bad("unknown pack header version");
    }
    let n = r.count(35)?;
    let mut entries = Vec::with_capacity(n);
    for _ in 0..n {
        let kind = BlobKind::from_u8(r.u8()?)?;
        let id = r.blob_id()?;
        let stored_len = r.u32_varint()?;
        let raw_len = r.u32_varint()?;
        entries.push(PackEntry { kind, id, stored_len, raw_len });
    }
    r.finish()?;
    Ok(entries)
}

pub(crate) fn seal_header(sealer: &Sealer, entries: &[PackEntry]) -> Vec<u8> {
    let mut out = sealer.seal(ObjectKind::PackHeader, None, &encode_header(entries), Compression::None);
    let len = out.len() as u32;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(MAGIC);
    out
}

/// Read the header from the tail of a pack (`tail` is at least the trailer;
/// the caller fetched the last bytes of the object). Returns the entries, or
/// `Err(needed)` when the tail is too short to hold the whole header.
pub(crate) fn parse_tail(key: &MasterKey, tail: &[u8], pack_size: u64) -> Result<Vec<PackEntry>, TailError> {
    if tail.len() < TRAILER_LEN || &tail[tail.len() - 4..] != MAGIC {
        return Err(TailError::Corrupt("no pack trailer (truncated or not a pack)".into()));
    }
    let header_len = u32::from_le_bytes(tail[tail.len() - 8..tail.len() - 4].try_into().expect("4 bytes")) as usize;
    if (header_len + TRAILER_LEN) as u64 > pack_size {
        return Err(TailError::Corrupt(format!("header length {header_len} exceeds the pack size {pack_size}")));
    }
    if header_len + TRAILER_LEN > tail.len() {
        return Err(TailError::NeedMore(header_len + TRAILER_LEN));
    }
    let sealed = &tail[tail.len() - TRAILER_LEN - header_len..tail.len() - TRAILER_LEN];
    let payload = crate::crypto::open(key, ObjectKind::PackHeader, None, sealed, None)
        .map_err(|e| TailError::Corrupt(format!("pack header: {e}")))?;
    let entries = decode_header(&payload).map_err(|e| TailError::Corrupt(format!("pack header: {e}")))?;
    let blobs: u64 = entries.iter().map(|e| e.stored_len as u64).sum();
    if blobs + (header_len + TRAILER_LEN) as u64 != pack_size {
        return Err(TailError::Corrupt(format!(
            "header lists {blobs} bytes of blobs but the pack has {} before its header",
            pack_size - (header_len + TRAILER_LEN) as u64
        )));
    }
    Ok(entries)
}

#[derive(Debug)]
pub(crate) enum TailError {
    NeedMore(usize),
    Corrupt(String),
}

/// Backend key of a pack.
pub fn pack_key(id: &PackId) -> String {
    let hex = id.to_hex();
    format!("data/{}/{}", &hex[..2], hex)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn pack_headers_round_trip(entries in proptest::collection::vec(
            (any::<bool>(), proptest::array::uniform32(any::<u8>()), any::<u32>(), any::<u32>()), 0..50)
        ) {
            let entries: Vec<PackEntry> = entries.into_iter().map(|(data, id, s, r)| PackEntry {
                kind: if data { BlobKind::Data } else { BlobKind::Tree }, id: BlobId(id), stored_len: s, raw_len: r,
            }).collect();
            prop_assert_eq!(decode_header(&encode_header(&entries)).unwrap(), entries);
        }

        #[test]
        fn decoding_arbitrary_headers_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_header(&bytes);
            let _ = parse_tail(&MasterKey::from_secret([1; 32]), &bytes, bytes.len() as u64);
        }
    }
}
