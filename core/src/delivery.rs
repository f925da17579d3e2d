//! Delivering accepted work: which failures earn another attempt, how long to wait before
//! it (exponential backoff with jitter), and when a call stops being retried and goes to
//! the dead-letter queue. Pure: the time and the random roll are arguments.
//!
//! The async queue and callback deliveries both follow these rules.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How a failed attempt is retried.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The wait after the first failure (before jitter).
    pub base: Duration,
    /// The longest wait between two attempts.
    pub max: Duration,
    /// Attempts in all, the first included.
    pub max_attempts: u32,
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// Try again after this wait.
    Retry(Duration),
    /// Stop: the call goes to the dead-letter queue, for this reason.
    GiveUp(String),
}

/// One attempt at a call, as the dead-letter queue shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    /// When it ended (ms since the Unix epoch).
    pub at_ms: u64,
    /// The HTTP status it ended with (0: no answer).
    pub status: u16,
    /// Where it ran or was refused, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub place: Option<String>,
    /// Why it failed.
    pub reason: String,
}

/// Whether a failure with HTTP status `status` is worth another attempt. `idempotent`:
/// the function may run twice (a 502 means the answer was lost, and the function may
/// have run).
///
/// Retried: 429 (busy), 503 (no live place, sandbox unavailable), 504 (timed out), 500
/// (the function failed: delivery is at least once, as serverless platforms retry an
/// async call's errors), 0 (no answer), and 502 for idempotent functions. Never: the
/// caller's mistakes and refusals (4xx but 429: bad input, not found, not allowed, too
/// large), which fail the same way every time.
pub fn retryable(status: u16, idempotent: bool) -> bool {
    match status {
        0 | 429 | 500 | 503 | 504 => true,
        502 => idempotent,
        _ => false,
    }
}

impl Backoff {
    /// The wait before attempt `n + 1` after `n` failed ones: `base · 2^(n-1)`, at most
    /// `max`, of which the lower half is fixed and the upper half drawn by `roll` (in
    /// [0, 1)): "equal jitter", so retries of many calls that failed together spread out,
    /// yet none comes back at once.
    pub fn delay(&self, failed: u32, roll: f64) -> Duration {
        let exp = failed.saturating_sub(1).min(30);
        let full = self
            .base
            .checked_mul(1u32 << exp)
            .unwrap_or(self.max)
            .min(self.max);
        let half = full / 2;
        half + half.mul_f64(roll.clamp(0.0, 1.0))
    }

    /// After `failed` attempts, the last ending with `status`, at `now_ms`: retry (and
    /// when), or give up with the reason. `deadline_ms` is when the call must have run.
    pub fn next(
        &self,
        failed: u32,
        status: u16,
        idempotent: bool,
        now_ms: u64,
        deadline_ms: u64,
        roll: f64,
    ) -> Next {
        if !retryable(status, idempotent) {
            return Next::GiveUp(if status == 502 {
                "not retried: the answer was lost and the function may have run (it is not idempotent)".into()
            } else {
                format!("not retried: HTTP {status} fails the same way every time")
            });
        }
        if failed >= self.max_attempts {
            return Next::GiveUp(format!("gave up after {failed} attempts"));
        }
        let wait = self.delay(failed, roll);
        if now_ms.saturating_add(wait.as_millis() as u64) > deadline_ms {
            return Next::GiveUp(format!(
                "gave up after {failed} attempts: the deadline passes before the next"
            ));
        }
        Next::Retry(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b() -> Backoff {
        Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(10),
            max_attempts: 5,
        }
    }

    #[test]
    fn waits_double_within_their_jitter_and_stop_at_the_max() {
        let b = b();
        for (n, full) in [(1, 100), (2, 200), (3, 400), (8, 10_000), (40, 10_000)] {
            let lo = b.delay(n, 0.0).as_millis();
            let hi = b.delay(n, 0.999_999).as_millis();
            assert_eq!(lo, full / 2, "after {n}");
            assert!(hi <= full && hi >= full - 1, "after {n}: {hi}");
        }
        // Rolls out of range are clamped, not trusted.
        assert_eq!(b.delay(1, 7.0), Duration::from_millis(100));
        assert_eq!(b.delay(1, -1.0), Duration::from_millis(50));
    }

    #[test]
    fn only_failures_that_may_pass_are_retried() {
        for s in [0, 429, 500, 503, 504] {
            assert!(retryable(s, false), "{s}");
        }
        assert!(retryable(502, true));
        assert!(!retryable(502, false));
        for s in [400, 401, 403, 404, 413, 200] {
            assert!(!retryable(s, true), "{s}");
        }
    }

    #[test]
    fn gives_up_after_max_attempts_or_at_the_deadline_with_the_reason() {
        let b = b();
        assert_eq!(
            b.next(1, 503, false, 0, 10_000, 0.0),
            Next::Retry(Duration::from_millis(50))
        );
        match b.next(5, 503, false, 0, u64::MAX, 0.5) {
            Next::GiveUp(why) => assert!(why.contains("5 attempts"), "{why}"),
            other => panic!("{other:?}"),
        }
        // The next wait (at least 200 ms after 3 failures) would pass the deadline.
        match b.next(3, 500, false, 1_000, 1_100, 0.0) {
            Next::GiveUp(why) => assert!(why.contains("deadline"), "{why}"),
            other => panic!("{other:?}"),
        }
        match b.next(1, 404, true, 0, u64::MAX, 0.0) {
            Next::GiveUp(why) => assert!(why.contains("404"), "{why}"),
            other => panic!("{other:?}"),
        }
        match b.next(1, 502, false, 0, u64::MAX, 0.0) {
            Next::GiveUp(why) => assert!(why.contains("idempotent"), "{why}"),
            other => panic!("{other:?}"),
        }
    }
}
