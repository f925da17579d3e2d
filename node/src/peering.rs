//! TLS between the bridges of peered clusters: each cluster keeps its own CA, and each
//! bridge pins the other's CA certificate for this one link.
//!
//! - The provider's federation listener ([`server_config`]) presents its certificate with
//!   its CA certificate after it (so a joiner can check the invite's fingerprint), and
//!   accepts a client certificate issued by a pinned peer CA ([`PeerCas`]); while invites
//!   are open it also accepts an unknown one, whose connection may only join.
//! - A joiner connects with [`join_client_config`], which accepts only a server whose chain
//!   ends in the CA the invite fingerprinted.
//! - Once peered, the consumer calls the provider with an ordinary [`crate::quic::Client`]
//!   whose only root is the provider's CA ([`TlsDir::with_root`]).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::tls::{TlsDir, TlsError};

/// ALPN of the bridge-to-bridge link.
pub const ALPN: &[u8] = b"fogline-fed/1";

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// SHA-256 of a certificate's DER.
pub fn sha256(der: &[u8]) -> [u8; 32] {
    fogline_core::Digest::of(der).0
}

/// The cluster CA certificate (DER) of a `--tls-dir`.
pub fn ca_der(dir: &Path) -> Result<CertificateDer<'static>, TlsError> {
    let path = dir.join("ca.pem");
    CertificateDer::pem_file_iter(&path)
        .map_err(|e| TlsError::Invalid(format!("{}: {e}", path.display())))?
        .next()
        .and_then(Result::ok)
        .ok_or_else(|| TlsError::Invalid(format!("{}: no CA certificate", path.display())))
}

/// Checks that `ca` (DER) issued `leaf` and that it is valid now.
pub fn issued_by(ca: &[u8], leaf: &CertificateDer<'_>) -> Result<(), String> {
    let v = client_verifier_for(ca)?;
    v.verify_client_cert(leaf, &[], UnixTime::now())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn client_verifier_for(ca: &[u8]) -> Result<Arc<dyn ClientCertVerifier>, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(ca.to_vec()))
        .map_err(|e| format!("not a CA certificate: {e}"))?;
    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| format!("client verifier: {e}"))
}

/// A peer's name, the bridge its certificate must name (a site of this same cluster, whose
/// CA every member shares), and a verifier for its CA's certificates.
type Pinned = (String, Option<String>, Arc<dyn ClientCertVerifier>);

/// The CA a joiner's handshake verified (DER), once it has.
pub type SeenCa = Arc<RwLock<Option<Vec<u8>>>>;

/// The peer CAs a provider's listener accepts, changed as peerings come and go.
#[derive(Default)]
pub struct PeerCas {
    pinned: RwLock<Vec<Pinned>>,
    /// Invites are open: unknown certificates may connect, to join only.
    joiners: AtomicBool,
}

impl std::fmt::Debug for PeerCas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerCas")
    }
}

impl PeerCas {
    /// Pins `ca` (DER) for peer `name` (replacing its earlier one); with `bridge`, only the
    /// certificate naming that member is the peer's.
    pub fn pin(&self, name: &str, ca: &[u8], bridge: Option<&str>) -> Result<(), String> {
        let v = client_verifier_for(ca)?;
        let mut p = self.pinned.write().unwrap_or_else(|p| p.into_inner());
        p.retain(|(n, _, _)| n != name);
        p.push((name.to_string(), bridge.map(str::to_string), v));
        Ok(())
    }

    pub fn unpin(&self, name: &str) {
        self.pinned
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(n, _, _)| n != name);
    }

    pub fn open_to_joiners(&self, open: bool) {
        self.joiners.store(open, Ordering::Relaxed);
    }

    /// The peer `leaf` is: issued by its pinned CA, a bridge's, naming the bridge pinned
    /// with it (if any).
    pub fn peer_of(&self, leaf: &CertificateDer<'_>) -> Option<String> {
        let now = UnixTime::now();
        self.pinned
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(_, bridge, v)| {
                v.verify_client_cert(leaf, &[], now).is_ok()
                    && bridge
                        .as_ref()
                        .is_none_or(|b| crate::tls::name_of(leaf).as_ref() == Some(b))
                    && crate::tls::role_of(leaf) == Some(crate::tls::Role::Bridge)
            })
            .map(|(n, _, _)| n.clone())
    }
}

impl ClientCertVerifier for PeerCas {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let pinned = self.pinned.read().unwrap_or_else(|p| p.into_inner());
        if pinned
            .iter()
            .any(|(_, _, v)| v.verify_client_cert(end_entity, intermediates, now).is_ok())
        {
            return Ok(ClientCertVerified::assertion());
        }
        if self.joiners.load(Ordering::Relaxed) {
            // Its holder still proves it has the key (the handshake signature below); what
            // it may do is decided after: join with a valid invite, nothing else.
            return Ok(ClientCertVerified::assertion());
        }
        Err(rustls::Error::General(
            "certificate of a cluster this bridge is not peered with".into(),
        ))
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        no_tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        schemes()
    }
}

/// The provider's federation listener: its certificate and CA, peers' CAs accepted.
pub fn server_config(tls: &TlsDir, peers: Arc<PeerCas>) -> Result<rustls::ServerConfig, TlsError> {
    let mut chain = vec![tls.chain[0].clone()];
    chain.push(ca_der(&tls.dir)?);
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(peers)
        .with_single_cert(chain, tls.key.clone_key())?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    Ok(cfg)
}

/// Accepts a server whose chain carries the CA of fingerprint `fp` (SHA-256 of its DER)
/// and whose certificate that CA signed; remembers that CA. Used where a CA is known only
/// by a fingerprint handed over out of band: an invite, a join token.
#[derive(Debug)]
pub(crate) struct PinnedCa {
    pub fp: [u8; 32],
    /// Who the CA should be, for the refusal (`the bridge's CA is not the one the invite
    /// names`).
    pub mismatch: &'static str,
    pub seen: SeenCa,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| sha256(c) == self.fp)
            .ok_or_else(|| rustls::Error::General(self.mismatch.into()))?;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(ca.clone().into_owned())
            .map_err(|e| rustls::Error::General(format!("the pinned CA: {e}")))?;
        let v = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        v.verify_server_cert(end_entity, &[], server_name, ocsp, now)?;
        *self.seen.write().unwrap_or_else(|p| p.into_inner()) = Some(ca.to_vec());
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        no_tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        schemes()
    }
}

fn no_tls12() -> Result<HandshakeSignatureValid, rustls::Error> {
    Err(rustls::Error::General("TLS 1.2 is not spoken here".into()))
}

fn tls13_signature(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls13_signature(
        message,
        cert,
        dss,
        &provider().signature_verification_algorithms,
    )
}

fn schemes() -> Vec<SignatureScheme> {
    provider()
        .signature_verification_algorithms
        .supported_schemes()
}

/// A joiner's client config: presents its own certificate, accepts only a server whose CA
/// has fingerprint `fp`. The second value holds that CA (DER) once the handshake verified.
pub fn join_client_config(
    tls: &TlsDir,
    fp: [u8; 32],
) -> Result<(rustls::ClientConfig, SeenCa), TlsError> {
    let seen = Arc::new(RwLock::new(None));
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCa {
            fp,
            mismatch: "the bridge's CA is not the one the invite names (fingerprint mismatch)",
            seen: seen.clone(),
        }))
        .with_client_auth_cert(tls.chain.clone(), tls.key.clone_key())?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    Ok((cfg, seen))
}

/// A plain client config for the link once peered: its only root is the peer's CA.
pub fn peer_client_config(tls: &TlsDir, ca: &[u8]) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(ca.to_vec()))
        .map_err(|e| TlsError::Invalid(format!("the peer's CA: {e}")))?;
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(tls.chain.clone(), tls.key.clone_key())?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{self, Role, Validity};

    fn leaf(pki: &Path, name: &str, role: Role) -> CertificateDer<'static> {
        tls::issue(pki, name, role, &pki.join(name), Validity::Days(1)).unwrap();
        TlsDir::load(&pki.join(name)).unwrap().chain[0].clone()
    }

    #[test]
    fn a_peer_is_a_bridge_of_its_pinned_ca_and_a_site_only_the_bridge_it_named() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        tls::init_ca(&a).unwrap();
        tls::init_ca(&b).unwrap();
        let a_bridge = leaf(&a, "bridge-a", Role::Bridge);
        let a_node = leaf(&a, "edge-a", Role::Node);
        let a_other = leaf(&a, "bridge-a2", Role::Bridge);
        let b_bridge = leaf(&b, "bridge-b", Role::Bridge);
        let ca_a = ca_der(&a.join("bridge-a")).unwrap();
        let cas = PeerCas::default();
        assert_eq!(cas.peer_of(&a_bridge), None);
        cas.pin("cluster-a", &ca_a, None).unwrap();
        assert_eq!(cas.peer_of(&a_bridge).as_deref(), Some("cluster-a"));
        assert_eq!(cas.peer_of(&a_other).as_deref(), Some("cluster-a"));
        // Not a bridge: never the peer, whatever its CA.
        assert_eq!(cas.peer_of(&a_node), None);
        assert_eq!(cas.peer_of(&b_bridge), None);
        // A site of the same cluster is bound to the bridge it joined with.
        cas.pin("cluster-a", &ca_a, Some("bridge-a")).unwrap();
        assert_eq!(cas.peer_of(&a_bridge).as_deref(), Some("cluster-a"));
        assert_eq!(cas.peer_of(&a_other), None);
        assert!(issued_by(&ca_a, &a_bridge).is_ok());
        assert!(issued_by(&ca_a, &b_bridge).is_err());
        cas.unpin("cluster-a");
        assert_eq!(cas.peer_of(&a_bridge), None);
    }
}
