//! Invocations over CoAP on loopback, beside a raw UDP echo through tokio measured in the
//! same run.
//!
//! `cargo bench -p fogline-node --bench coap` (release). Prints:
//! - limit: a raw UDP round trip through tokio (a datagram the size of the CoAP request,
//!   echoed by a tokio task), one at a time;
//! - one confirmable CoAP invocation of the `hello` example, one at a time, beside the
//!   same call in-process (the node's own part);
//! - throughput with 64 requests outstanding (four client sockets, 16 each), beside the raw
//!   echo at the same depth.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "support/stats.rs"]
mod stats;
use stats::row;

use bytes::Bytes;
use fogline_core::config::NodeConfig;
use fogline_core::{Digest, FunctionManifest};
use tokio::net::UdpSocket;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run());
}

async fn run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = NodeConfig::local(
        dir.path().join("data"),
        "127.0.0.1:0".parse().expect("addr"),
    );
    cfg.coap.listen = Some("127.0.0.1:0".parse().expect("addr"));
    cfg.coap.max_exchanges = 4096;
    let running = fogline_node::bind(cfg).await.expect("node");
    let node = running.node.clone();
    let coap = running.coap_addr.expect("coap addr");
    tokio::spawn(running.serve(std::future::pending()));
    let wasm = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/hello/hello.wasm"),
    )
    .expect("example");
    let mut m = FunctionManifest::wasm("hello", Digest::of(&wasm));
    m.max_concurrency = 1024;
    node.deploy(m, Some(Bytes::from(wasm)), false)
        .await
        .expect("deploy");

    let request = |mid: u16| post(mid, b"world");
    let raw = raw_echo_server().await;
    let size = request(0).len();
    println!("request datagram: {size} bytes");

    // Limit: a raw UDP echo through tokio, one at a time.
    let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    sock.connect(raw).await.expect("connect");
    let raw_rtt = sequential(&sock, 20_000, |_| vec![0x42; size], |_| true).await;

    // The node's own part: the same call without a transport.
    let mut local = Vec::with_capacity(20_000);
    for _ in 0..20_000 {
        let t = Instant::now();
        let r = node
            .call("hello", Bytes::from_static(b"world"))
            .await
            .expect("call");
        assert_eq!(&r.body[..], b"hello, world");
        local.push(t.elapsed());
    }
    local.sort();

    // One CoAP invocation at a time.
    let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    sock.connect(coap).await.expect("connect");
    let one = sequential(&sock, 20_000, request, |reply| {
        reply.ends_with(b"hello, world") && reply[1] == 0x45
    })
    .await;

    println!("\n== one request at a time (20,000 each)");
    row("limit: raw UDP echo through tokio", &raw_rtt);
    row("hello in-process (node.call)", &local);
    row("hello over CoAP (CON, piggybacked ACK)", &one);
    let ratio = stats::p(&one, 0.5).as_secs_f64() / stats::p(&raw_rtt, 0.5).as_secs_f64();
    println!("CoAP p50 / raw UDP p50: {ratio:.2}x (target <= 2x)");

    println!("\n== 64 outstanding (4 sockets x 16), 3 s each");
    let raw_rate = throughput(
        raw,
        4,
        16,
        Duration::from_secs(3),
        move |_| vec![0x42; size],
        |_| true,
    )
    .await;
    let coap_rate = throughput(coap, 4, 16, Duration::from_secs(3), request, |r| {
        r.ends_with(b"hello, world") && r[1] == 0x45
    })
    .await;
    println!(
        "{:<44} {raw_rate:>10.0} /s",
        "limit: raw UDP echo through tokio"
    );
    println!(
        "{:<44} {coap_rate:>10.0} /s   (target >= 10,000/s)",
        "hello over CoAP"
    );
}

/// A CoAP confirmable POST /function/hello with `payload`.
fn post(mid: u16, payload: &[u8]) -> Vec<u8> {
    let mut d = vec![0x42, 0x02];
    d.extend_from_slice(&mid.to_be_bytes());
    d.extend_from_slice(&mid.to_le_bytes()); // the token
    d.push(0xB8);
    d.extend_from_slice(b"function");
    d.push(0x05);
    d.extend_from_slice(b"hello");
    d.push(0xFF);
    d.extend_from_slice(payload);
    d
}

async fn raw_echo_server() -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let addr = s.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        while let Ok((n, peer)) = s.recv_from(&mut buf).await {
            let _ = s.send_to(&buf[..n], peer).await;
        }
    });
    addr
}

/// `n` round trips one at a time; each answer must pass `ok`.
async fn sequential(
    sock: &UdpSocket,
    n: usize,
    make: impl Fn(u16) -> Vec<u8>,
    ok: impl Fn(&[u8]) -> bool,
) -> Vec<Duration> {
    let mut buf = vec![0u8; 2048];
    let mut v = Vec::with_capacity(n);
    for i in 0..n {
        let d = make(i as u16);
        let t = Instant::now();
        sock.send(&d).await.expect("send");
        let len = sock.recv(&mut buf).await.expect("recv");
        v.push(t.elapsed());
        assert!(ok(&buf[..len]), "unexpected answer {:?}", &buf[..len]);
    }
    v.sort();
    v
}

/// Answers per second with `sockets` × `depth` requests outstanding for `secs`.
async fn throughput(
    to: SocketAddr,
    sockets: usize,
    depth: usize,
    secs: Duration,
    make: impl Fn(u16) -> Vec<u8> + Send + Sync + Copy + 'static,
    ok: impl Fn(&[u8]) -> bool + Send + Sync + Copy + 'static,
) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for s in 0..sockets {
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
            sock.connect(to).await.expect("connect");
            let mut mid = (s as u16) << 12;
            for _ in 0..depth {
                mid = mid.wrapping_add(1);
                sock.send(&make(mid)).await.expect("send");
            }
            let mut buf = vec![0u8; 2048];
            while start.elapsed() < secs {
                // A lost datagram would stall this socket's window: give up on it after 1 s.
                let Ok(Ok(len)) =
                    tokio::time::timeout(Duration::from_secs(1), sock.recv(&mut buf)).await
                else {
                    mid = mid.wrapping_add(1);
                    sock.send(&make(mid)).await.expect("send");
                    continue;
                };
                assert!(ok(&buf[..len]), "unexpected answer");
                done.fetch_add(1, Ordering::Relaxed);
                mid = mid.wrapping_add(1);
                sock.send(&make(mid)).await.expect("send");
            }
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}
