//! Namespaces and scoped tokens against a real `fogline node`: isolation (401/403/200),
//! listings and logs scoped, public namespaces, quotas (functions, memory, concurrent
//! calls), async results readable only by their namespace, tokens kept hashed and revocable.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

fn config(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("node.toml");
    std::fs::write(
        &path,
        r#"version = 1
[quota.team-q]
functions = 2
memory = "96Mi"
concurrency = 1
"#,
    )
    .unwrap();
    path
}

/// The token a minting command printed: alone on its last line.
fn last_line(out: &str) -> String {
    out.lines().last().unwrap().trim().to_string()
}

async fn post(c: &reqwest::Client, url: String, body: &'static str) -> (u16, String) {
    let r = c.post(url).body(body).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test]
async fn namespaces_keep_tenants_apart() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::node(dir.path(), &config(dir.path()));
    let u = node.url.clone();
    let admin = authed(&node.token);
    let anon = client();

    // Minting: the token alone on the last line of stdout.
    let out = run_ok(node.cli().args(["namespace", "create", "team-a"]));
    assert!(out.contains("namespace team-a created"), "{out}");
    let tok_a = last_line(&out);
    assert!(tok_a.starts_with("fog_"), "{out}");
    let tok_b = last_line(&run_ok(node.cli().args(["namespace", "create", "team-b"])));
    let tok_pub = last_line(&run_ok(node.cli().args([
        "namespace",
        "create",
        "open-data",
        "--public",
    ])));
    let err = run_err(node.cli().args(["namespace", "create", "team-a"]));
    assert!(err.contains("exists already"), "{err}");
    let err = run_err(node.cli().args(["namespace", "create", "Bad_Name"]));
    assert!(err.contains("must be 1 to 63"), "{err}");
    let ca = authed(&tok_a);
    let cb = authed(&tok_b);

    // A namespace token deploys in its namespace only, through the CLI's --namespace.
    let hello = example("hello/hello.wasm");
    let mut deploy_a = fogline();
    deploy_a.args(["--gateway", &u, "--token", &tok_a, "--namespace", "team-a"]);
    let out = run_ok(deploy_a.args(["deploy", "hello"]).arg("--wasm").arg(&hello));
    assert!(out.contains("deployed hello"), "{out}");
    let mut deploy_b_in_a = fogline();
    deploy_b_in_a.args(["--gateway", &u, "--token", &tok_b, "-n", "team-a"]);
    let err = run_err(
        deploy_b_in_a
            .args(["deploy", "hello"])
            .arg("--wasm")
            .arg(&hello),
    );
    assert!(
        err.contains("403") && err.contains("may not deploy in namespace \"team-a\""),
        "{err}"
    );
    // Nor in the default namespace.
    let mut deploy_a_default = fogline();
    deploy_a_default.args(["--gateway", &u, "--token", &tok_a]);
    let err = run_err(
        deploy_a_default
            .args(["deploy", "hello"])
            .arg("--wasm")
            .arg(&hello),
    );
    assert!(err.contains("403"), "{err}");
    // The admin deploys a function of the same name in the default namespace: two functions.
    let r = deploy(&node, "hello", "hello/hello.wasm", json!({})).await;
    assert_eq!(r.status(), 201);

    // Invoking: no token 401, another namespace's token 403, its own 200, admin 200.
    let f = format!("{u}/function/hello.team-a");
    assert_eq!(post(&anon, f.clone(), "x").await.0, 401);
    let (s, body) = post(&cb, f.clone(), "x").await;
    assert_eq!(s, 403, "{body}");
    assert!(
        body.contains("may not invoke in namespace \"team-a\""),
        "{body}"
    );
    assert_eq!(post(&ca, f.clone(), "a").await, (200, "hello, a".into()));
    assert_eq!(post(&admin, f.clone(), "b").await, (200, "hello, b".into()));
    // The default namespace stays open, as OpenFaaS clients expect.
    assert_eq!(
        post(&anon, format!("{u}/function/hello"), "c").await,
        (200, "hello, c".into())
    );
    // The CLI names the namespace too.
    let mut inv = fogline();
    inv.args(["--gateway", &u, "--token", &tok_a, "-n", "team-a"]);
    assert_eq!(
        run_ok(inv.args(["invoke", "hello", "--data", "cli"])),
        "hello, cli"
    );

    // A public namespace: anyone invokes, only its token deploys.
    let mut dp = fogline();
    dp.args(["--gateway", &u, "--token", &tok_pub, "-n", "open-data"]);
    run_ok(dp.args(["deploy", "hello"]).arg("--wasm").arg(&hello));
    assert_eq!(
        post(&anon, format!("{u}/function/hello.open-data"), "p").await,
        (200, "hello, p".into())
    );
    let r = anon
        .put(format!("{u}/v1/functions/x?namespace=open-data"))
        .body(std::fs::read(&hello).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // Listings and logs are scoped to the token's namespace.
    let (s, body) = get(&ca, format!("{u}/system/functions?namespace=team-a")).await;
    assert_eq!(s, 200);
    let list: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(list.len(), 1, "{body}");
    assert_eq!(list[0]["name"], "hello");
    assert_eq!(list[0]["namespace"], "team-a");
    assert_eq!(
        get(&cb, format!("{u}/system/functions?namespace=team-a"))
            .await
            .0,
        403
    );
    assert_eq!(get(&ca, format!("{u}/system/functions")).await.0, 403);
    let (_, body) = get(&admin, format!("{u}/system/functions")).await;
    let list: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(
        list.len(),
        1,
        "the default namespace lists only its own: {body}"
    );
    assert_eq!(list[0]["namespace"], "openfaas-fn");
    let logs = format!("{u}/system/logs?name=hello&namespace=team-a");
    assert_eq!(get(&ca, logs.clone()).await.0, 200);
    assert_eq!(get(&cb, logs).await.0, 403);
    let (s, body) = get(&ca, format!("{u}/system/function/hello?namespace=team-a")).await;
    assert_eq!(s, 200, "{body}");
    let (_, body) = get(&ca, format!("{u}/system/namespaces")).await;
    assert_eq!(body.trim(), r#"["team-a"]"#);
    let (_, body) = get(&admin, format!("{u}/system/namespaces")).await;
    for ns in ["openfaas-fn", "team-a", "team-b", "open-data"] {
        assert!(body.contains(ns), "{body}");
    }
    let out = run_ok(node.cli().args(["namespace", "ls"]));
    assert!(out.contains("team-b"), "{out}");
    // Member-wide reads and admin routes are not a namespace's.
    let (s, body) = get(&ca, format!("{u}/metrics")).await;
    assert_eq!(s, 403, "{body}");
    let r = ca
        .post(format!("{u}/system/namespaces"))
        .json(&json!({"name": "mine"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = ca
        .post(format!("{u}/function/hello.team-a"))
        .header("x-fogline-target", "quic://127.0.0.1:9")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "X-Fogline-Target needs the admin token");

    // Async results are read by a token of the call's namespace.
    let r = ca
        .post(format!("{u}/async-function/hello.team-a"))
        .body("later")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.headers()["x-call-id"].to_str().unwrap().to_string();
    let call = format!("{u}/v1/calls/{id}");
    let (s, body) = get(&cb, call.clone()).await;
    assert_eq!(s, 403, "{body}");
    assert_eq!(get(&anon, call.clone()).await.0, 401);
    let mut done = (0, String::new());
    for _ in 0..100 {
        done = get(&ca, call.clone()).await;
        if done.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(done, (200, "hello, later".into()));

    // A read token of the default namespace: the member-wide reads, nothing else.
    let out =
        run_ok(
            node.cli()
                .args(["token", "create", "--scope", "read", "--note", "prometheus"]),
        );
    let monitor = authed(&last_line(&out));
    assert_eq!(get(&monitor, format!("{u}/metrics")).await.0, 200);
    assert_eq!(get(&monitor, format!("{u}/system/functions")).await.0, 200);
    let r = monitor
        .delete(format!("{u}/system/functions"))
        .json(&json!({"functionName": "hello"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("lacks the deploy scope"));

    // Tokens are kept as hashes only: no secret is anywhere in the data folder.
    let secret = tok_a.rsplit('_').next().unwrap().to_string();
    for entry in files_under(&node.data_dir) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{} holds a token's secret",
            entry.display()
        );
    }

    // Revoked: refused from the next request on, and listed no more.
    let out = run_ok(node.cli().args(["token", "ls"]));
    assert!(
        out.contains("team-a") && out.contains("prometheus"),
        "{out}"
    );
    let id_a = out
        .lines()
        .find(|l| l.contains("namespace team-a"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_string();
    run_ok(node.cli().args(["token", "revoke", &id_a]));
    let (s, body) = post(&ca, f.clone(), "x").await;
    assert_eq!(s, 401, "{body}");
    assert!(body.contains("revoked"), "{body}");
    let out = run_ok(node.cli().args(["token", "ls"]));
    assert!(!out.contains(&id_a), "{out}");
    let metrics = metrics(&node).await;
    assert!(
        metrics.contains("reason=\"scope\"") && metrics.contains("problem=\"wrong\""),
        "refusals are counted"
    );
}

#[tokio::test]
async fn quotas_refuse_deploys_and_calls_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::node(dir.path(), &config(dir.path()));
    let u = node.url.clone();
    let tok = last_line(&run_ok(node.cli().args(["namespace", "create", "team-q"])));
    let c = authed(&tok);
    let put = |name: &'static str, wasm: &'static str, manifest: serde_json::Value| {
        let c = c.clone();
        let u = u.clone();
        async move {
            let r = c
                .put(format!("{u}/v1/functions/{name}?namespace=team-q"))
                .header("x-fogline-manifest", manifest.to_string())
                .body(std::fs::read(example(wasm)).unwrap())
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    // Memory: 64Mi + 64Mi is past 96Mi.
    let (s, body) = put("a", "hello/hello.wasm", json!({"memory": "64Mi"})).await;
    assert_eq!(s, 201, "{body}");
    let (s, body) = put("b", "hello/hello.wasm", json!({"memory": "64Mi"})).await;
    assert_eq!(s, 403, "{body}");
    assert!(body.contains("past its quota of 96"), "{body}");
    let (s, body) = put(
        "b",
        "misbehave/sleep.wasm",
        json!({"memory": "16Mi", "timeout": "3s"}),
    )
    .await;
    assert_eq!(s, 201, "{body}");
    // Functions: two at most.
    let (s, body) = put("c", "hello/hello.wasm", json!({"memory": "1Mi"})).await;
    assert_eq!(s, 403, "{body}");
    assert!(body.contains("quota of 2 functions"), "{body}");
    // Updating one is not a third.
    let (s, body) = put("a", "hello/hello.wasm", json!({"memory": "32Mi"})).await;
    assert_eq!(s, 200, "{body}");

    // Concurrent calls: one at a time; the second gets 429 naming the quota.
    let slow = {
        let c = c.clone();
        let u = u.clone();
        tokio::spawn(async move {
            c.post(format!("{u}/function/b.team-q"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (s, body) = post(&c, format!("{u}/function/a.team-q"), "q").await;
    assert_eq!(s, 429, "{body}");
    assert!(body.contains("quota of 1 concurrent calls"), "{body}");
    assert_eq!(slow.await.unwrap(), 504, "the sleeper hits its timeout");
    assert_eq!(
        post(&c, format!("{u}/function/a.team-q"), "q").await,
        (200, "hello, q".into())
    );
    // Other namespaces are not counted against it.
    let r = deploy(&node, "hello", "hello/hello.wasm", json!({})).await;
    assert_eq!(r.status(), 201);
}
