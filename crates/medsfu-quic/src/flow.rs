//! RTP-over-QUIC datagram framing (draft-ietf-avtcore-rtp-over-quic): a QUIC variable-length
//! integer flow identifier, then one RTP or RTCP packet. RTP and RTCP of one flow share its
//! identifier and are told apart as in RFC 5761 (RTCP packet types 192-223).

use bytes::{BufMut, Bytes};

/// Largest RTP/RTCP packet accepted inside a datagram (an Ethernet MTU).
pub const MAX_PACKET: usize = 1500;

/// Largest flow identifier medsfu assigns (fits a 2-byte varint).
pub const MAX_FLOW: u64 = 16_383;

/// Why a datagram was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FlowError {
    /// No complete flow identifier.
    #[error("datagram too short for its flow identifier")]
    Truncated,
    /// The packet after the identifier is not RTP/RTCP version 2 or shorter than a header.
    #[error("not an RTP or RTCP packet")]
    NotRtp,
    /// The packet is larger than an Ethernet MTU.
    #[error("packet of {0} bytes exceeds {MAX_PACKET}")]
    TooLarge(usize),
}

impl FlowError {
    /// Stable code for counters and the wire.
    pub fn code(self) -> &'static str {
        match self {
            FlowError::Truncated => "truncated",
            FlowError::NotRtp => "not_rtp",
            FlowError::TooLarge(_) => "too_large",
        }
    }
}

/// What a datagram carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlowPacket {
    /// An RTP packet of flow `flow`.
    Rtp {
        /// Flow identifier.
        flow: u64,
        /// The RTP packet (shares the datagram's buffer).
        packet: Bytes,
    },
    /// An RTCP (compound) packet of flow `flow`.
    Rtcp {
        /// Flow identifier.
        flow: u64,
        /// The RTCP packet (shares the datagram's buffer).
        packet: Bytes,
    },
}

/// Reads a QUIC variable-length integer (RFC 9000 section 16); returns it and its length.
pub fn read_varint(b: &[u8]) -> Option<(u64, usize)> {
    let first = *b.first()?;
    let len = 1usize << (first >> 6);
    if b.len() < len {
        return None;
    }
    let mut v = u64::from(first & 0x3f);
    for &x in &b[1..len] {
        v = (v << 8) | u64::from(x);
    }
    Some((v, len))
}

/// Appends `v` as a QUIC variable-length integer (values above 2^62-1 are clamped).
pub fn write_varint(v: u64, out: &mut impl BufMut) {
    if v < 1 << 6 {
        out.put_u8(v as u8);
    } else if v < 1 << 14 {
        out.put_u16(0x4000 | v as u16);
    } else if v < 1 << 30 {
        out.put_u32(0x8000_0000 | v as u32);
    } else {
        out.put_u64(0xC000_0000_0000_0000 | v.min((1 << 62) - 1));
    }
}

/// Splits a received datagram into its flow and packet, without copying.
pub fn parse(datagram: &Bytes) -> Result<FlowPacket, FlowError> {
    let (flow, n) = read_varint(datagram).ok_or(FlowError::Truncated)?;
    let packet = datagram.slice(n..);
    if packet.len() > MAX_PACKET {
        return Err(FlowError::TooLarge(packet.len()));
    }
    if packet.len() < 4 || packet[0] >> 6 != 2 {
        return Err(FlowError::NotRtp);
    }
    if (192..=223).contains(&packet[1]) {
        return Ok(FlowPacket::Rtcp { flow, packet });
    }
    if packet.len() < 12 {
        return Err(FlowError::NotRtp);
    }
    Ok(FlowPacket::Rtp { flow, packet })
}

/// Frames `packet` (RTP or RTCP) for flow `flow`.
pub fn frame(flow: u64, packet: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(packet.len() + 8);
    write_varint(flow, &mut out);
    out.extend_from_slice(packet);
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rtp(pt: u8, len: usize) -> Vec<u8> {
        let mut p = vec![0u8; len];
        p[0] = 0x80;
        p[1] = pt;
        p
    }

    #[test]
    fn varints_round_trip_at_every_length() {
        for v in [
            0,
            63,
            64,
            16_383,
            16_384,
            (1 << 30) - 1,
            1 << 30,
            (1 << 62) - 1,
        ] {
            let mut b = Vec::new();
            write_varint(v, &mut b);
            assert_eq!(read_varint(&b), Some((v, b.len())), "value {v}");
        }
        // RFC 9000 appendix A examples.
        assert_eq!(read_varint(&[0x7b, 0xbd]), Some((15_293, 2)));
        assert_eq!(
            read_varint(&[0x9d, 0x7f, 0x3e, 0x7d]),
            Some((494_878_333, 4))
        );
        assert_eq!(read_varint(&[0x40]), None);
    }

    #[test]
    fn rtp_and_rtcp_share_a_flow_and_are_told_apart() {
        let d = frame(300, &rtp(96, 100));
        assert_eq!(d.len(), 102);
        match parse(&d) {
            Ok(FlowPacket::Rtp { flow, packet }) => {
                assert_eq!(flow, 300);
                assert_eq!(packet.len(), 100);
            }
            other => panic!("{other:?}"),
        }
        let pli = [0x81u8, 206, 0, 2, 0, 0, 0, 0, 0, 0, 0, 1];
        assert!(matches!(
            parse(&frame(1, &pli)),
            Ok(FlowPacket::Rtcp { flow: 1, .. })
        ));
    }

    #[test]
    fn bad_datagrams_are_refused_with_a_reason() {
        assert_eq!(parse(&Bytes::new()), Err(FlowError::Truncated));
        assert_eq!(
            parse(&Bytes::from_static(&[0x80])),
            Err(FlowError::Truncated)
        );
        assert_eq!(parse(&frame(1, &[0x80, 96, 0])), Err(FlowError::NotRtp));
        assert_eq!(parse(&frame(1, &rtp(96, 11))), Err(FlowError::NotRtp));
        let mut v1 = rtp(96, 20);
        v1[0] = 0x40;
        assert_eq!(parse(&frame(1, &v1)), Err(FlowError::NotRtp));
        assert_eq!(
            parse(&frame(1, &rtp(96, 1501))),
            Err(FlowError::TooLarge(1501))
        );
        assert!(parse(&frame(1, &rtp(96, 1500))).is_ok());
    }
}

/// Feedback found in an RTCP packet that a vehicle acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Feedback {
    /// Picture loss indication: send a keyframe.
    Pli {
        /// SSRC of the stream.
        media_ssrc: u32,
    },
    /// Generic NACK: resend these packets.
    Nack {
        /// SSRC of the stream.
        media_ssrc: u32,
        /// Lost sequence numbers.
        seqs: Vec<u16>,
    },
}

/// An RTCP picture loss indication (RFC 4585).
pub fn pli(media_ssrc: u32) -> [u8; 12] {
    let mut p = [0x81, 206, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0];
    p[8..].copy_from_slice(&media_ssrc.to_be_bytes());
    p
}

/// An RTCP generic NACK (RFC 4585) for `seqs`.
pub fn nack(media_ssrc: u32, seqs: &[u16]) -> Vec<u8> {
    let mut fci: Vec<(u16, u16)> = Vec::new();
    let mut sorted = seqs.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    for s in sorted {
        match fci.last_mut() {
            Some((pid, blp)) if s.wrapping_sub(*pid) >= 1 && s.wrapping_sub(*pid) <= 16 => {
                *blp |= 1 << (s.wrapping_sub(*pid) - 1);
            }
            _ => fci.push((s, 0)),
        }
    }
    let words = 2 + fci.len();
    let mut p = Vec::with_capacity(4 + 4 * words);
    p.extend([0x81, 205]);
    p.extend((words as u16).to_be_bytes());
    p.extend(0u32.to_be_bytes());
    p.extend(media_ssrc.to_be_bytes());
    for (pid, blp) in fci {
        p.extend(pid.to_be_bytes());
        p.extend(blp.to_be_bytes());
    }
    p
}

/// The PLIs and NACKs in a (compound) RTCP packet; anything else is skipped.
pub fn feedback(mut b: &[u8]) -> Vec<Feedback> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let len = 4 * (usize::from(u16::from_be_bytes([b[2], b[3]])) + 1);
        let Some(p) = b.get(..len) else { break };
        let fmt = p[0] & 0x1f;
        if p.len() >= 12 {
            let media_ssrc = u32::from_be_bytes([p[8], p[9], p[10], p[11]]);
            match (p[1], fmt) {
                (206, 1) => out.push(Feedback::Pli { media_ssrc }),
                (205, 1) => {
                    let mut seqs = Vec::new();
                    for f in p[12..].chunks_exact(4) {
                        let pid = u16::from_be_bytes([f[0], f[1]]);
                        let blp = u16::from_be_bytes([f[2], f[3]]);
                        seqs.push(pid);
                        seqs.extend(
                            (0..16)
                                .filter(|i| blp & (1 << i) != 0)
                                .map(|i| pid.wrapping_add(i + 1)),
                        );
                    }
                    out.push(Feedback::Nack { media_ssrc, seqs });
                }
                _ => {}
            }
        }
        b = &b[len..];
    }
    out
}

#[cfg(test)]
mod feedback_tests {
    use super::*;

    #[test]
    fn pli_and_nack_round_trip_in_a_compound_packet() {
        let mut c = pli(42).to_vec();
        c.extend(nack(42, &[100, 101, 116, 117, 65535, 3]));
        let fb = feedback(&c);
        assert_eq!(fb[0], Feedback::Pli { media_ssrc: 42 });
        let Feedback::Nack { media_ssrc, seqs } = &fb[1] else {
            panic!("{fb:?}")
        };
        assert_eq!(*media_ssrc, 42);
        let mut s = seqs.clone();
        s.sort_unstable();
        assert_eq!(s, vec![3, 100, 101, 116, 117, 65535]);
        // Garbage and truncation are skipped, not a panic.
        assert!(feedback(&[0x81, 206, 0, 9, 1, 2]).is_empty());
    }
}
