//! The MQTT trigger: messages on configured topic filters invoke functions (on a router,
//! placed like any call); each result is published to the message's MQTT 5 response topic
//! (with its correlation data), or else to `REPLY_PREFIX/<function>`. A message that cannot
//! be used is logged and dropped; the trigger keeps running, and reconnects when the broker
//! goes away.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fogline_core::config::{topic_matches, MqttSection, NodeConfig};

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

/// Connects to the broker and serves the triggers until the node is gone.
async fn run(node: std::sync::Weak<Node>, m: Mqtt, node_id: String) {
    let cfg = m.cfg;
    let Some((host, port)) = cfg
        .broker
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
    else {
        tracing::error!("mqtt: broker {:?} is not HOST:PORT", cfg.broker);
        return;
    };
    let id = cfg
        .client_id
        .clone()
        .unwrap_or_else(|| format!("fogline-{node_id}"));
    let mut opts = MqttOptions::new(id, host, port);
    opts.set_keep_alive(Duration::from_secs(10));
    let max_body = node
        .upgrade()
        .map_or(1 << 20, |n| n.config.http.max_body.bytes());
    opts.set_max_packet_size(Some(max_body as u32 + 64 * 1024));
    if let (Some(user), Some(pass)) = (&cfg.username, m.password) {
        opts.set_credentials(user.clone(), pass);
    }
    if let Some(tls) = m.tls {
        opts.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(tls),
        ));
    }
    let (client, mut events) = AsyncClient::new(opts, 256);
    let mut connected_once = false;
    loop {
        match events.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                // Clean sessions: subscribe again on every connection.
                for t in &cfg.triggers {
                    if let Err(e) = client.subscribe(t.topic.clone(), QoS::AtLeastOnce).await {
                        tracing::error!("mqtt: subscribing to {}: {e}", t.topic);
                    }
                }
                if !connected_once {
                    println!("mqtt trigger connected to {}", cfg.broker);
                }
                connected_once = true;
                tracing::info!(
                    "mqtt: connected to {}, {} trigger(s)",
                    cfg.broker,
                    cfg.triggers.len()
                );
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let Some(node) = node.upgrade() else { return };
                let client = client.clone();
                let cfg = cfg.clone();
                tokio::spawn(async move { handle(&node, &client, &cfg, p).await });
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!("mqtt: broker {}: {e}; reconnecting in 1s", cfg.broker);
                if node.strong_count() == 0 {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
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
    let rec = node.traces.begin(prop("traceparent"), prop("tracestate"));
    let call_id = crate::agent::new_call_id();
    rec.set_call_id(&call_id);
    let result =
        crate::traces::Traces::run(rec.clone(), node.call(&trigger.function, p.payload.clone()))
            .await;
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
