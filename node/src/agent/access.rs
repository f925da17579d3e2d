//! Who is calling: the admin token, minted namespace tokens (kept as hashes), the
//! namespaces, and the calls each namespace has in flight against its quota. What each
//! grant may do is core's [`fogline_core::access`].

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock};

use fogline_core::access::{
    self, constant_time_eq, parse_token, token_hash, token_text, Grant, Quota, Scope,
    DEFAULT_NAMESPACE,
};
use serde::{Deserialize, Serialize};

use crate::store::{Store, StoreError};

/// What is kept of a minted token: never its secret.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    /// SHA-256 of the secret, hex.
    pub hash: String,
    pub grant: Grant,
    pub created_at: String,
    /// What it is for, as whoever minted it said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A namespace of this member.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct NamespaceRecord {
    pub name: String,
    /// Anyone may invoke its functions (deploying still needs its token).
    pub public: bool,
    pub created_at: String,
}

/// Why a request has no grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    Missing,
    Wrong,
    /// A join token, which is for `fogline join` only.
    JoinOnly,
}

/// A call counted against its namespace's concurrency quota until dropped.
pub struct Slot(Arc<AtomicU32>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

pub struct Access {
    admin: String,
    tokens: RwLock<HashMap<String, TokenRecord>>,
    namespaces: RwLock<BTreeMap<String, NamespaceRecord>>,
    token_tree: sled::Tree,
    namespace_tree: sled::Tree,
    quotas: BTreeMap<String, Quota>,
    /// Whether any namespace has a concurrency quota: when none does, calls skip the count.
    counts_calls: bool,
    in_flight: RwLock<HashMap<String, Arc<AtomicU32>>>,
}

impl Access {
    pub fn open(
        admin: String,
        store: &Store,
        quotas: BTreeMap<String, Quota>,
    ) -> Result<Access, StoreError> {
        let token_tree = store.tree("tokens")?;
        let namespace_tree = store.tree("namespaces")?;
        let mut tokens = HashMap::new();
        for kv in token_tree.iter() {
            let (_, v) = kv?;
            let t: TokenRecord = serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt {
                tree: "tokens",
                problem: e.to_string(),
            })?;
            tokens.insert(t.id.clone(), t);
        }
        let mut namespaces = BTreeMap::new();
        for kv in namespace_tree.iter() {
            let (_, v) = kv?;
            let n: NamespaceRecord =
                serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt {
                    tree: "namespaces",
                    problem: e.to_string(),
                })?;
            namespaces.insert(n.name.clone(), n);
        }
        Ok(Access {
            admin,
            tokens: RwLock::new(tokens),
            namespaces: RwLock::new(namespaces),
            token_tree,
            namespace_tree,
            counts_calls: quotas.values().any(|q| q.concurrency.is_some()),
            quotas,
            in_flight: RwLock::default(),
        })
    }

    /// The admin token's text (kept in `DATA_DIR/admin.token` for the operator).
    pub fn admin_token(&self) -> &str {
        &self.admin
    }

    /// The grant of the token a request carries.
    pub fn authenticate(&self, given: Option<&str>) -> Result<Grant, AuthError> {
        let given = given.ok_or(AuthError::Missing)?;
        if constant_time_eq(given.as_bytes(), self.admin.as_bytes()) {
            return Ok(Grant::Admin);
        }
        let (id, secret) = parse_token(given).ok_or(AuthError::Wrong)?;
        let tokens = read(&self.tokens);
        let t = tokens.get(id).ok_or(AuthError::Wrong)?;
        let want = hex::decode(&t.hash).unwrap_or_default();
        if !constant_time_eq(&token_hash(secret), &want) {
            return Err(AuthError::Wrong);
        }
        match &t.grant {
            Grant::Join(_) => Err(AuthError::JoinOnly),
            g => Ok(g.clone()),
        }
    }

    /// Takes one use of a join token at `now` (unix seconds); the refusal says why.
    pub fn redeem(&self, token: &str, now: u64) -> Result<fogline_core::enroll::JoinGrant, String> {
        let (id, secret) = parse_token(token).ok_or("the join token is damaged")?;
        let mut tokens = write(&self.tokens);
        let t = tokens
            .get_mut(id)
            .ok_or("the join token is unknown or was revoked")?;
        let want = hex::decode(&t.hash).unwrap_or_default();
        if !constant_time_eq(&token_hash(secret), &want) {
            return Err("the join token's secret is wrong".into());
        }
        let Grant::Join(g) = &mut t.grant else {
            return Err("this token is not a join token".into());
        };
        g.check(now)?;
        g.uses_left -= 1;
        let granted = g.clone();
        let record = t.clone();
        drop(tokens);
        self.save(&self.token_tree, id, &record)?;
        Ok(granted)
    }

    /// Mints a token; its text is returned once and never kept.
    pub fn mint(
        &self,
        grant: Grant,
        note: Option<String>,
    ) -> Result<(TokenRecord, String), String> {
        if let Grant::Namespace { namespace, scopes } = &grant {
            if !self.exists(namespace) {
                return Err(format!("namespace {namespace:?} does not exist"));
            }
            if scopes.is_empty() {
                return Err("a namespace token needs at least one scope".into());
            }
        }
        let mut id = [0u8; 8];
        let mut secret = [0u8; 32];
        getrandom::fill(&mut id).map_err(|e| format!("no randomness for a token: {e}"))?;
        getrandom::fill(&mut secret).map_err(|e| format!("no randomness for a token: {e}"))?;
        let text = token_text(&id, &secret);
        let (id, secret) = parse_token(&text).ok_or("minted token has the wrong shape")?;
        let record = TokenRecord {
            id: id.to_string(),
            hash: hex::encode(token_hash(secret)),
            grant,
            created_at: now(),
            note,
        };
        self.save(&self.token_tree, id, &record)?;
        write(&self.tokens).insert(record.id.clone(), record.clone());
        Ok((record, text))
    }

    /// Every minted token (no secrets), oldest first.
    pub fn tokens(&self) -> Vec<TokenRecord> {
        let mut v: Vec<_> = read(&self.tokens).values().cloned().collect();
        v.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        v
    }

    /// Revokes a minted token at once; false when there is none of that id.
    pub fn revoke(&self, id: &str) -> Result<bool, String> {
        let gone = write(&self.tokens).remove(id).is_some();
        if gone {
            self.token_tree
                .remove(id)
                .and_then(|_| self.token_tree.flush().map(|_| ()))
                .map_err(|e| format!("store: {e}"))?;
        }
        Ok(gone)
    }

    /// Whether `ns` exists (the default always does).
    pub fn exists(&self, ns: &str) -> bool {
        ns == DEFAULT_NAMESPACE || read(&self.namespaces).contains_key(ns)
    }

    /// Whether anyone may invoke `ns`'s functions without a token.
    pub fn is_public(&self, ns: &str) -> bool {
        read(&self.namespaces).get(ns).is_some_and(|n| n.public)
    }

    /// Every namespace, the default first.
    pub fn namespaces(&self) -> Vec<NamespaceRecord> {
        let mut v = vec![NamespaceRecord {
            name: DEFAULT_NAMESPACE.into(),
            public: false,
            created_at: String::new(),
        }];
        v.extend(read(&self.namespaces).values().cloned());
        v
    }

    /// Creates a namespace; false when it exists already (then nothing changes).
    pub fn create_namespace(&self, name: &str, public: bool) -> Result<bool, String> {
        access::validate_namespace(name).map_err(|e| e.problem)?;
        if self.exists(name) {
            return Ok(false);
        }
        let record = NamespaceRecord {
            name: name.to_string(),
            public,
            created_at: now(),
        };
        self.save(&self.namespace_tree, name, &record)?;
        write(&self.namespaces).insert(name.to_string(), record);
        Ok(true)
    }

    /// The quota of `ns`, if any.
    pub fn quota(&self, ns: &str) -> Option<&Quota> {
        self.quotas.get(ns).or_else(|| self.quotas.get("*"))
    }

    /// Counts a call against `ns`'s concurrency quota; the refusal names the quota.
    pub fn admit_call(&self, ns: &str) -> Result<Option<Slot>, String> {
        if !self.counts_calls {
            return Ok(None);
        }
        let Some(max) = self.quota(ns).and_then(|q| q.concurrency) else {
            return Ok(None);
        };
        let counter = {
            let found = read(&self.in_flight).get(ns).cloned();
            match found {
                Some(c) => c,
                None => write(&self.in_flight)
                    .entry(ns.to_string())
                    .or_default()
                    .clone(),
            }
        };
        let now = counter.fetch_add(1, Ordering::AcqRel);
        let slot = Slot(counter);
        if now >= max {
            return Err(format!(
                "namespace {ns:?} is at its quota of {max} concurrent calls; retry shortly"
            ));
        }
        Ok(Some(slot))
    }

    fn save<T: Serialize>(&self, tree: &sled::Tree, key: &str, v: &T) -> Result<(), String> {
        let bytes = serde_json::to_vec(v).map_err(|e| e.to_string())?;
        tree.insert(key, bytes)
            .and_then(|_| tree.flush().map(|_| ()))
            .map_err(|e| format!("store: {e}"))
    }
}

/// The namespace token `fogline namespace create` mints: every scope of its namespace.
pub fn namespace_grant(ns: &str) -> Grant {
    Grant::Namespace {
        namespace: ns.to_string(),
        scopes: Scope::ALL.to_vec(),
    }
}

fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &std::path::Path, quotas: BTreeMap<String, Quota>) -> Access {
        // Reopened within the test: wait for the last handle's lock to go.
        let store = crate::store::reopen(&dir.join("store"));
        Access::open("a".repeat(48), &store, quotas).unwrap()
    }

    #[test]
    fn tokens_are_kept_hashed_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let text;
        {
            let a = open(dir.path(), BTreeMap::new());
            assert!(a.mint(namespace_grant("team-a"), None).is_err());
            assert!(a.create_namespace("team-a", false).unwrap());
            assert!(!a.create_namespace("team-a", true).unwrap());
            let (rec, t) = a
                .mint(namespace_grant("team-a"), Some("ci".into()))
                .unwrap();
            assert!(!rec.hash.contains(&t[21..]), "the secret is not stored");
            text = t;
            assert_eq!(a.authenticate(Some(&text)), Ok(namespace_grant("team-a")));
            assert_eq!(a.authenticate(Some(&"a".repeat(48))), Ok(Grant::Admin));
            assert_eq!(a.authenticate(None), Err(AuthError::Missing));
            // The token with its last character changed (to one it is not).
            let mut wrong = text.clone();
            let last = wrong.pop();
            wrong.push(if last == Some('0') { '1' } else { '0' });
            assert_eq!(a.authenticate(Some(&wrong)), Err(AuthError::Wrong));
        }
        let a = open(dir.path(), BTreeMap::new());
        assert!(a.exists("team-a"));
        assert_eq!(a.authenticate(Some(&text)), Ok(namespace_grant("team-a")));
        let id = a.tokens()[0].id.clone();
        assert!(a.revoke(&id).unwrap());
        assert_eq!(a.authenticate(Some(&text)), Err(AuthError::Wrong));
        drop(a);
        let a = open(dir.path(), BTreeMap::new());
        assert_eq!(a.authenticate(Some(&text)), Err(AuthError::Wrong));
    }

    #[test]
    fn concurrency_quota_counts_and_releases() {
        let dir = tempfile::tempdir().unwrap();
        let q = Quota {
            concurrency: Some(2),
            ..Quota::default()
        };
        let a = open(dir.path(), [("team-a".to_string(), q)].into());
        let s1 = a.admit_call("team-a").unwrap();
        let _s2 = a.admit_call("team-a").unwrap();
        let e = a.admit_call("team-a").err().unwrap();
        assert!(e.contains("quota of 2 concurrent calls"), "{e}");
        drop(s1);
        assert!(a.admit_call("team-a").unwrap().is_some());
        assert!(a.admit_call("other").unwrap().is_none());
    }
}
