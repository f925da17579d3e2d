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
    skip_without("a Swarm manager", &why);
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

/// One Swarm test at a time: a second engine joined by one would take the other's tasks.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_run_on_swarm_sized_by_demand() {
    if !swarm_here() {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pki = pki(d);
    let tag = format!("fogline-test:{}", std::process::id());
    let tag_b = format!("{tag}-b");
    let service = format!("fl{}", std::process::id());
    let thumbnail = format!("fogline-thumbnail-swarm:{}", std::process::id());
    let leave = Leave {
        service: service.clone(),
        images: vec![tag.clone(), tag_b.clone(), thumbnail.clone()],
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
        "image = \"{tag}\"\nmin_replicas = 0\nmax_replicas = 3\ntarget_inflight = 2\nidle = \"4s\"\ndocker_socket = \"/var/run/docker.sock\"\n"
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

    // A container function runs inside a worker, on its host's engine (socket mounted).
    let st = Command::new(repo("examples/thumbnail/build.sh"))
        .env("IMAGE", &thumbnail)
        .status()
        .unwrap();
    assert!(st.success(), "building the thumbnail example image failed");
    let r = client()
        .put(format!("{}/v1/functions/thumb", b.url))
        .bearer_auth(&b.token)
        .header(
            "x-fogline-manifest",
            json!({"runtime": "container", "image": thumbnail}).to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let mut ppm = b"P6\n64 64\n255\n".to_vec();
    ppm.extend(std::iter::repeat_n(200u8, 64 * 64 * 3));
    let r = client()
        .post(format!("{}/function/thumb", b.url))
        .body(ppm)
        .send()
        .await
        .unwrap();
    let on = r
        .headers()
        .get("x-fogline-placed-on")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let status = r.status().as_u16();
    let out = r.bytes().await.unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&out));
    assert!(out.starts_with(b"P6"), "a thumbnail came back");
    assert!(on.starts_with(&format!("{service}-")), "{on}");

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
    // On one machine, calls fill its first worker to what all its workers are sized for
    // (2 in flight each): 3 at once all go to one, the others adding only cost.
    wait_until("the added workers alive in the bridge's mesh", 60, || {
        alive(&b)
            .iter()
            .filter(|m| m.starts_with(&format!("{service}-")))
            .count()
            >= 2
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut at_once = Vec::new();
    for t in (0..3)
        .map(|_| {
            let url = b.url.clone();
            tokio::spawn(async move { invoke(&client(), &url, "primes", "3000000").await })
        })
        .collect::<Vec<_>>()
    {
        at_once.push(t.await.unwrap());
    }
    assert!(at_once.iter().all(|(s, _)| *s == 200), "{at_once:?}");
    assert!(
        at_once.iter().all(|(_, on)| *on == at_once[0].1),
        "3 calls at once on one machine's workers went to one: {at_once:?}"
    );

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
        "{ok} ok; failed around the kill ({victim}): {failed:?}; the bridge's warnings:\n{}",
        logged(d, |l| l.contains("WARN") || l.contains("ERROR"))
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

/// A second Docker engine in a network namespace of its own (its own data root, socket and
/// address), joined to the swarm as a worker; left and stopped on drop.
struct SecondEngine {
    ns: String,
    host_if: String,
    dir: tempfile::TempDir,
    pid: u32,
    node_id: String,
    ip: String,
}

impl SecondEngine {
    fn sock(&self) -> String {
        format!("unix://{}/docker.sock", self.dir.path().display())
    }

    fn docker(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("docker")
            .env("DOCKER_HOST", self.sock())
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Starts it and joins it to the swarm whose manager is at `manager` (an address the
    /// namespace reaches); `Err` says what stopped it.
    fn start(manager: &str) -> Result<SecondEngine, String> {
        let n = std::process::id() % 200 + 20;
        let ns = format!("fldk{}", std::process::id());
        let host_if = format!("fldh{}", std::process::id() % 100_000);
        let ns_if = format!("fldn{}", std::process::id() % 100_000);
        let ip = format!("10.251.{n}.2");
        let ipc = |args: &[&str]| {
            Command::new("ip")
                .args(args)
                .status()
                .is_ok_and(|s| s.success())
        };
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let mut e = SecondEngine {
            ns: ns.clone(),
            host_if: host_if.clone(),
            dir,
            pid: 0,
            node_id: String::new(),
            ip: ip.clone(),
        };
        let ok = ipc(&["netns", "add", &ns])
            && ipc(&[
                "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
            ])
            && ipc(&["link", "set", &ns_if, "netns", &ns])
            && ipc(&["addr", "add", &format!("10.251.{n}.1/24"), "dev", &host_if])
            && ipc(&["link", "set", &host_if, "up"])
            && ipc(&["-n", &ns, "addr", "add", &format!("{ip}/24"), "dev", &ns_if])
            && ipc(&["-n", &ns, "link", "set", &ns_if, "up"])
            && ipc(&["-n", &ns, "link", "set", "lo", "up"])
            && ipc(&[
                "-n",
                &ns,
                "route",
                "add",
                "default",
                "via",
                &format!("10.251.{n}.1"),
            ]);
        if !ok {
            return Err(
                "cannot make a network namespace and veth pair (needs root and iproute2)".into(),
            );
        }
        let d = e.dir.path().to_path_buf();
        std::fs::write(d.join("daemon.json"), "{}").map_err(|e| e.to_string())?;
        // nsenter, not `ip netns exec`: only the network is its own, so the cgroup
        // mounts stay visible to the engine.
        let child = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{ns}"))
            .arg("dockerd")
            .arg("--config-file")
            .arg(d.join("daemon.json"))
            .arg("--data-root")
            .arg(d.join("root"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("--pidfile")
            .arg(d.join("docker.pid"))
            .args([
                "-H",
                &e.sock(),
                "--bridge=none",
                "--iptables=false",
                "--ip-masq=false",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(d.join("dockerd.log")).map_err(|e| e.to_string())?)
            .spawn()
            .map_err(|e| format!("cannot start dockerd: {e}"))?;
        e.pid = child.id();
        let t0 = Instant::now();
        while e.docker(&["info", "--format", "{{.ID}}"]).is_none() {
            if t0.elapsed() > Duration::from_secs(30) {
                return Err(format!(
                    "the second engine did not start: {}",
                    std::fs::read_to_string(d.join("dockerd.log"))
                        .unwrap_or_default()
                        .lines()
                        .last()
                        .unwrap_or("")
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let token = docker(&["swarm", "join-token", "-q", "worker"]).ok_or("no join token")?;
        e.docker(&[
            "swarm",
            "join",
            "--token",
            &token,
            "--advertise-addr",
            &ip,
            &format!("{manager}:2377"),
        ])
        .ok_or_else(|| format!("the second engine could not join the swarm at {manager}"))?;
        e.node_id = e
            .docker(&["info", "--format", "{{.Swarm.NodeID}}"])
            .unwrap_or_default();
        Ok(e)
    }
}

impl Drop for SecondEngine {
    fn drop(&mut self) {
        let _ = self.docker(&["swarm", "leave", "--force"]);
        if !self.node_id.is_empty() {
            let _ = docker(&["node", "rm", "--force", &self.node_id]);
        }
        if self.pid != 0 {
            let _ = Command::new("kill").arg(self.pid.to_string()).status();
            let t0 = Instant::now();
            while std::path::Path::new(&format!("/proc/{}", self.pid)).exists()
                && t0.elapsed() < Duration::from_secs(20)
            {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .status();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_land_on_two_engines() {
    if !swarm_here() {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    // The manager's own address: a second engine must reach it (not loopback).
    let manager = docker(&["info", "--format", "{{.Swarm.NodeAddr}}"]).unwrap_or_default();
    let under_ci = std::env::var("CI").as_deref() == Ok("true");
    if manager.starts_with("127.") {
        assert!(
            !under_ci,
            "CI must init the swarm on a routable address, not {manager}"
        );
        eprintln!("SKIPPED: the swarm advertises {manager}; a second engine cannot reach it");
        return;
    }
    let engine = match SecondEngine::start(&manager) {
        Ok(e) => e,
        Err(why) => {
            assert!(!under_ci, "CI must run a second engine: {why}");
            eprintln!("SKIPPED: {why}");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pki = pki(d);
    let tag = format!("fogline-test:{}-two", std::process::id());
    let service = format!("fl{}two", std::process::id());
    let _leave = Leave {
        service: service.clone(),
        images: vec![tag.clone()],
    };
    run_ok(fogline().args(["image", "build", "--tag", &tag]));
    // No registry: the image goes to the second engine as a file.
    let saved = d.join("image.tar");
    docker(&["save", "-o", saved.to_str().unwrap(), &tag]).unwrap();
    engine
        .docker(&["load", "-i", saved.to_str().unwrap()])
        .expect("the second engine loads the image");

    // The bridge listens where both engines reach it; workers bind every address and
    // advertise the one their host reaches the bridge from.
    let cfg = d.join("cloud.toml");
    std::fs::write(
        &cfg,
        format!(
            "version = 1\n[mesh]\nmdns = false\ninterval = \"500ms\"\n[enroll]\nlisten = \"{manager}:0\"\nca_dir = {:?}\n[swarm]\nenabled = true\nservice = \"{service}\"\nimage = \"{tag}\"\nmin_replicas = 2\nmax_replicas = 2\nbind = \"0.0.0.0\"\n",
            pki.display().to_string()
        ),
    )
    .unwrap();
    let tls = issue(&pki, "cloud", "bridge");
    let mut cmd = fogline();
    cmd.current_dir(d)
        .args(["bridge", "--config"])
        .arg(&cfg)
        .args(["--id", "cloud", "--data-dir"])
        .arg(d.join("cloud"))
        .args([
            "--http",
            "127.0.0.1:0",
            "--quic",
            &format!("{manager}:0"),
            "--tls-dir",
        ])
        .arg(&tls)
        .args(["--mesh", &format!("/ip4/{manager}/tcp/0")]);
    let b = NodeProc::spawn_cmd(cmd, d.join("cloud"), d);
    wait_until("two workers running on two engines", 90, || {
        let ids = docker(&[
            "service",
            "ps",
            "-q",
            "--filter",
            "desired-state=running",
            &service,
        ])
        .unwrap_or_default();
        let nodes: std::collections::BTreeSet<String> = ids
            .lines()
            .filter_map(|t| docker(&["inspect", "--format", "{{.NodeID}}", t]))
            .collect();
        running(&service) == 2 && nodes.len() == 2
    });
    let workers = || -> Vec<(String, String)> {
        mesh_json(&b)["members"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["state"] == "alive" && m["id"].as_str().unwrap().starts_with(&service))
            .map(|m| {
                (
                    m["id"].as_str().unwrap().to_string(),
                    m["address"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    wait_until("both workers alive in the bridge's mesh", 60, || {
        workers().len() == 2
    });
    let w = workers();
    assert!(
        w.iter()
            .any(|(_, a)| a.starts_with(&format!("{}:", engine.ip))),
        "one worker advertises the second engine's address {}: {w:?}",
        engine.ip
    );
    assert!(
        w.iter().any(|(_, a)| a.starts_with(&format!("{manager}:"))),
        "one advertises the manager's: {w:?}"
    );
    assert_eq!(
        deploy(&b, "hello", "hello/hello.wasm", json!({}))
            .await
            .status(),
        201
    );
    // Each worker, on its own engine, runs a call sent to it.
    let c = client();
    for (id, addr) in &w {
        let r = c
            .post(format!("{}/function/hello", b.url))
            .bearer_auth(&b.token)
            .header("x-fogline-target", format!("quic://{id}@{addr}"))
            .body("two")
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        assert_eq!(
            (status, text.as_str()),
            (200, "hello, two"),
            "{id} at {addr}"
        );
    }
    drop(b);
}
