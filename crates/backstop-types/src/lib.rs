//! The messages of Backstop's HTTP API (`/api/v1`): what the coordinator
//! sends and receives, what a worker claims and reports, what the CLI
//! prints. Plain serde types, no I/O, so the server, the worker and the
//! client agree on one definition.
//!
//! Resources come in pairs: a `*Spec` is what a client sends to create or
//! replace one, the bare name is what the API returns (with ids, times and
//! without secrets). Secrets travel only inward, in specs, and outward
//! only to a worker that claimed a job ([`Claim`]). Each is a [`Secret`]:
//! its `Debug` and `Serialize` show `<redacted>`, except in the fields
//! that say `serialize_with = "backstop_secret::reveal"` (the specs a
//! client sends, the claim, a token shown once).
//!
//! Modules: [`params`] (a job's parameters, one type per kind, and a
//! backup's result) and [`check`] (the checks behind the name, host and
//! text patterns); everything else is at the top.

pub mod params;

pub use backstop_confine::{NetGrant, NetScope, PathScope, Reach};
pub use backstop_secret::Secret;
use chrono::{DateTime, Utc};
pub use params::{BackupResult, JobParams};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Names of tenants, repositories, sources, plans, tokens and regions: 1 to
/// 128 letters, digits, `.`, `_` or `-`, not starting with `.` or `-`.
pub const NAME_PATTERN: &str = r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$";
/// A name, or an object's id (ids fit the same pattern).
pub const REF_PATTERN: &str = NAME_PATTERN;
/// A host a source's data lives on: a DNS name or an IP address.
pub const HOST_PATTERN: &str = r"^[A-Za-z0-9_:][A-Za-z0-9._:-]{0,252}$";
/// Free text without control characters (newlines, NUL, …).
pub const TEXT_PATTERN: &str = r"^[^\u0000-\u001F\u007F-\u009F]*$";
/// A plan's tag: text without control characters or commas (the web UI's
/// plan form separates tags with commas).
pub const TAG_PATTERN: &str = r"^[^,\u0000-\u001F\u007F-\u009F]*$";
/// An `Idempotency-Key`: 1 to 200 visible ASCII characters.
pub const IDEMPOTENCY_KEY_PATTERN: &str = r"^[!-~]{1,200}$";
/// The checks behind the patterns above, for the service to apply (the
/// schemas only describe them). Each returns what is wrong, in words.
pub mod check {
    /// A name: [`NAME_PATTERN`](super::NAME_PATTERN).
    pub fn name(what: &str, name: &str) -> Result<(), String> {
        let ok = !name.is_empty()
            && name.len() <= 128
            && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            && !name.starts_with(['.', '-']);
        if ok {
            Ok(())
        } else {
            Err(format!(
                "{what} {:?} is invalid: use 1–128 letters, digits, '.', '_' or '-', not starting with '.' or '-'",
                name.chars().take(140).collect::<String>()
            ))
        }
    }

    /// A host: [`HOST_PATTERN`](super::HOST_PATTERN).
    pub fn host(host: &str) -> Result<(), String> {
        let ok = !host.is_empty()
            && host.len() <= 253
            && host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'))
            && !host.starts_with(['.', '-']);
        if ok {
            Ok(())
        } else {
            Err(format!(
                "host {:?} is not a host name: use 1–253 letters, digits, '.', '-', '_' or ':' (an IPv6 address)",
                host.chars().take(80).collect::<String>()
            ))
        }
    }

    /// Free text of `min` to `max` characters without control characters
    /// ([`TEXT_PATTERN`](super::TEXT_PATTERN)).
    pub fn text(what: &str, text: &str, min: usize, max: usize) -> Result<(), String> {
        let n = text.chars().count();
        if n < min || n > max || text.chars().any(char::is_control) {
            return Err(format!("{what} must be {min}–{max} characters without control characters (newlines, NUL, …)"));
        }
        Ok(())
    }
}

/// The most attempts a job or a plan may be given.
pub const MAX_ATTEMPTS: u32 = 100;
/// The longest deadline of a job, in seconds (30 days).
pub const MAX_DEADLINE_SECONDS: u64 = 30 * 24 * 3600;

/// A job's kind: what the worker does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// Back up a source into a repository.
    Backup,
    /// Read back a sample of a snapshot's data (a chain step after a backup).
    Verify,
    /// Forget snapshots by the plan's retention policy, then prune.
    Retention,
    /// Delete data no snapshot needs.
    Prune,
    /// Check a repository's structure (and optionally its data).
    Check,
    /// Restore a snapshot into a directory on the worker's host.
    Restore,
}

impl JobKind {
    pub const ALL: [JobKind; 6] =
        [JobKind::Backup, JobKind::Verify, JobKind::Retention, JobKind::Prune, JobKind::Check, JobKind::Restore];

    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Backup => "backup",
            JobKind::Verify => "verify",
            JobKind::Retention => "retention",
            JobKind::Prune => "prune",
            JobKind::Check => "check",
            JobKind::Restore => "restore",
        }
    }

    pub fn parse(s: &str) -> Option<JobKind> {
        JobKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Maintenance rewrites or deletes repository data: it never runs beside
    /// a backup into the same repository, nor beside other maintenance.
    pub fn is_maintenance(self) -> bool {
        matches!(self, JobKind::Retention | JobKind::Prune)
    }
}

/// A job's state. `queued → running → succeeded | failed | dead | cancelled`;
/// a running job whose attempt fails with a retryable error, or whose lease
/// expires, goes back to `queued` until `max_attempts` is reached (`dead`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    /// Failed with an error that a retry would not fix (or past its deadline).
    Failed,
    /// Every attempt failed; the last error is kept.
    Dead,
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 6] = [
        JobState::Queued,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Dead,
        JobState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Dead => "dead",
            JobState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<JobState> {
        JobState::ALL.into_iter().find(|k| k.as_str() == s)
    }

    pub fn is_finished(self) -> bool {
        !matches!(self, JobState::Queued | JobState::Running)
    }
}

/// Live progress of a running job, carried by heartbeats.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobProgress {
    pub files_done: u64,
    pub files_total: u64,
    pub bytes_done: u64,
    pub bytes_total: u64,
    /// Bytes that were new to the repository (stored), and reused ones.
    pub bytes_new: u64,
    pub bytes_reused: u64,
    /// Bytes per second over the last interval.
    pub rate: u64,
    pub eta_seconds: Option<u64>,
}

/// A job, as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Job {
    pub id: String,
    pub tenant: String,
    pub kind: JobKind,
    pub state: JobState,
    /// Why a queued job is not running (backoff, limits, no worker, …).
    pub wait_reason: Option<String>,
    pub plan: Option<String>,
    pub source: Option<String>,
    pub repository: String,
    pub region: String,
    /// The host the source lives on, for per-host limits.
    pub host: Option<String>,
    /// Kind-specific parameters (restore target, verify sample, …): the
    /// kind's type in [`params`], read with [`JobParams::of`].
    pub params: Value,
    /// Claims so far; each claim is a new attempt.
    pub attempt: u32,
    pub max_attempts: u32,
    pub lease_owner: Option<String>,
    pub lease_expires: Option<DateTime<Utc>>,
    /// A queued job does not start before this time (retry backoff).
    pub not_before: DateTime<Utc>,
    /// A running attempt is stopped after this many seconds.
    pub deadline_seconds: Option<u64>,
    pub idempotency_key: Option<String>,
    pub parent: Option<String>,
    /// The chain step that created this job (`verify`, `retention`, …).
    pub step: Option<String>,
    pub cancel_requested: bool,
    pub created: DateTime<Utc>,
    pub started: Option<DateTime<Utc>>,
    pub finished: Option<DateTime<Utc>>,
    pub progress: Option<JobProgress>,
    /// What a succeeded job produced (snapshot id, summary, …).
    pub result: Option<Value>,
    /// The last attempt's error.
    pub error: Option<String>,
}

/// A request to run a job now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    pub kind: JobKind,
    /// Run on this plan's source and repository.
    #[serde(default)]
    #[schemars(pattern(REF_PATTERN))]
    pub plan: Option<String>,
    /// Or name the repository (and, for backups, the source) directly.
    #[serde(default)]
    #[schemars(pattern(REF_PATTERN))]
    pub repository: Option<String>,
    #[serde(default)]
    #[schemars(pattern(REF_PATTERN))]
    pub source: Option<String>,
    /// Kind-specific parameters (the kind's type in [`params`]; a key it
    /// does not take is refused): a restore's `snapshot` and `target` (a
    /// directory), or `to` (`{"kind", "config"}`: a system), or with
    /// `source` set its `options` (`entry`, `clean`, `namespace_map`, …),
    /// and `include`, `exclude`, `verify`; a check's `read_data`; a
    /// verify's `percent` and `snapshot` (then only that snapshot's trees
    /// and that share of its data are read; without it, that share of
    /// every pack); a backup's `tags`.
    #[serde(default)]
    #[schemars(with = "Option<serde_json::Map<String, Value>>")]
    pub params: Value,
    #[serde(default)]
    #[schemars(range(min = 1, max = MAX_ATTEMPTS))]
    pub max_attempts: Option<u32>,
    #[serde(default)]
    #[schemars(range(min = 1, max = MAX_DEADLINE_SECONDS))]
    pub deadline_seconds: Option<u64>,
}

/// What a job's event stream carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// `{"state": …, "attempt": …, "error"?: …, "wait_reason"?: …}`
    State,
    /// A [`JobProgress`].
    Progress,
    /// `{"level": "info"|"warning"|"error", "message": …}`
    Log,
}

impl EventKind {
    pub const ALL: [EventKind; 3] = [EventKind::State, EventKind::Progress, EventKind::Log];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::State => "state",
            EventKind::Progress => "progress",
            EventKind::Log => "log",
        }
    }

    pub fn parse(s: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// One entry of a job's append-only event stream. `id` increases across
/// all jobs, so a client resumes a stream from the last id it saw.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct JobEvent {
    pub id: i64,
    pub job: String,
    pub time: DateTime<Utc>,
    pub attempt: u32,
    pub kind: EventKind,
    pub data: Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    Info,
    Warning,
    Error,
}

/// A log line a worker reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogLine {
    pub level: LogLevel,
    pub message: String,
}

/// A worker asking for work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimRequest {
    /// A stable name of the worker process (`host/pid` by default).
    #[schemars(length(min = 1, max = 400), pattern(TEXT_PATTERN))]
    pub worker: String,
    #[schemars(pattern(NAME_PATTERN))]
    pub region: String,
    /// Hold the request open up to this long when nothing is queued.
    #[serde(default)]
    #[schemars(range(max = 60))]
    pub wait_seconds: u32,
}

/// A claimed job with what the worker needs to run it. The one message
/// that carries a repository's and a source's secrets outward, in clear,
/// to the worker that claimed the job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Claim {
    pub job: Job,
    /// The attempt this claim is; every heartbeat and the completion carry it.
    pub attempt: u32,
    pub lease_seconds: u64,
    pub repository: RepositoryAccess,
    pub source: Option<SourceAccess>,
    /// For retention jobs: the plan's policy.
    pub retention: Option<Retention>,
    /// What the job may reach on the worker's host: anything for the system
    /// tenant; another tenant's local paths beneath its roots and the
    /// networks its administrator granted. The worker enforces it as it
    /// opens and connects.
    pub reach: Reach,
}

/// How a worker opens a repository. Carries the password.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RepositoryAccess {
    pub id: String,
    pub location: String,
    #[serde(serialize_with = "backstop_secret::reveal")]
    pub password: Secret<String>,
    /// Backend settings (S3 endpoint, region, credentials, …) as
    /// `name = value` pairs of the CLI's `--s3-*` options.
    #[serde(default, serialize_with = "backstop_secret::reveal_pairs")]
    pub options: Vec<(String, Secret<String>)>,
}

/// What a worker backs up. Carries the source's secrets, if any.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SourceAccess {
    pub id: String,
    pub kind: SourceKind,
    pub host: Option<String>,
    pub config: Value,
    #[serde(default, serialize_with = "backstop_secret::reveal")]
    pub secrets: Secret<Value>,
}

/// A worker's heartbeat: it still holds the lease of `attempt`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    pub attempt: u32,
    #[serde(default)]
    pub progress: Option<JobProgress>,
    #[serde(default)]
    pub logs: Vec<LogLine>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct HeartbeatReply {
    /// The job was cancelled: stop, then complete with [`Outcome::Cancelled`].
    pub cancel: bool,
    pub lease_expires: DateTime<Utc>,
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    Succeeded {
        #[serde(default)]
        result: Value,
        /// A snapshot the job wrote, for the catalog.
        #[serde(default)]
        snapshot: Option<SnapshotInfo>,
    },
    Failed {
        error: String,
        /// Whether another attempt may succeed (network, busy repository)
        /// or not (bad configuration, damaged data).
        retryable: bool,
    },
    Cancelled,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Completion {
    pub attempt: u32,
    #[serde(flatten)]
    pub outcome: Outcome,
    #[serde(default)]
    pub logs: Vec<LogLine>,
}

/// A snapshot as the catalog knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SnapshotInfo {
    pub id: String,
    pub time: DateTime<Utc>,
    pub hostname: String,
    pub paths: Vec<String>,
    pub tags: Vec<String>,
    #[serde(default)]
    pub summary: Value,
}

/// A snapshot in the catalog, with where it lives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Snapshot {
    pub repository: String,
    pub tenant: String,
    pub plan: Option<String>,
    pub job: Option<String>,
    #[serde(flatten)]
    pub info: SnapshotInfo,
}

/// What the newest jobs are grouped by (`GET /api/v1/jobs/latest`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Per {
    Source,
    Plan,
    Repository,
}

/// What a repository's snapshots in the catalog say of it
/// (`GET /api/v1/repositories/usage`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RepositoryUsage {
    pub repository: String,
    pub snapshots: u32,
    /// Bytes the snapshots hold (each snapshot's files, counted per snapshot).
    pub logical_bytes: u64,
    /// Bytes their backups stored (new data, after dedup and compression), before any prune.
    pub stored_bytes: u64,
    /// `stored_bytes` as it grew: after each snapshot, oldest first (at most 200 points).
    pub growth: Vec<UsagePoint>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct UsagePoint {
    pub time: DateTime<Utc>,
    pub stored_bytes: u64,
}

/// A region's pool of workers (`GET /api/v1/regions`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RegionPool {
    pub region: String,
    /// Workers that asked for work in the last two minutes or run a job
    /// now (any tenant's: the pool is shared).
    pub workers: u32,
    /// Jobs running there now (a tenant's token: its own).
    pub running: u32,
    /// Jobs waiting there (a tenant's token: its own).
    pub queued: u32,
}

/// One entry of a snapshot's directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SnapshotEntry {
    /// The name as stored (bytes that are not UTF-8 shown as U+FFFD).
    pub name: String,
    /// `file`, `dir`, `symlink`, `blockdev`, `chardev`, `fifo` or `socket`.
    pub kind: String,
    /// Bytes (a file's length).
    pub size: u64,
    /// Unix permission bits.
    pub mode: u32,
    pub mtime: DateTime<Utc>,
    /// Where a symbolic link points.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// A directory of a snapshot (`GET /api/v1/snapshots/{id}/tree`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SnapshotDir {
    pub snapshot: String,
    /// The directory, absolute, as backed up (`/` is the snapshot's root);
    /// with `image`, a directory inside that disk image (`/p1/etc`).
    pub path: String,
    /// The disk image of the snapshot this directory is inside, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The packager that made the snapshot (`image`, `postgres`, …), which
    /// can also restore it into a system; none for a file tree or a stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_kind: Option<String>,
    /// Its entries, by name.
    pub entries: Vec<SnapshotEntry>,
}

/// A repository to register. Its password and options travel inward in clear.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RepositorySpec {
    #[schemars(pattern(NAME_PATTERN))]
    pub name: String,
    /// A directory (`/srv/repo`, `file:/srv/repo`) or `s3://bucket/prefix`.
    #[schemars(length(min = 1, max = 4096), pattern(TEXT_PATTERN))]
    pub location: String,
    /// Workers of this region back up into it.
    #[serde(default = "default_region")]
    #[schemars(pattern(NAME_PATTERN))]
    pub region: String,
    #[serde(serialize_with = "backstop_secret::reveal")]
    #[schemars(length(min = 1, max = 4096))]
    pub password: Secret<String>,
    /// Backend settings as `[name, value]` pairs (S3: `endpoint`, `region`,
    /// `access_key_id`, `secret_access_key`, `session_token`, `allow_http`).
    #[serde(default, serialize_with = "backstop_secret::reveal_pairs")]
    #[schemars(with = "Vec<(RepositoryOption, String)>")]
    pub options: Vec<(String, Secret<String>)>,
    /// Jobs that may run on it at once (default 4).
    #[serde(default)]
    #[schemars(range(min = 1, max = 10_000))]
    pub max_concurrent: Option<u32>,
    /// Create the repository if the location is empty.
    #[serde(default)]
    pub init: bool,
}

/// The names a repository's backend options may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RepositoryOption {
    Endpoint,
    Region,
    AccessKeyId,
    SecretAccessKey,
    SessionToken,
    AllowHttp,
}

impl RepositoryOption {
    pub const ALL: [RepositoryOption; 6] = [
        RepositoryOption::Endpoint,
        RepositoryOption::Region,
        RepositoryOption::AccessKeyId,
        RepositoryOption::SecretAccessKey,
        RepositoryOption::SessionToken,
        RepositoryOption::AllowHttp,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RepositoryOption::Endpoint => "endpoint",
            RepositoryOption::Region => "region",
            RepositoryOption::AccessKeyId => "access_key_id",
            RepositoryOption::SecretAccessKey => "secret_access_key",
            RepositoryOption::SessionToken => "session_token",
            RepositoryOption::AllowHttp => "allow_http",
        }
    }

    pub fn parse(s: &str) -> Option<RepositoryOption> {
        RepositoryOption::ALL.into_iter().find(|o| o.as_str() == s)
    }
}

pub fn default_region() -> String {
    "default".to_string()
}

/// A registered repository (no secrets).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Repository {
    pub id: String,
    pub tenant: String,
    pub name: String,
    pub location: String,
    pub region: String,
    /// Names of the backend options that are set (values are secret).
    pub options: Vec<String>,
    pub max_concurrent: u32,
    pub created: DateTime<Utc>,
}

/// A source to register: what to back up, on which host. Its secrets travel inward in clear.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    #[schemars(pattern(NAME_PATTERN))]
    pub name: String,
    /// `fs`, `image`, `command`, `postgres`, `mysql` or `kubernetes` (see `backstop_source`).
    pub kind: SourceKind,
    /// The host whose data this is (per-host limits); the worker's own by default.
    #[serde(default)]
    #[schemars(pattern(HOST_PATTERN))]
    pub host: Option<String>,
    /// Kind-specific settings; for `fs`: `{"paths": [...], "excludes": [...]}`; for `image`: `{"path": ..., "cbt": ...}`; any kind may have `hooks`.
    #[schemars(with = "serde_json::Map<String, Value>")]
    pub config: Value,
    /// Credentials the kind needs (`password`, `token`); stored sealed, never shown.
    #[serde(default, serialize_with = "backstop_secret::reveal")]
    #[schemars(with = "Option<serde_json::Map<String, Value>>")]
    pub secrets: Secret<Value>,
}

/// A change to a source (its kind and name stay): its host and
/// configuration as given, and its secrets only when given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceUpdate {
    #[serde(default)]
    #[schemars(pattern(HOST_PATTERN))]
    pub host: Option<String>,
    #[schemars(with = "serde_json::Map<String, Value>")]
    pub config: Value,
    /// New credentials; absent (or null), the stored ones stay.
    #[serde(default, serialize_with = "backstop_secret::reveal")]
    #[schemars(with = "Option<serde_json::Map<String, Value>>")]
    pub secrets: Secret<Value>,
}

/// The kinds of sources; each is a packager of `backstop_source` (its registry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    Fs,
    Image,
    Command,
    Postgres,
    Mysql,
    Kubernetes,
    Qemu,
    Libvirt,
}

impl SourceKind {
    pub const ALL: [SourceKind; 8] = [
        SourceKind::Fs,
        SourceKind::Image,
        SourceKind::Command,
        SourceKind::Postgres,
        SourceKind::Mysql,
        SourceKind::Kubernetes,
        SourceKind::Qemu,
        SourceKind::Libvirt,
    ];

    pub fn parse(s: &str) -> Option<SourceKind> {
        SourceKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Fs => "fs",
            SourceKind::Image => "image",
            SourceKind::Command => "command",
            SourceKind::Postgres => "postgres",
            SourceKind::Mysql => "mysql",
            SourceKind::Kubernetes => "kubernetes",
            SourceKind::Qemu => "qemu",
            SourceKind::Libvirt => "libvirt",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Source {
    pub id: String,
    pub tenant: String,
    pub name: String,
    pub kind: SourceKind,
    pub host: Option<String>,
    pub config: Value,
    pub created: DateTime<Utc>,
}

/// How many snapshots a retention step keeps (as `backstop forget`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    #[serde(default)]
    pub keep_last: Option<u32>,
    #[serde(default)]
    pub keep_hourly: Option<u32>,
    #[serde(default)]
    pub keep_daily: Option<u32>,
    #[serde(default)]
    pub keep_weekly: Option<u32>,
    #[serde(default)]
    pub keep_monthly: Option<u32>,
    #[serde(default)]
    pub keep_yearly: Option<u32>,
}

impl Retention {
    pub fn is_empty(&self) -> bool {
        *self == Retention::default()
    }
}

/// What follows a plan's backup, each step created when the previous one
/// succeeds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Chain {
    /// Read back this percentage of the new snapshot's data (0 = no verify step).
    #[serde(default)]
    #[schemars(range(max = 100))]
    pub verify_percent: u32,
    /// Forget by the plan's retention and prune.
    #[serde(default)]
    pub retention: bool,
}

/// What a schedule does when fires were missed (the coordinator was down).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Misfire {
    /// Forget missed fires; wait for the next one.
    #[default]
    Skip,
    /// Run once for all missed fires.
    RunOnce,
}

/// What a fire does when the previous run of the plan is still queued or running.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    #[default]
    Skip,
    Queue,
}

/// A plan to create or replace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanSpec {
    #[schemars(pattern(NAME_PATTERN))]
    pub name: String,
    /// Source name (or id).
    #[schemars(pattern(REF_PATTERN))]
    pub source: String,
    /// Repository name (or id).
    #[schemars(pattern(REF_PATTERN))]
    pub repository: String,
    /// Cron expression (`min hour day month weekday`), or none for run-now only.
    #[serde(default)]
    #[schemars(length(max = 200), pattern(TEXT_PATTERN))]
    pub schedule: Option<String>,
    /// IANA time zone of the schedule (default UTC).
    #[serde(default)]
    #[schemars(length(max = 100), pattern(TEXT_PATTERN))]
    pub timezone: Option<String>,
    /// Start up to this many seconds after each fire, spread evenly.
    #[serde(default)]
    #[schemars(range(max = 86_400))]
    pub jitter_seconds: u32,
    #[serde(default)]
    pub misfire: Misfire,
    #[serde(default)]
    pub overlap: Overlap,
    #[serde(default)]
    pub retention: Retention,
    #[serde(default)]
    pub chain: Chain,
    #[serde(default)]
    #[schemars(inner(length(min = 1, max = 128), pattern(TAG_PATTERN)))]
    pub tags: Vec<String>,
    #[serde(default)]
    #[schemars(range(min = 1, max = MAX_ATTEMPTS))]
    pub max_attempts: Option<u32>,
    #[serde(default)]
    #[schemars(range(min = 1, max = MAX_DEADLINE_SECONDS))]
    pub deadline_seconds: Option<u64>,
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Plan {
    pub id: String,
    pub tenant: String,
    pub name: String,
    pub source: String,
    pub repository: String,
    pub schedule: Option<String>,
    pub timezone: String,
    pub jitter_seconds: u32,
    pub misfire: Misfire,
    pub overlap: Overlap,
    pub retention: Retention,
    pub chain: Chain,
    pub tags: Vec<String>,
    pub max_attempts: u32,
    pub deadline_seconds: Option<u64>,
    pub enabled: bool,
    pub next_fire: Option<DateTime<Utc>>,
    pub created: DateTime<Utc>,
}

impl From<&Plan> for PlanSpec {
    /// The spec that makes `plan` as it is (its source and repository by id).
    fn from(plan: &Plan) -> PlanSpec {
        PlanSpec {
            name: plan.name.clone(),
            source: plan.source.clone(),
            repository: plan.repository.clone(),
            schedule: plan.schedule.clone(),
            timezone: Some(plan.timezone.clone()),
            jitter_seconds: plan.jitter_seconds,
            misfire: plan.misfire,
            overlap: plan.overlap,
            retention: plan.retention.clone(),
            chain: plan.chain.clone(),
            tags: plan.tags.clone(),
            max_attempts: Some(plan.max_attempts),
            deadline_seconds: plan.deadline_seconds,
            enabled: plan.enabled,
        }
    }
}

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Read everything of its tenant.
    Viewer,
    /// Also run, cancel and create plans, sources and repositories.
    Operator,
    /// Also manage tokens and tenants (of every tenant, for the admin tenant's admins).
    Admin,
    /// Claims and reports jobs; nothing else.
    Worker,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
            Role::Worker => "worker",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        [Role::Viewer, Role::Operator, Role::Admin, Role::Worker].into_iter().find(|r| r.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenSpec {
    #[schemars(pattern(NAME_PATTERN))]
    pub name: String,
    pub role: Role,
    /// Tenant of the new token (default: the caller's).
    #[serde(default)]
    #[schemars(pattern(NAME_PATTERN))]
    pub tenant: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Token {
    pub id: String,
    pub tenant: String,
    pub name: String,
    pub role: Role,
    pub created: DateTime<Utc>,
    pub last_used: Option<DateTime<Utc>>,
}

/// A token just created: the secret is shown this once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct NewToken {
    #[serde(flatten)]
    pub token: Token,
    #[serde(serialize_with = "backstop_secret::reveal")]
    pub secret: Secret<String>,
}

/// A tenant to create, or to change (`name` and `allow_net` as given;
/// what is left out stays as it was).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantSpec {
    #[schemars(pattern(NAME_PATTERN))]
    pub id: String,
    #[serde(default)]
    #[schemars(length(min = 1, max = 200), pattern(TEXT_PATTERN))]
    pub name: Option<String>,
    /// What the tenant's jobs may connect to (`CIDR[:PORT]`, `HOST[:PORT]`,
    /// `unix:PATH`); nothing by default. Loopback, link-local and the like
    /// open only to a grant that names them.
    #[serde(default)]
    pub allow_net: Option<Vec<NetGrant>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Tenant {
    pub id: String,
    pub name: String,
    /// See [`TenantSpec::allow_net`].
    pub allow_net: Vec<NetGrant>,
    pub created: DateTime<Utc>,
}

/// A page of a list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(rename = "{T}Page")]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `cursor` to get the next page; absent on the last one.
    pub next_cursor: Option<String>,
}

/// What `POST /api/v1/catalog/rebuild` did, per repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CatalogRebuild {
    pub repositories: Vec<RebuiltRepository>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RebuiltRepository {
    /// The repository's name.
    pub repository: String,
    /// Snapshots found in it, and how many the catalog gained and lost.
    pub snapshots: Option<u64>,
    pub added: Option<u32>,
    pub removed: Option<u32>,
    /// Why it could not be read.
    pub error: Option<String>,
}

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorDetail {
    /// Stable and machine-readable; each code has one HTTP status.
    pub code: ErrorCode,
    pub message: String,
    /// The field of the request the error is about (`schedule`,
    /// `retention`, `source`), when it is about one: a form shows the
    /// message next to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// What went wrong, for a program to act on; [`ErrorCode::status`] is
/// the HTTP status it comes with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is malformed or asks for something impossible (400).
    Invalid,
    /// No token, or one that is not valid (401).
    Unauthorized,
    /// The token may not do this (403).
    Forbidden,
    /// No such object or endpoint (404).
    NotFound,
    /// The endpoint does not take that method (405).
    MethodNotAllowed,
    /// The request clashes with what exists (409).
    Conflict,
    /// A worker's attempt no longer holds its job: stop, report nothing (409).
    StaleAttempt,
    /// The body is too large (413).
    TooLarge,
    /// The body is not JSON (415).
    UnsupportedMediaType,
    /// An `Idempotency-Key` was used before for another request (422).
    IdempotencyKeyReused,
    /// The token has too many event streams open (429).
    TooManyStreams,
    /// The service failed; the message says what is logged (500).
    Internal,
    /// The catalog is busy or out of reach: try again (503).
    Unavailable,
}

impl ErrorCode {
    /// The HTTP status this code is answered with.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::Invalid => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::Conflict | ErrorCode::StaleAttempt => 409,
            ErrorCode::TooLarge => 413,
            ErrorCode::UnsupportedMediaType => 415,
            ErrorCode::IdempotencyKeyReused => 422,
            ErrorCode::TooManyStreams => 429,
            ErrorCode::Internal => 500,
            ErrorCode::Unavailable => 503,
        }
    }

    /// Whether the same request may succeed later, unchanged.
    pub fn is_transient(self) -> bool {
        matches!(self, ErrorCode::Unavailable | ErrorCode::Internal | ErrorCode::TooManyStreams)
    }
}

/// When a schedule fires next (`GET /api/v1/schedule`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ScheduleFires {
    /// The next fire times, soonest first (none for a schedule that never fires again).
    pub fires: Vec<DateTime<Utc>>,
}

/// An entry of the audit trail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AuditEvent {
    pub id: i64,
    pub time: DateTime<Utc>,
    pub tenant: String,
    /// The token that acted (id), or `system`.
    pub actor: String,
    pub action: String,
    pub object: String,
    pub detail: Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_in_debug_output() {
        let repo = RepositoryAccess {
            id: "r".into(),
            location: "/x".into(),
            password: "hunter2".into(),
            options: vec![("secret_access_key".into(), "AKIA-SECRET".into())],
        };
        let spec = RepositorySpec {
            name: "n".into(),
            location: "/x".into(),
            region: "eu".into(),
            password: "hunter2".into(),
            options: vec![("secret_access_key".into(), "AKIA-SECRET".into())],
            max_concurrent: None,
            init: false,
        };
        let source = SourceAccess {
            id: "s".into(),
            kind: SourceKind::Fs,
            host: None,
            config: serde_json::json!({}),
            secrets: serde_json::json!({"password": "hunter2"}).into(),
        };
        let token = NewToken {
            token: Token {
                id: "t".into(),
                tenant: "system".into(),
                name: "ci".into(),
                role: Role::Operator,
                created: Utc::now(),
                last_used: None,
            },
            secret: "bst_hunter2".into(),
        };
        for text in [format!("{repo:?}"), format!("{spec:?}"), format!("{source:?}"), format!("{token:?}")] {
            assert!(!text.contains("hunter2") && !text.contains("AKIA-SECRET"), "{text}");
        }
        // Where a secret must travel, the field says so and it does.
        let wire = serde_json::to_value(&repo).unwrap();
        assert_eq!((wire["password"].as_str(), wire["options"][0][1].as_str()), (Some("hunter2"), Some("AKIA-SECRET")));
        assert_eq!(serde_json::to_value(&source).unwrap()["secrets"]["password"], "hunter2");
        assert_eq!(serde_json::to_value(&spec).unwrap()["password"], "hunter2");
        assert_eq!(serde_json::to_value(&token).unwrap()["secret"], "bst_hunter2");
        let back: RepositoryAccess = serde_json::from_value(wire).unwrap();
        assert_eq!(back, repo);
    }

    #[test]
    fn enums_round_trip_through_their_names() {
        for k in JobKind::ALL {
            assert_eq!(JobKind::parse(k.as_str()), Some(k));
            assert_eq!(serde_json::to_value(k).unwrap(), serde_json::json!(k.as_str()));
        }
        for s in JobState::ALL {
            assert_eq!(JobState::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_value(s).unwrap(), serde_json::json!(s.as_str()));
        }
        for r in [Role::Viewer, Role::Operator, Role::Admin, Role::Worker] {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.as_str()), Some(k));
            assert_eq!(serde_json::to_value(k).unwrap(), serde_json::json!(k.as_str()));
        }
    }

    #[test]
    fn completions_carry_the_outcome_inline() {
        let c = Completion {
            attempt: 2,
            outcome: Outcome::Failed { error: "disk full".into(), retryable: true },
            logs: vec![],
        };
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["outcome"], "failed");
        assert_eq!(v["attempt"], 2);
        assert_eq!(serde_json::from_value::<Completion>(v).unwrap(), c);
    }
}
