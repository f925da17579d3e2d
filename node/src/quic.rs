//! Tiers over QUIC: one bidirectional stream per invocation, multiplexed over one mutually
//! authenticated connection per peer (quinn + rustls, TLS 1.3, the cluster CA).
//!
//! Frames are `fogline_core::wire`'s. The server side reads each frame under a deadline, so a
//! stalled stream is dropped and its resources freed; bounds every body and module by the
//! node's limits; refuses streams past `max_streams` per connection with a retryable error
//! rather than queueing them; and fetches a module it lacks from the caller over the same
//! stream, checking its SHA-256 before compiling it once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fogline_core::wire::{self, Capacity, Frame, Invoke, InvokeResult, WireError, WireErrorMsg};
use fogline_core::{Digest, FunctionManifest};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, Endpoint, RecvStream, SendStream, VarInt};
use tokio::sync::{Mutex, Semaphore};

use crate::agent::Node;
use crate::executor::ModuleSource;
use crate::tls::{self, Role, TlsDir, TlsError};

/// How long a client connection may hear nothing before it is given up.
const CLIENT_IDLE: Duration = Duration::from_secs(6);

/// Stream error codes (QUIC application error codes).
const CODE_PROTOCOL: u32 = 1;
const CODE_STALLED: u32 = 2;
/// Connection closed by a stopping node after every stream it took was answered: a call
/// that got no answer never ran there.
const CODE_STOPPED: u32 = 3;
/// Connection closed by a stopping node whose calls outlasted its drain deadline.
const CODE_STOPPED_CUT: u32 = 4;

/// Server-side limits.
#[derive(Debug, Clone)]
pub struct QuicLimits {
    /// Invocations running at once per connection; more are refused (retryable).
    pub max_streams: u32,
    /// Longest wait for the next frame of a stream before it is dropped.
    pub stream_timeout: Duration,
    /// Largest request body.
    pub max_body: u64,
    /// Largest module a peer may send.
    pub max_module: u64,
    /// Idle connections close after this.
    pub idle_timeout: Duration,
}

impl QuicLimits {
    /// The limits a node's configuration sets.
    pub fn from_config(c: &fogline_core::config::NodeConfig) -> Self {
        QuicLimits {
            max_streams: c.quic.max_streams,
            stream_timeout: c.quic.stream_timeout,
            max_body: c.http.max_body.bytes(),
            max_module: c.http.max_module.bytes(),
            idle_timeout: c.quic.idle_timeout,
        }
    }
}

/// Why a QUIC exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum QuicError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot open a QUIC endpoint on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    #[error("protocol error: {0}")]
    Wire(#[from] WireError),
    #[error("peer stopped sending for {0:?} in the middle of a frame")]
    Stalled(Duration),
    #[error("stream failed: {0}")]
    Stream(String),
    /// The peer refused our 0-RTT data (its session was not the one our ticket named); the
    /// call never ran and is safe to send again.
    #[error("0-RTT data rejected by the peer")]
    ZeroRttRejected,
    #[error("unexpected frame: {0}")]
    Unexpected(String),
    /// The remote side answered with an error.
    #[error("{} {}", .0.status, .0.message)]
    Remote(WireErrorMsg),
}

impl QuicError {
    /// Whether trying again (here or elsewhere) can help.
    pub fn retryable(&self) -> bool {
        match self {
            QuicError::Remote(m) => m.retryable,
            QuicError::Connect { .. }
            | QuicError::Stalled(_)
            | QuicError::Stream(_)
            | QuicError::ZeroRttRejected => true,
            _ => false,
        }
    }
}

fn transport(limits_streams: u32, idle: Duration) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    // Let twice the allowed streams arrive so the excess is refused with a clear, retryable
    // error; beyond that QUIC flow control stops the peer from opening more.
    t.max_concurrent_bidi_streams(VarInt::from_u32(limits_streams.saturating_mul(2)));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    t.max_idle_timeout(idle.try_into().ok());
    t.keep_alive_interval(Some(idle / 3));
    // Windows sized for multi-megabyte bodies on fast links.
    t.stream_receive_window(VarInt::from_u32(8 << 20));
    t.receive_window(VarInt::from_u32(32 << 20));
    t.send_window(32 << 20);
    t
}

// ---- server ---------------------------------------------------------------------------

/// Binds the node's QUIC endpoint.
pub fn bind_server(
    addr: SocketAddr,
    tls: &TlsDir,
    limits: &QuicLimits,
) -> Result<Endpoint, QuicError> {
    let cfg = server_config(tls, limits)?;
    Endpoint::server(cfg, addr).map_err(|source| QuicError::Bind { addr, source })
}

fn server_config(tls: &TlsDir, limits: &QuicLimits) -> Result<quinn::ServerConfig, QuicError> {
    let crypto = QuicServerConfig::try_from(tls.server_config(wire::ALPN)?)
        .map_err(|e| TlsError::Invalid(format!("QUIC server config: {e}")))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    cfg.transport_config(Arc::new(transport(limits.max_streams, limits.idle_timeout)));
    Ok(cfg)
}

/// Accepts connections until the endpoint closes; reloads the certificate when its files
/// change (polled every `reload_every`).
pub async fn serve(
    endpoint: Endpoint,
    node: Arc<Node>,
    tls_dir: std::path::PathBuf,
    limits: QuicLimits,
    reload_every: Duration,
) {
    let reloader = {
        let endpoint = endpoint.clone();
        let limits = limits.clone();
        tokio::spawn(async move {
            let mut seen = stamp(&tls_dir);
            loop {
                tokio::time::sleep(reload_every).await;
                let now = stamp(&tls_dir);
                if now == seen {
                    continue;
                }
                seen = now;
                match TlsDir::load(&tls_dir)
                    .map_err(QuicError::from)
                    .and_then(|t| server_config(&t, &limits))
                {
                    Ok(cfg) => {
                        endpoint.set_server_config(Some(cfg));
                        tracing::info!("reloaded TLS certificate from {}", tls_dir.display());
                    }
                    Err(e) => tracing::warn!("not reloading TLS from {}: {e}", tls_dir.display()),
                }
            }
        })
    };
    while let Some(incoming) = endpoint.accept().await {
        if node.stopping.load(Ordering::SeqCst) {
            incoming.refuse();
            continue;
        }
        let node = node.clone();
        let limits = limits.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            let conn = match incoming.accept() {
                // Serve early: a resumed session's 0-RTT streams (idempotent calls only, as
                // the client sends them) run as soon as they arrive. The client's identity
                // is known early only on resumption (from the session it resumes); on a
                // full handshake it is known, and the certificate checked, once the
                // handshake completes, and nothing is served before.
                Ok(connecting) => match connecting.into_0rtt() {
                    Ok((conn, done)) => {
                        if peer_role(&conn).is_none() {
                            done.await;
                        }
                        match conn.close_reason() {
                            Some(e) => Err(e),
                            None => Ok(conn),
                        }
                    }
                    Err(connecting) => connecting.await,
                },
                Err(e) => Err(e),
            };
            match conn {
                Ok(conn) => serve_connection(conn, node, limits).await,
                // The reason (unknown CA, expired, no certificate) is what rustls reported.
                Err(e) => tracing::warn!("refused QUIC connection from {remote}: {e}"),
            }
        });
    }
    reloader.abort();
}

/// Ends QUIC serving for a node that is stopping ([`Node::begin_stop`] refuses new streams
/// and connections): waits up to `deadline` for the streams it took to be answered, then
/// closes every connection. Closed with [`CODE_STOPPED`], clients know that a call they
/// got no answer for never ran, and send it elsewhere.
pub async fn drain(endpoint: &Endpoint, node: &Node, deadline: Duration) {
    let t = Instant::now();
    while node.quic_streams.load(Ordering::SeqCst) > 0 && t.elapsed() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Replies written but not yet acknowledged would be lost with the connection.
    let replies = node.delivering.take();
    let wait = deadline.saturating_sub(t.elapsed());
    let _ = tokio::time::timeout(wait, async {
        for s in replies {
            let _ = s.stopped().await;
        }
    })
    .await;
    let left = node.quic_streams.load(Ordering::SeqCst);
    if left == 0 {
        endpoint.close(VarInt::from_u32(CODE_STOPPED), b"node stopping");
    } else {
        tracing::warn!(
            "{left} QUIC call(s) still running {deadline:?} after the stop signal (node.stop_timeout); closing them"
        );
        endpoint.close(
            VarInt::from_u32(CODE_STOPPED_CUT),
            b"node stopped with calls running",
        );
    }
    // Lets the close reach the peers (bounded: a peer that is gone never acknowledges).
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
}

/// Finished reply streams that their callers may not have acknowledged yet.
#[derive(Default)]
pub struct Delivering {
    streams: std::sync::Mutex<Vec<SendStream>>,
    /// Length at which the list is next pruned of acknowledged streams.
    prune_at: std::sync::atomic::AtomicUsize,
}

impl Delivering {
    const MIN_PRUNE: usize = 256;

    fn keep(&self, s: SendStream) {
        let mut v = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        v.push(s);
        if v.len() >= self.prune_at.load(Ordering::Relaxed).max(Self::MIN_PRUNE) {
            use futures_util::FutureExt;
            v.retain(|s| s.stopped().now_or_never().is_none());
            self.prune_at.store(2 * v.len(), Ordering::Relaxed);
        }
    }

    fn take(&self) -> Vec<SendStream> {
        std::mem::take(&mut *self.streams.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Whether `conn` was closed by a node that stopped after answering every stream it took.
fn stopped_cleanly(conn: &Connection) -> bool {
    matches!(
        conn.close_reason(),
        Some(quinn::ConnectionError::ApplicationClosed(c)) if c.error_code == VarInt::from_u32(CODE_STOPPED)
    )
}

fn stamp(dir: &std::path::Path) -> Vec<Option<std::time::SystemTime>> {
    ["cert.pem", "key.pem", "ca.pem"]
        .iter()
        .map(|f| {
            std::fs::metadata(dir.join(f))
                .and_then(|m| m.modified())
                .ok()
        })
        .collect()
}

fn peer_role(conn: &Connection) -> Option<Role> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    certs.first().and_then(tls::role_of)
}

async fn serve_connection(conn: Connection, node: Arc<Node>, limits: QuicLimits) {
    let Some(role) = peer_role(&conn) else {
        conn.close(
            VarInt::from_u32(CODE_PROTOCOL),
            b"certificate carries no Fogline role",
        );
        return;
    };
    tracing::debug!(remote = %conn.remote_address(), role = role.as_str(), "QUIC peer connected");
    let slots = Arc::new(Semaphore::new(limits.max_streams as usize));
    loop {
        let (send, recv) = match conn.accept_bi().await {
            Ok(s) => s,
            Err(_) => return,
        };
        // Counted before the stopping flag is read (the drain sets the flag, then reads the
        // count): a stream is either refused here or waited for by the drain.
        node.quic_streams.fetch_add(1, Ordering::SeqCst);
        if node.stopping.load(Ordering::SeqCst) {
            node.quic_streams.fetch_sub(1, Ordering::SeqCst);
            // Nothing of it has run: the caller may send it anywhere else.
            refuse(
                send,
                503,
                format!("{} is stopping; try another place", node.id),
            );
            continue;
        }
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            node.quic_streams.fetch_sub(1, Ordering::SeqCst);
            let message = format!(
                "more than {} concurrent streams on this connection; retry shortly",
                limits.max_streams
            );
            refuse(send, 429, message);
            continue;
        };
        let node = node.clone();
        let limits = limits.clone();
        let conn = conn.clone();
        tokio::spawn(async move {
            serve_stream(&node, &conn, send, recv, &limits, permit).await;
            node.quic_streams.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

async fn serve_stream(
    node: &Node,
    conn: &Connection,
    mut send: SendStream,
    recv: RecvStream,
    limits: &QuicLimits,
    slot: tokio::sync::OwnedSemaphorePermit,
) {
    let mut r = FrameReader::new(recv, limits.stream_timeout);
    let result = handle_stream(node, &mut send, &mut r, limits).await;
    match result {
        Ok(()) => {
            let _ = send.finish();
            drop(slot);
            // Kept (not awaited: a wake-up per call costs more than the call) until the
            // caller has acknowledged it, so a stopping node can wait for its replies.
            node.delivering.keep(send);
        }
        Err(QuicError::Stalled(_)) => {
            let _ = send.reset(VarInt::from_u32(CODE_STALLED));
            r.recv.stop(VarInt::from_u32(CODE_STALLED)).ok();
        }
        Err(QuicError::Wire(e)) => {
            // A peer that breaks framing cannot be trusted with the rest of the connection.
            tracing::warn!(remote = %conn.remote_address(), "closing QUIC connection: {e}");
            conn.close(VarInt::from_u32(CODE_PROTOCOL), e.to_string().as_bytes());
        }
        Err(e) => tracing::debug!("QUIC stream: {e}"),
    }
}

async fn handle_stream(
    node: &Node,
    send: &mut SendStream,
    r: &mut FrameReader,
    limits: &QuicLimits,
) -> Result<(), QuicError> {
    let inv = match r.next().await? {
        Frame::Invoke(inv) => inv,
        Frame::Status => return write_frame(send, &Frame::StatusReply(node.capacity())).await,
        Frame::Prepare(inv) => {
            if inv.manifest.is_none() || node.dispatch.get().is_some() {
                return reply_error(
                    send,
                    400,
                    false,
                    "Prepare needs a manifest, and a node to run it".into(),
                )
                .await;
            }
            return match ensure_function(node, &inv, send, r, limits).await? {
                Ok(()) => match node.warm_up(&inv.function).await {
                    Ok(()) => write_frame(send, &Frame::StatusReply(node.capacity())).await,
                    Err(e) => reply_error(send, 503, true, e.to_string()).await,
                },
                Err((status, msg)) => reply_error(send, status, false, msg).await,
            };
        }
        other => {
            return Err(QuicError::Unexpected(format!(
                "expected Invoke or Status, got {}",
                name(&other)
            )))
        }
    };
    if inv.body_len > limits.max_body {
        return reply_error(
            send,
            413,
            false,
            format!(
                "request body of {} bytes exceeds this node's limit of {}",
                inv.body_len, limits.max_body
            ),
        )
        .await;
    }
    let body = r.body(inv.body_len, limits.max_body).await?;
    // 0-RTT data can be replayed by whoever captured it: only idempotent calls may use it.
    if r.recv.is_0rtt() {
        let idempotent = match (&inv.manifest, node.lookup(&inv.function)) {
            (_, Some(local)) => local.manifest.idempotent,
            (Some(m), None) => m.idempotent,
            (None, None) => false,
        };
        if !idempotent {
            return reply_error(
                send,
                425,
                true,
                format!("{} is not idempotent: it cannot be sent as 0-RTT early data; send it after the handshake", inv.function),
            )
            .await;
        }
    }
    // A router places the call (its own functions are the ones it knows); a node runs it,
    // loading the caller's manifest and module first when it lacks them.
    if node.dispatch.get().is_none() {
        if let Err((status, msg)) = ensure_function(node, &inv, send, r, limits).await? {
            return reply_error(send, status, false, msg).await;
        }
    }
    match node.call(&inv.function, body).await {
        Ok(out) => {
            let res = InvokeResult {
                status: 200,
                cold: out.cold,
                run_us: (out.run_ms * 1e3) as u64,
                node: out.node,
                body_len: out.body.len() as u64,
            };
            write_frames(send, Some(&Frame::Result(res)), &out.body).await
        }
        Err(e) => {
            let retryable = e.retryable();
            reply_error(send, e.status, retryable, e.message).await
        }
    }
}

/// Makes the invoked function runnable here: the local one, or the caller's manifest with
/// its module fetched from the caller when missing. `Ok(Err(..))` is a refusal to report.
async fn ensure_function(
    node: &Node,
    inv: &Invoke,
    send: &mut SendStream,
    r: &mut FrameReader,
    limits: &QuicLimits,
) -> Result<Result<(), (u16, String)>, QuicError> {
    let local = node.lookup(&inv.function);
    let Some(m) = &inv.manifest else {
        return Ok(match local {
            Some(_) => Ok(()),
            None => Err((404, format!("function {:?} not found", inv.function))),
        });
    };
    if m.name != inv.function {
        return Ok(Err((
            400,
            format!("manifest is for {:?}, not {:?}", m.name, inv.function),
        )));
    }
    if local.as_ref().is_some_and(|l| l.manifest == *m) {
        return Ok(Ok(()));
    }
    let Some(digest) = m.module else {
        return Ok(Err((400, "the manifest names no module".into())));
    };
    let module = if node.has_module(&digest) {
        None
    } else {
        write_frame(send, &Frame::NeedModule(digest)).await?;
        let bytes = r.body_until_end(limits.max_module).await?;
        if Digest::of(&bytes) != digest {
            return Ok(Err((
                400,
                format!("module bytes do not match their hash {digest}; refusing them"),
            )));
        }
        Some(Bytes::from(bytes))
    };
    match node.deploy(m.clone(), module, false).await {
        Ok(_) => Ok(Ok(())),
        Err(e) => Ok(Err((400, e.to_string()))),
    }
}

/// Answers a stream it will not serve with a retryable error, without holding up the
/// accept loop.
fn refuse(mut send: SendStream, status: u16, message: String) {
    tokio::spawn(async move {
        let _ = reply_error(&mut send, status, true, message).await;
        let _ = send.finish();
    });
}

async fn reply_error(
    send: &mut SendStream,
    status: u16,
    retryable: bool,
    message: String,
) -> Result<(), QuicError> {
    write_frame(
        send,
        &Frame::Error(WireErrorMsg {
            status,
            retryable,
            message,
        }),
    )
    .await
}

fn name(f: &Frame) -> &'static str {
    match f {
        Frame::Invoke(_) => "Invoke",
        Frame::Data(_) => "Data",
        Frame::End => "End",
        Frame::Result(_) => "Result",
        Frame::Error(_) => "Error",
        Frame::NeedModule(_) => "NeedModule",
        Frame::Status => "Status",
        Frame::StatusReply(_) => "StatusReply",
        Frame::Prepare(_) => "Prepare",
    }
}

// ---- frames over streams --------------------------------------------------------------

/// Reads frames from a stream, each under a deadline.
pub struct FrameReader {
    recv: RecvStream,
    timeout: Duration,
}

impl FrameReader {
    pub fn new(recv: RecvStream, timeout: Duration) -> Self {
        FrameReader { recv, timeout }
    }

    async fn exact(&mut self, buf: &mut [u8]) -> Result<(), QuicError> {
        match tokio::time::timeout(self.timeout, self.recv.read_exact(buf)).await {
            Err(_) => Err(QuicError::Stalled(self.timeout)),
            Ok(Err(quinn::ReadExactError::FinishedEarly(_))) => Err(QuicError::Stream(
                "stream ended in the middle of a frame".into(),
            )),
            Ok(Err(quinn::ReadExactError::ReadError(quinn::ReadError::ZeroRttRejected))) => {
                Err(QuicError::ZeroRttRejected)
            }
            Ok(Err(quinn::ReadExactError::ReadError(e))) => Err(QuicError::Stream(e.to_string())),
            Ok(Ok(())) => Ok(()),
        }
    }

    /// The next frame. An oversized or unknown header fails before its payload is read.
    pub async fn next(&mut self) -> Result<Frame, QuicError> {
        let mut h = [0u8; wire::HEADER];
        self.exact(&mut h).await?;
        let (kind, len) = wire::parse_header(&h)?;
        let mut payload = vec![0u8; len];
        self.exact(&mut payload).await?;
        if kind == wire::Kind::Data {
            return Ok(Frame::Data(payload));
        }
        Ok(wire::decode_payload(kind, &payload)?)
    }

    /// A body of exactly `len` bytes in `Data` frames, then `End`.
    async fn body(&mut self, len: u64, max: u64) -> Result<Bytes, QuicError> {
        let got = self.body_until_end(max.min(len)).await?;
        if got.len() as u64 != len {
            return Err(WireError::Malformed {
                kind: wire::Kind::End,
                problem: format!("body is {} bytes, Invoke said {len}", got.len()),
            }
            .into());
        }
        Ok(Bytes::from(got))
    }

    /// `Data` frames up to `max` bytes in all, until `End`, read straight into one buffer.
    async fn body_until_end(&mut self, max: u64) -> Result<Vec<u8>, QuicError> {
        let mut out = Vec::new();
        loop {
            let mut h = [0u8; wire::HEADER];
            self.exact(&mut h).await?;
            let (kind, len) = wire::parse_header(&h)?;
            match kind {
                wire::Kind::Data => {
                    if (out.len() + len) as u64 > max {
                        return Err(WireError::Malformed {
                            kind,
                            problem: format!("more than the {max} bytes allowed"),
                        }
                        .into());
                    }
                    let start = out.len();
                    out.resize(start + len, 0);
                    self.exact(&mut out[start..]).await?;
                }
                wire::Kind::End => {
                    let mut payload = vec![0u8; len];
                    self.exact(&mut payload).await?;
                    wire::decode_payload(kind, &payload)?;
                    return Ok(out);
                }
                other => {
                    return Err(QuicError::Unexpected(format!(
                        "expected Data or End, got {other:?}"
                    )))
                }
            }
        }
    }
}

pub async fn write_frame(send: &mut SendStream, f: &Frame) -> Result<(), QuicError> {
    let mut buf = Vec::with_capacity(128);
    wire::encode(f, &mut buf);
    send.write_all(&buf)
        .await
        .map_err(|e| QuicError::Stream(e.to_string()))
}

/// Writes a body as `Data` chunks then `End`, without copying it.
pub async fn write_body(send: &mut SendStream, body: &Bytes) -> Result<(), QuicError> {
    write_frames(send, None, body).await
}

/// Writes an optional control frame, then a body as `Data` chunks and `End`, in one call so
/// a small message leaves in as few packets as possible and the body is never copied.
pub async fn write_frames(
    send: &mut SendStream,
    head: Option<&Frame>,
    body: &Bytes,
) -> Result<(), QuicError> {
    let mut chunks = Vec::with_capacity(2 * body.len().div_ceil(wire::CHUNK) + 2);
    if let Some(f) = head {
        let mut b = Vec::with_capacity(128);
        wire::encode(f, &mut b);
        chunks.push(Bytes::from(b));
    }
    let mut off = 0;
    while off < body.len() {
        let end = (off + wire::CHUNK).min(body.len());
        chunks.push(Bytes::copy_from_slice(&wire::data_header(end - off)));
        chunks.push(body.slice(off..end));
        off = end;
    }
    let mut end = Vec::with_capacity(wire::HEADER);
    wire::encode(&Frame::End, &mut end);
    chunks.push(Bytes::from(end));
    send.write_all_chunks(&mut chunks)
        .await
        .map_err(|e| QuicError::Stream(e.to_string()))
}

// ---- client ---------------------------------------------------------------------------

/// Maps any connection failure to `addr` onto [`QuicError::Connect`] with its reason.
fn connect_error<E: std::fmt::Display>(addr: SocketAddr) -> impl Fn(E) -> QuicError {
    move |e| QuicError::Connect {
        addr,
        reason: e.to_string(),
    }
}

/// What to invoke.
#[derive(Debug, Clone)]
pub struct Request {
    pub function: String,
    /// Sent so a peer without the function can run it, fetching its module from us.
    pub manifest: Option<FunctionManifest>,
    pub body: Bytes,
}

/// A successful remote invocation.
#[derive(Debug, Clone)]
pub struct Reply {
    pub result: InvokeResult,
    pub body: Bytes,
    /// Whether the peer fetched the module from us during this call.
    pub sent_module: bool,
}

/// Answers a peer's request for a module with its bytes.
async fn send_module(
    send: &mut SendStream,
    modules: &dyn ModuleSource,
    d: &Digest,
) -> Result<(), QuicError> {
    let bytes = modules.module(d).ok_or_else(|| {
        QuicError::Unexpected(format!(
            "peer asked for module {d}, which this side does not have"
        ))
    })?;
    write_body(send, &bytes).await
}

/// A QUIC client keeping one connection per peer, with TLS session resumption.
pub struct Client {
    endpoint: Endpoint,
    conns: Mutex<HashMap<SocketAddr, Connection>>,
    /// One TLS config per peer: every peer answers to the same server name, so a shared
    /// session cache would offer one peer's ticket to another (which then rejects the 0-RTT
    /// data). Each peer gets its own small session cache.
    configs: Mutex<HashMap<SocketAddr, quinn::ClientConfig>>,
    base: Arc<rustls::ClientConfig>,
    timeout: Duration,
}

impl Client {
    pub fn new(tls: &TlsDir) -> Result<Self, QuicError> {
        let bind = SocketAddr::from(([0, 0, 0, 0], 0));
        let endpoint =
            Endpoint::client(bind).map_err(|source| QuicError::Bind { addr: bind, source })?;
        Ok(Client {
            endpoint,
            conns: Mutex::new(HashMap::new()),
            configs: Mutex::new(HashMap::new()),
            base: Arc::new(tls.client_config(wire::ALPN)?),
            timeout: Duration::from_secs(30),
        })
    }

    /// The TLS/transport config for one peer, with that peer's own session cache.
    async fn config_for(&self, addr: SocketAddr) -> Result<quinn::ClientConfig, QuicError> {
        let mut configs = self.configs.lock().await;
        if let Some(c) = configs.get(&addr) {
            return Ok(c.clone());
        }
        let mut tls = (*self.base).clone();
        tls.resumption = rustls::client::Resumption::in_memory_sessions(4);
        let crypto = QuicClientConfig::try_from(tls)
            .map_err(|e| TlsError::Invalid(format!("QUIC client config: {e}")))?;
        let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
        // A peer that vanished (killed, restarted) is noticed by the idle timeout: keep it
        // short so a stale connection is replaced within seconds, not half a minute.
        cfg.transport_config(Arc::new(transport(1024, CLIENT_IDLE)));
        configs.insert(addr, cfg.clone());
        Ok(cfg)
    }

    /// A live connection to `addr`, reusing one when it is still open. With `early`, a
    /// resumed session sends before the handshake completes (0-RTT): only for idempotent work.
    pub async fn connection(&self, addr: SocketAddr, early: bool) -> Result<Connection, QuicError> {
        let mut conns = self.conns.lock().await;
        if let Some(c) = conns.get(&addr) {
            if c.close_reason().is_none() {
                return Ok(c.clone());
            }
        }
        let cfg = self.config_for(addr).await?;
        let connecting = self
            .endpoint
            .connect_with(cfg, addr, tls::PEER_NAME)
            .map_err(connect_error(addr))?;
        let conn = if early {
            match connecting.into_0rtt() {
                Ok((c, _accepted)) => c,
                Err(connecting) => connecting.await.map_err(connect_error(addr))?,
            }
        } else {
            connecting.await.map_err(connect_error(addr))?
        };
        conns.insert(addr, conn.clone());
        Ok(conn)
    }

    /// A new bidirectional stream to `addr` (`early`: may ride 0-RTT).
    async fn open(
        &self,
        addr: SocketAddr,
        early: bool,
    ) -> Result<(SendStream, RecvStream), QuicError> {
        let conn = self.connection(addr, early).await?;
        conn.open_bi()
            .await
            .map_err(|e| QuicError::Stream(e.to_string()))
    }

    /// Forgets a peer's connection (after it failed).
    /// Closes it, so calls waiting on it fail now instead of at the idle timeout.
    pub async fn forget(&self, addr: SocketAddr) {
        if let Some(c) = self.conns.lock().await.remove(&addr) {
            c.close(VarInt::from_u32(0), b"peer considered gone");
        }
    }

    /// Invokes a function on `addr`. `modules` answers the peer's module requests.
    pub async fn invoke(
        &self,
        addr: SocketAddr,
        req: &Request,
        modules: &dyn ModuleSource,
    ) -> Result<Reply, QuicError> {
        let early = req.manifest.as_ref().is_some_and(|m| m.idempotent);
        let conn = self.connection(addr, early).await?;
        match self.exchange(&conn, req, modules).await {
            // Lost with the connection (not refused, not malformed): a clean stop means the
            // node never took the stream.
            Err(e @ QuicError::Stream(_)) if stopped_cleanly(&conn) => {
                tracing::debug!("{addr} stopped before answering: {e}");
                Err(QuicError::Remote(WireErrorMsg {
                    status: 503,
                    retryable: true,
                    message: format!("{addr} stopped before running the call"),
                }))
            }
            other => other,
        }
    }

    /// One invocation on `conn`.
    async fn exchange(
        &self,
        conn: &Connection,
        req: &Request,
        modules: &dyn ModuleSource,
    ) -> Result<Reply, QuicError> {
        let (mut send, recv) = conn
            .open_bi()
            .await
            .map_err(|e| QuicError::Stream(e.to_string()))?;
        let inv = Invoke {
            function: req.function.clone(),
            manifest: req.manifest.clone(),
            body_len: req.body.len() as u64,
        };
        // A peer that refuses the stream stops reading it and answers at once; its answer
        // says more than our failed write, so read it before giving up.
        let mut written = write_frames(&mut send, Some(&Frame::Invoke(inv)), &req.body).await;
        // Without a manifest the peer never asks for a module: end our side now, so the
        // request leaves with its FIN and the stream closes with the reply.
        if req.manifest.is_none() {
            let _ = send.finish();
        }
        let mut r = FrameReader::new(recv, self.timeout);
        let mut sent_module = false;
        loop {
            let frame = match (r.next().await, std::mem::replace(&mut written, Ok(()))) {
                (Ok(f), _) => f,
                (Err(QuicError::ZeroRttRejected), _)
                | (Err(_), Err(QuicError::ZeroRttRejected)) => {
                    return Err(QuicError::ZeroRttRejected)
                }
                (Err(_), Err(w)) => return Err(w),
                (Err(e), Ok(())) => return Err(e),
            };
            match frame {
                Frame::NeedModule(d) => {
                    send_module(&mut send, modules, &d).await?;
                    sent_module = true;
                }
                Frame::Result(result) => {
                    let body = r.body(result.body_len, u64::MAX).await?;
                    let _ = send.finish();
                    return Ok(Reply {
                        result,
                        body,
                        sent_module,
                    });
                }
                Frame::Error(e) => {
                    let _ = send.finish();
                    return Err(QuicError::Remote(e));
                }
                other => {
                    return Err(QuicError::Unexpected(format!(
                        "expected a result, got {}",
                        name(&other)
                    )))
                }
            }
        }
    }

    /// Asks a peer to load a function ahead of calls (it fetches the module from us).
    pub async fn prepare(
        &self,
        addr: SocketAddr,
        manifest: &FunctionManifest,
        modules: &dyn ModuleSource,
    ) -> Result<Capacity, QuicError> {
        let (mut send, recv) = self.open(addr, false).await?;
        let inv = Invoke {
            function: manifest.name.clone(),
            manifest: Some(manifest.clone()),
            body_len: 0,
        };
        write_frame(&mut send, &Frame::Prepare(inv)).await?;
        let mut r = FrameReader::new(recv, self.timeout);
        loop {
            match r.next().await? {
                Frame::NeedModule(d) => send_module(&mut send, modules, &d).await?,
                Frame::StatusReply(c) => {
                    let _ = send.finish();
                    return Ok(c);
                }
                Frame::Error(e) => return Err(QuicError::Remote(e)),
                other => {
                    return Err(QuicError::Unexpected(format!(
                        "expected StatusReply, got {}",
                        name(&other)
                    )))
                }
            }
        }
    }

    /// Asks a peer what it can take on.
    pub async fn status(&self, addr: SocketAddr) -> Result<Capacity, QuicError> {
        let (mut send, recv) = self.open(addr, true).await?;
        write_frame(&mut send, &Frame::Status).await?;
        let _ = send.finish();
        match FrameReader::new(recv, self.timeout).next().await? {
            Frame::StatusReply(c) => Ok(c),
            Frame::Error(e) => Err(QuicError::Remote(e)),
            other => Err(QuicError::Unexpected(format!(
                "expected StatusReply, got {}",
                name(&other)
            ))),
        }
    }

    /// Measures the time of a full handshake to `addr` on a fresh endpoint-level connection.
    pub async fn handshake_time(&self, addr: SocketAddr) -> Result<Duration, QuicError> {
        let cfg = self.config_for(addr).await?;
        let t = Instant::now();
        let c = self
            .endpoint
            .connect_with(cfg, addr, tls::PEER_NAME)
            .map_err(connect_error(addr))?
            .await
            .map_err(connect_error(addr))?;
        let d = t.elapsed();
        c.close(VarInt::from_u32(0), b"");
        Ok(d)
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }
}
