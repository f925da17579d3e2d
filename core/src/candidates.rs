//! A call's candidate places, built from what a router knows: each member's last report
//! (live: the cluster view's; simulated: the same numbers as of the node's last report), the
//! round trip ping measured, the router's own calls in flight there, and the places it
//! benched. One set of rules for the live router and the simulator: a member is listed when
//! alive, not benched, of the pinned tier (if any) and able to run the function's sandbox;
//! its load per core is its report's calls in flight and queued (or, when newer, what the
//! member's last answer to this router said), brought up to date with the router's own
//! calls sent and finished there since ([`Mine`]); service times are the report's, and
//! so are warm functions, with those the member ran for this router since ([`Mine::ran`]);
//! and the router's own calls there, with the service time it expected of them
//! ([`crate::placement::Own`]).

use crate::attempts::Bench;
use crate::config::Tier;
use crate::placement::Own;
use crate::Runtime;

/// What a member's last report says, as candidate building reads it; `F` names a function
/// (the live router's names, the simulator's numbers).
pub trait Reported<F: ?Sized> {
    fn id(&self) -> &str;
    /// The number of its newest report.
    fn seq(&self) -> u64;
    fn tier(&self) -> Tier;
    /// The membership holds it alive.
    fn alive(&self) -> bool;
    fn runs(&self, runtime: Runtime) -> bool;
    /// Calls in flight and queued, as reported.
    fn load(&self) -> u32;
    fn cores(&self) -> u32;
    /// Advertised speed (0 when it advertises none).
    fn speed(&self) -> f32;
    fn warm(&self, function: &F) -> bool;
    fn service_ms(&self, function: &F) -> Option<f64>;
}

/// What the call asks of a place.
#[derive(Debug, Clone, Copy)]
pub struct Wants<'a, F: ?Sized> {
    pub function: &'a F,
    /// The function's key, as [`Mine::answered`] is told it.
    pub key: u64,
    pub runtime: Runtime,
    /// Pinned to this tier (an OpenFaaS constraint).
    pub tier: Option<Tier>,
}

/// One listed place's facts (its id is the member's).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Facts {
    pub tier: Tier,
    pub rtt_ms: f64,
    pub load_per_core: f64,
    pub cores: u32,
    pub speed: Option<f64>,
    pub warm: bool,
    pub service_ms: Option<f64>,
    /// The router's own calls in flight there ([`Mine`]).
    pub own: Own,
}

/// Whether `m` is listed for a call that `wants` at `now_ms`.
pub fn listed<F: ?Sized, M: Reported<F>>(
    m: &M,
    wants: &Wants<'_, F>,
    bench: &Bench,
    now_ms: f64,
) -> bool {
    m.alive()
        && wants.tier.is_none_or(|t| t == m.tier())
        && m.runs(wants.runtime)
        && !bench.is_benched(m.id(), now_ms)
}

/// How many functions a [`Mine`] remembers running since the member's newest report.
const RAN_KEPT: usize = 4;

/// The router's own calls in flight at one member and the service time it expected of
/// them, how many of them the member's newest report counts, and which functions it
/// answered since that report.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Mine {
    /// In flight there now, and the service time the router expected of them there.
    pub own: Own,
    /// The newest report's number and its calls in flight when the router first built candidates after
    /// it arrived (a report counts the calls that were there when it was made), or when
    /// it last heard an answer under that report.
    at_report: Option<(u64, u32)>,
    /// The load the member's last answer said, when it came after the newest report.
    heard: Option<u32>,
    /// The keys of the functions it answered under report `ran_seq` ([`RAN_KEPT`] of
    /// them, the oldest replaced first), and how many it answered.
    ran: [u64; RAN_KEPT],
    ran_count: usize,
    ran_seq: u64,
}

impl Mine {
    /// The member answered one of the router's calls (already [`Mine::done`]) saying it
    /// had `load` calls, when its newest report was `seq`: until a newer report, its load
    /// is that, brought up to date with the router's own calls the same way. (The router's
    /// calls sent while the answer travelled back are taken as counted in it.)
    pub fn heard(&mut self, seq: u64, load: u32) {
        self.at_report = Some((seq, self.own.calls));
        self.heard = Some(load);
    }

    /// The member answered a call of the function keyed `function`, when its newest
    /// report was `seq`: until a newer report, the function is warm there
    /// ([`Mine::ran`]).
    pub fn answered(&mut self, seq: u64, function: u64) {
        if self.ran_seq != seq {
            self.ran_seq = seq;
            self.ran_count = 0;
        }
        if !self.holds(function) {
            self.ran[self.ran_count % RAN_KEPT] = function;
            self.ran_count += 1;
        }
    }

    /// Whether `function` is among those answered under report `ran_seq`.
    fn holds(&self, function: u64) -> bool {
        self.ran[..self.ran_count.min(RAN_KEPT)].contains(&function)
    }

    /// Whether the member answered a call of the function keyed `function` since its
    /// newest report, numbered `seq`: its code is loaded there, though the report, made
    /// before, does not list it. Without this, a function's calls after its first were
    /// all taken for cold starts until the member next reported (half a second on the
    /// live test's mesh: most of a burst of calls).
    pub fn ran(&self, seq: u64, function: u64) -> bool {
        self.ran_seq == seq && self.holds(function)
    }

    /// The router sent a call there that it expected to run `service_ms`.
    pub fn sent(&mut self, service_ms: f64) {
        let own = &mut self.own;
        own.calls = own.calls.saturating_add(1);
        if service_ms.is_finite() && service_ms > 0.0 {
            own.work_ms += service_ms;
        }
    }

    /// A call [`Mine::sent`] with `service_ms` is back.
    pub fn done(&mut self, service_ms: f64) {
        let own = &mut self.own;
        own.calls = own.calls.saturating_sub(1);
        if own.calls == 0 {
            own.work_ms = 0.0;
        } else if service_ms.is_finite() && service_ms > 0.0 {
            own.work_ms = (own.work_ms - service_ms).max(0.0);
        }
    }

    /// The member's load now, as far as this router can tell from a report that counted
    /// `reported` (numbered `seq`) and the answers heard since: the report's (or the last
    /// answer's), plus the calls the router sent there since, less its calls there that
    /// finished since; never less than its own calls there now. Ten calls reported a
    /// second ago, nine of them this router's and since answered, leave one, where the
    /// report alone says ten.
    pub fn load(&mut self, seq: u64, reported: u32) -> u32 {
        let now = self.own.calls;
        let (at, reported) = match self.at_report {
            Some((s, at)) if s == seq => (at, self.heard.unwrap_or(reported)),
            _ => {
                self.at_report = Some((seq, now));
                self.heard = None;
                (now, reported)
            }
        };
        let est = i64::from(reported) + i64::from(now) - i64::from(at);
        u32::try_from(est.max(0)).unwrap_or(u32::MAX).max(now)
    }
}

/// A listed member's facts: `mine` is the router's own calls in flight there, `rtt_ms`
/// the round trip measured to it (`None` before ping measured one).
pub fn facts<F: ?Sized, M: Reported<F>>(
    m: &M,
    wants: &Wants<'_, F>,
    mine: &mut Mine,
    rtt_ms: Option<f64>,
) -> Facts {
    let cores = m.cores().max(1);
    Facts {
        tier: m.tier(),
        // Until ping has measured it, a loopback-ish guess.
        rtt_ms: rtt_ms.unwrap_or(1.0),
        load_per_core: f64::from(mine.load(m.seq(), m.load())) / f64::from(cores),
        cores,
        speed: (m.speed() > 0.0).then_some(f64::from(m.speed())),
        warm: m.warm(wants.function) || mine.ran(m.seq(), wants.key),
        service_ms: m.service_ms(wants.function),
        own: mine.own,
    }
}

/// The live router's members, as their last reports say.
impl Reported<str> for crate::mesh::Member {
    fn id(&self) -> &str {
        &self.report.node
    }
    fn seq(&self) -> u64 {
        self.report.seq
    }
    fn tier(&self) -> Tier {
        self.report.tier
    }
    fn alive(&self) -> bool {
        self.state == crate::mesh::State::Alive
    }
    fn runs(&self, runtime: Runtime) -> bool {
        self.report.runtimes.contains(&runtime)
    }
    fn load(&self) -> u32 {
        self.report.in_flight.saturating_add(self.report.queued)
    }
    fn cores(&self) -> u32 {
        self.report.cores
    }
    fn speed(&self) -> f32 {
        self.report.speed
    }
    fn warm(&self, function: &str) -> bool {
        self.report.warm.iter().any(|w| w == function)
    }
    fn service_ms(&self, function: &str) -> Option<f64> {
        self.report
            .service_ms
            .iter()
            .find(|(n, _)| n == function)
            .map(|(_, s)| f64::from(*s))
    }
}

/// A peer cluster offered by a bridge, as one place: listed while the bridge is alive and
/// for functions of the namespaces offloaded there; its round trip is the bridge's plus
/// the bridge-to-bridge link's. Wasm only: a module travels by hash, an image does not.
pub struct PeerCandidate<'a> {
    pub bridge: &'a crate::mesh::Member,
    pub place: &'a crate::federation::PeerPlace,
}

impl PeerCandidate<'_> {
    /// Whether functions of namespace `ns` may go there.
    pub fn takes(&self, ns: &str) -> bool {
        self.place.namespaces.iter().any(|n| n == ns)
    }

    /// Round trip from the router: to the bridge (`to_bridge`, measured by ping) and on.
    pub fn rtt_ms(&self, to_bridge: Option<f64>) -> f64 {
        to_bridge.unwrap_or(1.0) + f64::from(self.place.rtt_ms)
    }
}

impl Reported<str> for PeerCandidate<'_> {
    fn id(&self) -> &str {
        &self.place.name
    }
    fn seq(&self) -> u64 {
        self.bridge.report.seq
    }
    fn tier(&self) -> Tier {
        Tier::Federated
    }
    fn alive(&self) -> bool {
        self.bridge.state == crate::mesh::State::Alive
    }
    fn runs(&self, runtime: Runtime) -> bool {
        runtime == Runtime::Wasm
    }
    fn load(&self) -> u32 {
        self.place.summary.in_flight
    }
    fn cores(&self) -> u32 {
        self.place.summary.cores
    }
    fn speed(&self) -> f32 {
        self.place.summary.speed
    }
    fn warm(&self, function: &str) -> bool {
        self.place.summary.warm.iter().any(|w| w == function)
    }
    fn service_ms(&self, function: &str) -> Option<f64> {
        self.place
            .summary
            .service_ms
            .iter()
            .find(|(n, _)| n == function)
            .map(|(_, s)| f64::from(*s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct M {
        alive: bool,
        load: u32,
        seq: u64,
    }

    impl Reported<str> for M {
        fn id(&self) -> &str {
            "edge-1"
        }
        fn seq(&self) -> u64 {
            self.seq
        }
        fn tier(&self) -> Tier {
            Tier::Edge
        }
        fn alive(&self) -> bool {
            self.alive
        }
        fn runs(&self, r: Runtime) -> bool {
            r == Runtime::Wasm
        }
        fn load(&self) -> u32 {
            self.load
        }
        fn cores(&self) -> u32 {
            4
        }
        fn speed(&self) -> f32 {
            0.0
        }
        fn warm(&self, f: &str) -> bool {
            f == "hello"
        }
        fn service_ms(&self, f: &str) -> Option<f64> {
            (f == "hello").then_some(2.0)
        }
    }

    /// A Wasm call of `function`, keyed `key`, pinned nowhere.
    fn wants(function: &str, key: u64) -> Wants<'_, str> {
        Wants {
            function,
            key,
            runtime: Runtime::Wasm,
            tier: None,
        }
    }

    #[test]
    fn members_are_listed_by_the_same_rules_and_load_is_the_fresher_count() {
        let wants = wants("hello", 1);
        let mut bench = Bench::default();
        let m = M {
            alive: true,
            load: 2,
            seq: 1,
        };
        assert!(listed(&m, &wants, &bench, 0.0));
        assert!(!listed(&M { alive: false, ..m }, &wants, &bench, 0.0));
        let pinned = Wants {
            tier: Some(Tier::Cloud),
            ..wants
        };
        assert!(!listed(&m, &pinned, &bench, 0.0));
        let container = Wants {
            runtime: Runtime::Container,
            ..wants
        };
        assert!(!listed(&m, &container, &bench, 0.0));
        bench.bench("edge-1", 0.0);
        assert!(!listed(&m, &wants, &bench, 10.0));
        let mut six = Mine {
            own: Own {
                calls: 6,
                work_ms: 0.0,
            },
            ..Mine::default()
        };
        let f = facts(&m, &wants, &mut six, None);
        assert_eq!((f.load_per_core, f.rtt_ms, f.speed), (1.5, 1.0, None));
        assert_eq!((f.warm, f.service_ms), (true, Some(2.0)));
        let f = facts(&m, &wants, &mut Mine::default(), Some(3.0));
        assert_eq!(f.load_per_core, 0.5);
    }

    #[test]
    fn the_reported_load_is_brought_up_to_date_with_the_routers_own_calls() {
        let mut mine = Mine::default();
        for _ in 0..9 {
            mine.sent(1.0);
        }
        // Report 1 counts the nine and one call of another router's.
        assert_eq!(mine.load(1, 10), 10);
        for _ in 0..8 {
            mine.done(1.0);
        }
        assert_eq!(mine.load(1, 10), 2, "eight of its nine answered since");
        mine.sent(1.0);
        mine.sent(1.0);
        assert_eq!(mine.load(1, 10), 4, "two more sent");
        // Report 2 was made after those: it counts what is there now.
        assert_eq!(mine.load(2, 3), 3);
        for _ in 0..3 {
            mine.done(1.0);
        }
        assert_eq!(mine.load(2, 3), 0, "the three answered");
        mine.sent(1.0);
        // Report 3, made before that call arrived, says nothing is there.
        assert_eq!(mine.load(3, 0), 1, "never below its own calls there");
    }

    #[test]
    fn the_routers_own_calls_carry_the_service_time_it_expected_of_them() {
        let m = M {
            alive: true,
            load: 0,
            seq: 1,
        };
        let wants = wants("hello", 1);
        let mut mine = Mine::default();
        mine.sent(400.0);
        mine.sent(2.0);
        // A call whose service time was not a number counts as a call, not as work.
        mine.sent(f64::NAN);
        let own = facts(&m, &wants, &mut mine, None).own;
        assert_eq!((own.calls, own.work_ms), (3, 402.0));
        mine.done(400.0);
        assert_eq!(
            mine.own,
            Own {
                calls: 2,
                work_ms: 2.0
            }
        );
        mine.done(f64::NAN);
        assert_eq!(
            mine.own,
            Own {
                calls: 1,
                work_ms: 2.0
            }
        );
        mine.done(2.0);
        assert_eq!(mine.own, Own::default());
    }

    #[test]
    fn an_answer_says_the_load_until_a_newer_report() {
        let mut mine = Mine::default();
        mine.sent(1.0);
        mine.sent(1.0);
        assert_eq!(mine.load(1, 4), 4, "the report counts both");
        // One answered, saying seven calls were there (others' calls came since).
        mine.done(1.0);
        mine.heard(1, 7);
        assert_eq!(mine.load(1, 4), 7);
        mine.sent(1.0);
        assert_eq!(mine.load(1, 4), 8, "one more sent since the answer");
        mine.done(1.0);
        mine.done(1.0);
        assert_eq!(mine.load(1, 4), 6, "and two answered");
        // A newer report replaces what the answer said.
        assert_eq!(mine.load(2, 3), 3);
        // An answer heard under an older report than the newest one the router built
        // with is dropped at the next look.
        mine.sent(1.0);
        mine.done(1.0);
        mine.heard(1, 9);
        assert_eq!(mine.load(2, 3), 3);
    }

    #[test]
    fn a_function_the_member_answered_since_its_report_is_warm_there_until_a_newer_report() {
        let cold = M {
            alive: true,
            load: 0,
            seq: 1,
        };
        // The report lists only `hello` warm; `resize` (key 2) ran for this router since.
        let wants = wants("resize", 2);
        let mut mine = Mine::default();
        assert!(!facts(&cold, &wants, &mut mine, None).warm, "not reported");
        mine.answered(1, 2);
        assert!(
            facts(&cold, &wants, &mut mine, None).warm,
            "answered since report 1"
        );
        let other = Wants { key: 3, ..wants };
        assert!(
            !facts(&cold, &other, &mut mine, None).warm,
            "only what it answered"
        );
        // More functions than it keeps: the oldest are forgotten (taken for cold, as the
        // report says), the newest kept.
        for k in 10..10 + RAN_KEPT as u64 {
            mine.answered(1, k);
        }
        assert!(!mine.ran(1, 2));
        assert!(mine.ran(1, 10) && mine.ran(1, 10 + RAN_KEPT as u64 - 1));
        // Report 2, made since, says what is loaded there now (it may have been evicted).
        mine.answered(1, 2);
        let newer = M { seq: 2, ..cold };
        assert!(
            !facts(&newer, &wants, &mut mine, None).warm,
            "report 2 stands"
        );
        // An answer under report 2 marks it again.
        mine.answered(2, 2);
        assert!(facts(&newer, &wants, &mut mine, None).warm);
        assert!(
            !mine.ran(1, 2),
            "what was answered under report 1 is forgotten"
        );
    }
}
