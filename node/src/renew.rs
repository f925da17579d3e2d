//! Certificate rotation: a member with `[renew] issuer` renews its certificate at two
//! thirds of its life, from that issuer, with a key made here, and uses the new one at once
//! without a restart (the QUIC server reloads it from disk; the QUIC client and the mesh
//! identity are told). A failed renewal is retried every 10 s, named in the log.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::agent::Node;
use crate::tls::TlsDir;

/// Starts renewing when the config asks for it.
pub fn start(node: Arc<Node>) {
    let (Some(renew), Some(dir)) = (node.config.renew.clone(), node.config.quic.tls_dir.clone())
    else {
        return;
    };
    tokio::spawn(async move {
        loop {
            let wait = due_in(&dir).unwrap_or(Duration::from_secs(60));
            tokio::time::sleep(wait).await;
            if node.stopping() {
                return;
            }
            match renew_once(&node, &renew.issuer, &dir).await {
                Ok(until) => tracing::info!(
                    "renewed this member's certificate from {}: valid until {until}",
                    renew.issuer
                ),
                Err(e) => {
                    tracing::warn!(
                        "renewing this member's certificate from {}: {e:#}; trying again in 10 s",
                        renew.issuer
                    );
                    tokio::time::sleep(Duration::from_secs(10)).await;
                }
            }
        }
    });
}

/// Until two thirds of the certificate's life have passed (zero when they have).
fn due_in(dir: &Path) -> Option<Duration> {
    let tls = TlsDir::load(dir).ok()?;
    let (nb, na) = crate::tls::validity(&tls.chain[0])?;
    let due = nb + (na.saturating_sub(nb)) * 2 / 3;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    Some(Duration::from_secs(due.saturating_sub(now)).max(Duration::from_millis(500)))
}

/// One renewal; returns the new certificate's expiry.
async fn renew_once(node: &Node, issuer: &str, dir: &Path) -> anyhow::Result<String> {
    let (key_pem, public) = crate::tls::new_member_key()?;
    let reply = crate::enroll::renew(issuer, dir, &public).await?;
    crate::tls::write_renewed(dir, &reply.cert_pem, &key_pem)?;
    let tls = TlsDir::load(dir)?;
    node.note_certificate(&tls);
    if let Some(c) = node.links.peers.get() {
        c.reload(&tls).await?;
    }
    if let Some(m) = node.links.mesh.get() {
        m.reload_identity(&tls)?;
    }
    Ok(expiry_of(&tls).unwrap_or_else(|| "?".into()))
}

/// When the certificate in `tls` expires, RFC 3339.
pub fn expiry_of(tls: &TlsDir) -> Option<String> {
    let (_, na) = crate::tls::validity(&tls.chain[0])?;
    Some(rfc3339(na))
}

/// Unix seconds as RFC 3339.
pub fn rfc3339(unix: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(unix)).to_string()
}
