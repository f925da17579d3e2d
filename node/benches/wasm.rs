//! In-process cost of one Wasm invocation, beside the physical limit measured in the same run.
//!
//! `cargo bench -p fogline-node --bench wasm` (release). Prints, for the `hello` example with a
//! 1 KiB body:
//! - limit: raw wasmtime — `InstancePre::instantiate` of the same module into a fresh store
//!   from an engine with the node's exact settings (`engine_config`), with an empty WASI
//!   context, then drop;
//! - fogline: `WasmExecutor::invoke` — slot, fresh store with stdin/stdout/stderr pipes,
//!   limits and deadline, instantiate, run `_start`, collect output, drop.
//!
//! Both run on a current-thread tokio runtime, as the node runs calls on its async workers.

use std::path::Path;
use std::time::{Duration, Instant};

#[path = "support/stats.rs"]
mod stats;
use stats::{p, row};

use bytes::Bytes;
use fogline_core::config::WasmSection;
use fogline_core::{Digest, FunctionManifest};
use fogline_node::executor::wasm::WasmExecutor;
use fogline_node::executor::{Executor, Invocation, ModuleSource};
use wasmtime::{Engine, Linker, Module, Store};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::WasiCtxBuilder;

const ITERS: usize = 20_000;

struct Bytesource(Bytes);
impl ModuleSource for Bytesource {
    fn module(&self, _: &Digest) -> Option<Bytes> {
        Some(self.0.clone())
    }
}

fn main() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/hello/hello.wasm");
    let wasm = std::fs::read(&path).expect("examples/hello/hello.wasm");
    let body = Bytes::from(vec![b'x'; 1024]);
    let cfg = WasmSection::default();

    // Limit: raw wasmtime with the same pooling settings the node uses.
    let config = fogline_node::executor::wasm::engine_config(Some((
        cfg.instances,
        cfg.max_memory.bytes() as usize,
    )));
    let engine = Engine::new(&config).expect("engine");
    let module = Module::new(&engine, &wasm).expect("module");
    let mut linker: Linker<WasiP1Ctx> = Linker::new(&engine);
    wasmtime_wasi::p1::add_to_linker_async(&mut linker, |c| c).expect("link");
    let pre = linker.instantiate_pre(&module).expect("pre");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let raw = measure(|| {
        let mut store = Store::new(&engine, WasiCtxBuilder::new().build_p1());
        store.set_epoch_deadline(1_000_000);
        let _instance = rt
            .block_on(pre.instantiate_async(&mut store))
            .expect("instantiate");
    });

    // Fogline's executor, whole call.
    let dir = tempfile::tempdir().expect("tempdir");
    let exec =
        std::sync::Arc::new(WasmExecutor::new(&cfg, dir.path().to_path_buf()).expect("executor"));
    let manifest = FunctionManifest::wasm("hello", Digest::of(&wasm));
    exec.prepare_blocking(&manifest, Some(Bytes::from(wasm.clone())))
        .expect("prepare");
    let src = Bytesource(Bytes::from(wasm));
    let ours = measure(|| {
        let out = rt
            .block_on(exec.invoke(&manifest, Invocation { body: body.clone() }, &src))
            .expect("invoke");
        assert_eq!(out.stdout.len(), 7 + 1024);
    });

    println!(
        "wasm invocation, hello example, 1 KiB body, {ITERS} iterations, pooled={}",
        exec.pooled()
    );
    row("limit: raw wasmtime instantiate", &raw);
    row("fogline: instantiate + run + output", &ours);
    println!(
        "ratio p50: {:.2}x the raw instantiate",
        p(&ours, 0.5).as_secs_f64() / p(&raw, 0.5).as_secs_f64()
    );
}

fn measure(mut f: impl FnMut()) -> Vec<Duration> {
    for _ in 0..1000 {
        f();
    }
    let mut v = Vec::with_capacity(ITERS);
    for _ in 0..ITERS {
        let t = Instant::now();
        f();
        v.push(t.elapsed());
    }
    v.sort();
    v
}
