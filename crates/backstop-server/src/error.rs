//! API errors: one JSON body (`{"error": {"code", "message"}}`) and a
//! status per kind of failure.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use backstop_types::{ErrorBody, ErrorDetail};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into() }
    }

    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid", message)
    }

    pub fn unauthorized() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send a token as `Authorization: Bearer <token>` (the admin token is printed on the server's first start)",
        )
    }

    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    pub fn not_found(what: impl std::fmt::Display) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("{what} not found"))
    }
}

impl From<backstop_catalog::Error> for ApiError {
    fn from(e: backstop_catalog::Error) -> ApiError {
        use backstop_catalog::Error as E;
        match &e {
            E::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string()),
            E::Conflict(_) => ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string()),
            E::Invalid(_) => ApiError::invalid(e.to_string()),
            E::KeyReused(_) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused", e.to_string()),
            E::StaleAttempt { .. } => ApiError::new(StatusCode::CONFLICT, "stale_attempt", e.to_string()),
            E::Corrupt(_) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
            E::Db(_) if e.is_transient() => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "the catalog database is busy; retry")
            }
            E::Db(_) => {
                eprintln!("backstop serve: catalog error: {e}");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "catalog database error (logged)")
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { error: ErrorDetail { code: self.code.to_string(), message: self.message } };
        (self.status, Json(body)).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
