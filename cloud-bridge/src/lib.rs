//! The cloud tier beyond one process.
//!
//! A bridge is the node agent with cloud-sized limits (the binary's `fogline bridge`).
//! This crate holds what only the cloud tier does:
//! - [`swarm`]: the bridge's workers as a replicated Docker Swarm service: the worker
//!   image ([`swarm::image`]), the service and its secret ([`swarm::service`]), and the
//!   autoscaler that sizes it ahead of demand ([`swarm::Workers`], deciding with
//!   `fogline_core::scale`).
//!
//! - [`federation`]: peer clusters: invites and joins (each cluster keeping its own CA),
//!   the bridge-to-bridge link, summaries, and relaying this cluster's calls to a peer
//!   cluster placed on as one more place.
//!
//! A new back end for scaling out (another engine) gets a module of its own beside
//! [`swarm`], driven by the same `fogline_core::scale::Scaler`.

pub mod federation;
pub mod swarm;
