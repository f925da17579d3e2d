//! Feeds arbitrary bytes to the gossip decoder and the cluster view, as a mesh member could,
//! message after message.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fogline_core::mesh::check_gossip(data));
