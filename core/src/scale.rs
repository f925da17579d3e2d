//! How many workers the cloud tier should run: the bridge's autoscaler for its Swarm
//! service, as pure code (the time and the observations are arguments).
//!
//! Demand is counted in calls in flight. What is in flight now (and any call waiting for
//! a first worker) is demand already here; the forecast arrival rate at the moment new
//! replicas would be ready (Little's law: rate × service time) is demand on its way. The
//! replicas wanted are the larger demand over `target_inflight` per replica, between
//! `min` and `max`. Up is at once; down only after demand stayed below the replicas for
//! `idle`, and then to the most wanted over that time (hysteresis: a lull shorter than
//! `idle` never scales down, and noise never scales down twice).

/// Why the replicas changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// A call is waiting and no worker runs.
    FirstCall,
    /// Calls in flight need more workers than run.
    InFlight,
    /// The forecast arrival rate will need them by the time they are ready.
    Forecast,
    /// Demand stayed lower for the idle time.
    Idle,
    /// Brought within `min_replicas`..=`max_replicas` (a changed config, an adopted service).
    Bounds,
}

impl Reason {
    pub const ALL: [Reason; 5] = [
        Reason::FirstCall,
        Reason::InFlight,
        Reason::Forecast,
        Reason::Idle,
        Reason::Bounds,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::FirstCall => "first-call",
            Reason::InFlight => "in-flight",
            Reason::Forecast => "forecast",
            Reason::Idle => "idle",
            Reason::Bounds => "bounds",
        }
    }
}

/// What the bridge sees at one tick.
#[derive(Debug, Clone, Copy, Default)]
pub struct Observed {
    /// Calls running at workers now.
    pub in_flight: f64,
    /// Calls waiting because no worker can take them.
    pub waiting: u32,
    /// Forecast arrivals per second, at the time new replicas would be ready.
    pub forecast_per_s: f64,
    /// Arrivals per second now (the same forecast, no time ahead).
    pub rate_per_s: f64,
    /// Mean service time at the workers, ms (none before any call ran).
    pub service_ms: Option<f64>,
}

/// A change of replicas and its reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    pub replicas: u32,
    pub reason: Reason,
}

/// The autoscaler's state.
#[derive(Debug, Clone)]
pub struct Scaler {
    pub min: u32,
    pub max: u32,
    pub target_inflight: u32,
    pub idle_ms: u64,
    /// Since when demand has wanted fewer than the current replicas, and the most it
    /// wanted since.
    below: Option<(u64, u32)>,
}

impl Scaler {
    pub fn new(min: u32, max: u32, target_inflight: u32, idle_ms: u64) -> Self {
        Scaler {
            min: min.min(max),
            max: max.max(1),
            target_inflight: target_inflight.max(1),
            idle_ms,
            below: None,
        }
    }

    /// Replicas demand wants now (unclamped), and whether the forecast decided it.
    pub fn wanted(&self, o: &Observed) -> (u32, bool) {
        let here = o.in_flight.max(0.0) + f64::from(o.waiting);
        // How long a call stays in flight (Little's law): what calls take now, queueing
        // included (in flight over arrivals), and never less than the workers' service
        // time (before any call has run, about 100 ms).
        let service_s = o.service_ms.unwrap_or(100.0).max(0.0) / 1e3;
        let stay_s = if o.rate_per_s > 0.5 {
            service_s.max(o.in_flight.max(0.0) / o.rate_per_s)
        } else {
            service_s
        };
        let coming = o.forecast_per_s.max(0.0) * stay_s;
        let per = f64::from(self.target_inflight);
        let need = |d: f64| {
            if d <= 1e-9 {
                0
            } else {
                (d / per).ceil().min(f64::from(u32::MAX)) as u32
            }
        };
        let mut now = need(here);
        if o.waiting > 0 {
            now = now.max(1);
        }
        let ahead = need(coming);
        (now.max(ahead), ahead > now)
    }

    /// The change to make at `now_ms` given `current` replicas, if any.
    pub fn decide(&mut self, now_ms: u64, current: u32, o: &Observed) -> Option<Change> {
        let (raw, by_forecast) = self.wanted(o);
        let wanted = raw.clamp(self.min, self.max);
        if current < self.min || current > self.max {
            self.below = None;
            return Some(Change {
                replicas: current.clamp(self.min, self.max).max(wanted),
                reason: Reason::Bounds,
            });
        }
        if wanted > current {
            self.below = None;
            let reason = if current == 0 && o.waiting > 0 {
                Reason::FirstCall
            } else if by_forecast {
                Reason::Forecast
            } else {
                Reason::InFlight
            };
            return Some(Change {
                replicas: wanted,
                reason,
            });
        }
        if wanted == current {
            self.below = None;
            return None;
        }
        let (since, most) = match self.below {
            Some((since, most)) => (since, most.max(wanted)),
            None => (now_ms, wanted),
        };
        if now_ms.saturating_sub(since) >= self.idle_ms {
            self.below = None;
            return Some(Change {
                replicas: most,
                reason: Reason::Idle,
            });
        }
        self.below = Some((since, most));
        None
    }
}

/// The Swarm task a member is, when it is a worker of `service`: a bridge's workers are
/// named `SERVICE-SLOT-TASKID` (a slot of digits, a task id of letters and digits), so a
/// worker of another service whose name starts with this one's is not taken for one.
pub fn swarm_task<'a>(member: &'a str, service: &str) -> Option<&'a str> {
    let (slot, task) = member
        .strip_prefix(service)?
        .strip_prefix('-')?
        .split_once('-')?;
    let digits = !slot.is_empty() && slot.bytes().all(|b| b.is_ascii_digit());
    let id = !task.is_empty() && task.bytes().all(|b| b.is_ascii_alphanumeric());
    (digits && id).then_some(task)
}

/// One place of a sized pool (a bridge's workers) as [`pack`] sees it.
#[derive(Debug, Clone, Copy)]
pub struct Slot<'a> {
    pub name: &'a str,
    /// The machine it runs on (a Swarm node); its own name when unknown.
    pub host: &'a str,
    pub in_flight: u32,
}

/// Where a sized pool's next call goes: calls fill one machine to what its replicas are
/// sized for (`target_inflight` each) before the next machine takes any, and on a machine
/// they all go to its first replica by name. A worker uses all of its machine's cores,
/// so a second replica on the same machine adds no capacity, only cost: spread over two
/// processes, each call paid more CPU (fewer calls per packet and per wakeup) and two
/// replicas on one 2-core host ran at 0.75x of one. A replica that takes no calls is one
/// that scaling down can remove. `None` when every machine is full: then the placement
/// policy spreads the load.
pub fn pack(places: &[Slot<'_>], target_inflight: u32) -> Option<usize> {
    // Per machine: its first replica, its calls in flight, its replicas.
    let mut hosts: std::collections::BTreeMap<&str, (usize, u32, u32)> = Default::default();
    for (i, p) in places.iter().enumerate() {
        let h = hosts.entry(p.host).or_insert((i, 0, 0));
        if p.name < places[h.0].name {
            h.0 = i;
        }
        h.1 = h.1.saturating_add(p.in_flight);
        h.2 += 1;
    }
    hosts
        .values()
        .filter(|(_, load, n)| *load < target_inflight.saturating_mul(*n))
        .min_by_key(|(first, ..)| places[*first].name)
        .map(|(first, ..)| *first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_fill_one_replica_to_its_target_before_the_next() {
        // Each on a machine of its own.
        let at = |v: &[(&str, u32)]| {
            let slots: Vec<Slot<'_>> = v
                .iter()
                .map(|(name, in_flight)| Slot {
                    name,
                    host: name,
                    in_flight: *in_flight,
                })
                .collect();
            pack(&slots, 8)
        };
        assert_eq!(
            at(&[("w.2", 0), ("w.1", 0)]),
            Some(1),
            "name order, not list order"
        );
        assert_eq!(at(&[("w.2", 0), ("w.1", 7)]), Some(1));
        assert_eq!(at(&[("w.2", 3), ("w.1", 8)]), Some(0), "the first is full");
        assert_eq!(
            at(&[("w.2", 8), ("w.1", 9)]),
            None,
            "all full: the policy spreads"
        );
        assert_eq!(at(&[]), None);
    }

    #[test]
    fn a_swarm_task_is_read_from_its_members_name() {
        assert_eq!(swarm_task("fl-w-3-x7k2q", "fl-w"), Some("x7k2q"));
        assert_eq!(swarm_task("fl-w-b-3-x7k2q", "fl-w"), None, "service fl-w-b");
        assert_eq!(swarm_task("fl-wx-3-x7k2q", "fl-w"), None);
        assert_eq!(swarm_task("fl-w-3-", "fl-w"), None);
        assert_eq!(swarm_task("edge-1", "fl-w"), None);
    }

    #[test]
    fn a_machine_fills_to_its_replicas_targets_through_its_first_replica() {
        let at = |v: &[(&str, &str, u32)]| {
            let slots: Vec<Slot<'_>> = v
                .iter()
                .map(|(name, host, in_flight)| Slot {
                    name,
                    host,
                    in_flight: *in_flight,
                })
                .collect();
            pack(&slots, 8)
        };
        // Two replicas on machine a: it takes 16 through w.1 before b's w.3 takes any.
        let v = [("w.2", "a", 0), ("w.1", "a", 15), ("w.3", "b", 0)];
        assert_eq!(at(&v), Some(1));
        let v = [("w.2", "a", 1), ("w.1", "a", 15), ("w.3", "b", 0)];
        assert_eq!(at(&v), Some(2), "a full: the next machine");
        let v = [("w.2", "a", 8), ("w.1", "a", 8), ("w.3", "b", 8)];
        assert_eq!(at(&v), None, "all full: the policy spreads");
        // Machines in the order of their first replica's name.
        let v = [("w.3", "b", 0), ("w.2", "a", 0), ("w.4", "b", 0)];
        assert_eq!(at(&v), Some(1));
    }

    fn obs(in_flight: f64, waiting: u32, rate: f64, service: Option<f64>) -> Observed {
        Observed {
            in_flight,
            waiting,
            forecast_per_s: rate,
            rate_per_s: 0.0,
            service_ms: service,
        }
    }

    #[test]
    fn a_waiting_call_scales_from_zero() {
        let mut s = Scaler::new(0, 4, 8, 10_000);
        assert_eq!(s.decide(0, 0, &obs(0.0, 0, 0.0, None)), None);
        assert_eq!(
            s.decide(1, 0, &obs(0.0, 1, 0.0, None)),
            Some(Change {
                replicas: 1,
                reason: Reason::FirstCall
            })
        );
    }

    #[test]
    fn in_flight_calls_are_divided_by_the_target() {
        let mut s = Scaler::new(0, 4, 8, 10_000);
        let c = s.decide(0, 1, &obs(17.0, 0, 0.0, Some(50.0))).unwrap();
        assert_eq!(c.replicas, 3);
        assert_eq!(c.reason, Reason::InFlight);
        // Never beyond max.
        let c = s.decide(0, 1, &obs(1000.0, 0, 0.0, Some(50.0))).unwrap();
        assert_eq!(c.replicas, 4);
    }

    #[test]
    fn a_forecast_burst_scales_before_it_arrives() {
        let mut s = Scaler::new(0, 8, 4, 10_000);
        // 200 calls/s of 100 ms each: 20 in flight soon, 5 replicas of 4; 2 in flight now.
        let c = s.decide(0, 1, &obs(2.0, 0, 200.0, Some(100.0))).unwrap();
        assert_eq!(c.replicas, 5);
        assert_eq!(c.reason, Reason::Forecast);
    }

    #[test]
    fn a_rising_rate_carries_todays_queueing_forward() {
        let mut s = Scaler::new(0, 8, 2, 10_000);
        // 40/s now with 4 in flight: calls stay 100 ms (queueing), though they run for 10.
        // At the 80/s forecast that is 8 in flight: 4 replicas of 2, before the 8 arrive.
        let o = Observed {
            in_flight: 4.0,
            waiting: 0,
            forecast_per_s: 80.0,
            rate_per_s: 40.0,
            service_ms: Some(10.0),
        };
        assert_eq!(
            s.decide(0, 2, &o),
            Some(Change {
                replicas: 4,
                reason: Reason::Forecast
            })
        );
    }

    #[test]
    fn scaling_down_waits_for_idle_and_keeps_the_peak_of_the_lull() {
        let mut s = Scaler::new(0, 8, 4, 1_000);
        assert_eq!(s.decide(0, 4, &obs(4.0, 0, 0.0, Some(10.0))), None);
        assert_eq!(s.decide(500, 4, &obs(9.0, 0, 0.0, Some(10.0))), None);
        assert_eq!(s.decide(900, 4, &obs(0.0, 0, 0.0, Some(10.0))), None);
        // Idle for 1 s since t=0: down to the most wanted meanwhile (9 in flight: 3).
        assert_eq!(
            s.decide(1_000, 4, &obs(0.0, 0, 0.0, Some(10.0))),
            Some(Change {
                replicas: 3,
                reason: Reason::Idle
            })
        );
        // A burst in the middle of a lull resets it.
        let mut s = Scaler::new(0, 8, 4, 1_000);
        assert_eq!(s.decide(0, 2, &obs(0.0, 0, 0.0, None)), None);
        assert_eq!(s.decide(600, 2, &obs(8.0, 0, 0.0, None)), None);
        assert_eq!(s.decide(1_200, 2, &obs(0.0, 0, 0.0, None)), None);
        assert_eq!(
            s.decide(2_200, 2, &obs(0.0, 0, 0.0, None))
                .unwrap()
                .replicas,
            0
        );
    }

    #[test]
    fn replicas_outside_the_bounds_are_brought_in() {
        let mut s = Scaler::new(1, 3, 4, 1_000);
        assert_eq!(
            s.decide(0, 0, &obs(0.0, 0, 0.0, None)),
            Some(Change {
                replicas: 1,
                reason: Reason::Bounds
            })
        );
        assert_eq!(s.decide(0, 7, &obs(0.0, 0, 0.0, None)).unwrap().replicas, 3);
        // min = 0 never holds a replica while idle.
        let mut s = Scaler::new(0, 3, 4, 0);
        assert_eq!(s.decide(0, 1, &obs(0.0, 0, 0.0, None)).unwrap().replicas, 0);
    }
}
