//! The static baselines: each reads one thing of a place and nothing learnt.
//! `least-loaded`, `nearest-edge` and `round-robin` place on nodes (the device itself only
//! when no node is left); `cloud-only` and `device-only` stay on their tier while they can.

use super::{off_tier, plan_by, Call, Kind, Policy};
use crate::config::Tier;
use crate::placement::{PlaceInfo, Plan};

#[derive(Debug, Clone)]
pub struct Simple {
    kind: Kind,
    /// Round-robin's turn.
    turn: usize,
}

impl Simple {
    pub fn new(kind: Kind) -> Self {
        Simple { kind, turn: 0 }
    }
}

/// Nodes before the device itself.
fn device_last(p: &PlaceInfo<'_>) -> f64 {
    if p.tier == Tier::Device {
        1e12
    } else {
        0.0
    }
}

impl Policy for Simple {
    fn kind(&self) -> Kind {
        self.kind
    }

    fn plan(&mut self, call: &Call<'_>, places: &[PlaceInfo<'_>], roll: f64) -> Option<Plan> {
        match self.kind {
            Kind::LeastLoaded => plan_by(call, places, roll, false, |_, p| {
                device_last(p) + p.load_per_core * 1e6 + p.rtt_ms
            }),
            Kind::NearestEdge => plan_by(call, places, roll, false, |_, p| {
                device_last(p) + off_tier(p, Tier::Edge) + p.rtt_ms
            }),
            Kind::RoundRobin => {
                self.turn = self.turn.wrapping_add(1);
                let n = places.len().max(1);
                let turn = self.turn % n;
                plan_by(call, places, roll, false, |i, p| {
                    device_last(p) + ((i + n - turn) % n) as f64
                })
            }
            Kind::CloudOnly => plan_by(call, places, roll, false, |_, p| {
                off_tier(p, Tier::Cloud) + p.rtt_ms
            }),
            Kind::DeviceOnly => plan_by(call, places, roll, false, |_, p| {
                off_tier(p, Tier::Device) + p.rtt_ms
            }),
            _ => None,
        }
    }
}
