//! VP8 RTP payloads (RFC 7741).

use crate::h265_rtp::{DepacketizeError, MAX_ACCESS_UNIT};

/// The length of the VP8 payload descriptor at the start of an RTP payload, if the
/// payload holds all of it.
fn descriptor_len(payload: &[u8]) -> Option<usize> {
    let d0 = *payload.first()?;
    let mut i = 1;
    if d0 & 0x80 != 0 {
        let x = *payload.get(i)?;
        i += 1;
        if x & 0x80 != 0 {
            // PictureID: one byte, or two when its M bit is set.
            let pid = *payload.get(i)?;
            i += if pid & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            i += 1; // TL0PICIDX
        }
        if x & 0x30 != 0 {
            i += 1; // TID / KEYIDX
        }
    }
    (i <= payload.len()).then_some(i)
}

/// Whether the payload starts a frame: the S bit set in partition 0.
fn starts_frame(payload: &[u8]) -> bool {
    payload
        .first()
        .is_some_and(|d0| d0 & 0x10 != 0 && d0 & 0x07 == 0)
}

/// Whether a VP8 RTP payload is the first packet of a key frame.
pub fn is_keyframe_start(payload: &[u8]) -> bool {
    if !starts_frame(payload) {
        return false;
    }
    // The P bit of the VP8 payload header is 0 for key frames.
    descriptor_len(payload)
        .and_then(|i| payload.get(i))
        .is_some_and(|h| h & 0x01 == 0)
}

/// Rebuilds VP8 frames from RTP payloads (RFC 7741): the payloads after their
/// descriptors, from a frame's start to the packet with the marker bit.
#[derive(Debug, Default)]
pub struct Depacketizer {
    frame: Vec<u8>,
    started: bool,
}

impl Depacketizer {
    /// A depacketizer with nothing buffered.
    pub fn new() -> Depacketizer {
        Depacketizer::default()
    }

    /// Forgets a partly received frame (after a lost packet).
    pub fn reset(&mut self) {
        self.frame.clear();
        self.started = false;
    }

    /// Adds one RTP payload; with `marker`, returns the finished frame.
    pub fn push(
        &mut self,
        payload: &[u8],
        marker: bool,
    ) -> Result<Option<Vec<u8>>, DepacketizeError> {
        let at = descriptor_len(payload).ok_or(DepacketizeError::TooShort)?;
        if starts_frame(payload) {
            // A frame whose end was lost is dropped for the new one.
            self.reset();
            self.started = true;
        } else if !self.started {
            return Err(DepacketizeError::OrphanFragment);
        }
        if self.frame.len() + payload.len() - at > MAX_ACCESS_UNIT {
            // The megabytes an endless frame grew to are given back.
            self.frame = Vec::new();
            self.started = false;
            return Err(DepacketizeError::TooLarge);
        }
        self.frame.extend_from_slice(&payload[at..]);
        if marker {
            self.started = false;
            if !self.frame.is_empty() {
                return Ok(Some(std::mem::take(&mut self.frame)));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_descriptor() {
        assert!(is_keyframe_start(&[0x10, 0x00, 0x9d]));
        assert!(!is_keyframe_start(&[0x10, 0x01, 0x9d])); // inter frame
        assert!(!is_keyframe_start(&[0x00, 0x00])); // not a start
        assert!(!is_keyframe_start(&[0x11, 0x00])); // partition 1
    }

    #[test]
    fn extended_descriptor_with_two_byte_picture_id() {
        // X=1 S=1; I=1; PictureID M=1 (two bytes); then payload header with P=0.
        assert!(is_keyframe_start(&[0x90, 0x80, 0x81, 0x23, 0x00]));
        assert!(!is_keyframe_start(&[0x90, 0x80, 0x81, 0x23, 0x01]));
        assert!(!is_keyframe_start(&[0x90, 0x80, 0x81])); // truncated
    }

    #[test]
    fn frames_are_reassembled_and_broken_ones_dropped() {
        let mut d = Depacketizer::new();
        // Extended descriptor, two-byte picture id; the frame spans three packets.
        assert_eq!(
            d.push(&[0x90, 0x80, 0x81, 0x23, 0xAA, 0xBB], false),
            Ok(None)
        );
        assert_eq!(d.push(&[0x80, 0x80, 0x81, 0x23, 0xCC], false), Ok(None));
        assert_eq!(
            d.push(&[0x00, 0xDD], true),
            Ok(Some(vec![0xAA, 0xBB, 0xCC, 0xDD]))
        );
        // A middle packet without its start is refused; so is a cut descriptor.
        assert_eq!(
            d.push(&[0x00, 0xEE], true),
            Err(DepacketizeError::OrphanFragment)
        );
        assert_eq!(
            d.push(&[0x90, 0x80, 0x81], true),
            Err(DepacketizeError::TooShort)
        );
        assert_eq!(d.push(&[], true), Err(DepacketizeError::TooShort));
        // A frame that lost its end gives way to the next start.
        assert_eq!(d.push(&[0x10, 0x01], false), Ok(None));
        assert_eq!(d.push(&[0x10, 0x02], true), Ok(Some(vec![0x02])));
        // After a reset the rest of a frame is an orphan.
        assert_eq!(d.push(&[0x10, 0x03], false), Ok(None));
        d.reset();
        assert_eq!(
            d.push(&[0x00, 0x04], true),
            Err(DepacketizeError::OrphanFragment)
        );
    }

    #[test]
    fn extended_descriptor_with_tl0_and_tid() {
        assert!(is_keyframe_start(&[0x90, 0xE0, 0x05, 0x01, 0x20, 0x00]));
    }

    #[test]
    fn a_frame_without_an_end_is_dropped_at_the_size_cap() {
        let mut d = Depacketizer::new();
        let mut start = vec![0x10, 0x00];
        start.extend(std::iter::repeat_n(7u8, 1200));
        assert_eq!(d.push(&start, false), Ok(None));
        let mut more = vec![0x00];
        more.extend(std::iter::repeat_n(7u8, 1200));
        let sent = crate::h265_rtp::tests::fill_until_refused(|m| d.push(&more, m), 1200);
        assert!(sent > MAX_ACCESS_UNIT - 2500, "{sent}");
        assert!(
            d.frame.capacity() == 0 && !d.started,
            "dropped, memory given back"
        );
        // A frame after a start without its end is an orphan until the next start.
        assert_eq!(d.push(&more, true), Err(DepacketizeError::OrphanFragment));
        assert_eq!(d.push(&start, true).unwrap().map(|f| f.len()), Some(1201));
    }
}
