//! A native reader of qcow2 images (versions 2 and 3) as the guest sees
//! them: L1/L2 lookups, zero and unallocated clusters as holes (never
//! read), deflate- and zstd-compressed clusters, backing files (qcow2 or
//! raw). Encrypted images, external data files and extended L2 entries are
//! refused with a message; convert those with `qemu-img convert` first.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use backstop_confine::{Dir, Links};
use backstop_repo::backup::source::{BlockImage, ChangeMap, RawImage, read_full_at};

const MAGIC: &[u8; 4] = b"QFI\xfb";
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const COMPRESSED: u64 = 1 << 62;
const ZERO: u64 = 1;
/// Bytes of L2 tables kept in memory.
const L2_CACHE_BYTES: u64 = 64 << 20;
/// The largest virtual size read.
const MAX_SIZE: u64 = 64 << 40;

/// Whether `file` starts with the qcow2 magic.
pub fn is_qcow2(file: &File) -> bool {
    let mut magic = [0u8; 4];
    file.read_exact_at(&mut magic, 0).is_ok() && &magic == MAGIC
}

pub struct Qcow2Image {
    file: File,
    path: PathBuf,
    cluster_bits: u32,
    size: u64,
    l1: Vec<u64>,
    zstd: bool,
    backing: Option<Box<dyn BlockImage>>,
    l2_cache: Mutex<HashMap<u64, Arc<Vec<u64>>>>,
    changes: Option<ChangeMap>,
    generation: Option<String>,
}

/// Where an image's backing files may come from.
#[derive(Clone, Copy)]
pub enum Backing<'a> {
    /// Only beneath the image's own directory: `dir` is its handle, `path`
    /// its name as given (absolute backing names are taken relative to it),
    /// so that an image cannot make a backup read files its owner may not
    /// name. Links are followed only while they stay beneath it.
    /// `devices`: whether a backing file may be a block device (not for a
    /// tenant's image: a node it made could name any disk of the host).
    Within { dir: &'a Dir, path: &'a Path, devices: bool },
    /// Anywhere, as named (`backing_outside=true`, for the system tenant's
    /// administrators).
    Anywhere,
}

impl Backing<'_> {
    /// Open the backing file `name` that `image` records.
    fn open(&self, image: &Path, name: &Path) -> std::io::Result<(File, PathBuf)> {
        match self {
            Backing::Anywhere => {
                let name = if name.is_absolute() {
                    name.to_path_buf()
                } else {
                    image.parent().unwrap_or(Path::new(".")).join(name)
                };
                let f =
                    File::open(&name).map_err(|e| invalid(image, format!("backing file {}: {e}", name.display())))?;
                Ok((f, name))
            }
            Backing::Within { dir, path, devices } => {
                let outside = || {
                    invalid(
                        image,
                        format!(
                            "its backing file {} is outside {}; allow it with backing_outside=true",
                            name.display(),
                            path.display()
                        ),
                    )
                };
                let rel = if name.is_absolute() {
                    let real = std::fs::canonicalize(path).ok();
                    let rel = name
                        .strip_prefix(path)
                        .ok()
                        .or_else(|| real.as_deref().and_then(|r| name.strip_prefix(r).ok()));
                    rel.ok_or_else(outside)?.to_path_buf()
                } else {
                    // Relative to the image that names it, which may lie in a
                    // subdirectory of the top image's.
                    let from = image.strip_prefix(path).ok().and_then(Path::parent).unwrap_or(Path::new(""));
                    from.join(name)
                };
                let rel = lexical(&rel).ok_or_else(outside)?;
                let f =
                    dir.open_file(&rel, libc::O_RDONLY | libc::O_NONBLOCK, 0, Links::Beneath).map_err(|e| {
                        match e.raw_os_error() {
                            Some(libc::EXDEV) => outside(),
                            _ if e.kind() == std::io::ErrorKind::InvalidInput => outside(),
                            _ => invalid(image, format!("backing file {}: {e}", name.display())),
                        }
                    })?;
                let is_device =
                    f.metadata().is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_block_device(&m.file_type()));
                if is_device && !devices {
                    return Err(invalid(image, format!("its backing file {} is a block device", name.display())));
                }
                Ok((f, path.join(rel)))
            }
        }
    }
}

/// `rel` with `.` and `..` taken out, or `None` if `..` climbs above it.
fn lexical(rel: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in rel.components() {
        match c {
            std::path::Component::Normal(n) => out.push(n),
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            _ => return None,
        }
    }
    Some(out)
}

fn invalid(path: &Path, why: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: {why}", path.display()))
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl Qcow2Image {
    /// The image in `file` (at `path`, for messages and relative backing
    /// names); its backing files are opened as `backing` allows.
    pub fn from_file(file: File, path: &Path, backing: Backing) -> std::io::Result<Qcow2Image> {
        Self::open_chain(file, path, backing, 0)
    }

    fn open_chain(file: File, path: &Path, backing: Backing, depth: usize) -> std::io::Result<Qcow2Image> {
        if depth > 16 {
            return Err(invalid(path, "the backing-file chain is longer than 16 images"));
        }
        let file_len = file.metadata()?.len();
        let mut h = [0u8; 112];
        let got = file.read_at(&mut h, 0)?;
        if got < 72 || &h[..4] != MAGIC {
            return Err(invalid(path, "not a qcow2 image"));
        }
        let version = be32(&h, 4);
        if version != 2 && version != 3 {
            return Err(invalid(path, format!("qcow2 version {version} is not supported (2 and 3 are)")));
        }
        let backing_offset = be64(&h, 8);
        let backing_len = be32(&h, 16) as usize;
        let cluster_bits = be32(&h, 20);
        if !(9..=21).contains(&cluster_bits) {
            return Err(invalid(path, format!("cluster_bits {cluster_bits} is out of range")));
        }
        let size = be64(&h, 24);
        if size > MAX_SIZE {
            return Err(invalid(path, format!("a virtual size of {size} bytes is beyond the 64 TiB Backstop reads")));
        }
        if be32(&h, 32) != 0 {
            return Err(invalid(path, "the image is encrypted; decrypt it with qemu-img convert first"));
        }
        let l1_size = be32(&h, 36) as u64;
        let l1_offset = be64(&h, 40);
        let mut zstd = false;
        if version == 3 && got >= 104 {
            let incompatible = be64(&h, 72);
            if incompatible & 0b10 != 0 {
                return Err(invalid(path, "the image is marked corrupt; repair it with qemu-img check -r all"));
            }
            if incompatible & 0b100 != 0 {
                return Err(invalid(path, "images with an external data file are not supported"));
            }
            if incompatible & 0b10000 != 0 {
                return Err(invalid(path, "images with extended L2 entries (subclusters) are not supported"));
            }
            if incompatible & !0b11001 != 0 {
                return Err(invalid(path, format!("unknown incompatible features {incompatible:#x}")));
            }
            let header_len = be32(&h, 100);
            if incompatible & 0b1000 != 0 {
                if header_len < 105 || got < 105 {
                    return Err(invalid(path, "the compression type is missing from the header"));
                }
                match h[104] {
                    0 => {}
                    1 => zstd = true,
                    t => return Err(invalid(path, format!("unknown compression type {t}"))),
                }
            }
        }
        let cluster = 1u64 << cluster_bits;
        let l2_entries = cluster / 8;
        let needed = size.div_ceil(cluster).div_ceil(l2_entries);
        if l1_size < needed || l1_size > (4 << 20) {
            return Err(invalid(path, format!("the L1 table ({l1_size} entries) does not cover the size {size}")));
        }
        if l1_offset.checked_add(l1_size * 8).is_none_or(|end| end > file_len) {
            return Err(invalid(path, "the L1 table lies past the end of the file"));
        }
        let mut raw = vec![0u8; (l1_size * 8) as usize];
        file.read_exact_at(&mut raw, l1_offset)?;
        let l1 = raw.chunks_exact(8).map(|c| u64::from_be_bytes(c.try_into().expect("8 bytes"))).collect();
        let backing_image = if backing_offset != 0 && backing_len > 0 {
            if backing_len > 1023 {
                return Err(invalid(path, "the backing file name is too long"));
            }
            let mut name = vec![0u8; backing_len];
            file.read_exact_at(&mut name, backing_offset)?;
            let name = PathBuf::from(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(name));
            // What is checked is what is opened: by handle, not by name again.
            let (f, name) = backing.open(path, &name)?;
            let image: Box<dyn BlockImage> = if is_qcow2(&f) {
                Box::new(Self::open_chain(f, &name, backing, depth + 1)?)
            } else {
                Box::new(RawImage::from_file(f, &name)?)
            };
            Some(image)
        } else {
            None
        };
        Ok(Qcow2Image {
            file,
            path: path.to_path_buf(),
            cluster_bits,
            size,
            l1,
            zstd,
            backing: backing_image,
            l2_cache: Mutex::new(HashMap::new()),
            changes: None,
            generation: None,
        })
    }

    pub fn with_changes(mut self, changes: Option<ChangeMap>) -> Qcow2Image {
        self.changes = changes;
        self
    }

    pub fn with_generation(mut self, generation: Option<String>) -> Qcow2Image {
        self.generation = generation;
        self
    }

    fn cluster(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// `(start, end)` of every cluster this image itself says something
    /// about — data, compressed, or written as zeros — merged and sorted;
    /// its backing files are not asked. What a copy of only the changed
    /// clusters (an incremental `blockdev-backup`) holds.
    pub fn written_extents(&self) -> std::io::Result<Vec<(u64, u64)>> {
        let cluster = self.cluster();
        let per_table = cluster / 8;
        let mut out: Vec<(u64, u64)> = Vec::new();
        let mut index = 0;
        while index < self.size.div_ceil(cluster) {
            if index % per_table == 0
                && self.l1.get((index / per_table) as usize).copied().unwrap_or(0) & OFFSET_MASK == 0
            {
                index += per_table;
                continue;
            }
            let (a, b) = (index * cluster, ((index + 1) * cluster).min(self.size));
            if self.l2_entry(index)? != 0 {
                match out.last_mut() {
                    Some(last) if last.1 == a => last.1 = b,
                    _ => out.push((a, b)),
                }
            }
            index += 1;
        }
        Ok(out)
    }

    /// The L2 entry of guest cluster `index` (0: unallocated).
    fn l2_entry(&self, index: u64) -> std::io::Result<u64> {
        let per_table = self.cluster() / 8;
        let l1_index = (index / per_table) as usize;
        let Some(&l1) = self.l1.get(l1_index) else { return Ok(0) };
        let table_offset = l1 & OFFSET_MASK;
        if table_offset == 0 {
            return Ok(0);
        }
        let cached = self.l2_cache.lock().unwrap_or_else(|e| e.into_inner()).get(&table_offset).cloned();
        let table = match cached {
            Some(t) => t,
            None => {
                let mut raw = vec![0u8; self.cluster() as usize];
                self.file
                    .read_exact_at(&mut raw, table_offset)
                    .map_err(|e| invalid(&self.path, format!("L2 table: {e}")))?;
                let t: Arc<Vec<u64>> =
                    Arc::new(raw.chunks_exact(8).map(|c| u64::from_be_bytes(c.try_into().expect("8 bytes"))).collect());
                let mut cache = self.l2_cache.lock().unwrap_or_else(|e| e.into_inner());
                if cache.len() as u64 >= (L2_CACHE_BYTES / self.cluster()).max(1) {
                    cache.clear();
                }
                cache.insert(table_offset, t.clone());
                t
            }
        };
        Ok(table[(index % per_table) as usize])
    }

    /// Read within one guest cluster.
    fn read_in_cluster(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let cluster = self.cluster();
        let within = offset % cluster;
        let entry = self.l2_entry(offset / cluster)?;
        if entry & COMPRESSED != 0 {
            let data = self.compressed(entry)?;
            buf.copy_from_slice(&data[within as usize..within as usize + buf.len()]);
        } else if entry & ZERO != 0 {
            buf.fill(0);
        } else if entry & OFFSET_MASK != 0 {
            self.file.read_exact_at(buf, (entry & OFFSET_MASK) + within).map_err(|e| invalid(&self.path, e))?;
        } else if let Some(backing) = &self.backing {
            let n = read_full_at(backing.as_ref(), buf, offset)?;
            buf[n..].fill(0);
        } else {
            buf.fill(0);
        }
        Ok(())
    }

    fn compressed(&self, entry: u64) -> std::io::Result<Vec<u8>> {
        let x = 62 - (self.cluster_bits - 8);
        let host = entry & ((1u64 << x) - 1);
        let sectors = (entry >> x) & ((1u64 << (self.cluster_bits - 8)) - 1);
        let len = ((sectors + 1) * 512 - (host & 511)) as usize;
        let mut raw = vec![0u8; len];
        let n = self.file.read_at(&mut raw, host)?;
        raw.truncate(n);
        let cluster = self.cluster() as usize;
        let out = if self.zstd {
            // The sector-rounded read may run into the next cluster: decode
            // one cluster's worth and ignore the rest.
            let mut out = vec![0u8; cluster];
            let mut d = zstd::stream::read::Decoder::new(&raw[..]).map_err(std::io::Error::other)?.single_frame();
            std::io::Read::read_exact(&mut d, &mut out)
                .map_err(|e| invalid(&self.path, format!("zstd cluster: {e}")))?;
            out
        } else {
            miniz_oxide::inflate::decompress_to_vec_with_limit(&raw, cluster)
                .map_err(|e| invalid(&self.path, format!("deflate cluster: {e:?}")))?
        };
        if out.len() != cluster {
            return Err(invalid(&self.path, format!("a compressed cluster holds {} bytes, not {cluster}", out.len())));
        }
        Ok(out)
    }
}

impl BlockImage for Qcow2Image {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        if offset >= self.size {
            return Ok(0);
        }
        let end = (offset + buf.len() as u64).min(self.size);
        let mut pos = offset;
        while pos < end {
            let next = ((pos / self.cluster()) + 1) * self.cluster();
            let stop = next.min(end);
            let at = (pos - offset) as usize;
            self.read_in_cluster(&mut buf[at..at + (stop - pos) as usize], pos)?;
            pos = stop;
        }
        Ok((end - offset) as usize)
    }

    fn data_extents(&self) -> std::io::Result<Vec<(u64, u64)>> {
        let cluster = self.cluster();
        let backing = match &self.backing {
            Some(b) => b.data_extents()?,
            None => Vec::new(),
        };
        let mut out: Vec<(u64, u64)> = Vec::new();
        let mut push = |a: u64, b: u64| match out.last_mut() {
            Some(last) if last.1 >= a => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        };
        let per_table = cluster / 8;
        let clusters = self.size.div_ceil(cluster);
        // Each L2 table is walked once: a table shared by two L1 entries
        // (never written by qemu) would multiply the work.
        let mut tables = std::collections::HashSet::new();
        let mut index = 0;
        while index < clusters {
            if index % per_table == 0 {
                let l1 = self.l1.get((index / per_table) as usize).copied().unwrap_or(0) & OFFSET_MASK;
                if l1 != 0 && !tables.insert(l1) {
                    return Err(invalid(&self.path, "an L2 table is used twice; the image is damaged"));
                }
            }
            // A whole L2 table that is not there: nothing (or the backing file's data).
            let l1 = self.l1.get((index / per_table) as usize).copied().unwrap_or(0);
            if l1 & OFFSET_MASK == 0 && index % per_table == 0 {
                let span_end = ((index + per_table) * cluster).min(self.size);
                for &(x, y) in backing.iter().filter(|&&(x, y)| x < span_end && y > index * cluster) {
                    push(x.max(index * cluster), y.min(span_end));
                }
                index += per_table;
                continue;
            }
            let (a, b) = (index * cluster, ((index + 1) * cluster).min(self.size));
            let entry = self.l2_entry(index)?;
            index += 1;
            if entry & COMPRESSED != 0 || (entry & ZERO == 0 && entry & OFFSET_MASK != 0) {
                push(a, b);
            } else if entry & ZERO == 0 {
                for &(x, y) in backing.iter().filter(|&&(x, y)| x < b && y > a) {
                    push(x.max(a), y.min(b));
                }
            }
        }
        Ok(out)
    }

    fn will_need(&self, ranges: &[(u64, u64)]) {
        let cluster = self.cluster();
        let mut host = Vec::new();
        for &(start, end) in ranges {
            for index in start / cluster..end.div_ceil(cluster) {
                match self.l2_entry(index) {
                    Ok(e) if e & (COMPRESSED | ZERO) == 0 && e & OFFSET_MASK != 0 => {
                        let (a, b) = (start.max(index * cluster), end.min((index + 1) * cluster));
                        let at = (e & OFFSET_MASK) + a - index * cluster;
                        host.push((at, at + (b - a)));
                    }
                    _ => {}
                }
            }
        }
        backstop_repo::backup::source::will_need(&self.file, &host);
        if let Some(backing) = &self.backing {
            backing.will_need(ranges);
        }
    }

    fn changes(&self) -> Option<&ChangeMap> {
        self.changes.as_ref()
    }

    fn generation(&self) -> Option<String> {
        self.changes.as_ref().map(|c| c.generation.clone()).or_else(|| self.generation.clone())
    }
}
