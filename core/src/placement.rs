//! The placement engine shared by the live router and the simulator: per (function, place)
//! latency models, their predictions for an invocation, the policy's choice, and what is
//! learnt from the outcome. Pure: places, time and randomness come in as values.

use rustc_hash::FxHashMap as HashMap;

use crate::config::Tier;
use crate::policy::{choose, Scorable, Weights};
use crate::predict::{Analytic, Features, Model, Source};

/// What is known of one place at decision time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlaceInfo<'a> {
    pub id: &'a str,
    pub tier: Tier,
    /// Round trip from the caller to the place, ms.
    pub rtt_ms: f64,
    /// Running plus waiting work per core there.
    pub load_per_core: f64,
    /// Whether the function's code is already loaded there.
    pub warm: bool,
    /// The function's recent service time there, ms, when the place reported one.
    pub service_ms: Option<f64>,
}

/// A prediction for one place.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    pub tier: Tier,
    pub predicted_ms: f64,
    pub source: Source,
    pub observations: usize,
    /// The features the prediction was made from (kept to learn from the outcome).
    pub features: Features,
}

impl Scorable for Scored {
    fn tier(&self) -> Tier {
        self.tier
    }
    fn predicted_ms(&self) -> f64 {
        self.predicted_ms
    }
}

/// A decision: every place's prediction, and the chosen one.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// One entry per place, in the order the places were given.
    pub scored: Vec<Scored>,
    pub chosen: usize,
    pub explored: bool,
    pub meets_deadline: bool,
}

impl Plan {
    /// The best place not in `tried`, by predicted latency: where a retry goes.
    pub fn next_best(&self, tried: &[usize]) -> Option<usize> {
        self.scored
            .iter()
            .enumerate()
            .filter(|(i, _)| !tried.contains(i))
            .min_by(|(_, a), (_, b)| a.predicted_ms.total_cmp(&b.predicted_ms))
            .map(|(i, _)| i)
    }
}

/// One function's models: a small index from place key to slot, and the models side by
/// side, so a decision reads them in order rather than scattered over a hash table.
#[derive(Debug, Clone, Default)]
struct Models {
    index: HashMap<u64, u32>,
    slots: Vec<(String, Model)>,
}

impl Models {
    fn get(&self, key: u64) -> Option<&Model> {
        self.index.get(&key).map(|i| &self.slots[*i as usize].1)
    }

    fn get_or_insert(&mut self, key: u64, place: &str, window: usize) -> &mut Model {
        let i = *self.index.entry(key).or_insert_with(|| {
            self.slots.push((place.to_string(), Model::new(window)));
            (self.slots.len() - 1) as u32
        });
        &mut self.slots[i as usize].1
    }

    fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        let before = self.slots.len();
        self.slots.retain(|(p, _)| keep(p));
        if self.slots.len() == before {
            return;
        }
        self.index = self
            .slots
            .iter()
            .enumerate()
            .map(|(i, (p, _))| (place_key(p), i as u32))
            .collect();
    }
}

/// A place id's key in the model maps.
fn place_key(id: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = rustc_hash::FxHasher::default();
    id.hash(&mut h);
    h.finish()
}

/// How many recent relative errors are kept for the median.
const ERRORS_KEPT: usize = 2048;

/// Models for every (function, place) seen, and the prediction error so far.
#[derive(Debug, Clone)]
pub struct Planner {
    /// Per function, per place (keyed by a 64-bit hash of the place's id, which keeps
    /// lookups on the hot path free of string comparisons), the place's id and its model.
    models: HashMap<String, Models>,
    /// Smoothed service time per function over all places, for places that report none.
    service: HashMap<String, f64>,
    /// How much slower than a function's typical service time each place runs, learnt
    /// over every function it ran: what a place that never ran a function will likely take.
    slowness: HashMap<String, f64>,
    pub analytic: Analytic,
    window: usize,
    errors: Vec<f64>,
    next_error: usize,
}

impl Planner {
    /// `window`: observations each model keeps.
    pub fn new(window: usize) -> Self {
        Planner {
            models: HashMap::default(),
            service: HashMap::default(),
            slowness: HashMap::default(),
            analytic: Analytic::default(),
            window,
            errors: Vec::new(),
            next_error: 0,
        }
    }

    fn features(&self, function: &str, payload_kb: f64, p: &PlaceInfo<'_>) -> Features {
        Features {
            payload_kb,
            rtt_ms: p.rtt_ms,
            load_per_core: p.load_per_core,
            cold: !p.warm,
            service_ms: p.service_ms.unwrap_or_else(|| {
                self.service.get(function).copied().unwrap_or(1.0)
                    * self.slowness.get(p.id).copied().unwrap_or(1.0)
            }),
        }
    }

    /// Predicts every place and chooses one. `roll` is uniform in [0, 1). `None` when
    /// `places` is empty.
    pub fn plan(
        &self,
        function: &str,
        payload_kb: f64,
        places: &[PlaceInfo<'_>],
        deadline_ms: Option<f64>,
        weights: &Weights,
        roll: f64,
    ) -> Option<Plan> {
        let models = self.models.get(function);
        let mut scored = Vec::with_capacity(places.len());
        for p in places {
            let features = self.features(function, payload_kb, p);
            let model = models.and_then(|m| m.get(place_key(p.id)));
            let (predicted_ms, source) = match model {
                Some(m) => m.predict(&features, &self.analytic),
                None => (self.analytic.estimate(&features), Source::Analytic),
            };
            let observations = model.map_or(0, Model::observations);
            scored.push(Scored {
                tier: p.tier,
                predicted_ms,
                source,
                observations,
                features,
            });
        }
        let d = choose(&scored, deadline_ms, weights, roll)?;
        Some(Plan {
            scored,
            chosen: d.index,
            explored: d.explored,
            meets_deadline: d.meets_deadline,
        })
    }

    /// Learns from an outcome: the invocation predicted with `features` at `place` took
    /// `actual_ms`, of which `service_ms` (when known) was the function's own time.
    pub fn observe(
        &mut self,
        function: &str,
        place: &str,
        features: &Features,
        predicted_ms: f64,
        actual_ms: f64,
        service_ms: Option<f64>,
    ) {
        if !actual_ms.is_finite() || actual_ms < 0.0 {
            return;
        }
        let rel = (predicted_ms - actual_ms).abs() / actual_ms.max(1e-3);
        if self.errors.len() < ERRORS_KEPT {
            self.errors.push(rel);
        } else {
            self.errors[self.next_error] = rel;
        }
        self.next_error = (self.next_error + 1) % ERRORS_KEPT;
        if let Some(s) = service_ms.filter(|s| s.is_finite() && *s > 0.0) {
            // The place's service time against the function's typical one, before this
            // observation moves the typical one.
            let typical = *self.service.entry(function.to_string()).or_insert(s);
            if typical > 0.0 {
                let r = (s / typical).clamp(0.01, 100.0);
                let k = self.slowness.entry(place.to_string()).or_insert(r);
                *k = 0.95 * *k + 0.05 * r;
            }
            if let Some(e) = self.service.get_mut(function) {
                *e = 0.8 * *e + 0.2 * s;
            }
        }
        if features.cold {
            // What a cold start added, beyond the warm estimate: the analytic estimate's
            // cold-start penalty follows it.
            let warm = Features {
                cold: false,
                ..*features
            };
            let extra = (actual_ms - self.analytic.estimate(&warm)).max(0.0);
            let c = &mut self.analytic.cold_penalty_ms;
            *c = 0.9 * *c + 0.1 * extra;
        }
        let window = self.window;
        let per_fn = match self.models.get_mut(function) {
            Some(m) => m,
            None => self.models.entry(function.to_string()).or_default(),
        };
        let model = per_fn.get_or_insert(place_key(place), place, window);
        model.observe(features, actual_ms, &self.analytic);
    }

    /// Refits every model with enough new observations; returns how many were refitted.
    /// Called off the hot path (a timer in the router, between events in the simulator).
    pub fn refit_due(&mut self) -> usize {
        let mut n = 0;
        let analytic = self.analytic;
        for (_, m) in self.models.values_mut().flat_map(|m| m.slots.iter_mut()) {
            if m.wants_refit() {
                m.refit(&analytic);
                n += 1;
            }
        }
        n
    }

    /// Median relative error of recent predictions (0.1 = 10 %), if any were checked.
    pub fn median_error(&self) -> Option<f64> {
        if self.errors.is_empty() {
            return None;
        }
        let mut v = self.errors.clone();
        let mid = v.len() / 2;
        let (_, m, _) = v.select_nth_unstable_by(mid, f64::total_cmp);
        Some(*m)
    }

    /// Forgets the models of places that left (so memory follows the membership).
    pub fn retain_places(&mut self, keep: impl Fn(&str) -> bool) {
        for m in self.models.values_mut() {
            m.retain(&keep);
        }
    }

    /// Forgets a function's models (it was removed).
    pub fn forget_function(&mut self, function: &str) {
        self.models.remove(function);
        self.service.remove(function);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place(id: &str, tier: Tier, rtt: f64, load: f64) -> PlaceInfo<'_> {
        PlaceInfo {
            id,
            tier,
            rtt_ms: rtt,
            load_per_core: load,
            warm: true,
            service_ms: Some(4.0),
        }
    }

    fn no_explore() -> Weights {
        Weights {
            explore: 0.0,
            ..Weights::default()
        }
    }

    #[test]
    fn without_history_the_nearest_idle_place_wins() {
        let p = Planner::new(64);
        let places = [
            place("cloud", Tier::Cloud, 40.0, 0.0),
            place("edge-1", Tier::Edge, 3.0, 2.0),
            place("edge-2", Tier::Edge, 3.0, 0.1),
        ];
        let plan = p.plan("f", 1.0, &places, None, &no_explore(), 0.5).unwrap();
        assert_eq!(places[plan.chosen].id, "edge-2");
        assert_eq!(plan.next_best(&[plan.chosen]), Some(1));
        assert_eq!(plan.next_best(&[0, 1, 2]), None);
    }

    #[test]
    fn a_place_slower_than_its_reports_suggest_is_learnt_and_avoided() {
        // edge-1 looks best on paper but really takes 30 ms more than the estimate.
        let mut p = Planner::new(64);
        let places = [
            place("edge-1", Tier::Edge, 2.0, 0.0),
            place("edge-2", Tier::Edge, 4.0, 0.0),
        ];
        let truth = |i: usize, f: &Features| -> f64 {
            f.rtt_ms + f.service_ms + 0.05 * f.payload_kb + if i == 0 { 30.0 } else { 0.0 }
        };
        let mut roll_state = 7u64;
        let mut chosen_last = Vec::new();
        for n in 0..600 {
            roll_state = roll_state.wrapping_mul(6364136223846793005).wrapping_add(1);
            let roll = (roll_state >> 11) as f64 / (1u64 << 53) as f64;
            let kb = (n % 32) as f64;
            let plan = p
                .plan("f", kb, &places, None, &Weights::default(), roll)
                .unwrap();
            let s = plan.scored[plan.chosen];
            let actual = truth(plan.chosen, &s.features);
            p.observe(
                "f",
                places[plan.chosen].id,
                &s.features,
                s.predicted_ms,
                actual,
                Some(4.0),
            );
            p.refit_due();
            if n >= 500 {
                chosen_last.push(plan.chosen);
            }
        }
        let on_2 = chosen_last.iter().filter(|c| **c == 1).count();
        assert!(
            on_2 >= 90,
            "edge-2 chosen {on_2} of 100 times after learning"
        );
        assert!(p.median_error().unwrap() < 0.2, "{:?}", p.median_error());
    }

    #[test]
    fn forgetting_drops_models() {
        let mut p = Planner::new(16);
        let f = Features::default();
        p.observe("f", "a", &f, 1.0, 1.0, None);
        p.observe("f", "b", &f, 1.0, 1.0, None);
        p.retain_places(|id| id != "a");
        let places = [place("a", Tier::Edge, 1.0, 0.0)];
        let plan = p.plan("f", 0.0, &places, None, &no_explore(), 0.5).unwrap();
        assert_eq!(plan.scored[0].observations, 0);
        p.forget_function("f");
        assert!(p.models.is_empty());
    }
}
