//! Fogline's policy: the planner's learnt per (function, place) latency models
//! ([`crate::placement::Planner`]), the fastest predicted place that meets the deadline,
//! weighed by cost and energy, with a little exploration.

use super::{Call, Kind, Policy};
use crate::attempts::Outcome;
use crate::placement::{PlaceInfo, Plan, Planner, Scored};

#[derive(Debug, Clone)]
pub struct Regression {
    pub planner: Planner,
}

impl Regression {
    pub fn new(window: usize) -> Self {
        Regression {
            planner: Planner::new(window),
        }
    }
}

impl Policy for Regression {
    fn kind(&self) -> Kind {
        Kind::Regression
    }

    fn plan(&mut self, call: &Call<'_>, places: &[PlaceInfo<'_>], roll: f64) -> Option<Plan> {
        self.planner.plan(call, places, roll)
    }

    fn observe(&mut self, call: &Call<'_>, place: &str, scored: &Scored, outcome: &Outcome) {
        self.planner.learn(call, place, scored, outcome);
    }

    fn housekeeping(&mut self) -> usize {
        self.planner.refit_due()
    }

    fn median_error(&self) -> Option<f64> {
        self.planner.median_error()
    }

    fn recent_errors(&self, out: &mut Vec<f64>) {
        self.planner.recent_errors(out);
    }

    fn retain_places(&mut self, keep: &dyn Fn(&str) -> bool) {
        self.planner.retain_places(keep);
    }

    fn forget_function(&mut self, function: &str) {
        self.planner.forget_function(function);
    }

    fn set_reuse(&mut self, reuse: crate::placement::Reuse) {
        self.planner.reuse = reuse;
    }
}
