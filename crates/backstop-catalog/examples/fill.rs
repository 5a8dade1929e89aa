//! Fill a catalog as a large installation's would be, for `bench/ui.sh`:
//! 1,000 sources with a plan each, 100,000 finished jobs (a few hundred of
//! the last day failed, some running and queued) and 10,000 snapshots.
//!
//!   cargo run --release -p backstop-catalog --example fill -- CATALOG_URL SERVER_KEY_FILE
//!
//! The catalog must exist (start `backstop serve` on it once: that makes
//! the schema, the server key and the `local` repository). Jobs are made
//! through the queue's own `enqueue`, then given their end in bulk.

use std::time::Instant;

use backstop_catalog::queue::QueueConfig;
use backstop_catalog::resources::Scope;
use backstop_catalog::{Catalog, NewJob, SecretKey, now_ms};
use backstop_types::params::{BackupParams, JobParams};
use backstop_types::{PlanSpec, SnapshotInfo, SourceKind, SourceSpec};
use serde_json::json;

const SOURCES: usize = 1_000;
const JOBS: usize = 100_000;
const SNAPSHOTS: usize = 10_000;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, key_file] = args.as_slice() else {
        eprintln!("usage: fill CATALOG_URL SERVER_KEY_FILE");
        std::process::exit(2);
    };
    let key = std::fs::read_to_string(key_file).expect("read the server key");
    let key = SecretKey::from_hex(key.trim()).expect("a server key");
    let catalog = Catalog::connect(url, key, QueueConfig::default()).await.expect("open the catalog");
    let scope = Scope::All;
    let repository = catalog.repository(&scope, "local").await.expect("the local repository (start serve once)");
    let started = Instant::now();

    let mut plans = Vec::new();
    for i in 0..SOURCES {
        let name = format!("host{i:04}");
        let spec = SourceSpec {
            name: name.clone(),
            kind: SourceKind::Fs,
            host: Some(format!("{name}.example.net")),
            config: json!({"paths": [format!("/srv/{name}")]}),
            secrets: serde_json::Value::Null.into(),
        };
        catalog.create_source(&scope, &spec, now_ms()).await.expect("a source");
        let plan = PlanSpec {
            name: format!("{name}-nightly"),
            source: name,
            repository: "local".into(),
            schedule: Some(format!("{} {} * * *", i % 60, i % 6)),
            timezone: None,
            jitter_seconds: 0,
            misfire: Default::default(),
            overlap: Default::default(),
            retention: Default::default(),
            chain: Default::default(),
            tags: Vec::new(),
            max_attempts: Some(3),
            deadline_seconds: None,
            enabled: true,
        };
        plans.push(catalog.put_plan(&scope, &plan, now_ms()).await.expect("a plan"));
    }
    eprintln!("{SOURCES} sources and plans in {:.1} s", started.elapsed().as_secs_f64());

    let started = Instant::now();
    for i in 0..JOBS {
        let plan = &plans[i % plans.len()];
        let job = NewJob {
            tenant: plan.tenant.clone(),
            params: JobParams::Backup(BackupParams { plan: Some(plan.name.clone()), tags: Vec::new() }),
            plan: Some(plan.id.clone()),
            source: Some(plan.source.clone()),
            repository: repository.id.clone(),
            region: repository.region.clone(),
            host: None,
            max_attempts: 3,
            deadline_seconds: None,
            idempotency_key: None,
            request_digest: None,
            parent: None,
            step: None,
            not_before_ms: None,
        };
        catalog.enqueue(job, now_ms()).await.expect("a job");
    }
    // Their ends, in bulk: most succeeded over the last months; the newest
    // few hundred failed within the day, a few run, a few wait.
    let now = now_ms();
    let pool = catalog.pool();
    let sql = |s: &str| if catalog.kind() == backstop_catalog::DbKind::Postgres { postgres(s) } else { s.to_string() };
    sqlx::query(&sql(
        "UPDATE jobs SET state = 'succeeded', attempt = 1, started_ms = created_ms, finished_ms = created_ms + 60000, \
         result = '{\"snapshot_id\": null}', progress = NULL WHERE state = 'queued'",
    ))
    .execute(pool)
    .await
    .expect("finish the jobs");
    for (state, n, error) in
        [("failed", 300, Some("cannot read /srv: permission denied")), ("running", 40, None), ("queued", 200, None)]
    {
        sqlx::query(&sql(&format!(
            "UPDATE jobs SET state = ?, finished_ms = ?, error = ? WHERE id IN \
             (SELECT id FROM jobs WHERE state = 'succeeded' ORDER BY id DESC LIMIT {n})"
        )))
        .bind(state)
        .bind(if state == "failed" { Some(now - 3_600_000) } else { None })
        .bind(error)
        .execute(pool)
        .await
        .expect("fail, run or queue some");
    }
    // What completing them through the queue would have recorded.
    for (per, column) in [("source", "source_id"), ("plan", "plan_id"), ("repository", "repository_id")] {
        sqlx::query(&format!(
            "INSERT INTO last_success (kind, per, key, tenant, job_id) SELECT kind, '{per}', {column}, MAX(tenant), \
             MAX(id) FROM jobs WHERE state = 'succeeded' AND {column} IS NOT NULL GROUP BY kind, {column}"
        ))
        .execute(pool)
        .await
        .expect("their last successes");
    }
    eprintln!("{JOBS} jobs in {:.1} s", started.elapsed().as_secs_f64());

    let started = Instant::now();
    let day = 86_400_000i64;
    let snapshots: Vec<SnapshotInfo> = (0..SNAPSHOTS)
        .map(|i| SnapshotInfo {
            id: format!("{:064x}", i + 1),
            time: chrono::DateTime::from_timestamp_millis(now - (SNAPSHOTS - i) as i64 * day / 100).unwrap_or_default(),
            hostname: format!("host{:04}.example.net", i % SOURCES),
            paths: vec![format!("/srv/host{:04}", i % SOURCES)],
            tags: vec![format!("plan:host{:04}-nightly", i % SOURCES)],
            summary: json!({"bytes_total": 40u64 << 30, "bytes_added_stored": 300u64 << 20}),
        })
        .collect();
    catalog.reconcile_snapshots(&repository, &snapshots).await.expect("snapshots");
    eprintln!("{SNAPSHOTS} snapshots in {:.1} s", started.elapsed().as_secs_f64());
}

/// `?` placeholders as PostgreSQL's `$1`, `$2`, …
fn postgres(sql: &str) -> String {
    let mut out = String::new();
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push_str(&format!("${n}"));
        } else {
            out.push(c);
        }
    }
    out
}
