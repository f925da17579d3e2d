//! What the machine is: read once at start, from `/proc` where Linux has it.

/// The machine's size, as this member reports it to others.
#[derive(Debug, Clone, Copy)]
pub struct Machine {
    pub cores: u32,
    pub memory_bytes: u64,
    /// Speed against the reference machine ([`calibrate`]), advertised in load reports.
    pub speed: f32,
}

impl Machine {
    pub fn read() -> Machine {
        Machine {
            cores: std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1),
            memory_bytes: total_memory(),
            speed: calibrate(),
        }
    }
}

/// SHA-256 over this many bytes is the calibration run.
const CALIBRATION_BYTES: usize = 1 << 20;
/// What the reference machine takes for it, µs: one core of the 2-core machine Fogline's
/// README figures come from (`fogline status` shows each member's speed against it).
const REFERENCE_US: f64 = 550.0;

/// A short calibration run (a few ms): one core's speed at SHA-256, against the reference
/// machine. The best of three runs, so a busy moment does not make a member look slow.
pub fn calibrate() -> f32 {
    let data = vec![0x5Au8; CALIBRATION_BYTES];
    let best = (0..3)
        .map(|_| {
            let t = std::time::Instant::now();
            std::hint::black_box(ring::digest::digest(
                &ring::digest::SHA256,
                std::hint::black_box(&data),
            ));
            t.elapsed().as_secs_f64() * 1e6
        })
        .fold(f64::INFINITY, f64::min);
    (REFERENCE_US / best.max(1.0)).clamp(0.01, 100.0) as f32
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

/// The cgroup limits this process runs under (v2 first, then v1); none where none is set.
pub fn limits() -> fogline_core::sizing::Limits {
    use fogline_core::sizing::{cpu_limit, memory_limit, Limits};
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let machine = match total_memory() {
        0 => u64::MAX,
        m => m,
    };
    let memory = read("/sys/fs/cgroup/memory.max")
        .or_else(|| read("/sys/fs/cgroup/memory/memory.limit_in_bytes"))
        .and_then(|t| memory_limit(&t, machine));
    let cpus = match read("/sys/fs/cgroup/cpu.max") {
        Some(t) => cpu_limit(&t, None),
        None => read("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
            .and_then(|q| cpu_limit(&q, read("/sys/fs/cgroup/cpu/cpu.cfs_period_us").as_deref())),
    };
    Limits { memory, cpus }
}

#[cfg(test)]
mod calibration_tests {
    #[test]
    fn calibration_gives_a_finite_positive_speed() {
        let s = super::calibrate();
        assert!(s.is_finite() && s > 0.0, "{s}");
        println!("speed {s} against the reference");
    }
}
