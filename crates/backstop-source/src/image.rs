//! `image`: virtual-machine disks — raw files, block devices and qcow2
//! files (read natively, stored as the guest sees them) — in fixed-size
//! chunks with holes skipped, and changed-block maps so an incremental
//! reads only what changed. A directory is a VM as hypervisors export it:
//! its disks get image chunking, its other files (descriptors) are stored
//! as they are.
//!
//! A changed-block map is JSON:
//! `{"generation": 2, "parent_generation": 1, "extents": [[offset, length], …]}`
//! (offsets in the guest's view). It is used only when the parent
//! snapshot recorded `parent_generation` for the image; otherwise the
//! whole image is read and compared by block hashes, and the job log says
//! why. `generation=G` records the generation of an image backed up
//! without a map (a first full backup).

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{Read as _, Write as _};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use backstop_confine::{Dir, Links, PathScope};
use backstop_repo::backup::BackupSource;
use backstop_repo::backup::source::{
    BlockImage, ChangeMap, EntryData, RawImage, SourceEntry, SourceTree, is_disk_image,
};
use serde_json::Value;

use crate::packager::{ConfigField, Packager, SourceKind};
use crate::qcow2::{Backing, Qcow2Image, is_qcow2};
use crate::{
    Config, Error, Reach, RestoreContext, RestoreReport, Result, Touches, known_keys, opt_bool, opt_str, req_str,
};

/// 8 KiB: a scattered 4 KiB guest write reads one chunk (2× the change)
/// and stores one (see docs/decisions/0007).
pub const DEFAULT_CHUNK: usize = 8 << 10;

pub struct ImageConfig {
    pub path: PathBuf,
    /// A map file (single image) or a directory of `<disk name>.json` maps.
    pub cbt: Option<PathBuf>,
    pub generation: Option<String>,
    pub chunk_size: usize,
    /// `auto` (qcow2 when the name ends in `.qcow2`, never by the content: a guest
    /// could write a qcow2 header into a raw disk), `raw` (the bytes as they are), `qcow2`.
    pub format: String,
    /// Let qcow2 backing files lie outside the image's directory.
    pub backing_outside: bool,
}

pub(crate) fn parse_size(text: &str) -> Option<usize> {
    let t = text.trim().to_ascii_lowercase();
    let (num, mult) = if let Some(n) = t.strip_suffix("kib").or_else(|| t.strip_suffix('k')) {
        (n, 1 << 10)
    } else if let Some(n) = t.strip_suffix("mib").or_else(|| t.strip_suffix('m')) {
        (n, 1 << 20)
    } else {
        (t.as_str(), 1)
    };
    num.trim().parse::<usize>().ok()?.checked_mul(mult)
}

/// A configuration's `chunk_size` (default [`DEFAULT_CHUNK`]).
pub(crate) fn chunk_size(config: &Config) -> Result<usize> {
    Ok(match opt_str(config, "chunk_size")? {
        None => DEFAULT_CHUNK,
        Some(s) => match parse_size(&s) {
            Some(n) if n.is_power_of_two() && (4096..=16 << 20).contains(&n) => n,
            _ => return Err(Error::Invalid(format!("chunk_size {s:?} is not a power of two from 4k to 16m"))),
        },
    })
}

impl ImageConfig {
    pub fn parse(config: &Config) -> Result<ImageConfig> {
        known_keys(config, "image", &["path", "cbt", "generation", "chunk_size", "format", "backing_outside"])?;
        let path = PathBuf::from(req_str(config, "path", "image")?);
        if !path.is_absolute() {
            return Err(Error::Invalid(format!("the image path {} must be absolute", path.display())));
        }
        let chunk_size = chunk_size(config)?;
        let format = opt_str(config, "format")?.unwrap_or_else(|| "auto".into());
        if !["auto", "raw", "qcow2"].contains(&format.as_str()) {
            return Err(Error::Invalid(format!("format {format:?} is not auto, raw or qcow2")));
        }
        Ok(ImageConfig {
            path,
            cbt: opt_str(config, "cbt")?.map(PathBuf::from),
            generation: opt_str(config, "generation")?,
            chunk_size,
            format,
            backing_outside: opt_bool(config, "backing_outside")?,
        })
    }
}

/// Read a changed-block map from a file.
pub fn read_change_map(path: &Path) -> Result<ChangeMap> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Invalid(format!("changed-block map {}: {e}", path.display())))?;
    parse_change_map(path, &text)
}

/// A changed-block map from its text (`path` for messages).
pub fn parse_change_map(path: &Path, text: &str) -> Result<ChangeMap> {
    let bad = |why: String| Error::Invalid(format!("changed-block map {}: {why}", path.display()));
    let v: Value = serde_json::from_str(text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let generation = |key: &str| match v.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        _ => Err(bad(format!("{key} is missing"))),
    };
    let generation_now = generation("generation")?;
    let parent_generation = generation("parent_generation")?;
    let mut extents = Vec::new();
    for e in v.get("extents").and_then(Value::as_array).ok_or_else(|| bad("extents is missing".into()))? {
        let pair = e.as_array().filter(|a| a.len() == 2).and_then(|a| Some((a[0].as_u64()?, a[1].as_u64()?)));
        match pair {
            Some((offset, len)) if len > 0 && offset.checked_add(len).is_some() => extents.push((offset, len)),
            _ => return Err(bad(format!("extent {e} is not [offset, length]"))),
        }
    }
    // Sorted and merged: maps may come concatenated or out of order.
    extents.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(extents.len());
    for (offset, len) in extents {
        match merged.last_mut() {
            Some((o, l)) if offset <= *o + *l => *l = (*l).max(offset + len - *o),
            _ => merged.push((offset, len)),
        }
    }
    Ok(ChangeMap { generation: generation_now, parent_generation, extents: merged })
}

/// A map read from an open file.
fn change_map_from(mut file: File, path: &Path) -> Result<ChangeMap> {
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(|e| Error::Invalid(format!("changed-block map {}: {e}", path.display())))?;
    parse_change_map(path, &text)
}

/// The map `<disk name>.json` in the directory of maps `dir`, if there is one.
fn map_in_dir(dir: Option<&Dir>, disk: &str) -> Result<Option<ChangeMap>> {
    let Some(dir) = dir else { return Ok(None) };
    let name = format!("{disk}.json");
    match dir.open_file(Path::new(&name), libc::O_RDONLY | libc::O_NONBLOCK, 0, Links::Refuse) {
        Ok(file) => Ok(Some(change_map_from(file, &dir.path().join(&name))?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::Invalid(format!("changed-block map {}: {e}", dir.path().join(&name).display()))),
    }
}

/// Whether `file` (named `name`) in an exported VM's directory is a disk.
fn is_disk(name: &OsStr, file: &File) -> bool {
    let Ok(meta) = file.metadata() else { return false };
    std::os::unix::fs::FileTypeExt::is_block_device(&meta.file_type())
        || is_disk_image(name.as_bytes())
        || std::os::unix::fs::MetadataExt::blocks(&meta).saturating_mul(512) + (64 << 10) < meta.len()
}

/// Entry `name` of `dir`, opened without waiting and checked to be what the
/// listing said (`st`): the same file, a regular file or a block device.
fn open_as_listed(dir: &Dir, name: &OsStr, st: &libc::stat) -> std::io::Result<File> {
    let file = dir.open_file(Path::new(name), libc::O_RDONLY | libc::O_NONBLOCK, 0, Links::Refuse)?;
    let now = file.metadata()?;
    let (ino, kind) = (std::os::unix::fs::MetadataExt::ino(&now), std::os::unix::fs::MetadataExt::mode(&now));
    if ino != st.st_ino || kind & libc::S_IFMT != st.st_mode & libc::S_IFMT {
        return Err(std::io::Error::other("was replaced while the backup ran"));
    }
    Ok(file)
}

/// A block device in a confined tenant's tree is a device node it made on
/// its own storage: it may name any disk of the host, so it is refused.
fn device_allowed(scope: &PathScope, file: &File, path: &Path) -> Result<()> {
    let is_device = file.metadata().is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_block_device(&m.file_type()));
    if is_device && !scope.is_any() {
        return Err(Error::Invalid(format!(
            "{} is a block device; a tenant's images are regular files (only the system tenant backs up devices)",
            path.display()
        )));
    }
    Ok(())
}

/// One disk as an entry: its name in the snapshot and its guest view.
/// `file` is open; `dir` is the directory it is in (for backing files).
fn disk(
    config: &ImageConfig,
    scope: &PathScope,
    file: File,
    path: &Path,
    dir: (&Dir, &Path),
    map: Option<ChangeMap>,
) -> Result<(String, Arc<dyn BlockImage>)> {
    let io = |e: std::io::Error| Error::Invalid(format!("cannot open the image {}: {e}", path.display()));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "disk".into());
    // `auto` goes by the name, never by the content: a guest may write a
    // qcow2 header into its raw disk (qemu's format-probing problem).
    let qcow2 = match config.format.as_str() {
        "raw" => false,
        "qcow2" => true,
        _ => name.to_ascii_lowercase().ends_with(".qcow2"),
    };
    if qcow2 && !is_qcow2(&file) {
        return Err(Error::Invalid(format!("{} is not a qcow2 image (give format=raw)", path.display())));
    }
    if qcow2 {
        let backing = if config.backing_outside {
            Backing::Anywhere
        } else {
            Backing::Within { dir: dir.0, path: dir.1, devices: scope.is_any() }
        };
        let image = Qcow2Image::from_file(file, path, backing)
            .map_err(io)?
            .with_changes(map)
            .with_generation(config.generation.clone());
        // Stored as the guest sees it: the name says so.
        Ok((format!("{name}.raw"), Arc::new(image)))
    } else {
        let image =
            RawImage::from_file(file, path).map_err(io)?.with_changes(map).with_generation(config.generation.clone());
        Ok((name, Arc::new(image)))
    }
}

/// What `path` is, opened beneath `scope`: a directory, or a file (opened
/// without waiting on a FIFO).
enum Opened {
    Dir(Dir),
    File(File),
}

fn open_in_scope(scope: &PathScope, path: &Path) -> std::io::Result<Opened> {
    match scope.open_dir(path) {
        Ok(dir) => Ok(Opened::Dir(dir)),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
            scope.open_file(path, libc::O_RDONLY | libc::O_NONBLOCK, 0).map(Opened::File)
        }
        Err(e) => Err(e),
    }
}

/// The source tree of `config`: every path is opened beneath `scope`
/// once, and read through that handle.
pub fn tree(config: &ImageConfig, scope: &PathScope) -> Result<SourceTree> {
    let cannot = |e: std::io::Error| Error::Invalid(format!("cannot back up the image {}: {e}", config.path.display()));
    let maps = match &config.cbt {
        None => None,
        Some(cbt) => Some(
            open_in_scope(scope, cbt)
                .map_err(|e| Error::Invalid(format!("changed-block map {}: {e}", cbt.display())))?,
        ),
    };
    let mut entries = Vec::new();
    match open_in_scope(scope, &config.path).map_err(cannot)? {
        Opened::Dir(dir) => {
            let maps = match maps {
                None => None,
                Some(Opened::Dir(d)) => Some(d),
                Some(Opened::File(_)) => {
                    return Err(Error::Invalid(
                        "for a directory of disks, cbt= names a directory of <disk name>.json maps".into(),
                    ));
                }
            };
            let dir = Arc::new(dir);
            let listed =
                dir.read_dir().map_err(|e| Error::Invalid(format!("cannot read {}: {e}", config.path.display())))?;
            for (name, st) in listed {
                let path = config.path.join(&name);
                // Only what is in the directory itself: a symlink could name any
                // file on the host; subdirectories, sockets and FIFOs are not part
                // of an export.
                let kind = st.st_mode & libc::S_IFMT;
                if kind != libc::S_IFREG && kind != libc::S_IFBLK {
                    continue;
                }
                let file = open_as_listed(&dir, &name, &st)
                    .map_err(|e| Error::Invalid(format!("cannot open {}: {e}", path.display())))?;
                device_allowed(scope, &file, &path)?;
                let file_name = name.to_string_lossy().into_owned();
                if is_disk(&name, &file) {
                    let map = map_in_dir(maps.as_ref(), &file_name)?;
                    let (entry, image) = disk(config, scope, file, &path, (&dir, &config.path), map)?;
                    entries.push(SourceEntry { path: entry, mode: 0o600, data: EntryData::Image(image) });
                } else {
                    // Kept with the mode it has; read later (an export may
                    // hold thousands of files: not all held open), and only
                    // if it is still the file it was.
                    drop(file);
                    let mode = st.st_mode & 0o7777;
                    let (dir, name) = (dir.clone(), name.clone());
                    let open = move || {
                        let f = open_as_listed(&dir, &name, &st)?;
                        Ok(Box::new(f) as Box<dyn std::io::Read + Send>)
                    };
                    entries.push(SourceEntry { path: file_name, mode, data: EntryData::Stream(Box::new(open)) });
                }
            }
            if entries.is_empty() {
                return Err(Error::Invalid(format!("{} holds no files", config.path.display())));
            }
        }
        Opened::File(file) => {
            device_allowed(scope, &file, &config.path)?;
            let kind = file.metadata().map(|m| m.file_type()).map_err(cannot)?;
            if !kind.is_file() && !std::os::unix::fs::FileTypeExt::is_block_device(&kind) {
                return Err(Error::Invalid(format!(
                    "{} is neither a regular file, a block device nor a directory",
                    config.path.display()
                )));
            }
            let map = match maps {
                None => None,
                Some(Opened::Dir(d)) => {
                    let name = config.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                    map_in_dir(Some(&d), &name)?
                }
                Some(Opened::File(f)) => Some(change_map_from(f, config.cbt.as_deref().unwrap_or(Path::new("")))?),
            };
            let (parent, _) = scope.parent_of(&config.path).map_err(cannot)?;
            let parent_path = config.path.parent().unwrap_or(Path::new("/"));
            let (name, image) = disk(config, scope, file, &config.path, (&parent, parent_path), map)?;
            entries.push(SourceEntry { path: name, mode: 0o600, data: EntryData::Image(image) });
        }
    }
    Ok(SourceTree {
        kind: "image".into(),
        label: format!("image:{}", config.path.display()),
        entries,
        image_chunk_size: config.chunk_size,
        notes: Vec::new(),
        capture: None,
    })
}

/// `--to image:PATH [entry=NAME] [format=raw|qcow2]`: one disk to a raw
/// file (sparse), a block device, or a qcow2 file (through `qemu-img
/// convert`); or every entry into the directory PATH. The target is found
/// beneath `scope` and written through directory handles: nothing is
/// written through a link, whoever planted it and whenever.
pub(crate) fn restore(ctx: &RestoreContext, config: &Config, scope: &PathScope) -> Result<RestoreReport> {
    known_keys(config, "image", &["path", "entry", "format"])?;
    let target = PathBuf::from(req_str(config, "path", "image")?);
    if !target.is_absolute() {
        return Err(Error::Invalid(format!("the restore target {} must be absolute", target.display())));
    }
    let chosen = opt_str(config, "entry")?;
    let mut report = RestoreReport::default();
    let in_place = |e: std::io::Error| Error::Invalid(format!("the restore target {}: {e}", target.display()));
    let (parent, name) = scope.parent_of(&target).map_err(in_place)?;
    let target_stat = parent.stat_at(&name).ok();
    let kind = target_stat.map(|st| st.st_mode & libc::S_IFMT);
    if kind == Some(libc::S_IFLNK) {
        return Err(Error::Invalid(format!(
            "the restore target {} is a symlink; name what it points to (readlink -f)",
            target.display()
        )));
    }
    let format = opt_str(config, "format")?;
    if let Some(other) = format.as_deref().filter(|f| !["raw", "qcow2"].contains(f)) {
        return Err(Error::Invalid(format!("format {other:?} is not raw or qcow2")));
    }
    if kind == Some(libc::S_IFDIR) && chosen.is_none() {
        // Every entry beneath the directory (a VM: its disks and its
        // configuration); with format=qcow2 the disks as qcow2 files.
        let dir = parent.open_dir(Path::new(&name), Links::Refuse).map_err(in_place)?;
        let mut written = std::collections::HashSet::new();
        for (path, node) in &ctx.entries {
            // Entry names are single components; directories on the way are
            // made beneath the target, never through a link.
            let rel = Path::new(path);
            let (sub, leaf) = match rel.parent().filter(|p| !p.as_os_str().is_empty()) {
                Some(p) => (dir.create_dir_all(p, 0o755, Links::Refuse).map_err(in_place)?, rel.file_name()),
                None => (dir.try_clone().map_err(in_place)?, rel.file_name()),
            };
            let leaf = leaf.ok_or_else(|| Error::Invalid(format!("{path:?} is not a file name")))?;
            if format.as_deref() == Some("qcow2") && is_disk_image(leaf.as_bytes()) {
                let qcow2 = Path::new(leaf).with_extension("qcow2");
                let out = target.join(path).with_extension("qcow2");
                if !written.insert(out.clone()) {
                    return Err(Error::Invalid(format!(
                        "two disks of the snapshot become {}; restore them one at a time with entry=",
                        out.display()
                    )));
                }
                convert_to_qcow2(ctx, path, &sub, qcow2.as_os_str(), &out)?;
                report.restored.push((path.clone(), out.display().to_string()));
                continue;
            }
            let out = target.join(path);
            write_raw(ctx, path, &sub, leaf, &out, scope)?;
            // The mode the snapshot recorded for it (for a tenant, without
            // setuid and setgid bits: the file is the worker's).
            let mode = if scope.is_any() { node.mode & 0o7777 } else { node.mode & 0o1777 };
            sub.chmod_at(leaf, mode).map_err(|e| Error::Invalid(format!("{}: {e}", out.display())))?;
            report.restored.push((path.clone(), out.display().to_string()));
        }
        return Ok(report);
    }
    let (entry, _) = ctx.single(chosen.as_deref(), "disk")?;
    let format = match format.as_deref() {
        Some(chosen) => chosen,
        None if target.extension().is_some_and(|e| e == "qcow2") => "qcow2",
        None => "raw",
    };
    if format == "qcow2" {
        convert_to_qcow2(ctx, entry, &parent, &name, &target)?;
    } else {
        write_raw(ctx, entry, &parent, &name, &target, scope)?;
    }
    report.restored.push((entry.clone(), target.display().to_string()));
    Ok(report)
}

/// A name for a file of our own beside `name` in its directory.
fn beside(name: &OsStr, ext: &str) -> OsString {
    let mut random = [0u8; 8];
    let _ = getrandom::fill(&mut random);
    let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
    let mut out = name.to_os_string();
    out.push(format!(".backstop-{hex}.{ext}"));
    out
}

/// The disk `entry` as a qcow2 file at `name` of `dir`: written raw to a
/// file of our own there, converted by `qemu-img` into a second one, and
/// renamed over the target. `qemu-img` gets both as descriptors we opened
/// (`/proc/self/fd/N`), so it resolves no path a tenant could change.
fn convert_to_qcow2(ctx: &RestoreContext, entry: &str, dir: &Dir, name: &OsStr, target: &Path) -> Result<()> {
    let io = |e: std::io::Error| Error::Invalid(format!("cannot write {}: {e}", target.display()));
    let (raw_name, qcow2_name) = (beside(name, "raw"), beside(name, "qcow2"));
    let create = |n: &OsStr| {
        dir.open_file(
            Path::new(n),
            libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
            0o600,
            Links::Refuse,
        )
    };
    let raw = create(&raw_name).map_err(io)?;
    let result = (|| {
        dump_into(ctx, entry, &raw, true, target)?;
        let qcow2 = create(&qcow2_name).map_err(io)?;
        let mut c = std::process::Command::new("qemu-img");
        c.args(["convert", "-q", "-f", "raw", "-O", "qcow2", "/proc/self/fd/3", "/proc/self/fd/4"]);
        crate::process::pass_fds(&mut c, &[&raw, &qcow2]);
        crate::process::run(c)?;
        // Checked before it takes the target's place: the qcow2 file reads
        // as the snapshot's bytes did.
        let mut c = std::process::Command::new("qemu-img");
        c.args(["compare", "-q", "-f", "raw", "-F", "qcow2", "/proc/self/fd/3", "/proc/self/fd/4"]);
        crate::process::pass_fds(&mut c, &[&raw, &qcow2]);
        crate::process::run(c).map_err(|e| {
            Error::Invalid(format!("the qcow2 image made for {} differs from the snapshot: {e}", target.display()))
        })?;
        dir.rename_at(&qcow2_name, dir, name, false)
            .map_err(|e| Error::Invalid(format!("cannot move the image to {}: {e}", target.display())))
    })();
    let _ = dir.remove_at(&raw_name);
    if result.is_err() {
        let _ = dir.remove_at(&qcow2_name);
    }
    result
}

/// Entry `path` into `name` of `dir` (`out` for messages): a regular file
/// gets holes for zero runs, a block device (the system tenant's only) is
/// written whole.
fn write_raw(ctx: &RestoreContext, path: &str, dir: &Dir, name: &OsStr, out: &Path, scope: &PathScope) -> Result<()> {
    let io = |e: std::io::Error| Error::Invalid(format!("cannot write {}: {e}", out.display()));
    let device = dir.stat_at(name).is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFBLK);
    if device && !scope.is_any() {
        return Err(Error::Invalid(format!(
            "{} is a block device; a tenant restores images into regular files",
            out.display()
        )));
    }
    let flags = if device {
        libc::O_WRONLY
    } else {
        // Never through a symlink planted at the target, never waiting on a FIFO.
        libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_NOFOLLOW | libc::O_NONBLOCK
    };
    let file = dir.open_file(Path::new(name), flags, 0o600, Links::Refuse).map_err(io)?;
    // What was opened, not what was there a moment before: a device swapped
    // in for a regular file is not written to.
    let opened = file.metadata().map_err(io)?.file_type();
    let is_device = std::os::unix::fs::FileTypeExt::is_block_device(&opened);
    if is_device != device || (!device && !opened.is_file()) {
        return Err(Error::Invalid(format!(
            "{} changed while it was restored into; nothing was written",
            out.display()
        )));
    }
    dump_into(ctx, path, &file, !device, out)
}

/// Write entry `path` of the snapshot into `file`.
fn dump_into(ctx: &RestoreContext, path: &str, file: &File, sparse: bool, out: &Path) -> Result<()> {
    if ctx.cancel.is_cancelled() {
        return Err(backstop_repo::Error::Cancelled.into());
    }
    let full = format!("/{path}");
    let n = backstop_repo::ops::dump::dump_to_file(ctx.repo, ctx.index, ctx.snapshot, Path::new(&full), file, sparse)?;
    let mut f = file;
    f.flush().map_err(|e| Error::Invalid(format!("cannot write {}: {e}", out.display())))?;
    ctx.progress.advance(1, n);
    ctx.progress.info(&format!("{path} restored to {} ({n} bytes)", out.display()));
    Ok(())
}

/// The `image` kind.
pub struct Image;

impl Packager for Image {
    fn kind(&self) -> SourceKind {
        SourceKind::Image
    }

    fn target_key(&self) -> Option<&'static str> {
        Some("path")
    }

    fn validate(&self, config: &Config) -> Result<()> {
        ImageConfig::parse(config).map(drop)
    }

    fn fields(&self) -> &'static [ConfigField] {
        const FIELDS: &[ConfigField] = &[
            ConfigField::text("path", "Image", "absolute path of a raw or qcow2 disk image, or a directory of them")
                .required(),
            ConfigField::text(
                "cbt",
                "Changed-block map",
                "a JSON extent map from the hypervisor (or a directory of <disk>.json maps)",
            ),
            ConfigField::text("generation", "Map generation", "the map's generation, recorded with the snapshot"),
            ConfigField::text("chunk_size", "Chunk size", "a power of two from 4k to 16m (default 8k)"),
            ConfigField::text("format", "Format", "auto (by the name), raw or qcow2"),
            ConfigField::flag(
                "backing_outside",
                "Backing files anywhere",
                "let qcow2 backing files lie outside the image's directory",
            ),
        ];
        FIELDS
    }

    fn touches(&self, config: &Config, _restore: bool) -> Result<Touches> {
        let c = ImageConfig::parse(config)?;
        let mut out = Touches { paths: vec![c.path], ..Touches::default() };
        out.paths.extend(c.cbt);
        if c.backing_outside {
            out.workers_own = Some("backing_outside lets an image read files outside its directory".into());
        }
        Ok(out)
    }

    fn backup(&self, config: &Config, reach: &Reach) -> Result<BackupSource> {
        Ok(BackupSource::Tree(tree(&ImageConfig::parse(config)?, &reach.paths)?))
    }

    fn restore_connection(&self) -> Option<&'static [&'static str]> {
        Some(&["path", "format"])
    }

    fn validate_restore(&self, config: &Config) -> Result<()> {
        self.validate(&crate::without_restore_keys(config))
    }

    fn restore(&self, ctx: &RestoreContext, config: &Config, reach: &Reach) -> Result<RestoreReport> {
        restore(ctx, config, &reach.paths)
    }
}
