//! `fogline`: one binary for every role.
//!
//! Servers: `up` (a local node, zero configuration) and `node` (an edge node from a config
//! file). Clients of a gateway: `deploy`, `invoke`, `ls`, `rm`, `logs`, `status`.

mod client;
mod dlq;
mod federation;
mod join;
mod serve;
mod simulate;
mod swarm;
mod trace;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "fogline",
    version,
    about = "A serverless mesh for the edge-cloud continuum"
)]
struct Cli {
    #[command(flatten)]
    client: client::Common,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a local mesh with zero configuration: a router, edge nodes and a cloud bridge
    /// (data in ./.fogline); `--single` runs one node alone.
    Up(UpArgs),
    /// Run an edge node agent from a config file.
    Node(NodeArgs),
    /// Run the cloud tier: the same agent with cloud-sized limits, serving QUIC and HTTP;
    /// with --swarm its workers run as a Docker Swarm service it sizes.
    Bridge(BridgeArgs),
    /// The worker image for a bridge's Swarm service.
    #[command(subcommand)]
    Image(swarm::ImageCmd),
    /// A bridge's worker service on this Swarm manager: status, upgrade, removal.
    #[command(subcommand)]
    Swarm(swarm::SwarmCmd),
    /// Run a router: places every invocation on the device, an edge node or the cloud,
    /// wherever it is predicted to finish soonest (HTTP, QUIC and MQTT ingress).
    Router(RouterArgs),
    /// Make the cluster's certificates.
    #[command(subcommand)]
    Certs(CertsCmd),
    /// Enroll this board with a join token and start it as a node (or bridge).
    Join(join::JoinArgs),
    /// Deploy a function from a Wasm module, or every function of a stack file.
    Deploy(client::DeployArgs),
    /// Invoke a function; the request body comes from --data or stdin.
    Invoke(client::InvokeArgs),
    /// List deployed functions.
    Ls,
    /// Remove a function.
    Rm(client::RmArgs),
    /// Show a function's recent log lines.
    Logs(client::LogsArgs),
    /// Show the node's status.
    Status,
    /// Show the gossip mesh as the node sees it: one line per member.
    Mesh(client::MeshArgs),
    /// Show a router's recent placement decisions: candidates, predictions, choice, actual.
    Placements(client::PlacementsArgs),
    /// Show one call's spans across every member it touched (by its X-Call-Id).
    Trace(trace::TraceArgs),
    /// The dead-letter queue: async calls given up after their attempts or deadline.
    #[command(subcommand)]
    Dlq(dlq::DlqCmd),
    /// Peer clusters of a bridge: invite, join, list, leave, offload namespaces.
    #[command(subcommand)]
    Federation(federation::FederationCmd),
    /// Compare placement policies on a simulated continuum (seeded, deterministic).
    Simulate(simulate::SimArgs),
    /// Namespaces: functions, secrets and tokens kept apart.
    #[command(subcommand)]
    Namespace(client::NamespaceCmd),
    /// Tokens scoped to a namespace, and join tokens for new boards: mint, list, revoke.
    #[command(subcommand)]
    Token(client::TokenCmd),
    /// Secrets of a namespace, read by functions as files.
    #[command(subcommand)]
    Secret(client::SecretCmd),
}

#[derive(Args)]
struct RouterArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// Device mode: this router may also run Wasm functions itself, as one of the places.
    #[arg(long)]
    device: bool,
    /// The placement policy (overrides `[router] policy`): regression, a3e, mu,
    /// least-loaded, nearest-edge, round-robin, cloud-only or device-only.
    #[arg(long, value_parser = parse_policy)]
    policy: Option<String>,
}

fn parse_policy(s: &str) -> Result<String, String> {
    fogline_core::policies::Kind::parse(s, true).map(|k| k.name().to_string())
}

#[derive(Args)]
struct UpArgs {
    /// Folder for functions, modules, the call queue and the admin token.
    #[arg(long, default_value = ".fogline")]
    data_dir: PathBuf,
    /// Gateway address; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:8080")]
    http: SocketAddr,
    /// Edge nodes in the local mesh.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=16))]
    edges: u8,
    /// Run one node alone (gateway and sandboxes, no mesh, no router).
    #[arg(long, conflicts_with = "edges")]
    single: bool,
    /// CoAP address (UDP) of the router (or the single node); port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:5683")]
    coap: SocketAddr,
    /// Keep no call traces (`traceparent` is still carried on and every answer still has
    /// its X-Call-Id): `[trace] enabled = false` on every member.
    #[arg(long)]
    no_trace: bool,
}

#[derive(Args)]
struct NodeArgs {
    /// The node's config file (see configs/node.toml).
    #[arg(long)]
    config: PathBuf,
    /// Overrides `node.id` (the name in the mesh; default: the host name).
    #[arg(long)]
    id: Option<String>,
    /// Overrides `node.data_dir`.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Overrides `http.listen`.
    #[arg(long)]
    http: Option<SocketAddr>,
    /// Overrides `quic.listen` (turns QUIC on; needs --tls-dir or quic.tls_dir).
    #[arg(long)]
    quic: Option<SocketAddr>,
    /// Serves the gateway over HTTPS (`http.tls`), with the member's certificate unless
    /// `http.cert` and `http.key` name another.
    #[arg(long)]
    https: bool,
    /// Overrides `coap.listen` (turns the CoAP trigger on, UDP).
    #[arg(long)]
    coap: Option<SocketAddr>,
    /// Overrides `quic.tls_dir`: a folder made by `fogline certs issue`.
    #[arg(long)]
    tls_dir: Option<PathBuf>,
    /// Overrides `mesh.listen` (turns the gossip mesh on), e.g. /ip4/0.0.0.0/tcp/7001.
    #[arg(long)]
    mesh: Option<String>,
    /// A mesh member to join through: /ip4/…/tcp/…/p2p/<peer-id> (repeatable).
    #[arg(long)]
    join: Vec<String>,
    /// Overrides `mesh.site`.
    #[arg(long)]
    site: Option<String>,
}

#[derive(Args)]
struct BridgeArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// Run the workers as a Docker Swarm service sized by demand (`[swarm] enabled`).
    #[arg(long)]
    swarm: bool,
}

#[derive(Subcommand)]
enum CertsCmd {
    /// Create the cluster CA (ca.pem, ca.key) in DIR.
    Init {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Issue a certificate for NAME with a role, signed by the CA.
    Issue {
        name: String,
        /// client, operator, node, bridge or router (see the role table in the README).
        #[arg(long)]
        role: String,
        /// The CA's folder (from `certs init`).
        #[arg(long)]
        ca: PathBuf,
        /// Output folder: cert.pem, key.pem, ca.pem (a --tls-dir).
        #[arg(long)]
        out: PathBuf,
        /// Days of validity.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Issue an already expired certificate (for testing refusals).
        #[arg(long, hide = true)]
        expired: bool,
    },
    /// Revoke NAME's certificate: added to the CA's signed revocation list
    /// (DIR/revocations.json), which members refuse within seconds once one holds it.
    Revoke {
        name: String,
        /// The CA's folder (from `certs init`).
        #[arg(long)]
        ca: PathBuf,
        /// Hand the list to the member whose gateway is at URL (admin token): it spreads
        /// it over the mesh.
        #[arg(long, value_name = "URL")]
        push: Option<String>,
    },
}

impl NodeArgs {
    /// The config file with the command line's overrides applied.
    fn into_config(
        self,
        tier: Option<fogline_core::config::Tier>,
    ) -> anyhow::Result<fogline_core::config::NodeConfig> {
        let mut cfg = serve::load_node_config(&self.config)?;
        if let Some(d) = self.data_dir {
            cfg.node.data_dir = d;
        }
        if let Some(id) = self.id {
            if id.is_empty()
                || id.len() > 64
                || id.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                anyhow::bail!("--id {id:?} must be 1 to 64 characters without spaces");
            }
            cfg.node.id = Some(id);
        }
        if let Some(h) = self.http {
            cfg.http.listen = h;
        }
        if let Some(q) = self.quic {
            cfg.quic.listen = Some(q);
        }
        if let Some(c) = self.coap {
            cfg.coap.listen = Some(c);
        }
        if self.https {
            cfg.http.tls = true;
        }
        if let Some(t) = self.tls_dir {
            cfg.quic.tls_dir = Some(t);
        }
        if let Some(m) = self.mesh {
            cfg.mesh.listen = Some(m);
        }
        if let Some(s) = self.site {
            cfg.mesh.site = s;
        }
        if !self.join.is_empty() && cfg.mesh.listen.is_none() {
            anyhow::bail!(
                "--join needs the mesh on: set mesh.listen or pass --mesh /ip4/0.0.0.0/tcp/PORT"
            );
        }
        if cfg.mesh.listen.is_some() && cfg.mesh.key_file.is_none() && cfg.quic.tls_dir.is_none() {
            anyhow::bail!("the mesh needs the cluster key: pass --tls-dir DIR (holding mesh.key) or set mesh.key_file");
        }
        if let Some(t) = tier {
            cfg.node.tier = t;
        }
        if cfg.http.tls && cfg.http.cert.is_none() && cfg.quic.tls_dir.is_none() {
            anyhow::bail!(
                "--https needs a certificate: pass --tls-dir DIR (the member's own), or set http.cert and http.key"
            );
        }
        if cfg.quic.listen.is_some() && cfg.quic.tls_dir.is_none() {
            anyhow::bail!(
                "QUIC needs certificates: pass --tls-dir DIR (made by `fogline certs issue`)"
            );
        }
        Ok(cfg)
    }
}

async fn certs(c: CertsCmd, common: &client::Common) -> anyhow::Result<()> {
    use fogline_node::tls;
    match c {
        CertsCmd::Init { dir } => {
            let path = tls::init_ca(&dir)?;
            println!(
                "cluster CA created: {} (keep {} secret)",
                path.display(),
                dir.join("ca.key").display()
            );
        }
        CertsCmd::Issue {
            name,
            role,
            ca,
            out,
            days,
            expired,
        } => {
            let role = tls::parse_role(&role)?;
            let validity = if expired {
                tls::Validity::Expired
            } else {
                tls::Validity::Days(days)
            };
            tls::issue(&ca, &name, role, &out, validity)?;
            println!("issued {name} ({}) in {}", role.as_str(), out.display());
        }
        CertsCmd::Revoke { name, ca, push } => {
            let (signed, entry) = tls::revoke(&ca, &name)?;
            match &entry.fingerprint {
                Some(f) => println!("revoked the certificate of {name} (sha256 {f})"),
                None => println!(
                    "revoked every certificate naming {name} (no copy of it in {}: issued before copies were kept)",
                    ca.join("issued").display()
                ),
            }
            println!(
                "revocation list in {} (hand it to any member: --push URL, or POST /v1/revocations)",
                ca.join("revocations.json").display()
            );
            if let Some(url) = push {
                client::push_revocations(common, &url, &signed).await?;
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        match cli.command {
            Command::Up(a) if a.single => {
                let mut cfg = fogline_core::config::NodeConfig::local(a.data_dir, a.http);
                cfg.coap.listen = Some(a.coap);
                cfg.trace.enabled = !a.no_trace;
                serve::node(cfg, &[]).await
            }
            Command::Up(a) => {
                serve::local_mesh(
                    a.data_dir,
                    a.http,
                    a.coap,
                    usize::from(a.edges),
                    !a.no_trace,
                )
                .await
            }
            Command::Node(a) => {
                let join = a.join.clone();
                let cfg = a.into_config(None)?;
                check_cert_role(&cfg, fogline_node::tls::Role::Node, "node")?;
                if cfg.router.is_some() {
                    anyhow::bail!(
                        "the config has a [router] section: run it with `fogline router`"
                    );
                }
                serve::node(cfg, &join).await
            }
            Command::Router(a) => {
                let join = a.node.join.clone();
                let mut cfg = a.node.into_config(None)?;
                let r = cfg.router.get_or_insert_with(Default::default);
                if let Some(p) = a.policy {
                    r.policy = p;
                }
                if a.device {
                    r.device = true;
                    cfg.node.tier = fogline_core::config::Tier::Device;
                }
                check_cert_role(&cfg, fogline_node::tls::Role::Router, "router")?;
                serve::node(cfg, &join).await
            }
            Command::Placements(a) => client::placements(&cli.client, a).await,
            Command::Simulate(a) => simulate::run(a),
            Command::Trace(a) => trace::trace(&cli.client, a).await,
            Command::Dlq(c) => dlq::run(&cli.client, c).await,
            Command::Federation(c) => federation::run(&cli.client, c).await,
            Command::Bridge(a) => {
                let join = a.node.join.clone();
                let mut cfg = a
                    .node
                    .into_config(Some(fogline_core::config::Tier::Cloud))?;
                check_cert_role(&cfg, fogline_node::tls::Role::Bridge, "bridge")?;
                if cfg.router.is_some() {
                    anyhow::bail!(
                        "the config has a [router] section: run it with `fogline router`"
                    );
                }
                if a.swarm {
                    cfg.swarm.get_or_insert_with(Default::default).enabled = true;
                }
                let swarm = match cfg.swarm.as_ref().filter(|s| s.enabled) {
                    None => None,
                    Some(_) => match fogline_cloud_bridge::swarm::probe().await {
                        fogline_cloud_bridge::swarm::Probe::Swarm(docker) => {
                            fogline_cloud_bridge::swarm::prepare(&mut cfg)?;
                            Some(docker)
                        }
                        fogline_cloud_bridge::swarm::Probe::Local(why) => {
                            eprintln!("swarm: {why}; this bridge runs its functions itself");
                            None
                        }
                    },
                };
                serve::node_with(cfg, &join, swarm).await
            }
            Command::Image(c) => swarm::image(c).await,
            Command::Swarm(c) => swarm::swarm(c).await,
            Command::Mesh(a) => client::mesh(&cli.client, a).await,
            Command::Certs(c) => certs(c, &cli.client).await,
            Command::Join(a) => join::run(a).await,
            Command::Deploy(a) => client::deploy(&cli.client, a).await,
            Command::Invoke(a) => client::invoke(&cli.client, a).await,
            Command::Ls => client::ls(&cli.client).await,
            Command::Rm(a) => client::rm(&cli.client, a).await,
            Command::Logs(a) => client::logs(&cli.client, a).await,
            Command::Status => client::status(&cli.client).await,
            Command::Namespace(c) => client::namespace(&cli.client, c).await,
            Command::Token(c) => client::token(&cli.client, c).await,
            Command::Secret(c) => client::secret(&cli.client, c).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// A member runs with a certificate of its own role: what other members let it do follows
/// from that role, so a mismatch would fail call by call instead of once, here.
fn check_cert_role(
    cfg: &fogline_core::config::NodeConfig,
    want: fogline_node::tls::Role,
    command: &str,
) -> anyhow::Result<()> {
    let Some(dir) = &cfg.quic.tls_dir else {
        return Ok(());
    };
    match fogline_node::tls::TlsDir::load(dir)?.role() {
        Some(r) if r == want => Ok(()),
        Some(r) => anyhow::bail!(
            "`fogline {command}` needs a certificate of role {want}, but the one in {} is {r}; issue one with `fogline certs issue NAME --role {want}`",
            dir.display()
        ),
        None => anyhow::bail!(
            "{}: the certificate carries no Fogline role; issue it with `fogline certs issue`",
            dir.display()
        ),
    }
}

/// Errors print as one line, causes joined with ": ".
fn one_line(e: &anyhow::Error) -> String {
    let s = format!("{e:#}");
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}
