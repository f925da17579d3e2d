//! The seam federation plugs into: a bridge with `[federation]` installs a [`Federation`]
//! (the `fogline-cloud-bridge` crate's), and the node's triggers reach it through this
//! trait only: the QUIC trigger relays a router's call bound for a peer cluster
//! (`Invoke.via`) and serves peer bridges' frames, and the gateway serves
//! `/v1/federation`.

use fogline_core::federation::{FedReply, FedRequest};

use crate::dispatch::BoxFut;
use crate::quic::{Reply, Request};

/// A refusal with its HTTP status and whether another place could take the call.
#[derive(Debug, Clone)]
pub struct FedError {
    pub status: u16,
    pub retryable: bool,
    pub message: String,
}

impl FedError {
    pub fn new(status: u16, retryable: bool, message: impl Into<String>) -> Self {
        FedError {
            status,
            retryable,
            message: message.into(),
        }
    }
}

/// What an admin asks of the bridge's federation (`fogline federation …`).
#[derive(Debug, Clone)]
pub enum Admin {
    /// Mint an invite: valid for `ttl_s`, offering `share_pct` of free capacity.
    Invite {
        ttl_s: u64,
        share_pct: u8,
    },
    /// Peer with the provider an invite names, under `name` (default: the provider's).
    Join {
        token: String,
        name: Option<String>,
    },
    List,
    /// End a peering: no new calls, calls in flight finish, both sides forget it.
    Leave {
        name: String,
    },
    /// Let (or stop letting) `namespace` be offloaded to peer `to`.
    Offload {
        namespace: String,
        to: String,
        on: bool,
    },
    /// Provider side: refuse (or take again) calls of consumer `from`'s `namespace`.
    Refuse {
        namespace: String,
        from: String,
        on: bool,
    },
}

pub trait Federation: Send + Sync {
    /// Consumer side: runs `req` in peer cluster `peer`.
    fn relay<'a>(&'a self, peer: &'a str, req: Request) -> BoxFut<'a, Result<Reply, FedError>>;

    /// Provider side: answers a peered consumer's request (summary, leave).
    fn answer(&self, consumer: &str, req: FedRequest) -> Result<FedReply, FedError>;

    /// Provider side: whether `consumer` may run a call of its function `key` here now (its
    /// peering is live and within its share); the function's key on this side.
    fn admit(&self, consumer: &str, key: &str) -> Result<String, FedError>;

    /// Provider side: runs a peer's call of this side's function `key` in this cluster
    /// (placed on its members, or here).
    fn run<'a>(
        &'a self,
        key: &'a str,
        body: bytes::Bytes,
    ) -> BoxFut<'a, Result<crate::dispatch::Placed, crate::dispatch::Refused>>;

    /// Provider side: a call of `consumer`'s ended.
    fn done(&self, consumer: &str, ok: bool);

    fn admin<'a>(&'a self, req: Admin) -> BoxFut<'a, Result<serde_json::Value, FedError>>;

    /// Prometheus text for `/metrics`.
    fn metrics(&self, out: &mut String);
}
