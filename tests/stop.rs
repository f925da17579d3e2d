//! Stopping a node with real processes: an edge node stopped with SIGTERM under a stream
//! of calls that are not idempotent finishes what it took, and the router loses none.
//! (Its own binary: run beside the router tests, its CPU-heavy callers skewed their
//! timings.)

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

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
        running_now.push(status(e).await["instances_in_use"].as_u64().unwrap());
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
    let table =
        run_ok(fogline().args(["--gateway", &router.url, "--token", &router.token, "mesh"]));
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(victim) && l.contains("left")),
        "{table}"
    );
}
