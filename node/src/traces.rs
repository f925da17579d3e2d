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

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
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
///
/// The ring is a slab of `keep` slots reused in turn: once it has filled, keeping a trace
/// allocates nothing (each slot keeps its buffers), and a call's own recording allocates
/// only short-lived buffers freed when it commits. (An earlier version kept each trace as
/// freshly allocated spans and strings: glibc's allocator then spent a tenth of a router's
/// time on the churn.)
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

/// A call id (32 hex digits) as bytes.
type CallId = [u8; 16];

/// An attribute's value: fixed text, or a range of its trace's text buffer.
#[derive(Clone, Copy)]
enum Val {
    Static(&'static str),
    Text(u32, u32),
    /// Milliseconds, said with two decimals when read (formatting a float costs more than
    /// keeping it).
    Ms(f64),
    Addr(std::net::SocketAddr),
}

/// A span as recorded: no heap data of its own; its attributes are a range of its
/// trace's attribute list, their values ranges of its text.
#[derive(Clone, Copy)]
struct Rec {
    span_id: SpanId,
    parent_id: Option<SpanId>,
    name: &'static str,
    start_us: u64,
    duration_us: u64,
    a0: u32,
    an: u32,
}

type Kv = (&'static str, Val);

impl Rec {
    fn new(span_id: SpanId, parent_id: Option<SpanId>, name: &'static str, start_us: u64) -> Rec {
        Rec {
            span_id,
            parent_id,
            name,
            start_us,
            duration_us: 0,
            a0: 0,
            an: 0,
        }
    }

    fn attrs<'a>(&self, attrs: &'a [Kv]) -> &'a [Kv] {
        attrs
            .get(self.a0 as usize..(self.a0 + self.an) as usize)
            .unwrap_or(&[])
    }

    fn attr<'a>(&self, key: &str, attrs: &[Kv], text: &'a str) -> Option<Cow<'a, str>> {
        self.attrs(attrs)
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| val(*v, text))
    }

    fn to_span(self, trace_id: TraceId, member: &str, attrs: &[Kv], text: &str) -> Span {
        Span {
            trace_id,
            span_id: self.span_id,
            parent_id: self.parent_id,
            name: Cow::Borrowed(self.name),
            member: member.to_string(),
            start_us: self.start_us,
            duration_us: self.duration_us,
            attrs: self
                .attrs(attrs)
                .iter()
                .map(|(k, v)| {
                    let v = match *v {
                        Val::Static(s) => Cow::Borrowed(s),
                        other => Cow::Owned(val(other, text).into_owned()),
                    };
                    (Cow::Borrowed(*k), v)
                })
                .collect(),
        }
    }
}

fn val(v: Val, text: &str) -> Cow<'_, str> {
    match v {
        Val::Static(s) => Cow::Borrowed(s),
        Val::Text(a, b) => Cow::Borrowed(text.get(a as usize..b as usize).unwrap_or("")),
        Val::Ms(ms) => Cow::Owned(format!("{ms:.2}")),
        Val::Addr(a) => Cow::Owned(a.to_string()),
    }
}

/// Appends `value` to `text` and names the range it took.
fn put(text: &mut String, value: impl std::fmt::Display) -> Val {
    use std::fmt::Write;
    let a = text.len();
    let _ = write!(text, "{value}");
    Val::Text(a as u32, text.len() as u32)
}

/// The traces kept: one entry per commit (a trace committed twice on this member, as an
/// async call's submit and run are, has two), their data appended in turn to a few chunks.
///
/// Writing is appending to memory written just before, and evicting the oldest is dropping
/// an entry, so a commit touches no cold memory and no index: lookups (a person asking
/// for one trace) scan the entries instead. (A ring of a slot per trace, indexed by hash
/// maps, cost a tenth of a router's throughput at 2,000 traces kept, nearly all of it in
/// cache misses on slots last written 2,000 calls before; at 64 kept it cost nothing.)
#[derive(Default)]
struct Ring {
    /// Oldest first; at most `keep`.
    entries: std::collections::VecDeque<Entry>,
    chunks: Vec<Chunk>,
    /// The chunk being written.
    cur: usize,
    spans: usize,
}

/// One commit: which trace, the call it is found by, and where its spans are.
struct Entry {
    trace: TraceId,
    call: Option<CallId>,
    chunk: u32,
    s0: u32,
    sn: u32,
}

/// Spans of up to `keep / CHUNKS` commits, their attributes and text; reused once every
/// entry in it is gone (its buffers kept).
#[derive(Default)]
struct Chunk {
    spans: Vec<Rec>,
    attrs: Vec<Kv>,
    text: String,
    /// Entries written here and still held.
    live: usize,
    /// Entries written here since it was last reused.
    written: usize,
}

/// The ring's data is split this many ways: it holds at most `keep / CHUNKS` commits'
/// worth more than the entries need.
const CHUNKS: usize = 8;

impl Ring {
    fn entry_spans<'a>(&'a self, e: &Entry) -> (&'a [Rec], &'a Chunk) {
        let c = &self.chunks[e.chunk as usize];
        let spans = c
            .spans
            .get(e.s0 as usize..(e.s0 + e.sn) as usize)
            .unwrap_or(&[]);
        (spans, c)
    }
}

fn call_id(id: &str) -> Option<CallId> {
    let mut b = [0u8; 16];
    (id.len() == 32 && hex::decode_to_slice(id, &mut b).is_ok()).then_some(b)
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
    spans: Vec<Rec>,
    /// The attributes of its spans, each span's together.
    attrs: Vec<Kv>,
    /// The text of this call's attribute values.
    text: String,
    call_id: Option<CallId>,
    /// Attributes of the root span noted on the way.
    notes: Vec<Kv>,
}

/// Buffers of finished recordings kept for the next ones, per thread.
const POOLED: usize = 64;

thread_local! {
    static POOL: std::cell::RefCell<Vec<Open>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Open {
    /// Buffers for a recorded call: a finished call's, else new ones with room for a
    /// call's usual spans (each under 1 KiB, where glibc's allocator stays on its fast
    /// paths), so recording allocates nothing once a thread has served a few calls.
    fn reused() -> Open {
        POOL.with(|p| p.borrow_mut().pop()).unwrap_or_else(|| Open {
            spans: Vec::with_capacity(8),
            attrs: Vec::with_capacity(16),
            text: String::with_capacity(256),
            ..Open::default()
        })
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if !self.sampled {
            return;
        }
        let open = self.inner.get_mut().unwrap_or_else(|p| p.into_inner());
        // Buffers that grew past the usual stay out of the pool.
        if open.spans.capacity() > 32 || open.text.capacity() > 4096 {
            return;
        }
        let mut o = std::mem::take(open);
        o.stack.clear();
        o.spans.clear();
        o.attrs.clear();
        o.text.clear();
        o.notes.clear();
        o.call_id = None;
        POOL.with(|p| {
            let mut p = p.borrow_mut();
            if p.len() < POOLED {
                p.push(o);
            }
        });
    }
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
        let sampled = self.cfg.enabled && parent.is_none_or(|p| p.sampled);
        Arc::new(Recorder {
            trace_id: parent.map_or_else(new_trace_id, |p| p.trace_id),
            root: new_span_id(),
            parent: parent.map(|p| p.parent_id),
            sampled,
            tracestate,
            started: Instant::now(),
            start_us: now_us(),
            inner: Mutex::new(if sampled {
                Open::reused()
            } else {
                Open::default()
            }),
        })
    }

    /// Runs `fut` as the call `rec` records.
    pub async fn run<F: std::future::Future>(rec: Arc<Recorder>, fut: F) -> F::Output {
        CALL.scope(rec, fut).await
    }

    /// Ends a call's recording: its root span (`name`, with `attrs`) and every span made
    /// under it go to the ring (and to the exporter).
    pub fn commit(
        &self,
        rec: &Recorder,
        name: &'static str,
        attrs: &[(&'static str, &dyn std::fmt::Display)],
    ) {
        if !rec.sampled {
            return;
        }
        let mut open = lock(&rec.inner);
        let open = &mut *open;
        let mut root = Rec::new(rec.root, rec.parent, name, rec.start_us);
        root.duration_us = rec.started.elapsed().as_micros() as u64;
        root.a0 = open.attrs.len() as u32;
        for (k, v) in attrs {
            let v = put(&mut open.text, v);
            open.attrs.push((k, v));
        }
        open.attrs.append(&mut open.notes);
        root.an = open.attrs.len() as u32 - root.a0;
        open.spans.push(root);
        self.spans_recorded
            .fetch_add(open.spans.len() as u64, Ordering::Relaxed);
        if let Some(tx) = self.export.get() {
            let spans: Vec<Span> = open
                .spans
                .iter()
                .map(|r| r.to_span(rec.trace_id, &self.member, &open.attrs, &open.text))
                .collect();
            let n = spans.len() as u64;
            if tx.try_send(spans).is_err() {
                self.export_dropped.fetch_add(n, Ordering::Relaxed);
            }
        }
        let all = open.spans.len();
        // Past the bound, the root (last) is the one worth keeping.
        let (head, root) = if all <= self.cfg.max_spans {
            (all, false)
        } else {
            self.spans_dropped
                .fetch_add((all - self.cfg.max_spans) as u64, Ordering::Relaxed);
            (self.cfg.max_spans.saturating_sub(1), self.cfg.max_spans > 0)
        };
        let mut ring = lock(&self.ring);
        let ring = &mut *ring;
        if ring.entries.len() >= self.cfg.keep {
            if let Some(old) = ring.entries.pop_front() {
                ring.spans -= old.sn as usize;
                let c = &mut ring.chunks[old.chunk as usize];
                c.live -= 1;
            }
        }
        let per_chunk = self.cfg.keep.div_ceil(CHUNKS).max(1);
        if ring.chunks.is_empty() || ring.chunks[ring.cur].written >= per_chunk {
            // The next chunk whose entries are all gone, else a new one.
            let cur = ring.cur;
            let free = (0..ring.chunks.len()).find(|&i| i != cur && ring.chunks[i].live == 0);
            ring.cur = match free {
                Some(i) => i,
                None => {
                    ring.chunks.push(Chunk::default());
                    ring.chunks.len() - 1
                }
            };
            let c = &mut ring.chunks[ring.cur];
            c.spans.clear();
            c.attrs.clear();
            c.text.clear();
            c.written = 0;
        }
        let chunk = &mut ring.chunks[ring.cur];
        let s0 = chunk.spans.len() as u32;
        let text_base = chunk.text.len() as u32;
        chunk.text.push_str(&open.text);
        for i in (0..head).chain(root.then_some(all - 1)) {
            let mut r = open.spans[i];
            let a0 = chunk.attrs.len() as u32;
            for (k, v) in r.attrs(&open.attrs) {
                let v = match *v {
                    Val::Text(a, b) => Val::Text(a + text_base, b + text_base),
                    kept => kept,
                };
                chunk.attrs.push((k, v));
            }
            r.a0 = a0;
            chunk.spans.push(r);
        }
        let sn = chunk.spans.len() as u32 - s0;
        chunk.live += 1;
        chunk.written += 1;
        ring.spans += sn as usize;
        let entry = Entry {
            trace: rec.trace_id,
            call: open.call_id,
            chunk: ring.cur as u32,
            s0,
            sn,
        };
        ring.entries.push_back(entry);
    }

    /// The trace a call id or trace id (32 hex digits) names, when this member holds it.
    pub fn find(&self, id: &str) -> Option<TraceId> {
        let ring = lock(&self.ring);
        if let Some(c) = call_id(id) {
            if let Some(e) = ring.entries.iter().rev().find(|e| e.call == Some(c)) {
                return Some(e.trace);
            }
        }
        TraceId::parse(id)
            .ok()
            .filter(|t| ring.entries.iter().any(|e| e.trace == *t))
    }

    /// This member's spans of `trace` (at most `max_spans`).
    pub fn spans(&self, trace: TraceId) -> Vec<Span> {
        let ring = lock(&self.ring);
        let mut out = Vec::new();
        for e in ring.entries.iter().filter(|e| e.trace == trace) {
            let (spans, c) = ring.entry_spans(e);
            out.extend(
                spans
                    .iter()
                    .map(|r| r.to_span(trace, &self.member, &c.attrs, &c.text)),
            );
        }
        out.truncate(self.cfg.max_spans);
        out
    }

    /// The call ids recorded for `trace`.
    pub fn calls(&self, trace: TraceId) -> Vec<String> {
        let ring = lock(&self.ring);
        let mut calls: Vec<String> = Vec::new();
        for c in ring
            .entries
            .iter()
            .filter(|e| e.trace == trace)
            .filter_map(|e| e.call)
        {
            let c = hex::encode(c);
            if !calls.contains(&c) {
                calls.push(c);
            }
        }
        calls
    }

    /// The newest `limit` traces this member holds.
    pub fn recent(&self, limit: usize) -> Vec<Summary> {
        let ring = lock(&self.ring);
        // Each trace's entries, newest trace first.
        let mut order: Vec<TraceId> = Vec::new();
        let mut of: HashMap<TraceId, Vec<&Entry>> = HashMap::new();
        for e in ring.entries.iter().rev() {
            let v = of.entry(e.trace).or_default();
            if v.is_empty() {
                order.push(e.trace);
            }
            v.push(e);
        }
        order
            .into_iter()
            .take(limit)
            .filter_map(|trace| {
                let entries = &of[&trace];
                let spans: Vec<(&Rec, &Chunk)> = entries
                    .iter()
                    .flat_map(|e| {
                        let (s, c) = ring.entry_spans(e);
                        s.iter().map(move |r| (r, c))
                    })
                    .collect();
                // Its first span made on this member with no parent here.
                let ids: HashSet<SpanId> = spans.iter().map(|(s, _)| s.span_id).collect();
                let (root, c) = spans
                    .iter()
                    .filter(|(s, _)| s.parent_id.is_none_or(|p| !ids.contains(&p)))
                    .min_by_key(|(s, _)| s.start_us)?;
                let mut calls: Vec<String> = Vec::new();
                for e in entries.iter().rev() {
                    if let Some(id) = e.call.map(hex::encode) {
                        if !calls.contains(&id) {
                            calls.push(id);
                        }
                    }
                }
                Some(Summary {
                    trace_id: trace,
                    calls,
                    name: root.name.to_string(),
                    function: root
                        .attr("function", &c.attrs, &c.text)
                        .map(Cow::into_owned),
                    status: root.attr("status", &c.attrs, &c.text).map(Cow::into_owned),
                    start_us: root.start_us,
                    duration_us: root.duration_us,
                    spans: spans.len(),
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
        let traces: HashSet<TraceId> = ring.entries.iter().map(|e| e.trace).collect();
        (traces.len(), ring.spans)
    }
}

impl Recorder {
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

    /// Names the call this trace is found by (`fogline trace CALL_ID`): 32 hex digits
    /// (an id of another shape, an async call's from before random ids, is not indexed).
    pub fn set_call_id(&self, id: &str) {
        lock(&self.inner).call_id = call_id(id);
    }

    fn current(&self) -> SpanId {
        lock(&self.inner).stack.last().copied().unwrap_or(self.root)
    }
}

/// Most attributes one span keeps (more are dropped).
const MAX_ATTRS: usize = 6;

/// A step of the call being recorded, timed from now until the guard is dropped.
pub struct SpanGuard {
    open: Option<OpenSpan>,
}

/// A span being recorded: its attributes wait here, so a span's are kept together.
struct OpenSpan {
    rec: Arc<Recorder>,
    t0: Instant,
    r: Rec,
    attrs: [Kv; MAX_ATTRS],
    n: usize,
}

impl SpanGuard {
    /// Adds what is worth knowing of this step (nothing when no call is recorded).
    pub fn attr(&mut self, key: &'static str, value: impl std::fmt::Display) {
        if let Some(o) = &mut self.open {
            if o.n < MAX_ATTRS {
                let v = put(&mut lock(&o.rec.inner).text, value);
                o.attrs[o.n] = (key, v);
                o.n += 1;
            }
        }
    }

    /// [`SpanGuard::attr`] for a time in milliseconds (kept as a number until read).
    pub fn attr_ms(&mut self, key: &'static str, ms: f64) {
        self.push(key, Val::Ms(ms));
    }

    /// [`SpanGuard::attr`] for an address (kept as one until read).
    pub fn attr_addr(&mut self, key: &'static str, addr: std::net::SocketAddr) {
        self.push(key, Val::Addr(addr));
    }

    fn push(&mut self, key: &'static str, v: Val) {
        if let Some(o) = &mut self.open {
            if o.n < MAX_ATTRS {
                o.attrs[o.n] = (key, v);
                o.n += 1;
            }
        }
    }

    /// [`SpanGuard::attr`] with fixed text (nothing is copied).
    pub fn attr_static(&mut self, key: &'static str, value: &'static str) {
        if let Some(o) = &mut self.open {
            if o.n < MAX_ATTRS {
                o.attrs[o.n] = (key, Val::Static(value));
                o.n += 1;
            }
        }
    }

    /// Whether anything is recorded (so costly attributes can be skipped).
    pub fn recording(&self) -> bool {
        self.open.is_some()
    }
}

impl Drop for SpanGuard {
    fn drop(&mut self) {
        let Some(mut o) = self.open.take() else {
            return;
        };
        o.r.duration_us = o.t0.elapsed().as_micros() as u64;
        let mut open = lock(&o.rec.inner);
        if let Some(i) = open.stack.iter().rposition(|s| *s == o.r.span_id) {
            open.stack.remove(i);
        }
        o.r.a0 = open.attrs.len() as u32;
        o.r.an = o.n as u32;
        open.attrs.extend_from_slice(&o.attrs[..o.n]);
        open.spans.push(o.r);
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
                OpenSpan {
                    rec: rec.clone(),
                    t0: Instant::now(),
                    r: Rec::new(id, Some(parent), name, now_us()),
                    attrs: [("", Val::Static("")); MAX_ATTRS],
                    n: 0,
                }
            })
        })
        .ok()
        .flatten();
    SpanGuard { open }
}

/// Records a step that already happened: it began `ago` before now and lasted `took`.
pub fn past(
    name: &'static str,
    ago: std::time::Duration,
    took: std::time::Duration,
    attrs: &[(&'static str, &dyn std::fmt::Display)],
) {
    let _ = CALL.try_with(|rec| {
        if !rec.sampled {
            return;
        }
        let parent = rec.current();
        let mut r = Rec::new(
            new_span_id(),
            Some(parent),
            name,
            now_us().saturating_sub(ago.as_micros() as u64),
        );
        r.duration_us = took.as_micros() as u64;
        let mut open = lock(&rec.inner);
        r.a0 = open.attrs.len() as u32;
        for (k, v) in attrs {
            let v = put(&mut open.text, v);
            open.attrs.push((k, v));
        }
        r.an = open.attrs.len() as u32 - r.a0;
        open.spans.push(r);
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
pub fn note(key: &'static str, value: impl std::fmt::Display) {
    let _ = CALL.try_with(|rec| {
        if rec.sampled {
            let mut open = lock(&rec.inner);
            let v = put(&mut open.text, value);
            open.notes.push((key, v));
        }
    });
}

/// [`note`] with fixed text.
pub fn note_static(key: &'static str, value: &'static str) {
    let _ = CALL.try_with(|rec| {
        if rec.sampled {
            lock(&rec.inner).notes.push((key, Val::Static(value)));
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
                &[],
            );
            drop(b);
            set_call_id("c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1");
            hop
        })
        .await;
        t.commit(&rec, "http", &[("function", &"hello")]);
        let id = t.find("c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1").unwrap();
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
                set_call_id(&format!("{i:032x}"));
            })
            .await;
            t.commit(&rec, "http", &[]);
        }
        assert_eq!(t.held(), (3, 12));
        assert!(
            t.find(&format!("{:032x}", 0)).is_none() && t.find(&format!("{:032x}", 1)).is_none()
        );
        let newest = t.find(&format!("{:032x}", 4)).unwrap();
        let spans = t.spans(newest);
        assert_eq!(spans.len(), 4);
        assert!(spans.iter().any(|s| s.name == "http"), "the root is kept");
        assert_eq!(t.recent(10).len(), 3);
        assert_eq!(t.spans_dropped.load(Ordering::Relaxed), 5 * 7);
    }

    #[tokio::test]
    async fn a_long_run_reuses_the_rings_memory_and_finds_every_kept_trace() {
        let t = traces(16, 8);
        let mut ids = Vec::new();
        for i in 0..1000u32 {
            let rec = t.begin(None, None);
            Traces::run(rec.clone(), async {
                let mut s = span("step");
                s.attr("i", i);
                drop(s);
                set_call_id(&format!("{i:032x}"));
            })
            .await;
            t.commit(&rec, "http", &[]);
            ids.push(rec.trace_id);
        }
        assert_eq!(t.held(), (16, 32));
        let chunks = lock(&t.ring).chunks.len();
        assert!(chunks <= CHUNKS + 2, "{chunks} chunks");
        for (i, id) in ids.iter().enumerate() {
            let found = t.find(&format!("{i:032x}"));
            if i >= 1000 - 16 {
                assert_eq!(found, Some(*id), "call {i}");
                let spans = t.spans(*id);
                let step = spans.iter().find(|s| s.name == "step").unwrap();
                assert_eq!(step.attrs[0].1, i.to_string());
            } else {
                assert_eq!(found, None, "call {i} is gone");
            }
        }
        // A trace committed twice here (an async call's submit and run) is one trace.
        let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        for name in ["http", "async"] {
            let rec = t.begin(Some(caller), None);
            Traces::run(rec.clone(), async { set_call_id(&"ab".repeat(16)) }).await;
            t.commit(&rec, name, &[]);
        }
        let id = t.find(&"ab".repeat(16)).unwrap();
        assert_eq!(t.spans(id).len(), 2);
        assert_eq!(t.calls(id), vec!["ab".repeat(16)]);
        let newest = &t.recent(1)[0];
        assert_eq!((newest.trace_id, newest.spans), (id, 2));
        assert_eq!(t.held(), (15, 30));
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
        t.commit(&rec, "http", &[]);
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
        off.commit(&rec, "http", &[]);
        assert_eq!(off.held(), (0, 0));
        // Outside any call, steps are no-ops.
        assert!(!span("x").recording());
        assert!(outgoing().is_none());
    }
}
