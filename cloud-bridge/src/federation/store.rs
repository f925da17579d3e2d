//! What a bridge keeps of its peerings, durably: one JSON file in its data folder,
//! replaced atomically (written aside, synced, renamed) on every change, so a restart of
//! either side finds its peerings as they were.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What a peer is to this cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// We may send it calls (we joined its invite).
    Provider,
    /// It may send us calls (it joined ours).
    Consumer,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Provider => "provider",
            Direction::Consumer => "consumer",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerRec {
    /// The name this side knows it by.
    pub name: String,
    /// The name it calls itself (what a provider calls this side is this side's cluster
    /// name).
    pub remote: String,
    pub direction: Direction,
    /// A provider's federation listener (`HOST:PORT`).
    pub addr: Option<String>,
    /// Its CA certificate, DER, hex.
    pub ca: String,
    /// Share of the provider's free capacity offered, percent.
    pub share_pct: u8,
    /// Since when (ms since the Unix epoch).
    pub since_ms: u64,
    /// A site of this same cluster (same CA): its functions keep their keys here.
    #[serde(default)]
    pub site: bool,
    /// The member its certificate must name (a site's bridge: every member of the cluster
    /// holds a certificate of this CA).
    #[serde(default)]
    pub bridge: Option<String>,
    /// When a consumer left (ms since the Unix epoch): kept, shown `left`, until this
    /// side's admin removes it (`leave` again) or it joins anew.
    #[serde(default)]
    pub left_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InviteRec {
    /// SHA-256 of the secret, hex: the secret itself is shown once and never kept.
    pub secret_sha256: String,
    pub expires_ms: u64,
    pub share_pct: u8,
    /// Used by this peer (one-time).
    pub used_by: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Saved {
    pub peers: Vec<PeerRec>,
    pub invites: Vec<InviteRec>,
    /// Namespace → the providers it may be offloaded to.
    pub offload: BTreeMap<String, Vec<String>>,
    /// Consumer → its namespaces this provider does not take.
    #[serde(default)]
    pub refused: BTreeMap<String, Vec<String>>,
}

impl Saved {
    pub fn peer(&self, name: &str) -> Option<&PeerRec> {
        self.peers.iter().find(|p| p.name == name)
    }

    /// Open invites: unused and not expired at `now_ms`.
    pub fn open_invites(&self, now_ms: u64) -> usize {
        self.invites
            .iter()
            .filter(|i| i.used_by.is_none() && i.expires_ms > now_ms)
            .count()
    }
}

pub struct Store {
    path: PathBuf,
}

impl Store {
    pub fn new(data_dir: &Path) -> Store {
        Store {
            path: data_dir.join("federation.json"),
        }
    }

    pub fn load(&self) -> anyhow::Result<Saved> {
        match std::fs::read(&self.path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                anyhow::anyhow!(
                    "{}: not a federation state file ({e}); move it aside to start without peers",
                    self.path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Saved::default()),
            Err(e) => Err(anyhow::anyhow!("{}: {e}", self.path.display())),
        }
    }

    pub fn save(&self, s: &Saved) -> std::io::Result<()> {
        use std::io::Write;
        let tmp = self.path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(s).map_err(std::io::Error::other)?;
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            // The rename itself is durable once the folder is synced.
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_survives_a_restart_and_a_bad_file_says_so() {
        let d = tempfile::tempdir().unwrap();
        let st = Store::new(d.path());
        assert!(st.load().unwrap().peers.is_empty());
        let mut s = Saved::default();
        s.peers.push(PeerRec {
            name: "b".into(),
            remote: "b".into(),
            direction: Direction::Provider,
            addr: Some("127.0.0.1:1".into()),
            ca: "00".into(),
            share_pct: 90,
            since_ms: 1,
            site: false,
            bridge: None,
            left_ms: None,
        });
        s.offload.insert("openfaas-fn".into(), vec!["b".into()]);
        st.save(&s).unwrap();
        let back = Store::new(d.path()).load().unwrap();
        assert_eq!(back.peer("b").unwrap().share_pct, 90);
        assert_eq!(back.offload["openfaas-fn"], vec!["b".to_string()]);
        std::fs::write(d.path().join("federation.json"), b"{oops").unwrap();
        let e = st.load().unwrap_err().to_string();
        assert!(e.contains("not a federation state file"), "{e}");
    }
}
