//! What members of the mesh tell each other, and the cluster view they build from it.
//!
//! Every member sends a [`Gossip`] each interval (and at once on a large change): mostly a
//! [`Beat`], the part of its [`LoadReport`] that changes (load, warm functions, service
//! times), and now and then the whole report (addresses, tier, site, capacity), which is
//! what a newcomer needs and rarely changes. A [`ClusterView`] merges them — per member the
//! whole report with the newest sequence number gives the fixed part and the newest of
//! reports and beats the changing part, so merging is commutative, associative and
//! idempotent (property-tested below) — and ages members from alive to suspect to dead to
//! forgotten as intervals pass unheard.
//! Time comes in as milliseconds on a monotonic clock; the view never reads a clock, so
//! the simulator runs the same code.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::Tier;
use crate::manifest::Runtime;

/// Largest encoded report; lists are cut to fit.
pub const MAX_REPORT: usize = 4096;
/// Largest gossip message decoded: a report, or a revocation list (a few hundred entries).
pub const MAX_GOSSIP: usize = 64 * 1024;
/// Most functions listed as warm or with a service time.
pub const MAX_LISTED: usize = 48;
/// Most members named in one [`Introduce`], and the longest address it carries: a longer
/// list goes out as several messages.
pub const MAX_INTRODUCED: usize = 32;
pub const MAX_ADDRESS: usize = 120;

/// A member reports a function's service time as the moving average of its runs, taken in
/// the order they started, in which each new run weighs 1/`SERVICE_AVERAGE`
/// ([`crate::service::ServiceAverage`]: the agent's and the simulator's members alike).
pub const SERVICE_AVERAGE: u64 = 8;
/// The variance of that average relative to one run's, w/(2 − w) for the weight w: how
/// far a reported service time strays from the function's mean by chance.
pub const REPORTED_SERVICE_VAR: f64 = 1.0 / (2.0 * SERVICE_AVERAGE as f64 - 1.0);
/// How many runs a reported service time counts for: the runs whose mean varies as much
/// as the report does, 1/[`REPORTED_SERVICE_VAR`].
pub const REPORTED_SERVICE_RUNS: f64 = 2.0 * SERVICE_AVERAGE as f64 - 1.0;

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
    /// Its speed against the reference machine (a calibration run at start; 0: unknown):
    /// what a router predicts a function that never ran there from.
    pub speed: f32,
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
    #[error("gossip message of {0} bytes exceeds the limit of {MAX_GOSSIP}")]
    TooLarge(usize),
    #[error("malformed load report: {0}")]
    Malformed(String),
}

impl LoadReport {
    /// A report of `node` on `tier` with nothing else said: no cores, load, functions or
    /// addresses, number 0. Fill in what is known with struct update syntax.
    pub fn blank(node: &str, tier: Tier) -> Self {
        LoadReport {
            node: node.to_owned(),
            peer: String::new(),
            tier,
            site: String::new(),
            cores: 0,
            memory_bytes: 0,
            speed: 0.0,
            runtimes: Vec::new(),
            in_flight: 0,
            queued: 0,
            service_ms: Vec::new(),
            warm: Vec::new(),
            quic: None,
            http: None,
            mesh: None,
            cold_starts: 0,
            warm_starts: 0,
            seq: 0,
        }
    }

    /// Load per core: running plus queued work over cores.
    pub fn load_per_core(&self) -> f64 {
        // Both come from the wire: added as floats, so no sum of two u32s overflows.
        (f64::from(self.in_flight) + f64::from(self.queued)) / f64::from(self.cores.max(1))
    }

    /// Whether `next` differs enough from `self` to be sent before the next interval.
    pub fn changed_a_lot(&self, next: &LoadReport) -> bool {
        let a = self.load_per_core();
        let b = next.load_per_core();
        (a - b).abs() >= EARLY_REPORT_LOAD || self.warm != next.warm || self.quic != next.quic
    }

    /// The changing part.
    pub fn beat(&self) -> Beat {
        Beat {
            node: self.node.clone(),
            seq: self.seq,
            in_flight: self.in_flight,
            queued: self.queued,
            service_ms: self.service_ms.clone(),
            warm: self.warm.clone(),
            cold_starts: self.cold_starts,
            warm_starts: self.warm_starts,
        }
    }

    fn take_beat(&mut self, b: &Beat) {
        self.seq = b.seq;
        self.in_flight = b.in_flight;
        self.queued = b.queued;
        self.service_ms.clone_from(&b.service_ms);
        self.warm.clone_from(&b.warm);
        self.cold_starts = b.cold_starts;
        self.warm_starts = b.warm_starts;
    }

    fn take_profile(&mut self, r: &LoadReport) {
        self.peer.clone_from(&r.peer);
        self.tier = r.tier;
        self.site.clone_from(&r.site);
        self.cores = r.cores;
        self.memory_bytes = r.memory_bytes;
        self.speed = r.speed;
        self.runtimes.clone_from(&r.runtimes);
        self.quic.clone_from(&r.quic);
        self.http.clone_from(&r.http);
        self.mesh.clone_from(&r.mesh);
    }

    /// The fixed part, encoded: what a member compares to know a whole report is due.
    pub fn profile_bytes(&self) -> Vec<u8> {
        postcard::to_allocvec(&(
            &self.peer,
            self.tier,
            &self.site,
            self.cores,
            self.memory_bytes,
            self.speed.to_bits(),
            &self.runtimes,
            &self.quic,
            &self.http,
            &self.mesh,
        ))
        .unwrap_or_default()
    }
}

/// How far a member's load per core moves before it reports at once rather than at its
/// next interval ([`LoadReport::changed_a_lot`]; the simulator's members do the same).
pub const EARLY_REPORT_LOAD: f64 = 0.5;

/// The changing part of a member's report: what it sends every interval between whole
/// reports. A few dozen bytes when it runs few functions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Beat {
    pub node: String,
    pub seq: u64,
    pub in_flight: u32,
    pub queued: u32,
    pub service_ms: Vec<(String, f32)>,
    pub warm: Vec<String>,
    pub cold_starts: u64,
    pub warm_starts: u64,
}

/// One gossiped message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Gossip {
    /// The whole report: sent first, when the fixed part changes, when a member joins, and
    /// every so often.
    Full(LoadReport),
    /// The changing part only.
    Beat(Beat),
    /// Other members' addresses, so whoever hears it can dial those it has no connection
    /// to: how a newcomer that joined through one member finds the rest, and they find it.
    Introduce(Introduce),
    /// The member is stopping: place nothing more on it. Its last message; a later whole
    /// report (a restart numbers from the wall clock) brings it back.
    Leave(Leave),
    /// Sent before each whole report: proof that the libp2p peer speaking holds the
    /// certificate of the member it reports for. Members with a cluster CA accept a whole
    /// report only from the peer so proven.
    Proof(Proof),
    /// The cluster's revocation list, signed by its CA: whoever verifies a newer one than
    /// it holds keeps it and refuses those certificates. Sent by a member that was handed
    /// one, and again with its whole reports, so members that join later hear it too. The
    /// second field is when it was sent (ms): gossip drops a message it has seen, and a
    /// list sent again must not be one.
    Revocations(crate::revocation::SignedList, u64),
    /// The peer clusters a bridge relays calls to, as places (sent by a bridge with
    /// peerings every interval). Last, so members of earlier releases drop it as one
    /// message they cannot read.
    Places(crate::federation::PeerPlaces),
}

/// Most peer places one bridge gossips.
pub const MAX_PEER_PLACES: usize = 16;

/// A member's certificate and its signature over (member, libp2p peer): binds the peer to
/// the member. Checked by the node (the certificate against the cluster CA).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof {
    pub node: String,
    pub peer: String,
    /// The number of the whole report it comes before. Gossipsub drops a message it has
    /// already published, so every proof must differ from the last in its bytes, whatever
    /// the signature scheme (Ed25519 signs the same message the same way every time).
    pub seq: u64,
    /// The member's certificate, DER.
    pub cert: Vec<u8>,
    /// TLS signature scheme of `sig`, as numbered in TLS.
    pub scheme: u16,
    pub sig: Vec<u8>,
}

impl Proof {
    /// What the signature covers.
    pub fn message(node: &str, peer: &str) -> Vec<u8> {
        let mut m = b"fogline mesh identity v1\0".to_vec();
        m.extend_from_slice(node.as_bytes());
        m.push(0);
        m.extend_from_slice(peer.as_bytes());
        m
    }
}

/// A member's goodbye, numbered after everything it sent before.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leave {
    pub node: String,
    pub seq: u64,
}

/// Mesh addresses of members (`/ip4/…/tcp/…/p2p/<peer id>`), numbered so that the same
/// list sent again is a new message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Introduce {
    pub seq: u64,
    pub members: Vec<String>,
}

impl Introduce {
    /// Splits `addresses` into messages of at most [`MAX_INTRODUCED`], numbered from `seq`;
    /// addresses longer than [`MAX_ADDRESS`] are left out.
    pub fn split(seq: u64, addresses: impl IntoIterator<Item = String>) -> Vec<Introduce> {
        let mut out: Vec<Introduce> = Vec::new();
        for a in addresses.into_iter().filter(|a| a.len() <= MAX_ADDRESS) {
            match out.last_mut() {
                Some(i) if i.members.len() < MAX_INTRODUCED => i.members.push(a),
                _ => out.push(Introduce {
                    seq: seq + out.len() as u64,
                    members: vec![a],
                }),
            }
        }
        out
    }
}

/// A report's or beat's service times and warm functions, to cut to size.
type FunctionLists<'a> = (&'a mut Vec<(String, f32)>, &'a mut Vec<String>);

impl Gossip {
    /// The member it speaks for (an introduction speaks for none).
    pub fn node(&self) -> Option<&str> {
        match self {
            Gossip::Full(r) => Some(&r.node),
            Gossip::Beat(b) => Some(&b.node),
            Gossip::Leave(l) => Some(&l.node),
            Gossip::Proof(p) => Some(&p.node),
            Gossip::Places(p) => Some(&p.bridge),
            Gossip::Revocations(..) => None,
            Gossip::Introduce(_) => None,
        }
    }

    fn service_times(&self) -> &[(String, f32)] {
        match self {
            Gossip::Full(r) => &r.service_ms,
            Gossip::Beat(b) => &b.service_ms,
            Gossip::Introduce(_)
            | Gossip::Leave(_)
            | Gossip::Proof(_)
            | Gossip::Places(_)
            | Gossip::Revocations(..) => &[],
        }
    }

    fn lists_mut(&mut self) -> Option<FunctionLists<'_>> {
        match self {
            Gossip::Full(r) => Some((&mut r.service_ms, &mut r.warm)),
            Gossip::Beat(b) => Some((&mut b.service_ms, &mut b.warm)),
            Gossip::Introduce(_)
            | Gossip::Leave(_)
            | Gossip::Proof(_)
            | Gossip::Places(_)
            | Gossip::Revocations(..) => None,
        }
    }

    /// Encodes, cutting the function lists until it fits in [`MAX_REPORT`] (an
    /// [`Introduce`] made by [`Introduce::split`] always fits).
    pub fn encode(&self) -> Vec<u8> {
        let mut g = self.clone();
        if let Some((s, w)) = g.lists_mut() {
            // A time no member could have measured is not sent (decode refuses it).
            s.retain(|(_, ms)| usable_ms(*ms));
            s.truncate(MAX_LISTED);
            w.truncate(MAX_LISTED);
        }
        if let Gossip::Places(places) = &self {
            let mut p = places.clone();
            p.places.truncate(MAX_PEER_PLACES);
            let mut keep = crate::federation::MAX_SUMMARY_LISTED;
            loop {
                for pl in &mut p.places {
                    pl.summary.warm.truncate(keep);
                    pl.summary.service_ms.truncate(keep);
                    pl.namespaces.truncate(crate::federation::MAX_NAMESPACES);
                }
                let bytes = postcard::to_allocvec(&Gossip::Places(p.clone())).unwrap_or_default();
                if bytes.len() <= MAX_REPORT || p.places.len() <= 1 && keep == 0 {
                    return bytes;
                }
                if keep == 0 {
                    p.places.truncate(p.places.len() / 2);
                }
                keep /= 2;
            }
        }
        loop {
            let bytes = postcard::to_allocvec(&g).unwrap_or_default();
            let Some((s, w)) = g.lists_mut() else {
                return bytes;
            };
            if bytes.len() <= MAX_REPORT || (s.is_empty() && w.is_empty()) {
                return bytes;
            }
            let (ns, nw) = (s.len() / 2, w.len() / 2);
            s.truncate(ns);
            w.truncate(nw);
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, ReportError> {
        if bytes.len() > MAX_GOSSIP {
            return Err(ReportError::TooLarge(bytes.len()));
        }
        let g: Gossip =
            postcard::from_bytes(bytes).map_err(|e| ReportError::Malformed(e.to_string()))?;
        // Service times go straight into placement: a NaN, infinite or negative one would
        // make a member look fastest (or never chosen) whatever it does.
        if let Some((f, ms)) = g.service_times().iter().find(|(_, ms)| !usable_ms(*ms)) {
            return Err(ReportError::Malformed(format!(
                "service time of {f:?} is {ms} ms (must be finite and not negative)"
            )));
        }
        if let Gossip::Places(p) = &g {
            if p.places.len() > MAX_PEER_PLACES {
                return Err(ReportError::Malformed(format!(
                    "{} peer places (at most {MAX_PEER_PLACES})",
                    p.places.len()
                )));
            }
            for pl in &p.places {
                let s = &pl.summary;
                let usable = usable_ms(pl.rtt_ms)
                    && s.speed.is_finite()
                    && (0.0..=1000.0).contains(&s.speed);
                if !usable || s.service_ms.iter().any(|(_, ms)| !usable_ms(*ms)) {
                    return Err(ReportError::Malformed(format!(
                        "peer place {:?} has a round trip, speed or service time that is not a usable number",
                        pl.name
                    )));
                }
            }
        }
        // So does the advertised speed (0: none advertised).
        if let Gossip::Full(r) = &g {
            if !(r.speed.is_finite() && (0.0..=1000.0).contains(&r.speed)) {
                return Err(ReportError::Malformed(format!(
                    "speed {} (must be a finite number from 0 to 1000)",
                    r.speed
                )));
            }
        }
        Ok(g)
    }
}

/// A service time a member could have measured: finite and not negative.
fn usable_ms(ms: f32) -> bool {
    ms.is_finite() && ms >= 0.0
}

/// The gossip decoder's and the view's contract on arbitrary input, checked by the fuzz
/// target `gossip_view` and by the corpus replay test: `data` is cut into messages (a
/// length byte, then that many bytes), each heard a moment after the last; nothing panics,
/// what decodes encodes back to a message that decodes to the same member, the view only
/// ever lists members with a usable load, and merging a view into itself changes nothing.
#[doc(hidden)]
pub fn check_gossip(data: &[u8]) {
    let mut view = ClusterView::new();
    let mut rest = data;
    let mut now = 0u64;
    while let Some((&n, tail)) = rest.split_first() {
        let (msg, tail) = tail.split_at(usize::from(n).min(tail.len()));
        rest = tail;
        now += 100;
        let Ok(g) = Gossip::decode(msg) else {
            continue;
        };
        let again = Gossip::decode(&g.encode()).expect("an encoded message decodes");
        assert_eq!(again.node(), g.node());
        if let Gossip::Full(r) = &g {
            view.observe_rtt(&r.node, f64::from(n));
        }
        view.apply_gossip(g, now);
        view.tick(now, &Timing::for_interval(500));
    }
    for m in view.members() {
        let load = m.report.load_per_core();
        assert!(load.is_finite() && load >= 0.0, "load {load}");
        for (_, ms) in &m.report.service_ms {
            assert!(usable_ms(*ms), "service time {ms} in the view");
        }
        assert!(
            m.report.speed.is_finite() && m.report.speed >= 0.0,
            "speed {} in the view",
            m.report.speed
        );
    }
    for rt in [Runtime::Wasm, Runtime::Container] {
        for m in view.candidates("f", rt) {
            assert_eq!(m.state, State::Alive);
        }
    }
    let before = view.clone();
    view.merge(&before);
    assert_eq!(view, before, "merging a view into itself changed it");
}

/// Whether something numbered `new_seq` replaces what is numbered `cur_seq`: a higher
/// number, or on a tie the larger encoding (a deterministic tie-break that keeps merging
/// commutative). The encodings are made only on a tie.
fn replaces(
    cur_seq: u64,
    cur: impl FnOnce() -> Vec<u8>,
    new_seq: u64,
    new: impl FnOnce() -> Vec<u8>,
) -> bool {
    match new_seq.cmp(&cur_seq) {
        std::cmp::Ordering::Greater => true,
        std::cmp::Ordering::Less => false,
        std::cmp::Ordering::Equal => new() > cur(),
    }
}

fn encoded(b: &Beat) -> Vec<u8> {
    postcard::to_allocvec(b).unwrap_or_default()
}

/// Whether beat `b` replaces beat `a`.
fn newer_beat(a: &Beat, b: &Beat) -> bool {
    replaces(a.seq, || encoded(a), b.seq, || encoded(b))
}

/// Whether beat `b` replaces the changing part of `r`.
fn newer_load(r: &LoadReport, b: &Beat) -> bool {
    replaces(r.seq, || encoded(&r.beat()), b.seq, || encoded(b))
}

impl Member {
    /// Whether a whole report numbered `seq` replaces the fixed part of this member's.
    fn newer_profile(&self, seq: u64, r: &LoadReport) -> bool {
        replaces(
            self.full_seq,
            || self.report.profile_bytes(),
            seq,
            || r.profile_bytes(),
        )
    }

    /// Takes a beat heard at `heard_ms` (kept while its whole report was awaited) if newer.
    fn absorb(&mut self, b: &Beat, heard_ms: u64) {
        if newer_load(&self.report, b) {
            if b.seq > self.report.seq {
                self.left = false;
            }
            self.report.take_beat(b);
        }
        self.heard_ms = self.heard_ms.max(heard_ms);
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
    /// The fixed part from the newest whole report, the changing part from the newest of
    /// reports and beats (`report.seq` is that one's).
    pub report: LoadReport,
    /// Sequence number of the whole report the fixed part came from.
    #[serde(default)]
    pub full_seq: u64,
    /// When a report from it last arrived (ms, the view owner's clock).
    pub heard_ms: u64,
    /// Round trip measured to it, if any.
    pub rtt_ms: Option<f64>,
    pub state: State,
    /// It said it was stopping (`Gossip::Leave`, numbered `report.seq`): dead until a
    /// newer report.
    #[serde(default)]
    pub left: bool,
}

impl Member {
    /// Dead by silence, not by its goodbye: it may be gone with calls it took.
    pub fn unreachable(&self) -> bool {
        self.state == State::Dead && !self.left
    }
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
    /// Beats from members whose whole report has not arrived yet, with when they were
    /// heard: kept (the newest per member) until it does, not listed.
    pending: BTreeMap<String, (Beat, u64)>,
    /// Peer clusters offered by bridges, per bridge: the newest list and when it was heard.
    peer_places: BTreeMap<String, (crate::federation::PeerPlaces, u64)>,
}

/// How much of the smoothed round trip each new ping keeps: 7/8 old, 1/8 new, like TCP's
/// SRTT, so that one sample does not swing placement.
pub const RTT_KEEP: f64 = 0.875;

/// A member's round trip after a ping of `sample_ms`, from the smoothed one before it
/// (none before the first ping, which is taken as it is). The simulator smooths its
/// pings with this too.
pub fn smoothed_rtt(old_ms: Option<f64>, sample_ms: f64) -> f64 {
    match old_ms {
        Some(old) => RTT_KEEP * old + (1.0 - RTT_KEEP) * sample_ms,
        None => sample_ms,
    }
}

impl ClusterView {
    pub fn new() -> Self {
        ClusterView::default()
    }

    /// Takes a whole report heard at `now_ms`. Returns whether it told us anything new.
    pub fn apply(&mut self, report: LoadReport, now_ms: u64) -> bool {
        match self.members.get_mut(&report.node) {
            Some(m) => {
                // Only something numbered after a goodbye brings a member back; on a tie
                // the goodbye stands (as it does when views merge).
                let after = report.seq > m.report.seq;
                let profile = m.newer_profile(report.seq, &report);
                let load = replaces(
                    m.report.seq,
                    || encoded(&m.report.beat()),
                    report.seq,
                    || encoded(&report.beat()),
                );
                match (profile, load) {
                    (false, false) => return false,
                    (true, true) => {
                        m.full_seq = report.seq;
                        m.report = report;
                    }
                    (true, false) => {
                        m.report.take_profile(&report);
                        m.full_seq = report.seq;
                    }
                    (false, true) => m.report.take_beat(&report.beat()),
                }
                m.heard_ms = m.heard_ms.max(now_ms);
                if after {
                    m.left = false;
                }
                if !m.left {
                    m.state = State::Alive;
                }
                true
            }
            None => {
                let mut m = Member {
                    full_seq: report.seq,
                    report,
                    heard_ms: now_ms,
                    rtt_ms: None,
                    state: State::Alive,
                    left: false,
                };
                if let Some((b, heard)) = self.pending.remove(&m.report.node) {
                    m.absorb(&b, heard);
                }
                self.members.insert(m.report.node.clone(), m);
                true
            }
        }
    }

    /// Takes a beat heard at `now_ms`. Returns whether it told us anything new; a beat from
    /// a member whose whole report has not arrived is kept until it does.
    pub fn apply_beat(&mut self, beat: Beat, now_ms: u64) -> bool {
        match self.members.get_mut(&beat.node) {
            Some(m) => {
                if !newer_load(&m.report, &beat) {
                    return false;
                }
                if beat.seq > m.report.seq {
                    m.left = false;
                }
                m.report.take_beat(&beat);
                m.heard_ms = m.heard_ms.max(now_ms);
                if !m.left {
                    m.state = State::Alive;
                }
                true
            }
            None => {
                match self.pending.get_mut(&beat.node) {
                    Some((b, heard)) => {
                        if newer_beat(b, &beat) {
                            *b = beat;
                            *heard = (*heard).max(now_ms);
                        }
                    }
                    None => {
                        self.pending.insert(beat.node.clone(), (beat, now_ms));
                    }
                }
                false
            }
        }
    }

    /// Takes a report or a beat (an introduction changes nothing here).
    pub fn apply_gossip(&mut self, g: Gossip, now_ms: u64) -> bool {
        match g {
            Gossip::Full(r) => self.apply(r, now_ms),
            Gossip::Beat(b) => self.apply_beat(b, now_ms),
            Gossip::Leave(l) => self.apply_leave(&l, now_ms),
            Gossip::Places(p) => self.apply_places(p, now_ms),
            // Proofs are checked by the driver, which holds the cluster CA.
            Gossip::Introduce(_) | Gossip::Proof(_) | Gossip::Revocations(..) => false,
        }
    }

    /// Takes a member's goodbye heard at `now_ms`: dead at once, unless something newer
    /// from it was heard already. Returns whether it changed anything.
    pub fn apply_leave(&mut self, l: &Leave, now_ms: u64) -> bool {
        let Some(m) = self.members.get_mut(&l.node) else {
            return false;
        };
        if l.seq <= m.report.seq {
            return false;
        }
        m.report.seq = l.seq;
        m.left = true;
        m.state = State::Dead;
        m.heard_ms = m.heard_ms.max(now_ms);
        true
    }

    /// Takes a bridge's peer places heard at `now_ms` (the newest list per bridge counts).
    pub fn apply_places(&mut self, p: crate::federation::PeerPlaces, now_ms: u64) -> bool {
        match self.peer_places.get_mut(&p.bridge) {
            Some((old, heard)) if old.seq >= p.seq => {
                *heard = (*heard).max(now_ms);
                false
            }
            _ => {
                self.peer_places.insert(p.bridge.clone(), (p, now_ms));
                true
            }
        }
    }

    /// The peer clusters offered by bridges that are alive and were heard offering them
    /// within `fresh_ms`: each with the bridge that relays to it.
    pub fn peer_places(
        &self,
        now_ms: u64,
        fresh_ms: u64,
    ) -> impl Iterator<Item = (&Member, &crate::federation::PeerPlace)> {
        self.peer_places
            .iter()
            .filter(move |(_, (_, heard))| now_ms.saturating_sub(*heard) <= fresh_ms)
            .filter_map(|(bridge, (p, _))| {
                let m = self.members.get(bridge)?;
                (m.state == State::Alive).then_some((m, p))
            })
            .flat_map(|(m, p)| p.places.iter().map(move |pl| (m, pl)))
    }

    /// Members heard from only through beats so far (their whole report is awaited).
    pub fn awaiting(&self) -> impl Iterator<Item = &str> {
        self.pending.keys().map(String::as_str)
    }

    /// Records a round trip to a member, by node name.
    pub fn observe_rtt(&mut self, node: &str, rtt_ms: f64) {
        if let Some(m) = self.members.get_mut(node) {
            m.rtt_ms = Some(smoothed_rtt(m.rtt_ms, rtt_ms));
        }
    }

    /// Ages members: suspect, then dead, then forgotten, by time unheard.
    pub fn tick(&mut self, now_ms: u64, t: &Timing) {
        self.members.retain(|_, m| {
            let quiet = now_ms.saturating_sub(m.heard_ms);
            m.state = if m.left || quiet >= t.dead_ms {
                State::Dead
            } else if quiet >= t.suspect_ms {
                State::Suspect
            } else {
                State::Alive
            };
            quiet < t.forget_ms
        });
        self.pending
            .retain(|_, (_, heard)| now_ms.saturating_sub(*heard) < t.forget_ms);
        self.peer_places
            .retain(|_, (_, heard)| now_ms.saturating_sub(*heard) < t.forget_ms);
    }

    /// Marks a member as heard now without a new report (used for the view's owner).
    pub fn touch(&mut self, node: &str, now_ms: u64) {
        if let Some(m) = self.members.get_mut(node) {
            m.heard_ms = m.heard_ms.max(now_ms);
        }
    }

    /// Merges another view: per member the newer fixed part, the newer changing part and
    /// the later hearing win.
    pub fn merge(&mut self, other: &ClusterView) {
        for (k, theirs) in &other.members {
            match self.members.get_mut(k) {
                None => {
                    let mut m = theirs.clone();
                    if let Some((b, heard)) = self.pending.remove(k) {
                        m.absorb(&b, heard);
                    }
                    self.members.insert(k.clone(), m);
                }
                Some(ours) => {
                    if ours.newer_profile(theirs.full_seq, &theirs.report) {
                        ours.report.take_profile(&theirs.report);
                        ours.full_seq = theirs.full_seq;
                    }
                    // A goodbye goes with the number it was given: the newer side's stands,
                    // and on a tie either side's.
                    let ours_seq = ours.report.seq;
                    ours.absorb(&theirs.report.beat(), theirs.heard_ms);
                    ours.left = match theirs.report.seq.cmp(&ours_seq) {
                        std::cmp::Ordering::Greater => theirs.left,
                        std::cmp::Ordering::Equal => ours.left || theirs.left,
                        std::cmp::Ordering::Less => ours.left,
                    };
                    ours.rtt_ms = match (ours.rtt_ms, theirs.rtt_ms) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                    ours.state = if ours.left {
                        State::Dead
                    } else {
                        worse_or_better(ours.state, theirs.state)
                    };
                }
            }
        }
        for (k, (b, heard)) in &other.pending {
            if let Some(m) = self.members.get_mut(k) {
                m.absorb(b, *heard);
                continue;
            }
            match self.pending.get_mut(k) {
                Some((ours, h)) => {
                    if newer_beat(ours, b) {
                        *ours = b.clone();
                    }
                    *h = (*h).max(*heard);
                }
                None => {
                    self.pending.insert(k.clone(), (b.clone(), *heard));
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
            speed: 1.0,
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
    fn unusable_service_times_are_refused_by_name_and_never_sent() {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -1.0] {
            let mut r = report("a", 1, 0);
            r.service_ms = vec![("hello".into(), 0.5), ("resize".into(), bad)];
            // Encoded as a careless member would, without encode's filter.
            let raw = postcard::to_allocvec(&Gossip::Full(r.clone())).unwrap();
            let err = Gossip::decode(&raw).unwrap_err().to_string();
            assert!(
                err.contains("\"resize\"") && err.contains("finite"),
                "{err}"
            );
            let beat = postcard::to_allocvec(&Gossip::Beat(r.beat())).unwrap();
            assert!(Gossip::decode(&beat).is_err(), "a beat with {bad}");
            // Ours leaves the bad time out and keeps the rest.
            match Gossip::decode(&Gossip::Full(r).encode()).unwrap() {
                Gossip::Full(back) => assert_eq!(back.service_ms, vec![("hello".into(), 0.5)]),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn the_largest_load_a_member_can_report_does_not_overflow() {
        let mut r = report("a", 1, u32::MAX);
        r.queued = u32::MAX;
        r.cores = 0;
        assert_eq!(r.load_per_core(), 2.0 * f64::from(u32::MAX));
    }

    #[test]
    fn a_member_that_leaves_is_dead_at_once_until_it_restarts() {
        let t = Timing::default();
        let mut v = ClusterView::new();
        v.apply(report("a", 10, 0), 0);
        v.apply(report("b", 10, 0), 0);
        // A goodbye numbered before what we have is stale; a stranger's changes nothing.
        assert!(!v.apply_leave(
            &Leave {
                node: "a".into(),
                seq: 9
            },
            5
        ));
        assert!(!v.apply_leave(
            &Leave {
                node: "zz".into(),
                seq: 99
            },
            5
        ));
        assert!(v.apply_gossip(
            Gossip::Leave(Leave {
                node: "a".into(),
                seq: 11
            }),
            10
        ));
        assert_eq!(v.get("a").unwrap().state, State::Dead);
        // Gone from placement, but not unreachable: it answers the calls it took.
        assert!(!v.get("a").unwrap().unreachable());
        v.tick(20, &t);
        assert_eq!(
            v.get("a").unwrap().state,
            State::Dead,
            "not revived by aging"
        );
        assert_eq!(v.candidates("hello", Runtime::Wasm).len(), 1);
        // What it sent before the goodbye and arrives after it changes nothing.
        v.apply(report("a", 11, 3), 30);
        v.apply_beat(report("a", 10, 3).beat(), 30);
        v.tick(40, &t);
        assert_eq!(v.get("a").unwrap().state, State::Dead);
        // Restarted (numbered from the wall clock): alive again.
        assert!(v.apply(report("a", 5000, 0), 50));
        v.tick(60, &t);
        assert_eq!(v.get("a").unwrap().state, State::Alive);
        assert!(!v.get("a").unwrap().left);
        // The goodbye round-trips like any other message.
        let g = Gossip::Leave(Leave {
            node: "b".into(),
            seq: 12,
        });
        assert_eq!(Gossip::decode(&g.encode()).unwrap(), g);
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
        assert!(v.get("a").unwrap().unreachable());
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
    fn beats_carry_load_and_wait_for_the_whole_report() {
        let mut v = ClusterView::new();
        let mut r = report("a", 1, 0);
        // A beat before any whole report: kept, not listed.
        r.seq = 5;
        r.in_flight = 7;
        assert!(!v.apply_beat(r.beat(), 10));
        assert!(v.get("a").is_none());
        assert_eq!(v.awaiting().collect::<Vec<_>>(), ["a"]);
        // The whole report (older) arrives: listed, with the beat's newer load.
        assert!(v.apply(report("a", 3, 1), 20));
        let m = v.get("a").unwrap();
        assert_eq!((m.report.in_flight, m.report.seq, m.full_seq), (7, 5, 3));
        assert_eq!(m.report.quic.as_deref(), Some("127.0.0.1:4433"));
        assert_eq!(v.awaiting().count(), 0);
        // Later beats move the load and keep the member alive; stale ones do nothing.
        r.seq = 6;
        r.in_flight = 2;
        r.quic = Some("elsewhere".into());
        assert!(v.apply_beat(r.beat(), 1500));
        assert!(!v.apply_beat(report("a", 4, 9).beat(), 1600));
        v.tick(2000, &Timing::default());
        let m = v.get("a").unwrap();
        assert_eq!((m.report.in_flight, m.state), (2, State::Alive));
        assert_eq!(
            m.report.quic.as_deref(),
            Some("127.0.0.1:4433"),
            "a beat never changes the fixed part"
        );
        // A newer whole report does.
        let mut full = report("a", 7, 3);
        full.quic = Some("10.0.0.9:4433".into());
        assert!(v.apply(full, 2100));
        assert_eq!(
            v.get("a").unwrap().report.quic.as_deref(),
            Some("10.0.0.9:4433")
        );
    }

    #[test]
    fn a_beat_is_a_few_dozen_bytes() {
        let mut r = report("edge-17", 1_790_000_000_000, 3);
        r.service_ms.clear();
        r.warm.clear();
        let beat = Gossip::Beat(r.beat()).encode();
        let full = Gossip::Full(r).encode();
        assert!(beat.len() <= 24, "beat is {} bytes", beat.len());
        assert!(full.len() > 2 * beat.len());
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
        for g in [Gossip::Beat(r.beat()), Gossip::Full(r)] {
            let bytes = g.encode();
            assert!(bytes.len() <= MAX_REPORT);
            let back = Gossip::decode(&bytes).unwrap();
            let (_, warm) = back.clone().lists_mut_owned();
            assert!(!warm.is_empty() && warm.len() <= MAX_LISTED);
        }
        assert!(matches!(
            Gossip::decode(&[0xff; 7]),
            Err(ReportError::Malformed(_))
        ));
        assert_eq!(
            Gossip::decode(&vec![0u8; MAX_GOSSIP + 1]),
            Err(ReportError::TooLarge(MAX_GOSSIP + 1))
        );
    }

    #[test]
    fn introductions_split_to_fit() {
        // 256 members with long addresses: every piece fits, none is lost but the one
        // address over the limit.
        let addr = |i: usize| {
            format!("/ip6/fd00:aaaa:bbbb:cccc:dddd:eeee:ffff:{i:04x}/tcp/7001/p2p/12D3KooWPeerIdOfFiftyTwoCharactersLong{i:016}")
        };
        let mut all: Vec<String> = (0..256).map(addr).collect();
        all.push("x".repeat(MAX_ADDRESS + 1));
        let parts = Introduce::split(9, all.clone());
        assert_eq!(parts.len(), 256usize.div_ceil(MAX_INTRODUCED));
        let mut back = Vec::new();
        for (k, p) in parts.into_iter().enumerate() {
            assert_eq!(p.seq, 9 + k as u64);
            let g = Gossip::Introduce(p);
            let bytes = g.encode();
            assert!(bytes.len() <= MAX_REPORT, "{} bytes", bytes.len());
            match Gossip::decode(&bytes).unwrap() {
                Gossip::Introduce(i) => back.extend(i.members),
                other => panic!("decoded as {other:?}"),
            }
        }
        all.pop();
        assert_eq!(back, all);
        assert!(Introduce::split(1, Vec::new()).is_empty());
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
                // Some members are heard only through beats, some both ways; a whole
                // report's fixed part varies with its sequence number.
                let mut r = report(&name, seq, load);
                r.site = format!("s{}", seq % 3);
                if load % 3 == 0 {
                    v.apply_beat(r.beat(), at);
                } else if load == 7 {
                    v.apply_leave(
                        &Leave {
                            node: name.clone(),
                            seq,
                        },
                        at,
                    );
                } else {
                    v.apply(r, at);
                }
                if let Some(r) = rtt {
                    v.observe_rtt(&name, f64::from(r));
                }
            }
            v
        })
    }

    impl Gossip {
        fn lists_mut_owned(mut self) -> (Vec<(String, f32)>, Vec<String>) {
            let (s, w) = self.lists_mut().expect("a report or a beat");
            (std::mem::take(s), std::mem::take(w))
        }
    }

    type Seen = (
        BTreeMap<String, (LoadReport, u64, u64, bool)>,
        BTreeMap<String, (Beat, u64)>,
    );

    fn reports(v: &ClusterView) -> Seen {
        (
            v.members
                .iter()
                .map(|(k, m)| {
                    let seen = (m.report.clone(), m.full_seq, m.heard_ms, m.left);
                    (k.clone(), seen)
                })
                .collect(),
            v.pending.clone(),
        )
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
            let g = Gossip::Full(r);
            prop_assert_eq!(Gossip::decode(&g.encode()).unwrap(), g);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = Gossip::decode(&bytes);
        }

        #[test]
        fn gossip_round_trips(seq in any::<u64>(), load in any::<u32>(), full in any::<bool>()) {
            let r = report("n", seq, load);
            let g = if full { Gossip::Full(r) } else { Gossip::Beat(r.beat()) };
            prop_assert_eq!(Gossip::decode(&g.encode()).unwrap(), g);
        }

        /// However whole reports and beats interleave and arrive, the view ends with the
        /// newest fixed part and the newest changing part.
        #[test]
        fn order_of_arrival_does_not_matter(
            msgs in proptest::collection::vec((1u64..20, 0u32..10, any::<bool>()), 1..12),
            seed in any::<u64>(),
        ) {
            let gossip: Vec<Gossip> = msgs
                .iter()
                .map(|&(seq, load, full)| {
                    let mut r = report("n", seq, load + seq as u32 * 10);
                    r.site = format!("site-{seq}");
                    if full { Gossip::Full(r) } else { Gossip::Beat(r.beat()) }
                })
                .collect();
            let mut shuffled = gossip.clone();
            let mut x = seed | 1;
            for i in (1..shuffled.len()).rev() {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                shuffled.swap(i, (x % (i as u64 + 1)) as usize);
            }
            let mut a = ClusterView::new();
            let mut b = ClusterView::new();
            for g in gossip { a.apply_gossip(g, 0); }
            for g in shuffled { b.apply_gossip(g, 0); }
            prop_assert_eq!(reports(&a), reports(&b));
        }
    }
}
