//! Fragmented MP4 (ISO/IEC 14496-12) with one video track (H.265, H.264 or VP8), written
//! as it is recorded.
//!
//! The file is `ftyp`, `moov` (an empty sample table, the `hvc1`, `avc1` or `vp08` sample
//! entry and `mvex`),
//! then one `moof` + `mdat` pair per fragment. Every fragment is written whole and flushed,
//! so the file cut after any complete fragment (the recorder killed, the disk full) is a
//! valid, playable MP4; players also accept a cut inside the last fragment.

use std::io::Write;

use medsfu_codec::h265_rtp::annexb_nal_units;

use crate::avc;
use crate::bits::SpsError;
use crate::hevc::{self, ParameterSets};

/// Media timescale of the video track: the RTP clock of video, so RTP timestamps map 1:1.
pub const TIMESCALE: u32 = 90_000;

/// A fragment is closed at a keyframe once it spans at least this (1 s).
const FRAGMENT_MIN_TICKS: u64 = 90_000;
/// A fragment is closed at any picture once it spans this (10 s): with keyframes only on
/// request (PLI) a GOP can be minutes long, and a crash must not lose that much.
const FRAGMENT_MAX_TICKS: u64 = 10 * 90_000;
/// A fragment is closed at any picture once its media data holds this much.
const FRAGMENT_MAX_BYTES: usize = 4 << 20;
/// Duration of a last sample whose successor is unknown and has no predecessor (30 fps).
const DEFAULT_DURATION: u32 = 3000;
/// A backward step of at least this much (1 s) is a timestamp reset, not reordering.
const REBASE_TICKS: u64 = 90_000;
/// A larger access unit is refused: no encoder makes one, and sizes stay far from u32.
const MAX_SAMPLE_BYTES: usize = 1 << 30;
/// Seconds from 1904-01-01 (the MP4 epoch) to 1970-01-01.
const MP4_EPOCH_OFFSET: u64 = 2_082_844_800;

/// sample_depends_on = 2 (an I picture), sync.
const SAMPLE_FLAGS_SYNC: u32 = 0x0200_0000;
/// sample_depends_on = 1, sample_is_non_sync_sample.
const SAMPLE_FLAGS_NON_SYNC: u32 = 0x0101_0000;

/// Why a picture could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Fmp4Error {
    /// Writing to the output failed; the writer must not be used further.
    #[error("writing the MP4 file: {0}")]
    Io(#[from] std::io::Error),
    /// The SPS of a keyframe could not be read; that picture was not written.
    #[error("reading the SPS: {0}")]
    Sps(#[from] SpsError),
    /// A VP8 key frame's header could not be read; that frame was not written.
    #[error("VP8 key frame header: {0}")]
    Vp8Header(&'static str),
    /// The stream's configuration differs from the file's: other parameter sets, or a VP8
    /// key frame of another size (the encoder was restarted or reconfigured). The picture
    /// was not written: `finish` this writer and push it to a new one.
    #[error("the video configuration changed; start a new file")]
    ConfigChanged,
    /// A size does not fit its MP4 field (the named thing); that picture was not written.
    #[error("{0} too large for MP4")]
    TooLarge(&'static str),
}

impl Fmp4Error {
    /// Whether the error is in the stream, not the file: that picture was not written and
    /// the writer goes on with the next one.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            Fmp4Error::Sps(_) | Fmp4Error::Vp8Header(_) | Fmp4Error::TooLarge(_)
        )
    }
}

/// The video codec of a recorded track.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum VideoCodec {
    /// H.265 access units in Annex-B form; an `hvc1` sample entry.
    H265,
    /// H.264 access units in Annex-B form; an `avc1` sample entry.
    H264,
    /// VP8 frames; a `vp08` sample entry (the VP codec ISO media file format binding).
    Vp8,
}

impl VideoCodec {
    /// The NAL unit types of the parameter sets the sample entry holds, in its order.
    fn parameter_set_types(self) -> &'static [u8] {
        match self {
            VideoCodec::H265 => &[hevc::NAL_VPS, hevc::NAL_SPS, hevc::NAL_PPS],
            VideoCodec::H264 => &[avc::NAL_SPS, avc::NAL_PPS],
            VideoCodec::Vp8 => &[],
        }
    }

    fn nal_type(self, nal: &[u8]) -> u8 {
        match self {
            VideoCodec::H265 => hevc::nal_type(nal),
            _ => avc::nal_type(nal),
        }
    }

    /// Whether a NAL unit of type `t` is a coded slice.
    fn is_slice(self, t: u8) -> bool {
        match self {
            VideoCodec::H265 => t < 32,
            _ => avc::is_slice(t),
        }
    }

    /// Whether a NAL unit of type `t` stays out of the samples: parameter sets (they live
    /// in the sample entry, as `hvc1` and `avc1` require) and access unit delimiters.
    fn is_header(self, t: u8) -> bool {
        let aud = match self {
            VideoCodec::H265 => hevc::NAL_AUD,
            _ => avc::NAL_AUD,
        };
        t == aud || self.parameter_set_types().contains(&t)
    }
}

/// The displayed size of a VP8 key frame (RFC 6386 §9.1), from its first 10 bytes.
pub fn vp8_key_frame_size(frame: &[u8]) -> Result<(u32, u32), Fmp4Error> {
    let header = frame
        .get(..10)
        .ok_or(Fmp4Error::Vp8Header("shorter than a key frame header"))?;
    if header[0] & 1 != 0 {
        return Err(Fmp4Error::Vp8Header("not a key frame"));
    }
    if header[3..6] != [0x9d, 0x01, 0x2a] {
        return Err(Fmp4Error::Vp8Header("no start code"));
    }
    // 14 bits of size, 2 of upscaling (which a player applies, not the container).
    let width = u32::from(u16::from_le_bytes([header[6], header[7]]) & 0x3FFF);
    let height = u32::from(u16::from_le_bytes([header[8], header[9]]) & 0x3FFF);
    if width == 0 || height == 0 {
        return Err(Fmp4Error::Vp8Header("empty picture"));
    }
    Ok((width, height))
}

/// One buffered sample of the open fragment; its bytes are in `Fmp4Writer::mdat`.
#[derive(Debug, Clone, Copy)]
struct Sample {
    dts: u64,
    size: u32,
    keyframe: bool,
}

/// Writes one video track (timescale 90 kHz) as fragmented MP4.
///
/// Pictures must come in decode order and the stream must have no B-frames (decode order
/// = presentation order, as real-time encoders produce): the file carries one timestamp
/// per sample and no composition offsets. H.265 and H.264 parameter sets live only in the
/// sample entry, as `hvc1` and `avc1` require; they are removed from the samples with the
/// AUDs.
#[derive(Debug)]
pub struct Fmp4Writer<W: Write> {
    out: W,
    codec: VideoCodec,
    creation_unix_secs: u64,
    /// Parameter sets seen before the file started, latest of each, in the order of
    /// [`VideoCodec::parameter_set_types`].
    pending: Vec<Option<Vec<u8>>>,
    /// The parameter sets in `moov`, once the file started (none for VP8).
    params: Option<Vec<Vec<u8>>>,
    /// The displayed size, once the file started.
    size: Option<(u32, u32)>,
    /// The pts that maps to decode time 0 (moved when the publisher's clock resets).
    origin: i128,
    last_dts: Option<u64>,
    last_duration: Option<u32>,
    samples: Vec<Sample>,
    mdat: Vec<u8>,
    sequence: u32,
    skipped: u64,
    clamped: u64,
}

impl<W: Write> Fmp4Writer<W> {
    /// A writer that writes nothing until the first keyframe (with parameter sets, for
    /// H.265 and H.264).
    ///
    /// `creation_unix_secs` (the recording's start, seconds since 1970) goes into the
    /// `mvhd`/`tkhd`/`mdhd` creation and modification times.
    pub fn new(out: W, codec: VideoCodec, creation_unix_secs: u64) -> Self {
        Fmp4Writer {
            out,
            codec,
            creation_unix_secs,
            pending: vec![None; codec.parameter_set_types().len()],
            params: None,
            size: None,
            origin: 0,
            last_dts: None,
            last_duration: None,
            samples: Vec::new(),
            mdat: Vec::new(),
            sequence: 0,
            skipped: 0,
            clamped: 0,
        }
    }

    /// Adds one picture: `au` is the access unit in Annex-B form (start codes and NAL
    /// units) for H.265 and H.264, the frame for VP8; `pts_90k` its timestamp at 90 kHz (an
    /// RTP timestamp unwrapped to u64); `keyframe` whether a decoder can start at it.
    ///
    /// Pictures before the first keyframe for which the parameter sets are known (from it
    /// or an earlier access unit) are dropped and counted ([`Self::skipped`]). Access units
    /// without a slice (parameter sets alone) add nothing. A timestamp not after the
    /// previous one is moved to just after it and counted ([`Self::clamped`]); after a step
    /// back of a second or more the following pictures keep their own spacing from there,
    /// so a publisher whose clock restarted does not squeeze the rest of the recording.
    pub fn push(&mut self, au: &[u8], pts_90k: u64, keyframe: bool) -> Result<(), Fmp4Error> {
        if self.codec == VideoCodec::Vp8 {
            return self.push_vp8(au, pts_90k, keyframe);
        }
        let codec = self.codec;
        let nals = annexb_nal_units(au);
        let types = codec.parameter_set_types();
        let sets: Vec<Option<&[u8]>> = types
            .iter()
            .map(|&t| nals.iter().rev().find(|n| codec.nal_type(n) == t).copied())
            .collect();
        let has_slice = nals.iter().any(|n| codec.is_slice(codec.nal_type(n)));
        match &self.params {
            Some(current) => {
                if sets
                    .iter()
                    .zip(current)
                    .any(|(new, cur)| new.is_some_and(|n| n != cur.as_slice()))
                {
                    // Parameter sets that make no sample entry (an SPS that cannot be
                    // read, a picture too large for MP4) are damage, not a new
                    // configuration: the picture is refused and the file goes on.
                    let next: Vec<Vec<u8>> = sets
                        .iter()
                        .zip(current)
                        .map(|(new, cur)| new.map_or_else(|| cur.clone(), <[u8]>::to_vec))
                        .collect();
                    sample_entry(codec, &next)?;
                    return Err(Fmp4Error::ConfigChanged);
                }
            }
            None => {
                for (slot, new) in self.pending.iter_mut().zip(&sets) {
                    if let Some(n) = new {
                        *slot = Some(n.to_vec());
                    }
                }
                if !has_slice {
                    return Ok(());
                }
                let ready: Option<Vec<Vec<u8>>> = if keyframe {
                    self.pending.iter().cloned().collect()
                } else {
                    None
                };
                let Some(ps) = ready else {
                    self.skipped += 1;
                    return Ok(());
                };
                if let Err(e) = self.start_h26x(ps) {
                    // Forget a broken SPS so that a later keyframe's good one is waited for.
                    let sps = types
                        .iter()
                        .position(|&t| t == hevc::NAL_SPS || t == avc::NAL_SPS);
                    if let Some(slot) = sps.and_then(|i| self.pending.get_mut(i)) {
                        *slot = None;
                    }
                    return Err(e);
                }
            }
        }
        if !has_slice {
            return Ok(());
        }
        let kept = || {
            nals.iter()
                .filter(move |n| !codec.is_header(codec.nal_type(n)))
        };
        let size: usize = kept().map(|n| 4 + n.len()).sum();
        self.add_sample(pts_90k, keyframe, size, |mdat| {
            for nal in kept() {
                // Fits: the sample is at most MAX_SAMPLE_BYTES.
                mdat.extend_from_slice(&(nal.len() as u32).to_be_bytes());
                mdat.extend_from_slice(nal);
            }
        })
    }

    /// [`Self::push`] for a VP8 frame: the file starts at the first key frame, and a key
    /// frame of another size ends it.
    fn push_vp8(&mut self, frame: &[u8], pts_90k: u64, keyframe: bool) -> Result<(), Fmp4Error> {
        if keyframe {
            let size = vp8_key_frame_size(frame)?;
            match self.size {
                None => self.start(size, &vp08_entry_child())?,
                Some(current) if current != size => return Err(Fmp4Error::ConfigChanged),
                Some(_) => {}
            }
        }
        if self.size.is_none() {
            self.skipped += 1;
            return Ok(());
        }
        if frame.is_empty() {
            return Ok(());
        }
        self.add_sample(pts_90k, keyframe, frame.len(), |mdat| {
            mdat.extend_from_slice(frame);
        })
    }

    /// Appends one sample of `size` bytes, which `write` puts into the media data, at the
    /// decode time of `pts_90k`; closes the open fragment first when it is long enough.
    fn add_sample(
        &mut self,
        pts_90k: u64,
        keyframe: bool,
        size: usize,
        write: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), Fmp4Error> {
        if size > MAX_SAMPLE_BYTES {
            return Err(Fmp4Error::TooLarge("access unit"));
        }
        let raw = i128::from(pts_90k) - self.origin;
        let (dts, origin, clamped) = match self.last_dts {
            // The file's first picture is decode time 0.
            None => (0, i128::from(pts_90k), false),
            Some(last) if raw > i128::from(last) => {
                (u64::try_from(raw).unwrap_or(u64::MAX), self.origin, false)
            }
            Some(last) => {
                let dts = last.saturating_add(1);
                let origin = if i128::from(last) - raw >= i128::from(REBASE_TICKS) {
                    i128::from(pts_90k) - i128::from(dts)
                } else {
                    self.origin
                };
                (dts, origin, true)
            }
        };

        if let Some(first) = self.samples.first() {
            let span = dts - first.dts;
            if (keyframe && span >= FRAGMENT_MIN_TICKS)
                || span >= FRAGMENT_MAX_TICKS
                || self.mdat.len() >= FRAGMENT_MAX_BYTES
            {
                self.write_fragment(Some(dts))?;
            }
        }

        self.origin = origin;
        self.clamped += u64::from(clamped);
        self.last_dts = Some(dts);
        write(&mut self.mdat);
        self.samples.push(Sample {
            dts,
            // Fits: checked against MAX_SAMPLE_BYTES above.
            size: size as u32,
            keyframe,
        });
        Ok(())
    }

    /// Writes the buffered pictures as the last fragment and returns the output.
    ///
    /// The last picture lasts as long as the one before it (3000 ticks if it is alone).
    /// A writer that never started returns its output untouched (an empty file).
    pub fn finish(mut self) -> Result<W, Fmp4Error> {
        if !self.samples.is_empty() {
            self.write_fragment(None)?;
        }
        self.out.flush()?;
        Ok(self.out)
    }

    /// Pictures dropped because no keyframe with parameter sets had started the file yet.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Pictures whose timestamp was not after the previous one's and was moved.
    pub fn clamped(&self) -> u64 {
        self.clamped
    }

    /// The displayed width and height of the file, once it started.
    pub fn dimensions(&self) -> Option<(u32, u32)> {
        self.size
    }

    /// The output, e.g. to see how far the file got.
    pub fn get_ref(&self) -> &W {
        &self.out
    }

    /// Writes `ftyp` and `moov` for these H.265 or H.264 parameter sets.
    fn start_h26x(&mut self, ps: Vec<Vec<u8>>) -> Result<(), Fmp4Error> {
        let (size, child) = sample_entry(self.codec, &ps)?;
        self.start(size, &child)?;
        self.params = Some(ps);
        Ok(())
    }

    /// Writes `ftyp` and `moov` with a sample entry of this size around `child` (the
    /// decoder configuration box).
    fn start(&mut self, (width, height): (u32, u32), child: &[u8]) -> Result<(), Fmp4Error> {
        let (w, h) = mp4_size(width, height)?;
        let fourcc = match self.codec {
            VideoCodec::H265 => b"hvc1",
            VideoCodec::H264 => b"avc1",
            VideoCodec::Vp8 => b"vp08",
        };
        let mut head = ftyp();
        head.extend(moov(
            self.creation_unix_secs.saturating_add(MP4_EPOCH_OFFSET),
            w,
            h,
            &boxed(fourcc, &[&visual_sample_entry(w, h), child]),
        ));
        self.out.write_all(&head)?;
        self.out.flush()?;
        self.size = Some((width, height));
        Ok(())
    }

    /// Writes the buffered samples as `moof` + `mdat` and flushes; `next_dts` is the decode
    /// time of the picture after them, when known, which sets the last one's duration.
    fn write_fragment(&mut self, next_dts: Option<u64>) -> Result<(), Fmp4Error> {
        let Some(first) = self.samples.first() else {
            return Ok(());
        };
        let base = first.dts;
        let n = self.samples.len();
        let mut durations = Vec::with_capacity(n);
        for (i, s) in self.samples.iter().enumerate() {
            let d = match (self.samples.get(i + 1), next_dts) {
                (Some(next), _) => next.dts - s.dts,
                (None, Some(next)) => next - s.dts,
                (None, None) => {
                    let previous = durations.last().copied().or(self.last_duration);
                    u64::from(previous.unwrap_or(DEFAULT_DURATION))
                }
            };
            // A gap of 13 hours saturates; the next fragment's tfdt keeps the true time.
            durations.push(u32::try_from(d).unwrap_or(u32::MAX));
        }

        let sequence = self.sequence + 1;
        let mut trun = Vec::with_capacity(8 + 12 * n);
        trun.extend_from_slice(&(n as u32).to_be_bytes());
        let data_offset_at = trun.len();
        trun.extend_from_slice(&0u32.to_be_bytes()); // data_offset, set below
        for (s, d) in self.samples.iter().zip(&durations) {
            trun.extend_from_slice(&d.to_be_bytes());
            trun.extend_from_slice(&s.size.to_be_bytes());
            let flags = if s.keyframe {
                SAMPLE_FLAGS_SYNC
            } else {
                SAMPLE_FLAGS_NON_SYNC
            };
            trun.extend_from_slice(&flags.to_be_bytes());
        }
        // The moof size does not depend on the offset's value, so build, measure, patch.
        let moof_len = 8 + 16 + 8 + 16 + 20 + 12 + trun.len();
        let data_offset =
            u32::try_from(moof_len + 8).map_err(|_| Fmp4Error::TooLarge("fragment"))?;
        trun[data_offset_at..data_offset_at + 4].copy_from_slice(&data_offset.to_be_bytes());
        let moof = boxed(
            b"moof",
            &[
                &full_box(b"mfhd", 0, 0, &sequence.to_be_bytes()),
                &boxed(
                    b"traf",
                    &[
                        // default-base-is-moof: data offsets count from this moof.
                        &full_box(b"tfhd", 0, 0x02_0000, &1u32.to_be_bytes()),
                        &full_box(b"tfdt", 1, 0, &base.to_be_bytes()),
                        // data-offset, sample duration, size and flags present
                        &full_box(b"trun", 0, 0x00_0701, &trun),
                    ],
                ),
            ],
        );
        debug_assert_eq!(moof.len(), moof_len);
        let mdat_len =
            u32::try_from(8 + self.mdat.len()).map_err(|_| Fmp4Error::TooLarge("fragment"))?;
        self.out.write_all(&moof)?;
        self.out.write_all(&mdat_len.to_be_bytes())?;
        self.out.write_all(b"mdat")?;
        self.out.write_all(&self.mdat)?;
        self.out.flush()?;

        self.sequence = sequence;
        self.last_duration = durations.last().copied();
        self.samples.clear();
        self.mdat.clear();
        Ok(())
    }
}

/// A box of the given type around the concatenated parts. Boxes built here are small
/// (headers and sample tables of one bounded fragment), far below 4 GiB.
fn boxed(kind: &[u8; 4], parts: &[&[u8]]) -> Vec<u8> {
    let len = 8 + parts.iter().map(|p| p.len()).sum::<usize>();
    let mut b = Vec::with_capacity(len);
    b.extend_from_slice(&(len as u32).to_be_bytes());
    b.extend_from_slice(kind);
    for p in parts {
        b.extend_from_slice(p);
    }
    b
}

/// A full box: version and 24-bit flags before the body.
fn full_box(kind: &[u8; 4], version: u8, flags: u32, body: &[u8]) -> Vec<u8> {
    let vf = (u32::from(version) << 24) | (flags & 0x00FF_FFFF);
    boxed(kind, &[&vf.to_be_bytes(), body])
}

/// `ftyp`: `iso6` is the brand of movie fragments with `tfdt`; `isom` and `mp41` let
/// older players accept the file.
fn ftyp() -> Vec<u8> {
    boxed(b"ftyp", &[b"iso6", &0u32.to_be_bytes(), b"iso6isommp41"])
}

/// The unity transformation matrix of `mvhd` and `tkhd`.
fn matrix() -> Vec<u8> {
    [0x0001_0000u32, 0, 0, 0, 0x0001_0000, 0, 0, 0, 0x4000_0000]
        .iter()
        .flat_map(|v| v.to_be_bytes())
        .collect()
}

/// Creation and modification times: 32-bit in version 0, 64-bit (version 1) after 2040.
fn times(mp4_secs: u64) -> (u8, Vec<u8>) {
    match u32::try_from(mp4_secs) {
        Ok(t) => (0, [t.to_be_bytes(), t.to_be_bytes()].concat()),
        Err(_) => (1, [mp4_secs.to_be_bytes(), mp4_secs.to_be_bytes()].concat()),
    }
}

/// Duration 0 (unknown, the fragments say) in the width the version has.
fn zero_duration(version: u8) -> &'static [u8] {
    if version == 1 {
        &[0; 8]
    } else {
        &[0; 4]
    }
}

/// The displayed size of H.265 or H.264 parameter sets (in the order of
/// [`VideoCodec::parameter_set_types`]) and the decoder configuration box of their sample
/// entry; an error when they make none.
fn sample_entry(codec: VideoCodec, ps: &[Vec<u8>]) -> Result<((u32, u32), Vec<u8>), Fmp4Error> {
    let (size, child) = match (codec, ps) {
        (VideoCodec::H265, [vps, sps, pps]) => {
            let sets = ParameterSets {
                vps: vps.clone(),
                sps: sps.clone(),
                pps: pps.clone(),
            };
            let info = sets.sps_info()?;
            let record = sets.decoder_configuration_record(&info)?;
            ((info.width, info.height), boxed(b"hvcC", &[&record]))
        }
        (VideoCodec::H264, [sps, pps]) => {
            let info = avc::parse_sps(sps)?;
            let record = avc::decoder_configuration_record(sps, pps, &info)?;
            ((info.width, info.height), boxed(b"avcC", &[&record]))
        }
        // parameter_set_types() gives each codec its number of sets, and VP8 none.
        _ => unreachable!("parameter sets of {codec:?}"),
    };
    mp4_size(size.0, size.1)?;
    Ok((size, child))
}

/// The width and height as the 16-bit fields of `tkhd` and the sample entry hold them.
fn mp4_size(width: u32, height: u32) -> Result<(u16, u16), Fmp4Error> {
    let w = u16::try_from(width).map_err(|_| Fmp4Error::TooLarge("width"))?;
    let h = u16::try_from(height).map_err(|_| Fmp4Error::TooLarge("height"))?;
    Ok((w, h))
}

/// The `vpcC` box of a VP8 track: 8-bit 4:2:0, colours unspecified, no initialization
/// data (VP codec ISO media file format binding §2.3).
fn vp08_entry_child() -> Vec<u8> {
    let body = [
        0,      // profile
        0,      // level (undefined for VP8)
        8 << 4, // bitDepth 8, chromaSubsampling 0 (4:2:0), videoFullRangeFlag 0
        2,      // colourPrimaries: unspecified
        2,      // transferCharacteristics: unspecified
        2,      // matrixCoefficients: unspecified
        0,      // codecInitializationDataSize (16 bits)
        0,
    ];
    full_box(b"vpcC", 1, 0, &body)
}

/// The fields of a `VisualSampleEntry` before its child boxes.
fn visual_sample_entry(width: u16, height: u16) -> Vec<u8> {
    let mut entry = vec![0; 6]; // reserved
    entry.extend_from_slice(&1u16.to_be_bytes()); // data_reference_index
    entry.extend_from_slice(&[0; 16]); // pre_defined, reserved, pre_defined
    entry.extend_from_slice(&width.to_be_bytes());
    entry.extend_from_slice(&height.to_be_bytes());
    entry.extend_from_slice(&0x0048_0000u32.to_be_bytes()); // 72 dpi
    entry.extend_from_slice(&0x0048_0000u32.to_be_bytes());
    entry.extend_from_slice(&[0; 4]);
    entry.extend_from_slice(&1u16.to_be_bytes()); // frame_count
    entry.extend_from_slice(&[0; 32]); // compressorname (empty)
    entry.extend_from_slice(&0x0018u16.to_be_bytes()); // depth
    entry.extend_from_slice(&(-1i16).to_be_bytes()); // pre_defined
    entry
}

/// `moov` of a file with one video track of the given displayed size, described by the
/// sample entry box `entry` (`hvc1`, `avc1` or `vp08`).
fn moov(mp4_secs: u64, width: u16, height: u16, entry: &[u8]) -> Vec<u8> {
    let (version, t) = times(mp4_secs);
    let dur = zero_duration(version);

    let mut mvhd = t.clone();
    mvhd.extend_from_slice(&1000u32.to_be_bytes()); // movie timescale (ms)
    mvhd.extend_from_slice(dur);
    mvhd.extend_from_slice(&0x0001_0000u32.to_be_bytes()); // rate 1.0
    mvhd.extend_from_slice(&0x0100u16.to_be_bytes()); // volume 1.0
    mvhd.extend_from_slice(&[0; 10]);
    mvhd.extend(matrix());
    mvhd.extend_from_slice(&[0; 24]);
    mvhd.extend_from_slice(&2u32.to_be_bytes()); // next_track_ID

    let mut tkhd = t.clone();
    tkhd.extend_from_slice(&1u32.to_be_bytes()); // track_ID
    tkhd.extend_from_slice(&[0; 4]);
    tkhd.extend_from_slice(dur);
    tkhd.extend_from_slice(&[0; 8]);
    tkhd.extend_from_slice(&[0; 8]); // layer, alternate_group, volume 0 (video), reserved
    tkhd.extend(matrix());
    tkhd.extend_from_slice(&(u32::from(width) << 16).to_be_bytes());
    tkhd.extend_from_slice(&(u32::from(height) << 16).to_be_bytes());

    let mut mdhd = t;
    mdhd.extend_from_slice(&TIMESCALE.to_be_bytes());
    mdhd.extend_from_slice(dur);
    mdhd.extend_from_slice(&0x55C4u16.to_be_bytes()); // "und"
    mdhd.extend_from_slice(&[0; 2]);

    let mut hdlr = vec![0; 4]; // pre_defined
    hdlr.extend_from_slice(b"vide");
    hdlr.extend_from_slice(&[0; 12]);
    hdlr.extend_from_slice(b"medsfu video\0");

    let stsd = full_box(b"stsd", 0, 0, &[&1u32.to_be_bytes()[..], entry].concat());
    let empty = 0u32.to_be_bytes();
    let stbl = boxed(
        b"stbl",
        &[
            &stsd,
            &full_box(b"stts", 0, 0, &empty),
            &full_box(b"stsc", 0, 0, &empty),
            &full_box(b"stsz", 0, 0, &[0; 8]), // sample_size 0, sample_count 0
            &full_box(b"stco", 0, 0, &empty),
        ],
    );
    let dinf = boxed(
        b"dinf",
        &[&full_box(
            b"dref",
            0,
            0,
            &[&1u32.to_be_bytes()[..], &full_box(b"url ", 0, 1, &[])].concat(),
        )],
    );
    let minf = boxed(b"minf", &[&full_box(b"vmhd", 0, 1, &[0; 8]), &dinf, &stbl]);
    let mdia = boxed(
        b"mdia",
        &[
            &full_box(b"mdhd", version, 0, &mdhd),
            &full_box(b"hdlr", 0, 0, &hdlr),
            &minf,
        ],
    );
    let trak = boxed(b"trak", &[&full_box(b"tkhd", version, 3, &tkhd), &mdia]);

    let mut trex = 1u32.to_be_bytes().to_vec(); // track_ID
    trex.extend_from_slice(&1u32.to_be_bytes()); // default_sample_description_index
    trex.extend_from_slice(&[0; 12]); // default duration, size, flags
    let mvex = boxed(b"mvex", &[&full_box(b"trex", 0, 0, &trex)]);

    boxed(
        b"moov",
        &[&full_box(b"mvhd", version, 0, &mvhd), &trak, &mvex],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{
        annexb_access_units, encode, encode_h265, h264_access_units, h264_sps, ivf_frames, run, s,
        TempDir,
    };

    /// The body of the first box at `path` (container types descended in order).
    fn find<'a>(mut data: &'a [u8], path: &[&str]) -> Option<&'a [u8]> {
        let (want, rest) = path.split_first()?;
        while data.len() >= 8 {
            let size = u32::from_be_bytes(data[..4].try_into().unwrap()) as usize;
            assert!(size >= 8 && size <= data.len(), "box size {size} overruns");
            if &data[4..8] == want.as_bytes() {
                let body = &data[8..size];
                return if rest.is_empty() {
                    Some(body)
                } else {
                    find(body, rest)
                };
            }
            data = &data[size..];
        }
        None
    }

    /// The top-level boxes: (type, offset, size); panics on a box overrunning the file.
    fn top_boxes(file: &[u8]) -> Vec<(String, usize, usize)> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < file.len() {
            let size = u32::from_be_bytes(file[at..at + 4].try_into().unwrap()) as usize;
            assert!(size >= 8 && at + size <= file.len(), "box at {at} overruns");
            out.push((
                String::from_utf8_lossy(&file[at + 4..at + 8]).into_owned(),
                at,
                size,
            ));
            at += size;
        }
        out
    }

    fn be32(b: &[u8], at: usize) -> u32 {
        u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
    }

    /// A fragment as read back: (sequence, tfdt, [(duration, size, flags)], mdat body).
    type Fragment = (u32, u64, Vec<(u32, u32, u32)>, Vec<u8>);

    /// The fragments of a file, checking their fixed fields.
    fn fragments(file: &[u8]) -> Vec<Fragment> {
        let boxes = top_boxes(file);
        let mut out = Vec::new();
        for pair in boxes.windows(2) {
            let ((k, at, size), (k2, at2, size2)) = (&pair[0], &pair[1]);
            if k != "moof" {
                continue;
            }
            assert_eq!(k2, "mdat", "a moof is followed by its mdat");
            let moof = &file[*at..at + size];
            let mfhd = find(&moof[8..], &["mfhd"]).unwrap();
            let tfhd = find(&moof[8..], &["traf", "tfhd"]).unwrap();
            assert_eq!(be32(tfhd, 0), 0x0002_0000, "default-base-is-moof");
            assert_eq!(be32(tfhd, 4), 1, "track 1");
            let tfdt = find(&moof[8..], &["traf", "tfdt"]).unwrap();
            assert_eq!(tfdt[0], 1, "tfdt version 1");
            let trun = find(&moof[8..], &["traf", "trun"]).unwrap();
            assert_eq!(be32(trun, 0), 0x0000_0701);
            let n = be32(trun, 4) as usize;
            assert_eq!(
                be32(trun, 8) as usize,
                size + 8,
                "data offset = moof + mdat header"
            );
            let samples: Vec<(u32, u32, u32)> = (0..n)
                .map(|i| {
                    let e = 12 + 12 * i;
                    (be32(trun, e), be32(trun, e + 4), be32(trun, e + 8))
                })
                .collect();
            out.push((
                be32(mfhd, 4),
                u64::from_be_bytes(tfdt[4..12].try_into().unwrap()),
                samples,
                file[at2 + 8..at2 + size2].to_vec(),
            ));
        }
        // No gap or overlap: each fragment ends where the next begins.
        for pair in out.windows(2) {
            let end = pair[0].1 + pair[0].2.iter().map(|s| u64::from(s.0)).sum::<u64>();
            assert_eq!(
                end, pair[1].1,
                "fragment {} ends at the next one's tfdt",
                pair[0].0
            );
        }
        out
    }

    /// Muxes `aus` with the given pts; returns the file and the writer's counters.
    fn mux(aus: &[(Vec<u8>, bool)], pts: impl Fn(usize) -> u64) -> (Vec<u8>, u64, u64) {
        let mut w = Fmp4Writer::new(Vec::new(), VideoCodec::H265, 1_750_000_000);
        for (i, (au, key)) in aus.iter().enumerate() {
            w.push(au, pts(i), *key).unwrap();
        }
        let (skipped, clamped) = (w.skipped(), w.clamped());
        (w.finish().unwrap(), skipped, clamped)
    }

    /// ffprobe's codec, tag, size, frame count and duration line.
    fn probe(path: &std::path::Path) -> String {
        let (ok, out, err) = run(
            "ffprobe",
            &[
                "-v",
                "error",
                "-count_frames",
                "-select_streams",
                "v:0",
                "-show_entries",
                "stream=codec_name,codec_tag_string,width,height,nb_read_frames",
                "-show_entries",
                "format=duration",
                "-of",
                "compact=p=0:nk=1",
                s(path),
            ],
        );
        assert!(ok && err.is_empty(), "ffprobe: {err}");
        eprintln!(
            "ffprobe {}: {}",
            path.display(),
            out.trim().replace('\n', " / ")
        );
        out
    }

    /// The fields of `probe` as (codec, tag, width, height, frames, duration).
    fn probe_fields(path: &std::path::Path) -> (String, String, u32, u32, u32, f64) {
        let out = probe(path);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        let f: Vec<&str> = lines[0].split('|').collect();
        (
            f[0].to_owned(),
            f[1].to_owned(),
            f[2].parse().unwrap(),
            f[3].parse().unwrap(),
            f[4].parse().unwrap(),
            lines[1].parse().unwrap(),
        )
    }

    /// Decodes the whole file; returns (exit success, stderr).
    fn decode(path: &std::path::Path) -> (bool, String) {
        let (ok, _, err) = run("ffmpeg", &["-v", "error", "-i", s(path), "-f", "null", "-"]);
        (ok, err)
    }

    /// Decodes the whole file keeping the file's own timestamps: by default ffmpeg rounds
    /// them to its frame rate for the null output and then calls two pictures 1 tick apart
    /// "non monotonically increasing" itself.
    fn decode_own_timestamps(path: &std::path::Path) -> (bool, String) {
        let (ok, _, err) = run(
            "ffmpeg",
            &[
                "-v",
                "error",
                "-i",
                s(path),
                "-fps_mode",
                "passthrough",
                "-enc_time_base",
                "-1",
                "-f",
                "null",
                "-",
            ],
        );
        (ok, err)
    }

    #[test]
    fn four_seconds_mux_to_a_file_ffprobe_and_ffmpeg_accept() {
        let dir = TempDir::new("fmp4-main");
        let aus = annexb_access_units(&encode_h265(&dir, "src", 1280, 720, 4, &[]));
        assert_eq!(aus.len(), 120);
        // An RTP-like start far from zero: the file counts from the first picture.
        let (file, skipped, clamped) = mux(&aus, |i| 7_000_000_000 + i as u64 * 3000);
        assert_eq!((skipped, clamped), (0, 0));
        let path = dir.join("out.mp4");
        std::fs::write(&path, &file).unwrap();

        let (codec, tag, w, h, frames, duration) = probe_fields(&path);
        assert_eq!(
            (codec.as_str(), tag.as_str(), w, h, frames),
            ("hevc", "hvc1", 1280, 720, 120)
        );
        assert!((duration - 4.0).abs() <= 0.1, "duration {duration}");
        assert_eq!(decode(&path), (true, String::new()));

        let kinds: Vec<String> = top_boxes(&file).into_iter().map(|b| b.0).collect();
        assert_eq!(kinds[..2], ["ftyp", "moov"]);
        assert_eq!(kinds[2..], ["moof", "mdat"].repeat(4), "four 1 s fragments");
        let mvhd = find(&file, &["moov", "mvhd"]).unwrap();
        assert_eq!(
            be32(mvhd, 4),
            1_750_000_000 + 2_082_844_800,
            "creation time, 1904 epoch"
        );
        let tkhd = find(&file, &["moov", "trak", "tkhd"]).unwrap();
        assert_eq!((be32(tkhd, 76), be32(tkhd, 80)), (1280 << 16, 720 << 16));
        let hvcc = find(&file, &["moov", "trak", "mdia", "minf", "stbl", "stsd"])
            .map(|stsd| find(&stsd[8 + 8 + 78..], &["hvcC"]).unwrap())
            .unwrap();
        assert_eq!((hvcc[0], hvcc[22]), (1, 3));

        for (k, (seq, tfdt, samples, mdat)) in fragments(&file).into_iter().enumerate() {
            assert_eq!(seq, k as u32 + 1);
            assert_eq!(tfdt, k as u64 * 90_000);
            assert_eq!(samples.len(), 30);
            assert_eq!(
                samples[0].2, 0x0200_0000,
                "fragment starts with a sync sample"
            );
            assert!(samples[1..].iter().all(|s| s.2 == 0x0101_0000));
            assert!(
                samples.iter().all(|s| s.0 == 3000),
                "every picture lasts 1/30 s"
            );
            let total: u32 = samples.iter().map(|s| s.1).sum();
            assert_eq!(total as usize, mdat.len());
            // The samples are length-prefixed NAL units, without parameter sets or AUDs.
            let mut at = 0;
            while at < mdat.len() {
                let len = be32(&mdat, at) as usize;
                let t = (mdat[at + 4] >> 1) & 0x3F;
                assert!(!(32..=35).contains(&t), "NAL type {t} in a sample");
                at += 4 + len;
            }
            assert_eq!(at, mdat.len());
        }
    }

    /// Muxes pictures of `codec` at 30 fps into a file under `dir`, for ffprobe.
    fn mux_to(
        dir: &TempDir,
        codec: VideoCodec,
        pictures: &[(Vec<u8>, bool)],
    ) -> std::path::PathBuf {
        let mut w = Fmp4Writer::new(Vec::new(), codec, 1_750_000_000);
        for (i, (p, key)) in pictures.iter().enumerate() {
            w.push(p, 7000 + i as u64 * 3000, *key).unwrap();
        }
        assert_eq!(w.skipped(), 0);
        let path = dir.join("out.mp4");
        std::fs::write(&path, w.finish().unwrap()).unwrap();
        path
    }

    #[test]
    fn h264_as_browsers_send_it_muxes_to_avc1() {
        let dir = TempDir::new("fmp4-h264");
        let aus = h264_access_units(&encode(&dir, "h264", "src", 640, 480, 3, &[]));
        assert_eq!(aus.len(), 90);
        assert_eq!(aus.iter().filter(|a| a.1).count(), 3);
        let path = mux_to(&dir, VideoCodec::H264, &aus);
        let (codec, tag, w, h, frames, duration) = probe_fields(&path);
        assert_eq!((codec.as_str(), tag.as_str()), ("h264", "avc1"));
        assert_eq!((w, h, frames), (640, 480, 90));
        assert!((duration - 3.0).abs() <= 0.05, "duration {duration}");
        assert_eq!(decode(&path), (true, String::new()));
        // Parameter sets are in avcC only, not in the samples.
        let file = std::fs::read(&path).unwrap();
        let frags = fragments(&file);
        let mut mdat = &frags[0].3[..];
        while !mdat.is_empty() {
            let len = be32(mdat, 0) as usize;
            assert!(!matches!(mdat[4] & 0x1F, 7..=9), "NAL {}", mdat[4] & 0x1F);
            mdat = &mdat[4 + len..];
        }
    }

    #[test]
    fn parameter_sets_that_make_no_sample_entry_are_refused_and_the_file_goes_on() {
        let dir = TempDir::new("fmp4-h264-huge");
        let aus = h264_access_units(&encode(&dir, "h264", "src", 320, 240, 2, &[]));
        let mut w = Fmp4Writer::new(Vec::new(), VideoCodec::H264, 0);
        for (i, (au, key)) in aus.iter().enumerate().take(30) {
            w.push(au, i as u64 * 3000, *key).unwrap();
        }
        // The next keyframe claims 5000 x 16 macroblocks (80000 pixels wide): an SPS that
        // reads, for a picture wider than MP4's 16 bits.
        assert_eq!(
            avc::parse_sps(&h264_sps(5000, 16)).map(|i| (i.width, i.height)),
            Ok((80_000, 256))
        );
        let huge: Vec<u8> = medsfu_codec::h265_rtp::annexb_nal_units(&aus[30].0)
            .into_iter()
            .map(|n| {
                if n[0] & 0x1F == 7 {
                    h264_sps(5000, 16)
                } else {
                    n.to_vec()
                }
            })
            .flat_map(|n| [vec![0, 0, 0, 1], n].concat())
            .collect();
        let err = w.push(&huge, 30 * 3000, true).unwrap_err();
        assert!(err.is_bad_input(), "{err}");
        for (i, (au, key)) in aus.iter().enumerate().skip(31) {
            w.push(au, i as u64 * 3000, *key).unwrap();
        }
        let file = w.finish().unwrap();
        let samples: usize = fragments(&file).iter().map(|f| f.2.len()).sum();
        assert_eq!(samples, 59, "one file, every picture but the refused one");
        let path = dir.join("out.mp4");
        std::fs::write(&path, &file).unwrap();
        let (_, _, width, height, _, _) = probe_fields(&path);
        assert_eq!((width, height), (320, 240));
    }

    #[test]
    fn vp8_muxes_to_vp08_and_a_new_size_ends_the_file() {
        let dir = TempDir::new("fmp4-vp8");
        let frames = ivf_frames(&encode(&dir, "vp8", "src", 320, 240, 2, &[]));
        assert_eq!(frames.len(), 60);
        assert!(frames[0].1 && frames[30].1 && !frames[1].1);
        let path = mux_to(&dir, VideoCodec::Vp8, &frames);
        let (codec, tag, w, h, n, duration) = probe_fields(&path);
        assert_eq!((codec.as_str(), tag.as_str()), ("vp8", "vp08"));
        assert_eq!((w, h, n), (320, 240, 60));
        assert!((duration - 2.0).abs() <= 0.05, "duration {duration}");
        assert_eq!(decode(&path), (true, String::new()));

        let other = ivf_frames(&encode(&dir, "vp8", "small", 160, 120, 1, &[]));
        let mut w = Fmp4Writer::new(Vec::new(), VideoCodec::Vp8, 0);
        // Inter frames before the first key frame are skipped.
        w.push(&frames[1].0, 0, false).unwrap();
        w.push(&frames[0].0, 3000, true).unwrap();
        assert_eq!((w.skipped(), w.dimensions()), (1, Some((320, 240))));
        assert!(matches!(
            w.push(&other[0].0, 6000, true),
            Err(Fmp4Error::ConfigChanged)
        ));
        // A broken key frame is refused as bad input; the file goes on.
        let err = w.push(&[0x00, 0x01, 0x02], 6000, true).unwrap_err();
        assert!(err.is_bad_input(), "{err}");
        assert_eq!(
            vp8_key_frame_size(&frames[1].0).unwrap_err().to_string(),
            "VP8 key frame header: not a key frame"
        );
        w.push(&frames[1].0, 6000, false).unwrap();
    }

    #[test]
    fn a_file_cut_by_a_crash_still_plays() {
        let dir = TempDir::new("fmp4-cut");
        let aus = annexb_access_units(&encode_h265(&dir, "src", 640, 360, 4, &[]));
        // Killed after 100 pictures: the fragments of pictures 0-89 are out, the rest is
        // in memory.
        let mut w = Fmp4Writer::new(Vec::new(), VideoCodec::H265, 0);
        for (i, (au, key)) in aus.iter().take(100).enumerate() {
            w.push(au, i as u64 * 3000, *key).unwrap();
        }
        let killed = dir.join("killed.mp4");
        std::fs::write(&killed, w.get_ref()).unwrap();
        assert_eq!(decode(&killed), (true, String::new()));
        let (_, _, _, _, frames, duration) = probe_fields(&killed);
        assert_eq!(frames, 90);
        assert!((duration - 3.0).abs() <= 0.1, "duration {duration}");

        // Cut in the middle of the last fragment's media data.
        let (file, _, _) = mux(&aus, |i| i as u64 * 3000);
        let last_moof = top_boxes(&file)
            .into_iter()
            .rfind(|b| b.0 == "moof")
            .unwrap();
        let cut_at = last_moof.1 + (file.len() - last_moof.1) / 2;
        let cut = dir.join("cut.mp4");
        std::fs::write(&cut, &file[..cut_at]).unwrap();
        let (ok, err) = decode(&cut);
        assert!(ok, "ffmpeg failed on the cut file: {err}");
        eprintln!("ffmpeg on the cut file says: {}", err.trim());
        let (ok, out, err) = run(
            "ffprobe",
            &[
                "-v",
                "error",
                "-count_frames",
                "-select_streams",
                "v:0",
                "-show_entries",
                "stream=nb_read_frames",
                "-of",
                "csv=p=0",
                s(&cut),
            ],
        );
        eprintln!("ffprobe cut file: frames {} ({})", out.trim(), err.trim());
        assert!(ok);
        let frames: u32 = out.trim().parse().unwrap();
        assert!((90..120).contains(&frames), "{frames} frames");
    }

    #[test]
    fn backward_timestamps_are_clamped_and_the_file_still_plays() {
        let dir = TempDir::new("fmp4-clamp");
        let aus = annexb_access_units(&encode_h265(&dir, "src", 640, 360, 4, &[]));
        // Picture 50 is late by 10 pictures (reordering); from 80 on the publisher's
        // clock restarted at 0.
        let pts = |i: usize| match i {
            50 => 40 * 3000,
            80.. => (i as u64 - 80) * 3000,
            _ => i as u64 * 3000,
        };
        let (file, skipped, clamped) = mux(&aus, pts);
        assert_eq!((skipped, clamped), (0, 2));
        let path = dir.join("out.mp4");
        std::fs::write(&path, &file).unwrap();
        assert_eq!(decode_own_timestamps(&path), (true, String::new()));
        let (ok, err) = decode(&path);
        assert!(ok && !err.contains("hevc"), "decoder errors: {err}");
        let (_, _, _, _, frames, duration) = probe_fields(&path);
        assert_eq!(frames, 120);
        // The restart costs nothing: 120 pictures still last about 4 s.
        assert!((duration - 4.0).abs() <= 0.1, "duration {duration}");

        let (ok, out, _) = run(
            "ffprobe",
            &[
                "-v",
                "error",
                "-select_streams",
                "v:0",
                "-show_entries",
                "packet=pts",
                "-of",
                "csv=p=0",
                s(&path),
            ],
        );
        assert!(ok);
        let ts: Vec<u64> = out.lines().map(|l| l.trim().parse().unwrap()).collect();
        assert_eq!(ts.len(), 120);
        assert!(
            ts.windows(2).all(|w| w[0] < w[1]),
            "strictly increasing: {ts:?}"
        );
        assert_eq!((ts[49], ts[50], ts[51]), (147_000, 147_001, 153_000));
        assert_eq!((ts[79], ts[80], ts[81]), (237_000, 237_001, 240_001));
    }

    #[test]
    fn pictures_before_the_first_keyframe_with_parameter_sets_are_skipped() {
        let dir = TempDir::new("fmp4-skip");
        let mut aus = annexb_access_units(&encode_h265(&dir, "src", 640, 360, 4, &[]));
        // Joined mid-GOP at picture 10; the keyframe at 30 lost its parameter sets.
        aus.drain(..10);
        let (au30, key) = &aus[20];
        assert!(*key);
        let stripped: Vec<u8> = medsfu_codec::h265_rtp::annexb_nal_units(au30)
            .into_iter()
            .filter(|n| !(32..=34).contains(&((n[0] >> 1) & 0x3F)))
            .flat_map(|n| [&[0, 0, 0, 1][..], n].concat())
            .collect();
        aus[20].0 = stripped;

        let mut w = Fmp4Writer::new(Vec::new(), VideoCodec::H265, 0);
        for (i, (au, key)) in aus.iter().enumerate() {
            w.push(au, (i as u64 + 10) * 3000, *key).unwrap();
            if i < 50 {
                assert!(w.get_ref().is_empty(), "nothing written before the start");
            }
        }
        assert_eq!(w.skipped(), 50);
        assert_eq!(w.dimensions(), Some((640, 360)));
        let path = dir.join("out.mp4");
        std::fs::write(&path, w.finish().unwrap()).unwrap();
        assert_eq!(decode(&path), (true, String::new()));
        let (_, _, _, _, frames, duration) = probe_fields(&path);
        assert_eq!(frames, 60);
        assert!((duration - 2.0).abs() <= 0.1, "duration {duration}");
    }

    #[test]
    fn new_parameter_sets_end_the_file() {
        let dir = TempDir::new("fmp4-change");
        let first = annexb_access_units(&encode_h265(&dir, "a", 640, 360, 2, &[]));
        let second = annexb_access_units(&encode_h265(&dir, "b", 320, 240, 1, &[]));
        let mut w = Fmp4Writer::new(Vec::new(), VideoCodec::H265, 0);
        for (i, (au, key)) in first.iter().enumerate() {
            w.push(au, i as u64 * 3000, *key).unwrap();
        }
        let pts = 60 * 3000;
        // A keyframe whose SPS is cut short is damage: refused, the file goes on.
        let broken: Vec<u8> = medsfu_codec::h265_rtp::annexb_nal_units(&second[0].0)
            .into_iter()
            .map(|n| if (n[0] >> 1) & 0x3F == 33 { &n[..4] } else { n })
            .flat_map(|n| [&[0, 0, 0, 1][..], n].concat())
            .collect();
        let err = w.push(&broken, pts, true).unwrap_err();
        assert!(err.is_bad_input(), "{err}");
        assert!(matches!(
            w.push(&second[0].0, pts, true),
            Err(Fmp4Error::ConfigChanged)
        ));
        let a = dir.join("a.mp4");
        std::fs::write(&a, w.finish().unwrap()).unwrap();
        let (_, _, w1, h1, frames, _) = probe_fields(&a);
        assert_eq!((w1, h1, frames), (640, 360, 60), "the old file is whole");

        let mut w = Fmp4Writer::new(Vec::new(), VideoCodec::H265, 0);
        for (i, (au, key)) in second.iter().enumerate() {
            w.push(au, pts + i as u64 * 3000, *key).unwrap();
        }
        let b = dir.join("b.mp4");
        std::fs::write(&b, w.finish().unwrap()).unwrap();
        let (_, _, w2, h2, frames, _) = probe_fields(&b);
        assert_eq!((w2, h2, frames), (320, 240, 30));
        assert_eq!(decode(&b), (true, String::new()));
    }

    #[test]
    fn long_gops_and_large_pictures_still_make_fragments() {
        let dir = TempDir::new("fmp4-limits");
        let aus = annexb_access_units(&encode_h265(&dir, "src", 320, 240, 4, &[]));
        // Only the first picture is called a keyframe and pictures are 0.1 s apart: the
        // 10 s limit closes the first fragment at picture 100.
        let (file, _, _) = mux(
            &aus.iter()
                .enumerate()
                .map(|(i, (au, _))| (au.clone(), i == 0))
                .collect::<Vec<_>>(),
            |i| i as u64 * 9000,
        );
        let frags = fragments(&file);
        let counts: Vec<usize> = frags.iter().map(|f| f.2.len()).collect();
        assert_eq!(counts, [100, 20]);
        assert!(frags.iter().all(|f| f.2.iter().all(|s| s.0 == 9000)));
        let path = dir.join("long.mp4");
        std::fs::write(&path, &file).unwrap();
        assert_eq!(decode(&path), (true, String::new()));

        // Filler data (NAL 38, ignored by decoders) makes each picture 1.5 MiB: the 4 MiB
        // limit closes fragments every 3 pictures, well before the keyframe.
        let filler = [&[0, 0, 0, 1, 38 << 1, 1][..], &vec![0xFF; 3 << 19], &[0x80]].concat();
        let big: Vec<(Vec<u8>, bool)> = aus
            .iter()
            .take(10)
            .map(|(au, k)| ([&au[..], &filler].concat(), *k))
            .collect();
        let (file, _, _) = mux(&big, |i| i as u64 * 3000);
        let frags = fragments(&file);
        let counts: Vec<usize> = frags.iter().map(|f| f.2.len()).collect();
        assert_eq!(counts, [3, 3, 3, 1]);
        assert_eq!(
            frags.iter().map(|f| f.1).collect::<Vec<_>>(),
            [0, 9000, 18000, 27000]
        );
        // The last picture, successor unknown, lasts as long as the one before.
        assert_eq!(frags[3].2[0].0, 3000);
        let path = dir.join("big.mp4");
        std::fs::write(&path, &file).unwrap();
        assert_eq!(decode(&path), (true, String::new()));
    }

    #[test]
    fn a_writer_without_pictures_writes_nothing_and_a_lone_picture_lasts_3000() {
        let w = Fmp4Writer::new(Vec::new(), VideoCodec::H265, 0);
        assert!(w.finish().unwrap().is_empty());

        let dir = TempDir::new("fmp4-lone");
        let aus = annexb_access_units(&encode_h265(&dir, "src", 320, 240, 1, &[]));
        let (file, _, _) = mux(&aus[..1], |_| 5);
        let frags = fragments(&file);
        assert_eq!(frags.len(), 1);
        assert_eq!(frags[0].2, [(3000, frags[0].3.len() as u32, 0x0200_0000)]);
    }

    #[test]
    fn creation_times_after_2040_use_64_bit_boxes() {
        let dir = TempDir::new("fmp4-2040");
        let aus = annexb_access_units(&encode_h265(&dir, "src", 320, 240, 1, &[]));
        let secs = 4_000_000_000u64; // 2096
        let mut w = Fmp4Writer::new(Vec::new(), VideoCodec::H265, secs);
        for (i, (au, key)) in aus.iter().enumerate() {
            w.push(au, i as u64 * 3000, *key).unwrap();
        }
        let file = w.finish().unwrap();
        for path in [
            &["moov", "mvhd"][..],
            &["moov", "trak", "tkhd"],
            &["moov", "trak", "mdia", "mdhd"],
        ] {
            let b = find(&file, path).unwrap();
            assert_eq!(b[0], 1, "{path:?} version 1");
            assert_eq!(
                u64::from_be_bytes(b[4..12].try_into().unwrap()),
                secs + 2_082_844_800
            );
        }
        let path = dir.join("out.mp4");
        std::fs::write(&path, &file).unwrap();
        assert_eq!(decode(&path), (true, String::new()));
        let (_, _, w, h, frames, _) = probe_fields(&path);
        assert_eq!((w, h, frames), (320, 240, 30));
    }
}
