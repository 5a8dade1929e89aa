#!/usr/bin/env bash
# Live VM backups through QEMU's monitor (issue 18): first backup, the
# incremental through dirty bitmaps against the fallback (whole disk, block
# hashes) and the offline JSON-map path, and the guest's write slowdown
# during a backup. Needs qemu-system-x86_64 and qemu-img (scripts/test
# installs them). Prints a markdown section for bench/RESULTS.md.
#
#   bench/vm-live.sh      Env: see bench/vm_live.py (SIZE_GIB, DATA_MIB, CHANGED_MIB, WRITE_KIB, WORK)
set -euo pipefail
cd "$(dirname "$0")/.."
bench/build.sh
BACKSTOP_BIN=$PWD/target/bench-lto/backstop exec python3 bench/vm_live.py
