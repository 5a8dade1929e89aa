//! The index file format (`docs/format.md` §6).

use crate::id::{IndexId, PackId};
use crate::pack::{BlobKind, FinishedPack};
use crate::wire::{self, DecodeResult, Reader, bad};

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IndexFile {
    /// Index files this one replaces (written by prune's compaction).
    pub supersedes: Vec<IndexId>,
    pub packs: Vec<IndexPack>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexPack {
    pub id: PackId,
    pub blobs: Vec<IndexBlob>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexBlob {
    pub kind: BlobKind,
    pub id: crate::id::BlobId,
    pub offset: u32,
    pub stored_len: u32,
    pub raw_len: u32,
}

impl IndexPack {
    pub fn from_finished(pack: &FinishedPack) -> IndexPack {
        IndexPack {
            id: pack.id,
            blobs: pack
                .blobs
                .iter()
                .map(|(e, offset)| IndexBlob {
                    kind: e.kind,
                    id: e.id,
                    offset: *offset,
                    stored_len: e.stored_len,
                    raw_len: e.raw_len,
                })
                .collect(),
        }
    }
}

impl IndexFile {
    pub fn encode(&self) -> Vec<u8> {
        let blobs: usize = self.packs.iter().map(|p| p.blobs.len()).sum();
        let mut out = Vec::with_capacity(16 + self.supersedes.len() * 32 + self.packs.len() * 36 + blobs * 42);
        out.push(1);
        wire::put_varint(&mut out, self.supersedes.len() as u64);
        for id in &self.supersedes {
            out.extend_from_slice(id.as_bytes());
        }
        wire::put_varint(&mut out, self.packs.len() as u64);
        for pack in &self.packs {
            out.extend_from_slice(pack.id.as_bytes());
            wire::put_varint(&mut out, pack.blobs.len() as u64);
            for b in &pack.blobs {
                out.push(b.kind.to_u8());
                out.extend_from_slice(b.id.as_bytes());
                wire::put_varint(&mut out, b.offset as u64);
                wire::put_varint(&mut out, b.stored_len as u64);
                wire::put_varint(&mut out, b.raw_len as u64);
            }
        }
        out
    }

    pub fn decode(payload: &[u8]) -> DecodeResult<IndexFile> {
        let mut r = Reader::new(payload);
        if r.u8()? != 1 {
            return bad("unknown index version");
        }
        let n = r.count(32)?;
        let mut supersedes = Vec::with_capacity(n);
        for _ in 0..n {
            supersedes.push(IndexId(r.id32()?));
        }
        let n_packs = r.count(33)?;
        let mut packs = Vec::with_capacity(n_packs);
        for _ in 0..n_packs {
            let id = PackId(r.id32()?);
            let n_blobs = r.count(36)?;
            let mut blobs = Vec::with_capacity(n_blobs);
            for _ in 0..n_blobs {
                blobs.push(IndexBlob {
                    kind: BlobKind::from_u8(r.u8()?)?,
                    id: r.blob_id()?,
                    offset: r.u32_varint()?,
                    stored_len: r.u32_varint()?,
                    raw_len: r.u32_varint()?,
                });
            }
            packs.push(IndexPack { id, blobs });
        }
        r.finish()?;
        Ok(IndexFile { supersedes, packs })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::BlobId;
    use proptest::prelude::*;

    fn arb_file() -> impl Strategy<Value = IndexFile> {
        let blob = (any::<bool>(), proptest::array::uniform32(any::<u8>()), any::<u32>(), any::<u32>(), any::<u32>())
            .prop_map(|(d, id, o, s, r)| IndexBlob {
                kind: if d { BlobKind::Data } else { BlobKind::Tree },
                id: BlobId(id),
                offset: o,
                stored_len: s,
                raw_len: r,
            });
        let pack = (proptest::array::uniform32(any::<u8>()), proptest::collection::vec(blob, 0..8))
            .prop_map(|(id, blobs)| IndexPack { id: PackId(id), blobs });
        (
            proptest::collection::vec(proptest::array::uniform32(any::<u8>()).prop_map(IndexId), 0..3),
            proptest::collection::vec(pack, 0..6),
        )
            .prop_map(|(supersedes, packs)| IndexFile { supersedes, packs })
    }

    proptest! {
        #[test]
        fn index_files_round_trip(file in arb_file()) {
            prop_assert_eq!(IndexFile::decode(&file.encode()).unwrap(), file);
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = IndexFile::decode(&bytes);
        }
    }
}
