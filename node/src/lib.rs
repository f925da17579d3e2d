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
pub mod executor;
pub mod gateway;
pub mod logs;
pub mod metrics;
pub mod store;

use std::future::Future;
use std::net::SocketAddr;

use fogline_core::config::NodeConfig;

pub use agent::Node;

/// A node that is listening.
pub struct Running {
    pub addr: SocketAddr,
    pub node: std::sync::Arc<Node>,
    pub new_token: Option<String>,
    listener: tokio::net::TcpListener,
    async_rx: tokio::sync::mpsc::Receiver<u64>,
}

/// Opens the node and binds its gateway; call [`Running::serve`] to start serving.
pub async fn bind(config: NodeConfig) -> anyhow::Result<Running> {
    let listen = config.http.listen;
    let opened = Node::open(config).await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    let addr = listener.local_addr()?;
    Ok(Running {
        addr,
        node: opened.node,
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
        let app = gateway::router(self.node.clone());
        axum::serve(self.listener, app)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(|e| anyhow::anyhow!("gateway: {e}"))?;
        workers.abort();
        self.node.flush().await;
        Ok(())
    }
}
