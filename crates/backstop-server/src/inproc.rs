//! The in-process worker pool's coordinator: the same fenced calls a
//! remote worker makes over HTTP, made directly on the catalog.

use backstop_catalog::now_ms;
use backstop_repo::CancelToken;
use backstop_types::{Claim, ClaimRequest, Completion, Heartbeat, HeartbeatReply, Outcome};
use backstop_worker::{CallError, Coordinator};

use crate::state::AppState;

pub struct InProcess {
    state: AppState,
    stop: CancelToken,
}

impl InProcess {
    pub fn new(state: AppState, stop: CancelToken) -> InProcess {
        InProcess { state, stop }
    }
}

/// What a coordinator calls its in-process workers: `host/pid/serve`
/// (each slot claims as `…#slot`).
pub fn pool_name() -> String {
    format!("{}/{}/serve", backstop_repo::hostname(), std::process::id())
}

/// Whether a lease owner is a slot of an in-process pool of a coordinator
/// on this host that is no longer running (an earlier incarnation of this
/// one, killed): its jobs need not wait out their leases. Remote workers,
/// and pools of other hosts or of live processes, are never taken for dead.
pub fn is_dead_local_pool(owner: &str) -> bool {
    let Some((name, _slot)) = owner.rsplit_once('#') else { return false };
    let Some((host, pid)) = name.strip_suffix("/serve").and_then(|n| n.rsplit_once('/')) else { return false };
    let Ok(pid) = pid.parse::<u32>() else { return false };
    host == backstop_repo::hostname() && pid != std::process::id() && !backstop_repo::process_alive(pid)
}

/// Requeue at once the jobs a killed earlier incarnation of this
/// coordinator was running in its own workers.
pub async fn reclaim_dead_pools(catalog: &backstop_catalog::Catalog) -> Result<Vec<String>, backstop_catalog::Error> {
    let mut reclaimed = Vec::new();
    for owner in catalog.lease_owners().await? {
        if is_dead_local_pool(&owner) {
            reclaimed.extend(catalog.reclaim(&owner, now_ms()).await?);
        }
    }
    Ok(reclaimed)
}

fn call_error(e: crate::error::ApiError) -> CallError {
    CallError::from_code(e.code, e.message)
}

impl Coordinator for InProcess {
    async fn claim(&self, req: &ClaimRequest) -> Result<Option<Claim>, CallError> {
        if self.stop.is_cancelled() {
            return Ok(None);
        }
        crate::handlers::worker::claim_waiting(&self.state, req).await.map_err(call_error)
    }

    async fn heartbeat(&self, job: &str, hb: &Heartbeat) -> Result<HeartbeatReply, CallError> {
        let mut reply = self.state.catalog.heartbeat(job, hb, now_ms()).await.map_err(|e| call_error(e.into()))?;
        // Shutting down: stop the job; it is reported as retryable below.
        if self.stop.is_cancelled() {
            reply.cancel = true;
        }
        Ok(reply)
    }

    async fn complete(&self, job: &str, c: &Completion) -> Result<(), CallError> {
        if self.stop.is_cancelled() && c.outcome == Outcome::Cancelled {
            // Interrupted by the coordinator's shutdown, not by a user: give
            // the job back without spending an attempt. (A user's cancel
            // that came at the same time makes release refuse: then it ends
            // as cancelled below.)
            let released = self.state.catalog.release(job, c.attempt, "the coordinator shut down", now_ms()).await;
            if released.is_ok() {
                return Ok(());
            }
        }
        let done = self.state.catalog.complete(job, c, now_ms()).await.map_err(|e| call_error(e.into()))?;
        self.state.finished(&done);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_pools_of_dead_processes_on_this_host_are_taken_for_dead() {
        let host = backstop_repo::hostname();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        assert!(is_dead_local_pool(&format!("{host}/{dead}/serve#0")));
        // This process, a remote worker of a dead pid, another host, nonsense.
        assert!(!is_dead_local_pool(&format!("{}#1", pool_name())));
        assert!(!is_dead_local_pool(&format!("{host}/{dead}#0")));
        assert!(!is_dead_local_pool(&format!("elsewhere-{host}/{dead}/serve#0")));
        assert!(!is_dead_local_pool("serve#0"));
        assert!(!is_dead_local_pool(&format!("{host}/x/serve#0")));
    }
}
