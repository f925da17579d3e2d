//! Offline operation: an edge site (a router and an edge node) cut from its cloud by a real
//! link going down (the cloud runs in a network namespace of its own, joined to the host
//! by a veth pair). Sync calls only the cloud can run fail fast naming it; async calls for
//! it wait in the site's durable outbox (shown by `fogline status` and `/metrics`) and are
//! handed on in submission order, each key run once, every callback told, once the link
//! is back, with no operator action; calls that waited follow the first as it is handed
//! on. The link tests need root and iproute2 (skipped with a message otherwise; required
//! under CI).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::netns::{rebind, Link};
use common::*;

/// Receives callbacks: (X-Call-Id, body) in arrival order.
type Told = Arc<Mutex<Vec<(String, String)>>>;

async fn receiver(addr: &str) -> (String, Told) {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind(format!("{addr}:0"))
        .await
        .unwrap();
    let base = format!("http://{}/", listener.local_addr().unwrap());
    let told: Told = Arc::default();
    let t = told.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let t = t.clone();
            tokio::spawn(async move {
                let Some((head, body)) = read_request(&mut s).await else {
                    return;
                };
                let id = header_of(&head, "x-call-id").to_string();
                let body = String::from_utf8_lossy(&body).into_owned();
                t.lock().unwrap().push((id, body));
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
            });
        }
    });
    (base, told)
}

fn metric(text: &str, name: &str) -> f64 {
    metric_value(text, name).unwrap_or(-1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_site_keeps_calls_for_the_cloud_and_delivers_them_in_order_when_it_heals() {
    let link = match Link::new("off", 252) {
        Ok(l) => l,
        Err(why) => {
            skip_without("a network namespace for the link-cut test", &why);
            return;
        }
    };
    const CALLS: usize = 1000;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pki = pki(d);
    let (hook, told) = receiver(&link.host_ip).await;
    let cloud = NodeProc::spawn_cmd(
        rebind(
            member_command(d, &pki, "bridge", "cloud", None, None, ""),
            &link.ns_ip,
            Some(&link.ns),
        ),
        d.join("cloud"),
        d,
    );
    let seed = mesh_json(&cloud)["self"].as_str().unwrap().to_string();
    assert!(seed.contains(&link.ns_ip), "{seed}");
    let _edge = NodeProc::spawn_cmd(
        rebind(
            member_command(d, &pki, "node", "edge-1", Some(&seed), None, ""),
            &link.host_ip,
            None,
        ),
        d.join("edge-1"),
        d,
    );
    // One async worker: the site hands calls on one at a time, so the order they ran in
    // is the order their results were stored in.
    let router = NodeProc::spawn_cmd(
        rebind(
            member_command(
                d,
                &pki,
                "router",
                "router",
                Some(&seed),
                None,
                &format!(
                    "[async]\nworkers = 1\nretry_base = \"100ms\"\ncallback_allow = [\"{hook}\"]\n"
                ),
            ),
            &link.host_ip,
            None,
        ),
        d.join("router"),
        d,
    );
    wait_until("the router sees every member", 20, || {
        alive(&router) == ["cloud", "edge-1", "router"]
    });
    run_ok(
        router
            .cli()
            .args(["deploy", "pinned", "--constraint", "tier==cloud", "--wasm"])
            .arg(example("hello/hello.wasm")),
    );
    run_ok(
        router
            .cli()
            .args(["deploy", "hello", "--wasm"])
            .arg(example("hello/hello.wasm")),
    );
    let c = client();
    let (s, on, body) = call(&c, &router.url, "pinned", "up").await;
    assert_eq!((s, on.as_str(), body.as_str()), (200, "cloud", "hello, up"));
    let before = calls(&cloud, "pinned", 200).await;

    // Cut the link. A sync call sent to the cloud just after ends by the time the mesh
    // finds the cloud dead, naming it, not when its connection times out (6 s).
    link.set(false);
    let cut_at = Instant::now();
    let caught = {
        let (c, url) = (c.clone(), router.url.clone());
        tokio::spawn(async move {
            let r = call(&c, &url, "pinned", "cut").await;
            (r, cut_at.elapsed())
        })
    };
    // Submitted at once: every call is durable on the router before its 202.
    let rc = authed(&router.token);
    let ids = submit_keyed(&rc, &router, &hook, CALLS).await;
    eprintln!(
        "{CALLS} async calls accepted in {} ms with the link cut",
        cut_at.elapsed().as_millis()
    );
    // Sync calls that only the cloud can run fail fast naming it, once the mesh sees the
    // cloud gone; calls the site can run go on.
    wait_until("the router marks the cloud dead", 20, || {
        !alive(&router).contains(&"cloud".to_string())
    });
    eprintln!(
        "the cloud marked dead {} ms after the cut",
        cut_at.elapsed().as_millis()
    );
    let ((s, _, body), took) = caught.await.unwrap();
    eprintln!("a call in flight to the cloud at the cut ended after {took:?}: {s} {body}");
    // Ended by the mesh's verdict, or by its connection dropped first (the router drops a
    // connection whose calls it abandons): either way 502 naming the cloud tier, soon.
    assert_eq!(s, 502, "{body}");
    assert!(body.contains("on cloud (cloud tier"), "{body}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    let t = Instant::now();
    let (s, _, body) = call(&c, &router.url, "pinned", "x").await;
    assert_eq!(s, 503, "{body}");
    assert!(body.contains("cloud tier is unreachable"), "{body}");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    let (s, on, _) = call(&c, &router.url, "hello", "edge").await;
    assert_eq!(s, 200);
    assert_ne!(on, "cloud");

    // The outbox holds them (the call that was running at the cut waits for its own
    // timeout first, then finds no place), and says so.
    let t = Instant::now();
    let st = loop {
        let st = status(&router).await;
        if st["outbox"][0]["calls"].as_u64() == Some(CALLS as u64)
            && st["outbox"][0]["oldest_s"].as_u64() >= Some(2)
        {
            break st;
        }
        if t.elapsed() > Duration::from_secs(20) {
            let (_, dlq) = get(&rc, format!("{}/v1/dlq", router.url)).await;
            let (_, first) = get(&rc, format!("{}/v1/calls/{}", router.url, ids[0])).await;
            panic!(
                "the outbox does not hold the {CALLS} calls: {st}\ndead: {dlq}\nthe first: {first}"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let outbox = st["outbox"].as_array().unwrap();
    assert_eq!(outbox.len(), 1, "{st}");
    assert_eq!(outbox[0]["function"], "pinned");
    assert!(
        outbox[0]["reason"]
            .as_str()
            .unwrap()
            .contains("cloud tier is unreachable"),
        "{st}"
    );
    let printed = run_ok(router.cli().arg("status"));
    assert!(
        printed.contains(&format!("outbox      {CALLS} call(s) waiting for a place")),
        "{printed}"
    );
    let (_, m) = get(&rc, format!("{}/metrics", router.url)).await;
    assert_eq!(metric(&m, "fogline_outbox_calls"), CALLS as f64, "{m}");
    assert!(metric(&m, "fogline_outbox_oldest_seconds") >= 2.0, "{m}");
    // Waiting is not failing: nothing dead-lettered, no callback yet.
    assert_eq!(metric(&m, "fogline_async_dead"), 0.0, "{m}");
    assert!(told.lock().unwrap().is_empty());

    // Heal after the cut has lasted 20 s.
    tokio::time::sleep(Duration::from_secs(20).saturating_sub(cut_at.elapsed())).await;
    link.set(true);
    let healed = Instant::now();
    let t0 = Instant::now();
    while told.lock().unwrap().len() < CALLS {
        assert!(
            t0.elapsed() < Duration::from_secs(90),
            "only {} of {CALLS} callbacks within 90 s of healing",
            told.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "{CALLS} callbacks told {} ms after healing",
        healed.elapsed().as_millis()
    );
    // Every call's callback, each once, with its own result.
    let told = told.lock().unwrap().clone();
    let mut by_id = std::collections::HashMap::new();
    for (id, body) in &told {
        assert!(
            by_id.insert(id.clone(), body.clone()).is_none(),
            "{id} told twice"
        );
    }
    for (i, id) in ids.iter().enumerate() {
        let body = by_id
            .get(id)
            .unwrap_or_else(|| panic!("no callback for call {i}"));
        assert!(body.contains(&format!("hello, {i}")), "{body}");
    }
    // Each key ran once at the cloud.
    assert_eq!(calls(&cloud, "pinned", 200).await - before, CALLS as u64);
    // In submission order: the results' finish times never go backwards.
    assert_in_order(&rc, &router, &ids).await;
    let (_, m) = get(&rc, format!("{}/metrics", router.url)).await;
    assert_eq!(metric(&m, "fogline_outbox_calls"), 0.0, "{m}");
    // A key submitted again is the same call: not run again.
    let r = rc
        .post(format!("{}/async-function/pinned", router.url))
        .header("x-idempotency-key", "k7")
        .body("7")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(r.headers()["x-call-id"].to_str().unwrap(), ids[7]);
    assert_eq!(calls(&cloud, "pinned", 200).await - before, CALLS as u64);
}

/// The router is SIGKILLed with 1,000 keyed calls for the cloud accepted and about half
/// handed on; restarted on its data, it hands on the rest, in order, and the cloud runs
/// each key once (a hand-off whose answer the kill lost is answered from the cloud's
/// keyed store, not run again). Every callback arrives (a repeat is possible: the
/// receiver drops duplicates by `X-Call-Id`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_killed_mid_hand_off_loses_nothing_and_runs_each_key_once() {
    const CALLS: usize = 1000;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pki = pki(d);
    let (hook, told) = receiver("127.0.0.1").await;
    let cloud = member(d, &pki, "bridge", "cloud", None, None);
    let seed = mesh_json(&cloud)["self"].as_str().unwrap().to_string();
    let router_cfg =
        format!("[async]\nworkers = 1\nretry_base = \"100ms\"\ncallback_allow = [\"{hook}\"]\n");
    let start_router = || router_on(d, &pki, &seed, &router_cfg);
    let mut router = start_router();
    wait_until("the router sees the cloud", 20, || {
        alive(&router) == ["cloud", "router"]
    });
    run_ok(
        router
            .cli()
            .args(["deploy", "pinned", "--constraint", "tier==cloud", "--wasm"])
            .arg(example("hello/hello.wasm")),
    );
    let c = client();
    let (s, on, _) = call(&c, &router.url, "pinned", "up").await;
    assert_eq!((s, on.as_str()), (200, "cloud"));
    let before = calls(&cloud, "pinned", 200).await;

    let rc = authed(&router.token);
    let ids = submit_keyed(&rc, &router, &hook, CALLS).await;
    // Kill it once about half are done.
    let t = Instant::now();
    loop {
        let queued = status(&router).await["async_queued"].as_u64().unwrap();
        if queued <= CALLS as u64 / 2 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "{queued} still queued"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    router.kill();
    let ran_at_kill = calls(&cloud, "pinned", 200).await - before;
    eprintln!("router killed with {ran_at_kill} of {CALLS} run at the cloud");
    assert!(
        ran_at_kill < CALLS as u64,
        "the kill came after every call ran"
    );

    let router = start_router();
    let t0 = Instant::now();
    loop {
        let got: std::collections::HashSet<String> = told
            .lock()
            .unwrap()
            .iter()
            .map(|(id, _)| id.clone())
            .collect();
        if ids.iter().all(|id| got.contains(id)) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(90),
            "{} of {CALLS} calls' callbacks within 90 s of the restart",
            ids.iter().filter(|id| got.contains(*id)).count()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let told = told.lock().unwrap().clone();
    let mut by_id: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    for (id, body) in &told {
        if let Some(earlier) = by_id.insert(id.clone(), body.clone()) {
            assert_eq!(&earlier, body, "a repeated callback says the same");
        }
    }
    for (i, id) in ids.iter().enumerate() {
        assert!(by_id[id].contains(&format!("hello, {i}")), "{}", by_id[id]);
    }
    eprintln!(
        "{} callbacks for {CALLS} calls ({} repeated)",
        told.len(),
        told.len() - CALLS
    );
    assert_eq!(
        calls(&cloud, "pinned", 200).await - before,
        CALLS as u64,
        "each key ran once at the cloud"
    );
    // In submission order, across the restart.
    assert_in_order(&rc, &router, &ids).await;
}

/// Two cloud members, `cloud-a` and `cloud-b` joining it, and the address to join them at.
fn two_clouds(d: &std::path::Path, pki: &std::path::Path) -> (NodeProc, NodeProc, String) {
    let cloud_a = member(d, pki, "bridge", "cloud-a", None, None);
    let seed = mesh_json(&cloud_a)["self"].as_str().unwrap().to_string();
    let cloud_b = member(d, pki, "bridge", "cloud-b", Some(&seed), None);
    (cloud_a, cloud_b, seed)
}

/// A router named `router` joining at `seed`, on its data folder in `d` (so a restart
/// finds its queue).
fn router_on(d: &std::path::Path, pki: &std::path::Path, seed: &str, cfg: &str) -> NodeProc {
    NodeProc::spawn_cmd(
        member_command(d, pki, "router", "router", Some(seed), None, cfg),
        d.join("router"),
        d,
    )
}

/// Submits `n` async calls of `pinned` (body and key `k{i}` from their index, a callback
/// to `hook`); their ids.
async fn submit_keyed(
    rc: &reqwest::Client,
    router: &NodeProc,
    hook: &str,
    n: usize,
) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let r = rc
            .post(format!("{}/async-function/pinned", router.url))
            .header("x-idempotency-key", format!("k{i}"))
            .header("x-callback-url", hook)
            .body(format!("{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
        ids.push(r.headers()["x-call-id"].to_str().unwrap().to_string());
    }
    ids
}

/// Checks that the results of calls `ids` (in submission order) finished in that order.
async fn assert_in_order(rc: &reqwest::Client, router: &NodeProc, ids: &[String]) {
    let mut last = 0u64;
    for (i, id) in ids.iter().enumerate() {
        let r = rc
            .get(format!("{}/v1/calls/{id}", router.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let finished: u64 = r.headers()["x-fogline-finished-ms"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            finished >= last,
            "call {i} finished at {finished}, before call {} ({last})",
            i.saturating_sub(1)
        );
        last = finished;
    }
}

/// Which of `members` is running a call now (its sandbox instances in use).
async fn running_on<'a>(members: &'a [(&'a str, &'a NodeProc)]) -> Option<&'a str> {
    for (name, m) in members {
        if status(m).await["instances_in_use"].as_u64().unwrap_or(0) > 0 {
            return Some(name);
        }
    }
    None
}

/// The member running an async call is SIGKILLed mid-call: the call completes on the
/// other member of its tier, once. With a key on a function that is not idempotent (the
/// executing member's keyed store makes a repeat safe), and without a key on an
/// idempotent function (at least once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_whose_member_is_killed_mid_run_completes_on_another() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pki = pki(d);
    let (cloud_a, cloud_b, seed) = two_clouds(d, &pki);
    let router = router_on(d, &pki, &seed, "[async]\nretry_base = \"100ms\"\n");
    wait_until("the router sees both clouds", 20, || {
        alive(&router) == ["cloud-a", "cloud-b", "router"]
    });
    for (name, extra) in [("once", None), ("again", Some("--idempotent"))] {
        let mut cmd = router.cli();
        cmd.args([
            "deploy",
            name,
            "--constraint",
            "tier==cloud",
            "--timeout",
            "20s",
        ])
        .arg("--wasm")
        .arg(example("wait/wait.wasm"));
        if let Some(e) = extra {
            cmd.arg(e);
        }
        run_ok(&mut cmd);
    }
    let rc = authed(&router.token);
    let mut clouds = vec![("cloud-a", cloud_a), ("cloud-b", cloud_b)];
    for (function, key) in [("once", Some("order-1")), ("again", None)] {
        let mut rb = rc
            .post(format!("{}/async-function/{function}", router.url))
            .body("1500");
        if let Some(k) = key {
            rb = rb.header("x-idempotency-key", k);
        }
        let r = rb.send().await.unwrap();
        assert_eq!(r.status(), 202);
        let id = r.headers()["x-call-id"].to_str().unwrap().to_string();
        // Kill the member running it.
        let t = Instant::now();
        let victim = loop {
            let view: Vec<(&str, &NodeProc)> = clouds.iter().map(|(n, p)| (*n, p)).collect();
            if let Some(v) = running_on(&view).await {
                break v.to_string();
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "{function} never ran"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let i = clouds.iter().position(|(n, _)| *n == victim).unwrap();
        let (_, mut killed) = clouds.remove(i);
        killed.kill();
        eprintln!("{function}: killed {victim} mid-call");
        // The call completes on the other.
        let (s, body) = async_result(&rc, &router, &id).await;
        assert_eq!((s, body.as_str()), (200, "waited 1500 ms\n"), "{function}");
        let survivor = &clouds[0].1;
        let (_, m) = get(
            &authed(&survivor.token),
            format!("{}/metrics", survivor.url),
        )
        .await;
        assert!(
            m.contains(&format!(
                "gateway_function_invocation_total{{function_name=\"{function}\",code=\"200\"}} 1\n"
            )),
            "{function} ran once on {}: {m}",
            clouds[0].0
        );
        // The next call needs both again: restart the killed member on its data.
        let via = mesh_json(survivor)["self"].as_str().unwrap().to_string();
        let restarted = member_with(d, &pki, "bridge", &victim, Some(&via), None, "");
        clouds.push((
            if victim == "cloud-a" {
                "cloud-a"
            } else {
                "cloud-b"
            },
            restarted,
        ));
        wait_until("the router sees both clouds again", 30, || {
            alive(&router) == ["cloud-a", "cloud-b", "router"]
        });
    }
}

/// The router is SIGKILLed while members run the async calls it handed them (without keys,
/// of a function that is not idempotent). Restarted, it sends each call back to the member
/// it noted before the hand-off, which answers with the answer it kept by the call's id
/// (waiting for the run still going): every call completes, and each ran once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_killed_while_members_run_its_calls_gets_their_answers_without_a_second_run() {
    const CALLS: usize = 4;
    // Each call's run: long enough that the four overlap however far apart they start (a
    // cold member compiles the module first, 12 s on a debug build with both cores busy;
    // in one CI run they did not all overlap with 2.5 s runs).
    const RUN_MS: u64 = 10_000;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pki = pki(d);
    let (cloud_a, cloud_b, seed) = two_clouds(d, &pki);
    let router_cfg = "[async]\nworkers = 4\nretry_base = \"100ms\"\n";
    let start_router = || router_on(d, &pki, &seed, router_cfg);
    let mut router = start_router();
    wait_until("the router sees both clouds", 20, || {
        alive(&router) == ["cloud-a", "cloud-b", "router"]
    });
    run_ok(
        router
            .cli()
            .args(["deploy", "once", "--constraint", "tier==cloud"])
            .args(["--timeout", "20s", "--wasm"])
            .arg(example("wait/wait.wasm")),
    );
    let rc = authed(&router.token);
    let mut ids = Vec::new();
    for i in 0..CALLS {
        let r = rc
            .post(format!("{}/async-function/once", router.url))
            .body(format!("{RUN_MS} #{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        ids.push(r.headers()["x-call-id"].to_str().unwrap().to_string());
    }
    let clouds = [&cloud_a, &cloud_b];
    let t = Instant::now();
    // How many ran on each cloud, each time that changed: the failure says how far it got.
    let mut seen: Vec<(Duration, Vec<u64>)> = Vec::new();
    loop {
        let mut now = Vec::new();
        for c in clouds {
            now.push(status(c).await["instances_in_use"].as_u64().unwrap_or(0));
        }
        if now.iter().sum::<u64>() == CALLS as u64 {
            break;
        }
        if seen.last().is_none_or(|(_, last)| *last != now) {
            seen.push((t.elapsed(), now));
        }
        // A bound on a hang, not a figure.
        if t.elapsed() > Duration::from_secs(90) {
            panic!(
                "the {CALLS} calls never all ran at once in 90 s; running on [cloud-a, cloud-b] \
                 over time: {seen:?}; the nodes' log about them:\n{}",
                logged(d, |l| l.contains("once") || l.contains("async call"))
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    router.kill();
    let router = start_router();
    let rc = authed(&router.token);
    for (i, id) in ids.iter().enumerate() {
        let (s, body) = async_result(&rc, &router, id).await;
        assert_eq!((s, body), (200, format!("waited {RUN_MS} ms #{i}\n")));
    }
    let (mut runs, mut replays) = (0, 0.0);
    for c in clouds {
        runs += calls(c, "once", 200).await;
        replays += metric(&metrics(c).await, "fogline_keyed_replays_total");
    }
    assert_eq!(runs, CALLS as u64, "each call ran once across the crash");
    // Each answered again from the member it was handed to before the crash.
    assert_eq!(replays, CALLS as f64);
}

/// Async calls that waited for a place (pinned to the cloud, no cloud yet) go on together
/// once a place comes: the rest follow as soon as the first is handed to the cloud, not
/// after its run there (before, the first ran 3 s alone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_waiting_for_a_place_follow_the_first_as_it_is_handed_on() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pki = pki(d);
    let router = member_with(
        d,
        &pki,
        "router",
        "router",
        None,
        None,
        "[async]\nworkers = 4\nretry_base = \"100ms\"\n",
    );
    let r = deploy(
        &router,
        "wait",
        "wait/wait.wasm",
        serde_json::json!({"idempotent": true, "timeout": "30s", "placement": {"tier": "cloud"}}),
    )
    .await;
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let rc = authed(&router.token);
    let mut ids = Vec::new();
    for i in 0..4 {
        let r = rc
            .post(format!("{}/async-function/wait", router.url))
            .body(format!("3000 #{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
        ids.push(r.headers()["x-call-id"].to_str().unwrap().to_string());
    }
    let t0 = Instant::now();
    while status(&router).await["outbox"][0]["calls"].as_u64() != Some(4) {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the outbox does not hold the 4 calls: {}",
            status(&router).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seed = mesh_json(&router)["self"].as_str().unwrap().to_string();
    let cloud = member(d, &pki, "bridge", "cloud", Some(&seed), None);
    // Two of them run at the cloud at once while the first has no result yet.
    let t0 = Instant::now();
    loop {
        let running = status(&cloud).await["instances_in_use"]
            .as_u64()
            .unwrap_or(0);
        if running >= 2 {
            let (s, body) = get(&rc, format!("{}/v1/calls/{}", router.url, ids[0])).await;
            assert_eq!(
                s, 202,
                "the first call ended before a second started: {body}"
            );
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(40),
            "never two calls at the cloud at once; what the members logged:\n{}",
            logged(d, |l| l.contains("WARN") || l.contains("wait"))
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (i, id) in ids.iter().enumerate() {
        let (s, body) = async_result(&rc, &router, id).await;
        assert_eq!(
            (s, body.trim()),
            (200, format!("waited 3000 ms #{i}").as_str())
        );
    }
}
