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

fn call_error(e: crate::error::ApiError) -> CallError {
    match e.code {
        "stale_attempt" | "not_found" => CallError::Stale(e.message),
        "unavailable" | "internal" => CallError::Unavailable(e.message),
        _ => CallError::Refused(e.message),
    }
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
