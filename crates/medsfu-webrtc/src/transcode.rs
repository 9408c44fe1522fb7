//! H.264 renditions of H.265 tracks, for subscribers whose browser cannot decode H.265:
//! one ffmpeg worker per source track, started on demand, shared by every such
//! subscriber, stopped when nobody watches. Its output re-enters the engine as RTP of the
//! rendition track.

use std::process::Stdio;
use std::time::Instant;

use bytes::Bytes;
use medsfu_codec::h264_payload_nal_units as payload_nal_units;
use medsfu_codec::h265_rtp::{annexb_nal_units, last_start_code, Depacketizer};
use medsfu_core::{DownTrackId, RtpHeader, RtpPacket, TrackId};
use prometheus::{Histogram, IntGauge};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::Command;

/// Largest RTP payload of the rendition.
const MTU: usize = 1200;

/// One RTP payload of the source track, as the core forwards it.
pub(crate) struct Input {
    /// Its sequence number on the transcoder's down track (continuous while nothing is
    /// lost).
    pub seq: u16,
    pub marker: bool,
    pub payload: Bytes,
}

/// How often the transcoder asks again for a keyframe while its decoder waits for one.
const KEYFRAME_RETRY: std::time::Duration = std::time::Duration::from_millis(1000);

/// What [`Feeder::push`] made of a payload.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Fed {
    /// Nothing to decode yet.
    Nothing,
    /// A complete access unit for the decoder (Annex B).
    Feed(Vec<u8>),
    /// Nothing to decode, and the source should be asked for a keyframe: the decoder lost
    /// its reference (a packet missing or damaged) and waits for the next IRAP picture.
    AskKeyframe,
}

/// Feeds the decoder only what it can decode: complete access units from an IRAP
/// picture on. Decoding pictures whose reference was lost paints grey garbage into every
/// frame up to the next keyframe (seen as a grey picture with moving edges).
#[derive(Default)]
pub(crate) struct Feeder {
    depack: Depacketizer,
    next_seq: Option<u16>,
    synced: bool,
    asked: Option<Instant>,
}

impl Feeder {
    pub(crate) fn push(&mut self, i: &Input, now: Instant) -> Fed {
        if let Some(next) = self.next_seq {
            let ahead = i.seq.wrapping_sub(next) as i16;
            if ahead < 0 {
                // A late retransmission of a packet whose access unit is gone already.
                return Fed::Nothing;
            }
            if ahead > 0 {
                self.depack.reset();
                self.synced = false;
            }
        }
        self.next_seq = Some(i.seq.wrapping_add(1));
        match self.depack.push(&i.payload, i.marker) {
            Ok(None) => Fed::Nothing,
            Ok(Some(au)) => {
                if !self.synced && medsfu_codec::h265_is_irap_access_unit(annexb_nal_units(&au)) {
                    self.synced = true;
                    self.asked = None;
                }
                if self.synced {
                    Fed::Feed(au)
                } else {
                    self.ask(now)
                }
            }
            Err(_) => {
                self.depack.reset();
                self.synced = false;
                self.ask(now)
            }
        }
    }

    fn ask(&mut self, now: Instant) -> Fed {
        if self
            .asked
            .is_some_and(|at| now.saturating_duration_since(at) < KEYFRAME_RETRY)
        {
            return Fed::Nothing;
        }
        self.asked = Some(now);
        Fed::AskKeyframe
    }
}

/// Starts a worker that turns the H.265 payloads sent to it (over its down track `down`
/// of the source) into RTP of `track` (H.264), fed back through `commands`. Dropping the
/// returned sender stops it.
pub(crate) fn spawn(
    track: TrackId,
    down: DownTrackId,
    commands: mpsc::Sender<Command>,
    latency: Histogram,
    running: IntGauge,
) -> mpsc::Sender<Input> {
    let (tx, rx) = mpsc::channel(1024);
    running.inc();
    tokio::spawn(async move {
        if let Err(e) = run(track, down, rx, commands, latency).await {
            warn!(%track, error = %e, "H.264 transcoder stopped");
        }
        // Counted down only once ffmpeg has exited (run kills and reaps it).
        running.dec();
    });
    tx
}

fn ffmpeg() -> tokio::process::Command {
    let mut c = tokio::process::Command::new("ffmpeg");
    c.args(["-hide_banner", "-loglevel", "error", "-nostdin"])
        .args(["-fflags", "nobuffer", "-flags", "low_delay"])
        .args(["-probesize", "32", "-analyzeduration", "0"])
        // One decoder thread: frame threading would hold a picture per extra thread.
        .args([
            "-threads",
            "1",
            "-f",
            "hevc",
            "-i",
            "pipe:0",
            "-fps_mode",
            "passthrough",
        ])
        // Half size: the rendition is for a browser tile, and encoding it must keep up in
        // real time beside everything else on a small server.
        .args(["-vf", "scale=640:-2"])
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-tune",
            "zerolatency",
        ])
        .args([
            "-profile:v",
            "baseline",
            "-level",
            "3.1",
            "-pix_fmt",
            "yuv420p",
        ])
        .args([
            "-g",
            "30",
            "-bf",
            "0",
            "-x264-params",
            "aud=1:repeat-headers=1",
        ])
        .args(["-b:v", "1M", "-maxrate", "1M", "-bufsize", "500k"])
        // Write each picture as soon as it is encoded, not when 32 KiB have gathered.
        .args(["-flush_packets", "1", "-f", "h264", "pipe:1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    c
}

/// Start of the last H.264 access-unit delimiter in `b` (start code included).
fn last_aud(b: &[u8]) -> Option<usize> {
    last_start_code(b, |h| h & 0x1F == 9)
}

async fn run(
    track: TrackId,
    down: DownTrackId,
    mut rx: mpsc::Receiver<Input>,
    commands: mpsc::Sender<Command>,
    latency: Histogram,
) -> std::io::Result<()> {
    let mut child = ffmpeg().spawn()?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| std::io::Error::other("no stdin"))?;
    let mut stdout = child
        .stdout
        .take()
        .ok_or_else(|| std::io::Error::other("no stdout"))?;
    info!(%track, "H.264 transcoder started");
    let (times_tx, mut times_rx) = mpsc::unbounded_channel::<Instant>();
    let keyframes = commands.clone();
    let writer = async move {
        let mut feeder = Feeder::default();
        while let Some(i) = rx.recv().await {
            match feeder.push(&i, Instant::now()) {
                Fed::Nothing => {}
                Fed::Feed(au) => {
                    let _ = times_tx.send(Instant::now());
                    stdin.write_all(&au).await?;
                }
                Fed::AskKeyframe => {
                    let _ = keyframes.try_send(Command::KeyframeFor { down });
                }
            }
        }
        // The last subscriber left: closing stdin ends ffmpeg.
        Ok::<(), std::io::Error>(())
    };
    let reader = async move {
        let ssrc: u32 = rand::random();
        let mut seq: u16 = rand::random();
        let started = Instant::now();
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let n = stdout.read(&mut chunk).await?;
            if n == 0 {
                return Ok::<(), std::io::Error>(());
            }
            buf.extend_from_slice(&chunk[..n]);
            let Some(cut) = last_aud(&buf).filter(|c| *c > 0) else {
                continue;
            };
            let done: Vec<u8> = buf.drain(..cut).collect();
            let nals = annexb_nal_units(&done);
            // Split at each delimiter: one access unit per delimiter.
            let mut aus: Vec<Vec<&[u8]>> = Vec::new();
            for nal in nals {
                if nal.first().is_some_and(|h| h & 0x1F == 9) || aus.is_empty() {
                    aus.push(Vec::new());
                }
                if let Some(au) = aus.last_mut() {
                    au.push(nal);
                }
            }
            for au in aus {
                let payloads = payload_nal_units(&au, MTU);
                if payloads.is_empty() {
                    continue;
                }
                if let Ok(t) = times_rx.try_recv() {
                    latency.observe(t.elapsed().as_secs_f64());
                }
                let ts = (started.elapsed().as_secs_f64() * 90_000.0) as u32;
                let last = payloads.len() - 1;
                for (i, p) in payloads.into_iter().enumerate() {
                    let packet = RtpPacket {
                        header: RtpHeader {
                            payload_type: 102,
                            marker: i == last,
                            sequence_number: seq,
                            timestamp: ts,
                            ssrc,
                        },
                        payload: Bytes::from(p),
                    };
                    seq = seq.wrapping_add(1);
                    // A full engine queue drops the packet (NACK or the next keyframe heal).
                    let _ = commands.try_send(Command::Rtp { track, packet });
                }
            }
        }
    };
    let r = tokio::select! {
        r = writer => r,
        r = reader => r,
    };
    let _ = child.kill().await;
    info!(%track, "H.264 transcoder stopped");
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn input(seq: u16, nal_type: u8) -> Input {
        // One whole NAL unit per packet: header (type, layer 0, tid 1), first slice, data.
        Input {
            seq,
            marker: true,
            payload: Bytes::from(vec![nal_type << 1, 1, 0x80, 7, 7, 7]),
        }
    }

    #[test]
    fn the_decoder_gets_pictures_only_from_a_keyframe_on_and_after_a_loss_waits_for_the_next() {
        const IDR: u8 = 19;
        const TRAIL: u8 = 1;
        let t0 = Instant::now();
        let mut f = Feeder::default();
        let fed = |f: &mut Feeder, seq, t, at| match f.push(&input(seq, t), at) {
            Fed::Feed(_) => "feed",
            Fed::Nothing => "-",
            Fed::AskKeyframe => "ask",
        };
        // Joined mid-picture-group: inter pictures are held back, a keyframe asked once.
        assert_eq!(fed(&mut f, 10, TRAIL, t0), "ask");
        assert_eq!(fed(&mut f, 11, TRAIL, t0), "-");
        assert_eq!(fed(&mut f, 12, IDR, t0), "feed");
        assert_eq!(fed(&mut f, 13, TRAIL, t0), "feed");
        // Packet 14 lost: 15 is not decodable, nor anything until the next keyframe.
        let later = t0 + Duration::from_millis(100);
        assert_eq!(fed(&mut f, 15, TRAIL, later), "ask");
        assert_eq!(fed(&mut f, 16, TRAIL, later), "-");
        // Still no keyframe a second later: asked again.
        assert_eq!(fed(&mut f, 17, TRAIL, later + KEYFRAME_RETRY), "ask");
        // The lost packet's late retransmission changes nothing.
        assert_eq!(fed(&mut f, 14, TRAIL, later), "-");
        assert_eq!(fed(&mut f, 18, IDR, later), "feed");
        assert_eq!(fed(&mut f, 19, TRAIL, later), "feed");
        // Sequence numbers wrap without a gap.
        let mut f = Feeder::default();
        assert_eq!(fed(&mut f, u16::MAX, IDR, t0), "feed");
        assert_eq!(fed(&mut f, 0, TRAIL, t0), "feed");
    }

    #[test]
    fn access_units_end_at_the_last_delimiter() {
        let s = [
            0, 0, 0, 1, 9, 0xf0, 0, 0, 1, 0x65, 1, 2, 0, 0, 0, 1, 9, 0xf0, 0, 0, 1, 0x41,
        ];
        assert_eq!(last_aud(&s), Some(12));
        assert_eq!(last_aud(&[0, 0, 1, 0x65, 1]), None);
    }
}
