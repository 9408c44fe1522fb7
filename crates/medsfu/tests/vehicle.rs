//! Vehicles over QUIC through the real binary: `medsfu vehicle` publishes an H.265 roof
//! camera that a WHEP subscriber decodes, its indicator follows the lead's viewing, and
//! its telemetry survives blackouts, address changes and kill -9 of server and vehicle with
//! not one frame lost, duplicated or reordered.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use medsfu_client::State;
use medsfu_codec::h265_rtp::{annexb_nal_units, Depacketizer};
use support::{certs, decode_errors, ecg_dir, find_file, probe, Server, TempDir};
use tokio::sync::mpsc;

/// A `medsfu vehicle` process whose stdout lines arrive on a channel.
struct Vehicle {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    /// Every line read so far.
    seen: Vec<String>,
}

impl Vehicle {
    fn start(data: &std::path::Path, server: SocketAddr, extra: &[&str]) -> Vehicle {
        let mut child = Command::new(support::bin())
            .arg("vehicle")
            .arg("--data-dir")
            .arg(data)
            .args(["--server", &server.to_string(), "--device", "amb-1"])
            // A vehicle opening a call gets its room from the server.
            .args(if extra.contains(&"--call") || extra.contains(&"--room") {
                &[][..]
            } else {
                &["--room", "r1"][..]
            })
            .arg("--ecg-dir")
            .arg(ecg_dir())
            .args(extra)
            .env("MEDSFU_LOG__FILTER", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn medsfu vehicle");
        let lines = support::lines_of(child.stdout.take().expect("stdout"), |l| l);
        Vehicle {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    async fn wait_line(&mut self, needle: &str, within: Duration) -> String {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(l)) if l.contains(needle) => {
                    self.seen.push(l.clone());
                    return l;
                }
                Ok(Some(l)) => self.seen.push(l),
                Ok(None) => panic!("vehicle exited before printing {needle:?}"),
                Err(_) => panic!("vehicle did not print {needle:?} within {within:?}"),
            }
        }
    }
}

impl Vehicle {
    /// How many lines printed so far contain `needle`.
    fn count(&mut self, needle: &str) -> usize {
        while let Ok(l) = self.lines.try_recv() {
            self.seen.push(l);
        }
        self.seen.iter().filter(|l| l.contains(needle)).count()
    }
}

impl Vehicle {
    /// Waits (off the runtime) until the vehicle exits on its own; its status.
    async fn exited(mut self) -> std::process::ExitStatus {
        tokio::task::spawn_blocking(move || self.child.wait())
            .await
            .expect("join")
            .expect("vehicle exit")
    }
}

impl Drop for Vehicle {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Lets vehicles publish into rooms the control API does not know: most tests here use an
/// operator's room (r1) to exercise the media path without a call.
const OPEN_ROOMS: (&str, &str) = ("MEDSFU_VEHICLE__OPEN_ROOMS", "true");

fn vehicle_server(args: &[&str], env: &[(&str, &str)]) -> Server {
    let data = TempDir::new("veh");
    certs(&data.0, &["--device", "amb-1", "--device", "amb-2"]);
    let mut a = vec!["--vehicle-listen", "127.0.0.1:0"];
    a.extend_from_slice(args);
    let mut e = vec![OPEN_ROOMS];
    e.extend_from_slice(env);
    Server::start_in(data, &a, &e)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_roof_camera_reaches_a_whep_subscriber_as_h265_and_the_lamp_shows_who_watches() {
    // TEST_GOP_REPLAY=false measures the first picture without the cached group of pictures.
    let replay = std::env::var("TEST_GOP_REPLAY").unwrap_or_else(|_| "true".into());
    let server = vehicle_server(&[], &[("MEDSFU_CORE__GOP_REPLAY", &replay)]);
    let quic = server.quic.expect("vehicle endpoint started");
    // The vehicle switches SIM (moves to a new local address) every 2 s; QUIC migrates.
    let mut vehicle = Vehicle::start(
        &server.data.0,
        quic,
        &["--run-for", "60", "--switch-sim-every", "2"],
    );
    vehicle
        .wait_line("connected to room r1", Duration::from_secs(20))
        .await;

    let lead = server.token("r1", "dr-lead", "lead");
    let mut viewer = support::whep_once_published(&server.http, "r1", &lead).await;
    assert_eq!(viewer.connected().await, State::Connected);
    let subscribed = Instant::now();
    vehicle
        .wait_line("indicator: green ON", Duration::from_secs(10))
        .await;

    let mut depack = Depacketizer::new();
    let mut annexb = Vec::new();
    let mut pictures = 0;
    let mut first: Option<(Vec<u8>, Instant)> = None;
    let mut last_at: Option<Instant> = None;
    let mut max_gap = Duration::ZERO;
    let switches_before = vehicle.count("switched SIM");
    while pictures < 150 {
        let r = tokio::time::timeout(Duration::from_secs(10), viewer.received.recv())
            .await
            .expect("media within 10 s")
            .expect("session open");
        if let Some(l) = last_at {
            max_gap = max_gap.max(r.at.saturating_duration_since(l));
        }
        last_at = Some(r.at);
        if let Some(au) = depack
            .push(&r.packet.payload, r.packet.header.marker)
            .expect("valid RFC 7798 payload")
        {
            if first.is_none() {
                first = Some((au.clone(), r.at));
            }
            annexb.extend_from_slice(&au);
            pictures += 1;
        }
    }
    let (first, at) = first.expect("a picture");
    let nals = annexb_nal_units(&first);
    assert!(
        nals.iter()
            .any(|n| (16..=23).contains(&((n[0] >> 1) & 0x3F))),
        "the first picture is a keyframe"
    );
    assert!(
        nals.iter().any(|n| (n[0] >> 1) & 0x3F == 32),
        "with its parameter sets"
    );
    eprintln!(
        "vehicle -> WHEP: first H.265 picture {} ms after the connection was up (gop_replay={replay})",
        at.saturating_duration_since(subscribed).as_millis()
    );
    let dir = TempDir::new("vehrecv");
    let recv = dir.0.join("recv.h265");
    std::fs::write(&recv, &annexb).expect("write");
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
        .args([
            "-show_entries",
            "stream=codec_name,width,height,nb_read_frames",
        ])
        .args(["-of", "csv=p=0"])
        .arg(&recv)
        .output()
        .expect("ffprobe");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "ffprobe: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "hevc,1280,720,150"
    );
    let switches = vehicle.count("switched SIM") - switches_before;
    eprintln!(
        "vehicle -> WHEP: {switches} SIM switches in 5 s of video, longest gap between packets {} ms",
        max_gap.as_millis()
    );
    assert!(switches >= 2, "the vehicle moved address while we watched");
    assert!(
        max_gap < Duration::from_secs(1),
        "media gap {max_gap:?} across SIM switches"
    );
    // A second subscriber: every video packet the vehicle sends now leaves twice, each
    // copy timed from its arrival.
    let consultant = server.token("r1", "dr-cardio", "consultant");
    let mut second = support::whep_once_published(&server.http, "r1", &consultant).await;
    assert_eq!(second.connected().await, State::Connected);
    tokio::time::timeout(Duration::from_secs(10), second.received.recv())
        .await
        .expect("the second subscriber receives")
        .expect("open");
    let video_in = "medsfu_media_rtp_received_packets_total{kind=\"video\"}";
    let video_out = "medsfu_media_rtp_forwarded_packets_total{kind=\"video\"}";
    let (lat_n, lat_s) = (
        "medsfu_media_forward_latency_seconds_count",
        "medsfu_media_forward_latency_seconds_sum",
    );
    // The second subscriber starts with a paced replay of the cached pictures; measure the
    // steady state after it has caught up (its count stops moving), and count any replayed
    // copies in the window apart.
    let replayed = "medsfu_media_replay_lag_seconds_count";
    let mut last = server.metric(replayed).await;
    let settle = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = server.metric(replayed).await;
        if now == last || settle.elapsed() > Duration::from_secs(10) {
            break;
        }
        last = now;
    }
    let at = |s: &'static str| server.metric(s);
    let before = (
        at(video_in).await,
        at(video_out).await,
        at(lat_n).await,
        at(lat_s).await,
        at(replayed).await,
    );
    // A measuring window, not a wait for an event.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = (
        at(video_in).await,
        at(video_out).await,
        at(lat_n).await,
        at(lat_s).await,
        at(replayed).await,
    );
    let din = after.0 - before.0;
    let dreplay = after.4 - before.4;
    let dout = after.1 - before.1 - dreplay;
    let ratio = dout / din;
    eprintln!(
        "metrics: {din} video packets in, {dout} live out to 2 subscribers (ratio {ratio:.3}) \
         and {dreplay} replayed; mean added latency {:.0} us over {} copies",
        1e6 * (after.3 - before.3) / (after.2 - before.2),
        after.2 - before.2
    );
    assert!(din > 100.0, "video flowed: {din}");
    assert!(
        (1.9..=2.05).contains(&ratio),
        "forwarded = 2 subscribers x received: {ratio}"
    );
    assert!(after.2 - before.2 >= 0.95 * dout, "every copy is timed");
    for (role, n) in [
        ("vehicle", 1.0),
        ("lead", 1.0),
        ("consultant", 1.0),
        ("dispatcher", 0.0),
    ] {
        let name = format!("medsfu_participants{{role=\"{role}\"}}");
        assert_eq!(server.metric(&name).await, n, "{name}");
    }
    assert_eq!(server.metric("medsfu_rooms").await, 1.0);
    assert!(
        server
            .metric("medsfu_vehicle_path_rtt_seconds{vehicle=\"amb-1\"}")
            .await
            > 0.0,
        "the vehicle's path is watched"
    );
    assert!(
        server
            .metric("medsfu_vehicle_migrations_total{vehicle=\"amb-1\"}")
            .await
            >= 1.0,
        "its SIM switches are counted"
    );
    assert_eq!(
        server
            .metric("medsfu_vehicle_video_target_bps{vehicle=\"amb-1\"}")
            .await,
        2_000_000.0,
        "it reports its camera bitrate"
    );
    // Every metric the dashboard and the alert rules use is exported.
    let text = reqwest::get(format!("{}/metrics", server.http))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("body");
    let names = support::ops_metric_names();
    assert!(names.len() >= 20, "{names:?}");
    for name in &names {
        assert!(
            text.lines().any(|l| l
                .strip_prefix(name.as_str())
                .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))),
            "{name} is used by config/ but not in /metrics"
        );
    }
    assert_eq!(second.delete().await.expect("DELETE"), 200);

    assert_eq!(viewer.delete().await.expect("DELETE"), 200);
    vehicle
        .wait_line("indicator: green off", Duration::from_secs(10))
        .await;
}

/// A UDP relay between vehicle and server that can black out, and that gives every new
/// vehicle address its own upstream socket, so an address change reaches the server.
/// While `uplink_bps` is not 0 the vehicle-to-server direction is a bottleneck of that
/// rate with 200 ms of buffer (drop-tail), like a congested cell.
async fn relay(
    server: SocketAddr,
    blackhole: Arc<AtomicBool>,
    uplink_bps: Arc<AtomicU64>,
) -> SocketAddr {
    // The bottleneck's transmitter: sends each packet when its serialisation ends.
    let (link_tx, mut link_rx) =
        mpsc::unbounded_channel::<(tokio::time::Instant, Arc<tokio::net::UdpSocket>, Vec<u8>)>();
    tokio::spawn(async move {
        while let Some((at, up, packet)) = link_rx.recv().await {
            tokio::time::sleep_until(at).await;
            let _ = up.send_to(&packet, server).await;
        }
    });
    let mut next_free = tokio::time::Instant::now();
    let front = Arc::new(
        tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind"),
    );
    let addr = front.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut ups: HashMap<SocketAddr, Arc<tokio::net::UdpSocket>> = HashMap::new();
        let mut buf = vec![0u8; 2048];
        loop {
            let Ok((n, from)) = front.recv_from(&mut buf).await else {
                return;
            };
            if blackhole.load(Ordering::Relaxed) {
                continue;
            }
            let up = match ups.get(&from) {
                Some(u) => u.clone(),
                None => {
                    let u = Arc::new(
                        tokio::net::UdpSocket::bind("127.0.0.1:0")
                            .await
                            .expect("bind"),
                    );
                    let (u2, front2, bh) = (u.clone(), front.clone(), blackhole.clone());
                    tokio::spawn(async move {
                        let mut b = vec![0u8; 2048];
                        while let Ok(n) = u2.recv(&mut b).await {
                            if !bh.load(Ordering::Relaxed) {
                                let _ = front2.send_to(&b[..n], from).await;
                            }
                        }
                    });
                    ups.insert(from, u.clone());
                    u
                }
            };
            let bps = uplink_bps.load(Ordering::Relaxed);
            if bps == 0 {
                let _ = up.send_to(&buf[..n], server).await;
                continue;
            }
            let now = tokio::time::Instant::now();
            let start = next_free.max(now);
            if start - now > Duration::from_millis(200) {
                continue; // the bottleneck's buffer is full
            }
            next_free = start + Duration::from_secs_f64((n as f64 + 28.0) * 8.0 / bps as f64);
            let _ = link_tx.send((next_free, up, buf[..n].to_vec()));
        }
    });
    addr
}

type Digest = (u32, u64, String);

/// The generated frames: the last logged line of each (source, sequence) wins, since a
/// vehicle killed between logging and storing a frame numbers the next one the same; a
/// line torn by the kill is skipped.
fn frames_log(path: &std::path::Path) -> Vec<Digest> {
    let mut last: BTreeMap<(u32, u64), String> = BTreeMap::new();
    for l in std::fs::read_to_string(path).expect("frames log").lines() {
        let mut p = l.split(' ');
        let (Some(s), Some(q), Some(d)) = (
            p.next().and_then(|x| x.parse().ok()),
            p.next().and_then(|x| x.parse().ok()),
            p.next().filter(|d| d.len() == 64),
        ) else {
            continue;
        };
        last.insert((s, q), d.to_owned());
    }
    last.into_iter().map(|((s, q), d)| (s, q, d)).collect()
}

fn per_source(v: &[Digest]) -> BTreeMap<u32, Vec<(u64, String)>> {
    let mut m: BTreeMap<u32, Vec<(u64, String)>> = BTreeMap::new();
    for (s, q, d) in v {
        m.entry(*s).or_default().push((*q, d.clone()));
    }
    m
}

/// Reads the room's NDJSON telemetry until `want` frames arrived or `within` passed.
async fn ndjson(server: &Server, want: usize, within: Duration) -> Vec<Digest> {
    let token = server.token("r1", "records", "consultant");
    let resp = reqwest::Client::new()
        .get(format!("{}/api/rooms/r1/telemetry", server.http))
        .bearer_auth(token)
        .send()
        .await
        .expect("GET telemetry");
    assert_eq!(resp.status(), 200);
    let mut resp = resp;
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    while out.len() < want {
        let Ok(Ok(Some(chunk))) = tokio::time::timeout_at(deadline, resp.chunk()).await else {
            break;
        };
        buf.extend_from_slice(&chunk);
        while let Some(i) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            let v: serde_json::Value = serde_json::from_slice(&line).expect("NDJSON line");
            out.push((
                v["source"].as_u64().expect("source") as u32,
                v["seq"].as_u64().expect("seq"),
                v["sha256"].as_str().expect("sha256").to_owned(),
            ));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_survives_blackouts_address_changes_and_kill_9_of_server_and_vehicle() {
    // A fixed QUIC port, so the restarted server is where the vehicle looks for it.
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("free port")
        .port();
    let quic_arg = format!("127.0.0.1:{port}");
    let data = TempDir::new("zeroloss");
    certs(&data.0, &["--device", "amb-1"]);
    let server = Server::start_in(data, &["--vehicle-listen", &quic_arg], &[OPEN_ROOMS]);
    let quic = server.quic.expect("vehicle endpoint");
    let blackhole = Arc::new(AtomicBool::new(false));
    let front = relay(quic, blackhole.clone(), Arc::new(AtomicU64::new(0))).await;
    let vdata = TempDir::new("vehdata");
    certs(&vdata.0, &[]);
    // The vehicle's own certificates: copy the server's PKI (same CA).
    for f in ["ca.pem", "device-amb-1.pem", "device-amb-1.key"] {
        std::fs::copy(
            server.data.0.join("pki").join(f),
            vdata.0.join("pki").join(f),
        )
        .expect("copy cert");
    }
    let log = vdata.0.join("frames.log");
    let log_arg = log.to_string_lossy().into_owned();
    let common = [
        "--no-media",
        "--vitals-every",
        "1",
        "--frames-log",
        &log_arg,
        "--switch-sim-every",
        "4",
    ];
    let mut args = common.to_vec();
    args.extend(["--run-for", "600"]);
    let mut vehicle = Vehicle::start(&vdata.0, front, &args);
    vehicle
        .wait_line("connected to room r1", Duration::from_secs(20))
        .await;

    // A participant watching live from 2 s in: history, then live frames across the
    // blackouts (its server is killed at the end of this phase).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let live = {
        let token = server.token("r1", "watcher", "lead");
        let url = format!("{}/api/rooms/r1/telemetry", server.http);
        tokio::spawn(async move {
            let resp = reqwest::Client::new()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .expect("GET telemetry");
            let mut resp = resp;
            let mut buf = Vec::new();
            let mut out: Vec<Digest> = Vec::new();
            while let Ok(Some(chunk)) = resp.chunk().await {
                buf.extend_from_slice(&chunk);
                while let Some(i) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=i).collect();
                    let v: serde_json::Value = serde_json::from_slice(&line).expect("line");
                    out.push((
                        v["source"].as_u64().unwrap_or(0) as u32,
                        v["seq"].as_u64().unwrap_or(0),
                        v["sha256"].as_str().unwrap_or("").to_owned(),
                    ));
                }
            }
            out
        })
    };
    // Blackouts: 3 s (the connection survives), pass 2 s, 7 s (the vehicle gives the
    // connection up and reconnects), pass 2 s.
    for (dark, light) in [(3, 2), (7, 2)] {
        blackhole.store(true, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(dark)).await;
        blackhole.store(false, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(light)).await;
    }
    // kill -9 the server, start it again on the same data and port.
    let data = server.kill();
    let watched = tokio::time::timeout(Duration::from_secs(10), live)
        .await
        .expect("live stream ends with its server")
        .expect("live task");
    let server = Server::start_in(data, &["--vehicle-listen", &quic_arg], &[OPEN_ROOMS]);
    // The vehicle reconnects to the new server, then is killed (-9) itself.
    vehicle
        .wait_line("connected to room r1", Duration::from_secs(20))
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    drop(vehicle);

    // The vehicle restarts with its outbox and runs a little longer.
    let mut args = common.to_vec();
    args.extend(["--run-for", "4"]);
    let mut again = Vehicle::start(&vdata.0, front, &args);
    again
        .wait_line("connected to room r1", Duration::from_secs(20))
        .await;
    let status = again.exited().await;
    assert!(status.success(), "second vehicle run: {status}");

    let generated = frames_log(&log);
    assert!(
        generated.len() > 100,
        "{} frames generated",
        generated.len()
    );
    let delivered = ndjson(&server, generated.len(), Duration::from_secs(15)).await;
    eprintln!(
        "zero loss: {} frames generated, {} delivered to a late joiner, {} seen live before the kill",
        generated.len(),
        delivered.len(),
        watched.len()
    );
    assert_eq!(
        per_source(&delivered),
        per_source(&generated),
        "every frame, once, in order"
    );
    // What the live watcher saw is, per source, an unbroken prefix of what was generated.
    let gen = per_source(&generated);
    for (src, seen) in per_source(&watched) {
        let all = &gen[&src];
        assert_eq!(&all[..seen.len()], &seen[..], "live frames of source {src}");
    }
    assert!(
        watched.len() > 20,
        "the live watcher saw frames: {}",
        watched.len()
    );
}

async fn wait_metric(server: &Server, name: &str, at_least: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = server.metric(name).await;
        if v >= at_least {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{name} stayed at {v}, want >= {at_least}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Issue 16: with the control API, a certified vehicle publishes only into its own call
/// (it could name any room the control API did not know, and publish patient video there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vehicle_publishes_only_into_its_own_call() {
    use medsfu_quic::client::{self, ClientError};
    use medsfu_quic::protocol::FlowInfo;

    let data = TempDir::new("veh");
    certs(&data.0, &["--device", "amb-1", "--device", "amb-2"]);
    let server = Server::start_in(data, &["--vehicle-listen", "127.0.0.1:0"], &[]);
    let quic = server.quic.expect("vehicle endpoint");
    let pki = server.data.0.join("pki");
    let rd = |f: &str| std::fs::read_to_string(pki.join(f)).expect("pki file");
    let ep = |dev: &str| {
        client::endpoint(
            "127.0.0.1:0".parse().expect("addr"),
            &rd("ca.pem"),
            &rd(&format!("device-{dev}.pem")),
            &rd(&format!("device-{dev}.key")),
        )
        .expect("endpoint")
    };
    let camera = || {
        vec![FlowInfo {
            flow: 0,
            source: "roof_camera".into(),
            codec: "video/H265".into(),
        }]
    };
    let refused = |r: Result<client::Connected, ClientError>| match r {
        Err(ClientError::Refused { code, .. }) => code,
        Err(e) => panic!("expected a refusal, got {e}"),
        Ok(c) => panic!("expected a refusal, got a welcome into {}", c.room),
    };
    let (e1, e2) = (ep("amb-1"), ep("amb-2"));
    assert_eq!(
        refused(client::connect(&e2, quic, "localhost", Some("r1"), camera()).await),
        "room_not_found"
    );
    // amb-1 opens its call; amb-2 may not publish into it; amb-1 may come back to it.
    let call = client::connect(&e1, quic, "localhost", None, camera())
        .await
        .expect("a call opened");
    let room = call.room.clone();
    assert!(room.starts_with("call-"), "{room}");
    assert_eq!(
        refused(client::connect(&e2, quic, "localhost", Some(&room), camera()).await),
        "not_a_member"
    );
    call.conn.close(0u32.into(), b"bye");
    let back = client::connect(&e1, quic, "localhost", Some(&room), camera())
        .await
        .expect("back into its own call");
    assert_eq!(back.room, room);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_vehicle_input_is_counted_and_refused_and_revocation_needs_no_restart() {
    use bytes::Bytes;
    use medsfu_quic::client::{self, ClientError};
    use medsfu_quic::flow;
    use medsfu_quic::protocol::{CameraState, FlowInfo, VehicleMessage};
    use medsfu_telemetry::frame::{Body, Frame, VehicleStatus};

    let server = vehicle_server(
        &[],
        &[
            ("MEDSFU_VEHICLE__CRL_RELOAD_SECS", "1"),
            ("MEDSFU_VEHICLE__CONTROL_RATE", "10"),
        ],
    );
    let quic = server.quic.expect("vehicle endpoint");
    let pki = server.data.0.join("pki");
    let rd = |f: &str| std::fs::read_to_string(pki.join(f)).expect("pki file");
    let ep = |dev: &str| {
        client::endpoint(
            "127.0.0.1:0".parse().expect("addr"),
            &rd("ca.pem"),
            &rd(&format!("device-{dev}.pem")),
            &rd(&format!("device-{dev}.key")),
        )
        .expect("endpoint")
    };
    let camera = |flow| FlowInfo {
        flow,
        source: "roof_camera".into(),
        codec: "video/H265".into(),
    };

    // Hello refusals name the reason.
    let refused = |r: Result<client::Connected, ClientError>| match r {
        Err(ClientError::Refused { code, .. }) => code,
        Err(e) => panic!("expected a refusal, got {e}"),
        Ok(_) => panic!("expected a refusal, got a welcome"),
    };
    let e2 = ep("amb-2");
    assert_eq!(
        refused(client::connect(&e2, quic, "localhost", Some(".."), vec![]).await),
        "bad_room"
    );
    let av2 = FlowInfo {
        codec: "video/AV2".into(),
        ..camera(0)
    };
    assert_eq!(
        refused(client::connect(&e2, quic, "localhost", Some("r2"), vec![av2]).await),
        "bad_flow"
    );
    let twice = vec![camera(3), camera(3)];
    assert_eq!(
        refused(client::connect(&e2, quic, "localhost", Some("r2"), twice).await),
        "bad_flow"
    );

    // Bad datagrams are counted by reason and dropped.
    let e1 = ep("amb-1");
    let mut c = client::connect(&e1, quic, "localhost", Some("r2"), vec![camera(0)])
        .await
        .expect("welcome");
    let mut rtp = vec![0x80u8, 96, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1];
    rtp.extend([0u8; 20]);
    let send = |d: Bytes| c.conn.send_datagram(d).expect("datagram");
    send(flow::frame(9, &rtp));
    send(Bytes::from_static(&[0x40]));
    send(flow::frame(0, &[0x80, 96, 0]));
    send(flow::frame(0, &[0x8f, 96, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1]));
    for (reason, n) in [
        ("unknown_flow", 1.0),
        ("truncated", 1.0),
        ("not_rtp", 1.0),
        ("bad_rtp", 1.0),
    ] {
        let name = format!("medsfu_vehicle_datagrams_dropped_total{{reason=\"{reason}\"}}");
        wait_metric(&server, &name, n).await;
    }

    // A control flood is rate-limited, and the connection keeps working.
    for _ in 0..300 {
        c.control
            .send(&VehicleMessage::CameraState {
                id: None,
                state: CameraState::default(),
            })
            .await
            .expect("send");
    }
    let dropped = wait_metric(&server, "medsfu_vehicle_control_dropped_total", 100.0).await;
    let (mut ts, tr) = c.conn.open_bi().await.expect("telemetry stream");
    let frame = |seq| {
        Frame {
            source: 7,
            sequence: seq,
            captured_at_us: 0,
            body: Body::Status(VehicleStatus::Departed),
        }
        .encode()
        .expect("encode")
    };
    ts.write_all(b"T").await.expect("tag");
    ts.write_all(&frame(0)).await.expect("frame");
    let mut tr = tr;
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !got.ends_with(b"\n") {
        assert!(Instant::now() < deadline, "no ack");
        let chunk = tr
            .read_chunk(1024, true)
            .await
            .expect("read")
            .expect("open");
        got.extend_from_slice(&chunk.bytes);
    }
    assert_eq!(
        String::from_utf8_lossy(&got).trim(),
        r#"{"type":"ack","source":7,"sequence":0}"#,
        "after a flood of {dropped} dropped control messages"
    );
    // An unknown frame version is refused with a reason; the stream ends.
    let mut bad = frame(1);
    bad[2] = 9;
    ts.write_all(&bad).await.expect("frame");
    let mut got = Vec::new();
    while let Ok(Some(chunk)) = tr.read_chunk(1024, true).await {
        got.extend_from_slice(&chunk.bytes);
    }
    assert!(
        String::from_utf8_lossy(&got).contains(r#""code":"frame_version""#),
        "{}",
        String::from_utf8_lossy(&got)
    );
    // A sender whose counter went back: other content under a stored number is refused
    // with its reason, and what was stored stays as it was.
    let (mut ts, mut tr) = c.conn.open_bi().await.expect("telemetry stream");
    ts.write_all(b"T").await.expect("tag");
    let reused = Frame {
        source: 7,
        sequence: 0,
        captured_at_us: 1,
        body: Body::Status(VehicleStatus::Done),
    }
    .encode()
    .expect("encode");
    ts.write_all(&reused).await.expect("frame");
    let mut got = Vec::new();
    while let Ok(Some(chunk)) = tr.read_chunk(1024, true).await {
        got.extend_from_slice(&chunk.bytes);
    }
    let reply = String::from_utf8_lossy(&got);
    assert!(reply.contains(r#""code":"sequence_conflict""#), "{reply}");
    wait_metric(
        &server,
        "medsfu_telemetry_frames_rejected_total{reason=\"sequence_conflict\"}",
        1.0,
    )
    .await;
    // Issue 16: a vehicle cannot forge chat under a doctor's name, nor take a doctor's chat
    // source (with the highest sequence number, it blocked their chat for good).
    let forged = [
        (
            Frame {
                source: 8,
                sequence: 0,
                captured_at_us: 1,
                body: Body::Chat {
                    author: "dr-lead".into(),
                    text: "stop CPR".into(),
                },
            },
            "participant_only",
        ),
        (
            Frame {
                source: medsfu_telemetry::hub::chat_source("dr-lead"),
                sequence: u64::MAX,
                captured_at_us: 1,
                body: Body::Status(VehicleStatus::Done),
            },
            "reserved_source",
        ),
    ];
    for (frame, code) in forged {
        let (mut ts, mut tr) = c.conn.open_bi().await.expect("telemetry stream");
        ts.write_all(b"T").await.expect("tag");
        ts.write_all(&frame.encode().expect("encode"))
            .await
            .expect("frame");
        let mut got = Vec::new();
        while let Ok(Some(chunk)) = tr.read_chunk(1024, true).await {
            got.extend_from_slice(&chunk.bytes);
        }
        let reply = String::from_utf8_lossy(&got);
        assert!(reply.contains(&format!(r#""code":"{code}""#)), "{reply}");
        assert!(!reply.contains("ack"), "nothing stored: {reply}");
        wait_metric(
            &server,
            &format!("medsfu_telemetry_frames_rejected_total{{reason=\"{code}\"}}"),
            1.0,
        )
        .await;
    }
    let stored = reqwest::Client::new()
        .get(format!("{}/api/rooms/r2/telemetry", server.http))
        .bearer_auth(server.token("r2", "records", "consultant"))
        .send()
        .await
        .expect("GET telemetry");
    let mut stored = stored;
    let mut first = Vec::new();
    while !first.contains(&b'\n') {
        first.extend_from_slice(&stored.chunk().await.expect("read").expect("a line"));
    }
    let line = first.split(|b| *b == b'\n').next().unwrap_or_default();
    let v: serde_json::Value = serde_json::from_slice(line).expect("JSON");
    assert_eq!(
        (&v["source"], &v["seq"], &v["status"]),
        (
            &serde_json::json!(7),
            &serde_json::json!(0),
            &serde_json::json!("departed")
        ),
        "{v}"
    );

    // Revoking amb-2 while the server runs and while amb-2 is connected: its open
    // connection is closed, its next handshake fails; amb-1 is unaffected. amb-2 was
    // re-issued first: its older certificate is revoked too (issue 16: it still worked).
    let (old_cert, old_key) = (rd("device-amb-2.pem"), rd("device-amb-2.key"));
    certs(&server.data.0, &["--device", "amb-2"]);
    assert_ne!(rd("device-amb-2.pem"), old_cert, "re-issued");
    let old_ep = || {
        client::endpoint(
            "127.0.0.1:0".parse().expect("addr"),
            &rd("ca.pem"),
            &old_cert,
            &old_key,
        )
        .expect("endpoint")
    };
    client::connect(&old_ep(), quic, "localhost", Some("r4"), vec![])
        .await
        .expect("the older certificate works until amb-2 is revoked");
    let e2 = ep("amb-2");
    let c2 = client::connect(&e2, quic, "localhost", Some("r4"), vec![])
        .await
        .expect("amb-2 welcomed before its revocation");
    certs(&server.data.0, &["--revoke", "amb-2"]);
    let closed = tokio::time::timeout(Duration::from_secs(15), c2.conn.closed())
        .await
        .expect("amb-2's open connection closed within 15 s of its revocation");
    assert!(
        matches!(&closed, quinn::ConnectionError::ApplicationClosed(a)
            if a.error_code == medsfu_quic::server::CLOSE_REVOKED.into() && &a.reason[..] == b"certificate revoked"),
        "{closed:?}"
    );
    wait_metric(&server, "medsfu_vehicle_connections_revoked_total", 1.0).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match client::connect(&ep("amb-2"), quic, "localhost", Some("r3"), vec![]).await {
            Err(ClientError::Connection(_)) => break,
            Ok(_) | Err(_) => {
                assert!(
                    Instant::now() < deadline,
                    "amb-2 still accepted 10 s after revocation"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let refused = wait_metric(&server, "medsfu_vehicle_handshakes_refused_total", 1.0).await;
    // With TLS 1.3 the client may finish its side of the handshake before the server
    // refuses its certificate; the refusal then shows as the connection lost while the
    // hello waits for its welcome. Either way no welcome comes, and the server counts it.
    let old = client::connect(&old_ep(), quic, "localhost", Some("r3"), vec![]).await;
    assert!(
        matches!(
            &old,
            Err(ClientError::Connection(_) | ClientError::Protocol(_))
        ),
        "amb-2's older certificate is revoked with it: {:?}",
        old.as_ref().map(|c| &c.identity)
    );
    wait_metric(
        &server,
        "medsfu_vehicle_handshakes_refused_total",
        refused + 1.0,
    )
    .await;
    assert!(c.conn.close_reason().is_none(), "amb-1 still connected");

    // A configured revocation list that is missing keeps the server from starting.
    let (_, _, data) = server.terminate(Duration::from_secs(15)).await;
    std::fs::remove_file(data.0.join("pki/ca.crl")).expect("remove the CRL");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_medsfu"))
        .args([
            "serve",
            "--vehicle-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .args(["--webrtc-listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data.0)
        .output()
        .expect("medsfu serve");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started without its CRL: {said}");
    assert!(said.contains("ca.crl"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_joiners_page_shows_ecg_vitals_gps_status_and_chat_from_the_start() {
    let server = vehicle_server(&[], &[]);
    let quic = server.quic.expect("vehicle endpoint");
    let mut vehicle = Vehicle::start(
        &server.data.0,
        quic,
        &["--no-media", "--vitals-every", "1", "--run-for", "90"],
    );
    vehicle
        .wait_line("connected to room r1", Duration::from_secs(20))
        .await;
    // History accumulates before the doctor opens the page.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut b = support::Browser::launch().await;
    let token = server.token("r1", "dr-late", "consultant");
    let page = b
        .open(&format!("{}/?room=r1&token={token}&publish=", server.http))
        .await;
    let t = "window.medsfuTelemetry";
    let at_live = b
        .wait_for(
            &page,
            &format!("{t} && {t}.live && {t}.frames"),
            Duration::from_secs(20),
            "telemetry history",
        )
        .await;
    // 3 s of 200 ms ECG blocks, vitals every second, GPS every 2 s, a status: all history.
    assert!(
        at_live.as_u64().unwrap_or(0) >= 15,
        "history frames at live: {at_live}"
    );
    let first_ecg = b.eval(&page, &format!("{t}.bySource['1']")).await;
    assert!(
        first_ecg.as_u64().unwrap_or(0) >= 10,
        "ECG history: {first_ecg}"
    );
    b.wait_for(
        &page,
        &format!(
            "{t}.ecgSamplesDrawn > 720 && {t}.vitals.heart_rate > 0 && {t}.vitals.spo2 > 0 \
             && {t}.gpsFixes >= 2 && {t}.status === 'departed'"
        ),
        Duration::from_secs(20),
        "ECG drawn, vitals, GPS and status",
    )
    .await;
    // Chat goes through the journal and comes back to the page as telemetry.
    b.eval(
        &page,
        "document.getElementById('chat-text').value = 'ST elevation II III aVF?'; \
         document.getElementById('chat-send').click(); true",
    )
    .await;
    b.wait_for(
        &page,
        &format!(
            "{t}.chats >= 1 && document.getElementById('chat-log').textContent.includes('ST elevation')"
        ),
        Duration::from_secs(10),
        "chat echoed",
    )
    .await;
    let shot = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/screenshots/telemetry.png");
    b.screenshot(&page, &shot).await;

    // By now seconds of ECG are journaled: a snapshot document of the last 10 s.
    let (mut lead, _) = join_r1(&server, "dr-lead", "lead").await;
    lead.send(serde_json::json!({ "type": "ecg_snapshot", "seconds": 10, "id": 8 }))
        .await;
    let snap = lead.recv_type("ecg_snapshot").await;
    let file = snap["file"].as_str().unwrap_or_else(|| panic!("{snap}"));
    let pdf = server.data.0.join("recordings/r1").join(file);
    let text = Command::new("pdftotext")
        .arg(&pdf)
        .arg("-")
        .output()
        .expect("pdftotext (Debian package poppler-utils)");
    assert!(
        text.status.success(),
        "{}",
        String::from_utf8_lossy(&text.stderr)
    );
    let text = String::from_utf8_lossy(&text.stdout);
    for want in [
        "ECG snapshot",
        "intervention r1",
        "Requested by dr-lead",
        "25 mm/s",
    ] {
        assert!(text.contains(want), "{want:?} not in the PDF:\n{text}");
    }
    // For people: the real recording on the page (target/screenshots/ecg-snapshot-r1.png).
    let png = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/screenshots/ecg-snapshot-r1");
    let _ = std::fs::create_dir_all(png.parent().expect("parent"));
    let shot = Command::new("pdftoppm")
        .args(["-png", "-r", "60", "-singlefile"])
        .arg(&pdf)
        .arg(&png)
        .output()
        .expect("pdftoppm");
    assert!(
        shot.status.success() && shot.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&shot.stderr)
    );
    lead.send(serde_json::json!({ "type": "ecg_snapshot", "seconds": 11, "id": 9 }))
        .await;
    assert_eq!(lead.recv_type("error").await["code"], "bad_message");
}

/// Joins room r1 over signalling; returns the socket and the vehicle's participant id.
async fn join_r1(server: &Server, identity: &str, role: &str) -> (support::Ws, String) {
    let token = server.token("r1", identity, role);
    let mut ws = support::Ws::connect(server).await;
    ws.send(serde_json::json!({ "type": "join", "token": token }))
        .await;
    // History first, then the participants already there, the vehicle among them.
    ws.recv_type("telemetry_live").await;
    let v = loop {
        let m = ws.recv_type("participant_joined").await;
        if m["role"] == "vehicle" {
            break m["participant"].as_str().expect("id").to_owned();
        }
    };
    (ws, v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lead_steers_the_camera_everyone_sees_its_state_and_others_may_not() {
    use serde_json::json;

    let server = vehicle_server(&[], &[]);
    let quic = server.quic.expect("vehicle endpoint");
    let mut vehicle = Vehicle::start(&server.data.0, quic, &["--no-media", "--run-for", "60"]);
    vehicle
        .wait_line("connected to room r1", Duration::from_secs(20))
        .await;

    let (mut lead, v) = join_r1(&server, "dr-lead", "lead").await;
    let (mut consultant, _) = join_r1(&server, "dr-cardio", "consultant").await;

    lead.send(json!({ "type": "camera", "vehicle": v, "pan_deg": 30, "zoom": 2, "id": 1 }))
        .await;
    let sent = lead.recv_type("camera_sent").await;
    assert_eq!(sent["id"], 1);
    vehicle
        .wait_line(
            "camera: pan +30 deg, zoom 2.0x, sector 0",
            Duration::from_secs(10),
        )
        .await;
    // Everyone in the room sees the acknowledged state.
    for ws in [&mut lead, &mut consultant] {
        let s = ws.recv_type("camera_state").await;
        assert_eq!(
            (
                &s["vehicle"],
                &s["command"],
                &s["pan_deg"],
                &s["zoom"],
                &s["sector"]
            ),
            (
                &json!(v),
                &sent["command"],
                &json!(30.0),
                &json!(2.0),
                &json!(0)
            )
        );
    }
    // A consultant may not steer; values out of range and non-vehicles are refused.
    consultant
        .send(json!({ "type": "camera", "vehicle": v, "pan_deg": 0, "id": 2 }))
        .await;
    let e = consultant.recv_type("error").await;
    assert_eq!(
        (e["code"].as_str(), &e["id"]),
        (Some("camera_forbidden"), &json!(2))
    );
    lead.send(json!({ "type": "camera", "vehicle": v, "pan_deg": 90, "id": 3 }))
        .await;
    assert_eq!(lead.recv_type("error").await["code"], "bad_camera_command");
    lead.send(json!({ "type": "camera", "vehicle": "P999", "zoom": 1, "id": 4 }))
        .await;
    assert_eq!(lead.recv_type("error").await["code"], "no_vehicle");

    // Every log line of a session names its request, room and participant, or its
    // vehicle and room; no token ever appears.
    let logs = server.logs();
    let line = |needle: &str| {
        logs.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no {needle:?} in the log:\n{logs}"))
            .to_owned()
    };
    let joined = line("signalling session joined");
    for field in ["req=", "room=r1", "participant=P"] {
        assert!(joined.contains(field), "{field} missing: {joined}");
    }
    let vehicle = line("vehicle joined");
    for field in ["vehicle=amb-1", "room=r1"] {
        assert!(vehicle.contains(field), "{field} missing: {vehicle}");
    }
    assert!(!logs.contains("eyJ"), "a token (JWT) was logged");

    // The audit trail holds the joins, the history replays and the camera command, and
    // `medsfu audit verify` finds it intact; an altered entry is named.
    let verify = || {
        Command::new(support::bin())
            .args(["audit", "verify", "--data-dir"])
            .arg(&server.data.0)
            .output()
            .expect("medsfu audit verify")
    };
    let out = verify();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.starts_with("audit trail intact"), "{said}");
    let db = rusqlite::Connection::open(server.data.0.join("audit.db")).expect("audit db");
    let actions: Vec<(String, String, String)> = db
        .prepare("SELECT actor, action, room FROM audit ORDER BY seq")
        .and_then(|mut st| {
            st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .and_then(|rows| rows.collect())
        })
        .expect("entries");
    for want in [
        ("dr-lead", "join"),
        ("dr-lead", "history_replay"),
        ("dr-cardio", "join"),
        ("dr-lead", "camera"),
    ] {
        assert!(
            actions
                .iter()
                .any(|(a, w, r)| (a.as_str(), w.as_str()) == want && r == "r1"),
            "{want:?} not audited: {actions:?}"
        );
    }
    // Refused commands (the consultant's camera command) change nothing and are not
    // recorded as done.
    assert!(!actions
        .iter()
        .any(|(a, w, _)| a == "dr-cardio" && w == "camera"));
    db.execute(
        "UPDATE audit SET actor = 'someone-else' WHERE action = 'camera'",
        [],
    )
    .expect("tamper");
    let out = verify();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!out.status.success(), "an altered trail verified: {said}");
    assert!(said.contains("altered"), "{said}");
}

/// The tests that run Chromium and a transcoder take turns: two at once starve each
/// other on a 2-core machine and their timing checks become meaningless.
static TRANSCODING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_without_h265_gets_one_shared_h264_rendition_and_the_lead_steers_from_the_page() {
    let _turn = TRANSCODING.lock().await;
    let server = vehicle_server(&[], &[]);
    let quic = server.quic.expect("vehicle endpoint");
    let mut vehicle = Vehicle::start(&server.data.0, quic, &["--run-for", "90"]);
    vehicle
        .wait_line("connected to room r1", Duration::from_secs(20))
        .await;
    let mut b = support::Browser::launch().await;
    let lead = server.token("r1", "dr-lead", "lead");
    let cardio = server.token("r1", "dr-cardio", "consultant");
    let pl = b
        .open(&format!("{}/?room=r1&token={lead}&publish=", server.http))
        .await;
    let pc = b
        .open(&format!("{}/?room=r1&token={cardio}&publish=", server.http))
        .await;
    let rendition = "(async () => { const s = await window.medsfu.videoStats();
        for (const [t, v] of Object.entries(s)) { const i = window.medsfu.tracks.get(t);
          if (i && i.identity.endsWith('~h264') && v.framesDecoded >= 30) return v.framesDecoded; }
        return null; })()";
    for page in [&pl, &pc] {
        b.wait_for(
            page,
            rendition,
            Duration::from_secs(40),
            "H.264 rendition decoded",
        )
        .await;
    }
    assert_eq!(
        server.metric("medsfu_media_renditions_started_total").await,
        1.0,
        "one transcoder shared by both pages"
    );
    assert_eq!(server.metric("medsfu_media_transcoders_running").await, 1.0);
    // Steady state, after the worker's start-up backlog: the histogram over 4 s.
    let sum = "medsfu_media_transcode_latency_seconds_sum";
    let count = "medsfu_media_transcode_latency_seconds_count";
    let (s1, n1) = (server.metric(sum).await, server.metric(count).await);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (s2, n2) = (server.metric(sum).await, server.metric(count).await);
    assert!(n2 - n1 >= 40.0, "pictures transcoded in 4 s: {}", n2 - n1);
    eprintln!(
        "H.264 rendition: mean transcoder latency {:.1} ms over {} pictures (first {n1}: {:.1} ms)",
        1000.0 * (s2 - s1) / (n2 - n1),
        n2 - n1,
        1000.0 * s1 / n1.max(1.0)
    );
    // The lead's page steers the camera; the vehicle applies it and the page shows it.
    b.wait_for(
        &pl,
        "!document.getElementById('camera-controls').hidden",
        Duration::from_secs(5),
        "camera controls for the lead",
    )
    .await;
    b.eval(&pl, "document.getElementById('cam-right').click(); true")
        .await;
    vehicle
        .wait_line("camera: pan +15 deg", Duration::from_secs(10))
        .await;
    b.wait_for(
        &pl,
        "window.medsfu.camera.pan_deg === 15 && document.getElementById('cam-state').textContent.includes('15')",
        Duration::from_secs(10),
        "camera state on the page",
    )
    .await;
    let hidden = b
        .eval(&pc, "document.getElementById('camera-controls').hidden")
        .await;
    assert_eq!(
        hidden,
        serde_json::json!(true),
        "no camera controls for a consultant"
    );
    let shot = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/screenshots/roof-camera-h264.png");
    b.screenshot(&pl, &shot).await;

    // Both viewers leave: the transcoder lingers 10 s (a reload should not restart it),
    // then its ffmpeg is stopped.
    for page in [&pl, &pc] {
        b.eval(page, "location.href = 'about:blank'; true").await;
    }
    let left = Instant::now();
    while server.metric("medsfu_media_transcoders_running").await > 0.0 {
        assert!(
            left.elapsed() < Duration::from_secs(30),
            "the transcoder still runs 30 s after its last viewer left"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!(
        "H.264 rendition: transcoder stopped {} ms after its last viewer left",
        left.elapsed().as_millis()
    );
}

/// Installs `window.__sig()` in a page: a 32x18 grey-scale signature of the first video
/// tile that is playing, without the top-left corner where the vehicle prints its clock.
const SIGNATURE_JS: &str = "window.__sig = () => {
    const v = [...document.querySelectorAll('#tiles video')].find((v) => v.videoWidth > 0);
    if (!v) return null;
    const c = document.createElement('canvas'); c.width = 32; c.height = 18;
    const g = c.getContext('2d'); g.drawImage(v, 0, 0, 32, 18);
    const d = g.getImageData(0, 0, 32, 18).data; const out = [];
    for (let y = 0; y < 18; y++) for (let x = 0; x < 32; x++) {
      if (y < 4 && x < 10) continue;
      const i = 4 * (y * 32 + x); out.push((d[i] + d[i + 1] + d[i + 2]) / 3);
    }
    return out;
  };
  window.__diff = (a, b) => a.reduce((s, x, i) => s + Math.abs(x - b[i]), 0) / a.length;
  true";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vehicle_call_is_accepted_on_the_page_and_the_lead_steers_the_picture() {
    let _turn = TRANSCODING.lock().await;
    let server = vehicle_server(&[], &[]);
    support::user_add(
        &server.data.0,
        "dr-ana",
        "consultant",
        "correct horse battery",
    );
    support::user_add(&server.data.0, "root", "admin", "correct horse battery");
    let quic = server.quic.expect("vehicle endpoint");
    let mut b = support::Browser::launch().await;
    // The centre signs in and waits for calls.
    let page = b.open(&format!("{}/", server.http)).await;
    b.eval(
        &page,
        "document.getElementById('login-user').value = 'dr-ana';
         document.getElementById('login-password').value = 'correct horse battery';
         document.getElementById('login-form').requestSubmit(); true",
    )
    .await;
    b.wait_for(
        &page,
        "!document.getElementById('centre').hidden && document.getElementById('no-calls') !== null",
        Duration::from_secs(10),
        "the incoming-call list",
    )
    .await;
    // The crew presses the button: the vehicle opens a call, and it rings on the page.
    let mut vehicle = Vehicle::start(&server.data.0, quic, &["--call", "--run-for", "120"]);
    let opened = vehicle
        .wait_line("opened call", Duration::from_secs(20))
        .await;
    let room = opened
        .split_whitespace()
        .last()
        .expect("room name")
        .to_owned();
    let accept =
        format!("document.querySelector('#calls li.call[data-room=\"{room}\"] button.accept')");
    b.wait_for(
        &page,
        &format!("{accept} !== null"),
        Duration::from_secs(10),
        "the call ringing on the page",
    )
    .await;
    b.eval(&page, &format!("{accept}.click(); true")).await;
    b.wait_for(
        &page,
        "window.medsfu.me && window.medsfu.me.role === 'lead' && !document.getElementById('camera-controls').hidden",
        Duration::from_secs(15),
        "joined as lead with camera controls",
    )
    .await;
    vehicle
        .wait_line("indicator: green ON", Duration::from_secs(30))
        .await;
    b.eval(&page, SIGNATURE_JS).await;
    b.wait_for(
        &page,
        "(async () => { const s = await window.medsfu.videoStats();
           return Object.values(s).some((v) => v.framesDecoded >= 30) && window.__sig() !== null; })()",
        Duration::from_secs(40),
        "the roof camera playing on the page",
    )
    .await;
    // How much the picture changes on its own (the test pattern moves) over half a second.
    b.eval(&page, "window.__before = window.__sig(); true")
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let drift = b
        .eval(&page, "window.__diff(window.__before, window.__sig())")
        .await
        .as_f64()
        .expect("drift");
    // Zoom into sector 9 (bottom right) from the sector grid.
    b.eval(
        &page,
        "document.querySelector('#cam-sectors button[data-sector=\"9\"]').click(); true",
    )
    .await;
    vehicle.wait_line("sector 9", Duration::from_secs(10)).await;
    b.wait_for(
        &page,
        "window.medsfu.camera.sector === 9 && document.querySelector('#cam-sectors button[data-sector=\"9\"]').getAttribute('aria-pressed') === 'true'",
        Duration::from_secs(10),
        "the acknowledged camera state on the page",
    )
    .await;
    let threshold = (3.0 * drift).max(12.0);
    let changed = b
        .wait_for(
            &page,
            &format!("(() => {{ const d = window.__diff(window.__before, window.__sig()); return d > {threshold} ? d : null; }})()"),
            Duration::from_secs(20),
            "the picture changing after the sector command",
        )
        .await;
    println!(
        "steering from the page: the picture changed by {:.1} grey levels (drift on its own {drift:.1})",
        changed.as_f64().unwrap_or(f64::NAN)
    );
    // The pan slider: back to the whole picture, then pan; the vehicle reports it.
    b.eval(
        &page,
        "document.querySelector('#cam-sectors button[data-sector=\"0\"]').click();
         document.getElementById('cam-zoom-in').click(); true",
    )
    .await;
    vehicle
        .wait_line("zoom 1.5x", Duration::from_secs(10))
        .await;
    b.eval(
        &page,
        "const s = document.getElementById('cam-pan'); s.value = '45'; s.dispatchEvent(new Event('change')); true",
    )
    .await;
    vehicle
        .wait_line("pan +45 deg", Duration::from_secs(10))
        .await;
    // Invite a second consultant, lend them the camera from the participant list: their
    // page shows the camera controls.
    support::user_add(
        &server.data.0,
        "dr-bo",
        "consultant",
        "correct horse battery",
    );
    b.eval(
        &page,
        "document.getElementById('invite-user').value = 'dr-bo';
         document.getElementById('invite-form').requestSubmit(); true",
    )
    .await;
    b.wait_for(
        &page,
        "document.getElementById('notice').textContent.includes('dr-bo invited as consultant')",
        Duration::from_secs(10),
        "the invitation confirmed",
    )
    .await;
    let bo = b.open(&format!("{}/", server.http)).await;
    b.eval(
        &bo,
        "document.getElementById('login-user').value = 'dr-bo';
         document.getElementById('login-password').value = 'correct horse battery';
         document.getElementById('login-form').requestSubmit(); true",
    )
    .await;
    let join = format!("[...document.querySelectorAll('#my-rooms li')].find((li) => li.textContent.includes('{room}'))");
    b.wait_for(
        &bo,
        &format!("{join} !== undefined"),
        Duration::from_secs(10),
        "the room in the consultant's list",
    )
    .await;
    b.eval(
        &bo,
        &format!("{join}.querySelector('button').click(); true"),
    )
    .await;
    b.wait_for(
        &bo,
        "window.medsfu.me && window.medsfu.me.role === 'consultant' && document.getElementById('camera-controls').hidden",
        Duration::from_secs(15),
        "the consultant in the room, without camera controls",
    )
    .await;
    b.wait_for(
        &page,
        "(() => { const b = document.querySelector('#participants button.grant'); if (b) b.click(); return !!b; })()",
        Duration::from_secs(10),
        "the lend-camera button",
    )
    .await;
    b.wait_for(
        &bo,
        "window.medsfu.cameraGrant && !document.getElementById('camera-controls').hidden",
        Duration::from_secs(10),
        "camera controls lent to the consultant",
    )
    .await;
    b.eval(
        &bo,
        "document.querySelector('#cam-sectors button[data-sector=\"5\"]').click(); true",
    )
    .await;
    vehicle.wait_line("sector 5", Duration::from_secs(10)).await;
    // A screenshot from the page is stored with the record.
    b.eval(
        &page,
        "document.getElementById('cam-screenshot').click(); true",
    )
    .await;
    let shot = b
        .wait_for(
            &page,
            "(() => { const s = window.medsfu.screenshots.find((s) => s.file); return s ? s.file : null; })()",
            Duration::from_secs(20),
            "a stored screenshot",
        )
        .await;
    assert!(shot.as_str().is_some_and(|f| f.ends_with(".png")), "{shot}");
    // It shows what the doctor sees: the vehicle already sends sector 5 as its whole
    // 1280x720 picture (the page once asked for the sector again: 426x240 of a ninth).
    let png = std::fs::read(
        server
            .data
            .0
            .join("recordings")
            .join(&room)
            .join(shot.as_str().unwrap_or_default()),
    )
    .expect("the screenshot file");
    let dim = |at: usize| u32::from_be_bytes([png[at], png[at + 1], png[at + 2], png[at + 3]]);
    assert_eq!((dim(16), dim(20)), (1280, 720), "screenshot size");
    // Recording: the page shows the red indicator, and so does the vehicle.
    b.eval(&page, "document.getElementById('record').click(); true")
        .await;
    b.wait_for(
        &page,
        "!document.getElementById('rec-indicator').hidden",
        Duration::from_secs(10),
        "the recording indicator",
    )
    .await;
    vehicle.wait_line("red ON", Duration::from_secs(10)).await;
    // The call's documents: an ECG snapshot asked from the page joins the screenshot in
    // the room's list; the screenshot opens in the viewer at its full size, the PDF is one.
    b.eval(
        &page,
        "document.getElementById('ecg-snapshot').click(); true",
    )
    .await;
    let listed = b
        .wait_for(
            &page,
            "(() => { const k = [...document.querySelectorAll('#documents li')].map((li) => li.dataset.kind);
                      return k.includes('screenshot') && k.includes('ecg_snapshot') ? k : null; })()",
            Duration::from_secs(20),
            "the screenshot and the ECG snapshot in the documents list",
        )
        .await;
    assert!(!listed.to_string().contains("metadata"), "{listed}");
    b.eval(
        &page,
        "document.querySelector('#documents li[data-kind=\"screenshot\"] button').click(); true",
    )
    .await;
    let width = b
        .wait_for(
            &page,
            "(() => { const i = document.getElementById('doc-img');
                      return document.getElementById('doc-viewer').open && !i.hidden && i.complete && i.naturalWidth ? [i.naturalWidth, i.naturalHeight] : null; })()",
            Duration::from_secs(10),
            "the screenshot in the viewer",
        )
        .await;
    assert_eq!(
        width,
        serde_json::json!([1280, 720]),
        "the screenshot as stored"
    );
    b.screenshot(
        &page,
        &std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../target/screenshots/document-viewer.png"),
    )
    .await;
    b.eval(&page, "document.getElementById('doc-close').click(); true")
        .await;
    let pdf = b
        .eval(
            &page,
            "(async () => { const d = window.medsfu.documents.find((d) => d.kind === 'ecg_snapshot');
                 const r = await fetch(`/api/rooms/${window.medsfu.room}/documents/${d.name}`,
                   { headers: { authorization: `Bearer ${window.medsfu.token}` } });
                 const t = new TextDecoder().decode((await r.arrayBuffer()).slice(0, 5));
                 return [r.status, r.headers.get('content-type'), t]; })()",
        )
        .await;
    assert_eq!(
        pdf,
        serde_json::json!([200, "application/pdf", "%PDF-"]),
        "the ECG snapshot document"
    );
    // Refusals: no token, another room's token, a name that is not a document.
    let other = server.token("another-room", "dr-ana", "lead");
    let refused = b
        .eval(
            &page,
            &format!(
                "(async () => {{ const room = window.medsfu.room, mine = window.medsfu.token;
                   const get = async (path, token) => {{
                     const r = await fetch(`/api/rooms/${{room}}/${{path}}`, token ? {{ headers: {{ authorization: `Bearer ${{token}}` }} }} : {{}});
                     return [r.status, (await r.json()).error]; }};
                   return [await get('documents', null), await get('documents', '{other}'),
                           await get('documents/..%2Fmedsfu.db', mine), await get('documents/x.sh', mine),
                           await get('documents/20000101T000000Z-none.png', mine)]; }})()"
            ),
        )
        .await;
    let codes: Vec<i64> = refused
        .as_array()
        .expect("statuses")
        .iter()
        .map(|r| r[0].as_i64().unwrap_or(0))
        .collect();
    assert_eq!(codes[0], 401, "{refused}");
    assert!(codes[1] == 401 || codes[1] == 403, "{refused}");
    assert_eq!(&codes[2..], [400, 400, 404], "{refused}");
    // Reading a document is an access to patient data: audited, with who and what.
    let http = reqwest::Client::new();
    let login: serde_json::Value = http
        .post(format!("{}/api/login", server.http))
        .header("content-type", "application/json")
        .body(r#"{"user":"root","password":"correct horse battery"}"#)
        .send()
        .await
        .expect("login")
        .text()
        .await
        .map(|t| serde_json::from_str(&t).expect("login answer"))
        .expect("login answer");
    let trail: serde_json::Value = http
        .get(format!("{}/api/audit?limit=1000", server.http))
        .bearer_auth(login["token"].as_str().expect("token"))
        .send()
        .await
        .expect("audit")
        .text()
        .await
        .map(|t| serde_json::from_str(&t).expect("audit entries"))
        .expect("audit entries");
    let reads: Vec<&serde_json::Value> = trail
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["action"] == "document_read" && e["room"] == room.as_str())
        .collect();
    assert_eq!(reads.len(), 2, "the screenshot and the PDF read: {reads:?}");
    assert!(
        reads.iter().all(|e| e.to_string().contains("dr-ana")),
        "{reads:?}"
    );
    let img = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/screenshots/centre-accepted-call.png");
    b.screenshot(&page, &img).await;
}

/// What a subscriber received in one window of time.
#[derive(Debug, Default)]
struct Window {
    audio: usize,
    video_bytes: usize,
    /// Per audio packet: arrival time less its RTP time, in seconds (a constant plus delay).
    audio_offsets: Vec<f64>,
}

impl Window {
    /// The audio delay's `q` quantile, in seconds, on the same scale as the offsets.
    fn offset_quantile(&self, q: f64) -> f64 {
        let mut o = self.audio_offsets.clone();
        o.sort_by(f64::total_cmp);
        o.get(((o.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    }
}

/// Counts a subscriber's audio and video over windows sharing one time origin.
struct Meter {
    t0: Instant,
    first_audio_ts: Option<u32>,
}

impl Meter {
    async fn window(&mut self, viewer: &mut medsfu_client::Session, d: Duration) -> Window {
        let end = tokio::time::Instant::now() + d;
        let mut w = Window::default();
        while let Ok(r) = tokio::time::timeout_at(end, viewer.received.recv()).await {
            let r = r.expect("session open");
            let h = &r.packet.header;
            if h.payload_type == medsfu_client::CodecSpec::opus().payload_type {
                w.audio += 1;
                let first = *self.first_audio_ts.get_or_insert(h.timestamp);
                let rtp = f64::from(h.timestamp.wrapping_sub(first)) / 48_000.0;
                w.audio_offsets
                    .push(r.at.saturating_duration_since(self.t0).as_secs_f64() - rtp);
            } else {
                w.video_bytes += r.packet.payload.len();
            }
        }
        w
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_congested_uplink_lowers_the_camera_bitrate_and_spares_audio_and_control() {
    // TEST_NO_ADAPT=1 runs the vehicle without its governor, to compare (this then fails).
    let adapt = std::env::var("TEST_NO_ADAPT").is_err();
    let server = vehicle_server(&[], &[]);
    let quic = server.quic.expect("vehicle endpoint");
    let uplink = Arc::new(AtomicU64::new(0));
    let front = relay(quic, Arc::new(AtomicBool::new(false)), uplink.clone()).await;
    let mut args = vec!["--run-for", "120"];
    if !adapt {
        args.push("--no-adapt");
    }
    let mut vehicle = Vehicle::start(&server.data.0, front, &args);
    vehicle
        .wait_line("connected to room r1", Duration::from_secs(20))
        .await;
    let lead = server.token("r1", "dr-lead", "lead");
    let codecs = [
        medsfu_client::CodecSpec::h265(),
        medsfu_client::CodecSpec::opus(),
    ];
    let mut viewer = support::whep_once_published_with(&server.http, "r1", &lead, &codecs).await;
    assert_eq!(viewer.connected().await, State::Connected);
    let (mut ws, v) = join_r1(&server, "dr-lead-desk", "lead").await;

    let mut meter = Meter {
        t0: Instant::now(),
        first_audio_ts: None,
    };
    let clear = meter.window(&mut viewer, Duration::from_secs(4)).await;
    let clear_kbps = clear.video_bytes * 8 / 4 / 1000;
    assert!(
        clear.audio >= 150 && clear_kbps > 800,
        "audio and video flow before the congestion: {} audio packets, video {clear_kbps} kb/s",
        clear.audio
    );
    // Audio's delay with an empty path: the least offset seen.
    let base = clear.offset_quantile(0.0);

    // The cell collapses to 700 kb/s, a third of what the camera sends.
    uplink.store(700_000, Ordering::Relaxed);
    let congested = Instant::now();
    if adapt {
        loop {
            let l = vehicle
                .wait_line("uplink: video ", Duration::from_secs(20))
                .await;
            let kbps: u32 = l
                .split_whitespace()
                .nth(2)
                .and_then(|k| k.parse().ok())
                .expect("uplink line has the new rate");
            if kbps <= 500 {
                break;
            }
        }
        eprintln!(
            "congestion: the camera stepped down to 500 kb/s or less {} ms after the cell collapsed",
            congested.elapsed().as_millis()
        );
    }
    // Let the queues settle, then measure.
    let _ = meter.window(&mut viewer, Duration::from_secs(2)).await;
    let c = meter.window(&mut viewer, Duration::from_secs(6)).await;
    let asked = Instant::now();
    ws.send(serde_json::json!({ "type": "camera", "vehicle": v, "pan_deg": 10, "id": 7 }))
        .await;
    let state = tokio::time::timeout(Duration::from_secs(15), ws.recv_type("camera_state"))
        .await
        .expect("camera state within 15 s");
    let control = asked.elapsed();
    assert_eq!(state["pan_deg"], 10.0);
    let video_kbps = c.video_bytes * 8 / 6 / 1000;
    let p95 = (c.offset_quantile(0.95) - base) * 1000.0;
    eprintln!(
        "congestion (adapt={adapt}): in 6 s at 700 kb/s {} audio packets of 300 sent, audio delay p95 +{p95:.0} ms, \
         video {video_kbps} kb/s (was {clear_kbps}), camera command answered in {} ms",
        c.audio,
        control.as_millis()
    );
    assert!(
        c.audio >= 270,
        "audio is spared: {} of 300 packets",
        c.audio
    );
    assert!(p95 < 400.0, "audio delay p95 +{p95:.0} ms under congestion");
    assert!(
        control < Duration::from_secs(2),
        "the control stream is not starved: {control:?}"
    );
    assert!(
        video_kbps >= 150,
        "the camera still sends pictures: {video_kbps} kb/s"
    );

    // The cell recovers: the vehicle probes upwards again.
    uplink.store(0, Ordering::Relaxed);
    let l = vehicle.wait_line("Probe", Duration::from_secs(20)).await;
    eprintln!("congestion over: {l}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_tells_sessions_closes_vehicles_exits_0_and_loses_no_telemetry() {
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("free port")
        .port();
    let quic_arg = format!("127.0.0.1:{port}");
    let data = TempDir::new("sigterm");
    certs(&data.0, &["--device", "amb-1"]);
    let server = Server::start_in(data, &["--vehicle-listen", &quic_arg], &[OPEN_ROOMS]);
    let ready = reqwest::get(format!("{}/readyz", server.http))
        .await
        .expect("GET /readyz");
    assert_eq!(ready.status(), 200);
    let quic = server.quic.expect("vehicle endpoint");
    let log = server.data.0.join("frames.log");
    let log_arg = log.to_string_lossy().into_owned();
    // With media: the cabin audio goes to the voice archive, which SIGTERM must finish.
    let args = [
        "--vitals-every",
        "1",
        "--frames-log",
        &log_arg,
        "--run-for",
        "20",
    ];
    let mut vehicle = Vehicle::start(&server.data.0, quic, &args);
    vehicle
        .wait_line("connected to room r1", Duration::from_secs(20))
        .await;
    let (mut ws, _) = join_r1(&server, "dr-lead", "lead").await;
    // A reader of the NDJSON stream, which must end when the server stops.
    let mut stream = reqwest::Client::new()
        .get(format!("{}/api/rooms/r1/telemetry", server.http))
        .bearer_auth(server.token("r1", "records", "consultant"))
        .send()
        .await
        .expect("GET telemetry");
    let reader = tokio::spawn(async move { while let Ok(Some(_)) = stream.chunk().await {} });
    tokio::time::sleep(Duration::from_secs(3)).await;

    let http = server.http.clone();
    let term = tokio::spawn(server.terminate(Duration::from_secs(15)));
    let bye = ws.recv_type("server_shutdown").await;
    assert!(bye["message"].as_str().is_some_and(|m| !m.is_empty()));
    let (status, took, data) = term.await.expect("terminate");
    assert!(status.success(), "exit status after SIGTERM: {status}");
    eprintln!(
        "SIGTERM: exited 0 in {} ms with a signalling session, a telemetry stream and a vehicle open",
        took.as_millis()
    );
    assert!(
        took < Duration::from_secs(5),
        "every session closed, so no need to wait out the grace period: {took:?}"
    );
    tokio::time::timeout(Duration::from_secs(5), reader)
        .await
        .expect("the telemetry stream ended with the server")
        .expect("reader");
    assert!(reqwest::get(format!("{http}/healthz")).await.is_err());
    // The voice archive was closed properly: its last Ogg page carries end-of-stream.
    let voice = find_file(&data.0.join("recordings/r1"), &["-voice-", ".ogg"]);
    let bytes = std::fs::read(&voice).expect("voice archive");
    let last = bytes
        .windows(4)
        .rposition(|w| w == b"OggS")
        .expect("an Ogg page");
    assert_eq!(
        bytes[last + 5] & 0x04,
        0x04,
        "the last page ends the stream"
    );
    assert_eq!(decode_errors(&voice), "");

    // Back on the same data and port: the vehicle returns, resends, finishes, and every
    // frame it generated is there once, in order.
    let server = Server::start_in(data, &["--vehicle-listen", &quic_arg], &[OPEN_ROOMS]);
    vehicle
        .wait_line("connected to room r1", Duration::from_secs(20))
        .await;
    let status = vehicle.exited().await;
    assert!(status.success(), "vehicle: {status}");
    let generated = frames_log(&log);
    let delivered = ndjson(&server, generated.len(), Duration::from_secs(15)).await;
    eprintln!(
        "SIGTERM: {} frames generated, {} delivered",
        generated.len(),
        delivered.len()
    );
    assert!(generated.len() > 20, "{} frames", generated.len());
    assert_eq!(per_source(&delivered), per_source(&generated));
    // It stopped cleanly: no link is down, its series are gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    while server
        .metric_opt("medsfu_vehicle_link_down{vehicle=\"amb-1\"}")
        .await
        .is_some()
    {
        assert!(Instant::now() < deadline, "link_down still exported");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        server.logs().contains("vehicle left"),
        "the clean stop is in the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lead_records_the_room_all_voice_is_archived_and_a_kill_9_leaves_playable_files() {
    use serde_json::json;
    let server = vehicle_server(&[], &[]);
    let quic = server.quic.expect("vehicle endpoint");
    let mut vehicle = Vehicle::start(&server.data.0, quic, &["--run-for", "90"]);
    vehicle
        .wait_line("connected to room r1", Duration::from_secs(20))
        .await;
    let (mut lead, _) = join_r1(&server, "dr-lead", "lead").await;
    let (mut consultant, _) = join_r1(&server, "dr-cardio", "consultant").await;

    consultant
        .send(json!({ "type": "record", "action": "start", "id": 1 }))
        .await;
    let e = consultant.recv_type("error").await;
    assert_eq!(
        (e["code"].as_str(), &e["id"]),
        (Some("record_forbidden"), &json!(1))
    );
    lead.send(json!({ "type": "record", "action": "start", "id": 2 }))
        .await;
    assert_eq!(lead.recv_type("record_ok").await["recording"], true);
    let started = Instant::now();
    for ws in [&mut lead, &mut consultant] {
        assert_eq!(ws.recv_type("recording").await["active"], true);
    }
    vehicle.wait_line("red ON", Duration::from_secs(10)).await;
    // A recording window, not a wait for an event.
    tokio::time::sleep(Duration::from_secs(6)).await;
    lead.send(json!({ "type": "record", "action": "stop", "id": 3 }))
        .await;
    assert_eq!(lead.recv_type("record_ok").await["recording"], false);
    let recorded = started.elapsed().as_secs_f64();
    assert_eq!(consultant.recv_type("recording").await["active"], false);
    vehicle.wait_line("red off", Duration::from_secs(10)).await;
    // The recording's two tracks finish; the voice archive goes on.
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.metric("medsfu_recording_tracks_active").await > 1.0 {
        assert!(
            Instant::now() < deadline,
            "recorders still running after stop"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let dir = server.data.0.join("recordings/r1");
    let video = find_file(&dir, &["-recording-", "roof_camera", ".mp4"]);
    let (stream, duration) = probe(&video, "v:0");
    eprintln!(
        "recording: {} -> {stream}, {duration:.2} s for {recorded:.2} s recorded",
        video.file_name().unwrap_or_default().to_string_lossy()
    );
    let f: Vec<&str> = stream.split('|').collect();
    assert_eq!(&f[..3], &["hevc", "1280", "720"], "{stream}");
    let frames: f64 = f[3].parse().unwrap_or(0.0);
    assert!(
        frames >= 25.0 * (recorded - 1.0),
        "{frames} frames in {recorded} s"
    );
    assert!(
        (duration - recorded).abs() <= 1.1,
        "duration {duration} within a GOP of {recorded}"
    );
    assert_eq!(decode_errors(&video), "");
    let audio = find_file(&dir, &["-recording-", "cabin_audio", ".ogg"]);
    let (stream, duration) = probe(&audio, "a:0");
    assert!(stream.starts_with("opus"), "{stream}");
    assert!(
        (duration - recorded).abs() <= 1.1,
        "audio {duration} for {recorded}"
    );
    assert_eq!(decode_errors(&audio), "");
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(video.with_extension("json")).expect("metadata"))
            .expect("JSON");
    assert_eq!(
        (
            &meta["publisher"],
            &meta["role"],
            &meta["source"],
            &meta["room"]
        ),
        (
            &json!("amb-1"),
            &json!("vehicle"),
            &json!("roof_camera"),
            &json!("r1")
        )
    );
    // All voice, from its first packet on, without anyone asking.
    let voice = find_file(&dir, &["-voice-", "cabin_audio", ".ogg"]);
    let (stream, duration) = probe(&voice, "a:0");
    assert!(stream.starts_with("opus"), "{stream}");
    // It began before the recording; on disk it is whole pages of a second, so the last
    // second may still be in memory (which made this flaky when the vehicle joined less
    // than a second before the recording started).
    assert!(
        duration + 1.0 >= recorded,
        "voice archive {duration} s for {recorded:.2} s recorded"
    );

    // The lead takes screenshots of the roof camera, whole and one sector; others may not.
    let track = meta["track"].as_str().expect("track id").to_owned();
    consultant
        .send(json!({ "type": "screenshot", "track": track, "id": 5 }))
        .await;
    assert_eq!(
        consultant.recv_type("error").await["code"],
        "screenshot_forbidden"
    );
    for (sector, size) in [(0, "1280|720"), (5, "426|240")] {
        let asked = Instant::now();
        lead.send(json!({ "type": "screenshot", "track": track, "sector": sector, "id": 6 }))
            .await;
        let n = lead.recv_type("screenshot_requested").await["request"].clone();
        let done = lead.recv_type("screenshot").await;
        assert_eq!(done["request"], n);
        let file = done["file"].as_str().unwrap_or_else(|| panic!("{done}"));
        let png = dir.join(file);
        let (stream, _) = probe(&png, "v:0");
        eprintln!(
            "screenshot sector {sector}: {file} ({stream}) in {} ms",
            asked.elapsed().as_millis()
        );
        assert!(stream.starts_with(&format!("png|{size}")), "{stream}");
        if sector == 0 {
            // For people to look at: the burnt-in clock must be readable.
            let shot = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../target/screenshots/roof-camera-screenshot.png");
            let _ = std::fs::create_dir_all(shot.parent().expect("parent"));
            std::fs::copy(&png, &shot).expect("copy");
        }
    }
    lead.send(json!({ "type": "screenshot", "track": "T999", "id": 7 }))
        .await;
    assert_eq!(lead.recv_type("error").await["code"], "bad_track");

    // Recording again, then kill -9: what was written up to the last fragment plays.
    lead.send(json!({ "type": "record", "action": "start", "id": 4 }))
        .await;
    assert_eq!(lead.recv_type("record_ok").await["recording"], true);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(server.metric("medsfu_recording_failures_total").await, 0.0);
    assert!(server.metric("medsfu_recording_bytes_written_total").await > 100_000.0);
    let data = server.kill();
    let dir = data.0.join("recordings/r1");
    let mut mp4s: Vec<_> = std::fs::read_dir(&dir)
        .expect("dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "mp4"))
        .collect();
    mp4s.sort();
    assert_eq!(mp4s.len(), 2, "{mp4s:?}");
    let (stream, duration) = probe(&mp4s[1], "v:0");
    eprintln!("recording cut by kill -9 after 4 s: {stream}, {duration:.2} s");
    assert!(stream.starts_with("hevc|1280|720"), "{stream}");
    assert!(duration >= 2.0, "{duration}");
    assert_eq!(decode_errors(&mp4s[1]), "");

    // The intervention exported as one archive that verifies against its manifest; a
    // changed byte is caught and the file named.
    let archive = data.0.join("r1.tar");
    let run = |args: &[&std::ffi::OsStr]| {
        Command::new(support::bin())
            .arg("export")
            .args(args)
            .output()
            .expect("medsfu export")
    };
    let out = run(&[
        "--data-dir".as_ref(),
        data.0.as_os_str(),
        "--room".as_ref(),
        "r1".as_ref(),
        "--out".as_ref(),
        archive.as_os_str(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listing = Command::new("tar")
        .arg("tf")
        .arg(&archive)
        .output()
        .expect("tar");
    let listing = String::from_utf8_lossy(&listing.stdout).into_owned();
    for want in [
        "telemetry/frames.ndjson",
        "telemetry/vitals.csv",
        "telemetry/gps.csv",
        "chat.csv",
        "roof_camera.mp4",
        "cabin_audio.ogg",
        "-voice-",
        "record/audit.ndjson",
        "manifest.json",
    ] {
        assert!(
            listing.contains(want),
            "{want} not in the archive:\n{listing}"
        );
    }
    // Tables carry RFC 3339 times; entries are dated with the export, not 1970.
    let vitals = Command::new("tar")
        .arg("-xOf")
        .arg(&archive)
        .arg("telemetry/vitals.csv")
        .output()
        .expect("tar -x");
    let vitals = String::from_utf8_lossy(&vitals.stdout).into_owned();
    assert!(
        vitals.starts_with("captured_at,source,seq,vital,value,unit,measured_at\n"),
        "{vitals}"
    );
    let row = vitals.lines().nth(1).expect("a vital sign row");
    let year = time::OffsetDateTime::now_utc().year().to_string();
    assert!(
        row.starts_with(&year) && row.contains('T') && row.ends_with('Z'),
        "{row}"
    );
    let verbose = Command::new("tar")
        .args(["--utc", "-tvf"])
        .arg(&archive)
        .output()
        .expect("tar -tv");
    let verbose = String::from_utf8_lossy(&verbose.stdout).into_owned();
    assert!(
        verbose.lines().all(|l| l.contains(&format!(" {year}-"))),
        "{verbose}"
    );
    // The room's audit entries travel with it, chained hashes included.
    let trail = Command::new("tar")
        .arg("-xOf")
        .arg(&archive)
        .arg("record/audit.ndjson")
        .output()
        .expect("tar -x");
    let trail = String::from_utf8_lossy(&trail.stdout).into_owned();
    assert!(
        trail
            .lines()
            .any(|l| l.contains("\"action\":\"record_start\"") && l.contains("\"hash\":")),
        "{trail}"
    );
    let out = run(&["verify".as_ref(), archive.as_os_str()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Issue 16: recordings, voice archive, journals, databases, the audit trail and the
    // export are readable by medsfu's own user only.
    let private = support::assert_private(&data.0);
    let archive_mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&archive).expect("archive").permissions(),
    );
    assert_eq!(archive_mode & 0o077, 0, "export is {archive_mode:o}");
    println!("{private} files and directories in the data directory, all private");
    let mut bytes = std::fs::read(&archive).expect("archive");
    let at = bytes
        .windows(8)
        .position(|w| w == b"OpusHead")
        .expect("an Ogg file in the archive");
    bytes[at + 20] ^= 0x01;
    std::fs::write(&archive, &bytes).expect("write");
    let out = run(&["verify".as_ref(), archive.as_os_str()]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "a changed byte verified: {said}");
    assert!(said.contains(".ogg: altered"), "{said}");
}

/// Issue 15, item 4: a WHEP viewer that cannot decode H.265 gets the vehicle's roof camera as
/// the H.264 rendition (GStreamer's webrtcbin decodes it); one that takes neither H.265 nor
/// H.264 gets 406 with a JSON reason, never a 201 with a silent m-line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whep_viewer_without_h265_gets_the_h264_rendition_or_a_clear_406() {
    let _turn = TRANSCODING.lock().await;
    let server = vehicle_server(&[], &[]);
    let quic = server.quic.expect("vehicle endpoint");
    let mut vehicle = Vehicle::start(&server.data.0, quic, &["--run-for", "60"]);
    vehicle
        .wait_line("connected to room r1", Duration::from_secs(20))
        .await;
    wait_metric(
        &server,
        "medsfu_media_rtp_received_packets_total{kind=\"video\"}",
        1.0,
    )
    .await;
    let whep = format!("{}/whep/r1", server.http);
    let token = server.token("r1", "dr-gst", "consultant");

    let refused = support::Gst::start("subscribe", &whep, &token, &["--video-codecs", "vp8"]);
    let (code, events) = refused.finish(Duration::from_secs(30)).await;
    let error = events
        .iter()
        .find(|v| v["event"] == "error")
        .unwrap_or_else(|| panic!("an error: {events:?}"));
    assert_eq!(code, 3, "{events:?}");
    assert_eq!(error["status"], 406);
    let body: serde_json::Value =
        serde_json::from_str(error["body"].as_str().unwrap_or_default()).expect("JSON body");
    assert_eq!(body["code"], "no_codec");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));

    let viewer = support::Gst::start(
        "subscribe",
        &whep,
        &token,
        &["--video-codecs", "h264", "--seconds", "8"],
    );
    let (code, events) = viewer.finish(Duration::from_secs(60)).await;
    assert_eq!(code, 0, "{events:?}");
    let frames = events
        .iter()
        .filter(|v| v["event"] == "stats")
        .filter_map(|v| v["frames"].as_u64())
        .next_back()
        .unwrap_or(0);
    eprintln!("gst viewer without H.265: {frames} frames of the H.264 rendition in 8 s");
    assert!(frames >= 100, "{frames} frames");
    assert_eq!(
        server.metric("medsfu_media_renditions_started_total").await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_ambulance_link_is_shown_as_stale_within_seconds_and_its_return_is_said() {
    let _turn = TRANSCODING.lock().await;
    // Stale after 2 s of silence here (3 s by default), to show the setting reaches the page.
    // The server gives a silent vehicle 4 s (30 s by default) before it calls the link lost.
    let server = vehicle_server(
        &[],
        &[
            ("MEDSFU_HTTP__PAGE_STALE_MS", "2000"),
            ("MEDSFU_VEHICLE__IDLE_TIMEOUT_SECS", "4"),
        ],
    );
    support::user_add(
        &server.data.0,
        "dr-ana",
        "consultant",
        "correct horse battery",
    );
    let quic = server.quic.expect("vehicle endpoint");
    let mut b = support::Browser::launch().await;
    let page = b.open(&format!("{}/", server.http)).await;
    b.eval(
        &page,
        "document.getElementById('login-user').value = 'dr-ana';
         document.getElementById('login-password').value = 'correct horse battery';
         document.getElementById('login-form').requestSubmit(); true",
    )
    .await;
    let vehicle = Vehicle::start(
        &server.data.0,
        quic,
        &["--call", "--run-for", "120", "--vitals-every", "1"],
    );
    let accept = "document.querySelector('#calls li.call button.accept')";
    b.wait_for(
        &page,
        &format!("{accept} !== null"),
        Duration::from_secs(20),
        "the call ringing on the page",
    )
    .await;
    b.eval(&page, &format!("{accept}.click(); true")).await;
    // Everything live: ECG drawn, heart rate, the roof camera playing, no banner.
    b.wait_for(
        &page,
        "(async () => { const s = await window.medsfu.videoStats(); const T = window.medsfuTelemetry;
           return window.medsfu.staleAfter.media === 2000 && T.live && T.ecgSamplesDrawn > 500 && T.vitals.heart_rate !== undefined
             && Object.values(s).some((v) => v.framesDecoded >= 30) && document.getElementById('link-banner').hidden
             && document.getElementById('tele-state').dataset.state === 'live'
             && !document.querySelector('#vitals tr.stale') && !document.querySelector('.tile.stale'); })()",
        Duration::from_secs(60),
        "a live call with ECG, vitals and the roof camera",
    )
    .await;
    let room = b.eval(&page, "window.medsfu.room").await;
    let room = room.as_str().expect("room").to_owned();

    // The ambulance's link drops (the process is killed, nothing says goodbye).
    let killed = std::time::Instant::now();
    drop(vehicle);
    let banner = b
        .wait_for(
            &page,
            "(() => { const b = document.getElementById('link-banner');
               return !b.hidden && b.dataset.state === 'lost' && b.textContent.startsWith('Link lost') ? b.textContent : null; })()",
            Duration::from_secs(10),
            "the link-lost banner",
        )
        .await;
    let after = killed.elapsed();
    println!("link lost: banner {after:?} after the vehicle died: {banner}");
    assert!(
        after >= Duration::from_millis(1000) && after < Duration::from_secs(4),
        "banner after {after:?} with a 2 s setting"
    );
    // Every stream says it is stale: the badge, the ECG, each vital, the picture.
    let stale = b
        .wait_for(
            &page,
            "(() => { const T = window.medsfuTelemetry;
               const vitals = document.querySelectorAll('#vitals tr.stale').length;
               const b = document.getElementById('link-banner').textContent;
               return T.lost && document.getElementById('tele-state').textContent === 'link lost' && vitals >= 3
                 && document.getElementById('gps-text').classList.contains('stale')
                 && ['ECG', 'vitals', 'position'].every((w) => b.includes(w))
                 && document.querySelector('.tile.stale .stale-note:not([hidden])') !== null ? b : null; })()",
            Duration::from_secs(10),
            "ECG, vitals, position and video marked stale",
        )
        .await;
    assert!(
        stale.as_str().is_some_and(|b| b.contains("last data at")),
        "{stale}"
    );
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("../screenshots");
    std::fs::create_dir_all(&shots).expect("screenshot dir");
    b.screenshot(&page, &shots.join("link-lost.png")).await;
    // The operator's side: the loss is logged, `link_down` is 1, and the gauges of the
    // path that no longer exists are gone rather than frozen at their last value.
    let v = "{vehicle=\"amb-1\"}";
    let deadline = Instant::now() + Duration::from_secs(15);
    while server
        .metric_opt(&format!("medsfu_vehicle_link_down{v}"))
        .await
        != Some(1.0)
    {
        assert!(
            Instant::now() < deadline,
            "link_down never became 1: {:?}",
            server
                .logs()
                .lines()
                .filter(|l| l.contains("vehicle"))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for gone in [
        "medsfu_vehicle_path_rtt_seconds",
        "medsfu_vehicle_video_target_bps",
        "medsfu_vehicle_outbox_unacked_frames",
    ] {
        assert_eq!(
            server.metric_opt(&format!("{gone}{v}")).await,
            None,
            "{gone}"
        );
    }
    assert!(
        server
            .metric_opt(&format!("medsfu_vehicle_migrations_total{v}"))
            .await
            == Some(0.0),
        "the counters stay, from zero"
    );
    assert!(
        server.logs().contains("vehicle link lost"),
        "the loss is in the log"
    );

    // The ambulance comes back into its call: the page says so and how long it was away.
    let _back = Vehicle::start(
        &server.data.0,
        quic,
        &["--room", &room, "--run-for", "60", "--vitals-every", "1"],
    );
    let back = b
        .wait_for(
            &page,
            "(() => { const b = document.getElementById('link-banner');
               return !b.hidden && b.dataset.state === 'back' && !window.medsfuTelemetry.lost ? b.textContent : null; })()",
            Duration::from_secs(30),
            "the link-back banner",
        )
        .await;
    assert!(
        back.as_str()
            .is_some_and(|b| b.starts_with("Link back (lost for 0:")),
        "{back}"
    );
    let events = b.eval(&page, "window.medsfu.link.events.length").await;
    assert_eq!(events, 2, "one loss, one return");
    assert_eq!(
        server
            .metric_opt(&format!("medsfu_vehicle_link_down{v}"))
            .await,
        Some(0.0),
        "the vehicle is back"
    );
}

/// The README's first command: `medsfu demo` prints how to ring the centre from a second
/// ambulance, and that command, run as printed, reaches this server's data directory and
/// port (it once ignored a non-default data directory).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_prints_a_working_command_for_a_second_ambulance() {
    let data = TempDir::new("demo");
    // From the checkout's root, as the README has it (the ECG is found at ../shared).
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let spawn = |args: &[&str]| {
        let mut child = Command::new(support::bin())
            .current_dir(&root)
            .args(args)
            .env("MEDSFU_LOG__FILTER", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn medsfu");
        let lines = support::lines_of(child.stdout.take().expect("stdout"), |l| l);
        Vehicle {
            child,
            lines,
            seen: Vec::new(),
        }
    };
    let dir = data.0.display().to_string();
    let mut demo = spawn(&[
        "demo",
        "--http-listen",
        "127.0.0.1:0",
        "--webrtc-listen",
        "127.0.0.1:0",
        "--vehicle-listen",
        "127.0.0.1:0",
        "--data-dir",
        &dir,
    ]);
    let banner = demo
        .wait_line("medsfu listening on", Duration::from_secs(60))
        .await;
    let http = banner
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .expect("address")
        .trim_end_matches('/')
        .to_owned();
    let centre = demo
        .wait_line("sign in as dr-demo / ", Duration::from_secs(20))
        .await;
    let password = centre.rsplit(' ').next().expect("password").to_owned();
    let line = demo
        .wait_line("second simulated ambulance:", Duration::from_secs(20))
        .await;
    let cmd = line
        .split("ambulance:")
        .nth(1)
        .expect("a command")
        .trim()
        .to_owned();
    assert!(cmd.contains(&format!("--data-dir {dir}")), "{cmd}");
    assert!(cmd.contains("--server 127.0.0.1:"), "{cmd}");
    let args: Vec<&str> = cmd
        .strip_prefix("cargo run -p medsfu -- ")
        .expect("a cargo command")
        .split_whitespace()
        .collect();
    let mut second = spawn(&[&args[..], &["--no-media", "--run-for", "30"]].concat());
    let opened = second
        .wait_line("opened call", Duration::from_secs(20))
        .await;
    let room = opened.split_whitespace().last().expect("room").to_owned();
    // The centre sees it ring.
    let http_client = reqwest::Client::new();
    let login = http_client
        .post(format!("{http}/api/login"))
        .header("content-type", "application/json")
        .body(serde_json::json!({ "user": "dr-demo", "password": password }).to_string())
        .send()
        .await
        .expect("login")
        .text()
        .await
        .expect("login answer");
    let login: serde_json::Value = serde_json::from_str(&login).expect("login JSON");
    let calls = http_client
        .get(format!("{http}/api/calls"))
        .bearer_auth(login["token"].as_str().expect("token"))
        .send()
        .await
        .expect("calls")
        .text()
        .await
        .expect("calls answer");
    assert!(
        calls.contains(&room) && calls.contains("ambulance-2"),
        "{room} from ambulance-2 not ringing: {calls}"
    );
}

/// Issue 17, item 6: the dispatcher follows the calls in progress (vehicle, lead,
/// duration, position) and joins one without an invitation, hearing and seeing all of
/// it; once the lead takes them out they stay out until invited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatcher_sees_calls_in_progress_with_positions_and_joins_one_uninvited() {
    let _turn = TRANSCODING.lock().await;
    let server = vehicle_server(&[], &[]);
    let data = &server.data.0;
    support::user_add(data, "dr-ana", "consultant", "correct horse battery");
    support::user_add(data, "dis-1", "dispatcher", "correct horse battery");
    let quic = server.quic.expect("vehicle endpoint");
    let mut b = support::Browser::launch().await;
    let page = b.open(&format!("{}/", server.http)).await;
    b.eval(
        &page,
        "document.getElementById('login-user').value = 'dis-1';
         document.getElementById('login-password').value = 'correct horse battery';
         document.getElementById('login-form').requestSubmit(); true",
    )
    .await;
    let mut vehicle = Vehicle::start(
        data,
        quic,
        &["--call", "--run-for", "120", "--vitals-every", "1"],
    );
    let opened = vehicle
        .wait_line("opened call", Duration::from_secs(20))
        .await;
    let room = opened.split_whitespace().last().expect("room").to_owned();
    // The ringing call is on the dispatcher's page, without an Accept button.
    let card = format!("document.querySelector('#calls li.call[data-room=\"{room}\"]')");
    b.wait_for(
        &page,
        &format!("{card} !== null && {card}.querySelector('button.accept') === null"),
        Duration::from_secs(20),
        "the ringing call, watched",
    )
    .await;
    // A doctor answers (from elsewhere).
    let http = reqwest::Client::new();
    let login = |user: &'static str| {
        let http = http.clone();
        let url = format!("{}/api/login", server.http);
        async move {
            let t = http
                .post(url)
                .header("content-type", "application/json")
                .body(format!(
                    r#"{{"user":"{user}","password":"correct horse battery"}}"#
                ))
                .send()
                .await
                .expect("login")
                .text()
                .await
                .expect("login answer");
            let v: serde_json::Value = serde_json::from_str(&t).expect("login JSON");
            v["token"].as_str().expect("token").to_owned()
        }
    };
    let ana = login("dr-ana").await;
    let accepted = http
        .post(format!("{}/api/calls/{room}/accept", server.http))
        .bearer_auth(&ana)
        .send()
        .await
        .expect("accept");
    assert_eq!(accepted.status(), 200);
    // The call in progress: its ambulance, lead, duration and where it is.
    let item = format!("document.querySelector('#my-rooms li.active-call[data-room=\"{room}\"]')");
    let shown = b
        .wait_for(
            &page,
            &format!(
                "(() => {{ const li = {item}; if (!li) return null; const t = li.textContent;
                   return t.includes('Ambulance amb-1') && t.includes('lead dr-ana') && /\\d+\\.\\d{{5}}, -?\\d+\\.\\d{{5}}/.test(t)
                     && /· \\d+:\\d\\d/.test(t) && li.querySelector('button.join-uninvited') ? t : null; }})()"
            ),
            Duration::from_secs(30),
            "the call in progress with its lead, duration and position",
        )
        .await;
    println!("dispatcher's list: {shown}");
    b.screenshot(
        &page,
        &std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../target/screenshots/dispatcher-calls.png"),
    )
    .await;
    // Join without an invitation: in the room as dispatcher, ECG and the roof camera live.
    b.eval(
        &page,
        &format!("{item}.querySelector('button.join-uninvited').click(); true"),
    )
    .await;
    b.wait_for(
        &page,
        "(async () => { const s = await window.medsfu.videoStats(); const T = window.medsfuTelemetry;
           return window.medsfu.me && window.medsfu.me.role === 'dispatcher' && T.ecgSamplesDrawn > 300
             && Object.values(s).some((v) => v.framesDecoded >= 10); })()",
        Duration::from_secs(60),
        "the dispatcher in the call with ECG and video",
    )
    .await;
    // The first pictures are whole: the rendition starts decoding at a keyframe. (Its
    // ffmpeg once threw the first keyframe away with what stream analysis read, and on a
    // busy machine decoded the pictures after it without their reference: grey, with only
    // the moving edges drawn, until the next keyframe.)
    let chroma_js = "(() => { const v = document.querySelector('#tiles .tile video');
               const c = document.createElement('canvas'); c.width = 64; c.height = 36;
               const x = c.getContext('2d'); x.drawImage(v, 0, 0, 64, 36);
               const d = x.getImageData(0, 0, 64, 36).data; let s = 0;
               for (let i = 0; i < d.length; i += 4) s += Math.max(d[i], d[i + 1], d[i + 2]) - Math.min(d[i], d[i + 1], d[i + 2]);
               return s / (d.length / 4); })()";
    let chroma = b.eval(&page, chroma_js).await;
    println!("first pictures' mean chroma: {chroma}");
    assert!(
        chroma.as_f64().is_some_and(|c| c > 60.0),
        "a grey first picture (mean chroma {chroma}): decoded without its keyframe"
    );
    // The track is drawn on a metric grid (no map tiles in a closed network).
    let grid = b
        .wait_for(
            &page,
            "window.medsfuTelemetry.gpsFixes > 0 && window.medsfuTelemetry.gpsGridM > 0 ? window.medsfuTelemetry.gpsGridM : null",
            Duration::from_secs(20),
            "the position track on its grid",
        )
        .await;
    assert!(
        grid.as_f64()
            .is_some_and(|m| (10.0..=100_000.0).contains(&m)),
        "{grid}"
    );
    // A video tile goes full screen (or, where the browser refuses, the page's width).
    let sizes = b
        .eval(
            &page,
            "(async () => { const tile = document.querySelector('#tiles .tile');
               const before = tile.getBoundingClientRect().width;
               tile.querySelector('button.enlarge').click();
               // The class applies at once; reading the size lays the page out again.
               const after = tile.getBoundingClientRect().width;
               return [before, after, tile.classList.contains('big'), document.getElementById('tiles').getBoundingClientRect().width]; })()",
        )
        .await;
    let s: Vec<f64> = sizes
        .as_array()
        .expect("sizes")
        .iter()
        .map(|v| v.as_f64().unwrap_or(if v == true { 1.0 } else { 0.0 }))
        .collect();
    assert!(
        s[2] == 1.0 && s[1] > s[0] && s[1] >= s[3] - 1.0,
        "enlarged tile: {sizes}"
    );
    let chroma = b.eval(&page, chroma_js).await;
    println!("enlarged picture's mean chroma: {chroma}");
    assert!(
        chroma.as_f64().is_some_and(|c| c > 60.0),
        "a grey picture (mean chroma {chroma}): decoded without its reference"
    );
    b.screenshot(
        &page,
        &std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../target/screenshots/dispatcher-in-call.png"),
    )
    .await;
    b.eval(
        &page,
        "document.querySelector('#tiles .tile button.enlarge').click(); true",
    )
    .await;
    let members: serde_json::Value = serde_json::from_str(
        &http
            .get(format!("{}/api/rooms/{room}", server.http))
            .bearer_auth(&ana)
            .send()
            .await
            .expect("room")
            .text()
            .await
            .expect("room answer"),
    )
    .expect("room JSON");
    assert!(
        members["members"]
            .as_array()
            .expect("members")
            .iter()
            .any(|m| m["name"] == "dis-1" && m["role"] == "dispatcher"),
        "{members}"
    );
    // The lead takes the dispatcher out: their page says so, and a new join is refused.
    let removed = http
        .delete(format!("{}/api/rooms/{room}/members/dis-1", server.http))
        .bearer_auth(&ana)
        .send()
        .await
        .expect("remove");
    assert_eq!(removed.status(), 204);
    b.wait_for(
        &page,
        "window.medsfu.ended === 'removed' && !document.getElementById('ended').hidden",
        Duration::from_secs(10),
        "the removed state",
    )
    .await;
    let again = b
        .eval(
            &page,
            &format!(
                "apiCall('POST', '/api/rooms/{room}/join').then(() => 'joined', (e) => e.message)"
            ),
        )
        .await;
    assert!(
        again.as_str().is_some_and(|m| m.contains("removed")),
        "{again}"
    );
}
