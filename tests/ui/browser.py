#!/usr/bin/env python3
"""The dashboard in a real browser: headless Chromium driven over WebDriver (Selenium and
Debian's chromium-driver), against a running `fogline up`.

    browser.py GATEWAY TOKEN SHOTS_DIR MEMBERS          the checks (tests/ui.rs runs them)
    browser.py GATEWAY TOKEN SHOTS_DIR MEMBERS --stream SECONDS RATE
                                                        the live stream under load (bench/ui.sh)

Every check that fails stops with a line naming it (exit 1). Figures are printed, never
asserted: first paint and the stream's memory are benchmarks, not tests.
"""
import json
import sys
import threading
import time
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait


def fail(what):
    print(f"FAILED: {what}", flush=True)
    sys.exit(1)


def browser():
    opts = Options()
    opts.binary_location = "/usr/bin/chromium"
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--window-size=1360,900", "--enable-precise-memory-info"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)


def invoke(gw, n, body=b"ui", function="hello"):
    """n calls, in four threads, each checked."""
    errors = []

    def work(k):
        for _ in range(k):
            try:
                with urllib.request.urlopen(urllib.request.Request(
                        f"{gw}/function/{function}", data=body, method="POST"), timeout=30) as r:
                    if r.status != 200:
                        errors.append(r.status)
            except Exception as e:  # noqa: BLE001 - any failure is reported
                errors.append(str(e))

    ts = [threading.Thread(target=work, args=(n // 4 + (1 if i < n % 4 else 0),)) for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        fail(f"calls failed while the dashboard watched: {errors[:3]}")


def wait(drv, what, cond, timeout=20):
    try:
        return WebDriverWait(drv, timeout, poll_frequency=0.05).until(lambda d: cond(d))
    except Exception:  # noqa: BLE001
        shot = "/tmp/fogline-ui-failure.png"
        drv.save_screenshot(shot)
        errors = drv.find_elements(By.ID, "error")
        fail(f"{what} (within {timeout} s; page {drv.current_url}; "
             f"{'error shown: ' + errors[0].text if errors else 'no error shown'}; screenshot {shot})")


class Console:
    """Every message the page's console printed; errors fail the run at the end."""

    def __init__(self, drv):
        self.drv, self.errors = drv, []

    def read(self, page):
        for e in self.drv.get_log("browser"):
            if e.get("level") == "SEVERE":
                self.errors.append(f"{page}: {e.get('message')}")


def checks(gw, token, shots, members):
    drv = browser()
    console = Console(drv)
    figures = {}
    try:
        # Mesh: the token from the address, removed from it; every member shown.
        t0 = time.monotonic()
        drv.get(f"{gw}/ui?token={token}")
        wait(drv, f"{members} members on the mesh page",
             lambda d: len(d.find_elements(By.CSS_SELECTOR, "#members .member")) == members)
        figures["mesh_page_ready_ms"] = round((time.monotonic() - t0) * 1000, 1)
        paint = drv.execute_script(
            "const p = performance.getEntriesByType('paint').find(e => e.name === 'first-contentful-paint');"
            "return p ? p.startTime : null;")
        figures["first_contentful_paint_ms"] = round(paint, 1) if paint is not None else None
        if "token" in drv.current_url:
            fail(f"the token stays in the address bar: {drv.current_url}")
        if drv.execute_script("return sessionStorage.getItem('fogline-token')") != token:
            fail("the token is not kept in the tab's session storage")
        states = {e.get_attribute("data-name"): e.get_attribute("data-state")
                  for e in drv.find_elements(By.CSS_SELECTOR, "#members .member")}
        if any(s != "alive" for s in states.values()):
            fail(f"members not alive: {states}")
        groups = [g.get_attribute("data-group") for g in drv.find_elements(By.CSS_SELECTOR, "#members section.group")]
        if not any(g.startswith("edge") for g in groups) or not any(g.startswith("cloud") for g in groups):
            fail(f"members are not grouped by tier: {groups}")
        drv.save_screenshot(f"{shots}/ui-mesh.png")
        console.read("/ui")

        # Placements: the stream updates the page without a reload.
        drv.get(f"{gw}/ui/placements")
        wait(drv, "the placements stream connects",
             lambda d: "live" in d.find_element(By.ID, "counts").text)
        drv.execute_script("window.__noReload = 42;")
        before = int(drv.find_element(By.ID, "counts").get_attribute("data-received") or 0)
        invoke(gw, 40)
        wait(drv, "40 new placements arrive over the stream",
             lambda d: int(d.find_element(By.ID, "counts").get_attribute("data-received") or 0) >= before + 40)
        if drv.execute_script("return window.__noReload") != 42:
            fail("the placements page reloaded")
        rows = drv.find_elements(By.CSS_SELECTOR, "#placements tbody tr")
        if len(rows) < 40 or rows[0].get_attribute("data-function") != "hello":
            fail(f"placement rows: {len(rows)}")
        cells = rows[0].find_elements(By.TAG_NAME, "td")
        if "edge" not in cells[2].text and "cloud" not in cells[2].text:
            fail(f"a placement row shows no candidates: {cells[2].text!r}")
        filt = drv.find_element(By.ID, "filter")
        filt.send_keys("no-such-function")
        wait(drv, "the filter hides other functions' rows",
             lambda d: all(not r.is_displayed() for r in d.find_elements(By.CSS_SELECTOR, "#placements tbody tr")))
        filt.clear()
        filt.send_keys("hel")
        wait(drv, "the filter shows matching rows",
             lambda d: any(r.is_displayed() for r in d.find_elements(By.CSS_SELECTOR, "#placements tbody tr")))
        drv.save_screenshot(f"{shots}/ui-placements.png")
        console.read("/ui/placements")

        # A placement's trace: its spans across the members.
        link = drv.find_element(By.CSS_SELECTOR, "#placements tbody tr a")
        link.click()
        wait(drv, "the trace page lists the call's spans",
             lambda d: len(d.find_elements(By.CSS_SELECTOR, "#trace tbody tr")) >= 4)
        names = {r.get_attribute("data-name") for r in drv.find_elements(By.CSS_SELECTOR, "#trace tbody tr")}
        if not {"http", "placement", "attempt", "run"} <= names:
            fail(f"the trace lacks hops: {names}")
        members_seen = {r.get_attribute("data-member") for r in drv.find_elements(By.CSS_SELECTOR, "#trace tbody tr")}
        if len(members_seen) < 2:
            fail(f"the trace shows one member only: {members_seen}")
        drv.save_screenshot(f"{shots}/ui-trace.png")
        console.read("/ui/traces")

        # A function's page: its histogram holds the calls.
        drv.get(f"{gw}/ui/functions")
        wait(drv, "the functions list shows hello",
             lambda d: d.find_elements(By.CSS_SELECTOR, "#functions tr[data-function='hello'] a"))
        drv.find_element(By.CSS_SELECTOR, "#functions tr[data-function='hello'] a").click()
        wait(drv, "hello's histogram holds its calls",
             lambda d: sum(int(b.get_attribute("data-count")) for b in d.find_elements(By.CSS_SELECTOR, "#histogram rect.hbar")) >= 40)
        calls = int(drv.find_element(By.CSS_SELECTOR, "#calls .v").text)
        if calls < 40:
            fail(f"hello's page counts {calls} calls")
        if not drv.find_elements(By.CSS_SELECTOR, "#tiers rect"):
            fail("no tier shares drawn")
        drv.save_screenshot(f"{shots}/ui-function.png")
        console.read("/ui/functions/hello")

        # The simulator: a shipped scenario run in the request, its table and CDF drawn.
        drv.get(f"{gw}/ui/simulate")
        wait(drv, "the scenarios are offered",
             lambda d: len(d.find_elements(By.CSS_SELECTOR, "#scenario option")) >= 1)
        Select(drv.find_element(By.ID, "scenario")).select_by_value("bursty-azure.toml")
        box = drv.find_element(By.ID, "invocations")
        box.clear()
        box.send_keys("20000")
        t0 = time.monotonic()
        drv.find_element(By.ID, "run").click()
        # Every policy the simulator offers: the eight the router runs, and the oracle.
        wait(drv, "the simulator's answer", lambda d: len(d.find_elements(By.CSS_SELECTOR, "#sim-table tbody tr")) == 9
             or d.find_elements(By.ID, "sim-error"), 180)
        if drv.find_elements(By.ID, "sim-error"):
            fail("the simulator failed: " + drv.find_element(By.ID, "sim-error").text)
        figures["simulate_20000_calls_s"] = round(time.monotonic() - t0, 2)
        policies = [r.get_attribute("data-policy") for r in drv.find_elements(By.CSS_SELECTOR, "#sim-table tbody tr")]
        if "regression" not in policies or "oracle" not in policies:
            fail(f"policies in the table: {policies}")
        if len(drv.find_elements(By.CSS_SELECTOR, "#cdf path[data-series]")) != 9:
            fail("the CDF chart does not draw every policy")
        heads = [h.text for h in drv.find_elements(By.CSS_SELECTOR, "#sim-table thead th")]
        if "peer" in heads:
            fail(f"a peer column for a scenario without peers: {heads}")
        # Regression's prediction error, and under it the floor the runs' own noise leaves.
        row = drv.find_element(By.CSS_SELECTOR, '#sim-table tr[data-policy="regression"]')
        cells = [c.text for c in row.find_elements(By.TAG_NAME, "td")]
        err, floor = (cells[heads.index(h)] for h in ("prediction error", "error floor"))
        try:
            below = 0 < float(floor.rstrip(" %")) < float(err.rstrip(" %"))
        except ValueError:
            below = False
        if not below:
            fail(f"regression's prediction error {err!r} and its floor {floor!r}")
        drv.save_screenshot(f"{shots}/ui-simulate.png")
        # A scenario with a peer cluster shows the peer's share of calls.
        Select(drv.find_element(By.ID, "scenario")).select_by_value("peer-cluster.toml")
        box = drv.find_element(By.ID, "invocations")
        box.clear()
        box.send_keys("5000")
        drv.find_element(By.ID, "run").click()
        wait(drv, "the peered simulator's answer",
             lambda d: "peer-cluster" in d.find_element(By.ID, "sim-summary").text
             or d.find_elements(By.ID, "sim-error"), 180)
        if drv.find_elements(By.ID, "sim-error"):
            fail("the simulator failed: " + drv.find_element(By.ID, "sim-error").text)
        heads = [h.text for h in drv.find_elements(By.CSS_SELECTOR, "#sim-table thead th")]
        if "peer" not in heads:
            fail(f"no peer column for a scenario with a peer cluster: {heads}")
        console.read("/ui/simulate")

        # A wrong token is asked again, with the gateway's reason.
        drv.execute_script("sessionStorage.setItem('fogline-token', 'wrong')")
        drv.get(f"{gw}/ui")
        wait(drv, "a wrong token brings the token form back with the reason",
             lambda d: d.find_element(By.ID, "login").is_displayed()
             and "wrong" in d.find_element(By.ID, "login-error").text)
        # (the browser logs the 401 itself; that one is expected)
        drv.get_log("browser")
    finally:
        drv.quit()
    if console.errors:
        fail("the console showed errors: " + " | ".join(console.errors[:5]))
    print(json.dumps(figures), flush=True)


def stream(gw, token, members, seconds, rate):
    """Placements at `rate`/s for `seconds` while the page watches: rows, heap, received."""
    drv = browser()
    try:
        t0 = time.monotonic()
        drv.get(f"{gw}/ui?token={token}")
        WebDriverWait(drv, 20).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#members .member")) == members)
        print(f"mesh page ready in {(time.monotonic() - t0) * 1000:.0f} ms; first contentful paint "
              + str(drv.execute_script("return performance.getEntriesByType('paint').find(e => e.name === 'first-contentful-paint').startTime")) + " ms")
        drv.get(f"{gw}/ui/placements")
        WebDriverWait(drv, 20).until(lambda d: "live" in d.find_element(By.ID, "counts").text)
        stop = time.monotonic() + seconds
        sent = [0]

        def load():
            # Paced: `rate` calls a second over 8 threads, each on one kept-alive connection.
            import http.client
            host = gw.split("//", 1)[1]
            per = rate / 8.0

            def one():
                conn = http.client.HTTPConnection(host, timeout=10)
                t = time.monotonic()
                k = 0
                while time.monotonic() < stop:
                    k += 1
                    d = t + k / per - time.monotonic()
                    if d > 0:
                        time.sleep(d)
                    try:
                        conn.request("POST", "/function/hello", body=b"x")
                        conn.getresponse().read()
                        sent[0] += 1
                    except Exception:  # noqa: BLE001 - a new connection next time
                        conn.close()
                        conn = http.client.HTTPConnection(host, timeout=10)
            ts = [threading.Thread(target=one) for _ in range(8)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()

        th = threading.Thread(target=load)
        th.start()
        print(f"{'s':>4} {'sent/s':>8} {'received':>9} {'rows':>5} {'JS heap MB':>10}")
        last = 0
        for s in range(1, seconds + 2):
            time.sleep(1)
            got = int(drv.find_element(By.ID, "counts").get_attribute("data-received") or 0)
            rows = len(drv.find_elements(By.CSS_SELECTOR, "#placements tbody tr"))
            heap = drv.execute_script("return performance.memory ? performance.memory.usedJSHeapSize : 0") / 1e6
            print(f"{s:>4} {sent[0] - last:>8} {got:>9} {rows:>5} {heap:>10.1f}", flush=True)
            last = sent[0]
        th.join()
    finally:
        drv.quit()


if __name__ == "__main__":
    gw, token, shots, members = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    if len(sys.argv) > 5 and sys.argv[5] == "--stream":
        stream(gw, token, members, int(sys.argv[6]), float(sys.argv[7]))
    else:
        checks(gw, token, shots, members)
