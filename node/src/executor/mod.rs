//! One executor trait, implemented by each sandbox.
//!
//! Every sandbox follows the same lifecycle, so the gateway (and later the router) never
//! cares which one ran a call:
//! 1. **prepare** at deploy: validate and compile the function, cache what can be cached;
//! 2. **invoke**: a fresh, isolated instance per call, request on stdin, response on stdout;
//! 3. **reclaim**: drop everything held for a function when it is deleted.

pub mod capture;
pub mod container;
pub mod wasm;

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

    /// Drops whatever was held for this function.
    async fn reclaim(&self, manifest: &FunctionManifest);
}

/// Where an executor gets a module's bytes when it needs them again.
pub trait ModuleSource: Send + Sync {
    fn module(&self, digest: &fogline_core::Digest) -> Option<Bytes>;
}
