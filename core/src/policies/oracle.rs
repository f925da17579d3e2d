//! The simulator's oracle: it knows what each place would really take for this call
//! ([`PlaceInfo::truth_ms`], filled in by the simulator only) and chooses the least. Greedy
//! per call, so it bounds no policy's mean by construction; it is the yardstick.

use super::{plan_by, Call, Kind, Policy};
use crate::placement::{PlaceInfo, Plan};

#[derive(Debug, Clone, Copy, Default)]
pub struct Oracle;

impl Policy for Oracle {
    fn kind(&self) -> Kind {
        Kind::Oracle
    }

    fn plan(&mut self, call: &Call<'_>, places: &[PlaceInfo<'_>], roll: f64) -> Option<Plan> {
        plan_by(call, places, roll, false, |_, p| {
            p.truth_ms.unwrap_or(f64::INFINITY)
        })
    }
}
