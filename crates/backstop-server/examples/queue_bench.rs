//! The job queue under load, through a real `backstop serve` process:
//!
//!   queue_bench BACKSTOP_BIN CATALOG_URL|sqlite [JOBS] [CLAIMERS]
//!
//! 1. Enqueues JOBS (default 10,000) jobs through the API (`plans run`).
//! 2. CLAIMERS (default 8) HTTP workers claim and complete them as fast as
//!    they can: claims per second, and the coordinator's CPU per job
//!    (from /proc, for the serve process only).
//! 3. With the claimers idle in long-polls, enqueues 200 jobs one at a time
//!    and measures enqueue → claim latency.
//!
//! Prints one JSON object. `bench/queue.sh` runs it for SQLite and
//! PostgreSQL and writes the table into bench/RESULTS.md.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: queue_bench BACKSTOP_BIN CATALOG_URL|sqlite [JOBS] [CLAIMERS]");
        std::process::exit(2);
    }
    let bin = &args[1];
    let jobs: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let claimers: usize = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(8);
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut cmd = Command::new(bin);
    cmd.arg("--quiet").arg("serve").arg("--data-dir").arg(dir.path().join("data"));
    cmd.args(["--listen", &format!("127.0.0.1:{port}"), "--workers", "0", "--no-default-repository"]);
    if args[2] != "sqlite" {
        cmd.args(["--catalog", &args[2]]);
    }
    let mut serve = cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("start backstop serve");
    let pid = serve.id();
    let mut token = String::new();
    for line in BufReader::new(serve.stdout.take().unwrap()).lines().map_while(Result::ok) {
        if let Some(t) = line.split_whitespace().find(|w| w.starts_with("bst_")) {
            token = t.to_string();
            break;
        }
    }
    assert!(!token.is_empty(), "serve printed no admin token (use a fresh catalog)");
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder().pool_max_idle_per_host(64).build().unwrap();
    let post = move |path: String, body: Value, token: String| {
        let (http, base) = (http.clone(), base.clone());
        async move {
            let r = http.post(format!("{base}{path}")).bearer_auth(token).json(&body).send().await.unwrap();
            let status = r.status();
            let text = r.text().await.unwrap();
            (status.as_u16(), serde_json::from_str::<Value>(&text).unwrap_or(Value::Null))
        }
    };
    // Wait for the API, then set up a repository (never opened: the
    // claimers only claim and complete), a source and a plan.
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let repo = json!({"name": "bench", "location": dir.path().join("repo").display().to_string(), "password": "x", "max_concurrent": 100000});
    assert_eq!(post("/api/v1/repositories".into(), repo, token.clone()).await.0, 201);
    let source = json!({"name": "src", "kind": "fs", "config": {"paths": ["/nonexistent"]}});
    assert_eq!(post("/api/v1/sources".into(), source, token.clone()).await.0, 201);
    let plan = json!({"name": "p", "source": "src", "repository": "bench", "max_attempts": 1});
    assert_eq!(post("/api/v1/plans".into(), plan, token.clone()).await.0, 200);
    let (_, w) = post("/api/v1/tokens".into(), json!({"name": "w", "role": "worker"}), token.clone()).await;
    let worker = w["secret"].as_str().unwrap().to_string();

    // 1. Enqueue.
    let t = Instant::now();
    let cpu0 = cpu_seconds(pid);
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (next, token, post) = (next.clone(), token.clone(), post.clone());
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < jobs as u64 {
                let (s, _) = post("/api/v1/plans/p/run".into(), json!({}), token.clone()).await;
                assert_eq!(s, 201);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let enqueue_s = t.elapsed().as_secs_f64();
    let enqueue_cpu = cpu_seconds(pid) - cpu0;

    // 2. Claim and complete everything.
    let t = Instant::now();
    let cpu0 = cpu_seconds(pid);
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in 0..claimers {
        let (done, worker, post) = (done.clone(), worker.clone(), post.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let req = json!({"worker": format!("bench-{c}"), "region": "default", "wait_seconds": 0});
                let (s, claim) = post("/api/v1/worker/claim".into(), req, worker.clone()).await;
                if s == 204 {
                    return;
                }
                let id = claim["job"]["id"].as_str().unwrap().to_string();
                let attempt = claim["attempt"].as_u64().unwrap();
                let c = json!({"attempt": attempt, "outcome": "succeeded", "result": {}});
                let (s, _) = post(format!("/api/v1/worker/jobs/{id}/complete"), c, worker.clone()).await;
                assert_eq!(s, 200);
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let claim_s = t.elapsed().as_secs_f64();
    let claim_cpu = cpu_seconds(pid) - cpu0;
    let completed = done.load(Ordering::Relaxed);

    // 3. Latency: idle long-polling claimers, jobs arriving one at a time.
    let latencies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in 0..claimers {
        let (latencies, stop, worker, post) = (latencies.clone(), stop.clone(), worker.clone(), post.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let req = json!({"worker": format!("idle-{c}"), "region": "default", "wait_seconds": 2});
                let (s, claim) = post("/api/v1/worker/claim".into(), req, worker.clone()).await;
                if s == 204 {
                    continue;
                }
                let created = chrono::DateTime::parse_from_rfc3339(claim["job"]["created"].as_str().unwrap()).unwrap();
                let started = chrono::DateTime::parse_from_rfc3339(claim["job"]["started"].as_str().unwrap()).unwrap();
                latencies.lock().unwrap().push((started - created).num_microseconds().unwrap() as f64 / 1000.0);
                let id = claim["job"]["id"].as_str().unwrap().to_string();
                let c = json!({"attempt": claim["attempt"], "outcome": "succeeded", "result": {}});
                post(format!("/api/v1/worker/jobs/{id}/complete"), c, worker.clone()).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..200 {
        post("/api/v1/plans/p/run".into(), json!({}), token.clone()).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while latencies.lock().unwrap().len() < 200 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let mut lat = latencies.lock().unwrap().clone();
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let _ = serve.kill();
    let _ = serve.wait();

    println!(
        "{}",
        json!({
            "catalog": if args[2] == "sqlite" { "sqlite" } else { "postgres" },
            "jobs": jobs,
            "claimers": claimers,
            "enqueue_per_s": jobs as f64 / enqueue_s,
            "enqueue_cpu_ms_per_job": enqueue_cpu * 1000.0 / jobs as f64,
            "completed": completed,
            "claims_per_s": completed as f64 / claim_s,
            "claim_cpu_ms_per_job": claim_cpu * 1000.0 / completed.max(1) as f64,
            "latency_ms_p50": percentile(&lat, 0.5),
            "latency_ms_p99": percentile(&lat, 0.99),
            "latency_samples": lat.len(),
        })
    );
}
