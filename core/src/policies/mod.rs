//! Placement policies behind one trait, each runnable in the live router
//! (`[router] policy`, `fogline router --policy`) and in the simulator, given only what a
//! live router knows of each place ([`PlaceInfo`]): its gossiped report, the round trip
//! ping measured, and the policy's own observations.
//!
//! - [`regression`]: Fogline's: per (function, place) latency models fitted online, with
//!   priors shared across functions and places ([`crate::placement::Planner`]).
//! - [`a3e`]: A3-E's selection (Baresi et al., 2019).
//! - [`mu`]: Mu's load balancing by expected queueing (Mittal et al., SoCC 2021).
//! - [`simple`]: `least-loaded`, `nearest-edge`, `round-robin`, `cloud-only`, `device-only`.
//! - [`oracle`]: the simulator's bound: it knows what each place would really take.
//!
//! A new policy is one file here and one [`Kind`]; the router and the simulator drive it
//! through the same state machine ([`crate::attempts`]).

pub mod a3e;
pub mod mu;
pub mod observed;
pub mod oracle;
pub mod regression;
pub mod simple;

use crate::attempts::Outcome;
use crate::config::Tier;
use crate::placement::{PlaceInfo, Plan, Scored};
use crate::policy::{choose, Weights};
use crate::predict::{Features, Source};

/// The policies there are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Regression,
    A3e,
    Mu,
    LeastLoaded,
    NearestEdge,
    RoundRobin,
    CloudOnly,
    DeviceOnly,
    Oracle,
}

impl Kind {
    pub const ALL: [Kind; 9] = [
        Kind::Regression,
        Kind::A3e,
        Kind::Mu,
        Kind::NearestEdge,
        Kind::LeastLoaded,
        Kind::RoundRobin,
        Kind::CloudOnly,
        Kind::DeviceOnly,
        Kind::Oracle,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Regression => "regression",
            Kind::A3e => "a3e",
            Kind::Mu => "mu",
            Kind::LeastLoaded => "least-loaded",
            Kind::NearestEdge => "nearest-edge",
            Kind::RoundRobin => "round-robin",
            Kind::CloudOnly => "cloud-only",
            Kind::DeviceOnly => "device-only",
            Kind::Oracle => "oracle",
        }
    }

    /// Whether a live router can run it (the oracle needs the future).
    pub fn live(self) -> bool {
        self != Kind::Oracle
    }

    /// One policy by name; `live` refuses the simulator-only oracle.
    pub fn parse(s: &str, live: bool) -> Result<Kind, String> {
        let names = || {
            Kind::ALL
                .iter()
                .filter(|k| !live || k.live())
                .map(|k| k.name())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match Kind::ALL.into_iter().find(|k| k.name() == s.trim()) {
            Some(Kind::Oracle) if live => Err(format!(
                "policy \"oracle\" runs only in the simulator (it knows what every place would take); choose from {}",
                names()
            )),
            Some(k) => Ok(k),
            None => Err(format!("unknown policy {s:?}; choose from {}", names())),
        }
    }

    /// `all`, or a comma-separated list of names (the simulator's).
    pub fn parse_list(s: &str) -> Result<Vec<Kind>, String> {
        if s.trim() == "all" {
            return Ok(Kind::ALL.to_vec());
        }
        s.split(',')
            .map(|n| {
                Kind::parse(n, false).map_err(|e| e.replace("choose from", "choose from all,"))
            })
            .collect()
    }

    /// A fresh policy of this kind; `window`: observations each learnt model keeps.
    pub fn build(self, window: usize) -> Box<dyn Policy> {
        match self {
            Kind::Regression => Box::new(regression::Regression::new(window)),
            Kind::A3e | Kind::Mu => Box::new(observed::Estimating::new(self)),
            Kind::Oracle => Box::new(oracle::Oracle),
            k => Box::new(simple::Simple::new(k)),
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The call being placed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Call<'a> {
    pub function: &'a str,
    /// The request's size, KiB (the policy adds the response it expects).
    pub request_kb: f64,
    pub deadline_ms: Option<f64>,
    pub weights: Weights,
    /// The driver's clock, ms.
    pub now_ms: f64,
}

impl Call<'_> {
    /// The same call planned again at `now_ms` among places listed again
    /// ([`crate::attempts::Next::Relist`]): without exploring (a call that failed
    /// everywhere it went is no call to learn with).
    pub fn relisted(&self, now_ms: f64) -> Self {
        Call {
            now_ms,
            weights: Weights {
                explore: 0.0,
                ..self.weights
            },
            ..*self
        }
    }
}

/// A placement policy: scores every place for a call (lower is better; for the policies
/// that predict, the predicted milliseconds), chooses one, and learns from outcomes.
pub trait Policy: Send {
    fn kind(&self) -> Kind;

    /// Scores `places` and chooses one. `roll` is uniform in [0, 1). `None` only when
    /// `places` is empty.
    fn plan(&mut self, call: &Call<'_>, places: &[PlaceInfo<'_>], roll: f64) -> Option<Plan>;

    /// Learns from one attempt's outcome at `place`, planned as `scored`.
    fn observe(&mut self, _call: &Call<'_>, _place: &str, _scored: &Scored, _outcome: &Outcome) {}

    /// Work kept off the hot path (refits); returns how many models changed.
    fn housekeeping(&mut self) -> usize {
        0
    }

    /// Median relative error of its recent predictions, for those that predict.
    fn median_error(&self) -> Option<f64> {
        None
    }

    /// Appends the relative errors of its recent predictions (for a median over several).
    fn recent_errors(&self, _out: &mut Vec<f64>) {}

    /// Forgets what it learnt of places not kept (they left the membership).
    fn retain_places(&mut self, _keep: &dyn Fn(&str) -> bool) {}

    /// Forgets a removed function.
    fn forget_function(&mut self, _function: &str) {}

    /// How long functions stay warm and how many callers its device place stands for, for
    /// those that weigh what a cold start buys.
    fn set_reuse(&mut self, _reuse: crate::placement::Reuse) {}
}

/// The features of a call at a place, as every policy reads them.
pub fn features(payload_kb: f64, p: &PlaceInfo<'_>, service_ms: f64) -> Features {
    Features {
        payload_kb,
        rtt_ms: p.rtt_ms,
        load_per_core: p.load_per_core,
        cold: !p.warm,
        service_ms,
    }
}

/// A plan from one score per place (lower is better), with `weights` and `deadline` when
/// the score is a time, or neither when it is only an order.
pub(crate) fn plan_by(
    call: &Call<'_>,
    places: &[PlaceInfo<'_>],
    roll: f64,
    is_time: bool,
    score: impl Fn(usize, &PlaceInfo<'_>) -> f64,
) -> Option<Plan> {
    let scored: Vec<Scored> = places
        .iter()
        .enumerate()
        .map(|(i, p)| Scored {
            tier: p.tier,
            predicted_ms: score(i, p),
            source: Source::Score,
            observations: 0,
            features: features(call.request_kb, p, p.service_ms.unwrap_or(1.0)),
            speed: p.speed.unwrap_or(1.0),
            stale: false,
            guessed: false,
            extra_ms: 0.0,
            herd_ms: 0.0,
            size_ms: None,
        })
        .collect();
    let (deadline, weights) = if is_time {
        (
            call.deadline_ms,
            Weights {
                explore: 0.0,
                ..call.weights
            },
        )
    } else {
        (
            None,
            Weights {
                cloud_cost_ms: 0.0,
                device_energy_ms: 0.0,
                explore: 0.0,
            },
        )
    };
    let d = choose(&scored, deadline, &weights, roll)?;
    Some(Plan {
        scored,
        chosen: d.index,
        explored: false,
        meets_deadline: d.meets_deadline,
        timed: is_time,
        load_device: false,
        guessed: false,
    })
}

/// A tier's order for the single-tier baselines: its own tier first.
pub(crate) fn off_tier(p: &PlaceInfo<'_>, tier: Tier) -> f64 {
    if p.tier == tier {
        0.0
    } else {
        1e9
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place(id: &str, tier: Tier, rtt: f64, load: f64, service: f64) -> PlaceInfo<'_> {
        PlaceInfo {
            id,
            key: crate::placement::place_key(id),
            tier,
            rtt_ms: rtt,
            load_per_core: load,
            cores: 4,
            speed: None,
            warm: true,
            service_ms: Some(service),
            truth_ms: None,
            own: Default::default(),
        }
    }

    fn call() -> Call<'static> {
        Call {
            function: "f",
            request_kb: 1.0,
            deadline_ms: None,
            weights: Weights::default(),
            now_ms: 0.0,
        }
    }

    #[test]
    fn names_parse_back_and_the_oracle_is_not_live() {
        for k in Kind::ALL {
            assert_eq!(Kind::parse(k.name(), false), Ok(k));
            assert_eq!(k.build(64).kind(), k);
        }
        let e = Kind::parse("oracle", true).unwrap_err();
        assert!(e.contains("only in the simulator"), "{e}");
        let e = Kind::parse("fastest", true).unwrap_err();
        assert!(
            e.contains("unknown policy") && e.contains("regression"),
            "{e}"
        );
        assert_eq!(Kind::parse_list("all").unwrap().len(), 9);
        assert_eq!(
            Kind::parse_list("mu, a3e").unwrap(),
            vec![Kind::Mu, Kind::A3e]
        );
    }

    #[test]
    fn each_baseline_chooses_what_its_name_says() {
        let places = [
            place("cloud", Tier::Cloud, 40.0, 0.0, 2.0),
            place("edge-near-busy", Tier::Edge, 2.0, 3.0, 10.0),
            place("edge-far-idle", Tier::Edge, 8.0, 0.0, 10.0),
            place("device", Tier::Device, 0.0, 0.0, 80.0),
        ];
        let pick = |k: Kind| {
            let mut p = k.build(64);
            p.plan(&call(), &places, 0.5).unwrap().chosen
        };
        assert_eq!(pick(Kind::NearestEdge), 1);
        assert_eq!(pick(Kind::LeastLoaded), 2);
        assert_eq!(pick(Kind::CloudOnly), 0);
        assert_eq!(pick(Kind::DeviceOnly), 3);
        // Mu: (in flight + 1) service times per core, plus the round trip.
        assert_eq!(pick(Kind::Mu), 2);
        // A3-E: measured latency plus execution time, blind to load.
        assert_eq!(pick(Kind::A3e), 1);
        let mut rr = Kind::RoundRobin.build(64);
        let a = rr.plan(&call(), &places, 0.5).unwrap().chosen;
        let b = rr.plan(&call(), &places, 0.5).unwrap().chosen;
        assert_ne!(a, b);
    }
}
