//! The RTP fields the core reads and rewrites.

use bytes::Bytes;

/// The RTP header fields that forwarding reads or rewrites per subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RtpHeader {
    /// Payload type.
    pub payload_type: u8,
    /// Marker bit (end of a video frame).
    pub marker: bool,
    /// Sequence number.
    pub sequence_number: u16,
    /// Media timestamp in the codec's clock.
    pub timestamp: u32,
    /// Synchronisation source.
    pub ssrc: u32,
}

/// An RTP packet as the core sees it: parsed header fields and the shared payload buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpPacket {
    /// Header fields.
    pub header: RtpHeader,
    /// Payload, shared (not copied) with every subscriber.
    pub payload: Bytes,
}

/// Why bytes are not an RTP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RtpParseError {
    /// Shorter than its header, CSRC list, extension or padding say.
    #[error("truncated RTP packet")]
    Truncated,
    /// Not RTP version 2.
    #[error("RTP version {0} (want 2)")]
    Version(u8),
}

impl RtpPacket {
    /// Parses an RTP packet (RFC 3550), sharing `data`'s buffer for the payload; CSRCs and
    /// header extensions are skipped, padding removed.
    pub fn parse(data: &Bytes) -> Result<RtpPacket, RtpParseError> {
        let b = data.as_ref();
        if b.len() < 12 {
            return Err(RtpParseError::Truncated);
        }
        if b[0] >> 6 != 2 {
            return Err(RtpParseError::Version(b[0] >> 6));
        }
        let padding = b[0] & 0x20 != 0;
        let extension = b[0] & 0x10 != 0;
        let mut at = 12 + 4 * usize::from(b[0] & 0x0f);
        if extension {
            let ext = b.get(at..at + 4).ok_or(RtpParseError::Truncated)?;
            at += 4 + 4 * usize::from(u16::from_be_bytes([ext[2], ext[3]]));
        }
        let mut end = b.len();
        if padding {
            let pad = usize::from(*b.last().ok_or(RtpParseError::Truncated)?);
            if pad == 0 {
                return Err(RtpParseError::Truncated);
            }
            end = end.checked_sub(pad).ok_or(RtpParseError::Truncated)?;
        }
        if at > end {
            return Err(RtpParseError::Truncated);
        }
        Ok(RtpPacket {
            header: RtpHeader {
                payload_type: b[1] & 0x7f,
                marker: b[1] & 0x80 != 0,
                sequence_number: u16::from_be_bytes([b[2], b[3]]),
                timestamp: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
                ssrc: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
            },
            payload: data.slice(at..end),
        })
    }

    /// Appends the packet as RTP (12-byte header, no CSRC or extension).
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let h = &self.header;
        out.push(0x80);
        out.push((h.payload_type & 0x7f) | if h.marker { 0x80 } else { 0 });
        out.extend(h.sequence_number.to_be_bytes());
        out.extend(h.timestamp.to_be_bytes());
        out.extend(h.ssrc.to_be_bytes());
        out.extend_from_slice(&self.payload);
    }
}

/// Whether sequence number `a` comes after `b` in 16-bit serial-number arithmetic.
pub fn seq_is_newer(a: u16, b: u16) -> bool {
    a != b && a.wrapping_sub(b) < 0x8000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_round_trip_and_extensions_padding_and_csrcs_are_skipped() {
        let p = RtpPacket {
            header: RtpHeader {
                payload_type: 96,
                marker: true,
                sequence_number: 65535,
                timestamp: 0xdead_beef,
                ssrc: 7,
            },
            payload: Bytes::from_static(b"hello"),
        };
        let mut v = Vec::new();
        p.write_to(&mut v);
        assert_eq!(RtpPacket::parse(&Bytes::from(v)), Ok(p.clone()));
        // One CSRC, a one-word extension and two bytes of padding.
        let mut v = vec![0xb1, 0xe0, 0xff, 0xff, 0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 7];
        v.extend([0, 0, 0, 9]);
        v.extend([0xbe, 0xde, 0, 1, 0x10, 0xff, 0, 0]);
        v.extend(b"hello");
        v.extend([0, 2]);
        assert_eq!(RtpPacket::parse(&Bytes::from(v)), Ok(p));
    }

    #[test]
    fn malformed_packets_are_errors() {
        let parse = |v: &[u8]| RtpPacket::parse(&Bytes::copy_from_slice(v));
        assert_eq!(parse(&[0x80; 11]), Err(RtpParseError::Truncated));
        assert_eq!(parse(&[0x40; 12]), Err(RtpParseError::Version(1)));
        // Says 15 CSRCs, has none.
        assert_eq!(parse(&[0x8f; 12]), Err(RtpParseError::Truncated));
        // Extension header missing.
        assert_eq!(parse(&[0x90; 12]), Err(RtpParseError::Truncated));
        // Padding longer than the packet.
        let mut v = vec![0xa0; 12];
        v[11] = 200;
        assert_eq!(parse(&v), Err(RtpParseError::Truncated));
    }

    #[test]
    fn sequence_comparison_wraps() {
        assert!(seq_is_newer(1, 0));
        assert!(seq_is_newer(0, 65535));
        assert!(!seq_is_newer(65535, 0));
        assert!(!seq_is_newer(5, 5));
        assert!(seq_is_newer(0x7fff, 0));
        assert!(!seq_is_newer(0x8000, 0));
    }
}
