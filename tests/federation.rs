//! Federation with real processes: two clusters, each with its own CA, bridge and edge
//! node (and routers in A). Cluster B runs in a network namespace of its own, joined to
//! the host by a veth pair: the link between the bridges can be cut. Invite, join, a
//! forged and a reused invite refused with their reasons, `ls` on both sides; a function
//! deployed only in A, its namespace offloaded, runs in B when A's places are full
//! (`X-Fogline-Placed-On: cluster-b (federated)`), B having fetched its module by hash
//! into A's namespace there; A's device certificate refused by B's members; the link cut
//! with a call running in B → B shown dead within 3 s, that call retried in A and
//! answered, calls keep succeeding in A; healed → B placed on again; B restarted → the
//! peering is still there; one key run once in B whichever of A's routers sends it; a
//! namespace B refuses is no longer offered; leave under load with no failed call, and
//! both sides forget the peering. Needs root and iproute2 (skipped with a message
//! otherwise; required under CI).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::netns::{rebind, Link};
use common::*;
use serde_json::json;

/// Starts a member of cluster B inside the link's namespace, on its address there.
fn member_b(
    link: &Link,
    dir: &std::path::Path,
    pki: &std::path::Path,
    role: &str,
    name: &str,
    join: Option<&str>,
    extra: &str,
) -> NodeProc {
    let cmd = member_command(dir, pki, role, name, join, None, extra);
    NodeProc::spawn_cmd(
        rebind(cmd, &link.ns_ip, Some(&link.ns)),
        dir.join(name),
        dir,
    )
}

/// Whether `n`'s view offers a peer place for which `ok` holds.
fn offers(n: &NodeProc, ok: impl Fn(&serde_json::Value) -> bool) -> bool {
    mesh_json(n)["peer_places"]
        .as_array()
        .is_some_and(|p| p.iter().any(&ok))
}

/// Deploys `far`, `wait` pinned to peer clusters, through `n`.
async fn deploy_far(n: &NodeProc) {
    let r = deploy(
        n,
        "far",
        "wait/wait.wasm",
        json!({"idempotent": true, "timeout": "5s", "placement": {"tier": "federated"}}),
    )
    .await;
    assert!(r.status().is_success());
}

fn peer_field(n: &NodeProc, peer: &str, field: &str) -> serde_json::Value {
    fed_ls(n)["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == peer)
        .map_or(serde_json::Value::Null, |p| p[field].clone())
}

fn fed_ls(n: &NodeProc) -> serde_json::Value {
    let out = run_ok(n.cli().args(["federation", "ls", "--json"]));
    serde_json::from_str(&out).unwrap()
}

fn peer_state(n: &NodeProc, peer: &str) -> Option<String> {
    fed_ls(n)["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == peer)
        .map(|p| p["state"].as_str().unwrap().to_string())
}

/// `n` calls of `wait` (100 ms) one after another, each answered 200: where each ran.
async fn in_a_row(c: &reqwest::Client, router: &str, n: usize) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for _ in 0..n {
        let (s, placed, body) = call(c, router, "wait", "100").await;
        if s != 200 {
            let p = placements(c, router, 5).await;
            panic!("{s} {body}; the router's decisions: {p:#}");
        }
        *m.entry(placed).or_insert(0) += 1;
    }
    m
}

/// `n` concurrent calls of `wait` (300 ms) through the router: where each ran (`""` for
/// a call that found every place full: a place that answered 429 is passed over for a
/// second, so a burst as large as the places' slots may find none). Only used to fill
/// places; calls that must not fail are made [`in_a_row`].
async fn burst(c: &reqwest::Client, router: &str, n: usize) -> HashMap<String, usize> {
    let calls: Vec<_> = (0..n)
        .map(|i| {
            let (c, url) = (c.clone(), format!("{router}/function/wait"));
            tokio::spawn(async move {
                let r = c.post(url).body(format!("300 #{i}")).send().await.unwrap();
                let s = r.status().as_u16();
                let placed = r
                    .headers()
                    .get("x-fogline-placed-on")
                    .map(|v| v.to_str().unwrap().to_string())
                    .unwrap_or_default();
                let body = r.text().await.unwrap();
                (s, placed, body)
            })
        })
        .collect();
    let mut m = HashMap::new();
    let mut failed = Vec::new();
    for h in calls {
        let (s, placed, body) = h.await.unwrap();
        // Every place full: 429, or the last place tried lost the call (502, retried
        // elsewhere while attempts last).
        if !matches!(s, 200 | 429 | 502 | 503) {
            failed.push(format!("{s} {body}"));
        }
        *m.entry(placed).or_insert(0) += 1;
    }
    if !failed.is_empty() {
        let p = placements(c, router, 2 * n).await;
        panic!("{failed:?}; the router's decisions: {p:#}");
    }
    m
}

/// Bursts of three calls (one more than A's places take) until one runs in cluster-b, for
/// up to 20 s: how many did.
async fn bursts_until_b(c: &reqwest::Client, router: &str) -> usize {
    let mut on_b = 0;
    let t = Instant::now();
    while on_b == 0 && t.elapsed() < Duration::from_secs(20) {
        let placed = burst(c, router, 3).await;
        eprintln!("burst with cluster-b offered: {placed:?}");
        on_b += placed.get("cluster-b (federated)").copied().unwrap_or(0);
    }
    on_b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_clusters_peer_offload_survive_a_cut_link_and_leave() {
    let link = match Link::new("fed", 251) {
        Ok(l) => l,
        Err(why) => {
            skip_without("a network namespace for the federation test", &why);
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let (da, db) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&da).unwrap();
    std::fs::create_dir_all(&db).unwrap();
    let (pa, pb) = (pki(&da), pki(&db));
    let (port_a, port_b) = (free_port(), free_port());
    let fed_b = format!(
        "[federation]\nlisten = \"{}:{port_b}\"\ncluster = \"cluster-b\"\n",
        link.ns_ip
    );
    let fed_a = format!("[federation]\nlisten = \"127.0.0.2:{port_a}\"\ncluster = \"cluster-a\"\n");

    // Cluster B: a bridge and an edge node. Cluster A: a bridge, an edge node, a router.
    let mut bridge_b = member_b(&link, &db, &pb, "bridge", "bridge-b", None, &fed_b);
    let seed_b = mesh_json(&bridge_b)["self"].as_str().unwrap().to_string();
    assert!(seed_b.contains(&link.ns_ip), "{seed_b}");
    let edge_b = member_b(&link, &db, &pb, "node", "edge-b", Some(&seed_b), "");
    let bridge_a = member_with(&da, &pa, "bridge", "bridge-a", None, None, &fed_a);
    let seed_a = mesh_json(&bridge_a)["self"].as_str().unwrap().to_string();
    let _edge_a = member(&da, &pa, "node", "edge-a", Some(&seed_a), None);
    let router = member(&da, &pa, "router", "router-a", Some(&seed_a), None);
    wait_until("router-a sees cluster A", 20, || {
        alive(&router) == ["bridge-a", "edge-a", "router-a"]
    });

    // Invite on B (the token alone on the last line), join on A.
    let out =
        run_ok(
            bridge_b
                .cli()
                .args(["federation", "invite", "--ttl", "10m", "--share", "50%"]),
        );
    let token = out.lines().last().unwrap().trim().to_string();
    assert!(token.starts_with("fogfed1."), "{out}");
    assert!(
        token.ends_with(&format!("@{}:{port_b}", link.ns_ip)),
        "{token}"
    );
    // A forged token (another secret) is refused, with the reason on both sides.
    let mut forged = token.clone();
    let flip = if forged.as_bytes()[8] == b'0' {
        "1"
    } else {
        "0"
    };
    forged.replace_range(8..9, flip);
    let err = run_err(bridge_a.cli().args(["federation", "join", &forged]));
    assert!(err.contains("not one this bridge made"), "{err}");
    let out = run_ok(bridge_a.cli().args(["federation", "join", &token]));
    assert!(out.contains("peered with cluster-b"), "{out}");
    // Used once: a second join with it is refused.
    let err = run_err(
        bridge_a
            .cli()
            .args(["federation", "join", &token, "--name", "again"]),
    );
    assert!(err.contains("already used"), "{err}");
    let m = metrics(&bridge_b).await;
    assert!(
        m.contains("fogline_federation_refused_total{reason=\"invite_unknown\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("fogline_federation_refused_total{reason=\"invite_used\"} 1"),
        "{m}"
    );

    wait_until("A shows provider cluster-b alive", 5, || {
        peer_state(&bridge_a, "cluster-b").as_deref() == Some("alive")
    });
    let b_side = fed_ls(&bridge_b);
    let p = &b_side["peers"][0];
    assert_eq!(
        (p["name"].as_str(), p["direction"].as_str()),
        (Some("cluster-a"), Some("consumer"))
    );
    let table = run_ok(bridge_a.cli().args(["federation", "ls"]));
    assert!(
        table.contains("cluster-b") && table.contains("provider"),
        "{table}"
    );

    // A function deployed only in A, one call at a time per place.
    let r = deploy(
        &router,
        "wait",
        "wait/wait.wasm",
        json!({"idempotent": true, "max_concurrency": 1, "timeout": "5s"}),
    )
    .await;
    assert!(r.status().is_success());
    let c = authed(&router.token);
    // Not offloaded yet: B is no place for it.
    // Warm: every place of A has loaded it (a cold start takes a second, during which
    // concurrent calls would find both places full).
    let mut warmed = std::collections::HashSet::new();
    for _ in 0..40 {
        let (s, placed, _) = call(&c, &router.url, "wait", "1").await;
        assert_eq!(s, 200);
        warmed.insert(placed);
        if warmed.len() == 2 {
            break;
        }
    }
    let before = in_a_row(&c, &router.url, 4).await;
    assert!(!before.contains_key("cluster-b"), "{before:?}");
    run_ok(
        bridge_a
            .cli()
            .args(["federation", "offload", "openfaas-fn", "--to", "cluster-b"]),
    );
    wait_until("router-a hears of the peer place", 10, || {
        offers(&router, |p| {
            p["place"] == "cluster-b" && p["bridge"] == "bridge-a"
        })
    });
    assert!(
        bursts_until_b(&c, &router.url).await > 0,
        "no call ran in cluster-b"
    );
    // B holds A's function in A's namespace, its module fetched by hash from A.
    let fns = get(
        &authed(&bridge_b.token),
        format!("{}/system/functions?namespace=cluster-a", bridge_b.url),
    )
    .await;
    assert_eq!(fns.0, 200);
    assert!(fns.1.contains("\"wait\""), "{}", fns.1);
    let m = metrics(&bridge_a).await;
    assert!(
        m.contains(
            "fogline_federation_peer{peer=\"cluster-b\",direction=\"provider\",state=\"alive\"} 1"
        ),
        "{m}"
    );
    assert!(
        m.contains("fogline_federation_summary_bytes_total{peer=\"cluster-b\"}"),
        "{m}"
    );

    // A's device certificate means nothing in B.
    let dev = issue(&pa, "dev-a", "client");
    let err = run_err(
        fogline()
            .args(["invoke", "hello", "--data", "x", "--via"])
            .arg(format!("quic://{}", bridge_b.quic.unwrap()))
            .arg("--tls-dir")
            .arg(&dev),
    );
    assert!(err.to_lowercase().contains("certificate"), "{err}");

    // B's placement time is in the round trip A's routers see for it.
    let placing = peer_field(&bridge_a, "cluster-b", "placement_ms")
        .as_f64()
        .unwrap();
    assert!(placing > 0.0, "cluster-b reports no placement time");
    wait_until("router-a sees cluster-b's placement time", 10, || {
        offers(&router, |p| {
            p["place"] == "cluster-b"
                && p["placement_ms"].as_f64().unwrap() > 0.0
                && p["rtt_ms"].as_f64() >= p["placement_ms"].as_f64()
        })
    });
    println!("cluster-b's own placement time {placing:.3} ms (in the round trip A sees)");

    // The link is cut while a call runs in B: B shown dead within 3 s, the call (idempotent)
    // retried in A and answered; A keeps serving every call.
    let mut caught = None;
    for _ in 0..15 {
        let calls: Vec<_> = (0..3)
            .map(|i| {
                let (c, url) = (c.clone(), router.url.clone());
                tokio::spawn(async move { call(&c, &url, "wait", &format!("1000 #{i}")).await })
            })
            .collect();
        let t = Instant::now();
        let mut on_b = false;
        while !on_b && t.elapsed() < Duration::from_millis(600) {
            on_b = peer_field(&bridge_a, "cluster-b", "in_flight").as_u64() > Some(0);
        }
        if on_b {
            link.set(false);
            caught = Some((calls, Instant::now()));
            break;
        }
        for h in calls {
            h.await.unwrap();
        }
    }
    let (running, cut_at) = caught.expect("no call of 15 bursts ran in cluster-b");
    wait_until("A shows cluster-b dead", 6, || {
        peer_state(&bridge_a, "cluster-b").as_deref() == Some("dead")
    });
    let noticed = cut_at.elapsed();
    println!("a cut link noticed after {noticed:?} (target 3 s)");
    assert!(noticed < Duration::from_secs(3), "{noticed:?}");
    for (i, h) in running.into_iter().enumerate() {
        let (mut s, mut placed, mut body) = h.await.unwrap();
        // A's places may all be busy with the burst's other calls when this one comes
        // back from B: turned away (429, retryable, nothing ran), it is sent again after
        // the gateway's Retry-After, as a client would.
        if s == 429 {
            println!("a call back from B found A full ({body}); sent again");
            tokio::time::sleep(Duration::from_secs(1)).await;
            (s, placed, body) = call(&c, &router.url, "wait", &format!("1000 #{i}")).await;
        }
        if s != 200 {
            let p = placements(&c, &router.url, 6).await;
            panic!("a call running in B when the link was cut: {s} {body}; the router's decisions: {p:#}");
        }
        assert_ne!(placed, "cluster-b", "{body}");
    }
    let during = in_a_row(&c, &router.url, 6).await;
    assert!(!during.contains_key("cluster-b"), "{during:?}");
    link.set(true);
    wait_until("A shows cluster-b alive again", 10, || {
        peer_state(&bridge_a, "cluster-b").as_deref() == Some("alive")
    });
    assert!(
        bursts_until_b(&c, &router.url).await > 0,
        "cluster-b not placed on after the link healed"
    );

    // B restarts: the peering is kept on both sides and the link comes back by itself.
    bridge_b.terminate();
    let bridge_b = member_b(&link, &db, &pb, "bridge", "bridge-b", None, &fed_b);
    assert_eq!(fed_ls(&bridge_b)["peers"][0]["name"], "cluster-a");
    wait_until("A shows restarted cluster-b alive", 15, || {
        peer_state(&bridge_a, "cluster-b").as_deref() == Some("alive")
    });
    assert!(
        bursts_until_b(&c, &router.url).await > 0,
        "cluster-b not placed on after its restart"
    );

    // Leave under load: a call pinned to the peer cluster is running there, others run in
    // A; the leave waits for the one in flight, no call fails, both sides forget.
    deploy_far(&router).await;
    let (s, placed, body) = call(&c, &router.url, "far", "10").await;
    assert_eq!((s, placed.as_str()), (200, "cluster-b"), "{body}");
    // One idempotency key, one run in B, whichever of A's routers sends it: the key
    // crosses the link and B's bridge keeps the answer.
    let router_2 = member(&da, &pa, "router", "router-a2", Some(&seed_a), None);
    deploy_far(&router_2).await;
    wait_until("router-a2 hears of cluster-b", 20, || {
        offers(&router_2, |p| p["place"] == "cluster-b")
    });
    let ran_in_b = || async {
        calls(&bridge_b, "far.cluster-a", 200).await + calls(&edge_b, "far.cluster-a", 200).await
    };
    let before = ran_in_b().await;
    for r in [&router, &router_2] {
        let rc = authed(&r.token);
        let resp = rc
            .post(format!("{}/async-function/far", r.url))
            .header("x-idempotency-key", "order-17")
            .body("20")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202, "{}", resp.text().await.unwrap());
        let id = resp.headers()["x-call-id"].to_str().unwrap().to_string();
        let (s, body) = async_result(&rc, r, &id).await;
        assert_eq!(s, 200, "{body}");
        assert!(body.contains("waited 20 ms"), "{body}");
    }
    assert_eq!(
        ran_in_b().await - before,
        1,
        "one key ran more than once in B"
    );

    // The provider may refuse a consumer's namespace (A stops offering it there, B's
    // summary says so), and take it again.
    run_ok(
        bridge_b
            .cli()
            .args(["federation", "refuse", "openfaas-fn", "--from", "cluster-a"]),
    );
    wait_until("A hears that B refuses openfaas-fn", 10, || {
        peer_field(&bridge_a, "cluster-b", "refused_there") == json!(["openfaas-fn"])
    });
    wait_until("router-a no longer offered cluster-b for it", 10, || {
        mesh_json(&router)["peer_places"]
            .as_array()
            .is_some_and(|p| p.is_empty())
    });
    let (s, _, body) = call(&c, &router.url, "far", "10").await;
    assert_eq!(s, 503, "{body}");
    assert!(body.contains("federated"), "{body}");
    run_ok(bridge_b.cli().args([
        "federation",
        "refuse",
        "openfaas-fn",
        "--from",
        "cluster-a",
        "--off",
    ]));
    wait_until("router-a offered cluster-b again", 10, || {
        offers(&router, |p| p["place"] == "cluster-b")
    });
    let (s, placed, body) = call(&c, &router.url, "far", "10").await;
    assert_eq!((s, placed.as_str()), (200, "cluster-b"), "{body}");
    let in_flight = {
        let (c, url) = (c.clone(), router.url.clone());
        tokio::spawn(async move { call(&c, &url, "far", "1500").await })
    };
    let load = {
        let (c, url) = (c.clone(), router.url.clone());
        tokio::spawn(async move {
            let mut placed = HashMap::new();
            for _ in 0..4 {
                for (k, v) in in_a_row(&c, &url, 8).await {
                    *placed.entry(k).or_insert(0) += v;
                }
            }
            placed
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let out = run_ok(bridge_a.cli().args(["federation", "leave", "cluster-b"]));
    assert!(out.contains("left cluster-b"), "{out}");
    let (s, placed, body) = in_flight.await.unwrap();
    assert_eq!((s, placed.as_str()), (200, "cluster-b"), "{body}");
    assert!(body.contains("waited 1500 ms"), "{body}");
    let waited: u64 = out
        .split("after ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(
        waited >= 500,
        "the leave waited {waited} ms for the call in flight: {out}"
    );
    let placed = load.await.unwrap();
    eprintln!("placements while leaving: {placed:?}");
    assert!(fed_ls(&bridge_a)["peers"].as_array().unwrap().is_empty());
    // The provider shows it `left` until its admin removes it.
    wait_until("B shows cluster-a left", 5, || {
        peer_state(&bridge_b, "cluster-a").as_deref() == Some("left")
    });
    let m = metrics(&bridge_b).await;
    assert!(
        m.contains(
            "fogline_federation_peer{peer=\"cluster-a\",direction=\"consumer\",state=\"left\"} 1"
        ),
        "{m}"
    );
    run_ok(bridge_b.cli().args(["federation", "leave", "cluster-a"]));
    assert!(fed_ls(&bridge_b)["peers"].as_array().unwrap().is_empty());
    let after = in_a_row(&c, &router.url, 4).await;
    assert!(!after.contains_key("cluster-b"), "{after:?}");
    // A call only the peer could run now has no place, and says so at once.
    let (s, _, body) = call(&c, &router.url, "far", "10").await;
    assert_eq!(s, 503, "{body}");
    assert!(body.contains("federated"), "{body}");
}

/// Two sites of one cluster (one CA), each its own mesh, joined by their bridges: a call
/// from site 1 placed in site 2, where the function keeps its name (same cluster, same
/// namespaces).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_sites_of_one_cluster_join_through_their_bridges() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pki = pki(d);
    let port = free_port();
    let bridge_2 = member_with(
        d,
        &pki,
        "bridge",
        "bridge-2",
        None,
        None,
        &format!("site = \"site-2\"\n[federation]\nlisten = \"127.0.0.3:{port}\"\n"),
    );
    let bridge_1 = member_with(
        d,
        &pki,
        "bridge",
        "bridge-1",
        None,
        None,
        &format!(
            "site = \"site-1\"\n[federation]\nlisten = \"127.0.0.2:{}\"\n",
            free_port()
        ),
    );
    let seed = mesh_json(&bridge_1)["self"].as_str().unwrap().to_string();
    let router = member_with(
        d,
        &pki,
        "router",
        "router-1",
        Some(&seed),
        None,
        "site = \"site-1\"\n",
    );
    wait_until("router-1 sees site 1", 20, || {
        alive(&router) == ["bridge-1", "router-1"]
    });
    // Each site its own mesh: site 1 never hears of bridge-2.
    assert!(!alive(&bridge_1).contains(&"bridge-2".to_string()));

    let out = run_ok(bridge_2.cli().args(["federation", "invite"]));
    let token = out.lines().last().unwrap().trim().to_string();
    let out = run_ok(
        bridge_1
            .cli()
            .args(["federation", "join", &token, "--name", "site-2"]),
    );
    assert!(out.contains("peered with site-2"), "{out}");
    let ls = fed_ls(&bridge_2);
    assert_eq!(ls["peers"][0]["site"], true, "{ls}");
    run_ok(
        bridge_1
            .cli()
            .args(["federation", "offload", "openfaas-fn", "--to", "site-2"]),
    );
    wait_until("router-1 hears of site-2", 10, || {
        offers(&router, |p| p["place"] == "site-2")
    });
    let r = deploy(
        &router,
        "far",
        "hello/hello.wasm",
        json!({"idempotent": true, "placement": {"tier": "federated"}}),
    )
    .await;
    assert!(r.status().is_success());
    let c = authed(&router.token);
    let (s, placed, body) = call(&c, &router.url, "far", "site").await;
    assert_eq!(
        (s, placed.as_str(), body.as_str()),
        (200, "site-2", "hello, site")
    );
    // Same cluster: the function keeps its name in site 2.
    let (s, fns) = get(
        &authed(&bridge_2.token),
        format!("{}/system/functions", bridge_2.url),
    )
    .await;
    assert_eq!(s, 200);
    assert!(fns.contains("\"far\""), "{fns}");
}
