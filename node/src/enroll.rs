//! Enrollment by join token: the issuer's side (`[enroll]` on a bridge or router that holds
//! the cluster CA: a TLS listener taking `POST /v1/enroll`) and the joiner's side
//! ([`request`], used by `fogline join`).
//!
//! The joiner generates its key on the board and sends only the public key with the token;
//! it trusts the issuer only if the issuer's TLS chain carries the CA whose SHA-256 the token
//! names, and its certificate is signed by that CA. The issuer takes one use of the token,
//! signs a certificate of the token's role (never another), and answers with it, the CA, the
//! mesh key and where to join. Every refusal is named on both sides and counted.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use fogline_core::config::{EnrollSection, NodeConfig};
use fogline_core::enroll::{EnrollReply, EnrollRequest, JoinToken};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use crate::agent::Node;

/// The enrollment listener, bound.
pub struct Enroll {
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    section: EnrollSection,
    /// SHA-256 of the CA certificate, hex: what join tokens pin.
    ca_fingerprint: String,
}

impl Enroll {
    /// Binds `[enroll] listen`; `None` when enrollment is off.
    pub async fn bind(config: &NodeConfig) -> anyhow::Result<Option<Enroll>> {
        let Some(section) = &config.enroll else {
            return Ok(None);
        };
        let Some(dir) = &config.quic.tls_dir else {
            anyhow::bail!(
                "[enroll] is served with the member's own certificate: set quic.tls_dir (or --tls-dir)"
            );
        };
        let ca_key = section.ca_dir.join("ca.key");
        if !ca_key.exists() {
            anyhow::bail!(
                "enroll.ca_dir: {} holds no CA key (ca.key): enrollment signs certificates with it",
                section.ca_dir.display()
            );
        }
        let ca = CertificateDer::from_pem_file(dir.join("ca.pem"))
            .map_err(|e| anyhow::anyhow!("{}: {e}", dir.join("ca.pem").display()))?;
        let ca_of_dir = CertificateDer::from_pem_file(section.ca_dir.join("ca.pem"))
            .map_err(|e| anyhow::anyhow!("{}: {e}", section.ca_dir.join("ca.pem").display()))?;
        if ca != ca_of_dir {
            anyhow::bail!(
                "enroll.ca_dir {} is another cluster's CA than the one in {}",
                section.ca_dir.display(),
                dir.display()
            );
        }
        let mut chain = crate::triggers::https::read_chain(&dir.join("cert.pem"))?;
        // The CA goes with the chain: the joiner has only its fingerprint.
        chain.push(ca.clone());
        let key = crate::triggers::https::read_key(&dir.join("key.pem"))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| anyhow::anyhow!("the member's certificate and key do not fit: {e}"))?;
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let listener = tokio::net::TcpListener::bind(section.listen)
            .await
            .map_err(|e| {
                anyhow::anyhow!("cannot listen on {} (enroll.listen): {e}", section.listen)
            })?;
        Ok(Some(Enroll {
            listener,
            tls: Arc::new(tls),
            section: section.clone(),
            ca_fingerprint: crate::tls::fingerprint(&ca),
        }))
    }
}

/// What a member that takes enrollments tells token minting.
pub struct Issuer {
    /// The address join tokens name.
    pub addr: String,
    pub ca_fingerprint: String,
    section: EnrollSection,
}

impl crate::triggers::Trigger for Enroll {
    fn name(&self) -> &'static str {
        "enroll"
    }

    fn address(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    fn serve(
        self: Box<Self>,
        node: Arc<Node>,
        stopping: tokio::sync::watch::Receiver<bool>,
        deadline: Duration,
    ) -> crate::dispatch::BoxFut<'static, anyhow::Result<()>> {
        Box::pin(async move {
            let bound = self.listener.local_addr()?;
            let addr = self
                .section
                .advertise
                .clone()
                .unwrap_or_else(|| bound.to_string());
            let _ = node.links.issuer.set(Issuer {
                addr,
                ca_fingerprint: self.ca_fingerprint.clone(),
                section: self.section.clone(),
            });
            let app = Router::new()
                .route("/v1/enroll", post(enroll))
                .route("/v1/renew", post(take_renewal))
                .with_state(node);
            let listener = crate::triggers::https::TlsListener::new(self.listener, self.tls)?;
            // Served as the gateway is: a stop waits for requests under way, up to the deadline.
            crate::triggers::http::run(listener, app, stopping, deadline).await
        })
    }
}

async fn enroll(State(node): State<Arc<Node>>, body: axum::body::Bytes) -> Response {
    answer(
        &node,
        "an enrollment",
        "join",
        &body,
        |req: EnrollRequest| (format!(" as {:?}", req.name), issue(&node, &req)),
    )
}

async fn take_renewal(State(node): State<Arc<Node>>, body: axum::body::Bytes) -> Response {
    answer(&node, "a certificate renewal", "renew", &body, |req| {
        (String::new(), renewal(&node, &req))
    })
}

/// Parses a request and answers with what `serve` made of it; a refusal is logged (with
/// what `serve` said of the request), counted, and answered with its reason.
fn answer<T: serde::de::DeserializeOwned>(
    node: &Node,
    what: &str,
    reason: &str,
    body: &[u8],
    serve: impl FnOnce(T) -> (String, Result<EnrollReply, (StatusCode, String)>),
) -> Response {
    let req: T = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("bad request: {e}\n")).into_response(),
    };
    match serve(req) {
        (_, Ok(reply)) => {
            tracing::info!(member = %reply.name, role = reply.role.as_str(), "granted {what}");
            axum::Json(reply).into_response()
        }
        (about, Err((status, why))) => {
            tracing::warn!("refused {what}{about}: {why}");
            node.metrics.refused(format!("reason=\"{reason}\""));
            (status, format!("{why}\n")).into_response()
        }
    }
}

/// Signs a new certificate for the member whose current (valid, not revoked) certificate
/// signed the request: same name, same role, the new key.
fn renewal(
    node: &Node,
    req: &fogline_core::enroll::RenewRequest,
) -> Result<EnrollReply, (StatusCode, String)> {
    let issuer = node.links.issuer.get().ok_or((
        StatusCode::SERVICE_UNAVAILABLE,
        "enrollment is starting".to_string(),
    ))?;
    let ca = CertificateDer::from_pem_file(issuer.section.ca_dir.join("ca.pem"))
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let cert = CertificateDer::from_pem_slice(req.cert_pem.as_bytes()).map_err(|e| {
        (
            StatusCode::BAD_REQUEST,
            format!("the current certificate: {e}"),
        )
    })?;
    let (name, role) =
        crate::tls::check_renewal(&ca, &cert, req).map_err(|why| (StatusCode::FORBIDDEN, why))?;
    node.revocations
        .check(&cert)
        .map_err(|why| (StatusCode::FORBIDDEN, why))?;
    let key = hex::decode(&req.public_key)
        .ok()
        .and_then(|raw| crate::tls::JoinerKey::from_raw(raw).ok())
        .ok_or((
            StatusCode::BAD_REQUEST,
            "the public key must be an uncompressed ECDSA P-256 point, hex".to_string(),
        ))?;
    let signed = crate::tls::sign_member(
        &issuer.section.ca_dir,
        &name,
        role,
        &key,
        crate::tls::Validity::Seconds(issuer.section.cert_life.as_secs()),
    )
    .map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))?;
    Ok(EnrollReply {
        name,
        role,
        cert_pem: signed.cert_pem,
        ca_pem: signed.ca_pem,
        mesh_key: String::new(),
        join: Vec::new(),
        site: None,
        interval_ms: None,
    })
}

/// Takes a use of the token and signs the joiner's certificate.
fn issue(node: &Node, req: &EnrollRequest) -> Result<EnrollReply, (StatusCode, String)> {
    let issuer = node.links.issuer.get().ok_or((
        StatusCode::SERVICE_UNAVAILABLE,
        "enrollment is starting".to_string(),
    ))?;
    let key = hex::decode(&req.public_key)
        .ok()
        .and_then(|raw| crate::tls::JoinerKey::from_raw(raw).ok())
        .ok_or((
            StatusCode::BAD_REQUEST,
            "the public key must be an uncompressed ECDSA P-256 point, hex".to_string(),
        ))?;
    if let Some(m) = node.links.mesh.get() {
        let taken = m.with_view(|v| {
            v.members()
                .any(|x| x.report.node == req.name && x.state != fogline_core::mesh::State::Dead)
        });
        if taken {
            return Err((
                StatusCode::CONFLICT,
                format!(
                    "a member named {:?} is in the mesh already; join with another --id",
                    req.name
                ),
            ));
        }
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let grant = node
        .access
        .redeem(&req.token, now)
        .map_err(|why| (StatusCode::FORBIDDEN, why))?;
    let signed = crate::tls::sign_member(
        &issuer.section.ca_dir,
        &req.name,
        grant.role,
        &key,
        crate::tls::Validity::Seconds(issuer.section.cert_life.as_secs()),
    )
    .map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))?;
    let join = node
        .links
        .mesh
        .get()
        .map(|m| vec![m.address.clone()])
        .unwrap_or_default();
    Ok(EnrollReply {
        name: req.name.clone(),
        role: grant.role,
        cert_pem: signed.cert_pem,
        ca_pem: signed.ca_pem,
        mesh_key: signed.mesh_key.unwrap_or_default(),
        join,
        site: grant.site,
        interval_ms: Some(node.config.mesh.interval.as_millis() as u64),
    })
}

/// The joiner's side: sends `req` to the issuer the token names, trusting it only with the
/// CA the token pins. The error names the problem (the issuer's own words for a refusal).
pub async fn request(token: &JoinToken, req: &EnrollRequest) -> anyhow::Result<EnrollReply> {
    send(
        &token.addr,
        &token.ca,
        "/v1/enroll",
        &serde_json::to_vec(req)?,
    )
    .await
}

/// A member's side of renewal: its new public key, signed with its current key, to the
/// issuer at `addr` (trusted only with the cluster's CA).
pub async fn renew(
    addr: &str,
    tls_dir: &std::path::Path,
    public_key: &[u8],
) -> anyhow::Result<EnrollReply> {
    let public_key = hex::encode(public_key);
    let (scheme, sig) = crate::tls::sign_with_member_key(
        tls_dir,
        &fogline_core::enroll::RenewRequest::message(&public_key),
    )?;
    let cert_pem = std::fs::read_to_string(tls_dir.join("cert.pem"))?;
    let ca = CertificateDer::from_pem_file(tls_dir.join("ca.pem"))
        .map_err(|e| anyhow::anyhow!("{}: {e}", tls_dir.join("ca.pem").display()))?;
    let req = fogline_core::enroll::RenewRequest {
        cert_pem,
        public_key,
        scheme,
        sig: hex::encode(sig),
    };
    send(
        addr,
        &crate::tls::fingerprint(&ca),
        "/v1/renew",
        &serde_json::to_vec(&req)?,
    )
    .await
}

/// POSTs JSON to an issuer over TLS pinned to the CA of fingerprint `ca`; its JSON answer.
async fn send(addr: &str, ca: &str, path: &str, body: &[u8]) -> anyhow::Result<EnrollReply> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(crate::peering::PinnedCa {
            fp: hex::decode(ca)
                .ok()
                .and_then(|v| <[u8; 32]>::try_from(v).ok())
                .ok_or_else(|| anyhow::anyhow!("the CA fingerprint {ca:?} is not 64 hex digits"))?,
            mismatch: "the issuer is not of the cluster the join token names (its CA's fingerprint differs)",
            seen: Default::default(),
        }))
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect(addr),
    )
    .await
    .map_err(|_| anyhow::anyhow!("{addr}: no answer in 10 s"))?
    .map_err(|e| anyhow::anyhow!("cannot reach the issuer at {addr}: {e}"))?;
    let mut stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(crate::tls::peer_server_name(), tcp)
        .await
        .map_err(|e| anyhow::anyhow!("the issuer at {addr}: {e}"))?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw))
        .await
        .map_err(|_| anyhow::anyhow!("the issuer at {addr} did not answer in 30 s"))?
        .or_else(|e| {
            // A peer that closes without TLS close_notify still sent its whole answer.
            if raw.is_empty() {
                Err(e)
            } else {
                Ok(0)
            }
        })?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("the issuer's answer is not HTTP"))?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("the issuer's answer has no status"))?;
    if status != 200 {
        anyhow::bail!("the issuer refused: {} ({status})", body.trim());
    }
    serde_json::from_str(body.trim())
        .map_err(|e| anyhow::anyhow!("the issuer's answer does not parse: {e}"))
}
