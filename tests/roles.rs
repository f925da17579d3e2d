//! Roles on the links between tiers, against a real node over QUIC: every role tries every
//! frame, and each refusal names the role and the action on both sides and is counted;
//! `fogline deploy --via quic://` works with an operator certificate and is refused with a
//! client's; a device's bundle carries no mesh key, so it cannot join the mesh.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use bytes::Bytes;
use common::*;
use fogline_core::{Digest, FunctionManifest};
use fogline_node::executor::ModuleSource;
use fogline_node::quic::{Client, QuicError, Request};
use fogline_node::tls::TlsDir;

struct Module(Bytes);
impl ModuleSource for Module {
    fn module(&self, d: &Digest) -> Option<Bytes> {
        (Digest::of(&self.0) == *d).then(|| self.0.clone())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_tries_every_frame() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pki = pki(d);
    let tls = issue(&pki, "edge-9", "node");
    let cfg = d.join("edge-9.toml");
    std::fs::write(&cfg, "version = 1\n").unwrap();
    let node = NodeProc::role(
        d,
        "node",
        "edge-9",
        &cfg,
        &["--quic", "127.0.0.1:0", "--tls-dir", tls.to_str().unwrap()],
    );
    let addr = node.quic.unwrap();
    let wasm = Bytes::from(std::fs::read(example("hello/hello.wasm")).unwrap());
    deploy(&node, "hello", "hello/hello.wasm", serde_json::json!({})).await;

    for role in ["client", "operator", "node", "router", "bridge"] {
        let c =
            Client::new(&TlsDir::load(&issue(&pki, &format!("as-{role}"), role)).unwrap()).unwrap();
        let may_deploy = matches!(role, "operator" | "router" | "bridge");
        // Status and a plain invocation: every role.
        assert_eq!(c.status(addr).await.unwrap().node, "edge-9", "{role}");
        let plain = Request {
            function: "hello".into(),
            manifest: None,
            body: Bytes::from_static(b"x"),
            via: None,
        };
        let r = c.invoke(addr, &plain, &Module(wasm.clone())).await.unwrap();
        assert_eq!(&r.body[..], b"hello, x", "{role}");
        // An invocation that sends a manifest (deploys it), and a Prepare.
        let mut m = FunctionManifest::wasm(format!("by-{role}"), Digest::of(&wasm));
        m.idempotent = false;
        let with = Request {
            function: m.name.clone(),
            manifest: Some(m.clone()),
            body: Bytes::from_static(b"y"),
            via: None,
        };
        let sent = c.invoke(addr, &with, &Module(wasm.clone())).await;
        let prepared = c.prepare(addr, &m, &Module(wasm.clone())).await;
        if may_deploy {
            assert_eq!(&sent.unwrap().body[..], b"hello, y", "{role}");
            assert!(prepared.is_ok(), "{role}: {prepared:?}");
        } else {
            for (what, r, action) in [
                ("invoke with a manifest", sent.map(|_| ()), "deploy"),
                // A Prepare carries a manifest: a deploy first.
                ("prepare", prepared.map(|_| ()), "deploy"),
            ] {
                match r {
                    Err(QuicError::Remote(e)) => {
                        assert_eq!(e.status, 403, "{role} {what}");
                        assert_eq!(e.message, format!("role {role} may not {action}"));
                    }
                    other => panic!("{role} {what}: {other:?}"),
                }
            }
        }
    }
    // Counted by role and action, and logged with the peer's name.
    let m = metrics(&node).await;
    for role in ["client", "node"] {
        let line = format!(
            "fogline_refusals_total{{reason=\"role\",role=\"{role}\",action=\"deploy\"}} 2"
        );
        assert!(m.contains(&line), "{line} in {m}");
    }
    let log = std::fs::read_to_string(d.join("node.stderr")).unwrap();
    assert!(
        log.contains("peer=as-client") && log.contains("role client may not deploy"),
        "{log}"
    );
    // What the refused roles tried did not land; what the others deployed did.
    let names: Vec<String> = client()
        .get(format!("{}/system/functions", node.url))
        .bearer_auth(&node.token)
        .send()
        .await
        .unwrap()
        .json::<Vec<serde_json::Value>>()
        .await
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["by-bridge", "by-operator", "by-router", "hello"]);

    // The CLI deploys over QUIC with an operator certificate, and not with a client's.
    let out = run_ok(
        fogline()
            .args(["deploy", "viaq", "--wasm"])
            .arg(example("hello/hello.wasm"))
            .args(["--via", &format!("quic://edge-9@{addr}"), "--tls-dir"])
            .arg(pki.join("as-operator")),
    );
    assert!(
        out.contains("deployed viaq") && out.contains("on edge-9 over QUIC"),
        "{out}"
    );
    let r = client()
        .post(format!("{}/function/viaq", node.url))
        .body("q")
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "hello, q");
    let err = run_err(
        fogline()
            .args(["deploy", "nope", "--wasm"])
            .arg(example("hello/hello.wasm"))
            .args(["--via", &format!("quic://{addr}"), "--tls-dir"])
            .arg(pki.join("as-client")),
    );
    assert!(err.contains("403 role client may not deploy"), "{err}");
}

#[test]
fn a_device_bundle_cannot_join_the_mesh() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let dev = issue(&pki, "dev-1", "client");
    let ops = issue(&pki, "ops-1", "operator");
    assert!(!dev.join("mesh.key").exists() && !ops.join("mesh.key").exists());
    assert!(issue(&pki, "edge-1", "node").join("mesh.key").exists());
    let node = |cfg_text: String, extra: &[&str]| {
        let cfg = dir.path().join("n.toml");
        std::fs::write(&cfg, cfg_text).unwrap();
        run_err(
            fogline()
                .args(["node", "--config"])
                .arg(&cfg)
                .arg("--data-dir")
                .arg(dir.path().join("data"))
                .args(["--http", "127.0.0.1:0", "--mesh", "/ip4/127.0.0.1/tcp/0"])
                .args(extra),
        )
    };
    // Pointed at the device's folder for its mesh key: there is none to join with.
    let err = node(
        format!(
            "version = 1\n[mesh]\nkey_file = \"{}\"\n",
            dev.join("mesh.key").display()
        ),
        &[],
    );
    assert!(err.contains("mesh.key"), "{err}");
    // And a node does not start with a device's certificate at all.
    let err = node(
        "version = 1\n".into(),
        &["--tls-dir", dev.to_str().unwrap()],
    );
    assert!(
        err.contains("needs a certificate of role node") && err.contains("is client"),
        "{err}"
    );
}
