//! Directory fixtures for tests: deterministic contents, a declarative
//! builder (files, sparse files, links, FIFOs), and a comparison of two
//! trees that covers contents and the metadata a restore must reproduce.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Deterministic pseudo-random bytes.
pub fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Text-like, compressible bytes.
pub fn text(n: usize, seed: u64) -> Vec<u8> {
    let words = ["alpha ", "beta ", "gamma ", "delta ", "backup ", "restore ", "chunk\n", "pack "];
    let r = noise(n / 4 + 1, seed);
    let mut out = Vec::with_capacity(n + 16);
    let mut i = 0;
    while out.len() < n {
        out.extend_from_slice(words[r[i % r.len()] as usize % words.len()].as_bytes());
        i += 1;
    }
    out.truncate(n);
    out
}

/// A declarative directory fixture.
pub enum Entry {
    File(&'static str, Vec<u8>),
    Dir(&'static str),
    Symlink(&'static str, &'static str),
    /// A sparse file: (path, size, [(offset, data)]).
    Sparse(&'static str, u64, Vec<(u64, Vec<u8>)>),
    HardLink(&'static str, &'static str),
    Fifo(&'static str),
}

pub fn build(root: &Path, entries: &[Entry]) {
    fs::create_dir_all(root).unwrap();
    for e in entries {
        match e {
            Entry::File(p, data) => {
                let path = root.join(p);
                fs::create_dir_all(path.parent().unwrap()).unwrap();
                fs::write(path, data).unwrap();
            }
            Entry::Dir(p) => fs::create_dir_all(root.join(p)).unwrap(),
            Entry::Symlink(p, target) => {
                let path = root.join(p);
                fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::os::unix::fs::symlink(target, path).unwrap();
            }
            Entry::Sparse(p, size, pieces) => {
                let path = root.join(p);
                fs::create_dir_all(path.parent().unwrap()).unwrap();
                let mut f = fs::File::create(path).unwrap();
                for (off, data) in pieces {
                    f.seek(SeekFrom::Start(*off)).unwrap();
                    f.write_all(data).unwrap();
                }
                f.set_len(*size).unwrap();
            }
            Entry::HardLink(p, existing) => fs::hard_link(root.join(existing), root.join(p)).unwrap(),
            Entry::Fifo(p) => {
                let c = std::ffi::CString::new(root.join(p).as_os_str().as_bytes()).unwrap();
                // SAFETY: c is a valid NUL-terminated path.
                assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o640) }, 0);
            }
        }
    }
}

/// Everything about a tree that a restore must reproduce, keyed by path.
pub fn describe(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    describe_into(root, root, &mut out);
    out
}

fn describe_into(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
    let mut entries: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    for path in entries {
        let meta = fs::symlink_metadata(&path).unwrap();
        let rel = path.strip_prefix(root).unwrap().to_path_buf();
        let mode = meta.permissions().mode() & 0o7777;
        let common = format!(
            "mode={mode:o} uid={} gid={} mtime={}.{:09}",
            meta.uid(),
            meta.gid(),
            meta.mtime(),
            meta.mtime_nsec()
        );
        let desc = if meta.file_type().is_symlink() {
            format!("symlink -> {} {}", fs::read_link(&path).unwrap().display(), format_args!("mtime={}", meta.mtime()))
        } else if meta.is_dir() {
            describe_into(root, &path, out);
            format!("dir {common}")
        } else if meta.is_file() {
            let data = fs::read(&path).unwrap();
            format!("file len={} hash={} nlink={} {common}", data.len(), blake3::hash(&data).to_hex(), meta.nlink())
        } else {
            format!("special {common}")
        };
        out.insert(rel, desc);
    }
}

/// Assert that `restored` holds exactly what `original` held.
pub fn assert_same_tree(original: &Path, restored: &Path) {
    let a = describe(original);
    let b = describe(restored);
    let missing: Vec<_> = a.keys().filter(|k| !b.contains_key(*k)).collect();
    let extra: Vec<_> = b.keys().filter(|k| !a.contains_key(*k)).collect();
    assert!(missing.is_empty() && extra.is_empty(), "missing {missing:?}, extra {extra:?}");
    for (path, desc) in &a {
        assert_eq!(desc, &b[path], "{}", path.display());
    }
}

/// Where a restore of absolute path `source` lands under `target`.
pub fn restored_path(target: &Path, source: &Path) -> PathBuf {
    target.join(source.strip_prefix("/").unwrap())
}

/// A 16 MiB GPT disk at `dir/NAME`: partition 1 (1 MiB) holds no file
/// system, partition 2 an 8 MiB ext4 made from `files` (paths and
/// contents) by `mkfs.ext4 -d` — no root needed; `sgdisk` writes the table.
/// `scripts/test` installs both (gdisk, e2fsprogs).
pub fn gpt_disk_with_files(dir: &Path, name: &str, files: &[(&str, &[u8])]) -> PathBuf {
    let run = |cmd: &mut std::process::Command| {
        let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e} (scripts/test installs gdisk and e2fsprogs)"));
        assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let src = dir.join(format!("{name}.files"));
    for (path, data) in files {
        let at = src.join(path);
        fs::create_dir_all(at.parent().unwrap()).unwrap();
        fs::write(at, data).unwrap();
    }
    let fs_image = dir.join(format!("{name}.p2"));
    run(std::process::Command::new("mkfs.ext4").args(["-q", "-F", "-d"]).arg(&src).arg(&fs_image).arg("8M"));
    let disk = dir.join(name);
    fs::File::create(&disk).unwrap().set_len(16 << 20).unwrap();
    run(std::process::Command::new("sgdisk").args(["-o", "-n", "1:2048:+1M", "-n", "2:4096:+8M"]).arg(&disk));
    let f = fs::OpenOptions::new().write(true).open(&disk).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &fs::read(&fs_image).unwrap(), 4096 * 512).unwrap();
    disk
}
