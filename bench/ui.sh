#!/usr/bin/env bash
# The web UI's server time at scale: the dashboard and the job list of a
# catalog with 1,000 sources (a plan each), 100,000 jobs and 10,000
# snapshots, on SQLite and on PostgreSQL, and their page sizes. Targets:
# under 50 ms of server time, under 200 KiB a page.
#
#   bench/ui.sh [sqlite] [postgres]   (default: both)
#
# PostgreSQL: $PG_URL (default postgres://postgres@127.0.0.1:5432/postgres,
# trust auth); a database backstop_ui_bench is made in it (and dropped).
# Builds the bench-lto binary and the filler
# (crates/backstop-catalog/examples/fill.rs), fills a fresh catalog,
# starts `backstop serve` on it with no workers, logs in with the admin
# token and asks for each page REPS (20) times with curl: the time to the
# first byte on loopback is the server's time. Prints the medians and
# keeps them in bench/RESULTS.md between <!-- ui --> markers.
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${REPS:-20}
PG_URL=${PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(sqlite postgres)

bench/build.sh
cargo build --profile bench-lto --locked -p backstop-catalog --example fill
bin=$PWD/target/bench-lto/backstop
fill=$PWD/target/bench-lto/examples/fill
work=$(mktemp -d)
serve_pid=""
cleanup() {
    [ -z "$serve_pid" ] || kill "$serve_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# serve DATA URL PORT: start `backstop serve`, wait until it answers.
serve() {
    "$bin" serve --data-dir "$1" --catalog "$2" --listen "127.0.0.1:$3" --workers 0 >>"$1/serve.out" 2>&1 &
    serve_pid=$!
    for _ in $(seq 1 200); do
        curl -sf "http://127.0.0.1:$3/healthz" >/dev/null && return
        sleep 0.1
    done
    echo "serve did not start:" >&2
    cat "$1/serve.out" >&2
    exit 1
}

stop() { kill "$serve_pid"; wait "$serve_pid" 2>/dev/null || true; serve_pid=""; }

median() { sort -n | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

rows=()
run() { # NAME CATALOG_URL
    local name=$1 url=$2 data=$work/$1 port base token jar csrf
    mkdir -p "$data"
    port=$(free_port)
    base=http://127.0.0.1:$port
    serve "$data" "$url" "$port"
    token=$(grep -o 'bst_[A-Za-z0-9_]*' "$data/serve.out" | head -1)
    stop
    echo "== $name: filling the catalog" >&2
    "$fill" "$url" "$data/server.key"
    serve "$data" "$url" "$port"
    jar=$data/cookies
    csrf=$(curl -s -c "$jar" "$base/login" | grep -o 'name="login_csrf" value="[^"]*"' | sed 's/.*value="//; s/"$//')
    curl -s -b "$jar" -c "$jar" -o /dev/null --data-urlencode "token=$token" --data-urlencode "login_csrf=$csrf" "$base/login"
    for page in / /jobs "/jobs?state=failed" /plans /sources /snapshots /repositories; do
        curl -s -b "$jar" -o /dev/null "$base$page" # warm
        local times=() size=0 status
        for _ in $(seq 1 "$REPS"); do
            read -r t size status < <(curl -s -b "$jar" -o /dev/null -w '%{time_starttransfer} %{size_download} %{http_code}\n' "$base$page")
            [ "$status" = 200 ] || { echo "$page answered $status" >&2; exit 1; }
            times+=("$t")
        done
        local ms
        ms=$(printf '%s\n' "${times[@]}" | median | awk '{ printf "%.1f", $1 * 1000 }')
        rows+=("| $name | \`$page\` | $ms ms | $((size / 1024)) KiB |")
        echo "$name $page: $ms ms, $((size / 1024)) KiB" >&2
    done
    stop
}

for target in "${targets[@]}"; do
    case $target in
    sqlite) run sqlite "sqlite://$work/sqlite/catalog.db" ;;
    postgres)
        admin_url=$PG_URL
        psql "$admin_url" -qc 'DROP DATABASE IF EXISTS backstop_ui_bench' -c 'CREATE DATABASE backstop_ui_bench'
        run postgres "${admin_url%/*}/backstop_ui_bench"
        psql "$admin_url" -qc 'DROP DATABASE IF EXISTS backstop_ui_bench'
        ;;
    *) echo "unknown target $target (sqlite, postgres)" >&2; exit 2 ;;
    esac
done

section=$(
    echo "<!-- ui -->"
    echo "## The web UI at scale"
    echo
    echo "\`bench/ui.sh\` ($(date -u +%Y-%m-%d), REPS=$REPS): a catalog of 1,000 sources with a plan each, 100,000 jobs and 10,000 snapshots; the median time to the first byte of each page on loopback (the server's time) and its size. Targets: under 50 ms, under 200 KiB."
    echo
    echo "| catalog | page | server time | size |"
    echo "|---|---|---|---|"
    printf '%s\n' "${rows[@]}"
    echo "<!-- /ui -->"
)
printf '%s\n' "$section"
python3 - "$section" <<'EOF'
import re, sys
path = "bench/RESULTS.md"
text = open(path).read()
section = sys.argv[1]
if "<!-- ui -->" in text:
    text = re.sub(r"<!-- ui -->.*?<!-- /ui -->", lambda _: section, text, flags=re.S)
else:
    text = text.rstrip("\n") + "\n\n" + section + "\n"
open(path, "w").write(text)
EOF
