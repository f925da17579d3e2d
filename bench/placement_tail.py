#!/usr/bin/env python3
"""Which calls make the regression policy's tail? For each (scenario, seed), runs every
policy through `fogline simulate --latencies` and takes the best other policy at p99 (the
one bench/placement.py compares with). The same calls arrive under both, so the calls
that finished past the other policy's p99 under regression and not under it are the
calls regression put in the tail: they are broken down by where regression answered
them (tier, whether retried or cold, and the function), with what each group took under
regression (and what regression had predicted) and under the other policy.

    python3 bench/placement_tail.py bursty-azure:5 far-small-cloud:2 [--top 8]

FOGLINE (environment) names the binary; default target/release/fogline (cargo build
--release first). Python's standard library only."""

import argparse
import collections
import os
import sys
import tempfile

from placement_bootstrap import ROOT, mean, p99, rows, simulate


def cell(fogline, scenario, seed, top):
    with tempfile.TemporaryDirectory() as d:
        policies, calls, best, _ = simulate(
            fogline, scenario, seed, d, read=lambda p: {int(r["call"]): r for r in rows(p)})
    reg, other = calls["regression"], calls[best]
    line = p99([float(r["latency_ms"]) for r in other.values()])
    past = lambda c, i: i in c and float(c[i]["latency_ms"]) > line
    mine = [i for i in reg if past(reg, i) and not past(other, i)]
    theirs = sum(1 for i in other if past(other, i) and not past(reg, i))
    print(f"\n{scenario} seed {seed}: p99 {policies['regression']['p99_ms']:.1f} ms against "
          f"{best}'s {line:.1f} ms; {len(mine)} calls past it under regression only, "
          f"{theirs} under {best} only")
    groups = collections.defaultdict(list)
    for i in mine:
        r = reg[i]
        how = ("retried " if int(r["attempts"]) > 1 else "") + ("cold " if r["cold"] == "true" else "")
        groups[(r["tier"], how.strip() or "first try, warm", r["function"])].append(i)
    print(f"  {'calls':>6}  {'answered at':11} {'how':16} {'function':>8}  "
          f"{'regression: took':>16} {'predicted':>9} {'waited':>7} {'ran':>7}   {best}: took")
    for (tier, how, fn), ids in sorted(groups.items(), key=lambda g: -len(g[1]))[:top]:
        col = lambda k: mean([float(reg[i][k]) if reg[i][k] else None for i in ids])
        print(f"  {len(ids):6}  {tier:11} {how:16} {fn:>8}  {col('latency_ms'):16.1f} "
              f"{col('predicted_ms'):9.1f} {col('wait_ms'):7.1f} {col('run_ms'):7.1f}   "
              f"{mean([float(other[i]['latency_ms']) for i in ids if i in other]):.1f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cells", nargs="+", metavar="SCENARIO:SEED")
    ap.add_argument("--top", type=int, default=8, help="groups shown per cell (default 8)")
    a = ap.parse_args()
    if a.top < 1:
        sys.exit("--top must be at least 1")
    fogline = os.environ.get("FOGLINE", f"{ROOT}/target/release/fogline")
    for c in a.cells:
        scenario, _, seed = c.rpartition(":")
        if not scenario or not seed.isdigit():
            sys.exit(f"{c}: expected SCENARIO:SEED, like bursty-azure:5")
        cell(fogline, scenario, int(seed), a.top)


if __name__ == "__main__":
    main()
