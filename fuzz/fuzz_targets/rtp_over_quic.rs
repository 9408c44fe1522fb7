//! What a vehicle sends: RTP-over-QUIC datagrams (flow id + RTP/RTCP), RTCP feedback, and
//! control-stream JSON lines. None may panic; a parsed RTP packet re-encodes to a parse.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let d = bytes::Bytes::copy_from_slice(data);
    if let Ok(medsfu_quic::flow::FlowPacket::Rtp { packet, .. }) = medsfu_quic::flow::parse(&d) {
        if let Ok(p) = medsfu_core::RtpPacket::parse(&packet) {
            let mut out = Vec::new();
            p.write_to(&mut out);
            assert_eq!(medsfu_core::RtpPacket::parse(&bytes::Bytes::from(out)).map(|q| q.header), Ok(p.header));
        }
    }
    let _ = medsfu_quic::flow::feedback(data);
    let _ = serde_json::from_slice::<medsfu_quic::protocol::VehicleMessage>(data);
});
