//! Placement quality on the six placement scenarios in `configs/sim/` (all but `large.toml`,
//! the scale scenario, run by hand for its timing) over three seeds,
//! through `fogline simulate --json`: the faithful simulator (candidates built only from
//! what a live router knows, nodes that answer 429 past their limits), every policy on the
//! same workload.
//!
//! What is asserted is what the faithful simulator shows today, not the bar, which
//! is not met everywhere (the README's placement table says where, and why): the regression
//! policy's p99 and mean within 1.15x of the oracle's and no worse than the best other
//! policy's. The bounds below are guards that catch a regression of placement quality; the
//! figures printed beside them are the measured ones.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::HashMap;

use common::*;
use serde_json::Value;

const SCENARIOS: [&str; 6] = [
    "bursty-azure",
    "far-small-cloud",
    "capable-devices",
    "failing-edges",
    "sparse",
    "mmwave",
];

fn run(scenario: &str, seed: u64) -> HashMap<String, Value> {
    let out = run_ok(fogline().current_dir(repo(".")).args([
        "simulate",
        "--scenario",
        &format!("configs/sim/{scenario}.toml"),
        "--policy",
        "all",
        "--seed",
        &seed.to_string(),
        "--json",
    ]));
    let v: Value = serde_json::from_str(&out).unwrap();
    v["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap().to_string(), p.clone()))
        .collect()
}

fn f(p: &Value, k: &str) -> f64 {
    p[k].as_f64().unwrap()
}

#[test]
fn regression_stays_near_the_oracle_and_beats_the_static_policies_on_every_scenario() {
    // Over every cell, the geometric means of regression's p99 and mean against the oracle's.
    let (mut log_p99, mut log_mean, mut cells) = (0.0, 0.0, 0.0);
    for scenario in SCENARIOS {
        for seed in [1, 2, 3] {
            let p = run(scenario, seed);
            let (reg, oracle) = (&p["regression"], &p["oracle"]);
            let others: Vec<&Value> = p
                .iter()
                .filter(|(n, _)| *n != "regression" && *n != "oracle")
                .map(|(_, v)| v)
                .collect();
            let best = |k: &str| others.iter().map(|v| f(v, k)).fold(f64::INFINITY, f64::min);
            let (p99, mean) = (
                f(reg, "p99_ms") / f(oracle, "p99_ms"),
                f(reg, "mean_ms") / f(oracle, "mean_ms"),
            );
            let (vs_p99, vs_mean) = (
                f(reg, "p99_ms") / best("p99_ms"),
                f(reg, "mean_ms") / best("mean_ms"),
            );
            let err = f(reg, "prediction_error");
            eprintln!(
                "{scenario:16} seed {seed}: regression/oracle p99 {p99:.2}x mean {mean:.2}x; regression/best other p99 {vs_p99:.2}x mean {vs_mean:.2}x; median prediction error {:.0} % ({:.0} % where the place had run the function)",
                err * 100.0,
                f(reg, "prediction_error_seen") * 100.0
            );
            assert_eq!(f(oracle, "failed"), 0.0, "{scenario} seed {seed}");
            // The widest cells are `far-small-cloud`'s, a continuum offered all its edges
            // can take, where the router hears outcomes and members' times only as they come
            // back: seed 2 at p99 (1.47x today, 1.77x in earlier builds), seed 3 at mean
            // (1.10x today, 1.33x earlier); its high-load seeds swing with small changes
            // (seed 3 was 2.04x and 1.72x before the retry budget).
            assert!(p99 <= 2.2 && mean <= 1.8, "{scenario} seed {seed}: regression against the oracle: p99 {p99:.2}x, mean {mean:.2}x");
            log_p99 += p99.ln();
            log_mean += mean.ln();
            cells += 1.0;
            assert!(vs_mean <= 1.35, "{scenario} seed {seed}: regression's mean is {vs_mean:.2}x the best other policy's");
            // The static policies that ignore load collapse somewhere; the learnt one never
            // falls behind them at the tail.
            for stat in ["nearest-edge", "round-robin", "device-only"] {
                assert!(
                    f(reg, "p99_ms") <= f(&p[stat], "p99_ms"),
                    "{scenario} seed {seed}: {stat} beat regression at p99"
                );
            }
            // On `sparse` most calls are a function's first anywhere, predicted at the
            // expected size of a function (a log-normal mean, above most functions' sizes):
            // over all calls the error is looser there than over calls at a place that had
            // run the function.
            let (bound, bound_seen) = if scenario == "sparse" {
                (0.6, 0.5)
            } else {
                (0.3, 0.3)
            };
            let seen = f(reg, "prediction_error_seen");
            assert!(
                err <= bound && seen <= bound_seen,
                "{scenario} seed {seed}: median prediction error {err:.2} (bound {bound}), {seen:.2} where the place had run the function (bound {bound_seen})"
            );
        }
    }
    let (p99, mean) = ((log_p99 / cells).exp(), (log_mean / cells).exp());
    eprintln!("over every cell (geometric mean): regression/oracle p99 {p99:.3}x mean {mean:.3}x");
    // Deterministic for these seeds: 1.069x and 0.999x on the build where exploration
    // visits only places about as fast as the best; 1.068x and 0.998x on the build where
    // a function's cold starts are weighed against what its places load in now, and on
    // the next, where the simulated device holds a function warm once its first run there
    // is done; 1.068x and 0.999x on the build where a function's size pools what members
    // report of it with the router's own runs (1.071x and 1.000x before
    // a run's slowness was taken against that size); 1.070x and 0.999x on the build where simulated members
    // report at once when their load moves a lot, as live ones do; earlier 1.073x and
    // 0.996x, with a call lost with its
    // place counted and priced (1.076x and 0.998x before); 1.076x and 0.998x with routers
    // pinging every interval (1.116x and 1.009x before, pinging every 30); 1.116x and 1.009x with a call
    // waiting behind the router's own calls at a place for what it expected of them
    // (1.136x and 1.022x before); 1.136x and 1.022x with a function taken for
    // warm where the router's call of it was answered since the member's report (1.127x
    // and 1.017x before: see `far-small-cloud` in docs/placement.md); 1.156x and 1.024x with
    // members reporting out
    // of step and models' offsets, risk and fits moving less with each call (1.160x and
    // 1.030x before; 1.172x and 1.037x before members' times were taken in as calls end
    // and the retry budget), 1.172x and 1.037x since the simulated router
    // hears each outcome when it comes back (it learnt it as soon as the simulator worked
    // it out: 1.108x and 1.013x; 1.115x and 1.026x before the size of a function nothing
    // is known of was the default timeout's worth of work); 1.127x and 1.030x earlier;
    // 1.144x and 1.038x before a
    // device was loaded off the call's path; 1.140x and 1.055x before a
    // member's reported service time left out cold starts; 1.149x and 1.059x before
    // answers carried the member's load; 1.151x and 1.062x before a
    // call was taken to wait behind the place's work rather than copies of itself; 1.149x
    // and 1.075x before a function new to a router was sized by what the places report of
    // it and a cold device was loaded when its later calls would run warm; 1.184x and 1.089x while a
    // function never run anywhere was sized as the plain mean of first sizes; 1.188x and
    // 1.090x before exploration's extra time was capped at 20 ms; 1.172x and 1.098x before a
    // model's own calls corrected the analytic estimate until its fit; 1.188x and 1.113x
    // while a place's load was its report's, or the router's own calls there when more;
    // 1.228x and 1.113x while a timeout benched a place that kept reporting with cores free; 1.324x and 1.132x before
    // the risk term, the cheaper re-probing, the mean size prior and the cold-start fix.
    assert!(
        p99 <= 1.19 && mean <= 1.08,
        "regression against the oracle over every cell: p99 {p99:.3}x, mean {mean:.3}x"
    );
}
