//! The recorder's muxer on pictures a publisher made up: parameter sets, slices and VP8
//! key frame headers from arbitrary bytes must give errors or a file, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use medsfu_record::{Fmp4Writer, VideoCodec};

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let codec = match first % 3 {
        0 => VideoCodec::H265,
        1 => VideoCodec::H264,
        _ => VideoCodec::Vp8,
    };
    let _ = medsfu_record::avc::parse_sps(rest);
    let _ = medsfu_record::hevc::parse_sps(rest);
    // Pictures separated by 0xFF 0xFE; a picture's first byte says keyframe and time step.
    let mut w = Fmp4Writer::new(Vec::new(), codec, 0);
    let mut pts = 0u64;
    for picture in rest.split(|&b| b == 0xFE) {
        let Some((&head, body)) = picture.split_first() else {
            continue;
        };
        pts = pts.wrapping_add(u64::from(head >> 1) * 1000);
        let _ = w.push(body, pts, head & 1 == 1);
    }
    let _ = w.finish();
});
