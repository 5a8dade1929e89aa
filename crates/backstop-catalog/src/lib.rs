//! The catalog: everything the coordinator knows, in one SQL database —
//! SQLite for a single node, PostgreSQL when several coordinators share it.
//!
//! [`Catalog`] is the handle; its methods are grouped by resource:
//! `queue` (jobs: enqueue, claim in named steps, heartbeat, complete and
//! the plan's chain, cancel, reap, a plan's job, and their event streams),
//! `resources` (tenants, tokens, repositories, sources — stored as given,
//! their packager checks them — plans, snapshots, audit), `schedule` (cron
//! expressions and the scheduler's fires), `scope` (whose rows a caller
//! sees), `secrets` (the server key; sealing), `migrate` (the DDL of both
//! databases). Every state change of a job goes through `queue`,
//! fenced by `(job, attempt)`: a worker whose lease expired cannot
//! overwrite what a newer attempt did.
//!
//! One schema serves both databases through sqlx's `Any` driver: times are
//! milliseconds since the epoch (`BIGINT`), ids and JSON are text, flags
//! are integers. The few statements that differ (DDL, row locks) are
//! chosen by [`DbKind`]. Secrets (repository passwords, source
//! credentials) are sealed with the server key before they are stored
//! (`secrets`).

mod migrate;
pub mod queue;
pub mod resources;
pub mod schedule;
pub mod scope;
mod secrets;
pub mod sessions;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, ConnectOptions};

pub use crate::queue::{NewJob, QueueConfig};
pub use crate::secrets::SecretKey;

/// Which database the catalog is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbKind {
    Sqlite,
    Postgres,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    /// An idempotency key was used before for a different request.
    #[error("{0}")]
    KeyReused(String),
    /// A heartbeat or completion for an attempt that no longer holds the job.
    #[error("job {job}: attempt {attempt} no longer holds this job (its lease expired or it was cancelled)")]
    StaleAttempt { job: String, attempt: u32 },
    #[error("the catalog cannot be read: {0}")]
    Corrupt(String),
    #[error("catalog database: {0}")]
    Db(#[from] sqlx::Error),
    /// `error`, about the request's `field` (a form shows it there).
    #[error("{error}")]
    Field { field: &'static str, error: Box<Error> },
}

impl Error {
    /// This error, about the request's `field`.
    pub fn on(self, field: &'static str) -> Error {
        match self {
            Error::Field { .. } => self,
            error => Error::Field { field, error: Box::new(error) },
        }
    }

    /// Whether retrying the same call later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Field { error, .. } => error.is_transient(),
            Error::Db(sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed) => true,
            _ => false,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A digest of a request, for [`NewJob::request_digest`]: the same
/// JSON gives the same digest (object keys are ordered).
pub fn request_digest(request: &serde_json::Value) -> String {
    blake3::hash(request.to_string().as_bytes()).to_hex().to_string()
}

/// The catalog database. Cheap to clone.
#[derive(Clone)]
pub struct Catalog {
    pool: AnyPool,
    kind: DbKind,
    key: SecretKey,
    pub config: QueueConfig,
    bell: EventBell,
}

/// Rings when job events were appended: in this process on SQLite (one
/// connection, so a reader woken early waits for the writer's commit), and
/// from every coordinator on PostgreSQL (`NOTIFY` in the appending
/// transaction, delivered at its commit, heard through `LISTEN`).
#[derive(Clone)]
struct EventBell {
    rings: Arc<tokio::sync::watch::Sender<u64>>,
    listener: Arc<std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl EventBell {
    fn new() -> EventBell {
        EventBell { rings: Arc::new(tokio::sync::watch::channel(0).0), listener: Default::default() }
    }

    fn ring(&self) {
        self.rings.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// The PostgreSQL channel job events are announced on.
const EVENTS_CHANNEL: &str = "backstop_events";

/// Hear other coordinators' (and our own) events; after a lost connection,
/// ring once so readers look again, and listen anew.
async fn listen_for_events(url: String, bell: EventBell) {
    loop {
        if let Ok(mut listener) = sqlx::postgres::PgListener::connect(&url).await
            && listener.listen(EVENTS_CHANNEL).await.is_ok()
        {
            bell.ring();
            while listener.recv().await.is_ok() {
                bell.ring();
            }
        }
        bell.ring();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog").field("kind", &self.kind).finish_non_exhaustive()
    }
}

impl Catalog {
    /// Open (creating a SQLite file if needed) and migrate the catalog at
    /// `url`: `sqlite:///path/catalog.db`, `sqlite::memory:` or
    /// `postgres://user@host/db`.
    pub async fn connect(url: &str, key: SecretKey, config: QueueConfig) -> Result<Catalog> {
        sqlx::any::install_default_drivers();
        let kind = if url.starts_with("sqlite:") {
            DbKind::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            DbKind::Postgres
        } else {
            return Err(Error::Invalid(format!(
                "catalog URL {:?} is neither sqlite:… nor postgres://…",
                redact_url(url)
            )));
        };
        let pool = match kind {
            DbKind::Sqlite => {
                let url = if url.contains('?') { url.to_string() } else { format!("{url}?mode=rwc") };
                let options = AnyConnectOptions::from_str(&url)?.disable_statement_logging();
                // One connection: SQLite has one writer anyway, and a single
                // connection makes every transaction exclusive (claims need it).
                AnyPoolOptions::new()
                    .max_connections(1)
                    .acquire_timeout(Duration::from_secs(30))
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            for pragma in [
                                "PRAGMA journal_mode = WAL",
                                "PRAGMA synchronous = NORMAL",
                                "PRAGMA busy_timeout = 10000",
                                "PRAGMA foreign_keys = ON",
                            ] {
                                sqlx::query(pragma).execute(&mut *conn).await?;
                            }
                            Ok(())
                        })
                    })
                    .connect_with(options)
                    .await?
            }
            DbKind::Postgres => {
                let options = AnyConnectOptions::from_str(url)?.disable_statement_logging();
                AnyPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(Duration::from_secs(30))
                    .connect_with(options)
                    .await?
            }
        };
        let catalog = Catalog { pool, kind, key, config, bell: EventBell::new() };
        migrate::run(&catalog).await?;
        if kind == DbKind::Postgres {
            let task = tokio::spawn(listen_for_events(url.to_string(), catalog.bell.clone()));
            *catalog.bell.listener.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        }
        Ok(catalog)
    }

    /// A receiver that changes whenever job events may have been appended
    /// (by this coordinator, or on PostgreSQL by any): what event streams
    /// wait on instead of polling.
    pub fn subscribe_events(&self) -> tokio::sync::watch::Receiver<u64> {
        self.bell.rings.subscribe()
    }

    pub fn kind(&self) -> DbKind {
        self.kind
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub async fn close(&self) {
        if let Some(task) = self.bell.listener.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
        self.pool.close().await;
    }

    /// Whether the database answers (for `/readyz`).
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// `sql` with `?` placeholders, numbered `$1, $2, …` for PostgreSQL.
    /// Statements here never contain `?` inside string literals.
    pub(crate) fn sql(&self, sql: &str) -> String {
        match self.kind {
            DbKind::Sqlite => sql.to_string(),
            DbKind::Postgres => {
                let mut out = String::with_capacity(sql.len() + 16);
                let mut n = 0;
                for c in sql.chars() {
                    if c == '?' {
                        n += 1;
                        out.push('$');
                        out.push_str(&n.to_string());
                    } else {
                        out.push(c);
                    }
                }
                out
            }
        }
    }

    /// ` FOR UPDATE SKIP LOCKED` on PostgreSQL; nothing on SQLite, whose
    /// single connection already makes the transaction exclusive.
    pub(crate) fn skip_locked(&self) -> &'static str {
        match self.kind {
            DbKind::Sqlite => "",
            DbKind::Postgres => " FOR UPDATE SKIP LOCKED",
        }
    }

    /// ` FOR UPDATE` on PostgreSQL.
    pub(crate) fn for_update(&self) -> &'static str {
        match self.kind {
            DbKind::Sqlite => "",
            DbKind::Postgres => " FOR UPDATE",
        }
    }
}

/// A catalog URL without its password, for messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

/// A new time-ordered id (UUIDv7, text).
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

pub(crate) fn time(ms: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

pub(crate) fn opt_time(ms: Option<i64>) -> Option<chrono::DateTime<chrono::Utc>> {
    ms.map(time)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_password_in_messages() {
        assert_eq!(redact_url("postgres://backstop:s3cret@db:5432/cat"), "postgres://backstop:***@db:5432/cat");
        assert_eq!(redact_url("sqlite:///var/lib/backstop/catalog.db"), "sqlite:///var/lib/backstop/catalog.db");
    }
}
