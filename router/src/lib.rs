//! Fogline's router: regression-based placement across device, edge and cloud.
//!
//! Not built yet (issue 5). Today a node forwards a call to another tier only when the
//! caller names the target (`X-Fogline-Target: quic://ADDR`, see `fogline_node::gateway`);
//! this crate will make that choice itself, from the gossiped cluster view and online
//! latency models, and host the HTTP/QUIC/MQTT ingress and device mode.
