//! The gateway over HTTPS (`--https`) with the member's own certificate, checked with curl
//! against the cluster CA; the CLI reaches it with `--cacert`; a node serving plain HTTP on
//! a non-loopback address warns at start.
//!
//! Needs `curl` (installed by `.ci/run`): skipped with a message where it is missing, a
//! failure under CI=true.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::process::Command;

use common::*;

fn have_curl() -> bool {
    let ok = Command::new("curl").arg("--version").output().is_ok();
    if !ok {
        skip_without("curl", "apt-get install curl");
    }
    ok
}

fn curl(args: &[&str]) -> (bool, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn the_gateway_serves_https_with_the_members_certificate() {
    if !have_curl() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pki = pki(d);
    let tls = issue(&pki, "edge-s", "node");
    let cfg = d.join("n.toml");
    std::fs::write(&cfg, "version = 1\n").unwrap();
    let node = NodeProc::role(
        d,
        "node",
        "edge-s",
        &cfg,
        &["--tls-dir", tls.to_str().unwrap(), "--https"],
    );
    assert!(node.url.starts_with("https://127.0.0.1:"), "{}", node.url);
    let ca = pki.join("ca.pem");
    let (ok, out) = curl(&[
        "--cacert",
        ca.to_str().unwrap(),
        &format!("{}/healthz", node.url),
    ]);
    assert!(ok && out == "OK", "{out}");
    // Without the cluster's CA the certificate is not trusted; plain HTTP is not served.
    let (ok, out) = curl(&[&format!("{}/healthz", node.url)]);
    assert!(!ok, "{out}");
    let plain = node.url.replacen("https://", "http://", 1);
    let (ok, _) = curl(&[&format!("{plain}/healthz")]);
    assert!(!ok, "plain HTTP on the HTTPS port");
    // The CLI deploys through it, trusting the cluster CA.
    let out = run_ok(
        node.cli()
            .args([
                "--cacert",
                ca.to_str().unwrap(),
                "deploy",
                "hello",
                "--wasm",
            ])
            .arg(example("hello/hello.wasm")),
    );
    assert!(out.contains("deployed hello"), "{out}");
    let (ok, out) = curl(&[
        "--cacert",
        ca.to_str().unwrap(),
        "-d",
        "tls",
        &format!("{}/function/hello", node.url),
    ]);
    assert!(ok && out == "hello, tls", "{out}");
}

#[test]
fn plain_http_on_a_network_address_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = d.join("n.toml");
    std::fs::write(&cfg, "version = 1\n[http]\nlisten = \"0.0.0.0:0\"\n").unwrap();
    let mut cmd = fogline();
    cmd.current_dir(d)
        .args(["node", "--config"])
        .arg(&cfg)
        .arg("--data-dir")
        .arg(d.join("n"));
    let mut node = NodeProc::spawn_cmd(cmd, d.join("n"), d);
    assert!(node.terminate().success());
    let log = std::fs::read_to_string(d.join("node.stderr")).unwrap();
    assert!(log.contains("serves plain HTTP on 0.0.0.0:"), "{log}");
}
