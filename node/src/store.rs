//! The node's durable state, in sled: function manifests, content-addressed modules, and
//! the async call queue with its results.
//!
//! An async call is written and flushed to disk before the gateway acknowledges it; it
//! leaves the queue only after its result is written, so a crash at any point re-runs it
//! rather than losing it (at-least-once).

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
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
    /// the disk has it.
    pub async fn enqueue(&self, call: &AsyncCall) -> Result<(u64, PublicId), StoreError> {
        let id = self.db.generate_id()?;
        let mut public = [0u8; 16];
        getrandom::fill(&mut public).map_err(|e| StoreError::Corrupt {
            tree: "public_ids",
            problem: format!("no randomness for a call id: {e}"),
        })?;
        self.public_ids.insert(id.to_be_bytes(), &public)?;
        self.by_public.insert(public, &id.to_be_bytes())?;
        self.queue.insert(id.to_be_bytes(), encode_call(call))?;
        if let Some((parent, at)) = &call.trace {
            let mut v = at.to_be_bytes().to_vec();
            v.extend_from_slice(parent.as_bytes());
            self.call_traces.insert(id.to_be_bytes(), v)?;
        }
        self.durable().await?;
        Ok((id, public))
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

    /// Records a call's result, then takes it off the queue (in that order: a crash between
    /// the two re-runs the call instead of losing it).
    pub fn complete(&self, id: u64, result: &CallResult) -> Result<(), StoreError> {
        self.results
            .insert(id.to_be_bytes(), encode_result(result))?;
        self.queue.remove(id.to_be_bytes())?;
        self.call_traces.remove(id.to_be_bytes())?;
        Ok(())
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
        sender.send(tx).await.map_err(|_| gone())?;
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
/// its small I/O pool and deadlocks when many flushes wait at once.) Dropping the last
/// handle stops the thread and waits for it, so the database is closed when `Store` is.
struct Committer {
    tx: Option<tokio::sync::mpsc::Sender<CommitWaiter>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Committer {
    fn start(db: sled::Db) -> Self {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<CommitWaiter>(4096);
        let thread = std::thread::Builder::new()
            .name("store-commit".into())
            .spawn(move || {
                while let Some(first) = rx.blocking_recv() {
                    let mut waiters = vec![first];
                    while let Ok(w) = rx.try_recv() {
                        waiters.push(w);
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
            (id, public) = s
                .enqueue(&AsyncCall {
                    function: "f".into(),
                    callback: Some("http://x/".into()),
                    body: Bytes::from_static(b"hi"),
                    trace: Some((
                        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
                        7,
                    )),
                })
                .await
                .unwrap();
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
        )
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
