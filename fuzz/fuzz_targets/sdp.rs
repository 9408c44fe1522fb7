//! The SDP reading medsfu does before webrtc-rs sees an offer, and trickle sdpfrags.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = medsfu_webrtc::sdp::media_sections(text);
    let fixed = medsfu_webrtc::sdp::accept_bundle_only(text);
    // The fix-up only ever changes a port 0 into 9.
    assert_eq!(fixed.len(), text.len());
    let _ = medsfu_webrtc::sdp::sdpfrag_candidates(text);
});
