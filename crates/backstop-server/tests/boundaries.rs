//! Tenant boundaries tried as an attacker would: a tenant with operator
//! tokens and a directory of its own on the workers' hosts, against a real
//! server with in-process workers. Every attack here worked once.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use backstop_server::Running;
use backstop_types::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

mod common;

use common::*;

/// A service with tenant roots and tenant `tb` with an operator token.
struct Site {
    dir: tempfile::TempDir,
    running: Running,
    api: Api,
    admin: String,
    tb: String,
}

impl Site {
    async fn start() -> Site {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path());
        c.tenant_roots = vec![dir.path().join("tenants")];
        let running = backstop_server::start(c).await.unwrap();
        let admin = running.admin_token.clone().unwrap();
        let api = Api::new(&running);
        api.ok("post", "/api/v1/tenants", &admin, Some(json!({"id": "tb"}))).await;
        let token: NewToken = serde_json::from_value(
            api.ok("post", "/api/v1/tokens", &admin, Some(json!({"name": "op", "role": "operator", "tenant": "tb"})))
                .await,
        )
        .unwrap();
        std::fs::create_dir_all(dir.path().join("tenants/tb")).unwrap();
        Site { dir, running, api, admin, tb: token.secret.into_exposed() }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("tenants/tb")
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    async fn tb(&self, method: &str, path: &str, body: Value) -> (StatusCode, Value) {
        self.api.call(method, path, Some(&self.tb), Some(body)).await
    }

    /// Back up source `name` into `repo` as tenant tb; the finished job.
    async fn backup(&self, name: &str, repo: &str) -> Job {
        let (s, v) =
            self.tb("post", "/api/v1/jobs", json!({"kind": "backup", "source": name, "repository": repo})).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let job: Job = serde_json::from_value(v).unwrap();
        wait_job(&self.api, &self.admin, &job.id).await
    }

    async fn run_job(&self, spec: Value) -> Job {
        let (s, v) = self.tb("post", "/api/v1/jobs", spec).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let job: Job = serde_json::from_value(v).unwrap();
        wait_job(&self.api, &self.admin, &job.id).await
    }
}

/// What a directory holds, names and contents, to see that nothing changed.
fn listing(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = walk(dir, dir);
    out.sort();
    out
}

fn walk(root: &Path, dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        let rel = p.strip_prefix(root).unwrap().display().to_string();
        let meta = std::fs::symlink_metadata(&p).unwrap();
        if meta.is_dir() {
            out.push((format!("{rel}/"), Vec::new()));
            out.extend(walk(root, &p));
        } else if meta.is_file() && !rel.ends_with("-wal") && !rel.ends_with("-shm") && rel != "catalog.db" {
            out.push((rel, std::fs::read(&p).unwrap()));
        }
    }
    out
}

fn failed_outside(job: &Job) {
    assert_ne!(job.state, JobState::Succeeded, "{job:?}");
    let error = job.error.clone().unwrap_or_default();
    assert!(error.contains("leads outside"), "the job names the rule: {error}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_link_in_a_tenants_tree_leads_nowhere_outside_it() {
    let site = Site::start().await;
    let root = site.root();
    std::os::unix::fs::symlink(site.data_dir(), root.join("svcdir")).unwrap();
    let (s, v) = site
        .tb(
            "post",
            "/api/v1/repositories",
            json!({"name": "own", "location": root.join("repo"), "password": "pw", "init": true}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let before = listing(&site.data_dir().join("repository"));

    // The repro: an image source on the link to the data directory, backed
    // up and restored into its own tree, gave server.key and catalog.db.
    for (name, kind, config) in [
        ("img-dir", "image", json!({"path": root.join("svcdir")})),
        ("img-key", "image", json!({"path": root.join("svcdir/server.key"), "format": "raw"})),
        ("files-below", "fs", json!({"paths": [root.join("svcdir/server.key")]})),
    ] {
        let (s, v) = site.tb("post", "/api/v1/sources", json!({"name": name, "kind": kind, "config": config})).await;
        assert_eq!(s, StatusCode::CREATED, "{name}: {v}");
        failed_outside(&site.backup(name, "own").await);
    }
    let snaps = site.api.ok("get", "/api/v1/snapshots", &site.tb, None).await;
    assert_eq!(snaps["items"].as_array().unwrap().len(), 0, "no snapshot of anything outside: {snaps}");
    // The link itself as a file tree: kept as a link, never followed.
    let files = json!({"name": "files", "kind": "fs", "config": {"paths": [root.join("svcdir")]}});
    assert_eq!(site.tb("post", "/api/v1/sources", files).await.0, StatusCode::CREATED);
    let job = site.backup("files", "own").await;
    let summary = &job.result.as_ref().unwrap()["summary"];
    assert_eq!((summary["files_new"].as_u64(), summary["bytes_read"].as_u64()), (Some(0), Some(0)), "{job:?}");

    // A file-tree restore whose target is a link, an image restore through
    // one, a repository through one: all refused, nothing written outside.
    std::fs::create_dir_all(root.join("data")).unwrap();
    std::fs::write(root.join("data/mine.txt"), b"tenant data").unwrap();
    let disk = root.join("disk.raw");
    std::fs::write(&disk, vec![0x5au8; 256 << 10]).unwrap();
    for (name, kind, config) in
        [("mine", "fs", json!({"paths": [root.join("data")]})), ("disk", "image", json!({"path": disk}))]
    {
        site.tb("post", "/api/v1/sources", json!({"name": name, "kind": kind, "config": config})).await;
        assert_eq!(site.backup(name, "own").await.state, JobState::Succeeded);
    }
    let snaps = site.api.ok("get", "/api/v1/snapshots", &site.tb, None).await;
    let id_of = |label: &str| {
        snaps["items"].as_array().unwrap().iter().find(|s| s["paths"][0].as_str().unwrap().ends_with(label)).unwrap()
            ["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let data_before = listing(&site.data_dir());
    let files = id_of("/data");
    let image = id_of("disk.raw");
    for target in [root.join("svcdir"), root.join("svcdir/restored")] {
        failed_outside(
            &site
                .run_job(
                    json!({"kind": "restore", "repository": "own", "params": {"snapshot": files, "target": target}}),
                )
                .await,
        );
    }
    for path in [root.join("svcdir/server.key"), root.join("svcdir/new.raw"), root.join("svcdir/new.qcow2")] {
        let to = json!({"kind": "image", "config": {"path": path}});
        failed_outside(
            &site
                .run_job(json!({"kind": "restore", "repository": "own", "params": {"snapshot": image, "to": to}}))
                .await,
        );
    }
    let (s, v) = site
        .tb(
            "post",
            "/api/v1/repositories",
            json!({"name": "through", "location": root.join("svcdir/repository"), "password": "x", "init": true}),
        )
        .await;
    assert!(s.is_client_error() && v.to_string().contains("leads outside"), "{s} {v}");
    // Registered without init, it fails when a job opens it.
    let (s, _) = site
        .tb(
            "post",
            "/api/v1/repositories",
            json!({"name": "later", "location": root.join("svcdir/repository"), "password": "x"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    failed_outside(&site.backup("mine", "later").await);
    assert_eq!(listing(&site.data_dir()), data_before, "the service's data directory is as it was");
    assert_eq!(listing(&site.data_dir().join("repository")), before);

    // What is the tenant's own still works.
    let job = site
        .run_job(
            json!({"kind": "restore", "repository": "own", "params": {"snapshot": files, "target": root.join("back")}}),
        )
        .await;
    assert_eq!(job.state, JobState::Succeeded, "{job:?}");
    let restored = root.join("back").join(root.join("data/mine.txt").strip_prefix("/").unwrap());
    assert_eq!(std::fs::read(restored).unwrap(), b"tenant data");
    site.running.shutdown().await;
}

fn s3_repo(name: &str, endpoint: &str) -> Value {
    json!({"name": name, "location": "s3://bucket/x", "password": "pw", "init": true,
           "options": [["endpoint", endpoint], ["access_key_id", "id"], ["secret_access_key", "key"], ["region", "r"]]})
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenants_network_reach_is_granted_not_assumed() {
    let site = Site::start().await;
    let body = "<Error><Code>AccessDenied</Code><Message>planted-remote-body</Message></Error>";
    let (port, hits) = backstop_testkit::canned_http(format!(
        "HTTP/1.1 403 Forbidden\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    let endpoint = format!("http://127.0.0.1:{port}");
    let repo = json!({"name": "own", "location": site.root().join("repo"), "password": "pw", "init": true});
    assert_eq!(site.tb("post", "/api/v1/repositories", repo).await.0, StatusCode::CREATED);

    // Without grants: nothing on the host, nothing on its loopback.
    let refused = [
        (
            "/api/v1/sources",
            json!({"name": "my", "kind": "mysql", "config": {"url": "mysql://root@127.0.0.1:3306/mysql"}}),
        ),
        (
            "/api/v1/sources",
            json!({"name": "sock", "kind": "mysql", "config": {"url": "mysql://root@localhost/mysql?socket=/run/mysqld/mysqld.sock"}}),
        ),
        ("/api/v1/sources", json!({"name": "pg", "kind": "postgres", "config": {"url": "postgres:///postgres"}})),
        (
            "/api/v1/sources",
            json!({"name": "k", "kind": "kubernetes", "config": {"server": "http://127.0.0.1:1"}, "secrets": {"token": "t"}}),
        ),
        (
            "/api/v1/jobs",
            json!({"kind": "restore", "repository": "own", "params": {"to": {"kind": "postgres", "config": {"url": "postgres://postgres@127.0.0.1/x"}}}}),
        ),
        ("/api/v1/repositories", s3_repo("s3", &endpoint)),
        ("/api/v1/repositories", s3_repo("meta", "http://169.254.169.254")),
    ];
    for (path, spec) in &refused {
        let (s, v) = site.tb("post", path, spec.clone()).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{spec}: {v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains("may not") || message.contains("only an admin"), "names the rule: {message}");
    }
    assert_eq!(hits.load(Ordering::SeqCst), 0, "no request was sent");

    // Granted: loopback by a grant that names it. The remote body is never
    // echoed; the service's own address stays out of reach.
    let granted = site
        .api
        .ok("post", "/api/v1/tenants", &site.admin, Some(json!({"id": "tb", "allow_net": ["127.0.0.1/32"]})))
        .await;
    assert_eq!(granted["allow_net"], json!(["127.0.0.1"]));
    let (s, v) = site.tb("post", "/api/v1/repositories", s3_repo("s3", &endpoint)).await;
    assert!(s.is_client_error(), "{s} {v}");
    let message = v.to_string();
    assert!(message.contains("403") && message.contains("AccessDenied"), "{message}");
    assert!(!message.contains("planted-remote-body"), "the remote body is not echoed: {message}");
    assert!(hits.load(Ordering::SeqCst) >= 1);
    let own = format!("http://{}", site.running.addr);
    let (s, v) = site.tb("post", "/api/v1/repositories", s3_repo("self", &own)).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(v.to_string().contains("the Backstop service's own address"), "{v}");
    // A grant is a network: another loopback port is fine, another network is not.
    let (s, v) = site
        .tb("post", "/api/v1/sources", json!({"name": "k2", "kind": "kubernetes", "config": {"server": "http://127.0.0.2:1"}, "secrets": {"token": "t"}}))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    site.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn passwords_belong_in_secrets_not_in_a_sources_config() {
    let site = Site::start().await;
    let (s, _) = site
        .api
        .call("post", "/api/v1/tenants", Some(&site.admin), Some(json!({"id": "tb", "allow_net": ["192.0.2.0/24"]})))
        .await;
    assert_eq!(s, StatusCode::OK);
    for config in [
        json!({"url": "postgres://app:hunter2@192.0.2.10/app"}),
        json!({"url": "postgres://app@192.0.2.10/app", "password": "hunter2"}),
    ] {
        let (s, v) =
            site.tb("post", "/api/v1/sources", json!({"name": "db", "kind": "postgres", "config": config})).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert!(v.to_string().contains("secrets"), "points to secrets: {v}");
    }
    let (s, v) = site
        .tb(
            "post",
            "/api/v1/sources",
            json!({"name": "db", "kind": "postgres", "config": {"url": "postgres://app@192.0.2.10/app"}, "secrets": {"password": "hunter2"}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let listed = site.api.ok("get", "/api/v1/sources", &site.tb, None).await;
    assert!(!listed.to_string().contains("hunter2"), "{listed}");
    site.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_last_admin_token_cannot_be_revoked_and_the_data_directorys_owner_can_mint_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.workers = 0;
    let running = backstop_server::start(c.clone()).await.unwrap();
    let admin = running.admin_token.clone().unwrap();
    let api = Api::new(&running);
    let tokens = api.ok("get", "/api/v1/tokens", &admin, None).await;
    let first = tokens["items"][0]["id"].as_str().unwrap().to_string();
    let (s, v) = api.call("delete", &format!("/api/v1/tokens/{first}"), Some(&admin), None).await;
    assert_eq!(s, StatusCode::CONFLICT, "the only admin token cannot revoke itself: {v}");
    assert_eq!(api.call("get", "/api/v1/tokens", Some(&admin), None).await.0, StatusCode::OK, "it still works");
    let second: NewToken = serde_json::from_value(
        api.ok("post", "/api/v1/tokens", &admin, Some(json!({"name": "admin2", "role": "admin"}))).await,
    )
    .unwrap();
    let (s, _) = api.call("delete", &format!("/api/v1/tokens/{first}"), Some(second.secret.expose()), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "with another admin, it can go");
    let (s, _) =
        api.call("delete", &format!("/api/v1/tokens/{}", second.token.id), Some(second.secret.expose()), None).await;
    assert_eq!(s, StatusCode::CONFLICT);
    running.shutdown().await;

    // A restart with a live admin prints none; the owner of the data
    // directory can always get a fresh one, also while the service runs.
    let running = backstop_server::start(c.clone()).await.unwrap();
    assert!(running.admin_token.is_none());
    let fresh = backstop_server::new_admin_token(&c).await.unwrap();
    let api = Api::new(&running);
    assert_eq!(api.call("get", "/api/v1/tokens", Some(&fresh), None).await.0, StatusCode::OK);
    running.shutdown().await;
}

/// Read until the peer closes (or `limit` passes); how long that took.
fn closed_within(stream: &mut std::net::TcpStream, limit: std::time::Duration) -> Option<std::time::Duration> {
    let start = std::time::Instant::now();
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Some(start.elapsed()),
            Err(_) => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_and_greedy_clients_are_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.workers = 0;
    c.limits.header_timeout = std::time::Duration::from_secs(1);
    c.limits.max_connections = 4;
    let running = backstop_server::start(c).await.unwrap();
    let addr = running.addr;
    let limit = std::time::Duration::from_secs(5);
    tokio::task::spawn_blocking(move || {
        // Half a header, no token: closed after the header deadline.
        let mut slow = std::net::TcpStream::connect(addr).unwrap();
        slow.write_all(b"GET /api/v1/jobs HTTP/1.1\r\nHost: x\r\nAuthor").unwrap();
        let took = closed_within(&mut slow, limit).expect("a half-sent header is not waited for forever");
        assert!(took >= std::time::Duration::from_millis(800), "{took:?}");
        // The cap: four idle connections hold every slot; a fifth is closed at once.
        let idle: Vec<_> = (0..4).map(|_| std::net::TcpStream::connect(addr).unwrap()).collect();
        std::thread::sleep(std::time::Duration::from_millis(200));
        let mut fifth = std::net::TcpStream::connect(addr).unwrap();
        let took = closed_within(&mut fifth, limit).expect("over the cap, closed");
        assert!(took < std::time::Duration::from_millis(800), "closed at once, not after a timeout: {took:?}");
        // Once they time out, there is room again.
        for mut s in idle {
            closed_within(&mut s, limit).expect("idle connections are closed");
        }
        let mut ok = std::net::TcpStream::connect(addr).unwrap();
        ok.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut reply = String::new();
        ok.read_to_string(&mut reply).unwrap();
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    })
    .await
    .unwrap();
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn event_streams_are_capped_per_token_fed_by_notices_and_end_with_their_token() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.workers = 0; // the job stays queued: its stream stays open
    let running = backstop_server::start(c).await.unwrap();
    let admin = running.admin_token.clone().unwrap();
    let api = Api::new(&running);
    let viewer: NewToken = serde_json::from_value(
        api.ok("post", "/api/v1/tokens", &admin, Some(json!({"name": "v", "role": "viewer"}))).await,
    )
    .unwrap();
    let job: Job = serde_json::from_value(
        api.ok("post", "/api/v1/jobs", &admin, Some(json!({"kind": "check", "repository": "local"}))).await,
    )
    .unwrap();
    let url = format!("{}/api/v1/jobs/{}/events/stream", api.base, job.id);
    let open = |token: String| {
        let (http, url) = (api.http.clone(), url.clone());
        async move { http.get(url).bearer_auth(token).send().await.unwrap() }
    };
    let mut streams = Vec::new();
    for _ in 0..backstop_server::state::MAX_STREAMS_PER_TOKEN {
        let r = open(viewer.secret.expose().clone()).await;
        assert_eq!(r.status(), StatusCode::OK);
        streams.push(r);
    }
    let over = open(viewer.secret.expose().clone()).await;
    assert_eq!(over.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(over.json::<Value>().await.unwrap()["error"]["code"], "too_many_streams");
    // Another token is not held back by this one's.
    assert_eq!(open(admin.clone()).await.status(), StatusCode::OK);

    // The queued event first; then a cancel arrives within a second, though
    // an idle stream looks again on its own only every ten.
    let mut first = streams.pop().unwrap();
    let text = String::from_utf8(first.chunk().await.unwrap().unwrap().to_vec()).unwrap();
    assert!(text.contains("\"queued\""), "{text}");
    let t = std::time::Instant::now();
    api.ok("post", &format!("/api/v1/jobs/{}/cancel", job.id), &admin, None).await;
    let mut seen = String::new();
    while !seen.contains("cancelled") {
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(5), first.chunk()).await.unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk.unwrap().unwrap()));
    }
    assert!(t.elapsed() < std::time::Duration::from_secs(2), "woken by the catalog's notice: {:?}", t.elapsed());
    drop(first);

    // A queued job's streams end when their token is revoked.
    let other: Job = serde_json::from_value(
        api.ok("post", "/api/v1/jobs", &admin, Some(json!({"kind": "check", "repository": "local"}))).await,
    )
    .unwrap();
    let mut live = api
        .http
        .get(format!("{}/api/v1/jobs/{}/events/stream", api.base, other.id))
        .bearer_auth(viewer.secret.expose())
        .send()
        .await
        .unwrap();
    live.chunk().await.unwrap().unwrap();
    api.ok("delete", &format!("/api/v1/tokens/{}", viewer.token.id), &admin, None).await;
    let ended = tokio::time::timeout(std::time::Duration::from_secs(3), async {
        while let Ok(Some(_)) = live.chunk().await {}
    })
    .await;
    assert!(ended.is_ok(), "the stream ended with its token");
    drop(streams);
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_refuses_careless_input_with_a_400_that_says_what_is_wrong() {
    let site = Site::start().await;
    let (api, admin) = (&site.api, site.admin.as_str());
    api.ok("post", "/api/v1/sources", admin, Some(json!({"name": "src", "kind": "fs", "config": {"paths": ["/tmp"]}})))
        .await;
    let plan = |extra: Value| {
        let mut p = json!({"name": "p", "source": "src", "repository": "local"});
        p.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        p
    };
    let refused: Vec<(&str, &str, Value, &str)> = vec![
        ("post", "/api/v1/plans", plan(json!({"schedul": "0 1 * * *"})), "schedul"),
        ("post", "/api/v1/plans", plan(json!({"max_attempts": 0})), "max_attempts"),
        ("post", "/api/v1/plans", plan(json!({"max_attempts": 4294967295u64})), "max_attempts"),
        ("post", "/api/v1/plans", plan(json!({"retention": {"keep_lats": 3}})), "keep_lats"),
        ("post", "/api/v1/plans", plan(json!({"tags": ["a\nb"]})), "tag"),
        ("post", "/api/v1/plans", plan(json!({"tags": ["db,nightly"]})), "comma"),
        ("post", "/api/v1/jobs", json!({"kind": "check", "repository": "local", "max_attempts": 0}), "max_attempts"),
        ("post", "/api/v1/jobs", json!({"kind": "check", "repository": "local", "max_attempts": 101}), "max_attempts"),
        ("post", "/api/v1/jobs", json!({"kind": "check", "repository": "local", "priority": 1}), "priority"),
        (
            "post",
            "/api/v1/sources",
            json!({"name": "h", "kind": "fs", "host": "a".repeat(100_000), "config": {"paths": ["/tmp"]}}),
            "host",
        ),
        (
            "post",
            "/api/v1/sources",
            json!({"name": "h", "kind": "fs", "host": "db1\n\0", "config": {"paths": ["/tmp"]}}),
            "host",
        ),
        ("post", "/api/v1/tenants", json!({"id": "t2", "name": "line\nbreak"}), "name"),
        ("post", "/api/v1/tenants", json!({"id": "t3", "allow_net": ["not a grant"]}), "grant"),
    ];
    for (method, path, body, names) in refused {
        let (s, v) = api.call(method, path, Some(admin), Some(body.clone())).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{path} {body}: {v}");
        assert_eq!(v["error"]["code"], "invalid", "{v}");
        assert!(v["error"]["message"].as_str().unwrap().contains(names), "names {names}: {v}");
    }
    // Bodies that are not JSON, and queries that do not fit: the same envelope.
    let raw = |body: &'static str, content_type: Option<&'static str>| {
        let mut req = api.http.post(format!("{}/api/v1/plans", api.base)).bearer_auth(admin).body(body);
        if let Some(t) = content_type {
            req = req.header("content-type", t);
        }
        req.send()
    };
    let r = raw("{", Some("application/json")).await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "invalid");
    let r = raw("{}", None).await.unwrap();
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "unsupported_media_type");
    for query in ["/api/v1/jobs?limit=0", "/api/v1/jobs?limit=5000", "/api/v1/plans?limit=x", "/api/v1/jobs?colour=red"]
    {
        let (s, v) = api.call("get", query, Some(admin), None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{query}: {v}");
        assert!(v["error"]["message"].is_string(), "{v}");
    }

    // One key syntax everywhere; a key reused for another request is a 422.
    api.ok("post", "/api/v1/plans", admin, Some(plan(json!({})))).await;
    let submit = |path: &'static str, key: String, body: Option<Value>| {
        let mut req = api.http.post(format!("{}{path}", api.base)).bearer_auth(admin).header("idempotency-key", key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send()
    };
    for bad in [String::new(), "x".repeat(60_000), "has space".into()] {
        for path in ["/api/v1/plans/p/run", "/api/v1/jobs"] {
            let r = submit(path, bad.clone(), Some(json!({"kind": "check", "repository": "local"}))).await.unwrap();
            assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{path} with a {}-character key", bad.len());
        }
    }
    let check = json!({"kind": "check", "repository": "local"});
    assert_eq!(submit("/api/v1/jobs", "k1".into(), Some(check.clone())).await.unwrap().status(), StatusCode::CREATED);
    assert_eq!(submit("/api/v1/jobs", "k1".into(), Some(check)).await.unwrap().status(), StatusCode::OK);
    let other = json!({"kind": "check", "repository": "local", "params": {"read_data": "all"}});
    let r = submit("/api/v1/jobs", "k1".into(), Some(other)).await.unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "idempotency_key_reused");
    assert_eq!(submit("/api/v1/plans/p/run", "k2".into(), None).await.unwrap().status(), StatusCode::CREATED);
    let r = submit("/api/v1/jobs", "k2".into(), Some(json!({"kind": "check", "repository": "local"}))).await.unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "a plan's run is another request");
    site.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_need_a_token_and_show_a_tenant_only_its_own_and_secret_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let site = Site::start().await;
    let api = &site.api;
    assert_eq!(api.call("get", "/metrics", None, None).await.0, StatusCode::UNAUTHORIZED);
    let (s, all) = api.call("get", "/metrics", Some(&site.admin), None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(all.as_str().unwrap().contains("backstop_http_requests_total"), "{all}");
    let (s, own) = api.call("get", "/metrics", Some(&site.tb), None).await;
    assert_eq!(s, StatusCode::OK);
    let own = own.as_str().unwrap();
    assert!(
        own.contains("backstop_jobs{state=\"queued\"} 0") && !own.contains("backstop_http_requests_total"),
        "{own}"
    );
    for file in ["catalog.db", "server.key"] {
        let mode = std::fs::metadata(site.data_dir().join(file)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{file} is the owner's only");
    }
    site.running.shutdown().await;

    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.workers = 0;
    c.metrics_public = true;
    let running = backstop_server::start(c).await.unwrap();
    assert_eq!(Api::new(&running).call("get", "/metrics", None, None).await.0, StatusCode::OK, "--metrics-public");
    running.shutdown().await;
}
