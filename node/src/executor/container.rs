//! Container functions on the local Docker engine (bollard), behind the same executor
//! contract as Wasm: request on stdin, response on stdout, stderr to the logs, exit code.
//!
//! Two modes: `exec` starts one container per call (any command-line program works
//! unchanged); `stream` keeps warm instances that read length-prefixed requests on stdin
//! and write length-prefixed responses on stdout, so a warm call costs an IPC round trip.
//!
//! Isolation by default: no network, read-only root filesystem, a size-capped tmpfs on
//! /tmp, memory (without swap), CPU and pids limits, every capability dropped, no new
//! privileges, an unprivileged user. Every container is labelled with the node's id; the
//! node removes leftovers of a crash at start and its own containers at stop.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bollard::container::LogOutput;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    AttachContainerOptions, CreateContainerOptions, InspectContainerOptions, ListContainersOptions,
    RemoveContainerOptions, WaitContainerOptions,
};
use bollard::Docker;
use bytes::{Bytes, BytesMut};
use fogline_core::manifest::ContainerMode;
use fogline_core::FunctionManifest;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, Semaphore};

use super::{ExecError, Invocation, Output};

/// Label naming the node that started a container.
pub const LABEL_NODE: &str = "dev.fogline.node";
/// Label naming the node's data folder (a hash of it): which node instance owns a container,
/// even when two nodes on one host share an id.
pub const LABEL_OWNER: &str = "dev.fogline.owner";
/// Label naming the function a container runs.
pub const LABEL_FUNCTION: &str = "dev.fogline.function";
/// The unprivileged user functions run as (nobody).
const USER: &str = "65534:65534";

/// One warm stream-mode instance.
struct Instance {
    id: String,
    input: std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>,
    stdout: mpsc::Receiver<Bytes>,
    /// Bytes read from stdout not yet consumed by a response.
    pending: BytesMut,
    stderr: Arc<Mutex<BytesMut>>,
    idle_since: Instant,
}

/// A function's stream-mode instances.
struct Pool {
    idle: Mutex<Vec<Instance>>,
    /// One permit per instance that may exist.
    slots: Arc<Semaphore>,
    keepalive: Duration,
}

/// Runs container functions.
pub struct ContainerExecutor {
    /// Where each function's secrets are laid out (see [`crate::secrets`]).
    secrets_root: Option<std::path::PathBuf>,
    /// Remove an image when no function uses it any more (`container.gc_images`).
    gc_images: bool,
    docker: Docker,
    node: String,
    owner: String,
    max_output: usize,
    max_stderr: usize,
    pools: Mutex<HashMap<String, Arc<Pool>>>,
    seq: AtomicU64,
    in_use: AtomicU32,
    /// Why the engine cannot be used, when it cannot.
    down: Mutex<Option<String>>,
}

fn unavailable(e: impl std::fmt::Display) -> ExecError {
    ExecError::Unavailable(format!("container engine unreachable: {e}"))
}

/// Whether a bollard error says the engine is not there at all.
fn is_connection(e: &bollard::errors::Error) -> bool {
    use bollard::errors::Error as E;
    matches!(
        e,
        E::SocketNotFoundError(_)
            | E::HyperResponseError { .. }
            | E::HyperLegacyError { .. }
            | E::HttpClientError { .. }
            | E::IOError { .. }
            | E::RequestTimeoutError
    )
}

impl ContainerExecutor {
    /// Connects to the engine at `socket`. Fails only when the socket is unusable as a path;
    /// an engine that is down is found out (and reported) per call.
    pub async fn connect(
        socket: &std::path::Path,
        node: &str,
        owner: &str,
        max_output: usize,
        max_stderr: usize,
    ) -> Result<Self, ExecError> {
        let path = socket.to_string_lossy().to_string();
        let docker = match Docker::connect_with_unix(&path, 120, bollard::API_DEFAULT_VERSION) {
            Ok(d) => d,
            Err(e) => return Err(unavailable(format!("{path}: {e}"))),
        };
        // Speak the engine's API version (an older engine refuses a newer client).
        let docker = match docker.clone().negotiate_version().await {
            Ok(d) => d,
            Err(_) => docker,
        };
        Ok(ContainerExecutor {
            secrets_root: None,
            gc_images: false,
            docker,
            node: node.to_string(),
            owner: owner.to_string(),
            max_output,
            max_stderr,
            pools: Mutex::new(HashMap::new()),
            seq: AtomicU64::new(0),
            in_use: AtomicU32::new(0),
            down: Mutex::new(None),
        })
    }

    /// Removes images no function uses any more (`container.gc_images`).
    pub fn with_image_gc(mut self, on: bool) -> Self {
        self.gc_images = on;
        self
    }

    /// Functions that name secrets see their folder under `root` at
    /// `/var/openfaas/secrets`, bind-mounted read-only from a memory-backed filesystem.
    pub fn with_secrets(mut self, root: std::path::PathBuf) -> Self {
        self.secrets_root = Some(root);
        self
    }

    /// Whether the engine answers now.
    pub async fn ping(&self) -> Result<(), ExecError> {
        match self.docker.ping().await {
            Ok(_) => {
                *lock(&self.down) = None;
                Ok(())
            }
            Err(e) => {
                let msg = e.to_string();
                *lock(&self.down) = Some(msg.clone());
                Err(unavailable(msg))
            }
        }
    }

    pub fn available(&self) -> bool {
        lock(&self.down).is_none()
    }

    /// Container instances running calls now.
    pub fn in_use(&self) -> u32 {
        self.in_use.load(Ordering::Relaxed)
    }

    /// Whether `function` has a warm (idle) stream-mode instance.
    pub fn is_warm(&self, function: &str) -> bool {
        lock(&self.pools)
            .get(function)
            .is_some_and(|p| !lock(&p.idle).is_empty())
    }

    fn map_err(&self, e: bollard::errors::Error) -> ExecError {
        if is_connection(&e) {
            *lock(&self.down) = Some(e.to_string());
            unavailable(e)
        } else {
            ExecError::Internal(format!("container engine: {e}"))
        }
    }

    /// Removes the function containers on this engine that tasks of the Swarm service
    /// `service` left when Swarm stopped running them (killed, not stopped: a stopped one
    /// removes its own); those of tasks running on this engine stay. Returns how many were
    /// removed.
    pub async fn sweep_swarm_leftovers(&self, service: &str) -> Result<usize, ExecError> {
        let live: Vec<String> = self
            .docker
            .list_containers(Some(ListContainersOptions {
                filters: Some(HashMap::from([(
                    "label".to_string(),
                    vec![format!("com.docker.swarm.service.name={service}")],
                )])),
                ..Default::default()
            }))
            .await
            .map_err(|e| self.map_err(e))?
            .into_iter()
            .filter_map(|c| c.labels?.remove("com.docker.swarm.task.id"))
            .collect();
        remove_swarm_leftovers(&self.docker, service, Some(&self.owner), |node, task| {
            node == self.node || live.iter().any(|t| t == task)
        })
        .await
        .map_err(|e| self.map_err(e))
    }

    /// Removes every container labelled with this node's id and owner (leftovers of a
    /// crash, or our own at shutdown). Returns how many were removed.
    pub async fn sweep(&self) -> Result<usize, ExecError> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![
                format!("{LABEL_NODE}={}", self.node),
                format!("{LABEL_OWNER}={}", self.owner),
            ],
        )]);
        let list = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .map_err(|e| self.map_err(e))?;
        let mut n = 0;
        for c in list {
            if let Some(id) = c.id {
                if self.remove(&id).await {
                    n += 1;
                }
            }
        }
        for p in lock(&self.pools).values() {
            lock(&p.idle).clear();
        }
        Ok(n)
    }

    async fn remove(&self, id: &str) -> bool {
        force_remove(&self.docker, id).await
    }

    /// Removes a container without making the caller wait for it.
    fn remove_later(&self, id: String) {
        let docker = self.docker.clone();
        tokio::spawn(async move { force_remove(&docker, &id).await });
    }

    /// Checks that the image exists locally (there is no registry to pull from).
    pub async fn check_image(&self, image: &str) -> Result<(), ExecError> {
        match self.docker.inspect_image(image).await {
            Ok(_) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Err(ExecError::Invalid(format!(
                "image {image:?} does not exist on this node's container engine; build or load it first (docker build, or deploy with --image-tar)"
            ))),
            // The engine refuses the name itself (upper case, bad characters): the caller's
            // mistake, not ours.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 400,
                message,
            }) => Err(ExecError::Invalid(format!(
                "image {image:?} is not a valid image reference: {message}"
            ))),
            Err(e) => Err(self.map_err(e)),
        }
    }

    /// Loads an image tar (as `docker save` writes it) into the engine; returns its tags.
    pub async fn load_image(&self, tar: Bytes) -> Result<Vec<String>, ExecError> {
        let mut stream = self.docker.import_image(
            bollard::query_parameters::ImportImageOptions {
                quiet: true,
                ..Default::default()
            },
            bollard::body_full(tar),
            None,
        );
        let mut tags = Vec::new();
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    if let Some(s) = info.stream {
                        for line in s.lines() {
                            if let Some(t) = line.trim().strip_prefix("Loaded image: ") {
                                tags.push(t.to_string());
                            } else if let Some(t) = line.trim().strip_prefix("Loaded image ID: ") {
                                tags.push(t.to_string());
                            }
                        }
                    }
                    if let Some(e) = info.error_detail.and_then(|d| d.message) {
                        return Err(ExecError::Invalid(format!("image tar: {e}")));
                    }
                }
                Err(bollard::errors::Error::DockerResponseServerError { message, .. }) => {
                    return Err(ExecError::Invalid(format!("image tar: {message}")))
                }
                Err(e) => return Err(self.map_err(e)),
            }
        }
        if tags.is_empty() {
            return Err(ExecError::Invalid(
                "image tar: the engine loaded no image from it".into(),
            ));
        }
        Ok(tags)
    }

    fn config(&self, m: &FunctionManifest, stream: bool) -> ContainerCreateBody {
        let c = &m.container;
        let memory = m.memory.bytes() as i64;
        let env: Vec<String> = m.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        ContainerCreateBody {
            image: m.image.clone(),
            cmd: (!c.cmd.is_empty()).then(|| c.cmd.clone()),
            env: Some(env),
            user: Some(USER.into()),
            attach_stdin: Some(true),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            open_stdin: Some(true),
            stdin_once: Some(!stream),
            tty: Some(false),
            network_disabled: Some(true),
            labels: Some(HashMap::from([
                (LABEL_NODE.to_string(), self.node.clone()),
                (LABEL_OWNER.to_string(), self.owner.clone()),
                (LABEL_FUNCTION.to_string(), m.name.clone()),
            ])),
            host_config: Some(HostConfig {
                memory: Some(memory),
                memory_swap: Some(memory),
                nano_cpus: Some(i64::from(c.millicpus) * 1_000_000),
                pids_limit: Some(i64::from(c.pids)),
                network_mode: Some("none".into()),
                readonly_rootfs: Some(true),
                tmpfs: Some(HashMap::from([(
                    "/tmp".to_string(),
                    format!("rw,noexec,nosuid,size={}", c.tmpfs.bytes()),
                )])),
                binds: match (&self.secrets_root, m.secrets.is_empty()) {
                    (Some(root), false) => Some(vec![format!(
                        "{}:{}:ro",
                        crate::secrets::function_dir(root, &m.name).display(),
                        crate::secrets::GUEST_DIR
                    )]),
                    _ => None,
                },
                cap_drop: Some(vec!["ALL".into()]),
                security_opt: Some(vec!["no-new-privileges".into()]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Creates and attaches to a container, then starts it.
    async fn launch(
        &self,
        m: &FunctionManifest,
        stream: bool,
    ) -> Result<(String, bollard::container::AttachContainerResults), ExecError> {
        let name = format!(
            "fogline-{}-{}-{}",
            sanitize(&self.node),
            m.name,
            self.seq.fetch_add(1, Ordering::Relaxed)
        );
        let created = self
            .docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(name),
                    ..Default::default()
                }),
                self.config(m, stream),
            )
            .await
            .map_err(|e| match e {
                bollard::errors::Error::DockerResponseServerError {
                    status_code: 404, ..
                } => ExecError::Invalid(format!(
                    "image {:?} does not exist on this node's container engine",
                    m.image.as_deref().unwrap_or("")
                )),
                e => self.map_err(e),
            })?;
        let id = created.id;
        let attached = match self
            .docker
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
        {
            Ok(a) => a,
            Err(e) => {
                self.remove_later(id);
                return Err(self.map_err(e));
            }
        };
        if let Err(e) = self.docker.start_container(&id, None).await {
            self.remove_later(id);
            return Err(self.map_err(e));
        }
        Ok((id, attached))
    }

    /// The exit code of a finished container and whether the kernel killed it for memory.
    async fn exit_of(&self, id: &str) -> (i64, bool) {
        let mut wait = self.docker.wait_container(
            id,
            Some(WaitContainerOptions {
                condition: "not-running".into(),
            }),
        );
        let code = match wait.next().await {
            Some(Ok(r)) => r.status_code,
            // bollard reports a non-zero exit as an error carrying the code.
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => code,
            _ => -1,
        };
        let oom = self
            .docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
            .ok()
            .and_then(|i| i.state)
            .and_then(|s| s.oom_killed)
            .unwrap_or(false);
        (code, oom)
    }

    /// `exec` mode: one container per call.
    async fn run_exec(&self, m: &FunctionManifest, body: Bytes) -> Result<Output, ExecError> {
        let t0 = Instant::now();
        let (id, attached) = self.launch(m, false).await?;
        let startup = t0.elapsed();
        let t1 = Instant::now();
        let bollard::container::AttachContainerResults {
            mut output,
            mut input,
        } = attached;
        let (max_out, max_err) = (self.max_output, self.max_stderr);
        let work = async {
            // Feed stdin while reading, so a program that writes before it has read all its
            // input cannot deadlock against us.
            let feed = async {
                let _ = input.write_all(&body).await;
                let _ = input.shutdown().await;
            };
            let read = async {
                let mut out = BytesMut::new();
                let mut err = BytesMut::new();
                let mut truncated = false;
                while let Some(item) = output.next().await {
                    match item {
                        Ok(LogOutput::StdOut { message }) | Ok(LogOutput::Console { message }) => {
                            let room = max_out.saturating_sub(out.len());
                            out.extend_from_slice(&message[..message.len().min(room)]);
                            if message.len() > room {
                                // Over the cap: the rest is dropped and the process stopped
                                // (it would otherwise flood until its timeout).
                                truncated = true;
                                break;
                            }
                        }
                        Ok(LogOutput::StdErr { message }) => {
                            let room = max_err.saturating_sub(err.len());
                            err.extend_from_slice(&message[..message.len().min(room)]);
                        }
                        Ok(LogOutput::StdIn { .. }) => {}
                        Err(_) => break,
                    }
                }
                (out.freeze(), err.freeze(), truncated)
            };
            let ((), r) = tokio::join!(feed, read);
            r
        };
        let result = tokio::time::timeout(m.timeout, work).await;
        let Ok((stdout, stderr, truncated)) = result else {
            self.remove_later(id);
            return Err(ExecError::Timeout(m.timeout));
        };
        if truncated {
            self.remove_later(id);
            return Ok(Output {
                stdout,
                stderr,
                truncated,
                cold: true,
                startup,
                run: t1.elapsed(),
            });
        }
        let (code, oom) = self.exit_of(&id).await;
        let run = t1.elapsed();
        self.remove_later(id);
        finish(m, code, oom, stdout, stderr, truncated, true, startup, run)
    }

    /// Starts a stream-mode instance.
    async fn start_instance(&self, m: &FunctionManifest) -> Result<Instance, ExecError> {
        let (id, attached) = self.launch(m, true).await?;
        let bollard::container::AttachContainerResults { mut output, input } = attached;
        let (tx, rx) = mpsc::channel::<Bytes>(64);
        let stderr = Arc::new(Mutex::new(BytesMut::new()));
        let err_sink = stderr.clone();
        let max_err = self.max_stderr;
        tokio::spawn(async move {
            while let Some(item) = output.next().await {
                match item {
                    Ok(LogOutput::StdOut { message }) | Ok(LogOutput::Console { message })
                        if tx.send(message.clone()).await.is_err() =>
                    {
                        break;
                    }
                    Ok(LogOutput::StdErr { message }) => {
                        let mut e = lock(&err_sink);
                        // Keep the most recent stderr, bounded.
                        e.extend_from_slice(&message);
                        if e.len() > max_err {
                            let cut = e.len() - max_err;
                            let _ = e.split_to(cut);
                        }
                    }
                    _ => {}
                }
            }
        });
        Ok(Instance {
            id,
            input,
            stdout: rx,
            pending: BytesMut::new(),
            stderr,
            idle_since: Instant::now(),
        })
    }

    fn pool(&self, m: &FunctionManifest) -> Arc<Pool> {
        lock(&self.pools)
            .entry(m.name.clone())
            .or_insert_with(|| {
                Arc::new(Pool {
                    idle: Mutex::new(Vec::new()),
                    slots: Arc::new(Semaphore::new(m.container.max_instances as usize)),
                    keepalive: m.container.keepalive,
                })
            })
            .clone()
    }

    /// `stream` mode: a warm instance if there is one, else a new one.
    async fn run_stream(&self, m: &FunctionManifest, body: Bytes) -> Result<Output, ExecError> {
        let pool = self.pool(m);
        let t0 = Instant::now();
        let permit = tokio::time::timeout(m.timeout, pool.slots.clone().acquire_owned())
            .await
            .map_err(|_| ExecError::Busy(m.container.max_instances))?
            .map_err(|_| ExecError::Internal("instance pool closed".into()))?;
        let warm = lock(&pool.idle).pop();
        let (mut inst, cold) = match warm {
            Some(i) => (i, false),
            None => (self.start_instance(m).await?, true),
        };
        let startup = t0.elapsed();
        let t1 = Instant::now();
        let exchange = async {
            let mut frame = BytesMut::with_capacity(4 + body.len());
            frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
            frame.extend_from_slice(&body);
            inst.input.write_all(&frame).await.ok()?;
            inst.input.flush().await.ok()?;
            while inst.pending.len() < 4 {
                inst.pending.extend_from_slice(&inst.stdout.recv().await?);
            }
            let len = u32::from_be_bytes([
                inst.pending[0],
                inst.pending[1],
                inst.pending[2],
                inst.pending[3],
            ]) as usize;
            // Read up to the cap; beyond it the response is cut and the instance replaced
            // (its stream would otherwise hold the rest).
            let want = len.min(self.max_output);
            while inst.pending.len() < 4 + want {
                inst.pending.extend_from_slice(&inst.stdout.recv().await?);
            }
            let _ = inst.pending.split_to(4);
            let out = inst.pending.split_to(want).freeze();
            Some((out, len > want))
        };
        let result = tokio::time::timeout(m.timeout, exchange).await;
        let run = t1.elapsed();
        let stderr = std::mem::take(&mut *lock(&inst.stderr)).freeze();
        match result {
            Ok(Some((stdout, truncated))) => {
                if truncated {
                    self.remove_later(inst.id);
                } else {
                    inst.idle_since = Instant::now();
                    lock(&pool.idle).push(inst);
                }
                drop(permit);
                Ok(Output {
                    stdout,
                    stderr,
                    truncated,
                    cold,
                    startup,
                    run,
                })
            }
            Ok(None) => {
                // The process closed its stdout: it exited. Report how, replace it later.
                let (code, oom) = self.exit_of(&inst.id).await;
                self.remove_later(inst.id);
                drop(permit);
                let e = finish(
                    m,
                    code,
                    oom,
                    Bytes::new(),
                    stderr,
                    false,
                    cold,
                    startup,
                    run,
                );
                match e {
                    Err(e) => Err(e),
                    Ok(_) => Err(ExecError::Exit {
                        code: 0,
                        stderr: Bytes::from_static(
                            b"the stream-mode process exited without answering",
                        ),
                    }),
                }
            }
            Err(_) => {
                self.remove_later(inst.id);
                drop(permit);
                Err(ExecError::Timeout(m.timeout))
            }
        }
    }

    /// Stops stream-mode instances idle for longer than their function's keepalive.
    pub fn reap_idle(&self) -> usize {
        let mut stopped = Vec::new();
        for p in lock(&self.pools).values() {
            let mut idle = lock(&p.idle);
            let keep = p.keepalive;
            let (old, fresh): (Vec<Instance>, Vec<Instance>) = std::mem::take(&mut *idle)
                .into_iter()
                .partition(|i| i.idle_since.elapsed() > keep);
            *idle = fresh;
            stopped.extend(old.into_iter().map(|i| i.id));
        }
        let n = stopped.len();
        for id in stopped {
            self.remove_later(id);
        }
        n
    }
}

/// Removes a container, running or not, with its anonymous volumes.
/// Removes the function containers on `docker`'s engine started by workers of the Swarm
/// service `service` (node label `SERVICE-SLOT-TASKID`, [`fogline_core::scale::swarm_task`])
/// but those `keep(node, task)` keeps; with `owner`, only containers of that owner label.
/// A killed worker cannot remove its own: the bridge calls this for its engine, each worker
/// for its host's. Returns how many were removed.
pub async fn remove_swarm_leftovers(
    docker: &Docker,
    service: &str,
    owner: Option<&str>,
    keep: impl Fn(&str, &str) -> bool,
) -> Result<usize, bollard::errors::Error> {
    let mut labels = vec![LABEL_NODE.to_string()];
    labels.extend(owner.map(|o| format!("{LABEL_OWNER}={o}")));
    let list = docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([("label".to_string(), labels)])),
            ..Default::default()
        }))
        .await?;
    let mut n = 0;
    for c in list {
        let node = c
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_NODE))
            .map_or("", String::as_str);
        let Some(task) = fogline_core::scale::swarm_task(node, service) else {
            continue;
        };
        if keep(node, task) {
            continue;
        }
        if let Some(id) = c.id {
            if force_remove(docker, &id).await {
                n += 1;
            }
        }
    }
    Ok(n)
}

async fn force_remove(docker: &Docker, id: &str) -> bool {
    docker
        .remove_container(
            id,
            Some(RemoveContainerOptions {
                force: true,
                v: true,
                ..Default::default()
            }),
        )
        .await
        .is_ok()
}

/// The owner label of a node's containers: the first 16 hex digits of the SHA-256 of its
/// data folder's path, so two nodes on one host sharing an id keep apart.
pub fn owner_of(data_dir: &std::path::Path) -> String {
    let dir = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    let d = fogline_core::Digest::of(dir.to_string_lossy().as_bytes()).to_string();
    d.trim_start_matches("sha256:")
        .get(..16)
        .unwrap_or("0")
        .to_string()
}

/// Maps an exit to the call's result.
#[allow(clippy::too_many_arguments)]
fn finish(
    m: &FunctionManifest,
    code: i64,
    oom: bool,
    stdout: Bytes,
    stderr: Bytes,
    truncated: bool,
    cold: bool,
    startup: Duration,
    run: Duration,
) -> Result<Output, ExecError> {
    // 137 is SIGKILL: the node kills only on timeouts and floods (handled before this), so
    // a kill here is the kernel's out-of-memory killer even when the engine does not flag it.
    if oom || code == 137 {
        return Err(ExecError::OutOfMemory {
            limit: m.memory.to_string(),
            stderr,
        });
    }
    if code != 0 {
        return Err(ExecError::Exit {
            code: code as i32,
            stderr,
        });
    }
    Ok(Output {
        stdout,
        stderr,
        truncated,
        cold,
        startup,
        run,
    })
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[async_trait::async_trait]
impl super::Executor for ContainerExecutor {
    fn runtime(&self) -> fogline_core::Runtime {
        fogline_core::Runtime::Container
    }

    fn available(&self) -> bool {
        ContainerExecutor::available(self)
    }

    /// A member that does not run the function checks only that its engine has the image.
    async fn check(
        &self,
        manifest: &FunctionManifest,
        _module: Option<Bytes>,
    ) -> Result<(), ExecError> {
        match &manifest.image {
            Some(image) => self.check_image(image).await,
            None => Err(ExecError::Invalid(
                "a container function needs an image".into(),
            )),
        }
    }

    async fn warm_up(&self, manifest: &FunctionManifest) -> Result<(), ExecError> {
        super::Executor::prepare(self, manifest, None)
            .await
            .map(|_| ())
    }

    fn is_warm(&self, manifest: &FunctionManifest) -> bool {
        ContainerExecutor::is_warm(self, &manifest.name)
    }

    fn in_use(&self) -> u32 {
        ContainerExecutor::in_use(self)
    }

    async fn load_archive(&self, archive: Bytes) -> Result<Vec<String>, ExecError> {
        self.load_image(archive).await
    }

    async fn sweep(&self) -> Result<usize, ExecError> {
        ContainerExecutor::sweep(self).await
    }

    async fn stop(&self) {
        match ContainerExecutor::sweep(self).await {
            Ok(0) | Err(_) => {}
            Ok(n) => tracing::info!("removed {n} container(s) of this node"),
        }
    }

    async fn prepare(
        &self,
        manifest: &FunctionManifest,
        _module: Option<Bytes>,
    ) -> Result<Option<Duration>, ExecError> {
        let image = manifest
            .image
            .as_deref()
            .ok_or_else(|| ExecError::Invalid("a container function needs an image".into()))?;
        self.check_image(image).await?;
        if manifest.container.mode == ContainerMode::Stream {
            // Prepare ahead: one warm instance, so the first call is warm.
            let t = Instant::now();
            let pool = self.pool(manifest);
            if lock(&pool.idle).is_empty() {
                if let Ok(permit) = pool.slots.clone().try_acquire_owned() {
                    let inst = self.start_instance(manifest).await?;
                    lock(&pool.idle).push(inst);
                    drop(permit);
                    return Ok(Some(t.elapsed()));
                }
            }
        }
        Ok(None)
    }

    async fn invoke(
        &self,
        manifest: &FunctionManifest,
        call: Invocation,
        _load: &dyn super::ModuleSource,
    ) -> Result<Output, ExecError> {
        let down = lock(&self.down).clone();
        if let Some(why) = down {
            // Look again: the engine may be back.
            if self.ping().await.is_err() {
                return Err(unavailable(why));
            }
        }
        self.in_use.fetch_add(1, Ordering::Relaxed);
        let r = match manifest.container.mode {
            ContainerMode::Exec => self.run_exec(manifest, call.body).await,
            ContainerMode::Stream => self.run_stream(manifest, call.body).await,
        };
        self.in_use.fetch_sub(1, Ordering::Relaxed);
        r
    }

    async fn reclaim(&self, manifest: &FunctionManifest) {
        let pool = lock(&self.pools).remove(&manifest.name);
        if let Some(p) = pool {
            for i in std::mem::take(&mut *lock(&p.idle)) {
                self.remove_later(i.id);
            }
        }
    }

    /// No function uses the image any more: with `container.gc_images`, it goes (the
    /// engine keeps it while a container, even a stopped one, still uses it).
    async fn forget_code(&self, manifest: &FunctionManifest) {
        let (true, Some(image)) = (self.gc_images, &manifest.image) else {
            return;
        };
        // Its containers are being removed in the background: try again while they go.
        let (docker, image) = (self.docker.clone(), image.clone());
        tokio::spawn(async move {
            let mut last = None;
            for _ in 0..20 {
                let none = None::<bollard::query_parameters::RemoveImageOptions>;
                match docker.remove_image(&image, none, None).await {
                    Ok(_) => {
                        tracing::info!("removed image {image}: no function uses it");
                        return;
                    }
                    Err(e) => last = Some(e),
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            if let Some(e) = last {
                tracing::warn!("not removing image {image}: {e}");
            }
        });
    }
}
