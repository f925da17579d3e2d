//! What the machine is: read once at start, from `/proc` where Linux has it.

/// The machine's size, as this member reports it to others.
#[derive(Debug, Clone, Copy)]
pub struct Machine {
    pub cores: u32,
    pub memory_bytes: u64,
}

impl Machine {
    pub fn read() -> Machine {
        Machine {
            cores: std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1),
            memory_bytes: total_memory(),
        }
    }
}

/// Total memory in bytes (0 when unknown).
pub fn total_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// The host's name, the default member id when neither config nor certificate names one.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "node".to_string())
}
