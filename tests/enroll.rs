//! Enrollment by join token with real processes: a router that holds the cluster CA mints
//! a join token; `fogline join` on a "new board" (its own data folder) makes its key,
//! enrolls, writes its folder and config, starts, shows up alive in the router's mesh with
//! the token's site, and gets calls placed on it. Every refusal names its reason on both
//! sides: used up, expired, revoked, forged, another cluster's CA, a role no join token may
//! carry, a join token used on the gateway.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::*;
use serde_json::json;

fn router(d: &Path, pki: &Path) -> NodeProc {
    let enroll = format!(
        "[enroll]\nlisten = \"127.0.0.1:0\"\nca_dir = {:?}\n",
        pki.display().to_string()
    );
    member_with(d, pki, "router", "router-1", None, None, &enroll)
}

fn join_cmd(d: &Path, token: &str, name: &str) -> std::process::Command {
    let mut cmd = fogline();
    cmd.current_dir(d)
        .args(["join", token, "--id", name, "--data-dir"])
        .arg(d.join(name))
        .args([
            "--http",
            "127.0.0.1:0",
            "--quic",
            "127.0.0.1:0",
            "--mesh",
            "/ip4/127.0.0.1/tcp/0",
        ]);
    cmd
}

fn mint(r: &NodeProc, extra: &[&str]) -> String {
    let out = run_ok(r.cli().args(["token", "create", "--role"]).args(extra));
    out.lines().last().unwrap().trim().to_string()
}

/// The join token's fields, to forge variants of it.
fn fields(token: &str) -> serde_json::Value {
    let b64 = token.strip_prefix("fogjoin_").unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(b64)
            .unwrap(),
    )
    .unwrap()
}

fn encode(v: &serde_json::Value) -> String {
    format!(
        "fogjoin_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_board_joins_with_a_token_and_serves_calls() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pki = pki(d);
    let r = router(d, &pki);

    let token = mint(
        &r,
        &["node", "--ttl", "1h", "--uses", "1", "--site", "shed-3"],
    );
    assert!(token.starts_with("fogjoin_"), "{token}");
    let t0 = Instant::now();
    // As a bridge's Swarm worker is told its service (the task's environment).
    let mut cmd = join_cmd(d, &token, "edge-9");
    cmd.env("FOGLINE_SWARM_SERVICE", "fl-workers");
    let edge = NodeProc::spawn_cmd(cmd, d.join("edge-9"), d);
    let started = t0.elapsed();
    let written = std::fs::read_to_string(d.join("edge-9").join("node.toml")).unwrap();
    assert!(
        written.contains("\n[container]\nswarm_service = \"fl-workers\"\n"),
        "{written}"
    );
    // The key was made on the board; only the certificate came from the issuer.
    let tls = d.join("edge-9").join("tls");
    for f in ["cert.pem", "key.pem", "ca.pem", "mesh.key"] {
        assert!(tls.join(f).exists(), "{f}");
    }
    assert!(
        !files_under(&d.join("router-1"))
            .iter()
            .chain(files_under(&pki).iter())
            .any(|p| std::fs::read(p).unwrap_or_default()
                == std::fs::read(tls.join("key.pem")).unwrap()),
        "the board's key exists only on the board"
    );
    wait_until("the router to see edge-9 alive", 15, || {
        alive(&r).contains(&"edge-9".to_string())
    });
    let row = mesh_json(&r)["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "edge-9")
        .cloned()
        .unwrap();
    assert_eq!(row["site"], "shed-3");
    // Calls are placed on it.
    assert_eq!(
        deploy(&r, "hello", "hello/hello.wasm", json!({}))
            .await
            .status(),
        201
    );
    let c = client();
    let mut placed = String::new();
    for _ in 0..50 {
        let (s, on, body) = call(&c, &r.url, "hello", "board").await;
        if s == 200 && on == "edge-9" {
            assert_eq!(body, "hello, board");
            placed = on;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(placed, "edge-9");
    println!(
        "edge-9 started {started:?} after `fogline join` began; first call placed on it {:?} after",
        t0.elapsed()
    );
    // The router's view of the token: used up.
    let out = run_ok(r.cli().args(["token", "ls"]));
    assert!(
        out.contains("join:node") && out.contains("0 uses left"),
        "{out}"
    );

    // Used up.
    let err = run_err(&mut join_cmd(d, &token, "edge-10"));
    assert!(err.contains("the join token is used up"), "{err}");
    // Expired.
    let short = mint(&r, &["node", "--ttl", "1s"]);
    std::thread::sleep(Duration::from_millis(1500));
    let err = run_err(&mut join_cmd(d, &short, "edge-11"));
    assert!(err.contains("the join token has expired"), "{err}");
    // Revoked.
    let revoked = mint(&r, &["node"]);
    let id = fields(&revoked)["token"].as_str().unwrap()[4..20].to_string();
    run_ok(r.cli().args(["token", "revoke", &id]));
    let err = run_err(&mut join_cmd(d, &revoked, "edge-12"));
    assert!(err.contains("unknown or was revoked"), "{err}");
    // Forged: the secret changed.
    let mut f = fields(&mint(&r, &["node"]));
    let mut secret = f["token"].as_str().unwrap().to_string();
    let last = if secret.ends_with('0') { "1" } else { "0" };
    secret.pop();
    secret.push_str(last);
    f["token"] = secret.into();
    let err = run_err(&mut join_cmd(d, &encode(&f), "edge-13"));
    assert!(err.contains("the join token's secret is wrong"), "{err}");
    // Pinned to another cluster's CA: the board refuses the issuer before sending anything.
    let mut f = fields(&mint(&r, &["node"]));
    f["ca"] = "ab".repeat(32).into();
    let err = run_err(&mut join_cmd(d, &encode(&f), "edge-14"));
    assert!(
        err.contains("not of the cluster the join token names"),
        "{err}"
    );
    // No join token for a device's or an operator's role.
    let err = run_err(r.cli().args(["token", "create", "--role", "client"]));
    assert!(
        err.contains("a join token is for role node or bridge"),
        "{err}"
    );
    // A join token opens nothing on the gateway.
    let inner = fields(&mint(&r, &["node"]))["token"]
        .as_str()
        .unwrap()
        .to_string();
    let (s, body) = get(&authed(&inner), format!("{}/v1/status", r.url)).await;
    assert_eq!(s, 401);
    assert!(body.contains("only for `fogline join`"), "{body}");
    // The issuer logged and counted each refusal.
    let m = metrics(&r).await;
    let refused = m
        .lines()
        .find(|l| l.starts_with("fogline_refusals_total{reason=\"join\"}"))
        .unwrap_or_else(|| panic!("{m}"));
    assert!(refused.ends_with(" 4"), "{refused}");
    let log = std::fs::read_to_string(d.join("node.stderr")).unwrap();
    assert!(log.contains("refused an enrollment as \"edge-10\": the join token is used up"));
    drop(edge);
}

/// A member whose certificate lives 20 s renews it at two thirds of its life from its
/// issuer, without a restart and without a failed call, and keeps doing so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_renews_its_certificate_before_it_expires() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pki = pki(d);
    let enroll = format!(
        "[enroll]\nlisten = \"127.0.0.1:0\"\nca_dir = {:?}\ncert_life = \"20s\"\n",
        pki.display().to_string()
    );
    let r = member_with(d, &pki, "router", "router-1", None, None, &enroll);
    let token = mint(&r, &["node"]);
    let mut edge = NodeProc::spawn_cmd(join_cmd(d, &token, "edge-r"), d.join("edge-r"), d);
    let pid = edge.child.id();
    wait_until("the router to see edge-r alive", 15, || {
        alive(&r).contains(&"edge-r".to_string())
    });
    let first = status(&edge).await["certificate_expires"]
        .as_str()
        .unwrap()
        .to_string();
    let out = run_ok(edge.cli().arg("status"));
    assert!(
        out.contains(&format!("certificate expires {first}")),
        "{out}"
    );
    assert_eq!(
        deploy(&r, "hello", "hello/hello.wasm", json!({}))
            .await
            .status(),
        201
    );
    let dev = issue(&pki, "dev-1", "client");
    let c = client();
    let t0 = Instant::now();
    let (mut calls, mut failed) = (0, Vec::new());
    // Past the first certificate's end, and past the second renewal.
    while t0.elapsed() < Duration::from_secs(30) {
        let (s, _, body) = call(&c, &r.url, "hello", "r").await;
        calls += 1;
        if s != 200 {
            failed.push(format!("{:?} {s} {body}", t0.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !failed.is_empty() {
        let log = std::fs::read_to_string(d.join("node.stderr")).unwrap();
        let lines: Vec<&str> = log.lines().filter(|l| !l.contains("DEBUG")).collect();
        panic!(
            "{} of {calls} calls failed: {:?} .. {:?}\n{}",
            failed.len(),
            &failed[0],
            failed.last(),
            lines.join("\n")
        );
    }
    // A new connection, well after the first certificate expired, finds a valid one.
    let out = run_ok(
        fogline()
            .args(["invoke", "hello", "--data", "new", "--via"])
            .arg(format!("quic://edge-r@{}", edge.quic.unwrap()))
            .arg("--tls-dir")
            .arg(&dev),
    );
    assert_eq!(out, "hello, new");
    let now = status(&edge).await["certificate_expires"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(now > first, "{now} is not later than {first}");
    assert_eq!(edge.child.id(), pid);
    assert!(edge.child.try_wait().unwrap().is_none(), "edge-r restarted");
    let log = std::fs::read_to_string(d.join("node.stderr")).unwrap();
    let renewals = log.matches("renewed this member's certificate").count();
    assert!(
        renewals >= 2,
        "{renewals} renewals in 30 s of a 20 s certificate"
    );
    println!("{calls} calls, none failed; {renewals} renewals; expiry {first} -> {now}");
    edge.kill();
}
