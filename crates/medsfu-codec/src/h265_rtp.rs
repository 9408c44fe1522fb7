//! H.265 over RTP (RFC 7798): Annex-B splitting, a payloader and a depacketizer.
//!
//! The payloader sends each NAL unit as a single-NAL packet when it fits the MTU and as
//! fragmentation units (FU) otherwise; the depacketizer accepts single NAL, aggregation
//! (AP) and FU packets and rebuilds Annex-B access units. DONL is not used (the default
//! `sprop-max-don-diff=0`).

use crate::h265::NalType;

const START_CODE: [u8; 4] = [0, 0, 0, 1];
const FU_TYPE: u8 = 49;

/// Where the last start code (with its leading zero byte, if any) of a NAL unit whose
/// first header byte satisfies `wanted` begins in an Annex-B byte stream: everything before
/// it is complete when the stream is cut at access-unit delimiters (H.264 or H.265).
pub fn last_start_code(stream: &[u8], wanted: impl Fn(u8) -> bool) -> Option<usize> {
    let mut found = None;
    let mut i = 0;
    while i + 3 < stream.len() {
        if stream[i] == 0 && stream[i + 1] == 0 && stream[i + 2] == 1 {
            if wanted(stream[i + 3]) {
                found = Some(if i > 0 && stream[i - 1] == 0 {
                    i - 1
                } else {
                    i
                });
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    found
}

/// The NAL units of an Annex-B byte stream, without start codes.
pub fn annexb_nal_units(stream: &[u8]) -> Vec<&[u8]> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= stream.len() {
        if stream[i] == 0 && stream[i + 1] == 0 && stream[i + 2] == 1 {
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    let mut out = Vec::with_capacity(starts.len());
    for (k, &s) in starts.iter().enumerate() {
        let mut end = starts.get(k + 1).map_or(stream.len(), |&n| n - 3);
        // Trailing zero bytes belong to the next (4-byte) start code.
        while end > s && stream[end - 1] == 0 {
            end -= 1;
        }
        if end > s + 1 {
            out.push(&stream[s..end]);
        }
    }
    out
}

fn nal_type(nal: &[u8]) -> u8 {
    nal.first().map_or(0, |b| (b >> 1) & 0x3F)
}

fn is_vcl(nal: &[u8]) -> bool {
    nal_type(nal) < 32
}

/// Groups NAL units into access units (one picture each).
///
/// A new access unit starts at a parameter set, AUD or prefix SEI, or at a slice whose
/// `first_slice_segment_in_pic_flag` is set, once the current one already has a slice.
pub fn access_units<'a>(nals: &[&'a [u8]]) -> Vec<Vec<&'a [u8]>> {
    let mut out: Vec<Vec<&[u8]>> = Vec::new();
    let mut cur: Vec<&[u8]> = Vec::new();
    let mut has_vcl = false;
    for &nal in nals {
        let t = nal_type(nal);
        let starts_au = if is_vcl(nal) {
            nal.get(2).is_some_and(|b| b & 0x80 != 0)
        } else {
            matches!(t, 32..=35 | 39)
        };
        if starts_au && has_vcl {
            out.push(std::mem::take(&mut cur));
            has_vcl = false;
        }
        has_vcl |= is_vcl(nal);
        cur.push(nal);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// RTP payloads for one access unit; the last one carries the marker bit.
pub fn payload_access_unit(au: &[&[u8]], mtu: usize) -> Vec<Vec<u8>> {
    let mtu = mtu.max(16);
    let mut out = Vec::new();
    for nal in au {
        if nal.len() < 3 {
            continue;
        }
        if nal.len() <= mtu {
            out.push(nal.to_vec());
            continue;
        }
        let t = nal_type(nal);
        // PayloadHdr: the NAL's F, LayerId and TID with type FU; then the FU header.
        let hdr0 = (nal[0] & 0x81) | (FU_TYPE << 1);
        let hdr1 = nal[1];
        let body = &nal[2..];
        let chunk = mtu - 3;
        let n = body.len().div_ceil(chunk);
        for (i, part) in body.chunks(chunk).enumerate() {
            let mut fu = t;
            if i == 0 {
                fu |= 0x80;
            }
            if i + 1 == n {
                fu |= 0x40;
            }
            let mut p = Vec::with_capacity(part.len() + 3);
            p.extend_from_slice(&[hdr0, hdr1, fu]);
            p.extend_from_slice(part);
            out.push(p);
        }
    }
    out
}

/// Why a payload could not be depacketized.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DepacketizeError {
    /// Shorter than the payload's header (a NAL unit header, a VP8 descriptor).
    #[error("payload shorter than its header")]
    TooShort,
    /// An aggregation unit's size runs past the payload.
    #[error("aggregation unit overruns the packet")]
    BadAggregation,
    /// A middle or end fragment arrived without its start (loss).
    #[error("fragment without its start")]
    OrphanFragment,
    /// A payload type the depacketizer does not handle (H.265 PACI, H.264 interleaved
    /// mode, reserved types).
    #[error("unsupported payload type {0}")]
    Unsupported(u8),
    /// The picture being rebuilt grew past [`MAX_ACCESS_UNIT`] without its end: a
    /// publisher that never sets the marker bit. What was buffered is dropped.
    #[error("picture larger than {MAX_ACCESS_UNIT} bytes")]
    TooLarge,
}

/// The largest picture a depacketizer rebuilds (8 MiB). A 4K H.265 keyframe at a high
/// bitrate is well under 2 MiB; beyond this a publisher is breaking the stream, and
/// buffering more would let it fill the server's memory.
pub const MAX_ACCESS_UNIT: usize = 8 << 20;

/// An access unit being rebuilt in Annex-B form from RTP payloads, and the NAL unit being
/// rebuilt from fragments: what the H.264 and H.265 depacketizers share.
#[derive(Debug, Default)]
pub(crate) struct Assembly {
    au: Vec<u8>,
    fragment: Option<Vec<u8>>,
}

impl Assembly {
    /// Forgets the partly received access unit and NAL unit.
    pub(crate) fn reset(&mut self) {
        self.au.clear();
        self.fragment = None;
    }

    /// Drops an oversized access unit and gives its memory back (megabytes that a
    /// publisher without picture ends made the buffer grow to).
    fn refuse(&mut self) -> DepacketizeError {
        self.au = Vec::new();
        self.fragment = None;
        DepacketizeError::TooLarge
    }

    /// Adds a whole NAL unit to the access unit; past [`MAX_ACCESS_UNIT`] the access
    /// unit is dropped.
    pub(crate) fn push_nal(&mut self, nal: &[u8]) -> Result<(), DepacketizeError> {
        if self.au.len() + START_CODE.len() + nal.len() > MAX_ACCESS_UNIT {
            return Err(self.refuse());
        }
        self.au.extend_from_slice(&START_CODE);
        self.au.extend_from_slice(nal);
        Ok(())
    }

    /// Handles one fragment: `start` begins the NAL unit with its rebuilt `header`, a
    /// later fragment continues it (an error without a start: loss), `end` adds it to the
    /// access unit.
    pub(crate) fn fragment(
        &mut self,
        start: bool,
        end: bool,
        header: &[u8],
        body: &[u8],
    ) -> Result<(), DepacketizeError> {
        if start {
            let mut nal = Vec::with_capacity(header.len() + body.len());
            nal.extend_from_slice(header);
            nal.extend_from_slice(body);
            self.fragment = Some(nal);
        } else {
            let nal = self
                .fragment
                .as_mut()
                .ok_or(DepacketizeError::OrphanFragment)?;
            if self.au.len() + nal.len() + body.len() > MAX_ACCESS_UNIT {
                return Err(self.refuse());
            }
            nal.extend_from_slice(body);
        }
        if end {
            if let Some(nal) = self.fragment.take() {
                self.push_nal(&nal)?;
            }
        }
        Ok(())
    }

    /// Forgets an unfinished fragmented NAL unit.
    pub(crate) fn drop_fragment(&mut self) {
        self.fragment = None;
    }

    /// With the marker, the finished access unit (if it holds anything).
    pub(crate) fn finish(&mut self, marker: bool) -> Option<Vec<u8>> {
        (marker && !self.au.is_empty()).then(|| std::mem::take(&mut self.au))
    }
}

/// Rebuilds Annex-B access units from RTP payloads.
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
        if payload.len() < 3 {
            return Err(DepacketizeError::TooShort);
        }
        match NalType::from_header_byte(payload[0]) {
            NalType::Aggregation => {
                let mut rest = &payload[2..];
                while !rest.is_empty() {
                    if rest.len() < 2 {
                        return Err(DepacketizeError::BadAggregation);
                    }
                    let size = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                    let nal = rest
                        .get(2..2 + size)
                        .ok_or(DepacketizeError::BadAggregation)?;
                    self.assembly.push_nal(nal)?;
                    rest = &rest[2 + size..];
                }
            }
            NalType::Fragment => {
                let fu = payload[2];
                let header = [(payload[0] & 0x81) | ((fu & 0x3F) << 1), payload[1]];
                self.assembly
                    .fragment(fu & 0x80 != 0, fu & 0x40 != 0, &header, &payload[3..])?;
            }
            NalType::Other(t) if t == 50 => return Err(DepacketizeError::Unsupported(t)),
            _ => self.assembly.push_nal(payload)?,
        }
        Ok(self.assembly.finish(marker))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const AP_TYPE: u8 = 48;

    fn nal(t: u8, first_slice: bool, len: usize) -> Vec<u8> {
        let mut v = vec![t << 1, 1];
        v.push(if first_slice { 0x80 } else { 0x00 });
        v.extend((0..len).map(|i| (i % 200 + 1) as u8));
        v
    }

    #[test]
    fn splits_annexb_with_three_and_four_byte_start_codes() {
        let mut s = vec![0, 0, 0, 1];
        s.extend(nal(32, false, 5));
        s.extend([0, 0, 1]);
        s.extend(nal(33, false, 5));
        s.extend([0, 0, 0, 1]);
        s.extend(nal(19, true, 5));
        let n = annexb_nal_units(&s);
        assert_eq!(n.len(), 3);
        assert_eq!(nal_type(n[0]), 32);
        assert_eq!(n[1].len(), 8);
        assert_eq!(nal_type(n[2]), 19);
    }

    #[test]
    fn groups_access_units() {
        let (vps, sps, pps) = (nal(32, false, 4), nal(33, false, 4), nal(34, false, 4));
        let (idr, p1a, p1b, p2) = (
            nal(19, true, 9),
            nal(1, true, 9),
            nal(1, false, 9),
            nal(1, true, 9),
        );
        let nals: Vec<&[u8]> = vec![&vps, &sps, &pps, &idr, &p1a, &p1b, &p2];
        let aus = access_units(&nals);
        assert_eq!(aus.len(), 3);
        assert_eq!(aus[0].len(), 4);
        assert_eq!(aus[1].len(), 2, "two slices of one picture");
    }

    #[test]
    fn payloads_round_trip_through_the_depacketizer() {
        let (vps, big) = (nal(32, false, 10), nal(19, true, 5000));
        let au: Vec<&[u8]> = vec![&vps, &big];
        let packets = payload_access_unit(&au, 1200);
        assert!(packets.len() >= 6);
        assert!(packets.iter().all(|p| p.len() <= 1200));
        assert!(crate::h265_is_keyframe_start(&packets[0]));
        assert!(
            crate::h265_is_keyframe_start(&packets[1]),
            "FU start of an IDR"
        );
        let mut d = Depacketizer::new();
        let mut out = None;
        for (i, p) in packets.iter().enumerate() {
            out = d.push(p, i + 1 == packets.len()).unwrap();
        }
        let mut want = vec![0, 0, 0, 1];
        want.extend(&vps);
        want.extend([0, 0, 0, 1]);
        want.extend(&big);
        assert_eq!(out.unwrap(), want);
    }

    #[test]
    fn aggregation_packets_are_unpacked() {
        let (a, b) = (nal(32, false, 3), nal(33, false, 4));
        let mut ap = vec![AP_TYPE << 1, 1];
        for n in [&a, &b] {
            ap.extend((n.len() as u16).to_be_bytes());
            ap.extend(n.iter());
        }
        let mut d = Depacketizer::new();
        let au = d.push(&ap, true).unwrap().unwrap();
        assert_eq!(annexb_nal_units(&au), vec![&a[..], &b[..]]);
        let mut bad = ap.clone();
        bad[3] = 200;
        assert_eq!(d.push(&bad, true), Err(DepacketizeError::BadAggregation));
    }

    #[test]
    fn a_lost_fragment_start_is_an_error_not_garbage() {
        let big = nal(1, true, 3000);
        let packets = payload_access_unit(&[&big], 1000);
        let mut d = Depacketizer::new();
        assert_eq!(
            d.push(&packets[1], false),
            Err(DepacketizeError::OrphanFragment)
        );
        assert_eq!(d.push(&[1], false), Err(DepacketizeError::TooShort));
    }

    /// Pushes `payload` without the marker until the depacketizer refuses it, and
    /// returns how many bytes it took first.
    pub(crate) fn fill_until_refused(
        mut push: impl FnMut(bool) -> Result<Option<Vec<u8>>, DepacketizeError>,
        each: usize,
    ) -> usize {
        let mut sent = 0;
        loop {
            match push(false) {
                Ok(None) => sent += each,
                Err(DepacketizeError::TooLarge) => return sent,
                other => panic!("after {sent} bytes: {other:?}"),
            }
            assert!(sent <= 2 * MAX_ACCESS_UNIT, "never refused");
        }
    }

    #[test]
    fn a_picture_without_an_end_is_dropped_at_the_size_cap() {
        let mut d = Depacketizer::new();
        // Whole NAL units, none with the marker: a publisher that never ends a picture.
        let slice = nal(1, true, 1200);
        let sent = fill_until_refused(|m| d.push(&slice, m), slice.len());
        // Each NAL unit is buffered with its 4-byte start code.
        assert!(
            sent > MAX_ACCESS_UNIT / 1207 * 1203 - 2000 && sent <= MAX_ACCESS_UNIT,
            "{sent}"
        );
        assert_eq!(d.assembly.au.capacity(), 0, "the memory is given back");
        // One endless fragmented NAL unit is refused the same way.
        let mut fu = vec![49 << 1, 1, 0x80 | 1];
        fu.extend(std::iter::repeat_n(7u8, 1200));
        assert_eq!(d.push(&fu, false), Ok(None));
        fu[2] = 1;
        let sent = fill_until_refused(|m| d.push(&fu, m), 1200);
        assert!(sent > MAX_ACCESS_UNIT - 2000, "{sent}");
        assert!(d.assembly.fragment.is_none() && d.assembly.au.is_empty());
        // The next picture is rebuilt as usual.
        assert_eq!(
            d.push(&slice, true).unwrap().map(|p| p.len()),
            Some(4 + slice.len())
        );
    }
}
