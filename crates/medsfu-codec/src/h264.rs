//! H.264 RTP payloads (RFC 6184).

use crate::h265_rtp::{Assembly, DepacketizeError};

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

/// Rebuilds Annex-B access units from RTP payloads (RFC 6184, packetization modes 0
/// and 1: single NAL units, STAP-A and FU-A).
#[derive(Debug, Default)]
pub struct Depacketizer {
    assembly: Assembly,
}

impl Depacketizer {
    /// A depacketizer with nothing buffered.
    pub fn new() -> Depacketizer {
        Depacketizer::default()
    }

    /// Forgets a partly received access unit (after a lost packet).
    pub fn reset(&mut self) {
        self.assembly.reset();
    }

    /// Adds one RTP payload; with `marker`, returns the finished access unit.
    pub fn push(
        &mut self,
        payload: &[u8],
        marker: bool,
    ) -> Result<Option<Vec<u8>>, DepacketizeError> {
        let Some(&first) = payload.first() else {
            return Err(DepacketizeError::TooShort);
        };
        match first & 0x1F {
            1..=23 => self.assembly.push_nal(payload)?,
            STAP_A => {
                let mut rest = &payload[1..];
                while !rest.is_empty() {
                    if rest.len() < 2 {
                        return Err(DepacketizeError::BadAggregation);
                    }
                    let size = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                    let nal = rest
                        .get(2..2 + size)
                        .filter(|n| !n.is_empty())
                        .ok_or(DepacketizeError::BadAggregation)?;
                    self.assembly.push_nal(nal)?;
                    rest = &rest[2 + size..];
                }
            }
            FU_A => {
                let &[indicator, header, ref body @ ..] = payload else {
                    return Err(DepacketizeError::TooShort);
                };
                let nal_header = [(indicator & 0xE0) | (header & 0x1F)];
                self.assembly.fragment(
                    header & 0x80 != 0,
                    header & 0x40 != 0,
                    &nal_header,
                    body,
                )?;
            }
            // STAP-B, MTAP and FU-B (interleaved mode) and reserved types.
            t => return Err(DepacketizeError::Unsupported(t)),
        }
        let done = self.assembly.finish(marker);
        if done.is_some() {
            // A NAL unit still in fragments at the picture's end lost its end.
            self.assembly.drop_fragment();
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_units_round_trip_through_payloads_and_broken_ones_are_refused() {
        let idr: Vec<u8> = std::iter::once(0x65)
            .chain((0..3000u32).map(|i| (i % 251) as u8 + 1))
            .collect();
        let (sps, pps) = ([0x67u8, 0x42, 0xe0, 0x1f], [0x68u8, 0xce, 0x3c]);
        let mut d = Depacketizer::new();
        // The parameter sets in one STAP-A, then the IDR in FU-As.
        let mut stap = vec![0x78];
        for n in [&sps[..], &pps[..]] {
            stap.extend((n.len() as u16).to_be_bytes());
            stap.extend_from_slice(n);
        }
        assert_eq!(d.push(&stap, false), Ok(None));
        let fus = payload_nal_units(&[&idr], 1200);
        let mut out = None;
        for (i, p) in fus.iter().enumerate() {
            out = d.push(p, i + 1 == fus.len()).unwrap();
        }
        let mut want = Vec::new();
        for n in [&sps[..], &pps[..], &idr[..]] {
            want.extend_from_slice(&[0, 0, 0, 1]);
            want.extend_from_slice(n);
        }
        assert_eq!(out, Some(want));

        assert_eq!(d.push(&fus[1], true), Err(DepacketizeError::OrphanFragment));
        assert_eq!(d.push(&[], true), Err(DepacketizeError::TooShort));
        assert_eq!(d.push(&[0x7c], true), Err(DepacketizeError::TooShort));
        assert_eq!(
            d.push(&[0x78, 0, 9, 0x67], true),
            Err(DepacketizeError::BadAggregation)
        );
        assert_eq!(
            d.push(&[0x78, 0, 0], true),
            Err(DepacketizeError::BadAggregation)
        );
        assert_eq!(
            d.push(&[0x79, 0, 0], true),
            Err(DepacketizeError::Unsupported(25))
        );
        // A reset drops the part of an access unit already gathered.
        assert_eq!(d.push(&[0x41, 1], false), Ok(None));
        d.reset();
        assert_eq!(
            d.push(&[0x41, 2], true),
            Ok(Some(vec![0, 0, 0, 1, 0x41, 2]))
        );
    }

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

    #[test]
    fn a_picture_without_an_end_is_dropped_at_the_size_cap() {
        let mut d = Depacketizer::new();
        let mut fu = vec![0x7c, 0x81];
        fu.extend(std::iter::repeat_n(7u8, 1200));
        assert_eq!(d.push(&fu, false), Ok(None));
        fu[1] = 0x01;
        let sent = crate::h265_rtp::tests::fill_until_refused(|m| d.push(&fu, m), 1200);
        assert!(sent > crate::h265_rtp::MAX_ACCESS_UNIT - 2000, "{sent}");
        let slice = [0x41u8, 9, 9];
        assert!(crate::h265_rtp::tests::fill_until_refused(|m| d.push(&slice, m), 3) > 1 << 20);
        assert_eq!(d.push(&slice, true), Ok(Some(vec![0, 0, 0, 1, 0x41, 9, 9])));
    }
}
