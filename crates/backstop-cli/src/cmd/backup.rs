use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use backstop_repo::backup::{self, BackupOptions, BackupSource, FixedChunking, ParentChoice};

use crate::exit;
use crate::global::Context;
use crate::output::{bytes, duration_ms, print_json};

#[derive(clap::Args)]
#[command(long_about = "Back up files and directories into a new snapshot. Paths are recorded as \
absolute paths. Files whose size, modification time, change time and inode match the parent \
snapshot (the newest snapshot of the same host and paths, or --parent) are not read again. Files \
that cannot be read are named in a warning, the rest is backed up, and the exit code is 3.

With --stdin, standard input is stored as one file named by --stdin-filename.

With --source KIND:TARGET, a packager produces what is backed up (options with --source-opt):
  image:PATH       a raw image, block device, qcow2 file, or a directory of a VM's exported
                   files; fixed 8 KiB chunks, holes skipped. Options: cbt=FILE|DIR (changed-block
                   map(s): only the changed blocks are read when the map follows the parent's
                   generation), generation=G (for a backup without a map), chunk_size=8k,
                   format=auto|raw|qcow2 (auto: qcow2 by a .qcow2 name), backing_outside=true
                   (qcow2 backing files outside the image's directory).
  qemu:SOCKET      a running QEMU/KVM VM through its monitor (QMP) socket: every writable disk
                   at one point in time while the guest runs (DISK.raw), and vm.json (name, uuid,
                   disks); incrementals copy only what QEMU's dirty bitmaps marked since the parent.
                   Options: agent=SOCKET (qemu-guest-agent: file systems frozen for the point in
                   time, thawed at once), agent_timeout=10, temp_dir=DIR (where QEMU writes the
                   point-in-time copies), speed=100m (bytes of data/s QEMU may copy), chunk_size=8k.
  command:'CMD'    the standard output of `sh -c CMD` (etcdctl, vzdump, ...). Options:
                   filename=NAME.
  postgres://USER@HOST:PORT/DB   pg_dump -Fc of DB; without /DB every database and the globals
                   (pg_dumpall --globals-only). Options: databases=a,b, password=P (or PGPASSWORD).
  mysql://USER@HOST:PORT/DB      mariadb-dump --single-transaction of DB; without /DB every
                   database but the system ones. Options: databases=a,b, password=P (or MYSQL_PWD).
  kubernetes:[CONTEXT]  resources through the Kubernetes API as clean manifests,
                   NAMESPACE/RESOURCE/NAME.yaml (cluster-scoped: _cluster/...); server-managed
                   fields and objects a controller owns are left out. Options: kubeconfig=FILE
                   (default $KUBECONFIG, ~/.kube/config, or in-cluster), or server=URL with
                   token=T|token_file=FILE [certificate_authority_data=B64,
                   insecure_skip_tls_verify=true]; namespaces=a,b, exclude_namespaces=a,b,
                   selector=LABELS, kinds=configmaps,deployments.apps (default: every namespaced
                   kind but events, endpoints, leases), owned=true.
A failing dump or command fails the backup: no snapshot is written without it.

An interrupted backup (Ctrl-C, SIGTERM, a crash) leaves a checkpoint; the next backup of the same \
paths resumes from it and does not read or upload again what was already saved.")]
pub struct Args {
    /// Files and directories to back up.
    #[arg(value_name = "PATH", required_unless_present_any = ["stdin", "source", "files_from"])]
    paths: Vec<PathBuf>,

    /// Back up what a packager produces: image:PATH, qemu:SOCKET, command:'CMD', postgres://…, mysql://…, kubernetes:[CONTEXT].
    #[arg(long, value_name = "KIND:TARGET", conflicts_with_all = ["paths", "stdin"])]
    source: Option<String>,

    /// An option of --source (repeatable), e.g. cbt=/var/lib/vm/disk.cbt.json.
    #[arg(long = "source-opt", value_name = "KEY=VALUE", requires = "source")]
    source_opt: Vec<String>,

    /// Leave out paths matching PATTERN (gitignore syntax; repeatable).
    #[arg(short = 'e', long, value_name = "PATTERN")]
    exclude: Vec<String>,

    /// Read exclude patterns from FILE, one per line (`#` starts a comment).
    #[arg(long, value_name = "FILE")]
    exclude_file: Vec<PathBuf>,

    /// Read the paths to back up from FILE, one per line (`#` starts a comment).
    #[arg(long, value_name = "FILE")]
    files_from: Vec<PathBuf>,

    /// Stay on the file system of each given path: mount points below it are recorded, not entered.
    #[arg(short = 'x', long)]
    one_file_system: bool,

    /// Leave out the contents of directories holding a CACHEDIR.TAG (the tag itself is kept).
    #[arg(long)]
    exclude_caches: bool,

    /// Tag the snapshot (repeatable, or comma-separated).
    #[arg(long, value_name = "TAG", value_delimiter = ',')]
    tag: Vec<String>,

    /// Record this host name instead of the machine's.
    #[arg(long, value_name = "NAME")]
    host: Option<String>,

    /// Compare against this snapshot instead of the newest one of the same host and paths.
    #[arg(long, value_name = "SNAPSHOT", conflicts_with = "force")]
    parent: Option<String>,

    /// Read every file, ignoring any parent snapshot.
    #[arg(long)]
    force: bool,

    /// Back up standard input instead of files.
    #[arg(long, conflicts_with = "paths")]
    stdin: bool,

    /// File name for the --stdin data.
    #[arg(long, default_value = "stdin", value_name = "NAME")]
    stdin_filename: String,

    /// Which files get fixed 32 KiB chunks: auto (sparse files and disk images), always (also
    /// for --stdin, e.g. an image read from a device), never.
    #[arg(long, default_value = "auto", value_parser = ["auto", "always", "never"])]
    fixed_chunks: String,

    /// Run CMD (by `sh -c`) before the backup: quiesce, snapshot (repeatable, in order). A failing
    /// pre hook stops the backup unless --hook-on-error continue.
    #[arg(long, value_name = "CMD")]
    pre_hook: Vec<String>,

    /// Run CMD after the backup, whatever its outcome (BACKSTOP_STATUS=succeeded|failed,
    /// BACKSTOP_SNAPSHOT_ID): thaw, clean up (repeatable).
    #[arg(long, value_name = "CMD")]
    post_hook: Vec<String>,

    /// Seconds a hook may run before it is killed.
    #[arg(long, default_value_t = 300, value_name = "SECONDS")]
    hook_timeout: u64,

    /// What a failing hook does: fail (the backup fails) or continue.
    #[arg(long, default_value = "fail", value_parser = ["fail", "continue"])]
    hook_on_error: String,

    /// Snapshot time (RFC 3339) instead of now.
    #[arg(long, value_name = "TIME")]
    time: Option<String>,

    /// Do not count files first (the progress bar then has no total or ETA). Counting is
    /// skipped anyway when no bar is drawn (not a terminal, --quiet, --json).
    #[arg(long)]
    no_scan: bool,

    /// Seconds between checkpoints of a long backup.
    #[arg(long, default_value_t = 300, value_name = "SECONDS", hide = true)]
    checkpoint_interval: u64,
}

pub fn run(ctx: &Context, args: Args) -> Result<u8> {
    let repo = ctx.open()?;
    let lines = |file: &PathBuf| -> Result<Vec<String>> {
        let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
        Ok(text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_string).collect())
    };
    let mut excludes = args.exclude.clone();
    for file in &args.exclude_file {
        excludes.extend(lines(file)?);
    }
    let mut paths = args.paths.clone();
    for file in &args.files_from {
        paths.extend(lines(file)?.into_iter().map(PathBuf::from));
    }
    if args.source.is_none() && !args.stdin && paths.is_empty() {
        bail!("nothing to back up: the --files-from file(s) name no paths");
    }
    let parent = match (&args.parent, args.force) {
        (Some(spec), _) => ParentChoice::Snapshot(repo.find_snapshot(spec)?.0),
        (None, true) => ParentChoice::None,
        (None, false) => ParentChoice::Latest,
    };
    let time = match &args.time {
        Some(t) => Some(
            chrono::DateTime::parse_from_rfc3339(t)
                .with_context(|| format!("--time {t:?} is not an RFC 3339 time like 2026-01-31T23:00:00Z"))?
                .to_utc(),
        ),
        None => None,
    };
    let tags: Vec<String> = args.tag.iter().map(|t| t.trim().to_string()).filter(|t| !t.is_empty()).collect();
    if tags.iter().any(|t| t.chars().any(char::is_control)) {
        bail!("tags cannot contain control characters");
    }
    let options = BackupOptions {
        tags,
        hostname: args.host.clone(),
        excludes,
        one_file_system: args.one_file_system,
        exclude_caches: args.exclude_caches,
        parent,
        fixed_chunking: match args.fixed_chunks.as_str() {
            "always" => FixedChunking::Always,
            "never" => FixedChunking::Never,
            _ => FixedChunking::Auto,
        },
        checkpoint_interval: std::time::Duration::from_secs(args.checkpoint_interval.max(1)),
        time,
        ..BackupOptions::default()
    };
    let hook = |cmd: &String| backstop_source::hooks::Hook::new(cmd, args.hook_timeout, &args.hook_on_error);
    let hooks = backstop_source::hooks::Hooks {
        pre: args.pre_hook.iter().map(hook).collect::<Result<_, _>>()?,
        post: args.post_hook.iter().map(hook).collect::<Result<_, _>>()?,
    };
    let reporter = ctx.reporter(true);
    // Without a bar nobody sees the totals: skip the counting walk.
    let options = BackupOptions { scan_totals: !args.no_scan && reporter.draws_bar(), ..options };
    let label = args
        .source
        .as_deref()
        .map(backstop_source::redact_spec)
        .unwrap_or_else(|| paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" "));
    let env = vec![("BACKSTOP_SOURCE".to_string(), label)];
    // The source is opened after the pre hooks: they may make what it reads.
    let work = || -> Result<backup::BackupOutcome> {
        let source = if let Some(spec) = &args.source {
            let (kind, config) = backstop_source::from_spec(spec, &args.source_opt)?;
            backstop_source::backup(kind, &config, &backstop_source::Reach::any())?
        } else if args.stdin {
            BackupSource::Stream { reader: Box::new(std::io::stdin()), filename: args.stdin_filename.clone() }
        } else {
            BackupSource::Paths(paths.clone())
        };
        Ok(backup::run(&repo, source, &options, &reporter, &ctx.cancel)?)
    };
    let outcome =
        hooks.around(&env, &reporter, work, |out| vec![("BACKSTOP_SNAPSHOT_ID".to_string(), out.id.to_string())]);
    reporter.finish();
    let outcome = outcome?;
    let s = &outcome.snapshot.summary;
    if ctx.args.json {
        print_json(&serde_json::json!({
            "snapshot_id": outcome.id,
            "parent": outcome.parent,
            "resumed": outcome.resumed,
            "paths": outcome.snapshot.paths,
            "summary": s,
        }));
    } else if !ctx.args.quiet {
        println!("Files:  {} new, {} changed, {} unmodified", s.files_new, s.files_changed, s.files_unchanged);
        println!("Dirs:   {}", s.dirs);
        println!("Added:  {} ({} stored)", bytes(s.bytes_added), bytes(s.bytes_added_stored));
        println!(
            "processed {} files, {} in {}",
            s.files_new + s.files_changed + s.files_unchanged,
            bytes(s.bytes_total),
            duration_ms(s.duration_ms)
        );
        println!("snapshot {} saved", outcome.id.short());
    }
    if s.warnings > 0 {
        eprintln!("warning: {} file(s) could not be read (named above); the snapshot has everything else", s.warnings);
        return Ok(exit::INCOMPLETE);
    }
    Ok(0)
}
