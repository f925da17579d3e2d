//! Arrival-rate forecasting per function (Mu-style): invocations are counted in fixed
//! buckets, and a least-squares line through the recent buckets predicts the next one, so
//! a rising burst is seen before it peaks and places can prepare ahead of it.

use std::collections::VecDeque;

/// Recent arrivals of one function.
#[derive(Debug, Clone)]
pub struct Arrivals {
    bucket_ms: u64,
    keep: usize,
    /// (bucket number, invocations in it), oldest first, only buckets with arrivals.
    buckets: VecDeque<(u64, u32)>,
}

impl Arrivals {
    /// Counts in buckets of `bucket_ms`, fitting over the last `keep` buckets.
    pub fn new(bucket_ms: u64, keep: usize) -> Self {
        Arrivals {
            bucket_ms: bucket_ms.max(1),
            keep: keep.max(2),
            buckets: VecDeque::new(),
        }
    }

    pub fn record(&mut self, now_ms: u64) {
        let b = now_ms / self.bucket_ms;
        match self.buckets.back_mut() {
            Some((last, n)) if *last == b => *n += 1,
            _ => self.buckets.push_back((b, 1)),
        }
        while self
            .buckets
            .front()
            .is_some_and(|(f, _)| b.saturating_sub(*f) >= self.keep as u64)
        {
            self.buckets.pop_front();
        }
    }

    /// Arrivals in the complete buckets the forecast fits at `now_ms`.
    pub fn in_window(&self, now_ms: u64) -> u32 {
        let cur = now_ms / self.bucket_ms;
        let first = cur.saturating_sub(self.keep as u64);
        self.buckets
            .iter()
            .filter(|(b, _)| *b >= first && *b < cur)
            .map(|(_, n)| *n)
            .sum()
    }

    /// Predicted arrivals per second in the bucket after the current one. Only complete
    /// buckets are fitted (the current one is still filling).
    pub fn forecast_per_s(&self, now_ms: u64) -> f64 {
        self.forecast_ahead(now_ms, 0)
    }

    /// Predicted arrivals per second `ahead_ms` past the bucket after the current one
    /// (the trend carried on: what capacity started now will meet when it is ready).
    pub fn forecast_ahead(&self, now_ms: u64, ahead_ms: u64) -> f64 {
        let cur = now_ms / self.bucket_ms;
        let first = cur.saturating_sub(self.keep as u64);
        // Points (x = bucket, y = count) for every complete bucket in the window, zeros too.
        let n = (cur - first) as f64;
        if n < 2.0 {
            return 0.0;
        }
        let (mut sx, mut sy, mut sxx, mut sxy) = (0.0, 0.0, 0.0, 0.0);
        for b in first..cur {
            let y = self
                .buckets
                .iter()
                .find(|(k, _)| *k == b)
                .map_or(0.0, |(_, c)| f64::from(*c));
            let x = (b - first) as f64;
            sx += x;
            sy += y;
            sxx += x * x;
            sxy += x * y;
        }
        let denom = n * sxx - sx * sx;
        let slope = if denom.abs() < 1e-12 {
            0.0
        } else {
            (n * sxy - sx * sy) / denom
        };
        let intercept = (sy - slope * sx) / n;
        // The next complete bucket after `cur` is at x = n + 1.
        let x = n + 1.0 + ahead_ms as f64 / self.bucket_ms as f64;
        let next = intercept + slope * x;
        next.max(0.0) * 1000.0 / self.bucket_ms as f64
    }
}

/// What the warm places among `places` can serve, calls per second: each 1000 / its
/// service time, times its idle share (at least a tenth).
pub fn warm_capacity(places: &[crate::placement::PlaceInfo<'_>]) -> f64 {
    places
        .iter()
        .filter(|p| p.warm)
        .map(|p| {
            let service = p.service_ms.unwrap_or(1.0).max(0.05);
            1000.0 / service * (1.0 - p.load_per_core.min(1.0)).max(0.1)
        })
        .sum()
}

/// Prepare-ahead: which cold place to ask to load a function whose forecast rate is
/// `rate_per_s`, if any. None while the warm places can serve 80 % more than that (each
/// serves 1000 / service time calls per second, times its idle share); otherwise the cold
/// place nearest and least loaded. `remote(i)` says whether place `i` can be asked (not
/// this router itself).
pub fn prepare_target(
    places: &[crate::placement::PlaceInfo<'_>],
    rate_per_s: f64,
    remote: impl Fn(usize) -> bool,
) -> Option<usize> {
    let capacity = warm_capacity(places);
    if rate_per_s <= 0.8 * capacity && places.iter().any(|p| p.warm) {
        return None;
    }
    places
        .iter()
        .enumerate()
        .filter(|(i, p)| !p.warm && remote(*i))
        .min_by(|(_, a), (_, b)| {
            (a.rtt_ms + a.load_per_core).total_cmp(&(b.rtt_ms + b.load_per_core))
        })
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rising_burst_is_forecast_above_its_current_rate() {
        let mut a = Arrivals::new(1000, 8);
        // 10, 20, 30, 40, 50 per second.
        for s in 0..5u64 {
            for i in 0..(10 * (s + 1)) {
                a.record(s * 1000 + i);
            }
        }
        let f = a.forecast_per_s(5_000);
        assert!((f - 70.0).abs() < 1e-6, "{f}");
        // Every arrival is in the window; the current (still filling) bucket is not.
        assert_eq!(a.in_window(5_000), 150);
        assert_eq!(a.in_window(4_999), 100);
        // Three seconds further along the same line.
        let f = a.forecast_ahead(5_000, 3_000);
        assert!((f - 100.0).abs() < 1e-6, "{f}");
    }

    #[test]
    fn a_steady_rate_is_forecast_as_itself_and_silence_as_zero() {
        let mut a = Arrivals::new(500, 10);
        for b in 0..10u64 {
            for i in 0..5 {
                a.record(b * 500 + i * 10);
            }
        }
        assert!((a.forecast_per_s(5_000) - 10.0).abs() < 1e-6);
        assert_eq!(Arrivals::new(1000, 4).forecast_per_s(60_000), 0.0);
        // Long after the last arrival the window holds only empty buckets.
        assert_eq!(a.forecast_per_s(600_000), 0.0);
    }

    #[test]
    fn a_cold_place_is_prepared_only_when_the_warm_ones_fall_short() {
        use crate::config::Tier;
        use crate::placement::PlaceInfo;
        let p = |id, warm, rtt| PlaceInfo {
            id,
            key: crate::placement::place_key(id),
            tier: Tier::Edge,
            rtt_ms: rtt,
            load_per_core: 0.0,
            cores: 4,
            speed: None,
            warm,
            service_ms: Some(10.0),
            truth_ms: None,
            own: Default::default(),
        };
        // One warm place serving 100 calls/s; two cold ones, the second nearer.
        let places = [
            p("warm", true, 1.0),
            p("far", false, 9.0),
            p("near", false, 2.0),
        ];
        assert_eq!(super::prepare_target(&places, 50.0, |_| true), None);
        assert_eq!(super::prepare_target(&places, 90.0, |_| true), Some(2));
        assert_eq!(super::prepare_target(&places, 90.0, |i| i != 2), Some(1));
    }
}
