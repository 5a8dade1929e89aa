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

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use backstop_repo::backup::source::{
    BlockImage, ChangeMap, EntryData, RawImage, SourceEntry, SourceTree, is_disk_image,
};
use serde_json::Value;

use crate::qcow2::{Qcow2Image, is_qcow2};
use crate::{Config, Error, RestoreContext, RestoreReport, Result, known_keys, opt_bool, opt_str, req_str};

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

fn parse_size(text: &str) -> Option<usize> {
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

impl ImageConfig {
    pub fn parse(config: &Config) -> Result<ImageConfig> {
        known_keys(config, "image", &["path", "cbt", "generation", "chunk_size", "format", "backing_outside"])?;
        let path = PathBuf::from(req_str(config, "path", "image")?);
        if !path.is_absolute() {
            return Err(Error::Invalid(format!("the image path {} must be absolute", path.display())));
        }
        let chunk_size = match opt_str(config, "chunk_size")? {
            None => DEFAULT_CHUNK,
            Some(s) => match parse_size(&s) {
                Some(n) if n.is_power_of_two() && (4096..=16 << 20).contains(&n) => n,
                _ => return Err(Error::Invalid(format!("chunk_size {s:?} is not a power of two from 4k to 16m"))),
            },
        };
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

/// Read a changed-block map.
pub fn read_change_map(path: &Path) -> Result<ChangeMap> {
    let bad = |why: String| Error::Invalid(format!("changed-block map {}: {why}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
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

/// The map `<disk name>.json` in the directory `dir`, if there is one.
fn map_in_dir(dir: Option<&Path>, disk: &str) -> Result<Option<ChangeMap>> {
    match dir.map(|d| d.join(format!("{disk}.json"))) {
        Some(path) if path.exists() => Ok(Some(read_change_map(&path)?)),
        _ => Ok(None),
    }
}

/// Whether `path` in an exported VM's directory is a disk.
fn is_disk(path: &Path, file: &File) -> bool {
    let Ok(meta) = file.metadata() else { return false };
    meta.file_type().is_block_device()
        || path.file_name().is_some_and(|n| is_disk_image(std::os::unix::ffi::OsStrExt::as_bytes(n)))
        || std::os::unix::fs::MetadataExt::blocks(&meta).saturating_mul(512) + (64 << 10) < meta.len()
}

/// One disk as an entry: its name in the snapshot and its guest view.
fn disk(config: &ImageConfig, path: &Path, map: Option<ChangeMap>) -> Result<(String, Arc<dyn BlockImage>)> {
    let io = |e: std::io::Error| Error::Invalid(format!("cannot open the image {}: {e}", path.display()));
    let file = File::open(path).map_err(io)?;
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
        let root = if config.backing_outside { None } else { path.parent() };
        let image =
            Qcow2Image::open(path, root).map_err(io)?.with_changes(map).with_generation(config.generation.clone());
        // Stored as the guest sees it: the name says so.
        Ok((format!("{name}.raw"), Arc::new(image)))
    } else {
        let image = RawImage::open(path).map_err(io)?.with_changes(map).with_generation(config.generation.clone());
        Ok((name, Arc::new(image)))
    }
}

pub fn tree(config: &ImageConfig) -> Result<SourceTree> {
    let meta = std::fs::metadata(&config.path)
        .map_err(|e| Error::Invalid(format!("cannot back up the image {}: {e}", config.path.display())))?;
    let mut entries = Vec::new();
    if meta.is_dir() {
        if config.cbt.as_ref().is_some_and(|c| c.is_file()) {
            return Err(Error::Invalid(
                "for a directory of disks, cbt= names a directory of <disk name>.json maps".into(),
            ));
        }
        let mut names: Vec<PathBuf> = std::fs::read_dir(&config.path)
            .map_err(|e| Error::Invalid(format!("cannot read {}: {e}", config.path.display())))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        names.sort();
        for path in names {
            // Only what is in the directory itself: a symlink could name any file on the host.
            if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
                continue;
            }
            let Ok(file) = File::open(&path) else {
                return Err(Error::Invalid(format!("cannot open {}", path.display())));
            };
            let ft = file.metadata().map(|m| m.file_type()).ok();
            if !ft.is_some_and(|t| t.is_file() || t.is_block_device()) {
                continue; // subdirectories, sockets: not part of an export
            }
            let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if is_disk(&path, &file) {
                let map = map_in_dir(config.cbt.as_deref(), &file_name)?;
                let (name, image) = disk(config, &path, map)?;
                entries.push(SourceEntry { path: name, mode: 0o600, data: EntryData::Image(image) });
            } else {
                let open_path = path.clone();
                let open = move || Ok(Box::new(File::open(&open_path)?) as Box<dyn std::io::Read + Send>);
                entries.push(SourceEntry { path: file_name, mode: 0o644, data: EntryData::Stream(Box::new(open)) });
            }
        }
        if entries.is_empty() {
            return Err(Error::Invalid(format!("{} holds no files", config.path.display())));
        }
    } else {
        let map = match &config.cbt {
            Some(path) if path.is_dir() => {
                let name = config.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                map_in_dir(Some(path), &name)?
            }
            Some(path) => Some(read_change_map(path)?),
            None => None,
        };
        let (name, image) = disk(config, &config.path, map)?;
        entries.push(SourceEntry { path: name, mode: 0o600, data: EntryData::Image(image) });
    }
    Ok(SourceTree {
        kind: "image".into(),
        label: format!("image:{}", config.path.display()),
        entries,
        image_chunk_size: config.chunk_size,
        notes: Vec::new(),
    })
}

/// `--to image:PATH [entry=NAME] [format=raw|qcow2]`: one disk to a raw
/// file (sparse), a block device, or a qcow2 file (through `qemu-img
/// convert`); or every entry into the directory PATH.
pub(crate) fn restore(ctx: &RestoreContext, config: &Config) -> Result<RestoreReport> {
    known_keys(config, "image", &["path", "entry", "format"])?;
    let target = PathBuf::from(req_str(config, "path", "image")?);
    if !target.is_absolute() {
        return Err(Error::Invalid(format!("the restore target {} must be absolute", target.display())));
    }
    let chosen = opt_str(config, "entry")?;
    let mut report = RestoreReport::default();
    let target_meta = std::fs::symlink_metadata(&target).ok();
    if target_meta.as_ref().is_some_and(|m| m.file_type().is_symlink()) {
        return Err(Error::Invalid(format!(
            "the restore target {} is a symlink; name what it points to (readlink -f)",
            target.display()
        )));
    }
    if target_meta.as_ref().is_some_and(|m| m.is_dir()) && chosen.is_none() {
        for (path, _) in &ctx.entries {
            let out = target.join(path);
            // Entry names are single components; no directory on the way may be a symlink.
            let mut dir = target.clone();
            for component in Path::new(path).parent().into_iter().flat_map(Path::components) {
                dir.push(component);
                match std::fs::symlink_metadata(&dir) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => return Err(Error::Invalid(format!("{} is in the way (not a directory)", dir.display()))),
                    Err(_) => {
                        std::fs::create_dir(&dir).map_err(|e| Error::Invalid(format!("{}: {e}", dir.display())))?
                    }
                }
            }
            write_raw(ctx, path, &out)?;
            report.restored.push((path.clone(), out.display().to_string()));
        }
        return Ok(report);
    }
    let (entry, _) = ctx.single(chosen.as_deref(), "disk")?;
    let format = match opt_str(config, "format")?.as_deref() {
        Some("qcow2") => "qcow2",
        Some("raw") => "raw",
        None if target.extension().is_some_and(|e| e == "qcow2") => "qcow2",
        None => "raw",
        Some(other) => return Err(Error::Invalid(format!("format {other:?} is not raw or qcow2"))),
    };
    if format == "qcow2" {
        // Converted beside the target, then renamed over it: qemu-img never
        // writes through whatever sits at the target's name.
        let unique = format!("{}.{}", std::process::id(), ctx.snapshot.time.timestamp_nanos_opt().unwrap_or(0));
        let tmp = target.with_extension(format!("backstop-{unique}.raw"));
        let converted = target.with_extension(format!("backstop-{unique}.qcow2"));
        write_raw(ctx, entry, &tmp)?;
        let mut c = std::process::Command::new("qemu-img");
        c.args(["convert", "-q", "-f", "raw", "-O", "qcow2"]).arg(&tmp).arg(&converted);
        let result = crate::process::run(c);
        let _ = std::fs::remove_file(&tmp);
        if let Err(e) = result {
            let _ = std::fs::remove_file(&converted);
            return Err(e);
        }
        std::fs::rename(&converted, &target)
            .map_err(|e| Error::Invalid(format!("cannot move the image to {}: {e}", target.display())))?;
    } else {
        write_raw(ctx, entry, &target)?;
    }
    report.restored.push((entry.clone(), target.display().to_string()));
    Ok(report)
}

/// Entry `path` into `out`: a regular file gets holes for zero runs, a
/// block device is written whole.
fn write_raw(ctx: &RestoreContext, path: &str, out: &Path) -> Result<()> {
    let io = |e: std::io::Error| Error::Invalid(format!("cannot write {}: {e}", out.display()));
    let device = std::fs::symlink_metadata(out).is_ok_and(|m| m.file_type().is_block_device());
    let file = if device {
        OpenOptions::new().write(true).open(out).map_err(io)?
    } else {
        // Never through a symlink planted at the target.
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(out)
            .map_err(io)?
    };
    if ctx.cancel.is_cancelled() {
        return Err(backstop_repo::Error::Cancelled.into());
    }
    let full = format!("/{path}");
    let n =
        backstop_repo::ops::dump::dump_to_file(ctx.repo, ctx.index, ctx.snapshot, Path::new(&full), &file, !device)?;
    (&file).flush().map_err(io)?;
    ctx.progress.advance(1, n);
    ctx.progress.info(&format!("{path} restored to {} ({n} bytes)", out.display()));
    Ok(())
}
