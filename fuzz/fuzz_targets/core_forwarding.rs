//! The room core's per-packet path and feedback handling on adversarial packets.
#![no_main]
use std::time::{Duration, Instant};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use medsfu_core::{Codec, CoreConfig, Output, Role, RtpHeader, RtpPacket, Sfu, TrackSource};

fuzz_target!(|data: &[u8]| {
    let t0 = Instant::now();
    let mut sfu = Sfu::new(CoreConfig::default());
    let p = sfu.join("f", "pub", Role::Team, false, t0);
    let Ok(track) = sfu.publish(p, TrackSource::Camera, Codec::Vp8, t0) else { return };
    let _s = sfu.join("f", "sub", Role::Lead, true, t0);
    let downs: Vec<_> = std::iter::from_fn(|| sfu.poll_output())
        .filter_map(|o| match o {
            Output::SubscriptionAdded { down, .. } => Some(down),
            _ => None,
        })
        .collect();
    for d in &downs {
        let _ = sfu.bind_down_track(*d, 1, 96, t0);
    }
    let mut now = t0;
    for chunk in data.chunks(12) {
        if chunk.len() < 12 {
            break;
        }
        now += Duration::from_millis(u64::from(chunk[11] % 50));
        let header = RtpHeader {
            payload_type: chunk[0] & 0x7f,
            marker: chunk[0] & 0x80 != 0,
            sequence_number: u16::from_be_bytes([chunk[1], chunk[2]]),
            timestamp: u32::from_be_bytes([chunk[3], chunk[4], chunk[5], chunk[6]]),
            ssrc: u32::from(chunk[7] % 3),
        };
        match chunk[8] % 4 {
            0 | 1 => {
                let payload = Bytes::copy_from_slice(&chunk[9..]);
                let _ = sfu.handle_rtp(track, RtpPacket { header, payload }, now);
            }
            2 => {
                for d in &downs {
                    let _ = sfu.handle_nack(*d, &[header.sequence_number, header.sequence_number.wrapping_add(3)], now);
                }
            }
            _ => sfu.handle_timeout(now),
        }
        while sfu.poll_output().is_some() {}
    }
});
