//! Traces on this member: the spans of the calls it took part in, kept in a bounded ring
//! and fetched on demand, and the recorder a call carries through this member's code.
//!
//! An ingress (HTTP, QUIC, CoAP, MQTT, an async worker) [`begins`](Traces::begin) a
//! recorder from the caller's `traceparent` (or a new trace), runs the call inside it, and
//! [`commits`](Traces::commit) it. Code on the call's path marks its steps with [`span`]
//! and [`past`] without being handed anything: the recorder is a task-local, and a step
//! outside any call records nothing. A QUIC hop carries [`outgoing`] in its `Invoke`.
//! A trace is put together by [`gather`]: this member's spans, and those of every member
//! its attempts went to, asked over QUIC.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Instant, SystemTime};

use fogline_core::config::TraceSection;
use fogline_core::trace::{Span, SpanId, TraceId, TraceParent};
use fogline_core::wire::TraceReply;
use serde::Serialize;

use crate::agent::{random_bytes, Node};

tokio::task_local! {
    static CALL: Arc<Recorder>;
}

/// Spans of recent calls on this member.
pub struct Traces {
    cfg: TraceSection,
    member: String,
    ring: Mutex<Ring>,
    /// Set when spans are exported (OTLP).
    export: OnceLock<tokio::sync::mpsc::Sender<Vec<Span>>>,
    pub spans_recorded: AtomicU64,
    pub spans_dropped: AtomicU64,
    /// Spans the exporter could not queue, sent, and failed to send.
    pub export_dropped: AtomicU64,
    pub exported: AtomicU64,
    pub export_failed: AtomicU64,
}

#[derive(Default)]
struct Ring {
    traces: HashMap<TraceId, Entry>,
    order: VecDeque<TraceId>,
    calls: HashMap<String, TraceId>,
    spans: usize,
}

struct Entry {
    spans: Vec<Span>,
    calls: Vec<String>,
}

/// One call's trace on this member while it runs.
pub struct Recorder {
    trace_id: TraceId,
    root: SpanId,
    /// The caller's span, when it sent a `traceparent`.
    parent: Option<SpanId>,
    sampled: bool,
    tracestate: Option<String>,
    started: Instant,
    start_us: u64,
    inner: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    /// Spans open now, innermost last: a new span is a child of the last.
    stack: Vec<SpanId>,
    spans: Vec<Span>,
    call_id: Option<String>,
    /// Attributes of the root span noted on the way.
    notes: Vec<(String, String)>,
}

/// A recent trace, as `GET /v1/traces` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub trace_id: TraceId,
    pub calls: Vec<String>,
    pub name: String,
    pub function: Option<String>,
    pub status: Option<String>,
    pub start_us: u64,
    pub duration_us: u64,
    pub spans: usize,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn new_span_id() -> SpanId {
    loop {
        if let Some(id) = SpanId::from_bytes(random_bytes::<8>()) {
            return id;
        }
    }
}

fn new_trace_id() -> TraceId {
    loop {
        if let Some(id) = TraceId::from_bytes(random_bytes::<16>()) {
            return id;
        }
    }
}

impl Traces {
    pub fn new(cfg: TraceSection, member: String) -> Traces {
        Traces {
            cfg,
            member,
            ring: Mutex::new(Ring::default()),
            export: OnceLock::new(),
            spans_recorded: AtomicU64::new(0),
            spans_dropped: AtomicU64::new(0),
            export_dropped: AtomicU64::new(0),
            exported: AtomicU64::new(0),
            export_failed: AtomicU64::new(0),
        }
    }

    pub fn config(&self) -> &TraceSection {
        &self.cfg
    }

    /// Sends every committed span to `tx` too (the OTLP exporter).
    pub fn export_to(&self, tx: tokio::sync::mpsc::Sender<Vec<Span>>) {
        let _ = self.export.set(tx);
    }

    /// Starts recording a call: in the caller's trace when it sent a valid `traceparent`
    /// (recorded only if the caller records it), else in a new one.
    pub fn begin(&self, parent: Option<&str>, tracestate: Option<&str>) -> Arc<Recorder> {
        let parent = parent.and_then(|p| match TraceParent::parse(p) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::debug!("ignoring the caller's traceparent: {e}");
                None
            }
        });
        let tracestate = parent
            .and(tracestate)
            .filter(|s| fogline_core::trace::check_tracestate(s).is_ok())
            .map(str::to_string);
        Arc::new(Recorder {
            trace_id: parent.map_or_else(new_trace_id, |p| p.trace_id),
            root: new_span_id(),
            parent: parent.map(|p| p.parent_id),
            sampled: self.cfg.enabled && parent.is_none_or(|p| p.sampled),
            tracestate,
            started: Instant::now(),
            start_us: now_us(),
            inner: Mutex::new(Open::default()),
        })
    }

    /// Runs `fut` as the call `rec` records.
    pub async fn run<F: std::future::Future>(rec: Arc<Recorder>, fut: F) -> F::Output {
        CALL.scope(rec, fut).await
    }

    /// Ends a call's recording: its root span (`name`, with `attrs`) and every span made
    /// under it go to the ring (and to the exporter).
    pub fn commit(&self, rec: &Recorder, name: &str, mut attrs: Vec<(String, String)>) {
        if !rec.sampled {
            return;
        }
        let (mut spans, call_id) = {
            let mut open = lock(&rec.inner);
            attrs.append(&mut open.notes);
            (std::mem::take(&mut open.spans), open.call_id.take())
        };
        spans.push(Span {
            trace_id: rec.trace_id,
            span_id: rec.root,
            parent_id: rec.parent,
            name: name.to_string(),
            member: String::new(),
            start_us: rec.start_us,
            duration_us: rec.started.elapsed().as_micros() as u64,
            attrs,
        });
        for s in &mut spans {
            s.member.clone_from(&self.member);
        }
        self.spans_recorded
            .fetch_add(spans.len() as u64, Ordering::Relaxed);
        if let Some(tx) = self.export.get() {
            if tx.try_send(spans.clone()).is_err() {
                self.export_dropped
                    .fetch_add(spans.len() as u64, Ordering::Relaxed);
            }
        }
        let mut ring = lock(&self.ring);
        let ring = &mut *ring;
        if !ring.traces.contains_key(&rec.trace_id) {
            ring.order.push_back(rec.trace_id);
            ring.traces.insert(
                rec.trace_id,
                Entry {
                    spans: Vec::new(),
                    calls: Vec::new(),
                },
            );
            while ring.order.len() > self.cfg.keep {
                if let Some(old) = ring.order.pop_front() {
                    if let Some(e) = ring.traces.remove(&old) {
                        ring.spans -= e.spans.len();
                        for c in e.calls {
                            ring.calls.remove(&c);
                        }
                    }
                }
            }
        }
        let Some(entry) = ring.traces.get_mut(&rec.trace_id) else {
            return;
        };
        let room = self.cfg.max_spans.saturating_sub(entry.spans.len());
        if spans.len() > room {
            self.spans_dropped
                .fetch_add((spans.len() - room) as u64, Ordering::Relaxed);
            // The root (last) is the one worth keeping.
            let root = spans.pop();
            spans.truncate(room.saturating_sub(1));
            spans.extend(root.filter(|_| room > 0));
        }
        ring.spans += spans.len();
        entry.spans.extend(spans);
        if let Some(c) = call_id {
            ring.calls.insert(c.clone(), rec.trace_id);
            entry.calls.push(c);
        }
    }

    /// The trace a call id or trace id (32 hex digits) names, and this member's spans of it.
    pub fn find(&self, id: &str) -> Option<TraceId> {
        let ring = lock(&self.ring);
        if let Some(t) = ring.calls.get(id) {
            return Some(*t);
        }
        TraceId::parse(id)
            .ok()
            .filter(|t| ring.traces.contains_key(t))
    }

    /// This member's spans of `trace`.
    pub fn spans(&self, trace: TraceId) -> Vec<Span> {
        lock(&self.ring)
            .traces
            .get(&trace)
            .map(|e| e.spans.clone())
            .unwrap_or_default()
    }

    /// The call ids recorded for `trace`.
    pub fn calls(&self, trace: TraceId) -> Vec<String> {
        lock(&self.ring)
            .traces
            .get(&trace)
            .map(|e| e.calls.clone())
            .unwrap_or_default()
    }

    /// The newest `limit` traces this member holds.
    pub fn recent(&self, limit: usize) -> Vec<Summary> {
        let ring = lock(&self.ring);
        ring.order
            .iter()
            .rev()
            .take(limit)
            .filter_map(|t| {
                let e = ring.traces.get(t)?;
                // The entry's first span made on this member with no parent here.
                let ids: HashSet<SpanId> = e.spans.iter().map(|s| s.span_id).collect();
                let root = e
                    .spans
                    .iter()
                    .filter(|s| s.parent_id.is_none_or(|p| !ids.contains(&p)))
                    .min_by_key(|s| s.start_us)?;
                Some(Summary {
                    trace_id: *t,
                    calls: e.calls.clone(),
                    name: root.name.clone(),
                    function: root.attr("function").map(str::to_string),
                    status: root.attr("status").map(str::to_string),
                    start_us: root.start_us,
                    duration_us: root.duration_us,
                    spans: e.spans.len(),
                })
            })
            .collect()
    }

    /// Prometheus text for the traces kept and exported.
    pub fn metrics(&self, out: &mut String) {
        use std::fmt::Write;
        let (traces, spans) = self.held();
        let _ = writeln!(out, "# HELP fogline_traces_held Traces kept on this member now (at most trace.keep).\n# TYPE fogline_traces_held gauge\nfogline_traces_held {traces}\n# HELP fogline_trace_spans_held Spans kept on this member now.\n# TYPE fogline_trace_spans_held gauge\nfogline_trace_spans_held {spans}");
        for (metric, help, v) in [
            (
                "fogline_trace_spans_total",
                "Spans recorded on this member.",
                &self.spans_recorded,
            ),
            (
                "fogline_trace_spans_dropped_total",
                "Spans not kept: past trace.max_spans for their trace.",
                &self.spans_dropped,
            ),
            (
                "fogline_trace_spans_exported_total",
                "Spans sent to the OTLP collector.",
                &self.exported,
            ),
            (
                "fogline_trace_export_failed_total",
                "Spans the OTLP collector did not take (or that could not be queued for it).",
                &self.export_failed,
            ),
        ] {
            let v = v.load(Ordering::Relaxed)
                + if metric == "fogline_trace_export_failed_total" {
                    self.export_dropped.load(Ordering::Relaxed)
                } else {
                    0
                };
            let _ = writeln!(
                out,
                "# HELP {metric} {help}\n# TYPE {metric} counter\n{metric} {v}"
            );
        }
    }

    /// Traces and spans held now.
    pub fn held(&self) -> (usize, usize) {
        let ring = lock(&self.ring);
        (ring.order.len(), ring.spans)
    }
}

impl Recorder {
    pub fn trace_id(&self) -> TraceId {
        self.trace_id
    }

    /// The `traceparent` to answer the caller with: this call's root span on this member.
    pub fn traceparent(&self) -> String {
        TraceParent {
            trace_id: self.trace_id,
            parent_id: self.root,
            sampled: self.sampled,
        }
        .header()
    }

    pub fn tracestate(&self) -> Option<&str> {
        self.tracestate.as_deref()
    }

    /// Names the call this trace is found by (`fogline trace CALL_ID`).
    pub fn set_call_id(&self, id: &str) {
        lock(&self.inner).call_id = Some(id.to_string());
    }

    fn current(&self) -> SpanId {
        lock(&self.inner).stack.last().copied().unwrap_or(self.root)
    }
}

/// A step of the call being recorded, timed from now until the guard is dropped.
pub struct SpanGuard {
    open: Option<(Arc<Recorder>, SpanId, SpanId, Instant, u64)>,
    name: &'static str,
    attrs: Vec<(String, String)>,
}

impl SpanGuard {
    /// Adds what is worth knowing of this step (nothing when no call is recorded).
    pub fn attr(&mut self, key: &str, value: impl std::fmt::Display) {
        if self.open.is_some() {
            self.attrs.push((key.to_string(), value.to_string()));
        }
    }

    /// Whether anything is recorded (so costly attributes can be skipped).
    pub fn recording(&self) -> bool {
        self.open.is_some()
    }
}

impl Drop for SpanGuard {
    fn drop(&mut self) {
        let Some((rec, id, parent, t0, start_us)) = self.open.take() else {
            return;
        };
        let span = Span {
            trace_id: rec.trace_id,
            span_id: id,
            parent_id: Some(parent),
            name: self.name.to_string(),
            member: String::new(),
            start_us,
            duration_us: t0.elapsed().as_micros() as u64,
            attrs: std::mem::take(&mut self.attrs),
        };
        let mut open = lock(&rec.inner);
        if let Some(i) = open.stack.iter().rposition(|s| *s == id) {
            open.stack.remove(i);
        }
        open.spans.push(span);
    }
}

/// Starts a step of the call being recorded (a no-op outside one).
pub fn span(name: &'static str) -> SpanGuard {
    let open = CALL
        .try_with(|rec| {
            rec.sampled.then(|| {
                let id = new_span_id();
                let parent = {
                    let mut o = lock(&rec.inner);
                    let parent = o.stack.last().copied().unwrap_or(rec.root);
                    o.stack.push(id);
                    parent
                };
                (rec.clone(), id, parent, Instant::now(), now_us())
            })
        })
        .ok()
        .flatten();
    SpanGuard {
        open,
        name,
        attrs: Vec::new(),
    }
}

/// Records a step that already happened: it began `ago` before now and lasted `took`.
pub fn past(
    name: &'static str,
    ago: std::time::Duration,
    took: std::time::Duration,
    attrs: Vec<(String, String)>,
) {
    let _ = CALL.try_with(|rec| {
        if !rec.sampled {
            return;
        }
        let parent = rec.current();
        lock(&rec.inner).spans.push(Span {
            trace_id: rec.trace_id,
            span_id: new_span_id(),
            parent_id: Some(parent),
            name: name.to_string(),
            member: String::new(),
            start_us: now_us().saturating_sub(ago.as_micros() as u64),
            duration_us: took.as_micros() as u64,
            attrs,
        });
    });
}

/// The `traceparent` a hop to another member carries: the step open now as its parent.
pub fn outgoing() -> Option<String> {
    CALL.try_with(|rec| {
        TraceParent {
            trace_id: rec.trace_id,
            parent_id: rec.current(),
            sampled: rec.sampled,
        }
        .header()
    })
    .ok()
}

/// The trace of the call being recorded, when it is recorded.
pub fn current_trace() -> Option<TraceId> {
    CALL.try_with(|rec| rec.sampled.then_some(rec.trace_id))
        .ok()
        .flatten()
}

/// Adds an attribute to the root span of the call being recorded.
pub fn note(key: &str, value: impl std::fmt::Display) {
    let _ = CALL.try_with(|rec| {
        if rec.sampled {
            lock(&rec.inner)
                .notes
                .push((key.to_string(), value.to_string()));
        }
    });
}

/// Names the call being recorded (async calls: the id their 202 gave).
pub fn set_call_id(id: &str) {
    let _ = CALL.try_with(|rec| rec.set_call_id(id));
}

/// Most hops a trace is followed across.
pub const MAX_DEPTH: u8 = 4;

/// A trace put together: this member's spans of it and, `depth` hops on, those of every
/// member its attempts went to (asked over QUIC; one that does not answer is named).
pub async fn gather(node: &Node, trace: TraceId, depth: u8) -> TraceReply {
    let mut spans = node.traces.spans(trace);
    let mut unreachable = Vec::new();
    if depth > 0 {
        let own = node.links.addresses.get().and_then(|(q, _)| *q);
        let mut asked = HashSet::new();
        let targets: Vec<(String, std::net::SocketAddr)> = spans
            .iter()
            .filter(|s| s.name == "attempt" && s.member == node.id)
            .filter_map(|s| {
                let addr = s.attr("addr")?.parse().ok()?;
                Some((s.attr("place")?.to_string(), addr))
            })
            .filter(|(_, a)| Some(*a) != own)
            .collect();
        for (place, addr) in targets {
            if !asked.insert(addr) {
                continue;
            }
            let Some(client) = node.links.peers.get() else {
                unreachable.push(format!("{place}: this member has no QUIC client"));
                continue;
            };
            client.expect(addr, &place);
            match client.traces(addr, trace, depth - 1).await {
                Ok(reply) => {
                    spans.extend(reply.spans);
                    unreachable.extend(reply.unreachable);
                }
                Err(e) => unreachable.push(format!("{place} ({addr}): {e}")),
            }
        }
    }
    let mut seen = HashSet::new();
    spans.retain(|s| seen.insert(s.span_id));
    TraceReply { spans, unreachable }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn traces(keep: usize, max_spans: usize) -> Traces {
        Traces::new(
            TraceSection {
                keep,
                max_spans,
                ..TraceSection::default()
            },
            "m1".into(),
        )
    }

    #[tokio::test]
    async fn spans_nest_under_the_step_open_when_they_start() {
        let t = traces(10, 100);
        let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let rec = t.begin(Some(caller), Some("k=v"));
        let out = Traces::run(rec.clone(), async {
            let mut a = span("placement");
            a.attr("chosen", "edge-1");
            drop(a);
            let b = span("attempt");
            let hop = outgoing().unwrap();
            past(
                "run",
                std::time::Duration::from_millis(1),
                std::time::Duration::from_millis(1),
                vec![],
            );
            drop(b);
            set_call_id("c1");
            hop
        })
        .await;
        t.commit(&rec, "http", vec![("function".into(), "hello".into())]);
        let id = t.find("c1").unwrap();
        assert_eq!(id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.find(&id.to_string()), Some(id));
        let spans = t.spans(id);
        let by = |n: &str| spans.iter().find(|s| s.name == n).unwrap();
        let root = by("http");
        assert_eq!(root.parent_id.unwrap().to_string(), "00f067aa0ba902b7");
        assert_eq!(by("placement").parent_id, Some(root.span_id));
        assert_eq!(by("attempt").parent_id, Some(root.span_id));
        assert_eq!(by("run").parent_id, Some(by("attempt").span_id));
        assert!(out.contains(&by("attempt").span_id.to_string()));
        assert!(spans.iter().all(|s| s.member == "m1"));
        assert_eq!(rec.tracestate(), Some("k=v"));
        assert!(rec.traceparent().ends_with("-01"));
    }

    #[tokio::test]
    async fn the_ring_keeps_the_newest_traces_and_bounds_spans() {
        let t = traces(3, 4);
        for i in 0..5 {
            let rec = t.begin(None, None);
            Traces::run(rec.clone(), async {
                for _ in 0..10 {
                    let _s = span("step");
                }
                set_call_id(&format!("call{i}"));
            })
            .await;
            t.commit(&rec, "http", vec![]);
        }
        assert_eq!(t.held(), (3, 12));
        assert!(t.find("call0").is_none() && t.find("call1").is_none());
        let newest = t.find("call4").unwrap();
        let spans = t.spans(newest);
        assert_eq!(spans.len(), 4);
        assert!(spans.iter().any(|s| s.name == "http"), "the root is kept");
        assert_eq!(t.recent(10).len(), 3);
        assert_eq!(t.spans_dropped.load(Ordering::Relaxed), 5 * 7);
    }

    #[tokio::test]
    async fn an_unsampled_caller_or_tracing_off_records_nothing() {
        let t = traces(10, 10);
        let rec = t.begin(
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"),
            None,
        );
        let hop = Traces::run(rec.clone(), async {
            let _s = span("x");
            outgoing()
        })
        .await;
        t.commit(&rec, "http", vec![]);
        assert_eq!(t.held(), (0, 0));
        assert!(hop.unwrap().ends_with("-00"), "still carried on");
        let off = Traces::new(
            TraceSection {
                enabled: false,
                ..TraceSection::default()
            },
            "m".into(),
        );
        let rec = off.begin(None, None);
        off.commit(&rec, "http", vec![]);
        assert_eq!(off.held(), (0, 0));
        // Outside any call, steps are no-ops.
        assert!(!span("x").recording());
        assert!(outgoing().is_none());
    }
}
