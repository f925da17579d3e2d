//! Durability of async calls: SIGKILL the node while 1000 calls are being accepted and run,
//! restart it on the same data folder, and check that every call it acknowledged completes.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_way_loses_no_accepted_call() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = NodeProc::up(dir.path());
    assert_eq!(
        deploy(
            &node,
            "primes",
            "primes/primes.wasm",
            json!({"timeout": "10s"})
        )
        .await
        .status(),
        201
    );

    const CALLS: usize = 1000;
    let accepted = Arc::new(Mutex::new(BTreeSet::new()));
    let acks = Arc::new(AtomicUsize::new(0));
    let next = Arc::new(AtomicUsize::new(0));
    let c = client();
    let mut submitters = Vec::new();
    for _ in 0..16 {
        let (c, url, accepted, acks, next) = (
            c.clone(),
            node.url.clone(),
            accepted.clone(),
            acks.clone(),
            next.clone(),
        );
        submitters.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::SeqCst) < CALLS {
                let Ok(r) = c
                    .post(format!("{url}/async-function/primes"))
                    .body("1000000")
                    .send()
                    .await
                else {
                    return; // the node is gone
                };
                if r.status() == 202 {
                    let id = r.headers()["x-call-id"].to_str().unwrap().to_string();
                    accepted.lock().unwrap().insert(id);
                    acks.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }
    // Kill it part-way: some calls acknowledged and done, some acknowledged and queued,
    // some still being submitted.
    let t = Instant::now();
    while acks.load(Ordering::SeqCst) < CALLS / 2 {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "submissions too slow"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    node.kill();
    for s in submitters {
        s.await.unwrap();
    }
    let accepted: Vec<String> = accepted.lock().unwrap().iter().cloned().collect();
    assert!(accepted.len() >= CALLS / 2);

    let node = NodeProc::up(dir.path());
    let stderr = std::fs::read_to_string(dir.path().join("node.stderr")).unwrap();
    let resumed: usize = stderr
        .lines()
        .find_map(|l| {
            l.split("resuming ")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .and_then(|n| n.parse().ok())
        })
        .expect("the restarted node resumes the calls left queued by the kill");
    assert!(resumed > 0);

    let c = authed(&node.token);
    let deadline = Instant::now() + Duration::from_secs(240);
    for id in &accepted {
        loop {
            let r = c
                .get(format!("{}/v1/calls/{id}", node.url))
                .send()
                .await
                .unwrap();
            match r.status().as_u16() {
                200 => {
                    assert_eq!(r.text().await.unwrap().trim(), "78498", "call {id}");
                    break;
                }
                202 => {
                    assert!(
                        Instant::now() < deadline,
                        "call {id} still queued after 240 s"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => panic!(
                    "call {id} accepted before the kill is now {other}: {}",
                    r.text().await.unwrap()
                ),
            }
        }
    }
    eprintln!(
        "{} calls acknowledged before SIGKILL, {resumed} resumed after restart, all completed",
        accepted.len()
    );
}
