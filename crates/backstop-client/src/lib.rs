//! One client of the coordinator's HTTP API (`/api/v1`), for the CLI and
//! the workers alike: one way to send a request with a token, one reading
//! of error bodies into a [`ClientError`] with the API's [`ErrorCode`],
//! one retry policy ([`ApiClient::send`]) and one reader of a job's event
//! stream ([`ApiClient::follow`]).

use std::time::Duration;

use backstop_types::{ErrorBody, ErrorCode, JobEvent, Secret};
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The coordinator could not be reached (or the connection broke).
    #[error("cannot reach {base}: {reason}")]
    Unreachable { base: String, reason: String },
    /// The coordinator answered with an error. `code` is `None` when the
    /// body was not the API's (a proxy's page, say).
    #[error("{message} (HTTP {status})")]
    Api { status: u16, code: Option<ErrorCode>, message: String },
    /// The answer was not what the API promises.
    #[error("unexpected answer from {base}: {reason}")]
    Unreadable { base: String, reason: String },
    /// The request could not be made (a bad address, say).
    #[error("{0}")]
    Request(String),
}

impl ClientError {
    /// The API's code, when the coordinator said one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api { code, .. } => *code,
            _ => None,
        }
    }

    /// Whether the same request may succeed later: the coordinator was out
    /// of reach, busy or failing (a restart, a proxy's 502).
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Unreachable { .. } => true,
            ClientError::Api { code: Some(code), .. } => code.is_transient(),
            ClientError::Api { status, code: None, .. } => *status >= 500 || *status == 429,
            ClientError::Unreadable { .. } | ClientError::Request(_) => false,
        }
    }
}

/// How one request is made.
#[derive(Debug, Clone, Default)]
pub struct CallOptions<'a> {
    /// An `Idempotency-Key`: the request may then be retried as a GET is.
    pub idempotency_key: Option<&'a str>,
    /// The longest the whole request may take (none by default).
    pub timeout: Option<Duration>,
}

/// Attempts of a request that may be repeated (a GET, a DELETE, one with an
/// `Idempotency-Key`) when the coordinator is out of reach or busy.
pub const ATTEMPTS: u32 = 3;
/// The wait before the second attempt; doubled for each next one.
pub const RETRY_AFTER: Duration = Duration::from_millis(500);

/// A coordinator at `base` (`https://backstop.example:8080`), called with
/// a token.
#[derive(Debug, Clone)]
pub struct ApiClient {
    base: String,
    token: Secret<String>,
    http: reqwest::Client,
}

impl ApiClient {
    pub fn new(base: &str, token: Secret<String>) -> Result<ApiClient, ClientError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| ClientError::Request(format!("cannot build the HTTP client: {e}")))?;
        Ok(ApiClient { base: base.trim_end_matches('/').to_string(), token, http })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Send a request; the answer's body (`Null` for none). A request that
    /// may be repeated is, up to [`ATTEMPTS`] times, while the error
    /// [`is_transient`](ClientError::is_transient); any other is sent once
    /// (a worker's calls and a plain POST: their callers decide).
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        options: &CallOptions<'_>,
    ) -> Result<Value, ClientError> {
        let repeatable =
            matches!(method, Method::GET | Method::DELETE | Method::HEAD) || options.idempotency_key.is_some();
        let mut wait = RETRY_AFTER;
        let mut attempt = 1;
        loop {
            match self.send_once(method.clone(), path, body, options).await {
                Err(e) if repeatable && attempt < ATTEMPTS && e.is_transient() => {
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                    attempt += 1;
                }
                done => return done,
            }
        }
    }

    async fn send_once(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        options: &CallOptions<'_>,
    ) -> Result<Value, ClientError> {
        let mut req = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(self.token.expose());
        if let Some(b) = body {
            req = req.json(b);
        }
        if let Some(k) = options.idempotency_key {
            req = req.header("Idempotency-Key", k);
        }
        if let Some(t) = options.timeout {
            req = req.timeout(t);
        }
        let resp = req.send().await.map_err(|e| self.unreachable(e))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| self.unreachable(e))?;
        if status.is_success() {
            if text.is_empty() {
                return Ok(Value::Null);
            }
            return serde_json::from_str(&text)
                .map_err(|e| ClientError::Unreadable { base: self.base.clone(), reason: e.to_string() });
        }
        Err(api_error(status, &text))
    }

    fn unreachable(&self, e: reqwest::Error) -> ClientError {
        if e.is_builder() {
            return ClientError::Request(e.to_string());
        }
        ClientError::Unreachable { base: self.base.clone(), reason: e.to_string() }
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let v = self.send(Method::GET, path, None, &CallOptions::default()).await?;
        self.typed(v)
    }

    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
        options: &CallOptions<'_>,
    ) -> Result<T, ClientError> {
        let body = serde_json::to_value(body).map_err(|e| ClientError::Request(e.to_string()))?;
        let v = self.send(Method::POST, path, Some(&body), options).await?;
        self.typed(v)
    }

    pub async fn delete(&self, path: &str) -> Result<(), ClientError> {
        self.send(Method::DELETE, path, None, &CallOptions::default()).await.map(|_| ())
    }

    fn typed<T: DeserializeOwned>(&self, v: Value) -> Result<T, ClientError> {
        serde_json::from_value(v)
            .map_err(|e| ClientError::Unreadable { base: self.base.clone(), reason: e.to_string() })
    }

    /// Follow a job's event stream (server-sent events) from event id
    /// `after`, calling `each` per event, until the job ends and the
    /// server closes the stream. A broken connection (a restarting
    /// coordinator) is resumed from the last event seen, after `reconnect`
    /// is told why.
    pub async fn follow(
        &self,
        job: &str,
        mut after: i64,
        mut each: impl FnMut(&JobEvent),
        mut reconnect: impl FnMut(&ClientError),
    ) -> Result<(), ClientError> {
        loop {
            let url = format!("{}/api/v1/jobs/{job}/events/stream?after={after}", self.base);
            let mut resp = match self.http.get(&url).bearer_auth(self.token.expose()).send().await {
                Ok(r) if r.status().is_success() => r,
                Ok(r) => {
                    let status = r.status();
                    return Err(api_error(status, &r.text().await.unwrap_or_default()));
                }
                Err(e) => {
                    reconnect(&self.unreachable(e));
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let mut events = EventReader::default();
            loop {
                match resp.chunk().await {
                    Ok(Some(bytes)) => {
                        for e in events.push(&bytes) {
                            after = e.id;
                            each(&e);
                        }
                    }
                    Ok(None) => return Ok(()),
                    Err(e) => {
                        reconnect(&self.unreachable(e));
                        break;
                    }
                }
            }
        }
    }
}

/// An error answer as the API describes it (`{"error": {"code", "message"}}`),
/// or, from something else on the way, its text.
fn api_error(status: StatusCode, text: &str) -> ClientError {
    match serde_json::from_str::<ErrorBody>(text) {
        Ok(body) => {
            ClientError::Api { status: status.as_u16(), code: Some(body.error.code), message: body.error.message }
        }
        Err(_) => {
            let message = if text.trim().is_empty() { status.to_string() } else { text.trim().to_string() };
            ClientError::Api { status: status.as_u16(), code: None, message }
        }
    }
}

/// Server-sent events, as chunks of the stream arrive: each `data:` line
/// of a complete event block that is a [`JobEvent`].
#[derive(Debug, Default)]
struct EventReader {
    buf: String,
}

impl EventReader {
    fn push(&mut self, bytes: &[u8]) -> Vec<JobEvent> {
        self.buf.push_str(&String::from_utf8_lossy(bytes));
        let mut out = Vec::new();
        while let Some(end) = self.buf.find("\n\n") {
            let block: String = self.buf.drain(..end + 2).collect();
            for line in block.lines() {
                if let Some(data) = line.strip_prefix("data:")
                    && let Ok(e) = serde_json::from_str::<JobEvent>(data.trim())
                {
                    out.push(e);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_are_read_once_for_everyone() {
        let stale = api_error(
            StatusCode::CONFLICT,
            r#"{"error": {"code": "stale_attempt", "message": "job j: attempt 1 no longer holds this job"}}"#,
        );
        assert_eq!(stale.code(), Some(ErrorCode::StaleAttempt));
        assert_eq!(stale.to_string(), "job j: attempt 1 no longer holds this job (HTTP 409)");
        assert!(!stale.is_transient());
        let proxy = api_error(StatusCode::BAD_GATEWAY, "<html>bad gateway</html>");
        assert_eq!((proxy.code(), proxy.is_transient()), (None, true));
        let busy =
            api_error(StatusCode::SERVICE_UNAVAILABLE, r#"{"error": {"code": "unavailable", "message": "busy"}}"#);
        assert!(busy.is_transient());
        assert_eq!(api_error(StatusCode::FORBIDDEN, "").to_string(), "403 Forbidden (HTTP 403)");
    }

    #[test]
    fn events_are_read_across_chunks() {
        let event = r#"{"id": 7, "job": "j", "time": "2026-01-01T00:00:00Z", "attempt": 1, "kind": "log", "data": {}}"#;
        let text = format!(": keep-alive\n\nid: 7\ndata: {event}\n\n");
        let (a, b) = text.as_bytes().split_at(30);
        let mut reader = EventReader::default();
        assert!(reader.push(a).is_empty());
        let events = reader.push(b);
        assert_eq!(events.iter().map(|e| e.id).collect::<Vec<_>>(), [7]);
    }

    #[tokio::test]
    async fn a_repeatable_request_is_retried_while_the_coordinator_is_busy() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let answers = [
                (503, r#"{"error": {"code": "unavailable", "message": "busy"}}"#),
                (200, r#"{"ok": true}"#),
                (503, r#"{"error": {"code": "unavailable", "message": "busy"}}"#),
            ];
            for (status, body) in answers {
                let (mut tcp, _) = listener.accept().await.unwrap();
                let mut request = vec![0u8; 4096];
                let _ = tcp.read(&mut request).await.unwrap();
                let answer = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                tcp.write_all(answer.as_bytes()).await.unwrap();
            }
        });
        let client = ApiClient::new(&format!("http://{addr}"), "bst_x".into()).unwrap();
        let got: Value = client.get("/api/v1/jobs").await.unwrap();
        assert_eq!(got["ok"], true, "the GET was sent again after the 503");
        // A POST without a key is sent once: its caller decides.
        let e = client.post::<Value>("/api/v1/jobs", &Value::Null, &CallOptions::default()).await.unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::Unavailable));
        server.await.unwrap();
    }
}
