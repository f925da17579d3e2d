//! The router with real processes: a bridge, two edge nodes and a router on loopback, meshed
//! and talking QUIC with their own certificates. Placement details on every response, the
//! placements log, 404 without contacting nodes, placements moving off a CPU-loaded node,
//! no idempotent request failing when a node is killed, a 502 naming the place for a
//! non-idempotent call that lost its place, and a 503 when no place is left.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// CPUs this process may use (the tests pin edge nodes to one each, like separate boards).
fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Starts `fogline ROLE` as mesh member `name`, pinned to `cpu` when there is one to spare.
fn member(
    dir: &Path,
    pki: &Path,
    role: &str,
    name: &str,
    join: Option<&str>,
    cpu: Option<usize>,
) -> NodeProc {
    let cfg = dir.join("member.toml");
    std::fs::write(
        &cfg,
        "version = 1\n[mesh]\nmdns = false\ninterval = \"500ms\"\n",
    )
    .unwrap();
    let cert_role = match role {
        "bridge" => "bridge",
        _ => "node",
    };
    let tls = issue(pki, name, cert_role);
    let mut cmd = match cpu.filter(|_| cpus() >= 2 && Path::new("/usr/bin/taskset").exists()) {
        Some(c) => {
            let mut t = std::process::Command::new("/usr/bin/taskset");
            t.args(["-c", &c.to_string()]).arg(bin());
            t
        }
        None => std::process::Command::new(bin()),
    };
    cmd.env_remove("FOGLINE_GATEWAY")
        .env_remove("FOGLINE_TOKEN")
        .current_dir(dir)
        .arg(role)
        .arg("--config")
        .arg(&cfg)
        .args(["--id", name, "--data-dir"])
        .arg(dir.join(name))
        .args([
            "--http",
            "127.0.0.1:0",
            "--quic",
            "127.0.0.1:0",
            "--tls-dir",
        ])
        .arg(&tls)
        .args(["--mesh", "/ip4/127.0.0.1/tcp/0"]);
    if let Some(j) = join {
        cmd.args(["--join", j]);
    }
    NodeProc::spawn_cmd(cmd, dir.join(name), dir)
}

/// `GET /v1/placements?limit=N` of the router.
async fn placements(c: &reqwest::Client, router: &str, limit: usize) -> Value {
    c.get(format!("{router}/v1/placements?limit={limit}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Invokes through the router; returns (status, placed-on node, body).
async fn call(c: &reqwest::Client, router: &str, f: &str, body: &str) -> (u16, String, String) {
    let r = c
        .post(format!("{router}/function/{f}"))
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let placed = r
        .headers()
        .get("x-fogline-placed-on")
        .map(|v| v.to_str().unwrap().split(' ').next().unwrap().to_string())
        .unwrap_or_default();
    (status, placed, r.text().await.unwrap())
}

/// Where `n` calls of hello went.
async fn shares(c: &reqwest::Client, router: &str, n: usize) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for _ in 0..n {
        let (s, placed, _) = call(c, router, "hello", "x").await;
        assert_eq!(s, 200);
        *m.entry(placed).or_insert(0) += 1;
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_router_places_learns_moves_off_load_and_survives_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pki = pki(d);
    let cloud = member(d, &pki, "bridge", "cloud", None, None);
    let seed = mesh_json(&cloud)["self"].as_str().unwrap().to_string();
    let mut edges = [
        member(d, &pki, "node", "edge-1", Some(&seed), Some(0)),
        member(d, &pki, "node", "edge-2", Some(&seed), Some(1)),
    ];
    let router = member(d, &pki, "router", "router", Some(&seed), None);
    let everyone = vec!["cloud", "edge-1", "edge-2", "router"];
    wait_until("the router sees every member", 20, || {
        alive(&router) == everyone
    });
    let c = client();

    // Deploy through the router: nodes fetch the module by hash on first use.
    let r = deploy(
        &router,
        "hello",
        "hello/hello.wasm",
        json!({"idempotent": true}),
    )
    .await;
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let r = deploy(
        &router,
        "spin-once",
        "misbehave/loop.wasm",
        json!({"timeout": "4s"}),
    )
    .await;
    assert!(r.status().is_success());

    // Placement details on every response.
    let r = c
        .post(format!("{}/function/hello", router.url))
        .body("world")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    assert_eq!(r.text().await.unwrap(), "hello, world");
    let placed = h["x-fogline-placed-on"].to_str().unwrap();
    assert!(
        ["cloud (cloud)", "edge-1 (edge)", "edge-2 (edge)"].contains(&placed),
        "{placed}"
    );
    for k in ["x-fogline-predicted-ms", "x-fogline-took-ms"] {
        let v: f64 = h[k].to_str().unwrap().parse().unwrap();
        assert!(v.is_finite() && v >= 0.0, "{k}: {v}");
    }

    // Unknown function: 404 from the router itself, nothing recorded, nobody contacted.
    let before = placements(&c, &router.url, 1000).await["placements"]
        .as_array()
        .unwrap()
        .len();
    let (s, placed, msg) = call(&c, &router.url, "nosuch", "x").await;
    assert_eq!((s, placed.as_str()), (404, ""));
    assert!(msg.contains("\"nosuch\" not found on this router"), "{msg}");
    let after = placements(&c, &router.url, 1000).await;
    assert_eq!(after["placements"].as_array().unwrap().len(), before);

    // Learn: a few hundred calls, then the models answer and the error is reported.
    let warmup = shares(&c, &router.url, 300).await;
    eprintln!("warm-up placements: {warmup:?}");
    let p = placements(&c, &router.url, 50).await;
    let last = &p["placements"][0];
    assert_eq!(last["function"], "hello");
    assert_eq!(last["candidates"].as_array().unwrap().len(), 3);
    assert!(last["actual_ms"].as_f64().unwrap() > 0.0);
    assert!(
        last["candidates"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["source"] == "model"),
        "after 300 calls some place is predicted by its fitted model: {last}"
    );
    let err = p["median_prediction_error"].as_f64().unwrap();
    eprintln!(
        "median prediction error after warm-up: {:.1} %",
        err * 100.0
    );
    // Members gossip their cold and warm start counts.
    wait_until("start counts reach the router's view", 5, || {
        mesh_json(&router)["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["warm_starts"].as_u64().unwrap())
            .sum::<u64>()
            > 0
    });
    let table = run_ok(fogline().args(["--gateway", &router.url, "placements", "--limit", "3"]));
    assert!(
        table.contains("hello") && table.contains("median prediction error"),
        "{table}"
    );

    // Load the busier edge with CPU-bound work deployed on it directly; most new placements
    // must leave it within 5 s.
    let (li, loaded_name) =
        if warmup.get("edge-1").unwrap_or(&0) >= warmup.get("edge-2").unwrap_or(&0) {
            (0, "edge-1")
        } else {
            (1, "edge-2")
        };
    let loaded = &edges[li];
    let r = deploy(
        loaded,
        "spin",
        "misbehave/loop.wasm",
        json!({"timeout": "2s"}),
    )
    .await;
    assert!(r.status().is_success());
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..3 {
        let (url, stop) = (loaded.url.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let c = client();
            while !stop.load(Ordering::Relaxed) {
                let _ = c.post(format!("{url}/function/spin")).send().await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let during = shares(&c, &router.url, 100).await;
    let on_loaded = during.get(loaded_name).copied().unwrap_or(0);
    eprintln!(
        "{loaded_name} loaded: before {} of 300, 5 s into the load {on_loaded} of 100 ({during:?})",
        warmup.get(loaded_name).unwrap_or(&0)
    );
    assert!(
        on_loaded < 50,
        "most placements should leave the loaded {loaded_name}: {during:?}"
    );
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }

    // Kill the place now taking most calls while idempotent calls stream in: none fails.
    let favourite = shares(&c, &router.url, 50).await;
    let victim = ["edge-1", "edge-2"]
        .into_iter()
        .max_by_key(|n| favourite.get(*n).copied().unwrap_or(0))
        .unwrap();
    let vi = if victim == "edge-1" { 0 } else { 1 };
    let failures = Arc::new(AtomicU32::new(0));
    let done = Arc::new(AtomicU32::new(0));
    let running = Arc::new(AtomicBool::new(true));
    let mut callers = Vec::new();
    for _ in 0..4 {
        let (url, failures, done, running) = (
            router.url.clone(),
            failures.clone(),
            done.clone(),
            running.clone(),
        );
        callers.push(tokio::spawn(async move {
            let c = client();
            while running.load(Ordering::Relaxed) {
                let (s, _, body) = call(&c, &url, "hello", "k").await;
                if s != 200 {
                    eprintln!("failed call: {s} {body}");
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    edges[vi].kill();
    tokio::time::sleep(Duration::from_secs(4)).await;
    running.store(false, Ordering::Relaxed);
    for c in callers {
        c.await.unwrap();
    }
    eprintln!(
        "killed {victim} ({favourite:?} before): {} calls, {} failed",
        done.load(Ordering::Relaxed),
        failures.load(Ordering::Relaxed)
    );
    assert_eq!(failures.load(Ordering::Relaxed), 0);
    assert!(done.load(Ordering::Relaxed) > 50);
    wait_until("the killed node is marked dead", 10, || {
        !alive(&router).contains(&victim.to_string())
    });

    // A non-idempotent call whose place dies under it: 502 naming the place.
    let other = &edges[1 - vi];
    let other_name = if vi == 0 { "edge-2" } else { "edge-1" };
    let url = router.url.clone();
    let pending = tokio::spawn(async move {
        let c = client();
        let r = c
            .post(format!("{url}/function/spin-once"))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    });
    // Find where it runs: the member with an instance in use.
    let mut cloud = cloud;
    let mut on_cloud = None;
    let t = Instant::now();
    while on_cloud.is_none() && t.elapsed() < Duration::from_secs(3) {
        if status(&other.url).await["instances_in_use"].as_u64() == Some(1) {
            on_cloud = Some(false);
        } else if status(&cloud.url).await["instances_in_use"].as_u64() == Some(1) {
            on_cloud = Some(true);
        } else {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let v2name = match on_cloud.expect("spin-once runs on a live member") {
        true => {
            cloud.kill();
            "cloud"
        }
        false => {
            edges[1 - vi].kill();
            other_name
        }
    };
    let (s, msg) = pending.await.unwrap();
    eprintln!("non-idempotent call after its place died: {s} {msg}");
    assert_eq!(s, 502, "{msg}");
    assert!(
        msg.contains(v2name) && msg.contains("not idempotent"),
        "{msg}"
    );

    // Nothing left that can run it: 503 saying so.
    for e in edges.iter_mut() {
        e.kill();
    }
    cloud.kill();
    wait_until("every member is marked dead", 10, || {
        alive(&router) == vec!["router".to_string()]
    });
    let (s, _, msg) = call(&c, &router.url, "hello", "x").await;
    assert_eq!(s, 503, "{msg}");
    assert!(msg.contains("no live place can run \"hello\""), "{msg}");
}

/// An edge node stopped with SIGTERM while calls that are not idempotent stream in: it tells
/// the mesh it is leaving, refuses new calls with a retryable error, finishes the ones it
/// took and exits cleanly; not one call fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_node_finishes_its_calls_and_the_router_loses_none() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pki = pki(d);
    let first = member(d, &pki, "node", "edge-1", None, Some(0));
    let seed = mesh_json(&first)["self"].as_str().unwrap().to_string();
    let mut edges = [
        first,
        member(d, &pki, "node", "edge-2", Some(&seed), Some(1)),
    ];
    let router = member(d, &pki, "router", "router", Some(&seed), None);
    wait_until("the router sees both edges", 20, || {
        alive(&router) == vec!["edge-1", "edge-2", "router"]
    });
    // Not idempotent (the default), and long enough that several are always running.
    // Deployed on each edge too, so neither is compiling it (seconds in a debug build) when
    // the stop comes: the stop waits for running calls only up to its deadline.
    for n in [&router, &edges[0], &edges[1]] {
        let r = deploy(n, "primes", "primes/primes.wasm", json!({})).await;
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    }
    let c = client();
    let mut before = HashMap::new();
    for _ in 0..40 {
        let (s, placed, body) = call(&c, &router.url, "primes", "3000000").await;
        assert_eq!((s, body.as_str()), (200, "216816\n"));
        *before.entry(placed).or_insert(0) += 1;
    }

    let failures = Arc::new(AtomicU32::new(0));
    let done = Arc::new(AtomicU32::new(0));
    let on_victim_after_stop = Arc::new(AtomicU32::new(0));
    let running = Arc::new(AtomicBool::new(true));
    let stopped = Arc::new(AtomicBool::new(false));
    let victim_name = Arc::new(std::sync::Mutex::new(String::new()));
    let mut callers = Vec::new();
    for _ in 0..6 {
        let (url, failures, done, running, stopped, late, victim) = (
            router.url.clone(),
            failures.clone(),
            done.clone(),
            running.clone(),
            stopped.clone(),
            on_victim_after_stop.clone(),
            victim_name.clone(),
        );
        callers.push(tokio::spawn(async move {
            let c = client();
            while running.load(Ordering::Relaxed) {
                let (s, placed, body) = call(&c, &url, "primes", "3000000").await;
                if s != 200 || body != "216816\n" {
                    eprintln!("failed call: {s} {body}");
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                if stopped.load(Ordering::SeqCst) && placed == *victim.lock().unwrap() {
                    late.fetch_add(1, Ordering::Relaxed);
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Stop the edge running the most calls right now.
    let mut running_now = Vec::new();
    for e in &edges {
        running_now.push(status(&e.url).await["instances_in_use"].as_u64().unwrap());
    }
    let vi = if running_now[0] >= running_now[1] {
        0
    } else {
        1
    };
    let victim = ["edge-1", "edge-2"][vi];
    let in_use = running_now[vi];
    *victim_name.lock().unwrap() = victim.to_string();
    stopped.store(true, Ordering::SeqCst);
    let t = Instant::now();
    let exit = tokio::task::block_in_place(|| edges[vi].terminate());
    let took = t.elapsed();
    assert!(exit.success(), "{victim} exited with {exit}");
    let states = mesh_json(&router)["members"].as_array().unwrap().clone();
    let state = states
        .iter()
        .find(|m| m["id"] == victim)
        .map(|m| m["state"].as_str().unwrap().to_string());
    tokio::time::sleep(Duration::from_secs(2)).await;
    running.store(false, Ordering::Relaxed);
    for c in callers {
        c.await.unwrap();
    }
    eprintln!(
        "stopped {victim} ({before:?} before) with {in_use} call(s) running there: it exited in \
         {took:?}, {} call(s) it ran came back after the signal; {} calls, {} failed",
        on_victim_after_stop.load(Ordering::Relaxed),
        done.load(Ordering::Relaxed),
        failures.load(Ordering::Relaxed)
    );
    assert_eq!(failures.load(Ordering::Relaxed), 0);
    assert!(done.load(Ordering::Relaxed) > 20);
    // The router heard the goodbye before the process was gone, not by its silence.
    assert_eq!(state.as_deref(), Some("left"), "{states:?}");
    let table = run_ok(fogline().args(["--gateway", &router.url, "mesh"]));
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(victim) && l.contains("left")),
        "{table}"
    );
}
