//! Secrets stay secret. Distinct secrets are planted in every field that
//! can carry one — a repository's password and S3 keys, a database
//! source's password, a cluster token, API tokens, the webhook key — and
//! then every API response, every job event, the audit trail, the metrics,
//! every page of the web UI, the webhook posts, everything `backstop serve` printed and every file of
//! its data directory and of the S3 store are searched for them.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backstop_testkit::S3Server;
use backstop_testkit::kubernetes::FakeCluster;
use backstop_testkit::postgres::Postgres;
use serde_json::{Value, json};

const REPO_PASSWORD: &str = "SECRET-repository-password-7f3a";
const S3_ACCESS: &str = "planted-access-key";
const S3_SECRET: &str = "SECRET-s3-secret-key-9c1d";
const DB_PASSWORD: &str = "SECRET-database-password-2b8e";
const WEBHOOK_KEY: &str = "SECRET-webhook-signing-key-4e6a";

/// Every response body this test saw.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<String>>>);

struct Api {
    base: String,
    token: String,
    http: reqwest::Client,
    seen: Seen,
}

impl Api {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        self.seen.0.lock().unwrap().push(format!("{path}: {text}"));
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    async fn get(&self, path: &str) -> Value {
        self.call(reqwest::Method::GET, path, None).await.1
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let (status, v) = self.call(reqwest::Method::POST, path, Some(body)).await;
        assert!((200..300).contains(&status), "{path}: {status} {v}");
        v
    }

    /// Log in to the web UI with this client's token: the session's cookie.
    async fn ui_login(&self) -> String {
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        let form = http.get(format!("{}/login", self.base)).send().await.unwrap();
        let cookie = |resp: &reqwest::Response, name: &str| {
            resp.headers()
                .get_all("set-cookie")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .find_map(|v| v.strip_prefix(&format!("{name}=")).and_then(|v| v.split(';').next()))
                .map(str::to_string)
                .unwrap_or_else(|| panic!("no {name} cookie"))
        };
        let login = cookie(&form, "bst_login");
        let done = http
            .post(format!("{}/login", self.base))
            .header("cookie", format!("bst_login={login}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("token={}&login_csrf={login}", self.token))
            .send()
            .await
            .unwrap();
        assert_eq!(done.status().as_u16(), 303, "the UI login");
        format!("bst_session={}", cookie(&done, "bst_session"))
    }

    /// A page of the web UI, as the session `cookie` sees it (kept in `seen`).
    async fn ui_page(&self, path: &str, cookie: &str) {
        let resp = self.http.get(format!("{}{path}", self.base)).header("cookie", cookie).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 200, "UI page {path}");
        let text = resp.text().await.unwrap();
        self.seen.0.lock().unwrap().push(format!("UI {path}: {text}"));
    }

    async fn wait(&self, job: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let j = self.get(&format!("/api/v1/jobs/{job}")).await;
            if !matches!(j["state"].as_str(), Some("queued" | "running")) {
                return j;
            }
            assert!(Instant::now() < deadline, "job {job} did not finish: {j}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// A webhook receiver keeping every request it gets.
fn webhook_receiver(seen: Seen) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut buf = vec![0u8; 1 << 20];
            std::thread::sleep(Duration::from_millis(200));
            let n = conn.read(&mut buf).unwrap_or(0);
            seen.0.lock().unwrap().push(String::from_utf8_lossy(&buf[..n]).into_owned());
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    url
}

/// Every file under `dir`, as bytes.
fn files(dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            files(&p, out);
        } else if let Ok(bytes) = std::fs::read(&p) {
            out.push((p.display().to_string(), bytes));
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn no_planted_secret_shows_up_in_any_response_log_event_metric_or_file() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::start_with_keys(&["vault"], S3_ACCESS, S3_SECRET);
    let cluster = FakeCluster::start();
    cluster.apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "default"}}));
    let pg = Postgres::get();
    let db_url = pg.fresh_database();
    // The testkit's URL may carry its own password; the planted one goes in secrets.
    let db_url = match url_without_password(&db_url) {
        Some(u) => u,
        None => db_url,
    };
    let hooks = Seen::default();
    let hook = webhook_receiver(hooks.clone());
    std::fs::write(dir.path().join("webhook.key"), WEBHOOK_KEY).unwrap();

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (out_path, err_path) = (dir.path().join("serve.out"), dir.path().join("serve.err"));
    let mut serve = Command::new(env!("CARGO_BIN_EXE_backstop"))
        .env("BACKSTOP_KDF_MEMORY_KIB", "64")
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--webhook", &hook, "--webhook-secret-file"])
        .arg(dir.path().join("webhook.key"))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let admin = loop {
        let out = std::fs::read_to_string(&out_path).unwrap();
        if let Some(t) = out.split_whitespace().find(|w| w.starts_with("bst_")) {
            break t.to_string();
        }
        assert!(Instant::now() < deadline, "no admin token printed");
        std::thread::sleep(Duration::from_millis(50));
    };
    let seen = Seen::default();
    let mut api = Api {
        base: format!("http://127.0.0.1:{port}"),
        token: admin.clone(),
        http: reqwest::Client::new(),
        seen: seen.clone(),
    };

    // Every secret-carrying field, used for real.
    let options = json!([
        ["endpoint", s3.endpoint()],
        ["access_key_id", S3_ACCESS],
        ["secret_access_key", S3_SECRET],
        ["region", "us-east-1"],
        ["allow_http", "true"]
    ]);
    api.post(
        "/api/v1/repositories",
        json!({"name": "vault", "location": "s3://vault/repo", "password": REPO_PASSWORD,
                                             "options": options, "init": true}),
    )
    .await;
    api.post(
        "/api/v1/sources",
        json!({"name": "db", "kind": "postgres", "config": {"url": db_url},
                                        "secrets": {"password": DB_PASSWORD}}),
    )
    .await;
    api.post(
        "/api/v1/sources",
        json!({"name": "k8s", "kind": "kubernetes",
                                        "config": {"server": cluster.url(), "namespaces": "default"},
                                        "secrets": {"token": cluster.token()}}),
    )
    .await;
    api.post("/api/v1/sources", json!({"name": "broken", "kind": "fs", "config": {"paths": ["/does/not/exist"]}}))
        .await;
    let viewer = api.post("/api/v1/tokens", json!({"name": "viewer", "role": "viewer"})).await;
    let viewer_secret = viewer["secret"].as_str().unwrap().to_string();
    let mut jobs = Vec::new();
    for source in ["db", "k8s", "broken"] {
        let job = api.post("/api/v1/jobs", json!({"kind": "backup", "source": source, "repository": "vault"})).await;
        jobs.push(job["id"].as_str().unwrap().to_string());
    }
    let check =
        api.post("/api/v1/jobs", json!({"kind": "check", "repository": "vault", "params": {"read_data": "all"}})).await;
    jobs.push(check["id"].as_str().unwrap().to_string());
    for (i, job) in jobs.iter().enumerate() {
        let done = api.wait(job).await;
        let want = if i == 2 { "failed" } else { "succeeded" };
        assert_eq!(done["state"], want, "{done}");
    }
    let restore = api.post("/api/v1/jobs", json!({"kind": "restore", "repository": "vault",
                                                   "params": {"snapshot": "latest", "target": dir.path().join("restored")}})).await;
    api.wait(restore["id"].as_str().unwrap()).await;
    jobs.push(restore["id"].as_str().unwrap().to_string());

    // Everything there is to read, as admin and as the viewer.
    for token in [admin.clone(), viewer_secret.clone()] {
        api.token = token;
        for path in [
            "/api/v1/jobs?limit=1000",
            "/api/v1/plans",
            "/api/v1/repositories",
            "/api/v1/sources",
            "/api/v1/snapshots",
            "/api/v1/tokens",
            "/api/v1/tenants",
            "/api/v1/audit?limit=1000",
            "/metrics",
            "/api/v1/openapi.json",
        ] {
            api.get(path).await;
        }
        for job in &jobs {
            api.get(&format!("/api/v1/jobs/{job}")).await;
            api.get(&format!("/api/v1/jobs/{job}/events")).await;
        }
        let session = api.ui_login().await;
        for path in ["/", "/jobs", "/plans", "/sources", "/snapshots", "/live/running"] {
            api.ui_page(path, &session).await;
        }
        for job in &jobs {
            api.ui_page(&format!("/jobs/{job}"), &session).await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while hooks.0.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the failed job was posted to the webhook");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = serve.kill();
    let _ = serve.wait();

    let secrets = [REPO_PASSWORD, S3_SECRET, DB_PASSWORD, cluster.token(), WEBHOOK_KEY, &viewer_secret, &admin];
    let mut haystacks: Vec<(String, Vec<u8>)> = Vec::new();
    for text in seen.0.lock().unwrap().iter() {
        // The one response that shows a new token's secret is its creation.
        if text.starts_with("/api/v1/tokens: {") && text.contains("\"secret\"") && !text.contains("\"items\"") {
            continue;
        }
        haystacks.push(("API response".into(), text.as_bytes().to_vec()));
    }
    for text in hooks.0.lock().unwrap().iter() {
        haystacks.push(("webhook post".into(), text.as_bytes().to_vec()));
    }
    let printed = std::fs::read_to_string(&out_path).unwrap();
    // The first start's admin token is printed once, by design; nothing else.
    let printed: String =
        printed.lines().filter(|l| !l.contains("admin token") && !l.contains("BACKSTOP_TOKEN")).collect();
    haystacks.push(("serve's output".into(), printed.into_bytes()));
    haystacks.push(("serve's log".into(), std::fs::read(&err_path).unwrap()));
    files(&dir.path().join("data"), &mut haystacks);
    files(s3.root(), &mut haystacks);
    let mut found = Vec::new();
    for secret in secrets {
        for (place, bytes) in &haystacks {
            if bytes.windows(secret.len()).any(|w| w == secret.as_bytes()) {
                found.push(format!("{secret} in {place}"));
            }
        }
    }
    assert!(found.is_empty(), "secrets showed up: {found:#?}");
    assert!(haystacks.len() > 40, "there was plenty to search: {}", haystacks.len());
}

/// `postgres://user:pw@host/db` without `:pw`.
fn url_without_password(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let (auth, host) = rest.split_once('@')?;
    let user = auth.split(':').next()?;
    Some(format!("{scheme}://{user}@{host}"))
}
