//! Parsing of signalling messages from clients.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| medsfu_fuzz::targets::signalling_message(data));
