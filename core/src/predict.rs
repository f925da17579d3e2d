//! Latency prediction for placement: an online linear model per (function, place), fitted
//! from a bounded window of what was observed, with an analytic estimate where the model has
//! too little or too poor data. Pure: observations and predictions come in as numbers.
//!
//! This is the first piece of the router (issue 5); the policy and the simulator build on it.

use std::collections::VecDeque;

/// Features of one invocation at one place.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Features {
    /// Request plus response size, KiB.
    pub payload_kb: f64,
    /// Round trip to the place, ms.
    pub rtt_ms: f64,
    /// Work running or queued there, per core.
    pub load_per_core: f64,
    /// Whether the function's code must be loaded first.
    pub cold: bool,
    /// The function's recent service time there, ms.
    pub service_ms: f64,
}

impl Features {
    const N: usize = 5;

    fn row(&self) -> [f64; Self::N] {
        [
            self.payload_kb,
            self.rtt_ms,
            self.load_per_core,
            f64::from(u8::from(self.cold)),
            self.service_ms,
        ]
    }
}

/// The analytic estimate: round trip + transfer + queueing + service + cold-start penalty.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Analytic {
    /// Throughput of the link, KiB per ms.
    pub kb_per_ms: f64,
    /// Extra time of a cold start, ms.
    pub cold_penalty_ms: f64,
}

impl Default for Analytic {
    fn default() -> Self {
        Analytic {
            kb_per_ms: 10.0,
            cold_penalty_ms: 5.0,
        }
    }
}

impl Analytic {
    pub fn estimate(&self, f: &Features) -> f64 {
        let transfer = f.payload_kb / self.kb_per_ms.max(1e-9);
        let queueing = f.load_per_core.max(0.0) * f.service_ms;
        let cold = if f.cold { self.cold_penalty_ms } else { 0.0 };
        f.rtt_ms + transfer + queueing + f.service_ms + cold
    }
}

/// Where a prediction came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Model,
    Analytic,
}

/// The online model of one function at one place.
#[derive(Debug, Clone)]
pub struct Model {
    window: VecDeque<([f64; Features::N], f64)>,
    capacity: usize,
    coef: Option<[f64; Features::N + 1]>,
    since_fit: usize,
    /// Smoothed relative error of predictions made before each observation.
    error: Option<f64>,
}

/// A fit is kept only when it explains at least this much of the variance.
const MIN_R2: f64 = 0.5;
/// Refit after this many new observations.
const REFIT_EVERY: usize = 8;

impl Model {
    pub fn new(capacity: usize) -> Self {
        Model {
            window: VecDeque::with_capacity(capacity),
            capacity: capacity.max(16),
            coef: None,
            since_fit: 0,
            error: None,
        }
    }

    /// Predicts the latency (ms) of an invocation with features `f`.
    pub fn predict(&self, f: &Features, fallback: &Analytic) -> (f64, Source) {
        match &self.coef {
            Some(c) => {
                let x = f.row();
                let y = c[0] + x.iter().zip(&c[1..]).map(|(a, b)| a * b).sum::<f64>();
                // A linear fit can go below zero far from its data; latency cannot.
                (y.max(0.0), Source::Model)
            }
            None => (fallback.estimate(f), Source::Analytic),
        }
    }

    /// Records what an invocation actually took; tracks the error of the prediction made for it.
    pub fn observe(&mut self, f: &Features, actual_ms: f64, fallback: &Analytic) {
        if !actual_ms.is_finite() || actual_ms < 0.0 {
            return;
        }
        let (predicted, _) = self.predict(f, fallback);
        let rel = (predicted - actual_ms).abs() / actual_ms.max(1e-3);
        self.error = Some(match self.error {
            Some(e) => 0.9 * e + 0.1 * rel,
            None => rel,
        });
        if self.window.len() == self.capacity {
            self.window.pop_front();
        }
        self.window.push_back((f.row(), actual_ms));
        self.since_fit += 1;
    }

    /// Whether enough new observations arrived for a refit (done off the hot path).
    pub fn wants_refit(&self) -> bool {
        self.since_fit >= REFIT_EVERY && self.window.len() >= 2 * (Features::N + 1)
    }

    /// Refits from the window by least squares; keeps the fit only if it explains the data.
    pub fn refit(&mut self) {
        self.since_fit = 0;
        let rows = self.window.len();
        if rows < 2 * (Features::N + 1) {
            return;
        }
        let cols = Features::N + 2;
        let mut data = Vec::with_capacity(rows * cols);
        for (x, y) in &self.window {
            data.push(*y);
            data.push(1.0);
            data.extend_from_slice(x);
        }
        self.coef = match linregress::fit_low_level_regression_model(&data, rows, cols) {
            Ok(m)
                if m.rsquared().is_finite()
                    && m.rsquared() >= MIN_R2
                    && m.parameters().iter().all(|p| p.is_finite()) =>
            {
                let mut c = [0.0; Features::N + 1];
                c.copy_from_slice(&m.parameters()[..Features::N + 1]);
                Some(c)
            }
            _ => None,
        };
    }

    /// Smoothed relative prediction error so far.
    pub fn error(&self) -> Option<f64> {
        self.error
    }

    pub fn fitted(&self) -> bool {
        self.coef.is_some()
    }

    pub fn observations(&self) -> usize {
        self.window.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A place whose true latency is linear in the features, plus small deterministic noise.
    fn truth(f: &Features) -> f64 {
        2.0 + 1.5 * f.rtt_ms
            + 0.2 * f.payload_kb
            + 3.0 * f.load_per_core * f.service_ms.max(1.0) / 4.0
            + 1.1 * f.service_ms
            + if f.cold { 12.0 } else { 0.0 }
    }

    fn features(i: u64) -> Features {
        // A cheap deterministic spread of inputs.
        let h = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        Features {
            payload_kb: (h % 64) as f64,
            rtt_ms: ((h >> 8) % 40) as f64 / 2.0,
            load_per_core: ((h >> 16) % 8) as f64 / 4.0,
            cold: (h >> 24).is_multiple_of(5),
            service_ms: 4.0,
        }
    }

    #[test]
    fn without_data_the_analytic_estimate_answers() {
        let m = Model::new(64);
        let a = Analytic::default();
        let f = Features {
            payload_kb: 10.0,
            rtt_ms: 5.0,
            load_per_core: 1.0,
            cold: true,
            service_ms: 2.0,
        };
        let (p, src) = m.predict(&f, &a);
        assert_eq!(src, Source::Analytic);
        assert!((p - (5.0 + 1.0 + 2.0 + 2.0 + 5.0)).abs() < 1e-9, "{p}");
    }

    #[test]
    fn the_model_learns_a_linear_place_and_its_error_falls() {
        let a = Analytic::default();
        let mut m = Model::new(128);
        for i in 0..400 {
            let f = features(i);
            m.observe(&f, truth(&f), &a);
            if m.wants_refit() {
                m.refit();
            }
        }
        assert!(m.fitted());
        assert!(m.observations() <= 128);
        for i in 1000..1050 {
            let f = features(i);
            let (p, src) = m.predict(&f, &a);
            assert_eq!(src, Source::Model);
            let t = truth(&f);
            assert!((p - t).abs() / t < 0.2, "predicted {p}, true {t}");
        }
        assert!(m.error().unwrap() < 0.2, "median-ish error {:?}", m.error());
    }

    #[test]
    fn a_poor_fit_falls_back_to_the_analytic_estimate() {
        let a = Analytic::default();
        let mut m = Model::new(64);
        // Latency unrelated to any feature: nothing to explain, so no fit is kept.
        for i in 0..64u64 {
            let f = features(i);
            let noise = ((i.wrapping_mul(2654435761) >> 7) % 100) as f64;
            m.observe(&f, noise, &a);
        }
        m.refit();
        assert!(!m.fitted());
        assert_eq!(m.predict(&features(1), &a).1, Source::Analytic);
    }

    proptest! {
        #[test]
        fn predictions_are_finite_and_never_negative(
            obs in proptest::collection::vec((0.0f64..1e4, 0.0f64..1e3, 0.0f64..64.0, any::<bool>(), 0.0f64..1e3, -10.0f64..1e5), 0..80),
            probe in (0.0f64..1e5, 0.0f64..1e4, 0.0f64..1e3, any::<bool>(), 0.0f64..1e4),
        ) {
            let a = Analytic::default();
            let mut m = Model::new(64);
            for (p, r, l, c, s, y) in obs {
                m.observe(&Features { payload_kb: p, rtt_ms: r, load_per_core: l, cold: c, service_ms: s }, y, &a);
                if m.wants_refit() { m.refit(); }
            }
            let f = Features { payload_kb: probe.0, rtt_ms: probe.1, load_per_core: probe.2, cold: probe.3, service_ms: probe.4 };
            let (p, _) = m.predict(&f, &a);
            prop_assert!(p.is_finite() && p >= 0.0);
        }
    }
}
