//! The QUIC client: one connection per peer, reused; one stream per invocation.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fogline_core::wire::{self, Capacity, Frame, Invoke, InvokeResult, WireErrorMsg};
use fogline_core::{Digest, FunctionManifest};
use quinn::crypto::rustls::QuicClientConfig;
use quinn::{Connection, Endpoint, RecvStream, SendStream, VarInt};
use tokio::sync::Mutex;

use crate::executor::ModuleSource;
use crate::tls::{self, TlsDir, TlsError};

use super::*;

/// Like [`connect_error`], saying so when the peer is not the member expected there.
fn identity_error(
    addr: SocketAddr,
    name: &str,
) -> impl Fn(quinn::ConnectionError) -> QuicError + '_ {
    move |e| {
        let reason = e.to_string();
        if reason.contains("not valid for name") || reason.contains("NotValidForName") {
            QuicError::Connect {
                addr,
                reason: format!(
                    "the member at {addr} is not {name:?}: its certificate names another member ({reason})"
                ),
            }
        } else {
            QuicError::Connect { addr, reason }
        }
    }
}

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
    /// The peer cluster to run it in, through the bridge at the address called.
    pub via: Option<String>,
}

/// A successful remote invocation.
#[derive(Debug, Clone)]
pub struct Reply {
    pub result: InvokeResult,
    pub body: Bytes,
    /// Whether the peer fetched the module from us during this call.
    pub sent_module: bool,
}

impl Reply {
    /// The call as placed on the member that answered, which is of `tier`.
    pub fn into_placed(self, tier: fogline_core::config::Tier) -> crate::dispatch::Placed {
        crate::dispatch::Placed {
            body: self.body,
            node: self.result.node,
            tier,
            cold: self.result.cold,
            truncated: false,
            predicted_ms: None,
            took_ms: 0.0,
            run_ms: self.result.run_us as f64 / 1e3,
            startup_ms: self.result.startup_us.map(|us| us as f64 / 1e3),
            attempts: 1,
            module_sent: Some(self.sent_module),
            load: self.result.load,
        }
    }
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

/// Answers a peer's request for a function's secrets with their values; when this side
/// holds none, with an empty list (the peer's deploy then names what is missing).
async fn send_secrets(
    send: &mut SendStream,
    modules: &dyn ModuleSource,
    key: &str,
    names: &[String],
) -> Result<(), QuicError> {
    let values = modules.secrets(key, names).unwrap_or_default();
    let bytes = postcard::to_allocvec(&values)
        .map_err(|e| QuicError::Unexpected(format!("encoding secrets: {e}")))?;
    write_body(send, &Bytes::from(bytes)).await
}

/// One peer's connection, when open, and the name it verified.
type Slot = Arc<Mutex<Option<(Connection, Arc<str>)>>>;

/// A QUIC client keeping one connection per peer, with TLS session resumption.
pub struct Client {
    endpoint: Endpoint,
    /// Open connections, with the name each verified: one slot per peer, held while a
    /// connection to that peer is made. Calls to a peer wait for its one handshake; calls to
    /// other peers never do (a handshake with a peer just killed lasts until it times out).
    conns: std::sync::Mutex<HashMap<SocketAddr, Slot>>,
    /// One TLS config per peer: every peer answers to the same server name, so a shared
    /// session cache would offer one peer's ticket to another (which then rejects the 0-RTT
    /// data). Each peer gets its own small session cache.
    configs: Mutex<HashMap<SocketAddr, quinn::ClientConfig>>,
    /// The member expected at an address (from the mesh, or `quic://NAME@ADDR`): its
    /// certificate must name it. Where none is expected, any member of the cluster that
    /// accepts connections will do.
    expected: std::sync::RwLock<HashMap<SocketAddr, Arc<str>>>,
    /// The name any member that accepts connections answers to.
    any_member: Arc<str>,
    /// The TLS settings every peer's config starts from: replaced when the member's
    /// certificate is renewed.
    base: std::sync::RwLock<Arc<rustls::ClientConfig>>,
    timeout: Duration,
    /// The certificates the member refuses to call (set on a member; a CLI client has none).
    revocations: std::sync::OnceLock<Arc<crate::revocation::Revocations>>,
}

impl Client {
    pub fn new(tls: &TlsDir) -> Result<Self, QuicError> {
        Self::with_config(tls.client_config(wire::ALPN)?)
    }

    /// A client with its own TLS settings (a bridge's link to a peer cluster, which trusts
    /// that cluster's CA only).
    pub fn with_config(tls: rustls::ClientConfig) -> Result<Self, QuicError> {
        let bind = SocketAddr::from(([0, 0, 0, 0], 0));
        let endpoint =
            Endpoint::client(bind).map_err(|source| QuicError::Bind { addr: bind, source })?;
        Ok(Client {
            endpoint,
            conns: std::sync::Mutex::new(HashMap::new()),
            configs: Mutex::new(HashMap::new()),
            expected: std::sync::RwLock::new(HashMap::new()),
            any_member: Arc::from(tls::PEER_NAME),
            base: std::sync::RwLock::new(Arc::new(tls)),
            timeout: Duration::from_secs(30),
            revocations: std::sync::OnceLock::new(),
        })
    }

    /// The TLS/transport config for one peer, with that peer's own session cache.
    async fn config_for(&self, addr: SocketAddr) -> Result<quinn::ClientConfig, QuicError> {
        let mut configs = self.configs.lock().await;
        if let Some(c) = configs.get(&addr) {
            return Ok(c.clone());
        }
        let mut tls = (**self.base.read().unwrap_or_else(|p| p.into_inner())).clone();
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

    /// Says which member must answer at `addr`: connections there verify that its
    /// certificate names `name`. A connection made for another name is replaced.
    pub fn expect(&self, addr: SocketAddr, name: &str) {
        // Called for every placed call; it changes only when a member moves.
        let same = self
            .expected
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&addr)
            .is_some_and(|n| &**n == name);
        if !same {
            self.expected
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(addr, Arc::from(name));
        }
    }

    /// The TLS name a connection to `addr` verifies.
    fn server_name(&self, addr: SocketAddr) -> Arc<str> {
        self.expected
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&addr)
            .cloned()
            .unwrap_or_else(|| self.any_member.clone())
    }

    /// A live connection to `addr`, reusing one when it is still open. With `early`, a
    /// resumed session sends before the handshake completes (0-RTT): only for idempotent work.
    pub async fn connection(&self, addr: SocketAddr, early: bool) -> Result<Connection, QuicError> {
        let name = self.server_name(addr);
        let slot = self.slots().entry(addr).or_default().clone();
        let mut held = slot.lock().await;
        if let Some((c, made_for)) = held.as_ref() {
            if c.close_reason().is_none() && *made_for == name {
                return Ok(c.clone());
            }
        }
        let cfg = self.config_for(addr).await?;
        let connecting = self
            .endpoint
            .connect_with(cfg, addr, &name)
            .map_err(connect_error(addr))?;
        let conn = if early {
            match connecting.into_0rtt() {
                Ok((c, _accepted)) => c,
                Err(connecting) => connecting.await.map_err(identity_error(addr, &name))?,
            }
        } else {
            connecting.await.map_err(identity_error(addr, &name))?
        };
        if let Some(why) = self.revoked(&conn) {
            conn.close(VarInt::from_u32(CODE_REVOKED), why.as_bytes());
            return Err(QuicError::Remote(WireErrorMsg {
                status: 502,
                retryable: true,
                message: format!("{addr}: {why}"),
            }));
        }
        *held = Some((conn.clone(), name));
        Ok(conn)
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Slot>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Presents the certificate in `tls` from now on (after a renewal): new connections use
    /// it; open ones stay, as their peers checked the old one when they opened.
    pub async fn reload(&self, tls: &TlsDir) -> Result<(), QuicError> {
        let base = Arc::new(tls.client_config(wire::ALPN)?);
        *self.base.write().unwrap_or_else(|p| p.into_inner()) = base;
        self.configs.lock().await.clear();
        Ok(())
    }

    /// Refuses members whose certificates `list` revokes: new connections to them fail,
    /// and open ones are closed as soon as a list revoking them is taken.
    pub fn enforce(self: &Arc<Self>, list: Arc<crate::revocation::Revocations>) {
        let mut changed = list.watch();
        if self.revocations.set(list).is_err() {
            return;
        }
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            while changed.changed().await.is_ok() {
                let Some(me) = me.upgrade() else { return };
                let slots: Vec<(SocketAddr, Slot)> =
                    me.slots().iter().map(|(a, s)| (*a, s.clone())).collect();
                for (addr, slot) in slots {
                    // Waits out a handshake in progress (which checks the list itself).
                    let mut held = slot.lock().await;
                    if let Some(why) = held.as_ref().and_then(|(c, _)| me.revoked(c)) {
                        tracing::warn!("closing the connection to {addr}: {why}");
                        if let Some((c, _)) = held.take() {
                            c.close(VarInt::from_u32(CODE_REVOKED), why.as_bytes());
                        }
                    }
                }
            }
        });
    }

    /// Why the member at the other end of `c` is refused, if it is.
    fn revoked(&self, c: &Connection) -> Option<String> {
        let list = self.revocations.get()?;
        list.check(&peer_cert(c)?).err()
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
        let Some(slot) = self.slots().remove(&addr) else {
            return;
        };
        // A handshake in progress there has no connection to close yet; it ends on its own.
        let open = slot.try_lock().ok().and_then(|mut held| held.take());
        if let Some((c, _)) = open {
            c.close(VarInt::from_u32(0), b"peer considered gone");
        }
    }

    /// Invokes a function on `addr`. `modules` answers the peer's module requests.
    /// Runs one call of the function `manifest` describes at `addr`; the peer fetches the
    /// module from `modules` when it lacks it.
    pub async fn send(
        &self,
        addr: SocketAddr,
        manifest: &FunctionManifest,
        body: Bytes,
        modules: &dyn ModuleSource,
    ) -> Result<Reply, QuicError> {
        let req = Request {
            function: manifest.name.clone(),
            manifest: Some(manifest.clone()),
            body,
            via: None,
        };
        self.invoke(addr, &req, modules).await
    }

    pub async fn invoke(
        &self,
        addr: SocketAddr,
        req: &Request,
        modules: &dyn ModuleSource,
    ) -> Result<Reply, QuicError> {
        let early = req.manifest.as_ref().is_some_and(|m| m.idempotent);
        let conn = self.connection(addr, early).await?;
        match self.exchange(&conn, req, modules).await {
            // Refused for our certificate: the peer's reason says which and why.
            Err(QuicError::Stream(_)) if refused_reason(&conn).is_some() => {
                Err(QuicError::Remote(WireErrorMsg {
                    status: 403,
                    retryable: false,
                    message: refused_reason(&conn).unwrap_or_default(),
                }))
            }
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
            trace: crate::traces::outgoing(),
            key: crate::agent::keyed::current(),
            via: req.via.clone(),
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
                Frame::NeedSecrets(names) => {
                    send_secrets(&mut send, modules, &req.function, &names).await?
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
            trace: crate::traces::outgoing(),
            key: None,
            via: None,
        };
        write_frame(&mut send, &Frame::Prepare(inv)).await?;
        let mut r = FrameReader::new(recv, self.timeout);
        loop {
            match r.next().await? {
                Frame::NeedModule(d) => send_module(&mut send, modules, &d).await?,
                Frame::NeedSecrets(names) => {
                    send_secrets(&mut send, modules, &manifest.name, &names).await?
                }
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

    /// One federation exchange with a peer cluster's bridge (this client trusts its CA).
    pub async fn federate(
        &self,
        addr: SocketAddr,
        req: fogline_core::federation::FedRequest,
    ) -> Result<(fogline_core::federation::FedReply, usize), QuicError> {
        let (mut send, recv) = self.open(addr, false).await?;
        write_frame(&mut send, &Frame::Federate(req)).await?;
        let _ = send.finish();
        let mut r = FrameReader::new(recv, self.timeout);
        let f = r.next().await?;
        let mut bytes = Vec::new();
        fogline_core::wire::encode(&f, &mut bytes);
        match f {
            Frame::Federated(rep) => Ok((rep, bytes.len())),
            Frame::Error(e) => Err(QuicError::Remote(e)),
            other => Err(QuicError::Unexpected(format!(
                "expected Federated, got {}",
                name(&other)
            ))),
        }
    }

    /// Asks a peer for its spans of a trace (and those of the members it sent the call on
    /// to, `depth` hops on).
    pub async fn traces(
        &self,
        addr: SocketAddr,
        trace_id: fogline_core::trace::TraceId,
        depth: u8,
    ) -> Result<wire::TraceReply, QuicError> {
        let (mut send, recv) = self.open(addr, true).await?;
        write_frame(
            &mut send,
            &Frame::TraceQuery(wire::TraceQuery { trace_id, depth }),
        )
        .await?;
        let _ = send.finish();
        match FrameReader::new(recv, self.timeout).next().await? {
            Frame::TraceReply(r) => Ok(r),
            Frame::Error(e) => Err(QuicError::Remote(e)),
            other => Err(QuicError::Unexpected(format!(
                "expected TraceReply, got {}",
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
