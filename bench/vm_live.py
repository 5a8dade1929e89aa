#!/usr/bin/env python3
"""Live VM backups (issue 18): a running QEMU with one qcow2 disk, backed up
through its monitor (`--source qemu:SOCKET`).

  bench/vm-live.sh            (builds bench-lto, then runs this)
  Env: BACKSTOP_BIN, WORK (/tmp/bench-data/work-vm-live), SIZE_GIB (4),
       DATA_MIB (1024), CHANGED_MIB (64), WRITE_KIB (64), COPY_WORKERS (the
       source's default; QEMU's own is 64), SPEED_MIB (100: the copy rate
       limit of the limited runs, bytes of data)

Steps, each timed (wall) with what Backstop read (`bytes_read`):
  1. first live backup (QEMU copies the whole disk, Backstop reads the copy);
  2. CHANGED_MIB of scattered guest writes of WRITE_KIB each, then the live
     incremental (QEMU copies what its dirty bitmap marked);
  3. the same writes again, the bitmap removed first: the fallback (whole
     copy, read, compared by block hashes against the parent);
  4. QEMU stopped: the disk file backed up as `image:` with a JSON
     changed-block map of the same writes (the offline map path);
  5. guest writes (256 MiB of 1 MiB writes through qemu-io) alone, and
     during a full live backup, unlimited and with `speed=SPEED_MIB`m: the
     guest's slowdown;
  6. the same overwrites with QEMU alone, no Backstop, each on a fresh copy
     of the disk written once at those offsets: alone, during QEMU's own push
     copy as Backstop makes it (`blockdev-backup sync=top`, one worker;
     unlimited, and at SPEED_MIB), during copy-before-write only (fleecing:
     `sync=none` into an overlay, nothing read) -- the floor any live
     backup through QEMU 7.2 pays -- and during pull mode as QEMU's own
     tools do it (the fleecing overlay exported over NBD and read whole by
     `qemu-img convert`, which skips holes, into a null target), and
     redirected into an external snapshot (`blockdev-snapshot-sync`: the
     writes go to a new overlay, nothing is copied before them).
Prints a markdown section.
"""
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import time

MIB = 1 << 20
BIN = os.environ.get("BACKSTOP_BIN", "target/bench-lto/backstop")
WORK = os.environ.get("WORK", "/tmp/bench-data/work-vm-live")
SIZE = int(os.environ.get("SIZE_GIB", "4")) << 30
DATA = int(os.environ.get("DATA_MIB", "1024")) * MIB
CHANGED = int(os.environ.get("CHANGED_MIB", "64")) * MIB
WRITE = int(os.environ.get("WRITE_KIB", "64")) << 10
WORKERS = os.environ.get("COPY_WORKERS")
LIMIT = int(os.environ.get("SPEED_MIB", "100")) * MIB

env = dict(os.environ, BACKSTOP_PASSWORD="bench", BACKSTOP_REPOSITORY=f"{WORK}/repo",
           BACKSTOP_CACHE_DIR=f"{WORK}/cache")


class Qmp:
    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX)
        self.s.connect(path)
        self.f = self.s.makefile("rw")
        self.f.readline()
        self.run("qmp_capabilities")

    def run(self, cmd, **args):
        self.f.write(json.dumps({"execute": cmd, "arguments": args}) + "\n")
        self.f.flush()
        while True:
            r = json.loads(self.f.readline())
            if "return" in r:
                return r["return"]
            if "error" in r:
                raise RuntimeError(f"{cmd}: {r['error']}")

    def io(self, line):
        out = self.run("human-monitor-command", **{"command-line": f'qemu-io drive0 "{line}"'})
        if "error" in out.lower() or "fail" in out.lower():
            raise RuntimeError(out)


def sh(*args, **kw):
    return subprocess.run(args, check=True, env=env, **kw)


def backstop(*args):
    t = time.monotonic()
    out = subprocess.run([BIN, *args], env=env, capture_output=True, text=True)
    took = time.monotonic() - t
    if out.returncode != 0:
        sys.exit(f"backstop {args} failed:\n{out.stdout}\n{out.stderr}")
    snaps = json.loads(subprocess.run([BIN, "--json", "snapshots"], env=env, capture_output=True,
                                      check=True).stdout)
    return took, snaps[-1]["summary"]["bytes_read"], out.stderr


def start_vm(disk):
    for s in ("vm.qmp", "ctl.qmp"):
        if os.path.exists(f"{WORK}/{s}"):
            os.remove(f"{WORK}/{s}")
    p = subprocess.Popen(["qemu-system-x86_64", "-M", "q35", "-S", "-nodefaults", "-display", "none",
                          "-accel", "tcg", "-drive", f"file={disk},format=qcow2,if=virtio,id=drive0",
                          "-qmp", f"unix:{WORK}/vm.qmp,server=on,wait=off",
                          "-qmp", f"unix:{WORK}/ctl.qmp,server=on,wait=off"],
                         stdout=subprocess.DEVNULL)
    for _ in range(200):
        try:
            return p, Qmp(f"{WORK}/ctl.qmp")
        except OSError:
            time.sleep(0.05)
    sys.exit("QEMU did not start")


def scattered(rng, n):
    slots = rng.sample(range(SIZE // WRITE), n)
    return [s * WRITE for s in slots]


def guest_writes(ctl, offsets, seed):
    for i, off in enumerate(offsets):
        ctl.io(f"write -P {(seed + i) % 251 + 1} {off} {WRITE}")


def mib(n):
    return f"{n / MIB:.1f} MiB"


def make_disk(disk):
    """DATA bytes of incompressible data in 16 MiB runs spread over SIZE, as qcow2."""
    rng = random.Random(18)
    raw = f"{WORK}/seed.raw"
    with open(raw, "wb") as f:
        f.truncate(SIZE)
        runs = DATA // (16 * MIB)
        step = SIZE // runs
        for i in range(runs):
            f.seek(i * step)
            f.write(rng.randbytes(16 * MIB))
    sh("qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, disk)
    os.remove(raw)


def timed_writes(ctl, offsets, seed):
    t0 = time.monotonic()
    for i, off in enumerate(offsets):
        ctl.io(f"write -P {(i + seed) % 251 + 1} {off} 1M")
    return time.monotonic() - t0


def qemu_alone(offsets, mode, speed=0):
    """Guest overwrites at `offsets` (written once first, as the Backstop
    runs above overwrite what they wrote alone) on a fresh disk with QEMU
    alone: `alone`, during a push copy as Backstop's (`top`, at most `speed`
    bytes/s when not 0), during copy-before-write only (`cbw`), during a
    pull of the fleecing overlay over NBD (`pull`), or redirected into an
    external snapshot (`row`: the guest writes into a new overlay, nothing
    is copied before it)."""
    disk = f"{WORK}/alone.qcow2"
    make_disk(disk)
    vm, ctl = start_vm(disk)
    timed_writes(ctl, offsets, 3)
    node = ctl.run("query-block")[0]["inserted"]["node-name"]
    target = f"{WORK}/alone-target.qcow2"
    sh("qemu-img", "create", "-q", "-f", "qcow2", target, str(SIZE))
    if mode == "top":
        ctl.run("blockdev-add", driver="qcow2", **{"node-name": "t", "file": {"driver": "file", "filename": target}})
        ctl.run("blockdev-backup", device=node, target="t", sync="top", speed=speed,
                **{"job-id": "j", "x-perf": {"max-workers": 1}})
    elif mode == "row":
        os.remove(target)
        ctl.run("blockdev-snapshot-sync", **{"node-name": node, "snapshot-file": target,
                                             "snapshot-node-name": "t", "format": "qcow2"})
    elif mode in ("cbw", "pull"):
        ctl.run("blockdev-add", driver="qcow2", backing=node,
                **{"node-name": "t", "file": {"driver": "file", "filename": target}})
        ctl.run("blockdev-backup", device=node, target="t", sync="none", **{"job-id": "j"})
    reader = None
    if mode == "pull":
        sock = f"{WORK}/alone-nbd.sock"
        if os.path.exists(sock):
            os.remove(sock)
        ctl.run("nbd-server-start", addr={"type": "unix", "data": {"path": sock}})
        ctl.run("block-export-add", type="nbd", id="e", **{"node-name": "t", "name": "t"})
        reader = subprocess.Popen(["qemu-img", "convert", "-n", "-f", "raw", f"nbd+unix:///t?socket={sock}",
                                   "--target-image-opts", f"driver=null-co,size={SIZE}"])
    took = timed_writes(ctl, offsets, 1)
    if reader and reader.wait() != 0:
        sys.exit("qemu-img convert from the NBD export failed")
    ctl.run("quit")
    vm.wait()
    os.remove(disk)
    os.remove(target)
    return took


def main():
    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(WORK)
    rng = random.Random(18)
    disk = f"{WORK}/vm.qcow2"
    make_disk(disk)
    sh(BIN, "init", stdout=subprocess.DEVNULL)
    vm, ctl = start_vm(disk)
    spec = f"qemu:{WORK}/vm.qmp"
    src = ["--source", spec] + (["--source-opt", f"copy_workers={WORKERS}"] if WORKERS else [])
    rows = []

    t, read, _ = backstop("backup", *src)
    rows.append(("first live backup", t, read, "—"))

    n = CHANGED // WRITE
    guest_writes(ctl, scattered(rng, n), 1)
    t_inc, read, log = backstop("backup", *src)
    assert "reading only what the guest wrote" in log, log
    rows.append((f"live incremental after {mib(CHANGED)} of scattered {WRITE >> 10} KiB writes", t_inc, read,
                 f"{read / CHANGED:.2f}×"))

    guest_writes(ctl, scattered(rng, n), 2)
    inserted = ctl.run("query-block")[0]["inserted"]
    for b in inserted.get("dirty-bitmaps", []):
        ctl.run("block-dirty-bitmap-remove", node=inserted["node-name"], name=b["name"])
    t_fb, read, log = backstop("backup", *src)
    assert "reading the whole disk" in log, log
    rows.append(("the same with no bitmap (fallback: whole disk, block hashes)", t_fb, read,
                 f"{read / CHANGED:.2f}×"))

    # Guest writes alone, then during a full live backup (--force: no parent).
    big = [i * MIB for i in rng.sample(range(SIZE // MIB), 256)]
    alone = timed_writes(ctl, big, 0)

    def during_backup(*opts):
        th = threading.Thread(target=backstop, args=("backup", "--force", *src, *opts))
        th.start()
        while not [j for j in ctl.run("query-jobs") if j["id"].startswith("backstop-")]:
            time.sleep(0.01)
        took = timed_writes(ctl, big, 7)
        th.join()
        return took

    during = during_backup()
    limited = during_backup("--source-opt", f"speed={LIMIT >> 20}m")

    # The offline changed-block map path on the same file and change volume.
    ctl.run("quit")
    vm.wait()
    ispec = f"image:{disk}"
    backstop("backup", "--source", ispec, "--source-opt", "generation=1")
    offs = scattered(rng, n)
    for i, off in enumerate(offs):
        sh("qemu-io", "-f", "qcow2", "-c", f"write -P {i % 251 + 1} {off} {WRITE}", disk,
           stdout=subprocess.DEVNULL)
    with open(f"{WORK}/map.json", "w") as f:
        json.dump({"generation": 2, "parent_generation": 1, "extents": [[o, WRITE] for o in offs]}, f)
    t_map, read, _ = backstop("backup", "--source", ispec, "--source-opt", f"cbt={WORK}/map.json")
    rows.append((f"offline: the qcow2 file with a JSON map of {mib(CHANGED)} (image:)", t_map, read,
                 f"{read / CHANGED:.2f}×"))

    print(f"`bench/vm-live.sh` ({time.strftime('%Y-%m-%d')}): a {SIZE >> 30} GiB qcow2 disk with "
          f"{mib(DATA)} of incompressible data in a running `qemu-system-x86_64` "
          f"({subprocess.run(['qemu-system-x86_64', '--version'], capture_output=True, text=True).stdout.split(chr(10))[0]}), "
          "backed up through its monitor; one run, warm page cache.\n")
    print("| step | wall | Backstop read | read / changed |")
    print("|---|---|---|---|")
    for name, t, read, ratio in rows:
        print(f"| {name} | {t:.2f} s | {mib(read)} | {ratio} |")
    print(f"\nIncremental / fallback: {t_inc / t_fb:.2f}× the time (target ≤ 0.1×). "
          f"Guest writes of 256 MiB (1 MiB each, through qemu-io): {alone:.2f} s alone, {during:.2f} s "
          f"during a full live backup ({(during / alone - 1) * 100:+.0f} %, target ≤ +20 %); "
          f"{limited:.2f} s during one with `speed={LIMIT >> 20}m` ({(limited / alone - 1) * 100:+.0f} %).")
    floor = {mode: [qemu_alone(big, mode) for _ in range(3)] for mode in ("alone", "top", "cbw", "pull", "row")}
    floor["limited"] = [qemu_alone(big, "top", LIMIT) for _ in range(3)]
    base = sorted(floor["alone"])[1]
    print("\nThe same overwrites with QEMU alone (no Backstop), each on a fresh disk, 3 runs: "
          f"{', '.join(f'{t:.2f}' for t in floor['alone'])} s alone; during QEMU's own copy "
          f"(`sync=top`, one worker) {', '.join(f'{(t / base - 1) * 100:+.0f} %' for t in floor['top'])}, "
          f"the same at `speed={LIMIT >> 20}m` "
          f"{', '.join(f'{(t / base - 1) * 100:+.0f} %' for t in floor['limited'])}; "
          f"during copy-before-write only (fleecing, nothing read) "
          f"{', '.join(f'{(t / base - 1) * 100:+.0f} %' for t in floor['cbw'])}; "
          f"during a pull of the fleecing overlay over NBD (`qemu-img convert`) "
          f"{', '.join(f'{(t / base - 1) * 100:+.0f} %' for t in floor['pull'])}; "
          f"redirected into an external snapshot (nothing copied first) "
          f"{', '.join(f'{(t / base - 1) * 100:+.0f} %' for t in floor['row'])}.")
    shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    main()
