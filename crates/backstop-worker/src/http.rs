//! The coordinator over HTTP, as `backstop worker` talks to it: the API
//! client the CLI uses too ([`backstop_client`]).

use std::time::Duration;

use backstop_client::{ApiClient, CallOptions, ClientError};
use backstop_types::{Claim, ClaimRequest, Completion, Heartbeat, HeartbeatReply, Secret};

use crate::{CallError, Coordinator};

/// A coordinator at `base` (`https://backstop.example:8080`), authenticated
/// with a worker token.
#[derive(Debug)]
pub struct HttpCoordinator {
    api: ApiClient,
}

impl HttpCoordinator {
    pub fn new(base: &str, token: &str) -> Result<HttpCoordinator, CallError> {
        let api = ApiClient::new(base, Secret::new(token.to_string())).map_err(CallError::from)?;
        Ok(HttpCoordinator { api })
    }

    async fn post<B: serde::Serialize, R: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<Option<R>, CallError> {
        let options = CallOptions { timeout: Some(timeout), ..CallOptions::default() };
        let answer: serde_json::Value = self.api.post(path, body, &options).await?;
        if answer.is_null() {
            return Ok(None);
        }
        serde_json::from_value(answer)
            .map(Some)
            .map_err(|e| CallError::Unavailable(format!("unreadable answer from {}: {e}", self.api.base())))
    }
}

impl From<ClientError> for CallError {
    fn from(e: ClientError) -> CallError {
        match &e {
            ClientError::Api { code: Some(code), message, .. } => CallError::from_code(*code, message.clone()),
            _ if e.is_transient() => CallError::Unavailable(e.to_string()),
            // Not the API's answer: a 409 or 404 still means the attempt is gone.
            ClientError::Api { status: 409 | 404, message, .. } => CallError::Stale(message.clone()),
            _ => CallError::Refused(e.to_string()),
        }
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
