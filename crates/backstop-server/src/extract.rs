//! Request extractors whose every refusal is the API's JSON error
//! envelope with a 4xx status: a body that is not JSON, or not the shape
//! the endpoint takes (an unknown field is named), a query string that does
//! not parse, a missing or wrong content type.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use backstop_types::ErrorCode;

use crate::error::ApiError;

/// A JSON request body of type `T`.
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Json<T>, ApiError> {
        let mut value = match axum::Json::<serde_json::Value>::from_request(req, state).await {
            Ok(axum::Json(v)) => v,
            Err(e) => return Err(json_rejection(e)),
        };
        integral(&mut value);
        serde_json::from_value(value).map(Json).map_err(|e| ApiError::invalid(format!("the body does not fit: {e}")))
    }
}

/// Numbers without a fraction as integers (`3.0` is `3`), as JSON Schema
/// counts them: a client's JSON library may well write them so.
fn integral(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            if f.fract() == 0.0 && f.abs() < 9.0e15 {
                *value = if f < 0.0 { serde_json::json!(f as i64) } else { serde_json::json!(f as u64) };
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(integral),
        serde_json::Value::Object(map) => map.values_mut().for_each(integral),
        _ => {}
    }
}

fn json_rejection(e: JsonRejection) -> ApiError {
    match e {
        JsonRejection::MissingJsonContentType(_) => {
            ApiError::new(ErrorCode::UnsupportedMediaType, "send the body as JSON, with Content-Type: application/json")
        }
        JsonRejection::JsonSyntaxError(e) => ApiError::invalid(format!("the body is not JSON: {}", e.body_text())),
        JsonRejection::JsonDataError(e) => ApiError::invalid(format!("the body does not fit: {}", e.body_text())),
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::new(ErrorCode::TooLarge, "the body is too large (at most 2 MiB)")
        }
        other => ApiError::invalid(format!("cannot read the body: {}", other.body_text())),
    }
}

/// A query string of type `T`.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Query<T>, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Query(v)),
            Err(QueryRejection::FailedToDeserializeQueryString(e)) => {
                Err(ApiError::invalid(format!("the query string does not fit: {}", e.body_text())))
            }
            Err(e) => Err(ApiError::invalid(e.body_text())),
        }
    }
}

impl<T: serde::Serialize> axum::response::IntoResponse for Json<T> {
    fn into_response(self) -> axum::response::Response {
        axum::Json(self.0).into_response()
    }
}
