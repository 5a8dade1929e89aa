#!/usr/bin/env python3
"""Files out of a disk snapshot without restoring the disk (issue 18).

  bench/image-files.sh        (builds bench-lto, then runs this)
  Env: BACKSTOP_BIN, WORK (/tmp/bench-data/work-image-files), SIZE_GIB (4),
       DATA_MIB (1024)

A raw GPT disk of SIZE_GIB (p1: 1 MiB BIOS boot, p2: ext4 over the rest,
made by `mkfs.ext4 -d` from DATA_MIB of 10 MiB files of random bytes and
2,000 small text files), backed up as `image:`. Then, each timed (wall)
with the bytes read from the repository (`fetched`):
  1. `ls --image` of the whole file system;
  2. `restore --image --include` of one 10 MiB file, checked against the
     original (the target: fetches <= 2x its size);
  3. `dump --image` of the same file;
  4. for scale: the whole disk restored to a raw file (`--to image:`).
Prints a markdown section.
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

MIB = 1 << 20
BIN = os.environ.get("BACKSTOP_BIN", "target/bench-lto/backstop")
WORK = os.environ.get("WORK", "/tmp/bench-data/work-image-files")
SIZE = int(os.environ.get("SIZE_GIB", "4")) << 30
DATA = int(os.environ.get("DATA_MIB", "1024")) * MIB
P2 = 4096 * 512

env = dict(os.environ, BACKSTOP_PASSWORD="bench", BACKSTOP_REPOSITORY=f"{WORK}/repo",
           BACKSTOP_CACHE_DIR=f"{WORK}/cache")


def sh(*args, **kw):
    return subprocess.run(args, check=True, env=env, **kw)


def backstop(*args):
    t = time.monotonic()
    out = subprocess.run([BIN, *args], env=env, capture_output=True)
    took = time.monotonic() - t
    if out.returncode != 0:
        sys.exit(f"backstop {args} failed:\n{out.stdout.decode()}\n{out.stderr.decode()}")
    return took, out.stdout


def mib(n):
    return f"{n / MIB:.1f} MiB"


def sha(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(MIB):
            h.update(block)
    return h.hexdigest()


def main():
    shutil.rmtree(WORK, ignore_errors=True)
    src = f"{WORK}/src"
    os.makedirs(f"{src}/home/alice")
    files = DATA // (10 * MIB)
    for i in range(files):
        d = f"{src}/data/d{i % 8}"
        os.makedirs(d, exist_ok=True)
        with open(f"{d}/f{i:04}.bin", "wb") as f:
            f.write(os.urandom(10 * MIB))
    for i in range(2000):
        d = f"{src}/etc/conf{i % 40}"
        os.makedirs(d, exist_ok=True)
        with open(f"{d}/c{i}.conf", "w") as f:
            f.write(f"setting{i} = {i * 7}\n" * (1 + i % 50))
    target = f"{src}/home/alice/report.bin"
    with open(target, "wb") as f:
        f.write(os.urandom(10 * MIB))
    disk = f"{WORK}/disk.raw"
    with open(disk, "wb") as f:
        f.truncate(SIZE)
    sh("sgdisk", "-o", "-n", "1:2048:+1M", "-t", "1:ef02", "-n", "2:4096:0", disk, stdout=subprocess.DEVNULL)
    fs_bytes = SIZE - P2 - 34 * 512
    sh("mkfs.ext4", "-q", "-F", "-d", src, "-E", f"offset={P2}", disk, f"{fs_bytes // 4096 * 4}k")
    sh(BIN, "init", stdout=subprocess.DEVNULL)
    took_backup, _ = backstop("backup", "--source", f"image:{disk}")

    took_ls, listing = backstop("--json", "ls", "latest", "--image", "disk.raw", "/")
    entries = len(listing.splitlines())
    out = f"{WORK}/out"
    took_one, report = backstop("--json", "restore", "latest", "--image", "disk.raw", "--include",
                                "/p2/home/alice/report.bin", "--target", out)
    report = json.loads(report)
    assert sha(f"{out}/p2/home/alice/report.bin") == sha(target), "the restored file differs"
    fetched, requests = report["fetched"]["bytes"], report["fetched"]["requests"]
    took_dump, _ = backstop("dump", "latest", "--image", "disk.raw", "/p2/home/alice/report.bin")
    whole = f"{WORK}/whole.raw"
    took_whole, _ = backstop("restore", "latest", "--to", f"image:{whole}")
    ratio = fetched / (10 * MIB)

    print(f"""## Files inside a disk snapshot (`bench/image-files.sh`)

A {SIZE >> 30} GiB raw GPT disk, ext4 in p2 (`mkfs.ext4 -d`: {files} files of 10 MiB random
bytes, 2,000 small text files), backed up as `image:` (8 KiB chunks) in {took_backup:.2f} s.
One run, local repository, bench-lto build.

| step | wall | fetched from the repository |
|---|---|---|
| `ls --image disk.raw /` ({entries} entries) | {took_ls:.2f} s | |
| `restore --image … --include` one 10 MiB file | {took_one:.2f} s | {mib(fetched)} in {requests} requests = **{ratio:.2f}x** the file (target <= 2x) |
| `dump --image …` the same file | {took_dump:.2f} s | |
| the whole disk, `restore --to image:` (for scale) | {took_whole:.2f} s | the disk's data |
""")


if __name__ == "__main__":
    main()
