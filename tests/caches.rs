//! Caches that stay bounded on a node that runs for months: 50 functions (50 distinct
//! modules) deployed and called with `cache_max = 10` and a small `disk_cache_max`: compiled
//! modules in memory and artifacts on disk stay within their bounds, concurrent cold calls
//! of one module compile (or load) it once, and a deleted function's artifact goes.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use common::*;

/// `hello.wasm` with a custom section naming `i`: the same program, another module (digest).
fn variant(i: u32) -> Vec<u8> {
    let mut m = std::fs::read(example("hello/hello.wasm")).unwrap();
    let name = b"fogline-test";
    m.push(0); // custom section
    m.push((1 + name.len() + 4) as u8);
    m.push(name.len() as u8);
    m.extend_from_slice(name);
    m.extend_from_slice(&i.to_le_bytes());
    m
}

/// A counter or gauge from `/metrics`.
fn metric(text: &str, name: &str) -> u64 {
    metric_value(text, name).unwrap_or_else(|| panic!("no {name} in /metrics")) as u64
}

fn artifacts(node: &NodeProc) -> (usize, u64) {
    let files: Vec<_> = files_under(&node.data_dir.join("compiled"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    let bytes = files.iter().map(|p| p.metadata().unwrap().len()).sum();
    (files.len(), bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compiled_code_stays_within_its_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("node.toml");
    std::fs::write(
        &cfg,
        "version = 1\n[wasm]\ncache_max = 10\ndisk_cache_max = \"1Mi\"\n",
    )
    .unwrap();
    let node = NodeProc::node(dir.path(), &cfg);
    let c = authed(&node.token);
    let u = node.url.clone();
    for i in 0..50u32 {
        let r = c
            .put(format!("{u}/v1/functions/f{i}"))
            .body(variant(i))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
        let r = c
            .post(format!("{u}/function/f{i}"))
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(r.text().await.unwrap(), "hello, x");
        let m = metrics(&node).await;
        assert!(metric(&m, "fogline_code_in_memory") <= 10, "after f{i}");
        let (_, on_disk) = artifacts(&node);
        assert!(
            on_disk <= 1 << 20,
            "after f{i}: {on_disk} bytes of artifacts"
        );
    }
    let m = metrics(&node).await;
    let (files, bytes) = artifacts(&node);
    assert_eq!(metric(&m, "fogline_code_disk_bytes"), bytes);
    println!(
        "50 modules: {} in memory, {files} artifacts on disk ({bytes} bytes), {} compiles",
        metric(&m, "fogline_code_in_memory"),
        metric(&m, "fogline_compiles_total")
    );
    assert!(files < 50, "the disk bound removed none");

    // The first function is long out of memory: 16 calls at once load it once.
    let before = metric(&m, "fogline_compiles_total") + metric(&m, "fogline_artifact_loads_total");
    let calls: Vec<_> = (0..16)
        .map(|_| {
            let (c, u) = (c.clone(), u.clone());
            tokio::spawn(async move {
                let r = c
                    .post(format!("{u}/function/f0"))
                    .body("y")
                    .send()
                    .await
                    .unwrap();
                r.text().await.unwrap()
            })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap(), "hello, y");
    }
    let m = metrics(&node).await;
    let after = metric(&m, "fogline_compiles_total") + metric(&m, "fogline_artifact_loads_total");
    assert_eq!(
        after - before,
        1,
        "16 concurrent cold calls loaded the module {} times",
        after - before
    );

    // A deleted function's artifact goes with it.
    let (before, _) = artifacts(&node);
    let r = c
        .delete(format!("{u}/system/functions"))
        .json(&serde_json::json!({"functionName": "f0"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (after, _) = artifacts(&node);
    assert_eq!(after, before - 1, "f0's artifact (just loaded) was removed");
}
