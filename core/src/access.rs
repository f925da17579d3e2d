//! Who may do what through a gateway: namespaces, token scopes, quotas, and the one check
//! every route makes. Pure: the node keeps the tokens and counts the calls.
//!
//! A function is known by its key: `NAME` in the default namespace (`openfaas-fn`, so
//! OpenFaaS clients that never name one keep working), `NAME.NAMESPACE` in any other, as
//! the OpenFaaS invocation routes write it.
//!
//! | token | may |
//! |---|---|
//! | admin | everything |
//! | namespace `deploy` | deploy, update, remove functions and secrets of its namespace |
//! | namespace `invoke` | invoke its namespace's functions, read their async results |
//! | namespace `read` | list its functions, secrets' names, logs, async results; in the default namespace also the member-wide reads (metrics, status, mesh, placements) |

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::manifest::ManifestError;
use crate::units::ByteSize;

/// The namespace of functions deployed without one.
pub const DEFAULT_NAMESPACE: &str = "openfaas-fn";

/// A namespace name: a DNS label, as Kubernetes and OpenFaaS write them.
pub fn validate_namespace(ns: &str) -> Result<(), ManifestError> {
    if !is_label(ns) {
        return Err(ManifestError::new(
            "namespace",
            format!("{ns:?} must be 1 to 63 lowercase letters, digits or '-', starting with a letter or digit and not ending with '-'"),
        ));
    }
    Ok(())
}

pub(crate) fn is_label(s: &str) -> bool {
    let ok_chars = s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let ok_ends = s
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && !s.ends_with('-');
    !s.is_empty() && s.len() <= 63 && ok_chars && ok_ends
}

/// The key of function `name` in namespace `ns` (none or empty: the default).
pub fn qualify(name: &str, ns: Option<&str>) -> Result<String, ManifestError> {
    crate::manifest::validate_name(name)?;
    match ns.filter(|n| !n.is_empty() && *n != DEFAULT_NAMESPACE) {
        None => Ok(name.to_string()),
        Some(ns) => {
            validate_namespace(ns)?;
            Ok(format!("{name}.{ns}"))
        }
    }
}

/// A key's name and namespace.
pub fn split(key: &str) -> (&str, &str) {
    match key.split_once('.') {
        Some((n, ns)) => (n, ns),
        None => (key, DEFAULT_NAMESPACE),
    }
}

/// What a namespace token may do there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Deploy,
    Invoke,
    Read,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Scope::Deploy, Scope::Invoke, Scope::Read];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Deploy => "deploy",
            Scope::Invoke => "invoke",
            Scope::Read => "read",
        }
    }

    pub fn parse(s: &str) -> Result<Scope, String> {
        Scope::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| format!("scope {s:?} is not one of deploy, invoke, read"))
    }
}

/// What a token was minted for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum Grant {
    /// Everything, every namespace.
    Admin,
    /// The listed scopes in one namespace.
    Namespace {
        namespace: String,
        scopes: Vec<Scope>,
    },
    /// A join token: lets a new board be issued a certificate (`fogline join`), nothing
    /// else.
    Join(crate::enroll::JoinGrant),
}

/// What a request needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need<'a> {
    /// Admin only: loading images into the engine, making a member dial an address,
    /// minting tokens, creating namespaces.
    Admin,
    /// One scope in one namespace.
    In(Scope, &'a str),
    /// Any scope in this namespace (async results are readable by their namespace).
    Any(&'a str),
    /// Member-wide reads: metrics, status, mesh, placements.
    Member,
    /// Deploy scope anywhere (uploading a content-addressed module).
    DeployAnywhere,
    /// Any valid token (gateway info).
    Anyone,
}

/// Why a valid token was not enough.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Denied(pub String);

impl Grant {
    /// Whether this grant covers `need`; the refusal names what was missing.
    pub fn allows(&self, need: Need<'_>) -> Result<(), Denied> {
        let (ns, scopes) = match self {
            Grant::Admin => return Ok(()),
            Grant::Namespace { namespace, scopes } => (namespace.as_str(), scopes),
            Grant::Join(_) => {
                return Err(Denied(
                    "a join token is only for `fogline join`, not for the gateway".into(),
                ))
            }
        };
        let ok = match need {
            Need::Admin => false,
            Need::In(s, want) => want == ns && scopes.contains(&s),
            Need::Any(want) => want == ns,
            Need::Member => ns == DEFAULT_NAMESPACE && scopes.contains(&Scope::Read),
            Need::DeployAnywhere => scopes.contains(&Scope::Deploy),
            Need::Anyone => true,
        };
        if ok {
            return Ok(());
        }
        Err(Denied(match need {
            Need::Admin => format!("a token of namespace {ns:?} may not do this: it needs the admin token"),
            Need::In(s, want) if want != ns => format!(
                "a token of namespace {ns:?} may not {} in namespace {want:?}",
                s.as_str()
            ),
            Need::In(s, _) => format!("this token of namespace {ns:?} lacks the {} scope", s.as_str()),
            Need::Any(want) => format!("a token of namespace {ns:?} may not read what belongs to namespace {want:?}"),
            Need::Member => format!("member-wide reads need the admin token or a read token of {DEFAULT_NAMESPACE:?}; this one is of namespace {ns:?}"),
            Need::DeployAnywhere => format!("this token of namespace {ns:?} lacks the deploy scope"),
            Need::Anyone => unreachable!("every grant passes"),
        }))
    }

    /// The one namespace this grant is limited to, if any.
    pub fn namespace(&self) -> Option<&str> {
        match self {
            Grant::Admin | Grant::Join(_) => None,
            Grant::Namespace { namespace, .. } => Some(namespace),
        }
    }
}

/// Minted tokens read `fog_ID_SECRET`: the id finds the record, the secret is checked
/// against its hash. Only the hash is ever stored.
pub const TOKEN_PREFIX: &str = "fog_";

/// A token's id and secret, when it has the minted shape.
pub fn parse_token(text: &str) -> Option<(&str, &str)> {
    let rest = text.strip_prefix(TOKEN_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let hexish = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hexish(id, 16) && hexish(secret, 64)).then_some((id, secret))
}

/// Makes a token's text from 8 random bytes of id and 32 of secret.
pub fn token_text(id: &[u8; 8], secret: &[u8; 32]) -> String {
    format!("{TOKEN_PREFIX}{}_{}", hex::encode(id), hex::encode(secret))
}

/// What is stored of a token's secret.
pub fn token_hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Equal, in time that does not depend on where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Most a namespace may hold; unset fields are unlimited.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    /// Functions deployed at once.
    pub functions: Option<u32>,
    /// Calls in flight at once through this member (further calls get 429).
    pub concurrency: Option<u32>,
    /// Sum of the functions' memory limits.
    pub memory: Option<ByteSize>,
}

/// What a namespace holds now, to check a deploy against its quota.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub functions: u32,
    pub memory: u64,
}

impl Quota {
    /// Whether adding `memory` (replacing `replaced`, when an update) stays within the quota;
    /// the refusal names the quota.
    pub fn admits_deploy(
        &self,
        ns: &str,
        now: Usage,
        memory: u64,
        replaced: Option<u64>,
    ) -> Result<(), Denied> {
        let functions = now.functions + u32::from(replaced.is_none());
        if let Some(max) = self.functions {
            if functions > max {
                return Err(Denied(format!(
                    "namespace {ns:?} is at its quota of {max} functions"
                )));
            }
        }
        if let Some(max) = self.memory {
            let total = now.memory - replaced.unwrap_or(0).min(now.memory) + memory;
            if total > max.bytes() {
                return Err(Denied(format!(
                    "namespace {ns:?} would hold {} of function memory, past its quota of {max}",
                    ByteSize(total)
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(scopes: &[Scope]) -> Grant {
        Grant::Namespace {
            namespace: "team-a".into(),
            scopes: scopes.to_vec(),
        }
    }

    #[test]
    fn keys_round_trip() {
        assert_eq!(qualify("f", None).unwrap(), "f");
        assert_eq!(qualify("f", Some("openfaas-fn")).unwrap(), "f");
        assert_eq!(qualify("f", Some("team-a")).unwrap(), "f.team-a");
        assert_eq!(split("f.team-a"), ("f", "team-a"));
        assert_eq!(split("f"), ("f", DEFAULT_NAMESPACE));
        assert_eq!(qualify("f", Some("Bad")).unwrap_err().field, "namespace");
        assert_eq!(qualify("f.x", None).unwrap_err().field, "name");
    }

    #[test]
    fn scopes_hold_to_their_namespace() {
        let g = ns(&[Scope::Deploy, Scope::Invoke, Scope::Read]);
        assert!(g.allows(Need::In(Scope::Invoke, "team-a")).is_ok());
        let e = g.allows(Need::In(Scope::Invoke, "team-b")).unwrap_err();
        assert_eq!(
            e.0,
            "a token of namespace \"team-a\" may not invoke in namespace \"team-b\""
        );
        assert!(g.allows(Need::Admin).is_err());
        assert!(g.allows(Need::Member).is_err());
        let read = ns(&[Scope::Read]);
        assert!(read
            .allows(Need::In(Scope::Deploy, "team-a"))
            .unwrap_err()
            .0
            .contains("lacks the deploy scope"));
        assert!(read.allows(Need::Any("team-a")).is_ok());
        assert!(read.allows(Need::DeployAnywhere).is_err());
        assert!(Grant::Admin.allows(Need::Admin).is_ok());
        let monitor = Grant::Namespace {
            namespace: DEFAULT_NAMESPACE.into(),
            scopes: vec![Scope::Read],
        };
        assert!(monitor.allows(Need::Member).is_ok());
    }

    #[test]
    fn tokens_have_one_shape() {
        let t = token_text(&[1; 8], &[2; 32]);
        let (id, secret) = parse_token(&t).unwrap();
        assert_eq!(id, "0101010101010101");
        assert_eq!(token_hash(secret), token_hash(&"02".repeat(32)));
        assert!(parse_token("fog_01_02").is_none());
        assert!(parse_token(&t.replace("fog_", "fox_")).is_none());
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    #[test]
    fn quotas_name_what_is_full() {
        let q = Quota {
            functions: Some(2),
            concurrency: None,
            memory: Some(ByteSize::mib(128)),
        };
        let now = Usage {
            functions: 2,
            memory: 128 << 20,
        };
        let e = q.admits_deploy("a", now, 1, None).unwrap_err();
        assert!(e.0.contains("quota of 2 functions"), "{e}");
        // An update replaces: same count, memory swapped.
        assert!(q.admits_deploy("a", now, 64 << 20, Some(64 << 20)).is_ok());
        let e = q
            .admits_deploy("a", now, 65 << 20, Some(64 << 20))
            .unwrap_err();
        assert!(e.0.contains("past its quota of"), "{e}");
        assert!(Quota::default()
            .admits_deploy("a", now, u64::MAX / 2, None)
            .is_ok());
    }
}
