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


# On the S3-protocol server (bench/run_peers.sh s3): Backstop / best peer there.
S3_TARGETS = [
    ("backup1-initial", "first backup of the mixed tree", 0.35),
    ("backup2-nochange", "backup with nothing changed", 0.5),
    ("backup3-mutated", "backup after the mixed mutation", 0.35),
    ("restore", "full restore", 0.5),
    ("check", "check", 0.6),
    ("vm-backup1-initial", "VM image set, first backup", None),
    ("vm-backup2-mutated", "VM image set, after vm-mutate", None),
]
# Scenarios whose throughput with added latency is held to LATENCY_FLOOR of
# the same steps without it.
LATENCY_SCENARIOS = ["backup1-initial", "backup2-nochange", "backup3-mutated", "restore", "check",
                     "vm-backup1-initial", "vm-backup2-mutated"]
LATENCY_HELD = {"backup1-initial", "backup3-mutated", "restore", "vm-backup1-initial", "vm-backup2-mutated"}
LATENCY_FLOOR = 0.7


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


def time_rows(wall, ours_label, peers, targets):
    """A row per (scenario, what, target): `ours_label`'s median wall time
    against the best of `peers` (a target of None is shown, not held)."""
    for scen, what, target in targets:
        goal = "" if target is None else f"≤ {target}×"
        ours = wall.get((ours_label, scen))
        cands = [(wall[(p, scen)], p) for p in peers if (p, scen) in wall]
        if ours is None or not cands:
            print(f"| {what} | n/a | n/a | | {goal} | not measured |")
            continue
        best, best_tool = min(cands)
        ratio = ours / best
        met = "" if target is None else ("yes" if ratio <= target else "**no**")
        print(f"| {what} | {ours:.2f} s | {best:.2f} s ({best_tool}) | {ratio:.2f}× | {goal} | {met} |")


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
    # The local figures: tools labelled TOOL@s3 ran against the S3 server.
    peers = [t for t in tools if t.startswith(PEER_PREFIXES) and "@" not in t]

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

    time_rows(wall, "backstop", peers, TIME_TARGETS)

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

    s3_section(res, wall, rss)

    print("\n## All figures\n")
    here = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run([sys.executable, os.path.join(here, "summarize.py"), res], capture_output=True, text=True)
    print(out.stdout)


def s3_section(res, wall, rss):
    """Backstop on the S3-protocol server beside the peers there, against
    its own local figures, with latency added, and the requests made."""
    if not any(t.endswith("@s3") for t, _ in wall):
        return
    peers = sorted({t for t, _ in wall if t.endswith("@s3") and t.startswith(PEER_PREFIXES)})
    print("\n## On S3\n")
    print("Every repository in one bucket of `backstop-s3-server` (the tests' s3s-fs server, HTTP on "
          f"127.0.0.1), in the same run. Peers there: {', '.join(peers) or 'none'}.\n")
    print("| scenario | Backstop | best peer | ratio | target | met |")
    print("|---|---|---|---|---|---|")
    time_rows(wall, "backstop@s3", peers, S3_TARGETS)
    local, remote = wall.get(("backstop", "restore")), wall.get(("backstop@s3", "restore"))
    if local and remote:
        ratio = remote / local
        print(f"| restore from S3 / Backstop's local restore | {remote:.2f} s | {local:.2f} s (local) | "
              f"{ratio:.2f}× | ≤ 1.5× | {'yes' if ratio <= 1.5 else '**no**'} |")
    local, remote = rss.get(("backstop", "restore")), rss.get(("backstop@s3", "restore"))
    if local and remote:
        ratio = remote / local
        print(f"| peak RSS of the S3 restore / local | {remote:.0f} MiB | {local:.0f} MiB (local) | "
              f"{ratio:.2f}× | ≤ 2× | {'yes' if ratio <= 2 else '**no**'} |")

    slow = sorted({t for t, _ in wall if t.startswith("backstop@s3+")})
    for label in slow:
        print(f"\n### `{label}`: every request held back by the server\n")
        print("Throughput with the delay as a share of the same step without it (`backstop@s3`); "
              f"held to ≥ {LATENCY_FLOOR:.0%} for the steps that move data.\n")
        print("| scenario | no delay | with delay | throughput kept | held to | met |")
        print("|---|---|---|---|---|---|")
        for scen in LATENCY_SCENARIOS:
            fast, delayed = wall.get(("backstop@s3", scen)), wall.get((label, scen))
            if fast is None or delayed is None:
                continue
            kept = fast / delayed
            held = scen in LATENCY_HELD
            met = ("yes" if kept >= LATENCY_FLOOR else "**no**") if held else ""
            print(f"| {scen} | {fast:.2f} s | {delayed:.2f} s | {kept:.0%} | "
                  f"{'≥ %d %%' % (LATENCY_FLOOR * 100) if held else ''} | {met} |")

    path = os.path.join(res, "requests.tsv")
    if not os.path.exists(path):
        return
    reqs = load(path)
    cols = ["requests", "get", "get_range", "put", "list", "head", "delete", "post", "bytes_in", "bytes_out",
            "max_in_flight"]
    med = {}
    for r in reqs:
        med.setdefault((r["tool"], r["scenario"]), []).append(r)
    print("\n### Requests per step (medians, as the server counted them)\n")
    print("| tool | scenario | requests | GET | GET range | PUT | LIST | HEAD | DELETE | POST | MiB up | MiB down "
          "| most in flight |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for (tool, scen), rs in med.items():
        m = {c: statistics.median(int(r[c]) for r in rs) for c in cols}
        print(f"| {tool} | {scen} | {m['requests']:.0f} | {m['get']:.0f} | {m['get_range']:.0f} | {m['put']:.0f} | "
              f"{m['list']:.0f} | {m['head']:.0f} | {m['delete']:.0f} | {m['post']:.0f} | "
              f"{m['bytes_in'] / MiB:.1f} | {m['bytes_out'] / MiB:.1f} | {m['max_in_flight']:.0f} |")


if __name__ == "__main__":
    main()
