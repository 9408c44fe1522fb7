//! H.264 renditions of H.265 tracks, for subscribers whose browser cannot decode H.265:
//! one ffmpeg worker per source track, started on demand, shared by every such
//! subscriber, stopped when nobody watches. Its output re-enters the engine as RTP of the
//! rendition track.

use std::process::Stdio;
use std::time::Instant;

use bytes::Bytes;
use medsfu_codec::h265_rtp::{annexb_nal_units, Depacketizer};
use medsfu_core::{DownTrackId, RtpHeader, RtpPacket, TrackId};
use prometheus::{Histogram, IntGauge};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::Command;

/// Largest RTP packet of the rendition.
const MTU: usize = 1200;

/// One RTP payload of the source track, as the core forwards it.
pub(crate) struct Input {
    /// Its sequence number on the transcoder's down track (continuous while nothing is
    /// lost).
    pub seq: u16,
    /// When the engine handed it over.
    pub arrived: Instant,
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
    /// When the first packet of the access unit being assembled arrived.
    au_first: Option<Instant>,
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
                self.au_first = None;
                self.synced = false;
            }
        }
        self.next_seq = Some(i.seq.wrapping_add(1));
        let first = *self.au_first.get_or_insert(i.arrived);
        match self.depack.push(&i.payload, i.marker) {
            Ok(None) => Fed::Nothing,
            Ok(Some(au)) => {
                self.au_first = None;
                if now.saturating_duration_since(first) > LATE {
                    // Behind: this picture is dropped, and with it the decoder's reference.
                    self.synced = false;
                    return self.ask(now);
                }
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
                self.au_first = None;
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
/// of the source) into RTP of `track` (H.264 of `height` lines), fed back through
/// `commands`. Dropping the returned sender stops it.
pub(crate) fn spawn(
    track: TrackId,
    down: DownTrackId,
    height: u32,
    commands: mpsc::Sender<Command>,
    latency: Histogram,
    running: IntGauge,
) -> mpsc::Sender<Input> {
    let (tx, rx) = mpsc::channel(1024);
    running.inc();
    tokio::spawn(async move {
        if let Err(e) = run(track, down, height, rx, commands, latency).await {
            warn!(%track, error = %e, "H.264 transcoder stopped");
        }
        // Counted down only once ffmpeg has exited (run kills and reaps it).
        running.dec();
    });
    tx
}

/// The rendition's picture height unless configured (`webrtc.rendition_height`).
pub const DEFAULT_HEIGHT: u32 = 360;

/// An HEVC access unit delimiter (type 35, any picture type). Written after each access
/// unit, it tells ffmpeg's parser that the unit is complete: without it the parser waits
/// for the next one, a picture's worth of delay.
const HEVC_AUD: [u8; 7] = [0, 0, 0, 1, 0x46, 0x01, 0x50];

/// The ffmpeg process of one rendition: H.265 access units (Annex B) in on stdin, H.264
/// of `height` lines out as RTP (payload type 102, packets of at most 1200 bytes) to
/// `rtp_port` on loopback. Everything is set for delay, not throughput: no input probing
/// or buffering, one decoder thread (frame threading holds a picture per thread), no
/// B-frames, x264's zero-latency tuning, and RTP out, whose marker bit ends each picture
/// at once (a raw H.264 pipe is only known to have ended a picture when the next begins).
pub fn ffmpeg_command(height: u32, rtp_port: u16) -> tokio::process::Command {
    let mut c = tokio::process::Command::new("ffmpeg");
    c.args(["-hide_banner", "-loglevel", "error", "-nostdin"])
        // Not `-fflags nobuffer`: it throws away what stream analysis read, which is the
        // first access unit, the keyframe, and every picture after it then lacks its
        // reference (grey pictures until the next keyframe, 1 run in 2 on a busy machine).
        .args(["-flags", "low_delay"])
        .args(["-probesize", "32", "-analyzeduration", "0"])
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
        // A browser tile's size; scaling is part of the delay, so the fastest filter.
        .args(["-vf", &format!("scale=-2:{height}:flags=fast_bilinear")])
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
            // What the rendition's SDP announces (42e01f); 720p at 30 fps fits in 3.1.
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
            "repeat-headers=1:sliced-threads=0:threads=1:rc-lookahead=0:sync-lookahead=0",
        ])
        .args(["-b:v", if height > 480 { "2M" } else { "1M" }])
        .args(["-maxrate", if height > 480 { "2M" } else { "1M" }])
        .args(["-bufsize", if height > 480 { "1M" } else { "500k" }])
        .args(["-f", "rtp", "-payload_type", "102"])
        .arg(format!(
            "rtp://127.0.0.1:{rtp_port}?pkt_size={MTU}&rtcpport={rtp_port}"
        ))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    c
}

/// A running transcoder process: access units in, pictures out.
pub struct Pipeline {
    child: tokio::process::Child,
    /// Where access units go.
    pub input: PipelineInput,
    /// Where pictures come from.
    pub output: PipelineOutput,
}

/// The transcoder's stdin.
pub struct PipelineInput {
    stdin: tokio::process::ChildStdin,
}

/// The transcoder's RTP output.
pub struct PipelineOutput {
    socket: tokio::net::UdpSocket,
    buf: Vec<u8>,
    next_seq: Option<u16>,
    /// Packets of the transcoder's output lost on the way (loopback, a full buffer).
    pub lost: u64,
}

impl Pipeline {
    /// Starts ffmpeg for a rendition of `height` lines.
    pub async fn start(height: u32) -> std::io::Result<Pipeline> {
        let socket = tokio::net::UdpSocket::bind(("127.0.0.1", 0)).await?;
        let port = socket.local_addr()?.port();
        let mut child = ffmpeg_command(height, port).spawn()?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| std::io::Error::other("no stdin"))?;
        Ok(Pipeline {
            child,
            input: PipelineInput { stdin },
            output: PipelineOutput {
                socket,
                buf: vec![0u8; 2048],
                next_seq: None,
                lost: 0,
            },
        })
    }

    /// Stops ffmpeg and waits for it.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

impl PipelineInput {
    /// Hands one H.265 access unit (Annex B) to the decoder, ended by a delimiter so
    /// that it is decoded now.
    pub async fn write_au(&mut self, au: &[u8]) -> std::io::Result<()> {
        // Its own leading delimiter goes: ours after the previous unit stands for it.
        let nals = annexb_nal_units(au);
        let body = match nals.first() {
            Some(first) if first.first().is_some_and(|h| (h >> 1) & 0x3F == 35) => {
                let at = first.as_ptr() as usize - au.as_ptr() as usize + first.len();
                &au[at..]
            }
            _ => au,
        };
        self.stdin.write_all(body).await?;
        self.stdin.write_all(&HEVC_AUD).await
    }
}

impl PipelineOutput {
    /// The RTP payloads of the next picture, in order; `None` once ffmpeg has stopped
    /// sending (the socket is idle for `idle`).
    pub async fn next_frame(
        &mut self,
        idle: std::time::Duration,
    ) -> std::io::Result<Option<Vec<Bytes>>> {
        let mut frame = Vec::new();
        loop {
            let n = match tokio::time::timeout(idle, self.socket.recv(&mut self.buf)).await {
                Ok(r) => r?,
                Err(_) => return Ok(None),
            };
            let Some((seq, marker, payload)) = rtp_payload(&self.buf[..n]) else {
                // RTCP sender reports share the port.
                continue;
            };
            if let Some(next) = self.next_seq {
                self.lost += u64::from(seq.wrapping_sub(next));
            }
            self.next_seq = Some(seq.wrapping_add(1));
            frame.push(Bytes::copy_from_slice(payload));
            if marker {
                return Ok(Some(frame));
            }
        }
    }
}

/// The sequence number, marker and payload of an RTP packet of payload type 102; `None`
/// for anything else (RTCP, garbage).
fn rtp_payload(p: &[u8]) -> Option<(u16, bool, &[u8])> {
    if p.len() < 12 || p[0] >> 6 != 2 || p[1] & 0x7F != 102 {
        return None;
    }
    let cc = usize::from(p[0] & 0x0F);
    let mut at = 12 + 4 * cc;
    if p[0] & 0x10 != 0 {
        let ext = p.get(at + 2..at + 4)?;
        at += 4 + 4 * usize::from(u16::from_be_bytes([ext[0], ext[1]]));
    }
    let mut end = p.len();
    if p[0] & 0x20 != 0 {
        end = end.checked_sub(usize::from(*p.last()?))?;
    }
    let payload = p.get(at..end)?;
    Some((u16::from_be_bytes([p[2], p[3]]), p[1] & 0x80 != 0, payload))
}

/// An access unit waiting this long in front of the transcoder is dropped, not decoded
/// late: a decoder that falls behind catches up at the next keyframe instead of adding
/// its backlog to every later picture.
pub(crate) const LATE: std::time::Duration = std::time::Duration::from_millis(100);

async fn run(
    track: TrackId,
    down: DownTrackId,
    height: u32,
    mut rx: mpsc::Receiver<Input>,
    commands: mpsc::Sender<Command>,
    latency: Histogram,
) -> std::io::Result<()> {
    let Pipeline {
        child,
        mut input,
        mut output,
    } = Pipeline::start(height).await?;
    info!(%track, height, "H.264 transcoder started");
    let (times_tx, mut times_rx) = mpsc::unbounded_channel::<Instant>();
    let keyframes = commands.clone();
    let writer = async move {
        let mut feeder = Feeder::default();
        while let Some(i) = rx.recv().await {
            match feeder.push(&i, Instant::now()) {
                Fed::Nothing => {}
                Fed::Feed(au) => {
                    let _ = times_tx.send(Instant::now());
                    input.write_au(&au).await?;
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
        // ffmpeg sends nothing while it gets nothing: the reader only ends with it.
        while let Some(frame) = output
            .next_frame(std::time::Duration::from_secs(3600))
            .await?
        {
            if let Ok(t) = times_rx.try_recv() {
                latency.observe(t.elapsed().as_secs_f64());
            }
            let ts = (started.elapsed().as_secs_f64() * 90_000.0) as u32;
            let last = frame.len() - 1;
            for (i, payload) in frame.into_iter().enumerate() {
                let packet = RtpPacket {
                    header: RtpHeader {
                        payload_type: 102,
                        marker: i == last,
                        sequence_number: seq,
                        timestamp: ts,
                        ssrc,
                    },
                    payload,
                };
                seq = seq.wrapping_add(1);
                // A full engine queue drops the packet (NACK or the next keyframe heal).
                let _ = commands.try_send(Command::Rtp { track, packet });
            }
        }
        Ok::<(), std::io::Error>(())
    };
    let r = tokio::select! {
        r = writer => r,
        r = reader => r,
    };
    let mut child = child;
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
            arrived: Instant::now(),
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
    fn rtp_from_ffmpeg_is_read_and_rtcp_skipped() {
        let mut p = vec![
            0x80,
            0x80 | 102,
            0x12,
            0x34,
            0,
            0,
            0,
            1,
            0,
            0,
            0,
            2,
            0x65,
            9,
        ];
        assert_eq!(rtp_payload(&p), Some((0x1234, true, &[0x65, 9][..])));
        p[1] = 102;
        assert_eq!(rtp_payload(&p).map(|r| r.1), Some(false));
        // A sender report (payload type 200) on the same port.
        assert_eq!(
            rtp_payload(&[0x80, 200, 0, 6, 0, 0, 0, 1, 0, 0, 0, 0]),
            None
        );
        // An extension and padding are skipped.
        let x = [
            0x90 | 0x20,
            102,
            0,
            1,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0xBE,
            0xDE,
            0,
            1,
            1,
            2,
            3,
            4,
            7,
            0,
            2,
        ];
        assert_eq!(rtp_payload(&x), Some((1, false, &[7][..])));
        assert_eq!(rtp_payload(&[0x80, 102, 0]), None);
    }

    #[test]
    fn a_picture_that_waited_too_long_is_dropped_and_a_keyframe_asked() {
        let t0 = Instant::now();
        let mut f = Feeder::default();
        let mut i = input(1, 19);
        assert!(matches!(f.push(&i, t0), Fed::Feed(_)));
        i = input(2, 1);
        i.arrived = t0;
        assert_eq!(
            f.push(&i, t0 + LATE + Duration::from_millis(1)),
            Fed::AskKeyframe
        );
        i = input(3, 1);
        i.arrived = t0 + LATE;
        assert_eq!(f.push(&i, t0 + LATE), Fed::Nothing, "waits for a keyframe");
    }
}
