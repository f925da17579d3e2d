//! A mesh member's reports are bound to its certificate: a member holding a valid
//! certificate of its own (here started in-process through the library, gossiping as a real
//! member does) cannot take over another member's entry. Its proof is refused with the
//! reason, its forged report never changes the view, and both are counted.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use fogline_core::config::{MeshSection, Tier};
use fogline_core::mesh::LoadReport;
use fogline_node::mesh::{load_key, start_member, PingPace, Reporter};
use fogline_node::tls::{MeshIdentity, TlsDir};

/// Reports as `victim`, pointing callers at an address of its own choosing.
struct Impostor {
    victim: String,
}

impl Reporter for Impostor {
    fn report(&self, peer: &str, mesh: &str, site: &str, seq: u64) -> LoadReport {
        LoadReport {
            node: self.victim.clone(),
            peer: peer.to_string(),
            tier: Tier::Edge,
            site: site.to_string(),
            cores: 64,
            memory_bytes: 1 << 40,
            speed: 1.0,
            runtimes: vec![fogline_core::Runtime::Wasm],
            in_flight: 0,
            queued: 0,
            service_ms: vec![],
            warm: vec![],
            quic: Some("127.0.0.1:9".into()),
            http: None,
            mesh: Some(mesh.to_string()),
            cold_starts: 0,
            warm_starts: 0,
            seq: seq + 1_000_000_000_000,
        }
    }
}

fn row(n: &NodeProc, id: &str) -> serde_json::Value {
    mesh_json(n)["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("no {id} in the view"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_cannot_report_for_another() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pki = pki(d);
    let victim = member(d, &pki, "node", "edge-1", None, None);
    let seed = mesh_json(&victim)["self"].as_str().unwrap().to_string();
    let observer = member(d, &pki, "node", "edge-2", Some(&seed), None);
    wait_until("edge-2 sees edge-1", 15, || {
        alive(&observer).contains(&"edge-1".to_string())
    });
    let before = row(&observer, "edge-1");

    // A member of the cluster with its own valid certificate, gossiping as edge-1.
    let evil = issue(&pki, "evil", "node");
    let cfg = MeshSection {
        listen: Some("/ip4/127.0.0.1/tcp/0".into()),
        mdns: false,
        interval: Duration::from_millis(200),
        ..MeshSection::default()
    };
    let identity = MeshIdentity::new(&TlsDir::load(&evil).unwrap()).unwrap();
    let _impostor = start_member(
        Arc::new(Impostor {
            victim: "edge-1".into(),
        }),
        "evil",
        &cfg,
        load_key(&evil.join("mesh.key")).unwrap(),
        // Straight to both: it never reports as itself, so nobody would introduce it.
        &[
            seed.clone(),
            mesh_json(&observer)["self"].as_str().unwrap().to_string(),
        ],
        Some(identity),
        PingPace::Member,
    )
    .await
    .unwrap();

    // Refused and counted, at the observer; the victim's entry is untouched.
    let log = d.join("node.stderr");
    let _show = Show(log.clone());
    wait_until("edge-2 counts the forgeries", 15, || {
        let m = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(metrics(&observer))
        });
        m.lines()
            .find_map(|l| l.strip_prefix("fogline_mesh_forged_total "))
            .is_some_and(|v| v.trim().parse::<u64>().unwrap() >= 2)
    });
    std::thread::sleep(Duration::from_secs(1));
    let after = row(&observer, "edge-1");
    assert_eq!(after["peer"], before["peer"], "{after}");
    assert_eq!(after["address"], before["address"], "{after}");
    assert_eq!(after["state"], "alive");
    let log = std::fs::read_to_string(d.join("node.stderr")).unwrap();
    assert!(
        log.contains("refused a proof of identity for edge-1")
            && log.contains("its certificate names \"evil\", not \"edge-1\""),
        "{log}"
    );
    // Calls still go to the real edge-1: its QUIC address is its own, not 127.0.0.1:9.
    assert_ne!(after["address"], "127.0.0.1:9");
}

/// Prints the members' log if the test fails.
struct Show(std::path::PathBuf);

impl Drop for Show {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", std::fs::read_to_string(&self.0).unwrap_or_default());
        }
    }
}
