//! The consumer's side of the link: every half second, each provider is asked for its
//! summary. An answer is the link's liveness and a round-trip sample (smoothed as the mesh
//! smooths pings); no answer within `dead_after` shows the provider dead, and it is no
//! longer offered as a place until it answers again. The places are gossiped after every
//! round.

use std::sync::Weak;
use std::time::{Duration, Instant};

use fogline_core::federation::{FedReply, FedRequest};

use super::store::Direction;
use super::{lock, Federation};

const EVERY: Duration = Duration::from_millis(500);

pub(super) async fn run(fed: Weak<Federation>) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(f) = fed.upgrade() else { return };
        let providers: Vec<String> = f
            .saved()
            .peers
            .iter()
            .filter(|p| p.direction == Direction::Provider)
            .map(|p| p.name.clone())
            .collect();
        let polls = providers.iter().map(|name| poll(&f, name));
        futures_util::future::join_all(polls).await;
        if let Some(node) = f.node.upgrade() {
            f.offer(&node);
        }
    }
}

async fn poll(f: &Federation, name: &str) {
    let link = lock(&f.live).get(name).and_then(|l| l.link.clone());
    let Some(link) = link else { return };
    let Some(addr) = f.provider_addr(name).await else {
        note_error(f, name, "cannot resolve its address".into());
        return;
    };
    let t = Instant::now();
    let wait = f.cfg.dead_after.min(Duration::from_secs(1));
    match tokio::time::timeout(wait, link.federate(addr, FedRequest::Summary)).await {
        Ok(Ok((FedReply::Summary(s), bytes))) => {
            let ms = t.elapsed().as_secs_f64() * 1e3;
            let mut live = lock(&f.live);
            let Some(l) = live.get_mut(name) else { return };
            let back = !f.alive(l);
            l.rtt_ms = Some(match l.rtt_ms {
                Some(old) if !back => 0.875 * old + 0.125 * ms,
                _ => ms,
            });
            l.last_ok = Some(Instant::now());
            l.summary = s.bounded();
            l.summary_bytes += bytes as u64;
            l.summaries += 1;
            if back {
                tracing::info!("federation: provider {name} answers ({ms:.1} ms)");
            }
        }
        Ok(Ok((other, _))) => note_error(f, name, format!("unexpected answer {other:?}")),
        Ok(Err(e)) => {
            // A stale connection (the provider restarted) is replaced on the next round; an
            // answer that is an error leaves the connection as it is.
            if !matches!(e, fogline_node::quic::QuicError::Remote(_)) {
                link.forget(addr).await;
            }
            note_error(f, name, e.to_string());
        }
        Err(_) => {
            link.forget(addr).await;
            note_error(f, name, format!("no answer within {wait:?}"));
        }
    }
}

fn note_error(f: &Federation, name: &str, why: String) {
    let mut live = lock(&f.live);
    let Some(l) = live.get_mut(name) else { return };
    let was_alive = f.alive(l);
    l.last_error = Some(why.clone());
    // The address is looked up again: a provider may have moved.
    l.addr = None;
    if was_alive
        && l.last_ok
            .is_some_and(|t| t.elapsed() >= Duration::from_millis(900))
    {
        tracing::warn!("federation: provider {name} is not answering: {why}");
    }
}
