//! Whole-system tests of the node's HTTP gateway: every route and every refusal, against the
//! real `fogline up` process on loopback.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

#[tokio::test]
async fn openfaas_routes_work_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::up(dir.path());
    let c = authed(&node.token);
    let u = &node.url;

    assert_eq!(
        c.get(format!("{u}/healthz")).send().await.unwrap().status(),
        200
    );
    let info: serde_json::Value = c
        .get(format!("{u}/system/info"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["provider"]["provider"], "fogline");
    assert!(info["arch"].as_str().is_some_and(|a| !a.is_empty()));

    // Native upload.
    let r = deploy(&node, "hello", "hello/hello.wasm", json!({"timeout": "2s"})).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());

    // Invoke, plain and namespaced; the response is the function's stdout.
    let r = c
        .post(format!("{u}/function/hello"))
        .body("world")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("x-duration-seconds"));
    assert_eq!(r.text().await.unwrap(), "hello, world");
    let r = c
        .post(format!("{u}/function/hello.openfaas-fn"))
        .body("ns")
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "hello, ns");

    // OpenFaaS deploy: upload the module, then POST a FunctionDeployment naming its digest.
    let module = std::fs::read(example("primes/primes.wasm")).unwrap();
    let up: serde_json::Value = c
        .put(format!("{u}/v1/modules"))
        .bearer_auth(&node.token)
        .body(module)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let digest = up["digest"].as_str().unwrap().to_string();
    let dep = json!({"service": "primes", "image": digest, "envVars": {"MODE": "fast"},
                     "labels": {"team": "edge"}, "limits": {"memory": "32Mi"},
                     "annotations": {"fogline.dev/timeout": "3s"}});
    let r = c
        .post(format!("{u}/system/functions"))
        .bearer_auth(&node.token)
        .json(&dep)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    let r = c
        .post(format!("{u}/function/primes"))
        .body("100")
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap().trim(), "25");

    // List and status reflect the deployment.
    let list: Vec<serde_json::Value> = c
        .get(format!("{u}/system/functions"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<_> = list
        .iter()
        .map(|f| f["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["hello", "primes"]);
    assert!(!serde_json::Value::from(list).to_string().contains("fast"));
    let st: serde_json::Value = c
        .get(format!("{u}/system/function/primes"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(st["image"], digest);
    assert_eq!(st["limits"]["memory"], "32Mi");
    // Listed by name; the value never leaves the node.
    assert_eq!(st["envVars"]["MODE"], "");
    assert!(!st.to_string().contains("fast"), "{st}");
    assert_eq!(st["labels"]["team"], "edge");
    assert_eq!(st["invocationCount"], 1);
    assert_eq!(st["annotations"]["fogline.dev/timeout"], "3s");

    // PUT updates an existing function; unknown ones are 404.
    let mut upd = dep.clone();
    upd["limits"]["memory"] = json!("48Mi");
    let r = c
        .put(format!("{u}/system/functions"))
        .bearer_auth(&node.token)
        .json(&upd)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let st: serde_json::Value = c
        .get(format!("{u}/system/function/primes"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(st["limits"]["memory"], "48Mi");
    upd["service"] = json!("nosuch");
    let r = c
        .put(format!("{u}/system/functions"))
        .bearer_auth(&node.token)
        .json(&upd)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // Logs and metrics.
    let r = c
        .get(format!("{u}/system/logs?name=primes&tail=5"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let logs = r.text().await.unwrap();
    assert!(
        logs.lines().any(|l| l.contains("deployed with module")),
        "{logs}"
    );
    // `follow` is a boolean in the spec: anything else is refused, naming it.
    let r = c
        .get(format!("{u}/system/logs?name=primes&follow=-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("follow"));
    let m = metrics(&node).await;
    assert!(
        m.contains("gateway_function_invocation_total{function_name=\"hello\",code=\"200\"} 2"),
        "{m}"
    );
    assert!(
        m.contains("gateway_functions_seconds_bucket{function_name=\"hello\""),
        "{m}"
    );
    assert!(
        m.contains("# TYPE fogline_cold_start_seconds histogram"),
        "{m}"
    );

    // Delete.
    let r = c
        .delete(format!("{u}/system/functions"))
        .bearer_auth(&node.token)
        .json(&json!({"functionName": "primes"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c.post(format!("{u}/function/primes")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = c
        .delete(format!("{u}/system/functions"))
        .bearer_auth(&node.token)
        .json(&json!({"functionName": "primes"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn async_calls_are_retrievable_and_call_back() {
    let dir = tempfile::tempdir().unwrap();
    // A one-shot HTTP listener stands in for the caller's callback endpoint; the node allows
    // callbacks to it (a loopback address: allowed only because the prefix names it).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/", listener.local_addr().unwrap());
    let cb = format!("{base}done");
    let cfg = dir.path().join("n.toml");
    std::fs::write(
        &cfg,
        format!("version = 1\n[async]\ncallback_allow = [\"{base}\"]\n"),
    )
    .unwrap();
    let node = NodeProc::node(dir.path(), &cfg);
    let c = authed(&node.token);
    let u = &node.url;
    assert_eq!(
        deploy(&node, "hello", "hello/hello.wasm", json!({}))
            .await
            .status(),
        201
    );
    // Callbacks go only under the allowed prefixes, checked at submit.
    for (url, why) in [
        ("http://127.0.0.2:9/done", "not under an allowed prefix"),
        (
            "http://169.254.169.254/latest/meta-data",
            "not under an allowed prefix",
        ),
        ("ftp://x", "not an http:// or https:// URL"),
    ] {
        let r = c
            .post(format!("{u}/async-function/hello"))
            .header("X-Callback-Url", url)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{url}");
        let msg = r.text().await.unwrap();
        assert!(msg.contains(why), "{url}: {msg}");
    }
    let listener = std::sync::Arc::new(listener);
    let received = tokio::spawn(one_request(listener.clone()));
    let r = c
        .post(format!("{u}/async-function/hello"))
        .header("X-Callback-Url", &cb)
        .body("later")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.headers()["x-call-id"].to_str().unwrap().to_string();
    let req = tokio::time::timeout(Duration::from_secs(20), received)
        .await
        .expect("callback within 20 s")
        .unwrap();
    assert!(req.starts_with("POST /done"), "{req}");
    assert!(
        req.to_ascii_lowercase()
            .contains(&format!("x-call-id: {id}")),
        "{req}"
    );
    assert!(req.ends_with("hello, later"), "{req}");
    // Signed as Standard Webhooks describes, with the node's secret for the default
    // namespace; checked with Python's own HMAC.
    let secret = std::fs::read_to_string(node.data_dir.join("webhook.secret")).unwrap();
    assert_signed(&req, &secret, &id, "hello, later");

    // Another namespace's callbacks are signed with a secret of its own, which its token
    // reads (`fogline namespace webhook-secret`).
    let out = run_ok(node.cli().args(["namespace", "create", "team-c"]));
    let tok = out.lines().last().unwrap().to_string();
    let mut as_team = fogline();
    as_team.args(["--gateway", u, "--token", &tok, "-n", "team-c"]);
    let ns_secret = run_ok(as_team.args(["namespace", "webhook-secret"]));
    assert!(ns_secret.starts_with("whsec_") && ns_secret.trim() != secret.trim());
    let mut deploy_c = fogline();
    deploy_c.args([
        "--gateway",
        u,
        "--token",
        &tok,
        "-n",
        "team-c",
        "deploy",
        "hello",
        "--wasm",
    ]);
    run_ok(deploy_c.arg(example("hello/hello.wasm")));
    let received = tokio::spawn(one_request(listener));
    let r = authed(&tok)
        .post(format!("{u}/async-function/hello.team-c"))
        .header("X-Callback-Url", &cb)
        .body("team")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id_c = r.headers()["x-call-id"].to_str().unwrap().to_string();
    let req = tokio::time::timeout(Duration::from_secs(20), received)
        .await
        .expect("callback within 20 s")
        .unwrap();
    assert_signed(&req, &ns_secret, &id_c, "hello, team");

    let r = c.get(format!("{u}/v1/calls/{id}")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "hello, later");
    assert_eq!(
        c.get(format!("{u}/v1/calls/0000000000000000000000000000ffff"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        c.post(format!("{u}/async-function/nosuch"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
}

#[tokio::test]
async fn bad_input_gets_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::up(dir.path());
    let c = client();
    let u = &node.url;

    // Unknown function: 404 naming it.
    let r = c.post(format!("{u}/function/ghost")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.text().await.unwrap().contains("\"ghost\""));

    // Not a Wasm module: 400 with the validator's reason.
    let r = c
        .put(format!("{u}/v1/functions/junk"))
        .bearer_auth(&node.token)
        .body("this is not wasm")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let msg = r.text().await.unwrap();
    assert!(msg.contains("not a valid WebAssembly module"), "{msg}");
    // Valid Wasm that is not a WASI command.
    let r = c
        .put(format!("{u}/v1/functions/lib"))
        .bearer_auth(&node.token)
        .body("(module (func (export \"f\")))")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("_start"));
    // An import nobody provides.
    let r = c
        .put(format!("{u}/v1/functions/imp"))
        .bearer_auth(&node.token)
        .body("(module (import \"env\" \"secret\" (func)) (func (export \"_start\")))")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("secret"));

    // Missing or wrong token: 401.
    let r = c
        .put(format!("{u}/v1/functions/x"))
        .body("(module)")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().contains_key("www-authenticate"));
    let r = c
        .put(format!("{u}/v1/functions/x"))
        .bearer_auth("wrong")
        .body("(module)")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .post(format!("{u}/system/functions"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .delete(format!("{u}/system/functions"))
        .json(&json!({"functionName": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Every route but invocations and /healthz needs the token, reads too (as OpenFaaS
    // puts /system/* behind auth): function lists hold env values, logs hold outputs.
    for path in [
        "/system/functions",
        "/system/function/x",
        "/system/info",
        "/system/logs?name=x",
        "/metrics",
        "/v1/status",
        "/v1/mesh",
        "/v1/placements",
        "/v1/calls/00000000000fffff",
        "/system/namespaces",
        "/system/secrets",
        "/v1/tokens",
    ] {
        let r = c.get(format!("{u}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path}");
        assert!(r.text().await.unwrap().contains("needs a token"), "{path}");
    }
    assert_eq!(
        c.get(format!("{u}/healthz")).send().await.unwrap().status(),
        200
    );
    // X-Fogline-Target makes the node dial an address: admin only.
    let r = c
        .post(format!("{u}/function/x"))
        .header("X-Fogline-Target", "quic://127.0.0.1:9")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Basic auth with the token as password works (faas-cli style).
    let r = c
        .get(format!("{u}/system/functions"))
        .basic_auth("admin", Some(&node.token))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Malformed JSON on /system/functions: 400 naming the field.
    let r = c
        .post(format!("{u}/system/functions"))
        .bearer_auth(&node.token)
        .header("content-type", "application/json")
        .body(r#"{"service": "a", "image": 42}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("`image`"));
    let r = c
        .post(format!("{u}/system/functions"))
        .bearer_auth(&node.token)
        .body(r#"{"image": "sha256:00"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("service"));
    let r = c
        .post(format!("{u}/system/functions"))
        .bearer_auth(&node.token)
        .json(&json!({"service": "Bad Name", "image": format!("sha256:{}", "0".repeat(64))}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(
        r.text().await.unwrap().contains("`service`"),
        "the field sent is named"
    );
    let r = c
        .post(format!("{u}/system/functions"))
        .bearer_auth(&node.token)
        .json(&json!({"service": "x", "image": format!("sha256:{}", "0".repeat(64))}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("not on this node"));
    let r = c
        .put(format!("{u}/v1/functions/x"))
        .bearer_auth(&node.token)
        .header("x-fogline-manifest", r#"{"memory": "lots"}"#)
        .body("(module)")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("memory"));

    // Function failures: 500 with the tail of stderr.
    assert_eq!(
        deploy(&node, "fail", "misbehave/fail.wasm", json!({}))
            .await
            .status(),
        201
    );
    let r = c.post(format!("{u}/function/fail")).send().await.unwrap();
    assert_eq!(r.status(), 500);
    let msg = r.text().await.unwrap();
    assert!(
        msg.contains("status 3") && msg.contains("something went wrong"),
        "{msg}"
    );
    // A trap.
    let r = c
        .put(format!("{u}/v1/functions/trap"))
        .bearer_auth(&node.token)
        .body("(module (func (export \"_start\") unreachable))")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = c.post(format!("{u}/function/trap")).send().await.unwrap();
    assert_eq!(r.status(), 500);
    assert!(r.text().await.unwrap().contains("unreachable"));

    // Memory bomb: stopped at its cap, reported as out of memory.
    assert_eq!(
        deploy(
            &node,
            "membomb",
            "misbehave/membomb.wasm",
            json!({"memory": "16Mi"})
        )
        .await
        .status(),
        201
    );
    let r = c
        .post(format!("{u}/function/membomb"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    assert!(r.text().await.unwrap().contains("out of memory"));

    // No filesystem unless granted.
    assert_eq!(
        deploy(&node, "openfile", "misbehave/openfile.wasm", json!({}))
            .await
            .status(),
        201
    );
    let r = c
        .post(format!("{u}/function/openfile"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    assert!(!r.text().await.unwrap().contains("root:"));

    // Timeout: 504, the instance is gone, and the node keeps serving; whether the guest
    // spins in its own code (loop) or sleeps in a host call (sleep).
    for (name, file, manifest) in [
        (
            "loop",
            "misbehave/loop.wasm",
            json!({"timeout": "300ms", "max_concurrency": 1}),
        ),
        ("sleep", "misbehave/sleep.wasm", json!({"timeout": "300ms"})),
    ] {
        assert_eq!(deploy(&node, name, file, manifest).await.status(), 201);
        let t = Instant::now();
        let r = c
            .post(format!("{u}/function/{name}"))
            .timeout(Duration::from_secs(20))
            .send()
            .await
            .expect("an answer, not a call left running");
        assert_eq!(r.status(), 504, "{name}");
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{name}: timeout took {:?}",
            t.elapsed()
        );
        let st = status(&node).await;
        assert_eq!(
            st["instances_in_use"], 0,
            "{name}: the timed-out instance must be gone"
        );
    }
    assert_eq!(
        deploy(&node, "hello", "hello/hello.wasm", json!({}))
            .await
            .status(),
        201
    );
    let r = c
        .post(format!("{u}/function/hello"))
        .body("still here")
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "hello, still here");

    // Nothing survives from one call to the next: pool slots are reset between instances
    // (only the pages a call dirtied, where the kernel reports them).
    assert_eq!(
        deploy(&node, "remember", "misbehave/remember.wasm", json!({}))
            .await
            .status(),
        201
    );
    for i in 0..20 {
        let r = c
            .post(format!("{u}/function/remember"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "fresh\n", "call {i}");
    }

    // Guests spinning on every worker thread do not hold up other calls: each yields at
    // every epoch tick. Four loops of 2 s run on the node's async workers (as many as its
    // cores); a call made meanwhile is answered long before they end.
    assert_eq!(
        deploy(
            &node,
            "spin",
            "misbehave/loop.wasm",
            json!({"timeout": "2s", "max_concurrency": 4})
        )
        .await
        .status(),
        201
    );
    let spinners: Vec<_> = (0..4)
        .map(|_| {
            let c = c.clone();
            let u = u.clone();
            tokio::spawn(async move {
                c.post(format!("{u}/function/spin"))
                    .send()
                    .await
                    .unwrap()
                    .status()
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    let r = c
        .post(format!("{u}/function/hello"))
        .body("meanwhile")
        .send()
        .await
        .unwrap();
    let waited = t.elapsed();
    assert_eq!(r.text().await.unwrap(), "hello, meanwhile");
    assert!(
        waited < Duration::from_millis(1500),
        "a call waited {waited:?} behind spinning guests"
    );
    for s in spinners {
        assert_eq!(s.await.unwrap(), 504);
    }

    // Over max concurrency: 429 with Retry-After, not queued.
    let slow = {
        let c = c.clone();
        let u = u.clone();
        tokio::spawn(async move {
            c.post(format!("{u}/function/loop"))
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = c.post(format!("{u}/function/loop")).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(slow.await.unwrap(), 504);
}

#[tokio::test]
async fn payload_limit_and_token_for_invoke_come_from_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("node.toml");
    std::fs::write(
        &cfg,
        "version = 1\n[http]\nmax_body = \"2Ki\"\ninvoke_requires_token = true\n[wasm]\ninstances = 8\npooling = \"off\"\nmax_output = \"1Mi\"\n",
    )
    .unwrap();
    let node = NodeProc::node(dir.path(), &cfg);
    let c = client();
    let u = &node.url;
    assert_eq!(
        deploy(&node, "hello", "hello/hello.wasm", json!({}))
            .await
            .status(),
        201
    );
    let r = c
        .post(format!("{u}/function/hello"))
        .bearer_auth(&node.token)
        .body(vec![b'a'; 2048])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .post(format!("{u}/function/hello"))
        .bearer_auth(&node.token)
        .body(vec![b'a'; 4096])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert!(r.text().await.unwrap().contains("2048"));
    // Chunked bodies (no Content-Length) are limited too.
    let stream = futures_stream(vec![vec![b'b'; 1500], vec![b'c'; 1500]]);
    let r = c
        .post(format!("{u}/function/hello"))
        .bearer_auth(&node.token)
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let r = c
        .post(format!("{u}/function/hello"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let st = status(&node).await;
    assert_eq!(st["pooling"], false);
    assert_eq!(st["instance_slots"], 8);
}

fn futures_stream(
    chunks: Vec<Vec<u8>>,
) -> impl futures_core::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send + Sync + 'static {
    struct S(std::collections::VecDeque<Vec<u8>>);
    impl futures_core::Stream for S {
        type Item = Result<Vec<u8>, std::io::Error>;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            std::task::Poll::Ready(self.0.pop_front().map(Ok))
        }
    }
    S(chunks.into())
}

/// Host directories only under `[wasm] allowed_dirs`, resolved: `..`, a folder outside and
/// a symlink leading out are refused at deploy with the reason; a writable grant needs
/// `allow_write_dirs`; an allowed, read-only one is readable by the function.
#[tokio::test]
async fn host_directories_only_under_the_allowed_ones() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let allowed = d.join("allowed");
    let etc = allowed.join("etc");
    let secret = d.join("secret");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::create_dir_all(&secret).unwrap();
    std::fs::write(etc.join("passwd"), "granted:x:1\n").unwrap();
    std::fs::write(secret.join("passwd"), "root:x:0\n").unwrap();
    std::os::unix::fs::symlink(&secret, allowed.join("escape")).unwrap();
    let cfg = d.join("n.toml");
    std::fs::write(
        &cfg,
        format!(
            "version = 1\n[wasm]\nallowed_dirs = [\"{}\"]\n",
            allowed.display()
        ),
    )
    .unwrap();
    let node = NodeProc::node(d, &cfg);
    let put = |name: &'static str, host: String, read_only: bool| {
        let node = &node;
        async move {
            let manifest =
                json!({"dirs": [{"host": host, "guest": "/etc", "read_only": read_only}]});
            let r = client()
                .put(format!("{}/v1/functions/{name}", node.url))
                .bearer_auth(&node.token)
                .header("x-fogline-manifest", manifest.to_string())
                .body(std::fs::read(example("misbehave/openfile.wasm")).unwrap())
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    for (host, read_only, why) in [
        (
            secret.display().to_string(),
            true,
            "not under an allowed directory",
        ),
        (
            format!("{}/../secret", allowed.display()),
            true,
            "must not contain `..`",
        ),
        (
            allowed.join("escape").display().to_string(),
            true,
            "not under an allowed directory",
        ),
        (
            etc.display().to_string(),
            false,
            "only read-only directories",
        ),
    ] {
        let (status, msg) = put("bad", host.clone(), read_only).await;
        assert_eq!(status, 400, "{host}: {msg}");
        assert!(msg.contains(why), "{host}: {msg}");
    }
    let (status, msg) = put("reader", etc.display().to_string(), true).await;
    assert_eq!(status, 201, "{msg}");
    let r = client()
        .post(format!("{}/function/reader", node.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "granted:x:1\n");
}

/// Accepts one HTTP request on `listener`, answers 200, and returns it as text.
async fn one_request(listener: std::sync::Arc<tokio::net::TcpListener>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut s, _) = listener.accept().await.unwrap();
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    loop {
        let n = s.read(&mut tmp).await.unwrap();
        buf.extend_from_slice(&tmp[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let len: usize = text
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                    .await
                    .unwrap();
                return text;
            }
        }
        if n == 0 {
            return text;
        }
    }
}

/// Checks a delivered callback's Standard Webhooks headers against `secret`, computing the
/// expected signature with Python's own HMAC.
fn assert_signed(req: &str, secret: &str, id: &str, body: &str) {
    let header = |name: &str| {
        req.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
            })
            .unwrap_or_else(|| panic!("no {name} in {req}"))
    };
    assert_eq!(header("webhook-id"), id);
    let script = "import base64,hashlib,hmac,sys\n\
        key=base64.b64decode(sys.argv[1].strip()[len('whsec_'):])\n\
        msg=(sys.argv[2]+'.'+sys.argv[3]+'.'+sys.argv[4]).encode()\n\
        print('v1,'+base64.b64encode(hmac.new(key,msg,hashlib.sha256).digest()).decode())";
    let expect = std::process::Command::new("python3")
        .args(["-c", script, secret, id, &header("webhook-timestamp"), body])
        .output()
        .expect("python3 computes the expected signature");
    assert_eq!(
        header("webhook-signature"),
        String::from_utf8_lossy(&expect.stdout).trim(),
        "{req}"
    );
}
