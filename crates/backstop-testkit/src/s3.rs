//! The S3-protocol server of the tests and the benchmarks: `s3s-fs` behind
//! SigV4, counting every request it answers ([`S3Stats`]) and, when asked,
//! holding each answer back as a distant object store would.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::{Body as _, Incoming};
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, RANGE};
use hyper::{Method, Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::{S3Service, S3ServiceBuilder};

use crate::server;

pub const ACCESS_KEY: &str = "backstop-test-key";
pub const SECRET_KEY: &str = "backstop-test-secret";
pub const REGION: &str = "us-east-1";

/// The path, outside every bucket (no bucket name holds `_`), where the
/// server reports its [`S3Stats`] as JSON; `/_stats/reset` reports them
/// and starts counting afresh. For the benchmark's own server, which runs
/// in another process.
pub const STATS_PATH: &str = "/_stats";

/// How an [`S3Server`] runs.
#[derive(Clone, Debug)]
pub struct S3ServerOptions {
    /// Buckets to create (empty) unless they exist.
    pub buckets: Vec<String>,
    pub access_key: String,
    pub secret_key: String,
    /// Where the buckets are kept, one directory each; a temporary
    /// directory, removed with the server, if unset.
    pub root: Option<PathBuf>,
    /// The port on 127.0.0.1; 0 takes a free one.
    pub port: u16,
    /// How long each request waits before it is served.
    pub latency: Duration,
    /// Print a line for every request on standard error: when it arrived
    /// (ms since the server started), how long it took (ms, the delay
    /// included), its operation, path and query. For finding the round
    /// trips a step waits on, one after another.
    pub trace: bool,
}

impl S3ServerOptions {
    /// The test credentials, a temporary directory, a free port, no delay.
    pub fn new(buckets: &[&str]) -> S3ServerOptions {
        S3ServerOptions {
            buckets: buckets.iter().map(|b| b.to_string()).collect(),
            access_key: ACCESS_KEY.into(),
            secret_key: SECRET_KEY.into(),
            root: None,
            port: 0,
            latency: Duration::ZERO,
            trace: false,
        }
    }
}

/// What the server was asked since it started (or since the last reset).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct S3Stats {
    /// Requests by operation: `GET` (a whole object), `GET range`, `HEAD`,
    /// `PUT`, `LIST`, `DELETE`, `POST` (multipart uploads, batch deletes).
    pub requests: BTreeMap<String, u64>,
    /// Bytes of request bodies (uploads).
    pub bytes_in: u64,
    /// Bytes of response bodies (downloads, listings).
    pub bytes_out: u64,
    /// The most requests the server was serving at one time.
    pub max_in_flight: u64,
}

impl S3Stats {
    /// Requests of every operation.
    pub fn total(&self) -> u64 {
        self.requests.values().sum()
    }

    /// Requests of operation `op` (as named in [`requests`](S3Stats::requests)).
    pub fn count(&self, op: &str) -> u64 {
        self.requests.get(op).copied().unwrap_or(0)
    }
}

#[derive(Default)]
struct Counter {
    stats: Mutex<S3Stats>,
    in_flight: AtomicU64,
}

impl Counter {
    fn stats(&self) -> std::sync::MutexGuard<'_, S3Stats> {
        self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Count a request's arrival; the guard counts it out however it ends.
    fn arrive(&self, op: &'static str, bytes_in: u64) -> InFlight<'_> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        let mut stats = self.stats();
        *stats.requests.entry(op.to_string()).or_default() += 1;
        stats.bytes_in += bytes_in;
        stats.max_in_flight = stats.max_in_flight.max(now);
        InFlight(self)
    }
}

struct InFlight<'a>(&'a Counter);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The operation a request asks for, by the path-style addressing every
/// client here uses (`/bucket/key`).
fn operation<B>(req: &Request<B>) -> &'static str {
    let path = req.uri().path().trim_start_matches('/');
    let names_object = path.split_once('/').is_some_and(|(_, key)| !key.is_empty());
    match *req.method() {
        Method::GET if !names_object => "LIST",
        Method::GET if req.headers().contains_key(RANGE) => "GET range",
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::POST => "POST",
        _ => "other",
    }
}

fn content_length(headers: &hyper::HeaderMap) -> Option<u64> {
    headers.get(CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

fn stats_response(counter: &Counter, reset: bool) -> Response<s3s::Body> {
    let mut stats = counter.stats();
    let json = serde_json::to_string(&*stats).expect("stats serialise");
    if reset {
        *stats = S3Stats::default();
    }
    let mut response = Response::new(s3s::Body::from(json));
    response.headers_mut().insert(CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    response
}

/// The bytes a successful GET of an object answered with, read from the
/// object's file in one piece. s3s-fs streams them in 4 KiB reads, each a
/// blocking task: on the 2-core machines here that cost ~5 s of CPU per
/// GiB, as much as a whole restore, and every client alike. `None` leaves
/// the answer as it was (a key this cannot map to a file, say).
async fn object_body(root: &Path, path: &str, headers: &hyper::HeaderMap) -> Option<Vec<u8>> {
    let (bucket, key) = path.trim_start_matches('/').split_once('/')?;
    let plain = |s: &str| !s.is_empty() && s.split('/').all(|c| !c.is_empty() && c != "." && c != "..");
    if path.contains('%') || !plain(bucket) || !plain(key) {
        return None;
    }
    let len = content_length(headers)?;
    let start = match headers.get(hyper::header::CONTENT_RANGE) {
        // bytes FIRST-LAST/TOTAL
        Some(range) => range.to_str().ok()?.strip_prefix("bytes ")?.split_once('-')?.0.parse().ok()?,
        None => 0,
    };
    let file = root.join(bucket).join(key);
    tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0; usize::try_from(len).ok()?];
        std::fs::File::open(file).ok()?.read_exact_at(&mut buf, start).ok()?;
        Some(buf)
    })
    .await
    .ok()?
}

/// How each request is served, beyond what s3s-fs does.
#[derive(Clone, Copy)]
struct Serving {
    latency: Duration,
    /// When the server started, if every request is traced.
    trace: Option<std::time::Instant>,
}

async fn serve(
    service: S3Service,
    counter: Arc<Counter>,
    root: Arc<PathBuf>,
    serving: Serving,
    req: Request<Incoming>,
) -> Result<Response<s3s::Body>, s3s::HttpError> {
    let arrived = std::time::Instant::now();
    let path = req.uri().path().to_string();
    let query = serving.trace.and(req.uri().query()).map(|q| format!("?{q}")).unwrap_or_default();
    if path == STATS_PATH || path == format!("{STATS_PATH}/reset") {
        return Ok(stats_response(&counter, path != STATS_PATH));
    }
    let op = operation(&req);
    let _in_flight = counter.arrive(op, content_length(req.headers()).unwrap_or(0));
    if !serving.latency.is_zero() {
        tokio::time::sleep(serving.latency).await;
    }
    let mut response = service.call(req.map(s3s::Body::from)).await?;
    if op.starts_with("GET")
        && response.status().is_success()
        && let Some(body) = object_body(&root, &path, response.headers()).await
    {
        *response.body_mut() = s3s::Body::from(body);
    }
    let bytes_out = content_length(response.headers()).or_else(|| response.body().size_hint().exact()).unwrap_or(0);
    counter.stats().bytes_out += bytes_out;
    if let Some(started) = serving.trace {
        let (at, took) = (arrived - started, arrived.elapsed());
        eprintln!("{:.1} {:.1} {op} {path}{query}", at.as_secs_f64() * 1e3, took.as_secs_f64() * 1e3);
    }
    Ok(response)
}

pub struct S3Server {
    addr: SocketAddr,
    root: PathBuf,
    _dir: Option<tempfile::TempDir>,
    counter: Arc<Counter>,
    keys: (String, String),
    _server: server::ServerThread,
}

impl S3Server {
    /// Start a server with the given buckets (created empty).
    pub fn start(buckets: &[&str]) -> S3Server {
        S3Server::start_with(S3ServerOptions::new(buckets))
    }

    /// [`start`](S3Server::start) with these credentials instead of the
    /// usual test ones.
    pub fn start_with_keys(buckets: &[&str], access_key: &str, secret_key: &str) -> S3Server {
        S3Server::start_with(S3ServerOptions {
            access_key: access_key.into(),
            secret_key: secret_key.into(),
            ..S3ServerOptions::new(buckets)
        })
    }

    /// Start a server as `options` say. Panics if it cannot.
    pub fn start_with(options: S3ServerOptions) -> S3Server {
        S3Server::try_start(options).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Start a server as `options` say, or say why it cannot start.
    pub fn try_start(options: S3ServerOptions) -> Result<S3Server, String> {
        let (root, dir) = match options.root {
            Some(root) => (root, None),
            None => {
                let dir = tempfile::tempdir().map_err(|e| format!("cannot create the S3 server's directory: {e}"))?;
                (dir.path().to_path_buf(), Some(dir))
            }
        };
        for bucket in &options.buckets {
            let path = root.join(bucket);
            std::fs::create_dir_all(&path).map_err(|e| format!("cannot create bucket {}: {e}", path.display()))?;
        }
        if !root.is_dir() {
            return Err(format!("{} is not a directory", root.display()));
        }
        let counter = Arc::new(Counter::default());
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (served, port) = (root.clone(), options.port);
        let serving = Serving { latency: options.latency, trace: options.trace.then(std::time::Instant::now) };
        let keys = (options.access_key, options.secret_key);
        let (access_key, secret_key) = keys.clone();
        let counted = counter.clone();
        let objects = Arc::new(root.clone());
        let server = server::ServerThread::spawn("s3-test-server", move |mut shutdown_rx| {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("start the S3 server runtime");
            runtime.block_on(async move {
                let fs = match s3s_fs::FileSystem::new(&served) {
                    Ok(fs) => fs,
                    Err(e) => {
                        let _ = addr_tx.send(Err(format!("cannot serve {}: {e:?}", served.display())));
                        return;
                    }
                };
                let mut builder = S3ServiceBuilder::new(fs);
                builder.set_auth(SimpleAuth::from_single(access_key, secret_key));
                let service = builder.build();
                let listener = match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
                    Ok(listener) => listener,
                    Err(e) => {
                        let _ = addr_tx.send(Err(format!("cannot listen on 127.0.0.1:{port}: {e}")));
                        return;
                    }
                };
                let _ = addr_tx.send(listener.local_addr().map_err(|e| format!("no local address: {e}")));
                let http = ConnBuilder::new(TokioExecutor::new());
                loop {
                    tokio::select! {
                        accepted = listener.accept() => {
                            let Ok((socket, _)) = accepted else { continue };
                            // As object stores do: without it, a small answer
                            // waits for the client's delayed ACK (~40 ms).
                            let _ = socket.set_nodelay(true);
                            let (service, counter, http) = (service.clone(), counted.clone(), http.clone());
                            let root = objects.clone();
                            let handler = hyper::service::service_fn(move |req| {
                                serve(service.clone(), counter.clone(), root.clone(), serving, req)
                            });
                            tokio::spawn(async move {
                                let _ = http.serve_connection(TokioIo::new(socket), handler).await;
                            });
                        }
                        _ = &mut shutdown_rx => break,
                    }
                }
            });
        });
        let addr = addr_rx.recv().map_err(|_| "the S3 server failed to start".to_string())??;
        Ok(S3Server { addr, root, _dir: dir, counter, keys, _server: server })
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The directory holding the buckets (one subdirectory each), for tests
    /// that damage objects behind the server's back.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// What the server was asked so far.
    pub fn stats(&self) -> S3Stats {
        self.counter.stats().clone()
    }

    /// What the server was asked so far; counting starts afresh.
    pub fn take_stats(&self) -> S3Stats {
        std::mem::take(&mut *self.counter.stats())
    }

    /// Environment variables that point an S3 client at this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ACCESS_KEY_ID", self.keys.0.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.keys.1.clone()),
            ("AWS_REGION", REGION.to_string()),
            ("AWS_ALLOW_HTTP", "true".to_string()),
        ]
    }
}
