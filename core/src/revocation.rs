//! The cluster's certificate revocation list: which certificates members refuse, signed
//! by the cluster CA so any member can check a list it is handed or hears over the mesh.
//! Pure: the node signs, verifies and enforces it.
//!
//! A certificate is named by the SHA-256 of its DER bytes (`fogline certs issue` keeps a
//! copy of each in the CA's folder, so `certs revoke NAME` can find it); an entry without
//! one revokes every certificate that names the member. Lists are numbered; a member keeps
//! the highest-numbered list it has verified.

use serde::{Deserialize, Serialize};

/// What the CA signs: a number, when, and the entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RevocationList {
    /// Larger is newer; a member ignores a list not newer than the one it holds.
    pub number: u64,
    /// Unix seconds when the list was signed.
    pub issued_at: u64,
    pub entries: Vec<Revoked>,
}

/// One revoked certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revoked {
    /// The member the certificate names.
    pub name: String,
    /// SHA-256 of the certificate (hex); none: every certificate naming `name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// Unix seconds.
    pub revoked_at: u64,
}

/// A list with the CA's signature over [`SignedList::message`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedList {
    /// The list as JSON: these exact bytes are signed.
    pub list: String,
    /// TLS signature scheme (RFC 8446 code point) of `sig`.
    pub scheme: u16,
    /// The signature, hex.
    pub sig: String,
}

impl SignedList {
    /// The bytes the CA signs.
    pub fn message(list_json: &str) -> Vec<u8> {
        let mut m = b"fogline certificate revocation list v1\n".to_vec();
        m.extend_from_slice(list_json.as_bytes());
        m
    }

    /// The list inside (its signature is not checked here).
    pub fn parse(&self) -> Result<RevocationList, String> {
        serde_json::from_str(&self.list)
            .map_err(|e| format!("the revocation list does not parse: {e}"))
    }
}

impl RevocationList {
    /// The entry revoking a certificate that names `name` and has `fingerprint` (hex).
    pub fn revokes(&self, name: Option<&str>, fingerprint: &str) -> Option<&Revoked> {
        self.entries.iter().find(|e| match &e.fingerprint {
            Some(f) => f.eq_ignore_ascii_case(fingerprint),
            None => name == Some(e.name.as_str()),
        })
    }

    /// This list with `entry` added (not twice), numbered after it and `now_ms`.
    pub fn with(&self, entry: Revoked, now_s: u64, now_ms: u64) -> RevocationList {
        let mut next = self.clone();
        if !next
            .entries
            .iter()
            .any(|e| e.name == entry.name && e.fingerprint == entry.fingerprint)
        {
            next.entries.push(entry);
        }
        next.number = (self.number + 1).max(now_ms);
        next.issued_at = now_s;
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_match_by_fingerprint_else_by_name() {
        let l = RevocationList::default()
            .with(
                Revoked {
                    name: "dev-7".into(),
                    fingerprint: Some("ab".repeat(32)),
                    revoked_at: 1,
                },
                1,
                10,
            )
            .with(
                Revoked {
                    name: "old-node".into(),
                    fingerprint: None,
                    revoked_at: 2,
                },
                2,
                5,
            );
        assert_eq!(
            l.number, 11,
            "numbers only grow, even if the clock went back"
        );
        assert!(l.revokes(Some("dev-7"), &"AB".repeat(32)).is_some());
        assert!(
            l.revokes(Some("dev-7"), &"cd".repeat(32)).is_none(),
            "a reissued certificate"
        );
        assert!(l.revokes(Some("old-node"), &"cd".repeat(32)).is_some());
        assert!(l.revokes(None, &"cd".repeat(32)).is_none());
        let again = l.with(l.entries[0].clone(), 3, 12);
        assert_eq!(again.entries.len(), 2);
        let signed = SignedList {
            list: serde_json::to_string(&l).unwrap(),
            scheme: 0,
            sig: String::new(),
        };
        assert_eq!(signed.parse().unwrap(), l);
    }
}
