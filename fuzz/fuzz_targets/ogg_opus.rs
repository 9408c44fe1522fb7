//! The voice archive's Ogg/Opus path: packet durations from the TOC, and the writer on
//! arbitrary packets (each too big, empty or odd) giving an error or valid pages.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| medsfu_fuzz::targets::ogg_opus(data));
