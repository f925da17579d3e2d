//! `fogline image build` (the worker image, made here from this binary) and `fogline swarm
//! …` (the bridge's worker service on the local Swarm manager: status, rolling upgrade,
//! removal), through the engine's API.

use std::path::PathBuf;

use anyhow::Context;
use bollard::Docker;
use clap::Subcommand;
use fogline_cloud_bridge::swarm::{image, service};

#[derive(Subcommand)]
pub enum ImageCmd {
    /// Build the worker image from this binary (FROM scratch, the binary and the shared
    /// libraries it links), pulling nothing.
    Build {
        /// The image's name.
        #[arg(long, default_value = concat!("fogline:", env!("CARGO_PKG_VERSION")))]
        tag: String,
        /// The binary to put in it (default: this one).
        #[arg(long)]
        binary: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum SwarmCmd {
    /// The worker service: replicas desired and running, image, tasks.
    Status {
        #[arg(long, default_value = "fogline-workers")]
        service: String,
    },
    /// Replace the workers' image, one at a time, each new one started before an old one
    /// says goodbye and drains.
    Upgrade {
        /// The new image (`fogline image build --tag …`).
        #[arg(long)]
        image: String,
        #[arg(long, default_value = "fogline-workers")]
        service: String,
    },
    /// Remove the worker service and its join-token secrets (the workers leave the mesh
    /// with a goodbye each).
    Down {
        #[arg(long, default_value = "fogline-workers")]
        service: String,
    },
}

fn docker() -> anyhow::Result<Docker> {
    Docker::connect_with_local_defaults().context("cannot reach the Docker engine")
}

pub async fn image(c: ImageCmd) -> anyhow::Result<()> {
    match c {
        ImageCmd::Build { tag, binary } => {
            let binary = match binary {
                Some(b) => b,
                None => std::env::current_exe().context("cannot find this binary")?,
            };
            let docker = docker()?;
            let id = image::build(&docker, &binary, &tag, |m| eprintln!("{m}")).await?;
            // The last line of stdout is the image's name, for scripts.
            eprintln!("built {id}");
            println!("{tag}");
            Ok(())
        }
    }
}

pub async fn swarm(c: SwarmCmd) -> anyhow::Result<()> {
    let docker = docker()?;
    if let Some(why) = service::manager(&docker).await? {
        anyhow::bail!("{why}");
    }
    match c {
        SwarmCmd::Status { service: name } => {
            let Some(s) = service::find(&docker, &name).await? else {
                anyhow::bail!("no Swarm service named {name}");
            };
            let image = s
                .spec
                .as_ref()
                .and_then(|s| s.task_template.as_ref())
                .and_then(|t| t.container_spec.as_ref())
                .and_then(|c| c.image.clone())
                .unwrap_or_default();
            println!(
                "{name}: {} desired, {} running, image {image}, bridge {}",
                service::replicas(&s),
                service::running(&docker, &name).await?,
                service::label(&s, service::OWNER).unwrap_or("?")
            );
            Ok(())
        }
        SwarmCmd::Upgrade {
            image,
            service: name,
        } => service::upgrade(&docker, &name, &image, |m| eprintln!("{m}")).await,
        SwarmCmd::Down { service: name } => {
            if service::remove(&docker, &name).await? {
                println!("removed the service {name} and its secrets");
            } else {
                println!("no service named {name}");
            }
            Ok(())
        }
    }
}
