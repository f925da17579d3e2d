//! Container functions on the local Docker engine, beside the limits measured in the same run.
//!
//! `cargo bench -p fogline-node --bench container` (release; builds the thumbnail example
//! image first, which needs Docker and a C compiler). Prints:
//! - cold start: `docker run --rm -i` of the image (the limit) against an exec-mode call
//!   (a fresh container per call, through the executor);
//! - warm stream-mode call: a raw round trip over an attached container's stdin/stdout
//!   (bollard, no pool: the limit) against a call through the executor's warm pool;
//! - throughput of warm stream-mode calls with 64 callers and 8 instances.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "support/stats.rs"]
mod stats;
use stats::{p, row};

use bytes::Bytes;
use fogline_core::manifest::{ContainerMode, FunctionManifest, Runtime};
use fogline_core::Digest;
use fogline_node::executor::container::ContainerExecutor;
use fogline_node::executor::{Executor, Invocation, ModuleSource};

const IMAGE: &str = "fogline-thumbnail-bench";

struct NoModules;
impl ModuleSource for NoModules {
    fn module(&self, _: &Digest) -> Option<Bytes> {
        None
    }
}

fn ppm(w: usize, h: usize) -> Vec<u8> {
    let mut v = format!("P6\n{w} {h}\n255\n").into_bytes();
    v.extend(std::iter::repeat_n(7u8, w * h * 3));
    v
}

fn manifest(name: &str, mode: ContainerMode, max_instances: u32) -> FunctionManifest {
    let mut m = FunctionManifest::wasm(name, Digest([0; 32]));
    m.runtime = Runtime::Container;
    m.module = None;
    m.image = Some(IMAGE.into());
    m.container.mode = mode;
    m.container.max_instances = max_instances;
    if mode == ContainerMode::Stream {
        m.container.cmd = vec!["--stream".into()];
    }
    m
}

fn main() {
    let build = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/thumbnail/build.sh");
    let ok = Command::new(build)
        .env("IMAGE", IMAGE)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("SKIPPED: cannot build the example image (needs Docker and a C compiler)");
        return;
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(run());
}

async fn run() {
    let body = Bytes::from(ppm(16, 16));
    let exec = Arc::new(
        ContainerExecutor::connect(
            Path::new("/var/run/docker.sock"),
            "bench",
            "bench",
            1 << 20,
            1 << 16,
        )
        .await
        .expect("engine"),
    );
    exec.ping().await.expect("engine answers");

    // Cold starts.
    let runs = 15;
    let mut limit = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let mut child = Command::new("docker")
            .args(["run", "--rm", "-i", "--network", "none", IMAGE])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("docker run");
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(&body)
            .expect("write");
        assert!(child.wait().expect("wait").success());
        limit.push(t.elapsed());
    }
    let m = manifest("bench-exec", ContainerMode::Exec, 4);
    exec.prepare(&m, None).await.expect("prepare");
    let mut cold = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let out = exec
            .invoke(&m, Invocation { body: body.clone() }, &NoModules)
            .await
            .expect("exec call");
        assert!(out.stdout.starts_with(b"P6"));
        cold.push(t.elapsed());
    }
    limit.sort();
    cold.sort();
    println!(
        "container functions on Docker, 2 cores, thumbnail of a 16x16 PPM (FROM scratch image)"
    );
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "limit: docker run --rm -i                    p50 {:>8.1} ms   p99 {:>8.1} ms",
        ms(p(&limit, 0.5)),
        ms(p(&limit, 0.99))
    );
    println!(
        "fogline exec-mode call (cold start)          p50 {:>8.1} ms   p99 {:>8.1} ms",
        ms(p(&cold, 0.5)),
        ms(p(&cold, 0.99))
    );
    println!(
        "ratio p50: {:.2}x docker run",
        p(&cold, 0.5).as_secs_f64() / p(&limit, 0.5).as_secs_f64()
    );

    // Warm stream-mode calls: the raw attach round trip first.
    let raw = raw_round_trips(&body, 2000).await;
    let s = manifest("bench-stream", ContainerMode::Stream, 8);
    exec.prepare(&s, None).await.expect("prepare stream");
    let mut warm = Vec::new();
    for i in 0..2200 {
        let t = Instant::now();
        let out = exec
            .invoke(&s, Invocation { body: body.clone() }, &NoModules)
            .await
            .expect("stream call");
        let d = t.elapsed();
        assert!(out.stdout.starts_with(b"P6"));
        if i >= 200 {
            warm.push(d);
        }
    }
    warm.sort();
    row("limit: raw attach round trip (no pool)", &raw);
    row("fogline stream-mode warm call", &warm);
    // Throughput: 64 callers, up to 8 instances.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (exec, s, body) = (exec.clone(), s.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                exec.invoke(&s, Invocation { body: body.clone() }, &NoModules)
                    .await
                    .expect("call");
                n += 1;
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("task");
    }
    println!(
        "fogline stream mode, 64 callers, 8 instances: {:.0} invocations/s",
        total as f64 / 5.0
    );
    let removed = exec.sweep().await.expect("sweep");
    println!("removed {removed} bench container(s)");
}

/// Round trips over one attached stream-mode container, without the executor.
async fn raw_round_trips(body: &Bytes, n: usize) -> Vec<Duration> {
    use bollard::container::LogOutput;
    use bollard::models::ContainerCreateBody;
    use bollard::query_parameters::{AttachContainerOptions, RemoveContainerOptions};
    use futures_util::StreamExt;
    use tokio::io::AsyncWriteExt;
    let docker = bollard::Docker::connect_with_unix(
        "/var/run/docker.sock",
        120,
        bollard::API_DEFAULT_VERSION,
    )
    .expect("docker");
    let docker = docker.negotiate_version().await.expect("version");
    let id = docker
        .create_container(
            None::<bollard::query_parameters::CreateContainerOptions>,
            ContainerCreateBody {
                image: Some(IMAGE.into()),
                cmd: Some(vec!["--stream".into()]),
                attach_stdin: Some(true),
                attach_stdout: Some(true),
                open_stdin: Some(true),
                network_disabled: Some(true),
                ..Default::default()
            },
        )
        .await
        .expect("create")
        .id;
    let mut a = docker
        .attach_container(
            &id,
            Some(AttachContainerOptions {
                stream: true,
                stdin: true,
                stdout: true,
                stderr: true,
                ..Default::default()
            }),
        )
        .await
        .expect("attach");
    docker.start_container(&id, None).await.expect("start");
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(body);
    let mut times = Vec::with_capacity(n);
    let mut pending = Vec::new();
    for i in 0..n + 200 {
        let t = Instant::now();
        a.input.write_all(&frame).await.expect("write");
        a.input.flush().await.expect("flush");
        loop {
            if pending.len() >= 4 {
                let len =
                    u32::from_be_bytes([pending[0], pending[1], pending[2], pending[3]]) as usize;
                if pending.len() >= 4 + len {
                    pending.drain(..4 + len);
                    break;
                }
            }
            match a.output.next().await {
                Some(Ok(LogOutput::StdOut { message })) => pending.extend_from_slice(&message),
                Some(Ok(_)) => {}
                _ => panic!("stream ended"),
            }
        }
        if i >= 200 {
            times.push(t.elapsed());
        }
    }
    let _ = docker
        .remove_container(
            &id,
            Some(RemoveContainerOptions {
                force: true,
                ..Default::default()
            }),
        )
        .await;
    times.sort();
    times
}
