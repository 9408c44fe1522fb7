//! H.264 RTP payloads (RFC 6184).

const NAL_IDR: u8 = 5;
const NAL_SPS: u8 = 7;
const NAL_PPS: u8 = 8;
const STAP_A: u8 = 24;
const FU_A: u8 = 28;

fn starts_keyframe(nal_type: u8) -> bool {
    matches!(nal_type, NAL_IDR | NAL_SPS | NAL_PPS)
}

/// Whether an H.264 RTP payload begins an IDR access unit (or its parameter sets).
pub fn is_keyframe_start(payload: &[u8]) -> bool {
    let Some(&first) = payload.first() else {
        return false;
    };
    match first & 0x1F {
        STAP_A => {
            let mut rest = &payload[1..];
            while rest.len() >= 2 {
                let size = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                rest = &rest[2..];
                if size == 0 || size > rest.len() {
                    return false;
                }
                if starts_keyframe(rest[0] & 0x1F) {
                    return true;
                }
                rest = &rest[size..];
            }
            false
        }
        FU_A => payload
            .get(1)
            .is_some_and(|h| h & 0x80 != 0 && starts_keyframe(h & 0x1F)),
        t => starts_keyframe(t),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_nal_types() {
        assert!(is_keyframe_start(&[0x65, 0x88])); // IDR
        assert!(is_keyframe_start(&[0x67, 0x42])); // SPS
        assert!(!is_keyframe_start(&[0x41, 0x9a])); // non-IDR slice
    }

    #[test]
    fn stap_a_with_sps_is_a_start() {
        // STAP-A: [size=2][SPS 2 bytes][size=2][PPS 2 bytes]
        let p = [0x78, 0, 2, 0x67, 0x42, 0, 2, 0x68, 0xce];
        assert!(is_keyframe_start(&p));
        let p = [0x78, 0, 2, 0x41, 0x9a];
        assert!(!is_keyframe_start(&p));
    }

    #[test]
    fn stap_a_with_bad_sizes_is_not_a_start() {
        assert!(!is_keyframe_start(&[0x78, 0, 9, 0x67]));
        assert!(!is_keyframe_start(&[0x78, 0, 0, 0x67]));
        assert!(!is_keyframe_start(&[0x78, 0]));
    }

    #[test]
    fn fu_a_start_and_middle() {
        assert!(is_keyframe_start(&[0x7c, 0x85, 0xaa])); // S bit, IDR
        assert!(!is_keyframe_start(&[0x7c, 0x05, 0xaa])); // middle fragment
        assert!(!is_keyframe_start(&[0x7c, 0x81, 0xaa])); // S bit, non-IDR
        assert!(!is_keyframe_start(&[0x7c]));
    }
}
