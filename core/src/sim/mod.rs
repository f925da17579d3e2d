//! The continuum simulator: a seeded, deterministic discrete-event simulation of devices,
//! edge nodes and a cloud, running the *same* planner ([`crate::placement`]) and cluster
//! view ([`crate::mesh`]) as the live router, and comparing it with baseline policies on the
//! same workload and the same link conditions.
//!
//! The world: devices in sites, each site with edge nodes of differing speeds, one cloud
//! with many fast cores. A device reaches the edges over its access link (round trips drawn
//! from a sample file, redrawn every `rtt_coherence_ms`) and the cloud over another link plus
//! the distance to the data centre. Nodes run calls first-come first-served on their cores;
//! an instance unused for `keepalive_ms` must start cold again. Edge nodes fail and recover;
//! the router learns of failures from missing load reports (the cluster view), and a call
//! lost with a node is sent elsewhere after `detect_ms`.
//!
//! The workload: per-function execution times, popularity and burstiness sampled from the
//! Azure Functions 2019 distributions, or an Azure 2021-format trace.

pub mod data;
pub mod rng;
pub mod scenario;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use rustc_hash::FxHashMap as HashMap;
use serde::Serialize;

use crate::attempts::{Attempts, Bench, Next, Outcome, RetryBudget};
use crate::candidates::{facts, listed, Mine, Reported, Wants};
use crate::config::Tier;
use crate::forecast::Arrivals;
use crate::mesh::{smoothed_rtt, ClusterView, LoadReport, State, Timing, RTT_KEEP};
use crate::placement::{Own, PlaceInfo, Scored};
use crate::policies::Call as PolicyCall;
use crate::policy::Weights;
use crate::predict::Source;
use crate::service::{averaged, ServiceAverage, Ticket};
pub use data::{Cdf, Samples, SimError, TraceCall};
use rng::{mix, unit, Rng};
pub use scenario::Scenario;

/// The inputs a scenario names, loaded by the caller (the core does no I/O).
#[derive(Debug, Clone)]
pub struct Inputs {
    pub edge_rtt: Samples,
    pub cloud_rtt: Samples,
    pub workload: WorkloadData,
}

#[derive(Debug, Clone)]
pub enum WorkloadData {
    Azure {
        exec: Cdf,
        popularity: Cdf,
        cv: Cdf,
    },
    Trace {
        calls: Vec<TraceCall>,
        functions: usize,
    },
}

/// The placement policies compared (every one the router runs, and the oracle).
pub use crate::policies::Kind as Policy;

/// One policy's figures (after the warm-up share of calls).
#[derive(Debug, Clone, Serialize)]
pub struct PolicyResult {
    pub name: &'static str,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub mean_ms: f64,
    /// Share of calls slower than the deadline.
    pub deadline_miss: f64,
    /// Share of calls that ran on each tier.
    pub tier_share: BTreeMap<&'static str, f64>,
    pub cold_starts: u64,
    /// Median relative error of the latency predicted for the chosen place (regression:
    /// its models; oracle: none by definition; the others predict nothing).
    pub prediction_error: Option<f64>,
    /// The same over the calls whose chosen place's model had seen the function run there
    /// before (the error of a place's first call of a function is the prior's).
    pub prediction_error_seen: Option<f64>,
    /// The floor under [`Self::prediction_error`]: the median error, over the same calls,
    /// of a prediction that knew each call's place, queue, round trip and the function's
    /// mean time there, and missed only by how far the run itself strayed from that mean
    /// (`service_noise`): about the least any predictor can miss by, since nothing it knows
    /// tells how a run will stray. None where nothing is predicted, and for the oracle,
    /// which knows how each run strays.
    pub prediction_error_floor: Option<f64>,
    /// Calls sent elsewhere (after a refusal, a failure or a timeout), and calls that
    /// found no place (out of places, attempts or time).
    pub retries: u64,
    /// Attempts a place turned away for capacity (429).
    pub refusals: u64,
    /// Calls that failed or were turned away at every place listed for them and went on to
    /// places listed again ([`Next::Relist`]).
    pub relisted: u64,
    pub failed: u64,
    /// The latency (ms) under which each share of [`CDF_AT`] of the calls finished.
    pub cdf_ms: Vec<f64>,
    /// Each measured call, in the order the calls arrived: the samples the figures above
    /// come from, with where each ran, for analyses of one's own (a paired bootstrap
    /// between policies, say, or which calls made the tail). Kept only when asked for
    /// ([`run_keeping_latencies`]); empty otherwise.
    #[serde(skip)]
    pub latencies: Vec<Measured>,
}

/// One measured call as a policy served it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measured {
    /// Its number in the workload (the same call under every policy).
    pub call: u32,
    /// Its function's number in the workload.
    pub function: u32,
    /// From its arrival to its answer back at the device, ms.
    pub latency_ms: f32,
    /// The tier of the place that answered it (`device`, `edge`, `cloud`, `federated`).
    pub tier: &'static str,
    /// Places it was sent to, the one that answered included.
    pub attempts: u32,
    /// Whether it started cold where it was answered.
    pub cold: bool,
    /// How long it waited there for a core, ms.
    pub wait_ms: f32,
    /// The function's own run there, without a cold start, ms.
    pub run_ms: f32,
    /// What the policy predicted for that place when it planned the call, ms; `None` for
    /// a policy whose plans are scores rather than times.
    pub predicted_ms: Option<f32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub seed: u64,
    pub invocations: usize,
    pub edge_nodes: usize,
    pub devices: usize,
    /// Offered load over the edge tier's capacity, as generated.
    pub offered_utilisation: f64,
    /// Simulated time, seconds.
    pub simulated_s: f64,
    pub policies: Vec<PolicyResult>,
}

#[derive(Debug, Clone, Copy)]
struct Call {
    t: f64,
    device: u32,
    func: u32,
    payload_kb: f32,
}

#[derive(Debug, Clone, Copy)]
struct Func {
    exec_ms: f64,
    cold_ms: f64,
}

/// The generated workload, shared by every policy.
struct Workload {
    calls: Vec<Call>,
    funcs: Vec<Func>,
    offered: f64,
}

fn generate(s: &Scenario, inputs: &Inputs, edge_capacity: f64) -> Workload {
    let mut rng = Rng::new(mix(&[s.seed, 1]));
    let clip = |ms: f64| (ms * s.exec_scale).clamp(s.min_exec_ms, s.max_exec_ms);
    let payload = |rng: &mut Rng| rng.range(s.payload_kb[0], s.payload_kb[1]) as f32;
    match &inputs.workload {
        WorkloadData::Azure {
            exec,
            popularity,
            cv,
        } => {
            let n = s.functions;
            let mut funcs = Vec::with_capacity(n);
            let mut weight = Vec::with_capacity(n);
            let mut shape = Vec::with_capacity(n);
            for _ in 0..n {
                funcs.push(Func {
                    exec_ms: clip(exec.sample(&mut rng)),
                    cold_ms: rng.range(s.cold_start_ms[0], s.cold_start_ms[1]),
                });
                weight.push(popularity.sample(&mut rng).max(1.0));
                // Gamma inter-arrivals with the sampled coefficient of variation.
                let c = cv.sample(&mut rng).clamp(0.05, 8.0);
                shape.push(1.0 / (c * c));
            }
            let total_w: f64 = weight.iter().sum();
            let mean_exec: f64 = funcs
                .iter()
                .zip(&weight)
                .map(|(f, w)| f.exec_ms * w / total_w)
                .sum();
            // Calls per ms that keep the edge tier at the asked utilisation.
            let rate = s.utilisation * edge_capacity / mean_exec;
            let mut heap: BinaryHeap<Reverse<(u64, usize)>> = BinaryHeap::new();
            let mean_gap: Vec<f64> = weight.iter().map(|w| total_w / (w * rate)).collect();
            for f in 0..n {
                // A random phase so that functions do not start together.
                let t = rng.f64() * rng.gamma(shape[f], mean_gap[f]);
                heap.push(Reverse((t.to_bits(), f)));
            }
            let mut calls = Vec::with_capacity(s.invocations);
            while calls.len() < s.invocations {
                let Some(Reverse((tb, f))) = heap.pop() else {
                    break;
                };
                let t = f64::from_bits(tb);
                calls.push(Call {
                    t,
                    device: rng.below(s.devices) as u32,
                    func: f as u32,
                    payload_kb: payload(&mut rng),
                });
                let next = t + rng.gamma(shape[f], mean_gap[f]);
                heap.push(Reverse((next.to_bits(), f)));
            }
            let span = calls.last().map_or(1.0, |c| c.t).max(1.0);
            let work: f64 = calls.iter().map(|c| funcs[c.func as usize].exec_ms).sum();
            Workload {
                offered: work / span / edge_capacity,
                calls,
                funcs,
            }
        }
        WorkloadData::Trace { calls, functions } => {
            let mut funcs: Vec<Func> = (0..*functions)
                .map(|_| Func {
                    exec_ms: 0.0,
                    cold_ms: rng.range(s.cold_start_ms[0], s.cold_start_ms[1]),
                })
                .collect();
            let mut count = vec![0usize; *functions];
            let take = calls.len().min(s.invocations);
            let mut out = Vec::with_capacity(take);
            for c in &calls[..take] {
                let f = c.function as usize;
                funcs[f].exec_ms += clip(c.exec_ms.max(s.min_exec_ms));
                count[f] += 1;
                out.push(Call {
                    t: c.start_ms,
                    device: rng.below(s.devices) as u32,
                    func: c.function,
                    payload_kb: payload(&mut rng),
                });
            }
            for (f, n) in funcs.iter_mut().zip(&count) {
                f.exec_ms = if *n > 0 {
                    f.exec_ms / *n as f64
                } else {
                    s.min_exec_ms
                };
            }
            let span = out.last().map_or(1.0, |c| c.t).max(1.0);
            let work: f64 = out.iter().map(|c| funcs[c.func as usize].exec_ms).sum();
            Workload {
                offered: work / span / edge_capacity,
                calls: out,
                funcs,
            }
        }
    }
}

/// A node's state in one policy's run.
struct Node {
    id: String,
    /// `place_key(id)`, the planner's key for it (computed once, not per decision).
    key: u64,
    tier: Tier,
    site: usize,
    cores: u32,
    speed: f64,
    /// Added to the round trip (a peer cluster's bridge-to-bridge link), ms.
    link_ms: f64,
    /// When each core is next free (f64 bits; all non-negative, so bit order is time order).
    free: BinaryHeap<Reverse<u64>>,
    /// Completion times of calls admitted and not yet finished.
    running: BinaryHeap<Reverse<u64>>,
    /// The same, per function (per-function concurrency).
    running_fn: HashMap<u32, BinaryHeap<Reverse<u64>>>,
    /// Per function, when its last call ends (warm until the keepalive after it).
    warm: HashMap<u32, f64>,
    /// Per function, when its last load ends: a call that starts while it loads waits for
    /// it, and runs cold (as the agent's Wasm executor does: one call compiles a module,
    /// calls that come meanwhile wait for it).
    loaded: HashMap<u32, f64>,
    /// Per function, the average of its runs' service times, as a live member keeps it
    /// ([`ServiceAverage`]: in the order they started).
    service: HashMap<u32, ServiceAverage>,
    /// Calls running, by when they end: (end, function, service time, ticket); a call's
    /// service time is taken into `service` when it ends.
    ending: BinaryHeap<Reverse<(u64, u32, u64, Ticket)>>,
    /// What its last load report said: when, calls in flight, and per function the last
    /// use and the service time as of then.
    reported_at: f64,
    reported_in_flight: u32,
    reported_warm: HashMap<u32, f64>,
    reported_service: HashMap<u32, f64>,
    /// Functions whose state changed since the last report.
    dirty: Vec<u32>,
    /// Down intervals, sorted.
    down: Vec<(f64, f64)>,
    seq: u64,
    /// Which of the [`REPORT_PHASES`] ticks of each report interval it reports at: live
    /// members report on their own timers, out of step with each other.
    phase: usize,
    /// Its calls admitted lately: its load as it sent an answer, which the answer carries.
    log: LoadLog,
}

/// Ticks per report interval; each node reports at one of them.
const REPORT_PHASES: usize = 8;

/// How far back a node can say what its load was, ms.
const LOAD_LOG_MS: f64 = 10_000.0;

/// A node's calls admitted lately, to say its load at a moment already past (calls are
/// simulated one after another, each to its end, so a call's answer is decided before the
/// calls that arrive while it runs): arrival and finish times, each sorted, and how many
/// of each were dropped from the front, older than [`LOAD_LOG_MS`].
#[derive(Default)]
struct LoadLog {
    admits: Vec<f64>,
    finishes: Vec<f64>,
    dropped: (u64, u64),
}

impl LoadLog {
    /// Calls admitted and not finished at `t` (`None` when `t` is before what it keeps).
    fn at(&self, t: f64) -> Option<u32> {
        if self.dropped.0 > 0 && self.admits.first().is_none_or(|first| t < *first) {
            return None;
        }
        let a = self.dropped.0 + self.admits.partition_point(|x| *x <= t) as u64;
        let f = self.dropped.1 + self.finishes.partition_point(|x| *x <= t) as u64;
        Some(u32::try_from(a.saturating_sub(f)).unwrap_or(u32::MAX))
    }

    /// A call admitted at `arrive` that finishes at `finish`.
    fn add(&mut self, arrive: f64, finish: f64) {
        let at = self.admits.partition_point(|x| *x <= arrive);
        self.admits.insert(at, arrive);
        let at = self.finishes.partition_point(|x| *x <= finish);
        self.finishes.insert(at, finish);
        if self.admits.len() >= 512 {
            // Each count stays right from the horizon on: a call admitted before it and
            // finishing after it is dropped from the admits and kept in the finishes.
            let horizon = arrive - LOAD_LOG_MS;
            let a = self.admits.partition_point(|x| *x < horizon);
            let f = self.finishes.partition_point(|x| *x < horizon);
            self.admits.drain(..a);
            self.finishes.drain(..f);
            self.dropped.0 += a as u64;
            self.dropped.1 += f as u64;
        }
    }
}

/// A device that has not pinged a node (or a link) yet.
const NEVER_PINGED: u64 = u64::MAX;

/// Pings further back than this weigh under 0.2 % of a smoothed round trip (7/8 to the
/// 48th power) and are left out.
const PING_MEMORY: u64 = 48;

/// How many of `h`'s times are past `t`, leaving `h` as it is (for a `t` past calls still
/// to simulate; [`drain_until`] otherwise).
fn count_after(h: &BinaryHeap<Reverse<u64>>, t: f64) -> usize {
    h.iter().filter(|b| f64::from_bits(b.0) > t).count()
}

fn drain_until(h: &mut BinaryHeap<Reverse<u64>>, t: f64) -> usize {
    while let Some(Reverse(b)) = h.peek() {
        if f64::from_bits(*b) <= t {
            h.pop();
        } else {
            break;
        }
    }
    h.len()
}

impl Node {
    fn outstanding(&mut self, t: f64) -> usize {
        drain_until(&mut self.running, t)
    }

    fn outstanding_fn(&mut self, f: u32, t: f64) -> usize {
        self.running_fn.get_mut(&f).map_or(0, |h| drain_until(h, t))
    }

    /// When `f`'s code is ready here for a call that starts at `t`: the end of its load
    /// (at or before `t` once loaded; after it while it loads), or `None` when it is not
    /// loaded (never used, or unused past the keepalive) and the call would load it.
    fn ready_at(&self, f: u32, t: f64, keepalive_ms: f64) -> Option<f64> {
        let last = *self.warm.get(&f)?;
        (t - last <= keepalive_ms).then(|| self.loaded.get(&f).copied().unwrap_or(0.0))
    }

    /// Whether `f` is still loading at `now` (its reports say it warm only once loaded).
    fn loading(&self, f: u32, now: f64) -> bool {
        self.loaded.get(&f).is_some_and(|r| *r > now)
    }

    /// Whether its last report says `f` warm: used within the keepalive before it.
    fn reports_warm(&self, f: u32, keepalive_ms: f64) -> bool {
        self.reported_warm
            .get(&f)
            .is_some_and(|last| self.reported_at - last <= keepalive_ms)
    }

    fn next_free(&self) -> f64 {
        self.free
            .peek()
            .map_or(0.0, |Reverse(b)| f64::from_bits(*b))
    }

    fn is_down(&self, t: f64) -> bool {
        self.down.iter().any(|(a, b)| *a <= t && t < *b)
    }

    /// The first moment in [a, b] the node is down, if any.
    fn fails_during(&self, a: f64, b: f64) -> Option<f64> {
        self.down
            .iter()
            .find(|(s, e)| *s <= b && *e > a)
            .map(|(s, _)| s.max(a))
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Where {
    Node(usize),
    Device,
}

/// One candidate as the router sees it.
#[derive(Debug, Clone, Copy)]
struct Cand {
    at: Where,
    tier: Tier,
    /// The round trip as ping measured and smoothed it.
    rtt_ms: f64,
    load_per_core: f64,
    cores: u32,
    /// Advertised speed (members calibrate at start).
    speed: f64,
    warm: bool,
    service_ms: Option<f64>,
    /// What the call would really take there (filled in for the oracle only).
    truth_ms: Option<f64>,
    /// The router's own calls in flight there.
    own: Own,
}

impl Cand {
    /// Node `i` with `x`, its facts as the router knows them.
    fn node(i: usize, x: &crate::candidates::Facts) -> Self {
        Cand {
            at: Where::Node(i),
            tier: x.tier,
            rtt_ms: x.rtt_ms,
            load_per_core: x.load_per_core,
            cores: x.cores,
            speed: x.speed.unwrap_or(1.0),
            warm: x.warm,
            service_ms: x.service_ms,
            truth_ms: None,
            own: x.own,
        }
    }

    /// What the policy reads of it.
    fn info<'w>(&self, w: &'w World<'_>) -> PlaceInfo<'w> {
        PlaceInfo {
            id: place_id(w, self.at),
            key: place_key(w, self.at),
            tier: self.tier,
            rtt_ms: self.rtt_ms,
            load_per_core: self.load_per_core,
            cores: self.cores,
            speed: Some(self.speed),
            warm: self.warm,
            service_ms: self.service_ms,
            truth_ms: self.truth_ms,
            own: self.own,
        }
    }
}

/// What an attempt at one place would do.
#[derive(Debug, Clone, Copy)]
struct Attempt {
    /// When its result (or refusal) is back at the device, or when its loss is noticed.
    done: f64,
    failed: bool,
    /// Turned away at admission (full, or the function at its concurrency limit).
    refused: bool,
    cold: bool,
    /// What the cold start added.
    cold_ms: f64,
    /// When it reached the place.
    arrive: f64,
    start: f64,
    finish: f64,
}

impl Attempt {
    /// The function's own time: its run without the cold start (what a place reports
    /// and an answer says; a router adds a cold start where the function is not warm).
    fn service_ms(&self) -> f64 {
        self.finish - self.start - self.cold_ms
    }
}

/// Takes a call's own time into the service time a device keeps of its function, as a
/// member's average does ([`averaged`]). A device runs its calls one after another on its
/// one core, so the order they end in is the order they started in.
fn report_service(reported: &mut HashMap<(u32, u32), f64>, k: (u32, u32), took: f64) {
    reported
        .entry(k)
        .and_modify(|m| *m = averaged(Some(*m), took))
        .or_insert(took);
}

/// A site's router: the policy its devices' calls go through, the calls it has in flight
/// at each node, and the places it benched. `'f`: the functions' names its calls carry.
struct SiteRouter<'f> {
    policy: Box<dyn crate::policies::Policy>,
    /// Its calls at each node.
    mine: HashMap<usize, AtNode>,
    bench: Bench,
    /// Arrivals per function (prepare-ahead's forecast), the functions called since the
    /// last forecast, and when each (function, node) was last prepared.
    arrivals: HashMap<u32, Arrivals>,
    recent: Vec<u32>,
    prepared: HashMap<(u32, usize), f64>,
    /// Outcomes on their way back: the router learns each when it comes back, not when
    /// the simulator works it out (calls are simulated in arrival order, and a later
    /// call may arrive before an earlier one's answer).
    coming: BinaryHeap<Reverse<Coming<'f>>>,
    /// Its allowance for hedging calls that run long, as it heard their outcomes.
    retry_budget: RetryBudget,
}

/// One attempt's outcome, which the router hears of at `at`; `call` as it was sent (its
/// time the attempt's start).
struct Coming<'f> {
    at: f64,
    seq: u64,
    call: PolicyCall<'f>,
    place: Where,
    scored: crate::placement::Scored,
    outcome: Outcome,
    bench: bool,
}

impl PartialEq for Coming<'_> {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o).is_eq()
    }
}
impl Eq for Coming<'_> {}
impl PartialOrd for Coming<'_> {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Coming<'_> {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.at.total_cmp(&o.at).then(self.seq.cmp(&o.seq))
    }
}

impl<'f> SiteRouter<'f> {
    fn new(policy: Box<dyn crate::policies::Policy>) -> Self {
        SiteRouter {
            policy,
            mine: HashMap::default(),
            bench: Bench::default(),
            arrivals: HashMap::default(),
            recent: Vec::new(),
            prepared: HashMap::default(),
            coming: BinaryHeap::new(),
            retry_budget: RetryBudget::full(),
        }
    }

    /// The router hears every outcome back by `t`, in the order they came back: its
    /// policy observes each, and benches the place where the outcome says so.
    fn hear_until(&mut self, t: f64, w: &World<'_>) {
        while self.coming.peek().is_some_and(|c| c.0.at <= t) {
            let Some(Reverse(c)) = self.coming.pop() else {
                break;
            };
            let place = place_id(w, c.place);
            self.policy.observe(&c.call, place, &c.scored, &c.outcome);
            self.retry_budget.hear(&c.outcome);
            if c.bench {
                self.bench.bench(place, c.at);
            }
        }
    }
}

/// An attempt's answer to a call (or one to come, from an attempt the call was hedged
/// from): when it is back, where it ran, what it did there, what the plan said of it, and
/// whether it was the call's first attempt.
struct Answer {
    back: f64,
    at: Where,
    a: Attempt,
    scored: Scored,
    first: bool,
}

impl Answer {
    /// The one of `answers` back first.
    fn earliest(answers: &[Answer]) -> Option<usize> {
        (0..answers.len()).min_by(|&x, &y| answers[x].back.total_cmp(&answers[y].back))
    }
}

/// A site router's calls at one node: when each will be back and the service time the
/// router expected of it there, its answers on their way back (when each is back, when
/// the node sent it: the moment whose load it carries, and the function it ran), and
/// those calls as candidate building counts them.
#[derive(Default)]
struct AtNode {
    back: BinaryHeap<Reverse<(u64, u64)>>,
    answers: BinaryHeap<Reverse<(u64, u64, u32)>>,
    mine: Mine,
}

impl AtNode {
    /// The router sent a call there, back at `back`, that it expected to run `service_ms`:
    /// counted in `mine` as the live router counts its calls ([`Mine::sent`]).
    fn sent(&mut self, back: f64, service_ms: f64) {
        self.back
            .push(Reverse((back.to_bits(), service_ms.to_bits())));
        self.mine.sent(service_ms);
    }

    /// Its calls back by `t` are done ([`Mine::done`]).
    fn out_at(&mut self, t: f64) {
        while let Some(&Reverse((b, s))) = self.back.peek() {
            if f64::from_bits(b) > t {
                break;
            }
            self.back.pop();
            self.mine.done(f64::from_bits(s));
        }
    }

    /// `mine` as [`AtNode::out_at`] would leave it, in a copy, keeping the calls back by
    /// `t` (for calls still to come).
    fn out_after(&self, t: f64) -> Mine {
        let mut mine = self.mine;
        for Reverse((b, s)) in &self.back {
            if f64::from_bits(*b) <= t {
                mine.done(f64::from_bits(*s));
            }
        }
        mine
    }
}

/// A place is asked to prepare a function at most this often (as live), ms.
const PREPARE_AGAIN_MS: f64 = 30_000.0;

/// Prepare-ahead, as the live router does it each forecast: for each function called
/// lately whose forecast rate is at least one call a second, the cold place
/// [`crate::forecast::prepare_target`] names loads it (off the call path: warm from then).
fn prepare_ahead(w: &mut World<'_>, router: &mut SiteRouter<'_>, device: u32, now: f64) {
    let mut cands = Vec::new();
    for f in std::mem::take(&mut router.recent) {
        let rate = router
            .arrivals
            .get(&f)
            .map_or(0.0, |a| a.forecast_per_s(now as u64));
        if rate < 1.0 {
            continue;
        }
        let probe = Call {
            t: now,
            device,
            func: f,
            payload_kb: 0.0,
        };
        w.candidates(&probe, now, router, &mut cands, false);
        let infos: Vec<PlaceInfo<'_>> = cands.iter().map(|k| k.info(w)).collect();
        let target = crate::forecast::prepare_target(&infos, rate, |i| {
            matches!(cands[i].at, Where::Node(_))
        });
        let Some(Where::Node(n)) = target.map(|i| cands[i].at) else {
            continue;
        };
        if router
            .prepared
            .get(&(f, n))
            .is_some_and(|t| now - t < PREPARE_AGAIN_MS)
        {
            continue;
        }
        router.prepared.insert((f, n), now);
        let node = &mut w.nodes[n];
        if node.ready_at(f, now, w.s.keepalive_ms).is_some() {
            // Loaded, or loading for a call the reports do not show yet: it stays as it is
            // (the agent's executor loads a module once), warm from now at the latest.
            let last = node.warm.entry(f).or_insert(now);
            *last = last.max(now);
        } else {
            node.warm.insert(f, now);
            // It loads from now, off any call's path: a call that comes meanwhile waits
            // for it.
            node.loaded.insert(f, now + w.funcs[f as usize].cold_ms);
        }
        node.dirty.push(f);
    }
}

struct World<'a> {
    s: &'a Scenario,
    inputs: &'a Inputs,
    funcs: &'a [Func],
    nodes: Vec<Node>,
    /// The planner's key of the device place (`place_key("device")`).
    device_key: u64,
    /// Node indices each site's devices may use (own site and neighbours), then the cloud.
    site_nodes: Vec<Vec<usize>>,
    cloud: usize,
    device_free: Vec<f64>,
    /// Per device, when each of its calls there ends (its calls in flight, as the live
    /// device counts its instances in use).
    device_running: Vec<BinaryHeap<Reverse<u64>>>,
    /// Per (device, function), what it holds loaded ([`Held`]).
    device_warm: HashMap<(u32, u32), Held>,
    device_service: HashMap<(u32, u32), f64>,
    device_site: Vec<usize>,
    /// Per device, per node its site may use (in `site_nodes` order, from `ping_at`): the
    /// last ping's number ([`NEVER_PINGED`] before the first), the smoothed round trip, and
    /// the link's average at that ping ([`World::pinged_rtt`]).
    /// One flat table: a call reads its device's few entries side by side.
    pings: Vec<(u64, f64, f64)>,
    /// Per device, its edge link's and its cloud link's smoothed pings: the last ping's
    /// number and the average ([`World::link_pinged`]).
    link_pings: Vec<[(u64, f64); 2]>,
    ping_at: Vec<usize>,
    ping_interval: f64,
    view: ClusterView,
    alive: Vec<bool>,
    timing: Timing,
    /// The nodes reporting at each tick of a report interval.
    by_phase: Vec<Vec<usize>>,
}

impl<'a> World<'a> {
    fn new(s: &'a Scenario, inputs: &'a Inputs, funcs: &'a [Func], horizon: f64) -> Self {
        let mut rng = Rng::new(mix(&[s.seed, 2]));
        let node = |id: String, tier, site, cores: u32, speed, down| Node {
            key: crate::placement::place_key(&id),
            id,
            tier,
            site,
            cores,
            speed,
            link_ms: 0.0,
            free: (0..cores).map(|_| Reverse(0f64.to_bits())).collect(),
            running: BinaryHeap::new(),
            running_fn: HashMap::default(),
            log: LoadLog::default(),
            warm: HashMap::default(),
            loaded: HashMap::default(),
            service: HashMap::default(),
            ending: BinaryHeap::new(),
            reported_at: 0.0,
            reported_in_flight: 0,
            reported_warm: HashMap::default(),
            reported_service: HashMap::default(),
            dirty: Vec::new(),
            down,
            seq: 0,
            phase: 0,
        };
        let mut nodes = Vec::new();
        for site in 0..s.sites {
            for e in 0..s.edges_per_site {
                let mut down = Vec::new();
                if s.mtbf_s > 0.0 {
                    let mut t = rng.exp(s.mtbf_s * 1e3);
                    while t < horizon {
                        let r = rng.exp(s.mttr_s * 1e3);
                        down.push((t, t + r));
                        t += r + rng.exp(s.mtbf_s * 1e3);
                    }
                }
                let speed = rng.range(s.edge_speed[0], s.edge_speed[1]);
                nodes.push(node(
                    format!("edge-{site}-{e}"),
                    Tier::Edge,
                    site,
                    s.edge_cores,
                    speed,
                    down,
                ));
            }
        }
        let cloud = nodes.len();
        nodes.push(node(
            "cloud".into(),
            Tier::Cloud,
            usize::MAX,
            s.cloud_cores,
            s.cloud_speed,
            Vec::new(),
        ));
        // Peer clusters: pools like the cloud, of the cores they share, one link further.
        let first_peer = nodes.len();
        for p in &s.peers {
            let cores = ((f64::from(p.cores) * p.share).floor() as u32).max(1);
            let mut n = node(
                p.name.clone(),
                Tier::Federated,
                usize::MAX,
                cores,
                p.speed,
                Vec::new(),
            );
            n.link_ms = p.link_ms;
            nodes.push(n);
        }
        let peers = first_peer..nodes.len();
        let mut by_phase = vec![Vec::new(); REPORT_PHASES];
        for (i, n) in nodes.iter_mut().enumerate() {
            n.phase = (mix(&[s.seed, 10, i as u64]) % REPORT_PHASES as u64) as usize;
            by_phase[n.phase].push(i);
        }
        let ns = s.neighbor_sites.min(s.sites / 2);
        let site_nodes: Vec<Vec<usize>> = (0..s.sites)
            .map(|site| {
                let mut v = Vec::new();
                for d in 0..=2 * ns {
                    let other = (site + s.sites + d - ns) % s.sites;
                    if d != ns && other == site {
                        continue;
                    }
                    for e in 0..s.edges_per_site {
                        let i = other * s.edges_per_site + e;
                        if !v.contains(&i) {
                            v.push(i);
                        }
                    }
                }
                v.push(cloud);
                v.extend(peers.clone());
                v
            })
            .collect();
        let device_site: Vec<usize> = (0..s.devices)
            .map(|d| (mix(&[s.seed, 3, d as u64]) % s.sites as u64) as usize)
            .collect();
        let mut ping_at = Vec::with_capacity(s.devices);
        let mut slots = 0;
        for site in &device_site {
            ping_at.push(slots);
            slots += site_nodes[*site].len();
        }
        let alive = vec![true; nodes.len()];
        World {
            s,
            inputs,
            funcs,
            nodes,
            device_key: crate::placement::place_key("device"),
            site_nodes,
            cloud,
            device_free: vec![0.0; s.devices],
            device_running: (0..s.devices).map(|_| BinaryHeap::new()).collect(),
            device_warm: HashMap::default(),
            device_service: HashMap::default(),
            device_site,
            pings: vec![(NEVER_PINGED, 0.0, 0.0); slots],
            link_pings: vec![[(NEVER_PINGED, 0.0); 2]; s.devices],
            ping_at,
            ping_interval: s.ping_interval() as f64,
            view: ClusterView::new(),
            alive,
            timing: Timing::for_interval(s.report_interval_ms),
            by_phase,
        }
    }

    /// Whether node `i`'s load per core moved by [`crate::mesh::EARLY_REPORT_LOAD`] or more
    /// since its last report, or a function it had not reported warm is loaded now.
    fn changed_a_lot(&mut self, i: usize, now: f64) -> bool {
        let keepalive = self.s.keepalive_ms;
        let n = &mut self.nodes[i];
        let cores = f64::from(n.cores.max(1));
        let moved = (n.outstanding(now) as f64 - f64::from(n.reported_in_flight)).abs() / cores;
        moved >= crate::mesh::EARLY_REPORT_LOAD
            || n.dirty
                .iter()
                .any(|&f| !n.loading(f, now) && !n.reports_warm(f, keepalive))
    }

    /// Node `i` reports its load, warm functions and their service times at `now`.
    fn report(&mut self, i: usize, now: f64) {
        let now_ms = now as u64;
        let in_flight = self.nodes[i].outstanding(now) as u32;
        let n = &mut self.nodes[i];
        n.seq += 1;
        n.reported_at = now;
        n.reported_in_flight = in_flight;
        while let Some(&Reverse((end, f, took, ticket))) = n.ending.peek() {
            if f64::from_bits(end) > now {
                break;
            }
            n.ending.pop();
            n.service
                .entry(f)
                .or_default()
                .end(ticket, Some(f64::from_bits(took)));
            n.dirty.push(f);
        }
        for f in std::mem::take(&mut n.dirty) {
            if n.loading(f, now) {
                // Still loading: warm from a report after it is loaded (the agent's
                // executors say warm what they have loaded).
                if !n.dirty.contains(&f) {
                    n.dirty.push(f);
                }
            } else if let Some(w) = n.warm.get(&f) {
                n.reported_warm.insert(f, *w);
            }
            if let Some(s) = n.service.get(&f).and_then(ServiceAverage::mean) {
                n.reported_service.insert(f, s);
            }
        }
        self.view.apply(
            LoadReport {
                cores: n.cores,
                speed: n.speed as f32,
                runtimes: vec![crate::Runtime::Wasm],
                in_flight,
                seq: n.seq,
                ..LoadReport::blank(&n.id, n.tier)
            },
            now_ms,
        );
    }

    /// Every live node whose tick of the report interval `tick` is reports its load (and,
    /// as live members do, the warm functions and their service times, which take in a
    /// call's time once it has ended); at the interval's first tick the view ages the
    /// silent ones.
    fn report_round(&mut self, now: f64, tick: usize) {
        let now_ms = now as u64;
        for k in 0..self.by_phase[tick].len() {
            let i = self.by_phase[tick][k];
            if !self.nodes[i].is_down(now) {
                self.report(i, now);
            }
        }
        // And, as a live member checks between its reports, any other whose load moved a
        // lot since its last report, or that loaded a function since, reports at once
        // ([`crate::mesh::LoadReport::changed_a_lot`]).
        for i in 0..self.nodes.len() {
            if self.nodes[i].phase != tick
                && !self.nodes[i].is_down(now)
                && self.changed_a_lot(i, now)
            {
                self.report(i, now);
            }
        }
        if tick != 0 {
            return;
        }
        self.view.tick(now_ms, &self.timing);
        for (i, n) in self.nodes.iter().enumerate() {
            self.alive[i] = self
                .view
                .get(&n.id)
                .is_some_and(|m| m.state == State::Alive);
        }
    }

    /// The access-link round trip of `device` towards a tier at time `t`: drawn from the
    /// sample file once per coherence interval, identical for every policy.
    fn link_rtt(&self, device: u32, cloud: bool, t: f64) -> f64 {
        let epoch = (t / self.s.rtt_coherence_ms) as u64;
        let u = unit(&[self.s.seed, 4, device as u64, u64::from(cloud), epoch]);
        if cloud {
            self.inputs.cloud_rtt.pick(u) + self.s.cloud_extra_ms
        } else {
            self.inputs.edge_rtt.pick(u)
        }
    }

    /// The link a path from `device` to `node` goes over (the cloud's or the edge's) and
    /// the path's own part on top of it.
    fn path_part(&self, device: u32, node: usize) -> (bool, f64) {
        let n = &self.nodes[node];
        match n.tier {
            Tier::Cloud => (true, 0.0),
            Tier::Federated => (true, n.link_ms),
            _ => {
                let extra = if n.site == self.device_site[device as usize] {
                    0.0
                } else {
                    self.s.inter_site_ms
                };
                // Each device sits nearer some nodes of a site than others (0 to 2 ms).
                let lan = 2.0 * unit(&[self.s.seed, 9, device as u64, node as u64]);
                (false, extra + lan)
            }
        }
    }

    /// The round trip from `device` to `node` at `t` (before a call's own jitter).
    fn path_rtt(&self, device: u32, node: usize, t: f64) -> f64 {
        let (cloud, own) = self.path_part(device, node);
        self.link_rtt(device, cloud, t) + own
    }

    /// `device`'s edge or cloud link pinged at every `ping_interval` up to the `k`th and
    /// smoothed ([`smoothed_rtt`]), brought up to date when the device next calls: the
    /// ping number it stands at (`k`, or later if already past) and the average.
    fn link_pinged(&mut self, device: u32, cloud: bool, k: u64) -> (u64, f64) {
        let (last, mut v) = self.link_pings[device as usize][usize::from(cloud)];
        if last != NEVER_PINGED && last >= k {
            return (last, v);
        }
        let from = if last == NEVER_PINGED || k - last > PING_MEMORY {
            let first = k.saturating_sub(PING_MEMORY);
            v = self.link_rtt(device, cloud, first as f64 * self.ping_interval);
            first + 1
        } else {
            last + 1
        };
        for e in from..=k {
            v = smoothed_rtt(
                Some(v),
                self.link_rtt(device, cloud, e as f64 * self.ping_interval),
            );
        }
        self.link_pings[device as usize][usize::from(cloud)] = (k, v);
        (k, v)
    }

    /// The round trip the router knows for `device` to `node` at `t`: pings every
    /// `ping_interval` (the first when the place is first considered), smoothed as the
    /// live mesh smooths them ([`smoothed_rtt`]).
    /// `slot`: the node's place in the device's site's `site_nodes`.
    ///
    /// A path's pings are its link's plus the path's own fixed part, and the smoothing is
    /// linear, so the link's average (kept once per device and link) carries every node's:
    /// after `n` pings, `v = L + k^n (v0 - L0) + (1 - k^n) own`, with `k` [`RTT_KEEP`] and
    /// `L`, `L0` the link's average now and at the node's last ping. A call costs one step
    /// per ping missed on each link, not one per ping and node.
    fn pinged_rtt(&mut self, device: u32, slot: usize, node: usize, t: f64) -> f64 {
        let k = (t / self.ping_interval) as u64;
        let key = self.ping_at[device as usize] + slot;
        let (last, v0, l0) = self.pings[key];
        if last != NEVER_PINGED && last >= k {
            return v0;
        }
        let (cloud, own) = self.path_part(device, node);
        let (now, l) = self.link_pinged(device, cloud, k);
        let v = if last == NEVER_PINGED {
            // The first ping, at once.
            self.link_rtt(device, cloud, t) + own
        } else if now - last > PING_MEMORY {
            l + own
        } else {
            let w = RTT_KEEP.powi((now - last) as i32);
            l + w * (v0 - l0) + (1.0 - w) * own
        };
        self.pings[key] = (now, v, l);
        v
    }

    fn service(&self, call: usize, func: u32, speed: f64) -> f64 {
        self.funcs[func as usize].exec_ms * self.noise(call) / speed
    }

    /// The factor by which `call`'s run strays from its function's mean time at a place
    /// (log-normal, mean 1; the same wherever and however often the call runs).
    fn noise(&self, call: usize) -> f64 {
        let (u1, u2) = (
            unit(&[self.s.seed, 5, call as u64]).max(1e-12),
            unit(&[self.s.seed, 6, call as u64]),
        );
        let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        let sigma = self.s.service_noise;
        (sigma * z - sigma * sigma / 2.0).exp()
    }

    /// What running `call` at `w`, sent at `ta`, would do (nothing is changed).
    fn attempt(&mut self, id: usize, c: &Call, w: Where, ta: f64) -> Attempt {
        let f = self.funcs[c.func as usize];
        match w {
            Where::Device => {
                let start = ta.max(self.device_free[c.device as usize]);
                let cold = self
                    .device_warm
                    .get(&(c.device, c.func))
                    .is_none_or(|h| start - h.last > self.s.keepalive_ms);
                let finish = start
                    + self.service(id, c.func, self.s.device_speed)
                    + if cold { f.cold_ms } else { 0.0 };
                Attempt {
                    done: finish,
                    failed: false,
                    refused: false,
                    cold,
                    cold_ms: if cold { f.cold_ms } else { 0.0 },
                    arrive: ta,
                    start,
                    finish,
                }
            }
            Where::Node(i) => {
                let jitter = 1.0
                    + self.s.rtt_jitter
                        * (2.0 * unit(&[self.s.seed, 7, id as u64, i as u64]) - 1.0);
                let rtt = self.path_rtt(c.device, i, ta) * jitter;
                let transfer = f64::from(c.payload_kb) / self.s.bandwidth_kb_per_ms;
                let arrive = ta + rtt / 2.0 + transfer / 2.0;
                // The cloud is a pool of edge-sized workers, each with the per-function
                // limit (as Swarm workers are); a node's capacity is per core.
                let workers = if matches!(self.nodes[i].tier, Tier::Cloud | Tier::Federated) {
                    self.nodes[i].cores.div_ceil(self.s.edge_cores).max(1)
                } else {
                    1
                };
                let (limit, capacity) = (
                    (self.s.function_concurrency * workers) as usize,
                    self.nodes[i].cores as usize * self.s.queue_per_core as usize,
                );
                let n = &mut self.nodes[i];
                if n.outstanding(arrive) >= capacity || n.outstanding_fn(c.func, arrive) >= limit {
                    return Attempt {
                        done: arrive + rtt / 2.0,
                        failed: false,
                        refused: true,
                        cold: false,
                        cold_ms: 0.0,
                        arrive,
                        start: arrive,
                        finish: arrive,
                    };
                }
                let start = arrive.max(n.next_free());
                // Not loaded: it loads; loading still (for a call before it, or ahead): the
                // rest of it.
                let cold_ms = n
                    .ready_at(c.func, start, self.s.keepalive_ms)
                    .map_or(f.cold_ms, |r| (r - start).max(0.0));
                let cold = cold_ms > 0.0;
                let speed = n.speed;
                let finish = start + self.service(id, c.func, speed) + cold_ms;
                match self.nodes[i].fails_during(arrive, finish) {
                    Some(at) => Attempt {
                        done: at + self.s.detect_ms,
                        failed: true,
                        refused: false,
                        cold,
                        cold_ms,
                        arrive,
                        start,
                        finish,
                    },
                    None => Attempt {
                        done: finish + rtt / 2.0 + transfer / 2.0,
                        failed: false,
                        refused: false,
                        cold,
                        cold_ms,
                        arrive,
                        start,
                        finish,
                    },
                }
            }
        }
    }

    fn commit(&mut self, c: &Call, w: Where, a: &Attempt) {
        if a.refused {
            return;
        }
        match w {
            Where::Device => {
                self.device_free[c.device as usize] = a.finish;
                self.device_running[c.device as usize].push(Reverse(a.finish.to_bits()));
                let held = self.device_warm.entry((c.device, c.func)).or_insert(Held {
                    loaded: a.finish,
                    last: a.finish,
                });
                held.last = a.finish;
                if a.cold {
                    held.loaded = a.finish;
                }
                report_service(&mut self.device_service, (c.device, c.func), a.service_ms());
            }
            Where::Node(i) => {
                let n = &mut self.nodes[i];
                n.free.pop();
                n.free.push(Reverse(a.finish.to_bits()));
                if a.failed {
                    // The core is lost with the node; it is free again when it returns.
                    return;
                }
                n.running.push(Reverse(a.finish.to_bits()));
                n.log.add(a.arrive, a.finish);
                n.running_fn
                    .entry(c.func)
                    .or_default()
                    .push(Reverse(a.finish.to_bits()));
                n.warm.insert(c.func, a.finish);
                if a.cold {
                    n.loaded.insert(c.func, a.start + a.cold_ms);
                }
                // Calls start at a node in about the order they are committed there.
                let ticket = n.service.entry(c.func).or_default().start();
                n.ending.push(Reverse((
                    a.finish.to_bits(),
                    c.func,
                    a.service_ms().to_bits(),
                    ticket,
                )));
                n.dirty.push(c.func);
            }
        }
    }

    /// Whether node `i` reports in (a, b]: a report round falls there while it is up
    /// (what a router that waited until `b` would have heard).
    fn reports_during(&self, i: usize, a: f64, b: f64) -> bool {
        let interval = (self.s.report_interval_ms as f64).max(1.0);
        let mut r = ((a / interval).floor() + 1.0) * interval;
        while r <= b {
            if !self.nodes[i].is_down(r) {
                return true;
            }
            r += interval;
        }
        false
    }

    /// What the call would really take at each of `cands` if sent at `t` (the oracle's
    /// knowledge).
    fn truths(&mut self, id: usize, c: &Call, t: f64, cands: &mut [Cand]) {
        for cand in cands {
            let a = self.attempt(id, c, cand.at, t);
            cand.truth_ms = Some(if a.failed || a.refused {
                f64::INFINITY
            } else {
                a.done - t
            });
        }
    }

    /// Node `i` as its last report shows it.
    fn seen(&self, i: usize) -> Seen<'_> {
        Seen {
            node: &self.nodes[i],
            alive: self.alive[i],
            keepalive: self.s.keepalive_ms,
        }
    }

    /// The places a router would list for `c` at `t`, from what it knows: the view's
    /// live members less the benched, each with its last report (in flight, or what its
    /// last answer back since said, brought up to date with the router's own calls sent
    /// and back since; warm functions and service times as of the report), the pinged
    /// round trip, and the device itself (which knows its own state). `ahead`: `t` is past
    /// calls still to come (a call's places listed again after its first were tried): the
    /// router's records of its calls are read as of `t` but kept for those calls.
    fn candidates(
        &mut self,
        c: &Call,
        t: f64,
        router: &mut SiteRouter<'_>,
        out: &mut Vec<Cand>,
        ahead: bool,
    ) {
        out.clear();
        let site = self.device_site[c.device as usize];
        let wants = Wants {
            function: &c.func,
            key: u64::from(c.func),
            runtime: crate::Runtime::Wasm,
            tier: None,
        };
        for k in 0..self.site_nodes[site].len() {
            let i = self.site_nodes[site][k];
            if !listed(&self.seen(i), &wants, &router.bench, t) {
                continue;
            }
            let rtt_ms = self.pinged_rtt(c.device, k, i, t);
            let at = router.mine.entry(i).or_default();
            if ahead {
                let mut mine = at.out_after(t);
                let x = facts(&self.seen(i), &wants, &mut mine, Some(rtt_ms));
                out.push(Cand::node(i, &x));
                continue;
            }
            at.out_at(t);
            // The answers back since that the node sent after its last report: the newest
            // says the node's load when it sent it, and each a function warm there that
            // the report does not list.
            let mut sent = None;
            while let Some(Reverse((b, s, func))) = at.answers.peek().copied() {
                if f64::from_bits(b) > t {
                    break;
                }
                at.answers.pop();
                let s = f64::from_bits(s);
                if s > self.nodes[i].reported_at {
                    sent = Some(s.max(sent.unwrap_or(0.0)));
                    at.mine.answered(self.nodes[i].seq, u64::from(func));
                }
            }
            if let Some(s) = sent {
                if let Some(load) = self.nodes[i].log.at(s) {
                    at.mine.heard(self.nodes[i].seq, load);
                }
            }
            let x = facts(&self.seen(i), &wants, &mut at.mine, Some(rtt_ms));
            out.push(Cand::node(i, &x));
        }
        if self.s.device_speed > 0.0 {
            let busy = self.device_free[c.device as usize] > t;
            // Its calls in flight (queued behind each other on its one core), at least
            // one while it is busy loading a function.
            let running = &mut self.device_running[c.device as usize];
            let calls = if ahead {
                count_after(running, t)
            } else {
                drain_until(running, t)
            };
            let load = (calls as f64).max(if busy { 1.0 } else { 0.0 });
            out.push(Cand {
                at: Where::Device,
                tier: Tier::Device,
                rtt_ms: 0.0,
                load_per_core: load,
                cores: 1,
                speed: self.s.device_speed,
                warm: self
                    .device_warm
                    .get(&(c.device, c.func))
                    .is_some_and(|h| h.loaded <= t && t - h.last <= self.s.keepalive_ms),
                service_ms: self.device_service.get(&(c.device, c.func)).copied(),
                truth_ms: None,
                own: Own::default(),
            });
        }
    }
}

/// A function a device holds: since when it is loaded there (the end of the run that
/// loaded it, or of a load ahead), and when its last run there ends (its keepalive runs
/// from then). A live device-mode router counts a function warm on its device once a run
/// of it there is done (it has its service time): a call that comes while the first run
/// is under way is planned as cold.
#[derive(Debug, Clone, Copy)]
struct Held {
    loaded: f64,
    last: f64,
}

/// A node as its last report shows it (what candidate building reads).
struct Seen<'n> {
    node: &'n Node,
    alive: bool,
    keepalive: f64,
}

impl Reported<u32> for Seen<'_> {
    fn id(&self) -> &str {
        &self.node.id
    }
    fn seq(&self) -> u64 {
        self.node.seq
    }
    fn tier(&self) -> Tier {
        self.node.tier
    }
    fn alive(&self) -> bool {
        self.alive
    }
    fn runs(&self, _runtime: crate::Runtime) -> bool {
        true
    }
    fn load(&self) -> u32 {
        self.node.reported_in_flight
    }
    fn cores(&self) -> u32 {
        self.node.cores
    }
    fn speed(&self) -> f32 {
        self.node.speed as f32
    }
    fn warm(&self, f: &u32) -> bool {
        self.node.reports_warm(*f, self.keepalive)
    }
    fn service_ms(&self, f: &u32) -> Option<f64> {
        self.node.reported_service.get(f).copied()
    }
}

fn place_name(w: &World<'_>, at: Where) -> &'static str {
    match at {
        Where::Device => "device",
        Where::Node(i) if i == w.cloud => "cloud",
        Where::Node(i) if w.nodes[i].tier == Tier::Federated => "federated",
        Where::Node(_) => "edge",
    }
}

fn place_id<'w>(w: &'w World<'_>, at: Where) -> &'w str {
    match at {
        Where::Node(i) => &w.nodes[i].id,
        Where::Device => "device",
    }
}

/// The planner's key of [`place_id`].
fn place_key(w: &World<'_>, at: Where) -> u64 {
    match at {
        Where::Node(i) => w.nodes[i].key,
        Where::Device => w.device_key,
    }
}

fn run_policy(
    s: &Scenario,
    inputs: &Inputs,
    wl: &Workload,
    p: Policy,
    horizon: f64,
    keep: bool,
) -> PolicyResult {
    run_built(s, inputs, wl, p, horizon, keep, &|| p.build(128))
}

/// [`run_policy`] with each site router's policy from `build` (`p` still says whether it
/// is the oracle). `keep`: whether the result keeps every measured call's latency.
fn run_built(
    s: &Scenario,
    inputs: &Inputs,
    wl: &Workload,
    p: Policy,
    horizon: f64,
    keep: bool,
    build: &dyn Fn() -> Box<dyn crate::policies::Policy>,
) -> PolicyResult {
    let mut w = World::new(s, inputs, &wl.funcs, horizon);
    let fnames: Vec<String> = (0..wl.funcs.len()).map(|f| format!("f{f}")).collect();
    let mut routers: Vec<SiteRouter<'_>> = (0..s.sites).map(|_| SiteRouter::new(build())).collect();
    // Each site's first device stands for its devices when its router prepares ahead. And
    // a site's router places all its devices' calls: its device place stands for them all,
    // and a function stays loaded on one for the scenario's keepalive.
    let mut site_device = vec![None; s.sites];
    let mut site_devices = vec![0usize; s.sites];
    for (d, site) in w.device_site.iter().enumerate() {
        site_device[*site].get_or_insert(d as u32);
        site_devices[*site] += 1;
    }
    for (r, n) in routers.iter_mut().zip(&site_devices) {
        r.policy.set_reuse(crate::placement::Reuse {
            keepalive_ms: s.keepalive_ms,
            device_callers: (*n).max(1) as f64,
        });
    }
    let weights = Weights {
        explore: s.explore,
        ..Weights::default()
    };
    let mut cands = Vec::new();
    let mut roll_rng = Rng::new(mix(&[s.seed, 8]));
    let interval = s.report_interval_ms as f64;
    let mut next_report = 0.0;
    // The continuum ran before the first call: every member has reported (idle, as of
    // the start) when it comes. Those whose tick is the first report again in the loop.
    for tick in 1..REPORT_PHASES {
        w.report_round(0.0, tick);
    }
    let mut tick = 0usize;
    let skip = (wl.calls.len() as f64 * s.warmup) as usize;
    let mut lat = Vec::with_capacity(wl.calls.len() - skip);
    let mut latencies = Vec::with_capacity(if keep { lat.capacity() } else { 0 });
    // Relative errors of first attempts' predictions: every one, and those where the chosen
    // place's model had already seen the function run there.
    let mut errors = Vec::new();
    let mut errors_seen = Vec::new();
    let mut floor = Vec::new();
    let mut tiers: BTreeMap<&'static str, u64> = BTreeMap::new();
    let (mut cold, mut retries, mut failed, mut missed, mut refusals, mut relisted) =
        (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    let mut seq = 0u64;
    for (id, c) in wl.calls.iter().enumerate() {
        while next_report <= c.t {
            let now = next_report;
            for r in &mut routers {
                r.hear_until(now, &w);
            }
            w.report_round(now, tick % REPORT_PHASES);
            tick += 1;
            next_report = tick as f64 * interval / REPORT_PHASES as f64;
            if tick % REPORT_PHASES != 1 {
                continue;
            }
            if s.prepare_ahead {
                for (site, r) in routers.iter_mut().enumerate() {
                    if let Some(d) = site_device[site] {
                        prepare_ahead(&mut w, r, d, now);
                    }
                }
            }
            if (tick / REPORT_PHASES + 1).is_multiple_of(4) {
                for r in &mut routers {
                    r.policy.housekeeping();
                    r.bench.prune(next_report);
                }
            }
        }
        let site = w.device_site[c.device as usize];
        let router = &mut routers[site];
        if s.prepare_ahead {
            router
                .arrivals
                .entry(c.func)
                .or_insert_with(|| Arrivals::new(1000, 10))
                .record(c.t as u64);
            if !router.recent.contains(&c.func) {
                router.recent.push(c.func);
            }
        }
        router.hear_until(c.t, &w);
        w.candidates(c, c.t, router, &mut cands, false);
        let counted = id >= skip;
        if cands.is_empty() {
            failed += u64::from(counted);
            continue;
        }
        if p == Policy::Oracle {
            w.truths(id, c, c.t, &mut cands);
        }
        let fname = &fnames[c.func as usize];
        let call = PolicyCall {
            function: fname,
            request_kb: f64::from(c.payload_kb) / 2.0,
            deadline_ms: Some(s.deadline_ms),
            weights,
            now_ms: c.t,
        };
        let plan = {
            let infos: Vec<PlaceInfo<'_>> = cands.iter().map(|k| k.info(&w)).collect();
            router.policy.plan(&call, &infos, roll_rng.f64())
        };
        let Some(mut plan) = plan else {
            failed += u64::from(counted);
            continue;
        };
        if plan.load_device {
            // The device loads the function off the call's path (its core busy meanwhile):
            // warm from then.
            let cold = w.funcs[c.func as usize].cold_ms;
            let free = &mut w.device_free[c.device as usize];
            *free = free.max(c.t) + cold;
            let ready = *free;
            w.device_warm.insert(
                (c.device, c.func),
                Held {
                    loaded: ready,
                    last: ready,
                },
            );
        }
        let mut attempts = Attempts::new(&plan, c.t, s.timeout_ms, true);
        let mut ta = c.t;
        // Attempts the call was hedged from that will answer.
        let mut hedged: Vec<Answer> = Vec::new();
        let outcome = loop {
            let i = attempts.current();
            let at = cands[i].at;
            let a = w.attempt(id, c, at, ta);
            w.commit(c, at, &a);
            let patience = attempts.patience_ms(&plan, ta, &router.retry_budget);
            let took = a.done - ta;
            if let Some(k) =
                Answer::earliest(&hedged).filter(|&k| hedged[k].back < a.done.min(ta + patience))
            {
                // An attempt hedged from answers first: it is the call's answer; this one
                // goes on (its work is done at its place) unheard, as live.
                let h = hedged.swap_remove(k);
                if let (Where::Node(n), false) = (at, a.refused) {
                    router
                        .mine
                        .entry(n)
                        .or_default()
                        .sent(h.back, plan.scored[i].features.service_ms);
                }
                break Some(h);
            }
            let (outcome, now) = if a.refused {
                refusals += u64::from(counted);
                (Outcome::Refused { status: 429 }, a.done)
            } else if a.failed && took <= patience {
                (
                    Outcome::Lost {
                        sent: true,
                        after_ms: took,
                    },
                    a.done,
                )
            } else if took > patience {
                // Hedged: it goes on at its place, and answers there unless it fails.
                if !a.failed {
                    hedged.push(Answer {
                        back: a.done,
                        at,
                        a,
                        scored: plan.scored[i],
                        first: attempts.first(),
                    });
                }
                (Outcome::TimedOut { after_ms: patience }, ta + patience)
            } else {
                (
                    Outcome::Answered {
                        took_ms: took,
                        service_ms: Some(a.service_ms()),
                        response_kb: Some(f64::from(c.payload_kb) / 2.0),
                        cold: a.cold,
                    },
                    a.done,
                )
            };
            if let Where::Node(n) = at {
                if !a.refused {
                    let calls = router.mine.entry(n).or_default();
                    calls.sent(now, plan.scored[i].features.service_ms);
                    if let Outcome::Answered { .. } = outcome {
                        calls
                            .answers
                            .push(Reverse((now.to_bits(), a.finish.to_bits(), c.func)));
                    }
                }
            }
            // Whether the place reported while the call was there. The device sends no
            // reports (as live: a call run on the device itself has no member to hear from).
            let heard = || match at {
                Where::Device => false,
                Where::Node(n) => w.reports_during(n, ta, now),
            };
            let bench = attempts.benches(&plan, &outcome, heard);
            seq += 1;
            router.coming.push(Reverse(Coming {
                at: now,
                seq,
                call: PolicyCall { now_ms: ta, ..call },
                place: at,
                scored: plan.scored[i],
                outcome,
                bench,
            }));
            match attempts.next(&plan, &outcome, now) {
                Next::Done => {
                    break Some(Answer {
                        back: now,
                        at,
                        a,
                        scored: plan.scored[i],
                        first: attempts.first(),
                    })
                }
                Next::Wait => break Answer::earliest(&hedged).map(|k| hedged.swap_remove(k)),
                Next::Retry(_) => {
                    retries += u64::from(counted);
                    ta = now;
                }
                Next::Relist => {
                    // Places listed again, less those tried, planned as `Call::relisted`
                    // with what the router heard back by now. (Calls still to simulate
                    // that arrive before `now` hear it too: relisting is rare enough.)
                    router.hear_until(now, &w);
                    let tried: Vec<Where> = attempts.tried().iter().map(|&k| cands[k].at).collect();
                    w.candidates(c, now, router, &mut cands, true);
                    cands.retain(|k| !tried.contains(&k.at));
                    if p == Policy::Oracle {
                        w.truths(id, c, now, &mut cands);
                    }
                    let infos: Vec<PlaceInfo<'_>> = cands.iter().map(|k| k.info(&w)).collect();
                    let Some(q) = router.policy.plan(&call.relisted(now), &infos, 0.5) else {
                        break None;
                    };
                    relisted += u64::from(counted);
                    attempts = attempts.relisted(&q);
                    plan = q;
                    retries += u64::from(counted);
                    ta = now;
                }
                Next::Fail(_) => break None,
            }
        };
        let Some(Answer {
            back: done,
            at,
            a,
            scored,
            first,
        }) = outcome
        else {
            failed += u64::from(counted);
            continue;
        };
        let latency = done - c.t;
        if first && counted && scored.source != Source::Score {
            // The call's first attempt answered it (at once, or after the call was hedged
            // from it): its prediction missed by as much.
            let pr = scored.predicted_ms;
            let e = ((pr - latency).abs() / latency.max(1e-3)) as f32;
            errors.push(e);
            // What a prediction that knew all but the run's own straying would have
            // missed by: the run against its place's mean time for it.
            let run = a.service_ms();
            floor.push(((run - run / w.noise(id)).abs() / latency.max(1e-3)) as f32);
            if scored.observations > 0 {
                errors_seen.push(e);
            }
        }
        if counted {
            lat.push(latency as f32);
            if keep {
                latencies.push(Measured {
                    call: id as u32,
                    function: c.func,
                    latency_ms: latency as f32,
                    tier: place_name(&w, at),
                    attempts: attempts.made() as u32,
                    cold: a.cold,
                    wait_ms: (a.start - a.arrive) as f32,
                    run_ms: a.service_ms() as f32,
                    predicted_ms: (scored.source != Source::Score)
                        .then_some(scored.predicted_ms as f32),
                });
            }
            *tiers.entry(place_name(&w, at)).or_insert(0) += 1;
            cold += u64::from(a.cold);
            missed += u64::from(latency > s.deadline_ms);
        }
    }
    let n = lat.len().max(1) as f64;
    let mut sorted = lat;
    sorted.sort_by(f32::total_cmp);
    let q = |p: f64| -> f64 {
        if sorted.is_empty() {
            return f64::NAN;
        }
        f64::from(sorted[((p * (sorted.len() - 1) as f64).round() as usize).min(sorted.len() - 1)])
    };
    let mean = sorted.iter().map(|v| f64::from(*v)).sum::<f64>() / n;
    let median = |errors: &mut Vec<f32>| match p {
        Policy::Oracle => Some(0.0),
        _ if !errors.is_empty() => {
            let mid = errors.len() / 2;
            let (_, m, _) = errors.select_nth_unstable_by(mid, f32::total_cmp);
            Some(f64::from(*m))
        }
        _ => None,
    };
    let prediction_error = median(&mut errors);
    let prediction_error_seen = median(&mut errors_seen);
    // The oracle misses by nothing, and has no floor: it knows how each run strays.
    let prediction_error_floor = match p {
        Policy::Oracle => None,
        _ => median(&mut floor),
    };
    let total: u64 = tiers.values().sum::<u64>().max(1);
    PolicyResult {
        name: p.name(),
        p50_ms: q(0.50),
        p95_ms: q(0.95),
        p99_ms: q(0.99),
        mean_ms: mean,
        deadline_miss: missed as f64 / n,
        tier_share: ["device", "edge", "cloud", "federated"]
            .into_iter()
            .filter(|t| *t != "federated" || !s.peers.is_empty())
            .map(|t| (t, *tiers.get(t).unwrap_or(&0) as f64 / total as f64))
            .collect(),
        cold_starts: cold,
        prediction_error,
        prediction_error_seen,
        prediction_error_floor,
        retries,
        refusals,
        relisted,
        failed,
        cdf_ms: CDF_AT.iter().map(|p| q(*p)).collect(),
        latencies,
    }
}

/// The shares of calls [`PolicyResult::cdf_ms`] gives the latency at.
pub const CDF_AT: [f64; 23] = [
    0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.92, 0.94, 0.95, 0.96,
    0.97, 0.98, 0.99, 0.995, 0.999, 1.0,
];

/// The scenario's calls, offered against the edge tier's expected capacity (cores times
/// mean speed, per ms of work), and the time the run may go to.
fn workload(s: &Scenario, inputs: &Inputs) -> (Workload, f64) {
    let mean_speed = (s.edge_speed[0] + s.edge_speed[1]) / 2.0;
    let edge_capacity = (s.sites * s.edges_per_site) as f64 * f64::from(s.edge_cores) * mean_speed;
    let wl = generate(s, inputs, edge_capacity);
    let horizon = wl.calls.last().map_or(0.0, |c| c.t) + 600_000.0;
    (wl, horizon)
}

/// Runs every policy in `policies` on the scenario; deterministic for a seed.
pub fn run(s: &Scenario, inputs: &Inputs, policies: &[Policy]) -> Report {
    run_on(s, inputs, policies, 1)
}

/// [`run`], with the policies shared among up to `threads` threads. Each policy's run is
/// independent of the others (its own world and random streams over the same workload), so
/// the report is the same whatever the number of threads; only the wall time and the peak
/// memory (one world per thread) change.
pub fn run_on(s: &Scenario, inputs: &Inputs, policies: &[Policy], threads: usize) -> Report {
    run_threads(s, inputs, policies, threads, false)
}

/// [`run_on`], each policy's result keeping every measured call's latency
/// ([`PolicyResult::latencies`]).
pub fn run_keeping_latencies(
    s: &Scenario,
    inputs: &Inputs,
    policies: &[Policy],
    threads: usize,
) -> Report {
    run_threads(s, inputs, policies, threads, true)
}

fn run_threads(
    s: &Scenario,
    inputs: &Inputs,
    policies: &[Policy],
    threads: usize,
    keep: bool,
) -> Report {
    let (wl, horizon) = workload(s, inputs);
    // Workers take the next policy not yet taken; results go back in the given order.
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut done: Vec<(usize, PolicyResult)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads.clamp(1, policies.len().max(1)))
            .map(|_| {
                scope.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(p) = policies.get(i) else { break mine };
                        mine.push((i, run_policy(s, inputs, &wl, *p, horizon, keep)));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| match w.join() {
                Ok(results) => results,
                // A panic in a policy's run is a bug; carry it to the caller unchanged.
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .collect()
    });
    done.sort_by_key(|(i, _)| *i);
    let policies = done.into_iter().map(|(_, r)| r).collect();
    Report {
        scenario: s.name.clone(),
        seed: s.seed,
        invocations: wl.calls.len(),
        edge_nodes: s.sites * s.edges_per_site,
        devices: s.devices,
        offered_utilisation: wl.offered,
        simulated_s: wl.calls.last().map_or(0.0, |c| c.t) / 1e3,
        policies,
    }
}

impl Report {
    /// The comparison as a text table.
    pub fn table(&self) -> String {
        let peers = self
            .policies
            .iter()
            .any(|p| p.tier_share.contains_key("federated"));
        let mut out = format!(
            "scenario {}: {} invocations over {:.0} s simulated, {} edge nodes, {} devices, offered load {:.0} % of the edge tier (seed {})\n",
            self.scenario,
            self.invocations,
            self.simulated_s,
            self.edge_nodes,
            self.devices,
            self.offered_utilisation * 100.0,
            self.seed
        );
        out.push_str(&format!(
            "{:<13} {:>9} {:>9} {:>9} {:>9} {:>8} {:>22} {:>8} {:>8} {:>7} {:>7}\n",
            "POLICY",
            "P50 ms",
            "P95 ms",
            "P99 ms",
            "MEAN ms",
            "MISS %",
            if peers {
                "DEVICE/EDGE/CLOUD/PEER %"
            } else {
                "DEVICE/EDGE/CLOUD %"
            },
            "COLD",
            "PRED ERR",
            "RETRIES",
            "429S"
        ));
        for p in &self.policies {
            let share = |t: &str| p.tier_share.get(t).copied().unwrap_or(0.0) * 100.0;
            out.push_str(&format!(
                "{:<13} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>8.2} {:>22} {:>8} {:>8} {:>7} {:>7}\n",
                p.name,
                p.p50_ms,
                p.p95_ms,
                p.p99_ms,
                p.mean_ms,
                p.deadline_miss * 100.0,
                if peers {
                    format!(
                        "{:.0}/{:.0}/{:.0}/{:.0}",
                        share("device"),
                        share("edge"),
                        share("cloud"),
                        share("federated")
                    )
                } else {
                    format!(
                        "{:.0}/{:.0}/{:.0}",
                        share("device"),
                        share("edge"),
                        share("cloud")
                    )
                },
                p.cold_starts,
                p.prediction_error
                    .map_or("-".to_string(), |e| format!("{:.1}%", e * 100.0)),
                p.retries,
                p.refusals,
            ));
        }
        for p in &self.policies {
            if let (Some(e), Some(floor)) = (p.prediction_error, p.prediction_error_floor) {
                out.push_str(&format!(
                    "{}: prediction error {:.1}%, against {:.1}% for a prediction that knew all but how each run strays (service_noise)\n",
                    p.name,
                    e * 100.0,
                    floor * 100.0
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> Inputs {
        let rtt =
            |base: f64| Samples::from_values((0..200).map(|i| base + (i % 20) as f64).collect());
        Inputs {
            edge_rtt: rtt(5.0),
            cloud_rtt: rtt(15.0),
            workload: WorkloadData::Azure {
                exec: Cdf::parse("e", "1,0\n50,0.5\n400,1\n").unwrap(),
                popularity: Cdf::parse("p", "1,0\n100,0.9\n10000,1\n").unwrap(),
                cv: Cdf::parse("c", "0.5,0\n1,0.5\n4,1\n").unwrap(),
            },
        }
    }

    /// One function of `exec_ms` that starts with no cold cost.
    fn warm_func(exec_ms: f64) -> [Func; 1] {
        [Func {
            exec_ms,
            cold_ms: 0.0,
        }]
    }

    fn scenario(n: usize) -> Scenario {
        let mut s = Scenario::parse(
            "t.toml",
            "version = 1\nedge_rtt = \"e\"\ncloud_rtt = \"c\"\n[workload]\nexec_cdf = \"x\"\npopularity_cdf = \"y\"\ncv_cdf = \"z\"\n",
        )
        .unwrap();
        s.invocations = n;
        s.devices = 200;
        s.sites = 4;
        s.functions = 20;
        s
    }

    #[test]
    fn a_node_says_its_load_at_a_moment_past() {
        let mut log = LoadLog::default();
        // Logged in the order calls are simulated: the second arrives first.
        log.add(10.0, 50.0);
        log.add(5.0, 20.0);
        log.add(30.0, 40.0);
        let at = |t| log.at(t);
        assert_eq!(
            (
                at(0.0),
                at(5.0),
                at(15.0),
                at(20.0),
                at(35.0),
                at(45.0),
                at(50.0)
            ),
            (
                Some(0),
                Some(1),
                Some(2),
                Some(1),
                Some(2),
                Some(1),
                Some(0)
            )
        );
        // Past 512 calls it drops what is older than its horizon, and still counts a call
        // admitted before the horizon that runs past it.
        for k in 0..600 {
            let t = 100.0 + f64::from(k) * 100.0;
            log.add(t, if k == 0 { 1e9 } else { t + 50.0 });
        }
        assert!(log.admits.len() < 512, "{}", log.admits.len());
        assert_eq!(log.at(5.0), None, "before the horizon");
        assert_eq!(
            log.at(59_925.0),
            Some(1 + 1),
            "the long call and one at 59,900"
        );
        assert_eq!(log.at(59_975.0), Some(1));
    }

    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
    use std::sync::Arc;

    /// The regression policy, telling what it heard: the latest moment an outcome it
    /// observed came back.
    struct Heard {
        inner: Box<dyn crate::policies::Policy>,
        latest: Arc<AtomicU64>,
        plans: Arc<AtomicUsize>,
    }

    impl crate::policies::Policy for Heard {
        fn kind(&self) -> crate::policies::Kind {
            self.inner.kind()
        }
        fn plan(
            &mut self,
            call: &PolicyCall<'_>,
            places: &[PlaceInfo<'_>],
            roll: f64,
        ) -> Option<crate::placement::Plan> {
            let latest = f64::from_bits(self.latest.load(Relaxed));
            assert!(
                latest <= call.now_ms,
                "planned at {} knowing an outcome back at {latest}",
                call.now_ms
            );
            self.plans.fetch_add(1, Relaxed);
            self.inner.plan(call, places, roll)
        }
        fn observe(
            &mut self,
            call: &PolicyCall<'_>,
            place: &str,
            scored: &crate::placement::Scored,
            outcome: &Outcome,
        ) {
            let back = call.now_ms
                + match *outcome {
                    Outcome::Answered { took_ms, .. } => took_ms,
                    Outcome::TimedOut { after_ms } | Outcome::Lost { after_ms, .. } => after_ms,
                    _ => 0.0,
                };
            let latest = f64::from_bits(self.latest.load(Relaxed)).max(back);
            self.latest.store(latest.to_bits(), Relaxed);
            self.inner.observe(call, place, scored, outcome);
        }
        fn housekeeping(&mut self) -> usize {
            self.inner.housekeeping()
        }
        fn set_reuse(&mut self, reuse: crate::placement::Reuse) {
            self.inner.set_reuse(reuse);
        }
    }

    #[test]
    fn a_router_plans_knowing_only_the_outcomes_back_by_then() {
        // Calls overlap: many arrive while earlier ones run, whose outcomes the simulator
        // works out first.
        let s = scenario(3000);
        let inputs = inputs();
        let (wl, horizon) = workload(&s, &inputs);
        let latest = Arc::new(AtomicU64::new(0.0f64.to_bits()));
        let plans = Arc::new(AtomicUsize::new(0));
        let build = || -> Box<dyn crate::policies::Policy> {
            Box::new(Heard {
                inner: Policy::Regression.build(128),
                latest: latest.clone(),
                plans: plans.clone(),
            })
        };
        let r = run_built(&s, &inputs, &wl, Policy::Regression, horizon, false, &build);
        let heard = f64::from_bits(latest.load(Relaxed));
        assert!(plans.load(Relaxed) >= 3000 && heard > 0.0, "{r:?}");
        // And the same as `run` gives for the policy.
        let direct = run(&s, &inputs, &[Policy::Regression]);
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            serde_json::to_string(&direct.policies[0]).unwrap()
        );
    }

    /// A scenario whose devices run functions, and a call of function 0 from device 0 at 0.
    fn on_device() -> (Scenario, Call) {
        let mut s = scenario(10);
        s.device_speed = 0.5;
        let c = Call {
            t: 0.0,
            device: 0,
            func: 0,
            payload_kb: 1.0,
        };
        (s, c)
    }

    #[test]
    fn a_device_counts_its_calls_in_flight_as_its_load() {
        let (s, c) = on_device();
        let inputs = inputs();
        let funcs = warm_func(400.0);
        let mut w = World::new(&s, &inputs, &funcs, 10_000.0);
        let mut router = SiteRouter::new(Policy::Regression.build(8));
        let mut cands = Vec::new();
        let device_load = |cands: &[Cand]| {
            cands
                .iter()
                .find(|k| k.at == Where::Device)
                .map(|k| k.load_per_core)
        };
        w.candidates(&c, 0.0, &mut router, &mut cands, false);
        assert_eq!(device_load(&cands), Some(0.0));
        // Two calls queued on its one core: the second starts when the first ends.
        for (i, c2) in [c, Call { t: 10.0, ..c }].iter().enumerate() {
            let a = w.attempt(i, c2, Where::Device, c2.t);
            w.commit(c2, Where::Device, &a);
        }
        w.candidates(&c, 20.0, &mut router, &mut cands, false);
        assert_eq!(device_load(&cands), Some(2.0));
        let first_ends = w.device_running[0]
            .iter()
            .map(|b| f64::from_bits(b.0))
            .fold(f64::INFINITY, f64::min);
        w.candidates(&c, first_ends, &mut router, &mut cands, false);
        assert_eq!(device_load(&cands), Some(1.0));
    }

    #[test]
    fn a_device_holds_a_function_warm_once_the_run_that_loaded_it_is_done() {
        // As a live device-mode router: warm once the function has a service time there,
        // not while its first run (the load and the run) is under way.
        let (s, c) = on_device();
        let inputs = inputs();
        let funcs = [Func {
            exec_ms: 100.0,
            cold_ms: 150.0,
        }];
        let mut w = World::new(&s, &inputs, &funcs, 10_000.0);
        let mut router = SiteRouter::new(Policy::Regression.build(8));
        let mut cands = Vec::new();
        let mut device_warm = |w: &mut World<'_>, t: f64| {
            w.candidates(&c, t, &mut router, &mut cands, false);
            cands.iter().find(|k| k.at == Where::Device).map(|k| k.warm)
        };
        assert_eq!(device_warm(&mut w, 0.0), Some(false));
        let a = w.attempt(0, &c, Where::Device, 0.0);
        assert!(a.cold && a.finish > 150.0, "{a:?}");
        w.commit(&c, Where::Device, &a);
        assert_eq!(device_warm(&mut w, 10.0), Some(false), "loading");
        assert_eq!(device_warm(&mut w, a.finish - 1.0), Some(false), "running");
        assert_eq!(device_warm(&mut w, a.finish), Some(true), "done");
        // A warm call after it leaves it warm while it runs.
        let again = Call { t: a.finish, ..c };
        let b = w.attempt(1, &again, Where::Device, a.finish);
        assert!(!b.cold, "{b:?}");
        w.commit(&again, Where::Device, &b);
        assert_eq!(device_warm(&mut w, a.finish + 1.0), Some(true));
    }

    #[test]
    fn a_pinged_round_trip_is_every_ping_smoothed_in_turn() {
        let mut s = scenario(10);
        s.rtt_coherence_ms = 700.0;
        let inputs = inputs();
        let funcs = warm_func(10.0);
        let mut w = World::new(&s, &inputs, &funcs, 100_000.0);
        let every = w.ping_interval;
        let device = 3;
        let site = w.device_site[device as usize];
        let slots: Vec<(usize, usize)> = w.site_nodes[site].iter().copied().enumerate().collect();
        assert!(
            slots.iter().any(|(_, i)| w.nodes[*i].tier == Tier::Cloud)
                && slots.iter().any(|(_, i)| w.nodes[*i].tier != Tier::Cloud),
            "the device's site has edges and a cloud"
        );
        // What the live mesh holds: the first ping at once, then one at each interval,
        // each smoothed 7/8 old, 1/8 new. Looked at after short and long gaps, some
        // nodes skipped on some looks.
        let mut replay: Vec<Option<(u64, f64)>> = vec![None; slots.len()];
        let looks = [
            0.0, 0.3, 2.5, 3.1, 17.9, 18.0, 40.2, 41.7, 95.0, 96.5, 160.0,
        ];
        for (n, look) in looks.iter().enumerate() {
            let t = look * every;
            let k = (t / every) as u64;
            for (slot, node) in &slots {
                if (n + slot) % 3 == 2 {
                    continue;
                }
                let want = match replay[*slot] {
                    None => w.path_rtt(device, *node, t),
                    Some((last, mut v)) => {
                        for e in last + 1..=k {
                            v = smoothed_rtt(Some(v), w.path_rtt(device, *node, e as f64 * every));
                        }
                        v
                    }
                };
                replay[*slot] = Some((k, want));
                let got = w.pinged_rtt(device, *slot, *node, t);
                // Exact but for rounding, and for pings over 48 back (under 0.2 %).
                assert!(
                    (got - want).abs() <= 0.002 * want,
                    "node {node} at {t} ms: {got} against {want} ping by ping"
                );
            }
        }
    }

    #[test]
    fn members_report_out_of_step_each_at_its_own_tick_of_the_interval() {
        let mut s = scenario(10);
        s.sites = 8;
        s.mtbf_s = 0.0;
        let inputs = inputs();
        let funcs = warm_func(10.0);
        let mut w = World::new(&s, &inputs, &funcs, 10_000.0);
        let ticks: std::collections::BTreeSet<usize> = w.nodes.iter().map(|n| n.phase).collect();
        assert!(ticks.len() > 2, "nodes spread over the ticks: {ticks:?}");
        // As the run starts: every member has reported once when the first call comes.
        for tick in (1..REPORT_PHASES).chain([0]) {
            w.report_round(0.0, tick);
        }
        assert!(
            w.alive.iter().all(|a| *a),
            "every member alive at the start"
        );
        // Later, a tick's report is of its own members only.
        let tick = w.nodes[0].phase;
        w.report_round(250.0, tick);
        for n in &w.nodes {
            let heard = if n.phase == tick { 250.0 } else { 0.0 };
            assert_eq!(n.reported_at, heard, "{} at tick {}", n.id, n.phase);
        }
    }

    #[test]
    fn a_member_reports_at_once_when_it_loads_a_function_or_its_load_moves_a_lot() {
        let mut s = scenario(10);
        s.mtbf_s = 0.0;
        let inputs = inputs();
        let funcs = warm_func(400.0);
        let mut w = World::new(&s, &inputs, &funcs, 10_000.0);
        for tick in (1..REPORT_PHASES).chain([0]) {
            w.report_round(0.0, tick);
        }
        let n = (0..w.nodes.len())
            .find(|&i| w.nodes[i].tier == Tier::Edge && w.nodes[i].cores >= 3)
            .expect("an edge of three cores or more");
        let other = (w.nodes[n].phase + 1) % REPORT_PHASES;
        let call = |device| Call {
            t: 0.0,
            device,
            func: 0,
            payload_kb: 1.0,
        };
        let send = |w: &mut World<'_>, device: u32, t: f64| {
            let a = w.attempt(device as usize, &call(device), Where::Node(n), t);
            assert!(!a.failed && !a.refused, "{a:?}");
            w.commit(&call(device), Where::Node(n), &a);
        };
        // Its first call of a function loads it: the next check, at another member's
        // tick, hears of it.
        send(&mut w, 0, 1.0);
        let seq = w.nodes[n].seq;
        w.report_round(10.0, other);
        assert_eq!(
            w.nodes[n].seq,
            seq + 1,
            "a newly loaded function is reported at once"
        );
        assert!(w.nodes[n].reported_warm.contains_key(&0));
        assert_eq!(w.nodes[n].reported_at, 10.0);
        // A call more of it, under half a call per core: it waits for its own tick.
        let cores = w.nodes[n].cores;
        send(&mut w, 1, 11.0);
        w.report_round(20.0, other);
        assert_eq!(
            w.nodes[n].seq,
            seq + 1,
            "a small move waits for the interval"
        );
        // Half a call per core more than it reported: at once.
        let reported = w.nodes[n].reported_in_flight;
        let mut device = 2;
        while w.nodes[n].outstanding(21.0) < reported as usize + cores.div_ceil(2) as usize {
            send(&mut w, device, 21.0);
            device += 1;
        }
        w.report_round(30.0, other);
        assert_eq!(
            w.nodes[n].reported_at, 30.0,
            "a large move is reported at once"
        );
        assert!(w.nodes[n].reported_in_flight >= reported + cores.div_ceil(2));
    }

    #[test]
    fn a_member_reports_a_calls_service_time_once_the_call_has_ended() {
        let s = scenario(10);
        let inputs = inputs();
        let funcs = warm_func(400.0);
        let mut w = World::new(&s, &inputs, &funcs, 10_000.0);
        let n = (0..w.nodes.len())
            .find(|&i| w.nodes[i].tier == Tier::Edge && !w.nodes[i].is_down(0.0))
            .expect("an edge up at the start");
        let c = Call {
            t: 0.0,
            device: 0,
            func: 0,
            payload_kb: 1.0,
        };
        let a = w.attempt(0, &c, Where::Node(n), 0.0);
        assert!(!a.failed && !a.refused);
        w.commit(&c, Where::Node(n), &a);
        // A report while the call runs says it is warm, not how long it takes.
        let during = (a.start + a.finish) / 2.0;
        assert!(!w.nodes[n].is_down(during) && !w.nodes[n].is_down(a.finish));
        let tick = w.nodes[n].phase;
        w.report_round(during, tick);
        assert!(w.nodes[n].reported_warm.contains_key(&0));
        assert_eq!(w.nodes[n].reported_service.get(&0), None);
        w.report_round(a.finish, tick);
        assert_eq!(w.nodes[n].reported_service.get(&0), Some(&a.service_ms()));
    }

    #[test]
    fn a_call_that_comes_while_its_function_loads_waits_for_the_load_and_runs_cold() {
        let s = scenario(10);
        let inputs = inputs();
        let funcs = [Func {
            exec_ms: 50.0,
            cold_ms: 200.0,
        }];
        let mut w = World::new(&s, &inputs, &funcs, 10_000.0);
        let n = (0..w.nodes.len())
            .find(|&i| w.nodes[i].tier == Tier::Edge && !w.nodes[i].is_down(0.0))
            .expect("an edge up at the start");
        let call = |device| Call {
            t: 0.0,
            device,
            func: 0,
            payload_kb: 1.0,
        };
        let first = w.attempt(0, &call(0), Where::Node(n), 0.0);
        assert!(first.cold && first.cold_ms == 200.0, "{first:?}");
        w.commit(&call(0), Where::Node(n), &first);
        let loaded = first.start + 200.0;
        // Its reports say it warm once it is loaded, not while it loads.
        let tick = w.nodes[n].phase;
        assert!(!w.nodes[n].is_down(loaded + 1.0));
        w.report_round(first.start + 100.0, tick);
        assert!(!w.nodes[n].reported_warm.contains_key(&0));
        w.report_round(loaded + 1.0, tick);
        assert!(w.nodes[n].reported_warm.contains_key(&0));
        // A second call that starts while the first loads waits for the rest of it.
        let second = w.attempt(1, &call(1), Where::Node(n), 20.0);
        assert!(second.start < loaded, "{second:?}");
        assert!(second.cold, "{second:?}");
        assert!(
            (second.cold_ms - (loaded - second.start)).abs() < 1e-9,
            "{second:?} against a load done at {loaded}"
        );
        w.commit(&call(1), Where::Node(n), &second);
        // One that starts once it is loaded runs warm, though the first still runs.
        let third = w.attempt(2, &call(2), Where::Node(n), loaded + 1.0);
        assert!(third.start < first.finish, "{third:?}");
        assert!(!third.cold && third.cold_ms == 0.0, "{third:?}");
    }

    #[test]
    fn a_run_is_deterministic_for_a_seed() {
        let s = scenario(5000);
        let a = run(&s, &inputs(), &Policy::ALL);
        let b = run(&s, &inputs(), &Policy::ALL);
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            serde_json::to_string(&b).unwrap()
        );
        assert_eq!(a.policies.len(), 9);
        let mut s2 = s.clone();
        s2.seed += 1;
        let c = run(&s2, &inputs(), &[Policy::Regression]);
        assert_ne!(a.policies[0].p50_ms, c.policies[0].p50_ms);
    }

    #[test]
    fn the_prediction_error_floor_is_how_far_runs_stray_and_no_more() {
        // Runs that never stray: nothing is left for a prediction that knew the rest.
        let mut s = scenario(3_000);
        s.service_noise = 0.0;
        let r = run(&s, &inputs(), &[Policy::Regression]);
        assert_eq!(r.policies[0].prediction_error_floor, Some(0.0));
        // Runs that stray by a log-normal factor of sigma 0.2: alone, a run's time is off
        // its mean by a median 13.6 % of itself; round trips and queues, which do not
        // stray, dilute it in a call's latency. The learnt predictions miss by more.
        s.service_noise = 0.2;
        let r = run(&s, &inputs(), &[Policy::Regression]);
        let (floor, err) = (
            r.policies[0].prediction_error_floor.unwrap(),
            r.policies[0].prediction_error.unwrap(),
        );
        assert!(floor > 0.02 && floor < 0.136, "{floor}");
        assert!(err > floor, "{err} against {floor}");
    }

    #[test]
    fn single_tier_policies_stay_on_their_tier_and_the_oracle_never_loses_a_call() {
        let s = scenario(20_000);
        let r = run(&s, &inputs(), &Policy::ALL);
        let get = |n: &str| r.policies.iter().find(|p| p.name == n).unwrap();
        // The oracle knows which nodes are down, so it never sends a call to one. (It is
        // greedy per call, so it does not bound every policy's mean: a call it speeds up can
        // occupy a core a later call needed.)
        let oracle = get("oracle");
        assert_eq!((oracle.retries, oracle.failed), (0, 0));
        assert_eq!(get("cloud-only").tier_share["cloud"], 1.0);
        assert_eq!(get("device-only").tier_share["device"], 1.0);
        let reg = get("regression");
        assert!(reg.prediction_error.is_some());
        assert!(reg.p99_ms <= get("nearest-edge").p99_ms, "{}", r.table());
    }

    #[test]
    fn the_report_is_the_same_on_any_number_of_threads() {
        let s = scenario(5_000);
        let one = serde_json::to_string(&run(&s, &inputs(), &Policy::ALL)).unwrap();
        for threads in [2, 3, 64] {
            let many = run_on(&s, &inputs(), &Policy::ALL, threads);
            let names: Vec<&str> = many.policies.iter().map(|p| p.name).collect();
            let given: Vec<&str> = Policy::ALL.iter().map(|p| p.name()).collect();
            assert_eq!(names, given, "in the order asked for");
            assert_eq!(
                serde_json::to_string(&many).unwrap(),
                one,
                "{threads} threads"
            );
        }
        assert!(run_on(&s, &inputs(), &[], 2).policies.is_empty());
    }

    #[test]
    fn kept_latencies_are_the_samples_the_figures_come_from() {
        // Loaded past its edges, with a small cloud: calls turned away go on elsewhere.
        let mut s = scenario(5_000);
        s.utilisation = 1.2;
        s.cloud_cores = 8;
        let policies = [Policy::Regression, Policy::CloudOnly];
        let kept = run_keeping_latencies(&s, &inputs(), &policies, 2);
        let plain = run_on(&s, &inputs(), &policies, 2);
        // Keeping them changes no figure, and only the run asked to keeps them.
        assert_eq!(
            serde_json::to_string(&kept).unwrap(),
            serde_json::to_string(&plain).unwrap()
        );
        let skip = (s.invocations as f64 * s.warmup) as u32;
        for (p, q) in kept.policies.iter().zip(&plain.policies) {
            assert!(q.latencies.is_empty(), "{}", p.name);
            let calls: Vec<u32> = p.latencies.iter().map(|m| m.call).collect();
            assert!(calls.windows(2).all(|w| w[0] < w[1]), "in arrival order");
            assert!(
                calls.first().is_some_and(|c| *c >= skip),
                "after the warm-up"
            );
            assert!(calls.len() as u64 + p.failed <= u64::from(5_000 - skip));
            let mut ms: Vec<f32> = p.latencies.iter().map(|m| m.latency_ms).collect();
            let mean = ms.iter().map(|v| f64::from(*v)).sum::<f64>() / ms.len() as f64;
            assert!((mean - p.mean_ms).abs() < 1e-6 * p.mean_ms, "{}", p.name);
            ms.sort_by(f32::total_cmp);
            let at = ((0.99 * (ms.len() - 1) as f64).round() as usize).min(ms.len() - 1);
            assert_eq!(f64::from(ms[at]), p.p99_ms, "{}", p.name);
            // Where they ran adds up to the report's own counts.
            let n = p.latencies.len() as f64;
            for (tier, share) in &p.tier_share {
                let here = p.latencies.iter().filter(|m| m.tier == *tier).count() as f64;
                assert!((here / n - share).abs() < 1e-9, "{} {tier}", p.name);
            }
            let cold = p.latencies.iter().filter(|m| m.cold).count() as u64;
            assert_eq!(cold, p.cold_starts, "{}", p.name);
            let again: u64 = p.latencies.iter().map(|m| u64::from(m.attempts - 1)).sum();
            // Every attempt after a call's first is a retry; a call that failed after
            // retries is not measured.
            if p.failed == 0 {
                assert_eq!(again, p.retries, "{}", p.name);
            } else {
                assert!(again <= p.retries, "{}: {again} > {}", p.name, p.retries);
            }
            for m in &p.latencies {
                assert!(
                    m.attempts >= 1 && m.wait_ms >= 0.0 && m.run_ms > 0.0,
                    "{m:?}"
                );
                // A call's wait and run there are part of its latency.
                assert!(m.latency_ms + 1e-2 >= m.wait_ms + m.run_ms, "{m:?}");
                assert!((m.function as usize) < s.functions, "{m:?}");
            }
        }
        assert!(
            kept.policies
                .iter()
                .any(|p| p.latencies.iter().any(|m| m.attempts > 1)),
            "some calls were retried"
        );
        // The regression policy's predictions are times, cloud-only's scores are not.
        assert!(kept.policies[0]
            .latencies
            .iter()
            .all(|m| m.predicted_ms.is_some()));
        assert!(kept.policies[1]
            .latencies
            .iter()
            .all(|m| m.predicted_ms.is_none()));
    }

    #[test]
    fn a_peer_cluster_is_one_more_place_and_takes_what_the_continuum_cannot() {
        let mut s = scenario(20_000);
        s.utilisation = 1.2;
        s.cloud_cores = 8;
        let without = run(&s, &inputs(), &[Policy::Regression]);
        assert!(!without.policies[0].tier_share.contains_key("federated"));
        s.peers.push(scenario::PeerCluster {
            name: "cluster-b".into(),
            cores: 128,
            speed: 1.0,
            share: 0.5,
            link_ms: 20.0,
        });
        let with = run(&s, &inputs(), &[Policy::Regression, Policy::CloudOnly]);
        let (reg, cloud) = (&with.policies[0], &with.policies[1]);
        assert!(reg.tier_share["federated"] > 0.0, "{}", with.table());
        // A policy that never chooses it is unchanged by it.
        assert_eq!(cloud.tier_share["federated"], 0.0);
        assert!(
            reg.mean_ms < without.policies[0].mean_ms,
            "{}\n{}",
            with.table(),
            without.table()
        );
        assert!(with.table().contains("DEVICE/EDGE/CLOUD/PEER %"));
    }

    #[test]
    fn a_call_out_of_places_goes_on_among_places_listed_again() {
        // One site of two failing edges and a two-core cloud, overloaded, no device: calls
        // run out of places (each refused or lost) before they run out of attempts, and
        // places are listed again for them; a few find one (a place whose bench ran out, a
        // node back from a failure) and go on there.
        let mut s = scenario(20_000);
        s.sites = 1;
        s.edges_per_site = 2;
        s.neighbor_sites = 0;
        s.cloud_cores = 2;
        s.utilisation = 1.5;
        s.mtbf_s = 30.0;
        s.device_speed = 0.0;
        let r = run(&s, &inputs(), &Policy::ALL);
        assert!(
            r.policies.iter().map(|p| p.relisted).sum::<u64>() > 0,
            "no call went on to places listed again:\n{}",
            r.table()
        );
        for p in &r.policies {
            // Each call listed again went on to one more attempt.
            assert!(p.retries >= p.relisted, "{p:?}");
        }
    }
}
