#!/usr/bin/env python3
"""Placement quality over many seeds: every shipped placement scenario, every policy,
through `fogline simulate --json`; prints regression against the oracle and against the
best other policy per (scenario, seed), then the geometric means over every cell, how many
cells meet the bar, and which other policies beat regression at p99 or at mean, in how many
cells and by how much.

    python3 bench/placement.py [SEEDS] [FOGLINE]     # SEEDS like 1-6 or 1,2,3; default 1-6

FOGLINE defaults to target/release/fogline (cargo build --release first)."""

import concurrent.futures
import json
import math
import os
import subprocess
import sys

SCENARIOS = ["bursty-azure", "far-small-cloud", "capable-devices", "failing-edges", "sparse", "mmwave"]
# The bar per part of a cell: p99 and mean within 1.15x the oracle's, and no worse than
# the best other policy's at either.
BAR = (1.15, 1.15, 1.0, 1.0)
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
    # Prediction error over every first attempt, over those whose place's model had seen
    # the function there before, and the floor under the first: what a prediction that
    # knew all but how each run strays from its mean would miss by.
    print(f"{'scenario':16} seed  p99/oracle mean/oracle  p99/best other   mean/best other   "
          f"pred err (seen) [floor]")
    cells = []
    # Per other policy, the cells where it beats regression at p99 and at mean (its ratios).
    beats = {}
    for (scenario, seed), p in zip(jobs, results):
        reg, oracle = p["regression"], p["oracle"]
        named = others_by_name(p)
        others = [v for _, v in named]
        bp = min(others, key=lambda v: v["p99_ms"])
        bm = min(others, key=lambda v: v["mean_ms"])
        c = (reg["p99_ms"] / oracle["p99_ms"], reg["mean_ms"] / oracle["mean_ms"],
             reg["p99_ms"] / bp["p99_ms"], reg["mean_ms"] / bm["mean_ms"])
        cells.append(c)
        for k, v in named:
            b = beats.setdefault(k, ([], []))
            for i, m in enumerate(("p99_ms", "mean_ms")):
                if reg[m] > v[m]:
                    b[i].append(reg[m] / v[m])
        bar = "" if meets_bar(c) else "   (misses the bar)"
        print(f"{scenario:16} {seed:4}  {c[0]:10.2f} {c[1]:11.2f}  {c[2]:5.2f} {bp['name']:12} "
              f"{c[3]:5.2f} {bm['name']:12} {reg['prediction_error'] * 100:5.1f} % "
              f"{seen(reg) * 100:5.1f} % [{reg['prediction_error_floor'] * 100:4.1f} %]{bar}")
    geo = [math.exp(sum(math.log(c[k]) for c in cells) / len(cells)) for k in range(4)]
    ok = [sum(1 for c in cells if c[k] <= b) for k, b in enumerate(BAR)]
    print(f"geometric mean over {len(cells)} cells: p99/oracle {geo[0]:.3f}  mean/oracle {geo[1]:.3f}  "
          f"p99/best other {geo[2]:.3f}  mean/best other {geo[3]:.3f}")
    print(f"cells within the bar: p99/oracle <= 1.15: {ok[0]}, mean/oracle <= 1.15: {ok[1]}, "
          f"p99 <= best other: {ok[2]}, mean <= best other: {ok[3]} (of {len(cells)})")
    print(f"cells meeting all four: {sum(1 for c in cells if meets_bar(c))}")
    for name, (p99s, means) in sorted(beats.items()):
        if p99s or means:
            print(f"{name} beats regression at p99 in {len(p99s)} cells ({spread(p99s)}), "
                  f"at mean in {len(means)} ({spread(means)})")
    if not any(p99s or means for p99s, means in beats.values()):
        print("no other policy beats regression at p99 or at mean in any cell")


def meets_bar(c):
    """All four parts of the bar (see `BAR`)."""
    return all(x <= b for x, b in zip(c, BAR))


def others_by_name(p):
    return [(k, v) for k, v in p.items() if k not in ("regression", "oracle")]


def spread(ratios):
    """How far behind regression is in those cells: how many by at most 0.5 %, 1 %, more."""
    if not ratios:
        return "none"
    a = sum(1 for r in ratios if r <= 1.005)
    b = sum(1 for r in ratios if 1.005 < r <= 1.01)
    more = len(ratios) - a - b
    worst = f", by more (up to {(max(ratios) - 1) * 100:.1f} %) in {more}" if more else ""
    return f"regression behind by <= 0.5 % in {a}, by 0.5-1 % in {b}{worst}"


if __name__ == "__main__":
    main()
