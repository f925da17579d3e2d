//! The server roles: start a node, print where it listens, stop cleanly on a signal.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use fogline_core::config::NodeConfig;

pub fn load_node_config(path: &Path) -> anyhow::Result<NodeConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config {}", path.display()))?;
    Ok(NodeConfig::from_toml(&path.display().to_string(), &text)?)
}

pub async fn node(cfg: NodeConfig, join: &[String]) -> anyhow::Result<()> {
    init_tracing();
    let data_dir = cfg.node.data_dir.clone();
    let running = fogline_node::bind_with(cfg, join).await?;
    let role = match &running.node.config.router {
        Some(r) => {
            fogline_router::Router::install(&running.node, r.clone());
            "router"
        }
        None => "node",
    };
    {
        // The first line is the contract scripts rely on: where the gateway listens.
        let mut out = std::io::stdout().lock();
        writeln!(out, "gateway listening on http://{}", running.addr)?;
        if let Some(q) = running.quic_addr {
            writeln!(out, "quic listening on {q}")?;
        }
        if let Some(m) = running.node.mesh.get() {
            writeln!(out, "mesh listening on {}", m.address)?;
        }
        if let Some(token) = &running.new_token {
            writeln!(
                out,
                "admin token (shown once, kept in {}): {token}",
                data_dir.join("admin.token").display()
            )?;
        }
        writeln!(
            out,
            "{} {role} {} ready; data in {}",
            running.node.config.node.tier.as_str(),
            running.node.id,
            data_dir.display()
        )?;
        out.flush()?;
    }
    // After the start lines, which scripts read first.
    if let Some(m) = running
        .node
        .config
        .router
        .as_ref()
        .and_then(|r| r.mqtt.clone())
    {
        tokio::spawn(fogline_router::mqtt::run(
            std::sync::Arc::downgrade(&running.node),
            m,
            running.node.id.clone(),
        ));
    }
    running.serve(shutdown_signal()).await?;
    eprintln!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FOGLINE_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,sled=warn,cranelift=warn,wasmtime=warn")
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}
