//! The SDP reading medsfu does before webrtc-rs sees an offer, and trickle sdpfrags.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| medsfu_fuzz::targets::sdp(data));
