//! Telemetry acknowledgement latency with group commit, through the server's hub.
//!
//! A producer offers frames (stamped when generated); a committer takes everything that
//! has arrived, journals it with one fsync (`Hub::append`, as a vehicle's telemetry stream
//! does per read) and "acknowledges" each frame. Printed: frames per second and the
//! acknowledgement latency percentiles, at saturation and at a steady offered rate.
//! Run with `cargo bench -p medsfu-benches --bench journal_ack`.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use medsfu_telemetry::frame::{Body, Frame, Unit, Vital, VitalKind};
use medsfu_telemetry::hub::Hub;

fn frame(sequence: u64) -> Vec<u8> {
    Frame {
        source: 1,
        sequence,
        captured_at_us: 0,
        body: Body::Vital(Vital {
            kind: VitalKind::HeartRate,
            value: 72.0,
            unit: Unit::PerMinute,
            measured_at_us: 0,
        }),
    }
    .encode()
    .expect("encode")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Offers `total` frames at `rate` per second (0: as fast as possible); returns the
/// elapsed time, the acknowledgement latencies and the number of fsyncs.
fn run(hub: &Hub, room: &str, total: u64, rate: u64) -> (Duration, Vec<Duration>, Vec<Duration>) {
    // Bounded like a stream's flow-control window: a full queue holds the producer back.
    let (tx, rx) = mpsc::sync_channel::<(Vec<u8>, Instant)>(4096);
    let started = Instant::now();
    let producer = std::thread::spawn(move || {
        for s in 0..total {
            if rate > 0 {
                let due = started + Duration::from_secs_f64(s as f64 / rate as f64);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            if tx.send((frame(s), Instant::now())).is_err() {
                return;
            }
        }
    });
    let mut latencies = Vec::with_capacity(total as usize);
    // How long each group commit (journal write + fsync) took.
    let mut commits = Vec::new();
    while (latencies.len() as u64) < total {
        let Ok(first) = rx.recv() else { break };
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let stamps: Vec<Instant> = batch.iter().map(|(_, t)| *t).collect();
        let t = Instant::now();
        let r = hub.append(room, batch.into_iter().map(|(b, _)| b).collect());
        assert!(r.error.is_none(), "append: {:?}", r.error);
        let acked = Instant::now();
        commits.push(acked - t);
        latencies.extend(stamps.iter().map(|t| acked - *t));
    }
    let _ = producer.join();
    (started.elapsed(), latencies, commits)
}

fn main() {
    // Beside the build output: a real disk, where fsync costs what it costs.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/bench-journal-ack")
        .join(std::process::id().to_string());
    let hub = Hub::new(&dir, 16 << 20, &prometheus::Registry::new()).expect("hub");
    for (name, total, rate) in [
        ("saturation (queue of 4096)", 300_000u64, 0u64),
        ("offered 50000/s", 150_000, 50_000),
        ("offered 10000/s", 30_000, 10_000),
    ] {
        let room = format!("r{}", total + rate);
        let (elapsed, mut lat, mut commits) = run(&hub, &room, total, rate);
        lat.sort_unstable();
        commits.sort_unstable();
        let syncs = commits.len();
        println!(
            "{name}: {total} frames in {:.2} s = {:.0} frames/s, {syncs} fsyncs \
             (mean batch {:.1}); ack latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; \
             one commit p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            elapsed.as_secs_f64(),
            total as f64 / elapsed.as_secs_f64(),
            total as f64 / syncs.max(1) as f64,
            percentile(&lat, 0.5).as_secs_f64() * 1e3,
            percentile(&lat, 0.99).as_secs_f64() * 1e3,
            lat.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
            percentile(&commits, 0.5).as_secs_f64() * 1e3,
            percentile(&commits, 0.99).as_secs_f64() * 1e3,
            commits.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
