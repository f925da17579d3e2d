//! Delivering async calls: retries with backoff until max attempts or the deadline, the
//! dead-letter queue (every attempt's reason; replay, drop) over HTTP and `fogline dlq`,
//! and idempotency keys (one call per key, across a SIGKILL and restart). Real processes.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// A node whose async calls get 3 attempts, 50 ms apart at first, and whose callbacks
/// (to `allow`) are retried for 1 s.
fn node_with(dir: &std::path::Path, allow: &str, extra: &str) -> NodeProc {
    let cfg = dir.join("n.toml");
    std::fs::write(
        &cfg,
        format!(
            "version = 1\n[async]\nmax_attempts = 3\nretry_base = \"50ms\"\nretry_max = \"200ms\"\ncallback_for = \"1s\"\ncallback_allow = [\"{allow}\"]\n{extra}"
        ),
    )
    .unwrap();
    NodeProc::node(dir, &cfg)
}

fn node(dir: &std::path::Path) -> NodeProc {
    node_with(dir, "http://127.0.0.1:9/", "")
}

type Codes = std::sync::Arc<std::sync::Mutex<Vec<u16>>>;

/// A callback receiver: answers each delivery with the next of `codes` (the last one
/// thereafter; the test may change them) and sends the `X-Call-Id` and status of each.
async fn receiver(codes: Codes) -> (String, tokio::sync::mpsc::UnboundedReceiver<(String, u16)>) {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let (head, _) = read_request(&mut s)
                .await
                .expect("the delivery ended early");
            let code = {
                let mut c = codes.lock().unwrap();
                if c.len() > 1 {
                    c.remove(0)
                } else {
                    c[0]
                }
            };
            let id = header_of(&head, "x-call-id").to_string();
            s.write_all(
                format!("HTTP/1.1 {code} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .unwrap();
            let _ = tx.send((id, code));
        }
    });
    (base, rx)
}

async fn submit(
    c: &reqwest::Client,
    node: &NodeProc,
    f: &str,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut rb = c.post(format!("{}/async-function/{f}", node.url)).body("x");
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    rb.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_call_is_retried_then_dead_lettered_with_each_reason_and_replays() {
    let dir = tempfile::tempdir().unwrap();
    // One call held per namespace (queued or dead), to see the bound refuse.
    let node = node_with(dir.path(), "http://127.0.0.1:9/", "max_per_namespace = 1\n");
    let c = authed(&node.token);
    assert_eq!(
        deploy(&node, "flaky", "misbehave/fail.wasm", json!({}))
            .await
            .status(),
        201
    );

    let r = submit(&c, &node, "flaky", &[]).await;
    assert_eq!(r.status(), 202);
    let id = r.headers()["x-call-id"].to_str().unwrap().to_string();
    let (s, body) = async_result(&c, &node, &id).await;
    assert_eq!(s, 500, "{body}");
    assert!(body.contains("gave up after 3 attempts"), "{body}");

    // The dead-letter queue has it, with each attempt's reason.
    let (s, list) = get(&c, format!("{}/v1/dlq", node.url)).await;
    assert_eq!(s, 200);
    let list: Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    let dead = &list[0];
    assert_eq!(dead["id"], id.as_str());
    assert_eq!(dead["function"], "flaky");
    let attempts = dead["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 3, "{dead}");
    for a in attempts {
        assert_eq!(a["status"], 500);
        let why = a["reason"].as_str().unwrap();
        assert!(
            why.contains("exited with status 3") && why.contains("bad input"),
            "{why}"
        );
    }
    // Backoff: the second attempt came at least half the base (25 ms) after the first.
    let at: Vec<u64> = attempts
        .iter()
        .map(|a| a["at_ms"].as_u64().unwrap())
        .collect();
    assert!(at[1] >= at[0] + 25 && at[2] >= at[1] + 50, "{at:?}");
    // Counted once the move is on disk (just after the result is readable).
    let t = Instant::now();
    let mut m = metrics(&node).await;
    while !m.contains("fogline_async_dead_total 1") {
        assert!(t.elapsed() < Duration::from_secs(10), "{m}");
        tokio::time::sleep(Duration::from_millis(20)).await;
        m = metrics(&node).await;
    }
    for line in ["fogline_async_retries_total 2", "fogline_async_dead 1"] {
        assert!(m.contains(line), "{line} in\n{m}");
    }
    let ls = run_ok(node.cli().args(["dlq", "ls"]));
    assert!(
        ls.contains(&id) && ls.contains("gave up after 3 attempts"),
        "{ls}"
    );
    let show = run_ok(node.cli().args(["dlq", "show", &id]));
    assert_eq!(show.matches("exited with status 3").count(), 3, "{show}");
    assert!(show.contains("attempt  3"), "{show}");

    // Fixed (the function redeployed), the call replays under its id and succeeds.
    assert_eq!(
        deploy(&node, "flaky", "hello/hello.wasm", json!({}))
            .await
            .status(),
        200
    );
    let out = run_ok(node.cli().args(["dlq", "replay", &id]));
    assert!(out.contains("queued again"), "{out}");
    let (s, body) = async_result(&c, &node, &id).await;
    assert_eq!(s, 200, "{body}");
    let (s, list) = get(&c, format!("{}/v1/dlq", node.url)).await;
    assert_eq!((s, list.as_str()), (200, "[]"));
    let err = run_err(node.cli().args(["dlq", "replay", &id]));
    assert!(err.contains("404") && err.contains("no call"), "{err}");

    // A deadline shorter than the next wait gives the call up early; drop removes it.
    assert_eq!(
        deploy(&node, "broken", "misbehave/fail.wasm", json!({}))
            .await
            .status(),
        201
    );
    let r = submit(&c, &node, "broken", &[("x-fogline-deadline", "10ms")]).await;
    assert_eq!(r.status(), 202);
    let id = r.headers()["x-call-id"].to_str().unwrap().to_string();
    let (s, body) = async_result(&c, &node, &id).await;
    assert!(body.contains("deadline"), "{s} {body}");
    let (_, d) = get(&c, format!("{}/v1/dlq/{id}", node.url)).await;
    let d: Value = serde_json::from_str(&d).unwrap();
    assert!(d["reason"].as_str().unwrap().contains("deadline"), "{d}");
    assert!(d["attempts"].as_array().unwrap().len() <= 1, "{d}");
    // The namespace holds one call (dead): the next submission is refused, saying why;
    // nothing held is dropped to make room.
    let r = submit(&c, &node, "flaky", &[]).await;
    assert_eq!(r.status(), 429);
    let msg = r.text().await.unwrap();
    assert!(
        msg.contains("max_per_namespace") && msg.contains("openfaas-fn"),
        "{msg}"
    );
    let out = run_ok(node.cli().args(["dlq", "drop", &id]));
    assert!(out.contains("dropped"), "{out}");
    let (s, _) = get(&c, format!("{}/v1/dlq/{id}", node.url)).await;
    assert_eq!(s, 404);
    let r = submit(&c, &node, "flaky", &[]).await;
    assert_eq!(r.status(), 202, "room again once the dead call is dropped");

    // Bad headers are refused, naming the header.
    for (h, v, why) in [
        ("x-fogline-deadline", "soon", "X-Fogline-Deadline"),
        ("x-fogline-deadline", "90d", "30 days"),
        ("x-idempotency-key", "has space", "X-Idempotency-Key"),
    ] {
        let r = submit(&c, &node, "flaky", &[(h, v)]).await;
        assert_eq!(r.status(), 400, "{h}: {v}");
        let msg = r.text().await.unwrap();
        assert!(msg.contains(why), "{h}: {v}: {msg}");
    }
    let err = run_err(node.cli().args(["dlq", "show", "nope"]));
    assert!(err.contains("32 hex digits"), "{err}");
    // Reading the queue needs a token.
    let (s, _) = get(&client(), format!("{}/v1/dlq", node.url)).await;
    assert_eq!(s, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_runs_its_call_once_even_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = node(dir.path());
    let c = authed(&node.token);
    assert_eq!(
        deploy(&node, "hello", "hello/hello.wasm", json!({}))
            .await
            .status(),
        201
    );
    assert_eq!(
        deploy(&node, "other", "hello/hello.wasm", json!({}))
            .await
            .status(),
        201
    );

    // Eight submissions with one key at once: one call.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (c, url) = (c.clone(), node.url.clone());
        tasks.push(tokio::spawn(async move {
            let r = c
                .post(format!("{url}/async-function/hello"))
                .header("x-idempotency-key", "order-17")
                .body("x")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 202);
            let replay = r.headers().get("x-idempotent-replay").is_some();
            (
                r.headers()["x-call-id"].to_str().unwrap().to_string(),
                replay,
            )
        }));
    }
    let mut ids = Vec::new();
    let mut replays = 0;
    for t in tasks {
        let (id, replay) = t.await.unwrap();
        ids.push(id);
        replays += usize::from(replay);
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(replays, 7);
    let id = ids.remove(0);
    assert_eq!(async_result(&c, &node, &id).await.0, 200);
    // Another key, or the same key for another function, is another call.
    let r = submit(&c, &node, "hello", &[("x-idempotency-key", "order-18")]).await;
    let second = r.headers()["x-call-id"].to_str().unwrap().to_string();
    assert_ne!(second, id);
    let r = submit(&c, &node, "other", &[("x-idempotency-key", "order-17")]).await;
    assert_ne!(r.headers()["x-call-id"].to_str().unwrap(), id);
    assert_eq!(async_result(&c, &node, &second).await.0, 200);
    let (_, st) = get(&c, format!("{}/system/function/hello", node.url)).await;
    let st: Value = serde_json::from_str(&st).unwrap();
    assert_eq!(st["invocationCount"], 2, "one run per key: {st}");
    assert!(metrics(&node)
        .await
        .contains("fogline_async_deduplicated_total 7"));

    // The key is durable: after a SIGKILL and restart it still names its call. (A call
    // leaves the queue's count once its result is on disk.)
    let t = Instant::now();
    while !metrics(&node).await.contains("fogline_async_queued 0") {
        assert!(t.elapsed() < Duration::from_secs(20), "queue not drained");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    node.kill();
    let node = NodeProc::node(dir.path(), &dir.path().join("n.toml"));
    let c = authed(&node.token);
    let r = submit(&c, &node, "hello", &[("x-idempotency-key", "order-17")]).await;
    assert_eq!(r.status(), 202);
    assert_eq!(r.headers()["x-call-id"].to_str().unwrap(), id);
    let (s, body) = async_result(&c, &node, &id).await;
    assert_eq!(s, 200, "{body}");
    let (_, st) = get(&c, format!("{}/system/function/hello", node.url)).await;
    let st: Value = serde_json::from_str(&st).unwrap();
    assert_eq!(
        st["invocationCount"], 0,
        "nothing ran again after the restart: {st}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_are_retried_from_a_durable_outbox_then_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    // Two refusals, then a success.
    let (base, mut got) = receiver(Codes::new(std::sync::Mutex::new(vec![503, 500, 200]))).await;
    let node = node_with(dir.path(), &base, "");
    let c = authed(&node.token);
    assert_eq!(
        deploy(&node, "hello", "hello/hello.wasm", json!({}))
            .await
            .status(),
        201
    );
    let cb = format!("{base}done");
    let r = submit(&c, &node, "hello", &[("x-callback-url", cb.as_str())]).await;
    assert_eq!(r.status(), 202);
    let id = r.headers()["x-call-id"].to_str().unwrap().to_string();
    for want in [503, 500, 200] {
        let (call, code) = tokio::time::timeout(Duration::from_secs(10), got.recv())
            .await
            .expect("a delivery within 10 s")
            .unwrap();
        assert_eq!(
            (call.as_str(), code),
            (id.as_str(), want),
            "each delivery names its call"
        );
    }
    // Counted once the outbox has let it go.
    let t = Instant::now();
    let mut m = metrics(&node).await;
    while !m.contains("fogline_callbacks_delivered_total 1") {
        assert!(t.elapsed() < Duration::from_secs(10), "{m}");
        tokio::time::sleep(Duration::from_millis(20)).await;
        m = metrics(&node).await;
    }
    assert!(m.contains("fogline_callback_retries_total 2"), "{m}");

    // A receiver that never takes it: retried for `callback_for` (1 s), then the
    // callback is in the dead-letter queue; replayed once the receiver works, it arrives.
    drop(got);
    let codes = Codes::new(std::sync::Mutex::new(vec![500]));
    let (base2, mut got2) = receiver(codes.clone()).await;
    drop(node);
    let node = node_with(dir.path(), &base2, "");
    let c = authed(&node.token);
    let cb = format!("{base2}done");
    let r = submit(&c, &node, "hello", &[("x-callback-url", cb.as_str())]).await;
    let id = r.headers()["x-call-id"].to_str().unwrap().to_string();
    let t = Instant::now();
    let dead = loop {
        let (s, d) = get(&c, format!("{}/v1/dlq/{id}", node.url)).await;
        if s == 200 {
            break serde_json::from_str::<Value>(&d).unwrap();
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "callback not given up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(dead["kind"], "callback", "{dead}");
    assert!(
        dead["reason"]
            .as_str()
            .unwrap()
            .contains("answered HTTP 500"),
        "{dead}"
    );
    let tries = dead["attempts"].as_array().unwrap().len();
    assert!(tries >= 3, "{dead}");
    // The call itself succeeded.
    assert_eq!(async_result(&c, &node, &id).await.0, 200);
    while got2.try_recv().is_ok() {}
    *codes.lock().unwrap() = vec![200];
    let out = run_ok(node.cli().args(["dlq", "replay", &id]));
    assert!(out.contains("queued again"), "{out}");
    let (call, code) = tokio::time::timeout(Duration::from_secs(10), got2.recv())
        .await
        .expect("a delivery after the replay")
        .unwrap();
    assert_eq!((call.as_str(), code), (id.as_str(), 200));
    let (s, _) = get(&c, format!("{}/v1/dlq/{id}", node.url)).await;
    assert_eq!(s, 404, "delivered, it left the dead-letter queue");
}

/// A small tmpfs mounted as a node's data folder; unmounted on drop.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(at: &std::path::Path, size: &str) -> Result<SmallDisk, String> {
        std::fs::create_dir_all(at).map_err(|e| e.to_string())?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            Ok(SmallDisk(at.to_path_buf()))
        } else {
            Err("cannot mount a tmpfs (needs root)".into())
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// On a disk that keeps too little free space, submissions get 429 naming
/// `min_free_disk`, and every call accepted before runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_submissions_and_keeps_what_it_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let disk = match SmallDisk::mount(&dir.path().join("node"), "64m") {
        Ok(d) => d,
        Err(why) => {
            skip_without("a small tmpfs for the full-disk test", &why);
            return;
        }
    };
    let node = node_with(
        dir.path(),
        "http://127.0.0.1:9/",
        "workers = 1\nmin_free_disk = \"32Mi\"\n",
    );
    let c = authed(&node.token);
    assert_eq!(
        deploy(&node, "wait", "wait/wait.wasm", json!({}))
            .await
            .status(),
        201
    );
    // Each call waits 5 ms (its body starts "5"), and carries 256 KiB.
    let mut body = b"5".to_vec();
    body.resize(256 * 1024, b' ');
    let mut accepted = Vec::new();
    let refusal = loop {
        let r = c
            .post(format!("{}/async-function/wait", node.url))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            202 => accepted.push(r.headers()["x-call-id"].to_str().unwrap().to_string()),
            429 => break r.text().await.unwrap(),
            s => panic!("{s}: {}", r.text().await.unwrap()),
        }
        assert!(accepted.len() < 1000, "no refusal on a 64 MiB disk");
    };
    eprintln!("{} calls accepted, then: {refusal}", accepted.len());
    assert!(!accepted.is_empty());
    assert!(
        refusal.contains("disk is nearly full") && refusal.contains("min_free_disk = 32 MiB"),
        "{refusal}"
    );
    let (_, m) = get(&c, format!("{}/metrics", node.url)).await;
    assert!(
        m.lines()
            .any(|l| l.starts_with("fogline_async_disk_full_total ") && !l.ends_with(" 0")),
        "{m}"
    );
    // Everything accepted runs.
    for id in &accepted {
        let (s, out) = async_result(&c, &node, id).await;
        assert_eq!((s, out.as_str()), (200, "waited 5 ms\n"), "{id}");
    }
    drop(node);
    drop(disk);
}
