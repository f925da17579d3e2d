//! Where an async call's result may be delivered, and how receivers verify it came from us.
//!
//! A callback URL must fall under one of the node's allowed prefixes (`[async]
//! callback_allow`), compared on the parsed URL (scheme, host, port, then path), so
//! `https://hooks.example.com.evil.net/` never passes for `https://hooks.example.com/`.
//! Loopback, link-local and unspecified addresses (the cloud metadata service among them)
//! are reached only when an allowed prefix names such a host itself.
//!
//! Deliveries are signed as Standard Webhooks describes: `webhook-id`,
//! `webhook-timestamp` (Unix seconds) and `webhook-signature: v1,BASE64` where BASE64 is the
//! HMAC-SHA256, under the secret's bytes, of `ID.TIMESTAMP.BODY`; secrets are written
//! `whsec_BASE64`.

use std::net::IpAddr;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use url::{Host, Url};

/// Why a callback URL is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallbackError {
    #[error("callbacks are off on this node: [async] callback_allow lists no URL prefix")]
    Off,
    #[error("callback URL {0:?} is not an http:// or https:// URL with a host")]
    Malformed(String),
    #[error("callback URL {url:?} is not under an allowed prefix ({allowed})")]
    NotAllowed { url: String, allowed: String },
    #[error("callback URL {url:?} leads to {ip}, a loopback or link-local address that no allowed prefix names")]
    Internal { url: String, ip: IpAddr },
}

/// An allowed URL prefix, parsed.
#[derive(Debug, Clone)]
pub struct Prefix {
    url: Url,
}

impl Prefix {
    pub fn parse(s: &str) -> Option<Prefix> {
        let url = web_url(s)?;
        Some(Prefix { url })
    }

    fn covers(&self, u: &Url) -> bool {
        self.url.scheme() == u.scheme()
            && self.url.host() == u.host()
            && self.url.port_or_known_default() == u.port_or_known_default()
            && u.path().starts_with(self.url.path())
    }

    /// Whether the prefix itself names an internal host (an operator listed it on purpose).
    fn names_internal(&self) -> bool {
        match self.url.host() {
            Some(Host::Ipv4(ip)) => internal(IpAddr::V4(ip)),
            Some(Host::Ipv6(ip)) => internal(IpAddr::V6(ip)),
            Some(Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
            None => false,
        }
    }
}

/// A callback URL checked against the allowed prefixes.
#[derive(Debug, Clone)]
pub struct Allowed {
    pub url: Url,
    /// Whether it may reach an internal address (its prefix names one).
    pub internal_ok: bool,
}

impl Allowed {
    /// The host and port to resolve before delivering.
    pub fn host_port(&self) -> Option<(String, u16)> {
        let host = match self.url.host()? {
            Host::Domain(d) => d.to_string(),
            Host::Ipv4(ip) => ip.to_string(),
            Host::Ipv6(ip) => ip.to_string(),
        };
        Some((host, self.url.port_or_known_default()?))
    }

    /// Checks an address the host resolved to (at delivery, so a name cannot be made to
    /// point inside later).
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), CallbackError> {
        if internal(ip) && !self.internal_ok {
            return Err(CallbackError::Internal {
                url: self.url.to_string(),
                ip,
            });
        }
        Ok(())
    }
}

/// Checks `url` against the allowed prefixes (at submit).
pub fn check(url: &str, allow: &[String]) -> Result<Allowed, CallbackError> {
    if allow.is_empty() {
        return Err(CallbackError::Off);
    }
    let u = web_url(url).ok_or_else(|| CallbackError::Malformed(url.to_string()))?;
    let prefixes: Vec<Prefix> = allow.iter().filter_map(|p| Prefix::parse(p)).collect();
    let Some(p) = prefixes.iter().find(|p| p.covers(&u)) else {
        return Err(CallbackError::NotAllowed {
            url: url.to_string(),
            allowed: allow.join(", "),
        });
    };
    let allowed = Allowed {
        internal_ok: p.names_internal(),
        url: u,
    };
    // An IP literal is checked now; a name, when it is resolved for delivery.
    let literal = match allowed.url.host() {
        Some(Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
        Some(Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
        _ => None,
    };
    if let Some(ip) = literal {
        allowed.check_ip(ip)?;
    }
    Ok(allowed)
}

fn web_url(s: &str) -> Option<Url> {
    let u = Url::parse(s).ok()?;
    let ok = matches!(u.scheme(), "http" | "https")
        && u.host().is_some()
        && u.username().is_empty()
        && u.password().is_none();
    ok.then_some(u)
}

/// Loopback, link-local (169.254/16: cloud metadata services; fe80::/10), unspecified, and
/// IPv4-mapped forms of them.
pub fn internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_link_local() || v4.is_unspecified(),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return internal(IpAddr::V4(v4));
            }
            v6.is_loopback() || v6.is_unspecified() || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

/// The `webhook-signature` header value for one delivery.
pub fn sign(secret: &[u8], id: &str, timestamp: u64, body: &[u8]) -> String {
    // HMAC takes keys of any length; this cannot fail.
    let mut mac = match Hmac::<sha2::Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let sig = mac.finalize().into_bytes();
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(sig)
    )
}

/// A new secret's text (`whsec_` and the base64 of `raw`).
pub fn secret_text(raw: &[u8]) -> String {
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

/// The secret that signs the callbacks of namespace `ns`: the member's own for the default
/// namespace, else HMAC-SHA256 of the namespace's name under it, so each namespace's
/// receivers verify with a secret that is theirs alone and that no one needs to store.
pub fn namespace_secret(member: &[u8], ns: &str) -> Vec<u8> {
    if ns == crate::access::DEFAULT_NAMESPACE {
        return member.to_vec();
    }
    let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(member) else {
        return member.to_vec();
    };
    mac.update(b"fogline webhook secret of namespace ");
    mac.update(ns.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// The bytes of a `whsec_…` secret.
pub fn secret_bytes(text: &str) -> Option<Vec<u8>> {
    let b64 = text.trim().strip_prefix("whsec_")?;
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn allow(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn urls_must_fall_under_an_allowed_prefix() {
        let a = allow(&["https://hooks.example.com/fogline/"]);
        assert!(check("https://hooks.example.com/fogline/done", &a).is_ok());
        for bad in [
            "https://hooks.example.com.evil.net/fogline/x",
            "https://hooks.example.com:444/fogline/x",
            "http://hooks.example.com/fogline/x",
            "https://hooks.example.com/other",
            "https://user@hooks.example.com/fogline/x",
        ] {
            assert!(check(bad, &a).is_err(), "{bad}");
        }
        assert_eq!(check("https://x/", &[]).unwrap_err(), CallbackError::Off);
        assert!(matches!(
            check("ftp://x/", &a).unwrap_err(),
            CallbackError::Malformed(_)
        ));
    }

    #[test]
    fn internal_addresses_need_a_prefix_that_names_them() {
        let open = allow(&["http://"]);
        assert!(Prefix::parse("http://").is_none(), "a prefix needs a host");
        let a = allow(&["http://10.0.0.5/", "http://127.0.0.1:9000/"]);
        assert!(check("http://127.0.0.1:9000/cb", &a).is_ok());
        let any_name = allow(&["http://hooks.internal/"]);
        let ok = check("http://hooks.internal/cb", &any_name).unwrap();
        // The name resolved to the metadata service at delivery: refused.
        let e = ok.check_ip("169.254.169.254".parse().unwrap()).unwrap_err();
        assert!(e.to_string().contains("link-local"), "{e}");
        assert!(ok.check_ip("10.1.2.3".parse().unwrap()).is_ok());
        assert!(open.iter().all(|p| Prefix::parse(p).is_none()));
        for ip in [
            "127.0.0.1",
            "169.254.169.254",
            "::1",
            "fe80::1",
            "0.0.0.0",
            "::ffff:127.0.0.1",
        ] {
            assert!(internal(ip.parse().unwrap()), "{ip}");
        }
        assert!(!internal("192.168.1.2".parse().unwrap()));
    }

    #[test]
    fn signatures_follow_standard_webhooks() {
        // The Standard Webhooks specification's own example.
        let secret = secret_bytes("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            sign(&secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        assert_eq!(
            secret_bytes(&secret_text(&[1, 2, 3])).unwrap(),
            vec![1, 2, 3]
        );
    }

    #[test]
    fn each_namespace_signs_with_its_own_secret() {
        let member = [7u8; 32];
        assert_eq!(namespace_secret(&member, "openfaas-fn"), member);
        let a = namespace_secret(&member, "team-a");
        let b = namespace_secret(&member, "team-b");
        assert_ne!(a, b);
        assert_ne!(a, member);
        assert_eq!(a, namespace_secret(&member, "team-a"));
        assert_ne!(sign(&a, "id", 1, b"x"), sign(&b, "id", 1, b"x"));
    }
}
