//! Tiers over QUIC: a bridge, two edge nodes and a client as separate processes, each with
//! its own certificate from one cluster CA; invocation across tiers, module fetch by hash,
//! and every refusal with its message.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use fogline_core::wire::{self, Frame, Invoke};
use fogline_core::{Digest, FunctionManifest};
use fogline_node::executor::ModuleSource;
use fogline_node::quic::{Client, QuicError, Request};
use fogline_node::tls::TlsDir;
use serde_json::json;

struct Pki {
    root: PathBuf,
}

impl Pki {
    fn new(dir: &Path) -> Self {
        let root = dir.join("pki");
        run_ok(fogline().args(["certs", "init", "--dir"]).arg(&root));
        Pki { root }
    }

    fn issue(&self, name: &str, role: &str, extra: &[&str]) -> PathBuf {
        let out = self.root.join(name);
        run_ok(
            fogline()
                .args(["certs", "issue", name, "--role", role, "--ca"])
                .arg(&self.root)
                .arg("--out")
                .arg(&out)
                .args(extra),
        );
        out
    }
}

fn config(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(&p, text).unwrap();
    p
}

fn quic_node(dir: &Path, role: &str, name: &str, tls: &Path, cfg_extra: &str) -> NodeProc {
    let cfg = config(
        dir,
        name,
        &format!("version = 1\n[node]\nid = \"{name}\"\n{cfg_extra}"),
    );
    let node = NodeProc::role(
        dir,
        role,
        name,
        &cfg,
        &["--quic", "127.0.0.1:0", "--tls-dir", tls.to_str().unwrap()],
    );
    assert!(node.quic.is_some(), "{name} prints its QUIC address");
    node
}

/// One node, `node-1`, serving QUIC with a certificate from `pki`.
fn node_1(dir: &Path, pki: &Pki) -> NodeProc {
    quic_node(dir, "node", "node-1", &pki.issue("node-1", "node", &[]), "")
}

/// A call of a function no node has (answered 404 by any node it reaches).
fn nope() -> Request {
    Request {
        function: "nope".into(),
        manifest: None,
        body: Bytes::new(),
        via: None,
    }
}

struct NoModules;
impl ModuleSource for NoModules {
    fn module(&self, _: &Digest) -> Option<Bytes> {
        None
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invocations_cross_tiers_and_modules_travel_by_hash() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let cloud = quic_node(
        dir.path(),
        "bridge",
        "cloud",
        &pki.issue("cloud", "bridge", &[]),
        "",
    );
    let n1 = quic_node(
        dir.path(),
        "node",
        "node-1",
        &pki.issue("node-1", "node", &[]),
        "",
    );
    let n2 = quic_node(
        dir.path(),
        "node",
        "node-2",
        &pki.issue("node-2", "node", &[]),
        "[http]\nmax_body = \"32Mi\"\n[wasm]\nmax_output = \"32Mi\"\n",
    );
    let dev = pki.issue("dev-7", "client", &[]);

    assert_eq!(
        deploy(
            &cloud,
            "hello",
            "hello/hello.wasm",
            json!({"idempotent": true})
        )
        .await
        .status(),
        201
    );
    let c = authed(&cloud.token);
    // cloud → node-1 and cloud → node-2 (a bridge may send the functions deployed on it):
    // the nodes have never seen `hello`; they ask for the module by hash over the same
    // stream, check it, compile it once, and run it. Naming the member checks its identity.
    for (target, name) in [(&n1, "node-1"), (&n2, "node-2")] {
        let q = target.quic.unwrap();
        for (i, expect_fetch) in [(0, "true"), (1, "false")] {
            let r = c
                .post(format!("{}/function/hello", cloud.url))
                .header("X-Fogline-Target", format!("quic://{name}@{q}"))
                .body(format!("hop {i}"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            assert_eq!(r.headers()["x-fogline-module-sent"], expect_fetch);
            let ran_on = r.headers()["x-fogline-node"].to_str().unwrap().to_string();
            assert_eq!(r.text().await.unwrap(), format!("hello, hop {i}"));
            assert!(target.data_dir.ends_with(&ran_on), "ran on {ran_on}");
        }
    }
    // The member at node-2's address is not node-1: the caller refuses it, naming both.
    let r = c
        .post(format!("{}/function/hello", cloud.url))
        .header(
            "X-Fogline-Target",
            format!("quic://node-1@{}", n2.quic.unwrap()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let msg = r.text().await.unwrap();
    assert!(msg.contains("is not \"node-1\""), "{msg}");
    // A node may not deploy on another node: node-1 forwarding its own function with its
    // manifest is refused by node-2, which says why, logs the peer and counts it.
    deploy(&n1, "own", "hello/hello.wasm", json!({})).await;
    let r = authed(&n1.token)
        .post(format!("{}/function/own", n1.url))
        .header("X-Fogline-Target", format!("quic://{}", n2.quic.unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let msg = r.text().await.unwrap();
    assert!(msg.contains("role node may not deploy"), "{msg}");
    let m = metrics(&n2).await;
    assert!(
        m.contains("fogline_refusals_total{reason=\"role\",role=\"node\",action=\"deploy\"} 1"),
        "{m}"
    );
    let log = std::fs::read_to_string(dir.path().join("node.stderr")).unwrap();
    assert!(
        log.contains("peer=node-1") && log.contains("role node may not deploy"),
        "{log}"
    );
    // The bridge now has the function: a device calls it directly over QUIC with the CLI.
    let out = run_ok(
        fogline()
            .args([
                "invoke",
                "hello",
                "--via",
                &format!("quic://{}", cloud.quic.unwrap()),
                "--tls-dir",
            ])
            .arg(&dev)
            .args(["--data", "from the device"]),
    );
    assert_eq!(out, "hello, from the device");
    // …and reports its capacity as the cloud tier.
    let client = Client::new(&TlsDir::load(&dev).unwrap()).unwrap();
    let cap = client.status(cloud.quic.unwrap()).await.unwrap();
    assert_eq!(cap.tier, "cloud");
    assert_eq!(cap.node, "cloud");
    assert!(cap.functions >= 1 && cap.instance_slots > 0 && cap.cores > 0);

    // A 16 MiB body streams to node-2 in chunks and 16 MiB comes back.
    let big = Bytes::from(vec![b'z'; 16 << 20]);
    let req = Request {
        function: "hello".into(),
        manifest: None,
        body: big.clone(),
        via: None,
    };
    let reply = client
        .invoke(n2.quic.unwrap(), &req, &NoModules)
        .await
        .unwrap();
    assert_eq!(reply.body.len(), 7 + big.len());
    assert!(reply.body.starts_with(b"hello, zzz") && reply.body.ends_with(b"zzz"));
    // Over node-2's limit (32 MiB here) the body is refused by its declared length.
    let req = Request {
        function: "hello".into(),
        manifest: None,
        body: Bytes::from(vec![b'z'; 40 << 20]),
        via: None,
    };
    match client.invoke(n2.quic.unwrap(), &req, &NoModules).await {
        Err(QuicError::Remote(m)) => {
            assert!(m.status == 413 && m.message.contains("exceeds"), "{m:?}")
        }
        other => panic!("{other:?}"),
    }
}

/// A handshake with a peer that does not answer (killed, its address silent) holds up only
/// the calls to that peer: a call to another peer meanwhile goes through at once. (A
/// router's calls to every place once waited behind one killed member's handshake, failed
/// there by patience, and an idempotent call failed "on every place tried".)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_peer_does_not_hold_up_calls_to_others() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let node = node_1(dir.path(), &pki);
    let live = node.quic.unwrap();
    // A socket that reads nothing and answers nothing: a handshake there waits until it
    // times out.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dead = silent.local_addr().unwrap();
    let client = std::sync::Arc::new(
        Client::new(&TlsDir::load(&pki.issue("dev", "client", &[])).unwrap()).unwrap(),
    );
    let req = nope();
    let hung = {
        let (c, req) = (client.clone(), req.clone());
        tokio::spawn(async move { c.invoke(dead, &req, &NoModules).await })
    };
    // Its handshake under way first.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!hung.is_finished(), "nothing answers at {dead}");
    match client.invoke(live, &req, &NoModules).await {
        Err(QuicError::Remote(m)) => assert_eq!(m.status, 404, "{m:?}"),
        other => panic!("{other:?}"),
    }
    assert!(
        !hung.is_finished(),
        "the call to the live peer waited for the silent peer's handshake to end"
    );
    // The silent peer's call ends on its own, saying so.
    let err = hung.await.unwrap().unwrap_err().to_string();
    assert!(err.contains(&format!("cannot connect to {dead}")), "{err}");
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_refuse_peers_without_a_valid_cluster_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let node = node_1(dir.path(), &pki);
    let addr = node.quic.unwrap();
    let good = pki.issue("dev", "client", &[]);
    let expired = pki.issue("old", "client", &["--expired"]);
    let other = Pki::new(&dir.path().join("elsewhere"));
    let foreign = other.issue("spy", "client", &[]);
    let req = nope();

    // A valid client reaches the node (and gets a 404 for an unknown function).
    let ok = Client::new(&TlsDir::load(&good).unwrap()).unwrap();
    match ok.invoke(addr, &req, &NoModules).await {
        Err(QuicError::Remote(m)) => assert_eq!(m.status, 404),
        other => panic!("{other:?}"),
    }

    for (who, tls, why) in [
        ("expired", &expired, "xpired"),
        ("foreign CA", &foreign, "UnknownIssuer"),
    ] {
        let c = Client::new(&TlsDir::load(tls).unwrap()).unwrap();
        let err = c
            .invoke(addr, &req, &NoModules)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cannot connect") || err.contains("stream"),
            "{who}: {err}"
        );
        server_says(dir.path(), why).await;
    }

    // No client certificate at all.
    let tls = TlsDir::load(&good).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(tls.roots.clone())
    .with_no_client_auth();
    cfg.alpn_protocols = vec![wire::ALPN.to_vec()];
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(quinn::ClientConfig::new(std::sync::Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(cfg).unwrap(),
    )));
    let res = match ep
        .connect(addr, fogline_node::tls::PEER_NAME)
        .unwrap()
        .await
    {
        Err(e) => e.to_string(),
        Ok(conn) => {
            // TLS 1.3 finishes the client's side first; the refusal arrives as a close.
            match conn.open_bi().await {
                Err(e) => e.to_string(),
                Ok((mut s, _r)) => {
                    let _ = s.write_all(b"x").await;
                    conn.closed().await.to_string()
                }
            }
        }
    };
    assert!(
        res.contains("peer sent no certificates"),
        "no-cert client sees why: {res}"
    );
    server_says(dir.path(), "peer sent no certificates").await;
}

/// Waits until the node's log has a refusal naming `why`.
async fn server_says(dir: &Path, why: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = std::fs::read_to_string(dir.join("node.stderr")).unwrap();
        if log
            .lines()
            .any(|l| l.contains("refused QUIC connection") && l.contains(why))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no refusal naming {why:?} in the server log:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Raw frames on a real connection, for the protocol refusals.
async fn raw_stream(
    c: &Client,
    addr: SocketAddr,
) -> (quinn::Connection, quinn::SendStream, quinn::RecvStream) {
    let conn = c.connection(addr, false).await.unwrap();
    let (s, r) = conn.open_bi().await.unwrap();
    (conn, s, r)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_stalls_floods_and_forged_modules_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let node = quic_node(
        dir.path(),
        "node",
        "node-1",
        &pki.issue("node-1", "node", &[]),
        "[quic]\nmax_streams = 2\nstream_timeout = \"500ms\"\n",
    );
    let addr = node.quic.unwrap();
    let dev = TlsDir::load(&pki.issue("dev", "client", &[])).unwrap();

    // Oversized frame: the connection is closed with the reason, nothing allocated.
    let c = Client::new(&dev).unwrap();
    let (conn, mut s, _r) = raw_stream(&c, addr).await;
    let mut h = wire::data_header(0);
    h[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
    s.write_all(&h).await.unwrap();
    let why = conn.closed().await.to_string();
    assert!(why.contains("exceeds the limit"), "{why}");

    // Unknown protocol version: a clear error.
    let c = Client::new(&dev).unwrap();
    let (conn, mut s, _r) = raw_stream(&c, addr).await;
    s.write_all(&[9, 1, 0, 0, 0, 0, 0, 0]).await.unwrap();
    let why = conn.closed().await.to_string();
    assert!(why.contains("unsupported protocol version 9"), "{why}");

    // A stream that stalls mid-frame is dropped after the stream timeout, and freed.
    let c = Client::new(&dev).unwrap();
    let (_conn, mut s, mut r) = raw_stream(&c, addr).await;
    s.write_all(&[wire::VERSION, 1, 0]).await.unwrap();
    let t = Instant::now();
    let mut buf = [0u8; 16];
    let res = tokio::time::timeout(Duration::from_secs(5), r.read(&mut buf))
        .await
        .expect("reset within 5 s");
    assert!(res.is_err(), "the stalled stream is reset: {res:?}");
    assert!(t.elapsed() >= Duration::from_millis(400));
    let st = status(&node).await;
    assert_eq!(
        st["quic_streams"], 0,
        "the stalled stream's resources are freed"
    );

    // More concurrent streams than configured: refused, retryable, not queued.
    assert_eq!(
        deploy(
            &node,
            "loop",
            "misbehave/loop.wasm",
            json!({"timeout": "1500ms"})
        )
        .await
        .status(),
        201
    );
    let c = std::sync::Arc::new(Client::new(&dev).unwrap());
    let req = Request {
        function: "loop".into(),
        manifest: None,
        body: Bytes::new(),
        via: None,
    };
    let mut slow = Vec::new();
    for _ in 0..2 {
        let (c, req) = (c.clone(), req.clone());
        slow.push(tokio::spawn(async move {
            c.invoke(addr, &req, &NoModules).await
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    match c.invoke(addr, &req, &NoModules).await {
        Err(e @ QuicError::Remote(_)) => {
            assert!(e.retryable(), "{e}");
            assert!(
                e.to_string().starts_with("429") && e.to_string().contains("concurrent streams"),
                "{e}"
            );
        }
        other => panic!("third stream: {other:?}"),
    }
    for s in slow {
        match s.await.unwrap() {
            Err(QuicError::Remote(m)) => assert_eq!(m.status, 504),
            other => panic!("{other:?}"),
        }
    }

    // A module whose bytes do not match its hash is rejected.
    struct Liar;
    impl ModuleSource for Liar {
        fn module(&self, _: &Digest) -> Option<Bytes> {
            Some(Bytes::from_static(b"(module (func (export \"_start\")))"))
        }
    }
    let honest = std::fs::read(example("hello/hello.wasm")).unwrap();
    let m = FunctionManifest::wasm("forged", Digest::of(&honest));
    let req = Request {
        function: "forged".into(),
        manifest: Some(m),
        body: Bytes::new(),
        via: None,
    };
    // A device may not send code at all…
    match c.invoke(addr, &req, &Liar).await {
        Err(QuicError::Remote(e)) => {
            assert_eq!(e.status, 403);
            assert_eq!(e.message, "role client may not deploy");
        }
        other => panic!("{other:?}"),
    }
    // …and an operator's module must match its hash.
    let c = Client::new(&TlsDir::load(&pki.issue("ops", "operator", &[])).unwrap()).unwrap();
    match c.invoke(addr, &req, &Liar).await {
        Err(QuicError::Remote(e)) => {
            assert_eq!(e.status, 400);
            assert!(
                e.message.contains("do not match their hash"),
                "{}",
                e.message
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        client()
            .post(format!("{}/function/forged", node.url))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    // An Invoke that is not followed by its body in time is dropped too.
    let (_conn, mut s, mut r) = raw_stream(&c, addr).await;
    let mut buf = Vec::new();
    wire::encode(
        &Frame::Invoke(Invoke {
            function: "loop".into(),
            manifest: None,
            body_len: 10,
            trace: None,
            key: None,
            via: None,
        }),
        &mut buf,
    );
    s.write_all(&buf).await.unwrap();
    let mut b = [0u8; 8];
    let res = tokio::time::timeout(Duration::from_secs(5), r.read(&mut b))
        .await
        .expect("reset within 5 s");
    assert!(res.is_err(), "{res:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_reload_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let tls = pki.issue("node-1", "node", &[]);
    let node = quic_node(
        dir.path(),
        "node",
        "node-1",
        &tls,
        "[quic]\nreload_every = \"100ms\"\n",
    );
    let addr = node.quic.unwrap();
    let dev = pki.issue("dev", "client", &[]);
    let req = Request {
        function: "nope".into(),
        manifest: None,
        body: Bytes::new(),
        via: None,
    };
    let status = |c: Client| {
        let req = req.clone();
        async move {
            match c.invoke(addr, &req, &NoModules).await {
                Err(QuicError::Remote(m)) => Ok(m.status),
                Err(e) => Err(e.to_string()),
                Ok(_) => Ok(200),
            }
        }
    };
    assert_eq!(
        status(Client::new(&TlsDir::load(&dev).unwrap()).unwrap()).await,
        Ok(404)
    );

    // Replace the node's certificate with an expired one: new connections are refused…
    pki.issue("node-1", "node", &["--expired"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        tokio::time::sleep(Duration::from_millis(150)).await;
        match status(Client::new(&TlsDir::load(&dev).unwrap()).unwrap()).await {
            Err(e) => {
                assert!(
                    e.to_lowercase().contains("expired") || e.contains("cannot connect"),
                    "{e}"
                );
                break;
            }
            Ok(_) => assert!(
                Instant::now() < deadline,
                "the expired certificate was not picked up"
            ),
        }
    }
    // …and a fresh one is picked up again, with no restart.
    pki.issue("node-1", "node", &[]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        tokio::time::sleep(Duration::from_millis(150)).await;
        if status(Client::new(&TlsDir::load(&dev).unwrap()).unwrap()).await == Ok(404) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the renewed certificate was not picked up"
        );
    }
}

/// A call handed over with an idempotency key runs once per (caller, function, key) on
/// the member that runs it; a repeat gets the stored answer. Another key, or the same
/// key from another caller, runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_invoke_runs_once_per_caller_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let node = node_running(dir.path(), &pki, "hello").await;
    let addr = node.quic.unwrap();
    let runs = || async {
        let (_, m) = get(&authed(&node.token), format!("{}/metrics", node.url)).await;
        m.lines()
            .find_map(|l| {
                l.strip_prefix(
                    "gateway_function_invocation_total{function_name=\"hello\",code=\"200\"} ",
                )
            })
            .map_or(0, |v| v.trim().parse::<u64>().unwrap())
    };
    let a = Client::new(&TlsDir::load(&pki.issue("dev-a", "client", &[])).unwrap()).unwrap();
    let b = Client::new(&TlsDir::load(&pki.issue("dev-b", "client", &[])).unwrap()).unwrap();
    assert_eq!(
        keyed_call(addr, &a, Some("order-1"), "first").await,
        "hello, first"
    );
    assert_eq!(runs().await, 1);
    // The same key again (another body: a retry is the same call): the stored answer.
    assert_eq!(
        keyed_call(addr, &a, Some("order-1"), "second").await,
        "hello, first"
    );
    assert_eq!(runs().await, 1, "a repeated key does not run again");
    // Another key, no key, and the same key from another caller each run.
    assert_eq!(
        keyed_call(addr, &a, Some("order-2"), "third").await,
        "hello, third"
    );
    assert_eq!(keyed_call(addr, &a, None, "fourth").await, "hello, fourth");
    assert_eq!(
        keyed_call(addr, &b, Some("order-1"), "fifth").await,
        "hello, fifth"
    );
    assert_eq!(runs().await, 4);
    // Two hand-offs of one key at once: one run.
    let (x, y) = tokio::join!(
        keyed_call(addr, &a, Some("order-3"), "sixth"),
        keyed_call(addr, &a, Some("order-3"), "seventh")
    );
    assert_eq!(x, y);
    assert_eq!(runs().await, 5);
}

/// A node (`node-1`) serving QUIC with example function `f` deployed.
async fn node_running(dir: &Path, pki: &Pki, f: &str) -> NodeProc {
    let node = quic_node(dir, "node", "node-1", &pki.issue("node-1", "node", &[]), "");
    let wasm = format!("{f}/{f}.wasm");
    assert_eq!(deploy(&node, f, &wasm, json!({})).await.status(), 201);
    node
}

/// Invokes `hello` at `addr` through `c`, handing `key` with it; the answer's body.
async fn keyed_call(addr: SocketAddr, c: &Client, key: Option<&str>, body: &'static str) -> String {
    let req = Request {
        function: "hello".into(),
        manifest: None,
        body: Bytes::from_static(body.as_bytes()),
        via: None,
    };
    let reply =
        fogline_node::agent::keyed::with(key.map(str::to_string), c.invoke(addr, &req, &NoModules))
            .await
            .unwrap();
    assert_eq!(reply.result.status, 200);
    String::from_utf8(reply.body.to_vec()).unwrap()
}

/// Every answer says the member's load as it answered (calls running and queued there,
/// the answered one done): a router's fresher look than the member's last report; and
/// its start-up time, which a router takes off a cold call's to learn the function's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_carries_the_members_load() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let node = node_running(dir.path(), &pki, "wait").await;
    let addr = node.quic.unwrap();
    let c = std::sync::Arc::new(
        Client::new(&TlsDir::load(&pki.issue("dev-a", "client", &[])).unwrap()).unwrap(),
    );
    let call = |c: std::sync::Arc<Client>, ms: &'static str| async move {
        let req = Request {
            function: "wait".into(),
            manifest: None,
            body: Bytes::from_static(ms.as_bytes()),
            via: None,
        };
        let reply = c.invoke(addr, &req, &NoModules).await.unwrap();
        assert_eq!(reply.result.status, 200);
        // It also says how much of its time was start-up (loading, instantiating).
        let startup = reply.result.startup_us.expect("the start-up time");
        assert!(startup <= reply.result.run_us, "{:?}", reply.result);
        reply.result.load
    };
    // Alone (and loaded by this first call), nothing else is there.
    assert_eq!(call(c.clone(), "0").await, Some(0));
    let long = tokio::spawn(call(c.clone(), "3000"));
    // Once the long call runs, a short one's answer counts it.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let load = call(c.clone(), "0").await;
        if load == Some(1) {
            break;
        }
        assert_eq!(load, Some(0), "only the long call can be there");
        assert!(Instant::now() < deadline, "the long call was never counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        long.await.unwrap(),
        Some(0),
        "the long call's answer: it is done"
    );
}
