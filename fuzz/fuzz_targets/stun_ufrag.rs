//! The media port's demultiplexer on arbitrary datagrams.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| medsfu_fuzz::targets::stun_ufrag(data));
