//! The durable async queue: a call is on disk before its id is returned, runs on one of
//! `workers`, and its result is kept for `result_ttl`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, Semaphore};

use super::callbacks::Finished;
use super::{InvokeError, Node};
use crate::store::{now_ms, AsyncCall, CallResult, StoreError};

/// Calls accepted and not yet finished, and the channel that hands them to the workers.
pub struct AsyncQueue {
    queued: AtomicU64,
    max_queued: u64,
    tx: mpsc::Sender<u64>,
}

impl AsyncQueue {
    /// A queue holding the calls still `pending` from before a restart; the receiver goes to
    /// [`Node::run_async_workers`].
    pub fn new(max_queued: u64, pending: &[u64]) -> (AsyncQueue, mpsc::Receiver<u64>) {
        let cap = (max_queued as usize).max(pending.len()).max(1);
        let (tx, rx) = mpsc::channel(cap);
        for id in pending {
            // Cannot fail: the channel holds at least every pending call.
            let _ = tx.try_send(*id);
        }
        let q = AsyncQueue {
            queued: AtomicU64::new(pending.len() as u64),
            max_queued,
            tx,
        };
        (q, rx)
    }

    /// Calls waiting or running.
    pub fn depth(&self) -> u64 {
        self.queued.load(Ordering::Relaxed)
    }
}

impl Node {
    /// Accepts an async call: durable on disk before this returns its id.
    pub async fn submit(
        &self,
        name: &str,
        body: Bytes,
        callback: Option<String>,
    ) -> Result<String, InvokeError> {
        if self.lookup(name).is_none() {
            return Err(InvokeError::NotFound(name.to_string()));
        }
        if let Some(url) = &callback {
            self.callbacks.check(url)?;
        }
        let q = &self.queue;
        let queued = q.queued.fetch_add(1, Ordering::AcqRel);
        if queued >= q.max_queued {
            q.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(InvokeError::QueueFull(queued));
        }
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
        let (id, public) = match self.store.enqueue(&call).await {
            Ok(ids) => ids,
            Err(e) => {
                q.queued.fetch_sub(1, Ordering::AcqRel);
                return Err(e.into());
            }
        };
        // The channel is as large as the queue limit, so this only fails while shutting down;
        // the call is on disk and runs after the restart.
        let _ = q.tx.try_send(id);
        Ok(hex::encode(public))
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
        if let Some(r) = self.store.result(id)? {
            return Ok(Some((r.function.clone(), Some(r))));
        }
        Ok(self.store.call(id)?.map(|c| (c.function, None)))
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
    fn public_call_id(&self, id: u64) -> String {
        match self.store.public_id(id) {
            Ok(Some(p)) => hex::encode(p),
            _ => format!("{id:016x}"),
        }
    }

    /// Runs queued async calls, `workers` at a time, until the channel closes.
    pub async fn run_async_workers(self: Arc<Self>, mut rx: mpsc::Receiver<u64>) {
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
        let (status, body) = loop {
            match self.place(&call.function, call.body.clone()).await {
                Ok(out) => break (200u16, out.body),
                // Busy is back-pressure, not a result: wait and try again.
                Err(e) if e.status == 429 => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(e) => break (e.status, Bytes::from(e.message)),
            }
        };
        let result = CallResult {
            function: call.function.clone(),
            status,
            finished_ms: now_ms(),
            body: body.clone(),
        };
        if let Err(e) = self.store.complete(id, &result) {
            tracing::error!("async call {id:016x}: recording result: {e}");
            return None;
        }
        self.queue.queued.fetch_sub(1, Ordering::AcqRel);
        if let Some(url) = call.callback {
            let done = Finished {
                id: self.public_call_id(id),
                function: &call.function,
                status,
                body,
            };
            let _delivery = crate::traces::span("callback");
            self.callbacks
                .deliver(&self.logs, &self.id, &done, &url)
                .await;
        }
        Some(status)
    }
}
