//! Whole rooms on a virtual clock: a vehicle camera at 30 fps, subscribers joining late,
//! lossy downlinks repaired by NACK, a publisher restart; every subscriber must see a
//! decodable, continuous stream.
#![allow(clippy::disallowed_methods)] // the virtual clock needs an arbitrary origin

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use medsfu_core::{
    Codec, CoreConfig, DownTrackId, Output, ParticipantId, Role, RtpHeader, RtpPacket, Sfu,
    TrackSource,
};

/// What one subscriber's decoder would get.
#[derive(Default)]
struct Viewer {
    down: Option<DownTrackId>,
    /// Received payload markers by subscriber sequence number.
    got: BTreeMap<u16, (bool, Bytes)>,
    first_keyframe: Option<bool>,
    retransmissions: usize,
}

/// A deterministic "lossy link": drops packet `i` when the hash says so.
fn lost(i: u64, percent: u64) -> bool {
    let mut z = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z ^= z >> 29;
    z % 100 < percent
}

fn idr() -> Bytes {
    Bytes::from_static(&[19 << 1, 1, 0xAA, 0xBB])
}
fn trail() -> Bytes {
    Bytes::from_static(&[1 << 1, 1, 0xCC, 0xDD])
}

#[test]
fn a_room_with_late_joiners_loss_and_a_restart() {
    let t0 = Instant::now();
    let mut sfu = Sfu::new(CoreConfig::default());
    let vehicle = sfu.join("call-42", "amb-42", Role::Vehicle, false, t0);
    let track = sfu
        .publish(vehicle, TrackSource::RoofCamera, Codec::H265, t0)
        .expect("camera");

    let mut viewers: HashMap<ParticipantId, Viewer> = HashMap::new();
    let mut plis = 0;
    let mut upstream_nacks = 0;
    let mut seq: u16 = 60_000; // wraps during the run
    let mut ssrc = 0xCAFE;
    let mut pending_keyframe = false;
    let joins = [
        (0u64, "lead", Role::Lead),
        (1_000, "cardio", Role::Consultant),
        (2_500, "disp", Role::Dispatcher),
    ];
    let mut now = t0;
    // 6 s at 30 fps, 3 packets a frame, keyframe every 2 s or on request.
    for frame in 0..180u64 {
        now = t0 + Duration::from_millis(frame * 33);
        for (at, who, role) in joins {
            if frame == at / 33 {
                let p = sfu.join("call-42", who, role, true, now);
                viewers.insert(p, Viewer::default());
            }
        }
        if frame == 120 {
            // The vehicle's encoder restarts: new SSRC, new numbering.
            ssrc = 0xBEEF;
            seq = 7;
        }
        let key = frame % 60 == 0 || pending_keyframe;
        pending_keyframe = false;
        for k in 0..3u16 {
            let payload = if key && k == 0 { idr() } else { trail() };
            let pkt = RtpPacket {
                header: RtpHeader {
                    payload_type: 96,
                    marker: k == 2,
                    sequence_number: seq,
                    timestamp: (frame as u32) * 3000,
                    ssrc,
                },
                payload,
            };
            seq = seq.wrapping_add(1);
            sfu.handle_rtp(track, pkt, now).expect("track");
        }
        sfu.handle_timeout(now);
        let mut nacks: Vec<(DownTrackId, u16)> = Vec::new();
        while let Some(o) = sfu.poll_output() {
            match o {
                Output::SubscriptionAdded {
                    down, subscriber, ..
                } => {
                    let v = viewers.get_mut(&subscriber).expect("viewer");
                    v.down = Some(down);
                    sfu.bind_down_track(down, subscriber.0 as u32, 100, now)
                        .expect("bind");
                }
                Output::RequestKeyframe { .. } => {
                    plis += 1;
                    pending_keyframe = true;
                }
                Output::Nack { .. } => upstream_nacks += 1,
                Output::Rtp(r) => {
                    let v = viewers.get_mut(&r.subscriber).expect("viewer");
                    let n = r.header.sequence_number;
                    // The consultant's link loses 10% of first transmissions.
                    let identity_is_cardio =
                        sfu.participant(r.subscriber).map(|p| p.identity.as_str())
                            == Some("cardio");
                    if identity_is_cardio && !r.retransmission && lost(u64::from(n) + frame, 10) {
                        nacks.push((r.down, n));
                        continue;
                    }
                    if v.first_keyframe.is_none() {
                        v.first_keyframe = Some(Codec::H265.is_keyframe_start(&r.payload));
                    }
                    v.retransmissions += usize::from(r.retransmission);
                    v.got.insert(n, (r.header.marker, r.payload));
                }
                _ => {}
            }
        }
        // The subscriber NACKs what it lost, one frame later.
        for (down, n) in nacks {
            sfu.handle_nack(down, &[n], now).expect("down track");
        }
        while let Some(o) = sfu.poll_output() {
            if let Output::Rtp(r) = o {
                let v = viewers.get_mut(&r.subscriber).expect("viewer");
                v.retransmissions += 1;
                v.got
                    .insert(r.header.sequence_number, (r.header.marker, r.payload));
            }
        }
    }
    let _ = now;
    assert_eq!(viewers.len(), 3);
    for (p, v) in &viewers {
        let who = sfu
            .participant(*p)
            .map(|p| p.identity.clone())
            .unwrap_or_default();
        assert_eq!(v.first_keyframe, Some(true), "{who} starts at a keyframe");
        // Continuous numbering (allowing for the u16 wrap): no holes after NACK repair,
        // across the publisher restart too.
        let mut seqs: Vec<u16> = v.got.keys().copied().collect();
        if seqs.last().copied().unwrap_or(0) - seqs.first().copied().unwrap_or(0) > 30_000 {
            // Wrapped: order by distance from the first packet received.
            let first = seqs
                .iter()
                .copied()
                .find(|s| *s > 30_000)
                .unwrap_or(seqs[0]);
            seqs.sort_by_key(|s| s.wrapping_sub(first));
        }
        for w in seqs.windows(2) {
            assert_eq!(w[1], w[0].wrapping_add(1), "{who}: hole after {}", w[0]);
        }
        assert!(v.got.len() > 100, "{who} got {} packets", v.got.len());
    }
    let cardio = viewers
        .values()
        .find(|v| v.retransmissions > 0)
        .expect("the lossy link was repaired by retransmissions");
    assert!(cardio.retransmissions >= 10);
    assert_eq!(
        upstream_nacks, 0,
        "everything lost downstream was still in the cache"
    );
    assert!(plis <= 6, "keyframe requests stay few: {plis}");
}
