//! The placement state machine of one call, given the time: after the plan chose a place,
//! each attempt's outcome (an answer, a refusal, a function error, a timeout, a lost
//! connection) says what comes next: done, retry at the next place the policy ranks, or fail
//! with the reason. One budget rule for the live router and the simulator: a call is tried
//! at up to [`MAX_ATTEMPTS`] places within its timeout, and a call that may have run already
//! goes elsewhere only when it is idempotent. When every place of its plan has failed or
//! turned it away and it has attempts and time left, the driver lists places once more
//! ([`Next::Relist`]): a member that joined meanwhile (a replacement worker, a replica a
//! scale-out added, a place whose bench ran out) gets the call, which the first listing
//! could not have offered it.
//!
//! An idempotent call that runs far past its prediction is hedged, not abandoned
//! ([`Attempts::patience_ms`]): it goes on at its place while a copy is tried at the next,
//! and the first answer is the call's; with nowhere left to go, the call waits for the
//! places it was hedged from ([`Next::Wait`]).
//!
//! A timeout at a place that kept reporting with cores free says the call is long: at
//! least as long as it ran there ([`Attempts::benches`]). Its next places are ranked,
//! and waited for, by what that implies at each place's speed as well as by their
//! predictions: a long call whose first place guessed it short goes next where long calls
//! run fastest, not to the next place the same short guess favoured.
//!
//! Places that failed or filled up (a lost connection, a timeout) are benched for a while
//! ([`Bench`]), so the next calls do not try them until the membership says more; not a
//! place that kept reporting with cores free while a call there timed out: that call was
//! slow, and the policy learns so from the outcome rather than losing the place.

use rustc_hash::FxHashMap as HashMap;

use crate::placement::Plan;

/// Places one call may be tried at, at most.
pub const MAX_ATTEMPTS: usize = 5;
/// How long a place that failed is left out of placement, ms.
pub const BENCH_MS: f64 = 2000.0;

/// What one attempt at one place came to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    /// The place answered with the function's output.
    Answered {
        took_ms: f64,
        /// The function's own run time there, when the place said it.
        service_ms: Option<f64>,
        /// The response's size, KiB, when known.
        response_kb: Option<f64>,
        cold: bool,
    },
    /// The place turned the call away before running it (429 or 503: full, or stopping).
    Refused { status: u16 },
    /// The function ran there and failed: that is the call's answer.
    Failed { status: u16 },
    /// No answer within `after_ms`: the call went on elsewhere (hedged: it still runs
    /// there, and may answer first).
    TimedOut { after_ms: f64 },
    /// The connection to the place was lost; `sent` when the call had left this side.
    Lost { sent: bool, after_ms: f64 },
}

impl Outcome {
    /// The place itself failed (not the function, not its capacity).
    pub fn place_failed(&self) -> bool {
        matches!(self, Outcome::TimedOut { .. } | Outcome::Lost { .. })
    }

    /// Whether the place is benched for this outcome: a lost connection benches it; a
    /// timeout does unless the place kept reporting while the call was there
    /// (`heard_meanwhile`: a load report arrived from it) and had cores free when the call
    /// was sent (`load_per_core`, as the plan saw it, below 1). `heard_meanwhile` is asked
    /// only for a timeout. Such a timeout says the
    /// call was slow (a long run, a slow link), not that the place failed or filled up:
    /// benching it would send every function's calls elsewhere for [`BENCH_MS`] (a large
    /// cloud, for one long call), so the policy learns instead that the call took at least
    /// this long there and that the place is busy for a while.
    pub fn benches(&self, load_per_core: f64, heard_meanwhile: impl FnOnce() -> bool) -> bool {
        match self {
            Outcome::Lost { .. } => true,
            Outcome::TimedOut { .. } => !(load_per_core < 1.0 && heard_meanwhile()),
            _ => false,
        }
    }

    /// The function may have run (so only an idempotent call may run again).
    pub fn may_have_run(&self) -> bool {
        match self {
            Outcome::Refused { .. } => false,
            Outcome::Lost { sent, .. } => *sent,
            _ => true,
        }
    }
}

/// What the driver does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// The answer (or the function's own error) is the call's result.
    Done,
    /// Try the place at this index of the plan.
    Retry(usize),
    /// Every place of the plan was tried: list places again, leaving out those tried, plan
    /// among them and go on with [`Attempts::relisted`]; with none, the call has failed
    /// as [`GiveUp::Exhausted`]. Said once per call.
    Relist,
    /// Give up, for this reason.
    Fail(GiveUp),
    /// No place is left to go on to, but places the call was hedged from are still
    /// running it ([`Attempts::running`]): its answer is the first of theirs (and with
    /// none, it failed as [`Next::Fail`] would have said).
    Wait,
}

/// Why a call was given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUp {
    /// Its place failed after it may have run, and it is not idempotent.
    NotIdempotent,
    /// Every place tried failed or refused, and none is left (or [`MAX_ATTEMPTS`] reached).
    Exhausted,
    /// Its timeout passed.
    OutOfTime,
}

/// One call's attempts so far.
#[derive(Debug, Clone)]
pub struct Attempts {
    tried: Vec<usize>,
    /// Places that turned this call away (full), and when: once every place was tried,
    /// one full [`crate::placement::FULL_FOR_MS`] ago may have room again.
    turned_away: Vec<(usize, f64)>,
    started_ms: f64,
    budget_ms: f64,
    idempotent: bool,
    /// The least the call's run takes on the reference machine (speed 1), as its timeouts
    /// at places that kept reporting with cores free say (0 until one does).
    floor_size: f64,
    /// Attempts made under an earlier plan (before places were listed again).
    earlier: usize,
    /// Places were listed again for it ([`Next::Relist`]).
    relisted: bool,
    /// Attempts that ran past their patience and go on where they are while the call
    /// is tried elsewhere ([`Outcome::TimedOut`]); the driver knows which of them end
    /// without an answer.
    running: usize,
}

/// A router's allowance for hedging calls that run long: retry throttling in the manner
/// of gRPC's (gRFC A6: a bucket of tokens, each failure takes one and each success gives
/// back a fraction, and retries stop while no more than half are left). A call hedged at
/// a timeout goes on running where it was, and its copy elsewhere adds work: when many
/// of a router's calls time out, the places are overloaded, and each copy makes it worse.
/// So of ten tokens a timeout takes one and an answer gives back a tenth of one, and while
/// no more than half are left the router's calls wait their whole budget where they are
/// (a refused or lost call left nothing running, and still goes elsewhere). On
/// `configs/sim/large.toml`, 250 routers that start knowing nothing, without it the first
/// timeouts' copies filled the edges and kept them full for a third of the run: p99 16 s
/// and mean 1.46 s, against 2.5 s and 525 ms with it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudget {
    tokens: f64,
}

impl RetryBudget {
    /// Tokens when full.
    pub const MAX: f64 = 10.0;
    /// What an answer gives back.
    pub const PER_ANSWER: f64 = 0.1;

    pub fn full() -> Self {
        RetryBudget { tokens: Self::MAX }
    }

    /// The router heard `outcome` of one of its attempts.
    pub fn hear(&mut self, outcome: &Outcome) {
        match outcome {
            Outcome::TimedOut { .. } => self.tokens = (self.tokens - 1.0).max(0.0),
            Outcome::Answered { .. } => {
                self.tokens = (self.tokens + Self::PER_ANSWER).min(Self::MAX);
            }
            _ => {}
        }
    }

    /// Tokens left.
    pub fn tokens(&self) -> f64 {
        self.tokens
    }

    /// Whether a call running long at a place may be hedged ([`Attempts::patience_ms`]).
    pub fn allows_hedging(&self) -> bool {
        self.tokens > Self::MAX / 2.0
    }
}

impl Attempts {
    /// Starts at the plan's choice, at `now_ms`, with `budget_ms` (the function's timeout).
    pub fn new(plan: &Plan, now_ms: f64, budget_ms: f64, idempotent: bool) -> Self {
        Attempts {
            tried: vec![plan.chosen],
            turned_away: Vec::new(),
            started_ms: now_ms,
            budget_ms,
            idempotent,
            floor_size: 0.0,
            earlier: 0,
            relisted: false,
            running: 0,
        }
    }

    /// Goes on under `plan`, made from places listed again ([`Next::Relist`]):
    /// its first attempt is the plan's choice; the budget, the attempts made and what
    /// timeouts said of the call's length carry over.
    pub fn relisted(&self, plan: &Plan) -> Self {
        Attempts {
            tried: vec![plan.chosen],
            turned_away: Vec::new(),
            started_ms: self.started_ms,
            budget_ms: self.budget_ms,
            idempotent: self.idempotent,
            floor_size: self.floor_size,
            earlier: self.made(),
            relisted: true,
            running: self.running,
        }
    }

    /// Attempts made, under every plan.
    pub fn made(&self) -> usize {
        self.earlier + self.tried.len()
    }

    /// What place `i` of the plan is expected to take, at least what the call's timeouts
    /// so far imply there: its prediction, or its round trip plus the least the call's run
    /// takes at its speed, waiting as its load says, whichever is longer.
    pub fn expected_ms(&self, plan: &Plan, i: usize) -> f64 {
        let s = &plan.scored[i];
        if self.floor_size <= 0.0 {
            return s.predicted_ms;
        }
        let run = self.floor_size / s.speed.max(1e-3);
        let at_least = s.features.rtt_ms + run * (1.0 + s.features.load_per_core.max(0.0));
        s.predicted_ms.max(at_least)
    }

    /// The untried place expected to take least ([`Attempts::expected_ms`]).
    fn next_place(&self, plan: &Plan) -> Option<usize> {
        plan.next_best(&self.tried, |i| self.expected_ms(plan, i))
    }

    /// The place being tried now.
    pub fn current(&self) -> usize {
        *self.tried.last().unwrap_or(&0)
    }

    pub fn tried(&self) -> &[usize] {
        &self.tried
    }

    /// The first attempt is the one running now.
    pub fn first(&self) -> bool {
        self.made() == 1
    }

    /// How long to wait for the current place before hedging: an idempotent call with
    /// somewhere else to go waits 3x its prediction (at least its prediction plus 300 ms)
    /// when the plan's scores are times and the function's size is known; any other call
    /// waits for what is left of its budget. Past its patience the call is not abandoned:
    /// it goes on at its place, a copy goes to the next, and the first answer is the
    /// call's ([`Next::Wait`]). (A shorter patience once abandoned calls whose input made
    /// them long at place after place, where they would have answered; hedged, their
    /// first place still answers.) With the size a guess, a call past 3x its prediction
    /// says nothing of the place, and a copy elsewhere only adds work: on
    /// `far-small-cloud` seed 11 such copies of new functions' first calls grew into a
    /// storm of 7,000 retries. Nor does a call hedge while the router's [`RetryBudget`]
    /// is spent.
    pub fn patience_ms(&self, plan: &Plan, now_ms: f64, budget: &RetryBudget) -> f64 {
        let left = (self.budget_ms - (now_ms - self.started_ms)).max(1.0);
        let elsewhere = self.made() < MAX_ATTEMPTS && self.next_place(plan).is_some();
        if self.idempotent && elsewhere && plan.timed && !plan.guessed && budget.allows_hedging() {
            let p = self.expected_ms(plan, self.current());
            (3.0 * p).max(p + 300.0).min(left)
        } else {
            left
        }
    }

    /// Whether the current place is benched for `outcome` ([`Outcome::benches`], with the
    /// load the plan saw there). A timeout that does not bench it (the place kept reporting
    /// with cores free) says the call is long, at least as long as it ran there: its next
    /// places are ranked and waited for by that ([`Attempts::expected_ms`]).
    pub fn benches(
        &mut self,
        plan: &Plan,
        outcome: &Outcome,
        heard_meanwhile: impl FnOnce() -> bool,
    ) -> bool {
        let s = &plan.scored[self.current()];
        let benched = outcome.benches(s.features.load_per_core, heard_meanwhile);
        if let (false, true, Outcome::TimedOut { after_ms }) = (benched, plan.timed, *outcome) {
            let ran = (after_ms - s.features.rtt_ms).max(0.0);
            self.floor_size = self.floor_size.max(ran * s.speed);
        }
        benched
    }

    /// Takes the current attempt's outcome at `now_ms` and says what comes next. A call
    /// that timed out at its place goes on there: hedged, not abandoned
    /// ([`Attempts::running`]); with nowhere left to go it waits for those places
    /// ([`Next::Wait`]).
    pub fn next(&mut self, plan: &Plan, outcome: &Outcome, now_ms: f64) -> Next {
        if let Outcome::TimedOut { .. } = outcome {
            self.running += 1;
        }
        match self.decide(plan, outcome, now_ms) {
            Next::Fail(GiveUp::Exhausted) if self.running > 0 => Next::Wait,
            next => next,
        }
    }

    /// Attempts still running where the call was hedged from.
    pub fn running(&self) -> usize {
        self.running
    }

    fn decide(&mut self, plan: &Plan, outcome: &Outcome, now_ms: f64) -> Next {
        let retryable = match outcome {
            Outcome::Answered { .. } | Outcome::Failed { .. } => return Next::Done,
            Outcome::Refused { .. } => true,
            Outcome::TimedOut { .. } | Outcome::Lost { .. } => true,
        };
        if outcome.may_have_run() && !self.idempotent {
            return Next::Fail(GiveUp::NotIdempotent);
        }
        if now_ms - self.started_ms >= self.budget_ms {
            return Next::Fail(GiveUp::OutOfTime);
        }
        if !retryable || self.made() >= MAX_ATTEMPTS {
            return Next::Fail(GiveUp::Exhausted);
        }
        if matches!(outcome, Outcome::Refused { .. }) {
            self.turned_away.push((self.current(), now_ms));
        }
        match self
            .next_place(plan)
            .or_else(|| self.room_again(plan, now_ms))
        {
            Some(n) => {
                self.tried.push(n);
                Next::Retry(n)
            }
            None if !self.relisted => {
                self.relisted = true;
                Next::Relist
            }
            None => Next::Fail(GiveUp::Exhausted),
        }
    }

    /// With every place tried: the best-predicted one that turned the call away long
    /// enough ago to have room again (a call lost elsewhere meanwhile comes back to it).
    fn room_again(&mut self, plan: &Plan, now_ms: f64) -> Option<usize> {
        let (i, _) = self
            .turned_away
            .iter()
            .enumerate()
            .filter(|(_, (_, at))| now_ms - at >= crate::placement::FULL_FOR_MS)
            .min_by(|a, b| {
                let p = |x: &(usize, &(usize, f64))| plan.scored[x.1 .0].predicted_ms;
                p(a).total_cmp(&p(b))
            })?;
        Some(self.turned_away.swap_remove(i).0)
    }
}

/// Places that failed recently, benched until a time (ms on the driver's clock).
#[derive(Debug, Clone, Default)]
pub struct Bench {
    until: HashMap<String, f64>,
}

impl Bench {
    /// Benches `place` for [`BENCH_MS`] from `now_ms`.
    pub fn bench(&mut self, place: &str, now_ms: f64) {
        self.until.insert(place.to_string(), now_ms + BENCH_MS);
    }

    pub fn is_benched(&self, place: &str, now_ms: f64) -> bool {
        self.until.get(place).is_some_and(|u| *u > now_ms)
    }

    /// Forgets benches that ended (call now and then).
    pub fn prune(&mut self, now_ms: f64) {
        self.until.retain(|_, u| *u > now_ms);
    }

    pub fn is_empty(&self) -> bool {
        self.until.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Tier;
    use crate::placement::Scored;
    use crate::predict::{Features, Source};

    fn plan(ms: &[f64]) -> Plan {
        Plan {
            scored: ms
                .iter()
                .map(|m| Scored {
                    tier: Tier::Edge,
                    predicted_ms: *m,
                    source: Source::Analytic,
                    observations: 0,
                    features: Features::default(),
                    speed: 1.0,
                    stale: false,
                    guessed: false,
                    extra_ms: 0.0,
                    herd_ms: 0.0,
                    size_ms: None,
                })
                .collect(),
            chosen: 1,
            explored: false,
            meets_deadline: true,
            timed: true,
            load_device: false,
            guessed: false,
        }
    }

    #[test]
    fn refusals_go_to_the_next_best_place_and_answers_end_the_call() {
        let p = plan(&[20.0, 5.0, 10.0]);
        let mut a = Attempts::new(&p, 0.0, 1000.0, false);
        assert_eq!(a.current(), 1);
        let r = a.next(&p, &Outcome::Refused { status: 429 }, 3.0);
        assert_eq!(r, Next::Retry(2));
        assert_eq!(
            a.next(&p, &Outcome::Refused { status: 429 }, 6.0),
            Next::Retry(0)
        );
        // Every place turned it away: places are listed again, once.
        assert_eq!(
            a.next(&p, &Outcome::Refused { status: 429 }, 9.0),
            Next::Relist
        );
        assert_eq!(
            a.next(&p, &Outcome::Refused { status: 429 }, 9.0),
            Next::Fail(GiveUp::Exhausted)
        );
        let mut b = Attempts::new(&p, 0.0, 1000.0, false);
        let ok = Outcome::Answered {
            took_ms: 4.0,
            service_ms: None,
            response_kb: None,
            cold: false,
        };
        assert_eq!(b.next(&p, &ok, 4.0), Next::Done);
        assert_eq!(
            b.next(&p, &Outcome::Failed { status: 500 }, 4.0),
            Next::Done
        );
    }

    #[test]
    fn a_place_that_was_full_is_tried_again_once_it_may_have_room() {
        // Both nearer places full, the call goes to the third, which is lost two seconds
        // later: the full ones have had time to drain, the best is tried again.
        let p = plan(&[20.0, 5.0, 10.0]);
        let mut a = Attempts::new(&p, 0.0, 5000.0, true);
        let full = Outcome::Refused { status: 429 };
        assert_eq!(a.next(&p, &full, 1.0), Next::Retry(2));
        assert_eq!(a.next(&p, &full, 2.0), Next::Retry(0));
        let lost = Outcome::Lost {
            sent: true,
            after_ms: 2000.0,
        };
        assert_eq!(a.next(&p, &lost, 2002.0), Next::Retry(1));
        assert_eq!(a.next(&p, &full, 2003.0), Next::Retry(2));
        // Five attempts is the most.
        assert_eq!(a.next(&p, &full, 3500.0), Next::Fail(GiveUp::Exhausted));
        // Not before it could have room.
        let mut b = Attempts::new(&p, 0.0, 5000.0, true);
        assert_eq!(b.next(&p, &full, 1.0), Next::Retry(2));
        assert_eq!(b.next(&p, &full, 2.0), Next::Retry(0));
        assert_eq!(b.next(&p, &lost, 500.0), Next::Relist);
    }

    #[test]
    fn with_every_place_failed_and_time_left_places_are_listed_once_more() {
        // Both places lost the call; a third joined meanwhile.
        let p = plan(&[20.0, 5.0]);
        let lost = Outcome::Lost {
            sent: true,
            after_ms: 10.0,
        };
        let mut a = Attempts::new(&p, 0.0, 1000.0, true);
        assert_eq!(a.next(&p, &lost, 10.0), Next::Retry(0));
        assert_eq!(a.next(&p, &lost, 20.0), Next::Relist);
        // The new listing (the one new place, and an old one whose bench ran out) goes on
        // with the same budget and the attempts made so far.
        let mut q = plan(&[30.0, 8.0]);
        q.chosen = 1;
        let mut b = a.relisted(&q);
        assert_eq!(b.current(), 1);
        assert!(!b.first());
        assert_eq!(b.tried(), &[1]);
        assert_eq!(b.made(), 3, "two under the first listing, one under this");
        assert_eq!(b.next(&q, &lost, 30.0), Next::Retry(0));
        // Places run out again: no third listing.
        assert_eq!(b.next(&q, &lost, 40.0), Next::Fail(GiveUp::Exhausted));
        // The budget carries over: past it, the call is out of time whatever is left.
        let mut c = a.relisted(&q);
        assert_eq!(c.next(&q, &lost, 1000.0), Next::Fail(GiveUp::OutOfTime));
        // And the attempts: five in all, over both listings.
        let mut d = Attempts::new(&p, 0.0, 10_000.0, true);
        let full = Outcome::Refused { status: 429 };
        assert_eq!(d.next(&p, &full, 1.0), Next::Retry(0));
        assert_eq!(d.next(&p, &full, 2.0), Next::Relist);
        let r = plan(&[1.0, 2.0, 3.0, 4.0]);
        let mut e = d.relisted(&r);
        assert_eq!(e.next(&r, &lost, 3.0), Next::Retry(0));
        assert_eq!(e.next(&r, &lost, 4.0), Next::Retry(2));
        assert_eq!(e.next(&r, &lost, 5.0), Next::Fail(GiveUp::Exhausted));
        // A call that may have run and is not idempotent is not listed again.
        let mut f = Attempts::new(&p, 0.0, 1000.0, false);
        let full_then = f.next(&p, &full, 1.0);
        assert_eq!(full_then, Next::Retry(0));
        assert_eq!(f.next(&p, &lost, 2.0), Next::Fail(GiveUp::NotIdempotent));
    }

    #[test]
    fn a_call_that_timed_out_where_cores_were_free_goes_where_long_calls_run_fastest() {
        // It went to a place of speed 1 predicted 50 ms; next by prediction would be a slow
        // device (200 ms), then a fast cloud (300 ms).
        let mut p = plan(&[50.0, 200.0, 300.0]);
        p.chosen = 0;
        p.scored[1].speed = 0.25;
        p.scored[2].speed = 2.0;
        p.scored[2].features.rtt_ms = 40.0;
        let timeout = Outcome::TimedOut { after_ms: 1050.0 };
        // A timeout that benched its place (no report meanwhile) says nothing of the call.
        let mut a = Attempts::new(&p, 0.0, 30_000.0, true);
        assert!(a.benches(&p, &timeout, || false));
        assert_eq!(a.next(&p, &timeout, 1050.0), Next::Retry(1));
        // One where the place kept reporting with cores free: the call ran 1050 ms at
        // speed 1, so the device needs 4200 ms, the cloud at least 40 + 525.
        let mut b = Attempts::new(&p, 0.0, 30_000.0, true);
        assert!(!b.benches(&p, &timeout, || true));
        assert_eq!(b.expected_ms(&p, 1), 4200.0);
        assert_eq!(b.expected_ms(&p, 2), 565.0);
        assert_eq!(b.next(&p, &timeout, 1050.0), Next::Retry(2));
        // And it is waited for as long as that implies, not its 300 ms guess.
        assert_eq!(b.patience_ms(&p, 1050.0, &RetryBudget::full()), 1695.0);
        assert_eq!(a.expected_ms(&p, 2), 300.0);
    }

    #[test]
    fn a_router_whose_calls_time_out_stops_abandoning_them_until_answers_come_back() {
        let p = plan(&[20.0, 5.0]);
        let a = Attempts::new(&p, 0.0, 30_000.0, true);
        let mut budget = RetryBudget::full();
        let timeout = Outcome::TimedOut { after_ms: 305.0 };
        let answer = Outcome::Answered {
            took_ms: 5.0,
            service_ms: Some(1.0),
            response_kb: None,
            cold: false,
        };
        // Four timeouts leave six tokens: calls are still hedged past their patience.
        for _ in 0..4 {
            budget.hear(&timeout);
        }
        assert!(budget.allows_hedging());
        assert_eq!(a.patience_ms(&p, 0.0, &budget), 305.0);
        // The fifth leaves half: calls wait out their budget where they are.
        budget.hear(&timeout);
        assert!(!budget.allows_hedging());
        assert_eq!(a.patience_ms(&p, 0.0, &budget), 30_000.0);
        // Refusals and lost connections left nothing running: they take no token.
        budget.hear(&Outcome::Refused { status: 429 });
        budget.hear(&Outcome::Lost {
            sent: true,
            after_ms: 3.0,
        });
        assert!(!budget.allows_hedging());
        // A sixth leaves four. Answers give a tenth back each: eleven put it past half.
        budget.hear(&timeout);
        for _ in 0..10 {
            budget.hear(&answer);
        }
        assert!(!budget.allows_hedging(), "{budget:?}");
        budget.hear(&answer);
        assert!(budget.allows_hedging());
        // It never holds more than it started with.
        for _ in 0..1000 {
            budget.hear(&answer);
        }
        assert_eq!(budget, RetryBudget::full());
    }

    #[test]
    fn a_lost_call_runs_again_only_when_idempotent_or_never_sent() {
        let p = plan(&[20.0, 5.0, 10.0]);
        let lost = Outcome::Lost {
            sent: true,
            after_ms: 50.0,
        };
        let mut a = Attempts::new(&p, 0.0, 1000.0, false);
        assert_eq!(a.next(&p, &lost, 50.0), Next::Fail(GiveUp::NotIdempotent));
        let mut b = Attempts::new(&p, 0.0, 1000.0, false);
        let unsent = Outcome::Lost {
            sent: false,
            after_ms: 1.0,
        };
        assert_eq!(b.next(&p, &unsent, 1.0), Next::Retry(2));
        let mut c = Attempts::new(&p, 0.0, 1000.0, true);
        assert_eq!(c.next(&p, &lost, 50.0), Next::Retry(2));
        assert_eq!(
            c.next(&p, &Outcome::TimedOut { after_ms: 2000.0 }, 2000.0),
            Next::Fail(GiveUp::OutOfTime)
        );
    }

    #[test]
    fn patience_is_bounded_for_idempotent_calls_with_somewhere_else_to_go() {
        let p = plan(&[20.0, 5.0]);
        let full = RetryBudget::full();
        let a = Attempts::new(&p, 0.0, 30_000.0, true);
        assert_eq!(a.patience_ms(&p, 0.0, &full), 305.0);
        // 3x a longer prediction.
        let long = plan(&[20.0, 400.0]);
        assert_eq!(a.patience_ms(&long, 0.0, &full), 1200.0);
        let b = Attempts::new(&p, 0.0, 30_000.0, false);
        assert_eq!(b.patience_ms(&p, 10.0, &full), 29_990.0);
        // Scores that are only an order say nothing of how long to wait.
        let order = Plan {
            timed: false,
            ..p.clone()
        };
        assert_eq!(a.patience_ms(&order, 10.0, &full), 29_990.0);
        // Nor do times predicted from a guess of the function's size.
        let guessed = Plan {
            guessed: true,
            ..p.clone()
        };
        assert_eq!(a.patience_ms(&guessed, 10.0, &full), 29_990.0);
        let timeout = Outcome::TimedOut { after_ms: 305.0 };
        assert!(!timeout.benches(0.5, || true));
        assert!(timeout.benches(0.5, || false) && timeout.benches(1.0, || true));
        let lost = Outcome::Lost {
            sent: true,
            after_ms: 3.0,
        };
        assert!(lost.benches(0.0, || true) && lost.benches(0.0, || false));
        assert!(!Outcome::Refused { status: 429 }.benches(2.0, || false));
        let mut bench = Bench::default();
        bench.bench("edge-1", 100.0);
        assert!(bench.is_benched("edge-1", 2099.0));
        assert!(!bench.is_benched("edge-1", 2100.0));
        bench.prune(2100.0);
        assert!(bench.is_empty());
    }

    #[test]
    fn a_call_hedged_from_its_places_waits_for_them_when_nowhere_is_left() {
        let p = plan(&[20.0, 5.0]);
        let timeout = Outcome::TimedOut { after_ms: 305.0 };
        let refused = Outcome::Refused { status: 429 };
        // Timed out at its first place, turned away at the second: the first still runs
        // it, so the call waits for it rather than failing.
        let mut a = Attempts::new(&p, 0.0, 30_000.0, true);
        assert_eq!(a.next(&p, &timeout, 305.0), Next::Retry(0));
        assert_eq!(a.running(), 1);
        assert_eq!(a.next(&p, &refused, 310.0), Next::Relist);
        assert_eq!(a.relisted(&p).running(), 1);
        assert_eq!(a.next(&p, &refused, 320.0), Next::Wait);
        // Turned away everywhere, nothing runs it: it failed.
        let mut b = Attempts::new(&p, 0.0, 30_000.0, true);
        assert_eq!(b.next(&p, &refused, 5.0), Next::Retry(0));
        assert_eq!(b.next(&p, &refused, 10.0), Next::Relist);
        assert_eq!(b.next(&p, &refused, 20.0), Next::Fail(GiveUp::Exhausted));
        // Its budget spent, it fails though places run it still (their own timeouts end
        // them there).
        let mut c = Attempts::new(&p, 0.0, 1000.0, true);
        assert_eq!(c.next(&p, &timeout, 305.0), Next::Retry(0));
        assert_eq!(
            c.next(&p, &Outcome::TimedOut { after_ms: 700.0 }, 1005.0),
            Next::Fail(GiveUp::OutOfTime)
        );
    }
}
