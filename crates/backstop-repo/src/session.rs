//! Session markers (`docs/format.md` §10): every process that loads the
//! index announces itself, keeps the announcement fresh, and removes it when
//! done. Prune waits for the sessions that were live when it marked.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::crypto::{Compression, ObjectKind, Sealer};
use crate::error::{Error, Result};
use crate::id::SessionId;
use crate::repository::Repository;

/// How often a session rewrites its marker, and when a marker counts as
/// abandoned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionTiming {
    pub heartbeat: Duration,
    pub stale_after: Duration,
}

impl Default for SessionTiming {
    fn default() -> Self {
        SessionTiming { heartbeat: Duration::from_secs(60), stale_after: Duration::from_secs(600) }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    pub id: SessionId,
    /// backup, restore, check, prune, …
    pub kind: String,
    pub hostname: String,
    pub pid: u32,
    pub started: DateTime<Utc>,
}

/// A session marker as found on the backend.
#[derive(Debug, Clone)]
pub struct LiveSession {
    pub info: SessionInfo,
    pub last_modified: SystemTime,
    /// Not refreshed within `stale_after`: its process is gone.
    pub stale: bool,
}

pub fn session_key(id: &SessionId) -> String {
    format!("sessions/{id}")
}

struct Heartbeat {
    stop: Mutex<bool>,
    wake: Condvar,
    last_ok: Mutex<Instant>,
}

/// A running session. Ends (and deletes its marker) when dropped.
pub struct Session {
    repo: Repository,
    sealer: Arc<Sealer>,
    info: SessionInfo,
    heartbeat: Arc<Heartbeat>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("info", &self.info).finish_non_exhaustive()
    }
}

impl Session {
    /// Write the marker and start the heartbeat.
    pub fn start(repo: &Repository, kind: &str) -> Result<Session> {
        let id = SessionId::random();
        let sealer = Arc::new(Sealer::new(repo.key(), id));
        let info = SessionInfo {
            id,
            kind: kind.to_string(),
            hostname: crate::util::hostname(),
            pid: std::process::id(),
            started: Utc::now(),
        };
        let marker = seal_marker(&sealer, &info);
        repo.backend().put(&session_key(&id), &marker, backstop_backend::PutMode::Overwrite)?;

        let heartbeat =
            Arc::new(Heartbeat { stop: Mutex::new(false), wake: Condvar::new(), last_ok: Mutex::new(Instant::now()) });
        let thread = {
            let backend = repo.backend().clone();
            let heartbeat = heartbeat.clone();
            let interval = repo.session_timing().heartbeat;
            let key = session_key(&id);
            std::thread::Builder::new()
                .name("backstop-heartbeat".into())
                .spawn(move || {
                    loop {
                        let stop = heartbeat.stop.lock().unwrap_or_else(|e| e.into_inner());
                        // Checks the flag before sleeping, so a stop that
                        // came before we got here is not missed.
                        let (stop, _) = heartbeat
                            .wake
                            .wait_timeout_while(stop, interval, |stop| !*stop)
                            .unwrap_or_else(|e| e.into_inner());
                        if *stop {
                            return;
                        }
                        drop(stop);
                        if backend.put(&key, &marker, backstop_backend::PutMode::Overwrite).is_ok() {
                            *heartbeat.last_ok.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
                        }
                    }
                })
                .map_err(|e| Error::io("heartbeat thread", e))?
        };
        Ok(Session { repo: repo.clone(), sealer, info, heartbeat, thread: Some(thread) })
    }

    /// Start a maintenance session (prune, check) even on a full disk:
    /// when the marker cannot be written for lack of space, the
    /// repository's reserve is released and the marker written in its room.
    /// Returns the session and whether the disk was full.
    pub fn start_on_full_disk(
        repo: &Repository,
        kind: &str,
        progress: &dyn crate::Progress,
    ) -> Result<(Session, bool)> {
        match Session::start(repo, kind) {
            Err(Error::StorageFull(why)) if repo.release_reserve()? => {
                progress.info(&format!(
                    "the disk is full ({why}); the repository's reserve was released so that {kind} can run"
                ));
                Ok((Session::start(repo, kind)?, true))
            }
            other => other.map(|s| (s, false)),
        }
    }

    pub fn id(&self) -> SessionId {
        self.info.id
    }

    pub fn info(&self) -> &SessionInfo {
        &self.info
    }

    pub fn sealer(&self) -> &Arc<Sealer> {
        &self.sealer
    }

    /// Whether heartbeats failed for so long that a prune may have taken
    /// this session for dead. A backup checks this before it commits.
    pub fn may_have_lapsed(&self) -> bool {
        let last = *self.heartbeat.last_ok.lock().unwrap_or_else(|e| e.into_inner());
        last.elapsed() + self.repo.session_timing().heartbeat >= self.repo.session_timing().stale_after
    }

    /// Rewrite the marker now (after a lapse).
    pub fn refresh(&self) -> Result<()> {
        let marker = seal_marker(&self.sealer, &self.info);
        self.repo.backend().put(&session_key(&self.info.id), &marker, backstop_backend::PutMode::Overwrite)?;
        *self.heartbeat.last_ok.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        Ok(())
    }

    /// Stop the heartbeat and delete the marker.
    pub fn end(mut self) -> Result<()> {
        self.stop_heartbeat();
        self.repo.backend().delete(&session_key(&self.info.id))?;
        Ok(())
    }

    /// Stop heartbeating and leave the marker behind, as a process that was
    /// killed does. For fault-injection tests.
    pub fn abandon(mut self) {
        self.stop_heartbeat();
    }

    fn stop_heartbeat(&mut self) {
        *self.heartbeat.stop.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.heartbeat.wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.stop_heartbeat();
            let _ = self.repo.backend().delete(&session_key(&self.info.id));
        }
    }
}

fn seal_marker(sealer: &Sealer, info: &SessionInfo) -> Vec<u8> {
    let json = serde_json::to_vec(info).expect("session info serialises");
    sealer.seal(ObjectKind::Session, None, &json, Compression::None)
}

/// Every session marker present, with whether it is stale: not refreshed
/// within `stale_after`, or written by a process of this host that no
/// longer exists (a `kill -9` leaves no lock behind for long). Markers that
/// cannot be read are reported as stale sessions of unknown kind, so that a
/// damaged marker cannot block prune forever.
pub fn list_sessions(repo: &Repository) -> Result<Vec<LiveSession>> {
    let stale_after = repo.session_timing().stale_after;
    let now = SystemTime::now();
    let this_host = crate::util::hostname();
    let mut out = Vec::new();
    for meta in repo.backend().list("sessions/")? {
        let Some(id) = meta.key.strip_prefix("sessions/").and_then(|s| s.parse::<SessionId>().ok()) else {
            continue;
        };
        let age = now.duration_since(meta.last_modified).unwrap_or_default();
        let stale = age > stale_after;
        let info = match repo.backend().get(&meta.key) {
            Ok(bytes) => crate::crypto::open(repo.key(), ObjectKind::Session, None, &bytes, None)
                .ok()
                .and_then(|plain| serde_json::from_slice::<SessionInfo>(&plain).ok()),
            Err(e) if e.is_not_found() => continue, // ended meanwhile
            Err(e) => return Err(e.into()),
        };
        let (info, stale) = match info {
            Some(info) => {
                let dead = info.hostname == this_host && !crate::util::process_alive(info.pid);
                (info, stale || dead)
            }
            None => (
                SessionInfo {
                    id,
                    kind: "unreadable".into(),
                    hostname: String::new(),
                    pid: 0,
                    started: DateTime::<Utc>::from(meta.last_modified),
                },
                true,
            ),
        };
        out.push(LiveSession { info, last_modified: meta.last_modified, stale });
    }
    Ok(out)
}
