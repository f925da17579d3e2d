//! A call's candidate places, built from what a router knows: each member's last report
//! (live: the cluster view's; simulated: the same numbers as of the node's last report), the
//! round trip ping measured, the router's own calls in flight there, and the places it
//! benched. One set of rules for the live router and the simulator: a member is listed when
//! alive, not benched, of the pinned tier (if any) and able to run the function's sandbox;
//! its load per core is its report's calls in flight and queued, or the router's own calls
//! there when more (fresher); warm functions and service times are the report's.

use crate::attempts::Bench;
use crate::config::Tier;
use crate::Runtime;

/// What a member's last report says, as candidate building reads it; `F` names a function
/// (the live router's names, the simulator's numbers).
pub trait Reported<F: ?Sized> {
    fn id(&self) -> &str;
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

/// A listed member's facts: `mine` is the router's own calls in flight there, `rtt_ms`
/// the round trip measured to it (`None` before ping measured one).
pub fn facts<F: ?Sized, M: Reported<F>>(
    m: &M,
    wants: &Wants<'_, F>,
    mine: u32,
    rtt_ms: Option<f64>,
) -> Facts {
    let cores = m.cores().max(1);
    Facts {
        tier: m.tier(),
        // Until ping has measured it, a loopback-ish guess.
        rtt_ms: rtt_ms.unwrap_or(1.0),
        load_per_core: f64::from(m.load().max(mine)) / f64::from(cores),
        cores,
        speed: (m.speed() > 0.0).then_some(f64::from(m.speed())),
        warm: m.warm(wants.function),
        service_ms: m.service_ms(wants.function),
    }
}

/// The live router's members, as their last reports say.
impl Reported<str> for crate::mesh::Member {
    fn id(&self) -> &str {
        &self.report.node
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
    }

    impl Reported<str> for M {
        fn id(&self) -> &str {
            "edge-1"
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

    #[test]
    fn members_are_listed_by_the_same_rules_and_load_is_the_fresher_count() {
        let wants = Wants {
            function: "hello",
            runtime: Runtime::Wasm,
            tier: None,
        };
        let mut bench = Bench::default();
        let m = M {
            alive: true,
            load: 2,
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
        let f = facts(&m, &wants, 6, None);
        assert_eq!((f.load_per_core, f.rtt_ms, f.speed), (1.5, 1.0, None));
        assert_eq!((f.warm, f.service_ms), (true, Some(2.0)));
        assert_eq!(facts(&m, &wants, 0, Some(3.0)).load_per_core, 0.5);
    }
}
