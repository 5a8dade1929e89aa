//! `qemu`: a running QEMU/KVM virtual machine, through its monitor (QMP),
//! while the guest keeps running (docs/decisions/0013).
//!
//! One backup: the VM's disks are found (`query-block`); the guest agent,
//! if given, freezes the guest's file systems; one QMP `transaction` takes
//! every disk's point in time at once — a `blockdev-backup` per disk into a
//! temporary qcow2 next to a new dirty bitmap — and the guest is thawed at
//! once, whatever happened. QEMU copies what the guest overwrites before it
//! is overwritten, so the copies are the disks at that instant. The copies
//! are then read by Backstop's qcow2 reader (and only the clusters they
//! hold: an incremental holds what the guest changed).
//!
//! Incrementals: each backup leaves a dirty bitmap `backstop-<run>-<disk>` per disk
//! (persistent in a qcow2 disk, so it survives a restart of QEMU), and the
//! snapshot records it as the disk's generation. The next backup copies
//! only what that bitmap marks (`sync=bitmap`, the bitmap left as it was),
//! and only when the parent snapshot recorded that very bitmap, for a disk
//! of the same size and chunk size; otherwise (no parent, the bitmap gone
//! or inconsistent after QEMU crashed, a resized disk) the whole disk is
//! copied and read, and the job log says why. Bitmaps of earlier backups
//! are removed by the next one, so a backup that failed after its
//! transaction costs nothing but a full copy at worst.
//!
//! One backup of a VM at a time on a host (a lock file); its copies are
//! made in a 0700 directory of its own and unlinked once QEMU and this
//! process hold them. Nothing stays behind in the VM: targets, jobs and the new bitmap are
//! removed on every error and on cancellation (which stops QEMU's copy),
//! and nodes or jobs a killed backup left are removed by the next backup
//! of the VM before it starts.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backstop_repo::CancelToken;
use backstop_repo::backup::BackupSource;
use backstop_repo::backup::source::{BlockImage, ChangeMap, EntryData, SourceEntry, SourceTree};
use serde_json::{Value, json};

use crate::image::{chunk_size, parse_size};
use crate::packager::{ConfigField, Packager, SourceKind};
use crate::qcow2::{Backing, Qcow2Image};
use crate::qmp::{Qmp, QmpError};
use crate::{Config, Error, Reach, RestoreContext, RestoreReport, Result, Touches, known_keys, opt_str, req_str};

/// Names of everything a backup makes in the VM start with this.
const PREFIX: &str = "backstop-";
/// How long the monitor may take to answer one command.
const MONITOR_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a guest agent may take to answer (freezing waits for the
/// guest's file systems to flush).
const DEFAULT_AGENT_TIMEOUT: Duration = Duration::from_secs(10);
/// One copy request in flight: the guest's own writes come first (measured:
/// +27..83 % on the guest's writes during a full copy, against +273..297 %
/// with QEMU's 64, and the copy no slower).
const DEFAULT_COPY_WORKERS: u64 = 1;

pub struct QemuConfig {
    /// The VM's QMP socket.
    pub socket: PathBuf,
    /// Its guest agent's socket, if it has one.
    pub agent: Option<PathBuf>,
    pub agent_timeout: Duration,
    /// Where the point-in-time copies go (QEMU writes them, Backstop reads them).
    pub temp_dir: PathBuf,
    /// Bytes per second QEMU may copy (0: as fast as it can).
    pub speed: u64,
    /// Copy requests QEMU keeps in flight (`x-perf.max-workers`): QEMU's
    /// default of 64 floods its main loop and the guest's writes wait
    /// behind them (bench/RESULTS.md, "Running VMs").
    pub copy_workers: u64,
    pub chunk_size: usize,
}

impl QemuConfig {
    pub fn parse(config: &Config) -> Result<QemuConfig> {
        known_keys(
            config,
            "qemu",
            &["socket", "agent", "agent_timeout", "temp_dir", "speed", "copy_workers", "chunk_size"],
        )?;
        let absolute = |key: &str, path: PathBuf| {
            if path.is_absolute() {
                Ok(path)
            } else {
                Err(Error::Invalid(format!("{key} {} must be an absolute path", path.display())))
            }
        };
        let socket = absolute("socket", PathBuf::from(req_str(config, "socket", "qemu")?))?;
        let agent = opt_str(config, "agent")?.map(|a| absolute("agent", PathBuf::from(a))).transpose()?;
        let temp_dir = match opt_str(config, "temp_dir")? {
            Some(dir) => absolute("temp_dir", PathBuf::from(dir))?,
            None => std::env::temp_dir(),
        };
        let agent_timeout = match opt_str(config, "agent_timeout")? {
            None => DEFAULT_AGENT_TIMEOUT,
            Some(s) => match s.trim().trim_end_matches('s').parse::<u64>() {
                Ok(n) if (1..=3600).contains(&n) => Duration::from_secs(n),
                _ => {
                    return Err(Error::Invalid(format!(
                        "agent_timeout {s:?} is not a number of seconds from 1 to 3600"
                    )));
                }
            },
        };
        let speed = match opt_str(config, "speed")? {
            None => 0,
            Some(s) => parse_size(&s)
                .map(|n| n as u64)
                .ok_or_else(|| Error::Invalid(format!("speed {s:?} is not bytes per second (e.g. 100m)")))?,
        };
        let copy_workers = match opt_str(config, "copy_workers")? {
            None => DEFAULT_COPY_WORKERS,
            Some(s) => match s.trim().parse::<u64>() {
                Ok(n) if (1..=64).contains(&n) => n,
                _ => return Err(Error::Invalid(format!("copy_workers {s:?} is not a number from 1 to 64"))),
            },
        };
        let chunk_size = chunk_size(config)?;
        if chunk_size > 2 << 20 {
            return Err(Error::Invalid(format!(
                "chunk_size {chunk_size} is larger than a qcow2 cluster can be (2m), which QEMU's copies are made of"
            )));
        }
        Ok(QemuConfig { socket, agent, agent_timeout, temp_dir, speed, copy_workers, chunk_size })
    }
}

/// One disk of the VM.
#[derive(Debug, Clone)]
struct Disk {
    /// Its entry in the snapshot: `<name>.raw`.
    entry: String,
    device: String,
    node: String,
    size: u64,
    format: String,
    /// Bytes its file takes on the host (`actual-size`), when QEMU says.
    allocated: Option<u64>,
    /// qcow2's compatibility level (`0.10`: no persistent bitmaps).
    compat: Option<String>,
    file: String,
    /// The disk's image has a backing file (its data is a chain of files).
    backed: bool,
    bitmaps: Vec<Value>,
}

/// How a disk is copied this time.
enum Copy {
    Full { why: String },
    Changed { bitmap: String, parent_generation: String },
}

/// A disk's generation as the snapshot records it: its bitmap, size and
/// chunk size, so that an incremental follows only a parent of the same shape.
pub(crate) fn generation(bitmap: &str, size: u64, chunk: usize) -> String {
    format!("{bitmap}/{size}/{chunk}")
}

fn qmp_err(what: &str) -> impl Fn(QmpError) -> std::io::Error + '_ {
    move |e| std::io::Error::other(format!("{what}: {e}"))
}

pub(crate) fn random_hex(bytes: usize) -> String {
    backstop_repo::id::SessionId::random().to_hex()[..bytes * 2].to_string()
}

/// A name fit for a snapshot entry: letters, digits, `.`, `_` and `-`.
pub(crate) fn entry_name(name: &str) -> String {
    let clean: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect();
    let clean = clean.trim_start_matches('.').to_string();
    if clean.is_empty() { "disk".into() } else { clean }
}

/// The VM's writable disks (and notes on what was left out).
fn disks(qmp: &mut Qmp, notes: &mut Vec<String>) -> std::io::Result<Vec<Disk>> {
    let block = qmp.execute("query-block", json!({})).map_err(qmp_err("query-block"))?;
    let mut out: Vec<Disk> = Vec::new();
    for dev in block.as_array().into_iter().flatten() {
        let Some(inserted) = dev.get("inserted") else { continue };
        let text = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or("").to_string();
        let device = text(dev.get("device"));
        let node = text(inserted.get("node-name"));
        let name = if device.is_empty() { node.clone() } else { device.clone() };
        if inserted.get("ro").and_then(Value::as_bool) == Some(true) {
            notes.push(format!("{name}: read-only (a CD-ROM or an image the guest cannot change), not backed up"));
            continue;
        }
        let image = inserted.get("image");
        let size = image.and_then(|i| i.get("virtual-size")).and_then(Value::as_u64);
        let (Some(size), false) = (size, node.is_empty()) else {
            return Err(std::io::Error::other(format!("query-block gave disk {name} without a node name or size")));
        };
        let mut entry = format!("{}.raw", entry_name(&name));
        let mut n = 1;
        while out.iter().any(|d| d.entry == entry) {
            n += 1;
            entry = format!("{}-{n}.raw", entry_name(&name));
        }
        out.push(Disk {
            entry,
            device,
            node,
            size,
            format: text(image.and_then(|i| i.get("format"))),
            allocated: image.and_then(|i| i.get("actual-size")).and_then(Value::as_u64),
            compat: image
                .and_then(|i| i.pointer("/format-specific/data/compat"))
                .and_then(Value::as_str)
                .map(str::to_string),
            file: text(inserted.get("file")),
            backed: inserted.get("backing_file_depth").and_then(Value::as_u64).unwrap_or(0) > 0
                || image.and_then(|i| i.get("backing-image")).is_some(),
            bitmaps: inserted.get("dirty-bitmaps").and_then(Value::as_array).cloned().unwrap_or_default(),
        });
    }
    Ok(out)
}

/// Remove the nodes and jobs a backup that was killed left in the VM.
fn remove_leftovers(qmp: &mut Qmp, notes: &mut Vec<String>) -> std::io::Result<()> {
    let jobs = qmp.execute("query-jobs", json!({})).map_err(qmp_err("query-jobs"))?;
    for job in jobs.as_array().into_iter().flatten() {
        let id = job.get("id").and_then(Value::as_str).unwrap_or("");
        if id.starts_with(PREFIX) {
            let _ = qmp.execute("job-cancel", json!({"id": id}));
            wait_concluded(qmp, &[id.to_string()], false, None)?;
            let _ = qmp.execute("job-dismiss", json!({"id": id}));
            notes.push(format!("removed job {id}, left by an earlier backup"));
        }
    }
    let nodes =
        qmp.execute("query-named-block-nodes", json!({"flat": true})).map_err(qmp_err("query-named-block-nodes"))?;
    for node in nodes.as_array().into_iter().flatten() {
        let name = node.get("node-name").and_then(Value::as_str).unwrap_or("");
        if name.starts_with(PREFIX) {
            qmp.execute("blockdev-del", json!({"node-name": name})).map_err(qmp_err("blockdev-del"))?;
            notes.push(format!("removed block node {name}, left by an earlier backup"));
        }
    }
    Ok(())
}

/// Wait until every job of `ids` has concluded; with `strict`, a job that
/// failed is an error. Once `cancel` is cancelled, stop waiting (the
/// caller's cleanup cancels the jobs). Gives the bytes the jobs copied.
fn wait_concluded(qmp: &mut Qmp, ids: &[String], strict: bool, cancel: Option<&CancelToken>) -> std::io::Result<u64> {
    // Cancelled jobs conclude at once; cleanup does not wait forever for them.
    let deadline = (!strict).then(|| Instant::now() + Duration::from_secs(60));
    loop {
        if deadline.is_some_and(|d| Instant::now() > d) {
            return Err(std::io::Error::other("QEMU's jobs did not end within 60 s of being cancelled"));
        }
        if cancel.is_some_and(CancelToken::is_cancelled) {
            return Err(std::io::Error::other("cancelled while QEMU copied the disks"));
        }
        let jobs = qmp.execute("query-jobs", json!({})).map_err(qmp_err("query-jobs"))?;
        let mut pending = false;
        let mut copied = 0;
        for id in ids {
            let job = jobs.as_array().into_iter().flatten().find(|j| j.get("id").and_then(Value::as_str) == Some(id));
            let Some(job) = job else {
                if strict {
                    // Dismissed by someone else: whether it finished is unknown.
                    return Err(std::io::Error::other(format!("QEMU's copy {id} vanished before it concluded")));
                }
                continue;
            };
            match job.get("status").and_then(Value::as_str) {
                Some("concluded") => {
                    if let (true, Some(error)) = (strict, job.get("error").and_then(Value::as_str)) {
                        return Err(std::io::Error::other(format!("QEMU's copy {id} failed: {error}")));
                    }
                    copied += job.get("total-progress").and_then(Value::as_u64).unwrap_or(0);
                }
                _ => pending = true,
            }
        }
        if !pending {
            return Ok(copied);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What a backup made in the VM, removed when it is dropped unless kept.
struct Made<'a> {
    qmp: &'a mut Qmp,
    jobs: Vec<String>,
    nodes: Vec<String>,
    /// `(node, bitmap)`: the new bitmaps, removed unless the copy succeeded.
    bitmaps: Vec<(String, String)>,
    keep_bitmaps: bool,
}

impl Drop for Made<'_> {
    fn drop(&mut self) {
        for id in &self.jobs {
            let _ = self.qmp.execute("job-cancel", json!({"id": id}));
        }
        let _ = wait_concluded(self.qmp, &self.jobs, false, None);
        for id in &self.jobs {
            let _ = self.qmp.execute("job-dismiss", json!({"id": id}));
        }
        for node in &self.nodes {
            let _ = self.qmp.execute("blockdev-del", json!({"node-name": node}));
        }
        if !self.keep_bitmaps {
            for (node, name) in &self.bitmaps {
                let _ = self.qmp.execute("block-dirty-bitmap-remove", json!({"node": node, "name": name}));
            }
        }
    }
}

/// Freeze the guest's file systems through its agent: the agent to thaw
/// them with, or `None` (crash-consistent) and a note saying why.
fn freeze(config: &QemuConfig, notes: &mut Vec<String>) -> Option<Qmp> {
    let path = config.agent.as_ref()?;
    let frozen = Qmp::agent(path, config.agent_timeout).and_then(|mut qga| {
        let n = qga.execute("guest-fsfreeze-freeze", json!({}))?;
        Ok((qga, n))
    });
    match frozen {
        Ok((qga, n)) => {
            notes.push(format!("the guest agent froze {n} file system(s) for the point in time"));
            Some(qga)
        }
        Err(e) => {
            notes.push(format!(
                "the guest agent at {} did not freeze the guest's file systems ({e}): the backup is crash-consistent",
                path.display()
            ));
            // A freeze that timed out may still happen: thaw on a fresh connection.
            let thawed = Qmp::agent(path, config.agent_timeout)
                .and_then(|mut qga| qga.execute("guest-fsfreeze-thaw", json!({})));
            if let Err(e) = thawed {
                notes.push(format!(
                    "WARNING: the guest agent did not confirm a thaw after the failed freeze ({e}): check the VM now"
                ));
            }
            None
        }
    }
}

fn thaw(config: &QemuConfig, qga: Option<Qmp>, notes: &mut Vec<String>) {
    let Some(mut qga) = qga else { return };
    if let Err(e) = qga.execute("guest-fsfreeze-thaw", json!({})) {
        // Once more on a fresh connection (the agent serves one at a
        // time): the guest must not stay frozen.
        drop(qga);
        let again = config
            .agent
            .as_ref()
            .map(|p| Qmp::agent(p, config.agent_timeout).and_then(|mut q| q.execute("guest-fsfreeze-thaw", json!({}))));
        match again {
            Some(Ok(_)) => {}
            _ => notes.push(format!(
                "WARNING: the guest agent did not confirm thawing the guest's file systems ({e}): check the VM now"
            )),
        }
    }
}

/// Hold the host's lock for backups of the VM at `socket` (a file in the
/// temporary directory named by the socket's path, or another name of the
/// VM), or say another backup of it is running. Returns the lock and the VM's tag in names.
pub(crate) fn lock_vm(socket: &std::path::Path) -> std::io::Result<(File, String)> {
    use std::os::unix::ffi::OsStrExt;
    // FNV-1a of the path: a stable name without a hash crate.
    let hash = socket
        .as_os_str()
        .as_bytes()
        .iter()
        .fold(0xcbf29ce484222325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100000001b3));
    let tag = format!("{hash:016x}");
    let path = std::env::temp_dir().join(format!("{PREFIX}qemu-{tag}.lock"));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(|e| std::io::Error::other(format!("the lock {}: {e}", path.display())))?;
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor we own; released when it is closed.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(std::io::Error::other(format!(
            "another backup of the VM at {} is running on this host (it holds {})",
            socket.display(),
            path.display()
        )));
    }
    Ok((file, tag))
}

/// Remove the copy directories in `temp_dir` of this VM's (`tag`'s)
/// earlier backups that were killed (the caller holds the VM's lock).
pub(crate) fn remove_dead_copies(temp_dir: &std::path::Path, tag: &str) {
    if let Ok(dir) = std::fs::read_dir(temp_dir) {
        for entry in dir.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&format!("{PREFIX}{tag}-")) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

/// How `disk` is copied, given the generation the parent recorded for it.
fn choose(disk: &Disk, parent: Option<&String>, chunk: usize) -> Copy {
    let Some(parent) = parent else {
        return Copy::Full { why: "no parent snapshot holds this disk".into() };
    };
    let mut parts = parent.split('/');
    let (Some(bitmap), Some(size), Some(pchunk)) = (parts.next(), parts.next(), parts.next()) else {
        return Copy::Full { why: format!("the parent recorded generation {parent}, not one of this packager's") };
    };
    if size != disk.size.to_string() || pchunk != chunk.to_string() {
        return Copy::Full { why: "its size or chunk size changed since the parent snapshot".into() };
    }
    let found = disk.bitmaps.iter().find(|b| b.get("name").and_then(Value::as_str) == Some(bitmap));
    let Some(found) = found else {
        return Copy::Full {
            why: format!(
                "QEMU has no dirty bitmap {bitmap} (the parent's) on it: QEMU was restarted or it was removed"
            ),
        };
    };
    let flag = |k: &str| found.get(k).and_then(Value::as_bool).unwrap_or(false);
    if flag("inconsistent") || flag("busy") || !flag("recording") {
        return Copy::Full {
            why: format!(
                "its dirty bitmap {bitmap} is inconsistent (QEMU stopped without saving it), busy or disabled"
            ),
        };
    }
    Copy::Changed { bitmap: bitmap.to_string(), parent_generation: parent.clone() }
}

/// A disk's point-in-time copy, read as the guest's disk. An incremental
/// copy holds only the changed clusters: the engine reads only those (the
/// rest is the parent's), and a read elsewhere is refused, never answered
/// with zeros.
pub(crate) struct Captured {
    inner: Qcow2Image,
    entry: String,
    changed: Option<Vec<(u64, u64)>>,
}

impl Captured {
    /// A whole disk's copy.
    pub(crate) fn full(inner: Qcow2Image, entry: &str) -> Captured {
        Captured { inner, entry: entry.to_string(), changed: None }
    }

    /// A copy of what changed: the `changed` extents (start, end), sorted.
    pub(crate) fn changed(inner: Qcow2Image, entry: &str, changed: Vec<(u64, u64)>) -> Captured {
        Captured { inner, entry: entry.to_string(), changed: Some(changed) }
    }
}

impl BlockImage for Captured {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        if let Some(changed) = &self.changed {
            let end = offset + buf.len().min(self.size().saturating_sub(offset) as usize) as u64;
            // The extent that could hold `offset`: the last starting at or before it.
            let at = changed.partition_point(|&(a, _)| a <= offset);
            if offset < end && (at == 0 || changed[at - 1].1 < end) {
                return Err(std::io::Error::other(format!(
                    "{}: only the blocks the VM changed since the parent snapshot were copied, and the parent's copy \
                     of this disk cannot be used; back up again with --force to read the whole disk",
                    self.entry
                )));
            }
        }
        self.inner.read_at(buf, offset)
    }
    fn data_extents(&self) -> std::io::Result<Vec<(u64, u64)>> {
        match self.changed {
            // An incremental copy's holes are the parent's data, not zeros:
            // read whole (when the engine does not use the change map), it
            // refuses in `read_at` instead of storing zeros.
            Some(_) => Ok(vec![(0, self.size())]),
            None => self.inner.data_extents(),
        }
    }
    fn will_need(&self, ranges: &[(u64, u64)]) {
        self.inner.will_need(ranges)
    }
    fn changes(&self) -> Option<&ChangeMap> {
        self.inner.changes()
    }
    fn generation(&self) -> Option<String> {
        self.inner.generation()
    }
}

/// Take the VM's point in time and return its entries (see the module's
/// documentation).
fn capture(
    config: &QemuConfig,
    parents: &BTreeMap<String, String>,
    cancel: &CancelToken,
    notes: &mut Vec<String>,
) -> std::io::Result<Vec<SourceEntry>> {
    // One backup of a VM at a time on this host: what another one made in
    // it is not a leftover.
    let (_lock, tag) = lock_vm(&config.socket)?;
    remove_dead_copies(&config.temp_dir, &tag);
    let mut qmp = Qmp::monitor(&config.socket, MONITOR_TIMEOUT)
        .map_err(|e| std::io::Error::other(format!("QEMU monitor {}: {e}", config.socket.display())))?;
    remove_leftovers(&mut qmp, notes)?;
    let name = qmp.execute("query-name", json!({})).ok().and_then(|v| v.get("name").cloned());
    let uuid = qmp.execute("query-uuid", json!({})).ok().and_then(|v| v.get("UUID").cloned());
    let disks = disks(&mut qmp, notes)?;
    if disks.is_empty() {
        return Err(std::io::Error::other("the VM has no writable disk"));
    }

    // How each disk is copied this time: decided once, for the room check
    // and for the copy.
    let plans: Vec<Copy> = disks.iter().map(|d| choose(d, parents.get(&d.entry), config.chunk_size)).collect();
    ensure_room(&config.temp_dir, &disks, &plans)?;

    let run = random_hex(4);
    // The copies live in a directory of this backup's own (0700): nobody
    // else on the host reads a disk through them.
    let private = config.temp_dir.join(format!("{PREFIX}{tag}-{run}"));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .map_err(|e| std::io::Error::other(format!("{}: {e}", private.display())))?;
    let taken = copy_disks(config, cancel, notes, &mut qmp, &disks, plans, &run, &private);
    let _ = std::fs::remove_dir(&private);
    let (copies, point) = taken?;

    let mut entries = Vec::new();
    let mut layout = Vec::new();
    for (disk, copy, file, bitmap) in copies {
        let path = config.temp_dir.join(&disk.entry);
        let image = Qcow2Image::from_file(file, &path, Backing::Anywhere)?;
        let now = generation(&bitmap, disk.size, config.chunk_size);
        let image = match copy {
            Copy::Full { why } => {
                notes.push(format!("{}: reading the whole disk: {why}", disk.entry));
                Captured::full(image.with_generation(Some(now)), &disk.entry)
            }
            Copy::Changed { bitmap, parent_generation } => {
                let extents = image.written_extents()?;
                let bytes: u64 = extents.iter().map(|(a, b)| b - a).sum();
                notes.push(format!(
                    "{}: reading only what the guest wrote since the parent snapshot (dirty bitmap {bitmap}): {bytes} bytes",
                    disk.entry
                ));
                let map = ChangeMap {
                    generation: now,
                    parent_generation,
                    extents: extents.iter().map(|&(a, b)| (a, b - a)).collect(),
                };
                Captured::changed(image.with_changes(Some(map)), &disk.entry, extents)
            }
        };
        layout.push(json!({"entry": disk.entry, "device": disk.device, "node": disk.node, "size": disk.size,
                           "format": disk.format, "file": disk.file}));
        entries.push(SourceEntry { path: disk.entry.clone(), mode: 0o600, data: EntryData::Image(Arc::new(image)) });
    }
    notes.push(format!(
        "point in time of {} disk(s) taken; QEMU copied {} in {:.1} s",
        entries.len(),
        mib(point.bytes),
        point.took.as_secs_f64()
    ));
    let vm = json!({"name": name, "uuid": uuid, "disks": layout});
    let vm = serde_json::to_vec_pretty(&vm).map_err(std::io::Error::other)?;
    entries.push(SourceEntry { path: "vm.json".into(), mode: 0o600, data: EntryData::Bytes(vm) });
    Ok(entries)
}

/// Refuse, before anything in the VM changes, a backup whose copies cannot
/// fit into `temp_dir`: a whole copy holds at least the data the disk's
/// file has allocated, an incremental's the bytes its dirty bitmap marks.
/// Found out only by QEMU, a full file system (the host's `/tmp`, maybe)
/// fails the backup midway, and whatever else writes there with it.
fn ensure_room(temp_dir: &std::path::Path, disks: &[Disk], plans: &[Copy]) -> std::io::Result<()> {
    let mut needs = Vec::new();
    for (disk, plan) in disks.iter().zip(plans) {
        let bytes = match plan {
            Copy::Full { .. } => disk.allocated.unwrap_or(0).min(disk.size),
            Copy::Changed { bitmap, .. } => disk
                .bitmaps
                .iter()
                .find(|b| b.get("name").and_then(Value::as_str) == Some(bitmap.as_str()))
                .and_then(|b| b.get("count"))
                .and_then(Value::as_u64)
                .unwrap_or(0),
        };
        needs.push((disk.entry.as_str(), bytes));
    }
    refuse_without_room(temp_dir, &needs)
}

/// An error unless `temp_dir` has room for copies of at least `needs`
/// bytes, by disk entry.
pub(crate) fn refuse_without_room(temp_dir: &std::path::Path, needs: &[(&str, u64)]) -> std::io::Result<()> {
    let need = needs.iter().fold(0u64, |sum, (_, n)| sum.saturating_add(*n));
    let each: Vec<String> = needs.iter().map(|(entry, n)| format!("{entry} {}", mib(*n))).collect();
    let free =
        free_bytes(temp_dir).map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", temp_dir.display())))?;
    if need > free {
        return Err(std::io::Error::new(
            std::io::ErrorKind::StorageFull,
            format!(
                "{} has {} free, and QEMU's copies of the disks for this backup take at least {} ({}): \
                 give the source a temp_dir on a file system with room (temp_dir=DIR), or free space there",
                temp_dir.display(),
                mib(free),
                mib(need),
                each.join(", ")
            ),
        ));
    }
    Ok(())
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

/// Bytes an unprivileged writer may still put on the file system of `dir`.
fn free_bytes(dir: &std::path::Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "a path with a NUL byte"))?;
    // SAFETY: statvfs only writes into `st`, a plain C struct we own, and
    // reads the NUL-terminated path that lives across the call.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// One disk's copy: how it was made, the copy itself, the bitmap that now
/// tracks the disk's writes.
type Copied<'d> = (&'d Disk, Copy, File, String);

/// Take the point in time of `disks` and let QEMU copy them, each as its
/// plan says, into files in `private` (see the module's documentation);
/// what the copy took: bytes and time.
#[allow(clippy::too_many_arguments)]
fn copy_disks<'d>(
    config: &QemuConfig,
    cancel: &CancelToken,
    notes: &mut Vec<String>,
    qmp: &mut Qmp,
    disks: &'d [Disk],
    plans: Vec<Copy>,
    run: &str,
    private: &std::path::Path,
) -> std::io::Result<(Vec<Copied<'d>>, CopyTook)> {
    let mut made = Made { qmp, jobs: Vec::new(), nodes: Vec::new(), bitmaps: Vec::new(), keep_bitmaps: false };
    let mut actions = Vec::new();
    let mut copies = Vec::new();
    for (i, (disk, copy)) in disks.iter().zip(plans).enumerate() {
        // Bitmaps of earlier backups, but the one this copy follows.
        for b in &disk.bitmaps {
            let bname = b.get("name").and_then(Value::as_str).unwrap_or("");
            let followed = matches!(&copy, Copy::Changed { bitmap, .. } if bitmap == bname);
            if bname.starts_with(PREFIX) && !followed {
                made.qmp
                    .execute("block-dirty-bitmap-remove", json!({"node": disk.node, "name": bname}))
                    .map_err(qmp_err("block-dirty-bitmap-remove"))?;
            }
        }
        // qcow2 v3 keeps bitmaps in the file; raw disks and qcow2 v2 (compat
        // 0.10) only in QEMU's memory.
        let persistent = disk.format == "qcow2" && disk.compat.as_deref() != Some("0.10");
        if !persistent {
            notes.push(format!(
                "{}: a {} disk keeps its dirty bitmap only while QEMU runs: after a restart its next backup reads it whole",
                disk.entry,
                if disk.format == "qcow2" { "qcow2 v2 (compat 0.10)" } else { &disk.format }
            ));
        }
        let bitmap = format!("{PREFIX}{run}-{i}");
        // The copy: a new qcow2 QEMU writes and this process reads; its
        // name is gone once both have it open.
        let temp = private.join(format!("{i}.qcow2"));
        let created = std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-o"])
            // QEMU copies in clusters of at least 64 KiB; larger chunks, larger
            // clusters (at most qcow2's 2 MiB).
            .arg(format!("cluster_size={}", config.chunk_size.clamp(64 << 10, 2 << 20)))
            .arg(&temp)
            .arg(disk.size.to_string())
            .output()
            .map_err(|e| std::io::Error::other(format!("qemu-img (to make the copy of {}): {e}", disk.entry)))?;
        if !created.status.success() {
            return Err(std::io::Error::other(format!(
                "qemu-img create {}: {}",
                temp.display(),
                String::from_utf8_lossy(&created.stderr).trim()
            )));
        }
        let file = File::open(&temp);
        let node = format!("{PREFIX}{run}-t{i}");
        let job = format!("{PREFIX}{run}-j{i}");
        let added = made.qmp.execute(
            "blockdev-add",
            // `no-flush`: the copy is read once and unlinked, so closing it
            // need not write it to the disk first (a full copy is the
            // whole disk's data).
            json!({"driver": "qcow2", "node-name": node, "discard": "ignore", "cache": {"no-flush": true},
                   "file": {"driver": "file", "filename": temp.to_string_lossy()}}),
        );
        let _ = std::fs::remove_file(&temp);
        added.map_err(qmp_err("blockdev-add"))?;
        made.nodes.push(node.clone());
        made.jobs.push(job.clone());
        made.bitmaps.push((disk.node.clone(), bitmap.clone()));
        let file = file?;
        let mut backup = json!({"device": disk.node, "target": node, "job-id": job, "auto-dismiss": false,
                                "auto-finalize": true, "speed": config.speed,
                                "x-perf": {"max-workers": config.copy_workers}});
        match &copy {
            // `top` skips what the image never allocated (zeros anyway
            // without a backing file): QEMU copies the data only, and a
            // `speed` limit counts data, not the disk's size. A disk with a
            // backing file needs `full`, its chain's data.
            Copy::Full { .. } => backup["sync"] = json!(if disk.backed { "full" } else { "top" }),
            Copy::Changed { bitmap, .. } => {
                backup["sync"] = json!("bitmap");
                backup["bitmap"] = json!(bitmap);
                backup["bitmap-mode"] = json!("never");
            }
        }
        actions.push(json!({"type": "block-dirty-bitmap-add",
                            "data": {"node": disk.node, "name": bitmap, "persistent": persistent}}));
        actions.push(json!({"type": "blockdev-backup", "data": backup}));
        copies.push((disk, copy, file, bitmap));
    }

    let qga = freeze(config, notes);
    let taken = made.qmp.execute("transaction", json!({"actions": actions}));
    thaw(config, qga, notes);
    taken.map_err(qmp_err("the point-in-time transaction"))?;
    let point = Instant::now();
    let copied = wait_concluded(made.qmp, &made.jobs, true, Some(cancel))?;
    // The copies are read only once QEMU has closed them (flushing what
    // it kept of them in memory): a node that does not go is an error.
    for id in std::mem::take(&mut made.jobs) {
        let _ = made.qmp.execute("job-dismiss", json!({"id": id}));
    }
    for node in std::mem::take(&mut made.nodes) {
        made.qmp.execute("blockdev-del", json!({"node-name": node})).map_err(qmp_err("blockdev-del of a copy"))?;
    }
    made.keep_bitmaps = true;
    drop(made);

    Ok((copies, CopyTook { bytes: copied, took: point.elapsed() }))
}

/// What QEMU's copies took after the point in time.
struct CopyTook {
    bytes: u64,
    took: Duration,
}

pub struct Qemu;

impl Packager for Qemu {
    fn kind(&self) -> SourceKind {
        SourceKind::Qemu
    }

    fn target_key(&self) -> Option<&'static str> {
        Some("socket")
    }

    fn validate(&self, config: &Config) -> Result<()> {
        QemuConfig::parse(config).map(drop)
    }

    fn fields(&self) -> &'static [ConfigField] {
        const FIELDS: &[ConfigField] = &[
            ConfigField::text("socket", "QMP socket", "absolute path of the running VM's QEMU monitor (QMP) socket")
                .required(),
            ConfigField::text(
                "agent",
                "Guest agent socket",
                "the VM's qemu-guest-agent socket, to freeze file systems",
            ),
            ConfigField::text("agent_timeout", "Agent timeout", "seconds the guest agent may take (default 10)"),
            ConfigField::text(
                "temp_dir",
                "Copy directory",
                "where QEMU writes the point-in-time copies (default /tmp); a backup they cannot fit into is refused",
            ),
            ConfigField::text(
                "speed",
                "Copy speed",
                "bytes of data per second QEMU may copy, e.g. 100m (default: no limit)",
            ),
            ConfigField::text(
                "copy_workers",
                "Copy requests",
                "copy requests QEMU keeps in flight, 1 to 64 (default 1: the guest's writes first)",
            ),
            ConfigField::text("chunk_size", "Chunk size", "a power of two from 4k to 16m (default 8k)"),
        ];
        FIELDS
    }

    fn touches(&self, config: &Config, _restore: bool) -> Result<Touches> {
        let c = QemuConfig::parse(config)?;
        let mut out = Touches { paths: vec![c.temp_dir], sockets: vec![c.socket], ..Touches::default() };
        out.sockets.extend(c.agent);
        Ok(out)
    }

    fn backup(&self, config: &Config, reach: &Reach) -> Result<BackupSource> {
        let c = QemuConfig::parse(config)?;
        for socket in std::iter::once(&c.socket).chain(&c.agent) {
            reach.net.check_unix(socket).map_err(|e| Error::Invalid(e.to_string()))?;
        }
        reach.paths.check(&c.temp_dir).map_err(|e| Error::Invalid(format!("{}: {e}", c.temp_dir.display())))?;
        if !c.socket.exists() {
            return Err(Error::Invalid(format!("no QEMU monitor socket at {}", c.socket.display())));
        }
        let label = format!("qemu:{}", c.socket.display());
        Ok(vm_source("qemu", label, c.chunk_size, move |parents, cancel, notes| capture(&c, parents, cancel, notes)))
    }

    fn restore_connection(&self) -> Option<&'static [&'static str]> {
        None
    }

    fn validate_restore(&self, _config: &Config) -> Result<()> {
        Err(not_into_a_vm("qemu"))
    }

    fn restore(&self, _ctx: &RestoreContext, _config: &Config, _reach: &Reach) -> Result<RestoreReport> {
        Err(not_into_a_vm("qemu"))
    }
}

/// A running VM's source: its entries are its disks' point in time, taken
/// once the engine knows the parent's generations; what the capture notes
/// goes to the job's log, also when it fails.
pub(crate) fn vm_source(
    kind: &str,
    label: String,
    chunk_size: usize,
    capture: impl FnOnce(&BTreeMap<String, String>, &CancelToken, &mut Vec<String>) -> std::io::Result<Vec<SourceEntry>>
    + Send
    + 'static,
) -> BackupSource {
    BackupSource::Tree(SourceTree {
        kind: kind.into(),
        label,
        entries: Vec::new(),
        image_chunk_size: chunk_size,
        notes: Vec::new(),
        capture: Some(Box::new(move |parents, cancel, progress| {
            let mut notes = Vec::new();
            let taken = capture(parents, cancel, &mut notes);
            for note in &notes {
                progress.info(note);
            }
            taken
        })),
    })
}

/// A VM's snapshot goes back as disk images, not into the VM.
pub(crate) fn not_into_a_vm(kind: &str) -> Error {
    Error::Invalid(format!(
        "a {kind} snapshot is not restored into a running VM: restore its disks with --to image:PATH \
         (entry=DISK.raw for one, a directory and format=qcow2 for all)"
    ))
}
