//! The coordinator (`backstop serve`): the HTTP API under `/api/v1`, token
//! authentication with roles and tenants, the scheduler and the reaper,
//! a pool of in-process workers, Prometheus metrics and webhooks.
//!
//! [`start`] builds everything from a [`ServerConfig`] and returns a
//! [`Running`] server; [`state::AppState`] is what handlers share: the
//! catalog, a notifier that wakes long-polling claims, metrics and
//! webhooks. Every route is declared once, in [`router::routes`], which
//! also feeds the OpenAPI document. The data directory holds the SQLite
//! catalog, the server key that seals secrets, and the default local
//! repository; nothing else is needed for a working service.
//!
//! Modules: `router` (the route table), `handlers` (one module per
//! resource), `auth` (tokens, roles, scopes), `extract` (JSON and query
//! extractors with the API's error body), `error` (`ApiError` by
//! `ErrorCode`), `reach` (the early check of what a request would reach),
//! `state` (shared state, scheduler and reaper loops), `inproc` (the
//! in-process workers' coordinator), `serve` (connections, limits, TLS
//! through `tls`), `metrics`, `webhooks`, `openapi`, and `ui`: the web UI on
//! the same port, whose pages call the API's handlers as the session's token.

pub mod auth;
pub mod error;
pub mod extract;
pub mod handlers;
pub mod inproc;
pub mod metrics;
pub mod openapi;
pub mod reach;
pub mod router;
pub mod serve;
pub mod state;
pub mod tls;
pub mod ui;
pub mod webhooks;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use backstop_catalog::resources::{SYSTEM_TENANT, Scope};
use backstop_catalog::{Catalog, QueueConfig, SecretKey, now_ms};
use backstop_repo::CancelToken;
use backstop_types::{RepositorySpec, Role};

use crate::state::AppState;

/// How to run the coordinator.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// `sqlite://…` or `postgres://…`; default: SQLite in the data directory.
    pub catalog: Option<String>,
    /// The key that seals secrets; default: `server.key` in the data
    /// directory, created on first start. Coordinators sharing a catalog
    /// must share it.
    pub server_key_file: Option<PathBuf>,
    pub tls: Option<(PathBuf, PathBuf)>,
    /// In-process workers (0: only remote ones).
    pub workers: usize,
    /// Backend settings of the in-process workers (bandwidth limits,
    /// connections, S3 defaults), as `backstop worker` takes them.
    pub worker_open_options: backstop_backend::OpenOptions,
    /// Where the in-process workers keep the repositories' local caches
    /// (default: `cache/` in the data directory; `None`: no cache).
    pub worker_cache_dir: Option<PathBuf>,
    /// Region of the in-process workers and of the default repository.
    pub region: String,
    pub queue: QueueConfig,
    /// URLs notified (POST, JSON) when a job fails or dies.
    pub webhooks: Vec<String>,
    /// The key webhook posts are signed with (`X-Backstop-Signature`).
    pub webhook_secret: Option<webhooks::WebhookSecret>,
    /// Serve `/metrics` without a token.
    pub metrics_public: bool,
    /// Create the `local` repository in the data directory on first start.
    pub default_repository: bool,
    /// How often the scheduler and the reaper look.
    pub tick: Duration,
    /// What clients may hold: connections, header and idle timeouts.
    pub limits: serve::Limits,
    /// Directories under which each non-system tenant may use local paths
    /// (`<root>/<tenant>/…`) for sources, restore targets and repositories.
    /// Without any, such tenants may use none: workers run with the
    /// service's privileges.
    pub tenant_roots: Vec<PathBuf>,
}

impl ServerConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> ServerConfig {
        let data_dir: PathBuf = data_dir.into();
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            worker_cache_dir: Some(data_dir.join("cache")),
            data_dir,
            catalog: None,
            server_key_file: None,
            tls: None,
            workers: 2,
            worker_open_options: backstop_backend::OpenOptions::default(),
            region: "default".into(),
            queue: QueueConfig::default(),
            webhooks: Vec::new(),
            webhook_secret: None,
            metrics_public: false,
            default_repository: true,
            tick: Duration::from_secs(1),
            limits: serve::Limits::default(),
            tenant_roots: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Catalog(#[from] backstop_catalog::Error),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> StartError {
    let what = what.into();
    move |source| StartError::Io { what, source }
}

/// A started coordinator.
pub struct Running {
    pub addr: SocketAddr,
    /// The admin token, when this start created it: the first start, or a
    /// start that found no live admin token.
    pub admin_token: Option<String>,
    pub state: AppState,
    stop: CancelToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stop serving; in-process jobs are interrupted (they are retried).
    pub async fn shutdown(self) {
        self.stop.cancel();
        self.state.notify.notify_waiters();
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(30), t).await;
        }
        self.state.catalog.close().await;
    }
}

fn load_or_create_key(path: &Path) -> Result<SecretKey, StartError> {
    match std::fs::read_to_string(path) {
        Ok(text) => SecretKey::from_hex(&text).map_err(|e| {
            StartError::Config(format!("{}: {e}; restore the key file from your backup of the server", path.display()))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = SecretKey::generate();
            write_private(path, key.to_hex().as_bytes())?;
            Ok(key)
        }
        Err(e) => Err(io(format!("reading {}", path.display()))(e)),
    }
}

/// Make an existing file readable by its owner only.
fn set_private(path: &Path) -> Result<(), StartError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(io(format!("making {} private", path.display())))
}

/// Write a file only its owner can read.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), StartError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io(format!("creating {}", path.display())))?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(io(format!("writing {}", path.display())))
}

/// `n` random bytes in hex.
pub(crate) fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    getrandom::fill(&mut bytes).expect("the OS random number generator works");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Open (and on first start, create) the data directory, the server key
/// and the catalog; the files that hold secrets are the owner's only.
async fn open_catalog(config: &ServerConfig) -> Result<Catalog, StartError> {
    std::fs::create_dir_all(&config.data_dir).map_err(io(format!("creating {}", config.data_dir.display())))?;
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&config.data_dir, std::fs::Permissions::from_mode(0o700));
    }
    let key_file = config.server_key_file.clone().unwrap_or_else(|| config.data_dir.join("server.key"));
    let key = load_or_create_key(&key_file)?;
    let url =
        config.catalog.clone().unwrap_or_else(|| format!("sqlite://{}", config.data_dir.join("catalog.db").display()));
    let catalog = Catalog::connect(&url, key, config.queue.clone()).await?;
    if config.catalog.is_none() {
        // The catalog holds sealed secrets and token hashes.
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let path = config.data_dir.join(format!("catalog.db{suffix}"));
            if path.exists() {
                set_private(&path)?;
            }
        }
    }
    if config.server_key_file.is_none() {
        set_private(&key_file)?;
    }
    catalog.ensure_tenant(SYSTEM_TENANT, "System", now_ms()).await?;
    Ok(catalog)
}

/// A new admin token of the system tenant, audited; its secret.
async fn create_admin_token(catalog: &Catalog, why: serde_json::Value) -> Result<String, StartError> {
    let now = now_ms();
    let token = catalog.create_token(SYSTEM_TENANT, "admin", Role::Admin, now).await?;
    let mut detail = serde_json::json!({"role": "admin"});
    if let (Some(d), Some(w)) = (detail.as_object_mut(), why.as_object()) {
        d.extend(w.clone());
    }
    catalog.audit(SYSTEM_TENANT, "system", "token.create", &format!("token/{}", token.token.id), detail, now).await?;
    // Printed once, to whoever starts the service.
    Ok(token.secret.into_exposed())
}

/// `backstop serve --new-admin-token`: a fresh admin token for whoever owns
/// the data directory (and so the server key and the catalog), also while
/// the service runs.
pub async fn new_admin_token(config: &ServerConfig) -> Result<String, StartError> {
    let catalog = open_catalog(config).await?;
    let token = create_admin_token(&catalog, serde_json::json!({"new_admin_token": true})).await;
    catalog.close().await;
    token
}

/// Start the coordinator: open (and on first start, create) the data
/// directory and catalog, bind the listener, start the scheduler, the
/// reaper and the in-process workers.
pub async fn start(config: ServerConfig) -> Result<Running, StartError> {
    let catalog = open_catalog(&config).await?;
    // First start, or a start that finds no live admin token: make one.
    let now = now_ms();
    let admin_token = if catalog.count_live_admins().await? == 0 {
        Some(create_admin_token(&catalog, serde_json::json!({"first_start": true})).await?)
    } else {
        None
    };
    let scope = Scope::All;
    if config.default_repository && catalog.repository(&scope, "local").await.is_err() {
        let location = config.data_dir.join("repository");
        let password = random_hex(24);
        let loc = location.display().to_string();
        let pw = password.clone();
        tokio::task::spawn_blocking(move || init_repository(&loc, &pw))
            .await
            .map_err(|e| StartError::Config(format!("creating the local repository: {e}")))??;
        let spec = RepositorySpec {
            name: "local".into(),
            location: location.display().to_string(),
            region: config.region.clone(),
            password: password.into(),
            options: vec![],
            max_concurrent: None,
            init: false,
        };
        let repo = catalog.create_repository(&scope, &spec, now).await?;
        catalog
            .audit(
                SYSTEM_TENANT,
                "system",
                "repository.create",
                &format!("repository/{}", repo.name),
                serde_json::json!({"location": repo.location}),
                now,
            )
            .await?;
    }

    // Jobs an earlier, killed incarnation was running in its own workers
    // are given out again now, not after their leases.
    let reclaimed = inproc::reclaim_dead_pools(&catalog).await?;
    if !reclaimed.is_empty() {
        eprintln!(
            "backstop serve: {} job(s) of this coordinator's killed predecessor requeued at once: {}",
            reclaimed.len(),
            reclaimed.join(", ")
        );
    }

    let listener =
        tokio::net::TcpListener::bind(config.listen).await.map_err(io(format!("listening on {}", config.listen)))?;
    let addr = listener.local_addr().map_err(io("reading the listening address"))?;
    let state = AppState::new(catalog, &config, addr);
    let stop = CancelToken::new();
    let app = router::router(state.clone());
    let mut tasks = Vec::new();
    let tls = match &config.tls {
        Some((cert, key)) => Some(tls::acceptor(cert, key)?),
        None => None,
    };
    tasks.push(tokio::spawn(serve::serve(listener, tls, app, config.limits.clone(), stop.clone())));
    tasks.push(tokio::spawn(state::scheduler_loop(state.clone(), config.tick, stop.clone())));
    tasks.push(tokio::spawn(state::reaper_loop(state.clone(), config.tick, stop.clone())));
    if config.workers > 0 {
        let coordinator = Arc::new(inproc::InProcess::new(state.clone(), stop.clone()));
        let mut wc = backstop_worker::WorkerConfig::new(&config.region, config.workers);
        wc.name = inproc::pool_name();
        wc.poll_wait = Duration::from_secs(5);
        wc.open_options = config.worker_open_options.clone();
        wc.cache_dir = config.worker_cache_dir.clone();
        tasks.push(tokio::spawn(backstop_worker::run(coordinator, wc, stop.clone())));
    }
    Ok(Running { addr, admin_token, state, stop, tasks })
}

/// Create a repository at `location` if there is none.
fn init_repository(location: &str, password: &str) -> Result<(), StartError> {
    use backstop_repo::{InitOptions, Password, Repository};
    let backend = backstop_backend::open(location, &Default::default())
        .map_err(|e| StartError::Config(format!("the local repository {location}: {e}")))?;
    match Repository::init(backend, &Password::new(password), InitOptions::default()) {
        Ok(_) => Ok(()),
        Err(e) => Err(StartError::Config(format!(
            "cannot create the local repository at {location}: {e} (move it away, or start with \
             --no-default-repository)"
        ))),
    }
}
