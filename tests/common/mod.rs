//! Helpers for whole-system tests: start the real `fogline` binary and talk to it.
#![allow(dead_code)]

pub mod netns;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_fogline"))
}

pub fn fogline() -> Command {
    let mut c = Command::new(bin());
    c.env_remove("FOGLINE_GATEWAY").env_remove("FOGLINE_TOKEN");
    c
}

pub fn example(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(rel)
}

pub fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// A running `fogline up` or `fogline node` process, killed on drop.
pub struct NodeProc {
    pub child: Child,
    pub url: String,
    pub data_dir: PathBuf,
    pub token: String,
    /// The QUIC address, when the node serves QUIC.
    pub quic: Option<std::net::SocketAddr>,
    /// The CoAP address, when the node serves CoAP.
    pub coap: Option<std::net::SocketAddr>,
    pub stdout_rest: mpsc::Receiver<String>,
}

impl NodeProc {
    /// `fogline up --single --data-dir <dir>/.fogline --http 127.0.0.1:0`, run from `dir`:
    /// one node alone.
    pub fn up(dir: &Path) -> Self {
        let data = dir.join(".fogline");
        let mut cmd = fogline();
        cmd.current_dir(dir)
            .args(["up", "--single", "--data-dir"])
            .arg(&data)
            .args(["--http", "127.0.0.1:0", "--coap", "127.0.0.1:0"]);
        Self::spawn(cmd, data, dir)
    }

    /// `fogline up --http 127.0.0.1:0 --coap 127.0.0.1:0`, run from `dir`: the README's local
    /// mesh (a router, two edge nodes, a cloud bridge), data in `dir/.fogline`.
    pub fn up_mesh(dir: &Path) -> Self {
        let mut cmd = fogline();
        cmd.current_dir(dir)
            .args(["up", "--http", "127.0.0.1:0", "--coap", "127.0.0.1:0"]);
        Self::spawn(cmd, dir.join(".fogline"), dir)
    }

    /// `fogline node --config <config> --data-dir <dir>/node --http 127.0.0.1:0`.
    pub fn node(dir: &Path, config: &Path) -> Self {
        let data = dir.join("node");
        let mut cmd = fogline();
        cmd.current_dir(dir)
            .arg("node")
            .arg("--config")
            .arg(config)
            .arg("--data-dir")
            .arg(&data)
            .args(["--http", "127.0.0.1:0"]);
        Self::spawn(cmd, data, dir)
    }

    /// `fogline ROLE --config CONFIG --data-dir DIR/NAME --http 127.0.0.1:0 EXTRA...`.
    pub fn role(dir: &Path, role: &str, name: &str, config: &Path, extra: &[&str]) -> Self {
        let data = dir.join(name);
        let mut cmd = fogline();
        cmd.current_dir(dir)
            .arg(role)
            .arg("--config")
            .arg(config)
            .arg("--data-dir")
            .arg(&data)
            .args(["--http", "127.0.0.1:0"])
            .args(extra);
        Self::spawn(cmd, data, dir)
    }

    /// Starts any prepared command that runs a node (e.g. inside a network namespace).
    pub fn spawn_cmd(cmd: Command, data_dir: PathBuf, dir: &Path) -> Self {
        Self::spawn(cmd, data_dir, dir)
    }

    fn spawn(mut cmd: Command, data_dir: PathBuf, dir: &Path) -> Self {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("node.stderr"))
            .expect("stderr log");
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start fogline");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let first = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| {
                panic!(
                    "fogline printed nothing in 30 s; stderr: {}",
                    std::fs::read_to_string(dir.join("node.stderr")).unwrap_or_default()
                )
            });
        let url = first
            .strip_prefix("gateway listening on ")
            .unwrap_or_else(|| panic!("unexpected first line: {first:?}"))
            .to_string();
        let mut quic = None;
        let mut coap = None;
        while let Ok(line) = rx.recv_timeout(Duration::from_secs(30)) {
            if let Some(q) = line.strip_prefix("quic listening on ") {
                quic = Some(q.parse().expect("quic address"));
            }
            if let Some(c) = line.strip_prefix("coap listening on ") {
                coap = Some(c.parse().expect("coap address"));
            }
            if line.contains(" ready; data in ") || line.starts_with("local mesh ready") {
                break;
            }
        }
        let token = std::fs::read_to_string(data_dir.join("admin.token"))
            .expect("admin.token")
            .trim()
            .to_string();
        NodeProc {
            child,
            url,
            data_dir,
            token,
            quic,
            coap,
            stdout_rest: rx,
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        self.child.wait().expect("wait")
    }

    pub fn cli(&self) -> Command {
        let mut c = fogline();
        c.args(["--gateway", &self.url, "--token", &self.token]);
        c
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A client that sends `token` with every request (the gateway's read routes need it).
pub fn authed(token: &str) -> reqwest::Client {
    let mut h = reqwest::header::HeaderMap::new();
    h.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().expect("header"),
    );
    reqwest::Client::builder()
        .default_headers(h)
        .build()
        .expect("client")
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// `GET /v1/status` of a node, as JSON.
pub async fn status(n: &NodeProc) -> serde_json::Value {
    client()
        .get(format!("{}/v1/status", n.url))
        .bearer_auth(&n.token)
        .send()
        .await
        .expect("status request")
        .json()
        .await
        .expect("status JSON")
}

/// Deploys an example module through the native upload route.
pub async fn deploy(
    node: &NodeProc,
    name: &str,
    wasm: &str,
    manifest: serde_json::Value,
) -> reqwest::Response {
    let bytes = std::fs::read(example(wasm)).expect("example module");
    client()
        .put(format!("{}/v1/functions/{name}", node.url))
        .bearer_auth(&node.token)
        .header("x-fogline-manifest", manifest.to_string())
        .body(bytes)
        .send()
        .await
        .expect("deploy request")
}

pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run fogline");
    assert!(
        out.status.success(),
        "command failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn run_err(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run fogline");
    assert!(
        !out.status.success(),
        "command should have failed; stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A cluster CA in `dir/pki`, made by the real CLI.
pub fn pki(dir: &Path) -> PathBuf {
    let root = dir.join("pki");
    run_ok(fogline().args(["certs", "init", "--dir"]).arg(&root));
    root
}

/// A certificate folder for `name` with `role`, issued by the CA in `pki`.
pub fn issue(pki: &Path, name: &str, role: &str) -> PathBuf {
    let out = pki.join(name);
    run_ok(
        fogline()
            .args(["certs", "issue", name, "--role", role, "--ca"])
            .arg(pki)
            .arg("--out")
            .arg(&out),
    );
    out
}

/// `GET /v1/mesh` through the real CLI (`fogline mesh --json`).
pub fn mesh_json(n: &NodeProc) -> serde_json::Value {
    let out = run_ok(fogline().args(["--gateway", &n.url, "--token", &n.token, "mesh", "--json"]));
    serde_json::from_str(&out).expect("mesh --json prints JSON")
}

/// Polls `ok` every 100 ms; fails the test after `secs`. Returns how long it took.
pub fn wait_until(what: &str, secs: u64, mut ok: impl FnMut() -> bool) -> Duration {
    let t = std::time::Instant::now();
    while !ok() {
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "{what}: not within {secs} s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    t.elapsed()
}

/// The ids of the members `n`'s mesh view shows alive, sorted.
pub fn alive(n: &NodeProc) -> Vec<String> {
    let mut v: Vec<String> = mesh_json(n)["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["state"] == "alive")
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

/// `GET /v1/placements?limit=N` of a router.
pub async fn placements(c: &reqwest::Client, router: &str, limit: usize) -> serde_json::Value {
    c.get(format!("{router}/v1/placements?limit={limit}"))
        .send()
        .await
        .expect("placements request")
        .json()
        .await
        .expect("placements JSON")
}

/// Invocations of `function` the node counted, by status code.
pub async fn calls(n: &NodeProc, function: &str, code: u16) -> u64 {
    let name = format!(
        "gateway_function_invocation_total{{function_name=\"{function}\",code=\"{code}\"}}"
    );
    metric_value(&metrics(n).await, &name).map_or(0, |v| v as u64)
}

/// The value of counter or gauge `name` (no labels) in `/metrics` text, if it is there.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap())
}

/// `GET /metrics` of a gateway, as text.
pub async fn metrics(n: &NodeProc) -> String {
    client()
        .get(format!("{}/metrics", n.url))
        .bearer_auth(&n.token)
        .send()
        .await
        .expect("metrics request")
        .text()
        .await
        .expect("metrics text")
}

/// CPUs this process may use (the tests pin edge nodes to one each, like separate boards).
pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Starts `fogline ROLE` as mesh member `name`, pinned to `cpu` when there is one to spare.
pub fn member(
    dir: &Path,
    pki: &Path,
    role: &str,
    name: &str,
    join: Option<&str>,
    cpu: Option<usize>,
) -> NodeProc {
    member_with(dir, pki, role, name, join, cpu, "")
}

/// [`member`] with more config sections (`extra`, TOML).
pub fn member_with(
    dir: &Path,
    pki: &Path,
    role: &str,
    name: &str,
    join: Option<&str>,
    cpu: Option<usize>,
    extra: &str,
) -> NodeProc {
    let cmd = member_command(dir, pki, role, name, join, cpu, extra);
    NodeProc::spawn_cmd(cmd, dir.join(name), dir)
}

/// The command [`member_with`] runs, to change (its environment) before starting it.
pub fn member_command(
    dir: &Path,
    pki: &Path,
    role: &str,
    name: &str,
    join: Option<&str>,
    cpu: Option<usize>,
    extra: &str,
) -> Command {
    let cfg = dir.join(format!("{name}.toml"));
    std::fs::write(
        &cfg,
        format!("version = 1\n[mesh]\nmdns = false\ninterval = \"500ms\"\n{extra}"),
    )
    .unwrap();
    let cert_role = match role {
        "bridge" => "bridge",
        "router" => "router",
        _ => "node",
    };
    let tls = issue(pki, name, cert_role);
    let mut cmd = match cpu.filter(|_| cpus() >= 2 && Path::new("/usr/bin/taskset").exists()) {
        Some(c) => {
            let mut t = std::process::Command::new("/usr/bin/taskset");
            t.args(["-c", &c.to_string()]).arg(bin());
            t
        }
        None => std::process::Command::new(bin()),
    };
    cmd.env_remove("FOGLINE_GATEWAY")
        .env_remove("FOGLINE_TOKEN")
        .current_dir(dir)
        .arg(role)
        .arg("--config")
        .arg(&cfg)
        .args(["--id", name, "--data-dir"])
        .arg(dir.join(name))
        .args([
            "--http",
            "127.0.0.1:0",
            "--quic",
            "127.0.0.1:0",
            "--tls-dir",
        ])
        .arg(&tls)
        .args(["--mesh", "/ip4/127.0.0.1/tcp/0"]);
    if let Some(j) = join {
        cmd.args(["--join", j]);
    }
    cmd
}

/// A continuum on loopback: a cloud bridge, two edge nodes (each pinned to a CPU where
/// there are two) and a router (with `router_extra` TOML), meshed, each with its own
/// certificate; returned once the router sees every member alive.
pub fn continuum(
    dir: &Path,
    pki: &Path,
    router_extra: &str,
) -> (NodeProc, [NodeProc; 2], NodeProc) {
    let cloud = member(dir, pki, "bridge", "cloud", None, None);
    let seed = mesh_json(&cloud)["self"].as_str().unwrap().to_string();
    let edges = [
        member(dir, pki, "node", "edge-1", Some(&seed), Some(0)),
        member(dir, pki, "node", "edge-2", Some(&seed), Some(1)),
    ];
    let router = member_with(
        dir,
        pki,
        "router",
        "router",
        Some(&seed),
        None,
        router_extra,
    );
    wait_until("the router sees every member", 20, || {
        alive(&router) == ["cloud", "edge-1", "edge-2", "router"]
    });
    (cloud, edges, router)
}

/// Deploys `examples/hello` as an idempotent function through `node` (a router, usually).
pub async fn deploy_hello(node: &NodeProc) {
    let r = deploy(
        node,
        "hello",
        "hello/hello.wasm",
        serde_json::json!({"idempotent": true}),
    )
    .await;
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
}

/// Invokes through the router; returns (status, placed-on node, body).
pub async fn call(c: &reqwest::Client, router: &str, f: &str, body: &str) -> (u16, String, String) {
    let (status, placed, _, body) = call_attempts(c, router, f, body).await;
    (status, placed, body)
}

/// [`call`], with the attempts the router made (its `x-fogline-attempts`; empty without
/// one): (status, placed-on node, attempts, body).
pub async fn call_attempts(
    c: &reqwest::Client,
    router: &str,
    f: &str,
    body: &str,
) -> (u16, String, String, String) {
    let r = c
        .post(format!("{router}/function/{f}"))
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let header = |h: &str| {
        r.headers()
            .get(h)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    };
    let placed = header("x-fogline-placed-on")
        .split(' ')
        .next()
        .unwrap()
        .to_string();
    let attempts = header("x-fogline-attempts");
    (status, placed, attempts, r.text().await.unwrap())
}

/// Every file under `dir`, at any depth.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// A GET's status and body.
pub async fn get(c: &reqwest::Client, url: String) -> (u16, String) {
    let r = c.get(url).send().await.expect("GET");
    (r.status().as_u16(), r.text().await.expect("body"))
}

/// A TCP port free on loopback now (for a program that must be told its port).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("address")
        .port()
}

/// What the nodes run from `dir` logged, the lines `keep` picks, one per line: for a
/// failure to show.
pub fn logged(dir: &Path, keep: impl Fn(&str) -> bool) -> String {
    std::fs::read_to_string(dir.join("node.stderr"))
        .unwrap_or_default()
        .lines()
        .filter(|l| keep(l))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Waits (up to 60 s) until async call `id` on `node` has a result: its status and body.
pub async fn async_result(c: &reqwest::Client, node: &NodeProc, id: &str) -> (u16, String) {
    let t = std::time::Instant::now();
    loop {
        let (s, body) = get(c, format!("{}/v1/calls/{id}", node.url)).await;
        if s != 202 {
            return (s, body);
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "call {id} still queued after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads one HTTP/1.1 request from `s`: its head (lower-cased) and the body its
/// Content-Length names; `None` when the peer closed first.
pub async fn read_request(s: &mut tokio::net::TcpStream) -> Option<(String, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let (head, start, len) = loop {
        let k = s.read(&mut chunk).await.ok()?;
        if k == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..k]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().expect("a numeric Content-Length"));
            break (head, end + 4, len);
        }
    };
    while buf.len() < start + len {
        let k = s.read(&mut chunk).await.ok()?;
        if k == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..k]);
    }
    Some((head, buf[start..start + len].to_vec()))
}

/// The value of header `name` (lower case) in a head [`read_request`] returned.
pub fn header_of<'a>(head: &'a str, name: &str) -> &'a str {
    head.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')))
        .unwrap_or("")
        .trim()
}

/// A test that needs `what` and cannot have it here (`why`): skipped with a message on a
/// user's machine, a failure under `CI=true` (where `.ci/run` provides it).
pub fn skip_without(what: &str, why: &str) {
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI must have {what}: {why}"
    );
    eprintln!("SKIPPED: needs {what}: {why}");
}
