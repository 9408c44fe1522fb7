//! H.265 parameter sets: collecting VPS/SPS/PPS from an access unit, reading the few SPS
//! fields a container needs, and building the `hvcC` decoder configuration record
//! (ISO/IEC 14496-15 §8.3.3.1).
//!
//! Only what a muxer needs is parsed: the SPS is read up to the bit depths, the VPS and PPS
//! are carried as opaque bytes.

use medsfu_codec::h265_rtp::annexb_nal_units;

pub use crate::bits::remove_emulation_prevention;
use crate::bits::{BitReader, SpsError};

/// NAL unit type of a video parameter set.
pub const NAL_VPS: u8 = 32;
/// NAL unit type of a sequence parameter set.
pub const NAL_SPS: u8 = 33;
/// NAL unit type of a picture parameter set.
pub const NAL_PPS: u8 = 34;
/// NAL unit type of an access unit delimiter.
pub const NAL_AUD: u8 = 35;

/// The type of an H.265 NAL unit, from its first header byte (0 for an empty slice).
pub fn nal_type(nal: &[u8]) -> u8 {
    nal.first().map_or(0, |b| (b >> 1) & 0x3F)
}

/// One VPS, SPS and PPS, each a whole NAL unit (header and emulation prevention kept).
///
/// Only one of each is kept: medsfu's publishers use a single parameter set of each kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParameterSets {
    /// The video parameter set NAL unit.
    pub vps: Vec<u8>,
    /// The sequence parameter set NAL unit.
    pub sps: Vec<u8>,
    /// The picture parameter set NAL unit.
    pub pps: Vec<u8>,
}

impl ParameterSets {
    /// The parameter sets among `nals` (NAL units without start codes), if all three are
    /// there; when one occurs twice the last wins, being the one next to the picture.
    pub fn from_nal_units(nals: &[&[u8]]) -> Option<ParameterSets> {
        let last = |t: u8| nals.iter().rev().find(|n| nal_type(n) == t);
        Some(ParameterSets {
            vps: last(NAL_VPS)?.to_vec(),
            sps: last(NAL_SPS)?.to_vec(),
            pps: last(NAL_PPS)?.to_vec(),
        })
    }

    /// The parameter sets of an Annex-B access unit, if all three are there.
    pub fn from_annexb(au: &[u8]) -> Option<ParameterSets> {
        ParameterSets::from_nal_units(&annexb_nal_units(au))
    }

    /// The fields of the SPS a container needs.
    pub fn sps_info(&self) -> Result<SpsInfo, SpsError> {
        parse_sps(&self.sps)
    }

    /// The `HEVCDecoderConfigurationRecord` (the body of an `hvcC` box) with 4-byte NAL
    /// lengths and one complete array each for the VPS, SPS and PPS.
    pub fn decoder_configuration_record(&self, sps: &SpsInfo) -> Result<Vec<u8>, SpsError> {
        let mut r = Vec::with_capacity(23 + 15 + self.vps.len() + self.sps.len() + self.pps.len());
        r.push(1); // configurationVersion
        r.extend_from_slice(&sps.general); // profile space/tier/idc, compat, constraints, level
        r.extend_from_slice(&0xF000u16.to_be_bytes()); // reserved 1111, min_spatial_segmentation 0
        r.push(0xFC); // reserved 111111, parallelismType 0 (unknown)
        r.push(0xFC | (sps.chroma_format_idc & 0x03));
        r.push(0xF8 | (sps.bit_depth_luma.saturating_sub(8) & 0x07));
        r.push(0xF8 | (sps.bit_depth_chroma.saturating_sub(8) & 0x07));
        r.extend_from_slice(&0u16.to_be_bytes()); // avgFrameRate unknown
                                                  // constantFrameRate 0 | numTemporalLayers | temporalIdNested | lengthSizeMinusOne 3
        r.push(
            ((sps.max_sub_layers_minus1 + 1) & 0x07) << 3
                | u8::from(sps.temporal_id_nesting) << 2
                | 0x03,
        );
        r.push(3); // numOfArrays
        for (t, nal) in [
            (NAL_VPS, &self.vps),
            (NAL_SPS, &self.sps),
            (NAL_PPS, &self.pps),
        ] {
            let len = u16::try_from(nal.len()).map_err(|_| SpsError::TooLarge(nal.len()))?;
            // array_completeness 1: these are the only parameter sets (required by `hvc1`).
            r.push(0x80 | t);
            r.extend_from_slice(&1u16.to_be_bytes());
            r.extend_from_slice(&len.to_be_bytes());
            r.extend_from_slice(nal);
        }
        Ok(r)
    }
}

/// What a container needs from an SPS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpsInfo {
    /// Displayed width in luma samples (after the conformance window).
    pub width: u32,
    /// Displayed height in luma samples (after the conformance window).
    pub height: u32,
    /// 0 monochrome, 1 4:2:0, 2 4:2:2, 3 4:4:4.
    pub chroma_format_idc: u8,
    /// Luma bit depth (8 to 16).
    pub bit_depth_luma: u8,
    /// Chroma bit depth (8 to 16).
    pub bit_depth_chroma: u8,
    /// The 12 general bytes of profile_tier_level: profile space, tier and profile idc,
    /// 32 compatibility flags, 48 constraint bits and the level idc.
    pub general: [u8; 12],
    /// sps_max_sub_layers_minus1 (0 to 6).
    pub max_sub_layers_minus1: u8,
    /// sps_temporal_id_nesting_flag.
    pub temporal_id_nesting: bool,
}

/// Reads an SPS NAL unit (header included, emulation prevention still in) up to the bit
/// depths, including sub-layer profile/level information when there are sub-layers.
pub fn parse_sps(nal: &[u8]) -> Result<SpsInfo, SpsError> {
    if nal_type(nal) != NAL_SPS {
        return Err(SpsError::NotSps(nal_type(nal)));
    }
    let rbsp = remove_emulation_prevention(nal);
    let mut r = BitReader::new(&rbsp, 16); // past the NAL unit header
    r.bits(4, "sps_video_parameter_set_id")?;
    let max_sub_layers_minus1 = r.bits(3, "sps_max_sub_layers_minus1")? as u8;
    if max_sub_layers_minus1 > 6 {
        return Err(SpsError::Invalid("sps_max_sub_layers_minus1 > 6"));
    }
    let temporal_id_nesting = r.bit("sps_temporal_id_nesting_flag")? == 1;

    // profile_tier_level(1, sps_max_sub_layers_minus1): the general part is byte aligned
    // here (2 + 4 + 3 + 1 header bits = 16 + 8), so it is copied as bytes.
    let start = r.position() / 8;
    let general: [u8; 12] = rbsp
        .get(start..start + 12)
        .and_then(|s| s.try_into().ok())
        .ok_or(SpsError::Truncated("profile_tier_level"))?;
    r.skip(96, "profile_tier_level")?;
    let subs = usize::from(max_sub_layers_minus1);
    let mut profile_present = [false; 8];
    let mut level_present = [false; 8];
    for i in 0..subs {
        profile_present[i] = r.bit("sub_layer_profile_present_flag")? == 1;
        level_present[i] = r.bit("sub_layer_level_present_flag")? == 1;
    }
    if subs > 0 {
        // reserved_zero_2bits for the sub-layers up to 8.
        r.skip(2 * (8 - subs), "reserved_zero_2bits")?;
    }
    for i in 0..subs {
        if profile_present[i] {
            // space, tier, idc, 32 compatibility flags, 48 constraint bits
            r.skip(88, "sub_layer profile")?;
        }
        if level_present[i] {
            r.skip(8, "sub_layer_level_idc")?;
        }
    }

    r.ue("sps_seq_parameter_set_id")?;
    let chroma_format_idc = r.ue("chroma_format_idc")?;
    if chroma_format_idc > 3 {
        return Err(SpsError::Invalid("chroma_format_idc > 3"));
    }
    let mut separate_colour_plane = false;
    if chroma_format_idc == 3 {
        separate_colour_plane = r.bit("separate_colour_plane_flag")? == 1;
    }
    let coded_width = r.ue("pic_width_in_luma_samples")?;
    let coded_height = r.ue("pic_height_in_luma_samples")?;
    let (mut width, mut height) = (coded_width, coded_height);
    if r.bit("conformance_window_flag")? == 1 {
        let left = r.ue("conf_win_left_offset")?;
        let right = r.ue("conf_win_right_offset")?;
        let top = r.ue("conf_win_top_offset")?;
        let bottom = r.ue("conf_win_bottom_offset")?;
        // Offsets are in chroma units; with separate planes every plane is luma-sized.
        let (sub_w, sub_h) = match (chroma_format_idc, separate_colour_plane) {
            (1, _) => (2, 2),
            (2, _) => (2, 1),
            _ => (1, 1),
        };
        let crop_w = u64::from(left) + u64::from(right);
        let crop_h = u64::from(top) + u64::from(bottom);
        width = u64::from(coded_width)
            .checked_sub(sub_w * crop_w)
            .and_then(|w| u32::try_from(w).ok())
            .ok_or(SpsError::Invalid(
                "conformance window wider than the picture",
            ))?;
        height = u64::from(coded_height)
            .checked_sub(sub_h * crop_h)
            .and_then(|h| u32::try_from(h).ok())
            .ok_or(SpsError::Invalid(
                "conformance window taller than the picture",
            ))?;
    }
    if width == 0 || height == 0 {
        return Err(SpsError::Invalid("empty picture"));
    }
    let luma = r.ue("bit_depth_luma_minus8")?;
    let chroma = r.ue("bit_depth_chroma_minus8")?;
    if luma > 8 || chroma > 8 {
        return Err(SpsError::Invalid("bit depth above 16"));
    }
    Ok(SpsInfo {
        width,
        height,
        chroma_format_idc: chroma_format_idc as u8,
        bit_depth_luma: luma as u8 + 8,
        bit_depth_chroma: chroma as u8 + 8,
        general,
        max_sub_layers_minus1,
        temporal_id_nesting,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{encode_h265, TempDir};

    fn first_parameter_sets(stream: &[u8]) -> ParameterSets {
        ParameterSets::from_annexb(stream).expect("VPS, SPS and PPS in the stream")
    }

    #[test]
    fn parses_x265_720p_sps_and_builds_hvcc() {
        let dir = TempDir::new("hevc-720p");
        let stream = encode_h265(&dir, "720p", 1280, 720, 1, &[]);
        let ps = first_parameter_sets(&stream);
        let info = ps.sps_info().unwrap();
        assert_eq!((info.width, info.height), (1280, 720));
        assert_eq!(info.chroma_format_idc, 1);
        assert_eq!((info.bit_depth_luma, info.bit_depth_chroma), (8, 8));
        assert_eq!(info.general[0] & 0x1F, 1, "Main profile");
        assert_eq!(
            info.general[11], 93,
            "level 3.1, as ffmpeg's trace_headers reads it"
        );
        assert_eq!(info.max_sub_layers_minus1, 0);
        assert!(info.temporal_id_nesting);

        let rec = ps.decoder_configuration_record(&info).unwrap();
        assert_eq!(rec[0], 0x01);
        assert_eq!(&rec[1..13], &info.general);
        assert_eq!(rec[16], 0xFD, "chroma 4:2:0");
        assert_eq!((rec[17], rec[18]), (0xF8, 0xF8), "8-bit");
        assert_eq!(rec[21], 0x0F, "1 temporal layer, nested, 4-byte lengths");
        assert_eq!(rec[22], 3, "three arrays");
        let mut at = 23;
        for (t, nal) in [(32, &ps.vps), (33, &ps.sps), (34, &ps.pps)] {
            assert_eq!(rec[at], 0x80 | t);
            assert_eq!(u16::from_be_bytes([rec[at + 1], rec[at + 2]]), 1);
            let len = usize::from(u16::from_be_bytes([rec[at + 3], rec[at + 4]]));
            assert_eq!(&rec[at + 5..at + 5 + len], &nal[..]);
            at += 5 + len;
        }
        assert_eq!(at, rec.len(), "nothing after the arrays");
    }

    #[test]
    fn conformance_window_of_422_10bit_crops_in_chroma_units() {
        // x265 codes 656x368 and crops right 7 (x2) and bottom 6 (x1 for 4:2:2).
        let dir = TempDir::new("hevc-422");
        let stream = encode_h265(&dir, "422", 642, 362, 1, &["-pix_fmt", "yuv422p10le"]);
        let info = first_parameter_sets(&stream).sps_info().unwrap();
        assert_eq!((info.width, info.height), (642, 362));
        assert_eq!(info.chroma_format_idc, 2);
        assert_eq!((info.bit_depth_luma, info.bit_depth_chroma), (10, 10));
        assert_eq!(info.general[0] & 0x1F, 4, "RExt profile");
    }

    /// Writes bits MSB first, for hand-made SPSs.
    #[derive(Default)]
    struct BitWriter {
        bytes: Vec<u8>,
        n: usize,
    }

    impl BitWriter {
        fn bits(&mut self, v: u64, n: u32) {
            for i in (0..n).rev() {
                if self.n & 7 == 0 {
                    self.bytes.push(0);
                }
                if (v >> i) & 1 == 1 {
                    *self.bytes.last_mut().unwrap() |= 0x80 >> (self.n % 8);
                }
                self.n += 1;
            }
        }
        fn ue(&mut self, v: u32) {
            let x = u64::from(v) + 1;
            let len = 64 - x.leading_zeros();
            self.bits(0, len - 1);
            self.bits(x, len);
        }
    }

    /// An SPS with three sub-layers: the first has profile and level, the second only a
    /// level; 4:2:0, 1920x1080 coded as 1920x1088 with a bottom crop of 4 (x2).
    fn sps_with_sub_layers() -> Vec<u8> {
        let mut w = BitWriter::default();
        w.bits(0x4201, 16); // NAL header: type 33
        w.bits(0, 4);
        w.bits(2, 3); // max_sub_layers_minus1
        w.bits(0, 1); // nesting
        w.bits(0x01, 8); // profile space 0, tier 0, Main
        w.bits(0x6000_0000, 32);
        w.bits(0x9000_0000_0000, 48);
        w.bits(120, 8); // level 4
        w.bits(0b11, 2); // sub-layer 0: profile and level
        w.bits(0b01, 2); // sub-layer 1: level only
        w.bits(0, 2 * 6); // reserved up to 8
        w.bits(0x01, 8);
        w.bits(0xFFFF_FFFF, 32); // ones, so a misaligned reader sees garbage
        w.bits(0xFFFF_FFFF_FFFF, 48);
        w.bits(90, 8);
        w.bits(60, 8);
        w.ue(0); // sps id
        w.ue(1); // 4:2:0
        w.ue(1920);
        w.ue(1088);
        w.bits(1, 1);
        for off in [0, 0, 0, 4] {
            w.ue(off);
        }
        w.ue(2); // 10-bit luma
        w.ue(0);
        w.bits(1, 1); // rbsp stop bit
        w.bytes
    }

    #[test]
    fn sub_layer_profile_and_level_are_skipped() {
        let info = parse_sps(&sps_with_sub_layers()).unwrap();
        assert_eq!((info.width, info.height), (1920, 1080));
        assert_eq!((info.bit_depth_luma, info.bit_depth_chroma), (10, 8));
        assert_eq!(info.max_sub_layers_minus1, 2);
        assert!(!info.temporal_id_nesting);
        assert_eq!(info.general[11], 120);
        let ps = ParameterSets {
            vps: vec![0x40, 1, 0xAA],
            sps: sps_with_sub_layers(),
            pps: vec![0x44, 1, 0xBB],
        };
        let rec = ps.decoder_configuration_record(&info).unwrap();
        assert_eq!(rec[21], 3 << 3 | 0x03, "three temporal layers, not nested");
    }

    #[test]
    fn malformed_spss_are_errors_not_panics() {
        let sps = sps_with_sub_layers();
        assert_eq!(parse_sps(&[0x40, 1, 0]), Err(SpsError::NotSps(32)));
        assert_eq!(parse_sps(&[]), Err(SpsError::NotSps(0)));
        for cut in 0..sps.len() - 1 {
            assert!(
                matches!(
                    parse_sps(&sps[..cut]),
                    Err(SpsError::Truncated(_) | SpsError::NotSps(_))
                ),
                "cut at {cut}"
            );
        }
        let mut w = BitWriter::default();
        w.bits(0x4201, 16);
        w.bits(7 << 1, 8); // max_sub_layers_minus1 = 7
        assert!(matches!(parse_sps(&w.bytes), Err(SpsError::Invalid(_))));
        let big = ParameterSets {
            vps: vec![0x40; 70_000],
            sps: sps.clone(),
            pps: vec![0x44, 1],
        };
        let info = parse_sps(&sps).unwrap();
        assert_eq!(
            big.decoder_configuration_record(&info),
            Err(SpsError::TooLarge(70_000))
        );
    }
}
