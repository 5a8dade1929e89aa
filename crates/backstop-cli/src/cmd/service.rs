//! `backstop serve` (the coordinator) and `backstop worker` (a regional
//! worker that connects to one).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use backstop_server::ServerConfig;

use crate::global::Context;

#[derive(clap::Args)]
#[command(long_about = "Run the Backstop service: the HTTP API (default http://127.0.0.1:8080/api/v1), the \
scheduler, the job queue and a pool of in-process workers. With no options it keeps everything in one data \
directory: a SQLite catalog, the key that seals stored secrets (server.key: back it up), and a local repository \
named `local`. On the first start it prints an admin token; keep it, it is not shown again.

Point it at PostgreSQL with --catalog postgres://… to run several coordinators on one catalog (they must share \
--server-key-file). Stop it with Ctrl-C or SIGTERM; jobs its own workers were running are retried.")]
pub struct ServeArgs {
    /// Where the catalog, server key and local repository live.
    #[arg(long, env = "BACKSTOP_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,

    /// Address to listen on.
    #[arg(long, env = "BACKSTOP_LISTEN", default_value = "127.0.0.1:8080", value_name = "ADDR")]
    listen: SocketAddr,

    /// Catalog database: sqlite:///path/catalog.db or postgres://user@host/db (default: SQLite in the data directory).
    #[arg(long, env = "BACKSTOP_CATALOG", value_name = "URL")]
    catalog: Option<String>,

    /// File with the 64-hex-digit key that seals secrets in the catalog (default: DIR/server.key, created on first start).
    #[arg(long, env = "BACKSTOP_SERVER_KEY_FILE", value_name = "FILE")]
    server_key_file: Option<PathBuf>,

    /// TLS certificate chain (PEM); with --tls-key, serve HTTPS.
    #[arg(long, requires = "tls_key", value_name = "FILE")]
    tls_cert: Option<PathBuf>,

    /// TLS private key (PEM).
    #[arg(long, requires = "tls_cert", value_name = "FILE")]
    tls_key: Option<PathBuf>,

    /// In-process workers (0: only remote `backstop worker`s run jobs). They
    /// keep to --limit-upload, --limit-download and --connections, as
    /// `backstop worker` does (the limits are shared by all their jobs).
    #[arg(long, default_value_t = 2, value_name = "N")]
    workers: usize,

    /// Region of the in-process workers and of the local repository.
    #[arg(long, default_value = "default", value_name = "REGION")]
    region: String,

    /// POST a JSON notice to URL when a job fails or dies (repeatable).
    #[arg(long = "webhook", value_name = "URL")]
    webhooks: Vec<String>,

    /// Sign webhook posts with the key in FILE: header `X-Backstop-Signature: t=UNIX,v1=HEX`,
    /// HEX the HMAC-SHA256 over `UNIX.BODY`.
    #[arg(long, value_name = "FILE")]
    webhook_secret_file: Option<PathBuf>,

    /// Serve /metrics without a token (by default it needs a viewer token, as a scrape's bearer token).
    #[arg(long)]
    metrics_public: bool,

    /// Do not create the `local` repository in the data directory.
    #[arg(long)]
    no_default_repository: bool,

    /// Jobs that may run at once in one region (default: as many as its workers take).
    #[arg(long, value_name = "N")]
    region_limit: Option<u32>,

    /// Let non-system tenants use local paths under DIR/<tenant>/ for sources, restore targets
    /// and repositories (repeatable); without it they may use S3 repositories only.
    #[arg(long = "tenant-root", value_name = "DIR")]
    tenant_roots: Vec<PathBuf>,

    /// Jobs that may run at once against one source host.
    #[arg(long, default_value_t = 2, value_name = "N")]
    host_limit: u32,

    /// Connections served at once; more are closed as they arrive. A request's head must arrive
    /// within 10 s and a connection on which nothing moves for 90 s is closed, token or not.
    #[arg(long, default_value_t = 1024, value_name = "N")]
    max_connections: usize,

    /// Create a new admin token of the system tenant, print it and exit (for whoever owns the data
    /// directory and lost every admin token; works while the service runs).
    #[arg(long)]
    new_admin_token: bool,

    /// Seconds a claim or heartbeat holds a job (workers heartbeat every third of it).
    #[arg(long, default_value_t = 60, value_name = "SECONDS", hide = true)]
    lease_seconds: u64,

    /// Seconds of the first retry backoff.
    #[arg(long, default_value_t = 15, value_name = "SECONDS", hide = true)]
    backoff_seconds: u64,
}

fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(d).join("backstop");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".local/share/backstop"),
        None => PathBuf::from("/var/lib/backstop"),
    }
}

pub fn serve(ctx: &Context, args: ServeArgs) -> Result<u8> {
    let mut config = ServerConfig::new(args.data_dir.clone().unwrap_or_else(default_data_dir));
    config.listen = args.listen;
    config.catalog = args.catalog.clone();
    config.server_key_file = args.server_key_file.clone();
    config.tls = args.tls_cert.clone().zip(args.tls_key.clone());
    config.workers = args.workers;
    config.worker_open_options = ctx.open_options();
    config.worker_cache_dir = ctx.cache_dir(Some(config.data_dir.join("cache")));
    config.region = args.region.clone();
    config.webhooks = args.webhooks.clone();
    config.metrics_public = args.metrics_public;
    if let Some(file) = &args.webhook_secret_file {
        let secret =
            std::fs::read(file).with_context(|| format!("reading --webhook-secret-file {}", file.display()))?;
        let secret = secret.trim_ascii().to_vec();
        if secret.len() < 16 {
            bail!("the webhook secret in {} is shorter than 16 bytes; use a long random one", file.display());
        }
        config.webhook_secret = Some(backstop_server::webhooks::WebhookSecret(secret.into()));
    }
    config.default_repository = !args.no_default_repository;
    config.queue.lease = Duration::from_secs(args.lease_seconds.max(3));
    config.queue.backoff_base = Duration::from_secs(args.backoff_seconds.max(1));
    config.queue.region_limit = args.region_limit;
    config.tenant_roots = args.tenant_roots.clone();
    config.queue.host_limit = args.host_limit.max(1);
    config.limits.max_connections = args.max_connections.max(1);
    for url in &config.webhooks {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            bail!("--webhook {url:?} is not an http:// or https:// URL");
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    if args.new_admin_token {
        let token = runtime.block_on(backstop_server::new_admin_token(&config))?;
        println!("admin token (shown only now; keep it): {token}");
        return Ok(0);
    }
    runtime.block_on(async {
        let running = backstop_server::start(config.clone()).await?;
        let scheme = if config.tls.is_some() { "https" } else { "http" };
        if !ctx.args.quiet {
            eprintln!("backstop serve: data in {}", config.data_dir.display());
            eprintln!(
                "backstop serve: listening on {scheme}://{}/api/v1 ({} in-process workers)",
                running.addr, config.workers
            );
            eprintln!("backstop serve: web UI on {scheme}://{}/ (log in with a token)", running.addr);
        }
        if let Some(token) = &running.admin_token {
            // Shown once: it is stored only as a hash.
            println!("admin token (shown only now; keep it): {token}");
            println!("  export BACKSTOP_SERVER={scheme}://{} BACKSTOP_TOKEN={token}", running.addr);
        }
        ctx.cancel.cancelled().await;
        if !ctx.args.quiet {
            eprintln!("backstop serve: stopping");
        }
        running.shutdown().await;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(0)
}

#[derive(clap::Args)]
#[command(long_about = "Run a worker that claims jobs of one region from a coordinator (`backstop serve`) over \
HTTP, runs them against the region's repositories, and reports progress, log lines and results. It never \
touches the catalog. It rides out coordinator restarts; a job it was running when killed is retried by \
another worker once its lease expires.")]
pub struct WorkerArgs {
    /// The coordinator's address.
    #[arg(long, env = "BACKSTOP_SERVER", value_name = "URL")]
    server: String,

    /// A worker token (prefer the environment variable: command lines are visible to other users).
    #[arg(long, env = "BACKSTOP_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    token: String,

    #[arg(long, default_value = "default", value_name = "REGION")]
    region: String,

    /// Jobs run at once.
    #[arg(long, default_value_t = 2, value_name = "N")]
    concurrency: usize,
}

/// The addresses `server` (the coordinator's URL) resolves to.
fn coordinator_addresses(server: &str) -> Vec<SocketAddr> {
    use std::net::ToSocketAddrs;
    let Ok(url) = reqwest::Url::parse(server) else { return Vec::new() };
    let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else { return Vec::new() };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (host, port).to_socket_addrs().map(|a| a.collect()).unwrap_or_default()
}

pub fn worker(ctx: &Context, args: WorkerArgs) -> Result<u8> {
    let coordinator = backstop_worker::http::HttpCoordinator::new(&args.server, &args.token)?;
    let mut config = backstop_worker::WorkerConfig::new(&args.region, args.concurrency);
    config.open_options = ctx.open_options();
    config.cache_dir = ctx.cache_dir(backstop_repo::cache::default_base());
    // The coordinator is no tenant's target, as this worker reaches it.
    config.own_addresses = coordinator_addresses(&args.server);
    if !ctx.args.quiet {
        eprintln!(
            "backstop worker {}: region {}, {} slot(s), coordinator {}",
            config.name, args.region, config.concurrency, args.server
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    let stop = ctx.cancel.clone();
    runtime.block_on(backstop_worker::run(Arc::new(coordinator), config, stop));
    Ok(0)
}
