//! Webhook notifications: when a job fails for good (`failed`, `dead`),
//! every configured URL gets a POST with `{"event": "job.failed" |
//! "job.dead", "job": …}`, with a 10 s timeout and three retries with
//! backoff, in the background. With a secret (`serve
//! --webhook-secret-file`), each post is signed: `X-Backstop-Signature:
//! t=UNIX_SECONDS,v1=HEX`, where HEX is HMAC-SHA256 with the secret over
//! `UNIX_SECONDS.BODY`; a receiver recomputes it, compares in constant time
//! and refuses old timestamps (replays).

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use backstop_types::{Job, JobState, Secret};

/// The key webhook posts are signed with. Never shown.
#[derive(Clone, Debug)]
pub struct WebhookSecret(pub Secret<Vec<u8>>);

/// The signature header's value for `body` sent at `unix` seconds.
pub fn signature(secret: &WebhookSecret, unix: u64, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.0.expose());
    let mut ctx = ring::hmac::Context::with_key(&key);
    ctx.update(unix.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    let tag = ctx.sign();
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("t={unix},v1={hex}")
}

pub struct Webhooks {
    urls: Vec<String>,
    secret: Option<WebhookSecret>,
    client: Option<reqwest::Client>,
    /// Jobs already notified by this process.
    sent: Mutex<HashSet<String>>,
}

impl Webhooks {
    pub fn new(urls: Vec<String>, secret: Option<WebhookSecret>) -> Webhooks {
        let client = (!urls.is_empty())
            .then(|| reqwest::Client::builder().timeout(Duration::from_secs(10)).build().ok())
            .flatten();
        Webhooks { urls, secret, client, sent: Mutex::new(HashSet::new()) }
    }

    /// Whether `job` was not notified yet (and is now marked so).
    pub fn first_notice(&self, job: &str) -> bool {
        self.sent.lock().unwrap_or_else(|e| e.into_inner()).insert(job.to_string())
    }

    pub fn job_failed(&self, job: &Job) {
        let Some(client) = &self.client else { return };
        self.first_notice(&job.id);
        let event = if job.state == JobState::Dead { "job.dead" } else { "job.failed" };
        let body = serde_json::to_vec(&serde_json::json!({"event": event, "job": job})).unwrap_or_default();
        for url in &self.urls {
            let (client, url, body, secret) = (client.clone(), url.clone(), body.clone(), self.secret.clone());
            tokio::spawn(async move {
                let mut delay = Duration::from_secs(1);
                for attempt in 1..=4 {
                    let mut post =
                        client.post(&url).header(reqwest::header::CONTENT_TYPE, "application/json").body(body.clone());
                    if let Some(secret) = &secret {
                        let unix = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map(|d| d.as_secs())
                            .unwrap_or(0);
                        post = post.header("x-backstop-signature", signature(secret, unix, &body));
                    }
                    match post.send().await {
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
