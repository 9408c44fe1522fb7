//! `medsfu vehicle`: a simulated ambulance. It publishes an H.265 roof camera (ffmpeg +
//! libx265 test pattern with a burnt-in clock, or an H.265 file) and cabin audio (Opus)
//! over QUIC datagrams, and real ECG, vitals, GPS and status over the telemetry stream,
//! keeping every frame in a durable outbox until the server acknowledges it. It follows
//! camera commands (the picture it sends pans and zooms) and prints its indicator lamps.

use std::collections::VecDeque;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use bytes::Bytes;
use medsfu_codec::h265_rtp::{
    access_units, annexb_nal_units, last_start_code, payload_access_unit,
};
use medsfu_core::{CameraCommand, CameraState};
use medsfu_core::{RtpHeader, RtpPacket};
use medsfu_quic::client::{self, generate, Generated};
use medsfu_quic::flow::{self, Feedback, FlowPacket};
use medsfu_quic::protocol::{FlowInfo, ServerMessage, VehicleMessage};
use medsfu_quic::uplink::{Admit, PathSample, UplinkConfig, UplinkGovernor};
use medsfu_telemetry::frame::{Body, Frame, Gps, Unit, VehicleStatus, Vital, VitalKind};
use medsfu_telemetry::outbox::Outbox;
use medsfu_telemetry::player::EcgPlayer;
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, watch};
use tracing::warn;

/// Telemetry sources of the simulated vehicle.
pub const SOURCE_ECG: u32 = 1;
/// Vital signs.
pub const SOURCE_VITALS: u32 = 2;
/// GPS.
pub const SOURCE_GPS: u32 = 3;
/// Vehicle status.
pub const SOURCE_STATUS: u32 = 4;

const FLOW_VIDEO: u64 = 0;
const FLOW_AUDIO: u64 = 1;

/// What the simulator does.
#[derive(Debug, Clone)]
pub struct Options {
    /// Server's QUIC address.
    pub server: SocketAddr,
    /// Name in the server certificate.
    pub server_name: String,
    /// Room to publish into.
    /// None: open a call (the crew's one button); the server names the room.
    pub room: Option<String>,
    /// CA certificate, device certificate and key (PEM files).
    pub ca: PathBuf,
    /// Device certificate.
    pub cert: PathBuf,
    /// Device key.
    pub key: PathBuf,
    /// Outbox directory.
    pub outbox: PathBuf,
    /// WFDB directory and record name of the ECG to play.
    pub ecg: Option<(PathBuf, String)>,
    /// Seconds between vital-sign readings (1-60).
    pub vitals_every: Duration,
    /// Send video and audio (needs ffmpeg).
    pub media: bool,
    /// Play this H.265 Annex-B file (looped) instead of the test pattern.
    pub video_file: Option<PathBuf>,
    /// Append `source sequence sha256` per generated frame here.
    pub frames_log: Option<PathBuf>,
    /// Move to a new local UDP port this often (a SIM switch; QUIC migrates).
    pub switch_every: Option<Duration>,
    /// Highest roof-camera bitrate, bits per second.
    pub max_video_bps: u32,
    /// Fit the camera's bitrate to the path and drop pictures rather than delay audio.
    pub adapt: bool,
    /// Stop after this long.
    pub run_for: Option<Duration>,
}

type Current = Arc<RwLock<Option<quinn::Connection>>>;

fn send_datagram(current: &Current, flow: u64, packet: &[u8]) {
    let conn = current.read().unwrap_or_else(|p| p.into_inner()).clone();
    if let Some(c) = conn {
        // A full send buffer or a lost link drops media: it is live, not journaled.
        let _ = c.send_datagram(flow::frame(flow, packet));
    }
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// Runs the simulated ambulance until `run_for` ends (or forever).
pub async fn run(o: Options) -> Result<()> {
    let read = |p: &PathBuf| {
        std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
    };
    let (ca, cert, key) = (read(&o.ca)?, read(&o.cert)?, read(&o.key)?);
    let bind: SocketAddr = if o.server.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()?;
    let bind = if o.server.ip().is_loopback() {
        SocketAddr::new(o.server.ip(), 0)
    } else {
        bind
    };
    let ep = client::endpoint(bind, &ca, &cert, &key)?;
    let outbox = Arc::new(Mutex::new(
        Outbox::open(&o.outbox).with_context(|| format!("outbox {}", o.outbox.display()))?,
    ));
    let (uplink_tx, mut uplink_rx) = mpsc::unbounded_channel::<Generated>();
    let log = match &o.frames_log {
        Some(p) => Some(Arc::new(Mutex::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("frames log {}", p.display()))?,
        ))),
        None => None,
    };
    let current: Current = Arc::new(RwLock::new(None));
    let (camera_tx, camera_rx) = watch::channel(CameraState::default());
    let history = Arc::new(Mutex::new(VecDeque::<(u16, Bytes)>::new()));
    let mut tasks = tokio::task::JoinSet::new();
    let mut fixed_bitrate = None;
    // The camera's bitrate as reported to the server (0 without media).
    let (_no_video, mut video_rate) = watch::channel(0u32);
    let gen = Generator {
        outbox: outbox.clone(),
        uplink: uplink_tx,
        log,
    };
    tasks.spawn(telemetry_sources(gen, o.ecg.clone(), o.vitals_every));
    if o.media {
        let governor = Arc::new(Mutex::new(UplinkGovernor::new(
            UplinkConfig {
                max_bps: o.max_video_bps,
                ..UplinkConfig::default()
            },
            Instant::now(),
        )));
        let (bitrate_tx, bitrate_rx) = watch::channel(
            governor
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .target_bps(),
        );
        video_rate = bitrate_tx.subscribe();
        if o.adapt {
            tasks.spawn(watch_path(current.clone(), governor.clone(), bitrate_tx));
        } else {
            // Nobody changes the bitrate, but the encoder loop must not see it closed.
            fixed_bitrate = Some(bitrate_tx);
        }
        tasks.spawn(video(
            current.clone(),
            camera_rx,
            o.video_file.clone(),
            history.clone(),
            o.adapt.then_some(governor),
            bitrate_rx,
        ));
        tasks.spawn(audio(current.clone()));
    }
    if let Some(every) = o.switch_every {
        let ep = ep.clone();
        tasks.spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                match std::net::UdpSocket::bind(bind).and_then(|s| ep.rebind(s)) {
                    Ok(()) => {
                        println!("switched SIM: new local address {:?}", ep.local_addr().ok())
                    }
                    Err(e) => warn!(error = %e, "SIM switch failed"),
                }
            }
            #[allow(unreachable_code)]
            Ok(())
        });
    }
    let flows = if o.media {
        vec![
            FlowInfo {
                flow: FLOW_VIDEO,
                source: "roof_camera".into(),
                codec: "video/H265".into(),
            },
            FlowInfo {
                flow: FLOW_AUDIO,
                source: "cabin_audio".into(),
                codec: "audio/opus".into(),
            },
        ]
    } else {
        Vec::new()
    };
    let deadline = o.run_for.map(|d| tokio::time::Instant::now() + d);
    let (ep2, current2, outbox2) = (ep.clone(), current.clone(), outbox.clone());
    let session = async move {
        let (ep, current, outbox) = (ep2, current2, outbox2);
        let mut backoff = Duration::from_millis(200);
        let mut room = o.room.clone();
        loop {
            let to = room.as_deref();
            match client::connect(&ep, o.server, &o.server_name, to, flows.clone()).await {
                Ok(mut c) => {
                    backoff = Duration::from_millis(200);
                    if room.is_none() {
                        println!("vehicle {} opened call {}", c.identity, c.room);
                    }
                    // Reconnects go back to the same call.
                    room = Some(c.room.clone());
                    println!(
                        "vehicle {} connected to room {} as P{}",
                        c.identity, c.room, c.participant
                    );
                    *current.write().unwrap_or_else(|p| p.into_inner()) = Some(c.conn.clone());
                    let why = connected(
                        &mut c,
                        outbox.clone(),
                        &mut uplink_rx,
                        &camera_tx,
                        &history,
                        &current,
                        &video_rate,
                    )
                    .await;
                    *current.write().unwrap_or_else(|p| p.into_inner()) = None;
                    warn!(reason = %why, "link lost; reconnecting");
                }
                Err(medsfu_quic::client::ClientError::Refused { code, message }) => {
                    anyhow::bail!("server refused the vehicle: {code}: {message}");
                }
                Err(e) => warn!(error = %e, "cannot reach the server; retrying"),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    };
    let stop = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    let mut session = tokio::spawn(session);
    let r = tokio::select! {
        r = &mut session => r.map_err(anyhow::Error::from).and_then(|r| r),
        Some(r) = tasks.join_next() => match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(e.into()),
        },
        () = stop => {
            // Stop generating, then give the link a moment to deliver what is pending:
            // whatever is still unacknowledged stays in the outbox for the next run.
            tasks.abort_all();
            let drained = tokio::time::timeout(Duration::from_secs(15), async {
                loop {
                    let ob = outbox.clone();
                    let empty = tokio::task::spawn_blocking(move || {
                        ob.lock().unwrap_or_else(|p| p.into_inner()).unacked().map(|u| u.is_empty())
                    })
                    .await;
                    if matches!(empty, Ok(Ok(true))) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
            .await;
            if drained.is_err() {
                warn!("stopping with unacknowledged telemetry; it is resent on the next run");
            }
            Ok(())
        }
    };
    session.abort();
    drop(fixed_bitrate);
    ep.close(0u32.into(), b"vehicle stopping");
    ep.wait_idle().await;
    r
}

/// Serves one connection until it fails; returns why.
async fn connected(
    c: &mut client::Connected,
    outbox: Arc<Mutex<Outbox>>,
    uplink: &mut mpsc::UnboundedReceiver<Generated>,
    camera: &watch::Sender<CameraState>,
    history: &Mutex<VecDeque<(u16, Bytes)>>,
    current: &Current,
    video_rate: &watch::Receiver<u32>,
) -> String {
    let conn = c.conn.clone();
    let mut report = tokio::time::interval(Duration::from_secs(2));
    report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let telemetry = async {
        loop {
            match client::telemetry_uplink(&conn, outbox.clone(), uplink).await {
                // The server refused a frame (its journal failed, or our numbering clashes
                // with what it stored): the frames stay in the outbox, media and control go
                // on, and the stream is tried again later.
                Err(client::ClientError::Refused { code, message }) => {
                    println!("telemetry refused by the server: {code}: {message}; retrying in 5 s");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
                other => return other,
            }
        }
    };
    tokio::pin!(telemetry);
    loop {
        tokio::select! {
            r = &mut telemetry => return format!("telemetry stream: {r:?}"),
            _ = report.tick() => {
                let unacked_frames = outbox.lock().unwrap_or_else(|p| p.into_inner()).unacked_count();
                let msg = VehicleMessage::Uplink { unacked_frames, video_bps: *video_rate.borrow() };
                let _ = c.control.send(&msg).await;
            }
            m = c.control.next() => match m {
                Ok(Some(ServerMessage::Camera { id, command })) => {
                    let command = CameraCommand::from(&command);
                    let state = if command.validate().is_ok() {
                        let s = camera.borrow().apply(&command);
                        camera.send_replace(s);
                        s
                    } else {
                        *camera.borrow()
                    };
                    println!("camera: pan {:+.0} deg, zoom {:.1}x, sector {}", state.pan_deg, state.zoom, state.sector);
                    let msg = VehicleMessage::CameraState { id: Some(id), state: state.into() };
                    let _ = c.control.send(&msg).await;
                }
                Ok(Some(ServerMessage::Indicator { green, red })) => {
                    println!(
                        "indicator: green {} red {}",
                        if green { "ON" } else { "off" },
                        if red { "ON" } else { "off" }
                    );
                }
                Ok(Some(ServerMessage::Error { code, message })) => warn!(%code, %message, "server error"),
                Ok(Some(_)) => {}
                Ok(None) => return "control stream closed".into(),
                Err(e) => return format!("control stream: {e}"),
            },
            d = conn.read_datagram() => match d {
                Ok(d) => {
                    if let Ok(FlowPacket::Rtcp { flow: FLOW_VIDEO, packet }) = flow::parse(&d) {
                        for fb in flow::feedback(&packet) {
                            if let Feedback::Nack { seqs, .. } = fb {
                                let h = history.lock().unwrap_or_else(|p| p.into_inner());
                                for (seq, p) in h.iter().filter(|(s, _)| seqs.contains(s)) {
                                    let _ = seq;
                                    send_datagram(current, FLOW_VIDEO, p);
                                }
                            }
                        }
                    }
                }
                Err(e) => return format!("connection: {e}"),
            },
        }
    }
}

/// Stores frames in the outbox, logs their digests, hands them to the uplink.
struct Generator {
    outbox: Arc<Mutex<Outbox>>,
    uplink: mpsc::UnboundedSender<Generated>,
    log: Option<Arc<Mutex<std::fs::File>>>,
}

impl Generator {
    fn next_sequence(&self, source: u32) -> u64 {
        self.outbox
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .next_sequence(source)
    }

    async fn emit(&self, source: u32, body: Body) -> Result<()> {
        let frame = Frame {
            source,
            sequence: self.next_sequence(source),
            captured_at_us: now_us(),
            body,
        };
        let (outbox, uplink, log) = (self.outbox.clone(), self.uplink.clone(), self.log.clone());
        tokio::task::spawn_blocking(move || -> Result<()> {
            // Logged before it is stored: a crash in between leaves a logged frame that was
            // never generated durably, and the next run reuses its sequence number (readers
            // take the last line of a (source, sequence)). The reverse order could leave a
            // delivered frame missing from the log.
            if let Some(l) = log {
                let bytes = frame.encode()?;
                let mut f = l.lock().unwrap_or_else(|p| p.into_inner());
                writeln!(
                    f,
                    "{} {} {}",
                    frame.source,
                    frame.sequence,
                    medsfu_telemetry::json::digest(&bytes)
                )?;
            }
            generate(&outbox, &uplink, &frame)?;
            Ok(())
        })
        .await??;
        Ok(())
    }
}

async fn telemetry_sources(
    g: Generator,
    ecg: Option<(PathBuf, String)>,
    vitals_every: Duration,
) -> Result<()> {
    let mut player = match ecg {
        Some((dir, name)) => {
            let rec = medsfu_telemetry::wfdb::read_record(&dir, &name)
                .with_context(|| format!("ECG record {name} in {}", dir.display()))?;
            Some(EcgPlayer::new(rec, Duration::from_millis(200))?)
        }
        None => None,
    };
    g.emit(SOURCE_STATUS, Body::Status(VehicleStatus::Departed))
        .await?;
    let start = tokio::time::Instant::now();
    let block = player
        .as_ref()
        .map_or(Duration::from_millis(200), EcgPlayer::block_duration);
    let mut next_ecg = start;
    let mut next_vitals = start;
    let mut next_gps = start;
    let mut stopped = false;
    let (mut hr, mut spo2, mut etco2) = (78.0f32, 97.0f32, 36.0f32);
    let (mut lat, mut lon) = (50.0755f64, 14.4378f64);
    let mut n: u64 = 0;
    loop {
        let next = [
            Some(next_ecg).filter(|_| player.is_some()),
            Some(next_vitals),
            Some(next_gps),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(next_vitals);
        tokio::time::sleep_until(next).await;
        let now = tokio::time::Instant::now();
        if let Some(p) = player.as_mut() {
            // Whole blocks at the recording's true rate, catching up after a stall.
            while next_ecg <= now {
                g.emit(SOURCE_ECG, Body::Waveform(p.next_block())).await?;
                next_ecg += block;
            }
        }
        if next_vitals <= now {
            n += 1;
            let wobble = |x: &mut f32, step: f32, lo: f32, hi: f32| {
                *x = (*x + step * (rand::random::<f32>() - 0.5)).clamp(lo, hi);
            };
            wobble(&mut hr, 4.0, 55.0, 130.0);
            wobble(&mut spo2, 1.0, 88.0, 100.0);
            wobble(&mut etco2, 2.0, 28.0, 45.0);
            let at = now_us();
            let mut readings = vec![
                (VitalKind::HeartRate, hr.round(), Unit::PerMinute),
                (VitalKind::SpO2, spo2.round(), Unit::Percent),
                (VitalKind::EtCO2, etco2.round(), Unit::MmHg),
            ];
            if n % 6 == 1 {
                readings.extend([
                    (VitalKind::NibpSystolic, 128.0, Unit::MmHg),
                    (VitalKind::NibpDiastolic, 82.0, Unit::MmHg),
                    (VitalKind::NibpMean, 97.0, Unit::MmHg),
                ]);
            }
            for (kind, value, unit) in readings {
                g.emit(
                    SOURCE_VITALS,
                    Body::Vital(Vital {
                        kind,
                        value,
                        unit,
                        measured_at_us: at,
                    }),
                )
                .await?;
            }
            next_vitals += vitals_every;
        }
        if next_gps <= now {
            if !stopped {
                lat += 0.00012;
                lon += 0.00018;
            }
            g.emit(
                SOURCE_GPS,
                Body::Gps(Gps {
                    lat,
                    lon,
                    accuracy_m: 5.0,
                    speed_mps: if stopped { 0.0 } else { 14.0 },
                    heading_deg: 45.0,
                }),
            )
            .await?;
            next_gps += Duration::from_secs(2);
            if !stopped && now.duration_since(start) > Duration::from_secs(120) {
                stopped = true;
                g.emit(SOURCE_STATUS, Body::Status(VehicleStatus::Stopped))
                    .await?;
            }
        }
    }
}

/// The ffmpeg video filter for a camera state: pan/zoom/sector crop a 1920x1080 scene
/// down to the 1280x720 picture sent.
fn camera_filter(s: &CameraState) -> String {
    let (sw, sh) = (1920.0f32, 1080.0f32);
    let (w, h, x, y) = if s.sector > 0 {
        let (cw, ch) = (sw / 3.0, sh / 3.0);
        let i = f32::from(s.sector - 1);
        (cw, ch, (i % 3.0).floor() * cw, (i / 3.0).floor() * ch)
    } else {
        let z = s.zoom.clamp(1.0, 4.0);
        let (w, h) = (sw / z, sh / z);
        // Pan moves the window across the scene's width: -60 deg left edge, +60 right.
        let x = (sw - w) * ((s.pan_deg.clamp(-60.0, 60.0) + 60.0) / 120.0);
        (w, h, x, (sh - h) / 2.0)
    };
    let even = |v: f32| ((v / 2.0).round() * 2.0) as u32;
    format!(
        "crop={}:{}:{}:{},scale=1280:720,\
         drawtext=text='%{{localtime\\:%T}}':fontsize=48:fontcolor=white:box=1:boxcolor=black@0.6:x=24:y=24,\
         format=yuv420p",
        even(w),
        even(h),
        even(x),
        even(y)
    )
}

/// Reads the QUIC path four times a second, feeds the governor and tells the encoder
/// its new bitrate; prints each change and how many pictures were dropped.
async fn watch_path(
    current: Current,
    governor: Arc<Mutex<UplinkGovernor>>,
    bitrate: watch::Sender<u32>,
) -> Result<()> {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reported = 0;
    loop {
        tick.tick().await;
        let Some(conn) = current.read().unwrap_or_else(|p| p.into_inner()).clone() else {
            continue;
        };
        let s = path_sample(&conn);
        let mut g = governor.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = g.handle_sample(s, Instant::now()) {
            println!(
                "uplink: video {} kb/s (was {}; {:?}; rtt {} ms, window {} kB, queued {} kB)",
                c.bps / 1000,
                c.was_bps / 1000,
                c.reason,
                s.rtt.as_millis(),
                s.cwnd / 1000,
                s.queued_bytes / 1000
            );
            bitrate.send_replace(c.bps);
        }
        if g.dropped() >= reported + 30 {
            println!(
                "uplink: {} video pictures dropped to keep audio and control flowing",
                g.dropped()
            );
            reported = g.dropped();
        }
    }
}

/// What quinn says about the connection's path now.
fn path_sample(conn: &quinn::Connection) -> PathSample {
    let st = conn.stats();
    PathSample {
        rtt: st.path.rtt,
        cwnd: st.path.cwnd,
        sent_packets: st.path.sent_packets,
        lost_packets: st.path.lost_packets,
        congestion_events: st.path.congestion_events,
        queued_bytes: queued_datagram_bytes(conn),
    }
}

fn queued_datagram_bytes(conn: &quinn::Connection) -> u64 {
    client::DATAGRAM_SEND_BUFFER.saturating_sub(conn.datagram_send_buffer_space()) as u64
}

fn ffmpeg_video(file: Option<&PathBuf>, s: &CameraState, bps: u32) -> tokio::process::Command {
    let mut c = tokio::process::Command::new("ffmpeg");
    c.args(["-hide_banner", "-loglevel", "error", "-nostdin"]);
    match file {
        Some(f) => {
            c.args(["-re", "-stream_loop", "-1", "-i"]).arg(f);
            c.args(["-vf", "scale=1280:720"]);
        }
        None => {
            c.args([
                "-re",
                "-f",
                "lavfi",
                "-i",
                "testsrc2=size=1920x1080:rate=30",
            ]);
            c.args(["-vf", &camera_filter(s)]);
        }
    }
    c.args([
        "-c:v",
        "libx265",
        "-preset",
        "ultrafast",
        "-tune",
        "zerolatency",
        "-x265-params",
        "aud=1:repeat-headers=1:keyint=30:min-keyint=30:scenecut=0:log-level=error",
        "-b:v",
        &bps.to_string(),
        "-maxrate",
        &bps.to_string(),
        "-bufsize",
        &(bps / 2).to_string(),
        // Each picture leaves as soon as it is encoded, not when 32 KiB have gathered.
        "-flush_packets",
        "1",
        "-f",
        "hevc",
        "pipe:1",
    ]);
    c.stdout(std::process::Stdio::piped()).kill_on_drop(true);
    c
}

/// Encodes (or reads) H.265, splits it into access units and sends them as RTP.
async fn video(
    current: Current,
    mut camera: watch::Receiver<CameraState>,
    file: Option<PathBuf>,
    history: Arc<Mutex<VecDeque<(u16, Bytes)>>>,
    governor: Option<Arc<Mutex<UplinkGovernor>>>,
    mut bitrate: watch::Receiver<u32>,
) -> Result<()> {
    let ssrc: u32 = rand::random();
    let mut seq: u16 = rand::random();
    let start = Instant::now();
    loop {
        let state = *camera.borrow_and_update();
        let bps = *bitrate.borrow_and_update();
        let mut child = ffmpeg_video(file.as_ref(), &state, bps)
            .spawn()
            .context("starting ffmpeg (is it installed?)")?;
        let mut out = child.stdout.take().context("ffmpeg stdout")?;
        let mut buf: Vec<u8> = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            tokio::select! {
                n = out.read(&mut chunk) => {
                    let n = n?;
                    if n == 0 {
                        anyhow::bail!("ffmpeg stopped");
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    // Everything before the last access-unit delimiter is complete.
                    let Some(cut) = last_aud(&buf) else { continue };
                    if cut == 0 {
                        continue;
                    }
                    let done: Vec<u8> = buf.drain(..cut).collect();
                    let nals = annexb_nal_units(&done);
                    let ts = (start.elapsed().as_secs_f64() * 90_000.0) as u32;
                    let conn = current.read().unwrap_or_else(|p| p.into_inner()).clone();
                    let mtu = conn
                        .as_ref()
                        .and_then(|c| c.max_datagram_size())
                        .unwrap_or(1200)
                        .saturating_sub(24)
                        .clamp(400, 1200);
                    for au in access_units(&nals) {
                        if let (Some(g), Some(c)) = (&governor, &conn) {
                            let keyframe = medsfu_codec::h265_is_irap_access_unit(au.iter().copied());
                            let admit = g.lock().unwrap_or_else(|p| p.into_inner()).admit_video(keyframe, queued_datagram_bytes(c));
                            if admit == Admit::Drop {
                                continue;
                            }
                        }
                        let payloads = payload_access_unit(&au, mtu);
                        let last = payloads.len().saturating_sub(1);
                        for (i, p) in payloads.into_iter().enumerate() {
                            let pkt = RtpPacket {
                                header: RtpHeader { payload_type: 96, marker: i == last, sequence_number: seq, timestamp: ts, ssrc },
                                payload: Bytes::from(p),
                            };
                            let mut raw = Vec::with_capacity(pkt.payload.len() + 12);
                            pkt.write_to(&mut raw);
                            send_datagram(&current, FLOW_VIDEO, &raw);
                            let mut h = history.lock().unwrap_or_else(|p| p.into_inner());
                            if h.len() >= 512 {
                                h.pop_front();
                            }
                            h.push_back((seq, Bytes::from(raw)));
                            seq = seq.wrapping_add(1);
                        }
                    }
                }
                r = camera.changed() => {
                    if r.is_err() {
                        return Ok(());
                    }
                    // New framing: restart the encoder with the new crop (starts with an IDR).
                    let _ = child.kill().await;
                    break;
                }
                r = bitrate.changed() => {
                    if r.is_err() {
                        return Ok(());
                    }
                    // libx265 in ffmpeg takes no bitrate change while running: restart it
                    // (a new IDR, which a decoder after dropped pictures needs anyway).
                    let _ = child.kill().await;
                    break;
                }
            }
        }
    }
}

/// Position of the last H.265 access-unit delimiter's start code in `b`.
fn last_aud(b: &[u8]) -> Option<usize> {
    last_start_code(b, |h| (h >> 1) & 0x3f == 35)
}

/// Cabin audio: a tone from ffmpeg, Opus in RTP, relayed into the audio flow.
async fn audio(current: Current) -> Result<()> {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    let port = sock.local_addr()?.port();
    let mut child = tokio::process::Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-nostdin",
            "-re",
            "-f",
            "lavfi",
            "-i",
        ])
        .arg("sine=frequency=440:sample_rate=48000,volume=0.2")
        .args([
            "-c:a",
            "libopus",
            "-b:a",
            "32k",
            "-application",
            "voip",
            "-frame_duration",
            "20",
        ])
        .args(["-payload_type", "111", "-f", "rtp"])
        .arg(format!("rtp://127.0.0.1:{port}"))
        // A second, tiny output on a pipe ties ffmpeg's life to ours: if this process dies
        // (even by SIGKILL, when kill_on_drop cannot act), the pipe breaks and ffmpeg exits
        // instead of sending to a dead port forever.
        .args([
            "-map",
            "0:a",
            "-c:a",
            "pcm_s16le",
            "-ar",
            "8000",
            "-ac",
            "1",
        ])
        .args(["-f", "s16le", "pipe:1"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting ffmpeg for audio")?;
    let mut lifeline = child.stdout.take().context("audio ffmpeg stdout")?;
    let mut buf = vec![0u8; 2048];
    let mut sink = vec![0u8; 4096];
    loop {
        tokio::select! {
            r = sock.recv(&mut buf) => {
                let n = r?;
                send_datagram(&current, FLOW_AUDIO, &buf[..n]);
            }
            r = lifeline.read(&mut sink) => {
                if r? == 0 {
                    anyhow::bail!("audio ffmpeg closed its output");
                }
            }
            s = child.wait() => anyhow::bail!("audio ffmpeg stopped: {:?}", s?),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn camera_states_crop_inside_the_scene() {
        for s in [
            CameraState::default(),
            CameraState {
                pan_deg: -60.0,
                zoom: 4.0,
                sector: 0,
            },
            CameraState {
                pan_deg: 60.0,
                zoom: 2.0,
                sector: 0,
            },
            CameraState {
                pan_deg: 0.0,
                zoom: 1.0,
                sector: 9,
            },
        ] {
            let f = camera_filter(&s);
            let crop = f
                .split("crop=")
                .nth(1)
                .and_then(|c| c.split(',').next())
                .expect("crop");
            let v: Vec<u32> = crop
                .split(':')
                .map(|x| x.parse().expect("number"))
                .collect();
            assert!(
                v[0] + v[2] <= 1920 && v[1] + v[3] <= 1080,
                "{s:?} -> {crop}"
            );
        }
        assert!(camera_filter(&CameraState {
            pan_deg: 60.0,
            zoom: 2.0,
            sector: 0
        })
        .contains("crop=960:540:960:270"));
    }

    #[test]
    fn access_units_end_at_the_last_delimiter() {
        let s = [
            0, 0, 0, 1, 70, 1, 9, 0, 0, 1, 2, 1, 5, 0, 0, 0, 1, 70, 1, 9, 0, 0, 1, 2, 1,
        ];
        assert_eq!(last_aud(&s), Some(13));
        assert_eq!(last_aud(&[0, 0, 1, 2, 1, 5]), None);
    }
}
