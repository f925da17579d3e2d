//! The cluster's certificates: a CA, and leaf certificates that carry a role.
//!
//! `fogline certs init --dir pki` makes the CA; `fogline certs issue NAME --role ROLE` makes
//! a folder with `cert.pem`, `key.pem` and the CA's `ca.pem`: the `--tls-dir` of a peer.
//!
//! A role is written into the certificate as the DNS name `ROLE.role.fogline.internal`, so
//! the stock WebPKI name check reads it and no X.509 parser is needed. Peers that accept
//! connections (node, bridge, router) also carry `peer.fogline.internal`, the name every
//! client verifies: identity inside the cluster comes from the CA, not from DNS.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// The name every server-capable peer's certificate carries, and clients verify.
pub const PEER_NAME: &str = "peer.fogline.internal";

pub use fogline_core::roles::{Action, Refusal, Role};

/// The DNS name that carries a role in a certificate.
fn role_dns(role: Role) -> String {
    format!("{}.role.fogline.internal", role.as_str())
}

/// Parses a role named on the command line.
pub fn parse_role(s: &str) -> Result<Role, TlsError> {
    Role::parse(s).ok_or_else(|| {
        TlsError::Invalid(format!(
            "unknown role {s:?}: expected client, operator, node, bridge or router"
        ))
    })
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {problem}")]
    File { path: String, problem: String },
    #[error("{0}")]
    Invalid(String),
    #[error("certificate generation: {0}")]
    Gen(#[from] rcgen::Error),
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
}

fn file_err(path: &Path, problem: impl ToString) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        problem: problem.to_string(),
    }
}

/// Creates a cluster CA in `dir` (`ca.pem`, `ca.key`, `ca.name`); refuses to overwrite one.
pub fn init_ca(dir: &Path) -> Result<PathBuf, TlsError> {
    let cert_path = dir.join("ca.pem");
    if cert_path.exists() {
        return Err(file_err(
            &cert_path,
            "a CA already exists here; remove it first to make a new one",
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
    let key = KeyPair::generate()?;
    // Each cluster's CA gets its own name, so a certificate from another cluster is
    // refused as coming from an unknown issuer rather than matched by name.
    let mut id = [0u8; 6];
    getrandom::fill(&mut id).map_err(|e| TlsError::Invalid(format!("no randomness: {e}")))?;
    let name = format!("Fogline cluster CA {}", hex::encode(id));
    let cert = ca_params(&name).self_signed(&key)?;
    write(&cert_path, cert.pem(), false)?;
    write(&dir.join("ca.key"), key.serialize_pem(), true)?;
    write(&dir.join("ca.name"), format!("{name}\n"), false)?;
    // The mesh's private-network key: only holders can even open a libp2p connection.
    let mut psk = [0u8; 32];
    getrandom::fill(&mut psk).map_err(|e| TlsError::Invalid(format!("no randomness: {e}")))?;
    write(
        &dir.join("mesh.key"),
        format!("/key/swarm/psk/1.0.0/\n/base16/\n{}\n", hex::encode(psk)),
        true,
    )?;
    Ok(cert_path)
}

fn ca_params(name: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = rcgen::date_time_ymd(2024, 1, 1);
    p.not_after = rcgen::date_time_ymd(2124, 1, 1);
    p
}

/// Validity of an issued certificate.
#[derive(Debug, Clone, Copy)]
pub enum Validity {
    Days(u32),
    /// A short life (enrollment tests, rotation).
    Seconds(u64),
    /// Already expired: for testing refusals.
    Expired,
}

/// Issues a certificate for `name` with `role`, signed by the CA in `ca_dir`, into `out`
/// (`cert.pem`, `key.pem`, `ca.pem`, and the mesh's `mesh.key`).
pub fn issue(
    ca_dir: &Path,
    name: &str,
    role: Role,
    out: &Path,
    validity: Validity,
) -> Result<(), TlsError> {
    let key = KeyPair::generate()?;
    let signed = sign_member(ca_dir, name, role, &key, validity)?;
    write_member_dir(out, &signed, &key.serialize_pem())
}

/// Replaces a member's certificate and key after a renewal: each written beside and
/// renamed over (the key first), so a reader finds whole files.
pub fn write_renewed(dir: &Path, cert_pem: &str, key_pem: &str) -> Result<(), TlsError> {
    for (name, text, private) in [("key.pem", key_pem, true), ("cert.pem", cert_pem, false)] {
        let tmp = dir.join(format!(".{name}.new"));
        write(&tmp, text.to_string(), private)?;
        std::fs::rename(&tmp, dir.join(name)).map_err(|e| file_err(&dir.join(name), e))?;
    }
    Ok(())
}

/// Writes a member's folder (a `--tls-dir`): `cert.pem`, `key.pem` and `mesh.key`
/// readable by the owner only, `ca.pem`.
pub fn write_member_dir(out: &Path, signed: &Signed, key_pem: &str) -> Result<(), TlsError> {
    std::fs::create_dir_all(out).map_err(|e| file_err(out, e))?;
    write(&out.join("cert.pem"), signed.cert_pem.clone(), false)?;
    write(&out.join("key.pem"), key_pem.to_string(), true)?;
    write(&out.join("ca.pem"), signed.ca_pem.clone(), false)?;
    // Only mesh members get the mesh's key: a device's or an operator's bundle cannot join.
    match &signed.mesh_key {
        Some(k) => write(&out.join("mesh.key"), k.clone(), true)?,
        None if out.join("mesh.key").exists() => {
            std::fs::remove_file(out.join("mesh.key")).map_err(|e| file_err(out, e))?
        }
        None => {}
    }
    Ok(())
}

/// A new member key made on this machine: its PEM (kept here) and its raw public key (sent
/// to the issuer).
pub fn new_member_key() -> Result<(String, Vec<u8>), TlsError> {
    let key = KeyPair::generate()?;
    Ok((key.serialize_pem(), key.public_key_raw().to_vec()))
}

/// A member's certificate as the CA signed it, with what goes beside it in its folder.
pub struct Signed {
    pub cert_pem: String,
    pub ca_pem: String,
    /// The mesh's key, for roles that join the mesh.
    pub mesh_key: Option<String>,
}

/// A joiner's public key: the raw uncompressed ECDSA P-256 point it sent (its private key
/// stays on the board).
pub struct JoinerKey(Vec<u8>);

impl JoinerKey {
    pub fn from_raw(raw: Vec<u8>) -> Result<JoinerKey, TlsError> {
        if raw.len() != 65 || raw[0] != 4 {
            return Err(TlsError::Invalid(
                "the public key must be an uncompressed ECDSA P-256 point (65 bytes)".into(),
            ));
        }
        Ok(JoinerKey(raw))
    }
}

impl rcgen::PublicKeyData for JoinerKey {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

/// Signs a certificate for `name` with `role` over `key`, by the CA in `ca_dir` (which
/// keeps a copy, so `certs revoke NAME` can name it exactly).
pub fn sign_member(
    ca_dir: &Path,
    name: &str,
    role: Role,
    key: &impl rcgen::PublicKeyData,
    validity: Validity,
) -> Result<Signed, TlsError> {
    if name.is_empty()
        || name.len() > 63
        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(TlsError::Invalid(format!(
            "name {name:?} must be 1 to 63 letters, digits or '-'"
        )));
    }
    let ca_key_path = ca_dir.join("ca.key");
    let ca_key_pem = std::fs::read_to_string(&ca_key_path).map_err(|e| {
        file_err(
            &ca_key_path,
            format!(
                "{e} (run `fogline certs init --dir {}` first)",
                ca_dir.display()
            ),
        )
    })?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(|e| file_err(&ca_key_path, e))?;
    let ca_pem_path = ca_dir.join("ca.pem");
    let ca_pem = std::fs::read_to_string(&ca_pem_path).map_err(|e| file_err(&ca_pem_path, e))?;
    let name_path = ca_dir.join("ca.name");
    let ca_name = std::fs::read_to_string(&name_path).map_err(|e| file_err(&name_path, e))?;
    let issuer = Issuer::new(ca_params(ca_name.trim()), ca_key);

    let mut sans = vec![name.to_string(), role_dns(role)];
    if role.serves() {
        sans.push(PEER_NAME.to_string());
    }
    let mut p = CertificateParams::new(sans)?;
    p.subject_alt_names
        .push(SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])));
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    p.distinguished_name = dn;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let now = rcgen::date_time_ymd(1970, 1, 1) + std::time::Duration::from_secs(unix_now());
    match validity {
        Validity::Days(d) => {
            p.not_before = now - std::time::Duration::from_secs(300);
            p.not_after = now + std::time::Duration::from_secs(u64::from(d) * 86_400);
        }
        Validity::Seconds(s) => {
            // Backdated for clocks a little behind, by a tenth of its life at most, so a
            // member renewing at two thirds of it renews after the fact, not at once.
            p.not_before = now - std::time::Duration::from_secs((s / 10).min(300));
            p.not_after = now + std::time::Duration::from_secs(s);
        }
        Validity::Expired => {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
    }
    let cert = p.signed_by(key, &issuer)?;
    let issued = ca_dir.join("issued");
    std::fs::create_dir_all(&issued).map_err(|e| file_err(&issued, e))?;
    write(&issued.join(format!("{name}.pem")), cert.pem(), false)?;
    let mesh_key = if role.joins_mesh() {
        std::fs::read_to_string(ca_dir.join("mesh.key")).ok()
    } else {
        None
    };
    Ok(Signed {
        cert_pem: cert.pem(),
        ca_pem,
        mesh_key,
    })
}

/// A certificate's validity: (not before, not after), unix seconds. Read from the DER
/// (`TBSCertificate`'s fifth field) with no X.509 library: the node only needs these.
pub fn validity(cert: &CertificateDer<'_>) -> Option<(u64, u64)> {
    /// One DER element at the front of `b`: (tag, contents, rest).
    fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, b) = b.split_first()?;
        let (&first, mut b) = b.split_first()?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || b.len() < n {
                return None;
            }
            let len = b[..n]
                .iter()
                .fold(0usize, |a, x| (a << 8) | usize::from(*x));
            b = &b[n..];
            len
        };
        (b.len() >= len).then(|| (tag, &b[..len], &b[len..]))
    }
    fn time(tag: u8, t: &[u8]) -> Option<u64> {
        let t = std::str::from_utf8(t).ok()?.strip_suffix('Z')?;
        let (year, rest) = match tag {
            0x17 => {
                let yy: u64 = t.get(..2)?.parse().ok()?;
                (if yy >= 50 { 1900 + yy } else { 2000 + yy }, t.get(2..)?)
            }
            0x18 => (t.get(..4)?.parse().ok()?, t.get(4..)?),
            _ => return None,
        };
        let num = |r: std::ops::Range<usize>| rest.get(r)?.parse::<u64>().ok();
        let (mo, d, h, mi, s) = (num(0..2)?, num(2..4)?, num(4..6)?, num(6..8)?, num(8..10)?);
        // Days from 1970-01-01 to the date (proleptic Gregorian, as civil_from_days inverts).
        let (y, m) = if mo <= 2 {
            (year - 1, mo + 9)
        } else {
            (year, mo - 3)
        };
        let era = y / 400;
        let yoe = y - era * 400;
        let doy = (153 * m + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = (era * 146_097 + doe).checked_sub(719_468)?;
        Some(days * 86_400 + h * 3600 + mi * 60 + s)
    }
    let (_, cert, _) = tlv(cert.as_ref())?;
    let (_, tbs, _) = tlv(cert)?;
    let mut rest = tbs;
    // [0] version (optional), serial, signature algorithm, issuer, then validity.
    let (tag, _, r) = tlv(rest)?;
    rest = if tag == 0xa0 { tlv(r)?.2 } else { r };
    let (_, _, r) = tlv(rest)?;
    let (_, _, r) = tlv(r)?;
    let (_, validity, _) = tlv(r)?;
    let (t1, nb, r) = tlv(validity)?;
    let (t2, na, _) = tlv(r)?;
    Some((time(t1, nb)?, time(t2, na)?))
}

/// A certificate's fingerprint: SHA-256 of its DER bytes, hex.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    hex::encode(fogline_core::Digest::of(cert.as_ref()).0)
}

/// Adds `name`'s certificate (the last one issued for it, by the copy in `CA/issued/`; or
/// every certificate naming it, when there is no copy) to the CA's revocation list, signs
/// the list with the CA's key and writes it to `CA/revocations.json`. Returns the signed
/// list and the entry.
pub fn revoke(
    ca_dir: &Path,
    name: &str,
) -> Result<
    (
        fogline_core::revocation::SignedList,
        fogline_core::revocation::Revoked,
    ),
    TlsError,
> {
    use fogline_core::revocation::{RevocationList, Revoked, SignedList};
    let list_path = ca_dir.join("revocations.json");
    let current = match std::fs::read_to_string(&list_path) {
        Ok(text) => {
            let signed: SignedList =
                serde_json::from_str(&text).map_err(|e| file_err(&list_path, e))?;
            signed.parse().map_err(|e| file_err(&list_path, e))?
        }
        Err(_) => RevocationList::default(),
    };
    let copy = ca_dir.join("issued").join(format!("{name}.pem"));
    let fingerprint = match std::fs::read(&copy) {
        Ok(pem) => {
            let cert = CertificateDer::from_pem_slice(&pem).map_err(|e| file_err(&copy, e))?;
            Some(self::fingerprint(&cert))
        }
        Err(_) => None,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let entry = Revoked {
        name: name.to_string(),
        fingerprint,
        revoked_at: now.as_secs(),
    };
    let list = current.with(entry.clone(), now.as_secs(), now.as_millis() as u64);
    let signed = sign_list(ca_dir, &list)?;
    let text = serde_json::to_string_pretty(&signed)
        .map_err(|e| TlsError::Invalid(format!("encoding the list: {e}")))?;
    write(&list_path, text, false)?;
    Ok((signed, entry))
}

/// Signs a revocation list with the CA's key.
fn sign_list(
    ca_dir: &Path,
    list: &fogline_core::revocation::RevocationList,
) -> Result<fogline_core::revocation::SignedList, TlsError> {
    let json = serde_json::to_string(list)
        .map_err(|e| TlsError::Invalid(format!("encoding the list: {e}")))?;
    let (scheme, sig) = sign_with(
        &ca_dir.join("ca.key"),
        &fogline_core::revocation::SignedList::message(&json),
    )?;
    Ok(fogline_core::revocation::SignedList {
        list: json,
        scheme,
        sig: hex::encode(sig),
    })
}

/// Signs `msg` with the private key in the PEM file `key_path`: (TLS scheme, signature).
fn sign_with(key_path: &Path, msg: &[u8]) -> Result<(u16, Vec<u8>), TlsError> {
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| file_err(key_path, e))?;
    let signer =
        rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| file_err(key_path, e))?;
    let signer = choose_signer(signer.as_ref())
        .ok_or_else(|| file_err(key_path, "the key has no usable signature scheme"))?;
    let sig = signer
        .sign(msg)
        .map_err(|e| TlsError::Invalid(format!("signing: {e}")))?;
    Ok((u16::from(signer.scheme()), sig))
}

/// A signer for `key` in the first scheme Fogline signs with that it supports.
fn choose_signer(key: &dyn rustls::sign::SigningKey) -> Option<Box<dyn rustls::sign::Signer>> {
    use rustls::SignatureScheme as S;
    key.choose_scheme(&[
        S::ECDSA_NISTP256_SHA256,
        S::ECDSA_NISTP384_SHA384,
        S::ED25519,
        S::RSA_PSS_SHA256,
    ])
}

/// Signs `msg` with the member key of the folder `tls_dir`.
pub fn sign_with_member_key(tls_dir: &Path, msg: &[u8]) -> Result<(u16, Vec<u8>), TlsError> {
    sign_with(&tls_dir.join("key.pem"), msg)
}

/// Checks a renewal: the current certificate is of this CA, valid now, of a member role,
/// and its key signed the new public key. Returns its name and role.
pub fn check_renewal(
    ca: &CertificateDer<'_>,
    cert: &CertificateDer<'_>,
    req: &fogline_core::enroll::RenewRequest,
) -> Result<(String, Role), String> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(ca.clone().into_owned())
        .map_err(|e| format!("the CA: {e}"))?;
    rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        TlsDir::provider(),
    )
    .build()
    .map_err(|e| e.to_string())?
    .verify_client_cert(cert, &[], rustls::pki_types::UnixTime::now())
    .map_err(|e| format!("the current certificate is not valid in this cluster: {e}"))?;
    let name = name_of(cert).ok_or("the current certificate names no member")?;
    let role = role_of(cert).ok_or("the current certificate carries no role")?;
    let sig = hex::decode(&req.sig).map_err(|_| "the signature is not hex".to_string())?;
    let msg = fogline_core::enroll::RenewRequest::message(&req.public_key);
    if !signed_by(cert, req.scheme, &msg, &sig)? {
        return Err(format!(
            "the request is not signed by the key of {name}'s current certificate"
        ));
    }
    Ok((name, role))
}

/// Checks a revocation list's signature against the cluster CA's certificate; returns the
/// list. The error says what failed.
pub fn verify_list(
    ca: &CertificateDer<'_>,
    signed: &fogline_core::revocation::SignedList,
) -> Result<fogline_core::revocation::RevocationList, String> {
    let sig = hex::decode(&signed.sig).map_err(|_| "its signature is not hex".to_string())?;
    let msg = fogline_core::revocation::SignedList::message(&signed.list);
    if !signed_by(ca, signed.scheme, &msg, &sig)? {
        return Err("its signature does not verify with this cluster's CA".into());
    }
    signed.parse()
}

/// Whether `sig` (TLS signature scheme `scheme`) over `msg` verifies with `cert`'s key.
fn signed_by(
    cert: &CertificateDer<'_>,
    scheme: u16,
    msg: &[u8],
    sig: &[u8],
) -> Result<bool, String> {
    let scheme = rustls::SignatureScheme::from(scheme);
    let algs = TlsDir::provider()
        .signature_verification_algorithms
        .mapping
        .iter()
        .find(|(s, _)| *s == scheme)
        .map(|(_, a)| *a)
        .ok_or_else(|| format!("signature scheme {scheme:?} is not supported"))?;
    let ee = webpki::EndEntityCert::try_from(cert).map_err(|e| format!("its certificate: {e}"))?;
    Ok(algs
        .iter()
        .any(|alg| ee.verify_signature(*alg, msg, sig).is_ok()))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn write(path: &Path, text: String, private: bool) -> Result<(), TlsError> {
    #[cfg(unix)]
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(if private { 0o600 } else { 0o644 })
            .open(path)
            .map_err(|e| file_err(path, e))?;
        f.write_all(text.as_bytes()).map_err(|e| file_err(path, e))
    }
    #[cfg(not(unix))]
    {
        let _ = private;
        std::fs::write(path, text).map_err(|e| file_err(path, e))
    }
}

/// A peer's certificate, key and the cluster CA, loaded from a `--tls-dir`.
#[derive(Debug)]
pub struct TlsDir {
    pub dir: PathBuf,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub roots: rustls::RootCertStore,
}

impl TlsDir {
    pub fn load(dir: &Path) -> Result<TlsDir, TlsError> {
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        let ca = dir.join("ca.pem");
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert)
            .map_err(|e| file_err(&cert, e))?
            .collect::<Result<_, _>>()
            .map_err(|e| file_err(&cert, e))?;
        if chain.is_empty() {
            return Err(file_err(&cert, "no certificate in the file"));
        }
        let key = PrivateKeyDer::from_pem_file(&key).map_err(|e| file_err(&key, e))?;
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(&ca).map_err(|e| file_err(&ca, e))? {
            roots
                .add(c.map_err(|e| file_err(&ca, e))?)
                .map_err(|e| file_err(&ca, e))?;
        }
        if roots.is_empty() {
            return Err(file_err(&ca, "no CA certificate in the file"));
        }
        Ok(TlsDir {
            dir: dir.to_path_buf(),
            chain,
            key,
            roots,
        })
    }

    /// The role this folder's certificate carries.
    pub fn role(&self) -> Option<Role> {
        role_of(&self.chain[0])
    }

    /// The member this folder's certificate names.
    pub fn name(&self) -> Option<String> {
        name_of(&self.chain[0])
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// TLS 1.3 server config: clients must present a certificate from the cluster CA.
    pub fn server_config(&self, alpn: &[u8]) -> Result<rustls::ServerConfig, TlsError> {
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(self.roots.clone()),
            Self::provider(),
        )
        .build()
        .map_err(|e| TlsError::Invalid(format!("client verifier: {e}")))?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(Self::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        cfg.alpn_protocols = vec![alpn.to_vec()];
        // 0-RTT: quinn requires the maximum here. Resumption stays stateful (the default
        // in-memory session cache, single-use tickets), which is what lets rustls accept
        // early data at all; the node also waits for the handshake to finish before it runs
        // anything, so replayed early data never executes.
        cfg.max_early_data_size = u32::MAX;
        Ok(cfg)
    }

    /// TLS 1.3 client config presenting this folder's certificate.
    pub fn client_config(&self, alpn: &[u8]) -> Result<rustls::ClientConfig, TlsError> {
        let mut cfg = rustls::ClientConfig::builder_with_provider(Self::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(self.roots.clone())
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())?;
        cfg.alpn_protocols = vec![alpn.to_vec()];
        cfg.enable_early_data = true;
        Ok(cfg)
    }
}

/// Proves to other mesh members that this member's libp2p peer holds its certificate, and
/// checks their proofs against the cluster CA.
pub struct MeshIdentity {
    /// This member's certificate and key (replaced when renewed).
    own: std::sync::RwLock<(CertificateDer<'static>, Arc<dyn rustls::sign::SigningKey>)>,
    verifier: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    /// The last proof signed: the signature covers the member and the peer, so it is made
    /// again only when one of them changes.
    last: std::sync::Mutex<Option<fogline_core::mesh::Proof>>,
}

impl std::fmt::Debug for MeshIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MeshIdentity")
    }
}

impl MeshIdentity {
    pub fn new(tls: &TlsDir) -> Result<MeshIdentity, TlsError> {
        let signer = rustls::crypto::ring::sign::any_supported_type(&tls.key)
            .map_err(|e| TlsError::Invalid(format!("the member's key cannot sign: {e}")))?;
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(tls.roots.clone()),
            TlsDir::provider(),
        )
        .build()
        .map_err(|e| TlsError::Invalid(format!("certificate verifier: {e}")))?;
        Ok(MeshIdentity {
            own: std::sync::RwLock::new((tls.chain[0].clone(), signer)),
            verifier,
            last: std::sync::Mutex::new(None),
        })
    }

    /// Proves with the certificate and key in `tls` from now on (after a renewal).
    pub fn reload(&self, tls: &TlsDir) -> Result<(), TlsError> {
        let signer = rustls::crypto::ring::sign::any_supported_type(&tls.key)
            .map_err(|e| TlsError::Invalid(format!("the member's key cannot sign: {e}")))?;
        *self.own.write().unwrap_or_else(|p| p.into_inner()) = (tls.chain[0].clone(), signer);
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = None;
        Ok(())
    }

    /// This member's proof that `peer` speaks for `node`, sent before whole report `seq`.
    pub fn prove(
        &self,
        node: &str,
        peer: &str,
        seq: u64,
    ) -> Result<fogline_core::mesh::Proof, TlsError> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let mut p = match last.as_ref().filter(|p| p.node == node && p.peer == peer) {
            Some(p) => p.clone(),
            None => {
                let p = self.sign(node, peer)?;
                *last = Some(p.clone());
                p
            }
        };
        p.seq = seq;
        Ok(p)
    }

    fn sign(&self, node: &str, peer: &str) -> Result<fogline_core::mesh::Proof, TlsError> {
        let (cert, key) = self.own.read().unwrap_or_else(|p| p.into_inner()).clone();
        let signer = choose_signer(key.as_ref()).ok_or_else(|| {
            TlsError::Invalid("the member's key has no usable signature scheme".into())
        })?;
        let sig = signer
            .sign(&fogline_core::mesh::Proof::message(node, peer))
            .map_err(|e| TlsError::Invalid(format!("signing the mesh proof: {e}")))?;
        Ok(fogline_core::mesh::Proof {
            node: node.to_string(),
            peer: peer.to_string(),
            seq: 0,
            cert: cert.to_vec(),
            scheme: u16::from(signer.scheme()),
            sig,
        })
    }

    /// Checks a proof that came from the libp2p peer `from`: a certificate of the cluster's
    /// CA, of a mesh member's role, naming the member reported for, whose key signed this
    /// peer. The error says which check failed.
    pub fn verify(&self, p: &fogline_core::mesh::Proof, from: &str) -> Result<(), String> {
        if p.peer != from {
            return Err(format!(
                "the proof is for peer {}, but came from {from}",
                p.peer
            ));
        }
        let cert = CertificateDer::from(p.cert.clone());
        self.verifier
            .verify_client_cert(&cert, &[], rustls::pki_types::UnixTime::now())
            .map_err(|e| format!("its certificate is not one of this cluster's: {e}"))?;
        match name_of(&cert) {
            Some(n) if n == p.node => {}
            Some(n) => return Err(format!("its certificate names {n:?}, not {:?}", p.node)),
            None => return Err("its certificate names no member".into()),
        }
        match role_of(&cert) {
            Some(r) if r.joins_mesh() => {}
            Some(r) => return Err(format!("a {r} certificate is not a mesh member's")),
            None => return Err("its certificate carries no role".into()),
        }
        let msg = fogline_core::mesh::Proof::message(&p.node, &p.peer);
        if signed_by(&cert, p.scheme, &msg, &p.sig)? {
            Ok(())
        } else {
            Err("its signature does not verify".into())
        }
    }
}

/// The server name clients verify.
pub fn peer_server_name() -> ServerName<'static> {
    ServerName::try_from(PEER_NAME)
        .unwrap_or_else(|_| ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()))
}

/// The role a (CA-verified) certificate carries.
pub fn role_of(cert: &CertificateDer<'_>) -> Option<Role> {
    let ee = webpki::EndEntityCert::try_from(cert).ok()?;
    Role::ALL.into_iter().find(|r| {
        ServerName::try_from(role_dns(*r))
            .ok()
            .is_some_and(|n| ee.verify_is_valid_for_subject_name(&n).is_ok())
    })
}

/// The member a certificate names (its first DNS name that is not one of Fogline's own).
pub fn name_of(cert: &CertificateDer<'_>) -> Option<String> {
    let ee = webpki::EndEntityCert::try_from(cert).ok()?;
    let name = ee
        .valid_dns_names()
        .find(|n| !n.ends_with(".fogline.internal"))
        .map(str::to_string);
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mesh_proofs_verify_and_each_is_a_new_message() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("pki");
        init_ca(&ca).unwrap();
        let out = dir.path().join("edge-1");
        issue(&ca, "edge-1", Role::Node, &out, Validity::Days(1)).unwrap();
        let id = MeshIdentity::new(&TlsDir::load(&out).unwrap()).unwrap();
        let (a, b) = (
            id.prove("edge-1", "peer-a", 1).unwrap(),
            id.prove("edge-1", "peer-a", 2).unwrap(),
        );
        for p in [&a, &b] {
            id.verify(p, "peer-a").unwrap();
        }
        // Gossipsub drops a message it already published: two proofs must differ.
        let enc =
            |p: &fogline_core::mesh::Proof| fogline_core::mesh::Gossip::Proof(p.clone()).encode();
        assert_ne!(enc(&a), enc(&b));
        let e = id.verify(&a, "peer-b").unwrap_err();
        assert!(e.contains("came from peer-b"), "{e}");
        let e = id
            .verify(&id.prove("edge-2", "peer-a", 3).unwrap(), "peer-a")
            .unwrap_err();
        assert!(e.contains("names \"edge-1\", not \"edge-2\""), "{e}");
    }

    #[test]
    fn validity_is_read_from_the_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("pki");
        init_ca(&ca).unwrap();
        let out = dir.path().join("edge-1");
        issue(&ca, "edge-1", Role::Node, &out, Validity::Seconds(20)).unwrap();
        let cert = &TlsDir::load(&out).unwrap().chain[0];
        let (nb, na) = validity(cert).unwrap();
        assert_eq!(na - nb, 22, "a tenth of its life early, 20 s after now");
        let now = unix_now();
        assert!(na >= now + 18 && na <= now + 21, "{na} vs {now}");
        issue(&ca, "old", Role::Node, &out, Validity::Expired).unwrap();
        let cert = &TlsDir::load(&out).unwrap().chain[0];
        // 2020-01-01 and 2021-01-01.
        assert_eq!(validity(cert).unwrap(), (1_577_836_800, 1_609_459_200));
    }

    #[test]
    fn issued_certificates_carry_their_role() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("pki");
        init_ca(&ca).unwrap();
        assert!(init_ca(&ca)
            .unwrap_err()
            .to_string()
            .contains("already exists"));
        for role in Role::ALL {
            let out = dir.path().join(role.as_str());
            issue(
                &ca,
                &format!("p-{}", role.as_str()),
                role,
                &out,
                Validity::Days(1),
            )
            .unwrap();
            let t = TlsDir::load(&out).unwrap();
            assert_eq!(t.role(), Some(role));
            assert_eq!(
                t.name().as_deref(),
                Some(format!("p-{}", role.as_str()).as_str())
            );
            // Only mesh members get the mesh's key.
            assert_eq!(out.join("mesh.key").exists(), role.joins_mesh(), "{role}");
            t.server_config(b"x").unwrap();
            t.client_config(b"x").unwrap();
        }
        let e = issue(
            &ca,
            "bad name",
            Role::Node,
            &dir.path().join("x"),
            Validity::Days(1),
        )
        .unwrap_err();
        assert!(e.to_string().contains("bad name"));
        let e = TlsDir::load(&dir.path().join("missing")).unwrap_err();
        assert!(e.to_string().contains("cert.pem"), "{e}");
    }
}
