//! A member's average of a function's service times, as its load reports carry it.
//!
//! The average takes each run in the order the runs *started*, not the order they ended.
//! Taken as they end, a burst's last answers are its longest runs (the short ones ended
//! first), and they stand for the function until its next burst: on `bursty-azure` seed 1
//! the cloud's report of a 620 ms function, read by routers as they placed its calls,
//! averaged 660 ms (the runs themselves 619 ms), and calls went to edges that ran it slower.
//! Which run started before which says nothing of how long each took, so an average in
//! that order is as long as the runs are. A run that ended waits, untaken, until every
//! run that started before it has ended (a run that ends without a time, failed or
//! abandoned, is passed over).

use std::collections::VecDeque;

use crate::mesh::SERVICE_AVERAGE;

/// Runs kept waiting behind one that has not ended, at most: past it the oldest is passed
/// over (a run that never ends must not hold the average, or memory, forever).
pub const MAX_WAITING: usize = 4096;

/// The average `mean` (none yet) after taking in a run of `ms`: each new run weighs
/// 1/[`SERVICE_AVERAGE`].
pub fn averaged(mean: Option<f64>, ms: f64) -> f64 {
    let w = 1.0 / SERVICE_AVERAGE as f64;
    mean.map_or(ms, |m| m + w * (ms - m))
}

/// One function's average at one member (see the module's documentation).
#[derive(Debug, Clone, Default)]
pub struct ServiceAverage {
    /// The ticket of the oldest run not taken in yet.
    first: u64,
    /// From `first` on, in start order: `None` while running, then its time (`None` for
    /// a run that ended without one).
    runs: VecDeque<Option<Option<f64>>>,
    mean: Option<f64>,
}

/// A run's place in its function's start order ([`ServiceAverage::start`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ticket(u64);

impl ServiceAverage {
    /// A run starts: its ticket, to end it with.
    pub fn start(&mut self) -> Ticket {
        if self.runs.len() >= MAX_WAITING {
            self.runs.pop_front();
            self.first += 1;
            self.take();
        }
        self.runs.push_back(None);
        Ticket(self.first + self.runs.len() as u64 - 1)
    }

    /// The run of `ticket` ended, having run `ms` (`None`: failed or abandoned, or a
    /// time that is not one); it is taken in once every run started before it has ended.
    pub fn end(&mut self, ticket: Ticket, ms: Option<f64>) {
        let Some(i) = ticket.0.checked_sub(self.first) else {
            return; // passed over already
        };
        if let Some(slot) = self.runs.get_mut(i as usize) {
            *slot = Some(ms.filter(|v| v.is_finite() && *v >= 0.0));
        }
        self.take();
    }

    /// Takes in the runs that ended at the front of the order.
    fn take(&mut self) {
        while let Some(Some(ran)) = self.runs.front().copied() {
            self.runs.pop_front();
            self.first += 1;
            if let Some(x) = ran {
                self.mean = Some(averaged(self.mean, x));
            }
        }
    }

    /// The average so far, ms, once a run was taken in.
    pub fn mean(&self) -> Option<f64> {
        self.mean
    }

    /// Runs started and not taken in yet (running, or ended behind one that runs).
    pub fn waiting(&self) -> usize {
        self.runs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_taken_in_the_order_they_started() {
        let mut a = ServiceAverage::default();
        let long = a.start();
        let short = a.start();
        a.end(short, Some(10.0));
        assert_eq!(
            a.mean(),
            None,
            "the short run waits for the long one before it"
        );
        assert_eq!(a.waiting(), 2);
        a.end(long, Some(90.0));
        // 90 first, then 10 at weight 1/8.
        assert_eq!(a.mean(), Some(90.0 - 80.0 / SERVICE_AVERAGE as f64));
        assert_eq!(a.waiting(), 0);
    }

    #[test]
    fn a_run_without_a_time_is_passed_over_and_holds_nothing_up() {
        let mut a = ServiceAverage::default();
        let failed = a.start();
        let ok = a.start();
        a.end(ok, Some(5.0));
        a.end(failed, None);
        assert_eq!(a.mean(), Some(5.0));
        let bad = a.start();
        a.end(bad, Some(f64::NAN));
        assert_eq!(a.mean(), Some(5.0));
        // Ending twice, or a ticket passed over, changes nothing.
        a.end(bad, Some(1000.0));
        a.end(ok, Some(1000.0));
        assert_eq!((a.mean(), a.waiting()), (Some(5.0), 0));
    }

    #[test]
    fn a_run_that_never_ends_is_passed_over_past_the_limit() {
        let mut a = ServiceAverage::default();
        let _hung = a.start();
        for _ in 0..MAX_WAITING {
            let t = a.start();
            a.end(t, Some(3.0));
        }
        assert!(a.waiting() <= MAX_WAITING);
        assert_eq!(
            a.mean(),
            Some(3.0),
            "taken in once the hung run was passed over"
        );
    }

    /// The reason for the order: after a burst, an average of runs as they end is left
    /// at the longest runs; in start order it is the runs' own mean.
    #[test]
    fn after_a_burst_the_average_is_not_its_longest_runs() {
        // A burst of 200 runs starting together, lengths 50..250 ms in a scrambled order.
        let lengths: Vec<f64> = (0..200u64)
            .map(|i| 50.0 + ((i * 89) % 200) as f64)
            .collect();
        let mut by_start = ServiceAverage::default();
        let tickets: Vec<Ticket> = lengths.iter().map(|_| by_start.start()).collect();
        let mut order: Vec<usize> = (0..lengths.len()).collect();
        order.sort_by(|a, b| lengths[*a].total_cmp(&lengths[*b]));
        let mut by_end: Option<f64> = None;
        for i in order {
            by_start.end(tickets[i], Some(lengths[i]));
            by_end = Some(averaged(by_end, lengths[i]));
        }
        let mean = lengths.iter().sum::<f64>() / lengths.len() as f64;
        let (s, e) = (by_start.mean().unwrap(), by_end.unwrap());
        assert!(e > 235.0, "in end order, the longest runs: {e}");
        assert!((s - mean).abs() < 60.0, "in start order {s}, mean {mean}");
    }
}
