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
use std::collections::{BTreeMap, BinaryHeap, HashMap};

use serde::Serialize;

use crate::config::Tier;
use crate::mesh::{ClusterView, LoadReport, State, Timing};
use crate::placement::{PlaceInfo, Planner};
use crate::policy::Weights;
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

/// The placement policies compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    Regression,
    A3e,
    NearestEdge,
    LeastLoaded,
    RoundRobin,
    CloudOnly,
    DeviceOnly,
    Oracle,
}

impl Policy {
    pub const ALL: [Policy; 8] = [
        Policy::Regression,
        Policy::A3e,
        Policy::NearestEdge,
        Policy::LeastLoaded,
        Policy::RoundRobin,
        Policy::CloudOnly,
        Policy::DeviceOnly,
        Policy::Oracle,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Policy::Regression => "regression",
            Policy::A3e => "a3e",
            Policy::NearestEdge => "nearest-edge",
            Policy::LeastLoaded => "least-loaded",
            Policy::RoundRobin => "round-robin",
            Policy::CloudOnly => "cloud-only",
            Policy::DeviceOnly => "device-only",
            Policy::Oracle => "oracle",
        }
    }

    /// `all`, or a comma-separated list of names.
    pub fn parse_list(s: &str) -> Result<Vec<Policy>, String> {
        if s == "all" {
            return Ok(Policy::ALL.to_vec());
        }
        s.split(',')
            .map(|n| {
                Policy::ALL
                    .into_iter()
                    .find(|p| p.name() == n.trim())
                    .ok_or_else(|| {
                        format!(
                            "unknown policy {n:?}; choose from all, {}",
                            Policy::ALL.map(Policy::name).join(", ")
                        )
                    })
            })
            .collect()
    }
}

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
    /// Calls sent elsewhere after their node failed, and calls lost after three places.
    pub retries: u64,
    pub failed: u64,
    /// The latency (ms) under which each share of [`CDF_AT`] of the calls finished.
    pub cdf_ms: Vec<f64>,
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
    tier: Tier,
    site: usize,
    cores: u32,
    speed: f64,
    /// When each core is next free (f64 bits; all non-negative, so bit order is time order).
    free: BinaryHeap<Reverse<u64>>,
    /// Completion times of calls admitted and not yet finished.
    running: BinaryHeap<Reverse<u64>>,
    warm: HashMap<u32, f64>,
    service: HashMap<u32, f64>,
    /// Down intervals, sorted.
    down: Vec<(f64, f64)>,
    seq: u64,
}

impl Node {
    fn outstanding(&mut self, t: f64) -> usize {
        while let Some(Reverse(b)) = self.running.peek() {
            if f64::from_bits(*b) <= t {
                self.running.pop();
            } else {
                break;
            }
        }
        self.running.len()
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
    /// The round trip as last measured (what ping would say).
    rtt_ms: f64,
    load_per_core: f64,
    warm: bool,
    service_ms: Option<f64>,
}

/// What an attempt at one place would do.
#[derive(Debug, Clone, Copy)]
struct Attempt {
    /// When its result is back at the device, or when its loss is noticed.
    done: f64,
    failed: bool,
    cold: bool,
    start: f64,
    finish: f64,
}

struct World<'a> {
    s: &'a Scenario,
    inputs: &'a Inputs,
    funcs: &'a [Func],
    nodes: Vec<Node>,
    /// Node indices each site's devices may use (own site and neighbours), then the cloud.
    site_nodes: Vec<Vec<usize>>,
    cloud: usize,
    device_free: Vec<f64>,
    device_warm: HashMap<(u32, u32), f64>,
    device_site: Vec<usize>,
    view: ClusterView,
    alive: Vec<bool>,
    timing: Timing,
}

impl<'a> World<'a> {
    fn new(s: &'a Scenario, inputs: &'a Inputs, funcs: &'a [Func], horizon: f64) -> Self {
        let mut rng = Rng::new(mix(&[s.seed, 2]));
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
                nodes.push(Node {
                    id: format!("edge-{site}-{e}"),
                    tier: Tier::Edge,
                    site,
                    cores: s.edge_cores,
                    speed: rng.range(s.edge_speed[0], s.edge_speed[1]),
                    free: (0..s.edge_cores).map(|_| Reverse(0f64.to_bits())).collect(),
                    running: BinaryHeap::new(),
                    warm: HashMap::new(),
                    service: HashMap::new(),
                    down,
                    seq: 0,
                });
            }
        }
        let cloud = nodes.len();
        nodes.push(Node {
            id: "cloud".into(),
            tier: Tier::Cloud,
            site: usize::MAX,
            cores: s.cloud_cores,
            speed: s.cloud_speed,
            free: (0..s.cloud_cores)
                .map(|_| Reverse(0f64.to_bits()))
                .collect(),
            running: BinaryHeap::new(),
            warm: HashMap::new(),
            service: HashMap::new(),
            down: Vec::new(),
            seq: 0,
        });
        let ns = s.neighbor_sites.min(s.sites / 2);
        let site_nodes = (0..s.sites)
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
                v
            })
            .collect();
        let device_site = (0..s.devices)
            .map(|d| (mix(&[s.seed, 3, d as u64]) % s.sites as u64) as usize)
            .collect();
        let alive = vec![true; nodes.len()];
        World {
            s,
            inputs,
            funcs,
            nodes,
            site_nodes,
            cloud,
            device_free: vec![0.0; s.devices],
            device_warm: HashMap::new(),
            device_site,
            view: ClusterView::new(),
            alive,
            timing: Timing::for_interval(s.report_interval_ms),
        }
    }

    /// Every live node reports its load; the view ages the silent ones.
    fn report_round(&mut self, now: f64) {
        let now_ms = now as u64;
        for i in 0..self.nodes.len() {
            if self.nodes[i].is_down(now) {
                continue;
            }
            let in_flight = self.nodes[i].outstanding(now) as u32;
            let n = &mut self.nodes[i];
            n.seq += 1;
            self.view.apply(
                LoadReport {
                    node: n.id.clone(),
                    peer: String::new(),
                    tier: n.tier,
                    site: String::new(),
                    cores: n.cores,
                    memory_bytes: 0,
                    runtimes: vec![crate::Runtime::Wasm],
                    in_flight,
                    queued: 0,
                    service_ms: Vec::new(),
                    warm: Vec::new(),
                    quic: None,
                    http: None,
                    mesh: None,
                    cold_starts: 0,
                    warm_starts: 0,
                    seq: n.seq,
                },
                now_ms,
            );
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
    /// sample file once per coherence interval (what ping measures), identical for every
    /// policy.
    fn link_rtt(&self, device: u32, cloud: bool, t: f64) -> f64 {
        let epoch = (t / self.s.rtt_coherence_ms) as u64;
        let u = unit(&[self.s.seed, 4, device as u64, u64::from(cloud), epoch]);
        if cloud {
            self.inputs.cloud_rtt.pick(u) + self.s.cloud_extra_ms
        } else {
            self.inputs.edge_rtt.pick(u)
        }
    }

    fn measured_rtt(&self, device: u32, node: usize, t: f64) -> f64 {
        let n = &self.nodes[node];
        match n.tier {
            Tier::Cloud => self.link_rtt(device, true, t),
            _ => {
                let extra = if n.site == self.device_site[device as usize] {
                    0.0
                } else {
                    self.s.inter_site_ms
                };
                // Each device sits nearer some nodes of a site than others (0 to 2 ms).
                let lan = 2.0 * unit(&[self.s.seed, 9, device as u64, node as u64]);
                self.link_rtt(device, false, t) + extra + lan
            }
        }
    }

    fn service(&self, call: usize, func: u32, speed: f64) -> f64 {
        let (u1, u2) = (
            unit(&[self.s.seed, 5, call as u64]).max(1e-12),
            unit(&[self.s.seed, 6, call as u64]),
        );
        let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        let sigma = self.s.service_noise;
        self.funcs[func as usize].exec_ms * (sigma * z - sigma * sigma / 2.0).exp() / speed
    }

    /// What running `call` at `w`, sent at `ta`, would do (nothing is changed).
    fn attempt(&self, id: usize, c: &Call, w: Where, ta: f64) -> Attempt {
        let f = &self.funcs[c.func as usize];
        match w {
            Where::Device => {
                let start = ta.max(self.device_free[c.device as usize]);
                let cold = self
                    .device_warm
                    .get(&(c.device, c.func))
                    .is_none_or(|last| start - last > self.s.keepalive_ms);
                let finish = start
                    + self.service(id, c.func, self.s.device_speed)
                    + if cold { f.cold_ms } else { 0.0 };
                Attempt {
                    done: finish,
                    failed: false,
                    cold,
                    start,
                    finish,
                }
            }
            Where::Node(i) => {
                let n = &self.nodes[i];
                let jitter = 1.0
                    + self.s.rtt_jitter
                        * (2.0 * unit(&[self.s.seed, 7, id as u64, i as u64]) - 1.0);
                let rtt = self.measured_rtt(c.device, i, ta) * jitter;
                let transfer = f64::from(c.payload_kb) / self.s.bandwidth_kb_per_ms;
                let arrive = ta + rtt / 2.0 + transfer / 2.0;
                let start = arrive.max(n.next_free());
                let cold = n
                    .warm
                    .get(&c.func)
                    .is_none_or(|last| start - last > self.s.keepalive_ms);
                let finish =
                    start + self.service(id, c.func, n.speed) + if cold { f.cold_ms } else { 0.0 };
                match n.fails_during(arrive, finish) {
                    Some(at) => Attempt {
                        done: at + self.s.detect_ms,
                        failed: true,
                        cold,
                        start,
                        finish,
                    },
                    None => Attempt {
                        done: finish + rtt / 2.0 + transfer / 2.0,
                        failed: false,
                        cold,
                        start,
                        finish,
                    },
                }
            }
        }
    }

    fn commit(&mut self, c: &Call, w: Where, a: &Attempt) {
        match w {
            Where::Device => {
                self.device_free[c.device as usize] = a.finish;
                self.device_warm.insert((c.device, c.func), a.finish);
            }
            Where::Node(i) => {
                let n = &mut self.nodes[i];
                n.free.pop();
                if a.failed {
                    // The core is lost with the node; it is free again when it returns.
                    n.free.push(Reverse(a.finish.to_bits()));
                    return;
                }
                n.free.push(Reverse(a.finish.to_bits()));
                n.running.push(Reverse(a.finish.to_bits()));
                n.warm.insert(c.func, a.finish);
                let took = a.finish - a.start;
                let e = n.service.entry(c.func).or_insert(took);
                *e = 0.8 * *e + 0.2 * took;
            }
        }
    }

    fn candidates(&mut self, c: &Call, t: f64, out: &mut Vec<Cand>) {
        out.clear();
        let site = self.device_site[c.device as usize];
        for k in 0..self.site_nodes[site].len() {
            let i = self.site_nodes[site][k];
            if !self.alive[i] {
                continue;
            }
            let rtt_ms = self.measured_rtt(c.device, i, t);
            let n = &mut self.nodes[i];
            let load = n.outstanding(t) as f64 / f64::from(n.cores);
            out.push(Cand {
                at: Where::Node(i),
                tier: n.tier,
                rtt_ms,
                load_per_core: load,
                warm: n
                    .warm
                    .get(&c.func)
                    .is_some_and(|last| t - last <= self.s.keepalive_ms),
                service_ms: n.service.get(&c.func).copied(),
            });
        }
        if self.s.device_speed > 0.0 {
            let busy = self.device_free[c.device as usize] > t;
            out.push(Cand {
                at: Where::Device,
                tier: Tier::Device,
                rtt_ms: 0.0,
                load_per_core: if busy { 1.0 } else { 0.0 },
                warm: self
                    .device_warm
                    .get(&(c.device, c.func))
                    .is_some_and(|last| t - last <= self.s.keepalive_ms),
                service_ms: None,
            });
        }
    }
}

fn place_name(w: &World<'_>, at: Where) -> &'static str {
    match at {
        Where::Device => "device",
        Where::Node(i) if i == w.cloud => "cloud",
        Where::Node(_) => "edge",
    }
}

/// The baselines' choice among `cands` not yet `tried`.
fn baseline(p: Policy, cands: &[Cand], tried: &[usize], rr: &mut usize) -> Option<usize> {
    let open = |i: &usize| !tried.contains(i);
    let nodes = || {
        (0..cands.len())
            .filter(open)
            .filter(|i| cands[*i].tier != Tier::Device)
    };
    let by = |it: &mut dyn Iterator<Item = usize>, key: &dyn Fn(&Cand) -> f64| {
        it.min_by(|a, b| key(&cands[*a]).total_cmp(&key(&cands[*b])))
    };
    match p {
        Policy::NearestEdge => by(
            &mut nodes().filter(|i| cands[*i].tier == Tier::Edge),
            &|c| c.rtt_ms,
        )
        .or_else(|| by(&mut nodes(), &|c| c.rtt_ms))
        .or_else(|| (0..cands.len()).find(open)),
        Policy::LeastLoaded => by(&mut nodes(), &|c| c.load_per_core * 1e6 + c.rtt_ms)
            .or_else(|| (0..cands.len()).find(open)),
        Policy::RoundRobin => {
            let v: Vec<usize> = nodes().collect();
            if v.is_empty() {
                return (0..cands.len()).find(open);
            }
            *rr = rr.wrapping_add(1);
            Some(v[*rr % v.len()])
        }
        // A3-E-style: a static weighted score of measured latency, load and warmth.
        Policy::A3e => by(&mut nodes(), &|c| {
            c.rtt_ms + 20.0 * c.load_per_core + if c.warm { 0.0 } else { 50.0 }
        })
        .or_else(|| (0..cands.len()).find(open)),
        Policy::CloudOnly => (0..cands.len())
            .filter(open)
            .find(|i| cands[*i].tier == Tier::Cloud)
            .or_else(|| (0..cands.len()).find(open)),
        Policy::DeviceOnly => (0..cands.len())
            .filter(open)
            .find(|i| cands[*i].tier == Tier::Device)
            .or_else(|| (0..cands.len()).find(open)),
        Policy::Regression | Policy::Oracle => None,
    }
}

fn run_policy(
    s: &Scenario,
    inputs: &Inputs,
    wl: &Workload,
    p: Policy,
    horizon: f64,
) -> PolicyResult {
    let mut w = World::new(s, inputs, &wl.funcs, horizon);
    let mut planner = Planner::new(128);
    let weights = Weights {
        explore: s.explore,
        ..Weights::default()
    };
    let fnames: Vec<String> = (0..wl.funcs.len()).map(|f| format!("f{f}")).collect();
    let mut cands = Vec::new();
    let mut roll_rng = Rng::new(mix(&[s.seed, 8]));
    let mut rr = 0usize;
    let interval = s.report_interval_ms as f64;
    let mut next_report = 0.0;
    let skip = (wl.calls.len() as f64 * s.warmup) as usize;
    let mut lat = Vec::with_capacity(wl.calls.len() - skip);
    let mut errors = Vec::new();
    let mut tiers: BTreeMap<&'static str, u64> = BTreeMap::new();
    let (mut cold, mut retries, mut failed, mut missed) = (0u64, 0u64, 0u64, 0u64);
    for (id, c) in wl.calls.iter().enumerate() {
        while next_report <= c.t {
            w.report_round(next_report);
            next_report += interval;
        }
        w.candidates(c, c.t, &mut cands);
        let counted = id >= skip;
        if cands.is_empty() {
            failed += u64::from(counted);
            continue;
        }
        let fname = &fnames[c.func as usize];
        let plan = (p == Policy::Regression).then(|| {
            let infos: Vec<PlaceInfo<'_>> = cands
                .iter()
                .map(|k| PlaceInfo {
                    id: match k.at {
                        Where::Node(i) => &w.nodes[i].id,
                        Where::Device => "device",
                    },
                    tier: k.tier,
                    rtt_ms: k.rtt_ms,
                    load_per_core: k.load_per_core,
                    warm: k.warm,
                    service_ms: k.service_ms,
                })
                .collect();
            planner.plan(
                fname,
                f64::from(c.payload_kb),
                &infos,
                Some(s.deadline_ms),
                &weights,
                roll_rng.f64(),
            )
        });
        let mut tried: Vec<usize> = Vec::new();
        let mut ta = c.t;
        let outcome = loop {
            let pick = match p {
                Policy::Regression => match (&plan, tried.is_empty()) {
                    (Some(Some(pl)), true) => Some(pl.chosen),
                    (Some(Some(pl)), false) => pl.next_best(&tried),
                    _ => None,
                },
                Policy::Oracle => (0..cands.len())
                    .filter(|i| !tried.contains(i))
                    .map(|i| (i, w.attempt(id, c, cands[i].at, ta)))
                    .min_by(|a, b| {
                        let ka = if a.1.failed { f64::INFINITY } else { a.1.done };
                        let kb = if b.1.failed { f64::INFINITY } else { b.1.done };
                        ka.total_cmp(&kb)
                    })
                    .map(|(i, _)| i),
                _ => baseline(p, &cands, &tried, &mut rr),
            };
            let Some(i) = pick else { break None };
            let a = w.attempt(id, c, cands[i].at, ta);
            w.commit(c, cands[i].at, &a);
            if a.failed {
                tried.push(i);
                retries += u64::from(counted);
                ta = a.done;
                if tried.len() >= 3 {
                    break None;
                }
                continue;
            }
            break Some((i, a));
        };
        let Some((i, a)) = outcome else {
            failed += u64::from(counted);
            continue;
        };
        let latency = a.done - c.t;
        if let Some(Some(pl)) = &plan {
            let sc = pl.scored[i];
            // Learn what the first attempt at this place took (a retry's lost time is not
            // the place's doing).
            let own = a.done - ta;
            planner.observe(
                fname,
                match cands[i].at {
                    Where::Node(n) => &w.nodes[n].id,
                    Where::Device => "device",
                },
                &sc.features,
                sc.predicted_ms,
                own,
                Some(a.finish - a.start),
            );
            if id % 64 == 0 {
                planner.refit_due();
            }
            if counted && tried.is_empty() {
                errors.push(((sc.predicted_ms - own).abs() / own.max(1e-3)) as f32);
            }
        }
        if counted {
            lat.push(latency as f32);
            *tiers.entry(place_name(&w, cands[i].at)).or_insert(0) += 1;
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
    let prediction_error = match p {
        Policy::Regression if !errors.is_empty() => {
            let mid = errors.len() / 2;
            let (_, m, _) = errors.select_nth_unstable_by(mid, f32::total_cmp);
            Some(f64::from(*m))
        }
        Policy::Oracle => Some(0.0),
        _ => None,
    };
    let total: u64 = tiers.values().sum::<u64>().max(1);
    PolicyResult {
        name: p.name(),
        p50_ms: q(0.50),
        p95_ms: q(0.95),
        p99_ms: q(0.99),
        mean_ms: mean,
        deadline_miss: missed as f64 / n,
        tier_share: ["device", "edge", "cloud"]
            .into_iter()
            .map(|t| (t, *tiers.get(t).unwrap_or(&0) as f64 / total as f64))
            .collect(),
        cold_starts: cold,
        prediction_error,
        retries,
        failed,
        cdf_ms: CDF_AT.iter().map(|p| q(*p)).collect(),
    }
}

/// The shares of calls [`PolicyResult::cdf_ms`] gives the latency at.
pub const CDF_AT: [f64; 23] = [
    0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.92, 0.94, 0.95, 0.96,
    0.97, 0.98, 0.99, 0.995, 0.999, 1.0,
];

/// Runs every policy in `policies` on the scenario; deterministic for a seed.
pub fn run(s: &Scenario, inputs: &Inputs, policies: &[Policy]) -> Report {
    let edge_capacity: f64 = {
        // Expected capacity: cores times mean speed, per ms of work.
        let mean_speed = (s.edge_speed[0] + s.edge_speed[1]) / 2.0;
        (s.sites * s.edges_per_site) as f64 * f64::from(s.edge_cores) * mean_speed
    };
    let wl = generate(s, inputs, edge_capacity);
    let horizon = wl.calls.last().map_or(0.0, |c| c.t) + 600_000.0;
    let policies = policies
        .iter()
        .map(|p| run_policy(s, inputs, &wl, *p, horizon))
        .collect();
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
            "{:<13} {:>9} {:>9} {:>9} {:>9} {:>8} {:>22} {:>8} {:>8} {:>7}\n",
            "POLICY",
            "P50 ms",
            "P95 ms",
            "P99 ms",
            "MEAN ms",
            "MISS %",
            "DEVICE/EDGE/CLOUD %",
            "COLD",
            "PRED ERR",
            "RETRIES"
        ));
        for p in &self.policies {
            let share = |t: &str| p.tier_share.get(t).copied().unwrap_or(0.0) * 100.0;
            out.push_str(&format!(
                "{:<13} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>8.2} {:>22} {:>8} {:>8} {:>7}\n",
                p.name,
                p.p50_ms,
                p.p95_ms,
                p.p99_ms,
                p.mean_ms,
                p.deadline_miss * 100.0,
                format!(
                    "{:.0}/{:.0}/{:.0}",
                    share("device"),
                    share("edge"),
                    share("cloud")
                ),
                p.cold_starts,
                p.prediction_error
                    .map_or("-".to_string(), |e| format!("{:.1}%", e * 100.0)),
                p.retries,
            ));
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
    fn a_run_is_deterministic_for_a_seed() {
        let s = scenario(5000);
        let a = run(&s, &inputs(), &Policy::ALL);
        let b = run(&s, &inputs(), &Policy::ALL);
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            serde_json::to_string(&b).unwrap()
        );
        assert_eq!(a.policies.len(), 8);
        let mut s2 = s.clone();
        s2.seed += 1;
        let c = run(&s2, &inputs(), &[Policy::Regression]);
        assert_ne!(a.policies[0].p50_ms, c.policies[0].p50_ms);
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
}
