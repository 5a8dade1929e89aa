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

    /// The value of the input whose id is `id`.
    fn hidden_value(&self, id: &str) -> String {
        let at = self.body.find(&format!("id=\"{id}\"")).unwrap_or_else(|| panic!("no #{id} in {}", self.body));
        let rest = &self.body[at..];
        let value = rest.find("value=\"").unwrap() + "value=\"".len();
        rest[value..].split('"').next().unwrap().to_string()
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

#[tokio::test(flavor = "multi_thread")]
async fn sources_and_plans_are_made_through_forms_that_show_each_error_by_its_field() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.workers = 0;
    let running = backstop_server::start(c).await.unwrap();
    let admin = running.admin_token.clone().unwrap();
    let api = Api::new(&running);
    let page = Page::new(&api);
    let (session, csrf) = page.login(&admin).await;
    let src = source_tree(dir.path());

    // Every kind has its own form, from the kind's fields; credentials are password inputs.
    for kind in SourceKind::ALL {
        let form = page.get(&format!("/sources/new?kind={}", kind.as_str()), &session).await;
        assert_eq!(form.status, StatusCode::OK, "{kind:?}");
        for field in backstop_source::packager(kind).fields() {
            assert!(
                form.body.contains(&format!("\"config.{}\"", field.key))
                    || form.body.contains(&format!("\"secret.{}\"", field.key)),
                "{kind:?} {}",
                field.key
            );
        }
    }
    assert!(
        page.get("/sources/new?kind=postgres", &session)
            .await
            .body
            .contains("type=\"password\" name=\"secret.password\"")
    );
    assert_eq!(page.get("/sources/new?kind=floppy", &session).await.status, StatusCode::BAD_REQUEST);

    // An fs source without paths is refused by the API's check, and the form comes back with what was typed.
    let missing = page.post("/sources", &session, None, &[("csrf", &csrf), ("kind", "fs"), ("name", "data")]).await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
    assert!(missing.body.contains("paths") && missing.body.contains("role=\"alert\""), "{}", missing.body);
    assert!(missing.body.contains("value=\"data\""), "the name is kept");
    let made = page
        .post("/sources", &session, None, &[("csrf", &csrf), ("kind", "fs"), ("name", "data"), ("config.paths", &src)])
        .await;
    assert_eq!(made.status, StatusCode::SEE_OTHER, "{}", made.body);
    let source: Source = serde_json::from_value(api.ok("get", "/api/v1/sources/data", &admin, None).await).unwrap();
    assert_eq!(source.config, json!({"paths": [src]}));

    // A database's password goes into the sealed secrets and never into a page, not even a refused one.
    let db = [("csrf", csrf.as_str()), ("kind", "postgres"), ("name", "db"), ("secret.password", "pw-never-shown")];
    let refused = page.post("/sources", &session, None, &db).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "no url");
    assert!(!refused.body.contains("pw-never-shown"));
    let db = [db.as_slice(), &[("config.url", "postgres://127.0.0.1/app")]].concat();
    assert_eq!(page.post("/sources", &session, None, &db).await.status, StatusCode::SEE_OTHER);
    for path in ["/sources", "/plans/new", "/"] {
        assert!(!page.get(path, &session).await.body.contains("pw-never-shown"), "{path}");
    }

    // A source is edited through the same form, its values shown, its credentials kept unless typed again,
    // and what the form has no field for (hooks) kept as it was.
    let hooks = json!({"pre": [{"command": "true"}]});
    let (status, body) = api
        .call("put", "/api/v1/sources/data", Some(&admin), Some(json!({"config": {"paths": [src], "hooks": hooks}})))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let edit = page.get(&format!("/sources/{}/edit", source.id), &session).await;
    assert_eq!(edit.status, StatusCode::OK);
    assert!(edit.body.contains(&src) && edit.body.contains("Save source"), "{}", edit.body);
    let other = dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let both = format!("{src}\n{}", other.display());
    let changed = page
        .post(
            &format!("/sources/{}", source.id),
            &session,
            None,
            &[("csrf", &csrf), ("config.paths", &both), ("config.one_file_system", "on")],
        )
        .await;
    assert_eq!(changed.status, StatusCode::SEE_OTHER, "{}", changed.body);
    let source: Source = serde_json::from_value(api.ok("get", "/api/v1/sources/data", &admin, None).await).unwrap();
    assert_eq!(
        source.config,
        json!({"paths": [src, other.display().to_string()], "one_file_system": true, "hooks": hooks})
    );
    let emptied =
        page.post(&format!("/sources/{}", source.id), &session, None, &[("csrf", &csrf), ("config.paths", "")]).await;
    assert_eq!(emptied.status, StatusCode::BAD_REQUEST, "an fs source needs paths");
    let db_source: Source = serde_json::from_value(api.ok("get", "/api/v1/sources/db", &admin, None).await).unwrap();
    let db_edit = page.get(&format!("/sources/{}/edit", db_source.id), &session).await;
    assert!(db_edit.body.contains("empty: keep the stored one") && !db_edit.body.contains("pw-never-shown"));
    let kept = page
        .post(
            &format!("/sources/{}", db_source.id),
            &session,
            None,
            &[("csrf", &csrf), ("config.url", "postgres://127.0.0.1/other")],
        )
        .await;
    assert_eq!(kept.status, StatusCode::SEE_OTHER, "{}", kept.body);

    // The schedule's next fires, as the form's script reads them; a bad one is a 400 on its field.
    let fires = page.get("/live/schedule?schedule=0%202%20*%20*%20*&timezone=UTC", &session).await;
    assert_eq!(fires.status, StatusCode::OK, "{}", fires.body);
    let fires: ScheduleFires = serde_json::from_str(&fires.body).unwrap();
    assert_eq!(fires.fires.len(), 5);
    assert!(fires.fires.iter().all(|t| t.format("%H:%M").to_string() == "02:00"));
    let bad = page.get("/live/schedule?schedule=61%20*%20*%20*%20*", &session).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(serde_json::from_str::<ErrorBody>(&bad.body).unwrap().error.field.as_deref(), Some("schedule"));

    // A plan with a bad schedule comes back with the error next to the schedule, and its values kept.
    let plan = |schedule: &str| {
        vec![
            ("csrf", csrf.clone()),
            ("name", "nightly".into()),
            ("source", "data".into()),
            ("repository", "local".into()),
            ("schedule", schedule.to_string()),
            ("timezone", "Europe/Berlin".into()),
            ("keep_daily", "7".into()),
            ("chain_retention", "on".into()),
            ("enabled", "on".into()),
        ]
    };
    let refused = page.post("/plans", &session, None, &refs(&plan("0 25 * * *"))).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert!(field(&refused.body, "schedule").contains("field-error"), "{}", refused.body);
    assert!(refused.body.contains("value=\"Europe/Berlin\""), "the values are kept");
    let mut wrong_number = plan("0 2 * * *");
    wrong_number.push(("jitter_seconds", "soon".into()));
    let refused = page.post("/plans", &session, None, &refs(&wrong_number)).await;
    assert!(field(&refused.body, "jitter_seconds").contains("field-error"), "{}", refused.body);
    let mut no_source = plan("0 2 * * *");
    no_source[2].1 = "nothing".into();
    let refused = page.post("/plans", &session, None, &refs(&no_source)).await;
    assert_eq!(refused.status, StatusCode::NOT_FOUND);
    assert!(field(&refused.body, "source").contains("field-error"), "{}", refused.body);

    let good = plan("0 2 * * *");
    let saved = page.post("/plans", &session, None, &refs(&good)).await;
    assert_eq!(saved.status, StatusCode::SEE_OTHER, "{}", saved.body);
    let made: Plan = serde_json::from_value(api.ok("get", "/api/v1/plans/nightly", &admin, None).await).unwrap();
    assert_eq!(
        (made.timezone.as_str(), made.retention.keep_daily, made.chain.retention),
        ("Europe/Berlin", Some(7), true)
    );
    assert!(made.enabled && made.next_fire.is_some());

    // Its edit form shows it as it is, with its next fires; disable, enable and delete act on it.
    let edit = page.get(&format!("/plans/{}/edit", made.id), &session).await;
    assert_eq!(edit.status, StatusCode::OK);
    assert!(edit.body.contains("value=\"0 2 * * *\"") && edit.body.contains("<li>"), "{}", edit.body);
    let toggle = format!("/plans/{}/enabled", made.id);
    assert_eq!(
        page.post(&toggle, &session, None, &[("csrf", &csrf), ("enabled", "false")]).await.status,
        StatusCode::SEE_OTHER
    );
    let off: Plan = serde_json::from_value(api.ok("get", "/api/v1/plans/nightly", &admin, None).await).unwrap();
    assert!(!off.enabled && off.next_fire.is_none() && off.retention == made.retention, "{off:?}");
    assert_eq!(page.post(&toggle, &session, None, &[("enabled", "true")]).await.status, StatusCode::FORBIDDEN, "CSRF");

    // A viewer gets no form and cannot post one.
    let viewer: NewToken = serde_json::from_value(
        api.ok("post", "/api/v1/tokens", &admin, Some(json!({"name": "v", "role": "viewer"}))).await,
    )
    .unwrap();
    let (viewer_session, viewer_csrf) = page.login(viewer.secret.expose()).await;
    assert_eq!(page.get("/plans/new", &viewer_session).await.status, StatusCode::FORBIDDEN);
    assert_eq!(page.get("/sources/new", &viewer_session).await.status, StatusCode::FORBIDDEN);
    let mut forged = good.clone();
    forged[0].1 = viewer_csrf;
    assert_eq!(page.post("/plans", &viewer_session, None, &refs(&forged)).await.status, StatusCode::FORBIDDEN);
    let listed = page.get("/plans", &viewer_session).await;
    assert!(!listed.body.contains("/edit") && !listed.body.contains("/delete"), "no controls for a viewer");

    let delete = format!("/plans/{}/delete", made.id);
    assert_eq!(page.post(&delete, &session, None, &[("csrf", &csrf)]).await.status, StatusCode::SEE_OTHER);
    assert_eq!(api.call("get", "/api/v1/plans/nightly", Some(&admin), None).await.0, StatusCode::NOT_FOUND);
}

/// A form's fields as `Page::post` takes them.
fn refs<'a>(fields: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    fields.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// The markup of form field `name` (from its `div.field` to the next field), which must be marked invalid.
fn field<'a>(page: &'a str, name: &str) -> &'a str {
    let marker = format!("class=\"field invalid\" data-field=\"{name}\"");
    let at = page.find(&marker).unwrap_or_else(|| panic!("{name} is not marked invalid in {page}"));
    page[at + marker.len()..].split("data-field=").next().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn repositories_tokens_tenants_and_the_audit_trail_have_their_pages() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.workers = 0;
    let running = backstop_server::start(c).await.unwrap();
    let admin = running.admin_token.clone().unwrap();
    let api = Api::new(&running);
    let page = Page::new(&api);
    let (session, csrf) = page.login(&admin).await;

    // Repositories: the local one, and one registered through the form (its password never shown again).
    let listed = page.get("/repositories", &session).await;
    assert_eq!(listed.status, StatusCode::OK);
    assert!(listed.body.contains("data-repository=\"local\""), "{}", listed.body);
    let second = dir.path().join("second");
    let form = [
        ("csrf", csrf.as_str()),
        ("name", "second"),
        ("location", second.to_str().unwrap()),
        ("password", "repo-pw-never-shown"),
        ("init", "on"),
    ];
    let made = page.post("/repositories", &session, None, &form).await;
    assert_eq!(made.status, StatusCode::SEE_OTHER, "{}", made.body);
    assert!(second.join("config").exists(), "created on disk");
    let again = page.post("/repositories", &session, None, &form).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "the same name twice");
    assert!(again.body.contains("value=\"second\"") && !again.body.contains("repo-pw-never-shown"), "{}", again.body);
    // Check from its page: a check job, whose page follows.
    let repo: Repository =
        serde_json::from_value(api.ok("get", "/api/v1/repositories/second", &admin, None).await).unwrap();
    let check = page.post(&format!("/repositories/{}/check", repo.id), &session, None, &[("csrf", &csrf)]).await;
    assert_eq!(check.status, StatusCode::SEE_OTHER, "{}", check.body);
    let id = check.location().strip_prefix("/jobs/").unwrap().to_string();
    let job: Job = serde_json::from_value(api.ok("get", &format!("/api/v1/jobs/{id}"), &admin, None).await).unwrap();
    assert_eq!((job.kind, job.repository.as_str()), (JobKind::Check, repo.id.as_str()));
    let unknown = page.post(&format!("/repositories/{}/format", repo.id), &session, None, &[("csrf", &csrf)]).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);

    // A token: its secret is on the page that made it, and on no other.
    let made =
        page.post("/admin/tokens", &session, None, &[("csrf", &csrf), ("name", "ops"), ("role", "operator")]).await;
    assert_eq!(made.status, StatusCode::OK, "{}", made.body);
    let secret = made.hidden_value("secret");
    assert!(secret.starts_with("bst_"), "{secret}");
    let tokens = page.get("/admin/tokens", &session).await;
    assert!(tokens.body.contains("data-token=\"ops\"") && !tokens.body.contains(&secret));
    let token: backstop_types::Page<Token> =
        serde_json::from_value(api.ok("get", "/api/v1/tokens", &admin, None).await).unwrap();
    let ops = token.items.iter().find(|t| t.name == "ops").unwrap();
    assert_eq!(ops.role, Role::Operator);
    let (ops_session, ops_csrf) = page.login(&secret).await;
    assert_eq!(page.get("/admin/tokens", &ops_session).await.status, StatusCode::FORBIDDEN, "an operator is no admin");
    assert_eq!(page.get("/admin/audit", &ops_session).await.status, StatusCode::FORBIDDEN);
    assert_eq!(
        page.post("/admin/tokens", &ops_session, None, &[("csrf", &ops_csrf), ("name", "x"), ("role", "admin")])
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    let revoke = format!("/admin/tokens/{}/revoke", ops.id);
    assert_eq!(page.post(&revoke, &session, None, &[("csrf", &csrf)]).await.status, StatusCode::SEE_OTHER);
    assert_eq!(page.get("/", &ops_session).await.location(), "/login", "revoked: its session ended");

    // A tenant; the audit trail shows what was done.
    let made = page.post("/admin/tenants", &session, None, &[("csrf", &csrf), ("id", "tb"), ("name", "Team B")]).await;
    assert_eq!(made.status, StatusCode::SEE_OTHER, "{}", made.body);
    assert!(page.get("/admin/tenants", &session).await.body.contains("data-tenant=\"tb\""));
    let bad = page.post("/admin/tenants", &session, None, &[("csrf", &csrf), ("id", "no spaces")]).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let audit = page.get("/admin/audit", &session).await;
    for action in ["repository.create", "token.create", "token.revoke", "tenant.create"] {
        assert!(audit.body.contains(&format!("data-action=\"{action}\"")), "{action}: {}", audit.body);
    }
}
