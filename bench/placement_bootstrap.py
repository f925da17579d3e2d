#!/usr/bin/env python3
"""Is a placement difference real? For each (scenario, seed), runs every policy through
`fogline simulate --latencies`, then compares the regression policy with the best other
policy at p99 and at mean (the policies bench/placement.py names) by a paired block
bootstrap: the measured calls are resampled in blocks of consecutive calls (bursts make
neighbouring calls' latencies depend on each other), the same calls for both policies,
and the ratio recomputed each time. Prints the ratio, its 95 % interval and the share of
resamples in which regression is behind (ratio over 1).

    python3 bench/placement_bootstrap.py bursty-azure:1 mmwave:3 [--reps 200] [--block 2000]

FOGLINE (environment) names the binary; default target/release/fogline (cargo build
--release first). Python's standard library only."""

import argparse
import csv
import json
import os
import random
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rows(path):
    """One policy's measured calls (`fogline simulate --latencies`), each a dict by column."""
    with open(path, newline="") as f:
        r = csv.DictReader(f)
        if not {"call", "latency_ms"} <= set(r.fieldnames or []):
            sys.exit(f"{path}: no `call` and `latency_ms` columns in the header {r.fieldnames}")
        return list(r)


def latencies(path):
    """{call: latency_ms} from one policy's CSV."""
    try:
        return {int(r["call"]): float(r["latency_ms"]) for r in rows(path)}
    except (TypeError, ValueError) as e:
        sys.exit(f"{path}: {e}")


def simulate(fogline, scenario, seed, d, read=latencies):
    """Every policy on one (scenario, seed), its calls written to `d`: the policies' reports
    by name, each policy's calls as `read` gives them, and the best other policy than
    regression (and the oracle) at p99 and at mean."""
    out = subprocess.run(
        [fogline, "simulate", "--scenario", f"{ROOT}/configs/sim/{scenario}.toml",
         "--policy", "all", "--seed", str(seed), "--json", "--latencies", d],
        capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{scenario} seed {seed}: {out.stderr.strip()}")
    policies = {p["name"]: p for p in json.loads(out.stdout)["policies"]}
    calls = {n: read(os.path.join(d, f"{n}.csv")) for n in policies}
    others = [n for n in policies if n not in ("regression", "oracle")]
    best_p99 = min(others, key=lambda n: policies[n]["p99_ms"])
    best_mean = min(others, key=lambda n: policies[n]["mean_ms"])
    return policies, calls, best_p99, best_mean


def p99(values):
    """The simulator's p99: the sorted sample at round(0.99 (n - 1))."""
    s = sorted(values)
    return s[min(len(s) - 1, round(0.99 * (len(s) - 1)))]


def mean(values):
    """The mean of the values that are not None (NaN when none are)."""
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else float("nan")


def interval(ratios):
    r = sorted(ratios)
    return r[int(0.025 * (len(r) - 1))], r[int(0.975 * (len(r) - 1))], sum(x > 1 for x in r) / len(r)


def cell(fogline, scenario, seed, reps, block):
    with tempfile.TemporaryDirectory() as d:
        policies, calls, best_p99, best_mean = simulate(fogline, scenario, seed, d)
    ids = sorted(set().union(*(c.keys() for c in calls.values())))
    lo, hi = ids[0], ids[-1] + 1
    # Each policy's latency by call number, None where the call was not measured (failed).
    by = {n: [c.get(i) for i in range(lo, hi)] for n, c in calls.items()}
    n = hi - lo
    # At least 50 blocks, so that a short run (`sparse`'s few hundred calls) still varies.
    b = max(1, min(block, n // 50))
    rng = random.Random(seed)
    ratios_p99, ratios_mean = [], []
    for _ in range(reps):
        starts = [rng.randrange(n - b + 1) for _ in range(max(1, n // b))]

        def sample(name):
            v = by[name]
            return [x for s in starts for x in v[s:s + b] if x is not None]

        reg = sample("regression")
        ratios_p99.append(p99(reg) / p99(sample(best_p99)))
        ratios_mean.append(mean(reg) / mean(sample(best_mean)))
    reg = policies["regression"]
    at_p99 = reg["p99_ms"] / policies[best_p99]["p99_ms"]
    at_mean = reg["mean_ms"] / policies[best_mean]["mean_ms"]
    lp, hp, bp = interval(ratios_p99)
    lm, hm, bm = interval(ratios_mean)
    print(f"{scenario:16} {seed:4}  ({b}-call blocks)  p99 {at_p99:.4f} vs {best_p99:12} [{lp:.4f}, {hp:.4f}] "
          f"behind in {bp:4.0%}   mean {at_mean:.4f} vs {best_mean:12} [{lm:.4f}, {hm:.4f}] "
          f"behind in {bm:4.0%}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cells", nargs="+", metavar="SCENARIO:SEED")
    ap.add_argument("--reps", type=int, default=200, help="bootstrap resamples (default 200)")
    ap.add_argument("--block", type=int, default=2000,
                    help="consecutive calls resampled together, at most a 50th of the run (default 2000)")
    a = ap.parse_args()
    if a.reps < 1 or a.block < 1:
        sys.exit("--reps and --block must be at least 1")
    fogline = os.environ.get("FOGLINE", f"{ROOT}/target/release/fogline")
    print(f"{'scenario':16} seed  ratio to the best other policy [95 % interval], "
          f"share of {a.reps} resamples with regression behind")
    for c in a.cells:
        scenario, _, seed = c.rpartition(":")
        if not scenario or not seed.isdigit():
            sys.exit(f"{c}: expected SCENARIO:SEED, like bursty-azure:1")
        cell(fogline, scenario, int(seed), a.reps, a.block)


if __name__ == "__main__":
    main()
