//! The placement engine shared by the live router and the simulator: per (function, place)
//! latency models, their predictions for an invocation, the policy's choice, and what is
//! learnt from the outcome. Pure: places, time and randomness come in as values.

use rustc_hash::FxHashMap as HashMap;

use crate::attempts::Outcome;
use crate::config::Tier;
use crate::policies::Call;
use crate::policy::{choose, Scorable};
use crate::predict::{
    beyond_noise, slow_mean, slow_mean_variance, Analytic, Features, Model, Source, WaitCurve,
    OFFSET_PRIOR_CALLS, WAIT_KNOTS,
};

/// How long a place that refused a call for capacity is taken to be full, ms.
pub const FULL_FOR_MS: f64 = 1000.0;
/// How long a place where a call timed out is taken to be full, ms: longer than after a
/// refusal, since a call that ran out its patience there says more than one turned away
/// at once (on `configs/sim/large.toml`, 250 routers acting on reports a second old, one
/// second let its mean grow 7 % over benching the place; four seconds brought it below).
pub const BUSY_AFTER_TIMEOUT_MS: f64 = 4000.0;

/// What is known of one place at decision time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlaceInfo<'a> {
    pub id: &'a str,
    /// [`place_key`] of `id`: the place's key in the planner's maps, computed where the
    /// place is listed (once per member in the simulator), not for every decision.
    pub key: u64,
    pub tier: Tier,
    /// Round trip from the caller to the place, ms.
    pub rtt_ms: f64,
    /// Running plus waiting work per core there.
    pub load_per_core: f64,
    /// Whether the function's code is already loaded there.
    pub warm: bool,
    /// The function's recent service time there, ms, when the place reported one.
    pub service_ms: Option<f64>,
    /// Cores there (as reported).
    pub cores: u32,
    /// Its speed relative to the reference machine, as it advertises it (a calibration
    /// run at start), when it does.
    pub speed: Option<f64>,
    /// What the call would really take there: known to the simulator's oracle only.
    pub truth_ms: Option<f64>,
    /// The router's own calls in flight there.
    pub own: Own,
}

/// The router's own calls in flight at a place, and the service time it expected of them
/// there (each call's [`Features::service_ms`] when it was sent).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Own {
    pub calls: u32,
    pub work_ms: f64,
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
    /// The place's advertised speed then (1 when it advertised none).
    pub speed: f64,
    /// Its model has not seen the function for a while (exploration may visit it).
    pub stale: bool,
    /// The function's size was a guess (nothing had run it, nor reported it): the
    /// service time in `features` is a typical function's (see [`Planner::learn`]).
    pub guessed: bool,
    /// What the score adds to the prediction, ms: the tail's risk (how much longer than
    /// predicted calls there tend to take, and how much longer than the mean wait at its
    /// load calls there waited: [`PlaceState::wait_risk_ms`]), less, on a cold device, the
    /// share of its cold start that its next calls would get back by running warm (see
    /// [`Reuse`]).
    pub extra_ms: f64,
    /// What the prediction adds for the router's own calls ahead of it there being longer
    /// (or shorter) than the work the place's wait is measured in ([`Planner::herd_ms`]):
    /// the models learn the call's time without it.
    pub herd_ms: f64,
    /// The function's size the prediction was made from (its time on the reference
    /// machine, ms: the router's own runs pooled with the members' reports,
    /// [`Planner::size_of`]); `None` when nothing was known of it, or for a policy that
    /// does not size functions. What the call's run there says of the place's slowness is
    /// taken against it ([`Planner::learn`]).
    pub size_ms: Option<f64>,
}

impl Scorable for Scored {
    fn tier(&self) -> Tier {
        self.tier
    }
    fn predicted_ms(&self) -> f64 {
        self.predicted_ms
    }
    fn stale(&self) -> bool {
        self.stale
    }
    fn extra_ms(&self) -> f64 {
        self.extra_ms
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
    /// Its scores are times (ms), so how long to wait at a place may follow from them.
    pub timed: bool,
    /// The device place is cold for the function, and won only by what loading it gives
    /// back later (see [`Reuse`]): the driver loads the function there off the call's
    /// path, and the call goes to the best other place. (Run there cold, the call would
    /// pay the load itself, and such calls make a tail.)
    pub load_device: bool,
    /// The function's size is a guess (`Planner::typical_size`): this planner has not
    /// seen it run, nor has any place reported its time.
    pub guessed: bool,
}

impl Plan {
    /// The place not in `tried` with the least `time_ms` (of its index, read once per
    /// place): where a retry goes, by what is expected of each place
    /// ([`crate::attempts::Attempts::expected_ms`]).
    pub fn next_best(&self, tried: &[usize], time_ms: impl Fn(usize) -> f64) -> Option<usize> {
        (0..self.scored.len())
            .filter(|i| !tried.contains(i))
            .map(|i| (i, time_ms(i)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(i, _)| i)
    }
}

/// One function's models, side by side, so a decision reads them in order rather than
/// scattered over a hash table; found by the place's number in the planner.
#[derive(Debug, Clone, Default)]
struct Models {
    /// Per place number, its slot, or [`NO_SLOT`]; as long as the largest number with one.
    by_place: Vec<u32>,
    slots: Vec<Slot>,
    /// Observations of the function anywhere.
    seen: u64,
    /// When this planner first learnt of a call of it, ms (with `seen`, its call rate).
    first_ms: Option<f64>,
    /// How much longer than predicted its answered calls took, relative to the
    /// prediction (0 for those that took less), over every place: the mean, smoothed
    /// once they are many ([`slow_mean`]; smoothed at a tenth, as it was, it strayed by a
    /// third of itself from one call to the next). The tail's risk at a place whose own
    /// model has seen few calls ([`Planner::plan`]).
    overrun: Option<f64>,
    /// The answered calls the overrun was taken over.
    overruns: usize,
}

const NO_SLOT: u32 = u32::MAX;

#[derive(Debug, Clone)]
struct Slot {
    /// The place's number in the planner.
    place: u32,
    model: Model,
    /// `Models::seen` at this place's last observation.
    at: u64,
}

/// A place whose model saw none of the function's last this many observations is stale:
/// exploration may visit it whatever it predicts (it may have recovered), and its next
/// observation starts its model afresh.
const STALE_AFTER: u64 = 64;

impl Models {
    /// Calls of the function per ms at this planner since its first, once there are a few.
    fn calls_per_ms(&self, now_ms: f64) -> Option<f64> {
        let since = now_ms - self.first_ms?;
        (self.seen >= 4 && since > 0.0).then(|| self.seen as f64 / since)
    }

    /// The model at place number `place` and whether it is stale.
    #[inline]
    fn get(&self, place: u32) -> Option<(&Model, bool)> {
        match self.by_place.get(place as usize) {
            Some(&i) if i != NO_SLOT => {
                let s = &self.slots[i as usize];
                Some((&s.model, self.seen - s.at > STALE_AFTER))
            }
            _ => None,
        }
    }

    fn get_or_insert(&mut self, place: u32, window: usize) -> &mut Model {
        self.seen += 1;
        let seen = self.seen;
        let p = place as usize;
        if self.by_place.get(p).is_none_or(|&i| i == NO_SLOT) {
            self.slots.push(Slot {
                place,
                model: Model::new(window),
                at: seen,
            });
            self.point(place, self.slots.len() - 1);
        }
        let slot = &mut self.slots[self.by_place[p] as usize];
        if seen - slot.at > STALE_AFTER {
            // What it knew is old (the place may have recovered, or slowed): start again.
            slot.model = Model::new(window);
        }
        slot.at = seen;
        &mut slot.model
    }

    /// Keeps the slots of places that stay, renumbered by `renumber` (old number to new,
    /// [`NO_SLOT`] for a place that left).
    fn renumber(&mut self, renumber: &[u32]) {
        self.slots.retain_mut(|s| {
            s.place = renumber[s.place as usize];
            s.place != NO_SLOT
        });
        self.by_place.clear();
        for i in 0..self.slots.len() {
            self.point(self.slots[i].place, i);
        }
    }

    /// Points place number `place` at slot `i`.
    fn point(&mut self, place: u32, i: usize) {
        let p = place as usize;
        if self.by_place.len() <= p {
            self.by_place.resize(p + 1, NO_SLOT);
        }
        self.by_place[p] = i as u32;
    }
}

/// The median of `v`, if any.
pub fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mid = v.len() / 2;
    let (_, m, _) = v.select_nth_unstable_by(mid, f64::total_cmp);
    Some(*m)
}

/// A place id's (or function name's) 64-bit key in the model maps (FxHash: fast, not
/// keyed; these names are the cluster's own).
pub fn place_key(id: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = rustc_hash::FxHasher::default();
    id.hash(&mut h);
    h.finish()
}

/// What the planner learnt of one place over every function.
#[derive(Debug, Clone)]
struct PlaceState {
    name: String,
    /// Its advertised speed (1 when it advertised none).
    speed: f64,
    /// How much slower than its speed promised it runs functions: the mean over the
    /// calls seen there, smoothed once they are many ([`slow_mean`]). Slowly: each call's
    /// own time varies by a fifth or more, independently at each place, and a place whose
    /// last calls were lucky must not look faster for it (what changes quickly comes in
    /// the service times the place reports, see [`Planner::features`]).
    slowness: f64,
    /// The calls the slowness was taken over.
    slowness_calls: usize,
    /// The mean squared difference of those calls' own slowness from the slowness as it
    /// stood: how far one call strays.
    slowness_var: f64,
    /// What is used of it ([`PlaceState::slow`]).
    slow: f64,
    /// Extra time of a cold start there, learnt from calls that ran cold.
    cold_ms: Option<f64>,
    /// Of the calls sent there while the router believed the function cold, the share
    /// that ran cold (smoothed; none known: all). A member's warm state comes from its
    /// reports, up to an interval old, and a function loaded ahead or by another router's
    /// call is warm before the router hears of it: a believed cold start there costs, on
    /// average, this share of one. (The device's warm state is exact: its share stays 1.)
    cold_hit: Option<f64>,
    /// It refused a call for capacity: full until then (ms).
    full_until: f64,
    /// The mean service time of the calls seen there, ms: what a call waits behind.
    work_ms: Option<f64>,
    /// How long calls waited there for a core, by the load the router knew of.
    wait: Option<WaitCurve>,
    /// How much longer than `wait` says calls waited there, by the same load: the mean
    /// over every call of the part beyond it (none for a call that waited less). All
    /// zero, no risk, until calls there are seen to wait.
    wait_over: WaitCurve,
    /// Calls lost there with the place (the connection gone under them), and how long
    /// the router's calls were out there in all, ms ([`Losses`]).
    losses: Losses,
}

/// How often a place loses the calls it holds: calls lost with it against the time calls
/// spent there, and the time a lost call cost before it was noticed.
#[derive(Debug, Clone, Copy)]
struct Losses {
    lost: f64,
    exposed_ms: f64,
    noticed_after_ms: f64,
    /// `lost` and [`LOSS_PRIOR_MS`], each over `exposed_ms` + [`LOSS_PRIOR_MS`]: kept as
    /// calls are learnt, so that a decision only multiplies ([`Losses::rate`]).
    own_rate: f64,
    prior_share: f64,
}

impl Default for Losses {
    fn default() -> Self {
        Losses {
            lost: 0.0,
            exposed_ms: 0.0,
            noticed_after_ms: 0.0,
            own_rate: 0.0,
            prior_share: 1.0,
        }
    }
}

impl Losses {
    fn add(&mut self, exposed_ms: f64, lost_after_ms: Option<f64>) {
        self.exposed_ms += exposed_ms.max(0.0);
        if let Some(a) = lost_after_ms {
            self.lost += 1.0;
            self.noticed_after_ms += a.max(0.0);
        }
        let weight = self.exposed_ms + LOSS_PRIOR_MS;
        (self.own_rate, self.prior_share) = (self.lost / weight, LOSS_PRIOR_MS / weight);
    }

    /// Calls lost per ms a call spends there: its own count shrunk towards every member's
    /// rate (`prior`) as if it had held calls for [`LOSS_PRIOR_MS`] at that rate (a place
    /// that lost none in its first few calls is not taken to never fail; one that lost
    /// many soon stands out).
    fn rate(&self, prior: f64) -> f64 {
        self.own_rate + prior * self.prior_share
    }
}

/// What a decision needs of every member's losses: their rate, and what a loss cost.
#[derive(Debug, Clone, Copy)]
struct LossPrice {
    rate: f64,
    noticed_after_ms: f64,
}

impl PlaceState {
    /// Its slowness, as far as it stands out of the noise of its own estimate: shrunk
    /// towards none (1) by the share of its squared distance from 1 that the estimate's
    /// variance, taken [`SLOWNESS_Z`] standard errors wide, explains (positive-part
    /// James-Stein). A run says only size x slowness, and a function's size and the
    /// slowness of the places that run it are learnt from each other, so their split is
    /// free and wanders. It wandered apart at different places: on `bursty-azure` seed 5
    /// the cloud, which ran most calls of a 1.3 s function, drifted to about 7 % slower
    /// than its speed and the function's size to 6 % smaller (runs there averaged
    /// 1,333 ms; the size said 1,256 ms at the cloud's speed), while the edges' slowness
    /// came from other functions. At the edges the function was predicted 20 ms short,
    /// and the 2,841 calls of it sent there took 55 ms longer than the same calls did at
    /// the cloud under cloud-only. What the estimate cannot tell from noise reads as no
    /// slowness, which holds the split where the advertised speeds put it (with this and
    /// the blended risk of [`Planner::plan`], 884 calls went to edges); a place that
    /// really runs 10 % slower than it says keeps nine tenths of that.
    fn slow(&self) -> f64 {
        self.slow
    }

    /// Computes [`PlaceState::slow`] from the estimate, kept as `slow` each time the
    /// estimate moves (read for every candidate of every decision, it would divide twice).
    fn shrunk_slowness(&self) -> f64 {
        let d = self.slowness - 1.0;
        if self.slowness_calls == 0 || d == 0.0 {
            return 1.0;
        }
        let noise =
            SLOWNESS_Z * SLOWNESS_Z * self.slowness_var * slow_mean_variance(self.slowness_calls);
        1.0 + d * (1.0 - noise / (d * d)).max(0.0)
    }

    /// The tail's risk of a wait at `load` (per core), ms: how much longer than the wait
    /// curve calls sent there at that load waited, on average over all of them. A place
    /// whose load the router hears late (a report a second old, callers it does not see)
    /// queues bursts its reported load did not show; the mean wait spreads them over
    /// every call, this keeps them as a risk, as a model's shortfall does.
    fn wait_risk_ms(&self, load: f64) -> f64 {
        // Flat past the last knot: the curve of waits has the load itself there.
        self.work_ms.map_or(0.0, |w| {
            self.wait_over
                .at(load.min(WAIT_KNOTS[WAIT_KNOTS.len() - 1]))
                * w
        })
    }

    /// The analytic estimate at the place (or at one not known yet): its own cold-start
    /// cost, times the function's cold-start factor, and the length of its work, once it
    /// has them, what else is known of the function (`f`: [`Size::priors`]), and `base`
    /// for the rest.
    #[inline]
    fn analytic(known: Option<&PlaceState>, base: &Analytic, f: FunctionPriors) -> Analytic {
        Analytic {
            prior_calls: f.prior_calls,
            cold_penalty_ms: known
                .and_then(|k| k.cold_ms)
                .unwrap_or(base.cold_penalty_ms)
                * f.cold_factor
                * known.and_then(|k| k.cold_hit).unwrap_or(1.0),
            work_ms: known.and_then(|k| k.work_ms),
            wait: known.and_then(|k| k.wait),
            ..*base
        }
    }
}

/// The weight of a new call's service time in a place's [`PlaceState::work_ms`].
const WORK_WEIGHT: f64 = 0.05;

/// How fast a place's [`WaitCurve`] follows what calls there waited.
const WAIT_RATE: f64 = 0.1;

/// How long a loaded function stays warm, and how many callers share the planner's device
/// place: what a cold start on the device buys. Loading a function on the caller's own
/// device costs its cold start once, and its next calls there within the keepalive run
/// warm; a planner that weighed only this call's cold start would never load it, however
/// often the function is called (a device that never runs a function never has it warm).
/// So a cold device's score is lowered by the share of the cold start those calls would
/// get back, k/(k + 1) of it where k is how many calls of the function the device is
/// expected to make within the keepalive (this planner's rate of the function over its
/// callers). Only the device: a member's warm state is shared by every router and is
/// prepared ahead ([`crate::forecast`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reuse {
    /// How long a function stays loaded after a call, ms.
    pub keepalive_ms: f64,
    /// How many callers the device place stands for (one on a device itself; in the
    /// simulator, a site's devices share their site's router).
    pub device_callers: f64,
}

impl Default for Reuse {
    fn default() -> Self {
        Reuse {
            keepalive_ms: crate::manifest::default_keepalive().as_secs_f64() * 1000.0,
            device_callers: 1.0,
        }
    }
}

/// A function's size before any function ran anywhere (nothing to go by): as long as a
/// function may run by default (its timeout). With the size unknown, a place's worst case
/// is what counts: a slow place (the device) is the best only for short calls and costs
/// many times the fastest's for long ones, where a fast, far place costs at most its round
/// trip more. So the first call goes where long calls run fastest, not, as a guess of 1 ms
/// would have it, to the place with the shortest round trip (on `sparse`, a 2 s function
/// sent to a device as a router's first call took 9.4 s, the cloud's 1 s).
fn unknown_size() -> f64 {
    crate::manifest::default_timeout().as_secs_f64() * 1000.0
}

/// A model's overruns count as risk once it has seen this many calls.
const RISK_AFTER: usize = 8;

/// How long a place is taken to have held calls at every member's rate of losses before
/// its own count (ms): a minute's worth ([`Losses::rate`]).
const LOSS_PRIOR_MS: f64 = 60_000.0;
/// How much a loss's cost weighs in a place's score (1: its mean cost).
const LOSS_WEIGHT: f64 = 1.0;

/// How many standard errors of its estimate a place's slowness is taken as noise within
/// ([`PlaceState::slow`]).
const SLOWNESS_Z: f64 = 2.0;

/// The largest relative overrun one call adds to its function's [`Models::overrun`].
const OVERRUN_MAX: f64 = 10.0;

/// How many recent relative errors are kept for the median.
const ERRORS_KEPT: usize = 2048;

/// What the planner learnt of a function's length from its runs, wherever they were.
#[derive(Debug, Clone, Copy)]
struct Size {
    /// Its service time on the reference machine (speed 1), ms: the mean of its runs, each
    /// at its place's speed and slowness, smoothed once they are many ([`slow_mean`]).
    ms: f64,
    /// The mean squared relative deviation of a run from that size: how much one call's
    /// time varies from the next (its coefficient of variation, squared).
    spread: f64,
    /// The runs it was learnt from.
    runs: usize,
    /// Its cold starts, to tell how long they are against the places' own (each place's
    /// learnt cold start, over all functions); none before it ran cold. One function
    /// loads in 20 ms, another in 200 ms wherever it loads (its module's or image's
    /// size), and a place learns an average.
    cold: Option<Colds>,
}

/// How many places a function's [`Colds`] keeps apart.
const COLD_PLACES: usize = 4;

/// A function's cold starts: how long they took beyond a warm run, and where. Its ratio to
/// the places' own is taken against what those places' cold starts are now
/// ([`Planner::cold_factor`]), not as they were when it loaded there: a place learns its
/// cold start over the functions it loads, and the first it learns are the shortest (a
/// burst of new functions at once: the quickest to load are done first). Taken against
/// the place's figure of the moment, a function of `sparse` seed 12 that loads in about
/// 70 ms, among the trace's first calls at the cloud, read 1.6 times the cloud's cold
/// start (130 ms once it settled), and was predicted about 200 ms cold at every place
/// when it was called again nine minutes later.
#[derive(Debug, Clone, Copy)]
struct Colds {
    /// The mean extra time of its cold starts, ms, smoothed once they are many
    /// ([`slow_mean`]).
    ms: f64,
    /// How many.
    n: u32,
    /// The places they were taken at (by number) and each one's share of them, smoothed
    /// as `ms` is; the shares sum to 1. A place beyond the first [`COLD_PLACES`] takes
    /// the slot of the least share.
    at: [(u32, f64); COLD_PLACES],
}

impl Colds {
    /// Learns a cold start at place `place` that took `extra_ms` beyond a warm run.
    fn learn(c: Option<Colds>, place: u32, extra_ms: f64) -> Colds {
        let Some(mut c) = c else {
            let mut at = [(u32::MAX, 0.0); COLD_PLACES];
            at[0] = (place, 1.0);
            return Colds {
                ms: extra_ms,
                n: 1,
                at,
            };
        };
        c.n = c.n.saturating_add(1);
        let w = (1.0 / f64::from(c.n)).max(crate::predict::SLOW_WEIGHT);
        c.ms = slow_mean(Some(c.ms), c.n as usize, extra_ms);
        for slot in &mut c.at {
            slot.1 *= 1.0 - w;
        }
        let slot = match c.at.iter().position(|(p, _)| *p == place) {
            Some(i) => i,
            None => {
                // The slot of the least share (an empty one has none).
                let i = (0..COLD_PLACES)
                    .min_by(|&a, &b| c.at[a].1.total_cmp(&c.at[b].1))
                    .unwrap_or(0);
                c.at[i].0 = place;
                i
            }
        };
        c.at[slot].1 += w;
        c
    }
}

/// How many cold starts a place's own cold start counts for against a function's
/// ([`Size::cold_factor`]).
const COLD_PRIOR_STARTS: f64 = 1.0;

/// A function's [`Size::spread`] is used once it was learnt from more than this many runs.
const SPREAD_AFTER: usize = 8;

/// How much a place's mean latency plausibly differs from the analytic estimate, relative
/// to it: a model's offset from the estimate is trusted as far as its calls outweigh the
/// noise of one call against this ([`Size::prior_calls`]).
const OFFSET_SCALE: f64 = 0.1;

/// How many standard deviations of a member's reported service time from the planner's
/// own estimate are taken for noise ([`Planner::features`]).
const REPORT_NOISE_Z: f64 = 2.0;

/// What is known of a function that every place's analytic estimate takes
/// ([`Size::priors`]).
#[derive(Debug, Clone, Copy)]
struct FunctionPriors {
    /// [`Size::prior_calls`].
    prior_calls: f64,
    /// [`Size::cold_factor`].
    cold_factor: f64,
}

impl Size {
    fn first(ms: f64) -> Self {
        Size {
            ms,
            spread: 0.0,
            runs: 1,
            cold: None,
        }
    }

    /// Learns a run that took `ms` at speed 1.
    fn learn(&mut self, ms: f64) {
        self.runs += 1;
        let d = (ms / self.ms.max(1e-9) - 1.0).clamp(-10.0, 10.0);
        self.spread = slow_mean(Some(self.spread), self.runs - 1, d * d);
        self.ms = slow_mean(Some(self.ms), self.runs, ms);
    }

    /// The relative spread of one run, once known.
    fn spread(&self) -> Option<f64> {
        (self.runs > SPREAD_AFTER).then_some(self.spread)
    }

    /// How many calls the analytic estimate counts for against a model's offset from it
    /// ([`Analytic::prior_calls`]): the noise of one call (the spread of the function's
    /// runs) over what an offset plausibly is ([`OFFSET_SCALE`]), both relative to the
    /// estimate; never fewer than the default. A model's first calls of a function whose
    /// runs vary by a fifth say little of an offset of a tenth: three of them, taken at
    /// three fifths as before, once moved a 1.3 s function's prediction at the cloud by
    /// 270 ms, and its calls went to slower edges.
    fn prior_calls(s: Option<&Size>) -> f64 {
        let default = OFFSET_PRIOR_CALLS;
        s.and_then(Size::spread).map_or(default, |v| {
            (v / (OFFSET_SCALE * OFFSET_SCALE)).max(default)
        })
    }
}

/// The service time a function of `size` (its time at speed 1) is expected to take at a
/// place of advertised `speed` that runs functions `slowness` times slower than its speed
/// promised.
#[inline]
fn service_at(size: f64, speed: f64, slowness: f64) -> f64 {
    size / speed.max(1e-3) * slowness
}

/// Models for every (function, place) seen, and the prediction error so far.
#[derive(Debug, Clone)]
pub struct Planner {
    /// Per function, per place (keyed by a 64-bit hash of the place's id, which keeps
    /// lookups on the hot path free of string comparisons), the place's id and its model.
    models: HashMap<String, Models>,
    /// Per function, its size: the service time it would take on the reference machine
    /// (speed 1), learnt from wherever it ran, and how much its runs vary.
    size: HashMap<String, Size>,
    /// The sums of the logarithms of functions' first sizes and of their squares, and their
    /// count: a function's size before it ran anywhere ([`Planner::typical_size`]).
    first_sizes: (f64, f64, f64),
    /// Each place's number, by the key of its id: one lookup per place in a decision
    /// finds both what is known of it and, per function, its model.
    place_number: crate::numbers::Numbers,
    /// What is learnt of each place over every function, by its number.
    places: Vec<PlaceState>,
    /// Smoothed response size per function, KiB: added to the request's size.
    response_kb: HashMap<String, f64>,
    pub analytic: Analytic,
    pub reuse: Reuse,
    window: usize,
    errors: Vec<f64>,
    next_error: usize,
    /// Over every member: calls lost with their place, against the time calls spent at
    /// members (the prior of each place's [`Losses::rate`]).
    losses: Losses,
}

impl Planner {
    /// `window`: observations each model keeps.
    pub fn new(window: usize) -> Self {
        Planner {
            models: HashMap::default(),
            size: HashMap::default(),
            first_sizes: (0.0, 0.0, 0.0),
            place_number: Default::default(),
            places: Vec::new(),
            response_kb: HashMap::default(),
            analytic: Analytic::default(),
            reuse: Reuse::default(),
            window,
            errors: Vec::new(),
            next_error: 0,
            losses: Losses::default(),
        }
    }

    /// What a place's analytic estimate takes of the function `s` ([`PlaceState::analytic`]),
    /// read once per call.
    fn priors(&self, s: Option<&Size>) -> FunctionPriors {
        Self::priors_over(&self.places, &self.analytic, s)
    }

    /// [`Planner::priors`] from the parts of the planner it reads (for a caller that holds
    /// the models mutably).
    fn priors_over(places: &[PlaceState], base: &Analytic, s: Option<&Size>) -> FunctionPriors {
        FunctionPriors {
            prior_calls: Size::prior_calls(s),
            cold_factor: Self::cold_factor(places, base.cold_penalty_ms, s),
        }
    }

    /// The factor a place's cold start is taken by for the function `s`: its cold starts'
    /// mean against what the places they were taken at load in now (`base` where a place
    /// has none), on average over them ([`Colds`]), shrunk towards 1 by one cold start's
    /// worth (a single load says half of it).
    fn cold_factor(places: &[PlaceState], base: f64, s: Option<&Size>) -> f64 {
        s.and_then(|s| s.cold).map_or(1.0, |c| {
            let places: f64 =
                c.at.iter()
                    .filter(|(_, share)| *share > 0.0)
                    .map(|&(p, share)| {
                        let at = places.get(p as usize).and_then(|k| k.cold_ms);
                        share * at.unwrap_or(base)
                    })
                    .sum();
            let r = if places > 0.0 {
                (c.ms / places).clamp(0.05, 20.0)
            } else {
                1.0
            };
            let n = f64::from(c.n);
            (n * r + COLD_PRIOR_STARTS) / (n + COLD_PRIOR_STARTS)
        })
    }

    /// A function's size before it ran anywhere: the mean of the log-normal that functions'
    /// first sizes fit (execution times across functions are close to log-normal: Shahrad
    /// et al., 2020), exp(m + s²/2) from their logarithms' mean m and variance s², with the
    /// size of a function nothing is known of ([`unknown_size`]) as one more sample, and at
    /// most that. The expected size is what minimises a call's expected time, and sizes are
    /// heavy-tailed: the plain mean of the few sizes seen so far mostly misses the tail and
    /// says "small", and a small guess sends a long function to a slow place. The one
    /// sample of the unknown keeps the first few sizes from speaking for every function.
    fn typical_size(&self) -> f64 {
        let top = unknown_size();
        let l = top.ln();
        let (sl, sl2, n) = self.first_sizes;
        let (sl, sl2, n) = (sl + l, sl2 + l * l, n + 1.0);
        let m = sl / n;
        let v = if n > 1.0 {
            ((sl2 - n * m * m) / (n - 1.0)).max(0.0)
        } else {
            0.0
        };
        (m + v / 2.0).exp().min(top)
    }

    /// Each place's number (`None` for one not known yet), and the function's size as
    /// the places that report its service time say: the sum over them of each report read
    /// at its place's advertised speed and corrected by how the place ran other
    /// functions, and how many ([`Planner::size_of`]).
    fn look_up(&self, places: &[PlaceInfo<'_>]) -> (Vec<Option<u32>>, f64, f64) {
        let mut numbers = Vec::with_capacity(places.len());
        let (mut sum, mut reports) = (0.0, 0u32);
        for p in places {
            let number = self.place_number.get(p.key);
            numbers.push(number);
            if let Some(s) = p.service_ms.filter(|s| s.is_finite() && *s > 0.0) {
                let slowness = number.map_or(1.0, |k| self.places[k as usize].slow());
                sum += s * p.speed.unwrap_or(1.0).max(1e-3) / slowness;
                reports += 1;
            }
        }
        (numbers, sum, f64::from(reports))
    }

    /// A function's size: what this planner learnt from its own calls' runs (`learnt`),
    /// pooled with what the places report of it (`reported`: the sum and count from
    /// [`Planner::look_up`]). A report is the average of its member's last runs of the
    /// function, by every router's calls, and counts for
    /// [`crate::mesh::REPORTED_SERVICE_RUNS`] runs: the runs whose mean varies as much. (A
    /// router sees a share of a function's calls: on `bursty-azure` seed 4 one had seen a
    /// function of about 1.3 s at the cloud run twice, sized it at 1,220 ms from those
    /// runs alone where the cloud's report said 1,840 ms, and sent a call of it to an edge
    /// where it was cold, predicted at 968 ms; it took 1,733 ms.) `None` when it neither
    /// ran here nor is reported.
    fn size_of(learnt: Option<&Size>, (sum, reports): (f64, f64)) -> Option<f64> {
        let w = crate::mesh::REPORTED_SERVICE_RUNS;
        match learnt {
            Some(l) => {
                let runs = l.runs as f64;
                Some((runs * l.ms + w * sum) / (runs + w * reports))
            }
            None => (reports > 0.0).then(|| sum / reports),
        }
    }

    /// The features of a call at `p`; `size`: the function's size (or a typical
    /// function's), read once per call.
    fn features(
        payload_kb: f64,
        size: f64,
        noise: Option<f64>,
        p: &PlaceInfo<'_>,
        known: Option<&PlaceState>,
    ) -> Features {
        // The function's size at this place's advertised speed, corrected by how it ran
        // other functions.
        let own = || {
            service_at(
                size,
                p.speed.unwrap_or(1.0),
                known.map_or(1.0, PlaceState::slow),
            )
        };
        Features {
            // Nothing travels to the caller's own device.
            payload_kb: if p.tier == Tier::Device {
                0.0
            } else {
                payload_kb
            },
            rtt_ms: p.rtt_ms,
            load_per_core: p.load_per_core,
            cold: !p.warm,
            service_ms: match (p.service_ms, noise) {
                // What the place reports is the average of its last few runs: it differs
                // from `own` by their noise, independently at each place, and the place
                // whose last runs were lucky would look faster for it (a 1.3 s function
                // whose runs vary by a fifth reads ±65 ms apart at two equal places). So
                // only as much of the difference as is beyond `noise` (relative to
                // `own`) counts: a place that really runs the function slower now, or
                // faster, still shows it.
                (Some(r), Some(z)) => {
                    let own = own();
                    own + beyond_noise(r - own, z * own)
                }
                // Nothing to tell noise by yet: the place's word.
                (Some(r), None) => r,
                (None, _) => own(),
            },
        }
    }

    /// Predicts every place for `call` and chooses one. `roll` is uniform in [0, 1).
    /// `None` when `places` is empty.
    pub fn plan(&self, call: &Call<'_>, places: &[PlaceInfo<'_>], roll: f64) -> Option<Plan> {
        let function = call.function;
        let payload_kb = call.request_kb + self.response_kb.get(function).copied().unwrap_or(0.0);
        let models = self.models.get(function);
        let learnt = self.size.get(function);
        let (numbers, sum, reports) = self.look_up(places);
        let known = Self::size_of(learnt, (sum, reports));
        // How far a reported service time strays from the function's mean by chance,
        // relative to it ([`Planner::features`]).
        let noise = learnt
            .and_then(Size::spread)
            .map(|v| REPORT_NOISE_Z * (v * crate::mesh::REPORTED_SERVICE_VAR).sqrt());
        let priors = self.priors(learnt);
        let size = known.unwrap_or_else(|| self.typical_size());
        let guessed = known.is_none();
        let losses = self.loss_price();
        let mut scored = Vec::with_capacity(places.len());
        for (p, &number) in places.iter().zip(&numbers) {
            debug_assert_eq!(p.key, place_key(p.id), "the key of {}", p.id);
            let known = number.map(|n| &self.places[n as usize]);
            let features = Self::features(payload_kb, size, noise, p, known);
            let found = number.and_then(|n| models.and_then(|m| m.get(n)));
            let model = found.map(|(m, _)| m);
            let analytic = PlaceState::analytic(known, &self.analytic, priors);
            let at = |f: &Features| match model {
                Some(m) => m.predict(f, &analytic),
                None => (analytic.estimate(f), Source::Analytic),
            };
            let (mut predicted_ms, source) = at(&features);
            let mut herd_ms = 0.0;
            if p.own.calls > 0 {
                herd_ms = Self::herd_ms(&p.own, &features, known, p.cores);
                // Never below the call's own round trip and run.
                predicted_ms = (predicted_ms + herd_ms)
                    .max(predicted_ms.min(features.rtt_ms + features.service_ms));
            }
            if known.is_some_and(|k| k.full_until > call.now_ms) {
                // It turned a call away lately: a refusal costs a round trip, and a slot
                // frees in about a service time.
                predicted_ms += p.rtt_ms + features.service_ms;
            }
            let observations = model.map_or(0, Model::observations);
            // The tail's risk: how much calls here overran their predictions, and how
            // much the function's calls overran theirs anywhere, for its length here.
            // (A place that went without risk until it was known would be favoured for
            // being unknown, over one whose overruns the planner has measured.) Both are
            // means over calls that mostly overran by nothing and now and then by much,
            // so a model's few calls say little: its shortfall counts for the calls it
            // was taken over, the function's risk for `predict::RISK_PRIOR_CALLS`. (Taken alone
            // from a model's eighth call, as it was, a place whose few calls happened not
            // to overrun looked the safest: on `bursty-azure` seed 5, edges that had run
            // a 1.3 s function a few times carried half the cloud's risk for it.) Before
            // the function's risk is known, the model's alone from its eighth call.
            let shared = models
                .filter(|m| m.seen >= RISK_AFTER as u64)
                .and_then(|m| m.overrun)
                .map(|o| o * predicted_ms);
            let own = model.and_then(|m| Some((m.shortfall()?, m.shortfall_share())));
            let mut extra_ms = match (own, shared) {
                (Some((s, w)), Some(r)) => w * s + (1.0 - w) * r,
                (Some((s, _)), None) if observations >= RISK_AFTER => s,
                (_, r) => r.unwrap_or(0.0),
            };
            // And the risk of a queue its reported load did not show.
            extra_ms += known.map_or(0.0, |k| k.wait_risk_ms(features.load_per_core));
            // And of losing the call with the place: the chance it fails while the call
            // is there, times what a loss costs (the wait until it is noticed, and the
            // call again).
            if let (Some(l), false) = (losses, p.tier == Tier::Device) {
                extra_ms += Self::loss_ms(l, known, predicted_ms);
            }
            if p.tier == Tier::Device && !p.warm {
                // What loading it on the device gives back later (see `Reuse`).
                let warm = at(&Features {
                    cold: false,
                    ..features
                });
                extra_ms -= self.reuse_share(call, models) * (predicted_ms - warm.0).max(0.0);
            }
            scored.push(Scored {
                tier: p.tier,
                predicted_ms,
                source,
                observations,
                features,
                speed: p.speed.unwrap_or(1.0),
                stale: found.is_some_and(|(_, stale)| stale),
                guessed,
                extra_ms,
                herd_ms,
                size_ms: (!guessed).then_some(size),
            });
        }
        let mut d = choose(&scored, call.deadline_ms, &call.weights, roll)?;
        let mut load_device = false;
        if let Some(other) = Self::instead_of_loading(&scored, d.index, call, roll) {
            (d, load_device) = (other, true);
        }
        Some(Plan {
            scored,
            chosen: d.index,
            explored: d.explored,
            meets_deadline: d.meets_deadline,
            timed: true,
            load_device,
            guessed,
        })
    }

    /// Every member's rate of losses and a loss's mean cost until noticed; `None` while
    /// no call was lost.
    fn loss_price(&self) -> Option<LossPrice> {
        let all = &self.losses;
        (all.lost > 0.0).then(|| LossPrice {
            rate: all.lost / all.exposed_ms.max(1.0),
            noticed_after_ms: all.noticed_after_ms / all.lost,
        })
    }

    /// What losing a call predicted at `predicted_ms` with the place costs on average,
    /// ms (`known`: what is learnt of the place, `None` for one never used): the chance
    /// of a loss while the call is there (at such rates, 1 - e^-x is x) times the wait
    /// until it is noticed and the call again.
    fn loss_ms(all: LossPrice, known: Option<&PlaceState>, predicted_ms: f64) -> f64 {
        let rate = known.map_or(all.rate, |k| k.losses.rate(all.rate));
        let chance = (rate * predicted_ms.max(0.0)).min(1.0);
        LOSS_WEIGHT * chance * (all.noticed_after_ms + predicted_ms)
    }

    /// How much longer than the place's wait says a call waits at `p` for the router's
    /// own calls ahead of it there (`own`), ms. The wait is learnt in lengths of the
    /// place's mean work ([`Analytic::work_ms`]), each call per core ahead counting one;
    /// the router knows what it expected of its own calls, and a burst of one long
    /// function at a place of short ones waits behind copies of itself, far longer than
    /// behind the place's mean work (on `far-small-cloud` seed 14, calls sent to an edge
    /// with five or more of their function's calls still there took 660 ms longer than
    /// predicted). So each of its own calls counts for what it expected of it rather than
    /// for the mean, at the share of the load that the place's wait curve says turns
    /// into waiting, at most all of it (on loopback, where the work is a twentieth of a
    /// millisecond, a curve's knots stray to tens of lengths, and taken as they were
    /// they turned differences of microseconds into a tenth of a millisecond, as much
    /// as the calls themselves). Negative when its calls there are shorter than the mean.
    #[inline]
    fn herd_ms(own: &Own, f: &Features, known: Option<&PlaceState>, cores: u32) -> f64 {
        if f.load_per_core <= 0.0 {
            return 0.0;
        }
        let work = known.and_then(|k| k.work_ms).unwrap_or(f.service_ms);
        let waits = known.and_then(|k| k.wait).map_or(1.0, |c| {
            (c.at(f.load_per_core) / f.load_per_core).clamp(0.0, 1.0)
        });
        waits * (own.work_ms - f64::from(own.calls) * work) / f64::from(cores.max(1))
    }

    /// Where a call goes while the function loads on the device: when `chosen` is a cold
    /// device that won by its reuse credit alone (another place is predicted faster than
    /// it, cold), the choice without it.
    #[cold]
    fn instead_of_loading(
        scored: &[Scored],
        chosen: usize,
        call: &Call<'_>,
        roll: f64,
    ) -> Option<crate::policy::Decision> {
        let dev = &scored[chosen];
        if dev.tier != Tier::Device || !dev.features.cold || dev.extra_ms >= 0.0 {
            return None;
        }
        let mut without = scored.to_vec();
        without[chosen].predicted_ms = f64::INFINITY;
        let other = choose(&without, call.deadline_ms, &call.weights, roll)?;
        (other.index != chosen && without[other.index].predicted_ms < dev.predicted_ms)
            .then_some(other)
    }

    /// The share of a cold device's cold start that its next calls would get back, k/(k + 1)
    /// (see [`Reuse`]); 0 before the function's rate is known.
    #[cold]
    fn reuse_share(&self, call: &Call<'_>, models: Option<&Models>) -> f64 {
        models
            .and_then(|m| m.calls_per_ms(call.now_ms))
            .map_or(0.0, |rate| {
                let k = rate * self.reuse.keepalive_ms / self.reuse.device_callers.max(1.0);
                k / (k + 1.0)
            })
    }

    /// Learns from any outcome: an answer is an observation; a timeout, that the place
    /// takes at least that long (a censored observation) and is full for now; a refusal,
    /// that the place is full for now; a lost connection, that the place loses calls (its
    /// [`Losses`], against the time every call spent there; the driver also benches it).
    pub fn learn(&mut self, call: &Call<'_>, place: &str, scored: &Scored, outcome: &Outcome) {
        if scored.tier != Tier::Device {
            // How long the call was out at the member, and whether it was lost there.
            let (out_ms, lost) = match *outcome {
                Outcome::Answered { took_ms, .. } => (took_ms, None),
                Outcome::TimedOut { after_ms } => (after_ms, None),
                Outcome::Lost {
                    sent: true,
                    after_ms,
                } => (after_ms, Some(after_ms)),
                _ => (0.0, None),
            };
            if out_ms.is_finite() && out_ms > 0.0 {
                self.losses.add(out_ms, lost);
                self.place(place).losses.add(out_ms, lost);
            }
        }
        match *outcome {
            Outcome::Answered {
                took_ms,
                service_ms,
                response_kb,
                cold,
            } => {
                self.place(place).speed = scored.speed;
                if let Some(kb) = response_kb.filter(|k| k.is_finite() && *k >= 0.0) {
                    let r = self
                        .response_kb
                        .entry(call.function.to_string())
                        .or_insert(kb);
                    *r = 0.8 * *r + 0.2 * kb;
                }
                self.observe_ran(
                    call.function,
                    place,
                    &scored.features,
                    scored.predicted_ms,
                    took_ms,
                    service_ms,
                    Some(cold),
                    scored.guessed,
                    scored.herd_ms,
                    scored.size_ms,
                );
            }
            Outcome::TimedOut { after_ms } if after_ms > scored.predicted_ms => {
                // At least this long: recorded as this long, not counted as a prediction
                // error (the true time is unknown). And a member is taken to be full for
                // a while, as after a refusal (longer): one that kept reporting is not benched for
                // a timeout (see `Outcome::benches`), but it is busy or slow now. Not the
                // device: its own busy state is known exactly from one call to the next.
                let at_least = after_ms - scored.herd_ms;
                self.record(call.function, place, &scored.features, at_least, None);
                if scored.tier != Tier::Device {
                    self.place(place).full_until = call.now_ms + BUSY_AFTER_TIMEOUT_MS;
                }
            }
            Outcome::Refused { .. } => {
                self.place(place).full_until = call.now_ms + FULL_FOR_MS;
            }
            _ => {}
        }
        if let Some(m) = self.models.get_mut(call.function) {
            m.first_ms.get_or_insert(call.now_ms);
        }
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
        self.observe_ran(
            function,
            place,
            features,
            predicted_ms,
            actual_ms,
            service_ms,
            None,
            false,
            0.0,
            None,
        );
    }

    /// As [`Planner::observe`], with whether the call ran cold, when its answer said,
    /// whether its features were made with a guessed size ([`Scored::guessed`]), and what
    /// the prediction added for the router's own calls ahead ([`Scored::herd_ms`]: the
    /// models and the place's wait learn the call's time without it), and the function's
    /// size it was planned with ([`Scored::size_ms`]).
    #[allow(clippy::too_many_arguments)]
    fn observe_ran(
        &mut self,
        function: &str,
        place: &str,
        features: &Features,
        predicted_ms: f64,
        actual_ms: f64,
        service_ms: Option<f64>,
        ran_cold: Option<bool>,
        guessed: bool,
        herd_ms: f64,
        sized: Option<f64>,
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
        // The call's own run time, when the place said it.
        let ran = service_ms.filter(|s| s.is_finite() && *s > 0.0);
        if let Some(s) = ran {
            // The function's size as this run says (its time at the place's advertised
            // speed), and the place's slowness against what its speed promised, before
            // this observation moves the size.
            let speed = self.place(place).speed;
            let seen = s * speed;
            let size = match self.size.get(function) {
                Some(v) => v.ms,
                None => {
                    // Every function's first size goes into the size of functions not
                    // seen yet (see `typical_size`).
                    let l = seen.max(1e-3).ln();
                    self.first_sizes.0 += l;
                    self.first_sizes.1 += l * l;
                    self.first_sizes.2 += 1.0;
                    self.size.insert(function.to_string(), Size::first(seen));
                    seen
                }
            };
            let transfer_ms = self.analytic.transfer_ms(features.payload_kb);
            let k = self.place(place);
            if let Some(work) = k.work_ms.filter(|w| *w > 0.0 && !features.cold) {
                // How long it waited for a core: what the call took beyond its round
                // trip, its transfer and its run, in lengths of the work there.
                let waited = actual_ms - herd_ms - features.rtt_ms - transfer_ms - s;
                let (load, waited) = (features.load_per_core, waited / work);
                let curve = k.wait.get_or_insert_with(WaitCurve::default);
                if let Some(expected) = curve.learn(load, waited, WAIT_RATE) {
                    k.wait_over
                        .learn(load, (waited - expected).max(0.0), WAIT_RATE);
                }
            }
            // Against the size the call was planned with: a router that saw a function
            // run a few times knows its size worse than the members' reports do (see
            // `size_of`), and a place would read slow or fast by the router's error.
            let size = sized.unwrap_or(size);
            if size > 0.0 {
                let r = (seen / size).clamp(0.01, 100.0);
                k.slowness_var = slow_mean(
                    (k.slowness_calls > 0).then_some(k.slowness_var),
                    k.slowness_calls + 1,
                    (r - k.slowness) * (r - k.slowness),
                );
                k.slowness_calls += 1;
                k.slowness = slow_mean(
                    (k.slowness_calls > 1).then_some(k.slowness),
                    k.slowness_calls,
                    r,
                );
                k.slow = k.shrunk_slowness();
            }
            // What calls there wait behind (see `Analytic::work_ms`).
            k.work_ms = Some(k.work_ms.map_or(s, |w| w + WORK_WEIGHT * (s - w)));
            let slow = k.slow();
            if let Some(e) = self.size.get_mut(function) {
                e.learn(seen / slow);
            }
        }
        if let Some(was_cold) = ran_cold.filter(|_| features.cold) {
            // Believed cold, it ran cold or warm (loaded ahead, or by a call the router did
            // not see): how often a cold start is paid there.
            let k = self.place(place);
            let hit = if was_cold { 1.0 } else { 0.0 };
            k.cold_hit = Some(crate::predict::smooth(k.cold_hit.or(Some(1.0)), hit));
        }
        // A call that ran warm says nothing of a cold start's length.
        if features.cold && ran_cold != Some(false) {
            // What a cold start added, beyond the warm estimate: the analytic estimate's
            // cold-start penalty follows it, over all places and at this place.
            let warm = Features {
                cold: false,
                // The run's own time when the place said it, not the prior's guess: a
                // function larger than guessed must not read as a slow cold start.
                service_ms: ran.unwrap_or(features.service_ms),
                ..*features
            };
            let extra = (actual_ms - herd_ms - self.analytic.estimate(&warm)).max(0.0);
            let number = self.number(place);
            let k = &mut self.places[number as usize];
            k.cold_ms = Some(k.cold_ms.map_or(extra, |c| 0.8 * c + 0.2 * extra));
            let c = &mut self.analytic.cold_penalty_ms;
            *c = 0.9 * *c + 0.1 * extra;
            // And the function's: how long its cold starts are, against the places' own
            // (see `Colds`).
            if let Some(e) = self.size.get_mut(function) {
                e.cold = Some(Colds::learn(e.cold, number, extra));
            }
        }
        // A call planned before the function's size was known was predicted with a
        // typical function's (a 1.3 s function's first calls, sent while the first was
        // still running, at 200-600 ms). That guess's error is not the place's: its
        // model learns the call with the service time the size now says, as it would
        // have been predicted (its shortfall, the gap between runs and the service time
        // they were predicted with, and its fit). Kept as it was, it made the place that
        // ran a new function's first calls look most of a second riskier for it than
        // every other (on `mmwave` seed 4, 880 ms at the cloud for a 1.3 s function),
        // and its later calls went to slower places.
        // Nor is it the function's: its overrun leaves such calls out (it is the mean
        // over the function's calls, and a guess's errors, ten times the prediction,
        // stood in it for a hundred calls as the risk of every place).
        let corrected = match (guessed, self.size.get(function).map(|s| s.ms)) {
            (true, Some(size)) => {
                let k = self.place(place);
                Some(Features {
                    service_ms: service_at(size, k.speed, k.slow()),
                    ..*features
                })
            }
            _ => None,
        };
        self.record(
            function,
            place,
            corrected.as_ref().unwrap_or(features),
            actual_ms - herd_ms,
            ran,
        );
        if let Some(m) = self.models.get_mut(function).filter(|_| !guessed) {
            // One call a hundred times over its prediction must not stand for all.
            let o = ((actual_ms - predicted_ms).max(0.0) / predicted_ms.max(1e-3)).min(OVERRUN_MAX);
            m.overruns += 1;
            m.overrun = Some(slow_mean(m.overrun, m.overruns, o));
        }
    }

    /// Adds one observation to the (function, place) model; `ran`: the call's own service
    /// time there, when the place said it.
    fn record(
        &mut self,
        function: &str,
        place: &str,
        features: &Features,
        actual_ms: f64,
        ran: Option<f64>,
    ) {
        let window = self.window;
        let number = self.number(place);
        let analytic = PlaceState::analytic(
            self.places.get(number as usize),
            &self.analytic,
            self.priors(self.size.get(function)),
        );
        let per_fn = match self.models.get_mut(function) {
            Some(m) => m,
            None => self.models.entry(function.to_string()).or_default(),
        };
        let model = per_fn.get_or_insert(number, window);
        model.observe(features, actual_ms, ran, &analytic);
    }

    /// What is learnt of `place`, created on first use.
    fn place(&mut self, place: &str) -> &mut PlaceState {
        let n = self.number(place);
        &mut self.places[n as usize]
    }

    /// `place`'s number, given on first use.
    fn number(&mut self, place: &str) -> u32 {
        let next = self.places.len() as u32;
        let n = self.place_number.get_or_insert(place_key(place), next);
        if n == next {
            self.places.push(PlaceState {
                name: place.to_string(),
                speed: 1.0,
                slowness: 1.0,
                slowness_calls: 0,
                slowness_var: 0.0,
                slow: 1.0,
                cold_ms: None,
                cold_hit: None,
                full_until: f64::NEG_INFINITY,
                work_ms: None,
                wait: None,
                wait_over: WaitCurve([0.0; WAIT_KNOTS.len()]),
                losses: Losses::default(),
            });
        }
        n
    }

    /// Refits every model with enough new observations; returns how many were refitted.
    /// Called off the hot path (a timer in the router, between events in the simulator).
    pub fn refit_due(&mut self) -> usize {
        let mut n = 0;
        for (function, models) in &mut self.models {
            let priors = Self::priors_over(&self.places, &self.analytic, self.size.get(function));
            for slot in &mut models.slots {
                if slot.model.wants_refit() {
                    let known = self.places.get(slot.place as usize);
                    slot.model
                        .refit(&PlaceState::analytic(known, &self.analytic, priors));
                    n += 1;
                }
            }
        }
        n
    }

    /// Median relative error of recent predictions (0.1 = 10 %), if any were checked.
    pub fn median_error(&self) -> Option<f64> {
        median(self.errors.clone())
    }

    /// Appends the relative errors of recent predictions.
    pub fn recent_errors(&self, out: &mut Vec<f64>) {
        out.extend_from_slice(&self.errors);
    }

    /// Forgets the models of places that left (so memory follows the membership).
    pub fn retain_places(&mut self, keep: &dyn Fn(&str) -> bool) {
        let mut renumber = Vec::with_capacity(self.places.len());
        let mut next = 0;
        for k in &self.places {
            if keep(&k.name) {
                renumber.push(next);
                next += 1;
            } else {
                renumber.push(NO_SLOT);
            }
        }
        if next as usize == self.places.len() {
            return;
        }
        let mut old = renumber.iter();
        self.places.retain(|_| old.next() != Some(&NO_SLOT));
        self.place_number.retain(|n| {
            *n = renumber[*n as usize];
            *n != NO_SLOT
        });
        for m in self.models.values_mut() {
            m.renumber(&renumber);
        }
    }

    /// Forgets a function's models (it was removed).
    pub fn forget_function(&mut self, function: &str) {
        self.models.remove(function);
        self.size.remove(function);
        self.response_kb.remove(function);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Weights;

    fn place(id: &str, tier: Tier, rtt: f64, load: f64) -> PlaceInfo<'_> {
        PlaceInfo {
            id,
            key: place_key(id),
            tier,
            rtt_ms: rtt,
            load_per_core: load,
            warm: true,
            service_ms: Some(4.0),
            cores: 4,
            speed: None,
            truth_ms: None,
            own: Own::default(),
        }
    }

    /// A cloud 5 ms away, idle, with the function `warm` or not (the cold-start tests).
    fn cloud_at(id: &str, warm: bool) -> PlaceInfo<'_> {
        PlaceInfo {
            warm,
            ..place(id, Tier::Cloud, 5.0, 0.0)
        }
    }

    /// An answer after `took_ms`, of which `service_ms` the run, with `response_kb` back.
    fn answered(took_ms: f64, service_ms: f64, response_kb: f64, cold: bool) -> Outcome {
        Outcome::Answered {
            took_ms,
            service_ms: Some(service_ms),
            response_kb: Some(response_kb),
            cold,
        }
    }

    /// A call of `function` with no payload, deadline or exploration.
    fn call_of(function: &str) -> Call<'_> {
        Call {
            function,
            ..call(0.0, no_explore())
        }
    }

    /// The features `p` would predict `places[0]` with for a call of "f".
    fn features_at(p: &Planner, places: &[PlaceInfo<'_>]) -> Features {
        p.plan(&call(0.0, no_explore()), places, 0.5)
            .unwrap()
            .scored[0]
            .features
    }

    fn no_explore() -> Weights {
        Weights {
            explore: 0.0,
            ..Weights::default()
        }
    }

    fn call(kb: f64, weights: Weights) -> Call<'static> {
        Call {
            function: "f",
            request_kb: kb,
            deadline_ms: None,
            weights,
            now_ms: 0.0,
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
        let plan = p.plan(&call(1.0, no_explore()), &places, 0.5).unwrap();
        assert_eq!(places[plan.chosen].id, "edge-2");
        let predicted = |i: usize| plan.scored[i].predicted_ms;
        assert_eq!(plan.next_best(&[plan.chosen], predicted), Some(1));
        assert_eq!(plan.next_best(&[0, 1, 2], predicted), None);
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
                .plan(&call(kb, Weights::default()), &places, roll)
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
    fn refusals_timeouts_and_priors_are_learnt() {
        let mut p = Planner::new(64);
        let w = no_explore();
        let places = [
            place("edge-1", Tier::Edge, 2.0, 0.0),
            place("edge-2", Tier::Edge, 2.0, 0.0),
        ];
        let c = call(1.0, w);
        let plan = p.plan(&c, &places, 0.5).unwrap();
        let before = plan.scored[0].predicted_ms;
        // A 429 from edge-1: for a second it costs a round trip and a service time more.
        p.learn(
            &c,
            "edge-1",
            &plan.scored[0],
            &Outcome::Refused { status: 429 },
        );
        let after = p.plan(&c, &places, 0.5).unwrap();
        assert_eq!(after.chosen, 1, "the full place is avoided");
        assert!(after.scored[0].predicted_ms > before);
        let later = Call {
            now_ms: 5000.0,
            ..c
        };
        assert_eq!(
            p.plan(&later, &places, 0.5).unwrap().scored[0].predicted_ms,
            before
        );
        // A timeout after 900 ms is an observation of at least that long.
        let t = Outcome::TimedOut { after_ms: 900.0 };
        for _ in 0..20 {
            p.learn(&later, "edge-2", &plan.scored[1], &t);
        }
        p.refit_due();
        let e2 = p.plan(&later, &places, 0.5).unwrap();
        assert!(e2.scored[1].predicted_ms > 100.0, "{:?}", e2.scored[1]);
        assert_eq!(e2.chosen, 0);
    }

    #[test]
    fn a_function_never_seen_is_predicted_from_its_size_and_the_places_speed() {
        let mut p = Planner::new(64);
        let w = no_explore();
        let mk = |id, speed: f64| PlaceInfo {
            service_ms: None,
            speed: Some(speed),
            ..place(id, Tier::Edge, 2.0, 0.0)
        };
        let (slow, fast) = (mk("slow", 0.25), mk("fast", 2.0));
        // "g" ran on the fast place: 20 ms there, so 40 ms of work at speed 1.
        let c = Call {
            function: "g",
            ..call(1.0, w)
        };
        let plan = p.plan(&c, &[fast], 0.5).unwrap();
        p.learn(
            &c,
            "fast",
            &plan.scored[0],
            &answered(24.0, 20.0, 1.0, false),
        );
        // "h" never ran anywhere: a typical function's size at each place's speed (with
        // one size seen, still the most a function may run: see `typical_size`).
        let h = Call {
            function: "h",
            ..call(1.0, w)
        };
        let plan = p.plan(&h, &[slow, fast], 0.5).unwrap();
        assert_eq!(plan.chosen, 1);
        let (s, f) = (
            plan.scored[0].features.service_ms,
            plan.scored[1].features.service_ms,
        );
        let t = p.typical_size();
        assert!(
            (s - t / 0.25).abs() < 1.0 && (f - t / 2.0).abs() < 1.0,
            "{s} {f} {t}"
        );
        // The payload the model sees is the request plus the response expected for "g".
        let plan = p.plan(&c, &[fast], 0.5).unwrap();
        assert!((plan.scored[0].features.payload_kb - 2.0).abs() < 1e-9);
    }

    /// `c` planned at `at` alone, and answered there in `took_ms` (`service_ms` of it the
    /// function's own).
    fn ran(p: &mut Planner, c: &Call<'_>, at: PlaceInfo<'_>, took_ms: f64, service_ms: f64) {
        let plan = p.plan(c, &[at], 0.5).unwrap();
        let ok = Outcome::Answered {
            took_ms,
            service_ms: Some(service_ms),
            response_kb: None,
            cold: false,
        };
        p.learn(c, at.id, &plan.scored[0], &ok);
    }

    /// An edge of speed 1 that reports no service time.
    fn unreported(id: &str) -> PlaceInfo<'_> {
        PlaceInfo {
            service_ms: None,
            speed: Some(1.0),
            ..place(id, Tier::Edge, 5.0, 0.0)
        }
    }

    #[test]
    fn a_reported_service_time_counts_only_as_far_as_it_strays_beyond_its_noise() {
        // "f" ran 40 times at a place of speed 1, taking 1000 ms give or take a fifth.
        let mut p = Planner::new(64);
        let c = call(1.0, no_explore());
        let at = unreported("a");
        for i in 0..40 {
            let s = if i % 2 == 0 { 800.0 } else { 1200.0 };
            ran(&mut p, &c, at, s + 5.0, s);
        }
        let size = p.size["f"];
        // At that place: the size at its speed and slowness (one function and one place
        // cannot tell them apart).
        let there = size.ms * p.places[p.place_number.get(place_key("a")).unwrap() as usize].slow();
        assert!((there - 1000.0).abs() < 30.0, "{size:?} {there}");
        let spread = size.spread().unwrap();
        // (A little over a fifth: the first runs were measured against a size still
        // settling.)
        assert!((spread.sqrt() - 0.2).abs() < 0.03, "{size:?}");
        // Two places as fast as it: one reports the average of its last runs 6 % above
        // the size (within their noise: two standard deviations of that average are
        // 2 × 0.2/√15, about 10 %), the other twice the size (it runs "f" slowly now).
        let lucky = PlaceInfo {
            id: "b",
            key: place_key("b"),
            service_ms: Some(size.ms * 1.06),
            ..at
        };
        let slow = PlaceInfo {
            id: "c",
            key: place_key("c"),
            service_ms: Some(size.ms * 2.0),
            ..at
        };
        // Each report also weighs in the function's size, as the runs whose mean varies as
        // much (15) against the runs this router saw: the place's own estimate is that size.
        let runs = size.runs as f64;
        let pooled = |report: f64| (runs * size.ms + 15.0 * report) / (runs + 15.0);
        let plan = p.plan(&c, &[lucky], 0.5).unwrap();
        let own = pooled(size.ms * 1.06);
        assert!((own - size.ms * 1.06).abs() < 2.0 * own * (spread / 15.0).sqrt());
        assert!((plan.scored[0].features.service_ms - own).abs() < 1e-6);
        let plan = p.plan(&c, &[slow], 0.5).unwrap();
        let own = pooled(size.ms * 2.0);
        let noise = 2.0 * own * (spread / 15.0).sqrt();
        let s = plan.scored[0].features.service_ms;
        assert!((s - (2.0 * size.ms - noise)).abs() < 1e-6, "{s} {noise}");
        // A function whose spread is not known yet: each place's word.
        let g = Call { function: "g", ..c };
        for _ in 0..3 {
            ran(&mut p, &g, at, 105.0, 100.0);
        }
        let plan = p.plan(&g, &[lucky, slow], 0.5).unwrap();
        assert_eq!(plan.scored[0].features.service_ms, size.ms * 1.06);
    }

    #[test]
    fn a_function_seen_run_twice_is_sized_mostly_by_what_the_members_report() {
        // This router saw "f" run twice, 800 ms each at a place of speed 1; a cloud twice
        // as fast reports 600 ms of it (1,200 ms at speed 1: the average of its runs for
        // every router, worth 15 runs).
        let mut p = Planner::new(64);
        let c = call(1.0, no_explore());
        let at = unreported("a");
        for _ in 0..2 {
            ran(&mut p, &c, at, 805.0, 800.0);
        }
        let edge = unreported("e");
        let cloud = PlaceInfo {
            service_ms: Some(600.0),
            speed: Some(2.0),
            ..place("k", Tier::Cloud, 40.0, 0.0)
        };
        // Alone, the edge it has not run at is predicted from the two runs.
        let plan = p.plan(&c, &[edge], 0.5).unwrap();
        assert_eq!(plan.scored[0].features.service_ms, 800.0);
        // Beside the cloud's report, from both, the report weighing 15 to the runs'.
        let plan = p.plan(&c, &[edge, cloud], 0.5).unwrap();
        let runs = p.size["f"].runs as f64;
        let pooled = (runs * 800.0 + 15.0 * 1200.0) / (runs + 15.0);
        let s = plan.scored[0].features.service_ms;
        assert!(
            (s - pooled).abs() < 1e-6 && s > 1100.0,
            "{s} against {pooled}"
        );
    }

    #[test]
    fn a_run_says_how_slow_its_place_is_against_the_size_the_call_was_planned_with() {
        // This router saw "f" run twice at "a", 800 ms each; the cloud reports 1,200 ms of
        // it at speed 1. A call planned with that report in view runs 1,200 ms at "e".
        let mut p = Planner::new(64);
        let c = call(1.0, no_explore());
        for _ in 0..2 {
            ran(&mut p, &c, unreported("a"), 805.0, 800.0);
        }
        let cloud = PlaceInfo {
            service_ms: Some(1200.0),
            speed: Some(1.0),
            ..place("k", Tier::Cloud, 40.0, 0.0)
        };
        let plan = p.plan(&c, &[unreported("e"), cloud], 0.5).unwrap();
        let sized = plan.scored[0].size_ms.unwrap();
        assert!(sized > 1100.0, "{sized}");
        let ok = Outcome::Answered {
            took_ms: 1205.0,
            service_ms: Some(1200.0),
            response_kb: None,
            cold: false,
        };
        p.learn(&c, "e", &plan.scored[0], &ok);
        // "e" ran it about as the members say: a little slow against that size, not half
        // as slow again as the router's own two runs would say (1,200 over 800 ms).
        let e = &p.places[p.place_number.get(place_key("e")).unwrap() as usize];
        assert!((e.slowness - 1200.0 / sized).abs() < 1e-9, "{}", e.slowness);
        assert!(e.slowness < 1.1, "{}", e.slowness);
    }

    #[test]
    fn a_place_is_taken_as_slower_than_its_speed_only_as_far_as_that_stands_out_of_noise() {
        // "f" runs at two places that advertise the same speed, its runs varying by up
        // to a fifth; "b" really runs it 30 % slower.
        let mut p = Planner::new(64);
        let c = call(1.0, no_explore());
        let (a, b) = (unreported("a"), unreported("b"));
        let noise = [0.8, 1.2, 0.9, 1.1, 1.0, 1.15, 0.85];
        for i in 0..400 {
            let n = noise[i % noise.len()];
            ran(&mut p, &c, a, 1000.0 * n + 5.0, 1000.0 * n);
            ran(&mut p, &c, b, 1300.0 * n + 5.0, 1300.0 * n);
        }
        let state = |id| &p.places[p.place_number.get(place_key(id)).unwrap() as usize];
        let (sa, sb) = (state("a"), state("b"));
        // "a" is taken as its speed says, give or take a percent, nearer than its raw
        // slowness, which wandered with the size (a run says only their product).
        let near = |s: &PlaceState| {
            let (used, raw) = ((s.slow() - 1.0).abs(), (s.slowness - 1.0).abs());
            let sd = s.slowness_var.sqrt();
            assert!(
                used <= 0.015 && used <= raw,
                "{} from {} ± {sd}",
                s.slow(),
                s.slowness
            );
        };
        near(sa);
        assert!((sb.slow() - 1.3).abs() < 0.05, "{}", sb.slow());
        // Each is predicted what it takes.
        let plan = p.plan(&c, &[a, b], 0.5).unwrap();
        let (fa, fb) = (
            plan.scored[0].features.service_ms,
            plan.scored[1].features.service_ms,
        );
        assert!(
            (fa - 1000.0).abs() < 30.0 && (fb - 1300.0).abs() < 40.0,
            "{fa} {fb}"
        );
        assert_eq!(plan.chosen, 0);
        // Noise alone, one place and one function: the same.
        let mut q = Planner::new(64);
        for i in 0..400 {
            let n = noise[(i * 3) % noise.len()];
            ran(&mut q, &c, a, 1000.0 * n + 5.0, 1000.0 * n);
        }
        near(&q.places[q.place_number.get(place_key("a")).unwrap() as usize]);
    }

    #[test]
    fn a_noisy_functions_first_calls_at_a_place_count_for_less() {
        // The estimate counts for as many calls as one run's noise outweighs a plausible
        // offset (a tenth): 4 for runs that vary by a fifth, 25 by a half.
        let size = |spread: f64, runs| Size {
            ms: 100.0,
            spread,
            runs,
            cold: None,
        };
        let calls = |s: Size| Size::prior_calls(Some(&s));
        assert!((calls(size(0.04, 20)) - 4.0).abs() < 1e-9);
        assert!((calls(size(0.25, 20)) - 25.0).abs() < 1e-9);
        // Never fewer than the default; the default until the spread is known.
        let default = Analytic::default().prior_calls;
        assert_eq!(calls(size(0.0001, 20)), default);
        assert_eq!(calls(size(0.25, SPREAD_AFTER)), default);
        assert_eq!(Size::prior_calls(None), default);
    }

    #[test]
    fn a_place_not_known_yet_carries_the_risk_the_function_showed_elsewhere() {
        // The function's calls at the edge overrun their predictions by about a half:
        // a cloud it never ran at is not taken as free of that risk, and its share is
        // in proportion to its prediction there.
        let mut p = Planner::new(64);
        let c = call(1.0, no_explore());
        let edge = place("edge", Tier::Edge, 5.0, 0.0);
        for i in 0..RISK_AFTER {
            let predicted = p.plan(&c, &[edge], 0.5).unwrap().scored[0].predicted_ms;
            let took = if i % 2 == 0 {
                2.0 * predicted
            } else {
                predicted
            };
            ran(&mut p, &c, edge, took, 4.0);
        }
        let cloud = place("cloud", Tier::Cloud, 40.0, 0.0);
        let plan = p.plan(&c, &[edge, cloud], 0.5).unwrap();
        let s = &plan.scored[1];
        assert_eq!(s.observations, 0);
        let overrun = p.models["f"].overrun.unwrap();
        assert!(overrun > 0.1 && overrun < 1.0, "{overrun}");
        assert!(
            (s.extra_ms - overrun * s.predicted_ms).abs() < 1e-9,
            "{}",
            s.extra_ms
        );
        // A function whose calls never overran gives an unknown place no risk.
        let mut q = Planner::new(64);
        for _ in 0..RISK_AFTER {
            ran(&mut q, &c, edge, 1.0, 0.5);
        }
        let plan = q.plan(&c, &[edge, cloud], 0.5).unwrap();
        assert_eq!(plan.scored[1].extra_ms, 0.0);
    }

    #[test]
    fn a_call_at_a_busy_place_waits_behind_the_work_there_not_behind_copies_of_itself() {
        let mut p = Planner::new(64);
        let w = no_explore();
        let (long, short) = (
            Call {
                function: "long",
                ..call(1.0, w)
            },
            Call {
                function: "short",
                ..call(1.0, w)
            },
        );
        // One place has run a 400 ms function, the other a 2 ms one.
        let (near, far) = (
            place("near", Tier::Edge, 2.0, 0.0),
            place("far", Tier::Edge, 10.0, 0.0),
        );
        ran(&mut p, &long, near, 402.0, 400.0);
        ran(&mut p, &short, far, 12.0, 2.0);
        // Both now report a call per core, and a 4 ms function new to both: at the near
        // place it waits about 400 ms, at the far one about 2 ms; the far place wins.
        let q = Call {
            function: "q",
            ..call(1.0, w)
        };
        let busy = |at: PlaceInfo<'static>| PlaceInfo {
            load_per_core: 1.0,
            ..at
        };
        let plan = p.plan(&q, &[busy(near), busy(far)], 0.5).unwrap();
        let (n, f) = (plan.scored[0].predicted_ms, plan.scored[1].predicted_ms);
        assert!((400.0..420.0).contains(&n), "near: {n}");
        assert!((10.0..30.0).contains(&f), "far: {f}");
        assert_eq!(plan.chosen, 1);
    }

    #[test]
    fn a_call_waits_behind_the_routers_own_calls_there_for_what_it_expected_of_them() {
        let mut p = Planner::new(64);
        let (long, short) = (call_of("long"), call_of("short"));
        // The edge runs 2 ms calls; the 400 ms function ran elsewhere.
        let edge = PlaceInfo {
            service_ms: None,
            ..place("edge", Tier::Edge, 2.0, 0.0)
        };
        ran(&mut p, &short, edge, 4.0, 2.0);
        ran(
            &mut p,
            &long,
            place("other", Tier::Edge, 2.0, 0.0),
            402.0,
            400.0,
        );
        // A call per core there (four): other callers' 2 ms calls, or four of the router's
        // own 400 ms calls, a long function's burst.
        let busy = |own| PlaceInfo {
            load_per_core: 1.0,
            own,
            ..edge
        };
        let others = p.plan(&long, &[busy(Own::default())], 0.5).unwrap();
        let own = Own {
            calls: 4,
            work_ms: 1600.0,
        };
        let copies = p.plan(&long, &[busy(own)], 0.5).unwrap();
        let (o, c) = (others.scored[0], copies.scored[0]);
        // Behind its own four it waits a core's share of their 1600 ms, less the 8 ms
        // the place's work said.
        assert!((c.herd_ms - 398.0).abs() < 1e-9, "{}", c.herd_ms);
        assert!((c.predicted_ms - o.predicted_ms - 398.0).abs() < 1e-9);
        // Its own burst of short calls ahead says nothing more than the place's work.
        let shorts = Own {
            calls: 4,
            work_ms: 8.0,
        };
        let plan = p.plan(&long, &[busy(shorts)], 0.5).unwrap();
        assert_eq!(plan.scored[0].predicted_ms, o.predicted_ms);
        // A call behind its own burst that took what was predicted teaches the place
        // what one without them that took as predicted would: the herd is not the
        // place's (its model, its wait and its cold start learn the call without it).
        let took = |s: &Scored| Outcome::Answered {
            took_ms: s.predicted_ms,
            service_ms: Some(400.0),
            response_kb: None,
            cold: false,
        };
        let mut q = p.clone();
        p.learn(&long, "edge", &c, &took(&c));
        q.learn(&long, "edge", &o, &took(&o));
        let next = |p: &Planner| p.plan(&long, &[busy(Own::default())], 0.5).unwrap().scored[0];
        let (herd, none) = (next(&p), next(&q));
        assert!(
            (herd.predicted_ms - none.predicted_ms).abs() < 1e-9,
            "{} against {}",
            herd.predicted_ms,
            none.predicted_ms
        );
    }

    #[test]
    fn a_function_new_here_is_sized_by_what_the_places_report_of_it() {
        let mut p = Planner::new(64);
        let w = no_explore();
        // Some function ran here (40 ms of work at speed 1).
        let g = Call {
            function: "g",
            ..call(1.0, w)
        };
        let one = PlaceInfo {
            service_ms: None,
            speed: Some(2.0),
            ..place("fast", Tier::Edge, 2.0, 0.0)
        };
        ran(&mut p, &g, one, 24.0, 20.0);
        // "h" never ran for this planner, but the cloud reports it takes 600 ms there at
        // speed 1.5 (other routers' calls ran it): 900 ms of work, not 40.
        let h = Call {
            function: "h",
            ..call(1.0, w)
        };
        let cloud = PlaceInfo {
            service_ms: Some(600.0),
            speed: Some(1.5),
            ..place("cloud", Tier::Cloud, 40.0, 0.0)
        };
        let edge = PlaceInfo {
            service_ms: None,
            speed: Some(1.0),
            ..place("edge", Tier::Edge, 5.0, 0.0)
        };
        let plan = p.plan(&h, &[edge, cloud], 0.5).unwrap();
        let e = plan.scored[0].features.service_ms;
        assert!((e - 900.0).abs() < 1.0, "{e}");
        assert_eq!(
            plan.chosen, 1,
            "the cloud runs 900 ms of work in 600: {plan:?}"
        );
        assert!(!plan.guessed);
        // Without the report, it is sized as a typical function: a guess.
        let blind = PlaceInfo {
            service_ms: None,
            ..cloud
        };
        let plan = p.plan(&h, &[edge, blind], 0.5).unwrap();
        assert_eq!(plan.scored[0].features.service_ms, p.typical_size());
        assert!(plan.guessed);
        // A function this planner saw run is sized by that, with or without reports.
        assert!(!p.plan(&g, &[edge, blind], 0.5).unwrap().guessed);
    }

    #[test]
    fn a_cold_device_is_loaded_when_its_callers_call_the_function_often() {
        let w = no_explore();
        // The device runs "f" in 4 ms warm, the edge in 30 ms; loading it on the device
        // costs 100 ms once.
        let device = |warm| PlaceInfo {
            warm,
            service_ms: Some(4.0),
            ..place("device", Tier::Device, 0.0, 0.0)
        };
        let edge = PlaceInfo {
            service_ms: Some(5.0),
            ..place("edge", Tier::Edge, 25.0, 0.0)
        };
        // A planner that has seen the function called every `every_ms` at the edge, whose
        // device place stands for `callers` devices, plans the next call with the device
        // cold.
        let decide = |callers: f64, every_ms: f64| {
            let mut p = Planner::new(64);
            p.reuse.device_callers = callers;
            for i in 0..20 {
                let c = Call {
                    now_ms: f64::from(i) * every_ms,
                    ..call(0.0, w)
                };
                ran(&mut p, &c, edge, 30.0, 5.0);
            }
            p.analytic.cold_penalty_ms = 100.0;
            let c = Call {
                now_ms: 20.0 * every_ms,
                ..call(0.0, w)
            };
            let plan = p.plan(&c, &[edge, device(false)], 0.5).unwrap();
            (p, plan, c)
        };
        // Called every second by one device with a minute's keepalive: about sixty calls
        // would run warm, so the device is loaded now.
        let (often, plan, c) = decide(1.0, 1000.0);
        // It is loaded off the call's path, which goes to the edge meanwhile.
        assert_eq!((plan.chosen, plan.load_device), (0, true), "{plan:?}");
        let d = &plan.scored[1];
        assert!(d.predicted_ms > 100.0, "the prediction stays honest: {d:?}");
        assert!(d.extra_ms < -90.0 && d.extra_ms > -100.0, "{d:?}");
        // Every two minutes: past the keepalive, the next call would find it unloaded.
        let (_, plan, _) = decide(1.0, 120_000.0);
        assert_eq!((plan.chosen, plan.load_device), (0, false), "{plan:?}");
        // Every second, but shared by a thousand devices: each calls it every 1000 s.
        let (_, plan, _) = decide(1000.0, 1000.0);
        assert_eq!((plan.chosen, plan.load_device), (0, false), "{plan:?}");
        // A warm device needs no credit.
        let plan = often.plan(&c, &[edge, device(true)], 0.5).unwrap();
        assert_eq!((plan.chosen, plan.scored[1].extra_ms), (1, 0.0));
        // A cold device faster than every other place, cold, runs the call itself.
        let far = PlaceInfo {
            rtt_ms: 400.0,
            ..edge
        };
        let plan = often.plan(&c, &[far, device(false)], 0.5).unwrap();
        assert_eq!((plan.chosen, plan.load_device), (1, false), "{plan:?}");
    }

    #[test]
    fn a_place_not_seen_for_a_while_is_explored_again_however_slow_it_looked() {
        let mut p = Planner::new(64);
        let w = Weights {
            explore: 0.1,
            ..Weights::default()
        };
        let places = [
            place("fast", Tier::Edge, 2.0, 0.0),
            place("was-slow", Tier::Edge, 2.0, 0.0),
        ];
        let c = call(1.0, w);
        let plan = p.plan(&c, &places, 0.5).unwrap();
        let f = plan.scored[1].features;
        for _ in 0..20 {
            p.observe("f", "was-slow", &f, 6.0, 400.0, Some(4.0));
        }
        p.refit_due();
        // Rolls spread evenly over the exploring share (0.1): how many explore "was-slow".
        let explored = |p: &Planner| {
            (0..1000)
                .filter(|k| p.plan(&c, &places, *k as f64 / 10_000.0).unwrap().chosen == 1)
                .count()
        };
        assert_eq!(
            explored(&p),
            0,
            "far slower, and known lately: not explored"
        );
        for _ in 0..=STALE_AFTER {
            p.observe("f", "fast", &f, 6.0, 6.0, Some(4.0));
        }
        let plan = p.plan(&c, &places, 0.05).unwrap();
        assert!(plan.scored[1].stale);
        // Explored again, at a rate that makes a visit cost what a near place's would:
        // 2 ms / (its prediction - best) of the exploring calls.
        let (best, slow) = (plan.scored[0].predicted_ms, plan.scored[1].predicted_ms);
        let rate = 2.0 / (slow - best);
        let n = explored(&p);
        assert!(
            n > 0 && (n as f64 - 1000.0 * rate).abs() <= 2.0,
            "stale: explored {n} of 1000 exploring calls, expected {:.0}",
            1000.0 * rate
        );
        assert_eq!(
            p.plan(&c, &places, 0.5).unwrap().chosen,
            0,
            "not chosen otherwise"
        );
    }

    #[test]
    fn of_two_places_predicted_alike_the_one_whose_calls_overrun_less_is_chosen() {
        let mut p = Planner::new(64);
        let places = [
            place("jumpy", Tier::Edge, 2.0, 0.0),
            place("steady", Tier::Edge, 2.0, 0.0),
        ];
        let c = call(1.0, no_explore());
        let f = p.plan(&c, &places, 0.5).unwrap().scored[0].features;
        // "jumpy" takes 9.5 ms on average (4 or 15 in turn), "steady" 10 ms always. (No
        // service times: what varies is the whole call, not a wait for a core.)
        for i in 0..40 {
            let y = if i % 2 == 0 { 4.0 } else { 15.0 };
            p.observe("f", "jumpy", &f, 10.0, y, None);
            p.observe("f", "steady", &f, 10.0, 10.0, None);
            p.refit_due();
        }
        let plan = p.plan(&c, &places, 0.5).unwrap();
        let (j, s) = (plan.scored[0], plan.scored[1]);
        assert!(
            j.predicted_ms < s.predicted_ms && s.predicted_ms - j.predicted_ms < 1.0,
            "jumpy a little faster on average: {j:?} {s:?}"
        );
        // Each carries some of the function's risk (which counts for 16 calls against
        // their 40), "steady" far less.
        assert!(
            j.extra_ms > 1.0 && s.extra_ms < j.extra_ms / 3.0,
            "{j:?} {s:?}"
        );
        assert_eq!(plan.chosen, 1, "steady: its calls do not overrun");
    }

    #[test]
    fn a_place_that_lost_calls_with_it_is_priced_for_the_chance_of_losing_the_next() {
        let mut p = Planner::new(64);
        let places = [
            place("fails", Tier::Edge, 2.0, 0.0),
            place("holds", Tier::Edge, 2.0, 0.0),
            place("new", Tier::Edge, 2.0, 0.0),
            place("phone", Tier::Device, 0.0, 0.0),
        ];
        let c = call(1.0, no_explore());
        // Nothing lost anywhere yet: no place carries a price for it.
        let plan = p.plan(&c, &places, 0.5).unwrap();
        assert!(plan.scored.iter().all(|s| s.extra_ms == 0.0), "{plan:?}");
        // Both ran 400 calls of 100 ms alike (and "new", which ran none, is predicted
        // shorter); the connection to "fails" was lost under 4 more, each noticed after a
        // second.
        let answered = Outcome::Answered {
            took_ms: 100.0,
            service_ms: Some(4.0),
            response_kb: None,
            cold: false,
        };
        for _ in 0..400 {
            for (i, name) in ["fails", "holds"].into_iter().enumerate() {
                p.learn(&c, name, &plan.scored[i], &answered);
            }
        }
        let lost = Outcome::Lost {
            sent: true,
            after_ms: 1000.0,
        };
        let before = p.clone();
        for _ in 0..4 {
            p.learn(&c, "fails", &plan.scored[0], &lost);
        }
        let (plan, was) = (
            p.plan(&c, &places, 0.5).unwrap(),
            before.plan(&c, &places, 0.5).unwrap(),
        );
        // The price of a loss: what the losses added to each place's risk.
        let price = |i: usize| plan.scored[i].extra_ms - was.scored[i].extra_ms;
        let (f, h, n, d) = (price(0), price(1), price(2), price(3));
        // Members lost 4 calls in 84 s of calls out (4 per 84,000 ms): "fails" lost its 4
        // in 44 s, taken as 4 in 104 s with the prior minute at that rate; "holds" as 2.9
        // in 100 s; one never used at the members' rate. A loss costs its second and the
        // call again. The device, which the router is on, loses none.
        let cost = |i: usize, rate: f64| {
            let predicted = plan.scored[i].predicted_ms;
            rate * predicted * (1000.0 + predicted)
        };
        let all = 4.0 / 84_000.0;
        let close = |got: f64, want: f64| (got - want).abs() < 0.02 * want;
        assert!(close(f, cost(0, (4.0 + all * 60_000.0) / 104_000.0)), "{f}");
        assert!(close(h, cost(1, all * 60_000.0 / 100_000.0)), "{h}");
        assert!(close(n, cost(2, all)), "{n}");
        assert!(f > 2.0 * h, "{f} {h}");
        assert_eq!(d, 0.0);
        let two = p.plan(&c, &places[..2], 0.5).unwrap();
        assert!(
            (two.scored[0].predicted_ms - two.scored[1].predicted_ms).abs() < 1.0,
            "as fast: {two:?}"
        );
        assert_eq!(two.chosen, 1, "holds: as fast, and it loses fewer calls");
    }

    #[test]
    fn of_two_places_whose_calls_wait_alike_on_average_the_one_that_queues_in_bursts_scores_worse()
    {
        let mut p = Planner::new(64);
        let places = [
            place("bursty", Tier::Edge, 2.0, 0.75),
            place("steady", Tier::Edge, 2.0, 0.75),
        ];
        let f = features_at(&p, &places);
        // At the load the router knew, calls to "bursty" waited 0 or 12 ms in turn (callers
        // it did not hear of queued there), to "steady" 6 ms each time.
        for i in 0..200 {
            let wait = if i % 2 == 0 { 0.0 } else { 12.0 };
            p.observe("f", "bursty", &f, 12.0, 2.0 + 4.0 + wait, Some(4.0));
            p.observe("f", "steady", &f, 12.0, 2.0 + 4.0 + 6.0, Some(4.0));
        }
        // A function neither has run: no model, so its risk is the places' alone.
        let g = call_of("g");
        let plan = p.plan(&g, &places, 0.5).unwrap();
        let (b, s) = (plan.scored[0], plan.scored[1]);
        assert!(
            (b.predicted_ms - s.predicted_ms).abs() < 1.0,
            "alike on average: {b:?} {s:?}"
        );
        assert!(b.extra_ms > 2.0 && s.extra_ms < 0.5, "{b:?} {s:?}");
        assert_eq!(plan.chosen, 1, "steady: its calls do not queue in bursts");
        // At a load it never saw calls queue at, "bursty" carries no such risk.
        let idle = [place("bursty", Tier::Edge, 2.0, 0.0)];
        let b0 = p.plan(&g, &idle, 0.5).unwrap().scored[0];
        assert!(b0.extra_ms < b.extra_ms / 2.0, "{b0:?} {b:?}");
    }

    #[test]
    fn a_place_whose_calls_start_at_once_is_predicted_without_a_queue_for_a_new_function() {
        let mut p = Planner::new(64);
        let places = [PlaceInfo {
            service_ms: Some(20.0),
            ..place("edge", Tier::Edge, 5.0, 0.5)
        }];
        let g = call_of("g");
        // The prior: half its cores busy, so half a length of its work ahead.
        let before = p.plan(&g, &places, 0.5).unwrap().scored[0].predicted_ms;
        // Function "f" ran there often at that load, and started at once each time.
        let f = features_at(&p, &places);
        for _ in 0..200 {
            p.observe("f", "edge", &f, 35.0, 5.0 + 20.0, Some(20.0));
        }
        let after = p.plan(&g, &places, 0.5).unwrap().scored[0];
        assert_eq!(after.source, Source::Analytic, "g has no model there");
        assert!(
            before > 34.0 && (after.predicted_ms - 25.0).abs() < 1.0,
            "g: {before} ms before, {} ms after",
            after.predicted_ms
        );
    }

    #[test]
    fn a_large_function_first_run_cold_is_not_read_as_a_slow_cold_start() {
        let mut p = Planner::new(64);
        let places = [PlaceInfo {
            service_ms: None,
            warm: false,
            ..place("cloud", Tier::Cloud, 20.0, 0.0)
        }];
        let c = call(1.0, no_explore());
        let plan = p.plan(&c, &places, 0.5).unwrap();
        // Guessed at about a millisecond of work; it ran 2 s, plus a 50 ms cold start.
        let ok = Outcome::Answered {
            took_ms: 20.0 + 2000.0 + 50.0,
            service_ms: Some(2000.0),
            response_kb: None,
            cold: true,
        };
        p.learn(&c, "cloud", &plan.scored[0], &ok);
        let cold = p.places[p.place_number.get(place_key("cloud")).unwrap() as usize]
            .cold_ms
            .unwrap();
        assert!((cold - 50.0).abs() < 1.0, "cold start learnt as {cold} ms");
    }

    #[test]
    fn a_function_never_seen_is_sized_as_the_log_normal_mean_of_first_sizes() {
        let mut p = Planner::new(64);
        let f = Features::default();
        let top = unknown_size();
        // Nothing seen: as long as a function may run by default.
        assert_eq!(p.typical_size(), top);
        assert_eq!(top, 5000.0);
        // One short size seen: the unknown still weighs as one sample, so a function never
        // seen is not taken for as short (the log-normal of 8 and 5000, capped at 5000).
        p.observe("g", "a", &f, 1.0, 8.0, Some(8.0));
        assert_eq!(p.typical_size(), top, "one size does not speak for all");
        // Heavy-tailed first sizes: the log-normal's mean over them and the unknown's one
        // sample, above the median (2) and above the plain mean (200.4) of the five sizes
        // that hold one of the tail, and below the cap.
        let sizes = [
            2.0f64, 2.0, 2.0, 994.0, 2.0, 2.0, 3.0, 2.0, 4.0, 2.0, 2.0, 2.0,
        ];
        let mut p = Planner::new(64);
        for (i, s) in sizes.iter().enumerate() {
            p.observe(&format!("g{i}"), "a", &f, 1.0, *s, Some(*s));
        }
        let mut logs: Vec<f64> = sizes.iter().map(|s| s.ln()).collect();
        logs.push(top.ln());
        let n = logs.len() as f64;
        let m = logs.iter().sum::<f64>() / n;
        let v = logs.iter().map(|l| (l - m).powi(2)).sum::<f64>() / (n - 1.0);
        let want = (m + v / 2.0).exp();
        let got = p.typical_size();
        assert!((got - want).abs() < 1e-6 * want, "{got} against {want}");
        assert!(got > 200.4 && got < top, "{got}");
    }

    #[test]
    fn forgetting_drops_models_and_keeps_the_rest_where_they_were() {
        let mut p = Planner::new(16);
        let f = Features::default();
        // a: one call, b: two, c: three; then a leaves and d arrives.
        for (id, n) in [("a", 1), ("b", 2), ("c", 3)] {
            for _ in 0..n {
                p.observe("f", id, &f, 1.0, 1.0, None);
                p.observe("g", id, &f, 1.0, 1.0, None);
            }
        }
        p.retain_places(&|id| id != "a");
        p.observe("f", "d", &f, 1.0, 1.0, None);
        let places = ["a", "b", "c", "d"].map(|id| place(id, Tier::Edge, 1.0, 0.0));
        let seen = |p: &Planner, function| {
            let c = Call {
                function,
                ..call(0.0, no_explore())
            };
            p.plan(&c, &places, 0.5)
                .unwrap()
                .scored
                .iter()
                .map(|s| s.observations)
                .collect::<Vec<_>>()
        };
        assert_eq!(seen(&p, "f"), [0, 2, 3, 1]);
        assert_eq!(seen(&p, "g"), [0, 2, 3, 0]);
        assert_eq!(p.places.len(), 3, "a's own state is gone too");
        p.forget_function("f");
        p.forget_function("g");
        assert!(p.models.is_empty());
    }

    #[test]
    fn a_cold_start_is_learnt_from_calls_that_ran_cold_and_a_place_pays_it_as_often_as_they_did() {
        // The cloud was reported cold for every call; half of them ran cold there (60 ms
        // more), half ran warm (loaded by calls the router did not see).
        let mut p = Planner::new(64);
        for i in 0..40 {
            let f = format!("f{i}");
            let c = call_of(&f);
            let plan = p.plan(&c, &[cloud_at("cloud", false)], 0.5).unwrap();
            let ran_cold = i % 2 == 0;
            let took = plan.scored[0].features.rtt_ms + 4.0 + if ran_cold { 60.0 } else { 0.0 };
            let answer = answered(took, 4.0, 0.0, ran_cold);
            p.learn(&c, "cloud", &plan.scored[0], &answer);
        }
        // What a cold start costs at each, for a function none has run: the cold place's
        // prediction less the warm one's.
        let g = call_of("g");
        let cost = |id| {
            let plan = p
                .plan(&g, &[cloud_at(id, false), cloud_at(id, true)], 0.5)
                .unwrap();
            plan.scored[0].predicted_ms - plan.scored[1].predicted_ms
        };
        // A place with no cold starts of its own (the device, a new member) pays a whole
        // one, as the calls that ran cold measured it, not the average over calls that
        // only looked cold.
        let new = cost("new");
        assert!(
            (50.0..70.0).contains(&new),
            "a new place's cold start: {new:.1} ms"
        );
        // The cloud pays it as often as its calls believed cold ran cold: about half.
        let cloud = cost("cloud");
        assert!((20.0..40.0).contains(&cloud), "the cloud's: {cloud:.1} ms");
    }

    /// A call of `f` at `id` that ran cold, its load taking `cold_ms`.
    fn cold_call(p: &mut Planner, f: &str, id: &str, cold_ms: f64) {
        let c = call_of(f);
        let plan = p.plan(&c, &[cloud_at(id, false)], 0.5).unwrap();
        let took = plan.scored[0].features.rtt_ms + 4.0 + cold_ms;
        p.learn(&c, id, &plan.scored[0], &answered(took, 4.0, 0.0, true));
    }

    #[test]
    fn a_function_that_loads_slowly_in_one_place_is_expected_to_load_slowly_in_another() {
        // Functions load in 60 ms at two places; one of them, `big`, loads in 240 ms
        // (its image), and `small` in 15 ms; each ran cold twice at `a`.
        let mut p = Planner::new(64);
        for i in 0..40 {
            cold_call(
                &mut p,
                &format!("f{i}"),
                if i % 2 == 0 { "a" } else { "b" },
                60.0,
            );
        }
        for _ in 0..2 {
            cold_call(&mut p, "big", "a", 240.0);
            cold_call(&mut p, "small", "a", 15.0);
        }
        // What a cold start at `b` is expected to cost each: its cold prediction less its
        // warm one.
        let cost = |f| {
            let c = call_of(f);
            let plan = p
                .plan(&c, &[cloud_at("b", false), cloud_at("b", true)], 0.5)
                .unwrap();
            plan.scored[0].predicted_ms - plan.scored[1].predicted_ms
        };
        let (big, small, other) = (cost("big"), cost("small"), cost("g"));
        // Two loads say much of a function's own, not all (shrunk towards the place's).
        assert!((120.0..240.0).contains(&big), "big at b: {big:.1} ms");
        assert!((15.0..40.0).contains(&small), "small at b: {small:.1} ms");
        // A function that never ran cold pays the place's own.
        assert!(
            (50.0..70.0).contains(&other),
            "a new one at b: {other:.1} ms"
        );
    }

    #[test]
    fn a_functions_cold_start_is_weighed_against_what_the_place_loads_in_now() {
        // A place's first loads are its quickest (a burst of new functions at once: the
        // quickest are done first). `f` loads in 75 ms, three times, while the place has
        // seen only loads of 25 ms; then it learns forty of 150 ms. Against the place's
        // figure of those moments `f` read about three times the place's, and was
        // expected to load in 296 ms (and as much longer everywhere: the factor carries).
        let mut p = Planner::new(64);
        for i in 0..3 {
            cold_call(&mut p, &format!("quick{i}"), "a", 25.0);
        }
        for _ in 0..3 {
            cold_call(&mut p, "f", "a", 75.0);
        }
        for i in 0..40 {
            cold_call(&mut p, &format!("g{i}"), "a", 150.0);
        }
        let c = call_of("f");
        let plan = p
            .plan(&c, &[cloud_at("a", false), cloud_at("a", true)], 0.5)
            .unwrap();
        let cost = plan.scored[0].predicted_ms - plan.scored[1].predicted_ms;
        // Half the place's own now, shrunk towards it by one load's worth: 0.625 of 150.
        assert!(
            (75.0..110.0).contains(&cost),
            "f's cold start at a: {cost:.1} ms"
        );
    }

    #[test]
    fn calls_predicted_with_a_guessed_size_do_not_make_the_place_that_ran_them_look_risky() {
        // The functions seen so far ran for 10 ms: a new one is guessed short.
        let mut p = Planner::new(64);
        let cloud = PlaceInfo {
            service_ms: None,
            ..place("cloud", Tier::Cloud, 5.0, 0.0)
        };
        for i in 0..20 {
            let f = format!("short{i}");
            let c = call_of(&f);
            let plan = p.plan(&c, &[cloud], 0.5).unwrap();
            p.learn(
                &c,
                "cloud",
                &plan.scored[0],
                &answered(15.0, 10.0, 0.0, false),
            );
        }
        // Ten calls of a 1 s function, planned before the first of them answered.
        let c = call_of("long");
        let plans: Vec<Plan> = (0..10)
            .map(|_| p.plan(&c, &[cloud], 0.5).unwrap())
            .collect();
        for q in &plans {
            assert!(q.guessed && q.scored[0].predicted_ms < 500.0, "{q:?}");
            p.learn(
                &c,
                "cloud",
                &q.scored[0],
                &answered(1005.0, 1000.0, 0.0, false),
            );
        }
        // Its next call is predicted from its size, with no risk: its runs did not vary
        // and none overran what they would have been predicted with it.
        let next = p.plan(&c, &[cloud], 0.5).unwrap();
        let s = next.scored[0];
        assert!(!next.guessed);
        assert!(
            (950.0..1100.0).contains(&s.predicted_ms),
            "predicted {:.0} ms",
            s.predicted_ms
        );
        assert!(s.extra_ms < 50.0, "the cloud's risk: {:.0} ms", s.extra_ms);
    }
}
