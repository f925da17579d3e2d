//! Spans sent to an OpenTelemetry collector (`[trace] otlp`): OTLP/HTTP with the JSON
//! encoding of `ExportTraceServiceRequest` (ids as hex, times as decimal strings), batched
//! every `otlp_every`. Off by default. A collector that is down or slow loses spans, never
//! calls: batches wait in a bounded channel and the oldest go first.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use fogline_core::trace::Span;
use serde_json::{json, Value};

/// Batches of spans waiting to be sent, at most.
const QUEUED: usize = 1024;
/// Spans in one request, at most.
const PER_REQUEST: usize = 4096;

/// Starts exporting `node`'s spans when its config names a collector (counted in
/// `node.traces`: `exported`, `export_failed`).
pub fn start(node: &Arc<crate::Node>) {
    let cfg = node.traces.config();
    let (Some(url), true) = (cfg.otlp.clone(), cfg.enabled) else {
        return;
    };
    let every = cfg.otlp_every;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Span>>(QUEUED);
    node.traces.export_to(tx);
    let member = node.id.clone();
    let weak = Arc::downgrade(node);
    tokio::spawn(async move {
        let http = match reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("otlp: no HTTP client: {e}");
                return;
            }
        };
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut warned = false;
        loop {
            tick.tick().await;
            let mut batch = Vec::new();
            while batch.len() < PER_REQUEST {
                match rx.try_recv() {
                    Ok(spans) => batch.extend(spans),
                    Err(tokio::sync::mpsc::error::TryRecvError::Empty) => break,
                    Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => return,
                }
            }
            if batch.is_empty() {
                continue;
            }
            let n = batch.len() as u64;
            let body = request(&member, &batch);
            match http.post(&url).json(&body).send().await {
                Ok(r) if r.status().is_success() => {
                    if let Some(node) = weak.upgrade() {
                        node.traces.exported.fetch_add(n, Ordering::Relaxed);
                    }
                    warned = false;
                }
                other => {
                    if let Some(node) = weak.upgrade() {
                        node.traces.export_failed.fetch_add(n, Ordering::Relaxed);
                    }
                    if !warned {
                        let why = match other {
                            Ok(r) => format!("answered {}", r.status()),
                            Err(e) => e.to_string(),
                        };
                        tracing::warn!("otlp: sending {n} spans to {url}: {why} (spans are dropped until it answers)");
                        warned = true;
                    }
                }
            }
        }
    });
}

/// The OTLP JSON request for `spans` recorded on `member`.
pub fn request(member: &str, spans: &[Span]) -> Value {
    let kv = |k: &str, v: &str| json!({"key": k, "value": {"stringValue": v}});
    let spans: Vec<Value> = spans
        .iter()
        .map(|s| {
            // Server for an ingress or a hop served, client for an attempt, else internal.
            let kind = match s.name.as_ref() {
                "http" | "quic" | "coap" | "mqtt" | "serve" => 2,
                "attempt" => 3,
                "async" => 5,
                _ => 1,
            };
            let failed = s
                .attr("status")
                .and_then(|v| v.parse::<u16>().ok())
                .is_some_and(|c| c >= 500);
            let mut v = json!({
                "traceId": s.trace_id.to_string(),
                "spanId": s.span_id.to_string(),
                "name": s.name,
                "kind": kind,
                "startTimeUnixNano": (s.start_us * 1000).to_string(),
                "endTimeUnixNano": ((s.start_us + s.duration_us) * 1000).to_string(),
                "attributes": s.attrs.iter().map(|(k, v)| kv(&format!("fogline.{k}"), v)).collect::<Vec<_>>(),
                "status": {"code": if failed { 2 } else { 0 }},
            });
            if let Some(p) = s.parent_id {
                v["parentSpanId"] = p.to_string().into();
            }
            v
        })
        .collect();
    json!({
        "resourceSpans": [{
            "resource": {"attributes": [
                kv("service.name", "fogline"),
                kv("service.instance.id", member),
                kv("service.version", env!("CARGO_PKG_VERSION")),
            ]},
            "scopeSpans": [{
                "scope": {"name": "fogline", "version": env!("CARGO_PKG_VERSION")},
                "spans": spans,
            }],
        }],
    })
}
