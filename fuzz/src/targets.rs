//! The bodies of the fuzz targets, one function per target. cargo-fuzz runs them from
//! `fuzz_targets/`; `crates/medsfu/tests/fuzz_corpora.rs` replays the committed corpora
//! through the same functions as ordinary tests (this file is included there by path, so it
//! names only crates both use).

use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use medsfu_codec::{h265_rtp::Depacketizer, Codec, H264Depacketizer, Vp8Depacketizer};
use medsfu_core::{CoreConfig, Output, Role, RtpHeader, RtpPacket, Sfu, TrackSource};
use medsfu_record::{Fmp4Writer, VideoCodec};
use medsfu_telemetry::frame::{Body, Frame, VehicleStatus};

/// A fuzz target: takes any bytes, panics only on a bug.
pub type Target = fn(&[u8]);

/// Every target by name, for the corpus replay.
pub const ALL: [(&str, Target); 15] = [
    ("access_token", access_token),
    ("control_request", control_request),
    ("core_forwarding", core_forwarding),
    ("recorded_video", recorded_video),
    ("rtp_over_quic", rtp_over_quic),
    ("rtp_payloads", rtp_payloads),
    ("sdp", sdp),
    ("signalling_message", signalling_message),
    ("stun_ufrag", stun_ufrag),
    ("telemetry_frame", telemetry_frame),
    ("journal_recovery", journal_recovery),
    ("ogg_opus", ogg_opus),
    ("recorder", recorder),
    ("vehicle_control", vehicle_control),
    ("hub_sequences", hub_sequences),
];

/// Verification of access tokens presented by clients.
pub fn access_token(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let key = medsfu_api::TokenKey::new(b"fuzzing secret, 32 bytes or more");
        assert!(key.verify(text, SystemTime::UNIX_EPOCH).is_err() || text.contains('.'));
    }
}

/// Control API request bodies and the audit listing's query string.
pub fn control_request(data: &[u8]) {
    // At most every kind accepts the input; none may panic.
    assert!(medsfu_api::control_api::parse_request_bodies(data) <= 6);
}

/// The room core's per-packet path, NACKs and timers on adversarial packets; what a
/// subscriber gets re-sent stays within its retransmission budget.
pub fn core_forwarding(data: &[u8]) {
    let t0 = Instant::now();
    let cfg = CoreConfig::default();
    let (burst, percent) = (cfg.rtx_burst_bytes, u64::from(cfg.rtx_budget_percent));
    let mut sfu = Sfu::new(cfg);
    let p = sfu.join("f", "pub", Role::Team, false, t0);
    let Ok(track) = sfu.publish(p, TrackSource::Camera, Codec::Vp8, t0) else {
        return;
    };
    // The subscriber's session and down tracks; it may leave and join again, which must
    // not buy it a fresh retransmission budget.
    let session = |sfu: &mut Sfu, now: Instant| {
        let s = sfu.join("f", "sub", Role::Lead, true, now);
        let downs: Vec<_> = std::iter::from_fn(|| sfu.poll_output())
            .filter_map(|o| match o {
                Output::SubscriptionAdded { down, .. } => Some(down),
                _ => None,
            })
            .collect();
        for d in &downs {
            let _ = sfu.bind_down_track(*d, 1, 96, now);
        }
        (s, downs)
    };
    let (mut sub, mut downs) = session(&mut sfu, t0);
    let mut now = t0;
    let (mut live, mut resent) = (0u64, 0u64);
    for chunk in data.chunks_exact(12) {
        now += Duration::from_millis(u64::from(chunk[11] % 50));
        let header = RtpHeader {
            payload_type: chunk[0] & 0x7f,
            marker: chunk[0] & 0x80 != 0,
            sequence_number: u16::from_be_bytes([chunk[1], chunk[2]]),
            timestamp: u32::from_be_bytes([chunk[3], chunk[4], chunk[5], chunk[6]]),
            ssrc: u32::from(chunk[7] % 3),
        };
        match chunk[8] % 5 {
            0 | 1 => {
                let payload = Bytes::copy_from_slice(&chunk[9..]);
                let _ = sfu.handle_rtp(track, RtpPacket { header, payload }, now);
            }
            2 => {
                let s = header.sequence_number;
                let lost: Vec<u16> = (0..u16::from(chunk[9]))
                    .map(|i| s.wrapping_add(i))
                    .collect();
                for d in &downs {
                    let _ = sfu.handle_nack(*d, &lost, now);
                }
            }
            3 => sfu.handle_timeout(now),
            _ => {
                let _ = sfu.leave(sub, now);
                (sub, downs) = session(&mut sfu, now);
            }
        }
        while let Some(o) = sfu.poll_output() {
            if let Output::Rtp(r) = o {
                let n = r.payload.len() as u64;
                if r.retransmission {
                    resent += n;
                } else {
                    live += n;
                }
            }
        }
        assert!(
            resent <= burst + live * percent / 100,
            "{resent} re-sent for {live}"
        );
    }
}

/// The recorder's muxer on pictures a publisher made up: parameter sets, slices and VP8
/// key frame headers from arbitrary bytes must give errors or a file, never a panic.
pub fn recorded_video(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let codec = match first % 3 {
        0 => VideoCodec::H265,
        1 => VideoCodec::H264,
        _ => VideoCodec::Vp8,
    };
    let _ = medsfu_record::avc::parse_sps(rest);
    let _ = medsfu_record::hevc::parse_sps(rest);
    // Pictures separated by 0xFE; a picture's first byte says keyframe and time step.
    let mut w = Fmp4Writer::new(Vec::new(), codec, 0);
    let mut pts = 0u64;
    for picture in rest.split(|&b| b == 0xFE) {
        let Some((&head, body)) = picture.split_first() else {
            continue;
        };
        pts = pts.wrapping_add(u64::from(head >> 1) * 1000);
        let _ = w.push(body, pts, head & 1 == 1);
    }
    let _ = w.finish();
}

/// What a vehicle sends: RTP-over-QUIC datagrams (flow id + RTP/RTCP), RTCP feedback, and
/// control-stream JSON. None may panic; a parsed RTP packet re-encodes to a parse.
pub fn rtp_over_quic(data: &[u8]) {
    let d = Bytes::copy_from_slice(data);
    if let Ok(medsfu_quic::flow::FlowPacket::Rtp { packet, .. }) = medsfu_quic::flow::parse(&d) {
        if let Ok(p) = RtpPacket::parse(&packet) {
            let mut out = Vec::new();
            p.write_to(&mut out);
            assert_eq!(
                RtpPacket::parse(&Bytes::from(out)).map(|q| q.header),
                Ok(p.header)
            );
        }
    }
    let _ = medsfu_quic::flow::feedback(data);
    let _ = serde_json::from_slice::<medsfu_quic::protocol::VehicleMessage>(data);
}

/// Payload inspection and H.265, H.264 and VP8 depacketization on arbitrary packets.
pub fn rtp_payloads(data: &[u8]) {
    for c in [Codec::Opus, Codec::H264, Codec::H265, Codec::Vp8] {
        let _ = c.is_keyframe_start(data);
    }
    // The input as a sequence of length-prefixed payloads with marker bits.
    let mut d = Depacketizer::new();
    let mut h264 = H264Depacketizer::new();
    let mut vp8 = Vp8Depacketizer::new();
    let mut rest = data;
    while rest.len() >= 2 {
        let len = usize::from(rest[0]) * 8;
        let marker = rest[1] & 1 == 1;
        let end = (2 + len).min(rest.len());
        let payload = &rest[2..end];
        for out in [
            d.push(payload, marker),
            h264.push(payload, marker),
            vp8.push(payload, marker),
        ]
        .into_iter()
        .flatten()
        .flatten()
        {
            assert!(out.len() <= medsfu_codec::h265_rtp::MAX_ACCESS_UNIT);
        }
        if rest[1] & 2 == 2 {
            d.reset();
            h264.reset();
            vp8.reset();
        }
        rest = &rest[end..];
    }
    let _ = medsfu_codec::h265_rtp::annexb_nal_units(data);
}

/// The SDP reading medsfu does before webrtc-rs sees an offer, and trickle sdpfrags.
pub fn sdp(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(s) = medsfu_media::sdp::offered_sections(text) {
        assert!(s.len() <= medsfu_media::sdp::MAX_OFFER_SECTIONS);
    }
    let fixed = medsfu_media::sdp::accept_bundle_only(text);
    // The fix-up only ever changes a port 0 into 9.
    assert_eq!(fixed.len(), text.len());
    let _ = medsfu_media::sdp::sdpfrag_candidates(text);
    let _ = medsfu_media::sdp::ice_ufrag(text);
}

/// Parsing of signalling messages from clients.
pub fn signalling_message(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = medsfu_api::parse_client_message(text);
    }
}

/// The media port's demultiplexer on arbitrary datagrams.
pub fn stun_ufrag(data: &[u8]) {
    let _ = medsfu_media::demux::classify(data);
    if let Some(u) = medsfu_media::demux::stun_server_ufrag(data) {
        assert!(!u.is_empty() && !u.contains(':'));
    }
}

/// Telemetry frames from vehicles and participants, and WFDB headers.
pub fn telemetry_frame(data: &[u8]) {
    let mut rest = data;
    while let Ok((f, n)) = Frame::decode(rest) {
        // What decodes re-encodes to the same bytes.
        assert_eq!(f.encode().expect("re-encodes"), &rest[..n]);
        let _ = medsfu_telemetry::hub::device_refusal(&f);
        rest = &rest[n..];
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = medsfu_telemetry::wfdb::parse_header(text);
    }
}

/// A fresh directory for one run (in memory where the machine has /dev/shm: fsync is
/// what the journal does most).
fn scratch(tag: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        std::path::PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!(
        "medsfu-fuzz-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A status frame of `source` numbered `sequence`.
fn status(source: u32, sequence: u64, at: i64) -> Vec<u8> {
    Frame {
        source,
        sequence,
        captured_at_us: at,
        body: Body::Status(VehicleStatus::Departed),
    }
    .encode()
    .expect("a status frame encodes")
}

/// Journal recovery from whatever a crash or a damaged disk left: the input is split into
/// segment files. Opening gives an error or a journal that reads back its records, takes
/// a new one, and reopens to the same state.
pub fn journal_recovery(data: &[u8]) {
    use medsfu_telemetry::journal::Journal;
    let dir = scratch("journal");
    std::fs::create_dir_all(&dir).expect("scratch dir");
    for (i, part) in data.split(|&b| b == 0xA5).take(4).enumerate() {
        std::fs::write(dir.join(format!("{i:020}.seg")), part).expect("segment");
    }
    if let Ok((mut j, _)) = Journal::open(&dir, 4096) {
        let before = j.read_all().expect("what was recovered reads back");
        let next = j.highest(7).map_or(0, |h| h.saturating_add(1));
        if next < u64::MAX {
            let _ = j.append(&status(7, next, 0));
            let _ = j.sync();
        }
        let after = j.read_all().expect("reads back");
        assert!(after.len() >= before.len());
        drop(j);
        let (again, _) = Journal::open(&dir, 4096).expect("a recovered journal reopens");
        assert_eq!(again.read_all().expect("reads back"), after);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The voice archive's Ogg/Opus path: packet durations from the TOC, and the writer on
/// arbitrary packets (each too big, empty or odd) giving an error or valid pages.
pub fn ogg_opus(data: &[u8]) {
    use medsfu_record::ogg::{opus_packet_samples, OggOpusWriter};
    let mut w = match OggOpusWriter::new(Vec::new(), 1, 2, 312, 48_000, &[("K", "v")]) {
        Ok(w) => w,
        Err(e) => panic!("the header writes: {e}"),
    };
    for packet in data.split(|&b| b == 0xC3) {
        let samples = opus_packet_samples(packet).unwrap_or(960);
        let _ = w.push(packet, samples);
    }
    if let Ok(file) = w.finish() {
        // Every page is one CRC-checked unit, and granules only grow.
        let pages = ogg_pages(&file);
        assert!(pages.iter().all(|p| p.1), "a page with a wrong CRC");
        assert!(
            pages.windows(2).all(|w| w[0].0 <= w[1].0),
            "granule went back"
        );
    }
}

/// The recorder's whole pipeline (depacketizing, loss handling, size caps, clock gaps,
/// muxing) on packets a publisher made up, for each codec: never a panic, and the voice
/// archive is never longer than the packets' time plus a second.
pub fn recorder(data: &[u8]) {
    use medsfu_media::record::{record_in_memory, RecInput};
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let codec = [Codec::H264, Codec::H265, Codec::Vp8, Codec::Opus][usize::from(first % 4)];
    let t0 = Instant::now();
    let mut ms = 0u64;
    let inputs: Vec<RecInput> = rest
        .split(|&b| b == 0x5A)
        .filter(|p| p.len() >= 8)
        .map(|p| {
            ms += u64::from(p[7] % 100);
            RecInput {
                seq: u16::from_be_bytes([p[0], p[1]]),
                marker: p[2] & 1 == 1,
                timestamp: u32::from_be_bytes([p[3], p[4], p[5], p[6]]),
                payload: Bytes::copy_from_slice(&p[8..]),
                arrived: t0 + Duration::from_millis(ms),
            }
        })
        .collect();
    let n = inputs.len() as u64;
    if let Ok((bytes, _refused)) = record_in_memory(codec, inputs) {
        if codec == Codec::Opus {
            // Samples in the file: each packet holds at most 120 ms (5760 samples).
            let granule = ogg_pages(&bytes).last().map_or(0, |p| p.0);
            let bound = (ms + 1000) * 48 + 5760 * n + 312;
            assert!(granule <= bound, "{granule} samples > {bound}");
        }
    }
}

/// The pages of an Ogg file, walked from its start (a payload may contain `OggS`): each
/// page's granule position (pages where no packet ends, granule -1, are left out) and
/// whether its CRC is right.
fn ogg_pages(file: &[u8]) -> Vec<(u64, bool)> {
    let mut pages = Vec::new();
    let mut at = 0;
    while at + 27 <= file.len() {
        assert_eq!(&file[at..at + 4], b"OggS", "a page starts at {at}");
        let segments = usize::from(file[at + 26]);
        let body: usize = file[at + 27..at + 27 + segments]
            .iter()
            .map(|&l| usize::from(l))
            .sum();
        let end = at + 27 + segments + body;
        let mut page = file[at..end].to_vec();
        let crc = u32::from_le_bytes([page[22], page[23], page[24], page[25]]);
        page[22..26].fill(0);
        let granule = u64::from_le_bytes(file[at + 6..at + 14].try_into().expect("8 bytes"));
        if granule != u64::MAX {
            pages.push((granule, medsfu_record::ogg::ogg_crc(&page) == crc));
        }
        at = end;
    }
    assert_eq!(at, file.len(), "the file ends with a whole page");
    pages
}

/// A vehicle's control stream: JSON lines of at most 64 KiB, split however the network
/// splits them; each line parses to a message or an error, never a panic.
pub fn vehicle_control(data: &[u8]) {
    use medsfu_quic::protocol::{take_line, ServerMessage, VehicleMessage, MAX_LINE};
    let mut buf = BytesMut::new();
    for chunk in data.chunks(97) {
        buf.extend_from_slice(chunk);
        loop {
            match take_line(&mut buf) {
                Ok(Some(line)) => {
                    assert!(line.len() <= MAX_LINE + 97 && !line.contains(&b'\n'));
                    if let Ok(VehicleMessage::CameraState { state, .. }) =
                        serde_json::from_slice::<VehicleMessage>(&line)
                    {
                        let _ = medsfu_core::CameraState::from(state);
                    }
                    let _ = serde_json::from_slice::<ServerMessage>(&line);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}

/// The telemetry hub's sequence handling: batches of frames with chosen sources and
/// sequence numbers (repeats, gaps, going back, reserved sources). Acknowledgements only
/// grow, nothing is stored twice, and a reopened hub has the same history.
pub fn hub_sequences(data: &[u8]) {
    use medsfu_telemetry::hub::Hub;
    let dir = scratch("hub");
    let registry = prometheus::Registry::new();
    let Ok(hub) = Hub::new(&dir, 4096, &registry) else {
        return;
    };
    let mut acked: std::collections::HashMap<u32, u64> = std::collections::HashMap::new();
    for batch in data.split(|&b| b == 0xB7).take(16) {
        let frames: Vec<Vec<u8>> = batch
            .chunks_exact(4)
            .map(|c| {
                let source = u32::from(c[0] % 4) | (u32::from(c[1] & 0x80) << 24);
                let sequence = match c[1] & 0x7F {
                    0x7F => u64::MAX,
                    _ => u64::from(u16::from_be_bytes([c[2], c[3]]) % 64),
                };
                status(source, sequence, i64::from(c[3]))
            })
            .collect();
        let r = hub.append("room", frames);
        for (source, seq) in r.acks {
            let before = acked.insert(source, seq);
            assert!(before.is_none_or(|b| b <= seq), "ack went back");
        }
    }
    let history = |hub: &Hub| -> Vec<(u32, u64)> {
        let mut feed = hub.feed("room").expect("feed");
        let mut all = Vec::new();
        while let Some(items) = feed.history_chunk_blocking().expect("history") {
            all.extend(items.iter().map(|i| (i.source, i.sequence)));
        }
        all
    };
    let first = history(&hub);
    let mut unique = first.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), first.len(), "a frame stored twice");
    drop(hub);
    let hub = Hub::new(&dir, 4096, &prometheus::Registry::new()).expect("reopens");
    assert_eq!(history(&hub), first);
    let _ = std::fs::remove_dir_all(&dir);
}
