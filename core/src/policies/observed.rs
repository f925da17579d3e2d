//! The policies that estimate from service times they observed themselves, per (function,
//! place) and per function over every place, when a place reports none: A3-E's selection
//! ([`super::a3e`]) and Mu's ([`super::mu`]), each a score over the same observations.

use rustc_hash::FxHashMap as HashMap;

use super::{plan_by, Call, Kind, Policy};
use crate::attempts::Outcome;
use crate::placement::{PlaceInfo, Plan, Scored};

/// A3-E or Mu, with what it observed.
#[derive(Debug, Clone)]
pub struct Estimating {
    kind: Kind,
    seen: Observed,
}

impl Estimating {
    pub fn new(kind: Kind) -> Self {
        Estimating {
            kind,
            seen: Observed::default(),
        }
    }
}

impl Policy for Estimating {
    fn kind(&self) -> Kind {
        self.kind
    }

    fn plan(&mut self, call: &Call<'_>, places: &[PlaceInfo<'_>], roll: f64) -> Option<Plan> {
        let mu = self.kind == Kind::Mu;
        plan_by(call, places, roll, true, |_, p| {
            // A3-E knows no execution time before it ran one; Mu counts one ms.
            let default = if mu { 1.0 } else { 0.0 };
            let service = p
                .service_ms
                .unwrap_or_else(|| self.seen.service(call.function, p.id, default));
            if mu {
                super::mu::score(p, service)
            } else {
                super::a3e::score(p, service)
            }
        })
    }

    fn observe(&mut self, call: &Call<'_>, place: &str, _s: &Scored, outcome: &Outcome) {
        self.seen.observe(call, place, outcome);
    }

    fn retain_places(&mut self, keep: &dyn Fn(&str) -> bool) {
        self.seen.retain_places(keep);
    }

    fn forget_function(&mut self, function: &str) {
        self.seen.forget_function(function);
    }
}

#[derive(Debug, Clone, Default)]
pub struct Observed {
    at: HashMap<(String, String), f64>,
    typical: HashMap<String, f64>,
}

impl Observed {
    /// The function's smoothed service time at `place`, else anywhere, else `default`.
    pub fn service(&self, function: &str, place: &str, default: f64) -> f64 {
        self.at
            .get(&(function.to_string(), place.to_string()))
            .or_else(|| self.typical.get(function))
            .copied()
            .unwrap_or(default)
    }

    /// Takes an answer's service time (other outcomes teach these policies nothing).
    pub fn observe(&mut self, call: &Call<'_>, place: &str, outcome: &Outcome) {
        if let Outcome::Answered {
            service_ms: Some(s),
            ..
        } = outcome
        {
            let e = self
                .at
                .entry((call.function.to_string(), place.to_string()))
                .or_insert(*s);
            *e = 0.8 * *e + 0.2 * s;
            let t = self.typical.entry(call.function.to_string()).or_insert(*s);
            *t = 0.8 * *t + 0.2 * s;
        }
    }

    pub fn retain_places(&mut self, keep: &dyn Fn(&str) -> bool) {
        self.at.retain(|(_, p), _| keep(p));
    }

    pub fn forget_function(&mut self, function: &str) {
        self.at.retain(|(f, _), _| f != function);
        self.typical.remove(function);
    }
}
