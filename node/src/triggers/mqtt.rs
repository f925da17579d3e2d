//! The MQTT trigger: messages on configured topic filters invoke functions (on a router,
//! placed like any call); each result is published to the message's MQTT 5 response topic
//! (with its correlation data), or else to `REPLY_PREFIX/<function>`. A message that cannot
//! be used is logged and dropped; the trigger keeps running, and reconnects when the broker
//! goes away.
//!
//! At least once: the session is kept by the broker (`mqtt.session_expiry`), and a QoS 1
//! or 2 message is acknowledged only once its call is stored: it becomes an async call of
//! the node's durable queue (retried with backoff, placed like any call, given up into the
//! dead-letter queue), whose result goes back through the durable outbox, published on
//! the reply connection. A message taken when the broker or this member stopped, and not
//! yet stored, is delivered again; one stored runs after a restart. At most
//! `mqtt.max_inflight` messages are taken at once (the MQTT 5 receive maximum); while the
//! queue is full a message waits unacknowledged, and the broker holds the rest. A message
//! delivered again while its first delivery is being stored is not stored twice. QoS 2
//! messages are stored once: a message the broker delivers again after it was stored here
//! is acknowledged again, not stored again ([`super::mqtt_qos2`]). QoS 0 messages run at
//! once, nothing stored (at most once).
//! Replies go out on a second connection of their own (QoS 1, its session kept too), so
//! acknowledgements never wait behind replies; a reply is done once the broker
//! acknowledged it ([`super::mqtt_acks`]), and until then its result stays in the outbox.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use fogline_core::config::{topic_matches, MqttSection, NodeConfig};

use super::mqtt_acks::Acks;
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
    let (reply_client, mut reply_events) = AsyncClient::new(reply_opts, 256);
    let replies = Replies {
        client: reply_client,
        acks: Arc::new(Acks::default()),
    };
    if let Some(n) = node.upgrade() {
        n.publish_replies_with(publisher(replies.clone()));
    }
    let broker = cfg.broker.clone();
    let watching = node.clone();
    let acks = replies.acks.clone();
    tokio::spawn(async move {
        loop {
            match reply_events.poll().await {
                Ok(ev) => acks.event(&ev),
                Err(e) => {
                    acks.dropped(&reply_events.pending);
                    if watching.strong_count() == 0 {
                        return;
                    }
                    tracing::warn!("mqtt: reply connection to {broker}: {e}; reconnecting in 1s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
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
                if released.already_stored(&p) {
                    node.metrics
                        .mqtt_duplicates
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::debug!(
                        "mqtt: packet {} delivered again after it was stored",
                        p.pkid
                    );
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
                    let m = read(&node, &cfg, &p);
                    if p.qos == QoS::AtMostOnce {
                        if let Some(m) = m {
                            run_now(&node, &replies, m, p.payload.clone()).await;
                        }
                        return;
                    }
                    if let Some(m) = m {
                        store(&node, &replies, m, p.payload.clone()).await;
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

/// A message the trigger can use: the function it calls and where its answer goes.
struct Message {
    topic: String,
    function: String,
    reply: String,
    correlation: Option<Bytes>,
    /// Its `idempotency-key` user property: the function runs once per key (a message
    /// the broker delivers again, or a device sends again, gets the stored answer).
    key: Option<String>,
    traceparent: Option<String>,
    tracestate: Option<String>,
}

impl Message {
    /// The reply to this message with a call's outcome, in the trace `traceparent`.
    fn reply(
        &self,
        status: u16,
        call_id: String,
        traceparent: String,
        placed_on: Option<String>,
        body: Bytes,
    ) -> Reply {
        Reply {
            function: self.function.clone(),
            topic: self.topic.clone(),
            status,
            placed_on,
            call_id,
            traceparent,
            correlation: self.correlation.clone(),
            body,
        }
    }
}

/// What message `p` asks for, or `None` (logged) when it cannot be used.
fn read(node: &Node, cfg: &MqttSection, p: &Publish) -> Option<Message> {
    let Ok(topic) = std::str::from_utf8(&p.topic) else {
        tracing::warn!("mqtt: dropped a message whose topic is not UTF-8");
        return None;
    };
    let Some(trigger) = cfg.triggers.iter().find(|t| topic_matches(&t.topic, topic)) else {
        tracing::warn!("mqtt: dropped a message on {topic:?}: no trigger matches it");
        return None;
    };
    let max = node.config.http.max_body.bytes();
    if p.payload.len() as u64 > max {
        tracing::warn!(
            "mqtt: dropped a message on {topic:?}: payload of {} bytes exceeds the limit of {max}",
            p.payload.len()
        );
        return None;
    }
    let props = p.properties.clone().unwrap_or_default();
    let reply = match props.response_topic {
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
            .map(|(_, v)| v.clone())
    };
    Some(Message {
        topic: topic.to_string(),
        function: trigger.function.clone(),
        reply,
        correlation: props.correlation_data,
        key: prop("idempotency-key"),
        traceparent: prop("traceparent"),
        tracestate: prop("tracestate"),
    })
}

/// A QoS 1 or 2 message: stored as an async call whose result is published back (through
/// the node's durable outbox), so it may be acknowledged once this returns. While the
/// queue is full it waits, unacknowledged (the broker holds the rest).
async fn store(node: &Node, client: &Replies, m: Message, payload: Bytes) {
    let rec = node
        .traces
        .begin(m.traceparent.as_deref(), m.tracestate.as_deref());
    let answer = |status: u16, call_id: String, body: Bytes| {
        m.reply(status, call_id, rec.traceparent(), None, body)
    };
    if let Some(refused) = bad_key(&m) {
        let id = crate::agent::new_call_id();
        let _ = send(client, &m.reply, answer(400, id, refused)).await;
        return;
    }
    let to = crate::agent::callbacks::MessageReply {
        reply: m.reply.clone(),
        topic: m.topic.clone(),
        correlation: m
            .correlation
            .as_deref()
            .map(hex::encode)
            .unwrap_or_default(),
        traceparent: rec.traceparent(),
    };
    let mut pause = Duration::from_millis(20);
    let status = loop {
        let how = crate::agent::queue::Submit {
            key: m.key.clone(),
            reply: Some(to.clone()),
            ..Default::default()
        };
        let r =
            crate::traces::Traces::run(rec.clone(), node.submit(&m.function, payload.clone(), how))
                .await;
        match r {
            Ok(accepted) => {
                rec.set_call_id(&accepted.id);
                break 202;
            }
            Err(e) if e.status() == 429 => {
                // The queue (or the namespace's share of it, or the disk) is full.
                if pause == Duration::from_millis(20) {
                    tracing::info!("mqtt: a message on {:?} waits: {e}", m.topic);
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            Err(e) => {
                let status = e.status();
                tracing::warn!(function = %m.function, "mqtt: call from {:?} refused with {status}: {e}", m.topic);
                let id = crate::agent::new_call_id();
                rec.set_call_id(&id);
                let _ = send(
                    client,
                    &m.reply,
                    answer(status, id, Bytes::from(e.to_string())),
                )
                .await;
                break status;
            }
        }
    };
    node.traces.commit(
        &rec,
        "mqtt",
        &[
            ("function", &m.function),
            ("topic", &m.topic),
            ("status", &status),
        ],
    );
}

/// The refusal of a message whose `idempotency-key` is not one.
fn bad_key(m: &Message) -> Option<Bytes> {
    let k = m.key.as_deref()?;
    (!crate::agent::keyed::key_ok(k)).then(|| {
        Bytes::from(format!(
            "idempotency-key user property: {}",
            crate::agent::keyed::KEY_RULE
        ))
    })
}

/// A QoS 0 message: run now, its result published (at most once, nothing stored).
async fn run_now(node: &Node, client: &Replies, m: Message, payload: Bytes) {
    let rec = node
        .traces
        .begin(m.traceparent.as_deref(), m.tracestate.as_deref());
    let call_id = crate::agent::new_call_id();
    rec.set_call_id(&call_id);
    let result = match bad_key(&m) {
        Some(refused) => Err(crate::dispatch::Refused::new(
            400,
            String::from_utf8_lossy(&refused).into_owned(),
        )),
        None => {
            crate::traces::Traces::run(
                rec.clone(),
                node.call_with_key("mqtt", &m.function, m.key.clone(), payload),
            )
            .await
        }
    };
    node.traces.commit(
        &rec,
        "mqtt",
        &[
            ("function", &m.function),
            ("topic", &m.topic),
            (
                "status",
                &result.as_ref().map_or_else(|e| e.status, |_| 200),
            ),
        ],
    );
    let (status, body, placed_on) = match result {
        Ok(placed) => {
            let on = placed.place();
            (200u16, placed.body, Some(on))
        }
        Err(e) => (e.status, Bytes::from(e.message), None),
    };
    if status != 200 {
        tracing::warn!(function = %m.function, "mqtt: call from {:?} failed with {status}", m.topic);
    }
    let reply = m.reply(status, call_id, rec.traceparent(), placed_on, body);
    let _ = send(client, &m.reply, reply).await;
}

/// A call's result as its reply message carries it.
struct Reply {
    function: String,
    /// The topic of the message that made the call.
    topic: String,
    status: u16,
    placed_on: Option<String>,
    call_id: String,
    traceparent: String,
    correlation: Option<Bytes>,
    body: Bytes,
}

/// The reply connection, and what its broker acknowledged.
#[derive(Clone)]
struct Replies {
    client: AsyncClient,
    acks: Arc<Acks>,
}

/// Publishes `r` to `reply_topic` (QoS 1): `Ok` once the broker acknowledged it.
async fn send(replies: &Replies, reply_topic: &str, r: Reply) -> Result<(), String> {
    let mut user = vec![
        ("status".to_string(), r.status.to_string()),
        ("function".to_string(), r.function),
        ("topic".to_string(), r.topic),
    ];
    if let Some(on) = r.placed_on {
        user.push(("placed-on".to_string(), on));
    }
    user.push(("call-id".to_string(), r.call_id));
    if !r.traceparent.is_empty() {
        user.push(("traceparent".to_string(), r.traceparent));
    }
    let out = PublishProperties {
        correlation_data: r.correlation,
        user_properties: user,
        ..PublishProperties::default()
    };
    // The connection's request channel is bounded: a full one is waited out briefly.
    const BUSY: &str = "the reply connection's request channel is full";
    let mut tries = 0;
    loop {
        let r = replies
            .acks
            .publish(|| {
                replies
                    .client
                    .try_publish_with_properties(
                        reply_topic.to_string(),
                        QoS::AtLeastOnce,
                        false,
                        r.body.clone(),
                        out.clone(),
                    )
                    .map_err(|_| BUSY.to_string())
            })
            .await;
        match r {
            Err(e) if e == BUSY && tries < 100 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => {
                let why = format!("publishing the result to {reply_topic:?}: {e}");
                tracing::warn!("mqtt: {why}");
                return Err(why);
            }
            Ok(()) => return Ok(()),
        }
    }
}

/// Publishes the results of stored messages (from the node's outbox) on `client`.
fn publisher(replies: Replies) -> crate::agent::callbacks::Publisher {
    use crate::agent::callbacks::{Finished, MessageReply};
    Arc::new(move |to: MessageReply, done: Finished<'_>| {
        let replies = replies.clone();
        let r = Reply {
            function: done.function.to_string(),
            topic: to.topic,
            status: done.status,
            placed_on: done.placed_on.map(str::to_string),
            call_id: done.id,
            traceparent: to.traceparent,
            correlation: hex::decode(&to.correlation)
                .ok()
                .filter(|c| !c.is_empty())
                .map(Bytes::from),
            body: done.body,
        };
        Box::pin(async move { send(&replies, &to.reply, r).await })
    })
}
