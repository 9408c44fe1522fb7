//! H.265 RTP payloads (RFC 7798), without DONL (sprop-max-don-diff = 0, the default).

/// The H.265 NAL unit types medsfu distinguishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NalType {
    /// A slice of an intra random access point picture (BLA, IDR or CRA; types 16-23).
    Irap(u8),
    /// Video parameter set (32).
    Vps,
    /// Sequence parameter set (33).
    Sps,
    /// Picture parameter set (34).
    Pps,
    /// Aggregation packet (48).
    Aggregation,
    /// Fragmentation unit (49).
    Fragment,
    /// Anything else (other slices, SEI, AUD, ...).
    Other(u8),
}

impl NalType {
    /// Reads the type from the first byte of a NAL unit header.
    pub fn from_header_byte(b: u8) -> NalType {
        match (b >> 1) & 0x3F {
            t @ 16..=23 => NalType::Irap(t),
            32 => NalType::Vps,
            33 => NalType::Sps,
            34 => NalType::Pps,
            48 => NalType::Aggregation,
            49 => NalType::Fragment,
            t => NalType::Other(t),
        }
    }

    fn starts_keyframe(self) -> bool {
        matches!(
            self,
            NalType::Irap(_) | NalType::Vps | NalType::Sps | NalType::Pps
        )
    }
}

/// Whether an access unit (its NAL units, without start codes) holds an IRAP picture:
/// a decoder can start there.
pub fn is_irap_access_unit<'a>(nals: impl IntoIterator<Item = &'a [u8]>) -> bool {
    nals.into_iter().any(|n| {
        n.first()
            .is_some_and(|b| matches!(NalType::from_header_byte(*b), NalType::Irap(_)))
    })
}

/// Whether an H.265 RTP payload begins an IRAP access unit (or its parameter sets).
pub fn is_keyframe_start(payload: &[u8]) -> bool {
    if payload.len() < 3 {
        return false;
    }
    match NalType::from_header_byte(payload[0]) {
        NalType::Aggregation => {
            let mut rest = &payload[2..];
            while rest.len() >= 2 {
                let size = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                rest = &rest[2..];
                if size < 2 || size > rest.len() {
                    return false;
                }
                if NalType::from_header_byte(rest[0]).starts_keyframe() {
                    return true;
                }
                rest = &rest[size..];
            }
            false
        }
        NalType::Fragment => {
            let fu = payload[2];
            // The FU header carries the fragmented NAL's type in its low six bits.
            fu & 0x80 != 0 && NalType::from_header_byte((fu & 0x3F) << 1).starts_keyframe()
        }
        t => t.starts_keyframe(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nal_header(t: u8) -> [u8; 2] {
        [t << 1, 0x01]
    }

    #[test]
    fn single_nal_types() {
        for t in [19u8, 20, 21, 32, 33, 34] {
            let h = nal_header(t);
            assert!(is_keyframe_start(&[h[0], h[1], 0xaa]), "type {t}");
        }
        for t in [0u8, 1, 35, 39] {
            let h = nal_header(t);
            assert!(!is_keyframe_start(&[h[0], h[1], 0xaa]), "type {t}");
        }
    }

    #[test]
    fn aggregation_packet_with_vps() {
        let ap = nal_header(48);
        let vps = nal_header(32);
        let p = [ap[0], ap[1], 0, 3, vps[0], vps[1], 0x0c];
        assert!(is_keyframe_start(&p));
        let trail = nal_header(1);
        let p = [ap[0], ap[1], 0, 3, trail[0], trail[1], 0x0c];
        assert!(!is_keyframe_start(&p));
        // Size running past the end: rejected, not read out of bounds.
        let p = [ap[0], ap[1], 0, 30, vps[0], vps[1], 0x0c];
        assert!(!is_keyframe_start(&p));
    }

    #[test]
    fn fragmentation_unit_start_of_idr() {
        let fu = nal_header(49);
        assert!(is_keyframe_start(&[fu[0], fu[1], 0x80 | 19, 0xaa]));
        assert!(!is_keyframe_start(&[fu[0], fu[1], 19, 0xaa])); // not the start
        assert!(!is_keyframe_start(&[fu[0], fu[1], 0x80 | 1, 0xaa])); // TRAIL_R
    }
}
