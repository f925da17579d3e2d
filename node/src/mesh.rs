//! The gossip mesh: every member tells the others, about once a second, who it is, how busy
//! it is and which functions it has warm; each builds the same [`ClusterView`] from that.
//!
//! libp2p underneath: TCP with a private-network key (a node without the cluster's key
//! cannot complete a connection), Noise, Yamux; gossipsub with strict signing for load
//! reports, identify and Kademlia for finding members across networks, mDNS on a LAN, and
//! ping for round-trip times. Members dial every member they learn of, so a small mesh is
//! fully connected and a report reaches everyone in one hop.

use std::collections::HashSet;
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fogline_core::mesh::{ClusterView, LoadReport, Member, Timing};
use libp2p::core::transport::upgrade::Version;
use libp2p::core::Transport;
use libp2p::futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic, MessageAuthenticity, ValidationMode};
use libp2p::pnet::{PnetConfig, PreSharedKey};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    identify, kad, mdns, noise, ping, tcp, yamux, Multiaddr, PeerId, StreamProtocol, Swarm,
};
use serde::Serialize;

use crate::agent::Node;

const TOPIC: &str = "fogline/load/1";
/// Members this node dials on its own; beyond that, gossip reaches it through others (and
/// they dial it). Small meshes end up fully connected; large ones stay sparse.
const MAX_DIALED: usize = 24;

#[derive(NetworkBehaviour)]
struct Behaviour {
    gossipsub: gossipsub::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    kad: kad::Behaviour<kad::store::MemoryStore>,
    mdns: Toggle<mdns::tokio::Behaviour>,
}

#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("mesh key {path}: {problem}")]
    Key { path: String, problem: String },
    #[error("mesh address {addr:?}: {problem}")]
    Addr { addr: String, problem: String },
    #[error("mesh: {0}")]
    Other(String),
}

/// A running mesh member.
pub struct Mesh {
    pub peer_id: PeerId,
    /// `ADDR/p2p/PEER`, ready to paste into `--join`.
    pub address: String,
    /// `ADDR` alone, as gossiped.
    listen: String,
    view: Arc<Mutex<ClusterView>>,
    started: Instant,
    timing: Timing,
    self_name: String,
}

/// One row of `fogline mesh` / `GET /v1/mesh`.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct MemberRow {
    pub id: String,
    pub peer: String,
    pub tier: String,
    pub site: String,
    pub address: String,
    pub load: f64,
    pub in_flight: u32,
    pub queued: u32,
    pub rtt_ms: Option<f64>,
    pub warm: Vec<String>,
    pub cold_starts: u64,
    pub warm_starts: u64,
    pub state: String,
    pub age_ms: u64,
    pub this: bool,
}

impl Mesh {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Runs `f` on the view aged to `now` (passed along), under the view's lock.
    fn aged<R>(&self, f: impl FnOnce(&ClusterView, u64) -> R) -> R {
        let now = self.now_ms();
        let mut v = self.view.lock().unwrap_or_else(|p| p.into_inner());
        v.touch(&self.self_name, now);
        v.tick(now, &self.timing);
        f(&v, now)
    }

    /// The current view, aged to now.
    pub fn rows(&self) -> Vec<MemberRow> {
        self.aged(|v, now| v.members().map(|m| row(m, now, &self.self_name)).collect())
    }

    /// Runs `f` on the current view, aged to now, without copying it (placement does this
    /// for every call).
    pub fn with_view<R>(&self, f: impl FnOnce(&ClusterView) -> R) -> R {
        self.aged(|v, _| f(v))
    }
}

fn row(m: &Member, now: u64, me: &str) -> MemberRow {
    let r = &m.report;
    MemberRow {
        id: r.node.clone(),
        peer: r.peer.clone(),
        tier: r.tier.as_str().to_string(),
        site: r.site.clone(),
        address: r
            .quic
            .clone()
            .or_else(|| r.http.clone())
            .unwrap_or_default(),
        load: r.load_per_core(),
        in_flight: r.in_flight,
        queued: r.queued,
        rtt_ms: m.rtt_ms,
        warm: r.warm.clone(),
        cold_starts: r.cold_starts,
        warm_starts: r.warm_starts,
        state: format!("{:?}", m.state).to_lowercase(),
        age_ms: now.saturating_sub(m.heard_ms),
        this: r.node == me,
    }
}

/// Reads a private-network key (`/key/swarm/psk/1.0.0/`, as made by `fogline certs init`).
pub fn load_key(path: &Path) -> Result<PreSharedKey, MeshError> {
    let text = std::fs::read_to_string(path).map_err(|e| MeshError::Key {
        path: path.display().to_string(),
        problem: e.to_string(),
    })?;
    PreSharedKey::from_str(&text).map_err(|e| MeshError::Key {
        path: path.display().to_string(),
        problem: e.to_string(),
    })
}

/// Starts the mesh for `node`; returns once it listens. `join` adds to the config's list.
pub async fn start(node: Arc<Node>, extra_join: &[String]) -> Result<Arc<Mesh>, MeshError> {
    let cfg = node.config.mesh.clone();
    let listen = cfg
        .listen
        .clone()
        .ok_or_else(|| MeshError::Other("mesh.listen is not set".into()))?;
    let listen: Multiaddr =
        listen
            .parse()
            .map_err(|e: libp2p::multiaddr::Error| MeshError::Addr {
                addr: listen.clone(),
                problem: e.to_string(),
            })?;
    let key_path = cfg
        .key_file
        .clone()
        .or_else(|| {
            node.config
                .quic
                .tls_dir
                .as_ref()
                .map(|d| d.join("mesh.key"))
        })
        .ok_or_else(|| MeshError::Other("no mesh key: set mesh.key_file or quic.tls_dir".into()))?;
    let psk = load_key(&key_path)?;
    let mut join = Vec::new();
    for j in cfg.join.iter().chain(extra_join) {
        let a: Multiaddr = j
            .parse()
            .map_err(|e: libp2p::multiaddr::Error| MeshError::Addr {
                addr: j.clone(),
                problem: e.to_string(),
            })?;
        join.push(a);
    }

    let mut swarm = build_swarm(psk, cfg.mdns, cfg.interval)?;
    swarm
        .listen_on(listen.clone())
        .map_err(|e| MeshError::Addr {
            addr: listen.to_string(),
            problem: e.to_string(),
        })?;
    let topic = IdentTopic::new(TOPIC);
    swarm
        .behaviour_mut()
        .gossipsub
        .subscribe(&topic)
        .map_err(|e| MeshError::Other(format!("subscribing: {e}")))?;
    for a in &join {
        if let Err(e) = swarm.dial(a.clone()) {
            tracing::warn!("cannot dial {a}: {e}");
        }
    }
    // Wait for the listener so the printed address is the real one (port 0 resolved).
    let peer_id = *swarm.local_peer_id();
    let listen_at = loop {
        match swarm.select_next_some().await {
            SwarmEvent::NewListenAddr { address, .. } => break address.to_string(),
            SwarmEvent::ListenerError { error, .. } => {
                return Err(MeshError::Addr {
                    addr: listen.to_string(),
                    problem: error.to_string(),
                })
            }
            _ => {}
        }
    };
    let mesh = Arc::new(Mesh {
        peer_id,
        address: format!("{listen_at}/p2p/{peer_id}"),
        listen: listen_at,
        view: Arc::new(Mutex::new(ClusterView::new())),
        started: Instant::now(),
        timing: Timing::for_interval(cfg.interval.as_millis() as u64),
        self_name: node.id.clone(),
    });
    tokio::spawn(drive(
        swarm,
        node,
        mesh.clone(),
        topic,
        cfg.site.clone(),
        cfg.interval,
        join,
    ));
    Ok(mesh)
}

fn build_swarm(
    psk: PreSharedKey,
    use_mdns: bool,
    interval: Duration,
) -> Result<Swarm<Behaviour>, MeshError> {
    let other = |e: &dyn std::fmt::Display| MeshError::Other(e.to_string());
    let swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_other_transport(|key| {
            let noise = noise::Config::new(key)
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
                    .and_then(move |socket, _| PnetConfig::new(psk).handshake(socket))
                    .upgrade(Version::V1Lazy)
                    .authenticate(noise)
                    .multiplex(yamux::Config::default())
                    .timeout(Duration::from_secs(10)),
            )
        })
        .map_err(|e| other(&e))?
        .with_behaviour(|key| {
            let peer = key.public().to_peer_id();
            // Members dial each other and publish to every peer (flood publishing), so a
            // report arrives in one hop; a small gossip mesh adds redundancy without
            // multiplying duplicates.
            let gcfg = gossipsub::ConfigBuilder::default()
                .heartbeat_interval(Duration::from_millis(500))
                .mesh_n(4)
                .mesh_n_low(3)
                .mesh_n_high(8)
                .mesh_outbound_min(2)
                .flood_publish(true)
                .validation_mode(ValidationMode::Strict)
                .max_transmit_size(fogline_core::mesh::MAX_REPORT + 1024)
                .history_length(4)
                .history_gossip(2)
                .build()
                .map_err(|e| e.to_string())?;
            let gossipsub =
                gossipsub::Behaviour::new(MessageAuthenticity::Signed(key.clone()), gcfg)?;
            let identify =
                identify::Behaviour::new(identify::Config::new("/fogline/1".into(), key.public()));
            // Round trips change slowly; every other interval is plenty and halves the pings.
            let ping = ping::Behaviour::new(ping::Config::new().with_interval(interval * 2));
            let mut kcfg = kad::Config::new(StreamProtocol::new("/fogline/kad/1"));
            kcfg.set_query_timeout(Duration::from_secs(10));
            let mut kad =
                kad::Behaviour::with_config(peer, kad::store::MemoryStore::new(peer), kcfg);
            kad.set_mode(Some(kad::Mode::Server));
            let mdns = if use_mdns {
                mdns::tokio::Behaviour::new(mdns::Config::default(), peer).ok()
            } else {
                None
            };
            Ok(Behaviour {
                gossipsub,
                identify,
                ping,
                kad,
                mdns: Toggle::from(mdns),
            })
        })
        .map_err(|e| other(&e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    Ok(swarm)
}

#[allow(clippy::too_many_arguments)]
async fn drive(
    mut swarm: Swarm<Behaviour>,
    node: Arc<Node>,
    mesh: Arc<Mesh>,
    topic: IdentTopic,
    site: String,
    interval: Duration,
    join: Vec<Multiaddr>,
) {
    let me = swarm.local_peer_id().to_string();
    let mut seq = start_seq();
    let mut every = tokio::time::interval(interval);
    let mut check = tokio::time::interval(Duration::from_millis(100));
    let mut last_sent: Option<LoadReport> = None;
    let mut dialed: HashSet<PeerId> = HashSet::new();
    loop {
        tokio::select! {
            _ = every.tick() => {
                redial(&mut swarm, &mesh, &join);
                seq += 1;
                let r = node.load_report(&me, &mesh.listen, &site, seq);
                publish(&mut swarm, &topic, &mesh, &r);
                last_sent = Some(r);
            }
            _ = check.tick() => {
                // Send at once when load moved a lot since the last report.
                let r = node.load_report(&me, &mesh.listen, &site, seq + 1);
                if last_sent.as_ref().is_some_and(|l| l.changed_a_lot(&r)) {
                    seq += 1;
                    publish(&mut swarm, &topic, &mesh, &r);
                    last_sent = Some(r);
                }
            }
            ev = swarm.select_next_some() => handle(&mut swarm, ev, &mesh, &mut dialed),
        }
    }
}

/// Reconnects to members we know but are not connected to (after a partition heals or a
/// member restarts), and to the join addresses when we are alone.
fn redial(swarm: &mut Swarm<Behaviour>, mesh: &Mesh, join: &[Multiaddr]) {
    use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
    let peers: Vec<(PeerId, Option<Multiaddr>)> = {
        let v = mesh.view.lock().unwrap_or_else(|p| p.into_inner());
        v.members()
            .filter_map(|m| {
                Some((
                    m.report.peer.parse().ok()?,
                    m.report.mesh.as_ref().and_then(|a| a.parse().ok()),
                ))
            })
            .collect()
    };
    for (p, addr) in peers {
        if p != *swarm.local_peer_id() && !swarm.is_connected(&p) {
            let opts = DialOpts::peer_id(p).condition(PeerCondition::DisconnectedAndNotDialing);
            let _ = swarm.dial(opts.addresses(addr.into_iter().collect()).build());
        }
    }
    if swarm.connected_peers().next().is_none() {
        for a in join {
            let _ = swarm.dial(a.clone());
        }
    }
}

/// A restarted member must outrank its own earlier reports: start from the wall clock.
fn start_seq() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn publish(swarm: &mut Swarm<Behaviour>, topic: &IdentTopic, mesh: &Mesh, r: &LoadReport) {
    mesh.view
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .apply(r.clone(), mesh.now_ms());
    // Fails with no subscribed peers yet (a lone member): nothing to do but wait.
    let _ = swarm
        .behaviour_mut()
        .gossipsub
        .publish(topic.clone(), r.encode());
}

fn handle(
    swarm: &mut Swarm<Behaviour>,
    ev: SwarmEvent<BehaviourEvent>,
    mesh: &Mesh,
    dialed: &mut HashSet<PeerId>,
) {
    match ev {
        SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
            message,
            ..
        })) => {
            let Some(source) = message.source else { return };
            match LoadReport::decode(&message.data) {
                // A member may only speak for itself.
                Ok(r) if r.peer == source.to_string() => {
                    // Connect straight to members we only hear about through others, so every
                    // pair has a connection (and a measured round trip).
                    if !swarm.is_connected(&source)
                        && dialed.len() < MAX_DIALED
                        && dialed.insert(source)
                    {
                        if let Some(a) = r.mesh.as_ref().and_then(|a| a.parse::<Multiaddr>().ok()) {
                            use libp2p::swarm::dial_opts::DialOpts;
                            let _ =
                                swarm.dial(DialOpts::peer_id(source).addresses(vec![a]).build());
                        }
                    }
                    mesh.view
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .apply(r, mesh.now_ms());
                }
                Ok(r) => tracing::warn!(
                    "dropping a report for {} signed by another peer {source}",
                    r.node
                ),
                Err(e) => tracing::warn!("dropping a load report from {source}: {e}"),
            }
        }
        SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
            peer,
            result: Ok(rtt),
            ..
        })) => {
            let mut v = mesh.view.lock().unwrap_or_else(|p| p.into_inner());
            let name = v
                .members()
                .find(|m| m.report.peer == peer.to_string())
                .map(|m| m.report.node.clone());
            if let Some(n) = name {
                v.observe_rtt(&n, rtt.as_secs_f64() * 1e3);
            }
        }
        SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
            peer_id,
            info,
            ..
        })) => {
            let first = swarm.behaviour_mut().kad.kbuckets().count() == 0;
            for a in info.listen_addrs {
                swarm.behaviour_mut().kad.add_address(&peer_id, a);
            }
            // Look for more members through the first one we meet; after that Kademlia's own
            // periodic bootstrap keeps the routing table fresh (a query per new peer costs
            // more than the gossip itself in a large mesh).
            if first {
                let _ = swarm.behaviour_mut().kad.bootstrap();
            }
        }
        SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::RoutingUpdated {
            peer,
            addresses,
            ..
        })) if peer != *swarm.local_peer_id()
            && !swarm.is_connected(&peer)
            && dialed.len() < MAX_DIALED
            && dialed.insert(peer) =>
        {
            let _ = swarm.dial(addresses.first().clone());
        }
        SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(list))) => {
            for (peer, addr) in list {
                swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
                if !swarm.is_connected(&peer) {
                    let _ = swarm.dial(addr);
                }
            }
        }
        SwarmEvent::ConnectionClosed {
            peer_id,
            num_established: 0,
            ..
        } => {
            dialed.remove(&peer_id);
        }
        SwarmEvent::OutgoingConnectionError {
            peer_id: Some(p),
            error,
            ..
        } => {
            dialed.remove(&p);
            tracing::debug!("mesh: dialing {p} failed: {error}");
        }
        SwarmEvent::IncomingConnectionError {
            send_back_addr,
            error,
            ..
        } => {
            tracing::debug!("mesh: refused a connection from {send_back_addr}: {error}");
        }
        _ => {}
    }
}
