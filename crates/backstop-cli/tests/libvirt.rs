//! libvirt-managed VMs (`--source libvirt:DOMAIN`) against a real libvirtd
//! (the system daemon, as root: `scripts/test` installs
//! libvirt-daemon-system and libvirt-clients, and this test starts
//! libvirtd and virtlogd when they are not running) and real QEMU domains
//! with no guest OS, started paused; the guest's writes are made through
//! the monitor (`virsh qemu-monitor-command … qemu-io`).

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const MIB: u64 = 1 << 20;
const URI: &str = "qemu:///system";

fn virsh(args: &[&str]) -> std::process::Output {
    Command::new("virsh").arg("-c").arg(URI).args(args).output().expect("virsh (scripts/test installs libvirt-clients)")
}

fn virsh_ok(args: &[&str]) -> String {
    let out = virsh(args);
    assert!(out.status.success(), "virsh {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The system libvirtd, started (with virtlogd) if it does not answer.
fn libvirtd() {
    if virsh(&["version"]).status.success() {
        return;
    }
    assert_eq!(unsafe { libc::geteuid() }, 0, "libvirtd's system daemon runs as root; run the tests as root");
    for dir in ["/var/log/libvirt", "/run/libvirt"] {
        fs::create_dir_all(dir).unwrap();
    }
    for daemon in ["virtlogd", "libvirtd"] {
        let status = Command::new(daemon)
            .arg("-d")
            .status()
            .unwrap_or_else(|e| panic!("{daemon} cannot start ({e}); scripts/test installs libvirt-daemon-system"));
        assert!(status.success(), "{daemon} -d");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !virsh(&["version"]).status.success() {
        assert!(Instant::now() < deadline, "libvirtd did not come up");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A transient domain with disks, paused (no guest needed), destroyed when dropped.
struct Domain {
    name: String,
    devices: usize,
}

impl Domain {
    fn start(dir: &Path, name: &str, disks: &[(PathBuf, &str)]) -> Domain {
        libvirtd();
        let _ = virsh(&["destroy", name]);
        let mut xml = format!(
            "<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>\
             <os><type arch='x86_64' machine='q35'>hvm</type></os><devices>\
             <emulator>/usr/bin/qemu-system-x86_64</emulator>"
        );
        for (i, (path, format)) in disks.iter().enumerate() {
            let dev = format!("vd{}", (b'a' + i as u8) as char);
            xml.push_str(&format!(
                "<disk type='file' device='disk'><driver name='qemu' type='{format}'/>\
                 <source file='{}'/><target dev='{dev}' bus='virtio'/></disk>",
                path.display()
            ));
        }
        xml.push_str("</devices></domain>");
        let file = dir.join(format!("{name}.xml"));
        fs::write(&file, xml).unwrap();
        virsh_ok(&["create", file.to_str().unwrap(), "--paused"]);
        Domain { name: name.to_string(), devices: disks.len() }
    }

    /// A guest write: `pattern` over `len` bytes at `offset` of disk `i`.
    fn write(&self, i: usize, pattern: u8, offset: u64, len: u64) {
        assert!(i < self.devices);
        let line = format!("qemu-io -d virtio-disk{i}/virtio-backend \"write -P {pattern} {offset} {len}\"");
        let out = virsh_ok(&["qemu-monitor-command", &self.name, "--hmp", &line]);
        assert!(!out.contains("rror"), "{out}");
    }

    fn checkpoints(&self) -> Vec<String> {
        virsh_ok(&["checkpoint-list", &self.name, "--name"])
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Domain {
    fn drop(&mut self) {
        let _ = virsh(&["destroy", &self.name]);
    }
}

/// A backup of the domain: its snapshot's id and what the backup said.
fn backup(cli: &Cli, domain: &Domain) -> (String, String) {
    let spec = format!("libvirt:{}", domain.name);
    let out = cli.run(&["backup", "--source", &spec]);
    assert!(out.status.success(), "{}", output_text(&out));
    let latest = cli.json(&["snapshots"]).as_array().unwrap().last().unwrap()["id"].as_str().unwrap().to_string();
    (latest, output_text(&out))
}

/// The disk `entry` of snapshot `id`, restored as raw bytes.
fn restored(cli: &Cli, id: &str, entry: &str) -> Vec<u8> {
    let to = cli.path(&format!("{id}-{entry}"));
    let spec = format!("image:{}", to.display());
    cli.ok(&["restore", id, "--to", &spec, "--to-opt", &format!("entry={entry}")]);
    fs::read(to).unwrap()
}

fn bytes_read_of(log: &str, entry: &str) -> u64 {
    let line = log
        .lines()
        .find(|l| l.starts_with(&format!("{entry}: reading only what the guest wrote")))
        .unwrap_or_else(|| panic!("no incremental read of {entry} in:\n{log}"));
    line.rsplit(": ").next().unwrap().trim_end_matches(" bytes").parse().unwrap()
}

#[test]
fn a_libvirt_domain_is_backed_up_live_then_incrementally_and_restored() {
    let cli = Cli::local();
    cli.init();
    // QEMU runs as libvirt's user: the disks' directory must be reachable.
    let dir = cli.path("vm");
    fs::create_dir_all(&dir).unwrap();
    for d in [cli.dir.path(), dir.as_path()] {
        fs::set_permissions(d, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let (qcow2, raw) = (dir.join("a.qcow2"), dir.join("b.raw"));
    let made = Command::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(&qcow2).arg("64M").status().unwrap();
    assert!(made.success());
    fs::File::create(&raw).unwrap().set_len(16 * MIB).unwrap();
    let name = format!("backstop-test-{}", std::process::id());
    let vm = Domain::start(&dir, &name, &[(qcow2.clone(), "qcow2"), (raw.clone(), "raw")]);
    vm.write(0, 0x11, MIB, 64 << 10);
    vm.write(1, 0x22, 2 * MIB, 64 << 10);

    // Copies that cannot fit into temp_dir: refused before anything
    // changes (no checkpoint made), not failed midway.
    vm.write(1, 0x33, 8 * MIB, 4 * MIB);
    let small = SmallFs::mount(&cli.path("small"), "2m");
    let spec = format!("libvirt:{}", vm.name);
    let out = cli.run(&["backup", "--source", &spec, "--source-opt", &format!("temp_dir={}", small.0.display())]);
    assert_eq!(code(&out), 1, "{}", output_text(&out));
    assert!(output_text(&out).contains("copies of the disks for this backup take at least"), "{}", output_text(&out));
    assert!(vm.checkpoints().is_empty(), "{:?}", vm.checkpoints());
    drop(small);

    // The first backup: both disks whole; no guest agent, so crash-consistent.
    let (first, log) = backup(&cli, &vm);
    assert!(log.contains("crash-consistent"), "{log}");
    assert!(log.contains("vdb.raw: reading the whole disk: libvirt keeps checkpoints of qcow2 disks only"), "{log}");
    let a = restored(&cli, &first, "vda.raw");
    assert_eq!(a.len() as u64, 64 * MIB);
    assert!(a[MIB as usize..][..64 << 10].iter().all(|&b| b == 0x11));
    assert!(restored(&cli, &first, "vdb.raw")[2 * MIB as usize..][..64 << 10].iter().all(|&b| b == 0x22));
    let vm_json: serde_json::Value =
        serde_json::from_slice(&cli.command(&["dump", &first, "vm.json"]).output().unwrap().stdout).unwrap();
    assert_eq!(vm_json["name"], name.as_str());
    assert_eq!(vm_json["disks"][0]["file"], qcow2.to_str().unwrap());

    // Five scattered 4 KiB writes: the incremental reads at most five of
    // QEMU's 64 KiB copy units of the qcow2 disk, and restores bit-identical.
    let offsets = [3 * MIB, 9 * MIB + 4096, 20 * MIB, 40 * MIB + 8192, 63 * MIB];
    for (i, &at) in offsets.iter().enumerate() {
        vm.write(0, 0x30 + i as u8, at, 4096);
    }
    let (second, log) = backup(&cli, &vm);
    let read = bytes_read_of(&log, "vda.raw");
    assert!(read <= 5 * (64 << 10), "read {read} bytes for 5 x 4 KiB:\n{log}");
    let a = restored(&cli, &second, "vda.raw");
    for (i, &at) in offsets.iter().enumerate() {
        assert!(a[at as usize..][..4096].iter().all(|&b| b == 0x30 + i as u8), "write {i}");
    }
    assert!(a[MIB as usize..][..64 << 10].iter().all(|&b| b == 0x11), "the parent's data");
    let nonzero = a.iter().filter(|&&b| b != 0).count();
    assert_eq!(nonzero, (64 << 10) + 5 * 4096, "nothing else");
    // The checkpoint followed and the new one: no more.
    assert_eq!(vm.checkpoints().len(), 2, "{:?}", vm.checkpoints());

    // The parent's checkpoint gone: the whole disk, and the log says why.
    for c in vm.checkpoints() {
        virsh_ok(&["checkpoint-delete", &name, &c]);
    }
    vm.write(0, 0x44, 5 * MIB, 4096);
    let (third, log) = backup(&cli, &vm);
    assert!(log.contains("vda.raw: reading the whole disk: libvirt has no checkpoint"), "{log}");
    assert!(restored(&cli, &third, "vda.raw")[5 * MIB as usize..][..4096].iter().all(|&b| b == 0x44));
    assert_eq!(vm.checkpoints().len(), 1);

    // What is not there says so.
    let out = cli.run(&["backup", "--source", "libvirt:no-such-domain-here"]);
    assert_ne!(code(&out), 0);
    assert!(output_text(&out).contains("no-such-domain-here"), "{}", output_text(&out));
}
