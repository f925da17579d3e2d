//! A link that tests can cut: a network namespace and a veth pair (needs root and
//! iproute2), and commands moved onto it.

use std::process::Command;

/// A network namespace joined to the host by a veth pair (host side `host_ip`, namespace
/// side `ns_ip`, a /24 of their own); removed on drop. `set(false)` cuts the link as a
/// cable pulled out would: packets go nowhere, nothing is told.
pub struct Link {
    pub ns: String,
    host_if: String,
    pub host_ip: String,
    pub ns_ip: String,
}

pub fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Link {
    /// A link named after `tag` (a few letters, distinct per test binary) and this
    /// process, so test binaries running at once do not meet.
    pub fn new(tag: &str, subnet: u8) -> Result<Link, String> {
        let n = std::process::id() % 200 + 20;
        let l = Link {
            ns: format!("fl-{tag}-{n}"),
            host_if: format!("fl-{tag}{n}h"),
            host_ip: format!("10.{subnet}.{n}.1"),
            ns_ip: format!("10.{subnet}.{n}.2"),
        };
        let ns_if = format!("fl-{tag}{n}n");
        let _ = ip(&["netns", "del", &l.ns]);
        let _ = ip(&["link", "del", &l.host_if]);
        let ok = ip(&["netns", "add", &l.ns])
            && ip(&[
                "link", "add", &l.host_if, "type", "veth", "peer", "name", &ns_if,
            ])
            && ip(&["link", "set", &ns_if, "netns", &l.ns])
            && ip(&[
                "addr",
                "add",
                &format!("{}/24", l.host_ip),
                "dev",
                &l.host_if,
            ])
            && ip(&["link", "set", &l.host_if, "up"])
            && ip(&[
                "-n",
                &l.ns,
                "addr",
                "add",
                &format!("{}/24", l.ns_ip),
                "dev",
                &ns_if,
            ])
            && ip(&["-n", &l.ns, "link", "set", &ns_if, "up"])
            && ip(&["-n", &l.ns, "link", "set", "lo", "up"]);
        if ok {
            Ok(l)
        } else {
            Err("cannot make a network namespace and a veth pair (needs root and iproute2)".into())
        }
    }

    pub fn set(&self, up: bool) {
        assert!(ip(&[
            "link",
            "set",
            &self.host_if,
            if up { "up" } else { "down" }
        ]));
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.host_if]);
        let _ = ip(&["netns", "del", &self.ns]);
    }
}

/// `cmd` with its loopback addresses replaced by `addr`, run in network namespace `ns`
/// when given.
pub fn rebind(cmd: Command, addr: &str, ns: Option<&str>) -> Command {
    let args: Vec<String> = cmd
        .get_args()
        .map(|a| a.to_string_lossy().replace("127.0.0.1", addr))
        .collect();
    let mut out = match ns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/var/run/netns/{ns}"))
                .arg(cmd.get_program());
            c
        }
        None => Command::new(cmd.get_program()),
    };
    out.args(args);
    if let Some(d) = cmd.get_current_dir() {
        out.current_dir(d);
    }
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => out.env(k, v),
            None => out.env_remove(k),
        };
    }
    out
}
