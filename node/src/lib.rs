//! Fogline's node agent: runs functions in sandboxes and serves them over HTTP.
//!
//! Layout, top-down:
//! - [`agent`]: the [`Node`](agent::Node): deployed functions, per-function concurrency
//!   limits, the durable async queue, status;
//! - [`gateway`]: the OpenFaaS-compatible HTTP API over a node (axum);
//! - [`executor`]: the sandbox trait and its Wasm implementation (wasmtime);
//! - [`store`]: durable state in sled; [`logs`], [`metrics`]: what operators read.
//!
//! [`serve`] ties them together for `fogline up` and `fogline node`.

pub mod agent;
pub mod dispatch;
pub mod executor;
pub mod gateway;
pub mod logs;
pub mod mesh;
pub mod metrics;
pub mod quic;
pub mod store;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;

use fogline_core::config::NodeConfig;

pub use agent::Node;

/// A node that is listening.
pub struct Running {
    pub addr: SocketAddr,
    /// The QUIC endpoint's address, when QUIC is on.
    pub quic_addr: Option<SocketAddr>,
    quic: Option<quinn::Endpoint>,
    pub node: std::sync::Arc<Node>,
    pub new_token: Option<String>,
    listener: tokio::net::TcpListener,
    async_rx: tokio::sync::mpsc::Receiver<u64>,
}

/// Opens the node and binds its gateway; call [`Running::serve`] to start serving.
pub async fn bind(config: NodeConfig) -> anyhow::Result<Running> {
    bind_with(config, &[]).await
}

/// [`bind`], joining the mesh through `join` as well as the config's members.
pub async fn bind_with(config: NodeConfig, join: &[String]) -> anyhow::Result<Running> {
    let listen = config.http.listen;
    let opened = Node::open(config).await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    let addr = listener.local_addr()?;
    let node = opened.node;
    let q = &node.config.quic;
    if let Some(dir) = &q.tls_dir {
        let client = quic::Client::new(&tls::TlsDir::load(dir)?)?;
        let _ = node.peers.set(std::sync::Arc::new(client));
    }
    let quic = match (q.listen, &q.tls_dir) {
        (Some(listen), Some(dir)) => {
            let tls = tls::TlsDir::load(dir)?;
            match tls.role() {
                Some(r) if r.serves() => {}
                Some(r) => anyhow::bail!(
                    "{}: the certificate's role is {}, which cannot accept connections; issue one with --role node or bridge",
                    dir.display(),
                    r.as_str()
                ),
                None => anyhow::bail!(
                    "{}: the certificate carries no Fogline role; issue it with `fogline certs issue`",
                    dir.display()
                ),
            }
            Some(quic::bind_server(
                listen,
                &tls,
                &quic::QuicLimits::from_config(&node.config),
            )?)
        }
        _ => None,
    };
    let quic_addr = quic.as_ref().map(|e| e.local_addr()).transpose()?;
    let _ = node.addresses.set((quic_addr, addr));
    if node.config.mesh.listen.is_some() {
        let mesh = mesh::start(node.clone(), join).await?;
        let _ = node.mesh.set(mesh);
    }
    Ok(Running {
        addr,
        quic_addr,
        quic,
        node,
        new_token: opened.new_token,
        listener,
        async_rx: opened.async_rx,
    })
}

impl Running {
    /// Serves until `shutdown` resolves, then finishes in-flight requests and flushes.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let workers = tokio::spawn(self.node.clone().run_async_workers(self.async_rx));
        let endpoint = self.quic.clone();
        let stop_timeout = self.node.config.node.stop_timeout;
        let quic = self.quic.map(|endpoint| {
            let c = &self.node.config;
            let dir = c.quic.tls_dir.clone().unwrap_or_default();
            tokio::spawn(quic::serve(
                endpoint,
                self.node.clone(),
                dir,
                quic::QuicLimits::from_config(c),
                c.quic.reload_every,
            ))
        });
        let app = gateway::router(self.node.clone());
        // Graceful: in-flight requests finish, but idle keep-alive connections must not hold
        // the process up forever, so the drain has a deadline. HTTP and QUIC drain together.
        let (stopping_tx, stopping_rx) = tokio::sync::watch::channel(false);
        let node = self.node.clone();
        let server = axum::serve(self.listener, app).with_graceful_shutdown(async move {
            shutdown.await;
            // Other tiers stop sending here (the mesh hears it is leaving, QUIC refuses new
            // calls) while what is running finishes.
            node.begin_stop();
            let _ = stopping_tx.send(true);
        });
        // Whether the stop began (false: the gateway ended on its own, and the sender with it).
        let stop_began = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            rx.wait_for(|s| *s).await.is_ok()
        };
        let http = async {
            tokio::select! {
                r = server => r.map_err(|e| anyhow::anyhow!("gateway: {e}")),
                _ = async {
                    if !stop_began(stopping_rx.clone()).await {
                        std::future::pending::<()>().await;
                    }
                    tokio::time::sleep(stop_timeout).await;
                } => {
                    tracing::warn!("connections still open {stop_timeout:?} after the stop signal (node.stop_timeout); closing them");
                    Ok(())
                }
            }
        };
        let quic_drain = async {
            if let Some(e) = &endpoint {
                if stop_began(stopping_rx.clone()).await {
                    quic::drain(e, &self.node, stop_timeout).await;
                }
            }
        };
        tokio::join!(http, quic_drain).0?;
        workers.abort();
        if let Some(q) = quic {
            q.abort();
        }
        if let Some(m) = self.node.mesh.get() {
            // The goodbye was queued when the stop began; let it reach the other members
            // before the mesh connections go.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            m.stop();
        }
        self.node.stop_containers().await;
        self.node.flush().await;
        Ok(())
    }
}
