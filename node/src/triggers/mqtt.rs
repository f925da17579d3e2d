//! The MQTT trigger: messages on configured topic filters invoke functions (on a router,
//! placed like any call); each result is published to the message's MQTT 5 response topic
//! (with its correlation data), or else to `REPLY_PREFIX/<function>`. A message that cannot
//! be used is logged and dropped; the trigger keeps running, and reconnects when the broker
//! goes away.
//!
//! At least once: the session is kept by the broker (`mqtt.session_expiry`), and a message
//! is acknowledged only after its call has run and its reply is handed on, so a message
//! that was taken when the broker or this member stopped is delivered again. At most
//! `mqtt.max_inflight` messages are taken at once (the MQTT 5 receive maximum); the broker
//! holds the rest, and a call refused for capacity (429, 503) is tried again rather than
//! answered with it. A message delivered again while its first delivery still runs is not
//! run twice. QoS 2 messages run once: a message the broker delivers again after it ran
//! here is acknowledged again, not run again ([`super::mqtt_qos2`]); only a crash of this
//! member while the call runs makes it run twice.
//! Replies go out on a second connection of their own (QoS 1, its session kept too), so
//! acknowledgements never wait behind replies.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use fogline_core::config::{topic_matches, MqttSection, NodeConfig};

use super::mqtt_qos2::Released;
use crate::agent::Node;
use rumqttc::v5::mqttbytes::v5::{Packet, Publish, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};

/// The MQTT trigger: a client of the configured broker.
pub struct Mqtt {
    cfg: MqttSection,
    /// Read at start: TLS settings and the password (a missing file fails the start).
    tls: Option<Arc<rustls::ClientConfig>>,
    password: Option<String>,
}

impl Mqtt {
    /// The trigger `[mqtt]` (or `[router.mqtt]`) configures; `None` when there is none.
    pub fn from_config(config: &NodeConfig) -> anyhow::Result<Option<Mqtt>> {
        let Some(cfg) = config.mqtt() else {
            return Ok(None);
        };
        let password = match &cfg.password_file {
            Some(f) => Some(
                std::fs::read_to_string(f)
                    .map_err(|e| anyhow::anyhow!("mqtt.password_file {}: {e}", f.display()))?
                    .trim_end_matches(['\r', '\n'])
                    .to_string(),
            ),
            None => None,
        };
        let tls = if cfg.tls {
            Some(Arc::new(client_tls(cfg, config.quic.tls_dir.as_deref())?))
        } else {
            None
        };
        Ok(Some(Mqtt {
            cfg: cfg.clone(),
            tls,
            password,
        }))
    }
}

/// TLS to the broker: its CA (`mqtt.ca`, else the cluster's), and a client certificate
/// when `mqtt.cert` and `mqtt.key` name one.
fn client_tls(
    cfg: &MqttSection,
    tls_dir: Option<&std::path::Path>,
) -> anyhow::Result<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let ca = match (&cfg.ca, tls_dir) {
        (Some(ca), _) => ca.clone(),
        (None, Some(dir)) => dir.join("ca.pem"),
        (None, None) => anyhow::bail!(
            "mqtt.tls needs the broker's CA: set mqtt.ca, or quic.tls_dir (the cluster CA)"
        ),
    };
    let mut roots = rustls::RootCertStore::empty();
    for c in
        CertificateDer::pem_file_iter(&ca).map_err(|e| anyhow::anyhow!("{}: {e}", ca.display()))?
    {
        roots
            .add(c.map_err(|e| anyhow::anyhow!("{}: {e}", ca.display()))?)
            .map_err(|e| anyhow::anyhow!("{}: {e}", ca.display()))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
    .with_root_certificates(roots);
    Ok(match (&cfg.cert, &cfg.key) {
        (Some(c), Some(k)) => {
            let chain = CertificateDer::pem_file_iter(c)
                .map_err(|e| anyhow::anyhow!("{}: {e}", c.display()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| anyhow::anyhow!("{}: {e}", c.display()))?;
            let key = PrivateKeyDer::from_pem_file(k)
                .map_err(|e| anyhow::anyhow!("{}: {e}", k.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| anyhow::anyhow!("mqtt.cert and mqtt.key do not fit: {e}"))?
        }
        _ => builder.with_no_client_auth(),
    })
}

impl super::Trigger for Mqtt {
    fn name(&self) -> &'static str {
        "mqtt"
    }

    fn address(&self) -> Option<std::net::SocketAddr> {
        None
    }

    fn serve(
        self: Box<Self>,
        node: Arc<Node>,
        stopping: tokio::sync::watch::Receiver<bool>,
        _deadline: Duration,
    ) -> crate::dispatch::BoxFut<'static, anyhow::Result<()>> {
        Box::pin(async move {
            let id = node.id.clone();
            tokio::select! {
                _ = run(Arc::downgrade(&node), *self, id) => {}
                _ = super::stopped(stopping) => {}
            }
            Ok(())
        })
    }
}

/// The options of one connection to the broker, `suffix` added to the client id, with a
/// session the broker keeps for `session_expiry`.
fn options(
    cfg: &MqttSection,
    tls: Option<&Arc<rustls::ClientConfig>>,
    password: Option<&str>,
    node_id: &str,
    max_body: u64,
    suffix: &str,
) -> Option<MqttOptions> {
    let Some((host, port)) = cfg
        .broker
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
    else {
        tracing::error!("mqtt: broker {:?} is not HOST:PORT", cfg.broker);
        return None;
    };
    let id = cfg
        .client_id
        .clone()
        .unwrap_or_else(|| format!("fogline-{node_id}"));
    let mut opts = MqttOptions::new(format!("{id}{suffix}"), host, port);
    opts.set_keep_alive(Duration::from_secs(10));
    opts.set_max_packet_size(Some(max_body as u32 + 64 * 1024));
    if let (Some(user), Some(pass)) = (&cfg.username, password) {
        opts.set_credentials(user.clone(), pass.to_string());
    }
    if let Some(tls) = tls {
        opts.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(tls.clone()),
        ));
    }
    opts.set_clean_start(false);
    opts.set_session_expiry_interval(Some(cfg.session_expiry.as_secs() as u32));
    Some(opts)
}

/// The packet ids of the messages being run.
#[derive(Default)]
struct Taken(Mutex<HashSet<u16>>);

impl Taken {
    fn running(&self) -> std::sync::MutexGuard<'_, HashSet<u16>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Connects to the broker and serves the triggers until the node is gone.
async fn run(node: std::sync::Weak<Node>, m: Mqtt, node_id: String) {
    let cfg = m.cfg;
    let max_body = node
        .upgrade()
        .map_or(1 << 20, |n| n.config.http.max_body.bytes());
    let Some(mut opts) = options(
        &cfg,
        m.tls.as_ref(),
        m.password.as_deref(),
        &node_id,
        max_body,
        "",
    ) else {
        return;
    };
    // The subscriber: acknowledgements sent by hand after the call, at most
    // `max_inflight` messages at once. It publishes nothing.
    opts.set_manual_acks(true);
    opts.set_receive_maximum(Some(cfg.max_inflight));
    let (client, mut events) = AsyncClient::new(opts, usize::from(cfg.max_inflight) * 2 + 16);
    // The replies: their own connection (its session kept too, so a reply in flight when
    // the broker stops is sent again).
    let Some(reply_opts) = options(
        &cfg,
        m.tls.as_ref(),
        m.password.as_deref(),
        &node_id,
        max_body,
        "-replies",
    ) else {
        return;
    };
    let (replies, mut reply_events) = AsyncClient::new(reply_opts, 256);
    let broker = cfg.broker.clone();
    let watching = node.clone();
    tokio::spawn(async move {
        loop {
            if let Err(e) = reply_events.poll().await {
                if watching.strong_count() == 0 {
                    return;
                }
                tracing::warn!("mqtt: reply connection to {broker}: {e}; reconnecting in 1s");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    });
    let taken = Arc::new(Taken::default());
    let client_id = events.options.client_id();
    let released = match node
        .upgrade()
        .map(|n| Released::open(n.store(), &client_id))
    {
        Some(Ok(r)) => Arc::new(r),
        Some(Err(e)) => {
            tracing::error!("mqtt: the store of QoS 2 packet ids: {e}; not connecting");
            return;
        }
        None => return,
    };
    let mut connected_once = false;
    loop {
        match events.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                if ack.session_present {
                    // Before anything is read on this connection.
                    Released::remind_all(&mut events.state);
                } else {
                    released.forget_all();
                }
                // Subscribe on every connection (the broker may have lost the session);
                // sent from a task of its own, as acknowledgements are.
                let (c, topics) = (client.clone(), cfg.triggers.clone());
                tokio::spawn(async move {
                    for t in topics {
                        if let Err(e) = c.subscribe(t.topic.clone(), QoS::ExactlyOnce).await {
                            tracing::error!("mqtt: subscribing to {}: {e}", t.topic);
                        }
                    }
                });
                if !connected_once {
                    println!("mqtt trigger connected to {}", cfg.broker);
                }
                connected_once = true;
                tracing::info!(
                    "mqtt: connected to {} ({} session), {} trigger(s)",
                    cfg.broker,
                    if ack.session_present {
                        "resumed"
                    } else {
                        "new"
                    },
                    cfg.triggers.len()
                );
            }
            Ok(Event::Incoming(Packet::PubRel(r))) => {
                released.release(r.pkid);
                // The broker may release it again (one release per PUBREC it had).
                Released::remind(&mut events.state, r.pkid);
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let Some(node) = node.upgrade() else { return };
                if released.already_ran(&p) {
                    node.metrics
                        .mqtt_duplicates
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::debug!("mqtt: packet {} delivered again after it ran", p.pkid);
                    // Not awaited here: this loop drives the connection the request
                    // channel drains into.
                    let client = client.clone();
                    tokio::spawn(async move {
                        if let Err(e) = client.ack(&p).await {
                            tracing::warn!("mqtt: acknowledging packet {}: {e}", p.pkid);
                        }
                    });
                    continue;
                }
                if p.qos != QoS::AtMostOnce && !taken.running().insert(p.pkid) {
                    // Delivered again while its first delivery runs: that one's
                    // acknowledgement answers both.
                    tracing::debug!("mqtt: packet {} delivered again while it runs", p.pkid);
                    continue;
                }
                let (client, replies, cfg, taken, released) = (
                    client.clone(),
                    replies.clone(),
                    cfg.clone(),
                    taken.clone(),
                    released.clone(),
                );
                tokio::spawn(async move {
                    handle(&node, &replies, &cfg, p.clone()).await;
                    if p.qos == QoS::AtMostOnce {
                        return;
                    }
                    if p.qos == QoS::ExactlyOnce {
                        if let Err(e) = released.record(node.store(), &p).await {
                            // Acknowledged all the same: the broker would otherwise send it
                            // again and it would run again.
                            tracing::warn!("mqtt: recording QoS 2 packet {}: {e}", p.pkid);
                        }
                    }
                    if let Err(e) = client.ack(&p).await {
                        tracing::warn!("mqtt: acknowledging packet {}: {e}", p.pkid);
                    }
                    taken.running().remove(&p.pkid);
                });
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!("mqtt: broker {}: {e}; reconnecting in 1s", cfg.broker);
                if node.strong_count() == 0 {
                    return;
                }
                // A release repeated within one connection (rumqttc reads a few packets
                // at a time) costs a reconnection, at once: the broker is there.
                if !matches!(
                    e,
                    rumqttc::v5::ConnectionError::MqttState(rumqttc::v5::StateError::Unsolicited(
                        _
                    ))
                ) {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

async fn handle(node: &Node, client: &AsyncClient, cfg: &MqttSection, p: Publish) {
    let Ok(topic) = std::str::from_utf8(&p.topic) else {
        tracing::warn!("mqtt: dropped a message whose topic is not UTF-8");
        return;
    };
    let Some(trigger) = cfg.triggers.iter().find(|t| topic_matches(&t.topic, topic)) else {
        tracing::warn!("mqtt: dropped a message on {topic:?}: no trigger matches it");
        return;
    };
    let max = node.config.http.max_body.bytes();
    if p.payload.len() as u64 > max {
        tracing::warn!(
            "mqtt: dropped a message on {topic:?}: payload of {} bytes exceeds the limit of {max}",
            p.payload.len()
        );
        return;
    }
    let props = p.properties.unwrap_or_default();
    let reply_topic = match props.response_topic {
        Some(t) if !t.is_empty() && !t.contains(['+', '#']) => t,
        Some(t) => {
            tracing::warn!(
                "mqtt: message on {topic:?} names response topic {t:?}, which is not a topic; \
                 replying on the default"
            );
            format!("{}/{}", cfg.reply_prefix, trigger.function)
        }
        None => format!("{}/{}", cfg.reply_prefix, trigger.function),
    };
    // A `traceparent` (and `tracestate`) user property puts the call in the sender's trace.
    let prop = |k: &str| {
        props
            .user_properties
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    };
    // An `idempotency-key` user property: the function runs once per key (a message the
    // broker delivers again, or a device sends again, gets the stored answer).
    let key = prop("idempotency-key").map(str::to_string);
    let bad_key = key
        .as_deref()
        .is_some_and(|k| !crate::agent::keyed::key_ok(k));
    let rec = node.traces.begin(prop("traceparent"), prop("tracestate"));
    let call_id = crate::agent::new_call_id();
    rec.set_call_id(&call_id);
    // A message that is acknowledged only after its call (QoS 1 and 2) waits out a full
    // function or node (429, 503) rather than being answered with it: it stays the broker's
    // until it has run.
    let mut pause = Duration::from_millis(20);
    let result = loop {
        if bad_key {
            break Err(crate::dispatch::Refused::new(
                400,
                format!(
                    "idempotency-key user property: {}",
                    crate::agent::keyed::KEY_RULE
                ),
            ));
        }
        let r = crate::traces::Traces::run(
            rec.clone(),
            node.call_with_key("mqtt", &trigger.function, key.clone(), p.payload.clone()),
        )
        .await;
        match &r {
            Err(e) if p.qos != QoS::AtMostOnce && matches!(e.status, 429 | 503) => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            _ => break r,
        }
    };
    node.traces.commit(
        &rec,
        "mqtt",
        &[
            ("function", &trigger.function),
            ("topic", &topic),
            (
                "status",
                &result.as_ref().map_or_else(|e| e.status, |_| 200),
            ),
        ],
    );
    let (status, body, placed_on) = match result {
        Ok(placed) => (
            200u16,
            placed.body,
            format!("{} ({})", placed.node, placed.tier.as_str()),
        ),
        Err(e) => (e.status, Bytes::from(e.message), String::new()),
    };
    if status != 200 {
        tracing::warn!(function = %trigger.function, "mqtt: call from {topic:?} failed with {status}");
    }
    let mut user = vec![
        ("status".to_string(), status.to_string()),
        ("function".to_string(), trigger.function.clone()),
        ("topic".to_string(), topic.to_string()),
    ];
    if !placed_on.is_empty() {
        user.push(("placed-on".to_string(), placed_on));
    }
    user.push(("call-id".to_string(), call_id));
    user.push(("traceparent".to_string(), rec.traceparent()));
    let out = PublishProperties {
        correlation_data: props.correlation_data,
        user_properties: user,
        ..PublishProperties::default()
    };
    if let Err(e) = client
        .publish_with_properties(reply_topic.clone(), QoS::AtLeastOnce, false, body, out)
        .await
    {
        tracing::warn!("mqtt: publishing the result to {reply_topic:?}: {e}");
    }
}
