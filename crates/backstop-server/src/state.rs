//! What the handlers share, and the coordinator's background loops.

use std::sync::Arc;
use std::time::Duration;

use backstop_catalog::{Catalog, now_ms};
use backstop_repo::CancelToken;
use backstop_types::{Job, JobState};
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
    pub tenant_roots: Vec<std::path::PathBuf>,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    pub fn new(catalog: Catalog, webhooks: Vec<String>, tenant_roots: Vec<std::path::PathBuf>) -> AppState {
        AppState(Arc::new(Inner {
            catalog,
            notify: Notify::new(),
            metrics: Metrics::default(),
            webhooks: Webhooks::new(webhooks),
            tenant_roots,
        }))
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
        match state.catalog.fire_due_plans(now_ms(), 5 * 60_000).await {
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

pub async fn sleep_or_stop(d: Duration, stop: &CancelToken) {
    let step = Duration::from_millis(100);
    let mut left = d;
    while !stop.is_cancelled() && !left.is_zero() {
        let s = left.min(step);
        tokio::time::sleep(s).await;
        left -= s;
    }
}
