//! End-to-end: real headless Chromium pages (fake camera and microphone) in a room of the
//! real `medsfu` binary.

mod support;

use std::time::Duration;

use support::{Browser, Page, Server};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_see_each_other_late_joiner_is_fast_and_leaving_is_seen() {
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
