//! Feeds a script of arbitrary datagrams, answers and timer ticks to the CoAP server state
//! machine, as clients on the network could.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fogline_core::coap::check_server(data));
