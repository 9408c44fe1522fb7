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

/// Access-unit delimiter NAL type (not sent over RTP).
const NAL_AUD: u8 = 9;

/// RTP payloads (RFC 6184, packetization-mode 1) for the NAL units of one access unit:
/// a NAL unit that fits in `mtu` travels alone, a larger one in FU-A fragments. Access-unit
/// delimiters are left out.
pub fn payload_nal_units(nals: &[&[u8]], mtu: usize) -> Vec<Vec<u8>> {
    let mtu = mtu.max(16);
    let mut out = Vec::new();
    for nal in nals {
        let Some(&hdr) = nal.first() else { continue };
        if hdr & 0x1F == NAL_AUD {
            continue;
        }
        if nal.len() <= mtu {
            out.push(nal.to_vec());
            continue;
        }
        let indicator = (hdr & 0xE0) | FU_A;
        let body = &nal[1..];
        let n = body.len().div_ceil(mtu - 2);
        for (i, part) in body.chunks(mtu - 2).enumerate() {
            let mut fu = hdr & 0x1F;
            if i == 0 {
                fu |= 0x80;
            }
            if i + 1 == n {
                fu |= 0x40;
            }
            let mut p = Vec::with_capacity(part.len() + 2);
            p.extend_from_slice(&[indicator, fu]);
            p.extend_from_slice(part);
            out.push(p);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_nal_units_are_fragmented_and_reassemble() {
        let idr: Vec<u8> = std::iter::once(0x65)
            .chain((0..3000u32).map(|i| i as u8))
            .collect();
        let sps = [0x67u8, 0x42, 0xe0, 0x1f];
        let aud = [0x09u8, 0xf0];
        let p = payload_nal_units(&[&aud, &sps, &idr], 1200);
        assert_eq!(p[0], sps, "AUD left out, SPS alone");
        assert!(p.iter().all(|x| x.len() <= 1200));
        assert!(is_keyframe_start(&p[1]), "the first FU-A starts the IDR");
        assert_eq!(p[1][1] & 0xC0, 0x80, "start bit");
        assert_eq!(p.last().map(|x| x[1] & 0xC0), Some(0x40), "end bit");
        let mut back = vec![(p[1][0] & 0xE0) | (p[1][1] & 0x1F)];
        for f in &p[1..] {
            back.extend_from_slice(&f[2..]);
        }
        assert_eq!(back, idr);
    }

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
