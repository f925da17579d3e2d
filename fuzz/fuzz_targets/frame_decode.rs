//! Feeds arbitrary bytes to the frame decoder, as a peer could, frame after frame.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fogline_core::wire::check_decoder(data));
