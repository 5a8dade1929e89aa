#!/usr/bin/env bash
# The image path: the shared VM set (20 sparse 512 MiB raw images) backed
# up as images (`--source image:DIR`), then `vm-mutate` (256 scattered
# 4 KiB writes per image, 20 MiB in all) and an incremental with its
# changed-block maps (`<root>.cbt/*.json`) — beside the same data backed up
# as plain files, the incremental without maps, other chunk sizes, and the
# peers' best variants for images (borg-fixed64k, rustic-fixed64k) when they
# are installed (`bench/run_peers.sh install`). Caches are dropped before
# every backup (as root). Writes the "Images" section of bench/RESULTS.md.
#
#   bench/image.sh              Env: DATA (/tmp/bench-data), TOOLS (all that are installed)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
DATA=${DATA:-/tmp/bench-data}
VM=$DATA/vm
WORK=$DATA/work-image
GEN=(python3 "$root/bench/gen_dataset.py")

bench/build.sh
BIN=$root/target/bench-lto/backstop
have() { command -v "$1" >/dev/null; }
default="backstop-image backstop-image-16k backstop-image-32k backstop-image-nomap backstop-files"
have borg && default+=" borg-fixed64k"
have rustic && default+=" rustic-fixed64k"
TOOLS=${TOOLS:-$default}

[ -f "$VM.meta.json" ] || "${GEN[@]}" vm --root "$VM"
"${GEN[@]}" vm-reset --root "$VM" >/dev/null
mkdir -p "$WORK"
export BACKSTOP_PASSWORD=bench BORG_PASSPHRASE=bench RUSTIC_PASSWORD=bench
export BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=no BORG_RELOCATED_REPO_ACCESS_IS_OK=yes

drop_caches() { sync; [ "$(id -u)" = 0 ] && echo 3 >/proc/sys/vm/drop_caches || true; }

# Time one command: prints "seconds read_bytes" (read_bytes: block I/O the
# command and its children caused, from /proc/<pid>/io via a wrapper).
measure() {
    python3 - "$@" <<'PY'
import os, subprocess, sys, time
t = time.monotonic()
p = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
out, _ = p.communicate()
dt = time.monotonic() - t
if p.returncode != 0:
    sys.exit(f"{sys.argv[1:]} failed with {p.returncode}")
ru = __import__("resource").getrusage(__import__("resource").RUSAGE_CHILDREN)
sys.stdout.write(f"{dt:.3f} {ru.ru_inblock * 512}\n")
sys.stderr.write(out.decode(errors="replace")[-4000:])
PY
}

size() { du -sb "$1" | cut -f1; }

rows=()
for tool in $TOOLS; do
    repo=$WORK/$tool
    rm -rf "$repo" "$WORK/cache"
    export BACKSTOP_REPOSITORY=$repo BORG_REPO=$repo RUSTIC_REPOSITORY=$repo RUSTIC_CACHE_DIR=$WORK/cache BORG_BASE_DIR=$WORK/cache
    chunk=8k
    case $tool in
        backstop-image-16k) chunk=16k ;;
        backstop-image-32k) chunk=32k ;;
    esac
    case $tool in
        backstop*) "$BIN" init --quiet ;;
        borg-fixed64k) borg init --encryption repokey-blake2 >/dev/null 2>&1 ;;
        rustic-fixed64k) rustic init --set-chunker fixed_size --set-chunk-size 64KiB >/dev/null 2>&1 ;;
    esac
    first=(); second=()
    case $tool in
        backstop-image*)
            first=("$BIN" --json backup --source "image:$VM" --source-opt generation=1 --source-opt chunk_size=$chunk)
            second=("$BIN" --json backup --source "image:$VM" --source-opt chunk_size=$chunk --source-opt "cbt=$VM.cbt")
            [ "$tool" = backstop-image-nomap ] && second=("$BIN" --json backup --source "image:$VM" --source-opt chunk_size=$chunk)
            ;;
        backstop-files) first=("$BIN" --json backup "$VM"); second=("${first[@]}") ;;
        borg-fixed64k)
            first=(borg create --compression lz4 --chunker-params fixed,65536 --sparse ::vm1 "$VM")
            second=(borg create --compression lz4 --chunker-params fixed,65536 --sparse ::vm2 "$VM")
            ;;
        rustic-fixed64k) first=(rustic backup "$VM"); second=("${first[@]}") ;;
    esac
    drop_caches
    read -r t1 r1 < <(measure "${first[@]}" 2>"$WORK/$tool.1.log")
    s1=$(size "$repo")
    "${GEN[@]}" vm-mutate --root "$VM" >/dev/null
    drop_caches
    read -r t2 r2 < <(measure "${second[@]}" 2>"$WORK/$tool.2.log")
    s2=$(size "$repo")
    logical=""
    case $tool in backstop*) logical=$(python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).read())["summary"]["bytes_read"])' "$WORK/$tool.2.log" 2>/dev/null || true) ;; esac
    "${GEN[@]}" vm-reset --root "$VM" >/dev/null
    rows+=("$tool $t1 $r1 $s1 $t2 $r2 $s2 ${logical:--}")
    echo "$tool: first ${t1}s, incremental ${t2}s, read ${r2} B (logical ${logical:--}), growth $((s2 - s1)) B" >&2
    rm -rf "$repo" "$WORK/cache"
done

section=$(python3 - "${rows[@]}" <<'PY'
import sys, os, platform
MiB = 1 << 20
changed = 20 * 256 * 4096
rows = [r.split() for r in sys.argv[1:]]
peers = [r for r in rows if not r[0].startswith("backstop")]
fastest = min((float(r[4]) for r in peers), default=None)
smallest = min((int(r[6]) - int(r[3]) for r in peers), default=None)
out = ["## Images", "",
       f"`bench/image.sh` ({os.cpu_count()} cpus, {platform.release()}): the shared VM set (20 sparse 512 MiB raw "
       "images, 64 MiB of data each) backed up, then `vm-mutate` (256 scattered 4 KiB writes per image: "
       f"{changed // MiB} MiB changed) and the incremental; caches dropped before each backup; one run. "
       "`backstop-image` is `--source image:DIR` with 8 KiB chunks and the changed-block maps; `-16k`/`-32k` the "
       "same with other chunk sizes; `-nomap` the incremental without maps (every block compared by hash); "
       "`backstop-files` the directory as plain files. Read is block I/O from /proc (0 when cached); "
       "logical is what Backstop read from the images.", "",
       "| tool | first backup | incremental | vs fastest peer | read (logical) | read / changed | growth | vs smallest peer |",
       "|---|---|---|---|---|---|---|---|"]
for tool, t1, r1, s1, t2, r2, s2, logical in rows:
    growth = int(s2) - int(s1)
    ratio_t = f"{float(t2) / fastest:.2f}×" if fastest else "–"
    ratio_g = f"{growth / smallest:.2f}×" if smallest else "–"
    read = f"{int(r2) / MiB:.1f} MiB" + (f" ({int(logical) / MiB:.1f} MiB)" if logical != "-" else "")
    per_changed = f"{(int(logical) if logical != '-' else int(r2)) / changed:.2f}×"
    out.append(f"| {tool} | {float(t1):.2f} s | {float(t2):.2f} s | {ratio_t} | {read} | {per_changed} | "
               f"{growth / MiB:.1f} MiB | {ratio_g} |")
print("\n".join(out))
PY
)
python3 - "$section" <<'PY'
import sys, re
path = "bench/RESULTS.md"
text = open(path).read()
block = "<!-- image -->\n" + sys.argv[1] + "\n<!-- /image -->"
if "<!-- image -->" in text:
    text = re.sub(r"<!-- image -->.*?<!-- /image -->", lambda m: block, text, flags=re.S)
else:
    text = text.rstrip() + "\n\n" + block + "\n"
open(path, "w").write(text)
PY
echo "$section"
