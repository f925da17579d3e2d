//! `fogline up` with no flags: a whole local mesh (router, two edge nodes, a cloud bridge)
//! with zero configuration, as the README's first command promises.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_runs_a_local_mesh_with_zero_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = NodeProc::up_mesh(dir.path());
    // The client finds the gateway's token in ./.fogline, as in the README's quick start.
    let out = run_ok(
        fogline()
            .current_dir(dir.path())
            .args([
                "--gateway",
                &n.url,
                "deploy",
                "hello",
                "--idempotent",
                "--wasm",
            ])
            .arg(example("hello/hello.wasm")),
    );
    assert!(out.contains("deployed hello"), "{out}");
    wait_until("every member of the local mesh is alive", 15, || {
        alive(&n).len() == 4
    });
    assert_eq!(alive(&n), ["cloud", "edge-1", "edge-2", "router"]);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..30 {
        let r = client()
            .post(format!("{}/function/hello", n.url))
            .body("world")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let placed = r.headers()["x-fogline-placed-on"]
            .to_str()
            .unwrap()
            .to_string();
        assert_eq!(r.text().await.unwrap(), "hello, world");
        seen.insert(placed);
    }
    assert!(
        seen.iter()
            .all(|p| ["cloud (cloud)", "edge-1 (edge)", "edge-2 (edge)"].contains(&p.as_str())),
        "{seen:?}"
    );
    assert!(n.terminate().success());
}
