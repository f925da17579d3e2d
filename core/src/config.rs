//! The node agent's config file (`configs/node.toml`): strict, versioned TOML.
//!
//! Every section and key is optional except `version`; unknown keys are errors that name
//! the key, so a typo never silently falls back to a default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::manifest::ManifestLimits;
use crate::units::{duration_str, ByteSize};

/// The config format this build reads.
pub const CONFIG_VERSION: u32 = 1;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub version: u32,
    #[serde(default)]
    pub node: NodeSection,
    #[serde(default)]
    pub http: HttpSection,
    #[serde(default)]
    pub wasm: WasmSection,
    #[serde(default, rename = "async")]
    pub async_calls: AsyncSection,
    #[serde(default)]
    pub quic: QuicSection,
    #[serde(default)]
    pub mesh: MeshSection,
    /// Present for `fogline router`: placement across tiers, and its ingresses.
    pub router: Option<RouterSection>,
    #[serde(default)]
    pub container: ContainerSection,
    /// The CoAP trigger (RFC 7252 over UDP), for constrained devices.
    #[serde(default)]
    pub coap: CoapSection,
    /// The MQTT trigger: messages on mapped topics invoke functions (on a router they are
    /// placed like any call). `[router.mqtt]` is still read, as before.
    pub mqtt: Option<MqttSection>,
    /// Per-namespace quotas: `[quota.NAME]`, and `[quota."*"]` for every namespace without
    /// its own entry (the default namespace included).
    #[serde(default)]
    pub quota: std::collections::BTreeMap<String, crate::access::Quota>,
    #[serde(default)]
    pub secrets: SecretsSection,
    /// Enrollment of new boards by join token (`fogline join`): on a bridge or router
    /// that holds the cluster CA.
    pub enroll: Option<EnrollSection>,
    pub renew: Option<RenewSection>,
    /// Call traces: kept per member, fetched on demand, optionally exported (OTLP).
    #[serde(default)]
    pub trace: TraceSection,
    /// The dashboard at `/ui`.
    #[serde(default)]
    pub ui: UiSection,
    /// A bridge's workers as a Docker Swarm service (`fogline bridge --swarm`).
    pub swarm: Option<SwarmSection>,
    /// A bridge's link to peer clusters (`fogline federation …`).
    pub federation: Option<FederationSection>,
}

/// Where a bridge listens for peer clusters' bridges (mutual TLS, each side pinning the
/// other's CA from the invite exchange).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FederationSection {
    /// The bridge-to-bridge QUIC listener.
    pub listen: SocketAddr,
    /// This cluster's name as its providers know it (default: the bridge's id): a DNS
    /// label, which becomes the namespace of its functions on each provider.
    pub cluster: Option<String>,
    /// What invites name (`HOST:PORT`) when `listen` is a wildcard or behind NAT.
    pub advertise: Option<String>,
    /// A peer silent this long is shown dead and placed nothing.
    #[serde(default = "default_peer_dead", with = "duration_str")]
    pub dead_after: Duration,
}

fn default_peer_dead() -> Duration {
    Duration::from_secs(2)
}

/// The cloud tier's workers as a replicated Docker Swarm service, sized by the bridge.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SwarmSection {
    /// Run workers on Swarm (also `fogline bridge --swarm`).
    #[serde(default)]
    pub enabled: bool,
    /// The workers' image (`fogline image build` makes `fogline:VERSION`).
    #[serde(default = "default_swarm_image")]
    pub image: String,
    /// The service's name (adopted if it exists and is ours).
    #[serde(default = "default_swarm_service")]
    pub service: String,
    /// Fewest replicas (0: none while idle; the first call waits for one).
    #[serde(default)]
    pub min_replicas: u32,
    #[serde(default = "default_swarm_max")]
    pub max_replicas: u32,
    /// Calls in flight one replica is sized for.
    #[serde(default = "default_target_inflight")]
    pub target_inflight: u32,
    /// How long demand must stay below the replicas before they are scaled down.
    #[serde(default = "default_swarm_idle", with = "duration_str")]
    pub idle: Duration,
    /// Scale ahead of forecast arrivals (off: on calls in flight and waiting only, a
    /// reactive scaler, for comparison).
    #[serde(default = "default_true")]
    pub forecast: bool,
    /// The tasks' network: `host` (the default; workers bind loopback-free ports of their
    /// host) or an overlay network's name.
    #[serde(default = "default_swarm_network")]
    pub network: String,
    /// The host's Docker socket, mounted into workers that run container functions
    /// (none: workers run Wasm functions only).
    pub docker_socket: Option<PathBuf>,
    /// The address workers bind and advertise (`127.0.0.1` on one host; on a
    /// multi-host swarm, an address every host reaches, e.g. `0.0.0.0` with overlay).
    #[serde(default = "default_swarm_bind")]
    pub bind: std::net::IpAddr,
}

fn default_swarm_image() -> String {
    format!("fogline:{}", env!("CARGO_PKG_VERSION"))
}
fn default_swarm_service() -> String {
    "fogline-workers".into()
}
fn default_swarm_max() -> u32 {
    4
}
fn default_target_inflight() -> u32 {
    8
}
fn default_swarm_idle() -> Duration {
    Duration::from_secs(60)
}
fn default_swarm_network() -> String {
    "host".into()
}
fn default_swarm_bind() -> std::net::IpAddr {
    std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
}

impl Default for SwarmSection {
    fn default() -> Self {
        SwarmSection {
            enabled: false,
            image: default_swarm_image(),
            service: default_swarm_service(),
            min_replicas: 0,
            max_replicas: default_swarm_max(),
            target_inflight: default_target_inflight(),
            idle: default_swarm_idle(),
            forecast: true,
            network: default_swarm_network(),
            docker_socket: None,
            bind: default_swarm_bind(),
        }
    }
}

/// Traces of calls (W3C Trace Context at every ingress, spans at every hop).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TraceSection {
    /// Record spans. Off: `traceparent` is still carried on, and every answer still has
    /// its `X-Call-Id`, but nothing is kept.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Most traces kept on this member (oldest dropped first; an async call's submit and
    /// run, recorded apart on one member, count as two).
    #[serde(default = "default_trace_keep")]
    pub keep: usize,
    /// Most spans kept of one trace on this member.
    #[serde(default = "default_trace_spans")]
    pub max_spans: usize,
    /// An OpenTelemetry collector's OTLP/HTTP traces endpoint
    /// (`http://HOST:4318/v1/traces`): spans are sent there as OTLP JSON. Off by default.
    pub otlp: Option<String>,
    /// How often spans are sent to `otlp`.
    #[serde(default = "default_otlp_every", with = "duration_str")]
    pub otlp_every: Duration,
}

fn default_trace_keep() -> usize {
    2000
}
fn default_trace_spans() -> usize {
    256
}
fn default_otlp_every() -> Duration {
    Duration::from_secs(2)
}

impl Default for TraceSection {
    fn default() -> Self {
        TraceSection {
            enabled: default_true(),
            keep: default_trace_keep(),
            max_spans: default_trace_spans(),
            otlp: None,
            otlp_every: default_otlp_every(),
        }
    }
}

/// The dashboard.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UiSection {
    /// Serve `/ui` (default on; its data needs a token with read scope like every `/v1` route).
    #[serde(default)]
    pub disabled: bool,
    /// The folder of simulator scenarios the Simulator page offers (files they name must
    /// lie under its parent's parent, as `configs/sim` and `data` do in the source tree and
    /// in the package). Default: `configs/sim` under the working folder, else
    /// `/usr/share/fogline/configs/sim`.
    pub scenarios: Option<PathBuf>,
}

/// Where new boards enroll, and the CA that signs them.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EnrollSection {
    /// TLS address joiners reach (port 0 picks a free port).
    pub listen: SocketAddr,
    /// The address join tokens name, when `listen` is not what joiners reach (a wildcard
    /// or a NAT); default: `listen`.
    pub advertise: Option<String>,
    /// The cluster CA's folder (`fogline certs init`), with its key.
    pub ca_dir: PathBuf,
    /// How long a certificate issued (or renewed) here is valid; members renew at two
    /// thirds of it.
    #[serde(default = "default_cert_life", with = "duration_str")]
    pub cert_life: Duration,
}

fn default_cert_life() -> Duration {
    Duration::from_secs(365 * 86_400)
}

/// Renewing this member's certificate before it expires, from an issuer (`[enroll]` of a
/// bridge or router): at two thirds of its life, without a restart.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RenewSection {
    /// The issuer's enrollment address (`fogline join` writes the one its token named).
    pub issuer: String,
}

/// Where secrets' key and their files for functions live.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SecretsSection {
    /// The key that encrypts secrets at rest: outside the store, readable by the owner
    /// only. Default: `DATA_DIR/secrets.key`; put it on another disk or a mounted secret to
    /// keep it apart from backups of the data folder.
    pub key_file: Option<PathBuf>,
    /// A memory-backed folder (tmpfs) where each function's secrets are laid out for its
    /// sandbox. Default: `/dev/shm/fogline-UID/NODE`, else `$XDG_RUNTIME_DIR`.
    pub mount_dir: Option<PathBuf>,
}

/// The CoAP trigger: `POST coap://HOST/function/NAME` runs a function.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CoapSection {
    /// UDP address to listen on; absent: CoAP is off. Port 0 picks a free port.
    pub listen: Option<SocketAddr>,
    /// A confirmable request still running after this is acknowledged at once (an empty
    /// ACK) and answered later in a separate response, so the client stops retransmitting.
    #[serde(default = "default_coap_ack_after", with = "duration_str")]
    pub ack_after: Duration,
    /// Largest block of a block-wise response (16 to 1024 bytes, a power of two); a client
    /// may ask for smaller ones.
    #[serde(default = "default_coap_block")]
    pub block_size: u32,
    /// Requests running at once; more are answered 5.03 with Max-Age.
    #[serde(default = "default_coap_max_exchanges")]
    pub max_exchanges: u32,
}

impl Default for CoapSection {
    fn default() -> Self {
        CoapSection {
            listen: None,
            ack_after: default_coap_ack_after(),
            block_size: default_coap_block(),
            max_exchanges: default_coap_max_exchanges(),
        }
    }
}

fn default_coap_ack_after() -> Duration {
    Duration::from_millis(500)
}
fn default_coap_block() -> u32 {
    1024
}
fn default_coap_max_exchanges() -> u32 {
    1024
}

/// Container functions, run by the local Docker engine.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ContainerSection {
    /// Run container functions at all (when false, their deploys are refused).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The engine's socket.
    #[serde(default = "default_docker_socket")]
    pub socket: PathBuf,
    /// Remove a function's image from the engine when the last function using it is
    /// deleted (off by default: the engine's images may be the operator's too).
    #[serde(default)]
    pub gc_images: bool,
    /// This member is a task of this Swarm service (`fogline join --swarm-service`, set by
    /// a bridge's service): it also removes the function containers that the service's
    /// tasks Swarm no longer runs on this host left on its engine (a killed worker cannot
    /// remove its own), at start and every minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swarm_service: Option<String>,
}

impl Default for ContainerSection {
    fn default() -> Self {
        ContainerSection {
            enabled: true,
            socket: default_docker_socket(),
            gc_images: false,
            swarm_service: None,
        }
    }
}

fn default_docker_socket() -> PathBuf {
    PathBuf::from("/var/run/docker.sock")
}

/// The router: places every invocation on the place predicted to finish it soonest.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouterSection {
    /// Device mode: this router may also run Wasm functions itself, as one of the places.
    #[serde(default)]
    pub device: bool,
    /// The placement policy: `regression` (Fogline's learnt models), `a3e`, `mu`,
    /// `least-loaded`, `nearest-edge`, `round-robin`, `cloud-only` or `device-only`.
    #[serde(default = "default_policy")]
    pub policy: String,
    /// Share of placements spent on rarely chosen places, to keep their models fresh.
    #[serde(default = "default_explore")]
    pub explore: f64,
    /// Observations each latency model keeps (per function and place).
    #[serde(default = "default_window")]
    pub window: usize,
    /// Recent decisions kept for `GET /v1/placements`.
    #[serde(default = "default_placements_kept")]
    pub placements_kept: usize,
    /// Ask places to load a function ahead of a predicted burst.
    #[serde(default = "default_true")]
    pub prepare_ahead: bool,
    /// The MQTT trigger: messages on mapped topics invoke functions.
    pub mqtt: Option<MqttSection>,
}

/// An MQTT broker and the topic filters that invoke functions.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MqttSection {
    /// The broker, `HOST:PORT`.
    pub broker: String,
    /// Client id at the broker (default: `fogline-` and the node id).
    pub client_id: Option<String>,
    /// Where results go when the message names no MQTT 5 response topic:
    /// `PREFIX/<function>`.
    #[serde(default = "default_reply_prefix")]
    pub reply_prefix: String,
    /// Connect over TLS, trusting `ca` (PEM; default: the cluster CA in `quic.tls_dir`).
    #[serde(default)]
    pub tls: bool,
    pub ca: Option<PathBuf>,
    /// A client certificate and key (PEM) to present to the broker.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Credentials: the user name here, the password in a file (kept out of the config).
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    #[serde(default, rename = "trigger")]
    pub triggers: Vec<MqttTrigger>,
    /// Messages (QoS 1 and 2) taken unacknowledged at once: each is acknowledged once its
    /// call is stored in the async queue; the broker holds the rest (MQTT 5 receive
    /// maximum).
    #[serde(default = "default_mqtt_inflight")]
    pub max_inflight: u16,
    /// How long the broker keeps this member's session (its subscriptions and the
    /// messages not yet acknowledged) while it is away.
    #[serde(default = "default_mqtt_session", with = "duration_str")]
    pub session_expiry: Duration,
}

fn default_mqtt_inflight() -> u16 {
    32
}
fn default_mqtt_session() -> Duration {
    Duration::from_secs(3600)
}

/// One topic filter (`+` and `#` wildcards as in MQTT) and the function it invokes.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MqttTrigger {
    pub topic: String,
    pub function: String,
}

impl Default for RouterSection {
    fn default() -> Self {
        RouterSection {
            device: false,
            policy: default_policy(),
            explore: default_explore(),
            window: default_window(),
            placements_kept: default_placements_kept(),
            prepare_ahead: true,
            mqtt: None,
        }
    }
}

fn default_policy() -> String {
    "regression".into()
}

impl RouterSection {
    /// The policy named by `policy` (checked when the config is read; `regression` if not).
    pub fn policy_kind(&self) -> crate::policies::Kind {
        crate::policies::Kind::parse(&self.policy, true)
            .unwrap_or(crate::policies::Kind::Regression)
    }
}

fn default_explore() -> f64 {
    0.02
}
fn default_window() -> usize {
    128
}
fn default_placements_kept() -> usize {
    1000
}
fn default_reply_prefix() -> String {
    "fogline/reply".into()
}

/// Checks an MQTT section; the key of a problem names the section it was read from.
fn check_mqtt(m: &MqttSection, under_router: bool) -> Result<(), (&'static str, String)> {
    let key = |router: &'static str, top: &'static str| if under_router { router } else { top };
    if m.broker
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .is_none()
    {
        return Err((
            key("router.mqtt.broker", "mqtt.broker"),
            format!("{:?} must be HOST:PORT", m.broker),
        ));
    }
    if m.reply_prefix.is_empty() || m.reply_prefix.contains(['+', '#', '\0']) {
        return Err((
            key("router.mqtt.reply_prefix", "mqtt.reply_prefix"),
            format!("{:?} must be a topic without wildcards", m.reply_prefix),
        ));
    }
    if m.max_inflight == 0 {
        return Err((
            key("router.mqtt.max_inflight", "mqtt.max_inflight"),
            "must be at least 1".into(),
        ));
    }
    if m.session_expiry.as_secs() > u64::from(u32::MAX) {
        return Err((
            key("router.mqtt.session_expiry", "mqtt.session_expiry"),
            format!(
                "{} s is past MQTT's limit of {} s",
                m.session_expiry.as_secs(),
                u32::MAX
            ),
        ));
    }
    if m.username.is_some() != m.password_file.is_some() {
        return Err((
            key("router.mqtt.username", "mqtt.username"),
            "give both username and password_file, or neither".into(),
        ));
    }
    if m.cert.is_some() != m.key.is_some() {
        return Err((
            key("router.mqtt.cert", "mqtt.cert"),
            "give both cert and key, or neither".into(),
        ));
    }
    if (m.ca.is_some() || m.cert.is_some()) && !m.tls {
        return Err((
            key("router.mqtt.tls", "mqtt.tls"),
            "ca, cert and key are for a TLS connection: set tls = true".into(),
        ));
    }
    for (i, t) in m.triggers.iter().enumerate() {
        check_topic_filter(&t.topic).map_err(|p| {
            (
                key("router.mqtt.trigger.topic", "mqtt.trigger.topic"),
                format!("trigger {}: {p}", i + 1),
            )
        })?;
        crate::manifest::validate_name(&t.function).map_err(|e| {
            (
                key("router.mqtt.trigger.function", "mqtt.trigger.function"),
                format!("trigger {}: {}", i + 1, e.problem),
            )
        })?;
    }
    Ok(())
}

/// Whether an MQTT topic matches a filter (`+` one level, `#` the rest, `$`-topics only
/// when the filter names them).
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && !filter.starts_with('$') {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Checks an MQTT topic filter: levels split by `/`, `+` alone in a level, `#` alone and last.
pub fn check_topic_filter(f: &str) -> Result<(), String> {
    if f.is_empty() || f.len() > 1024 {
        return Err(format!("topic filter {f:?} must be 1 to 1024 bytes"));
    }
    if f.contains('\0') {
        return Err(format!("topic filter {f:?} contains NUL"));
    }
    let levels: Vec<&str> = f.split('/').collect();
    for (i, l) in levels.iter().enumerate() {
        if l.contains('#') && (*l != "#" || i + 1 != levels.len()) {
            return Err(format!(
                "topic filter {f:?}: `#` must be a whole level and the last one"
            ));
        }
        if l.contains('+') && *l != "+" {
            return Err(format!("topic filter {f:?}: `+` must be a whole level"));
        }
    }
    Ok(())
}

/// The gossip mesh (libp2p): membership, load and latency of every member.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MeshSection {
    /// Multiaddr to listen on, e.g. `/ip4/0.0.0.0/tcp/7001`; absent: the mesh is off.
    pub listen: Option<String>,
    /// Known members to join through (`/ip4/…/tcp/…/p2p/<peer-id>`); more come from `--join`.
    #[serde(default)]
    pub join: Vec<String>,
    /// Name of this member's site (a building, a cell, a region).
    #[serde(default = "default_site")]
    pub site: String,
    /// Find members on the local network without `join` (mDNS).
    #[serde(default = "default_true")]
    pub mdns: bool,
    /// How often load reports are sent (also at once on a large change).
    #[serde(default = "default_interval", with = "duration_str")]
    pub interval: Duration,
    /// The cluster's private-network key (default: `mesh.key` in `quic.tls_dir`).
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QuicSection {
    /// Address of the QUIC endpoint for other tiers; absent: QUIC is off. Needs `tls_dir`.
    pub listen: Option<SocketAddr>,
    /// Folder made by `fogline certs issue` (cert.pem, key.pem, ca.pem).
    pub tls_dir: Option<PathBuf>,
    /// The IP other members reach this endpoint (and the gateway) at, when `listen` is a
    /// wildcard (`0.0.0.0`); default: the listen address. `fogline join` sets it to the
    /// address this host uses to reach its issuer.
    pub advertise: Option<std::net::IpAddr>,
    /// Invocations running at once per connection; more are refused with a retryable error.
    #[serde(default = "default_max_streams")]
    pub max_streams: u32,
    /// Longest wait for the next frame of a stream before it is dropped.
    #[serde(default = "default_stream_timeout", with = "duration_str")]
    pub stream_timeout: Duration,
    /// Idle connections close after this.
    #[serde(default = "default_idle_timeout", with = "duration_str")]
    pub idle_timeout: Duration,
    /// How often the certificate files are checked for changes (reloaded without a restart).
    #[serde(default = "default_reload", with = "duration_str")]
    pub reload_every: Duration,
}

/// Where a peer sits in the continuum.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Device,
    #[default]
    Edge,
    Cloud,
    /// A peer cluster, reached through this cluster's bridge (a place, never a member's
    /// own tier).
    Federated,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Device => "device",
            Tier::Edge => "edge",
            Tier::Cloud => "cloud",
            Tier::Federated => "federated",
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// Stable name of this node in the mesh; defaults to the host name.
    pub id: Option<String>,
    /// Where functions, modules, compiled artifacts, the call queue and the admin token live.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// The tier this agent serves: `edge` for nodes, `cloud` for the bridge.
    #[serde(default)]
    pub tier: Tier,
    /// On SIGTERM, how long calls already running may take to finish (HTTP and QUIC)
    /// before they are cut.
    #[serde(default = "default_stop_timeout", with = "duration_str")]
    pub stop_timeout: Duration,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    /// Address of the OpenFaaS-compatible gateway; port 0 picks a free port.
    #[serde(default = "default_http")]
    pub listen: SocketAddr,
    /// Largest request body accepted (413 beyond).
    #[serde(default = "default_max_body")]
    pub max_body: ByteSize,
    /// Largest Wasm module accepted at deploy.
    #[serde(default = "default_max_module")]
    pub max_module: ByteSize,
    /// Whether invoking a function also needs the admin token.
    #[serde(default)]
    pub invoke_requires_token: bool,
    /// Serve the gateway over TLS (HTTPS), with `cert` and `key`, or else the member's own
    /// certificate (`quic.tls_dir`).
    #[serde(default)]
    pub tls: bool,
    /// PEM certificate chain and private key for HTTPS under a public name.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WasmSection {
    /// `auto` tries the pooling allocator and falls back to on-demand allocation when the
    /// machine cannot reserve its address space; `on` insists; `off` never pools.
    #[serde(default)]
    pub pooling: Pooling,
    /// Instances the pool holds: the most Wasm invocations running at once on this node.
    #[serde(default = "default_pool_instances")]
    pub instances: u32,
    /// Largest memory a function may ask for; also the size of each pool slot.
    #[serde(default = "default_max_memory")]
    pub max_memory: ByteSize,
    /// Longest timeout a function may ask for.
    #[serde(default = "default_max_timeout", with = "duration_str")]
    pub max_timeout: Duration,
    /// Most stdout kept per invocation; more is cut and marked.
    #[serde(default = "default_max_output")]
    pub max_output: ByteSize,
    /// Most stderr kept per invocation for the function's log.
    #[serde(default = "default_max_stderr")]
    pub max_stderr: ByteSize,
    /// Host directories a function's manifest may grant (it may name these or folders
    /// inside them, after resolving symlinks). Empty (the default): none.
    #[serde(default)]
    pub allowed_dirs: Vec<PathBuf>,
    /// Whether a granted directory may be writable; otherwise every grant is read-only.
    #[serde(default)]
    pub allow_write_dirs: bool,
    /// Compiled modules kept in memory; past it the least recently used is dropped (its
    /// next call loads the compiled artifact from disk again).
    #[serde(default = "default_cache_max")]
    pub cache_max: usize,
    /// Compiled artifacts kept on disk (`DATA/compiled`); past it the least recently used
    /// are removed (their next load compiles again).
    #[serde(default = "default_disk_cache_max")]
    pub disk_cache_max: ByteSize,
}

fn default_cache_max() -> usize {
    256
}

fn default_disk_cache_max() -> ByteSize {
    ByteSize(1 << 30)
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    #[default]
    Auto,
    On,
    Off,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AsyncSection {
    /// Async calls run at once.
    #[serde(default = "default_async_workers")]
    pub workers: u32,
    /// Calls accepted but not yet finished; beyond it `/async-function` answers 429.
    #[serde(default = "default_async_queue")]
    pub max_queued: u64,
    /// How long results stay retrievable by call id.
    #[serde(default = "default_result_ttl", with = "duration_str")]
    pub result_ttl: Duration,
    /// URL prefixes callbacks may go to (`https://hooks.example.com/`). Empty (the
    /// default): callbacks are refused at submit. Loopback and link-local hosts are
    /// reached only when a prefix names such a host itself.
    #[serde(default)]
    pub callback_allow: Vec<String>,
    /// Attempts at an async call (the first included) before it goes to the dead-letter
    /// queue; failures that fail the same way every time (4xx) are not retried.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// The wait after a first failed attempt; it doubles per failure (with jitter) up to
    /// `retry_max`.
    #[serde(default = "default_retry_base", with = "duration_str")]
    pub retry_base: Duration,
    #[serde(default = "default_retry_max", with = "duration_str")]
    pub retry_max: Duration,
    /// How long an async call may take to succeed, retries included, unless its
    /// submitter sets `X-Fogline-Deadline`; then it goes to the dead-letter queue.
    #[serde(default = "default_deadline", with = "duration_str")]
    pub deadline: Duration,
    /// How long an `X-Idempotency-Key` names its first call: a submission with the same
    /// key (and function) within it is answered with that call, not run again.
    #[serde(default = "default_idempotency_window", with = "duration_str")]
    pub idempotency_window: Duration,
    /// How long a member keeps the answer of an async call handed to it without a key
    /// (by the call's id), for the sender's retry after a lost answer or a crash.
    #[serde(default = "default_handoff_window", with = "duration_str")]
    pub handoff_window: Duration,
    /// Async calls one namespace may hold on disk, queued or in the dead-letter queue;
    /// past it, its submissions get 429 (nothing accepted is ever dropped to make room).
    #[serde(default = "default_max_per_namespace")]
    pub max_per_namespace: u64,
    /// Free space the data folder's disk keeps: a submission that would leave less gets
    /// 429 naming it (what was accepted stays; the disk never fills under the store).
    #[serde(default = "default_min_free_disk")]
    pub min_free_disk: ByteSize,
    /// How long a callback is retried (from its call's end) before it goes to the
    /// dead-letter queue.
    #[serde(default = "default_callback_for", with = "duration_str")]
    pub callback_for: Duration,
}

fn default_callback_for() -> Duration {
    Duration::from_secs(24 * 3600)
}

fn default_max_attempts() -> u32 {
    8
}
fn default_retry_base() -> Duration {
    Duration::from_millis(200)
}
fn default_retry_max() -> Duration {
    Duration::from_secs(60)
}
fn default_deadline() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_idempotency_window() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_handoff_window() -> Duration {
    Duration::from_secs(3600)
}
fn default_min_free_disk() -> ByteSize {
    ByteSize::mib(64)
}
fn default_max_per_namespace() -> u64 {
    100_000
}

/// A config file that cannot be used, with the file and the problem.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: {message}")]
    Parse { file: String, message: String },
    #[error(
        "{file}: unsupported config version {version}; this build reads version {CONFIG_VERSION}"
    )]
    Version { file: String, version: u32 },
    #[error("{file}: `{key}`: {problem}")]
    Invalid {
        file: String,
        key: &'static str,
        problem: String,
    },
}

impl NodeConfig {
    /// Parses and checks a config file's text; `file` names it in errors.
    pub fn from_toml(file: &str, text: &str) -> Result<Self, ConfigError> {
        let cfg: NodeConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            file: file.to_string(),
            message: toml_problem(text, &e),
        })?;
        cfg.check(file)?;
        Ok(cfg)
    }

    /// The zero-configuration local node of `fogline up`.
    pub fn local(data_dir: PathBuf, listen: SocketAddr) -> Self {
        NodeConfig {
            version: CONFIG_VERSION,
            node: NodeSection {
                id: None,
                data_dir,
                tier: Tier::Edge,
                stop_timeout: default_stop_timeout(),
            },
            http: HttpSection {
                listen,
                ..HttpSection::default()
            },
            wasm: WasmSection::default(),
            async_calls: AsyncSection::default(),
            quic: QuicSection::default(),
            mesh: MeshSection::default(),
            router: None,
            container: ContainerSection::default(),
            coap: CoapSection::default(),
            mqtt: None,
            quota: Default::default(),
            secrets: SecretsSection::default(),
            enroll: None,
            renew: None,
            trace: TraceSection::default(),
            ui: UiSection::default(),
            swarm: None,
            federation: None,
        }
    }

    /// The quota of namespace `ns`: its own entry, else `"*"`'s, else none.
    pub fn quota_of(&self, ns: &str) -> Option<&crate::access::Quota> {
        self.quota.get(ns).or_else(|| self.quota.get("*"))
    }

    /// The MQTT trigger's settings, from `[mqtt]` or (as before) `[router.mqtt]`.
    pub fn mqtt(&self) -> Option<&MqttSection> {
        self.mqtt
            .as_ref()
            .or_else(|| self.router.as_ref().and_then(|r| r.mqtt.as_ref()))
    }

    fn check(&self, file: &str) -> Result<(), ConfigError> {
        let invalid = |key, problem: String| ConfigError::Invalid {
            file: file.to_string(),
            key,
            problem,
        };
        if self.version != CONFIG_VERSION {
            return Err(ConfigError::Version {
                file: file.to_string(),
                version: self.version,
            });
        }
        if self.node.tier == Tier::Federated {
            return Err(invalid(
                "node.tier",
                "\"federated\" names a peer cluster, not a member: use device, edge or cloud"
                    .into(),
            ));
        }
        if let Some(f) = &self.federation {
            if let Some(c) = &f.cluster {
                crate::federation::validate_peer_name(c)
                    .map_err(|e| invalid("federation.cluster", e))?;
            }
            if f.dead_after < Duration::from_millis(200) || f.dead_after > Duration::from_secs(60) {
                return Err(invalid(
                    "federation.dead_after",
                    format!("{:?} is outside 200ms..=60s", f.dead_after),
                ));
            }
        }
        if self.node.stop_timeout > Duration::from_secs(3600) {
            return Err(invalid(
                "node.stop_timeout",
                format!("{:?} is longer than an hour", self.node.stop_timeout),
            ));
        }
        if self.wasm.instances == 0 || self.wasm.instances > 100_000 {
            return Err(invalid(
                "wasm.instances",
                format!("{} is outside 1..=100000", self.wasm.instances),
            ));
        }
        if self.wasm.max_memory < ByteSize::mib(1) || self.wasm.max_memory > ByteSize(4 << 30) {
            return Err(invalid(
                "wasm.max_memory",
                format!("{} is outside 1Mi..=4Gi", self.wasm.max_memory),
            ));
        }
        if self.http.cert.is_some() != self.http.key.is_some() {
            return Err(invalid(
                "http.cert",
                "give both http.cert and http.key, or neither".into(),
            ));
        }
        if self.http.tls && self.http.cert.is_none() && self.quic.tls_dir.is_none() {
            return Err(invalid(
                "http.tls",
                "HTTPS needs a certificate: set http.cert and http.key, or quic.tls_dir (the member's own)".into(),
            ));
        }
        for p in &self.async_calls.callback_allow {
            if crate::callback::Prefix::parse(p).is_none() {
                return Err(invalid(
                    "async.callback_allow",
                    format!("{p:?} must be an http:// or https:// URL prefix with a host"),
                ));
            }
        }
        if self.wasm.disk_cache_max < ByteSize::mib(1) {
            return Err(invalid(
                "wasm.disk_cache_max",
                format!("{} is below 1Mi", self.wasm.disk_cache_max),
            ));
        }
        for ns in self.quota.keys() {
            if ns != "*" {
                if let Err(e) = crate::access::validate_namespace(ns) {
                    return Err(invalid("quota", e.problem));
                }
            }
        }
        if self.wasm.cache_max == 0 || self.wasm.cache_max > 100_000 {
            return Err(invalid(
                "wasm.cache_max",
                format!("{} is outside 1..=100000", self.wasm.cache_max),
            ));
        }
        for d in &self.wasm.allowed_dirs {
            if !d.is_absolute() || d.components().any(|c| c == std::path::Component::ParentDir) {
                return Err(invalid(
                    "wasm.allowed_dirs",
                    format!("{} must be an absolute path without `..`", d.display()),
                ));
            }
        }
        if self.http.max_body < ByteSize(1024) {
            return Err(invalid(
                "http.max_body",
                format!("{} is below 1Ki", self.http.max_body),
            ));
        }
        if self.async_calls.workers == 0 || self.async_calls.workers > 1024 {
            return Err(invalid(
                "async.workers",
                format!("{} is outside 1..=1024", self.async_calls.workers),
            ));
        }
        if self.async_calls.max_attempts == 0 || self.async_calls.max_attempts > 1000 {
            return Err(invalid(
                "async.max_attempts",
                format!("{} is outside 1..=1000", self.async_calls.max_attempts),
            ));
        }
        if let Some(sw) = &self.swarm {
            if sw.max_replicas == 0 || sw.max_replicas > 1000 {
                return Err(invalid(
                    "swarm.max_replicas",
                    format!("{} is outside 1..=1000", sw.max_replicas),
                ));
            }
            if sw.min_replicas > sw.max_replicas {
                return Err(invalid(
                    "swarm.min_replicas",
                    format!(
                        "{} is above swarm.max_replicas ({})",
                        sw.min_replicas, sw.max_replicas
                    ),
                ));
            }
            if sw.target_inflight == 0 {
                return Err(invalid(
                    "swarm.target_inflight",
                    "must be at least 1".into(),
                ));
            }
            // Workers are named SERVICE-SLOT-TASKID (member names: 63 letters, digits, '-').
            let name_ok = !sw.service.is_empty()
                && sw.service.len() <= 30
                && sw
                    .service
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && sw.service.as_bytes()[0].is_ascii_alphanumeric();
            if !name_ok {
                return Err(invalid(
                    "swarm.service",
                    format!(
                        "{:?}: a service name is 1 to 30 letters, digits or '-', starting with a letter or digit (its workers are named SERVICE-SLOT-TASKID)",
                        sw.service
                    ),
                ));
            }
            if sw.image.trim().is_empty() {
                return Err(invalid("swarm.image", "is empty".into()));
            }
        }
        if self.async_calls.max_per_namespace == 0 {
            return Err(invalid(
                "async.max_per_namespace",
                "must be at least 1".into(),
            ));
        }
        if self.async_calls.retry_base.is_zero()
            || self.async_calls.retry_base > self.async_calls.retry_max
        {
            return Err(invalid(
                "async.retry_base",
                "must be above zero and at most async.retry_max".into(),
            ));
        }
        if self.quic.listen.is_some() && self.quic.tls_dir.is_none() {
            return Err(invalid(
                "quic.tls_dir",
                "QUIC needs certificates: set quic.tls_dir (made by `fogline certs issue`)".into(),
            ));
        }
        if self.mesh.listen.is_some() && self.mesh.key_file.is_none() && self.quic.tls_dir.is_none()
        {
            return Err(invalid(
                "mesh.key_file",
                "the mesh needs the cluster key: set mesh.key_file, or quic.tls_dir holding mesh.key".into(),
            ));
        }
        if self.trace.keep == 0 || self.trace.keep > 1_000_000 {
            return Err(invalid(
                "trace.keep",
                format!("{} is outside 1..=1000000", self.trace.keep),
            ));
        }
        if self.trace.max_spans == 0 || self.trace.max_spans > 10_000 {
            return Err(invalid(
                "trace.max_spans",
                format!("{} is outside 1..=10000", self.trace.max_spans),
            ));
        }
        if let Some(u) = &self.trace.otlp {
            let ok = url::Url::parse(u)
                .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
            if !ok {
                return Err(invalid(
                    "trace.otlp",
                    format!("{u:?} must be an http:// or https:// URL (a collector's /v1/traces)"),
                ));
            }
        }
        if self.trace.otlp_every < Duration::from_millis(100) {
            return Err(invalid("trace.otlp_every", "must be at least 100ms".into()));
        }
        if self.mesh.interval < Duration::from_millis(50) {
            return Err(invalid("mesh.interval", "must be at least 50ms".into()));
        }
        if self.quic.max_streams == 0 || self.quic.max_streams > 100_000 {
            return Err(invalid(
                "quic.max_streams",
                format!("{} is outside 1..=100000", self.quic.max_streams),
            ));
        }
        if let Some(r) = &self.router {
            if let Err(e) = crate::policies::Kind::parse(&r.policy, true) {
                return Err(invalid("router.policy", e));
            }
            if !(0.0..=1.0).contains(&r.explore) {
                return Err(invalid(
                    "router.explore",
                    format!("{} is outside 0..=1", r.explore),
                ));
            }
            if !(16..=100_000).contains(&r.window) {
                return Err(invalid(
                    "router.window",
                    format!("{} is outside 16..=100000", r.window),
                ));
            }
        }
        if self.mqtt.is_some() && self.router.as_ref().is_some_and(|r| r.mqtt.is_some()) {
            return Err(invalid(
                "mqtt",
                "set either [mqtt] or [router.mqtt], not both".into(),
            ));
        }
        if let Some(m) = self.mqtt() {
            check_mqtt(m, self.mqtt.is_none()).map_err(|(k, p)| invalid(k, p))?;
        }
        let c = &self.coap;
        if !(16..=1024).contains(&c.block_size) || !c.block_size.is_power_of_two() {
            return Err(invalid(
                "coap.block_size",
                format!("{} is not a power of two from 16 to 1024", c.block_size),
            ));
        }
        if c.ack_after > Duration::from_secs(2) {
            return Err(invalid(
                "coap.ack_after",
                format!(
                    "{:?} is longer than CoAP's ACK_TIMEOUT of 2s: clients would retransmit first",
                    c.ack_after
                ),
            ));
        }
        if c.max_exchanges == 0 || c.max_exchanges > 100_000 {
            return Err(invalid(
                "coap.max_exchanges",
                format!("{} is outside 1..=100000", c.max_exchanges),
            ));
        }
        if let Some(id) = &self.node.id {
            if id.is_empty()
                || id.len() > 64
                || id.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(invalid(
                    "node.id",
                    format!("{id:?} must be 1 to 64 characters without spaces"),
                ));
            }
        }
        Ok(())
    }

    /// The manifest limits this node enforces.
    pub fn manifest_limits(&self) -> ManifestLimits {
        ManifestLimits {
            max_memory: self.wasm.max_memory,
            max_timeout: self.wasm.max_timeout,
            max_concurrency: ManifestLimits::default().max_concurrency,
        }
    }
}

impl Default for NodeSection {
    fn default() -> Self {
        NodeSection {
            id: None,
            data_dir: default_data_dir(),
            tier: Tier::Edge,
            stop_timeout: default_stop_timeout(),
        }
    }
}
impl Default for MeshSection {
    fn default() -> Self {
        MeshSection {
            listen: None,
            join: Vec::new(),
            site: default_site(),
            mdns: true,
            interval: default_interval(),
            key_file: None,
        }
    }
}
impl Default for QuicSection {
    fn default() -> Self {
        QuicSection {
            listen: None,
            tls_dir: None,
            advertise: None,
            max_streams: default_max_streams(),
            stream_timeout: default_stream_timeout(),
            idle_timeout: default_idle_timeout(),
            reload_every: default_reload(),
        }
    }
}
impl Default for HttpSection {
    fn default() -> Self {
        HttpSection {
            listen: default_http(),
            max_body: default_max_body(),
            max_module: default_max_module(),
            invoke_requires_token: false,
            tls: false,
            cert: None,
            key: None,
        }
    }
}
impl Default for WasmSection {
    fn default() -> Self {
        WasmSection {
            pooling: Pooling::Auto,
            instances: default_pool_instances(),
            max_memory: default_max_memory(),
            max_timeout: default_max_timeout(),
            max_output: default_max_output(),
            max_stderr: default_max_stderr(),
            allowed_dirs: Vec::new(),
            allow_write_dirs: false,
            cache_max: default_cache_max(),
            disk_cache_max: default_disk_cache_max(),
        }
    }
}
impl Default for AsyncSection {
    fn default() -> Self {
        AsyncSection {
            workers: default_async_workers(),
            max_queued: default_async_queue(),
            result_ttl: default_result_ttl(),
            callback_allow: Vec::new(),
            max_attempts: default_max_attempts(),
            retry_base: default_retry_base(),
            retry_max: default_retry_max(),
            deadline: default_deadline(),
            idempotency_window: default_idempotency_window(),
            handoff_window: default_handoff_window(),
            max_per_namespace: default_max_per_namespace(),
            min_free_disk: default_min_free_disk(),
            callback_for: default_callback_for(),
        }
    }
}

fn default_data_dir() -> PathBuf {
    PathBuf::from(".fogline")
}
fn default_http() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_max_body() -> ByteSize {
    ByteSize::mib(8)
}
fn default_max_module() -> ByteSize {
    ByteSize::mib(64)
}
fn default_pool_instances() -> u32 {
    256
}
fn default_max_memory() -> ByteSize {
    ByteSize::mib(256)
}
fn default_max_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_max_output() -> ByteSize {
    ByteSize::mib(8)
}
fn default_max_stderr() -> ByteSize {
    ByteSize(64 * 1024)
}
fn default_async_workers() -> u32 {
    8
}
fn default_async_queue() -> u64 {
    100_000
}
fn default_site() -> String {
    "default".to_string()
}
fn default_true() -> bool {
    true
}
fn default_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_stop_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_max_streams() -> u32 {
    256
}
fn default_stream_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_reload() -> Duration {
    Duration::from_secs(5)
}
fn default_result_ttl() -> Duration {
    Duration::from_secs(3600)
}

/// A TOML error on one line: where (line and column), what, and the line itself, e.g.
/// ``line 3, column 6: invalid type: integer `5`, expected a string (in `id = 5`)``.
pub(crate) fn toml_problem(text: &str, e: &toml::de::Error) -> String {
    let what = e.message().trim_end().replace('\n', " ");
    let Some(span) = e.span() else {
        return what;
    };
    let start = span.start.min(text.len());
    let before = text.get(..start).unwrap_or("");
    let line_no = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    let line = text[line_start..].lines().next().unwrap_or("").trim();
    if line.is_empty() {
        format!("line {line_no}, column {column}: {what}")
    } else {
        format!("line {line_no}, column {column}: {what} (in `{line}`)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_filters_match_as_mqtt_says() {
        assert!(topic_matches("sensors/+/temp", "sensors/k1/temp"));
        assert!(!topic_matches("sensors/+/temp", "sensors/k1/hum"));
        assert!(!topic_matches("sensors/+/temp", "sensors/k1/temp/x"));
        assert!(topic_matches("sensors/#", "sensors/a/b/c"));
        assert!(topic_matches("sensors/#", "sensors"));
        assert!(topic_matches("#", "a/b"));
        assert!(!topic_matches("#", "$SYS/uptime"));
        assert!(topic_matches("a/b", "a/b"));
        assert!(!topic_matches("a/b", "a"));
        for bad in ["", "a/#/b", "a/b#", "a+/b"] {
            assert!(check_topic_filter(bad).is_err(), "{bad:?}");
        }
        assert!(check_topic_filter("a/+/#").is_ok());
    }

    #[test]
    fn router_sections_are_checked_naming_the_key() {
        let e = NodeConfig::from_toml(
            "r.toml",
            "version = 1\n[router]\n[router.mqtt]\nbroker = \"localhost:1883\"\n[[router.mqtt.trigger]]\ntopic = \"a/#/b\"\nfunction = \"hello\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("router.mqtt.trigger.topic") && e.contains("trigger 1"),
            "{e}"
        );
        let e = NodeConfig::from_toml("r.toml", "version = 1\n[router]\nexplore = 2.0\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("router.explore"), "{e}");
        let e = NodeConfig::from_toml(
            "r.toml",
            "version = 1\n[router.mqtt]\nbroker = \"localhost\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("router.mqtt.broker"), "{e}");
    }

    #[test]
    fn version_alone_is_a_valid_config() {
        let c = NodeConfig::from_toml("n.toml", "version = 1\n").unwrap();
        assert_eq!(c.http.listen, default_http());
        assert_eq!(c.wasm.instances, 256);
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = NodeConfig::from_toml("n.toml", "version = 1\n[http]\nlisten_addr = \"x\"\n")
            .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with("n.toml:") && msg.contains("listen_addr"),
            "{msg}"
        );
    }

    #[test]
    fn toml_errors_say_where_on_one_line() {
        let e = NodeConfig::from_toml("n.toml", "version = 1\n[node]\nid = 5\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "n.toml: line 3, column 6: invalid type: integer `5`, expected a string (in `id = 5`)"
        );
        let e = NodeConfig::from_toml("n.toml", "version = 1\n[node\n").unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("n.toml: line 2, column 6: "), "{msg}");
        assert!(
            msg.ends_with("(in `[node`)") && !msg.contains('\n'),
            "{msg}"
        );
        // A multi-byte character before the error counts as one column.
        let e = NodeConfig::from_toml("n.toml", "version = 1\n[node]\nid = \"é\" x\n").unwrap_err();
        assert!(e.to_string().contains("line 3, column 10"), "{e}");
    }

    #[test]
    fn the_stop_timeout_defaults_to_5s_and_is_bounded() {
        let c = NodeConfig::from_toml("n.toml", "version = 1\n").unwrap();
        assert_eq!(c.node.stop_timeout, Duration::from_secs(5));
        let c = NodeConfig::from_toml("n.toml", "version = 1\n[node]\nstop_timeout = \"90s\"\n")
            .unwrap();
        assert_eq!(c.node.stop_timeout, Duration::from_secs(90));
        let e = NodeConfig::from_toml("n.toml", "version = 1\n[node]\nstop_timeout = \"2h\"\n")
            .unwrap_err();
        assert!(e.to_string().contains("node.stop_timeout"), "{e}");
    }

    #[test]
    fn bad_values_are_named() {
        let e =
            NodeConfig::from_toml("n.toml", "version = 1\n[wasm]\ninstances = 0\n").unwrap_err();
        assert!(e.to_string().contains("wasm.instances"), "{e}");
        let e = NodeConfig::from_toml("n.toml", "version = 2\n").unwrap_err();
        assert!(e.to_string().contains("version 2"), "{e}");
        let e = NodeConfig::from_toml("n.toml", "").unwrap_err();
        assert!(e.to_string().contains("version"), "{e}");
    }
}
