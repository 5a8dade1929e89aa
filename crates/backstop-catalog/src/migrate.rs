//! Schema migrations, one list for both databases. Each migration is a
//! version number and its statements, written once for SQLite and
//! PostgreSQL (`{serial}` stands for the one spelling they differ in); the
//! applied version is kept in `schema_version`. Migrations only ever get
//! appended.

use crate::{Catalog, DbKind, Error, Result};

struct Migration {
    version: i64,
    /// Statements for both databases; `{serial}` is an auto-increment primary
    /// key, `{summary.KEY}` a number of a snapshot's summary.
    sql: &'static [&'static str],
}

/// The tables. Times are milliseconds since the epoch; flags are 0/1.
const V1_TABLES: &str = "
CREATE TABLE tenants (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created_ms BIGINT NOT NULL
);
CREATE TABLE tokens (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL REFERENCES tenants(id),
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    created_ms BIGINT NOT NULL,
    last_used_ms BIGINT,
    revoked_ms BIGINT
);
CREATE TABLE repositories (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL REFERENCES tenants(id),
    name TEXT NOT NULL,
    location TEXT NOT NULL,
    region TEXT NOT NULL,
    secret TEXT NOT NULL,
    option_names TEXT NOT NULL,
    max_concurrent BIGINT NOT NULL,
    created_ms BIGINT NOT NULL,
    UNIQUE (tenant, name)
);
CREATE TABLE sources (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL REFERENCES tenants(id),
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    host TEXT,
    config TEXT NOT NULL,
    secret TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    UNIQUE (tenant, name)
);
CREATE TABLE plans (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL REFERENCES tenants(id),
    name TEXT NOT NULL,
    source_id TEXT NOT NULL REFERENCES sources(id),
    repository_id TEXT NOT NULL REFERENCES repositories(id),
    schedule TEXT,
    timezone TEXT NOT NULL,
    jitter_s BIGINT NOT NULL,
    misfire TEXT NOT NULL,
    overlap TEXT NOT NULL,
    retention TEXT NOT NULL,
    chain TEXT NOT NULL,
    tags TEXT NOT NULL,
    max_attempts BIGINT NOT NULL,
    deadline_s BIGINT,
    enabled BIGINT NOT NULL,
    next_fire_ms BIGINT,
    created_ms BIGINT NOT NULL,
    UNIQUE (tenant, name)
);
CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    kind TEXT NOT NULL,
    plan_id TEXT,
    source_id TEXT,
    repository_id TEXT NOT NULL,
    region TEXT NOT NULL,
    host TEXT,
    params TEXT NOT NULL,
    state TEXT NOT NULL,
    wait_reason TEXT,
    attempt BIGINT NOT NULL,
    max_attempts BIGINT NOT NULL,
    lease_owner TEXT,
    lease_expires_ms BIGINT,
    not_before_ms BIGINT NOT NULL,
    deadline_s BIGINT,
    idempotency_key TEXT,
    parent_id TEXT,
    step TEXT,
    cancel_requested BIGINT NOT NULL,
    created_ms BIGINT NOT NULL,
    started_ms BIGINT,
    finished_ms BIGINT,
    progress TEXT,
    result TEXT,
    error TEXT
);
CREATE UNIQUE INDEX jobs_idempotency ON jobs (tenant, idempotency_key);
CREATE INDEX jobs_queue ON jobs (state, region, not_before_ms);
CREATE INDEX jobs_by_tenant ON jobs (tenant, created_ms);
CREATE INDEX jobs_by_plan ON jobs (plan_id, state);
CREATE TABLE fair_share (
    region TEXT NOT NULL,
    tenant TEXT NOT NULL,
    last_claim_ms BIGINT NOT NULL,
    PRIMARY KEY (region, tenant)
);
CREATE TABLE workers (
    id TEXT PRIMARY KEY,
    region TEXT NOT NULL,
    last_seen_ms BIGINT NOT NULL
);
CREATE TABLE snapshots (
    repository_id TEXT NOT NULL,
    id TEXT NOT NULL,
    tenant TEXT NOT NULL,
    plan_id TEXT,
    job_id TEXT,
    time_ms BIGINT NOT NULL,
    hostname TEXT NOT NULL,
    paths TEXT NOT NULL,
    tags TEXT NOT NULL,
    summary TEXT NOT NULL,
    PRIMARY KEY (repository_id, id)
);
CREATE INDEX snapshots_by_tenant ON snapshots (tenant, time_ms);
";

/// The tables whose id is a sequence, which the two databases spell differently.
const V1_SEQUENCED: &str = "
CREATE TABLE job_events (
    id {serial},
    job_id TEXT NOT NULL,
    time_ms BIGINT NOT NULL,
    attempt BIGINT NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX job_events_by_job ON job_events (job_id, id);
CREATE TABLE audit (
    id {serial},
    time_ms BIGINT NOT NULL,
    tenant TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    object TEXT NOT NULL,
    detail TEXT NOT NULL
);
";

/// Indexes that let a claim find the tenants with queued work and the
/// queued maintenance without reading every queued job.
const V2_CLAIM_INDEXES: &str = "
CREATE INDEX jobs_queued_by_tenant ON jobs (state, region, tenant, created_ms);
CREATE INDEX jobs_queued_maintenance ON jobs (state, kind, repository_id, created_ms);
";

/// What each tenant's jobs may connect to (a JSON list of grants).
const V3_TENANT_NETWORKS: &str = "
ALTER TABLE tenants ADD COLUMN allow_net TEXT NOT NULL DEFAULT '[]';
";

/// What request an idempotency key was first used for (a digest), so that
/// reusing it for another request is refused instead of answered.
const V4_REQUEST_DIGESTS: &str = "
ALTER TABLE jobs ADD COLUMN request_digest TEXT;
";

/// The web UI's browser sessions (`sessions.rs`): the hash of the cookie's
/// secret, the token the session acts as, its CSRF token, when it ends.
const V5_UI_SESSIONS: &str = "
CREATE TABLE ui_sessions (
    hash TEXT PRIMARY KEY,
    token_id TEXT NOT NULL REFERENCES tokens(id),
    csrf TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL
);
CREATE INDEX ui_sessions_expiry ON ui_sessions (expires_ms);
";

/// What the web UI's pages show of every source, plan and repository,
/// kept as it changes instead of derived on every view: the last job of
/// each kind that succeeded for it (`last_success`, written with the job's
/// completion; filled here from the jobs), a snapshot's sizes (filled from
/// its summary), and a snapshot found by its id alone.
const V6_UI_FIGURES: &str = "
CREATE TABLE last_success (
    kind TEXT NOT NULL,
    per TEXT NOT NULL,
    key TEXT NOT NULL,
    tenant TEXT NOT NULL,
    job_id TEXT NOT NULL,
    PRIMARY KEY (kind, per, key)
);
INSERT INTO last_success (kind, per, key, tenant, job_id)
    SELECT kind, 'source', source_id, MAX(tenant), MAX(id) FROM jobs
    WHERE state = 'succeeded' AND source_id IS NOT NULL GROUP BY kind, source_id;
INSERT INTO last_success (kind, per, key, tenant, job_id)
    SELECT kind, 'plan', plan_id, MAX(tenant), MAX(id) FROM jobs
    WHERE state = 'succeeded' AND plan_id IS NOT NULL GROUP BY kind, plan_id;
INSERT INTO last_success (kind, per, key, tenant, job_id)
    SELECT kind, 'repository', repository_id, MAX(tenant), MAX(id) FROM jobs
    WHERE state = 'succeeded' GROUP BY kind, repository_id;
ALTER TABLE snapshots ADD COLUMN bytes_total BIGINT NOT NULL DEFAULT 0;
ALTER TABLE snapshots ADD COLUMN bytes_stored BIGINT NOT NULL DEFAULT 0;
UPDATE snapshots SET bytes_total = {summary.bytes_total}, bytes_stored = {summary.bytes_added_stored};
CREATE INDEX snapshots_by_id ON snapshots (id);
";

/// A whole number from a snapshot's JSON `summary`, in this database's words (0 when absent).
fn summary_number(kind: DbKind, key: &str) -> String {
    // Between 0 and a snapshot's most (whatever a tenant's manifest claims:
    // as NUMERIC on PostgreSQL, which a huge number cannot overflow).
    let max = crate::resources::MAX_SNAPSHOT_BYTES;
    match kind {
        DbKind::Postgres => {
            format!("CAST(GREATEST(LEAST(COALESCE((summary::jsonb ->> '{key}')::NUMERIC, 0), {max}), 0) AS BIGINT)")
        }
        DbKind::Sqlite => format!("MAX(MIN(COALESCE(CAST(json_extract(summary, '$.{key}') AS INTEGER), 0), {max}), 0)"),
    }
}

fn migrations() -> Vec<Migration> {
    vec![
        Migration { version: 1, sql: &[V1_TABLES, V1_SEQUENCED] },
        Migration { version: 2, sql: &[V2_CLAIM_INDEXES] },
        Migration { version: 3, sql: &[V3_TENANT_NETWORKS] },
        Migration { version: 4, sql: &[V4_REQUEST_DIGESTS] },
        Migration { version: 5, sql: &[V5_UI_SESSIONS] },
        Migration { version: 6, sql: &[V6_UI_FIGURES] },
    ]
}

fn statements(sql: &str) -> impl Iterator<Item = &str> {
    sql.split(';').map(str::trim).filter(|s| !s.is_empty())
}

pub(crate) async fn run(catalog: &Catalog) -> Result<()> {
    let pool = catalog.pool();
    if catalog.kind() == DbKind::Postgres {
        // Two coordinators starting at once must not both migrate.
        let mut tx = pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(7406253101)").execute(&mut *tx).await?;
        apply(catalog, &mut tx).await?;
        tx.commit().await?;
    } else {
        let mut tx = pool.begin().await?;
        apply(catalog, &mut tx).await?;
        tx.commit().await?;
    }
    Ok(())
}

async fn apply(catalog: &Catalog, tx: &mut sqlx::Transaction<'_, sqlx::Any>) -> Result<()> {
    sqlx::query("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)").execute(&mut **tx).await?;
    let current: Option<i64> =
        sqlx::query_scalar("SELECT MAX(version) FROM schema_version").fetch_one(&mut **tx).await?;
    let current = current.unwrap_or(0);
    let known = migrations();
    let newest = known.last().map(|m| m.version).unwrap_or(0);
    if current > newest {
        return Err(Error::Invalid(format!(
            "the catalog has schema version {current}, newer than this program's {newest}; upgrade backstop"
        )));
    }
    for m in known.into_iter().filter(|m| m.version > current) {
        let serial = match catalog.kind() {
            DbKind::Sqlite => "INTEGER PRIMARY KEY AUTOINCREMENT",
            DbKind::Postgres => "BIGSERIAL PRIMARY KEY",
        };
        let mut sql = m.sql.join("\n").replace("{serial}", serial);
        for key in ["bytes_total", "bytes_added_stored"] {
            sql = sql.replace(&format!("{{summary.{key}}}"), &summary_number(catalog.kind(), key));
        }
        for statement in statements(&sql) {
            sqlx::query(statement).execute(&mut **tx).await?;
        }
        sqlx::query(&catalog.sql("INSERT INTO schema_version (version) VALUES (?)"))
            .bind(m.version)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}
