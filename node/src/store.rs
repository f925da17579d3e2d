//! The node's durable state, in sled: function manifests, content-addressed modules, and
//! the async call queue with its results.
//!
//! An async call is written and flushed to disk before the gateway acknowledges it; it
//! leaves the queue only after its result is written, so a crash at any point re-runs it
//! rather than losing it (at-least-once).

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use fogline_core::delivery::Attempt;
use fogline_core::{Digest, FunctionManifest};
use serde::{Deserialize, Serialize};

/// A deployed function as stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StoredFunction {
    pub manifest: FunctionManifest,
    /// RFC 3339 time of the deploy.
    pub created_at: String,
}

/// An accepted async call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AsyncCall {
    pub function: String,
    pub callback: Option<String>,
    pub body: Bytes,
    /// The trace the call continues (`traceparent`) and when it was accepted (unix µs);
    /// kept beside the call, in a tree of its own.
    pub trace: Option<(String, u64)>,
}

/// What the queue keeps of a call beside its body: when it must have run, the
/// idempotency key it was submitted with, and each failed attempt so far (so a restart
/// neither forgets the attempts nor the deadline).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CallMeta {
    /// Unix ms; 0: none (a call accepted by a release before deadlines).
    pub deadline_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<Attempt>,
    /// The member it was last handed to: its next attempt goes there first (that member
    /// keeps the answer by the call's key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handed_to: Option<String>,
}

/// What a dead-letter entry gave up on: running a call, or telling its callback.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeadKind {
    #[default]
    Call,
    Callback,
}

/// A callback waiting to be delivered: durable from the moment its call finished, retried
/// with backoff for `[async] callback_for`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingCallback {
    pub url: String,
    pub function: String,
    /// The call's status, as `X-Function-Status` says it.
    pub status: u16,
    /// When deliveries began (Unix ms).
    pub since_ms: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<Attempt>,
    /// The place that ran the call (`node (tier)`), when it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placed_on: Option<String>,
    #[serde(skip)]
    pub body: Bytes,
}

impl PendingCallback {
    /// A callback to deliver from now on, none tried yet.
    pub fn new(url: String, function: &str, status: u16, body: Bytes) -> PendingCallback {
        PendingCallback {
            url,
            function: function.to_string(),
            status,
            since_ms: now_ms(),
            attempts: Vec::new(),
            placed_on: None,
            body,
        }
    }
}

/// A call that will not be tried again: in the dead-letter queue with every attempt's
/// reason, until replayed or dropped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadCall {
    #[serde(default)]
    pub kind: DeadKind,
    pub function: String,
    /// The status its call ended with (for a dead callback, the one it was to report).
    #[serde(default)]
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback: Option<String>,
    /// When it was given up (Unix ms).
    pub failed_ms: u64,
    /// Why it was given up.
    pub reason: String,
    pub meta: CallMeta,
    #[serde(skip)]
    pub body: Bytes,
}

/// What submitting a call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// A new call, durable now: its internal and public ids.
    New(u64, PublicId),
    /// Its idempotency key names an earlier call (within the window): that call's ids.
    Existing(u64, PublicId),
}

/// The outcome of an async call, kept for retrieval by id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallResult {
    pub function: String,
    pub status: u16,
    pub finished_ms: u64,
    pub body: Bytes,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store at {path}: {source}")]
    Open { path: String, source: sled::Error },
    #[error("store: {0}")]
    Db(#[from] sled::Error),
    #[error("store: damaged record in {tree}: {problem}")]
    Corrupt { tree: &'static str, problem: String },
}

#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    commits: std::sync::Arc<Committer>,
    functions: sled::Tree,
    modules: sled::Tree,
    queue: sled::Tree,
    results: sled::Tree,
    /// Each async call's public id (16 random bytes), by its internal sequence number,
    /// and back. Calls accepted by a release before these ids have none.
    public_ids: sled::Tree,
    by_public: sled::Tree,
    /// Each queued call's trace: `traceparent` and the time it was accepted.
    call_traces: sled::Tree,
    /// Each queued call's [`CallMeta`] (JSON).
    call_meta: sled::Tree,
    /// The dead-letter queue: [`DeadCall`]s by internal id.
    dead: sled::Tree,
    /// `function NUL key` → the call it named (8 bytes), when (8 bytes, Unix ms) and its
    /// public id (16 bytes).
    idem: sled::Tree,
    /// Callbacks not yet delivered: [`PendingCallback`]s by call id.
    outbox: sled::Tree,
    /// Answers of calls run here under an idempotency key: `caller NUL function NUL key`
    /// → when (8 bytes, Unix ms) and the answer's body.
    keyed: sled::Tree,
}

/// When a keyed answer was kept: its record's first 8 bytes (none when it is shorter).
fn keyed_at(record: &[u8]) -> Option<u64> {
    record.get(..8)?.try_into().ok().map(u64::from_be_bytes)
}

/// The id callers are given for an async call: 128 random bits, not guessable.
pub type PublicId = [u8; 16];

impl Store {
    pub fn open(dir: &std::path::Path) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(16 << 20)
            .open()
            .map_err(|source| StoreError::Open {
                path: dir.display().to_string(),
                source,
            })?;
        Ok(Store {
            commits: std::sync::Arc::new(Committer::start(db.clone())),
            functions: db.open_tree("functions")?,
            modules: db.open_tree("modules")?,
            queue: db.open_tree("queue")?,
            results: db.open_tree("results")?,
            public_ids: db.open_tree("public_ids")?,
            by_public: db.open_tree("by_public")?,
            call_traces: db.open_tree("call_traces")?,
            call_meta: db.open_tree("call_meta")?,
            dead: db.open_tree("dead")?,
            idem: db.open_tree("idem")?,
            outbox: db.open_tree("callback_outbox")?,
            keyed: db.open_tree("keyed_results")?,
            db,
        })
    }

    /// A tree of its own for a part of the node that keeps small records (tokens,
    /// namespaces, secrets).
    pub fn tree(&self, name: &str) -> Result<sled::Tree, StoreError> {
        Ok(self.db.open_tree(name)?)
    }

    // ---- modules -------------------------------------------------------------------

    /// Stores a module under its digest (a no-op when it is already there).
    pub fn put_module(&self, bytes: &[u8]) -> Result<Digest, StoreError> {
        let d = Digest::of(bytes);
        if !self.modules.contains_key(d.0)? {
            self.modules.insert(d.0, bytes)?;
        }
        Ok(d)
    }

    pub fn module(&self, d: &Digest) -> Result<Option<Bytes>, StoreError> {
        Ok(self.modules.get(d.0)?.map(|v| Bytes::copy_from_slice(&v)))
    }

    pub fn has_module(&self, d: &Digest) -> Result<bool, StoreError> {
        Ok(self.modules.contains_key(d.0)?)
    }

    /// Removes a module no function uses any more.
    pub fn drop_module_if_unused(&self, d: &Digest) -> Result<bool, StoreError> {
        let used = self
            .functions()?
            .iter()
            .any(|f| f.manifest.module.as_ref() == Some(d));
        if !used {
            self.modules.remove(d.0)?;
        }
        Ok(!used)
    }

    // ---- functions -----------------------------------------------------------------

    pub fn put_function(&self, f: &StoredFunction) -> Result<(), StoreError> {
        let v = serde_json::to_vec(f).map_err(|e| StoreError::Corrupt {
            tree: "functions",
            problem: e.to_string(),
        })?;
        self.functions.insert(f.manifest.name.as_bytes(), v)?;
        self.db.flush()?;
        Ok(())
    }

    pub fn delete_function(&self, name: &str) -> Result<Option<StoredFunction>, StoreError> {
        let old = self.functions.remove(name.as_bytes())?;
        self.db.flush()?;
        old.map(|v| decode_function(&v)).transpose()
    }

    pub fn functions(&self) -> Result<Vec<StoredFunction>, StoreError> {
        self.functions
            .iter()
            .map(|kv| {
                let (_, v) = kv?;
                decode_function(&v)
            })
            .collect()
    }

    // ---- async calls ---------------------------------------------------------------

    /// Persists a call durably and returns its ids (internal, public). Returns only after
    /// the disk has it. With an idempotency key that names a call accepted within
    /// `window_ms`, nothing is written and that call is returned (even while the
    /// submission that made it is still being written).
    pub async fn enqueue(
        &self,
        call: &AsyncCall,
        meta: &CallMeta,
        window_ms: u64,
    ) -> Result<Enqueued, StoreError> {
        // Counted from its first write to its flush: the commit thread waits for it.
        let _writing = self.commits.writing();
        let id = self.db.generate_id()?;
        let mut public = [0u8; 16];
        getrandom::fill(&mut public).map_err(|e| StoreError::Corrupt {
            tree: "public_ids",
            problem: format!("no randomness for a call id: {e}"),
        })?;
        if let Some(key) = &meta.key {
            let k = idem_key(&call.function, key);
            let now = now_ms();
            let mut mine = id.to_be_bytes().to_vec();
            mine.extend_from_slice(&now.to_be_bytes());
            mine.extend_from_slice(&public);
            let mut seen = self.idem.get(&k)?;
            loop {
                if let Some(v) = &seen {
                    let (earlier, at, earlier_public) = idem_value(v)?;
                    if now.saturating_sub(at) < window_ms {
                        return Ok(Enqueued::Existing(earlier, earlier_public));
                    }
                }
                // First with this key (or the call it named is past the window): take it,
                // unless a concurrent submission took it first.
                match self
                    .idem
                    .compare_and_swap(&k, seen.clone(), Some(mine.clone()))?
                {
                    Ok(()) => break,
                    Err(e) => seen = e.current,
                }
            }
        }
        self.public_ids.insert(id.to_be_bytes(), &public)?;
        self.by_public.insert(public, &id.to_be_bytes())?;
        self.call_meta.insert(id.to_be_bytes(), encode_json(meta))?;
        self.queue.insert(id.to_be_bytes(), encode_call(call))?;
        if let Some((parent, at)) = &call.trace {
            let mut v = at.to_be_bytes().to_vec();
            v.extend_from_slice(parent.as_bytes());
            self.call_traces.insert(id.to_be_bytes(), v)?;
        }
        self.durable().await?;
        Ok(Enqueued::New(id, public))
    }

    /// What the queue knows of call `id` beside its body (defaults for a call from before
    /// this was kept).
    pub fn meta(&self, id: u64) -> Result<CallMeta, StoreError> {
        match self.call_meta.get(id.to_be_bytes())? {
            Some(v) => decode_json(&v, "call_meta"),
            None => Ok(CallMeta::default()),
        }
    }

    /// Records a failed attempt (durable before the retry is scheduled).
    pub async fn set_meta(&self, id: u64, meta: &CallMeta) -> Result<(), StoreError> {
        self.call_meta.insert(id.to_be_bytes(), encode_json(meta))?;
        self.durable().await
    }

    /// Gives a call up: into the dead-letter queue, its failure as its result, off the
    /// queue, all at once.
    pub async fn bury(
        &self,
        id: u64,
        dead: &DeadCall,
        result: &CallResult,
        callback: Option<&PendingCallback>,
    ) -> Result<(), StoreError> {
        self.finish(id, result, callback, Some(dead))?;
        self.durable().await
    }

    /// The dead-letter queue, oldest first: internal id and the call.
    pub fn dead_calls(&self) -> Result<Vec<(u64, DeadCall)>, StoreError> {
        self.dead
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                Ok((key_id(&k, "dead")?, decode_with_body(&v, "dead")?))
            })
            .collect()
    }

    pub fn dead_call(&self, id: u64) -> Result<Option<DeadCall>, StoreError> {
        self.dead
            .get(id.to_be_bytes())?
            .map(|v| decode_with_body(&v, "dead"))
            .transpose()
    }

    pub fn dead_len(&self) -> usize {
        self.dead.len()
    }

    /// Takes a dead call back onto the queue, as it was submitted, with no attempts made
    /// and a new deadline; its old result is forgotten. A dead callback goes back to the
    /// outbox, its deliveries starting over. `None` when it is not dead.
    pub async fn revive(&self, id: u64, deadline_ms: u64) -> Result<Option<DeadKind>, StoreError> {
        use sled::Transactional;
        let k = id.to_be_bytes();
        let Some(dead) = self.dead_call(id)? else {
            return Ok(None);
        };
        if dead.kind == DeadKind::Callback {
            let cb = encode_with_body(&PendingCallback::new(
                dead.callback.clone().unwrap_or_default(),
                &dead.function,
                dead.status,
                dead.body.clone(),
            ));
            let revived = (&self.dead, &self.outbox)
                .transaction(|(dt, ot)| {
                    if dt.remove(&k)?.is_none() {
                        return Ok(false);
                    }
                    ot.insert(&k, cb.as_slice())?;
                    Ok::<_, sled::transaction::ConflictableTransactionError<()>>(true)
                })
                .map_err(transaction_error)?;
            self.durable().await?;
            return Ok(revived.then_some(DeadKind::Callback));
        }
        let call = encode_call(&AsyncCall {
            function: dead.function.clone(),
            callback: dead.callback.clone(),
            body: dead.body.clone(),
            trace: None,
        });
        let meta = encode_json(&CallMeta {
            deadline_ms,
            key: dead.meta.key.clone(),
            attempts: Vec::new(),
            // Where a lost answer may be kept.
            handed_to: dead.meta.handed_to.clone(),
        });
        let revived = (&self.dead, &self.results, &self.queue, &self.call_meta)
            .transaction(|(dt, rt, qt, mt)| {
                if dt.remove(&k)?.is_none() {
                    return Ok(false);
                }
                rt.remove(&k)?;
                qt.insert(&k, call.as_slice())?;
                mt.insert(&k, meta.as_slice())?;
                Ok::<_, sled::transaction::ConflictableTransactionError<()>>(true)
            })
            .map_err(transaction_error)?;
        self.durable().await?;
        Ok(revived.then_some(DeadKind::Call))
    }

    /// Drops a dead call for good. False when it is not dead.
    pub async fn drop_dead(&self, id: u64) -> Result<bool, StoreError> {
        let gone = self.dead.remove(id.to_be_bytes())?.is_some();
        self.durable().await?;
        Ok(gone)
    }

    /// Forgets idempotency keys older than `cutoff_ms`; returns how many.
    pub fn sweep_keys(&self, cutoff_ms: u64) -> Result<usize, StoreError> {
        let mut n = 0;
        for kv in self.idem.iter() {
            let (k, v) = kv?;
            if idem_value(&v)
                .map(|(_, at, _)| at < cutoff_ms)
                .unwrap_or(true)
            {
                self.idem.remove(&k)?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// The answer stored for idempotency key `k` (see [`Store::put_keyed`]): when, and
    /// its body.
    pub fn keyed_result(&self, k: &[u8]) -> Result<Option<(u64, Bytes)>, StoreError> {
        let Some(v) = self.keyed.get(k)? else {
            return Ok(None);
        };
        let at = keyed_at(&v).ok_or_else(|| StoreError::Corrupt {
            tree: "keyed_results",
            problem: format!("a record of {} bytes", v.len()),
        })?;
        Ok(Some((at, Bytes::copy_from_slice(&v[8..]))))
    }

    /// Keeps the answer of a call run under idempotency key `k`, on disk before this
    /// returns.
    pub async fn put_keyed(&self, k: &[u8], body: &[u8]) -> Result<(), StoreError> {
        let mut v = Vec::with_capacity(8 + body.len());
        v.extend_from_slice(&now_ms().to_be_bytes());
        v.extend_from_slice(body);
        self.keyed.insert(k, v)?;
        self.durable().await
    }

    /// Forgets the keyed answers `old` says are (given each one's key and when it was
    /// kept, Unix ms); returns how many.
    pub fn sweep_keyed(&self, old: impl Fn(&[u8], u64) -> bool) -> Result<usize, StoreError> {
        let mut n = 0;
        for kv in self.keyed.iter() {
            let (k, v) = kv?;
            // A damaged record is swept too.
            if old(&k, keyed_at(&v).unwrap_or(0)) {
                self.keyed.remove(&k)?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// The public id of call `id`, when it has one.
    pub fn public_id(&self, id: u64) -> Result<Option<PublicId>, StoreError> {
        Ok(self
            .public_ids
            .get(id.to_be_bytes())?
            .and_then(|v| v.as_ref().try_into().ok()))
    }

    /// The internal id of the call a caller knows as `public`.
    pub fn by_public(&self, public: &PublicId) -> Result<Option<u64>, StoreError> {
        Ok(self
            .by_public
            .get(public)?
            .and_then(|v| v.as_ref().try_into().ok())
            .map(u64::from_be_bytes))
    }

    /// Calls accepted but not finished, oldest first.
    pub fn pending(&self) -> Result<Vec<(u64, AsyncCall)>, StoreError> {
        self.queue
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                let id =
                    u64::from_be_bytes(k.as_ref().try_into().map_err(|_| StoreError::Corrupt {
                        tree: "queue",
                        problem: "key is not 8 bytes".into(),
                    })?);
                Ok((id, decode_call(&v)?))
            })
            .collect()
    }

    pub fn call(&self, id: u64) -> Result<Option<AsyncCall>, StoreError> {
        let Some(mut call) = self
            .queue
            .get(id.to_be_bytes())?
            .map(|v| decode_call(&v))
            .transpose()?
        else {
            return Ok(None);
        };
        // A damaged trace record loses the trace, never the call.
        call.trace = self.call_traces.get(id.to_be_bytes())?.and_then(|v| {
            let at = u64::from_be_bytes(v.get(..8)?.try_into().ok()?);
            Some((std::str::from_utf8(&v[8..]).ok()?.to_string(), at))
        });
        Ok(Some(call))
    }

    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Records a call's result, takes it off the queue and, when it has one, puts its
    /// callback in the outbox, all at once; returns once that is on disk, so a call whose
    /// result was acknowledged does not run again after a crash, and its callback is not
    /// forgotten.
    pub async fn complete(
        &self,
        id: u64,
        result: &CallResult,
        callback: Option<&PendingCallback>,
    ) -> Result<(), StoreError> {
        self.finish(id, result, callback, None)?;
        self.durable().await
    }

    /// A call leaves the queue: its result recorded, its callback (if any) in the outbox,
    /// and, when it was given up, itself in the dead-letter queue, all in one transaction.
    fn finish(
        &self,
        id: u64,
        result: &CallResult,
        callback: Option<&PendingCallback>,
        dead: Option<&DeadCall>,
    ) -> Result<(), StoreError> {
        use sled::Transactional;
        let k = id.to_be_bytes();
        let r = encode_result(result);
        let cb = callback.map(encode_with_body);
        let d = dead.map(encode_with_body);
        (
            &self.results,
            &self.queue,
            &self.call_meta,
            &self.call_traces,
            &self.outbox,
            &self.dead,
        )
            .transaction(|(rt, qt, mt, tt, ot, dt)| {
                rt.insert(&k, r.as_slice())?;
                qt.remove(&k)?;
                mt.remove(&k)?;
                tt.remove(&k)?;
                if let Some(cb) = &cb {
                    ot.insert(&k, cb.as_slice())?;
                }
                if let Some(d) = &d {
                    dt.insert(&k, d.as_slice())?;
                }
                Ok::<_, sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(transaction_error)
    }

    /// The callbacks not yet delivered, by call id.
    pub fn pending_callbacks(&self) -> Result<Vec<u64>, StoreError> {
        self.outbox
            .iter()
            .keys()
            .map(|k| key_id(&k?, "callback_outbox"))
            .collect()
    }

    pub fn callback(&self, id: u64) -> Result<Option<PendingCallback>, StoreError> {
        self.outbox
            .get(id.to_be_bytes())?
            .map(|v| decode_with_body(&v, "callback_outbox"))
            .transpose()
    }

    /// Records a failed delivery (durable before the next is scheduled).
    pub async fn set_callback(&self, id: u64, cb: &PendingCallback) -> Result<(), StoreError> {
        self.outbox.insert(id.to_be_bytes(), encode_with_body(cb))?;
        self.durable().await
    }

    /// A delivered callback leaves the outbox.
    pub async fn callback_delivered(&self, id: u64) -> Result<(), StoreError> {
        self.outbox.remove(id.to_be_bytes())?;
        self.durable().await
    }

    /// A callback given up: out of the outbox, into the dead-letter queue, at once.
    pub async fn bury_callback(&self, id: u64, dead: &DeadCall) -> Result<(), StoreError> {
        use sled::Transactional;
        let k = id.to_be_bytes();
        let d = encode_with_body(dead);
        (&self.outbox, &self.dead)
            .transaction(|(ot, dt)| {
                ot.remove(&k)?;
                dt.insert(&k, d.as_slice())?;
                Ok::<_, sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(transaction_error)?;
        self.durable().await
    }

    pub fn result(&self, id: u64) -> Result<Option<CallResult>, StoreError> {
        self.results
            .get(id.to_be_bytes())?
            .map(|v| decode_result(&v))
            .transpose()
    }

    /// Forgets results older than `cutoff_ms` (Unix milliseconds); returns how many.
    pub fn sweep_results(&self, cutoff_ms: u64) -> Result<usize, StoreError> {
        let mut n = 0;
        for kv in self.results.iter() {
            let (k, v) = kv?;
            if decode_result(&v)
                .map(|r| r.finished_ms < cutoff_ms)
                .unwrap_or(true)
            {
                self.results.remove(&k)?;
                if let Some(p) = self.public_ids.remove(&k)? {
                    self.by_public.remove(p)?;
                }
                n += 1;
            }
        }
        Ok(n)
    }

    pub async fn flush(&self) -> Result<(), StoreError> {
        self.durable().await
    }

    /// Waits until everything written before this call is on disk.
    async fn durable(&self) -> Result<(), StoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let gone = || StoreError::Corrupt {
            tree: "log",
            problem: "the flusher thread stopped".into(),
        };
        let sender = self.commits.tx.as_ref().ok_or_else(gone)?;
        sender.send(tx).map_err(|_| gone())?;
        rx.await
            .map_err(|_| gone())?
            .map_err(|e| StoreError::Corrupt {
                tree: "log",
                problem: e,
            })
    }
}

type CommitWaiter = tokio::sync::oneshot::Sender<Result<(), String>>;

/// Group commit: one thread flushes sled for every writer waiting at that moment, so a
/// burst of async calls costs one fsync, not one each. (sled's own `flush_async` runs on
/// its small I/O pool and deadlocks when many flushes wait at once.) Before flushing it
/// waits, up to [`GATHER_AT_MOST`], for the submissions already writing their records
/// (counted by [`Committer::writing`]) to join the batch: under load, fewer and fuller
/// flushes; a lone writer is flushed at once. (As PostgreSQL's `commit_delay` applies only
/// while other transactions are active.) Dropping the last handle stops the thread and
/// waits for it, so the database is closed when `Store` is.
struct Committer {
    /// Unbounded: each waiter is a writer blocked on its flush, so there are at most as
    /// many as tasks writing.
    tx: Option<std::sync::mpsc::Sender<CommitWaiter>>,
    thread: Option<std::thread::JoinHandle<()>>,
    writers: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

/// The longest a flush waits for writers already under way.
const GATHER_AT_MOST: std::time::Duration = std::time::Duration::from_millis(2);

/// One writer between its first record and its flush (see [`Committer::writing`]).
struct Writing(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Writing {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

impl Committer {
    /// Counts a writer that will ask for a flush soon, until the guard is dropped.
    fn writing(&self) -> Writing {
        self.writers
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Writing(self.writers.clone())
    }

    fn start(db: sled::Db) -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<CommitWaiter>();
        let writers = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = writers.clone();
        let thread = std::thread::Builder::new()
            .name("store-commit".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let start = std::time::Instant::now();
                    let mut waiters = vec![first];
                    loop {
                        while let Ok(w) = rx.try_recv() {
                            waiters.push(w);
                        }
                        let expected = counted.load(std::sync::atomic::Ordering::Acquire);
                        let Some(left) = GATHER_AT_MOST.checked_sub(start.elapsed()) else {
                            break;
                        };
                        if waiters.len() >= expected {
                            break;
                        }
                        match rx.recv_timeout(left) {
                            Ok(w) => waiters.push(w),
                            Err(_) => break,
                        }
                    }
                    let res = db.flush().map(|_| ()).map_err(|e| e.to_string());
                    for w in waiters {
                        let _ = w.send(res.clone());
                    }
                }
            })
            .map_err(|e| tracing::error!("cannot start the store's commit thread: {e}"))
            .ok();
        Committer {
            tx: Some(tx),
            thread,
            writers,
        }
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn decode_function(v: &[u8]) -> Result<StoredFunction, StoreError> {
    serde_json::from_slice(v).map_err(|e| StoreError::Corrupt {
        tree: "functions",
        problem: e.to_string(),
    })
}

// Records are small length-prefixed byte strings: bodies stay binary (no base64) and
// decoding a damaged record is an error, never a panic.

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

struct Reader<'a> {
    buf: &'a [u8],
    tree: &'static str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        if self.buf.len() < n {
            return Err(StoreError::Corrupt {
                tree: self.tree,
                problem: "record is truncated".into(),
            });
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }
    fn u32(&mut self) -> Result<u32, StoreError> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().unwrap_or_default(),
        ))
    }
    fn u64(&mut self) -> Result<u64, StoreError> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().unwrap_or_default(),
        ))
    }
    fn str(&mut self) -> Result<String, StoreError> {
        let n = self.u32()? as usize;
        let tree = self.tree;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| StoreError::Corrupt {
            tree,
            problem: "text is not UTF-8".into(),
        })
    }
}

fn idem_key(function: &str, key: &str) -> Vec<u8> {
    let mut k = function.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}

/// An idempotency key's call: its internal id, when it was submitted (Unix ms) and its
/// public id.
fn idem_value(v: &[u8]) -> Result<(u64, u64, PublicId), StoreError> {
    let bad = || StoreError::Corrupt {
        tree: "idem",
        problem: "value is not 32 bytes".into(),
    };
    let v: &[u8; 32] = v.try_into().map_err(|_| bad())?;
    let (id, rest) = v.split_at(8);
    let (at, public) = rest.split_at(8);
    Ok((
        u64::from_be_bytes(id.try_into().map_err(|_| bad())?),
        u64::from_be_bytes(at.try_into().map_err(|_| bad())?),
        public.try_into().map_err(|_| bad())?,
    ))
}

fn key_id(k: &[u8], tree: &'static str) -> Result<u64, StoreError> {
    Ok(u64::from_be_bytes(k.try_into().map_err(|_| {
        StoreError::Corrupt {
            tree,
            problem: "key is not 8 bytes".into(),
        }
    })?))
}

fn encode_json<T: Serialize>(v: &T) -> Vec<u8> {
    // Serializing these plain structs to JSON cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

fn decode_json<T: serde::de::DeserializeOwned>(
    v: &[u8],
    tree: &'static str,
) -> Result<T, StoreError> {
    serde_json::from_slice(v).map_err(|e| StoreError::Corrupt {
        tree,
        problem: e.to_string(),
    })
}

/// A record whose body is kept apart: the length of its JSON, its JSON, then the body.
trait WithBody: Serialize + serde::de::DeserializeOwned {
    fn body(&self) -> &Bytes;
    fn set_body(&mut self, b: Bytes);
}

impl WithBody for DeadCall {
    fn body(&self) -> &Bytes {
        &self.body
    }
    fn set_body(&mut self, b: Bytes) {
        self.body = b;
    }
}

impl WithBody for PendingCallback {
    fn body(&self) -> &Bytes {
        &self.body
    }
    fn set_body(&mut self, b: Bytes) {
        self.body = b;
    }
}

fn encode_with_body<T: WithBody>(d: &T) -> Vec<u8> {
    let json = encode_json(d);
    let mut out = Vec::with_capacity(json.len() + d.body().len() + 4);
    out.extend_from_slice(&(json.len() as u32).to_be_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(d.body());
    out
}

fn decode_with_body<T: WithBody>(v: &[u8], tree: &'static str) -> Result<T, StoreError> {
    let mut r = Reader { buf: v, tree };
    let n = r.u32()? as usize;
    let json = r.buf.get(..n).ok_or_else(|| StoreError::Corrupt {
        tree,
        problem: "truncated record".into(),
    })?;
    let mut d: T = decode_json(json, tree)?;
    d.set_body(Bytes::copy_from_slice(&r.buf[n..]));
    Ok(d)
}

fn transaction_error(e: sled::transaction::TransactionError<()>) -> StoreError {
    match e {
        sled::transaction::TransactionError::Storage(e) => StoreError::Db(e),
        sled::transaction::TransactionError::Abort(()) => StoreError::Corrupt {
            tree: "queue",
            problem: "transaction aborted".into(),
        },
    }
}

fn encode_call(c: &AsyncCall) -> Vec<u8> {
    let mut out = Vec::with_capacity(c.body.len() + 64);
    put_str(&mut out, &c.function);
    put_str(&mut out, c.callback.as_deref().unwrap_or(""));
    out.extend_from_slice(&c.body);
    out
}

fn decode_call(v: &[u8]) -> Result<AsyncCall, StoreError> {
    let mut r = Reader {
        buf: v,
        tree: "queue",
    };
    let function = r.str()?;
    let callback = Some(r.str()?).filter(|s| !s.is_empty());
    Ok(AsyncCall {
        function,
        callback,
        body: Bytes::copy_from_slice(r.buf),
        trace: None,
    })
}

fn encode_result(c: &CallResult) -> Vec<u8> {
    let mut out = Vec::with_capacity(c.body.len() + 64);
    out.extend_from_slice(&u32::from(c.status).to_be_bytes());
    out.extend_from_slice(&c.finished_ms.to_be_bytes());
    put_str(&mut out, &c.function);
    out.extend_from_slice(&c.body);
    out
}

fn decode_result(v: &[u8]) -> Result<CallResult, StoreError> {
    let mut r = Reader {
        buf: v,
        tree: "results",
    };
    let status = u16::try_from(r.u32()?).map_err(|_| StoreError::Corrupt {
        tree: "results",
        problem: "bad status".into(),
    })?;
    let finished_ms = r.u64()?;
    let function = r.str()?;
    Ok(CallResult {
        function,
        status,
        finished_ms,
        body: Bytes::copy_from_slice(r.buf),
    })
}

/// Opens a store a test has just closed: sled's own background flusher lets go of the
/// file lock a moment after the last handle is dropped (a restart is a new process, where
/// this cannot happen).
#[cfg(test)]
pub(crate) fn reopen(path: &std::path::Path) -> Store {
    for _ in 0..250 {
        match Store::open(path) {
            Ok(s) => return s,
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    }
    #[allow(clippy::unwrap_used)]
    Store::open(path).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(f: &str) -> AsyncCall {
        AsyncCall {
            function: f.into(),
            callback: None,
            body: Bytes::from_static(b"in"),
            trace: None,
        }
    }

    #[tokio::test]
    async fn a_dead_call_is_kept_with_its_attempts_and_revives_under_its_id() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let keyed = CallMeta {
            deadline_ms: 9,
            key: Some("k".into()),
            attempts: Vec::new(),
            handed_to: Some("edge-1".into()),
        };
        let Enqueued::New(id, public) = s.enqueue(&call("f"), &keyed, 60_000).await.unwrap() else {
            panic!("a new key makes a new call")
        };
        // The same key names the same call; another function's is its own.
        assert_eq!(
            s.enqueue(&call("f"), &keyed, 60_000).await.unwrap(),
            Enqueued::Existing(id, public)
        );
        assert!(matches!(
            s.enqueue(&call("g"), &keyed, 60_000).await.unwrap(),
            Enqueued::New(..)
        ));
        // Past the window, the key is free again.
        assert!(matches!(
            s.enqueue(&call("f"), &keyed, 0).await.unwrap(),
            Enqueued::New(..)
        ));
        let mut meta = s.meta(id).unwrap();
        assert_eq!(meta.key.as_deref(), Some("k"));
        meta.attempts.push(Attempt {
            at_ms: 1,
            status: 503,
            place: Some("edge-1".into()),
            reason: "no live place".into(),
        });
        s.set_meta(id, &meta).await.unwrap();
        let dead = DeadCall {
            kind: DeadKind::Call,
            function: "f".into(),
            status: 503,
            callback: None,
            failed_ms: 2,
            reason: "gave up".into(),
            meta: s.meta(id).unwrap(),
            body: Bytes::from_static(b"in"),
        };
        let failed = CallResult {
            function: "f".into(),
            status: 503,
            finished_ms: 2,
            body: Bytes::from_static(b"no"),
        };
        s.bury(id, &dead, &failed, None).await.unwrap();
        assert!(s.call(id).unwrap().is_none(), "off the queue");
        assert_eq!(s.result(id).unwrap().unwrap().status, 503);
        assert_eq!(s.dead_call(id).unwrap().unwrap(), dead);
        assert_eq!(s.revive(id, 99).await.unwrap(), Some(DeadKind::Call));
        assert_eq!(s.revive(id, 99).await.unwrap(), None, "only once");
        assert!(s.result(id).unwrap().is_none());
        assert_eq!(s.call(id).unwrap().unwrap().body, &b"in"[..]);
        let fresh = s.meta(id).unwrap();
        assert_eq!((fresh.deadline_ms, fresh.attempts.len()), (99, 0));
        assert_eq!(
            fresh.handed_to.as_deref(),
            Some("edge-1"),
            "where its answer may be"
        );
        // Dead calls are kept, however many (the bound is at submit, per namespace).
        for _ in 0..3 {
            let Enqueued::New(n, _) = s
                .enqueue(&call("h"), &CallMeta::default(), 0)
                .await
                .unwrap()
            else {
                panic!()
            };
            s.bury(n, &dead, &failed, None).await.unwrap();
        }
        assert_eq!(s.dead_len(), 3);
        // A finished call's callback is in the outbox with its result, at once; given
        // up, it is a dead callback, and revived it is back in the outbox.
        let Enqueued::New(n, _) = s
            .enqueue(&call("h"), &CallMeta::default(), 0)
            .await
            .unwrap()
        else {
            panic!()
        };
        let cb = PendingCallback {
            url: "http://x/".into(),
            function: "h".into(),
            status: 200,
            since_ms: 3,
            attempts: Vec::new(),
            placed_on: None,
            body: Bytes::from_static(b"out"),
        };
        s.complete(n, &failed, Some(&cb)).await.unwrap();
        assert_eq!(s.pending_callbacks().unwrap(), vec![n]);
        assert_eq!(s.callback(n).unwrap().unwrap(), cb);
        let dead_cb = DeadCall {
            kind: DeadKind::Callback,
            status: 200,
            ..dead.clone()
        };
        s.bury_callback(n, &dead_cb).await.unwrap();
        assert!(s.pending_callbacks().unwrap().is_empty());
        assert_eq!(s.revive(n, 0).await.unwrap(), Some(DeadKind::Callback));
        let back = s.callback(n).unwrap().unwrap();
        assert_eq!((back.status, &back.body[..]), (200, &b"in"[..]));
        s.callback_delivered(n).await.unwrap();
        assert!(s.pending_callbacks().unwrap().is_empty());
    }

    #[tokio::test]
    async fn state_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let d;
        let (id, public);
        {
            let s = Store::open(dir.path()).unwrap();
            d = s.put_module(b"\0asm\x01\0\0\0").unwrap();
            s.put_function(&StoredFunction {
                manifest: FunctionManifest::wasm("f", d),
                created_at: "2026-01-01T00:00:00Z".into(),
            })
            .unwrap();
            let queued = s
                .enqueue(
                    &AsyncCall {
                        function: "f".into(),
                        callback: Some("http://x/".into()),
                        body: Bytes::from_static(b"hi"),
                        trace: Some((
                            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
                            7,
                        )),
                    },
                    &CallMeta::default(),
                    0,
                )
                .await
                .unwrap();
            let Enqueued::New(i, p) = queued else {
                panic!("{queued:?}")
            };
            (id, public) = (i, p);
        }
        // sled's own background flusher lets go of the file lock a moment after the last
        // handle is dropped (a restart is a new process, where this cannot happen).
        let s = reopen(dir.path());
        assert_eq!(s.module(&d).unwrap().unwrap(), &b"\0asm\x01\0\0\0"[..]);
        assert_eq!(s.functions().unwrap()[0].manifest.name, "f");
        let pending = s.pending().unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].0, id);
        // The public id survives too, and leads back to the call.
        assert_eq!(s.public_id(id).unwrap(), Some(public));
        assert_eq!(s.by_public(&public).unwrap(), Some(id));
        assert_eq!(pending[0].1.callback.as_deref(), Some("http://x/"));
        assert_eq!(&pending[0].1.body[..], b"hi");
        // Its trace too, read with the call.
        let trace = s.call(id).unwrap().unwrap().trace.unwrap();
        assert_eq!(trace.1, 7);
        assert!(trace.0.starts_with("00-4bf92f35"));
        s.complete(
            id,
            &CallResult {
                function: "f".into(),
                status: 200,
                finished_ms: 5,
                body: Bytes::from_static(b"out"),
            },
            None,
        )
        .await
        .unwrap();
        assert!(s.pending().unwrap().is_empty());
        assert_eq!(s.result(id).unwrap().unwrap().body, &b"out"[..]);
        assert_eq!(s.sweep_results(6).unwrap(), 1);
        assert!(s.result(id).unwrap().is_none());
        assert_eq!(s.by_public(&public).unwrap(), None, "swept with its result");
    }

    use super::reopen;

    #[test]
    fn damaged_records_are_errors_not_panics() {
        for bad in [&b""[..], b"\0\0\0\x09ab", b"\0\0\0\x01\xff\0\0\0\0"] {
            assert!(decode_call(bad).is_err());
            assert!(decode_result(bad).is_err());
        }
    }

    #[test]
    fn unused_modules_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let a = s.put_module(b"a").unwrap();
        let b = s.put_module(b"b").unwrap();
        s.put_function(&StoredFunction {
            manifest: FunctionManifest::wasm("f", a),
            created_at: String::new(),
        })
        .unwrap();
        assert!(!s.drop_module_if_unused(&a).unwrap());
        assert!(s.drop_module_if_unused(&b).unwrap());
        assert!(s.has_module(&a).unwrap() && !s.has_module(&b).unwrap());
    }
}
