//! H.264 `profile-level-id` and `packetization-mode` as negotiated in SDP (RFC 6184 8.1).
//!
//! The profile is not the first four hex digits: it is `profile_idc` together with the
//! constraint flags of `profile-iop`, read the way libwebrtc reads them, so that `42c01f`,
//! `42e01f` (both Constrained Baseline) and `42001f` (Baseline) are told apart correctly.
//! The level is not part of the match: with `level-asymmetry-allowed` a receiver takes a
//! sender's stream at any level, and medsfu only forwards what the publisher already sends.

use std::fmt;

/// An H.264 profile as far as decoders care (libwebrtc's `H264Profile`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum H264Profile {
    /// Constrained Baseline: what every WebRTC endpoint decodes.
    ConstrainedBaseline,
    /// Baseline (may use FMO/ASO, which no WebRTC encoder does).
    Baseline,
    /// Main.
    Main,
    /// Constrained High.
    ConstrainedHigh,
    /// High.
    High,
    /// High 4:4:4 Predictive.
    PredictiveHigh444,
}

impl fmt::Display for H264Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            H264Profile::ConstrainedBaseline => "constrained-baseline",
            H264Profile::Baseline => "baseline",
            H264Profile::Main => "main",
            H264Profile::ConstrainedHigh => "constrained-high",
            H264Profile::High => "high",
            H264Profile::PredictiveHigh444 => "predictive-high-444",
        })
    }
}

/// `profile-level-id` when an offer has none (RFC 6184 8.1: Constrained Baseline, 3.1).
pub const DEFAULT_PROFILE_LEVEL_ID: &str = "42e01f";

/// Bit pattern over `profile-iop`: `mask` selects the bits that must equal `value`.
struct Pattern {
    idc: u8,
    mask: u8,
    value: u8,
    profile: H264Profile,
}

/// Builds a pattern from an 8-character string of `0`, `1` and `x` (most significant first).
const fn pattern(idc: u8, bits: &[u8; 8], profile: H264Profile) -> Pattern {
    let mut mask = 0u8;
    let mut value = 0u8;
    let mut i = 0;
    while i < 8 {
        let bit = 0x80 >> i;
        match bits[i] {
            b'0' => mask |= bit,
            b'1' => {
                mask |= bit;
                value |= bit;
            }
            _ => {}
        }
        i += 1;
    }
    Pattern {
        idc,
        mask,
        value,
        profile,
    }
}

/// libwebrtc's table (`kProfilePatterns`, api/video_codecs/h264_profile_level_id.cc), in its
/// order: the first match wins.
const PATTERNS: [Pattern; 9] = [
    pattern(0x42, b"x1xx0000", H264Profile::ConstrainedBaseline),
    pattern(0x4D, b"1xxx0000", H264Profile::ConstrainedBaseline),
    pattern(0x58, b"11xx0000", H264Profile::ConstrainedBaseline),
    pattern(0x42, b"x0xx0000", H264Profile::Baseline),
    pattern(0x58, b"10xx0000", H264Profile::Baseline),
    pattern(0x4D, b"0x0x0000", H264Profile::Main),
    pattern(0x64, b"00000000", H264Profile::High),
    pattern(0x64, b"00001100", H264Profile::ConstrainedHigh),
    pattern(0xF4, b"00000000", H264Profile::PredictiveHigh444),
];

/// The profile named by a `profile-level-id` value (six hex digits); `None` if it names none.
pub fn profile_of(profile_level_id: &str) -> Option<H264Profile> {
    let v = profile_level_id.trim();
    if v.len() != 6 || !v.is_ascii() {
        return None;
    }
    let byte = |i: usize| u8::from_str_radix(v.get(i..i + 2)?, 16).ok();
    let (idc, iop, level) = (byte(0)?, byte(2)?, byte(4)?);
    if level == 0 {
        return None;
    }
    PATTERNS
        .iter()
        .find(|p| p.idc == idc && iop & p.mask == p.value)
        .map(|p| p.profile)
}

/// The H.264 parameters of one `a=fmtp` line that decide whether a stream fits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct H264Format {
    /// The profile (from `profile-level-id`, or the RFC's default when absent).
    pub profile: H264Profile,
    /// `packetization-mode` (0 when absent).
    pub packetization_mode: u8,
}

impl H264Format {
    /// Reads an `a=fmtp` parameter list (`key=value;key=value`); `None` when its
    /// `profile-level-id` or `packetization-mode` cannot be read.
    pub fn from_fmtp(fmtp: &str) -> Option<H264Format> {
        let param = |key: &str| {
            fmtp.split(';')
                .filter_map(|kv| kv.trim().split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case(key))
                .map(|(_, v)| v.trim())
        };
        let profile = profile_of(param("profile-level-id").unwrap_or(DEFAULT_PROFILE_LEVEL_ID))?;
        let packetization_mode = match param("packetization-mode") {
            None => 0,
            Some(v) => v.parse().ok()?,
        };
        Some(H264Format {
            profile,
            packetization_mode,
        })
    }

    /// Whether a receiver that negotiated `self` decodes a stream sent as `sent`.
    ///
    /// The packetization mode must be the same. Every profile decodes Constrained Baseline,
    /// and Baseline is taken as Constrained Baseline (as libwebrtc's own encoders send it:
    /// no WebRTC encoder uses FMO or ASO); High decodes Main and Constrained High; a
    /// profile decodes itself. The level is not compared (see the module comment).
    pub fn decodes(&self, sent: &H264Format) -> bool {
        use H264Profile::*;
        if self.packetization_mode != sent.packetization_mode {
            return false;
        }
        let base = |p: H264Profile| matches!(p, ConstrainedBaseline | Baseline);
        match (self.profile, sent.profile) {
            (a, b) if a == b => true,
            (_, s) if base(s) => true,
            (High | PredictiveHigh444, Main | ConstrainedHigh | High) => true,
            (PredictiveHigh444, _) => true,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use H264Profile::*;

    #[test]
    fn profiles_follow_the_constraint_flags_not_the_first_four_digits() {
        for (id, want) in [
            ("42e01f", Some(ConstrainedBaseline)),
            ("42c01f", Some(ConstrainedBaseline)),
            ("42C02A", Some(ConstrainedBaseline)),
            ("42001f", Some(Baseline)),
            ("42801e", Some(Baseline)),
            ("4d001f", Some(Main)),
            ("4d401f", Some(Main)),
            ("4d801f", Some(ConstrainedBaseline)),
            ("58c01f", Some(ConstrainedBaseline)),
            ("64001f", Some(High)),
            ("640c1f", Some(ConstrainedHigh)),
            ("640032", Some(High)),
            ("f4001f", Some(PredictiveHigh444)),
            // Reserved bits set, unknown profiles, levels and lengths.
            ("42e11f", None),
            ("6e001f", None),
            ("42e000", None),
            ("42e01", None),
            ("42e01f0", None),
            ("zze01f", None),
            ("", None),
            ("4é01f", None),
        ] {
            assert_eq!(profile_of(id), want, "{id}");
        }
    }

    #[test]
    fn a_format_defaults_to_constrained_baseline_mode_0() {
        assert_eq!(
            H264Format::from_fmtp(""),
            Some(H264Format {
                profile: ConstrainedBaseline,
                packetization_mode: 0
            })
        );
        assert_eq!(
            H264Format::from_fmtp(" packetization-mode = 1 ; Profile-Level-Id=640c1f"),
            Some(H264Format {
                profile: ConstrainedHigh,
                packetization_mode: 1
            })
        );
        assert_eq!(H264Format::from_fmtp("packetization-mode=x"), None);
        assert_eq!(H264Format::from_fmtp("profile-level-id=123"), None);
    }

    /// The `a=fmtp` lines of real offers, and whether a receiver that answered with the one
    /// decodes a publisher that sent the other. Sources: Chromium 156, Firefox ESR 153 and
    /// GStreamer 1.22 webrtcbin offers captured on Debian (docs/webrtc-clients.md), ffmpeg's
    /// WHIP muxer (it writes the SPS's own profile and flags: 42e01f for x264 baseline
    /// streams), and medsfu's own codec table.
    #[test]
    fn real_offers_match_per_profile() {
        const CHROMIUM_CB_M1: &str =
            "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f";
        const CHROMIUM_B_M1: &str =
            "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f";
        const CHROMIUM_CB_M0: &str =
            "level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42e01f";
        const CHROMIUM_MAIN: &str =
            "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=4d001f";
        const CHROMIUM_HIGH: &str =
            "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=64001f";
        const FIREFOX: &str =
            "profile-level-id=42e01f;level-asymmetry-allowed=1;packetization-mode=1";
        const FIREFOX_M0: &str = "profile-level-id=42e01f;level-asymmetry-allowed=1";
        const GST_X264_CB: &str = "packetization-mode=1;profile-level-id=42c01f";
        const GST_X264_HIGH: &str = "packetization-mode=1;profile-level-id=640028";
        const FFMPEG: &str =
            "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f";
        let f = |s: &str| H264Format::from_fmtp(s).unwrap_or_else(|| panic!("{s}"));
        // (receiver's answer, what the publisher sends, decodes?)
        let table = [
            (CHROMIUM_CB_M1, GST_X264_CB, true),
            (CHROMIUM_B_M1, GST_X264_CB, true),
            (FIREFOX, GST_X264_CB, true),
            (GST_X264_CB, CHROMIUM_CB_M1, true),
            (GST_X264_CB, FFMPEG, true),
            (CHROMIUM_CB_M1, CHROMIUM_B_M1, true),
            (CHROMIUM_MAIN, CHROMIUM_CB_M1, true),
            (CHROMIUM_HIGH, CHROMIUM_CB_M1, true),
            (CHROMIUM_HIGH, CHROMIUM_MAIN, true),
            (CHROMIUM_HIGH, GST_X264_HIGH, true),
            // A baseline-only receiver cannot take High or Main.
            (CHROMIUM_CB_M1, GST_X264_HIGH, false),
            (FIREFOX, CHROMIUM_HIGH, false),
            (CHROMIUM_B_M1, CHROMIUM_MAIN, false),
            (CHROMIUM_MAIN, CHROMIUM_HIGH, false),
            // Packetization modes never mix.
            (CHROMIUM_CB_M0, CHROMIUM_CB_M1, false),
            (FIREFOX_M0, GST_X264_CB, false),
            (CHROMIUM_CB_M0, FIREFOX_M0, true),
        ];
        for (receiver, sent, want) in table {
            assert_eq!(
                f(receiver).decodes(&f(sent)),
                want,
                "receiver {receiver} / sent {sent}"
            );
        }
    }
}
