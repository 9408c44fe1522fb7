//! RTP payload inspection for the codecs medsfu forwards.
//!
//! Pure functions over a packet's payload: no IO, no clock, no allocation on the forwarding
//! path. They never panic on malformed input; a payload too short or inconsistent is simply
//! "not a keyframe start". The depacketizers, which rebuild pictures for recorders, return
//! an error for such a payload instead.

#![forbid(unsafe_code)]

mod h264;
pub mod h264_profile;
mod h265;
pub mod h265_rtp;
mod vp8;

pub use h264::is_keyframe_start as h264_is_keyframe_start;
pub use h264::payload_nal_units as h264_payload_nal_units;
pub use h264::Depacketizer as H264Depacketizer;
pub use h265::is_irap_access_unit as h265_is_irap_access_unit;
pub use h265::is_keyframe_start as h265_is_keyframe_start;
pub use h265::NalType as H265NalType;
pub use vp8::is_keyframe_start as vp8_is_keyframe_start;
pub use vp8::Depacketizer as Vp8Depacketizer;

/// A codec medsfu knows how to inspect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Codec {
    /// Opus audio (RFC 7587).
    Opus,
    /// H.264 / AVC video (RFC 6184).
    H264,
    /// H.265 / HEVC video (RFC 7798).
    H265,
    /// VP8 video (RFC 7741).
    Vp8,
}

impl Codec {
    /// Parses a MIME type such as `video/H265` (case-insensitive).
    pub fn from_mime(mime: &str) -> Option<Codec> {
        let sub = mime.rsplit('/').next().unwrap_or(mime);
        match sub.to_ascii_lowercase().as_str() {
            "opus" => Some(Codec::Opus),
            "h264" => Some(Codec::H264),
            "h265" | "hevc" => Some(Codec::H265),
            "vp8" => Some(Codec::Vp8),
            _ => None,
        }
    }

    /// The MIME type used in SDP for this codec.
    pub fn mime(self) -> &'static str {
        match self {
            Codec::Opus => "audio/opus",
            Codec::H264 => "video/H264",
            Codec::H265 => "video/H265",
            Codec::Vp8 => "video/VP8",
        }
    }

    /// Whether this is a video codec.
    pub fn is_video(self) -> bool {
        !matches!(self, Codec::Opus)
    }

    /// RTP clock rate in Hz.
    pub fn clock_rate(self) -> u32 {
        match self {
            Codec::Opus => 48_000,
            Codec::H264 | Codec::H265 | Codec::Vp8 => 90_000,
        }
    }

    /// Whether `payload` begins a frame a decoder can start from.
    ///
    /// Audio packets are always decodable on their own.
    pub fn is_keyframe_start(self, payload: &[u8]) -> bool {
        match self {
            Codec::Opus => true,
            Codec::H264 => h264::is_keyframe_start(payload),
            Codec::H265 => h265::is_keyframe_start(payload),
            Codec::Vp8 => vp8::is_keyframe_start(payload),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mime_round_trips_and_is_case_insensitive() {
        for c in [Codec::Opus, Codec::H264, Codec::H265, Codec::Vp8] {
            assert_eq!(Codec::from_mime(c.mime()), Some(c));
        }
        assert_eq!(Codec::from_mime("VIDEO/hevc"), Some(Codec::H265));
        assert_eq!(Codec::from_mime("video/AV1"), None);
    }

    #[test]
    fn audio_is_always_a_start() {
        assert!(Codec::Opus.is_keyframe_start(&[]));
        assert!(!Codec::H265.is_keyframe_start(&[]));
    }
}
