#!/usr/bin/env bash
# A/B of two Backstop binaries on one scenario, interleaved, warm cache.
#
#   bench/ab.sh BIN_A BIN_B [REPS] [SCENARIO]
#
# SCENARIO is `first` (default: init, then a first backup of the mixed
# tree), `restore` (a full restore of a repository made once per binary)
# or `vm-incremental` (the VM set's incremental after bench/run.sh's
# mutation, each run from a fresh repository and cache).
# The two binaries alternate (A B B A A B ...), so drift of these noisy
# machines lands on both; the source is read with cat right before each
# run, because the host reclaims idle page cache within seconds. Prints
# every run and the medians of wall and CPU (user + sys) time: CPU time
# is the steadier figure for a CPU-bound change.
#
# With S3_SERVER (the path of backstop-s3-server, which `bench/run.sh`
# builds), both repositories are buckets' prefixes on one such server
# started for the run, S3_LATENCY_MS (0) added to every request, and the
# server's CPU time of each run is printed beside the client's.
#
# Env: DATA (/tmp/bench-data; `bench/run.sh gen` makes $DATA/mixed), WORK ($DATA/ab),
#      S3_SERVER (unset), S3_LATENCY_MS (0).
set -euo pipefail
[ $# -ge 2 ] || { sed -n '2,22p' "$0"; exit 2; }
a=$(realpath "$1") b=$(realpath "$2") reps=${3:-5} scenario=${4:-first}
DATA=${DATA:-/tmp/bench-data}
WORK=${WORK:-$DATA/ab}
src=$DATA/mixed
vm=$DATA/vm
here=$(cd "$(dirname "$0")" && pwd)
[ -d "$src" ] || { echo "no $src: run bench/run.sh gen first" >&2; exit 2; }
export BACKSTOP_PASSWORD=ab-bench-not-secret
mkdir -p "$WORK"
out=$WORK/times.tsv
: >"$out"

warm() { find "$1" -type f -print0 | xargs -0 cat >/dev/null; }

s3_pid=""
if [ -n "${S3_SERVER:-}" ]; then
    export AWS_ACCESS_KEY_ID=ab-key AWS_SECRET_ACCESS_KEY=ab-secret-not-secret AWS_REGION=us-east-1 AWS_ALLOW_HTTP=true
    rm -rf "$WORK/s3" && mkdir -p "$WORK/s3"
    "$S3_SERVER" --root "$WORK/s3" --bucket ab-bench --latency-ms "${S3_LATENCY_MS:-0}" >"$WORK/s3.out" &
    s3_pid=$!
    trap 'kill $s3_pid 2>/dev/null' EXIT
    for _ in $(seq 1 100); do
        AWS_ENDPOINT_URL=$(head -1 "$WORK/s3.out")
        [ -n "$AWS_ENDPOINT_URL" ] && break
        sleep 0.1
    done
    [ -n "$AWS_ENDPOINT_URL" ] || { echo "the S3 server did not start" >&2; exit 1; }
    export AWS_ENDPOINT_URL
fi
# The S3 server's CPU seconds so far (0 without one).
server_cpu() {
    [ -n "$s3_pid" ] || { echo 0; return; }
    awk -v hz="$(getconf CLK_TCK)" '{ print ($14 + $15) / hz }' "/proc/$s3_pid/stat"
}

# run LABEL BIN: one timed step, appended to $out
run() {
    local label=$1 bin=$2 repo=$WORK/repo-$1 t before
    [ -z "$s3_pid" ] || repo=s3://ab-bench/repo-$1
    before=$(server_cpu)
    case $scenario in
    first)
        if [ -n "$s3_pid" ]; then rm -rf "$WORK/s3/ab-bench/repo-$label"; else rm -rf "$repo"; fi
        BACKSTOP_REPOSITORY=$repo "$bin" init >/dev/null
        sync
        warm "$src"
        t=$( { /usr/bin/time -f '%e %U %S' env BACKSTOP_REPOSITORY="$repo" "$bin" backup -q "$src" >/dev/null; } 2>&1 | tail -1)
        ;;
    restore)
        if [ ! -e "$WORK/repo-$label.made" ]; then
            BACKSTOP_REPOSITORY=$repo "$bin" init >/dev/null
            BACKSTOP_REPOSITORY=$repo "$bin" backup -q "$src" >/dev/null
            touch "$WORK/repo-$label.made"
        fi
        # Each run restores into a new directory and all are removed at
        # the end: restoring right after deleting a tree makes ext4 (without
        # a journal) skip every recently freed inode, which costs more than
        # the restore itself.
        restored=$((restored + 1))
        sync
        if [ -n "$s3_pid" ]; then warm "$WORK/s3/ab-bench/repo-$label"; else warm "$repo"; fi
        t=$( { /usr/bin/time -f '%e %U %S' env BACKSTOP_REPOSITORY="$repo" "$bin" restore -q latest --target "$WORK/restored/$restored" >/dev/null; } 2>&1 | tail -1)
        ;;
    vm-incremental)
        # A fresh repository with the VM set backed up, then the mutation
        # and the timed incremental; the set is reset afterwards.
        if [ -n "$s3_pid" ]; then rm -rf "$WORK/s3/ab-bench/repo-$label"; else rm -rf "$repo"; fi
        rm -rf "$WORK/cache-$label"
        BACKSTOP_REPOSITORY=$repo BACKSTOP_CACHE_DIR=$WORK/cache-$label "$bin" init >/dev/null
        BACKSTOP_REPOSITORY=$repo BACKSTOP_CACHE_DIR=$WORK/cache-$label "$bin" backup -q "$vm" >/dev/null
        python3 "$here/gen_dataset.py" vm-mutate --root "$vm" >/dev/null
        sync
        warm "$vm"
        t=$( { /usr/bin/time -f '%e %U %S' env BACKSTOP_REPOSITORY="$repo" BACKSTOP_CACHE_DIR="$WORK/cache-$label" "$bin" backup -q "$vm" >/dev/null; } 2>&1 | tail -1)
        python3 "$here/gen_dataset.py" vm-reset --root "$vm" >/dev/null
        ;;
    *) echo "unknown scenario $scenario" >&2; exit 2 ;;
    esac
    sync
    echo "$label $t $(awk -v a="$(server_cpu)" -v b="$before" 'BEGIN { printf "%.2f", a - b }')" | tee -a "$out"
}

restored=0
rm -rf "$WORK/restored" "$WORK"/repo-*
for i in $(seq 1 "$reps"); do
    if [ $((i % 2)) -eq 1 ]; then run A "$a"; run B "$b"; else run B "$b"; run A "$a"; fi
done
rm -rf "$WORK/restored"
python3 - "$out" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
for label in ("A", "B"):
    r = [(float(w), float(u) + float(s), float(o)) for l, w, u, s, o in rows if l == label]
    print(f"{label}: wall median {statistics.median(w for w, _, _ in r):.2f} s, "
          f"CPU median {statistics.median(c for _, c, _ in r):.2f} s, "
          f"server CPU median {statistics.median(o for _, _, o in r):.2f} s over {len(r)} runs")
EOF
