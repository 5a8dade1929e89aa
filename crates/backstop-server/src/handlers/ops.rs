//! Health, readiness, metrics and the OpenAPI document.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;

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

pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let counts = state.catalog.job_counts().await.unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render(&counts))
}

pub async fn openapi() -> Json<serde_json::Value> {
    Json(crate::openapi::document())
}
