//! The job list, a job's page, and what can be done to a job.

use super::*;

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
    source: String,
    /// `YYYY-MM-DDTHH:MM` in UTC, as a `datetime-local` input sends it.
    #[serde(default)]
    since: String,
    #[serde(default)]
    until: String,
    #[serde(default)]
    cursor: String,
}

/// A `datetime-local` field's value, read as UTC.
fn utc_time(field: &str, text: &str) -> Result<Option<DateTime<Utc>>, ApiError> {
    let Some(text) = given(text) else { return Ok(None) };
    let formats = ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S"];
    let parsed = formats.iter().find_map(|f| chrono::NaiveDateTime::parse_from_str(&text, f).ok());
    match parsed {
        Some(t) => Ok(Some(t.and_utc())),
        None => Err(ApiError::invalid(format!("{text:?} is not a time (YYYY-MM-DD HH:MM, UTC)")).on(field)),
    }
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
            source: given(&self.source),
            since: utc_time("since", &self.since)?,
            until: utc_time("until", &self.until)?,
            cursor: given(&self.cursor),
            limit: Some(100),
        })
    }

    /// This query's string with `cursor` set to `next`.
    fn next(&self, next: &str) -> String {
        let q = [
            ("state", &self.state),
            ("kind", &self.kind),
            ("plan", &self.plan),
            ("repository", &self.repository),
            ("source", &self.source),
            ("since", &self.since),
            ("until", &self.until),
        ];
        query_url("/jobs", &q, next)
    }
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
            label { "Source " input type="text" name="source" value=(q.source); }
            label { "Created since (UTC) " input type="datetime-local" name="since" value=(q.since); }
            label { "until " input type="datetime-local" name="until" value=(q.until); }
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
    let Json(job) =
        handlers::jobs::get(State(state.clone()), session.caller(), Path(id.clone())).await.map_err(fail)?;
    let events_query = EventsQuery { after: None, limit: Some(10_000) };
    let Json(events) =
        handlers::jobs::events(State(state.clone()), session.caller(), Path(id.clone()), Query(events_query))
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

pub async fn live(
    State(state): State<AppState>,
    session: UiSession,
    Path(id): Path<String>,
    Query(q): Query<EventsQuery>,
    headers: HeaderMap,
) -> impl IntoResponse {
    handlers::jobs::stream(State(state), session.caller(), Path(id), Query(q), headers).await
}

pub async fn cancel(State(state): State<AppState>, Path(id): Path<String>, UiAction(session): UiAction) -> PageResult {
    let Json(job) = handlers::jobs::cancel(State(state), session.caller(), Path(id)).await.map_err(fail)?;
    Ok(see_other(&job_url(&job.id)))
}

pub async fn rerun(State(state): State<AppState>, Path(id): Path<String>, UiAction(session): UiAction) -> PageResult {
    let Json(old) = handlers::jobs::get(State(state.clone()), session.caller(), Path(id)).await.map_err(fail)?;
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
        handlers::jobs::create(State(state), session.caller(), HeaderMap::new(), Json(spec)).await.map_err(fail)?;
    Ok(see_other(&job_url(&job.id)))
}
