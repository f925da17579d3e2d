//! The QUIC trigger: other tiers (routers, bridges, nodes) and QUIC devices invoke here,
//! one stream per call over one mutually authenticated connection per peer. A router places
//! what it takes; a node runs it, fetching the caller's module by hash when it lacks it.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fogline_core::wire::{self, Frame, Invoke, InvokeResult, WireErrorMsg};
use fogline_core::Digest;
use quinn::crypto::rustls::QuicServerConfig;
use quinn::{Connection, Endpoint, RecvStream, SendStream, VarInt};
use tokio::sync::Semaphore;

use crate::agent::Node;
use crate::tls::{self, Role, TlsDir, TlsError};

use crate::quic::*;

/// The QUIC server, bound.
pub struct QuicServer {
    endpoint: Endpoint,
    tls_dir: std::path::PathBuf,
    limits: QuicLimits,
    reload_every: Duration,
}

impl QuicServer {
    /// Binds `quic.listen` with the member's certificate; `None` when QUIC is off.
    pub fn bind(config: &fogline_core::config::NodeConfig) -> anyhow::Result<Option<QuicServer>> {
        let q = &config.quic;
        let (Some(listen), Some(dir)) = (q.listen, &q.tls_dir) else {
            return Ok(None);
        };
        let tls = TlsDir::load(dir)?;
        match tls.role() {
            Some(r) if r.serves() => {}
            Some(r) => anyhow::bail!(
                "{}: the certificate's role is {}, which cannot accept connections; issue one with --role node or bridge",
                dir.display(),
                r.as_str()
            ),
            None => anyhow::bail!(
                "{}: the certificate carries no Fogline role; issue it with `fogline certs issue`",
                dir.display()
            ),
        }
        let limits = QuicLimits::from_config(config);
        Ok(Some(QuicServer {
            endpoint: bind_server(listen, &tls, &limits)?,
            tls_dir: dir.clone(),
            limits,
            reload_every: q.reload_every,
        }))
    }
}

impl super::Trigger for QuicServer {
    fn name(&self) -> &'static str {
        "quic"
    }

    fn address(&self) -> Option<SocketAddr> {
        self.endpoint.local_addr().ok()
    }

    fn serve(
        self: Box<Self>,
        node: Arc<Node>,
        stopping: tokio::sync::watch::Receiver<bool>,
        deadline: Duration,
    ) -> crate::dispatch::BoxFut<'static, anyhow::Result<()>> {
        Box::pin(async move {
            let delivering = Arc::new(Delivering::default());
            let endpoint = self.endpoint.clone();
            let serving = tokio::spawn(serve(
                self.endpoint,
                node.clone(),
                self.tls_dir,
                self.limits,
                self.reload_every,
                delivering.clone(),
            ));
            if super::stopped(stopping).await {
                drain(&endpoint, &node, deadline, &delivering).await;
            }
            serving.abort();
            Ok(())
        })
    }
}

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
    delivering: Arc<Delivering>,
) {
    let reloader = {
        let endpoint = endpoint.clone();
        let reloaded_for = node.clone();
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
                    .and_then(|t| Ok((server_config(&t, &limits)?, t)))
                {
                    Ok((cfg, tls)) => {
                        endpoint.set_server_config(Some(cfg));
                        reloaded_for.note_certificate(&tls);
                        tracing::info!("reloaded TLS certificate from {}", tls_dir.display());
                    }
                    Err(e) => tracing::warn!("not reloading TLS from {}: {e}", tls_dir.display()),
                }
            }
        })
    };
    while let Some(incoming) = endpoint.accept().await {
        if node.stopping() {
            incoming.refuse();
            continue;
        }
        let node = node.clone();
        let limits = limits.clone();
        let delivering = delivering.clone();
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
                Ok(conn) => serve_connection(conn, node, limits, delivering).await,
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
pub async fn drain(endpoint: &Endpoint, node: &Node, deadline: Duration, delivering: &Delivering) {
    let t = Instant::now();
    while node.serving.quic_streams.load(Ordering::SeqCst) > 0 && t.elapsed() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Replies written but not yet acknowledged would be lost with the connection.
    let replies = delivering.take();
    let wait = deadline.saturating_sub(t.elapsed());
    let _ = tokio::time::timeout(wait, async {
        for s in replies {
            let _ = s.stopped().await;
        }
    })
    .await;
    let left = node.serving.quic_streams.load(Ordering::SeqCst);
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
    peer_cert(conn).as_ref().and_then(tls::role_of)
}

/// Checks that `peer`'s role allows `action`; a refusal is logged with the peer's name,
/// counted, and answered with the reason (403).
async fn allowed(
    node: &Node,
    peer: &Peer,
    action: tls::Action,
    send: &mut SendStream,
) -> Result<bool, QuicError> {
    let Err(refusal) = peer.role.check(action) else {
        return Ok(true);
    };
    tracing::warn!(peer = %peer.name, "refused over QUIC: {refusal}");
    node.metrics.refused(format!(
        "reason=\"role\",role=\"{}\",action=\"{}\"",
        refusal.role,
        action.label()
    ));
    reply_error(send, 403, false, refusal.to_string()).await?;
    Ok(false)
}

async fn serve_connection(
    conn: Connection,
    node: Arc<Node>,
    limits: QuicLimits,
    delivering: Arc<Delivering>,
) {
    let Some(role) = peer_role(&conn) else {
        conn.close(
            VarInt::from_u32(CODE_PROTOCOL),
            b"certificate carries no Fogline role",
        );
        return;
    };
    let name = peer_cert(&conn)
        .and_then(|c| tls::name_of(&c))
        .unwrap_or_else(|| conn.remote_address().to_string());
    let revoked = |conn: &Connection| {
        let why = peer_cert(conn).and_then(|c| node.revocations.check(&c).err())?;
        tracing::warn!(remote = %conn.remote_address(), "refused QUIC peer: {why}");
        node.metrics.refused("reason=\"revoked\"".into());
        Some(why)
    };
    if let Some(why) = revoked(&conn) {
        // A close while the peer may still be finishing its handshake loses its reason
        // (QUIC then sends a bare APPLICATION_ERROR), so the reason goes on the peer's
        // first stream, and the connection is closed after it (or after 2 s without one).
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            if let Ok((mut send, _recv)) = conn.accept_bi().await {
                let _ = reply_error(&mut send, 403, false, why.clone()).await;
                let _ = send.finish();
                let _ = send.stopped().await;
            }
        })
        .await;
        conn.close(VarInt::from_u32(CODE_REVOKED), why.as_bytes());
        return;
    }
    tracing::debug!(remote = %conn.remote_address(), peer = %name, role = role.as_str(), "QUIC peer connected");
    let mut list = node.revocations.watch();
    let ctx = Arc::new(Link {
        conn,
        peer: Peer {
            role,
            name,
            peer_cluster: false,
        },
        limits,
        delivering,
    });
    let (conn, limits) = (&ctx.conn, &ctx.limits);
    let slots = Arc::new(Semaphore::new(limits.max_streams as usize));
    loop {
        let (send, recv) = tokio::select! {
            s = conn.accept_bi() => match s {
                Ok(s) => s,
                Err(_) => return,
            },
            // A newer revocation list: an open connection is checked again at once.
            Ok(()) = list.changed() => {
                if let Some(why) = revoked(conn) {
                    conn.close(VarInt::from_u32(CODE_REVOKED), why.as_bytes());
                    return;
                }
                continue;
            }
        };
        let Some((send, permit)) = take_stream(&node, &slots, send, || {
            format!(
                "more than {} concurrent streams on this connection; retry shortly",
                limits.max_streams
            )
        }) else {
            continue;
        };
        let node = node.clone();
        let ctx = ctx.clone();
        tokio::spawn(async move {
            serve_stream(&node, &ctx, send, recv, permit).await;
            node.serving.quic_streams.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// Takes a new stream for serving, or refuses it with a retryable error (the node is
/// stopping, or every one of `slots` is in use: `busy` says so). A stream taken is counted
/// in `quic_streams` (the caller subtracts it when served), counted before the stopping
/// flag is read (the drain sets the flag, then reads the count): a stream is either
/// refused here or waited for by the drain.
fn take_stream(
    node: &Node,
    slots: &Arc<Semaphore>,
    send: SendStream,
    busy: impl FnOnce() -> String,
) -> Option<(SendStream, tokio::sync::OwnedSemaphorePermit)> {
    node.serving.quic_streams.fetch_add(1, Ordering::SeqCst);
    if node.stopping() {
        node.serving.quic_streams.fetch_sub(1, Ordering::SeqCst);
        // Nothing of it has run: the caller may send it anywhere else.
        refuse(
            send,
            503,
            format!("{} is stopping; try another place", node.id),
        );
        return None;
    }
    let Ok(permit) = slots.clone().try_acquire_owned() else {
        node.serving.quic_streams.fetch_sub(1, Ordering::SeqCst);
        refuse(send, 429, busy());
        return None;
    };
    Some((send, permit))
}

/// Who is at the other end of a connection, from its certificate.
pub struct Peer {
    pub role: tls::Role,
    /// The member (or device) its certificate names.
    pub name: String,
    /// A peer cluster's bridge: its calls always run in this cluster, loaded here first.
    pub peer_cluster: bool,
}

/// One connection and what its streams share.
struct Link {
    conn: Connection,
    peer: Peer,
    limits: QuicLimits,
    delivering: Arc<Delivering>,
}

async fn serve_stream(
    node: &Node,
    link: &Link,
    mut send: SendStream,
    recv: RecvStream,
    slot: tokio::sync::OwnedSemaphorePermit,
) {
    let (conn, limits, delivering) = (&link.conn, &link.limits, &link.delivering);
    let mut r = FrameReader::new(recv, limits.stream_timeout);
    let result = handle_stream(node, &link.peer, &mut send, &mut r, limits).await;
    match result {
        Ok(()) => {
            let _ = send.finish();
            drop(slot);
            // Kept (not awaited: a wake-up per call costs more than the call) until the
            // caller has acknowledged it, so a stopping node can wait for its replies.
            delivering.keep(send);
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
    peer: &Peer,
    send: &mut SendStream,
    r: &mut FrameReader,
    limits: &QuicLimits,
) -> Result<(), QuicError> {
    use tls::Action;
    let inv = match r.next().await? {
        Frame::Invoke(inv) => {
            // Sending a manifest deploys it here: only roles that may deploy send one.
            let action = if inv.manifest.is_some() {
                Action::Deploy
            } else {
                Action::Invoke
            };
            if !allowed(node, peer, action, send).await? {
                return Ok(());
            }
            inv
        }
        Frame::Status => {
            if !allowed(node, peer, Action::Status, send).await? {
                return Ok(());
            }
            return write_frame(send, &Frame::StatusReply(node.capacity())).await;
        }
        Frame::TraceQuery(q) => {
            if !allowed(node, peer, Action::ReadTraces, send).await? {
                return Ok(());
            }
            let depth = q.depth.min(crate::traces::MAX_DEPTH);
            let mut reply = crate::traces::gather(node, q.trace_id, depth).await;
            // One frame holds the reply: the newest spans past its size are left out.
            while !reply.spans.is_empty()
                && postcard::to_allocvec(&reply).map_or(0, |b| b.len())
                    > fogline_core::wire::MAX_PAYLOAD
            {
                let keep = reply.spans.len() * 3 / 4;
                reply.spans.truncate(keep);
            }
            return write_frame(send, &Frame::TraceReply(reply)).await;
        }
        Frame::Prepare(inv) => {
            // Its manifest deploys the function first.
            for action in [Action::Deploy, Action::Prepare] {
                if !allowed(node, peer, action, send).await? {
                    return Ok(());
                }
            }
            if inv.manifest.is_none() {
                return reply_error(send, 400, false, "Prepare needs a manifest".into()).await;
            }
            // A deploy (an operator's `fogline deploy --via quic://…`), then a warm instance
            // where this member runs functions.
            return match ensure_function(node, &inv, send, r, limits).await? {
                Ok(()) if !node.runs_functions() => {
                    write_frame(send, &Frame::StatusReply(node.capacity())).await
                }
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
    // The call's spans here join the caller's trace (a router's attempt, a device's own).
    let rec = node.traces.begin(inv.trace.as_deref(), None);
    crate::traces::Traces::run(rec.clone(), async {
        crate::traces::note("function", &inv.function);
        let served = serve_invoke(node, peer, send, r, limits, inv).await;
        node.traces
            .commit(&rec, if node.roles.router { "quic" } else { "serve" }, &[]);
        served
    })
    .await
}

/// Runs an invocation a stream carries and writes its answer.
async fn serve_invoke(
    node: &Node,
    peer: &Peer,
    send: &mut SendStream,
    r: &mut FrameReader,
    limits: &QuicLimits,
    inv: Invoke,
) -> Result<(), QuicError> {
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
    // Bound for a peer cluster: this bridge loads the function (so it can hand the peer
    // its module by hash) and relays the call over its federation link.
    if let Some(via) = inv.via.clone() {
        return relay(node, send, r, limits, inv, via, body).await;
    }
    // A router places the call (its own functions are the ones it knows); a node runs it,
    // loading the caller's manifest and module first when it lacks them (so does a bridge
    // for a peer cluster's call, placing it in its own cluster after).
    if !node.roles.router || peer.peer_cluster {
        if let Err((status, msg)) = ensure_function(node, &inv, send, r, limits).await? {
            return reply_error(send, status, false, msg).await;
        }
    }
    // With an idempotency key a member that runs functions runs it once per key (a
    // router hands the key on with the call). A peer cluster's call is placed in this
    // cluster; with a key it runs once per key here whichever member takes it: this
    // bridge keeps the answer (and hands the key on, so the member does too).
    let peer_run = node
        .links
        .federation
        .get()
        .filter(|_| peer.peer_cluster)
        .map(|fed| fed.run(&inv.function, body.clone()));
    let result = match (inv.key, peer_run) {
        (Some(key), Some(run)) => {
            let run = crate::agent::keyed::with(Some(key.clone()), run);
            node.once(&peer.name, &inv.function, &key, run).await
        }
        (None, Some(run)) => run.await,
        (Some(key), None) if !node.roles.router => {
            node.call_once(&peer.name, &inv.function, &key, body).await
        }
        (key, None) => crate::agent::keyed::with(key, node.call(&inv.function, body)).await,
    };
    crate::traces::note("status", result.as_ref().map_or_else(|e| e.status, |_| 200));
    match result {
        Ok(out) => {
            let res = InvokeResult {
                status: 200,
                cold: out.cold,
                run_us: (out.run_ms * 1e3) as u64,
                node: out.node,
                body_len: out.body.len() as u64,
                load: Some(node.load()),
                startup_us: out.startup_ms.map(|ms| (ms * 1e3) as u64),
            };
            write_frames(send, Some(&Frame::Result(res)), &out.body).await
        }
        Err(e) => {
            let retryable = e.retryable();
            reply_error(send, e.status, retryable, e.message).await
        }
    }
}

/// Relays a call to peer cluster `via` (this member is its cluster's bridge).
async fn relay(
    node: &Node,
    send: &mut SendStream,
    r: &mut FrameReader,
    limits: &QuicLimits,
    inv: Invoke,
    via: String,
    body: Bytes,
) -> Result<(), QuicError> {
    let Some(fed) = node.links.federation.get() else {
        return reply_error(
            send,
            404,
            false,
            format!(
                "{} relays to no peer clusters (no [federation]): cannot reach {via:?}",
                node.id
            ),
        )
        .await;
    };
    if let Err((status, msg)) = ensure_function(node, &inv, send, r, limits).await? {
        return reply_error(send, status, false, msg).await;
    }
    let Some(local) = node.lookup(&inv.function) else {
        return reply_error(
            send,
            404,
            false,
            format!("function {:?} not found", inv.function),
        )
        .await;
    };
    let req = crate::quic::Request {
        function: inv.function.clone(),
        manifest: Some(local.manifest.clone()),
        body,
        via: None,
    };
    crate::traces::note("via", &via);
    // The key crosses the link: the provider's member runs it once per key.
    match crate::agent::keyed::with(inv.key.clone(), fed.relay(&via, req)).await {
        Ok(out) => {
            // The answering member's load is one member's of the peer cluster, not the
            // place the router sent it to (the cluster, whose load its summary gives).
            let res = InvokeResult {
                body_len: out.body.len() as u64,
                load: None,
                ..out.result
            };
            write_frames(send, Some(&Frame::Result(res)), &out.body).await
        }
        Err(e) => reply_error(send, e.status, e.retryable, e.message).await,
    }
}

/// Serves a peered cluster's bridge on this bridge's federation listener: it may invoke
/// (its functions land in a namespace named after it, their modules fetched from it by
/// hash) and ask for summaries, nothing else.
pub async fn serve_peer(conn: Connection, node: Arc<Node>, limits: QuicLimits, consumer: String) {
    let slots = Arc::new(Semaphore::new(limits.max_streams as usize));
    let consumer: Arc<str> = Arc::from(consumer);
    loop {
        let Ok((send, recv)) = conn.accept_bi().await else {
            return;
        };
        let Some((send, permit)) = take_stream(&node, &slots, send, || {
            format!(
                "more than {} concurrent calls from one peer; retry shortly",
                limits.max_streams
            )
        }) else {
            continue;
        };
        let (node, limits, consumer) = (node.clone(), limits.clone(), consumer.clone());
        tokio::spawn(async move {
            let mut send = send;
            let mut r = FrameReader::new(recv, limits.stream_timeout);
            match serve_peer_stream(&node, &consumer, &mut send, &mut r, &limits).await {
                Ok(()) => {
                    let _ = send.finish();
                    let _ = send.stopped().await;
                }
                Err(e) => tracing::debug!(peer = %consumer, "federation stream: {e}"),
            }
            drop(permit);
            node.serving.quic_streams.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

async fn serve_peer_stream(
    node: &Node,
    consumer: &str,
    send: &mut SendStream,
    r: &mut FrameReader,
    limits: &QuicLimits,
) -> Result<(), QuicError> {
    let Some(fed) = node.links.federation.get() else {
        return reply_error(send, 503, true, "federation is off here".into()).await;
    };
    let mut inv = match r.next().await? {
        Frame::Federate(req) => {
            return match fed.answer(consumer, req) {
                Ok(rep) => write_frame(send, &Frame::Federated(rep)).await,
                Err(e) => reply_error(send, e.status, e.retryable, e.message).await,
            };
        }
        Frame::Invoke(inv) => inv,
        other => {
            let why = format!(
                "a peer cluster may only invoke and ask for summaries, not send {}",
                name(&other)
            );
            tracing::warn!(peer = %consumer, "refused over federation: {why}");
            node.metrics
                .refused("reason=\"federation\",action=\"other\"".into());
            return reply_error(send, 403, false, why).await;
        }
    };
    if inv.manifest.as_ref().is_some_and(|m| !m.secrets.is_empty()) {
        return reply_error(
            send,
            403,
            false,
            format!(
                "{} uses secrets, which do not cross a peering",
                inv.function
            ),
        )
        .await;
    }
    let key = match fed.admit(consumer, &inv.function) {
        Ok(key) => key,
        Err(e) => {
            node.metrics
                .refused("reason=\"federation\",action=\"invoke\"".into());
            return reply_error(send, e.status, e.retryable, e.message).await;
        }
    };
    inv.function = key.clone();
    if let Some(m) = &mut inv.manifest {
        m.name = key;
        // Its tier pin was the consumer's choice of cluster; here it runs wherever this
        // cluster places it.
        m.placement.tier = None;
    }
    inv.via = None;
    let peer = Peer {
        role: tls::Role::Bridge,
        name: format!("peer:{consumer}"),
        peer_cluster: true,
    };
    let served = serve_invoke(node, &peer, send, r, limits, inv).await;
    fed.done(consumer, served.is_ok());
    served
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
    // Code that travels by hash (a Wasm module) is fetched from the caller when missing;
    // code the manifest names (a container image) is checked by the deploy on this member.
    let module = match m.module {
        None => None,
        Some(digest) if node.has_module(&digest) => None,
        Some(digest) => {
            let mut fetch = crate::traces::span("module fetch");
            fetch.attr("module", digest);
            write_frame(send, &Frame::NeedModule(digest)).await?;
            let bytes = r.body_until_end(limits.max_module).await?;
            fetch.attr("bytes", bytes.len());
            drop(fetch);
            if Digest::of(&bytes) != digest {
                return Ok(Err((
                    400,
                    format!("module bytes do not match their hash {digest}; refusing them"),
                )));
            }
            Some(Bytes::from(bytes))
        }
    };
    // Secrets come from the caller (a router or bridge that holds them, or an operator):
    // only to the member the function is deployed on, and only as it deploys it.
    if !m.secrets.is_empty() {
        write_frame(send, &Frame::NeedSecrets(m.secrets.clone())).await?;
        let limit = (m.secrets.len() as u64 + 1) * (crate::secrets::MAX_VALUE as u64 + 512);
        let bytes = r.body_until_end(limit).await?;
        let values: fogline_core::wire::SecretValues = match postcard::from_bytes(&bytes) {
            Ok(v) => v,
            Err(e) => {
                return Ok(Err((
                    400,
                    format!("secrets sent for {:?} do not decode: {e}", m.name),
                )))
            }
        };
        let ns = fogline_core::access::split(&m.name).1;
        for (name, value) in values.iter().filter(|(n, _)| m.secrets.contains(n)) {
            if let Err(e) = node.secrets.set(ns, name, value) {
                return Ok(Err((400, e.to_string())));
            }
        }
    }
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
