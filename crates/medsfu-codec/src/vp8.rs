//! VP8 RTP payloads (RFC 7741).

/// Whether a VP8 RTP payload is the first packet of a key frame.
pub fn is_keyframe_start(payload: &[u8]) -> bool {
    let Some(&d0) = payload.first() else {
        return false;
    };
    let extended = d0 & 0x80 != 0;
    let start = d0 & 0x10 != 0;
    let partition = d0 & 0x07;
    if !start || partition != 0 {
        return false;
    }
    let mut i = 1;
    if extended {
        let Some(&x) = payload.get(i) else {
            return false;
        };
        i += 1;
        if x & 0x80 != 0 {
            // PictureID: one byte, or two when its M bit is set.
            let Some(&pid) = payload.get(i) else {
                return false;
            };
            i += if pid & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            i += 1; // TL0PICIDX
        }
        if x & 0x30 != 0 {
            i += 1; // TID / KEYIDX
        }
    }
    // The P bit of the VP8 payload header is 0 for key frames.
    payload.get(i).is_some_and(|h| h & 0x01 == 0)
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
    fn extended_descriptor_with_tl0_and_tid() {
        assert!(is_keyframe_start(&[0x90, 0xE0, 0x05, 0x01, 0x20, 0x00]));
    }
}
