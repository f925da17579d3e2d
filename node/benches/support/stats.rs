//! Percentiles and report lines shared by the benchmarks.

use std::time::Duration;

/// The `q` quantile of sorted samples.
pub fn p(v: &[Duration], q: f64) -> Duration {
    v[((v.len() as f64 - 1.0) * q) as usize]
}

/// One result line: name, p50 and p99 in microseconds.
pub fn row(name: &str, v: &[Duration]) {
    println!(
        "{name:<44} p50 {:>8.1} µs   p99 {:>8.1} µs",
        p(v, 0.5).as_secs_f64() * 1e6,
        p(v, 0.99).as_secs_f64() * 1e6
    );
}
