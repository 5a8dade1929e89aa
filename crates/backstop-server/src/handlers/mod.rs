//! Request handlers, one module per resource; every route is listed in
//! `router.rs`. Handlers check the caller's role, confine the catalog to
//! the caller's tenant, and record an audit event for every mutation.

pub mod jobs;
pub mod ops;
pub mod plans;
pub mod resources;
pub mod snapshots;
pub mod worker;

use backstop_catalog::now_ms;
use backstop_types::Page;
use serde::Deserialize;
use serde_json::Value;

use axum::http::HeaderMap;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// Record a mutation by `caller` on `object`.
pub(crate) async fn audit(
    state: &AppState,
    caller: &Caller,
    action: &str,
    object: String,
    detail: Value,
) -> ApiResult<()> {
    state.catalog.audit(&caller.token.tenant, &caller.actor(), action, &object, detail, now_ms()).await?;
    Ok(())
}

/// `?cursor=…&limit=…` of a list.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    /// `next_cursor` of the page before.
    pub cursor: Option<String>,
    #[schemars(range(min = 1, max = 1000))]
    pub limit: Option<u32>,
}

/// A query's reference to an object (its name or id), if given.
pub(crate) fn check_ref(what: &str, value: &Option<String>) -> ApiResult<()> {
    match value {
        Some(v) => backstop_types::check::name(what, v).map_err(ApiError::invalid),
        None => Ok(()),
    }
}

/// A query's host, if given.
pub(crate) fn check_host(value: &Option<String>) -> ApiResult<()> {
    match value {
        Some(v) => backstop_types::check::host(v).map_err(ApiError::invalid),
        None => Ok(()),
    }
}

/// A page size: 100 unless asked, 1 to 1000.
pub(crate) fn page_limit(limit: Option<u32>) -> ApiResult<usize> {
    match limit {
        None => Ok(100),
        Some(n @ 1..=1000) => Ok(n as usize),
        Some(_) => Err(ApiError::invalid("limit must be between 1 and 1000")),
    }
}

/// The `Idempotency-Key` header, the same on every endpoint that takes
/// one: 1 to 200 visible ASCII characters (no spaces).
pub(crate) fn idempotency_key(headers: &HeaderMap) -> ApiResult<Option<String>> {
    let Some(v) = headers.get("idempotency-key") else { return Ok(None) };
    let key = v.to_str().ok().filter(|k| (1..=200).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()));
    match key {
        Some(key) => Ok(Some(key.to_string())),
        None => Err(ApiError::invalid("Idempotency-Key must be 1–200 visible ASCII characters (no spaces)")),
    }
}

/// One page of `items`, ordered by `key`: the items after the cursor, at
/// most `limit` (default 100, at most 1000) of them.
pub(crate) fn paginate<T>(mut items: Vec<T>, key: impl Fn(&T) -> String, q: &PageQuery) -> ApiResult<Page<T>> {
    let limit = page_limit(q.limit)?;
    items.sort_by_key(|i| key(i));
    let mut items: Vec<T> = match &q.cursor {
        Some(c) => items.into_iter().filter(|i| key(i) > *c).collect(),
        None => items,
    };
    let next_cursor = (items.len() > limit).then(|| key(&items[limit - 1]));
    items.truncate(limit);
    Ok(Page { items, next_cursor })
}
