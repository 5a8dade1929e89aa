//! Health, readiness, metrics and the OpenAPI document.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;

use backstop_catalog::resources::Scope;
use backstop_types::Role;

use crate::auth::Caller;
use crate::error::ApiResult;
use crate::extract::Json;
use crate::state::AppState;

/// The process is up.
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// The process can serve: the catalog answers.
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    match state.catalog.ping().await {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("the catalog does not answer: {e}\n")),
    }
}

/// Prometheus metrics, for a viewer token (a scrape config's
/// `bearer_token`) unless the service runs with `--metrics-public`. A
/// tenant's token sees its own tenant's job counts only, not the process's
/// counters.
pub async fn metrics(State(state): State<AppState>, parts: axum::http::request::Parts) -> ApiResult<impl IntoResponse> {
    let caller = if state.metrics_public {
        None
    } else {
        let mut parts = parts;
        let caller =
            <Caller as axum::extract::FromRequestParts<AppState>>::from_request_parts(&mut parts, &state).await?;
        caller.require(Role::Viewer)?;
        Some(caller)
    };
    let scope = caller.as_ref().map_or(Scope::All, Caller::scope);
    let counts = state.catalog.job_counts(&scope).await?;
    let text = match scope {
        Scope::All => state.metrics.render(&counts),
        Scope::Tenant(_) => crate::metrics::render_jobs(&counts),
    };
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text))
}

pub async fn openapi() -> Json<serde_json::Value> {
    Json(crate::openapi::document())
}
