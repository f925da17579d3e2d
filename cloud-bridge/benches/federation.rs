//! Federation on loopback: two clusters (each its own CA), one bridge each, peered.
//!
//! `cargo bench -p fogline-cloud-bridge --bench federation` (release). Prints:
//! - limit: a raw QUIC round trip between the two bridges' addresses (open a stream, send
//!   1 KiB, read it back) with the federation link's TLS (A's certificate, B's CA pinned);
//! - a call of `hello` (1 KiB) placed inside cluster A (a router's QUIC call to A's bridge,
//!   which runs it), and the same call sent through A's bridge to cluster B (`via`), which
//!   runs it; the added time beside the target of 2 × the raw round trip + 300 µs; and
//!   B's own placement time as its summary reports it;
//! - summary traffic on the link: bytes per second measured on the consumer's connection
//!   over 10 s of polling (one member behind B), and the summary reply's size with 1,000
//!   members behind a bridge (from core's `summarize`, the code the bridge runs), beside the
//!   target of 2 KB/s.

use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "../../node/benches/support/echo.rs"]
mod echo;
#[path = "../../node/benches/support/stats.rs"]
mod stats;
use echo::{measure, raw_echo, serve_echo};
use stats::{p, row};

use bytes::Bytes;
use fogline_core::config::{FederationSection, NodeConfig, Tier};
use fogline_core::federation::{self as fed, FedReply, MemberLoad};
use fogline_core::{Digest, FunctionManifest};
use fogline_node::federate::Admin;
use fogline_node::peering;
use fogline_node::quic::{Client, QuicLimits, Request};
use fogline_node::tls::{self, Role, TlsDir, Validity};

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run());
}

/// A bridge of its own cluster (CA in `dir/pki`), federation listening on `fed_ip`.
async fn bridge(
    dir: &std::path::Path,
    name: &str,
    fed_ip: &str,
) -> (
    Arc<fogline_node::Node>,
    Arc<fogline_cloud_bridge::federation::Federation>,
) {
    let pki = dir.join("pki");
    tls::init_ca(&pki).expect("ca");
    tls::issue(&pki, name, Role::Bridge, &pki.join(name), Validity::Days(1)).expect("cert");
    tls::issue(
        &pki,
        "router",
        Role::Router,
        &pki.join("router"),
        Validity::Days(1),
    )
    .expect("router cert");
    let mut cfg = NodeConfig::local(dir.join("data"), "127.0.0.1:0".parse().expect("addr"));
    cfg.node.tier = Tier::Cloud;
    cfg.quic.listen = Some("127.0.0.1:0".parse().expect("addr"));
    cfg.quic.tls_dir = Some(pki.join(name));
    cfg.quic.max_streams = 1024;
    let running = fogline_node::bind(cfg).await.expect("node");
    let node = running.node.clone();
    tokio::spawn(running.serve(std::future::pending()));
    let f = fogline_cloud_bridge::federation::start(
        &node,
        FederationSection {
            listen: format!("{fed_ip}:0").parse().expect("addr"),
            advertise: None,
            cluster: Some(name.to_string()),
            dead_after: Duration::from_secs(2),
        },
    )
    .expect("federation");
    (node, f)
}

async fn run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (da, db) = (dir.path().join("a"), dir.path().join("b"));
    let (a, fed_a) = bridge(&da, "cluster-a", "127.0.0.2").await;
    let (b, fed_b) = bridge(&db, "cluster-b", "127.0.0.3").await;
    use fogline_node::federate::Federation as _;
    let inv = fed_b
        .admin(Admin::Invite {
            ttl_s: 600,
            share_pct: 100,
        })
        .await
        .map_err(|e| e.message)
        .expect("invite");
    fed_a
        .admin(Admin::Join {
            token: inv["token"].as_str().expect("token").to_string(),
            name: None,
        })
        .await
        .map_err(|e| e.message)
        .expect("join");
    fed_a
        .admin(Admin::Offload {
            namespace: "openfaas-fn".into(),
            to: "cluster-b".into(),
            on: true,
        })
        .await
        .map_err(|e| e.message)
        .expect("offload");
    let t = Instant::now();
    while fed_a
        .admin(Admin::List)
        .await
        .map_err(|e| e.message)
        .expect("ls")["peers"][0]["state"]
        != "alive"
    {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the peering never came up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let wasm = std::fs::read(examples.join("hello/hello.wasm")).expect("example");
    let mut m = FunctionManifest::wasm("hello", Digest::of(&wasm));
    m.idempotent = true;
    m.max_concurrency = 1024;
    a.deploy(m.clone(), Some(Bytes::from(wasm)), false)
        .await
        .expect("deploy");

    // Limit: a raw round trip between the bridges' addresses, with the link's TLS.
    let tls_a = TlsDir::load(&da.join("pki/cluster-a")).expect("tls a");
    let tls_b = TlsDir::load(&db.join("pki/cluster-b")).expect("tls b");
    let ca_b = peering::ca_der(&db.join("pki/cluster-b")).expect("ca b");
    let cas = Arc::new(peering::PeerCas::default());
    cas.pin(
        "cluster-a",
        &peering::ca_der(&da.join("pki/cluster-a")).expect("ca a"),
        None,
    )
    .expect("pin");
    let ep = fogline_node::quic::server_endpoint(
        "127.0.0.3:0".parse().expect("addr"),
        peering::server_config(&tls_b, cas).expect("server tls"),
        &QuicLimits::from_config(&b.config),
    )
    .expect("echo endpoint");
    let raw_addr = serve_echo(ep);
    let link = Client::with_config(peering::peer_client_config(&tls_a, &ca_b).expect("link tls"))
        .expect("client");
    let conn = link
        .connection(raw_addr, false)
        .await
        .expect("raw connection");
    let body = Bytes::from(vec![b'x'; 1024]);
    let raw = measure(3000, || {
        let (conn, body) = (conn.clone(), body.clone());
        async move { raw_echo(&conn, &body).await }
    })
    .await;

    // A router of cluster A calling A's bridge: inside the cluster, and on to cluster B.
    let router = Arc::new(
        Client::new(&TlsDir::load(&da.join("pki/router")).expect("router tls")).expect("client"),
    );
    let a_addr = a
        .links
        .addresses
        .get()
        .and_then(|(q, _)| *q)
        .expect("quic addr");
    let call = |via: Option<&str>| Request {
        function: "hello".into(),
        manifest: Some(m.clone()),
        body: body.clone(),
        via: via.map(str::to_string),
    };
    let (inside, across) = (call(None), call(Some("cluster-b")));
    let first = router
        .invoke(a_addr, &across, a.as_ref())
        .await
        .expect("first call across");
    assert_eq!(first.result.node, "cluster-b");
    let t_in = measure(3000, || {
        let (router, req, a) = (router.clone(), inside.clone(), a.clone());
        async move {
            let r = router
                .invoke(a_addr, &req, a.as_ref())
                .await
                .expect("inside");
            assert_eq!(r.body.len(), 7 + 1024);
        }
    })
    .await;
    let t_x = measure(3000, || {
        let (router, req, a) = (router.clone(), across.clone(), a.clone());
        async move {
            let r = router
                .invoke(a_addr, &req, a.as_ref())
                .await
                .expect("across");
            assert_eq!(r.result.node, "cluster-b");
        }
    })
    .await;

    println!("federation on loopback (two clusters, one bridge each; 1 KiB bodies)");
    row("limit: raw QUIC round trip between bridges", &raw);
    row("a call inside cluster A (router → bridge A)", &t_in);
    row("the call run in cluster B (→ A → B)", &t_x);
    let added = p(&t_x, 0.5).saturating_sub(p(&t_in, 0.5));
    let target = 2 * p(&raw, 0.5) + Duration::from_micros(300);
    println!(
        "added by crossing clusters (p50): {:.1} µs; target 2 × raw + 300 µs = {:.1} µs ({:.2}x of it)",
        added.as_secs_f64() * 1e6,
        target.as_secs_f64() * 1e6,
        added.as_secs_f64() / target.as_secs_f64()
    );

    // Summary traffic: what the consumer's link carries per second while it polls.
    let b_fed = fed_a
        .admin(Admin::List)
        .await
        .map_err(|e| e.message)
        .expect("ls");
    let b_addr: std::net::SocketAddr = b_fed["peers"][0]["address"]
        .as_str()
        .expect("address")
        .parse()
        .expect("addr");
    let _ = b;
    println!(
        "cluster B's own placement time, from its summary (added to the link's round trip in the place A's routers see): {:.1} µs",
        b_fed["peers"][0]["placement_ms"].as_f64().unwrap_or(f64::NAN) * 1e3
    );
    let stats_of = || fed_a.link_stats("cluster-b", b_addr);
    let before = stats_of().await.expect("link stats");
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let after = stats_of().await.expect("link stats");
    let secs = t0.elapsed().as_secs_f64();
    let per_s = (after.0 + after.1).saturating_sub(before.0 + before.1) as f64 / secs;
    println!(
        "link traffic while idle (summaries every 0.5 s, 1 member behind B): {per_s:.0} B/s (UDP payload, both ways)"
    );
    let warm: Vec<String> = (0..48).map(|i| format!("f{i}.cluster-a")).collect();
    let svc: Vec<(String, f32)> = warm.iter().map(|k| (k.clone(), 12.5)).collect();
    let one = |n: usize| {
        let members = (0..n).map(|_| MemberLoad {
            cores: 4,
            in_flight: 2,
            speed: 1.0,
            warm: &warm,
            service_ms: &svc,
        });
        let mut b = Vec::new();
        fogline_core::wire::encode(
            &fogline_core::wire::Frame::Federated(FedReply::Summary(fed::summarize(
                members,
                Some("cluster-a"),
                90,
            ))),
            &mut b,
        );
        b.len()
    };
    let (small, large) = (one(1), one(1000));
    let est = per_s + 2.0 * (large as f64 - one(1) as f64).max(0.0);
    println!(
        "summary reply: {small} B with 1 member, {large} B with 1,000 members (48 of A's functions warm on each)"
    );
    println!(
        "summary traffic per peering with 1,000 members behind the bridge: {est:.0} B/s (measured link traffic + 2/s × the larger reply); target ≤ 2,048 B/s"
    );
}
