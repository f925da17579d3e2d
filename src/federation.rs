//! `fogline federation`: a bridge's peer clusters (the admin token of that bridge).

use anyhow::Context;
use clap::Subcommand;
use serde_json::{json, Value};

use crate::client::{check, Common, Gateway};

#[derive(Subcommand)]
pub enum FederationCmd {
    /// Mint a one-time invite on the provider's bridge; the token is printed alone on the
    /// last line.
    Invite {
        /// How long the invite may be used (e.g. 1h, 30m).
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// Share of this cluster's free capacity offered to the joiner (e.g. 90%).
        #[arg(long, default_value = "90%")]
        share: String,
    },
    /// Peer with the provider a token names (run on the consumer's bridge).
    Join {
        /// The invite (`fogfed1.…`) the provider's `fogline federation invite` printed.
        #[arg(value_name = "TOKEN")]
        invite: String,
        /// The name this cluster gives the provider (default: the provider's own).
        #[arg(long)]
        name: Option<String>,
    },
    /// Peers: direction, state, round trip, shared capacity, calls, last error.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// End a peering: no new calls, calls in flight finish, both sides forget it.
    Leave { name: String },
    /// On a provider: refuse calls of a consumer's namespace (or take them again, --off).
    Refuse {
        namespace: String,
        #[arg(long)]
        from: String,
        #[arg(long)]
        off: bool,
    },
    /// Let a namespace's calls be placed in a provider cluster (or stop, with --off).
    Offload {
        namespace: String,
        #[arg(long)]
        to: String,
        #[arg(long)]
        off: bool,
    },
}

fn parse_share(s: &str) -> anyhow::Result<u8> {
    let n: u8 = s
        .trim_end_matches('%')
        .parse()
        .with_context(|| format!("--share {s:?} must be a percentage such as 90%"))?;
    anyhow::ensure!(
        (1..=100).contains(&n),
        "--share {s:?} must be from 1% to 100%"
    );
    Ok(n)
}

async fn post(gw: &Gateway, path: &str, body: Value) -> anyhow::Result<Value> {
    let rb = gw.http.post(gw.url(path)).json(&body);
    check(gw.send(rb).await?)
        .await?
        .json()
        .await
        .context("reading the bridge's answer")
}

pub async fn run(common: &Common, c: FederationCmd) -> anyhow::Result<()> {
    let gw = Gateway::new(common)?;
    match c {
        FederationCmd::Invite { ttl, share } => {
            let ttl = humantime::parse_duration(&ttl)
                .with_context(|| format!("--ttl {ttl:?} must be a duration such as 1h"))?;
            let v = post(
                &gw,
                "/v1/federation/invites",
                json!({ "ttl_s": ttl.as_secs(), "share_pct": parse_share(&share)? }),
            )
            .await?;
            println!(
                "invite for {}% of this cluster's free capacity, valid for {}; on the consumer's bridge run `fogline federation join TOKEN`:",
                v["share_pct"],
                humantime::format_duration(ttl)
            );
            println!("{}", v["token"].as_str().unwrap_or_default());
        }
        FederationCmd::Join { invite, name } => {
            let v = post(
                &gw,
                "/v1/federation/peers",
                json!({ "token": invite, "name": name }),
            )
            .await?;
            println!(
                "peered with {} (provider, {}% share); offload a namespace with `fogline federation offload NAMESPACE --to {}`",
                v["peer"].as_str().unwrap_or("?"),
                v["share_pct"],
                v["peer"].as_str().unwrap_or("?")
            );
        }
        FederationCmd::Ls { json } => {
            let rb = gw.http.get(gw.url("/v1/federation"));
            let v: Value = check(gw.send(rb).await?).await?.json().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            println!(
                "cluster {} (peers connect to {})",
                v["cluster"].as_str().unwrap_or("?"),
                v["listen"].as_str().unwrap_or("?")
            );
            let peers = v["peers"].as_array().cloned().unwrap_or_default();
            if peers.is_empty() {
                println!("no peers");
                return Ok(());
            }
            println!(
                "{:<16} {:<9} {:<8} {:>8} {:>8} {:>6} {:>6} {:>8}  {:<20} LAST ERROR",
                "PEER",
                "DIRECTION",
                "STATE",
                "RTT MS",
                "PLACE MS",
                "SHARE",
                "CORES",
                "CALLS",
                "OFFLOADED"
            );
            let ms = |v: &Value| v.as_f64().map_or("-".to_string(), |r| format!("{r:.2}"));
            for p in peers {
                println!(
                    "{:<16} {:<9} {:<8} {:>8} {:>8} {:>5}% {:>6} {:>8}  {:<20} {}",
                    p["name"].as_str().unwrap_or("?"),
                    p["direction"].as_str().unwrap_or("?"),
                    p["state"].as_str().unwrap_or("?"),
                    ms(&p["rtt_ms"]),
                    ms(&p["placement_ms"]),
                    p["share_pct"],
                    p["shared_cores"]
                        .as_u64()
                        .map_or("-".to_string(), |c| c.to_string()),
                    p["calls"],
                    p["offloaded"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(Value::as_str)
                                .collect::<Vec<_>>()
                                .join(",")
                        })
                        .filter(|s| !s.is_empty())
                        .unwrap_or_else(|| "-".into()),
                    p["last_error"].as_str().unwrap_or("")
                );
            }
        }
        FederationCmd::Leave { name } => {
            let rb = gw
                .http
                .delete(gw.url(&format!("/v1/federation/peers/{name}")));
            let v: Value = check(gw.send(rb).await?).await?.json().await?;
            println!(
                "left {name} after {} ms (provider told: {})",
                v["waited_ms"],
                v["provider_told"].as_str().unwrap_or("not a provider")
            );
        }
        FederationCmd::Refuse {
            namespace,
            from,
            off,
        } => {
            let rb = gw
                .http
                .put(gw.url("/v1/federation/refuse"))
                .json(&json!({ "namespace": namespace, "from": from, "on": !off }));
            check(gw.send(rb).await?).await?;
            if off {
                println!("calls of {from}'s namespace {namespace} are taken again");
            } else {
                println!("calls of {from}'s namespace {namespace} are refused here (403)");
            }
        }
        FederationCmd::Offload { namespace, to, off } => {
            let rb = gw
                .http
                .put(gw.url("/v1/federation/offload"))
                .json(&json!({ "namespace": namespace, "to": to, "on": !off }));
            check(gw.send(rb).await?).await?;
            if off {
                println!("namespace {namespace} is no longer offloaded to {to}");
            } else {
                println!("calls of namespace {namespace} may now be placed in {to}");
            }
        }
    }
    Ok(())
}
