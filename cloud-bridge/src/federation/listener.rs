//! The provider's side of the link: peer bridges connect here. A certificate of a pinned
//! peer CA is served as that peer (invoke and summaries only, by the node's QUIC trigger);
//! any other certificate, accepted only while invites are open, may send one join.

use std::sync::Arc;
use std::time::Duration;

use fogline_core::federation::FedRequest;
use fogline_core::wire::{Frame, WireErrorMsg};
use fogline_node::quic::{write_frame, FrameReader, QuicLimits};

use super::Federation;

pub(super) async fn serve(endpoint: quinn::Endpoint, fed: Arc<Federation>) {
    while let Some(incoming) = endpoint.accept().await {
        let fed = fed.clone();
        tokio::spawn(async move {
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    *super::lock(&fed.refused).entry("handshake").or_insert(0) += 1;
                    tracing::warn!("federation: a peer's handshake failed: {e}");
                    return;
                }
            };
            let Some(leaf) = fogline_node::quic::peer_leaf(&conn) else {
                return;
            };
            let Some(node) = fed.node.upgrade() else {
                return;
            };
            match fed.cas.peer_of(&leaf) {
                Some(name) => {
                    let limits = QuicLimits::from_config(&node.config);
                    fogline_node::triggers::quic::serve_peer(conn, node, limits, name).await;
                }
                None => joining(conn, leaf, &fed).await,
            }
        });
    }
}

/// A connection from an unknown CA: one join, then closed.
async fn joining(
    conn: quinn::Connection,
    leaf: rustls::pki_types::CertificateDer<'static>,
    fed: &Federation,
) {
    let remote = conn.remote_address();
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        let Ok((mut send, recv)) = conn.accept_bi().await else {
            return;
        };
        let mut r = FrameReader::new(recv, Duration::from_secs(5));
        let reply = match r.next().await {
            Ok(Frame::Federate(FedRequest::Join { secret, name, ca })) => {
                fed.accept_join(&leaf, &secret, &name, &ca)
            }
            Ok(_) => Err(fed.refuse(
                "not_peered",
                &format!(
                    "{remote} is not peered with this cluster: it may only join, with an invite"
                ),
            )),
            Err(e) => {
                tracing::debug!("federation: joiner {remote}: {e}");
                return;
            }
        };
        let frame = match reply {
            Ok(rep) => Frame::Federated(rep),
            Err(e) => Frame::Error(WireErrorMsg {
                status: e.status,
                retryable: e.retryable,
                message: e.message,
            }),
        };
        let _ = write_frame(&mut send, &frame).await;
        let _ = send.finish();
        let _ = send.stopped().await;
    })
    .await;
    conn.close(0u32.into(), b"join done");
}
