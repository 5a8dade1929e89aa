//! The parsers against real images (made by `mkfs.ext2/3/4 -d`, `sgdisk`,
//! `sfdisk`) and against those images damaged at random: every damage is
//! an error or a different listing, never a panic or a hang.

use std::path::Path;
use std::process::Command;

use super::ext::{ExtFs, Inode};
use super::journal::{Journal, Replayed};
use super::{DiskError, ReadAt, Slice, enter, parts};
use crate::tree::NodeType;

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?} cannot start ({e}); scripts/test installs e2fsprogs"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A file system of `kind` (`ext2`, `ext3`, `ext4`) made from a small tree.
fn file_system(dir: &Path, kind: &str, size: &str) -> Vec<u8> {
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("etc/deep")).unwrap();
    std::fs::write(src.join("etc/hostname"), "vm1\n").unwrap();
    std::fs::write(src.join("etc/deep/many.txt"), "line\n".repeat(5000)).unwrap();
    let big: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    std::fs::write(src.join("big.bin"), &big).unwrap();
    std::os::unix::fs::symlink("etc/hostname", src.join("short")).unwrap();
    std::os::unix::fs::symlink("x".repeat(200), src.join("long")).unwrap();
    for i in 0..40 {
        std::fs::write(src.join(format!("etc/file-{i}")), format!("{i}")).unwrap();
    }
    let image = dir.join(format!("{kind}.img"));
    run(Command::new(format!("mkfs.{kind}"))
        .arg("-q")
        .arg("-F")
        .arg("-b")
        .arg("1024")
        .arg("-d")
        .arg(&src)
        .arg(&image)
        .arg(size));
    std::fs::read(&image).unwrap()
}

/// Everything of the file system read, as a listing; what is damaged
/// ends that branch with its error.
fn read_all(dev: &dyn ReadAt) -> Result<Vec<String>, DiskError> {
    let fs = ExtFs::open(dev)?;
    if fs.needs_recovery() {
        let journal = Journal::read(&fs)?;
        let replayed = Replayed { dev, block_size: fs.block_size(), journal: &journal };
        return read_tree(&ExtFs::open(&replayed)?);
    }
    read_tree(&fs)
}

fn read_tree(fs: &ExtFs) -> Result<Vec<String>, DiskError> {
    let root = fs.inode(super::ext::ROOT)?;
    let mut out = Vec::new();
    let mut above = Vec::new();
    read_dir(fs, &root, "", &mut above, &mut out);
    Ok(out)
}

fn read_dir(fs: &ExtFs, dir: &Inode, at: &str, above: &mut Vec<u32>, out: &mut Vec<String>) {
    if let Err(e) = enter(above, dir) {
        out.push(format!("{at}: {e}"));
        return;
    }
    let entries = match fs.read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => return out.push(format!("{at}: {e}")),
    };
    for entry in entries {
        let path = format!("{at}/{}", String::from_utf8_lossy(&entry.name));
        let inode = match fs.inode(entry.ino) {
            Ok(inode) => inode,
            Err(e) => {
                out.push(format!("{path}: {e}"));
                continue;
            }
        };
        match inode.kind {
            NodeType::Dir => read_dir(fs, &inode, &path, above, out),
            NodeType::Symlink => out.push(format!("{path} -> {:?}", fs.read_link(&inode).map(|t| t.len()))),
            NodeType::File => {
                let head = fs.extents(&inode).and_then(|extents| {
                    let mut buf = vec![0u8; inode.size.min(64 << 10) as usize];
                    fs.read_file(&inode, &extents, 0, &mut buf).map(|()| buf)
                });
                out.push(format!(
                    "{path}: {} bytes, {:?}",
                    inode.size,
                    head.map(|b| b.iter().map(|&x| x as u64).sum::<u64>())
                ));
            }
            _ => out.push(path),
        }
    }
    above.pop();
}

#[test]
fn ext2_ext3_and_ext4_read_as_they_were_made() {
    for kind in ["ext2", "ext3", "ext4"] {
        let dir = tempfile::tempdir().unwrap();
        let image = file_system(dir.path(), kind, "4M");
        let fs = ExtFs::open(&image).unwrap();
        assert_eq!(fs.flavour, kind);
        let names: Vec<&[u8]> = vec![b"etc", b"deep", b"many.txt"];
        let inode = fs.lookup(&names).unwrap();
        let extents = fs.extents(&inode).unwrap();
        let mut text = vec![0u8; inode.size as usize];
        fs.read_file(&inode, &extents, 0, &mut text).unwrap();
        assert_eq!(text, "line\n".repeat(5000).as_bytes(), "{kind}: a file past the direct blocks");
        let big = fs.lookup(&[b"big.bin"]).unwrap();
        let mut data = vec![0u8; big.size as usize];
        fs.read_file(&big, &fs.extents(&big).unwrap(), 0, &mut data).unwrap();
        assert_eq!(data, std::fs::read(dir.path().join("src/big.bin")).unwrap(), "{kind}: through indirect blocks");
        let long = fs.lookup(&[b"long"]).unwrap();
        assert_eq!(fs.read_link(&long).unwrap(), "x".repeat(200).as_bytes());
        let short = fs.lookup(&[b"short"]).unwrap();
        assert_eq!(fs.read_link(&short).unwrap(), b"etc/hostname");
        let err = fs.lookup(&[b"short", b"x"]).unwrap_err();
        assert!(matches!(err, DiskError::Symlink(_)), "a path is not followed through a link: {err}");
        let listing = read_all(&image).unwrap();
        assert!(listing.iter().all(|l| !l.contains("damaged")), "{kind}: {listing:#?}");
        assert_eq!(listing.iter().filter(|l| l.contains("/etc/file-")).count(), 40);
    }
}

#[test]
fn partitions_of_gpt_and_mbr_disks_with_logical_ones() {
    let dir = tempfile::tempdir().unwrap();
    let gpt = dir.path().join("gpt.raw");
    std::fs::File::create(&gpt).unwrap().set_len(16 << 20).unwrap();
    run(Command::new("sgdisk")
        .args(["-o", "-n", "1:2048:+1M", "-n", "2:0:+4M", "-c", "2:data", "-t", "1:ef02"])
        .arg(&gpt));
    let disk = std::fs::read(&gpt).unwrap();
    let (table, found) = parts::read(&disk).unwrap().unwrap();
    assert_eq!(table, parts::Table::Gpt);
    let summary: Vec<_> = found.iter().map(|p| (p.number, p.start, p.len, p.kind.as_str(), p.name.as_str())).collect();
    assert_eq!(
        summary,
        [(1, 2048 * 512, 1 << 20, "BIOS boot", ""), (2, 4096 * 512, 4 << 20, "Linux filesystem", "data")]
    );

    // The primary header damaged: the backup at the disk's end answers.
    let mut damaged = disk.clone();
    damaged[512 + 40] ^= 0xff;
    assert_eq!(parts::read(&damaged).unwrap().unwrap().1, found);
    // Both damaged: an error that says so.
    let last = damaged.len() - 512;
    damaged[last + 40] ^= 0xff;
    let err = parts::read(&damaged).unwrap_err();
    assert!(err.to_string().contains("backup header is damaged too"), "{err}");

    let mbr = dir.path().join("mbr.raw");
    std::fs::File::create(&mbr).unwrap().set_len(16 << 20).unwrap();
    let script = "label: dos\nstart=2048, size=4096, type=83\nstart=8192, size=16384, type=5\nstart=10240, size=2048, type=83\nstart=14336, size=2048, type=82\n";
    let mut sfdisk = Command::new("sfdisk")
        .arg("-q")
        .arg(&mbr)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("sfdisk (scripts/test installs fdisk)");
    std::io::Write::write_all(&mut sfdisk.stdin.take().unwrap(), script.as_bytes()).unwrap();
    assert!(sfdisk.wait().unwrap().success());
    let disk = std::fs::read(&mbr).unwrap();
    let (table, found) = parts::read(&disk).unwrap().unwrap();
    assert_eq!(table, parts::Table::Mbr);
    let summary: Vec<_> = found.iter().map(|p| (p.number, p.start / 512, p.len / 512, p.kind.as_str())).collect();
    assert_eq!(summary, [(1, 2048, 4096, "MBR 0x83"), (5, 10240, 2048, "MBR 0x83"), (6, 14336, 2048, "MBR 0x82")]);
}

/// xorshift: the same damage on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Transactions written into the journal of `image` by debugfs (not
/// applied: the file system then needs recovery), one per script.
fn journal_transactions(dir: &Path, image: &Path, scripts: &[String]) {
    for (i, script) in scripts.iter().enumerate() {
        let file = dir.join(format!("journal-{i}.txt"));
        std::fs::write(&file, format!("jo\n{script}\njc\n")).unwrap();
        run(Command::new("debugfs").arg("-w").arg("-f").arg(&file).arg(image));
    }
}

/// The physical block of `path`'s first block, as debugfs says.
fn first_block(image: &Path, path: &str) -> u64 {
    let out = Command::new("debugfs").args(["-R", &format!("bmap {path} 0")]).arg(image).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[test]
fn a_journal_not_yet_applied_is_replayed_and_revoked_blocks_are_not() {
    let dir = tempfile::tempdir().unwrap();
    file_system(dir.path(), "ext4", "8M");
    let image = dir.path().join("ext4.img");
    let block = first_block(&image, "/etc/hostname");
    let other = first_block(&image, "/etc/file-7");
    let new = dir.path().join("new.bin");
    let mut data = b"vm2\n".to_vec();
    data.resize(1024, 0);
    std::fs::write(&new, data.repeat(2)).unwrap();
    // One transaction rewrites both blocks; a later one revokes the second.
    journal_transactions(
        dir.path(),
        &image,
        &[format!("jw -b {block},{other} {}", new.display()), format!("jw -r {other}")],
    );
    let disk = std::fs::read(&image).unwrap();
    let fs = ExtFs::open(&disk).unwrap();
    assert!(fs.needs_recovery(), "debugfs left the journal to be replayed");
    let read = |fs: &ExtFs, path: &[&[u8]]| {
        let inode = fs.lookup(path).unwrap();
        let mut buf = vec![0u8; inode.size as usize];
        fs.read_file(&inode, &fs.extents(&inode).unwrap(), 0, &mut buf).unwrap();
        buf
    };
    assert_eq!(read(&fs, &[b"etc", b"hostname"]), b"vm1\n", "in place, the old content");
    let journal = Journal::read(&fs).unwrap();
    assert_eq!((journal.applied.transactions, journal.applied.blocks), (2, 1), "the revoked block is not applied");
    let replayed = Replayed { dev: &disk, block_size: fs.block_size(), journal: &journal };
    let fs = ExtFs::open(&replayed).unwrap();
    assert_eq!(read(&fs, &[b"etc", b"hostname"]), b"vm2\n", "as the kernel would mount it");
    assert_eq!(read(&fs, &[b"etc", b"file-7"]), b"7", "revoked by a later transaction");
}

#[test]
fn damaged_images_give_errors_never_panics() {
    let iterations: usize = std::env::var("BACKSTOP_FUZZ_ITERATIONS").ok().and_then(|n| n.parse().ok()).unwrap_or(1500);
    let dir = tempfile::tempdir().unwrap();
    file_system(dir.path(), "ext4", "4M");
    // With a transaction in its journal, so that the damage reaches the journal's replay too.
    let image = dir.path().join("ext4.img");
    let block = first_block(&image, "/etc/hostname");
    let new = dir.path().join("new.bin");
    std::fs::write(&new, vec![b'x'; 1024]).unwrap();
    journal_transactions(dir.path(), &image, &[format!("jw -b {block} {}", new.display())]);
    let fs_image = std::fs::read(&image).unwrap();
    // A GPT disk with the file system in its second partition.
    let disk_path = dir.path().join("disk.raw");
    std::fs::File::create(&disk_path).unwrap().set_len(8 << 20).unwrap();
    run(Command::new("sgdisk").args(["-o", "-n", "1:2048:+256K", "-n", "2:4096:+4M"]).arg(&disk_path));
    let mut disk = std::fs::read(&disk_path).unwrap();
    disk[2 << 20..(2 << 20) + fs_image.len()].copy_from_slice(&fs_image);
    let clean = read_all(&Slice { disk: &disk, start: 2 << 20, len: 4 << 20 }).unwrap();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let (mut failed, mut differed) = (0, 0);
    for _ in 0..iterations {
        let mut damaged = disk.clone();
        // A few bytes anywhere in the tables, the file system's metadata
        // (the first 256 KiB of it) or its data.
        for _ in 0..1 + rng.next() % 8 {
            let at = match rng.next() % 4 {
                0 => (rng.next() % 34 * 512) as usize,
                1 | 2 => (2 << 20) + (rng.next() % (256 << 10)) as usize,
                _ => (2 << 20) + (rng.next() % (4 << 20)) as usize,
            };
            damaged[at] = rng.next() as u8;
        }
        match parts::read(&damaged) {
            Err(_) => failed += 1,
            Ok(table) => {
                let p = table.and_then(|(_, parts)| parts.into_iter().find(|p| p.number == 2));
                let (start, len) = p.map_or((2 << 20, 4 << 20), |p| (p.start, p.len));
                match read_all(&Slice { disk: &damaged, start, len }) {
                    Err(_) => failed += 1,
                    Ok(listing) if listing != clean => differed += 1,
                    Ok(_) => {}
                }
            }
        }
    }
    // The damage was real: some of it must have been noticed.
    assert!(failed + differed > iterations / 10, "{failed} failed, {differed} differed of {iterations}");
}
