//! The seam between the gateways and placement: a node runs calls itself; a router sets a
//! [`Dispatch`] that decides where each call runs. The HTTP gateway, the QUIC server and the
//! async queue all go through [`Node::call`](crate::agent::Node::call), so every ingress is
//! placed the same way.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use fogline_core::config::Tier;

use crate::agent::Node;

/// A boxed future borrowing its inputs.
pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A call that ran somewhere.
#[derive(Debug, Clone)]
pub struct Placed {
    pub body: Bytes,
    /// Where it ran, and that place's tier.
    pub node: String,
    pub tier: Tier,
    pub cold: bool,
    pub truncated: bool,
    /// What the router predicted for the place it chose first, ms (none when not placed).
    pub predicted_ms: Option<f64>,
    /// End-to-end time as the router saw it, ms.
    pub took_ms: f64,
    /// The function's own time at the place, ms.
    pub run_ms: f64,
    /// Places tried (more than one after a failure of an idempotent call).
    pub attempts: u32,
}

/// A call that produced no output, with the status and message for the caller.
#[derive(Debug, Clone)]
pub struct Refused {
    pub status: u16,
    pub message: String,
}

impl Refused {
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        Refused {
            status,
            message: message.into(),
        }
    }

    /// Whether trying again (elsewhere, or later) may succeed without harm.
    pub fn retryable(&self) -> bool {
        matches!(self.status, 429 | 503)
    }
}

/// Decides where calls run (the router).
pub trait Dispatch: Send + Sync {
    fn dispatch<'a>(
        &'a self,
        node: &'a Node,
        function: &'a str,
        body: Bytes,
    ) -> BoxFut<'a, Result<Placed, Refused>>;

    /// Recent decisions, newest first, as JSON for `GET /v1/placements`.
    fn placements(&self, limit: usize) -> serde_json::Value;
}
