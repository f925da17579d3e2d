//! Prometheus metrics, in the text exposition format.
//!
//! Names follow the OpenFaaS gateway where one exists (`gateway_function_invocation_total`,
//! `gateway_functions_seconds`), so existing dashboards work; Fogline's own start with
//! `fogline_`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use fogline_core::service::{ServiceAverage, Ticket};

const BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// A latency histogram with fixed buckets; lock-free to observe.
#[derive(Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| s <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_nanos
            .fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cumulative += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

/// Per-function series.
#[derive(Default)]
pub struct FunctionMetrics {
    pub latency: Histogram,
    pub cold_start: Histogram,
    pub warm_start: Histogram,
    codes: Mutex<BTreeMap<u16, u64>>,
    /// Recent service time: the average of its runs in the order they started (weight
    /// 1/`SERVICE_AVERAGE`: routers judge how far it strays by chance from that weight).
    service: Mutex<ServiceAverage>,
}

/// A run of a function, counted in its service time's average when it ends
/// ([`ServiceRun::ran`]); dropped without, it is passed over (failed, or abandoned by
/// its caller), so that the runs started after it are not held up.
pub struct ServiceRun<'a> {
    metrics: &'a FunctionMetrics,
    ticket: Option<Ticket>,
}

impl ServiceRun<'_> {
    /// It ran for `d`: taken in once the runs that started before it have ended.
    pub fn ran(mut self, d: Duration) {
        if let Some(t) = self.ticket.take() {
            self.metrics.end(t, Some(d.as_secs_f64() * 1e3));
        }
    }
}

impl Drop for ServiceRun<'_> {
    fn drop(&mut self) {
        if let Some(t) = self.ticket.take() {
            self.metrics.end(t, None);
        }
    }
}

impl FunctionMetrics {
    /// A run starts (see [`ServiceAverage`] for why the order counts).
    pub fn start_service(&self) -> ServiceRun<'_> {
        let ticket = self.service().start();
        ServiceRun {
            metrics: self,
            ticket: Some(ticket),
        }
    }

    fn end(&self, t: Ticket, ms: Option<f64>) {
        self.service().end(t, ms);
    }

    fn service(&self) -> std::sync::MutexGuard<'_, ServiceAverage> {
        self.service.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Recent service time in milliseconds, if the function has run.
    pub fn service_ms(&self) -> Option<f32> {
        self.service().mean().map(|ms| ms as f32)
    }

    pub fn count(&self, code: u16) {
        *self
            .codes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(code)
            .or_default() += 1;
    }

    pub fn total(&self) -> u64 {
        self.codes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .sum()
    }
}

/// Selects one of a function's histograms.
type Pick = fn(&FunctionMetrics) -> &Histogram;

#[derive(Default)]
pub struct Metrics {
    functions: RwLock<BTreeMap<String, Arc<FunctionMetrics>>>,
    /// Calls that had to load their function's code (or start its container) first, and
    /// calls that found it warm, over every function since start.
    pub cold_starts: AtomicU64,
    pub warm_starts: AtomicU64,
    /// CoAP datagrams dropped because they were not CoAP.
    pub coap_malformed: AtomicU64,
    /// QoS 2 MQTT messages the broker delivered again after they had run here: acknowledged
    /// again, not run again.
    pub mqtt_duplicates: AtomicU64,
    /// Requests refused for who sent them, by labels (`reason`, and what was refused).
    refusals: std::sync::Mutex<BTreeMap<String, u64>>,
}

/// Point-in-time values rendered beside the series.
pub struct Gauges {
    pub instances_in_use: u32,
    pub instance_slots: u32,
    pub async_queued: usize,
    pub functions: usize,
    /// Mesh bytes sent and received so far (zero without a mesh).
    pub mesh_sent: u64,
    pub mesh_received: u64,
    /// Mesh connections open now.
    pub mesh_connections: u64,
    /// Whole reports and proofs refused because a member spoke for another.
    pub mesh_forged: u64,
    /// Compiled code kept and made by the sandboxes.
    pub code: crate::executor::CodeCache,
    /// When this member's certificate expires, unix seconds (0: it has none).
    pub certificate_expiry: u64,
}

impl Metrics {
    pub fn function(&self, name: &str) -> Arc<FunctionMetrics> {
        if let Some(m) = self
            .functions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
        {
            return m.clone();
        }
        self.functions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    /// Recent service time of every function that has run, in milliseconds.
    pub fn service_times(&self) -> Vec<(String, f32)> {
        let fns = self.functions.read().unwrap_or_else(|p| p.into_inner());
        fns.iter()
            .filter_map(|(k, m)| m.service_ms().map(|v| (k.clone(), v)))
            .collect()
    }

    pub fn remove(&self, name: &str) {
        self.functions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
    }

    /// Counts a refusal; `labels` say why, e.g. `reason="role",role="client",action="deploy"`.
    pub fn refused(&self, labels: String) {
        *self
            .refusals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(labels)
            .or_insert(0) += 1;
    }

    /// Refusals counted with exactly these labels.
    pub fn refusals(&self, labels: &str) -> u64 {
        self.refusals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(labels)
            .copied()
            .unwrap_or(0)
    }

    pub fn render(&self, g: &Gauges) -> String {
        let mut out = String::with_capacity(4096);
        out.push_str("# HELP fogline_refusals_total Requests refused for who sent them (role, identity, token), by reason.\n# TYPE fogline_refusals_total counter\n");
        for (labels, n) in self
            .refusals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(out, "fogline_refusals_total{{{labels}}} {n}");
        }
        let fns = self.functions.read().unwrap_or_else(|p| p.into_inner());
        out.push_str(
            "# HELP gateway_function_invocation_total Function invocations by status code.\n",
        );
        out.push_str("# TYPE gateway_function_invocation_total counter\n");
        for (name, m) in fns.iter() {
            for (code, n) in m.codes.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                let _ = writeln!(out, "gateway_function_invocation_total{{function_name=\"{name}\",code=\"{code}\"}} {n}");
            }
        }
        let series: [(&str, &str, Pick); 3] = [
            (
                "gateway_functions_seconds",
                "End-to-end invocation latency.",
                |m| &m.latency,
            ),
            (
                "fogline_cold_start_seconds",
                "Load plus instantiate time of calls that had to load the function's code.",
                |m| &m.cold_start,
            ),
            (
                "fogline_instantiate_seconds",
                "Instantiate time of calls whose code was already loaded.",
                |m| &m.warm_start,
            ),
        ];
        for (metric, help, pick) in series {
            let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} histogram");
            for (name, m) in fns.iter() {
                pick(m).render(&mut out, metric, &format!("function_name=\"{name}\""));
            }
        }
        let gauges = [
            (
                "fogline_instances_in_use",
                "Sandbox instances running now.",
                g.instances_in_use as u64,
            ),
            (
                "fogline_instance_slots",
                "Most sandbox instances at once.",
                g.instance_slots as u64,
            ),
            (
                "fogline_async_queued",
                "Async calls accepted and not yet finished.",
                g.async_queued as u64,
            ),
            (
                "gateway_service_count",
                "Deployed functions.",
                g.functions as u64,
            ),
            (
                "fogline_mesh_connections",
                "Mesh connections open now (one per other member in a settled mesh).",
                g.mesh_connections,
            ),
            (
                "fogline_code_in_memory",
                "Compiled modules held in memory (at most wasm.cache_max).",
                g.code.in_memory,
            ),
            (
                "fogline_certificate_expiry_timestamp_seconds",
                "When this member's certificate expires (unix seconds; 0 without one). Members with [renew] renew it at two thirds of its life.",
                g.certificate_expiry,
            ),
            (
                "fogline_code_disk_bytes",
                "Bytes of compiled artifacts on disk (at most wasm.disk_cache_max).",
                g.code.disk_bytes,
            ),
        ];
        for (metric, help, v) in gauges {
            let _ = writeln!(
                out,
                "# HELP {metric} {help}\n# TYPE {metric} gauge\n{metric} {v}"
            );
        }
        for (metric, help, v) in [
            (
                "fogline_cold_starts_total",
                "Calls that had to load their function's code or start its instance first.",
                self.cold_starts.load(Ordering::Relaxed),
            ),
            (
                "fogline_warm_starts_total",
                "Calls that found their function warm.",
                self.warm_starts.load(Ordering::Relaxed),
            ),
            (
                "fogline_mesh_forged_total",
                "Mesh reports and proofs refused because the sender is not the member it spoke for.",
                g.mesh_forged,
            ),
            (
                "fogline_coap_malformed_total",
                "CoAP datagrams dropped because they could not be decoded.",
                self.coap_malformed.load(Ordering::Relaxed),
            ),
            (
                "fogline_mqtt_duplicates_total",
                "QoS 2 MQTT messages delivered again after they had run here (acknowledged again, not run again).",
                self.mqtt_duplicates.load(Ordering::Relaxed),
            ),
            (
                "fogline_compiles_total",
                "Modules compiled from their code (concurrent cold calls of one module compile it once).",
                g.code.compiles,
            ),
            (
                "fogline_artifact_loads_total",
                "Modules loaded from a compiled artifact on disk.",
                g.code.artifact_loads,
            ),
            (
                "fogline_mesh_sent_bytes_total",
                "Bytes this member sent on its mesh connections (gossip, pings, discovery).",
                g.mesh_sent,
            ),
            (
                "fogline_mesh_received_bytes_total",
                "Bytes this member received on its mesh connections.",
                g.mesh_received,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {metric} {help}\n# TYPE {metric} counter\n{metric} {v}"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_time_takes_runs_in_start_order_and_passes_over_abandoned_ones() {
        let m = Metrics::default();
        let f = m.function("f");
        let long = f.start_service();
        let short = f.start_service();
        short.ran(Duration::from_millis(10));
        assert_eq!(f.service_ms(), None, "waits for the run that started first");
        // The first run's caller went away: dropped without a time, it is passed over.
        drop(long);
        assert_eq!(f.service_ms(), Some(10.0));
        let next = f.start_service();
        next.ran(Duration::from_millis(90));
        assert_eq!(f.service_ms(), Some(20.0), "90 ms at a weight of 1/8");
    }

    #[test]
    fn histograms_render_cumulative_buckets() {
        let m = Metrics::default();
        let f = m.function("hello");
        f.latency.observe(Duration::from_micros(200));
        f.latency.observe(Duration::from_millis(3));
        f.count(200);
        f.count(200);
        f.count(500);
        let text = m.render(&Gauges {
            instances_in_use: 0,
            instance_slots: 4,
            async_queued: 0,
            functions: 1,
            mesh_sent: 0,
            mesh_connections: 0,
            mesh_forged: 0,
            mesh_received: 0,
            code: Default::default(),
            certificate_expiry: 0,
        });
        assert!(
            text.contains(
                "gateway_function_invocation_total{function_name=\"hello\",code=\"200\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "gateway_functions_seconds_bucket{function_name=\"hello\",le=\"0.00025\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "gateway_functions_seconds_bucket{function_name=\"hello\",le=\"0.005\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains("gateway_functions_seconds_count{function_name=\"hello\"} 2"),
            "{text}"
        );
        assert_eq!(f.total(), 3);
    }
}
