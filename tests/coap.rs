//! The CoAP trigger against a real client, libcoap's `coap-client-notls` (Debian package
//! `libcoap3-bin`): confirmable and non-confirmable calls, block-wise bodies both ways,
//! every error code, malformed datagrams, duplicates answered once, separate responses, and
//! calls placed by the router of `fogline up`.
//!
//! Needs `coap-client-notls`: skipped with a message where it is missing, a failure under
//! CI=true (`.ci/run` installs it).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::net::UdpSocket;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const CLIENT: &str = "coap-client-notls";

fn have_client() -> bool {
    let ok = Command::new(CLIENT).arg("-h").output().is_ok();
    if !ok {
        skip_without(CLIENT, "apt-get install libcoap3-bin");
    }
    ok
}

/// Runs the client; returns what it printed (the payload, or `CODE diagnostic` on errors).
fn coap_client(args: &[&str]) -> String {
    let out = Command::new(CLIENT)
        .args(["-B", "20"])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}

fn uri(n: &NodeProc, path: &str) -> String {
    format!("coap://{}/{path}", n.coap.expect("the node serves CoAP"))
}

async fn deploy_wasm(n: &NodeProc, name: &str, module: &str, extra: &[&str]) {
    let mut cmd = n.cli();
    cmd.args(["deploy", name, "--wasm"])
        .arg(example(module))
        .args(extra);
    let out = run_ok(&mut cmd);
    assert!(out.contains(&format!("deployed {name}")), "{out}");
}

async fn malformed(n: &NodeProc) -> u64 {
    let m = metrics(n).await;
    m.lines()
        .find_map(|l| l.strip_prefix("fogline_coap_malformed_total "))
        .map(|v| v.trim().parse().unwrap())
        .expect("fogline_coap_malformed_total in /metrics")
}

// ---- raw datagrams, for what a client does not let a test choose --------------------------

/// A CoAP POST /function/NAME: confirmable or not, with a message id and a token.
fn post(con: bool, mid: u16, token: [u8; 2], name: &str, payload: &[u8]) -> Vec<u8> {
    let mut d = vec![if con { 0x42 } else { 0x52 }, 0x02];
    d.extend_from_slice(&mid.to_be_bytes());
    d.extend_from_slice(&token);
    d.push(0xB8); // Uri-Path (11), 8 bytes
    d.extend_from_slice(b"function");
    assert!(name.len() < 13);
    d.push(name.len() as u8); // Uri-Path again (delta 0)
    d.extend_from_slice(name.as_bytes());
    if !payload.is_empty() {
        d.push(0xFF);
        d.extend_from_slice(payload);
    }
    d
}

/// A decoded message: type (0 CON, 1 NON, 2 ACK, 3 RST), code as `c.dd`, id, token, payload.
#[derive(Debug, PartialEq)]
struct Msg {
    kind: u8,
    code: String,
    mid: u16,
    token: Vec<u8>,
    payload: Vec<u8>,
}

fn decode(d: &[u8]) -> Msg {
    let tkl = (d[0] & 0x0F) as usize;
    let mut i = 4 + tkl;
    while i < d.len() && d[i] != 0xFF {
        let (delta, len) = (d[i] >> 4, (d[i] & 0x0F) as usize);
        i += 1;
        i += match delta {
            13 => 1,
            14 => 2,
            _ => 0,
        };
        let len = match len {
            13 => {
                i += 1;
                d[i - 1] as usize + 13
            }
            14 => {
                i += 2;
                u16::from_be_bytes([d[i - 2], d[i - 1]]) as usize + 269
            }
            l => l,
        };
        i += len;
    }
    Msg {
        kind: (d[0] >> 4) & 3,
        code: format!("{}.{:02}", d[1] >> 5, d[1] & 0x1F),
        mid: u16::from_be_bytes([d[2], d[3]]),
        token: d[4..4 + tkl].to_vec(),
        payload: if i < d.len() {
            d[i + 1..].to_vec()
        } else {
            Vec::new()
        },
    }
}

fn socket() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

fn recv(s: &UdpSocket) -> Msg {
    let mut buf = [0u8; 2048];
    let n = s.recv(&mut buf).expect("an answer within 10 s");
    decode(&buf[..n])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coap_calls_from_a_real_client_run_and_fail_cleanly() {
    if !have_client() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let n = NodeProc::up(dir.path());
    deploy_wasm(
        &n,
        "hello",
        "hello/hello.wasm",
        &["--max-concurrency", "64"],
    )
    .await;
    deploy_wasm(&n, "fail", "misbehave/fail.wasm", &[]).await;
    deploy_wasm(
        &n,
        "sleep",
        "misbehave/sleep.wasm",
        &["--timeout", "1500ms", "--max-concurrency", "1"],
    )
    .await;

    // Confirmable and non-confirmable.
    let out = coap_client(&["-m", "post", "-e", "world", &uri(&n, "function/hello")]);
    assert_eq!(out.trim(), "hello, world");
    // A traceparent option (65000) puts the call in the device's trace.
    let out = coap_client(&[
        "-m",
        "post",
        "-O",
        "65000,00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "-e",
        "traced",
        &uri(&n, "function/hello"),
    ]);
    assert!(out.contains("hello, traced"), "{out}");
    let (s, body) = get(
        &authed(&n.token),
        format!("{}/v1/traces/4bf92f3577b34da6a3ce929d0e0e4736", n.url),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert!(
        body.contains("\"name\":\"coap\"") && body.contains("\"name\":\"run\""),
        "{body}"
    );
    let out = coap_client(&["-m", "post", "-N", "-e", "non", &uri(&n, "function/hello")]);
    assert_eq!(out.trim(), "hello, non");

    // An idempotency key option (65008): the function runs once per key; a repeat gets
    // the stored answer. A key that is not one is a 4.00 naming the rule.
    let before = calls(&n, "hello", 200).await;
    for _ in 0..3 {
        let out = coap_client(&[
            "-m",
            "post",
            "-O",
            "65008,reading-7",
            "-e",
            "once",
            &uri(&n, "function/hello"),
        ]);
        assert_eq!(out.trim(), "hello, once");
    }
    assert_eq!(
        calls(&n, "hello", 200).await,
        before + 1,
        "one run for one key"
    );
    let out = coap_client(&[
        "-m",
        "post",
        "-O",
        "65008,has space",
        "-e",
        "x",
        &uri(&n, "function/hello"),
    ]);
    assert!(
        out.contains("4.00") && out.contains("idempotency key"),
        "{out}"
    );

    // 16 KiB up (Block1) and down (Block2), in 1 KiB blocks.
    let body: String = (0..16 * 1024)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    let (inp, outp) = (dir.path().join("in"), dir.path().join("out"));
    std::fs::write(&inp, &body).unwrap();
    let log = coap_client(&[
        "-m",
        "post",
        "-b",
        "1024",
        "-f",
        inp.to_str().unwrap(),
        "-o",
        outp.to_str().unwrap(),
        &uri(&n, "function/hello"),
    ]);
    let got = std::fs::read_to_string(&outp).unwrap_or_else(|_| panic!("no output: {log}"));
    assert_eq!(got, format!("hello, {body}"), "{log}");

    // Errors map to CoAP codes, with a diagnostic payload.
    let out = coap_client(&["-m", "post", "-e", "x", &uri(&n, "function/nope")]);
    assert!(
        out.contains("4.04") && out.contains("\"nope\" not found"),
        "{out}"
    );
    let out = coap_client(&["-m", "get", &uri(&n, "function/hello")]);
    assert!(out.contains("4.05"), "{out}");
    let big = dir.path().join("big");
    std::fs::write(&big, vec![b'z'; 9 << 20]).unwrap(); // over the 8 MiB default
    let out = coap_client(&[
        "-m",
        "post",
        "-b",
        "1024",
        "-f",
        big.to_str().unwrap(),
        &uri(&n, "function/hello"),
    ]);
    assert!(out.contains("4.13") && out.contains("exceeds"), "{out}");
    let out = coap_client(&["-m", "post", &uri(&n, "function/fail")]);
    assert!(
        out.contains("5.00") && out.contains("exited with status"),
        "{out}"
    );

    // A slow call: acknowledged at once (an empty ACK), answered separately (here 5.04,
    // after its 1.5 s timeout), and the separate answer is sent again until acknowledged.
    let s = socket();
    let coap = n.coap.unwrap();
    let t = Instant::now();
    s.send_to(&post(true, 0x1001, [7, 7], "sleep", b""), coap)
        .unwrap();
    let ack = recv(&s);
    assert_eq!(
        (ack.kind, ack.code.as_str(), ack.mid),
        (2, "0.00", 0x1001),
        "{ack:?}"
    );
    assert!(
        t.elapsed() < Duration::from_millis(1400),
        "ACK after {:?}",
        t.elapsed()
    );
    // Meanwhile a second call finds the function at its limit: 5.03, with Max-Age.
    let s2 = socket();
    s2.send_to(&post(true, 0x2001, [8, 8], "sleep", b""), coap)
        .unwrap();
    let busy = recv(&s2);
    assert_eq!(busy.code, "5.03", "{busy:?}");
    assert!(
        String::from_utf8_lossy(&busy.payload).contains("limit"),
        "{busy:?}"
    );
    let late = recv(&s);
    assert_eq!(
        (late.kind, late.code.as_str(), late.token.as_slice()),
        (0, "5.04", &[7u8, 7][..]),
        "{late:?}"
    );
    let again = recv(&s); // not acknowledged: sent again after ACK_TIMEOUT
    assert_eq!(again, late);
    let mut ack = vec![0x60, 0];
    ack.extend_from_slice(&late.mid.to_be_bytes());
    s.send_to(&ack, coap).unwrap();

    // A retransmitted confirmable request is answered the same, and runs once.
    let before = calls(&n, "hello", 200).await;
    let req = post(true, 0x3001, [1, 2], "hello", b"once");
    s.send_to(&req, coap).unwrap();
    let first = recv(&s);
    s.send_to(&req, coap).unwrap();
    let second = recv(&s);
    assert_eq!(first.payload, b"hello, once");
    assert_eq!(first, second);
    assert_eq!(
        calls(&n, "hello", 200).await,
        before + 1,
        "the duplicate ran the function"
    );

    // Datagrams that are not CoAP are counted and dropped; the next good request is served.
    let m0 = malformed(&n).await;
    for d in [
        &b""[..],
        b"\x40",
        b"garbage!",
        b"\x80\x02\x00\x01",
        b"\x4f\x02\x00\x01\x00",
    ] {
        s.send_to(d, coap).unwrap();
    }
    let out = coap_client(&["-m", "post", "-e", "after", &uri(&n, "function/hello")]);
    assert_eq!(out.trim(), "hello, after");
    assert_eq!(malformed(&n).await, m0 + 5);
}

/// On `fogline up`, the router takes CoAP calls and places them like HTTP ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coap_calls_to_a_router_are_placed() {
    if !have_client() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut n = NodeProc::up_mesh(dir.path());
    deploy_wasm(&n, "hello", "hello/hello.wasm", &["--idempotent"]).await;
    wait_until("every member of the local mesh is alive", 15, || {
        alive(&n).len() == 4
    });
    for i in 0..10 {
        let out = coap_client(&[
            "-m",
            "post",
            "-e",
            &format!("c{i}"),
            &uri(&n, "function/hello"),
        ]);
        assert_eq!(out.trim(), format!("hello, c{i}"));
    }
    let p = placements(&authed(&n.token), &n.url, 10).await;
    let placed = p["placements"].as_array().unwrap();
    assert_eq!(placed.len(), 10, "{p}");
    for d in placed {
        let ran = d["ran_on"].as_str().unwrap();
        assert!(["edge-1", "edge-2", "cloud"].contains(&ran), "{d}");
    }
    assert!(n.terminate().success());
}

#[test]
fn raw_messages_round_trip_through_the_test_decoder() {
    let m = decode(&post(true, 9, [1, 2], "hello", b"x"));
    assert_eq!(
        (m.kind, m.code.as_str(), m.mid, m.payload.as_slice()),
        (0, "0.02", 9, &b"x"[..])
    );
}
