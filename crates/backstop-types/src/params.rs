//! A job's parameters, one type per [`JobKind`], defined here once: the
//! API checks a submission's `params` with them, the catalog's chain
//! builds the next step's with them, and the worker reads a claimed job's
//! with them. On the wire and in the catalog they are the JSON object a
//! [`Job`]'s `params` shows.
//!
//! The coordinator adds `plan` (every kind) and `tags` (a backup) from the
//! job's plan; a client may set everything else.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{Job, JobKind, SourceKind};

/// The share of a snapshot's data a verify reads when it names none.
pub const DEFAULT_VERIFY_PERCENT: u32 = 10;

fn is_false(b: &bool) -> bool {
    !b
}

/// A backup's parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BackupParams {
    /// The plan the backup runs for: its snapshot is tagged `plan:<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    /// Tags of the snapshot (a plan's own, for a plan's backup).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

/// A verify's parameters: read back a share of the data.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyParams {
    /// Verify this snapshot (an id, a prefix or `latest`): its trees and
    /// `percent` of its data blobs. Without it, `percent` of every pack.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// The share to read, 1 to 100 (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub percent: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
}

impl VerifyParams {
    /// The share of data to read, as a fraction in (0, 1].
    pub fn fraction(&self) -> f64 {
        f64::from(self.percent.unwrap_or(DEFAULT_VERIFY_PERCENT).clamp(1, 100)) / 100.0
    }
}

/// A check's parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckParams {
    /// Also read data: `none` (the default), `all`, a percentage (`10%`)
    /// or a slice (`2/5`), as `backstop check --read-data-subset`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_data: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
}

/// A prune's parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PruneParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
}

/// A retention job's parameters: the plan whose policy applies, to the
/// plan's own snapshots only (tagged `plan:<name>`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetentionParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
}

/// A restore's parameters. It goes into a directory on the worker's host
/// (`target`), into a system (`to`), or, with neither and a source of
/// another kind than `fs`, into the system that source reaches (with the
/// source's secrets and `options`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreParams {
    /// An id, a prefix or `latest` (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// An absolute directory on the worker's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<RestoreTo>,
    /// For a restore into the job's source: the packager's restore options
    /// (`entry`, `clean`, `namespace_map`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<Map<String, Value>>,
    /// Into a directory: only paths matching these patterns, and not these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    /// Into a directory: read every restored file back and compare.
    #[serde(default, skip_serializing_if = "is_false")]
    pub verify: bool,
    /// Into a directory: files from inside this disk image of the snapshot
    /// (`/drive0.raw`), not the snapshot's own; `include` and `exclude`
    /// then match paths inside it (`/p1/etc`: partition 1's `/etc`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096), pattern(r"^/[^\x00-\x1f\x7f]*$"))]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
}

impl RestoreParams {
    /// The snapshot to restore.
    pub fn snapshot(&self) -> &str {
        self.snapshot.as_deref().unwrap_or("latest")
    }
}

/// A system to restore into: a kind and its configuration, as a source's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreTo {
    /// `image`, `command`, `postgres`, `mysql` or `kubernetes`.
    pub kind: SourceKind,
    #[serde(default)]
    pub config: Map<String, Value>,
}

/// A job's parameters, by kind.
#[derive(Debug, Clone, PartialEq)]
pub enum JobParams {
    Backup(BackupParams),
    Verify(VerifyParams),
    Retention(RetentionParams),
    Prune(PruneParams),
    Check(CheckParams),
    Restore(RestoreParams),
}

impl JobParams {
    /// A kind's parameters as a client sent them (`null` is none): a key
    /// the kind does not take, or a value of the wrong type, is refused
    /// in words that name it (`params.percent: …`).
    pub fn parse(kind: JobKind, params: &Value) -> Result<JobParams, String> {
        fn typed<T: DeserializeOwned>(params: &Value) -> Result<T, String> {
            let empty = Value::Object(Map::new());
            let params = match params {
                Value::Null => &empty,
                Value::Object(_) => params,
                // (A sequence would deserialize as the fields in order.)
                _ => return Err("params must be an object of the kind's parameters by name".into()),
            };
            serde_path_to_error::deserialize(params).map_err(|e| {
                let path = e.path().to_string();
                let at = if path == "." { String::new() } else { format!(".{path}") };
                format!("params{at}: {}", e.inner())
            })
        }
        Ok(match kind {
            JobKind::Backup => JobParams::Backup(typed(params)?),
            JobKind::Verify => {
                let p: VerifyParams = typed(params)?;
                if p.percent.is_some_and(|n| !(1..=100).contains(&n)) {
                    return Err("params.percent must be between 1 and 100".into());
                }
                JobParams::Verify(p)
            }
            JobKind::Retention => JobParams::Retention(typed(params)?),
            JobKind::Prune => JobParams::Prune(typed(params)?),
            JobKind::Check => JobParams::Check(typed(params)?),
            JobKind::Restore => JobParams::Restore(typed(params)?),
        })
    }

    /// A stored job's parameters. Keys the kind does not take are left
    /// out first: jobs queued by an earlier version carry a plan's `tags`
    /// whatever their kind.
    pub fn of(job: &Job) -> Result<JobParams, String> {
        let mut params = job.params.clone();
        if let Value::Object(map) = &mut params {
            let known = JobParams::keys(job.kind);
            map.retain(|k, _| known.contains(k));
        }
        JobParams::parse(job.kind, &params)
    }

    /// The keys a kind's parameters may have, sorted.
    pub fn keys(kind: JobKind) -> Vec<String> {
        fn of<T: schemars::JsonSchema>() -> Vec<String> {
            let schema = schemars::SchemaGenerator::default().into_root_schema_for::<T>();
            let properties = schema.get("properties").and_then(Value::as_object);
            let mut names: Vec<String> = properties.map(|p| p.keys().cloned().collect()).unwrap_or_default();
            names.sort();
            names
        }
        match kind {
            JobKind::Backup => of::<BackupParams>(),
            JobKind::Verify => of::<VerifyParams>(),
            JobKind::Retention => of::<RetentionParams>(),
            JobKind::Prune => of::<PruneParams>(),
            JobKind::Check => of::<CheckParams>(),
            JobKind::Restore => of::<RestoreParams>(),
        }
    }

    pub fn kind(&self) -> JobKind {
        match self {
            JobParams::Backup(_) => JobKind::Backup,
            JobParams::Verify(_) => JobKind::Verify,
            JobParams::Retention(_) => JobKind::Retention,
            JobParams::Prune(_) => JobKind::Prune,
            JobParams::Check(_) => JobKind::Check,
            JobParams::Restore(_) => JobKind::Restore,
        }
    }

    /// The plan the job runs for, by name.
    pub fn plan(&self) -> Option<&str> {
        match self {
            JobParams::Backup(p) => p.plan.as_deref(),
            JobParams::Verify(p) => p.plan.as_deref(),
            JobParams::Retention(p) => p.plan.as_deref(),
            JobParams::Prune(p) => p.plan.as_deref(),
            JobParams::Check(p) => p.plan.as_deref(),
            JobParams::Restore(p) => p.plan.as_deref(),
        }
    }

    /// The job runs for the plan `name`: a backup takes the plan's tags too.
    pub fn set_plan(&mut self, name: &str, tags: &[String]) {
        let plan = Some(name.to_string());
        match self {
            JobParams::Backup(p) => {
                p.plan = plan;
                p.tags = tags.to_vec();
            }
            JobParams::Verify(p) => p.plan = plan,
            JobParams::Retention(p) => p.plan = plan,
            JobParams::Prune(p) => p.plan = plan,
            JobParams::Check(p) => p.plan = plan,
            JobParams::Restore(p) => p.plan = plan,
        }
    }

    /// The JSON object a job's `params` shows.
    pub fn to_value(&self) -> Value {
        let value = match self {
            JobParams::Backup(p) => serde_json::to_value(p),
            JobParams::Verify(p) => serde_json::to_value(p),
            JobParams::Retention(p) => serde_json::to_value(p),
            JobParams::Prune(p) => serde_json::to_value(p),
            JobParams::Check(p) => serde_json::to_value(p),
            JobParams::Restore(p) => serde_json::to_value(p),
        };
        value.unwrap_or_else(|_| Value::Object(Map::new()))
    }
}

/// What a succeeded backup reports (a [`Job`]'s `result`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct BackupResult {
    pub snapshot_id: String,
    /// The snapshot the backup compared against, if any.
    pub parent: Option<String>,
    /// The snapshot's summary (files and bytes new, changed, unchanged).
    #[serde(default)]
    pub summary: Value,
}

impl BackupResult {
    /// A backup job's result, if it is one.
    pub fn of(job: &Job) -> Option<BackupResult> {
        job.result.as_ref().and_then(|r| serde_json::from_value(r.clone()).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_bad_parameter_is_named() {
        let e = JobParams::parse(JobKind::Verify, &json!({"percent": "ten"})).unwrap_err();
        assert!(e.starts_with("params.percent: invalid type"), "{e}");
        let e = JobParams::parse(JobKind::Check, &json!({"read-data": "all"})).unwrap_err();
        assert!(e.starts_with("params.read-data: unknown field `read-data`") && e.contains("`read_data`"), "{e}");
        let e = JobParams::parse(JobKind::Restore, &json!({"to": {"kind": "postgres", "cfg": {}}})).unwrap_err();
        assert!(e.starts_with("params.to.cfg: unknown field `cfg`"), "{e}");
        let e = JobParams::parse(JobKind::Verify, &json!({"percent": 0})).unwrap_err();
        assert_eq!(e, "params.percent must be between 1 and 100");
        for not_an_object in [json!(["nightly"]), json!("x"), json!(1)] {
            let e = JobParams::parse(JobKind::Backup, &not_an_object).unwrap_err();
            assert!(e.starts_with("params must be an object"), "{e}");
        }
    }

    #[test]
    fn parameters_round_trip_through_the_wire_form() {
        let restore = json!({"snapshot": "abc", "target": "/r", "include": ["/a"], "verify": true, "plan": "p"});
        let p = JobParams::parse(JobKind::Restore, &restore).unwrap();
        assert_eq!(p.to_value(), restore);
        assert_eq!(JobParams::parse(JobKind::Prune, &Value::Null).unwrap().to_value(), json!({}));
        let mut backup = JobParams::parse(JobKind::Backup, &Value::Null).unwrap();
        backup.set_plan("nightly", &["db".to_string()]);
        assert_eq!(backup.to_value(), json!({"plan": "nightly", "tags": ["db"]}));
        assert_eq!(backup.plan(), Some("nightly"));
    }

    #[test]
    fn stored_parameters_of_an_earlier_version_still_read() {
        // Until now every job of a plan carried the plan's tags.
        let job: Job = serde_json::from_value(json!({
            "id": "j", "tenant": "t", "kind": "check", "state": "queued", "wait_reason": null,
            "plan": "p", "source": null, "repository": "r", "region": "default", "host": null,
            "params": {"plan": "nightly", "tags": ["a"], "read_data": "all"},
            "attempt": 0, "max_attempts": 3, "lease_owner": null, "lease_expires": null,
            "not_before": "2026-01-01T00:00:00Z", "deadline_seconds": null, "idempotency_key": null,
            "parent": null, "step": null, "cancel_requested": false, "created": "2026-01-01T00:00:00Z",
            "started": null, "finished": null, "progress": null, "result": null, "error": null
        }))
        .unwrap();
        let JobParams::Check(p) = JobParams::of(&job).unwrap() else { panic!("a check") };
        assert_eq!(p.read_data.as_deref(), Some("all"));
        assert_eq!(p.plan.as_deref(), Some("nightly"));
        assert_eq!(JobParams::keys(JobKind::Check), ["plan", "read_data"]);
    }
}
