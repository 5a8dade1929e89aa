//! Writing one stored file (or stream) to a writer, or into a file or
//! block device at its offsets.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::error::{Error, Result};
use crate::index::Index;
use crate::pack::BlobKind;
use crate::repository::Repository;
use crate::snapshot::{Snapshot, SnapshotKind};
use crate::tree::{ContentRef, NodeType};

/// The content of the file at `path` in `snapshot`, chunk lists expanded.
/// For a stream snapshot the path may be empty.
fn file_content(repo: &Repository, index: &Index, snapshot: &Snapshot, path: &Path) -> Result<Vec<ContentRef>> {
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
    repo.expand_content(index, node.content())
}

/// Write the file at `path` in `snapshot` to `out`. For a stream snapshot
/// the path may be empty. Returns the bytes written.
pub fn dump(repo: &Repository, index: &Index, snapshot: &Snapshot, path: &Path, out: &mut dyn Write) -> Result<u64> {
    let content = file_content(repo, index, snapshot, path)?;
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

/// Write the file at `path` in `snapshot` into `file` at the same offsets:
/// a disk image back onto a block device, or into a file. Zero runs are
/// left unwritten when `skip_zeros` (a fresh or truncated regular file then
/// gets holes; a device must already read as zeros), else written. A
/// regular file is cut to the content's length. Returns the content length.
pub fn dump_to_file(
    repo: &Repository,
    index: &Index,
    snapshot: &Snapshot,
    path: &Path,
    file: &File,
    skip_zeros: bool,
) -> Result<u64> {
    let content = file_content(repo, index, snapshot, path)?;
    let write_err = |e: std::io::Error| Error::io("output", e);
    let zeros = vec![0u8; 1 << 20];
    let mut offset = 0u64;
    for c in content {
        match c {
            ContentRef::Data { id, .. } => {
                let data = repo.read_blob(index, BlobKind::Data, &id)?;
                file.write_all_at(&data, offset).map_err(write_err)?;
                offset += data.len() as u64;
            }
            ContentRef::Zero { len } if skip_zeros => offset += len,
            ContentRef::Zero { len } => {
                let end = offset + len;
                while offset < end {
                    let n = (end - offset).min(zeros.len() as u64) as usize;
                    file.write_all_at(&zeros[..n], offset).map_err(write_err)?;
                    offset += n as u64;
                }
            }
            ContentRef::List { .. } => unreachable!("expand_content removes lists"),
        }
    }
    if file.metadata().map_err(write_err)?.is_file() {
        file.set_len(offset).map_err(write_err)?;
    }
    file.sync_all().map_err(write_err)?;
    Ok(offset)
}
