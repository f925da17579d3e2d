//! Certificate revocation across real members: `fogline certs revoke --push` hands the
//! CA-signed list to one member; another member, never told directly, refuses the revoked
//! device on the connection it already had open and on new ones, with the reason on both
//! sides, within 3 s; after a restart it still does; a list not signed by the CA is refused.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::{Duration, Instant};

use common::*;
use fogline_node::quic::{Client, QuicError, Request};
use fogline_node::tls::TlsDir;
use serde_json::json;

struct NoModules;
impl fogline_node::executor::ModuleSource for NoModules {
    fn module(&self, _: &fogline_core::Digest) -> Option<bytes::Bytes> {
        None
    }
}

async fn hello(c: &Client, addr: std::net::SocketAddr) -> Result<String, String> {
    let req = Request {
        function: "hello".into(),
        manifest: None,
        body: bytes::Bytes::from_static(b"dev"),
        via: None,
    };
    match c.invoke(addr, &req, &NoModules).await {
        Ok(r) => Ok(String::from_utf8_lossy(&r.body).into_owned()),
        Err(QuicError::Remote(m)) => Err(m.message),
        Err(e) => Err(e.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_certificate_is_refused_everywhere_within_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pki = pki(d);
    let edge1 = member(d, &pki, "node", "edge-1", None, None);
    let seed = mesh_json(&edge1)["self"].as_str().unwrap().to_string();
    let mut edge2 = member(d, &pki, "node", "edge-2", Some(&seed), None);
    wait_until("the two members see each other", 15, || {
        alive(&edge1).len() == 2 && alive(&edge2).len() == 2
    });
    assert_eq!(
        deploy(&edge2, "hello", "hello/hello.wasm", json!({}))
            .await
            .status(),
        201
    );
    let addr2 = edge2.quic.unwrap();

    // A device with a client certificate, its connection to edge-2 open.
    let dev = issue(&pki, "dev-7", "client");
    let client = std::sync::Arc::new(Client::new(&TlsDir::load(&dev).unwrap()).unwrap());
    assert_eq!(hello(&client, addr2).await.unwrap(), "hello, dev");

    // A list signed with another CA's key is refused by name.
    let other = d.join("other-ca");
    run_ok(fogline().args(["certs", "init", "--dir"]).arg(&other));
    let err = run_err(
        edge1
            .cli()
            .args(["certs", "revoke", "dev-7", "--ca"])
            .arg(&other)
            .args(["--push", &edge1.url]),
    );
    assert!(
        err.contains("400") && err.contains("does not verify with this cluster's CA"),
        "{err}"
    );

    // Revoked, and handed to edge-1 only.
    let t0 = Instant::now();
    let out = run_ok(
        edge1
            .cli()
            .args(["certs", "revoke", "dev-7", "--ca"])
            .arg(&pki)
            .args(["--push", &edge1.url]),
    );
    assert!(
        out.contains("revoked the certificate of dev-7 (sha256 "),
        "{out}"
    );
    assert!(out.contains("taken; spreading over the mesh"), "{out}");
    // edge-2 hears it over the mesh and closes the open connection: the device's next
    // call on it fails, naming the reason.
    let why = loop {
        match hello(&client, addr2).await {
            Ok(_) if t0.elapsed() < Duration::from_secs(10) => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Ok(_) => panic!("edge-2 still serves dev-7 10 s after the revocation"),
            Err(e) => break e,
        }
    };
    let took = t0.elapsed();
    println!("edge-2 refused dev-7 {took:?} after the list was pushed to edge-1");
    assert!(why.contains("certificate of dev-7 is revoked"), "{why}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
    // A new connection is refused too, from the CLI, with the reason.
    let err = run_err(
        fogline()
            .args(["invoke", "hello", "--data", "x", "--via"])
            .arg(format!("quic://{addr2}"))
            .arg("--tls-dir")
            .arg(&dev),
    );
    assert!(err.contains("certificate of dev-7 is revoked"), "{err}");
    // The refusing side logs and counts it.
    let m = metrics(&edge2).await;
    assert!(m.contains("reason=\"revoked\""), "{m}");
    let log = std::fs::read_to_string(d.join("node.stderr")).unwrap();
    assert!(log.contains("refused QUIC peer: certificate of dev-7 is revoked"));
    // Another device is still served.
    let dev8 = issue(&pki, "dev-8", "client");
    let other_client = Client::new(&TlsDir::load(&dev8).unwrap()).unwrap();
    assert_eq!(hello(&other_client, addr2).await.unwrap(), "hello, dev");

    // A mesh member's certificate revoked: the others stop hearing it and show it gone.
    run_ok(
        edge1
            .cli()
            .args(["certs", "revoke", "edge-1", "--ca"])
            .arg(&pki)
            .args(["--push", &edge1.url]),
    );
    let took = wait_until("edge-2 no longer counts edge-1 alive", 3, || {
        !alive(&edge2).contains(&"edge-1".to_string())
    });
    println!("edge-2 dropped edge-1 from its view {took:?} after edge-1's revocation");
    let log = std::fs::read_to_string(d.join("node.stderr")).unwrap();
    assert!(log.contains("mesh member edge-1 is no longer heard: certificate of edge-1 is revoked"));

    // After a restart, alone (no member to hear it from), edge-2 still refuses dev-7.
    assert!(edge2.terminate().success());
    drop(edge2);
    let edge2 = member(d, &pki, "node", "edge-2", None, None);
    let addr2 = edge2.quic.unwrap();
    let fresh = Client::new(&TlsDir::load(&dev).unwrap()).unwrap();
    let err = hello(&fresh, addr2).await.unwrap_err();
    assert!(err.contains("certificate of dev-7 is revoked"), "{err}");
    let list: serde_json::Value = authed(&edge2.token)
        .get(format!("{}/v1/revocations", edge2.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(list["list"].as_str().unwrap().contains("dev-7"), "{list}");
}
