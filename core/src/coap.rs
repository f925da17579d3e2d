//! CoAP (RFC 7252) server exchanges with block-wise transfer (RFC 7959), as a state machine
//! with no sockets and no clock: the driver hands it each datagram with the time, runs the
//! calls it asks for, and sends what it returns. Packets are encoded and decoded by
//! `coap-lite`; what is ours (exchanges, duplicates, blocks, retransmission) is here, and fuzzed.
//!
//! ```text
//!  datagram ─► receive(now, peer, bytes) ─► Transmit (an answer now: block, error, duplicate)
//!                                        └─► Invoke { id, function, body } ─► the node runs it
//!  still running after ack_after ─► acknowledge(id) ─► empty ACK (the answer comes separately)
//!  finished ─► complete(now, id, Reply) ─► piggybacked ACK, or a separate CON/NON response
//!  timer ─► handle_timeout(now) ─► retransmitted separate responses; old state forgotten
//! ```
//!
//! One resource: `POST /function/NAME` runs NAME with the payload as its body. A
//! confirmable request seen again (same peer and message id) gets the same answer and the
//! function does not run twice. Request bodies arrive in Block1 blocks up to `max_body`;
//! answers larger than a block leave in Block2 blocks that the client fetches one by one.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::Arc;

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};

/// How long a peer's message id is remembered for duplicate detection (RFC 7252's
/// EXCHANGE_LIFETIME, 247 s), bounded by [`Settings::remembered`] entries.
pub const EXCHANGE_LIFETIME_MS: u64 = 247_000;
/// A separate confirmable response is sent again after this, doubling, up to
/// [`MAX_RETRANSMIT`] times (RFC 7252 ACK_TIMEOUT, without the random factor).
pub const ACK_TIMEOUT_MS: u64 = 2_000;
pub const MAX_RETRANSMIT: u32 = 4;
/// A block-wise transfer left unfinished this long is dropped.
pub const TRANSFER_LIFETIME_MS: u64 = 60_000;

/// Content-Format numbers the driver uses (RFC 7252 §12.3).
pub const TEXT_PLAIN: u16 = 0;
pub const OCTET_STREAM: u16 = 42;

/// Limits and sizes, from the node's config.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Largest request body (`http.max_body`); larger ones get 4.13.
    pub max_body: usize,
    /// Largest block of a response (16..=1024, a power of two).
    pub block_size: usize,
    /// Requests running at once; more get 5.03.
    pub max_exchanges: usize,
    /// Message ids remembered for duplicate detection.
    pub remembered: usize,
    /// Bytes held at once in unfinished block-wise uploads and downloads.
    pub transfer_bytes: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_body: 8 << 20,
            block_size: 1024,
            max_exchanges: 1024,
            remembered: 4096,
            transfer_bytes: 64 << 20,
        }
    }
}

/// Identifies a call the driver runs, until it calls [`Server::complete`].
pub type ExchangeId = u64;

/// What the driver does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<P> {
    /// Send this datagram to that peer.
    Transmit(P, Vec<u8>),
    /// Run `function` with `body`, then call [`Server::complete`] with `id`.
    Invoke {
        id: ExchangeId,
        function: String,
        body: Vec<u8>,
        /// The request's Content-Format, and the one it accepts back (CoAP's Accept).
        content_format: Option<u16>,
        accept: Option<u16>,
        /// The request's [`TRACEPARENT`] option.
        trace: Option<String>,
        /// The request's [`IDEMPOTENCY_KEY`] option (its bytes as text, unchecked).
        key: Option<String>,
    },
}

/// Why a datagram was dropped without an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("not a CoAP message: {0}")]
    Decode(String),
    #[error("CoAP version {0} (only version 1 exists)")]
    Version(u8),
    #[error("a {0} message must be empty")]
    NotEmpty(&'static str),
}

/// The outcome of a call, as CoAP answers it.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub code: ResponseType,
    pub payload: Vec<u8>,
    pub content_format: Option<u16>,
    /// Seconds a client should wait before trying again (with 5.03).
    pub max_age: Option<u32>,
    /// The call's trace and id ([`TRACEPARENT`], [`CALL_ID`]), when it ran.
    pub trace: Option<(String, String)>,
}

/// Option carrying a W3C `traceparent` in its text form, both ways (from the experimental
/// range, RFC 7252 §12.2; elective and safe to forward, so a client or proxy that does not
/// know it ignores it).
pub const TRACEPARENT: u16 = 65000;
/// Option carrying the call's id in the response (the HTTP gateway's `X-Call-Id`).
pub const CALL_ID: u16 = 65004;
/// Option carrying an idempotency key in a request (the HTTP gateway's
/// `X-Idempotency-Key`): the function runs once per key within the idempotency window.
/// Elective and safe to forward, like [`TRACEPARENT`].
pub const IDEMPOTENCY_KEY: u16 = 65008;

impl Reply {
    /// 2.05 Content with the function's output.
    pub fn content(payload: Vec<u8>, content_format: Option<u16>) -> Reply {
        Reply {
            code: ResponseType::Content,
            payload,
            content_format,
            max_age: None,
            trace: None,
        }
    }

    /// The CoAP answer for a call that failed with an HTTP `status` and a message (the
    /// diagnostic payload). Overload (429, and 503) is 5.03 with Max-Age, as RFC 7252 asks.
    pub fn error(status: u16, message: &str) -> Reply {
        let code = match status {
            400 | 422 => ResponseType::BadRequest,
            401 => ResponseType::Unauthorized,
            403 => ResponseType::Forbidden,
            404 => ResponseType::NotFound,
            405 => ResponseType::MethodNotAllowed,
            413 => ResponseType::RequestEntityTooLarge,
            429 | 503 => ResponseType::ServiceUnavailable,
            502 => ResponseType::BadGateway,
            504 => ResponseType::GatewayTimeout,
            501 => ResponseType::NotImplemented,
            400..=499 => ResponseType::BadRequest,
            _ => ResponseType::InternalServerError,
        };
        Reply {
            code,
            payload: message.as_bytes().to_vec(),
            content_format: None,
            max_age: (code == ResponseType::ServiceUnavailable).then_some(1),
            trace: None,
        }
    }

    fn diagnostic(code: ResponseType, message: impl Into<String>) -> Reply {
        Reply {
            code,
            payload: message.into().into_bytes(),
            content_format: None,
            max_age: None,
            trace: None,
        }
    }
}

/// The server's state: exchanges running, message ids seen, block-wise transfers.
#[derive(Debug)]
pub struct Server<P> {
    settings: Settings,
    /// Message ids seen per peer, and what was answered (for duplicates).
    seen: HashMap<(P, u16), Seen>,
    seen_order: VecDeque<(u64, (P, u16))>,
    running: HashMap<ExchangeId, Running<P>>,
    uploads: HashMap<(P, String), Upload>,
    downloads: HashMap<(P, String), Download>,
    transfer_bytes: usize,
    /// Separate confirmable responses not yet acknowledged.
    unacked: HashMap<(P, u16), Unacked>,
    next_exchange: ExchangeId,
    next_mid: u16,
}

#[derive(Debug)]
enum Seen {
    /// Still running; `acked` once an empty ACK went out.
    Running { acked: bool, empty_ack: Vec<u8> },
    /// Answered with these bytes (empty: nothing to repeat, e.g. a NON).
    Answered(Vec<u8>),
}

#[derive(Debug)]
struct Running<P> {
    peer: P,
    mid: u16,
    confirmable: bool,
    acked: bool,
    token: Vec<u8>,
    /// The resource, which keys block-wise transfers.
    path: String,
    /// The last Block1 option of the request, echoed in the answer.
    block1: Option<Block>,
    /// The block size the client asked answers in, if smaller than ours.
    block2_size: Option<usize>,
}

#[derive(Debug)]
struct Upload {
    body: Vec<u8>,
    next: u32,
    size: usize,
    expires: u64,
}

#[derive(Debug)]
struct Download {
    reply: Arc<Reply>,
    expires: u64,
}

#[derive(Debug)]
struct Unacked {
    bytes: Vec<u8>,
    next_at: u64,
    sent: u32,
}

/// A Block1 or Block2 option value (RFC 7959 §2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    pub num: u32,
    pub more: bool,
    /// SZX: the block is 2^(szx + 4) bytes.
    pub szx: u8,
}

impl Block {
    pub fn size(self) -> usize {
        1 << (self.szx + 4)
    }

    /// Decodes an option value; `None` for a value longer than 3 bytes or SZX 7 (BERT,
    /// which CoAP over UDP does not use).
    pub fn decode(v: &[u8]) -> Option<Block> {
        if v.len() > 3 {
            return None;
        }
        let n = v.iter().fold(0u32, |a, b| (a << 8) | u32::from(*b));
        let szx = (n & 7) as u8;
        (szx != 7).then_some(Block {
            num: n >> 4,
            more: n & 8 != 0,
            szx,
        })
    }

    pub fn encode(self) -> Vec<u8> {
        uint((self.num << 4) | (u32::from(self.more) << 3) | u32::from(self.szx))
    }

    fn szx_of(size: usize) -> u8 {
        (size.clamp(16, 1024).trailing_zeros() - 4) as u8
    }
}

/// A CoAP uint option value: big-endian without leading zero bytes.
fn uint(n: u32) -> Vec<u8> {
    let b = n.to_be_bytes();
    let skip = b.iter().take_while(|x| **x == 0).count();
    b[skip..].to_vec()
}

fn read_uint(v: &[u8]) -> Option<u32> {
    (v.len() <= 4).then(|| v.iter().fold(0u32, |a, b| (a << 8) | u32::from(*b)))
}

/// Options a request may carry that this server understands (or safely ignores).
const KNOWN_CRITICAL: [u16; 9] = [1, 3, 5, 7, 11, 15, 17, 23, 27];

impl<P: Copy + Eq + Hash + std::fmt::Debug> Server<P> {
    pub fn new(settings: Settings) -> Server<P> {
        Server {
            settings,
            seen: HashMap::new(),
            seen_order: VecDeque::new(),
            running: HashMap::new(),
            uploads: HashMap::new(),
            downloads: HashMap::new(),
            transfer_bytes: 0,
            unacked: HashMap::new(),
            next_exchange: 1,
            // Any start will do; a driver may seed it so that restarts do not repeat ids.
            next_mid: 0x4000,
        }
    }

    /// Starts message ids at `mid` (a random one, so a restarted server does not reuse the
    /// ids of its last run).
    pub fn with_first_message_id(mut self, mid: u16) -> Self {
        self.next_mid = mid;
        self
    }

    /// Calls running now.
    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// Handles one datagram from `peer`.
    pub fn receive(
        &mut self,
        now: u64,
        peer: P,
        datagram: &[u8],
    ) -> Result<Vec<Event<P>>, Malformed> {
        let packet = Packet::from_bytes(datagram).map_err(|e| Malformed::Decode(e.to_string()))?;
        let version = packet.header.get_version();
        if version != 1 {
            return Err(Malformed::Version(version));
        }
        let mid = packet.header.message_id;
        match (packet.header.get_type(), packet.header.code) {
            (MessageType::Acknowledgement | MessageType::Reset, MessageClass::Empty) => {
                self.unacked.remove(&(peer, mid));
                Ok(Vec::new())
            }
            (MessageType::Acknowledgement, _) => Err(Malformed::NotEmpty("ACK of ours")),
            (MessageType::Reset, _) => Err(Malformed::NotEmpty("RST")),
            // CoAP ping: an empty confirmable message is answered with a reset.
            (MessageType::Confirmable, MessageClass::Empty) => {
                Ok(vec![Event::Transmit(peer, empty(MessageType::Reset, mid))])
            }
            (MessageType::NonConfirmable, MessageClass::Empty) => Ok(Vec::new()),
            (t, MessageClass::Request(method)) => {
                Ok(self.request(now, peer, t == MessageType::Confirmable, method, &packet))
            }
            // Responses and reserved codes are not for a server: ignored, as RFC 7252 §4.2
            // asks of messages a receiver cannot process (a CON one is rejected with RST).
            (MessageType::Confirmable, _) => {
                Ok(vec![Event::Transmit(peer, empty(MessageType::Reset, mid))])
            }
            _ => Ok(Vec::new()),
        }
    }

    fn request(
        &mut self,
        now: u64,
        peer: P,
        confirmable: bool,
        method: RequestType,
        packet: &Packet,
    ) -> Vec<Event<P>> {
        let mid = packet.header.message_id;
        self.forget_old(now);
        // A message id seen again is a retransmission: the same answer, nothing run twice.
        if let Some(seen) = self.seen.get_mut(&(peer, mid)) {
            return match seen {
                Seen::Answered(bytes) if confirmable && !bytes.is_empty() => {
                    vec![Event::Transmit(peer, bytes.clone())]
                }
                Seen::Running { acked, empty_ack } if confirmable => {
                    *acked = true;
                    let ack = empty_ack.clone();
                    for r in self.running.values_mut() {
                        if r.peer == peer && r.mid == mid {
                            r.acked = true;
                        }
                    }
                    vec![Event::Transmit(peer, ack)]
                }
                _ => Vec::new(),
            };
        }
        let mut ex = Running {
            peer,
            mid,
            confirmable,
            acked: false,
            token: packet.get_token().to_vec(),
            path: String::new(),
            block1: None,
            block2_size: None,
        };
        self.remember(now, peer, mid);
        match self.parse(now, packet, &mut ex, method) {
            Parsed::Answer(reply) => self.answer(now, ex, reply),
            Parsed::Continue(block) => {
                let mut reply = Reply::diagnostic(ResponseType::Continue, "");
                reply.payload.clear();
                ex.block1 = Some(block);
                self.answer(now, ex, reply)
            }
            Parsed::Next(num) => {
                let key = (peer, ex.path.clone());
                match self.downloads.get(&key) {
                    Some(d) => {
                        let reply = d.reply.clone();
                        self.answer_block(now, ex, reply, num)
                    }
                    None => self.answer(
                        now,
                        ex,
                        Reply::diagnostic(
                            ResponseType::BadRequest,
                            format!("block {num} asked of {}, but no answer is being sent in blocks (it expired or never existed); send the request again", ex_path(&key.1)),
                        ),
                    ),
                }
            }
            Parsed::Run {
                function,
                body,
                content_format,
                accept,
                trace,
                key,
            } => {
                if self.running.len() >= self.settings.max_exchanges {
                    let reply = Reply::error(
                        503,
                        &format!(
                            "more than {} CoAP requests running; retry shortly",
                            self.settings.max_exchanges
                        ),
                    );
                    return self.answer(now, ex, reply);
                }
                let id = self.next_exchange;
                self.next_exchange += 1;
                let empty_ack = empty(MessageType::Acknowledgement, mid);
                self.seen.insert(
                    (peer, mid),
                    Seen::Running {
                        acked: false,
                        empty_ack,
                    },
                );
                self.running.insert(id, ex);
                vec![Event::Invoke {
                    id,
                    function,
                    body,
                    content_format,
                    accept,
                    trace,
                    key,
                }]
            }
        }
    }

    /// Reads what a request asks for; `ex` learns its path and blocks.
    fn parse(&mut self, now: u64, p: &Packet, ex: &mut Running<P>, method: RequestType) -> Parsed {
        let bad = |m: String| Parsed::Answer(Reply::diagnostic(ResponseType::BadRequest, m));
        for (number, _) in p.options() {
            if *number == 35 || *number == 39 {
                return Parsed::Answer(Reply::diagnostic(
                    ResponseType::ProxyingNotSupported,
                    "this server is not a proxy",
                ));
            }
            if number % 2 == 1 && !KNOWN_CRITICAL.contains(number) {
                return Parsed::Answer(Reply::diagnostic(
                    ResponseType::BadOption,
                    format!("critical option {number} is not understood here"),
                ));
            }
        }
        let mut segments = Vec::new();
        if let Some(list) = p.get_option(CoapOption::UriPath) {
            for s in list {
                match std::str::from_utf8(s) {
                    Ok(s) => segments.push(s),
                    Err(_) => return bad("a Uri-Path segment is not UTF-8".into()),
                }
            }
        }
        ex.path = segments.join("/");
        let function = match segments.as_slice() {
            ["function", name] => name.to_string(),
            _ => {
                return Parsed::Answer(Reply::diagnostic(
                    ResponseType::NotFound,
                    format!(
                        "no resource at /{}; functions are invoked with POST /function/NAME",
                        ex.path
                    ),
                ))
            }
        };
        if method != RequestType::Post {
            return Parsed::Answer(Reply::diagnostic(
                ResponseType::MethodNotAllowed,
                format!(
                    "{} is not allowed on /{}: invoke with POST",
                    format!("{method:?}").to_uppercase(),
                    ex.path
                ),
            ));
        }
        let block_opt = |o| match p.get_first_option(o) {
            None => Ok(None),
            Some(v) => Block::decode(v).map(Some).ok_or(()),
        };
        let Ok(block2) = block_opt(CoapOption::Block2) else {
            return bad("the Block2 option is malformed (too long, or SZX 7)".into());
        };
        let Ok(block1) = block_opt(CoapOption::Block1) else {
            return bad("the Block1 option is malformed (too long, or SZX 7)".into());
        };
        if let Some(b2) = block2 {
            ex.block2_size = Some(b2.size());
            if b2.num > 0 {
                return Parsed::Next(b2.num);
            }
        }
        let max = self.settings.max_body;
        let too_large = |size: usize| {
            Parsed::Answer(Reply::diagnostic(
                ResponseType::RequestEntityTooLarge,
                format!("request body of {size} bytes exceeds this node's limit of {max} bytes"),
            ))
        };
        if let Some(size1) = p
            .get_first_option(CoapOption::Size1)
            .and_then(|v| read_uint(v))
        {
            if size1 as usize > max {
                return too_large(size1 as usize);
            }
        }
        let content_format = p
            .get_first_option(CoapOption::ContentFormat)
            .and_then(|v| read_uint(v))
            .and_then(|v| u16::try_from(v).ok());
        let accept = p
            .get_first_option(CoapOption::Accept)
            .and_then(|v| read_uint(v))
            .and_then(|v| u16::try_from(v).ok());
        let body = match block1 {
            None => {
                if p.payload.len() > max {
                    return too_large(p.payload.len());
                }
                p.payload.clone()
            }
            Some(b) => {
                let key = (ex.peer, ex.path.clone());
                let size = b.size().min(self.settings.block_size);
                if b.num == 0 {
                    if let Some(old) = self.uploads.remove(&key) {
                        self.transfer_bytes -= old.body.len();
                    }
                    self.uploads.insert(
                        key.clone(),
                        Upload {
                            body: Vec::new(),
                            next: 0,
                            size: b.size(),
                            expires: now + TRANSFER_LIFETIME_MS,
                        },
                    );
                }
                let Some(up) = self.uploads.get_mut(&key) else {
                    return Parsed::Answer(Reply::diagnostic(
                        ResponseType::RequestEntityIncomplete,
                        format!(
                            "block {} of a body whose first block was not received (or expired)",
                            b.num
                        ),
                    ));
                };
                let offset = b.num as usize * b.size();
                if offset != up.body.len() || (b.num > 0 && b.num != up.next) {
                    let expected = up.next;
                    if let Some(old) = self.uploads.remove(&key) {
                        self.transfer_bytes -= old.body.len();
                    }
                    return Parsed::Answer(Reply::diagnostic(
                        ResponseType::RequestEntityIncomplete,
                        format!("block {} came where block {expected} was expected; send the body again from block 0", b.num),
                    ));
                }
                if b.more && p.payload.len() != b.size() {
                    return bad(format!(
                        "block {} carries {} bytes, but its Block1 option says {}",
                        b.num,
                        p.payload.len(),
                        b.size()
                    ));
                }
                let total = up.body.len() + p.payload.len();
                if total > max {
                    if let Some(old) = self.uploads.remove(&key) {
                        self.transfer_bytes -= old.body.len();
                    }
                    return too_large(total);
                }
                if self.transfer_bytes + p.payload.len() > self.settings.transfer_bytes {
                    let mut r = Reply::error(
                        503,
                        "too many block-wise transfers in progress; retry shortly",
                    );
                    r.max_age = Some(2);
                    return Parsed::Answer(r);
                }
                up.body.extend_from_slice(&p.payload);
                up.next = b.num + 1;
                up.size = b.size();
                up.expires = now + TRANSFER_LIFETIME_MS;
                self.transfer_bytes += p.payload.len();
                if b.more {
                    // Ask for blocks no larger than ours.
                    return Parsed::Continue(Block {
                        num: b.num,
                        more: true,
                        szx: Block::szx_of(size),
                    });
                }
                let up = self
                    .uploads
                    .remove(&key)
                    .map(|u| u.body)
                    .unwrap_or_default();
                self.transfer_bytes -= up.len();
                ex.block1 = Some(b);
                up
            }
        };
        let trace = p
            .get_first_option(CoapOption::Unknown(TRACEPARENT))
            .and_then(|v| std::str::from_utf8(v).ok())
            .map(str::to_string);
        let key = p
            .get_first_option(CoapOption::Unknown(IDEMPOTENCY_KEY))
            .map(|v| String::from_utf8_lossy(v).into_owned());
        Parsed::Run {
            function,
            body,
            content_format,
            accept,
            trace,
            key,
        }
    }

    /// The call `id` has run past `ack_after`: acknowledge its confirmable request now, so
    /// the client stops retransmitting; the answer follows as a separate response.
    pub fn acknowledge(&mut self, id: ExchangeId) -> Option<Event<P>> {
        let ex = self.running.get_mut(&id)?;
        if !ex.confirmable || ex.acked {
            return None;
        }
        ex.acked = true;
        let (peer, mid) = (ex.peer, ex.mid);
        if let Some(Seen::Running { acked, .. }) = self.seen.get_mut(&(peer, mid)) {
            *acked = true;
        }
        Some(Event::Transmit(
            peer,
            empty(MessageType::Acknowledgement, mid),
        ))
    }

    /// The call `id` finished: its answer.
    pub fn complete(&mut self, now: u64, id: ExchangeId, reply: Reply) -> Vec<Event<P>> {
        match self.running.remove(&id) {
            Some(ex) => self.answer(now, ex, reply),
            None => Vec::new(),
        }
    }

    /// Sends again the separate responses not yet acknowledged, and forgets old state.
    /// Call it at [`poll_timeout`](Self::poll_timeout).
    pub fn handle_timeout(&mut self, now: u64) -> Vec<Event<P>> {
        let mut out = Vec::new();
        self.unacked.retain(|(peer, _), u| {
            if u.next_at > now {
                return true;
            }
            if u.sent > MAX_RETRANSMIT {
                return false;
            }
            out.push(Event::Transmit(*peer, u.bytes.clone()));
            u.next_at = now + (ACK_TIMEOUT_MS << u.sent.min(8));
            u.sent += 1;
            true
        });
        self.forget_old(now);
        out
    }

    /// When [`handle_timeout`](Self::handle_timeout) has something to do next.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.unacked.values().map(|u| u.next_at).min()
    }

    fn answer(&mut self, now: u64, ex: Running<P>, reply: Reply) -> Vec<Event<P>> {
        self.answer_block(now, ex, Arc::new(reply), 0)
    }

    /// Answers with block `num` of `reply` (all of it when it fits one block).
    fn answer_block(
        &mut self,
        now: u64,
        ex: Running<P>,
        reply: Arc<Reply>,
        num: u32,
    ) -> Vec<Event<P>> {
        let size = ex
            .block2_size
            .unwrap_or(usize::MAX)
            .min(self.settings.block_size);
        let mut packet = Packet::new();
        packet.header.set_version(1);
        packet.header.code = MessageClass::Response(reply.code);
        packet.set_token(ex.token.clone());
        if let Some(cf) = reply.content_format {
            packet.add_option(CoapOption::ContentFormat, uint(u32::from(cf)));
        }
        if let Some(age) = reply.max_age {
            packet.add_option(CoapOption::MaxAge, uint(age));
        }
        if let Some((parent, call)) = &reply.trace {
            packet.add_option(CoapOption::Unknown(TRACEPARENT), parent.as_bytes().to_vec());
            packet.add_option(CoapOption::Unknown(CALL_ID), call.as_bytes().to_vec());
        }
        if let Some(b1) = ex.block1 {
            packet.add_option(CoapOption::Block1, b1.encode());
        }
        let key = (ex.peer, ex.path.clone());
        if reply.payload.len() > size || num > 0 {
            let start = num as usize * size;
            if start >= reply.payload.len() && num > 0 {
                packet.header.code = MessageClass::Response(ResponseType::BadOption);
                packet.payload = format!(
                    "block {num} is past the end of a {}-byte answer",
                    reply.payload.len()
                )
                .into_bytes();
            } else {
                let end = (start + size).min(reply.payload.len());
                let more = end < reply.payload.len();
                packet.add_option(
                    CoapOption::Block2,
                    Block {
                        num,
                        more,
                        szx: Block::szx_of(size),
                    }
                    .encode(),
                );
                if num == 0 {
                    packet.add_option(CoapOption::Size2, uint(reply.payload.len() as u32));
                }
                packet.payload = reply.payload[start..end].to_vec();
                if num == 0 && more {
                    self.keep_download(now, key, reply);
                } else if !more {
                    if let Some(d) = self.downloads.remove(&key) {
                        self.transfer_bytes -= d.reply.payload.len();
                    }
                } else if let Some(d) = self.downloads.get_mut(&key) {
                    d.expires = now + TRANSFER_LIFETIME_MS;
                }
            }
        } else {
            packet.payload = reply.payload.clone();
        }
        let separate = ex.confirmable && ex.acked;
        let (kind, mid) = match (ex.confirmable, separate) {
            (true, false) => (MessageType::Acknowledgement, ex.mid),
            (true, true) => (MessageType::Confirmable, self.new_mid()),
            (false, _) => (MessageType::NonConfirmable, self.new_mid()),
        };
        packet.header.set_type(kind);
        packet.header.message_id = mid;
        // Our own packets: a failure here is a bug, answered as such rather than a panic.
        let bytes = packet
            .to_bytes_unlimited()
            .unwrap_or_else(|_| empty(MessageType::Reset, ex.mid));
        let remembered = match (ex.confirmable, separate) {
            (true, false) => bytes.clone(),
            (true, true) => empty(MessageType::Acknowledgement, ex.mid),
            (false, _) => Vec::new(),
        };
        if let Some(s) = self.seen.get_mut(&(ex.peer, ex.mid)) {
            if matches!(s, Seen::Running { .. }) {
                // Remembered from now: the eviction order may have passed it while it ran.
                self.seen_order
                    .push_back((now + EXCHANGE_LIFETIME_MS, (ex.peer, ex.mid)));
            }
            *s = Seen::Answered(remembered);
        }
        if separate {
            self.unacked.insert(
                (ex.peer, mid),
                Unacked {
                    bytes: bytes.clone(),
                    next_at: now + ACK_TIMEOUT_MS,
                    sent: 1,
                },
            );
        }
        vec![Event::Transmit(ex.peer, bytes)]
    }

    fn keep_download(&mut self, now: u64, key: (P, String), reply: Arc<Reply>) {
        if let Some(d) = self.downloads.remove(&key) {
            self.transfer_bytes -= d.reply.payload.len();
        }
        // Over the budget, the oldest downloads go first: their clients get 4.00 and ask again.
        while self.transfer_bytes + reply.payload.len() > self.settings.transfer_bytes {
            let Some(oldest) = self
                .downloads
                .iter()
                .min_by_key(|(_, d)| d.expires)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some(d) = self.downloads.remove(&oldest) {
                self.transfer_bytes -= d.reply.payload.len();
            }
        }
        self.transfer_bytes += reply.payload.len();
        self.downloads.insert(
            key,
            Download {
                reply,
                expires: now + TRANSFER_LIFETIME_MS,
            },
        );
    }

    fn remember(&mut self, now: u64, peer: P, mid: u16) {
        self.seen.insert((peer, mid), Seen::Answered(Vec::new()));
        self.seen_order
            .push_back((now + EXCHANGE_LIFETIME_MS, (peer, mid)));
        while self.seen_order.len() > self.settings.remembered {
            if let Some((_, k)) = self.seen_order.pop_front() {
                self.forget_seen(k);
            }
        }
    }

    /// Forgets a message id unless its call is still running (then its duplicates must
    /// still be recognised).
    fn forget_seen(&mut self, k: (P, u16)) {
        if !matches!(self.seen.get(&k), Some(Seen::Running { .. })) {
            self.seen.remove(&k);
        }
    }

    fn forget_old(&mut self, now: u64) {
        while self.seen_order.front().is_some_and(|(t, _)| *t <= now) {
            if let Some((_, k)) = self.seen_order.pop_front() {
                self.forget_seen(k);
            }
        }
        let mut freed = 0;
        self.uploads.retain(|_, u| {
            let keep = u.expires > now;
            if !keep {
                freed += u.body.len();
            }
            keep
        });
        self.downloads.retain(|_, d| {
            let keep = d.expires > now;
            if !keep {
                freed += d.reply.payload.len();
            }
            keep
        });
        self.transfer_bytes -= freed;
    }

    fn new_mid(&mut self) -> u16 {
        self.next_mid = self.next_mid.wrapping_add(1);
        self.next_mid
    }
}

enum Parsed {
    /// Answer now without running anything.
    Answer(Reply),
    /// A Block1 block other than the last: 2.31 Continue.
    Continue(Block),
    /// Block `num` of an answer already made.
    Next(u32),
    Run {
        function: String,
        body: Vec<u8>,
        content_format: Option<u16>,
        accept: Option<u16>,
        trace: Option<String>,
        key: Option<String>,
    },
}

fn ex_path(p: &str) -> String {
    format!("/{p}")
}

/// An empty message (an ACK or a RST) for message id `mid`.
fn empty(kind: MessageType, mid: u16) -> Vec<u8> {
    let t = match kind {
        MessageType::Confirmable => 0,
        MessageType::NonConfirmable => 1,
        MessageType::Acknowledgement => 2,
        MessageType::Reset => 3,
    };
    let [hi, lo] = mid.to_be_bytes();
    vec![0x40 | (t << 4), 0, hi, lo]
}

/// The fuzz target's check (also replayed over its corpus in the tests): the bytes are a
/// script of datagrams from four peers, answers and timer ticks; nothing may panic, every
/// datagram the server sends must decode, and its bounds must hold.
pub fn check_server(data: &[u8]) {
    let settings = Settings {
        max_body: 4096,
        block_size: 64,
        max_exchanges: 4,
        remembered: 16,
        transfer_bytes: 8192,
    };
    let mut s: Server<u8> = Server::new(settings.clone());
    let mut now = 0u64;
    let mut running: Vec<ExchangeId> = Vec::new();
    let mut rest = data;
    while let Some((&op, tail)) = rest.split_first() {
        let (len, tail) = match tail.split_first() {
            Some((&l, t)) => (usize::from(l).min(t.len()), t),
            None => (0, tail),
        };
        let (chunk, tail) = tail.split_at(len);
        rest = tail;
        now += u64::from(op >> 4) * 300;
        let events = match op & 3 {
            0 | 1 => s.receive(now, op >> 2 & 3, chunk).unwrap_or_default(),
            2 => match running.pop() {
                Some(id) => {
                    let reply = match chunk.first() {
                        Some(b) if b % 3 == 0 => Reply::error(u16::from(*b) + 300, "failed"),
                        _ => Reply::content(chunk.repeat(usize::from(op >> 2) + 1), Some(0)),
                    };
                    s.complete(now, id, reply)
                }
                None => s.handle_timeout(now),
            },
            _ => match running.last() {
                Some(id) => s.acknowledge(*id).into_iter().collect(),
                None => s.handle_timeout(now),
            },
        };
        for e in events {
            match e {
                Event::Transmit(_, bytes) => {
                    assert!(
                        Packet::from_bytes(&bytes).is_ok(),
                        "sent an undecodable datagram"
                    );
                }
                Event::Invoke { id, body, .. } => {
                    assert!(body.len() <= settings.max_body, "a body past max_body");
                    running.push(id);
                }
            }
        }
        assert!(s.running() <= settings.max_exchanges, "past max_exchanges");
        let held: usize = s.uploads.values().map(|u| u.body.len()).sum::<usize>()
            + s.downloads
                .values()
                .map(|d| d.reply.payload.len())
                .sum::<usize>();
        assert_eq!(held, s.transfer_bytes, "transfer bytes miscounted");
        assert!(s.seen.len() <= settings.remembered + settings.max_exchanges);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn request(kind: MessageType, mid: u16, path: &str, payload: &[u8]) -> Packet {
        let mut p = Packet::new();
        p.header.set_version(1);
        p.header.set_type(kind);
        p.header.message_id = mid;
        p.header.code = MessageClass::Request(RequestType::Post);
        p.set_token(vec![0xAB, mid as u8]);
        for s in path.split('/').filter(|s| !s.is_empty()) {
            p.add_option(CoapOption::UriPath, s.as_bytes().to_vec());
        }
        p.payload = payload.to_vec();
        p
    }

    fn bytes(p: &Packet) -> Vec<u8> {
        p.to_bytes_unlimited().unwrap()
    }

    fn one_transmit(ev: Vec<Event<u8>>) -> Packet {
        assert_eq!(ev.len(), 1, "{ev:?}");
        match &ev[0] {
            Event::Transmit(_, b) => Packet::from_bytes(b).unwrap(),
            e => panic!("expected a transmit, got {e:?}"),
        }
    }

    fn invoke(ev: Vec<Event<u8>>) -> (ExchangeId, String, Vec<u8>) {
        assert_eq!(ev.len(), 1, "{ev:?}");
        match ev.into_iter().next().unwrap() {
            Event::Invoke {
                id, function, body, ..
            } => (id, function, body),
            e => panic!("expected an invocation, got {e:?}"),
        }
    }

    fn server() -> Server<u8> {
        Server::new(Settings {
            max_body: 16 * 1024,
            ..Settings::default()
        })
    }

    #[test]
    fn a_quick_confirmable_call_is_answered_in_the_ack() {
        let mut s = server();
        let req = request(MessageType::Confirmable, 7, "function/hello", b"world");
        let (id, f, body) = invoke(s.receive(0, 1, &bytes(&req)).unwrap());
        assert_eq!((f.as_str(), body.as_slice()), ("hello", &b"world"[..]));
        let r = one_transmit(s.complete(1, id, Reply::content(b"hi".to_vec(), Some(0))));
        assert_eq!(r.header.get_type(), MessageType::Acknowledgement);
        assert_eq!(r.header.message_id, 7);
        assert_eq!(r.header.code, MessageClass::Response(ResponseType::Content));
        assert_eq!(r.get_token(), req.get_token());
        assert_eq!(r.payload, b"hi");
    }

    #[test]
    fn a_retransmitted_request_gets_the_same_answer_and_runs_once() {
        let mut s = server();
        let req = bytes(&request(
            MessageType::Confirmable,
            9,
            "function/hello",
            b"x",
        ));
        let (id, ..) = invoke(s.receive(0, 1, &req).unwrap());
        // Seen again while running: an empty ACK, no second call.
        let ack = one_transmit(s.receive(10, 1, &req).unwrap());
        assert_eq!(ack.header.get_type(), MessageType::Acknowledgement);
        assert_eq!(ack.header.code, MessageClass::Empty);
        // So the answer is separate, and confirmable.
        let r = one_transmit(s.complete(20, id, Reply::content(b"out".to_vec(), None)));
        assert_eq!(r.header.get_type(), MessageType::Confirmable);
        assert_ne!(r.header.message_id, 9);
        // Seen again after: the ACK again, still no call.
        let again = one_transmit(s.receive(30, 1, &req).unwrap());
        assert_eq!(again.header.code, MessageClass::Empty);
        // Another peer with the same message id is another request.
        invoke(s.receive(40, 2, &req).unwrap());
    }

    #[test]
    fn a_duplicate_of_an_answered_request_gets_the_same_bytes() {
        let mut s = server();
        let req = bytes(&request(
            MessageType::Confirmable,
            3,
            "function/hello",
            b"x",
        ));
        let (id, ..) = invoke(s.receive(0, 1, &req).unwrap());
        let first = s.complete(1, id, Reply::content(b"once".to_vec(), None));
        let second = s.receive(2, 1, &req).unwrap();
        assert_eq!(first, second);
    }

    #[test]
    fn a_slow_call_is_acknowledged_then_answered_separately_until_acked() {
        let mut s = server();
        let req = bytes(&request(MessageType::Confirmable, 5, "function/slow", b""));
        let (id, ..) = invoke(s.receive(0, 1, &req).unwrap());
        let ack = s.acknowledge(id).unwrap();
        assert_eq!(
            ack,
            Event::Transmit(1, empty(MessageType::Acknowledgement, 5))
        );
        assert!(s.acknowledge(id).is_none(), "acknowledged once");
        let r = one_transmit(s.complete(100, id, Reply::content(b"late".to_vec(), None)));
        assert_eq!(r.header.get_type(), MessageType::Confirmable);
        let mid = r.header.message_id;
        assert_eq!(s.poll_timeout(), Some(100 + ACK_TIMEOUT_MS));
        let again = one_transmit(s.handle_timeout(100 + ACK_TIMEOUT_MS));
        assert_eq!(again.header.message_id, mid);
        // The client's ACK ends the retransmissions.
        s.receive(3000, 1, &empty(MessageType::Acknowledgement, mid))
            .unwrap();
        assert_eq!(s.poll_timeout(), None);
    }

    #[test]
    fn separate_responses_stop_after_max_retransmit() {
        let mut s = server();
        let req = bytes(&request(MessageType::Confirmable, 5, "function/slow", b""));
        let (id, ..) = invoke(s.receive(0, 1, &req).unwrap());
        s.acknowledge(id);
        s.complete(0, id, Reply::content(vec![], None));
        let mut sent = 0;
        let mut now = 0;
        while let Some(t) = s.poll_timeout() {
            now = now.max(t);
            sent += s.handle_timeout(now).len();
        }
        assert_eq!(sent, MAX_RETRANSMIT as usize);
    }

    #[test]
    fn non_confirmable_requests_get_non_answers() {
        let mut s = server();
        let req = bytes(&request(
            MessageType::NonConfirmable,
            11,
            "function/hello",
            b"n",
        ));
        let (id, ..) = invoke(s.receive(0, 1, &req).unwrap());
        assert!(s.acknowledge(id).is_none());
        let r = one_transmit(s.complete(1, id, Reply::content(b"ok".to_vec(), None)));
        assert_eq!(r.header.get_type(), MessageType::NonConfirmable);
        assert!(
            s.receive(2, 1, &req).unwrap().is_empty(),
            "a duplicate NON is ignored"
        );
    }

    #[test]
    fn block1_uploads_are_assembled_and_block2_downloads_served() {
        let mut s = server();
        let body: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        let mut mid = 100;
        let mut run = None;
        for (num, chunk) in body.chunks(1024).enumerate() {
            let more = (num + 1) * 1024 < body.len();
            let mut p = request(MessageType::Confirmable, mid, "function/echo", chunk);
            p.add_option(
                CoapOption::Block1,
                Block {
                    num: num as u32,
                    more,
                    szx: 6,
                }
                .encode(),
            );
            let ev = s.receive(0, 1, &bytes(&p)).unwrap();
            if more {
                let r = one_transmit(ev);
                assert_eq!(
                    r.header.code,
                    MessageClass::Response(ResponseType::Continue)
                );
                let b = Block::decode(r.get_first_option(CoapOption::Block1).unwrap()).unwrap();
                assert_eq!((b.num, b.more), (num as u32, true));
            } else {
                run = Some(invoke(ev));
            }
            mid += 1;
        }
        let (id, _, got) = run.unwrap();
        assert_eq!(got, body);
        // The answer (3000 bytes) leaves in blocks of 1024.
        let first = one_transmit(s.complete(1, id, Reply::content(body.clone(), Some(42))));
        let b = Block::decode(first.get_first_option(CoapOption::Block2).unwrap()).unwrap();
        assert_eq!((b.num, b.more, b.size()), (0, true, 1024));
        assert!(
            first.get_first_option(CoapOption::Block1).is_some(),
            "Block1 echoed"
        );
        let mut out = first.payload.clone();
        for num in 1.. {
            let mut p = request(MessageType::Confirmable, mid, "function/echo", b"");
            mid += 1;
            p.add_option(
                CoapOption::Block2,
                Block {
                    num,
                    more: false,
                    szx: 6,
                }
                .encode(),
            );
            let r = one_transmit(s.receive(2, 1, &bytes(&p)).unwrap());
            out.extend_from_slice(&r.payload);
            let b = Block::decode(r.get_first_option(CoapOption::Block2).unwrap()).unwrap();
            if !b.more {
                break;
            }
        }
        assert_eq!(out, body);
        assert_eq!(s.transfer_bytes, 0, "nothing held after the transfer");
    }

    #[test]
    fn a_client_may_ask_for_smaller_blocks() {
        let mut s = server();
        let mut p = request(MessageType::Confirmable, 1, "function/f", b"");
        p.add_option(
            CoapOption::Block2,
            Block {
                num: 0,
                more: false,
                szx: 2,
            }
            .encode(),
        );
        let (id, ..) = invoke(s.receive(0, 1, &bytes(&p)).unwrap());
        let r = one_transmit(s.complete(0, id, Reply::content(vec![1; 200], None)));
        assert_eq!(r.payload.len(), 64);
    }

    #[test]
    fn bad_requests_name_their_problem() {
        let mut s = server();
        let code = |s: &mut Server<u8>, p: Packet| {
            let r = one_transmit(s.receive(0, 1, &bytes(&p)).unwrap());
            (
                r.header.code,
                String::from_utf8_lossy(&r.payload).to_string(),
            )
        };
        let (c, m) = code(
            &mut s,
            request(MessageType::Confirmable, 1, "sensors/1", b""),
        );
        assert_eq!(c, MessageClass::Response(ResponseType::NotFound));
        assert!(m.contains("POST /function/NAME"), "{m}");
        let mut get = request(MessageType::Confirmable, 2, "function/hello", b"");
        get.header.code = MessageClass::Request(RequestType::Get);
        assert_eq!(
            code(&mut s, get).0,
            MessageClass::Response(ResponseType::MethodNotAllowed)
        );
        let big = request(
            MessageType::Confirmable,
            3,
            "function/hello",
            &vec![0; 20_000],
        );
        let (c, m) = code(&mut s, big);
        assert_eq!(
            c,
            MessageClass::Response(ResponseType::RequestEntityTooLarge)
        );
        assert!(m.contains("16384"), "{m}");
        let mut crit = request(MessageType::Confirmable, 4, "function/hello", b"");
        crit.add_option(CoapOption::Unknown(9999), vec![1]);
        assert_eq!(
            code(&mut s, crit).0,
            MessageClass::Response(ResponseType::BadOption)
        );
        let mut gap = request(MessageType::Confirmable, 5, "function/hello", &[0; 64]);
        gap.add_option(
            CoapOption::Block1,
            Block {
                num: 3,
                more: true,
                szx: 2,
            }
            .encode(),
        );
        assert_eq!(
            code(&mut s, gap).0,
            MessageClass::Response(ResponseType::RequestEntityIncomplete)
        );
    }

    #[test]
    fn malformed_datagrams_are_refused_and_pings_reset() {
        let mut s = server();
        assert!(s.receive(0, 1, &[]).is_err());
        assert!(s.receive(0, 1, &[0x40]).is_err());
        assert!(matches!(
            s.receive(0, 1, &[0x80, 1, 0, 0]),
            Err(Malformed::Version(2))
        ));
        let ping = s.receive(0, 1, &[0x40, 0, 0x12, 0x34]).unwrap();
        assert_eq!(ping, vec![Event::Transmit(1, vec![0x70, 0, 0x12, 0x34])]);
    }

    #[test]
    fn overload_and_errors_map_to_coap_codes() {
        assert_eq!(
            Reply::error(429, "busy").code,
            ResponseType::ServiceUnavailable
        );
        assert_eq!(Reply::error(429, "busy").max_age, Some(1));
        assert_eq!(Reply::error(504, "t").code, ResponseType::GatewayTimeout);
        assert_eq!(
            Reply::error(500, "t").code,
            ResponseType::InternalServerError
        );
        assert_eq!(Reply::error(404, "t").code, ResponseType::NotFound);
        let mut s = Server::new(Settings {
            max_exchanges: 1,
            ..Settings::default()
        });
        invoke(
            s.receive(
                0,
                1u8,
                &bytes(&request(MessageType::Confirmable, 1, "function/a", b"")),
            )
            .unwrap(),
        );
        let r = one_transmit(
            s.receive(
                0,
                1,
                &bytes(&request(MessageType::Confirmable, 2, "function/a", b"")),
            )
            .unwrap(),
        );
        assert_eq!(
            r.header.code,
            MessageClass::Response(ResponseType::ServiceUnavailable)
        );
        assert!(r.get_first_option(CoapOption::MaxAge).is_some());
    }

    #[test]
    fn remembered_ids_are_bounded() {
        let mut s = Server::new(Settings {
            remembered: 8,
            ..Settings::default()
        });
        for mid in 0..100u16 {
            let req = bytes(&request(MessageType::NonConfirmable, mid, "nowhere", b""));
            s.receive(0, 1u8, &req).unwrap();
        }
        assert!(s.seen.len() <= 8, "{}", s.seen.len());
    }
}
