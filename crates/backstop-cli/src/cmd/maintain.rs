//! Commands that maintain a repository: forget, prune, check, repair.

use std::time::Duration;

use anyhow::{Result, bail};
use backstop_repo::Repository;
use backstop_repo::ops::check::{self, CheckOptions, ReadData};
use backstop_repo::ops::forget::{self, KeepPolicy};
use backstop_repo::ops::prune::{self, PruneOptions, PruneReport};
use backstop_repo::ops::repair;

use crate::cmd::browse::SnapshotFilter;
use crate::exit;
use crate::global::Context;
use crate::output::{bytes, local_time, print_json};

/// `1y2m3w4d5h`: years (365 days), months (30 days), weeks, days, hours.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration: use forms like 12h, 7d, 2w, 6m, 1y or 1y6m");
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = 0u64;
    let mut digits = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let n: u64 = digits.parse().map_err(|_| bad())?;
        digits.clear();
        let unit = match c {
            'h' => 3600,
            'd' => 86_400,
            'w' => 7 * 86_400,
            'm' => 30 * 86_400,
            'y' => 365 * 86_400,
            _ => return Err(bad()),
        };
        total = n.checked_mul(unit).and_then(|v| total.checked_add(v)).ok_or_else(bad)?;
    }
    if !digits.is_empty() || s.is_empty() {
        return Err(bad());
    }
    Ok(Duration::from_secs(total))
}

fn parse_percent(s: &str) -> Result<f64, String> {
    let v: f64 = s.trim_end_matches('%').parse().map_err(|_| format!("{s:?} is not a percentage"))?;
    if !(0.0..=100.0).contains(&v) {
        return Err(format!("{s:?} is not between 0% and 100%"));
    }
    Ok(v / 100.0)
}

#[derive(clap::Args)]
pub struct PruneFlags {
    /// Repack packs with more than this share of unused data.
    #[arg(long, default_value = "10%", value_parser = parse_percent, value_name = "PERCENT")]
    max_unused: f64,

    /// Delete marked packs only after this long (e.g. 1h); a later prune finishes the job.
    #[arg(long, default_value = "0", value_parser = parse_duration, value_name = "DURATION")]
    grace: Duration,
}

#[derive(clap::Args)]
#[command(long_about = "Remove snapshots, either those named or those a retention policy does not \
keep. Snapshots are grouped by host and paths; each rule keeps the newest snapshot of each of its \
last N periods (hours, days, ISO weeks, months, years, in local time). A snapshot kept by any rule \
stays. Forget removes only the snapshot manifests; `prune` (or --prune) deletes the data no \
snapshot needs any more.")]
pub struct ForgetArgs {
    /// Snapshots to forget (ids or prefixes), instead of a policy.
    #[arg(value_name = "SNAPSHOT")]
    snapshots: Vec<String>,
    /// Keep the N newest snapshots.
    #[arg(long, default_value_t = 0, value_name = "N")]
    keep_last: u32,
    /// Keep the newest snapshot of each of the last N hours that have one.
    #[arg(long, default_value_t = 0, value_name = "N")]
    keep_hourly: u32,
    /// Keep the newest snapshot of each of the last N days that have one.
    #[arg(long, default_value_t = 0, value_name = "N")]
    keep_daily: u32,
    /// Keep the newest snapshot of each of the last N weeks that have one.
    #[arg(long, default_value_t = 0, value_name = "N")]
    keep_weekly: u32,
    /// Keep the newest snapshot of each of the last N months that have one.
    #[arg(long, default_value_t = 0, value_name = "N")]
    keep_monthly: u32,
    /// Keep the newest snapshot of each of the last N years that have one.
    #[arg(long, default_value_t = 0, value_name = "N")]
    keep_yearly: u32,
    /// Keep every snapshot younger than DURATION (relative to the newest; e.g. 30d, 1y6m).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    keep_within: Option<Duration>,
    /// Keep every snapshot with this tag (repeatable).
    #[arg(long, value_name = "TAG", value_delimiter = ',')]
    keep_tag: Vec<String>,
    #[command(flatten)]
    filter: SnapshotFilter,
    /// Show what would be removed; remove nothing.
    #[arg(short = 'n', long)]
    dry_run: bool,
    /// Run prune afterwards.
    #[arg(long)]
    prune: bool,
    #[command(flatten)]
    prune_flags: PruneFlags,
}

pub fn forget(ctx: &Context, args: ForgetArgs) -> Result<u8> {
    let repo = ctx.open()?;
    let policy = KeepPolicy {
        last: args.keep_last,
        hourly: args.keep_hourly,
        daily: args.keep_daily,
        weekly: args.keep_weekly,
        monthly: args.keep_monthly,
        yearly: args.keep_yearly,
        within: args.keep_within.map(|d| chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)),
        tags: args.keep_tag.clone(),
    };
    let all = repo.snapshots()?;
    let mut remove = Vec::new();
    let mut decisions = Vec::new();
    if !args.snapshots.is_empty() {
        if !policy.is_empty() {
            bail!("give either snapshot ids or --keep-* rules, not both");
        }
        for spec in &args.snapshots {
            remove.push(repo.find_snapshot(spec)?.0);
        }
    } else {
        let selected: Vec<_> = all.iter().filter(|(_, s)| args.filter.matches(s)).cloned().collect();
        decisions = forget::apply(&selected, &policy)?;
        remove.extend(decisions.iter().filter(|d| !d.keep).map(|d| d.id));
    }
    remove.sort();
    remove.dedup();

    if ctx.text() {
        for d in &decisions {
            let verdict = if d.keep { "keep  " } else { "remove" };
            println!(
                "{verdict}  {}  {}  {:<16}  {:<24}  {}",
                d.id.short(),
                local_time(&d.time),
                d.hostname,
                d.paths.join(","),
                d.reasons.join(", ")
            );
        }
    }
    if !args.dry_run {
        for id in &remove {
            repo.delete_snapshot(id)?;
        }
    }
    if ctx.text() {
        let verb = if args.dry_run { "would remove" } else { "removed" };
        println!("{verb} {} snapshot(s)", remove.len());
    }
    let pruned = if args.prune && !remove.is_empty() {
        Some(run_prune(ctx, &repo, &args.prune_flags, args.dry_run)?)
    } else {
        None
    };
    if ctx.args.json {
        print_json(&serde_json::json!({
            "dry_run": args.dry_run,
            "decisions": decisions,
            "removed": remove,
            "prune": pruned,
        }));
    }
    Ok(0)
}

#[derive(clap::Args)]
#[command(long_about = "Delete the data that no snapshot needs. Prune marks unneeded packs in a \
deletion plan, copies the still-needed blobs out of mostly-unused packs, and deletes the marked \
packs once every backup that was running when it marked has finished (and after --grace). \
Backups may run during a prune; a plan that must still wait is finished by the next prune.")]
pub struct PruneArgs {
    /// Compute and report; change nothing.
    #[arg(short = 'n', long)]
    dry_run: bool,
    #[command(flatten)]
    flags: PruneFlags,
}

pub fn prune(ctx: &Context, args: PruneArgs) -> Result<u8> {
    let repo = ctx.open()?;
    let report = run_prune(ctx, &repo, &args.flags, args.dry_run)?;
    if ctx.args.json {
        print_json(&report);
    }
    Ok(0)
}

fn run_prune(ctx: &Context, repo: &Repository, flags: &PruneFlags, dry_run: bool) -> Result<PruneReport> {
    let options = PruneOptions { grace: flags.grace, max_unused: flags.max_unused, dry_run };
    let reporter = ctx.reporter(true);
    let report = prune::run(repo, &options, &reporter, &ctx.cancel);
    reporter.finish();
    let r = report?;
    if ctx.text() {
        let verb = if dry_run { "would" } else { "did" };
        println!("{} packs; {} blobs used, {} unused", r.packs, r.blobs_used, r.blobs_unused);
        println!(
            "{verb} repack {} packs ({}), mark {} packs ({}) and remove {} checkpoints",
            r.packs_repacked,
            bytes(r.bytes_repacked),
            r.packs_unused + r.packs_unindexed + r.packs_repacked,
            bytes(r.bytes_marked),
            r.checkpoints_removed
        );
        println!("deleted {} packs ({})", r.packs_deleted, bytes(r.bytes_deleted));
        if r.sessions_removed > 0 {
            println!("removed {} session marker(s) of processes that are gone", r.sessions_removed);
        }
        if r.plans_pending > 0 {
            println!(
                "{} deletion plan(s) wait for running backups or the grace period; the next prune finishes them",
                r.plans_pending
            );
        }
    }
    Ok(r)
}

#[derive(clap::Args)]
#[command(long_about = "Check that every snapshot's trees and data are present and consistent: \
index files, pack headers, trees. With --read-data (or a subset), also read and decrypt pack \
contents and verify every blob's id. Damaged objects are named with what to do; the exit code is \
1 if any were found.")]
pub struct CheckArgs {
    /// Read and verify all pack data.
    #[arg(long, conflicts_with = "read_data_subset")]
    read_data: bool,
    /// Read and verify a subset: a percentage (10%) or a slice n/m (1/5).
    #[arg(long, value_name = "SUBSET")]
    read_data_subset: Option<ReadData>,
    /// Parallel reads.
    #[arg(long, default_value_t = 4, value_name = "N")]
    threads: usize,
}

pub fn check(ctx: &Context, args: CheckArgs) -> Result<u8> {
    let repo = ctx.open_uncached()?;
    let read_data = if args.read_data { ReadData::All } else { args.read_data_subset.unwrap_or_default() };
    let reporter = ctx.reporter(true);
    let report = check::run(&repo, &CheckOptions { read_data, threads: args.threads.max(1) }, &reporter, &ctx.cancel);
    reporter.finish();
    let report = report?;
    if ctx.args.json {
        print_json(&report);
    } else {
        for n in &report.notes {
            if !ctx.args.quiet {
                println!("note: {}: {}", n.object, n.problem);
            }
        }
        for e in &report.errors {
            println!("error: {}: {}", e.object, e.problem);
        }
        if !ctx.args.quiet {
            println!(
                "checked {} snapshots, {} packs ({} read, {} blobs verified)",
                report.snapshots, report.packs, report.packs_read, report.blobs_read
            );
        }
        if report.is_clean() {
            if !ctx.args.quiet {
                println!("no errors were found");
            }
        } else {
            eprintln!("the repository has {} error(s); see above for what to do", report.errors.len());
        }
    }
    Ok(if report.is_clean() { 0 } else { exit::ERROR })
}

#[derive(clap::Subcommand)]
pub enum RepairCommand {
    /// Rebuild the index from the pack headers (after a lost or damaged index file).
    /// Blob copies recorded as damaged stay out of it.
    Index,
    /// Remove the packs that check, verify or restore found damaged: their
    /// intact blobs are copied into new packs first; then say which
    /// snapshots still need a lost blob (a later backup of the same data
    /// stores fresh copies and makes them whole). Runs alone.
    Packs,
    /// Write a copy of each snapshot that needs a lost blob, without what
    /// cannot be restored (files whose data is lost; directories whose tree
    /// is lost become empty), tagged `repaired`. Back the data up again
    /// first if it still exists: that heals a snapshot without losing anything.
    Snapshots {
        /// Forget each original once its copy is written (prune refuses to
        /// run while a snapshot needs a lost blob).
        #[arg(long)]
        forget: bool,
    },
}

pub fn repair(ctx: &Context, command: RepairCommand) -> Result<u8> {
    let repo = ctx.open_uncached()?;
    match command {
        RepairCommand::Index => {
            let reporter = ctx.reporter(true);
            let report = repair::rebuild_index(&repo, &reporter);
            reporter.finish();
            let report = report?;
            if ctx.args.json {
                print_json(&report);
            } else if !ctx.args.quiet {
                println!(
                    "indexed {} blobs in {} packs; replaced {} index files",
                    report.blobs, report.packs, report.index_files_replaced
                );
                for p in &report.unreadable {
                    println!("unreadable pack left out: {p} (prune removes it)");
                }
            }
        }
        RepairCommand::Packs => {
            let reporter = ctx.reporter(true);
            let report = repair::repair_packs(&repo, &reporter, &ctx.cancel);
            reporter.finish();
            let report = report?;
            if ctx.args.json {
                print_json(&report);
            } else if !ctx.args.quiet {
                for p in &report.packs_removed {
                    println!("removed damaged pack {p}");
                }
                println!(
                    "{} intact blobs copied out; {} lost, of which {} a later backup stored again",
                    report.blobs_salvaged, report.blobs_lost, report.blobs_resupplied
                );
                for l in report.lost.iter().filter(|l| !l.resupplied) {
                    println!("lost: {} (was in {})", l.blob, l.pack);
                }
                for s in &report.affected_snapshots {
                    println!("{s} still needs a lost blob: back the same data up again, or forget it");
                }
            }
            if !report.affected_snapshots.is_empty() {
                return Ok(exit::ERROR);
            }
        }
        RepairCommand::Snapshots { forget } => {
            let reporter = ctx.reporter(true);
            let report = repair::repair_snapshots(&repo, forget, &reporter, &ctx.cancel);
            reporter.finish();
            let report = report?;
            if ctx.args.json {
                print_json(&report);
            } else if !ctx.args.quiet {
                for r in &report.repaired {
                    println!("snapshot {} repaired as {}", &r.old[..8], &r.new[..8]);
                    for path in &r.removed {
                        println!("  left out: {path}");
                    }
                }
                if report.repaired.is_empty() {
                    println!("every snapshot has all it needs");
                } else if report.forgotten > 0 {
                    println!("{} original(s) forgotten; prune frees what only they used", report.forgotten);
                }
            }
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("12h"), Ok(Duration::from_secs(12 * 3600)));
        assert_eq!(parse_duration("1y6m"), Ok(Duration::from_secs((365 + 180) * 86_400)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in ["", "7", "d", "3x", "99999999999999999999y"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn percentages_parse() {
        assert_eq!(parse_percent("10%"), Ok(0.1));
        assert!(parse_percent("150%").is_err());
    }
}
