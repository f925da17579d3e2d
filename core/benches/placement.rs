//! One placement decision with 100 candidates, through the planner the router and the
//! simulator share: a prediction per place from its fitted model, then the policy's choice.
//! `cargo bench -p fogline-core --bench placement` (Criterion; release). Besides Criterion's
//! estimate it prints the p50 and p99 of single decisions timed one by one.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::Criterion;
use fogline_core::attempts::Outcome;
use fogline_core::config::Tier;
use fogline_core::placement::{PlaceInfo, Planner};
use fogline_core::policies::Call;
use fogline_core::policy::Weights;
use fogline_core::predict::Features;

fn setup() -> (Planner, Vec<String>) {
    let mut planner = Planner::new(64);
    let ids: Vec<String> = (0..100).map(|i| format!("edge-{i}")).collect();
    for (p, id) in ids.iter().enumerate() {
        for i in 0..64u64 {
            let f = Features {
                payload_kb: (i % 16) as f64,
                rtt_ms: ((i * 7 + p as u64) % 30) as f64,
                load_per_core: ((i * 3) % 8) as f64 / 4.0,
                cold: i % 9 == 0,
                service_ms: 3.0,
            };
            let y = 1.0
                + 1.2 * f.rtt_ms
                + 0.1 * f.payload_kb
                + 2.0 * f.load_per_core
                + if f.cold { 8.0 } else { 0.0 };
            planner.observe("f", id, &f, y, y, Some(3.0));
        }
    }
    planner.refit_due();
    // A tenth of the places lost a call, so each candidate's score carries its chance of a
    // loss, as a live router's do once a member failed under a call.
    let plan = planner
        .plan(&call(), &places(&ids, 0), 0.5)
        .expect("a plan");
    let lost = Outcome::Lost {
        sent: true,
        after_ms: 1000.0,
    };
    for i in (0..ids.len()).step_by(10) {
        planner.learn(&call(), &ids[i], &plan.scored[i], &lost);
    }
    (planner, ids)
}

fn call() -> Call<'static> {
    Call {
        function: "f",
        request_kb: 1.0,
        deadline_ms: Some(50.0),
        weights: Weights::default(),
        now_ms: 0.0,
    }
}

fn places(ids: &[String], round: u64) -> Vec<PlaceInfo<'_>> {
    ids.iter()
        .enumerate()
        .map(|(i, id)| PlaceInfo {
            id,
            key: fogline_core::placement::place_key(id),
            tier: if i == 0 { Tier::Cloud } else { Tier::Edge },
            rtt_ms: ((round + i as u64) % 20) as f64,
            load_per_core: 0.5,
            cores: 4,
            speed: Some(1.0),
            warm: true,
            service_ms: Some(3.0),
            truth_ms: None,
            own: Default::default(),
        })
        .collect()
}

fn main() {
    let (planner, ids) = setup();
    let call = call();
    let mut c = Criterion::default().configure_from_args();
    {
        let ps = places(&ids, 1);
        let mut roll = 0.123_f64;
        c.bench_function("placement decision, 100 candidates", |b| {
            b.iter(|| {
                roll = (roll * 9301.0 + 0.49297) % 1.0;
                black_box(planner.plan(&call, black_box(&ps), roll))
            })
        });
    }
    c.final_summary();

    // Single decisions timed one by one, for the percentiles.
    let mut times = Vec::with_capacity(100_000);
    let mut roll = 0.321_f64;
    for round in 0..110_000u64 {
        let ps = places(&ids, round);
        let t = Instant::now();
        let d = planner.plan(&call, &ps, roll);
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
        "placement decision, 100 candidates, {} timed one by one: p50 {:.2} µs   p99 {:.2} µs",
        times.len(),
        us(p(0.5)),
        us(p(0.99))
    );
}
