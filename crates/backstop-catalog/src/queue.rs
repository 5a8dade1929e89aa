//! The job queue. Jobs move `queued → running → succeeded | failed | dead |
//! cancelled`; a claim makes a new attempt, and every heartbeat and
//! completion names its attempt, so one that lost its lease changes
//! nothing ([`Error::StaleAttempt`]).
//!
//! Claiming is one short transaction: on PostgreSQL it takes an advisory
//! lock per region (so concurrency limits hold across coordinators) and
//! locks the chosen row `FOR UPDATE SKIP LOCKED`; on SQLite the catalog's
//! single connection makes the transaction exclusive. Among eligible jobs
//! the claim picks the tenant with the fewest running jobs, then the one
//! served least recently, then its oldest job — so one tenant's burst
//! delays another's job by at most one slot. Limits: per repository
//! (`max_concurrent`), per source host ([`QueueConfig::host_limit`]), per
//! region ([`QueueConfig::region_limit`]), and maintenance (retention,
//! prune) never beside anything else on its repository. A queued job that
//! is held back says why in `wait_reason`.

use std::collections::HashMap;
use std::time::Duration;

use backstop_types::params::{BackupParams, RetentionParams, VerifyParams};
use backstop_types::{
    BackupResult, Claim, Completion, EventKind, Heartbeat, HeartbeatReply, Job, JobEvent, JobKind, JobParams,
    JobProgress, JobState, LogLevel, LogLine, Outcome, Page, Plan, RepositoryAccess, Retention, Secret, SourceAccess,
};
use serde_json::{Value, json};
use sqlx::{AnyConnection, Row, any::AnyRow};

use crate::resources::source_kind;
use crate::scope::Scope;
use crate::secrets::RepositorySecret;
use crate::{Catalog, DbKind, Error, Result, new_id, opt_time, time};

/// The longest deadline and the most attempts a job may have.
pub use backstop_types::{MAX_ATTEMPTS, MAX_DEADLINE_SECONDS};

/// Queue behaviour; the defaults suit production, tests shorten them.
#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// How long a claim or heartbeat holds a job.
    pub lease: Duration,
    /// Retry backoff: `base · 2^(attempt-1)`, at most `max`.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Jobs running at once against one source host.
    pub host_limit: u32,
    /// Jobs running at once in one region (none: only the workers' own
    /// concurrency limits).
    pub region_limit: Option<u32>,
    pub default_max_attempts: u32,
    /// Events kept per job (progress samples beyond it are dropped; state
    /// changes and log lines are always kept).
    pub max_progress_events: u32,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            lease: Duration::from_secs(60),
            backoff_base: Duration::from_secs(15),
            backoff_max: Duration::from_secs(15 * 60),
            host_limit: 2,
            region_limit: None,
            default_max_attempts: 3,
            max_progress_events: 2000,
        }
    }
}

impl QueueConfig {
    /// The wait before retry number `attempt` (1-based: after the first failure).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.saturating_sub(1).min(20)).unwrap_or(u32::MAX);
        self.backoff_base.saturating_mul(factor).min(self.backoff_max)
    }
}

/// A job to insert.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub tenant: String,
    /// What the job does, and with what: its kind is the parameters' kind.
    pub params: JobParams,
    pub plan: Option<String>,
    pub source: Option<String>,
    pub repository: String,
    pub region: String,
    pub host: Option<String>,
    pub max_attempts: u32,
    pub deadline_seconds: Option<u64>,
    /// Two inserts with one key (per tenant) make one job.
    pub idempotency_key: Option<String>,
    /// A digest of the request that carried `idempotency_key`: the same key
    /// with another request is refused ([`Error::KeyReused`]).
    pub request_digest: Option<String>,
    pub parent: Option<String>,
    pub step: Option<String>,
    /// Do not start before (scheduler jitter).
    pub not_before_ms: Option<i64>,
}

/// What [`Catalog::list_jobs`] returns.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub state: Option<JobState>,
    pub kind: Option<JobKind>,
    pub plan: Option<String>,
    pub repository: Option<String>,
    pub source: Option<String>,
    /// Jobs created at or after this time (ms since the epoch)…
    pub created_from_ms: Option<i64>,
    /// …and before this one.
    pub created_before_ms: Option<i64>,
    /// Jobs whose id sorts after this one (the previous page's cursor).
    pub cursor: Option<String>,
    pub limit: u32,
}

/// What one reaper pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReapReport {
    /// Expired leases put back in the queue.
    pub requeued: u32,
    /// Expired leases on their last attempt.
    pub dead: u32,
    /// Running jobs stopped by their deadline.
    pub deadline: u32,
    /// Expired leases of jobs whose cancellation was asked for.
    pub cancelled: u32,
}

pub(crate) const JOB_COLUMNS: &str = "id, tenant, kind, plan_id, source_id, repository_id, region, host, params, \
     state, wait_reason, attempt, max_attempts, lease_owner, lease_expires_ms, not_before_ms, deadline_s, \
     idempotency_key, parent_id, step, cancel_requested, created_ms, started_ms, finished_ms, progress, result, error";

fn json_col(row: &AnyRow, col: &str) -> Result<Option<Value>> {
    let text: Option<String> = row.try_get(col)?;
    text.map(|t| serde_json::from_str(&t).map_err(|e| Error::Corrupt(format!("column {col}: {e}")))).transpose()
}

/// The `kind` column of a job row.
fn kind_of(row: &AnyRow) -> Result<JobKind> {
    let kind: String = row.try_get("kind")?;
    JobKind::parse(&kind).ok_or_else(|| Error::Corrupt(format!("unknown job kind {kind:?}")))
}

pub(crate) fn job_from_row(row: &AnyRow) -> Result<Job> {
    let state: String = row.try_get("state")?;
    let progress = json_col(row, "progress")?
        .map(serde_json::from_value::<JobProgress>)
        .transpose()
        .map_err(|e| Error::Corrupt(format!("job progress: {e}")))?;
    Ok(Job {
        id: row.try_get("id")?,
        tenant: row.try_get("tenant")?,
        kind: kind_of(row)?,
        state: JobState::parse(&state).ok_or_else(|| Error::Corrupt(format!("unknown job state {state:?}")))?,
        wait_reason: row.try_get("wait_reason")?,
        plan: row.try_get("plan_id")?,
        source: row.try_get("source_id")?,
        repository: row.try_get("repository_id")?,
        region: row.try_get("region")?,
        host: row.try_get("host")?,
        params: json_col(row, "params")?.unwrap_or(Value::Null),
        attempt: row.try_get::<i64, _>("attempt")? as u32,
        max_attempts: row.try_get::<i64, _>("max_attempts")? as u32,
        lease_owner: row.try_get("lease_owner")?,
        lease_expires: opt_time(row.try_get("lease_expires_ms")?),
        not_before: time(row.try_get("not_before_ms")?),
        deadline_seconds: row.try_get::<Option<i64>, _>("deadline_s")?.map(|d| d as u64),
        idempotency_key: row.try_get("idempotency_key")?,
        parent: row.try_get("parent_id")?,
        step: row.try_get("step")?,
        cancel_requested: row.try_get::<i64, _>("cancel_requested")? != 0,
        created: time(row.try_get("created_ms")?),
        started: opt_time(row.try_get("started_ms")?),
        finished: opt_time(row.try_get("finished_ms")?),
        progress,
        result: json_col(row, "result")?,
        error: row.try_get("error")?,
    })
}

/// A running job, as the claim's limit checks see it.
struct Running {
    tenant: String,
    repository: String,
    host: Option<String>,
    region: String,
    kind: JobKind,
}

struct Candidate {
    id: String,
    repository: String,
    host: Option<String>,
    kind: JobKind,
    created_ms: i64,
    wait_reason: Option<String>,
}

/// How many jobs may run at once on a candidate's repository and on its
/// source's host.
#[derive(Debug, Clone, Copy)]
struct Limits {
    repository: u32,
    host: u32,
}

/// Why candidate `c` may not start now, if it may not: maintenance runs
/// alone on its repository and goes before younger jobs there; a
/// repository and a source host run at most their `limits`.
/// (`maintenance`: the oldest queued maintenance job of each repository.)
fn blocked(c: &Candidate, running: &[Running], maintenance: &HashMap<String, i64>, limits: Limits) -> Option<String> {
    let Limits { repository: repo_limit, host: host_limit } = limits;
    let on_repo: Vec<&Running> = running.iter().filter(|r| r.repository == c.repository).collect();
    if c.kind.is_maintenance() {
        if !on_repo.is_empty() {
            return Some(format!(
                "maintenance waits for {} running job(s) on repository {} to finish",
                on_repo.len(),
                c.repository
            ));
        }
    } else {
        if on_repo.iter().any(|r| r.kind.is_maintenance()) {
            return Some(format!("maintenance (prune) is running on repository {}", c.repository));
        }
        if maintenance.get(&c.repository).is_some_and(|&oldest| oldest < c.created_ms) {
            return Some(format!("queued maintenance of repository {} goes first", c.repository));
        }
    }
    if on_repo.len() as u32 >= repo_limit {
        return Some(format!("repository {} is busy ({} of {repo_limit} jobs running)", c.repository, on_repo.len()));
    }
    if let Some(host) = &c.host {
        let on_host = running.iter().filter(|r| r.host.as_deref() == Some(host.as_str())).count() as u32;
        if on_host >= host_limit {
            return Some(format!("source host {host} is busy ({on_host} of {host_limit} jobs running)"));
        }
    }
    None
}

/// Tenants waiting for a turn (each with its oldest startable job's
/// time), fairest first: fewest jobs running, then served longest ago
/// (`served`: a tenant's last claim), then the oldest job.
fn fair_order(waiting: Vec<(String, i64)>, running: &[Running], served: &HashMap<String, i64>) -> Vec<String> {
    let mut tenants: Vec<(usize, i64, i64, String)> = waiting
        .into_iter()
        .map(|(tenant, oldest)| {
            let busy = running.iter().filter(|j| j.tenant == tenant).count();
            let last = served.get(&tenant).copied().unwrap_or(0);
            (busy, last, oldest, tenant)
        })
        .collect();
    tenants.sort();
    tenants.into_iter().map(|(_, _, _, tenant)| tenant).collect()
}

impl Catalog {
    /// Insert a job, or return the existing one with the same idempotency
    /// key (`false`: nothing was inserted).
    pub async fn enqueue(&self, job: NewJob, now: i64) -> Result<(Job, bool)> {
        let mut tx = self.pool().begin().await?;
        let out = self.enqueue_in(&mut tx, job, now).await?;
        tx.commit().await?;
        Ok(out)
    }

    pub(crate) async fn enqueue_in(&self, conn: &mut AnyConnection, job: NewJob, now: i64) -> Result<(Job, bool)> {
        if job.max_attempts == 0 {
            return Err(Error::Invalid("max_attempts must be at least 1".into()));
        }
        if job.deadline_seconds.is_some_and(|d| d == 0 || d > MAX_DEADLINE_SECONDS) {
            return Err(Error::Invalid(format!(
                "deadline_seconds must be between 1 and {MAX_DEADLINE_SECONDS} (30 days)"
            )));
        }
        let id = new_id();
        let wait = format!("waiting for a worker of region {}", job.region);
        let inserted = sqlx::query(&self.sql(
            "INSERT INTO jobs (id, tenant, kind, plan_id, source_id, repository_id, region, host, params, state, \
             wait_reason, attempt, max_attempts, not_before_ms, deadline_s, idempotency_key, request_digest, \
             parent_id, step, cancel_requested, created_ms) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?, 0, ?, ?, ?, ?, ?, ?, ?, 0, ?) \
             ON CONFLICT (tenant, idempotency_key) DO NOTHING",
        ))
        .bind(&id)
        .bind(&job.tenant)
        .bind(job.params.kind().as_str())
        .bind(&job.plan)
        .bind(&job.source)
        .bind(&job.repository)
        .bind(&job.region)
        .bind(&job.host)
        .bind(job.params.to_value().to_string())
        .bind(&wait)
        .bind(job.max_attempts as i64)
        .bind(job.not_before_ms.unwrap_or(now).max(now))
        .bind(job.deadline_seconds.map(|d| d as i64))
        .bind(&job.idempotency_key)
        .bind(&job.request_digest)
        .bind(&job.parent)
        .bind(&job.step)
        .bind(now)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        if inserted == 0 {
            let key = job.idempotency_key.as_deref().unwrap_or_default();
            let row = sqlx::query(&self.sql(&format!(
                "SELECT {JOB_COLUMNS}, request_digest FROM jobs WHERE tenant = ? AND idempotency_key = ?"
            )))
            .bind(&job.tenant)
            .bind(key)
            .fetch_one(&mut *conn)
            .await?;
            let first: Option<String> = row.try_get("request_digest")?;
            if let (Some(first), Some(now)) = (&first, &job.request_digest)
                && first != now
            {
                return Err(Error::KeyReused(format!(
                    "the Idempotency-Key {:?} was used for a different request (job {}); use a new key for a new \
                     request",
                    key.strip_prefix("api:").unwrap_or(key),
                    row.try_get::<String, _>("id")?
                )));
            }
            return Ok((job_from_row(&row)?, false));
        }
        self.event(conn, &id, 0, EventKind::State, json!({"state": "queued", "wait_reason": wait}), now).await?;
        Ok((self.fetch_job(conn, &id).await?, true))
    }

    /// A job as it is now, within `conn`'s transaction.
    async fn fetch_job(&self, conn: &mut AnyConnection, id: &str) -> Result<Job> {
        let row = sqlx::query(&self.sql(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?")))
            .bind(id)
            .fetch_one(&mut *conn)
            .await?;
        job_from_row(&row)
    }

    pub(crate) async fn event(
        &self,
        conn: &mut AnyConnection,
        job: &str,
        attempt: u32,
        kind: EventKind,
        data: Value,
        now: i64,
    ) -> Result<()> {
        sqlx::query(&self.sql("INSERT INTO job_events (job_id, time_ms, attempt, kind, data) VALUES (?, ?, ?, ?, ?)"))
            .bind(job)
            .bind(now)
            .bind(attempt as i64)
            .bind(kind.as_str())
            .bind(data.to_string())
            .execute(&mut *conn)
            .await?;
        match self.kind() {
            DbKind::Sqlite => self.bell.ring(),
            // Delivered when the transaction commits, to every coordinator.
            DbKind::Postgres => {
                sqlx::query(&format!("SELECT pg_notify('{}', '')", crate::EVENTS_CHANNEL)).execute(&mut *conn).await?;
            }
        }
        Ok(())
    }

    async fn logs(&self, conn: &mut AnyConnection, job: &str, attempt: u32, logs: &[LogLine], now: i64) -> Result<()> {
        for line in logs {
            self.event(conn, job, attempt, EventKind::Log, json!({"level": line.level, "message": line.message}), now)
                .await?;
        }
        Ok(())
    }

    /// One job, if `scope` may see it.
    pub async fn job(&self, scope: &Scope, id: &str) -> Result<Job> {
        let (clause, tenant) = scope.clause("tenant");
        let sql = self.sql(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?{clause}"));
        let mut q = sqlx::query(&sql).bind(id);
        if let Some(t) = tenant {
            q = q.bind(t);
        }
        let row = q.fetch_optional(self.pool()).await?.ok_or_else(|| Error::NotFound(format!("job {id}")))?;
        job_from_row(&row)
    }

    /// Jobs, newest first, a page at a time.
    pub async fn list_jobs(&self, scope: &Scope, filter: &JobFilter) -> Result<Page<Job>> {
        let mut sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE 1 = 1");
        let mut texts: Vec<(&str, String)> = Vec::new();
        if let Scope::Tenant(t) = scope {
            texts.push(("tenant = ?", t.clone()));
        }
        if let Some(s) = filter.state {
            texts.push(("state = ?", s.as_str().into()));
        }
        if let Some(k) = filter.kind {
            texts.push(("kind = ?", k.as_str().into()));
        }
        for (clause, value) in [
            ("plan_id = ?", &filter.plan),
            ("repository_id = ?", &filter.repository),
            ("source_id = ?", &filter.source),
            ("id < ?", &filter.cursor),
        ] {
            if let Some(v) = value {
                texts.push((clause, v.clone()));
            }
        }
        let mut times: Vec<(&str, i64)> = Vec::new();
        if let Some(ms) = filter.created_from_ms {
            times.push(("created_ms >= ?", ms));
        }
        if let Some(ms) = filter.created_before_ms {
            times.push(("created_ms < ?", ms));
        }
        for clause in texts.iter().map(|(c, _)| c).chain(times.iter().map(|(c, _)| c)) {
            sql.push_str(" AND ");
            sql.push_str(clause);
        }
        let limit = filter.limit.clamp(1, 1000);
        sql.push_str(&format!(" ORDER BY id DESC LIMIT {}", limit + 1));
        let sql = self.sql(&sql);
        let mut q = sqlx::query(&sql);
        for (_, v) in &texts {
            q = q.bind(v);
        }
        for (_, v) in &times {
            q = q.bind(*v);
        }
        let rows = q.fetch_all(self.pool()).await?;
        let mut items = rows.iter().map(job_from_row).collect::<Result<Vec<_>>>()?;
        let next_cursor = if items.len() > limit as usize {
            items.truncate(limit as usize);
            items.last().map(|j| j.id.clone())
        } else {
            None
        };
        Ok(Page { items, next_cursor })
    }

    /// A job's events after event `after` (0: from the start), oldest first.
    pub async fn events(&self, scope: &Scope, job: &str, after: i64, limit: u32) -> Result<Vec<JobEvent>> {
        self.job(scope, job).await?;
        let rows = sqlx::query(&self.sql(
            "SELECT id, job_id, time_ms, attempt, kind, data FROM job_events WHERE job_id = ? AND id > ? \
             ORDER BY id LIMIT ?",
        ))
        .bind(job)
        .bind(after)
        .bind(limit.clamp(1, 10_000) as i64)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                let kind: String = row.try_get("kind")?;
                let data: String = row.try_get("data")?;
                Ok(JobEvent {
                    id: row.try_get("id")?,
                    job: row.try_get("job_id")?,
                    time: time(row.try_get("time_ms")?),
                    attempt: row.try_get::<i64, _>("attempt")? as u32,
                    kind: EventKind::parse(&kind)
                        .ok_or_else(|| Error::Corrupt(format!("unknown event kind {kind:?}")))?,
                    data: serde_json::from_str(&data).map_err(|e| Error::Corrupt(format!("event data: {e}")))?,
                })
            })
            .collect()
    }

    /// Claim the next job of `region` for `worker`, if one may run now:
    /// the region's tenants in fair order, each one's oldest jobs that no
    /// limit holds back, the first that no other coordinator holds.
    pub async fn claim(&self, worker: &str, region: &str, now: i64) -> Result<Option<Claim>> {
        let mut tx = self.pool().begin().await?;
        self.claim_lock(&mut tx, region).await?;
        self.saw_worker(&mut tx, worker, region, now).await?;
        let running = self.running(&mut tx).await?;
        if self.region_is_full(&running, region) {
            tx.commit().await?;
            return Ok(None);
        }
        let tenants = self.tenants_in_turn(&mut tx, region, &running, now).await?;
        let maintenance = if tenants.is_empty() { HashMap::new() } else { self.queued_maintenance(&mut tx).await? };
        let mut repo_limits: HashMap<String, u32> = HashMap::new();
        for tenant in tenants {
            for c in self.candidates(&mut tx, region, &tenant, now).await? {
                let limit = self.repository_limit(&mut tx, &mut repo_limits, &c.repository).await?;
                if let Some(reason) =
                    blocked(&c, &running, &maintenance, Limits { repository: limit, host: self.config.host_limit })
                {
                    self.note_wait(&mut tx, &c, &reason).await?;
                    continue;
                }
                let Some(job) = self.take(&mut tx, worker, region, &tenant, &c.id, now).await? else { continue };
                match self.claim_for(&mut tx, job).await {
                    Ok(claim) => {
                        tx.commit().await?;
                        return Ok(Some(claim));
                    }
                    Err(e @ (Error::NotFound(_) | Error::Corrupt(_))) => {
                        // The job cannot run: its repository or source is gone
                        // or unreadable. Fail it instead of claiming it forever.
                        drop(tx);
                        self.fail_unrunnable(&c.id, &e.to_string(), now).await?;
                        return Box::pin(self.claim(worker, region, now)).await;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        tx.commit().await?;
        Ok(None)
    }

    /// One claim at a time per region across coordinators (PostgreSQL; a
    /// SQLite write transaction is alone anyway).
    async fn claim_lock(&self, conn: &mut AnyConnection, region: &str) -> Result<()> {
        if self.kind() == DbKind::Postgres {
            sqlx::query(&self.sql("SELECT pg_advisory_xact_lock(?)"))
                .bind(region_lock_key(region))
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }

    /// Every region with workers or jobs: the workers that asked for work
    /// since `seen_since` or hold a running job, and the jobs of `scope`
    /// running and queued there.
    pub async fn regions(&self, scope: &Scope, seen_since: i64) -> Result<Vec<backstop_types::RegionPool>> {
        use std::collections::{BTreeMap, HashSet};
        let mut workers: BTreeMap<String, HashSet<String>> = BTreeMap::new();
        let seen = sqlx::query(&self.sql("SELECT id, region FROM workers WHERE last_seen_ms >= ?"))
            .bind(seen_since)
            .fetch_all(self.pool())
            .await?;
        let busy = sqlx::query(&self.sql(
            "SELECT DISTINCT lease_owner AS id, region FROM jobs WHERE state = 'running' AND lease_owner IS NOT NULL",
        ))
        .fetch_all(self.pool())
        .await?;
        for row in seen.iter().chain(&busy) {
            let (id, region): (String, String) = (row.try_get("id")?, row.try_get("region")?);
            workers.entry(region).or_default().insert(id);
        }
        let mut pools: BTreeMap<String, backstop_types::RegionPool> = workers
            .into_iter()
            .map(|(region, ids)| {
                let pool = backstop_types::RegionPool {
                    region: region.clone(),
                    workers: ids.len() as u32,
                    running: 0,
                    queued: 0,
                };
                (region, pool)
            })
            .collect();
        let (clause, tenant) = scope.clause("tenant");
        let sql = format!(
            "SELECT region, state, COUNT(*) AS n FROM jobs WHERE state IN ('running', 'queued'){clause} GROUP BY region, state"
        );
        let sql = self.sql(&sql);
        let mut q = sqlx::query(&sql);
        if let Some(t) = tenant {
            q = q.bind(t);
        }
        for row in q.fetch_all(self.pool()).await? {
            let (region, state, n): (String, String, i64) =
                (row.try_get("region")?, row.try_get("state")?, row.try_get("n")?);
            let pool = pools.entry(region.clone()).or_insert(backstop_types::RegionPool {
                region,
                workers: 0,
                running: 0,
                queued: 0,
            });
            if state == "running" { pool.running = n as u32 } else { pool.queued = n as u32 }
        }
        Ok(pools.into_values().collect())
    }

    /// The worker asked for work now (`worker_seen`).
    async fn saw_worker(&self, conn: &mut AnyConnection, worker: &str, region: &str, now: i64) -> Result<()> {
        sqlx::query(&self.sql(
            "INSERT INTO workers (id, region, last_seen_ms) VALUES (?, ?, ?) \
             ON CONFLICT (id) DO UPDATE SET region = excluded.region, last_seen_ms = excluded.last_seen_ms",
        ))
        .bind(worker)
        .bind(region)
        .bind(now)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    /// Whether the region runs as many jobs as its limit allows.
    fn region_is_full(&self, running: &[Running], region: &str) -> bool {
        self.config
            .region_limit
            .is_some_and(|limit| running.iter().filter(|r| r.region == region).count() as u32 >= limit)
    }

    /// The tenants with a job of `region` that may start now (none in
    /// backoff), fairest first ([`fair_order`]).
    async fn tenants_in_turn(
        &self,
        conn: &mut AnyConnection,
        region: &str,
        running: &[Running],
        now: i64,
    ) -> Result<Vec<String>> {
        // Tenants with queued jobs in the region: one index seek per tenant
        // (a loose index scan), not a read of every queued job.
        let queued_tenants: Vec<String> = sqlx::query_scalar(&self.sql(
            "WITH RECURSIVE t(tenant) AS ( \
               SELECT MIN(tenant) FROM jobs WHERE state = 'queued' AND region = ? \
               UNION ALL \
               SELECT (SELECT MIN(j.tenant) FROM jobs j WHERE j.state = 'queued' AND j.region = ? AND j.tenant > t.tenant) \
               FROM t WHERE t.tenant IS NOT NULL \
             ) SELECT tenant FROM t WHERE tenant IS NOT NULL",
        ))
        .bind(region)
        .bind(region)
        .fetch_all(&mut *conn)
        .await?;
        // Each one's oldest job that may start now (not in backoff).
        let mut waiting: Vec<(String, i64)> = Vec::new();
        for tenant in queued_tenants {
            let oldest: Option<i64> = sqlx::query_scalar(&self.sql(
                "SELECT created_ms FROM jobs WHERE state = 'queued' AND region = ? AND tenant = ? \
                 AND not_before_ms <= ? ORDER BY created_ms LIMIT 1",
            ))
            .bind(region)
            .bind(&tenant)
            .bind(now)
            .fetch_optional(&mut *conn)
            .await?;
            if let Some(oldest) = oldest {
                waiting.push((tenant, oldest));
            }
        }
        if waiting.is_empty() {
            return Ok(Vec::new());
        }
        let served: HashMap<String, i64> =
            sqlx::query(&self.sql("SELECT tenant, last_claim_ms FROM fair_share WHERE region = ?"))
                .bind(region)
                .fetch_all(&mut *conn)
                .await?
                .iter()
                .map(|r| Ok((r.try_get("tenant")?, r.try_get("last_claim_ms")?)))
                .collect::<Result<_>>()?;
        Ok(fair_order(waiting, running, &served))
    }

    /// The oldest queued maintenance job of each repository: it holds back
    /// younger jobs there.
    async fn queued_maintenance(&self, conn: &mut AnyConnection) -> Result<HashMap<String, i64>> {
        sqlx::query(
            "SELECT repository_id, MIN(created_ms) AS oldest FROM jobs \
             WHERE state = 'queued' AND kind IN ('retention', 'prune') GROUP BY repository_id",
        )
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|r| Ok((r.try_get("repository_id")?, r.try_get("oldest")?)))
        .collect()
    }

    /// A tenant's oldest jobs of `region` that may start now, at most 64.
    async fn candidates(
        &self,
        conn: &mut AnyConnection,
        region: &str,
        tenant: &str,
        now: i64,
    ) -> Result<Vec<Candidate>> {
        let rows = sqlx::query(&self.sql(
            "SELECT id, repository_id, host, kind, created_ms, wait_reason FROM jobs \
             WHERE state = 'queued' AND region = ? AND tenant = ? AND not_before_ms <= ? \
             ORDER BY created_ms, id LIMIT 64",
        ))
        .bind(region)
        .bind(tenant)
        .bind(now)
        .fetch_all(&mut *conn)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Candidate {
                    id: r.try_get("id")?,
                    repository: r.try_get("repository_id")?,
                    host: r.try_get("host")?,
                    kind: kind_of(r)?,
                    created_ms: r.try_get("created_ms")?,
                    wait_reason: r.try_get("wait_reason")?,
                })
            })
            .collect()
    }

    /// How many jobs may run on a repository at once (read once per claim).
    async fn repository_limit(
        &self,
        conn: &mut AnyConnection,
        known: &mut HashMap<String, u32>,
        repository: &str,
    ) -> Result<u32> {
        if let Some(limit) = known.get(repository) {
            return Ok(*limit);
        }
        let limit: Option<i64> = sqlx::query_scalar(&self.sql("SELECT max_concurrent FROM repositories WHERE id = ?"))
            .bind(repository)
            .fetch_optional(&mut *conn)
            .await?;
        let limit = limit.unwrap_or(4).max(1) as u32;
        known.insert(repository.to_string(), limit);
        Ok(limit)
    }

    /// Say why a queued job waits, when the reason changed.
    async fn note_wait(&self, conn: &mut AnyConnection, c: &Candidate, reason: &str) -> Result<()> {
        if c.wait_reason.as_deref() != Some(reason) {
            sqlx::query(&self.sql("UPDATE jobs SET wait_reason = ? WHERE id = ? AND state = 'queued'"))
                .bind(reason)
                .bind(&c.id)
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }

    /// Give queued job `id` to `worker`: a new attempt with a lease, the
    /// tenant's turn recorded. `None` when another coordinator holds the
    /// row (a cancel, the reaper).
    async fn take(
        &self,
        conn: &mut AnyConnection,
        worker: &str,
        region: &str,
        tenant: &str,
        id: &str,
        now: i64,
    ) -> Result<Option<Job>> {
        let locked: Option<String> = sqlx::query_scalar(
            &self.sql(&format!("SELECT id FROM jobs WHERE id = ? AND state = 'queued'{}", self.skip_locked())),
        )
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
        if locked.is_none() {
            return Ok(None);
        }
        let expires = now + self.config.lease.as_millis() as i64;
        sqlx::query(&self.sql(
            "UPDATE jobs SET state = 'running', attempt = attempt + 1, lease_owner = ?, \
             lease_expires_ms = ?, started_ms = ?, wait_reason = NULL, progress = NULL \
             WHERE id = ? AND state = 'queued'",
        ))
        .bind(worker)
        .bind(expires)
        .bind(now)
        .bind(id)
        .execute(&mut *conn)
        .await?;
        sqlx::query(&self.sql(
            "INSERT INTO fair_share (region, tenant, last_claim_ms) VALUES (?, ?, ?) \
             ON CONFLICT (region, tenant) DO UPDATE SET last_claim_ms = excluded.last_claim_ms",
        ))
        .bind(region)
        .bind(tenant)
        .bind(now)
        .execute(&mut *conn)
        .await?;
        let job = self.fetch_job(conn, id).await?;
        let data = json!({"state": "running", "attempt": job.attempt, "worker": worker});
        self.event(conn, &job.id, job.attempt, EventKind::State, data, now).await?;
        Ok(Some(job))
    }

    async fn fail_unrunnable(&self, id: &str, error: &str, now: i64) -> Result<()> {
        let mut tx = self.pool().begin().await?;
        let done = sqlx::query(&self.sql(
            "UPDATE jobs SET state = 'failed', error = ?, finished_ms = ?, wait_reason = NULL \
             WHERE id = ? AND state = 'queued'",
        ))
        .bind(error)
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if done > 0 {
            self.event(&mut tx, id, 0, EventKind::State, json!({"state": "failed", "error": error}), now).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn running(&self, conn: &mut AnyConnection) -> Result<Vec<Running>> {
        let rows = sqlx::query("SELECT tenant, repository_id, host, region, kind FROM jobs WHERE state = 'running'")
            .fetch_all(&mut *conn)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(Running {
                    tenant: r.try_get("tenant")?,
                    repository: r.try_get("repository_id")?,
                    host: r.try_get("host")?,
                    region: r.try_get("region")?,
                    kind: kind_of(r)?,
                })
            })
            .collect()
    }

    /// The claim's payload: the repository's and source's access (secrets
    /// opened), and the plan's retention for retention jobs.
    async fn claim_for(&self, conn: &mut AnyConnection, job: Job) -> Result<Claim> {
        let repo = sqlx::query(&self.sql("SELECT id, location, secret FROM repositories WHERE id = ?"))
            .bind(&job.repository)
            .fetch_optional(&mut *conn)
            .await?
            .ok_or_else(|| Error::NotFound(format!("repository {} of job {}", job.repository, job.id)))?;
        let repo_id: String = repo.try_get("id")?;
        let secret: RepositorySecret = self.open_json(&repo_id, &repo.try_get::<String, _>("secret")?)?;
        let repository = RepositoryAccess {
            id: repo_id,
            location: repo.try_get("location")?,
            password: secret.password,
            options: secret.options,
        };
        let source = match &job.source {
            None => None,
            Some(id) => {
                let row = sqlx::query(&self.sql("SELECT id, kind, host, config, secret FROM sources WHERE id = ?"))
                    .bind(id)
                    .fetch_optional(&mut *conn)
                    .await?
                    .ok_or_else(|| Error::NotFound(format!("source {id} of job {}", job.id)))?;
                let sid: String = row.try_get("id")?;
                let secrets: Secret<Value> = self.open_json(&sid, &row.try_get::<String, _>("secret")?)?;
                Some(SourceAccess {
                    kind: source_kind(&row)?,
                    host: row.try_get("host")?,
                    config: json_col(&row, "config")?.unwrap_or(Value::Null),
                    secrets,
                    id: sid,
                })
            }
        };
        let retention = match (&job.plan, job.kind) {
            (Some(plan), JobKind::Retention) => {
                let text: Option<String> = sqlx::query_scalar(&self.sql("SELECT retention FROM plans WHERE id = ?"))
                    .bind(plan)
                    .fetch_optional(&mut *conn)
                    .await?;
                match text {
                    Some(t) => Some(
                        serde_json::from_str::<Retention>(&t)
                            .map_err(|e| Error::Corrupt(format!("plan {plan} retention: {e}")))?,
                    ),
                    None => return Err(Error::NotFound(format!("plan {plan} of job {}", job.id))),
                }
            }
            _ => None,
        };
        let lease_seconds = self.config.lease.as_secs().max(1);
        // What the job may reach is the coordinator's to say (its tenant
        // roots and the tenant's grants): nothing until it does.
        let reach = backstop_types::Reach::nothing();
        Ok(Claim { attempt: job.attempt, job, lease_seconds, repository, source, retention, reach })
    }

    pub(crate) fn open_json<T: serde::de::DeserializeOwned>(&self, owner: &str, sealed: &str) -> Result<T> {
        let plain = self.key.open(owner, sealed)?;
        serde_json::from_slice(&plain).map_err(|e| Error::Corrupt(format!("the secret of {owner}: {e}")))
    }

    /// The attempt still holds its job: extend the lease, record progress
    /// and log lines. Tells the worker whether to stop.
    pub async fn heartbeat(&self, job: &str, hb: &Heartbeat, now: i64) -> Result<HeartbeatReply> {
        let mut tx = self.pool().begin().await?;
        let expires = now + self.config.lease.as_millis() as i64;
        let progress = hb.progress.as_ref().map(|p| serde_json::to_string(p).expect("progress serialises"));
        let updated = sqlx::query(&self.sql(
            "UPDATE jobs SET lease_expires_ms = ?, progress = COALESCE(?, progress) \
             WHERE id = ? AND attempt = ? AND state = 'running'",
        ))
        .bind(expires)
        .bind(&progress)
        .bind(job)
        .bind(hb.attempt as i64)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated == 0 {
            return Err(Error::StaleAttempt { job: job.to_string(), attempt: hb.attempt });
        }
        if let Some(p) = &hb.progress {
            let count: i64 =
                sqlx::query_scalar(&self.sql("SELECT COUNT(*) FROM job_events WHERE job_id = ? AND kind = 'progress'"))
                    .bind(job)
                    .fetch_one(&mut *tx)
                    .await?;
            if count < self.config.max_progress_events as i64 {
                let data = serde_json::to_value(p).expect("progress serialises");
                self.event(&mut tx, job, hb.attempt, EventKind::Progress, data, now).await?;
            }
        }
        self.logs(&mut tx, job, hb.attempt, &hb.logs, now).await?;
        let cancel: i64 = sqlx::query_scalar(&self.sql("SELECT cancel_requested FROM jobs WHERE id = ?"))
            .bind(job)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(HeartbeatReply { cancel: cancel != 0, lease_expires: time(expires) })
    }

    /// End an attempt. A success records the snapshot and inserts the
    /// plan's next chain step in the same transaction; a retryable failure
    /// requeues with backoff until `max_attempts`.
    pub async fn complete(&self, id: &str, c: &Completion, now: i64) -> Result<Job> {
        let mut tx = self.pool().begin().await?;
        let row = sqlx::query(&self.sql(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?{}", self.for_update())))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| Error::NotFound(format!("job {id}")))?;
        let job = job_from_row(&row)?;
        if job.state != JobState::Running || job.attempt != c.attempt {
            return Err(Error::StaleAttempt { job: id.to_string(), attempt: c.attempt });
        }
        self.logs(&mut tx, id, c.attempt, &c.logs, now).await?;
        let (state, error, not_before, wait) = match &c.outcome {
            Outcome::Succeeded { .. } => (JobState::Succeeded, None, None, None),
            Outcome::Cancelled => (JobState::Cancelled, None, None, None),
            // A cancelled job is not retried, whatever the worker says.
            Outcome::Failed { error, .. } if job.cancel_requested => {
                (JobState::Cancelled, Some(error.clone()), None, None)
            }
            Outcome::Failed { error, retryable } if *retryable && job.attempt < job.max_attempts => {
                let backoff = self.config.backoff(job.attempt);
                let wait = format!(
                    "retrying in {} s (attempt {} of {} failed: {error})",
                    backoff.as_secs(),
                    job.attempt,
                    job.max_attempts
                );
                (JobState::Queued, Some(error.clone()), Some(now + backoff.as_millis() as i64), Some(wait))
            }
            Outcome::Failed { error, retryable: true } => (JobState::Dead, Some(error.clone()), None, None),
            Outcome::Failed { error, retryable: false } => (JobState::Failed, Some(error.clone()), None, None),
        };
        let result = match &c.outcome {
            Outcome::Succeeded { result, .. } => Some(result.to_string()),
            _ => None,
        };
        let finished = state.is_finished().then_some(now);
        sqlx::query(&self.sql(
            "UPDATE jobs SET state = ?, error = COALESCE(?, error), result = ?, finished_ms = ?, \
             not_before_ms = COALESCE(?, not_before_ms), wait_reason = ?, lease_owner = NULL, \
             lease_expires_ms = NULL WHERE id = ? AND attempt = ?",
        ))
        .bind(state.as_str())
        .bind(&error)
        .bind(&result)
        .bind(finished)
        .bind(not_before)
        .bind(&wait)
        .bind(id)
        .bind(c.attempt as i64)
        .execute(&mut *tx)
        .await?;
        let mut data = json!({"state": state.as_str(), "attempt": c.attempt});
        if let Some(e) = &error {
            data["error"] = json!(e);
        }
        if let Some(w) = &wait {
            data["wait_reason"] = json!(w);
        }
        self.event(&mut tx, id, c.attempt, EventKind::State, data, now).await?;
        if let Outcome::Succeeded { snapshot, .. } = &c.outcome {
            if let Some(snap) = snapshot {
                self.record_snapshot(&mut tx, &job, snap).await?;
            }
            self.record_success(&mut tx, &job).await?;
            let done = Job { result: Some(result_value(&c.outcome)), ..job };
            self.chain_next(&mut tx, &done, now).await?;
        }
        let job = self.fetch_job(&mut tx, id).await?;
        tx.commit().await?;
        Ok(job)
    }

    /// The plan's next step after `job` succeeded: backup → verify →
    /// retention. Idempotent per `(parent, step)`.
    async fn chain_next(&self, conn: &mut AnyConnection, job: &Job, now: i64) -> Result<()> {
        let Some(plan) = &job.plan else { return Ok(()) };
        let chain: Option<String> = sqlx::query_scalar(&self.sql("SELECT chain FROM plans WHERE id = ?"))
            .bind(plan)
            .fetch_optional(&mut *conn)
            .await?;
        let Some(chain) = chain else { return Ok(()) };
        let chain: backstop_types::Chain =
            serde_json::from_str(&chain).map_err(|e| Error::Corrupt(format!("plan {plan} chain: {e}")))?;
        let next = match job.kind {
            JobKind::Backup if chain.verify_percent > 0 => Some((JobKind::Verify, "verify")),
            JobKind::Backup | JobKind::Verify if chain.retention => Some((JobKind::Retention, "retention")),
            _ => None,
        };
        let Some((kind, step)) = next else { return Ok(()) };
        // The plan's name goes along: retention applies the plan's policy
        // to the plan's own snapshots only (tagged `plan:<name>`).
        let plan_name = JobParams::of(job).ok().and_then(|p| p.plan().map(str::to_string));
        let params = match kind {
            JobKind::Verify => JobParams::Verify(VerifyParams {
                snapshot: BackupResult::of(job).map(|r| r.snapshot_id),
                percent: Some(chain.verify_percent),
                plan: plan_name,
            }),
            _ => JobParams::Retention(RetentionParams { plan: plan_name }),
        };
        let new = NewJob {
            tenant: job.tenant.clone(),
            params,
            plan: Some(plan.clone()),
            source: None,
            repository: job.repository.clone(),
            region: job.region.clone(),
            host: None,
            max_attempts: job.max_attempts,
            deadline_seconds: None,
            idempotency_key: Some(format!("chain:{}:{step}", job.id)),
            request_digest: None,
            parent: Some(job.id.clone()),
            step: Some(step.to_string()),
            not_before_ms: None,
        };
        self.enqueue_in(conn, new, now).await?;
        Ok(())
    }

    /// Queue the plan's backup now (`backstop plans run`). With an
    /// idempotency key, a repeated request returns the first job.
    pub async fn run_plan(
        &self,
        scope: &Scope,
        id_or_name: &str,
        idempotency_key: Option<String>,
        now: i64,
    ) -> Result<(backstop_types::Job, bool)> {
        let plan = self.plan(scope, id_or_name).await?;
        let mut tx = self.pool().begin().await?;
        let keyed = idempotency_key.is_some();
        let mut job = self.plan_job(&mut tx, &plan, idempotency_key.map(|k| format!("api:{k}")), None).await?;
        // Running one plan is one request, however it is asked for.
        job.request_digest = keyed.then(|| format!("plan-run:{}", plan.id));
        let out = self.enqueue_in(&mut tx, job, now).await?;
        tx.commit().await?;
        Ok(out)
    }

    /// The backup job of `plan`.
    pub(crate) async fn plan_job(
        &self,
        conn: &mut AnyConnection,
        plan: &Plan,
        idempotency_key: Option<String>,
        not_before_ms: Option<i64>,
    ) -> Result<NewJob> {
        let region: Option<String> = sqlx::query_scalar(&self.sql("SELECT region FROM repositories WHERE id = ?"))
            .bind(&plan.repository)
            .fetch_optional(&mut *conn)
            .await?;
        let region =
            region.ok_or_else(|| Error::NotFound(format!("repository {} of plan {}", plan.repository, plan.name)))?;
        let host: Option<Option<String>> = sqlx::query_scalar(&self.sql("SELECT host FROM sources WHERE id = ?"))
            .bind(&plan.source)
            .fetch_optional(&mut *conn)
            .await?;
        let host = host.ok_or_else(|| Error::NotFound(format!("source {} of plan {}", plan.source, plan.name)))?;
        Ok(NewJob {
            tenant: plan.tenant.clone(),
            params: JobParams::Backup(BackupParams { plan: Some(plan.name.clone()), tags: plan.tags.clone() }),
            plan: Some(plan.id.clone()),
            source: Some(plan.source.clone()),
            repository: plan.repository.clone(),
            region,
            host,
            max_attempts: plan.max_attempts,
            deadline_seconds: plan.deadline_seconds,
            idempotency_key,
            request_digest: None,
            parent: None,
            step: None,
            not_before_ms,
        })
    }

    /// Cancel a job: a queued one at once, a running one at its next
    /// heartbeat (the worker stops and reports `cancelled`). Cancelling a
    /// finished job changes nothing.
    pub async fn cancel(&self, scope: &Scope, id: &str, now: i64) -> Result<Job> {
        let job = self.job(scope, id).await?;
        let mut tx = self.pool().begin().await?;
        // Mark first, whatever the state is by now (a claim or a requeue may
        // have moved it since the read above); then a job that is queued
        // stops at once, and a running one sees the mark at its heartbeat.
        let marked = sqlx::query(
            &self.sql("UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND state IN ('queued', 'running')"),
        )
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if marked > 0 {
            let stopped = sqlx::query(&self.sql(
                "UPDATE jobs SET state = 'cancelled', finished_ms = ?, wait_reason = NULL \
                 WHERE id = ? AND state = 'queued'",
            ))
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if stopped > 0 {
                self.event(&mut tx, id, job.attempt, EventKind::State, json!({"state": "cancelled"}), now).await?;
            } else {
                let line = LogLine { level: LogLevel::Info, message: "cancellation requested".into() };
                self.logs(&mut tx, id, job.attempt, &[line], now).await?;
            }
        }
        tx.commit().await?;
        self.job(scope, id).await
    }

    /// Give a running attempt's job back without counting the attempt
    /// (the worker is shutting down, not failing): it is queued again at
    /// once, and `max_attempts` grows by one so the interrupted attempt
    /// costs nothing. Attempt numbers stay increasing, so fencing holds.
    pub async fn release(&self, id: &str, attempt: u32, reason: &str, now: i64) -> Result<Job> {
        let mut tx = self.pool().begin().await?;
        let n = sqlx::query(&self.sql(
            "UPDATE jobs SET state = 'queued', max_attempts = max_attempts + 1, not_before_ms = ?, wait_reason = ?, \
             lease_owner = NULL, lease_expires_ms = NULL WHERE id = ? AND attempt = ? AND state = 'running' \
             AND cancel_requested = 0",
        ))
        .bind(now)
        .bind(format!("waiting for a worker again: {reason}"))
        .bind(id)
        .bind(attempt as i64)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 0 {
            return Err(Error::StaleAttempt { job: id.to_string(), attempt });
        }
        self.event(
            &mut tx,
            id,
            attempt,
            EventKind::State,
            json!({"state": "queued", "attempt": attempt, "wait_reason": reason}),
            now,
        )
        .await?;
        let job = self.fetch_job(&mut tx, id).await?;
        tx.commit().await?;
        Ok(job)
    }

    /// The workers that hold a running job's lease.
    pub async fn lease_owners(&self) -> Result<Vec<String>> {
        let rows = sqlx::query(
            &self.sql("SELECT DISTINCT lease_owner FROM jobs WHERE state = 'running' AND lease_owner IS NOT NULL"),
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(|r| Ok(r.try_get::<String, _>("lease_owner")?)).collect()
    }

    /// End the running attempts of `owner`, a worker known to be gone (a
    /// restarted coordinator's own in-process worker), as if their leases
    /// had expired now: requeued at once (the attempt counts), `dead` after
    /// the last, cancelled if that was asked. Returns the jobs reclaimed.
    pub async fn reclaim(&self, owner: &str, now: i64) -> Result<Vec<String>> {
        let rows = sqlx::query(&self.sql(
            "SELECT id, attempt, max_attempts, cancel_requested FROM jobs WHERE state = 'running' AND lease_owner = ?",
        ))
        .bind(owner)
        .fetch_all(self.pool())
        .await?;
        let mut reclaimed = Vec::new();
        for row in &rows {
            let lost = LostAttempt::from_row(row)?;
            let error =
                format!("the coordinator restarted: attempt {}'s in-process worker {owner} is gone", lost.attempt);
            let (state, not_before, wait) = lost.next(&error, now);
            if self.end_attempt(&lost.id, lost.attempt, state, &error, not_before, wait, None, now).await? {
                reclaimed.push(lost.id);
            }
        }
        Ok(reclaimed)
    }

    /// Requeue jobs whose worker stopped heartbeating (with backoff, or
    /// `dead` after the last attempt) and stop jobs past their deadline.
    pub async fn reap(&self, now: i64) -> Result<ReapReport> {
        let mut report = ReapReport::default();
        let expired = sqlx::query(&self.sql(
            "SELECT id, attempt, max_attempts, cancel_requested FROM jobs \
             WHERE state = 'running' AND lease_expires_ms < ?",
        ))
        .bind(now)
        .fetch_all(self.pool())
        .await?;
        for row in &expired {
            let lost = LostAttempt::from_row(row)?;
            let error = format!("the worker stopped reporting: attempt {}'s lease expired", lost.attempt);
            let (state, not_before, wait) =
                lost.next(&error, now + self.config.backoff(lost.attempt).as_millis() as i64);
            match state {
                JobState::Cancelled => report.cancelled += 1,
                JobState::Queued => report.requeued += 1,
                _ => report.dead += 1,
            }
            self.end_attempt(&lost.id, lost.attempt, state, &error, not_before, wait, Some(now), now).await?;
        }
        let overdue = sqlx::query(&self.sql(
            "SELECT id, attempt, deadline_s FROM jobs WHERE state = 'running' AND deadline_s IS NOT NULL \
             AND started_ms + deadline_s * 1000 < ?",
        ))
        .bind(now)
        .fetch_all(self.pool())
        .await?;
        for row in &overdue {
            let id: String = row.try_get("id")?;
            let attempt = row.try_get::<i64, _>("attempt")? as u32;
            let deadline: i64 = row.try_get("deadline_s")?;
            let error = format!("stopped: the deadline of {deadline} s was exceeded");
            if self.end_attempt(&id, attempt, JobState::Failed, &error, None, None, None, now).await? {
                report.deadline += 1;
            }
        }
        Ok(report)
    }

    /// Move a running attempt to `state`, fenced; false if it had moved on.
    /// With `lease_before`, only if its lease is still expired then (a
    /// heartbeat that landed after the reaper looked wins).
    #[allow(clippy::too_many_arguments)]
    async fn end_attempt(
        &self,
        id: &str,
        attempt: u32,
        state: JobState,
        error: &str,
        not_before: Option<i64>,
        wait: Option<String>,
        lease_before: Option<i64>,
        now: i64,
    ) -> Result<bool> {
        let mut tx = self.pool().begin().await?;
        let finished = state.is_finished().then_some(now);
        let n = sqlx::query(&self.sql(
            "UPDATE jobs SET state = ?, error = ?, finished_ms = ?, not_before_ms = COALESCE(?, not_before_ms), \
             wait_reason = ?, lease_owner = NULL, lease_expires_ms = NULL \
             WHERE id = ? AND attempt = ? AND state = 'running' AND lease_expires_ms < ?",
        ))
        .bind(state.as_str())
        .bind(error)
        .bind(finished)
        .bind(not_before)
        .bind(&wait)
        .bind(id)
        .bind(attempt as i64)
        .bind(lease_before.unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n > 0 {
            let mut data = json!({"state": state.as_str(), "attempt": attempt, "error": error});
            if let Some(w) = &wait {
                data["wait_reason"] = json!(w);
            }
            self.event(&mut tx, id, attempt, EventKind::State, data, now).await?;
        }
        tx.commit().await?;
        Ok(n > 0)
    }

    /// The last job of `kind` that succeeded for each source, plan or
    /// repository (`per`), of the tenants `scope` sees.
    pub async fn latest_jobs(&self, scope: &Scope, kind: JobKind, per: backstop_types::Per) -> Result<Vec<Job>> {
        let (clause, t) = scope.clause("tenant");
        // The scope holds for the jobs themselves too, not only for what points at them.
        let sql = self.sql(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE id IN \
             (SELECT job_id FROM last_success WHERE kind = ? AND per = ?{clause}){clause} ORDER BY id DESC"
        ));
        let mut q = sqlx::query(&sql).bind(kind.as_str()).bind(per_name(per));
        if let Some(t) = t {
            q = q.bind(t).bind(t);
        }
        q.fetch_all(self.pool()).await?.iter().map(job_from_row).collect()
    }

    /// `job` succeeded: it is now the last success of its kind for its
    /// source, plan and repository.
    async fn record_success(&self, conn: &mut AnyConnection, job: &Job) -> Result<()> {
        let keys = [
            (backstop_types::Per::Source, job.source.as_deref()),
            (backstop_types::Per::Plan, job.plan.as_deref()),
            (backstop_types::Per::Repository, Some(job.repository.as_str())),
        ];
        for (per, key) in keys {
            let Some(key) = key else { continue };
            sqlx::query(&self.sql(
                "INSERT INTO last_success (kind, per, key, tenant, job_id) VALUES (?, ?, ?, ?, ?) \
                 ON CONFLICT (kind, per, key) DO UPDATE SET job_id = excluded.job_id, tenant = excluded.tenant \
                 WHERE last_success.job_id < excluded.job_id",
            ))
            .bind(job.kind.as_str())
            .bind(per_name(per))
            .bind(key)
            .bind(&job.tenant)
            .bind(&job.id)
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }

    /// Jobs by state (for metrics and `/readyz`).
    /// Jobs by state, of the tenants `scope` sees.
    pub async fn job_counts(&self, scope: &Scope) -> Result<Vec<(JobState, u64)>> {
        let (clause, t) = scope.clause("tenant");
        let sql = self.sql(&format!("SELECT state, COUNT(*) AS n FROM jobs WHERE 1 = 1{clause} GROUP BY state"));
        let mut q = sqlx::query(&sql);
        if let Some(t) = t {
            q = q.bind(t);
        }
        let rows = q.fetch_all(self.pool()).await?;
        let mut out = Vec::new();
        for r in &rows {
            let state: String = r.try_get("state")?;
            let n: i64 = r.try_get("n")?;
            if let Some(s) = JobState::parse(&state) {
                out.push((s, n as u64));
            }
        }
        Ok(out)
    }

    /// Whether a worker of `region` asked for work since `since` (ms).
    pub async fn worker_seen(&self, region: &str, since: i64) -> Result<bool> {
        let n: i64 =
            sqlx::query_scalar(&self.sql("SELECT COUNT(*) FROM workers WHERE region = ? AND last_seen_ms >= ?"))
                .bind(region)
                .bind(since)
                .fetch_one(self.pool())
                .await?;
        Ok(n > 0)
    }
}

fn result_value(outcome: &Outcome) -> Value {
    match outcome {
        Outcome::Succeeded { result, .. } => result.clone(),
        _ => Value::Null,
    }
}

/// The advisory lock key of a region's claims (stable across processes).
fn region_lock_key(region: &str) -> i64 {
    let h = blake3::hash(format!("backstop-claim:{region}").as_bytes());
    i64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes"))
}

/// A running attempt whose worker is gone (its lease expired, or its
/// coordinator restarted without it).
struct LostAttempt {
    id: String,
    attempt: u32,
    max_attempts: u32,
    cancel_requested: bool,
}

impl LostAttempt {
    fn from_row(row: &AnyRow) -> Result<LostAttempt> {
        Ok(LostAttempt {
            id: row.try_get("id")?,
            attempt: row.try_get::<i64, _>("attempt")? as u32,
            max_attempts: row.try_get::<i64, _>("max_attempts")? as u32,
            cancel_requested: row.try_get::<i64, _>("cancel_requested")? != 0,
        })
    }

    /// What the job becomes: cancelled if that was asked, queued again (not
    /// before `retry_at`) while attempts remain, else dead.
    fn next(&self, error: &str, retry_at: i64) -> (JobState, Option<i64>, Option<String>) {
        let (attempt, max) = (self.attempt, self.max_attempts);
        if self.cancel_requested {
            (JobState::Cancelled, None, None)
        } else if attempt < max {
            (JobState::Queued, Some(retry_at), Some(format!("{error}; retrying (attempt {} of {max})", attempt + 1)))
        } else {
            (JobState::Dead, None, None)
        }
    }
}

/// How `last_success` names what a job is the last of.
fn per_name(per: backstop_types::Per) -> &'static str {
    match per {
        backstop_types::Per::Source => "source",
        backstop_types::Per::Plan => "plan",
        backstop_types::Per::Repository => "repository",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running(tenant: &str, repository: &str, host: Option<&str>, kind: JobKind) -> Running {
        Running {
            tenant: tenant.into(),
            repository: repository.into(),
            host: host.map(str::to_string),
            region: "eu".into(),
            kind,
        }
    }

    fn candidate(repository: &str, host: Option<&str>, kind: JobKind, created_ms: i64) -> Candidate {
        Candidate {
            id: "j".into(),
            repository: repository.into(),
            host: host.map(str::to_string),
            kind,
            created_ms,
            wait_reason: None,
        }
    }

    #[test]
    fn the_fairest_tenant_goes_first() {
        let busy = [running("a", "r", None, JobKind::Backup)];
        let served = HashMap::from([("b".to_string(), 50), ("c".to_string(), 10)]);
        let waiting = vec![("a".to_string(), 1), ("b".to_string(), 2), ("c".to_string(), 3), ("d".to_string(), 4)];
        // d was never served, c longest ago, b later; a has a job running.
        assert_eq!(fair_order(waiting, &busy, &served), ["d", "c", "b", "a"]);
    }

    const FOUR_TWO: Limits = Limits { repository: 4, host: 2 };

    #[test]
    fn limits_and_maintenance_hold_jobs_back() {
        let none = HashMap::new();
        let backup = candidate("r", Some("h"), JobKind::Backup, 100);
        assert_eq!(blocked(&backup, &[], &none, FOUR_TWO), None);
        let prune_running = [running("t", "r", None, JobKind::Prune)];
        assert!(blocked(&backup, &prune_running, &none, FOUR_TWO).unwrap().contains("maintenance (prune) is running"));
        let older_prune = HashMap::from([("r".to_string(), 50)]);
        assert!(blocked(&backup, &[], &older_prune, FOUR_TWO).unwrap().contains("queued maintenance"));
        let younger_prune = HashMap::from([("r".to_string(), 500)]);
        assert_eq!(blocked(&backup, &[], &younger_prune, FOUR_TWO), None);
        let prune = candidate("r", None, JobKind::Prune, 100);
        let one_backup = [running("t", "r", Some("x"), JobKind::Backup)];
        assert!(blocked(&prune, &one_backup, &none, FOUR_TWO).unwrap().starts_with("maintenance waits for 1 running"));
        assert!(
            blocked(&backup, &one_backup, &none, Limits { repository: 1, host: 2 })
                .unwrap()
                .contains("is busy (1 of 1 jobs running)")
        );
        let on_host =
            [running("t", "other", Some("h"), JobKind::Backup), running("t", "o2", Some("h"), JobKind::Backup)];
        assert!(blocked(&backup, &on_host, &none, FOUR_TWO).unwrap().starts_with("source host h is busy (2 of 2"));
    }
}
