//! Commands that read snapshots: snapshots, ls, diff, dump.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use backstop_repo::imagefs::ImageView;
use backstop_repo::ops::{diff as diff_op, dump as dump_op, ls as ls_op};
use backstop_repo::tree::{Node, NodeData, NodeType};
use backstop_repo::{Snapshot, SnapshotId, SnapshotKind};

use crate::global::Context;
use crate::output::{bytes, local_time, mode_string, print_json};

/// Which snapshots a command looks at.
#[derive(clap::Args, Default)]
pub struct SnapshotFilter {
    /// Only snapshots of this host (repeatable).
    #[arg(long, value_name = "NAME")]
    pub host: Vec<String>,

    /// Only snapshots with this tag (repeatable: any of them).
    #[arg(long, value_name = "TAG", value_delimiter = ',')]
    pub tag: Vec<String>,

    /// Only snapshots that include this path (repeatable: all of them).
    #[arg(long, value_name = "PATH")]
    pub path: Vec<String>,
}

impl SnapshotFilter {
    pub fn matches(&self, s: &Snapshot) -> bool {
        (self.host.is_empty() || self.host.contains(&s.hostname))
            && (self.tag.is_empty() || self.tag.iter().any(|t| s.has_tag(t)))
            && self.path.iter().all(|p| s.paths.iter().any(|sp| sp == p))
    }
}

pub fn snapshot_json(id: &SnapshotId, s: &Snapshot) -> serde_json::Value {
    let mut v = serde_json::to_value(s).expect("snapshot serialises");
    v["id"] = serde_json::Value::String(id.to_string());
    v["short_id"] = serde_json::Value::String(id.short());
    v
}

#[derive(clap::Args)]
pub struct SnapshotsArgs {
    #[command(flatten)]
    filter: SnapshotFilter,

    /// List the service's catalog instead of a repository (with BACKSTOP_TOKEN); see also --in.
    #[arg(long, value_name = "URL")]
    server: Option<String>,

    /// With --server: only the snapshots of this repository (name or id).
    #[arg(long = "in", value_name = "REPOSITORY", requires = "server")]
    in_repository: Option<String>,
}

pub fn snapshots(ctx: &Context, args: SnapshotsArgs) -> Result<u8> {
    if args.server.is_some() {
        let server =
            crate::cmd::client::ServerArgs { server: args.server.clone(), token: std::env::var("BACKSTOP_TOKEN").ok() };
        return crate::cmd::client::snapshots(ctx, &server, args.in_repository.as_deref());
    }
    let repo = ctx.open()?;
    let (all, damaged) = repo.snapshots_report()?;
    for d in &damaged {
        eprintln!("warning: {}: {} (left out; run `backstop check`)", d.object, d.problem);
    }
    let list: Vec<_> = all.into_iter().filter(|(_, s)| args.filter.matches(s)).collect();
    if ctx.args.json {
        print_json(&list.iter().map(|(id, s)| snapshot_json(id, s)).collect::<Vec<_>>());
        return Ok(0);
    }
    println!("{:<8}  {:<19}  {:<16}  {:<16}  {:>10}  Paths", "ID", "Time", "Host", "Tags", "Size");
    for (id, s) in &list {
        let paths =
            if s.kind == SnapshotKind::Stream { format!("{} (stdin)", s.paths.join(", ")) } else { s.paths.join(", ") };
        println!(
            "{:<8}  {:<19}  {:<16}  {:<16}  {:>10}  {}",
            id.short(),
            local_time(&s.time),
            s.hostname,
            s.tags.join(","),
            bytes(s.summary.bytes_total),
            paths
        );
    }
    if !ctx.args.quiet {
        println!("{} snapshots", list.len());
    }
    Ok(0)
}

#[derive(clap::Args)]
#[command(long_about = "List the entries of a snapshot at or below PATH (default: everything). \
With --json, one JSON object per line.

With --image ENTRY, list the files inside that disk image of the snapshot instead (a VM's \
drive0.raw, an image source's disk), read straight from the repository without restoring the \
disk: ext2, ext3 and ext4 file systems, in MBR or GPT partitions or filling the disk. PATH is \
then a path inside the image whose first component names the partition, as Linux numbers them: \
`backstop ls latest --image drive0.raw /p1/etc`; `/` lists the partitions and everything in them.")]
pub struct LsArgs {
    /// Snapshot id (or a unique prefix), or `latest`.
    #[arg(value_name = "SNAPSHOT")]
    snapshot: String,

    /// Start here (an absolute path as backed up).
    #[arg(value_name = "PATH", default_value = "/")]
    path: PathBuf,

    /// Show mode, owner, size and modification time.
    #[arg(short, long)]
    long: bool,

    /// List the files inside this disk image of the snapshot (PATH is inside it: /p1/etc).
    #[arg(long, value_name = "ENTRY")]
    image: Option<PathBuf>,
}

fn node_json(path: &Path, node: &Node) -> serde_json::Value {
    let mut v = serde_json::json!({
        "path": path.to_string_lossy(),
        "type": node.node_type.as_str(),
        "mode": node.mode,
        "uid": node.uid,
        "gid": node.gid,
        "user": String::from_utf8_lossy(&node.user),
        "group": String::from_utf8_lossy(&node.group),
        "size": node.size,
        "mtime_ns": node.mtime_ns,
    });
    if let NodeData::Symlink { target } = &node.data {
        v["link_target"] = serde_json::Value::String(String::from_utf8_lossy(target).into_owned());
    }
    v
}

pub fn ls(ctx: &Context, args: LsArgs) -> Result<u8> {
    let repo = ctx.open()?;
    let (_, snapshot) = repo.find_snapshot(&args.snapshot)?;
    let index = repo.load_index()?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut write_err = None;
    let mut print = |path: &Path, node: &Node| {
        if write_err.is_none()
            && let Err(e) = print_entry(&mut out, ctx.args.json, args.long, path, node)
        {
            write_err = Some(e);
        }
    };
    match &args.image {
        Some(image) => {
            let view = ImageView::open(&repo, &index, &snapshot, image)?;
            let reporter = ctx.reporter(false);
            let walked = view.walk(&args.path, &reporter, &mut print);
            reporter.finish();
            walked?;
        }
        None => ls_op::walk(&repo, &index, &snapshot, &args.path, &mut print)?,
    }
    match write_err {
        Some(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(0),
        Some(e) => Err(e.into()),
        None => {
            out.flush().ok();
            Ok(0)
        }
    }
}

fn print_entry(out: &mut dyn Write, json: bool, long: bool, path: &Path, node: &Node) -> std::io::Result<()> {
    if json {
        writeln!(out, "{}", node_json(path, node))
    } else if long {
        let mtime = chrono::DateTime::from_timestamp_nanos(node.mtime_ns);
        let mut line = format!(
            "{} {:>8} {:>8} {:>12} {} {}",
            mode_string(node.node_type, node.mode),
            name_or_id(&node.user, node.uid),
            name_or_id(&node.group, node.gid),
            node.size,
            local_time(&mtime),
            path.display()
        );
        if let NodeData::Symlink { target } = &node.data {
            line.push_str(" -> ");
            line.push_str(&String::from_utf8_lossy(target));
        }
        writeln!(out, "{line}")
    } else {
        writeln!(out, "{}", path.display())
    }
}

fn name_or_id(name: &[u8], id: u32) -> String {
    if name.is_empty() { id.to_string() } else { String::from_utf8_lossy(name).into_owned() }
}

#[derive(clap::Args)]
#[command(long_about = "List the paths that differ between two snapshots, one per line with a \
code: + added, - removed, M content modified, U metadata only, T type changed.")]
pub struct DiffArgs {
    #[arg(value_name = "SNAPSHOT_A")]
    a: String,
    #[arg(value_name = "SNAPSHOT_B")]
    b: String,
}

pub fn diff(ctx: &Context, args: DiffArgs) -> Result<u8> {
    let repo = ctx.open()?;
    let (id_a, a) = repo.find_snapshot(&args.a)?;
    let (id_b, b) = repo.find_snapshot(&args.b)?;
    let index = repo.load_index()?;
    let mut changes = Vec::new();
    let json = ctx.args.json;
    let stats = diff_op::diff(&repo, &index, &a.tree, &b.tree, &mut |path, change, node| {
        if json {
            changes.push(serde_json::json!({ "path": path.to_string_lossy(), "change": change, "type": node.node_type.as_str() }));
        } else {
            let suffix = if node.node_type == NodeType::Dir { "/" } else { "" };
            println!("{}    {}{suffix}", change.code(), path.display());
        }
    })?;
    if json {
        print_json(&serde_json::json!({ "a": id_a, "b": id_b, "changes": changes, "stats": stats }));
    } else if !ctx.args.quiet {
        println!(
            "\n{} added, {} removed, {} modified, {} metadata only, {} type changed",
            stats.added, stats.removed, stats.modified, stats.metadata, stats.type_changed
        );
    }
    Ok(0)
}

#[derive(clap::Args)]
#[command(long_about = "Write the content of one file of a snapshot to standard output, or with \
--output into a file or onto a block device at the same offsets (a disk image back onto a \
volume; runs of zeros become holes in a regular file). For a snapshot of a stream (backup \
--stdin), PATH may be left out. Output is raw bytes; --json has no effect.

With --image ENTRY, PATH is a file inside that disk image of the snapshot (as for `ls --image`): \
`backstop dump latest --image drive0.raw /p1/etc/hostname`. Only the chunks of the image that \
the file system and the file need are read from the repository.")]
pub struct DumpArgs {
    /// Snapshot id (or a unique prefix), or `latest`.
    #[arg(value_name = "SNAPSHOT")]
    snapshot: String,

    /// The file, as an absolute path as backed up (or its name for a stream).
    #[arg(value_name = "PATH")]
    path: Option<PathBuf>,

    /// Write into this file or block device instead of standard output.
    #[arg(short, long, value_name = "FILE", conflicts_with = "image")]
    output: Option<PathBuf>,

    /// PATH is a file inside this disk image of the snapshot (/p1/etc/hostname).
    #[arg(long, value_name = "ENTRY")]
    image: Option<PathBuf>,
}

pub fn dump(ctx: &Context, args: DumpArgs) -> Result<u8> {
    let repo = ctx.open()?;
    let (_, snapshot) = repo.find_snapshot(&args.snapshot)?;
    let path = Path::new("/").join(args.path.unwrap_or_default());
    let index = repo.load_index()?;
    if let Some(output) = &args.output {
        let device = std::fs::metadata(output).is_ok_and(|m| {
            use std::os::unix::fs::FileTypeExt;
            m.file_type().is_block_device()
        });
        // A device keeps its size and may hold old data: write every byte.
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(!device)
            .truncate(!device)
            .open(output)
            .with_context(|| format!("cannot open {}", output.display()))?;
        dump_op::dump_to_file(&repo, &index, &snapshot, &path, &file, !device)
            .with_context(|| format!("cannot dump {} into {}", path.display(), output.display()))?;
        return Ok(0);
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
    let dumped = match &args.image {
        Some(image) => ImageView::open(&repo, &index, &snapshot, image).and_then(|view| {
            // What is said of the file system (a replayed journal) goes to
            // standard error, never into the dumped bytes.
            let reporter = ctx.reporter(false);
            let dumped = view.dump(&path, &mut out, &reporter);
            reporter.finish();
            dumped
        }),
        None => dump_op::dump(&repo, &index, &snapshot, &path, &mut out),
    };
    match dumped.and_then(|_| out.flush().map_err(|e| backstop_repo::Error::io("standard output", e))) {
        Err(backstop_repo::Error::Io { error, .. }) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(0),
        r => r.map(|_| 0).with_context(|| format!("cannot dump {}", path.display())),
    }
}
