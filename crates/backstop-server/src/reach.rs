//! The early answer to "may this tenant's job reach that?". The API checks
//! what a request names — local paths, hosts, sockets, the workers' own
//! commands and credentials — against the tenant's reach before it stores
//! or queues anything, so a tenant hears of a refusal at once. It is only
//! the early answer: the worker checks again at the moment of use
//! (`backstop-confine`), when a link or a DNS answer may have changed.

use std::path::Path;

use backstop_confine::{NetError, NetScope};
use backstop_source::Touches;
use backstop_types::Secret;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

fn refused(e: NetError) -> ApiError {
    match e {
        NetError::Resolve { .. } => ApiError::invalid(e.to_string()),
        _ => ApiError::forbidden(e.to_string()),
    }
}

/// Whether `host:port` resolves to an address `net` allows (looked up off
/// the async threads).
pub async fn check_host(net: &NetScope, host: &str, port: u16) -> ApiResult<()> {
    if net.is_any() {
        return Ok(());
    }
    let (net, host) = (net.clone(), host.to_string());
    tokio::task::spawn_blocking(move || net.resolve(&host, port))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map(drop)
        .map_err(refused)
}

/// Check what a configuration of `tenant`'s touches, asked by `caller`.
pub async fn check(state: &AppState, caller: &Caller, tenant: &str, touches: &Touches) -> ApiResult<()> {
    if let Some(what) = &touches.workers_own {
        caller.require_system_admin(what)?;
    }
    let reach = state.reach_of(tenant).await?;
    for path in &touches.paths {
        reach.paths.check(path).map_err(|e| ApiError::forbidden(e.to_string()))?;
    }
    for socket in &touches.sockets {
        reach.net.check_unix(socket).map_err(refused)?;
    }
    for (host, port) in &touches.hosts {
        check_host(&reach.net, host, *port).await?;
    }
    Ok(())
}

/// Check a local path of `tenant`'s (a restore target, a repository).
pub fn check_path(state: &AppState, tenant: &str, path: &str) -> ApiResult<()> {
    state.paths_of(tenant).check(Path::new(path)).map_err(|e| ApiError::forbidden(e.to_string()))
}

/// Check a repository location of `tenant`'s: a local path beneath its
/// roots; an S3 repository with its own endpoint and credentials (the
/// service's are not lent) at an address it was granted.
pub async fn check_location(
    state: &AppState,
    tenant: &str,
    location: &str,
    options: &[(String, Secret<String>)],
) -> ApiResult<()> {
    let reach = state.reach_of(tenant).await?;
    if reach.net.is_any() && reach.paths.is_any() {
        return Ok(());
    }
    if location.starts_with("s3://") {
        let get = |k: &str| {
            options
                .iter()
                .map(|(n, v)| (n, v.expose()))
                .find(|(n, v)| *n == k && !v.is_empty())
                .map(|(_, v)| v.as_str())
        };
        let (Some(endpoint), Some(_), Some(_)) = (get("endpoint"), get("access_key_id"), get("secret_access_key"))
        else {
            return Err(ApiError::forbidden(
                "an S3 repository of a tenant needs its own endpoint, access_key_id and secret_access_key options",
            ));
        };
        let url = reqwest::Url::parse(endpoint)
            .map_err(|e| ApiError::invalid(format!("the S3 endpoint {endpoint:?} is not a URL: {e}")))?;
        let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
            return Err(ApiError::invalid(format!("the S3 endpoint {endpoint:?} names no host")));
        };
        return check_host(&reach.net, host.trim_start_matches('[').trim_end_matches(']'), port).await;
    }
    check_path(state, tenant, location.strip_prefix("file:").unwrap_or(location))
}
