//! The worker: claim a job from the coordinator, run it with the engine,
//! heartbeat its progress and log lines while it runs, report how it
//! ended. Workers never touch the catalog; they talk to a [`Coordinator`]:
//! over HTTP ([`http::HttpCoordinator`], for `backstop worker`), or
//! directly to the catalog inside `backstop serve` (the server crate's
//! in-process pool), through the same fenced calls.
//!
//! A job runs on a blocking thread ([`run::execute`]); a heartbeat task
//! beside it extends the lease every 2 s (a third of the lease at most). When the coordinator
//! says the job was cancelled, or refuses the heartbeat because the
//! attempt lost its lease, the job's [`CancelToken`] stops the engine;
//! a lost attempt reports nothing (a newer one owns the job).

pub mod http;
pub mod run;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backstop_repo::{CancelToken, Progress};
use backstop_types::{
    Claim, ClaimRequest, Completion, ErrorCode, Heartbeat, HeartbeatReply, JobProgress, LogLevel, LogLine,
};

/// Why a call to the coordinator failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The attempt no longer holds the job (HTTP 409): stop, report nothing.
    #[error("the coordinator refused the attempt: {0}")]
    Stale(String),
    /// The request was refused for good (bad token, bad request).
    #[error("{0}")]
    Refused(String),
    /// The coordinator could not be reached or failed; try again.
    #[error("{0}")]
    Unavailable(String),
}

impl CallError {
    /// What the coordinator's error code means for a worker's call; the
    /// one reading for the HTTP and the in-process coordinator.
    pub fn from_code(code: ErrorCode, message: String) -> CallError {
        match code {
            // The attempt lost its job (lease, cancel, another attempt), or the job is gone.
            ErrorCode::StaleAttempt | ErrorCode::NotFound | ErrorCode::Conflict => CallError::Stale(message),
            c if c.is_transient() => CallError::Unavailable(message),
            _ => CallError::Refused(message),
        }
    }
}

/// What a worker needs from its coordinator.
pub trait Coordinator: Send + Sync + 'static {
    /// The next job for this worker, waiting up to `req.wait_seconds`.
    fn claim(&self, req: &ClaimRequest) -> impl Future<Output = Result<Option<Claim>, CallError>> + Send;
    fn heartbeat(&self, job: &str, hb: &Heartbeat) -> impl Future<Output = Result<HeartbeatReply, CallError>> + Send;
    fn complete(&self, job: &str, c: &Completion) -> impl Future<Output = Result<(), CallError>> + Send;
}

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Worker name, unique per process (`host/pid` by default).
    pub name: String,
    pub region: String,
    /// Jobs run at once.
    pub concurrency: usize,
    /// How long a claim waits for work on the coordinator.
    pub poll_wait: Duration,
    /// Backend settings for every repository this worker opens (bandwidth
    /// limits, connections); a repository's own options (S3 endpoint,
    /// credentials) are added to them.
    pub open_options: backstop_backend::OpenOptions,
    /// Where the local caches of the repositories' metadata are kept (one
    /// directory per repository id; see `backstop_repo::cache`): backups,
    /// restores and maintenance read from it, check and verify never do.
    pub cache_dir: Option<std::path::PathBuf>,
    /// The coordinator's addresses as this worker reaches it: added to
    /// what a confined job may never connect to.
    pub own_addresses: Vec<std::net::SocketAddr>,
}

impl WorkerConfig {
    pub fn new(region: &str, concurrency: usize) -> WorkerConfig {
        WorkerConfig {
            name: format!("{}/{}", backstop_repo::hostname(), std::process::id()),
            region: region.to_string(),
            concurrency: concurrency.max(1),
            poll_wait: Duration::from_secs(20),
            open_options: backstop_backend::OpenOptions::default(),
            cache_dir: None,
            own_addresses: Vec::new(),
        }
    }
}

/// What a running job has done so far, shared by the engine thread (which
/// bumps counters through [`Progress`]) and the heartbeat task.
#[derive(Default)]
pub struct JobTracker {
    files_total: AtomicU64,
    bytes_total: AtomicU64,
    files_done: AtomicU64,
    bytes_done: AtomicU64,
    bytes_new: AtomicU64,
    bytes_reused: AtomicU64,
    pending: Mutex<Vec<LogLine>>,
    /// Every line of the job, for the log written into the repository.
    all: Mutex<Vec<(chrono::DateTime<chrono::Utc>, LogLine)>>,
    pub cancel: CancelToken,
    /// The coordinator refused this attempt: do not report its end.
    lost: AtomicBool,
    /// Log lines that found the pending queue full.
    dropped: AtomicU64,
}

/// A log line is cut at this many bytes.
const MAX_LINE: usize = 4096;
/// Lines per heartbeat.
const MAX_BATCH: usize = 500;
/// Lines waiting for the coordinator (during an outage), beyond which new ones are counted, not kept.
const MAX_PENDING: usize = 5000;
/// Lines kept for the log stored in the repository.
const MAX_KEPT: usize = 20_000;

impl JobTracker {
    pub fn log(&self, level: LogLevel, message: impl Into<String>) {
        let mut message: String = message.into();
        if message.len() > MAX_LINE {
            let mut cut = MAX_LINE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push_str(" …");
        }
        let line = LogLine { level, message };
        {
            let mut all = self.all.lock().unwrap_or_else(|e| e.into_inner());
            if all.len() < MAX_KEPT {
                all.push((chrono::Utc::now(), line.clone()));
            }
        }
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if pending.len() < MAX_PENDING {
            pending.push(line);
        } else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The next batch of log lines for a heartbeat (bounded, so a flood of
    /// warnings never makes a request the coordinator refuses).
    fn take_pending(&self) -> Vec<LogLine> {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let n = pending.len().min(MAX_BATCH);
        let mut batch: Vec<LogLine> = pending.drain(..n).collect();
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            batch.push(LogLine { level: LogLevel::Warning, message: format!("{dropped} more log lines were dropped") });
        }
        batch
    }

    /// Put lines a failed heartbeat did not deliver back in front.
    fn unsend(&self, lines: Vec<LogLine>) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let newer = std::mem::take(&mut *pending);
        *pending = lines;
        pending.extend(newer);
        pending.truncate(MAX_PENDING);
    }

    /// The whole log so far, one JSON object per line.
    pub fn log_text(&self) -> String {
        let all = self.all.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        for (time, line) in all.iter() {
            let v = serde_json::json!({"time": time, "level": line.level, "message": line.message});
            out.push_str(&v.to_string());
            out.push('\n');
        }
        out
    }

    fn progress(&self, rate: u64) -> JobProgress {
        let bytes_done = self.bytes_done.load(Ordering::Relaxed);
        let bytes_total = self.bytes_total.load(Ordering::Relaxed).max(bytes_done);
        let eta_seconds = (rate > 0 && bytes_total > bytes_done).then(|| (bytes_total - bytes_done) / rate);
        JobProgress {
            files_done: self.files_done.load(Ordering::Relaxed),
            files_total: self.files_total.load(Ordering::Relaxed),
            bytes_done,
            bytes_total,
            bytes_new: self.bytes_new.load(Ordering::Relaxed),
            bytes_reused: self.bytes_reused.load(Ordering::Relaxed),
            rate,
            eta_seconds,
        }
    }
}

impl Progress for JobTracker {
    fn total(&self, files: u64, bytes: u64) {
        self.files_total.store(files, Ordering::Relaxed);
        self.bytes_total.store(bytes, Ordering::Relaxed);
    }

    fn advance(&self, files: u64, bytes: u64) {
        self.files_done.fetch_add(files, Ordering::Relaxed);
        self.bytes_done.fetch_add(bytes, Ordering::Relaxed);
    }

    fn stored(&self, new: u64, reused: u64) {
        self.bytes_new.fetch_add(new, Ordering::Relaxed);
        self.bytes_reused.fetch_add(reused, Ordering::Relaxed);
    }

    fn warning(&self, path: &std::path::Path, message: &str) {
        self.log(LogLevel::Warning, format!("{}: {message}", path.display()));
    }

    fn info(&self, message: &str) {
        self.log(LogLevel::Info, message);
    }
}

/// Run the worker until `stop` is cancelled: `concurrency` slots, each
/// claiming and running one job at a time. Coordinator outages are ridden
/// out with backoff; a job in flight keeps running and reports when the
/// coordinator is back.
pub async fn run<C: Coordinator>(coordinator: Arc<C>, config: WorkerConfig, stop: CancelToken) {
    let mut slots = Vec::new();
    for slot in 0..config.concurrency {
        let (coordinator, config, stop) = (coordinator.clone(), config.clone(), stop.clone());
        slots.push(tokio::spawn(async move {
            let req = ClaimRequest {
                worker: format!("{}#{slot}", config.name),
                region: config.region.clone(),
                wait_seconds: config.poll_wait.as_secs() as u32,
            };
            let mut backoff = Duration::from_millis(500);
            while !stop.is_cancelled() {
                // A stop does not wait out the claim's long poll. A job the
                // coordinator handed out just then waits for its lease to
                // expire, as a killed worker's would.
                let claimed = tokio::select! {
                    claimed = coordinator.claim(&req) => claimed,
                    () = stop.cancelled() => break,
                };
                match claimed {
                    Ok(Some(mut claim)) => {
                        backoff = Duration::from_millis(500);
                        if let backstop_types::NetScope::Granted { own, .. } = &mut claim.reach.net {
                            own.extend(config.own_addresses.iter().copied());
                        }
                        execute(coordinator.as_ref(), claim, &config.open_options, config.cache_dir.as_deref()).await;
                    }
                    Ok(None) => backoff = Duration::from_millis(500),
                    Err(e) => {
                        eprintln!(
                            "worker {}: cannot claim work: {e}; retrying in {} s",
                            req.worker,
                            backoff.as_secs_f32()
                        );
                        tokio::select! {
                            () = tokio::time::sleep(backoff) => {}
                            () = stop.cancelled() => break,
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                    }
                }
            }
        }));
    }
    for s in slots {
        let _ = s.await;
    }
}

/// The longest time between a running job's heartbeats.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);

/// Run one claimed job to its end and report it.
pub async fn execute<C: Coordinator>(
    coordinator: &C,
    claim: Claim,
    open: &backstop_backend::OpenOptions,
    cache_dir: Option<&std::path::Path>,
) {
    let tracker = Arc::new(JobTracker::default());
    let job_id = claim.job.id.clone();
    let attempt = claim.attempt;
    // At least three times per lease, and every 2 s at most: cancellation
    // arrives with the reply, and with the engine's grace
    // (`backstop_backend::CANCEL_GRACE`) a cancelled job stops within 5 s.
    let interval =
        Duration::from_millis(claim.lease_seconds.max(1) * 1000 / 3).clamp(Duration::from_millis(200), HEARTBEAT_EVERY);
    let lease = Duration::from_secs(claim.lease_seconds.max(1));
    tracker
        .log(LogLevel::Info, format!("attempt {attempt} of {} on {}", claim.job.kind.as_str(), claim.job.repository));

    let work = {
        let (tracker, open, cache_dir) = (tracker.clone(), open.clone(), cache_dir.map(ToOwned::to_owned));
        tokio::task::spawn_blocking(move || run::execute(&claim, &tracker, &open, cache_dir.as_deref()))
    };
    tokio::pin!(work);
    let mut last_bytes = 0u64;
    let mut last_at = Instant::now();
    // The coordinator gives the job to another worker once our lease runs
    // out: past it, this attempt stops on its own (no double work, no
    // prune beside another prune).
    let mut lease_until = Instant::now() + lease;
    let outcome = loop {
        tokio::select! {
            done = &mut work => break done,
            _ = tokio::time::sleep(interval) => {
                let bytes = tracker.bytes_done.load(Ordering::Relaxed);
                let rate = (bytes.saturating_sub(last_bytes) as f64 / last_at.elapsed().as_secs_f64().max(0.001)) as u64;
                (last_bytes, last_at) = (bytes, Instant::now());
                let hb = Heartbeat { attempt, progress: Some(tracker.progress(rate)), logs: tracker.take_pending() };
                let sent_at = Instant::now();
                match coordinator.heartbeat(&job_id, &hb).await {
                    Ok(reply) => {
                        lease_until = sent_at + lease;
                        if reply.cancel {
                            tracker.cancel.cancel();
                        }
                    }
                    Err(CallError::Stale(_)) => {
                        tracker.lost.store(true, Ordering::Relaxed);
                        tracker.cancel.cancel();
                    }
                    Err(e) => {
                        // Keep the lines for the next heartbeat.
                        tracker.unsend(hb.logs);
                        eprintln!("job {job_id}: heartbeat failed: {e}");
                        if Instant::now() > lease_until {
                            eprintln!("job {job_id}: the lease ran out without a heartbeat; stopping this attempt");
                            tracker.lost.store(true, Ordering::Relaxed);
                            tracker.cancel.cancel();
                        }
                    }
                }
            }
        }
    };
    if tracker.lost.load(Ordering::Relaxed) {
        return;
    }
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => backstop_types::Outcome::Failed { error: format!("the job's thread failed: {e}"), retryable: true },
    };
    let completion = Completion { attempt, outcome, logs: tracker.take_pending() };
    // The coordinator may be restarting: keep trying for a while (the lease
    // and then the reaper decide if we take too long).
    let deadline = Instant::now() + lease * 4;
    let mut backoff = Duration::from_millis(250);
    loop {
        match coordinator.complete(&job_id, &completion).await {
            Ok(()) | Err(CallError::Stale(_)) | Err(CallError::Refused(_)) => return,
            Err(e) if Instant::now() < deadline => {
                eprintln!("job {job_id}: cannot report the result yet: {e}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
            Err(e) => {
                eprintln!("job {job_id}: giving up reporting the result: {e}; the coordinator will retry the job");
                return;
            }
        }
    }
}
