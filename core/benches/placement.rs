//! One placement decision with 100 candidates: a prediction per candidate from its fitted
//! model, then the policy's choice. `cargo bench -p fogline-core --bench placement` (release).

use std::hint::black_box;
use std::time::{Duration, Instant};

use fogline_core::config::Tier;
use fogline_core::policy::{choose, Candidate, Weights};
use fogline_core::predict::{Analytic, Features, Model};

fn main() {
    let analytic = Analytic::default();
    // 100 places, each with a model fitted on its own linear latency.
    let mut models = Vec::new();
    for place in 0..100u64 {
        let mut m = Model::new(64);
        for i in 0..64u64 {
            let f = Features {
                payload_kb: (i % 16) as f64,
                rtt_ms: ((i * 7 + place) % 30) as f64,
                load_per_core: ((i * 3) % 8) as f64 / 4.0,
                cold: i % 9 == 0,
                service_ms: 3.0,
            };
            let y = 1.0
                + 1.2 * f.rtt_ms
                + 0.1 * f.payload_kb
                + 2.0 * f.load_per_core
                + if f.cold { 8.0 } else { 0.0 };
            m.observe(&f, y, &analytic);
        }
        m.refit(&analytic);
        models.push(m);
    }
    let fitted = models.iter().filter(|m| m.fitted()).count();
    let mut cands: Vec<Candidate> = (0..100)
        .map(|i| Candidate {
            tier: if i == 0 { Tier::Cloud } else { Tier::Edge },
            predicted_ms: 0.0,
            observations: 64,
        })
        .collect();
    let w = Weights::default();
    let mut times = Vec::with_capacity(100_000);
    let mut roll = 0.123_f64;
    for round in 0..110_000u64 {
        let f = Features {
            payload_kb: 1.0,
            rtt_ms: (round % 20) as f64,
            load_per_core: 0.5,
            cold: false,
            service_ms: 3.0,
        };
        let t = Instant::now();
        for (c, m) in cands.iter_mut().zip(&models) {
            c.predicted_ms = m.predict(&f, &analytic).0;
        }
        let d = choose(&cands, Some(50.0), &w, roll);
        let took = t.elapsed();
        black_box(d);
        roll = (roll * 9301.0 + 0.49297) % 1.0;
        if round >= 10_000 {
            times.push(took);
        }
    }
    times.sort();
    let p = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "placement decision, 100 candidates ({fitted} with fitted models), {} decisions",
        times.len()
    );
    println!(
        "predict all + choose: p50 {:.2} µs   p99 {:.2} µs",
        us(p(0.5)),
        us(p(0.99))
    );
}
