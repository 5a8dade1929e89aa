//! Writing one stored file (or stream) to a writer.

use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};
use crate::index::Index;
use crate::pack::BlobKind;
use crate::repository::Repository;
use crate::snapshot::{Snapshot, SnapshotKind};
use crate::tree::{ContentRef, NodeType};

/// Write the file at `path` in `snapshot` to `out`. For a stream snapshot
/// the path may be empty. Returns the bytes written.
pub fn dump(repo: &Repository, index: &Index, snapshot: &Snapshot, path: &Path, out: &mut dyn Write) -> Result<u64> {
    let is_root = path.components().all(|c| !matches!(c, std::path::Component::Normal(_)));
    let target = if is_root && snapshot.kind == SnapshotKind::Stream {
        snapshot.paths.first().map(|p| Path::new(p).to_path_buf()).unwrap_or_default()
    } else {
        path.to_path_buf()
    };
    let node = super::ls::find(repo, index, snapshot, &target)?
        .ok_or_else(|| Error::Invalid("give the path of a file inside the snapshot".into()))?;
    if node.node_type != NodeType::File {
        return Err(Error::Invalid(format!(
            "{} is a {}, not a file; use `backstop restore` for directories",
            target.display(),
            node.node_type.as_str()
        )));
    }
    let content = repo.expand_content(index, node.content())?;
    let write_err = |e: std::io::Error| Error::io("output", e);
    let zeros = vec![0u8; 1 << 20];
    let mut written = 0u64;
    for c in content {
        match c {
            ContentRef::Data { id, .. } => {
                let data = repo.read_blob(index, BlobKind::Data, &id)?;
                out.write_all(&data).map_err(write_err)?;
                written += data.len() as u64;
            }
            ContentRef::Zero { len } => {
                let mut left = len;
                while left > 0 {
                    let n = left.min(zeros.len() as u64) as usize;
                    out.write_all(&zeros[..n]).map_err(write_err)?;
                    left -= n as u64;
                }
                written += len;
            }
            ContentRef::List { .. } => unreachable!("expand_content removes lists"),
        }
    }
    out.flush().map_err(write_err)?;
    Ok(written)
}
