//! Sandboxes: one [`Executor`] trait, one module per sandbox, and the [`Executors`] registry
//! the agent asks for "the executor of this runtime". The agent never branches on the
//! runtime itself.
//!
//! Every sandbox follows the same lifecycle:
//! 1. **check** (a router that keeps a manifest without running it) or **prepare** at
//!    deploy: validate and compile the function, cache what can be cached;
//! 2. **warm up** ahead of calls (the router's prepare-ahead);
//! 3. **invoke**: a fresh, isolated instance per call, request on stdin, response on stdout;
//! 4. **reclaim** a function's instances when it is updated or deleted, and **forget** its
//!    code once no function uses it;
//! 5. **sweep** leftovers of an earlier run at start, and **stop** (remove what it runs).
//!
//! Adding a sandbox: a `Runtime` variant in `fogline-core`'s manifest, one module here
//! implementing [`Executor`] (the methods without defaults: `runtime`, `prepare`, `invoke`,
//! `is_warm`, `in_use`; override the rest where the sandbox holds something), and one line in
//! [`Executors::open`](registry::Executors::open).

pub mod capture;
pub mod container;
pub mod dirs;
pub mod registry;
pub mod wasm;

pub use registry::Executors;

use std::time::Duration;

use bytes::Bytes;
use fogline_core::FunctionManifest;

/// One call's input.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub body: Bytes,
}

/// What a finished call produced.
#[derive(Debug, Clone)]
pub struct Output {
    pub stdout: Bytes,
    pub stderr: Bytes,
    /// Whether stdout went over the node's cap and was cut.
    pub truncated: bool,
    /// Whether the function's code had to be loaded into memory for this call.
    pub cold: bool,
    /// Time spent loading (cold) and instantiating before the function ran.
    pub startup: Duration,
    /// Time the function's own code ran.
    pub run: Duration,
}

/// Why a call produced no output. Each maps onto one HTTP status in the gateway.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The module or image cannot run here (bad module, missing `_start`, unknown import).
    #[error("{0}")]
    Invalid(String),
    /// The function ran past its timeout and its instance was destroyed.
    #[error("timed out after {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    /// The function tried to grow its memory past its limit.
    #[error("out of memory: the function tried to use more than its limit of {limit}{}", tail(.stderr))]
    OutOfMemory { limit: String, stderr: Bytes },
    /// The function exited with a non-zero status.
    #[error("exited with status {code}{}", tail(.stderr))]
    Exit { code: i32, stderr: Bytes },
    /// The function trapped (unreachable, out-of-bounds access, stack overflow …).
    #[error("trapped: {message}{}", tail(.stderr))]
    Trap { message: String, stderr: Bytes },
    /// Every instance slot is in use.
    #[error("no free instance slot on this node ({0} in use)")]
    Busy(u32),
    /// The sandbox itself is unavailable (e.g. the container engine is down).
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

/// The end of a function's stderr, for error messages.
pub fn tail(stderr: &Bytes) -> String {
    const MAX: usize = 2048;
    if stderr.is_empty() {
        return String::new();
    }
    let start = stderr.len().saturating_sub(MAX);
    let text = String::from_utf8_lossy(&stderr[start..]);
    let marker = if start > 0 { "…" } else { "" };
    format!("; stderr: {marker}{}", text.trim_end())
}

/// The sandbox contract shared by Wasm and containers.
#[async_trait::async_trait]
pub trait Executor: Send + Sync + 'static {
    /// The runtime this sandbox runs (its key in the registry).
    fn runtime(&self) -> fogline_core::Runtime;

    /// Whether the sandbox takes calls now (a container engine may be down).
    fn available(&self) -> bool {
        true
    }

    /// Deploy-time check on a member that keeps the manifest without running it (a router):
    /// what can be checked without preparing an instance. By default, [`prepare`](Self::prepare).
    async fn check(
        &self,
        manifest: &FunctionManifest,
        module: Option<Bytes>,
    ) -> Result<(), ExecError> {
        self.prepare(manifest, module).await.map(|_| ())
    }

    /// Deploy-time work. `module` is the function's code (Wasm bytes), where it has some.
    /// Returns how long compilation took, when anything was compiled.
    async fn prepare(
        &self,
        manifest: &FunctionManifest,
        module: Option<Bytes>,
    ) -> Result<Option<Duration>, ExecError>;

    /// Runs one call in a fresh instance. `load` fetches the module's bytes when the
    /// executor no longer holds them (after a restart: scale to zero).
    async fn invoke(
        &self,
        manifest: &FunctionManifest,
        call: Invocation,
        load: &dyn ModuleSource,
    ) -> Result<Output, ExecError>;

    /// Loads a deployed function ahead of calls (the router's prepare-ahead). By default
    /// nothing: what [`prepare`](Self::prepare) did at deploy is enough.
    async fn warm_up(&self, _manifest: &FunctionManifest) -> Result<(), ExecError> {
        Ok(())
    }

    /// Whether a call of this function would start warm now.
    fn is_warm(&self, manifest: &FunctionManifest) -> bool;

    /// Instances running calls now.
    fn in_use(&self) -> u32;

    /// Instance slots reserved ahead (0: none reserved, instances made on demand).
    fn slots(&self) -> u32 {
        0
    }

    /// Whether instances come from a pre-reserved pool.
    fn pooled(&self) -> bool {
        false
    }

    /// What the sandbox keeps of compiled code, for `/metrics`.
    fn code_cache(&self) -> CodeCache {
        CodeCache::default()
    }

    /// Drops the instances held for this function (it was updated or deleted).
    async fn reclaim(&self, _manifest: &FunctionManifest) {}

    /// Drops the function's code from caches: no deployed function uses it any more.
    async fn forget_code(&self, _manifest: &FunctionManifest) {}

    /// Loads an archive of code into the sandbox (an image tar for containers); returns the
    /// names it held.
    async fn load_archive(&self, _archive: Bytes) -> Result<Vec<String>, ExecError> {
        Err(ExecError::Invalid(format!(
            "the {} sandbox takes no archives",
            self.runtime()
        )))
    }

    /// Removes what an earlier run of this member left behind; returns how many.
    async fn sweep(&self) -> Result<usize, ExecError> {
        Ok(0)
    }

    /// Stops everything the sandbox runs (the member is stopping).
    async fn stop(&self) {}
}

/// What a sandbox keeps of compiled code, and how often it made it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CodeCache {
    /// Compiled modules held in memory.
    pub in_memory: u64,
    /// Bytes of compiled artifacts on disk.
    pub disk_bytes: u64,
    /// Modules compiled from their code.
    pub compiles: u64,
    /// Modules loaded from a compiled artifact on disk.
    pub artifact_loads: u64,
}

impl std::ops::Add for CodeCache {
    type Output = CodeCache;
    fn add(self, o: CodeCache) -> CodeCache {
        CodeCache {
            in_memory: self.in_memory + o.in_memory,
            disk_bytes: self.disk_bytes + o.disk_bytes,
            compiles: self.compiles + o.compiles,
            artifact_loads: self.artifact_loads + o.artifact_loads,
        }
    }
}

/// Where an executor gets a module's bytes when it needs them again.
pub trait ModuleSource: Send + Sync {
    fn module(&self, digest: &fogline_core::Digest) -> Option<Bytes>;

    /// The values of function `key`'s secrets `names`, for the member it is placed on
    /// (asked only while that member deploys it). None: this side holds none.
    fn secrets(&self, _key: &str, _names: &[String]) -> Option<fogline_core::wire::SecretValues> {
        None
    }
}
