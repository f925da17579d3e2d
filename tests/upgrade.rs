//! An upgrade in place: the current build opens a data folder written by the previous
//! release (tests/fixtures, made by the build of 80e6b94) and keeps its functions, its
//! admin token and its async results; what this release added works on it.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use common::*;

#[tokio::test]
async fn a_store_written_by_the_previous_release_is_served() {
    let dir = tempfile::tempdir().unwrap();
    // `fogline node`'s data folder (NodeProc::node); results older than `result_ttl` are
    // swept, and the fixture's is as old as the fixture: keep them for a century here.
    let data = dir.path().join("node");
    let cfg = dir.path().join("node.toml");
    std::fs::write(&cfg, "version = 1\n[async]\nresult_ttl = \"36500days\"\n").unwrap();
    std::fs::create_dir_all(&data).unwrap();
    let st = std::process::Command::new("tar")
        .args(["-xzf"])
        .arg(repo("tests/fixtures/store-0.1.0-80e6b94.tar.gz"))
        .arg("-C")
        .arg(&data)
        .status()
        .unwrap();
    assert!(st.success(), "tar could not unpack the fixture");
    // An artifact another engine compiled (another engine key in its name) is never loaded:
    // it is removed at start.
    let compiled = data.join("compiled");
    std::fs::create_dir_all(&compiled).unwrap();
    let stale = compiled.join(format!("{}-0123456789abcdef.cwasm", "e0".repeat(32)));
    std::fs::write(&stale, b"not this engine's").unwrap();
    let node = NodeProc::node(dir.path(), &cfg);
    assert!(!stale.exists(), "another engine's artifact was kept");
    // The admin token of the old release still opens the gateway.
    let c = authed(&node.token);
    let u = &node.url;
    let (s, body) = get(&c, format!("{u}/system/functions")).await;
    assert_eq!(s, 200, "{body}");
    let list: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    let names: Vec<&str> = list.iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["hello", "primes"]);
    assert_eq!(list[0]["namespace"], "openfaas-fn");
    assert!(list[0]["envVars"].get("GREETING").is_some(), "{body}");
    assert_eq!(list[0]["labels"]["tier"], "test");
    // Its functions run (compiled again here: the fixture carries no artifacts).
    let r = client()
        .post(format!("{u}/function/hello"))
        .body("upgraded")
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "hello, upgraded");
    // An async result stored by the old release is read by its id.
    let (s, body) = get(&c, format!("{u}/v1/calls/b89da687c92d307c08f02b4b38a8e544")).await;
    assert_eq!((s, body.as_str()), (200, "hello, 10"));
    // What this release added works on the old store.
    let out = run_ok(node.cli().args(["namespace", "create", "after-upgrade"]));
    assert!(out.contains("namespace after-upgrade created"), "{out}");
    run_ok(
        node.cli()
            .args(["secret", "create", "k", "--from-literal", "v"]),
    );
    let (_, body) = get(&c, format!("{u}/system/secrets")).await;
    assert!(body.contains("\"k\""), "{body}");
}
