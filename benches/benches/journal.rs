//! The telemetry journal: frames appended with a durable acknowledgement (group commit).
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use medsfu_telemetry::frame::{Body, Frame, Lead, Waveform};
use medsfu_telemetry::journal::Journal;

fn journal(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("medsfu-bench-journal-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (mut j, _) = Journal::open(&dir, 64 << 20).expect("journal");
    // A 2-lead ECG block of 100 ms at 360 Hz, as the vehicle sends.
    let mut seq = 0u64;
    let frame = |seq: u64| {
        Frame {
            source: 1,
            sequence: seq,
            captured_at_us: seq as i64 * 100_000,
            body: Body::Waveform(Waveform {
                sample_rate_mhz: 360_000,
                first_sample: seq * 36,
                units_per_mv: 200.0,
                baseline: 1024,
                leads: vec![Lead::MLII, Lead::V(5)],
                samples: vec![1000; 72],
            }),
        }
        .encode()
        .expect("a valid frame")
    };
    let mut g = c.benchmark_group("journal_append_then_fsync");
    for batch in [1u64, 10, 100] {
        g.throughput(Throughput::Elements(batch));
        g.bench_with_input(BenchmarkId::from_parameter(batch), &batch, |b, &n| {
            b.iter(|| {
                for _ in 0..n {
                    j.append(&frame(seq)).expect("append");
                    seq += 1;
                }
                j.sync().expect("fsync")
            })
        });
    }
    g.finish();
    drop(j);
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, journal);
criterion_main!(benches);
