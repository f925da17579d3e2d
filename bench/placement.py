#!/usr/bin/env python3
"""Placement quality over many seeds: every shipped placement scenario, every policy,
through `fogline simulate --json`; prints regression against the oracle and against the
best other policy per (scenario, seed), then the geometric means over every cell.

    python3 bench/placement.py [SEEDS] [FOGLINE]     # SEEDS like 1-6 or 1,2,3; default 1-6

FOGLINE defaults to target/release/fogline (cargo build --release first)."""

import concurrent.futures
import json
import math
import os
import subprocess
import sys

SCENARIOS = ["bursty-azure", "far-small-cloud", "capable-devices", "failing-edges", "sparse", "mmwave"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def seeds(arg):
    if "-" in arg:
        a, b = arg.split("-")
        return list(range(int(a), int(b) + 1))
    return [int(s) for s in arg.split(",")]


def run(fogline, scenario, seed):
    out = subprocess.run(
        [fogline, "simulate", "--scenario", f"{ROOT}/configs/sim/{scenario}.toml",
         "--policy", "all", "--seed", str(seed), "--json", "--threads", "1"],
        capture_output=True, text=True, check=True).stdout
    return {p["name"]: p for p in json.loads(out)["policies"]}


def seen(p):
    e = p.get("prediction_error_seen")
    return float("nan") if e is None else e


def main():
    which = seeds(sys.argv[1] if len(sys.argv) > 1 else "1-6")
    fogline = sys.argv[2] if len(sys.argv) > 2 else f"{ROOT}/target/release/fogline"
    jobs = [(s, n) for s in SCENARIOS for n in which]
    # One cell per core, each on one thread.
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as ex:
        results = list(ex.map(lambda j: run(fogline, *j), jobs))
    # Prediction error over every first attempt, and over those whose place's model had
    # seen the function there before.
    print(f"{'scenario':16} seed  p99/oracle mean/oracle  p99/best other   mean/best other   "
          f"pred err (seen)")
    cells = []
    for (scenario, seed), p in zip(jobs, results):
        reg, oracle = p["regression"], p["oracle"]
        others = [v for k, v in p.items() if k not in ("regression", "oracle")]
        bp = min(others, key=lambda v: v["p99_ms"])
        bm = min(others, key=lambda v: v["mean_ms"])
        c = (reg["p99_ms"] / oracle["p99_ms"], reg["mean_ms"] / oracle["mean_ms"],
             reg["p99_ms"] / bp["p99_ms"], reg["mean_ms"] / bm["mean_ms"])
        cells.append(c)
        bar = "" if c[0] <= 1.15 and c[1] <= 1.15 and c[2] <= 1 and c[3] <= 1 else "   (misses the bar)"
        print(f"{scenario:16} {seed:4}  {c[0]:10.2f} {c[1]:11.2f}  {c[2]:5.2f} {bp['name']:12} "
              f"{c[3]:5.2f} {bm['name']:12} {reg['prediction_error'] * 100:5.0f} % "
              f"{seen(reg) * 100:5.0f} %{bar}")
    geo = [math.exp(sum(math.log(c[k]) for c in cells) / len(cells)) for k in range(4)]
    ok = [sum(1 for c in cells if c[k] <= b) for k, b in enumerate([1.15, 1.15, 1.0, 1.0])]
    print(f"geometric mean over {len(cells)} cells: p99/oracle {geo[0]:.3f}  mean/oracle {geo[1]:.3f}  "
          f"p99/best other {geo[2]:.3f}  mean/best other {geo[3]:.3f}")
    print(f"cells within the bar: p99/oracle <= 1.15: {ok[0]}, mean/oracle <= 1.15: {ok[1]}, "
          f"p99 <= best other: {ok[2]}, mean <= best other: {ok[3]} (of {len(cells)})")


if __name__ == "__main__":
    main()
