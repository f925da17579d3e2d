//! The seam between triggers and placement. Every trigger calls
//! [`Node::call`](crate::agent::Node::call): a node runs the call itself; a router has a
//! [`Dispatch`] installed that decides where each call runs. A call sent to an explicit
//! member (`X-Fogline-Target`) goes through [`Node::call_at`](crate::agent::Node::call_at),
//! the same path a router's placement takes to reach that member.
//!
//! This module depends on nothing else in the node: a router holds its own handle on the
//! node it places for, so there is no cycle between the agent and placement.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use fogline_core::config::Tier;

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
    /// The function's time at the place, its start-up included, ms.
    pub run_ms: f64,
    /// Of `run_ms`, loading and instantiating it before it ran (none when the place did
    /// not say: a member of a release before it, or an answer replayed).
    pub startup_ms: Option<f64>,
    /// Places tried (more than one after a failure of an idempotent call).
    pub attempts: u32,
    /// Whether the member it ran on fetched the module from us first (calls sent to
    /// another member); none when it ran here.
    pub module_sent: Option<bool>,
    /// The answering member's calls running and queued as it answered (a QUIC answer
    /// carries it); none when it ran here or the member is of a release before it.
    pub load: Option<u32>,
}

impl Placed {
    /// The function's own time there: without a cold start's loading, which a router
    /// predicts apart (a warm call's start-up is part of every call).
    pub fn service_ms(&self) -> f64 {
        match self.startup_ms {
            Some(s) if self.cold => (self.run_ms - s).max(0.0),
            _ => self.run_ms,
        }
    }

    /// Where it ran, as callers are told: `node (tier)`.
    pub fn place(&self) -> String {
        format!("{} ({})", self.node, self.tier.as_str())
    }
}

/// A call that produced no output, with the status and message for the caller.
#[derive(Debug, Clone)]
pub struct Refused {
    pub status: u16,
    pub message: String,
    /// No place could take the call (none alive, the tier it needs unreachable): it never
    /// left this member, so waiting for the link to come back is not a failed attempt.
    pub unplaced: bool,
}

impl Refused {
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        Refused {
            status,
            message: message.into(),
            unplaced: false,
        }
    }

    /// A 503 for a call that no place could take; see [`Refused::unplaced`].
    pub fn unplaced(message: impl Into<String>) -> Self {
        Refused {
            unplaced: true,
            ..Refused::new(503, message)
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
        function: &'a str,
        body: Bytes,
    ) -> BoxFut<'a, Result<Placed, Refused>>;

    /// Recent decisions, newest first, as JSON for `GET /v1/placements`.
    fn placements(&self, limit: usize) -> serde_json::Value;

    /// Decisions from now on, each one JSON text (the dashboard's live stream).
    fn watch(&self) -> Option<tokio::sync::broadcast::Receiver<std::sync::Arc<str>>> {
        None
    }

    /// One function's figures as placement saw them (latency histogram, cold starts,
    /// tiers and prediction error over time), as JSON.
    fn function_stats(&self, _function: &str) -> Option<serde_json::Value> {
        None
    }

    /// Placement's own Prometheus metrics, appended to the member's `/metrics`.
    fn metrics(&self, _out: &mut String) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cold_calls_service_time_leaves_out_its_loading() {
        let placed = |cold, startup_ms| Placed {
            body: Bytes::new(),
            node: "edge-1".into(),
            tier: Tier::Edge,
            cold,
            truncated: false,
            predicted_ms: None,
            took_ms: 0.0,
            run_ms: 250.0,
            attempts: 1,
            module_sent: None,
            load: None,
            startup_ms,
        };
        assert_eq!(placed(true, Some(240.0)).service_ms(), 10.0);
        assert_eq!(
            placed(false, Some(0.5)).service_ms(),
            250.0,
            "warm: all of it"
        );
        assert_eq!(placed(true, None).service_ms(), 250.0, "not said");
    }
}
