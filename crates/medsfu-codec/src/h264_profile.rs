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
    profile_of_bytes(byte(0)?, byte(2)?, byte(4)?)
}

/// The profile of `profile_idc`, the constraint flags and `level_idc` (as in an SPS).
fn profile_of_bytes(idc: u8, iop: u8, level: u8) -> Option<H264Profile> {
    if level == 0 {
        return None;
    }
    PATTERNS
        .iter()
        .find(|p| p.idc == idc && iop & p.mask == p.value)
        .map(|p| p.profile)
}

/// The profile of the first SPS in `sprop-parameter-sets` (base64 NAL units, comma-separated).
fn profile_of_sprop(sprop: &str) -> Option<H264Profile> {
    let sps = sprop.split(',').find_map(|ps| {
        let b = base64_prefix(ps.trim())?;
        (b[0] & 0x1f == 7).then_some(b)
    })?;
    profile_of_bytes(sps[1], sps[2], sps[3])
}

/// The first 6 bytes of a base64 (standard alphabet) text of at least 8 characters.
fn base64_prefix(text: &str) -> Option<[u8; 6]> {
    let digit = |c: u8| -> Option<u32> {
        Some(u32::from(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        }))
    };
    let t = text.as_bytes().get(..8)?;
    let mut out = [0u8; 6];
    for (group, chunk) in t.chunks(4).enumerate() {
        let mut n = 0u32;
        for &c in chunk {
            n = (n << 6) | digit(c)?;
        }
        out[group * 3] = (n >> 16) as u8;
        out[group * 3 + 1] = (n >> 8) as u8;
        out[group * 3 + 2] = n as u8;
    }
    Some(out)
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
        // Without profile-level-id the RFC's default applies, unless the offer carries the
        // stream's own SPS (GStreamer's rtph264pay sends sprop-parameter-sets only): then
        // the SPS says what is actually sent.
        let profile = match (param("profile-level-id"), param("sprop-parameter-sets")) {
            (Some(id), _) => profile_of(id)?,
            (None, Some(sprop)) => {
                profile_of_sprop(sprop).or_else(|| profile_of(DEFAULT_PROFILE_LEVEL_ID))?
            }
            (None, None) => profile_of(DEFAULT_PROFILE_LEVEL_ID)?,
        };
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

    /// GStreamer 1.22's rtph264pay offers no profile-level-id, only the SPS (captured here
    /// from x264 in constrained-baseline and in high configuration).
    #[test]
    fn without_profile_level_id_the_sps_tells() {
        const GST_CB: &str = "packetization-mode=1;sprop-parameter-sets=Z0LAHtoCgL/lwFqDAwNSgAAAAwCAAAAeR4sXUA==,aM48gA==";
        const GST_HIGH: &str = "packetization-mode=1;sprop-parameter-sets=Z2QAHqy0BQF/y4C1BgYGpQAAAwABAAADADyPFi6g,aO48sA==";
        assert_eq!(
            H264Format::from_fmtp(GST_CB).map(|f| f.profile),
            Some(ConstrainedBaseline)
        );
        assert_eq!(
            H264Format::from_fmtp(GST_HIGH).map(|f| f.profile),
            Some(High)
        );
        // The PPS first, then the SPS; junk falls back to the RFC's default.
        assert_eq!(
            H264Format::from_fmtp("sprop-parameter-sets=aO48sA==,Z2QAHqy0BQF").map(|f| f.profile),
            Some(High)
        );
        for junk in [
            "sprop-parameter-sets=",
            "sprop-parameter-sets=!!!!!!!!",
            "sprop-parameter-sets=Z2Q",
        ] {
            assert_eq!(
                H264Format::from_fmtp(junk).map(|f| f.profile),
                Some(ConstrainedBaseline),
                "{junk}"
            );
        }
        // An explicit profile-level-id wins over the SPS.
        assert_eq!(
            H264Format::from_fmtp(&format!("profile-level-id=4d001f;{GST_HIGH}"))
                .map(|f| f.profile),
            Some(Main)
        );
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
    /// decodes a publisher that sent the other. Captured on Debian: Chromium 156 (sendonly and
    /// recvonly offers), GStreamer 1.22 webrtcbin with x264 (publisher: SPS only, see above).
    /// Firefox ESR 153 offers no H.264 without its downloaded OpenH264 plugin (VP8 only here);
    /// the Firefox line below is the shape it writes with the plugin, to cover its key order.
    #[test]
    fn real_offers_match_per_profile() {
        const CHROMIUM_B_M1: &str =
            "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f";
        const CHROMIUM_B_M0: &str =
            "level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42001f";
        const CHROMIUM_CB_M1: &str =
            "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f";
        const CHROMIUM_CB_M0: &str =
            "level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42e01f";
        const CHROMIUM_MAIN: &str =
            "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=4d001f";
        const CHROMIUM_444: &str =
            "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=f4001f";
        const FIREFOX_SHAPE: &str =
            "profile-level-id=42e01f;level-asymmetry-allowed=1;packetization-mode=1";
        const GST_X264_CB: &str = "packetization-mode=1;sprop-parameter-sets=Z0LAHtoCgL/lwFqDAwNSgAAAAwCAAAAeR4sXUA==,aM48gA==";
        const GST_X264_HIGH: &str = "packetization-mode=1;sprop-parameter-sets=Z2QAHqy0BQF/y4C1BgYGpQAAAwABAAADADyPFi6g,aO48sA==";
        const ISSUE_42C01F: &str = "packetization-mode=1;profile-level-id=42c01f";
        const MEDSFU_HIGH: &str =
            "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=64001f";
        let f = |s: &str| H264Format::from_fmtp(s).unwrap_or_else(|| panic!("{s}"));
        // (receiver's answer, what the publisher sends, decodes?)
        let table = [
            // The issue's case: 42c01f, 42e01f and 42001f never matched by 4 digits.
            (CHROMIUM_CB_M1, ISSUE_42C01F, true),
            (CHROMIUM_B_M1, ISSUE_42C01F, true),
            (CHROMIUM_B_M1, CHROMIUM_CB_M1, true),
            (CHROMIUM_CB_M1, CHROMIUM_B_M1, true),
            (CHROMIUM_CB_M1, GST_X264_CB, true),
            (FIREFOX_SHAPE, GST_X264_CB, true),
            (FIREFOX_SHAPE, CHROMIUM_B_M1, true),
            (CHROMIUM_MAIN, CHROMIUM_CB_M1, true),
            (MEDSFU_HIGH, CHROMIUM_MAIN, true),
            (MEDSFU_HIGH, GST_X264_HIGH, true),
            (CHROMIUM_444, GST_X264_HIGH, true),
            // A baseline-only receiver cannot take High or Main.
            (CHROMIUM_CB_M1, GST_X264_HIGH, false),
            (CHROMIUM_B_M1, CHROMIUM_MAIN, false),
            (CHROMIUM_MAIN, GST_X264_HIGH, false),
            (FIREFOX_SHAPE, MEDSFU_HIGH, false),
            // Packetization modes never mix.
            (CHROMIUM_CB_M0, CHROMIUM_CB_M1, false),
            (CHROMIUM_B_M0, GST_X264_CB, false),
            (CHROMIUM_B_M0, CHROMIUM_CB_M0, true),
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
