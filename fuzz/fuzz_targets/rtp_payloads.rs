//! Payload inspection and H.265, H.264 and VP8 depacketization on arbitrary packets.
#![no_main]
use libfuzzer_sys::fuzz_target;
use medsfu_codec::{h265_rtp::Depacketizer, Codec, H264Depacketizer, Vp8Depacketizer};

fuzz_target!(|data: &[u8]| {
    for c in [Codec::Opus, Codec::H264, Codec::H265, Codec::Vp8] {
        let _ = c.is_keyframe_start(data);
    }
    // Treat the input as a sequence of length-prefixed payloads with marker bits.
    let mut d = Depacketizer::new();
    let mut h264 = H264Depacketizer::new();
    let mut vp8 = Vp8Depacketizer::new();
    let mut rest = data;
    while rest.len() >= 2 {
        let len = usize::from(rest[0]) * 8;
        let marker = rest[1] & 1 == 1;
        let end = (2 + len).min(rest.len());
        let payload = &rest[2..end];
        let _ = d.push(payload, marker);
        let _ = h264.push(payload, marker);
        let _ = vp8.push(payload, marker);
        if rest[1] & 2 == 2 {
            d.reset();
            h264.reset();
            vp8.reset();
        }
        rest = &rest[end..];
    }
    let nals = medsfu_codec::h265_rtp::annexb_nal_units(data);
    let _ = medsfu_codec::h265_rtp::access_units(&nals);
});
