//! Nothing a peer sends may panic or stall the server: bad tokens, SDP, signalling messages
//! and datagrams each get a clear refusal, are counted, and the server keeps serving.

mod support;

use std::time::Duration;

use serde_json::json;
use support::{token_with, Server, Ws};

const OFFER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendonly\r\n\
a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\na=fingerprint:sha-256 \
00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\n\
a=setup:actpass\r\na=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\n";

async fn post(
    server: &Server,
    path: &str,
    token: Option<&str>,
    ct: &str,
    body: &str,
) -> (u16, serde_json::Value, reqwest::header::HeaderMap) {
    let mut r = reqwest::Client::new()
        .post(format!("{}{path}", server.http))
        .header("content-type", ct)
        .body(body.to_owned());
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let resp = r.send().await.expect("http");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(json!(text)),
        headers,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whip_and_whep_refuse_bad_requests_with_reasons() {
    let server = Server::start(&[]);
    let team = server.token("r1", "tab", "team");

    let (s, b, h) = post(&server, "/whip/r1", None, "application/sdp", OFFER).await;
    assert_eq!((s, b["code"].as_str()), (401, Some("token_missing")));
    assert!(h.get("www-authenticate").is_some());

    let expired = token_with(&server.data.0, "r1", "tab", "team", Some(0));
    let (s, b, _) = post(
        &server,
        "/whip/r1",
        Some(&expired),
        "application/sdp",
        OFFER,
    )
    .await;
    assert_eq!((s, b["code"].as_str()), (401, Some("token_expired")));

    let foreign_dir = support::TempDir::new("foreign");
    let foreign = token_with(&foreign_dir.0, "r1", "tab", "team", None);
    let (s, b, _) = post(
        &server,
        "/whip/r1",
        Some(&foreign),
        "application/sdp",
        OFFER,
    )
    .await;
    assert_eq!((s, b["code"].as_str()), (401, Some("token_foreign")));

    let (s, b, _) = post(
        &server,
        "/whip/other",
        Some(&team),
        "application/sdp",
        OFFER,
    )
    .await;
    assert_eq!((s, b["code"].as_str()), (401, Some("token_wrong_room")));

    let (s, b, _) = post(&server, "/whip/r1", Some(&team), "text/plain", OFFER).await;
    assert_eq!((s, b["code"].as_str()), (415, Some("content_type")));

    let (s, b, _) = post(&server, "/whip/r1", Some(&team), "application/sdp", "hello").await;
    assert_eq!((s, b["code"].as_str()), (400, Some("bad_sdp")));
    assert!(b["message"].as_str().unwrap_or("").contains("v=0"), "{b}");

    let (s, b, _) = post(
        &server,
        "/whip/r1",
        Some(&team),
        "application/sdp",
        &OFFER.replace("a=mid:0", "a=mid:0\r\nm=bogus"),
    )
    .await;
    assert_eq!((s, b["code"].as_str()), (400, Some("bad_sdp")), "{b}");

    let rec = server.token("r1", "archive", "recorder");
    let (s, b, _) = post(&server, "/whip/r1", Some(&rec), "application/sdp", OFFER).await;
    assert_eq!((s, b["code"].as_str()), (403, Some("publish_forbidden")));

    // A dispatcher may publish audio but not video.
    let disp = server.token("r1", "disp", "dispatcher");
    let video = OFFER
        .replace(
            "m=audio 9 UDP/TLS/RTP/SAVPF 111",
            "m=video 9 UDP/TLS/RTP/SAVPF 96",
        )
        .replace("opus/48000/2", "VP8/90000");
    let (s, b, _) = post(&server, "/whip/r1", Some(&disp), "application/sdp", &video).await;
    assert_eq!(
        (s, b["code"].as_str()),
        (403, Some("publish_forbidden")),
        "{b}"
    );

    let doc = server.token("r1", "doc", "consultant");
    let (s, b, _) = post(&server, "/whep/r1", Some(&doc), "application/sdp", OFFER).await;
    assert_eq!((s, b["code"].as_str()), (404, Some("no_tracks")));

    let (s, b, _) = post(&server, "/whep/a%2Fb", Some(&doc), "application/sdp", OFFER).await;
    assert_eq!((s, b["code"].as_str()), (400, Some("bad_room")));
    // `medsfu token` refuses such rooms too.
    let out = std::process::Command::new(support::bin())
        .args([
            "token",
            "--room",
            "a/b",
            "--identity",
            "x",
            "--role",
            "lead",
            "--data-dir",
        ])
        .arg(&server.data.0)
        .output()
        .expect("medsfu token");
    assert!(!out.status.success());

    // CORS: a player on another origin may use WHIP/WHEP.
    let pre = reqwest::Client::new()
        .request(reqwest::Method::OPTIONS, format!("{}/whep/r1", server.http))
        .header("origin", "https://player.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type",
        )
        .send()
        .await
        .expect("preflight");
    assert!(pre.status().is_success());
    assert_eq!(pre.headers()["access-control-allow-origin"], "*");
    // Issue 16: the login and control API answer no other origin unless configured, and
    // every answer forbids framing and carries the page's content security policy.
    for path in ["/api/login", "/api/rooms"] {
        let pre = reqwest::Client::new()
            .request(reqwest::Method::OPTIONS, format!("{}{path}", server.http))
            .header("origin", "https://evil.example")
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .send()
            .await
            .expect("preflight");
        assert!(
            !pre.headers().contains_key("access-control-allow-origin"),
            "{path}: {:?}",
            pre.headers()
        );
    }
    let page = reqwest::get(format!("{}/", server.http))
        .await
        .expect("page");
    let h = page.headers();
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["referrer-policy"], "no-referrer");
    let csp = h["content-security-policy"].to_str().expect("csp");
    assert!(
        csp.contains("frame-ancestors 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );

    let del = reqwest::Client::new()
        .delete(format!("{}/whip/r1/nosuchsession", server.http))
        .bearer_auth(&team)
        .send()
        .await
        .expect("delete");
    assert_eq!(del.status().as_u16(), 404);

    let health = reqwest::get(format!("{}/healthz", server.http))
        .await
        .expect("healthz");
    assert_eq!(health.status().as_u16(), 200);
    assert!(!server.logs().contains("panicked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_signalling_messages_get_errors_and_the_session_stays_usable() {
    let server = Server::start(&[]);
    let mut ws = Ws::connect(&server).await;

    ws.send(json!({ "type": "publish", "sdp": "v=0" })).await;
    assert_eq!(ws.recv().await["code"], "not_joined");
    ws.send(json!({ "type": "join", "token": "garbage" })).await;
    assert_eq!(ws.recv().await["code"], "token_malformed");
    let expired = token_with(&server.data.0, "r2", "me", "lead", Some(0));
    ws.send(json!({ "type": "join", "token": expired })).await;
    assert_eq!(ws.recv().await["code"], "token_expired");

    let ok = server.token("r2", "me", "lead");
    ws.send(json!({ "type": "join", "token": ok, "id": 1 }))
        .await;
    let joined = ws.recv_type("joined").await;
    assert_eq!(joined["id"], 1);
    assert_eq!(joined["role"], "lead");
    assert_eq!(joined["may_publish"], json!(["microphone"]));
    // A room without telemetry yet: the (empty) history ends at once.
    ws.recv_type("telemetry_live").await;

    ws.send_text("{ not json".into()).await;
    assert_eq!(ws.recv().await["code"], "bad_message");
    ws.send(json!({ "type": "teleport", "id": 7 })).await;
    let e = ws.recv().await;
    assert_eq!(
        (e["code"].as_str(), e["id"].as_i64()),
        (Some("unknown_message"), Some(7))
    );
    ws.send(json!({ "type": "ping", "extra": 1 })).await;
    assert_eq!(
        ws.recv().await["code"],
        "bad_message",
        "unknown fields are refused"
    );
    ws.send_text(format!(
        "{{\"type\":\"ping\",\"pad\":\"{}\"}}",
        "x".repeat(70 * 1024)
    ))
    .await;
    assert_eq!(ws.recv().await["code"], "message_too_large");
    ws.send(json!({ "type": "publish", "sdp": "nonsense", "id": 2 }))
        .await;
    let e = ws.recv().await;
    assert_eq!(
        (e["code"].as_str(), e["id"].as_i64()),
        (Some("bad_sdp"), Some(2))
    );
    ws.send(json!({ "type": "subscribe", "track": "T999", "id": 3 }))
        .await;
    assert_eq!(ws.recv().await["code"], "unknown_track");
    ws.send(json!({ "type": "subscribe", "track": "camera" }))
        .await;
    assert_eq!(ws.recv().await["code"], "bad_message");
    ws.send(json!({ "type": "answer", "sdp": "v=0" })).await;
    assert_eq!(ws.recv().await["code"], "no_pending_offer");

    ws.send(json!({ "type": "chat", "text": "   ", "id": 5 }))
        .await;
    assert_eq!(ws.recv().await["code"], "bad_message");

    // Still usable after all that.
    ws.send(json!({ "type": "ping", "id": 9 })).await;
    let pong = ws.recv().await;
    assert_eq!(
        (pong["type"].as_str(), pong["id"].as_i64()),
        (Some("pong"), Some(9))
    );
    ws.send(json!({ "type": "leave" })).await;
    assert_eq!(ws.recv().await["type"], "left");
    assert!(!server.logs().contains("panicked"));
}

/// Issue 16: requests that make the server work (ECG snapshots read the whole history and
/// write a PDF) have an allowance per session; beyond it the client is told when to try
/// again, and the session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_asking_too_often_is_told_to_wait_and_stays_usable() {
    let server = Server::start(&[]);
    let mut ws = Ws::connect(&server).await;
    let ok = server.token("r2", "me", "lead");
    ws.send(json!({ "type": "join", "token": ok, "id": 1 }))
        .await;
    ws.recv_type("joined").await;
    for id in 10..17 {
        ws.send(json!({ "type": "ecg_snapshot", "seconds": 10, "id": id }))
            .await;
    }
    let mut codes = Vec::new();
    for _ in 10..17 {
        let e = ws.recv_type("error").await;
        if e["code"] == "rate_limited" {
            assert!(
                e["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("try again in")),
                "{e}"
            );
        }
        codes.push((
            e["id"].as_i64().unwrap_or(0),
            e["code"].as_str().unwrap_or("").to_owned(),
        ));
    }
    codes.sort();
    let limited: Vec<i64> = codes
        .iter()
        .filter(|(_, c)| c == "rate_limited")
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(limited, [15, 16], "five at once, then none: {codes:?}");
    // Other requests are not held back.
    ws.send(json!({ "type": "ping", "id": 20 })).await;
    assert_eq!(ws.recv_type("pong").await["id"], 20);
    assert_eq!(
        server.metric("medsfu_signalling_rate_limited_total").await,
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_media_port_is_counted_and_dropped() {
    let server = Server::start(&[]);
    let media = server.media_addr();
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    let mut sent = 0u64;
    let mut seed = 0x1234_5678_u32;
    for len in [0usize, 1, 2, 19, 20, 64, 200, 1200, 1500] {
        for first in [0u8, 1, 22, 99, 128, 200, 255] {
            let mut d = vec![first; len];
            for b in d.iter_mut().skip(1) {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                *b = seed as u8;
            }
            // Well-formed STUN for a username nobody has.
            if len >= 20 && first == 0 {
                d[4..8].copy_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
            }
            sock.send_to(&d, media).expect("send");
            sent += 1;
        }
    }
    let metric = |body: &str, name: &str| -> u64 {
        body.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let (received, unknown) = loop {
        let body = reqwest::get(format!("{}/metrics", server.http))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("body");
        let r = metric(&body, "medsfu_media_datagrams_received_total");
        let u = metric(&body, "medsfu_media_datagrams_unknown_total");
        if r >= sent - 7 || std::time::Instant::now() > deadline {
            break (r, u);
        }
        tokio::task::yield_now().await;
    };
    // Zero-length datagrams may not be delivered by the kernel as reads; all others are.
    assert!(received >= sent - 7, "received {received} of {sent}");
    assert_eq!(unknown, received, "every one of them dropped as unknown");
    let health = reqwest::get(format!("{}/healthz", server.http))
        .await
        .expect("healthz");
    assert_eq!(health.status().as_u16(), 200);
}

/// Issue 16: a configured console on another origin may call the login and control API;
/// other origins still may not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_configured_origins_may_call_the_control_api() {
    let server = Server::start(&[(
        "MEDSFU_HTTP__CORS_ORIGINS",
        "[\"https://dispatch.example\"]",
    )]);
    let preflight = |origin: &'static str| {
        reqwest::Client::new()
            .request(
                reqwest::Method::OPTIONS,
                format!("{}/api/login", server.http),
            )
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .send()
    };
    let ok = preflight("https://dispatch.example")
        .await
        .expect("preflight");
    assert_eq!(
        ok.headers()["access-control-allow-origin"],
        "https://dispatch.example"
    );
    let other = preflight("https://evil.example").await.expect("preflight");
    assert!(!other.headers().contains_key("access-control-allow-origin"));
}

/// Issue 16: rooms, participants per room and tracks are limited (there was no limit on
/// any of them); a refusal names the limit, is counted, and frees up when someone leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_and_participants_are_limited_with_clear_errors() {
    let server = Server::start(&[
        ("MEDSFU_CORE__MAX_ROOMS", "2"),
        ("MEDSFU_CORE__MAX_PARTICIPANTS_PER_ROOM", "2"),
    ]);
    let join = |room: &str, who: &str| {
        let token = server.token(room, who, "consultant");
        let server = &server;
        async move {
            let mut ws = Ws::connect(server).await;
            ws.send(json!({ "type": "join", "token": token, "id": 1 }))
                .await;
            let v = ws.recv().await;
            (ws, v)
        }
    };
    let (_a, v) = join("r1", "a").await;
    assert_eq!(v["type"], "joined", "{v}");
    let (b, v) = join("r1", "b").await;
    assert_eq!(v["type"], "joined", "{v}");
    let (_c, v) = join("r1", "c").await;
    assert_eq!(
        (v["type"].as_str(), v["code"].as_str()),
        (Some("error"), Some("room_full")),
        "{v}"
    );
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("maximum of 2")),
        "{v}"
    );
    // A reconnect of someone inside replaces their session rather than adding one.
    let (_a2, v) = join("r1", "a").await;
    assert_eq!(v["type"], "joined", "{v}");
    let (_x, v) = join("r2", "x").await;
    assert_eq!(v["type"], "joined", "{v}");
    let (_y, v) = join("r3", "y").await;
    assert_eq!(v["code"], "too_many_rooms", "{v}");
    // Over WHEP too, as 503 (capacity, not the request, is the problem).
    let t = server.token("r4", "w", "consultant");
    let (s, v, _) = post(&server, "/whep/r4", Some(&t), "application/sdp", OFFER).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (503, Some("too_many_rooms")),
        "{v}"
    );
    for (limit, n) in [("room_full", 1.0), ("too_many_rooms", 2.0)] {
        let name = format!("medsfu_media_limited_total{{limit=\"{limit}\"}}");
        assert_eq!(server.metric(&name).await, n, "{name}");
    }
    // Someone leaves: there is room again.
    drop(b);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_c, v) = join("r1", "c").await;
        if v["type"] == "joined" {
            break;
        }
        assert_eq!(v["code"], "room_full", "{v}");
        assert!(
            std::time::Instant::now() < deadline,
            "the room never freed up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
