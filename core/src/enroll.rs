//! Enrollment by token: what `fogline token create --role node` prints and what
//! `fogline join` sends and receives. Pure: the node keeps the tokens and signs.
//!
//! A join token is one line, `fogjoin_` then base64url of JSON: the issuer's enrollment
//! address, the SHA-256 of the cluster CA's certificate (the joiner trusts the issuer only
//! if it presents that CA), and a minted token (`fog_ID_SECRET`) the issuer keeps hashed,
//! with the role it may sign, its expiry and how many uses are left.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::roles::Role;

pub const JOIN_PREFIX: &str = "fogjoin_";

/// What a join token carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinToken {
    /// Where the issuer takes enrollments (`HOST:PORT`, TLS).
    pub addr: String,
    /// SHA-256 of the cluster CA's certificate (DER), hex.
    pub ca: String,
    /// The minted token: `fog_ID_SECRET`.
    pub token: String,
}

impl JoinToken {
    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        format!(
            "{JOIN_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
        )
    }

    /// Reads a join token; the error says what is wrong with it.
    pub fn decode(text: &str) -> Result<JoinToken, String> {
        let b64 = text
            .trim()
            .strip_prefix(JOIN_PREFIX)
            .ok_or_else(|| format!("a join token starts with {JOIN_PREFIX}"))?;
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(b64)
            .map_err(|_| "the join token is damaged (not base64url)".to_string())?;
        let t: JoinToken =
            serde_json::from_slice(&json).map_err(|e| format!("the join token is damaged: {e}"))?;
        let hex_ok = t.ca.len() == 64 && t.ca.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex_ok || crate::access::parse_token(&t.token).is_none() || t.addr.is_empty() {
            return Err("the join token is damaged (its fields do not parse)".into());
        }
        Ok(t)
    }
}

/// What a join token lets its holder be issued, and how long.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinGrant {
    /// The role the certificate gets: node or bridge.
    pub role: Role,
    /// The site the new member joins (its mesh `site`), if the token names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// Unix seconds after which the token is refused.
    pub expires_at: u64,
    /// Enrollments left.
    pub uses_left: u32,
}

impl JoinGrant {
    /// Whether one more enrollment may happen at `now` (unix seconds); the refusal names
    /// why.
    pub fn check(&self, now: u64) -> Result<(), String> {
        if now >= self.expires_at {
            return Err("the join token has expired".into());
        }
        if self.uses_left == 0 {
            return Err("the join token is used up".into());
        }
        Ok(())
    }
}

/// A joiner's request: the token, the name it wants, and its public key (the private key
/// never leaves the board).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollRequest {
    pub token: String,
    pub name: String,
    /// The raw ECDSA P-256 public key (uncompressed point), hex.
    pub public_key: String,
}

/// What the issuer sends back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollReply {
    pub name: String,
    pub role: Role,
    pub cert_pem: String,
    pub ca_pem: String,
    /// The mesh's private-network key (node and bridge roles join the mesh).
    pub mesh_key: String,
    /// Mesh addresses to join through.
    pub join: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// The mesh's gossip interval (ms): every member gossips at the same pace, or the
    /// faster ones take the slower for gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_ms: Option<u64>,
}

/// A member renewing its certificate: the new public key, signed with its current key
/// (whose certificate comes along).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewRequest {
    pub cert_pem: String,
    /// The new raw ECDSA P-256 public key, hex.
    pub public_key: String,
    /// TLS signature scheme of `sig`.
    pub scheme: u16,
    /// Signature over [`RenewRequest::message`] by the current key, hex.
    pub sig: String,
}

impl RenewRequest {
    pub fn message(public_key: &str) -> Vec<u8> {
        let mut m = b"fogline certificate renewal v1\n".to_vec();
        m.extend_from_slice(public_key.as_bytes());
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_damage_is_named() {
        let t = JoinToken {
            addr: "10.0.0.5:4435".into(),
            ca: "ab".repeat(32),
            token: crate::access::token_text(&[1; 8], &[2; 32]),
        };
        let text = t.encode();
        assert!(!text.contains(' ') && !text.contains('\n'));
        assert_eq!(JoinToken::decode(&text).unwrap(), t);
        assert!(JoinToken::decode("fog_x")
            .unwrap_err()
            .contains("starts with"));
        assert!(JoinToken::decode("fogjoin_!!!")
            .unwrap_err()
            .contains("damaged"));
        let mut bad = t.clone();
        bad.ca = "zz".into();
        assert!(JoinToken::decode(&bad.encode())
            .unwrap_err()
            .contains("damaged"));
    }

    #[test]
    fn grants_expire_and_run_out() {
        let g = JoinGrant {
            role: Role::Node,
            site: None,
            expires_at: 100,
            uses_left: 1,
        };
        assert!(g.check(99).is_ok());
        assert_eq!(g.check(100).unwrap_err(), "the join token has expired");
        let used = JoinGrant { uses_left: 0, ..g };
        assert_eq!(used.check(1).unwrap_err(), "the join token is used up");
    }
}
