//! The node agent: the parts a member is made of, and the one invocation path every
//! trigger uses ([`Node::call`]).
//!
//! - [`registry`]: deployed functions by key (`NAME` or `NAME.NAMESPACE`);
//! - [`access`]: tokens, namespaces and their quotas;
//! - [`admission`]: per-function concurrency (429 beyond it);
//! - [`queue`]: the durable async queue and its workers: retries with backoff, the
//!   dead-letter queue, idempotency keys, the per-namespace bound;
//! - [`outbox`]: callbacks delivered from a durable outbox, retried, then dead-lettered;
//! - [`callbacks`]: one delivery of an async result to its caller (allow-list, signature).
//!
//! The sandboxes are behind [`Executors`](crate::executor::Executors); the node never
//! branches on a function's runtime.

pub mod access;
pub mod admission;
pub mod callbacks;
pub mod keyed;
pub mod outbox;
pub mod parked;
pub mod queue;
pub mod registry;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use fogline_core::config::{NodeConfig, Tier};
use fogline_core::{Digest, FunctionManifest, ManifestError, Runtime};
use tokio::sync::mpsc;

use crate::executor::{ExecError, Executors, Invocation, ModuleSource, Output};
use crate::logs::Logs;
use crate::metrics::{Gauges, Metrics};
use crate::store::{Store, StoreError, StoredFunction};
use crate::sysinfo::Machine;
pub use registry::{Deployed, Functions};

/// What a member does, stated when it starts (from its config's sections).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    /// Edge or cloud.
    pub tier: Tier,
    /// Places every call it takes (a [`Dispatch`](crate::dispatch::Dispatch) is installed).
    pub router: bool,
    /// Runs functions for others: every node and bridge; a router only in device mode.
    pub runs_functions: bool,
}

impl Roles {
    pub fn of(config: &NodeConfig) -> Roles {
        Roles {
            tier: config.node.tier,
            router: config.router.is_some(),
            runs_functions: config.router.as_ref().is_none_or(|r| r.device),
        }
    }
}

/// How this member reaches the rest of the continuum; each is set once, when its part starts.
#[derive(Default)]
pub struct Links {
    /// QUIC client for calls to other tiers (set when the node has certificates).
    pub peers: OnceLock<Arc<crate::quic::Client>>,
    /// The gossip mesh, when it is on.
    pub mesh: OnceLock<Arc<crate::mesh::Mesh>>,
    /// Set on a router: decides where each call runs.
    pub dispatch: OnceLock<Arc<dyn crate::dispatch::Dispatch>>,
    /// Where other tiers reach this node: QUIC (when on) and HTTP.
    pub addresses: OnceLock<(Option<std::net::SocketAddr>, std::net::SocketAddr)>,
    /// Set when this member takes enrollments (`[enroll]`).
    pub issuer: OnceLock<crate::enroll::Issuer>,
    /// Set on a bridge with `[federation]`: its peer clusters.
    pub federation: OnceLock<std::sync::Arc<dyn crate::federate::Federation>>,
}

/// Calls other tiers have running here, for a clean stop.
#[derive(Default)]
pub struct Serving {
    /// QUIC streams being served now.
    pub quic_streams: AtomicU32,
    /// Told to stop: finishing what it has, refusing new calls from other tiers (with a
    /// retryable error, so they go elsewhere).
    pub stopping: AtomicBool,
}

/// The node agent: a handful of parts, shared by every trigger and the async workers.
pub struct Node {
    pub id: String,
    pub config: NodeConfig,
    pub roles: Roles,
    pub machine: Machine,
    pub metrics: Metrics,
    pub logs: Logs,
    pub links: Links,
    pub serving: Serving,
    functions: Functions,
    executors: Executors,
    store: Store,
    queue: queue::AsyncQueue,
    callbacks: callbacks::Callbacks,
    /// Calls run here under an idempotency key, one at a time per key.
    keyed: keyed::KeyLocks,
    pub access: access::Access,
    pub secrets: crate::secrets::Secrets,
    /// The certificates this member refuses.
    pub revocations: Arc<crate::revocation::Revocations>,
    /// Spans of the calls this member took part in.
    pub traces: crate::traces::Traces,
    /// When this member's certificate expires (unix seconds; 0 without one): read when it
    /// is loaded, not per report.
    certificate_expiry: std::sync::atomic::AtomicU64,
    started: Instant,
}

/// Why a deploy was refused.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("module {0} is not on this node; upload it first (PUT /v1/modules or PUT /v1/functions/NAME)")]
    UnknownModule(Digest),
    #[error("function {0:?} not found")]
    NotFound(String),
    #[error("{0}")]
    Exec(#[from] ExecError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Past its namespace's quota (403).
    #[error("{0}")]
    Quota(String),
    #[error(transparent)]
    Secret(#[from] crate::secrets::SecretError),
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
    #[error("namespace {namespace:?} holds {held} async calls on this node, queued or in the dead-letter queue: its limit ([async] max_per_namespace); retry once they drain, or replay or drop dead ones (fogline dlq)")]
    NamespaceFull { namespace: String, held: u64 },
    #[error("this node's disk is nearly full: {free_mib} MiB free under {dir}, and it keeps [async] min_free_disk = {keep_mib} MiB free; nothing accepted is dropped; retry once calls drain")]
    DiskFull {
        dir: String,
        free_mib: u64,
        keep_mib: u64,
    },
    #[error(transparent)]
    Callback(#[from] fogline_core::callback::CallbackError),
    #[error("function {function:?} {source}")]
    Exec { function: String, source: ExecError },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The label whose change tells members a function's secrets changed.
pub const SECRETS_REV: &str = "fogline.dev/secrets-rev";

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
    /// Async calls waiting for a place (a tier cut off), per function.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outbox: Vec<parked::OutboxEntry>,
    pub quic_streams: u32,
    pub data_dir: String,
    /// When this member's certificate expires (RFC 3339), when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_expires: Option<String>,
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
        let (token, new_token) = crate::token::load_or_create(&dir.join("admin.token"))?;
        let store = Store::open(&dir.join("store"))?;
        let access = access::Access::open(token, &store, config.quota.clone())?;
        let secrets = crate::secrets::Secrets::open(&config, &store)?;
        let revocations = Arc::new(crate::revocation::Revocations::open(
            &dir,
            config.quic.tls_dir.as_deref(),
        )?);
        let id = member_id(&config)?;
        let executors = Executors::open(&config, &id).await?;
        let functions = Functions::default();
        for f in store.functions()? {
            if !f.manifest.secrets.is_empty() {
                if let Err(e) = secrets.mount(&f.manifest.name, &f.manifest.secrets) {
                    tracing::warn!(function = %f.manifest.name, "its secrets are not laid out: {e}");
                }
            }
            functions.insert(Deployed::new(f.manifest, f.created_at));
        }
        let pending = store.pending()?;
        let (queue, async_rx) = queue::AsyncQueue::new(
            config.async_calls.max_queued,
            config.async_calls.max_per_namespace,
            &pending.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        );
        // What each namespace holds on disk: its queued and dead-lettered calls.
        for function in pending
            .iter()
            .map(|(_, c)| c.function.as_str())
            .chain(store.dead_calls()?.iter().map(|(_, d)| d.function.as_str()))
        {
            queue.hold(fogline_core::access::split(function).1, 1);
        }
        if !pending.is_empty() {
            tracing::info!(
                "resuming {} async calls accepted before the last stop",
                pending.len()
            );
        }
        let node = Node {
            id: id.clone(),
            roles: Roles::of(&config),
            machine: Machine::read(),
            metrics: Metrics::default(),
            logs: Logs::new(1000),
            links: Links::default(),
            serving: Serving::default(),
            functions,
            executors,
            store,
            queue,
            keyed: keyed::KeyLocks::default(),
            callbacks: callbacks::Callbacks::new(
                config.async_calls.callback_allow.clone(),
                webhook_secret(&dir.join("webhook.secret"))?,
            ),
            access,
            secrets,
            revocations,
            traces: crate::traces::Traces::new(config.trace.clone(), id.clone()),
            certificate_expiry: std::sync::atomic::AtomicU64::new(0),
            started: Instant::now(),
            config,
        };
        if let Some(tls) = node
            .config
            .quic
            .tls_dir
            .as_deref()
            .and_then(|d| crate::tls::TlsDir::load(d).ok())
        {
            node.note_certificate(&tls);
        }
        Ok(Opened {
            node: Arc::new(node),
            new_token,
            async_rx,
        })
    }

    /// Takes note of the member's certificate (at start, and when it is renewed or reloaded).
    pub fn note_certificate(&self, tls: &crate::tls::TlsDir) {
        let expiry = crate::tls::validity(&tls.chain[0]).map_or(0, |(_, na)| na);
        self.certificate_expiry.store(expiry, Ordering::Relaxed);
    }

    /// The secret namespace `ns`'s callbacks are signed with (`whsec_…`).
    pub fn webhook_secret(&self, ns: &str) -> String {
        self.callbacks.secret_of(ns)
    }

    /// The admin token.
    pub fn token(&self) -> &str {
        self.access.admin_token()
    }

    /// Whether a caller without a token may invoke the function of key `key`: in the
    /// default namespace unless `http.invoke_requires_token`, elsewhere when the namespace
    /// is public.
    pub fn open_to_anyone(&self, key: &str) -> bool {
        match key.split_once('.') {
            None => !self.config.http.invoke_requires_token,
            Some((_, ns)) => self.access.is_public(ns),
        }
    }

    /// What namespace `ns` holds now.
    fn usage(&self, ns: &str) -> fogline_core::access::Usage {
        let mut u = fogline_core::access::Usage::default();
        for f in self.list() {
            if fogline_core::access::split(&f.manifest.name).1 == ns {
                u.functions += 1;
                u.memory += f.manifest.memory.bytes();
            }
        }
        u
    }

    /// The member's store (triggers keep their own small durable state in trees of it).
    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    pub fn data_dir(&self) -> &Path {
        &self.config.node.data_dir
    }

    pub fn lookup(&self, name: &str) -> Option<Arc<Deployed>> {
        self.functions.get(name)
    }

    pub fn list(&self) -> Vec<Arc<Deployed>> {
        self.functions.list()
    }

    /// The sandboxes of this member.
    pub fn executors(&self) -> &Executors {
        &self.executors
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

    /// What this agent can take on, as reported to other tiers.
    pub fn capacity(&self) -> fogline_core::wire::Capacity {
        let g = self.gauges();
        fogline_core::wire::Capacity {
            node: self.id.clone(),
            tier: self.roles.tier.as_str().to_string(),
            cores: self.machine.cores,
            memory_bytes: self.machine.memory_bytes,
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
        let ns = fogline_core::access::split(&manifest.name).1;
        if let Some(q) = self.access.quota(ns) {
            q.admits_deploy(
                ns,
                self.usage(ns),
                manifest.memory.bytes(),
                previous.as_ref().map(|p| p.manifest.memory.bytes()),
            )
            .map_err(|d| DeployError::Quota(d.0))?;
        }
        // Code that travels by hash: the bytes given, or the ones stored.
        let digest = manifest.module;
        let bytes = match (digest, module) {
            (None, _) => None,
            (Some(_), Some(b)) => Some(b),
            (Some(d), None) => Some(
                self.store
                    .module(&d)?
                    .ok_or(DeployError::UnknownModule(d))?,
            ),
        };
        if !manifest.secrets.is_empty() {
            self.secrets.mount(&manifest.name, &manifest.secrets)?;
        } else if previous
            .as_ref()
            .is_some_and(|p| !p.manifest.secrets.is_empty())
        {
            self.secrets.unmount(&manifest.name);
        }
        let compile = if self.roles.runs_functions {
            let exec = self.executors.of(&manifest)?;
            if let Some(prev) = &previous {
                if let Ok(old) = self.executors.of(&prev.manifest) {
                    old.reclaim(&prev.manifest).await;
                }
            }
            exec.prepare(&manifest, bytes.clone()).await?
        } else {
            // A router that does not run functions itself keeps the manifest, checked as far
            // as its own sandboxes can; the nodes it places the function on check it again.
            if let Ok(exec) = self.executors.of(&manifest) {
                if exec.available() {
                    exec.check(&manifest, bytes.clone()).await?;
                }
            }
            None
        };
        if let Some(b) = &bytes {
            self.store.put_module(b)?;
        }
        let created_at = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        self.store.put_function(&StoredFunction {
            manifest: manifest.clone(),
            created_at: created_at.clone(),
        })?;
        self.functions
            .insert(Deployed::new(manifest.clone(), created_at));
        // The old code goes once no function uses it any more.
        if let Some(prev) = &previous {
            if let Some(old) = prev.manifest.module.filter(|d| Some(*d) != digest) {
                if self.store.drop_module_if_unused(&old)? {
                    if let Ok(e) = self.executors.of(&prev.manifest) {
                        e.forget_code(&prev.manifest).await;
                    }
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

    /// After `secret` of `ns` changed: every function naming it is deployed again with a
    /// new `fogline.dev/secrets-rev` label, so its folder here is laid out anew and the
    /// members a router places it on (which compare manifests) fetch the new value. After
    /// a removal the folders are laid out without it; the functions keep running.
    pub async fn refresh_secret(&self, ns: &str, secret: &str, removed: bool) {
        for f in self.list() {
            let m = &f.manifest;
            let (_, f_ns) = fogline_core::access::split(&m.name);
            if f_ns != ns || !m.secrets.iter().any(|s| s == secret) {
                continue;
            }
            if removed {
                // The names alone say which remain; their values are read once, by mount.
                let remaining = self.secrets.names(ns).unwrap_or_default();
                let present: Vec<String> = m
                    .secrets
                    .iter()
                    .filter(|s| remaining.contains(s))
                    .cloned()
                    .collect();
                if let Err(e) = self.secrets.mount(&m.name, &present) {
                    tracing::warn!(function = %m.name, "laying out its secrets: {e}");
                }
                continue;
            }
            let mut m = m.clone();
            m.labels
                .insert(SECRETS_REV.to_string(), new_call_id()[..12].to_string());
            if let Err(e) = self.deploy(m, None, true).await {
                tracing::warn!(function = %f.manifest.name, "deploying again with the new secret: {e}");
            }
        }
    }

    /// Removes a function; returns false when there was none.
    pub async fn remove(&self, name: &str) -> Result<bool, DeployError> {
        let Some(old) = self.functions.remove(name) else {
            return Ok(false);
        };
        self.store.delete_function(name)?;
        if let Ok(e) = self.executors.of(&old.manifest) {
            e.reclaim(&old.manifest).await;
            if let Some(d) = old.manifest.module {
                if self.store.drop_module_if_unused(&d)? {
                    e.forget_code(&old.manifest).await;
                }
            }
            if let Some(image) = &old.manifest.image {
                if !self
                    .list()
                    .iter()
                    .any(|f| f.manifest.image.as_ref() == Some(image))
                {
                    e.forget_code(&old.manifest).await;
                }
            }
        }
        if !old.manifest.secrets.is_empty() {
            self.secrets.unmount(name);
        }
        self.metrics.remove(name);
        self.logs.remove(name);
        tracing::info!(function = name, "removed");
        Ok(true)
    }

    /// Loads an archive of code (an image tar) into the sandbox of `runtime`; returns the
    /// names it held.
    pub async fn load_archive(
        &self,
        runtime: Runtime,
        archive: Bytes,
    ) -> Result<Vec<String>, DeployError> {
        Ok(self.executors.get(runtime)?.load_archive(archive).await?)
    }

    /// Starts stopping: new calls from other tiers are refused with a retryable error (they
    /// go elsewhere), and the mesh is told this member is leaving. What is running finishes.
    pub fn begin_stop(&self) {
        self.serving.stopping.store(true, Ordering::SeqCst);
        if let Some(m) = self.links.mesh.get() {
            m.leave();
        }
    }

    /// Whether this member was told to stop.
    pub fn stopping(&self) -> bool {
        self.serving.stopping.load(Ordering::SeqCst)
    }

    /// Stops what the sandboxes run (at stop).
    pub async fn stop_sandboxes(&self) {
        self.executors.stop().await;
        self.secrets.unmount_all();
    }

    /// Loads a deployed function ahead of calls (the router's prepare-ahead).
    pub async fn warm_up(&self, name: &str) -> Result<(), DeployError> {
        let f = self
            .lookup(name)
            .ok_or_else(|| DeployError::NotFound(name.to_string()))?;
        self.executors.of(&f.manifest)?.warm_up(&f.manifest).await?;
        Ok(())
    }

    /// Whether this agent offers to run functions for others: every node and bridge; a
    /// router only in device mode.
    pub fn runs_functions(&self) -> bool {
        self.roles.runs_functions
    }

    /// Whether this member could run `runtime` itself now.
    pub fn can_run(&self, runtime: Runtime) -> bool {
        self.roles.runs_functions && self.executors.get(runtime).is_ok_and(|e| e.available())
    }

    /// The one invocation path every trigger uses: placed by the router when this is one,
    /// else run here. (A call for an explicit member goes through [`Node::call_at`].)
    pub async fn call(
        &self,
        name: &str,
        body: Bytes,
    ) -> Result<crate::dispatch::Placed, crate::dispatch::Refused> {
        let _slot = self
            .access
            .admit_call(fogline_core::access::split(name).1)
            .map_err(|e| crate::dispatch::Refused::new(429, e))?;
        self.place(name, body).await
    }

    /// [`Node::call`] without counting it against its namespace's concurrency quota (the
    /// async workers, bounded by their own number).
    pub async fn place(
        &self,
        name: &str,
        body: Bytes,
    ) -> Result<crate::dispatch::Placed, crate::dispatch::Refused> {
        if let Some(d) = self.links.dispatch.get() {
            return d.dispatch(name, body).await;
        }
        // Once per key when the call carries one, as a member a router hands it to does.
        self.run_here_once(name, body).await
    }

    /// Sends one call to the member at `addr` over QUIC (an explicit target), with this
    /// member's manifest so that one can fetch the module by hash when it lacks it. With
    /// `member`, the certificate at `addr` must name that member.
    pub async fn call_at(
        &self,
        name: &str,
        body: Bytes,
        addr: std::net::SocketAddr,
        member: Option<&str>,
    ) -> Result<crate::dispatch::Placed, crate::dispatch::Refused> {
        use crate::dispatch::Refused;
        let Some(client) = self.links.peers.get() else {
            return Err(Refused::new(
                400,
                "this node has no certificates (quic.tls_dir), so it cannot call other tiers",
            ));
        };
        if let Some(m) = member {
            client.expect(addr, m);
        }
        let Some(f) = self.lookup(name) else {
            return Err(Refused::new(404, format!("function {name:?} not found")));
        };
        let t0 = Instant::now();
        match client.send(addr, &f.manifest, body, self).await {
            Ok(reply) => {
                // The reply does not say the member's tier; the mesh knows it.
                let tier = self
                    .links
                    .mesh
                    .get()
                    .and_then(|m| {
                        m.with_view(|v| {
                            v.members()
                                .find(|m| m.report.node == reply.result.node)
                                .map(|m| m.report.tier)
                        })
                    })
                    .unwrap_or(self.roles.tier);
                let mut placed = reply.into_placed(tier);
                placed.took_ms = t0.elapsed().as_secs_f64() * 1e3;
                Ok(placed)
            }
            Err(crate::quic::QuicError::Remote(m)) => {
                Err(Refused::new(m.status, format!("on {addr}: {}", m.message)))
            }
            Err(e) => {
                client.forget(addr).await;
                Err(Refused::new(
                    502,
                    format!("forwarding to {addr} failed: {e}"),
                ))
            }
        }
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
            tier: self.roles.tier,
            cold: out.cold,
            truncated: out.truncated,
            predicted_ms: None,
            took_ms: took.as_secs_f64() * 1e3,
            run_ms: (out.startup + out.run).as_secs_f64() * 1e3,
            startup_ms: Some(out.startup.as_secs_f64() * 1e3),
            attempts: 1,
            body: out.stdout,
            module_sent: None,
            load: None,
        }
    }

    /// Runs one call now, on this agent.
    pub async fn invoke(&self, name: &str, body: Bytes) -> Result<Output, InvokeError> {
        let f = self
            .lookup(name)
            .ok_or_else(|| InvokeError::NotFound(name.to_string()))?;
        let metrics = self.metrics.function(name);
        let t0 = Instant::now();
        let service = metrics.start_service();
        let result = self.run(&f, body).await;
        let code = match &result {
            Ok(_) => 200,
            Err(e) => e.status(),
        };
        metrics.count(code);
        metrics.latency.observe(t0.elapsed());
        match &result {
            Ok(out) => {
                // Ended about now: the start, then the function's own run.
                crate::traces::past(
                    if out.cold { "cold start" } else { "start" },
                    out.startup + out.run,
                    out.startup,
                    &[],
                );
                crate::traces::past("run", out.run, out.run, &[]);
                // The service time reports carry is the function's own: a cold start's
                // loading is not (routers add a cold start where it is not warm).
                service.ran(if out.cold {
                    out.run
                } else {
                    out.startup + out.run
                });
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
        let _admitted = f.admission.try_admit().map_err(|limit| InvokeError::Busy {
            function: f.manifest.name.clone(),
            limit,
        })?;
        let exec = |source| InvokeError::Exec {
            function: f.manifest.name.clone(),
            source,
        };
        self.executors
            .of(&f.manifest)
            .map_err(exec)?
            .invoke(&f.manifest, Invocation { body }, &StoreSource(&self.store))
            .await
            .map_err(exec)
    }

    /// Calls running and queued here now: a load report's `in_flight + queued`, which
    /// every QUIC answer also carries (a router's fresher look than the last report).
    pub fn load(&self) -> u32 {
        let queued = u32::try_from(self.queue.depth()).unwrap_or(u32::MAX);
        self.executors.in_use().saturating_add(queued)
    }

    pub fn gauges(&self) -> Gauges {
        // Zero without a mesh.
        let mesh = |f: fn(&crate::mesh::Traffic) -> &std::sync::atomic::AtomicU64| {
            self.links
                .mesh
                .get()
                .map_or(0, |m| f(m.traffic()).load(Ordering::Relaxed))
        };
        Gauges {
            instances_in_use: self.executors.in_use(),
            instance_slots: self.executors.slots(),
            async_queued: self.queue.depth() as usize,
            functions: self.functions.len(),
            mesh_sent: mesh(|t| &t.sent),
            mesh_received: mesh(|t| &t.received),
            mesh_connections: mesh(|t| &t.connections),
            mesh_forged: mesh(|t| &t.forged),
            code: self.executors.code_cache(),
            certificate_expiry: self.certificate_expiry.load(Ordering::Relaxed),
        }
    }

    pub fn status(&self) -> NodeStatus {
        let g = self.gauges();
        NodeStatus {
            id: self.id.clone(),
            tier: self.roles.tier.as_str().to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_s: self.started.elapsed().as_secs(),
            functions: g.functions,
            instances_in_use: g.instances_in_use,
            instance_slots: g.instance_slots,
            pooling: self.executors.pooled(),
            async_queued: g.async_queued as u64,
            outbox: self.queue.parked.entries(crate::store::now_ms()),
            quic_streams: self.serving.quic_streams.load(Ordering::Relaxed),
            data_dir: self.config.node.data_dir.display().to_string(),
            certificate_expires: match self.certificate_expiry.load(Ordering::Relaxed) {
                0 => None,
                na => Some(crate::renew::rfc3339(na)),
            },
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

impl Node {
    /// How this member's async work is retried: `[async] retry_base` doubling up to
    /// `retry_max`, at most `max_attempts` attempts.
    fn backoff(&self, max_attempts: u32) -> fogline_core::delivery::Backoff {
        let cfg = &self.config.async_calls;
        fogline_core::delivery::Backoff {
            base: cfg.retry_base,
            max: cfg.retry_max,
            max_attempts,
        }
    }
}

impl InvokeError {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> u16 {
        match self {
            InvokeError::NotFound(_) => 404,
            InvokeError::Callback(_) => 400,
            InvokeError::Busy { .. }
            | InvokeError::QueueFull(_)
            | InvokeError::NamespaceFull { .. }
            | InvokeError::DiskFull { .. } => 429,
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

/// The member's id: its certificate's name when it has one (a configured `node.id` must be
/// the same), else `node.id`, else the host name.
fn member_id(config: &NodeConfig) -> anyhow::Result<String> {
    let named = match &config.quic.tls_dir {
        Some(dir) => crate::tls::TlsDir::load(dir)?.name().map(|n| (n, dir)),
        None => None,
    };
    Ok(match (&config.node.id, named) {
        (Some(id), Some((cert, dir))) if *id != cert => anyhow::bail!(
            "node.id is {id:?}, but the certificate in {} names {cert:?}: a member is the one its certificate names; drop node.id (or --id), or issue a certificate for {id:?}",
            dir.display()
        ),
        (_, Some((cert, _))) => cert,
        (Some(id), None) => id.clone(),
        (None, None) => crate::sysinfo::hostname(),
    })
}

/// A new call id for a synchronous call (128 random bits from the OS, as async calls get).
pub fn new_call_id() -> String {
    hex::encode(random_bytes::<16>())
}

/// A random roll in [0, 1), for jitter.
pub fn random_unit() -> f64 {
    f64::from(u32::from_be_bytes(random_bytes::<4>())) / 4_294_967_296.0
}

/// Random bytes from the OS, asked for 4 KiB at a time per thread: a system call per call
/// cost about 3 % of the gateway's throughput. (Call, trace and span ids: without
/// randomness an id is only less unique, not unsafe: it grants nothing.)
pub fn random_bytes<const N: usize>() -> [u8; N] {
    thread_local! {
        static POOL: std::cell::RefCell<([u8; 4096], usize)> =
            const { std::cell::RefCell::new(([0; 4096], 4096)) };
    }
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        let (buf, used) = &mut *p;
        if *used + N > buf.len() {
            let _ = getrandom::fill(buf);
            *used = 0;
        }
        let mut out = [0u8; N];
        out.copy_from_slice(&buf[*used..*used + N]);
        *used += N;
        out
    })
}

/// The secret that signs this member's callbacks: made at the first start.
fn webhook_secret(path: &Path) -> anyhow::Result<Vec<u8>> {
    let text = crate::token::load_or_create_with(path, || {
        let mut raw = [0u8; 32];
        getrandom::fill(&mut raw)
            .map_err(|e| anyhow::anyhow!("no randomness for the webhook secret: {e}"))?;
        Ok(fogline_core::callback::secret_text(&raw))
    })?
    .0;
    fogline_core::callback::secret_bytes(&text).ok_or_else(|| {
        anyhow::anyhow!(
            "{} is damaged (not whsec_BASE64); delete it to make a new one",
            path.display()
        )
    })
}

impl crate::mesh::Reporter for Node {
    fn revocations(&self) -> Option<Arc<crate::revocation::Revocations>> {
        Some(self.revocations.clone())
    }

    /// This member's load report for the gossip mesh.
    fn report(
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
            .filter(|f| self.executors.is_warm(&f.manifest))
            .map(|f| f.manifest.name.clone())
            .collect();
        let (quic, http) = match self.links.addresses.get() {
            Some((q, h)) => (q.map(|a| a.to_string()), Some(h.to_string())),
            None => (None, None),
        };
        fogline_core::mesh::LoadReport {
            node: self.id.clone(),
            peer: peer.to_string(),
            tier: self.roles.tier,
            site: site.to_string(),
            cores: self.machine.cores,
            memory_bytes: self.machine.memory_bytes,
            speed: self.machine.speed,
            runtimes: if self.roles.runs_functions {
                self.executors.available()
            } else {
                Vec::new()
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
}

impl ModuleSource for Node {
    fn module(&self, digest: &Digest) -> Option<Bytes> {
        Node::module(self, digest)
    }

    /// Only secrets the function deployed here names, of its own namespace.
    fn secrets(&self, key: &str, names: &[String]) -> Option<fogline_core::wire::SecretValues> {
        let f = self.lookup(key)?;
        let ns = fogline_core::access::split(key).1;
        names
            .iter()
            .filter(|n| f.manifest.secrets.contains(n))
            .map(|n| self.secrets.get(ns, n).ok().map(|v| (n.clone(), v)))
            .collect()
    }
}

struct StoreSource<'a>(&'a Store);

impl ModuleSource for StoreSource<'_> {
    fn module(&self, digest: &Digest) -> Option<Bytes> {
        self.0.module(digest).ok().flatten()
    }
}
