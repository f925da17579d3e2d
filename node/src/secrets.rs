//! Secrets, as OpenFaaS has them: named values of a namespace that functions read as files
//! at `/var/openfaas/secrets/NAME`.
//!
//! At rest they are sealed (ChaCha20-Poly1305, the record's name as associated data, so a
//! value moved to another name does not open) under a key kept outside the store
//! (`secrets.key_file`, default `DATA_DIR/secrets.key`, owner-only). For its sandbox, each
//! function that names secrets gets a folder of its own on a memory-backed filesystem
//! holding only those ([`Secrets::mount`]); Wasm functions see it read-only through a
//! preopened directory, containers through a read-only bind mount. Values never appear in
//! listings, logs or placements.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use fogline_core::config::NodeConfig;
use fogline_core::manifest::validate_secret_name;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};

use crate::store::{Store, StoreError};

/// Where functions find their secrets.
pub const GUEST_DIR: &str = "/var/openfaas/secrets";

/// Largest secret value (Kubernetes' limit).
pub const MAX_VALUE: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("secret {name:?} does not exist in namespace {namespace:?}")]
    NotFound { namespace: String, name: String },
    #[error("secret {name:?} exists already in namespace {namespace:?}; update it with PUT")]
    Exists { namespace: String, name: String },
    #[error("{0}")]
    Invalid(String),
    #[error("secret {0:?} cannot be opened: it was sealed under another key, or damaged")]
    Sealed(String),
    #[error("secrets folder: {0}")]
    Io(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct Secrets {
    tree: sled::Tree,
    key: LessSafeKey,
    root: PathBuf,
}

/// The memory-backed folder this member lays secrets out in: `secrets.mount_dir`, else
/// under `/dev/shm` (or `$XDG_RUNTIME_DIR`), one folder per data folder so members
/// sharing a host never share one.
pub fn mount_root(config: &NodeConfig) -> PathBuf {
    if let Some(d) = &config.secrets.mount_dir {
        return d.clone();
    }
    let data = std::fs::canonicalize(&config.node.data_dir)
        .unwrap_or_else(|_| config.node.data_dir.clone());
    let tag = &fogline_core::Digest::of(data.as_os_str().as_encoded_bytes()).to_string()[7..19];
    let uid = user_id();
    let base = [PathBuf::from("/dev/shm")]
        .into_iter()
        .chain(std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from))
        .find(|p| p.is_dir())
        .unwrap_or_else(|| config.node.data_dir.join("run"));
    base.join(format!("fogline-{uid}")).join(tag)
}

/// The folder of function `key`'s secrets.
pub fn function_dir(root: &Path, key: &str) -> PathBuf {
    root.join(key)
}

#[cfg(unix)]
fn user_id() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map_or(0, |m| m.uid())
}

#[cfg(not(unix))]
fn user_id() -> u32 {
    0
}

impl Secrets {
    pub fn open(config: &NodeConfig, store: &Store) -> anyhow::Result<Secrets> {
        let key_file = config
            .secrets
            .key_file
            .clone()
            .unwrap_or_else(|| config.node.data_dir.join("secrets.key"));
        let (text, _) = crate::token::load_or_create_with(&key_file, || {
            let mut raw = [0u8; 32];
            getrandom::fill(&mut raw)
                .map_err(|e| anyhow::anyhow!("no randomness for the secrets key: {e}"))?;
            Ok(hex::encode(raw))
        })?;
        let raw = hex::decode(text.trim())
            .ok()
            .filter(|k| k.len() == 32)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "{} is damaged (not 64 hex digits); with it the secrets are lost",
                    key_file.display()
                )
            })?;
        let key = LessSafeKey::new(
            UnboundKey::new(&CHACHA20_POLY1305, &raw)
                .map_err(|_| anyhow::anyhow!("the secrets key is unusable"))?,
        );
        let root = mount_root(config);
        // What a crash left is laid out again from the store, function by function.
        clear(&root);
        make_private_dir(&root).map_err(|e| {
            anyhow::anyhow!(
                "cannot make the secrets folder {} (set secrets.mount_dir): {e}",
                root.display()
            )
        })?;
        Ok(Secrets {
            tree: store.tree("secrets")?,
            key,
            root,
        })
    }

    /// Creates (`create`) or replaces a secret.
    pub fn put(&self, ns: &str, name: &str, value: &[u8], create: bool) -> Result<(), SecretError> {
        let exists = self
            .tree
            .contains_key(record(ns, name))
            .map_err(StoreError::from)?;
        match (create, exists) {
            (true, true) => Err(SecretError::Exists {
                namespace: ns.into(),
                name: name.into(),
            }),
            (false, false) => Err(not_found(ns, name)),
            _ => self.set(ns, name, value),
        }
    }

    /// Stores a secret, whether or not it exists (values a router sends with a function).
    pub fn set(&self, ns: &str, name: &str, value: &[u8]) -> Result<(), SecretError> {
        validate_secret_name(name).map_err(|e| SecretError::Invalid(e.problem))?;
        if value.len() > MAX_VALUE {
            return Err(SecretError::Invalid(format!(
                "secret {name:?} is {} bytes, more than the limit of {MAX_VALUE}",
                value.len()
            )));
        }
        let id = record(ns, name);
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|e| SecretError::Io(format!("no randomness: {e}")))?;
        let mut sealed = value.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(id.as_bytes()),
                &mut sealed,
            )
            .map_err(|_| SecretError::Io("sealing failed".into()))?;
        let mut stored = nonce.to_vec();
        stored.extend_from_slice(&sealed);
        self.tree.insert(&id, stored).map_err(StoreError::from)?;
        self.tree.flush().map_err(StoreError::from)?;
        Ok(())
    }

    /// A secret's value.
    pub fn get(&self, ns: &str, name: &str) -> Result<Vec<u8>, SecretError> {
        let id = record(ns, name);
        let stored = self
            .tree
            .get(&id)
            .map_err(StoreError::from)?
            .ok_or_else(|| not_found(ns, name))?;
        if stored.len() < NONCE_LEN {
            return Err(SecretError::Sealed(id));
        }
        let (nonce, sealed) = stored.split_at(NONCE_LEN);
        let nonce =
            Nonce::try_assume_unique_for_key(nonce).map_err(|_| SecretError::Sealed(id.clone()))?;
        let mut buf = sealed.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(id.as_bytes()), &mut buf)
            .map_err(|_| SecretError::Sealed(id.clone()))?;
        Ok(plain.to_vec())
    }

    /// Removes a secret; false when there was none.
    pub fn delete(&self, ns: &str, name: &str) -> Result<bool, SecretError> {
        let gone = self
            .tree
            .remove(record(ns, name))
            .map_err(StoreError::from)?
            .is_some();
        self.tree.flush().map_err(StoreError::from)?;
        Ok(gone)
    }

    /// The names of a namespace's secrets.
    pub fn names(&self, ns: &str) -> Result<Vec<String>, SecretError> {
        let prefix = format!("{ns}/");
        let mut out = Vec::new();
        for kv in self.tree.scan_prefix(prefix.as_bytes()) {
            let (k, _) = kv.map_err(StoreError::from)?;
            if let Some(name) = std::str::from_utf8(&k)
                .ok()
                .and_then(|k| k.strip_prefix(&prefix))
            {
                out.push(name.to_string());
            }
        }
        Ok(out)
    }

    /// Lays out the secrets function `key` names in its own folder (replacing what was
    /// there); refused when one does not exist.
    pub fn mount(&self, key: &str, names: &[String]) -> Result<(), SecretError> {
        let ns = fogline_core::access::split(key).1;
        let values: BTreeMap<&str, Vec<u8>> = names
            .iter()
            .map(|n| self.get(ns, n).map(|v| (n.as_str(), v)))
            .collect::<Result<_, _>>()?;
        let dir = function_dir(&self.root, key);
        let io = |e: std::io::Error| SecretError::Io(format!("{}: {e}", dir.display()));
        // The folder itself stays (a running container binds it); its files are replaced.
        if dir.is_dir() {
            set_mode(&dir, 0o755).map_err(io)?;
            for e in std::fs::read_dir(&dir).map_err(io)?.flatten() {
                let stale = !values.contains_key(e.file_name().to_string_lossy().as_ref());
                if stale {
                    std::fs::remove_file(e.path()).map_err(io)?;
                }
            }
        }
        std::fs::create_dir_all(&dir).map_err(io)?;
        for (name, value) in values {
            write_file(&dir.join(name), &value).map_err(io)?;
        }
        set_mode(&dir, 0o555).map_err(io)?;
        Ok(())
    }

    /// Removes function `key`'s folder.
    pub fn unmount(&self, key: &str) {
        let dir = function_dir(&self.root, key);
        let _ = set_mode(&dir, 0o755);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Removes every function's folder (at stop: secrets do not outlive the member in memory).
    pub fn unmount_all(&self) {
        clear(&self.root);
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}

/// Removes `root` and the function folders in it (made read-only when laid out).
fn clear(root: &Path) {
    if let Ok(entries) = std::fs::read_dir(root) {
        for e in entries.flatten() {
            let _ = set_mode(&e.path(), 0o755);
        }
    }
    let _ = std::fs::remove_dir_all(root);
}

fn record(ns: &str, name: &str) -> String {
    format!("{ns}/{name}")
}

fn not_found(ns: &str, name: &str) -> SecretError {
    SecretError::NotFound {
        namespace: ns.into(),
        name: name.into(),
    }
}

#[cfg(unix)]
fn make_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if let Some(parent) = dir.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)?;
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    set_mode(dir, 0o700)
}

#[cfg(not(unix))]
fn make_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

/// Readable by the sandbox's user (containers run as nobody); the member's private
/// folder above keeps other users of the host out.
#[cfg(unix)]
fn write_file(path: &Path, value: &[u8]) -> std::io::Result<()> {
    // Written beside and renamed over: a reader sees the old value or the new, whole.
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    // Secret names never start with '.', so this cannot be one.
    let tmp = path.with_file_name(format!(".{name}.new"));
    std::fs::write(&tmp, value)?;
    set_mode(&tmp, 0o444)?;
    std::fs::rename(tmp, path)
}

#[cfg(not(unix))]
fn write_file(path: &Path, value: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, value)
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_: &Path, _: u32) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path) -> (Secrets, Store) {
        let mut cfg = NodeConfig::local(dir.to_path_buf(), "127.0.0.1:0".parse().unwrap());
        cfg.secrets.mount_dir = Some(dir.join("mnt"));
        let store = crate::store::reopen(&dir.join("store"));
        (Secrets::open(&cfg, &store).unwrap(), store)
    }

    #[test]
    fn sealed_at_rest_and_laid_out_per_function() {
        let dir = tempfile::tempdir().unwrap();
        let (s, store) = open(dir.path());
        s.put("team-a", "db-password", b"hunter2-very-secret", true)
            .unwrap();
        assert!(matches!(
            s.put("team-a", "db-password", b"x", true),
            Err(SecretError::Exists { .. })
        ));
        assert!(matches!(
            s.put("team-a", "nope", b"x", false),
            Err(SecretError::NotFound { .. })
        ));
        assert!(s.put("team-a", "../x", b"x", true).is_err());
        s.put("team-a", "api-key", b"k", true).unwrap();
        s.put("team-b", "other", b"o", true).unwrap();
        assert_eq!(s.names("team-a").unwrap(), ["api-key", "db-password"]);
        // Sealed: the value is nowhere in the store's tree.
        let raw = store
            .tree("secrets")
            .unwrap()
            .get("team-a/db-password")
            .unwrap()
            .unwrap();
        assert!(!raw.windows(7).any(|w| w == b"hunter2"));
        // A record moved to another name does not open.
        store
            .tree("secrets")
            .unwrap()
            .insert("team-a/moved", raw)
            .unwrap();
        assert!(matches!(
            s.get("team-a", "moved"),
            Err(SecretError::Sealed(_))
        ));

        s.mount("f.team-a", &["db-password".into()]).unwrap();
        let fdir = function_dir(s.root(), "f.team-a");
        assert_eq!(
            std::fs::read(fdir.join("db-password")).unwrap(),
            b"hunter2-very-secret"
        );
        assert!(!fdir.join("api-key").exists(), "only its own secrets");
        // Another namespace's secret is not found from here.
        assert!(matches!(
            s.mount("g.team-a", &["other".into()]),
            Err(SecretError::NotFound { .. })
        ));
        s.unmount("f.team-a");
        assert!(!fdir.exists());
        assert!(s.delete("team-a", "api-key").unwrap());
        assert!(!s.delete("team-a", "api-key").unwrap());
        s.unmount_all();
        assert!(!s.root().exists());
    }
}
