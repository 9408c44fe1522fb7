//! Payload inspection and H.265, H.264 and VP8 depacketization on arbitrary packets.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| medsfu_fuzz::targets::rtp_payloads(data));
