//! The service as separate processes: `backstop serve`, `backstop worker`
//! and the CLI client, with kill -9 of workers and coordinators, and two
//! coordinators on one PostgreSQL.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

/// A worker process; `limit` slows its uploads (KiB/s) so a kill lands mid-backup.
fn worker(server: &str, token: &str, limit: Option<&str>) -> Child {
    let mut cmd = bin();
    if let Some(l) = limit {
        cmd.args(["--limit-upload", l]);
    }
    cmd.args(["worker", "--server", server, "--region", "default", "--concurrency", "1"])
        .env("BACKSTOP_TOKEN", token)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn kill9(child: &mut Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

/// A repository with a known password, a source of `mib` MiB and a plan.
fn setup(server: &str, admin: &str, dir: &Path, mib: usize) -> (PathBuf, PathBuf, String) {
    let repo = dir.join("repo");
    let src = dir.join("src");
    for i in 0..mib {
        let f = src.join(format!("d{}/f{i:03}.bin", i % 3));
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, noise(1 << 20, i as u64)).unwrap();
    }
    // Small packs, so that a worker's upload limit paces the backup evenly.
    Cli::at(repo.to_str().unwrap()).ok(&["init", "--pack-size-kib", "1024"]);
    client(server, admin, &["repos", "add", "main", "--location", repo.to_str().unwrap()]);
    client(server, admin, &["sources", "add", "data", "--path", src.to_str().unwrap()]);
    let plan = dir.join("plan.json");
    std::fs::write(&plan, json!({"name": "nightly", "source": "data", "repository": "main"}).to_string()).unwrap();
    client(server, admin, &["plans", "put", plan.to_str().unwrap()]);
    let token = client(server, admin, &["tokens", "create", "workers", "--role", "worker"]);
    (repo, src, token["secret"].as_str().unwrap().to_string())
}

fn run_plan(server: &str, admin: &str) -> String {
    let j = client(server, admin, &["plans", "run", "nightly"]);
    j["id"].as_str().unwrap().to_string()
}

/// The repository checks clean (reading all data) and its latest snapshot restores `src` exactly.
fn verify_repository(repo: &Path, src: &Path, dir: &Path) {
    let cli = Cli::at(&repo.display().to_string());
    cli.check_clean(true);
    let target = dir.join(format!("restored-{}", std::process::id()));
    cli.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_same_tree(src, &target.join(src.strip_prefix("/").unwrap()));
}

#[test]
fn a_worker_killed_mid_backup_is_replaced_after_its_lease_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let args: Vec<String> =
        ["--data-dir", data.to_str().unwrap(), "--workers", "0", "--lease-seconds", "3", "--backoff-seconds", "1"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    let (serve, admin) = Serve::start(free_port(), &args);
    let (server, admin) = (serve.url(), admin.expect("admin token on first start"));
    let (repo, src, worker_token) = setup(&server, &admin, dir.path(), 40);
    let id = run_plan(&server, &admin);

    // 40 MiB at 4 MiB/s: about ten seconds; kill it once it is well under way.
    let mut first = worker(&server, &worker_token, Some("4096"));
    wait_for(&server, &admin, &id, "running with progress", |j| {
        j["state"] == "running" && j["progress"]["bytes_done"].as_u64().unwrap_or(0) > 8 << 20
    });
    kill9(&mut first);

    let mut second = worker(&server, &worker_token, None);
    let done = wait_for(&server, &admin, &id, "finished", |j| j["state"] != "running" && j["state"] != "queued");
    kill9(&mut second);
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["attempt"], 2, "the second attempt finished it: {done}");
    let logs = client(&server, &admin, &["jobs", "logs", &id]);
    let text = logs.to_string();
    assert!(text.contains("lease expired"), "the log says why: {text}");
    verify_repository(&repo, &src, dir.path());
}

#[test]
fn a_coordinator_killed_and_restarted_mid_job_sees_the_job_complete() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let args: Vec<String> = ["--data-dir", data.to_str().unwrap(), "--workers", "0", "--lease-seconds", "20"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let (mut serve, admin) = Serve::start(free_port(), &args);
    let (server, admin) = (serve.url(), admin.unwrap());
    let (repo, src, worker_token) = setup(&server, &admin, dir.path(), 32);
    let id = run_plan(&server, &admin);
    let mut w = worker(&server, &worker_token, Some("4096"));
    wait_for(&server, &admin, &id, "running", |j| j["state"] == "running");

    serve.kill9();
    std::thread::sleep(Duration::from_secs(2));
    serve.restart();
    let done = wait_for(&server, &admin, &id, "finished", |j| j["state"] != "running" && j["state"] != "queued");
    kill9(&mut w);
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["attempt"], 1, "the same attempt finished across the restart: {done}");
    let snaps = client(&server, &admin, &["snapshots", "--server", &server]);
    assert_eq!(snaps.as_array().unwrap().len(), 1, "{snaps}");
    verify_repository(&repo, &src, dir.path());
}

#[test]
fn two_coordinators_on_one_postgresql_serve_one_queue_and_never_hand_a_job_out_twice() {
    let dir = tempfile::tempdir().unwrap();
    let url = backstop_testkit::postgres::Postgres::get().fresh_database();
    let key = dir.path().join("server.key");
    std::fs::write(&key, "ab".repeat(32)).unwrap();
    let args = |name: &str| -> Vec<String> {
        let d = dir.path().join(name);
        [
            "--data-dir",
            d.to_str().unwrap(),
            "--catalog",
            &url,
            "--server-key-file",
            key.to_str().unwrap(),
            "--workers",
            "0",
            "--no-default-repository",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let (a, admin) = Serve::start(free_port(), &args("a"));
    let admin = admin.expect("the first coordinator creates the admin token");
    let (b, second_token) = Serve::start(free_port(), &args("b"));
    assert!(second_token.is_none(), "the second sees the shared catalog's token");
    let (repo, src, worker_token) = setup(&a.url(), &admin, dir.path(), 2);

    // Jobs submitted through both; workers claiming through both.
    let mut ids = Vec::new();
    for i in 0..24 {
        let via = if i % 2 == 0 { a.url() } else { b.url() };
        ids.push(run_plan(&via, &admin));
    }
    let mut workers: Vec<Child> =
        (0..4).map(|i| worker(&if i % 2 == 0 { a.url() } else { b.url() }, &worker_token, None)).collect();
    for (i, id) in ids.iter().enumerate() {
        let via = if i % 3 == 0 { a.url() } else { b.url() };
        let done = wait_for(&via, &admin, id, "finished", |j| {
            j["state"] == "succeeded" || j["state"] == "failed" || j["state"] == "dead"
        });
        assert_eq!(done["state"], "succeeded", "{done}");
        assert_eq!(done["attempt"], 1, "claimed exactly once: {done}");
    }
    for w in &mut workers {
        kill9(w);
    }
    let listed_a = client(&a.url(), &admin, &["jobs", "list", "--limit", "100"]);
    let listed_b = client(&b.url(), &admin, &["jobs", "list", "--limit", "100"]);
    assert_eq!(listed_a, listed_b, "both coordinators serve the same catalog");
    assert_eq!(listed_a.as_array().unwrap().len(), 24);
    verify_repository(&repo, &src, dir.path());
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// `serve` with one in-process worker: `lease` and `backoff` seconds,
/// uploads at `limit` KiB/s.
fn one_worker(data: &Path, lease: &str, backoff: &str, limit: &str) -> Vec<String> {
    let data = data.to_str().unwrap();
    let args = ["--data-dir", data, "--workers", "1", "--lease-seconds", lease, "--backoff-seconds", backoff];
    strings(&[&args[..], &["--limit-upload", limit]].concat())
}

fn finished(j: &Value) -> bool {
    !["queued", "running"].contains(&j["state"].as_str().unwrap_or(""))
}

fn snapshot_files(repo: &Path) -> usize {
    std::fs::read_dir(repo.join("snapshots")).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn serve_limits_its_own_workers_and_a_cancelled_running_backup_stops_without_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // The in-process worker keeps to --limit-upload: 2 MiB at 128 KiB/s
    // would take 16 s, so the cancel finds the backup uploading.
    let args = one_worker(&data, "60", "15", "128");
    let (serve, admin) = Serve::start(free_port(), &args);
    let (server, admin) = (serve.url(), admin.unwrap());
    let (repo, _src, _) = setup(&server, &admin, dir.path(), 2);
    let id = run_plan(&server, &admin);
    wait_for(&server, &admin, &id, "running with progress", |j| {
        j["state"] == "running" && j["progress"]["bytes_done"].as_u64().unwrap_or(0) > 0
    });
    std::thread::sleep(Duration::from_secs(2));
    let running = job(&server, &admin, &id);
    assert_eq!(running["state"], "running", "the upload limit holds the backup back: {running}");

    let asked = Instant::now();
    client(&server, &admin, &["jobs", "cancel", &id]);
    let done = wait_for(&server, &admin, &id, "finished", finished);
    // The cancel reaches the worker with its next heartbeat (within 2 s);
    // the engine stops within its 2 s grace; the poll above adds a client
    // call per 100 ms.
    let took = asked.elapsed();
    assert_eq!(done["state"], "cancelled", "{done}");
    assert!(took < Duration::from_secs(6), "the backup stopped {took:?} after the cancel");
    eprintln!("cancelled after {took:?}");
    assert_eq!(snapshot_files(&repo), 0, "a cancelled backup writes no snapshot");
    let logs = client(&server, &admin, &["jobs", "logs", &id]).to_string();
    assert!(!logs.contains("saved"), "{logs}");
}

#[test]
fn a_restarted_coordinator_requeues_its_killed_workers_jobs_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // A lease far longer than the test: the job must not wait it out.
    let args = one_worker(&data, "120", "60", "512");
    let (mut serve, admin) = Serve::start(free_port(), &args);
    let (server, admin) = (serve.url(), admin.unwrap());
    let (repo, src, _) = setup(&server, &admin, dir.path(), 2);
    let id = run_plan(&server, &admin);
    wait_for(&server, &admin, &id, "running", |j| j["state"] == "running");
    serve.restart();
    let done = wait_for(&server, &admin, &id, "finished", finished);
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["attempt"], 2, "the killed attempt was given out again: {done}");
    let logs = client(&server, &admin, &["jobs", "logs", &id]).to_string();
    assert!(logs.contains("coordinator restarted"), "the log says why: {logs}");
    assert_eq!(snapshot_files(&repo), 1);
    verify_repository(&repo, &src, dir.path());
}

#[test]
fn a_coordinator_killed_around_the_commit_leaves_one_snapshot_per_job() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Slow uploads stretch the moments between the manifest and the
    // report (the job log is written between them).
    let args = one_worker(&data, "30", "1", "32");
    let (mut serve, admin) = Serve::start(free_port(), &args);
    let (server, admin) = (serve.url(), admin.unwrap());
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("seed"), noise(16 << 10, 0)).unwrap();
    let (repo, _, _) = setup(&server, &admin, dir.path(), 0);
    let mut retried = 0;
    let rounds = 4u64;
    for round in 0..rounds {
        std::fs::write(src.join(format!("f{round}")), noise(8 << 10, round + 1)).unwrap();
        let before = snapshot_files(&repo);
        let id = run_plan(&server, &admin);
        // Kill the moment the manifest appears, later each round.
        let deadline = Instant::now() + Duration::from_secs(60);
        while snapshot_files(&repo) == before {
            assert!(Instant::now() < deadline, "round {round}: no manifest appeared");
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(15 * round));
        serve.restart();
        let done = wait_for(&server, &admin, &id, "finished", finished);
        assert_eq!(done["state"], "succeeded", "round {round}: {done}");
        if done["attempt"] == 2 {
            retried += 1;
        }
    }
    assert!(retried > 0, "no kill landed between the manifest and the report");
    let catalog = client(&server, &admin, &["snapshots", "--server", &server]);
    assert_eq!(catalog.as_array().unwrap().len() as u64, rounds, "{catalog}");
    assert_eq!(snapshot_files(&repo) as u64, rounds, "the repository and the catalog agree: one snapshot per job");
}

#[test]
fn an_idle_worker_stops_at_once_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (serve, admin) = Serve::start(free_port(), &strings(&["--data-dir", data.to_str().unwrap(), "--workers", "0"]));
    let (server, admin) = (serve.url(), admin.unwrap());
    let token = client(&server, &admin, &["tokens", "create", "w", "--role", "worker"]);
    let mut w = worker(&server, token["secret"].as_str().unwrap(), None);
    // Well into its first long poll for work.
    std::thread::sleep(Duration::from_secs(3));
    assert!(w.try_wait().unwrap().is_none());
    let asked = Instant::now();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(w.id() as i32, libc::SIGTERM) };
    let status = w.wait().unwrap();
    let took = asked.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_secs(2), "an idle worker took {took:?} to stop");
}

#[test]
fn the_client_explains_itself_when_it_cannot_connect_or_authenticate() {
    let out = bin().args(["jobs", "list"]).env_remove("BACKSTOP_SERVER").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("BACKSTOP_SERVER"));
    let out = bin()
        .args(["jobs", "list"])
        .env("BACKSTOP_SERVER", format!("http://127.0.0.1:{}", free_port()))
        .env("BACKSTOP_TOKEN", "bst_x")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach"), "{}", String::from_utf8_lossy(&out.stderr));
}
