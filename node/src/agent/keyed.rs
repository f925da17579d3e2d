//! Once per key where the call runs. An async call with an idempotency key is handed to
//! the member that runs it with that key (in the QUIC `Invoke`); that member runs the
//! function once per (caller, function, key) within `[async] idempotency_window` and
//! answers a repeat, as a retried hand-off after a lost answer or a crash of the caller,
//! with the stored answer instead of running it again. Calls of one key wait for each
//! other, so two hand-offs at once still run it once.
//!
//! An async call without a key is handed on with its call id as an implicit key
//! ([`call_key`]), so the member keeps its answer for `[async] handoff_window`: a hand-off
//! whose answer was lost with the link or with the sender (killed, restarted) gets that
//! answer back instead of a second run. To find it, the retry goes where the call went:
//! the sender notes the member (on disk, before sending) and its placement prefers it
//! while it is alive ([`Handoff`]).
//!
//! The key travels from the queue to the QUIC client in a task-local (as the trace
//! context does), so the placement code between them does not carry it.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;

use super::Node;
use crate::dispatch::{Placed, Refused};

tokio::task_local! {
    static HANDOFF: Handoff;
}

/// Notes, durably, the member a call is about to be handed to.
pub type NoteHandoff =
    Arc<dyn Fn(String) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// What a call handed on carries besides itself: its key, and for an async call where it
/// went before and how to note where it goes.
#[derive(Clone, Default)]
pub struct Handoff {
    pub key: Option<String>,
    /// The member an earlier attempt handed it to: placement tries it first.
    pub prefer: Option<String>,
    pub note: Option<NoteHandoff>,
}

/// Runs `f` with `key` as the idempotency key of the calls it hands to other members.
pub async fn with<F: Future>(key: Option<String>, f: F) -> F::Output {
    with_handoff(
        Handoff {
            key,
            ..Handoff::default()
        },
        f,
    )
    .await
}

/// Runs `f` handing its calls on as `h` says.
pub async fn with_handoff<F: Future>(h: Handoff, f: F) -> F::Output {
    HANDOFF.scope(h, f).await
}

/// The idempotency key of the call being handed on, if any.
pub fn current() -> Option<String> {
    HANDOFF.try_with(|h| h.key.clone()).ok().flatten()
}

/// The member an earlier attempt of the call being placed was handed to, if any.
pub fn preferred() -> Option<String> {
    HANDOFF.try_with(|h| h.prefer.clone()).ok().flatten()
}

/// Before the call being placed goes to `member`: notes it (on disk, for the call's
/// next attempt, even after a crash) when that is new.
pub async fn handing_to(member: &str) {
    let note = HANDOFF
        .try_with(|h| match &h.note {
            Some(n) if h.prefer.as_deref() != Some(member) => Some(n.clone()),
            _ => None,
        })
        .ok()
        .flatten();
    if let Some(note) = note {
        note(member.to_string()).await;
    }
}

/// The key an async call without one is handed on with: its call id, after a space (no
/// caller's key has one, so the two never meet).
pub fn call_key(public_id: &str) -> String {
    format!("{CALL_KEY_PREFIX}{public_id}")
}

const CALL_KEY_PREFIX: &str = "call ";

/// Whether `key` is a call's implicit key ([`call_key`]).
pub fn is_call_key(key: &str) -> bool {
    key.starts_with(CALL_KEY_PREFIX)
}

/// An idempotency key as callers may send it (HTTP header, MQTT user property, CoAP
/// option): 1 to 255 printable ASCII characters.
pub fn key_ok(k: &str) -> bool {
    (1..=255).contains(&k.len()) && k.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

/// What a trigger says when a key is not one.
pub const KEY_RULE: &str = "an idempotency key must be 1 to 255 printable ASCII characters";

/// One lock per key in use (dropped with its last holder).
#[derive(Default)]
pub struct KeyLocks {
    held: Mutex<HashMap<Vec<u8>, Weak<tokio::sync::Mutex<()>>>>,
}

impl KeyLocks {
    fn lock_for(&self, k: &[u8]) -> Arc<tokio::sync::Mutex<()>> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = held.get(k).and_then(Weak::upgrade) {
            return l;
        }
        // Forget the keys nobody holds any more before adding one.
        if held.len() > 1024 {
            held.retain(|_, w| w.strong_count() > 0);
        }
        let l = Arc::new(tokio::sync::Mutex::new(()));
        held.insert(k.to_vec(), Arc::downgrade(&l));
        l
    }
}

/// The store's key for `key` of `function` from `caller`.
fn record_key(caller: &str, function: &str, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(caller.len() + function.len() + key.len() + 2);
    k.extend_from_slice(caller.as_bytes());
    k.push(0);
    k.extend_from_slice(function.as_bytes());
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}

impl Node {
    /// A trigger's call with the idempotency key its message carried, if any (`caller`
    /// names the trigger): a member that runs calls itself runs it once per key within the
    /// window ([`Node::call_once`]); a router hands the key on with the call, so the member
    /// that runs it does.
    pub async fn call_with_key(
        &self,
        caller: &str,
        name: &str,
        key: Option<String>,
        body: Bytes,
    ) -> Result<Placed, Refused> {
        match key {
            None => self.call(name, body).await,
            Some(k) if self.links.dispatch.get().is_none() => {
                self.call_once(caller, name, &k, body).await
            }
            Some(k) => with(Some(k), self.call(name, body)).await,
        }
    }

    /// [`Node::call`] run once per (`caller`, `name`, `key`) within the idempotency
    /// window: the stored answer when it ran before, else a run whose answer is stored
    /// before it is returned. Only answers are kept: a failed run may be tried
    /// again.
    pub async fn call_once(
        &self,
        caller: &str,
        name: &str,
        key: &str,
        body: Bytes,
    ) -> Result<Placed, Refused> {
        self.once(caller, name, key, self.call(name, body)).await
    }

    /// [`Node::run_here`] for a router that placed a call on itself: once per key when the
    /// call carries one (as the member it would have handed it to does), recorded as from
    /// this member. The implicit key of a call from this member's own queue is not: the
    /// queue records its answer (one handed here by another member's queue is).
    pub async fn run_here_once(&self, name: &str, body: Bytes) -> Result<Placed, Refused> {
        let run = async {
            self.run_here(name, body)
                .await
                .map_err(|e| Refused::new(e.status(), e.to_string()))
        };
        let own_queue = HANDOFF.try_with(|h| h.note.is_some()).unwrap_or(false);
        match current().filter(|k| !(own_queue && is_call_key(k))) {
            None => run.await,
            Some(k) => self.once(&self.id, name, &k, run).await,
        }
    }

    /// `run` once per (`caller`, `name`, `key`) within the idempotency window.
    pub(crate) async fn once(
        &self,
        caller: &str,
        name: &str,
        key: &str,
        run: impl Future<Output = Result<Placed, Refused>>,
    ) -> Result<Placed, Refused> {
        let k = record_key(caller, name, key);
        let lock = self.keyed.lock_for(&k);
        let _held = lock.lock().await;
        let window = self.window_for(key).as_millis() as u64;
        let store_err = |e: crate::store::StoreError| Refused::new(500, e.to_string());
        if let Some((at, body)) = self.store.keyed_result(&k).map_err(store_err)? {
            if crate::store::now_ms().saturating_sub(at) <= window {
                crate::traces::note("replayed", "true");
                self.queue
                    .replayed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let tier = self.roles.tier;
                return Ok(Placed {
                    body,
                    node: self.id.clone(),
                    tier,
                    cold: false,
                    truncated: false,
                    predicted_ms: None,
                    took_ms: 0.0,
                    run_ms: 0.0,
                    startup_ms: None,
                    attempts: 1,
                    module_sent: None,
                    load: None,
                });
            }
        }
        let placed = run.await?;
        self.store
            .put_keyed(&k, &placed.body)
            .await
            .map_err(store_err)?;
        Ok(placed)
    }

    /// How long the answer of a call with `key` is kept: a caller's key names its call
    /// for the idempotency window, an implicit one for the (shorter) hand-off window.
    fn window_for(&self, key: &str) -> std::time::Duration {
        let a = &self.config.async_calls;
        if is_call_key(key) {
            a.handoff_window
        } else {
            a.idempotency_window
        }
    }

    /// Forgets keyed answers older than their window.
    pub(super) fn sweep_keyed(&self) {
        let a = &self.config.async_calls;
        let now = crate::store::now_ms();
        let cutoff = |w: std::time::Duration| now.saturating_sub(w.as_millis() as u64);
        let (keyed, handed) = (cutoff(a.idempotency_window), cutoff(a.handoff_window));
        let result = self
            .store
            .sweep_keyed(|k, at| expired(k, at, keyed, handed));
        if let Err(e) = result {
            tracing::warn!("sweeping old keyed answers: {e}");
        }
    }
}

/// Whether the answer kept under record key `k` at `at` (Unix ms) is past its window: kept
/// before `keyed` for a caller's key, before `handed` for a call's implicit one.
fn expired(k: &[u8], at: u64, keyed: u64, handed: u64) -> bool {
    let key = k.rsplit(|b| *b == 0).next().unwrap_or_default();
    at < if key.starts_with(CALL_KEY_PREFIX.as_bytes()) {
        handed
    } else {
        keyed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_key_is_seen_only_inside_its_scope() {
        assert_eq!(current(), None);
        let inner = with(Some("k1".into()), async { current() }).await;
        assert_eq!(inner.as_deref(), Some("k1"));
        assert_eq!(with(None, async { current() }).await, None);
        assert_eq!(current(), None);
    }

    #[test]
    fn implicit_keys_are_no_callers_key() {
        let k = call_key("3f2a");
        assert!(is_call_key(&k));
        assert!(!key_ok(&k), "a caller cannot send {k:?}");
        assert!(!is_call_key("call-3f2a"));
    }

    #[test]
    fn implicit_keys_expire_with_the_handoff_window() {
        let caller = record_key("router", "f", "order-7");
        let implicit = record_key("router", "f", &call_key("3f2a"));
        // Kept at 500; the caller's keys expire before 100, implicit ones before 1000.
        assert!(!expired(&caller, 500, 100, 1000));
        assert!(expired(&implicit, 500, 100, 1000));
        assert!(expired(&caller, 50, 100, 1000));
        assert!(!expired(&implicit, 1000, 100, 1000));
    }

    #[tokio::test]
    async fn a_handoff_is_noted_once_per_new_member() {
        let noted = Arc::new(Mutex::new(Vec::new()));
        let n = noted.clone();
        let note: NoteHandoff = Arc::new(move |m| {
            n.lock().unwrap().push(m);
            Box::pin(async {})
        });
        let h = Handoff {
            key: Some("k".into()),
            prefer: Some("edge-1".into()),
            note: Some(note),
        };
        with_handoff(h, async {
            assert_eq!(preferred().as_deref(), Some("edge-1"));
            handing_to("edge-1").await;
            handing_to("edge-2").await;
        })
        .await;
        handing_to("edge-3").await;
        assert_eq!(*noted.lock().unwrap(), ["edge-2"]);
    }

    #[test]
    fn keys_of_different_callers_and_functions_differ() {
        assert_ne!(record_key("a", "f", "k"), record_key("b", "f", "k"));
        assert_ne!(record_key("a", "f", "k"), record_key("a", "g", "k"));
        // The separator keeps "a" + "bf" apart from "ab" + "f".
        assert_ne!(record_key("a", "bf", "k"), record_key("ab", "f", "k"));
    }

    #[tokio::test]
    async fn one_lock_per_key_while_held() {
        let locks = KeyLocks::default();
        let a = locks.lock_for(b"x");
        let b = locks.lock_for(b"x");
        assert!(Arc::ptr_eq(&a, &b));
        let c = locks.lock_for(b"y");
        assert!(!Arc::ptr_eq(&a, &c));
        drop((a, b));
        // Nobody holds "x": a new lock.
        let d = locks.lock_for(b"x");
        assert_eq!(Arc::strong_count(&d), 1);
    }
}
