//! The cloud tier on Docker Swarm, with the real engine (`.ci/run` makes it a Swarm manager
//! and leaves the swarm at the end): `fogline image build` makes the worker image from this
//! binary; a bridge with `--swarm` and `min_replicas = 0` creates the service, scales it
//! 0 → 1 for a first call (which waits and succeeds), up under a burst, back to 0 when idle;
//! a killed worker is replaced with no failed idempotent call; a rolling upgrade under
//! non-idempotent calls fails none; a restarted bridge adopts its service; `fogline swarm
//! down` leaves nothing behind. Replicas are read from the Swarm API (`docker service
//! inspect`), never from the bridge's own figures. Without a Swarm the bridge says so in
//! one line and runs its functions itself.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

fn docker(args: &[&str]) -> Option<String> {
    let out = Command::new("docker").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Whether this engine is a Swarm manager; says why not (and fails under CI).
fn swarm_here() -> bool {
    let state = docker(&[
        "info",
        "--format",
        "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}",
    ]);
    if state.as_deref() == Some("active true") {
        return true;
    }
    let why = match state {
        None => "no Docker engine".to_string(),
        Some(s) => format!("the engine is not a Swarm manager ({s}); `docker swarm init`"),
    };
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI must have a Swarm manager: {why}"
    );
    eprintln!("SKIPPED: {why}");
    false
}

fn replicas(service: &str) -> u32 {
    docker(&[
        "service",
        "inspect",
        "--format",
        "{{.Spec.Mode.Replicated.Replicas}}",
        service,
    ])
    .and_then(|s| s.parse().ok())
    .unwrap_or(0)
}

/// Tasks Swarm reports running (not only desired).
fn running(service: &str) -> u32 {
    docker(&[
        "service",
        "ps",
        "--filter",
        "desired-state=running",
        "--format",
        "{{.CurrentState}}",
        service,
    ])
    .map_or(0, |s| {
        s.lines().filter(|l| l.starts_with("Running")).count() as u32
    })
}

fn labelled(kind: &str) -> usize {
    docker(&[kind, "ls", "-q", "--filter", "label=dev.fogline.bridge"])
        .map_or(0, |s| s.lines().filter(|l| !l.is_empty()).count())
}

fn bridge(d: &Path, pki: &Path, service: &str, enroll: &str, swarm: &str) -> NodeProc {
    let extra = format!(
        "[enroll]\nlisten = \"{enroll}\"\nca_dir = {:?}\n\n[swarm]\nenabled = true\nservice = \"{service}\"\n{swarm}",
        pki.display().to_string()
    );
    member_with(d, pki, "bridge", "cloud", None, None, &extra)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn invoke(c: &reqwest::Client, url: &str, f: &str, body: &str) -> (u16, String) {
    match c
        .post(format!("{url}/function/{f}"))
        .body(body.to_string())
        .send()
        .await
    {
        Ok(r) => {
            let s = r.status().as_u16();
            let on = r
                .headers()
                .get("x-fogline-placed-on")
                .map(|v| v.to_str().unwrap_or("").to_string())
                .unwrap_or_default();
            let text = r.text().await.unwrap_or_default();
            (s, if s == 200 { on } else { text })
        }
        Err(e) => (0, e.to_string()),
    }
}

/// Calls `f` back to back from `n` tasks until `stop`; returns (ok, failures with reasons).
fn stream(
    url: &str,
    f: &'static str,
    body: Option<&'static str>,
    n: usize,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<(u32, Vec<String>)> {
    let url = url.to_string();
    tokio::spawn(async move {
        let ok = Arc::new(AtomicU32::new(0));
        let failed = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..n {
            let (url, stop, ok, failed) = (url.clone(), stop.clone(), ok.clone(), failed.clone());
            tasks.push(tokio::spawn(async move {
                let c = client();
                let mut k = 0;
                while !stop.load(Ordering::Relaxed) {
                    k += 1;
                    let text = body.map_or_else(|| format!("{i}-{k}"), str::to_string);
                    let (s, why) = invoke(&c, &url, f, &text).await;
                    if s == 200 {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.lock().unwrap().push(format!("{s}: {why}"));
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        let f = failed.lock().unwrap().clone();
        (ok.load(Ordering::Relaxed), f)
    })
}

/// Removes the service (and its secrets) and the test's images, whatever happened.
struct Leave {
    service: String,
    images: Vec<String>,
}

impl Drop for Leave {
    fn drop(&mut self) {
        let _ = fogline()
            .args(["swarm", "down", "--service", &self.service])
            .output();
        for i in &self.images {
            let _ = docker(&["rmi", "-f", i]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_run_on_swarm_sized_by_demand() {
    if !swarm_here() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pki = pki(d);
    let tag = format!("fogline-test:{}", std::process::id());
    let tag_b = format!("{tag}-b");
    let service = format!("fl{}", std::process::id());
    let leave = Leave {
        service: service.clone(),
        images: vec![tag.clone(), tag_b.clone()],
    };

    // The image: made here from this binary, with nothing pulled.
    let out = run_ok(fogline().args(["image", "build", "--tag", &tag]));
    assert_eq!(out.lines().last().unwrap(), tag);
    let size = docker(&["image", "inspect", "--format", "{{.Size}}", &tag]).unwrap();
    assert!(size.parse::<u64>().unwrap() > 0);
    assert!(docker(&[
        "image",
        "inspect",
        "--format",
        "{{index .Config.Labels \"dev.fogline.image\"}}",
        &tag
    ])
    .unwrap()
    .starts_with(env!("CARGO_PKG_VERSION")));

    let enroll = format!("127.0.0.1:{}", free_port());
    let settings = format!(
        "image = \"{tag}\"\nmin_replicas = 0\nmax_replicas = 3\ntarget_inflight = 2\nidle = \"4s\"\n"
    );
    let mut b = bridge(d, &pki, &service, &enroll, &settings);
    wait_until("the bridge to create its service", 30, || {
        docker(&["service", "inspect", &service]).is_some()
    });
    assert_eq!(replicas(&service), 0, "min_replicas = 0: none while idle");
    for (f, wasm, manifest) in [
        ("hello", "hello/hello.wasm", json!({"idempotent": true})),
        ("hello-once", "hello/hello.wasm", json!({})),
        ("primes", "primes/primes.wasm", json!({"timeout": "30s"})),
    ] {
        assert_eq!(deploy(&b, f, wasm, manifest).await.status(), 201, "{f}");
    }

    // The first call waits for the first worker and succeeds on it.
    let c = client();
    let t0 = Instant::now();
    let (s, on) = invoke(&c, &b.url, "hello", "swarm").await;
    let first = t0.elapsed();
    assert_eq!(s, 200, "first call: {on}");
    assert!(
        on.starts_with(&format!("{service}-")) && on.ends_with("(cloud)"),
        "placed on a worker: {on}"
    );
    eprintln!(
        "scale from zero, first call answered in {} ms",
        first.as_millis()
    );
    assert_eq!(replicas(&service), 1);
    assert!(running(&service) >= 1);
    let m = metrics(&b).await;
    assert!(
        m.contains("fogline_swarm_scale_events_total{reason=\"first-call\"} 1"),
        "{m}"
    );

    // A burst of concurrent slow calls raises the replicas (as Swarm reports them).
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let burst = stream(&b.url, "primes", Some("3000000"), 8, stop.clone());
    let peak = {
        let mut peak = 0;
        let until = Instant::now() + Duration::from_secs(40);
        while Instant::now() < until && peak < 2 {
            peak = peak.max(replicas(&service));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        peak
    };
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = burst.await.unwrap();
    assert!(
        peak >= 2,
        "a burst of 8 concurrent calls raised the replicas to {peak}"
    );
    assert!(failed.is_empty(), "{ok} ok, failed: {failed:?}");
    wait_until("Swarm to run the added workers", 60, || {
        running(&service) >= 2
    });

    // A killed worker: Swarm replaces it, and idempotent calls meanwhile all succeed.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let calls = stream(&b.url, "hello", None, 4, stop.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let victim = docker(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=com.docker.swarm.service.name={service}"),
    ])
    .unwrap()
    .lines()
    .next()
    .unwrap()
    .to_string();
    docker(&["kill", &victim]).unwrap();
    let want = replicas(&service);
    wait_until("Swarm to replace the killed worker", 60, || {
        running(&service) >= want
            && docker(&["ps", "-q", "--filter", &format!("id={victim}")]).as_deref() == Some("")
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = calls.await.unwrap();
    assert!(ok > 0);
    assert!(
        failed.is_empty(),
        "{ok} ok; failed around the kill: {failed:?}"
    );

    // A rolling upgrade under non-idempotent calls: none fails.
    docker(&["tag", &tag, &tag_b]).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let calls = stream(&b.url, "hello-once", None, 4, stop.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    run_ok(fogline().args(["swarm", "upgrade", "--service", &service, "--image", &tag_b]));
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = calls.await.unwrap();
    assert!(ok > 0);
    assert!(
        failed.is_empty(),
        "{ok} ok; failed during the upgrade: {failed:?}"
    );
    let image = docker(&[
        "service",
        "inspect",
        "--format",
        "{{.Spec.TaskTemplate.ContainerSpec.Image}}",
        &service,
    ])
    .unwrap();
    assert!(image.starts_with(&tag_b), "{image}");

    // Idle: back to zero.
    wait_until("idle workers scaled back to 0", 60, || {
        replicas(&service) == 0
    });
    let m = metrics(&b).await;
    assert!(
        m.contains("fogline_swarm_replicas{state=\"desired\"} 0"),
        "{m}"
    );
    assert!(
        !m.contains("fogline_swarm_scale_events_total{reason=\"idle\"} 0"),
        "{m}"
    );

    // A restarted bridge adopts its service instead of making a second one.
    b.terminate();
    let b = bridge(d, &pki, &service, &enroll, &settings);
    wait_until("the restarted bridge to adopt its service", 30, || {
        std::fs::read_to_string(d.join("node.stderr"))
            .unwrap_or_default()
            .contains(&format!("adopted the service {service}"))
    });
    assert_eq!(labelled("service"), 1, "one service, adopted");
    let (s, on) = invoke(&c, &b.url, "hello", "again").await;
    assert_eq!(s, 200, "{on}");

    // Nothing left behind.
    drop(b);
    let out = run_ok(fogline().args(["swarm", "down", "--service", &service]));
    assert!(out.contains("removed"), "{out}");
    wait_until("the workers' containers to go", 60, || {
        docker(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=com.docker.swarm.service.name={service}"),
        ])
        .as_deref()
            == Some("")
    });
    assert_eq!(labelled("service"), 0);
    assert_eq!(labelled("secret"), 0, "the join-token secrets are removed");
    drop(leave);
    assert!(docker(&["image", "inspect", &tag]).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_swarm_the_bridge_says_so_and_runs_functions_itself() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pki = pki(d);
    // An engine that is not there stands for one that is not a Swarm manager.
    let mut cmd = member_command(
        d,
        &pki,
        "bridge",
        "cloud",
        None,
        None,
        "[swarm]\nenabled = true\n",
    );
    cmd.env(
        "DOCKER_HOST",
        format!("unix://{}/no-engine.sock", d.display()),
    );
    let b = NodeProc::spawn_cmd(cmd, d.join("cloud"), d);
    let said: Vec<String> = std::fs::read_to_string(d.join("node.stderr"))
        .unwrap()
        .lines()
        .filter(|l| l.contains("swarm"))
        .map(str::to_string)
        .collect();
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(said[0].contains("runs its functions itself"), "{}", said[0]);
    assert_eq!(
        deploy(&b, "hello", "hello/hello.wasm", json!({}))
            .await
            .status(),
        201
    );
    let (s, body) = invoke(&client(), &b.url, "hello", "cloud").await;
    assert_eq!(s, 200, "{body}");
}
