//! `libvirt`: a running VM that libvirt manages (its QEMU monitor is
//! libvirt's), through libvirt's own backup API — `virsh backup-begin` in
//! push mode with checkpoints — while the guest keeps running
//! (docs/decisions/0013).
//!
//! One backup: the domain's disks are found (`domblklist`, `dumpxml`); the
//! guest agent, if the domain has one, freezes the guest's file systems
//! (`domfsfreeze`) for the instant libvirt starts the backup job and
//! creates a checkpoint `backstop-<run>` (a dirty bitmap in every qcow2
//! disk), then thaws them (`domfsthaw`), whatever happened. libvirt has
//! QEMU copy each disk's point in time into a qcow2 file in this backup's
//! directory, which Backstop's qcow2 reader then reads, as for `qemu`.
//!
//! Incrementals: the snapshot records the checkpoint as each disk's
//! generation; the next backup copies only what changed since it
//! (`backupmode='incremental'`), and only when the parent recorded that
//! checkpoint for a disk of the same size and chunk size and libvirt still
//! has it; otherwise the disk is copied whole and the log says why. Raw
//! disks have no bitmaps in libvirt: always copied whole. Checkpoints of
//! earlier backups, but the one followed, are deleted by the next backup
//! (libvirt merges their bitmaps), and a failed backup deletes the
//! checkpoint it made. A copy job a killed backup left is waited for,
//! and its directory removed.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backstop_repo::CancelToken;
use backstop_repo::backup::BackupSource;
use backstop_repo::backup::source::{ChangeMap, EntryData, SourceEntry};
use serde_json::json;

use crate::image::chunk_size;
use crate::packager::{ConfigField, Packager, SourceKind};
use crate::qcow2::{Backing, Qcow2Image};
use crate::qemu::{
    Captured, entry_name, generation, lock_vm, not_into_a_vm, random_hex, refuse_without_room, remove_dead_copies,
    vm_source,
};
use crate::{Config, Error, Reach, RestoreContext, RestoreReport, Result, Touches, known_keys, opt_str, req_str};

const PREFIX: &str = "backstop-";
/// The system daemon's socket, which `qemu:///system` reaches.
const SYSTEM_SOCKET: &str = "/run/libvirt/libvirt-sock";
/// How long a copy job a killed backup left may take to end.
const LEFTOVER_WAIT: Duration = Duration::from_secs(120);

pub struct LibvirtConfig {
    /// The domain's name (or uuid).
    pub domain: String,
    /// `qemu:///system`, or `qemu+unix:///system?socket=PATH`.
    pub uri: String,
    /// The daemon's socket the URI reaches (what a tenant must be granted).
    pub socket: PathBuf,
    /// Where libvirt writes the point-in-time copies. QEMU, running as
    /// libvirt's user, must reach it: the backup's own directory in it is
    /// searchable (0711), not listable.
    pub temp_dir: PathBuf,
    pub chunk_size: usize,
}

impl LibvirtConfig {
    pub fn parse(config: &Config) -> Result<LibvirtConfig> {
        known_keys(config, "libvirt", &["domain", "uri", "temp_dir", "chunk_size"])?;
        let domain = req_str(config, "domain", "libvirt")?;
        if domain.is_empty() || domain.len() > 256 || domain.starts_with('-') || domain.chars().any(char::is_control) {
            return Err(Error::Invalid(format!("domain {domain:?} is not a libvirt domain name")));
        }
        let uri = opt_str(config, "uri")?.unwrap_or_else(|| "qemu:///system".into());
        let socket = match uri.as_str() {
            "qemu:///system" => PathBuf::from(SYSTEM_SOCKET),
            other => match other.strip_prefix("qemu+unix:///system?socket=") {
                Some(path) if path.starts_with('/') && !path.contains('&') => PathBuf::from(path),
                _ => {
                    return Err(Error::Invalid(format!(
                        "uri {other:?}: a local daemon is reached as qemu:///system or qemu+unix:///system?socket=PATH"
                    )));
                }
            },
        };
        let temp_dir = match opt_str(config, "temp_dir")? {
            Some(dir) if dir.starts_with('/') => PathBuf::from(dir),
            Some(dir) => return Err(Error::Invalid(format!("temp_dir {dir} must be an absolute path"))),
            None => std::env::temp_dir(),
        };
        let chunk_size = chunk_size(config)?;
        if chunk_size > 2 << 20 {
            return Err(Error::Invalid(format!(
                "chunk_size {chunk_size} is larger than a qcow2 cluster can be (2m), which the copies are made of"
            )));
        }
        Ok(LibvirtConfig { domain, uri, socket, temp_dir, chunk_size })
    }

    /// `virsh` on this daemon: its standard output, or an error with what it said.
    fn virsh(&self, args: &[&str]) -> std::io::Result<String> {
        let out = Command::new("virsh")
            .arg("-c")
            .arg(&self.uri)
            .args(args)
            .output()
            .map_err(|e| std::io::Error::other(format!("virsh (libvirt-clients) cannot start: {e}")))?;
        if !out.status.success() {
            let said = String::from_utf8_lossy(&out.stderr);
            let said: Vec<&str> =
                said.lines().map(|l| l.trim().trim_start_matches("error: ")).filter(|l| !l.is_empty()).collect();
            let said = said.join(": ");
            return Err(std::io::Error::other(format!("virsh {}: {}", args.first().unwrap_or(&""), said)));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// One disk of the domain.
#[derive(Debug, Clone)]
struct Disk {
    entry: String,
    target: String,
    source: String,
    size: u64,
    /// Bytes its file takes on the host (`domblkinfo`'s allocation).
    allocated: Option<u64>,
    qcow2: bool,
}

/// The value of `name='…'` (or `"…"`) in an XML element's text.
fn attr<'x>(element: &'x str, name: &str) -> Option<&'x str> {
    for quote in ['\'', '"'] {
        let key = format!(" {name}={quote}");
        if let Some(at) = element.find(&key) {
            let rest = &element[at + key.len()..];
            return rest.find(quote).map(|end| &rest[..end]);
        }
    }
    None
}

/// The domain's writable disks (and notes on what was left out).
fn disks(c: &LibvirtConfig, notes: &mut Vec<String>) -> std::io::Result<Vec<Disk>> {
    let xml = c.virsh(&["dumpxml", &c.domain])?;
    let mut out: Vec<Disk> = Vec::new();
    for block in xml.split("<disk ").skip(1) {
        let block = block.split("</disk>").next().unwrap_or_default();
        let head = format!(" {}", block.split('>').next().unwrap_or_default());
        let Some(target) = block.find("<target ").and_then(|at| attr(&block[at..], "dev")) else { continue };
        if attr(&head, "device") != Some("disk") {
            continue;
        }
        if block.contains("<readonly/>") {
            notes.push(format!("{target}: read-only, left out"));
            continue;
        }
        let source = block.find("<source ").and_then(|at| {
            let s = &block[at..];
            attr(s, "file").or_else(|| attr(s, "dev"))
        });
        let Some(source) = source else {
            notes.push(format!("{target}: not a file or block device (a network disk), left out"));
            continue;
        };
        let qcow2 = block.find("<driver ").and_then(|at| attr(&block[at..], "type")) == Some("qcow2");
        let info = c.virsh(&["domblkinfo", &c.domain, target])?;
        let field = |name: &str| {
            info.lines().find_map(|l| l.strip_prefix(name).map(str::trim)).and_then(|n| n.parse::<u64>().ok())
        };
        let size = field("Capacity:")
            .ok_or_else(|| std::io::Error::other(format!("virsh domblkinfo {target}: no capacity in {info:?}")))?;
        let allocated = field("Allocation:");
        let mut entry = format!("{}.raw", entry_name(target));
        while out.iter().any(|d| d.entry == entry) {
            entry = format!("{}-{}", out.len(), entry);
        }
        out.push(Disk { entry, target: target.to_string(), source: source.to_string(), size, allocated, qcow2 });
    }
    Ok(out)
}

/// The state of the domain's current job: `None` when there is none.
fn job_type(c: &LibvirtConfig, completed: bool) -> std::io::Result<(String, String)> {
    let args: &[&str] = if completed { &["domjobinfo", &c.domain, "--completed"] } else { &["domjobinfo", &c.domain] };
    let info = c.virsh(args)?;
    let field =
        |name: &str| info.lines().find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string())).unwrap_or_default();
    Ok((field("Job type:"), field("Error message:")))
}

/// Wait for the domain's backup job to end: its error, if it failed.
fn wait_job(c: &LibvirtConfig, cancel: Option<&CancelToken>, deadline: Option<Instant>) -> std::io::Result<()> {
    loop {
        let (state, _) = job_type(c, false)?;
        if state == "None" || state.is_empty() {
            break;
        }
        if cancel.is_some_and(CancelToken::is_cancelled) {
            let _ = c.virsh(&["domjobabort", &c.domain]);
            return Err(std::io::Error::other("cancelled"));
        }
        if deadline.is_some_and(|d| Instant::now() > d) {
            return Err(std::io::Error::other(format!(
                "a job ({state}) is still running on domain {} (another backup?); try again when it ended, \
                 or stop it with `virsh domjobabort {}`",
                c.domain, c.domain
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// The checkpoints of the domain that this packager made.
fn our_checkpoints(c: &LibvirtConfig) -> std::io::Result<Vec<String>> {
    let list = c.virsh(&["checkpoint-list", &c.domain, "--name"])?;
    Ok(list.lines().map(str::trim).filter(|n| n.starts_with(PREFIX)).map(str::to_string).collect())
}

/// How a disk is copied this time: whole (and why), or since a checkpoint.
fn choose(disk: &Disk, parent: Option<&String>, chunk: usize, checkpoints: &[String]) -> Result<String, String> {
    if !disk.qcow2 {
        return Err("libvirt keeps checkpoints of qcow2 disks only".into());
    }
    let Some(parent) = parent else { return Err("no parent snapshot holds this disk".into()) };
    let mut parts = parent.split('/');
    let (Some(checkpoint), Some(size), Some(pchunk)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!("the parent recorded generation {parent}, not one of this packager's"));
    };
    if size != disk.size.to_string() || pchunk != chunk.to_string() {
        return Err("its size or chunk size changed since the parent snapshot".into());
    }
    if !checkpoints.iter().any(|c| c == checkpoint) {
        return Err(format!("libvirt has no checkpoint {checkpoint} (the parent's) any more"));
    }
    Ok(checkpoint.to_string())
}

fn xml_text(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('\'', "&apos;").replace('"', "&quot;")
}

/// Take the domain's point in time and return its entries.
fn capture(
    c: &LibvirtConfig,
    parents: &BTreeMap<String, String>,
    cancel: &CancelToken,
    notes: &mut Vec<String>,
) -> std::io::Result<Vec<SourceEntry>> {
    let (_lock, tag) = lock_vm(std::path::Path::new(&format!("{}/{}", c.uri, c.domain)))?;
    // A copy job a killed backup of this domain left ends by itself.
    wait_job(c, None, Some(Instant::now() + LEFTOVER_WAIT))?;
    remove_dead_copies(&c.temp_dir, &tag);
    let uuid = c.virsh(&["domuuid", &c.domain])?.trim().to_string();
    let disks = disks(c, notes)?;
    if disks.is_empty() {
        return Err(std::io::Error::other(format!("domain {} has no writable disk", c.domain)));
    }
    let checkpoints = our_checkpoints(c)?;
    let plans: Vec<Result<String, String>> =
        disks.iter().map(|d| choose(d, parents.get(&d.entry), c.chunk_size, &checkpoints)).collect();
    ensure_room(c, &disks, &plans)?;
    // Checkpoints of earlier backups, but those followed now.
    for old in &checkpoints {
        if !plans.iter().any(|p| p.as_ref() == Ok(old)) {
            c.virsh(&["checkpoint-delete", &c.domain, old])?;
        }
    }

    let run = random_hex(4);
    let private = c.temp_dir.join(format!("{PREFIX}{tag}-{run}"));
    // Searchable, not listable: QEMU (libvirt's user) opens the copies by name.
    std::fs::DirBuilder::new()
        .mode(0o711)
        .create(&private)
        .map_err(|e| std::io::Error::other(format!("{}: {e}", private.display())))?;
    let taken = copy_disks(c, cancel, notes, &disks, &plans, &run, &private);
    let taken = taken.and_then(|checkpoint| {
        let mut entries = Vec::new();
        let mut layout = Vec::new();
        for (i, (disk, plan)) in disks.iter().zip(&plans).enumerate() {
            let copy = private.join(format!("{i}.qcow2"));
            // An incremental copy names the live disk as its backing file:
            // only its own clusters are read, so the name is dropped.
            let rebased = Command::new("qemu-img").args(["rebase", "-u", "-b", ""]).arg(&copy).output()?;
            if !rebased.status.success() {
                return Err(std::io::Error::other(format!(
                    "qemu-img rebase {}: {}",
                    copy.display(),
                    String::from_utf8_lossy(&rebased.stderr).trim()
                )));
            }
            let file = File::open(&copy)?;
            let _ = std::fs::remove_file(&copy);
            let image = Qcow2Image::from_file(file, &copy, Backing::Anywhere)?;
            let now = generation(&checkpoint, disk.size, c.chunk_size);
            let captured = match plan {
                Err(why) => {
                    notes.push(format!("{}: reading the whole disk: {why}", disk.entry));
                    Captured::full(image.with_generation(Some(now)), &disk.entry)
                }
                Ok(parent_checkpoint) => {
                    let extents = image.written_extents()?;
                    let bytes: u64 = extents.iter().map(|(a, b)| b - a).sum();
                    notes.push(format!(
                        "{}: reading only what the guest wrote since checkpoint {parent_checkpoint}: {bytes} bytes",
                        disk.entry
                    ));
                    let map = ChangeMap {
                        generation: now,
                        parent_generation: parents.get(&disk.entry).cloned().unwrap_or_default(),
                        extents: extents.iter().map(|&(a, b)| (a, b - a)).collect(),
                    };
                    Captured::changed(image.with_changes(Some(map)), &disk.entry, extents)
                }
            };
            layout.push(json!({"entry": disk.entry, "target": disk.target, "size": disk.size,
                               "format": if disk.qcow2 { "qcow2" } else { "raw" }, "file": disk.source}));
            entries.push(SourceEntry {
                path: disk.entry.clone(),
                mode: 0o600,
                data: EntryData::Image(Arc::new(captured)),
            });
        }
        let vm = json!({"name": c.domain, "uuid": uuid, "checkpoint": checkpoint, "disks": layout});
        let vm = serde_json::to_vec_pretty(&vm).map_err(std::io::Error::other)?;
        entries.push(SourceEntry { path: "vm.json".into(), mode: 0o600, data: EntryData::Bytes(vm) });
        Ok(entries)
    });
    let _ = std::fs::remove_dir_all(&private);
    taken
}

/// Refuse, before anything changes, a backup whose copies cannot fit into
/// `temp_dir` (see the qemu kind's): a whole copy holds at least the disk
/// file's allocated bytes, an incremental what libvirt counts as changed
/// since its checkpoint (`checkpoint-dumpxml --size`).
fn ensure_room(c: &LibvirtConfig, disks: &[Disk], plans: &[Result<String, String>]) -> std::io::Result<()> {
    let mut needs = Vec::new();
    for (disk, plan) in disks.iter().zip(plans) {
        let bytes = match plan {
            Err(_) => disk.allocated.unwrap_or(0).min(disk.size),
            Ok(checkpoint) => c
                .virsh(&["checkpoint-dumpxml", &c.domain, checkpoint, "--size"])
                .ok()
                .and_then(|xml| {
                    xml.split("<disk ")
                        .skip(1)
                        .find(|d| attr(&format!(" {d}"), "name") == Some(disk.target.as_str()))
                        .and_then(|d| attr(&format!(" {d}"), "size").and_then(|n| n.parse::<u64>().ok()))
                })
                .unwrap_or(0),
        };
        needs.push((disk.entry.as_str(), bytes));
    }
    refuse_without_room(&c.temp_dir, &needs)
}

/// Start the backup job (the guest frozen around its start), wait for
/// it, and return the checkpoint it made; on failure, the checkpoint is
/// deleted again.
fn copy_disks(
    c: &LibvirtConfig,
    cancel: &CancelToken,
    notes: &mut Vec<String>,
    disks: &[Disk],
    plans: &[Result<String, String>],
    run: &str,
    private: &std::path::Path,
) -> std::io::Result<String> {
    let checkpoint = format!("{PREFIX}{run}");
    let mut backup = String::from("<domainbackup mode='push'><disks>");
    let mut marks = format!("<domaincheckpoint><name>{checkpoint}</name><disks>");
    for (i, (disk, plan)) in disks.iter().zip(plans).enumerate() {
        let target = xml_text(&disk.target);
        let mode = match plan {
            Ok(parent) => format!("backupmode='incremental' incremental='{}'", xml_text(parent)),
            Err(_) => "backupmode='full'".into(),
        };
        let file = xml_text(&private.join(format!("{i}.qcow2")).to_string_lossy());
        backup.push_str(&format!(
            "<disk name='{target}' backup='yes' type='file' {mode}><target file='{file}'/><driver type='qcow2'/></disk>"
        ));
        let mark = if disk.qcow2 { "bitmap" } else { "no" };
        marks.push_str(&format!("<disk name='{target}' checkpoint='{mark}'/>"));
    }
    backup.push_str("</disks></domainbackup>");
    marks.push_str("</disks></domaincheckpoint>");
    let (backup_xml, marks_xml) = (private.join("backup.xml"), private.join("checkpoint.xml"));
    std::fs::write(&backup_xml, backup)?;
    std::fs::write(&marks_xml, marks)?;

    let frozen = c.virsh(&["domfsfreeze", &c.domain]);
    if let Err(e) = &frozen {
        notes.push(format!("the guest's file systems were not frozen ({e}): the backup is crash-consistent"));
    }
    let begun = c.virsh(&["backup-begin", &c.domain, &backup_xml.to_string_lossy(), &marks_xml.to_string_lossy()]);
    if frozen.is_ok()
        && let Err(e) = c.virsh(&["domfsthaw", &c.domain]).or_else(|_| c.virsh(&["domfsthaw", &c.domain]))
    {
        notes.push(format!(
            "WARNING: the guest's file systems may still be frozen ({e}): run `virsh domfsthaw {}`",
            c.domain
        ));
    }
    begun?;
    let point = Instant::now();
    let done = wait_job(c, Some(cancel), None).and_then(|()| {
        let (state, error) = job_type(c, true)?;
        if state == "Completed" {
            Ok(())
        } else {
            Err(std::io::Error::other(format!("libvirt's backup job ended {state}: {error}")))
        }
    });
    if let Err(e) = done {
        let _ = c.virsh(&["checkpoint-delete", &c.domain, &checkpoint]);
        return Err(e);
    }
    notes.push(format!(
        "point in time of {} disk(s) taken (checkpoint {checkpoint}); libvirt copied what it needed in {:.1} s",
        disks.len(),
        point.elapsed().as_secs_f64()
    ));
    Ok(checkpoint)
}

pub struct Libvirt;

impl Packager for Libvirt {
    fn kind(&self) -> SourceKind {
        SourceKind::Libvirt
    }

    fn target_key(&self) -> Option<&'static str> {
        Some("domain")
    }

    fn validate(&self, config: &Config) -> Result<()> {
        LibvirtConfig::parse(config).map(drop)
    }

    fn fields(&self) -> &'static [ConfigField] {
        const FIELDS: &[ConfigField] = &[
            ConfigField::text("domain", "Domain", "the libvirt domain's name").required(),
            ConfigField::text("uri", "libvirt URI", "qemu:///system (default) or qemu+unix:///system?socket=PATH"),
            ConfigField::text(
                "temp_dir",
                "Copy directory",
                "where libvirt writes the point-in-time copies (default /tmp; QEMU's user must reach it)",
            ),
            ConfigField::text("chunk_size", "Chunk size", "a power of two from 4k to 16m (default 8k)"),
        ];
        FIELDS
    }

    fn touches(&self, config: &Config, _restore: bool) -> Result<Touches> {
        let c = LibvirtConfig::parse(config)?;
        Ok(Touches { paths: vec![c.temp_dir], sockets: vec![c.socket], ..Touches::default() })
    }

    fn backup(&self, config: &Config, reach: &Reach) -> Result<BackupSource> {
        let c = LibvirtConfig::parse(config)?;
        reach.net.check_unix(&c.socket).map_err(|e| Error::Invalid(e.to_string()))?;
        reach.paths.check(&c.temp_dir).map_err(|e| Error::Invalid(format!("{}: {e}", c.temp_dir.display())))?;
        if !c.socket.exists() {
            return Err(Error::Invalid(format!(
                "no libvirt daemon answers at {} (is libvirtd running?)",
                c.socket.display()
            )));
        }
        let label = format!("libvirt:{}", c.domain);
        Ok(vm_source("libvirt", label, c.chunk_size, move |parents, cancel, notes| capture(&c, parents, cancel, notes)))
    }

    fn restore_connection(&self) -> Option<&'static [&'static str]> {
        None
    }

    fn validate_restore(&self, _config: &Config) -> Result<()> {
        Err(not_into_a_vm("libvirt"))
    }

    fn restore(&self, _ctx: &RestoreContext, _config: &Config, _reach: &Reach) -> Result<RestoreReport> {
        Err(not_into_a_vm("libvirt"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_read_with_either_quote() {
        assert_eq!(attr(" device='disk' type=\"file\"", "device"), Some("disk"));
        assert_eq!(attr(" device='disk' type=\"file\"", "type"), Some("file"));
        assert_eq!(attr(" device='disk'", "dev"), None, "a prefix of another name is not it");
    }

    #[test]
    fn only_local_daemons_are_reached() {
        let parse = |v: serde_json::Value| LibvirtConfig::parse(v.as_object().unwrap());
        assert_eq!(parse(json!({"domain": "vm1"})).unwrap().socket, PathBuf::from(SYSTEM_SOCKET));
        let c = parse(json!({"domain": "vm1", "uri": "qemu+unix:///system?socket=/srv/lv.sock"})).unwrap();
        assert_eq!(c.socket, PathBuf::from("/srv/lv.sock"));
        assert!(parse(json!({"domain": "vm1", "uri": "qemu+ssh://root@h/system"})).is_err());
        assert!(parse(json!({"domain": "--help"})).is_err(), "not an option of virsh");
    }
}
