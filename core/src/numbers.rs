//! The planner's place numbers by key: from a place's key
//! ([`crate::placement::place_key`], already a hash of its id) to the number it was given
//! on first use. A decision looks up every candidate here, so the table is plain open
//! addressing (linear probing, at most half full) over the key's own bits: one load and a
//! compare for most lookups, where a general map hashes the key again and probes a group
//! (a third of a 100-candidate decision's time went to the lookup).

/// A slot's number when the slot is empty.
const EMPTY: u32 = u32::MAX;

/// Place numbers by key. Numbers are below [`u32::MAX`].
#[derive(Debug, Clone, Default)]
pub(crate) struct Numbers {
    /// A power of two long (or empty); `(key, number)`, the number [`EMPTY`] in a free slot.
    slots: Vec<(u64, u32)>,
    len: usize,
}

impl Numbers {
    /// The number of `key`, if it has one.
    #[inline]
    pub(crate) fn get(&self, key: u64) -> Option<u32> {
        if self.slots.is_empty() {
            return None;
        }
        let mask = self.slots.len() - 1;
        let mut i = key as usize & mask;
        loop {
            let (k, n) = self.slots[i];
            if n == EMPTY {
                return None;
            }
            if k == key {
                return Some(n);
            }
            i = (i + 1) & mask;
        }
    }

    /// The number of `key`, given `next` if it has none.
    pub(crate) fn get_or_insert(&mut self, key: u64, next: u32) -> u32 {
        debug_assert!(next != EMPTY);
        if let Some(n) = self.get(key) {
            return n;
        }
        if (self.len + 1) * 2 > self.slots.len() {
            self.rebuild((self.slots.len() * 2).max(16));
        }
        self.put(key, next);
        self.len += 1;
        next
    }

    /// Keeps the keys for which `keep` returns true, given the number it may change.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&mut u32) -> bool) {
        for s in &mut self.slots {
            if s.1 != EMPTY && !keep(&mut s.1) {
                s.1 = EMPTY;
                self.len -= 1;
            }
        }
        // A freed slot may sit inside another key's probe run: put them all back.
        self.rebuild(self.slots.len());
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.len
    }

    fn put(&mut self, key: u64, n: u32) {
        let mask = self.slots.len() - 1;
        let mut i = key as usize & mask;
        while self.slots[i].1 != EMPTY {
            i = (i + 1) & mask;
        }
        self.slots[i] = (key, n);
    }

    fn rebuild(&mut self, size: usize) {
        let old = std::mem::replace(&mut self.slots, vec![(0, EMPTY); size]);
        for (k, n) in old {
            if n != EMPTY {
                self.put(k, n);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[test]
    fn numbers_are_found_given_and_kept_as_a_map_keeps_them() {
        let mut t = Numbers::default();
        let mut m = HashMap::new();
        assert_eq!(t.get(7), None);
        // Keys that collide in the low bits, and spread ones.
        let keys: Vec<u64> = (0..200u64)
            .map(|i| {
                if i % 2 == 0 {
                    i << 40
                } else {
                    i.wrapping_mul(0x9e37_79b9_7f4a_7c15)
                }
            })
            .collect();
        for (n, &k) in keys.iter().enumerate() {
            let n = n as u32;
            assert_eq!(t.get_or_insert(k, n), n);
            m.insert(k, n);
            // Given once: a second insert keeps the first number.
            assert_eq!(t.get_or_insert(k, n + 1000), n);
        }
        assert_eq!(t.len(), 200);
        // Drop every third, renumber the rest by halving.
        t.retain(|n| {
            if *n % 3 == 0 {
                false
            } else {
                *n /= 2;
                true
            }
        });
        m.retain(|_, n| {
            if *n % 3 == 0 {
                false
            } else {
                *n /= 2;
                true
            }
        });
        assert_eq!(t.len(), m.len());
        for &k in &keys {
            assert_eq!(t.get(k), m.get(&k).copied(), "key {k:#x}");
        }
        assert_eq!(t.get(12345), None);
    }

    proptest! {
        /// Any run of inserts and retains leaves the table answering as a map does, with
        /// keys crowded into few low bits (long probe runs, freed slots inside them).
        #[test]
        fn any_run_of_changes_reads_as_a_map(
            ops in proptest::collection::vec((0u8..4, 0u64..64, 0u32..1000), 1..300),
        ) {
            let mut t = Numbers::default();
            let mut m: HashMap<u64, u32> = HashMap::new();
            for (op, k, n) in ops {
                // Keys that differ above the low bits collide in the table.
                let key = (k % 8) | ((k / 8) << 48);
                match op {
                    0 | 1 => {
                        let got = t.get_or_insert(key, n);
                        prop_assert_eq!(got, *m.entry(key).or_insert(n));
                    }
                    2 => {
                        t.retain(|x| *x % 3 != n % 3);
                        m.retain(|_, x| *x % 3 != n % 3);
                    }
                    _ => prop_assert_eq!(t.get(key), m.get(&key).copied()),
                }
                prop_assert_eq!(t.len(), m.len());
            }
            for k in 0..64u64 {
                let key = (k % 8) | ((k / 8) << 48);
                prop_assert_eq!(t.get(key), m.get(&key).copied());
            }
        }
    }
}
