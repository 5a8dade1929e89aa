//! `/api/v1/plans`: what to back up, where, when, how long to keep.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use backstop_catalog::now_ms;
use backstop_types::{Job, Page, Plan, PlanSpec, Role, ScheduleFires};
use serde_json::json;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Json, Query};
use crate::handlers::{PageQuery, audit, check_ref, idempotency_key, paginate};
use crate::state::AppState;

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only plans into this repository (name or id).
    #[schemars(pattern(backstop_types::REF_PATTERN))]
    pub repository: Option<String>,
    pub cursor: Option<String>,
    #[schemars(range(min = 1, max = 1000))]
    pub limit: Option<u32>,
}

pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Page<Plan>>> {
    caller.require(Role::Viewer)?;
    check_ref("repository", &q.repository)?;
    let scope = caller.scope();
    let repo = match &q.repository {
        Some(r) => Some(state.catalog.repository(&scope, r).await?.id),
        None => None,
    };
    let plans: Vec<Plan> = state
        .catalog
        .list_plans(&scope)
        .await?
        .into_iter()
        .filter(|p| repo.as_ref().is_none_or(|r| &p.repository == r))
        .collect();
    Ok(Json(paginate(
        plans,
        |p| format!("{}/{}", p.name, p.id),
        &PageQuery { cursor: q.cursor.clone(), limit: q.limit },
    )?))
}

pub async fn get(State(state): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<Json<Plan>> {
    caller.require(Role::Viewer)?;
    Ok(Json(state.catalog.plan(&caller.scope(), &id).await?))
}

/// Create a plan, or replace the one with the same name.
pub async fn put(State(state): State<AppState>, caller: Caller, Json(spec): Json<PlanSpec>) -> ApiResult<Json<Plan>> {
    caller.require(Role::Operator)?;
    let plan = state.catalog.put_plan(&caller.scope(), &spec, now_ms()).await?;
    audit(
        &state,
        &caller,
        "plan.put",
        format!("plan/{}", plan.name),
        json!({"schedule": plan.schedule, "enabled": plan.enabled}),
    )
    .await?;
    Ok(Json(plan))
}

pub async fn delete(State(state): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<StatusCode> {
    caller.require(Role::Operator)?;
    let plan = state.catalog.plan(&caller.scope(), &id).await?;
    state.catalog.delete_plan(&caller.scope(), &plan.id).await?;
    audit(&state, &caller, "plan.delete", format!("plan/{}", plan.name), json!({})).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Run the plan's backup now; returns its job at once.
pub async fn run(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<(StatusCode, Json<Job>)> {
    caller.require(Role::Operator)?;
    let key = idempotency_key(&headers)?;
    let (job, created) = state.catalog.run_plan(&caller.scope(), &id, key, now_ms()).await?;
    if created {
        audit(&state, &caller, "plan.run", format!("plan/{id}"), json!({"job": job.id})).await?;
        state.wake();
    }
    Ok((if created { StatusCode::CREATED } else { StatusCode::OK }, Json(job)))
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleQuery {
    /// A cron expression as a plan takes it (`min hour day month weekday`, or `@daily`).
    #[schemars(length(min = 1, max = 200), pattern(backstop_types::TEXT_PATTERN))]
    pub schedule: String,
    /// IANA time zone (default UTC).
    #[schemars(length(min = 1, max = 100), pattern(backstop_types::TEXT_PATTERN))]
    pub timezone: Option<String>,
    /// How many fire times (default 5).
    #[schemars(range(min = 1, max = 100))]
    pub count: Option<u32>,
}

/// When a schedule would fire next: a plan's form shows it before saving.
/// A bad expression or zone is a 400 on its field.
pub async fn schedule(caller: Caller, Query(q): Query<ScheduleQuery>) -> ApiResult<Json<ScheduleFires>> {
    caller.require(Role::Viewer)?;
    let count = q.count.unwrap_or(5);
    if !(1..=100).contains(&count) {
        return Err(ApiError::invalid("count is between 1 and 100").on("count"));
    }
    let Some(schedule) = backstop_catalog::schedule::plan_schedule(Some(&q.schedule), q.timezone.as_deref())? else {
        return Err(ApiError::invalid("a schedule is needed").on("schedule"));
    };
    let fires = schedule
        .fires(now_ms(), count as usize)
        .into_iter()
        .filter_map(chrono::DateTime::from_timestamp_millis)
        .collect();
    Ok(Json(ScheduleFires { fires }))
}
