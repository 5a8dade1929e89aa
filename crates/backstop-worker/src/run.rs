//! Running a claimed job with the engine, on a blocking thread.

use std::path::Path;
use std::sync::Arc;

use backstop_backend::{Backend, OpenOptions};
use backstop_repo::backup::{self, BackupOptions};
use backstop_repo::ops::check::{self, CheckOptions, ReadData};
use backstop_repo::ops::forget::{self, KeepPolicy};
use backstop_repo::ops::prune::{self, PruneOptions};
use backstop_repo::restore::{self, RestoreOptions};
use backstop_repo::{Password, Repository, Snapshot, SnapshotId};
use backstop_types::params::{BackupParams, CheckParams, RestoreParams, RetentionParams, VerifyParams};
use backstop_types::{
    BackupResult, Claim, JobParams, LogLevel, Outcome, Reach, RepositoryAccess, RepositoryOption, SnapshotInfo,
    SourceKind,
};
use serde_json::{Value, json};

use crate::JobTracker;

/// A failure, and whether another attempt may succeed.
struct Failure {
    error: String,
    retryable: bool,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.error)
    }
}

impl From<backstop_repo::Error> for Failure {
    /// Retried: what `is_transient` says may pass (`docs/errors.md`); a
    /// full disk, a refusal or damage are not cured by trying again.
    fn from(e: backstop_repo::Error) -> Failure {
        Failure { retryable: e.is_transient(), error: e.to_string() }
    }
}

impl From<backstop_source::Error> for Failure {
    fn from(e: backstop_source::Error) -> Failure {
        match e {
            backstop_source::Error::Repo(e) => Failure::from(e),
            // A tool may fail for a passing reason (a connection, a lock).
            backstop_source::Error::Tool(error) => Failure { error, retryable: true },
            backstop_source::Error::Invalid(error) => Failure { error, retryable: false },
        }
    }
}

fn permanent(error: impl Into<String>) -> Failure {
    Failure { error: error.into(), retryable: false }
}

/// Run `claim` to its end, reaching only what `claim.reach` allows, with
/// the repositories' local caches below `cache_dir`.
pub fn execute(claim: &Claim, tracker: &JobTracker, open: &OpenOptions, cache_dir: Option<&Path>) -> Outcome {
    // The backend stops waiting (for bandwidth, for a retry) once the job is cancelled.
    let open = OpenOptions { cancel: Some(tracker.cancel.clone()), ..open.clone() };
    let result = match open_repository_with(&claim.repository, &claim.reach, &open) {
        Err(e) => Err(Failure::from(e)),
        Ok(repo) => match JobParams::of(&claim.job) {
            Err(e) => Err(permanent(e)),
            Ok(params) => {
                // Each catalog repository has its own cache: the id in a
                // repository's config is its tenant's to write.
                let cache_dir = cache_dir.map(|d| d.join(&claim.repository.id));
                let repo = with_cache(repo, &params, cache_dir.as_deref(), tracker);
                match params {
                    JobParams::Backup(p) => backup(&repo, claim, &p, tracker),
                    JobParams::Verify(p) => verify(&repo, &p, tracker),
                    JobParams::Check(p) => check(&repo, &p, tracker),
                    JobParams::Prune(_) => prune(&repo, tracker),
                    JobParams::Retention(p) => retention(&repo, claim, &p, tracker),
                    JobParams::Restore(p) => restore(&repo, claim, &p, tracker),
                }
            }
        },
    };
    match result {
        Ok(outcome) => outcome,
        Err(_) if tracker.cancel.is_cancelled() => Outcome::Cancelled,
        Err(f) => {
            tracker.log(LogLevel::Error, &f.error);
            Outcome::Failed { error: f.error, retryable: f.retryable }
        }
    }
}

/// `repo` with its local cache below `dir`, for the jobs that may read
/// one: check and verify judge what is stored, not a copy of it. A cache
/// that cannot be opened costs only requests; the log says so.
fn with_cache(repo: Repository, params: &JobParams, dir: Option<&Path>, tracker: &JobTracker) -> Repository {
    let Some(dir) = dir else { return repo };
    if matches!(params, JobParams::Check(_) | JobParams::Verify(_)) {
        return repo;
    }
    match repo.open_cache(dir) {
        Ok(cache) => repo.with_cache(cache),
        Err(e) => {
            tracker.log(
                LogLevel::Warning,
                format!("no local cache in {} ({e}): reading from the repository", dir.display()),
            );
            repo
        }
    }
}

/// Open a repository as a job that may reach `reach` would.
pub fn open_repository(access: &RepositoryAccess, reach: &Reach) -> Result<Repository, backstop_repo::Error> {
    open_repository_with(access, reach, &OpenOptions::default())
}

/// Open the job's repository with `base` backend settings.
pub fn open_repository_with(
    access: &RepositoryAccess,
    reach: &Reach,
    base: &OpenOptions,
) -> Result<Repository, backstop_repo::Error> {
    let options = backend_options(access, reach, base)?;
    let backend: Arc<dyn Backend> = backstop_backend::open(&access.location, &options)?;
    Repository::open(backend, &Password::new(access.password.expose()))
}

/// `base` with the repository's own options (S3 endpoint, credentials)
/// and `reach`: a confined tenant's repository lies beneath its roots, or
/// at an S3 endpoint it was granted, reached with its own credentials only.
pub fn backend_options(
    access: &RepositoryAccess,
    reach: &Reach,
    base: &OpenOptions,
) -> Result<OpenOptions, backstop_repo::Error> {
    let mut s3 = if reach.net.is_any() { base.s3.clone() } else { Default::default() };
    for (name, secret) in &access.options {
        let value = secret.expose().clone();
        match RepositoryOption::parse(name) {
            Some(RepositoryOption::Endpoint) => s3.endpoint = Some(value),
            Some(RepositoryOption::Region) => s3.region = Some(value),
            Some(RepositoryOption::AccessKeyId) => s3.access_key_id = Some(value),
            Some(RepositoryOption::SecretAccessKey) => s3.secret_access_key = Some(secret.clone()),
            Some(RepositoryOption::SessionToken) => s3.session_token = Some(secret.clone()),
            Some(RepositoryOption::AllowHttp) => s3.allow_http = Some(value == "true"),
            None => {
                let known: Vec<&str> = RepositoryOption::ALL.iter().map(|o| o.as_str()).collect();
                return Err(backstop_repo::Error::Invalid(format!(
                    "unknown repository option {name:?} (known: {})",
                    known.join(", ")
                )));
            }
        }
    }
    Ok(OpenOptions { s3, paths: reach.paths.clone(), net: reach.net.clone(), ..base.clone() })
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

fn backup(repo: &Repository, claim: &Claim, params: &BackupParams, tracker: &JobTracker) -> Result<Outcome, Failure> {
    let source = claim.source.as_ref().ok_or_else(|| permanent("a backup job needs a source"))?;
    if let Some((id, snapshot)) = earlier_attempts_snapshot(repo, claim)? {
        tracker.log(
            LogLevel::Info,
            format!("snapshot {} was written by an earlier attempt of this job; adopting it", id.short()),
        );
        return Ok(saved(repo, claim, tracker, &id, &snapshot));
    }
    let hooks = backstop_source::hooks::Hooks::parse(source.config.get("hooks")).map_err(Failure::from)?;
    if !claim.reach.is_any() && source.config.get("hooks").is_some_and(|h| !h.is_null()) {
        return Err(permanent("hooks run commands on the workers; a confined tenant's source has none"));
    }
    let mut tags = params.tags.clone();
    if let Some(plan) = &params.plan {
        tags.push(format!("plan:{plan}"));
    }
    let options = BackupOptions {
        tags,
        hostname: source.host.clone(),
        excludes: strings(source.config.get("excludes")),
        one_file_system: source.config.get("one_file_system").and_then(Value::as_bool).unwrap_or(false),
        exclude_caches: source.config.get("exclude_caches").and_then(Value::as_bool).unwrap_or(false),
        paths: claim.reach.paths.clone(),
        job: Some(claim.job.id.clone()),
        ..BackupOptions::default()
    };
    let env = vec![
        ("BACKSTOP_JOB_ID".to_string(), claim.job.id.to_string()),
        ("BACKSTOP_SOURCE".to_string(), source.id.clone()),
        ("BACKSTOP_SOURCE_KIND".to_string(), source.kind.as_str().to_string()),
        ("BACKSTOP_HOST".to_string(), source.host.clone().unwrap_or_default()),
    ];
    // The source is opened after the pre hooks: they may make what it reads
    // (a volume snapshot).
    let work = || -> Result<backup::BackupOutcome, Failure> {
        // Secrets (a database password) were kept apart, encrypted; the packager sees them as options.
        let mut config = source.config.as_object().cloned().unwrap_or_default();
        if let Some(secrets) = source.secrets.expose().as_object() {
            config.extend(secrets.clone());
        }
        let what = backstop_source::backup(source.kind, &config, &claim.reach)?;
        Ok(backup::run(repo, what, &options, tracker, &tracker.cancel)?)
    };
    let out =
        hooks.around(&env, tracker, work, |out| vec![("BACKSTOP_SNAPSHOT_ID".to_string(), out.id.to_string())])?;
    let s = &out.snapshot.summary;
    tracker.log(
        LogLevel::Info,
        format!(
            "snapshot {} saved: {} new, {} changed, {} unchanged files; {} bytes added",
            out.id.short(),
            s.files_new,
            s.files_changed,
            s.files_unchanged,
            s.bytes_added
        ),
    );
    Ok(saved(repo, claim, tracker, &out.id, &out.snapshot))
}

/// The snapshot an earlier attempt of this job wrote, if one did: the
/// attempt died after its manifest and before its report (`docs/format.md`
/// §8, `job`).
fn earlier_attempts_snapshot(repo: &Repository, claim: &Claim) -> Result<Option<(SnapshotId, Snapshot)>, Failure> {
    if claim.attempt <= 1 {
        return Ok(None);
    }
    let mine = |s: &Snapshot| s.job.as_deref() == Some(claim.job.id.as_str());
    Ok(repo.snapshots()?.into_iter().find(|(_, s)| mine(s)))
}

/// A backup job's success: its snapshot, with the job's log stored beside it.
fn saved(repo: &Repository, claim: &Claim, tracker: &JobTracker, id: &SnapshotId, snapshot: &Snapshot) -> Outcome {
    let summary = serde_json::to_value(&snapshot.summary).unwrap_or(Value::Null);
    // The job's log lives beside its snapshot, so it outlives the catalog.
    if let Err(e) = repo.put_job_log(id, &claim.job.id, tracker.log_text().as_bytes()) {
        tracker.log(LogLevel::Warning, format!("cannot store the job log in the repository: {e}"));
    }
    let info = SnapshotInfo {
        id: id.to_string(),
        time: snapshot.time,
        hostname: snapshot.hostname.clone(),
        paths: snapshot.paths.clone(),
        tags: snapshot.tags.clone(),
        summary: summary.clone(),
    };
    let result = BackupResult { snapshot_id: id.to_string(), parent: snapshot.parent.map(|p| p.to_string()), summary };
    Outcome::Succeeded { result: serde_json::to_value(result).unwrap_or(Value::Null), snapshot: Some(info) }
}

fn verify(repo: &Repository, params: &VerifyParams, tracker: &JobTracker) -> Result<Outcome, Failure> {
    let share = params.fraction();
    // A plan's chained verify names the snapshot its backup wrote: that
    // snapshot's trees and a share of its data are read, nothing else.
    if let Some(snapshot) = &params.snapshot {
        // A full id is read directly; a prefix or `latest` needs the list.
        let id = match snapshot.parse::<SnapshotId>() {
            Ok(id) => id,
            Err(_) => repo.find_snapshot(snapshot)?.0,
        };
        let report = check::verify_snapshot(repo, &id, share, 2, tracker, &tracker.cancel)?;
        return report_check(&report, tracker);
    }
    let options = CheckOptions { read_data: ReadData::Fraction(share), threads: 2 };
    let report = check::run(repo, &options, tracker, &tracker.cancel)?;
    report_check(&report, tracker)
}

fn check(repo: &Repository, params: &CheckParams, tracker: &JobTracker) -> Result<Outcome, Failure> {
    let read_data = match params.read_data.as_deref() {
        None | Some("none") => ReadData::default(),
        Some("all") => ReadData::All,
        Some(subset) => subset.parse().map_err(permanent)?,
    };
    let report = check::run(repo, &CheckOptions { read_data, threads: 2 }, tracker, &tracker.cancel)?;
    report_check(&report, tracker)
}

fn report_check(report: &check::CheckReport, tracker: &JobTracker) -> Result<Outcome, Failure> {
    for f in &report.errors {
        tracker.log(LogLevel::Error, format!("{}: {}", f.object, f.problem));
    }
    let result = json!({
        "errors": report.errors.len(),
        "notes": report.notes.len(),
        "snapshots": report.snapshots,
        "packs": report.packs,
        "pack_bytes": report.pack_bytes,
        "packs_read": report.packs_read,
        "blobs_read": report.blobs_read,
    });
    if report.is_clean() {
        Ok(Outcome::Succeeded { result, snapshot: None })
    } else {
        // Damage does not heal by retrying.
        Err(permanent(format!("the repository is damaged: {} problem(s), see the job log", report.errors.len())))
    }
}

fn prune(repo: &Repository, tracker: &JobTracker) -> Result<Outcome, Failure> {
    let report = prune::run(repo, &PruneOptions::default(), tracker, &tracker.cancel)?;
    tracker.log(
        LogLevel::Info,
        format!("prune: {} pack(s) deleted, {} bytes freed", report.packs_deleted, report.bytes_deleted),
    );
    Ok(Outcome::Succeeded {
        result: json!({"packs_deleted": report.packs_deleted, "bytes_deleted": report.bytes_deleted}),
        snapshot: None,
    })
}

fn retention(
    repo: &Repository,
    claim: &Claim,
    params: &RetentionParams,
    tracker: &JobTracker,
) -> Result<Outcome, Failure> {
    let policy = claim.retention.as_ref().ok_or_else(|| permanent("a retention job needs the plan's policy"))?;
    if policy.is_empty() {
        return Err(permanent("the plan's retention policy keeps nothing; refusing to forget every snapshot"));
    }
    // Without its plan, a policy would apply to every snapshot in the repository.
    let Some(plan) = &params.plan else {
        return Err(permanent("a retention job needs its plan's name (params.plan)"));
    };
    let keep = KeepPolicy {
        last: policy.keep_last.unwrap_or(0),
        hourly: policy.keep_hourly.unwrap_or(0),
        daily: policy.keep_daily.unwrap_or(0),
        weekly: policy.keep_weekly.unwrap_or(0),
        monthly: policy.keep_monthly.unwrap_or(0),
        yearly: policy.keep_yearly.unwrap_or(0),
        within: None,
        tags: Vec::new(),
    };
    // Only this plan's snapshots are subject to its policy.
    let tag = format!("plan:{plan}");
    let snapshots: Vec<_> = repo.snapshots()?.into_iter().filter(|(_, s)| s.tags.contains(&tag)).collect();
    let decisions = forget::apply(&snapshots, &keep)?;
    let mut forgotten = 0;
    for d in decisions.iter().filter(|d| !d.keep) {
        repo.delete_snapshot(&d.id)?;
        forgotten += 1;
    }
    tracker.log(
        LogLevel::Info,
        format!("retention: {forgotten} snapshot(s) forgotten, {} kept", decisions.len() - forgotten),
    );
    let report = prune::run(repo, &PruneOptions::default(), tracker, &tracker.cancel)?;
    Ok(Outcome::Succeeded {
        result: json!({"forgotten": forgotten, "packs_deleted": report.packs_deleted, "bytes_deleted": report.bytes_deleted}),
        snapshot: None,
    })
}

fn restore(repo: &Repository, claim: &Claim, params: &RestoreParams, tracker: &JobTracker) -> Result<Outcome, Failure> {
    let into_system = match (&params.to, &claim.source) {
        // Into a system: {"to": {"kind": "postgres", "config": {...}}}.
        (Some(to), _) => Some((to.kind, to.config.clone())),
        // Into the system a source reaches, with its sealed secrets (a
        // database's password) and `params.options`: only when no target
        // directory is named (a restore with a source and a target is one
        // into the directory, run where the source's host limits say).
        (None, Some(source)) if source.kind != SourceKind::Fs && params.target.is_none() => {
            let object = |v: &Value| v.as_object().cloned().unwrap_or_default();
            let config = backstop_source::restore_into_source(
                source.kind,
                &object(&source.config),
                &object(source.secrets.expose()),
                &params.options.clone().unwrap_or_default(),
            )?;
            Some((source.kind, config))
        }
        _ => None,
    };
    if let Some((kind, config)) = into_system {
        let (_, snap) = repo.find_snapshot(params.snapshot())?;
        let report = backstop_source::restore(repo, &snap, kind, &config, &claim.reach, tracker, &tracker.cancel)?;
        for (entry, to) in &report.restored {
            tracker.log(LogLevel::Info, format!("{entry} restored to {to}"));
        }
        return Ok(Outcome::Succeeded { result: json!({"restored": report.restored}), snapshot: None });
    }
    let target = params.target.as_deref().ok_or_else(|| permanent("a restore needs params.target"))?;
    if !target.starts_with('/') {
        return Err(permanent(format!("the restore target {target:?} is not an absolute path")));
    }
    let (_, snap) = repo.find_snapshot(params.snapshot())?;
    let mut options = RestoreOptions::new(target);
    options.include = params.include.clone();
    options.exclude = params.exclude.clone();
    options.verify = params.verify;
    options.paths = claim.reach.paths.clone();
    if let Some(image) = &params.image {
        return restore_from_image(repo, &snap, std::path::Path::new(image), &options, tracker);
    }
    let summary = restore::run(repo, &snap, &options, tracker, &tracker.cancel)?;
    if summary.errors > 0 {
        return Err(Failure {
            error: format!("{} entries could not be restored (named in the job log)", summary.errors),
            retryable: false,
        });
    }
    Ok(Outcome::Succeeded { result: serde_json::to_value(&summary).unwrap_or(Value::Null), snapshot: None })
}

/// Files from inside a disk image of the snapshot into a directory.
fn restore_from_image(
    repo: &Repository,
    snap: &backstop_repo::Snapshot,
    image: &std::path::Path,
    options: &RestoreOptions,
    tracker: &JobTracker,
) -> Result<Outcome, Failure> {
    let _session = backstop_repo::session::Session::start(repo, "restore")?;
    let index = repo.load_index()?;
    let view = backstop_repo::imagefs::ImageView::open(repo, &index, snap, image)?;
    let summary = backstop_repo::imagefs::restore(&view, options, tracker, &tracker.cancel)?;
    let (fetched, requests) = view.image.fetched();
    tracker.log(
        LogLevel::Info,
        format!(
            "{} files from {}: {fetched} bytes read from the repository in {requests} requests",
            summary.files,
            image.display()
        ),
    );
    if summary.errors > 0 {
        return Err(Failure {
            error: format!("{} entries could not be restored (named in the job log)", summary.errors),
            retryable: false,
        });
    }
    let mut result = serde_json::to_value(&summary).unwrap_or(Value::Null);
    result["fetched"] = json!({"bytes": fetched, "requests": requests});
    Ok(Outcome::Succeeded { result, snapshot: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transient_errors_are_retried() {
        use backstop_repo::Error as E;
        use std::io::Error as Io;
        let retried = |e: E| Failure::from(e).retryable;
        assert!(!retried(E::io("/staging", Io::from_raw_os_error(libc::ENOSPC))), "a full disk");
        assert!(!retried(E::io("/staging", Io::from_raw_os_error(libc::EDQUOT))), "a quota");
        assert!(!retried(E::io("/src", Io::from_raw_os_error(libc::EACCES))), "a refusal");
        assert!(!retried(E::io("/src", Io::from_raw_os_error(libc::EINVAL))), "anything else");
        assert!(!retried(E::corrupt("data/ab", "authentication failed")), "damage");
        assert!(retried(E::io("/nfs", Io::from_raw_os_error(libc::EIO))), "an NFS server's trouble");
        assert!(retried(E::io("/nfs", Io::from_raw_os_error(libc::ETIMEDOUT))), "a timeout");
        assert!(retried(E::Busy("another prune".into())), "a busy repository");
        let full = Failure::from(E::io("/staging", Io::from_raw_os_error(libc::ENOSPC)));
        assert!(full.error.contains("the repository's disk is full: run prune or free space"), "{}", full.error);
    }
}
