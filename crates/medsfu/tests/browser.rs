//! End-to-end: real headless Chromium pages (fake camera and microphone) in a room of the
//! real `medsfu` binary.

mod support;

use std::time::Duration;

use support::{decode_errors, probe, Browser, Page, Server, Ws};

fn page_url(server: &Server, room: &str, token: &str, publish: &str) -> String {
    format!(
        "{}/?room={room}&token={token}&publish={publish}",
        server.http
    )
}

/// The frames decoded per received video track, keyed by track id.
const STATS: &str = "window.medsfu.videoStats()";

async fn decoded_from(b: &mut Browser, page: &Page, identity: &str, at_least: u64) -> String {
    let cond = format!(
        "(async () => {{ const s = await {STATS}; for (const [t, v] of Object.entries(s)) {{
            const info = window.medsfu.tracks.get(t);
            if (info && info.identity === '{identity}' && v.framesDecoded >= {at_least}) return t; }} return null; }})()"
    );
    let t = b
        .wait_for(
            page,
            &cond,
            Duration::from_secs(30),
            &format!("{at_least} frames of {identity}"),
        )
        .await;
    t.as_str().expect("track id").to_owned()
}

/// The tests whose pages send cameras take turns: two at once starve each other on a
/// 2-core machine, and the late joiner's timing check becomes meaningless.
static CAMERAS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_see_each_other_late_joiner_is_fast_and_leaving_is_seen() {
    let _turn = CAMERAS.lock().await;
    let server = Server::start(&[]);
    let mut b = Browser::launch().await;
    let alice = server.token("er", "alice", "team");
    let bob = server.token("er", "bob", "team");
    let carol = server.token("er", "carol", "consultant");

    let pa = b
        .open(&page_url(&server, "er", &alice, "camera,microphone"))
        .await;
    let pb = b
        .open(&page_url(&server, "er", &bob, "camera,microphone"))
        .await;

    // Each decodes the other's camera.
    let a_track = decoded_from(&mut b, &pb, "alice", 30).await;
    let b_track = decoded_from(&mut b, &pa, "bob", 30).await;
    assert_ne!(a_track, b_track);

    // Audio arrives too: each page has an audio element for the other's microphone.
    b.wait_for(
        &pa,
        "document.querySelectorAll('audio').length >= 1",
        Duration::from_secs(10),
        "audio element",
    )
    .await;

    // A late joiner decodes its first frame of each camera within 500 ms of subscribing.
    let pc = b.open(&page_url(&server, "er", &carol, "")).await;
    let t1 = decoded_from(&mut b, &pc, "alice", 1).await;
    let t2 = decoded_from(&mut b, &pc, "bob", 1).await;
    for t in [&t1, &t2] {
        let delay = b
            .wait_for(
                &pc,
                &format!(
                    "window.medsfu.firstFrameAt.has('{t}') && (window.medsfu.firstFrameAt.get('{t}') - window.medsfu.subscribedAt.get('{t}'))"
                ),
                Duration::from_secs(10),
                "first-frame timestamp",
            )
            .await;
        let ms = delay.as_f64().expect("a number");
        eprintln!("late joiner: first frame of {t} {ms:.0} ms after subscribing");
        assert!(
            ms < 500.0,
            "first frame of {t} took {ms:.0} ms after subscribing"
        );
    }

    // Chromium's fake microphones beep: someone becomes the active speaker.
    let speaker = b
        .wait_for(
            &pc,
            "window.medsfu.speakers.length > 0 && window.medsfu.participants.get(window.medsfu.speakers[0]).identity",
            Duration::from_secs(10),
            "an active speaker",
        )
        .await;
    assert!(speaker == "alice" || speaker == "bob", "speaker {speaker}");

    // For people: what the late joiner sees (target/screenshots/late-joiner.png).
    let shot =
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("../screenshots/late-joiner.png");
    b.screenshot(&pc, &shot).await;

    // Participants see each other with their roles.
    let roles = b
        .wait_for(
            &pc,
            "document.querySelectorAll('#participants li').length === 3 && [...document.querySelectorAll('#participants .role')].map(e => e.textContent).sort().join(',')",
            Duration::from_secs(5),
            "participant list",
        )
        .await;
    assert_eq!(roles, "consultant,team,team");

    // Alice leaves; Bob and Carol see her go and her camera tile disappear.
    b.eval(&pa, "document.getElementById('leave').click()")
        .await;
    for p in [&pb, &pc] {
        b.wait_for(
            p,
            &format!("![...window.medsfu.participants.values()].some(p => p.identity === 'alice') && !document.querySelector('[data-track=\"{a_track}\"]')"),
            Duration::from_secs(10),
            "alice gone",
        )
        .await;
    }
    // Bob's camera keeps flowing to Carol after Alice left.
    let before = b
        .eval(
            &pc,
            &format!("(async () => (await {STATS})['{t2}'].framesDecoded)()"),
        )
        .await
        .as_u64()
        .expect("frames");
    b.wait_for(
        &pc,
        &format!("(async () => (await {STATS})['{t2}'].framesDecoded > {before} + 10)()"),
        Duration::from_secs(10),
        "bob's video continuing",
    )
    .await;
    let logs = server.logs();
    assert!(!logs.contains("panicked"), "server log: {logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatcher_page_cannot_publish_a_camera() {
    let server = Server::start(&[]);
    let mut b = Browser::launch().await;
    let d = server.token("er2", "disp", "dispatcher");
    let p = b.open(&page_url(&server, "er2", &d, "")).await;
    b.wait_for(&p, "window.medsfu.me", Duration::from_secs(10), "joined")
        .await;
    let hidden = b
        .eval(&p, "document.getElementById('publish-cam').hidden")
        .await;
    assert_eq!(hidden, true, "the page offers no camera to a dispatcher");
    // Forcing it anyway is refused by the server with a reason.
    b.eval(
        &p,
        "window.medsfu_publish_forced = true; document.getElementById('publish-cam').click()",
    )
    .await;
    let err = b
        .wait_for(
            &p,
            "window.medsfu.errors.find(e => e.startsWith('publish_forbidden'))",
            Duration::from_secs(10),
            "refusal",
        )
        .await;
    assert!(err.as_str().unwrap_or("").contains("dispatcher"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_cameras_are_recorded_in_the_codec_they_send_vp8_and_h264() {
    let _turn = CAMERAS.lock().await;
    use serde_json::json;
    let server = Server::start(&[]);
    let mut b = Browser::launch().await;
    let mut lead = Ws::connect(&server).await;
    lead.send(json!({ "type": "join", "token": server.token("er", "dr-lead", "lead") }))
        .await;
    lead.recv_type("joined").await;
    let mut pages = Vec::new();
    for (who, codec) in [("amy", "VP8"), ("ben", "H264")] {
        let url = format!(
            "{}&video_codec={codec}",
            page_url(&server, "er", &server.token("er", who, "team"), "camera")
        );
        pages.push(b.open(&url).await);
    }
    let mut sent = std::collections::BTreeMap::new();
    while sent.len() < 2 {
        let t = lead.recv_type("track_published").await;
        sent.insert(
            t["identity"].as_str().unwrap_or_default().to_owned(),
            (
                t["codec"].as_str().unwrap_or_default().to_owned(),
                t["track"].as_str().unwrap_or_default().to_owned(),
            ),
        );
    }
    assert_eq!(
        sent.values().map(|v| v.0.as_str()).collect::<Vec<_>>(),
        ["video/VP8", "video/H264"],
        "the pages send the codec they prefer"
    );

    lead.send(json!({ "type": "record", "action": "start", "id": 1 }))
        .await;
    assert_eq!(lead.recv_type("record_ok").await["recording"], true);
    let started = std::time::Instant::now();
    // A recording window, not a wait for an event.
    tokio::time::sleep(Duration::from_secs(5)).await;
    lead.send(json!({ "type": "record", "action": "stop", "id": 2 }))
        .await;
    assert_eq!(lead.recv_type("record_ok").await["recording"], false);
    let recorded = started.elapsed().as_secs_f64();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while server.metric("medsfu_recording_tracks_active").await > 0.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "recorders still running"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let dir = server.data.0.join("recordings/er");
    for (codec, tag) in [("vp8", "vp08"), ("h264", "avc1")] {
        let files: Vec<_> = std::fs::read_dir(&dir)
            .expect("recordings")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "mp4"))
            .filter(|p| probe(p, "v:0").0.starts_with(codec))
            .collect();
        assert_eq!(files.len(), 1, "one {codec} file in {}", dir.display());
        let (stream, duration) = probe(&files[0], "v:0");
        eprintln!(
            "browser recording: {} -> {stream}, {duration:.2} s for {recorded:.2} s recorded",
            files[0].file_name().unwrap_or_default().to_string_lossy()
        );
        let f: Vec<&str> = stream.split('|').collect();
        let frames: f64 = f[3].parse().unwrap_or(0.0);
        assert!(
            frames >= 15.0 * (recorded - 1.5),
            "{frames} frames: {stream}"
        );
        assert!(
            (duration - recorded).abs() <= 1.5,
            "duration {duration} for {recorded}"
        );
        assert_eq!(decode_errors(&files[0]), "", "{codec}");
        let tags = std::process::Command::new("ffprobe")
            .args(["-v", "error", "-show_entries", "stream=codec_tag_string"])
            .args(["-of", "csv=p=0"])
            .arg(&files[0])
            .output()
            .expect("ffprobe");
        assert_eq!(String::from_utf8_lossy(&tags.stdout).trim(), tag);
        let meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(files[0].with_extension("json")).expect("meta"))
                .expect("JSON");
        assert_eq!(meta["role"], "team");
        assert_eq!(meta["source"], "camera");
    }
    // Screenshots of either camera: decoded from its own codec, whole and one sector.
    for ((codec, track), sector, size) in
        [(&sent["amy"], 0, "640|360"), (&sent["ben"], 9, "212|120")]
    {
        lead.send(json!({ "type": "screenshot", "track": track, "sector": sector, "id": 3 }))
            .await;
        let done = lead.recv_type("screenshot").await;
        let file = done["file"].as_str().unwrap_or_else(|| panic!("{done}"));
        let (stream, _) = probe(&dir.join(file), "v:0");
        eprintln!("screenshot of {codec}, sector {sector}: {stream}");
        assert!(stream.starts_with(&format!("png|{size}")), "{stream}");
    }
    // The pages' tracks were the only ones: nothing else was recorded.
    let mp4s = std::fs::read_dir(&dir)
        .expect("recordings")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "mp4"))
        })
        .count();
    assert_eq!(mp4s, 2);
    let logs = server.logs();
    assert!(!logs.contains("panicked"), "server log: {logs}");
}

/// One viewer decodes an H.264 camera and a VP8 camera at once, each on its own m-line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_viewer_decodes_an_h264_and_a_vp8_camera_at_once() {
    let _turn = CAMERAS.lock().await;
    let server = Server::start(&[]);
    let mut b = Browser::launch().await;
    for (who, codec) in [("amy", "VP8"), ("ben", "H264")] {
        let url = format!(
            "{}&video_codec={codec}",
            page_url(&server, "mix", &server.token("mix", who, "team"), "camera")
        );
        b.open(&url).await;
    }
    let viewer = b
        .open(&page_url(
            &server,
            "mix",
            &server.token("mix", "dr-lead", "lead"),
            "",
        ))
        .await;
    let amy = decoded_from(&mut b, &viewer, "amy", 30).await;
    let ben = decoded_from(&mut b, &viewer, "ben", 30).await;
    let codecs = b
        .eval(
            &viewer,
            "(async () => { const pc = window.medsfu.subPc || window.medsfu.pc; const s = await (pc ? pc.getStats() : null); const out = []; if (s) s.forEach(r => { if (r.type === 'codec') out.push(r.mimeType); }); return out.sort().join(','); })()",
        )
        .await;
    eprintln!("viewer decodes {amy} and {ben}; codecs {codecs}");
    assert_ne!(amy, ben);
    assert_eq!(
        codecs, "video/H264,video/VP8",
        "one connection, both codecs in use"
    );
    // medsfu writes the RTCP sender reports of the tracks it forwards itself (its copies
    // bypass webrtc-rs's interceptors): Chromium takes them as remote-outbound-rtp, what it
    // lines a speaker's audio up with their video by. Each counts at least a second's
    // packets (not compared with what Chromium received: copies sent before it applied a
    // renegotiation are counted by the sender and dropped by it), and its NTP time, our
    // wall clock, is Chromium's own within the report interval (one machine, one clock).
    let reports = b
        .wait_for(
            &viewer,
            "(async () => { const pc = window.medsfu.subPc || window.medsfu.pc; const s = await pc.getStats();
               const out = []; s.forEach(r => { if (r.type === 'remote-outbound-rtp' && r.kind === 'video' && r.reportsSent > 0 && r.remoteTimestamp > 0)
                 out.push({ sent: r.packetsSent, skew_ms: Math.round(Date.now() - r.remoteTimestamp) }); });
               return out.length === 2 ? out : null; })()",
            Duration::from_secs(10),
            "sender reports of both video tracks",
        )
        .await;
    eprintln!("sender reports as Chromium sees them: {reports}");
    for r in reports.as_array().expect("two") {
        let (sent, skew) = (r["sent"].as_u64(), r["skew_ms"].as_i64());
        assert!(sent.is_some_and(|s| s >= 10), "report {r}");
        assert!(
            skew.is_some_and(|ms| (-500..=3000).contains(&ms)),
            "report's NTP time against Chromium's clock: {r}"
        );
    }
    let errors = b.eval(&viewer, "window.medsfu.errors.join('; ')").await;
    assert_eq!(errors, "", "no codec error on the viewer's page");
    let logs = server.logs();
    assert!(!logs.contains("panicked"), "server log: {logs}");
}

/// Audio received by a page: packets and total energy over every inbound audio stream.
const AUDIO_IN: &str = "(async () => { if (!window.medsfu.subPc) return null;
    const s = await window.medsfu.subPc.getStats(); let p = 0, e = 0;
    s.forEach((r) => { if (r.type === 'inbound-rtp' && r.kind === 'audio') { p += r.packetsReceived || 0; e += r.totalAudioEnergy || 0; } });
    return { p, e, t: performance.now() }; })()";

/// Audio energy per second a page receives, over `over`.
async fn energy_rate(b: &mut Browser, page: &Page, over: Duration) -> f64 {
    let a = b.eval(page, AUDIO_IN).await;
    tokio::time::sleep(over).await;
    let z = b.eval(page, AUDIO_IN).await;
    let f = |v: &serde_json::Value, k: &str| v[k].as_f64().expect("stat");
    (f(&z, "e") - f(&a, "e")) / ((f(&z, "t") - f(&a, "t")) / 1000.0)
}

/// Whether the element is shown (rendered, not hidden) and its text, or null.
fn shown(id: &str) -> String {
    format!("(() => {{ const e = document.getElementById('{id}'); return e && e.offsetParent !== null && e.textContent ? e.textContent : null; }})()")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crew_calls_from_the_page_the_doctor_answers_by_voice_and_ends_the_call() {
    let _turn = CAMERAS.lock().await;
    let server = Server::start(&[]);
    let data = &server.data.0;
    support::user_add(data, "dr-ana", "consultant", "correct horse battery");
    support::user_add(data, "crew-7", "team", "4711");
    support::user_add(data, "root", "admin", "correct horse battery");
    let tablet = support::medsfu_ok(data, &["device", "add", "tablet-7", "--kind", "tablet"])
        .trim()
        .to_owned();
    let mut b = Browser::launch().await;
    let doc = b.open(&format!("{}/", server.http)).await;
    assert_eq!(
        b.eval(&doc, "document.getElementById('conn').textContent")
            .await,
        "not signed in"
    );

    // A wrong password is said under the form, where the doctor looks.
    b.eval(
        &doc,
        "document.getElementById('login-user').value = 'dr-ana';
         document.getElementById('login-password').value = 'wrong';
         document.getElementById('login-form').requestSubmit(); true",
    )
    .await;
    let said = b
        .wait_for(
            &doc,
            &shown("login-error"),
            Duration::from_secs(10),
            "the sign-in refusal under the form",
        )
        .await;
    assert!(
        said.as_str().is_some_and(|s| s.contains("login_failed")),
        "{said}"
    );
    b.eval(
        &doc,
        "document.getElementById('login-password').value = 'correct horse battery';
         document.getElementById('login-form').requestSubmit(); true",
    )
    .await;
    b.wait_for(
        &doc,
        "!document.getElementById('centre').hidden && document.getElementById('conn').textContent === 'signed in'
         && document.getElementById('whoami').textContent.startsWith('dr-ana')
         && document.getElementById('login-form').offsetParent === null",
        Duration::from_secs(10),
        "the centre, signed in",
    )
    .await;

    // The crew signs in with its PIN on the registered tablet and presses the button.
    let crew = b.open(&format!("{}/", server.http)).await;
    b.eval(
        &crew,
        &format!(
            "document.getElementById('crew-user').value = 'crew-7';
             document.getElementById('crew-pin').value = '4711';
             document.getElementById('crew-device').value = '{tablet}';
             document.getElementById('crew-form').requestSubmit(); true"
        ),
    )
    .await;
    b.wait_for(
        &crew,
        &shown("call-doctor"),
        Duration::from_secs(10),
        "the crew's call button",
    )
    .await;
    b.eval(
        &crew,
        "document.getElementById('call-doctor').click(); true",
    )
    .await;
    b.wait_for(
        &crew,
        "window.medsfu.me && window.medsfu.me.role === 'team' && window.medsfu.published.has('microphone')
         && !document.getElementById('mute').hidden",
        Duration::from_secs(15),
        "the crew in its call, microphone on",
    )
    .await;

    // The call rings on the doctor's page: who calls, how long they have waited.
    let card = b
        .wait_for(
            &doc,
            "(() => { const li = document.querySelector('#calls li.call');
               return li && /waiting \\d+:\\d\\d/.test(li.textContent) && document.title.includes('incoming call')
                 ? li.textContent : null; })()",
            Duration::from_secs(10),
            "the ringing call card",
        )
        .await;
    assert!(
        card.as_str().is_some_and(|c| c.contains("crew-7")),
        "{card}"
    );
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("../screenshots");
    std::fs::create_dir_all(&shots).expect("screenshot dir");
    b.screenshot(&doc, &shots.join("incoming-call.png")).await;
    b.eval(
        &doc,
        "document.querySelector('#calls li.call button.accept').click(); true",
    )
    .await;
    b.wait_for(
        &doc,
        "window.medsfu.me && window.medsfu.me.role === 'lead' && window.medsfu.published.has('microphone')
         && !document.getElementById('mute').hidden && !document.getElementById('end-call').hidden",
        Duration::from_secs(15),
        "the doctor in the call as lead, microphone on",
    )
    .await;

    // Each hears the other (Chromium's fake microphone beeps).
    let hears =
        "(async () => { const a = await AUDIO_IN; return a && a.p > 50 && a.e > 0 ? a : null; })()"
            .replace("AUDIO_IN", AUDIO_IN);
    b.wait_for(
        &crew,
        &hears,
        Duration::from_secs(20),
        "the doctor's voice on the crew's page",
    )
    .await;
    b.wait_for(
        &doc,
        &hears,
        Duration::from_secs(20),
        "the crew's voice on the doctor's page",
    )
    .await;
    // The doctor mutes: the crew hears (nearly) nothing more. First the beeps must be
    // clearly audible (a loaded machine can take a few seconds to deliver them at full
    // level; a CI run once measured 1e-8 energy/s in the first window), so that "muted"
    // has something to be quieter than.
    const AUDIBLE: f64 = 1e-3; // energy/s; the fake microphone's beeps measure about 0.06
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut before = energy_rate(&mut b, &crew, Duration::from_secs(2)).await;
    while before < AUDIBLE && tokio::time::Instant::now() < deadline {
        before = energy_rate(&mut b, &crew, Duration::from_secs(2)).await;
    }
    assert!(
        before >= AUDIBLE,
        "the doctor's voice never became audible at the crew: {before} energy/s"
    );
    b.eval(&doc, "document.getElementById('mute').click(); true")
        .await;
    assert_eq!(
        b.eval(
            &doc,
            "document.getElementById('mute').getAttribute('aria-pressed')"
        )
        .await,
        "true"
    );
    tokio::time::sleep(Duration::from_millis(500)).await; // the jitter buffer drains
    let muted = energy_rate(&mut b, &crew, Duration::from_secs(2)).await;
    println!("doctor's voice at the crew: {before:.5} energy/s, muted {muted:.5}");
    assert!(muted < before / 10.0, "mute: {before} -> {muted}");

    // End call takes two clicks; every page then says the call ended, nothing looks live.
    b.eval(&doc, "document.getElementById('end-call').click(); document.getElementById('end-call').textContent")
        .await;
    assert!(
        b.wait_for(
            &doc,
            "window.medsfu.ended === null && document.getElementById('end-call').textContent.includes('Really')",
            Duration::from_secs(2),
            "the confirmation step",
        )
        .await
            == true
    );
    b.eval(&doc, "document.getElementById('end-call').click(); true")
        .await;
    for (page, who) in [(&doc, "doctor"), (&crew, "crew")] {
        b.wait_for(
            page,
            "window.medsfu.ended === 'room_closed' && document.getElementById('ended-title').textContent === 'The call has ended'
             && document.getElementById('conn').dataset.state === 'ended' && document.querySelectorAll('#tiles .tile').length === 0
             && document.getElementById('controls').hidden && document.getElementById('tele-state').dataset.state !== 'live'",
            Duration::from_secs(10),
            &format!("the ended call on the {who}'s page"),
        )
        .await;
    }
    b.screenshot(&doc, &shots.join("call-ended.png")).await;

    // The room is closed in the control API, and the trail says who ended it.
    let http = reqwest::Client::new();
    let json = |r: reqwest::RequestBuilder| async move {
        let text = r.send().await.expect("request").text().await.expect("body");
        serde_json::from_str::<serde_json::Value>(&text).expect("JSON")
    };
    let login = json(
        http.post(format!("{}/api/login", server.http))
            .header("content-type", "application/json")
            .body(r#"{"user":"root","password":"correct horse battery"}"#),
    )
    .await;
    let root = login["token"].as_str().expect("token");
    let room = b.eval(&crew, "window.medsfu.room").await;
    let room = room.as_str().expect("room");
    let got = json(
        http.get(format!("{}/api/rooms/{room}", server.http))
            .bearer_auth(root),
    )
    .await;
    assert_eq!(got["state"], "closed", "{got}");
    let trail = json(
        http.get(format!("{}/api/audit?limit=1000", server.http))
            .bearer_auth(root),
    )
    .await;
    assert!(
        trail
            .as_array()
            .expect("entries")
            .iter()
            .any(|e| e["action"] == "room_close"
                && e["room"] == room
                && e.to_string().contains("dr-ana")),
        "no room_close by dr-ana for {room}"
    );
    // Two browsers' sessions, and no library chatter: each DTLS handshake with Chromium
    // once logged 9 WARN lines about TLS extensions it ignores.
    let log = server.logs();
    assert!(log.contains("signalling session joined"), "the log is read");
    assert!(
        !log.contains("rtc_dtls") && !log.contains("rtc::peer_connection"),
        "WebRTC library noise in the log"
    );
}
