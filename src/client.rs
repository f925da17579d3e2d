//! Client commands: talk to a gateway over HTTP.
//!
//! The gateway comes from `--gateway` or `FOGLINE_GATEWAY` (default http://127.0.0.1:8080);
//! the admin token from `--token`, `FOGLINE_TOKEN`, or `.fogline/admin.token` (the default
//! local data folder), so the quick start needs none.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::Args;
use fogline_core::openfaas::{FunctionStatus, LogEntry};
use fogline_core::stack::{StackFile, StackFunction};
use fogline_core::units::{parse_duration, ByteSize};

#[derive(Args, Clone)]
pub struct Common {
    /// Gateway URL.
    #[arg(
        long,
        env = "FOGLINE_GATEWAY",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    gateway: String,
    /// A token: the admin token (default: read from .fogline/admin.token) or a namespace's.
    #[arg(long, env = "FOGLINE_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// A CA certificate (PEM) to trust for an https:// gateway, e.g. the cluster's ca.pem.
    #[arg(long, env = "FOGLINE_CACERT", global = true)]
    cacert: Option<PathBuf>,
    /// The namespace to deploy to, list, invoke, remove from (default: openfaas-fn).
    #[arg(long, short = 'n', env = "FOGLINE_NAMESPACE", global = true)]
    namespace: Option<String>,
}

impl Common {
    /// `?namespace=` for system routes, when one was given.
    fn ns_query(&self) -> Vec<(&'static str, String)> {
        self.namespace
            .iter()
            .map(|n| ("namespace", n.clone()))
            .collect()
    }

    /// The function's key in invocation routes: NAME or NAME.NAMESPACE.
    fn key(&self, name: &str) -> anyhow::Result<String> {
        Ok(fogline_core::access::qualify(
            name,
            self.namespace.as_deref(),
        )?)
    }
}

#[derive(Args)]
pub struct DeployArgs {
    /// Function name (omit with -f).
    name: Option<String>,
    /// The function's Wasm module (.wasm or .wat).
    #[arg(long, conflicts_with_all = ["file", "image", "image_tar"])]
    wasm: Option<PathBuf>,
    /// A container image on the node's engine (a container function).
    #[arg(long, conflicts_with_all = ["file", "image_tar"])]
    image: Option<String>,
    /// An image tar (as `docker save` writes it), loaded into the node's engine first.
    #[arg(long, conflicts_with = "file")]
    image_tar: Option<PathBuf>,
    /// Container functions: `exec` (a process per call) or `stream` (warm instances
    /// reading length-prefixed requests).
    #[arg(long, value_parser = ["exec", "stream"])]
    mode: Option<String>,
    /// Container functions: arguments after the image's entrypoint, replacing its CMD
    /// (repeatable, one argument each).
    #[arg(long = "arg", allow_hyphen_values = true)]
    args: Vec<String>,
    /// A stack file describing several functions.
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    /// Wall-clock limit per call, e.g. 2s or 500ms.
    #[arg(long, value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// Memory limit, e.g. 64Mi.
    #[arg(long)]
    memory: Option<ByteSize>,
    /// Most calls running at once on a node.
    #[arg(long)]
    max_concurrency: Option<u32>,
    /// Environment variable, K=V (repeatable).
    #[arg(long = "env", value_parser = parse_kv)]
    env: Vec<(String, String)>,
    /// A secret of its namespace the function reads at /var/openfaas/secrets/NAME
    /// (repeatable; create it first with `fogline secret create`).
    #[arg(long = "secret")]
    secrets: Vec<String>,
    /// Label, K=V (repeatable).
    #[arg(long = "label", value_parser = parse_kv)]
    labels: Vec<(String, String)>,
    /// Safe to run more than once (retries, replays).
    #[arg(long)]
    idempotent: bool,
    /// Latency the callers need; the router avoids places predicted to miss it.
    #[arg(long, value_parser = parse_duration)]
    deadline: Option<Duration>,
    /// Run only in one tier, as faas-cli says it: `--constraint tier==cloud` (also
    /// `tier=cloud`); with no live member of that tier its calls fail at once.
    #[arg(long = "constraint", value_name = "tier==TIER")]
    constraints: Vec<String>,
    /// Milliseconds a cloud placement must save to be chosen (cost weight).
    #[arg(long, value_name = "MS")]
    cloud_cost_ms: Option<u32>,
    /// Milliseconds running on the device itself must save (energy weight).
    #[arg(long, value_name = "MS")]
    device_energy_ms: Option<u32>,
    /// Deploy over QUIC instead of HTTP: quic://[MEMBER@]HOST:PORT (Wasm functions; needs
    /// --tls-dir with an operator certificate).
    #[arg(long, requires = "tls_dir", conflicts_with_all = ["file", "image", "image_tar"])]
    via: Option<String>,
    /// With --via: the operator's certificate folder (`fogline certs issue NAME --role operator`).
    #[arg(long)]
    tls_dir: Option<PathBuf>,
}

#[derive(Args)]
pub struct InvokeArgs {
    name: String,
    /// Request body (default: read stdin).
    #[arg(long)]
    data: Option<String>,
    /// Queue the call and print its id instead of waiting.
    #[arg(long = "async")]
    is_async: bool,
    /// With --async: URL that receives the result.
    #[arg(long, requires = "is_async")]
    callback: Option<String>,
    /// With --async: an idempotency key; submitting again with it (within the node's
    /// `[async] idempotency_window`) gives the same call, which runs once.
    #[arg(long, requires = "is_async")]
    idempotency_key: Option<String>,
    /// With --async: how long the call may take to succeed, retries included (`30s`,
    /// `10m`); then it goes to the dead-letter queue (default: the node's `[async] deadline`).
    #[arg(long, requires = "is_async")]
    deadline: Option<String>,
    /// Invoke over QUIC instead of HTTP: quic://[MEMBER@]HOST:PORT (with MEMBER, the
    /// certificate there must name that member).
    #[arg(long, requires = "tls_dir")]
    via: Option<String>,
    /// With --via: this client's certificate folder (from `fogline certs issue --role client`).
    #[arg(long)]
    tls_dir: Option<PathBuf>,
}

#[derive(Args)]
pub struct RmArgs {
    name: String,
}

#[derive(Args)]
pub struct LogsArgs {
    name: String,
    /// Lines to show (0: all kept).
    #[arg(long, default_value_t = 100)]
    tail: i64,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

pub(crate) struct Gateway {
    base: String,
    token: Option<String>,
    pub(crate) http: reqwest::Client,
    /// `?namespace=` for system routes.
    pub(crate) ns: Vec<(&'static str, String)>,
}

impl Gateway {
    pub(crate) fn new(c: &Common) -> anyhow::Result<Self> {
        let base = c.gateway.trim_end_matches('/').to_string();
        if !base.starts_with("http://") && !base.starts_with("https://") {
            bail!("--gateway {base:?} must start with http:// or https://");
        }
        let token = c.token.clone().or_else(|| {
            std::fs::read_to_string(Path::new(".fogline").join("admin.token"))
                .ok()
                .map(|t| t.trim().to_string())
        });
        let mut builder = reqwest::Client::builder();
        if let Some(ca) = &c.cacert {
            let pem = std::fs::read(ca)
                .with_context(|| format!("cannot read --cacert {}", ca.display()))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .with_context(|| format!("--cacert {}: not a PEM certificate", ca.display()))?;
            builder = builder.add_root_certificate(cert);
        }
        let http = builder.build().context("http client")?;
        Ok(Gateway {
            base,
            token,
            http,
            ns: c.ns_query(),
        })
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    fn admin(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    /// Sends with the token when there is one: every route but invocations and /healthz
    /// needs it.
    pub(crate) async fn send(
        &self,
        rb: reqwest::RequestBuilder,
    ) -> anyhow::Result<reqwest::Response> {
        self.admin(rb).send().await.map_err(|e| {
            let why = if e.is_connect() {
                "is the node running? (fogline up)"
            } else {
                "request failed"
            };
            anyhow!(
                "cannot reach the gateway at {}: {why}: {}",
                self.base,
                root_cause(&e)
            )
        })
    }
}

fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// Turns a non-success response into an error carrying the gateway's own message.
pub(crate) async fn check(resp: reqwest::Response) -> anyhow::Result<reqwest::Response> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let body = resp.text().await.unwrap_or_default();
    let msg = body.trim();
    let hint = if status == reqwest::StatusCode::UNAUTHORIZED {
        " (pass --token or set FOGLINE_TOKEN)"
    } else {
        ""
    };
    bail!(
        "{} {}{hint}",
        status.as_u16(),
        if msg.is_empty() {
            status.canonical_reason().unwrap_or("")
        } else {
            msg
        }
    )
}

pub async fn deploy(common: &Common, a: DeployArgs) -> anyhow::Result<()> {
    let gw = Gateway::new(common)?;
    if let Some(file) = &a.file {
        if a.name.is_some() {
            bail!("give either a NAME with --wasm, or -f STACK, not both");
        }
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        let stack = StackFile::parse(&file.display().to_string(), &text)?;
        let base = file.parent().unwrap_or(Path::new("."));
        for (name, f) in &stack.functions {
            match (&f.wasm, &f.image) {
                (Some(w), _) => deploy_one(&gw, name, &spec_of_stack(f), &base.join(w)).await?,
                (None, Some(image)) => {
                    let mut spec = spec_of_stack(f);
                    spec.insert("runtime".into(), "container".into());
                    spec.insert("image".into(), image.clone().into());
                    deploy_container(&gw, name, &spec, image).await?
                }
                (None, None) => bail!(
                    "{}: function {name:?}: give `wasm` or `image`",
                    file.display()
                ),
            }
        }
        return Ok(());
    }
    let name = a
        .name
        .clone()
        .ok_or_else(|| anyhow!("give the function's NAME and --wasm FILE, or -f STACK"))?;
    let mut spec = serde_json::Map::new();
    let container = a.image.is_some() || a.image_tar.is_some();
    if !container && (a.mode.is_some() || !a.args.is_empty()) {
        bail!("--mode and --arg are for container functions (--image or --image-tar)");
    }
    if let Some(t) = a.timeout {
        spec.insert(
            "timeout".into(),
            humantime::format_duration(t).to_string().into(),
        );
    }
    if let Some(m) = a.memory {
        spec.insert("memory".into(), m.to_string().into());
    }
    if let Some(c) = a.max_concurrency {
        spec.insert("max_concurrency".into(), c.into());
    }
    if !a.env.is_empty() {
        spec.insert(
            "env".into(),
            serde_json::to_value(a.env.iter().cloned().collect::<BTreeMap<_, _>>())?,
        );
    }
    if !a.labels.is_empty() {
        spec.insert(
            "labels".into(),
            serde_json::to_value(a.labels.iter().cloned().collect::<BTreeMap<_, _>>())?,
        );
    }
    if !a.secrets.is_empty() {
        spec.insert("secrets".into(), serde_json::to_value(&a.secrets)?);
    }
    if a.idempotent {
        spec.insert("idempotent".into(), true.into());
    }
    let tier = fogline_core::openfaas::pinned_tier(&a.constraints, true)
        .map_err(|e| anyhow!("--constraint: {}", e.problem))?;
    let placement = fogline_core::manifest::Placement {
        deadline: a.deadline,
        cloud_cost_ms: a.cloud_cost_ms.unwrap_or(0),
        device_energy_ms: a.device_energy_ms.unwrap_or(0),
        tier,
    };
    if !placement.is_default() {
        spec.insert("placement".into(), serde_json::to_value(placement)?);
    }
    if container {
        let image = match (&a.image, &a.image_tar) {
            (Some(i), _) => i.clone(),
            (None, Some(tar)) => load_image(&gw, tar).await?,
            (None, None) => unreachable!("checked above"),
        };
        spec.insert("runtime".into(), "container".into());
        spec.insert("image".into(), image.clone().into());
        let mut c = serde_json::Map::new();
        if let Some(m) = &a.mode {
            c.insert("mode".into(), m.clone().into());
        }
        if !a.args.is_empty() {
            c.insert("cmd".into(), serde_json::to_value(&a.args)?);
        }
        if !c.is_empty() {
            spec.insert("container".into(), c.into());
        }
        return deploy_container(&gw, &name, &spec, &image).await;
    }
    let wasm = a
        .wasm
        .clone()
        .ok_or_else(|| anyhow!("give --wasm FILE with the function's module, or --image NAME"))?;
    if let Some(via) = &a.via {
        let key = common.key(&name)?;
        return deploy_quic(via, a.tls_dir.as_deref(), &key, spec, &wasm).await;
    }
    deploy_one(&gw, &name, &spec, &wasm).await
}

/// The QUIC client and the address (with the member expected there) that `--via` names.
async fn quic_peer(
    via: &str,
    tls_dir: Option<&Path>,
) -> anyhow::Result<(fogline_node::quic::Client, std::net::SocketAddr)> {
    let target = via.strip_prefix("quic://").unwrap_or(via);
    let (member, host) = match target.split_once('@') {
        Some((m, h)) if !m.is_empty() => (Some(m), h),
        Some(_) => bail!("--via {via}: no member name before '@'"),
        None => (None, target),
    };
    let addr: std::net::SocketAddr = tokio::net::lookup_host(host)
        .await
        .with_context(|| format!("--via {via}: not a HOST:PORT"))?
        .next()
        .ok_or_else(|| anyhow!("--via {via}: no address"))?;
    let dir = tls_dir.ok_or_else(|| anyhow!("--via needs --tls-dir with a certificate"))?;
    let tls = fogline_node::tls::TlsDir::load(dir)?;
    let client = fogline_node::quic::Client::new(&tls)?;
    if let Some(m) = member {
        client.expect(addr, m);
    }
    Ok((client, addr))
}

/// `fogline deploy NAME --wasm F --via quic://ADDR`: the manifest goes in a Prepare frame,
/// the member asks for the module by hash, and loads it.
async fn deploy_quic(
    via: &str,
    tls_dir: Option<&Path>,
    name: &str,
    mut spec: serde_json::Map<String, serde_json::Value>,
    wasm: &Path,
) -> anyhow::Result<()> {
    use fogline_node::quic::QuicError;
    let module =
        std::fs::read(wasm).with_context(|| format!("cannot read module {}", wasm.display()))?;
    spec.insert("name".into(), name.into());
    let mut manifest = fogline_core::FunctionManifest::from_json(&serde_json::to_vec(&spec)?)?;
    let digest = fogline_core::Digest::of(&module);
    manifest.module = Some(digest);
    let (client, addr) = quic_peer(via, tls_dir).await?;
    struct One(fogline_core::Digest, bytes::Bytes);
    impl fogline_node::executor::ModuleSource for One {
        fn module(&self, d: &fogline_core::Digest) -> Option<bytes::Bytes> {
            (*d == self.0).then(|| self.1.clone())
        }
    }
    let progress = Progress::start(format!(
        "deploying {name} ({}) over QUIC",
        human_bytes(module.len())
    ));
    let r = client
        .prepare(addr, &manifest, &One(digest, module.into()))
        .await;
    progress.stop();
    match r {
        Ok(cap) => println!("deployed {name} ({digest}) on {} over QUIC", cap.node),
        Err(QuicError::Remote(m)) => bail!("{} {}", m.status, m.message),
        Err(e) => bail!("{e}"),
    }
    Ok(())
}

fn spec_of_stack(f: &StackFunction) -> serde_json::Map<String, serde_json::Value> {
    let mut spec = serde_json::Map::new();
    if let Some(t) = f.timeout {
        spec.insert(
            "timeout".into(),
            humantime::format_duration(t).to_string().into(),
        );
    }
    if let Some(m) = f.memory {
        spec.insert("memory".into(), m.to_string().into());
    }
    if let Some(c) = f.max_concurrency {
        spec.insert("max_concurrency".into(), c.into());
    }
    if !f.env.is_empty() {
        spec.insert(
            "env".into(),
            serde_json::to_value(&f.env).unwrap_or_default(),
        );
    }
    if !f.labels.is_empty() {
        spec.insert(
            "labels".into(),
            serde_json::to_value(&f.labels).unwrap_or_default(),
        );
    }
    if f.idempotent {
        spec.insert("idempotent".into(), true.into());
    }
    if !f.placement.is_default() {
        spec.insert(
            "placement".into(),
            serde_json::to_value(f.placement).unwrap_or_default(),
        );
    }
    spec
}

async fn deploy_one(
    gw: &Gateway,
    name: &str,
    spec: &serde_json::Map<String, serde_json::Value>,
    wasm: &Path,
) -> anyhow::Result<()> {
    let module =
        std::fs::read(wasm).with_context(|| format!("cannot read module {}", wasm.display()))?;
    let size = module.len();
    let header = serde_json::to_string(spec)?;
    let progress = Progress::start(format!("deploying {name} ({})", human_bytes(size)));
    let rb = gw
        .admin(gw.http.put(gw.url(&format!("/v1/functions/{name}"))))
        .query(&gw.ns)
        .header("x-fogline-manifest", header)
        .header("content-type", "application/wasm")
        .body(module);
    let resp = gw.send(rb).await;
    progress.stop();
    let resp = check(resp?).await?;
    let report: serde_json::Value = resp.json().await.context("reading the gateway's answer")?;
    let digest = report["digest"].as_str().unwrap_or("?");
    let compiled = report["compile_ms"]
        .as_f64()
        .map(|ms| format!(", compiled in {ms:.1} ms"))
        .unwrap_or_default();
    let verb = if report["created"].as_bool() == Some(true) {
        "deployed"
    } else {
        "updated"
    };
    println!("{verb} {name} ({digest}{compiled})");
    Ok(())
}

/// Uploads an image tar; returns the first image name it held.
async fn load_image(gw: &Gateway, tar: &Path) -> anyhow::Result<String> {
    let bytes =
        std::fs::read(tar).with_context(|| format!("cannot read image tar {}", tar.display()))?;
    let progress = Progress::start(format!(
        "loading {} ({})",
        tar.display(),
        human_bytes(bytes.len())
    ));
    let rb = gw
        .admin(gw.http.put(gw.url("/v1/images")))
        .header("content-type", "application/x-tar")
        .body(bytes);
    let resp = gw.send(rb).await;
    progress.stop();
    let v: serde_json::Value = check(resp?)
        .await?
        .json()
        .await
        .context("reading the gateway's answer")?;
    v["images"][0]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow!("{}: the engine loaded no image from it", tar.display()))
}

async fn deploy_container(
    gw: &Gateway,
    name: &str,
    spec: &serde_json::Map<String, serde_json::Value>,
    image: &str,
) -> anyhow::Result<()> {
    let rb = gw
        .admin(gw.http.put(gw.url(&format!("/v1/functions/{name}"))))
        .query(&gw.ns)
        .header("x-fogline-manifest", serde_json::to_string(spec)?);
    let resp = check(gw.send(rb).await?).await?;
    let report: serde_json::Value = resp.json().await.context("reading the gateway's answer")?;
    let verb = if report["created"].as_bool() == Some(true) {
        "deployed"
    } else {
        "updated"
    };
    println!("{verb} {name} (image {image})");
    Ok(())
}

/// A one-line elapsed-time indicator on stderr for operations that may take a while.
struct Progress {
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    fn start(what: String) -> Self {
        let tty = std::io::stderr().is_terminal();
        let task = tokio::spawn(async move {
            let t0 = Instant::now();
            eprint!("{what}…");
            if !tty {
                eprintln!();
                return;
            }
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                eprint!("\r{what}… compiling, {:.1}s", t0.elapsed().as_secs_f64());
            }
        });
        Progress { task: Some(task) }
    }

    fn stop(mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
        if std::io::stderr().is_terminal() {
            eprint!("\r\x1b[2K");
        }
    }
}

fn human_bytes(n: usize) -> String {
    if n >= 1 << 20 {
        format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64)
    } else if n >= 1 << 10 {
        format!("{:.1} KiB", n as f64 / 1024.0)
    } else {
        format!("{n} B")
    }
}

pub async fn invoke(common: &Common, a: InvokeArgs) -> anyhow::Result<()> {
    let gw = Gateway::new(common)?;
    let body = match a.data {
        Some(d) => d.into_bytes(),
        None => {
            let mut buf = Vec::new();
            if !std::io::stdin().is_terminal() {
                std::io::stdin()
                    .read_to_end(&mut buf)
                    .context("reading stdin")?;
            }
            buf
        }
    };
    let key = common.key(&a.name)?;
    if let Some(via) = &a.via {
        return invoke_quic(via, a.tls_dir.as_deref(), &key, body).await;
    }
    if a.is_async {
        let mut rb = gw
            .http
            .post(gw.url(&format!("/async-function/{key}")))
            .body(body);
        if let Some(cb) = &a.callback {
            rb = rb.header("x-callback-url", cb);
        }
        if let Some(k) = &a.idempotency_key {
            rb = rb.header("x-idempotency-key", k);
        }
        if let Some(d) = &a.deadline {
            rb = rb.header("x-fogline-deadline", d);
        }
        let resp = check(gw.send(gw.admin(rb)).await?).await?;
        let id = resp
            .headers()
            .get("x-call-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("?")
            .to_string();
        println!("{id}");
        return Ok(());
    }
    let rb = gw.admin(gw.http.post(gw.url(&format!("/function/{key}"))).body(body));
    let resp = check(gw.send(rb).await?).await?;
    let out = resp
        .bytes()
        .await
        .context("reading the function's output")?;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(&out)?;
    if !out.ends_with(b"\n") && std::io::stdout().is_terminal() {
        stdout.write_all(b"\n")?;
    }
    Ok(())
}

async fn invoke_quic(
    via: &str,
    tls_dir: Option<&Path>,
    name: &str,
    body: Vec<u8>,
) -> anyhow::Result<()> {
    use fogline_node::quic::{QuicError, Request};
    let (client, addr) = quic_peer(via, tls_dir).await?;
    let req = Request {
        function: name.to_string(),
        manifest: None,
        body: body.into(),
        via: None,
    };
    struct NoModules;
    impl fogline_node::executor::ModuleSource for NoModules {
        fn module(&self, _: &fogline_core::Digest) -> Option<bytes::Bytes> {
            None
        }
    }
    let reply = match client.invoke(addr, &req, &NoModules).await {
        Ok(r) => r,
        Err(QuicError::Remote(m)) => bail!("{} {}", m.status, m.message),
        Err(e) => bail!("{e}"),
    };
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(&reply.body)?;
    if !reply.body.ends_with(b"\n") && std::io::stdout().is_terminal() {
        stdout.write_all(b"\n")?;
    }
    Ok(())
}

pub async fn ls(common: &Common) -> anyhow::Result<()> {
    let gw = Gateway::new(common)?;
    let resp = check(
        gw.send(gw.http.get(gw.url("/system/functions")).query(&gw.ns))
            .await?,
    )
    .await?;
    let list: Vec<FunctionStatus> = resp.json().await.context("reading the function list")?;
    println!(
        "{:<24} {:<10} {:>12} {:>8} {:>8}  MODULE",
        "NAME", "RUNTIME", "INVOCATIONS", "MEMORY", "TIMEOUT"
    );
    for f in list {
        let runtime = f
            .annotations
            .get("fogline.dev/runtime")
            .cloned()
            .unwrap_or_default();
        let timeout = f
            .annotations
            .get("fogline.dev/timeout")
            .cloned()
            .unwrap_or_default();
        let memory = f.limits.memory.clone().unwrap_or_default();
        let image = f.image.get(..19).unwrap_or(&f.image);
        println!(
            "{:<24} {:<10} {:>12} {:>8} {:>8}  {image}",
            f.name, runtime, f.invocation_count, memory, timeout
        );
    }
    Ok(())
}

pub async fn rm(common: &Common, a: RmArgs) -> anyhow::Result<()> {
    let gw = Gateway::new(common)?;
    let rb = gw
        .admin(gw.http.delete(gw.url("/system/functions")))
        .query(&gw.ns)
        .json(&serde_json::json!({ "functionName": a.name }));
    check(gw.send(rb).await?).await?;
    println!("removed {}", a.name);
    Ok(())
}

pub async fn logs(common: &Common, a: LogsArgs) -> anyhow::Result<()> {
    let gw = Gateway::new(common)?;
    let rb = gw
        .http
        .get(gw.url("/system/logs"))
        .query(&[("name", a.name.as_str()), ("tail", &a.tail.to_string())])
        .query(&gw.ns);
    let resp = check(gw.send(rb).await?).await?;
    let text = resp.text().await?;
    for line in text.lines().filter(|l| !l.is_empty()) {
        let e: LogEntry = serde_json::from_str(line).context("reading a log line")?;
        println!("{} {}", e.timestamp, e.text);
    }
    Ok(())
}

pub async fn status(common: &Common) -> anyhow::Result<()> {
    let gw = Gateway::new(common)?;
    let resp = check(gw.send(gw.http.get(gw.url("/v1/status"))).await?).await?;
    let s: fogline_node::agent::NodeStatus = resp.json().await.context("reading the status")?;
    println!("node        {}", s.id);
    println!("gateway     {}", gw.base);
    println!("version     {}", s.version);
    println!(
        "uptime      {}",
        humantime::format_duration(Duration::from_secs(s.uptime_s))
    );
    println!("functions   {}", s.functions);
    println!(
        "instances   {} of {} in use ({})",
        s.instances_in_use,
        s.instance_slots,
        if s.pooling { "pooled" } else { "on-demand" }
    );
    println!("async queue {}", s.async_queued);
    if !s.outbox.is_empty() {
        let calls: u64 = s.outbox.iter().map(|e| e.calls).sum();
        let oldest = s.outbox.iter().map(|e| e.oldest_s).max().unwrap_or(0);
        println!(
            "outbox      {calls} call(s) waiting for a place, the oldest for {}",
            humantime::format_duration(Duration::from_secs(oldest))
        );
        for e in &s.outbox {
            println!(
                "  {:<20} {:>6}  {}s  {}",
                e.function, e.calls, e.oldest_s, e.reason
            );
        }
    }
    println!("data        {}", s.data_dir);
    if let Some(e) = &s.certificate_expires {
        println!("certificate expires {e}");
    }
    Ok(())
}

#[derive(Args)]
pub struct MeshArgs {
    /// Print the JSON of GET /v1/mesh instead of a table.
    #[arg(long)]
    json: bool,
}

pub async fn mesh(common: &Common, a: MeshArgs) -> anyhow::Result<()> {
    let gw = Gateway::new(common)?;
    let resp = check(gw.send(gw.http.get(gw.url("/v1/mesh"))).await?).await?;
    let v: serde_json::Value = resp.json().await.context("reading the mesh view")?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let rows: Vec<fogline_node::mesh::MemberRow> =
        serde_json::from_value(v["members"].clone()).context("reading the mesh view")?;
    println!(
        "{:<16} {:<7} {:<10} {:<22} {:>6} {:>8} {:<8} {:>7}  WARM",
        "ID", "TIER", "SITE", "ADDRESS", "LOAD", "RTT", "STATE", "AGE"
    );
    for r in rows {
        let rtt = r
            .rtt_ms
            .map(|v| format!("{v:.2}ms"))
            .unwrap_or_else(|| "-".into());
        let id = if r.this {
            format!("{}*", r.id)
        } else {
            r.id.clone()
        };
        println!(
            "{:<16} {:<7} {:<10} {:<22} {:>6.2} {:>8} {:<8} {:>6.1}s  {}",
            id,
            r.tier,
            r.site,
            r.address,
            r.load,
            rtt,
            r.state,
            r.age_ms as f64 / 1000.0,
            r.warm.join(",")
        );
    }
    Ok(())
}

#[derive(Args)]
pub struct PlacementsArgs {
    /// How many recent decisions to show.
    #[arg(long, default_value_t = 20)]
    limit: usize,
    /// Print the router's JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub async fn placements(common: &Common, a: PlacementsArgs) -> anyhow::Result<()> {
    let gw = Gateway::new(common)?;
    let url = gw.url(&format!("/v1/placements?limit={}", a.limit));
    let resp = check(gw.send(gw.http.get(url)).await?).await?;
    let v: serde_json::Value = resp.json().await.context("reading the placements")?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let empty = Vec::new();
    let list = v["placements"].as_array().unwrap_or(&empty);
    if list.is_empty() {
        println!("no placements yet");
        return Ok(());
    }
    println!(
        "{:<16} {:<14} {:>10} {:>10} {:>4} {:<6}  CANDIDATES (predicted ms)",
        "FUNCTION", "CHOSEN", "PREDICTED", "ACTUAL", "TRY", "STATUS"
    );
    for d in list {
        let cands: Vec<String> = d["candidates"]
            .as_array()
            .unwrap_or(&empty)
            .iter()
            .map(|c| {
                format!(
                    "{}={:.2}{}",
                    c["place"].as_str().unwrap_or("?"),
                    c["predicted_ms"].as_f64().unwrap_or(f64::NAN),
                    if c["source"] == "model" { "" } else { "~" }
                )
            })
            .collect();
        let chosen = match d["ran_on"].as_str() {
            Some(r) if Some(r) != d["chosen"].as_str() => {
                format!("{}->{r}", d["chosen"].as_str().unwrap_or("?"))
            }
            _ => d["chosen"].as_str().unwrap_or("?").to_string(),
        };
        let actual = d["actual_ms"]
            .as_f64()
            .map(|v| format!("{v:.2}ms"))
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<16} {:<14} {:>8.2}ms {:>10} {:>4} {:<6}  {}{}{}",
            d["function"].as_str().unwrap_or("?"),
            chosen,
            d["predicted_ms"].as_f64().unwrap_or(f64::NAN),
            actual,
            d["attempts"].as_u64().unwrap_or(0),
            d["status"].as_u64().unwrap_or(0),
            cands.join(" "),
            if d["explored"] == true {
                "  (explore)"
            } else {
                ""
            },
            if d["guessed"] == true {
                "  (size guessed: its first call anywhere)"
            } else {
                ""
            }
        );
    }
    if let Some(e) = v["median_prediction_error"].as_f64() {
        println!(
            "median prediction error: {:.1} %  (~ marks analytic estimates)",
            e * 100.0
        );
    }
    Ok(())
}

#[derive(clap::Subcommand)]
pub enum NamespaceCmd {
    /// Create a namespace; prints its token once (alone on the last line).
    Create {
        name: String,
        /// Anyone may invoke its functions without a token.
        #[arg(long)]
        public: bool,
    },
    /// List namespaces.
    Ls,
    /// Print the secret --namespace's callbacks are signed with (Standard Webhooks
    /// `whsec_…`), alone on its line, for the receivers to verify them.
    WebhookSecret,
}

pub async fn namespace(common: &Common, c: NamespaceCmd) -> anyhow::Result<()> {
    let gw = Gateway::new(common)?;
    match c {
        NamespaceCmd::Create { name, public } => {
            let rb = gw
                .http
                .post(gw.url("/system/namespaces"))
                .json(&serde_json::json!({ "name": name, "public": public }));
            let v = answer(&gw, rb).await?;
            let token = v["token"]
                .as_str()
                .ok_or_else(|| anyhow!("the gateway returned no token"))?;
            println!(
                "namespace {name} created{} (token id {}); its token, shown once:",
                if public { ", public" } else { "" },
                v["token_id"].as_str().unwrap_or("?")
            );
            println!("{token}");
        }
        NamespaceCmd::WebhookSecret => {
            let rb = gw.http.get(gw.url("/v1/webhook-secret")).query(&gw.ns);
            let text = check(gw.send(rb).await?).await?.text().await?;
            println!("{}", text.trim());
        }
        NamespaceCmd::Ls => {
            let resp = check(gw.send(gw.http.get(gw.url("/system/namespaces"))).await?).await?;
            let list: Vec<String> = resp.json().await.context("reading the namespaces")?;
            for n in list {
                println!("{n}");
            }
        }
    }
    Ok(())
}

#[derive(clap::Subcommand)]
pub enum TokenCmd {
    /// List minted tokens (ids and grants; secrets are never kept).
    Ls,
    /// Mint a token for --namespace (default openfaas-fn), or with --role a join token for
    /// `fogline join` (on a bridge or router that takes enrollments); prints it once,
    /// alone on the last line.
    Create {
        /// deploy, invoke or read (repeatable; default: all three).
        #[arg(long = "scope", conflicts_with = "role")]
        scopes: Vec<String>,
        /// A join token for a new member of this role: node or bridge.
        #[arg(long)]
        role: Option<String>,
        /// With --role: how long the token may be used, e.g. 1h or 10m.
        #[arg(long, requires = "role", default_value = "1h")]
        ttl: String,
        /// With --role: how many boards may join with it.
        #[arg(long, requires = "role", default_value_t = 1)]
        uses: u32,
        /// With --role: the site the new member joins (its mesh site).
        #[arg(long, requires = "role")]
        site: Option<String>,
        /// What it is for.
        #[arg(long)]
        note: Option<String>,
    },
    /// Revoke a token by id: refused from the next request on.
    Revoke { id: String },
}

pub async fn token(common: &Common, c: TokenCmd) -> anyhow::Result<()> {
    let gw = Gateway::new(common)?;
    match c {
        TokenCmd::Ls => {
            let resp = check(gw.send(gw.http.get(gw.url("/v1/tokens"))).await?).await?;
            let list: Vec<serde_json::Value> = resp.json().await.context("reading the tokens")?;
            println!(
                "{:<16}  {:<20}  {:<20}  {:<20}  NOTE",
                "ID", "NAMESPACE", "SCOPES", "CREATED"
            );
            for t in list {
                let g = &t["grant"];
                let (what, scopes) = if g["kind"] == "join" {
                    (
                        format!("join:{}", g["role"].as_str().unwrap_or("?")),
                        format!(
                            "{} uses left, until {}",
                            g["uses_left"],
                            humantime::format_rfc3339_seconds(
                                std::time::UNIX_EPOCH
                                    + Duration::from_secs(g["expires_at"].as_u64().unwrap_or(0))
                            )
                        ),
                    )
                } else {
                    let scopes: Vec<&str> = g["scopes"]
                        .as_array()
                        .map(|a| a.iter().filter_map(|s| s.as_str()).collect())
                        .unwrap_or_default();
                    (
                        g["namespace"].as_str().unwrap_or("(admin)").to_string(),
                        scopes.join(","),
                    )
                };
                println!(
                    "{:<16}  {:<20}  {:<20}  {:<20}  {}",
                    t["id"].as_str().unwrap_or("?"),
                    what,
                    scopes,
                    t["created_at"].as_str().unwrap_or(""),
                    t["note"].as_str().unwrap_or("")
                );
            }
        }
        TokenCmd::Create {
            role: Some(role),
            ttl,
            uses,
            site,
            note,
            ..
        } => {
            let rb = gw.http.post(gw.url("/v1/tokens")).json(&serde_json::json!({
                "role": role, "ttl": ttl, "uses": uses, "site": site, "note": note,
            }));
            let v = answer(&gw, rb).await?;
            println!(
                "join token {} for a {role} ({uses} use(s), {ttl}{}); on the new board run `fogline join TOKEN`; shown once:",
                v["id"].as_str().unwrap_or("?"),
                site.map(|s| format!(", site {s}")).unwrap_or_default()
            );
            println!(
                "{}",
                v["token"]
                    .as_str()
                    .ok_or_else(|| anyhow!("the gateway returned no token"))?
            );
        }
        TokenCmd::Create { scopes, note, .. } => {
            let ns = common
                .namespace
                .clone()
                .unwrap_or_else(|| fogline_core::access::DEFAULT_NAMESPACE.to_string());
            let scopes: Vec<String> = if scopes.is_empty() {
                vec!["deploy".into(), "invoke".into(), "read".into()]
            } else {
                for s in &scopes {
                    fogline_core::access::Scope::parse(s).map_err(|e| anyhow!("--scope: {e}"))?;
                }
                scopes
            };
            let rb = gw
                .http
                .post(gw.url("/v1/tokens"))
                .json(&serde_json::json!({ "namespace": ns, "scopes": scopes, "note": note }));
            let v = answer(&gw, rb).await?;
            println!(
                "token {} for namespace {ns} ({}), shown once:",
                v["id"].as_str().unwrap_or("?"),
                scopes.join(",")
            );
            println!(
                "{}",
                v["token"]
                    .as_str()
                    .ok_or_else(|| anyhow!("the gateway returned no token"))?
            );
        }
        TokenCmd::Revoke { id } => {
            let rb = gw.http.delete(gw.url(&format!("/v1/tokens/{id}")));
            check(gw.send(rb).await?).await?;
            println!("token {id} revoked");
        }
    }
    Ok(())
}

#[derive(clap::Subcommand)]
pub enum SecretCmd {
    /// Create a secret in --namespace (default openfaas-fn); functions deployed with
    /// `--secret NAME` read it at /var/openfaas/secrets/NAME.
    Create(SecretValueArgs),
    /// Replace a secret's value (functions using it see the new one).
    Update(SecretValueArgs),
    /// List a namespace's secrets (names only: values are never returned).
    Ls,
    /// Remove a secret.
    Rm { name: String },
}

#[derive(Args)]
pub struct SecretValueArgs {
    name: String,
    /// The value, on the command line (it lands in the shell's history: prefer --from-file).
    #[arg(
        long,
        conflicts_with = "from_file",
        required_unless_present = "from_file"
    )]
    from_literal: Option<String>,
    /// A file holding the value (any bytes).
    #[arg(long)]
    from_file: Option<PathBuf>,
}

pub async fn secret(common: &Common, c: SecretCmd) -> anyhow::Result<()> {
    let gw = Gateway::new(common)?;
    let ns = common
        .namespace
        .clone()
        .unwrap_or_else(|| fogline_core::access::DEFAULT_NAMESPACE.to_string());
    match c {
        SecretCmd::Create(a) => put_secret(&gw, &ns, a, true).await?,
        SecretCmd::Update(a) => put_secret(&gw, &ns, a, false).await?,
        SecretCmd::Ls => {
            let rb = gw.http.get(gw.url("/system/secrets")).query(&gw.ns);
            let list: Vec<serde_json::Value> = check(gw.send(rb).await?)
                .await?
                .json()
                .await
                .context("reading the secrets")?;
            for s in list {
                println!("{}", s["name"].as_str().unwrap_or("?"));
            }
        }
        SecretCmd::Rm { name } => {
            let rb = gw
                .http
                .delete(gw.url("/system/secrets"))
                .json(&serde_json::json!({ "name": name, "namespace": ns }));
            check(gw.send(rb).await?).await?;
            println!("secret {name} removed from {ns}");
        }
    }
    Ok(())
}

async fn put_secret(
    gw: &Gateway,
    ns: &str,
    a: SecretValueArgs,
    create: bool,
) -> anyhow::Result<()> {
    use base64::Engine as _;
    let value = match (&a.from_literal, &a.from_file) {
        (Some(v), _) => v.clone().into_bytes(),
        (None, Some(f)) => {
            std::fs::read(f).with_context(|| format!("cannot read --from-file {}", f.display()))?
        }
        (None, None) => bail!("give --from-literal VALUE or --from-file FILE"),
    };
    let body = serde_json::json!({
        "name": a.name,
        "namespace": ns,
        "rawValue": base64::engine::general_purpose::STANDARD.encode(&value),
    });
    let rb = if create {
        gw.http.post(gw.url("/system/secrets"))
    } else {
        gw.http.put(gw.url("/system/secrets"))
    };
    check(gw.send(rb.json(&body)).await?).await?;
    println!(
        "secret {} {} in {ns} ({} bytes)",
        a.name,
        if create { "created" } else { "updated" },
        value.len()
    );
    Ok(())
}

/// Sends a request and reads the gateway's JSON answer.
async fn answer(gw: &Gateway, rb: reqwest::RequestBuilder) -> anyhow::Result<serde_json::Value> {
    check(gw.send(rb).await?)
        .await?
        .json()
        .await
        .context("reading the gateway's answer")
}

/// Hands a signed revocation list to the member at `url` (admin token).
pub async fn push_revocations(
    common: &Common,
    url: &str,
    signed: &fogline_core::revocation::SignedList,
) -> anyhow::Result<()> {
    let mut c = common.clone();
    c.gateway = url.to_string();
    let gw = Gateway::new(&c)?;
    let rb = gw.http.post(gw.url("/v1/revocations")).json(signed);
    let text = check(gw.send(rb).await?).await?.text().await?;
    println!("{url}: {}", text.trim());
    Ok(())
}
