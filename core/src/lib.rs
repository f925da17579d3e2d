//! Fogline's pure core: everything that decides, with no I/O, clocks or threads.
//!
//! Layout:
//! - [`units`]: byte sizes (`64Mi`) and durations (`2s`) as users write them.
//! - [`digest`]: content addresses (`sha256:…`) of function modules.
//! - [`manifest`]: the function model, validated into types; every error names its field.
//! - [`openfaas`]: the OpenFaaS gateway's JSON shapes and their mapping onto manifests.
//! - [`stack`]: stack files, which describe several functions for one `fogline deploy`.
//! - [`config`]: the node agent's config file, strict and versioned.
//! - [`mesh`]: gossiped load reports and the merged cluster view (membership, liveness).
//! - [`service`]: a member's average of a function's service times (runs in start order).
//! - [`predict`]: per-place latency models (online least squares, analytic fallback).
//! - [`forecast`]: arrival-rate forecasts per function (prepare ahead of bursts).
//! - [`policy`]: choosing a place from predictions, deadlines, cost and energy weights.
//! - [`policies`]: the placement policies behind one trait (regression, A3-E, Mu, the
//!   baselines, the simulator's oracle), live and simulated alike.
//! - [`candidates`]: a call's candidate places from members' reports, pings and the
//!   router's own calls: one set of rules, live and simulated.
//! - [`attempts`]: one call's placement state machine: outcome in, retry where / fail /
//!   done out, under one budget rule; places benched after failing.
//! - [`placement`]: the planner the router and the simulator share: models per place, plans,
//!   learning from outcomes; its place numbers by key in `numbers` (a small probing table).
//! - [`sim`]: the continuum simulator (same planner and cluster view, baselines, oracle).
//! - [`wire`]: the tier-to-tier frame protocol (QUIC streams), pure encode/decode.
//! - [`callback`]: where async results may be delivered, and their Standard Webhooks
//!   signatures.
//! - [`roles`]: what each certificate role may ask of a member.
//! - [`revocation`]: the cluster's certificate revocation list, signed by its CA.
//! - [`enroll`]: join tokens and the enrollment exchange of `fogline join`.
//! - [`federation`]: peering between clusters: invites, what bridges tell each other, and
//!   how a consumer's functions are named on the provider.
//! - [`sizing`]: a member fitting its Wasm slots and workers to its cgroup limits.
//! - [`access`]: namespaces, token scopes and quotas: what each gateway token may do.
//! - [`coap`]: CoAP server exchanges (RFC 7252, block-wise RFC 7959) as a state machine
//!   given the time: duplicates, blocks, acknowledgements, retransmission.
//! - [`delivery`]: retrying accepted work: which failures, backoff with jitter, giving up.
//! - [`scale`]: how many Swarm workers the cloud tier runs (demand now and forecast,
//!   hysteresis).
//! - [`trace`]: W3C Trace Context (`traceparent`), the spans each hop records, a trace's tree.
//!
//! A new placement policy is one file in [`policies`] and one `Kind`; the router and the
//! simulator both drive it through [`attempts`].
//!
//! Drivers (`fogline-node`, `fogline-router`, …) move bytes and time into these types.

pub mod access;
pub mod attempts;
pub mod callback;
pub mod candidates;
pub mod coap;
pub mod config;
pub mod delivery;
pub mod digest;
pub mod enroll;
pub mod federation;
pub mod forecast;
pub mod manifest;
pub mod mesh;
mod numbers;
pub mod openfaas;
pub mod placement;
pub mod policies;
pub mod policy;
pub mod predict;
pub mod revocation;
pub mod roles;
pub mod scale;
pub mod service;
pub mod sim;
pub mod sizing;
pub mod stack;
pub mod trace;
pub mod units;
pub mod wire;

pub use digest::Digest;
pub use manifest::{FunctionManifest, ManifestError, Runtime};
