//! Admission: at most `max_concurrency` calls of a function run at once; beyond that the
//! caller gets a typed refusal (HTTP 429, CoAP 5.03, a retryable QUIC error) instead of a
//! queue.

use std::sync::atomic::{AtomicU32, Ordering};

/// One function's concurrency limit and its calls running now.
#[derive(Debug)]
pub struct Admission {
    limit: u32,
    in_flight: AtomicU32,
}

/// A call admitted; its slot is freed when this drops.
#[derive(Debug)]
pub struct Admitted<'a>(&'a AtomicU32);

impl Admission {
    pub fn new(limit: u32) -> Admission {
        Admission {
            limit,
            in_flight: AtomicU32::new(0),
        }
    }

    /// Takes a slot, or says the limit (without waiting).
    pub fn try_admit(&self) -> Result<Admitted<'_>, u32> {
        let mut cur = self.in_flight.load(Ordering::Acquire);
        loop {
            if cur >= self.limit {
                return Err(self.limit);
            }
            match self.in_flight.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(Admitted(&self.in_flight)),
                Err(now) => cur = now,
            }
        }
    }

    /// Calls running now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_up_to_the_limit_and_frees_on_drop() {
        let a = Admission::new(2);
        let one = a.try_admit().expect("first");
        let two = a.try_admit().expect("second");
        assert_eq!(a.try_admit().err(), Some(2));
        assert_eq!(a.in_flight(), 2);
        drop(one);
        let three = a.try_admit().expect("a slot was freed");
        drop((two, three));
        assert_eq!(a.in_flight(), 0);
    }
}
