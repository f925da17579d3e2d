//! A member sizes itself to the machine it was given: Wasm instance slots from the memory
//! it may use (a cgroup limit, as `docker run --memory` or a systemd `MemoryMax=` sets),
//! async workers from the CPUs it may use (a CPU quota). Pure: the node reads the limits.

use crate::config::NodeConfig;
use crate::units::ByteSize;

/// Memory kept for the agent itself (runtime, store cache, buffers) before Wasm slots.
pub const AGENT_RESERVE: u64 = 64 << 20;

/// What the process may use, where a limit is set.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    pub memory: Option<u64>,
    pub cpus: Option<f64>,
}

/// Fits `config` to `limits`; returns what it chose, to say at start (none when nothing
/// limits it).
pub fn fit(config: &mut NodeConfig, limits: Limits) -> Option<String> {
    let mut said = Vec::new();
    if let Some(mem) = limits.memory {
        let usable = mem.saturating_sub(AGENT_RESERVE);
        // Room for a few instances: the largest memory a function may ask for comes down
        // (not below a function's default, 64 MiB) before the slots do.
        let floor = ByteSize::mib(64).bytes();
        let per = config
            .wasm
            .max_memory
            .bytes()
            .min((usable / 4).max(floor) / (1 << 20) * (1 << 20))
            .max(1);
        config.wasm.max_memory = ByteSize(per);
        let slots = (usable / per).max(1);
        let slots = u32::try_from(slots).unwrap_or(u32::MAX);
        if slots < config.wasm.instances {
            config.wasm.instances = slots;
        }
        said.push(format!(
            "{} of memory: {} Wasm instances of at most {}",
            ByteSize(mem),
            config.wasm.instances,
            config.wasm.max_memory
        ));
    }
    if let Some(cpus) = limits.cpus {
        let workers = (cpus.ceil() as u32).max(1);
        if workers < config.async_calls.workers {
            config.async_calls.workers = workers;
        }
        said.push(format!(
            "{cpus} CPU: {} async workers",
            config.async_calls.workers
        ));
    }
    (!said.is_empty()).then(|| format!("sized for a limit of {}", said.join("; ")))
}

/// Reads a cgroup v2 `memory.max` or v1 `memory.limit_in_bytes` value (no limit: none).
pub fn memory_limit(text: &str, machine: u64) -> Option<u64> {
    let v: u64 = text.trim().parse().ok()?;
    // v1 writes "no limit" as a huge number; a limit above the machine limits nothing.
    (v < machine).then_some(v)
}

/// Reads a CPU quota: v2 `cpu.max` ("QUOTA PERIOD" or "max PERIOD"), or v1's quota and
/// period files (quota -1: none).
pub fn cpu_limit(quota: &str, period: Option<&str>) -> Option<f64> {
    let mut parts = quota.split_whitespace();
    let q: f64 = parts.next()?.parse().ok()?;
    let p: f64 = match period {
        Some(p) => p.trim().parse().ok()?,
        None => parts.next()?.parse().ok()?,
    };
    (q > 0.0 && p > 0.0).then(|| q / p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_board_gets_what_fits() {
        let mut c = NodeConfig::local("/tmp/x".into(), "127.0.0.1:0".parse().unwrap());
        let said = fit(
            &mut c,
            Limits {
                memory: Some(256 << 20),
                cpus: Some(1.0),
            },
        )
        .unwrap();
        assert_eq!(c.wasm.instances, 3);
        assert_eq!(
            c.wasm.max_memory,
            ByteSize::mib(64),
            "down from the default"
        );
        assert_eq!(c.async_calls.workers, 1);
        assert!(said.contains("3 Wasm instances"), "{said}");
        // Nothing limits a big machine: the config stands.
        let mut big = NodeConfig::local("/tmp/x".into(), "127.0.0.1:0".parse().unwrap());
        let before = (big.wasm.instances, big.async_calls.workers);
        assert!(fit(&mut big, Limits::default()).is_none());
        assert_eq!((big.wasm.instances, big.async_calls.workers), before);
    }

    #[test]
    fn cgroup_values_parse_in_both_versions() {
        assert_eq!(memory_limit("268435456\n", 24 << 30), Some(256 << 20));
        assert_eq!(memory_limit("9223372036854771712", 24 << 30), None);
        assert_eq!(memory_limit("max", 24 << 30), None);
        assert_eq!(cpu_limit("100000 100000", None), Some(1.0));
        assert_eq!(cpu_limit("max 100000", None), None);
        assert_eq!(cpu_limit("-1", Some("100000")), None);
        assert_eq!(cpu_limit("50000", Some("100000")), Some(0.5));
    }
}
