//! A vehicle's control stream: JSON lines of at most 64 KiB, split however the network
//! splits them; each line parses to a message or an error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| medsfu_fuzz::targets::vehicle_control(data));
