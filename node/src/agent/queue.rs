//! The durable async queue: a call is on disk before its id is returned, runs on one of
//! `workers`, is retried with backoff while its failures may pass (the rules are
//! `fogline_core::delivery`'s) and its deadline allows, and its result is kept for
//! `result_ttl`; a call given up goes to the dead-letter queue with every attempt's
//! reason, to be replayed or dropped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, Semaphore};

use fogline_core::delivery::{Attempt, Next};
use fogline_core::units::ByteSize;

use super::parked::{Parked, Turn};
use super::{InvokeError, Node};
use crate::store::{
    now_ms, AsyncCall, CallMeta, CallResult, DeadCall, DeadKind, Enqueued, PendingCallback,
    StoreError,
};

/// The longest wait between two tries of a call waiting for a place: a healed link is
/// used within about this long.
const OUTBOX_POLL_MAX: Duration = Duration::from_secs(1);

/// Calls accepted and not yet finished, and the channel that hands them to the workers.
pub struct AsyncQueue {
    queued: AtomicU64,
    max_queued: u64,
    tx: mpsc::Sender<u64>,
    /// Attempts that failed and were scheduled again.
    pub retries: AtomicU64,
    /// Calls given up (into the dead-letter queue), and dead calls dropped past its bound.
    pub dead: AtomicU64,
    /// Calls each namespace holds on disk, queued or dead-lettered (bounded by
    /// `[async] max_per_namespace`).
    held: std::sync::Mutex<std::collections::HashMap<String, u64>>,
    max_per_namespace: u64,
    /// Submissions answered with an earlier call of the same idempotency key.
    pub deduplicated: AtomicU64,
    /// Calls answered with the answer kept under their key instead of a run.
    pub replayed: AtomicU64,
    /// Hands callbacks in the outbox to [`Node::run_outbox`].
    pub(super) outbox_tx: mpsc::UnboundedSender<u64>,
    outbox_rx: std::sync::Mutex<Option<mpsc::UnboundedReceiver<u64>>>,
    pub callbacks_sent: AtomicU64,
    pub callback_retries: AtomicU64,
    /// Calls waiting for a place to come back (the outbox of a cut-off site).
    pub parked: Parked,
    /// Tries of a waiting call that still found no place.
    pub outbox_tries: AtomicU64,
    /// Submissions refused because the disk kept too little free space.
    pub disk_full: AtomicU64,
}

/// How a call is submitted, beyond its function and body.
#[derive(Debug, Default, Clone)]
pub struct Submit {
    /// Where its result is POSTed.
    pub callback: Option<String>,
    /// `X-Idempotency-Key`: a second submission with it (same function, within
    /// `[async] idempotency_window`) is the same call.
    pub key: Option<String>,
    /// How long it may take to succeed, retries included (default `[async] deadline`).
    pub deadline: Option<Duration>,
    /// Where its result goes back as a message (set by the MQTT trigger, never from a
    /// caller's input; the callback allow-list does not apply). With it, each submission
    /// is a call of its own and answered, and a key makes the function run once (its
    /// repeats answered with the stored output) rather than the submission count once.
    pub reply: Option<super::callbacks::MessageReply>,
}

/// An accepted call: the id its caller knows it by, and whether an earlier submission
/// with the same idempotency key made it.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub id: String,
    pub existing: bool,
}

/// A dead call as `GET /v1/dlq` lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeadEntry {
    pub id: String,
    /// `call` (running it was given up) or `callback` (telling its callback was).
    pub kind: DeadKind,
    pub function: String,
    pub failed_ms: u64,
    pub reason: String,
    pub attempts: Vec<Attempt>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub callback: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    pub body_bytes: usize,
}

impl AsyncQueue {
    /// A queue holding the calls still `pending` from before a restart; the receiver goes to
    /// [`Node::run_async_workers`].
    pub fn new(
        max_queued: u64,
        max_per_namespace: u64,
        pending: &[u64],
    ) -> (AsyncQueue, mpsc::Receiver<u64>) {
        let cap = (max_queued as usize).max(pending.len()).max(1);
        let (tx, rx) = mpsc::channel(cap);
        let (outbox_tx, outbox_rx) = mpsc::unbounded_channel();
        for id in pending {
            // Cannot fail: the channel holds at least every pending call.
            let _ = tx.try_send(*id);
        }
        let q = AsyncQueue {
            queued: AtomicU64::new(pending.len() as u64),
            max_queued,
            tx,
            retries: AtomicU64::new(0),
            dead: AtomicU64::new(0),
            held: std::sync::Mutex::new(std::collections::HashMap::new()),
            max_per_namespace,
            deduplicated: AtomicU64::new(0),
            replayed: AtomicU64::new(0),
            outbox_tx,
            outbox_rx: std::sync::Mutex::new(Some(outbox_rx)),
            callbacks_sent: AtomicU64::new(0),
            callback_retries: AtomicU64::new(0),
            parked: Parked::default(),
            outbox_tries: AtomicU64::new(0),
            disk_full: AtomicU64::new(0),
        };
        (q, rx)
    }

    /// Counts `n` more (or fewer) calls held by namespace `ns`.
    pub fn hold(&self, ns: &str, n: i64) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let v = held.entry(ns.to_string()).or_insert(0);
        *v = v.saturating_add_signed(n);
    }

    /// Takes room for one more call of namespace `ns`, or says how full it is.
    fn reserve(&self, ns: &str) -> Result<(), InvokeError> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let v = held.entry(ns.to_string()).or_insert(0);
        if *v >= self.max_per_namespace {
            return Err(InvokeError::NamespaceFull {
                namespace: ns.to_string(),
                held: *v,
            });
        }
        *v += 1;
        Ok(())
    }

    /// Calls waiting or running.
    pub fn depth(&self) -> u64 {
        self.queued.load(Ordering::Relaxed)
    }

    /// Prometheus text for retries and the dead-letter queue (`dead_now`: held now).
    pub fn metrics(&self, out: &mut String, dead_now: usize) {
        use std::fmt::Write;
        let _ = writeln!(out, "# HELP fogline_async_dead Async calls in the dead-letter queue now.\n# TYPE fogline_async_dead gauge\nfogline_async_dead {dead_now}");
        let _ = writeln!(out, "# HELP fogline_outbox_calls Async calls waiting for a place to come back (a tier cut off).\n# TYPE fogline_outbox_calls gauge\nfogline_outbox_calls {}", self.parked.calls());
        let age = self
            .parked
            .oldest_ms()
            .map_or(0.0, |since| now_ms().saturating_sub(since) as f64 / 1e3);
        let _ = writeln!(out, "# HELP fogline_outbox_oldest_seconds How long the longest-waiting call has waited for a place.\n# TYPE fogline_outbox_oldest_seconds gauge\nfogline_outbox_oldest_seconds {age:.3}");
        for (metric, help, v) in [
            (
                "fogline_async_retries_total",
                "Failed async attempts scheduled again (with backoff).",
                &self.retries,
            ),
            (
                "fogline_async_dead_total",
                "Async calls given up: moved to the dead-letter queue.",
                &self.dead,
            ),
            (
                "fogline_async_deduplicated_total",
                "Submissions answered with the earlier call of their idempotency key.",
                &self.deduplicated,
            ),
            (
                "fogline_keyed_replays_total",
                "Calls handed here again (or sent again with their idempotency key) answered with the answer kept under their key, not run again.",
                &self.replayed,
            ),
            (
                "fogline_async_disk_full_total",
                "Submissions refused (429) because the data folder's disk kept less than [async] min_free_disk free.",
                &self.disk_full,
            ),
            (
                "fogline_outbox_tries_total",
                "Tries of a waiting async call that still found no place.",
                &self.outbox_tries,
            ),
            (
                "fogline_callbacks_delivered_total",
                "Callbacks delivered (from the durable outbox).",
                &self.callbacks_sent,
            ),
            (
                "fogline_callback_retries_total",
                "Callback deliveries that failed and were scheduled again.",
                &self.callback_retries,
            ),
        ] {
            let v = v.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "# HELP {metric} {help}\n# TYPE {metric} counter\n{metric} {v}"
            );
        }
    }
}

impl Node {
    /// Accepts an async call: durable on disk before this returns its id.
    pub async fn submit(
        &self,
        name: &str,
        body: Bytes,
        how: Submit,
    ) -> Result<Accepted, InvokeError> {
        if self.lookup(name).is_none() {
            return Err(InvokeError::NotFound(name.to_string()));
        }
        if let Some(url) = &how.callback {
            self.callbacks.check(url)?;
        }
        let answer_each = how.reply.is_some();
        let callback = match how.reply {
            Some(to) => Some(to.destination()),
            None => how.callback,
        };
        let q = &self.queue;
        let queued = q.queued.fetch_add(1, Ordering::AcqRel);
        if queued >= q.max_queued {
            q.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(InvokeError::QueueFull(queued));
        }
        if let Err(e) = self.disk_room(body.len() as u64) {
            q.queued.fetch_sub(1, Ordering::AcqRel);
            q.disk_full.fetch_add(1, Ordering::Relaxed);
            return Err(e);
        }
        let ns = fogline_core::access::split(name).1;
        if let Err(e) = q.reserve(ns) {
            q.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(e);
        }
        let cfg = &self.config.async_calls;
        let call = AsyncCall {
            function: name.to_string(),
            callback,
            body,
            // The worker's spans continue the submitter's trace.
            trace: crate::traces::outgoing().map(|t| {
                let at = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_micros() as u64);
                (t, at)
            }),
        };
        let meta = CallMeta {
            deadline_ms: now_ms()
                .saturating_add(how.deadline.unwrap_or(cfg.deadline).as_millis() as u64),
            key: how.key,
            attempts: Vec::new(),
            handed_to: None,
        };
        let window = if answer_each {
            0
        } else {
            cfg.idempotency_window.as_millis() as u64
        };
        let (id, public, existing) = match self.store.enqueue(&call, &meta, window).await {
            Ok(Enqueued::New(id, public)) => (id, public, false),
            Ok(Enqueued::Existing(id, public)) => {
                q.queued.fetch_sub(1, Ordering::AcqRel);
                q.hold(ns, -1);
                q.deduplicated.fetch_add(1, Ordering::Relaxed);
                (id, public, true)
            }
            Err(e) => {
                q.queued.fetch_sub(1, Ordering::AcqRel);
                q.hold(ns, -1);
                return Err(e.into());
            }
        };
        if !existing {
            // The channel is as large as the queue limit, so this only fails while
            // shutting down; the call is on disk and runs after the restart.
            let _ = q.tx.try_send(id);
        }
        Ok(Accepted {
            id: hex::encode(public),
            existing,
        })
    }

    /// Whether the data folder's disk has room for a call of `body` bytes and still keeps
    /// `[async] min_free_disk` free. (When the free space cannot be read, the store's own
    /// write is the check.)
    fn disk_room(&self, body: u64) -> Result<(), InvokeError> {
        let dir = &self.config.node.data_dir;
        let Ok(st) = rustix::fs::statvfs(dir) else {
            return Ok(());
        };
        let free = st.f_bavail.saturating_mul(st.f_frsize);
        let keep = self.config.async_calls.min_free_disk.bytes();
        // The call is written about twice (sled's log, then its pages).
        if free >= keep.saturating_add(body.saturating_mul(2)) {
            return Ok(());
        }
        Err(InvokeError::DiskFull {
            dir: dir.display().to_string(),
            free_mib: free / ByteSize::MIB,
            keep_mib: keep / ByteSize::MIB,
        })
    }

    /// Prometheus text for the queue's retries and dead-letter queue.
    pub fn queue_metrics(&self, out: &mut String) {
        self.queue.metrics(out, self.store.dead_len());
    }

    /// The dead-letter queue, oldest first.
    pub fn dead_calls(&self) -> Result<Vec<DeadEntry>, StoreError> {
        Ok(self
            .store
            .dead_calls()?
            .into_iter()
            .map(|(id, d)| self.dead_entry(id, d))
            .collect())
    }

    /// The dead call its caller knows as `id`.
    pub fn dead_call(&self, id: &str) -> Result<Option<DeadEntry>, StoreError> {
        let Some(n) = self.internal_call_id(id)? else {
            return Ok(None);
        };
        Ok(self.store.dead_call(n)?.map(|d| self.dead_entry(n, d)))
    }

    fn dead_entry(&self, id: u64, d: DeadCall) -> DeadEntry {
        DeadEntry {
            id: self.public_call_id(id),
            kind: d.kind,
            function: d.function,
            failed_ms: d.failed_ms,
            reason: d.reason,
            attempts: d.meta.attempts,
            callback: d.callback,
            idempotency_key: d.meta.key,
            body_bytes: d.body.len(),
        }
    }

    /// Puts a dead call back on the queue (same id, no attempts made, a new deadline of
    /// `[async] deadline`). False when no dead call has this id.
    pub async fn replay(&self, id: &str) -> Result<bool, InvokeError> {
        let Some(n) = self.internal_call_id(id)? else {
            return Ok(false);
        };
        let q = &self.queue;
        let queued = q.queued.fetch_add(1, Ordering::AcqRel);
        if queued >= q.max_queued {
            q.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(InvokeError::QueueFull(queued));
        }
        let deadline = now_ms().saturating_add(self.config.async_calls.deadline.as_millis() as u64);
        match self.store.revive(n, deadline).await? {
            Some(DeadKind::Call) => {
                let _ = q.tx.try_send(n);
                Ok(true)
            }
            Some(DeadKind::Callback) => {
                q.queued.fetch_sub(1, Ordering::AcqRel);
                if let Ok(Some(f)) = self.store.callback(n).map(|c| c.map(|c| c.function)) {
                    q.hold(fogline_core::access::split(&f).1, -1);
                }
                let _ = q.outbox_tx.send(n);
                Ok(true)
            }
            None => {
                q.queued.fetch_sub(1, Ordering::AcqRel);
                Ok(false)
            }
        }
    }

    /// Drops a dead call for good. False when no dead call has this id.
    pub async fn drop_dead(&self, id: &str) -> Result<bool, StoreError> {
        let Some(n) = self.internal_call_id(id)? else {
            return Ok(false);
        };
        let function = self.store.dead_call(n)?.map(|d| d.function);
        let dropped = self.store.drop_dead(n).await?;
        if let (true, Some(f)) = (dropped, function) {
            self.queue.hold(fogline_core::access::split(&f).1, -1);
        }
        Ok(dropped)
    }

    /// The function and result of the async call its caller knows as `id`: `Ok(None)`
    /// when unknown, no result when still queued.
    #[allow(clippy::type_complexity)]
    pub fn call_result(
        &self,
        id: &str,
    ) -> Result<Option<(String, Option<CallResult>)>, StoreError> {
        let Some(id) = self.internal_call_id(id)? else {
            return Ok(None);
        };
        let done = || -> Result<_, StoreError> {
            Ok(self
                .store
                .result(id)?
                .map(|r| (r.function.clone(), Some(r))))
        };
        if let Some(r) = done()? {
            return Ok(Some(r));
        }
        if let Some(c) = self.store.call(id)? {
            return Ok(Some((c.function, None)));
        }
        // Neither: the call may have finished between the two reads (its result recorded
        // and itself taken off the queue in one transaction), so its result is there now.
        // Without this second look an accepted call read as it finished was "not found".
        done()
    }

    /// The call a caller's id names: 32 hex digits (128 random bits), or the 16 hex digits
    /// of a call accepted by a release before those (which has no random id).
    fn internal_call_id(&self, id: &str) -> Result<Option<u64>, StoreError> {
        match id.len() {
            32 => {
                let mut public = [0u8; 16];
                if hex::decode_to_slice(id, &mut public).is_err() {
                    return Ok(None);
                }
                self.store.by_public(&public)
            }
            16 => match u64::from_str_radix(id, 16) {
                Ok(n) if self.store.public_id(n)?.is_none() => Ok(Some(n)),
                _ => Ok(None),
            },
            _ => Ok(None),
        }
    }

    /// The id callers know call `id` by.
    pub(super) fn public_call_id(&self, id: u64) -> String {
        match self.store.public_id(id) {
            Ok(Some(p)) => hex::encode(p),
            _ => format!("{id:016x}"),
        }
    }

    /// Runs queued async calls, `workers` at a time, until the channel closes.
    pub async fn run_async_workers(self: Arc<Self>, mut rx: mpsc::Receiver<u64>) {
        let outbox = self
            .queue
            .outbox_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(outbox) = outbox {
            tokio::spawn(self.clone().run_outbox(outbox));
        }
        let workers = Arc::new(Semaphore::new(self.config.async_calls.workers as usize));
        let mut sweep = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                id = rx.recv() => {
                    let Some(id) = id else { break };
                    let Ok(permit) = workers.clone().acquire_owned().await else { break };
                    let node = self.clone();
                    tokio::spawn(async move {
                        node.run_async_call(id).await;
                        drop(permit);
                    });
                }
                _ = sweep.tick() => {
                    let ttl = self.config.async_calls.result_ttl.as_millis() as u64;
                    if let Err(e) = self.store.sweep_results(now_ms().saturating_sub(ttl)) {
                        tracing::warn!("sweeping old async results: {e}");
                    }
                    let window = self.config.async_calls.idempotency_window.as_millis() as u64;
                    if let Err(e) = self.store.sweep_keys(now_ms().saturating_sub(window)) {
                        tracing::warn!("sweeping old idempotency keys: {e}");
                    }
                    self.sweep_keyed();
                }
            }
        }
    }

    async fn run_async_call(&self, id: u64) {
        let call = match self.store.call(id) {
            Ok(Some(c)) => c,
            Ok(None) => return,
            Err(e) => {
                tracing::error!("async call {id:016x}: {e}");
                return;
            }
        };
        if self.queue.parked.turn(&call.function, id) == Turn::Behind {
            // Kept on disk; queued again when the call ahead of it goes through.
            return;
        }
        let rec = self
            .traces
            .begin(call.trace.as_ref().map(|(t, _)| t.as_str()), None);
        let public = self.public_call_id(id);
        rec.set_call_id(&public);
        let status = crate::traces::Traces::run(rec.clone(), self.run_async_traced(id, call)).await;
        match status {
            Some(st) => self
                .traces
                .commit(&rec, "async", &[("call", &public), ("status", &st)]),
            None => self.traces.commit(&rec, "async", &[("call", &public)]),
        }
    }

    async fn run_async_traced(&self, id: u64, call: AsyncCall) -> Option<u16> {
        crate::traces::note("function", &call.function);
        if let Some((_, at)) = call.trace {
            // From acceptance until a worker took it.
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as u64);
            let waited = std::time::Duration::from_micros(now.saturating_sub(at));
            crate::traces::past("queued", waited, waited, &[]);
        }
        let (status, body, placed_on) = match self.attempt(id, &call).await {
            Some(done) => done,
            // Scheduled again, or given up (and its callback told), or the store failed.
            None => return None,
        };
        let result = CallResult {
            function: call.function.clone(),
            status,
            finished_ms: now_ms(),
            body: body.clone(),
        };
        let callback = call.callback.map(|url| PendingCallback {
            placed_on,
            ..PendingCallback::new(url, &call.function, status, body)
        });
        if let Err(e) = self.store.complete(id, &result, callback.as_ref()).await {
            tracing::error!("async call {id:016x}: recording result: {e}");
            return None;
        }
        self.queue.queued.fetch_sub(1, Ordering::AcqRel);
        self.queue
            .hold(fogline_core::access::split(&call.function).1, -1);
        self.release(&call.function, id);
        if callback.is_some() {
            let _ = self.queue.outbox_tx.send(id);
        }
        Some(status)
    }

    /// One attempt at call `id`: its answer and where it ran, or `None` when it failed and
    /// was scheduled again (after a backoff) or given up.
    async fn attempt(&self, id: u64, call: &AsyncCall) -> Option<(u16, Bytes, Option<String>)> {
        let mut meta = match self.store.meta(id) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!("async call {id:016x}: {e}");
                return None;
            }
        };
        let now = now_ms();
        if meta.deadline_ms != 0 && now > meta.deadline_ms {
            let why = format!(
                "its deadline passed before attempt {}",
                meta.attempts.len() + 1
            );
            self.give_up(id, call, meta, why).await;
            return None;
        }
        // The member that runs it keeps the answer by its key (the caller's, or else the
        // call's id), and a later attempt goes back there first: a hand-off whose answer
        // was lost (the link, or this process, gone meanwhile) gets it, not a second run.
        let handed = Arc::new(std::sync::Mutex::new(None::<String>));
        let (went, mut gone) = tokio::sync::oneshot::channel();
        let handoff = super::keyed::Handoff {
            key: Some(
                meta.key
                    .clone()
                    .unwrap_or_else(|| super::keyed::call_key(&self.public_call_id(id))),
            ),
            prefer: meta.handed_to.clone(),
            note: Some(self.note_handoff(id, handed.clone(), went)),
        };
        let placed =
            super::keyed::with_handoff(handoff, self.place(&call.function, call.body.clone()));
        tokio::pin!(placed);
        let placed = tokio::select! {
            biased;
            out = &mut placed => out,
            Ok(()) = &mut gone => {
                // A place took it: the calls that waited behind it (a tier was cut off)
                // go on now, in order, rather than after its run.
                self.release(&call.function, id);
                placed.await
            }
        };
        if let Some(to) = handed.lock().unwrap_or_else(|p| p.into_inner()).take() {
            meta.handed_to = Some(to);
        }
        let (status, reason, place) = match placed {
            Ok(out) => {
                let on = out.place();
                return Some((200, out.body, Some(on)));
            }
            Err(e) if e.unplaced => {
                // No place could take it (a tier cut off): it waits, in order with the
                // function's later calls, until its deadline; not a failed attempt.
                // `None`: it waits behind an earlier call of its function.
                let tries = self
                    .queue
                    .parked
                    .no_place(&call.function, id, now_ms(), &e.message)?;
                self.queue.outbox_tries.fetch_add(1, Ordering::Relaxed);
                let poll = self.backoff(u32::MAX);
                let wait = fogline_core::delivery::Backoff {
                    max: poll.max.min(OUTBOX_POLL_MAX),
                    ..poll
                }
                .delay(tries, super::random_unit());
                if tries == 1 {
                    tracing::info!(
                        "async call {} of {} waits for a place: {}",
                        self.public_call_id(id),
                        call.function,
                        e.message
                    );
                }
                crate::traces::note("waits_for_place_ms", wait.as_millis());
                self.requeue_after(id, wait);
                return None;
            }
            Err(e) => (e.status, e.message, None::<String>),
        };
        // Only a lost answer (502) or none in time (504) may be kept there: after a
        // refusal (it never ran) or a failed run (no answer is kept) the next attempt goes
        // wherever placement says.
        if !matches!(status, 502 | 504) {
            meta.handed_to = None;
        }
        meta.attempts.push(Attempt {
            at_ms: now_ms(),
            status,
            place,
            reason,
        });
        let backoff = self.backoff(self.config.async_calls.max_attempts);
        let idempotent = meta.key.is_some()
            || self
                .lookup(&call.function)
                .is_some_and(|f| f.manifest.idempotent);
        let deadline = if meta.deadline_ms == 0 {
            u64::MAX
        } else {
            meta.deadline_ms
        };
        match backoff.next(
            meta.attempts.len() as u32,
            status,
            idempotent,
            now_ms(),
            deadline,
            super::random_unit(),
        ) {
            Next::Retry(wait) => {
                if let Err(e) = self.store.set_meta(id, &meta).await {
                    tracing::error!("async call {id:016x}: recording its attempt: {e}");
                }
                self.queue.retries.fetch_add(1, Ordering::Relaxed);
                crate::traces::note("retry_in_ms", wait.as_millis());
                tracing::debug!(
                    "async call {id:016x} of {}: attempt {} failed (HTTP {status}); again in {wait:?}",
                    call.function,
                    meta.attempts.len()
                );
                self.requeue_after(id, wait);
            }
            Next::GiveUp(why) => self.give_up(id, call, meta, why).await,
        }
        None
    }

    /// Notes on disk, before async call `id` is handed to a member, which one (and in
    /// `handed`, for the attempt's own record of the call), and says on `went` that it
    /// was handed on (the first time).
    fn note_handoff(
        &self,
        id: u64,
        handed: Arc<std::sync::Mutex<Option<String>>>,
        went: tokio::sync::oneshot::Sender<()>,
    ) -> super::keyed::NoteHandoff {
        let store = self.store.clone();
        let went = std::sync::Mutex::new(Some(went));
        Arc::new(move |member: String| {
            if let Some(w) = went.lock().unwrap_or_else(|p| p.into_inner()).take() {
                let _ = w.send(());
            }
            let (store, handed) = (store.clone(), handed.clone());
            Box::pin(async move {
                *handed.lock().unwrap_or_else(|p| p.into_inner()) = Some(member.clone());
                let noted = match store.meta(id) {
                    Ok(mut meta) => {
                        meta.handed_to = Some(member);
                        store.set_meta(id, &meta).await
                    }
                    Err(e) => Err(e),
                };
                // Not fatal: its next attempt may then run it elsewhere (at least once).
                if let Err(e) = noted {
                    tracing::warn!("async call {id:016x}: noting where it goes: {e}");
                }
            })
        })
    }

    /// Queues call `id` again after `wait`.
    fn requeue_after(&self, id: u64, wait: Duration) {
        let tx = self.queue.tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            // Closed only while shutting down: the call is on disk and runs after the
            // restart.
            let _ = tx.send(id).await;
        });
    }

    /// Call `id` of `function` went through (handed to a member, run or given up): the
    /// calls that waited behind it are queued again, in submission order.
    fn release(&self, function: &str, id: u64) {
        let behind = self.queue.parked.release(function, id);
        if behind.is_empty() {
            return;
        }
        tracing::info!(
            "{function}: its waiting call went through; {} more handed on in order",
            behind.len()
        );
        let tx = self.queue.tx.clone();
        tokio::spawn(async move {
            for id in behind {
                let _ = tx.send(id).await;
            }
        });
    }

    /// Moves call `id` to the dead-letter queue, its last failure as its result, and tells
    /// its callback.
    async fn give_up(&self, id: u64, call: &AsyncCall, meta: CallMeta, why: String) {
        let last = meta.attempts.last().cloned();
        let status = last
            .as_ref()
            .map_or(504, |a| if a.status == 0 { 502 } else { a.status });
        let message = match &last {
            Some(a) => format!(
                "{} (attempt {}: {}); {why}",
                a.reason,
                meta.attempts.len(),
                a.status
            ),
            None => why.clone(),
        };
        tracing::warn!(
            "async call {} of {} goes to the dead-letter queue: {why}",
            self.public_call_id(id),
            call.function
        );
        let dead = DeadCall {
            kind: DeadKind::Call,
            function: call.function.clone(),
            status,
            callback: call.callback.clone(),
            failed_ms: now_ms(),
            reason: why,
            meta,
            body: call.body.clone(),
        };
        let result = CallResult {
            function: call.function.clone(),
            status,
            finished_ms: now_ms(),
            body: Bytes::from(message),
        };
        // Its callback hears of the failure (through the outbox, as any).
        let callback = call
            .callback
            .clone()
            .map(|url| PendingCallback::new(url, &call.function, status, result.body.clone()));
        match self.store.bury(id, &dead, &result, callback.as_ref()).await {
            Ok(()) => {
                self.queue.dead.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::error!("async call {id:016x}: moving it to the dead-letter queue: {e}");
                return;
            }
        }
        self.queue.queued.fetch_sub(1, Ordering::AcqRel);
        self.release(&call.function, id);
        crate::traces::note("status", status);
        if callback.is_some() {
            let _ = self.queue.outbox_tx.send(id);
        }
    }
}
