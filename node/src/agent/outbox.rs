//! The callback outbox: a finished async call's callback is stored with its result (one
//! transaction), then delivered from here, retried with backoff (the rules of
//! `fogline_core::delivery`) for `[async] callback_for` from its call's end, then moved to
//! the dead-letter queue. It survives restarts: whatever is in the outbox is delivered
//! after one. Each delivery carries the call id (`X-Call-Id`, `webhook-id`), so a receiver
//! can drop duplicates (a crash between a delivery and its removal repeats it).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use fogline_core::delivery::{Attempt, Next};
use tokio::sync::{mpsc, Semaphore};

use super::callbacks::Finished;
use super::Node;
use crate::store::{now_ms, DeadCall, DeadKind};

/// Callbacks delivered at once.
const AT_ONCE: usize = 16;

impl Node {
    /// Delivers the outbox's callbacks as their ids arrive on `rx` (and those left from
    /// before a restart), until the channel closes.
    pub async fn run_outbox(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<u64>) {
        match self.store.pending_callbacks() {
            Ok(ids) => {
                for id in ids {
                    let _ = self.queue.outbox_tx.send(id);
                }
            }
            Err(e) => tracing::error!("reading the callback outbox: {e}"),
        }
        let slots = Arc::new(Semaphore::new(AT_ONCE));
        while let Some(id) = rx.recv().await {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                break;
            };
            let node = self.clone();
            tokio::spawn(async move {
                node.deliver_callback(id).await;
                drop(permit);
            });
        }
    }

    async fn deliver_callback(&self, id: u64) {
        let mut cb = match self.store.callback(id) {
            Ok(Some(cb)) => cb,
            Ok(None) => return,
            Err(e) => {
                tracing::error!("callback of call {id:016x}: {e}");
                return;
            }
        };
        let public = self.public_call_id(id);
        let done = Finished {
            id: public.clone(),
            function: &cb.function,
            status: cb.status,
            body: cb.body.clone(),
            placed_on: cb.placed_on.as_deref(),
        };
        let failed = match self.callbacks.deliver_once(&done, &cb.url).await {
            Ok(()) => {
                if let Err(e) = self.store.callback_delivered(id).await {
                    tracing::error!("callback of call {public}: {e}");
                }
                self.queue.callbacks_sent.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Err(u) => u,
        };
        cb.attempts.push(Attempt {
            at_ms: now_ms(),
            status: failed.status,
            place: None,
            reason: failed.reason.clone(),
        });
        let cfg = &self.config.async_calls;
        // Bounded by time, not by attempts.
        let backoff = self.backoff(u32::MAX);
        let until = cb
            .since_ms
            .saturating_add(cfg.callback_for.as_millis() as u64);
        let next = if failed.retry {
            // Any failure of a receiver may pass: retried like a 503.
            backoff.next(
                cb.attempts.len() as u32,
                503,
                true,
                now_ms(),
                until,
                super::random_unit(),
            )
        } else {
            Next::GiveUp("not retried".into())
        };
        match next {
            Next::Retry(wait) => {
                if let Err(e) = self.store.set_callback(id, &cb).await {
                    tracing::error!("callback of call {public}: recording its attempt: {e}");
                }
                self.queue.callback_retries.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    "callback of call {public}: {}; again in {wait:?}",
                    failed.reason
                );
                let tx = self.queue.outbox_tx.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(wait).await;
                    let _ = tx.send(id);
                });
            }
            Next::GiveUp(why) => {
                let reason = format!(
                    "callback to {} not delivered ({why}): {}",
                    cb.url, failed.reason
                );
                tracing::warn!("call {public}: {reason}; in the dead-letter queue");
                self.logs
                    .push(&cb.function, &self.id, &format!("call {public}: {reason}"));
                let dead = DeadCall {
                    kind: DeadKind::Callback,
                    function: cb.function.clone(),
                    status: cb.status,
                    callback: Some(cb.url.clone()),
                    failed_ms: now_ms(),
                    reason,
                    meta: crate::store::CallMeta {
                        attempts: cb.attempts,
                        ..Default::default()
                    },
                    body: cb.body,
                };
                let ns = fogline_core::access::split(&dead.function).1.to_string();
                match self.store.bury_callback(id, &dead).await {
                    Ok(()) => {
                        self.queue.dead.fetch_add(1, Ordering::Relaxed);
                        self.queue.hold(&ns, 1);
                    }
                    Err(e) => tracing::error!("callback of call {public}: {e}"),
                }
            }
        }
    }
}
