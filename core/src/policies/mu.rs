//! Mu's load balancing (Mittal et al., "Mu: An Efficient, Fair and Responsive Serverless
//! Framework for Resource-Constrained Edge Clouds", SoCC 2021): workers report their
//! service rate and queue length, and each request goes to the instance with the least
//! expected wait, the queue ahead of it (plus itself) over the service rate. Mu balances
//! within one edge cloud; across the continuum we add the measured round trip to the
//! place, and count a place's service rate as its cores over the function's service time
//! there (reported, else this policy's own observation, else the function's anywhere).

use crate::placement::PlaceInfo;

/// Mu's expected wait at a place (plus the round trip): the calls ahead and this one, over
/// the place's service rate (its cores over the function's service time).
pub fn score(p: &PlaceInfo<'_>, service_ms: f64) -> f64 {
    let cores = f64::from(p.cores.max(1));
    let queue = p.load_per_core * cores;
    p.rtt_ms + (queue + 1.0) * service_ms / cores
}
