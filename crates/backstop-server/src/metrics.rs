//! Prometheus metrics (`/metrics`, text format 0.0.4): job counts by state
//! and the queue depth from the catalog (so every coordinator reports the
//! same), and this process's own counters: claims, finished jobs with
//! their durations, bytes added, lease expiries, HTTP requests.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use backstop_types::{Job, JobState};

/// The job counts and queue depth alone (what a tenant's token sees).
pub fn render_jobs(counts: &[(JobState, u64)]) -> String {
    let mut out = String::new();
    out.push_str("# HELP backstop_jobs Jobs in the catalog by state.\n# TYPE backstop_jobs gauge\n");
    for s in JobState::ALL {
        let n = counts.iter().find(|(c, _)| *c == s).map(|(_, n)| *n).unwrap_or(0);
        let _ = writeln!(out, "backstop_jobs{{state=\"{}\"}} {n}", s.as_str());
    }
    let queued = counts.iter().find(|(c, _)| *c == JobState::Queued).map(|(_, n)| *n).unwrap_or(0);
    let _ = writeln!(
        out,
        "# HELP backstop_queue_depth Jobs waiting to run.\n# TYPE backstop_queue_depth gauge\nbackstop_queue_depth {queued}"
    );
    out
}

#[derive(Default)]
pub struct Metrics {
    claims: AtomicU64,
    lease_expiries: AtomicU64,
    requests: AtomicU64,
    bytes_added: AtomicU64,
    /// (kind, final state) → (count, seconds summed)
    finished: Mutex<BTreeMap<(String, String), (u64, f64)>>,
}

impl Metrics {
    pub fn claimed(&self) {
        self.claims.fetch_add(1, Ordering::Relaxed);
    }

    pub fn request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    pub fn lease_expired(&self, n: u32) {
        self.lease_expiries.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn finished(&self, job: &Job) {
        let seconds = match (job.started, job.finished) {
            (Some(s), Some(f)) => (f - s).num_milliseconds().max(0) as f64 / 1000.0,
            _ => 0.0,
        };
        if let Some(added) =
            job.result.as_ref().and_then(|r| r.pointer("/summary/bytes_added")).and_then(|v| v.as_u64())
        {
            self.bytes_added.fetch_add(added, Ordering::Relaxed);
        }
        let mut map = self.finished.lock().unwrap_or_else(|e| e.into_inner());
        let e = map.entry((job.kind.as_str().to_string(), job.state.as_str().to_string())).or_default();
        e.0 += 1;
        e.1 += seconds;
    }

    /// The exposition text, with the catalog's job counts.
    pub fn render(&self, counts: &[(JobState, u64)]) -> String {
        let mut out = render_jobs(counts);
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        counter(
            &mut out,
            "backstop_claims_total",
            "Jobs claimed through this coordinator.",
            self.claims.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "backstop_lease_expiries_total",
            "Running jobs whose worker stopped heartbeating.",
            self.lease_expiries.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "backstop_http_requests_total",
            "API requests served.",
            self.requests.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "backstop_bytes_added_total",
            "Bytes new to repositories, from finished backups.",
            self.bytes_added.load(Ordering::Relaxed),
        );
        out.push_str(
            "# HELP backstop_job_duration_seconds Run time of finished jobs.\n# TYPE backstop_job_duration_seconds summary\n",
        );
        let map = self.finished.lock().unwrap_or_else(|e| e.into_inner());
        for ((kind, state), (count, sum)) in map.iter() {
            let _ = writeln!(out, "backstop_job_duration_seconds_count{{kind=\"{kind}\",state=\"{state}\"}} {count}");
            let _ = writeln!(out, "backstop_job_duration_seconds_sum{{kind=\"{kind}\",state=\"{state}\"}} {sum:.3}");
        }
        out
    }
}
