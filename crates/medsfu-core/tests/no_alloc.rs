//! Proves that forwarding a packet allocates nothing in steady state.
#![allow(unsafe_code)] // a counting global allocator needs `unsafe impl GlobalAlloc`
#![allow(clippy::disallowed_methods)] // the virtual clock needs an arbitrary origin

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use medsfu_core::{Codec, CoreConfig, Output, Role, RtpHeader, RtpPacket, Sfu, TrackSource};

struct Counting;
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: delegates every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn forwarding_to_a_hundred_subscribers_allocates_nothing() {
    let t0 = Instant::now();
    let mut sfu = Sfu::new(CoreConfig::default());
    let publisher = sfu.join("room", "amb", Role::Vehicle, false, t0);
    let track = sfu
        .publish(publisher, TrackSource::RoofCamera, Codec::H265, t0)
        .expect("vehicle publishes its camera");
    for i in 0..100u32 {
        let p = sfu.join("room", &format!("c{i}"), Role::Consultant, true, t0);
        let _ = p;
    }
    let downs: Vec<_> = std::iter::from_fn(|| sfu.poll_output())
        .filter_map(|o| match o {
            Output::SubscriptionAdded { down, .. } => Some(down),
            _ => None,
        })
        .collect();
    assert_eq!(downs.len(), 100);
    for (i, d) in downs.iter().enumerate() {
        sfu.bind_down_track(*d, 1000 + i as u32, 96, t0)
            .expect("bind");
    }
    // One payload buffer (an H.265 IDR slice NAL), shared by every packet below.
    let mut body = vec![0u8; 1200];
    body[0] = 19 << 1;
    body[1] = 1;
    let idr = Bytes::from(body);
    let packet = |seq: u16| RtpPacket {
        header: RtpHeader {
            payload_type: 96,
            marker: false,
            sequence_number: seq,
            timestamp: u32::from(seq) * 3000,
            ssrc: 42,
        },
        payload: idr.clone(),
    };
    // Warm-up: anchors every down track and grows the output queue once.
    let mut now = t0;
    for seq in 0..2000u16 {
        now += Duration::from_micros(300);
        sfu.handle_rtp(track, packet(seq), now)
            .expect("known track");
        while let Some(o) = sfu.poll_output() {
            drop(o);
        }
    }
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    let mut forwarded = 0u64;
    for seq in 2000..4000u16 {
        now += Duration::from_micros(300);
        sfu.handle_rtp(track, packet(seq), now)
            .expect("known track");
        while let Some(o) = sfu.poll_output() {
            if matches!(o, Output::Rtp(_)) {
                forwarded += 1;
            }
        }
    }
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
    assert_eq!(forwarded, 2000 * 100);
    assert_eq!(
        allocations, 0,
        "allocations while forwarding {forwarded} packets"
    );
}
