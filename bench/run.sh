#!/usr/bin/env bash
# Backstop against restic, Borg and rustic on the same data, in one run.
#
#   bench/run.sh [PHASE...]     (default: gen mixed vm s3 s3-latency; add `install` on a fresh machine)
#
# Builds the release binary and the S3-protocol server the s3 phases start
# (backstop-s3-server, from the testkit) with the bench-lto profile, runs run_peers.sh
# (copied from ../shared/bench, see its header for phases and variables)
# with Backstop beside the peers, and writes bench/RESULTS.md from the
# medians. Results are ratios to the fastest peer of the same run: these
# machines are noisy, absolute times are not comparable across runs.
#
# Env: REPS (1), TOOLS, TOOLS_VM, DATA (/tmp/bench-data), S3_LATENCY_MS (20) as in run_peers.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
phases=("$@")
[ ${#phases[@]} -gt 0 ] || phases=(gen mixed vm s3 s3-latency)

bench/build.sh
export BACKSTOP_BIN=$root/target/bench-lto/backstop
export S3_SERVER=$root/target/bench-lto/backstop-s3-server
export REPS=${REPS:-1}
have() { command -v "$1" >/dev/null; }
default_tools="backstop"
have restic && default_tools+=" restic"
have rustic && default_tools+=" rustic"
have borg && default_tools+=" borg-lz4"
export TOOLS=${TOOLS:-$default_tools}
vm_extra=""
have borg && vm_extra+=" borg-fixed64k"
have rustic && vm_extra+=" rustic-fixed64k"
export TOOLS_VM=${TOOLS_VM:-"$TOOLS$vm_extra"}
export DATA=${DATA:-/tmp/bench-data}
export RESULTS=${RESULTS:-$DATA/results}

rm -rf "$RESULTS"
setsid bash bench/run_peers.sh "${phases[@]}"
# The sections other scripts write (queue.sh, image.sh) are kept.
kept=$(python3 -c 'import re,sys; print("\n\n".join(m.group(0) for m in re.finditer(r"<!-- (\w+) -->.*?<!-- /\1 -->", open(sys.argv[1]).read(), re.S)))' bench/RESULTS.md 2>/dev/null || true)
python3 bench/report.py "$RESULTS" > bench/RESULTS.md
[ -z "$kept" ] || printf '\n%s\n' "$kept" >> bench/RESULTS.md
cat bench/RESULTS.md
