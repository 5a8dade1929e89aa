//! Packagers: everything that is not a tree of local files, turned into
//! the engine's [`SourceTree`](backstop_repo::backup::source::SourceTree) for a backup, and put back from a snapshot
//! by a restore (DESIGN §4).
//!
//! A source is a kind and a JSON configuration — the same shape a plan's
//! source has in the service; the CLI builds it from `--source KIND:TARGET`
//! and `--source-opt KEY=VALUE`. Each kind checks its configuration before
//! anything runs ([`validate`]); a dump or command that fails fails the
//! backup, which then writes no snapshot.
//!
//! | kind | target | entries |
//! |---|---|---|
//! | `image` | a raw file, block device, qcow2 file, or a directory (a VM's export) | one per disk (fixed chunks, holes skipped, changed-block maps), other files as they are |
//! | `command` | a shell command | its standard output, one entry |
//! | `postgres` | a connection URL, with or without a database | `globals.sql` (whole cluster only), `databases/<name>.dump` (`pg_dump -Fc`) |
//! | `mysql` | a connection URL, with or without a database | `databases/<name>.sql` (`mariadb-dump --single-transaction`) |
//! | `qemu` | a running VM's QMP socket | `<disk>.raw` per writable disk (its point in time, all disks at once; incrementals through dirty bitmaps), `vm.json` (name, uuid, disk layout) |
//! | `kubernetes` | a kubeconfig context (empty: the current one) | `<namespace>/<resource>/<name>.yaml`, `_cluster/<resource>/<name>.yaml` (clean manifests) |

// One file per kind (`fs`, `image`, `command`, `db` for postgres and
// mysql, `kubernetes`), each with its `Packager`; `packager` is the
// registry; `hooks`, `process` and `qcow2` serve them.
pub mod command;
pub mod db;
pub mod fs;
pub mod hooks;
pub mod image;
#[cfg(feature = "kubernetes")]
pub mod kubernetes;
pub mod libvirt;
pub mod packager;
pub mod process;
pub mod qcow2;
pub mod qemu;
pub mod qmp;

use std::path::Path;

pub use backstop_confine::Reach;
use backstop_repo::backup::BackupSource;
use backstop_repo::index::Index;
use backstop_repo::tree::{Node, NodeType};
use backstop_repo::{CancelToken, Progress, Repository, Snapshot, SnapshotKind};
use serde_json::{Map, Value};

pub use crate::packager::{ConfigField, FieldValue, Packager, SourceKind, config_schema, kind, packager};

/// A source's configuration, as stored in a plan's source.
pub type Config = Map<String, Value>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration or the request cannot work as given.
    #[error("{0}")]
    Invalid(String),
    /// A dump or restore tool failed.
    #[error("{0}")]
    Tool(String),
    #[error(transparent)]
    Repo(#[from] backstop_repo::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Options of a restore into a system (`--to`) that are not options of
/// its kind as a source.
pub const RESTORE_KEYS: &[&str] = &["entry", "clean", "format", "namespace_map", "conflict"];

/// `config` without a restore's own options ([`RESTORE_KEYS`]).
pub(crate) fn without_restore_keys(config: &Config) -> Config {
    config.iter().filter(|(k, _)| !RESTORE_KEYS.contains(&k.as_str())).map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// `KIND:TARGET` and `KEY=VALUE` options as a kind and its configuration.
pub fn from_spec(spec: &str, options: &[String]) -> Result<(SourceKind, Config)> {
    let Some((name, target)) = spec.split_once(':') else {
        return Err(Error::Invalid(format!(
            "{spec:?} is not KIND:TARGET (for example image:/srv/vm1.qcow2, postgres://db1/app, command:'etcdctl …')"
        )));
    };
    // A URL is its own spec: postgres://… and mysql://… keep their scheme.
    let (name, target) = match name {
        "postgres" | "postgresql" | "mysql" | "mariadb" if target.starts_with("//") => {
            (if name.starts_with("postgres") { "postgres" } else { "mysql" }, spec)
        }
        _ => (name, target),
    };
    let kind = kind(name)?;
    let Some(key) = packager(kind).target_key() else {
        return Err(Error::Invalid(format!("a {name} source has no KIND:TARGET form")));
    };
    let mut config = Config::new();
    config.insert(key.into(), Value::String(target.to_string()));
    for option in options {
        let Some((key, value)) = option.split_once('=') else {
            return Err(Error::Invalid(format!("source option {option:?} is not KEY=VALUE")));
        };
        config.insert(key.trim().to_string(), Value::String(value.to_string()));
    }
    validate(kind, &config)?;
    Ok((kind, config))
}

/// `spec` fit to show: a URL's password replaced by `***`.
pub fn redact_spec(spec: &str) -> String {
    match url::Url::parse(spec) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => spec.to_string(),
    }
}

/// `config` without its `hooks` (which every kind may have).
fn without_hooks(config: &Config) -> Config {
    let mut config = config.clone();
    config.remove("hooks");
    config
}

/// Check `config` for `kind` (its hooks too) without running anything.
pub fn validate(kind: SourceKind, config: &Config) -> Result<()> {
    hooks::Hooks::parse(config.get("hooks"))?;
    packager(kind).validate(&without_hooks(config))
}

/// What a source's configuration (or a restore target's) makes a job
/// reach on its worker's host: the service checks these against the
/// tenant's reach when the configuration is given, and the packagers again
/// when they open and connect.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Touches {
    /// Local paths it opens.
    pub paths: Vec<std::path::PathBuf>,
    /// Network endpoints it connects to, `(host, port)`.
    pub hosts: Vec<(String, u16)>,
    /// Unix sockets (or directories of them) it connects to.
    pub sockets: Vec<std::path::PathBuf>,
    /// What of the workers' own it would use (their commands, their
    /// kubeconfig, a database's default local socket): for the system
    /// tenant only. Says what, for the message.
    pub workers_own: Option<String>,
}

/// [`Touches`] of `kind`/`config` (a source, or with `restore` a restore
/// target's configuration). Hooks run commands on the workers.
pub fn touches(kind: SourceKind, config: &Config, restore: bool) -> Result<Touches> {
    let config = if restore { without_restore_keys(config) } else { config.clone() };
    let hooked = config.get("hooks").is_some_and(|h| !h.is_null());
    let mut out = packager(kind).touches(&without_hooks(&config), restore)?;
    if hooked && out.workers_own.is_none() {
        out.workers_own = Some("a source with hooks runs commands on the workers".into());
    }
    Ok(out)
}

/// The configuration of a restore into the system a source of `kind`
/// reaches (`config`, with its `secrets`: a database's password, a
/// cluster's token), with a restore's own `options` (`entry`, `clean`,
/// `namespace_map`, …): what a service's restore job "into source S" runs.
/// Only what says where and who is taken from the source.
pub fn restore_into_source(kind: SourceKind, config: &Config, secrets: &Config, options: &Config) -> Result<Config> {
    let Some(connection) = packager(kind).restore_connection() else {
        let into: Vec<&str> = SourceKind::ALL
            .into_iter()
            .filter(|k| packager(*k).restore_connection().is_some())
            .map(SourceKind::as_str)
            .collect();
        return Err(Error::Invalid(format!(
            "a restore goes into a source of kind {}, not {}",
            into.join(", "),
            kind.as_str()
        )));
    };
    if let Some(key) = options.keys().find(|k| !RESTORE_KEYS.contains(&k.as_str())) {
        return Err(Error::Invalid(format!("params.options takes only {} (not {key:?})", RESTORE_KEYS.join(", "))));
    }
    let mut out: Config =
        config.iter().filter(|(k, _)| connection.contains(&k.as_str())).map(|(k, v)| (k.clone(), v.clone())).collect();
    out.extend(secrets.iter().filter(|(k, _)| connection.contains(&k.as_str())).map(|(k, v)| (k.clone(), v.clone())));
    out.extend(options.clone());
    Ok(out)
}

/// Check the configuration of a restore into a system (`--to`, a restore
/// job's `params.to`) without running anything.
pub fn validate_restore(kind: SourceKind, config: &Config) -> Result<()> {
    packager(kind).validate_restore(config)
}

/// What to back up for `kind`: validates, then checks what it can reach
/// (files, tools) before the backup starts; every local path and network
/// address it uses is one `reach` allows, checked as it is opened or
/// connected to.
pub fn backup(kind: SourceKind, config: &Config, reach: &Reach) -> Result<BackupSource> {
    packager(kind).backup(&without_hooks(config), reach)
}

/// What a restore into a system did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RestoreReport {
    /// The snapshot's entries that were restored, and where to.
    pub restored: Vec<(String, String)>,
}

/// Put `snapshot` back into the system `kind`/`config` names
/// (`--to KIND:TARGET`), reaching only what `reach` allows.
pub fn restore(
    repo: &Repository,
    snapshot: &Snapshot,
    kind: SourceKind,
    config: &Config,
    reach: &Reach,
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<RestoreReport> {
    let index = repo.load_index()?;
    let entries = entries(repo, &index, snapshot)?;
    if entries.is_empty() {
        return Err(Error::Invalid("the snapshot holds no files to restore".into()));
    }
    let ctx = RestoreContext { repo, index: &index, snapshot, entries, progress, cancel };
    packager(kind).restore(&ctx, config, reach)
}

/// What a packager restores from: the snapshot, its files, the job's progress and cancel.
pub struct RestoreContext<'a> {
    pub repo: &'a Repository,
    pub index: &'a Index,
    pub snapshot: &'a Snapshot,
    /// Every file in the snapshot, by its path in the tree (`databases/app.dump`).
    pub entries: Vec<(String, Node)>,
    pub progress: &'a dyn Progress,
    pub cancel: &'a CancelToken,
}

impl RestoreContext<'_> {
    /// Write entry `path` to `out`.
    pub fn dump(&self, path: &str, out: &mut dyn std::io::Write) -> Result<u64> {
        if self.cancel.is_cancelled() {
            return Err(backstop_repo::Error::Cancelled.into());
        }
        let full = if self.snapshot.kind == SnapshotKind::Source { format!("/{path}") } else { path.to_string() };
        let n = backstop_repo::ops::dump::dump(self.repo, self.index, self.snapshot, Path::new(&full), out)?;
        self.progress.advance(1, n);
        Ok(n)
    }

    /// The one entry to restore: `chosen`, or the only one there is.
    pub fn single(&self, chosen: Option<&str>, what: &str) -> Result<&(String, Node)> {
        match chosen {
            Some(name) => self.entries.iter().find(|(p, _)| p == name).ok_or_else(|| {
                Error::Invalid(format!("the snapshot has no entry {name:?} (it has: {})", self.names().join(", ")))
            }),
            None if self.entries.len() == 1 => Ok(&self.entries[0]),
            None => Err(Error::Invalid(format!(
                "the snapshot holds {} files; choose the {what} with the option entry=PATH (one of: {})",
                self.entries.len(),
                self.names().join(", ")
            ))),
        }
    }

    fn names(&self) -> Vec<String> {
        self.entries.iter().map(|(p, _)| p.clone()).collect()
    }
}

/// Every regular file of a snapshot with its path in the tree.
fn entries(repo: &Repository, index: &Index, snapshot: &Snapshot) -> Result<Vec<(String, Node)>> {
    fn walk(
        repo: &Repository,
        index: &Index,
        tree: &backstop_repo::BlobId,
        prefix: &str,
        out: &mut Vec<(String, Node)>,
    ) -> Result<()> {
        for node in repo.load_tree(index, tree)?.nodes {
            let name = String::from_utf8_lossy(&node.name).into_owned();
            let path = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
            match node.node_type {
                NodeType::Dir => {
                    if let Some(sub) = node.subtree() {
                        walk(repo, index, &sub, &path, out)?;
                    }
                }
                NodeType::File => out.push((path, node)),
                _ => {}
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(repo, index, &snapshot.tree, "", &mut out)?;
    Ok(out)
}

/// A string option, if given (numbers and booleans are accepted as text).
pub(crate) fn opt_str(config: &Config, key: &str) -> Result<Option<String>> {
    match config.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(Value::Bool(b)) => Ok(Some(b.to_string())),
        Some(other) => Err(Error::Invalid(format!("option {key} must be a string, not {other}"))),
    }
}

/// A yes/no option: true, yes, 1 or false, no, 0 (a JSON boolean too).
pub(crate) fn opt_bool(config: &Config, key: &str) -> Result<bool> {
    match opt_str(config, key)?.as_deref() {
        None | Some("false") | Some("no") | Some("0") => Ok(false),
        Some("true") | Some("yes") | Some("1") => Ok(true),
        Some(other) => Err(Error::Invalid(format!("{key}={other} is not true or false"))),
    }
}

/// A comma-separated list (or a JSON array of strings), each item checked.
pub(crate) fn opt_list(config: &Config, key: &str, check: fn(&str) -> Result<()>) -> Result<Option<Vec<String>>> {
    let items: Vec<String> = match config.get(key) {
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| i.as_str().map(str::to_string).ok_or_else(|| Error::Invalid(format!("{key} must list strings"))))
            .collect::<Result<_>>()?,
        _ => match opt_str(config, key)? {
            Some(s) => s.split(',').map(|i| i.trim().to_string()).filter(|i| !i.is_empty()).collect(),
            None => return Ok(None),
        },
    };
    for item in &items {
        check(item)?;
    }
    Ok(if items.is_empty() { None } else { Some(items) })
}

/// A required string option.
pub(crate) fn req_str(config: &Config, key: &str, kind: &str) -> Result<String> {
    match opt_str(config, key)? {
        Some(s) if !s.trim().is_empty() => Ok(s),
        _ => Err(Error::Invalid(format!("a {kind} source needs {key}"))),
    }
}

/// Refuse keys the kind does not know (a typo would otherwise be ignored).
pub(crate) fn known_keys(config: &Config, kind: &str, known: &[&str]) -> Result<()> {
    if let Some(key) = config.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(Error::Invalid(format!(
            "unknown option {key:?} for a {kind} source (known: {})",
            known.join(", ")
        )));
    }
    Ok(())
}
