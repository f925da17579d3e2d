//! Call traces, pure: the W3C Trace Context header (`traceparent`, `tracestate`,
//! <https://www.w3.org/TR/trace-context/>), the span every hop records, and the tree a
//! trace's spans make.
//!
//! A call gets a trace id at its first ingress (or keeps the caller's), and every hop
//! records its spans under it: the ingress, the router's placement and each attempt, the
//! node's serving of it, module fetch, compile, start and run. Each member keeps its spans;
//! a trace is put together by asking the members its attempts went to.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The `traceparent` header's content: version 00.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    pub trace_id: TraceId,
    /// The caller's span this call is a child of.
    pub parent_id: SpanId,
    /// The caller records this trace (flag 01); a member records spans only when it is set.
    pub sampled: bool,
}

/// 16 bytes, never all zero.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct TraceId(pub [u8; 16]);

/// 8 bytes, never all zero.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct SpanId(pub [u8; 8]);

/// Why a `traceparent` was not taken (the call then starts a trace of its own).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TraceError {
    #[error(
        "traceparent must be VERSION-TRACEID-PARENTID-FLAGS (00-32 hex-16 hex-2 hex), got {0:?}"
    )]
    Shape(String),
    #[error("traceparent version ff is invalid")]
    Version,
    #[error("traceparent's trace id is all zeros")]
    ZeroTrace,
    #[error("traceparent's parent id is all zeros")]
    ZeroParent,
    #[error("tracestate is longer than 512 characters, has more than 32 members, or is not printable ASCII")]
    State,
    #[error("a trace id is 32 lowercase hex digits, got {0:?}")]
    Id(String),
}

fn lower_hex(s: &str, out: &mut [u8]) -> bool {
    s.len() == out.len() * 2
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && hex::decode_to_slice(s, out).is_ok()
}

impl TraceParent {
    /// Parses a `traceparent` as the W3C recommendation says: version 00 exactly; a later
    /// version by its first four fields (what follows them is that version's business).
    pub fn parse(s: &str) -> Result<TraceParent, TraceError> {
        let shape = || TraceError::Shape(s.chars().take(80).collect());
        let s = s.trim_matches([' ', '\t']);
        if s.len() < 55 || !s.is_ascii() {
            return Err(shape());
        }
        let mut version = [0u8; 1];
        if !lower_hex(&s[0..2], &mut version) || &s[2..3] != "-" {
            return Err(shape());
        }
        if version[0] == 0xff {
            return Err(TraceError::Version);
        }
        // Version 00 has exactly four fields; later ones may append after a dash.
        if (version[0] == 0 && s.len() != 55) || (s.len() > 55 && &s[55..56] != "-") {
            return Err(shape());
        }
        let (mut trace, mut parent, mut flags) = ([0u8; 16], [0u8; 8], [0u8; 1]);
        if !lower_hex(&s[3..35], &mut trace)
            || &s[35..36] != "-"
            || !lower_hex(&s[36..52], &mut parent)
            || &s[52..53] != "-"
            || !lower_hex(&s[53..55], &mut flags)
        {
            return Err(shape());
        }
        if trace == [0; 16] {
            return Err(TraceError::ZeroTrace);
        }
        if parent == [0; 8] {
            return Err(TraceError::ZeroParent);
        }
        Ok(TraceParent {
            trace_id: TraceId(trace),
            parent_id: SpanId(parent),
            sampled: flags[0] & 1 == 1,
        })
    }

    /// The header's text (version 00), made without intermediate strings (it is on every
    /// answer).
    pub fn header(&self) -> String {
        let mut out = String::with_capacity(55);
        out.push_str("00-");
        push_hex(&mut out, &self.trace_id.0);
        out.push('-');
        push_hex(&mut out, &self.parent_id.0);
        out.push_str(if self.sampled { "-01" } else { "-00" });
        out
    }
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 15)]));
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.header())
    }
}

/// A `tracestate` is carried on unchanged when it is well-formed enough to pass on:
/// at most 512 characters of printable ASCII in at most 32 comma-separated members.
pub fn check_tracestate(s: &str) -> Result<(), TraceError> {
    if s.len() > 512
        || s.split(',').filter(|m| !m.trim().is_empty()).count() > 32
        || !s.bytes().all(|b| (0x20..0x7f).contains(&b))
    {
        return Err(TraceError::State);
    }
    Ok(())
}

impl TraceId {
    /// From 16 random bytes (the caller supplies the randomness); `None` if all zero.
    pub fn from_bytes(b: [u8; 16]) -> Option<TraceId> {
        (b != [0; 16]).then_some(TraceId(b))
    }

    pub fn parse(s: &str) -> Result<TraceId, TraceError> {
        let mut b = [0u8; 16];
        if !lower_hex(s, &mut b) || b == [0; 16] {
            return Err(TraceError::Id(s.chars().take(40).collect()));
        }
        Ok(TraceId(b))
    }
}

impl SpanId {
    pub fn from_bytes(b: [u8; 8]) -> Option<SpanId> {
        (b != [0; 8]).then_some(SpanId(b))
    }
}

/// An id written as lowercase hex: in text, in JSON and on the wire alike.
macro_rules! hex_id {
    ($t:ident, $n:expr) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({self})", stringify!($t))
            }
        }
        impl Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&hex::encode(self.0))
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                let mut b = [0u8; $n];
                if !lower_hex(&s, &mut b) {
                    return Err(serde::de::Error::custom(format!(
                        "expected {} lowercase hex digits",
                        $n * 2
                    )));
                }
                Ok($t(b))
            }
        }
    };
}
hex_id!(TraceId, 16);
hex_id!(SpanId, 8);

/// One timed step of a call on one member.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Span {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// The span this one is part of; `None` for the trace's root.
    pub parent_id: Option<SpanId>,
    /// `http`, `quic`, `coap`, `mqtt`, `async`, `placement`, `attempt`, `serve`,
    /// `queued`, `module fetch`, `compile`, `cold start`, `start`, `run`.
    pub name: Cow<'static, str>,
    /// The member that recorded it.
    pub member: String,
    /// Microseconds since the Unix epoch.
    pub start_us: u64,
    pub duration_us: u64,
    /// What else is worth knowing (function, place, status, candidates…).
    pub attrs: Vec<(Cow<'static, str>, Cow<'static, str>)>,
}

impl Span {
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_ref())
    }
}

/// A trace's spans in tree order: each span followed by its children (by start time),
/// with its depth. Spans whose parent is not among them (held by a member that was not
/// reached, or the caller's own) are roots.
pub fn tree(spans: &[Span]) -> Vec<(usize, &Span)> {
    let mut order: Vec<&Span> = spans.iter().collect();
    order.sort_by_key(|s| (s.start_us, std::cmp::Reverse(s.duration_us)));
    let known: std::collections::HashSet<SpanId> = spans.iter().map(|s| s.span_id).collect();
    let mut out = Vec::with_capacity(spans.len());
    let mut seen = std::collections::HashSet::new();
    fn walk<'a>(
        s: &'a Span,
        depth: usize,
        order: &[&'a Span],
        out: &mut Vec<(usize, &'a Span)>,
        seen: &mut std::collections::HashSet<SpanId>,
    ) {
        // A span id repeated (or a cycle a broken peer sent) is shown once.
        if !seen.insert(s.span_id) || depth > 64 {
            return;
        }
        out.push((depth, s));
        for c in order.iter().filter(|c| c.parent_id == Some(s.span_id)) {
            walk(c, depth + 1, order, out, seen);
        }
    }
    for s in &order {
        if s.parent_id.is_none_or(|p| !known.contains(&p)) {
            walk(s, 0, &order, &mut out, &mut seen);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_recommendations_example_round_trips() {
        let t = TraceParent::parse(EXAMPLE).unwrap();
        assert_eq!(t.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.parent_id.to_string(), "00f067aa0ba902b7");
        assert!(t.sampled);
        assert_eq!(t.header(), EXAMPLE);
        let unsampled = TraceParent::parse(&EXAMPLE.replace("-01", "-00")).unwrap();
        assert!(!unsampled.sampled);
    }

    #[test]
    fn invalid_headers_are_refused_with_their_reason() {
        let zero_trace = "00-00000000000000000000000000000000-00f067aa0ba902b7-01";
        assert_eq!(TraceParent::parse(zero_trace), Err(TraceError::ZeroTrace));
        let zero_parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01";
        assert_eq!(TraceParent::parse(zero_parent), Err(TraceError::ZeroParent));
        let ff = EXAMPLE.replacen("00", "ff", 1);
        assert_eq!(TraceParent::parse(&ff), Err(TraceError::Version));
        for bad in [
            "",
            "garbage",
            &EXAMPLE.to_uppercase(),
            &EXAMPLE.replace('-', "_"),
            &format!("{EXAMPLE}-extra"),
            &EXAMPLE[..54],
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "0é-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(
                matches!(TraceParent::parse(bad), Err(TraceError::Shape(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_later_version_is_read_by_its_first_four_fields() {
        let v1 = format!("01{}-what-comes-next", &EXAMPLE[2..]);
        let t = TraceParent::parse(&v1).unwrap();
        assert_eq!(t.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(TraceParent::parse(&format!("01{}x", &EXAMPLE[2..])).is_err());
    }

    #[test]
    fn tracestate_is_bounded() {
        assert!(check_tracestate("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7").is_ok());
        assert!(check_tracestate(&"a".repeat(513)).is_err());
        let many: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
        assert!(check_tracestate(&many.join(",")).is_err());
        assert!(check_tracestate("k=v\n").is_err());
    }

    fn span(id: u8, parent: Option<u8>, start: u64) -> Span {
        Span {
            trace_id: TraceId([1; 16]),
            span_id: SpanId([id; 8]),
            parent_id: parent.map(|p| SpanId([p; 8])),
            name: format!("s{id}").into(),
            member: "m".into(),
            start_us: start,
            duration_us: 10,
            attrs: vec![],
        }
    }

    #[test]
    fn spans_are_ordered_as_a_tree() {
        // Given out of order, one orphan (its parent was not reached), one cycle.
        let spans = vec![
            span(3, Some(1), 30),
            span(2, Some(1), 20),
            span(1, None, 10),
            span(4, Some(2), 25),
            span(5, Some(9), 5),
            span(6, Some(7), 1),
            span(7, Some(6), 2),
        ];
        let t: Vec<(usize, String)> = tree(&spans)
            .into_iter()
            .map(|(d, s)| (d, s.name.to_string()))
            .collect();
        assert_eq!(
            t,
            vec![
                (0, "s5".into()),
                (0, "s1".into()),
                (1, "s2".into()),
                (2, "s4".into()),
                (1, "s3".into()),
            ]
        );
    }

    #[test]
    fn ids_serialize_as_hex() {
        let s = span(1, Some(2), 3);
        let j = serde_json::to_string(&s).unwrap();
        assert!(j.contains("\"span_id\":\"0101010101010101\""), "{j}");
        assert_eq!(serde_json::from_str::<Span>(&j).unwrap(), s);
        let p = postcard::to_allocvec(&s).unwrap();
        assert_eq!(postcard::from_bytes::<Span>(&p).unwrap(), s);
    }
}
