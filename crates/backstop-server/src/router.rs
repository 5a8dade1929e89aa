//! Every route of the coordinator, in one table: the router is built from
//! it, and so is the OpenAPI document (`openapi.rs`), so neither can
//! forget one.

use axum::Router;
use axum::routing::{MethodRouter, delete, get, post};
use backstop_types::Role;

use crate::handlers::{jobs, ops, plans, resources, worker};
use crate::state::AppState;

/// A documented route.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub summary: &'static str,
    /// The least role that may call it (`None`: no token needed).
    pub role: Option<Role>,
    /// Schema names (see `openapi::schemas`) of the request and response bodies.
    pub request: Option<&'static str>,
    pub response: Option<&'static str>,
}

const fn r(
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    role: Option<Role>,
    request: Option<&'static str>,
    response: Option<&'static str>,
) -> Route {
    Route { method, path, summary, role, request, response }
}

const V: Option<Role> = Some(Role::Viewer);
const O: Option<Role> = Some(Role::Operator);
const A: Option<Role> = Some(Role::Admin);
const W: Option<Role> = Some(Role::Worker);

pub fn routes() -> Vec<(Route, MethodRouter<AppState>)> {
    vec![
        (r("get", "/healthz", "The process is up", None, None, None), get(ops::healthz)),
        (r("get", "/readyz", "The catalog answers", None, None, None), get(ops::readyz)),
        (r("get", "/metrics", "Prometheus metrics", None, None, None), get(ops::metrics)),
        (r("get", "/api/v1/openapi.json", "This document", None, None, None), get(ops::openapi)),
        (
            r(
                "get",
                "/api/v1/jobs",
                "List jobs (filters: state, kind, plan, repository; cursor, limit)",
                V,
                None,
                Some("JobPage"),
            ),
            get(jobs::list),
        ),
        (
            r(
                "post",
                "/api/v1/jobs",
                "Submit a job (Idempotency-Key header honoured)",
                O,
                Some("JobSpec"),
                Some("Job"),
            ),
            post(jobs::create),
        ),
        (r("get", "/api/v1/jobs/{id}", "One job", V, None, Some("Job")), get(jobs::get)),
        (r("post", "/api/v1/jobs/{id}/cancel", "Cancel a job", O, None, Some("Job")), post(jobs::cancel)),
        (
            r("get", "/api/v1/jobs/{id}/events", "A job's events after `after`", V, None, Some("JobEvents")),
            get(jobs::events),
        ),
        (
            r("get", "/api/v1/jobs/{id}/events/stream", "A job's events as Server-Sent Events, live", V, None, None),
            get(jobs::stream),
        ),
        (
            r("get", "/api/v1/plans", "List plans (filter: repository; cursor, limit)", V, None, Some("Plans")),
            get(plans::list),
        ),
        (
            r("post", "/api/v1/plans", "Create or replace a plan (by name)", O, Some("PlanSpec"), Some("Plan")),
            post(plans::put),
        ),
        (r("get", "/api/v1/plans/{id}", "One plan (id or name)", V, None, Some("Plan")), get(plans::get)),
        (r("delete", "/api/v1/plans/{id}", "Delete a plan", O, None, None), delete(plans::delete)),
        (
            r(
                "post",
                "/api/v1/plans/{id}/run",
                "Run the plan's backup now (Idempotency-Key honoured)",
                O,
                None,
                Some("Job"),
            ),
            post(plans::run),
        ),
        (
            r(
                "get",
                "/api/v1/repositories",
                "List repositories (filter: region; cursor, limit)",
                V,
                None,
                Some("Repositories"),
            ),
            get(resources::list_repositories),
        ),
        (
            r(
                "post",
                "/api/v1/repositories",
                "Register (and optionally create) a repository",
                O,
                Some("RepositorySpec"),
                Some("Repository"),
            ),
            post(resources::create_repository),
        ),
        (
            r("get", "/api/v1/repositories/{id}", "One repository", V, None, Some("Repository")),
            get(resources::get_repository),
        ),
        (
            r("delete", "/api/v1/repositories/{id}", "Forget a repository (its data stays)", O, None, None),
            delete(resources::delete_repository),
        ),
        (
            r("get", "/api/v1/sources", "List sources (filters: kind, host; cursor, limit)", V, None, Some("Sources")),
            get(resources::list_sources),
        ),
        (
            r("post", "/api/v1/sources", "Register a source", O, Some("SourceSpec"), Some("Source")),
            post(resources::create_source),
        ),
        (r("get", "/api/v1/sources/{id}", "One source", V, None, Some("Source")), get(resources::get_source)),
        (r("delete", "/api/v1/sources/{id}", "Delete a source", O, None, None), delete(resources::delete_source)),
        (
            r(
                "get",
                "/api/v1/snapshots",
                "Snapshots in the catalog, oldest first (filters: repository, plan, host; cursor, limit)",
                V,
                None,
                Some("Snapshots"),
            ),
            get(resources::list_snapshots),
        ),
        (
            r(
                "post",
                "/api/v1/catalog/rebuild",
                "Rebuild the catalog's snapshots from the repositories",
                O,
                None,
                None,
            ),
            post(resources::rebuild_catalog),
        ),
        (
            r("get", "/api/v1/tokens", "List tokens (cursor, limit)", A, None, Some("Tokens")),
            get(resources::list_tokens),
        ),
        (
            r(
                "post",
                "/api/v1/tokens",
                "Create a token (its secret is shown once)",
                A,
                Some("TokenSpec"),
                Some("NewToken"),
            ),
            post(resources::create_token),
        ),
        (r("delete", "/api/v1/tokens/{id}", "Revoke a token", A, None, None), delete(resources::revoke_token)),
        (
            r("get", "/api/v1/tenants", "List tenants (cursor, limit)", A, None, Some("Tenants")),
            get(resources::list_tenants),
        ),
        (
            r(
                "post",
                "/api/v1/tenants",
                "Create a tenant (system administrators)",
                A,
                Some("TenantSpec"),
                Some("Tenant"),
            ),
            post(resources::create_tenant),
        ),
        (
            r("get", "/api/v1/audit", "The audit trail, newest first", A, None, Some("AuditPage")),
            get(resources::list_audit),
        ),
        (
            r(
                "post",
                "/api/v1/worker/claim",
                "Claim a job (long-poll; 204 when none)",
                W,
                Some("ClaimRequest"),
                Some("Claim"),
            ),
            post(worker::claim),
        ),
        (
            r(
                "post",
                "/api/v1/worker/jobs/{id}/heartbeat",
                "Extend a lease, report progress and log lines (409: stale attempt)",
                W,
                Some("Heartbeat"),
                Some("HeartbeatReply"),
            ),
            post(worker::heartbeat),
        ),
        (
            r(
                "post",
                "/api/v1/worker/jobs/{id}/complete",
                "Report how an attempt ended (409: stale attempt)",
                W,
                Some("Completion"),
                Some("Job"),
            ),
            post(worker::complete),
        ),
    ]
}

pub fn router(state: AppState) -> Router {
    let mut app = Router::new();
    for (route, handler) in routes() {
        app = app.route(route.path, handler);
    }
    app.fallback(|| async {
        crate::error::ApiError::not_found("no such endpoint; see /api/v1/openapi.json for the API")
    })
    .with_state(state)
}
