//! The media port's demultiplexer on arbitrary datagrams.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = medsfu_webrtc::demux::classify(data);
    if let Some(u) = medsfu_webrtc::demux::stun_server_ufrag(data) {
        assert!(!u.is_empty() && !u.contains(':'));
    }
});
