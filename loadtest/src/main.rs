//! Load generator for any WHIP/WHEP server: one publisher of synthetic H.265 at a given
//! bitrate, N subscribers; prints packets, loss, receive-to-send latency percentiles and
//! the server process's CPU time per forwarded packet as JSON.

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
    /// Bearer token of the publisher.
    #[arg(long)]
    publisher_token: String,
    /// Bearer token of the subscribers (one identity per subscriber is not needed by WHEP).
    #[arg(long)]
    subscriber_token: Vec<String>,
    /// Number of subscribers (tokens are reused round-robin).
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
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = Args::parse();
    anyhow::ensure!(
        !a.subscriber_token.is_empty(),
        "give at least one --subscriber-token"
    );
    let mut publisher = whip(&a.base, &a.room, &a.publisher_token, CodecSpec::h265())
        .await
        .context("WHIP publish")?;
    anyhow::ensure!(
        publisher.connected().await == State::Connected,
        "publisher did not connect"
    );

    // Synthetic H.265: every packet is a complete IDR-type NAL unit carrying its send time,
    // so any subscriber can start at any packet and measure latency.
    let start = Instant::now();
    let pps = (a.kbps as usize * 1000 / 8 / PAYLOAD).max(1);
    let per_frame = (pps / FPS as usize).max(1);
    let total = Duration::from_secs(a.seconds + 3);
    let sender = tokio::spawn(async move {
        let mut seq = 0u16;
        let mut frame = 0u32;
        let mut sent = 0u64;
        let mut tick = tokio::time::interval(Duration::from_secs(1) / FPS);
        while start.elapsed() < total {
            tick.tick().await;
            for i in 0..per_frame {
                let mut p = vec![0u8; PAYLOAD];
                p[0] = 19 << 1;
                p[1] = 1;
                let ns = start.elapsed().as_nanos() as u64;
                p[2..10].copy_from_slice(&ns.to_be_bytes());
                publisher.send(medsfu_client::packet(
                    seq,
                    frame * (90_000 / FPS),
                    i + 1 == per_frame,
                    Bytes::from(p),
                ));
                seq = seq.wrapping_add(1);
                sent += 1;
            }
            frame += 1;
        }
        (publisher, sent)
    });

    let mut subs = Vec::new();
    for i in 0..a.subscribers {
        let token = &a.subscriber_token[i % a.subscriber_token.len()];
        let mut s = loop {
            match whep(&a.base, &a.room, token, &[CodecSpec::h265()]).await {
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
    // Let every subscriber settle, then measure a window.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for s in &mut subs {
        while s.received.try_recv().is_ok() {}
    }
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
    for h in handles {
        let (n, l, mut v, _s) = h.await?;
        received += n;
        lost += l;
        lat.append(&mut v);
    }
    let elapsed = window.elapsed().as_secs_f64();
    let cpu1 = a.pid.and_then(cpu_seconds);
    let (_publisher, sent) = sender.await?;
    lat.sort_unstable();
    let cpu_us_per_packet = match (cpu0, cpu1) {
        (Some(c0), Some(c1)) if received > 0 => Some((c1 - c0) * 1e6 / received as f64),
        _ => None,
    };
    let report = json!({
        "subscribers": a.subscribers,
        "kbps": a.kbps,
        "window_s": elapsed,
        "published_packets": sent,
        "received_packets": received,
        "received_packets_per_s": received as f64 / elapsed,
        "lost_packets": lost,
        "loss_ratio": if received + lost > 0 { lost as f64 / (received + lost) as f64 } else { 0.0 },
        "latency_us": {
            "p50": percentile(&lat, 0.50), "p90": percentile(&lat, 0.90),
            "p99": percentile(&lat, 0.99), "max": lat.last().copied().unwrap_or(0),
        },
        "server_cpu_us_per_forwarded_packet": cpu_us_per_packet,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
