//! The gossip mesh with real processes: convergence of 10 members, death and rejoin, a
//! member that stops saying goodbye and comes back, a member with the wrong cluster key
//! kept out, and a partition between two network namespaces that heals.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

fn member(dir: &Path, pki: &Path, name: &str, ip: &str, join: Option<&str>) -> NodeProc {
    let cfg = dir.join(format!("{name}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "version = 1\n[node]\nid = \"{name}\"\n[mesh]\nmdns = false\ninterval = \"500ms\"\n"
        ),
    )
    .unwrap();
    let tls = issue(pki, name, "node");
    let mesh = format!("/ip4/{ip}/tcp/0");
    let mut extra = vec!["--tls-dir", tls.to_str().unwrap(), "--mesh", mesh.as_str()];
    if let Some(j) = join {
        extra.extend(["--join", j]);
    }
    NodeProc::role(dir, "node", name, &cfg, &extra)
}

fn mesh_address(n: &NodeProc) -> String {
    mesh_json(n)["self"].as_str().unwrap().to_string()
}

fn view(n: &NodeProc) -> Vec<Value> {
    mesh_json(n)["members"].as_array().unwrap().clone()
}

fn states(n: &NodeProc) -> Vec<(String, String)> {
    id_states(&view(n))
}

/// Whether every member's view shows all of `nodes` alive.
fn every_view_shows_all_alive(nodes: &[NodeProc]) -> bool {
    nodes
        .iter()
        .all(|n| states(n).iter().filter(|(_, s)| s == "alive").count() == nodes.len())
}

/// (id, state) of each member of a `/v1/mesh` member list.
fn id_states(members: &[Value]) -> Vec<(String, String)> {
    members
        .iter()
        .map(|m| {
            (
                m["id"].as_str().unwrap().to_string(),
                m["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn ten_members_converge_see_a_death_and_a_rejoin() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let first = member(dir.path(), &pki, "m0", "127.0.0.1", None);
    let join = mesh_address(&first);
    let mut nodes = vec![first];
    for i in 1..10 {
        nodes.push(member(
            dir.path(),
            &pki,
            &format!("m{i}"),
            "127.0.0.1",
            Some(&join),
        ));
    }
    let took = wait_until(
        "10 members in every view, alive, with load and RTT",
        30,
        || {
            nodes.iter().all(|n| {
                let v = view(n);
                v.len() == 10
                    && v.iter()
                        .all(|m| m["state"] == "alive" && m["load"].is_number())
                    && v.iter()
                        .filter(|m| m["this"] == false)
                        .all(|m| m["rtt_ms"].is_number())
            })
        },
    );
    eprintln!("10 members converged (with RTTs) in {took:?}");

    // Each member counts its mesh bytes in /metrics, and they keep moving with the beats.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let metric = |n: &NodeProc, name: &str| -> u64 {
        let text = rt.block_on(metrics(n));
        let prefix = format!("{name} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{text}"))
    };
    let mesh_bytes = |n: &NodeProc| -> (u64, u64) {
        (
            metric(n, "fogline_mesh_sent_bytes_total"),
            metric(n, "fogline_mesh_received_bytes_total"),
        )
    };
    // Nine joined through m0 and found the rest through its introductions; each pair keeps
    // one connection (the smaller peer id dials; a second one is closed).
    wait_until(
        "9 mesh connections on every member, one per pair",
        10,
        || {
            let counts: Vec<u64> = nodes
                .iter()
                .map(|n| metric(n, "fogline_mesh_connections"))
                .collect();
            let settled = counts.iter().all(|c| *c == 9);
            if !settled {
                eprintln!("mesh connections per member, m0 to m9: {counts:?}");
            }
            settled
        },
    );
    let before = mesh_bytes(&nodes[2]);
    std::thread::sleep(Duration::from_millis(2500));
    let after = mesh_bytes(&nodes[2]);
    assert!(
        after.0 > before.0 && after.1 > before.1,
        "mesh byte counters did not move: {before:?} then {after:?}"
    );
    eprintln!(
        "m2's mesh traffic over 2.5 s: {} bytes sent, {} received",
        after.0 - before.0,
        after.1 - before.1
    );

    // Kill m5: every other member marks it dead.
    nodes[5].kill();
    let took = wait_until("m5 dead everywhere", 15, || {
        nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 5)
            .all(|(_, n)| states(n).contains(&("m5".into(), "dead".into())))
    });
    eprintln!("a killed member was marked dead everywhere in {took:?}");

    // Restart it on the same data folder: it rejoins and is alive everywhere again.
    nodes[5] = member(dir.path(), &pki, "m5", "127.0.0.1", Some(&join));
    wait_until("m5 alive everywhere again", 20, || {
        every_view_shows_all_alive(&nodes)
    });
    let out = run_ok(fogline().args([
        "--gateway",
        &nodes[3].url,
        "--token",
        &nodes[3].token,
        "mesh",
    ]));
    assert_eq!(out.lines().count(), 11, "{out}");
    assert!(out.lines().any(|l| l.starts_with("m3*")), "{out}");

    // Stop m7 (SIGTERM): it says goodbye, so every other member shows it `left` right
    // away, before its silence could have marked it dead; restarted, it is alive again.
    let exit = nodes[7].terminate();
    assert!(exit.success(), "m7 exited with {exit}");
    // Only a goodbye shows as `left` (silence shows as suspect, then dead).
    let took = wait_until("every other member shows m7 left", 5, || {
        nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 7)
            .all(|(_, n)| states(n).contains(&("m7".into(), "left".into())))
    });
    eprintln!("a stopped member was shown left everywhere {took:?} after it exited");
    nodes[7] = member(dir.path(), &pki, "m7", "127.0.0.1", Some(&join));
    wait_until("m7 alive everywhere after its restart", 20, || {
        every_view_shows_all_alive(&nodes)
    });
}

/// Each member joins through the one started before it, so all but the first two find the
/// rest only through introductions made by members that are not their join address.
#[test]
fn members_joining_in_a_chain_find_everyone() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let mut nodes = vec![member(dir.path(), &pki, "c0", "127.0.0.1", None)];
    for i in 1..5 {
        let join = mesh_address(&nodes[i - 1]);
        nodes.push(member(
            dir.path(),
            &pki,
            &format!("c{i}"),
            "127.0.0.1",
            Some(&join),
        ));
    }
    wait_until(
        "5 members chained by their join addresses all alive everywhere",
        20,
        || every_view_shows_all_alive(&nodes),
    );
}

#[test]
fn a_member_with_the_wrong_cluster_key_is_kept_out() {
    let dir = tempfile::tempdir().unwrap();
    let pki_a = pki(dir.path());
    let a = member(dir.path(), &pki_a, "a0", "127.0.0.1", None);
    let join = mesh_address(&a);
    let b = member(dir.path(), &pki_a, "a1", "127.0.0.1", Some(&join));
    let other = dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let pki_x = pki(&other);
    let intruder = member(&other, &pki_x, "x0", "127.0.0.1", Some(&join));
    wait_until("a0 and a1 see each other", 20, || {
        view(&a).len() == 2 && view(&b).len() == 2
    });
    std::thread::sleep(Duration::from_secs(3));
    for n in [&a, &b] {
        assert!(
            view(n).iter().all(|m| m["id"] != "x0"),
            "the intruder got in: {:?}",
            states(n)
        );
    }
    assert_eq!(
        states(&intruder),
        vec![("x0".to_string(), "alive".to_string())],
        "the intruder sees no one"
    );
}

/// Two "sites" in their own network namespaces, joined by a veth pair (10.N.0.1 and 10.N.0.2).
struct Sites {
    a: String,
    b: String,
    net: u8,
}

impl Sites {
    fn ip(args: &[&str]) -> bool {
        Command::new("ip")
            .args(args)
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// Creates the pair, or says why not: skipped with a message on a user's machine without
    /// root, a failure under CI=true.
    fn create(tag: &str, net: u8) -> Option<Sites> {
        let s = Sites {
            a: format!("fogline-{tag}-a"),
            b: format!("fogline-{tag}-b"),
            net,
        };
        s.destroy();
        let (va, vb) = (format!("fgl{tag}a"), format!("fgl{tag}b"));
        let (ipa, ipb) = (format!("{}/24", s.addr(1)), format!("{}/24", s.addr(2)));
        let ok = Self::ip(&["netns", "add", &s.a])
            && Self::ip(&["netns", "add", &s.b])
            && Self::ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb])
            && Self::ip(&["link", "set", &va, "netns", &s.a])
            && Self::ip(&["link", "set", &vb, "netns", &s.b])
            && Self::ip(&["-n", &s.a, "addr", "add", &ipa, "dev", &va])
            && Self::ip(&["-n", &s.b, "addr", "add", &ipb, "dev", &vb])
            && Self::ip(&["-n", &s.a, "link", "set", &va, "up", "multicast", "on"])
            && Self::ip(&["-n", &s.b, "link", "set", &vb, "up", "multicast", "on"])
            && Self::ip(&["-n", &s.a, "link", "set", "lo", "up"])
            && Self::ip(&["-n", &s.b, "link", "set", "lo", "up"]);
        if ok {
            return Some(s);
        }
        s.destroy();
        skip_without("network namespaces", "they need root and iproute2");
        None
    }

    fn addr(&self, host: u8) -> String {
        format!("10.{}.0.{host}", self.net)
    }

    /// Cuts the link both ways (blackhole routes keep each site's own traffic flowing).
    fn cut(&self, on: bool) {
        let verb = if on { "add" } else { "del" };
        assert!(Self::ip(&[
            "-n",
            &self.a,
            "route",
            verb,
            "blackhole",
            &format!("{}/32", self.addr(2))
        ]));
        assert!(Self::ip(&[
            "-n",
            &self.b,
            "route",
            verb,
            "blackhole",
            &format!("{}/32", self.addr(1))
        ]));
    }

    fn destroy(&self) {
        let _ = Command::new("ip").args(["netns", "del", &self.a]).output();
        let _ = Command::new("ip").args(["netns", "del", &self.b]).output();
    }
}

impl Drop for Sites {
    fn drop(&mut self) {
        self.destroy();
    }
}

/// Runs `fogline` inside a namespace.
fn in_ns(ns: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).arg(bin());
    c
}

fn ns_member(
    dir: &Path,
    pki: &Path,
    ns: &str,
    name: &str,
    ip: &str,
    join: Option<&str>,
    mdns: bool,
) -> NodeProc {
    let cfg = dir.join(format!("{name}.toml"));
    std::fs::write(
        &cfg,
        format!("version = 1\n[node]\nid = \"{name}\"\n[mesh]\nmdns = {mdns}\ninterval = \"500ms\"\nsite = \"{ns}\"\n"),
    )
    .unwrap();
    let tls = issue(pki, name, "node");
    let data = dir.join(name);
    let mut cmd = in_ns(ns);
    cmd.current_dir(dir)
        .args(["node", "--config"])
        .arg(&cfg)
        .arg("--data-dir")
        .arg(&data)
        .args(["--http", "127.0.0.1:0", "--tls-dir"])
        .arg(&tls)
        .args(["--mesh", &format!("/ip4/{ip}/tcp/0")]);
    if let Some(j) = join {
        cmd.args(["--join", j]);
    }
    NodeProc::spawn_cmd(cmd, data, dir)
}

fn ns_view(ns: &str, n: &NodeProc) -> Vec<(String, String)> {
    let out = in_ns(ns)
        .args(["--gateway", &n.url, "--token", &n.token, "mesh", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    id_states(v["members"].as_array().unwrap())
}

#[test]
fn a_partition_between_two_sites_is_survived_and_heals() {
    let Some(sites) = Sites::create("p", 213) else {
        return;
    };
    let (sa, sb) = (sites.a.as_str(), sites.b.as_str());
    let (ipa, ipb) = (sites.addr(1), sites.addr(2));
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let a1 = ns_member(dir.path(), &pki, sa, "a1", &ipa, None, false);
    let join = {
        let out = in_ns(sa)
            .args(["--gateway", &a1.url, "--token", &a1.token, "mesh", "--json"])
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["self"].as_str().unwrap().to_string()
    };
    let a2 = ns_member(dir.path(), &pki, sa, "a2", &ipa, Some(&join), false);
    let b1 = ns_member(dir.path(), &pki, sb, "b1", &ipb, Some(&join), false);
    let b2 = ns_member(dir.path(), &pki, sb, "b2", &ipb, Some(&join), false);
    let all = [(sa, &a1), (sa, &a2), (sb, &b1), (sb, &b2)];
    let alive = |ns: &str, n: &NodeProc, who: &[&str]| {
        let v = ns_view(ns, n);
        who.iter()
            .all(|w| v.contains(&(w.to_string(), "alive".to_string())))
    };
    wait_until("4 members across two sites", 30, || {
        all.iter()
            .all(|(ns, n)| alive(ns, n, &["a1", "a2", "b1", "b2"]))
    });

    sites.cut(true);
    wait_until(
        "each site marks the other dead and itself alive",
        20,
        || {
            all.iter().all(|(ns, n)| {
                let v = ns_view(ns, n);
                let (mine, theirs) = if *ns == sa {
                    (["a1", "a2"], ["b1", "b2"])
                } else {
                    (["b1", "b2"], ["a1", "a2"])
                };
                mine.iter()
                    .all(|m| v.contains(&(m.to_string(), "alive".into())))
                    && theirs
                        .iter()
                        .all(|t| v.contains(&(t.to_string(), "dead".into())))
            })
        },
    );
    // Each site keeps serving its own invocations.
    for (ns, n) in [(sa, &a2), (sb, &b1)] {
        run_ok(
            in_ns(ns)
                .args([
                    "--gateway",
                    &n.url,
                    "--token",
                    &n.token,
                    "deploy",
                    "hello",
                    "--wasm",
                ])
                .arg(example("hello/hello.wasm")),
        );
        assert_eq!(
            run_ok(in_ns(ns).args(["--gateway", &n.url, "invoke", "hello", "--data", ns])),
            format!("hello, {ns}")
        );
    }

    sites.cut(false);
    let took = wait_until("the sites reconverge after the cut heals", 30, || {
        all.iter()
            .all(|(ns, n)| alive(ns, n, &["a1", "a2", "b1", "b2"]))
    });
    eprintln!("reconverged {took:?} after the cut healed");
}

#[test]
fn members_on_one_lan_find_each_other_without_join() {
    let Some(lan) = Sites::create("l", 214) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let x = ns_member(dir.path(), &pki, &lan.a, "x", &lan.addr(1), None, true);
    let y = ns_member(dir.path(), &pki, &lan.b, "y", &lan.addr(2), None, true);
    let took = wait_until("x and y find each other by mDNS", 30, || {
        let both = [
            ("x".to_string(), "alive".to_string()),
            ("y".to_string(), "alive".to_string()),
        ];
        both.iter().all(|m| ns_view(&lan.a, &x).contains(m))
            && both.iter().all(|m| ns_view(&lan.b, &y).contains(m))
    });
    eprintln!("found each other by mDNS in {took:?}");
}
