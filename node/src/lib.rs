//! Fogline's node agent: runs functions in sandboxes and takes invocations from every
//! trigger. The router and the cloud bridge are node agents with more parts installed.
//!
//! The rooms, and where each kind of change goes:
//! - [`triggers`]: every way an invocation arrives (HTTP, QUIC, MQTT, CoAP), one module each
//!   behind the [`Trigger`](triggers::Trigger) trait. **A new trigger** is a module there and
//!   one line in [`triggers::bind`].
//! - [`executor`]: the sandboxes (Wasm, containers) behind one
//!   [`Executor`](executor::Executor) trait and the [`Executors`](executor::Executors)
//!   registry keyed by runtime. **A new sandbox** is a module there and one line in
//!   [`Executors::open`](executor::Executors::open).
//! - [`agent`]: the [`Node`]: its function registry, admission (per-function concurrency),
//!   the durable async queue, its outbox of calls waiting for a place (`parked`), keyed
//!   runs (`keyed`: once per idempotency key where a call runs) and callbacks, and
//!   [`Node::call`], the one invocation path.
//! - [`dispatch`]: the seam placement plugs into; **a new placement policy** goes in
//!   `fogline-core` (`policy`, `placement`), driven by the router crate through this seam.
//! - [`federate`]: the seam a bridge's federation (peer clusters, in
//!   `fogline-cloud-bridge`) plugs into; [`peering`]: the TLS of the bridge-to-bridge link,
//!   each side pinning the other cluster's CA.
//! - [`enroll`]: new boards joining by token (the issuer's listener and `fogline join`);
//!   [`renew`]: members renewing their certificates before they expire.
//! - [`quic`] (framing and the client that calls other tiers), [`tls`] (certificates and
//!   roles), [`revocation`] (the certificates members refuse), [`mesh`] (gossiped
//!   membership and load): how members reach each other.
//! - [`store`] (durable state in sled), [`secrets`] (sealed at rest, laid out per function
//!   on tmpfs), [`logs`], [`metrics`], [`traces`] (spans of recent calls, gathered across
//!   members on demand; [`otlp`] sends them to a collector), [`sysinfo`] (the machine),
//!   [`token`] (the admin token): what the other rooms keep and report.
//! - [`simulate`]: loading simulator scenarios and their files (for `fogline simulate` and
//!   the dashboard's Simulator page; the simulator itself is pure, in `fogline-core`).
//! - The dashboard is [`triggers::ui`], part of the gateway; its page, script and style
//!   are in `node/ui/`, compiled in.
//!
//! Dependencies between the rooms run one way: triggers → agent → executor, dispatch,
//! quic, mesh, store. [`bind`] wires them for `fogline node`, `bridge`, `router` and `up`.

pub mod agent;
pub mod dispatch;
pub mod enroll;
pub mod executor;
pub mod federate;
pub mod logs;
pub mod mesh;
pub mod metrics;
pub mod otlp;
pub mod peering;
pub mod quic;
pub mod renew;
pub mod revocation;
pub mod secrets;
pub mod simulate;
pub mod store;
pub mod sysinfo;
pub mod tls;
pub mod token;
pub mod traces;
pub mod triggers;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use fogline_core::config::NodeConfig;

pub use agent::Node;
use triggers::Trigger;

/// A node whose triggers are bound; call [`Running::serve`] to start serving.
pub struct Running {
    /// The HTTP gateway's address.
    pub addr: SocketAddr,
    /// `http` or `https`, as the gateway serves.
    pub scheme: &'static str,
    /// The QUIC endpoint's address, when QUIC is on.
    pub quic_addr: Option<SocketAddr>,
    /// The CoAP socket's address, when CoAP is on.
    pub coap_addr: Option<SocketAddr>,
    /// The enrollment listener's address, when this member takes enrollments.
    pub enroll_addr: Option<SocketAddr>,
    pub node: Arc<Node>,
    pub new_token: Option<String>,
    triggers: Vec<Box<dyn Trigger>>,
    async_rx: tokio::sync::mpsc::Receiver<u64>,
}

/// Opens the node and binds its triggers; call [`Running::serve`] to start serving.
pub async fn bind(config: NodeConfig) -> anyhow::Result<Running> {
    bind_with(config, &[]).await
}

/// [`bind`], joining the mesh through `join` as well as the config's members.
pub async fn bind_with(config: NodeConfig, join: &[String]) -> anyhow::Result<Running> {
    let triggers = triggers::bind(&config).await?;
    let opened = Node::open(config).await?;
    let node = opened.node;
    if let Some(dir) = &node.config.quic.tls_dir {
        let client = Arc::new(quic::Client::new(&tls::TlsDir::load(dir)?)?);
        client.enforce(node.revocations.clone());
        let _ = node.links.peers.set(client);
    }
    let at = |name: &str| {
        triggers
            .iter()
            .find(|t| t.name() == name)
            .and_then(|t| t.address())
    };
    let addr = at("gateway").ok_or_else(|| anyhow::anyhow!("the gateway is not bound"))?;
    let (quic_addr, coap_addr, enroll_addr) = (at("quic"), at("coap"), at("enroll"));
    // What other members are told: a wildcard listener is reached at `quic.advertise`.
    let shown = |a: SocketAddr| match node.config.quic.advertise {
        Some(ip) if a.ip().is_unspecified() => SocketAddr::new(ip, a.port()),
        _ => a,
    };
    let _ = node
        .links
        .addresses
        .set((quic_addr.map(shown), shown(addr)));
    if node.config.mesh.listen.is_some() {
        let m = mesh::start(node.clone(), &node.id, &node.config, join).await?;
        let _ = node.links.mesh.set(m);
    }
    renew::start(node.clone());
    otlp::start(&node);
    Ok(Running {
        addr,
        scheme: if node.config.http.tls {
            "https"
        } else {
            "http"
        },
        quic_addr,
        coap_addr,
        enroll_addr,
        node,
        new_token: opened.new_token,
        triggers,
        async_rx: opened.async_rx,
    })
}

impl Running {
    /// Serves until `shutdown` resolves; then every trigger finishes what it took (within
    /// `node.stop_timeout`), the mesh hears the goodbye, the sandboxes stop, and the store
    /// is flushed.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let node = self.node;
        let workers = tokio::spawn(node.clone().run_async_workers(self.async_rx));
        let deadline = node.config.node.stop_timeout;
        let (stopping_tx, stopping_rx) = tokio::sync::watch::channel(false);
        let mut serving = Vec::new();
        for t in self.triggers {
            let name = t.name();
            let task = tokio::spawn(t.serve(node.clone(), stopping_rx.clone(), deadline));
            serving.push((name, task));
        }
        shutdown.await;
        // Other tiers stop sending here (the mesh hears it is leaving, QUIC refuses new
        // calls) while what is running finishes.
        node.begin_stop();
        let _ = stopping_tx.send(true);
        let mut result = Ok(());
        for (name, task) in serving {
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => result = Err(e),
                Err(e) => result = Err(anyhow::anyhow!("{name} trigger: {e}")),
            }
        }
        workers.abort();
        if let Some(m) = node.links.mesh.get() {
            // The goodbye was queued when the stop began; let it reach the other members
            // before the mesh connections go.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            m.stop();
        }
        node.stop_sandboxes().await;
        node.flush().await;
        result
    }
}
