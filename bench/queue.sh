#!/usr/bin/env bash
# The job queue under load, on SQLite and on PostgreSQL: enqueue 10,000
# jobs through the API, claim and complete them with 8 HTTP workers
# (claims/s, the coordinator's CPU per job), then enqueue→claim latency
# with idle long-polling workers. Writes the "Job queue" section of
# bench/RESULTS.md.
#
#   bench/queue.sh            (PostgreSQL: BACKSTOP_BENCH_POSTGRES, a server URL
#                              where databases may be created; default
#                              postgres://postgres@127.0.0.1:5432)
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=${JOBS:-10000}
claimers=${CLAIMERS:-8}
pg=${BACKSTOP_BENCH_POSTGRES:-postgres://postgres@127.0.0.1:5432}

bench/build.sh
cargo build --profile bench-lto --locked -p backstop-server --example queue_bench
bin=$PWD/target/bench-lto/backstop
bench=$PWD/target/bench-lto/examples/queue_bench

db="backstop_queue_bench_$$"
psql "$pg/postgres" -X -q -c "CREATE DATABASE $db"
trap 'psql "$pg/postgres" -X -q -c "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1 || true' EXIT

results=()
results+=("$("$bench" "$bin" sqlite "$jobs" "$claimers")")
results+=("$("$bench" "$bin" "$pg/$db" "$jobs" "$claimers")")

section=$(python3 - "${results[@]}" <<'PY'
import json, sys, platform, os
rows = [json.loads(a) for a in sys.argv[1:]]
out = ["## Job queue", "",
       f"`bench/queue.sh` ({os.cpu_count()} cpus, {platform.release()}): a `backstop serve` process "
       f"(bench-lto, no in-process workers); {rows[0]['jobs']} jobs enqueued through `POST /api/v1/plans/p/run` "
       f"by 8 clients, then claimed and completed by {rows[0]['claimers']} HTTP workers; then 200 jobs "
       "enqueued one every 20 ms while the workers long-poll. CPU is the serve process's own (user + sys).", "",
       "| catalog | enqueue/s | CPU per enqueue | claims/s (claim + complete) | CPU per job | enqueue→claim p50 | p99 |",
       "|---|---|---|---|---|---|---|"]
for r in rows:
    out.append(f"| {r['catalog']} | {r['enqueue_per_s']:.0f} | {r['enqueue_cpu_ms_per_job']:.2f} ms | "
               f"{r['claims_per_s']:.0f} | {r['claim_cpu_ms_per_job']:.2f} ms | "
               f"{r['latency_ms_p50']:.1f} ms | {r['latency_ms_p99']:.1f} ms |")
print("\n".join(out))
PY
)
python3 - "$section" <<'PY'
import sys, re
path = "bench/RESULTS.md"
text = open(path).read()
section = "<!-- queue -->\n" + sys.argv[1] + "\n<!-- /queue -->\n"
if "<!-- queue -->" in text:
    text = re.sub(r"<!-- queue -->.*?<!-- /queue -->\n", lambda m: section, text, flags=re.S)
else:
    text = text.rstrip("\n") + "\n\n" + section
open(path, "w").write(text)
PY
echo "$section"
