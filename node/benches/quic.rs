//! Invocations over QUIC with mutual TLS on loopback, beside raw quinn measured in the same run.
//!
//! `cargo bench -p fogline-node --bench quic` (release). Prints:
//! - limit: a raw quinn echo round trip (open a stream, send 1 KiB, read 1 KiB back) on a
//!   connection with the same TLS and transport settings;
//! - one invocation of the `hello` example with a 1 KiB body, one stream at a time, beside
//!   the same call in-process and a Status exchange (the protocol without a call);
//! - throughput with 64 concurrent streams;
//! - a full mTLS handshake, and a resumed connection's first invocation (0-RTT, idempotent),
//!   each beside the same against the raw echo server;
//! - a 16 MiB request body streamed to a function, and echoed, beside a raw 16 MiB echo.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "support/echo.rs"]
mod echo;
#[path = "support/stats.rs"]
mod stats;
use echo::{measure, raw_echo};
use stats::{p, row};

use bytes::Bytes;
use fogline_core::config::NodeConfig;
use fogline_core::{Digest, FunctionManifest};
use fogline_node::executor::ModuleSource;
use fogline_node::quic::{Client, QuicLimits, Request};
use fogline_node::tls::{self, Role, TlsDir, Validity};

struct NoModules;
impl ModuleSource for NoModules {
    fn module(&self, _: &Digest) -> Option<Bytes> {
        None
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run());
}

async fn run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = dir.path().join("pki");
    tls::init_ca(&pki).expect("ca");
    tls::issue(
        &pki,
        "node",
        Role::Node,
        &pki.join("node"),
        Validity::Days(1),
    )
    .expect("node cert");
    tls::issue(
        &pki,
        "dev",
        Role::Client,
        &pki.join("dev"),
        Validity::Days(1),
    )
    .expect("client cert");
    // The resumed-connection figure is a router's 0-RTT call: routers send the manifest.
    tls::issue(
        &pki,
        "router",
        Role::Router,
        &pki.join("router"),
        Validity::Days(1),
    )
    .expect("router cert");

    // A node agent with QUIC, as `fogline node` runs it.
    let mut cfg = NodeConfig::local(
        dir.path().join("data"),
        "127.0.0.1:0".parse().expect("addr"),
    );
    cfg.quic.listen = Some("127.0.0.1:0".parse().expect("addr"));
    cfg.quic.tls_dir = Some(pki.join("node"));
    cfg.quic.max_streams = 1024;
    cfg.http.max_body = fogline_core::units::ByteSize::mib(32);
    cfg.wasm.max_output = fogline_core::units::ByteSize::mib(32);
    let limits = QuicLimits::from_config(&cfg);
    let running = fogline_node::bind(cfg).await.expect("node");
    let node = running.node.clone();
    let addr = running.quic_addr.expect("quic addr");
    tokio::spawn(running.serve(std::future::pending()));
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    for (name, file) in [
        ("hello", "hello/hello.wasm"),
        ("primes", "primes/primes.wasm"),
    ] {
        let wasm = std::fs::read(examples.join(file)).expect("example");
        let mut m = FunctionManifest::wasm(name, Digest::of(&wasm));
        m.idempotent = true;
        m.max_concurrency = 1024;
        node.deploy(m, Some(Bytes::from(wasm)), false)
            .await
            .expect("deploy");
    }

    let dev = TlsDir::load(&pki.join("dev")).expect("client tls");
    let raw_addr = raw_echo_server(&TlsDir::load(&pki.join("node")).expect("tls"), &limits).await;
    let client = Arc::new(Client::new(&dev).expect("client"));
    let body = Bytes::from(vec![b'x'; 1024]);

    // Limit: raw quinn echo of 1 KiB on one stream at a time.
    let conn = client
        .connection(raw_addr, false)
        .await
        .expect("raw connection");
    let raw = measure(5000, || {
        let conn = conn.clone();
        let body = body.clone();
        async move { raw_echo(&conn, &body).await }
    })
    .await;

    // The node's own part: the same call without a transport.
    let local = measure(5000, || {
        let (node, body) = (node.clone(), body.clone());
        async move {
            let r = node.call("hello", body).await.expect("call");
            assert_eq!(r.body.len(), 7 + 1024);
        }
    })
    .await;

    let req = Request {
        function: "hello".into(),
        manifest: None,
        body: body.clone(),
        via: None,
    };
    let one = measure(5000, || {
        let (client, req) = (client.clone(), req.clone());
        async move {
            let r = client.invoke(addr, &req, &NoModules).await.expect("invoke");
            assert_eq!(r.body.len(), 7 + 1024);
        }
    })
    .await;

    // The protocol alone: a Status exchange (a frame each way, no body, no call).
    let status = measure(5000, || {
        let client = client.clone();
        async move {
            client.status(addr).await.expect("status");
        }
    })
    .await;

    // 64 concurrent streams on one connection, for 5 s.
    let done = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + Duration::from_secs(5);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (client, req, done) = (client.clone(), req.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < stop {
                client.invoke(addr, &req, &NoModules).await.expect("invoke");
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let rate = done.load(Ordering::Relaxed) as f64 / t0.elapsed().as_secs_f64();

    // Full handshakes: a fresh client (no session to resume) each time; the same to the
    // raw server as the limit.
    let mut hs = Vec::new();
    let mut raw_hs = Vec::new();
    for _ in 0..200 {
        let c = Client::new(&dev).expect("client");
        hs.push(c.handshake_time(addr).await.expect("handshake"));
        let c = Client::new(&dev).expect("client");
        raw_hs.push(c.handshake_time(raw_addr).await.expect("raw handshake"));
    }
    hs.sort();
    raw_hs.sort();

    // Resumed connection: same client, connection dropped, reconnect + first invocation.
    let router = TlsDir::load(&pki.join("router")).expect("router tls");
    let resumer = Client::new(&router).expect("client");
    let mut hello = FunctionManifest::wasm(
        "hello",
        Digest::of(&std::fs::read(examples.join("hello/hello.wasm")).expect("wasm")),
    );
    hello.idempotent = true;
    hello.max_concurrency = 1024;
    let idem = Request {
        function: "hello".into(),
        manifest: Some(hello),
        body: body.clone(),
        via: None,
    };
    resumer
        .invoke(addr, &idem, &NoModules)
        .await
        .expect("prime the session");
    let mut resumed = Vec::new();
    for _ in 0..200 {
        resumer.forget(addr).await; // closes the connection; the session stays cached
        let t = Instant::now();
        resumer
            .invoke(addr, &idem, &NoModules)
            .await
            .expect("resumed invoke");
        resumed.push(t.elapsed());
    }
    resumed.sort();

    // Limit: a resumed connection's first raw echo of 1 KiB, sent as 0-RTT data too.
    let raw_resumer = Client::new(&dev).expect("client");
    raw_echo(
        &raw_resumer.connection(raw_addr, true).await.expect("conn"),
        &body,
    )
    .await;
    let mut raw_resumed = Vec::new();
    for _ in 0..200 {
        raw_resumer.forget(raw_addr).await; // closes the connection; the session stays cached
        let t = Instant::now();
        let c = raw_resumer.connection(raw_addr, true).await.expect("conn");
        raw_echo(&c, &body).await;
        raw_resumed.push(t.elapsed());
    }
    raw_resumed.sort();

    // 16 MiB request body to a function that reads only the start of it (primes), and the
    // same body echoed back by hello.
    let big = Bytes::from(vec![b'7'; 16 << 20]);
    let up = Request {
        function: "primes".into(),
        manifest: None,
        body: big.clone(),
        via: None,
    };
    let echo = Request {
        function: "hello".into(),
        manifest: None,
        body: big.clone(),
        via: None,
    };
    let mut up_t = Vec::new();
    let mut echo_t = Vec::new();
    let mut raw_big = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        raw_echo(&conn, &big).await;
        raw_big.push(t.elapsed());
        let t = Instant::now();
        let _ = client.invoke(addr, &up, &NoModules).await;
        up_t.push(t.elapsed());
        let t = Instant::now();
        let r = client.invoke(addr, &echo, &NoModules).await.expect("echo");
        echo_t.push(t.elapsed());
        assert_eq!(r.body.len(), 7 + big.len());
    }
    up_t.sort();
    echo_t.sort();
    raw_big.sort();
    let mb = big.len() as f64 / 1e6;

    println!(
        "QUIC on loopback, mutual TLS 1.3, {} cores",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    row("limit: raw quinn echo round trip, 1 KiB", &raw);
    row("fogline invoke hello, 1 KiB, 1 stream", &one);
    row("the same call in-process, no transport", &local);
    row("Status exchange: framing, no body, no call", &status);
    println!(
        "ratio p50: {:.2}x the raw round trip",
        p(&one, 0.5).as_secs_f64() / p(&raw, 0.5).as_secs_f64()
    );
    println!("fogline invoke hello, 64 concurrent streams: {rate:.0} invocations/s");
    row("limit: raw quinn full handshake", &raw_hs);
    row("full mTLS handshake", &hs);
    row("limit: raw quinn resumed, first echo", &raw_resumed);
    row("resumed connection, first invocation", &resumed);
    println!(
        "limit: raw quinn echo of 16 MiB: p50 {:.1} ms = {:.0} MB/s each way",
        p(&raw_big, 0.5).as_secs_f64() * 1e3,
        mb / p(&raw_big, 0.5).as_secs_f64()
    );
    println!(
        "16 MiB body streamed (upload to primes): p50 {:.1} ms = {:.0} MB/s",
        p(&up_t, 0.5).as_secs_f64() * 1e3,
        mb / p(&up_t, 0.5).as_secs_f64()
    );
    println!(
        "16 MiB echoed (up and back via hello): p50 {:.1} ms = {:.0} MB/s each way",
        p(&echo_t, 0.5).as_secs_f64() * 1e3,
        mb / p(&echo_t, 0.5).as_secs_f64()
    );
}

/// A bare quinn server that echoes each stream, on an endpoint with the node's TLS, ALPN
/// and transport settings.
async fn raw_echo_server(tls: &TlsDir, limits: &QuicLimits) -> SocketAddr {
    let ep = fogline_node::triggers::quic::bind_server(
        "127.0.0.1:0".parse().expect("addr"),
        tls,
        limits,
    )
    .expect("endpoint");
    echo::serve_echo(ep)
}
