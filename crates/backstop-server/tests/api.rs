//! The coordinator through its HTTP API: a real server on a free port with
//! in-process workers, a real repository, real tokens.

use std::time::{Duration, Instant};

use backstop_types::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread")]
async fn one_command_to_a_running_service_that_backs_up_through_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let running = backstop_server::start(config(dir.path())).await.unwrap();
    let admin = running.admin_token.clone().expect("the first start prints an admin token");
    let api = Api::new(&running);
    assert_eq!(api.call("get", "/healthz", None, None).await.0, StatusCode::OK);
    assert_eq!(api.call("get", "/readyz", None, None).await.0, StatusCode::OK);

    let repos = api.ok("get", "/api/v1/repositories", &admin, None).await;
    assert_eq!(repos["items"][0]["name"], "local", "the first start creates a local repository");
    assert!(repos["items"][0].get("password").is_none(), "no secret in the API");

    let src = source_tree(dir.path());
    setup_plan(&api, &admin, &src, json!({"verify_percent": 50, "retention": true})).await;
    let job: Job = serde_json::from_value(api.ok("post", "/api/v1/plans/nightly/run", &admin, None).await).unwrap();
    assert_eq!(job.kind, JobKind::Backup);
    let done = wait_job(&api, &admin, &job.id).await;
    assert_eq!(done.state, JobState::Succeeded, "{done:?}");
    let snapshot_id = done.result.as_ref().unwrap()["snapshot_id"].as_str().unwrap().to_string();

    // The chain: verify, then retention, each after its parent.
    let deadline = Instant::now() + Duration::from_secs(60);
    let kinds = loop {
        let page: Page<Job> =
            serde_json::from_value(api.ok("get", "/api/v1/jobs?limit=10", &admin, None).await).unwrap();
        let finished: Vec<(JobKind, JobState)> = page.items.iter().map(|j| (j.kind, j.state)).collect();
        if finished.len() == 3 && finished.iter().all(|(_, s)| s.is_finished()) {
            break finished;
        }
        assert!(Instant::now() < deadline, "{finished:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(kinds.contains(&(JobKind::Verify, JobState::Succeeded)), "{kinds:?}");
    assert!(kinds.contains(&(JobKind::Retention, JobState::Succeeded)), "{kinds:?}");

    // The catalog knows the snapshot; the job's log is in the event stream
    // and in the repository beside the snapshot.
    let snaps = api.ok("get", "/api/v1/snapshots", &admin, None).await;
    assert_eq!(snaps["items"][0]["id"], snapshot_id.as_str());
    let events: Vec<JobEvent> =
        serde_json::from_value(api.ok("get", &format!("/api/v1/jobs/{}/events", job.id), &admin, None).await).unwrap();
    let logs: Vec<&str> =
        events.iter().filter(|e| e.kind == EventKind::Log).filter_map(|e| e.data["message"].as_str()).collect();
    assert!(logs.iter().any(|m| m.contains("snapshot") && m.contains("saved")), "{logs:?}");
    let repo_dir = dir.path().join("data/repository");
    let logs_dir = repo_dir.join("logs").join(&snapshot_id);
    assert!(std::fs::read_dir(&logs_dir).unwrap().count() == 1, "a sealed job log beside the snapshot");

    // The audit trail recorded the mutations.
    let audit = api.ok("get", "/api/v1/audit", &admin, None).await;
    let actions: Vec<&str> = audit["items"].as_array().unwrap().iter().filter_map(|e| e["action"].as_str()).collect();
    for a in ["source.create", "plan.put", "plan.run"] {
        assert!(actions.contains(&a), "{a} in {actions:?}");
    }
    // Metrics count it.
    // Metrics count it, for a token.
    assert_eq!(api.call("get", "/metrics", None, None).await.0, StatusCode::UNAUTHORIZED);
    let (_, metrics) = api.call("get", "/metrics", Some(&admin), None).await;
    let metrics = metrics.as_str().unwrap().to_string();
    assert!(metrics.contains("backstop_jobs{state=\"succeeded\"} 3"), "{metrics}");
    assert!(
        metrics.contains("backstop_job_duration_seconds_count{kind=\"backup\",state=\"succeeded\"} 1"),
        "{metrics}"
    );
    running.shutdown().await;

    // A restart prints no new admin token and keeps everything.
    let again = backstop_server::start(config(dir.path())).await.unwrap();
    assert!(again.admin_token.is_none());
    let api = Api::new(&again);
    let jobs = api.ok("get", "/api/v1/jobs", &admin, None).await;
    assert_eq!(jobs["items"].as_array().unwrap().len(), 3);
    again.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_have_one_shape_and_bad_input_gets_4xx() {
    let dir = tempfile::tempdir().unwrap();
    let running = backstop_server::start(config(dir.path())).await.unwrap();
    let admin = running.admin_token.clone().unwrap();
    let api = Api::new(&running);
    let (s, v) = api.call("get", "/api/v1/jobs", None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(v["error"]["code"], "unauthorized");
    let (s, _) = api.call("get", "/api/v1/jobs", Some("bst_wrong"), None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, v) = api.call("get", "/api/v1/jobs/nope", Some(&admin), None).await;
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));
    let (s, v) = api
        .call(
            "post",
            "/api/v1/plans",
            Some(&admin),
            Some(json!({"name": "x", "source": "none", "repository": "local"})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    let (s, v) = api
        .call(
            "post",
            "/api/v1/sources",
            Some(&admin),
            Some(json!({"name": "rel", "kind": "fs", "config": {"paths": ["tmp"]}})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("absolute"));
    let (s, _) = api.call("post", "/api/v1/sources", Some(&admin), Some(json!({"garbage": true}))).await;
    assert!(s.is_client_error(), "{s}");
    // A source's secrets are credentials by name, and a file tree has none.
    for (source, says) in [
        (json!({"name": "k", "kind": "kubernetes", "config": {}, "secrets": ["t"]}), "secrets is an object"),
        (
            json!({"name": "f", "kind": "fs", "config": {"paths": ["/srv"]}, "secrets": {"password": "p"}}),
            "unknown fs source setting \"password\"",
        ),
        (json!({"name": "z", "kind": "zfs", "config": {}}), "unknown variant `zfs`"),
    ] {
        let (s, v) = api.call("post", "/api/v1/sources", Some(&admin), Some(source)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert!(v["error"]["message"].as_str().unwrap().contains(says), "{v}");
    }
    let (s, v) = api.call("get", "/api/v1/nothing-here", Some(&admin), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(v["error"]["message"].as_str().unwrap().contains("openapi.json"));
    let (s, v) = api.call("get", "/api/v1/jobs?state=bogus", Some(&admin), None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");

    // A job's parameters are its kind's: a key it does not take, a value
    // of the wrong type or out of range is refused, naming it.
    // (`local` is the repository every coordinator starts with.)
    for (params, says) in [
        (json!({"read-data": "all"}), "params.read-data: unknown field `read-data`"),
        (json!({"read_data": "half"}), "params.read_data: \"half\" is not a subset"),
        (json!({"read_data": 5}), "params.read_data: invalid type: integer `5`"),
    ] {
        let job = json!({"kind": "check", "repository": "local", "params": params});
        let (s, v) = api.call("post", "/api/v1/jobs", Some(&admin), Some(job)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert!(v["error"]["message"].as_str().unwrap().starts_with(says), "{v}");
    }
    for (params, says) in [
        (json!({"percent": 0}), "params.percent must be between 1 and 100"),
        (json!({"percent": "all"}), "params.percent: invalid type: string"),
    ] {
        let job = json!({"kind": "verify", "repository": "local", "params": params});
        let (s, v) = api.call("post", "/api/v1/jobs", Some(&admin), Some(job)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert!(v["error"]["message"].as_str().unwrap().starts_with(says), "{v}");
    }
    let job = json!({"kind": "restore", "repository": "local", "params": {"target": "/r", "to": {"kind": "postgres"}, "verify": "yes"}});
    let (s, v) = api.call("post", "/api/v1/jobs", Some(&admin), Some(job)).await;
    assert!(v["error"]["message"].as_str().unwrap().starts_with("params.verify: invalid type"), "{s} {v}");
    let job = json!({"kind": "check", "repository": "local", "params": {"read_data": "1/5"}});
    let created = api.ok("post", "/api/v1/jobs", &admin, Some(job)).await;
    assert_eq!(created["params"], json!({"read_data": "1/5"}));
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idempotency_key_makes_one_job_and_a_viewer_cannot_run_anything() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.workers = 0;
    let running = backstop_server::start(c).await.unwrap();
    let admin = running.admin_token.clone().unwrap();
    let api = Api::new(&running);
    setup_plan(&api, &admin, &source_tree(dir.path()), json!({})).await;
    let send = |key: &'static str| {
        let api = &api;
        let admin = admin.clone();
        async move {
            let resp = api
                .http
                .post(format!("{}/api/v1/plans/nightly/run", api.base))
                .bearer_auth(admin)
                .header("Idempotency-Key", key)
                .send()
                .await
                .unwrap();
            (resp.status(), resp.json::<Job>().await.unwrap())
        }
    };
    let (s1, a) = send("k-1").await;
    let (s2, b) = send("k-1").await;
    assert_eq!((s1, s2), (StatusCode::CREATED, StatusCode::OK));
    assert_eq!(a.id, b.id);

    let viewer: NewToken = serde_json::from_value(
        api.ok("post", "/api/v1/tokens", &admin, Some(json!({"name": "v", "role": "viewer"}))).await,
    )
    .unwrap();
    let (s, _) = api.call("post", "/api/v1/plans/nightly/run", Some(viewer.secret.expose()), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = api.call("get", "/api/v1/jobs", Some(viewer.secret.expose()), None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = api
        .call(
            "post",
            "/api/v1/worker/claim",
            Some(viewer.secret.expose()),
            Some(json!({"worker": "w", "region": "default"})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "only worker tokens claim");
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_paused_past_its_lease_is_refused_with_409_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.workers = 0;
    let running = backstop_server::start(c).await.unwrap();
    let admin = running.admin_token.clone().unwrap();
    let api = Api::new(&running);
    setup_plan(&api, &admin, &source_tree(dir.path()), json!({})).await;
    let worker: NewToken = serde_json::from_value(
        api.ok("post", "/api/v1/tokens", &admin, Some(json!({"name": "w", "role": "worker"}))).await,
    )
    .unwrap();
    let job: Job = serde_json::from_value(api.ok("post", "/api/v1/plans/nightly/run", &admin, None).await).unwrap();
    let claim = json!({"worker": "paused", "region": "default", "wait_seconds": 5});
    let first: Claim =
        serde_json::from_value(api.ok("post", "/api/v1/worker/claim", worker.secret.expose(), Some(claim)).await)
            .unwrap();
    assert_eq!(first.attempt, 1);
    assert_eq!(first.repository.location, dir.path().join("data/repository").display().to_string());

    // Pause past the 3 s lease; the reaper requeues (backoff 0.5 s); another worker claims.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let claim = json!({"worker": "healthy", "region": "default", "wait_seconds": 10});
    let second: Claim =
        serde_json::from_value(api.ok("post", "/api/v1/worker/claim", worker.secret.expose(), Some(claim)).await)
            .unwrap();
    assert_eq!((second.job.id.as_str(), second.attempt), (job.id.as_str(), 2));

    let path = format!("/api/v1/worker/jobs/{}/complete", job.id);
    let stale = json!({"attempt": 1, "outcome": "succeeded", "result": {"snapshot_id": "bogus"}});
    let (s, v) = api.call("post", &path, Some(worker.secret.expose()), Some(stale)).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["error"]["code"], "stale_attempt");
    let hb = json!({"attempt": 1});
    let (s, _) = api
        .call("post", &format!("/api/v1/worker/jobs/{}/heartbeat", job.id), Some(worker.secret.expose()), Some(hb))
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    let now: Job =
        serde_json::from_value(api.ok("get", &format!("/api/v1/jobs/{}", job.id), &admin, None).await).unwrap();
    assert_eq!((now.state, now.attempt, now.result.clone()), (JobState::Running, 2, None), "nothing changed");

    let fresh = json!({"attempt": 2, "outcome": "failed", "error": "disk full", "retryable": false});
    api.ok("post", &path, worker.secret.expose(), Some(fresh)).await;
    let now: Job =
        serde_json::from_value(api.ok("get", &format!("/api/v1/jobs/{}", job.id), &admin, None).await).unwrap();
    assert_eq!(now.state, JobState::Failed);
    // Long-poll: an empty queue answers 204 after the wait.
    let t = Instant::now();
    let (s, _) = api
        .call(
            "post",
            "/api/v1/worker/claim",
            Some(worker.secret.expose()),
            Some(json!({"worker": "w", "region": "default", "wait_seconds": 1})),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert!(t.elapsed() >= Duration::from_millis(900), "it waited");
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_event_stream_follows_a_job_live_and_ends_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let running = backstop_server::start(config(dir.path())).await.unwrap();
    let admin = running.admin_token.clone().unwrap();
    let api = Api::new(&running);
    setup_plan(&api, &admin, &source_tree(dir.path()), json!({})).await;
    let job: Job = serde_json::from_value(api.ok("post", "/api/v1/plans/nightly/run", &admin, None).await).unwrap();
    let resp = api
        .http
        .get(format!("{}/api/v1/jobs/{}/events/stream", api.base, job.id))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let body = tokio::time::timeout(Duration::from_secs(60), resp.text())
        .await
        .expect("the stream ends with the job")
        .unwrap();
    let events: Vec<JobEvent> =
        body.lines().filter_map(|l| l.strip_prefix("data:")).map(|d| serde_json::from_str(d.trim()).unwrap()).collect();
    let states: Vec<&str> = events.iter().filter_map(|e| e.data.get("state").and_then(Value::as_str)).collect();
    assert_eq!(states.first(), Some(&"queued"));
    assert_eq!(states.last(), Some(&"succeeded"), "{states:?}");
    assert!(body.contains("event: log"));
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelling_a_running_job_stops_it_within_seconds() {
    let dir = tempfile::tempdir().unwrap();
    // Uploads held to 4 MiB/s: the ~66 MiB this stores would take over
    // fifteen seconds, so the backup is still running when the cancel
    // arrives however fast the machine reads and compresses (unthrottled,
    // a fast machine finished it in under a second, before the cancel).
    let mut config = config(dir.path());
    config.worker_open_options.bandwidth = backstop_backend::Bandwidth::new(Some(4 << 20), None);
    let running = backstop_server::start(config).await.unwrap();
    let admin = running.admin_token.clone().unwrap();
    let api = Api::new(&running);
    // Enough data that the backup is still running when the cancel arrives.
    let src = dir.path().join("big");
    std::fs::create_dir_all(&src).unwrap();
    // Text-like data (it takes compressing) in many files.
    let words = ["backup ", "restore ", "snapshot ", "chunk ", "pack ", "index ", "tree ", "queue "];
    for i in 0..60u32 {
        let mut text = String::with_capacity(4 << 20);
        let mut x = i.wrapping_mul(2654435761) | 1;
        while text.len() < 4 << 20 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            text.push_str(words[(x % 8) as usize]);
            text.push_str(&(x % 1000).to_string());
        }
        std::fs::write(src.join(format!("f{i}.txt")), text).unwrap();
    }
    setup_plan(&api, &admin, &src.display().to_string(), json!({})).await;
    let job: Job = serde_json::from_value(api.ok("post", "/api/v1/plans/nightly/run", &admin, None).await).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let j: Job =
            serde_json::from_value(api.ok("get", &format!("/api/v1/jobs/{}", job.id), &admin, None).await).unwrap();
        if j.state == JobState::Running {
            break;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let t = Instant::now();
    api.ok("post", &format!("/api/v1/jobs/{}/cancel", job.id), &admin, None).await;
    let done = wait_job(&api, &admin, &job.id).await;
    assert_eq!(done.state, JobState::Cancelled, "{done:?}");
    assert!(t.elapsed() < Duration::from_secs(10), "stopped in {:?}", t.elapsed());
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenants_token_finds_nothing_of_another_tenant_on_any_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.workers = 0;
    c.tenant_roots = vec![dir.path().join("tenants")];
    let running = backstop_server::start(c).await.unwrap();
    let admin = running.admin_token.clone().unwrap();
    let api = Api::new(&running);
    for t in ["tenant-a", "tenant-b"] {
        api.ok("post", "/api/v1/tenants", &admin, Some(json!({"id": t}))).await;
    }
    let token = |tenant: &'static str, role: &'static str| {
        let (api, admin) = (&api, admin.clone());
        async move {
            let v = api
                .ok(
                    "post",
                    "/api/v1/tokens",
                    &admin,
                    Some(json!({"name": format!("{tenant}-{role}"), "role": role, "tenant": tenant})),
                )
                .await;
            serde_json::from_value::<NewToken>(v).unwrap()
        }
    };
    let a = token("tenant-a", "admin").await;
    let b = token("tenant-b", "admin").await;

    // Tenant A's objects: repository, source, plan, job, token.
    let repo_dir = dir.path().join("tenants/tenant-a/repo");
    let repo: Repository = serde_json::from_value(
        api.ok(
            "post",
            "/api/v1/repositories",
            a.secret.expose(),
            Some(json!({"name": "main", "location": repo_dir.display().to_string(), "password": "pw-a", "init": true})),
        )
        .await,
    )
    .unwrap();
    let src = source_tree(&dir.path().join("tenants/tenant-a"));
    let source: Source = serde_json::from_value(
        api.ok(
            "post",
            "/api/v1/sources",
            a.secret.expose(),
            Some(json!({"name": "files", "kind": "fs", "config": {"paths": [src]}})),
        )
        .await,
    )
    .unwrap();
    let plan: Plan = serde_json::from_value(
        api.ok(
            "post",
            "/api/v1/plans",
            a.secret.expose(),
            Some(json!({"name": "nightly", "source": "files", "repository": "main"})),
        )
        .await,
    )
    .unwrap();
    let job: Job =
        serde_json::from_value(api.ok("post", "/api/v1/plans/nightly/run", a.secret.expose(), None).await).unwrap();
    let a_reader = token("tenant-a", "viewer").await;
    // A snapshot in tenant A's repository (no worker runs here: backed up
    // by the engine itself, then found by the catalog's rebuild).
    let snapshot = {
        let backend = backstop_backend::open(&repo_dir.display().to_string(), &Default::default()).unwrap();
        let engine = backstop_repo::Repository::open(backend, &backstop_repo::Password::new("pw-a")).unwrap();
        let source = backstop_repo::backup::BackupSource::Paths(vec![src.clone().into()]);
        let options = backstop_repo::backup::BackupOptions::default();
        let cancel = backstop_repo::CancelToken::new();
        backstop_repo::backup::run(&engine, source, &options, &backstop_repo::NoProgress, &cancel)
            .unwrap()
            .id
            .to_string()
    };
    api.ok("post", "/api/v1/catalog/rebuild", a.secret.expose(), None).await;

    // Walk every route that names an object: tenant B gets 404 for A's.
    let mut checked = 0;
    for (route, _) in backstop_server::router::routes() {
        if !route.path.contains("{id}") || route.path.starts_with("/api/v1/worker") {
            continue;
        }
        let id = if route.path.starts_with("/api/v1/jobs") {
            job.id.clone()
        } else if route.path.starts_with("/api/v1/plans") {
            plan.id.clone()
        } else if route.path.starts_with("/api/v1/repositories") {
            repo.id.clone()
        } else if route.path.starts_with("/api/v1/sources") {
            source.id.clone()
        } else if route.path.starts_with("/api/v1/tokens") {
            a_reader.token.id.clone()
        } else if route.path.starts_with("/api/v1/snapshots") {
            snapshot.clone()
        } else {
            panic!("no tenant-A object for {}", route.path);
        };
        let path = route.path.replace("{id}", &id);
        let body = match route.method {
            "post" => Some(json!({})),
            "put" => Some(json!({"config": {}})),
            _ => None,
        };
        let (status, v) = api.call(route.method, &path, Some(b.secret.expose()), body).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{} {path} as tenant B: {v}", route.method);
        checked += 1;
    }
    assert!(checked >= 12, "walked {checked} routes");
    // Lists show tenant B nothing of A's.
    for path in [
        "/api/v1/jobs",
        "/api/v1/plans",
        "/api/v1/repositories",
        "/api/v1/sources",
        "/api/v1/snapshots",
        "/api/v1/tokens",
        "/api/v1/audit",
        "/api/v1/tenants",
    ] {
        let v = api.ok("get", path, b.secret.expose(), None).await;
        let text = v.to_string();
        assert!(!text.contains("tenant-a") && !text.contains(&job.id) && !text.contains(&repo.id), "{path}: {text}");
    }
    // And tenant A still sees its job (by name, too) and browses its snapshot.
    api.ok("get", &format!("/api/v1/snapshots/{snapshot}/tree"), a_reader.secret.expose(), None).await;
    api.ok("get", &format!("/api/v1/jobs/{}", job.id), a_reader.secret.expose(), None).await;
    api.ok("get", "/api/v1/plans/nightly", a_reader.secret.expose(), None).await;
    // A tenant admin cannot create tokens for another tenant or tenants at all.
    let (s, _) = api
        .call(
            "post",
            "/api/v1/tokens",
            Some(b.secret.expose()),
            Some(json!({"name": "x", "role": "viewer", "tenant": "tenant-a"})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = api.call("post", "/api/v1/tenants", Some(b.secret.expose()), Some(json!({"id": "tenant-c"}))).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // Secrets never come back.
    let all = api.ok("get", "/api/v1/repositories", a.secret.expose(), None).await.to_string();
    assert!(!all.contains("pw-a"), "{all}");
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_job_is_posted_to_the_webhooks() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let hook = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_url = format!("http://{}/notify", hook.local_addr().unwrap());
    let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(4);
    tokio::spawn(async move {
        loop {
            let (mut conn, _) = hook.accept().await.unwrap();
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Read headers and a body of Content-Length bytes.
                loop {
                    let n = conn.read(&mut chunk).await.unwrap();
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap())
                            })
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await;
                            let _ = tx.send(text).await;
                            return;
                        }
                    }
                }
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.webhooks = vec![hook_url];
    let secret = backstop_server::webhooks::WebhookSecret(b"a webhook secret of the admin".to_vec().into());
    c.webhook_secret = Some(secret.clone());
    let running = backstop_server::start(c).await.unwrap();
    let admin = running.admin_token.clone().unwrap();
    let api = Api::new(&running);
    // A source whose path does not exist: the backup fails for good.
    api.ok(
        "post",
        "/api/v1/sources",
        &admin,
        Some(json!({"name": "gone", "kind": "fs", "config": {"paths": ["/does/not/exist"]}})),
    )
    .await;
    api.ok("post", "/api/v1/plans", &admin, Some(json!({"name": "broken", "source": "gone", "repository": "local"})))
        .await;
    let job: Job = serde_json::from_value(api.ok("post", "/api/v1/plans/broken/run", &admin, None).await).unwrap();
    let done = wait_job(&api, &admin, &job.id).await;
    assert_eq!(done.state, JobState::Failed, "{done:?}");
    assert!(done.error.as_deref().unwrap().contains("/does/not/exist"), "{done:?}");
    let post = tokio::time::timeout(Duration::from_secs(20), rx.recv()).await.expect("the webhook was called").unwrap();
    let (head, body) = post.split_once("\r\n\r\n").unwrap();
    let notice: Value = serde_json::from_str(body).unwrap();
    // Signed: t=UNIX,v1=HMAC-SHA256(secret, "UNIX.BODY").
    let header = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("x-backstop-signature:").map(|v| v.trim().to_string()))
        .expect("a signature header");
    let unix: u64 = header.strip_prefix("t=").unwrap().split(',').next().unwrap().parse().unwrap();
    assert_eq!(header, backstop_server::webhooks::signature(&secret, unix, body.as_bytes()));
    assert!(!head.contains("a webhook secret"), "the secret itself is not sent");
    assert_eq!(notice["event"], "job.failed");
    assert_eq!(notice["job"]["id"], job.id.as_str());
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_is_served_over_tls_with_the_given_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let backstop_testkit::tls::Certificates { ca, cert, key } = backstop_testkit::tls::Certificates::make(dir.path());
    let mut c = config(dir.path());
    c.tls = Some((cert.clone(), key.clone()));
    c.workers = 0;
    let running = backstop_server::start(c).await.unwrap();
    let admin = running.admin_token.clone().unwrap();
    let root = reqwest::Certificate::from_pem(&std::fs::read(&ca).unwrap()).unwrap();
    let https = reqwest::Client::builder().add_root_certificate(root).build().unwrap();
    let resp = https
        .get(format!("https://127.0.0.1:{}/api/v1/jobs", running.addr.port()))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // Plain HTTP on the TLS port gets nothing useful.
    let plain = reqwest::Client::new().get(format!("http://127.0.0.1:{}/healthz", running.addr.port())).send().await;
    assert!(plain.map(|r| !r.status().is_success()).unwrap_or(true));
    running.shutdown().await;

    // A bad key file is a clear start error.
    std::fs::write(&key, "not a key").unwrap();
    let mut c = config(dir.path());
    c.tls = Some((cert, key));
    let err = backstop_server::start(c).await.err().expect("refused");
    assert!(err.to_string().contains("key.pem"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_may_use_local_paths_only_under_its_tenant_root() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.workers = 0;
    c.tenant_roots = vec![dir.path().join("tenants")];
    let running = backstop_server::start(c).await.unwrap();
    let admin = running.admin_token.clone().unwrap();
    let api = Api::new(&running);
    api.ok("post", "/api/v1/tenants", &admin, Some(json!({"id": "acme"}))).await;
    let op: NewToken = serde_json::from_value(
        api.ok("post", "/api/v1/tokens", &admin, Some(json!({"name": "op", "role": "operator", "tenant": "acme"})))
            .await,
    )
    .unwrap();
    let own = dir.path().join("tenants/acme/data");
    std::fs::create_dir_all(&own).unwrap();
    let data_dir = dir.path().join("data").display().to_string();
    for (path, ok) in [
        (own.display().to_string(), true),
        (data_dir.clone(), false),
        (format!("{}/tenants/other/x", dir.path().display()), false),
        (format!("{}/tenants/acme/../other", dir.path().display()), false),
        ("/etc".to_string(), false),
    ] {
        let body = json!({"name": format!("s{}", path.len()), "kind": "fs", "config": {"paths": [path]}});
        let (status, v) = api.call("post", "/api/v1/sources", Some(op.secret.expose()), Some(body)).await;
        assert_eq!(status.is_success(), ok, "{path}: {status} {v}");
        if !ok {
            assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {v}");
        }
    }
    // Repositories: local ones under the root; S3 only with the tenant's own credentials.
    let repo = json!({"name": "r1", "location": data_dir, "password": "p"});
    assert_eq!(
        api.call("post", "/api/v1/repositories", Some(op.secret.expose()), Some(repo)).await.0,
        StatusCode::FORBIDDEN
    );
    let s3 = json!({"name": "r2", "location": "s3://bucket/x", "password": "p"});
    assert_eq!(
        api.call("post", "/api/v1/repositories", Some(op.secret.expose()), Some(s3)).await.0,
        StatusCode::FORBIDDEN
    );
    let repo = json!({"name": "r3", "location": dir.path().join("tenants/acme/repo").display().to_string(), "password": "p", "init": true});
    assert_eq!(
        api.call("post", "/api/v1/repositories", Some(op.secret.expose()), Some(repo)).await.0,
        StatusCode::CREATED
    );
    // A restore target outside the root is refused.
    let restore = json!({"kind": "restore", "repository": "r3", "params": {"target": "/root/x"}});
    assert_eq!(
        api.call("post", "/api/v1/jobs", Some(op.secret.expose()), Some(restore)).await.0,
        StatusCode::FORBIDDEN
    );
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn lists_come_in_pages_and_filter() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.workers = 0;
    let running = backstop_server::start(c).await.unwrap();
    let admin = running.admin_token.clone().unwrap();
    let api = Api::new(&running);
    let src = source_tree(dir.path());
    for i in 0..5 {
        let kind_host = if i % 2 == 0 { "even" } else { "odd" };
        api.ok(
            "post",
            "/api/v1/sources",
            &admin,
            Some(json!({"name": format!("s{i}"), "kind": "fs", "host": kind_host, "config": {"paths": [src]}})),
        )
        .await;
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/sources?limit=2&cursor={c}"),
            None => "/api/v1/sources?limit=2".to_string(),
        };
        let page = api.ok("get", &path, &admin, None).await;
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        seen.extend(items.iter().map(|s| s["name"].as_str().unwrap().to_string()));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(seen, ["s0", "s1", "s2", "s3", "s4"], "every item once, in order");
    let odd = api.ok("get", "/api/v1/sources?host=odd", &admin, None).await;
    assert_eq!(odd["items"].as_array().unwrap().len(), 2);
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_catalog_is_rebuilt_from_the_repositories_alone() {
    let dir = tempfile::tempdir().unwrap();
    let first = backstop_server::start(config(dir.path())).await.unwrap();
    let admin = first.admin_token.clone().unwrap();
    let api = Api::new(&first);
    // A repository with a known password, and two backups into it.
    let repo = dir.path().join("kept-repo").display().to_string();
    api.ok(
        "post",
        "/api/v1/repositories",
        &admin,
        Some(json!({"name": "kept", "location": repo, "password": "pw-kept", "init": true})),
    )
    .await;
    let src = source_tree(dir.path());
    api.ok("post", "/api/v1/sources", &admin, Some(json!({"name": "files", "kind": "fs", "config": {"paths": [src]}})))
        .await;
    api.ok("post", "/api/v1/plans", &admin, Some(json!({"name": "p", "source": "files", "repository": "kept"}))).await;
    for _ in 0..2 {
        let job: Job = serde_json::from_value(api.ok("post", "/api/v1/plans/p/run", &admin, None).await).unwrap();
        assert_eq!(wait_job(&api, &admin, &job.id).await.state, JobState::Succeeded);
    }
    first.shutdown().await;

    // The catalog is lost: a new service, a fresh data directory, the same repository.
    let other = tempfile::tempdir().unwrap();
    let second = backstop_server::start(config(other.path())).await.unwrap();
    let admin = second.admin_token.clone().unwrap();
    let api = Api::new(&second);
    api.ok(
        "post",
        "/api/v1/repositories",
        &admin,
        Some(json!({"name": "kept", "location": repo, "password": "pw-kept"})),
    )
    .await;
    assert!(api.ok("get", "/api/v1/snapshots", &admin, None).await["items"].as_array().unwrap().is_empty());
    let report = api.ok("post", "/api/v1/catalog/rebuild", &admin, None).await;
    let kept = report["repositories"].as_array().unwrap().iter().find(|r| r["repository"] == "kept").unwrap().clone();
    assert_eq!((kept["snapshots"].as_u64(), kept["added"].as_u64()), (Some(2), Some(2)), "{report}");
    let snaps = api.ok("get", "/api/v1/snapshots?repository=kept", &admin, None).await;
    assert_eq!(snaps["items"].as_array().unwrap().len(), 2);
    // Rebuilding again changes nothing.
    let again = api.ok("post", "/api/v1/catalog/rebuild", &admin, None).await;
    assert!(again["repositories"].as_array().unwrap().iter().all(|r| r["added"] == 0 && r["removed"] == 0), "{again}");
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn packaged_sources_run_as_plans_and_restore_into_systems() {
    let dir = tempfile::tempdir().unwrap();
    let running = backstop_server::start(config(dir.path())).await.unwrap();
    let admin = running.admin_token.clone().unwrap();
    let api = Api::new(&running);

    // A disk image with a changed-block map, as a plan's source.
    let disk = dir.path().join("vm1.raw");
    let f = std::fs::File::create(&disk).unwrap();
    f.set_len(4 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[9u8; 65536], 1 << 20).unwrap();
    let source = json!({"name": "vm1", "kind": "image", "config": {"path": disk, "generation": "1"}});
    api.ok("post", "/api/v1/sources", &admin, Some(source)).await;
    let plan = json!({"name": "vm1-nightly", "source": "vm1", "repository": "local"});
    api.ok("post", "/api/v1/plans", &admin, Some(plan)).await;
    let job: Job = serde_json::from_value(api.ok("post", "/api/v1/plans/vm1-nightly/run", &admin, None).await).unwrap();
    let done = wait_job(&api, &admin, &job.id).await;
    assert_eq!(done.state, JobState::Succeeded, "{done:?}");

    // A restore job into a system: the image back to a raw file.
    let out = dir.path().join("restored.raw");
    let restore = json!({"kind": "restore", "repository": "local",
                         "params": {"to": {"kind": "image", "config": {"path": out}}}});
    let job: Job = serde_json::from_value(api.ok("post", "/api/v1/jobs", &admin, Some(restore)).await).unwrap();
    let done = wait_job(&api, &admin, &job.id).await;
    assert_eq!(done.state, JobState::Succeeded, "{done:?}");
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&disk).unwrap());
    // Or into a source: where it points, with the restore's own options.
    let copy = dir.path().join("copy.raw");
    let target = json!({"name": "vm1-copy", "kind": "image", "config": {"path": copy}});
    api.ok("post", "/api/v1/sources", &admin, Some(target)).await;
    let restore = json!({"kind": "restore", "repository": "local", "source": "vm1-copy",
                         "params": {"snapshot": "latest", "options": {"entry": "vm1.raw"}}});
    let job: Job = serde_json::from_value(api.ok("post", "/api/v1/jobs", &admin, Some(restore)).await).unwrap();
    let done = wait_job(&api, &admin, &job.id).await;
    assert_eq!(done.state, JobState::Succeeded, "{done:?}");
    assert_eq!(std::fs::read(&copy).unwrap(), std::fs::read(&disk).unwrap());
    let both = json!({"kind": "restore", "repository": "local", "source": "vm1-copy",
                      "params": {"to": {"kind": "image", "config": {"path": out}}}});
    assert_eq!(api.call("post", "/api/v1/jobs", Some(&admin), Some(both)).await.0, StatusCode::BAD_REQUEST);

    // A command whose dump fails fails its job, with the tool's words, and adds no snapshot.
    let before = api.ok("get", "/api/v1/snapshots", &admin, None).await["items"].as_array().unwrap().len();
    let source =
        json!({"name": "broken", "kind": "command", "config": {"command": "echo half; echo dump failed >&2; exit 2"}});
    api.ok("post", "/api/v1/sources", &admin, Some(source)).await;
    api.ok("post", "/api/v1/plans", &admin, Some(json!({"name": "broken", "source": "broken", "repository": "local"})))
        .await;
    let job: Job = serde_json::from_value(api.ok("post", "/api/v1/plans/broken/run", &admin, None).await).unwrap();
    let done = wait_job(&api, &admin, &job.id).await;
    assert_eq!(done.state, JobState::Failed, "{done:?}");
    assert!(done.error.as_deref().unwrap_or_default().contains("dump failed"), "{done:?}");
    let after = api.ok("get", "/api/v1/snapshots", &admin, None).await["items"].as_array().unwrap().len();
    assert_eq!(after, before);

    // Bad configurations are 400s; commands and hooks are for the system tenant's admins.
    let (status, v) = api
        .call(
            "post",
            "/api/v1/sources",
            Some(&admin),
            Some(json!({"name": "x", "kind": "image", "config": {"path": "rel"}})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    let op: NewToken = serde_json::from_value(
        api.ok("post", "/api/v1/tokens", &admin, Some(json!({"name": "op", "role": "operator"}))).await,
    )
    .unwrap();
    let cmd = json!({"name": "c2", "kind": "command", "config": {"command": "id"}});
    assert_eq!(api.call("post", "/api/v1/sources", Some(op.secret.expose()), Some(cmd)).await.0, StatusCode::FORBIDDEN);
    let hooked =
        json!({"name": "h", "kind": "fs", "config": {"paths": ["/tmp"], "hooks": {"pre": [{"command": "id"}]}}});
    assert_eq!(
        api.call("post", "/api/v1/sources", Some(op.secret.expose()), Some(hooked)).await.0,
        StatusCode::FORBIDDEN
    );
    let with_password = json!({"kind": "restore", "repository": "local",
                               "params": {"to": {"kind": "postgres", "config": {"url": "postgres://u:pw@h/db"}}}});
    let (status, v) = api.call("post", "/api/v1/jobs", Some(&admin), Some(with_password)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert!(v.to_string().contains("must not carry a password"), "{v}");
    let to_cmd = json!({"kind": "restore", "repository": "local", "params": {"to": {"kind": "command", "config": {"command": "cat"}}}});
    assert_eq!(api.call("post", "/api/v1/jobs", Some(op.secret.expose()), Some(to_cmd)).await.0, StatusCode::FORBIDDEN);
    running.shutdown().await;
}

/// Kubernetes through the service: a tenant's source names its cluster's
/// server and keeps the token among its secrets; the workers' own
/// credentials (a kubeconfig) are for the system tenant's admins. The
/// cluster is the testkit's stand-in API server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_sources_back_up_through_plans_and_restore_into_a_mapped_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = backstop_testkit::kubernetes::FakeCluster::start();
    cluster.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}));
    cluster.apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "web", "namespace": "shop"}, "data": {"port": "8080"}}));
    let kubeconfig = dir.path().join("kubeconfig");
    cluster.write_kubeconfig(&kubeconfig, "fake");
    let running = backstop_server::start(config(dir.path())).await.unwrap();
    let admin = running.admin_token.clone().unwrap();
    let api = Api::new(&running);
    let op: NewToken = serde_json::from_value(
        api.ok("post", "/api/v1/tokens", &admin, Some(json!({"name": "op", "role": "operator"}))).await,
    )
    .unwrap();

    let workers_own =
        json!({"name": "k1", "kind": "kubernetes", "config": {"kubeconfig": kubeconfig, "context": "fake"}});
    let (status, v) = api.call("post", "/api/v1/sources", Some(op.secret.expose()), Some(workers_own)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{v}");
    let bad = json!({"name": "k2", "kind": "kubernetes", "config": {"server": cluster.url(), "selector": "app in (x"}});
    assert_eq!(
        api.call("post", "/api/v1/sources", Some(op.secret.expose()), Some(bad)).await.0,
        StatusCode::BAD_REQUEST
    );
    let source = json!({"name": "shop", "kind": "kubernetes", "config": {"server": cluster.url(), "namespaces": "shop"},
                        "secrets": {"token": cluster.token()}});
    let created = api.ok("post", "/api/v1/sources", op.secret.expose(), Some(source)).await;
    assert!(!created.to_string().contains(cluster.token()), "secrets are not shown: {created}");
    api.ok(
        "post",
        "/api/v1/plans",
        op.secret.expose(),
        Some(json!({"name": "shop", "source": "shop", "repository": "local"})),
    )
    .await;
    let job: Job =
        serde_json::from_value(api.ok("post", "/api/v1/plans/shop/run", op.secret.expose(), None).await).unwrap();
    let done = wait_job(&api, &admin, &job.id).await;
    assert_eq!(done.state, JobState::Succeeded, "{done:?}");

    // Restores into a cluster use the workers' credentials: admins only, and no token in the job.
    let restore = |config: Value| json!({"kind": "restore", "repository": "local", "params": {"snapshot": "latest", "to": {"kind": "kubernetes", "config": config}}});
    let to = json!({"kubeconfig": kubeconfig, "context": "fake", "namespace_map": "shop:shop-restored"});
    assert_eq!(
        api.call("post", "/api/v1/jobs", Some(op.secret.expose()), Some(restore(to.clone()))).await.0,
        StatusCode::FORBIDDEN
    );
    let with_token = restore(json!({"server": cluster.url(), "token": cluster.token()}));
    let (status, v) = api.call("post", "/api/v1/jobs", Some(&admin), Some(with_token)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    let (status, v) = api.call("post", "/api/v1/jobs", Some(&admin), Some(restore(json!({"conflict": "merge"})))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    let job: Job = serde_json::from_value(api.ok("post", "/api/v1/jobs", &admin, Some(restore(to))).await).unwrap();
    let done = wait_job(&api, &admin, &job.id).await;
    assert_eq!(done.state, JobState::Succeeded, "{done:?}");
    assert_eq!(cluster.get("configmaps", Some("shop-restored"), "web").unwrap()["data"]["port"], "8080");
    running.shutdown().await;
}

/// The repository's data packs, by key.
fn data_packs(repo: &std::path::Path) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    for dir in std::fs::read_dir(repo.join("data")).unwrap() {
        for f in std::fs::read_dir(dir.unwrap().path()).unwrap() {
            let f = f.unwrap();
            let key = f.path().strip_prefix(repo).unwrap().display().to_string();
            out.insert(key, f.metadata().unwrap().len());
        }
    }
    out
}

/// Flip 16 bytes inside the first blob of the biggest of `packs`; its key.
fn damage_biggest(repo: &std::path::Path, packs: &std::collections::BTreeMap<String, u64>) -> String {
    let (key, _) = packs.iter().max_by_key(|(_, size)| **size).unwrap();
    let path = repo.join(key);
    let mut bytes = std::fs::read(&path).unwrap();
    for b in &mut bytes[100..116] {
        *b ^= 0x5a;
    }
    std::fs::write(&path, bytes).unwrap();
    key.clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chained_verify_reads_the_snapshot_its_backup_wrote_and_only_it() {
    let dir = tempfile::tempdir().unwrap();
    let running = backstop_server::start(config(dir.path())).await.unwrap();
    let admin = running.admin_token.clone().unwrap();
    let api = Api::new(&running);
    let repo = dir.path().join("data/repository");
    let plan = |name: &str, seed: u64, chain: Value| {
        let src = dir.path().join(name);
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("data.bin"), backstop_testkit::fixture::noise(2 << 20, seed)).unwrap();
        let source = json!({"name": name, "kind": "fs", "config": {"paths": [src.display().to_string()]}});
        let plan = json!({"name": name, "source": name, "repository": "local", "chain": chain});
        (source, plan)
    };
    let run = async |name: &str, seed: u64, chain: Value| -> Job {
        let (source, plan) = plan(name, seed, chain);
        api.ok("post", "/api/v1/sources", &admin, Some(source)).await;
        api.ok("post", "/api/v1/plans", &admin, Some(plan)).await;
        let job: Job =
            serde_json::from_value(api.ok("post", &format!("/api/v1/plans/{name}/run"), &admin, None).await).unwrap();
        wait_job(&api, &admin, &job.id).await
    };

    // An older snapshot whose only pack is then damaged.
    let old = run("old", 1, json!({})).await;
    assert_eq!(old.state, JobState::Succeeded, "{old:?}");
    let old_packs = data_packs(&repo);
    damage_biggest(&repo, &old_packs);

    // The new backup's chained verify reads the new snapshot in full, and
    // nothing of the old one: it passes.
    let new = run("new", 2, json!({"verify_percent": 100})).await;
    assert_eq!(new.state, JobState::Succeeded, "{new:?}");
    let snapshot = new.result.as_ref().unwrap()["snapshot_id"].as_str().unwrap().to_string();
    let verify = loop {
        let page: Page<Job> =
            serde_json::from_value(api.ok("get", "/api/v1/jobs?kind=verify", &admin, None).await).unwrap();
        if let Some(v) = page.items.into_iter().find(|j| j.parent.as_deref() == Some(new.id.as_str())) {
            break wait_job(&api, &admin, &v.id).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(verify.state, JobState::Succeeded, "the damage is in a pack the new snapshot does not use: {verify:?}");
    assert_eq!(verify.result.as_ref().unwrap()["snapshots"], 1, "{verify:?}");
    // A check that reads every pack finds the old damage.
    let spec = json!({"kind": "check", "repository": "local", "params": {"read_data": "all"}});
    let job: Job = serde_json::from_value(api.ok("post", "/api/v1/jobs", &admin, Some(spec)).await).unwrap();
    assert_eq!(wait_job(&api, &admin, &job.id).await.state, JobState::Failed);

    // Damage in the new snapshot's own pack: a verify of it fails and names the pack.
    let new_packs: std::collections::BTreeMap<String, u64> =
        data_packs(&repo).into_iter().filter(|(k, _)| !old_packs.contains_key(k)).collect();
    let damaged = damage_biggest(&repo, &new_packs);
    let spec = json!({"kind": "verify", "repository": "local", "params": {"snapshot": snapshot, "percent": 100}});
    let job: Job = serde_json::from_value(api.ok("post", "/api/v1/jobs", &admin, Some(spec)).await).unwrap();
    let failed = wait_job(&api, &admin, &job.id).await;
    assert_eq!(failed.state, JobState::Failed, "{failed:?}");
    let events: Vec<JobEvent> =
        serde_json::from_value(api.ok("get", &format!("/api/v1/jobs/{}/events", job.id), &admin, None).await).unwrap();
    let log: Vec<String> = events.iter().filter_map(|e| e.data["message"].as_str().map(str::to_string)).collect();
    assert!(log.iter().any(|m| m.contains(&damaged)), "the verify names {damaged}: {log:?}");
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_is_browsed_and_a_file_downloaded_through_the_coordinator_within_its_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let running = backstop_server::start(config(dir.path())).await.unwrap();
    let admin = running.admin_token.clone().unwrap();
    let api = Api::new(&running);
    let src = source_tree(dir.path());
    setup_plan(&api, &admin, &src, json!({})).await;
    let job: Job = serde_json::from_value(api.ok("post", "/api/v1/plans/nightly/run", &admin, None).await).unwrap();
    let done = wait_job(&api, &admin, &job.id).await;
    assert_eq!(done.state, JobState::Succeeded, "{done:?}");
    let snapshot = done.result.as_ref().unwrap()["snapshot_id"].as_str().unwrap().to_string();

    // A directory, by its path as backed up.
    let tree = |path: &str| format!("/api/v1/snapshots/{snapshot}/tree?path={}", path.replace('/', "%2F"));
    let listed: SnapshotDir = serde_json::from_value(api.ok("get", &tree(&src), &admin, None).await).unwrap();
    let names: Vec<(&str, &str)> = listed.entries.iter().map(|e| (e.name.as_str(), e.kind.as_str())).collect();
    assert_eq!(names, [("a.txt", "file"), ("sub", "dir")]);
    assert_eq!(listed.entries[0].size, 13);
    let root: SnapshotDir = serde_json::from_value(api.ok("get", &tree("/"), &admin, None).await).unwrap();
    assert_eq!(root.entries.len(), 1, "{root:?}");

    // A file, whole, as an attachment.
    let url = format!("{}/api/v1/snapshots/{snapshot}/file?path={}/sub/b.bin", api.base, src);
    let answer = reqwest::Client::new().get(&url).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(answer.headers()["content-type"], "application/octet-stream");
    assert!(answer.headers()["content-disposition"].to_str().unwrap().contains("filename=\"b.bin\""));
    assert_eq!(answer.bytes().await.unwrap().to_vec(), vec![7u8; 300_000]);

    // A file's content is data: a viewer lists, an operator downloads, and the download is audited.
    let viewer: NewToken = serde_json::from_value(
        api.ok("post", "/api/v1/tokens", &admin, Some(json!({"name": "v", "role": "viewer"}))).await,
    )
    .unwrap();
    api.ok("get", &tree(&src), viewer.secret.expose(), None).await;
    let answer = reqwest::Client::new().get(&url).bearer_auth(viewer.secret.expose()).send().await.unwrap();
    assert_eq!(answer.status(), StatusCode::FORBIDDEN);
    let audit = api.ok("get", "/api/v1/audit", &admin, None).await;
    assert!(audit["items"].as_array().unwrap().iter().any(|e| e["action"] == "snapshot.download"), "{audit}");

    // What is not a directory, not a file, or not there is a 4xx that says so; a path cannot climb out.
    let (status, body) = api.call("get", &tree(&format!("{src}/a.txt")), Some(&admin), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["field"], "path");
    let (status, _) =
        api.call("get", &format!("/api/v1/snapshots/{snapshot}/file?path={src}/sub"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = api.call("get", &tree(&format!("{src}/nothing")), Some(&admin), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = api.call("get", &tree("/../etc"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = api.call("get", "/api/v1/snapshots/0123abcd/tree", Some(&admin), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Another tenant finds no such snapshot.
    api.ok("post", "/api/v1/tenants", &admin, Some(json!({"id": "tb"}))).await;
    let other: NewToken = serde_json::from_value(
        api.ok("post", "/api/v1/tokens", &admin, Some(json!({"name": "b", "role": "admin", "tenant": "tb"}))).await,
    )
    .unwrap();
    let (status, _) = api.call("get", &tree("/"), Some(other.secret.expose()), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = api
        .call("get", &format!("/api/v1/snapshots/{snapshot}/file?path={src}/a.txt"), Some(other.secret.expose()), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // The repository's usage, from its snapshots; the worker pool that ran the job.
    let usage: Vec<RepositoryUsage> =
        serde_json::from_value(api.ok("get", "/api/v1/repositories/usage", &admin, None).await).unwrap();
    assert_eq!(usage.len(), 1);
    assert_eq!(usage[0].snapshots, 1);
    assert!(usage[0].logical_bytes >= 300_013 && usage[0].stored_bytes > 0, "{usage:?}");
    let regions: Vec<RegionPool> =
        serde_json::from_value(api.ok("get", "/api/v1/regions", &admin, None).await).unwrap();
    assert_eq!(regions.len(), 1, "{regions:?}");
    assert_eq!((regions[0].region.as_str(), regions[0].workers > 0), ("default", true));
    let theirs: Vec<RepositoryUsage> =
        serde_json::from_value(api.ok("get", "/api/v1/repositories/usage", other.secret.expose(), None).await).unwrap();
    assert!(theirs.is_empty(), "another tenant's usage: {theirs:?}");

    // Jobs by source and by creation time.
    let page = |q: &str| {
        let api = &api;
        let admin = admin.clone();
        let q = q.to_string();
        async move {
            let page: Page<Job> =
                serde_json::from_value(api.ok("get", &format!("/api/v1/jobs?{q}"), &admin, None).await).unwrap();
            page.items.iter().map(|j| j.id.clone()).collect::<Vec<_>>()
        }
    };
    assert!(page("source=files").await.contains(&job.id));
    let created = job.created;
    let at =
        |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true).replace('+', "%2B");
    assert!(page(&format!("since={}", at(created))).await.contains(&job.id));
    assert!(!page(&format!("since={}", at(created + chrono::Duration::milliseconds(1)))).await.contains(&job.id));
    assert!(page(&format!("until={}", at(created + chrono::Duration::milliseconds(1)))).await.contains(&job.id));
    assert!(!page(&format!("until={}", at(created))).await.contains(&job.id));
    assert_eq!(api.call("get", "/api/v1/jobs?source=nothing", Some(&admin), None).await.0, StatusCode::NOT_FOUND);
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn files_inside_a_disk_snapshot_are_browsed_downloaded_and_restored_through_the_service() {
    let dir = tempfile::tempdir().unwrap();
    let running = backstop_server::start(config(dir.path())).await.unwrap();
    let admin = running.admin_token.clone().unwrap();
    let api = Api::new(&running);
    let files: [(&str, &[u8]); 2] = [("etc/hostname", b"vm1\n"), ("etc/motd", b"welcome\n")];
    let disk = backstop_testkit::fixture::gpt_disk_with_files(dir.path(), "vm1.raw", &files);
    let source = json!({"name": "vm1", "kind": "image", "config": {"path": disk}});
    api.ok("post", "/api/v1/sources", &admin, Some(source)).await;
    api.ok(
        "post",
        "/api/v1/plans",
        &admin,
        Some(json!({"name": "vm1-nightly", "source": "vm1", "repository": "local"})),
    )
    .await;
    let job: Job = serde_json::from_value(api.ok("post", "/api/v1/plans/vm1-nightly/run", &admin, None).await).unwrap();
    let done = wait_job(&api, &admin, &job.id).await;
    assert_eq!(done.state, JobState::Succeeded, "{done:?}");
    let snapshot = done.result.as_ref().unwrap()["snapshot_id"].as_str().unwrap().to_string();

    // The partitions, then a directory inside one.
    let tree =
        |path: &str| format!("/api/v1/snapshots/{snapshot}/tree?image=%2Fvm1.raw&path={}", path.replace('/', "%2F"));
    let root: SnapshotDir = serde_json::from_value(api.ok("get", &tree("/"), &admin, None).await).unwrap();
    let names: Vec<&str> = root.entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!((names, root.image.as_deref()), (vec!["p1", "p2"], Some("/vm1.raw")));
    let etc: SnapshotDir = serde_json::from_value(api.ok("get", &tree("/p2/etc"), &admin, None).await).unwrap();
    let names: Vec<(&str, u64)> = etc.entries.iter().map(|e| (e.name.as_str(), e.size)).collect();
    assert_eq!(names, [("hostname", 4), ("motd", 8)]);

    // One file, downloaded.
    let url = format!("{}/api/v1/snapshots/{snapshot}/file?image=%2Fvm1.raw&path=%2Fp2%2Fetc%2Fmotd", api.base);
    let answer = reqwest::Client::new().get(&url).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(answer.bytes().await.unwrap().to_vec(), b"welcome\n");

    // What is not there, or no file system, is a 4xx that says so.
    let (status, body) = api.call("get", &tree("/p2/nothing"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = api.call("get", &tree("/p1"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("no ext2/3/4 file system"), "{body}");

    // A restore job of one directory inside the disk.
    let target = dir.path().join("restored");
    let restore = json!({"kind": "restore", "repository": "local",
                         "params": {"target": target, "image": "/vm1.raw", "include": ["/p2/etc"]}});
    let job: Job = serde_json::from_value(api.ok("post", "/api/v1/jobs", &admin, Some(restore)).await).unwrap();
    let done = wait_job(&api, &admin, &job.id).await;
    assert_eq!(done.state, JobState::Succeeded, "{done:?}");
    assert_eq!(std::fs::read(target.join("p2/etc/hostname")).unwrap(), b"vm1\n");
    assert_eq!(std::fs::read(target.join("p2/etc/motd")).unwrap(), b"welcome\n");
    assert_eq!(done.result.as_ref().unwrap()["files"], 2, "{done:?}");
    assert!(done.result.as_ref().unwrap()["fetched"]["bytes"].as_u64().unwrap() > 0, "{done:?}");

    // An image restore goes into a directory, and the image is a path in the snapshot.
    for params in [
        json!({"image": "/vm1.raw", "to": {"kind": "image", "config": {"path": "/tmp/x.raw"}}}),
        json!({"image": "/vm1.raw", "target": target, "verify": true}),
        json!({"image": "/../vm1.raw", "target": target}),
    ] {
        let restore = json!({"kind": "restore", "repository": "local", "params": params});
        let (status, body) = api.call("post", "/api/v1/jobs", Some(&admin), Some(restore)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{params}: {body}");
    }
    running.shutdown().await;
}
