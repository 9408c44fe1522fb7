//! The room core's per-packet path, NACKs and timers on adversarial packets; what a
//! subscriber gets re-sent stays within its retransmission budget.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| medsfu_fuzz::targets::core_forwarding(data));
