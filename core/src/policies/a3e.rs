//! A3-E's selection (Baresi, Mendonça, Garriga, Guinea, Quattrocchi, "A Unified Model for
//! the Mobile-Edge-Cloud Continuum", ACM TOIT 19(2), 2019), as we read it: the client
//! discovers the places that can run the function, measures its latency to each, and runs
//! the function where the measured latency plus the function's execution time there is
//! least, weighing battery (running on the device) and cost (the cloud) by the user's
//! requirements. Execution times come from the place (reported) or from this client's own
//! history there; A3-E's selection does not model a place's queue or cold starts, and
//! neither does this.

use crate::placement::PlaceInfo;

/// A3-E's score of a place: measured latency plus the function's execution time there.
pub fn score(p: &PlaceInfo<'_>, exec_ms: f64) -> f64 {
    p.rtt_ms + exec_ms
}
