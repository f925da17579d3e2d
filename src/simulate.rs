//! `fogline simulate`: loads a scenario and the files it names, runs the policies, prints
//! the comparison. Every problem with an input is one line naming the file, the line and
//! the problem.

use std::path::{Path, PathBuf};

use anyhow::anyhow;
use clap::Args;
use fogline_core::sim::{self, Cdf, Inputs, Policy, Samples, Scenario, WorkloadData};

#[derive(Args)]
pub struct SimArgs {
    /// The scenario (see configs/sim/).
    #[arg(long)]
    scenario: PathBuf,
    /// `all`, or policies separated by commas: regression, a3e, nearest-edge,
    /// least-loaded, round-robin, cloud-only, device-only, oracle.
    #[arg(long, default_value = "all")]
    policy: String,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Round-trip samples of the devices' link to the edge (one ms value a line).
    #[arg(long)]
    edge_rtt: Option<PathBuf>,
    /// Round-trip samples of the devices' link towards the cloud.
    #[arg(long)]
    cloud_rtt: Option<PathBuf>,
    /// An Azure 2021-format trace (app,func,end_timestamp,duration) as the workload.
    #[arg(long)]
    trace: Option<PathBuf>,
    #[arg(long)]
    seed: Option<u64>,
    /// Overrides the scenario's number of invocations.
    #[arg(long)]
    invocations: Option<usize>,
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).map_err(|e| anyhow!("{}: {e}", path.display()))
}

pub fn run(a: SimArgs) -> anyhow::Result<()> {
    let policies = Policy::parse_list(&a.policy).map_err(|e| anyhow!("--policy: {e}"))?;
    let text = read(&a.scenario)?;
    let mut s = Scenario::parse(&a.scenario.display().to_string(), &text)?;
    if let Some(seed) = a.seed {
        s.seed = seed;
    }
    if let Some(n) = a.invocations {
        if n == 0 {
            anyhow::bail!("--invocations must be at least 1");
        }
        s.invocations = n;
    }
    // Paths in the scenario are relative to it; paths on the command line to the caller.
    let base = a.scenario.parent().unwrap_or(Path::new("."));
    let from_scenario = |p: &str| base.join(p);
    let samples = |path: PathBuf| -> anyhow::Result<Samples> {
        Ok(Samples::parse(&path.display().to_string(), &read(&path)?)?)
    };
    let cdf = |path: PathBuf| -> anyhow::Result<Cdf> {
        Ok(Cdf::parse(&path.display().to_string(), &read(&path)?)?)
    };
    let edge_rtt = samples(a.edge_rtt.unwrap_or_else(|| from_scenario(&s.edge_rtt)))?;
    let cloud_rtt = samples(a.cloud_rtt.unwrap_or_else(|| from_scenario(&s.cloud_rtt)))?;
    let trace = a
        .trace
        .or_else(|| s.workload.trace.as_deref().map(from_scenario));
    let workload = match trace {
        Some(path) => {
            let (calls, names) =
                sim::data::parse_trace(&path.display().to_string(), &read(&path)?)?;
            WorkloadData::Trace {
                calls,
                functions: names.len(),
            }
        }
        None => {
            let w = &s.workload;
            let need = |p: &Option<String>, key: &str| -> anyhow::Result<PathBuf> {
                p.as_deref()
                    .map(from_scenario)
                    .ok_or_else(|| anyhow!("{}: `workload.{key}` is missing", a.scenario.display()))
            };
            WorkloadData::Azure {
                exec: cdf(need(&w.exec_cdf, "exec_cdf")?)?,
                popularity: cdf(need(&w.popularity_cdf, "popularity_cdf")?)?,
                cv: cdf(need(&w.cv_cdf, "cv_cdf")?)?,
            }
        }
    };
    let inputs = Inputs {
        edge_rtt,
        cloud_rtt,
        workload,
    };
    let t = std::time::Instant::now();
    let report = sim::run(&s, &inputs, &policies);
    let took = t.elapsed();
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.table());
        println!("simulated in {:.1} s", took.as_secs_f64());
    }
    Ok(())
}
