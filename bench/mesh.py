#!/usr/bin/env python3
"""Gossip mesh benchmark: N real `fogline node` processes on loopback (release build).

    bench/mesh.py [--members 50]

Measures, and prints beside the report interval (the protocol's own limit):
- membership convergence: from the moment every process has been started (and from the
  first start) until every member's view lists all N members alive;
- failure detection: from SIGKILL of one member until every other marks it dead;
- load propagation: from starting calls on one member until every other sees its load, p95;
- traffic: TCP bytes each member sent plus received per second (kernel socket counters: gossip,
  introductions, pings, with nothing else going on), over 10 s.
Runs outside CI: it needs a release build and a quiet machine.
"""
import argparse, json, os, shutil, signal, subprocess, sys, tempfile, threading, time, urllib.request
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "fogline")


def get(url, token, timeout=2.0):
    req = urllib.request.Request(url, headers={"Authorization": "Bearer " + token})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def start(work, pki, name, join=None):
    out = os.path.join(pki, name)
    subprocess.run([BIN, "certs", "issue", name, "--role", "node", "--ca", pki, "--out", out], check=True, capture_output=True)
    cfg = os.path.join(work, name + ".toml")
    with open(cfg, "w") as f:
        f.write(f'version = 1\n[node]\nid = "{name}"\n[mesh]\nmdns = false\ninterval = "1s"\n[wasm]\ninstances = 8\n')
    args = [BIN, "node", "--config", cfg, "--data-dir", os.path.join(work, name), "--http", "127.0.0.1:0",
            "--tls-dir", out, "--mesh", "/ip4/127.0.0.1/tcp/0"]
    if join:
        args += ["--join", join]
    spawned = time.monotonic()
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=work)
    info = {"proc": p, "name": name, "spawned": spawned}
    for line in p.stdout:
        if line.startswith("gateway listening on "):
            info["url"] = line.split()[-1]
        if line.startswith("mesh listening on "):
            info["mesh"] = line.split()[-1]
        if " ready; data in " in line:
            break
    info["token"] = open(os.path.join(work, name, "admin.token")).read().strip()
    return info


def views(members, pool):
    def one(m):
        try:
            return get(m["url"] + "/v1/mesh", m["token"])["members"]
        except Exception:
            return []
    return list(pool.map(one, members))


def tcp_bytes():
    """Bytes sent plus received on every established TCP socket, summed per owning pid
    (from the kernel's per-socket counters, `ss -tinp`)."""
    import re
    out = subprocess.run(["ss", "-tinpH", "state", "established"], capture_output=True, text=True).stdout
    totals, pid = {}, None
    for line in out.splitlines():
        m = re.search(r"pid=(\d+)", line)
        if m:
            pid = int(m.group(1))
        sent = re.search(r"bytes_sent:(\d+)", line)
        recv = re.search(r"bytes_received:(\d+)", line)
        if pid is not None and (sent or recv):
            totals[pid] = totals.get(pid, 0) + int(sent.group(1) if sent else 0) + int(recv.group(1) if recv else 0)
    return totals


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--members", type=int, default=50)
    n = ap.parse_args().members
    subprocess.run(["cargo", "build", "--release", "-q"], cwd=ROOT, check=True)
    work = tempfile.mkdtemp(prefix="fogline-mesh-")
    pki = os.path.join(work, "pki")
    subprocess.run([BIN, "certs", "init", "--dir", pki], check=True, capture_output=True)
    members = []
    pool = ThreadPoolExecutor(max_workers=16)
    try:
        members.append(start(work, pki, "m0"))
        with ThreadPoolExecutor(max_workers=8) as starter:
            members += list(starter.map(lambda i: start(work, pki, f"m{i}", members[0]["mesh"]), range(1, n)))
        t0 = time.monotonic()
        first = t0 - members[0]["spawned"]
        listed = alive = None
        while time.monotonic() - t0 < 60:
            vs = views(members, pool)
            if listed is None and all(len(v) == n for v in vs):
                listed = time.monotonic() - t0
            if all(len(v) == n and all(m["state"] == "alive" for m in v) for v in vs):
                alive = time.monotonic() - t0
                break
            time.sleep(0.2)
        if listed is None:
            sys.exit(f"membership did not converge in 60 s: view sizes {[len(v) for v in vs]}")
        flapping = sum(m["state"] != "alive" for v in vs for m in v)

        time.sleep(3)
        before = tcp_bytes()
        time.sleep(10)
        after = tcp_bytes()
        rates = sorted((after.get(m["proc"].pid, 0) - before.get(m["proc"].pid, 0)) / 10 for m in members)

        # Load propagation: a call that runs ~1 s on m1; the others must see m1 busy.
        m1 = members[1]
        wasm = os.path.join(ROOT, "examples", "misbehave", "loop.wasm")
        subprocess.run([BIN, "--gateway", m1["url"], "--token", m1["token"], "deploy", "spin", "--timeout", "1500ms",
                        "--wasm", wasm], check=True, capture_output=True)
        delays = []
        for _ in range(10):
            t = time.monotonic()
            calls = [threading.Thread(target=lambda: subprocess.run(["curl", "-s", "-o", "/dev/null", "-X", "POST",
                     m1["url"] + "/function/spin"])) for _ in range(2)]
            for c in calls:
                c.start()
            others = [m for m in members if m is not m1]
            seen = {}
            while len(seen) < len(others) and time.monotonic() - t < 5:
                for m, v in zip(others, views(others, pool)):
                    if m["name"] not in seen and any(x["id"] == "m1" and x["in_flight"] >= 1 for x in v):
                        seen[m["name"]] = time.monotonic() - t
            delays.append(max(seen.values()) if len(seen) == len(others) else float("inf"))
            for c in calls:
                c.join()
            time.sleep(1.5)
        delays.sort()
        p95 = delays[int(0.95 * (len(delays) - 1))]

        victim = members[-1]
        victim["proc"].send_signal(signal.SIGKILL)
        t = time.monotonic()
        rest = members[:-1]
        while True:
            vs = views(rest, pool)
            if all(any(x["id"] == victim["name"] and x["state"] == "dead" for x in v) for v in vs):
                dead = time.monotonic() - t
                break
            if time.monotonic() - t > 30:
                sys.exit("the killed member was not marked dead everywhere in 30 s")
            time.sleep(0.05)

        print(f"gossip mesh, {n} member processes on loopback, report interval 1 s, {os.cpu_count()} cores (release)")
        print(f"every view lists all {n} members:        {listed:6.2f} s after the last start")
        if alive is not None:
            print(f"every view shows all {n} alive:          {alive:6.2f} s after the last start, "
                  f"{alive + first:.2f} s after the first ({first:.2f} s to start all {n})")
        else:
            print(f"every view shows all {n} alive:          not within 60 s ({flapping} of {n*n} entries suspect/dead at the end)")
        print(f"killed member marked dead everywhere:   {dead:6.2f} s (dead after 2.5 intervals unheard)")
        print(f"load change seen by every member, p95:  {p95:6.2f} s (median {delays[len(delays)//2]:.2f} s, {len(delays)} changes)")
        print(f"mesh TCP traffic per member (sent+received), median / max: {rates[len(rates)//2]/1000:.1f} / {rates[-1]/1000:.1f} KB/s")
    finally:
        for m in members:
            m["proc"].kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
