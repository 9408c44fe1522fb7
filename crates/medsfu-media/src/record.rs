//! Recorder workers: one thread per recorded track turns the RTP a recorder participant
//! receives into a file standard players open (H.265, H.264 and VP8 in fragmented MP4,
//! Opus in Ogg), flushed about every second so that a crash leaves a playable file.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use medsfu_codec::h265_is_irap_access_unit as is_irap_access_unit;
use medsfu_codec::h265_rtp::{annexb_nal_units, Depacketizer as H265Depacketizer};
use medsfu_codec::{Codec, H264Depacketizer, Vp8Depacketizer};
use medsfu_record::fmp4::{Fmp4Error, Fmp4Writer, VideoCodec};
use medsfu_record::ogg::{opus_packet_samples, OggOpusWriter};
use prometheus::{IntCounter, IntGauge};
use tokio::sync::mpsc;
use tracing::{info, warn};

/// One RTP packet for a recorder.
#[derive(Debug)]
pub struct RecInput {
    /// The RTP sequence number (a gap marks a lost packet).
    pub seq: u16,
    /// The RTP marker bit (the last packet of a picture).
    pub marker: bool,
    /// The RTP timestamp.
    pub timestamp: u32,
    /// The RTP payload.
    pub payload: Bytes,
    /// When the server received it: gaps are filled only as far as time really passed.
    pub arrived: Instant,
}

/// What is recorded, and where.
#[derive(Debug, Clone)]
pub struct TrackFile {
    /// Path without extension; `.mp4` / `.ogg` and `.json` (metadata) are added.
    pub base: PathBuf,
    /// The track's codec: video goes to MP4, Opus to Ogg.
    pub codec: Codec,
    /// Written beside the file: room, track, source, publisher, role, start time, kind.
    pub meta: serde_json::Value,
}

/// The recorders' counters.
#[derive(Debug, Clone)]
pub struct RecordStats {
    /// Tracks being recorded.
    pub active: IntGauge,
    /// Bytes written to recording files.
    pub bytes: IntCounter,
    /// Recordings that stopped with an error.
    pub failures: IntCounter,
    /// Publisher input refused as out of bounds: pictures over the size cap, clock jumps
    /// past the time that really passed.
    pub refused: IntCounter,
}

/// Why a recording stopped early.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The file could not be created or written.
    #[error("recording file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The muxer could not go on.
    #[error("recording {path}: {reason}")]
    Mux {
        /// The file.
        path: PathBuf,
        /// What the muxer said.
        reason: String,
    },
}

/// Who and what a recorded track is, for its file name and metadata.
#[derive(Debug, Clone)]
pub struct TrackLabel<'a> {
    /// `recording` or `voice`.
    pub kind: &'a str,
    /// The room.
    pub room: &'a str,
    /// The track id (`T<n>`).
    pub track: &'a str,
    /// The source (`roof_camera`, `camera`, ...).
    pub source: &'a str,
    /// The track's codec.
    pub codec: Codec,
    /// The publisher's identity.
    pub publisher: &'a str,
    /// The publisher's role.
    pub role: &'a str,
}

impl TrackFile {
    /// The file of a track recorded from `started` on, under `dir/ROOM/` and named after
    /// its start (UTC), kind, track and source; its metadata says the rest.
    pub fn new(dir: &Path, label: &TrackLabel<'_>, started: SystemTime) -> TrackFile {
        let since_epoch = started
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let stamp = medsfu_record::utc::file_stamp(since_epoch.as_secs() as i64);
        let base = dir.join(label.room).join(format!(
            "{stamp}-{}-{}-{}",
            label.kind, label.track, label.source
        ));
        let meta = serde_json::json!({
            "kind": label.kind,
            "room": label.room,
            "track": label.track,
            "source": label.source,
            "codec": label.codec.mime(),
            "publisher": label.publisher,
            "role": label.role,
            "started_at": stamp,
            "started_at_unix_ms": since_epoch.as_millis() as u64,
        });
        TrackFile {
            base,
            codec: label.codec,
            meta,
        }
    }
}

/// A file whose writes are counted in `medsfu_recording_bytes_written_total`.
struct Counted {
    file: std::fs::File,
    bytes: IntCounter,
}

impl Write for Counted {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.bytes.inc_by(n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

fn create(path: &Path, stats: &RecordStats) -> Result<Counted, RecordError> {
    let io = |source| RecordError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let file = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(path)
        .map_err(io)?;
    Ok(Counted {
        file,
        bytes: stats.bytes.clone(),
    })
}

fn with_ext(base: &Path, suffix: &str) -> PathBuf {
    let mut s = base.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Called once with the reason when a recording stops with an error.
pub type OnFailure = Box<dyn FnOnce(String) + Send>;

/// Starts a recorder thread for one track; dropping the returned sender finishes the file.
pub fn spawn(file: TrackFile, stats: RecordStats, failed: OnFailure) -> mpsc::Sender<RecInput> {
    let (tx, rx) = mpsc::channel(4096);
    stats.active.inc();
    let s = stats.clone();
    let spawned = std::thread::Builder::new()
        .name("medsfu-record".into())
        .spawn(move || {
            let r = write_meta(&file).and_then(|()| {
                let open = |path: &Path| create(path, &s);
                if let Some(codec) = video_codec(file.codec) {
                    record_video(&file.base, codec, rx, open, &s.refused)
                } else {
                    record_audio(&file, rx, open, &s.refused)
                }
            });
            match r {
                Ok(()) => info!("recording finished"),
                Err(e) => {
                    s.failures.inc();
                    warn!(error = %e, "recording failed; forwarding is not affected");
                    failed(e.to_string());
                }
            }
            s.active.dec();
        });
    if let Err(e) = spawned {
        stats.failures.inc();
        stats.active.dec();
        warn!(error = %e, "recorder thread could not start");
    }
    tx
}

/// Runs `inputs` through the recorder of `codec` into memory, as a recorder thread would
/// into a file: the recorded bytes (all parts, one after another) and how much input was
/// refused. For fuzzing and tests of the whole pipeline; the server records with
/// [`spawn`].
pub fn record_in_memory(
    codec: Codec,
    inputs: Vec<RecInput>,
) -> Result<(Vec<u8>, u64), RecordError> {
    /// Every part's bytes in one shared buffer.
    #[derive(Clone, Default)]
    struct Shared(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let (tx, rx) = mpsc::channel(inputs.len().max(1));
    for i in inputs {
        // Capacity is the input's length: this cannot fail.
        let _ = tx.try_send(i);
    }
    drop(tx);
    let out = Shared::default();
    let refused = IntCounter::new("refused", "refused").map_err(|e| RecordError::Mux {
        path: PathBuf::new(),
        reason: e.to_string(),
    })?;
    let open = |_: &Path| Ok(out.clone());
    if let Some(video) = video_codec(codec) {
        record_video(Path::new("memory"), video, rx, open, &refused)?;
    } else {
        let file = TrackFile {
            base: PathBuf::from("memory"),
            codec,
            meta: serde_json::Value::Null,
        };
        record_audio(&file, rx, open, &refused)?;
    }
    let bytes = std::mem::take(&mut *out.0.lock().unwrap_or_else(|p| p.into_inner()));
    Ok((bytes, refused.get()))
}

fn write_meta(file: &TrackFile) -> Result<(), RecordError> {
    let path = with_ext(&file.base, ".json");
    let io = |source| RecordError::Io {
        path: path.clone(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let text = serde_json::to_vec_pretty(&file.meta).unwrap_or_default();
    std::fs::write(&path, text).map_err(io)
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Extends 32-bit RTP timestamps into a running count from the first one.
#[derive(Default)]
struct Unwrap {
    last: Option<u32>,
    ext: i64,
}

impl Unwrap {
    fn next(&mut self, ts: u32) -> u64 {
        if let Some(l) = self.last {
            // Signed difference: a packet a little older than the last goes back a little.
            self.ext += i64::from(ts.wrapping_sub(l) as i32);
        }
        self.last = Some(ts);
        u64::try_from(self.ext.max(0)).unwrap_or(0)
    }
}

/// The MP4 codec of a video track; `None` for audio.
pub(crate) fn video_codec(codec: Codec) -> Option<VideoCodec> {
    match codec {
        Codec::H265 => Some(VideoCodec::H265),
        Codec::H264 => Some(VideoCodec::H264),
        Codec::Vp8 => Some(VideoCodec::Vp8),
        _ => None,
    }
}

/// How far behind the expected sequence number a packet is taken as late (and ignored);
/// further back, the sequence jumped and is followed from there.
const LATE_WINDOW: i16 = 1000;

/// The depacketizer of one video codec.
enum Depacketize {
    H265(H265Depacketizer),
    H264(H264Depacketizer),
    Vp8(Vp8Depacketizer),
}

/// Rebuilds a video track's pictures from its RTP packets. A picture that lost a packet,
/// or had a damaged one, is dropped whole: the decoder conceals a missing picture better
/// than a broken one, and the next keyframe heals the stream.
struct Pictures {
    depacketize: Depacketize,
    /// The sequence number the next packet should have.
    expected: Option<u16>,
    /// Packets are ignored until the end of the current picture.
    damaged: bool,
    /// Pictures dropped as damaged.
    dropped: u64,
    /// Of those, pictures dropped for growing past the size cap.
    oversized: u64,
}

impl Pictures {
    fn new(codec: VideoCodec) -> Pictures {
        let depacketize = match codec {
            VideoCodec::H264 => Depacketize::H264(H264Depacketizer::new()),
            VideoCodec::Vp8 => Depacketize::Vp8(Vp8Depacketizer::new()),
            _ => Depacketize::H265(H265Depacketizer::new()),
        };
        Pictures {
            depacketize,
            expected: None,
            damaged: false,
            dropped: 0,
            oversized: 0,
        }
    }

    /// Adds one packet; returns a finished picture (Annex-B, or a VP8 frame) and whether
    /// a decoder can start at it.
    fn push(&mut self, i: &RecInput) -> Option<(Vec<u8>, bool)> {
        if let Some(expected) = self.expected {
            match i.seq.wrapping_sub(expected) as i16 {
                0 => {}
                // A late or repeated packet: its picture was dealt with already.
                d if (-LATE_WINDOW..0).contains(&d) => return None,
                // Lost packets, or a jump of the sequence (a new stream): start again.
                _ => self.damage(),
            }
        }
        self.expected = Some(i.seq.wrapping_add(1));
        if self.damaged {
            self.damaged = !i.marker;
            return None;
        }
        let pushed = match &mut self.depacketize {
            Depacketize::H265(d) => d.push(&i.payload, i.marker),
            Depacketize::H264(d) => d.push(&i.payload, i.marker),
            Depacketize::Vp8(d) => d.push(&i.payload, i.marker),
        };
        match pushed {
            Ok(Some(picture)) => {
                let keyframe = match self.depacketize {
                    Depacketize::H265(_) => is_irap_access_unit(annexb_nal_units(&picture)),
                    Depacketize::H264(_) => annexb_nal_units(&picture)
                        .iter()
                        .any(|n| n.first().is_some_and(|h| h & 0x1F == 5)),
                    Depacketize::Vp8(_) => picture.first().is_some_and(|t| t & 1 == 0),
                };
                Some((picture, keyframe))
            }
            Ok(None) => None,
            Err(e) => {
                if e == medsfu_codec::h265_rtp::DepacketizeError::TooLarge {
                    self.oversized += 1;
                }
                self.damage();
                self.damaged = !i.marker;
                None
            }
        }
    }

    fn damage(&mut self) {
        match &mut self.depacketize {
            Depacketize::H265(d) => d.reset(),
            Depacketize::H264(d) => d.reset(),
            Depacketize::Vp8(d) => d.reset(),
        }
        self.damaged = true;
        self.dropped += 1;
    }
}

/// Writes a video track's packets into `base.mp4` (and `base-2.mp4`, ... when the
/// publisher's configuration changes), each file made by `open`.
fn record_video<W: Write>(
    base: &Path,
    codec: VideoCodec,
    mut rx: mpsc::Receiver<RecInput>,
    open: impl Fn(&Path) -> Result<W, RecordError>,
    refused_input: &IntCounter,
) -> Result<(), RecordError> {
    let mut part = 1;
    let mut path = with_ext(base, ".mp4");
    let mux_err = |path: &Path, e: Fmp4Error| RecordError::Mux {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let new_writer = |path: &Path| -> Result<_, RecordError> {
        Ok(Fmp4Writer::new(
            open(path)?,
            codec,
            unix_secs(SystemTime::now()),
        ))
    };
    let mut w = new_writer(&path)?;
    let mut pictures = Pictures::new(codec);
    let mut clock = Unwrap::default();
    let mut refused = 0u64;
    let mut oversized = 0;
    while let Some(i) = rx.blocking_recv() {
        let picture = pictures.push(&i);
        if pictures.oversized != oversized {
            oversized = pictures.oversized;
            refused_input.inc();
        }
        let Some((picture, keyframe)) = picture else {
            continue;
        };
        let pts = clock.next(i.timestamp);
        match w.push(&picture, pts, keyframe) {
            Ok(()) => {}
            Err(Fmp4Error::ConfigChanged) => {
                // New resolution or encoder: the next part of the recording, in a new file.
                w.finish().map_err(|e| mux_err(&path, e))?;
                part += 1;
                path = with_ext(base, &format!("-{part}.mp4"));
                w = new_writer(&path)?;
                if let Err(e) = w.push(&picture, pts, keyframe) {
                    if !e.is_bad_input() {
                        return Err(mux_err(&path, e));
                    }
                    refused += 1;
                }
            }
            // A picture the publisher broke is left out; the file stays valid.
            Err(e) if e.is_bad_input() => refused += 1,
            Err(e) => return Err(mux_err(&path, e)),
        }
    }
    let (skipped, clamped) = (w.skipped(), w.clamped());
    w.finish().map_err(|e| mux_err(&path, e))?;
    info!(
        parts = part,
        damaged = pictures.dropped,
        oversized,
        refused,
        before_keyframe = skipped,
        clamped,
        "video recording finished"
    );
    Ok(())
}

/// An Opus packet of 20 ms of silence (CELT, full band, mono: decoders upmix it).
const OPUS_SILENCE: [u8; 3] = [0xf8, 0xff, 0xfe];
/// Samples (48 kHz) in [`OPUS_SILENCE`].
const SILENCE_SAMPLES: u64 = 960;
/// How far (48 kHz samples, one second) the archive may run ahead of the time that
/// really passed since the track's first packet: jitter, and packets sent in a burst.
const AHEAD_SAMPLES: u64 = 48_000;

/// Silence frames to write before a packet at `at` (48 kHz samples on the track's
/// clock since its first packet) when `written` samples are in the file and `elapsed`
/// samples of real time passed since the first packet: the time when nothing came (a
/// lost packet, a dropped link, a publisher's restart, DTX). The publisher's clock says
/// how long the gap was, unless it claims more than really passed: then it jumped (a
/// fault, or an attack that would turn each tiny packet into minutes of silence on
/// disk) and the file is filled only up to the time that passed.
fn silence_before(at: u64, written: u64, elapsed: u64) -> u64 {
    let missing = at.saturating_sub(written);
    if written + missing <= elapsed + AHEAD_SAMPLES {
        missing / SILENCE_SAMPLES
    } else {
        elapsed.saturating_sub(written) / SILENCE_SAMPLES
    }
}

/// 48 kHz samples in `d`.
fn samples_48k(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_micros() * 48 / 1000).unwrap_or(u64::MAX)
}

/// Writes an Opus track's packets into `base.ogg`, made by `open`.
fn record_audio<W: Write>(
    file: &TrackFile,
    mut rx: mpsc::Receiver<RecInput>,
    open: impl Fn(&Path) -> Result<W, RecordError>,
    refused_input: &IntCounter,
) -> Result<(), RecordError> {
    let path = with_ext(&file.base, ".ogg");
    let mux_err = |e: &dyn std::fmt::Display| RecordError::Mux {
        path: path.clone(),
        reason: e.to_string(),
    };
    let field = |k: &str| file.meta[k].as_str().unwrap_or("").to_owned();
    let (who, role, started) = (field("publisher"), field("role"), field("started_at"));
    let comments = [
        ("MEDSFU_PUBLISHER", who.as_str()),
        ("MEDSFU_ROLE", role.as_str()),
        ("MEDSFU_STARTED_AT", started.as_str()),
    ];
    let mut w = OggOpusWriter::new(open(&path)?, rand::random(), 2, 312, 48_000, &comments)
        .map_err(|e| mux_err(&e))?;
    // The archive keeps the call's time: the n-th second of the file is the n-th second
    // since the track began. The subscriber's clock advances by wall time across
    // publisher restarts (see the munger), so its gaps are the gaps in what was heard.
    let mut clock = Unwrap::default();
    let mut written: u64 = 0;
    let mut first: Option<Instant> = None;
    // Taken off the publisher's clock after it jumped (ahead of real time, or back).
    let mut skipped: i64 = 0;
    let mut jumps = 0u64;
    while let Some(i) = rx.blocking_recv() {
        let Some(samples) = opus_packet_samples(&i.payload) else {
            continue;
        };
        let raw = i64::try_from(clock.next(i.timestamp)).unwrap_or(i64::MAX);
        let done = i64::try_from(written).unwrap_or(i64::MAX);
        if raw.saturating_sub(skipped) + (AHEAD_SAMPLES as i64) < done {
            // The clock came back after a jump, or jumped backwards: follow it from here,
            // so that later real gaps are filled again.
            skipped = raw.saturating_sub(done);
        }
        let at = u64::try_from(raw.saturating_sub(skipped)).unwrap_or(0);
        let elapsed = samples_48k(i.arrived - *first.get_or_insert(i.arrived));
        let fill = silence_before(at, written, elapsed);
        let filled_to = written + fill * SILENCE_SAMPLES;
        if at >= filled_to + SILENCE_SAMPLES {
            // The publisher's clock ran ahead of real time: the file follows real time,
            // and later gaps are measured from here.
            skipped = skipped.saturating_add(i64::try_from(at - filled_to).unwrap_or(i64::MAX));
            jumps += 1;
            refused_input.inc();
        }
        for _ in 0..fill {
            w.push(&OPUS_SILENCE, SILENCE_SAMPLES as u32)
                .map_err(|e| mux_err(&e))?;
            written += SILENCE_SAMPLES;
        }
        w.push(&i.payload, samples).map_err(|e| mux_err(&e))?;
        written += u64::from(samples);
    }
    w.finish().map_err(|e| mux_err(&e))?;
    if jumps > 0 {
        info!(
            jumps,
            "voice archive: publisher clock jumps not filled with silence"
        );
    }
    Ok(())
}

/// Waits for a keyframe, gathers the pictures after it for a moment (the cached group of
/// pictures arrives at once, then live ones), decodes them with ffmpeg and writes the
/// last one as PNG, cropped to a sector (1-9 of a 3x3 grid) if asked. Returns the file.
pub(crate) async fn screenshot(
    mut rx: mpsc::Receiver<RecInput>,
    codec: VideoCodec,
    path: PathBuf,
    sector: u8,
) -> Result<PathBuf, String> {
    use tokio::io::AsyncWriteExt as _;
    const KEYFRAME_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);
    const GATHER: std::time::Duration = std::time::Duration::from_millis(300);
    let mut pictures = Pictures::new(codec);
    // Annex-B for H.265 and H.264 (the elementary stream), IVF for VP8.
    let mut stream = Vec::new();
    let mut deadline = tokio::time::Instant::now() + KEYFRAME_WITHIN;
    let mut have_keyframe = false;
    loop {
        let i = match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(i)) => i,
            Ok(None) => return Err("the track ended".into()),
            Err(_) if have_keyframe => break,
            Err(_) => return Err("no keyframe within 5 s".into()),
        };
        let Some((picture, keyframe)) = pictures.push(&i) else {
            continue;
        };
        if keyframe && !have_keyframe {
            have_keyframe = true;
            deadline = tokio::time::Instant::now() + GATHER;
            if codec == VideoCodec::Vp8 {
                stream.extend_from_slice(&ivf_header());
            }
        }
        if have_keyframe {
            if codec == VideoCodec::Vp8 {
                // Fits: an RTP-carried frame is far below 4 GiB; the pts is unused.
                stream.extend_from_slice(&(picture.len() as u32).to_le_bytes());
                stream.extend_from_slice(&[0; 8]);
            }
            stream.extend_from_slice(&picture);
        }
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let mut c = tokio::process::Command::new("ffmpeg");
    c.args([
        "-hide_banner",
        "-loglevel",
        "error",
        "-nostdin",
        "-f",
        match codec {
            VideoCodec::H264 => "h264",
            VideoCodec::Vp8 => "ivf",
            _ => "hevc",
        },
        "-i",
        "pipe:0",
    ]);
    if (1..=9).contains(&sector) {
        let (col, row) = ((sector - 1) % 3, (sector - 1) / 3);
        c.args(["-vf", &format!("crop=iw/3:ih/3:{col}*iw/3:{row}*ih/3")]);
    }
    // Every decoded picture overwrites the file: the last one stays.
    c.args(["-fps_mode", "passthrough", "-update", "1", "-y"])
        .arg(&path)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    // The pictures are gathered; the track's later packets are not wanted.
    drop(rx);
    let mut child = c.spawn().map_err(|e| format!("starting ffmpeg: {e}"))?;
    let stdin = child.stdin.take();
    // Feeding and reading at once, within the time limit: an ffmpeg blocked on a full
    // stderr pipe must not block the feeding (and the feeding must not block the reading).
    let feed = async move {
        if let Some(mut stdin) = stdin {
            // A decoder that stops reading early leaves a broken pipe; its exit says why.
            let _ = stdin.write_all(&stream).await;
        }
    };
    let run = async { tokio::join!(feed, child.wait_with_output()).1 };
    let out = tokio::time::timeout(std::time::Duration::from_secs(20), run)
        .await
        .map_err(|_| "ffmpeg took over 20 s".to_owned())?
        .map_err(|e| format!("ffmpeg: {e}"))?;
    if !out.status.success() || !path.exists() {
        return Err(format!(
            "ffmpeg: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(path)
}

/// The header of an IVF file of VP8 frames, as ffmpeg reads it from a pipe: size and
/// frame rate are placeholders, the decoder takes the size from the key frame.
fn ivf_header() -> [u8; 32] {
    let mut h = [0u8; 32];
    h[..4].copy_from_slice(b"DKIF");
    h[6..8].copy_from_slice(&32u16.to_le_bytes()); // header length
    h[8..12].copy_from_slice(b"VP80");
    h[16..20].copy_from_slice(&30u32.to_le_bytes()); // time base: 1/30
    h[20..24].copy_from_slice(&1u32.to_le_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A voice-archive track file in `dir`.
    fn voice_file(dir: &Path) -> TrackFile {
        TrackFile {
            base: dir.join("voice"),
            codec: Codec::Opus,
            meta: serde_json::json!({ "publisher": "amb-1", "role": "vehicle" }),
        }
    }

    fn test_stats() -> RecordStats {
        RecordStats {
            active: IntGauge::new("a", "a").unwrap(),
            bytes: IntCounter::new("b", "b").unwrap(),
            failures: IntCounter::new("c", "c").unwrap(),
            refused: IntCounter::new("d", "d").unwrap(),
        }
    }

    #[test]
    fn rtp_timestamps_unwrap_across_the_32_bit_boundary_and_small_reorders() {
        let mut u = Unwrap::default();
        assert_eq!(u.next(u32::MAX - 2999), 0);
        assert_eq!(u.next(0), 3000, "across the wrap");
        assert_eq!(u.next(3000), 6000);
        assert_eq!(u.next(1000), 4000, "a slightly older packet goes back");
        assert_eq!(u.next(9000), 12000);
    }

    fn rtp(seq: u16, marker: bool, payload: &[u8]) -> RecInput {
        RecInput {
            seq,
            marker,
            timestamp: 0,
            payload: Bytes::copy_from_slice(payload),
            arrived: Instant::now(),
        }
    }

    #[test]
    fn a_picture_that_lost_a_packet_is_dropped_whole_and_the_next_one_kept() {
        let mut p = Pictures::new(VideoCodec::H264);
        // An IDR in two slices, each its own packet.
        assert_eq!(p.push(&rtp(10, false, &[0x65, 1])), None);
        let (idr, key) = p.push(&rtp(11, true, &[0x65, 2])).unwrap();
        assert!(key);
        assert_eq!(idr, [0, 0, 0, 1, 0x65, 1, 0, 0, 0, 1, 0x65, 2]);
        // Packet 13 is lost: the rest of that picture (14, the marker) is dropped.
        assert_eq!(p.push(&rtp(12, false, &[0x41, 3])), None);
        assert_eq!(p.push(&rtp(14, true, &[0x41, 4])), None);
        // Packet 13 arrives late: ignored.
        assert_eq!(p.push(&rtp(13, false, &[0x41, 5])), None);
        let (next, key) = p.push(&rtp(15, true, &[0x41, 6])).unwrap();
        assert!(!key);
        assert_eq!(next, [0, 0, 0, 1, 0x41, 6]);
        // A damaged packet drops its picture; a wrapping sequence number is no gap.
        assert_eq!(p.push(&rtp(16, false, &[0x7c])), None);
        assert_eq!(p.push(&rtp(17, true, &[0x41, 7])), None);
        let mut p2 = Pictures::new(VideoCodec::Vp8);
        assert!(p2.push(&rtp(u16::MAX, false, &[0x10, 0x9d])).is_none());
        let (frame, key) = p2.push(&rtp(0, true, &[0x00, 0x01])).unwrap();
        assert_eq!((frame, key), (vec![0x9d, 0x01], false));
        assert_eq!((p.dropped, p2.dropped), (2, 0));
        // A sequence that jumps far back is a new stream, followed from there; a little
        // back is a late packet.
        assert_eq!(p.push(&rtp(10, true, &[0x41, 8])), None);
        assert_eq!(p.push(&rtp(60_000, true, &[0x41, 8])), None);
        let (next, _) = p.push(&rtp(60_001, true, &[0x41, 9])).unwrap();
        assert_eq!(next, [0, 0, 0, 1, 0x41, 9]);
        assert_eq!(p.dropped, 3);
    }

    #[test]
    fn a_picture_that_never_ends_is_dropped_at_the_cap_and_counted() {
        let mut p = Pictures::new(VideoCodec::H264);
        let mut fu = vec![0x7c, 0x85];
        fu.extend(std::iter::repeat_n(1u8, 1200));
        let mut seq = 0u16;
        // 10 MB of one fragmented IDR that never ends (34 MB stayed in memory before).
        for _ in 0..(10 << 20) / 1200 {
            assert!(p.push(&rtp(seq, false, &fu)).is_none());
            fu[1] = 0x05;
            seq = seq.wrapping_add(1);
        }
        assert_eq!(p.oversized, 1);
        assert!(p.dropped >= 1);
        // The broken picture's end is ignored, the next picture recorded.
        assert!(p.push(&rtp(seq, true, &fu)).is_none());
        let (next, key) = p.push(&rtp(seq.wrapping_add(1), true, &[0x65, 7])).unwrap();
        assert_eq!((next, key), (vec![0, 0, 0, 1, 0x65, 7], true));
    }

    #[test]
    fn gaps_in_the_voice_archive_are_filled_with_silence_and_bogus_jumps_are_not() {
        assert_eq!(opus_packet_samples(&OPUS_SILENCE), Some(960));
        let s = 48_000;
        assert_eq!(silence_before(0, 0, 0), 0);
        assert_eq!(silence_before(960, 960, 960), 0, "on time");
        assert_eq!(silence_before(1920, 960, 1920), 1, "one packet lost");
        assert_eq!(
            silence_before(960 + s * 5, 960, 960 + s * 5),
            250,
            "five seconds of nothing"
        );
        assert_eq!(silence_before(500, 960, 960), 0, "a late packet");
        // A clock that jumps further than time passed is followed only as far as time
        // passed (plus a second of jitter).
        assert_eq!(
            silence_before(u64::from(u32::MAX), 0, 0),
            0,
            "a broken clock"
        );
        assert_eq!(
            silence_before(s * 3600, s * 10, s * 10 + 1920),
            2,
            "up to real time"
        );
        assert_eq!(
            silence_before(s * 3600, s * 11, s * 10),
            0,
            "a second ahead already"
        );
        assert_eq!(
            silence_before(s * 11, s * 10, s * 10),
            50,
            "a second of lead is jitter"
        );
    }

    /// Runs packets `(rtp timestamp, arrival in ms)` through the voice archive; returns
    /// the file's length in samples and bytes, and how many jumps were refused.
    fn archive(packets: &[(u32, u64)]) -> (u64, u64, u64) {
        static RUN: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("medsfu-jumps-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = voice_file(&dir);
        let stats = test_stats();
        let (tx, rx) = mpsc::channel(packets.len() + 1);
        let t0 = Instant::now();
        for &(ts, ms) in packets {
            tx.try_send(RecInput {
                seq: 0,
                marker: false,
                timestamp: ts,
                payload: Bytes::from_static(&OPUS_SILENCE),
                arrived: t0 + std::time::Duration::from_millis(ms),
            })
            .unwrap();
        }
        drop(tx);
        record_audio(&file, rx, |p| create(p, &stats), &stats.refused).unwrap();
        let ogg = std::fs::read(dir.join("voice.ogg")).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let last = ogg.windows(4).rposition(|w| w == b"OggS").unwrap();
        let granule = u64::from_le_bytes(ogg[last + 6..last + 14].try_into().unwrap());
        (granule, ogg.len() as u64, stats.refused.get())
    }

    #[test]
    fn a_publisher_jumping_its_clock_cannot_fill_the_disk_with_silence() {
        // The attack measured: 200 tiny packets, each jumping the clock by ten minutes,
        // sent 5 ms apart (one second in all). It made 27 MB of silence.
        let jumps: Vec<(u32, u64)> = (0..200u32)
            .map(|n| (n.wrapping_mul(48_000 * 600), u64::from(n) * 5))
            .collect();
        let (samples, bytes, refused) = archive(&jumps);
        assert_eq!(
            samples,
            200 * 960,
            "the packets' own 20 ms each, no silence"
        );
        assert!(
            bytes < 20_000,
            "{bytes} bytes on disk for 200 packets of 3 bytes"
        );
        assert!(refused >= 199, "each jump counted: {refused}");
        // After jumps the archive keeps real gaps: one second of packets, a real second
        // of nothing, one more second.
        let mut p: Vec<(u32, u64)> = vec![(0, 0), (48_000 * 3600, 20)];
        p.extend((2..50u32).map(|n| (48_000 * 3600 + (n - 1) * 960, u64::from(n) * 20)));
        p.extend((150..200u32).map(|n| (48_000 * 3600 + (n - 1) * 960, u64::from(n) * 20)));
        let (samples, _, _) = archive(&p);
        assert_eq!(samples, 200 * 960, "four seconds, as on the wall clock");
        // One packet an hour ahead, then the clock goes on from before it: a real gap
        // afterwards is still filled (the spike does not switch filling off).
        let mut p: Vec<(u32, u64)> = (0..50u32).map(|n| (n * 960, u64::from(n) * 20)).collect();
        p.push((48_000 * 3600, 1000));
        p.extend((51..100u32).map(|n| (n * 960, u64::from(n) * 20)));
        p.extend((150..200u32).map(|n| (n * 960, u64::from(n) * 20)));
        let (samples, _, _) = archive(&p);
        assert_eq!(samples, 200 * 960, "the gap after a spike is filled");
    }

    #[test]
    fn bytes_on_disk_stay_bounded_by_real_time_whatever_the_timestamps() {
        // Property: for any timestamps, the archive is at most one second longer than the
        // time the packets really took to arrive, and a refused jump is counted.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..20 {
            let n = 20 + next() % 200;
            let mut ms = 0u64;
            let mut ts = 0u32;
            let packets: Vec<(u32, u64)> = (0..n)
                .map(|_| {
                    ms += next() % 100;
                    ts = match next() % 4 {
                        0 => next() as u32,
                        1 => ts.wrapping_sub((next() % 5000) as u32),
                        _ => ts.wrapping_add(960),
                    };
                    (ts, ms)
                })
                .collect();
            let (samples, bytes, _) = archive(&packets);
            let bound = (ms + 1000) * 48 + 960 * n;
            assert!(samples <= bound, "{samples} > {bound} for {packets:?}");
            // Silence frames are 3 bytes plus lacing; pages add 27 bytes a second.
            assert!(
                bytes <= 2_000 + samples / 960 * 5 + n * 5,
                "{bytes} for {samples}"
            );
        }
    }

    #[test]
    fn an_archived_track_with_a_gap_lasts_as_long_as_the_call() {
        let dir = std::env::temp_dir().join(format!("medsfu-voice-gap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = voice_file(&dir);
        let stats = test_stats();
        let (tx, rx) = mpsc::channel(1000);
        // One second (50 packets of 20 ms), two seconds of nothing, one more.
        let t0 = Instant::now();
        let packet = |n: u32| RecInput {
            seq: 0,
            marker: false,
            timestamp: 1000 + n * 960,
            payload: Bytes::from_static(&OPUS_SILENCE),
            arrived: t0 + std::time::Duration::from_millis(u64::from(n) * 20),
        };
        for n in 0..50u32 {
            tx.try_send(packet(n)).unwrap();
        }
        for n in 150..200u32 {
            tx.try_send(packet(n)).unwrap();
        }
        drop(tx);
        record_audio(&file, rx, |p| create(p, &stats), &stats.refused).unwrap();
        assert_eq!(stats.refused.get(), 0, "a real gap is no jump");
        let ogg = std::fs::read(dir.join("voice.ogg")).unwrap();
        let last = ogg.windows(4).rposition(|w| w == b"OggS").unwrap();
        let granule = u64::from_le_bytes(ogg[last + 6..last + 14].try_into().unwrap());
        assert_eq!(granule, 200 * 960, "four seconds, not two");
        // Players agree: ffmpeg decodes it without a complaint, four seconds long.
        let out = std::process::Command::new("ffprobe")
            .args([
                "-v",
                "error",
                "-show_entries",
                "format=duration",
                "-of",
                "csv=p=0",
            ])
            .arg(dir.join("voice.ogg"))
            .output()
            .expect("ffprobe (scripts/test.sh installs ffmpeg)");
        let duration: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        assert!((duration - 4.0).abs() < 0.05, "{duration}");
        let out = std::process::Command::new("ffmpeg")
            .args(["-v", "error", "-i"])
            .arg(dir.join("voice.ogg"))
            .args(["-f", "null", "-"])
            .output()
            .expect("ffmpeg");
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A disk with room for `room` bytes: then writes fail as on a full disk (ENOSPC).
    struct FullDisk {
        written: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
        room: usize,
    }

    impl Write for FullDisk {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let mut w = self.written.lock().expect("not poisoned");
            let left = self.room.saturating_sub(w.len());
            if left == 0 {
                return Err(std::io::Error::from_raw_os_error(28));
            }
            let n = buf.len().min(left);
            w.extend_from_slice(&buf[..n]);
            Ok(n)
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Runs a command; returns (success, stdout, stderr).
    fn run(cmd: &str, args: &[&str]) -> (bool, String, String) {
        let out = std::process::Command::new(cmd)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{cmd} (scripts/test.sh installs ffmpeg): {e}"));
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    #[test]
    fn a_full_disk_ends_the_recording_with_an_error_and_leaves_a_playable_file() {
        let dir = std::env::temp_dir().join(format!("medsfu-full-disk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let source = dir.join("src.h264");
        // Four seconds of H.264 as a browser sends it: constrained baseline, a keyframe a
        // second, an access unit delimiter before each picture.
        let (ok, _, err) = run(
            "ffmpeg",
            &[
                "-v",
                "error",
                "-y",
                "-f",
                "lavfi",
                "-i",
                "testsrc2=size=320x240:rate=30",
                "-t",
                "4",
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-profile:v",
                "baseline",
                "-x264-params",
                "aud=1:keyint=30:min-keyint=30:scenecut=0:bframes=0",
                "-f",
                "h264",
                source.to_str().unwrap(),
            ],
        );
        assert!(ok, "{err}");
        let stream = std::fs::read(&source).unwrap();
        let mut aus: Vec<Vec<&[u8]>> = Vec::new();
        for nal in annexb_nal_units(&stream) {
            if nal[0] & 0x1F == 9 || aus.is_empty() {
                aus.push(Vec::new());
            }
            aus.last_mut().unwrap().push(nal);
        }
        assert_eq!(aus.len(), 120);
        let (tx, rx) = mpsc::channel(100_000);
        let mut seq = 0u16;
        for (i, au) in aus.iter().enumerate() {
            let payloads = medsfu_codec::h264_payload_nal_units(au, 1200);
            let last = payloads.len() - 1;
            for (k, p) in payloads.into_iter().enumerate() {
                let input = RecInput {
                    seq,
                    marker: k == last,
                    timestamp: i as u32 * 3000,
                    payload: Bytes::from(p),
                    arrived: Instant::now(),
                };
                tx.try_send(input).unwrap();
                seq = seq.wrapping_add(1);
            }
        }
        drop(tx);

        // The disk fills up half way through the recording.
        let written = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let disk = written.clone();
        let room = stream.len() / 2;
        let refused = IntCounter::new("d", "d").unwrap();
        let open = move |_: &Path| {
            Ok(FullDisk {
                written: disk.clone(),
                room,
            })
        };
        let err =
            record_video(&dir.join("camera"), VideoCodec::H264, rx, open, &refused).unwrap_err();
        assert!(err.to_string().contains("No space left on device"), "{err}");

        // What reached the disk plays up to the last fragment that fitted.
        let cut = dir.join("cut.mp4");
        std::fs::write(&cut, &*written.lock().unwrap()).unwrap();
        let (ok, out, err) = run(
            "ffprobe",
            &[
                "-v",
                "error",
                "-count_frames",
                "-select_streams",
                "v:0",
                "-show_entries",
                "stream=codec_name,width,height,nb_read_frames",
                "-of",
                "csv=p=0",
                cut.to_str().unwrap(),
            ],
        );
        assert!(ok, "{err}");
        let f: Vec<&str> = out.trim().split(',').collect();
        assert_eq!(&f[..3], &["h264", "320", "240"], "{out}");
        let frames: u32 = f[3].parse().unwrap();
        eprintln!("full disk after {room} bytes: {frames} of 120 pictures play");
        assert!((30..=90).contains(&frames), "{frames} of 120 pictures");
        let (ok, _, err) = run(
            "ffmpeg",
            &[
                "-v",
                "error",
                "-i",
                cut.to_str().unwrap(),
                "-f",
                "null",
                "-",
            ],
        );
        assert!(ok, "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
