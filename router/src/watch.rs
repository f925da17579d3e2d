//! What the dashboard watches of a router: every decision as it is made (a broadcast the
//! live stream subscribes to; nothing is serialised while nobody watches), and per
//! function a latency histogram, cold starts, where its calls ran and how far the
//! predictions were off, over the last ten minutes.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::broadcast;

use crate::Decision;

/// Upper bounds of the latency histogram's buckets, ms (the last is everything slower).
const BOUNDS_MS: [f64; 16] = [
    0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0,
    10000.0,
];
/// Width of one step of the time series, seconds, and how many are kept.
const STEP_S: u64 = 10;
const STEPS: usize = 60;
/// Most prediction errors kept per step (for its median).
const ERRORS_PER_STEP: usize = 256;
/// Decisions a slow watcher may fall behind before it skips ahead.
const STREAM_BACKLOG: usize = 4096;
/// Most functions followed (the least recently called goes first).
const FUNCTIONS: usize = 1024;

pub struct Watch {
    stream: broadcast::Sender<Arc<str>>,
    functions: Mutex<HashMap<String, FunctionStats>>,
    totals: Mutex<Totals>,
}

/// Upper bounds of the prediction error histogram (|actual - predicted| / actual).
const ERROR_BOUNDS: [f64; 8] = [0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.0, 5.0];

/// Every decision so far, for `/metrics`.
#[derive(Default)]
struct Totals {
    placed: BTreeMap<&'static str, u64>,
    failed: u64,
    retried: u64,
    cold: u64,
    errors: [u64; ERROR_BOUNDS.len() + 1],
    error_sum: f64,
}

#[derive(Default)]
struct FunctionStats {
    calls: u64,
    failed: u64,
    cold_starts: u64,
    retried: u64,
    histogram: [u64; BOUNDS_MS.len() + 1],
    series: VecDeque<Step>,
    last_s: u64,
}

struct Step {
    at_s: u64,
    calls: u64,
    tiers: BTreeMap<&'static str, u64>,
    errors: Vec<f32>,
}

#[derive(Serialize)]
struct StepOut {
    at: u64,
    calls: u64,
    tiers: BTreeMap<&'static str, u64>,
    median_error: Option<f32>,
}

#[derive(Serialize)]
struct BucketOut {
    /// Upper bound, ms; `null` for the last (slower than every bound).
    le_ms: Option<f64>,
    count: u64,
}

impl Watch {
    pub fn new() -> Watch {
        Watch {
            stream: broadcast::channel(STREAM_BACKLOG).0,
            functions: Mutex::new(HashMap::new()),
            totals: Mutex::new(Totals::default()),
        }
    }

    /// Prometheus text for placement as a whole.
    pub fn metrics(&self, out: &mut String) {
        use std::fmt::Write;
        let t = lock(&self.totals);
        out.push_str("# HELP fogline_placements_total Calls this router placed, by the tier they ran on (failed: ran nowhere).\n# TYPE fogline_placements_total counter\n");
        for (tier, n) in &t.placed {
            let _ = writeln!(out, "fogline_placements_total{{tier=\"{tier}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "fogline_placements_total{{tier=\"failed\"}} {}",
            t.failed
        );
        let _ = writeln!(out, "# HELP fogline_placement_retries_total Calls that needed more than one place.\n# TYPE fogline_placement_retries_total counter\nfogline_placement_retries_total {}", t.retried);
        let _ = writeln!(out, "# HELP fogline_placement_cold_total Placed calls that had to load their function first.\n# TYPE fogline_placement_cold_total counter\nfogline_placement_cold_total {}", t.cold);
        out.push_str("# HELP fogline_prediction_error_ratio Relative error of the time predicted for the place chosen, |actual - predicted| / actual.\n# TYPE fogline_prediction_error_ratio histogram\n");
        let mut cum = 0;
        for (i, n) in t.errors.iter().enumerate() {
            cum += n;
            let le = ERROR_BOUNDS
                .get(i)
                .map_or("+Inf".to_string(), |b| b.to_string());
            let _ = writeln!(
                out,
                "fogline_prediction_error_ratio_bucket{{le=\"{le}\"}} {cum}"
            );
        }
        let _ = writeln!(out, "fogline_prediction_error_ratio_sum {}", t.error_sum);
        let _ = writeln!(out, "fogline_prediction_error_ratio_count {cum}");
    }

    /// Takes note of a decision and its outcome.
    pub fn record(&self, d: &Decision) {
        if self.stream.receiver_count() > 0 {
            if let Ok(j) = serde_json::to_string(d) {
                let _ = self.stream.send(j.into());
            }
        }
        self.total(d);
        let at_s = d.at as u64;
        let mut fns = lock(&self.functions);
        if !fns.contains_key(&d.function) {
            if fns.len() >= FUNCTIONS {
                if let Some(oldest) = fns
                    .iter()
                    .min_by_key(|(_, s)| s.last_s)
                    .map(|(k, _)| k.clone())
                {
                    fns.remove(&oldest);
                }
            }
            // The name is copied once, when the function is first seen.
            fns.insert(d.function.clone(), FunctionStats::default());
        }
        let Some(s) = fns.get_mut(&d.function) else {
            return;
        };
        s.calls += 1;
        s.last_s = at_s;
        if d.attempts > 1 {
            s.retried += 1;
        }
        let (Some(actual), Some(ran_on)) = (d.actual_ms, d.ran_on.as_deref()) else {
            s.failed += 1;
            return;
        };
        if d.cold {
            s.cold_starts += 1;
        }
        let b = BOUNDS_MS
            .iter()
            .position(|b| actual <= *b)
            .unwrap_or(BOUNDS_MS.len());
        s.histogram[b] += 1;
        let step_at = at_s - at_s % STEP_S;
        if s.series.back().is_none_or(|st| st.at_s != step_at) {
            s.series.push_back(Step {
                at_s: step_at,
                calls: 0,
                tiers: BTreeMap::new(),
                errors: Vec::new(),
            });
            while s.series.len() > STEPS {
                s.series.pop_front();
            }
        }
        let Some(step) = s.series.back_mut() else {
            return;
        };
        step.calls += 1;
        *step.tiers.entry(tier_of(d, ran_on)).or_default() += 1;
        // The prediction for the place chosen, against what it took there.
        if ran_on == d.chosen && actual > 0.0 && step.errors.len() < ERRORS_PER_STEP {
            step.errors
                .push(((actual - d.predicted_ms).abs() / actual) as f32);
        }
    }

    fn total(&self, d: &Decision) {
        let mut t = lock(&self.totals);
        if d.attempts > 1 {
            t.retried += 1;
        }
        let (Some(actual), Some(ran_on)) = (d.actual_ms, d.ran_on.as_deref()) else {
            t.failed += 1;
            return;
        };
        t.cold += u64::from(d.cold);
        *t.placed.entry(tier_of(d, ran_on)).or_default() += 1;
        if ran_on == d.chosen && actual > 0.0 {
            let e = (actual - d.predicted_ms).abs() / actual;
            let b = ERROR_BOUNDS
                .iter()
                .position(|b| e <= *b)
                .unwrap_or(ERROR_BOUNDS.len());
            t.errors[b] += 1;
            t.error_sum += e;
        }
    }

    /// Decisions from now on, each one JSON text.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<str>> {
        self.stream.subscribe()
    }

    /// One function's figures, as `GET /v1/functions/NAME/stats` gives them.
    pub fn function(&self, name: &str) -> Option<serde_json::Value> {
        let fns = lock(&self.functions);
        let s = fns.get(name)?;
        let histogram: Vec<BucketOut> = s
            .histogram
            .iter()
            .enumerate()
            .map(|(i, c)| BucketOut {
                le_ms: BOUNDS_MS.get(i).copied(),
                count: *c,
            })
            .collect();
        let series: Vec<StepOut> = s
            .series
            .iter()
            .map(|st| StepOut {
                at: st.at_s,
                calls: st.calls,
                tiers: st.tiers.clone(),
                median_error: median(&st.errors),
            })
            .collect();
        Some(serde_json::json!({
            "function": name,
            "calls": s.calls,
            "failed": s.failed,
            "retried": s.retried,
            "cold_starts": s.cold_starts,
            "histogram": histogram,
            "step_s": STEP_S,
            "series": series,
        }))
    }
}

impl Default for Watch {
    fn default() -> Self {
        Watch::new()
    }
}

/// The tier of the place a call ran on, as its candidates said.
fn tier_of(d: &Decision, ran_on: &str) -> &'static str {
    d.candidates
        .iter()
        .find(|c| c.place == ran_on)
        .map_or("unknown", |c| c.tier.as_str())
}

fn median(v: &[f32]) -> Option<f32> {
    if v.is_empty() {
        return None;
    }
    let mut v = v.to_vec();
    v.sort_by(f32::total_cmp);
    Some(v[v.len() / 2])
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CandidateRecord;
    use fogline_core::config::Tier;

    fn decision(at: f64, actual: Option<f64>, ran_on: &str, cold: bool) -> Decision {
        Decision {
            at,
            function: "f".into(),
            trace: None,
            candidates: vec![
                CandidateRecord {
                    place: "edge-1".into(),
                    tier: Tier::Edge,
                    predicted_ms: 4.0,
                    source: "model",
                    observations: 3,
                },
                CandidateRecord {
                    place: "cloud".into(),
                    tier: Tier::Cloud,
                    predicted_ms: 9.0,
                    source: "analytic",
                    observations: 0,
                },
            ],
            chosen: "edge-1".into(),
            explored: false,
            guessed: false,
            predicted_ms: 4.0,
            ran_on: actual.map(|_| ran_on.to_string()),
            actual_ms: actual,
            status: if actual.is_some() { 200 } else { 502 },
            attempts: 1,
            cold,
            error: None,
        }
    }

    #[test]
    fn figures_follow_the_decisions() {
        let w = Watch::new();
        w.record(&decision(1000.0, Some(5.0), "edge-1", true));
        w.record(&decision(1001.0, Some(3.0), "edge-1", false));
        w.record(&decision(1012.0, Some(12.0), "cloud", false));
        w.record(&decision(1013.0, None, "", false));
        let f = w.function("f").unwrap();
        assert_eq!(f["calls"], 4);
        assert_eq!(f["failed"], 1);
        assert_eq!(f["cold_starts"], 1);
        let counts: Vec<u64> = f["histogram"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["count"].as_u64().unwrap())
            .collect();
        assert_eq!(counts.iter().sum::<u64>(), 3);
        // 3 and 5 ms fall under the 5 ms bound, 12 under 20.
        assert_eq!(counts[5], 2);
        assert_eq!(counts[7], 1);
        let series = f["series"].as_array().unwrap();
        assert_eq!(series.len(), 2);
        assert_eq!(series[0]["at"], 1000);
        assert_eq!(series[0]["tiers"]["edge"], 2);
        assert_eq!(series[1]["tiers"]["cloud"], 1);
        // |5-4|/5 and |3-4|/3: the upper median of two is 1/3.
        let e = series[0]["median_error"].as_f64().unwrap();
        assert!((e - 1.0 / 3.0).abs() < 1e-6, "{e}");
        assert!(
            series[1]["median_error"].is_null(),
            "ran elsewhere than chosen"
        );
        assert!(w.function("g").is_none());
        let mut m = String::new();
        w.metrics(&mut m);
        assert!(
            m.contains("fogline_placements_total{tier=\"edge\"} 2"),
            "{m}"
        );
        assert!(
            m.contains("fogline_placements_total{tier=\"cloud\"} 1"),
            "{m}"
        );
        assert!(
            m.contains("fogline_placements_total{tier=\"failed\"} 1"),
            "{m}"
        );
        // Errors 0.2 and 0.33 (the cloud call ran where it was not chosen: not counted).
        assert!(
            m.contains("fogline_prediction_error_ratio_bucket{le=\"0.25\"} 1"),
            "{m}"
        );
        assert!(
            m.contains("fogline_prediction_error_ratio_bucket{le=\"0.5\"} 2"),
            "{m}"
        );
        assert!(m.contains("fogline_prediction_error_ratio_count 2"), "{m}");
    }

    #[test]
    fn the_stream_carries_decisions_only_to_watchers() {
        let w = Watch::new();
        w.record(&decision(1.0, Some(1.0), "edge-1", false));
        let mut rx = w.subscribe();
        w.record(&decision(2.0, Some(1.0), "edge-1", false));
        let j: serde_json::Value = serde_json::from_str(&rx.try_recv().unwrap()).unwrap();
        assert_eq!(j["at"], 2.0);
        assert!(rx.try_recv().is_err());
    }
}
