//! Tiers over QUIC: one bidirectional stream per invocation, multiplexed over one mutually
//! authenticated connection per peer (quinn + rustls, TLS 1.3, the cluster CA).
//!
//! Frames are `fogline_core::wire`'s. The server side reads each frame under a deadline, so a
//! stalled stream is dropped and its resources freed; bounds every body and module by the
//! node's limits; refuses streams past `max_streams` per connection with a retryable error
//! rather than queueing them; and fetches a module it lacks from the caller over the same
//! stream, checking its SHA-256 before compiling it once.
//!
//! Layout: this module holds what both ends share (limits, errors, framing over a stream);
//! [`client`] calls other tiers; the server side is a trigger,
//! [`triggers::quic`](crate::triggers::quic).

pub mod client;

pub use client::{Client, Reply, Request};

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use fogline_core::wire::{self, Frame, WireError, WireErrorMsg};
use quinn::{Connection, RecvStream, SendStream, VarInt};

use crate::tls::TlsError;

/// How long a client connection may hear nothing before it is given up.
pub(crate) const CLIENT_IDLE: Duration = Duration::from_secs(6);

/// Stream error codes (QUIC application error codes).
pub(crate) const CODE_PROTOCOL: u32 = 1;
pub(crate) const CODE_STALLED: u32 = 2;
/// Connection closed by a stopping node after every stream it took was answered: a call
/// that got no answer never ran there.
pub(crate) const CODE_STOPPED: u32 = 3;
/// Connection closed by a stopping node whose calls outlasted its drain deadline.
pub(crate) const CODE_STOPPED_CUT: u32 = 4;
/// The peer's certificate is revoked: the reason names it (`certificate of dev-7 is revoked`).
pub(crate) const CODE_REVOKED: u32 = 5;

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

/// A QUIC server endpoint on `addr` with its own TLS settings (a bridge's federation
/// listener) and the node's stream limits.
pub fn server_endpoint(
    addr: SocketAddr,
    tls: rustls::ServerConfig,
    limits: &QuicLimits,
) -> Result<quinn::Endpoint, QuicError> {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| TlsError::Invalid(format!("QUIC server config: {e}")))?;
    let mut cfg = quinn::ServerConfig::with_crypto(std::sync::Arc::new(crypto));
    cfg.transport_config(std::sync::Arc::new(transport(
        limits.max_streams,
        limits.idle_timeout,
    )));
    quinn::Endpoint::server(cfg, addr).map_err(|source| QuicError::Bind { addr, source })
}

/// The certificate the peer of `conn` presented.
pub fn peer_leaf(conn: &Connection) -> Option<rustls::pki_types::CertificateDer<'static>> {
    conn.peer_identity()?
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?
        .into_iter()
        .next()
}

pub(crate) fn transport(limits_streams: u32, idle: Duration) -> quinn::TransportConfig {
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
pub(crate) fn name(f: &Frame) -> &'static str {
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
        Frame::NeedSecrets(_) => "NeedSecrets",
        Frame::TraceQuery(_) => "TraceQuery",
        Frame::TraceReply(_) => "TraceReply",
        Frame::Federate(_) => "Federate",
        Frame::Federated(_) => "Federated",
    }
}

// ---- frames over streams --------------------------------------------------------------

/// Reads frames from a stream, each under a deadline.
pub struct FrameReader {
    pub(crate) recv: RecvStream,
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
    pub(crate) async fn body(&mut self, len: u64, max: u64) -> Result<Bytes, QuicError> {
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
    pub(crate) async fn body_until_end(&mut self, max: u64) -> Result<Vec<u8>, QuicError> {
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

/// Whether `conn` was closed by a node that stopped after answering every stream it took.
pub(crate) fn stopped_cleanly(conn: &Connection) -> bool {
    matches!(
        conn.close_reason(),
        Some(quinn::ConnectionError::ApplicationClosed(c)) if c.error_code == VarInt::from_u32(CODE_STOPPED)
    )
}

/// The peer's (CA-verified) certificate.
pub(crate) fn peer_cert(conn: &Connection) -> Option<rustls::pki_types::CertificateDer<'static>> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    certs.first().cloned()
}

/// Why the peer closed `conn` because of our certificate (`certificate of dev-7 is
/// revoked`), when it did.
pub(crate) fn refused_reason(conn: &Connection) -> Option<String> {
    match conn.close_reason() {
        Some(quinn::ConnectionError::ApplicationClosed(c))
            if c.error_code == VarInt::from_u32(CODE_REVOKED) =>
        {
            Some(String::from_utf8_lossy(&c.reason).into_owned())
        }
        _ => None,
    }
}

/// Parses `quic://[MEMBER@]IP:PORT`: the member that must answer there (when named), and
/// its address.
pub fn parse_target(t: &str) -> Option<(Option<String>, SocketAddr)> {
    let rest = t.strip_prefix("quic://").unwrap_or(t);
    let (member, addr) = match rest.split_once('@') {
        Some((m, a)) if !m.is_empty() => (Some(m.to_string()), a),
        Some(_) => return None,
        None => (None, rest),
    };
    Some((member, addr.parse().ok()?))
}
