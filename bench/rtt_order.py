#!/usr/bin/env python3
"""How much one measured round trip says about the next, read in file order.

    python3 bench/rtt_order.py [FILE ...]     # default: every data/rtt/*-ms.txt

For each file of round trips (one number a line, `#` comments allowed), prints the lag-1, 2, 5
and 10 autocorrelations and the root mean squared error of predicting each sample by a running
average that keeps `k` of its old value (a ping smoothed as `mesh::RTT_KEEP` does), for several
`k`. The simulator holds a link's round trip for `rtt_coherence_ms`; this shows how persistent
the measured sequences are, if the files are in the order they were measured (they do not say
how far apart the samples were taken).
"""
import glob
import math
import os
import sys

KEEPS = [0.0, 0.25, 0.5, 0.75, 0.875, 0.95]
LAGS = [1, 2, 5, 10]


def read(path):
    out = []
    try:
        f = open(path)
    except OSError as e:
        sys.exit(f"{path}: cannot read it: {e.strerror}")
    with f:
        for n, line in enumerate(f, 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            try:
                v = float(line)
            except ValueError:
                sys.exit(f"{path}:{n}: not a number: {line!r}")
            if not math.isfinite(v) or v < 0:
                sys.exit(f"{path}:{n}: not a round trip: {line!r}")
            out.append(v)
    return out


def autocorrelation(x, lag):
    n = len(x)
    mean = sum(x) / n
    var = sum((v - mean) ** 2 for v in x) / n
    if var == 0 or lag >= n:
        return float("nan")
    return sum((x[i] - mean) * (x[i + lag] - mean) for i in range(n - lag)) / (n * var)


def rmse_of_running_average(x, keep):
    avg, err = x[0], 0.0
    for v in x[1:]:
        err += (v - avg) ** 2
        avg = keep * avg + (1 - keep) * v
    return math.sqrt(err / (len(x) - 1))


def main():
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    files = sys.argv[1:] or sorted(glob.glob(os.path.join(root, "data", "rtt", "*-ms.txt")))
    if not files:
        sys.exit("no round-trip files given or found under data/rtt")
    head = "file                   samples  " + " ".join(f"ac{l:<5}" for l in LAGS)
    head += "   rmse of a running average keeping k (ms): " + " ".join(f"k={k:<6}" for k in KEEPS)
    print(head)
    for path in files:
        x = read(path)
        if len(x) < 12:
            print(f"{os.path.basename(path):22} {len(x):7}  too few samples")
            continue
        acs = " ".join(f"{autocorrelation(x, l):7.3f}" for l in LAGS)
        errs = [rmse_of_running_average(x, k) for k in KEEPS]
        best = KEEPS[errs.index(min(errs))]
        print(f"{os.path.basename(path):22} {len(x):7}  {acs}   "
              + " ".join(f"{e:8.2f}" for e in errs) + f"   best k {best}")


if __name__ == "__main__":
    main()
