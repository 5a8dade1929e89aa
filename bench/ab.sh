#!/usr/bin/env bash
# A/B of two Backstop binaries on one scenario, interleaved, warm cache.
#
#   bench/ab.sh BIN_A BIN_B [REPS] [SCENARIO]
#
# SCENARIO is `first` (default: init, then a first backup of the mixed
# tree) or `restore` (a full restore of a repository made once per binary).
# The two binaries alternate (A B B A A B ...), so drift of these noisy
# machines lands on both; the source is read with cat right before each
# run, because the host reclaims idle page cache within seconds. Prints
# every run and the medians of wall and CPU (user + sys) time: CPU time
# is the steadier figure for a CPU-bound change.
#
# Env: DATA (/tmp/bench-data; `bench/run.sh gen` makes $DATA/mixed), WORK ($DATA/ab).
set -euo pipefail
[ $# -ge 2 ] || { sed -n '2,13p' "$0"; exit 2; }
a=$(realpath "$1") b=$(realpath "$2") reps=${3:-5} scenario=${4:-first}
DATA=${DATA:-/tmp/bench-data}
WORK=${WORK:-$DATA/ab}
src=$DATA/mixed
[ -d "$src" ] || { echo "no $src: run bench/run.sh gen first" >&2; exit 2; }
export BACKSTOP_PASSWORD=ab-bench-not-secret
mkdir -p "$WORK"
out=$WORK/times.tsv
: >"$out"

warm() { find "$1" -type f -print0 | xargs -0 cat >/dev/null; }

# run LABEL BIN: one timed step, appended to $out
run() {
    local label=$1 bin=$2 repo=$WORK/repo-$1 t
    case $scenario in
    first)
        rm -rf "$repo"
        BACKSTOP_REPOSITORY=$repo "$bin" init >/dev/null
        sync
        warm "$src"
        t=$( { /usr/bin/time -f '%e %U %S' env BACKSTOP_REPOSITORY="$repo" "$bin" backup -q "$src" >/dev/null; } 2>&1 | tail -1)
        ;;
    restore)
        if [ ! -d "$repo" ]; then
            BACKSTOP_REPOSITORY=$repo "$bin" init >/dev/null
            BACKSTOP_REPOSITORY=$repo "$bin" backup -q "$src" >/dev/null
        fi
        # Each run restores into a new directory and all are removed at
        # the end: restoring right after deleting a tree makes ext4 (without
        # a journal) skip every recently freed inode, which costs more than
        # the restore itself.
        restored=$((restored + 1))
        sync
        warm "$repo"
        t=$( { /usr/bin/time -f '%e %U %S' env BACKSTOP_REPOSITORY="$repo" "$bin" restore -q latest --target "$WORK/restored/$restored" >/dev/null; } 2>&1 | tail -1)
        ;;
    *) echo "unknown scenario $scenario" >&2; exit 2 ;;
    esac
    sync
    echo "$label $t" | tee -a "$out"
}

restored=0
rm -rf "$WORK/restored"
for i in $(seq 1 "$reps"); do
    if [ $((i % 2)) -eq 1 ]; then run A "$a"; run B "$b"; else run B "$b"; run A "$a"; fi
done
rm -rf "$WORK/restored"
python3 - "$out" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
for label in ("A", "B"):
    r = [(float(w), float(u) + float(s)) for l, w, u, s in rows if l == label]
    print(f"{label}: wall median {statistics.median(w for w, _ in r):.2f} s, "
          f"CPU median {statistics.median(c for _, c in r):.2f} s over {len(r)} runs")
EOF
