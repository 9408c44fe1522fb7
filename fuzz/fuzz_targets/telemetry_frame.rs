//! Telemetry frames from vehicles and participants, and WFDB headers.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| medsfu_fuzz::targets::telemetry_frame(data));
