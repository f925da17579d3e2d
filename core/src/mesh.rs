//! What members of the mesh tell each other, and the cluster view they build from it.
//!
//! A [`LoadReport`] is gossiped by every member each interval (and at once on a large
//! change). A [`ClusterView`] merges reports — the newest sequence number per member wins,
//! so merging is commutative, associative and idempotent (property-tested below) — and
//! ages members from alive to suspect to dead to forgotten as intervals pass unheard.
//! Time comes in as milliseconds on a monotonic clock; the view never reads a clock, so
//! the simulator runs the same code.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::Tier;
use crate::manifest::Runtime;

/// Largest encoded report; lists are cut to fit.
pub const MAX_REPORT: usize = 4096;
/// Most functions listed as warm or with a service time.
pub const MAX_LISTED: usize = 48;

/// One member's state, as it reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadReport {
    /// The member's name (node id).
    pub node: String,
    /// Its libp2p peer id.
    pub peer: String,
    pub tier: Tier,
    pub site: String,
    pub cores: u32,
    pub memory_bytes: u64,
    pub runtimes: Vec<Runtime>,
    /// Invocations running now, and waiting (async queue).
    pub in_flight: u32,
    pub queued: u32,
    /// Recent mean service time per function, milliseconds.
    pub service_ms: Vec<(String, f32)>,
    /// Functions this member can run without loading code.
    pub warm: Vec<String>,
    /// Where other tiers reach it.
    pub quic: Option<String>,
    pub http: Option<String>,
    /// Its mesh address (`/ip4/…/tcp/…`), so any member can dial any other directly.
    pub mesh: Option<String>,
    /// Calls that started cold, and warm, since the member started.
    pub cold_starts: u64,
    pub warm_starts: u64,
    /// Grows by one with every report from this member (a restart starts from its clock).
    pub seq: u64,
}

/// A report that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    #[error("load report of {0} bytes exceeds the limit of {MAX_REPORT}")]
    TooLarge(usize),
    #[error("malformed load report: {0}")]
    Malformed(String),
}

impl LoadReport {
    /// Encodes, cutting the function lists until the report fits in [`MAX_REPORT`].
    pub fn encode(&self) -> Vec<u8> {
        let mut r = self.clone();
        r.service_ms.truncate(MAX_LISTED);
        r.warm.truncate(MAX_LISTED);
        loop {
            let bytes = postcard::to_allocvec(&r).unwrap_or_default();
            if bytes.len() <= MAX_REPORT || (r.service_ms.is_empty() && r.warm.is_empty()) {
                return bytes;
            }
            r.service_ms.truncate(r.service_ms.len() / 2);
            r.warm.truncate(r.warm.len() / 2);
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, ReportError> {
        if bytes.len() > MAX_REPORT {
            return Err(ReportError::TooLarge(bytes.len()));
        }
        postcard::from_bytes(bytes).map_err(|e| ReportError::Malformed(e.to_string()))
    }

    /// Load per core: running plus queued work over cores.
    pub fn load_per_core(&self) -> f64 {
        f64::from(self.in_flight + self.queued) / f64::from(self.cores.max(1))
    }

    /// Whether `next` differs enough from `self` to be sent before the next interval.
    pub fn changed_a_lot(&self, next: &LoadReport) -> bool {
        let a = self.load_per_core();
        let b = next.load_per_core();
        (a - b).abs() >= 0.5 || self.warm != next.warm || self.quic != next.quic
    }
}

/// Liveness as this member sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Alive,
    Suspect,
    Dead,
}

/// One member in the view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    pub report: LoadReport,
    /// When a report from it last arrived (ms, the view owner's clock).
    pub heard_ms: u64,
    /// Round trip measured to it, if any.
    pub rtt_ms: Option<f64>,
    pub state: State,
}

/// How the view ages members: unheard for this long (ms), a member is suspect, dead,
/// then forgotten.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timing {
    pub suspect_ms: u64,
    pub dead_ms: u64,
    pub forget_ms: u64,
}

impl Timing {
    /// Thresholds for a report interval: suspect after 1.6 intervals unheard (one late report
    /// is normal jitter), dead after 2.5, forgotten after 60.
    pub fn for_interval(interval_ms: u64) -> Self {
        Timing {
            suspect_ms: interval_ms * 16 / 10,
            dead_ms: interval_ms * 5 / 2,
            forget_ms: interval_ms * 60,
        }
    }
}

impl Default for Timing {
    fn default() -> Self {
        Timing::for_interval(1000)
    }
}

/// The merged view of the mesh.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ClusterView {
    members: BTreeMap<String, Member>,
}

impl ClusterView {
    pub fn new() -> Self {
        ClusterView::default()
    }

    /// Takes a report heard at `now_ms`. Returns whether it was newer than what we had.
    pub fn apply(&mut self, report: LoadReport, now_ms: u64) -> bool {
        match self.members.get_mut(&report.node) {
            Some(m) if newer(&m.report, &report) => {
                m.report = report;
                m.heard_ms = m.heard_ms.max(now_ms);
                m.state = State::Alive;
                true
            }
            Some(_) => false,
            None => {
                let m = Member {
                    report,
                    heard_ms: now_ms,
                    rtt_ms: None,
                    state: State::Alive,
                };
                self.members.insert(m.report.node.clone(), m);
                true
            }
        }
    }

    /// Records a round trip to a member, by node name.
    pub fn observe_rtt(&mut self, node: &str, rtt_ms: f64) {
        if let Some(m) = self.members.get_mut(node) {
            // Smoothed like TCP's SRTT: one sample does not swing placement.
            m.rtt_ms = Some(match m.rtt_ms {
                Some(old) => 0.875 * old + 0.125 * rtt_ms,
                None => rtt_ms,
            });
        }
    }

    /// Ages members: suspect, then dead, then forgotten, by time unheard.
    pub fn tick(&mut self, now_ms: u64, t: &Timing) {
        self.members.retain(|_, m| {
            let quiet = now_ms.saturating_sub(m.heard_ms);
            m.state = if quiet >= t.dead_ms {
                State::Dead
            } else if quiet >= t.suspect_ms {
                State::Suspect
            } else {
                State::Alive
            };
            quiet < t.forget_ms
        });
    }

    /// Marks a member as heard now without a new report (used for the view's owner).
    pub fn touch(&mut self, node: &str, now_ms: u64) {
        if let Some(m) = self.members.get_mut(node) {
            m.heard_ms = m.heard_ms.max(now_ms);
        }
    }

    /// Merges another view: per member, the newer report (and the later hearing) wins.
    pub fn merge(&mut self, other: &ClusterView) {
        for (k, theirs) in &other.members {
            match self.members.get_mut(k) {
                None => {
                    self.members.insert(k.clone(), theirs.clone());
                }
                Some(ours) => {
                    if newer(&ours.report, &theirs.report) {
                        ours.report = theirs.report.clone();
                    }
                    ours.heard_ms = ours.heard_ms.max(theirs.heard_ms);
                    ours.rtt_ms = match (ours.rtt_ms, theirs.rtt_ms) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                    ours.state = worse_or_better(ours.state, theirs.state);
                }
            }
        }
    }

    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    pub fn get(&self, node: &str) -> Option<&Member> {
        self.members.get(node)
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Live members that can run `runtime`, warm ones for `function` first, then by load.
    pub fn candidates(&self, function: &str, runtime: Runtime) -> Vec<&Member> {
        let mut v: Vec<&Member> = self
            .members
            .values()
            .filter(|m| m.state == State::Alive && m.report.runtimes.contains(&runtime))
            .collect();
        v.sort_by(|a, b| {
            let wa = a.report.warm.iter().any(|f| f == function);
            let wb = b.report.warm.iter().any(|f| f == function);
            wb.cmp(&wa)
                .then(
                    a.report
                        .load_per_core()
                        .total_cmp(&b.report.load_per_core()),
                )
                .then(a.report.node.cmp(&b.report.node))
        });
        v
    }
}

/// Whether `b` replaces `a`: a higher sequence number, or on a tie the larger encoding (a
/// deterministic tie-break that keeps merging commutative).
fn newer(a: &LoadReport, b: &LoadReport) -> bool {
    match b.seq.cmp(&a.seq) {
        std::cmp::Ordering::Greater => true,
        std::cmp::Ordering::Less => false,
        std::cmp::Ordering::Equal => b.encode() > a.encode(),
    }
}

/// The merged state: the one closer to alive wins, since `heard_ms` is merged by maximum
/// and `tick` recomputes states from it anyway.
fn worse_or_better(a: State, b: State) -> State {
    let rank = |s| match s {
        State::Alive => 0,
        State::Suspect => 1,
        State::Dead => 2,
    };
    if rank(a) <= rank(b) {
        a
    } else {
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn report(node: &str, seq: u64, in_flight: u32) -> LoadReport {
        LoadReport {
            cold_starts: 0,
            warm_starts: 0,
            node: node.into(),
            peer: format!("peer-{node}"),
            tier: Tier::Edge,
            site: "a".into(),
            cores: 2,
            memory_bytes: 1 << 30,
            runtimes: vec![Runtime::Wasm],
            in_flight,
            queued: 0,
            service_ms: vec![("hello".into(), 0.5)],
            warm: vec!["hello".into()],
            quic: Some("127.0.0.1:4433".into()),
            http: None,
            mesh: Some("/ip4/127.0.0.1/tcp/7001".into()),
            seq,
        }
    }

    #[test]
    fn newer_reports_win_and_stale_ones_are_ignored() {
        let mut v = ClusterView::new();
        assert!(v.apply(report("a", 2, 1), 10));
        assert!(!v.apply(report("a", 1, 9), 20));
        assert_eq!(v.get("a").unwrap().report.in_flight, 1);
        assert!(v.apply(report("a", 3, 5), 30));
        assert_eq!(v.get("a").unwrap().report.in_flight, 5);
    }

    #[test]
    fn members_age_from_alive_to_forgotten() {
        let t = Timing::default();
        let mut v = ClusterView::new();
        v.apply(report("a", 1, 0), 0);
        v.tick(1500, &t);
        assert_eq!(v.get("a").unwrap().state, State::Alive);
        v.tick(1700, &t);
        assert_eq!(v.get("a").unwrap().state, State::Suspect);
        v.tick(2600, &t);
        assert_eq!(v.get("a").unwrap().state, State::Dead);
        v.apply(report("a", 2, 0), 3100);
        v.tick(3200, &t);
        assert_eq!(
            v.get("a").unwrap().state,
            State::Alive,
            "a report revives it"
        );
        v.tick(3100 + 60_000, &t);
        assert!(v.get("a").is_none());
    }

    #[test]
    fn candidates_are_live_warm_first_then_least_loaded() {
        let mut v = ClusterView::new();
        let mut cold = report("cold", 1, 0);
        cold.warm.clear();
        v.apply(cold, 0);
        v.apply(report("busy", 1, 8), 0);
        v.apply(report("idle", 1, 0), 0);
        let mut dead = report("dead", 1, 0);
        dead.node = "dead".into();
        v.apply(dead, 0);
        v.tick(500, &Timing::default());
        v.members.get_mut("dead").unwrap().state = State::Dead;
        let names: Vec<_> = v
            .candidates("hello", Runtime::Wasm)
            .iter()
            .map(|m| m.report.node.clone())
            .collect();
        assert_eq!(names, ["idle", "busy", "cold"]);
        assert!(v.candidates("hello", Runtime::Container).is_empty());
    }

    #[test]
    fn reports_are_bounded() {
        let mut r = report("a", 1, 0);
        r.warm = (0..500)
            .map(|i| format!("function-with-a-long-name-{i}"))
            .collect();
        r.service_ms = (0..500)
            .map(|i| (format!("function-with-a-long-name-{i}"), 1.0))
            .collect();
        let bytes = r.encode();
        assert!(bytes.len() <= MAX_REPORT);
        let back = LoadReport::decode(&bytes).unwrap();
        assert!(back.warm.len() <= MAX_LISTED);
        assert_eq!(
            LoadReport::decode(&vec![0u8; MAX_REPORT + 1]),
            Err(ReportError::TooLarge(MAX_REPORT + 1))
        );
        assert!(matches!(
            LoadReport::decode(&[0xff; 7]),
            Err(ReportError::Malformed(_))
        ));
    }

    fn arb_view() -> impl Strategy<Value = ClusterView> {
        proptest::collection::vec(
            (
                0usize..5,
                0u64..6,
                0u32..10,
                0u64..10_000,
                proptest::option::of(0u32..100),
            ),
            0..12,
        )
        .prop_map(|ops| {
            let mut v = ClusterView::new();
            for (n, seq, load, at, rtt) in ops {
                let name = format!("n{n}");
                v.apply(report(&name, seq, load), at);
                if let Some(r) = rtt {
                    v.observe_rtt(&name, f64::from(r));
                }
            }
            v
        })
    }

    fn reports(v: &ClusterView) -> BTreeMap<String, (LoadReport, u64)> {
        v.members
            .iter()
            .map(|(k, m)| (k.clone(), (m.report.clone(), m.heard_ms)))
            .collect()
    }

    proptest! {
        #[test]
        fn merge_is_commutative(a in arb_view(), b in arb_view()) {
            let mut ab = a.clone();
            ab.merge(&b);
            let mut ba = b.clone();
            ba.merge(&a);
            prop_assert_eq!(reports(&ab), reports(&ba));
        }

        #[test]
        fn merge_is_idempotent(a in arb_view(), b in arb_view()) {
            let mut once = a.clone();
            once.merge(&b);
            let mut twice = once.clone();
            twice.merge(&b);
            prop_assert_eq!(reports(&once), reports(&twice));
            let mut self_merge = a.clone();
            self_merge.merge(&a);
            prop_assert_eq!(reports(&self_merge), reports(&a));
        }

        #[test]
        fn merge_is_associative(a in arb_view(), b in arb_view(), c in arb_view()) {
            let mut l = a.clone();
            l.merge(&b);
            l.merge(&c);
            let mut bc = b.clone();
            bc.merge(&c);
            let mut r = a.clone();
            r.merge(&bc);
            prop_assert_eq!(reports(&l), reports(&r));
        }

        #[test]
        fn reports_round_trip(seq in any::<u64>(), load in any::<u32>(), site in "[a-z]{0,20}") {
            let mut r = report("n", seq, load);
            r.site = site;
            prop_assert_eq!(LoadReport::decode(&r.encode()).unwrap(), r);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = LoadReport::decode(&bytes);
        }
    }
}
