//! The bridge's workers as a Docker Swarm service.
//!
//! With `--swarm` (or `[swarm] enabled`) on an engine that is a Swarm manager, the bridge
//! runs no functions itself: it creates (or adopts) the service `[swarm] service`, whose
//! tasks each enroll with a join token the bridge minted (a Swarm secret, never in the
//! environment or the image) and join the bridge's mesh as cloud-tier members. Calls the
//! bridge takes are placed on those workers by the same planner as anywhere else
//! (`fogline_router::Router` with a [`Scope`](fogline_router::Scope)); a call that finds no
//! worker waits for one (bounded by its timeout) while the autoscaler starts it.
//!
//! The autoscaler ticks every [`TICK`]: calls in flight at workers, calls waiting, the
//! forecast arrival rate at the time a new worker would be ready (that time learnt from
//! its own scale-ups), and the workers' service time go into `fogline_core::scale`, which
//! says how many replicas and why. Each change is logged with its reason and counted in
//! `/metrics` (`fogline_swarm_replicas`, `fogline_swarm_scale_events_total`).
//!
//! Without a Swarm the bridge says so in one line and runs its functions itself.

pub mod image;
pub mod service;

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bollard::Docker;
use fogline_core::access::Grant;
use fogline_core::config::{NodeConfig, RouterSection, SwarmSection, Tier};
use fogline_core::enroll::JoinGrant;
use fogline_core::roles::Role;
use fogline_core::scale::{Observed, Reason, Scaler};
use fogline_node::Node;
use fogline_router::{Hosts, Router, Scope};

/// How often the autoscaler looks.
pub const TICK: Duration = Duration::from_millis(250);
/// What a worker's start is taken to need before one has been measured.
const FIRST_LEAD_MS: u64 = 3_000;
/// How long the workers' join token is valid (each task uses it once, to enroll).
const TOKEN_LIFE_S: u64 = 365 * 86_400;

/// Whether the bridge can run its workers on Swarm.
pub enum Probe {
    /// The engine is a Swarm manager.
    Swarm(Docker),
    /// It is not (or cannot be reached): why, in one line.
    Local(String),
}

impl std::fmt::Debug for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Probe::Swarm(_) => f.write_str("Swarm"),
            Probe::Local(why) => write!(f, "Local({why})"),
        }
    }
}

/// Connects to the engine (`DOCKER_HOST`, else the local socket) and asks whether it is a
/// Swarm manager.
pub async fn probe() -> Probe {
    let docker = match Docker::connect_with_local_defaults() {
        Ok(d) => d,
        Err(e) => return Probe::Local(format!("no Docker engine: {e}")),
    };
    match service::manager(&docker).await {
        Ok(None) => Probe::Swarm(docker),
        Ok(Some(why)) => Probe::Local(why),
        Err(e) => Probe::Local(format!("{e:#}")),
    }
}

/// Makes a bridge's config one that places on workers instead of running functions: a
/// router section (no device mode), and enrollment, which workers need to join.
pub fn prepare(cfg: &mut NodeConfig) -> anyhow::Result<()> {
    if cfg.enroll.is_none() {
        bail!(
            "--swarm: workers enroll with a join token this bridge mints, so it needs [enroll] (listen, ca_dir: the cluster CA)"
        );
    }
    if cfg.mesh.listen.is_none() {
        bail!("--swarm: workers join this bridge's mesh, so it needs mesh.listen");
    }
    let r = cfg.router.get_or_insert_with(RouterSection::default);
    r.device = false;
    Ok(())
}

/// The scope the bridge's router places in: its own service's workers.
pub fn scope(cfg: &SwarmSection) -> Scope {
    Scope {
        tier: Tier::Cloud,
        service: cfg.service.clone(),
        wait_for_place: true,
        pack_to: Some(cfg.target_inflight),
        hosts: Arc::default(),
    }
}

/// The running autoscaler and what it last saw.
pub struct Workers {
    docker: Docker,
    cfg: SwarmSection,
    desired: AtomicU32,
    running: AtomicU32,
    waiting: AtomicU32,
    /// Scale events by reason, in `Reason::ALL` order.
    events: [AtomicU64; 5],
    /// Learnt time from a scale-up to its workers running, ms.
    lead_ms: AtomicU64,
    /// The machine (Swarm node) of each task, by task id: what placement packs by.
    hosts: Hosts,
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers")
            .field("service", &self.cfg.service)
            .field("desired", &self.desired.load(Ordering::Relaxed))
            .field("running", &self.running.load(Ordering::Relaxed))
            .finish()
    }
}

impl Workers {
    /// Prometheus text: replicas desired and running, calls waiting, scale events.
    pub fn metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        let _ = writeln!(
            out,
            "# HELP fogline_swarm_replicas Workers of the Swarm service: desired (the autoscaler's) and running (as Swarm reports).\n# TYPE fogline_swarm_replicas gauge\nfogline_swarm_replicas{{state=\"desired\"}} {}\nfogline_swarm_replicas{{state=\"running\"}} {}",
            self.desired.load(Ordering::Relaxed),
            self.running.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP fogline_swarm_waiting Calls waiting for a first worker.\n# TYPE fogline_swarm_waiting gauge\nfogline_swarm_waiting {}",
            self.waiting.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP fogline_swarm_start_seconds Learnt time from scaling up to the new workers running.\n# TYPE fogline_swarm_start_seconds gauge\nfogline_swarm_start_seconds {:.3}",
            self.lead_ms.load(Ordering::Relaxed) as f64 / 1e3
        );
        let _ = writeln!(
            out,
            "# HELP fogline_swarm_scale_events_total Changes of the replicas, by reason.\n# TYPE fogline_swarm_scale_events_total counter"
        );
        for (r, n) in Reason::ALL.iter().zip(&self.events) {
            let _ = writeln!(
                out,
                "fogline_swarm_scale_events_total{{reason=\"{}\"}} {}",
                r.as_str(),
                n.load(Ordering::Relaxed)
            );
        }
    }
}

/// Starts the workers' service for `node` (a bridge whose router is `router`, placing in
/// `scope`): creates or adopts it once enrollment is up, then sizes it every [`TICK`]
/// until the bridge stops.
pub fn start(
    node: &Arc<Node>,
    router: &Arc<Router>,
    scope: &Scope,
    docker: Docker,
    cfg: SwarmSection,
) {
    let workers = Arc::new(Workers {
        hosts: scope.hosts.clone(),
        docker,
        desired: AtomicU32::new(0),
        running: AtomicU32::new(0),
        waiting: AtomicU32::new(0),
        events: Default::default(),
        lead_ms: AtomicU64::new(FIRST_LEAD_MS),
        cfg,
    });
    let shown = workers.clone();
    router.set_extra_metrics(Box::new(move |out| shown.metrics(out)));
    let node = Arc::downgrade(node);
    let router = Arc::downgrade(router);
    tokio::spawn(async move {
        if let Err(e) = run(&workers, node, router).await {
            tracing::error!(service = %workers.cfg.service, "swarm: {e:#}; this bridge places no calls on workers");
        }
    });
}

async fn run(
    w: &Arc<Workers>,
    node: std::sync::Weak<Node>,
    router: std::sync::Weak<Router>,
) -> anyhow::Result<()> {
    // Enrollment starts with the triggers; the token names its address.
    let t0 = Instant::now();
    let issuer = loop {
        let Some(n) = node.upgrade() else {
            return Ok(());
        };
        if let Some(i) = n.links.issuer.get() {
            break (i.addr.clone(), n);
        }
        if t0.elapsed() > Duration::from_secs(30) {
            bail!("enrollment did not start within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (enroll, n) = issuer;
    let desired = ensure(w, &n, &enroll).await?;
    drop(n);
    w.desired.store(desired, Ordering::Relaxed);
    let mut scaler = Scaler::new(
        w.cfg.min_replicas,
        w.cfg.max_replicas,
        w.cfg.target_inflight,
        w.cfg.idle.as_millis() as u64,
    );
    let started = Instant::now();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The last scale-up not yet running: (replicas, when).
    let mut pending_up: Option<(u32, Instant)> = None;
    let mut service_ms: Option<f64> = None;
    let mut n_tick = 0u64;
    loop {
        // A call starting to wait for a worker is acted on at once, not at the next tick
        // (that wait is most of scaling from zero); the engine is asked about its tasks on
        // ticks only.
        let woken = {
            let Some(r) = router.upgrade() else {
                return Ok(());
            };
            tokio::select! {
                _ = tick.tick() => false,
                _ = r.place_wanted() => true,
            }
        };
        let (Some(node), Some(router)) = (node.upgrade(), router.upgrade()) else {
            return Ok(());
        };
        if !woken {
            n_tick += 1;
            housekeeping(w, n_tick, &mut pending_up).await;
        }
        if let Some(s) = worker_service_ms(&node, &w.cfg.service) {
            service_ms = Some(s);
        }
        let lead = w.lead_ms.load(Ordering::Relaxed);
        let observed = Observed {
            in_flight: f64::from(router.in_flight()),
            waiting: router.waiting(),
            forecast_per_s: if w.cfg.forecast {
                router.forecast_per_s(lead)
            } else {
                0.0
            },
            rate_per_s: router.forecast_per_s(0),
            service_ms,
        };
        w.waiting.store(observed.waiting, Ordering::Relaxed);
        let current = w.desired.load(Ordering::Relaxed);
        let now_ms = started.elapsed().as_millis() as u64;
        let Some(change) = scaler.decide(now_ms, current, &observed) else {
            continue;
        };
        if let Err(e) = service::scale(&w.docker, &w.cfg.service, change.replicas).await {
            tracing::warn!("swarm: {e:#}");
            continue;
        }
        w.desired.store(change.replicas, Ordering::Relaxed);
        if let Some(i) = Reason::ALL.iter().position(|r| *r == change.reason) {
            w.events[i].fetch_add(1, Ordering::Relaxed);
        }
        if change.replicas > current {
            pending_up = Some((change.replicas, Instant::now()));
        }
        tracing::info!(
            service = %w.cfg.service,
            "swarm: {current} → {} replicas ({}: {:.0} in flight, {} waiting, forecast {:.1}/s in {} ms × {:.0} ms service, {} per replica)",
            change.replicas,
            change.reason.as_str(),
            observed.in_flight,
            observed.waiting,
            observed.forecast_per_s,
            lead,
            service_ms.unwrap_or(0.0),
            w.cfg.target_inflight
        );
    }
}

/// What a tick asks the engine: tasks running (and how long the last scale-up took),
/// now and then the replicas someone else set and function containers left behind.
async fn housekeeping(w: &Workers, n_tick: u64, pending_up: &mut Option<(u32, Instant)>) {
    // The ids of the tasks Swarm means to run, when the engine answered.
    let live = match service::tasks(&w.docker, &w.cfg.service).await {
        Ok(tasks) => {
            w.running
                .store(service::running_of(&tasks), Ordering::Relaxed);
            let live: Vec<String> = tasks.iter().filter_map(|t| t.id.clone()).collect();
            let hosts = tasks
                .into_iter()
                .filter_map(|t| Some((t.id?, t.node_id?)))
                .collect();
            *w.hosts.write().unwrap_or_else(|p| p.into_inner()) = hosts;
            Some(live)
        }
        Err(e) => {
            tracing::warn!("swarm: {e:#}");
            None
        }
    };
    // Someone else (an admin, `docker service scale`) may have changed the replicas.
    if n_tick.is_multiple_of(8) {
        if let Some(live) = &live {
            match service::sweep_functions(&w.docker, &w.cfg.service, live).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    service = %w.cfg.service,
                    "swarm: removed {n} function container(s) left by workers Swarm no longer runs"
                ),
                Err(e) => tracing::warn!("swarm: {e:#}"),
            }
        }
        match service::find(&w.docker, &w.cfg.service).await {
            Ok(Some(s)) => w.desired.store(service::replicas(&s), Ordering::Relaxed),
            Ok(None) => {
                tracing::error!(service = %w.cfg.service, "swarm: the service is gone (removed outside the bridge); restart the bridge to create it again")
            }
            Err(e) => tracing::warn!("swarm: {e:#}"),
        }
    }
    let running = w.running.load(Ordering::Relaxed);
    if let Some((want, at)) = *pending_up {
        if running >= want {
            let took = at.elapsed().as_millis() as u64;
            let old = w.lead_ms.load(Ordering::Relaxed);
            w.lead_ms.store((old + took) / 2, Ordering::Relaxed);
            *pending_up = None;
        }
    }
}

/// Creates the service, or adopts the one this bridge made before (rotating its join
/// token if enrollment moved); returns its replicas.
async fn ensure(w: &Workers, node: &Node, enroll: &str) -> anyhow::Result<u32> {
    let name = &w.cfg.service;
    let owner = node.id.as_str();
    let existing = service::find(&w.docker, name).await?;
    if let Some(s) = &existing {
        match service::label(s, service::OWNER) {
            None => bail!(
                "a Swarm service named {name} exists and is not a Fogline bridge's; set another [swarm] service"
            ),
            Some(o) if o != owner => bail!(
                "the Swarm service {name} belongs to bridge {o:?}, not {owner:?}; set another [swarm] service"
            ),
            Some(_) => {}
        }
        let replicas = service::replicas(s);
        if service::label(s, service::ENROLL) == Some(enroll) {
            tracing::info!(
                "swarm: adopted the service {name} ({replicas} replicas, image {})",
                s.spec
                    .as_ref()
                    .and_then(|s| s.task_template.as_ref())
                    .and_then(|t| t.container_spec.as_ref())
                    .and_then(|c| c.image.as_deref())
                    .unwrap_or("?")
            );
            sweep_secrets(w, owner, current_secret(s).as_deref()).await;
            return Ok(replicas);
        }
        // Enrollment moved (another port): new workers need a token naming it.
        let (sid, spec) = with_new_token(w, node, enroll, replicas).await?;
        service::update(&w.docker, name, |current| {
            // Keep the image an upgrade chose; take the new token and its address.
            let image = current
                .task_template
                .as_ref()
                .and_then(|t| t.container_spec.as_ref())
                .and_then(|c| c.image.clone());
            *current = spec.clone();
            if let (Some(image), Some(c)) = (
                image,
                current
                    .task_template
                    .as_mut()
                    .and_then(|t| t.container_spec.as_mut()),
            ) {
                c.image = Some(image);
            }
        })
        .await?;
        tracing::info!("swarm: adopted the service {name} ({replicas} replicas) with a new join token naming {enroll}");
        sweep_secrets(w, owner, Some(&sid)).await;
        return Ok(replicas);
    }
    let replicas = w.cfg.min_replicas;
    let (sid, spec) = with_new_token(w, node, enroll, replicas).await?;
    w.docker
        .create_service(spec, None)
        .await
        .with_context(|| format!("cannot create the Swarm service {name}"))?;
    tracing::info!(
        "swarm: created the service {name} (image {}, {replicas} replicas, {}..={} by demand)",
        w.cfg.image,
        w.cfg.min_replicas,
        w.cfg.max_replicas
    );
    sweep_secrets(w, owner, Some(&sid)).await;
    Ok(replicas)
}

/// The service's spec with a join token just minted and stored as a new secret (its id).
async fn with_new_token(
    w: &Workers,
    node: &Node,
    enroll: &str,
    replicas: u32,
) -> anyhow::Result<(String, bollard::models::ServiceSpec)> {
    let token = mint(node, &w.cfg.service)?;
    let (sid, sname) = service::new_secret(&w.docker, &w.cfg.service, &node.id, &token).await?;
    let spec = service::spec(
        &service::WorkerSpec {
            cfg: &w.cfg,
            owner: &node.id,
            enroll,
            secret_id: &sid,
            secret_name: &sname,
        },
        replicas,
    );
    Ok((sid, spec))
}

/// The id of the join-token secret the service's tasks get.
fn current_secret(s: &bollard::models::Service) -> Option<String> {
    s.spec
        .as_ref()?
        .task_template
        .as_ref()?
        .container_spec
        .as_ref()?
        .secrets
        .as_ref()?
        .first()?
        .secret_id
        .clone()
}

/// Removes join-token secrets of earlier runs that no task uses any more.
async fn sweep_secrets(w: &Workers, owner: &str, keep: Option<&str>) {
    if let Ok(stale) = service::stale_secrets(&w.docker, &w.cfg.service, owner, keep).await {
        for id in stale {
            // One still mounted by a running task is refused; it goes next time.
            let _ = w.docker.delete_secret(&id).await;
        }
    }
}

/// A join token for the service's tasks: role node (a worker may not deploy to others),
/// this bridge's site, many uses (one per task started), a year.
fn mint(node: &Node, service: &str) -> anyhow::Result<String> {
    let issuer = node
        .links
        .issuer
        .get()
        .context("enrollment is not running")?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let grant = Grant::Join(JoinGrant {
        role: Role::Node,
        site: Some(node.config.mesh.site.clone()).filter(|s| !s.is_empty()),
        expires_at: now + TOKEN_LIFE_S,
        uses_left: 1_000_000,
    });
    let (_, token) = node
        .access
        .mint(grant, Some(format!("Swarm workers of {service}")))
        .map_err(|e| anyhow::anyhow!("cannot mint the workers' join token: {e}"))?;
    Ok(fogline_core::enroll::JoinToken {
        addr: issuer.addr.clone(),
        ca: issuer.ca_fingerprint.clone(),
        token,
    }
    .encode())
}

/// The mean service time the service's workers report, ms.
fn worker_service_ms(node: &Node, service: &str) -> Option<f64> {
    let prefix = format!("{service}-");
    let mesh = node.links.mesh.get()?;
    mesh.with_view(|v| {
        let (mut sum, mut n) = (0.0, 0u32);
        for m in v.members() {
            if m.state == fogline_core::mesh::State::Alive && m.report.node.starts_with(&prefix) {
                for (_, ms) in &m.report.service_ms {
                    sum += f64::from(*ms);
                    n += 1;
                }
            }
        }
        (n > 0).then(|| sum / f64::from(n))
    })
}
