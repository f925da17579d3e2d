//! The CoAP trigger (RFC 7252 over UDP, block-wise transfer per RFC 7959), for constrained
//! devices that cannot afford TCP or TLS: `POST coap://HOST/function/NAME` runs NAME with
//! the payload as its body and answers 2.05 Content with its output.
//!
//! The protocol (duplicates, blocks, acknowledgements, retransmission) is
//! [`fogline_core::coap`]'s state machine; this driver moves datagrams and time into it and
//! runs the calls it asks for through [`Node::call`], so on a router they are placed like
//! any other call. A call still running after `coap.ack_after` is acknowledged at once
//! (an empty ACK) and answered in a separate response. Datagrams that are not CoAP are
//! dropped and counted (`fogline_coap_malformed_total`).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fogline_core::coap::{Event, Reply, Server, Settings, OCTET_STREAM, TEXT_PLAIN};
use fogline_core::config::NodeConfig;
use tokio::net::UdpSocket;
use tokio::sync::{watch, Notify};

use crate::agent::Node;
use crate::dispatch::BoxFut;

/// The CoAP trigger, bound.
pub struct Coap {
    socket: UdpSocket,
    settings: Settings,
    ack_after: Duration,
}

impl Coap {
    /// Binds `coap.listen`; `None` when CoAP is off.
    pub async fn bind(config: &NodeConfig) -> anyhow::Result<Option<Coap>> {
        let Some(listen) = config.coap.listen else {
            return Ok(None);
        };
        let socket = UdpSocket::bind(listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen for CoAP on {listen}: {e}"))?;
        Ok(Some(Coap {
            socket,
            settings: Settings {
                max_body: usize::try_from(config.http.max_body.bytes()).unwrap_or(usize::MAX),
                block_size: config.coap.block_size as usize,
                max_exchanges: config.coap.max_exchanges as usize,
                ..Settings::default()
            },
            ack_after: config.coap.ack_after,
        }))
    }
}

impl super::Trigger for Coap {
    fn name(&self) -> &'static str {
        "coap"
    }

    fn address(&self) -> Option<SocketAddr> {
        self.socket.local_addr().ok()
    }

    fn serve(
        self: Box<Self>,
        node: Arc<Node>,
        stopping: watch::Receiver<bool>,
        deadline: Duration,
    ) -> BoxFut<'static, anyhow::Result<()>> {
        Box::pin(serve(*self, node, stopping, deadline))
    }
}

/// What the receive loop and the calls share.
struct Driver {
    socket: UdpSocket,
    server: Mutex<Server<SocketAddr>>,
    started: Instant,
    /// Rung when a call's answer may have set a retransmission timer.
    wake: Notify,
    ack_after: Duration,
}

impl Driver {
    fn now(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn server(&self) -> std::sync::MutexGuard<'_, Server<SocketAddr>> {
        self.server.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends one datagram; a failure is the client's to notice (it retransmits).
    async fn send_to(&self, peer: SocketAddr, bytes: &[u8]) {
        if let Err(e) = self.socket.send_to(bytes, peer).await {
            tracing::debug!("coap: sending to {peer}: {e}");
        }
    }

    /// Sends the datagrams among `events` (answers never ask for another call).
    async fn transmit(&self, events: Vec<Event<SocketAddr>>) {
        for ev in events {
            if let Event::Transmit(peer, bytes) = ev {
                self.send_to(peer, &bytes).await;
            }
        }
    }

    /// Sends the datagrams among `events` and starts the calls they ask for.
    async fn send(self: &Arc<Self>, events: Vec<Event<SocketAddr>>, node: &Arc<Node>) {
        for ev in events {
            match ev {
                Event::Transmit(peer, bytes) => self.send_to(peer, &bytes).await,
                Event::Invoke {
                    id,
                    function,
                    body,
                    content_format,
                    accept,
                    trace,
                    key,
                } => {
                    let (node, me) = (node.clone(), self.clone());
                    tokio::spawn(async move {
                        // In the device's trace when it sent one.
                        let rec = node.traces.begin(trace.as_deref(), None);
                        let call_id = crate::agent::new_call_id();
                        rec.set_call_id(&call_id);
                        let mut reply = crate::traces::Traces::run(
                            rec.clone(),
                            me.run(&node, id, &function, body, content_format, accept, key),
                        )
                        .await;
                        node.traces.commit(
                            &rec,
                            "coap",
                            &[
                                ("function", &function),
                                ("code", &format_args!("{:?}", reply.code)),
                            ],
                        );
                        reply.trace = Some((rec.traceparent(), call_id));
                        let out = me.server().complete(me.now(), id, reply);
                        me.transmit(out).await;
                        me.wake.notify_one();
                    });
                }
            }
        }
    }

    /// Runs one call (once per key, with an idempotency key option); acknowledges its
    /// request first when it takes longer than `ack_after`.
    #[allow(clippy::too_many_arguments)]
    async fn run(
        &self,
        node: &Node,
        id: u64,
        function: &str,
        body: Vec<u8>,
        content_format: Option<u16>,
        accept: Option<u16>,
        key: Option<String>,
    ) -> Reply {
        if let Err(e) = fogline_core::manifest::validate_key(function) {
            return Reply::error(400, &e.to_string());
        }
        if key
            .as_deref()
            .is_some_and(|k| !crate::agent::keyed::key_ok(k))
        {
            return Reply::error(
                400,
                &format!(
                    "idempotency key option ({}): {}",
                    fogline_core::coap::IDEMPOTENCY_KEY,
                    crate::agent::keyed::KEY_RULE
                ),
            );
        }
        if !node.open_to_anyone(function) {
            // CoAP carries no token: only what anyone may invoke is served here.
            node.metrics
                .refused("reason=\"token\",problem=\"missing\"".into());
            return Reply::error(
                401,
                &format!("{function} needs a token to invoke, which CoAP cannot carry; call it over HTTP or QUIC"),
            );
        }
        let call = node.call_with_key("coap", function, key, Bytes::from(body));
        tokio::pin!(call);
        let result = match tokio::time::timeout(self.ack_after, &mut call).await {
            Ok(r) => r,
            Err(_) => {
                let ack = self.server().acknowledge(id);
                self.transmit(ack.into_iter().collect()).await;
                call.await
            }
        };
        match result {
            Ok(placed) => {
                let format = accept.or(content_format).unwrap_or_else(|| {
                    if std::str::from_utf8(&placed.body).is_ok() {
                        TEXT_PLAIN
                    } else {
                        OCTET_STREAM
                    }
                });
                Reply::content(placed.body.to_vec(), Some(format))
            }
            Err(e) => Reply::error(e.status, &e.message),
        }
    }
}

async fn serve(
    coap: Coap,
    node: Arc<Node>,
    stopping: watch::Receiver<bool>,
    deadline: Duration,
) -> anyhow::Result<()> {
    let mut first_mid = [0u8; 2];
    let _ = getrandom::fill(&mut first_mid);
    let me = Arc::new(Driver {
        socket: coap.socket,
        server: Mutex::new(
            Server::new(coap.settings).with_first_message_id(u16::from_be_bytes(first_mid)),
        ),
        started: Instant::now(),
        wake: Notify::new(),
        ack_after: coap.ack_after,
    });
    let mut buf = vec![0u8; 65_536];
    let stop = super::stopped(stopping.clone());
    tokio::pin!(stop);
    loop {
        let next = me.server().poll_timeout();
        let timer = async {
            match next {
                Some(at) => {
                    tokio::time::sleep(Duration::from_millis(at.saturating_sub(me.now()))).await
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = me.socket.recv_from(&mut buf) => {
                let (n, peer) = match r {
                    Ok(x) => x,
                    // An ICMP error for an earlier send (the client went away): not ours to fix.
                    Err(e) => {
                        tracing::debug!("coap: receiving: {e}");
                        continue;
                    }
                };
                let received = me.server().receive(me.now(), peer, &buf[..n]);
                match received {
                    Ok(events) => me.send(events, &node).await,
                    Err(e) => {
                        node.metrics.coap_malformed.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!("coap: dropped a datagram from {peer}: {e}");
                    }
                }
            }
            _ = timer => {
                let out = me.server().handle_timeout(me.now());
                me.transmit(out).await;
            }
            _ = me.wake.notified() => {}
            _ = &mut stop => break,
        }
    }
    // Stopping: no new requests; the calls taken finish and are answered.
    let t = Instant::now();
    while me.server().running() > 0 && t.elapsed() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}
