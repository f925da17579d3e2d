//! Triggers: every way an invocation arrives. A trigger turns its protocol's request into
//! the node's one invocation call, [`Node::call`] (placed by the router on a router, run here
//! on a node), and the outcome back into its protocol's reply.
//!
//! | trigger | module | config | who calls |
//! |---|---|---|---|
//! | HTTP, the OpenFaaS gateway | [`http`] | `[http]` | devices, faas-cli, curl |
//! | QUIC with mutual TLS | [`quic`] | `[quic]` | other tiers, QUIC devices |
//! | MQTT (a client of a broker) | [`mqtt`] | `[mqtt]` | IoT devices publishing |
//! | CoAP over UDP (RFC 7252) | [`coap`] | `[coap]` | constrained devices |
//!
//! The dashboard ([`ui`]) is part of the HTTP gateway: pages and the `/v1` routes they read;
//! so is the async queue's dead-letter queue ([`dlq`]), and a bridge's peer clusters
//! ([`federation`]; the link itself is served by [`quic::serve_peer`]).
//! Every trigger starts a call's trace (or continues its caller's, W3C `traceparent`) with
//! [`crate::traces`].
//!
//! Adding a trigger: a module here implementing [`Trigger`], its config section in
//! `fogline-core`'s config, and one line in [`bind`]. Every trigger is bound before the node
//! announces itself (so its address can be printed), served together, told together when
//! the node stops, and given the same deadline (`node.stop_timeout`) to finish what it took.

pub mod coap;
pub mod dlq;
pub mod federation;
pub mod http;
pub mod https;
pub mod mqtt;
pub mod mqtt_acks;
pub mod mqtt_qos2;
pub mod quic;
pub mod ui;

use std::sync::Arc;
use std::time::Duration;

use fogline_core::config::NodeConfig;
use tokio::sync::watch;

use crate::agent::Node;
use crate::dispatch::BoxFut;

/// One way invocations arrive, bound and ready to serve.
pub trait Trigger: Send + 'static {
    /// Its name in logs and start lines (`coap listening on ADDR`).
    fn name(&self) -> &'static str;

    /// Where it listens, once bound (none for a trigger that connects out, as MQTT does).
    fn address(&self) -> Option<std::net::SocketAddr>;

    /// Serves calls into `node` until `stopping` turns true; then finishes what it took,
    /// for at most `deadline`.
    fn serve(
        self: Box<Self>,
        node: Arc<Node>,
        stopping: watch::Receiver<bool>,
        deadline: Duration,
    ) -> BoxFut<'static, anyhow::Result<()>>;
}

/// Binds every trigger the config turns on, in the order their start lines are printed.
pub async fn bind(config: &NodeConfig) -> anyhow::Result<Vec<Box<dyn Trigger>>> {
    let mut out: Vec<Box<dyn Trigger>> = vec![Box::new(http::Http::bind(config).await?)];
    if let Some(q) = quic::QuicServer::bind(config)? {
        out.push(Box::new(q));
    }
    if let Some(c) = coap::Coap::bind(config).await? {
        out.push(Box::new(c));
    }
    if let Some(m) = mqtt::Mqtt::from_config(config)? {
        out.push(Box::new(m));
    }
    if let Some(e) = crate::enroll::Enroll::bind(config).await? {
        out.push(Box::new(e));
    }
    Ok(out)
}

/// Resolves once `stopping` turns true; `false` when the sender went away first.
pub async fn stopped(mut stopping: watch::Receiver<bool>) -> bool {
    stopping.wait_for(|s| *s).await.is_ok()
}
