//! The OpenAPI 3.1 document (`/api/v1/openapi.json`), built from the route
//! table and from example values of the API's types: each schema is the
//! shape of a serialised example, so a field added to a type shows up
//! here without anyone remembering to document it.

use backstop_types::*;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use crate::router::routes;

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_780_000_000, 0).unwrap_or_default()
}

fn example_job() -> Job {
    Job {
        id: "01930c3e-0000-7000-8000-000000000000".into(),
        tenant: "acme".into(),
        kind: JobKind::Backup,
        state: JobState::Queued,
        wait_reason: Some("waiting for a worker of region default".into()),
        plan: Some("01930c3e-0000-7000-8000-000000000001".into()),
        source: Some("01930c3e-0000-7000-8000-000000000002".into()),
        repository: "01930c3e-0000-7000-8000-000000000003".into(),
        region: "default".into(),
        host: Some("db1".into()),
        params: json!({}),
        attempt: 0,
        max_attempts: 3,
        lease_owner: Some("worker-1".into()),
        lease_expires: Some(t0()),
        not_before: t0(),
        deadline_seconds: Some(3600),
        idempotency_key: Some("api:req-1".into()),
        parent: Some("01930c3e-0000-7000-8000-000000000004".into()),
        step: Some("verify".into()),
        cancel_requested: false,
        created: t0(),
        started: Some(t0()),
        finished: Some(t0()),
        progress: Some(JobProgress { eta_seconds: Some(1), ..Default::default() }),
        result: Some(json!({})),
        error: Some("".into()),
    }
}

fn example_plan_spec() -> PlanSpec {
    PlanSpec {
        name: "nightly".into(),
        source: "home".into(),
        repository: "local".into(),
        schedule: Some("30 2 * * *".into()),
        timezone: Some("Europe/Berlin".into()),
        jitter_seconds: 300,
        misfire: Misfire::RunOnce,
        overlap: Overlap::Skip,
        retention: Retention { keep_last: Some(7), keep_daily: Some(14), ..Default::default() },
        chain: Chain { verify_percent: 5, retention: true },
        tags: vec!["nightly".into()],
        max_attempts: Some(3),
        deadline_seconds: Some(7200),
        enabled: true,
    }
}

fn example_plan() -> Plan {
    let s = example_plan_spec();
    Plan {
        id: "01930c3e-0000-7000-8000-000000000001".into(),
        tenant: "acme".into(),
        name: s.name,
        source: s.source,
        repository: s.repository,
        schedule: s.schedule,
        timezone: "Europe/Berlin".into(),
        jitter_seconds: 300,
        misfire: s.misfire,
        overlap: s.overlap,
        retention: s.retention,
        chain: s.chain,
        tags: s.tags,
        max_attempts: 3,
        deadline_seconds: Some(7200),
        enabled: true,
        next_fire: Some(t0()),
        created: t0(),
    }
}

fn example_repository() -> Repository {
    Repository {
        id: "r".into(),
        tenant: "acme".into(),
        name: "local".into(),
        location: "/var/lib/backstop/repository".into(),
        region: "default".into(),
        options: vec!["endpoint".into()],
        max_concurrent: 4,
        created: t0(),
    }
}

fn example_source() -> Source {
    Source {
        id: "s".into(),
        tenant: "acme".into(),
        name: "home".into(),
        kind: "fs".into(),
        host: Some("db1".into()),
        config: json!({"paths": ["/home"]}),
        created: t0(),
    }
}

fn example_snapshot() -> Snapshot {
    Snapshot {
        repository: "r".into(),
        tenant: "acme".into(),
        plan: Some("p".into()),
        job: Some("j".into()),
        info: SnapshotInfo {
            id: "ab".into(),
            time: t0(),
            hostname: "db1".into(),
            paths: vec!["/home".into()],
            tags: vec!["nightly".into()],
            summary: json!({}),
        },
    }
}

fn example_token() -> Token {
    Token {
        id: "t".into(),
        tenant: "acme".into(),
        name: "ci".into(),
        role: Role::Operator,
        created: t0(),
        last_used: Some(t0()),
    }
}

fn example_event() -> JobEvent {
    JobEvent { id: 1, job: "j".into(), time: t0(), attempt: 1, kind: EventKind::Log, data: json!({}) }
}

fn example_claim() -> Claim {
    Claim {
        job: example_job(),
        attempt: 1,
        lease_seconds: 60,
        repository: RepositoryAccess {
            id: "r".into(),
            location: "/repo".into(),
            password: "…".into(),
            options: vec![],
        },
        source: Some(SourceAccess {
            id: "s".into(),
            kind: "fs".into(),
            host: Some("db1".into()),
            config: json!({}),
            secrets: json!({}),
        }),
        retention: Some(Retention::default()),
        reach: Reach::any(),
    }
}

fn examples() -> Vec<(&'static str, Value)> {
    let v = |x: &dyn erased::Ser| x.value();
    vec![
        ("Job", v(&example_job())),
        ("JobPage", v(&Page { items: vec![example_job()], next_cursor: Some("c".into()) })),
        (
            "JobSpec",
            v(&JobSpec {
                kind: JobKind::Backup,
                plan: Some("nightly".into()),
                repository: Some("local".into()),
                source: Some("home".into()),
                params: json!({}),
                max_attempts: Some(3),
                deadline_seconds: Some(3600),
            }),
        ),
        ("JobEvents", v(&vec![example_event()])),
        ("Plan", v(&example_plan())),
        ("Plans", v(&Page { items: vec![example_plan()], next_cursor: Some("c".into()) })),
        ("PlanSpec", v(&example_plan_spec())),
        ("Repository", v(&example_repository())),
        ("Repositories", v(&Page { items: vec![example_repository()], next_cursor: Some("c".into()) })),
        (
            "RepositorySpec",
            v(&RepositorySpec {
                name: "offsite".into(),
                location: "s3://bucket/prefix".into(),
                region: "eu".into(),
                password: "…".into(),
                options: vec![("endpoint".into(), "https://s3.example".into())],
                max_concurrent: Some(4),
                init: true,
            }),
        ),
        ("Source", v(&example_source())),
        ("Sources", v(&Page { items: vec![example_source()], next_cursor: Some("c".into()) })),
        (
            "SourceSpec",
            v(&SourceSpec {
                name: "home".into(),
                kind: "fs".into(),
                host: Some("db1".into()),
                config: json!({"paths": ["/home"], "excludes": ["*.tmp"]}),
                secrets: json!({}),
            }),
        ),
        ("Snapshots", v(&Page { items: vec![example_snapshot()], next_cursor: Some("c".into()) })),
        ("Tokens", v(&Page { items: vec![example_token()], next_cursor: Some("c".into()) })),
        ("TokenSpec", v(&TokenSpec { name: "ci".into(), role: Role::Operator, tenant: Some("acme".into()) })),
        ("NewToken", v(&NewToken { token: example_token(), secret: "bst_…".into() })),
        (
            "Tenants",
            v(&Page {
                items: vec![Tenant { id: "acme".into(), name: "Acme".into(), allow_net: vec![], created: t0() }],
                next_cursor: Some("c".into()),
            }),
        ),
        ("Tenant", v(&Tenant { id: "acme".into(), name: "Acme".into(), allow_net: vec![], created: t0() })),
        ("TenantSpec", v(&TenantSpec { id: "acme".into(), name: Some("Acme".into()), allow_net: Some(vec![]) })),
        (
            "AuditPage",
            v(&Page {
                items: vec![AuditEvent {
                    id: 1,
                    time: t0(),
                    tenant: "acme".into(),
                    actor: "token/t".into(),
                    action: "plan.put".into(),
                    object: "plan/nightly".into(),
                    detail: json!({}),
                }],
                next_cursor: Some("1".into()),
            }),
        ),
        ("ClaimRequest", v(&ClaimRequest { worker: "w".into(), region: "default".into(), wait_seconds: 20 })),
        ("Claim", v(&example_claim())),
        (
            "Heartbeat",
            v(&Heartbeat {
                attempt: 1,
                progress: Some(JobProgress::default()),
                logs: vec![LogLine { level: LogLevel::Info, message: "…".into() }],
            }),
        ),
        ("HeartbeatReply", v(&HeartbeatReply { cancel: false, lease_expires: t0() })),
        (
            "Completion",
            v(&Completion {
                attempt: 1,
                outcome: Outcome::Failed { error: "…".into(), retryable: true },
                logs: vec![],
            }),
        ),
        ("Error", v(&ErrorBody { error: ErrorDetail { code: "not_found".into(), message: "job x not found".into() } })),
    ]
}

mod erased {
    pub trait Ser {
        fn value(&self) -> serde_json::Value;
    }
    impl<T: serde::Serialize> Ser for T {
        fn value(&self) -> serde_json::Value {
            serde_json::to_value(self).unwrap_or_default()
        }
    }
}

/// A JSON Schema describing the shape of `v`.
fn schema_of(v: &Value) -> Value {
    match v {
        Value::Null => json!({}),
        Value::Bool(_) => json!({"type": "boolean"}),
        Value::Number(n) if n.is_i64() || n.is_u64() => json!({"type": "integer"}),
        Value::Number(_) => json!({"type": "number"}),
        Value::String(_) => json!({"type": "string"}),
        Value::Array(items) => json!({"type": "array", "items": items.first().map(schema_of).unwrap_or(json!({}))}),
        Value::Object(map) => {
            let props: Map<String, Value> = map.iter().map(|(k, v)| (k.clone(), schema_of(v))).collect();
            json!({"type": "object", "properties": props})
        }
    }
}

pub fn document() -> Value {
    let schemas: Map<String, Value> = examples().iter().map(|(n, v)| (n.to_string(), schema_of(v))).collect();
    let mut paths = Map::new();
    for (route, _) in routes() {
        let mut op = Map::new();
        op.insert("summary".into(), json!(route.summary));
        if let Some(role) = route.role {
            op.insert("security".into(), json!([{"bearer": []}]));
            op.insert("x-backstop-role".into(), json!(role.as_str()));
        }
        let params: Vec<Value> = route
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        if !params.is_empty() {
            op.insert("parameters".into(), json!(params));
        }
        if let Some(req) = route.request {
            op.insert(
                "requestBody".into(),
                json!({"required": true, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{req}")}}}}),
            );
        }
        let mut responses = Map::new();
        match route.response {
            Some(resp) => {
                responses.insert(
                    "200".into(),
                    json!({"description": "OK", "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{resp}")}}}}),
                );
            }
            None => {
                responses.insert("200".into(), json!({"description": "OK"}));
            }
        }
        let error = json!({"description": "Error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
        responses.insert("default".into(), error);
        op.insert("responses".into(), Value::Object(responses));
        let entry = paths.entry(route.path.to_string()).or_insert_with(|| json!({}));
        entry[route.method] = Value::Object(op);
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Backstop",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The Backstop coordinator's API. Authenticate with `Authorization: Bearer <token>`. \
                            Errors have the body {\"error\": {\"code\", \"message\"}}."
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_and_every_referenced_schema_is_in_the_document() {
        let doc = document();
        for (route, _) in routes() {
            assert!(doc["paths"][route.path][route.method].is_object(), "{} {}", route.method, route.path);
            for name in route.request.into_iter().chain(route.response) {
                assert!(doc["components"]["schemas"][name].is_object(), "schema {name}");
            }
        }
        // Fields of the types appear in the schemas.
        assert!(doc["components"]["schemas"]["Job"]["properties"]["wait_reason"].is_object());
        assert!(doc["components"]["schemas"]["PlanSpec"]["properties"]["misfire"].is_object());
    }
}
