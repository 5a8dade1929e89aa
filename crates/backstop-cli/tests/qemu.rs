//! Live VM backups (`--source qemu:SOCKET`) against real QEMU processes:
//! `qemu-system-x86_64` with qcow2 and raw disks and no guest (QEMU's
//! block layer runs without one, as in its own iotests); the guest's
//! writes are made through the monitor (`qemu-io`), a stand-in guest agent
//! answers on its own socket. `scripts/test` installs QEMU.

mod common;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backstop_source::qmp::Qmp;
use common::*;
use serde_json::{Value, json};

const MIB: u64 = 1 << 20;

/// A running QEMU with disks and two QMP sockets — the backup's, and the
/// test's own (a monitor serves one client at a time) — killed when dropped.
struct Vm {
    child: Child,
    socket: PathBuf,
    control: PathBuf,
    drives: Vec<(PathBuf, &'static str)>,
}

impl Vm {
    fn start(dir: &Path, drives: &[(PathBuf, &'static str)]) -> Vm {
        let socket = dir.join("vm.qmp");
        let control = dir.join("control.qmp");
        let _ = fs::remove_file(&socket);
        let _ = fs::remove_file(&control);
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(["-M", "q35", "-S", "-nodefaults", "-display", "none", "-accel", "tcg"]);
        for (i, (path, format)) in drives.iter().enumerate() {
            cmd.arg("-drive").arg(format!("file={},format={format},if=virtio,id=drive{i}", path.display()));
        }
        for s in [&socket, &control] {
            cmd.arg("-qmp").arg(format!("unix:{},server=on,wait=off", s.display()));
        }
        let child = cmd.stdout(Stdio::null()).stderr(Stdio::inherit()).spawn().unwrap_or_else(|e| {
            panic!("qemu-system-x86_64 cannot start ({e}); scripts/test installs it (apt-get install qemu-system-x86 qemu-utils)")
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        while Qmp::monitor(&control, Duration::from_secs(5)).is_err() {
            assert!(Instant::now() < deadline, "QEMU's monitor did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
        Vm { child, socket, control, drives: drives.to_vec() }
    }

    fn qmp(&self) -> Qmp {
        Qmp::monitor(&self.control, Duration::from_secs(30)).unwrap()
    }

    /// A guest write: `pattern` over `[offset, offset + len)` of drive `i`.
    fn write(&self, i: usize, pattern: u8, offset: u64, len: u64) {
        let line = format!("qemu-io drive{i} \"write -P {pattern} {offset} {len}\"");
        let out = self.qmp().execute("human-monitor-command", json!({"command-line": line})).unwrap();
        assert!(!out.as_str().unwrap_or("").contains("error"), "{out}");
    }

    fn names(&self, command: &str, args: Value) -> Vec<String> {
        let out = self.qmp().execute(command, args).unwrap();
        let key = if command == "query-jobs" { "id" } else { "node-name" };
        out.as_array().unwrap().iter().filter_map(|v| v[key].as_str().map(str::to_string)).collect()
    }

    fn backstop_nodes(&self) -> Vec<String> {
        let all = self.names("query-named-block-nodes", json!({"flat": true}));
        all.into_iter().filter(|n| n.starts_with("backstop-")).collect()
    }

    fn backstop_jobs(&self) -> Vec<String> {
        self.names("query-jobs", json!({})).into_iter().filter(|n| n.starts_with("backstop-")).collect()
    }

    /// The names of drive `i`'s dirty bitmaps.
    fn bitmaps(&self, i: usize) -> Vec<String> {
        let block = self.qmp().execute("query-block", json!({})).unwrap();
        let dev = block.as_array().unwrap().iter().find(|d| d["device"] == format!("drive{i}")).unwrap().clone();
        let maps = dev["inserted"]["dirty-bitmaps"].as_array().cloned().unwrap_or_default();
        maps.iter().map(|b| b["name"].as_str().unwrap().to_string()).collect()
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn restart(&mut self, dir: &Path) {
        self.kill9();
        *self = Vm::start(dir, &self.drives.clone());
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A disk file of `size` bytes with `writes` in it, and what the guest sees.
fn make_disk(path: &Path, format: &str, size: u64, writes: &[(u8, u64, u64)]) -> Vec<u8> {
    let status = Command::new("qemu-img")
        .args(["create", "-q", "-f", format])
        .arg(path)
        .arg(size.to_string())
        .status()
        .expect("qemu-img (qemu-utils) is needed");
    assert!(status.success());
    let mut expected = vec![0u8; size as usize];
    for &(pattern, offset, len) in writes {
        let out = Command::new("qemu-io")
            .args(["-f", format, "-c", &format!("write -P {pattern} {offset} {len}")])
            .arg(path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        apply(&mut expected, pattern, offset, len);
    }
    expected
}

fn apply(disk: &mut [u8], pattern: u8, offset: u64, len: u64) {
    disk[offset as usize..(offset + len) as usize].fill(pattern);
}

/// Restore `entry` of the latest snapshot as a raw image and read it.
fn restored(cli: &Cli, snapshot: &str, entry: &str) -> Vec<u8> {
    let out = cli.path(&format!("restored-{entry}"));
    let _ = fs::remove_file(&out);
    let to = format!("image:{}", out.display());
    let entry = format!("entry={entry}");
    cli.ok(&["restore", snapshot, "--to", &to, "--to-opt", &entry]);
    fs::read(&out).unwrap()
}

/// Run a backup of the VM, returning its snapshot (as `snapshots --json`
/// shows it) and its log.
fn backup(cli: &Cli, vm: &Vm, opts: &[&str]) -> (Value, String) {
    let spec = format!("qemu:{}", vm.socket.display());
    let mut args = vec!["backup", "--source", &spec];
    for o in opts {
        args.extend(["--source-opt", o]);
    }
    let out = cli.run(&args);
    let text = output_text(&out);
    assert!(out.status.success(), "backup failed:\n{text}");
    (latest(cli), text)
}

fn latest(cli: &Cli) -> Value {
    cli.json(&["snapshots"]).as_array().unwrap().last().unwrap().clone()
}

/// A local repository and a directory for a VM's disks and sockets.
fn repository_and_vm_dir() -> (Cli, PathBuf) {
    let cli = Cli::local();
    cli.init();
    let dir = cli.path("vm");
    fs::create_dir_all(&dir).unwrap();
    (cli, dir)
}

/// A backup of `vm` (`args` before its `--source`) in the background,
/// returned once QEMU's copy has started.
fn start_backup(cli: &Cli, vm: &Vm, args: &[&str]) -> Child {
    let spec = format!("qemu:{}", vm.socket.display());
    let mut all = vec!["backup", "--source", &spec];
    all.extend_from_slice(args);
    let mut child = cli.command(&all).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    wait_for_copy(vm, &mut child);
    child
}

/// Wait until the backup `child` has started QEMU's copy.
fn wait_for_copy(vm: &Vm, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while vm.backstop_jobs().is_empty() {
        if let Some(status) = child.try_wait().unwrap() {
            let (mut out, mut err) = (String::new(), String::new());
            std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut out).unwrap();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            panic!("the backup ended ({status}) before QEMU's copy was seen:\n{out}\n{err}");
        }
        assert!(Instant::now() < deadline, "no copy job appeared");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn assert_same(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: size");
    if let Some(at) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!("{what}: differs first at byte {at} ({} instead of {})", got[at], want[at]);
    }
}

#[test]
fn a_running_vm_is_backed_up_at_one_point_in_time_and_incrementals_read_what_changed() {
    let (cli, dir) = repository_and_vm_dir();
    let d0 = dir.join("d0.qcow2");
    let d1 = dir.join("d1.raw");
    let mut want0 = make_disk(&d0, "qcow2", 16 * MIB, &[(0x11, 0, MIB), (0x22, 9 * MIB, 2 * MIB)]);
    let mut want1 = make_disk(&d1, "raw", 8 * MIB, &[(0x33, MIB, MIB)]);
    let vm = Vm::start(&dir, &[(d0.clone(), "qcow2"), (d1.clone(), "raw")]);

    // The first backup, slowed down so that the guest writes while QEMU
    // copies: the writes land after the point in time, on both disks.
    let child = start_backup(&cli, &vm, &["--source-opt", "speed=4m"]);
    let during = [(0, 0xa1, 9 * MIB + 8192, 4096), (0, 0xa2, 15 * MIB, 4096), (1, 0xa3, MIB + 4096, 4096)];
    for &(drive, pattern, offset, len) in &during {
        vm.write(drive, pattern, offset, len);
    }
    let out = child.wait_with_output().unwrap();
    let log = output_text(&out);
    assert!(out.status.success(), "{log}");
    let first = latest(&cli);
    assert!(log.contains("drive0.raw: reading the whole disk: no parent snapshot"), "{log}");
    assert!(log.contains("keeps its dirty bitmap only while QEMU runs"), "{log}");
    let id = first["id"].as_str().unwrap().to_string();
    assert_same(&restored(&cli, &id, "drive0.raw"), &want0, "drive0 at the point in time");
    assert_same(&restored(&cli, &id, "drive1.raw"), &want1, "drive1 at the point in time");
    let layout: Value = serde_json::from_str(&cli.ok(&["dump", &id, "vm.json"])).unwrap();
    assert_eq!(layout["disks"][0]["size"], 16 * MIB, "{layout}");
    assert_eq!(layout["disks"][1]["format"], "raw", "{layout}");
    assert!(vm.backstop_nodes().is_empty() && vm.backstop_jobs().is_empty());
    for &(drive, pattern, offset, len) in &during {
        apply(if drive == 0 { &mut want0 } else { &mut want1 }, pattern, offset, len);
    }

    // N scattered 4 KiB writes (and those made during the first backup):
    // the incremental reads only the 64 KiB clusters QEMU copies for them
    // (its copy's unit: QEMU 7.2 has no smaller one), not the disks.
    let mut written = during.len() as u64;
    for k in 0..24u64 {
        let (drive, offset) = (k as usize % 2, (k * 331 * 4096) % (8 * MIB));
        vm.write(drive, 0x40 + k as u8, offset, 4096);
        apply(if drive == 0 { &mut want0 } else { &mut want1 }, 0x40 + k as u8, offset, 4096);
        written += 1;
    }
    let (second, log) = backup(&cli, &vm, &[]);
    assert_eq!(second["parent"], first["id"]);
    assert!(log.contains("drive0.raw: reading only what the guest wrote"), "{log}");
    let read = second["summary"]["bytes_read"].as_u64().unwrap();
    assert!(read <= written * (64 << 10) + 4096, "read {read} bytes for {written} scattered writes");
    let id = second["id"].as_str().unwrap().to_string();
    assert_same(&restored(&cli, &id, "drive0.raw"), &want0, "drive0 after the incremental");
    assert_same(&restored(&cli, &id, "drive1.raw"), &want1, "drive1 after the incremental");

    // The whole VM into a directory (`qemu-disks:DIR`, an image restore
    // with format=qcow2): every disk as a qcow2 file (checked against the
    // snapshot by qemu-img compare), beside vm.json.
    let whole = cli.path("whole-vm");
    let to = format!("qemu-disks:{}", whole.display());
    cli.ok(&["restore", &id, "--to", &to]);
    let mut names: Vec<String> =
        fs::read_dir(&whole).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, ["drive0.qcow2", "drive1.qcow2", "vm.json"]);
    for (name, want) in [("drive0", &want0), ("drive1", &want1)] {
        let qcow2 = whole.join(format!("{name}.qcow2"));
        let raw = whole.join(format!("{name}.check.raw"));
        let status =
            Command::new("qemu-img").args(["convert", "-f", "qcow2", "-O", "raw"]).arg(&qcow2).arg(&raw).status();
        assert!(status.unwrap().success());
        assert_same(&fs::read(&raw).unwrap(), want, &format!("{name}.qcow2 of the whole VM"));
    }
    let layout: Value = serde_json::from_slice(&fs::read(whole.join("vm.json")).unwrap()).unwrap();
    assert_eq!(layout["disks"].as_array().unwrap().len(), 2);
    // Each disk keeps the bitmaps of the last two backups (the next one
    // follows the newer and removes the older), nothing else.
    let bitmap = |snapshot: &Value, entry: &str| {
        snapshot["source"]["generations"][entry].as_str().unwrap().split('/').next().unwrap().to_string()
    };
    for (i, entry) in [(0, "drive0.raw"), (1, "drive1.raw")] {
        let mut have = vm.bitmaps(i);
        have.sort();
        let mut want = vec![bitmap(&first, entry), bitmap(&second, entry)];
        want.sort();
        assert_eq!(have, want);
    }
    cli.check_clean(true);
}

#[test]
fn a_killed_qemu_or_worker_costs_a_full_read_and_leaves_nothing_behind() {
    let (cli, dir) = repository_and_vm_dir();
    let d0 = dir.join("d0.qcow2");
    let mut want = make_disk(&d0, "qcow2", 16 * MIB, &[(0x11, 0, 4 * MIB)]);
    let mut vm = Vm::start(&dir, &[(d0.clone(), "qcow2")]);
    // The copies go to a directory of this test's own, checked at the end.
    let copies = cli.path("copies");
    fs::create_dir_all(&copies).unwrap();
    let temp_dir = format!("temp_dir={}", copies.display());
    backup(&cli, &vm, &[&temp_dir]);

    // QEMU killed: its persistent bitmap was not saved; the next backup
    // reads the whole disk and says why.
    vm.restart(&dir);
    vm.write(0, 0x55, 5 * MIB, 4096);
    apply(&mut want, 0x55, 5 * MIB, 4096);
    let (report, log) = backup(&cli, &vm, &[&temp_dir]);
    assert!(log.contains("drive0.raw: reading the whole disk"), "{log}");
    assert!(log.contains("inconsistent") || log.contains("has no dirty bitmap"), "{log}");
    let id = report["id"].as_str().unwrap().to_string();
    assert_same(&restored(&cli, &id, "drive0.raw"), &want, "after QEMU was killed");

    // Cancelled (Ctrl-C) while QEMU copies: the copy is stopped and
    // removed at once, no snapshot is written.
    let before = cli.json(&["snapshots"]).as_array().unwrap().len();
    let child = start_backup(&cli, &vm, &["--force", "--source-opt", "speed=256k", "--source-opt", &temp_dir]);
    // Meanwhile a second backup of the VM is refused (it would take the
    // first one's copy for a leftover).
    let out = cli.run(&["backup", "--source", &format!("qemu:{}", vm.socket.display())]);
    assert_eq!(code(&out), 1, "{}", output_text(&out));
    assert!(output_text(&out).contains("another backup of the VM"), "{}", output_text(&out));
    assert_eq!(vm.backstop_jobs().len(), 1);
    // The copy is never flushed to the disk: it is read once and unlinked.
    let nodes = vm.qmp().execute("query-named-block-nodes", json!({"flat": true})).unwrap();
    let copy_nodes: Vec<&Value> = nodes
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["node-name"].as_str().is_some_and(|n| n.starts_with("backstop-")))
        .collect();
    let no_flush = copy_nodes.iter().all(|n| n["cache"]["no-flush"] == true);
    assert!(!copy_nodes.is_empty() && no_flush, "{copy_nodes:?}");
    // SAFETY: a signal to our own child, which has not been waited for.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let signalled = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "{}", output_text(&out));
    // Not after the copy's 16 s (4 MiB of data at 256 KiB/s): the copy
    // itself was stopped.
    assert!(signalled.elapsed() < Duration::from_secs(8), "{:?}", signalled.elapsed());
    assert!(vm.backstop_nodes().is_empty(), "{:?}", vm.backstop_nodes());
    assert!(vm.backstop_jobs().is_empty(), "{:?}", vm.backstop_jobs());
    assert_eq!(cli.json(&["snapshots"]).as_array().unwrap().len(), before);

    // The backup process killed while QEMU copies: its node and job stay
    // in the VM until the next backup removes them.
    let mut child = start_backup(&cli, &vm, &["--force", "--source-opt", "speed=256k", "--source-opt", &temp_dir]);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!vm.backstop_nodes().is_empty(), "a killed backup leaves its target node");
    let (report, log) = backup(&cli, &vm, &[&temp_dir]);
    assert!(log.contains("left by an earlier backup"), "{log}");
    assert!(vm.backstop_nodes().is_empty(), "{:?}", vm.backstop_nodes());
    assert!(vm.backstop_jobs().is_empty(), "{:?}", vm.backstop_jobs());
    assert_eq!(vm.bitmaps(0).len(), 1, "{:?}", vm.bitmaps(0));
    let id = report["id"].as_str().unwrap().to_string();
    assert_same(&restored(&cli, &id, "drive0.raw"), &want, "after the worker was killed");
    // No copy is left in the copies' directory either (the killed backup's
    // directory was removed by the next one).
    let left: Vec<_> = fs::read_dir(&copies).unwrap().filter_map(|e| e.ok()).map(|e| e.path()).collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_backup_whose_copies_cannot_fit_into_temp_dir_is_refused_before_it_starts() {
    let (cli, dir) = repository_and_vm_dir();
    let d0 = dir.join("d0.qcow2");
    let want = make_disk(&d0, "qcow2", 16 * MIB, &[(0x21, 0, 6 * MIB)]);
    let vm = Vm::start(&dir, &[(d0.clone(), "qcow2")]);
    let small = SmallFs::mount(&cli.path("small"), "2m");
    let temp_dir = format!("temp_dir={}", small.0.display());
    let spec = format!("qemu:{}", vm.socket.display());
    let out = cli.run(&["backup", "--source", &spec, "--source-opt", &temp_dir]);
    assert_eq!(code(&out), 1, "{}", output_text(&out));
    let text = output_text(&out);
    assert!(text.contains("free, and QEMU's copies of the disks for this backup take at least"), "{text}");
    assert!(text.contains("drive0.raw 6."), "the disk file's data, about 6 MiB: {text}");
    // Nothing was started or left in the VM, and no snapshot written.
    assert!(vm.backstop_nodes().is_empty() && vm.backstop_jobs().is_empty());
    assert!(vm.bitmaps(0).is_empty(), "{:?}", vm.bitmaps(0));
    assert!(cli.json(&["snapshots"]).as_array().unwrap().is_empty());

    // With room, the full backup; then an incremental of one 64 KiB write
    // fits where the whole disk did not.
    let (_, log) = backup(&cli, &vm, &[]);
    assert!(log.contains("reading the whole disk"), "{log}");
    vm.write(0, 0x22, 8 * MIB, 64 << 10);
    let mut want = want;
    apply(&mut want, 0x22, 8 * MIB, 64 << 10);
    let (report, log) = backup(&cli, &vm, &[&temp_dir]);
    assert!(log.contains("reading only what the guest wrote"), "{log}");
    let id = report["id"].as_str().unwrap().to_string();
    assert_same(&restored(&cli, &id, "drive0.raw"), &want, "the incremental through the small temp_dir");
}

/// The bytes QEMU copied, as the backup's log says.
fn copied_mib(log: &str) -> f64 {
    let (_, after) = log.split_once("QEMU copied ").unwrap_or_else(|| panic!("no copy figure in:\n{log}"));
    after.split_once(" MiB").and_then(|(n, _)| n.parse().ok()).unwrap_or_else(|| panic!("{after}"))
}

#[test]
fn a_whole_copy_takes_the_disks_data_not_its_size_and_follows_backing_files() {
    let (cli, dir) = repository_and_vm_dir();
    // A large, mostly empty disk, and an overlay whose data is mostly in
    // its backing file.
    let sparse = dir.join("sparse.qcow2");
    let want_sparse = make_disk(&sparse, "qcow2", 256 * MIB, &[(0x61, 100 * MIB, MIB)]);
    let base = dir.join("base.qcow2");
    let mut want_overlay = make_disk(&base, "qcow2", 8 * MIB, &[(0x62, 0, 3 * MIB)]);
    let overlay = dir.join("overlay.qcow2");
    let status = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(&base)
        .arg(&overlay)
        .status()
        .unwrap();
    assert!(status.success());
    let out =
        Command::new("qemu-io").args(["-f", "qcow2", "-c", "write -P 0x63 2M 2M"]).arg(&overlay).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    apply(&mut want_overlay, 0x63, 2 * MIB, 2 * MIB);
    let vm = Vm::start(&dir, &[(sparse.clone(), "qcow2"), (overlay.clone(), "qcow2")]);

    // The sparse disk's 1 MiB is copied, not its 256 MiB (at 64 MiB/s those
    // would take 4 s); the overlay is copied with its backing file's data.
    let (report, log) = backup(&cli, &vm, &["speed=64m"]);
    let copied = copied_mib(&log);
    assert!(copied < 16.0, "QEMU copied {copied} MiB for 1 MiB of data and an 8 MiB overlay:\n{log}");
    let id = report["id"].as_str().unwrap().to_string();
    assert_same(&restored(&cli, &id, "drive0.raw"), &want_sparse, "the sparse disk");
    assert_same(&restored(&cli, &id, "drive1.raw"), &want_overlay, "the overlay with its backing file's data");
}

/// A stand-in guest agent: answers `guest-sync` and records freeze and
/// thaw; `answer_freeze` false leaves a freeze unanswered (a hung guest).
fn agent(path: &Path, answer_freeze: bool, on_freeze: impl Fn() + Send + Sync + 'static) -> Arc<Mutex<Vec<String>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let listener = UnixListener::bind(path).unwrap();
    let (log, on_freeze) = (seen.clone(), Arc::new(on_freeze));
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let (log, on_freeze) = (log.clone(), on_freeze.clone());
            std::thread::spawn(move || {
                let mut out = conn.try_clone().unwrap();
                for line in BufReader::new(conn).lines() {
                    let Ok(line) = line else { return };
                    let req: Value = serde_json::from_str(&line).unwrap();
                    let cmd = req["execute"].as_str().unwrap().to_string();
                    let answer = match cmd.as_str() {
                        "guest-sync" => req["arguments"]["id"].clone(),
                        "guest-fsfreeze-freeze" => {
                            log.lock().unwrap().push("freeze".into());
                            on_freeze();
                            if !answer_freeze {
                                continue;
                            }
                            json!(2)
                        }
                        "guest-fsfreeze-thaw" => {
                            log.lock().unwrap().push("thaw".into());
                            json!(2)
                        }
                        _ => json!({}),
                    };
                    let _ = writeln!(out, "{}", json!({"return": answer}));
                }
            });
        }
    });
    seen
}

#[test]
fn the_guest_is_frozen_for_the_point_in_time_and_always_thawed() {
    let (cli, dir) = repository_and_vm_dir();
    let d0 = dir.join("d0.qcow2");
    make_disk(&d0, "qcow2", 4 * MIB, &[(0x11, 0, MIB)]);
    let vm = Arc::new(Vm::start(&dir, &[(d0.clone(), "qcow2")]));

    let sock = dir.join("qga.sock");
    let seen = agent(&sock, true, || {});
    let opt = format!("agent={}", sock.display());
    let (_, log) = backup(&cli, &vm, &[&opt]);
    assert!(log.contains("the guest agent froze 2 file system(s)"), "{log}");
    assert_eq!(*seen.lock().unwrap(), ["freeze", "thaw"]);

    // The point in time fails while the guest is frozen (its copy's node
    // is taken away): the backup fails, the guest is thawed anyway.
    let sock = dir.join("qga-fail.sock");
    let socket = vm.control.clone();
    let seen = agent(&sock, true, move || {
        let mut qmp = Qmp::monitor(&socket, Duration::from_secs(10)).unwrap();
        let nodes = qmp.execute("query-named-block-nodes", json!({"flat": true})).unwrap();
        for n in nodes.as_array().unwrap() {
            let name = n["node-name"].as_str().unwrap_or("");
            if name.starts_with("backstop-") {
                qmp.execute("blockdev-del", json!({"node-name": name})).unwrap();
            }
        }
    });
    let spec = format!("qemu:{}", vm.socket.display());
    let opt = format!("agent={}", sock.display());
    let out = cli.run(&["backup", "--source", &spec, "--source-opt", &opt]);
    assert_eq!(code(&out), 1, "{}", output_text(&out));
    assert!(output_text(&out).contains("point-in-time transaction"), "{}", output_text(&out));
    assert_eq!(*seen.lock().unwrap(), ["freeze", "thaw"]);
    assert!(vm.backstop_jobs().is_empty());

    // A guest whose freeze never answers: after the timeout the backup goes
    // on crash-consistent, says so, and thaws.
    let sock = dir.join("qga-hung.sock");
    let seen = agent(&sock, false, || {});
    let opts = [format!("agent={}", sock.display()), "agent_timeout=1".to_string()];
    let (_, log) = backup(&cli, &vm, &[&opts[0], &opts[1]]);
    assert!(log.contains("the backup is crash-consistent"), "{log}");
    assert_eq!(*seen.lock().unwrap(), ["freeze", "thaw"]);

    // Not a QEMU monitor, and no socket at all: clear errors.
    let out = cli.run(&["backup", "--source", &format!("qemu:{}", dir.join("none.sock").display())]);
    assert_eq!(code(&out), 1);
    assert!(output_text(&out).contains("no QEMU monitor socket"), "{}", output_text(&out));
    let plain = dir.join("plain-file");
    fs::write(&plain, "not a socket").unwrap();
    let out = cli.run(&["backup", "--source", &format!("qemu:{}", plain.display())]);
    assert_eq!(code(&out), 1);
    assert!(output_text(&out).contains("QEMU monitor"), "{}", output_text(&out));
}

#[test]
fn a_plan_backs_up_a_running_vm_through_the_service() {
    let dir = tempfile::tempdir().unwrap();
    let d0 = dir.path().join("d0.qcow2");
    let mut want = make_disk(&d0, "qcow2", 8 * MIB, &[(0x11, 0, MIB)]);
    let vm = Vm::start(dir.path(), &[(d0.clone(), "qcow2")]);

    let data = dir.path().join("data");
    let args: Vec<String> =
        ["--data-dir", data.to_str().unwrap(), "--workers", "1"].iter().map(|s| s.to_string()).collect();
    let (serve, admin) = Serve::start(free_port(), &args);
    let (server, admin) = (serve.url(), admin.unwrap());
    let repo = dir.path().join("repo");
    let cli = Cli::at(repo.to_str().unwrap());
    cli.init();
    client(&server, &admin, &["repos", "add", "main", "--location", repo.to_str().unwrap()]);
    let spec = format!("qemu:{}", vm.socket.display());
    client(&server, &admin, &["sources", "add", "vm1", "--source", &spec]);
    let sources = client(&server, &admin, &["sources", "list"]);
    let vm1 = sources.as_array().unwrap().iter().find(|s| s["name"] == "vm1").unwrap().clone();
    assert_eq!(vm1["kind"], "qemu", "{vm1}");
    let plan = dir.path().join("plan.json");
    fs::write(&plan, json!({"name": "vm1-nightly", "source": "vm1", "repository": "main"}).to_string()).unwrap();
    client(&server, &admin, &["plans", "put", plan.to_str().unwrap()]);

    let run = |what: &str| -> String {
        let id = client(&server, &admin, &["plans", "run", "vm1-nightly"])["id"].as_str().unwrap().to_string();
        let done = wait_for(&server, &admin, &id, what, |j| {
            !["queued", "running"].contains(&j["state"].as_str().unwrap_or(""))
        });
        assert_eq!(done["state"], "succeeded", "{done}");
        client(&server, &admin, &["jobs", "logs", &id]).to_string()
    };
    let logs = run("the first backup");
    assert!(logs.contains("drive0.raw: reading the whole disk"), "{logs}");
    vm.write(0, 0x77, 4 * MIB, 64 << 10);
    apply(&mut want, 0x77, 4 * MIB, 64 << 10);
    let logs = run("the incremental");
    assert!(logs.contains("drive0.raw: reading only what the guest wrote"), "{logs}");
    assert_same(&restored(&cli, "latest", "drive0.raw"), &want, "the service's incremental");
}
