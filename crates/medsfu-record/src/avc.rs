//! H.264 parameter sets: the few SPS fields a container needs and the `avcC` decoder
//! configuration record (ISO/IEC 14496-15 §5.3.3.1).
//!
//! The SPS is read up to the frame cropping; the PPS is carried as opaque bytes.

use crate::bits::{remove_emulation_prevention, BitReader, SpsError};

/// NAL unit type of a coded slice of an IDR picture.
pub const NAL_IDR: u8 = 5;
/// NAL unit type of a sequence parameter set.
pub const NAL_SPS: u8 = 7;
/// NAL unit type of a picture parameter set.
pub const NAL_PPS: u8 = 8;
/// NAL unit type of an access unit delimiter.
pub const NAL_AUD: u8 = 9;

/// The type of an H.264 NAL unit, from its header byte (0 for an empty slice).
pub fn nal_type(nal: &[u8]) -> u8 {
    nal.first().map_or(0, |b| b & 0x1F)
}

/// Whether a NAL unit of this type is a coded slice (a picture's data).
pub fn is_slice(t: u8) -> bool {
    (1..=5).contains(&t)
}

/// What a container needs from an H.264 SPS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AvcSpsInfo {
    /// Displayed width in luma samples (after cropping).
    pub width: u32,
    /// Displayed height in luma samples (after cropping).
    pub height: u32,
    /// profile_idc.
    pub profile: u8,
    /// The constraint_set flags byte (the record's profile_compatibility).
    pub compatibility: u8,
    /// level_idc.
    pub level: u8,
    /// 0 monochrome, 1 4:2:0, 2 4:2:2, 3 4:4:4 (1 when the profile does not say).
    pub chroma_format_idc: u8,
    /// Luma bit depth (8 to 14).
    pub bit_depth_luma: u8,
    /// Chroma bit depth (8 to 14).
    pub bit_depth_chroma: u8,
}

/// Profiles whose SPS carries chroma format and bit depths, and whose `avcC` does too.
fn high_profile(profile: u8) -> bool {
    matches!(
        profile,
        100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135
    )
}

/// Skips a scaling_list() of `size` coefficients.
fn skip_scaling_list(r: &mut BitReader<'_>, size: usize) -> Result<(), SpsError> {
    let (mut last, mut next) = (8i64, 8i64);
    for _ in 0..size {
        if next != 0 {
            let delta = r.se("delta_scale")?;
            if !(-128..=127).contains(&delta) {
                return Err(SpsError::Invalid("delta_scale"));
            }
            next = (last + delta + 256) % 256;
        }
        if next != 0 {
            last = next;
        }
    }
    Ok(())
}

/// Reads an SPS NAL unit (header included, emulation prevention still in) up to the
/// frame cropping.
pub fn parse_sps(nal: &[u8]) -> Result<AvcSpsInfo, SpsError> {
    if nal_type(nal) != NAL_SPS {
        return Err(SpsError::NotSps(nal_type(nal)));
    }
    let rbsp = remove_emulation_prevention(nal);
    let mut r = BitReader::new(&rbsp, 8); // past the NAL unit header
    let profile = r.bits(8, "profile_idc")? as u8;
    let compatibility = r.bits(8, "constraint_set flags")? as u8;
    let level = r.bits(8, "level_idc")? as u8;
    r.ue("seq_parameter_set_id")?;
    let (mut chroma_format_idc, mut separate_planes, mut luma, mut chroma) = (1, false, 0, 0);
    if high_profile(profile) {
        chroma_format_idc = r.ue("chroma_format_idc")?;
        if chroma_format_idc > 3 {
            return Err(SpsError::Invalid("chroma_format_idc > 3"));
        }
        if chroma_format_idc == 3 {
            separate_planes = r.flag("separate_colour_plane_flag")?;
        }
        luma = r.ue("bit_depth_luma_minus8")?;
        chroma = r.ue("bit_depth_chroma_minus8")?;
        if luma > 6 || chroma > 6 {
            return Err(SpsError::Invalid("bit depth above 14"));
        }
        r.skip(1, "qpprime_y_zero_transform_bypass_flag")?;
        if r.flag("seq_scaling_matrix_present_flag")? {
            let lists = if chroma_format_idc == 3 { 12 } else { 8 };
            for i in 0..lists {
                if r.flag("seq_scaling_list_present_flag")? {
                    skip_scaling_list(&mut r, if i < 6 { 16 } else { 64 })?;
                }
            }
        }
    }
    r.ue("log2_max_frame_num_minus4")?;
    match r.ue("pic_order_cnt_type")? {
        0 => {
            r.ue("log2_max_pic_order_cnt_lsb_minus4")?;
        }
        1 => {
            r.skip(1, "delta_pic_order_always_zero_flag")?;
            r.se("offset_for_non_ref_pic")?;
            r.se("offset_for_top_to_bottom_field")?;
            let cycle = r.ue("num_ref_frames_in_pic_order_cnt_cycle")?;
            if cycle > 255 {
                return Err(SpsError::Invalid("num_ref_frames_in_pic_order_cnt_cycle"));
            }
            for _ in 0..cycle {
                r.se("offset_for_ref_frame")?;
            }
        }
        2 => {}
        _ => return Err(SpsError::Invalid("pic_order_cnt_type")),
    }
    r.ue("max_num_ref_frames")?;
    r.skip(1, "gaps_in_frame_num_value_allowed_flag")?;
    let width_mbs = u64::from(r.ue("pic_width_in_mbs_minus1")?) + 1;
    let height_units = u64::from(r.ue("pic_height_in_map_units_minus1")?) + 1;
    let frame_mbs_only = r.flag("frame_mbs_only_flag")?;
    if !frame_mbs_only {
        r.skip(1, "mb_adaptive_frame_field_flag")?;
    }
    r.skip(1, "direct_8x8_inference_flag")?;
    let field_factor = if frame_mbs_only { 1 } else { 2 };
    let mut width = width_mbs * 16;
    let mut height = field_factor * height_units * 16;
    if r.flag("frame_cropping_flag")? {
        let left = u64::from(r.ue("frame_crop_left_offset")?);
        let right = u64::from(r.ue("frame_crop_right_offset")?);
        let top = u64::from(r.ue("frame_crop_top_offset")?);
        let bottom = u64::from(r.ue("frame_crop_bottom_offset")?);
        // Crop units (7.4.2.1.1): chroma sample units, luma ones without chroma planes.
        let (sub_w, sub_h) = match (chroma_format_idc, separate_planes) {
            (1, _) => (2, 2),
            (2, _) => (2, 1),
            _ => (1, 1),
        };
        width = width
            .checked_sub(sub_w * (left + right))
            .ok_or(SpsError::Invalid("cropping wider than the picture"))?;
        height = height
            .checked_sub(sub_h * field_factor * (top + bottom))
            .ok_or(SpsError::Invalid("cropping taller than the picture"))?;
    }
    let width = u32::try_from(width).map_err(|_| SpsError::Invalid("picture width"))?;
    let height = u32::try_from(height).map_err(|_| SpsError::Invalid("picture height"))?;
    if width == 0 || height == 0 {
        return Err(SpsError::Invalid("empty picture"));
    }
    Ok(AvcSpsInfo {
        width,
        height,
        profile,
        compatibility,
        level,
        chroma_format_idc: chroma_format_idc as u8,
        bit_depth_luma: luma as u8 + 8,
        bit_depth_chroma: chroma as u8 + 8,
    })
}

/// The `AVCDecoderConfigurationRecord` (the body of an `avcC` box) with 4-byte NAL
/// lengths, one SPS and one PPS (NAL units with their headers).
pub fn decoder_configuration_record(
    sps: &[u8],
    pps: &[u8],
    info: &AvcSpsInfo,
) -> Result<Vec<u8>, SpsError> {
    let len = |n: &[u8]| u16::try_from(n.len()).map_err(|_| SpsError::TooLarge(n.len()));
    let mut r = Vec::with_capacity(16 + sps.len() + pps.len());
    r.push(1); // configurationVersion
    r.extend_from_slice(&[info.profile, info.compatibility, info.level]);
    r.push(0xFC | 3); // reserved 111111, lengthSizeMinusOne 3
    r.push(0xE0 | 1); // reserved 111, one SPS
    r.extend_from_slice(&len(sps)?.to_be_bytes());
    r.extend_from_slice(sps);
    r.push(1); // one PPS
    r.extend_from_slice(&len(pps)?.to_be_bytes());
    r.extend_from_slice(pps);
    if high_profile(info.profile) {
        r.push(0xFC | (info.chroma_format_idc & 0x03));
        r.push(0xF8 | (info.bit_depth_luma.saturating_sub(8) & 0x07));
        r.push(0xF8 | (info.bit_depth_chroma.saturating_sub(8) & 0x07));
        r.push(0); // numOfSequenceParameterSetExt
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{encode, TempDir};
    use medsfu_codec::h265_rtp::annexb_nal_units;

    fn sps_pps(stream: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let nals = annexb_nal_units(stream);
        let find = |t| nals.iter().find(|n| nal_type(n) == t).unwrap().to_vec();
        (find(NAL_SPS), find(NAL_PPS))
    }

    #[test]
    fn parses_x264_sps_with_cropping_and_builds_avcc() {
        let dir = TempDir::new("avc-sps");
        // 1080 is not a multiple of 16: the SPS crops 1088 to 1080.
        let stream = encode(&dir, "h264", "crop", 1920, 1080, 1, &[]);
        let (sps, pps) = sps_pps(&stream);
        let info = parse_sps(&sps).unwrap();
        assert_eq!((info.width, info.height), (1920, 1080));
        assert_eq!(info.profile, 66, "baseline, as WebRTC encoders use");
        assert_eq!(info.chroma_format_idc, 1);
        let rec = decoder_configuration_record(&sps, &pps, &info).unwrap();
        assert_eq!(rec[..4], [1, 66, info.compatibility, info.level]);
        assert_eq!(rec[4], 0xFF, "4-byte lengths");
        assert_eq!(rec[5], 0xE1);
        assert_eq!(&rec[8..8 + sps.len()], &sps[..]);
        assert_eq!(
            rec.len(),
            8 + sps.len() + 3 + pps.len(),
            "no high-profile tail"
        );
    }

    #[test]
    fn parses_high_profile_422_with_odd_size() {
        let dir = TempDir::new("avc-high");
        let stream = encode(
            &dir,
            "h264-high",
            "odd",
            642,
            362,
            1,
            &["-pix_fmt", "yuv422p10le"],
        );
        let (sps, pps) = sps_pps(&stream);
        let info = parse_sps(&sps).unwrap();
        assert_eq!((info.width, info.height), (642, 362));
        assert_eq!(info.profile, 122, "High 4:2:2");
        assert_eq!(info.chroma_format_idc, 2);
        assert_eq!((info.bit_depth_luma, info.bit_depth_chroma), (10, 10));
        let rec = decoder_configuration_record(&sps, &pps, &info).unwrap();
        assert_eq!(rec[rec.len() - 4..], [0xFE, 0xFA, 0xFA, 0]);
    }

    #[test]
    fn broken_spss_are_errors_not_panics() {
        assert_eq!(parse_sps(&[0x68, 1]), Err(SpsError::NotSps(8)));
        assert_eq!(parse_sps(&[0x67]), Err(SpsError::Truncated("profile_idc")));
        let dir = TempDir::new("avc-cut");
        let (sps, _) = sps_pps(&encode(&dir, "h264", "cut", 320, 240, 1, &[]));
        let whole = parse_sps(&sps).unwrap();
        let mut errors = 0;
        for cut in 1..sps.len() {
            // Cut in the fields read: an error; cut in the VUI after them: the same fields.
            match parse_sps(&sps[..cut]) {
                Ok(info) => assert_eq!(info, whole, "cut at {cut}"),
                Err(_) => errors += 1,
            }
        }
        assert!(errors >= 4, "{errors} cuts refused");
        // Every byte value at every position: no panic, whatever the result.
        for at in 1..sps.len() {
            for v in [0x00, 0xFF, 0x80, 0x01] {
                let mut s = sps.clone();
                s[at] = v;
                let _ = parse_sps(&s);
            }
        }
    }
}
