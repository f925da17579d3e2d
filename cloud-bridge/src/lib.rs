//! Fogline's cloud tier.
//!
//! `fogline bridge` runs today as the node agent with `tier = "cloud"` and cloud-sized limits
//! (`configs/bridge.toml`): it serves QUIC and the HTTP gateway, runs functions sent by other
//! tiers (fetching their modules by hash) and reports its capacity. Federation of clusters
//! and scaling out on Docker Swarm will live in this crate (not built yet).
