//! The recorder's muxer on pictures a publisher made up: parameter sets, slices and VP8
//! key frame headers from arbitrary bytes must give errors or a file, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| medsfu_fuzz::targets::recorded_video(data));
