//! The router with real processes: a bridge, two edge nodes and a router on loopback, meshed
//! and talking QUIC with their own certificates. Placement details on every response, the
//! placements log, 404 without contacting nodes, placements moving off a CPU-loaded node,
//! no idempotent request failing when the member taking most calls is killed, a 502 naming
//! the place for a non-idempotent call that lost its place, a 503 when no place is left,
//! placements leaving a slowed node and returning after it recovers, a call whose every
//! place failed going on to a member that joined while it ran, and a call past its patience
//! hedged to a second place while its first, still running it, answers.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// The tests here run one at a time: two meshes sharing two cores would make each other's
/// latencies (and so the prediction errors) noise. (A test that measures nothing still
/// starts a continuum of four processes, which is such a mesh.)
static MEASURING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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
    let _one_at_a_time = MEASURING.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pki = pki(d);
    let (cloud, edges, router) = continuum(d, &pki, "");
    let c = authed(&router.token);

    // Deploy through the router: nodes fetch the module by hash on first use.
    deploy_hello(&router).await;
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
    // Its first call anywhere: no member had run it, so its size was a typical function's,
    // and the record and the table say so.
    let first = &placements(&c, &router.url, 1).await["placements"][0];
    assert_eq!(first["guessed"], true, "{first}");
    let table = run_ok(router.cli().args(["placements", "--limit", "1"]));
    assert!(table.contains("(size guessed"), "{table}");

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
    assert_eq!(last["guessed"], false, "{last}");
    // Learnt from outcomes: the places it used carry their observations. (Whether a fitted
    // model or the analytic estimate answers is the held-out check's call: on a noisy
    // two-core host with sub-millisecond calls the estimate often wins.) A place none of the
    // function's last 64 calls went to starts its model afresh on its next call (it may
    // have recovered or slowed), so what is certain is that each of the last 64 calls is
    // still in its place's window (of 128): a run that used the cloud for its first 185
    // calls and edge-1 after held 1 + 96 + 2 observations, not 300.
    let seen: Vec<u64> = last["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["observations"].as_u64().unwrap())
        .collect();
    assert!(
        seen.iter().sum::<u64>() >= 64,
        "after 300 calls the places used carry their observations: {last}"
    );
    eprintln!("candidates after warm-up: {}", last["candidates"]);
    let err = p["median_prediction_error"].as_f64().unwrap();
    eprintln!(
        "median prediction error after warm-up: {:.1} %",
        err * 100.0
    );
    // How close is a timing figure (the benchmarks and README report it; on this test's
    // two-core host it ran 9–39 % over 30 runs, median 20 %): here only that predictions
    // are of the right magnitude. The median is over every call since the router started,
    // warm-up included: while the router took each call after a function's first for a
    // cold start until the member next reported, it ran 14–203 % and failed here one run in
    // five.
    assert!(
        err.is_finite() && err < 1.0,
        "median prediction error {:.1} %: predictions are not of the right magnitude",
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
    let table = run_ok(router.cli().args(["placements", "--limit", "3"]));
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

    // Kill the member now taking most calls (edge or cloud) while idempotent calls stream
    // in: none fails.
    let favourite = shares(&c, &router.url, 50).await;
    let [edge_1, edge_2] = edges;
    let mut members = vec![("cloud", cloud), ("edge-1", edge_1), ("edge-2", edge_2)];
    let vi = (0..members.len())
        .max_by_key(|i| favourite.get(members[*i].0).copied().unwrap_or(0))
        .unwrap();
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
    let (victim, mut killed) = members.remove(vi);
    killed.kill();
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
    wait_until("the killed member is marked dead", 10, || {
        !alive(&router).contains(&victim.to_string())
    });

    // A non-idempotent call whose place dies under it: 502 naming the place.
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
    // Find where it runs: the member left with an instance in use.
    let mut runs_on = None;
    let t = Instant::now();
    while runs_on.is_none() && t.elapsed() < Duration::from_secs(3) {
        for (i, (_, m)) in members.iter().enumerate() {
            if status(m).await["instances_in_use"].as_u64() == Some(1) {
                runs_on = Some(i);
                break;
            }
        }
        if runs_on.is_none() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let (v2name, mut v2) = members.remove(runs_on.expect("spin-once runs on a live member"));
    v2.kill();
    let (s, msg) = pending.await.unwrap();
    eprintln!("non-idempotent call after its place died: {s} {msg}");
    assert_eq!(s, 502, "{msg}");
    assert!(
        msg.contains(v2name) && msg.contains("not idempotent"),
        "{msg}"
    );

    // Nothing left that can run it: 503 saying so.
    for (_, m) in members.iter_mut() {
        m.kill();
    }
    wait_until("every member is marked dead", 10, || {
        alive(&router) == vec!["router".to_string()]
    });
    let (s, _, msg) = call(&c, &router.url, "hello", "x").await;
    assert_eq!(s, 503, "{msg}");
    assert!(msg.contains("no live place can run \"hello\""), "{msg}");
}

/// A function pinned to the cloud (`--constraint tier==cloud`, as faas-cli says it) runs
/// only there; with the cloud gone it fails at once with 503 naming the unreachable tier,
/// while unpinned functions go on at the edge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_pinned_to_the_cloud_fails_fast_naming_it_when_the_cloud_is_gone() {
    let _one_at_a_time = MEASURING.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pki = pki(d);
    let (mut cloud, _edges, router) = continuum(d, &pki, "");
    run_ok(
        router
            .cli()
            .args(["deploy", "hello", "--wasm"])
            .arg(example("hello/hello.wasm")),
    );
    run_ok(
        router
            .cli()
            .args(["deploy", "pinned", "--constraint", "tier==cloud", "--wasm"])
            .arg(example("hello/hello.wasm")),
    );
    let err = run_err(
        router
            .cli()
            .args(["deploy", "bad", "--constraint", "tier==moon", "--wasm"])
            .arg(example("hello/hello.wasm")),
    );
    assert!(err.contains("tier \"moon\""), "{err}");
    let c = client();
    for _ in 0..20 {
        let (s, on, body) = call(&c, &router.url, "pinned", "x").await;
        assert_eq!((s, on.as_str(), body.as_str()), (200, "cloud", "hello, x"));
    }

    cloud.kill();
    wait_until("the cloud is marked dead", 15, || {
        !alive(&router).contains(&"cloud".to_string())
    });
    let t0 = std::time::Instant::now();
    let (s, _, body) = call(&c, &router.url, "pinned", "x").await;
    eprintln!(
        "pinned call with the cloud gone: {s} in {} ms",
        t0.elapsed().as_millis()
    );
    assert_eq!(s, 503, "{body}");
    assert!(
        body.contains("cloud tier is unreachable") && body.contains("tier==cloud"),
        "{body}"
    );
    let (s, on, _) = call(&c, &router.url, "hello", "edge").await;
    assert_eq!(s, 200);
    assert!(on.starts_with("edge-") || on == "router", "{on}");
}

/// A call whose every listed place failed, with time left, goes to a place that joined
/// meanwhile: here the one cloud of a call pinned to the cloud is killed while the call
/// runs there, after a second cloud joined; the call's answer comes from the second, where
/// before it failed 'on every place tried'.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_whose_places_all_failed_goes_on_to_a_member_that_joined_meanwhile() {
    let _one_at_a_time = MEASURING.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pki = pki(d);
    let mut cloud_1 = member(d, &pki, "bridge", "cloud-1", None, None);
    let seed = mesh_json(&cloud_1)["self"].as_str().unwrap().to_string();
    let router = member(d, &pki, "router", "router", Some(&seed), None);
    wait_until("the router sees cloud-1", 20, || {
        alive(&router) == ["cloud-1", "router"]
    });
    deploy_wait_to_clouds(&router).await;
    // Warm: the call below runs its 8 s at once.
    let c = client();
    let (s, on, body) = call(&c, &router.url, "wait", "1").await;
    assert_eq!((s, on.as_str()), (200, "cloud-1"), "{body}");

    let url = router.url.clone();
    let started = Instant::now();
    let long =
        tokio::spawn(async move { call_attempts(&client(), &url, "wait", "8000 long").await });
    let t0 = Instant::now();
    while status(&cloud_1).await["instances_in_use"].as_u64() < Some(1) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the call did not start at cloud-1 within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cloud_2 = member(d, &pki, "bridge", "cloud-2", Some(&seed), None);
    wait_until("the router sees cloud-2", 20, || {
        alive(&router) == ["cloud-1", "cloud-2", "router"]
    });
    assert!(
        !long.is_finished(),
        "the 8 s call ended before cloud-1 was killed"
    );
    let killed = started.elapsed();
    cloud_1.kill();
    let (s, on, attempts, body) = long.await.unwrap();
    eprintln!(
        "cloud-1 killed {} ms into the call, which answered {s} from {on} after {} ms",
        killed.as_millis(),
        started.elapsed().as_millis()
    );
    let said = logged(d, |l| {
        l.contains("listed places again") || l.contains("WARN")
    });
    assert_eq!(
        (s, on.as_str(), body.trim()),
        (200, "cloud-2", "waited 8000 ms long"),
        "what the members logged:\n{said}"
    );
    assert!(said.contains("listed places again"), "{said}");
    assert_eq!(attempts, "2", "cloud-1, then cloud-2");
    drop(cloud_2);
}

/// Deploys `wait` (each call sleeps as many ms as its input says) through `router`,
/// idempotent, to the cloud tier only.
async fn deploy_wait_to_clouds(router: &NodeProc) {
    let r = deploy(
        router,
        "wait",
        "wait/wait.wasm",
        json!({"idempotent": true, "timeout": "60s", "placement": {"tier": "cloud"}}),
    )
    .await;
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
}

/// Slows a process by stopping it most of the time (SIGSTOP 16 ms, SIGCONT 4 ms) until
/// `running` turns false; leaves it running.
fn slow_down(pid: u32, running: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    use rustix::process::{kill_process, Pid, Signal};
    let pid = Pid::from_raw(pid as i32).unwrap();
    std::thread::spawn(move || {
        while running.load(Ordering::Relaxed) {
            let _ = kill_process(pid, Signal::STOP);
            std::thread::sleep(Duration::from_millis(16));
            let _ = kill_process(pid, Signal::CONT);
            std::thread::sleep(Duration::from_millis(4));
        }
        let _ = kill_process(pid, Signal::CONT);
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn placements_leave_a_slowed_node_and_return_after_it_recovers() {
    let _one_at_a_time = MEASURING.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pki = pki(d);
    // More exploration than the default, so that the return is seen within a test's calls.
    let (cloud, edges, router) = continuum(d, &pki, "[router]\nexplore = 0.2\n");
    let c = authed(&router.token);
    deploy_hello(&router).await;
    let warm = shares(&c, &router.url, 300).await;
    // The place taking most calls (all three run on this host) is slowed: stopped four
    // fifths of the time.
    let places = [
        ("cloud", &cloud),
        ("edge-1", &edges[0]),
        ("edge-2", &edges[1]),
    ];
    let (slowed, proc) = places
        .into_iter()
        .max_by_key(|(n, _)| warm.get(*n).copied().unwrap_or(0))
        .unwrap();
    let before = warm.get(slowed).copied().unwrap_or(0);
    eprintln!("before: {warm:?}; slowing {slowed}");
    let running = Arc::new(AtomicBool::new(true));
    let slower = slow_down(proc.child.id(), running.clone());
    // Within 200 calls, placements leave it: of the next 100, its share is at most 60 %
    // of what it was and at most 30 (a fifth of calls explore, some of them there; 28 of
    // 100 against 162 of 300 before was seen once).
    let first = shares(&c, &router.url, 200).await;
    let then = shares(&c, &router.url, 100).await;
    let on = then.get(slowed).copied().unwrap_or(0);
    eprintln!("slowed: first 200 calls {first:?}, next 100 {then:?}");
    assert!(
        on <= 30 && on * 300 * 5 <= before * 100 * 3,
        "{slowed} took {before} of 300 calls, and {on} of 100 while slowed: {then:?}"
    );
    running.store(false, Ordering::Relaxed);
    slower.join().unwrap();
    // Recovered: within 2,000 calls the router predicts it as fast as the place it chose
    // (within 1.5x + 1 ms: its model, unseen for a while, was explored and restarted) and
    // places calls there again. (The three places are equally fast on one host, so how
    // much it takes back beyond exploration is a coin toss, and not asserted.)
    let mut back = None;
    for round in 0..20 {
        let s = shares(&c, &router.url, 100).await;
        let on = s.get(slowed).copied().unwrap_or(0);
        let last = &placements(&c, &router.url, 1).await["placements"][0];
        let predicted = |place: &str| {
            last["candidates"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["place"] == place)
                .and_then(|c| c["predicted_ms"].as_f64())
        };
        let (mine, chosen) = (
            predicted(slowed),
            predicted(last["chosen"].as_str().unwrap()),
        );
        eprintln!(
            "recovered, round {round}: {s:?}; predicted {mine:?} against the chosen {chosen:?}"
        );
        if let (Some(m), Some(ch)) = (mine, chosen) {
            if on >= 3 && m <= 1.5 * ch + 1.0 {
                back = Some((round + 1) * 100);
                break;
            }
        }
    }
    let back = back.unwrap_or_else(|| {
        panic!("{slowed} was not predicted fast or placed on again within 2,000 calls")
    });
    eprintln!("{slowed} predicted as fast as the chosen place and placed on again within {back} calls after recovering");
}

/// A call that runs far past its prediction is hedged, not abandoned: a copy goes to the
/// next place, and the first place, still running it, answers first. Two clouds run a
/// function whose calls take as long as their input says; after short calls, one of
/// 1.5 s is past its patience (3x its prediction, at least 300 ms more) at its first
/// cloud long before it ends there, and is sent to the other too. Abandoned, it would
/// have been answered by the second, 300 ms or more later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_past_its_patience_is_hedged_and_its_first_place_still_answers() {
    let _one_at_a_time = MEASURING.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pki = pki(d);
    let cloud_1 = member(d, &pki, "bridge", "cloud-1", None, None);
    let seed = mesh_json(&cloud_1)["self"].as_str().unwrap().to_string();
    let cloud_2 = member(d, &pki, "bridge", "cloud-2", Some(&seed), None);
    let router = member(d, &pki, "router", "router", Some(&seed), None);
    wait_until("the router sees both clouds", 20, || {
        alive(&router) == ["cloud-1", "cloud-2", "router"]
    });
    deploy_wait_to_clouds(&router).await;
    let c = authed(&router.token);
    // Short calls until the router lists both clouds for it (a member is a candidate once
    // its report says it can run the function).
    let t0 = Instant::now();
    for i in 0.. {
        let (s, _, body) = call(&c, &router.url, "wait", &format!("1 #{i}")).await;
        assert_eq!(s, 200, "{body}");
        let last = &placements(&c, &router.url, 1).await["placements"][0];
        if i >= 20 && last["candidates"].as_array().map(Vec::len) == Some(2) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the router did not list both clouds within 20 s: {last:#}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (s, on, attempts, body) = call_attempts(&c, &router.url, "wait", "1500 long").await;
    let last = &placements(&c, &router.url, 1).await["placements"][0];
    eprintln!("the long call: {s} from {on} after {attempts} attempts; its decision: {last:#}");
    assert_eq!((s, body.trim()), (200, "waited 1500 ms long"));
    assert_eq!(attempts, "2", "hedged once: {last:#}");
    assert_eq!(
        last["ran_on"], last["chosen"],
        "the first place answered: {last:#}"
    );
    assert_eq!(on, last["chosen"].as_str().unwrap());
    drop((cloud_1, cloud_2));
}
