//! Every file in configs/ loads; every file in configs/invalid/ fails with the message its
//! `# expect:` line names.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::Path;

use fogline_core::config::NodeConfig;
use fogline_core::stack::StackFile;

fn dir(rel: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

#[test]
fn every_example_config_loads() {
    let mut seen = 0;
    for entry in std::fs::read_dir(dir("configs")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        if name.starts_with("node")
            || ["bridge.toml", "device.toml", "router.toml"].contains(&name.as_str())
        {
            let cfg = NodeConfig::from_toml(&name, &text).unwrap_or_else(|e| panic!("{e}"));
            let tier = cfg.node.tier.as_str();
            match name.as_str() {
                "bridge.toml" => assert_eq!(tier, "cloud"),
                "device.toml" => {
                    assert_eq!(tier, "device");
                    assert!(cfg.router.as_ref().unwrap().device);
                }
                "router.toml" => {
                    let r = cfg.router.as_ref().unwrap();
                    assert!(!r.device);
                    assert!(!cfg.mqtt().unwrap().triggers.is_empty());
                    assert!(cfg.coap.listen.is_some());
                }
                _ => {
                    assert_eq!(tier, "edge");
                    assert!(cfg.router.is_none(), "{name}: nodes have no [router]");
                }
            }
        } else if name == "stack.toml" {
            let stack = StackFile::parse(&name, &text).unwrap_or_else(|e| panic!("{e}"));
            for (fname, f) in stack.functions {
                let wasm = path.parent().unwrap().join(f.wasm.unwrap());
                assert!(wasm.exists(), "{fname}: {} is missing", wasm.display());
            }
        } else {
            panic!("configs/{name}: no test knows what this file is; add it to tests/configs.rs");
        }
        seen += 1;
    }
    assert!(seen >= 3);
}

#[test]
fn invalid_configs_fail_with_the_expected_message() {
    let mut seen = 0;
    for entry in std::fs::read_dir(dir("configs/invalid")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        let expect = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{name} has no `# expect:` line"));
        let err = NodeConfig::from_toml(&name, &text)
            .expect_err(&name)
            .to_string();
        assert!(err.starts_with(&format!("{name}:")), "{err}");
        assert!(
            err.contains(expect),
            "{name}: expected {expect:?} in {err:?}"
        );
        seen += 1;
    }
    assert!(seen >= 5);
}

#[test]
fn the_systemd_unit_runs_the_node_with_its_config() {
    let unit = std::fs::read_to_string(dir("configs/fogline-node.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/fogline node --config /etc/fogline/node.toml"));
}

#[test]
fn the_packaged_config_and_unit_fit_together() {
    let text = std::fs::read_to_string(dir("packaging/deb/node.toml")).unwrap();
    let cfg = NodeConfig::from_toml("packaging/deb/node.toml", &text).unwrap();
    assert_eq!(
        cfg.node.data_dir,
        std::path::PathBuf::from("/var/lib/fogline")
    );
    assert!(!cfg.container.enabled, "no Docker socket unless granted");
    let unit = std::fs::read_to_string(dir("packaging/deb/fogline-node.service")).unwrap();
    for line in [
        "ExecStart=/usr/bin/fogline node --config /etc/fogline/node.toml",
        "User=fogline",
        "StateDirectory=fogline",
        "ProtectSystem=strict",
        "NoNewPrivileges=true",
    ] {
        assert!(unit.lines().any(|l| l == line), "the unit lacks {line}");
    }
}
