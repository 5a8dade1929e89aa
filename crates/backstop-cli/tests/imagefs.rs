//! Files inside backed-up disk images (`ls`, `dump`, `restore` with
//! `--image`): real partition tables (`sgdisk`, `sfdisk`) and file systems
//! made without root by `mkfs.ext2/3/4 -d DIR`, compared with DIR.

mod common;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use backstop_testkit::fixture::noise;
use common::*;

const MIB: u64 = 1 << 20;

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?} cannot start ({e}); scripts/test installs it"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn set_mtime(path: &Path, secs: i64, nanos: i64) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let t = libc::timespec { tv_sec: secs, tv_nsec: nanos };
    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), [t, t].as_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
    assert_eq!(rc, 0, "utimensat {}", path.display());
}

/// A tree with what a guest's file system holds: modes, times to the
/// nanosecond, short and long symlinks, a hard link, a FIFO, a sparse
/// file, a 10 MiB file, a name that is not ASCII.
fn guest_tree(src: &Path) {
    fs::create_dir_all(src.join("etc/ssh")).unwrap();
    fs::create_dir_all(src.join("home/alice")).unwrap();
    fs::write(src.join("etc/hostname"), "vm1\n").unwrap();
    fs::set_permissions(src.join("etc/hostname"), fs::Permissions::from_mode(0o640)).unwrap();
    fs::write(src.join("etc/ssh/sshd_config"), "PermitRootLogin no\n".repeat(300)).unwrap();
    fs::write(src.join("home/alice/notes ✓.txt"), "naïve\n").unwrap();
    fs::write(src.join("home/alice/empty"), "").unwrap();
    fs::write(src.join("home/big.bin"), noise(10 << 20, 7)).unwrap();
    fs::hard_link(src.join("etc/hostname"), src.join("etc/hostname.link")).unwrap();
    std::os::unix::fs::symlink("../etc/hostname", src.join("home/short")).unwrap();
    std::os::unix::fs::symlink("a/".repeat(60), src.join("home/long")).unwrap();
    let fifo = std::ffi::CString::new(src.join("home/pipe").as_os_str().as_encoded_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let sparse = fs::File::create(src.join("home/sparse")).unwrap();
    sparse.set_len(32 * MIB).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&sparse, b"middle", 16 * MIB).unwrap();
    fs::set_permissions(src.join("home/alice"), fs::Permissions::from_mode(0o750)).unwrap();
    for (i, path) in
        ["etc/hostname", "home/big.bin", "home/alice/notes ✓.txt", "home/short", "home/alice"].iter().enumerate()
    {
        set_mtime(&src.join(path), 1_000_000_000 + i as i64 * 86_400, 123_456_789);
    }
}

use std::os::unix::fs::PermissionsExt;

/// A file system of `kind` made from `src` into a file of `size`.
fn mkfs(kind: &str, src: &Path, image: &Path, size: &str) {
    run(Command::new(format!("mkfs.{kind}")).args(["-q", "-F", "-I", "256", "-d"]).arg(src).arg(image).arg(size));
}

/// `fs_image` written at sector `start` of `disk`.
fn place(disk: &Path, fs_image: &Path, start: u64) {
    let data = fs::read(fs_image).unwrap();
    let f = fs::OpenOptions::new().write(true).open(disk).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &data, start * 512).unwrap();
}

/// A GPT disk: p1 a BIOS boot partition (no file system), p2 ext4 from the guest tree.
fn gpt_disk(cli: &Cli) -> (PathBuf, PathBuf) {
    let src = cli.path("src");
    guest_tree(&src);
    let disk = cli.path("disk.raw");
    fs::File::create(&disk).unwrap().set_len(80 * MIB).unwrap();
    run(Command::new("sgdisk").args(["-o", "-n", "1:2048:+1M", "-t", "1:ef02", "-n", "2:4096:+64M"]).arg(&disk));
    let p2 = cli.path("p2.img");
    mkfs("ext4", &src, &p2, "64M");
    // mke2fs -d keeps whole seconds; a guest's kernel writes nanoseconds
    // too (in the inode's extra field, shifted past two epoch bits).
    let extra = format!("0x{:x}", 123_456_789u32 << 2);
    run(Command::new("debugfs").args(["-w", "-R", &format!("sif /etc/hostname mtime_extra {extra}")]).arg(&p2));
    place(&disk, &p2, 4096);
    (disk, src)
}

fn listing(cli: &Cli, args: &[&str]) -> Vec<serde_json::Value> {
    let mut all = vec!["--json", "ls", "latest", "--image", "disk.raw"];
    all.extend_from_slice(args);
    cli.ok(&all).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Every entry below `root` as (path relative to it, type letter), sorted.
fn entries(root: &Path) -> Vec<(String, char)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, char)>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let t = fs::symlink_metadata(&path).unwrap().file_type();
            let c = if t.is_dir() {
                'd'
            } else if t.is_symlink() {
                'l'
            } else if t.is_fifo() {
                'p'
            } else {
                'f'
            };
            out.push((path.strip_prefix(root).unwrap().to_string_lossy().into_owned(), c));
            if t.is_dir() {
                walk(root, &path, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

#[test]
fn files_inside_a_gpt_disk_are_listed_dumped_and_restored_as_they_were() {
    let cli = Cli::local();
    cli.init();
    let (disk, src) = gpt_disk(&cli);
    let spec = format!("image:{}", disk.display());
    cli.json(&["backup", "--source", &spec]);

    // The partitions, then everything in the one with a file system.
    let all = listing(&cli, &["/"]);
    let paths: Vec<&str> = all.iter().map(|v| v["path"].as_str().unwrap()).collect();
    assert_eq!(&paths[..3], ["/p1", "/p2", "/p2/etc"], "{paths:?}");
    let mut listed: Vec<(String, char)> = all
        .iter()
        .filter_map(|v| {
            let path = v["path"].as_str().unwrap().strip_prefix("/p2/")?;
            let t = match v["type"].as_str().unwrap() {
                "dir" => 'd',
                "symlink" => 'l',
                "fifo" => 'p',
                _ => 'f',
            };
            (!path.starts_with("lost+found")).then(|| (path.to_string(), t))
        })
        .collect();
    listed.sort();
    assert_eq!(listed, entries(&src));
    let hostname = all.iter().find(|v| v["path"] == "/p2/etc/hostname").unwrap();
    assert_eq!(hostname["mode"], 0o640);
    assert_eq!(hostname["mtime_ns"], 1_000_000_000_123_456_789i64);
    let long = all.iter().find(|v| v["path"] == "/p2/home/long").unwrap();
    assert_eq!(long["link_target"], "a/".repeat(60));

    // One file, without restoring the disk.
    let out = cli.command(&["dump", "latest", "--image", "disk.raw", "/p2/etc/ssh/sshd_config"]).output().unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(out.stdout, fs::read(src.join("etc/ssh/sshd_config")).unwrap());

    // Restoring the 10 MiB file reads about its size from the repository, not the disk's.
    let one = cli.path("one");
    let report = cli.json(&[
        "restore",
        "latest",
        "--image",
        "disk.raw",
        "--include",
        "/p2/home/big.bin",
        "--target",
        one.to_str().unwrap(),
    ]);
    assert_eq!(fs::read(one.join("p2/home/big.bin")).unwrap(), fs::read(src.join("home/big.bin")).unwrap());
    let fetched = report["fetched"]["bytes"].as_u64().unwrap();
    assert!(fetched <= 2 * 10 * MIB, "fetched {fetched} bytes for a 10 MiB file: {report}");
    assert_eq!(entries(&one), [("p2".into(), 'd'), ("p2/home".into(), 'd'), ("p2/home/big.bin".into(), 'f')]);

    // Everything: contents, modes, times, links, holes.
    let all_out = cli.path("all");
    let out = cli.run(&["restore", "latest", "--image", "disk.raw", "--target", all_out.to_str().unwrap()]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(output_text(&out).contains("p1 (BIOS boot) holds no ext2/3/4 file system"), "{}", output_text(&out));
    let got = all_out.join("p2");
    fs::remove_dir(got.join("lost+found")).unwrap();
    assert_eq!(entries(&got), entries(&src));
    for (path, kind) in entries(&src) {
        let (a, b) = (src.join(&path), got.join(&path));
        let (ma, mb) = (fs::symlink_metadata(&a).unwrap(), fs::symlink_metadata(&b).unwrap());
        match kind {
            'f' => assert_eq!(fs::read(&a).unwrap(), fs::read(&b).unwrap(), "{path}"),
            'l' => assert_eq!(fs::read_link(&a).unwrap(), fs::read_link(&b).unwrap(), "{path}"),
            _ => {}
        }
        if kind != 'l' {
            assert_eq!(ma.mode(), mb.mode(), "{path}");
        }
        assert_eq!(ma.mtime(), mb.mtime(), "{path}");
    }
    let (h, l) =
        (fs::metadata(got.join("etc/hostname")).unwrap(), fs::metadata(got.join("etc/hostname.link")).unwrap());
    assert_eq!(h.ino(), l.ino(), "a hard link stays one");
    let sparse = fs::metadata(got.join("home/sparse")).unwrap();
    assert!(sparse.blocks() * 512 < MIB, "the sparse file stays sparse: {} blocks", sparse.blocks());

    // Bad paths say what is there.
    let out = cli.run(&["ls", "latest", "--image", "disk.raw", "/p3/etc"]);
    assert_ne!(code(&out), 0);
    assert!(output_text(&out).contains("its partitions are p1, p2"), "{}", output_text(&out));
    let out = cli.run(&["ls", "latest", "--image", "disk.raw", "/p1"]);
    assert!(output_text(&out).contains("no ext2/3/4 file system"), "{}", output_text(&out));
    let out = cli.run(&["dump", "latest", "--image", "disk.raw", "/p2/etc"]);
    assert_ne!(code(&out), 0);
    assert!(output_text(&out).contains("is a dir, not a file"), "{}", output_text(&out));
    let out = cli.run(&["dump", "latest", "--image", "disk.raw", "/p2/home/short/x"]);
    assert_ne!(code(&out), 0);
    assert!(output_text(&out).contains("home/short is a symbolic link"), "{}", output_text(&out));
    let out = cli.run(&["ls", "latest", "--image", "nothing.raw"]);
    assert_ne!(code(&out), 0);
    assert!(output_text(&out).contains("not found"), "{}", output_text(&out));
}

#[test]
fn mbr_logical_partitions_ext2_ext3_and_a_disk_without_a_table() {
    let cli = Cli::local();
    cli.init();
    let src = cli.path("src");
    fs::create_dir_all(src.join("d")).unwrap();
    // Past the twelve direct blocks of ext2/3, into double indirect ones (1 KiB blocks).
    fs::write(src.join("d/mapped.bin"), noise(600 << 10, 3)).unwrap();
    fs::write(src.join("small"), "s").unwrap();
    let disk = cli.path("disk.raw");
    fs::File::create(&disk).unwrap().set_len(32 * MIB).unwrap();
    let script = "label: dos\nstart=2048, size=16384, type=83\nstart=20480, size=40960, type=5\nstart=22528, size=16384, type=83\n";
    let mut sfdisk =
        Command::new("sfdisk").arg("-q").arg(&disk).stdin(Stdio::piped()).stdout(Stdio::null()).spawn().unwrap();
    std::io::Write::write_all(&mut sfdisk.stdin.take().unwrap(), script.as_bytes()).unwrap();
    assert!(sfdisk.wait().unwrap().success());
    for (kind, start) in [("ext3", 2048), ("ext2", 22528)] {
        let img = cli.path(&format!("{kind}.img"));
        run(Command::new(format!("mkfs.{kind}")).args(["-q", "-F", "-b", "1024", "-d"]).arg(&src).arg(&img).arg("8M"));
        place(&disk, &img, start);
    }
    let whole = cli.path("whole.raw");
    mkfs("ext4", &src, &whole, "8M");
    // A preallocated file (unwritten extents) over a deleted file's blocks:
    // it reads as zeros, as in the guest, not as what was there before.
    let stale = cli.path("stale");
    fs::write(&stale, noise(256 << 10, 9)).unwrap();
    let script = format!(
        "write {} stale\nrm stale\nwrite /dev/null prealloc\nfallocate /prealloc 0 255\nsif /prealloc size 262144\n",
        stale.display()
    );
    let mut debugfs = Command::new("debugfs")
        .arg("-w")
        .arg(&whole)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut debugfs.stdin.take().unwrap(), script.as_bytes()).unwrap();
    assert!(debugfs.wait().unwrap().success());
    // A change still in the journal (committed, not yet in place: a disk
    // captured while mounted): read as mounting would read it.
    let small = Command::new("debugfs").args(["-R", "bmap /small 0"]).arg(&whole).output().unwrap();
    let small: u64 = String::from_utf8_lossy(&small.stdout).trim().parse().unwrap();
    let block = cli.path("journaled");
    let mut data = b"S".to_vec();
    data.resize(1024, 0);
    fs::write(&block, data).unwrap();
    let script = cli.path("journal.txt");
    fs::write(&script, format!("jo\njw -b {small} {}\njc\n", block.display())).unwrap();
    run(Command::new("debugfs").arg("-w").arg("-f").arg(&script).arg(&whole));
    let raw = fs::read(&whole).unwrap();
    let needle = &noise(256 << 10, 9)[..64];
    assert!(raw.windows(64).any(|w| w == needle), "the deleted file's bytes are still on the disk");
    cli.json(&["backup", "--source", &format!("image:{}", disk.display())]);
    let paths: Vec<String> = listing(&cli, &["/"])
        .iter()
        .map(|v| v["path"].as_str().unwrap().to_string())
        .filter(|p| !p.contains("lost+found"))
        .collect();
    assert_eq!(
        paths,
        ["/p1", "/p1/d", "/p1/d/mapped.bin", "/p1/small", "/p5", "/p5/d", "/p5/d/mapped.bin", "/p5/small"]
    );
    for p in ["p1", "p5"] {
        let out =
            cli.command(&["dump", "latest", "--image", "disk.raw", &format!("/{p}/d/mapped.bin")]).output().unwrap();
        assert_eq!(out.stdout, noise(600 << 10, 3), "{p}");
    }

    // A file system filling the disk: paths start inside it.
    cli.json(&["backup", "--source", &format!("image:{}", whole.display())]);
    let out = cli.ok(&["ls", "latest", "--image", "whole.raw", "/d"]);
    assert_eq!(out.lines().collect::<Vec<_>>(), ["/d", "/d/mapped.bin"]);
    let out = cli.command(&["dump", "latest", "--image", "whole.raw", "/prealloc"]).output().unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(out.stdout, vec![0u8; 256 << 10], "an unwritten extent reads as zeros");
    let target = cli.path("whole-out");
    cli.ok(&["restore", "latest", "--image", "whole.raw", "--target", target.to_str().unwrap()]);
    assert_eq!(fs::read(target.join("d/mapped.bin")).unwrap(), noise(600 << 10, 3));
    assert_eq!(fs::read(target.join("small")).unwrap(), b"S", "the journal's version");
    let out = cli.run(&["ls", "latest", "--image", "whole.raw", "/small"]);
    assert!(output_text(&out).contains("1 block(s) read from the journal"), "{}", output_text(&out));
    // dump says so too, on standard error: the file's bytes stay clean.
    let out = cli.command(&["dump", "latest", "--image", "whole.raw", "/small"]).output().unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(&out.stdout[..], b"S", "the journal's version, and nothing else");
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 block(s) read from the journal"), "{}", output_text(&out));
}
