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

    fn from_row(r: &[f64; Self::N]) -> Self {
        Features {
            payload_kb: r[0],
            rtt_ms: r[1],
            load_per_core: r[2],
            cold: r[3] >= 0.5,
            service_ms: r[4],
        }
    }
}

/// The analytic estimate: round trip + transfer + queueing (the length of the work there
/// times what a call waited at that load per core: the load itself until the place's
/// [`WaitCurve`] is learnt) + service + cold-start penalty.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Analytic {
    /// Throughput of the link, KiB per ms.
    pub kb_per_ms: f64,
    /// Extra time of a cold start, ms.
    pub cold_penalty_ms: f64,
    /// How long the work a call waits behind at the place runs, ms, once known (the
    /// mean service time of the calls seen there): a call queues behind other functions'
    /// calls, not behind copies of itself. Until known, the call's own service time
    /// stands for it.
    pub work_ms: Option<f64>,
    /// How long calls there waited, in lengths of its work, at each load per core of
    /// [`WAIT_KNOTS`], as learnt there ([`WaitCurve`]); until then, the load itself.
    pub wait: Option<WaitCurve>,
    /// How many calls the estimate counts for against a model's offset from it (the
    /// planner sets it per function from how much its runs vary).
    pub prior_calls: f64,
}

/// The loads per core at which a [`WaitCurve`] is known; between them it is linear, past
/// the last it grows as the load does.
pub const WAIT_KNOTS: [f64; 6] = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0];

/// How long a call waits at a place for a core, in lengths of the work there, against the
/// load per core the router knew when it sent the call: learnt at each place over every
/// function. Its prior is the load itself (a call waits behind each call per core ahead of
/// it); a place with cores to spare waits less than that, one whose load the router hears
/// late more, and the curve learns which.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WaitCurve(pub [f64; WAIT_KNOTS.len()]);

impl Default for WaitCurve {
    fn default() -> Self {
        WaitCurve(WAIT_KNOTS)
    }
}

impl WaitCurve {
    /// The two knots around `load` and the weight of the upper one.
    fn around(load: f64) -> (usize, usize, f64) {
        let load = load.max(0.0);
        let last = WAIT_KNOTS.len() - 1;
        match WAIT_KNOTS.iter().position(|k| *k > load) {
            None => (last - 1, last, 1.0),
            Some(0) => (0, 0, 0.0),
            Some(i) => {
                let (a, b) = (WAIT_KNOTS[i - 1], WAIT_KNOTS[i]);
                (i - 1, i, (load - a) / (b - a))
            }
        }
    }

    /// The wait at `load`, in lengths of work.
    pub fn at(&self, load: f64) -> f64 {
        let (i, j, u) = Self::around(load);
        let v = self.0[i] + u * (self.0[j] - self.0[i]);
        // Past the last knot: as much more as the load is.
        let beyond = (load - WAIT_KNOTS[WAIT_KNOTS.len() - 1]).max(0.0);
        (v + beyond).max(0.0)
    }

    /// Learns that a call sent at `load` waited `waited` lengths of work (noisy; may be
    /// below 0 when the round trip was shorter than the router thought). Returns the wait
    /// the curve said before, `None` where it learns nothing.
    pub fn learn(&mut self, load: f64, waited: f64, rate: f64) -> Option<f64> {
        // Past the last knot the curve is the load itself; nothing to learn there.
        if !load.is_finite() || !waited.is_finite() || load > WAIT_KNOTS[WAIT_KNOTS.len() - 1] {
            return None;
        }
        let (i, j, u) = Self::around(load);
        let predicted = self.at(load);
        // One far-off call (a round trip far longer than the router thought) must not
        // move the curve far.
        let err = waited.clamp(-10.0, 50.0) - predicted;
        self.0[i] += rate * (1.0 - u) * err;
        if j != i {
            self.0[j] += rate * u * err;
        }
        Some(predicted)
    }
}

impl Default for Analytic {
    fn default() -> Self {
        Analytic {
            kb_per_ms: 10.0,
            cold_penalty_ms: 5.0,
            work_ms: None,
            wait: None,
            prior_calls: OFFSET_PRIOR_CALLS,
        }
    }
}

impl Analytic {
    /// How long `kb` KiB take over the link, ms.
    #[inline]
    pub fn transfer_ms(&self, kb: f64) -> f64 {
        kb / self.kb_per_ms.max(1e-9)
    }

    pub fn estimate(&self, f: &Features) -> f64 {
        let transfer = self.transfer_ms(f.payload_kb);
        let per = match self.wait {
            Some(c) => c.at(f.load_per_core),
            None => f.load_per_core.max(0.0),
        };
        let queueing = per * self.work_ms.unwrap_or(f.service_ms);
        let cold = if f.cold { self.cold_penalty_ms } else { 0.0 };
        f.rtt_ms + transfer + queueing + f.service_ms + cold
    }
}

/// Where a prediction came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Model,
    Analytic,
    /// Not a prediction: a policy's score (an order, or its own estimate).
    Score,
}

/// The online model of one function at one place.
///
/// Warm latency is a linear function of payload, round trip, load and service time, fitted
/// by least squares over the warm observations of a bounded window. Features that did not
/// vary are left out (they would make the fit singular), and so are features whose
/// coefficient is not significant (p > 0.05): a place's latency jitter must not be read as
/// an effect of the round trip's jitter. A cold start adds a separately learnt extra time:
/// cold starts are rare and long, and would dominate a joint fit. Beyond the data the fit
/// came from, the model answers at the nearest point it knows and the analytic estimate adds
/// what the features beyond it cost. A fit is kept only if it predicts held-out calls (the
/// newest of its window, left out of a trial fit) clearly better than the prior does
/// ([`KEEP_FIT_Z`]): until there
/// is a fit, the analytic estimate corrected by the mean offset of the model's own warm
/// calls from it, shrunk towards none while they are few.
#[derive(Debug, Clone)]
pub struct Model {
    window: VecDeque<([f64; Features::N], f64)>,
    capacity: usize,
    fit: Option<Fit>,
    since_fit: usize,
    /// Smoothed relative error of predictions made before each observation.
    error: Option<f64>,
    /// Smoothed shortfall of those predictions: how much longer than predicted calls took
    /// (0 for those that took less), ms: the mean over them, smoothed once there are many
    /// ([`SLOW_WEIGHT`]).
    shortfall: Option<f64>,
    /// The calls the shortfall was taken over.
    calls: usize,
    /// The shortfall's weight against the function's risk, `calls / (calls +`
    /// [`RISK_PRIOR_CALLS`]`)`: kept as calls come, since every candidate of every
    /// decision reads it (a division there was a tenth of the decision's time).
    shortfall_share: f64,
    /// How much longer than the analytic estimate its warm calls took (less when
    /// negative): the mean over them, smoothed once there are a few. Cold calls are left
    /// out: what a cold start costs is learnt per place over every function (and by the
    /// fit), and one slow first call must not stand, warm, for the function's every next
    /// call there.
    offset: Option<f64>,
    /// The warm calls the offset was taken over.
    warm_calls: usize,
    /// How much longer the warm calls' own runs were than the service time they were
    /// predicted with (the mean, and the mean square), over `gap_calls` calls.
    gap: (f64, f64),
    gap_calls: usize,
}

#[derive(Debug, Clone, Copy)]
struct Fit {
    /// Intercept, then one coefficient per feature (zero for those left out; the cold
    /// flag's is always zero).
    coef: [f64; Features::N + 1],
    /// The range of each feature in the warm data of the fit.
    range: [(f64, f64); Features::N],
    /// Extra time of a cold start at this place.
    cold_extra_ms: f64,
}

const COLD: usize = 3;
/// How many calls a function's risk counts for against a model's own shortfall at a
/// place ([`crate::placement::Planner::plan`]).
pub const RISK_PRIOR_CALLS: f64 = 16.0;
/// The weight of a new observation in [`Model`]'s offset and shortfall once it has seen
/// many (before, each is the mean over the calls so far). A call's own time varies far
/// more than a place's offset or risk does (a function's service time alone varies by a
/// fifth or more from call to call): with a tenth, as these were, each call moved a
/// long function's prediction by tens of ms, independently at each place, and the
/// fastest-looking place was often the one whose last calls were lucky (on
/// `bursty-azure` seed 5, calls of a 1.3 s function sent to an edge took 98 ms longer
/// than at the cloud, where their predictions said 84 ms less). A hundredth keeps that
/// noise to a few ms; what changes quickly at a place (its load) comes in as a feature.
pub(crate) const SLOW_WEIGHT: f64 = 0.01;

/// A fit is kept only if its held-out squared error is below the prior's by at least
/// this many standard errors of the difference ([`Model::fit_window`]): on noisy calls
/// a fit beats the prior on a few held-out calls by chance about half the time, and a
/// model that switches between the two moves its prediction by the fit's noise.
const KEEP_FIT_Z: f64 = 3.0;
/// The analytic estimate counts as this many calls against a model's offset, unless the
/// planner says more ([`Analytic::prior_calls`]).
pub(crate) const OFFSET_PRIOR_CALLS: f64 = 2.0;
/// A model's [`Model::gap`] counts once it has seen this many calls' runs.
const GAP_AFTER: usize = 4;
/// Refit after this many new observations.
const REFIT_EVERY: usize = 8;
/// Coefficients less significant than this are dropped from the fit.
const MAX_P: f64 = 0.05;

impl Fit {
    fn warm(&self, x: &[f64; Features::N]) -> f64 {
        self.coef[0]
            + x.iter()
                .zip(&self.coef[1..])
                .map(|(a, b)| a * b)
                .sum::<f64>()
    }

    #[inline(always)]
    fn predict(&self, f: &Features, fallback: &Analytic) -> f64 {
        let x = Features { cold: false, ..*f }.row();
        // The warm part at the nearest point inside the fitted data (one pass: clamp and
        // dot product), then what the features beyond it cost by the analytic estimate.
        let mut inside = x;
        let mut y = self.coef[0];
        let mut outside = false;
        for i in 0..Features::N {
            let (lo, hi) = self.range[i];
            // As `clamp`, without its checks (one instruction each way).
            let v = if x[i] < lo { lo } else { x[i] };
            let v = if v > hi { hi } else { v };
            outside |= v != x[i];
            inside[i] = v;
            y += self.coef[i + 1] * v;
        }
        if outside {
            y += fallback.estimate(&Features::from_row(&x))
                - fallback.estimate(&Features::from_row(&inside));
        }
        if f.cold {
            y += self.cold_extra_ms;
        }
        y
    }
}

/// The analytic estimate `est` moved by `offset`, the mean offset of `calls` calls from it,
/// shrunk by calls/(calls + `prior_calls`); never below zero.
fn corrected(est: f64, offset: f64, calls: usize, prior_calls: f64) -> f64 {
    let n = calls as f64;
    (est + offset * n / (n + prior_calls)).max(0.0)
}

/// How much of a difference `d` is beyond `noise` (non-negative): the part of it past
/// `noise`, with its sign; none when it is within.
pub(crate) fn beyond_noise(d: f64, noise: f64) -> f64 {
    let beyond = d.abs() - noise;
    if beyond > 0.0 {
        beyond.copysign(d)
    } else {
        0.0
    }
}

/// A figure after taking `x`, its `n`th value: the mean of them until a new one would
/// weigh less than [`SLOW_WEIGHT`], then smoothed at that weight.
pub(crate) fn slow_mean(last: Option<f64>, n: usize, x: f64) -> f64 {
    let w = (1.0 / n as f64).max(SLOW_WEIGHT);
    // As a step towards `x`: a figure that sees its own value again stays exactly where
    // it is (a mix of the two drifts by a rounding).
    last.map_or(x, |v| v + w * (x - v))
}

/// The variance of a [`slow_mean`] after `n` values, relative to the variance of one
/// value: 1/n while it is their mean, then that of smoothing at [`SLOW_WEIGHT`].
pub(crate) fn slow_mean_variance(n: usize) -> f64 {
    (1.0 / n.max(1) as f64).max(SLOW_WEIGHT / (2.0 - SLOW_WEIGHT))
}

/// An exponentially smoothed figure after taking `x`: nine tenths the last, one tenth `x`.
pub(crate) fn smooth(last: Option<f64>, x: f64) -> f64 {
    last.map_or(x, |e| 0.9 * e + 0.1 * x)
}

impl Model {
    pub fn new(capacity: usize) -> Self {
        Model {
            window: VecDeque::with_capacity(capacity),
            capacity: capacity.max(16),
            fit: None,
            since_fit: 0,
            error: None,
            shortfall: None,
            calls: 0,
            shortfall_share: 0.0,
            offset: None,
            warm_calls: 0,
            gap: (0.0, 0.0),
            gap_calls: 0,
        }
    }

    /// Predicts the latency (ms) of an invocation with features `f`.
    // Always (and `Fit::predict` too): the decision calls it once per place, and left to
    // itself the compiler stopped inlining it there once the planner grew (a fifth slower).
    #[inline(always)]
    pub fn predict(&self, f: &Features, fallback: &Analytic) -> (f64, Source) {
        match &self.fit {
            Some(fit) => {
                let y = fit.predict(f, fallback);
                // A linear fit can go below zero; latency cannot.
                if y.is_finite() {
                    (y.max(0.0), Source::Model)
                } else {
                    (fallback.estimate(f), Source::Analytic)
                }
            }
            None => (self.prior(fallback.estimate(f), fallback), Source::Analytic),
        }
    }

    /// Until there is a fit: the analytic estimate `est`, with the calls' runs' gap from
    /// their predicted service time ([`Model::gap`]), corrected by the model's own warm
    /// calls' offset, shrunk towards none while they are few ([`Analytic::prior_calls`]).
    fn prior(&self, est: f64, fallback: &Analytic) -> f64 {
        corrected(
            est + self.gap(),
            self.offset.unwrap_or(0.0),
            self.warm_calls,
            fallback.prior_calls,
        )
    }

    /// Records what an invocation actually took; tracks the error of the prediction made
    /// for it. `ran_ms`: the call's own service time, when the place said it.
    pub fn observe(
        &mut self,
        f: &Features,
        actual_ms: f64,
        ran_ms: Option<f64>,
        fallback: &Analytic,
    ) {
        if !actual_ms.is_finite() || actual_ms < 0.0 {
            return;
        }
        let est = fallback.estimate(f);
        let predicted = match &self.fit {
            Some(_) => self.predict(f, fallback).0,
            None => self.prior(est, fallback),
        };
        let rel = (predicted - actual_ms).abs() / actual_ms.max(1e-3);
        self.error = Some(smooth(self.error, rel));
        self.calls = self.calls.saturating_add(1);
        let n = self.calls as f64;
        self.shortfall_share = n / (n + RISK_PRIOR_CALLS);
        self.shortfall = Some(slow_mean(
            self.shortfall,
            self.calls,
            (actual_ms - predicted).max(0.0),
        ));
        if self.window.len() == self.capacity {
            self.window.pop_front();
        }
        self.window.push_back((f.row(), actual_ms));
        self.since_fit += 1;
        // Kept up after a fit too: it is the prior again whenever a refit is not kept.
        if f.cold {
            return;
        }
        // Against the estimate with the time the call itself ran, when known: how long
        // the function runs is the planner's to say (its size, the place's speed and what
        // the place reports), and a run's own noise (a fifth of a long function's time)
        // is not the place's offset. Three such runs of a 1.3 s function, taken into the
        // offset, once put the cloud 270 ms slower than it was.
        let off = actual_ms
            - ran_ms.map_or(est, |s| {
                fallback.estimate(&Features {
                    service_ms: s,
                    ..*f
                })
            });
        self.warm_calls = self.warm_calls.saturating_add(1);
        self.offset = Some(slow_mean(self.offset, self.warm_calls, off));
        if let Some(s) = ran_ms {
            let g = s - f.service_ms;
            self.gap_calls = self.gap_calls.saturating_add(1);
            let n = self.gap_calls;
            self.gap = (
                slow_mean(Some(self.gap.0), n, g),
                slow_mean(Some(self.gap.1), n, g * g),
            );
        }
    }

    /// How much longer the calls' runs were than the service time they were predicted
    /// with, as far as that is beyond chance (two standard errors of the mean): a service
    /// time a place reports that is off from what its calls run (a report from before the
    /// function settled) is corrected, and a run's noise is not.
    fn gap(&self) -> f64 {
        if self.gap_calls < GAP_AFTER {
            return 0.0;
        }
        let (m, m2) = self.gap;
        let n = (self.gap_calls as f64).min(1.0 / SLOW_WEIGHT);
        let se = ((m2 - m * m).max(0.0) / n).sqrt();
        beyond_noise(m, 2.0 * se)
    }

    /// Whether enough new observations arrived for a refit (done off the hot path).
    pub fn wants_refit(&self) -> bool {
        self.since_fit >= REFIT_EVERY && self.window.len() >= 2 * (Features::N + 1)
    }

    /// Refits from the window (see the type's documentation).
    pub fn refit(&mut self, fallback: &Analytic) {
        self.since_fit = 0;
        if self.window.len() < 2 * (Features::N + 1) {
            return;
        }
        self.fit = self.fit_window(fallback);
    }

    /// Fits `rows` (see the type's documentation); `None` when they are too few.
    fn fit_rows(rows: &[([f64; Features::N], f64)], fallback: &Analytic) -> Option<Fit> {
        let warm: Vec<&([f64; Features::N], f64)> =
            rows.iter().filter(|(x, _)| x[COLD] < 0.5).collect();
        if warm.len() < 8 {
            return None;
        }
        let mut range = [(f64::INFINITY, f64::NEG_INFINITY); Features::N];
        for (x, _) in &warm {
            for (r, v) in range.iter_mut().zip(x) {
                r.0 = r.0.min(*v);
                r.1 = r.1.max(*v);
            }
        }
        let mut cols: Vec<usize> = (0..Features::N)
            .filter(|i| *i != COLD && range[*i].1 - range[*i].0 > 1e-9)
            .collect();
        let mut coef = [0.0; Features::N + 1];
        // At most two rounds: fit, drop what is not significant, fit again.
        for _ in 0..2 {
            coef = [0.0; Features::N + 1];
            if cols.is_empty() {
                coef[0] = warm.iter().map(|(_, y)| y).sum::<f64>() / warm.len() as f64;
                break;
            }
            let width = cols.len() + 2;
            let mut data = Vec::with_capacity(warm.len() * width);
            for (x, y) in &warm {
                data.push(*y);
                data.push(1.0);
                data.extend(cols.iter().map(|i| x[*i]));
            }
            let m = linregress::fit_low_level_regression_model(&data, warm.len(), width).ok()?;
            if !m.parameters().iter().all(|p| p.is_finite()) {
                return None;
            }
            coef[0] = m.parameters()[0];
            for (k, i) in cols.iter().enumerate() {
                coef[i + 1] = m.parameters()[k + 1];
            }
            let keep: Vec<usize> = cols
                .iter()
                .enumerate()
                .filter(|(k, _)| m.p_values().get(k + 1).is_some_and(|p| *p <= MAX_P))
                .map(|(_, i)| *i)
                .collect();
            if keep.len() == cols.len() {
                break;
            }
            cols = keep;
        }
        let mut fit = Fit {
            coef,
            range,
            cold_extra_ms: fallback.cold_penalty_ms,
        };
        let cold: Vec<f64> = rows
            .iter()
            .filter(|(x, _)| x[COLD] >= 0.5)
            .map(|(x, y)| y - fit.warm(x))
            .collect();
        if !cold.is_empty() {
            fit.cold_extra_ms = (cold.iter().sum::<f64>() / cold.len() as f64).max(0.0);
        }
        Some(fit)
    }

    /// Fits the window, and keeps the fit only if, fitted without the newest quarter of the
    /// window, it predicts that quarter better than the prior does (the analytic estimate
    /// corrected by the mean offset of the same training calls, as [`Model::predict`] uses
    /// it before a fit), by at least [`KEEP_FIT_Z`] standard errors: judged on calls it was
    /// not fitted on, not on its own training data, and not by chance.
    fn fit_window(&self, fallback: &Analytic) -> Option<Fit> {
        let rows: Vec<([f64; Features::N], f64)> = self.window.iter().copied().collect();
        let held = (rows.len() / 4).max(4);
        let (train, test) = rows.split_at(rows.len().saturating_sub(held));
        let trial = Self::fit_rows(train, fallback)?;
        // The prior's offset, as the model keeps it: over the warm training calls.
        let (sum, warm) = train
            .iter()
            .map(|(x, y)| (x, y - fallback.estimate(&Features::from_row(x))))
            .filter(|(x, _)| x[COLD] < 0.5)
            .fold((0.0, 0usize), |(s, n), (_, off)| (s + off, n + 1));
        let offset = if warm > 0 { sum / warm as f64 } else { 0.0 };
        // Per held-out call, how much smaller the fit's squared error is than the prior's.
        let (mut sum, mut sum2) = (0.0, 0.0);
        for (x, y) in test {
            let f = Features::from_row(x);
            let fit = (trial.predict(&f, fallback) - y).powi(2);
            let prior =
                (corrected(fallback.estimate(&f), offset, warm, fallback.prior_calls) - y).powi(2);
            sum += prior - fit;
            sum2 += (prior - fit).powi(2);
        }
        let n = test.len() as f64;
        let mean = sum / n;
        let se = ((sum2 / n - mean * mean).max(0.0) / n).sqrt();
        if !(mean.is_finite() && mean > 0.0 && mean >= KEEP_FIT_Z * se) {
            return None;
        }
        Self::fit_rows(&rows, fallback)
    }

    /// Smoothed shortfall of its predictions (how much longer calls took than predicted), ms.
    pub fn shortfall(&self) -> Option<f64> {
        self.shortfall
    }

    /// Smoothed relative prediction error so far.
    pub fn error(&self) -> Option<f64> {
        self.error
    }

    pub fn fitted(&self) -> bool {
        self.fit.is_some()
    }

    /// Its shortfall's weight against the function's risk: `n / (n +`
    /// [`RISK_PRIOR_CALLS`]`)` over the `n` calls it was taken over.
    #[inline]
    pub fn shortfall_share(&self) -> f64 {
        self.shortfall_share
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
    fn before_a_fit_its_own_calls_correct_the_analytic_estimate() {
        // Calls 10 ms longer than the estimate says (for what the features do not see):
        // the first call moves the prediction a third of the way, eight four fifths.
        let a = Analytic::default();
        let mut m = Model::new(64);
        let f = features(1);
        let est = a.estimate(&f);
        m.observe(&f, est + 10.0, None, &a);
        let (p, src) = m.predict(&f, &a);
        assert_eq!(src, Source::Analytic);
        assert!((p - (est + 10.0 / 3.0)).abs() < 1e-9, "{p} against {est}");
        for _ in 0..7 {
            m.observe(&f, est + 10.0, None, &a);
        }
        let (p, _) = m.predict(&f, &a);
        assert!((p - (est + 8.0)).abs() < 1e-9, "{p} against {est}");
        // Faster than estimated: never below zero.
        let mut fast = Model::new(64);
        fast.observe(&f, 0.0, None, &a);
        assert!(fast.predict(&f, &a).0 >= 0.0);
        assert!(fast.predict(&f, &a).0 < est);
    }

    #[test]
    fn the_model_learns_a_linear_place_and_its_error_falls() {
        let a = Analytic::default();
        let mut m = Model::new(128);
        for i in 0..400 {
            let f = features(i);
            m.observe(&f, truth(&f), None, &a);
            if m.wants_refit() {
                m.refit(&a);
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
    fn noise_is_not_read_as_an_effect_of_the_features() {
        let a = Analytic::default();
        let mut m = Model::new(64);
        // Latency unrelated to any feature: the fit, if kept, is the mean and nothing more.
        let mut ys = Vec::new();
        for i in 0..64u64 {
            let f = Features {
                cold: false,
                ..features(i)
            };
            let noise = 20.0 + ((i.wrapping_mul(2654435761) >> 7) % 100) as f64;
            ys.push(noise);
            m.observe(&f, noise, None, &a);
        }
        m.refit(&a);
        let mean = ys.iter().sum::<f64>() / ys.len() as f64;
        if m.fitted() {
            for i in 100..120 {
                let f = Features {
                    cold: false,
                    ..features(i)
                };
                let (p, _) = m.predict(&f, &a);
                assert!((p - mean).abs() < 10.0, "predicted {p}, mean {mean}");
            }
        }
    }

    #[test]
    fn a_slow_cold_call_does_not_move_the_warm_prior() {
        // A first call 500 ms over the estimate, cold (the function loading), then warm
        // calls on the estimate: the warm prior stays on the estimate, and only warm
        // calls move it.
        let a = Analytic::default();
        let mut m = Model::new(64);
        let warm = Features {
            cold: false,
            ..features(1)
        };
        let cold = Features { cold: true, ..warm };
        m.observe(&cold, a.estimate(&cold) + 500.0, None, &a);
        let est = a.estimate(&warm);
        assert!((m.predict(&warm, &a).0 - est).abs() < 1e-9);
        m.observe(&warm, est + 30.0, None, &a);
        // One warm call counts for a third, as it would have alone.
        assert!((m.predict(&warm, &a).0 - (est + 10.0)).abs() < 1e-9);
    }

    /// A warm call with no payload or load, predicted with `service_ms`.
    fn warm_call(rtt_ms: f64, service_ms: f64) -> Features {
        Features {
            payload_kb: 0.0,
            rtt_ms,
            load_per_core: 0.0,
            cold: false,
            service_ms,
        }
    }

    /// The estimate of `f` had it been predicted with the time it `ran`.
    fn estimate_ran(a: &Analytic, f: &Features, ran: f64) -> f64 {
        a.estimate(&Features {
            service_ms: ran,
            ..*f
        })
    }

    #[test]
    fn a_models_offset_is_taken_against_the_time_each_call_ran() {
        // Three calls of a 1000 ms function whose runs were long (1300, 1250, 1200 ms),
        // each 10 ms beyond the estimate at its own run time: the place is 10 ms slow,
        // not 260.
        let a = Analytic::default();
        let f = warm_call(5.0, 1000.0);
        let at = |ran: f64| estimate_ran(&a, &f, ran) + 10.0;
        let mut m = Model::new(64);
        let mut blind = Model::new(64);
        for ran in [1300.0, 1250.0, 1200.0] {
            m.observe(&f, at(ran), Some(ran), &a);
            blind.observe(&f, at(ran), None, &a);
        }
        // Shrunk by 3/(3 + 2) towards none.
        let (y, source) = m.predict(&f, &a);
        assert_eq!(source, Source::Analytic);
        assert!((y - (a.estimate(&f) + 6.0)).abs() < 1e-9, "{y}");
        // Without the run times, the runs' noise reads as the place's offset.
        let (y, _) = blind.predict(&f, &a);
        assert!((y - (a.estimate(&f) + 0.6 * 260.0)).abs() < 1e-9, "{y}");
    }

    #[test]
    fn a_reported_service_time_off_from_what_the_calls_run_is_corrected_and_noise_is_not() {
        let a = Analytic::default();
        let f = warm_call(1.0, 0.2);
        // Predicted with a service time of 0.2 ms (a report from the function's first,
        // slow runs), the calls run in 0.02 ms: predictions follow the runs.
        let mut m = Model::new(64);
        for i in 0..20 {
            let ran = 0.02 + f64::from(i % 3) * 0.001;
            m.observe(&f, estimate_ran(&a, &f, ran), Some(ran), &a);
        }
        let (y, _) = m.predict(&f, &a);
        assert!((y - estimate_ran(&a, &f, 0.021)).abs() < 0.005, "{y}");
        // Runs that only vary about the service time predicted leave it alone.
        let mut m = Model::new(64);
        for i in 0..20 {
            let ran = if i % 2 == 0 { 0.15 } else { 0.25 };
            m.observe(&f, estimate_ran(&a, &f, ran), Some(ran), &a);
        }
        let (y, _) = m.predict(&f, &a);
        assert!((y - a.estimate(&f)).abs() < 1e-9, "{y}");
    }

    #[test]
    fn a_rare_long_cold_start_is_learnt_apart_from_warm_calls() {
        let a = Analytic::default();
        let mut m = Model::new(64);
        for i in 0..40u64 {
            let f = Features {
                payload_kb: 1.0,
                rtt_ms: 0.8 + (i % 5) as f64 * 0.1,
                load_per_core: 0.0,
                cold: i == 0 || i == 20,
                service_ms: 0.5,
            };
            // Warm calls grow three times as fast with the round trip as the analytic
            // estimate says: a fit is clearly better than the prior.
            let y = if f.cold {
                105.0
            } else {
                0.5 + 3.0 * f.rtt_ms + (i % 3) as f64 * 0.02
            };
            m.observe(&f, y, None, &a);
        }
        m.refit(&a);
        assert!(m.fitted());
        let warm = Features {
            payload_kb: 1.0,
            rtt_ms: 0.9,
            load_per_core: 0.0,
            cold: false,
            service_ms: 0.5,
        };
        let (p, _) = m.predict(&warm, &a);
        assert!((p - 3.2).abs() < 0.2, "warm {p}");
        let (p, _) = m.predict(&Features { cold: true, ..warm }, &a);
        assert!((p - 105.0).abs() < 3.0, "cold {p}");
    }

    #[test]
    fn a_constant_place_is_learnt_and_beyond_its_data_the_analytic_cost_is_added() {
        let a = Analytic::default();
        let mut m = Model::new(64);
        // Always idle, always warm, same service time: only the payload varies, and the place
        // is 20 ms slower than the analytic estimate says.
        for i in 0..64u64 {
            let f = Features {
                payload_kb: (i % 8) as f64,
                rtt_ms: 2.0,
                load_per_core: 0.0,
                cold: false,
                service_ms: 4.0,
            };
            m.observe(&f, a.estimate(&f) + 20.0, None, &a);
        }
        m.refit(&a);
        assert!(m.fitted());
        let idle = Features {
            payload_kb: 4.0,
            rtt_ms: 2.0,
            load_per_core: 0.0,
            cold: false,
            service_ms: 4.0,
        };
        let (p, src) = m.predict(&idle, &a);
        assert_eq!(src, Source::Model);
        assert!((p - (a.estimate(&idle) + 20.0)).abs() < 0.5, "{p}");
        // Loaded as it never was in the data: the learnt 20 ms plus the analytic queueing.
        let busy = Features {
            load_per_core: 3.0,
            ..idle
        };
        let (p, _) = m.predict(&busy, &a);
        let expect = a.estimate(&busy) + 20.0;
        assert!((p - expect).abs() < 0.5, "{p} vs {expect}");
    }

    #[test]
    fn a_wait_curve_starts_at_the_load_and_learns_where_cores_were_free() {
        let mut c = WaitCurve::default();
        for load in [0.0, 0.25, 0.5, 1.0, 1.7, 3.0, 5.0] {
            assert!(
                (c.at(load) - load).abs() < 1e-9,
                "prior at {load}: {}",
                c.at(load)
            );
        }
        // Four cores, the router sending at up to half of them busy: the calls started
        // at once (a little noise either side, as round trips vary).
        for i in 0..400 {
            let load = (i % 3) as f64 * 0.25;
            let noise = if i % 2 == 0 { 0.05 } else { -0.05 };
            c.learn(load, noise, 0.1);
        }
        for load in [0.0, 0.25, 0.5] {
            assert!(c.at(load) < 0.05, "learnt at {load}: {}", c.at(load));
        }
        // Where nothing was learnt, the prior stands (the knot at 1 moved only through
        // the calls at 0.5 and below, which it does not share).
        assert!((c.at(2.0) - 2.0).abs() < 1e-9, "{}", c.at(2.0));
        assert!(
            (c.at(4.0) - 4.0).abs() < 1e-9,
            "past the last knot: {}",
            c.at(4.0)
        );
        // A place whose load the router hears late: calls at a reported load of 1
        // waited two lengths of work.
        for _ in 0..400 {
            c.learn(1.0, 2.0, 0.1);
        }
        assert!((c.at(1.0) - 2.0).abs() < 0.05, "{}", c.at(1.0));
        // Nonsense is ignored, and the curve never says a call waits less than nothing.
        let before = c;
        c.learn(f64::NAN, 1.0, 0.1);
        c.learn(0.5, f64::INFINITY, 0.1);
        c.learn(9.0, 1.0, 0.1);
        assert_eq!(c, before);
        for _ in 0..400 {
            c.learn(0.0, -5.0, 0.1);
        }
        assert_eq!(c.at(0.0), 0.0);
    }

    #[test]
    fn the_analytic_estimate_queues_by_the_places_curve_once_it_has_one() {
        let f = Features {
            payload_kb: 0.0,
            rtt_ms: 10.0,
            load_per_core: 0.5,
            cold: false,
            service_ms: 20.0,
        };
        let mut a = Analytic {
            work_ms: Some(40.0),
            ..Analytic::default()
        };
        // The prior: half a length of work.
        assert!((a.estimate(&f) - (10.0 + 20.0 + 20.0)).abs() < 1e-9);
        let mut c = WaitCurve::default();
        c.0[1] = 0.1;
        a.wait = Some(c);
        assert!((a.estimate(&f) - (10.0 + 20.0 + 4.0)).abs() < 1e-9);
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
                m.observe(&Features { payload_kb: p, rtt_ms: r, load_per_core: l, cold: c, service_ms: s }, y, None, &a);
                if m.wants_refit() { m.refit(&a); }
            }
            let f = Features { payload_kb: probe.0, rtt_ms: probe.1, load_per_core: probe.2, cold: probe.3, service_ms: probe.4 };
            let (p, _) = m.predict(&f, &a);
            prop_assert!(p.is_finite() && p >= 0.0);
        }
    }
}
