//! `fogline join TOKEN`: a new board enrolls with a join token and starts as a member.
//! Its key is made here and never leaves it; the issuer the token names signs its
//! certificate (trusted only if it presents the cluster CA the token pins); the folder and
//! a config are written, then the node starts (or not, with `--no-start`).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context};
use clap::Args;
use fogline_core::enroll::{EnrollRequest, JoinToken};
use fogline_core::roles::Role;

#[derive(Args)]
pub struct JoinArgs {
    /// The join token, from `fogline token create --role node` on a bridge or router.
    #[arg(required_unless_present = "token_file")]
    token: Option<String>,
    /// Read the join token from a file instead (a mounted secret).
    #[arg(long, conflicts_with = "token")]
    token_file: Option<PathBuf>,
    /// This member's name in the cluster (default: the host name).
    #[arg(long, env = "FOGLINE_ID")]
    id: Option<String>,
    /// The tier this member serves (default: cloud for a bridge's token, else edge).
    #[arg(long, value_parser = ["edge", "cloud"])]
    tier: Option<String>,
    /// Where the node keeps its data, certificate and config.
    #[arg(long, default_value = "/var/lib/fogline")]
    data_dir: PathBuf,
    /// Where to write the config (default: DATA_DIR/node.toml); an existing file is kept.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The gateway's address.
    #[arg(long, default_value = "0.0.0.0:8080")]
    http: SocketAddr,
    /// QUIC for the other tiers.
    #[arg(long, default_value = "0.0.0.0:4433")]
    quic: SocketAddr,
    /// The mesh's listen address.
    #[arg(long, default_value = "/ip4/0.0.0.0/tcp/7001")]
    mesh: String,
    /// Find members only through the issuer's join address, not mDNS (workers on a
    /// shared host network).
    #[arg(long)]
    no_mdns: bool,
    /// This member is a task of this Swarm service (a bridge's workers are): it also
    /// removes function containers the service's killed tasks left on this host.
    #[arg(long, env = "FOGLINE_SWARM_SERVICE")]
    swarm_service: Option<String>,
    /// Only enroll and write the files; start later with `fogline node --config …`.
    #[arg(long)]
    no_start: bool,
    /// Replace an existing config (the package's default /etc/fogline/node.toml).
    #[arg(long)]
    force: bool,
}

pub async fn run(a: JoinArgs) -> anyhow::Result<()> {
    let text = match (&a.token, &a.token_file) {
        (Some(t), _) => t.clone(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the join token from {}", path.display()))?,
        (None, None) => bail!("give the join token, or --token-file"),
    };
    let token = JoinToken::decode(&text).map_err(|e| anyhow!("{e}"))?;
    let name = a.id.unwrap_or_else(fogline_node::sysinfo::hostname);
    let cfg_path = a.config.unwrap_or_else(|| a.data_dir.join("node.toml"));
    if cfg_path.exists() && !a.force {
        bail!(
            "{} exists already: this board has joined before (start it with `fogline node --config {}`); pass another --config, or --force to replace it",
            cfg_path.display(),
            cfg_path.display()
        );
    }
    std::fs::create_dir_all(&a.data_dir)
        .with_context(|| format!("cannot create {}", a.data_dir.display()))?;
    let (key_pem, public) = fogline_node::tls::new_member_key()?;
    let req = EnrollRequest {
        token: token.token.clone(),
        name: name.clone(),
        public_key: hex::encode(public),
    };
    let reply = fogline_node::enroll::request(&token, &req).await?;
    let tls_dir = a.data_dir.join("tls");
    let signed = fogline_node::tls::Signed {
        cert_pem: reply.cert_pem,
        ca_pem: reply.ca_pem,
        mesh_key: (!reply.mesh_key.is_empty()).then_some(reply.mesh_key),
    };
    fogline_node::tls::write_member_dir(&tls_dir, &signed, &key_pem)?;
    // The issuer signed what this board asked for, and the folder holds together.
    let loaded = fogline_node::tls::TlsDir::load(&tls_dir)?;
    if loaded.name().as_deref() != Some(name.as_str()) || loaded.role() != Some(reply.role) {
        bail!(
            "the issuer's certificate is not for {name} ({})",
            reply.role
        );
    }
    let tier = match a.tier.as_deref() {
        Some(t) => t,
        None if reply.role == Role::Bridge => "cloud",
        None => "edge",
    };
    // A wildcard listener is told to others as the address this host reaches the issuer
    // from (on a multi-host swarm, each host's own).
    let advertise = if a.quic.ip().is_unspecified() {
        Some(route_to(&token.addr).with_context(|| {
            format!(
                "--quic {} is a wildcard, and the address this host uses to reach {} cannot be found",
                a.quic, token.addr
            )
        })?)
    } else {
        None
    };
    let mut text = format!(
        "# Written by `fogline join` ({name}, {role}); start with `fogline {cmd} --config {cfg}`.\nversion = 1\n\n[node]\ndata_dir = {data:?}\ntier = \"{tier}\"\n\n[http]\nlisten = \"{http}\"\n\n[quic]\nlisten = \"{quic}\"\ntls_dir = {tls:?}\n\n[mesh]\nlisten = {mesh:?}\njoin = {join:?}\n",
        role = reply.role,
        cmd = if reply.role == Role::Bridge { "bridge" } else { "node" },
        cfg = cfg_path.display(),
        data = a.data_dir.display().to_string(),
        http = a.http,
        quic = a.quic,
        tls = tls_dir.display().to_string(),
        mesh = a.mesh,
        join = reply.join,
    );
    if let Some(ip) = advertise {
        text = text.replacen(
            "\n[mesh]\n",
            &format!("advertise = \"{ip}\"\n\n[mesh]\n"),
            1,
        );
    }
    if let Some(site) = &reply.site {
        text.push_str(&format!("site = {site:?}\n"));
    }
    if a.no_mdns {
        text.push_str("mdns = false\n");
    }
    if let Some(ms) = reply.interval_ms {
        text.push_str(&format!("interval = \"{ms}ms\"\n"));
    }
    if let Some(s) = &a.swarm_service {
        text.push_str(&format!("\n[container]\nswarm_service = {s:?}\n"));
    }
    // Renewed from the same issuer before it expires.
    text.push_str(&format!("\n[renew]\nissuer = {:?}\n", token.addr));
    std::fs::write(&cfg_path, text)
        .with_context(|| format!("cannot write {}", cfg_path.display()))?;
    let said = format!(
        "joined the cluster as {name} ({}) through {}; certificate in {}, config in {}",
        reply.role,
        token.addr,
        tls_dir.display(),
        cfg_path.display()
    );
    if a.no_start {
        println!("{said}");
        return Ok(());
    }
    // The start lines stay the first lines of stdout, as for every server role.
    eprintln!("{said}");
    let cfg = crate::serve::load_node_config(&cfg_path)?;
    crate::serve::node(cfg, &[]).await
}

/// The local address this host sends from to reach `addr` (`HOST:PORT`); nothing is sent.
fn route_to(addr: &str) -> anyhow::Result<std::net::IpAddr> {
    use std::net::ToSocketAddrs as _;
    let to = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| anyhow!("{addr} resolves to no address"))?;
    let any: SocketAddr = if to.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let s = std::net::UdpSocket::bind(any)?;
    s.connect(to)?;
    Ok(s.local_addr()?.ip())
}
