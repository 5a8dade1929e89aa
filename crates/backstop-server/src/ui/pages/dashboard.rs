//! The dashboard: what runs, what failed, what waits, what is unprotected.

use super::repositories::{growth_chart, savings, stored_size};
use super::sources::protection_table;
use backstop_types::Per;

use super::*;

/// Rows of each list the dashboard shows; the rest are a link away.
const SHOWN: usize = 20;

pub async fn dashboard(State(state): State<AppState>, session: UiSession) -> PageResult {
    // Every list the page shows, asked for at once: they do not depend on
    // each other, and PostgreSQL answers them on several connections (on
    // SQLite's one they still go one after another).
    let (state, session) = (&state, &session);
    let (running, queued, failed, dead, catalogue, backups, verifies, checks, usage, regions) = tokio::join!(
        list_jobs(state, session, only(JobState::Running, 200)),
        list_jobs(state, session, only(JobState::Queued, 200)),
        list_jobs(state, session, only(JobState::Failed, 200)),
        list_jobs(state, session, only(JobState::Dead, 200)),
        Catalogue::load(state, session),
        newest(state, session, JobKind::Backup, Per::Source),
        newest(state, session, JobKind::Verify, Per::Plan),
        newest(state, session, JobKind::Check, Per::Repository),
        handlers::resources::repository_usage(State(state.clone()), session.caller()),
        handlers::jobs::regions(State(state.clone()), session.caller()),
    );
    let (running, queued, catalogue, backups, verifies, checks) =
        (running?, queued?, catalogue?, backups?, verifies?, checks?);
    let (Json(usage), Json(regions)) = (usage.map_err(fail)?, regions.map_err(fail)?);
    let day_ago = Utc::now() - chrono::Duration::hours(24);
    let (mut failures, mut failed_more) = (Vec::new(), false);
    for page in [failed?, dead?] {
        failed_more |=
            page.next_cursor.is_some() && page.items.last().is_some_and(|j| j.finished.is_some_and(|f| f > day_ago));
        failures.extend(page.items.into_iter().filter(|j| j.finished.is_some_and(|f| f > day_ago)));
    }
    failures.sort_by_key(|j| std::cmp::Reverse(j.finished));
    let names = catalogue.names();
    let sources = protection(&catalogue, &backups, &verifies);
    let unprotected: Vec<&Protection> = sources.iter().filter(|p| p.last_backup.is_none()).collect();
    let body = html! {
        h1 { "Dashboard" }
        section #running data-live-list {
            h2 { "Running now (" (running.items.len()) ")" }
            (job_table(&running.items, &names, "Nothing is running."))
        }
        section #failures {
            h2 { "Failed in the last 24 hours (" (failures.len()) @if failed_more { "+" } ")" }
            (job_table(&failures[..failures.len().min(SHOWN)], &names, "No job failed in the last 24 hours."))
            @if failures.len() > SHOWN || failed_more { p { a href="/jobs?state=failed" { "All failed jobs →" } } }
        }
        section #queue {
            h2 { "Queued (" (queued.items.len()) @if queued.next_cursor.is_some() { "+" } ")" }
            (job_table(&queued.items[..queued.items.len().min(SHOWN)], &names, "The queue is empty."))
            @if queued.items.len() > SHOWN { p { a href="/jobs?state=queued" { "The whole queue →" } } }
        }
        section #protection {
            h2 { "Sources without a successful backup (" (unprotected.len()) " of " (sources.len()) ")" }
            @if unprotected.is_empty() {
                p.empty { "Every source has a successful backup. " a href="/sources" { "All sources →" } }
            } @else {
                (protection_table(&unprotected[..unprotected.len().min(SHOWN)], None))
                p { a href="/sources" { "All sources →" } }
            }
        }
        section #repositories {
            h2 { "Repositories (" (usage.len()) ")" }
            @if usage.is_empty() {
                p.empty { "No repository yet. " a href="/repositories" { "Register one →" } }
            } @else {
                table.usage {
                    thead { tr { th { "Repository" } th { "Snapshots" } th { "On its storage (last check)" } th { "Stored by its snapshots' backups" } th { "Saved by dedup and compression" } th { "Growth" } } }
                    tbody {
                        @for u in &usage {
                            tr data-repository=(names.of(Some(&u.repository))) {
                                td { a href="/repositories" { (names.of(Some(&u.repository))) } }
                                td { (u.snapshots) }
                                td { (checks.get(&u.repository).and_then(stored_size).map(bytes).unwrap_or_else(|| "–".into())) }
                                td { (bytes(u.stored_bytes)) }
                                td { (savings(u.stored_bytes, u.logical_bytes)) }
                                td { (growth_chart(&u.growth)) }
                            }
                        }
                    }
                }
            }
        }
        section #workers {
            h2 { "Workers by region" }
            @if regions.is_empty() {
                p.empty { "No worker has asked for work in the last two minutes." }
            } @else {
                table.regions {
                    thead { tr { th { "Region" } th { "Workers" } th { "Running" } th { "Queued" } } }
                    tbody {
                        @for r in &regions {
                            tr data-region=(r.region) class=[(r.workers == 0 && r.queued > 0).then_some("unprotected")] {
                                td { (r.region) }
                                td { (r.workers) @if r.workers == 0 { " " span.error { "none connected" } } }
                                td { (r.running) }
                                td { (r.queued) }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(render("Dashboard", session, body))
}

/// The running jobs as the API lists them, for the dashboard's live bars.
pub async fn running(State(state): State<AppState>, session: UiSession) -> ApiResult<Json<Page<Job>>> {
    handlers::jobs::list(State(state), session.caller(), Query(only(JobState::Running, 200))).await
}
