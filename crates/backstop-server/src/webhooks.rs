//! Webhook notifications: when a job fails for good (`failed`, `dead`),
//! every configured URL gets a POST with `{"event": "job.failed" |
//! "job.dead", "job": …}`, with a 10 s timeout and three retries with
//! backoff, in the background.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use backstop_types::{Job, JobState};

pub struct Webhooks {
    urls: Vec<String>,
    client: Option<reqwest::Client>,
    /// Jobs already notified by this process.
    sent: Mutex<HashSet<String>>,
}

impl Webhooks {
    pub fn new(urls: Vec<String>) -> Webhooks {
        let client = (!urls.is_empty())
            .then(|| reqwest::Client::builder().timeout(Duration::from_secs(10)).build().ok())
            .flatten();
        Webhooks { urls, client, sent: Mutex::new(HashSet::new()) }
    }

    /// Whether `job` was not notified yet (and is now marked so).
    pub fn first_notice(&self, job: &str) -> bool {
        self.sent.lock().unwrap_or_else(|e| e.into_inner()).insert(job.to_string())
    }

    pub fn job_failed(&self, job: &Job) {
        let Some(client) = &self.client else { return };
        self.first_notice(&job.id);
        let event = if job.state == JobState::Dead { "job.dead" } else { "job.failed" };
        let body = serde_json::json!({"event": event, "job": job});
        for url in &self.urls {
            let (client, url, body) = (client.clone(), url.clone(), body.clone());
            tokio::spawn(async move {
                let mut delay = Duration::from_secs(1);
                for attempt in 1..=4 {
                    match client.post(&url).json(&body).send().await {
                        Ok(r) if r.status().is_success() => return,
                        Ok(r) => eprintln!("backstop serve: webhook {url}: HTTP {} (attempt {attempt})", r.status()),
                        Err(e) => eprintln!("backstop serve: webhook {url}: {e} (attempt {attempt})"),
                    }
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            });
        }
    }
}
