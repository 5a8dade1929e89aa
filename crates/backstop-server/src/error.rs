//! API errors: one JSON body (`{"error": {"code", "message"}}`) and a
//! status per kind of failure (the code's: [`ErrorCode::status`]).

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use backstop_types::{ErrorBody, ErrorCode, ErrorDetail};

#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// The request field it is about, if any ([`ErrorDetail::field`]).
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError { code, message: message.into(), field: None }
    }

    /// The same error, about the request's `field`.
    pub fn on(self, field: &str) -> ApiError {
        ApiError { field: Some(field.to_string()), ..self }
    }

    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::Invalid, message)
    }

    pub fn unauthorized() -> ApiError {
        ApiError::new(
            ErrorCode::Unauthorized,
            "send a token as `Authorization: Bearer <token>` (the admin token is printed on the server's first start)",
        )
    }

    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::Forbidden, message)
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::Internal, message)
    }

    pub fn not_found(what: impl std::fmt::Display) -> ApiError {
        ApiError::new(ErrorCode::NotFound, format!("{what} not found"))
    }

    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl From<backstop_catalog::Error> for ApiError {
    fn from(e: backstop_catalog::Error) -> ApiError {
        use backstop_catalog::Error as E;
        let e = match e {
            E::Field { field, error } => return ApiError::from(*error).on(field),
            e => e,
        };
        let code = match &e {
            E::NotFound(_) => ErrorCode::NotFound,
            E::Conflict(_) => ErrorCode::Conflict,
            E::Invalid(_) => ErrorCode::Invalid,
            E::KeyReused(_) => ErrorCode::IdempotencyKeyReused,
            E::StaleAttempt { .. } => ErrorCode::StaleAttempt,
            E::Corrupt(_) => ErrorCode::Internal,
            E::Field { .. } => unreachable!("answered above"),
            E::Db(_) if e.is_transient() => {
                return ApiError::new(ErrorCode::Unavailable, "the catalog database is busy; retry");
            }
            E::Db(_) => {
                eprintln!("backstop serve: catalog error: {e}");
                return ApiError::internal("catalog database error (logged)");
            }
        };
        ApiError::new(code, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = ErrorBody { error: ErrorDetail { code: self.code, message: self.message, field: self.field } };
        (status, Json(body)).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
