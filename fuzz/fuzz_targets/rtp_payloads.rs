//! Payload inspection and H.265 depacketization on arbitrary packets.
#![no_main]
use libfuzzer_sys::fuzz_target;
use medsfu_codec::{h265_rtp::Depacketizer, Codec};

fuzz_target!(|data: &[u8]| {
    for c in [Codec::Opus, Codec::H264, Codec::H265, Codec::Vp8] {
        let _ = c.is_keyframe_start(data);
    }
    // Treat the input as a sequence of length-prefixed payloads with marker bits.
    let mut d = Depacketizer::new();
    let mut rest = data;
    while rest.len() >= 2 {
        let len = usize::from(rest[0]) * 8;
        let marker = rest[1] & 1 == 1;
        let end = (2 + len).min(rest.len());
        let _ = d.push(&rest[2..end], marker);
        rest = &rest[end..];
    }
    let nals = medsfu_codec::h265_rtp::annexb_nal_units(data);
    let _ = medsfu_codec::h265_rtp::access_units(&nals);
});
