//! `/api/v1/jobs`: list, submit, get, cancel, and the event stream.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use backstop_catalog::queue::JobFilter;
use backstop_catalog::resources::Scope;
use backstop_catalog::{NewJob, now_ms};
use backstop_types::params::{CheckParams, RestoreParams};
use backstop_types::{ErrorCode, Job, JobEvent, JobKind, JobParams, JobSpec, JobState, Page, Role, Source, SourceKind};
use futures::Stream;
use serde::Deserialize;
use serde_json::json;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::handlers::{audit, check_ref, idempotency_key, page_limit};

/// Attempts a job may be given at most.
const MAX_ATTEMPTS: u32 = backstop_catalog::queue::MAX_ATTEMPTS;
use crate::extract::{Json, Query};
use crate::state::AppState;

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub state: Option<JobState>,
    pub kind: Option<JobKind>,
    /// A plan's name or id.
    #[schemars(pattern(backstop_types::REF_PATTERN))]
    pub plan: Option<String>,
    /// A repository's name or id.
    #[schemars(pattern(backstop_types::REF_PATTERN))]
    pub repository: Option<String>,
    /// A source's name or id.
    #[schemars(pattern(backstop_types::REF_PATTERN))]
    pub source: Option<String>,
    /// Only jobs created at or after this time (RFC 3339).
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Only jobs created before this time (RFC 3339).
    pub until: Option<chrono::DateTime<chrono::Utc>>,
    /// `next_cursor` of the page before.
    pub cursor: Option<String>,
    #[schemars(range(min = 1, max = 1000))]
    pub limit: Option<u32>,
}

/// Say so when a queued job waits for a region no worker serves.
async fn explain(state: &AppState, jobs: &mut [Job]) {
    let since = now_ms() - 60_000;
    let mut seen: HashMap<String, bool> = HashMap::new();
    for job in jobs.iter_mut().filter(|j| j.state == JobState::Queued) {
        if !job.wait_reason.as_deref().unwrap_or_default().starts_with("waiting for a worker") {
            continue;
        }
        let present = match seen.get(&job.region) {
            Some(p) => *p,
            None => {
                let p = state.catalog.worker_seen(&job.region, since).await.unwrap_or(true);
                seen.insert(job.region.clone(), p);
                p
            }
        };
        if !present {
            job.wait_reason = Some(format!(
                "no worker of region {} has asked for work in the last minute; start one with `backstop worker --region {}`",
                job.region, job.region
            ));
        }
    }
}

pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Page<Job>>> {
    caller.require(Role::Viewer)?;
    check_ref("plan", &q.plan)?;
    check_ref("repository", &q.repository)?;
    let scope = caller.scope();
    let plan = match &q.plan {
        Some(p) => Some(state.catalog.plan(&scope, p).await?.id),
        None => None,
    };
    let repository = match &q.repository {
        Some(r) => Some(state.catalog.repository(&scope, r).await?.id),
        None => None,
    };
    check_ref("source", &q.source)?;
    let source = match &q.source {
        Some(s) => Some(state.catalog.source(&scope, s).await?.id),
        None => None,
    };
    let filter = JobFilter {
        state: q.state,
        kind: q.kind,
        plan,
        repository,
        source,
        created_from_ms: q.since.map(|t| t.timestamp_millis()),
        created_before_ms: q.until.map(|t| t.timestamp_millis()),
        cursor: q.cursor.clone(),
        limit: page_limit(q.limit)? as u32,
    };
    let mut page = state.catalog.list_jobs(&scope, &filter).await?;
    explain(&state, &mut page.items).await;
    Ok(Json(page))
}

pub async fn get(State(state): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<Json<Job>> {
    caller.require(Role::Viewer)?;
    let mut job = state.catalog.job(&caller.scope(), &id).await?;
    explain(&state, std::slice::from_mut(&mut job)).await;
    Ok(Json(job))
}

/// Submit a job. With an `Idempotency-Key`, a repeated submission returns
/// the first job (200) instead of creating another (201).
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Json(spec): Json<JobSpec>,
) -> ApiResult<(StatusCode, Json<Job>)> {
    caller.require(Role::Operator)?;
    let scope = caller.scope();
    let key = idempotency_key(&headers)?;
    let now = now_ms();
    let (job, created) = if let (JobKind::Backup, Some(plan)) = (spec.kind, &spec.plan) {
        // A plan's backup runs with the plan's parameters; the request's are still checked.
        JobParams::parse(spec.kind, &spec.params).map_err(ApiError::invalid)?;
        state.catalog.run_plan(&scope, plan, key, now).await?
    } else {
        let mut new = job_from_spec(&state, &caller, &scope, &spec, key).await?;
        if new.idempotency_key.is_some() {
            new.request_digest = Some(backstop_catalog::request_digest(&json!(spec)));
        }
        state.catalog.enqueue(new, now).await?
    };
    if created {
        audit(&state, &caller, "job.create", format!("job/{}", job.id), json!({"kind": job.kind, "plan": job.plan}))
            .await?;
        state.wake();
    }
    Ok((if created { StatusCode::CREATED } else { StatusCode::OK }, Json(job)))
}

async fn job_from_spec(
    state: &AppState,
    caller: &Caller,
    scope: &Scope,
    spec: &JobSpec,
    key: Option<String>,
) -> ApiResult<NewJob> {
    let c = &state.catalog;
    let plan = match &spec.plan {
        Some(p) => Some(c.plan(scope, p).await?),
        None => None,
    };
    let repository = match (&spec.repository, &plan) {
        (Some(r), _) => c.repository(scope, r).await?,
        (None, Some(p)) => c.repository(scope, &p.repository).await?,
        (None, None) => return Err(ApiError::invalid("name a plan or a repository for the job")),
    };
    let source = match (&spec.source, &plan) {
        (Some(s), _) => Some(c.source(scope, s).await?),
        (None, Some(p)) if spec.kind == JobKind::Backup => Some(c.source(scope, &p.source).await?),
        _ => None,
    };
    if spec.kind == JobKind::Backup && source.is_none() {
        return Err(ApiError::invalid("a backup needs a source (or a plan)"));
    }
    if spec.kind == JobKind::Retention && plan.is_none() {
        return Err(ApiError::invalid("a retention job needs a plan (its policy decides what is kept)"));
    }
    // One tenant per job: an id may name any object the scope sees.
    let tenant = &repository.tenant;
    if plan.as_ref().is_some_and(|p| &p.tenant != tenant) || source.as_ref().is_some_and(|s| &s.tenant != tenant) {
        return Err(ApiError::invalid("the plan, source and repository of a job must belong to one tenant"));
    }
    if spec.deadline_seconds.is_some_and(|d| d == 0 || d > backstop_catalog::queue::MAX_DEADLINE_SECONDS) {
        return Err(ApiError::invalid("deadline_seconds must be between 1 and 2592000 (30 days)"));
    }
    if spec.max_attempts.is_some_and(|n| !(1..=MAX_ATTEMPTS).contains(&n)) {
        return Err(ApiError::invalid(format!("max_attempts must be between 1 and {MAX_ATTEMPTS}")));
    }
    let mut params = JobParams::parse(spec.kind, &spec.params).map_err(ApiError::invalid)?;
    match &params {
        JobParams::Restore(restore) => check_restore(state, caller, tenant, source.as_ref(), restore).await?,
        JobParams::Check(CheckParams { read_data: Some(read_data), .. })
            if !matches!(read_data.as_str(), "none" | "all") =>
        {
            read_data
                .parse::<backstop_repo::ops::check::ReadData>()
                .map_err(|e| ApiError::invalid(format!("params.read_data: {e} (or none, or all)")))?;
        }
        _ => {}
    }
    if let Some(p) = &plan {
        params.set_plan(&p.name, &p.tags);
    }
    Ok(NewJob {
        tenant: repository.tenant.clone(),
        params,
        plan: plan.as_ref().map(|p| p.id.clone()),
        source: source.as_ref().map(|s| s.id.clone()),
        host: source.as_ref().and_then(|s| s.host.clone()),
        region: repository.region.clone(),
        repository: repository.id,
        max_attempts: spec.max_attempts.unwrap_or(c.config.default_max_attempts),
        deadline_seconds: spec.deadline_seconds,
        idempotency_key: key.map(|k| format!("api:{k}")),
        request_digest: None,
        parent: None,
        step: None,
        not_before_ms: None,
    })
}

/// Whether a restore may go where its parameters say: into a system
/// (`to`, checked like a source of its kind, and carrying no credentials),
/// into the system its source reaches, or into a directory.
async fn check_restore(
    state: &AppState,
    caller: &Caller,
    tenant: &str,
    source: Option<&Source>,
    restore: &RestoreParams,
) -> ApiResult<()> {
    if let Some(image) = &restore.image {
        if restore.to.is_some() || restore.target.is_none() {
            return Err(ApiError::invalid(
                "params.image restores files from inside a disk image of the snapshot into params.target, \
                 a directory (not with params.to)",
            ));
        }
        if restore.verify {
            return Err(ApiError::invalid("params.verify is not available for files inside a disk image"));
        }
        let bad = image.contains(|c: char| c.is_control()) || image.split('/').any(|c| c == "..");
        if !image.starts_with('/') || bad {
            return Err(ApiError::invalid(format!(
                "params.image {image:?} is not the absolute path of a disk image in the snapshot (/drive0.raw)"
            )));
        }
    }
    if let Some(to) = &restore.to {
        // Job parameters are stored and shown as they are: no passwords in them.
        let url_password =
            to.config.get("url").and_then(|u| u.as_str()).is_some_and(|u| backstop_source::redact_spec(u) != u);
        if to.config.contains_key("password") || to.config.contains_key("token") || url_password {
            return Err(ApiError::invalid(
                "params.to must not carry a password or token (job parameters are stored and shown in clear): \
                 register the target as a source with its credentials among its secrets and restore into it \
                 (\"source\": NAME, options in params.options)",
            ));
        }
        if source.is_some() {
            return Err(ApiError::invalid("a restore goes to params.to or into a source, not both"));
        }
        backstop_source::validate_restore(to.kind, &to.config).map_err(|e| {
            ApiError::invalid(format!("params.to: {e} (kind: image, command, postgres, mysql or kubernetes)"))
        })?;
        let touches = backstop_source::touches(to.kind, &to.config, true)
            .map_err(|e| ApiError::invalid(format!("params.to: {e}")))?;
        return crate::reach::check(state, caller, tenant, &touches).await;
    }
    if let (Some(source), None) = (source.filter(|s| s.kind != SourceKind::Fs), &restore.target) {
        // Into the system a source reaches: checked as that source was, with
        // the restore's own options.
        let options = restore.options.clone().unwrap_or_default();
        let config = source.config.as_object().cloned().unwrap_or_default();
        let target = backstop_source::restore_into_source(source.kind, &config, &Default::default(), &options)
            .map_err(|e| ApiError::invalid(e.to_string()))?;
        let touches = backstop_source::touches(source.kind, &target, true)
            .map_err(|e| ApiError::invalid(format!("the restore into source {}: {e}", source.name)))?;
        return crate::reach::check(state, caller, tenant, &touches).await;
    }
    let target = restore.target.as_deref().unwrap_or_default();
    if !target.starts_with('/') {
        return Err(ApiError::invalid("a restore needs params.target, an absolute directory on the worker's host"));
    }
    crate::reach::check_path(state, tenant, target)
}

pub async fn cancel(State(state): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<Json<Job>> {
    caller.require(Role::Operator)?;
    let job = state.catalog.cancel(&caller.scope(), &id, now_ms()).await?;
    audit(&state, &caller, "job.cancel", format!("job/{id}"), json!({"state": job.state})).await?;
    if job.state == JobState::Cancelled {
        state.finished(&job);
    }
    Ok(Json(job))
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Events after this id (0: from the start).
    #[schemars(range(min = 0))]
    pub after: Option<i64>,
    #[schemars(range(min = 1, max = 10_000))]
    pub limit: Option<u32>,
}

pub async fn events(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<EventsQuery>,
) -> ApiResult<Json<Vec<JobEvent>>> {
    caller.require(Role::Viewer)?;
    let limit = match q.limit {
        None => 1000,
        Some(n @ 1..=10_000) => n,
        Some(_) => return Err(ApiError::invalid("limit must be between 1 and 10000")),
    };
    if q.after.is_some_and(|a| a < 0) {
        return Err(ApiError::invalid("after is an event id (0 or more)"));
    }
    Ok(Json(state.catalog.events(&caller.scope(), &id, q.after.unwrap_or(0), limit).await?))
}

/// How long an idle stream waits before it looks again anyway: for a token
/// revoked on another coordinator, and for the catalog's notices should one
/// have been missed.
const STREAM_RECHECK: Duration = Duration::from_secs(10);

/// What a stream carries between its events.
struct Follow {
    state: AppState,
    scope: Scope,
    job: String,
    token: String,
    after: i64,
    buffer: std::collections::VecDeque<JobEvent>,
    done: bool,
    bell: tokio::sync::watch::Receiver<u64>,
    revocations: tokio::sync::watch::Receiver<u64>,
    _slot: crate::state::StreamSlot,
}

impl Follow {
    /// The next event to send, waiting for one; `None` at the end (the job
    /// finished and everything was sent, or the token was revoked).
    async fn next(&mut self) -> Option<JobEvent> {
        loop {
            if let Some(e) = self.buffer.pop_front() {
                self.after = e.id;
                return Some(e);
            }
            if self.done {
                return None;
            }
            match self.state.catalog.token_is_live(&self.token).await {
                Ok(false) => return None,
                Ok(true) => {}
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            }
            // Seen from here on: a ring after this is for what we have not read.
            self.bell.borrow_and_update();
            self.revocations.borrow_and_update();
            let finished = match self.state.catalog.job(&self.scope, &self.job).await {
                Ok(job) => job.state.is_finished(),
                // A catalog hiccup is not the end of the job: look again.
                Err(e) if e.is_transient() => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
                Err(_) => return None,
            };
            match self.state.catalog.events(&self.scope, &self.job, self.after, 500).await {
                Ok(events) => {
                    // Send what is left, then end.
                    self.done = finished && events.len() < 500;
                    self.buffer = events.into();
                }
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            }
            if self.buffer.is_empty() && !self.done {
                tokio::select! {
                    _ = self.bell.changed() => {}
                    _ = self.revocations.changed() => {}
                    _ = tokio::time::sleep(STREAM_RECHECK) => {}
                }
            }
        }
    }
}

/// The job's events as Server-Sent Events: everything after `after` (or
/// the `Last-Event-ID` header), then new ones as the catalog announces
/// them, until the job has finished and its last event was sent, or the
/// token is revoked. A token holds at most
/// [`MAX_STREAMS_PER_TOKEN`](crate::state::MAX_STREAMS_PER_TOKEN) at once.
pub async fn stream(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<EventsQuery>,
    headers: HeaderMap,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    caller.require(Role::Viewer)?;
    let scope = caller.scope();
    state.catalog.job(&scope, &id).await?;
    let slot = state.open_stream(&caller.token.id).ok_or_else(|| {
        ApiError::new(
            ErrorCode::TooManyStreams,
            format!(
                "this token has {} event streams open already; close one, or read /api/v1/jobs/{id}/events",
                crate::state::MAX_STREAMS_PER_TOKEN
            ),
        )
    })?;
    let resume = headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    let follow = Follow {
        bell: state.catalog.subscribe_events(),
        revocations: state.revocations.subscribe(),
        state,
        scope,
        job: id,
        token: caller.token.id.clone(),
        after: resume.or(q.after).unwrap_or(0),
        buffer: Default::default(),
        done: false,
        _slot: slot,
    };
    let stream = futures::stream::unfold(follow, |mut follow| async move {
        let e = follow.next().await?;
        let event = Event::default()
            .id(e.id.to_string())
            .event(match e.kind {
                backstop_types::EventKind::State => "state",
                backstop_types::EventKind::Progress => "progress",
                backstop_types::EventKind::Log => "log",
            })
            .data(serde_json::to_string(&e).unwrap_or_default());
        Some((Ok(event), follow))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// The worker pools by region: workers seen in the last two minutes (or
/// running a job), and the caller's jobs running and queued there.
pub async fn regions(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<backstop_types::RegionPool>>> {
    caller.require(Role::Viewer)?;
    let seen_since = now_ms() - 120_000;
    Ok(Json(state.catalog.regions(&caller.scope(), seen_since).await?))
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LatestQuery {
    pub kind: JobKind,
    pub per: backstop_types::Per,
}

/// The last job of a kind that succeeded for each source, plan or
/// repository (`per`): when each was last backed up, verified, checked or
/// pruned.
pub async fn latest(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<LatestQuery>,
) -> ApiResult<Json<Vec<Job>>> {
    caller.require(Role::Viewer)?;
    Ok(Json(state.catalog.latest_jobs(&caller.scope(), q.kind, q.per).await?))
}
