//! Every route of the API, in one table: the router is built from it, and
//! so is the OpenAPI document (`openapi.rs`), so neither can forget one
//! (the web UI's pages, which call these routes' handlers, are listed in
//! `ui/mod.rs`). Each route names the types of its query, body and answer,
//! whose JSON Schemas the document shows, and the statuses it answers
//! with.

use axum::Router;
use axum::routing::{MethodRouter, delete, get, post, put};
use backstop_types::*;
use schemars::{JsonSchema, Schema, SchemaGenerator};

use crate::handlers::{jobs, ops, plans, resources, snapshots, worker};
use crate::state::AppState;

/// The JSON Schema of a type, as the document refers to it.
pub type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

fn schema<T: JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    g.subschema_for::<T>()
}

/// The schema itself, not a reference to it (a query's, whose properties
/// become parameters).
fn inline<T: JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    T::json_schema(g)
}

/// What a route answers with when it succeeds.
#[derive(Clone, Copy)]
pub enum Answer {
    Json(SchemaFn),
    /// `text/plain` (health, metrics).
    Text,
    /// `text/event-stream`.
    Events,
    /// `application/octet-stream` (a file).
    Bytes,
    /// No body (204).
    Empty,
}

/// A documented route.
#[derive(Clone, Copy)]
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub summary: &'static str,
    /// The least role that may call it (`None`: no token needed).
    pub role: Option<Role>,
    pub query: Option<SchemaFn>,
    pub body: Option<SchemaFn>,
    pub answer: Answer,
    /// The status of success.
    pub status: u16,
    /// Other statuses it answers with, beyond those every route of its
    /// shape has (see [`Route::statuses`]).
    pub also: &'static [u16],
    /// Takes an `Idempotency-Key` header.
    pub keyed: bool,
}

fn route(method: &'static str, path: &'static str, summary: &'static str) -> Route {
    Route {
        method,
        path,
        summary,
        role: None,
        query: None,
        body: None,
        answer: Answer::Text,
        status: 200,
        also: &[],
        keyed: false,
    }
}

impl Route {
    fn role(mut self, role: Role) -> Route {
        self.role = Some(role);
        self
    }

    fn query<T: JsonSchema>(mut self) -> Route {
        self.query = Some(inline::<T>);
        self
    }

    fn body<T: JsonSchema>(mut self) -> Route {
        self.body = Some(schema::<T>);
        self
    }

    fn json<T: JsonSchema>(mut self) -> Route {
        self.answer = Answer::Json(schema::<T>);
        self
    }

    fn answer(mut self, answer: Answer, status: u16) -> Route {
        self.answer = answer;
        self.status = status;
        self
    }

    fn also(mut self, also: &'static [u16]) -> Route {
        self.also = also;
        self
    }

    fn keyed(mut self) -> Route {
        self.keyed = true;
        self
    }

    /// Every status this route answers with: its success, its `also`, and
    /// what its shape brings — a token (401, 403), a body (400, 413, 415),
    /// a query (400), a path parameter (404), the catalog being busy (503).
    pub fn statuses(&self) -> Vec<u16> {
        let mut out = vec![self.status];
        out.extend(self.also);
        if self.role.is_some() {
            out.extend([401, 403, 503]);
        }
        if self.body.is_some() {
            out.extend([400, 413, 415]);
        }
        if self.query.is_some() || self.keyed {
            out.push(400);
        }
        if self.path.contains('{') {
            out.push(404);
        }
        out.sort();
        out.dedup();
        out
    }
}

const V: Role = Role::Viewer;
const O: Role = Role::Operator;
const A: Role = Role::Admin;
const W: Role = Role::Worker;

pub fn routes() -> Vec<(Route, MethodRouter<AppState>)> {
    use crate::handlers::PageQuery;
    use Answer::{Empty, Events, Text};
    vec![
        (route("get", "/healthz", "The process is up"), get(ops::healthz)),
        (route("get", "/readyz", "The catalog answers").also(&[503]), get(ops::readyz)),
        (
            route("get", "/metrics", "Prometheus metrics (a tenant's token: its own job counts)")
                .role(V)
                .answer(Text, 200),
            get(ops::metrics),
        ),
        (
            route("get", "/api/v1/openapi.json", "This document").json::<serde_json::Map<String, serde_json::Value>>(),
            get(ops::openapi),
        ),
        (
            route(
                "get",
                "/api/v1/jobs",
                "List jobs, newest first (filters: state, kind, plan, repository, source, creation time)",
            )
            .role(V)
            .query::<jobs::ListQuery>()
            .json::<Page<Job>>()
            .also(&[404]),
            get(jobs::list),
        ),
        (
            route("post", "/api/v1/jobs", "Submit a job (201; 200: the job an Idempotency-Key made before)")
                .role(O)
                .body::<JobSpec>()
                .answer(Answer::Json(schema::<Job>), 201)
                .also(&[200, 404, 409, 422])
                .keyed(),
            post(jobs::create),
        ),
        (
            route(
                "get",
                "/api/v1/jobs/latest",
                "The last job of a kind that succeeded for each source, plan or repository",
            )
            .role(V)
            .query::<jobs::LatestQuery>()
            .json::<Vec<Job>>(),
            get(jobs::latest),
        ),
        (route("get", "/api/v1/jobs/{id}", "One job").role(V).json::<Job>(), get(jobs::get)),
        (
            route("post", "/api/v1/jobs/{id}/cancel", "Cancel a job").role(O).json::<Job>().also(&[409]),
            post(jobs::cancel),
        ),
        (
            route("get", "/api/v1/jobs/{id}/events", "A job's events after `after`")
                .role(V)
                .query::<jobs::EventsQuery>()
                .json::<Vec<JobEvent>>(),
            get(jobs::events),
        ),
        (
            route("get", "/api/v1/jobs/{id}/events/stream", "A job's events as Server-Sent Events, live")
                .role(V)
                .query::<jobs::EventsQuery>()
                .answer(Events, 200)
                .also(&[429]),
            get(jobs::stream),
        ),
        (
            route("get", "/api/v1/plans", "List plans (filter: repository)")
                .role(V)
                .query::<plans::ListQuery>()
                .json::<Page<Plan>>()
                .also(&[404]),
            get(plans::list),
        ),
        (
            route("post", "/api/v1/plans", "Create or replace a plan (by name)")
                .role(O)
                .body::<PlanSpec>()
                .json::<Plan>()
                .also(&[404, 409]),
            post(plans::put),
        ),
        (route("get", "/api/v1/plans/{id}", "One plan (id or name)").role(V).json::<Plan>(), get(plans::get)),
        (
            route("delete", "/api/v1/plans/{id}", "Delete a plan").role(O).answer(Empty, 204).also(&[409]),
            delete(plans::delete),
        ),
        (
            route("post", "/api/v1/plans/{id}/run", "Run the plan's backup now (201; 200: an Idempotency-Key's job)")
                .role(O)
                .answer(Answer::Json(schema::<Job>), 201)
                .also(&[200, 422])
                .keyed(),
            post(plans::run),
        ),
        (
            route("get", "/api/v1/regions", "Worker pools by region: workers seen, jobs running and queued")
                .role(V)
                .json::<Vec<RegionPool>>(),
            get(jobs::regions),
        ),
        (
            route("get", "/api/v1/schedule", "When a cron schedule fires next (a plan's form previews it)")
                .role(V)
                .query::<plans::ScheduleQuery>()
                .json::<ScheduleFires>(),
            get(plans::schedule),
        ),
        (
            route("get", "/api/v1/repositories", "List repositories (filter: region)")
                .role(V)
                .query::<resources::RepositoryQuery>()
                .json::<Page<Repository>>(),
            get(resources::list_repositories),
        ),
        (
            route("post", "/api/v1/repositories", "Register (and with init, create) a repository")
                .role(O)
                .body::<RepositorySpec>()
                .answer(Answer::Json(schema::<Repository>), 201)
                .also(&[409]),
            post(resources::create_repository),
        ),
        (
            route(
                "get",
                "/api/v1/repositories/usage",
                "What each repository's snapshots hold and stored, and how it grew",
            )
            .role(V)
            .json::<Vec<RepositoryUsage>>(),
            get(resources::repository_usage),
        ),
        (
            route("get", "/api/v1/repositories/{id}", "One repository").role(V).json::<Repository>(),
            get(resources::get_repository),
        ),
        (
            route("delete", "/api/v1/repositories/{id}", "Forget a repository (its data stays)")
                .role(O)
                .answer(Empty, 204)
                .also(&[409]),
            delete(resources::delete_repository),
        ),
        (
            route("get", "/api/v1/sources", "List sources (filters: kind, host)")
                .role(V)
                .query::<resources::SourceQuery>()
                .json::<Page<Source>>(),
            get(resources::list_sources),
        ),
        (
            route("post", "/api/v1/sources", "Register a source")
                .role(O)
                .body::<SourceSpec>()
                .answer(Answer::Json(schema::<Source>), 201)
                .also(&[409]),
            post(resources::create_source),
        ),
        (route("get", "/api/v1/sources/{id}", "One source").role(V).json::<Source>(), get(resources::get_source)),
        (
            route("put", "/api/v1/sources/{id}", "Change a source's host and configuration (secrets: when given)")
                .role(O)
                .body::<SourceUpdate>()
                .json::<Source>(),
            put(resources::update_source),
        ),
        (
            route("delete", "/api/v1/sources/{id}", "Delete a source").role(O).answer(Empty, 204).also(&[409]),
            delete(resources::delete_source),
        ),
        (
            route(
                "get",
                "/api/v1/snapshots",
                "Snapshots in the catalog, oldest first (filters: repository, plan, host)",
            )
            .role(V)
            .query::<resources::SnapshotQuery>()
            .json::<Page<Snapshot>>()
            .also(&[404]),
            get(resources::list_snapshots),
        ),
        (
            route("get", "/api/v1/snapshots/{id}", "One snapshot of the catalog").role(V).json::<Snapshot>(),
            get(snapshots::get),
        ),
        (
            route("get", "/api/v1/snapshots/{id}/tree", "A directory of a snapshot (read by the coordinator)")
                .role(V)
                .query::<snapshots::PathQuery>()
                .json::<SnapshotDir>()
                .also(&[404, 503]),
            get(snapshots::tree),
        ),
        (
            route(
                "get",
                "/api/v1/snapshots/{id}/file",
                "A file of a snapshot, as an attachment (operators: it is data)",
            )
            .role(O)
            .query::<snapshots::PathQuery>()
            .answer(Answer::Bytes, 200)
            .also(&[404, 503]),
            get(snapshots::file),
        ),
        (
            route("post", "/api/v1/catalog/rebuild", "Rebuild the catalog's snapshots from the repositories")
                .role(O)
                .json::<CatalogRebuild>(),
            post(resources::rebuild_catalog),
        ),
        (
            route("get", "/api/v1/tokens", "List tokens").role(A).query::<PageQuery>().json::<Page<Token>>(),
            get(resources::list_tokens),
        ),
        (
            route("post", "/api/v1/tokens", "Create a token (its secret is shown once)")
                .role(A)
                .body::<TokenSpec>()
                .answer(Answer::Json(schema::<NewToken>), 201)
                .also(&[404]),
            post(resources::create_token),
        ),
        (
            route("delete", "/api/v1/tokens/{id}", "Revoke a token (409: the system tenant's last admin token)")
                .role(A)
                .answer(Empty, 204)
                .also(&[409]),
            delete(resources::revoke_token),
        ),
        (
            route("get", "/api/v1/tenants", "List tenants").role(A).query::<PageQuery>().json::<Page<Tenant>>(),
            get(resources::list_tenants),
        ),
        (
            route("post", "/api/v1/tenants", "Create a tenant (201) or change one (200): system administrators")
                .role(A)
                .body::<TenantSpec>()
                .answer(Answer::Json(schema::<Tenant>), 201)
                .also(&[200]),
            post(resources::create_tenant),
        ),
        (
            route("get", "/api/v1/audit", "The audit trail, newest first")
                .role(A)
                .query::<resources::AuditQuery>()
                .json::<Page<AuditEvent>>(),
            get(resources::list_audit),
        ),
        (
            route("post", "/api/v1/worker/claim", "Claim a job (long-poll; 204 when none)")
                .role(W)
                .body::<ClaimRequest>()
                .json::<Claim>()
                .also(&[204]),
            post(worker::claim),
        ),
        (
            route("post", "/api/v1/worker/jobs/{id}/heartbeat", "Extend a lease, report progress and log lines")
                .role(W)
                .body::<Heartbeat>()
                .json::<HeartbeatReply>()
                .also(&[409]),
            post(worker::heartbeat),
        ),
        (
            route("post", "/api/v1/worker/jobs/{id}/complete", "Report how an attempt ended")
                .role(W)
                .body::<Completion>()
                .json::<Job>()
                .also(&[409]),
            post(worker::complete),
        ),
    ]
}

pub fn router(state: AppState) -> Router {
    // The web UI's pages (`ui`), then the API's routes.
    let mut app = crate::ui::router();
    for (route, handler) in routes() {
        app = app.route(route.path, handler);
    }
    app.method_not_allowed_fallback(|| async {
        crate::error::ApiError::new(
            backstop_types::ErrorCode::MethodNotAllowed,
            "this endpoint does not take that method; see /api/v1/openapi.json",
        )
    })
    .fallback(|| async { crate::error::ApiError::not_found("no such endpoint; see /api/v1/openapi.json for the API") })
    .with_state(state)
}
