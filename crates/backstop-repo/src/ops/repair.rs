//! Repairs: rebuild the index from the packs' own headers.

use serde::Serialize;

use crate::crypto::ObjectKind;
use crate::error::Result;
use crate::id::{IndexId, PackId};
use crate::index::{IndexBlob, IndexFile, IndexPack};
use crate::pack;
use crate::progress::Progress;
use crate::repository::Repository;
use crate::session::Session;
use crate::util::parallel_map;

#[derive(Debug, Clone, Default, Serialize)]
pub struct RepairReport {
    pub packs: usize,
    pub blobs: usize,
    /// Packs whose header could not be read (left out of the index; check
    /// names them, prune removes them).
    pub unreadable: Vec<String>,
    pub index_files_replaced: usize,
}

/// Read every pack's header and write one index describing them all, which
/// supersedes (and replaces) every existing index file.
pub fn rebuild_index(repo: &Repository, progress: &dyn Progress) -> Result<RepairReport> {
    let session = Session::start(repo, "repair")?;
    let packs: Vec<(PackId, u64)> = repo
        .backend()
        .list("data/")?
        .into_iter()
        .filter_map(|m| m.key.rsplit('/').next().and_then(|n| n.parse().ok()).map(|id| (id, m.size)))
        .collect();
    let old: Vec<IndexId> =
        repo.backend().list("index/")?.into_iter().filter_map(|m| m.key.strip_prefix("index/")?.parse().ok()).collect();
    progress.total(packs.len() as u64, 0);
    let headers = parallel_map(&packs, 8, |(id, size)| {
        let r = pack::reader::read_header(repo.backend().as_ref(), repo.key(), id, *size);
        progress.advance(1, 0);
        (*id, r)
    });
    let mut report = RepairReport::default();
    let mut file = IndexFile { supersedes: old.clone(), packs: Vec::new() };
    for (id, result) in headers {
        match result {
            Ok(entries) => {
                let mut offset = 0u32;
                let blobs: Vec<IndexBlob> = entries
                    .iter()
                    .map(|e| {
                        let b =
                            IndexBlob { kind: e.kind, id: e.id, offset, stored_len: e.stored_len, raw_len: e.raw_len };
                        offset += e.stored_len;
                        b
                    })
                    .collect();
                report.blobs += blobs.len();
                report.packs += 1;
                file.packs.push(IndexPack { id, blobs });
            }
            Err(e) => report.unreadable.push(e.to_string()),
        }
    }
    repo.put_sealed(session.sealer(), "index", ObjectKind::Index, &file.encode())?;
    for id in &old {
        repo.backend().delete(&format!("index/{id}"))?;
    }
    report.index_files_replaced = old.len();
    session.end()?;
    Ok(report)
}
