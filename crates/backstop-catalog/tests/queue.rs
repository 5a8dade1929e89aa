//! Queue semantics, each test run on SQLite and on PostgreSQL (found or
//! started by the testkit; never skipped).

use std::collections::HashSet;
use std::time::Duration;

use backstop_catalog::resources::Scope;
use backstop_catalog::schedule::FireOutcome;
use backstop_catalog::{Catalog, Error, NewJob, QueueConfig, SecretKey};
use backstop_testkit::postgres::Postgres;
use backstop_types::{
    Chain, Completion, Heartbeat, JobKind, JobParams, JobProgress, JobState, Misfire, Outcome, Overlap, PlanSpec,
    RepositorySpec, Retention, SnapshotInfo, SourceKind, SourceSpec,
};
use serde_json::json;

const T0: i64 = 1_780_000_000_000;

fn config() -> QueueConfig {
    QueueConfig {
        lease: Duration::from_secs(30),
        backoff_base: Duration::from_secs(10),
        backoff_max: Duration::from_secs(60),
        host_limit: 2,
        region_limit: None,
        default_max_attempts: 3,
        max_progress_events: 100,
    }
}

struct Db {
    name: &'static str,
    catalog: Catalog,
    url: String,
    key: SecretKey,
    _dir: Option<tempfile::TempDir>,
}

async fn sqlite() -> Db {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("catalog.db").display());
    let key = SecretKey::generate();
    let catalog = Catalog::connect(&url, key.clone(), config()).await.unwrap();
    Db { name: "sqlite", catalog, url, key, _dir: Some(dir) }
}

async fn postgres() -> Db {
    let url = tokio::task::spawn_blocking(|| Postgres::get().fresh_database()).await.unwrap();
    let key = SecretKey::generate();
    let catalog = Catalog::connect(&url, key.clone(), config()).await.unwrap();
    Db { name: "postgres", catalog, url, key, _dir: None }
}

async fn both() -> Vec<Db> {
    vec![sqlite().await, postgres().await]
}

/// A tenant with a repository (limit `max`), an fs source on `host` and a plan.
struct Setup {
    scope: Scope,
    repo: String,
    source: String,
    plan: String,
}

async fn setup(c: &Catalog, tenant: &str, max: u32, host: &str, chain: Chain) -> Setup {
    c.ensure_tenant(tenant, tenant, T0).await.unwrap();
    let scope = Scope::Tenant(tenant.into());
    let repo = c
        .create_repository(
            &scope,
            &RepositorySpec {
                name: "main".into(),
                location: "/srv/repo".into(),
                region: "eu".into(),
                password: "repo-password-123".into(),
                options: vec![],
                max_concurrent: Some(max),
                init: false,
            },
            T0,
        )
        .await
        .unwrap();
    let source = c
        .create_source(
            &scope,
            &SourceSpec {
                name: "home".into(),
                kind: SourceKind::Fs,
                host: Some(host.into()),
                config: json!({"paths": ["/home"]}),
                secrets: json!({}).into(),
            },
            T0,
        )
        .await
        .unwrap();
    let plan = c
        .put_plan(
            &scope,
            &PlanSpec {
                name: "nightly".into(),
                source: "home".into(),
                repository: "main".into(),
                schedule: None,
                timezone: None,
                jitter_seconds: 0,
                misfire: Misfire::Skip,
                overlap: Overlap::Queue,
                retention: Retention { keep_last: Some(3), ..Default::default() },
                chain,
                tags: vec![],
                max_attempts: None,
                deadline_seconds: None,
                enabled: true,
            },
            T0,
        )
        .await
        .unwrap();
    Setup { scope, repo: repo.id, source: source.id, plan: plan.id }
}

fn job(s: &Setup, kind: JobKind, host: &str) -> NewJob {
    NewJob {
        tenant: s.scope.tenant().to_string(),
        params: JobParams::parse(kind, &json!({})).unwrap(),
        plan: None,
        source: Some(s.source.clone()),
        repository: s.repo.clone(),
        region: "eu".into(),
        host: Some(host.into()),
        max_attempts: 3,
        deadline_seconds: None,
        idempotency_key: None,
        request_digest: None,
        parent: None,
        step: None,
        not_before_ms: None,
    }
}

fn ok() -> Outcome {
    Outcome::Succeeded { result: json!({"snapshot_id": "abc"}), snapshot: None }
}

fn done(attempt: u32, outcome: Outcome) -> Completion {
    Completion { attempt, outcome, logs: vec![] }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_runs_queued_running_succeeded_and_its_events_tell_the_story() {
    for db in both().await {
        let c = &db.catalog;
        let s = setup(c, "acme", 4, "h1", Chain::default()).await;
        let (queued, created) = c.enqueue(job(&s, JobKind::Backup, "h1"), T0).await.unwrap();
        assert!(created);
        assert_eq!(queued.state, JobState::Queued, "{}", db.name);
        assert!(queued.wait_reason.as_deref().unwrap().contains("waiting for a worker of region eu"));

        assert!(c.claim("w1", "us", T0).await.unwrap().is_none(), "{}: other regions get nothing", db.name);
        let claim = c.claim("w1", "eu", T0).await.unwrap().expect("claimed");
        assert_eq!(claim.job.id, queued.id);
        assert_eq!((claim.attempt, claim.job.state), (1, JobState::Running));
        assert_eq!(claim.repository.password.expose(), "repo-password-123", "the worker gets the password");
        assert_eq!(claim.source.as_ref().unwrap().config, json!({"paths": ["/home"]}));
        assert!(c.claim("w2", "eu", T0).await.unwrap().is_none(), "{}: claimed once", db.name);

        let progress = JobProgress { bytes_done: 10, bytes_total: 100, ..Default::default() };
        let hb = Heartbeat { attempt: 1, progress: Some(progress.clone()), logs: vec![] };
        let reply = c.heartbeat(&queued.id, &hb, T0 + 5_000).await.unwrap();
        assert!(!reply.cancel);
        assert_eq!(reply.lease_expires.timestamp_millis(), T0 + 35_000);
        assert_eq!(c.job(&s.scope, &queued.id).await.unwrap().progress, Some(progress));

        let snap = SnapshotInfo {
            id: "abc".into(),
            time: chrono::DateTime::from_timestamp_millis(T0).unwrap(),
            hostname: "h1".into(),
            paths: vec!["/home".into()],
            tags: vec![],
            summary: json!({}),
        };
        let finished = c
            .complete(&queued.id, &done(1, Outcome::Succeeded { result: json!({}), snapshot: Some(snap) }), T0 + 9_000)
            .await
            .unwrap();
        assert_eq!(finished.state, JobState::Succeeded);
        assert_eq!(c.list_snapshots(&s.scope, None).await.unwrap().len(), 1, "{}", db.name);

        let events = c.events(&s.scope, &queued.id, 0, 100).await.unwrap();
        let states: Vec<String> =
            events.iter().filter_map(|e| e.data.get("state").and_then(|v| v.as_str()).map(str::to_string)).collect();
        assert_eq!(states, ["queued", "running", "succeeded"], "{}", db.name);
        assert!(events.iter().any(|e| e.kind == backstop_types::EventKind::Progress));
        assert!(events.windows(2).all(|w| w[0].id < w[1].id));
        let later = c.events(&s.scope, &queued.id, events[0].id, 100).await.unwrap();
        assert_eq!(later.len(), events.len() - 1, "resuming after an event id");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn retryable_failures_back_off_and_the_job_dies_after_its_last_attempt() {
    for db in both().await {
        let c = &db.catalog;
        let s = setup(c, "acme", 4, "h1", Chain::default()).await;
        let (j, _) = c.enqueue(job(&s, JobKind::Backup, "h1"), T0).await.unwrap();
        let mut now = T0;
        for attempt in 1..=3u32 {
            let claim =
                c.claim("w1", "eu", now).await.unwrap().unwrap_or_else(|| panic!("{} attempt {attempt}", db.name));
            assert_eq!(claim.attempt, attempt);
            let failed = Outcome::Failed { error: format!("network down #{attempt}"), retryable: true };
            let after = c.complete(&j.id, &done(attempt, failed), now).await.unwrap();
            if attempt < 3 {
                assert_eq!(after.state, JobState::Queued);
                let backoff = 10_000 << (attempt - 1);
                assert_eq!(after.not_before.timestamp_millis(), now + backoff, "{}: backoff doubles", db.name);
                assert!(after.wait_reason.as_deref().unwrap().contains("retrying in"), "{:?}", after.wait_reason);
                assert!(c.claim("w1", "eu", now + backoff - 1).await.unwrap().is_none(), "not before the backoff");
                now += backoff;
            } else {
                assert_eq!(after.state, JobState::Dead, "{}", db.name);
                assert_eq!(after.error.as_deref(), Some("network down #3"), "the last error is kept");
            }
        }
        assert!(c.claim("w1", "eu", now + 1_000_000).await.unwrap().is_none());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_permanent_failure_fails_at_once() {
    for db in both().await {
        let c = &db.catalog;
        let s = setup(c, "acme", 4, "h1", Chain::default()).await;
        let (j, _) = c.enqueue(job(&s, JobKind::Backup, "h1"), T0).await.unwrap();
        c.claim("w1", "eu", T0).await.unwrap().unwrap();
        let failed = Outcome::Failed { error: "wrong password".into(), retryable: false };
        let after = c.complete(&j.id, &done(1, failed), T0).await.unwrap();
        assert_eq!(after.state, JobState::Failed, "{}", db.name);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_lease_is_requeued_and_the_paused_workers_late_report_is_refused() {
    for db in both().await {
        let c = &db.catalog;
        let s = setup(c, "acme", 4, "h1", Chain::default()).await;
        let (j, _) = c.enqueue(job(&s, JobKind::Backup, "h1"), T0).await.unwrap();
        let first = c.claim("paused", "eu", T0).await.unwrap().unwrap();
        assert_eq!(first.attempt, 1);

        // The worker pauses past its 30 s lease; the reaper requeues.
        let report = c.reap(T0 + 31_000).await.unwrap();
        assert_eq!(report.requeued, 1, "{}", db.name);
        let requeued = c.job(&s.scope, &j.id).await.unwrap();
        assert_eq!(requeued.state, JobState::Queued);
        assert!(requeued.wait_reason.as_deref().unwrap().contains("lease expired"), "{:?}", requeued.wait_reason);

        let second = c.claim("healthy", "eu", T0 + 31_000 + 10_000).await.unwrap().unwrap();
        assert_eq!(second.attempt, 2);

        // The paused worker wakes up: its heartbeat and completion are refused.
        let hb = Heartbeat { attempt: 1, progress: None, logs: vec![] };
        assert!(matches!(c.heartbeat(&j.id, &hb, T0 + 45_000).await, Err(Error::StaleAttempt { attempt: 1, .. })));
        let late = c.complete(&j.id, &done(1, ok()), T0 + 45_000).await;
        assert!(matches!(late, Err(Error::StaleAttempt { attempt: 1, .. })), "{}: {late:?}", db.name);
        let now = c.job(&s.scope, &j.id).await.unwrap();
        assert_eq!((now.state, now.attempt, now.lease_owner.as_deref()), (JobState::Running, 2, Some("healthy")));

        c.complete(&j.id, &done(2, ok()), T0 + 50_000).await.unwrap();
        assert_eq!(c.job(&s.scope, &j.id).await.unwrap().state, JobState::Succeeded);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn lost_leases_on_the_last_attempt_make_the_job_dead() {
    for db in both().await {
        let c = &db.catalog;
        let s = setup(c, "acme", 4, "h1", Chain::default()).await;
        let mut new = job(&s, JobKind::Backup, "h1");
        new.max_attempts = 1;
        let (j, _) = c.enqueue(new, T0).await.unwrap();
        c.claim("w", "eu", T0).await.unwrap().unwrap();
        assert_eq!(c.reap(T0 + 60_000).await.unwrap().dead, 1, "{}", db.name);
        let dead = c.job(&s.scope, &j.id).await.unwrap();
        assert_eq!(dead.state, JobState::Dead);
        assert!(dead.error.unwrap().contains("lease expired"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_stops_a_queued_job_at_once_and_a_running_one_at_its_next_heartbeat() {
    for db in both().await {
        let c = &db.catalog;
        let s = setup(c, "acme", 4, "h1", Chain::default()).await;
        let (queued, _) = c.enqueue(job(&s, JobKind::Backup, "h1"), T0).await.unwrap();
        assert_eq!(c.cancel(&s.scope, &queued.id, T0).await.unwrap().state, JobState::Cancelled, "{}", db.name);
        assert!(c.claim("w", "eu", T0).await.unwrap().is_none());

        let (running, _) = c.enqueue(job(&s, JobKind::Backup, "h1"), T0).await.unwrap();
        c.claim("w", "eu", T0).await.unwrap().unwrap();
        let asked = c.cancel(&s.scope, &running.id, T0 + 1).await.unwrap();
        assert!(asked.cancel_requested && asked.state == JobState::Running);
        let reply =
            c.heartbeat(&running.id, &Heartbeat { attempt: 1, progress: None, logs: vec![] }, T0 + 2).await.unwrap();
        assert!(reply.cancel, "{}: the worker is told to stop", db.name);
        let stopped = c.complete(&running.id, &done(1, Outcome::Cancelled), T0 + 3).await.unwrap();
        assert_eq!(stopped.state, JobState::Cancelled);
        // Cancelling a finished job changes nothing.
        assert_eq!(c.cancel(&s.scope, &running.id, T0 + 4).await.unwrap().state, JobState::Cancelled);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deadline_stops_a_runaway_job_and_its_worker_is_told_by_a_refused_heartbeat() {
    for db in both().await {
        let c = &db.catalog;
        let s = setup(c, "acme", 4, "h1", Chain::default()).await;
        let mut new = job(&s, JobKind::Backup, "h1");
        new.deadline_seconds = Some(60);
        let (j, _) = c.enqueue(new, T0).await.unwrap();
        c.claim("w", "eu", T0).await.unwrap().unwrap();
        // Heartbeats keep the lease alive, but the deadline still applies.
        for t in (10_000..=70_000).step_by(10_000) {
            let _ = c.heartbeat(&j.id, &Heartbeat { attempt: 1, progress: None, logs: vec![] }, T0 + t).await;
            c.reap(T0 + t).await.unwrap();
        }
        let failed = c.job(&s.scope, &j.id).await.unwrap();
        assert_eq!(failed.state, JobState::Failed, "{}", db.name);
        assert!(failed.error.unwrap().contains("deadline of 60 s"));
        let hb = c.heartbeat(&j.id, &Heartbeat { attempt: 1, progress: None, logs: vec![] }, T0 + 80_000).await;
        assert!(matches!(hb, Err(Error::StaleAttempt { .. })));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idempotency_key_makes_one_job_however_often_it_is_sent() {
    for db in both().await {
        let c = &db.catalog;
        let s = setup(c, "acme", 4, "h1", Chain::default()).await;
        let (a, created_a) = c.run_plan(&s.scope, "nightly", Some("req-1".into()), T0).await.unwrap();
        let (b, created_b) = c.run_plan(&s.scope, "nightly", Some("req-1".into()), T0 + 5).await.unwrap();
        assert!(created_a && !created_b, "{}", db.name);
        assert_eq!(a.id, b.id);
        let (other, _) = c.run_plan(&s.scope, "nightly", Some("req-2".into()), T0).await.unwrap();
        assert_ne!(other.id, a.id);
        let (no_key, _) = c.run_plan(&s.scope, "nightly", None, T0).await.unwrap();
        let (no_key2, _) = c.run_plan(&s.scope, "nightly", None, T0).await.unwrap();
        assert_ne!(no_key.id, no_key2.id, "without a key every request is a new job");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn repository_and_host_limits_hold_jobs_back_and_say_why() {
    for db in both().await {
        let c = &db.catalog;
        let s = setup(c, "acme", 2, "h1", Chain::default()).await;
        let mut ids = Vec::new();
        for i in 0..3 {
            // Different hosts, so only the repository limit (2) applies.
            ids.push(c.enqueue(job(&s, JobKind::Backup, &format!("host{i}")), T0 + i).await.unwrap().0.id);
        }
        assert!(c.claim("w", "eu", T0 + 100).await.unwrap().is_some());
        assert!(c.claim("w", "eu", T0 + 100).await.unwrap().is_some());
        assert!(c.claim("w", "eu", T0 + 100).await.unwrap().is_none(), "{}: the repository allows 2", db.name);
        let waiting = c.job(&s.scope, &ids[2]).await.unwrap();
        assert!(waiting.wait_reason.as_deref().unwrap().contains("is busy (2 of 2 jobs running)"), "{waiting:?}");

        // Host limit: a second repository, three jobs on one host (limit 2).
        let other = c
            .create_repository(
                &s.scope,
                &RepositorySpec {
                    name: "second".into(),
                    location: "/srv/two".into(),
                    region: "eu".into(),
                    password: "pw".into(),
                    options: vec![],
                    max_concurrent: Some(10),
                    init: false,
                },
                T0,
            )
            .await
            .unwrap();
        let mut host_jobs = Vec::new();
        for i in 0..3 {
            let mut j = job(&s, JobKind::Backup, "busyhost");
            j.repository = other.id.clone();
            host_jobs.push(c.enqueue(j, T0 + 10 + i).await.unwrap().0.id);
        }
        assert!(c.claim("w", "eu", T0 + 100).await.unwrap().is_some());
        assert!(c.claim("w", "eu", T0 + 100).await.unwrap().is_some());
        assert!(c.claim("w", "eu", T0 + 100).await.unwrap().is_none(), "{}: host limit 2", db.name);
        let reason = c.job(&s.scope, &host_jobs[2]).await.unwrap().wait_reason.unwrap();
        assert!(reason.contains("source host busyhost is busy"), "{reason}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn maintenance_never_runs_beside_a_backup_into_its_repository() {
    for db in both().await {
        let c = &db.catalog;
        let s = setup(c, "acme", 10, "h1", Chain::default()).await;
        let (b1, _) = c.enqueue(job(&s, JobKind::Backup, "a"), T0).await.unwrap();
        assert_eq!(c.claim("w", "eu", T0).await.unwrap().unwrap().job.id, b1.id);
        let (prune, _) = c.enqueue(job(&s, JobKind::Prune, "a"), T0 + 1).await.unwrap();
        let (b2, _) = c.enqueue(job(&s, JobKind::Backup, "b"), T0 + 2).await.unwrap();
        // The prune waits for b1; b2 is younger than the queued prune, so it waits too.
        assert!(c.claim("w", "eu", T0 + 3).await.unwrap().is_none(), "{}", db.name);
        let p = c.job(&s.scope, &prune.id).await.unwrap();
        assert!(p.wait_reason.as_deref().unwrap().contains("maintenance waits for 1 running job"), "{p:?}");
        let w = c.job(&s.scope, &b2.id).await.unwrap();
        assert!(w.wait_reason.as_deref().unwrap().contains("queued maintenance"), "{w:?}");

        c.complete(&b1.id, &done(1, ok()), T0 + 4).await.unwrap();
        assert_eq!(c.claim("w", "eu", T0 + 5).await.unwrap().unwrap().job.id, prune.id);
        assert!(c.claim("w", "eu", T0 + 5).await.unwrap().is_none(), "{}: nothing beside the prune", db.name);
        let w = c.job(&s.scope, &b2.id).await.unwrap();
        assert!(w.wait_reason.as_deref().unwrap().contains("maintenance (prune) is running"), "{w:?}");
        c.complete(&prune.id, &done(1, ok()), T0 + 6).await.unwrap();
        assert_eq!(c.claim("w", "eu", T0 + 7).await.unwrap().unwrap().job.id, b2.id);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn one_tenants_burst_delays_another_tenants_job_by_at_most_one_slot() {
    for db in both().await {
        let c = &db.catalog;
        let a = setup(c, "tenant-a", 1000, "h", Chain::default()).await;
        let b = setup(c, "tenant-b", 1000, "h", Chain::default()).await;
        for i in 0..500 {
            c.enqueue(job(&a, JobKind::Backup, &format!("a{i}")), T0 + i).await.unwrap();
        }
        let (lonely, _) = c.enqueue(job(&b, JobKind::Backup, "b0"), T0 + 1000).await.unwrap();
        let mut order = Vec::new();
        for k in 0..3 {
            let claim = c.claim("w", "eu", T0 + 2000 + k).await.unwrap().unwrap();
            order.push(claim.job.tenant.clone());
        }
        let position = order.iter().position(|t| t == "tenant-b").expect("tenant-b runs within three slots");
        assert!(position <= 1, "{}: tenant-b's job ran in slot {position}: {order:?}", db.name);
        assert_eq!(c.job(&b.scope, &lonely.id).await.unwrap().state, JobState::Running);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_succeeded_backup_chains_verify_then_retention_once_each() {
    for db in both().await {
        let c = &db.catalog;
        let s = setup(c, "acme", 4, "h1", Chain { verify_percent: 10, retention: true }).await;
        let (backup, _) = c.run_plan(&s.scope, &s.plan, None, T0).await.unwrap();
        c.claim("w", "eu", T0).await.unwrap().unwrap();
        c.complete(&backup.id, &done(1, ok()), T0 + 1).await.unwrap();

        let verify = c.claim("w", "eu", T0 + 2).await.unwrap().expect("verify step queued");
        assert_eq!(verify.job.kind, JobKind::Verify, "{}", db.name);
        assert_eq!(verify.job.parent.as_deref(), Some(backup.id.as_str()));
        assert_eq!(verify.job.params["percent"], 10);
        assert_eq!(verify.job.params["snapshot"], "abc");
        c.complete(&verify.job.id, &done(1, ok()), T0 + 3).await.unwrap();

        let retention = c.claim("w", "eu", T0 + 4).await.unwrap().expect("retention step queued");
        assert_eq!(retention.job.kind, JobKind::Retention);
        assert_eq!(retention.job.params["plan"], "nightly", "retention applies to the plan's own snapshots");
        assert_eq!(retention.retention.as_ref().unwrap().keep_last, Some(3), "the plan's policy travels");
        c.complete(&retention.job.id, &done(1, ok()), T0 + 5).await.unwrap();
        assert!(c.claim("w", "eu", T0 + 6).await.unwrap().is_none(), "{}: the chain ends", db.name);

        // A failed backup chains nothing.
        let (again, _) = c.run_plan(&s.scope, &s.plan, None, T0 + 10).await.unwrap();
        c.claim("w", "eu", T0 + 10).await.unwrap().unwrap();
        let failed = Outcome::Failed { error: "bad".into(), retryable: false };
        c.complete(&again.id, &done(1, failed), T0 + 11).await.unwrap();
        assert!(c.claim("w", "eu", T0 + 12).await.unwrap().is_none());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_claims_never_hand_one_job_to_two_workers() {
    for db in both().await {
        // Two coordinators on one database when it is PostgreSQL.
        let second = match db.name {
            "postgres" => Catalog::connect(&db.url, db.key.clone(), config()).await.unwrap(),
            _ => db.catalog.clone(),
        };
        let c = &db.catalog;
        let s = setup(c, "acme", 1000, "h", Chain::default()).await;
        for i in 0..200 {
            c.enqueue(job(&s, JobKind::Backup, &format!("h{i}")), T0 + i).await.unwrap();
        }
        let mut tasks = Vec::new();
        for w in 0..8 {
            let cat = if w % 2 == 0 { c.clone() } else { second.clone() };
            tasks.push(tokio::spawn(async move {
                let mut got = Vec::new();
                while let Some(claim) = cat.claim(&format!("w{w}"), "eu", T0 + 5_000).await.unwrap() {
                    got.push(claim.job.id);
                }
                got
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        let unique: HashSet<_> = all.iter().collect();
        assert_eq!(all.len(), 200, "{}: every job claimed", db.name);
        assert_eq!(unique.len(), 200, "{}: no job claimed twice", db.name);
    }
}

async fn scheduled_plan(c: &Catalog, s: &Setup, misfire: Misfire, overlap: Overlap) {
    c.put_plan(
        &s.scope,
        &PlanSpec {
            name: "nightly".into(),
            source: "home".into(),
            repository: "main".into(),
            schedule: Some("0 * * * *".into()),
            timezone: Some("Europe/Berlin".into()),
            jitter_seconds: 0,
            misfire,
            overlap,
            retention: Retention::default(),
            chain: Chain::default(),
            tags: vec!["hourly".into()],
            max_attempts: None,
            deadline_seconds: None,
            enabled: true,
        },
        T0,
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn two_coordinators_firing_one_schedule_create_one_job() {
    for db in both().await {
        let c = &db.catalog;
        let s = setup(c, "acme", 4, "h1", Chain::default()).await;
        scheduled_plan(c, &s, Misfire::Skip, Overlap::Queue).await;
        let plan = c.plan(&s.scope, "nightly").await.unwrap();
        let fire = plan.next_fire.unwrap().timestamp_millis();
        assert!(fire > T0 && fire - T0 <= 3_600_000 && fire % 3_600_000 == 0, "{}: next full hour", db.name);
        assert!(c.fire_due_plans(fire - 1, Duration::from_secs(60)).await.unwrap().is_empty(), "not yet due");

        let second = match db.name {
            "postgres" => Catalog::connect(&db.url, db.key.clone(), config()).await.unwrap(),
            _ => c.clone(),
        };
        let (x, y) = tokio::join!(
            c.fire_due_plans(fire + 1_000, Duration::from_secs(60)),
            second.fire_due_plans(fire + 1_000, Duration::from_secs(60))
        );
        let fired: Vec<FireOutcome> = x.unwrap().into_iter().chain(y.unwrap()).collect();
        assert_eq!(fired.len(), 1, "{}: {fired:?}", db.name);
        let jobs = c.list_jobs(&s.scope, &Default::default()).await.unwrap().items;
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].idempotency_key.as_deref(), Some(format!("schedule:{}:{fire}", plan.id).as_str()));
        let next = c.plan(&s.scope, "nightly").await.unwrap().next_fire.unwrap().timestamp_millis();
        assert_eq!(next, fire + 3_600_000, "the schedule moved on one hour");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn misfire_and_overlap_policies() {
    for db in both().await {
        let c = &db.catalog;
        let s = setup(c, "acme", 4, "h1", Chain::default()).await;

        // Skip: a fire found 3 hours late runs nothing; the schedule resumes.
        scheduled_plan(c, &s, Misfire::Skip, Overlap::Queue).await;
        let fire = c.plan(&s.scope, "nightly").await.unwrap().next_fire.unwrap().timestamp_millis();
        let late = fire + 3 * 3_600_000 + 60_000;
        let out = c.fire_due_plans(late, Duration::from_secs(60)).await.unwrap();
        assert!(matches!(out.as_slice(), [FireOutcome::SkippedMisfire { .. }]), "{}: {out:?}", db.name);
        assert!(c.list_jobs(&s.scope, &Default::default()).await.unwrap().items.is_empty());
        let resumed = c.plan(&s.scope, "nightly").await.unwrap().next_fire.unwrap().timestamp_millis();
        assert!(resumed > late && resumed - late <= 3_600_000);

        // Run once: the late fire runs one job, however many were missed.
        scheduled_plan(c, &s, Misfire::RunOnce, Overlap::Queue).await;
        let fire = c.plan(&s.scope, "nightly").await.unwrap().next_fire.unwrap().timestamp_millis();
        let late = fire + 3 * 3_600_000 + 60_000;
        let out = c.fire_due_plans(late, Duration::from_secs(60)).await.unwrap();
        assert!(matches!(out.as_slice(), [FireOutcome::Queued { .. }]), "{}: {out:?}", db.name);
        assert!(c.fire_due_plans(late, Duration::from_secs(60)).await.unwrap().is_empty(), "once");

        // Overlap skip: the previous run is still queued, so the next fire skips.
        scheduled_plan(c, &s, Misfire::Skip, Overlap::Skip).await;
        let fire = c.plan(&s.scope, "nightly").await.unwrap().next_fire.unwrap().timestamp_millis();
        let out = c.fire_due_plans(fire + 1, Duration::from_secs(60)).await.unwrap();
        assert!(matches!(out.as_slice(), [FireOutcome::SkippedOverlap { .. }]), "{}: {out:?}", db.name);
        // Overlap queue: it queues a second run.
        scheduled_plan(c, &s, Misfire::Skip, Overlap::Queue).await;
        let fire = c.plan(&s.scope, "nightly").await.unwrap().next_fire.unwrap().timestamp_millis();
        let out = c.fire_due_plans(fire + 1, Duration::from_secs(60)).await.unwrap();
        assert!(matches!(out.as_slice(), [FireOutcome::Queued { .. }]), "{}: {out:?}", db.name);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tenants_never_see_each_others_objects() {
    for db in both().await {
        let c = &db.catalog;
        let a = setup(c, "tenant-a", 4, "h", Chain::default()).await;
        let b = setup(c, "tenant-b", 4, "h", Chain::default()).await;
        let (job_a, _) = c.run_plan(&a.scope, "nightly", None, T0).await.unwrap();
        assert!(matches!(c.job(&b.scope, &job_a.id).await, Err(Error::NotFound(_))), "{}", db.name);
        assert!(matches!(c.cancel(&b.scope, &job_a.id, T0).await, Err(Error::NotFound(_))));
        assert!(matches!(c.repository(&b.scope, &a.repo).await, Err(Error::NotFound(_))));
        assert!(matches!(c.plan(&b.scope, &a.plan).await, Err(Error::NotFound(_))));
        assert!(matches!(c.source(&b.scope, &a.source).await, Err(Error::NotFound(_))));
        assert!(c.list_jobs(&b.scope, &Default::default()).await.unwrap().items.is_empty());
        // By name, each tenant sees its own object of that name.
        assert_eq!(c.plan(&b.scope, "nightly").await.unwrap().id, b.plan);
        assert_eq!(c.list_jobs(&Scope::All, &Default::default()).await.unwrap().items.len(), 1);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_are_stored_sealed_and_a_wrong_server_key_cannot_open_them() {
    for db in both().await {
        let c = &db.catalog;
        let s = setup(c, "acme", 4, "h1", Chain::default()).await;
        let raw: String = sqlx::query_scalar("SELECT secret FROM repositories").fetch_one(c.pool()).await.unwrap();
        assert!(!raw.contains("repo-password-123"), "{}: {raw}", db.name);
        assert_eq!(c.repository_access(&s.scope, &s.repo).await.unwrap().password.expose(), "repo-password-123");

        let other_key = Catalog::connect(&db.url, SecretKey::generate(), config()).await.unwrap();
        let err = other_key.repository_access(&s.scope, &s.repo).await.unwrap_err();
        assert!(err.to_string().contains("server key differs"), "{}: {err}", db.name);
        // A job whose secrets cannot be opened fails instead of blocking the queue.
        let (j, _) = other_key.enqueue(job(&s, JobKind::Backup, "h1"), T0).await.unwrap();
        assert!(other_key.claim("w", "eu", T0).await.unwrap().is_none());
        assert_eq!(c.job(&s.scope, &j.id).await.unwrap().state, JobState::Failed);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_refused_with_a_reason() {
    let db = sqlite().await;
    let c = &db.catalog;
    let s = setup(c, "acme", 4, "h1", Chain::default()).await;
    // What a source's configuration means is its packager's to check
    // (backstop-source's tests: a relative fs path, an unknown kind); the
    // catalog stores an object as it is.
    let bad_source = SourceSpec {
        name: "x".into(),
        kind: SourceKind::Fs,
        host: None,
        config: json!(["/srv"]),
        secrets: json!({}).into(),
    };
    let err = c.create_source(&s.scope, &bad_source, T0).await.unwrap_err();
    assert!(err.to_string().contains("config must be a JSON object"), "{err}");
    let spec = PlanSpec {
        name: "bad".into(),
        source: "home".into(),
        repository: "main".into(),
        schedule: Some("every day".into()),
        timezone: None,
        jitter_seconds: 0,
        misfire: Misfire::Skip,
        overlap: Overlap::Skip,
        retention: Retention::default(),
        chain: Chain { verify_percent: 0, retention: false },
        tags: vec![],
        max_attempts: None,
        deadline_seconds: None,
        enabled: true,
    };
    assert!(c.put_plan(&s.scope, &spec, T0).await.unwrap_err().to_string().contains("five fields"));
    let no_policy = PlanSpec { schedule: None, chain: Chain { verify_percent: 0, retention: true }, ..spec.clone() };
    assert!(c.put_plan(&s.scope, &no_policy, T0).await.unwrap_err().to_string().contains("retention policy"));
    let dup = RepositorySpec {
        name: "main".into(),
        location: "/x".into(),
        region: "eu".into(),
        password: "p".into(),
        options: vec![],
        max_concurrent: None,
        init: false,
    };
    assert!(matches!(c.create_repository(&s.scope, &dup, T0).await, Err(Error::Conflict(_))));
    assert!(matches!(c.delete_repository(&s.scope, "main").await, Err(Error::Conflict(_))), "used by a plan");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_region_limit_caps_running_jobs_in_the_region() {
    for db in both().await {
        let mut cfg = config();
        cfg.region_limit = Some(2);
        let c = Catalog::connect(&db.url, db.key.clone(), cfg).await.unwrap();
        let s = setup(&c, "acme", 100, "h", Chain::default()).await;
        for i in 0..4 {
            c.enqueue(job(&s, JobKind::Backup, &format!("h{i}")), T0).await.unwrap();
        }
        assert!(c.claim("w", "eu", T0).await.unwrap().is_some());
        assert!(c.claim("w", "eu", T0).await.unwrap().is_some());
        assert!(c.claim("w", "eu", T0).await.unwrap().is_none(), "{}: the region allows 2", db.name);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_job_is_not_retried_and_a_released_job_keeps_its_attempts() {
    for db in both().await {
        let c = &db.catalog;
        let s = setup(c, "acme", 4, "h1", Chain::default()).await;
        // Cancel while running, then the worker reports a retryable failure: cancelled, not requeued.
        let (j, _) = c.enqueue(job(&s, JobKind::Backup, "h1"), T0).await.unwrap();
        c.claim("w", "eu", T0).await.unwrap().unwrap();
        c.cancel(&s.scope, &j.id, T0 + 1).await.unwrap();
        let failed = Outcome::Failed { error: "interrupted".into(), retryable: true };
        assert_eq!(
            c.complete(&j.id, &done(1, failed), T0 + 2).await.unwrap().state,
            JobState::Cancelled,
            "{}",
            db.name
        );

        // Released (its worker shut down): queued again at once, the attempt not counted.
        let mut one = job(&s, JobKind::Backup, "h1");
        one.max_attempts = 1;
        let (j, _) = c.enqueue(one, T0).await.unwrap();
        c.claim("w", "eu", T0).await.unwrap().unwrap();
        let back = c.release(&j.id, 1, "the coordinator shut down", T0 + 3).await.unwrap();
        assert_eq!((back.state, back.attempt, back.max_attempts), (JobState::Queued, 1, 2), "{}", db.name);
        let again = c.claim("w2", "eu", T0 + 3).await.unwrap().unwrap();
        assert_eq!(again.attempt, 2, "attempt numbers keep increasing");
        assert!(matches!(c.complete(&j.id, &done(1, ok()), T0 + 4).await, Err(Error::StaleAttempt { .. })));
        assert!(matches!(c.release(&j.id, 1, "late", T0 + 4).await, Err(Error::StaleAttempt { .. })));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_browser_session_acts_as_its_token_until_it_expires_is_ended_or_its_token_is_revoked() {
    for db in both().await {
        let c = &db.catalog;
        c.ensure_tenant("acme", "acme", T0).await.unwrap();
        let token = c.create_token("acme", "ops", backstop_types::Role::Operator, T0).await.unwrap();
        let hour = 3_600_000;
        let session = c.create_session(&token.token.id, T0, hour).await.unwrap();
        let live = c.session(&session.secret, T0 + 1).await.unwrap().expect("a live session");
        assert_eq!((live.token.id.as_str(), live.token.tenant.as_str()), (token.token.id.as_str(), "acme"));
        assert_eq!(live.csrf, session.csrf);
        assert!(c.session("bss_guessed", T0 + 1).await.unwrap().is_none(), "{}", db.name);
        assert!(c.session(&session.secret, T0 + hour).await.unwrap().is_none(), "expired: {}", db.name);

        // Logging out ends it; another session of the same token lives on.
        let other = c.create_session(&token.token.id, T0, hour).await.unwrap();
        let third = c.create_session(&token.token.id, T0, hour).await.unwrap();
        c.end_session(&other.secret).await.unwrap();
        assert!(c.session(&other.secret, T0 + 1).await.unwrap().is_none());
        assert!(c.session(&third.secret, T0 + 1).await.unwrap().is_some());
        c.end_session(&other.secret).await.unwrap(); // twice: no error

        // Revoking the token ends its sessions.
        c.revoke_token(&Scope::All, &token.token.id, T0 + 2).await.unwrap();
        assert!(c.session(&third.secret, T0 + 3).await.unwrap().is_none(), "{}", db.name);
    }
}

/// What the web UI's pages ask of the catalog, on both databases: the
/// newest job of each source, jobs by source and creation time, a
/// repository's usage from its snapshots' summaries (sampled by the
/// database), the worker pools, a snapshot by id and a source's change.
#[tokio::test(flavor = "multi_thread")]
async fn the_ui_queries_answer_alike_on_both_databases() {
    for db in both().await {
        let c = &db.catalog;
        let s = setup(c, "acme", 4, "h1", Chain::default()).await;
        let mut ids = Vec::new();
        for i in 0..3 {
            let (j, _) = c.enqueue(job(&s, JobKind::Backup, "h1"), T0 + i * 1000).await.unwrap();
            let claim = c.claim("w1", "eu", T0 + i * 1000 + 1).await.unwrap().expect("a claim");
            c.complete(&j.id, &done(claim.attempt, ok()), T0 + i * 1000 + 2).await.unwrap();
            ids.push(j.id);
        }
        let latest = c.latest_jobs(&s.scope, JobKind::Backup, backstop_types::Per::Source).await;
        let latest = latest.unwrap();
        assert_eq!(latest.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(), [ids[2].as_str()], "{}", db.name);
        let verifies = c.latest_jobs(&s.scope, JobKind::Verify, backstop_types::Per::Plan).await.unwrap();
        assert!(verifies.is_empty());
        let other = Scope::Tenant("other".into());
        assert!(c.latest_jobs(&other, JobKind::Backup, backstop_types::Per::Source).await.unwrap().is_empty());
        // The repository's last success too, and a failure changes none of them.
        let repo_last = c.latest_jobs(&s.scope, JobKind::Backup, backstop_types::Per::Repository).await.unwrap();
        assert_eq!(repo_last.len(), 1);
        let (failing, _) = c.enqueue(job(&s, JobKind::Backup, "h1"), T0 + 5000).await.unwrap();
        let claim = c.claim("w1", "eu", T0 + 5001).await.unwrap().expect("a claim");
        let failed = Outcome::Failed { error: "no".into(), retryable: false };
        c.complete(&failing.id, &done(claim.attempt, failed), T0 + 5002).await.unwrap();
        let after = c.latest_jobs(&s.scope, JobKind::Backup, backstop_types::Per::Source).await.unwrap();
        assert_eq!(after[0].id, ids[2], "{}", db.name);

        let filter = |from: Option<i64>, before: Option<i64>| backstop_catalog::queue::JobFilter {
            source: Some(s.source.clone()),
            created_from_ms: from,
            created_before_ms: before,
            limit: 100,
            ..Default::default()
        };
        let page = c.list_jobs(&s.scope, &filter(Some(T0 + 1000), Some(T0 + 2000))).await.unwrap();
        assert_eq!(page.items.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(), [ids[1].as_str()], "{}", db.name);
        assert_eq!(c.list_jobs(&s.scope, &filter(None, None)).await.unwrap().items.len(), 4);

        let repo = c.repository(&s.scope, "main").await.unwrap();
        let snapshots: Vec<backstop_types::SnapshotInfo> = (0..5u64)
            .map(|i| backstop_types::SnapshotInfo {
                id: format!("{:064x}", i + 1),
                time: chrono::DateTime::from_timestamp_millis(T0 + i as i64 * 60_000).unwrap(),
                hostname: "h1".into(),
                paths: vec!["/home".into()],
                tags: vec![],
                summary: json!({"bytes_total": 1000, "bytes_added_stored": 10 * (i + 1)}),
            })
            .collect();
        c.reconcile_snapshots(&repo, &snapshots).await.unwrap();
        let usage = c.snapshot_usage(&s.scope, 2).await.unwrap();
        assert_eq!(usage.len(), 1, "{}", db.name);
        let u = &usage[0];
        assert_eq!((u.snapshots, u.total_bytes), (5, 5000), "{}", db.name);
        // Two points asked for: every third snapshot, and the last: 10+20+30 = 60, then 150 in all.
        assert_eq!(u.growth.iter().map(|(_, b)| *b).collect::<Vec<_>>(), [60, 150], "{}", db.name);
        assert!(c.snapshot_usage(&Scope::Tenant("other".into()), 200).await.unwrap().is_empty());
        // A page of the list, and the next one after its last.
        use backstop_catalog::resources::SnapshotFilter;
        let page = c.snapshots_page(&s.scope, &SnapshotFilter::default(), 2).await.unwrap();
        assert_eq!(
            page.iter().map(|s| s.info.id.clone()).collect::<Vec<_>>(),
            [format!("{:064x}", 1), format!("{:064x}", 2)]
        );
        let last = &page[1].info;
        let after = SnapshotFilter {
            after: Some((last.time.timestamp_millis(), &last.id, &page[1].repository)),
            ..Default::default()
        };
        let next = c.snapshots_page(&s.scope, &after, 10).await.unwrap();
        assert_eq!(next.len(), 3, "{}", db.name);
        let elsewhere = SnapshotFilter { host: Some("h2"), ..Default::default() };
        assert!(c.snapshots_page(&s.scope, &elsewhere, 10).await.unwrap().is_empty());
        let here = SnapshotFilter { repository: Some(&repo.id), host: Some("h1"), ..Default::default() };
        assert_eq!(c.snapshots_page(&s.scope, &here, 10).await.unwrap().len(), 5);
        assert!(c.snapshots_page(&Scope::Tenant("other".into()), &here, 10).await.unwrap().is_empty());
        assert_eq!(c.snapshot(&s.scope, &format!("{:064x}", 3)).await.unwrap().info.hostname, "h1");
        assert!(matches!(
            c.snapshot(&Scope::Tenant("other".into()), &format!("{:064x}", 3)).await,
            Err(Error::NotFound(_))
        ));

        // A manifest's claims cannot overflow the sums: each counts for at most 1 PiB.
        let mut huge: Vec<SnapshotInfo> = snapshots.clone();
        for i in 0..3u64 {
            huge.push(SnapshotInfo {
                id: format!("{:064x}", 100 + i),
                summary: json!({"bytes_total": u64::MAX, "bytes_added_stored": u64::MAX}),
                ..snapshots[0].clone()
            });
        }
        c.reconcile_snapshots(&repo, &huge).await.unwrap();
        let usage = c.snapshot_usage(&s.scope, 200).await.unwrap();
        assert_eq!(usage[0].snapshots, 8, "{}", db.name);
        assert!(usage[0].total_bytes >= 3 << 50, "{}: {}", db.name, usage[0].total_bytes);
        c.reconcile_snapshots(&repo, &snapshots).await.unwrap();

        let pools = c.regions(&s.scope, T0).await.unwrap();
        assert_eq!(pools.len(), 1, "{}", db.name);
        assert_eq!((pools[0].region.as_str(), pools[0].workers, pools[0].running), ("eu", 1, 0));

        let update = backstop_types::SourceUpdate {
            host: Some("h2".into()),
            config: json!({"paths": ["/srv"]}),
            secrets: serde_json::Value::Null.into(),
        };
        let changed = c.update_source(&s.scope, "home", &update).await.unwrap();
        assert_eq!((changed.host.as_deref(), &changed.config), (Some("h2"), &json!({"paths": ["/srv"]})));
        assert_eq!(c.source_secrets(&s.scope, "home").await.unwrap(), json!({}), "the stored secrets stay");
        assert!(matches!(
            c.update_source(&Scope::Tenant("other".into()), "home", &update).await,
            Err(Error::NotFound(_))
        ));
    }
}

/// A catalog of version 5 (before `last_success` and the snapshots' sizes)
/// gets both filled from what it holds when it is opened by this version.
#[tokio::test(flavor = "multi_thread")]
async fn migration_6_fills_the_ui_figures_from_what_was_there() {
    for db in both().await {
        let c = &db.catalog;
        let s = setup(c, "acme", 4, "h1", Chain::default()).await;
        let (j, _) = c.enqueue(job(&s, JobKind::Backup, "h1"), T0).await.unwrap();
        let claim = c.claim("w1", "eu", T0 + 1).await.unwrap().expect("a claim");
        c.complete(&j.id, &done(claim.attempt, ok()), T0 + 2).await.unwrap();
        let repo = c.repository(&s.scope, "main").await.unwrap();
        let snap = SnapshotInfo {
            id: format!("{:064x}", 7),
            time: chrono::DateTime::from_timestamp_millis(T0).unwrap(),
            hostname: "h1".into(),
            paths: vec!["/home".into()],
            tags: vec![],
            summary: json!({"bytes_total": 4096, "bytes_added_stored": 512}),
        };
        c.reconcile_snapshots(&repo, &[snap]).await.unwrap();
        // Back to version 5: what migration 6 made is gone.
        for sql in [
            "DELETE FROM schema_version WHERE version = 6",
            "DROP TABLE last_success",
            "DROP INDEX snapshots_by_id",
            "ALTER TABLE snapshots DROP COLUMN bytes_total",
            "ALTER TABLE snapshots DROP COLUMN bytes_stored",
        ] {
            sqlx::query(sql).execute(c.pool()).await.unwrap();
        }
        let again = Catalog::connect(&db.url, db.key.clone(), config()).await.unwrap();
        let latest = again.latest_jobs(&s.scope, JobKind::Backup, backstop_types::Per::Source).await.unwrap();
        assert_eq!(latest.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(), [j.id.as_str()], "{}", db.name);
        let usage = again.snapshot_usage(&s.scope, 200).await.unwrap();
        assert_eq!((usage[0].total_bytes, usage[0].growth.last().map(|p| p.1)), (4096, Some(512)), "{}", db.name);
    }
}
