//! Logging in with a token, and out.

use super::*;

fn login_page(error: Option<&str>, login_csrf: &str) -> Markup {
    layout(
        "Log in",
        None,
        html! {
            h1 { "Log in" }
            p { "Log in with an API token: the admin token printed on the service's first start, or any token an admin made (" code { "backstop tokens create" } ")." }
            @if let Some(e) = error { p.error role="alert" { (e) } }
            form.login method="post" action="/login" {
                input type="hidden" name="login_csrf" value=(login_csrf);
                label for="token" { "Token" }
                input #token type="password" name="token" autocomplete="off" required autofocus;
                button type="submit" { "Log in" }
            }
        },
    )
}

/// The login form (with `error` above it), and its fresh CSRF cookie.
fn login_answer(state: &AppState, status: StatusCode, error: Option<&str>) -> Response {
    let value = crate::random_hex(16);
    let mut response = (status, Html(login_page(error, &value).into_string())).into_response();
    response.headers_mut().append(header::SET_COOKIE, login_cookie(state, Some(&value)));
    response
}

pub async fn login_form(State(state): State<AppState>) -> Response {
    login_answer(&state, StatusCode::OK, None)
}

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    login_csrf: String,
}

pub async fn login(State(state): State<AppState>, headers: HeaderMap, Form(form): Form<LoginForm>) -> Response {
    let again = |status: StatusCode, message: &str| login_answer(&state, status, Some(message));
    let expected = cookie(&headers, crate::ui::LOGIN_COOKIE).unwrap_or_default();
    if crate::ui::same_origin(&headers).is_err()
        || expected.is_empty()
        || !crate::ui::same_secret(expected, &form.login_csrf)
    {
        return again(StatusCode::FORBIDDEN, "The login form expired or came from another site; try again.");
    }
    let token = match state.catalog.authenticate(form.token.trim(), now_ms()).await {
        Ok(Some(token)) if token.role != Role::Worker => token,
        Ok(Some(_)) => {
            return again(
                StatusCode::FORBIDDEN,
                "A worker token cannot log in; use a viewer, operator or admin token.",
            );
        }
        Ok(None) => return again(StatusCode::UNAUTHORIZED, "That token is not valid, or it was revoked."),
        Err(e) => return fail(e.into()),
    };
    let session =
        match state.catalog.create_session(&token.id, now_ms(), crate::ui::SESSION_TTL.as_millis() as i64).await {
            Ok(s) => s,
            Err(e) => return fail(e.into()),
        };
    let caller = crate::auth::Caller { token };
    if let Err(e) = crate::handlers::audit(
        &state,
        &caller,
        "session.login",
        format!("token/{}", caller.token.id),
        serde_json::json!({}),
    )
    .await
    {
        return fail(e);
    }
    let mut response = see_other("/");
    response.headers_mut().append(header::SET_COOKIE, session_cookie(&state, Some(&session.secret)));
    response.headers_mut().append(header::SET_COOKIE, login_cookie(&state, None));
    response
}

pub async fn logout(State(state): State<AppState>, UiAction(session): UiAction) -> Response {
    if let Err(e) = state.catalog.end_session(&session.secret).await {
        return fail(e.into());
    }
    let mut response = see_other("/login");
    response.headers_mut().append(header::SET_COOKIE, session_cookie(&state, None));
    response
}
