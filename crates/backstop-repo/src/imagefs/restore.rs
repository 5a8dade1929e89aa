//! Restoring files from inside a disk image into a directory, as the
//! snapshot restore does (the same target handling: opened once, every
//! entry resolved beneath it without following links, symlinks last).
//! Paths keep their place in the image: `/p1/etc/hostname` restores to
//! `TARGET/p1/etc/hostname`. An include that is a plain path is looked up
//! directly, so only the directories on its way are read.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use backstop_backend::{Dir, Links};

use super::ext::Inode;
use super::{CopyError, ImageView, Piece, Place, Volume, copy_file, node_of};
use crate::error::{Error, Result};
use crate::filter::PathFilter;
use crate::progress::{CancelToken, Progress};
use crate::restore::{
    Meta, RestoreOptions, RestoreSummary, apply_file_metadata, create_file_at, ensure_dir, restore_hard_link,
    restore_special, restore_symlink,
};
use crate::tree::{Node, NodeType};

/// Restore the files of `view` selected by `options` (include and
/// exclude patterns match paths inside the image) into `options.target`.
pub fn restore(
    view: &ImageView,
    options: &RestoreOptions,
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<RestoreSummary> {
    let target = options.paths.create_dir_all(&options.target, 0o777).map_err(|e| Error::io(&options.target, e))?;
    let include = PathFilter::new(&options.include)?;
    let mut run = Run {
        view,
        target: &target,
        options,
        exclude: PathFilter::new(&options.exclude)?,
        include,
        meta: Meta::for_target(&options.paths),
        progress,
        cancel,
        summary: RestoreSummary::default(),
        pending: Vec::new(),
        dirs: Vec::new(),
        late: Vec::new(),
        links: HashMap::new(),
        above: Vec::new(),
    };
    // Plain paths are looked up; patterns need the whole tree walked.
    let plain = |p: &String| p.starts_with('/') && !p.contains(['*', '?', '[', '\\']);
    let starts: Vec<PathBuf> = if !options.include.is_empty() && options.include.iter().all(plain) {
        options.include.iter().map(PathBuf::from).collect()
    } else {
        vec![PathBuf::from("/")]
    };
    for start in &starts {
        run.start(start)?;
    }
    run.finish();
    Ok(run.summary)
}

enum Late {
    Symlink(PathBuf, Node),
    Special(PathBuf, Node),
    HardLink(PathBuf, PathBuf),
}

struct Run<'r, 'a> {
    view: &'r ImageView<'a>,
    target: &'r Dir,
    options: &'r RestoreOptions,
    include: PathFilter,
    exclude: PathFilter,
    meta: Meta,
    progress: &'r dyn Progress,
    cancel: &'r CancelToken,
    summary: RestoreSummary,
    /// Directories on the way to what is restored, made when something
    /// below them is.
    pending: Vec<PathBuf>,
    /// Directories made, with their metadata, set last.
    dirs: Vec<(PathBuf, Node)>,
    late: Vec<Late>,
    /// The first path of each hard-linked inode, by (partition, inode).
    links: HashMap<(u64, u32), PathBuf>,
    /// The directories above the entry being restored, by inode.
    above: Vec<u32>,
}

impl Run<'_, '_> {
    fn start(&mut self, start: &Path) -> Result<()> {
        let view = self.view;
        match view.place(start)? {
            Place::Partitions => {
                for p in view.partitions() {
                    let at = PathBuf::from(format!("/p{}", p.number));
                    match view.with_partition_root(p, self.progress, |vol, root| self.entry(vol, &at, root, false)) {
                        Err(Error::Cancelled) => return Err(Error::Cancelled),
                        Err(e) => self.warn(&at, &format!("not restored: {e}")),
                        Ok(()) => {}
                    }
                }
                Ok(())
            }
            Place::Volume { partition, path } => view.with_volume(partition, self.progress, |vol| {
                let inode = view.lookup(vol, partition, &path)?;
                let at = Path::new("/").join(&vol.prefix).join(super::join(&path));
                // The directories above the start are made plain.
                let mut above = PathBuf::new();
                if let Some(parent) = rel(&at).parent() {
                    for c in parent.components() {
                        above.push(c);
                        self.pending.push(above.clone());
                    }
                }
                self.entry(vol, &at, &inode, false)?;
                self.pending.clear();
                Ok(())
            }),
        }
    }

    fn warn(&mut self, path: &Path, message: &str) {
        self.summary.errors += 1;
        self.progress.warning(&self.options.target.join(rel(path)), message);
    }

    /// Make the directories still pending above what is restored now.
    fn make_pending(&mut self) -> Result<()> {
        for dir in std::mem::take(&mut self.pending) {
            ensure_dir(self.target, &dir).map_err(|e| Error::io(self.options.target.join(&dir), e))?;
        }
        Ok(())
    }

    /// Restore the entry `inode` found at `path` inside the image (and what
    /// is below it); `selected` when an include matched above it.
    fn entry(&mut self, vol: &Volume, path: &Path, inode: &Inode, selected: bool) -> Result<()> {
        if self.cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        let is_dir = inode.kind == NodeType::Dir;
        if self.exclude.matches(path, is_dir) {
            return Ok(());
        }
        let here = selected || self.include.is_empty() || self.include.matches(path, is_dir);
        let dest = rel(path).to_path_buf();
        let name =
            path.file_name().map_or_else(|| vol.prefix.as_os_str().as_bytes().to_vec(), |n| n.as_bytes().to_vec());
        let node = node_of(vol, &name, inode);
        if is_dir {
            // The target itself stands for the root of a whole-disk file system.
            let root = dest.as_os_str().is_empty();
            if let Err(e) = super::enter(&mut self.above, inode) {
                let message = format!("not restored: {}", super::disk_error(&self.view.entry, None, e));
                self.warn(path, &message);
                return Ok(());
            }
            let depth = self.pending.len();
            if !root {
                self.pending.push(dest.clone());
            }
            if here {
                self.make_pending()?;
            }
            for (child, child_inode) in self.view.children(vol, inode, path, self.progress) {
                self.entry(vol, &path.join(OsStr::from_bytes(&child)), &child_inode, here)?;
            }
            // Made (when selected, or for something below it): its metadata goes back last.
            if !root && self.pending.len() <= depth {
                self.dirs.push((dest, node));
                self.summary.dirs += 1;
            }
            self.pending.truncate(depth);
            self.above.pop();
            return Ok(());
        }
        if !here {
            return Ok(());
        }
        self.make_pending()?;
        match inode.kind {
            NodeType::File => {
                if inode.links > 1 {
                    let key = (vol.device, inode.ino);
                    if let Some(first) = self.links.get(&key) {
                        self.late.push(Late::HardLink(dest, first.clone()));
                        return Ok(());
                    }
                    self.links.insert(key, dest.clone());
                }
                match self.file(vol, &dest, inode, &node) {
                    Ok(()) => self.summary.files += 1,
                    Err(CopyError::Out(Error::Cancelled)) => return Err(Error::Cancelled),
                    Err(e) => {
                        let message = match e {
                            CopyError::Disk(e) => super::disk_error(&self.view.entry, None, e).to_string(),
                            CopyError::Out(e) => e.to_string(),
                        };
                        self.warn(path, &format!("not restored: {message}"));
                        let _ =
                            self.target.parent_of(&dest, Links::Refuse).and_then(|(dir, name)| dir.remove_at(&name));
                    }
                }
            }
            NodeType::Symlink => self.late.push(Late::Symlink(dest, node)),
            NodeType::Socket => {}
            _ => self.late.push(Late::Special(dest, node)),
        }
        Ok(())
    }

    fn file(&mut self, vol: &Volume, dest: &Path, inode: &Inode, node: &Node) -> Result<(), CopyError> {
        let io = |e| Error::io(self.options.target.join(dest), e);
        let file = create_file_at(self.target, dest, inode.size).map_err(io)?;
        let (cancel, progress) = (self.cancel, self.progress);
        let mut written = 0u64;
        copy_file(vol, inode, &mut |offset, piece| {
            if cancel.is_cancelled() {
                return Err(Error::Cancelled);
            }
            // Zeros stay holes: the file was made at its size, all holes.
            if let Piece::Data(bytes) = piece {
                file.write_all_at(bytes, offset).map_err(io)?;
                written += bytes.len() as u64;
                progress.advance(0, bytes.len() as u64);
            }
            Ok(())
        })?;
        apply_file_metadata(&file, node, self.meta).map_err(io)?;
        self.summary.bytes += written;
        self.progress.advance(1, 0);
        Ok(())
    }

    fn finish(&mut self) {
        for late in std::mem::take(&mut self.late) {
            let (path, result) = match &late {
                Late::HardLink(path, to) => {
                    (path, restore_hard_link(self.target, path, to).map(|_| self.summary.files += 1))
                }
                Late::Symlink(path, node) => {
                    (path, restore_symlink(self.target, path, node, self.meta).map(|_| self.summary.links += 1))
                }
                Late::Special(path, node) => (path, restore_special(self.target, path, node, self.meta)),
            };
            if let Err(e) = result {
                let path = Path::new("/").join(path);
                self.warn(&path, &e.to_string());
            }
        }
        // Deepest first, so a read-only parent is set after its children.
        for (path, node) in std::mem::take(&mut self.dirs).into_iter().rev() {
            let dir = self.target.open_file(&path, libc::O_RDONLY | libc::O_DIRECTORY, 0, Links::Refuse);
            if let Err(e) = dir.and_then(|dir| apply_file_metadata(&dir, &node, self.meta)) {
                let path = Path::new("/").join(path);
                self.warn(&path, &format!("cannot set metadata: {e}"));
            }
        }
    }
}

/// A path inside the image as a path beneath the target.
fn rel(path: &Path) -> &Path {
    path.strip_prefix("/").unwrap_or(path)
}
