//! The pages and forms. Each reads through the API's handlers as the
//! session's caller and renders what they return; maud escapes every
//! string it is given.

use std::collections::HashMap;

use axum::Form;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::http::header::{self, HeaderMap};
use axum::response::{Html, IntoResponse, Response};
use backstop_catalog::now_ms;
use backstop_types::{
    EventKind, Job, JobEvent, JobKind, JobProgress, JobSpec, JobState, Page, Plan, Repository, Role, Source,
};
use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};
use serde::Deserialize;

use super::{UiAction, UiSession, assets, cookie, job_url, login_cookie, see_other, session_cookie, urlencode};
use crate::error::{ApiError, ApiResult};
use crate::extract::{Json, Query};
use crate::handlers::jobs::{self, EventsQuery, ListQuery};
use crate::handlers::plans;
use crate::handlers::resources::{self, RepositoryQuery, SnapshotQuery, SourceQuery};
use crate::state::AppState;

type PageResult = Result<Response, Response>;

/// An API error as a page, with the API's status.
pub fn error_page(e: &ApiError) -> Response {
    let body = layout(
        "Error",
        None,
        html! {
            h1 { "Something went wrong" }
            p.error role="alert" { (e.message) }
            p { a href="/" { "Back to the dashboard" } }
        },
    );
    (e.status(), Html(body.into_string())).into_response()
}

fn fail(e: ApiError) -> Response {
    error_page(&e)
}

fn render(title: &str, session: &UiSession, body: Markup) -> Response {
    Html(layout(title, Some(session), body).into_string()).into_response()
}

fn layout(title: &str, session: Option<&UiSession>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Backstop" }
                link rel="stylesheet" href=(assets::url("app", "css"));
                script type="module" src=(assets::url("app", "js")) {}
            }
            body {
                header.top {
                    a.brand href="/" { "Backstop" }
                    @if let Some(s) = session {
                        nav {
                            a href="/" { "Dashboard" }
                            a href="/jobs" { "Jobs" }
                            a href="/plans" { "Plans" }
                            a href="/sources" { "Sources" }
                            a href="/snapshots" { "Snapshots" }
                        }
                        span.who {
                            (s.session.token.name) " · " (s.session.token.role.as_str()) " · tenant " (s.session.token.tenant)
                        }
                        form.inline method="post" action="/logout" {
                            input type="hidden" name="csrf" value=(s.session.csrf);
                            button type="submit" { "Log out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

// ---- what the session may see -------------------------------------------

/// Pages of up to 1000 read of a list, at most.
const LIST_PAGES: usize = 10;

/// Every page of an API list, read with `fetch(cursor)` (at most [`LIST_PAGES`]).
async fn every<T, F, Fut>(mut fetch: F) -> Result<Vec<T>, Response>
where
    F: FnMut(Option<String>) -> Fut,
    Fut: std::future::Future<Output = crate::error::ApiResult<Json<Page<T>>>>,
{
    let mut all = Vec::new();
    let mut cursor = None;
    for _ in 0..LIST_PAGES {
        let Json(page) = fetch(cursor.take()).await.map_err(fail)?;
        all.extend(page.items);
        let Some(next) = page.next_cursor else { break };
        cursor = Some(next);
    }
    Ok(all)
}

/// The repositories, sources and plans the session may see.
struct Catalogue {
    repositories: Vec<Repository>,
    sources: Vec<Source>,
    plans: Vec<Plan>,
}

impl Catalogue {
    async fn load(state: &AppState, session: &UiSession) -> Result<Catalogue, Response> {
        let repositories = every(|cursor| {
            let q = RepositoryQuery { region: None, cursor, limit: Some(1000) };
            resources::list_repositories(State(state.clone()), session.caller(), Query(q))
        })
        .await?;
        let sources = every(|cursor| {
            let q = SourceQuery { kind: None, host: None, cursor, limit: Some(1000) };
            resources::list_sources(State(state.clone()), session.caller(), Query(q))
        })
        .await?;
        let plans = every(|cursor| {
            let q = plans::ListQuery { repository: None, cursor, limit: Some(1000) };
            plans::list(State(state.clone()), session.caller(), Query(q))
        })
        .await?;
        Ok(Catalogue { repositories, sources, plans })
    }

    fn names(&self) -> Names {
        let repositories = self.repositories.iter().map(|r| (r.id.clone(), r.name.clone()));
        let sources = self.sources.iter().map(|s| (s.id.clone(), s.name.clone()));
        let plans = self.plans.iter().map(|p| (p.id.clone(), p.name.clone()));
        Names(repositories.chain(sources).chain(plans).collect())
    }
}

/// The names of the repositories, plans and sources the session may see,
/// by id: jobs name them by id.
struct Names(HashMap<String, String>);

impl Names {
    async fn load(state: &AppState, session: &UiSession) -> Result<Names, Response> {
        Ok(Catalogue::load(state, session).await?.names())
    }

    /// The name of the object with this id (the id itself if it is gone).
    fn of<'a>(&'a self, id: Option<&'a str>) -> &'a str {
        match id {
            Some(id) => self.0.get(id).map(String::as_str).unwrap_or(id),
            None => "–",
        }
    }
}

/// The newest succeeded job of `kind` of each key `key_of` gives, among the newest thousand.
async fn newest(
    state: &AppState,
    session: &UiSession,
    kind: JobKind,
    key_of: impl Fn(&Job) -> Option<String>,
) -> Result<HashMap<String, Job>, Response> {
    let q = ListQuery { kind: Some(kind), ..only(JobState::Succeeded, 1000) };
    let mut newest = HashMap::new();
    for job in list_jobs(state, session, q).await?.items {
        if let Some(key) = key_of(&job) {
            newest.entry(key).or_insert(job);
        }
    }
    Ok(newest)
}

/// How well a source is protected.
struct Protection<'a> {
    source: &'a Source,
    plans: Vec<&'a Plan>,
    last_backup: Option<&'a Job>,
    last_verify: Option<&'a Job>,
    next_run: Option<DateTime<Utc>>,
}

fn protection<'a>(
    catalogue: &'a Catalogue,
    backups: &'a HashMap<String, Job>,
    verifies: &'a HashMap<String, Job>,
) -> Vec<Protection<'a>> {
    let mut all: Vec<Protection> = catalogue
        .sources
        .iter()
        .map(|source| {
            let plans: Vec<&Plan> = catalogue.plans.iter().filter(|p| p.source == source.id).collect();
            let last_verify = plans.iter().filter_map(|p| verifies.get(&p.id)).max_by_key(|j| j.finished);
            let next_run = plans.iter().filter(|p| p.enabled).filter_map(|p| p.next_fire).min();
            Protection { source, last_backup: backups.get(&source.id), last_verify, next_run, plans }
        })
        .collect();
    // Sources never backed up first, then the longest without a backup.
    all.sort_by_key(|p| (p.last_backup.is_some(), p.last_backup.and_then(|j| j.finished), p.source.name.clone()));
    all
}

// ---- formatting ---------------------------------------------------------

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

fn seconds(s: u64) -> String {
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, s % 3600 / 60),
    }
}

fn when(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%SZ").to_string()
}

fn ago(t: &DateTime<Utc>) -> String {
    let s = (Utc::now() - *t).num_seconds().max(0) as u64;
    format!("{} ago", seconds(s))
}

fn state_badge(state: JobState) -> Markup {
    html! { span class={ "state " (state.as_str()) } { (state.as_str()) } }
}

/// A job's progress as a bar and its figures.
fn progress(p: Option<&JobProgress>) -> Markup {
    let p = p.cloned().unwrap_or_default();
    let (value, max) = if p.bytes_total > 0 { (p.bytes_done.min(p.bytes_total), p.bytes_total) } else { (0, 1) };
    html! {
        div.progress data-progress {
            progress value=(value) max=(max) {}
            span.figures {
                span data-field="bytes" { (bytes(p.bytes_done)) " of " (bytes(p.bytes_total)) }
                " · "
                span data-field="files" { (p.files_done) " of " (p.files_total) " files" }
                " · "
                span data-field="rate" { (bytes(p.rate)) "/s" }
                " · ETA "
                span data-field="eta" { (p.eta_seconds.map(seconds).unwrap_or_else(|| "–".into())) }
            }
        }
    }
}

fn job_row(job: &Job, names: &Names) -> Markup {
    html! {
        tr data-job=(job.id) {
            td { a href=(job_url(&job.id)) { code { (job.id) } } }
            td { (job.kind.as_str()) }
            td { (state_badge(job.state)) }
            td { (names.of(job.plan.as_deref())) }
            td { (names.of(job.source.as_deref())) }
            td { (names.of(Some(&job.repository))) }
            td title=(when(&job.created)) { (ago(&job.created)) }
            td.detail {
                @match job.state {
                    JobState::Running => { (progress(job.progress.as_ref())) }
                    JobState::Queued => { (job.wait_reason.as_deref().unwrap_or("waiting for a worker")) }
                    JobState::Failed | JobState::Dead => { span.error { (job.error.as_deref().unwrap_or("")) } }
                    _ => {}
                }
            }
        }
    }
}

fn job_table(jobs: &[Job], names: &Names, empty: &str) -> Markup {
    html! {
        @if jobs.is_empty() {
            p.empty { (empty) }
        } @else {
            table.jobs {
                thead { tr { th { "Job" } th { "Kind" } th { "State" } th { "Plan" } th { "Source" } th { "Repository" } th { "Created" } th { "" } } }
                tbody { @for job in jobs { (job_row(job, names)) } }
            }
        }
    }
}

// ---- login --------------------------------------------------------------

fn login_page(error: Option<&str>, login_csrf: &str) -> Markup {
    layout(
        "Log in",
        None,
        html! {
            h1 { "Log in" }
            p { "Log in with an API token: the admin token printed on the service's first start, or any token an admin made (" code { "backstop tokens create" } ")." }
            @if let Some(e) = error { p.error role="alert" { (e) } }
            form.login method="post" action="/login" {
                input type="hidden" name="login_csrf" value=(login_csrf);
                label for="token" { "Token" }
                input #token type="password" name="token" autocomplete="off" required autofocus;
                button type="submit" { "Log in" }
            }
        },
    )
}

/// The login form (with `error` above it), and its fresh CSRF cookie.
fn login_answer(state: &AppState, status: StatusCode, error: Option<&str>) -> Response {
    let value = crate::random_hex(16);
    let mut response = (status, Html(login_page(error, &value).into_string())).into_response();
    response.headers_mut().append(header::SET_COOKIE, login_cookie(state, Some(&value)));
    response
}

pub async fn login_form(State(state): State<AppState>) -> Response {
    login_answer(&state, StatusCode::OK, None)
}

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    login_csrf: String,
}

pub async fn login(State(state): State<AppState>, headers: HeaderMap, Form(form): Form<LoginForm>) -> Response {
    let again = |status: StatusCode, message: &str| login_answer(&state, status, Some(message));
    let expected = cookie(&headers, super::LOGIN_COOKIE).unwrap_or_default();
    if super::same_origin(&headers).is_err() || expected.is_empty() || !super::same_secret(expected, &form.login_csrf) {
        return again(StatusCode::FORBIDDEN, "The login form expired or came from another site; try again.");
    }
    let token = match state.catalog.authenticate(form.token.trim(), now_ms()).await {
        Ok(Some(token)) if token.role != Role::Worker => token,
        Ok(Some(_)) => {
            return again(
                StatusCode::FORBIDDEN,
                "A worker token cannot log in; use a viewer, operator or admin token.",
            );
        }
        Ok(None) => return again(StatusCode::UNAUTHORIZED, "That token is not valid, or it was revoked."),
        Err(e) => return fail(e.into()),
    };
    let session = match state.catalog.create_session(&token.id, now_ms(), super::SESSION_TTL.as_millis() as i64).await {
        Ok(s) => s,
        Err(e) => return fail(e.into()),
    };
    let caller = crate::auth::Caller { token };
    if let Err(e) = crate::handlers::audit(
        &state,
        &caller,
        "session.login",
        format!("token/{}", caller.token.id),
        serde_json::json!({}),
    )
    .await
    {
        return fail(e);
    }
    let mut response = see_other("/");
    response.headers_mut().append(header::SET_COOKIE, session_cookie(&state, Some(&session.secret)));
    response.headers_mut().append(header::SET_COOKIE, login_cookie(&state, None));
    response
}

pub async fn logout(State(state): State<AppState>, UiAction(session): UiAction) -> Response {
    if let Err(e) = state.catalog.end_session(&session.secret).await {
        return fail(e.into());
    }
    let mut response = see_other("/login");
    response.headers_mut().append(header::SET_COOKIE, session_cookie(&state, None));
    response
}

// ---- dashboard ----------------------------------------------------------

async fn list_jobs(state: &AppState, session: &UiSession, q: ListQuery) -> Result<Page<Job>, Response> {
    let Json(page) = jobs::list(State(state.clone()), session.caller(), Query(q)).await.map_err(fail)?;
    Ok(page)
}

fn only(state: JobState, limit: u32) -> ListQuery {
    ListQuery { state: Some(state), kind: None, plan: None, repository: None, cursor: None, limit: Some(limit) }
}

pub async fn dashboard(State(state): State<AppState>, session: UiSession) -> PageResult {
    let running = list_jobs(&state, &session, only(JobState::Running, 200)).await?;
    let queued = list_jobs(&state, &session, only(JobState::Queued, 200)).await?;
    let day_ago = Utc::now() - chrono::Duration::hours(24);
    let mut failures = Vec::new();
    for s in [JobState::Failed, JobState::Dead] {
        let page = list_jobs(&state, &session, only(s, 200)).await?;
        failures.extend(page.items.into_iter().filter(|j| j.finished.is_some_and(|f| f > day_ago)));
    }
    failures.sort_by_key(|j| std::cmp::Reverse(j.finished));
    let catalogue = Catalogue::load(&state, &session).await?;
    let names = catalogue.names();
    let backups = newest(&state, &session, JobKind::Backup, |j| j.source.clone()).await?;
    let verifies = newest(&state, &session, JobKind::Verify, |j| j.plan.clone()).await?;
    let sources = protection(&catalogue, &backups, &verifies);
    let unprotected: Vec<&Protection> = sources.iter().filter(|p| p.last_backup.is_none()).collect();
    let body = html! {
        h1 { "Dashboard" }
        section #running data-live-list {
            h2 { "Running now (" (running.items.len()) ")" }
            (job_table(&running.items, &names, "Nothing is running."))
        }
        section #failures {
            h2 { "Failed in the last 24 hours (" (failures.len()) ")" }
            (job_table(&failures, &names, "No job failed in the last 24 hours."))
        }
        section #queue {
            h2 { "Queued (" (queued.items.len()) ")" }
            (job_table(&queued.items, &names, "The queue is empty."))
        }
        section #protection {
            h2 { "Sources without a successful backup (" (unprotected.len()) " of " (sources.len()) ")" }
            @if unprotected.is_empty() {
                p.empty { "Every source has a successful backup. " a href="/sources" { "All sources →" } }
            } @else {
                (protection_table(&unprotected))
                p { a href="/sources" { "All sources →" } }
            }
        }
    };
    Ok(render("Dashboard", &session, body))
}

// ---- jobs ---------------------------------------------------------------

/// The job list's filters as a browser's form sends them (empty: any).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobsQuery {
    #[serde(default)]
    state: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    plan: String,
    #[serde(default)]
    repository: String,
    #[serde(default)]
    cursor: String,
}

impl JobsQuery {
    fn to_api(&self) -> Result<ListQuery, ApiError> {
        let state = match given(&self.state) {
            Some(s) => Some(JobState::parse(&s).ok_or_else(|| ApiError::invalid(format!("no job state {s:?}")))?),
            None => None,
        };
        let kind = match given(&self.kind) {
            Some(k) => Some(JobKind::parse(&k).ok_or_else(|| ApiError::invalid(format!("no job kind {k:?}")))?),
            None => None,
        };
        Ok(ListQuery {
            state,
            kind,
            plan: given(&self.plan),
            repository: given(&self.repository),
            cursor: given(&self.cursor),
            limit: Some(100),
        })
    }

    /// This query's string with `cursor` set to `next`.
    fn next(&self, next: &str) -> String {
        let q = [("state", &self.state), ("kind", &self.kind), ("plan", &self.plan), ("repository", &self.repository)];
        query_url("/jobs", &q, next)
    }
}

/// A filter field as a browser's form sends it: empty means any.
fn given(s: &str) -> Option<String> {
    (!s.trim().is_empty()).then(|| s.trim().to_string())
}

/// `path?k=v&…&cursor=next`, every value percent-encoded.
fn query_url(path: &str, fields: &[(&str, &String)], next: &str) -> String {
    let mut url = format!("{path}?");
    for (k, v) in fields {
        url.push_str(&format!("{k}={}&", urlencode(v)));
    }
    url.push_str(&format!("cursor={}", urlencode(next)));
    url
}

pub async fn jobs(State(state): State<AppState>, session: UiSession, Query(q): Query<JobsQuery>) -> PageResult {
    let page = list_jobs(&state, &session, q.to_api().map_err(fail)?).await?;
    let names = Names::load(&state, &session).await?;
    let body = html! {
        h1 { "Jobs" }
        form.filters method="get" action="/jobs" {
            label { "State "
                select name="state" {
                    option value="" { "any" }
                    @for s in JobState::ALL { option value=(s.as_str()) selected[q.state == s.as_str()] { (s.as_str()) } }
                }
            }
            label { "Kind "
                select name="kind" {
                    option value="" { "any" }
                    @for k in JobKind::ALL { option value=(k.as_str()) selected[q.kind == k.as_str()] { (k.as_str()) } }
                }
            }
            label { "Plan " input type="text" name="plan" value=(q.plan); }
            label { "Repository " input type="text" name="repository" value=(q.repository); }
            button type="submit" { "Filter" }
        }
        (job_table(&page.items, &names, "No job matches."))
        @if let Some(next) = &page.next_cursor {
            p { a.next href=(q.next(next)) { "Older jobs →" } }
        }
    };
    Ok(render("Jobs", &session, body))
}

/// Log lines and state changes of a job's events.
fn event_row(e: &JobEvent) -> Markup {
    let text = |key: &str| e.data.get(key).and_then(|v| v.as_str()).unwrap_or_default().to_string();
    html! {
        @match e.kind {
            EventKind::Log => {
                li class={ "log " (text("level")) } {
                    time { (when(&e.time)) } " " span.level { (text("level")) } " " span.message { (text("message")) }
                }
            }
            EventKind::State => {
                li.state-change {
                    time { (when(&e.time)) } " state " strong { (text("state")) }
                    " (attempt " (e.data.get("attempt").and_then(|v| v.as_u64()).unwrap_or(0)) ")"
                    @let error = text("error");
                    @if !error.is_empty() { ": " span.error { (error) } }
                }
            }
            EventKind::Progress => {}
        }
    }
}

pub async fn job(State(state): State<AppState>, session: UiSession, Path(id): Path<String>) -> PageResult {
    let Json(job) = jobs::get(State(state.clone()), session.caller(), Path(id.clone())).await.map_err(fail)?;
    let events_query = EventsQuery { after: None, limit: Some(10_000) };
    let Json(events) = jobs::events(State(state.clone()), session.caller(), Path(id.clone()), Query(events_query))
        .await
        .map_err(fail)?;
    let last = events.last().map(|e| e.id).unwrap_or(0);
    let names = Names::load(&state, &session).await?;
    let operator = session.may(Role::Operator);
    let finished = !matches!(job.state, JobState::Queued | JobState::Running);
    let body = html! {
        h1 { (job.kind.as_str()) " job " code { (job.id) } }
        section #job data-job=(job.id) data-after=(last) data-state=(job.state.as_str()) {
            dl.facts {
                dt { "State" } dd data-field="state" { (state_badge(job.state)) }
                @if let Some(reason) = &job.wait_reason { dt { "Waiting" } dd { (reason) } }
                dt { "Attempt" } dd { (job.attempt) " of " (job.max_attempts) }
                dt { "Plan" } dd { (names.of(job.plan.as_deref())) }
                dt { "Source" } dd { (names.of(job.source.as_deref())) }
                dt { "Repository" } dd { (names.of(Some(&job.repository))) " (region " (job.region) ")" }
                dt { "Created" } dd { (when(&job.created)) }
                @if let Some(t) = &job.started { dt { "Started" } dd { (when(t)) } }
                @if let Some(t) = &job.finished { dt { "Finished" } dd { (when(t)) } }
                @if let Some(e) = &job.error { dt { "Error" } dd.error role="alert" { (e) } }
            }
            (progress(job.progress.as_ref()))
            @if operator {
                div.actions {
                    @if !finished && !job.cancel_requested {
                        form.inline method="post" action={ (job_url(&job.id)) "/cancel" } {
                            input type="hidden" name="csrf" value=(session.session.csrf);
                            button.danger type="submit" name="cancel" { "Cancel" }
                        }
                    }
                    @if finished {
                        form.inline method="post" action={ (job_url(&job.id)) "/rerun" } {
                            input type="hidden" name="csrf" value=(session.session.csrf);
                            button type="submit" name="rerun" { "Run again" }
                        }
                    }
                }
            }
            @if let Some(result) = &job.result {
                h2 { "Result" }
                pre.result { (serde_json::to_string_pretty(result).unwrap_or_default()) }
            }
            h2 { "Log" }
            ol.events data-events {
                @for e in &events { (event_row(e)) }
            }
        }
    };
    Ok(render(&format!("Job {}", job.id), &session, body))
}

// ---- snapshots ----------------------------------------------------------

/// The snapshot list's filters as a browser's form sends them (empty: any).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotsQuery {
    #[serde(default)]
    repository: String,
    #[serde(default)]
    plan: String,
    #[serde(default)]
    host: String,
    #[serde(default)]
    cursor: String,
}

/// A number from a snapshot's summary.
fn summary_u64(info: &backstop_types::SnapshotInfo, key: &str) -> u64 {
    info.summary.get(key).and_then(|v| v.as_u64()).unwrap_or(0)
}

pub async fn snapshots(
    State(state): State<AppState>,
    session: UiSession,
    Query(q): Query<SnapshotsQuery>,
) -> PageResult {
    let api_q = SnapshotQuery {
        repository: given(&q.repository),
        plan: given(&q.plan),
        host: given(&q.host),
        cursor: given(&q.cursor),
        limit: Some(100),
    };
    let Json(page) =
        resources::list_snapshots(State(state.clone()), session.caller(), Query(api_q)).await.map_err(fail)?;
    let names = Names::load(&state, &session).await?;
    let body = html! {
        h1 { "Snapshots" }
        form.filters method="get" action="/snapshots" {
            label { "Repository " input type="text" name="repository" value=(q.repository); }
            label { "Plan " input type="text" name="plan" value=(q.plan); }
            label { "Host " input type="text" name="host" value=(q.host); }
            button type="submit" { "Filter" }
        }
        @if page.items.is_empty() {
            p.empty { "No snapshot matches." }
        } @else {
            table.snapshots {
                thead { tr { th { "Snapshot" } th { "Time" } th { "Host" } th { "Paths" } th { "Tags" } th { "Repository" } th { "Plan" } th { "Size" } th { "Added" } th { "Job" } } }
                tbody {
                    @for snap in &page.items {
                        tr data-snapshot=(snap.info.id) {
                            td title=(snap.info.id) { code { (snap.info.id.get(..8).unwrap_or(&snap.info.id)) } }
                            td { (when(&snap.info.time)) }
                            td { (snap.info.hostname) }
                            td { @for p in &snap.info.paths { (p) br; } }
                            td { (snap.info.tags.join(", ")) }
                            td { (names.of(Some(&snap.repository))) }
                            td { (names.of(snap.plan.as_deref())) }
                            td { (bytes(summary_u64(&snap.info, "bytes_total"))) }
                            td { (bytes(summary_u64(&snap.info, "bytes_added_stored"))) }
                            td { @if let Some(job) = &snap.job { a href=(job_url(job)) { "job" } } }
                        }
                    }
                }
            }
        }
        @if let Some(next) = &page.next_cursor {
            @let fields = [("repository", &q.repository), ("plan", &q.plan), ("host", &q.host)];
            p { a.next href=(query_url("/snapshots", &fields, next)) { "More snapshots →" } }
        }
    };
    Ok(render("Snapshots", &session, body))
}

// ---- plans --------------------------------------------------------------

pub async fn plans(State(state): State<AppState>, session: UiSession) -> PageResult {
    let catalogue = Catalogue::load(&state, &session).await?;
    let last = newest(&state, &session, JobKind::Backup, |j| j.plan.clone()).await?;
    let (all, names) = (&catalogue.plans, catalogue.names());
    let operator = session.may(Role::Operator);
    let body = html! {
        h1 { "Plans" }
        @if all.is_empty() {
            p.empty { "No plan yet: " code { "backstop plans put PLAN.json" } " makes one." }
        } @else {
            table.plans {
                thead { tr { th { "Plan" } th { "Source" } th { "Repository" } th { "Schedule" } th { "Next run" } th { "Last successful backup" } th { "" } } }
                tbody {
                    @for plan in all {
                        tr data-plan=(plan.name) {
                            td { (plan.name) @if !plan.enabled { " " span.state { "disabled" } } }
                            td { (names.of(Some(&plan.source))) }
                            td { (names.of(Some(&plan.repository))) }
                            td { (plan.schedule.as_deref().unwrap_or("on demand")) " (" (plan.timezone) ")" }
                            td { (plan.next_fire.as_ref().map(when).unwrap_or_else(|| "–".into())) }
                            td {
                                @if let Some(job) = last.get(&plan.id) {
                                    a href=(job_url(&job.id)) { (state_badge(job.state)) } " " (ago(&job.created))
                                } @else {
                                    span.error { "never succeeded" }
                                }
                            }
                            td {
                                @if operator {
                                    form.inline method="post" action={ "/plans/" (urlencode(&plan.id)) "/run" } {
                                        input type="hidden" name="csrf" value=(session.session.csrf);
                                        button type="submit" name="run" { "Run now" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(render("Plans", &session, body))
}

// ---- sources ------------------------------------------------------------

fn protection_table(rows: &[&Protection]) -> Markup {
    html! {
        table.sources {
            thead { tr { th { "Source" } th { "Kind" } th { "Host" } th { "Plans" } th { "Last successful backup" } th { "Last verify" } th { "Next run" } } }
            tbody {
                @for p in rows {
                    tr data-source=(p.source.name) class=[p.last_backup.is_none().then_some("unprotected")] {
                        td { (p.source.name) }
                        td { (p.source.kind.as_str()) }
                        td { (p.source.host.as_deref().unwrap_or("–")) }
                        td {
                            @if p.plans.is_empty() { span.error { "no plan" } }
                            @for (i, plan) in p.plans.iter().enumerate() { @if i > 0 { ", " } (plan.name) }
                        }
                        td {
                            @match p.last_backup {
                                Some(job) => { a href=(job_url(&job.id)) { (job.finished.as_ref().map(ago).unwrap_or_default()) } }
                                None => { strong.error { "never" } }
                            }
                        }
                        td {
                            @match p.last_verify {
                                Some(job) => { a href=(job_url(&job.id)) { (job.finished.as_ref().map(ago).unwrap_or_default()) } }
                                None => { "–" }
                            }
                        }
                        td { (p.next_run.as_ref().map(when).unwrap_or_else(|| "–".into())) }
                    }
                }
            }
        }
    }
}

pub async fn sources(State(state): State<AppState>, session: UiSession) -> PageResult {
    let catalogue = Catalogue::load(&state, &session).await?;
    let backups = newest(&state, &session, JobKind::Backup, |j| j.source.clone()).await?;
    let verifies = newest(&state, &session, JobKind::Verify, |j| j.plan.clone()).await?;
    let rows = protection(&catalogue, &backups, &verifies);
    let body = html! {
        h1 { "Sources" }
        @if rows.is_empty() {
            p.empty { "No source yet: " code { "backstop sources add NAME --path DIR" } " registers one." }
        } @else {
            (protection_table(&rows.iter().collect::<Vec<_>>()))
        }
    };
    Ok(render("Sources", &session, body))
}

pub async fn run_plan(
    State(state): State<AppState>,
    Path(id): Path<String>,
    UiAction(session): UiAction,
) -> PageResult {
    let (_, Json(job)) = plans::run(State(state), session.caller(), Path(id), HeaderMap::new()).await.map_err(fail)?;
    Ok(see_other(&job_url(&job.id)))
}

/// The running jobs as the API lists them, for the dashboard's live bars.
pub async fn running(State(state): State<AppState>, session: UiSession) -> ApiResult<Json<Page<Job>>> {
    jobs::list(State(state), session.caller(), Query(only(JobState::Running, 200))).await
}

pub async fn live(
    State(state): State<AppState>,
    session: UiSession,
    Path(id): Path<String>,
    Query(q): Query<EventsQuery>,
    headers: HeaderMap,
) -> impl IntoResponse {
    jobs::stream(State(state), session.caller(), Path(id), Query(q), headers).await
}

pub async fn cancel(State(state): State<AppState>, Path(id): Path<String>, UiAction(session): UiAction) -> PageResult {
    let Json(job) = jobs::cancel(State(state), session.caller(), Path(id)).await.map_err(fail)?;
    Ok(see_other(&job_url(&job.id)))
}

pub async fn rerun(State(state): State<AppState>, Path(id): Path<String>, UiAction(session): UiAction) -> PageResult {
    let Json(old) = jobs::get(State(state.clone()), session.caller(), Path(id)).await.map_err(fail)?;
    let spec = JobSpec {
        kind: old.kind,
        repository: if old.plan.is_some() { None } else { Some(old.repository.clone()) },
        source: if old.plan.is_some() { None } else { old.source.clone() },
        plan: old.plan.clone(),
        params: old.params.clone(),
        max_attempts: Some(old.max_attempts),
        deadline_seconds: old.deadline_seconds,
    };
    let (_, Json(job)) =
        jobs::create(State(state), session.caller(), HeaderMap::new(), Json(spec)).await.map_err(fail)?;
    Ok(see_other(&job_url(&job.id)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_read_as_people_write_them() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
        assert_eq!(seconds(59), "59 s");
        assert_eq!(seconds(61), "1 min 1 s");
        assert_eq!(seconds(7322), "2 h 2 min");
    }

    #[test]
    fn what_a_user_names_is_escaped() {
        let page = html! { td { ("<img src=x onerror=alert(1)>") } }.into_string();
        assert_eq!(page, "<td>&lt;img src=x onerror=alert(1)&gt;</td>");
    }
}
