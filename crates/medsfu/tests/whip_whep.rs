//! WHIP and WHEP with a client that is not our page (webrtc-rs), carrying real H.265 from
//! libx265 through the real `medsfu` binary; the subscriber's stream is decoded by ffmpeg.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use medsfu_client::{whip, CodecSpec, State};
use medsfu_codec::h265_rtp::{access_units, annexb_nal_units, payload_access_unit, Depacketizer};
use support::{Server, TempDir, Ws};

/// 90 frames of 640x360 H.265 (a keyframe every 30, parameter sets before each).
fn encode_h265(dir: &TempDir) -> Vec<u8> {
    let path = dir.0.join("src.h265");
    let out = Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=640x360:rate=30",
        ])
        .args(["-frames:v", "90", "-c:v", "libx265", "-preset", "ultrafast"])
        .args([
            "-x265-params",
            "keyint=30:min-keyint=30:bframes=0:repeat-headers=1:log-level=error",
        ])
        .args(["-f", "hevc"])
        .arg(&path)
        .output()
        .expect("ffmpeg (apt install ffmpeg)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(&path).expect("encoded file")
}

fn is_irap(au: &[&[u8]]) -> bool {
    au.iter().any(|n| (16..=23).contains(&((n[0] >> 1) & 0x3F)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h265_flows_from_a_whip_publisher_to_a_whep_subscriber_and_decodes() {
    let dir = TempDir::new("h265");
    let stream = encode_h265(&dir);
    let nals = annexb_nal_units(&stream);
    let aus = access_units(&nals);
    assert_eq!(aus.len(), 90, "one access unit per frame");
    let keyframes: Vec<usize> = (0..aus.len()).filter(|&i| is_irap(&aus[i])).collect();
    assert_eq!(keyframes, vec![0, 30, 60]);

    // Without GOP replay, so that the subscriber's first keyframe must come from a PLI that
    // reaches the publisher (the path a stream with a hole in the cache takes).
    let server = Server::start(&[("MEDSFU_CORE__GOP_REPLAY", "false")]);
    let amb = server.token("amb-7", "ambulance-7", "vehicle");
    let doc = server.token("amb-7", "dr-house", "consultant");

    let mut publisher = whip(&server.http, "amb-7", &amb, CodecSpec::h265())
        .await
        .expect("WHIP");
    assert!(
        publisher.location.starts_with("/whip/amb-7/"),
        "{}",
        publisher.location
    );
    assert_eq!(publisher.connected().await, State::Connected);

    // The "camera": paces access units at 30 fps and, like an encoder, answers a keyframe
    // request by jumping to the next IRAP picture.
    let packets: Vec<Vec<Vec<u8>>> = aus.iter().map(|au| payload_access_unit(au, 1200)).collect();
    let plis = publisher.keyframe_requests.clone();
    let publisher = std::sync::Arc::new(publisher);
    let cam = publisher.clone();
    let camera = tokio::spawn(async move {
        let mut seq: u16 = 1000;
        let mut frame = 0usize;
        let mut seen_plis = 0;
        let mut tick = tokio::time::interval(Duration::from_millis(33));
        for n in 0..240u32 {
            tick.tick().await;
            let requested = *plis.borrow();
            if requested > seen_plis {
                seen_plis = requested;
                frame = keyframes.iter().copied().find(|&k| k >= frame).unwrap_or(0);
            }
            let au = &packets[frame % packets.len()];
            for (i, p) in au.iter().enumerate() {
                cam.send(medsfu_client::packet(
                    seq,
                    n * 3000,
                    i + 1 == au.len(),
                    Bytes::from(p.clone()),
                ));
                seq = seq.wrapping_add(1);
            }
            frame = (frame + 1) % packets.len();
        }
        seen_plis
    });

    // Wait until the track is published (first packet reached the server), then subscribe.
    let mut viewer = support::whep_once_published(&server.http, "amb-7", &doc).await;
    assert_eq!(viewer.connected().await, State::Connected);
    let subscribed = Instant::now();

    let mut depack = Depacketizer::new();
    let mut annexb = Vec::new();
    let mut pictures = 0;
    let mut first_au: Option<Vec<u8>> = None;
    let mut first_at = None;
    let mut last_seq: Option<u16> = None;
    let mut gaps = 0;
    while pictures < 60 {
        let r = tokio::time::timeout(Duration::from_secs(10), viewer.received.recv())
            .await
            .expect("media within 10 s")
            .expect("session open");
        let h = &r.packet.header;
        if let Some(l) = last_seq {
            if h.sequence_number != l.wrapping_add(1) {
                gaps += 1;
            }
        }
        last_seq = Some(h.sequence_number);
        if let Some(au) = depack
            .push(&r.packet.payload, h.marker)
            .expect("valid RFC 7798 payload")
        {
            if first_au.is_none() {
                first_au = Some(au.clone());
                first_at = Some(r.at);
            }
            annexb.extend_from_slice(&au);
            pictures += 1;
        }
    }
    let first = first_au.expect("a picture");
    let first_nals = annexb_nal_units(&first);
    assert!(
        is_irap(&first_nals),
        "the subscriber's first picture is a keyframe"
    );
    assert!(
        first_nals.iter().any(|n| (n[0] >> 1) & 0x3F == 32),
        "with its parameter sets"
    );
    assert_eq!(gaps, 0, "no sequence gaps on loopback");
    let first_ms = first_at
        .expect("time")
        .saturating_duration_since(subscribed)
        .as_millis();
    eprintln!("WHEP: first H.265 picture {first_ms} ms after the connection was up");

    // ffmpeg decodes everything the subscriber received.
    let recv = dir.0.join("recv.h265");
    std::fs::write(&recv, &annexb).expect("write");
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
        .args([
            "-show_entries",
            "stream=codec_name,width,height,nb_read_frames",
            "-of",
            "csv=p=0",
        ])
        .arg(&recv)
        .output()
        .expect("ffprobe");
    let probe = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "ffprobe: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(probe, "hevc,640,360,60", "decoded stream");

    let plis = camera.await.expect("camera task");
    assert!(plis >= 1, "the server asked the publisher for a keyframe");
    // DELETE ends the WHIP session; the viewer's media stops.
    let publisher = std::sync::Arc::try_unwrap(publisher)
        .ok()
        .expect("sole owner");
    assert_eq!(publisher.delete().await.expect("DELETE"), 200);
}

/// Marks every m-section after the first `a=bundle-only` with port 0, as browsers do with
/// `bundlePolicy: "max-bundle"` offers (RFC 8843).
fn bundle_only(sdp: String) -> String {
    let mut out = String::new();
    let mut sections = 0;
    for line in sdp.split_inclusive("\r\n") {
        if let Some(rest) = line.strip_prefix("m=") {
            sections += 1;
            if sections > 1 {
                let mut parts = rest.splitn(3, ' ');
                let (media, _port, tail) = (
                    parts.next().unwrap_or(""),
                    parts.next(),
                    parts.next().unwrap_or(""),
                );
                out.push_str(&format!("m={media} 0 {tail}"));
                out.push_str("a=bundle-only\r\n");
                continue;
            }
        }
        out.push_str(line);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whep_offer_with_bundle_only_sections_and_h265_fmtp_gets_every_track() {
    let server = Server::start(&[]);
    let amb = server.token("amb-8", "ambulance-8", "vehicle");
    let crew = server.token("amb-8", "crew-8", "team");
    let doc = server.token("amb-8", "dr-8", "lead");
    // An H.265 publisher that states profile, tier and level, as hardware encoders do.
    let mut h265 = CodecSpec::h265();
    h265.fmtp = "level-id=93;profile-id=1;tier-flag=0;tx-mode=SRST".into();
    let mut cam = whip(&server.http, "amb-8", &amb, h265)
        .await
        .expect("WHIP camera");
    let mut mic = whip(&server.http, "amb-8", &crew, CodecSpec::opus())
        .await
        .expect("WHIP mic");
    assert_eq!(cam.connected().await, State::Connected);
    assert_eq!(mic.connected().await, State::Connected);
    let idr = Bytes::from_static(&[19 << 1, 1, 0xAF, 0x01, 0x02]);
    let opus = Bytes::from_static(&[0xfc, 0xff, 0xfe]);
    cam.send(medsfu_client::packet(1, 0, true, idr.clone()));
    mic.send(medsfu_client::packet(1, 0, false, opus.clone()));
    // The viewer's offer: H.265 without fmtp, audio in a bundle-only section.
    let mut viewer = loop {
        match medsfu_client::whep_with(
            &server.http,
            "amb-8",
            &doc,
            &[CodecSpec::h265(), CodecSpec::opus()],
            bundle_only,
        )
        .await
        {
            Ok(v) => break v,
            Err(medsfu_client::ClientError::Refused { status: 404, .. }) => {
                cam.send(medsfu_client::packet(1, 0, true, idr.clone()));
                mic.send(medsfu_client::packet(1, 0, false, opus.clone()));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("WHEP: {e}"),
        }
    };
    assert_eq!(viewer.connected().await, State::Connected);
    let (mut video, mut audio) = (false, false);
    let mut seq = 2u16;
    while !(video && audio) {
        cam.send(medsfu_client::packet(
            seq,
            u32::from(seq) * 3000,
            true,
            idr.clone(),
        ));
        mic.send(medsfu_client::packet(
            seq,
            u32::from(seq) * 960,
            false,
            opus.clone(),
        ));
        seq += 1;
        while let Ok(r) = viewer.received.try_recv() {
            video |= r.packet.payload == idr;
            audio |= r.packet.payload == opus;
        }
        assert!(
            seq < 500,
            "video {video}, audio {audio} after {seq} packets"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Issue 16: who published and who watched what, when and from where, is in the audit
    // trail like a signalling join, and so is the end of each session and a refused one.
    assert_eq!(viewer.delete().await.expect("DELETE"), 200);
    let refused = medsfu_client::whep(&server.http, "amb-8", "forged", &[CodecSpec::opus()]).await;
    assert!(matches!(
        refused,
        Err(medsfu_client::ClientError::Refused { status: 401, .. })
    ));
    let db = rusqlite::Connection::open(server.data.0.join("audit.db")).expect("audit db");
    let rows = |action: &str| -> Vec<(String, String, String, String)> {
        let mut q = db
            .prepare("SELECT actor, room, source, detail FROM audit WHERE action = ?1 ORDER BY seq")
            .expect("query");
        q.query_map([action], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .expect("rows")
        .map(Result::unwrap)
        .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while rows("whep_end").is_empty() {
        assert!(Instant::now() < deadline, "no whep_end row");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let published = rows("whip_publish");
    let who: Vec<&str> = published.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(who, ["ambulance-8", "crew-8"], "{published:?}");
    assert!(published[0].3.contains("\"video\"") && published[1].3.contains("\"audio\""));
    let watched = rows("whep_subscribe");
    assert_eq!(watched.len(), 1, "{watched:?}");
    let (actor, room, source, detail) = &watched[0];
    assert_eq!((actor.as_str(), room.as_str()), ("dr-8", "amb-8"));
    assert!(source.contains("from=127.0.0.1"), "{source}");
    let detail: serde_json::Value = serde_json::from_str(detail).expect("json");
    assert_eq!(
        detail["tracks"].as_array().map(Vec::len),
        Some(2),
        "{detail}"
    );
    let ended = rows("whep_end");
    assert_eq!(ended[0].0, "dr-8");
    assert!(
        ended[0].3.contains("\"reason\":\"deleted\""),
        "{:?}",
        ended[0]
    );
    let refusals = rows("refused");
    assert!(
        refusals.iter().any(|r| r.3.contains("/whep/amb-8")),
        "{refusals:?}"
    );
    println!("audit: {published:?}\n{watched:?}\n{ended:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_that_vanishes_is_timed_out_and_subscribers_are_told() {
    let server = Server::start(&[("MEDSFU_CORE__PARTICIPANT_TIMEOUT_MS", "2000")]);
    let amb = server.token("amb-9", "ambulance-9", "vehicle");
    let lead = server.token("amb-9", "dr-lead", "lead");
    let mut ws = Ws::connect(&server).await;
    ws.send(serde_json::json!({ "type": "join", "token": lead }))
        .await;
    ws.recv_type("joined").await;

    let mut publisher = whip(&server.http, "amb-9", &amb, CodecSpec::opus())
        .await
        .expect("WHIP");
    assert_eq!(publisher.connected().await, State::Connected);
    let joined = ws.recv_type("participant_joined").await;
    assert_eq!(joined["identity"], "ambulance-9");
    for i in 0..5u16 {
        publisher.send(medsfu_client::packet(
            i,
            u32::from(i) * 960,
            false,
            Bytes::from_static(&[0xfc, 0xff, 0xfe]),
        ));
    }
    let published = ws.recv_type("track_published").await;
    assert_eq!(published["source"], "cabin_audio");
    let vanished_at = Instant::now();
    publisher.vanish(); // no DELETE, no more ICE consent checks

    let unpublished = ws.recv_type("track_unpublished").await;
    assert_eq!(unpublished["track"], published["track"]);
    let left = ws.recv_type("participant_left").await;
    assert_eq!(left["reason"], "timeout");
    let after = vanished_at.elapsed();
    assert!(
        after >= Duration::from_millis(1500) && after < Duration::from_secs(6),
        "after {after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_that_cannot_be_written_is_reported_and_forwarding_goes_on() {
    let server = Server::start(&[]);
    // Fault: a file stands where the room's recordings directory must be created.
    let recordings = server.data.0.join("recordings");
    std::fs::create_dir_all(&recordings).expect("dir");
    std::fs::write(recordings.join("amb-6"), b"in the way").expect("file");
    let amb = server.token("amb-6", "ambulance-6", "vehicle");
    let lead = server.token("amb-6", "dr-lead", "lead");
    let mut ws = Ws::connect(&server).await;
    ws.send(serde_json::json!({ "type": "join", "token": lead }))
        .await;
    ws.recv_type("joined").await;

    let mut publisher = whip(&server.http, "amb-6", &amb, CodecSpec::opus())
        .await
        .expect("WHIP");
    assert_eq!(publisher.connected().await, State::Connected);
    let mut sent = 0u16;
    let mut send = |n: u16| {
        for _ in 0..n {
            publisher.send(medsfu_client::packet(
                sent,
                u32::from(sent) * 960,
                false,
                Bytes::from_static(&[0xfc, 0xff, 0xfe]),
            ));
            sent += 1;
        }
    };
    send(5);
    // The voice archive starts with the audio track and cannot write: the room is told.
    let failed = ws.recv_type("recording_failed").await;
    let published_track = failed["track"].as_str().expect("track").to_owned();
    assert!(
        failed["message"]
            .as_str()
            .is_some_and(|m| m.contains("recording file")),
        "{failed}"
    );
    assert!(server.metric("medsfu_recording_failures_total").await >= 1.0);
    // Forwarding is untouched: a subscriber still gets the audio.
    let mut viewer =
        support::whep_once_published_with(&server.http, "amb-6", &lead, &[CodecSpec::opus()]).await;
    assert_eq!(viewer.connected().await, State::Connected);
    send(50);
    let got = tokio::time::timeout(Duration::from_secs(10), viewer.received.recv())
        .await
        .expect("audio within 10 s")
        .expect("open");
    assert_eq!(got.packet.payload.as_ref(), &[0xfc, 0xff, 0xfe]);
    assert!(published_track.starts_with('T'));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_stream_leaves_a_valid_recording_and_the_publisher_is_served_on() {
    let dir = TempDir::new("damaged");
    let stream = encode_h265(&dir);
    let nals = annexb_nal_units(&stream);
    let aus = access_units(&nals);
    let packets: Vec<Vec<Vec<u8>>> = aus.iter().map(|au| payload_access_unit(au, 1200)).collect();
    // Faults, by picture number (30 fps, keyframes at 0, 30, 60, 90, 120):
    let truncated = 35; // one packet of a single byte
    let lost = 120; // a keyframe's second packet is never sent
    assert!(
        packets[lost % packets.len()].len() >= 3,
        "a keyframe of several packets"
    );
    let broken_sps = 90; // a keyframe whose SPS is cut after 4 bytes
    let garbage = 110; // a made-up slice NAL unit before the picture's own
    let clock_reset = 100; // the publisher's clock steps back 2 s from here on

    let server = Server::start(&[]);
    let amb = server.token("amb-5", "ambulance-5", "vehicle");
    let mut lead = Ws::connect(&server).await;
    lead.send(
        serde_json::json!({ "type": "join", "token": server.token("amb-5", "dr-lead", "lead") }),
    )
    .await;
    lead.recv_type("joined").await;
    lead.send(serde_json::json!({ "type": "record", "action": "start", "id": 1 }))
        .await;
    assert_eq!(lead.recv_type("record_ok").await["recording"], true);

    let mut publisher = whip(&server.http, "amb-5", &amb, CodecSpec::h265())
        .await
        .expect("WHIP");
    assert_eq!(publisher.connected().await, State::Connected);
    let mut seq: u16 = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(33));
    for n in 0..150usize {
        tick.tick().await;
        let ts = if n >= clock_reset { n - 60 } else { n } as u32 * 3000;
        let mut picture = packets[n % packets.len()].clone();
        if n == truncated {
            picture[0] = vec![0x02];
        }
        if n == broken_sps {
            for p in &mut picture {
                if (p[0] >> 1) & 0x3F == 33 {
                    p.truncate(4);
                }
            }
        }
        if n == garbage {
            // NAL type 1 (a trailing picture's slice) with bytes no encoder made.
            picture.insert(0, [vec![0x02, 0x01], vec![0xA5; 300]].concat());
        }
        for (i, p) in picture.iter().enumerate() {
            if !(n == lost && i == 1) {
                publisher.send(medsfu_client::packet(
                    seq,
                    ts,
                    i + 1 == picture.len(),
                    Bytes::from(p.clone()),
                ));
            }
            seq = seq.wrapping_add(1);
        }
    }
    lead.send(serde_json::json!({ "type": "record", "action": "stop", "id": 2 }))
        .await;
    assert_eq!(lead.recv_type("record_ok").await["recording"], false);
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.metric("medsfu_recording_tracks_active").await > 0.0 {
        assert!(Instant::now() < deadline, "recorder still running");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(*publisher.state.borrow(), State::Connected, "still served");

    // One file: a broken SPS is damage, not a new configuration that would split it.
    let recordings = server.data.0.join("recordings/amb-5");
    let mp4s: Vec<_> = std::fs::read_dir(&recordings)
        .expect("recordings")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "mp4"))
        .collect();
    assert_eq!(mp4s.len(), 1, "{mp4s:?}");
    let (probed, duration) = support::probe(&mp4s[0], "v:0");
    eprintln!("damaged stream recorded: {probed}, {duration:.2} s");
    let f: Vec<&str> = probed.split('|').collect();
    assert_eq!(&f[..3], &["hevc", "640", "360"], "{probed}");
    let frames: u32 = f[3].parse().unwrap_or(0);
    // At most the first GOP is missed (the recorder joins as the track appears), the
    // truncated and the lost picture are left out, the broken keyframe is refused.
    assert!((110..=147).contains(&frames), "{frames} frames");
    // The clock's step back neither squeezes nor stretches the file: 5 s sent.
    assert!((3.9..=5.2).contains(&duration), "{duration} s");
    // The decoder conceals what is missing (it may say so) and reads the file to its end.
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(&mp4s[0])
        .args(["-f", "null", "-"])
        .output()
        .expect("ffmpeg");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The recorder saw each fault: two damaged pictures dropped, one refused.
    let logs = server.logs();
    let field = |name: &str| -> u64 {
        let at = logs.rfind(&format!("{name}=")).expect(name) + name.len() + 1;
        logs[at..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|d| d.parse().ok())
            .unwrap_or(0)
    };
    assert!(logs.contains("video recording finished"), "{logs}");
    assert_eq!((field("damaged"), field("refused")), (2, 1), "{logs}");
    assert!(!logs.contains("panicked"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_separate_recorder_process_records_every_track_over_whep() {
    let dir = TempDir::new("record-process");
    let stream = encode_h265(&dir);
    let aus = access_units(&annexb_nal_units(&stream));
    let packets: Vec<Vec<Vec<u8>>> = aus.iter().map(|au| payload_access_unit(au, 1200)).collect();

    let server = Server::start(&[]);
    let camera = whip(
        &server.http,
        "amb-4",
        &server.token("amb-4", "ambulance-4", "vehicle"),
        CodecSpec::h265(),
    )
    .await
    .expect("WHIP camera");
    let voice = whip(
        &server.http,
        "amb-4",
        &server.token("amb-4", "medic-4", "team"),
        CodecSpec::opus(),
    )
    .await
    .expect("WHIP microphone");
    let (mut camera, mut voice) = (camera, voice);
    assert_eq!(camera.connected().await, State::Connected);
    assert_eq!(voice.connected().await, State::Connected);

    // Media for 6 s; the recorder runs for 4 of them, from a process of its own.
    let out = dir.0.join("elsewhere");
    let mut recorder = None;
    let (mut seq, mut audio_seq) = (0u16, 0u16);
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    for n in 0..300u32 {
        tick.tick().await;
        voice.send(medsfu_client::packet(
            audio_seq,
            n * 960,
            false,
            Bytes::from_static(&[0xf8, 0xff, 0xfe]),
        ));
        audio_seq = audio_seq.wrapping_add(1);
        // 30 pictures a second: on two ticks of three.
        if n % 3 != 2 {
            let picture = n / 3 * 2 + n % 3;
            let au = &packets[picture as usize % packets.len()];
            for (i, p) in au.iter().enumerate() {
                camera.send(medsfu_client::packet(
                    seq,
                    picture * 3000,
                    i + 1 == au.len(),
                    Bytes::from(p.clone()),
                ));
                seq = seq.wrapping_add(1);
            }
        }
        if n == 25 {
            // Both tracks are published by now (half a second of media).
            recorder = Some(
                Command::new(support::bin())
                    .args(["record", "--server", &server.http, "--room", "amb-4"])
                    .args(["--run-for", "4", "--dir"])
                    .arg(&out)
                    .env(
                        "MEDSFU_RECORD_TOKEN",
                        server.token("amb-4", "recorder-7", "recorder"),
                    )
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .expect("medsfu record"),
            );
        }
    }
    let recorder = recorder.expect("started");
    let done = tokio::task::spawn_blocking(move || recorder.wait_with_output())
        .await
        .expect("join")
        .expect("output");
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert!(done.status.success(), "medsfu record: {stderr}");
    let stdout = String::from_utf8_lossy(&done.stdout);
    assert!(stdout.contains("recorded room amb-4"), "{stdout}");

    let room = out.join("amb-4");
    let video = support::find_file(&room, &["-recording-", ".mp4"]);
    let (probed, duration) = support::probe(&video, "v:0");
    eprintln!("separate recorder: {probed}, {duration:.2} s");
    let f: Vec<&str> = probed.split('|').collect();
    assert_eq!(&f[..3], &["hevc", "640", "360"], "{probed}");
    assert!(f[3].parse::<u32>().unwrap_or(0) >= 60, "{probed}");
    // 4 s, and up to a GOP (1 s) before: the server replays the cached GOP on subscribe.
    assert!((2.5..=5.2).contains(&duration), "{duration} s of 4");
    assert_eq!(support::decode_errors(&video), "");
    let audio = support::find_file(&room, &["-recording-", ".ogg"]);
    let (probed, duration) = support::probe(&audio, "a:0");
    assert!(probed.starts_with("opus"), "{probed}");
    assert!((2.5..=4.5).contains(&duration), "{duration} s of 4");
    let meta = |file: &std::path::Path| -> serde_json::Value {
        let text = std::fs::read(file.with_extension("json")).expect("metadata");
        serde_json::from_slice(&text).expect("JSON")
    };
    assert_eq!(
        (
            meta(&video)["publisher"].clone(),
            meta(&video)["role"].clone()
        ),
        (
            serde_json::json!("ambulance-4"),
            serde_json::json!("vehicle")
        )
    );
    assert_eq!(meta(&audio)["publisher"], "medic-4");
    assert_eq!(meta(&audio)["room"], "amb-4");
    // The server recorded nothing itself: the voice archive aside, its directory has no
    // on-demand recording.
    let own = server.data.0.join("recordings/amb-4");
    let on_demand = std::fs::read_dir(&own)
        .map(|d| {
            d.filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().contains("-recording-"))
            })
            .count()
        })
        .unwrap_or(0);
    assert_eq!(on_demand, 0);

    // A WHEP query other than one track is refused with a reason.
    let http = reqwest::Client::new();
    let token = server.token("amb-4", "viewer-4", "lead");
    for (query, code) in [("track=X1", "bad_track"), ("tracks=T1", "bad_query")] {
        let r = http
            .post(format!("{}/whep/amb-4?{query}", server.http))
            .bearer_auth(&token)
            .header("content-type", "application/sdp")
            .body("v=0\r\n")
            .send()
            .await
            .expect("HTTP");
        assert_eq!(r.status(), 400, "{query}");
        let body: serde_json::Value =
            serde_json::from_slice(&r.bytes().await.expect("body")).expect("JSON error");
        assert_eq!(body["code"], code, "{query}");
    }
}

/// With two media workers, rooms hosted on different workers each carry their media: a
/// WHIP publisher and a WHEP subscriber per room, every packet arriving in order, through
/// the one media port (the dispatcher hands each datagram to its peer's worker).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_on_two_media_workers_each_carry_their_media() {
    let server = Server::start(&[("MEDSFU_WEBRTC__WORKERS", "2")]);
    assert_eq!(server.metric("medsfu_media_workers").await, 2.0);
    // Two rooms that hash to different workers.
    let names: Vec<String> = (0..).map(|i| format!("amb-{i}")).take(20).collect();
    let a = names
        .iter()
        .find(|r| medsfu_media::worker_of_room(r, 2) == 0)
        .expect("a room on worker 0");
    let b = names
        .iter()
        .find(|r| medsfu_media::worker_of_room(r, 2) == 1)
        .expect("a room on worker 1");
    let mut feeds = Vec::new();
    let mut viewers = Vec::new();
    for room in [a, b] {
        let amb = server.token(room, "ambulance", "vehicle");
        let doc = server.token(room, "dr-house", "consultant");
        let mut publisher = whip(&server.http, room, &amb, CodecSpec::h265())
            .await
            .expect("WHIP");
        assert_eq!(publisher.connected().await, State::Connected);
        // IDR slices (any packet starts a picture), numbered in their first bytes.
        feeds.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            for n in 0..3000u32 {
                tick.tick().await;
                let mut payload = vec![0u8; 800];
                payload[0] = 19 << 1;
                payload[1] = 1;
                payload[2..6].copy_from_slice(&n.to_be_bytes());
                publisher.send(medsfu_client::packet(
                    n as u16,
                    n * 900,
                    true,
                    Bytes::from(payload),
                ));
            }
        }));
        let viewer = support::whep_once_published(&server.http, room, &doc).await;
        viewers.push(viewer);
    }
    for (viewer, room) in viewers.iter_mut().zip([a, b]) {
        assert_eq!(viewer.connected().await, State::Connected, "{room}");
        let mut last: Option<u32> = None;
        let mut got = 0;
        while got < 100 {
            let r = tokio::time::timeout(Duration::from_secs(10), viewer.received.recv())
                .await
                .unwrap_or_else(|_| panic!("media of {room} within 10 s"))
                .expect("session open");
            let p = &r.packet.payload;
            let n = u32::from_be_bytes([p[2], p[3], p[4], p[5]]);
            if let Some(l) = last {
                assert!(n > l, "{room}: packet {n} after {l}");
            }
            last = Some(n);
            got += 1;
        }
    }
    for w in ["0", "1"] {
        let rooms = server
            .metric(&format!("medsfu_media_worker_rooms{{worker=\"{w}\"}}"))
            .await;
        assert_eq!(rooms, 1.0, "worker {w} hosts one room");
    }
    assert_eq!(server.metric("medsfu_rooms").await, 2.0, "rooms of both");
    assert_eq!(
        server.metric("medsfu_media_dispatch_dropped_total").await,
        0.0
    );
    for f in feeds {
        f.abort();
    }
}
