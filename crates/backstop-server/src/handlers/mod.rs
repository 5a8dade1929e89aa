//! Request handlers, one module per resource; every route is listed in
//! `router.rs`. Handlers check the caller's role, confine the catalog to
//! the caller's tenant, and record an audit event for every mutation.

pub mod jobs;
pub mod ops;
pub mod plans;
pub mod resources;
pub mod worker;

use backstop_catalog::now_ms;
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
