//! Repositories, sources, snapshots, tokens, tenants and the audit trail.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use backstop_catalog::now_ms;
use backstop_catalog::resources::{SYSTEM_TENANT, Scope};
use backstop_types::{
    AuditEvent, CatalogRebuild, NewToken, Page, RebuiltRepository, Repository, RepositoryOption, RepositorySpec, Role,
    Snapshot, Source, SourceKind, SourceSpec, SourceUpdate, Tenant, TenantSpec, Token, TokenSpec,
};
use serde::Deserialize;
use serde_json::json;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Json, Query};
use crate::handlers::{PageQuery, audit, check_host, check_ref, paginate};
use crate::state::AppState;

// ---- repositories ---------------------------------------------------------

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RepositoryQuery {
    #[schemars(pattern(backstop_types::NAME_PATTERN))]
    pub region: Option<String>,
    pub cursor: Option<String>,
    #[schemars(range(min = 1, max = 1000))]
    pub limit: Option<u32>,
}

pub async fn list_repositories(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<RepositoryQuery>,
) -> ApiResult<Json<Page<Repository>>> {
    caller.require(Role::Viewer)?;
    check_ref("region", &q.region)?;
    let repos: Vec<Repository> = state
        .catalog
        .list_repositories(&caller.scope())
        .await?
        .into_iter()
        .filter(|r| q.region.as_ref().is_none_or(|g| &r.region == g))
        .collect();
    Ok(Json(paginate(
        repos,
        |r| format!("{}/{}", r.name, r.id),
        &PageQuery { cursor: q.cursor.clone(), limit: q.limit },
    )?))
}

pub async fn get_repository(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Repository>> {
    caller.require(Role::Viewer)?;
    Ok(Json(state.catalog.repository(&caller.scope(), &id).await?))
}

/// Register a repository; with `init`, create it first (when its location is empty).
pub async fn create_repository(
    State(state): State<AppState>,
    caller: Caller,
    Json(spec): Json<RepositorySpec>,
) -> ApiResult<(StatusCode, Json<Repository>)> {
    caller.require(Role::Operator)?;
    if let Some((name, _)) = spec.options.iter().find(|(n, _)| RepositoryOption::parse(n).is_none()) {
        let known: Vec<&str> = RepositoryOption::ALL.iter().map(|o| o.as_str()).collect();
        return Err(ApiError::invalid(format!("unknown repository option {name:?} (known: {})", known.join(", "))));
    }
    let tenant = caller.scope().tenant().to_string();
    crate::reach::check_location(&state, &tenant, &spec.location, &spec.options).await?;
    if spec.init {
        let access = backstop_types::RepositoryAccess {
            id: String::new(),
            location: spec.location.clone(),
            password: spec.password.clone(),
            options: spec.options.clone(),
        };
        let reach = state.reach_of(&tenant).await?;
        tokio::task::spawn_blocking(move || init_or_open(&access, &reach))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))??;
    }
    let repo = state.catalog.create_repository(&caller.scope(), &spec, now_ms()).await?;
    audit(
        &state,
        &caller,
        "repository.create",
        format!("repository/{}", repo.name),
        json!({"location": repo.location, "region": repo.region}),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(repo)))
}

/// Create the repository, or check that the one there opens with the
/// password; reaching only what the tenant's `reach` allows (the request
/// is the tenant's, though the coordinator makes it).
fn init_or_open(access: &backstop_types::RepositoryAccess, reach: &backstop_types::Reach) -> ApiResult<()> {
    // A refusal of the tenant's reach is a 403; anything else about the
    // location is the request's (400).
    let refused = |e: &backstop_repo::Error| match e {
        backstop_repo::Error::Backend(b) => b.kind() == backstop_backend::ErrorKind::PermissionDenied,
        backstop_repo::Error::Io { error, .. } => error.kind() == std::io::ErrorKind::PermissionDenied,
        _ => false,
    };
    let answer = |what: String, e: backstop_repo::Error| {
        let message = format!("{what}: {e}");
        if refused(&e) { ApiError::forbidden(message) } else { ApiError::invalid(message) }
    };
    match backstop_worker::run::open_repository(access, reach) {
        Ok(_) => Ok(()),
        Err(backstop_repo::Error::NoRepository { .. }) => {
            let options = backstop_worker::run::backend_options(access, reach, &Default::default())
                .map_err(|e| ApiError::invalid(e.to_string()))?;
            let backend = backstop_backend::open(&access.location, &options)
                .map_err(|e| answer("cannot open the repository".into(), e.into()))?;
            backstop_repo::Repository::init(
                backend,
                &backstop_repo::Password::new(access.password.expose()),
                backstop_repo::InitOptions::default(),
            )
            .map(|_| ())
            .map_err(|e| answer("cannot create the repository".into(), e))
        }
        Err(e) => Err(answer(format!("the repository at {} cannot be used", access.location), e)),
    }
}

pub async fn delete_repository(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    caller.require(Role::Operator)?;
    let repo = state.catalog.repository(&caller.scope(), &id).await?;
    state.catalog.delete_repository(&caller.scope(), &repo.id).await?;
    audit(&state, &caller, "repository.delete", format!("repository/{}", repo.name), json!({})).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- sources --------------------------------------------------------------

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceQuery {
    pub kind: Option<backstop_types::SourceKind>,
    #[schemars(pattern(backstop_types::HOST_PATTERN))]
    pub host: Option<String>,
    pub cursor: Option<String>,
    #[schemars(range(min = 1, max = 1000))]
    pub limit: Option<u32>,
}

pub async fn list_sources(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<SourceQuery>,
) -> ApiResult<Json<Page<Source>>> {
    caller.require(Role::Viewer)?;
    check_host(&q.host)?;
    let sources: Vec<Source> = state
        .catalog
        .list_sources(&caller.scope())
        .await?
        .into_iter()
        .filter(|s| q.kind.is_none_or(|k| k == s.kind) && q.host.as_ref().is_none_or(|h| s.host.as_ref() == Some(h)))
        .collect();
    Ok(Json(paginate(
        sources,
        |s| format!("{}/{}", s.name, s.id),
        &PageQuery { cursor: q.cursor.clone(), limit: q.limit },
    )?))
}

pub async fn get_source(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Source>> {
    caller.require(Role::Viewer)?;
    Ok(Json(state.catalog.source(&caller.scope(), &id).await?))
}

pub async fn create_source(
    State(state): State<AppState>,
    caller: Caller,
    Json(spec): Json<SourceSpec>,
) -> ApiResult<(StatusCode, Json<Source>)> {
    caller.require(Role::Operator)?;
    check_source(&state, &caller, caller.scope().tenant(), spec.kind, &spec.config, spec.secrets.expose()).await?;
    let source = state.catalog.create_source(&caller.scope(), &spec, now_ms()).await?;
    audit(&state, &caller, "source.create", format!("source/{}", source.name), json!({"kind": source.kind})).await?;
    Ok((StatusCode::CREATED, Json(source)))
}

/// Change a source's host and configuration (and its secrets, when given).
pub async fn update_source(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(update): Json<SourceUpdate>,
) -> ApiResult<Json<Source>> {
    caller.require(Role::Operator)?;
    let scope = caller.scope();
    let source = state.catalog.source(&scope, &id).await?;
    // Checked with the credentials it will have: the new ones, or those stored.
    let secrets = match update.secrets.expose() {
        serde_json::Value::Null => state.catalog.source_secrets(&scope, &source.id).await?,
        given => given.clone(),
    };
    check_source(&state, &caller, &source.tenant, source.kind, &update.config, &secrets).await?;
    let source = state.catalog.update_source(&scope, &source.id, &update).await?;
    audit(&state, &caller, "source.update", format!("source/{}", source.name), json!({"kind": source.kind})).await?;
    Ok(Json(source))
}

/// A source's configuration and secrets, as its packager and its tenant
/// allow them: no credential in the configuration, valid hooks, values the
/// packager takes, nothing beyond the tenant's reach.
async fn check_source(
    state: &AppState,
    caller: &Caller,
    tenant: &str,
    kind: SourceKind,
    config: &serde_json::Value,
    secrets: &serde_json::Value,
) -> ApiResult<()> {
    refuse_secrets_in_config(config)?;
    backstop_source::hooks::Hooks::parse(config.get("hooks")).map_err(|e| ApiError::invalid(e.to_string()))?;
    let mut all = config.as_object().cloned().unwrap_or_default();
    match secrets {
        serde_json::Value::Null => {}
        serde_json::Value::Object(secrets) => all.extend(secrets.clone()),
        _ => {
            return Err(ApiError::invalid(
                "secrets is an object: the kind's credentials by name ({\"password\": …} or {\"token\": …})",
            ));
        }
    }
    // Secrets are options too (a database password), stored apart, sealed.
    backstop_source::validate(kind, &all).map_err(|e| ApiError::invalid(e.to_string()))?;
    // What it would reach on the workers' hosts, checked against the
    // tenant's reach (and again by the worker when it runs).
    let touches = backstop_source::touches(kind, &all, false).map_err(|e| ApiError::invalid(e.to_string()))?;
    crate::reach::check(state, caller, tenant, &touches).await
}

/// A source's `config` is stored and shown as it is: a password or token in
/// it (or in a URL) belongs in `secrets`, which are sealed and never shown.
fn refuse_secrets_in_config(config: &serde_json::Value) -> ApiResult<()> {
    let config = config.as_object();
    let key =
        ["password", "token", "secret_access_key"].into_iter().find(|k| config.is_some_and(|c| c.contains_key(*k)));
    let url_password = config
        .and_then(|c| c.get("url"))
        .and_then(|u| u.as_str())
        .is_some_and(|u| backstop_source::redact_spec(u) != u);
    match (key, url_password) {
        (Some(key), _) => Err(ApiError::invalid(format!(
            "config.{key} is stored and shown as it is: give it in secrets instead (\"secrets\": {{\"{key}\": …}}), \
             which are sealed and never shown"
        ))),
        (None, true) => Err(ApiError::invalid(
            "the URL in config.url carries a password, and config is stored and shown as it is: take it out of \
             the URL and give it in secrets instead (\"secrets\": {\"password\": …}), which are sealed and never shown",
        )),
        (None, false) => Ok(()),
    }
}

pub async fn delete_source(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    caller.require(Role::Operator)?;
    let source = state.catalog.source(&caller.scope(), &id).await?;
    state.catalog.delete_source(&caller.scope(), &source.id).await?;
    audit(&state, &caller, "source.delete", format!("source/{}", source.name), json!({})).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- snapshots ------------------------------------------------------------

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotQuery {
    #[schemars(pattern(backstop_types::REF_PATTERN))]
    pub repository: Option<String>,
    #[schemars(pattern(backstop_types::REF_PATTERN))]
    pub plan: Option<String>,
    #[schemars(pattern(backstop_types::HOST_PATTERN))]
    pub host: Option<String>,
    /// `next_cursor` of the page before.
    #[schemars(pattern(r"^([0-9]{1,18}/[0-9a-f]{0,64}(/[0-9a-f-]{0,36})?)?$"))]
    pub cursor: Option<String>,
    #[schemars(range(min = 1, max = 1000))]
    pub limit: Option<u32>,
}

/// Snapshots, oldest first.
pub async fn list_snapshots(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<SnapshotQuery>,
) -> ApiResult<Json<Page<Snapshot>>> {
    caller.require(Role::Viewer)?;
    check_ref("repository", &q.repository)?;
    check_ref("plan", &q.plan)?;
    check_host(&q.host)?;
    let scope = caller.scope();
    let repo = match &q.repository {
        Some(r) => Some(state.catalog.repository(&scope, r).await?.id),
        None => None,
    };
    let plan = match &q.plan {
        Some(p) => Some(state.catalog.plan(&scope, p).await?.id),
        None => None,
    };
    // The cursor is the last snapshot's `{time:015}/{id}/{repository}`, as the page before gave it.
    let after = match q.cursor.as_deref().filter(|c| !c.is_empty()) {
        Some(c) => {
            let mut parts = c.splitn(3, '/');
            let parsed = match (parts.next().and_then(|t| t.parse::<i64>().ok()), parts.next()) {
                (Some(time), Some(id)) => Some((time, id, parts.next().unwrap_or(""))),
                _ => None,
            };
            Some(parsed.ok_or_else(|| ApiError::invalid("cursor is not one a page of snapshots gave").on("cursor"))?)
        }
        None => None,
    };
    let limit = crate::handlers::page_limit(q.limit)?;
    let filter = backstop_catalog::resources::SnapshotFilter {
        repository: repo.as_deref(),
        plan: plan.as_deref(),
        host: q.host.as_deref(),
        after,
    };
    let mut items = state.catalog.snapshots_page(&scope, &filter, limit as u32 + 1).await?;
    let next_cursor = (items.len() > limit).then(|| {
        let last = &items[limit - 1];
        format!("{:015}/{}/{}", last.info.time.timestamp_millis(), last.info.id, last.repository)
    });
    items.truncate(limit);
    Ok(Json(Page { items, next_cursor }))
}

/// Rebuild the catalog's snapshots from the repositories themselves.
pub async fn rebuild_catalog(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<CatalogRebuild>> {
    caller.require(Role::Operator)?;
    let scope = caller.scope();
    let mut out = Vec::new();
    for repo in state.catalog.list_repositories(&scope).await? {
        let access = state.catalog.repository_access(&scope, &repo.id).await?;
        // Each repository is opened as its own tenant's job would open it.
        let reach = state.reach_of(&repo.tenant).await?;
        let listed = tokio::task::spawn_blocking(move || -> Result<Vec<backstop_types::SnapshotInfo>, String> {
            let r = backstop_worker::run::open_repository(&access, &reach).map_err(|e| e.to_string())?;
            let snaps = r.snapshots().map_err(|e| e.to_string())?;
            Ok(snaps
                .into_iter()
                .map(|(id, s)| backstop_types::SnapshotInfo {
                    id: id.to_string(),
                    time: s.time,
                    hostname: s.hostname.clone(),
                    paths: s.paths.clone(),
                    tags: s.tags.clone(),
                    summary: serde_json::to_value(&s.summary).unwrap_or_default(),
                })
                .collect())
        })
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
        let entry = match listed {
            Ok(snaps) => {
                let (added, removed) = state.catalog.reconcile_snapshots(&repo, &snaps).await?;
                RebuiltRepository {
                    repository: repo.name,
                    snapshots: Some(snaps.len() as u64),
                    added: Some(added),
                    removed: Some(removed),
                    error: None,
                }
            }
            Err(e) => {
                RebuiltRepository { repository: repo.name, snapshots: None, added: None, removed: None, error: Some(e) }
            }
        };
        out.push(entry);
    }
    audit(&state, &caller, "catalog.rebuild", "catalog".into(), json!({"repositories": out.len()})).await?;
    Ok(Json(CatalogRebuild { repositories: out }))
}

// ---- tokens ---------------------------------------------------------------

pub async fn list_tokens(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<PageQuery>,
) -> ApiResult<Json<Page<Token>>> {
    caller.require(Role::Admin)?;
    Ok(Json(paginate(state.catalog.list_tokens(&caller.scope()).await?, |t| t.id.clone(), &q)?))
}

pub async fn create_token(
    State(state): State<AppState>,
    caller: Caller,
    Json(spec): Json<TokenSpec>,
) -> ApiResult<(StatusCode, Json<NewToken>)> {
    caller.require(Role::Admin)?;
    let tenant = spec.tenant.clone().unwrap_or_else(|| caller.token.tenant.clone());
    if tenant != caller.token.tenant && caller.scope() != Scope::All {
        return Err(ApiError::not_found(format!("tenant {tenant}")));
    }
    if spec.role == Role::Worker && tenant != SYSTEM_TENANT {
        return Err(ApiError::invalid("worker tokens belong to the system tenant: workers serve every tenant's jobs"));
    }
    let token = state.catalog.create_token(&tenant, &spec.name, spec.role, now_ms()).await?;
    audit(
        &state,
        &caller,
        "token.create",
        format!("token/{}", token.token.id),
        json!({"role": spec.role, "tenant": tenant}),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(token)))
}

pub async fn revoke_token(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    caller.require(Role::Admin)?;
    state.catalog.revoke_token(&caller.scope(), &id, now_ms()).await?;
    state.revoked();
    audit(&state, &caller, "token.revoke", format!("token/{id}"), json!({})).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- tenants --------------------------------------------------------------

pub async fn list_tenants(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<PageQuery>,
) -> ApiResult<Json<Page<Tenant>>> {
    caller.require(Role::Admin)?;
    Ok(Json(paginate(state.catalog.list_tenants(&caller.scope()).await?, |t| t.id.clone(), &q)?))
}

/// Create a tenant (201), or change its name and network grants (200).
pub async fn create_tenant(
    State(state): State<AppState>,
    caller: Caller,
    Json(spec): Json<TenantSpec>,
) -> ApiResult<(StatusCode, Json<Tenant>)> {
    caller.require(Role::Admin)?;
    if caller.scope() != Scope::All {
        return Err(ApiError::forbidden("only administrators of the system tenant create and change tenants"));
    }
    if spec.id == SYSTEM_TENANT && spec.allow_net.is_some() {
        return Err(ApiError::invalid("the system tenant's jobs reach anything; it takes no network grants"));
    }
    let existed = state.catalog.tenant(&Scope::All, &spec.id).await.is_ok();
    let tenant = state.catalog.put_tenant(&spec.id, spec.name.as_deref(), spec.allow_net.as_deref(), now_ms()).await?;
    let action = if existed { "tenant.update" } else { "tenant.create" };
    audit(&state, &caller, action, format!("tenant/{}", tenant.id), json!({"allow_net": tenant.allow_net})).await?;
    Ok((if existed { StatusCode::OK } else { StatusCode::CREATED }, Json(tenant)))
}

// ---- audit ----------------------------------------------------------------

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// `next_cursor` of the page before (an event id).
    #[schemars(range(min = 0))]
    pub cursor: Option<i64>,
    #[schemars(range(min = 1, max = 1000))]
    pub limit: Option<u32>,
}

pub async fn list_audit(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Json<Page<AuditEvent>>> {
    caller.require(Role::Admin)?;
    if q.cursor.is_some_and(|c| c < 0) {
        return Err(ApiError::invalid("cursor is an audit event id (0 or more)"));
    }
    let limit = crate::handlers::page_limit(q.limit)? as u32;
    Ok(Json(state.catalog.list_audit(&caller.scope(), q.cursor, limit).await?))
}

/// What each repository's snapshots in the catalog say of it: how many,
/// what they hold, what their backups stored and how that grew.
pub async fn repository_usage(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<backstop_types::RepositoryUsage>>> {
    caller.require(Role::Viewer)?;
    let scope = caller.scope();
    let (repositories, usage) =
        tokio::join!(state.catalog.list_repositories(&scope), state.catalog.snapshot_usage(&scope, 200));
    let mut usage: std::collections::HashMap<String, _> =
        usage?.into_iter().map(|u| (u.repository.clone(), u)).collect();
    Ok(Json(
        repositories?
            .into_iter()
            .map(|r| {
                let u = usage.remove(&r.id);
                let growth: Vec<backstop_types::UsagePoint> = u
                    .as_ref()
                    .map(|u| {
                        u.growth
                            .iter()
                            .map(|(t, stored)| backstop_types::UsagePoint {
                                time: chrono::DateTime::from_timestamp_millis(*t).unwrap_or_default(),
                                stored_bytes: (*stored).max(0) as u64,
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                backstop_types::RepositoryUsage {
                    repository: r.id,
                    snapshots: u.as_ref().map_or(0, |u| u.snapshots.max(0) as u32),
                    logical_bytes: u.as_ref().map_or(0, |u| u.total_bytes.max(0) as u64),
                    stored_bytes: growth.last().map_or(0, |p| p.stored_bytes),
                    growth,
                }
            })
            .collect(),
    ))
}
