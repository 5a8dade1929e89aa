//! The coordinator over HTTP, as `backstop worker` talks to it.

use std::time::Duration;

use backstop_types::{Claim, ClaimRequest, Completion, ErrorBody, Heartbeat, HeartbeatReply, Secret};
use reqwest::StatusCode;

use crate::{CallError, Coordinator};

/// A coordinator at `base` (`https://backstop.example:8080`), authenticated
/// with a worker token.
#[derive(Debug)]
pub struct HttpCoordinator {
    base: String,
    token: Secret<String>,
    client: reqwest::Client,
}

impl HttpCoordinator {
    pub fn new(base: &str, token: &str) -> Result<HttpCoordinator, CallError> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| CallError::Refused(format!("cannot build the HTTP client: {e}")))?;
        Ok(HttpCoordinator { base: base.trim_end_matches('/').to_string(), token: token.into(), client })
    }

    async fn post<B: serde::Serialize, R: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<Option<R>, CallError> {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(self.token.expose())
            .timeout(timeout)
            .json(body)
            .send()
            .await
            .map_err(|e| CallError::Unavailable(format!("{}: {e}", self.base)))?;
        let status = response.status();
        if status == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        if status.is_success() {
            return response
                .json::<R>()
                .await
                .map(Some)
                .map_err(|e| CallError::Unavailable(format!("unreadable answer from {}: {e}", self.base)));
        }
        let message = match response.json::<ErrorBody>().await {
            Ok(body) => body.error.message,
            Err(_) => format!("HTTP {status}"),
        };
        Err(match status {
            StatusCode::CONFLICT | StatusCode::NOT_FOUND => CallError::Stale(message),
            s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => CallError::Unavailable(message),
            _ => CallError::Refused(message),
        })
    }
}

impl Coordinator for HttpCoordinator {
    async fn claim(&self, req: &ClaimRequest) -> Result<Option<Claim>, CallError> {
        let timeout = Duration::from_secs(req.wait_seconds as u64 + 30);
        self.post("/api/v1/worker/claim", req, timeout).await
    }

    async fn heartbeat(&self, job: &str, hb: &Heartbeat) -> Result<HeartbeatReply, CallError> {
        self.post(&format!("/api/v1/worker/jobs/{job}/heartbeat"), hb, Duration::from_secs(30))
            .await?
            .ok_or_else(|| CallError::Unavailable("an empty heartbeat answer".into()))
    }

    async fn complete(&self, job: &str, c: &Completion) -> Result<(), CallError> {
        self.post::<_, serde_json::Value>(&format!("/api/v1/worker/jobs/{job}/complete"), c, Duration::from_secs(60))
            .await
            .map(|_| ())
    }
}
