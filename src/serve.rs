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

/// The admin token line, when a token was made at this start (it is shown only once).
fn print_new_token(
    out: &mut impl Write,
    token: Option<&str>,
    data_dir: &Path,
) -> std::io::Result<()> {
    match token {
        Some(token) => writeln!(
            out,
            "admin token (shown once, kept in {}): {token}",
            data_dir.join("admin.token").display()
        ),
        None => Ok(()),
    }
}

pub async fn node(cfg: NodeConfig, join: &[String]) -> anyhow::Result<()> {
    node_with(cfg, join, None).await
}

/// A member; a bridge given a Swarm manager (`swarm`) places on its workers instead of
/// running functions.
pub async fn node_with(
    mut cfg: NodeConfig,
    join: &[String],
    swarm: Option<bollard::Docker>,
) -> anyhow::Result<()> {
    init_tracing();
    let data_dir = cfg.node.data_dir.clone();
    // A member in a container or a cgroup sized as a small board fits itself to it.
    let sized = fogline_core::sizing::fit(&mut cfg, fogline_node::sysinfo::limits());
    if let Some(s) = &sized {
        tracing::info!("{s}");
    }
    let running = fogline_node::bind_with(cfg, join).await?;
    let stop = shutdown_signal();
    if running.scheme == "http" && !running.addr.ip().is_loopback() {
        tracing::warn!(
            "the gateway serves plain HTTP on {}: tokens and results cross the network unencrypted; serve HTTPS with --https (http.tls = true)",
            running.addr
        );
    }
    let swarm_cfg = running.node.config.swarm.clone().filter(|s| s.enabled);
    let role = match (&running.node.config.router, swarm, swarm_cfg) {
        (Some(r), Some(docker), Some(sw)) => {
            let scope = fogline_cloud_bridge::swarm::scope(&sw);
            let router = fogline_router::Router::install_scoped(
                &running.node,
                r.clone(),
                Some(scope.clone()),
            );
            fogline_cloud_bridge::swarm::start(&running.node, &router, &scope, docker, sw);
            "bridge"
        }
        (Some(r), _, _) => {
            fogline_router::Router::install(&running.node, r.clone());
            "router"
        }
        (None, _, _) => "node",
    };
    let federation = match running.node.config.federation.clone() {
        None => None,
        Some(_) if running.node.config.node.tier != fogline_core::config::Tier::Cloud => {
            anyhow::bail!(
                "[federation] is for a bridge (`fogline bridge`): it links whole clusters"
            )
        }
        Some(f) => Some(fogline_cloud_bridge::federation::start(&running.node, f)?),
    };
    {
        // The first line is the contract scripts rely on: where the gateway listens.
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "gateway listening on {}://{}",
            running.scheme, running.addr
        )?;
        if let Some(q) = running.quic_addr {
            writeln!(out, "quic listening on {q}")?;
        }
        if let Some(c) = running.coap_addr {
            writeln!(out, "coap listening on {c}")?;
        }
        if let Some(e) = running.enroll_addr {
            writeln!(out, "enroll listening on {e}")?;
        }
        if let Some(m) = running.node.links.mesh.get() {
            writeln!(out, "mesh listening on {}", m.address)?;
        }
        if let Some(f) = &federation {
            writeln!(out, "federation listening on {}", f.local_addr())?;
        }
        print_new_token(&mut out, running.new_token.as_deref(), &data_dir)?;
        if let Some(s) = &sized {
            writeln!(out, "{s}")?;
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
    running.serve(stop).await?;
    eprintln!("stopped");
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C. The handlers are registered when this is called, not
/// when the future is first polled: a member is told to stop as soon as it said it is ready.
fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate()).ok();
        let int = signal(SignalKind::interrupt()).ok();
        async move {
            match (term, int) {
                (Some(mut t), Some(mut i)) => {
                    tokio::select! {
                        _ = t.recv() => {}
                        _ = i.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async move {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FOGLINE_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(
            "info,sled=warn,cranelift=warn,wasmtime=warn,libp2p_swarm=warn",
        )
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// `fogline up`: a whole local mesh in one process, with zero configuration: a cloud
/// bridge, `edges` edge nodes and a router in front of them, with a fresh cluster CA and a
/// certificate each (kept in DATA/pki), meshed over loopback. The router's gateway is the
/// one to call; its data folder is DATA itself, so the admin token is in DATA/admin.token.
pub async fn local_mesh(
    data_dir: std::path::PathBuf,
    http: std::net::SocketAddr,
    coap: std::net::SocketAddr,
    edges: usize,
    trace: bool,
) -> anyhow::Result<()> {
    use fogline_core::config::{RouterSection, Tier};
    use fogline_node::tls::{self, Role, Validity};
    init_tracing();
    let pki = data_dir.join("pki");
    if !pki.join("ca.pem").exists() {
        tls::init_ca(&pki)?;
    }
    let member = |name: &str, role: Role, tier: Tier, http: std::net::SocketAddr| {
        let certs = pki.join(name);
        if !certs.join("cert.pem").exists() {
            tls::issue(&pki, name, role, &certs, Validity::Days(3650))?;
        }
        let dir = if role == Role::Router {
            data_dir.clone()
        } else {
            data_dir.join(name)
        };
        let mut c = NodeConfig::local(dir, http);
        c.node.id = Some(name.to_string());
        c.node.tier = tier;
        c.quic.listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
        c.quic.tls_dir = Some(certs);
        c.mesh.listen = Some("/ip4/127.0.0.1/tcp/0".into());
        c.mesh.mdns = false;
        c.trace.enabled = trace;
        anyhow::Ok(c)
    };
    let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let cloud = fogline_node::bind(member("cloud", Role::Bridge, Tier::Cloud, any)?).await?;
    let seed = cloud
        .node
        .links
        .mesh
        .get()
        .map(|m| m.address.clone())
        .context("the bridge's mesh did not start")?;
    let join = [seed];
    let mut nodes = vec![("cloud".to_string(), cloud)];
    for i in 1..=edges {
        let name = format!("edge-{i}");
        let r = fogline_node::bind_with(member(&name, Role::Node, Tier::Edge, any)?, &join).await?;
        nodes.push((name, r));
    }
    let mut rc = member("router", Role::Router, Tier::Edge, http)?;
    rc.router = Some(RouterSection::default());
    rc.coap.listen = Some(coap);
    let router = fogline_node::bind_with(rc, &join).await?;
    fogline_router::Router::install(&router.node, RouterSection::default());
    // Ready means ready: the router's view holds every member before the first call can
    // come in (gossip takes up to an interval), so no early call meets "no live place".
    if let Some(mesh) = router.node.links.mesh.get() {
        let want = nodes.len();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        loop {
            let alive = mesh.with_view(|v| {
                v.members()
                    .filter(|m| {
                        m.state == fogline_core::mesh::State::Alive
                            && m.report.node != router.node.id
                    })
                    .count()
            });
            if alive >= want {
                break;
            }
            if std::time::Instant::now() > deadline {
                tracing::warn!("only {alive} of {want} members reached the router's view in 15 s");
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    let stop = shutdown_signal();
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "gateway listening on http://{}", router.addr)?;
        if let Some(c) = router.coap_addr {
            writeln!(out, "coap listening on {c}")?;
        }
        print_new_token(&mut out, router.new_token.as_deref(), &data_dir)?;
        for (name, r) in &nodes {
            writeln!(
                out,
                "  {name:<8} {} node: http://{}  quic {}",
                r.node.config.node.tier.as_str(),
                r.addr,
                r.quic_addr.map(|a| a.to_string()).unwrap_or_default()
            )?;
        }
        writeln!(
            out,
            "local mesh ready: a router placing on {} edge node(s) and a cloud bridge; data in {}",
            edges,
            data_dir.display()
        )?;
        out.flush()?;
    }
    // One stop signal for every member.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(router.serve(stopped(stop_rx.clone()))));
    for (_, r) in nodes {
        tasks.push(tokio::spawn(r.serve(stopped(stop_rx.clone()))));
    }
    stop.await;
    let _ = stop_tx.send(true);
    for t in tasks {
        match t.await {
            Ok(Err(e)) => eprintln!("error: {e}"),
            Err(e) => eprintln!("error: {e}"),
            Ok(Ok(())) => {}
        }
    }
    eprintln!("stopped");
    Ok(())
}
