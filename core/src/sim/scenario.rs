//! A simulation scenario (`configs/sim/*.toml`): the continuum's shape, its links, the
//! workload and failures. Strict like every Fogline config: unknown keys are errors naming
//! the key, and every error names the file and the line.

use serde::Deserialize;

use super::data::SimError;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub version: u32,
    #[serde(default = "d_name")]
    pub name: String,
    #[serde(default = "d_seed")]
    pub seed: u64,
    /// Invocations simulated (the first `warmup` share is left out of the figures).
    #[serde(default = "d_invocations")]
    pub invocations: usize,
    #[serde(default = "d_warmup")]
    pub warmup: f64,
    #[serde(default = "d_devices")]
    pub devices: usize,
    #[serde(default = "d_sites")]
    pub sites: usize,
    #[serde(default = "d_edges_per_site")]
    pub edges_per_site: usize,
    /// Sites either side of a device's own whose edges it may also use.
    #[serde(default = "d_neighbor_sites")]
    pub neighbor_sites: usize,
    #[serde(default = "d_edge_cores")]
    pub edge_cores: u32,
    /// Edge node speeds relative to the reference machine, drawn uniformly from [lo, hi].
    #[serde(default = "d_edge_speed")]
    pub edge_speed: [f64; 2],
    #[serde(default = "d_cloud_cores")]
    pub cloud_cores: u32,
    #[serde(default = "d_cloud_speed")]
    pub cloud_speed: f64,
    /// Speed of a device running a function itself (0 disables running on devices).
    #[serde(default = "d_device_speed")]
    pub device_speed: f64,
    /// Mean offered load as a share of the edge tier's capacity.
    #[serde(default = "d_utilisation")]
    pub utilisation: f64,
    #[serde(default = "d_functions")]
    pub functions: usize,
    /// Execution times from the distribution are multiplied by this, then clipped.
    #[serde(default = "d_one")]
    pub exec_scale: f64,
    #[serde(default = "d_min_exec")]
    pub min_exec_ms: f64,
    #[serde(default = "d_max_exec")]
    pub max_exec_ms: f64,
    /// Spread of a call's service time around its function's mean (log-normal sigma).
    #[serde(default = "d_noise")]
    pub service_noise: f64,
    /// Request plus response size, KiB, uniform in [lo, hi].
    #[serde(default = "d_payload")]
    pub payload_kb: [f64; 2],
    #[serde(default = "d_bandwidth")]
    pub bandwidth_kb_per_ms: f64,
    /// Round-trip samples of a device's link to its edge (one ms value a line).
    pub edge_rtt: String,
    /// Round-trip samples of a device's link towards the cloud.
    pub cloud_rtt: String,
    /// Added to the cloud link: the distance from the access network to the data centre.
    #[serde(default = "d_cloud_extra")]
    pub cloud_extra_ms: f64,
    /// Added for an edge in another site than the device's.
    #[serde(default = "d_inter_site")]
    pub inter_site_ms: f64,
    /// How long a link keeps its round trip before a new one is drawn (radio conditions
    /// change, but not between two packets); within it, calls vary by `rtt_jitter`.
    #[serde(default = "d_coherence")]
    pub rtt_coherence_ms: f64,
    #[serde(default = "d_jitter")]
    pub rtt_jitter: f64,
    /// Extra time of a cold start, uniform in [lo, hi] per function.
    #[serde(default = "d_cold")]
    pub cold_start_ms: [f64; 2],
    /// An instance stays warm this long after its last call.
    #[serde(default = "d_keepalive")]
    pub keepalive_ms: f64,
    #[serde(default = "d_report")]
    pub report_interval_ms: u64,
    /// Mean time between failures of an edge node, and to repair it (0: no failures).
    #[serde(default = "d_mtbf")]
    pub mtbf_s: f64,
    #[serde(default = "d_mttr")]
    pub mttr_s: f64,
    /// How long a call lost with a failed node takes to be noticed and sent elsewhere.
    #[serde(default = "d_detect")]
    pub detect_ms: f64,
    /// A call slower than this missed its deadline (also the policy's deadline).
    #[serde(default = "d_deadline")]
    pub deadline_ms: f64,
    /// Share of the regression policy's placements spent exploring other places.
    #[serde(default = "d_explore")]
    pub explore: f64,
    /// A call's budget: tried at places until this passes (the function's timeout).
    #[serde(default = "d_timeout")]
    pub timeout_ms: f64,
    /// Calls of one function a node runs at once; beyond it the node answers 429 (the live
    /// `max_concurrency`, default 32).
    #[serde(default = "d_function_concurrency")]
    pub function_concurrency: u32,
    /// Calls a node admits per core (running and waiting); beyond it the node answers 429.
    #[serde(default = "d_queue_per_core")]
    pub queue_per_core: u32,
    /// How often a router pings each place, ms (0: as live, every report interval).
    #[serde(default)]
    pub ping_interval_ms: u64,
    /// Routers ask a cold place to load a function ahead of a forecast burst, as live
    /// routers do by default (`[router] prepare_ahead`), for every policy alike.
    #[serde(default = "d_true")]
    pub prepare_ahead: bool,
    /// Peer clusters the cloud's bridge is peered with (`[[peer]]`): each one more place
    /// for every router, reached through the cloud's link plus the bridge-to-bridge link.
    #[serde(default, rename = "peer")]
    pub peers: Vec<PeerCluster>,
    pub workload: Workload,
}

/// A peer cluster, as the consumer's routers see it: the share of its cores it offers,
/// their speed, and how far its bridge is from this cluster's.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PeerCluster {
    pub name: String,
    pub cores: u32,
    #[serde(default = "d_one")]
    pub speed: f64,
    /// Share of its cores offered (`fogline federation invite --share`), 0 to 1.
    #[serde(default = "d_share")]
    pub share: f64,
    /// Round trip between the two bridges, ms (added to the device's cloud link).
    pub link_ms: f64,
}

fn d_share() -> f64 {
    0.9
}

/// Where invocations come from: the Azure 2019 distributions, or a trace.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// Mean execution time per function (`value,probability`, ms).
    pub exec_cdf: Option<String>,
    /// Invocations per application: how popular each function is.
    pub popularity_cdf: Option<String>,
    /// Coefficient of variation of inter-arrival times: how bursty each function is.
    pub cv_cdf: Option<String>,
    /// A trace in the Azure 2021 format (`app,func,end_timestamp,duration`) instead.
    pub trace: Option<String>,
}

fn d_name() -> String {
    "scenario".into()
}
fn d_seed() -> u64 {
    1
}
fn d_invocations() -> usize {
    200_000
}
fn d_warmup() -> f64 {
    0.1
}
fn d_devices() -> usize {
    2000
}
fn d_sites() -> usize {
    20
}
fn d_edges_per_site() -> usize {
    3
}
fn d_neighbor_sites() -> usize {
    1
}
fn d_edge_cores() -> u32 {
    4
}
fn d_edge_speed() -> [f64; 2] {
    [0.5, 1.5]
}
fn d_cloud_cores() -> u32 {
    512
}
fn d_cloud_speed() -> f64 {
    1.5
}
fn d_device_speed() -> f64 {
    0.25
}
fn d_utilisation() -> f64 {
    0.7
}
fn d_functions() -> usize {
    200
}
fn d_one() -> f64 {
    1.0
}
fn d_min_exec() -> f64 {
    1.0
}
fn d_max_exec() -> f64 {
    2000.0
}
fn d_noise() -> f64 {
    0.2
}
fn d_payload() -> [f64; 2] {
    [0.5, 64.0]
}
fn d_bandwidth() -> f64 {
    12.5
}
fn d_cloud_extra() -> f64 {
    30.0
}
fn d_inter_site() -> f64 {
    6.0
}
fn d_coherence() -> f64 {
    2000.0
}
fn d_jitter() -> f64 {
    0.1
}
fn d_cold() -> [f64; 2] {
    [20.0, 200.0]
}
fn d_keepalive() -> f64 {
    600_000.0
}
fn d_report() -> u64 {
    1000
}
fn d_mtbf() -> f64 {
    900.0
}
fn d_mttr() -> f64 {
    60.0
}
fn d_detect() -> f64 {
    1000.0
}
fn d_deadline() -> f64 {
    1000.0
}
fn d_explore() -> f64 {
    0.02
}
fn d_true() -> bool {
    true
}
fn d_timeout() -> f64 {
    30_000.0
}
fn d_function_concurrency() -> u32 {
    32
}
fn d_queue_per_core() -> u32 {
    8
}

impl Scenario {
    /// How often routers ping places, ms.
    pub fn ping_interval(&self) -> u64 {
        if self.ping_interval_ms > 0 {
            self.ping_interval_ms
        } else {
            self.report_interval_ms
        }
    }

    pub fn parse(file: &str, text: &str) -> Result<Self, SimError> {
        let s: Scenario = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|sp| text[..sp.start.min(text.len())].matches('\n').count() + 1);
            SimError::at(file, line, e.message().trim().replace('\n', " "))
        })?;
        s.check(file)?;
        Ok(s)
    }

    fn check(&self, file: &str) -> Result<(), SimError> {
        let bad = |key: &str, problem: String| {
            Err(SimError::at(file, None, format!("`{key}`: {problem}")))
        };
        if self.version != 1 {
            return bad(
                "version",
                format!("{} is not supported; this build reads 1", self.version),
            );
        }
        if self.invocations == 0 || self.invocations > 100_000_000 {
            return bad(
                "invocations",
                format!("{} is outside 1..=100000000", self.invocations),
            );
        }
        if !(0.0..0.9).contains(&self.warmup) {
            return bad("warmup", format!("{} is outside 0..0.9", self.warmup));
        }
        if self.devices == 0 || self.sites == 0 || self.edges_per_site == 0 {
            return bad(
                "devices/sites/edges_per_site",
                "each must be at least 1".into(),
            );
        }
        if self.edge_cores == 0 || self.cloud_cores == 0 {
            return bad("edge_cores/cloud_cores", "each must be at least 1".into());
        }
        for (k, [lo, hi]) in [
            ("edge_speed", self.edge_speed),
            ("payload_kb", self.payload_kb),
            ("cold_start_ms", self.cold_start_ms),
        ] {
            if !(lo.is_finite() && hi.is_finite() && lo >= 0.0 && lo <= hi) {
                return bad(
                    k,
                    format!("[{lo}, {hi}] must be a range [lo, hi] with 0 <= lo <= hi"),
                );
            }
        }
        if self.edge_speed[0] <= 0.0 || self.cloud_speed <= 0.0 || self.device_speed < 0.0 {
            return bad(
                "edge_speed/cloud_speed/device_speed",
                "speeds must be positive".into(),
            );
        }
        if !(self.utilisation > 0.0 && self.utilisation < 5.0) {
            return bad(
                "utilisation",
                format!("{} is outside (0, 5)", self.utilisation),
            );
        }
        if self.functions == 0 {
            return bad("functions", "must be at least 1".into());
        }
        for p in &self.peers {
            if let Err(e) = crate::federation::validate_peer_name(&p.name) {
                return bad("peer.name", e);
            }
            let ok = p.cores > 0
                && p.speed.is_finite()
                && p.speed > 0.0
                && p.share > 0.0
                && p.share <= 1.0
                && p.link_ms.is_finite()
                && p.link_ms >= 0.0;
            if !ok {
                return bad(
                    "peer",
                    format!(
                        "{}: needs cores >= 1, speed > 0, share in (0, 1] and link_ms >= 0",
                        p.name
                    ),
                );
            }
        }
        if !(self.min_exec_ms > 0.0 && self.min_exec_ms <= self.max_exec_ms) {
            return bad(
                "min_exec_ms/max_exec_ms",
                "need 0 < min_exec_ms <= max_exec_ms".into(),
            );
        }
        if self.bandwidth_kb_per_ms <= 0.0 || self.rtt_coherence_ms <= 0.0 {
            return bad(
                "bandwidth_kb_per_ms/rtt_coherence_ms",
                "must be positive".into(),
            );
        }
        if !(0.0..=1.0).contains(&self.explore) {
            return bad("explore", format!("{} is outside 0..=1", self.explore));
        }
        if !(self.timeout_ms >= 1.0 && self.timeout_ms.is_finite()) {
            return bad(
                "timeout_ms",
                format!("{} must be at least 1", self.timeout_ms),
            );
        }
        if self.function_concurrency == 0 || self.queue_per_core == 0 {
            return bad(
                "function_concurrency/queue_per_core",
                "each must be at least 1".into(),
            );
        }
        if self.report_interval_ms < 10 {
            return bad("report_interval_ms", "must be at least 10".into());
        }
        if self.mtbf_s < 0.0 || self.mttr_s < 0.0 || (self.mtbf_s > 0.0 && self.mttr_s == 0.0) {
            return bad(
                "mtbf_s/mttr_s",
                "failures need both a positive mean time between and to repair".into(),
            );
        }
        let w = &self.workload;
        if w.trace.is_none()
            && (w.exec_cdf.is_none() || w.popularity_cdf.is_none() || w.cv_cdf.is_none())
        {
            return bad(
                "workload",
                "give `trace`, or all of `exec_cdf`, `popularity_cdf` and `cv_cdf`".into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str =
        "version = 1\nedge_rtt = \"e.txt\"\ncloud_rtt = \"c.txt\"\n[workload]\ntrace = \"t.csv\"\n";

    #[test]
    fn a_peer_cluster_must_make_sense() {
        let good = "version = 1\nedge_rtt = \"e.txt\"\ncloud_rtt = \"c.txt\"\n[[peer]]\nname = \"cluster-b\"\ncores = 64\nlink_ms = 20\n[workload]\ntrace = \"t.csv\"\n";
        let s = Scenario::parse("s.toml", good).unwrap();
        assert_eq!((s.peers.len(), s.peers[0].share), (1, 0.9));
        let e = Scenario::parse("s.toml", &good.replace("cores = 64", "cores = 0"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`peer`") && e.contains("cores >= 1"), "{e}");
        let e = Scenario::parse("s.toml", &good.replace("cluster-b", "Bad Name"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("peer.name"), "{e}");
    }

    #[test]
    fn a_minimal_scenario_parses() {
        let s = Scenario::parse("s.toml", MIN).unwrap();
        assert_eq!(s.utilisation, 0.7);
        assert_eq!(s.workload.trace.as_deref(), Some("t.csv"));
    }

    #[test]
    fn errors_name_the_file_the_line_and_the_key() {
        let text = MIN.replace("cloud_rtt", "cloud_rtt_ms");
        let e = Scenario::parse("s.toml", &text).unwrap_err().to_string();
        assert!(
            e.starts_with("s.toml:3: ") && e.contains("cloud_rtt_ms"),
            "{e}"
        );
        let e = Scenario::parse("s.toml", &format!("{MIN}utilisation = \"high\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("s.toml:"), "{e}");
        let text = MIN.replace("version = 1\n", "version = 1\nedge_speed = [2.0, 1.0]\n");
        let e = Scenario::parse("s.toml", &text).unwrap_err().to_string();
        assert!(e.contains("`edge_speed`"), "{e}");
        let text = MIN.replace("trace = \"t.csv\"", "exec_cdf = \"x\"");
        let e = Scenario::parse("s.toml", &text).unwrap_err().to_string();
        assert!(e.contains("`workload`"), "{e}");
    }
}
