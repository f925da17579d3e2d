//! `fogline dlq`: the async calls a node gave up on, each with every attempt's reason;
//! replay one (it is queued again under its id) or drop it.

use anyhow::Context;
use clap::Subcommand;

use crate::client::{check, Common, Gateway};

#[derive(Subcommand)]
pub enum DlqCmd {
    /// List the dead calls of --namespace (default openfaas-fn), oldest first.
    Ls,
    /// Show one dead call: function, why it was given up, and every attempt.
    Show { id: String },
    /// Queue a dead call again under its id, with no attempts made and a new deadline.
    Replay { id: String },
    /// Drop a dead call for good.
    Drop { id: String },
}

fn check_id(id: &str) -> anyhow::Result<&str> {
    if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(id)
    } else {
        anyhow::bail!("{id:?} is not a call id: call ids are 32 hex digits (the id the 202 gave)")
    }
}

pub async fn run(common: &Common, c: DlqCmd) -> anyhow::Result<()> {
    let gw = Gateway::new(common)?;
    match c {
        DlqCmd::Ls => {
            let rb = gw.http.get(gw.url("/v1/dlq")).query(&gw.ns);
            let list: Vec<serde_json::Value> = check(gw.send(rb).await?)
                .await?
                .json()
                .await
                .context("reading the dead-letter queue")?;
            if list.is_empty() {
                println!("the dead-letter queue is empty");
            } else {
                println!(
                    "{:<32}  {:<20}  {:>8}  {:<24}  REASON",
                    "CALL", "FUNCTION", "ATTEMPTS", "GIVEN UP"
                );
            }
            for d in &list {
                println!(
                    "{:<32}  {:<20}  {:>8}  {:<24}  {}",
                    d["id"].as_str().unwrap_or("?"),
                    d["function"].as_str().unwrap_or("?"),
                    d["attempts"].as_array().map_or(0, Vec::len),
                    when(d["failed_ms"].as_u64().unwrap_or(0)),
                    d["reason"].as_str().unwrap_or("")
                );
            }
        }
        DlqCmd::Show { id } => {
            let rb = gw.http.get(gw.url(&format!("/v1/dlq/{}", check_id(&id)?)));
            let d: serde_json::Value = check(gw.send(rb).await?)
                .await?
                .json()
                .await
                .context("reading the dead call")?;
            println!("call      {}", d["id"].as_str().unwrap_or("?"));
            println!("function  {}", d["function"].as_str().unwrap_or("?"));
            println!(
                "given up  {} — {}",
                when(d["failed_ms"].as_u64().unwrap_or(0)),
                d["reason"].as_str().unwrap_or("")
            );
            if let Some(k) = d["idempotency_key"].as_str() {
                println!("key       {k}");
            }
            if let Some(cb) = d["callback"].as_str() {
                println!("callback  {cb}");
            }
            println!("body      {} bytes", d["body_bytes"].as_u64().unwrap_or(0));
            for (i, a) in d["attempts"].as_array().into_iter().flatten().enumerate() {
                println!(
                    "attempt {:>2}  {}  HTTP {}  {}{}",
                    i + 1,
                    when(a["at_ms"].as_u64().unwrap_or(0)),
                    a["status"].as_u64().unwrap_or(0),
                    a["place"]
                        .as_str()
                        .map(|p| format!("at {p}: "))
                        .unwrap_or_default(),
                    a["reason"].as_str().unwrap_or("")
                );
            }
        }
        DlqCmd::Replay { id } => {
            let rb = gw
                .http
                .post(gw.url(&format!("/v1/dlq/{}/replay", check_id(&id)?)));
            let text = check(gw.send(rb).await?).await?.text().await?;
            println!("{}", text.trim());
        }
        DlqCmd::Drop { id } => {
            let rb = gw
                .http
                .delete(gw.url(&format!("/v1/dlq/{}", check_id(&id)?)));
            let text = check(gw.send(rb).await?).await?.text().await?;
            println!("{}", text.trim());
        }
    }
    Ok(())
}

/// Unix ms as RFC 3339 (UTC, seconds).
fn when(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}
