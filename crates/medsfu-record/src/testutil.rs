//! Test helpers: temporary directories and the `ffmpeg`/`ffprobe` binaries, which make real
//! encoder output and judge the files the muxers write.

use std::path::{Path, PathBuf};
use std::process::Command;

use medsfu_codec::h265_rtp::{access_units, annexb_nal_units};

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `medsfu-record-<pid>-<name>`, empty.
    pub fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("medsfu-record-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    /// A path inside the directory.
    pub fn join(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs a command; returns (exit success, stdout, stderr).
pub fn run(cmd: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd} (is ffmpeg installed?): {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Encodes `secs` seconds of testsrc2 at 30 fps with x265 (keyframe every 30 pictures,
/// no B-frames as medsfu's zerolatency encoders, AUDs and headers on every keyframe) and
/// returns the Annex-B stream. `extra` goes before the codec options (e.g. a pix_fmt).
pub fn encode_h265(
    dir: &TempDir,
    name: &str,
    width: u32,
    height: u32,
    secs: u32,
    extra: &[&str],
) -> Vec<u8> {
    encode(dir, "h265", name, width, height, secs, extra)
}

/// Encodes `secs` seconds of testsrc2 at 30 fps, a keyframe every 30 pictures and no
/// B-frames (as real-time encoders), and returns the stream: Annex-B with AUDs and headers
/// on every keyframe for `h265`, `h264` (constrained baseline, as browsers send) and
/// `h264-high` (the profile the pix_fmt in `extra` needs); IVF for `vp8`.
pub fn encode(
    dir: &TempDir,
    codec: &str,
    name: &str,
    width: u32,
    height: u32,
    secs: u32,
    extra: &[&str],
) -> Vec<u8> {
    let out = dir.join(&format!("{name}.{codec}"));
    let src = format!("testsrc2=size={width}x{height}:rate=30");
    let t = secs.to_string();
    let mut args = vec![
        "-hide_banner",
        "-loglevel",
        "error",
        "-f",
        "lavfi",
        "-i",
        &src,
        "-t",
        &t,
    ];
    args.extend_from_slice(extra);
    let codec_args: &[&str] = match codec {
        "h265" => &[
            "-c:v",
            "libx265",
            "-preset",
            "ultrafast",
            "-x265-params",
            "aud=1:repeat-headers=1:keyint=30:min-keyint=30:scenecut=0:bframes=0:log-level=error",
            "-f",
            "hevc",
        ],
        "h264" | "h264-high" => &[
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-x264-params",
            "aud=1:keyint=30:min-keyint=30:scenecut=0:bframes=0",
            "-f",
            "h264",
        ],
        "vp8" => &[
            "-c:v",
            "libvpx",
            "-deadline",
            "realtime",
            "-g",
            "30",
            "-keyint_min",
            "30",
            "-b:v",
            "500k",
            "-f",
            "ivf",
        ],
        other => panic!("no encoder for {other}"),
    };
    args.extend_from_slice(codec_args);
    if codec == "h264" {
        args.extend_from_slice(&["-profile:v", "baseline"]);
    }
    let o = out.to_str().unwrap();
    args.extend_from_slice(&["-y", o]);
    let (ok, _, err) = run("ffmpeg", &args);
    assert!(ok, "ffmpeg failed: {err}");
    std::fs::read(out).unwrap()
}

/// The frames of an IVF file, with whether each is a key frame (the P bit of the VP8
/// frame tag is 0).
pub fn ivf_frames(ivf: &[u8]) -> Vec<(Vec<u8>, bool)> {
    assert_eq!(&ivf[..4], b"DKIF");
    let header = usize::from(u16::from_le_bytes([ivf[6], ivf[7]]));
    let mut rest = &ivf[header..];
    let mut out = Vec::new();
    while rest.len() >= 12 {
        let size = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
        let frame = rest[12..12 + size].to_vec();
        let key = frame[0] & 1 == 0;
        out.push((frame, key));
        rest = &rest[12 + size..];
    }
    out
}

/// The access units of an Annex-B stream, each re-joined with 4-byte start codes, with
/// whether it holds an IRAP picture (NAL types 16 to 23).
pub fn annexb_access_units(stream: &[u8]) -> Vec<(Vec<u8>, bool)> {
    let nals = annexb_nal_units(stream);
    access_units(&nals)
        .into_iter()
        .map(|au| {
            let key = au.iter().any(|n| (16..=23).contains(&((n[0] >> 1) & 0x3F)));
            let mut bytes = Vec::new();
            for nal in au {
                bytes.extend_from_slice(&[0, 0, 0, 1]);
                bytes.extend_from_slice(nal);
            }
            (bytes, key)
        })
        .collect()
}

/// The access units of an H.264 Annex-B stream with AUDs (as [`encode`] makes), each
/// with 4-byte start codes, with whether it holds an IDR picture.
pub fn h264_access_units(stream: &[u8]) -> Vec<(Vec<u8>, bool)> {
    let mut out: Vec<(Vec<u8>, bool)> = Vec::new();
    for nal in annexb_nal_units(stream) {
        let t = nal[0] & 0x1F;
        if t == 9 || out.is_empty() {
            out.push((Vec::new(), false));
        }
        let last = out.last_mut().unwrap();
        last.0.extend_from_slice(&[0, 0, 0, 1]);
        last.0.extend_from_slice(nal);
        last.1 |= t == 5;
    }
    out
}

/// The path as a `&str`, for command arguments.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A hand-made H.264 baseline SPS NAL unit (no cropping, no VUI) of `width_mbs` x
/// `height_mbs` macroblocks: sizes no encoder makes, for the muxer's limits.
pub fn h264_sps(width_mbs: u32, height_mbs: u32) -> Vec<u8> {
    let mut bits: Vec<bool> = Vec::new();
    let mut put = |v: u32, n: u32| {
        for i in (0..n).rev() {
            bits.push((v >> i) & 1 == 1);
        }
    };
    put(66, 8); // profile_idc: baseline
    put(0xC0, 8); // constraint_set0/1
    put(30, 8); // level_idc
    let ue = |put: &mut dyn FnMut(u32, u32), v: u32| {
        let x = v + 1;
        let len = 32 - x.leading_zeros();
        put(0, len - 1);
        put(x, len);
    };
    ue(&mut put, 0); // seq_parameter_set_id
    ue(&mut put, 0); // log2_max_frame_num_minus4
    ue(&mut put, 2); // pic_order_cnt_type
    ue(&mut put, 1); // max_num_ref_frames
    put(0, 1); // gaps_in_frame_num_value_allowed_flag
    ue(&mut put, width_mbs - 1);
    ue(&mut put, height_mbs - 1);
    put(1, 1); // frame_mbs_only_flag
    put(1, 1); // direct_8x8_inference_flag
    put(0, 1); // frame_cropping_flag
    put(0, 1); // vui_parameters_present_flag
    put(1, 1); // rbsp_stop_one_bit
    let mut nal = vec![0x67];
    for chunk in bits.chunks(8) {
        let mut b = 0u8;
        for (i, &bit) in chunk.iter().enumerate() {
            b |= u8::from(bit) << (7 - i);
        }
        nal.push(b);
    }
    nal
}
