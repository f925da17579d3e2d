#!/usr/bin/env python3
"""The cloud tier on Docker Swarm, measured beside the engine's own limits in the same run.

  bench/swarm.py          (needs a Swarm manager: docker swarm init; builds the release binary)

1. Scale from zero: a call to a bridge whose service has 0 replicas, until its answer,
   beside the engine's own time to take a service of the same image from 0 to 1 running
   task (`docker service scale`, polled until Swarm says Running). Alternating, ROUNDS each.
2. A burst forecast ahead: the offered rate ramps up to a peak, of calls to
   examples/wait (each waits WAIT_MS without using CPU); the replicas the bridge asks for
   and Swarm runs, every half second, with the forecast on and with a reactive scaler
   (`[swarm] forecast = false`: in-flight and waiting calls only), same load.
3. Throughput through the bridge with 1 and 2 replicas (closed loop, CONNS connections,
   10 s each), THROUGHPUT_ROUNDS rounds alternating which goes first; the medians. Beside
   it, what a second process does on this machine without a bridge: the same closed loop
   against one plain `fogline up --single` process, and split across two, in the same
   rounds. The overhead of a second replica is flat when 2 replicas run as fast as 1 (on
   one machine the bridge packs calls onto one machine's first worker up to
   `target_inflight` per worker it runs: with 2 replicas and the default 8, the CONNS
   calls fit); a third configuration, 2 replicas with `target_inflight = CONNS`, fits
   them into one worker's own target.

Runs outside CI: figures depend on the machine; the README keeps the latest ones.
"""

import http.client
import json
import os
import socket
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROUNDS = int(os.environ.get("ROUNDS", "5"))
CONNS = int(os.environ.get("CONNS", "16"))
PEAK = float(os.environ.get("PEAK", "60"))
WORK = os.environ.get("WORK", "2000000").encode()  # primes up to this per call
# The burst's function waits this long (ms) without using CPU: on 2 cores a CPU-bound
# burst cannot need 4 workers without overloading the machine itself, so the burst
# measures the autoscaler's decisions on calls in flight, as sized by target_inflight.
WAIT_MS = os.environ.get("WAIT_MS", "200").encode()
TARGET = int(os.environ.get("TARGET_INFLIGHT", "3"))
TAG = f"fogline-bench:{os.getpid()}"
SERVICE = f"flbench{os.getpid()}"
RUNS = [0]


def sh(*args, check=True):
    r = subprocess.run(args, capture_output=True, text=True)
    if check and r.returncode != 0:
        sys.exit(f"bench: {' '.join(args)}: {r.stderr.strip()}")
    return r.stdout.strip()


class _Unix(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect("/var/run/docker.sock")


def api(path, body=None):
    """The engine's API, straight over its socket (the CLI adds ~100 ms per call)."""
    c = _Unix("docker")
    if body is None:
        c.request("GET", path)
    else:
        c.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
    r = c.getresponse()
    body = r.read()
    c.close()
    return json.loads(body) if r.status == 200 else None


def running(service):
    """Tasks of `service` the engine reports running (desired running)."""
    q = urllib.parse.quote(json.dumps({"service": [service], "desired-state": ["running"]}))
    tasks = api(f"/tasks?filters={q}") or []
    return sum(1 for t in tasks if t.get("Status", {}).get("State") == "running")


def replicas(service):
    out = sh("docker", "service", "inspect", "--format",
             "{{.Spec.Mode.Replicated.Replicas}}", service, check=False)
    return int(out) if out.isdigit() else 0


class Bridge:
    def __init__(self, binary, work, name, swarm):
        self.dir = os.path.join(work, name)
        os.makedirs(self.dir)
        pki = os.path.join(work, "pki")
        tls = os.path.join(pki, name)
        sh(binary, "certs", "issue", name, "--role", "bridge", "--ca", pki, "--out", tls)
        cfg = os.path.join(self.dir, "bridge.toml")
        with open(cfg, "w") as f:
            f.write(f"""version = 1
[mesh]
mdns = false
interval = "500ms"
[wasm]
instances = 256
[enroll]
listen = "127.0.0.1:0"
ca_dir = "{pki}"
[swarm]
enabled = true
image = "{TAG}"
service = "{SERVICE}"
{swarm}
""")
        self.err = open(os.path.join(self.dir, "err"), "w")
        self.p = subprocess.Popen(
            [binary, "bridge", "--config", cfg, "--id", name, "--data-dir", self.dir,
             "--http", "127.0.0.1:0", "--quic", "127.0.0.1:0", "--tls-dir", tls,
             "--mesh", "/ip4/127.0.0.1/tcp/0"],
            stdout=subprocess.PIPE, stderr=self.err, text=True, cwd=ROOT)
        first = self.p.stdout.readline()
        self.url = first.strip().removeprefix("gateway listening on ")
        for line in self.p.stdout:
            if " ready; data in " in line:
                break
        self.token = open(os.path.join(self.dir, "admin.token")).read().strip()
        threading.Thread(target=lambda: [None for _ in self.p.stdout], daemon=True).start()
        deadline = time.time() + 30
        while sh("docker", "service", "ls", "-q", "--filter", f"name={SERVICE}") == "":
            if time.time() > deadline:
                sys.exit("bench: the bridge made no service in 30 s")
            time.sleep(0.2)

    def deploy(self, binary, name, wasm, *extra):
        sh(binary, "--gateway", self.url, "--token", self.token, "deploy", name,
           "--wasm", os.path.join(ROOT, "examples", wasm), *extra)

    def call(self, f, body=b""):
        req = urllib.request.Request(f"{self.url}/function/{f}", data=body, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                r.read()
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except Exception:
            return 0

    def stop(self):
        self.p.terminate()
        self.p.wait()
        sh(BIN, "swarm", "down", "--service", SERVICE, check=False)
        deadline = time.time() + 60
        while sh("docker", "ps", "-q", "--filter",
                 f"label=com.docker.swarm.service.name={SERVICE}") and time.time() < deadline:
            time.sleep(0.3)


def wait(what, ok, secs=60, poll=0.1):
    deadline = time.time() + secs
    while not ok():
        if time.time() > deadline:
            sys.exit(f"bench: {what} did not happen in {secs} s")
        time.sleep(poll)


def scale_api(name, n):
    """What `docker service scale NAME=N` asks of the engine, without the CLI."""
    svc = api(f"/services/{name}")
    spec = svc["Spec"]
    spec["Mode"] = {"Replicated": {"Replicas": n}}
    api(f"/services/{name}/update?version={svc['Version']['Index']}", spec)


def engine_limit():
    """0 → 1 running task of the same image, as the engine does it alone."""
    name = f"{SERVICE}-limit"
    sh("docker", "service", "create", "-d", "--name", name, "--replicas", "0",
       "--network", "host", "--label", "dev.fogline.bench=1", TAG,
       "up", "--single", "--data-dir", "/data", "--http", "127.0.0.1:0", "--coap", "127.0.0.1:0")
    times = []
    try:
        for _ in range(ROUNDS):
            t0 = time.time()
            scale_api(name, 1)
            wait("the limit's task to run", lambda: running(name) >= 1, poll=0.01)
            times.append(time.time() - t0)
            scale_api(name, 0)
            wait("the limit's task to stop", lambda: sh(
                "docker", "ps", "-q", "--filter",
                f"label=com.docker.swarm.service.name={name}") == "")
    finally:
        sh("docker", "service", "rm", name, check=False)
    return times


def scale_from_zero(work):
    b = Bridge(BIN, work, "cloud-zero", 'min_replicas = 0\nmax_replicas = 2\nidle = "1s"')
    b.deploy(BIN, "hello", "hello/hello.wasm")
    times = []
    try:
        for _ in range(ROUNDS):
            wait("zero replicas and no worker left", lambda: replicas(SERVICE) == 0 and sh(
                "docker", "ps", "-q", "--filter",
                f"label=com.docker.swarm.service.name={SERVICE}") == "", 90)
            t0 = time.time()
            status = b.call("hello", b"zero")
            if status != 200:
                sys.exit(f"bench: the first call answered {status}")
            times.append(time.time() - t0)
    finally:
        b.stop()
    return times


def burst(work, forecast):
    """A ramp from 5/s to PEAK/s over RAMP s, PEAK/s for 4 s, of calls that wait WAIT_MS;
    the timeline. At the peak PEAK × WAIT_MS calls are in flight: 12 by default, 4
    workers at TARGET_INFLIGHT = 3."""
    peak, ramp, hold = PEAK, 8.0, 4.0
    RUNS[0] += 1
    name = f"cloud-{'fc' if forecast else 're'}{RUNS[0]}"
    b = Bridge(BIN, work, name, f'min_replicas = 1\nmax_replicas = 4\ntarget_inflight = {TARGET}\nidle = "60s"\nforecast = {"true" if forecast else "false"}')
    b.deploy(BIN, "wait", "wait/wait.wasm", "--max-concurrency", "64", "--timeout", "30s")
    wait("the first worker", lambda: running(SERVICE) >= 1)
    # Warm, and a service time to learn: at the ramp's starting rate, 5/s for 4 s, so
    # that the window the forecast fits before the ramp holds that rate (calls sent back
    # to back here would look like a burst of their own and scale up before the ramp).
    for _ in range(20):
        t = time.time()
        b.call("wait", WAIT_MS)
        time.sleep(max(0.0, 0.2 - (time.time() - t)))
    timeline, failed = [], []
    t0 = time.time()
    end = ramp + hold

    def rate(t):
        return 5 + (peak - 5) * min(t / ramp, 1.0)

    took = []

    def one():
        t = time.time()
        s = b.call("wait", WAIT_MS)
        took.append(time.time() - t)
        if s != 200:
            failed.append(s)

    # Open loop: a thread per call slot, started at the ramp's schedule.
    threads = []
    next_at = 0.0
    sample_at = 0.0
    while True:
        t = time.time() - t0
        if t >= end:
            break
        if t >= sample_at:
            timeline.append((round(t, 1), round(rate(t)), replicas(SERVICE), running(SERVICE)))
            sample_at += 0.5
        if t >= next_at:
            th = threading.Thread(target=one, daemon=True)
            th.start()
            threads.append(th)
            next_at += 1.0 / rate(t)
        else:
            time.sleep(min(0.002, next_at - t))
    for th in threads:
        th.join()
    b.stop()
    took.sort()
    p = lambda q: round(took[min(len(took) - 1, int(q * len(took)))] * 1e3)
    return timeline, len(threads), len(failed), (p(0.5), p(0.95), p(0.99))


def throughput(work, n, target):
    RUNS[0] += 1
    b = Bridge(BIN, work, f"cloud-t{n}-{RUNS[0]}",
               f"min_replicas = {n}\nmax_replicas = {n}\ntarget_inflight = {target}")
    b.deploy(BIN, "hello", "hello/hello.wasm", "--max-concurrency", "256")
    wait(f"{n} workers", lambda: running(SERVICE) >= n)
    for _ in range(50):
        b.call("hello", b"warm")
    time.sleep(2)
    rps = wrk_rps(b.url, 2, CONNS)
    b.stop()
    return rps


def wrk_rps(url, threads, conns):
    lua = os.path.join(tempfile.gettempdir(), f"flbench-post-{os.getpid()}.lua")
    with open(lua, "w") as f:
        f.write('wrk.method = "POST"\nwrk.body = "hello"\n')
    out = sh(shutil.which("wrk"), f"-t{threads}", f"-c{conns}", "-d10s", "-s", lua, f"{url}/function/hello")
    for line in out.splitlines():
        if line.startswith("Requests/sec:"):
            return float(line.split()[1])
    sys.exit(f"bench: wrk said nothing of {url}: {out}")


def plain(work, n):
    """The same closed loop (CONNS connections, two wrk threads in all) against `n` plain
    `fogline up --single` processes, split evenly: what a second process costs this host."""
    RUNS[0] += 1
    procs, urls = [], []
    for i in range(n):
        d = os.path.join(work, f"plain-{n}-{i}-{RUNS[0]}")
        os.makedirs(d)
        p = subprocess.Popen([BIN, "up", "--single", "--data-dir", os.path.join(d, ".fogline"),
                              "--http", "127.0.0.1:0", "--coap", "127.0.0.1:0"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=d)
        url = p.stdout.readline().strip().removeprefix("gateway listening on ")
        threading.Thread(target=lambda s=p.stdout: [None for _ in s], daemon=True).start()
        token = open(os.path.join(d, ".fogline", "admin.token")).read().strip()
        sh(BIN, "--gateway", url, "--token", token, "deploy", "hello", "--max-concurrency", "256",
           "--wasm", os.path.join(ROOT, "examples", "hello", "hello.wasm"))
        procs.append(p)
        urls.append(url)
    for url in urls:
        for _ in range(50):
            urllib.request.urlopen(urllib.request.Request(f"{url}/function/hello", data=b"warm")).read()
    time.sleep(1)
    got = []
    runs = [threading.Thread(target=lambda u=u: got.append(wrk_rps(u, 2 // n, CONNS // n))) for u in urls]
    for t in runs:
        t.start()
    for t in runs:
        t.join()
    for p in procs:
        p.terminate()
        p.wait()
    return sum(got)


if __name__ == "__main__":
    if sh("docker", "info", "--format", "{{.Swarm.LocalNodeState}}") != "active":
        sys.exit("bench: the engine is not a Swarm manager (docker swarm init)")
    BIN = os.environ.get("FOGLINE_BIN") or os.path.join(ROOT, "target", "release", "fogline")
    if not os.environ.get("FOGLINE_BIN"):
        subprocess.run(["cargo", "build", "--release", "-q"], cwd=ROOT, check=True)
    work = tempfile.mkdtemp()
    try:
        sh(BIN, "image", "build", "--tag", TAG)
        sh(BIN, "certs", "init", "--dir", os.path.join(work, "pki"))
        parts = os.environ.get("PARTS", "zero,burst,throughput").split(",")
        if "zero" in parts:
            limit = engine_limit()
            ours = scale_from_zero(work)
            ml, mo = statistics.median(limit), statistics.median(ours)
            print(f"scale from zero ({ROUNDS} rounds):")
            print(f"  engine alone, 0 → 1 running task: median {ml*1e3:.0f} ms  {[round(x*1e3) for x in limit]}")
            print(f"  Fogline, first call answered:     median {mo*1e3:.0f} ms  {[round(x*1e3) for x in ours]}")
            print(f"  ratio {mo/ml:.2f} (target ≤ 1.5)")
        # Alternating which goes first, so drift hits both alike.
        order = [True, False, False, True][: 2 * int(os.environ.get("BURSTS", "2"))]
        for forecast in order if "burst" in parts else ():
            timeline, calls, failed, (p50, p95, p99) = burst(work, forecast)
            print(f"burst, {'forecast' if forecast else 'reactive'} ({calls} calls, {failed} failed, latency p50 {p50} ms p95 {p95} ms p99 {p99} ms; t s: offered/s desired/running):")
            print("  " + "  ".join(f"{t}:{r}/s {d}/{run}" for t, r, d, run in timeline))
            first = {k: next((t for t, _, d, run in timeline if run >= k), None) for k in (2, 3, 4)}
            print(f"  2 running at {first[2]} s, 3 at {first[3]} s, 4 at {first[4]} s (peak offered from 8.0 s)")
        # Rounds of 1 and 2 replicas, alternating which goes first (this host drifts by
        # tens of percent between minutes: one round each would compare the drift).
        rounds = int(os.environ.get("THROUGHPUT_ROUNDS", "3"))
        # Each configuration: replicas, target_inflight, its name in the output.
        configs = {1: (1, 8, "1 replica"), 2: (2, 8, "2 replicas"),
                   "2p": (2, CONNS, f"2 replicas, packed (target_inflight = {CONNS})")}
        got = {k: [] for k in configs}
        lim = {1: [], 2: []}
        if "throughput" in parts and shutil.which("wrk") is None:
            print("throughput: skipped (no wrk: apt-get install wrk)")
            rounds = 0
        for r in range(rounds if "throughput" in parts else 0):
            for key in ((1, 2, "2p") if r % 2 == 0 else ("2p", 2, 1)):
                n, target, name = configs[key]
                rps = throughput(work, n, target)
                got[key].append(rps)
                print(f"throughput with {name}, round {r + 1}: {rps:.0f} calls/s")
                if key in lim:
                    rps = plain(work, n)
                    lim[key].append(rps)
                    print(f"  limit: {n} plain process{'es' if n > 1 else ''}, round {r + 1}: {rps:.0f} calls/s")
        if got[1] and got[2]:
            m1, m2 = statistics.median(got[1]), statistics.median(got[2])
            l1, l2 = statistics.median(lim[1]), statistics.median(lim[2])
            pairs = [b / a for a, b in zip(got[1], got[2])]
            lpairs = [b / a for a, b in zip(lim[1], lim[2])]
            print(f"throughput medians: 1 replica {m1:.0f}, 2 replicas {m2:.0f} calls/s ({m2 / m1:.2f}x); "
                  f"2/1 per round {[round(x, 2) for x in pairs]}")
            print(f"limit medians: 1 plain process {l1:.0f}, 2 plain processes {l2:.0f} calls/s ({l2 / l1:.2f}x); "
                  f"2/1 per round {[round(x, 2) for x in lpairs]}")
            print(f"a second replica: {m2 / m1:.2f}x of one through the bridge (flat at 1.00); "
                  f"a second plain process without a bridge: {l2 / l1:.2f}x of one")
            mp = statistics.median(got["2p"])
            ppairs = [b / a for a, b in zip(got[1], got["2p"])]
            print(f"2 replicas, the load within one's target (packed): {mp:.0f} calls/s ({mp / m1:.2f}x of 1 replica); "
                  f"per round {[round(x, 2) for x in ppairs]}")
    finally:
        sh(BIN, "swarm", "down", "--service", SERVICE, check=False)
        sh("docker", "rmi", "-f", TAG, check=False)
        shutil.rmtree(work, ignore_errors=True)
