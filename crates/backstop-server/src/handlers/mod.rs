//! Request handlers, one module per resource; every route is listed in
//! `router.rs`. Handlers check the caller's role, confine the catalog to
//! the caller's tenant, and record an audit event for every mutation.

pub mod jobs;
pub mod ops;
pub mod plans;
pub mod resources;
pub mod worker;

use backstop_catalog::now_ms;
use backstop_types::Page;
use serde::Deserialize;
use serde_json::Value;

use crate::auth::Caller;
use crate::error::ApiResult;
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
#[derive(Debug, Default, Deserialize)]
pub struct PageQuery {
    pub cursor: Option<String>,
    pub limit: Option<u32>,
}

/// One page of `items`, ordered by `key`: the items after the cursor, at
/// most `limit` (default 100, at most 1000) of them.
pub(crate) fn paginate<T>(mut items: Vec<T>, key: impl Fn(&T) -> String, q: &PageQuery) -> Page<T> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000) as usize;
    items.sort_by_key(|i| key(i));
    let mut items: Vec<T> = match &q.cursor {
        Some(c) => items.into_iter().filter(|i| key(i) > *c).collect(),
        None => items,
    };
    let next_cursor = (items.len() > limit).then(|| key(&items[limit - 1]));
    items.truncate(limit);
    Page { items, next_cursor }
}
