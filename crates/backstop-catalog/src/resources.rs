//! Tenants, tokens, repositories, sources, plans, snapshots and the audit
//! trail. Every read and write takes a [`Scope`]: a tenant's callers see
//! only their tenant's rows, and an object of another tenant is simply
//! not found. Lookups take an id or a name; a name means the caller's own
//! tenant's object (for system administrators, the system tenant's), an id
//! any object the scope may see.

use backstop_types::{
    AuditEvent, NetGrant, NewToken, Page, Plan, PlanSpec, Repository, RepositorySpec, Role, Snapshot, SnapshotInfo,
    Source, SourceKind, SourceSpec, SourceUpdate, Tenant, Token,
};
use serde_json::{Value, json};
use sqlx::{AnyConnection, Row, any::AnyRow};

pub use crate::scope::{SYSTEM_TENANT, Scope};
use crate::secrets::RepositorySecret;
use crate::secrets::hex_encode;
use crate::{Catalog, Error, Result, new_id, opt_time, time};

/// Names of tenants, repositories, sources, plans and tokens.
pub fn check_name(what: &str, name: &str) -> Result<()> {
    backstop_types::check::name(&format!("{what} name"), name).map_err(Error::Invalid)
}

/// Free text (a display name): 1 to `max` characters, none of them a
/// control character (no newlines, no NULs).
pub fn check_text(what: &str, text: &str, max: usize) -> Result<()> {
    backstop_types::check::text(what, text, 1, max).map_err(Error::Invalid)
}

/// A host name as sources name their host: a DNS name or an IP address,
/// at most 253 characters.
pub fn check_host(host: &str) -> Result<()> {
    backstop_types::check::host(host).map_err(Error::Invalid)
}

fn parse_json<T: serde::de::DeserializeOwned>(row: &AnyRow, col: &str) -> Result<T> {
    let text: String = row.try_get(col)?;
    serde_json::from_str(&text).map_err(|e| Error::Corrupt(format!("column {col}: {e}")))
}

fn unique_violation(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => {
            d.is_unique_violation() || d.message().contains("UNIQUE") || d.message().contains("duplicate key")
        }
        _ => false,
    }
}

fn page<T>(mut items: Vec<T>, limit: u32, cursor: impl Fn(&T) -> String) -> Page<T> {
    let next_cursor = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(cursor)
    } else {
        None
    };
    Page { items, next_cursor }
}

const PLAN_COLUMNS: &str = "id, tenant, name, source_id, repository_id, schedule, timezone, jitter_s, misfire, \
    overlap, retention, chain, tags, max_attempts, deadline_s, enabled, next_fire_ms, created_ms";

fn plan_from_row(row: &AnyRow) -> Result<Plan> {
    let misfire: String = row.try_get("misfire")?;
    let overlap: String = row.try_get("overlap")?;
    Ok(Plan {
        id: row.try_get("id")?,
        tenant: row.try_get("tenant")?,
        name: row.try_get("name")?,
        source: row.try_get("source_id")?,
        repository: row.try_get("repository_id")?,
        schedule: row.try_get("schedule")?,
        timezone: row.try_get("timezone")?,
        jitter_seconds: row.try_get::<i64, _>("jitter_s")? as u32,
        misfire: serde_json::from_value(json!(misfire)).map_err(|e| Error::Corrupt(format!("misfire: {e}")))?,
        overlap: serde_json::from_value(json!(overlap)).map_err(|e| Error::Corrupt(format!("overlap: {e}")))?,
        retention: parse_json(row, "retention")?,
        chain: parse_json(row, "chain")?,
        tags: parse_json(row, "tags")?,
        max_attempts: row.try_get::<i64, _>("max_attempts")? as u32,
        deadline_seconds: row.try_get::<Option<i64>, _>("deadline_s")?.map(|d| d as u64),
        enabled: row.try_get::<i64, _>("enabled")? != 0,
        next_fire: opt_time(row.try_get("next_fire_ms")?),
        created: time(row.try_get("created_ms")?),
    })
}

fn repository_from_row(row: &AnyRow) -> Result<Repository> {
    Ok(Repository {
        id: row.try_get("id")?,
        tenant: row.try_get("tenant")?,
        name: row.try_get("name")?,
        location: row.try_get("location")?,
        region: row.try_get("region")?,
        options: parse_json(row, "option_names")?,
        max_concurrent: row.try_get::<i64, _>("max_concurrent")? as u32,
        created: time(row.try_get("created_ms")?),
    })
}

fn source_from_row(row: &AnyRow) -> Result<Source> {
    Ok(Source {
        id: row.try_get("id")?,
        tenant: row.try_get("tenant")?,
        name: row.try_get("name")?,
        kind: source_kind(row)?,
        host: row.try_get("host")?,
        config: parse_json(row, "config")?,
        created: time(row.try_get("created_ms")?),
    })
}

fn tenant_from_row(row: &AnyRow) -> Result<Tenant> {
    Ok(Tenant {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        allow_net: parse_json(row, "allow_net")?,
        created: time(row.try_get("created_ms")?),
    })
}

pub(crate) fn token_from_row(row: &AnyRow) -> Result<Token> {
    let role: String = row.try_get("role")?;
    Ok(Token {
        id: row.try_get("id")?,
        tenant: row.try_get("tenant")?,
        name: row.try_get("name")?,
        role: Role::parse(&role).ok_or_else(|| Error::Corrupt(format!("unknown role {role:?}")))?,
        created: time(row.try_get("created_ms")?),
        last_used: opt_time(row.try_get("last_used_ms")?),
    })
}

fn snapshot_from_row(row: &AnyRow) -> Result<Snapshot> {
    Ok(Snapshot {
        repository: row.try_get("repository_id")?,
        tenant: row.try_get("tenant")?,
        plan: row.try_get("plan_id")?,
        job: row.try_get("job_id")?,
        info: SnapshotInfo {
            id: row.try_get("id")?,
            time: time(row.try_get("time_ms")?),
            hostname: row.try_get("hostname")?,
            paths: parse_json(row, "paths")?,
            tags: parse_json(row, "tags")?,
            summary: parse_json(row, "summary")?,
        },
    })
}

/// The hash under which a token's secret is stored.
pub(crate) fn token_hash(secret: &str) -> String {
    blake3::hash(secret.as_bytes()).to_hex().to_string()
}

impl Catalog {
    // ---- tenants ----------------------------------------------------------

    /// Create a tenant if it does not exist.
    pub async fn ensure_tenant(&self, id: &str, name: &str, now: i64) -> Result<Tenant> {
        check_name("tenant", id)?;
        sqlx::query(
            &self.sql("INSERT INTO tenants (id, name, created_ms) VALUES (?, ?, ?) ON CONFLICT (id) DO NOTHING"),
        )
        .bind(id)
        .bind(name)
        .bind(now)
        .execute(self.pool())
        .await?;
        self.tenant(&Scope::All, id).await
    }

    /// Create a tenant, or change the name and the network grants of one
    /// (each only when given).
    pub async fn put_tenant(
        &self,
        id: &str,
        name: Option<&str>,
        allow_net: Option<&[NetGrant]>,
        now: i64,
    ) -> Result<Tenant> {
        if let Some(name) = name {
            check_text("tenant name", name, 200)?;
        }
        self.ensure_tenant(id, name.unwrap_or(id), now).await?;
        if let Some(name) = name {
            sqlx::query(&self.sql("UPDATE tenants SET name = ? WHERE id = ?"))
                .bind(name)
                .bind(id)
                .execute(self.pool())
                .await?;
        }
        if let Some(grants) = allow_net {
            let text = serde_json::to_string(grants).expect("grants serialise");
            sqlx::query(&self.sql("UPDATE tenants SET allow_net = ? WHERE id = ?"))
                .bind(text)
                .bind(id)
                .execute(self.pool())
                .await?;
        }
        self.tenant(&Scope::All, id).await
    }

    pub async fn tenant(&self, scope: &Scope, id: &str) -> Result<Tenant> {
        let (clause, t) = scope.clause("id");
        let sql = self.sql(&format!("SELECT id, name, allow_net, created_ms FROM tenants WHERE id = ?{clause}"));
        let mut q = sqlx::query(&sql).bind(id);
        if let Some(t) = t {
            q = q.bind(t);
        }
        let row = q.fetch_optional(self.pool()).await?.ok_or_else(|| Error::NotFound(format!("tenant {id}")))?;
        tenant_from_row(&row)
    }

    pub async fn list_tenants(&self, scope: &Scope) -> Result<Vec<Tenant>> {
        let (clause, t) = scope.clause("id");
        let sql =
            self.sql(&format!("SELECT id, name, allow_net, created_ms FROM tenants WHERE 1 = 1{clause} ORDER BY id"));
        let mut q = sqlx::query(&sql);
        if let Some(t) = t {
            q = q.bind(t);
        }
        q.fetch_all(self.pool()).await?.iter().map(tenant_from_row).collect()
    }

    // ---- tokens -----------------------------------------------------------

    /// Create a token; its secret is returned this once and stored hashed.
    pub async fn create_token(&self, tenant: &str, name: &str, role: Role, now: i64) -> Result<NewToken> {
        check_name("token", name)?;
        self.tenant(&Scope::All, tenant).await?;
        let mut raw = [0u8; 32];
        getrandom::fill(&mut raw).expect("the OS random number generator works");
        let secret = format!("bst_{}", hex_encode(&raw));
        let id = new_id();
        sqlx::query(
            &self.sql("INSERT INTO tokens (id, tenant, name, role, hash, created_ms) VALUES (?, ?, ?, ?, ?, ?)"),
        )
        .bind(&id)
        .bind(tenant)
        .bind(name)
        .bind(role.as_str())
        .bind(token_hash(&secret))
        .bind(now)
        .execute(self.pool())
        .await?;
        let token = Token { id, tenant: tenant.into(), name: name.into(), role, created: time(now), last_used: None };
        Ok(NewToken { token, secret: secret.into() })
    }

    /// The live token with this secret, if any.
    pub async fn authenticate(&self, secret: &str, now: i64) -> Result<Option<Token>> {
        let row = sqlx::query(&self.sql(
            "SELECT id, tenant, name, role, created_ms, last_used_ms FROM tokens \
             WHERE hash = ? AND revoked_ms IS NULL",
        ))
        .bind(token_hash(secret))
        .fetch_optional(self.pool())
        .await?;
        let Some(row) = row else { return Ok(None) };
        let token = token_from_row(&row)?;
        // Record use at most once a minute per token.
        if token.last_used.is_none_or(|t| now - t.timestamp_millis() > 60_000) {
            sqlx::query(&self.sql("UPDATE tokens SET last_used_ms = ? WHERE id = ?"))
                .bind(now)
                .bind(&token.id)
                .execute(self.pool())
                .await?;
        }
        Ok(Some(token))
    }

    pub async fn list_tokens(&self, scope: &Scope) -> Result<Vec<Token>> {
        let (clause, t) = scope.clause("tenant");
        let sql = self.sql(&format!(
            "SELECT id, tenant, name, role, created_ms, last_used_ms FROM tokens \
             WHERE revoked_ms IS NULL{clause} ORDER BY id"
        ));
        let mut q = sqlx::query(&sql);
        if let Some(t) = t {
            q = q.bind(t);
        }
        q.fetch_all(self.pool()).await?.iter().map(token_from_row).collect()
    }

    /// Whether token `id` exists and is not revoked.
    pub async fn token_is_live(&self, id: &str) -> Result<bool> {
        let sql = self.sql("SELECT COUNT(*) FROM tokens WHERE id = ? AND revoked_ms IS NULL");
        Ok(sqlx::query_scalar::<_, i64>(&sql).bind(id).fetch_one(self.pool()).await? > 0)
    }

    /// Live (not revoked) admin tokens of the system tenant: the ones that
    /// can manage everything else.
    pub async fn count_live_admins(&self) -> Result<i64> {
        let sql = self.sql(&format!(
            "SELECT COUNT(*) FROM tokens WHERE tenant = '{SYSTEM_TENANT}' AND role = 'admin' AND revoked_ms IS NULL"
        ));
        Ok(sqlx::query_scalar(&sql).fetch_one(self.pool()).await?)
    }

    /// Revoke a token. The last live admin token of the system tenant is
    /// refused ([`Error::Conflict`]): nobody could manage the service after it.
    pub async fn revoke_token(&self, scope: &Scope, id: &str, now: i64) -> Result<()> {
        let mut tx = self.pool().begin().await?;
        if self.kind() == crate::DbKind::Postgres {
            // Two revocations of the last two admins must not both pass.
            sqlx::query("SELECT pg_advisory_xact_lock(7406253102)").execute(&mut *tx).await?;
        }
        let (clause, t) = scope.clause("tenant");
        let sql = self.sql(&format!(
            "UPDATE tokens SET revoked_ms = ? WHERE id = ? AND revoked_ms IS NULL{clause} \
             AND NOT (tenant = '{SYSTEM_TENANT}' AND role = 'admin' AND \
                      (SELECT COUNT(*) FROM tokens WHERE tenant = '{SYSTEM_TENANT}' AND role = 'admin' \
                       AND revoked_ms IS NULL) <= 1)"
        ));
        let mut q = sqlx::query(&sql).bind(now).bind(id);
        if let Some(t) = &t {
            q = q.bind(t);
        }
        let revoked = q.execute(&mut *tx).await?.rows_affected();
        if revoked == 0 {
            let sql = self.sql(&format!(
                "SELECT COUNT(*) FROM tokens WHERE id = ? AND revoked_ms IS NULL{clause} \
                 AND tenant = '{SYSTEM_TENANT}' AND role = 'admin'"
            ));
            let mut q = sqlx::query_scalar::<_, i64>(&sql).bind(id);
            if let Some(t) = &t {
                q = q.bind(t);
            }
            let last_admin = q.fetch_one(&mut *tx).await? > 0;
            tx.rollback().await?;
            return Err(if last_admin {
                Error::Conflict(format!(
                    "token {id} is the last admin token of the system tenant; create another admin token first \
                     (or `backstop serve --new-admin-token` on the coordinator)"
                ))
            } else {
                Error::NotFound(format!("token {id}"))
            });
        }
        tx.commit().await?;
        Ok(())
    }

    // ---- repositories -----------------------------------------------------

    pub async fn create_repository(&self, scope: &Scope, spec: &RepositorySpec, now: i64) -> Result<Repository> {
        check_name("repository", &spec.name)?;
        check_name("region", &spec.region)?;
        check_text("a repository's location", &spec.location, 4096)?;
        if spec.location.trim().is_empty() {
            return Err(Error::Invalid("a repository needs a location".into()));
        }
        let password = spec.password.expose();
        if password.is_empty() || password.chars().count() > 4096 {
            return Err(Error::Invalid("a repository needs a password of 1–4096 characters".into()));
        }
        if spec.max_concurrent.is_some_and(|n| !(1..=10_000).contains(&n)) {
            return Err(Error::Invalid("max_concurrent must be between 1 and 10000".into()));
        }
        let id = new_id();
        let secret = RepositorySecret { password: spec.password.clone(), options: spec.options.clone() };
        let sealed = self.key.seal(&id, &serde_json::to_vec(&secret).expect("secrets serialise"));
        let names: Vec<&str> = spec.options.iter().map(|(k, _)| k.as_str()).collect();
        let max = spec.max_concurrent.unwrap_or(4);
        let inserted = sqlx::query(&self.sql(
            "INSERT INTO repositories (id, tenant, name, location, region, secret, option_names, max_concurrent, \
             created_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        ))
        .bind(&id)
        .bind(scope.tenant())
        .bind(&spec.name)
        .bind(&spec.location)
        .bind(&spec.region)
        .bind(&sealed)
        .bind(json!(names).to_string())
        .bind(max as i64)
        .bind(now)
        .execute(self.pool())
        .await;
        match inserted {
            Err(e) if unique_violation(&e) => {
                return Err(Error::Conflict(format!("a repository named {} exists already", spec.name)));
            }
            r => r?,
        };
        self.repository(scope, &id).await
    }

    /// A repository by id or name.
    pub async fn repository(&self, scope: &Scope, id_or_name: &str) -> Result<Repository> {
        let (clause, t) = scope.clause("tenant");
        let sql = self.sql(&format!(
            "SELECT id, tenant, name, location, region, option_names, max_concurrent, created_ms FROM repositories \
             WHERE (id = ? OR (name = ? AND tenant = ?)){clause} ORDER BY id LIMIT 1"
        ));
        let mut q = sqlx::query(&sql).bind(id_or_name).bind(id_or_name).bind(scope.tenant());
        if let Some(t) = t {
            q = q.bind(t);
        }
        let row =
            q.fetch_optional(self.pool()).await?.ok_or_else(|| Error::NotFound(format!("repository {id_or_name}")))?;
        repository_from_row(&row)
    }

    pub async fn list_repositories(&self, scope: &Scope) -> Result<Vec<Repository>> {
        let (clause, t) = scope.clause("tenant");
        let sql = self.sql(&format!(
            "SELECT id, tenant, name, location, region, option_names, max_concurrent, created_ms FROM repositories \
             WHERE 1 = 1{clause} ORDER BY name"
        ));
        let mut q = sqlx::query(&sql);
        if let Some(t) = t {
            q = q.bind(t);
        }
        q.fetch_all(self.pool()).await?.iter().map(repository_from_row).collect()
    }

    /// The repository's password and options (for the server's own use:
    /// catalog rebuild, in-process workers).
    pub async fn repository_access(&self, scope: &Scope, id: &str) -> Result<backstop_types::RepositoryAccess> {
        let repo = self.repository(scope, id).await?;
        let sealed: String = sqlx::query_scalar(&self.sql("SELECT secret FROM repositories WHERE id = ?"))
            .bind(&repo.id)
            .fetch_one(self.pool())
            .await?;
        let secret: RepositorySecret = self.open_json(&repo.id, &sealed)?;
        Ok(backstop_types::RepositoryAccess {
            id: repo.id,
            location: repo.location,
            password: secret.password,
            options: secret.options,
        })
    }

    pub async fn delete_repository(&self, scope: &Scope, id_or_name: &str) -> Result<()> {
        let repo = self.repository(scope, id_or_name).await?;
        let plans: i64 = sqlx::query_scalar(&self.sql("SELECT COUNT(*) FROM plans WHERE repository_id = ?"))
            .bind(&repo.id)
            .fetch_one(self.pool())
            .await?;
        if plans > 0 {
            return Err(Error::Conflict(format!(
                "repository {} is used by {plans} plan(s); delete or change them first",
                repo.name
            )));
        }
        sqlx::query(&self.sql("DELETE FROM repositories WHERE id = ?")).bind(&repo.id).execute(self.pool()).await?;
        Ok(())
    }

    // ---- sources ----------------------------------------------------------

    pub async fn create_source(&self, scope: &Scope, spec: &SourceSpec, now: i64) -> Result<Source> {
        check_name("source", &spec.name)?;
        if let Some(host) = &spec.host {
            check_host(host)?;
        }
        validate_source(spec)?;
        let id = new_id();
        let sealed = self.key.seal(&id, spec.secrets.expose().to_string().as_bytes());
        let inserted = sqlx::query(&self.sql(
            "INSERT INTO sources (id, tenant, name, kind, host, config, secret, created_ms) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        ))
        .bind(&id)
        .bind(scope.tenant())
        .bind(&spec.name)
        .bind(spec.kind.as_str())
        .bind(&spec.host)
        .bind(spec.config.to_string())
        .bind(&sealed)
        .bind(now)
        .execute(self.pool())
        .await;
        match inserted {
            Err(e) if unique_violation(&e) => {
                return Err(Error::Conflict(format!("a source named {} exists already", spec.name)));
            }
            r => r?,
        };
        self.source(scope, &id).await
    }

    /// Change a source's host and configuration, and its secrets when
    /// `update` has some (null keeps the stored ones).
    pub async fn update_source(&self, scope: &Scope, id_or_name: &str, update: &SourceUpdate) -> Result<Source> {
        let source = self.source(scope, id_or_name).await?;
        if let Some(host) = &update.host {
            check_host(host).map_err(|e| e.on("host"))?;
        }
        if !update.config.is_object() {
            return Err(Error::Invalid("config must be a JSON object".into()).on("config"));
        }
        let sealed = match update.secrets.expose() {
            Value::Null => None,
            secrets => Some(self.key.seal(&source.id, secrets.to_string().as_bytes())),
        };
        sqlx::query(&self.sql("UPDATE sources SET host = ?, config = ?, secret = COALESCE(?, secret) WHERE id = ?"))
            .bind(&update.host)
            .bind(update.config.to_string())
            .bind(&sealed)
            .bind(&source.id)
            .execute(self.pool())
            .await?;
        self.source(scope, &source.id).await
    }

    /// A source's stored secrets (its credentials), unsealed: to check a
    /// changed configuration with them. Never for an answer.
    pub async fn source_secrets(&self, scope: &Scope, id_or_name: &str) -> Result<Value> {
        let source = self.source(scope, id_or_name).await?;
        let sealed: String = sqlx::query_scalar(&self.sql("SELECT secret FROM sources WHERE id = ?"))
            .bind(&source.id)
            .fetch_one(self.pool())
            .await?;
        self.open_json(&source.id, &sealed)
    }

    pub async fn source(&self, scope: &Scope, id_or_name: &str) -> Result<Source> {
        let (clause, t) = scope.clause("tenant");
        let sql = self.sql(&format!(
            "SELECT id, tenant, name, kind, host, config, created_ms FROM sources \
             WHERE (id = ? OR (name = ? AND tenant = ?)){clause} ORDER BY id LIMIT 1"
        ));
        let mut q = sqlx::query(&sql).bind(id_or_name).bind(id_or_name).bind(scope.tenant());
        if let Some(t) = t {
            q = q.bind(t);
        }
        let row =
            q.fetch_optional(self.pool()).await?.ok_or_else(|| Error::NotFound(format!("source {id_or_name}")))?;
        source_from_row(&row)
    }

    pub async fn list_sources(&self, scope: &Scope) -> Result<Vec<Source>> {
        let (clause, t) = scope.clause("tenant");
        let sql = self.sql(&format!(
            "SELECT id, tenant, name, kind, host, config, created_ms FROM sources WHERE 1 = 1{clause} ORDER BY name"
        ));
        let mut q = sqlx::query(&sql);
        if let Some(t) = t {
            q = q.bind(t);
        }
        q.fetch_all(self.pool()).await?.iter().map(source_from_row).collect()
    }

    pub async fn delete_source(&self, scope: &Scope, id_or_name: &str) -> Result<()> {
        let source = self.source(scope, id_or_name).await?;
        let plans: i64 = sqlx::query_scalar(&self.sql("SELECT COUNT(*) FROM plans WHERE source_id = ?"))
            .bind(&source.id)
            .fetch_one(self.pool())
            .await?;
        if plans > 0 {
            return Err(Error::Conflict(format!(
                "source {} is used by {plans} plan(s); delete or change them first",
                source.name
            )));
        }
        sqlx::query(&self.sql("DELETE FROM sources WHERE id = ?")).bind(&source.id).execute(self.pool()).await?;
        Ok(())
    }

    // ---- plans ------------------------------------------------------------

    /// Create a plan, or replace the plan of the same name.
    pub async fn put_plan(&self, scope: &Scope, spec: &PlanSpec, now: i64) -> Result<Plan> {
        check_name("plan", &spec.name).map_err(|e| e.on("name"))?;
        // Everything of a plan belongs to one tenant: the one it is created
        // in (for system administrators, the system tenant), so that a name
        // never resolves to another tenant's object.
        let own = Scope::Tenant(scope.tenant().to_string());
        let source = self.source(&own, &spec.source).await.map_err(|e| e.on("source"))?;
        let repository = self.repository(&own, &spec.repository).await.map_err(|e| e.on("repository"))?;
        let schedule = crate::schedule::plan_schedule(spec.schedule.as_deref(), spec.timezone.as_deref())?;
        let next_fire = schedule.filter(|_| spec.enabled).and_then(|s| s.next_after(now));
        check_plan_limits(spec)?;
        let timezone = spec.timezone.clone().unwrap_or_else(|| "UTC".into());
        let max_attempts = spec.max_attempts.unwrap_or(self.config.default_max_attempts);
        let existing = self.plan(&own, &spec.name).await.ok();
        let id = existing.as_ref().map(|p| p.id.clone()).unwrap_or_else(new_id);
        let misfire = serde_json::to_value(spec.misfire).expect("serialises");
        let overlap = serde_json::to_value(spec.overlap).expect("serialises");
        let sql = if existing.is_some() {
            "UPDATE plans SET source_id = ?, repository_id = ?, schedule = ?, timezone = ?, jitter_s = ?, \
             misfire = ?, overlap = ?, retention = ?, chain = ?, tags = ?, max_attempts = ?, deadline_s = ?, \
             enabled = ?, next_fire_ms = ? WHERE id = ? AND tenant = ? AND name = ?"
        } else {
            "INSERT INTO plans (source_id, repository_id, schedule, timezone, jitter_s, misfire, overlap, retention, \
             chain, tags, max_attempts, deadline_s, enabled, next_fire_ms, id, tenant, name, created_ms) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        };
        let sql = self.sql(sql);
        let mut q = sqlx::query(&sql)
            .bind(&source.id)
            .bind(&repository.id)
            .bind(&spec.schedule)
            .bind(&timezone)
            .bind(spec.jitter_seconds as i64)
            .bind(misfire.as_str().unwrap_or("skip").to_string())
            .bind(overlap.as_str().unwrap_or("skip").to_string())
            .bind(serde_json::to_string(&spec.retention).expect("serialises"))
            .bind(serde_json::to_string(&spec.chain).expect("serialises"))
            .bind(json!(spec.tags).to_string())
            .bind(max_attempts as i64)
            .bind(spec.deadline_seconds.map(|d| d as i64))
            .bind(spec.enabled as i64)
            .bind(next_fire)
            .bind(&id)
            .bind(scope.tenant())
            .bind(&spec.name);
        if existing.is_none() {
            q = q.bind(now);
        }
        q.execute(self.pool()).await?;
        self.plan(&own, &id).await
    }

    pub async fn plan(&self, scope: &Scope, id_or_name: &str) -> Result<Plan> {
        let (clause, t) = scope.clause("tenant");
        let sql = self.sql(&format!(
            "SELECT {PLAN_COLUMNS} FROM plans WHERE (id = ? OR (name = ? AND tenant = ?)){clause} ORDER BY id LIMIT 1"
        ));
        let mut q = sqlx::query(&sql).bind(id_or_name).bind(id_or_name).bind(scope.tenant());
        if let Some(t) = t {
            q = q.bind(t);
        }
        let row = q.fetch_optional(self.pool()).await?.ok_or_else(|| Error::NotFound(format!("plan {id_or_name}")))?;
        plan_from_row(&row)
    }

    pub async fn list_plans(&self, scope: &Scope) -> Result<Vec<Plan>> {
        let (clause, t) = scope.clause("tenant");
        let sql = self.sql(&format!("SELECT {PLAN_COLUMNS} FROM plans WHERE 1 = 1{clause} ORDER BY name"));
        let mut q = sqlx::query(&sql);
        if let Some(t) = t {
            q = q.bind(t);
        }
        q.fetch_all(self.pool()).await?.iter().map(plan_from_row).collect()
    }

    pub async fn delete_plan(&self, scope: &Scope, id_or_name: &str) -> Result<()> {
        let plan = self.plan(scope, id_or_name).await?;
        sqlx::query(&self.sql("DELETE FROM plans WHERE id = ?")).bind(&plan.id).execute(self.pool()).await?;
        Ok(())
    }

    // ---- snapshots --------------------------------------------------------

    pub(crate) async fn record_snapshot(
        &self,
        conn: &mut AnyConnection,
        job: &backstop_types::Job,
        snap: &SnapshotInfo,
    ) -> Result<()> {
        sqlx::query(&self.sql(
            "INSERT INTO snapshots (repository_id, id, tenant, plan_id, job_id, time_ms, hostname, paths, tags, \
             summary, bytes_total, bytes_stored) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (repository_id, id) DO NOTHING",
        ))
        .bind(&job.repository)
        .bind(&snap.id)
        .bind(&job.tenant)
        .bind(&job.plan)
        .bind(&job.id)
        .bind(snap.time.timestamp_millis())
        .bind(&snap.hostname)
        .bind(json!(snap.paths).to_string())
        .bind(json!(snap.tags).to_string())
        .bind(snap.summary.to_string())
        .bind(summary_number(snap, "bytes_total"))
        .bind(summary_number(snap, "bytes_added_stored"))
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    /// What each repository's snapshots of `scope` hold and stored, and up
    /// to `points` (time, stored so far) along the way, oldest first: the
    /// database sums the sizes kept with each snapshot, over all of them
    /// and over `points` spans of time, so 10,000 snapshots cost a few
    /// hundred rows here.
    pub async fn snapshot_usage(&self, scope: &Scope, points: i64) -> Result<Vec<SnapshotUsage>> {
        let (clause, t) = scope.clause("tenant");
        // Sums that cannot overflow, whatever a tenant's manifests claim.
        let sum = |column: &str| match self.kind() {
            crate::DbKind::Postgres => format!("CAST(LEAST(SUM({column}), {}) AS BIGINT)", i64::MAX),
            crate::DbKind::Sqlite => format!("CAST(TOTAL({column}) AS INTEGER)"),
        };
        let totals = self.sql(&format!(
            "SELECT repository_id, COUNT(*) AS n, {} AS total, MIN(time_ms) AS t0, MAX(time_ms) AS t1 \
             FROM snapshots WHERE 1 = 1{clause} GROUP BY repository_id ORDER BY repository_id",
            sum("bytes_total")
        ));
        let mut out: Vec<SnapshotUsage> = Vec::new();
        let (mut t0, mut t1) = (i64::MAX, i64::MIN);
        let mut q = sqlx::query(&totals);
        if let Some(t) = t {
            q = q.bind(t);
        }
        for r in q.fetch_all(self.pool()).await? {
            let (first, last): (i64, i64) = (r.try_get("t0")?, r.try_get("t1")?);
            (t0, t1) = (t0.min(first), t1.max(last));
            out.push(SnapshotUsage {
                repository: r.try_get("repository_id")?,
                snapshots: r.try_get("n")?,
                total_bytes: r.try_get("total")?,
                growth: Vec::new(),
            });
        }
        if out.is_empty() {
            return Ok(out);
        }
        let width = (t1.saturating_sub(t0) / points.max(1)).max(1) + 1;
        let spans = self.sql(&format!(
            "SELECT repository_id, MAX(time_ms) AS t, {} AS stored FROM snapshots \
             WHERE 1 = 1{clause} GROUP BY repository_id, (time_ms - ?) / ? ORDER BY repository_id, t",
            sum("bytes_stored")
        ));
        let mut q = sqlx::query(&spans);
        if let Some(t) = t {
            q = q.bind(t);
        }
        let rows = q.bind(t0).bind(width).fetch_all(self.pool()).await?;
        // The two reads are not one: a repository whose first snapshot came
        // between them has spans and no totals yet; it shows at the next view.
        let at: std::collections::HashMap<String, usize> =
            out.iter().enumerate().map(|(i, u)| (u.repository.clone(), i)).collect();
        for r in &rows {
            let repository: String = r.try_get("repository_id")?;
            let Some(&i) = at.get(&repository) else { continue };
            let so_far = out[i].growth.last().map_or(0, |(_, b)| *b);
            out[i].growth.push((r.try_get("t")?, so_far.saturating_add(r.try_get::<i64, _>("stored")?)));
        }
        Ok(out)
    }

    /// The snapshot of id `id` in a repository of `scope` (one repository's
    /// copy, if several hold it).
    pub async fn snapshot(&self, scope: &Scope, id: &str) -> Result<Snapshot> {
        let (clause, t) = scope.clause("tenant");
        let sql = self.sql(&format!(
            "SELECT repository_id, id, tenant, plan_id, job_id, time_ms, hostname, paths, tags, summary \
             FROM snapshots WHERE id = ?{clause} ORDER BY repository_id LIMIT 1"
        ));
        let mut q = sqlx::query(&sql).bind(id);
        if let Some(t) = t {
            q = q.bind(t);
        }
        let row = q.fetch_optional(self.pool()).await?.ok_or_else(|| Error::NotFound(format!("snapshot {id}")))?;
        snapshot_from_row(&row)
    }

    /// Snapshots of `scope` in time order, filtered, after `after` (a
    /// snapshot's time in ms, id and repository), at most `limit`: a page
    /// of the list, found by the database.
    pub async fn snapshots_page(
        &self,
        scope: &Scope,
        filter: &SnapshotFilter<'_>,
        limit: u32,
    ) -> Result<Vec<Snapshot>> {
        let (clause, t) = scope.clause("tenant");
        let mut sql = format!(
            "SELECT repository_id, id, tenant, plan_id, job_id, time_ms, hostname, paths, tags, summary \
             FROM snapshots WHERE 1 = 1{clause}"
        );
        let mut texts: Vec<&str> = t.into_iter().collect();
        for (column, value) in
            [("repository_id", filter.repository), ("plan_id", filter.plan), ("hostname", filter.host)]
        {
            if let Some(v) = value {
                sql.push_str(&format!(" AND {column} = ?"));
                texts.push(v);
            }
        }
        // A snapshot copied into two repositories has one id and time: the
        // repository orders the copies.
        if filter.after.is_some() {
            sql.push_str(
                " AND (time_ms > ? OR (time_ms = ? AND id > ?) OR (time_ms = ? AND id = ? AND repository_id > ?))",
            );
        }
        sql.push_str(&format!(" ORDER BY time_ms, id, repository_id LIMIT {}", limit.clamp(1, 10_001)));
        let sql = self.sql(&sql);
        let mut q = sqlx::query(&sql);
        for v in texts {
            q = q.bind(v);
        }
        if let Some((time, id, repository)) = filter.after {
            q = q.bind(time).bind(time).bind(id).bind(time).bind(id).bind(repository);
        }
        q.fetch_all(self.pool()).await?.iter().map(snapshot_from_row).collect()
    }

    pub async fn list_snapshots(&self, scope: &Scope, repository: Option<&str>) -> Result<Vec<Snapshot>> {
        let (clause, t) = scope.clause("tenant");
        let mut sql = format!(
            "SELECT repository_id, id, tenant, plan_id, job_id, time_ms, hostname, paths, tags, summary \
             FROM snapshots WHERE 1 = 1{clause}"
        );
        if repository.is_some() {
            sql.push_str(" AND repository_id = ?");
        }
        sql.push_str(" ORDER BY time_ms, id");
        let sql = self.sql(&sql);
        let mut q = sqlx::query(&sql);
        if let Some(t) = t {
            q = q.bind(t);
        }
        if let Some(r) = repository {
            q = q.bind(r);
        }
        q.fetch_all(self.pool()).await?.iter().map(snapshot_from_row).collect()
    }

    /// Make the catalog's snapshots of `repository` exactly `snapshots`
    /// (what the repository holds), keeping the plan and job of those
    /// already known. Returns (added, removed).
    pub async fn reconcile_snapshots(&self, repository: &Repository, snapshots: &[SnapshotInfo]) -> Result<(u32, u32)> {
        let mut tx = self.pool().begin().await?;
        let known: Vec<String> = sqlx::query_scalar(&self.sql("SELECT id FROM snapshots WHERE repository_id = ?"))
            .bind(&repository.id)
            .fetch_all(&mut *tx)
            .await?;
        let present: std::collections::HashSet<&str> = snapshots.iter().map(|s| s.id.as_str()).collect();
        let mut removed = 0;
        for id in &known {
            if !present.contains(id.as_str()) {
                sqlx::query(&self.sql("DELETE FROM snapshots WHERE repository_id = ? AND id = ?"))
                    .bind(&repository.id)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                removed += 1;
            }
        }
        let known: std::collections::HashSet<String> = known.into_iter().collect();
        let mut added = 0;
        for snap in snapshots.iter().filter(|s| !known.contains(&s.id)) {
            sqlx::query(&self.sql(
                "INSERT INTO snapshots (repository_id, id, tenant, time_ms, hostname, paths, tags, summary, \
                 bytes_total, bytes_stored) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            ))
            .bind(&repository.id)
            .bind(&snap.id)
            .bind(&repository.tenant)
            .bind(snap.time.timestamp_millis())
            .bind(&snap.hostname)
            .bind(json!(snap.paths).to_string())
            .bind(json!(snap.tags).to_string())
            .bind(snap.summary.to_string())
            .bind(summary_number(snap, "bytes_total"))
            .bind(summary_number(snap, "bytes_added_stored"))
            .execute(&mut *tx)
            .await?;
            added += 1;
        }
        tx.commit().await?;
        Ok((added, removed))
    }

    // ---- audit ------------------------------------------------------------

    /// Record a mutation: who (`actor`, a token id or `system`), what, on which object.
    pub async fn audit(
        &self,
        tenant: &str,
        actor: &str,
        action: &str,
        object: &str,
        detail: Value,
        now: i64,
    ) -> Result<()> {
        sqlx::query(
            &self.sql("INSERT INTO audit (time_ms, tenant, actor, action, object, detail) VALUES (?, ?, ?, ?, ?, ?)"),
        )
        .bind(now)
        .bind(tenant)
        .bind(actor)
        .bind(action)
        .bind(object)
        .bind(detail.to_string())
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Audit events, newest first.
    pub async fn list_audit(&self, scope: &Scope, cursor: Option<i64>, limit: u32) -> Result<Page<AuditEvent>> {
        let (clause, t) = scope.clause("tenant");
        let limit = limit.clamp(1, 1000);
        let sql = self.sql(&format!(
            "SELECT id, time_ms, tenant, actor, action, object, detail FROM audit WHERE id < ?{clause} \
             ORDER BY id DESC LIMIT {}",
            limit + 1
        ));
        let mut q = sqlx::query(&sql).bind(cursor.unwrap_or(i64::MAX));
        if let Some(t) = t {
            q = q.bind(t);
        }
        let items = q
            .fetch_all(self.pool())
            .await?
            .iter()
            .map(|row| {
                Ok(AuditEvent {
                    id: row.try_get("id")?,
                    time: time(row.try_get("time_ms")?),
                    tenant: row.try_get("tenant")?,
                    actor: row.try_get("actor")?,
                    action: row.try_get("action")?,
                    object: row.try_get("object")?,
                    detail: parse_json(row, "detail")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(page(items, limit, |e| e.id.to_string()))
    }
}

/// Check a source's configuration up front, so a plan never fails later
/// for a mistake that could have been caught now.
pub fn validate_source(spec: &SourceSpec) -> Result<()> {
    // What the configuration means is its packager's to say
    // (`backstop_source::validate`); the catalog stores it as it is.
    if !spec.config.is_object() {
        return Err(Error::Invalid("config must be a JSON object".into()));
    }
    Ok(())
}

/// A source row's kind.
pub(crate) fn source_kind(row: &AnyRow) -> Result<SourceKind> {
    let kind: String = row.try_get("kind")?;
    SourceKind::parse(&kind).ok_or_else(|| Error::Corrupt(format!("unknown source kind {kind:?}")))
}

/// A plan's numbers within their limits, each error on its field.
fn check_plan_limits(spec: &PlanSpec) -> Result<()> {
    let invalid = |field: &'static str, message: String| Err(Error::Invalid(message).on(field));
    if spec.deadline_seconds.is_some_and(|d| d == 0 || d > crate::queue::MAX_DEADLINE_SECONDS) {
        return invalid("deadline_seconds", "deadline_seconds must be between 1 and 2592000 (30 days)".into());
    }
    if spec.jitter_seconds > 24 * 3600 {
        return invalid("jitter_seconds", "jitter_seconds is at most a day (86400)".into());
    }
    if spec.chain.verify_percent > 100 {
        return invalid("chain.verify_percent", "chain.verify_percent is a percentage (0–100)".into());
    }
    if spec.chain.retention && spec.retention.is_empty() {
        return invalid(
            "retention",
            "chain.retention needs a retention policy (keep_last, keep_daily, …); without one every snapshot would \
             be forgotten"
                .into(),
        );
    }
    if spec.max_attempts.is_some_and(|n| !(1..=crate::queue::MAX_ATTEMPTS).contains(&n)) {
        return invalid("max_attempts", format!("max_attempts must be between 1 and {}", crate::queue::MAX_ATTEMPTS));
    }
    for tag in &spec.tags {
        check_text("a tag", tag, 128).map_err(|e| e.on("tags"))?;
        if tag.contains(',') {
            // The web UI's plan form lists tags separated by commas: such a
            // tag would come back from it as several.
            return invalid("tags", format!("a tag cannot hold a comma ({tag:?}): give each tag on its own"));
        }
    }
    Ok(())
}

/// Which snapshots [`Catalog::snapshots_page`] lists.
#[derive(Debug, Clone, Copy, Default)]
pub struct SnapshotFilter<'a> {
    pub repository: Option<&'a str>,
    pub plan: Option<&'a str>,
    pub host: Option<&'a str>,
    /// After this snapshot (time in ms, id, repository), in time order.
    pub after: Option<(i64, &'a str, &'a str)>,
}

/// A whole number of a snapshot's summary (0 when absent), kept beside it
/// so that usage is summed without reading every summary.
fn summary_number(snap: &SnapshotInfo, key: &str) -> i64 {
    snap.summary.get(key).and_then(Value::as_u64).map_or(0, |n| n.min(MAX_SNAPSHOT_BYTES as u64) as i64)
}

/// The most a snapshot's size may count for (1 PiB): a manifest is its
/// tenant's to write, and no claim of its may overflow the sums.
pub(crate) const MAX_SNAPSHOT_BYTES: i64 = 1 << 50;

/// One repository's snapshots as [`Catalog::snapshot_usage`] sums them up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotUsage {
    pub repository: String,
    pub snapshots: i64,
    /// What the snapshots hold, each counted whole.
    pub total_bytes: i64,
    /// (time in ms, bytes their backups stored up to then), the last at the newest snapshot.
    pub growth: Vec<(i64, i64)>,
}
