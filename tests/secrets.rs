//! Secrets against a real `fogline node`: created from the CLI, read by a Wasm function at
//! /var/openfaas/secrets/NAME (only its own, read-only), never listed with values, sealed
//! at rest, refreshed when updated, laid out again after a restart and gone from memory at
//! stop. (The container sandbox's side is in tests/containers.rs.)

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use common::*;

const VALUE: &str = "hunter2-s3cret-value";

fn config(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("node.toml");
    std::fs::write(&path, "version = 1\n").unwrap();
    path
}

/// Folders under /dev/shm/fogline-*/ holding function `key`'s secrets.
fn laid_out(key: &str) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for user in std::fs::read_dir("/dev/shm")
        .into_iter()
        .flatten()
        .flatten()
    {
        if !user.file_name().to_string_lossy().starts_with("fogline-") {
            continue;
        }
        for member in std::fs::read_dir(user.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let d = member.path().join(key);
            if d.is_dir() {
                out.push(d);
            }
        }
    }
    out
}

async fn call(c: &reqwest::Client, u: &str, f: &str, body: &'static str) -> (u16, String) {
    let r = c
        .post(format!("{u}/function/{f}"))
        .body(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test]
async fn a_function_reads_only_its_own_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let mut node = NodeProc::node(dir.path(), &cfg);
    // Folders left by members killed in earlier runs are not this member's.
    let before = laid_out("readsecret.team-s");
    let ours = || {
        let mut v = laid_out("readsecret.team-s");
        v.retain(|p| !before.contains(p));
        v
    };
    let u = node.url.clone();
    let admin = authed(&node.token);
    let out = run_ok(node.cli().args(["namespace", "create", "team-s"]));
    let tok = out.lines().last().unwrap().to_string();
    let team = authed(&tok);
    let as_team = |args: &[&str]| {
        let mut c = fogline();
        c.args(["--gateway", &u, "--token", &tok, "--namespace", "team-s"])
            .args(args);
        c
    };

    let out = run_ok(&mut as_team(&[
        "secret",
        "create",
        "db-password",
        "--from-literal",
        VALUE,
    ]));
    assert!(
        out.contains("secret db-password created in team-s"),
        "{out}"
    );
    let file = dir.path().join("key.bin");
    std::fs::write(&file, [0u8, 1, 2, 255]).unwrap();
    run_ok(as_team(&["secret", "create", "api-key", "--from-file"]).arg(&file));
    run_ok(
        node.cli()
            .args(["secret", "create", "other", "--from-literal", "not-yours"]),
    );
    let err = run_err(&mut as_team(&[
        "secret",
        "create",
        "db-password",
        "--from-literal",
        "x",
    ]));
    assert!(
        err.contains("409") && err.contains("exists already"),
        "{err}"
    );
    let err = run_err(&mut as_team(&[
        "secret",
        "create",
        "../escape",
        "--from-literal",
        "x",
    ]));
    assert!(err.contains("400") && err.contains("secret name"), "{err}");
    // Names only, never values; and only the token's namespace.
    let out = run_ok(&mut as_team(&["secret", "ls"]));
    assert_eq!(out, "api-key\ndb-password\n");
    let r = team
        .get(format!("{u}/system/secrets?namespace=team-s"))
        .send()
        .await
        .unwrap();
    let body = r.text().await.unwrap();
    assert!(
        !body.contains(VALUE) && body.contains("db-password"),
        "{body}"
    );
    let r = team
        .get(format!("{u}/system/secrets"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "another namespace's secrets");

    // Deployed with two of them; a secret of another namespace is not found from here.
    let wasm = example("secrets/readsecret.wasm");
    let out = run_ok(
        as_team(&[
            "deploy",
            "readsecret",
            "--secret",
            "db-password",
            "--secret",
            "api-key",
            "--env",
            "MODE=test",
            "--wasm",
        ])
        .arg(&wasm),
    );
    assert!(out.contains("deployed readsecret"), "{out}");
    let err = run_err(as_team(&["deploy", "peek", "--secret", "other", "--wasm"]).arg(&wasm));
    assert!(
        err.contains("400")
            && err.contains("secret \"other\" does not exist in namespace \"team-s\""),
        "{err}"
    );
    let f = "readsecret.team-s";
    assert_eq!(call(&team, &u, f, "db-password").await, (200, VALUE.into()));
    let r = team
        .post(format!("{u}/function/{f}"))
        .body("api-key")
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), [0u8, 1, 2, 255]);
    let (s, listing) = call(&team, &u, f, "ls").await;
    let mut names: Vec<&str> = listing.lines().collect();
    names.sort();
    assert_eq!(
        (s, names),
        (200, vec!["api-key", "db-password"]),
        "only its own"
    );
    let (s, out) = call(&team, &u, f, "write:db-password").await;
    assert!(
        s != 200 && !out.contains("wrote"),
        "secrets are read-only: {s} {out}"
    );
    assert_eq!(call(&team, &u, f, "db-password").await, (200, VALUE.into()));
    let (s, _) = call(&team, &u, f, "other").await;
    assert_ne!(s, 200, "not its secret");

    // The value appears in no listing, log, or metric, and nowhere in the data folder.
    for path in [
        "/system/functions?namespace=team-s",
        "/system/function/readsecret?namespace=team-s",
        "/system/logs?name=readsecret&namespace=team-s",
    ] {
        let (_, body) = get(&team, format!("{u}{path}")).await;
        assert!(
            !body.contains(VALUE) && !body.contains("test"),
            "{path}: {body}"
        );
    }
    let (_, listed) = get(
        &team,
        format!("{u}/system/function/readsecret?namespace=team-s"),
    )
    .await;
    assert!(
        listed.contains("\"secrets\":[\"db-password\",\"api-key\"]"),
        "{listed}"
    );
    let m = metrics(&node).await;
    assert!(!m.contains(VALUE));
    for entry in files_under(&node.data_dir) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        assert!(
            !bytes.windows(VALUE.len()).any(|w| w == VALUE.as_bytes()),
            "{} holds the secret in the clear",
            entry.display()
        );
    }
    let stderr = std::fs::read_to_string(dir.path().join("node.stderr")).unwrap();
    assert!(!stderr.contains(VALUE), "the node's log holds the secret");
    // Laid out on a memory-backed filesystem, in a folder of the function's own.
    let folders = ours();
    assert_eq!(folders.len(), 1, "{folders:?}");

    // Updated: the function reads the new value at its next call.
    run_ok(&mut as_team(&[
        "secret",
        "update",
        "db-password",
        "--from-literal",
        "rotated",
    ]));
    assert_eq!(
        call(&team, &u, f, "db-password").await,
        (200, "rotated".into())
    );

    // A restart lays them out again; a clean stop takes them out of memory.
    assert!(node.terminate().success());
    assert!(ours().is_empty(), "secrets outlived the member in /dev/shm");
    drop(node);
    let node = NodeProc::node(dir.path(), &cfg);
    let u = node.url.clone();
    assert_eq!(
        call(&team, &u, f, "db-password").await,
        (200, "rotated".into())
    );

    // Removed: 204, then 404; the function no longer finds the file.
    let rm = |name: &str| {
        let mut c = fogline();
        c.args([
            "--gateway",
            &u,
            "--token",
            &tok,
            "-n",
            "team-s",
            "secret",
            "rm",
            name,
        ]);
        c
    };
    run_ok(&mut rm("db-password"));
    let err = run_err(&mut rm("db-password"));
    assert!(err.contains("404"), "{err}");
    let (s, _) = call(&team, &u, f, "db-password").await;
    assert_ne!(s, 200);
    // Another namespace's token may not touch them.
    let r = admin
        .get(format!("{u}/system/secrets"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.text().await.unwrap().trim(),
        r#"[{"name":"other","namespace":"openfaas-fn"}]"#
    );
}

/// On `fogline up` the router keeps the secrets; the edge node a call is placed on gets
/// them from it over QUIC as it deploys the function, and again when one changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_follow_a_function_to_the_member_it_is_placed_on() {
    let dir = tempfile::tempdir().unwrap();
    let up = NodeProc::up_mesh(dir.path());
    let u = up.url.clone();
    run_ok(
        up.cli()
            .args(["secret", "create", "db-password", "--from-literal", VALUE]),
    );
    let wasm = example("secrets/readsecret.wasm");
    run_ok(
        up.cli()
            .args(["deploy", "readsecret", "--secret", "db-password", "--wasm"])
            .arg(&wasm),
    );
    let c = client();
    let mut placed = std::collections::BTreeSet::new();
    for _ in 0..12 {
        let r = c
            .post(format!("{u}/function/readsecret"))
            .body("db-password")
            .send()
            .await
            .unwrap();
        let node = r
            .headers()
            .get("x-fogline-node")
            .map(|v| v.to_str().unwrap().to_string());
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), VALUE);
        placed.extend(node);
    }
    // The router of `fogline up` runs no functions itself: every call ran on another
    // member (an edge node or the cloud bridge), which had the secret only from the router.
    let router = status(&up).await["id"].as_str().unwrap().to_string();
    assert!(
        !placed.is_empty() && !placed.contains(&router),
        "placed on {placed:?}, router {router}"
    );
    run_ok(up.cli().args([
        "secret",
        "update",
        "db-password",
        "--from-literal",
        "rotated",
    ]));
    for _ in 0..6 {
        let r = c
            .post(format!("{u}/function/readsecret"))
            .body("db-password")
            .send()
            .await
            .unwrap();
        assert_eq!(r.text().await.unwrap(), "rotated");
    }
}
