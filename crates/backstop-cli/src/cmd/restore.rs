use std::path::PathBuf;

use anyhow::Result;
use backstop_repo::restore::{self, RestoreOptions};

use crate::exit;
use crate::global::Context;
use crate::output::{bytes, print_json};

#[derive(clap::Args)]
#[command(long_about = "Restore a snapshot into --target. Paths are recreated under the target as \
they were backed up (a backup of /home/alice restores to TARGET/home/alice). Existing files in \
the way are replaced. Nothing is ever written outside the target, whatever the repository \
contains. File data, modes, times, symlinks, hard links, xattrs, device nodes and FIFOs are \
restored; owners only when running as root.")]
pub struct Args {
    /// Snapshot id (or a unique prefix), or `latest`.
    #[arg(value_name = "SNAPSHOT")]
    snapshot: String,

    /// Directory to restore into (created if missing).
    #[arg(short, long, value_name = "DIR")]
    target: PathBuf,

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
}

pub fn run(ctx: &Context, args: Args) -> Result<u8> {
    let repo = ctx.open()?;
    let (id, snapshot) = repo.find_snapshot(&args.snapshot)?;
    let options = RestoreOptions {
        target: args.target.clone(),
        include: args.include.clone(),
        exclude: args.exclude.clone(),
        verify: args.verify,
        threads: args.threads.max(1),
    };
    if ctx.text() {
        eprintln!("restoring snapshot {} of {} into {}", id.short(), snapshot.paths.join(", "), args.target.display());
    }
    let reporter = ctx.reporter(true);
    let summary = restore::run(&repo, &snapshot, &options, &reporter, &ctx.cancel);
    reporter.finish();
    let summary = summary?;
    if ctx.args.json {
        print_json(&serde_json::json!({ "snapshot_id": id, "target": args.target, "summary": summary }));
    } else if !ctx.args.quiet {
        println!(
            "restored {} files, {} dirs, {} links, {}",
            summary.files,
            summary.dirs,
            summary.links,
            bytes(summary.bytes)
        );
        if args.verify {
            println!("verified {} files", summary.verified);
        }
    }
    if summary.errors > 0 {
        eprintln!("warning: {} entries could not be restored (named above)", summary.errors);
        return Ok(exit::INCOMPLETE);
    }
    Ok(0)
}
