//! `fogline trace ID`: one call's spans across every member it touched, as a tree with
//! durations (the gateway gathers them: its own, and those of the members its attempts
//! went to).

use anyhow::Context;
use clap::Args;

use crate::client::{check, Common, Gateway};

#[derive(Args)]
pub struct TraceArgs {
    /// The call's id (`X-Call-Id`, or the id an async call's 202 gave) or its trace id.
    id: String,
    /// Print the gateway's JSON instead of the tree.
    #[arg(long)]
    json: bool,
}

pub async fn trace(common: &Common, a: TraceArgs) -> anyhow::Result<()> {
    if a.id.len() != 32 || !a.id.bytes().all(|b| b.is_ascii_hexdigit()) {
        anyhow::bail!(
            "{:?} is not a call id or trace id: both are 32 hex digits (X-Call-Id, or the traceparent's second field)",
            a.id
        );
    }
    let gw = Gateway::new(common)?;
    let url = gw.url(&format!("/v1/traces/{}", a.id.to_ascii_lowercase()));
    let resp = check(gw.send(gw.http.get(url)).await?).await?;
    let v: serde_json::Value = resp.json().await.context("reading the trace")?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    print!("{}", render(&v));
    Ok(())
}

/// The tree as text: offset from the first span, duration, member, indented step, details.
fn render(v: &serde_json::Value) -> String {
    use std::fmt::Write;
    let empty = Vec::new();
    let spans = v["spans"].as_array().unwrap_or(&empty);
    let start = spans
        .iter()
        .filter_map(|s| s["start_us"].as_u64())
        .min()
        .unwrap_or(0);
    let end = spans
        .iter()
        .filter_map(|s| Some(s["start_us"].as_u64()? + s["duration_us"].as_u64()?))
        .max()
        .unwrap_or(start);
    let members: std::collections::BTreeSet<&str> =
        spans.iter().filter_map(|s| s["member"].as_str()).collect();
    let calls: Vec<&str> = v["calls"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .filter_map(|c| c.as_str())
        .collect();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "trace {}  call {}  {:.2} ms across {} member(s): {}",
        v["trace_id"].as_str().unwrap_or("?"),
        if calls.is_empty() {
            "-".to_string()
        } else {
            calls.join(", ")
        },
        (end - start) as f64 / 1e3,
        members.len(),
        members.into_iter().collect::<Vec<_>>().join(", ")
    );
    let _ = writeln!(
        out,
        "{:>9} {:>9}  {:<14} {:<26} DETAILS",
        "AT ms", "TOOK ms", "MEMBER", "STEP"
    );
    for (i, s) in spans.iter().enumerate() {
        let depth = s["depth"].as_u64().unwrap_or(0) as usize;
        let name = s["name"].as_str().unwrap_or("?");
        let took = s["duration_us"].as_u64().unwrap_or(0);
        let mut details: Vec<String> = s["attrs"]
            .as_array()
            .unwrap_or(&empty)
            .iter()
            .filter_map(|kv| Some(format!("{}={}", kv[0].as_str()?, kv[1].as_str()?)))
            .collect();
        // An attempt's time not spent on the member it went to: the network and transfer.
        if name == "attempt" {
            let id = s["span_id"].as_str();
            let remote: u64 = spans[i + 1..]
                .iter()
                .take_while(|c| c["depth"].as_u64().unwrap_or(0) as usize > depth)
                .filter(|c| c["parent_id"].as_str() == id && c["member"] != s["member"])
                .filter_map(|c| c["duration_us"].as_u64())
                .sum();
            if remote > 0 {
                details.push(format!(
                    "network+transfer={:.2}ms",
                    took.saturating_sub(remote) as f64 / 1e3
                ));
            }
        }
        let step = format!("{}{name}", "  ".repeat(depth));
        let _ = writeln!(
            out,
            "{:>9.2} {:>9.2}  {:<14} {:<26} {}",
            s["start_us"]
                .as_u64()
                .unwrap_or(start)
                .saturating_sub(start) as f64
                / 1e3,
            took as f64 / 1e3,
            s["member"].as_str().unwrap_or("?"),
            step,
            details.join(" ")
        );
    }
    if let Some(u) = v["unreachable"].as_array().filter(|u| !u.is_empty()) {
        for m in u {
            let _ = writeln!(out, "not reached: {}", m.as_str().unwrap_or("?"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_attempt_shows_its_network_time() {
        let v = serde_json::json!({
            "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
            "calls": ["c1"],
            "unreachable": ["edge-2 (127.0.0.1:1): timed out"],
            "spans": [
                {"span_id": "01", "parent_id": null, "name": "http", "member": "router",
                 "start_us": 1000, "duration_us": 5000, "attrs": [["status", "200"]], "depth": 0},
                {"span_id": "02", "parent_id": "01", "name": "attempt", "member": "router",
                 "start_us": 1100, "duration_us": 4000, "attrs": [["place", "edge-1"]], "depth": 1},
                {"span_id": "03", "parent_id": "02", "name": "serve", "member": "edge-1",
                 "start_us": 1600, "duration_us": 3000, "attrs": [], "depth": 2},
                {"span_id": "04", "parent_id": "03", "name": "run", "member": "edge-1",
                 "start_us": 1700, "duration_us": 2500, "attrs": [], "depth": 3}
            ]
        });
        let t = render(&v);
        assert!(
            t.contains("call c1  5.00 ms across 2 member(s): edge-1, router"),
            "{t}"
        );
        assert!(t.contains("place=edge-1 network+transfer=1.00ms"), "{t}");
        assert!(t.contains("      run"), "{t}");
        assert!(t.contains("not reached: edge-2"), "{t}");
    }
}
