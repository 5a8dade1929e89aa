//! What the API tests share: a client of a real server, a test
//! configuration, a source tree, waiting for jobs.
#![allow(dead_code)]

use std::path::Path;
use std::time::{Duration, Instant};

use backstop_server::{Running, ServerConfig};
use backstop_types::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
}

impl Api {
    pub fn new(running: &Running) -> Api {
        Api { base: format!("http://{}", running.addr), http: reqwest::Client::new() }
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub async fn ok(&self, method: &str, path: &str, token: &str, body: Option<Value>) -> Value {
        let (status, v) = self.call(method, path, Some(token), body).await;
        assert!(status.is_success(), "{method} {path}: {status} {v}");
        v
    }
}

pub fn config(dir: &Path) -> ServerConfig {
    let mut c = ServerConfig::new(dir.join("data"));
    c.listen = "127.0.0.1:0".parse().unwrap();
    c.tick = Duration::from_millis(200);
    c.queue.lease = Duration::from_secs(3);
    c.queue.backoff_base = Duration::from_millis(500);
    c
}

/// A directory with a few files to back up.
pub fn source_tree(dir: &Path) -> String {
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("a.txt"), b"hello service").unwrap();
    std::fs::write(src.join("sub/b.bin"), vec![7u8; 300_000]).unwrap();
    src.display().to_string()
}

pub async fn wait_job(api: &Api, token: &str, id: &str) -> Job {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let job: Job = serde_json::from_value(api.ok("get", &format!("/api/v1/jobs/{id}"), token, None).await).unwrap();
        if job.state.is_finished() {
            return job;
        }
        assert!(Instant::now() < deadline, "job {id} did not finish: {job:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn setup_plan(api: &Api, token: &str, src: &str, chain: Value) {
    api.ok("post", "/api/v1/sources", token, Some(json!({"name": "files", "kind": "fs", "config": {"paths": [src]}})))
        .await;
    api.ok(
        "post",
        "/api/v1/plans",
        token,
        Some(json!({"name": "nightly", "source": "files", "repository": "local", "chain": chain,
                    "retention": {"keep_last": 2}})),
    )
    .await;
}
