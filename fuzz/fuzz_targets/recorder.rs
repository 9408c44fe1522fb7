//! The recorder's whole pipeline (depacketizing, loss handling, size caps, clock gaps,
//! muxing) on packets a publisher made up, for each codec: never a panic, and the voice
//! archive is never longer than the packets' time plus a second.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| medsfu_fuzz::targets::recorder(data));
