//! `fogline simulate`, end to end through the binary: the comparison as a table and as JSON
//! with every policy, the scenario's inputs replaced by flags (samples, trace, seed), and
//! one-line errors naming the file and line of a bad input.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use common::*;
use serde_json::Value;

const NAMES: [&str; 9] = [
    "regression",
    "a3e",
    "mu",
    "nearest-edge",
    "least-loaded",
    "round-robin",
    "cloud-only",
    "device-only",
    "oracle",
];

fn sim(args: &[&str]) -> std::process::Command {
    let mut c = fogline();
    c.current_dir(repo(".")).arg("simulate").args(args);
    c
}

#[test]
fn the_bursty_scenario_compares_every_policy_as_json_and_as_a_table() {
    let out = run_ok(&mut sim(&[
        "--scenario",
        "configs/sim/bursty-azure.toml",
        "--policy",
        "all",
        "--invocations",
        "20000",
        "--json",
    ]));
    let v: Value = serde_json::from_str(&out).unwrap();
    let policies = v["policies"].as_array().unwrap();
    let names: Vec<&str> = policies
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, NAMES);
    for p in policies {
        for k in ["p50_ms", "p95_ms", "p99_ms", "deadline_miss", "cold_starts"] {
            assert!(p[k].as_f64().unwrap() >= 0.0, "{k} of {p}");
        }
        let share: f64 = ["device", "edge", "cloud"]
            .iter()
            .map(|t| p["tier_share"][t].as_f64().unwrap())
            .sum();
        assert!((share - 1.0).abs() < 1e-6, "{p}");
        assert!(p["p50_ms"].as_f64() <= p["p99_ms"].as_f64());
    }
    assert!(policies[0]["prediction_error"].as_f64().unwrap() >= 0.0);
    assert!(policies[1]["prediction_error"].is_null());
    // Over the calls at a place that had run the function before: only where predicted.
    assert!(policies[0]["prediction_error_seen"].as_f64().unwrap() >= 0.0);
    assert!(policies[1]["prediction_error_seen"].is_null());
    // The floor under the error (what the runs' own straying leaves to miss): below it.
    let floor = policies[0]["prediction_error_floor"].as_f64().unwrap();
    assert!(
        floor > 0.0 && floor < policies[0]["prediction_error"].as_f64().unwrap(),
        "{floor}"
    );
    assert!(policies[1]["prediction_error_floor"].is_null());
    // Nor has the oracle one: it knows how each run strays.
    let oracle = policies.iter().find(|p| p["name"] == "oracle").unwrap();
    assert!(oracle["prediction_error_floor"].is_null(), "{oracle}");
    // The same seed gives the same figures, on any number of threads.
    let again = run_ok(&mut sim(&[
        "--scenario",
        "configs/sim/bursty-azure.toml",
        "--invocations",
        "20000",
        "--json",
        "--threads",
        "1",
    ]));
    assert_eq!(out, again);
    let table = run_ok(&mut sim(&[
        "--scenario",
        "configs/sim/bursty-azure.toml",
        "--policy",
        "regression,oracle",
        "--invocations",
        "5000",
        "--seed",
        "3",
    ]));
    assert!(table.contains("POLICY") && table.contains("regression") && table.contains("oracle"));
    assert!(table.contains("(seed 3)"), "{table}");
    assert!(
        table.contains("on 1 thread") || table.contains("threads"),
        "{table}"
    );
    assert!(!table.contains("nearest-edge"));
}

#[test]
fn every_scenario_in_configs_sim_loads() {
    for entry in std::fs::read_dir(repo("configs/sim")).unwrap() {
        let path = entry.unwrap().path();
        let out = run_ok(&mut sim(&[
            "--scenario",
            path.to_str().unwrap(),
            "--policy",
            "oracle",
            "--invocations",
            "2000",
        ]));
        assert!(out.contains("oracle"), "{}: {out}", path.display());
    }
}

#[test]
fn flags_replace_the_scenarios_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let rtt = dir.path().join("lan.txt");
    std::fs::write(&rtt, "# a quiet LAN\n1.0\n1.2\n0.9\n").unwrap();
    // A small trace in the Azure 2021 format: two functions, a call every 10 ms.
    let mut trace = String::from("app,func,end_timestamp,duration\n");
    for i in 0..3000 {
        let f = if i % 3 == 0 { "resize" } else { "detect" };
        trace.push_str(&format!("app1,{f},{:.3},0.020\n", 100.0 + i as f64 * 0.01));
    }
    let tpath = dir.path().join("trace.csv");
    std::fs::write(&tpath, trace).unwrap();
    let out = run_ok(&mut sim(&[
        "--scenario",
        "configs/sim/bursty-azure.toml",
        "--edge-rtt",
        rtt.to_str().unwrap(),
        "--trace",
        tpath.to_str().unwrap(),
        "--policy",
        "nearest-edge",
        "--json",
    ]));
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["invocations"], 3000);
    let p = &v["policies"][0];
    // Every call went to an edge over the 1 ms LAN (plus at most 2 ms to a farther node).
    assert_eq!(p["tier_share"]["edge"], 1.0);
    assert!(p["p50_ms"].as_f64().unwrap() < 60.0, "{p}");
}

#[test]
fn bad_inputs_are_one_line_naming_file_line_and_problem() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.txt");
    std::fs::write(&bad, "12.5\n13\nfast\n").unwrap();
    let err = run_err(&mut sim(&[
        "--scenario",
        "configs/sim/bursty-azure.toml",
        "--cloud-rtt",
        bad.to_str().unwrap(),
    ]));
    assert_eq!(
        err.trim(),
        format!(
            "error: {}:3: sample \"fast\" is not a number",
            bad.display()
        )
    );
    let scen = dir.path().join("s.toml");
    std::fs::write(
        &scen,
        "version = 1\nedge_rtt = \"e.txt\"\ncloud_rtt = \"c.txt\"\nsites = -3\n[workload]\ntrace = \"t.csv\"\n",
    )
    .unwrap();
    let err = run_err(&mut sim(&["--scenario", scen.to_str().unwrap()]));
    assert!(
        err.starts_with(&format!("error: {}:4: ", scen.display())),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let trace = dir.path().join("t.csv");
    std::fs::write(&trace, "a,f,10,0.1\na,f,11\n").unwrap();
    let err = run_err(&mut sim(&[
        "--scenario",
        "configs/sim/bursty-azure.toml",
        "--trace",
        trace.to_str().unwrap(),
    ]));
    assert!(
        err.contains(&format!("{}:2: expected 4 columns", trace.display())),
        "{err}"
    );
    let err = run_err(&mut sim(&[
        "--scenario",
        "configs/sim/bursty-azure.toml",
        "--policy",
        "fastest",
    ]));
    assert!(err.contains("unknown policy \"fastest\""), "{err}");
    let err = run_err(&mut sim(&[
        "--scenario",
        "configs/sim/bursty-azure.toml",
        "--threads",
        "0",
    ]));
    assert!(err.contains("--threads must be at least 1"), "{err}");
    let err = run_err(&mut sim(&["--scenario", "configs/sim/nope.toml"]));
    assert!(err.contains("configs/sim/nope.toml"), "{err}");
}

#[test]
fn latencies_are_written_per_policy_as_the_figures_samples() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("calls");
    let out = run_ok(&mut sim(&[
        "--scenario",
        "configs/sim/bursty-azure.toml",
        "--policy",
        "regression,cloud-only",
        "--invocations",
        "5000",
        "--json",
        "--latencies",
        out_dir.to_str().unwrap(),
    ]));
    let v: Value = serde_json::from_str(&out).unwrap();
    for p in v["policies"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap();
        let text = std::fs::read_to_string(out_dir.join(format!("{name}.csv"))).unwrap();
        let mut lines = text.lines();
        assert_eq!(
            lines.next(),
            Some("call,function,latency_ms,tier,attempts,cold,wait_ms,run_ms,predicted_ms")
        );
        let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
        assert!(rows.len() > 4000, "{name}: {} calls", rows.len());
        let num = |r: &[&str], i: usize| -> f64 { r[i].parse().unwrap() };
        let mean = rows.iter().map(|r| num(r, 2)).sum::<f64>() / rows.len() as f64;
        let want = p["mean_ms"].as_f64().unwrap();
        assert!(
            (mean - want).abs() < 1e-3 * want,
            "{name}: {mean} vs {want}"
        );
        // Where they ran: the tiers' shares are the report's.
        for (tier, share) in p["tier_share"].as_object().unwrap() {
            let here = rows.iter().filter(|r| r[3] == tier).count() as f64;
            let share = share.as_f64().unwrap();
            assert!(
                (here / rows.len() as f64 - share).abs() < 1e-9,
                "{name} {tier}"
            );
        }
        for r in &rows {
            assert_eq!(r.len(), 9, "{name}: {r:?}");
            assert!(
                num(r, 4) >= 1.0 && matches!(r[5], "true" | "false"),
                "{r:?}"
            );
            assert!(num(r, 2) + 1e-2 >= num(r, 6) + num(r, 7), "{r:?}");
            // Regression plans by predicted times; cloud-only by an order, and says none.
            assert_eq!(r[8].is_empty(), name == "cloud-only", "{name}: {r:?}");
        }
    }
    // Somewhere it cannot write: named, before anything is simulated.
    let file = dir.path().join("taken");
    std::fs::write(&file, "").unwrap();
    let err = run_err(&mut sim(&[
        "--scenario",
        "configs/sim/bursty-azure.toml",
        "--latencies",
        file.to_str().unwrap(),
    ]));
    assert!(
        err.contains(&format!("--latencies {}", file.display())),
        "{err}"
    );
}
