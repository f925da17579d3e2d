//! The revocation list this member enforces: the newest one it has verified against the
//! cluster CA, kept in `DATA/revocations.json` across restarts. It arrives by
//! `POST /v1/revocations` (admin) or over the mesh; every holder of a watch hears of a new
//! one at once (the QUIC server closes revoked peers' open connections, the QUIC client
//! drops connections to revoked members, the mesh unbinds them and passes the list on).

use std::path::{Path, PathBuf};
use std::sync::RwLock;

use fogline_core::revocation::{RevocationList, SignedList};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio::sync::watch;

pub struct Revocations {
    /// The cluster CA's certificate; without one (no certificates) nothing is enforced.
    ca: Option<CertificateDer<'static>>,
    path: PathBuf,
    current: RwLock<Option<(SignedList, RevocationList)>>,
    changed: watch::Sender<u64>,
}

impl Revocations {
    /// Loads the list kept in `data_dir`, checked against the CA in `tls_dir`.
    pub fn open(data_dir: &Path, tls_dir: Option<&Path>) -> anyhow::Result<Revocations> {
        let ca = match tls_dir {
            Some(dir) => {
                let p = dir.join("ca.pem");
                Some(
                    CertificateDer::from_pem_file(&p)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?,
                )
            }
            None => None,
        };
        let r = Revocations {
            ca,
            path: data_dir.join("revocations.json"),
            current: RwLock::new(None),
            changed: watch::channel(0).0,
        };
        if let Ok(text) = std::fs::read_to_string(&r.path) {
            match serde_json::from_str::<SignedList>(&text)
                .map_err(|e| e.to_string())
                .and_then(|s| r.take(&s, false).map(drop))
            {
                Ok(()) => {}
                Err(e) => tracing::warn!("{}: not used: {e}", r.path.display()),
            }
        }
        Ok(r)
    }

    /// Takes a list when it verifies and is newer than the one held (then kept on disk and
    /// announced); `Ok(false)`: not newer.
    pub fn accept(&self, signed: &SignedList) -> Result<bool, String> {
        self.take(signed, true)
    }

    /// [`Revocations::accept`]; `keep`: write it to disk (not when it was read from there).
    fn take(&self, signed: &SignedList, keep: bool) -> Result<bool, String> {
        let Some(ca) = &self.ca else {
            return Err(
                "this member has no cluster CA (quic.tls_dir) to check the list with".into(),
            );
        };
        let list = crate::tls::verify_list(ca, signed)?;
        {
            let mut cur = self.current.write().unwrap_or_else(|p| p.into_inner());
            if cur.as_ref().is_some_and(|(_, l)| l.number >= list.number) {
                return Ok(false);
            }
            *cur = Some((signed.clone(), list.clone()));
        }
        if keep {
            let text = serde_json::to_string_pretty(signed).map_err(|e| e.to_string())?;
            std::fs::write(&self.path, text)
                .map_err(|e| format!("keeping the list in {}: {e}", self.path.display()))?;
        }
        tracing::info!(
            number = list.number,
            entries = list.entries.len(),
            "revocation list taken"
        );
        self.changed.send_replace(list.number);
        Ok(true)
    }

    /// Refuses a revoked certificate, naming it: `certificate of dev-7 is revoked`.
    pub fn check(&self, cert: &CertificateDer<'_>) -> Result<(), String> {
        let cur = self.current.read().unwrap_or_else(|p| p.into_inner());
        let Some((_, list)) = cur.as_ref() else {
            return Ok(());
        };
        let name = crate::tls::name_of(cert);
        match list.revokes(name.as_deref(), &crate::tls::fingerprint(cert)) {
            Some(e) => Err(format!("certificate of {} is revoked", e.name)),
            None => Ok(()),
        }
    }

    /// The list held, to pass on.
    pub fn signed(&self) -> Option<SignedList> {
        let cur = self.current.read().unwrap_or_else(|p| p.into_inner());
        cur.as_ref().map(|(s, _)| s.clone())
    }

    /// The number of the list held (0: none).
    pub fn number(&self) -> u64 {
        *self.changed.borrow()
    }

    /// Changes whenever a newer list is taken.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{init_ca, issue, revoke, Role, TlsDir, Validity};

    #[test]
    fn signed_lists_are_checked_kept_and_enforced() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("pki");
        init_ca(&ca).unwrap();
        let member = dir.path().join("edge-1");
        issue(&ca, "edge-1", Role::Node, &member, Validity::Days(1)).unwrap();
        let dev = dir.path().join("dev-7");
        issue(&ca, "dev-7", Role::Client, &dev, Validity::Days(1)).unwrap();
        let dev_cert = TlsDir::load(&dev).unwrap().chain[0].clone();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let r = Revocations::open(&data, Some(&member)).unwrap();
        assert!(r.check(&dev_cert).is_ok());

        let (signed, entry) = revoke(&ca, "dev-7").unwrap();
        assert!(
            entry.fingerprint.is_some(),
            "the issued copy names it exactly"
        );
        let mut forged = signed.clone();
        forged.list = forged.list.replace("dev-7", "edge-1");
        let e = r.accept(&forged).unwrap_err();
        assert!(e.contains("does not verify"), "{e}");
        assert!(r.accept(&signed).unwrap());
        assert!(!r.accept(&signed).unwrap(), "not newer");
        assert_eq!(
            r.check(&dev_cert).unwrap_err(),
            "certificate of dev-7 is revoked"
        );
        // A certificate issued again for the same name is another certificate.
        issue(&ca, "dev-7", Role::Client, &dev, Validity::Days(1)).unwrap();
        assert!(r.check(&TlsDir::load(&dev).unwrap().chain[0]).is_ok());

        // Kept across a restart.
        let again = Revocations::open(&data, Some(&member)).unwrap();
        assert_eq!(
            again.check(&dev_cert).unwrap_err(),
            "certificate of dev-7 is revoked"
        );
        // A list from another cluster's CA does not verify here.
        let other = dir.path().join("other");
        init_ca(&other).unwrap();
        let (theirs, _) = revoke(&other, "edge-1").unwrap();
        assert!(again.accept(&theirs).is_err());
    }
}
