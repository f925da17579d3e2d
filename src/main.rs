//! `fogline`: one binary for every role.
//!
//! Servers: `up` (a local node, zero configuration) and `node` (an edge node from a config
//! file). Clients of a gateway: `deploy`, `invoke`, `ls`, `rm`, `logs`, `status`.

mod client;
mod serve;

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
    /// Run a local node and gateway with zero configuration (data in ./.fogline).
    Up(UpArgs),
    /// Run an edge node agent from a config file.
    Node(NodeArgs),
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
}

#[derive(Args)]
struct UpArgs {
    /// Folder for functions, modules, the call queue and the admin token.
    #[arg(long, default_value = ".fogline")]
    data_dir: PathBuf,
    /// Gateway address; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:8080")]
    http: SocketAddr,
}

#[derive(Args)]
struct NodeArgs {
    /// The node's config file (see configs/node.toml).
    #[arg(long)]
    config: PathBuf,
    /// Overrides `node.data_dir`.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Overrides `http.listen`.
    #[arg(long)]
    http: Option<SocketAddr>,
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
            Command::Up(a) => {
                let cfg = fogline_core::config::NodeConfig::local(a.data_dir, a.http);
                serve::node(cfg).await
            }
            Command::Node(a) => {
                let mut cfg = serve::load_node_config(&a.config)?;
                if let Some(d) = a.data_dir {
                    cfg.node.data_dir = d;
                }
                if let Some(h) = a.http {
                    cfg.http.listen = h;
                }
                serve::node(cfg).await
            }
            Command::Deploy(a) => client::deploy(&cli.client, a).await,
            Command::Invoke(a) => client::invoke(&cli.client, a).await,
            Command::Ls => client::ls(&cli.client).await,
            Command::Rm(a) => client::rm(&cli.client, a).await,
            Command::Logs(a) => client::logs(&cli.client, a).await,
            Command::Status => client::status(&cli.client).await,
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

/// Errors print as one line, causes joined with ": ".
fn one_line(e: &anyhow::Error) -> String {
    let s = format!("{e:#}");
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}
