//! The telemetry hub's sequence handling: batches of frames with chosen sources and
//! sequence numbers (repeats, gaps, going back, reserved sources). Acknowledgements only
//! grow, nothing is stored twice, and a reopened hub has the same history.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| medsfu_fuzz::targets::hub_sequences(data));
