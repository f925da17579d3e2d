//! Federation: this cluster's bridge peered with other clusters' bridges, each peer cluster
//! one more place for this cluster's routers.
//!
//! ```text
//!   cluster A (CA a)                                   cluster B (CA b)
//!   router ─┐                                          ┌─ edge node
//!   edge  ──┼─ mesh ─ bridge A ══ QUIC, mTLS ══ bridge B ─ mesh ─┤
//!   device ─┘         (consumer)  a↔b pinned  (provider)  └─ router
//! ```
//!
//! - The provider's admin mints an invite ([`Federation::invite`]): its listener's address,
//!   its CA's fingerprint and a one-time secret. The consumer's admin joins with it
//!   ([`Federation::join`]): the consumer checks the provider's CA against the fingerprint,
//!   the provider checks the secret and that the consumer's CA issued the certificate it
//!   connected with, and each pins the other's CA for this link only ([`listener`]).
//! - The consumer polls each provider for a summary every half second ([`watch`]): the
//!   link's liveness and round trip, and the provider's shared capacity, load and warm
//!   functions. Providers alive and offered namespaces are gossiped to the consumer's mesh as
//!   places ([`fogline_core::federation::PeerPlaces`]); a router places on them like any
//!   member and sends such calls to this bridge with `via`, which relays them
//!   ([`Federation::relay`]).
//! - The provider runs a consumer's calls in a namespace named after it, fetching modules
//!   from it by hash, within the share of its capacity it offered.

mod listener;
pub mod store;
mod watch;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use fogline_core::config::FederationSection;
use fogline_core::federation::{self as fed, FedReply, FedRequest, Invite, Summary};
use fogline_node::dispatch::BoxFut;
use fogline_node::federate::{Admin, FedError};
use fogline_node::peering::{self, PeerCas};
use fogline_node::quic::{Client, QuicError, Reply, Request};
use fogline_node::tls::TlsDir;
use fogline_node::Node;
use serde_json::json;

use store::{now_ms, Direction, PeerRec, Saved, Store};

/// What this side knows of one peer now (not kept across restarts).
#[derive(Default)]
struct Live {
    rtt_ms: Option<f64>,
    last_ok: Option<Instant>,
    last_error: Option<String>,
    summary: Summary,
    calls: u64,
    failed: u64,
    in_flight: Arc<AtomicU32>,
    summary_bytes: u64,
    summaries: u64,
    leaving: bool,
    /// A provider's link (set for providers).
    link: Option<Arc<Client>>,
    addr: Option<SocketAddr>,
}

/// A bridge's peerings.
pub struct Federation {
    node: Weak<Node>,
    cfg: FederationSection,
    /// This cluster's name, as providers know it.
    cluster: String,
    tls: TlsDir,
    ca: Vec<u8>,
    cas: Arc<PeerCas>,
    store: Store,
    saved: Mutex<Saved>,
    live: Mutex<HashMap<String, Live>>,
    /// Where the listener is bound.
    local: SocketAddr,
    refused: Mutex<HashMap<&'static str, u64>>,
    /// Places peers' calls on this cluster's members (when the bridge has no dispatch of
    /// its own, as a Swarm bridge has).
    placer: Arc<fogline_router::Router>,
    /// The time placing peers' calls here takes beyond their run (smoothed 7/8), ms.
    placement_ms: Mutex<Option<f64>>,
}

/// Starts federation on a bridge: binds the listener, loads the peerings, starts watching
/// providers. The node's `[federation]` and certificates are required.
pub fn start(node: &Arc<Node>, cfg: FederationSection) -> anyhow::Result<Arc<Federation>> {
    let dir = node.config.quic.tls_dir.clone().ok_or_else(|| {
        anyhow::anyhow!("[federation] needs the bridge's certificates (quic.tls_dir)")
    })?;
    let tls = TlsDir::load(&dir)?;
    let ca = peering::ca_der(&dir)?.to_vec();
    let cas = Arc::new(PeerCas::default());
    let store = Store::new(node.data_dir());
    let saved = store.load()?;
    for p in &saved.peers {
        if p.direction == Direction::Consumer && p.left_ms.is_none() {
            let der = hex::decode(&p.ca).map_err(|_| anyhow::anyhow!("peer {}: bad CA", p.name))?;
            cas.pin(&p.name, &der, p.bridge.as_deref())
                .map_err(anyhow::Error::msg)?;
        }
    }
    cas.open_to_joiners(saved.open_invites(now_ms()) > 0);
    let endpoint = fogline_node::quic::server_endpoint(
        cfg.listen,
        peering::server_config(&tls, cas.clone())?,
        &fogline_node::quic::QuicLimits::from_config(&node.config),
    )?;
    let local = endpoint.local_addr()?;
    let cluster = cfg.cluster.clone().unwrap_or_else(|| node.id.clone());
    fed::validate_peer_name(&cluster)
        .map_err(|e| anyhow::anyhow!("this cluster's name: {e}; set federation.cluster"))?;
    let f = Arc::new(Federation {
        node: Arc::downgrade(node),
        cfg,
        cluster,
        tls,
        ca,
        cas,
        store,
        saved: Mutex::new(saved),
        live: Mutex::new(HashMap::new()),
        local,
        refused: Mutex::new(HashMap::new()),
        placer: fogline_router::Router::for_peer_calls(node, Default::default()),
        placement_ms: Mutex::new(None),
    });
    {
        let providers: Vec<PeerRec> = f
            .saved()
            .peers
            .iter()
            .filter(|p| p.direction == Direction::Provider)
            .cloned()
            .collect();
        for p in providers {
            if let Err(e) = f.open_link(&p) {
                tracing::warn!("federation: cannot set up the link to {}: {e}", p.name);
            }
        }
    }
    let _ = node.links.federation.set(f.clone());
    tokio::spawn(listener::serve(endpoint, f.clone()));
    tokio::spawn(watch::run(Arc::downgrade(&f)));
    tracing::info!(
        "federation: cluster {} listening for peer bridges on {local}",
        f.cluster
    );
    Ok(f)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Federation {
    /// Where peer bridges connect.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Bytes sent and received (UDP payload) so far on the link to provider `name` at
    /// `addr`: what a peering costs the network (the benchmark reads it).
    pub async fn link_stats(&self, name: &str, addr: SocketAddr) -> Option<(u64, u64)> {
        let link = lock(&self.live).get(name)?.link.clone()?;
        let c = link.connection(addr, false).await.ok()?;
        let s = c.stats();
        Some((s.udp_tx.bytes, s.udp_rx.bytes))
    }

    fn saved(&self) -> std::sync::MutexGuard<'_, Saved> {
        lock(&self.saved)
    }

    fn persist(&self, s: &Saved) -> Result<(), FedError> {
        self.store
            .save(s)
            .map_err(|e| FedError::new(500, false, format!("cannot store the peering state: {e}")))
    }

    /// Counts and logs a refusal (its reason goes back to the peer too).
    fn refuse(&self, reason: &'static str, why: &str) -> FedError {
        *lock(&self.refused).entry(reason).or_insert(0) += 1;
        tracing::warn!("federation: refused: {why}");
        FedError::new(403, false, why.to_string())
    }

    fn open_link(&self, p: &PeerRec) -> anyhow::Result<()> {
        let ca = hex::decode(&p.ca)?;
        let client = Client::with_config(peering::peer_client_config(&self.tls, &ca)?)?;
        let mut live = lock(&self.live);
        let l = live.entry(p.name.clone()).or_default();
        l.link = Some(Arc::new(client));
        l.addr = None;
        Ok(())
    }

    /// The provider's address (resolved now and then: a name may move).
    async fn provider_addr(&self, name: &str) -> Option<SocketAddr> {
        if let Some(a) = lock(&self.live).get(name).and_then(|l| l.addr) {
            return Some(a);
        }
        let host = self.saved().peer(name)?.addr.clone()?;
        let a = tokio::net::lookup_host(host).await.ok()?.next()?;
        if let Some(l) = lock(&self.live).get_mut(name) {
            l.addr = Some(a);
        }
        Some(a)
    }

    fn alive(&self, l: &Live) -> bool {
        l.last_ok.is_some_and(|t| t.elapsed() < self.cfg.dead_after)
    }

    /// A peering's state as `ls` and `/metrics` show it.
    fn state(&self, p: &PeerRec, l: Option<&Live>) -> &'static str {
        match l {
            _ if p.left_ms.is_some() => "left",
            Some(l) if l.leaving => "leaving",
            Some(l) if self.alive(l) => "alive",
            _ => "dead",
        }
    }

    /// `fogline federation invite`.
    fn invite(&self, ttl_s: u64, share_pct: u8) -> Result<serde_json::Value, FedError> {
        if !(1..=100).contains(&share_pct) {
            return Err(FedError::new(
                400,
                false,
                format!("share {share_pct}% must be from 1 to 100"),
            ));
        }
        if ttl_s == 0 || ttl_s > 30 * 86_400 {
            return Err(FedError::new(
                400,
                false,
                "an invite lives from 1 s to 30 days".to_string(),
            ));
        }
        let addr = match &self.cfg.advertise {
            Some(a) => a.clone(),
            None if self.local.ip().is_unspecified() => {
                return Err(FedError::new(
                    400,
                    false,
                    format!(
                        "federation.listen is {}: set federation.advertise to the HOST:PORT peers reach",
                        self.local
                    ),
                ))
            }
            None => self.local.to_string(),
        };
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret)
            .map_err(|e| FedError::new(500, false, format!("no randomness: {e}")))?;
        let inv = Invite {
            addr,
            ca_sha256: peering::sha256(&self.ca),
            secret,
        };
        let expires_ms = now_ms() + ttl_s * 1000;
        let mut s = self.saved();
        let now = now_ms();
        s.invites
            .retain(|i| i.used_by.is_some() || i.expires_ms > now);
        s.invites.push(store::InviteRec {
            secret_sha256: hex::encode(peering::sha256(&secret)),
            expires_ms,
            share_pct,
            used_by: None,
        });
        self.persist(&s)?;
        self.cas.open_to_joiners(true);
        Ok(json!({ "token": inv.text(), "expires_ms": expires_ms, "share_pct": share_pct }))
    }

    /// Provider side of a join: the invite's secret, and the consumer's CA issued the
    /// certificate it connected with. Pins that CA; answers with ours.
    fn accept_join(
        &self,
        leaf: &rustls::pki_types::CertificateDer<'_>,
        secret: &[u8],
        name: &str,
        ca: &[u8],
    ) -> Result<FedReply, FedError> {
        let now = now_ms();
        let mut s = self.saved();
        let i = self.check_invite(&s, secret, now)?;
        fed::validate_peer_name(name).map_err(|e| self.refuse("bad_name", &e))?;
        // A consumer that left may join again under its name.
        s.peers.retain(|p| !(p.name == name && p.left_ms.is_some()));
        if s.peer(name).is_some() {
            let why = format!(
                "a peer named {name:?} exists already: leave it first, or join under another name"
            );
            return Err(self.refuse("name_taken", &why));
        }
        if let Err(e) = peering::issued_by(ca, leaf) {
            let why = format!("the CA sent did not issue the certificate presented: {e}");
            return Err(self.refuse("ca_mismatch", &why));
        }
        if fogline_node::tls::role_of(leaf) != Some(fogline_node::tls::Role::Bridge) {
            return Err(self.refuse("role", "only a bridge's certificate may peer"));
        }
        // A site of this same cluster: its certificate is one of ours, so the peering is
        // bound to the bridge it names, and its functions keep their keys here.
        let site = ca == self.ca.as_slice();
        let bridge = if site {
            let Some(b) = fogline_node::tls::name_of(leaf) else {
                return Err(self.refuse("role", "a site's bridge certificate must name it"));
            };
            Some(b)
        } else {
            None
        };
        // A peer cluster's functions live in a namespace of its name here.
        if let Some(node) = self.node.upgrade().filter(|_| !site) {
            node.access
                .create_namespace(name, false)
                .map_err(|e| FedError::new(500, false, format!("namespace {name}: {e}")))?;
        }
        let share = s.invites[i].share_pct;
        s.invites[i].used_by = Some(name.to_string());
        s.peers.push(PeerRec {
            name: name.to_string(),
            remote: name.to_string(),
            direction: Direction::Consumer,
            addr: None,
            ca: hex::encode(ca),
            share_pct: share,
            since_ms: now,
            site,
            bridge: bridge.clone(),
            left_ms: None,
        });
        self.persist(&s)?;
        self.cas.open_to_joiners(s.open_invites(now) > 0);
        drop(s);
        self.cas
            .pin(name, ca, bridge.as_deref())
            .map_err(|e| FedError::new(400, false, e))?;
        lock(&self.live).entry(name.to_string()).or_default();
        tracing::info!(
            "federation: {name} peered with this cluster (it may send calls here, {share}% share)"
        );
        Ok(FedReply::Joined {
            name: self.cluster.clone(),
            ca: self.ca.clone(),
            share_pct: share,
        })
    }

    /// The open invite `secret` belongs to, or why it cannot be used.
    fn check_invite(&self, s: &Saved, secret: &[u8], now: u64) -> Result<usize, FedError> {
        let hash = hex::encode(peering::sha256(secret));
        let Some(i) = s.invites.iter().position(|i| {
            fogline_core::access::constant_time_eq(i.secret_sha256.as_bytes(), hash.as_bytes())
        }) else {
            return Err(self.refuse(
                "invite_unknown",
                "the invite is not one this bridge made (forged, mistyped, or made by another bridge)",
            ));
        };
        if let Some(by) = &s.invites[i].used_by {
            let why = format!(
                "the invite was already used (by {by}); invites are one-time: ask for a new one"
            );
            return Err(self.refuse("invite_used", &why));
        }
        if s.invites[i].expires_ms <= now {
            return Err(self.refuse(
                "invite_expired",
                "the invite has expired: ask for a new one",
            ));
        }
        Ok(i)
    }

    /// Consumer side: `fogline federation join TOKEN`.
    async fn join(&self, token: &str, name: Option<String>) -> Result<serde_json::Value, FedError> {
        let inv = Invite::parse(token).map_err(|e| FedError::new(400, false, e.to_string()))?;
        if let Some(n) = &name {
            fed::validate_peer_name(n).map_err(|e| FedError::new(400, false, e))?;
            if self.saved().peer(n).is_some() {
                return Err(FedError::new(
                    409,
                    false,
                    format!("a peer named {n:?} exists already"),
                ));
            }
        }
        let addr = tokio::net::lookup_host(&inv.addr)
            .await
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| FedError::new(400, false, format!("cannot resolve {}", inv.addr)))?;
        let (cfg, seen) = peering::join_client_config(&self.tls, inv.ca_sha256)
            .map_err(|e| FedError::new(500, false, e.to_string()))?;
        let client =
            Client::with_config(cfg).map_err(|e| FedError::new(500, false, e.to_string()))?;
        let req = FedRequest::Join {
            secret: inv.secret.to_vec(),
            name: self.cluster.clone(),
            ca: self.ca.clone(),
        };
        let reply = tokio::time::timeout(Duration::from_secs(10), client.federate(addr, req))
            .await
            .map_err(|_| {
                FedError::new(
                    504,
                    true,
                    format!("{} did not answer within 10 s", inv.addr),
                )
            })?;
        client.endpoint().close(0u32.into(), b"joined");
        let (name_b, ca, share) = match reply {
            Ok((
                FedReply::Joined {
                    name,
                    ca,
                    share_pct,
                },
                _,
            )) => (name, ca, share_pct),
            Ok((other, _)) => {
                return Err(FedError::new(
                    502,
                    false,
                    format!("unexpected answer to a join: {other:?}"),
                ))
            }
            Err(QuicError::Remote(m)) => {
                return Err(FedError::new(
                    m.status,
                    false,
                    format!("the provider refused: {}", m.message),
                ))
            }
            Err(e) => {
                return Err(FedError::new(
                    502,
                    true,
                    format!("joining {}: {e}", inv.addr),
                ))
            }
        };
        let verified = seen.read().unwrap_or_else(|p| p.into_inner()).clone();
        if peering::sha256(&ca) != inv.ca_sha256 || verified.as_deref() != Some(&ca[..]) {
            return Err(FedError::new(
                502,
                false,
                "the provider's CA is not the one the invite names".to_string(),
            ));
        }
        let local = name.unwrap_or_else(|| name_b.clone());
        fed::validate_peer_name(&local).map_err(|e| FedError::new(400, false, e))?;
        let rec = PeerRec {
            name: local.clone(),
            remote: name_b,
            direction: Direction::Provider,
            addr: Some(inv.addr.clone()),
            ca: hex::encode(&ca),
            share_pct: share,
            since_ms: now_ms(),
            site: ca == self.ca,
            bridge: None,
            left_ms: None,
        };
        {
            let mut s = self.saved();
            if s.peer(&local).is_some() {
                return Err(FedError::new(
                    409,
                    false,
                    format!("a peer named {local:?} exists already"),
                ));
            }
            s.peers.push(rec.clone());
            self.persist(&s)?;
        }
        self.open_link(&rec)
            .map_err(|e| FedError::new(500, false, e.to_string()))?;
        tracing::info!("federation: peered with provider {local} at {}", inv.addr);
        Ok(json!({ "peer": local, "direction": "provider", "share_pct": share }))
    }

    fn list(&self) -> serde_json::Value {
        let s = self.saved();
        let live = lock(&self.live);
        let peers: Vec<serde_json::Value> = s
            .peers
            .iter()
            .map(|p| {
                let l = live.get(&p.name);
                let state = self.state(p, l);
                let namespaces: Vec<&String> = s
                    .offload
                    .iter()
                    .filter(|(_, to)| to.contains(&p.name))
                    .map(|(ns, _)| ns)
                    .collect();
                json!({
                    "name": p.name,
                    "calls_itself": p.remote,
                    "site": p.site,
                    "direction": p.direction.as_str(),
                    "state": state,
                    "address": p.addr,
                    "rtt_ms": l.and_then(|l| l.rtt_ms),
                    "placement_ms": l.map(|l| l.summary.placement_ms),
                    "refused_there": l.map(|l| l.summary.refused.clone()),
                    "share_pct": p.share_pct,
                    "shared_cores": l.map(|l| l.summary.cores),
                    "in_flight": l.map(|l| l.in_flight.load(Ordering::Relaxed)),
                    "calls": l.map_or(0, |l| l.calls),
                    "failed": l.map_or(0, |l| l.failed),
                    "last_error": l.and_then(|l| l.last_error.clone()),
                    "offloaded": namespaces,
                    "since_ms": p.since_ms,
                })
            })
            .collect();
        json!({ "cluster": self.cluster, "listen": self.local.to_string(), "peers": peers })
    }

    /// Ends a peering: no new calls, calls in flight finish (up to 30 s), a provider is told,
    /// then both sides forget it.
    async fn leave(&self, name: &str) -> Result<serde_json::Value, FedError> {
        let Some(rec) = self.saved().peer(name).cloned() else {
            return Err(FedError::new(404, false, format!("no peer named {name:?}")));
        };
        let in_flight = {
            let mut live = lock(&self.live);
            let l = live.entry(name.to_string()).or_default();
            l.leaving = true;
            l.in_flight.clone()
        };
        if let Some(f) = self.node.upgrade() {
            self.offer(&f);
        }
        let t = Instant::now();
        while in_flight.load(Ordering::SeqCst) > 0 && t.elapsed() < Duration::from_secs(30) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut told = None;
        if rec.direction == Direction::Provider {
            let link = lock(&self.live).get(name).and_then(|l| l.link.clone());
            if let (Some(link), Some(addr)) = (link, self.provider_addr(name).await) {
                told = Some(
                    tokio::time::timeout(
                        Duration::from_secs(3),
                        link.federate(addr, FedRequest::Leave),
                    )
                    .await
                    .map_err(|_| "no answer within 3 s".to_string())
                    .and_then(|r| r.map(|_| ()).map_err(|e| e.to_string())),
                );
                link.endpoint().close(0u32.into(), b"left");
            }
        }
        self.forget(name)?;
        Ok(json!({
            "left": name,
            "waited_ms": t.elapsed().as_millis() as u64,
            "provider_told": told.map(|r| r.map_or_else(|e| e, |()| "yes".into())),
        }))
    }

    fn forget(&self, name: &str) -> Result<(), FedError> {
        let mut s = self.saved();
        s.peers.retain(|p| p.name != name);
        for to in s.offload.values_mut() {
            to.retain(|p| p != name);
        }
        s.offload.retain(|_, to| !to.is_empty());
        self.persist(&s)?;
        drop(s);
        self.cas.unpin(name);
        lock(&self.live).remove(name);
        tracing::info!("federation: peering with {name} ended");
        Ok(())
    }

    fn offload(&self, ns: &str, to: &str, on: bool) -> Result<serde_json::Value, FedError> {
        let why = format!(
            "{to} is a consumer of this cluster: calls go to providers only (peer back for two-way)"
        );
        self.set_rule(
            ns,
            to,
            Direction::Provider,
            &why,
            on,
            |s| &mut s.offload,
            ns,
            to,
        )?;
        Ok(json!({ "namespace": ns, "to": to, "offloaded": on }))
    }

    /// Provider side: `fogline federation refuse NAMESPACE --from NAME`.
    fn refuse_ns(&self, ns: &str, from: &str, on: bool) -> Result<serde_json::Value, FedError> {
        let why = format!("{from} is a provider of this cluster: it sends no calls here");
        self.set_rule(
            ns,
            from,
            Direction::Consumer,
            &why,
            on,
            |s| &mut s.refused,
            from,
            ns,
        )?;
        Ok(json!({ "namespace": ns, "from": from, "refused": on }))
    }

    /// Adds (`on`) or removes `item` under `key` in one of the saved lists, once `ns` is a
    /// namespace and `peer` a peer of direction `want` (else `wrong` says why not).
    #[allow(clippy::too_many_arguments)]
    fn set_rule(
        &self,
        ns: &str,
        peer: &str,
        want: Direction,
        wrong: &str,
        on: bool,
        lists: impl FnOnce(&mut Saved) -> &mut std::collections::BTreeMap<String, Vec<String>>,
        key: &str,
        item: &str,
    ) -> Result<(), FedError> {
        fogline_core::access::validate_namespace(ns)
            .map_err(|e| FedError::new(400, false, e.to_string()))?;
        let mut s = self.saved();
        match s.peer(peer) {
            Some(p) if p.direction == want => {}
            Some(_) => return Err(FedError::new(400, false, wrong.to_string())),
            None => return Err(FedError::new(404, false, format!("no peer named {peer:?}"))),
        }
        let map = lists(&mut s);
        let list = map.entry(key.to_string()).or_default();
        list.retain(|p| p != item);
        if on {
            list.push(item.to_string());
        }
        map.retain(|_, l| !l.is_empty());
        self.persist(&s)
    }

    /// Gossips the providers that are alive, with what may go there, as places.
    fn offer(&self, node: &Node) {
        let Some(mesh) = node.links.mesh.get() else {
            return;
        };
        let s = self.saved();
        let live = lock(&self.live);
        let places = s
            .peers
            .iter()
            .filter(|p| p.direction == Direction::Provider)
            .filter_map(|p| {
                let l = live.get(&p.name)?;
                let namespaces: Vec<String> = s
                    .offload
                    .iter()
                    .filter(|(_, to)| to.contains(&p.name))
                    .map(|(ns, _)| ns.clone())
                    .collect();
                // Not the ones it refuses: they would only come back refused.
                let namespaces = fed::still_taken(namespaces, &l.summary);
                (self.alive(l) && !l.leaving && !namespaces.is_empty()).then(|| fed::PeerPlace {
                    name: p.name.clone(),
                    // The link's round trip, and the provider's own placement behind it.
                    rtt_ms: l.rtt_ms.unwrap_or(0.0) as f32 + l.summary.placement_ms,
                    summary: l.summary.clone(),
                    namespaces,
                })
            })
            .collect();
        mesh.offer_peers(places);
    }

    /// The summary this cluster gives `consumer`: this bridge (when it runs functions) and
    /// the live members that do.
    fn summary_for(&self, node: &Node, rec: &PeerRec) -> Summary {
        let consumer = (!rec.site).then_some(rec.name.as_str());
        let share_pct = rec.share_pct;
        let ours = |k: &str| match consumer {
            Some(c) => fed::consumer_key(c, k).is_some(),
            None => true,
        };
        let own: Vec<String> = if node.runs_functions() {
            node.list()
                .into_iter()
                .map(|d| d.manifest.name.clone())
                .filter(|k| ours(k))
                .collect()
        } else {
            Vec::new()
        };
        let own_svc: Vec<(String, f32)> = own
            .iter()
            .filter_map(|k| Some((k.clone(), node.metrics.function(k).service_ms()?)))
            .collect();
        let own_warm: Vec<String> = own_svc.iter().map(|(k, _)| k.clone()).collect();
        let me = node.runs_functions().then(|| fed::MemberLoad {
            cores: node.machine.cores,
            in_flight: node.gauges().instances_in_use,
            speed: node.machine.speed,
            warm: &own_warm,
            service_ms: &own_svc,
        });
        // Its members that run functions (not this bridge, counted above): their loads
        // and, before any peer call was placed, their round trips.
        let (base, rtts) = match node.links.mesh.get() {
            None => (fed::summarize(me, consumer, share_pct), Vec::new()),
            Some(mesh) => mesh.with_view(|v| {
                let running: Vec<&fogline_core::mesh::Member> = v
                    .members()
                    .filter(|m| {
                        m.report.node != node.id
                            && m.state == fogline_core::mesh::State::Alive
                            && !m.report.runtimes.is_empty()
                    })
                    .collect();
                let others = running.iter().map(|m| {
                    let r = &m.report;
                    fed::MemberLoad {
                        cores: r.cores,
                        in_flight: r.in_flight.saturating_add(r.queued),
                        speed: r.speed,
                        warm: &r.warm,
                        service_ms: &r.service_ms,
                    }
                });
                let s = fed::summarize(me.into_iter().chain(others), consumer, share_pct);
                (s, running.iter().filter_map(|m| m.rtt_ms).collect())
            }),
        };
        let refused = self
            .saved()
            .refused
            .get(&rec.name)
            .cloned()
            .unwrap_or_default();
        Summary {
            placement_ms: fed::placement_estimate(*lock(&self.placement_ms), &rtts),
            refused,
            ..base
        }
        .bounded()
    }
}

impl fogline_node::federate::Federation for Federation {
    fn relay<'a>(&'a self, peer: &'a str, req: Request) -> BoxFut<'a, Result<Reply, FedError>> {
        Box::pin(async move {
            let ns = fogline_core::access::split(&req.function).1.to_string();
            let (link, in_flight) = {
                let allowed = self
                    .saved()
                    .offload
                    .get(&ns)
                    .is_some_and(|to| to.iter().any(|p| p == peer));
                let live = lock(&self.live);
                let Some(l) = live.get(peer).filter(|l| l.link.is_some()) else {
                    return Err(FedError::new(
                        404,
                        true,
                        format!("{peer} is not a provider this cluster is peered with"),
                    ));
                };
                if !allowed {
                    return Err(FedError::new(
                        403,
                        false,
                        format!("namespace {ns} is not offloaded to {peer} (fogline federation offload {ns} --to {peer})"),
                    ));
                }
                if l.leaving {
                    return Err(FedError::new(
                        503,
                        true,
                        format!("the peering with {peer} is ending"),
                    ));
                }
                if !self.alive(l) {
                    return Err(FedError::new(
                        503,
                        true,
                        format!(
                            "{peer} is unreachable (no answer for {:?})",
                            self.cfg.dead_after
                        ),
                    ));
                }
                (l.link.clone(), l.in_flight.clone())
            };
            let Some(link) = link else {
                return Err(FedError::new(503, true, format!("no link to {peer}")));
            };
            let Some(addr) = self.provider_addr(peer).await else {
                return Err(FedError::new(
                    503,
                    true,
                    format!("cannot resolve {peer}'s address"),
                ));
            };
            let Some(node) = self.node.upgrade() else {
                return Err(FedError::new(503, true, "stopping".to_string()));
            };
            in_flight.fetch_add(1, Ordering::SeqCst);
            let out = link.invoke(addr, &req, node.as_ref()).await;
            in_flight.fetch_sub(1, Ordering::SeqCst);
            {
                let mut live = lock(&self.live);
                if let Some(l) = live.get_mut(peer) {
                    l.calls += 1;
                    if out.is_err() {
                        l.failed += 1;
                    }
                }
            }
            match out {
                Ok(mut r) => {
                    r.result.node = peer.to_string();
                    Ok(r)
                }
                Err(QuicError::Remote(m)) => Err(FedError::new(
                    m.status,
                    m.retryable,
                    format!("in {peer}: {}", m.message),
                )),
                // Never sent: another place may take it.
                Err(e @ QuicError::Connect { .. }) => {
                    Err(FedError::new(503, true, format!("{peer}: {e}")))
                }
                // Lost on the way (the provider stopped answering and its link was cut):
                // an idempotent call may run elsewhere; any other may have run there.
                Err(e) => Err(FedError::new(
                    502,
                    req.manifest.as_ref().is_some_and(|m| m.idempotent),
                    format!("{peer}: {e}"),
                )),
            }
        })
    }

    fn answer(&self, consumer: &str, req: FedRequest) -> Result<FedReply, FedError> {
        let Some(rec) = self
            .saved()
            .peer(consumer)
            .filter(|p| p.left_ms.is_none())
            .cloned()
        else {
            return Err(self.refuse(
                "not_peered",
                &format!("{consumer} is not peered with this cluster"),
            ));
        };
        match req {
            FedRequest::Summary => {
                let node = self
                    .node
                    .upgrade()
                    .ok_or_else(|| FedError::new(503, true, "stopping"))?;
                let s = self.summary_for(&node, &rec);
                let mut live = lock(&self.live);
                let l = live.entry(consumer.to_string()).or_default();
                l.last_ok = Some(Instant::now());
                l.summary = s.clone();
                let reply = FedReply::Summary(s);
                let mut b = Vec::new();
                fogline_core::wire::encode(
                    &fogline_core::wire::Frame::Federated(reply.clone()),
                    &mut b,
                );
                l.summary_bytes += b.len() as u64;
                l.summaries += 1;
                Ok(reply)
            }
            FedRequest::Leave => {
                // Kept as `left` (its admin sees why calls stopped) until removed here.
                let mut s = self.saved();
                if let Some(p) = s.peers.iter_mut().find(|p| p.name == consumer) {
                    p.left_ms = Some(now_ms());
                }
                self.persist(&s)?;
                drop(s);
                self.cas.unpin(consumer);
                lock(&self.live).remove(consumer);
                tracing::info!("federation: {consumer} left");
                Ok(FedReply::Left)
            }
            FedRequest::Join { secret, .. } => {
                self.check_invite(&self.saved(), &secret, now_ms())?;
                Err(FedError::new(
                    409,
                    false,
                    format!("{consumer} is peered already"),
                ))
            }
        }
    }

    fn admit(&self, consumer: &str, key: &str) -> Result<String, FedError> {
        let ns = fogline_core::access::split(key).1;
        if self
            .saved()
            .refused
            .get(consumer)
            .is_some_and(|l| l.iter().any(|n| n == ns))
        {
            let why = format!("this cluster does not take namespace {ns} from {consumer}");
            // Another place may take it: retryable.
            return Err(FedError {
                retryable: true,
                ..self.refuse("namespace", &why)
            });
        }
        let (share, site) = match self.saved().peer(consumer) {
            Some(p) if p.direction == Direction::Consumer && p.left_ms.is_none() => {
                (p.share_pct, p.site)
            }
            _ => {
                return Err(self.refuse(
                    "not_peered",
                    &format!("{consumer} may not send calls to this cluster"),
                ))
            }
        };
        let node = self
            .node
            .upgrade()
            .ok_or_else(|| FedError::new(503, true, "stopping"))?;
        let slots = node.capacity().instance_slots.max(1);
        let cap = (slots * u32::from(share) / 100).max(1);
        let live = lock(&self.live);
        let Some(l) = live.get(consumer) else {
            return Err(FedError::new(503, true, "peering not ready"));
        };
        let n = l.in_flight.fetch_add(1, Ordering::SeqCst);
        if n >= cap {
            l.in_flight.fetch_sub(1, Ordering::SeqCst);
            *lock(&self.refused).entry("capacity").or_insert(0) += 1;
            return Err(FedError::new(
                429,
                true,
                format!("{consumer}'s share here ({cap} calls at once) is in use: {key} must go elsewhere"),
            ));
        }
        if site {
            return Ok(key.to_string());
        }
        fed::provider_key(consumer, key).map_err(|e| {
            l.in_flight.fetch_sub(1, Ordering::SeqCst);
            FedError::new(400, false, e)
        })
    }

    fn done(&self, consumer: &str, ok: bool) {
        let mut live = lock(&self.live);
        if let Some(l) = live.get_mut(consumer) {
            l.in_flight.fetch_sub(1, Ordering::SeqCst);
            l.calls += 1;
            if !ok {
                l.failed += 1;
            }
        }
    }

    fn run<'a>(
        &'a self,
        key: &'a str,
        body: bytes::Bytes,
    ) -> BoxFut<'a, Result<fogline_node::dispatch::Placed, fogline_node::dispatch::Refused>> {
        use fogline_node::dispatch::Dispatch;
        Box::pin(async move {
            let out = match self
                .node
                .upgrade()
                .and_then(|n| n.links.dispatch.get().cloned())
            {
                Some(d) => d.dispatch(key, body).await,
                None => self.placer.dispatch(key, body).await,
            };
            // What placing it cost beyond its run (a replayed answer cost nothing to learn
            // from): peers add it to the link's round trip.
            if let Some(p) = out.as_ref().ok().filter(|p| p.took_ms > 0.0) {
                let extra = (p.took_ms - p.run_ms).max(0.0);
                let mut m = lock(&self.placement_ms);
                *m = Some(m.map_or(extra, |m| m * 0.875 + extra * 0.125));
            }
            out
        })
    }

    fn admin<'a>(&'a self, req: Admin) -> BoxFut<'a, Result<serde_json::Value, FedError>> {
        Box::pin(async move {
            match req {
                Admin::Invite { ttl_s, share_pct } => self.invite(ttl_s, share_pct),
                Admin::Join { token, name } => self.join(&token, name).await,
                Admin::List => Ok(self.list()),
                Admin::Leave { name } => self.leave(&name).await,
                Admin::Refuse {
                    namespace,
                    from,
                    on,
                } => self.refuse_ns(&namespace, &from, on),
                Admin::Offload { namespace, to, on } => {
                    let r = self.offload(&namespace, &to, on);
                    if let Some(n) = self.node.upgrade() {
                        self.offer(&n);
                    }
                    r
                }
            }
        })
    }

    fn metrics(&self, out: &mut String) {
        use std::fmt::Write;
        let s = self.saved();
        let live = lock(&self.live);
        out.push_str("# HELP fogline_federation_peer A peering: 1 per peer, by direction and state.\n# TYPE fogline_federation_peer gauge\n");
        for p in &s.peers {
            let state = self.state(p, live.get(&p.name));
            let _ = writeln!(
                out,
                "fogline_federation_peer{{peer=\"{}\",direction=\"{}\",state=\"{state}\"}} 1",
                p.name,
                p.direction.as_str()
            );
        }
        out.push_str("# HELP fogline_federation_calls_total Calls sent to (provider) or taken from (consumer) a peer.\n# TYPE fogline_federation_calls_total counter\n");
        for p in &s.peers {
            let l = live.get(&p.name);
            let _ = writeln!(
                out,
                "fogline_federation_calls_total{{peer=\"{}\",direction=\"{}\"}} {}",
                p.name,
                p.direction.as_str(),
                l.map_or(0, |l| l.calls)
            );
        }
        out.push_str("# HELP fogline_federation_summary_bytes_total Summary bytes received from a provider (at the consumer) or sent to a consumer (at the provider).\n# TYPE fogline_federation_summary_bytes_total counter\n");
        for p in &s.peers {
            let l = live.get(&p.name);
            let _ = writeln!(
                out,
                "fogline_federation_summary_bytes_total{{peer=\"{}\"}} {}",
                p.name,
                l.map_or(0, |l| l.summary_bytes)
            );
        }
        out.push_str("# HELP fogline_federation_summaries_total Summaries exchanged with a peer.\n# TYPE fogline_federation_summaries_total counter\n");
        for p in &s.peers {
            let _ = writeln!(
                out,
                "fogline_federation_summaries_total{{peer=\"{}\"}} {}",
                p.name,
                live.get(&p.name).map_or(0, |l| l.summaries)
            );
        }
        out.push_str("# HELP fogline_federation_refused_total Peer requests refused, by reason.\n# TYPE fogline_federation_refused_total counter\n");
        for (r, n) in lock(&self.refused).iter() {
            let _ = writeln!(
                out,
                "fogline_federation_refused_total{{reason=\"{r}\"}} {n}"
            );
        }
    }
}
