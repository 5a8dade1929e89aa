//! `/api/v1/worker`: the worker protocol. A claim long-polls (up to
//! `wait_seconds`, answering 204 when nothing came); heartbeats and
//! completions are fenced by attempt and refused with 409 when the
//! attempt no longer holds the job.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use backstop_catalog::now_ms;
use backstop_types::{Claim, ClaimRequest, Completion, Heartbeat, HeartbeatReply, Job, Role};

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::Json;
use crate::state::AppState;

/// Claim for `req`, waiting up to its `wait_seconds` (at most 60).
pub async fn claim_waiting(state: &AppState, req: &ClaimRequest) -> ApiResult<Option<Claim>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(req.wait_seconds.min(60) as u64);
    loop {
        // Register interest before looking, so a wake between the look and
        // the wait is not lost.
        let notified = state.notify.notified();
        if let Some(mut claim) = state.catalog.claim(&req.worker, &req.region, now_ms()).await? {
            match state.reach_of(&claim.job.tenant).await {
                Ok(reach) => claim.reach = reach,
                Err(e) => {
                    // Without its reach the job cannot run as it should: give it back.
                    let why = format!("the coordinator could not read the tenant's settings: {e}");
                    let _ = state.catalog.release(&claim.job.id, claim.attempt, &why, now_ms()).await;
                    return Err(e.into());
                }
            }
            state.metrics.claimed();
            return Ok(Some(claim));
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        // Other coordinators' enqueues do not wake us: look again every second.
        let _ = tokio::time::timeout((deadline - now).min(Duration::from_secs(1)), notified).await;
    }
}

/// Workers serve every tenant: only the system tenant's worker tokens may.
fn require_worker(caller: &Caller) -> ApiResult<()> {
    caller.require(Role::Worker)?;
    if caller.scope() != backstop_catalog::resources::Scope::All {
        return Err(ApiError::forbidden("worker tokens belong to the system tenant"));
    }
    Ok(())
}

pub async fn claim(
    State(state): State<AppState>,
    caller: Caller,
    Json(req): Json<ClaimRequest>,
) -> ApiResult<Response> {
    require_worker(&caller)?;
    backstop_types::check::text("a claim's worker", &req.worker, 1, 400).map_err(ApiError::invalid)?;
    backstop_types::check::name("a claim's region", &req.region).map_err(ApiError::invalid)?;
    Ok(match claim_waiting(&state, &req).await? {
        Some(claim) => Json(claim).into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    })
}

pub async fn heartbeat(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(hb): Json<Heartbeat>,
) -> ApiResult<Json<HeartbeatReply>> {
    require_worker(&caller)?;
    Ok(Json(state.catalog.heartbeat(&id, &hb, now_ms()).await?))
}

pub async fn complete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(c): Json<Completion>,
) -> ApiResult<Json<Job>> {
    require_worker(&caller)?;
    let job = state.catalog.complete(&id, &c, now_ms()).await?;
    state.finished(&job);
    Ok(Json(job))
}
