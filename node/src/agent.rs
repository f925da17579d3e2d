//! The node agent: deployed functions, the executors that run them, the async call queue,
//! and the state the gateway reports. The gateway (`gateway.rs`) is a thin HTTP face on it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use fogline_core::config::NodeConfig;
use fogline_core::{Digest, FunctionManifest, ManifestError, Runtime};
use tokio::sync::{mpsc, Semaphore};

use crate::executor::container::ContainerExecutor;
use crate::executor::wasm::WasmExecutor;
use crate::executor::{ExecError, Executor, Invocation, ModuleSource, Output};
use crate::logs::Logs;
use crate::metrics::{Gauges, Metrics};
use crate::store::{now_ms, AsyncCall, CallResult, Store, StoreError, StoredFunction};

/// A function the node can run now.
#[derive(Debug)]
pub struct Deployed {
    pub manifest: FunctionManifest,
    pub created_at: String,
    in_flight: AtomicU32,
}

/// The node agent. Shared by the gateway and the async workers.
pub struct Node {
    pub id: String,
    pub config: NodeConfig,
    pub metrics: Metrics,
    pub logs: Logs,
    store: Store,
    wasm: Arc<WasmExecutor>,
    /// Container functions' executor, or why there is none.
    containers: Result<Arc<ContainerExecutor>, String>,
    functions: RwLock<HashMap<String, Arc<Deployed>>>,
    token: String,
    started: Instant,
    queued: AtomicU64,
    async_tx: mpsc::Sender<u64>,
    http: reqwest::Client,
    /// QUIC client for calls to other tiers (set when the node has certificates).
    pub peers: std::sync::OnceLock<Arc<crate::quic::Client>>,
    /// QUIC streams being served now.
    pub quic_streams: AtomicU32,
    /// Replies sent over QUIC, until their callers acknowledge them (for a clean stop).
    pub delivering: crate::quic::Delivering,
    /// Told to stop: finishing what it has, refusing new calls from other tiers (with a
    /// retryable error, so they go elsewhere).
    pub stopping: std::sync::atomic::AtomicBool,
    /// The gossip mesh, when it is on.
    pub mesh: std::sync::OnceLock<Arc<crate::mesh::Mesh>>,
    /// The machine's size, read once at start.
    pub cores: u32,
    pub memory_bytes: u64,
    /// Set on a router: decides where each call runs.
    pub dispatch: std::sync::OnceLock<Arc<dyn crate::dispatch::Dispatch>>,
    /// Where other tiers reach this node (set once the listeners are bound).
    pub addresses: std::sync::OnceLock<(Option<std::net::SocketAddr>, std::net::SocketAddr)>,
}

/// Why a deploy was refused.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("module {0} is not on this node; upload it first (PUT /v1/modules or PUT /v1/functions/NAME)")]
    UnknownModule(Digest),
    #[error("runtime `{0}` is not available on this node")]
    Runtime(Runtime),
    #[error("function {0:?} not found")]
    NotFound(String),
    #[error("{0}")]
    Exec(#[from] ExecError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a call produced no output.
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    #[error("function {0:?} not found")]
    NotFound(String),
    #[error("function {function:?} is at its limit of {limit} concurrent calls; retry shortly")]
    Busy { function: String, limit: u32 },
    #[error("async queue is full ({0} calls waiting); retry shortly")]
    QueueFull(u64),
    #[error("function {function:?} {source}")]
    Exec { function: String, source: ExecError },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a deploy did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeployReport {
    pub name: String,
    pub digest: String,
    pub created: bool,
    /// Milliseconds spent compiling, when the module had to be compiled.
    pub compile_ms: Option<f64>,
}

/// Node status for `fogline status` and `GET /v1/status`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct NodeStatus {
    pub id: String,
    pub tier: String,
    pub version: String,
    pub uptime_s: u64,
    pub functions: usize,
    pub instances_in_use: u32,
    pub instance_slots: u32,
    pub pooling: bool,
    pub async_queued: u64,
    pub quic_streams: u32,
    pub data_dir: String,
}

/// A freshly opened node and the pieces its caller must drive.
pub struct Opened {
    pub node: Arc<Node>,
    /// Set when this start created the admin token (print it once).
    pub new_token: Option<String>,
    pub async_rx: mpsc::Receiver<u64>,
}

impl Node {
    /// Opens the data folder, the store and the executors, and reloads deployed functions.
    pub async fn open(config: NodeConfig) -> anyhow::Result<Opened> {
        let dir = config.node.data_dir.clone();
        std::fs::create_dir_all(&dir)
            .map_err(|e| anyhow::anyhow!("cannot create data folder {}: {e}", dir.display()))?;
        let (token, new_token) = load_or_create_token(&dir.join("admin.token"))?;
        let store = Store::open(&dir.join("store"))?;
        let wasm = Arc::new(WasmExecutor::new(&config.wasm, dir.join("compiled"))?);
        let id = config.node.id.clone().unwrap_or_else(hostname);
        let containers = open_containers(&config, &id).await;
        let mut functions = HashMap::new();
        for f in store.functions()? {
            functions.insert(
                f.manifest.name.clone(),
                Arc::new(Deployed {
                    manifest: f.manifest,
                    created_at: f.created_at,
                    in_flight: AtomicU32::new(0),
                }),
            );
        }
        let pending = store.pending()?;
        let cap = (config.async_calls.max_queued as usize)
            .max(pending.len())
            .max(1);
        let (async_tx, async_rx) = mpsc::channel(cap);
        for (id, _) in &pending {
            // Cannot fail: the channel holds at least every pending call.
            let _ = async_tx.try_send(*id);
        }
        let node = Node {
            id,
            containers,
            metrics: Metrics::default(),
            logs: Logs::new(1000),
            store,
            wasm,
            functions: RwLock::new(functions),
            token,
            started: Instant::now(),
            queued: AtomicU64::new(pending.len() as u64),
            async_tx,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .map_err(|e| anyhow::anyhow!("http client: {e}"))?,
            peers: std::sync::OnceLock::new(),
            quic_streams: AtomicU32::new(0),
            stopping: std::sync::atomic::AtomicBool::new(false),
            delivering: Default::default(),
            mesh: std::sync::OnceLock::new(),
            addresses: std::sync::OnceLock::new(),
            dispatch: std::sync::OnceLock::new(),
            cores: std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1),
            memory_bytes: total_memory(),
            config,
        };
        if !pending.is_empty() {
            tracing::info!(
                "resuming {} async calls accepted before the last stop",
                pending.len()
            );
        }
        Ok(Opened {
            node: Arc::new(node),
            new_token,
            async_rx,
        })
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    pub fn data_dir(&self) -> &Path {
        &self.config.node.data_dir
    }

    pub fn lookup(&self, name: &str) -> Option<Arc<Deployed>> {
        self.functions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    pub fn list(&self) -> Vec<Arc<Deployed>> {
        let mut v: Vec<_> = self
            .functions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        v.sort_by(|a, b| a.manifest.name.cmp(&b.manifest.name));
        v
    }

    /// Stores a module; returns its digest.
    pub fn put_module(&self, bytes: &[u8]) -> Result<Digest, StoreError> {
        self.store.put_module(bytes)
    }

    pub fn has_module(&self, d: &Digest) -> bool {
        self.store.has_module(d).unwrap_or(false)
    }

    /// A module's bytes, for peers that fetch it by hash.
    pub fn module(&self, d: &Digest) -> Option<Bytes> {
        self.store.module(d).ok().flatten()
    }

    /// This member's load report for the gossip mesh.
    pub fn load_report(
        &self,
        peer: &str,
        mesh: &str,
        site: &str,
        seq: u64,
    ) -> fogline_core::mesh::LoadReport {
        let g = self.gauges();
        let warm = self
            .list()
            .iter()
            .filter(|f| match f.manifest.runtime {
                Runtime::Wasm => f.manifest.module.is_some_and(|d| self.wasm.is_loaded(&d)),
                Runtime::Container => self
                    .containers
                    .as_ref()
                    .is_ok_and(|c| c.is_warm(&f.manifest.name)),
            })
            .map(|f| f.manifest.name.clone())
            .collect();
        let (quic, http) = match self.addresses.get() {
            Some((q, h)) => (q.map(|a| a.to_string()), Some(h.to_string())),
            None => (None, None),
        };
        fogline_core::mesh::LoadReport {
            node: self.id.clone(),
            peer: peer.to_string(),
            tier: self.config.node.tier,
            site: site.to_string(),
            cores: self.cores,
            memory_bytes: self.memory_bytes,
            runtimes: if !self.runs_functions() {
                Vec::new()
            } else if self.containers.as_ref().is_ok_and(|c| c.available()) {
                vec![Runtime::Wasm, Runtime::Container]
            } else {
                vec![Runtime::Wasm]
            },
            in_flight: g.instances_in_use,
            queued: g.async_queued as u32,
            service_ms: self.metrics.service_times(),
            warm,
            quic,
            http,
            mesh: Some(mesh.to_string()),
            cold_starts: self.metrics.cold_starts.load(Ordering::Relaxed),
            warm_starts: self.metrics.warm_starts.load(Ordering::Relaxed),
            seq,
        }
    }

    /// What this agent can take on, as reported to other tiers.
    pub fn capacity(&self) -> fogline_core::wire::Capacity {
        let g = self.gauges();
        fogline_core::wire::Capacity {
            node: self.id.clone(),
            tier: self.config.node.tier.as_str().to_string(),
            cores: self.cores,
            memory_bytes: self.memory_bytes,
            instance_slots: g.instance_slots,
            instances_in_use: g.instances_in_use,
            functions: g.functions as u32,
        }
    }

    /// Validates, compiles and stores a function. `module` uploads its code in the same step.
    pub async fn deploy(
        &self,
        mut manifest: FunctionManifest,
        module: Option<Bytes>,
        must_exist: bool,
    ) -> Result<DeployReport, DeployError> {
        if let Some(bytes) = &module {
            manifest.module = Some(Digest::of(bytes));
        }
        manifest.validate(&self.config.manifest_limits())?;
        let previous = self.lookup(&manifest.name);
        if must_exist && previous.is_none() {
            return Err(DeployError::NotFound(manifest.name));
        }
        let (compile, digest) = match manifest.runtime {
            Runtime::Wasm => {
                let digest = manifest
                    .module
                    .ok_or_else(|| ManifestError::new("module", "missing"))?;
                let bytes = match module {
                    Some(b) => Some(b),
                    None => Some(
                        self.store
                            .module(&digest)?
                            .ok_or(DeployError::UnknownModule(digest))?,
                    ),
                };
                let compile = self.wasm.prepare(&manifest, bytes.clone()).await?;
                if let Some(b) = &bytes {
                    self.store.put_module(b)?;
                }
                (compile, Some(digest))
            }
            // A router that does not run functions itself keeps the manifest, checking the
            // image on its own engine when it has one; the nodes it places the function on
            // check it again on theirs.
            Runtime::Container if !self.runs_functions() => {
                if let Ok(c) = &self.containers {
                    if c.available() {
                        if let Some(image) = &manifest.image {
                            c.check_image(image).await?;
                        }
                    }
                }
                (None, None)
            }
            Runtime::Container => {
                let c = self.container_executor()?;
                if let Some(prev) = previous
                    .as_ref()
                    .filter(|p| p.manifest.runtime == Runtime::Container)
                {
                    c.reclaim(&prev.manifest).await;
                }
                (c.prepare(&manifest, None).await?, None)
            }
        };
        let created_at = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        self.store.put_function(&StoredFunction {
            manifest: manifest.clone(),
            created_at: created_at.clone(),
        })?;
        let deployed = Arc::new(Deployed {
            manifest: manifest.clone(),
            created_at,
            in_flight: AtomicU32::new(0),
        });
        self.functions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(manifest.name.clone(), deployed);
        // The old module goes once no function uses it any more.
        if let Some(prev) = &previous {
            if let Some(old) = prev.manifest.module.filter(|d| Some(*d) != digest) {
                if self.store.drop_module_if_unused(&old)? {
                    self.wasm.reclaim(&prev.manifest).await;
                }
            }
        }
        let what = if previous.is_some() {
            "updated"
        } else {
            "deployed"
        };
        let source = match (&digest, &manifest.image) {
            (Some(d), _) => format!("module {d}"),
            (None, Some(i)) => format!("image {i}"),
            (None, None) => "no code".to_string(),
        };
        self.logs
            .push(&manifest.name, &self.id, &format!("{what} with {source}"));
        tracing::info!(function = %manifest.name, "{what} with {source}");
        Ok(DeployReport {
            name: manifest.name,
            digest: digest.map_or_else(
                || manifest.image.clone().unwrap_or_default(),
                |d| d.to_string(),
            ),
            created: previous.is_none(),
            compile_ms: compile.map(|d| d.as_secs_f64() * 1e3),
        })
    }

    /// Removes a function; returns false when there was none.
    pub async fn remove(&self, name: &str) -> Result<bool, DeployError> {
        let Some(old) = self
            .functions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name)
        else {
            return Ok(false);
        };
        self.store.delete_function(name)?;
        if old.manifest.runtime == Runtime::Container {
            if let Ok(c) = &self.containers {
                c.reclaim(&old.manifest).await;
            }
        }
        if let Some(d) = old.manifest.module {
            if self.store.drop_module_if_unused(&d)? {
                self.wasm.reclaim(&old.manifest).await;
            }
        }
        self.metrics.remove(name);
        self.logs.remove(name);
        tracing::info!(function = name, "removed");
        Ok(true)
    }

    /// The container executor, or why container functions cannot run here.
    fn container_executor(&self) -> Result<&Arc<ContainerExecutor>, DeployError> {
        self.containers
            .as_ref()
            .map_err(|why| DeployError::Exec(ExecError::Unavailable(why.clone())))
    }

    /// The container executor, when container functions are on.
    pub fn containers(&self) -> Option<&Arc<ContainerExecutor>> {
        self.containers.as_ref().ok()
    }

    /// Loads an image tar into the container engine; returns the image names it held.
    pub async fn load_image(&self, tar: Bytes) -> Result<Vec<String>, DeployError> {
        Ok(self.container_executor()?.load_image(tar).await?)
    }

    /// Starts stopping: new calls from other tiers are refused with a retryable error (they
    /// go elsewhere), and the mesh is told this member is leaving. What is running finishes.
    pub fn begin_stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        if let Some(m) = self.mesh.get() {
            m.leave();
        }
    }

    /// Removes this node's containers (at stop).
    pub async fn stop_containers(&self) {
        if let Ok(c) = &self.containers {
            match c.sweep().await {
                Ok(0) | Err(_) => {}
                Ok(n) => tracing::info!("removed {n} container(s) of this node"),
            }
        }
    }

    /// Loads a deployed function ahead of calls (the router's prepare-ahead): a warm
    /// instance for a stream-mode container function; Wasm code is compiled at deploy.
    pub async fn warm_up(&self, name: &str) -> Result<(), DeployError> {
        let f = self
            .lookup(name)
            .ok_or_else(|| DeployError::NotFound(name.to_string()))?;
        if f.manifest.runtime == Runtime::Container {
            self.container_executor()?
                .prepare(&f.manifest, None)
                .await?;
        }
        Ok(())
    }

    /// Whether this agent offers to run functions for others: every node and bridge; a
    /// router only in device mode.
    pub fn runs_functions(&self) -> bool {
        self.config.router.as_ref().is_none_or(|r| r.device)
    }

    /// Runs one call where it belongs: placed by the router when this is one, else here.
    pub async fn call(
        &self,
        name: &str,
        body: Bytes,
    ) -> Result<crate::dispatch::Placed, crate::dispatch::Refused> {
        if let Some(d) = self.dispatch.get() {
            return d.dispatch(self, name, body).await;
        }
        self.run_here(name, body)
            .await
            .map_err(|e| crate::dispatch::Refused::new(e.status(), e.to_string()))
    }

    /// Runs one call on this agent, described as placed here (a router in device mode
    /// uses this for its own place).
    pub async fn run_here(
        &self,
        name: &str,
        body: Bytes,
    ) -> Result<crate::dispatch::Placed, InvokeError> {
        let t0 = Instant::now();
        let out = self.invoke(name, body).await?;
        Ok(self.placed_here(out, t0.elapsed()))
    }

    /// Describes a call that ran on this agent.
    fn placed_here(&self, out: Output, took: Duration) -> crate::dispatch::Placed {
        crate::dispatch::Placed {
            node: self.id.clone(),
            tier: self.config.node.tier,
            cold: out.cold,
            truncated: out.truncated,
            predicted_ms: None,
            took_ms: took.as_secs_f64() * 1e3,
            run_ms: (out.startup + out.run).as_secs_f64() * 1e3,
            attempts: 1,
            body: out.stdout,
        }
    }

    /// Runs one call now, on this agent.
    pub async fn invoke(&self, name: &str, body: Bytes) -> Result<Output, InvokeError> {
        let f = self
            .lookup(name)
            .ok_or_else(|| InvokeError::NotFound(name.to_string()))?;
        let metrics = self.metrics.function(name);
        let t0 = Instant::now();
        let result = self.run(&f, body).await;
        let code = match &result {
            Ok(_) => 200,
            Err(e) => e.status(),
        };
        metrics.count(code);
        metrics.latency.observe(t0.elapsed());
        match &result {
            Ok(out) => {
                metrics.observe_service(out.startup + out.run);
                if out.cold {
                    metrics.cold_start.observe(out.startup);
                    self.metrics.cold_starts.fetch_add(1, Ordering::Relaxed);
                } else {
                    metrics.warm_start.observe(out.startup);
                    self.metrics.warm_starts.fetch_add(1, Ordering::Relaxed);
                }
                if !out.stderr.is_empty() {
                    self.logs
                        .push(name, &self.id, &String::from_utf8_lossy(&out.stderr));
                }
            }
            Err(e) => self.logs.push(name, &self.id, &format!("call failed: {e}")),
        }
        result
    }

    async fn run(&self, f: &Deployed, body: Bytes) -> Result<Output, InvokeError> {
        let limit = f.manifest.max_concurrency;
        let mut cur = f.in_flight.load(Ordering::Acquire);
        loop {
            if cur >= limit {
                return Err(InvokeError::Busy {
                    function: f.manifest.name.clone(),
                    limit,
                });
            }
            match f.in_flight.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
        let _release = Release(&f.in_flight);
        let r = match f.manifest.runtime {
            Runtime::Wasm => {
                self.wasm
                    .invoke(&f.manifest, Invocation { body }, &StoreSource(&self.store))
                    .await
            }
            Runtime::Container => match &self.containers {
                Ok(c) => {
                    c.invoke(&f.manifest, Invocation { body }, &StoreSource(&self.store))
                        .await
                }
                Err(why) => Err(ExecError::Unavailable(why.clone())),
            },
        };
        r.map_err(|source| InvokeError::Exec {
            function: f.manifest.name.clone(),
            source,
        })
    }

    /// Accepts an async call: durable on disk before this returns its id.
    pub async fn submit(
        &self,
        name: &str,
        body: Bytes,
        callback: Option<String>,
    ) -> Result<u64, InvokeError> {
        if self.lookup(name).is_none() {
            return Err(InvokeError::NotFound(name.to_string()));
        }
        let queued = self.queued.fetch_add(1, Ordering::AcqRel);
        if queued >= self.config.async_calls.max_queued {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(InvokeError::QueueFull(queued));
        }
        let call = AsyncCall {
            function: name.to_string(),
            callback,
            body,
        };
        let id = match self.store.enqueue(&call).await {
            Ok(id) => id,
            Err(e) => {
                self.queued.fetch_sub(1, Ordering::AcqRel);
                return Err(e.into());
            }
        };
        // The channel is as large as the queue limit, so this only fails while shutting down;
        // the call is on disk and runs after the restart.
        let _ = self.async_tx.try_send(id);
        Ok(id)
    }

    /// The result of an async call: `Ok(None)` when unknown, `Some(None)` when still queued.
    pub fn call_result(&self, id: u64) -> Result<Option<Option<CallResult>>, StoreError> {
        if let Some(r) = self.store.result(id)? {
            return Ok(Some(Some(r)));
        }
        Ok(self.store.call(id)?.map(|_| None))
    }

    /// Runs queued async calls, `workers` at a time, until the channel closes.
    pub async fn run_async_workers(self: Arc<Self>, mut rx: mpsc::Receiver<u64>) {
        let workers = Arc::new(Semaphore::new(self.config.async_calls.workers as usize));
        let mut sweep = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                id = rx.recv() => {
                    let Some(id) = id else { break };
                    let Ok(permit) = workers.clone().acquire_owned().await else { break };
                    let node = self.clone();
                    tokio::spawn(async move {
                        node.run_async_call(id).await;
                        drop(permit);
                    });
                }
                _ = sweep.tick() => {
                    let ttl = self.config.async_calls.result_ttl.as_millis() as u64;
                    if let Err(e) = self.store.sweep_results(now_ms().saturating_sub(ttl)) {
                        tracing::warn!("sweeping old async results: {e}");
                    }
                }
            }
        }
    }

    async fn run_async_call(&self, id: u64) {
        let call = match self.store.call(id) {
            Ok(Some(c)) => c,
            Ok(None) => return,
            Err(e) => {
                tracing::error!("async call {id:016x}: {e}");
                return;
            }
        };
        let (status, body) = loop {
            match self.call(&call.function, call.body.clone()).await {
                Ok(out) => break (200u16, out.body),
                // Busy is back-pressure, not a result: wait and try again.
                Err(e) if e.status == 429 => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(e) => break (e.status, Bytes::from(e.message)),
            }
        };
        let result = CallResult {
            function: call.function.clone(),
            status,
            finished_ms: now_ms(),
            body: body.clone(),
        };
        if let Err(e) = self.store.complete(id, &result) {
            tracing::error!("async call {id:016x}: recording result: {e}");
            return;
        }
        self.queued.fetch_sub(1, Ordering::AcqRel);
        if let Some(url) = call.callback {
            self.callback(id, &call.function, status, body, &url).await;
        }
    }

    async fn callback(&self, id: u64, function: &str, status: u16, body: Bytes, url: &str) {
        for attempt in 0..3u32 {
            let res = self
                .http
                .post(url)
                .header("X-Call-Id", call_id(id))
                .header("X-Function-Name", function)
                .header("X-Function-Status", status.to_string())
                .body(body.clone())
                .send()
                .await;
            match res {
                Ok(r) if r.status().is_success() => return,
                Ok(r) => tracing::warn!(
                    "callback {url} for call {}: HTTP {}",
                    call_id(id),
                    r.status()
                ),
                Err(e) => tracing::warn!("callback {url} for call {}: {e}", call_id(id)),
            }
            tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
        }
        self.logs.push(
            function,
            &self.id,
            &format!(
                "callback to {url} for call {} failed after 3 attempts",
                call_id(id)
            ),
        );
    }

    pub fn gauges(&self) -> Gauges {
        // Zero without a mesh.
        let mesh = |f: fn(&crate::mesh::Traffic) -> &std::sync::atomic::AtomicU64| {
            self.mesh
                .get()
                .map_or(0, |m| f(m.traffic()).load(Ordering::Relaxed))
        };
        Gauges {
            instances_in_use: self.wasm.in_use()
                + self.containers.as_ref().map_or(0, |c| c.in_use()),
            instance_slots: self.wasm.slots(),
            async_queued: self.queued.load(Ordering::Relaxed) as usize,
            functions: self
                .functions
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .len(),
            mesh_sent: mesh(|t| &t.sent),
            mesh_received: mesh(|t| &t.received),
            mesh_connections: mesh(|t| &t.connections),
        }
    }

    pub fn status(&self) -> NodeStatus {
        let g = self.gauges();
        NodeStatus {
            id: self.id.clone(),
            tier: self.config.node.tier.as_str().to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_s: self.started.elapsed().as_secs(),
            functions: g.functions,
            instances_in_use: g.instances_in_use,
            instance_slots: g.instance_slots,
            pooling: self.wasm.pooled(),
            async_queued: g.async_queued as u64,
            quic_streams: self.quic_streams.load(Ordering::Relaxed),
            data_dir: self.config.node.data_dir.display().to_string(),
        }
    }

    /// Makes everything accepted so far durable.
    pub async fn flush(&self) {
        if let Err(e) = self.store.flush().await {
            tracing::error!("flushing the store: {e}");
        }
    }

    pub fn invocations(&self, name: &str) -> u64 {
        self.metrics.function(name).total()
    }
}

impl InvokeError {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> u16 {
        match self {
            InvokeError::NotFound(_) => 404,
            InvokeError::Busy { .. } | InvokeError::QueueFull(_) => 429,
            InvokeError::Exec { source, .. } => match source {
                ExecError::Timeout(_) => 504,
                ExecError::Busy(_) => 429,
                ExecError::Unavailable(_) => 503,
                _ => 500,
            },
            InvokeError::Store(_) => 500,
        }
    }
}

/// Connects to the container engine, removes leftovers of an earlier crash, and starts
/// the reaper of idle instances. Without an engine, container functions answer 503.
async fn open_containers(config: &NodeConfig, id: &str) -> Result<Arc<ContainerExecutor>, String> {
    if !config.container.enabled {
        return Err("container functions are off on this node (container.enabled = false)".into());
    }
    let max_output = usize::try_from(config.wasm.max_output.bytes()).unwrap_or(usize::MAX);
    let max_stderr = usize::try_from(config.wasm.max_stderr.bytes()).unwrap_or(usize::MAX);
    let owner = crate::executor::container::owner_of(&config.node.data_dir);
    let c =
        ContainerExecutor::connect(&config.container.socket, id, &owner, max_output, max_stderr)
            .await
            .map_err(|e| e.to_string())?;
    match c.ping().await {
        Ok(()) => match c.sweep().await {
            Ok(0) => {}
            Ok(n) => tracing::info!("removed {n} container(s) left by an earlier run of this node"),
            Err(e) => tracing::warn!("cleaning up containers: {e}"),
        },
        Err(e) => tracing::warn!("{e}; container functions answer 503 until it is back"),
    }
    let c = Arc::new(c);
    let weak = Arc::downgrade(&c);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let Some(c) = weak.upgrade() else { return };
            c.reap_idle();
        }
    });
    Ok(c)
}

/// How call ids appear in headers and URLs.
pub fn call_id(id: u64) -> String {
    format!("{id:016x}")
}

pub fn parse_call_id(s: &str) -> Option<u64> {
    if s.len() == 16 {
        u64::from_str_radix(s, 16).ok()
    } else {
        None
    }
}

struct Release<'a>(&'a AtomicU32);

impl Drop for Release<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ModuleSource for Node {
    fn module(&self, digest: &Digest) -> Option<Bytes> {
        Node::module(self, digest)
    }
}

struct StoreSource<'a>(&'a Store);

impl ModuleSource for StoreSource<'_> {
    fn module(&self, digest: &Digest) -> Option<Bytes> {
        self.0.module(digest).ok().flatten()
    }
}

fn load_or_create_token(path: &PathBuf) -> anyhow::Result<(String, Option<String>)> {
    if let Ok(t) = std::fs::read_to_string(path) {
        let t = t.trim().to_string();
        if t.len() >= 16 {
            return Ok((t, None));
        }
        anyhow::bail!(
            "{} is damaged (too short); delete it to create a new token",
            path.display()
        );
    }
    let mut raw = [0u8; 24];
    getrandom::fill(&mut raw)
        .map_err(|e| anyhow::anyhow!("no randomness for the admin token: {e}"))?;
    let token = hex::encode(raw);
    write_private(path, &token)?;
    Ok((token.clone(), Some(token)))
}

#[cfg(unix)]
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?;
    writeln!(f, "{text}")?;
    Ok(())
}

#[cfg(not(unix))]
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, format!("{text}\n"))?;
    Ok(())
}

fn total_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "node".to_string())
}
