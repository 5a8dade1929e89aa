//! The web UI: server-rendered HTML on the API's port, for people with a
//! browser. Every page is a thin view of the API: it calls the same
//! handler the API route calls (`handlers::*`), as the session's token, so
//! roles, tenant scopes and audit are the API's own and there is no second
//! permission model. Pages read without JavaScript; `assets/app.js` only
//! adds live updates from the API's event stream.
//!
//! Security: logging in with a token makes a session ([`backstop_catalog::sessions`])
//! whose secret is an HttpOnly, SameSite=Strict cookie (Secure under TLS);
//! the token itself never appears in a URL, a page or a log. Every
//! state-changing request is a POST carrying the session's CSRF token,
//! and a POST whose `Origin` is another site is refused before that. Every
//! string is escaped by the templates (maud); the Content-Security-Policy
//! allows no inline script or style, and no page may be framed.

mod assets;
mod pages;

use std::time::Duration;

use axum::Router;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use backstop_catalog::now_ms;
use backstop_catalog::sessions::Session;
use backstop_types::Role;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;

/// How long a session lasts after logging in.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
const SESSION_COOKIE: &str = "bst_session";
/// The login form's own CSRF value, before there is a session.
const LOGIN_COOKIE: &str = "bst_login";

/// The UI's routes: pages, forms, the live event stream and the assets.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(pages::dashboard))
        .route("/login", get(pages::login_form).post(pages::login))
        .route("/logout", post(pages::logout))
        .route("/jobs", get(pages::jobs))
        .route("/jobs/{id}", get(pages::job))
        .route("/jobs/{id}/cancel", post(pages::cancel))
        .route("/jobs/{id}/rerun", post(pages::rerun))
        .route("/jobs/{id}/live", get(pages::live))
        .route("/plans", get(pages::plans).post(pages::save_plan))
        .route("/plans/new", get(pages::new_plan))
        .route("/plans/{id}/edit", get(pages::edit_plan))
        .route("/plans/{id}/run", post(pages::run_plan))
        .route("/plans/{id}/enabled", post(pages::set_enabled))
        .route("/plans/{id}/delete", post(pages::delete_plan))
        .route("/live/schedule", get(pages::live_schedule))
        .route("/sources", get(pages::sources).post(pages::save_source))
        .route("/sources/new", get(pages::new_source))
        .route("/sources/{id}", post(pages::update_source))
        .route("/sources/{id}/edit", get(pages::edit_source))
        .route("/sources/{id}/delete", post(pages::delete_source))
        .route("/repositories", get(pages::repositories).post(pages::register_repository))
        .route("/repositories/{id}/{kind}", post(pages::maintain))
        .route("/snapshots", get(pages::snapshots))
        .route("/snapshots/{id}", get(pages::snapshot))
        .route("/snapshots/{id}/download", get(pages::download))
        .route("/snapshots/{id}/restore", post(pages::restore))
        .route("/snapshots/{id}/restore-disk", post(pages::restore_disk))
        .route("/live/running", get(pages::running))
        .route("/admin/tokens", get(pages::tokens).post(pages::create_token))
        .route("/admin/tokens/{id}/revoke", post(pages::revoke_token))
        .route("/admin/tenants", get(pages::tenants).post(pages::create_tenant))
        .route("/admin/audit", get(pages::audit))
        .route("/assets/{name}", get(assets::serve))
        .layer(axum::middleware::map_response(secure_headers))
}

/// What every UI answer carries: no framing, no inline script, no sniffing.
async fn secure_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    let csp = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
               connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(csp));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    headers.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    response
}

/// The logged-in browser: its session, and the caller it acts as.
pub struct UiSession {
    pub session: Session,
    /// The cookie's secret, to end the session with.
    secret: String,
}

impl UiSession {
    pub fn caller(&self) -> Caller {
        Caller { token: self.session.token.clone() }
    }

    /// Whether the session's role includes `role` (to show a control only to those who may use it).
    pub fn may(&self, role: Role) -> bool {
        self.caller().require(role).is_ok()
    }
}

/// Why a request has no usable session.
pub enum NoSession {
    /// A page: go and log in first.
    Login,
    /// The live stream or a form: refused.
    Refused(ApiError),
}

impl IntoResponse for NoSession {
    fn into_response(self) -> Response {
        match self {
            NoSession::Login => Redirect::to("/login").into_response(),
            NoSession::Refused(e) => pages::error_page(&e),
        }
    }
}

/// The value of cookie `name` in the request's headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

impl FromRequestParts<AppState> for UiSession {
    type Rejection = NoSession;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<UiSession, NoSession> {
        state.metrics.request();
        // A page sends the browser to the login form; the live endpoints
        // (read by the pages' script) and forms answer 401.
        let path = parts.uri.path();
        let page = parts.method == Method::GET && !(path.starts_with("/live/") || path.ends_with("/live"));
        let Some(secret) = cookie(&parts.headers, SESSION_COOKIE) else {
            return Err(if page {
                NoSession::Login
            } else {
                NoSession::Refused(ApiError::new(
                    backstop_types::ErrorCode::Unauthorized,
                    "log in first: there is no session (or the request came from another site)",
                ))
            });
        };
        match state.catalog.session(secret, now_ms()).await {
            Ok(Some(session)) => Ok(UiSession { session, secret: secret.to_string() }),
            Ok(None) if page => Err(NoSession::Login),
            Ok(None) => Err(NoSession::Refused(ApiError::new(
                backstop_types::ErrorCode::Unauthorized,
                "the session has ended; log in again",
            ))),
            Err(e) => Err(NoSession::Refused(e.into())),
        }
    }
}

/// Whether two secrets are equal, in time that does not depend on where they differ.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Refuse a state-changing request from another site: its `Origin` (sent
/// by every browser with a POST) must be this service's own address.
fn same_origin(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else { return Ok(()) };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let own = origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://"));
    if own == Some(host) { Ok(()) } else { Err(ApiError::forbidden("a form of another site cannot act here")) }
}

/// The hidden field every state-changing form carries.
#[derive(serde::Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

/// A state-changing form of a logged-in browser: its session and its
/// fields (`T`), once the form came from this site and carried the
/// session's CSRF token. Every POST but the login's takes one (or
/// [`UiAction`], a form of no other fields), so no handler can forget the
/// check.
pub struct UiForm<T>(pub UiSession, pub T);

impl<T: serde::de::DeserializeOwned> FromRequest<AppState> for UiForm<T> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &AppState) -> Result<UiForm<T>, Response> {
        let (mut parts, body) = req.into_parts();
        same_origin(&parts.headers).map_err(|e| pages::error_page(&e))?;
        let session = UiSession::from_request_parts(&mut parts, state).await.map_err(IntoResponse::into_response)?;
        let body = axum::body::Bytes::from_request(Request::from_parts(parts, body), state)
            .await
            .map_err(IntoResponse::into_response)?;
        let CsrfForm { csrf } = serde_urlencoded::from_bytes(&body).unwrap_or(CsrfForm { csrf: String::new() });
        if !same_secret(&csrf, &session.session.csrf) {
            let e = ApiError::forbidden("the form's CSRF token is missing or wrong; reload the page and try again");
            return Err(pages::error_page(&e));
        }
        let form = serde_urlencoded::from_bytes(&body)
            .map_err(|e| pages::error_page(&ApiError::invalid(format!("the form is not one this page sends: {e}"))))?;
        Ok(UiForm(session, form))
    }
}

/// A form with no fields but its CSRF token (a button: cancel, run now).
pub struct UiAction(pub UiSession);

impl FromRequest<AppState> for UiAction {
    type Rejection = Response;

    async fn from_request(req: Request, state: &AppState) -> Result<UiAction, Response> {
        let UiForm(session, serde::de::IgnoredAny) = UiForm::from_request(req, state).await?;
        Ok(UiAction(session))
    }
}

/// `Set-Cookie` for the session (or, with `None`, its removal).
fn session_cookie(state: &AppState, secret: Option<&str>) -> HeaderValue {
    let secure = if state.secure_cookies { "; Secure" } else { "" };
    let value = match secret {
        Some(s) => format!(
            "{SESSION_COOKIE}={s}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
            SESSION_TTL.as_secs()
        ),
        None => format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}"),
    };
    HeaderValue::from_str(&value).expect("cookie values are ASCII")
}

/// `Set-Cookie` for the login form's CSRF value (or, with `None`, its removal).
fn login_cookie(state: &AppState, value: Option<&str>) -> HeaderValue {
    let secure = if state.secure_cookies { "; Secure" } else { "" };
    let (value, age) = match value {
        Some(v) => (v, 3600),
        None => ("", 0),
    };
    HeaderValue::from_str(&format!(
        "{LOGIN_COOKIE}={value}; Path=/login; HttpOnly; SameSite=Strict; Max-Age={age}{secure}"
    ))
    .expect("cookie values are ASCII")
}

/// A redirect after a form (303: the browser follows with a GET).
fn see_other(to: &str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, HeaderValue::from_str(to).unwrap_or(HeaderValue::from_static("/")))])
        .into_response()
}

/// `/jobs/{id}` of a job id the API gave (ids are plain).
fn job_url(id: &str) -> String {
    format!("/jobs/{}", urlencode(id))
}

/// What [`urlencode`] leaves as it is: RFC 3986's unreserved characters.
const UNRESERVED: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// A query string value or path segment, percent-encoded.
fn urlencode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, UNRESERVED).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_by_name_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_static("a=1; bst_session=bss_x; bst_login=y"));
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("bss_x"));
        assert_eq!(cookie(&headers, LOGIN_COOKIE), Some("y"));
        assert_eq!(cookie(&headers, "bst"), None);
    }

    #[test]
    fn a_post_from_another_origin_is_refused() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
        assert!(same_origin(&headers).is_ok(), "no Origin: not a cross-site browser request");
        headers.insert(header::ORIGIN, HeaderValue::from_static("http://127.0.0.1:8080"));
        assert!(same_origin(&headers).is_ok());
        headers.insert(header::ORIGIN, HeaderValue::from_static("http://evil.example"));
        assert!(same_origin(&headers).is_err());
        headers.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(same_origin(&headers).is_err());
    }

    #[test]
    fn secrets_compare_equal_only_when_equal() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "ab"));
        assert!(!same_secret("", "a"));
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(urlencode("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
    }
}
