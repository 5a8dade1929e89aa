//! The pages and forms. Each reads through the API's handlers as the
//! session's caller and renders what they return; maud escapes every
//! string it is given. This module holds what the pages share (the
//! layout, the formatting, what the session may see); each page or group
//! of forms is a module of its own.

mod admin;
mod dashboard;
mod jobs;
mod login;
mod plans;
mod repositories;
mod snapshots;
mod sources;

pub use admin::{audit, create_tenant, create_token, revoke_token, tenants, tokens};
pub use dashboard::{dashboard, running};
pub use jobs::{cancel, job, jobs, live, rerun};
pub use login::{login, login_form, logout};
pub use plans::{delete_plan, edit_plan, live_schedule, new_plan, plans, run_plan, save_plan, set_enabled};
pub use repositories::{maintain, register_repository, repositories};
pub use snapshots::{download, restore, restore_disk, snapshot, snapshots};
pub use sources::{delete_source, edit_source, new_source, save_source, sources, update_source};

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
use crate::handlers;
use crate::handlers::jobs::{EventsQuery, ListQuery};
use crate::handlers::resources::{RepositoryQuery, SnapshotQuery, SourceQuery};
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

/// Rows a list page shows at once.
const PAGE_ROWS: usize = 100;

/// `?page=N` (from 0) of a list shown a page at a time.
fn page_of<T>(items: &[T], page: usize) -> &[T] {
    let start = page.saturating_mul(PAGE_ROWS).min(items.len());
    &items[start..(start + PAGE_ROWS).min(items.len())]
}

/// Links to the pages before and after `page` of `total` rows; `url`
/// makes a page's address.
fn pager(page: usize, total: usize, url: impl Fn(usize) -> String) -> Markup {
    let pages = total.div_ceil(PAGE_ROWS).max(1);
    html! {
        @if pages > 1 {
            p.pager {
                @if page > 0 { a.prev href=(url(page - 1)) { "← earlier" } " " }
                "page " (page + 1) " of " (pages) " (" (total) ")"
                @if page + 1 < pages { " " a.next href=(url(page + 1)) { "later →" } }
            }
        }
    }
}

/// Submit a job of `kind` on `repository` through the API, and show its page.
async fn submit_job(
    state: &AppState,
    session: &UiSession,
    kind: JobKind,
    repository: String,
    params: &impl serde::Serialize,
) -> PageResult {
    let spec = JobSpec {
        kind,
        plan: None,
        repository: Some(repository),
        source: None,
        params: serde_json::to_value(params).map_err(|e| fail(ApiError::internal(e.to_string())))?,
        max_attempts: None,
        deadline_seconds: None,
    };
    let (_, Json(job)) = handlers::jobs::create(State(state.clone()), session.caller(), HeaderMap::new(), Json(spec))
        .await
        .map_err(fail)?;
    Ok(see_other(&job_url(&job.id)))
}

/// The value a form sent for `name` (empty if none).
fn sent<'a>(form: &'a [(String, String)], name: &str) -> &'a str {
    form.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).unwrap_or("")
}

/// A form page answered with the status of the error it shows, if any.
fn with_status(mut page: Response, error: Option<&ApiError>) -> Response {
    if let Some(e) = error {
        *page.status_mut() = e.status();
    }
    page
}

/// The message of `error` if it is about the form's `field`.
fn field_error<'a>(error: Option<&'a ApiError>, field: &str) -> Option<&'a str> {
    error.filter(|e| e.field.as_deref() == Some(field)).map(|e| e.message.as_str())
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
                            a href="/repositories" { "Repositories" }
                            a href="/snapshots" { "Snapshots" }
                            @if s.may(Role::Admin) {
                                a href="/admin/tokens" { "Tokens" }
                                a href="/admin/tenants" { "Tenants" }
                                a href="/admin/audit" { "Audit" }
                            }
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
        let (repositories, sources, plans) = tokio::join!(
            every(|cursor| {
                let q = RepositoryQuery { region: None, cursor, limit: Some(1000) };
                handlers::resources::list_repositories(State(state.clone()), session.caller(), Query(q))
            }),
            every(|cursor| {
                let q = SourceQuery { kind: None, host: None, cursor, limit: Some(1000) };
                handlers::resources::list_sources(State(state.clone()), session.caller(), Query(q))
            }),
            every(|cursor| {
                let q = handlers::plans::ListQuery { repository: None, cursor, limit: Some(1000) };
                handlers::plans::list(State(state.clone()), session.caller(), Query(q))
            }),
        );
        Ok(Catalogue { repositories: repositories?, sources: sources?, plans: plans? })
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

/// The newest succeeded job of `kind` of each source, plan or repository, by its id.
async fn newest(
    state: &AppState,
    session: &UiSession,
    kind: JobKind,
    per: backstop_types::Per,
) -> Result<HashMap<String, Job>, Response> {
    use backstop_types::Per;
    let q = handlers::jobs::LatestQuery { kind, per };
    let Json(jobs) = handlers::jobs::latest(State(state.clone()), session.caller(), Query(q)).await.map_err(fail)?;
    Ok(jobs
        .into_iter()
        .filter_map(|job| {
            let key = match per {
                Per::Source => job.source.clone(),
                Per::Plan => job.plan.clone(),
                Per::Repository => Some(job.repository.clone()),
            };
            key.map(|k| (k, job))
        })
        .collect())
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

async fn list_jobs(state: &AppState, session: &UiSession, q: ListQuery) -> Result<Page<Job>, Response> {
    let Json(page) = handlers::jobs::list(State(state.clone()), session.caller(), Query(q)).await.map_err(fail)?;
    Ok(page)
}

fn only(state: JobState, limit: u32) -> ListQuery {
    ListQuery {
        state: Some(state),
        kind: None,
        plan: None,
        repository: None,
        source: None,
        since: None,
        until: None,
        cursor: None,
        limit: Some(limit),
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
/// A number from a snapshot's summary.
fn summary_u64(info: &backstop_types::SnapshotInfo, key: &str) -> u64 {
    info.summary.get(key).and_then(|v| v.as_u64()).unwrap_or(0)
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
