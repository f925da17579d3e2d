//! Recent log lines of each function (its stderr and what the node says about its calls),
//! kept in memory in a bounded ring per function and served by `GET /system/logs`.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::SystemTime;

use fogline_core::openfaas::LogEntry;

pub struct Logs {
    per_function: usize,
    rings: Mutex<HashMap<String, VecDeque<LogEntry>>>,
}

impl Logs {
    pub fn new(per_function: usize) -> Self {
        Logs {
            per_function,
            rings: Mutex::new(HashMap::new()),
        }
    }

    /// Appends each line of `text` (empty lines dropped; long lines cut at 4 KiB).
    pub fn push(&self, function: &str, instance: &str, text: &str) {
        let timestamp = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        let mut rings = self.rings.lock().unwrap_or_else(|p| p.into_inner());
        let ring = rings.entry(function.to_string()).or_default();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let mut line = line.to_string();
            if line.len() > 4096 {
                let mut cut = 4096;
                while !line.is_char_boundary(cut) {
                    cut -= 1;
                }
                line.truncate(cut);
                line.push('…');
            }
            if ring.len() == self.per_function {
                ring.pop_front();
            }
            let (name, namespace) = fogline_core::access::split(function);
            ring.push_back(LogEntry {
                name: name.to_string(),
                namespace: namespace.to_string(),
                instance: instance.to_string(),
                timestamp: timestamp.clone(),
                text: line,
            });
        }
    }

    /// The last `n` lines (all when `n` is 0 or negative).
    pub fn tail(&self, function: &str, n: i64) -> Vec<LogEntry> {
        let rings = self.rings.lock().unwrap_or_else(|p| p.into_inner());
        let Some(ring) = rings.get(function) else {
            return Vec::new();
        };
        let skip = if n > 0 {
            ring.len().saturating_sub(n as usize)
        } else {
            0
        };
        ring.iter().skip(skip).cloned().collect()
    }

    pub fn remove(&self, function: &str) {
        self.rings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(function);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rings_are_bounded_and_tail_returns_the_newest() {
        let logs = Logs::new(3);
        logs.push("f", "i", "a\nb\n\nc\nd");
        let t: Vec<_> = logs.tail("f", 0).into_iter().map(|e| e.text).collect();
        assert_eq!(t, ["b", "c", "d"]);
        let t: Vec<_> = logs.tail("f", 1).into_iter().map(|e| e.text).collect();
        assert_eq!(t, ["d"]);
        assert!(logs.tail("g", 5).is_empty());
    }
}
