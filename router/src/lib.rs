//! The router: for every invocation, a prediction for each place that could run it (this
//! device, each live edge node, the cloud), the fastest chosen, the call forwarded over
//! QUIC, and the outcome learnt. The models, the policy and the cluster view are the pure
//! code in `fogline-core`, shared with the simulator; this crate drives them with real
//! sockets and clocks.
//!
//! A router is a node agent (same store, same triggers: HTTP, QUIC, MQTT, CoAP) with a
//! [`Dispatch`] installed, so every ingress and the async queue are placed the same way.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use fogline_core::attempts::{Attempts, Bench, GiveUp, Next, Outcome, RetryBudget};
use fogline_core::candidates::{facts, listed, Mine, PeerCandidate, Wants};
use fogline_core::config::{RouterSection, Tier};
use fogline_core::forecast::Arrivals;
use fogline_core::mesh::State;
use fogline_core::placement::{Own, PlaceInfo, Plan};
use fogline_core::policies::{Call, Policy};
use fogline_core::policy::Weights;
use fogline_core::predict::Source;
use fogline_core::FunctionManifest;
use fogline_node::dispatch::{BoxFut, Dispatch, Placed, Refused};
use fogline_node::quic::QuicError;
use fogline_node::Node;
use serde::Serialize;

pub mod watch;

/// Shards of the policy's state, by function (each shard learns its own priors from its
/// functions).
const POLICY_SHARDS: usize = 8;

/// Arrivals the autoscaler's trend needs in its window before it forecasts anything.
pub const MIN_TREND_ARRIVALS: u32 = 8;
/// How often models are refitted and the membership reconciled.
const HOUSEKEEPING: Duration = Duration::from_millis(50);
/// How often arrival rates are forecast (and places prepared ahead).
const FORECAST_EVERY: Duration = Duration::from_millis(500);
/// A place is asked to prepare a function at most this often.
const PREPARE_AGAIN: Duration = Duration::from_secs(30);

/// One place a call could run, as known at decision time.
#[derive(Debug, Clone)]
struct Place {
    id: String,
    /// The planner's key of `id` (`place_key`), hashed once as the place is listed.
    key: u64,
    tier: Tier,
    /// `None`: this router itself (device mode).
    addr: Option<SocketAddr>,
    /// A peer cluster, reached through the bridge at `addr` (which must be `bridge`).
    via: Option<(String, String)>,
    rtt_ms: f64,
    load_per_core: f64,
    cores: u32,
    /// Advertised speed, when the member advertises one.
    speed: Option<f64>,
    warm: bool,
    service_ms: Option<f64>,
    /// This router's calls in flight there when the places were listed.
    own: Own,
}

impl Place {
    /// A member (or a peer cluster, `via` its bridge) at `addr`, with its facts.
    fn remote(
        id: &str,
        addr: SocketAddr,
        x: fogline_core::candidates::Facts,
        via: Option<(String, String)>,
    ) -> Place {
        Place {
            id: id.to_string(),
            key: fogline_core::placement::place_key(id),
            tier: x.tier,
            addr: Some(addr),
            rtt_ms: x.rtt_ms,
            load_per_core: x.load_per_core,
            cores: x.cores,
            speed: x.speed,
            warm: x.warm,
            service_ms: x.service_ms,
            own: x.own,
            via,
        }
    }

    /// What the policy reads of it.
    fn info(&self) -> PlaceInfo<'_> {
        PlaceInfo {
            id: &self.id,
            key: self.key,
            tier: self.tier,
            rtt_ms: self.rtt_ms,
            load_per_core: self.load_per_core,
            cores: self.cores,
            speed: self.speed,
            warm: self.warm,
            service_ms: self.service_ms,
            truth_ms: None,
            own: self.own,
        }
    }
}

/// One candidate in a recorded decision.
#[derive(Debug, Clone, Serialize)]
pub struct CandidateRecord {
    pub place: String,
    pub tier: Tier,
    pub predicted_ms: f64,
    /// `model` (fitted from observations) or `analytic` (estimate).
    pub source: &'static str,
    pub observations: usize,
}

/// One placement decision and its outcome, for `GET /v1/placements`.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    /// Seconds since the Unix epoch.
    pub at: f64,
    pub function: String,
    /// The call's trace (`fogline trace ID`), when it is recorded.
    pub trace: Option<fogline_core::trace::TraceId>,
    pub candidates: Vec<CandidateRecord>,
    pub chosen: String,
    pub explored: bool,
    /// The function's size was a typical function's: it had run nowhere this router
    /// knew of, and no member had reported its service time (its first call anywhere).
    pub guessed: bool,
    pub predicted_ms: f64,
    /// Where it finally ran (differs from `chosen` after a retry), and how long it took.
    pub ran_on: Option<String>,
    pub actual_ms: Option<f64>,
    pub status: u16,
    pub attempts: u32,
    /// It had to load the function first.
    pub cold: bool,
    pub error: Option<String>,
}

/// Which members a router places on, when not every member of the mesh: a bridge
/// placing on its own Swarm workers only.
#[derive(Debug, Clone)]
pub struct Scope {
    pub tier: Tier,
    /// The Swarm service whose tasks it places on: members named `SERVICE-SLOT-TASKID`.
    pub service: String,
    /// With no place able to run a call, wait for one (up to the call's timeout) instead
    /// of refusing it: workers are being started.
    pub wait_for_place: bool,
    /// Fill one machine to this many calls in flight per replica before the next takes
    /// any (`fogline_core::scale::pack`); beyond it on all, the policy chooses.
    pub pack_to: Option<u32>,
    /// The machine each worker runs on, by its Swarm task id, as the bridge last heard
    /// from the engine.
    pub hosts: Hosts,
}

/// Swarm task id → the Swarm node (machine) that runs it.
pub type Hosts = Arc<std::sync::RwLock<HashMap<String, String>>>;

impl Scope {
    /// Whether `member` is one of the service's tasks by its name (`SERVICE-SLOT-TASKID`:
    /// not a task of another service whose name starts with this one's).
    fn holds(&self, member: &str) -> bool {
        fogline_core::scale::swarm_task(member, &self.service).is_some()
    }
}

/// Extra Prometheus text appended to the router's (a bridge's Swarm figures).
pub type ExtraMetrics = Box<dyn Fn(&mut String) + Send + Sync>;

/// The placement driver.
pub struct Router {
    cfg: RouterSection,
    scope: Option<Scope>,
    /// Calls waiting for a place to appear (only with a scope that waits).
    waiting: AtomicU64,
    /// Woken when a call starts waiting for a place (the bridge's autoscaler acts at once).
    wanted: tokio::sync::Notify,
    extra_metrics: std::sync::OnceLock<ExtraMetrics>,
    node: Weak<Node>,
    /// The placement policy (`[router] policy`) and what it learnt, in shards by function:
    /// decisions for different functions do not wait on one lock.
    planner: Vec<Mutex<Box<dyn Policy>>>,
    arrivals: Mutex<HashMap<String, Arrivals>>,
    /// Arrivals of all functions together, in finer buckets over a shorter window than
    /// per function: the autoscaler's trend, which must turn with a burst within seconds.
    /// Kept by scoped routers only (no extra lock on every call elsewhere).
    all_arrivals: Mutex<Arrivals>,
    /// Calls this router has running at each place now (with gossiped load, a fresher
    /// one).
    outstanding: Mutex<HashMap<String, Mine>>,
    /// Places that failed recently (ms on this router's clock).
    down: Mutex<Bench>,
    /// Its allowance for hedging calls that run long (core's retry throttling), and how
    /// many attempts waited out their call's budget because it was spent.
    retry_budget: Mutex<RetryBudget>,
    held: AtomicU64,
    prepared: Mutex<HashMap<(String, String), Instant>>,
    log: Mutex<VecDeque<Decision>>,
    watch: watch::Watch,
    /// The seed and the draw counter of this router's rolls (core's generator).
    seed: u64,
    rng: AtomicU64,
    started: Instant,
    /// Peer clusters are places (not for a router placing a peer's calls).
    peers: bool,
}

impl Router {
    /// Installs a router on `node` and starts its housekeeping; returns it.
    pub fn install(node: &Arc<Node>, cfg: RouterSection) -> Arc<Router> {
        Self::install_scoped(node, cfg, None)
    }

    /// Installs a router that places only within `scope` (all members when none).
    pub fn install_scoped(
        node: &Arc<Node>,
        cfg: RouterSection,
        scope: Option<Scope>,
    ) -> Arc<Router> {
        let r = Self::new(node, cfg, scope, true);
        let _ = node.links.dispatch.set(r.clone());
        r
    }

    /// A router that is not the node's dispatch: a bridge places the calls a peer cluster
    /// sent it with it, on this cluster's members (never on to other peer clusters).
    pub fn for_peer_calls(node: &Arc<Node>, cfg: RouterSection) -> Arc<Router> {
        Self::new(node, cfg, None, false)
    }

    fn new(node: &Arc<Node>, cfg: RouterSection, scope: Option<Scope>, peers: bool) -> Arc<Router> {
        let seed = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0x5EED, |d| d.as_nanos() as u64)
            | 1;
        let r = Arc::new(Router {
            planner: (0..POLICY_SHARDS)
                .map(|_| Mutex::new(cfg.policy_kind().build(cfg.window)))
                .collect(),
            cfg,
            scope,
            waiting: AtomicU64::new(0),
            wanted: tokio::sync::Notify::new(),
            extra_metrics: std::sync::OnceLock::new(),
            node: Arc::downgrade(node),
            arrivals: Mutex::new(HashMap::new()),
            all_arrivals: Mutex::new(Arrivals::new(500, 8)),
            outstanding: Mutex::new(HashMap::new()),
            down: Mutex::new(Bench::default()),
            retry_budget: Mutex::new(RetryBudget::full()),
            held: AtomicU64::new(0),
            prepared: Mutex::new(HashMap::new()),
            log: Mutex::new(VecDeque::new()),
            watch: watch::Watch::new(),
            seed,
            rng: AtomicU64::new(0),
            started: Instant::now(),
            peers,
        });
        tokio::spawn(housekeeping(Arc::downgrade(&r)));
        if r.cfg.prepare_ahead {
            tokio::spawn(forecasting(Arc::downgrade(&r)));
        }
        r
    }

    /// A uniform number in [0, 1), from core's generator.
    fn roll(&self) -> f64 {
        let n = self.rng.fetch_add(1, Ordering::Relaxed);
        fogline_core::sim::rng::unit(&[self.seed, n])
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Every place that could run `f` now.
    fn places(&self, node: &Node, f: &FunctionManifest) -> Vec<Place> {
        let mut out = Vec::new();
        let now = self.now_ms() as f64;
        // Both held for this short, synchronous look (the view's lock is taken inside).
        let down = lock(&self.down);
        let mut outstanding = lock(&self.outstanding);
        let wants = Wants {
            function: f.name.as_str(),
            key: fogline_core::placement::place_key(&f.name),
            runtime: f.runtime,
            tier: f.placement.tier,
        };
        if let Some(mesh) = node.links.mesh.get() {
            // One look at the view (locked and aged once) for members and peer clusters.
            let ns = fogline_core::access::split(&f.name).1;
            mesh.with_view_at(|view, at, fresh| {
                for m in view.members() {
                    let r = &m.report;
                    if r.node == node.id
                        || self
                            .scope
                            .as_ref()
                            .is_some_and(|s| r.tier != s.tier || !s.holds(&r.node))
                        || !listed(m, &wants, &down, now)
                    {
                        continue;
                    }
                    let Some(addr) = r.quic.as_deref().and_then(|a| a.parse().ok()) else {
                        continue;
                    };
                    let mine = mine_at(&mut outstanding, &r.node);
                    let x = facts(m, &wants, mine, m.rtt_ms);
                    out.push(Place::remote(&r.node, addr, x, None));
                }
                // Peer clusters the cluster's bridges offer, for the namespaces offloaded
                // there.
                if self.scope.is_none() && self.peers {
                    for (bridge, place) in view.peer_places(at, fresh) {
                        let c = PeerCandidate { bridge, place };
                        if !c.takes(ns) || !listed(&c, &wants, &down, now) {
                            continue;
                        }
                        let r = &bridge.report;
                        let Some(addr) = r.quic.as_deref().and_then(|a| a.parse().ok()) else {
                            continue;
                        };
                        let mine = mine_at(&mut outstanding, &place.name);
                        let x = facts(&c, &wants, mine, Some(c.rtt_ms(bridge.rtt_ms)));
                        let via = Some((place.name.clone(), r.node.clone()));
                        out.push(Place::remote(&place.name, addr, x, via));
                    }
                }
                prune(&mut outstanding, view, at, fresh, &node.id);
            });
        }
        if node.can_run(f.runtime)
            && self.scope.is_none()
            && f.placement.tier.is_none_or(|t| t == node.config.node.tier)
        {
            let g = node.gauges();
            let service = node.metrics.function(&f.name).service_ms().map(f64::from);
            let own = mine_at(&mut outstanding, &node.id).own;
            out.push(Place {
                id: node.id.clone(),
                key: fogline_core::placement::place_key(&node.id),
                tier: node.config.node.tier,
                addr: None,
                rtt_ms: 0.0,
                load_per_core: f64::from(g.instances_in_use.max(own.calls))
                    / f64::from(node.machine.cores.max(1)),
                cores: node.machine.cores.max(1),
                speed: Some(f64::from(node.machine.speed)),
                warm: service.is_some(),
                service_ms: service,
                own,
                via: None,
            });
        }
        out
    }

    fn record(&self, d: Decision) {
        self.watch.record(&d);
        let mut log = lock(&self.log);
        if log.len() >= self.cfg.placements_kept.max(1) {
            log.pop_back();
        }
        log.push_front(d);
    }

    async fn place(&self, node: &Node, function: &str, body: Bytes) -> Result<Placed, Refused> {
        let Some(deployed) = node.lookup(function) else {
            return Err(Refused::new(
                404,
                format!("function {function:?} not found on this router; deploy it here first"),
            ));
        };
        let f = &deployed.manifest;
        let now = self.now_ms();
        lock(&self.arrivals)
            .entry(function.to_string())
            .or_insert_with(|| Arrivals::new(1000, 10))
            .record(now);
        if self.scope.is_some() {
            // Only a scoped router (a bridge's, sizing its workers) forecasts the total.
            lock(&self.all_arrivals).record(now);
        }
        let mut places = self.places(node, f);
        if places.is_empty() && self.scope.as_ref().is_some_and(|s| s.wait_for_place) {
            places = self.wait_for_place(node, f).await;
        }
        // An async call handed to a member before, its answer lost, goes back there (it
        // keeps the answer, or is still running the call). That member not a place yet but
        // maybe about to be (this router just restarted, or its reports are late): the call
        // waits for it rather than running a second time elsewhere.
        let prefer = fogline_node::agent::keyed::preferred();
        if let Some(m) = &prefer {
            let listed = places.iter().any(|p| p.id == *m && p.addr.is_some());
            if !listed
                && node
                    .links
                    .mesh
                    .get()
                    .is_some_and(|mesh| mesh.may_yet_hear(m))
            {
                return Err(Refused::unplaced(format!(
                    "waiting to hear from {m}, where an earlier attempt of this call went (it may hold the answer)"
                )));
            }
        }
        if places.is_empty() {
            if let Some(scope) = &self.scope {
                return Err(Refused::unplaced(format!(
                    "no {} member {}-* can run {function:?}{}",
                    scope.tier.as_str(),
                    scope.service,
                    if scope.wait_for_place {
                        format!(
                            " after waiting its timeout ({} ms) for one to start",
                            f.timeout.as_millis()
                        )
                    } else {
                        String::new()
                    }
                )));
            }
            if let Some(tier) = f.placement.tier {
                return Err(Refused::unplaced(pinned_message(node, function, tier)));
            }
            return Err(Refused::unplaced(no_place_message(node, function)));
        }
        let weights = Weights {
            cloud_cost_ms: f64::from(f.placement.cloud_cost_ms),
            device_energy_ms: f64::from(f.placement.device_energy_ms),
            explore: self.cfg.explore,
        };
        let call = Call {
            function,
            request_kb: body.len() as f64 / 1024.0,
            deadline_ms: f.placement.deadline.map(|d| d.as_secs_f64() * 1e3),
            weights,
            now_ms: now as f64,
        };
        let infos: Vec<PlaceInfo<'_>> = places.iter().map(Place::info).collect();
        let roll = self.roll();
        let mut placing = fogline_node::traces::span("placement");
        let mut plan = self
            .policy(function)
            .plan(&call, &infos, roll)
            .ok_or_else(|| Refused::unplaced(no_place_message(node, function)))?;
        if let Some((target, scope)) = self.scope.as_ref().and_then(|s| s.pack_to.map(|t| (t, s))) {
            let hosts = scope.hosts.read().unwrap_or_else(|p| p.into_inner());
            let slots: Vec<fogline_core::scale::Slot<'_>> = places
                .iter()
                .map(|p| fogline_core::scale::Slot {
                    name: &p.id,
                    host: fogline_core::scale::swarm_task(&p.id, &scope.service)
                        .and_then(|task| hosts.get(task))
                        .map_or(&p.id, String::as_str),
                    in_flight: p.own.calls,
                })
                .collect();
            if let Some(i) = fogline_core::scale::pack(&slots, target) {
                plan.chosen = i;
                plan.explored = false;
            }
        }
        // An async call handed to a member before, its answer lost: that member keeps the
        // answer (or is still running it), so it goes there while it is a place.
        if let Some(i) =
            prefer.and_then(|m| places.iter().position(|p| p.id == m && p.addr.is_some()))
        {
            plan.chosen = i;
            plan.explored = false;
        }
        if plan.load_device {
            // The function loads here off the call's path; the call goes elsewhere.
            if let Some(node) = self.node.upgrade() {
                let name = function.to_string();
                tokio::spawn(async move {
                    if let Err(e) = node.warm_up(&name).await {
                        tracing::debug!(function = %name, "loading it here failed: {e}");
                    }
                });
            }
        }
        if placing.recording() {
            placing.attr("chosen", &places[plan.chosen].id);
            placing.attr_static("explored", if plan.explored { "true" } else { "false" });
            placing.attr(
                "candidates",
                Candidates {
                    places: &places,
                    scored: &plan.scored,
                },
            );
        }
        drop(placing);
        let mut decision = Decision {
            at: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            function: function.to_string(),
            trace: fogline_node::traces::current_trace(),
            candidates: places
                .iter()
                .zip(&plan.scored)
                .map(|(p, s)| CandidateRecord {
                    place: p.id.clone(),
                    tier: p.tier,
                    predicted_ms: s.predicted_ms,
                    source: match s.source {
                        Source::Model => "model",
                        Source::Analytic => "analytic",
                        Source::Score => "score",
                    },
                    observations: s.observations,
                })
                .collect(),
            chosen: places[plan.chosen].id.clone(),
            explored: plan.explored,
            guessed: plan.guessed,
            predicted_ms: plan.scored[plan.chosen].predicted_ms,
            ran_on: None,
            actual_ms: None,
            status: 0,
            attempts: 0,
            cold: false,
            error: None,
        };
        let result = self
            .attempts(node, f, &body, &places, &plan, &call, &mut decision)
            .await;
        match &result {
            Ok(p) => {
                decision.status = 200;
                decision.ran_on = Some(p.node.clone());
                decision.actual_ms = Some(p.took_ms);
                decision.cold = p.cold;
            }
            Err(e) => {
                decision.status = e.status;
                decision.error = Some(e.message.clone());
            }
        }
        self.record(decision);
        result
    }

    /// Runs the call at the chosen place, then wherever core's state machine says next
    /// (`fogline_core::attempts`): the same rules the simulator runs.
    #[allow(clippy::too_many_arguments)]
    async fn attempts(
        &self,
        node: &Node,
        f: &FunctionManifest,
        body: &Bytes,
        places: &[Place],
        plan: &Plan,
        call: &Call<'_>,
        decision: &mut Decision,
    ) -> Result<Placed, Refused> {
        let budget_ms = f.timeout.as_secs_f64() * 1e3;
        let mut state = Attempts::new(plan, self.now_ms() as f64, budget_ms, f.idempotent);
        // Once every place of the plan was tried: the places listed again, and their plan;
        // and the places the first listing tried.
        let mut relisted: Option<(Vec<Place>, Plan)> = None;
        let mut tried_before: Vec<String> = Vec::new();
        // Attempts past their patience, still running where they are.
        let mut hedges: Vec<Hedge<'_>> = Vec::new();
        loop {
            let (places, plan) = match &relisted {
                Some((p, q)) => (p.as_slice(), q),
                None => (places, plan),
            };
            let at = state.current();
            decision.attempts = state.made() as u32;
            let place = &places[at];
            let scored = plan.scored[at];
            let t0 = Instant::now();
            let mut attempt = fogline_node::traces::span("attempt");
            if attempt.recording() {
                attempt.attr("place", &place.id);
                attempt.attr_static("tier", place.tier.as_str());
                if let Some(a) = place.addr {
                    attempt.attr_addr("addr", a);
                }
                attempt.attr_ms("predicted_ms", scored.predicted_ms);
            }
            lock(&self.outstanding)
                .entry(place.id.clone())
                .or_default()
                .sent(scored.features.service_ms);
            // How long to wait there before hedging: an idempotent call with somewhere
            // else to go is sent on from a place far slower than predicted (stalled,
            // overloaded or gone).
            let now = self.now_ms() as f64;
            let left = (budget_ms - (now - call.now_ms)).max(1.0);
            let budget = *lock(&self.retry_budget);
            let patience = state.patience_ms(plan, now, &budget);
            if !budget.allows_hedging()
                && state.patience_ms(plan, now, &RetryBudget::full()) < patience
            {
                self.held.fetch_add(1, Ordering::Relaxed);
            }
            let limit = Duration::from_secs_f64(patience / 1e3);
            let mesh = node
                .links
                .mesh
                .get()
                .filter(|_| place.addr.is_some() && place.via.is_none());
            // A member the mesh finds dead meanwhile (its link cut, its board off) ends the
            // attempt at once: its connection would only time out later.
            let mut run: BoxFut<'_, Result<Placed, Failure>> = {
                let place = place.clone();
                Box::pin(async move {
                    match mesh {
                        Some(mesh) => tokio::select! {
                            r = self.run_at(node, f, body, &place) => r,
                            () = mesh.until_unreachable(&place.id) => Err(Failure {
                                refused: Refused::new(
                                    502,
                                    format!(
                                        "{} ({} tier) became unreachable while the call was there (the mesh heard nothing from it); it may have run",
                                        place.id,
                                        place.tier.as_str()
                                    ),
                                ),
                                kind: FailKind::Broken { sent: true },
                            }),
                        },
                        None => self.run_at(node, f, body, &place).await,
                    }
                })
            };
            // Without a shorter patience than the budget, the place's own timeout ends the
            // call (no timer of our own on the common path). Places the call was hedged
            // from race this one: the first answer is the call's.
            let timed = place.addr.is_some() && patience < left;
            let current = async {
                if timed {
                    tokio::time::timeout(limit, &mut run).await
                } else {
                    Ok((&mut run).await)
                }
            };
            let result = match race(&mut hedges, current).await {
                Raced::Current(r) => r,
                Raced::Hedged(sent, placed) => {
                    // This attempt goes on at its place, unheard.
                    if let Some(n) = lock(&self.outstanding).get_mut(&place.id) {
                        n.done(scored.features.service_ms);
                    }
                    return Ok(hedge_answered(sent, placed, plan, &state));
                }
            };
            // An answer says the member's load as it answered: fresher than its last
            // report (a peer cluster's answers carry none; its summary gives its load).
            let heard = match (&result, mesh) {
                (Ok(Ok(Placed { load: Some(l), .. })), Some(mesh)) => mesh
                    .with_view(|v| v.get(&place.id).map(|m| m.report.seq))
                    .map(|seq| (seq, *l)),
                _ => None,
            };
            if let Some(n) = lock(&self.outstanding).get_mut(&place.id) {
                n.done(scored.features.service_ms);
                if let Some((seq, load)) = heard {
                    n.heard(seq, load);
                    n.answered(seq, fogline_core::placement::place_key(&f.name));
                }
            }
            let took_ms = t0.elapsed().as_secs_f64() * 1e3;
            let (outcome, answer) = match result {
                Ok(Ok(placed)) => (
                    Outcome::Answered {
                        took_ms,
                        service_ms: Some(placed.service_ms()),
                        response_kb: Some(placed.body.len() as f64 / 1024.0),
                        cold: placed.cold,
                    },
                    Ok(placed),
                ),
                Ok(Err(fail)) => (fail.outcome(took_ms), Err(fail)),
                Err(_) => {
                    // Past its patience: hedged, not abandoned. It goes on at its place
                    // while the call is tried at the next.
                    hedges.push(Hedge { sent: t0, run });
                    (
                        Outcome::TimedOut { after_ms: took_ms },
                        Err(Failure {
                            refused: Refused::new(
                                504,
                                format!(
                                    "no answer from {} within {} ms",
                                    place.id,
                                    limit.as_millis()
                                ),
                            ),
                            kind: FailKind::Silent,
                        }),
                    )
                }
            };
            match &answer {
                Ok(_) => attempt.attr_static("status", "200"),
                Err(f) => {
                    attempt.attr("status", f.refused.status);
                    attempt.attr("error", &f.refused.message);
                }
            }
            drop(attempt);
            let observed_at = Call {
                now_ms: self.now_ms() as f64,
                ..*call
            };
            self.policy(&f.name)
                .observe(&observed_at, &place.id, &scored, &outcome);
            lock(&self.retry_budget).hear(&outcome);
            let failure = match answer {
                Ok(placed) => return Ok(answered(placed, took_ms, plan, &state)),
                Err(fail) => fail,
            };
            // Whether the place reported while the call was there (a place that is no
            // mesh member, a peer cluster or this router itself, counts as unheard).
            let heard = || mesh.is_some_and(|m| m.heard_within(&place.id, took_ms));
            if state.benches(plan, &outcome, heard) {
                lock(&self.down).bench(&place.id, self.now_ms() as f64);
                if let (FailKind::Broken { .. }, Some(addr), Some(client)) =
                    (&failure.kind, place.addr, node.links.peers.get())
                {
                    client.forget(addr).await;
                }
                tracing::warn!(function = %f.name, place = %place.id, "place failed: {}", failure.refused.message);
            }
            let next = state.next(plan, &outcome, self.now_ms() as f64);
            if next == Next::Relist {
                let tried: Vec<&str> = state
                    .tried()
                    .iter()
                    .map(|i| places[*i].id.as_str())
                    .collect();
                if let Some(again) = self.relist(node, f, call, &tried) {
                    tracing::info!(
                        function = %f.name,
                        tried = %tried.join(", "),
                        next = %again.0[again.1.chosen].id,
                        "the call failed at every place listed; listed places again and found more"
                    );
                    state = state.relisted(&again.1);
                    tried_before.extend(tried.iter().map(|t| t.to_string()));
                    relisted = Some(again);
                    continue;
                }
            }
            let next = match next {
                // Nowhere left to go: the places the call was hedged from may answer yet;
                // with none, it failed as core says (`Next::Wait`).
                Next::Wait => match first_answer(&mut hedges).await {
                    Some((sent, placed)) => return Ok(hedge_answered(sent, placed, plan, &state)),
                    None => Next::Fail(GiveUp::Exhausted),
                },
                next => next,
            };
            // Listed again with no new place: every place tried failed.
            match next {
                Next::Done => return Err(failure.refused),
                Next::Retry(_) => {}
                Next::Fail(GiveUp::NotIdempotent) => {
                    return Err(Refused::new(
                        502,
                        format!(
                            "{} failed on {} ({} tier, {}), and it is not idempotent, so it was not retried elsewhere: {}",
                            f.name,
                            place.id,
                            place.tier.as_str(),
                            place.addr.map_or("this router".to_string(), |a| a.to_string()),
                            failure.refused.message
                        ),
                    ));
                }
                Next::Fail(_) | Next::Relist if outcome.place_failed() => {
                    return Err(Refused::new(
                        502,
                        format!(
                            "{} failed on every place tried ({}): {}",
                            f.name,
                            tried_before
                                .iter()
                                .map(String::as_str)
                                .chain(state.tried().iter().map(|i| places[*i].id.as_str()))
                                .collect::<Vec<_>>()
                                .join(", "),
                            failure.refused.message
                        ),
                    ));
                }
                Next::Fail(_) | Next::Relist | Next::Wait => return Err(failure.refused),
            }
        }
    }

    /// The places a call that failed at every place of its plan (`tried`) may go on to: those
    /// listed now that it has not tried (a member that joined meanwhile, one whose bench ran
    /// out), with the policy's plan among them (`Call::relisted`); `None` when there is
    /// none.
    fn relist(
        &self,
        node: &Node,
        f: &FunctionManifest,
        call: &Call<'_>,
        tried: &[&str],
    ) -> Option<(Vec<Place>, Plan)> {
        let mut places = self.places(node, f);
        places.retain(|p| !tried.contains(&p.id.as_str()));
        if places.is_empty() {
            return None;
        }
        let again = call.relisted(self.now_ms() as f64);
        let infos: Vec<PlaceInfo<'_>> = places.iter().map(Place::info).collect();
        let plan = self.policy(&f.name).plan(&again, &infos, self.roll())?;
        Some((places, plan))
    }

    /// One attempt at one place.
    async fn run_at(
        &self,
        node: &Node,
        f: &FunctionManifest,
        body: &Bytes,
        place: &Place,
    ) -> Result<Placed, Failure> {
        let Some(addr) = place.addr else {
            return node
                .run_here_once(&f.name, body.clone())
                .await
                .map_err(Failure::by_status);
        };
        fogline_node::agent::keyed::handing_to(&place.id).await;
        let Some(client) = node.links.peers.get() else {
            return Err(Failure {
                refused: Refused::new(
                    503,
                    "this router has no certificates (quic.tls_dir), so it cannot reach other places",
                ),
                kind: FailKind::Capacity,
            });
        };
        // The member the mesh says is there, and no other, must answer (a peer cluster's
        // calls go to the bridge that relays them).
        let (answering, via) = match &place.via {
            Some((peer, bridge)) => (bridge.as_str(), Some(peer.clone())),
            None => (place.id.as_str(), None),
        };
        client.expect(addr, answering);
        let req = fogline_node::quic::Request {
            function: f.name.clone(),
            manifest: Some(f.clone()),
            body: body.clone(),
            via,
        };
        match client.invoke(addr, &req, node).await {
            Ok(reply) => Ok(reply.into_placed(place.tier)),
            Err(QuicError::Remote(m)) => Err(Failure {
                kind: if m.retryable {
                    FailKind::Capacity
                } else {
                    FailKind::Function
                },
                refused: Refused::new(m.status, format!("on {}: {}", place.id, m.message)),
            }),
            Err(e) => {
                // Nothing left this side before the connection existed: safe to send elsewhere.
                let sent = !matches!(e, QuicError::Connect { .. });
                Err(Failure {
                    refused: Refused::new(502, e.to_string()),
                    kind: FailKind::Broken { sent },
                })
            }
        }
    }

    /// Asks the best cold place to load `f` ahead of a predicted burst.
    async fn prepare_ahead(&self, node: &Node, f: &FunctionManifest, rate_per_s: f64) {
        let places = self.places(node, f);
        let infos: Vec<PlaceInfo<'_>> = places.iter().map(Place::info).collect();
        let Some(target) = fogline_core::forecast::prepare_target(&infos, rate_per_s, |i| {
            places[i].addr.is_some()
        })
        .map(|i| &places[i]) else {
            return;
        };
        let key = (f.name.clone(), target.id.clone());
        {
            let mut prepared = lock(&self.prepared);
            if prepared
                .get(&key)
                .is_some_and(|t| t.elapsed() < PREPARE_AGAIN)
            {
                return;
            }
            prepared.insert(key, Instant::now());
        }
        let (Some(addr), Some(client)) = (target.addr, node.links.peers.get()) else {
            return;
        };
        client.expect(addr, &target.id);
        match client.prepare(addr, f, node).await {
            Ok(_) => tracing::info!(
                function = %f.name,
                place = %target.id,
                "prepared ahead of a forecast {rate_per_s:.0} calls/s (warm places serve about {:.0}/s)",
                fogline_core::forecast::warm_capacity(&infos)
            ),
            Err(e) => tracing::warn!(function = %f.name, place = %target.id, "prepare failed: {e}"),
        }
    }

    /// Waits (up to `f`'s timeout) until some place can run `f`; the places then, or none.
    async fn wait_for_place(&self, node: &Node, f: &FunctionManifest) -> Vec<Place> {
        struct Waiting<'a>(&'a AtomicU64);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        self.waiting.fetch_add(1, Ordering::Relaxed);
        self.wanted.notify_one();
        let _w = Waiting(&self.waiting);
        let until = Instant::now() + f.timeout;
        let t0 = Instant::now();
        while Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let places = self.places(node, f);
            if !places.is_empty() {
                tracing::info!(function = %f.name, "a place appeared after {} ms", t0.elapsed().as_millis());
                return places;
            }
        }
        Vec::new()
    }

    /// Resolves when a call starts waiting for a place (at once if one did since the
    /// last time this resolved).
    pub async fn place_wanted(&self) {
        self.wanted.notified().await;
    }

    /// Calls waiting for a place to appear.
    pub fn waiting(&self) -> u32 {
        self.waiting.load(Ordering::Relaxed) as u32
    }

    /// Calls this router has running at places now.
    pub fn in_flight(&self) -> u32 {
        lock(&self.outstanding).values().map(|m| m.own.calls).sum()
    }

    /// Forecast arrivals per second over every function, `ahead_ms` from now, for a scoped
    /// router (0 for others): a line through the last 4 s in half-second buckets; none
    /// from fewer than
    /// [`MIN_TREND_ARRIVALS`] arrivals, too few for a trend (one call after a quiet spell
    /// is a line rising from zero).
    pub fn forecast_per_s(&self, ahead_ms: u64) -> f64 {
        let now = self.now_ms();
        let a = lock(&self.all_arrivals);
        if a.in_window(now) < MIN_TREND_ARRIVALS {
            return 0.0;
        }
        a.forecast_ahead(now, ahead_ms)
    }

    /// Adds Prometheus text to `/metrics` (set once).
    pub fn set_extra_metrics(&self, f: ExtraMetrics) {
        let _ = self.extra_metrics.set(f);
    }

    /// Median relative prediction error so far.
    pub fn median_error(&self) -> Option<f64> {
        let mut all = Vec::new();
        for p in &self.planner {
            lock(p).recent_errors(&mut all);
        }
        fogline_core::placement::median(all)
    }

    /// The policy shard that decides for `function`.
    fn policy(&self, function: &str) -> std::sync::MutexGuard<'_, Box<dyn Policy>> {
        let k = fogline_core::placement::place_key(function);
        lock(&self.planner[k as usize % self.planner.len()])
    }
}

/// The candidates of a placement as its span says them: `edge-1 (edge) 3.20 ms; …`.
struct Candidates<'a> {
    places: &'a [Place],
    scored: &'a [fogline_core::placement::Scored],
}

impl std::fmt::Display for Candidates<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (p, s)) in self.places.iter().zip(self.scored).enumerate() {
            let sep = if i == 0 { "" } else { "; " };
            // Hundredths as integers: float formatting is the costly part of this span.
            let h = (s.predicted_ms.max(0.0) * 100.0).round() as u64;
            write!(
                f,
                "{sep}{} ({}) {}.{:02} ms",
                p.id,
                p.tier.as_str(),
                h / 100,
                h % 100
            )?;
        }
        Ok(())
    }
}

/// Why an attempt produced no output.
struct Failure {
    refused: Refused,
    kind: FailKind,
}

/// An attempt a call was hedged from ([`Next::Wait`]): past its patience, still running at
/// its place while the call is tried elsewhere.
struct Hedge<'a> {
    /// When it was sent.
    sent: Instant,
    run: BoxFut<'a, Result<Placed, Failure>>,
}

/// An attempt's answer (it took `took_ms` there) as the call's: with what the plan
/// predicted for its first place and the attempts made.
fn answered(mut placed: Placed, took_ms: f64, plan: &Plan, state: &Attempts) -> Placed {
    placed.took_ms = took_ms;
    placed.predicted_ms = Some(plan.scored[plan.chosen].predicted_ms);
    placed.attempts = state.made() as u32;
    placed
}

/// The answer of an attempt the call was hedged from (sent at `sent`), as the call's.
fn hedge_answered(sent: Instant, placed: Placed, plan: &Plan, state: &Attempts) -> Placed {
    tracing::debug!(node = %placed.node, "answered where the call was hedged from");
    let took_ms = sent.elapsed().as_secs_f64() * 1e3;
    answered(placed, took_ms, plan, state)
}

/// What came first of a call's current attempt and the attempts it was hedged from.
enum Raced<T> {
    Current(T),
    /// One it was hedged from answered (it was sent at the instant).
    Hedged(Instant, Placed),
}

/// Runs `current` against `hedges` until it ends or one of them answers.
async fn race<T>(hedges: &mut Vec<Hedge<'_>>, current: impl Future<Output = T>) -> Raced<T> {
    let mut current = std::pin::pin!(current);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(r) = current.as_mut().poll(cx) {
            return Poll::Ready(Raced::Current(r));
        }
        match poll_hedges(hedges, cx) {
            Poll::Ready(Some((sent, placed))) => Poll::Ready(Raced::Hedged(sent, placed)),
            _ => Poll::Pending,
        }
    })
    .await
}

/// The first answer of `hedges` (it was sent at the instant); `None` once every one ended
/// without one.
async fn first_answer(hedges: &mut Vec<Hedge<'_>>) -> Option<(Instant, Placed)> {
    std::future::poll_fn(|cx| poll_hedges(hedges, cx)).await
}

/// Polls every hedge, dropping those that ended without an answer: ready with the first
/// answer, or with `None` when none is left.
fn poll_hedges(
    hedges: &mut Vec<Hedge<'_>>,
    cx: &mut std::task::Context<'_>,
) -> Poll<Option<(Instant, Placed)>> {
    let mut k = 0;
    while k < hedges.len() {
        match hedges[k].run.as_mut().poll(cx) {
            Poll::Ready(Ok(placed)) => {
                return Poll::Ready(Some((hedges.swap_remove(k).sent, placed)))
            }
            Poll::Ready(Err(_)) => {
                hedges.swap_remove(k);
            }
            Poll::Pending => k += 1,
        }
    }
    if hedges.is_empty() {
        Poll::Ready(None)
    } else {
        Poll::Pending
    }
}

/// What kind of failure, in the state machine's terms.
enum FailKind {
    /// Turned away before running (429, 503): try elsewhere.
    Capacity,
    /// The function ran and failed: that is the answer.
    Function,
    /// No answer in time.
    Silent,
    /// The connection broke; `sent` when the call had left this side.
    Broken { sent: bool },
}

impl Failure {
    fn outcome(&self, took_ms: f64) -> Outcome {
        let status = self.refused.status;
        match self.kind {
            FailKind::Capacity => Outcome::Refused { status },
            FailKind::Function => Outcome::Failed { status },
            FailKind::Silent => Outcome::TimedOut { after_ms: took_ms },
            FailKind::Broken { sent } => Outcome::Lost {
                sent,
                after_ms: took_ms,
            },
        }
    }

    /// A refusal or a function's error, by its status.
    fn by_status(refused: Refused) -> Failure {
        let kind = if refused.retryable() {
            FailKind::Capacity
        } else {
            FailKind::Function
        };
        Failure { refused, kind }
    }
}

fn no_place_message(node: &Node, function: &str) -> String {
    let (alive, total) = node.links.mesh.get().map_or((0, 0), |m| {
        m.with_view(|v| {
            (
                v.members()
                    .filter(|m| m.state == State::Alive && m.report.node != node.id)
                    .count(),
                v.len().saturating_sub(1),
            )
        })
    });
    let mesh = if node.links.mesh.get().is_none() {
        "the mesh is off (no mesh.listen)".to_string()
    } else {
        format!("{alive} of {total} other members alive, none able to run it now")
    };
    format!(
        "no live place can run {function:?}: {mesh}; device mode is {}",
        if node.runs_functions() { "on" } else { "off" }
    )
}

/// Why a function pinned to `tier` has no place: that tier is unreachable from here.
fn pinned_message(node: &Node, function: &str, tier: Tier) -> String {
    let (alive, known) = node.links.mesh.get().map_or((0, 0), |m| {
        m.with_view(|v| {
            let of_tier = || {
                v.members()
                    .filter(|m| m.report.tier == tier && m.report.node != node.id)
            };
            (
                of_tier().filter(|m| m.state == State::Alive).count(),
                of_tier().count(),
            )
        })
    });
    let t = tier.as_str();
    if known == 0 {
        format!("{function:?} runs only in the {t} tier (constraint tier=={t}), and this router knows no {t} member")
    } else if alive == 0 {
        format!("{function:?} runs only in the {t} tier (constraint tier=={t}), and the {t} tier is unreachable: none of its {known} member(s) is alive")
    } else {
        format!("{function:?} runs only in the {t} tier (constraint tier=={t}); its {alive} live member(s) cannot run it now")
    }
}

impl Dispatch for Router {
    fn dispatch<'a>(
        &'a self,
        function: &'a str,
        body: Bytes,
    ) -> BoxFut<'a, Result<Placed, Refused>> {
        Box::pin(async move {
            let Some(node) = self.node.upgrade() else {
                return Err(Refused::new(503, "this router is stopping"));
            };
            self.place(&node, function, body).await
        })
    }

    fn watch(&self) -> Option<tokio::sync::broadcast::Receiver<std::sync::Arc<str>>> {
        Some(self.watch.subscribe())
    }

    fn function_stats(&self, function: &str) -> Option<serde_json::Value> {
        self.watch.function(function)
    }

    fn metrics(&self, out: &mut String) {
        use std::fmt::Write;
        self.watch.metrics(out);
        let _ = writeln!(out, "# HELP fogline_retry_budget_tokens This router's retry budget: while no more than half of its 10 tokens are left, calls are not hedged for running long.\n# TYPE fogline_retry_budget_tokens gauge\nfogline_retry_budget_tokens {}", lock(&self.retry_budget).tokens());
        let _ = writeln!(out, "# HELP fogline_placement_held_total Attempts that waited out their call's budget, not hedged for running long, because the retry budget was spent.\n# TYPE fogline_placement_held_total counter\nfogline_placement_held_total {}", self.held.load(Ordering::Relaxed));
        if let Some(f) = self.extra_metrics.get() {
            f(out);
        }
    }

    fn placements(&self, limit: usize) -> serde_json::Value {
        let log = lock(&self.log);
        let recent: Vec<&Decision> = log.iter().take(limit).collect();
        serde_json::json!({
            "median_prediction_error": self.median_error(),
            "placements": recent,
        })
    }
}

/// Refits models off the hot path; forgets connections to members the mesh marks dead.
async fn housekeeping(router: Weak<Router>) {
    let mut tick = tokio::time::interval(HOUSEKEEPING);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0u64;
    loop {
        tick.tick().await;
        let Some(r) = router.upgrade() else { return };
        for p in &r.planner {
            lock(p).housekeeping();
        }
        n += 1;
        if n.is_multiple_of(20) {
            let Some(node) = r.node.upgrade() else { return };
            let (Some(mesh), Some(client)) = (node.links.mesh.get(), node.links.peers.get()) else {
                continue;
            };
            let (gone, known): (Vec<SocketAddr>, Vec<String>) = mesh.with_view(|v| {
                (
                    // A member that said goodbye is still finishing the calls it took on
                    // these connections; it closes them itself when done.
                    v.members()
                        .filter(|m| m.state == State::Dead && !m.left)
                        .filter_map(|m| m.report.quic.as_deref()?.parse().ok())
                        .collect(),
                    v.members().map(|m| m.report.node.clone()).collect(),
                )
            });
            for addr in gone {
                client.forget(addr).await;
            }
            for p in &r.planner {
                lock(p).retain_places(&|p| p == node.id || known.iter().any(|k| k == p));
            }
        }
    }
}

/// Forecasts each function's arrival rate and prepares places ahead of bursts.
async fn forecasting(router: Weak<Router>) {
    let mut tick = tokio::time::interval(FORECAST_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(r) = router.upgrade() else { return };
        let Some(node) = r.node.upgrade() else { return };
        let now = r.now_ms();
        let rates: Vec<(String, f64)> = lock(&r.arrivals)
            .iter()
            .map(|(f, a)| (f.clone(), a.forecast_per_s(now)))
            .filter(|(_, rate)| *rate >= 1.0)
            .collect();
        for (function, rate) in rates {
            if let Some(d) = node.lookup(&function) {
                r.prepare_ahead(&node, &d.manifest, rate).await;
            }
        }
    }
}

/// Forgets places that have left the view (members gone, peer clusters no longer offered;
/// Swarm tasks come and go with new names) where the router has nothing in flight, once
/// the map has grown to twice what the view holds: the map stays bounded, and the work is
/// done rarely rather than on every call (which pays only for comparing two lengths).
fn prune(
    outstanding: &mut HashMap<String, Mine>,
    view: &fogline_core::mesh::ClusterView,
    at: u64,
    fresh: u64,
    own: &str,
) {
    let bound = |places: usize| 32 + 2 * (places + 1);
    // Members alone first (a length kept by the view); peer places are counted only then.
    if outstanding.len() <= bound(view.len())
        || outstanding.len() <= bound(view.len() + view.peer_places(at, fresh).count())
    {
        return;
    }
    let live: std::collections::HashSet<&str> = view
        .members()
        .map(|m| m.report.node.as_str())
        .chain(view.peer_places(at, fresh).map(|(_, p)| p.name.as_str()))
        .chain(std::iter::once(own))
        .collect();
    outstanding.retain(|id, m| m.own.calls > 0 || live.contains(id.as_str()));
}

/// The router's calls at place `id`, an entry made once per place (not a string per place
/// per call).
fn mine_at<'m>(outstanding: &'m mut HashMap<String, Mine>, id: &str) -> &'m mut Mine {
    if !outstanding.contains_key(id) {
        outstanding.insert(id.to_owned(), Mine::default());
    }
    outstanding.get_mut(id).expect("just inserted")
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scope_holds_its_own_services_tasks_only() {
        let scope = Scope {
            tier: Tier::Cloud,
            service: "fl-w".into(),
            wait_for_place: false,
            pack_to: None,
            hosts: Hosts::default(),
        };
        assert!(scope.holds("fl-w-3-x7k2q"));
        assert!(!scope.holds("fl-w-b-3-x7k2q"), "a task of service fl-w-b");
        assert!(!scope.holds("fl-w-edge"), "a member named like the service");
        assert!(!scope.holds("fl-wx-1-abc"));
    }

    #[test]
    fn places_that_left_the_view_are_forgotten_unless_calls_are_still_there() {
        let mut view = fogline_core::mesh::ClusterView::new();
        for (i, name) in ["edge-a", "edge-b"].into_iter().enumerate() {
            let report = fogline_core::mesh::LoadReport {
                cores: 2,
                speed: 1.0,
                runtimes: vec![fogline_core::manifest::Runtime::Wasm],
                seq: i as u64 + 1,
                ..fogline_core::mesh::LoadReport::blank(name, Tier::Edge)
            };
            assert!(view.apply(report, 0));
        }
        let mut outstanding = HashMap::new();
        for id in ["edge-a", "edge-b", "me"] {
            mine_at(&mut outstanding, id);
        }
        // Swarm tasks long gone; one still has a call of this router's running.
        for t in 0..40 {
            mine_at(&mut outstanding, &format!("fl-w-1-task{t}"));
        }
        mine_at(&mut outstanding, "fl-w-1-task7").sent(1.0);
        let before = outstanding.clone();
        // Below the bound nothing is touched.
        let mut small: HashMap<String, Mine> = before
            .iter()
            .take(20)
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        let kept = small.clone();
        prune(&mut small, &view, 0, 1_000, "me");
        assert_eq!(small, kept);
        prune(&mut outstanding, &view, 0, 1_000, "me");
        let mut left: Vec<&str> = outstanding.keys().map(String::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["edge-a", "edge-b", "fl-w-1-task7", "me"]);
        assert_eq!(outstanding["fl-w-1-task7"], before["fl-w-1-task7"]);
    }
}
