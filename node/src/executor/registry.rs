//! The registry of sandboxes, keyed by runtime: the one place that lists them.

use std::sync::Arc;
use std::time::Duration;

use fogline_core::config::NodeConfig;
use fogline_core::{FunctionManifest, Runtime};

use super::container::ContainerExecutor;
use super::wasm::WasmExecutor;
use super::{ExecError, Executor};

/// A sandbox, or why it could not start on this member.
type Slot = Result<Arc<dyn Executor>, String>;

/// Every sandbox this member has, or why one is missing.
pub struct Executors {
    slots: Vec<(Runtime, Slot)>,
}

impl Executors {
    /// Opens every sandbox the config enables. A sandbox that cannot start here (no
    /// container engine) is kept as the reason, which its functions' calls answer with.
    pub async fn open(config: &NodeConfig, id: &str) -> anyhow::Result<Executors> {
        let dir = &config.node.data_dir;
        let secrets = crate::secrets::mount_root(config);
        let wasm =
            Arc::new(WasmExecutor::new(&config.wasm, dir.join("compiled"))?.with_secrets(secrets));
        Ok(Executors {
            slots: vec![
                (Runtime::Wasm, Ok(Arc::new(wasm) as Arc<dyn Executor>)),
                (
                    Runtime::Container,
                    open_containers(config, id)
                        .await
                        .map(|c| c as Arc<dyn Executor>),
                ),
            ],
        })
    }

    /// Builds a registry from sandboxes made elsewhere (benchmarks, tests).
    pub fn from_parts(parts: Vec<Arc<dyn Executor>>) -> Executors {
        Executors {
            slots: parts.into_iter().map(|e| (e.runtime(), Ok(e))).collect(),
        }
    }

    /// The sandbox that runs `runtime`, or why there is none on this member.
    pub fn get(&self, runtime: Runtime) -> Result<&Arc<dyn Executor>, ExecError> {
        match self.slots.iter().find(|(r, _)| *r == runtime) {
            Some((_, Ok(e))) => Ok(e),
            Some((_, Err(why))) => Err(ExecError::Unavailable(why.clone())),
            None => Err(ExecError::Unavailable(format!(
                "runtime `{runtime}` is not available on this node"
            ))),
        }
    }

    /// The sandbox for `manifest`'s runtime.
    pub fn of(&self, manifest: &FunctionManifest) -> Result<&Arc<dyn Executor>, ExecError> {
        self.get(manifest.runtime)
    }

    /// Every sandbox that opened.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn Executor>> {
        self.slots.iter().filter_map(|(_, e)| e.as_ref().ok())
    }

    /// The runtimes that can take calls now.
    pub fn available(&self) -> Vec<Runtime> {
        self.iter()
            .filter(|e| e.available())
            .map(|e| e.runtime())
            .collect()
    }

    /// Whether a call of `manifest` would start warm here.
    pub fn is_warm(&self, manifest: &FunctionManifest) -> bool {
        self.of(manifest).is_ok_and(|e| e.is_warm(manifest))
    }

    /// Instances running calls now, over every sandbox.
    pub fn in_use(&self) -> u32 {
        self.iter().map(|e| e.in_use()).sum()
    }

    /// Instance slots reserved ahead, over every sandbox.
    pub fn slots(&self) -> u32 {
        self.iter().map(|e| e.slots()).sum()
    }

    pub fn pooled(&self) -> bool {
        self.iter().any(|e| e.pooled())
    }

    /// Compiled code kept and made, over every sandbox.
    pub fn code_cache(&self) -> super::CodeCache {
        self.iter()
            .map(|e| e.code_cache())
            .fold(super::CodeCache::default(), |a, b| a + b)
    }

    /// Stops every sandbox (the member is stopping).
    pub async fn stop(&self) {
        for e in self.iter() {
            e.stop().await;
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
    let owner = super::container::owner_of(&config.node.data_dir);
    let c =
        ContainerExecutor::connect(&config.container.socket, id, &owner, max_output, max_stderr)
            .await
            .map_err(|e| e.to_string())?
            .with_secrets(crate::secrets::mount_root(config))
            .with_image_gc(config.container.gc_images);
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
    // A Swarm worker: what its service's killed workers left on this host, at start and
    // every minute (a loop of its own: a slow engine does not hold up the reaper).
    if let Some(s) = config.container.swarm_service.clone() {
        let weak = Arc::downgrade(&c);
        tokio::spawn(async move {
            loop {
                let Some(c) = weak.upgrade() else { return };
                match c.sweep_swarm_leftovers(&s).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(
                        "removed {n} function container(s) left on this host by workers of {s} that Swarm no longer runs"
                    ),
                    Err(e) => tracing::debug!("cleaning up {s}'s containers: {e}"),
                }
                drop(c);
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
        });
    }
    Ok(c)
}
