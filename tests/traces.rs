//! Traces across tiers, with real processes on loopback (a bridge, two edge nodes and a
//! router, each with its own certificate): one trace id per call with the expected hops on
//! each member, the caller's `traceparent` kept, a call that fails over showing both
//! attempts, an async call's trace surviving the hand-off to the queue, `fogline trace`,
//! the ring's bound, and spans exported to an OTLP/HTTP receiver.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

async fn trace_of(c: &reqwest::Client, router: &str, id: &str) -> Value {
    let (s, body) = get(c, format!("{router}/v1/traces/{id}")).await;
    assert_eq!(s, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// POSTs `body` to `path` on the router with `headers`.
async fn post(
    c: &reqwest::Client,
    router: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &'static str,
) -> reqwest::Response {
    let mut rb = c.post(format!("{router}{path}")).body(body);
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    rb.send().await.unwrap()
}

fn spans<'a>(t: &'a Value, member: &str, name: &str) -> Vec<&'a Value> {
    t["spans"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["member"] == member && s["name"] == name)
        .collect()
}

fn attr<'a>(s: &'a Value, k: &str) -> Option<&'a str> {
    s["attrs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|kv| kv[0] == k)
        .and_then(|kv| kv[1].as_str())
}

/// A small OTLP/HTTP receiver: keeps the body of every POST it is sent.
async fn otlp_receiver() -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<Value>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 65536];
                loop {
                    let Ok(n) = s.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    if buf.len() < end + 4 + len {
                        continue;
                    }
                    let body = buf[end + 4..end + 4 + len].to_vec();
                    buf.drain(..end + 4 + len);
                    if head.starts_with("post /v1/traces") {
                        let _ = tx.send(serde_json::from_slice(&body).unwrap_or(Value::Null));
                    }
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: application/json\r\n\r\n{}")
                        .await;
                }
            });
        }
    });
    (addr, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_call_has_one_trace_across_the_members_it_touched() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pki = pki(d);
    let (otlp, mut exported) = otlp_receiver().await;
    let (cloud, mut edges, router) = continuum(
        d,
        &pki,
        &format!(
            "[trace]\nkeep = 40\notlp = \"http://{otlp}/v1/traces\"\notlp_every = \"200ms\"\n"
        ),
    );
    let c = authed(&router.token);
    deploy_hello(&router).await;

    // The caller's traceparent is kept: same trace id, our span as the parent.
    let r = post(
        &c,
        &router.url,
        "/function/hello",
        &[("traceparent", PARENT), ("tracestate", "congo=t61rcWkgMzE")],
        "world",
    )
    .await;
    assert_eq!(r.status(), 200);
    let call_id = r.headers()["x-call-id"].to_str().unwrap().to_string();
    let back = r.headers()["traceparent"].to_str().unwrap().to_string();
    assert_eq!(r.headers()["tracestate"], "congo=t61rcWkgMzE");
    let ran_on = r.headers()["x-fogline-node"].to_str().unwrap().to_string();
    assert!(
        back.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{back}"
    );
    assert!(
        !back.contains("00f067aa0ba902b7"),
        "the answer names our span: {back}"
    );
    let t = trace_of(&c, &router.url, &call_id).await;
    assert_eq!(t["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(t["unreachable"], json!([]), "{t}");
    let all = t["spans"].as_array().unwrap();
    assert!(all
        .iter()
        .all(|s| s["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"));
    // The router: the ingress (a child of the caller's span), placement, one attempt.
    let ingress = spans(&t, "router", "http");
    assert_eq!(ingress.len(), 1, "{t}");
    assert_eq!(ingress[0]["parent_id"], "00f067aa0ba902b7");
    assert_eq!(ingress[0]["depth"], 0);
    let placement = spans(&t, "router", "placement");
    assert_eq!(placement.len(), 1);
    assert!(attr(placement[0], "candidates").unwrap().contains("edge-1"));
    let attempt = spans(&t, "router", "attempt");
    assert_eq!(attempt.len(), 1);
    assert_eq!(attr(attempt[0], "place"), Some(ran_on.as_str()));
    assert_eq!(attr(attempt[0], "status"), Some("200"));
    // The member it ran on: serving the attempt, the start and the run inside it.
    let serve = spans(&t, &ran_on, "serve");
    assert_eq!(serve.len(), 1, "{t}");
    assert_eq!(serve[0]["parent_id"], attempt[0]["span_id"]);
    let run = spans(&t, &ran_on, "run");
    assert_eq!(run.len(), 1);
    assert_eq!(run[0]["parent_id"], serve[0]["span_id"]);
    assert_eq!(
        spans(&t, &ran_on, "cold start").len() + spans(&t, &ran_on, "start").len(),
        1
    );
    // Children start within their parents' time.
    let within = |child: &Value, parent: &Value| {
        let (cs, ps) = (
            child["start_us"].as_u64().unwrap(),
            parent["start_us"].as_u64().unwrap(),
        );
        cs >= ps
            && cs + child["duration_us"].as_u64().unwrap()
                <= ps + parent["duration_us"].as_u64().unwrap() + 1000
    };
    assert!(within(attempt[0], ingress[0]));
    assert!(within(run[0], serve[0]));

    // `fogline trace` shows the same tree.
    let out = run_ok(router.cli().args(["trace", &call_id]));
    assert!(
        out.contains("trace 4bf92f3577b34da6a3ce929d0e0e4736"),
        "{out}"
    );
    assert!(
        out.contains(&ran_on) && out.contains("network+transfer="),
        "{out}"
    );
    let bad = run_err(router.cli().args(["trace", "nonsense"]));
    assert!(bad.contains("32 hex digits"), "{bad}");
    let unknown = run_err(router.cli().args(["trace", &"ab".repeat(16)]));
    assert!(
        unknown.contains("404") && unknown.contains("keeps its newest 40 traces"),
        "{unknown}"
    );

    // A call without a traceparent gets a new trace, and answers with it.
    let r = post(&c, &router.url, "/function/hello", &[], "x").await;
    let fresh = r.headers()["traceparent"].to_str().unwrap().to_string();
    assert!(
        !fresh.contains("4bf92f35") && fresh.ends_with("-01"),
        "{fresh}"
    );
    // An invalid traceparent is ignored (a new trace), never refused.
    let r = post(
        &c,
        &router.url,
        "/function/hello",
        &[("traceparent", "00-zzzz-01")],
        "x",
    )
    .await;
    assert_eq!(r.status(), 200);

    // An async call: its trace survives the queue, found by the id its 202 gave.
    let r = post(
        &c,
        &router.url,
        "/async-function/hello",
        &[(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )],
        "later",
    )
    .await;
    assert_eq!(r.status(), 202);
    let async_id = r.headers()["x-call-id"].to_str().unwrap().to_string();
    wait_until("the async call finishes", 20, || {
        let out = std::process::Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-H"])
            .arg(format!("Authorization: Bearer {}", router.token))
            .arg(format!("{}/v1/calls/{async_id}", router.url))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout) == "200"
    });
    let t = trace_of(&c, &router.url, &async_id).await;
    assert_eq!(t["trace_id"], "0af7651916cd43dd8448eb211c80319c");
    let submit = spans(&t, "router", "http");
    let worker = spans(&t, "router", "async");
    assert_eq!((submit.len(), worker.len()), (1, 1), "{t}");
    assert_eq!(attr(submit[0], "async"), Some("true"));
    let queued = spans(&t, "router", "queued");
    assert_eq!(queued.len(), 1, "{t}");
    assert_eq!(queued[0]["parent_id"], worker[0]["span_id"]);
    let attempt = spans(&t, "router", "attempt");
    assert_eq!(attempt.len(), 1, "{t}");
    let place = attr(attempt[0], "place").unwrap();
    assert_eq!(spans(&t, place, "run").len(), 1, "{t}");

    // Spans reach the OTLP receiver as OTLP JSON, with the trace's ids.
    let mut seen = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !seen {
        let batch = tokio::time::timeout_at(deadline, exported.recv())
            .await
            .expect("spans exported to the OTLP receiver within 10 s")
            .unwrap();
        let rs = &batch["resourceSpans"][0];
        let service = rs["resource"]["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["key"] == "service.instance.id")
            .unwrap();
        assert_eq!(service["value"]["stringValue"], "router");
        for s in rs["scopeSpans"][0]["spans"].as_array().unwrap() {
            assert_eq!(s["spanId"].as_str().unwrap().len(), 16);
            assert!(
                s["startTimeUnixNano"]
                    .as_str()
                    .unwrap()
                    .parse::<u64>()
                    .unwrap()
                    > 0
            );
            if s["traceId"] == "4bf92f3577b34da6a3ce929d0e0e4736" && s["name"] == "placement" {
                seen = true;
            }
        }
    }

    // A call that fails over: its first place is killed, the retry runs elsewhere, and the
    // trace shows both attempts (the dead member named as not reached).
    // The victim is the router's settled favourite: the place of three calls in a row
    // (a favourite by count alone may be a tie the planner does not prefer after all).
    let mut run: (String, usize) = (String::new(), 0);
    for _ in 0..60 {
        let (s, placed, _) = call(&c, &router.url, "hello", "x").await;
        assert_eq!(s, 200);
        if placed == run.0 {
            run.1 += 1;
        } else {
            run = (placed, 1);
        }
        if run.1 == 3 {
            break;
        }
    }
    assert_eq!(
        run.1, 3,
        "the router settles on a place for a repeated call"
    );
    let victim = run.0;
    let vi = ["edge-1", "edge-2"].iter().position(|e| *e == victim);
    let mut cloud = cloud;
    match vi {
        Some(i) => edges[i].kill(),
        None => cloud.kill(),
    }
    let mut failed_over = None;
    for _ in 0..200 {
        let r = c
            .post(format!("{}/function/hello", router.url))
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            200,
            "an idempotent call fails over, never fails"
        );
        if r.headers()["x-fogline-attempts"] == "2" {
            failed_over = Some(r.headers()["x-call-id"].to_str().unwrap().to_string());
            break;
        }
    }
    let id = failed_over.expect("a call placed on the killed member before the mesh noticed");
    let t = trace_of(&c, &router.url, &id).await;
    let attempts = spans(&t, "router", "attempt");
    assert_eq!(attempts.len(), 2, "{t}");
    let first = attempts
        .iter()
        .find(|a| attr(a, "place") == Some(victim.as_str()))
        .unwrap();
    assert_ne!(attr(first, "status"), Some("200"));
    assert!(attr(first, "error").is_some());
    let second = attempts
        .iter()
        .find(|a| attr(a, "place") != Some(victim.as_str()))
        .unwrap();
    assert_eq!(attr(second, "status"), Some("200"));
    let survivor = attr(second, "place").unwrap();
    assert_eq!(spans(&t, survivor, "run").len(), 1, "{t}");
    let unreachable = t["unreachable"].as_array().unwrap();
    assert!(
        unreachable
            .iter()
            .any(|u| u.as_str().unwrap().starts_with(&victim)),
        "{t}"
    );

    // The ring keeps the newest `trace.keep` traces: older calls are gone.
    for _ in 0..50 {
        let (s, _, _) = call(&c, &router.url, "hello", "x").await;
        assert_eq!(s, 200);
    }
    let (s, body) = get(&c, format!("{}/v1/traces?limit=1000", router.url)).await;
    assert_eq!(s, 200);
    let held: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(held["held"]["traces"], 40, "{}", held["held"]);
    assert_eq!(held["traces"].as_array().unwrap().len(), 40);
    let (s, _) = get(&c, format!("{}/v1/traces/{call_id}", router.url)).await;
    assert_eq!(s, 404, "the first call's trace was dropped");
    // A read needs a token.
    let (s, _) = get(&client(), format!("{}/v1/traces", router.url)).await;
    assert_eq!(s, 401);

    // Every metric the Grafana dashboard (configs/grafana) plots is one a router exposes.
    let m = metrics(&router).await;
    assert!(m.contains("fogline_traces_held 40"), "{m}");
    assert!(m.contains("fogline_mesh_members{state=\"dead\"} 1"), "{m}");
    let board: Value = serde_json::from_str(
        &std::fs::read_to_string(repo("configs/grafana/fogline.json")).unwrap(),
    )
    .unwrap();
    let mut plotted = Vec::new();
    for p in board["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            let e = t["expr"].as_str().unwrap();
            for (i, _) in e.match_indices(|c: char| c.is_ascii_lowercase()) {
                let rest = &e[i..];
                if (rest.starts_with("fogline_") || rest.starts_with("gateway_"))
                    && (i == 0
                        || !e.as_bytes()[i - 1].is_ascii_alphanumeric()
                            && e.as_bytes()[i - 1] != b'_')
                {
                    let name: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    let family = ["_bucket", "_sum", "_count"]
                        .iter()
                        .find_map(|s| name.strip_suffix(s))
                        .unwrap_or(&name)
                        .to_string();
                    plotted.push(family);
                }
            }
        }
    }
    assert!(plotted.len() >= 10, "{plotted:?}");
    for f in &plotted {
        assert!(
            m.contains(&format!("# TYPE {f} ")),
            "the dashboard plots {f}, which /metrics does not expose"
        );
    }
}
