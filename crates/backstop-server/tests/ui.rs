//! The web UI over plain HTTP (the browser tests are in the CLI crate's
//! `tests/ui.rs`): sessions and their cookies, CSRF, the security headers,
//! and the same roles and tenant scopes as the API.

use backstop_types::*;
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::json;

mod common;

use common::*;

/// A browser without JavaScript: keeps no cookies itself, follows no redirects.
struct Page {
    base: String,
    http: reqwest::Client,
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn location(&self) -> &str {
        self.headers.get("location").and_then(|v| v.to_str().ok()).unwrap_or_default()
    }

    /// The `Set-Cookie` of cookie `name`, whole.
    fn set_cookie(&self, name: &str) -> String {
        self.headers
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with(&format!("{name}=")))
            .unwrap_or_default()
            .to_string()
    }

    /// The value of cookie `name` that this answer sets.
    fn cookie(&self, name: &str) -> String {
        let set = self.set_cookie(name);
        set.split(';').next().unwrap_or_default().split_once('=').map(|(_, v)| v.to_string()).unwrap_or_default()
    }

    /// The value of the first hidden input `name` in the page.
    fn hidden(&self, name: &str) -> String {
        let marker = format!("name=\"{name}\" value=\"");
        let at = self.body.find(&marker).unwrap_or_else(|| panic!("no {name} in {}", self.body)) + marker.len();
        self.body[at..].split('"').next().unwrap().to_string()
    }
}

impl Page {
    fn new(api: &Api) -> Page {
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        Page { base: api.base.clone(), http }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Answer {
        let answer = req.send().await.unwrap();
        let (status, headers) = (answer.status(), answer.headers().clone());
        Answer { status, headers, body: answer.text().await.unwrap() }
    }

    async fn get(&self, path: &str, cookies: &str) -> Answer {
        self.send(self.http.get(format!("{}{path}", self.base)).header("cookie", cookies)).await
    }

    async fn post(&self, path: &str, cookies: &str, origin: Option<&str>, form: &[(&str, &str)]) -> Answer {
        let mut req = self.http.post(format!("{}{path}", self.base)).header("cookie", cookies);
        if let Some(o) = origin {
            req = req.header("origin", HeaderValue::from_str(o).unwrap());
        }
        let body: String = form
            .iter()
            .map(|(k, v)| format!("{k}={}", v.replace('%', "%25").replace('&', "%26").replace('=', "%3D")))
            .collect::<Vec<_>>()
            .join("&");
        self.send(req.header("content-type", "application/x-www-form-urlencoded").body(body)).await
    }

    /// Post the login form with `token`.
    async fn post_login(&self, token: &str) -> Answer {
        let form = self.get("/login", "").await;
        assert_eq!(form.status, StatusCode::OK);
        let login_csrf = form.cookie("bst_login");
        assert_eq!(form.hidden("login_csrf"), login_csrf);
        let cookies = format!("bst_login={login_csrf}");
        self.post("/login", &cookies, None, &[("token", token), ("login_csrf", &login_csrf)]).await
    }

    /// Log in with `token`; returns the session's cookie header and the page's CSRF token.
    async fn login(&self, token: &str) -> (String, String) {
        let done = self.post_login(token).await;
        assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
        assert_eq!(done.location(), "/");
        let session = format!("bst_session={}", done.cookie("bst_session"));
        let dashboard = self.get("/", &session).await;
        assert_eq!(dashboard.status, StatusCode::OK, "{}", dashboard.body);
        (session, dashboard.hidden("csrf"))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_is_a_strict_http_only_cookie_that_logout_ends_on_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.workers = 0;
    let running = backstop_server::start(c).await.unwrap();
    let admin = running.admin_token.clone().unwrap();
    let page = Page::new(&Api::new(&running));

    // Without a session every page sends the browser to the login form.
    let first = page.get("/", "").await;
    assert_eq!(first.status, StatusCode::SEE_OTHER);
    assert_eq!(first.location(), "/login");
    let jobs = page.get("/jobs", "").await;
    assert_eq!(jobs.location(), "/login");
    assert_eq!(page.get("/live/running", "").await.status, StatusCode::UNAUTHORIZED, "the script's endpoint");

    // A wrong token is refused on the form; the login form's CSRF value is required.
    let wrong = page.post_login("bst_wrong").await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(wrong.body.contains("not valid"), "{}", wrong.body);
    let forged = page.post("/login", "", None, &[("token", &admin), ("login_csrf", "guessed")]).await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN, "a login without the form's cookie is refused");
    assert!(forged.set_cookie("bst_session").is_empty());

    let (session, csrf) = page.login(&admin).await;
    let done = page.get("/", &session).await;
    assert!(!done.body.contains(&admin), "the token never appears in a page");
    let set = page.post_login(&admin).await.set_cookie("bst_session");
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"] {
        assert!(set.contains(flag), "{flag} in {set}");
    }
    assert!(!set.contains("Secure"), "no Secure over plain HTTP (the browser would drop the cookie)");

    // Every page forbids framing and inline script.
    let headers = &done.headers;
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(headers["x-frame-options"], "DENY");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["cache-control"], "no-store");

    // The assets are named by their content and cached for good.
    let css = done.body.split("href=\"/assets/").nth(1).unwrap().split('"').next().unwrap().to_string();
    let asset = page.get(&format!("/assets/{css}"), "").await;
    assert_eq!(asset.status, StatusCode::OK);
    assert!(asset.headers["cache-control"].to_str().unwrap().contains("immutable"));
    assert!(asset.headers.get("content-encoding").is_none(), "not compressed for a client that did not ask");
    let url = format!("{}/assets/{css}", page.base);
    let packed = page.http.get(&url).header("accept-encoding", "gzip, br, zstd").send().await.unwrap();
    assert_eq!(packed.headers()["content-encoding"], "zstd");
    let packed = packed.bytes().await.unwrap();
    assert_eq!(zstd::bulk::decompress(&packed, 1 << 20).unwrap(), asset.body.as_bytes());
    let packed = page.http.get(&url).header("accept-encoding", "gzip, deflate").send().await.unwrap();
    assert_eq!(packed.headers()["content-encoding"], "deflate");
    assert_eq!(page.get("/assets/app.0000000000000000.css", "").await.status, StatusCode::NOT_FOUND);

    // A logout without the CSRF token, or from another site, is refused; with it the session ends on the server.
    assert_eq!(page.post("/logout", &session, None, &[]).await.status, StatusCode::FORBIDDEN);
    let cross = page.post("/logout", &session, Some("http://evil.example"), &[("csrf", &csrf)]).await;
    assert_eq!(cross.status, StatusCode::FORBIDDEN);
    assert_eq!(page.get("/", &session).await.status, StatusCode::OK, "the refused logouts changed nothing");
    let out = page.post("/logout", &session, None, &[("csrf", &csrf)]).await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert!(out.set_cookie("bst_session").contains("Max-Age=0"));
    let after = page.get("/", &session).await;
    assert_eq!(after.location(), "/login", "the old cookie no longer works after logout");

    // A session ends with its token.
    let api = Api::new(&running);
    let viewer: NewToken = serde_json::from_value(
        api.ok("post", "/api/v1/tokens", &admin, Some(json!({"name": "v", "role": "viewer"}))).await,
    )
    .unwrap();
    let (viewer_session, _) = page.login(viewer.secret.expose()).await;
    api.call("delete", &format!("/api/v1/tokens/{}", viewer.token.id), Some(&admin), None).await;
    assert_eq!(page.get("/", &viewer_session).await.location(), "/login");

    // Worker tokens cannot log in.
    let worker: NewToken = serde_json::from_value(
        api.ok("post", "/api/v1/tokens", &admin, Some(json!({"name": "w", "role": "worker"}))).await,
    )
    .unwrap();
    assert_eq!(page.post_login(worker.secret.expose()).await.status, StatusCode::FORBIDDEN);

    // The login is in the audit trail.
    let audit = api.ok("get", "/api/v1/audit", &admin, None).await;
    assert!(audit["items"].as_array().unwrap().iter().any(|e| e["action"] == "session.login"), "{audit}");
}

#[tokio::test(flavor = "multi_thread")]
async fn pages_act_with_the_sessions_role_and_see_only_its_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.workers = 0; // jobs stay queued
    let running = backstop_server::start(c).await.unwrap();
    let admin = running.admin_token.clone().unwrap();
    let api = Api::new(&running);
    let page = Page::new(&api);
    let job: Job = serde_json::from_value(
        api.ok("post", "/api/v1/jobs", &admin, Some(json!({"kind": "check", "repository": "local"}))).await,
    )
    .unwrap();
    let viewer: NewToken = serde_json::from_value(
        api.ok("post", "/api/v1/tokens", &admin, Some(json!({"name": "v", "role": "viewer"}))).await,
    )
    .unwrap();
    api.ok("post", "/api/v1/tenants", &admin, Some(json!({"id": "tb"}))).await;
    let other: NewToken = serde_json::from_value(
        api.ok("post", "/api/v1/tokens", &admin, Some(json!({"name": "b", "role": "admin", "tenant": "tb"}))).await,
    )
    .unwrap();
    let job_page = format!("/jobs/{}", job.id);
    let cancel = format!("/jobs/{}/cancel", job.id);

    // A viewer sees the job but no control to change it, and a forged cancel is refused.
    let (session, csrf) = page.login(viewer.secret.expose()).await;
    let seen = page.get(&job_page, &session).await;
    assert_eq!(seen.status, StatusCode::OK);
    assert!(seen.body.contains(&job.id) && !seen.body.contains("/cancel"), "{}", seen.body);
    assert_eq!(page.post(&cancel, &session, None, &[("csrf", &csrf)]).await.status, StatusCode::FORBIDDEN);
    let plans = page.get("/plans", &session).await;
    assert_eq!(plans.status, StatusCode::OK);
    assert!(plans.body.contains("No plan yet") && !plans.body.contains("Run now"), "{}", plans.body);
    let run = page.post("/plans/nightly/run", &session, None, &[("csrf", &csrf)]).await;
    assert_eq!(run.status, StatusCode::FORBIDDEN, "a viewer cannot run a plan");

    // Another tenant's session: the job is not found on any page.
    let (session_b, csrf_b) = page.login(other.secret.expose()).await;
    assert_eq!(page.get(&job_page, &session_b).await.status, StatusCode::NOT_FOUND);
    for path in ["/", "/jobs", "/jobs?state=queued", "/live/running", "/plans", "/sources", "/snapshots"] {
        let seen = page.get(path, &session_b).await;
        assert_eq!(seen.status, StatusCode::OK, "{path}");
        assert!(!seen.body.contains(&job.id), "{path} shows another tenant's job");
    }
    assert_eq!(page.post(&cancel, &session_b, None, &[("csrf", &csrf_b)]).await.status, StatusCode::NOT_FOUND);

    // The admin sees the queued job and why it waits; a cancel without the CSRF token is refused.
    let (session_a, csrf_a) = page.login(&admin).await;
    let dashboard = page.get("/", &session_a).await;
    assert!(dashboard.body.contains(&job.id), "{}", dashboard.body);
    let seen = page.get(&job_page, &session_a).await;
    assert!(seen.body.contains("/cancel"));
    assert_eq!(page.post(&cancel, &session_a, None, &[("csrf", "")]).await.status, StatusCode::FORBIDDEN);
    assert_eq!(page.post(&cancel, &session_a, None, &[("csrf", &csrf)]).await.status, StatusCode::FORBIDDEN);
    let still: Job =
        serde_json::from_value(api.ok("get", &format!("/api/v1/jobs/{}", job.id), &admin, None).await).unwrap();
    assert_eq!(still.state, JobState::Queued, "no refused form changed the job");

    let done = page.post(&cancel, &session_a, None, &[("csrf", &csrf_a)]).await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
    assert_eq!(done.location(), job_page);
    let cancelled: Job =
        serde_json::from_value(api.ok("get", &format!("/api/v1/jobs/{}", job.id), &admin, None).await).unwrap();
    assert_eq!(cancelled.state, JobState::Cancelled);
    let audit = api.ok("get", "/api/v1/audit", &admin, None).await;
    assert!(audit["items"].as_array().unwrap().iter().any(|e| e["action"] == "job.cancel"), "the API's audit");

    // Run again makes a new job of the same kind.
    let again = page.post(&format!("{job_page}/rerun"), &session_a, None, &[("csrf", &csrf_a)]).await;
    assert_eq!(again.status, StatusCode::SEE_OTHER, "{}", again.body);
    let new_id = again.location().strip_prefix("/jobs/").unwrap().to_string();
    assert_ne!(new_id, job.id);
    let new: Job =
        serde_json::from_value(api.ok("get", &format!("/api/v1/jobs/{new_id}"), &admin, None).await).unwrap();
    assert_eq!((new.kind, new.state), (JobKind::Check, JobState::Queued));

    // A filter the list does not know is a 400 page, not a panic.
    assert_eq!(page.get("/jobs?state=sleeping", &session_a).await.status, StatusCode::BAD_REQUEST);
    assert_eq!(page.get("/jobs?colour=red", &session_a).await.status, StatusCode::BAD_REQUEST);
    assert_eq!(page.get("/jobs/nonexistent", &session_a).await.status, StatusCode::NOT_FOUND);
}
