//! The room core's forwarding decision: one packet in, N rewritten packets out.
#![allow(missing_docs, clippy::disallowed_methods)] // a virtual clock needs an origin

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use medsfu_core::{Codec, CoreConfig, Output, Role, RtpHeader, RtpPacket, Sfu, TrackSource};

fn room(subscribers: usize) -> (Sfu, medsfu_core::TrackId) {
    let t0 = Instant::now();
    let mut sfu = Sfu::new(CoreConfig::default());
    let p = sfu.join("bench", "amb", Role::Vehicle, false, t0);
    let track = sfu
        .publish(p, TrackSource::RoofCamera, Codec::H265, t0)
        .expect("vehicle publishes");
    for i in 0..subscribers {
        let _ = sfu.join("bench", &format!("c{i}"), Role::Consultant, true, t0);
    }
    let downs: Vec<_> = std::iter::from_fn(|| sfu.poll_output())
        .filter_map(|o| match o {
            Output::SubscriptionAdded { down, .. } => Some(down),
            _ => None,
        })
        .collect();
    for (i, d) in downs.into_iter().enumerate() {
        sfu.bind_down_track(d, i as u32, 96, t0).expect("bind");
    }
    while sfu.poll_output().is_some() {}
    (sfu, track)
}

fn forwarding(c: &mut Criterion) {
    let mut body = vec![0u8; 1200];
    body[0] = 19 << 1; // an IDR slice, so every subscriber starts at once
    body[1] = 1;
    let payload = Bytes::from(body);
    let mut g = c.benchmark_group("forward_one_packet");
    for n in [1usize, 10, 100] {
        let (mut sfu, track) = room(n);
        let mut seq = 0u16;
        let mut now = Instant::now();
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                seq = seq.wrapping_add(1);
                now += Duration::from_micros(100);
                let packet = RtpPacket {
                    header: RtpHeader {
                        payload_type: 96,
                        marker: false,
                        sequence_number: seq,
                        timestamp: u32::from(seq) * 30,
                        ssrc: 7,
                    },
                    payload: payload.clone(),
                };
                sfu.handle_rtp(track, packet, now).expect("known track");
                let mut out = 0;
                while let Some(o) = sfu.poll_output() {
                    out += usize::from(matches!(o, Output::Rtp(_)));
                }
                assert_eq!(out, n);
            })
        });
    }
    g.finish();
}

fn keyframe_detection(c: &mut Criterion) {
    let mut fu = vec![49 << 1, 1, 0x80 | 19];
    fu.resize(1200, 0xAB);
    c.bench_function("h265_is_keyframe_start", |b| {
        b.iter(|| Codec::H265.is_keyframe_start(std::hint::black_box(&fu)))
    });
}

criterion_group!(benches, forwarding, keyframe_detection);
criterion_main!(benches);
