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

/// Whether sequence number `a` comes after `b` in 16-bit serial-number arithmetic.
pub fn seq_is_newer(a: u16, b: u16) -> bool {
    a != b && a.wrapping_sub(b) < 0x8000
}

#[cfg(test)]
mod tests {
    use super::*;

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
