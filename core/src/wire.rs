//! The tier-to-tier wire protocol: versioned, length-prefixed frames, pure encode/decode.
//!
//! Every frame is an 8-byte header then a payload:
//!
//! ```text
//! 0      1      2      3      4              8
//! +------+------+------+------+--------------+-------------------+
//! | ver  | kind | flags| rsvd | payload len  | payload ...       |
//! +------+------+------+------+--------------+-------------------+
//!                              u32 big-endian, at most MAX_PAYLOAD
//! ```
//!
//! Control frames carry a postcard-encoded message; `Data` frames carry raw bytes, so bodies
//! larger than a frame stream as a sequence of `Data` frames closed by `End`. One QUIC
//! bidirectional stream carries one invocation:
//!
//! ```text
//! caller                                   callee
//! Invoke{function, digest, body_len, ..} ─►
//! Data* End                              ─►
//!                                        ◄─ NeedModule{digest}      (only if it lacks the module)
//! Data* End  (the module's bytes)        ─►
//!                                        ◄─ NeedSecrets{names}      (when it deploys a manifest naming secrets)
//! Data* End  (their values, postcard)    ─►
//!                                        ◄─ Result{status, ..} Data* End   or   Error{..}
//! ```
//!
//! [`Decoder`] works on a byte buffer the caller fills: `Ok(None)` means "need more bytes".
//! A header is checked before its payload is awaited, so an oversized or unknown frame is an
//! error at once and never an allocation.

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::manifest::FunctionManifest;

/// The protocol version this build speaks.
pub const VERSION: u8 = 1;
/// Header length in bytes.
pub const HEADER: usize = 8;
/// Largest payload of one frame.
pub const MAX_PAYLOAD: usize = 1 << 20;
/// Size of the `Data` chunks bodies are cut into.
pub const CHUNK: usize = 512 * 1024;
/// ALPN protocol id for QUIC.
pub const ALPN: &[u8] = b"fogline/1";

/// Frame kinds on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Invoke = 1,
    Data = 2,
    End = 3,
    Result = 4,
    Error = 5,
    NeedModule = 6,
    Status = 7,
    StatusReply = 8,
    Prepare = 9,
    NeedSecrets = 10,
    TraceQuery = 11,
    TraceReply = 12,
    Federate = 13,
    Federated = 14,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Invoke,
            2 => Kind::Data,
            3 => Kind::End,
            4 => Kind::Result,
            5 => Kind::Error,
            6 => Kind::NeedModule,
            7 => Kind::Status,
            8 => Kind::StatusReply,
            9 => Kind::Prepare,
            10 => Kind::NeedSecrets,
            11 => Kind::TraceQuery,
            12 => Kind::TraceReply,
            13 => Kind::Federate,
            14 => Kind::Federated,
            _ => return None,
        })
    }
}

/// A decoded frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Invoke(Invoke),
    Data(Vec<u8>),
    End,
    Result(InvokeResult),
    Error(WireErrorMsg),
    NeedModule(Digest),
    Status,
    StatusReply(Capacity),
    /// Load a function ahead of calls (fetching its module from the sender if needed);
    /// answered with `StatusReply` or `Error`. `body_len` is zero.
    Prepare(Invoke),
    /// The callee deploys a manifest naming these secrets: the caller answers with their
    /// values as a body ([`SecretValues`], postcard) closed by `End`. Only a caller that
    /// may send manifests is asked.
    NeedSecrets(Vec<String>),
    /// The spans this member (and the members it sent the call on to) holds of a trace;
    /// answered with `TraceReply`.
    TraceQuery(TraceQuery),
    TraceReply(TraceReply),
    /// Between the bridges of two peered clusters only: a join, a summary request, a
    /// leave; answered with `Federated` or `Error`.
    Federate(crate::federation::FedRequest),
    Federated(crate::federation::FedReply),
}

/// Asks a member for its spans of one trace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceQuery {
    pub trace_id: crate::trace::TraceId,
    /// How many further hops the member may ask in turn (0: only its own spans).
    pub depth: u8,
}

/// A member's spans of a trace, and the members it could not ask.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceReply {
    pub spans: Vec<crate::trace::Span>,
    pub unreachable: Vec<String>,
}

/// A function's secrets, as the caller sends them after `NeedSecrets`.
pub type SecretValues = Vec<(String, Vec<u8>)>;

/// Start of an invocation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Invoke {
    pub function: String,
    /// The function's manifest as the caller knows it, so a callee that has never seen the
    /// function can run it (fetching the module by `manifest.module`). Carried as JSON:
    /// the manifest's optional fields are omitted when empty, which a non-self-describing
    /// format cannot express.
    #[serde(with = "json_inside")]
    pub manifest: Option<FunctionManifest>,
    /// Length of the body that follows in `Data` frames.
    pub body_len: u64,
    /// The caller's `traceparent` (W3C Trace Context), so the callee's spans join its
    /// trace. Last, so a peer of an earlier release that does not send it is still read
    /// (and one that does not know it ignores it).
    pub trace: Option<String>,
    /// The call's idempotency key (an async call's `X-Idempotency-Key`, or without one
    /// `call ` and its call id): the callee runs the function once per (caller, function,
    /// key) within its window and answers a repeat with the stored result. Last, for the
    /// same reason as `trace`.
    pub key: Option<String>,
    /// The peer cluster to run it in: the callee (this cluster's bridge) relays it over its
    /// federation link. Last, for the same reason as `trace`.
    pub via: Option<String>,
}

/// `Invoke` as releases before federation sent it.
#[derive(Deserialize)]
struct InvokeV3 {
    function: String,
    #[serde(with = "json_inside")]
    manifest: Option<FunctionManifest>,
    body_len: u64,
    trace: Option<String>,
    key: Option<String>,
}

/// `Invoke` as releases before traces sent it.
#[derive(Deserialize)]
struct InvokeV1 {
    function: String,
    #[serde(with = "json_inside")]
    manifest: Option<FunctionManifest>,
    body_len: u64,
}

/// `Invoke` as releases before idempotency keys sent it.
#[derive(Deserialize)]
struct InvokeV2 {
    function: String,
    #[serde(with = "json_inside")]
    manifest: Option<FunctionManifest>,
    body_len: u64,
    trace: Option<String>,
}

fn invoke_payload(kind: Kind, p: &[u8]) -> Result<Invoke, WireError> {
    postcard::from_bytes::<Invoke>(p)
        .or_else(|e| {
            older(p, e, |v: InvokeV3| Invoke {
                function: v.function,
                manifest: v.manifest,
                body_len: v.body_len,
                trace: v.trace,
                key: v.key,
                via: None,
            })
        })
        .or_else(|e| {
            older(p, e, |v: InvokeV2| Invoke {
                function: v.function,
                manifest: v.manifest,
                body_len: v.body_len,
                trace: v.trace,
                key: None,
                via: None,
            })
        })
        .or_else(|e| {
            older(p, e, |v: InvokeV1| Invoke {
                function: v.function,
                manifest: v.manifest,
                body_len: v.body_len,
                trace: None,
                key: None,
                via: None,
            })
        })
        .map_err(|e| malformed(kind, e))
}

/// `p` read as `V`, a message as an earlier release sent it, brought up to date by `up`;
/// when it is not that either, `e`, the newest form's error (the one worth reporting).
fn older<'a, V: Deserialize<'a>, T>(
    p: &'a [u8],
    e: postcard::Error,
    up: impl FnOnce(V) -> T,
) -> Result<T, postcard::Error> {
    postcard::from_bytes::<V>(p).map(up).map_err(|_| e)
}

fn malformed(kind: Kind, e: postcard::Error) -> WireError {
    WireError::Malformed {
        kind,
        problem: e.to_string(),
    }
}

/// Outcome of an invocation; its body follows in `Data` frames.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvokeResult {
    pub status: u16,
    pub cold: bool,
    pub run_us: u64,
    pub node: String,
    pub body_len: u64,
    /// The answering member's calls in flight and queued as it answered, this one done: a
    /// router's fresher look at its load than the last report. Last (with `startup_us`),
    /// so a result from a release before them is still read (as `None`).
    pub load: Option<u32>,
    /// Of `run_us`, the time spent loading the function's code and instantiating it before
    /// it ran: what a router takes off a cold call's time to learn the function's own.
    pub startup_us: Option<u64>,
}

/// `InvokeResult` as releases before it carried the load and start-up time sent it.
#[derive(Deserialize)]
struct InvokeResultV1 {
    status: u16,
    cold: bool,
    run_us: u64,
    node: String,
    body_len: u64,
}

fn result_payload(kind: Kind, p: &[u8]) -> Result<InvokeResult, WireError> {
    postcard::from_bytes::<InvokeResult>(p)
        .or_else(|e| {
            older(p, e, |v: InvokeResultV1| InvokeResult {
                status: v.status,
                cold: v.cold,
                run_us: v.run_us,
                node: v.node,
                body_len: v.body_len,
                load: None,
                startup_us: None,
            })
        })
        .map_err(|e| malformed(kind, e))
}

/// An error, with the HTTP-like status it maps to and whether retrying can help.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireErrorMsg {
    pub status: u16,
    pub retryable: bool,
    pub message: String,
}

/// What a peer can take on (the bridge reports it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Capacity {
    pub node: String,
    pub tier: String,
    pub cores: u32,
    pub memory_bytes: u64,
    pub instance_slots: u32,
    pub instances_in_use: u32,
    pub functions: u32,
}

/// A byte sequence that is not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("unsupported protocol version {got}; this peer speaks version {VERSION}")]
    Version { got: u8 },
    #[error("unknown frame kind {0}")]
    Kind(u8),
    #[error("frame of {len} bytes exceeds the limit of {MAX_PAYLOAD} bytes")]
    TooLarge { len: usize },
    #[error("malformed {kind:?} frame: {problem}")]
    Malformed { kind: Kind, problem: String },
    #[error("reserved header bytes must be zero")]
    Reserved,
}

/// Checks a header; returns the kind and payload length.
pub fn parse_header(h: &[u8; HEADER]) -> Result<(Kind, usize), WireError> {
    if h[0] != VERSION {
        return Err(WireError::Version { got: h[0] });
    }
    let kind = Kind::from_u8(h[1]).ok_or(WireError::Kind(h[1]))?;
    if h[2] != 0 || h[3] != 0 {
        return Err(WireError::Reserved);
    }
    let len = u32::from_be_bytes([h[4], h[5], h[6], h[7]]) as usize;
    if len > MAX_PAYLOAD {
        return Err(WireError::TooLarge { len });
    }
    Ok((kind, len))
}

/// Decodes a frame's payload.
pub fn decode_payload(kind: Kind, payload: &[u8]) -> Result<Frame, WireError> {
    fn msg<'a, T: Deserialize<'a>>(kind: Kind, p: &'a [u8]) -> Result<T, WireError> {
        postcard::from_bytes(p).map_err(|e| malformed(kind, e))
    }
    let empty = |f: Frame| {
        if payload.is_empty() {
            Ok(f)
        } else {
            Err(WireError::Malformed {
                kind,
                problem: "payload must be empty".into(),
            })
        }
    };
    match kind {
        Kind::Invoke => Ok(Frame::Invoke(invoke_payload(kind, payload)?)),
        Kind::Data => Ok(Frame::Data(payload.to_vec())),
        Kind::End => empty(Frame::End),
        Kind::Result => Ok(Frame::Result(result_payload(kind, payload)?)),
        Kind::Error => Ok(Frame::Error(msg(kind, payload)?)),
        Kind::NeedModule => {
            let raw: [u8; 32] = payload.try_into().map_err(|_| WireError::Malformed {
                kind,
                problem: format!("digest must be 32 bytes, got {}", payload.len()),
            })?;
            Ok(Frame::NeedModule(Digest(raw)))
        }
        Kind::Status => empty(Frame::Status),
        Kind::StatusReply => Ok(Frame::StatusReply(msg(kind, payload)?)),
        Kind::Prepare => Ok(Frame::Prepare(invoke_payload(kind, payload)?)),
        Kind::NeedSecrets => Ok(Frame::NeedSecrets(msg(kind, payload)?)),
        Kind::TraceQuery => Ok(Frame::TraceQuery(msg(kind, payload)?)),
        Kind::TraceReply => Ok(Frame::TraceReply(msg(kind, payload)?)),
        Kind::Federate => Ok(Frame::Federate(msg(kind, payload)?)),
        Kind::Federated => Ok(Frame::Federated(msg(kind, payload)?)),
    }
}

/// Incremental decoding over a buffer the caller fills.
#[derive(Debug, Default)]
pub struct Decoder;

impl Decoder {
    /// Decodes one frame from the front of `buf`: `Ok(Some((frame, used)))`, `Ok(None)` when
    /// more bytes are needed, or the error that makes the stream unusable.
    pub fn decode(&self, buf: &[u8]) -> Result<Option<(Frame, usize)>, WireError> {
        let Some(h) = buf.get(..HEADER) else {
            return Ok(None);
        };
        let h: &[u8; HEADER] = h.try_into().map_err(|_| WireError::Reserved)?;
        let (kind, len) = parse_header(h)?;
        let Some(payload) = buf.get(HEADER..HEADER + len) else {
            return Ok(None);
        };
        Ok(Some((decode_payload(kind, payload)?, HEADER + len)))
    }
}

/// Appends a frame's bytes to `out`.
pub fn encode(frame: &Frame, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[VERSION, 0, 0, 0, 0, 0, 0, 0]);
    let kind = match frame {
        Frame::Invoke(m) => put(out, m, Kind::Invoke),
        Frame::Data(d) => {
            out.extend_from_slice(d);
            Kind::Data
        }
        Frame::End => Kind::End,
        Frame::Result(m) => put(out, m, Kind::Result),
        Frame::Error(m) => put(out, m, Kind::Error),
        Frame::NeedModule(d) => {
            out.extend_from_slice(&d.0);
            Kind::NeedModule
        }
        Frame::Status => Kind::Status,
        Frame::StatusReply(m) => put(out, m, Kind::StatusReply),
        Frame::Prepare(m) => put(out, m, Kind::Prepare),
        Frame::NeedSecrets(m) => put(out, m, Kind::NeedSecrets),
        Frame::TraceQuery(m) => put(out, m, Kind::TraceQuery),
        Frame::TraceReply(m) => put(out, m, Kind::TraceReply),
        Frame::Federate(m) => put(out, m, Kind::Federate),
        Frame::Federated(m) => put(out, m, Kind::Federated),
    };
    let len = (out.len() - start - HEADER) as u32;
    out[start + 1] = kind as u8;
    out[start + 4..start + 8].copy_from_slice(&len.to_be_bytes());
}

/// The header of a `Data` frame of `len` bytes, for writing a chunk without copying it.
pub fn data_header(len: usize) -> [u8; HEADER] {
    let l = (len as u32).to_be_bytes();
    [VERSION, Kind::Data as u8, 0, 0, l[0], l[1], l[2], l[3]]
}

fn put<T: Serialize>(out: &mut Vec<u8>, m: &T, kind: Kind) -> Kind {
    // postcard into a Vec cannot fail for these plain types.
    if let Ok(bytes) = postcard::to_allocvec(m) {
        out.extend_from_slice(&bytes);
    }
    kind
}

/// The decoder's contract on arbitrary input, checked by the fuzz target and by the corpus
/// replay test: it never panics, never claims more bytes than it was given, and whatever it
/// decodes encodes back to bytes that decode to the same frame.
#[doc(hidden)]
pub fn check_decoder(data: &[u8]) {
    let mut buf = data;
    while let Ok(Some((frame, used))) = Decoder.decode(buf) {
        assert!(used <= buf.len() && used >= HEADER);
        let mut again = Vec::new();
        encode(&frame, &mut again);
        match Decoder.decode(&again) {
            Ok(Some((frame2, n))) => assert!(frame2 == frame && n == again.len()),
            other => panic!("re-encoded frame does not decode: {other:?}"),
        }
        buf = &buf[used..];
    }
}

mod json_inside {
    use super::FunctionManifest;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(m: &Option<FunctionManifest>, s: S) -> Result<S::Ok, S::Error> {
        let json = m
            .as_ref()
            .map(|m| serde_json::to_string(m).map_err(serde::ser::Error::custom))
            .transpose()?;
        json.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<FunctionManifest>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(j) => FunctionManifest::from_json(j.as_bytes())
                .map(Some)
                .map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn roundtrip(f: Frame) {
        let mut buf = Vec::new();
        encode(&f, &mut buf);
        let (g, used) = Decoder.decode(&buf).unwrap().unwrap();
        assert_eq!(used, buf.len());
        assert_eq!(g, f);
        // Every proper prefix asks for more bytes rather than failing or guessing.
        for cut in 0..buf.len() {
            assert_eq!(Decoder.decode(&buf[..cut]), Ok(None), "prefix {cut}");
        }
    }

    #[test]
    fn every_kind_round_trips() {
        roundtrip(Frame::Invoke(Invoke {
            function: "hello".into(),
            manifest: Some(FunctionManifest::wasm("hello", Digest::of(b"m"))),
            body_len: 5,
            trace: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
            key: Some("order-17".into()),
            via: Some("cluster-b".into()),
        }));
        roundtrip(Frame::Federate(crate::federation::FedRequest::Join {
            secret: vec![1; 32],
            name: "cluster-a".into(),
            ca: vec![2; 300],
        }));
        roundtrip(Frame::Federate(crate::federation::FedRequest::Summary));
        roundtrip(Frame::Federated(crate::federation::FedReply::Summary(
            crate::federation::Summary {
                members: 3,
                cores: 5,
                in_flight: 2,
                speed: 1.5,
                warm: vec!["hello".into()],
                service_ms: vec![("hello".into(), 0.8)],
                placement_ms: 0.4,
                refused: vec!["team".into()],
            },
        )));
        roundtrip(Frame::Federated(crate::federation::FedReply::Joined {
            name: "cluster-b".into(),
            ca: vec![3; 10],
            share_pct: 90,
        }));
        let trace_id = crate::trace::TraceId([7; 16]);
        roundtrip(Frame::TraceQuery(TraceQuery { trace_id, depth: 2 }));
        roundtrip(Frame::TraceReply(TraceReply {
            spans: vec![crate::trace::Span {
                trace_id,
                span_id: crate::trace::SpanId([1; 8]),
                parent_id: None,
                name: "run".into(),
                member: "edge-1".into(),
                start_us: 1,
                duration_us: 2,
                attrs: vec![("function".into(), "hello".into())],
            }],
            unreachable: vec!["edge-2".into()],
        }));
        roundtrip(Frame::Data(b"world".to_vec()));
        roundtrip(Frame::End);
        roundtrip(Frame::Result(InvokeResult {
            status: 200,
            cold: true,
            run_us: 12,
            node: "n".into(),
            body_len: 3,
            load: Some(7),
            startup_us: Some(40),
        }));
        roundtrip(Frame::Error(WireErrorMsg {
            status: 429,
            retryable: true,
            message: "busy".into(),
        }));
        roundtrip(Frame::NeedModule(Digest::of(b"m")));
        roundtrip(Frame::NeedSecrets(vec![
            "db-password".into(),
            "api-key".into(),
        ]));
        roundtrip(Frame::Status);
        roundtrip(Frame::StatusReply(Capacity {
            node: "cloud".into(),
            tier: "cloud".into(),
            cores: 2,
            memory_bytes: 1 << 30,
            instance_slots: 256,
            instances_in_use: 1,
            functions: 3,
        }));
    }

    #[test]
    fn an_invoke_from_a_release_before_traces_is_read() {
        #[derive(Serialize)]
        struct Old {
            function: String,
            manifest: Option<String>,
            body_len: u64,
        }
        let payload = postcard::to_allocvec(&Old {
            function: "hello".into(),
            manifest: None,
            body_len: 3,
        })
        .unwrap();
        let mut buf = vec![VERSION, Kind::Invoke as u8, 0, 0];
        buf.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        buf.extend_from_slice(&payload);
        let (f, _) = Decoder.decode(&buf).unwrap().unwrap();
        assert_eq!(
            f,
            Frame::Invoke(Invoke {
                function: "hello".into(),
                manifest: None,
                body_len: 3,
                trace: None,
                key: None,
                via: None,
            })
        );
    }

    /// Decodes one frame of `kind` around `payload`.
    fn one_frame(kind: Kind, payload: &[u8]) -> Frame {
        let bytes = [
            &[VERSION, kind as u8, 0, 0][..],
            &(payload.len() as u32).to_be_bytes(),
            payload,
        ]
        .concat();
        Decoder.decode(&bytes).unwrap().unwrap().0
    }

    #[test]
    fn an_invoke_from_a_release_before_federation_is_read() {
        #[derive(Serialize)]
        struct V3 {
            function: String,
            manifest: Option<String>,
            body_len: u64,
            trace: Option<String>,
            key: Option<String>,
        }
        let payload = postcard::to_allocvec(&V3 {
            function: "hello".into(),
            manifest: None,
            body_len: 3,
            trace: None,
            key: Some("k".into()),
        })
        .unwrap();
        let f = one_frame(Kind::Invoke, &payload);
        let Frame::Invoke(inv) = f else {
            panic!("{f:?}")
        };
        assert_eq!((inv.key.as_deref(), inv.via), (Some("k"), None));
    }

    #[test]
    fn a_result_from_a_release_before_it_carried_the_load_is_read() {
        #[derive(Serialize)]
        struct V1 {
            status: u16,
            cold: bool,
            run_us: u64,
            node: String,
            body_len: u64,
        }
        let payload = postcard::to_allocvec(&V1 {
            status: 200,
            cold: false,
            run_us: 5,
            node: "edge-1".into(),
            body_len: 2,
        })
        .unwrap();
        let f = one_frame(Kind::Result, &payload);
        let Frame::Result(r) = f else { panic!("{f:?}") };
        assert_eq!(
            (r.node.as_str(), r.body_len, r.load, r.startup_us),
            ("edge-1", 2, None, None)
        );
    }

    #[test]
    fn oversized_frames_fail_on_the_header_alone() {
        let mut h = data_header(0);
        h[4..8].copy_from_slice(&((MAX_PAYLOAD + 1) as u32).to_be_bytes());
        assert_eq!(
            Decoder.decode(&h),
            Err(WireError::TooLarge {
                len: MAX_PAYLOAD + 1
            })
        );
    }

    #[test]
    fn unknown_versions_and_kinds_are_named() {
        let e = Decoder.decode(&[9, 2, 0, 0, 0, 0, 0, 0]).unwrap_err();
        assert!(e.to_string().contains("version 9"), "{e}");
        assert_eq!(
            Decoder.decode(&[VERSION, 99, 0, 0, 0, 0, 0, 0]),
            Err(WireError::Kind(99))
        );
        assert_eq!(
            Decoder.decode(&[VERSION, 3, 0, 1, 0, 0, 0, 0]),
            Err(WireError::Reserved)
        );
        assert!(matches!(
            Decoder.decode(&[VERSION, 3, 0, 0, 0, 0, 0, 1, 0]),
            Err(WireError::Malformed { .. })
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Decoder.decode(&bytes);
        }

        #[test]
        fn data_frames_round_trip(data in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let mut buf = Vec::new();
            encode(&Frame::Data(data.clone()), &mut buf);
            prop_assert_eq!(&buf[..HEADER], &data_header(data.len())[..]);
            let (f, used) = Decoder.decode(&buf).unwrap().unwrap();
            prop_assert_eq!(used, buf.len());
            prop_assert_eq!(f, Frame::Data(data));
        }
    }
}
