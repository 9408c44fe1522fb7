//! What a vehicle sends: RTP-over-QUIC datagrams (flow id + RTP/RTCP), RTCP feedback, and
//! control-stream JSON. None may panic; a parsed RTP packet re-encodes to a parse.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| medsfu_fuzz::targets::rtp_over_quic(data));
