//! What the handlers share, and the coordinator's background loops.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use backstop_catalog::resources::{SYSTEM_TENANT, Scope};
use backstop_catalog::{Catalog, now_ms};
use backstop_repo::CancelToken;
use backstop_types::{Job, JobState, NetScope, PathScope, Reach};
use tokio::sync::Notify;

use crate::metrics::Metrics;
use crate::webhooks::Webhooks;

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub catalog: Catalog,
    /// Woken when work may have become available (enqueue, completion,
    /// requeue), so long-polling claims answer at once in this process.
    pub notify: Notify,
    pub metrics: Metrics,
    pub webhooks: Webhooks,
    /// See [`crate::ServerConfig::tenant_roots`].
    pub tenant_roots: Vec<PathBuf>,
    /// The addresses this service answers on: no tenant's job connects to them.
    pub own_addresses: Vec<SocketAddr>,
    /// Event streams open per token (see [`AppState::open_stream`]).
    streams: std::sync::Mutex<std::collections::HashMap<String, usize>>,
    /// Rings when this coordinator revoked a token: its streams end at once.
    pub revocations: tokio::sync::watch::Sender<u64>,
    /// `/metrics` without a token (`serve --metrics-public`).
    pub metrics_public: bool,
    /// The web UI's cookies are `Secure`: the service speaks TLS.
    pub secure_cookies: bool,
    /// Repositories opened to browse snapshots (`handlers::snapshots`).
    pub browsing: crate::handlers::snapshots::OpenRepositories,
    /// Where repositories' local caches are kept (the in-process workers' too).
    pub cache_dir: Option<PathBuf>,
}

/// Event streams one token may hold open at once.
pub const MAX_STREAMS_PER_TOKEN: usize = 8;

/// An open event stream, counted against its token until dropped.
pub struct StreamSlot {
    state: AppState,
    token: String,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut streams = self.state.streams.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = streams.get_mut(&self.token) {
            *n -= 1;
            if *n == 0 {
                streams.remove(&self.token);
            }
        }
    }
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    /// The shared state of a coordinator configured by `config`, listening on `listen`.
    pub fn new(catalog: Catalog, config: &crate::ServerConfig, listen: SocketAddr) -> AppState {
        // Listening on every address: each of the host's is ours.
        let own_addresses = if listen.ip().is_unspecified() {
            NetScope::local_addresses().into_iter().map(|ip| SocketAddr::new(ip, listen.port())).collect()
        } else {
            vec![listen]
        };
        AppState(Arc::new(Inner {
            catalog,
            notify: Notify::new(),
            metrics: Metrics::default(),
            webhooks: Webhooks::new(config.webhooks.clone(), config.webhook_secret.clone()),
            tenant_roots: config.tenant_roots.clone(),
            own_addresses,
            streams: Default::default(),
            revocations: tokio::sync::watch::channel(0).0,
            metrics_public: config.metrics_public,
            secure_cookies: config.tls.is_some(),
            browsing: Default::default(),
            cache_dir: config.worker_cache_dir.clone(),
        }))
    }

    /// A slot for one more event stream of `token`, or `None` when it holds
    /// [`MAX_STREAMS_PER_TOKEN`] already.
    pub fn open_stream(&self, token: &str) -> Option<StreamSlot> {
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        let n = streams.entry(token.to_string()).or_default();
        if *n >= MAX_STREAMS_PER_TOKEN {
            return None;
        }
        *n += 1;
        Some(StreamSlot { state: self.clone(), token: token.to_string() })
    }

    /// A token was revoked here: streams re-check their tokens now.
    pub fn revoked(&self) {
        self.revocations.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The local paths a tenant's jobs may name: any for the system
    /// tenant, else only beneath `<root>/<tenant>/` of a tenant root.
    pub fn paths_of(&self, tenant: &str) -> PathScope {
        if tenant == SYSTEM_TENANT {
            PathScope::Any
        } else {
            PathScope::Beneath { roots: self.tenant_roots.iter().map(|r| r.join(tenant)).collect() }
        }
    }

    /// Everything a tenant's jobs may reach: its paths, and the networks
    /// its administrator granted (never this service's own addresses).
    pub async fn reach_of(&self, tenant: &str) -> Result<Reach, backstop_catalog::Error> {
        if tenant == SYSTEM_TENANT {
            return Ok(Reach::any());
        }
        let grants = self.catalog.tenant(&Scope::All, tenant).await?.allow_net;
        Ok(Reach { paths: self.paths_of(tenant), net: NetScope::Granted { grants, own: self.own_addresses.clone() } })
    }

    /// Work may be available.
    pub fn wake(&self) {
        self.notify.notify_waiters();
    }

    /// A job ended: count it, and notify webhooks if it failed for good.
    pub fn finished(&self, job: &Job) {
        self.metrics.finished(job);
        if matches!(job.state, JobState::Failed | JobState::Dead) {
            self.webhooks.job_failed(job);
        }
        self.wake();
    }
}

/// Fire due schedules every `tick`. A fire found more than five minutes
/// late is a misfire (the coordinator was down), handled by the plan's policy.
pub async fn scheduler_loop(state: AppState, tick: Duration, stop: CancelToken) {
    while !stop.is_cancelled() {
        match state.catalog.fire_due_plans(now_ms(), Duration::from_secs(5 * 60)).await {
            Ok(fired) if !fired.is_empty() => state.wake(),
            Ok(_) => {}
            Err(e) => eprintln!("backstop serve: scheduler: {e}"),
        }
        sleep_or_stop(tick, &stop).await;
    }
}

/// Requeue expired leases and stop jobs past their deadline every `tick`.
pub async fn reaper_loop(state: AppState, tick: Duration, stop: CancelToken) {
    while !stop.is_cancelled() {
        match state.catalog.reap(now_ms()).await {
            Ok(report) => {
                state.metrics.lease_expired(report.requeued + report.dead + report.cancelled);
                if report != Default::default() {
                    state.wake();
                    // Report dead and deadline-failed jobs to the webhooks.
                    if report.dead + report.deadline > 0 {
                        notify_recent_failures(&state).await;
                    }
                }
            }
            Err(e) => eprintln!("backstop serve: reaper: {e}"),
        }
        sleep_or_stop(tick, &stop).await;
    }
}

async fn notify_recent_failures(state: &AppState) {
    let since = chrono::Utc::now() - chrono::Duration::seconds(60);
    for s in [JobState::Dead, JobState::Failed] {
        let filter = backstop_catalog::queue::JobFilter { state: Some(s), limit: 50, ..Default::default() };
        if let Ok(page) = state.catalog.list_jobs(&backstop_catalog::resources::Scope::All, &filter).await {
            for job in page.items.iter().filter(|j| j.finished.is_some_and(|f| f > since)) {
                if state.webhooks.first_notice(&job.id) {
                    state.finished(job);
                }
            }
        }
    }
}

/// Sleep for `d`, or until `stop` is cancelled.
pub async fn sleep_or_stop(d: Duration, stop: &CancelToken) {
    tokio::select! {
        () = tokio::time::sleep(d) => {}
        () = stop.cancelled() => {}
    }
}
