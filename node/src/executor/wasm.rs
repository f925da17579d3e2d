//! The Wasm sandbox: WASI preview 1 command modules on wasmtime.
//!
//! - Compiled once at deploy; the compiled artifact is cached on disk under a key made of
//!   the module's SHA-256 and the engine's compatibility hash, so restarts and upgrades
//!   never run a stale artifact and never recompile needlessly.
//! - A fresh instance per call from the pooling allocator (isolation between calls, scale
//!   to zero by construction), run on the async worker itself (wasmtime's async support:
//!   the guest runs on its own fiber stack and yields to other tasks at every epoch tick),
//!   so a short call costs no hop to another thread and a long one cannot hog a worker.
//!   Where the pool's address space cannot be reserved (small 32/39-bit ARM boards) the
//!   engine falls back to on-demand allocation.
//! - Limits that hold: a memory cap through a resource limiter, a wall-clock deadline
//!   counted in epoch ticks (a ticker thread advances the epoch) and, for a guest waiting
//!   in a host call, a timer that drops the call; bounded stdout and stderr; and no
//!   filesystem or network unless the manifest grants a directory.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fogline_core::config::{Pooling, WasmSection};
use fogline_core::{Digest, FunctionManifest};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, InstancePre, Linker, Module,
    PoolingAllocationConfig, ResourceLimiter, Store, Trap, UpdateDeadline,
};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::MemoryInputPipe;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtxBuilder};

use super::capture::Capture;
use super::{ExecError, Executor, Invocation, ModuleSource, Output};

/// Bytes of each pool slot's linear memory kept resident and reset by memset.
const KEEP_RESIDENT: usize = 256 * 1024;

/// How often the epoch advances; deadlines are precise to about this much.
const TICK: Duration = Duration::from_millis(5);

/// The epoch ticker parks after this long with nothing running.
const IDLE_PARK: Duration = Duration::from_secs(1);

/// Runs Wasm functions.
pub struct WasmExecutor {
    /// Where each function's secrets are laid out (see [`crate::secrets`]).
    secrets_root: Option<PathBuf>,
    engine: Engine,
    linker: Linker<Ctx>,
    /// Compiled modules in memory, each with when it was last used (a tick of `uses`), at
    /// most `cache_max` of them.
    modules: RwLock<HashMap<Digest, (InstancePre<Ctx>, AtomicU64)>>,
    uses: AtomicU64,
    cache_max: usize,
    in_use: Arc<AtomicU32>,
    slots: u32,
    pooled: bool,
    cache_dir: PathBuf,
    engine_key: String,
    /// Most bytes of compiled artifacts kept on disk, and how many there are now.
    disk_cache_max: u64,
    disk_bytes: AtomicU64,
    /// One lock per module being loaded: concurrent cold calls of a module compile it once.
    loading: std::sync::Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
    compiles: AtomicU64,
    artifact_loads: AtomicU64,
    max_output: usize,
    max_stderr: usize,
    stop_ticker: Arc<AtomicBool>,
    /// Woken when an instance starts while it is parked.
    ticker: std::thread::Thread,
    parked: Arc<AtomicBool>,
    /// Which host directories functions may be granted.
    dirs: super::dirs::DirPolicy,
}

/// Per-instance state.
struct Ctx {
    wasi: WasiP1Ctx,
    mem: MemLimit,
}

/// Caps linear memory and remembers whether the guest hit the cap.
struct MemLimit {
    limit: usize,
    hit: bool,
}

impl ResourceLimiter for MemLimit {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limit {
            // memory.grow returns -1, as the spec says; malloc then fails inside the guest.
            self.hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

impl WasmExecutor {
    /// Builds the engine (pooled where possible) and starts the epoch ticker.
    pub fn new(cfg: &WasmSection, cache_dir: PathBuf) -> Result<Self, ExecError> {
        std::fs::create_dir_all(&cache_dir).map_err(|e| {
            ExecError::Internal(format!("cannot create {}: {e}", cache_dir.display()))
        })?;
        let max_memory = usize::try_from(cfg.max_memory.bytes()).unwrap_or(usize::MAX);
        let (engine, pooled) = match cfg.pooling {
            Pooling::Off => (build_engine(None)?, false),
            Pooling::On => (build_engine(Some((cfg.instances, max_memory)))?, true),
            Pooling::Auto => {
                match build_engine(Some((cfg.instances, max_memory))) {
                    Ok(e) => (e, true),
                    Err(e) => {
                        tracing::warn!("pooling allocator unavailable ({e}); falling back to on-demand allocation");
                        (build_engine(None)?, false)
                    }
                }
            }
        };
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut linker, |c: &mut Ctx| &mut c.wasi)
            .map_err(|e| ExecError::Internal(format!("linking WASI: {e}")))?;
        let engine_key = {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            engine.precompile_compatibility_hash().hash(&mut h);
            format!("{:016x}", h.finish())
        };
        let stop_ticker = Arc::new(AtomicBool::new(false));
        let in_use = Arc::new(AtomicU32::new(0));
        // The ticker sleeps (parked) once nothing has run for a second: an idle node, or a
        // board running many agents, should not wake 200 times a second for nothing. While
        // calls come, it keeps ticking, so a call never pays for waking it.
        let parked = Arc::new(AtomicBool::new(false));
        let ticker = {
            let engine = engine.clone();
            let stop = stop_ticker.clone();
            let in_use = in_use.clone();
            let parked = parked.clone();
            std::thread::Builder::new()
                .name("wasm-epoch".into())
                .spawn(move || {
                    let mut busy_at = Instant::now();
                    while !stop.load(Ordering::Relaxed) {
                        if in_use.load(Ordering::SeqCst) > 0 {
                            busy_at = Instant::now();
                        } else if busy_at.elapsed() >= IDLE_PARK {
                            // Say we park, then look again: a call that starts meanwhile
                            // either is seen here or sees `parked` and unparks us.
                            parked.store(true, Ordering::SeqCst);
                            if in_use.load(Ordering::SeqCst) == 0 {
                                std::thread::park_timeout(Duration::from_secs(1));
                            }
                            parked.store(false, Ordering::SeqCst);
                            busy_at = Instant::now();
                            continue;
                        }
                        std::thread::sleep(TICK);
                        engine.increment_epoch();
                    }
                })
                .map_err(|e| ExecError::Internal(format!("starting epoch ticker: {e}")))?
        };
        let w = WasmExecutor {
            secrets_root: None,
            engine,
            linker,
            modules: RwLock::new(HashMap::new()),
            uses: AtomicU64::new(0),
            cache_max: cfg.cache_max.max(1),
            in_use,
            ticker: ticker.thread().clone(),
            parked,
            slots: cfg.instances,
            pooled,
            disk_cache_max: cfg.disk_cache_max.bytes(),
            disk_bytes: AtomicU64::new(0),
            loading: std::sync::Mutex::new(HashMap::new()),
            compiles: AtomicU64::new(0),
            artifact_loads: AtomicU64::new(0),
            cache_dir,
            engine_key,
            max_output: usize::try_from(cfg.max_output.bytes()).unwrap_or(usize::MAX),
            max_stderr: usize::try_from(cfg.max_stderr.bytes()).unwrap_or(usize::MAX),
            stop_ticker,
            dirs: super::dirs::DirPolicy::new(&cfg.allowed_dirs, cfg.allow_write_dirs),
        };
        // What an older engine compiled, or past the bound, goes now.
        w.bound_disk(Path::new(""));
        Ok(w)
    }

    /// Functions that name secrets see their folder under `root` at
    /// `/var/openfaas/secrets`, read-only.
    pub fn with_secrets(mut self, root: PathBuf) -> Self {
        self.secrets_root = Some(root);
        self
    }

    /// Whether instances come from the pooling allocator.
    pub fn pooled(&self) -> bool {
        self.pooled
    }

    /// Whether a module is loaded (its next call starts warm).
    pub fn is_loaded(&self, digest: &Digest) -> bool {
        // A look, not a use: reports ask about every module every interval.
        self.modules
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(digest)
    }

    /// Instances running now.
    pub fn in_use(&self) -> u32 {
        self.in_use.load(Ordering::Relaxed)
    }

    /// Most instances at once.
    pub fn slots(&self) -> u32 {
        self.slots
    }

    /// Compiles (or loads from the disk cache) and links a module. Returns the compile time
    /// when it had to compile.
    fn load(
        &self,
        digest: &Digest,
        bytes: Option<Bytes>,
    ) -> Result<(InstancePre<Ctx>, Option<Duration>), ExecError> {
        let path = self.artifact_path(digest);
        let mut compiled = None;
        let module = match self.deserialize(&path) {
            Some(m) => m,
            None => {
                let bytes = bytes.ok_or_else(|| {
                    ExecError::Internal(format!("module {digest} is missing from the store"))
                })?;
                let t = Instant::now();
                let module = Module::new(&self.engine, &bytes).map_err(|e| {
                    ExecError::Invalid(format!("not a valid WebAssembly module: {}", root(&e)))
                })?;
                compiled = Some(t.elapsed());
                self.compiles.fetch_add(1, Ordering::Relaxed);
                match module.serialize().map(|art| write_atomic(&path, &art)) {
                    Ok(Ok(())) => self.bound_disk(&path),
                    Ok(Err(e)) => tracing::warn!("not caching compiled module {digest}: {e}"),
                    Err(e) => tracing::warn!("not caching compiled module {digest}: {e}"),
                }
                module
            }
        };
        match module.get_export("_start") {
            Some(wasmtime::ExternType::Func(_)) => {}
            _ => {
                return Err(ExecError::Invalid(
                    "not a WASI command module: it exports no `_start` function (build it as a wasm32-wasi program with a main)".into(),
                ))
            }
        }
        let pre = self
            .linker
            .instantiate_pre(&module)
            .map_err(|e| ExecError::Invalid(format!("module cannot be linked: {}", root(&e))))?;
        self.keep(*digest, pre.clone());
        Ok((pre, compiled))
    }

    /// Loads a cached artifact; a stale or damaged one is removed and recompiled.
    #[allow(unsafe_code)]
    fn deserialize(&self, path: &Path) -> Option<Module> {
        if !path.exists() {
            return None;
        }
        // SAFETY: the file was written by this node through `write_atomic` (rename after a
        // complete write) from `Module::serialize` of an engine whose compatibility hash is
        // part of the file name; wasmtime checks its own header and engine settings too.
        match unsafe { Module::deserialize_file(&self.engine, path) } {
            Ok(m) => {
                self.artifact_loads.fetch_add(1, Ordering::Relaxed);
                // Its modification time is its last use: the disk bound drops the oldest.
                let _ = std::fs::File::options()
                    .append(true)
                    .open(path)
                    .and_then(|f| f.set_modified(std::time::SystemTime::now()));
                Some(m)
            }
            Err(e) => {
                tracing::warn!("discarding cached artifact {}: {e}", path.display());
                let _ = std::fs::remove_file(path);
                None
            }
        }
    }

    /// Removes artifacts, least recently used first, until those on disk fit in
    /// `wasm.disk_cache_max` (`keep`, just written, stays); also what an older engine
    /// wrote, which this one would never load.
    fn bound_disk(&self, keep: &Path) {
        let suffix = format!("-{}.cwasm", self.engine_key);
        let mut files = Vec::new();
        for e in std::fs::read_dir(&self.cache_dir)
            .into_iter()
            .flatten()
            .flatten()
        {
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.ends_with(&suffix) {
                // Another engine's artifact, or an interrupted write.
                let _ = std::fs::remove_file(&path);
                continue;
            }
            if let Ok(m) = e.metadata() {
                let used = m.modified().unwrap_or(std::time::UNIX_EPOCH);
                files.push((used, m.len(), path));
            }
        }
        files.sort();
        let mut total: u64 = files.iter().map(|(_, len, _)| len).sum();
        for (_, len, path) in &files {
            if total <= self.disk_cache_max {
                break;
            }
            if path != keep && std::fs::remove_file(path).is_ok() {
                total -= len;
            }
        }
        self.disk_bytes.store(total, Ordering::Relaxed);
    }

    /// The lock that makes one caller load `digest` while the others wait for it.
    fn loading(&self, digest: &Digest) -> Arc<tokio::sync::Mutex<()>> {
        let mut l = self.loading.lock().unwrap_or_else(|p| p.into_inner());
        l.entry(*digest).or_default().clone()
    }

    /// Forgets the lock once no caller holds it.
    fn loaded(&self, digest: &Digest, gate: Arc<tokio::sync::Mutex<()>>) {
        let mut l = self.loading.lock().unwrap_or_else(|p| p.into_inner());
        drop(gate);
        if l.get(digest).is_some_and(|g| Arc::strong_count(g) == 1) {
            l.remove(digest);
        }
    }

    fn artifact_path(&self, digest: &Digest) -> PathBuf {
        self.cache_dir
            .join(format!("{}-{}.cwasm", digest.hex(), self.engine_key))
    }

    fn cached(&self, digest: &Digest) -> Option<InstancePre<Ctx>> {
        let modules = self.modules.read().unwrap_or_else(|p| p.into_inner());
        let (pre, used) = modules.get(digest)?;
        used.store(self.uses.fetch_add(1, Ordering::Relaxed), Ordering::Relaxed);
        Some(pre.clone())
    }

    /// Keeps `pre` in memory, dropping the least recently used modules past `cache_max`.
    fn keep(&self, digest: Digest, pre: InstancePre<Ctx>) {
        let now = self.uses.fetch_add(1, Ordering::Relaxed);
        let mut modules = self.modules.write().unwrap_or_else(|p| p.into_inner());
        modules.insert(digest, (pre, AtomicU64::new(now)));
        while modules.len() > self.cache_max {
            let Some(oldest) = modules
                .iter()
                .min_by_key(|(_, (_, used))| used.load(Ordering::Relaxed))
                .map(|(d, _)| *d)
            else {
                break;
            };
            modules.remove(&oldest);
        }
    }

    /// Compiled modules held in memory now.
    pub fn cached_modules(&self) -> usize {
        self.modules.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Runs one call of a loaded module (`t0`: when the call began, loading included).
    async fn run(
        &self,
        manifest: &FunctionManifest,
        call: Invocation,
        pre: InstancePre<Ctx>,
        cold: bool,
        t0: Instant,
    ) -> Result<Output, ExecError> {
        let stdout = Capture::new(self.max_output);
        let stderr = Capture::new(self.max_stderr);
        let mut b = WasiCtxBuilder::new();
        b.stdin(MemoryInputPipe::new(call.body))
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .args(&[manifest.name.as_str()]);
        for (k, v) in &manifest.env {
            b.env(k, v);
        }
        for (i, d) in manifest.dirs.iter().enumerate() {
            let perms = if d.read_only {
                FsPerms::ReadOnly
            } else {
                FsPerms::ReadWrite
            };
            // Checked again at each call: a link placed since the deploy must not lead out.
            let host = self.dirs.check(i, d)?;
            b.preopened_dir(&host, &d.guest, perms).map_err(|e| {
                ExecError::Unavailable(format!("cannot open granted directory {}: {e}", d.host))
            })?;
        }
        if let (false, Some(root)) = (manifest.secrets.is_empty(), &self.secrets_root) {
            let host = crate::secrets::function_dir(root, &manifest.name);
            b.preopened_dir(&host, crate::secrets::GUEST_DIR, FsPerms::ReadOnly)
                .map_err(|e| {
                    ExecError::Unavailable(format!("cannot open its secrets folder: {e}"))
                })?;
        }
        let limit = usize::try_from(manifest.memory.bytes()).unwrap_or(usize::MAX);
        let mut store = Store::new(
            &self.engine,
            Ctx {
                wasi: b.build_p1(),
                mem: MemLimit { limit, hit: false },
            },
        );
        store.limiter(|c| &mut c.mem);
        // Every tick: let other tasks run, and stop the guest once its time is up.
        let ticks = manifest.timeout.as_nanos().div_ceil(TICK.as_nanos()) as u64 + 1;
        let mut spent = 0u64;
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            spent += 1;
            Ok(if spent >= ticks {
                UpdateDeadline::Interrupt
            } else {
                UpdateDeadline::Yield(1)
            })
        });

        let instance = match pre.instantiate_async(&mut store).await {
            Ok(i) => i,
            Err(_) if store.data().mem.hit => {
                return Err(ExecError::OutOfMemory {
                    limit: manifest.memory.to_string(),
                    stderr: Bytes::new(),
                })
            }
            Err(e) => {
                return Err(ExecError::Trap {
                    message: format!("instantiation failed: {}", root(&e)),
                    stderr: Bytes::new(),
                })
            }
        };
        let start = instance
            .get_typed_func::<(), ()>(&mut store, "_start")
            .map_err(|e| ExecError::Invalid(format!("`_start` has the wrong type: {e}")))?;
        let startup = t0.elapsed();
        let t1 = Instant::now();
        let result = start.call_async(&mut store, ()).await;
        let run = t1.elapsed();
        let hit = store.data().mem.hit;
        drop(store); // the instance goes back to the pool now, before the reply is sent
        let (out, truncated) = stdout.take();
        let (err, _) = stderr.take();
        let ok = Output {
            stdout: out,
            stderr: err.clone(),
            truncated,
            cold,
            startup,
            run,
        };
        match result {
            Ok(()) => Ok(ok),
            Err(e) => {
                if let Some(exit) = e.downcast_ref::<I32Exit>() {
                    if exit.0 == 0 {
                        return Ok(ok);
                    }
                    if hit {
                        return Err(ExecError::OutOfMemory {
                            limit: manifest.memory.to_string(),
                            stderr: err,
                        });
                    }
                    return Err(ExecError::Exit {
                        code: exit.0,
                        stderr: err,
                    });
                }
                if let Some(Trap::Interrupt) = e.downcast_ref::<Trap>() {
                    return Err(ExecError::Timeout(manifest.timeout));
                }
                if hit {
                    return Err(ExecError::OutOfMemory {
                        limit: manifest.memory.to_string(),
                        stderr: err,
                    });
                }
                Err(ExecError::Trap {
                    message: root(&e),
                    stderr: err,
                })
            }
        }
    }
}

impl Drop for WasmExecutor {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

/// Holds one of the node's instance slots for the length of a call.
struct Slot(Arc<AtomicU32>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl WasmExecutor {
    fn acquire(&self) -> Result<Slot, ExecError> {
        let mut cur = self.in_use.load(Ordering::Acquire);
        loop {
            if cur >= self.slots {
                return Err(ExecError::Busy(cur));
            }
            match self.in_use.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::SeqCst,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    if self.parked.load(Ordering::SeqCst) {
                        self.ticker.unpark();
                    }
                    return Ok(Slot(self.in_use.clone()));
                }
                Err(now) => cur = now,
            }
        }
    }

    /// Synchronous form of [`Executor::prepare`].
    pub fn prepare_blocking(
        &self,
        manifest: &FunctionManifest,
        module: Option<Bytes>,
    ) -> Result<Option<Duration>, ExecError> {
        for (i, d) in manifest.dirs.iter().enumerate() {
            self.dirs.check(i, d)?;
        }
        let digest = manifest
            .module
            .ok_or_else(|| ExecError::Invalid("a wasm function needs a module".into()))?;
        if self.cached(&digest).is_some() {
            return Ok(None);
        }
        Ok(self.load(&digest, module)?.1)
    }
}

#[async_trait::async_trait]
impl Executor for Arc<WasmExecutor> {
    fn runtime(&self) -> fogline_core::Runtime {
        fogline_core::Runtime::Wasm
    }

    fn is_warm(&self, manifest: &FunctionManifest) -> bool {
        manifest.module.is_some_and(|d| self.is_loaded(&d))
    }

    fn in_use(&self) -> u32 {
        WasmExecutor::in_use(self)
    }

    fn slots(&self) -> u32 {
        WasmExecutor::slots(self)
    }

    fn pooled(&self) -> bool {
        WasmExecutor::pooled(self)
    }

    async fn prepare(
        &self,
        manifest: &FunctionManifest,
        module: Option<Bytes>,
    ) -> Result<Option<Duration>, ExecError> {
        let this = self.clone();
        let manifest = manifest.clone();
        tokio::task::spawn_blocking(move || this.prepare_blocking(&manifest, module))
            .await
            .map_err(|e| ExecError::Internal(format!("compile task failed: {e}")))?
    }

    async fn invoke(
        &self,
        manifest: &FunctionManifest,
        call: Invocation,
        source: &dyn ModuleSource,
    ) -> Result<Output, ExecError> {
        // Take the slot first, so overload is refused at once.
        let _slot = self.acquire()?;
        let digest = manifest.module.ok_or_else(|| {
            ExecError::Invalid(format!("function {} has no module", manifest.name))
        })?;
        let t0 = Instant::now();
        let (pre, cold) = match self.cached(&digest) {
            Some(pre) => (pre, false),
            None => {
                // One call loads it; calls that come meanwhile wait and take its result.
                let gate = self.loading(&digest);
                let held = gate.lock().await;
                let loaded = match self.cached(&digest) {
                    Some(pre) => Ok(pre),
                    None => {
                        // Compiling (or reading the cached artifact) blocks: off the async
                        // worker.
                        let bytes = source.module(&digest);
                        let this = self.clone();
                        let t = Instant::now();
                        tokio::task::spawn_blocking(move || this.load(&digest, bytes))
                            .await
                            .map_err(|e| ExecError::Internal(format!("compile task failed: {e}")))
                            .and_then(|r| {
                                r.map(|(pre, compiled)| {
                                    // Compiled now, or read compiled from the disk cache.
                                    let name = match compiled {
                                        Some(_) => "compile",
                                        None => "load compiled",
                                    };
                                    let took = t.elapsed();
                                    crate::traces::past(name, took, took, &[("module", &digest)]);
                                    pre
                                })
                            })
                    }
                };
                drop(held);
                self.loaded(&digest, gate);
                (loaded?, true)
            }
        };
        // Epoch ticks stop a guest running its own code; one waiting in a host call (a
        // sleep) is stopped by dropping the call, which frees its instance.
        let limit = manifest.timeout + 2 * TICK;
        match tokio::time::timeout(limit, self.run(manifest, call, pre, cold, t0)).await {
            Ok(r) => r,
            Err(_) => Err(ExecError::Timeout(manifest.timeout)),
        }
    }

    async fn forget_code(&self, manifest: &FunctionManifest) {
        if let Some(d) = manifest.module {
            self.modules
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&d);
            // No function uses it: its compiled artifact goes too.
            let path = self.artifact_path(&d);
            if let Ok(m) = std::fs::metadata(&path) {
                if std::fs::remove_file(&path).is_ok() {
                    let _ =
                        self.disk_bytes
                            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                                Some(b.saturating_sub(m.len()))
                            });
                }
            }
        }
    }

    fn code_cache(&self) -> super::CodeCache {
        super::CodeCache {
            in_memory: self.cached_modules() as u64,
            disk_bytes: self.disk_bytes.load(Ordering::Relaxed),
            compiles: self.compiles.load(Ordering::Relaxed),
            artifact_loads: self.artifact_loads.load(Ordering::Relaxed),
        }
    }
}

fn build_engine(pool: Option<(u32, usize)>) -> Result<Engine, ExecError> {
    Engine::new(&engine_config(pool))
        .map_err(|e| ExecError::Internal(format!("creating the Wasm engine: {}", root(&e))))
}

/// The engine settings the node runs with: `pool` is `(instances, max memory)` for the
/// pooling allocator, `None` for on-demand allocation. Public so benchmarks measure raw
/// wasmtime with exactly these settings.
pub fn engine_config(pool: Option<(u32, usize)>) -> Config {
    let mut config = Config::new();
    config.epoch_interruption(true);
    if let Some((instances, max_memory)) = pool {
        let mut p = PoolingAllocationConfig::new();
        p.total_core_instances(instances)
            .total_memories(instances)
            .total_tables(instances)
            .total_stacks(instances)
            .total_component_instances(0)
            .max_memory_size(max_memory)
            // Reset the first pages of a slot with memset rather than madvise: madvise in a
            // multi-threaded process sends TLB-shootdown IPIs to every core, which dominated
            // CPU time under concurrent load. Bounded so an idle pool stays small.
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(64 * 1024)
            // Batch the remaining decommits instead of one system call per instance.
            .decommit_batch_size(16)
            // Where the kernel can say which pages a call dirtied (Linux 6.7+), reset only
            // those: a call that touched a few pages no longer rewrites the whole resident
            // part, which also kept it out of the CPU caches between calls.
            .pagemap_scan(wasmtime::Enabled::Auto);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(p));
    }
    config
}

fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path)
}

fn root(e: &wasmtime::Error) -> String {
    // wasmtime's top-level message is often generic ("error while executing at wasm
    // backtrace: …"); the causes beneath it say what happened.
    let parts: Vec<String> = e.chain().map(|c| c.to_string()).collect();
    match parts.split_first() {
        Some((first, rest)) if !rest.is_empty() && first.contains("backtrace") => rest.join(": "),
        _ => parts.join(": "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fogline_core::units::ByteSize;

    struct Src(Bytes);
    impl ModuleSource for Src {
        fn module(&self, _: &Digest) -> Option<Bytes> {
            Some(self.0.clone())
        }
    }

    fn hello() -> Bytes {
        Bytes::from(
            std::fs::read(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../examples/hello/hello.wasm"
            ))
            .unwrap(),
        )
    }

    #[test]
    fn a_pool_too_large_for_the_address_space_falls_back_to_on_demand() {
        // 100,000 slots of 4 GiB cannot be reserved in a 47-bit address space.
        let cfg = WasmSection {
            instances: 100_000,
            max_memory: ByteSize(4 << 30),
            ..WasmSection::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let exec = WasmExecutor::new(&cfg, dir.path().to_path_buf()).unwrap();
        assert!(!exec.pooled());
        let wasm = hello();
        let m = FunctionManifest::wasm("hello", Digest::of(&wasm));
        exec.prepare_blocking(&m, Some(wasm.clone())).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let exec = Arc::new(exec);
        let out = rt
            .block_on(exec.invoke(
                &m,
                Invocation {
                    body: Bytes::from_static(b"board"),
                },
                &Src(wasm),
            ))
            .unwrap();
        assert_eq!(&out.stdout[..], b"hello, board");

        let strict = WasmSection {
            pooling: Pooling::On,
            ..cfg
        };
        let e = WasmExecutor::new(&strict, dir.path().to_path_buf())
            .err()
            .expect("pooling=on must fail here");
        assert!(e.to_string().contains("Wasm engine"), "{e}");
    }

    fn example(rel: &str) -> Bytes {
        let path = format!("{}/../examples/{rel}", env!("CARGO_MANIFEST_DIR"));
        Bytes::from(std::fs::read(path).unwrap())
    }

    #[test]
    fn compiled_modules_in_memory_are_bounded_least_recently_used_first() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = WasmSection {
            instances: 4,
            cache_max: 2,
            ..WasmSection::default()
        };
        let exec = Arc::new(WasmExecutor::new(&cfg, dir.path().to_path_buf()).unwrap());
        let fs: Vec<(FunctionManifest, Bytes)> = [
            "hello/hello.wasm",
            "primes/primes.wasm",
            "misbehave/fail.wasm",
        ]
        .iter()
        .enumerate()
        .map(|(i, rel)| {
            let wasm = example(rel);
            (
                FunctionManifest::wasm(format!("f{i}"), Digest::of(&wasm)),
                wasm,
            )
        })
        .collect();
        let d = |i: usize| fs[i].0.module.unwrap();
        exec.prepare_blocking(&fs[0].0, Some(fs[0].1.clone()))
            .unwrap();
        exec.prepare_blocking(&fs[1].0, Some(fs[1].1.clone()))
            .unwrap();
        // f0 is used after f1 (a look, as reports take, is not a use).
        assert!(exec.cached(&d(0)).is_some());
        assert!(exec.is_loaded(&d(1)));
        exec.prepare_blocking(&fs[2].0, Some(fs[2].1.clone()))
            .unwrap();
        assert_eq!(exec.cached_modules(), 2);
        assert!(exec.is_loaded(&d(0)) && !exec.is_loaded(&d(1)) && exec.is_loaded(&d(2)));
        // The evicted one runs again, cold, from its compiled artifact on disk.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let out = rt
            .block_on(exec.invoke(
                &fs[1].0,
                Invocation {
                    body: Bytes::from_static(b"1000"),
                },
                &Src(fs[1].1.clone()),
            ))
            .unwrap();
        assert!(out.cold);
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "168");
        assert_eq!(exec.cached_modules(), 2);
        assert!(exec.is_loaded(&d(1)));
    }

    #[test]
    fn the_compiled_artifact_is_cached_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let wasm = hello();
        let m = FunctionManifest::wasm("hello", Digest::of(&wasm));
        let cfg = WasmSection {
            instances: 4,
            ..WasmSection::default()
        };
        let first = WasmExecutor::new(&cfg, dir.path().to_path_buf()).unwrap();
        assert!(
            first
                .prepare_blocking(&m, Some(wasm.clone()))
                .unwrap()
                .is_some(),
            "compiled"
        );
        drop(first);
        // A new executor (a restart) loads the artifact instead of compiling: no bytes needed.
        let second = WasmExecutor::new(&cfg, dir.path().to_path_buf()).unwrap();
        assert!(
            second.prepare_blocking(&m, None).unwrap().is_none(),
            "loaded from the cache"
        );
    }
}
