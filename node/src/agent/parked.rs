//! Async calls waiting for a place (the site's outbox while a tier is cut off): when no
//! place can take a function's call (none alive, or the tier it is pinned to unreachable),
//! that call becomes the function's head and is tried again every so often; the
//! function's later calls wait behind it, without attempts, and are handed on in
//! submission order once the head has gone through: as a member is handed it (or, run
//! here or given up, when it ends), not after its run there. Waiting is not a failed attempt:
//! only the call's deadline ends it. The calls themselves stay on disk as any queued call
//! (a restart queues them again in order, and the first to find no place parks the rest).

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

/// One function's waiting calls.
#[derive(Debug)]
struct Waiting {
    /// The call being tried again.
    head: u64,
    /// The calls behind it (call ids grow in submission order).
    behind: BTreeSet<u64>,
    /// When the function's calls started waiting (ms since the Unix epoch).
    since_ms: u64,
    /// Tries of the head that found no place so far.
    tries: u32,
    /// The last try's reason.
    reason: String,
}

/// A function's calls waiting, as `fogline status` shows them.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct OutboxEntry {
    pub function: String,
    pub calls: u64,
    /// How long its oldest call has waited for a place, in seconds.
    pub oldest_s: u64,
    pub reason: String,
}

/// What to do with a call taken from the queue.
#[derive(Debug, PartialEq, Eq)]
pub enum Turn {
    /// Try it (no call of its function waits, or it is the head).
    Go,
    /// It waits behind the head (kept, not tried).
    Behind,
}

/// The functions whose calls wait for a place.
#[derive(Debug, Default)]
pub struct Parked {
    by_function: Mutex<HashMap<String, Waiting>>,
}

impl Parked {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Waiting>> {
        self.by_function.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether call `id` of `function` may be tried now.
    pub fn turn(&self, function: &str, id: u64) -> Turn {
        let mut map = self.map();
        match map.get_mut(function) {
            Some(w) if w.head != id => {
                if id < w.head {
                    // An earlier call (retried, or queued again after a restart) leads.
                    let old = std::mem::replace(&mut w.head, id);
                    w.behind.insert(old);
                    Turn::Go
                } else {
                    w.behind.insert(id);
                    Turn::Behind
                }
            }
            _ => Turn::Go,
        }
    }

    /// Call `id` of `function` found no place at `now_ms`: it heads the function's waiting
    /// calls (unless an earlier one does, which it then waits behind). Returns the head's
    /// tries so far (for its backoff), or `None` when `id` now waits behind another.
    pub fn no_place(&self, function: &str, id: u64, now_ms: u64, reason: &str) -> Option<u32> {
        let mut map = self.map();
        let w = map.entry(function.to_string()).or_insert_with(|| Waiting {
            head: id,
            behind: BTreeSet::new(),
            since_ms: now_ms,
            tries: 0,
            reason: String::new(),
        });
        if id > w.head {
            w.behind.insert(id);
            return None;
        }
        if id < w.head {
            let old = std::mem::replace(&mut w.head, id);
            w.behind.insert(old);
        }
        w.tries += 1;
        w.reason = reason.to_string();
        Some(w.tries)
    }

    /// Call `id` of `function` is done waiting (it went through, or was given up): when it
    /// was the head, the calls behind it, oldest first, to be queued again in that order.
    pub fn release(&self, function: &str, id: u64) -> Vec<u64> {
        let mut map = self.map();
        match map.get_mut(function) {
            Some(w) if w.head == id => {
                let w = map.remove(function).expect("present");
                w.behind.into_iter().collect()
            }
            Some(w) => {
                w.behind.remove(&id);
                Vec::new()
            }
            None => Vec::new(),
        }
    }

    /// Calls waiting for a place, over every function.
    pub fn calls(&self) -> u64 {
        self.map().values().map(|w| 1 + w.behind.len() as u64).sum()
    }

    /// When the longest waiting started (ms since the Unix epoch), if any waits.
    pub fn oldest_ms(&self) -> Option<u64> {
        self.map().values().map(|w| w.since_ms).min()
    }

    /// Each waiting function, longest waiting first.
    pub fn entries(&self, now_ms: u64) -> Vec<OutboxEntry> {
        let mut out: Vec<(u64, OutboxEntry)> = self
            .map()
            .iter()
            .map(|(f, w)| {
                (
                    w.since_ms,
                    OutboxEntry {
                        function: f.clone(),
                        calls: 1 + w.behind.len() as u64,
                        oldest_s: now_ms.saturating_sub(w.since_ms) / 1000,
                        reason: w.reason.clone(),
                    },
                )
            })
            .collect();
        out.sort_by_key(|(since, e)| (*since, e.function.clone()));
        out.into_iter().map(|(_, e)| e).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_calls_wait_behind_the_head_and_leave_in_submission_order() {
        let p = Parked::default();
        assert_eq!(p.turn("f", 5), Turn::Go);
        assert_eq!(p.no_place("f", 5, 1_000, "cloud unreachable"), Some(1));
        for id in [9, 7, 8] {
            assert_eq!(p.turn("f", id), Turn::Behind);
        }
        // Another function is not held up.
        assert_eq!(p.turn("g", 6), Turn::Go);
        // The head's own retry goes.
        assert_eq!(p.turn("f", 5), Turn::Go);
        assert_eq!(p.no_place("f", 5, 2_000, "cloud unreachable"), Some(2));
        assert_eq!(p.calls(), 4);
        assert_eq!(p.oldest_ms(), Some(1_000));
        let e = p.entries(4_500);
        assert_eq!(e.len(), 1);
        assert_eq!((e[0].calls, e[0].oldest_s), (4, 3));
        // A call behind the head that is released alone (not the head) frees nothing.
        assert!(p.release("f", 8).is_empty());
        assert_eq!(p.release("f", 5), vec![7, 9]);
        assert_eq!(p.calls(), 0);
        assert_eq!(p.turn("f", 7), Turn::Go);
    }

    #[test]
    fn an_earlier_call_takes_the_lead() {
        let p = Parked::default();
        assert_eq!(p.no_place("f", 5, 0, "x"), Some(1));
        // Call 3 was running when the link went; it finds no place either.
        assert_eq!(p.no_place("f", 3, 10, "x"), Some(2));
        // Call 5's own retry now waits behind 3.
        assert_eq!(p.turn("f", 5), Turn::Behind);
        assert_eq!(p.no_place("f", 6, 20, "x"), None);
        assert_eq!(p.release("f", 3), vec![5, 6]);
        // A restart queues 4 before 5: 4 leads when it arrives first.
        assert_eq!(p.no_place("f", 5, 30, "x"), Some(1));
        assert_eq!(p.turn("f", 4), Turn::Go);
        assert_eq!(p.release("f", 4), vec![5]);
    }
}
