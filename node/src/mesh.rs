//! The gossip mesh: every member tells the others, about once a second, who it is, how busy
//! it is and which functions it has warm; each builds the same [`ClusterView`] from that.
//!
//! libp2p underneath: TCP with a private-network key (a node without the cluster's key
//! cannot complete a connection), Noise (every connection authenticated to a peer id), Yamux;
//! mDNS on a LAN, ping for round-trip times, identify (each end's protocol version and
//! software), and gossipsub to send reports.
//!
//! Finding members: a newcomer dials its join addresses (or what mDNS found). A member that
//! hears a whole report from a member it had never heard of (so it came in through a join
//! address) sends every member an [`Introduce`] naming all the members it knows; whoever
//! hears one dials those it has no connection to. Of two members that learn of each other
//! together, the one with the smaller peer id dials and the other waits [`DIAL_GRACE`]
//! first, so a pair makes one connection, not two: a connection's handshakes are most of
//! what a large mesh costs to form.
//!
//! Traffic is kept small, since boards sit on thin links:
//! - Members dial every member they learn of (up to [`MAX_PEERS`]), so a site's mesh is
//!   fully connected, and a report is published straight to every member (flood publish)
//!   and never forwarded: each member receives each report once, in one hop. Because it
//!   comes straight from its author over a Noise connection, the connection's peer id
//!   authenticates it; messages carry no signature, author or sequence field
//!   (gossipsub's anonymous mode), and a report whose peer is not the connection's is
//!   dropped.
//! - Between whole reports, members send a [`Beat`](fogline_core::mesh::Beat): only the
//!   part that changes (a couple of dozen bytes when few functions run). A whole report goes
//!   out first, when the fixed part changes, soon after a member subscribes (a newcomer,
//!   or one back from a partition), and every [`FULL_EVERY`] intervals.
//! - Routers ping every member each interval, since they place calls by the round trip;
//!   other members every thirty intervals (the first at once on a new connection). A
//!   ping is answered whatever the pinging end's pace.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fogline_core::config::MeshSection;
use fogline_core::mesh::{
    ClusterView, Gossip, Introduce, Leave, LoadReport, Member, State, Timing,
};
use libp2p::core::transport::upgrade::Version;
use libp2p::core::Transport;
use libp2p::futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic, MessageAuthenticity, MessageId, ValidationMode};
use libp2p::multiaddr::Protocol;
use libp2p::pnet::{PnetConfig, PreSharedKey};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{identify, mdns, noise, ping, tcp, yamux, Multiaddr, PeerId, Swarm};
use serde::Serialize;

const TOPIC: &str = "fogline/2";
/// The mesh protocol's version, as identify tells it.
const MESH_PROTOCOL: &str = "/fogline/2";
/// Most members this one dials on its own: a site's mesh is fully connected up to here.
pub const MAX_PEERS: usize = 256;
/// A whole report at least this often (in intervals), beats between.
pub const FULL_EVERY: u64 = 60;
/// Gossipsub's size limit (see where it is set).
const STREAM_BUFFER: usize = 256 * 1024;
/// How long the member with the larger peer id of a pair that learnt of each other waits
/// for the other to dial before it dials itself.
pub const DIAL_GRACE: Duration = Duration::from_millis(1500);

/// What a member reports about itself.
pub trait Reporter: Send + Sync + 'static {
    /// Its report now: `peer` its libp2p id, `mesh` its mesh address.
    fn report(&self, peer: &str, mesh: &str, site: &str, seq: u64) -> LoadReport;

    /// The revocation list it enforces, which the mesh passes on and adds to.
    fn revocations(&self) -> Option<Arc<crate::revocation::Revocations>> {
        None
    }
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    gossipsub: gossipsub::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
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

/// Bytes through the mesh's sockets (TCP payload: reports, introductions, pings, and the
/// Noise and Yamux framing around them), and the connections open now.
#[derive(Debug, Default)]
pub struct Traffic {
    pub sent: std::sync::atomic::AtomicU64,
    pub received: std::sync::atomic::AtomicU64,
    pub connections: std::sync::atomic::AtomicU64,
    /// Whole reports and proofs refused for who sent them (a member speaking for another).
    pub forged: std::sync::atomic::AtomicU64,
}

/// A socket that counts what passes through it.
struct Counted<S> {
    inner: S,
    traffic: Arc<Traffic>,
}

/// Adds a finished read's or write's byte count to `counter`.
fn tally(
    counter: &std::sync::atomic::AtomicU64,
    r: std::task::Poll<std::io::Result<usize>>,
) -> std::task::Poll<std::io::Result<usize>> {
    if let std::task::Poll::Ready(Ok(n)) = &r {
        counter.fetch_add(*n as u64, std::sync::atomic::Ordering::Relaxed);
    }
    r
}

impl<S: libp2p::futures::AsyncRead + Unpin> libp2p::futures::AsyncRead for Counted<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        tally(&self.traffic.received, r)
    }
}

impl<S: libp2p::futures::AsyncWrite + Unpin> libp2p::futures::AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        tally(&self.traffic.sent, r)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_close(cx)
    }
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
    task: std::sync::OnceLock<tokio::task::AbortHandle>,
    traffic: Arc<Traffic>,
    /// Told when the member is stopping: it says goodbye and sends nothing more.
    leaving: tokio::sync::Notify,
    /// Bumped when members are newly seen dead (checked every 100 ms), so calls in flight
    /// there stop waiting for them.
    deaths: tokio::sync::watch::Sender<u64>,
    /// With the cluster's certificates: whole reports are accepted only from the peer that
    /// proved it holds the reporting member's certificate.
    identity: Option<crate::tls::MeshIdentity>,
    /// The revocation list the member enforces: passed on, and revoked members unbound.
    revocations: Option<Arc<crate::revocation::Revocations>>,
    /// The peer clusters this member (a bridge with peerings) offers as places: gossiped
    /// every interval while there are any.
    peer_places: Mutex<Vec<fogline_core::federation::PeerPlace>>,
}

impl Mesh {
    /// Offers these peer clusters as places from the next interval on (none: stops).
    pub fn offer_peers(&self, places: Vec<fogline_core::federation::PeerPlace>) {
        *self.peer_places.lock().unwrap_or_else(|p| p.into_inner()) = places;
    }

    /// Resolves once `member`, alive when this is called, is found dead by its silence (a
    /// report interval's multiple unheard); never while it is alive or suspect, and never
    /// for a member that said goodbye: a stopping member answers the calls it took, or
    /// closes its connections saying which it did not run. Costs nothing until some
    /// member dies (placement calls it for every call it sends).
    pub async fn until_unreachable(&self, member: &str) {
        let mut deaths = self.deaths.subscribe();
        loop {
            if deaths.changed().await.is_err() {
                return std::future::pending().await;
            }
            if self.with_view(|v| v.get(member).is_some_and(Member::unreachable)) {
                return;
            }
        }
    }

    /// Whether `member`, not alive in the view now, may yet be heard from: it is suspect
    /// (not yet dead), or unheard since this member started less than the time a silent
    /// member takes to be found dead (a restarted member hears the others within it).
    pub fn may_yet_hear(&self, member: &str) -> bool {
        let young = self.started.elapsed().as_millis() < u128::from(self.timing.dead_ms);
        self.with_view(|v| match v.get(member) {
            Some(m) => m.state == State::Suspect && !m.left,
            None => young,
        })
    }

    /// Whether a report from `member` arrived within the last `ms` (the time a call has
    /// been there): a member that kept reporting is alive, however long the call takes.
    pub fn heard_within(&self, member: &str, ms: f64) -> bool {
        self.aged(|v, now| {
            v.get(member)
                .is_some_and(|m| (now.saturating_sub(m.heard_ms) as f64) < ms)
        })
    }

    /// Tells those waiting in [`Mesh::until_unreachable`] when members newly died.
    fn note_deaths(&self, known: &mut HashSet<String>) {
        let dead: HashSet<String> = self.with_view(|v| {
            v.members()
                .filter(|m| m.state == State::Dead)
                .map(|m| m.report.node.clone())
                .collect()
        });
        if dead.iter().any(|d| !known.contains(d)) {
            self.deaths.send_modify(|n| *n += 1);
        }
        *known = dead;
    }

    /// Proves this member's identity with a renewed certificate from now on.
    pub fn reload_identity(&self, tls: &crate::tls::TlsDir) -> Result<(), crate::tls::TlsError> {
        match &self.identity {
            Some(id) => id.reload(tls),
            None => Ok(()),
        }
    }
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

    /// The peer clusters this member's view holds as places: `(place, bridge, round trip
    /// bridge to bridge with the provider's placement time, that placement time, shared
    /// cores, namespaces)`.
    pub fn peer_rows(&self) -> Vec<serde_json::Value> {
        self.with_view_at(|v, now, fresh| {
            v.peer_places(now, fresh)
                .map(|(b, p)| {
                    serde_json::json!({
                        "place": p.name,
                        "bridge": b.report.node,
                        "rtt_ms": p.rtt_ms,
                        "placement_ms": p.summary.placement_ms,
                        "cores": p.summary.cores,
                        "in_flight": p.summary.in_flight,
                        "namespaces": p.namespaces,
                    })
                })
                .collect()
        })
    }

    /// Prometheus text for the mesh's health: members by state as this member sees them.
    pub fn metrics(&self, out: &mut String) {
        use std::fmt::Write;
        let (mut alive, mut suspect, mut dead) = (0, 0, 0);
        self.with_view(|v| {
            for m in v.members() {
                match m.state {
                    State::Alive => alive += 1,
                    State::Suspect => suspect += 1,
                    State::Dead => dead += 1,
                }
            }
        });
        let _ = writeln!(
            out,
            "# HELP fogline_mesh_members Members of the mesh as this member sees them, by state.\n# TYPE fogline_mesh_members gauge\nfogline_mesh_members{{state=\"alive\"}} {alive}\nfogline_mesh_members{{state=\"suspect\"}} {suspect}\nfogline_mesh_members{{state=\"dead\"}} {dead}"
        );
    }

    /// What this member's mesh sockets have carried so far.
    pub fn traffic(&self) -> &Traffic {
        &self.traffic
    }

    /// Tells every member this one is stopping (they place nothing more on it), and sends
    /// nothing after. The process goes on serving what it has; [`Mesh::stop`] ends it.
    pub fn leave(&self) {
        self.leaving.notify_one();
    }

    /// Leaves the mesh at once, as a killed process would: its connections drop and it
    /// sends nothing more.
    pub fn stop(&self) {
        if let Some(t) = self.task.get() {
            t.abort();
        }
    }

    /// Runs `f` on the current view, aged to now, without copying it (placement does this
    /// for every call).
    pub fn with_view<R>(&self, f: impl FnOnce(&ClusterView) -> R) -> R {
        self.aged(|v, _| f(v))
    }

    /// [`Mesh::with_view`], with the view's clock (ms) and how long a member may go
    /// unheard before it is dead (what counts as fresh).
    pub fn with_view_at<R>(&self, f: impl FnOnce(&ClusterView, u64, u64) -> R) -> R {
        let dead = self.timing.dead_ms;
        self.aged(|v, now| f(v, now, dead))
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
        state: if m.left {
            "left".to_string()
        } else {
            format!("{:?}", m.state).to_lowercase()
        },
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

/// Starts the mesh for the member `name` configured by `config`, reporting what `reporter`
/// says; returns once it listens. `join` adds to the config's list. With certificates
/// (`quic.tls_dir`), reports are bound to them.
pub async fn start(
    reporter: Arc<dyn Reporter>,
    name: &str,
    config: &fogline_core::config::NodeConfig,
    extra_join: &[String],
) -> Result<Arc<Mesh>, MeshError> {
    let cfg = config.mesh.clone();
    let key_path = cfg
        .key_file
        .clone()
        .or_else(|| config.quic.tls_dir.as_ref().map(|d| d.join("mesh.key")))
        .ok_or_else(|| MeshError::Other("no mesh key: set mesh.key_file or quic.tls_dir".into()))?;
    let psk = load_key(&key_path)?;
    let identity = match &config.quic.tls_dir {
        Some(dir) => Some(
            crate::tls::TlsDir::load(dir)
                .and_then(|t| crate::tls::MeshIdentity::new(&t))
                .map_err(|e| MeshError::Other(e.to_string()))?,
        ),
        None => None,
    };
    let pace = if config.router.is_some() {
        PingPace::Router
    } else {
        PingPace::Member
    };
    start_member(reporter, name, &cfg, psk, extra_join, identity, pace).await
}

/// How often a member pings its peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PingPace {
    /// Every report interval: a router scores places by their round trip.
    Router,
    /// Every thirty intervals: round trips change slowly, and calls measure their own.
    Member,
}

impl PingPace {
    /// The time between pings to each peer, for a report `interval`.
    pub fn every(self, interval: Duration) -> Duration {
        match self {
            PingPace::Router => interval,
            PingPace::Member => interval * 30,
        }
    }
}

/// Starts a mesh member that reports what `reporter` says, named `name`, pinging its
/// peers at `pace`. Returns once it listens. (A node agent is one; the mesh benchmark runs
/// many in one process.)
pub async fn start_member(
    reporter: Arc<dyn Reporter>,
    name: &str,
    cfg: &MeshSection,
    psk: PreSharedKey,
    extra_join: &[String],
    identity: Option<crate::tls::MeshIdentity>,
    pace: PingPace,
) -> Result<Arc<Mesh>, MeshError> {
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

    let traffic = Arc::new(Traffic::default());
    let mut swarm = build_swarm(
        psk,
        cfg.mdns,
        cfg.interval,
        pace.every(cfg.interval),
        traffic.clone(),
    )?;
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
        if let Err(e) = swarm.dial(join_opts(a)) {
            tracing::warn!("cannot dial {a}: {e}");
        }
    }
    // Wait for the listener so the printed address is the real one (port 0 resolved). What
    // else happens meanwhile (the join connection may open first) is kept for the driver:
    // dropped, that connection was missing from the count in /metrics and from the pairing
    // of duplicate connections in `handle`.
    let peer_id = *swarm.local_peer_id();
    let mut early = Vec::new();
    let listen_at = loop {
        match swarm.select_next_some().await {
            SwarmEvent::NewListenAddr { address, .. } => break address.to_string(),
            SwarmEvent::ListenerError { error, .. } => {
                return Err(MeshError::Addr {
                    addr: listen.to_string(),
                    problem: error.to_string(),
                })
            }
            ev => early.push(ev),
        }
    };
    let mesh = Arc::new(Mesh {
        peer_id,
        address: format!("{listen_at}/p2p/{peer_id}"),
        listen: listen_at,
        view: Arc::new(Mutex::new(ClusterView::new())),
        started: Instant::now(),
        timing: Timing::for_interval(cfg.interval.as_millis() as u64),
        self_name: name.to_string(),
        task: std::sync::OnceLock::new(),
        traffic,
        leaving: tokio::sync::Notify::new(),
        deaths: tokio::sync::watch::channel(0).0,
        revocations: reporter.revocations(),
        identity,
        peer_places: Mutex::new(Vec::new()),
    });
    let task = tokio::spawn(drive(
        swarm,
        reporter,
        mesh.clone(),
        cfg.site.clone(),
        cfg.interval,
        join,
        early,
    ));
    let _ = mesh.task.set(task.abort_handle());
    Ok(mesh)
}

fn build_swarm(
    psk: PreSharedKey,
    use_mdns: bool,
    interval: Duration,
    ping_every: Duration,
    traffic: Arc<Traffic>,
) -> Result<Swarm<Behaviour>, MeshError> {
    let other = |e: &dyn std::fmt::Display| MeshError::Other(e.to_string());
    let swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_other_transport(|key| {
            let noise = noise::Config::new(key)
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
                    .map(move |inner, _| Counted {
                        inner,
                        traffic: traffic.clone(),
                    })
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
            // Straight to every member, never forwarded: no mesh to keep, no gossip about
            // what was sent (see the module's notes).
            let gcfg = gossipsub::ConfigBuilder::default()
                .heartbeat_interval(interval)
                .mesh_n(0)
                .mesh_n_low(0)
                .mesh_n_high(0)
                .mesh_outbound_min(0)
                .gossip_lazy(0)
                .gossip_factor(0.0)
                .flood_publish(true)
                .validation_mode(ValidationMode::Anonymous)
                .message_id_fn(|m: &gossipsub::Message| {
                    use std::hash::{Hash, Hasher};
                    let mut h = std::collections::hash_map::DefaultHasher::new();
                    m.data.hash(&mut h);
                    MessageId::new(&h.finish().to_be_bytes())
                })
                // Each message is held to MAX_REPORT when decoded (`Gossip::decode`). This
                // limit is gossipsub's, and libp2p-gossipsub 0.50 checks it against all the
                // bytes buffered on a stream rather than one message: several messages read
                // together past it fail the stream, and the sender's later messages are then
                // lost without an error. So it is far above one message, near a stream's
                // flow-control window.
                .max_transmit_size(STREAM_BUFFER)
                .history_length(2)
                .history_gossip(0)
                .build()
                .map_err(|e| e.to_string())?;
            let gossipsub = gossipsub::Behaviour::new(MessageAuthenticity::Anonymous, gcfg)?;
            // Each end learns the other's mesh protocol version and software, once per
            // connection (a member of another version is named in the log).
            let identify = identify::Behaviour::new(
                identify::Config::new(MESH_PROTOCOL.into(), key.public())
                    .with_agent_version(format!("fogline/{}", env!("CARGO_PKG_VERSION")))
                    .with_interval(Duration::from_secs(24 * 3600))
                    .with_push_listen_addr_updates(false),
            );
            // The first at once, then at the member's pace (`PingPace`).
            let ping = ping::Behaviour::new(ping::Config::new().with_interval(ping_every));
            let mdns = if use_mdns {
                mdns::tokio::Behaviour::new(mdns::Config::default(), peer).ok()
            } else {
                None
            };
            Ok(Behaviour {
                gossipsub,
                identify,
                ping,
                mdns: Toggle::from(mdns),
            })
        })
        .map_err(|e| other(&e))?
        // Connections between members stay up (gossipsub keeps none alive outside a mesh);
        // a dead peer's is closed by its failed pings.
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(7 * 24 * 3600)))
        .build();
    Ok(swarm)
}

/// What this member keeps about its peers' connections.
#[derive(Default)]
struct Peers {
    /// Dialled by us, not yet known to have failed or closed.
    dialed: HashSet<PeerId>,
    /// Every member we know an address of (from its report, an introduction or mDNS), and
    /// since when.
    known: HashMap<PeerId, (Multiaddr, Instant)>,
    /// Introduced addresses already taken (most introductions repeat what we know).
    heard: HashSet<String>,
    /// A member we had never heard of reported: introduce everyone to everyone.
    introduce: bool,
    /// Open connections per peer, each with whether the larger peer id of the pair dialled it.
    conns: HashMap<PeerId, Vec<(libp2p::swarm::ConnectionId, bool)>>,
    /// Latest ping round trip per connected peer (ms): the first ping goes out as a
    /// connection opens, before the peer's whole report names it, so it waits here.
    rtt_ms: HashMap<PeerId, f64>,
    /// When a report from a peer was last refused with a warning.
    warned: HashMap<PeerId, Instant>,
    /// The peer each member proved it speaks through (with certificates only).
    bound: HashMap<String, PeerId>,
    /// The certificate each bound member proved itself with, to unbind it if revoked.
    bound_cert: HashMap<String, Vec<u8>>,
}

/// Least time between warnings about one member's unusable reports.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// When the next whole report is due.
struct FullDue {
    /// Fixed part of the last whole report sent.
    profile: Vec<u8>,
    /// Intervals since it was sent.
    age: u64,
    /// A member subscribed since: send one soon.
    newcomer: bool,
    sent_at: Instant,
}

impl FullDue {
    /// A member subscribed and our last whole report is old enough to send another.
    fn welcome_due(&self) -> bool {
        self.newcomer && self.sent_at.elapsed() >= WELCOME_GAP
    }
}

/// Least time between whole reports sent for newcomers: when many join at once, one report
/// greets several.
const WELCOME_GAP: Duration = Duration::from_millis(200);

async fn drive(
    mut swarm: Swarm<Behaviour>,
    reporter: Arc<dyn Reporter>,
    mesh: Arc<Mesh>,
    site: String,
    interval: Duration,
    join: Vec<Multiaddr>,
    early: Vec<SwarmEvent<BehaviourEvent>>,
) {
    let me = swarm.local_peer_id().to_string();
    let topic = IdentTopic::new(TOPIC);
    let mut seq = start_seq();
    let mut every = tokio::time::interval(interval);
    let mut check = tokio::time::interval(Duration::from_millis(100));
    let mut last_sent: Option<LoadReport> = None;
    let mut full = FullDue {
        profile: Vec::new(),
        age: 0,
        newcomer: true,
        // Due at once: the first member to come hears from us without waiting.
        sent_at: Instant::now()
            .checked_sub(WELCOME_GAP)
            .unwrap_or_else(Instant::now),
    };
    let mut peers = Peers::default();
    let mut revoked = match &mesh.revocations {
        Some(r) => r.watch(),
        // Never changes.
        None => tokio::sync::watch::channel(0).1,
    };
    for ev in early {
        handle(&mut swarm, ev, &mesh, &mut peers, &mut full);
    }
    // Said goodbye: nothing more is sent, but events are still handled (so the goodbye
    // leaves, and pings are answered) until the task is stopped.
    let mut gone = false;
    let mut dead = HashSet::new();
    loop {
        tokio::select! {
            _ = mesh.leaving.notified(), if !gone => {
                gone = true;
                seq += 1;
                let bye = Leave { node: mesh.self_name.clone(), seq };
                mesh.view
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .apply_leave(&bye, mesh.now_ms());
                let sent = swarm
                    .behaviour_mut()
                    .gossipsub
                    .publish(topic.clone(), Gossip::Leave(bye).encode());
                match sent {
                    Ok(_) => tracing::info!("{} leaving the mesh: told the other members", mesh.self_name),
                    Err(e) => tracing::info!("{} leaving the mesh; no member to tell ({e})", mesh.self_name),
                }
            }
            Ok(()) = revoked.changed() => {
                unbind_revoked(&mesh, &mut peers);
                send_revocations(&mut swarm, &topic, &mesh);
            }
            _ = every.tick(), if !gone => {
                redial(&mut swarm, &mesh, &join, &mut peers);
                seq += 1;
                let r = reporter.report(&me, &mesh.listen, &site, seq);
                full.age += 1;
                publish(&mut swarm, &topic, &mesh, &r, &mut full);
                offer_peers(&mut swarm, &topic, &mesh, seq);
                last_sent = Some(r);
            }
            _ = check.tick(), if !gone => {
                mesh.note_deaths(&mut dead);
                // Send at once when load moved a lot since the last report, or a member
                // joined that has not had our whole report (several joins, one report).
                let r = reporter.report(&me, &mesh.listen, &site, seq + 1);
                if full.welcome_due() || last_sent.as_ref().is_some_and(|l| l.changed_a_lot(&r)) {
                    seq += 1;
                    publish(&mut swarm, &topic, &mesh, &r, &mut full);
                    last_sent = Some(r);
                }
                if peers.introduce {
                    peers.introduce = false;
                    seq = introduce(&mut swarm, &topic, &peers, seq);
                }
            }
            ev = swarm.select_next_some() => {
                handle(&mut swarm, ev, &mesh, &mut peers, &mut full);
                // Greet a member that just subscribed now rather than at the next check.
                if full.welcome_due() && !gone {
                    seq += 1;
                    let r = reporter.report(&me, &mesh.listen, &site, seq);
                    publish(&mut swarm, &topic, &mesh, &r, &mut full);
                    last_sent = Some(r);
                }
            }
        }
    }
}

/// The peer an address ends with (`/p2p/<id>`).
fn peer_of(a: &Multiaddr) -> Option<PeerId> {
    match a.iter().last() {
        Some(Protocol::P2p(p)) => Some(p),
        _ => None,
    }
}

/// Whether to dial `peer`, known since `since`, now: of two members that learn of each
/// other together, the smaller peer id dials; the other only once the grace is over.
fn dial_due(me: &PeerId, peer: &PeerId, since: Instant) -> bool {
    me < peer || since.elapsed() >= DIAL_GRACE
}

impl Peers {
    /// Warns about what `source` sent, at most once a minute per peer (debug otherwise): a
    /// broken or hostile member sends the same every interval.
    fn warn(&mut self, source: PeerId, what: std::fmt::Arguments<'_>) {
        let now = Instant::now();
        if self
            .warned
            .get(&source)
            .is_some_and(|t| now.duration_since(*t) < WARN_EVERY)
        {
            tracing::debug!("{what}");
        } else {
            self.warned.insert(source, now);
            tracing::warn!("{what} (said at most once a minute per member)");
        }
    }

    /// Remembers `peer` at `addr`; true if it was not known before.
    fn learn(&mut self, peer: PeerId, addr: Multiaddr) -> bool {
        let room = self.known.len() < MAX_PEERS;
        match self.known.entry(peer) {
            std::collections::hash_map::Entry::Occupied(mut k) => {
                k.get_mut().0 = addr;
                false
            }
            std::collections::hash_map::Entry::Vacant(k) if room => {
                k.insert((addr, Instant::now()));
                true
            }
            std::collections::hash_map::Entry::Vacant(_) => false,
        }
    }
}

/// Options to dial `peer` at `addr`, unless it is connected or being dialled already.
fn to_peer(peer: PeerId, addr: Multiaddr) -> libp2p::swarm::dial_opts::DialOpts {
    use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
    DialOpts::peer_id(peer)
        .condition(PeerCondition::DisconnectedAndNotDialing)
        .addresses(vec![addr])
        .build()
}

fn dial(swarm: &mut Swarm<Behaviour>, dialed: &mut HashSet<PeerId>, peer: PeerId, addr: Multiaddr) {
    if peer == *swarm.local_peer_id() || swarm.is_connected(&peer) {
        return;
    }
    if dialed.len() >= MAX_PEERS && !dialed.contains(&peer) {
        return;
    }
    dialed.insert(peer);
    let _ = swarm.dial(to_peer(peer, addr));
}

/// How to dial a join address: to the peer it names (as any other dial, so a member never
/// dials one peer twice at once), or to whoever answers if it names none.
fn join_opts(a: &Multiaddr) -> libp2p::swarm::dial_opts::DialOpts {
    match peer_of(a) {
        Some(p) => to_peer(p, a.clone()),
        None => libp2p::swarm::dial_opts::DialOpts::unknown_peer_id()
            .address(a.clone())
            .build(),
    }
}

/// Dials members we know of but are not connected to (back after a partition, restarted,
/// or introduced and not dialled by the other side in time); the join addresses when we
/// are alone. Forgets addresses of members gone from the view.
fn redial(swarm: &mut Swarm<Behaviour>, mesh: &Mesh, join: &[Multiaddr], peers: &mut Peers) {
    let me = *swarm.local_peer_id();
    let in_view: HashSet<String> = {
        let v = mesh.view.lock().unwrap_or_else(|p| p.into_inner());
        v.members().map(|m| m.report.peer.clone()).collect()
    };
    let forget = Duration::from_millis(mesh.timing.forget_ms);
    peers.known.retain(|p, (_, since)| {
        swarm.is_connected(p) || in_view.contains(&p.to_string()) || since.elapsed() < forget
    });
    let due: Vec<(PeerId, Multiaddr)> = peers
        .known
        .iter()
        .filter(|(p, (_, since))| !swarm.is_connected(p) && dial_due(&me, p, *since))
        .map(|(p, (a, _))| (*p, a.clone()))
        .collect();
    for (p, a) in due {
        dial(swarm, &mut peers.dialed, p, a);
    }
    if swarm.connected_peers().next().is_none() {
        for a in join {
            let _ = swarm.dial(join_opts(a));
        }
    }
}

/// Sends every member the addresses of all members we are connected to (not our own:
/// whoever hears this has our whole report). Returns the next sequence number.
fn introduce(swarm: &mut Swarm<Behaviour>, topic: &IdentTopic, peers: &Peers, seq: u64) -> u64 {
    let addrs = peers
        .known
        .iter()
        .filter(|(p, _)| swarm.is_connected(p))
        .map(|(_, (a, _))| a.to_string());
    let parts = Introduce::split(seq, addrs);
    let next = seq + parts.len() as u64;
    for i in parts {
        let _ = swarm
            .behaviour_mut()
            .gossipsub
            .publish(topic.clone(), Gossip::Introduce(i).encode());
    }
    next
}

/// Takes a member's proof of identity: the peer it came from now speaks for that member.
fn proven(mesh: &Mesh, peers: &mut Peers, source: PeerId, p: fogline_core::mesh::Proof) {
    let Some(id) = &mesh.identity else {
        return;
    };
    if peers.bound.get(&p.node) == Some(&source) {
        return;
    }
    let revoked = mesh.revocations.as_ref().and_then(|r| {
        r.check(&rustls::pki_types::CertificateDer::from(p.cert.as_slice()))
            .err()
    });
    match revoked.map_or_else(|| id.verify(&p, &source.to_string()), Err) {
        Ok(()) => {
            tracing::debug!("mesh member {} proved its identity as {source}", p.node);
            peers.bound_cert.insert(p.node.clone(), p.cert);
            peers.bound.insert(p.node, source);
        }
        Err(why) => forged(
            mesh,
            peers,
            source,
            &format!(
                "a proof of identity for {} from peer {source}: {why}",
                p.node
            ),
        ),
    }
}

/// Passes on the revocation list this member holds (a newcomer hears it with our whole
/// report).
fn send_revocations(swarm: &mut Swarm<Behaviour>, topic: &IdentTopic, mesh: &Mesh) {
    let Some(list) = mesh.revocations.as_ref().and_then(|r| r.signed()) else {
        return;
    };
    let g = Gossip::Revocations(list, start_seq());
    let _ = swarm
        .behaviour_mut()
        .gossipsub
        .publish(topic.clone(), g.encode());
}

/// Members whose certificate a new list revokes are no longer heard, and are shown gone.
fn unbind_revoked(mesh: &Mesh, peers: &mut Peers) {
    let Some(r) = &mesh.revocations else {
        return;
    };
    let revoked: Vec<(String, String)> = peers
        .bound_cert
        .iter()
        .filter_map(|(node, der)| {
            let cert = rustls::pki_types::CertificateDer::from(der.as_slice());
            r.check(&cert).err().map(|why| (node.clone(), why))
        })
        .collect();
    let mut v = mesh.view.lock().unwrap_or_else(|p| p.into_inner());
    for (node, why) in revoked {
        peers.bound.remove(&node);
        peers.bound_cert.remove(&node);
        tracing::warn!("mesh member {node} is no longer heard: {why}");
        if let Some(seq) = v.get(&node).map(|m| m.report.seq + 1) {
            v.apply_leave(&Leave { node, seq }, mesh.now_ms());
        }
    }
}

/// Counts a refused report or proof; warns at most once a minute per peer.
fn forged(mesh: &Mesh, peers: &mut Peers, source: PeerId, what: &str) {
    mesh.traffic
        .forged
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    peers.warn(source, format_args!("refused {what}"));
}

/// A restarted member must outrank its own earlier reports: start from the wall clock.
fn start_seq() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Sends the peer clusters this member offers as places, if any.
fn offer_peers(swarm: &mut Swarm<Behaviour>, topic: &IdentTopic, mesh: &Mesh, seq: u64) {
    let places = mesh
        .peer_places
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    // Sent once more after the last peering ends, so the others drop it at once.
    let p = fogline_core::federation::PeerPlaces {
        bridge: mesh.self_name.clone(),
        seq,
        places,
    };
    let mut v = mesh.view.lock().unwrap_or_else(|p| p.into_inner());
    let had = v
        .peer_places(mesh.now_ms(), u64::MAX)
        .any(|(m, _)| m.report.node == mesh.self_name);
    if p.places.is_empty() && !had {
        return;
    }
    v.apply_places(p.clone(), mesh.now_ms());
    drop(v);
    let _ = swarm
        .behaviour_mut()
        .gossipsub
        .publish(topic.clone(), Gossip::Places(p).encode());
}

/// Sends `r`: whole when due, else its beat.
fn publish(
    swarm: &mut Swarm<Behaviour>,
    topic: &IdentTopic,
    mesh: &Mesh,
    r: &LoadReport,
    full: &mut FullDue,
) {
    mesh.view
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .apply(r.clone(), mesh.now_ms());
    let profile = r.profile_bytes();
    let whole = full.newcomer || full.age >= FULL_EVERY || profile != full.profile;
    if whole {
        // The proof goes first, over the same connections, so it is checked before the
        // report it vouches for arrives.
        if let Some(id) = &mesh.identity {
            match id.prove(&r.node, &r.peer, r.seq) {
                Ok(p) => {
                    let _ = swarm
                        .behaviour_mut()
                        .gossipsub
                        .publish(topic.clone(), Gossip::Proof(p).encode());
                }
                Err(e) => tracing::warn!("cannot prove this member's identity to the mesh: {e}"),
            }
        }
        send_revocations(swarm, topic, mesh);
    }
    let g = if whole {
        Gossip::Full(r.clone())
    } else {
        Gossip::Beat(r.beat())
    };
    match swarm
        .behaviour_mut()
        .gossipsub
        .publish(topic.clone(), g.encode())
    {
        // Nobody subscribed yet (a lone member): the whole report is still owed to the
        // first member that comes.
        Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => {}
        _ if whole => {
            *full = FullDue {
                profile,
                age: 0,
                newcomer: false,
                sent_at: Instant::now(),
            }
        }
        _ => {}
    }
}

fn handle(
    swarm: &mut Swarm<Behaviour>,
    ev: SwarmEvent<BehaviourEvent>,
    mesh: &Mesh,
    peers: &mut Peers,
    full: &mut FullDue,
) {
    match ev {
        SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
            propagation_source: source,
            message,
            ..
        })) => {
            // Reports are never forwarded: the sender is the author, authenticated by the
            // connection. A member may only speak for itself.
            let g = match Gossip::decode(&message.data) {
                Ok(g) => g,
                Err(e) => {
                    // A broken member sends one every interval: warn once a minute per member.
                    peers.warn(
                        source,
                        format_args!("dropping a load report from {source}: {e}"),
                    );
                    return;
                }
            };
            if let Gossip::Introduce(i) = g {
                return introduced(swarm, peers, source, i);
            }
            if let Gossip::Proof(p) = g {
                return proven(mesh, peers, source, p);
            }
            if let Gossip::Revocations(list, _) = g {
                // Taken when it verifies against the CA and is newer; the watch then
                // unbinds revoked members here and closes their QUIC connections.
                if let Some(r) = &mesh.revocations {
                    if let Err(why) = r.accept(&list) {
                        peers.warn(
                            source,
                            format_args!("refused a revocation list from {source}: {why}"),
                        );
                    }
                }
                return;
            }
            let now = mesh.now_ms();
            let from = source.to_string();
            let mut v = mesh.view.lock().unwrap_or_else(|p| p.into_inner());
            let own = match &g {
                // With certificates, only from the peer that proved it is this member.
                Gossip::Full(r) => {
                    r.peer == from
                        && (mesh.identity.is_none() || peers.bound.get(&r.node) == Some(&source))
                }
                // A beat from a member whose whole report has not come yet is dropped: it
                // cannot be told apart from one forged by another member, and the whole
                // report follows our subscription within moments.
                Gossip::Beat(b) => {
                    v.get(&b.node).is_some_and(|m| m.report.peer == from)
                        && (mesh.identity.is_none() || peers.bound.get(&b.node) == Some(&source))
                }
                Gossip::Leave(l) => v.get(&l.node).is_some_and(|m| m.report.peer == from),
                // Peer clusters are offered only by the cluster's bridges, each for itself.
                Gossip::Places(p) => {
                    v.get(&p.bridge).is_some_and(|m| {
                        m.report.peer == from && m.report.tier == fogline_core::config::Tier::Cloud
                    }) && (mesh.identity.is_none() || peers.bound.get(&p.bridge) == Some(&source))
                }
                Gossip::Introduce(_) | Gossip::Proof(_) | Gossip::Revocations(..) => false,
            };
            if own {
                if let Gossip::Full(r) = &g {
                    // Where it listens: a member we had never heard of came in through a
                    // join address, and the others should hear of it (and it of them).
                    let addr = r.mesh.as_deref().and_then(|a| a.parse::<Multiaddr>().ok());
                    if let Some(a) = addr {
                        if peers.learn(source, a.with(Protocol::P2p(source))) {
                            peers.introduce = true;
                        }
                    }
                }
                let name = g.node().unwrap_or_default().to_string();
                let goodbye = matches!(g, Gossip::Leave(_));
                if v.apply_gossip(g, now) && goodbye {
                    tracing::info!("mesh member {name} is stopping: no more placements on it");
                }
                if let Some(ms) = peers.rtt_ms.get(&source) {
                    if v.get(&name).is_some_and(|m| m.rtt_ms.is_none()) {
                        v.observe_rtt(&name, *ms);
                    }
                }
            } else if let Gossip::Full(r) = g {
                let why = if r.peer != from {
                    format!("it names peer {}", r.peer)
                } else {
                    "that member has not proved it holds its certificate".to_string()
                };
                forged(
                    mesh,
                    peers,
                    source,
                    &format!("a whole report for {} from peer {source}: {why}", r.node),
                );
            }
        }
        SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Subscribed {
            ..
        })) => full.newcomer = true,
        SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
            peer,
            result: Ok(rtt),
            ..
        })) => {
            let ms = rtt.as_secs_f64() * 1e3;
            peers.rtt_ms.insert(peer, ms);
            let from = peer.to_string();
            let mut v = mesh.view.lock().unwrap_or_else(|p| p.into_inner());
            let name = v
                .members()
                .find(|m| m.report.peer == from)
                .map(|m| m.report.node.clone());
            if let Some(n) = name {
                v.observe_rtt(&n, ms);
            }
        }
        SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
            peer_id,
            info,
            ..
        })) if info.protocol_version != MESH_PROTOCOL => {
            tracing::warn!(
                "mesh member {peer_id} speaks {} ({}), this one {MESH_PROTOCOL}",
                info.protocol_version,
                info.agent_version
            );
        }
        SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(list))) => {
            let me = *swarm.local_peer_id();
            for (peer, addr) in list {
                let addr = addr.with_p2p(peer).unwrap_or_else(|a| a);
                peers.learn(peer, addr.clone());
                if dial_due(&me, &peer, Instant::now()) {
                    dial(swarm, &mut peers.dialed, peer, addr);
                }
            }
        }
        SwarmEvent::ConnectionEstablished {
            peer_id,
            connection_id,
            endpoint,
            num_established,
            ..
        } => {
            mesh.traffic.connections.fetch_add(1, Ordering::Relaxed);
            // Both ends of a pair dialled (the grace ran out first, or a partition healed):
            // both ends close the connection the larger peer id dialled and keep the one the
            // smaller dialled, whichever opened first.
            let me = *swarm.local_peer_id();
            let larger_dialled = if endpoint.is_dialer() {
                me > peer_id
            } else {
                peer_id > me
            };
            let list = peers.conns.entry(peer_id).or_default();
            list.push((connection_id, larger_dialled));
            if num_established.get() > 1 && list.iter().any(|(_, larger)| !larger) {
                let extra: Vec<_> = list
                    .iter()
                    .filter(|(_, larger)| *larger)
                    .map(|(c, _)| *c)
                    .collect();
                for c in extra {
                    swarm.close_connection(c);
                }
            }
        }
        SwarmEvent::ConnectionClosed {
            peer_id,
            connection_id,
            num_established,
            ..
        } => {
            mesh.traffic.connections.fetch_sub(1, Ordering::Relaxed);
            if let Some(list) = peers.conns.get_mut(&peer_id) {
                list.retain(|(c, _)| *c != connection_id);
            }
            if num_established > 0 {
                // A second connection to a member closed: what was queued on it is lost,
                // so send our whole report and introductions again (it still hears us on
                // the other).
                full.newcomer = true;
                peers.introduce = true;
            } else {
                peers.conns.remove(&peer_id);
                peers.dialed.remove(&peer_id);
                peers.rtt_ms.remove(&peer_id);
                peers.warned.remove(&peer_id);
            }
        }
        SwarmEvent::OutgoingConnectionError {
            peer_id: Some(p),
            error,
            ..
        } => {
            peers.dialed.remove(&p);
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

/// Takes an introduction: dials the members in it we did not know (the smaller peer id of
/// each pair at once, the other after [`DIAL_GRACE`] if still unconnected).
fn introduced(swarm: &mut Swarm<Behaviour>, peers: &mut Peers, from: PeerId, i: Introduce) {
    let me = *swarm.local_peer_id();
    if peers.heard.len() > 4 * MAX_PEERS {
        peers.heard.clear();
    }
    for text in i.members {
        if !peers.heard.insert(text.clone()) {
            continue;
        }
        let Ok(addr) = text.parse::<Multiaddr>() else {
            tracing::debug!("mesh: ignoring an introduced address {text:?}");
            continue;
        };
        let Some(peer) = peer_of(&addr) else {
            continue;
        };
        // The sender's own address is learnt from its whole report, which tells a member
        // that has just come in through a join address apart from one introduced.
        if peer == me || peer == from {
            continue;
        }
        if peers.learn(peer, addr.clone()) && dial_due(&me, &peer, Instant::now()) {
            dial(swarm, &mut peers.dialed, peer, addr);
        }
    }
}
