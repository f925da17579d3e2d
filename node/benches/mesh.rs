//! The gossip mesh at 50 members: in-process swarms over real loopback TCP sockets, each
//! with the cluster key, Noise and Yamux, as `fogline node` runs them.
//!
//! `cargo bench -p fogline-node --bench mesh [-- MEMBERS]` (release; default 50). Prints,
//! beside the protocol's own floors (the report interval, and the 2.5 intervals unheard
//! after which a member is dead):
//! - membership: from the first member's start until every view lists every member alive;
//! - a load change on one member, until every other member's view shows it (p50/p95/max
//!   over 20 changes);
//! - traffic: bytes each member sends plus receives per second on its mesh sockets, over
//!   10 s of steady state (median and max over members, and the first member's: it paces
//!   its pings as a router does, every interval, where the others ping every thirty);
//! - connections each member has open once settled, after the traffic window (one per
//!   other member when no pair keeps two);
//! - a member stopped at once (its task aborted: its sockets close, it sends nothing more,
//!   as with SIGKILL), until every other view marks it dead;
//! - a new member joining the running mesh through one member, until every view lists it
//!   alive and its own view lists every member alive.
//!
//! `MESH_PROGRESS=1` prints the views' progress and the process's CPU time while they
//! converge.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fogline_core::config::{MeshSection, Tier};
use fogline_core::manifest::Runtime;
use fogline_core::mesh::{LoadReport, State};
use fogline_node::mesh::{start_member, Mesh, PingPace, Reporter};
use libp2p::pnet::PreSharedKey;

/// A member whose load the benchmark sets.
struct Synthetic {
    name: String,
    in_flight: AtomicU32,
}

impl Reporter for Synthetic {
    fn report(&self, peer: &str, mesh: &str, site: &str, seq: u64) -> LoadReport {
        LoadReport {
            node: self.name.clone(),
            peer: peer.to_string(),
            tier: Tier::Edge,
            site: site.to_string(),
            cores: 2,
            memory_bytes: 4 << 30,
            speed: 1.0,
            runtimes: vec![Runtime::Wasm],
            in_flight: self.in_flight.load(Ordering::Relaxed),
            queued: 0,
            service_ms: vec![("hello".into(), 0.4)],
            warm: vec!["hello".into()],
            quic: Some("127.0.0.1:4433".into()),
            http: Some("127.0.0.1:8080".into()),
            mesh: Some(mesh.to_string()),
            cold_starts: 1,
            warm_starts: 1000,
            seq,
        }
    }
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(50);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run(n));
}

async fn run(n: usize) {
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).expect("random key");
    let psk = PreSharedKey::new(key);
    let interval = Duration::from_secs(1);
    let cfg = MeshSection {
        listen: Some("/ip4/127.0.0.1/tcp/0".into()),
        join: Vec::new(),
        site: "bench".into(),
        mdns: false,
        interval,
        key_file: None,
    };

    let t0 = Instant::now();
    let mut reps = Vec::new();
    let mut members: Vec<Arc<Mesh>> = Vec::new();
    for i in 0..n {
        let rep = Arc::new(Synthetic {
            name: format!("m{i}"),
            in_flight: AtomicU32::new(0),
        });
        let join: Vec<String> = members
            .first()
            .map(|m| m.address.clone())
            .into_iter()
            .collect();
        // The first member is the cluster's router: it pings every member each interval.
        let pace = if i == 0 {
            PingPace::Router
        } else {
            PingPace::Member
        };
        let m = start_member(rep.clone(), &rep.name, &cfg, psk, &join, None, pace)
            .await
            .expect("member");
        reps.push(rep);
        members.push(m);
    }
    let started = t0.elapsed();
    let converged = loop {
        let done = members
            .iter()
            .all(|m| m.with_view(|v| v.len() == n && v.members().all(|x| x.state == State::Alive)));
        if done {
            break t0.elapsed();
        }
        if std::env::var_os("MESH_PROGRESS").is_some() {
            let listed: usize = members
                .iter()
                .map(|m| m.with_view(|v| v.members().filter(|x| x.state == State::Alive).count()))
                .sum();
            let min = members
                .iter()
                .map(|m| m.with_view(|v| v.len()))
                .min()
                .unwrap_or(0);
            let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
            let f: Vec<&str> = stat.split_whitespace().collect();
            let cpu = f.get(13).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0)
                + f.get(14).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
            eprintln!(
                "{:5} ms: {listed} of {} pairs, smallest view {min}, cpu {} ms",
                t0.elapsed().as_millis(),
                n * n,
                cpu * 10
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            let sizes: Vec<usize> = members.iter().map(|m| m.rows().len()).collect();
            panic!("membership did not converge in 60 s: view sizes {sizes:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    // Steady-state traffic.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let bytes = |m: &Mesh| {
        let t = m.traffic();
        (
            t.sent.load(Ordering::Relaxed),
            t.received.load(Ordering::Relaxed),
        )
    };
    let before: Vec<(u64, u64)> = members.iter().map(|m| bytes(m)).collect();
    let span = Duration::from_secs(10);
    tokio::time::sleep(span).await;
    let mut rates: Vec<f64> = Vec::new();
    let mut sent: Vec<f64> = Vec::new();
    for (m, b) in members.iter().zip(&before) {
        let a = bytes(m);
        let s = (a.0 - b.0) as f64 / span.as_secs_f64();
        let r = (a.1 - b.1) as f64 / span.as_secs_f64();
        rates.push(s + r);
        sent.push(s);
    }
    let router_rate = rates[0];
    rates.sort_by(f64::total_cmp);
    sent.sort_by(f64::total_cmp);
    let mut conns: Vec<u64> = members
        .iter()
        .map(|m| m.traffic().connections.load(Ordering::Relaxed))
        .collect();
    conns.sort();

    // Load changes.
    let mut delays = Vec::new();
    for k in 0..20 {
        let j = 1 + k % (n - 1);
        // Each member in turn goes busy; after a full round they go idle again.
        let target = if (k / (n - 1)).is_multiple_of(2) {
            8
        } else {
            0
        };
        let name = reps[j].name.clone();
        let t = Instant::now();
        reps[j].in_flight.store(target, Ordering::Relaxed);
        loop {
            let seen = members.iter().enumerate().all(|(i, m)| {
                i == j
                    || m.with_view(|v| v.get(&name).is_some_and(|x| x.report.in_flight == target))
            });
            if seen {
                delays.push(t.elapsed());
                break;
            }
            if t.elapsed() > Duration::from_secs(10) {
                delays.push(Duration::MAX);
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    delays.sort();

    // A member stops at once.
    let victim = members.pop().expect("a member");
    let name = reps.last().expect("a member").name.clone();
    victim.stop();
    let t = Instant::now();
    let dead = loop {
        let all = members
            .iter()
            .all(|m| m.with_view(|v| v.get(&name).is_some_and(|x| x.state == State::Dead)));
        if all {
            break t.elapsed();
        }
        if t.elapsed() > Duration::from_secs(30) {
            panic!("{name} was not marked dead everywhere in 30 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    // A new member joins the running mesh through one member.
    let rep = Arc::new(Synthetic {
        name: format!("m{n}"),
        in_flight: AtomicU32::new(0),
    });
    let t = Instant::now();
    let joiner = start_member(
        rep.clone(),
        &rep.name,
        &cfg,
        psk,
        std::slice::from_ref(&members[0].address),
        None,
        PingPace::Member,
    )
    .await
    .expect("member");
    let (mut seen_by_all, mut sees_all) = (None, None);
    while seen_by_all.is_none() || sees_all.is_none() {
        let seen = members
            .iter()
            .filter(|m| m.with_view(|v| v.get(&rep.name).is_some_and(|x| x.state == State::Alive)))
            .count();
        let sees = joiner.with_view(|v| v.members().filter(|x| x.state == State::Alive).count());
        if seen_by_all.is_none() && seen == members.len() {
            seen_by_all = Some(t.elapsed());
        }
        if sees_all.is_none() && sees == n {
            sees_all = Some(t.elapsed());
        }
        if t.elapsed() > Duration::from_secs(30) {
            panic!(
                "{} did not join in 30 s: alive in {seen} of {} views, sees {sees} alive",
                rep.name,
                members.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let at = |v: &[Duration], q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    println!(
        "gossip mesh, {n} members in one process over loopback TCP (pnet + Noise + Yamux), {} cores",
        std::thread::available_parallelism().map(|c| c.get()).unwrap_or(0)
    );
    println!(
        "limit: report interval {:.0} ms; dead after 2.5 intervals unheard = {:.0} ms",
        ms(interval),
        ms(interval) * 2.5
    );
    println!(
        "membership: every view lists all {n} alive   {:8.0} ms after the first start ({:.0} ms to start all)",
        ms(converged),
        ms(started)
    );
    println!(
        "load change seen by every member            p50 {:6.1} ms   p95 {:6.1} ms   max {:6.1} ms",
        ms(at(&delays, 0.5)),
        ms(at(&delays, 0.95)),
        ms(at(&delays, 1.0))
    );
    println!(
        "traffic per member, sent+received           median {:5.2} KB/s   max {:5.2} KB/s   (sent alone: median {:.2} KB/s)",
        rates[rates.len() / 2] / 1e3,
        rates[rates.len() - 1] / 1e3,
        sent[sent.len() / 2] / 1e3
    );
    println!(
        "traffic of the router (m0, pings each member every interval)   {:5.2} KB/s",
        router_rate / 1e3
    );
    println!(
        "connections per member, settled             min {} median {} max {}   (one per other member: {})",
        conns[0],
        conns[conns.len() / 2],
        conns[conns.len() - 1],
        n - 1
    );
    println!(
        "stopped member marked dead everywhere       {:8.0} ms",
        ms(dead)
    );
    println!(
        "a member joining the running mesh: alive in every view {:.0} ms, its own view complete {:.0} ms",
        ms(seen_by_all.unwrap_or_default()),
        ms(sees_all.unwrap_or_default())
    );
}
