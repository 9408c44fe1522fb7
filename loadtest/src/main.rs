//! Load generator for any WHIP/WHEP server: one publisher of synthetic H.265 at a given
//! bitrate, N subscribers; prints packets, loss, receive-to-send latency percentiles and
//! the server process's CPU time per forwarded packet as JSON.
//!
//! Vehicle mode (`--vehicles V --data-dir DIR`, medsfu only): V vehicles publish over QUIC
//! with device certificates issued from DIR/pki, each in its own room, each watched by
//! `--subscribers` WHEP subscribers whose tokens are signed with DIR's secret.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::Parser;
use medsfu_client::{whep, whip, CodecSpec, State};
use serde_json::json;

/// One WHIP publisher, N WHEP subscribers, a JSON report.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Server base URL (WHIP at {base}/whip/{room}, WHEP at {base}/whep/{room}).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    base: String,
    /// Room.
    #[arg(long, default_value = "load")]
    room: String,
    /// Bearer token of the publisher (WHIP mode).
    #[arg(long)]
    publisher_token: Option<String>,
    /// Vehicle mode: this many QUIC vehicles, each in room `{room}-{i}`.
    #[arg(long, default_value_t = 0)]
    vehicles: usize,
    /// Vehicle mode: the server's data directory (its pki/ and token secret).
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
    /// Vehicle mode: the server's QUIC address.
    #[arg(long, default_value = "127.0.0.1:4433")]
    quic: std::net::SocketAddr,
    /// Bearer token of the subscribers (one identity per subscriber is not needed by WHEP).
    #[arg(long)]
    subscriber_token: Vec<String>,
    /// Number of subscribers (per vehicle in vehicle mode; tokens reused round-robin).
    #[arg(long, default_value_t = 10)]
    subscribers: usize,
    /// Publisher bitrate in kbit/s.
    #[arg(long, default_value_t = 2000)]
    kbps: u32,
    /// Measured duration in seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// PID of the server process, to report its CPU time per forwarded packet.
    #[arg(long)]
    pid: Option<u32>,
}

const PAYLOAD: usize = 1200;
const FPS: u32 = 30;

/// utime + stime of a process, in seconds (Linux /proc, USER_HZ = 100).
fn cpu_seconds(pid: u32) -> Option<f64> {
    stat_cpu_seconds(&format!("/proc/{pid}/stat"))
}

/// utime + stime from a /proc `stat` file, in seconds.
fn stat_cpu_seconds(path: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// The raw cost of sending: CPU µs per datagram of this thread sending 1240-byte
/// datagrams (an SRTP packet of 1200 bytes of payload) round-robin to `destinations`
/// loopback sockets for about a second, with `medsfu_media::transmit` (`sendmmsg`, 64 per
/// call) and with one `send_to` per datagram. Another thread empties the receivers, as
/// subscribers would. The ceiling the server's per-packet cost is compared with.
async fn probe_send(destinations: usize) -> Result<serde_json::Value> {
    use medsfu_media::transmit::{send_all, Transmit};
    use std::sync::atomic::{AtomicBool, Ordering};
    const SIZE: usize = 1240;
    const RUN: Duration = Duration::from_secs(1);
    let mut receivers = Vec::new();
    let mut addrs = Vec::new();
    for _ in 0..destinations.max(1) {
        let r = std::net::UdpSocket::bind("127.0.0.1:0")?;
        r.set_nonblocking(true)?;
        addrs.push(r.local_addr()?);
        receivers.push(r);
    }
    let done = std::sync::Arc::new(AtomicBool::new(false));
    let drain = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !done.load(Ordering::Relaxed) {
                for r in &receivers {
                    while r.recv(&mut buf).is_ok() {}
                }
            }
        })
    };
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    let thread_cpu = || stat_cpu_seconds("/proc/thread-self/stat").unwrap_or(0.0);
    let payload = [0x80u8; SIZE];
    let mut report = serde_json::Map::new();
    for batched in [true, false] {
        let (mut n, mut failed, mut i) = (0u64, 0u64, 0usize);
        let mut queue = Vec::with_capacity(medsfu_media::transmit::BATCH);
        let (t0, c0) = (Instant::now(), thread_cpu());
        while t0.elapsed() < RUN {
            for _ in 0..medsfu_media::transmit::BATCH {
                let to = addrs[i % addrs.len()];
                i += 1;
                if batched {
                    queue.push(Transmit {
                        to,
                        data: bytes::BytesMut::from(&payload[..]),
                    });
                } else {
                    match socket.try_send_to(&payload, to) {
                        Ok(_) => n += 1,
                        Err(_) => failed += 1,
                    }
                }
            }
            if batched {
                let sent = send_all(&socket, &mut queue);
                n += sent.datagrams;
                failed += sent.failed;
            }
        }
        let cpu = thread_cpu() - c0;
        let name = if batched { "sendmmsg" } else { "send_to" };
        report.insert(
            name.into(),
            json!({
                "us_per_datagram": if n > 0 { cpu * 1e6 / n as f64 } else { 0.0 },
                "datagrams": n,
                "failed": failed,
            }),
        );
    }
    done.store(true, Ordering::Relaxed);
    let _ = drain.join();
    report.insert("destinations".into(), json!(destinations));
    Ok(serde_json::Value::Object(report))
}

/// One reading of a Prometheus histogram.
struct Histogram {
    /// (upper bound, cumulative count) per bucket.
    buckets: Vec<(f64, f64)>,
    sum: f64,
    count: f64,
}

/// The server's `medsfu_media_forward_latency_seconds` histogram; `None` when the server is
/// not medsfu or not reachable.
async fn forward_latency(base: &str) -> Option<Histogram> {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let (mut buckets, mut sum, mut count) = (Vec::new(), 0.0, 0.0);
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("medsfu_media_forward_latency_seconds") else {
            continue;
        };
        let (name, value) = rest.rsplit_once(' ')?;
        let value: f64 = value.parse().ok()?;
        if let Some(le) = name.strip_prefix("_bucket{le=\"") {
            let le = le.trim_end_matches("\"}");
            buckets.push((le.parse().unwrap_or(f64::INFINITY), value));
        } else if name == "_sum" {
            sum = value;
        } else if name == "_count" {
            count = value;
        }
    }
    (count > 0.0 || !buckets.is_empty()).then_some(Histogram {
        buckets,
        sum,
        count,
    })
}

/// The SFU-added latency of the copies sent between two readings of the histogram: their
/// number, mean, and the bucket bounds under which half and 99 % of them fall.
fn added_latency(before: Option<Histogram>, after: Option<Histogram>) -> serde_json::Value {
    let (Some(h0), Some(h1)) = (before, after) else {
        return serde_json::Value::Null;
    };
    let n = h1.count - h0.count;
    let within = |q: f64| {
        h1.buckets
            .iter()
            .zip(&h0.buckets)
            .find(|((_, a), (_, b))| a - b >= q * n)
            .map(|((le, _), _)| le * 1e6)
    };
    json!({
        "copies": n,
        "mean_us": if n > 0.0 { (h1.sum - h0.sum) / n * 1e6 } else { 0.0 },
        "p50_under_us": within(0.5),
        "p99_under_us": within(0.99),
    })
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

/// Who publishes the synthetic stream.
enum Publisher {
    Whip(medsfu_client::Session),
    /// A vehicle's QUIC connection.
    Quic {
        conn: quinn::Connection,
        /// Kept open: the session ends with its control stream.
        _control: medsfu_quic::client::Control,
    },
}

impl Publisher {
    /// Largest payload that fits one packet.
    fn payload_limit(&self) -> usize {
        match self {
            Publisher::Whip(_) => PAYLOAD,
            Publisher::Quic { conn: c, .. } => c
                .max_datagram_size()
                .unwrap_or(1100)
                .saturating_sub(24)
                .min(PAYLOAD),
        }
    }

    fn send(&self, seq: u16, ts: u32, marker: bool, payload: Bytes) {
        match self {
            Publisher::Whip(s) => s.send(medsfu_client::packet(seq, ts, marker, payload)),
            Publisher::Quic { conn: c, .. } => {
                let p = medsfu_core::RtpPacket {
                    header: medsfu_core::RtpHeader {
                        payload_type: 96,
                        marker,
                        sequence_number: seq,
                        timestamp: ts,
                        ssrc: 0x10ad,
                    },
                    payload,
                };
                let mut raw = Vec::with_capacity(p.payload.len() + 12);
                p.write_to(&mut raw);
                // A full datagram queue drops the packet, as a congested uplink would.
                let _ = c.send_datagram(medsfu_quic::flow::frame(0, &raw));
            }
        }
    }
}

/// Vehicle mode: V vehicles over QUIC, each in its own room with its own viewer tokens.
async fn vehicles(a: &Args) -> Result<Vec<(String, Publisher, Vec<String>)>> {
    let dir = a
        .data_dir
        .as_ref()
        .context("vehicle mode needs --data-dir")?;
    let pki = dir.join("pki");
    let read = |f: &str| {
        std::fs::read_to_string(pki.join(f)).with_context(|| format!("{}/{f}", pki.display()))
    };
    let ca_pem = read("ca.pem")?;
    let serial_base = 9_000_000 + u64::from(std::process::id() % 1000) * 1000;
    let mut ca = medsfu_quic::pki::DevCa::load(&ca_pem, &read("ca.key")?, serial_base)?;
    let secret = std::fs::read(dir.join("token.secret")).context("token.secret")?;
    let key = medsfu_api::TokenKey::new(secret.trim_ascii());
    let now = std::time::SystemTime::now();
    let mut out = Vec::new();
    for v in 0..a.vehicles {
        let room = format!("{}-{v}", a.room);
        let t = time::OffsetDateTime::now_utc();
        let dev = ca.issue_device(
            &format!("load-vehicle-{v}"),
            t - time::Duration::minutes(5),
            t + time::Duration::hours(1),
        )?;
        let ep = medsfu_quic::client::endpoint(
            "127.0.0.1:0".parse()?,
            &ca_pem,
            &dev.cert_pem,
            &dev.key_pem,
        )?;
        let flows = vec![medsfu_quic::protocol::FlowInfo {
            flow: 0,
            source: "roof_camera".into(),
            codec: "video/H265".into(),
        }];
        let c = medsfu_quic::client::connect(&ep, a.quic, "localhost", Some(&room), flows)
            .await
            .context("vehicle connect")?;
        let tokens = (0..a.subscribers)
            .map(|j| {
                key.issue(
                    &room,
                    &format!("viewer-{j}"),
                    medsfu_core::Role::Consultant,
                    now,
                    Duration::from_secs(3600),
                )
            })
            .collect();
        out.push((
            room,
            Publisher::Quic {
                conn: c.conn,
                _control: c.control,
            },
            tokens,
        ));
    }
    Ok(out)
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = Args::parse();
    let rooms = if a.vehicles > 0 {
        vehicles(&a).await?
    } else {
        anyhow::ensure!(
            !a.subscriber_token.is_empty(),
            "give at least one --subscriber-token"
        );
        let token = a
            .publisher_token
            .as_deref()
            .context("give --publisher-token (or --vehicles)")?;
        let mut publisher = whip(&a.base, &a.room, token, CodecSpec::h265())
            .await
            .context("WHIP publish")?;
        anyhow::ensure!(
            publisher.connected().await == State::Connected,
            "publisher did not connect"
        );
        vec![(
            a.room.clone(),
            Publisher::Whip(publisher),
            a.subscriber_token.clone(),
        )]
    };

    // Synthetic H.265: every packet is a complete IDR-type NAL unit carrying its send time,
    // so any subscriber can start at any packet and measure latency.
    let start = Instant::now();
    // Publishers run until the measuring window has ended, however long the subscribers
    // took to join (50 of them take seconds): a fixed duration ended the stream mid-window.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut senders = Vec::new();
    let mut targets = Vec::new();
    for (room, publisher, tokens) in rooms {
        let payload = publisher.payload_limit();
        let pps = (a.kbps as usize * 1000 / 8 / payload).max(1);
        let per_frame = (pps / FPS as usize).max(1);
        let stop = stop.clone();
        senders.push(tokio::spawn(async move {
            let mut seq = 0u16;
            let mut frame = 0u32;
            let mut sent = 0u64;
            let mut tick = tokio::time::interval(Duration::from_secs(1) / FPS);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tick.tick().await;
                for i in 0..per_frame {
                    let mut p = vec![0u8; payload];
                    p[0] = 19 << 1;
                    p[1] = 1;
                    let ns = start.elapsed().as_nanos() as u64;
                    p[2..10].copy_from_slice(&ns.to_be_bytes());
                    publisher.send(
                        seq,
                        frame * (90_000 / FPS),
                        i + 1 == per_frame,
                        Bytes::from(p),
                    );
                    seq = seq.wrapping_add(1);
                    sent += 1;
                }
                frame += 1;
            }
            (publisher, sent)
        }));
        targets.push((room, tokens));
    }

    let mut subs = Vec::new();
    for (room, tokens) in &targets {
        for i in 0..a.subscribers {
            let token = &tokens[i % tokens.len()];
            let mut s = loop {
                match whep(&a.base, room, token, &[CodecSpec::h265()]).await {
                    Ok(s) => break s,
                    Err(medsfu_client::ClientError::Refused { status: 404, .. })
                        if start.elapsed() < Duration::from_secs(10) =>
                    {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(e) => return Err(e).context("WHEP subscribe"),
                }
            };
            anyhow::ensure!(
                s.connected().await == State::Connected,
                "subscriber {i} did not connect"
            );
            subs.push(s);
        }
    }
    // Let every subscriber settle, then measure a window.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for s in &mut subs {
        while s.received.try_recv().is_ok() {}
    }
    let latency0 = forward_latency(&a.base).await;
    let cpu0 = a.pid.and_then(cpu_seconds);
    let window = Instant::now();
    let mut handles = Vec::new();
    for mut s in subs {
        let until = window + Duration::from_secs(a.seconds);
        handles.push(tokio::spawn(async move {
            let (mut n, mut lost, mut lat) = (0u64, 0u64, Vec::new());
            let mut last: Option<u16> = None;
            while let Ok(Some(r)) = tokio::time::timeout_at(until.into(), s.received.recv()).await {
                n += 1;
                let seq = r.packet.header.sequence_number;
                if let Some(l) = last {
                    let d = seq.wrapping_sub(l);
                    if d > 1 && d < 0x8000 {
                        lost += u64::from(d - 1);
                    }
                }
                last = Some(seq);
                if let Some(b) = r.packet.payload.get(2..10) {
                    let mut ns = [0u8; 8];
                    ns.copy_from_slice(b);
                    let sent = start + Duration::from_nanos(u64::from_be_bytes(ns));
                    lat.push(r.at.saturating_duration_since(sent).as_micros() as u64);
                }
            }
            (n, lost, lat, s)
        }));
    }
    let mut received = 0;
    let mut lost = 0;
    let mut lat = Vec::new();
    // A subscriber that receives nothing shows no sequence gaps: count packets per
    // subscriber, so a starved one shows as a low minimum instead of hiding in the total.
    let mut per_subscriber = Vec::new();
    for h in handles {
        let (n, l, mut v, _s) = h.await?;
        received += n;
        lost += l;
        per_subscriber.push(n);
        lat.append(&mut v);
    }
    per_subscriber.sort_unstable();
    let elapsed = window.elapsed().as_secs_f64();
    let cpu1 = a.pid.and_then(cpu_seconds);
    let latency1 = forward_latency(&a.base).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut sent = 0;
    for h in senders {
        sent += h.await?.1;
    }
    lat.sort_unstable();
    let cpu_us_per_packet = match (cpu0, cpu1) {
        (Some(c0), Some(c1)) if received > 0 => Some((c1 - c0) * 1e6 / received as f64),
        _ => None,
    };
    let report = json!({
        "vehicles": a.vehicles,
        "subscribers_per_publisher": a.subscribers,
        "kbps": a.kbps,
        "window_s": elapsed,
        "published_packets": sent,
        "received_packets": received,
        "received_packets_per_s": received as f64 / elapsed,
        "lost_packets": lost,
        "received_per_subscriber": {
            "min": per_subscriber.first().copied().unwrap_or(0),
            "max": per_subscriber.last().copied().unwrap_or(0),
            "silent": per_subscriber.iter().filter(|&&n| n == 0).count(),
        },
        "loss_ratio": if received + lost > 0 { lost as f64 / (received + lost) as f64 } else { 0.0 },
        "latency_us": {
            "p50": percentile(&lat, 0.50), "p90": percentile(&lat, 0.90),
            "p99": percentile(&lat, 0.99), "max": lat.last().copied().unwrap_or(0),
        },
        "server_cpu_us_per_forwarded_packet": cpu_us_per_packet,
        // Above 100: the server used more than one core (its media workers run in parallel).
        "server_cpu_percent": match (cpu0, cpu1) {
            (Some(c0), Some(c1)) => Some((c1 - c0) * 100.0 / elapsed),
            _ => None,
        },
        "sfu_added_latency": added_latency(latency0, latency1),
        "send_probe": probe_send(a.subscribers).await?,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
