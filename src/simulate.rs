//! `fogline simulate`: loads a scenario and the files it names, runs the policies, prints
//! the comparison. Every problem with an input is one line naming the file, the line and
//! the problem.

use std::path::{Path, PathBuf};

use anyhow::anyhow;
use clap::Args;
use fogline_core::sim::{self, Policy};

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
    /// Policies run side by side on this many threads (default: one per core). The figures
    /// do not depend on it; the wall time and peak memory (one simulated world per thread) do.
    #[arg(long)]
    threads: Option<usize>,
    /// Leave out the scenario's peer clusters (`[[peer]]`): the same continuum unfederated,
    /// to see what a peering would change.
    #[arg(long)]
    without_peers: bool,
    /// Also write each policy's measured calls to DIR/<policy>.csv, in arrival order: the
    /// samples its figures come from, with where each ran. Columns: call and function
    /// (their numbers in the workload), latency_ms, tier (where it was answered),
    /// attempts, cold, wait_ms (for a core there), run_ms (the function's own, without a
    /// cold start), predicted_ms (the policy's for that place; empty for a policy that
    /// plans by an order rather than times). bench/placement_bootstrap.py reads them.
    #[arg(long, value_name = "DIR")]
    latencies: Option<PathBuf>,
}

pub fn run(a: SimArgs) -> anyhow::Result<()> {
    use fogline_node::simulate::{load, Files, Overrides};
    let policies = Policy::parse_list(&a.policy).map_err(|e| anyhow!("--policy: {e}"))?;
    let text = std::fs::read_to_string(&a.scenario)
        .map_err(|e| anyhow!("{}: {e}", a.scenario.display()))?;
    // Paths in the scenario are relative to it; paths on the command line to the caller.
    let base = a.scenario.parent().unwrap_or(Path::new("."));
    let overrides = Overrides {
        edge_rtt: a.edge_rtt,
        cloud_rtt: a.cloud_rtt,
        trace: a.trace,
    };
    let (mut s, inputs) = load(
        &a.scenario.display().to_string(),
        &text,
        base,
        &overrides,
        &Files::Anywhere,
    )?;
    if let Some(seed) = a.seed {
        s.seed = seed;
    }
    if a.without_peers {
        s.peers.clear();
    }
    if let Some(n) = a.invocations {
        if n == 0 {
            anyhow::bail!("--invocations must be at least 1");
        }
        s.invocations = n;
    }
    let t = std::time::Instant::now();
    let threads = match a.threads {
        Some(0) => anyhow::bail!("--threads must be at least 1"),
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let report = match &a.latencies {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| anyhow!("--latencies {}: {e}", dir.display()))?;
            sim::run_keeping_latencies(&s, &inputs, &policies, threads)
        }
        None => sim::run_on(&s, &inputs, &policies, threads),
    };
    let took = t.elapsed();
    if let Some(dir) = &a.latencies {
        for p in &report.policies {
            write_latencies(&dir.join(format!("{}.csv", p.name)), &p.latencies)?;
        }
    }
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.table());
        println!(
            "simulated in {:.1} s on {threads} thread{}",
            took.as_secs_f64(),
            if threads == 1 { "" } else { "s" }
        );
    }
    Ok(())
}

/// The header of a `--latencies` file: [`sim::Measured`]'s fields, in order.
const CALLS_HEADER: &str =
    "call,function,latency_ms,tier,attempts,cold,wait_ms,run_ms,predicted_ms";

/// One policy's measured calls, one line each under [`CALLS_HEADER`] (`predicted_ms`
/// empty for a policy whose plans are scores).
fn write_latencies(path: &Path, calls: &[sim::Measured]) -> anyhow::Result<()> {
    use std::io::Write;
    let fail = |e: std::io::Error| anyhow!("{}: {e}", path.display());
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).map_err(fail)?);
    writeln!(out, "{CALLS_HEADER}").map_err(fail)?;
    for m in calls {
        write!(
            out,
            "{},{},{},{},{},{},{},{},",
            m.call, m.function, m.latency_ms, m.tier, m.attempts, m.cold, m.wait_ms, m.run_ms
        )
        .map_err(fail)?;
        match m.predicted_ms {
            Some(ms) => writeln!(out, "{ms}"),
            None => writeln!(out),
        }
        .map_err(fail)?;
    }
    out.flush().map_err(fail)
}
