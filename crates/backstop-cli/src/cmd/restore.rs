use std::path::PathBuf;

use anyhow::{Context as _, Result};
use backstop_repo::imagefs::ImageView;
use backstop_repo::restore::{self, RestoreOptions};

use crate::exit;
use crate::global::Context;
use crate::output::{bytes, print_json};

#[derive(clap::Args)]
#[command(long_about = "Restore a snapshot into --target. Paths are recreated under the target as \
they were backed up (a backup of /home/alice restores to TARGET/home/alice). Existing files in \
the way are replaced. Nothing is ever written outside the target, whatever the repository \
contains. File data, modes, times, symlinks, hard links, xattrs, device nodes and FIFOs are \
restored; owners only when running as root.

With --to KIND:TARGET, the snapshot goes back into a system instead (options with --to-opt):
  image:PATH       a disk to a raw file (sparse), a block device, or a qcow2 file (by its .qcow2
                   name or format=qcow2, through qemu-img, checked with qemu-img compare); a
                   directory gets every entry (a VM's disks and vm.json; with format=qcow2 each
                   disk as NAME.qcow2). Options: entry=NAME (which disk), format=raw|qcow2.
  qemu-disks:DIR   every disk of a VM's snapshot (qemu, libvirt) rebuilt in DIR, made if missing,
                   as qcow2 (format=raw for raw files), each checked, beside vm.json.
  command:'CMD'    the stream on the standard input of `sh -c CMD`; its exit status is checked.
                   Options: entry=NAME.
  postgres://USER@HOST:PORT/DB   pg_restore of one dump into DB (created if missing); without /DB
                   every dump into a database of its name, and the globals. Options:
                   entry=databases/NAME.dump, clean=true (drop objects first), password=P.
  mysql://USER@HOST:PORT/DB      the dump into DB (created if missing); without /DB every dump
                   into a database of its name. Options: entry=databases/NAME.sql, password=P.
  kubernetes:[CONTEXT]  the manifests created in a cluster, namespaces and definitions first.
                   Options: as for the backup source (kubeconfig=, server=, token=, ...),
                   namespace_map=OLD:NEW,..., conflict=skip|overwrite (an object that exists:
                   left as it is, the default, or replaced), namespaces=a,b, kinds=a,b.

With --image ENTRY, files come from inside that disk image of the snapshot (ext2, ext3 or ext4, in
an MBR or GPT partition or filling the disk; see `backstop ls --image`), without restoring the
disk: only the chunks the file system and the chosen files need are read. --include and --exclude
then match paths inside the image, and the paths keep their place under the target:
`backstop restore latest --image drive0.raw --include /p1/etc --target out` writes out/p1/etc.")]
pub struct Args {
    /// Snapshot id (or a unique prefix), or `latest`.
    #[arg(value_name = "SNAPSHOT")]
    snapshot: String,

    /// Directory to restore into (created if missing).
    #[arg(short, long, value_name = "DIR", required_unless_present = "to")]
    target: Option<PathBuf>,

    /// Restore into a system instead of a directory: image:PATH, command:'CMD', postgres://…, mysql://…, kubernetes:[CONTEXT].
    #[arg(long, value_name = "KIND:TARGET", conflicts_with_all = ["target", "include", "exclude", "verify"])]
    to: Option<String>,

    /// An option of --to (repeatable), e.g. entry=databases/app.dump.
    #[arg(long = "to-opt", value_name = "KEY=VALUE", requires = "to")]
    to_opt: Vec<String>,

    /// Restore only paths matching PATTERN and what is below them (repeatable).
    #[arg(short, long, value_name = "PATTERN")]
    include: Vec<String>,

    /// Do not restore paths matching PATTERN (repeatable).
    #[arg(short, long, value_name = "PATTERN")]
    exclude: Vec<String>,

    /// Read every restored file back and compare it with the snapshot.
    #[arg(long)]
    verify: bool,

    /// Parallel pack downloads.
    #[arg(long, default_value_t = 4, value_name = "N")]
    threads: usize,

    /// Restore files from inside this disk image of the snapshot (ext2/3/4; --include /p1/etc).
    #[arg(long, value_name = "ENTRY", conflicts_with_all = ["to", "verify"])]
    image: Option<PathBuf>,
}

pub fn run(ctx: &Context, args: Args) -> Result<u8> {
    let repo = ctx.open()?;
    let (id, snapshot) = repo.find_snapshot(&args.snapshot)?;
    if let Some(spec) = &args.to {
        return restore_to(ctx, &repo, id, &snapshot, spec, &args.to_opt);
    }
    let target = args.target.clone().unwrap_or_default();
    let options = RestoreOptions {
        target: target.clone(),
        include: args.include.clone(),
        exclude: args.exclude.clone(),
        verify: args.verify,
        threads: args.threads.max(1),
        ..RestoreOptions::new(&target)
    };
    if let Some(image) = &args.image {
        return restore_from_image(ctx, &repo, id, &snapshot, image, &options);
    }
    if ctx.text() {
        eprintln!("restoring snapshot {} of {} into {}", id.short(), snapshot.paths.join(", "), target.display());
    }
    let reporter = ctx.reporter(true);
    let summary = restore::run(&repo, &snapshot, &options, &reporter, &ctx.cancel);
    reporter.finish();
    let summary = summary?;
    print_summary(ctx, &summary, args.verify, serde_json::json!({ "snapshot_id": id, "target": target }))
}

/// Files from inside a disk image of the snapshot.
fn restore_from_image(
    ctx: &Context,
    repo: &backstop_repo::Repository,
    id: backstop_repo::SnapshotId,
    snapshot: &backstop_repo::Snapshot,
    image: &std::path::Path,
    options: &RestoreOptions,
) -> Result<u8> {
    let _session = backstop_repo::session::Session::start(repo, "restore")?;
    let index = repo.load_index()?;
    let view = ImageView::open(repo, &index, snapshot, image)?;
    if ctx.text() {
        eprintln!(
            "restoring from {} of snapshot {} into {}",
            view.entry.display(),
            id.short(),
            options.target.display()
        );
    }
    let reporter = ctx.reporter(true);
    let summary = backstop_repo::imagefs::restore(&view, options, &reporter, &ctx.cancel);
    reporter.finish();
    let summary = summary?;
    let (fetched, requests) = view.image.fetched();
    let extra = serde_json::json!({
        "snapshot_id": id,
        "image": view.entry,
        "target": options.target,
        "fetched": { "bytes": fetched, "requests": requests },
    });
    print_summary(ctx, &summary, false, extra)
}

fn print_summary(
    ctx: &Context,
    summary: &restore::RestoreSummary,
    verify: bool,
    mut json: serde_json::Value,
) -> Result<u8> {
    if ctx.args.json {
        json["summary"] = serde_json::to_value(summary)?;
        print_json(&json);
    } else if !ctx.args.quiet {
        println!(
            "restored {} files, {} dirs, {} links, {}",
            summary.files,
            summary.dirs,
            summary.links,
            bytes(summary.bytes)
        );
        if verify {
            println!("verified {} files", summary.verified);
        }
    }
    if summary.errors > 0 {
        eprintln!("warning: {} entries could not be restored (named above)", summary.errors);
        return Ok(exit::INCOMPLETE);
    }
    Ok(0)
}

fn restore_to(
    ctx: &Context,
    repo: &backstop_repo::Repository,
    id: backstop_repo::SnapshotId,
    snapshot: &backstop_repo::Snapshot,
    spec: &str,
    options: &[String],
) -> Result<u8> {
    let (kind, config) = restore_spec(spec, options)?;
    if ctx.text() {
        let shown = backstop_source::redact_spec(spec);
        eprintln!("restoring snapshot {} of {} into {shown}", id.short(), snapshot.paths.join(", "));
    }
    let reporter = ctx.reporter(true);
    let report =
        backstop_source::restore(repo, snapshot, kind, &config, &backstop_source::Reach::any(), &reporter, &ctx.cancel);
    reporter.finish();
    let report = report?;
    if ctx.args.json {
        print_json(
            &serde_json::json!({ "snapshot_id": id, "to": backstop_source::redact_spec(spec), "restored": report.restored }),
        );
    } else if !ctx.args.quiet {
        for (entry, to) in &report.restored {
            println!("{entry} -> {to}");
        }
    }
    Ok(0)
}

/// `--to KIND:TARGET` with its options, as a kind and a configuration.
fn restore_spec(spec: &str, options: &[String]) -> Result<(backstop_source::SourceKind, backstop_source::Config)> {
    // `qemu-disks:DIR`: every disk of a VM's snapshot rebuilt in DIR (made
    // if missing), as qcow2 unless format=raw, beside vm.json: an image
    // restore into a directory.
    if let Some(dir) = spec.strip_prefix("qemu-disks:") {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot make {dir}"))?;
        let mut options = options.to_vec();
        if !options.iter().any(|o| o.starts_with("format=")) {
            options.push("format=qcow2".into());
        }
        return restore_spec(&format!("image:{dir}"), &options);
    }
    // Restore options (entry, clean, conflict, …) are not source options:
    // split them off so that the source's own checks apply to the rest.
    let (own, rest): (Vec<String>, Vec<String>) = options.iter().cloned().partition(|o| {
        let key = o.split_once('=').map_or(o.as_str(), |(k, _)| k);
        backstop_source::RESTORE_KEYS.contains(&key)
    });
    let (kind, mut config) = backstop_source::from_spec(spec, &rest)?;
    for o in own {
        if let Some((k, v)) = o.split_once('=') {
            config.insert(k.to_string(), serde_json::Value::String(v.to_string()));
        }
    }
    Ok((kind, config))
}
