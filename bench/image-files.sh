#!/usr/bin/env bash
# Files out of a disk snapshot without restoring the disk (issue 18): list,
# restore and dump one 10 MiB file from an ext4 partition of a backed-up
# 4 GiB image, with the bytes fetched from the repository. Needs sgdisk and
# mkfs.ext4 (scripts/test installs them). Prints a markdown section for
# bench/RESULTS.md.
#
#   bench/image-files.sh      Env: see bench/image_files.py (SIZE_GIB, DATA_MIB, WORK)
set -euo pipefail
cd "$(dirname "$0")/.."
bench/build.sh
BACKSTOP_BIN=$PWD/target/bench-lto/backstop exec python3 bench/image_files.py
