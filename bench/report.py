#!/usr/bin/env python3
"""Write bench/RESULTS.md: the machine, the issue's targets as ratios to the
fastest peer of the same run, and summarize.py's full tables.

Usage: python3 bench/report.py RESULTS_DIR > bench/RESULTS.md
"""
import csv
import os
import platform
import statistics
import subprocess
import sys

MiB = 1024 * 1024
PEER_PREFIXES = ("restic", "rustic", "borg")

# scenario, what, target ratio (Backstop / best peer)
TIME_TARGETS = [
    ("backup1-initial", "first backup of the mixed tree", 0.35),
    ("backup2-nochange", "backup with nothing changed", 0.5),
    ("backup3-mutated", "backup after the mixed mutation", 0.35),
    ("restore", "full restore", 0.6),
    ("vm-backup1-initial", "VM image set, first backup", 0.35),
    ("vm-backup2-mutated", "VM image set, after vm-mutate", 0.2),
]


def load(path):
    with open(path) as f:
        return list(csv.DictReader(f, delimiter="\t"))


def median_by(rows, key, value):
    out = {}
    for r in rows:
        if r.get("rc", "0") != "0":
            continue
        out.setdefault(key(r), []).append(value(r))
    return {k: statistics.median(v) for k, v in out.items()}


def machine():
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cpus ({cpu}), {mem:.0f} GiB RAM, Linux {platform.release()}"


def main():
    res = sys.argv[1]
    rows = load(os.path.join(res, "peers.tsv"))
    sizes = load(os.path.join(res, "sizes.tsv"))
    wall = median_by(rows, lambda r: (r["tool"], r["scenario"]), lambda r: float(r["wall_s"]))
    rss = median_by(rows, lambda r: (r["tool"], r["scenario"]), lambda r: int(r["maxrss_kb"]) / 1024)
    size = median_by(sizes, lambda r: (r["tool"], r["after"]), lambda r: int(r["repo_apparent_bytes"]) / MiB)
    tools = sorted({t for t, _ in wall})
    peers = [t for t in tools if t.startswith(PEER_PREFIXES)]

    print("# Benchmark results\n")
    print(f"Machine: {machine()}. Produced by `bench/run.sh` (REPS={os.environ.get('REPS', '1')}); "
          "warm page cache; medians. Targets are ratios to the best peer of the same run.\n")
    try:
        print("```\n" + open(os.path.join(res, "versions.txt")).read().strip() + "\n```\n")
    except OSError:
        pass
    print(f"Peers in this run: {', '.join(peers) or 'none'}.\n")
    print("| scenario | Backstop | best peer | ratio | target | met |")
    print("|---|---|---|---|---|---|")

    def row(what, ours, best, best_tool, ratio, target, met, unit):
        print(f"| {what} | {ours:.2f} {unit} | {best:.2f} {unit} ({best_tool}) | {ratio} | {target} | {'yes' if met else '**no**'} |")

    for scen, what, target in TIME_TARGETS:
        ours = wall.get(("backstop", scen))
        cands = [(wall[(p, scen)], p) for p in peers if (p, scen) in wall]
        if ours is None or not cands:
            print(f"| {what} | n/a | n/a | | ≤ {target}× | not measured |")
            continue
        best, best_tool = min(cands)
        ratio = ours / best
        row(what, ours, best, best_tool, f"{ratio:.2f}×", f"≤ {target}×", ratio <= target, "s")

    ours = size.get(("backstop", "backup3"))
    cands = [(size[(p, "backup3")], p) for p in peers if (p, "backup3") in size]
    if ours is not None and cands:
        best, best_tool = min(cands)
        row("repository after the mixed backups", ours, best, best_tool, f"{(ours / best - 1) * 100:+.1f} %",
            "≤ +3 %", ours <= best * 1.03, "MiB")
    ours = rss.get(("backstop", "backup1-initial"))
    cands = [(rss[(p, "backup1-initial")], p) for p in peers if (p, "backup1-initial") in rss]
    if ours is not None and cands:
        best, best_tool = min(cands)
        row("peak RSS of the first backup", ours, best, best_tool, f"{ours / best:.2f}×", "≤ 1×", ours <= best, "MiB")

    print("\n## All figures\n")
    here = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run([sys.executable, os.path.join(here, "summarize.py"), res], capture_output=True, text=True)
    print(out.stdout)


if __name__ == "__main__":
    main()
