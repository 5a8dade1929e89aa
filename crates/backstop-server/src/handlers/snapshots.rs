//! `/api/v1/snapshots/{id}/…`: a snapshot's directories and files, read by
//! the coordinator itself. The data plane otherwise runs on workers, but
//! listing one directory or sending one file is a few small reads, not a
//! job (a restore of many files is a restore job). Each read is made as the
//! snapshot's tenant's job would make it (its reach), and a repository
//! opened for one stays open for a minute ([`OpenRepositories`]), so that
//! clicking through a tree does not derive the key and load the index at
//! every step.

use std::collections::HashMap;
use std::path::{Component, Path as FsPath, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use backstop_repo::imagefs::ImageView;
use backstop_repo::index::Index;
use backstop_repo::tree::{NodeData, NodeType};
use backstop_repo::{Repository, SnapshotId};
use backstop_types::{Role, Snapshot, SnapshotDir, SnapshotEntry};
use chrono::DateTime;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Json, Query};
use crate::state::AppState;

/// How long a repository opened for browsing stays open.
const KEEP_OPEN: Duration = Duration::from_secs(60);
/// Repositories kept open at once.
const MAX_OPEN: usize = 16;

/// Repositories opened for browsing, by catalog id, with their index.
#[derive(Default)]
pub struct OpenRepositories {
    open: Mutex<HashMap<String, Kept>>,
}

/// A repository kept open, since `at`.
struct Kept {
    at: Instant,
    repo: Repository,
    index: Arc<Index>,
}

impl OpenRepositories {
    fn get(&self, id: &str) -> Option<(Repository, Arc<Index>)> {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.get(id).filter(|k| k.at.elapsed() < KEEP_OPEN).map(|k| (k.repo.clone(), k.index.clone()))
    }

    fn put(&self, id: &str, repo: Repository, index: Arc<Index>) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.retain(|_, k| k.at.elapsed() < KEEP_OPEN);
        if open.len() >= MAX_OPEN
            && let Some(oldest) = open.iter().min_by_key(|(_, k)| k.at).map(|(id, _)| id.clone())
        {
            open.remove(&oldest);
        }
        open.insert(id.to_string(), Kept { at: Instant::now(), repo, index });
    }
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PathQuery {
    /// An absolute path inside the snapshot, as backed up (default `/`);
    /// no `..` in it.
    #[schemars(length(min = 1, max = 4096), pattern(r"^/[^\x00-\x1f\x7f]*$"))]
    pub path: Option<String>,
    /// A disk image of the snapshot (`/drive0.raw`): `path` is then inside
    /// it, its first component the partition (`/p1/etc`).
    #[schemars(length(min = 1, max = 4096), pattern(r"^/[^\x00-\x1f\x7f]*$"))]
    pub image: Option<String>,
}

/// A snapshot the caller may see, its repository open, its manifest read.
struct Opened {
    snapshot: Snapshot,
    repo: Repository,
    index: Arc<Index>,
    manifest: backstop_repo::Snapshot,
}

/// `path` as an absolute, normal path inside a snapshot.
fn inside(path: Option<&str>) -> ApiResult<PathBuf> {
    let path = path.unwrap_or("/");
    let bad = |why: &str| Err(ApiError::invalid(format!("path {path:?} {why}")).on("path"));
    if !path.starts_with('/') {
        return bad("is not absolute (it starts with /, as backed up)");
    }
    if path.len() > 4096 || path.contains('\0') {
        return bad("is too long or holds a NUL");
    }
    let mut normal = PathBuf::from("/");
    for c in FsPath::new(path).components() {
        match c {
            Component::Normal(name) => normal.push(name),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => return bad("has a .. in it"),
        }
    }
    Ok(normal)
}

fn engine_error(e: backstop_repo::Error) -> ApiError {
    use backstop_repo::Error as E;
    match &e {
        E::NotFound { what } => ApiError::not_found(what),
        E::Invalid(_) => ApiError::invalid(e.to_string()),
        _ => ApiError::new(
            backstop_types::ErrorCode::Unavailable,
            format!("the coordinator cannot read this snapshot ({e}); restore it through a restore job"),
        ),
    }
}

/// Snapshot `id` (a full id), if it is in a repository the caller may see.
async fn find(state: &AppState, caller: &Caller, id: &str) -> ApiResult<Snapshot> {
    caller.require(Role::Viewer)?;
    Ok(state.catalog.snapshot(&caller.scope(), id).await?)
}

/// One snapshot of the catalog.
pub async fn get(State(state): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<Json<Snapshot>> {
    Ok(Json(find(&state, &caller, &id).await?))
}

/// `snapshot`'s repository open (as its tenant's job would open it) and its manifest read.
async fn open(state: &AppState, caller: &Caller, snapshot: Snapshot) -> ApiResult<Opened> {
    let scope = caller.scope();
    let id = snapshot.info.id.clone();
    let snapshot_id: SnapshotId = id.parse().map_err(|_| ApiError::not_found(format!("snapshot {id}")))?;
    let (repo, index) = match state.browsing.get(&snapshot.repository) {
        Some(open) => open,
        None => {
            let access = state.catalog.repository_access(&scope, &snapshot.repository).await?;
            let reach = state.reach_of(&snapshot.tenant).await?;
            // The workers' cache of this catalog repository (see backstop_worker::run).
            let cache = state.cache_dir.as_ref().map(|d| d.join(&snapshot.repository));
            let (repo, index) = tokio::task::spawn_blocking(move || -> Result<_, backstop_repo::Error> {
                let repo = backstop_worker::run::open_repository(&access, &reach)?;
                let repo = match cache.as_deref().map(|dir| repo.open_cache(dir)) {
                    Some(Ok(cache)) => repo.with_cache(cache),
                    _ => repo,
                };
                let index = Arc::new(repo.load_index()?);
                Ok((repo, index))
            })
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .map_err(engine_error)?;
            state.browsing.put(&snapshot.repository, repo.clone(), index.clone());
            (repo, index)
        }
    };
    let (manifest, index) = {
        let kept = repo.clone();
        let read = tokio::task::spawn_blocking(move || -> Result<_, backstop_repo::Error> {
            let manifest = kept.load_snapshot(&snapshot_id)?;
            // An index kept open from before this snapshot was written does
            // not know its trees: load it again.
            if index.contains(backstop_repo::pack::BlobKind::Tree, &manifest.tree) {
                Ok((manifest, index, false))
            } else {
                Ok((manifest, Arc::new(kept.load_index()?), true))
            }
        });
        let (manifest, index, reloaded) =
            read.await.map_err(|e| ApiError::internal(e.to_string()))?.map_err(engine_error)?;
        if reloaded {
            state.browsing.put(&snapshot.repository, repo.clone(), index.clone());
        }
        (manifest, index)
    };
    Ok(Opened { snapshot, repo, index, manifest })
}

fn entry(node: &backstop_repo::tree::Node) -> SnapshotEntry {
    SnapshotEntry {
        name: String::from_utf8_lossy(&node.name).into_owned(),
        kind: node.node_type.as_str().to_string(),
        size: node.size,
        mode: node.mode & 0o7777,
        mtime: DateTime::from_timestamp_nanos(node.mtime_ns),
        target: match &node.data {
            NodeData::Symlink { target } => Some(String::from_utf8_lossy(target).into_owned()),
            _ => None,
        },
    }
}

/// One directory of a snapshot.
pub async fn tree(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<PathQuery>,
) -> ApiResult<Json<SnapshotDir>> {
    // Not found before anything else: no other tenant learns what is wrong with its request.
    let snapshot = find(&state, &caller, &id).await?;
    let path = inside(q.path.as_deref())?;
    let Opened { snapshot, repo, index, manifest } = open(&state, &caller, snapshot).await?;
    let shown = path.clone();
    let source_kind = manifest.source.as_ref().map(|s| s.kind.clone());
    let image = q.image.as_deref().map(|i| inside(Some(i)).map_err(|e| e.on("image"))).transpose()?;
    let in_image = image.clone();
    let entries = tokio::task::spawn_blocking(move || -> ApiResult<Vec<SnapshotEntry>> {
        if let Some(image) = &in_image {
            let view = ImageView::open(&repo, &index, &manifest, image).map_err(engine_error)?;
            let nodes = view.read_dir(&path, &backstop_repo::NoProgress).map_err(engine_error)?;
            return Ok(nodes.iter().map(entry).collect());
        }
        let subtree = match backstop_repo::ops::ls::find(&repo, &index, &manifest, &path).map_err(engine_error)? {
            None => manifest.tree,
            Some(node) => node.subtree().ok_or_else(|| {
                ApiError::invalid(format!("{} is a {}, not a directory", path.display(), node.node_type.as_str()))
                    .on("path")
            })?,
        };
        let tree = repo.load_tree(&index, &subtree).map_err(engine_error)?;
        Ok(tree.nodes.iter().map(entry).collect())
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok(Json(SnapshotDir {
        snapshot: snapshot.info.id,
        path: shown.to_string_lossy().into_owned(),
        image: image.map(|i| i.to_string_lossy().into_owned()),
        source_kind,
        entries,
    }))
}

/// Hands what a blocking writer writes to an HTTP body, a piece at a time.
struct BodyWriter(tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>);

impl std::io::Write for BodyWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .blocking_send(Ok(Bytes::copy_from_slice(buf)))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One file of a snapshot, as an attachment; its blobs are read and sent
/// one after another, never the whole file in memory.
pub async fn file(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<PathQuery>,
) -> ApiResult<Response> {
    // Its content is data, not a listing: as a restore, for operators, audited.
    caller.require(Role::Operator)?;
    let snapshot = find(&state, &caller, &id).await?;
    let path = inside(q.path.as_deref())?;
    let image = q.image.as_deref().map(|i| inside(Some(i)).map_err(|e| e.on("image"))).transpose()?;
    let Opened { repo, index, manifest, .. } = open(&state, &caller, snapshot).await?;
    // What it is, first: an error is an answer, not a broken download.
    let size = {
        let (repo, index, manifest, path, image) =
            (repo.clone(), index.clone(), manifest.clone(), path.clone(), image.clone());
        tokio::task::spawn_blocking(move || -> ApiResult<u64> {
            let node = match &image {
                Some(image) => {
                    let view = ImageView::open(&repo, &index, &manifest, image).map_err(engine_error)?;
                    Some(view.stat(&path, &backstop_repo::NoProgress).map_err(engine_error)?)
                }
                None => backstop_repo::ops::ls::find(&repo, &index, &manifest, &path).map_err(engine_error)?,
            };
            match node {
                Some(node) if node.node_type == NodeType::File => Ok(node.size),
                Some(node) => Err(ApiError::invalid(format!(
                    "{} is a {}, not a file; restore it through a restore job",
                    path.display(),
                    node.node_type.as_str()
                ))
                .on("path")),
                None => Err(ApiError::invalid("give the path of a file inside the snapshot").on("path")),
            }
        })
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??
    };
    let detail = serde_json::json!({"path": path.to_string_lossy(), "image": image, "bytes": size});
    crate::handlers::audit(&state, &caller, "snapshot.download", format!("snapshot/{id}"), detail).await?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        let mut out = BodyWriter(tx.clone());
        let dumped = match &image {
            Some(image) => ImageView::open(&repo, &index, &manifest, image)
                .and_then(|view| view.dump(&path, &mut out, &backstop_repo::NoProgress)),
            None => backstop_repo::ops::dump::dump(&repo, &index, &manifest, &path, &mut out),
        };
        if let Err(e) = dumped {
            // The body ends short: the client sees an incomplete download.
            let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async { rx.recv().await.map(|piece| (piece, rx)) });
    let disposition = format!(
        "attachment; filename=\"{}\"; filename*=UTF-8''{}",
        name.chars().map(|c| if c.is_ascii_graphic() && c != '"' && c != '\\' { c } else { '_' }).collect::<String>(),
        percent_encoding::utf8_percent_encode(&name, percent_encoding::NON_ALPHANUMERIC)
    );
    let mut response = Body::from_stream(stream).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if let Ok(value) = HeaderValue::from_str(&disposition) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_inside_a_snapshot_are_absolute_and_never_climb() {
        assert_eq!(inside(None).unwrap(), PathBuf::from("/"));
        assert_eq!(inside(Some("/srv//data/./x")).unwrap(), PathBuf::from("/srv/data/x"));
        for bad in ["srv", "/srv/../etc", "/a\0b", ""] {
            assert_eq!(inside(Some(bad)).unwrap_err().field.as_deref(), Some("path"), "{bad:?}");
        }
    }
}
