//! The control API through real HTTP, server-sent events and signalling: logins and
//! lockouts, calls, the whole roles matrix, lead hand-over (explicit and automatic),
//! removal, closing, bad input, the audit trail and the OpenAPI document.

mod support;

use std::process::Command;
use std::time::Duration;

use medsfu_control::{may, Action};
use medsfu_core::Role;
use serde_json::{json, Value};
use support::{medsfu_ok, user_add, Server, Ws};

/// `medsfu device add`: the device's token.
fn device_add(data: &std::path::Path, name: &str) -> String {
    medsfu_ok(data, &["device", "add", name, "--kind", "tablet"])
        .trim()
        .to_owned()
}

struct Api {
    http: String,
    client: reqwest::Client,
}

impl Api {
    fn new(server: &Server) -> Api {
        Api {
            http: server.http.clone(),
            client: reqwest::Client::new(),
        }
    }

    /// Sends a request; the status and the JSON body (null when empty).
    async fn call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let body = body.map(|b| b.to_string());
        self.raw(method, path, token, body, "application/json")
            .await
    }

    async fn raw(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<String>,
        content_type: &str,
    ) -> (u16, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut rq = self.client.request(m, format!("{}{path}", self.http));
        if !token.is_empty() {
            rq = rq.header("authorization", format!("Bearer {token}"));
        }
        if let Some(b) = body {
            rq = rq.header("content-type", content_type).body(b);
        }
        let r = rq.send().await.expect("request");
        let status = r.status().as_u16();
        let text = r.text().await.expect("body");
        let v = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("JSON body, got {text:?}"))
        };
        (status, v)
    }

    async fn login(&self, user: &str, password: &str) -> String {
        let (s, v) = self
            .call(
                "POST",
                "/api/login",
                "",
                Some(json!({ "user": user, "password": password })),
            )
            .await;
        assert_eq!(s, 200, "login {user}: {v}");
        v["token"].as_str().expect("token").to_owned()
    }

    async fn room_token(&self, room: &str, token: &str) -> String {
        let (s, v) = self
            .call("POST", &format!("/api/rooms/{room}/token"), token, None)
            .await;
        assert_eq!(s, 200, "room token: {v}");
        v["token"].as_str().expect("token").to_owned()
    }
}

/// An open server-sent events stream.
struct Events {
    resp: reqwest::Response,
    buf: String,
}

impl Events {
    async fn open(server: &Server, token: &str) -> Events {
        let resp = reqwest::Client::new()
            .get(format!(
                "{}/api/calls/events?access_token={token}",
                server.http
            ))
            .send()
            .await
            .expect("event stream");
        assert_eq!(resp.status().as_u16(), 200);
        Events {
            resp,
            buf: String::new(),
        }
    }

    /// The next event's data (10 s at most), skipping keep-alive comments.
    async fn next(&mut self) -> Value {
        loop {
            if let Some(i) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..i + 2).collect();
                if let Some(data) = block.lines().find_map(|l| l.strip_prefix("data:")) {
                    return serde_json::from_str(data.trim()).expect("event JSON");
                }
                continue;
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.resp.chunk())
                .await
                .expect("an event within 10 s")
                .expect("stream read")
                .expect("stream open");
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

/// Joins a room's signalling with a room token; the `joined` message.
async fn join(server: &Server, token: &str) -> (Ws, Value) {
    let mut ws = Ws::connect(server).await;
    ws.send(json!({ "type": "join", "token": token })).await;
    let joined = ws.recv().await;
    assert_eq!(joined["type"], "joined", "{joined}");
    (ws, joined)
}

/// Sends a signalling request with an id and returns its answer (the reply with that id,
/// or nothing within a short while for requests answered by silence, such as chat).
async fn ask(ws: &mut Ws, mut msg: Value, id: u64) -> Value {
    msg["id"] = json!(id);
    ws.send(msg).await;
    // A ping after it: its pong proves every earlier reply has been sent.
    ws.send(json!({ "type": "ping", "id": id + 1_000_000 }))
        .await;
    let mut answer = Value::Null;
    loop {
        let v = ws.recv().await;
        if v["id"] == id {
            answer = v;
        } else if v["type"] == "pong" && v["id"] == id + 1_000_000 {
            return answer;
        }
    }
}

/// The account role behind a room role (a lead is a consultant's account).
fn account_role(r: Role) -> Role {
    if r == Role::Lead {
        Role::Consultant
    } else {
        r
    }
}

/// Whether a signalling answer is a refusal by role.
fn forbidden(v: &Value) -> bool {
    v["type"] == "error"
        && v["code"]
            .as_str()
            .is_some_and(|c| c.ends_with("_forbidden"))
}

/// What is sent, where, with which token, and the status and code expected.
type BadRequest<'a> = (&'a str, String, Option<String>, &'a str, u16, &'a str);

const PW: &str = "correct horse battery";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_roles_hand_over_removal_and_the_audit_trail_through_http_and_signalling() {
    let server = Server::start(&[("MEDSFU_CONTROL__LEAD_GRACE_SECS", "1")]);
    let data = server.data.0.clone();
    for (name, role) in [
        ("ana", "consultant"),
        ("bob", "consultant"),
        ("carol", "consultant"),
        ("dis", "dispatcher"),
        ("root", "admin"),
    ] {
        user_add(&data, name, role, PW);
    }
    user_add(&data, "crew1", "team", "4711");
    let tablet = device_add(&data, "tablet-7");
    let api = Api::new(&server);

    // Logins: a wrong password is 401; wrong PINs lock the crew account (429), even
    // for the right PIN afterwards, until an operator unlocks it.
    let (s, v) = api
        .call(
            "POST",
            "/api/login",
            "",
            Some(json!({ "user": "ana", "password": "nope" })),
        )
        .await;
    assert_eq!((s, v["code"].as_str()), (401, Some("login_failed")));
    let crew_login = |pin: &str| json!({ "device_token": tablet, "user": "crew1", "pin": pin });
    let (s, v) = api
        .call(
            "POST",
            "/api/login/crew",
            "",
            Some(json!({ "device_token": "forged", "user": "crew1", "pin": "4711" })),
        )
        .await;
    assert_eq!((s, v["code"].as_str()), (401, Some("device_unknown")));
    for _ in 0..4 {
        let (s, _) = api
            .call("POST", "/api/login/crew", "", Some(crew_login("0000")))
            .await;
        assert_eq!(s, 401);
    }
    let (s, v) = api
        .call("POST", "/api/login/crew", "", Some(crew_login("0000")))
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (429, Some("account_locked")),
        "{v}"
    );
    let (s, _) = api
        .call("POST", "/api/login/crew", "", Some(crew_login("4711")))
        .await;
    assert_eq!(s, 429, "locked even for the right PIN");
    // The operator sees the lockout (it once read columns nothing wrote any more).
    let crew_line = |list: String| {
        list.lines()
            .find(|l| l.starts_with("crew1\t"))
            .map(str::to_owned)
            .unwrap_or_default()
    };
    let line = crew_line(medsfu_ok(&data, &["user", "list"]));
    assert!(line.ends_with("locked (from one address)"), "{line}");
    medsfu_ok(&data, &["user", "unlock", "crew1"]);
    let line = crew_line(medsfu_ok(&data, &["user", "list"]));
    assert!(!line.contains("locked"), "{line}");
    let (s, v) = api
        .call("POST", "/api/login/crew", "", Some(crew_login("4711")))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["role"], "team");
    let crew = v["token"].as_str().expect("token").to_owned();
    let ana = api.login("ana", PW).await;
    let bob = api.login("bob", PW).await;
    let carol = api.login("carol", PW).await;
    let dis = api.login("dis", PW).await;
    let root = api.login("root", PW).await;

    // The centre watches; the crew presses the button; the first to accept leads.
    let mut feed = Events::open(&server, &ana).await;
    let (s, call) = api.call("POST", "/api/calls", &crew, None).await;
    assert_eq!(s, 201, "{call}");
    assert_eq!(call["state"], "ringing");
    let room = call["name"].as_str().expect("room").to_owned();
    let ev = feed.next().await;
    assert_eq!(
        (ev["type"].as_str(), ev["room"].as_str()),
        (Some("call"), Some(room.as_str()))
    );
    let (s, listed) = api.call("GET", "/api/calls", &bob, None).await;
    assert_eq!(s, 200);
    assert_eq!(listed.as_array().map(Vec::len), Some(1));
    let (s, v) = api
        .call("POST", &format!("/api/calls/{room}/accept"), &ana, None)
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["role"], "lead");
    let ev = feed.next().await;
    assert_eq!(
        (ev["type"].as_str(), ev["lead"].as_str()),
        (Some("call_taken"), Some("ana"))
    );
    let (s, v) = api
        .call("POST", &format!("/api/calls/{room}/accept"), &bob, None)
        .await;
    assert_eq!((s, v["code"].as_str()), (409, Some("call_taken")), "{v}");
    for user in ["bob", "dis"] {
        let (s, v) = api
            .call(
                "POST",
                &format!("/api/rooms/{room}/members"),
                &ana,
                Some(json!({ "user": user })),
            )
            .await;
        assert_eq!(s, 201, "invite {user}: {v}");
    }

    // The roles matrix over HTTP: each caller, each action; allowed means anything but
    // 403 (the requests are chosen so that allowed ones change nothing).
    let callers = [
        ("crew1", Role::Team, crew.clone()),
        ("ana", Role::Lead, ana.clone()),
        ("bob", Role::Consultant, bob.clone()),
        ("dis", Role::Dispatcher, dis.clone()),
        ("root", Role::Admin, root.clone()),
    ];
    let r = room.as_str();
    let mut walked = 0;
    for (name, role, token) in &callers {
        let checks: Vec<(Action, &str, String, Option<Value>)> = vec![
            (Action::OpenCall, "POST", "/api/calls".into(), None),
            (Action::WatchCalls, "GET", "/api/calls".into(), None),
            (
                Action::AcceptCall,
                "POST",
                format!("/api/calls/{r}/accept"),
                None,
            ),
            (
                Action::CreateRoom,
                "POST",
                "/api/rooms".into(),
                Some(json!({ "name": format!("made-by-{name}") })),
            ),
            (Action::ListRooms, "GET", "/api/rooms".into(), None),
            (Action::GetRoom, "GET", format!("/api/rooms/{r}"), None),
            (
                Action::Invite,
                "POST",
                format!("/api/rooms/{r}/members"),
                Some(json!({ "user": "nobody" })),
            ),
            (
                Action::Remove,
                "DELETE",
                format!("/api/rooms/{r}/members/nobody"),
                None,
            ),
            (
                Action::HandOver,
                "POST",
                format!("/api/rooms/{r}/lead"),
                Some(json!({ "user": "nobody" })),
            ),
            (
                Action::Grant,
                "POST",
                format!("/api/rooms/{r}/grants"),
                Some(json!({ "user": "nobody", "camera": true })),
            ),
            (
                Action::JoinMedia,
                "POST",
                format!("/api/rooms/{r}/token"),
                None,
            ),
            (Action::ReadAudit, "GET", "/api/audit?limit=5".into(), None),
            // The dispatcher is a member already: allowed comes out as 409.
            (
                Action::JoinCall,
                "POST",
                format!("/api/rooms/{r}/join"),
                None,
            ),
        ];
        for (action, method, path, body) in checks {
            let (s, v) = api.call(method, &path, token, body).await;
            // Actions on a room count the role in it; the others the account's role.
            let as_role = if action.in_room() {
                *role
            } else {
                account_role(*role)
            };
            let allowed = may(as_role, action);
            assert_eq!(s != 403, allowed, "{name} ({role:?}) {action:?}: {s} {v}");
            if !allowed {
                assert_eq!(v["code"], "forbidden", "{v}");
            }
            walked += 1;
        }
        // Closing and leaving change things: only refusals are walked here; the allowed
        // cases happen at the end.
        for (action, method, path) in [
            (Action::CloseRoom, "DELETE", format!("/api/rooms/{r}")),
            (Action::Leave, "POST", format!("/api/rooms/{r}/leave")),
        ] {
            if !may(*role, action) {
                let (s, v) = api.call(method, &path, token, None).await;
                assert_eq!(s, 403, "{name} {action:?}: {v}");
                walked += 1;
            }
        }
    }
    // Someone who is not a member sees nothing of the room and cannot join it.
    for (method, path) in [
        ("GET", format!("/api/rooms/{r}")),
        ("POST", format!("/api/rooms/{r}/token")),
    ] {
        let (s, v) = api.call(method, &path, &carol, None).await;
        assert_eq!((s, v["code"].as_str()), (403, Some("not_a_member")), "{v}");
    }

    // The matrix in signalling: camera, recording, screenshots, chat, ECG snapshots.
    let mut sessions = Vec::new();
    for (name, role, token) in &callers {
        if *role == Role::Admin {
            continue;
        }
        let rt = api.room_token(r, token).await;
        let (mut ws, joined) = join(&server, &rt).await;
        assert_eq!(joined["role"], role.as_str());
        let mut n = 0;
        for (action, msg) in [
            (
                Action::Camera,
                json!({ "type": "camera", "vehicle": "P999999", "pan_deg": 10.0 }),
            ),
            (
                Action::Screenshot,
                json!({ "type": "screenshot", "track": "T999999" }),
            ),
            (
                Action::Chat,
                json!({ "type": "chat", "text": format!("hello from {name}") }),
            ),
            (
                Action::EcgSnapshot,
                json!({ "type": "ecg_snapshot", "seconds": 2 }),
            ),
            (
                Action::Record,
                json!({ "type": "record", "action": "stop" }),
            ),
        ] {
            n += 1;
            let v = ask(&mut ws, msg, n).await;
            assert_eq!(!forbidden(&v), may(*role, action), "{name} {action:?}: {v}");
            walked += 1;
        }
        sessions.push((
            name.to_string(),
            ws,
            joined["participant"].as_str().unwrap_or("").to_owned(),
        ));
    }
    println!("roles matrix: {walked} (role, action) pairs checked through HTTP and signalling");
    let (mut ana_ws, mut bob_ws, mut dis_ws) = {
        let mut it = sessions.into_iter();
        let _crew = it.next().expect("crew");
        let a = it.next().expect("ana");
        let b = it.next().expect("bob");
        let d = it.next().expect("dis");
        ((a.1, a.2), (b.1, b.2), (d.1, d.2))
    };

    // The lead lends the camera to a consultant, and takes it back.
    let grant = |camera: bool| json!({ "user": "bob", "camera": camera });
    let (s, v) = api
        .call(
            "POST",
            &format!("/api/rooms/{r}/grants"),
            &ana,
            Some(grant(true)),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let g = bob_ws.0.recv_type("camera_grant").await;
    assert_eq!(g["camera"], true);
    let v = ask(
        &mut bob_ws.0,
        json!({ "type": "camera", "vehicle": "P999999", "zoom": 2.0 }),
        40,
    )
    .await;
    assert!(!forbidden(&v), "a consultant with the camera steers: {v}");
    let (s, _) = api
        .call(
            "POST",
            &format!("/api/rooms/{r}/grants"),
            &bob,
            Some(grant(true)),
        )
        .await;
    assert_eq!(s, 403, "only the lead grants");
    let (s, _) = api
        .call(
            "POST",
            &format!("/api/rooms/{r}/grants"),
            &ana,
            Some(grant(false)),
        )
        .await;
    assert_eq!(s, 200);
    let g = bob_ws.0.recv_type("camera_grant").await;
    assert_eq!(g["camera"], false);
    let v = ask(
        &mut bob_ws.0,
        json!({ "type": "camera", "vehicle": "P999999", "zoom": 2.0 }),
        41,
    )
    .await;
    assert!(forbidden(&v), "taken back: {v}");

    // Explicit hand-over: everyone is told, and the powers move with the role.
    let (s, v) = api
        .call(
            "POST",
            &format!("/api/rooms/{r}/lead"),
            &ana,
            Some(json!({ "user": "bob" })),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["lead"], "bob");
    let seen = dis_ws.0.recv_type("role_changed").await;
    let seen2 = dis_ws.0.recv_type("role_changed").await;
    let mut changes = [
        (seen["participant"].clone(), seen["role"].clone()),
        (seen2["participant"].clone(), seen2["role"].clone()),
    ];
    changes.sort_by_key(|c| c.1.to_string());
    assert_eq!(
        changes,
        [
            (json!(ana_ws.1), json!("consultant")),
            (json!(bob_ws.1), json!("lead"))
        ]
    );
    let v = ask(
        &mut ana_ws.0,
        json!({ "type": "camera", "vehicle": "P999999", "zoom": 2.0 }),
        50,
    )
    .await;
    assert!(forbidden(&v), "the former lead steers no more: {v}");
    let v = ask(
        &mut bob_ws.0,
        json!({ "type": "camera", "vehicle": "P999999", "zoom": 2.0 }),
        51,
    )
    .await;
    assert!(!forbidden(&v), "the new lead steers: {v}");
    let (s, _) = api
        .call(
            "POST",
            &format!("/api/rooms/{r}/lead"),
            &ana,
            Some(json!({ "user": "ana" })),
        )
        .await;
    assert_eq!(s, 403, "the former lead cannot take it back");

    // Automatic hand-over: the lead's connection drops; after the grace time (1 s here)
    // the consultant connected longest leads, and the room is told.
    drop(bob_ws);
    let v = ana_ws.0.recv_type("role_changed").await;
    let v = if v["participant"] == json!(ana_ws.1) {
        v
    } else {
        ana_ws.0.recv_type("role_changed").await
    };
    assert_eq!(
        (v["participant"].clone(), v["role"].clone()),
        (json!(ana_ws.1), json!("lead"))
    );
    let (_, room_now) = api
        .call("GET", &format!("/api/rooms/{r}"), &root, None)
        .await;
    assert_eq!(room_now["lead"], "ana", "{room_now}");
    let leads = room_now["members"]
        .as_array()
        .map(|m| m.iter().filter(|m| m["role"] == "lead").count());
    assert_eq!(leads, Some(1));

    // Removal: the dispatcher's session ends and they cannot come back, not even with a
    // room token issued before (signalling, WHEP, the telemetry stream).
    let dis_old = api.room_token(r, &dis).await;
    // An open telemetry stream of the dispatcher's, which must end with the membership.
    let mut dis_stream = reqwest::Client::new()
        .get(format!("{}/api/rooms/{r}/telemetry", server.http))
        .header("authorization", format!("Bearer {dis_old}"))
        .send()
        .await
        .expect("telemetry stream");
    assert_eq!(dis_stream.status().as_u16(), 200);
    let (s, _) = api
        .call("DELETE", &format!("/api/rooms/{r}/members/dis"), &ana, None)
        .await;
    assert_eq!(s, 204);
    let left = dis_ws.0.recv_type("left").await;
    assert_eq!(left["reason"], "removed");
    let (s, v) = api
        .call("POST", &format!("/api/rooms/{r}/token"), &dis, None)
        .await;
    assert_eq!((s, v["code"].as_str()), (403, Some("not_a_member")));
    let (s, v) = api
        .raw(
            "POST",
            &format!("/whep/{r}"),
            &dis_old,
            Some("v=0\r\n".into()),
            "application/sdp",
        )
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (403, Some("not_a_member")),
        "WHEP: {v}"
    );
    let (s, v) = api
        .call("GET", &format!("/api/rooms/{r}/telemetry"), &dis_old, None)
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (403, Some("not_a_member")),
        "telemetry: {v}"
    );
    let mut back = Ws::connect(&server).await;
    back.send(json!({ "type": "join", "token": dis_old })).await;
    let v = back.recv().await;
    assert_eq!(v["code"], "not_a_member", "{v}");
    // A recorder is no member: an operator's recorder token (only the server's secret
    // makes one) is let in, as `medsfu record` needs.
    let mut recorder = Ws::connect(&server).await;
    let rec_token = server.token(r, "site-recorder", "recorder");
    recorder
        .send(json!({ "type": "join", "token": rec_token }))
        .await;
    assert_eq!(recorder.recv_type("joined").await["role"], "recorder");
    // ... and stays: the engine takes commands in order, so a session the desk had removed
    // on joining would get `unknown_session` here.
    recorder
        .send(json!({ "type": "subscribe", "track": "T999999", "id": 9 }))
        .await;
    assert_eq!(recorder.recv_type("error").await["code"], "unknown_track");
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(_chunk) = dis_stream.chunk().await.expect("stream read") {}
    })
    .await;
    assert!(
        ended.is_ok(),
        "the removed member's telemetry stream did not end"
    );
    let (s, _) = api
        .call("DELETE", &format!("/api/rooms/{r}/members/dis"), &ana, None)
        .await;
    assert_eq!(s, 422, "a replayed removal changes nothing");

    // Bad input: each a 4xx with a stable code, audited.
    let long = format!("{{\"user\":\"{}\"}}", "x".repeat(1_100_000));
    let members = format!("/api/rooms/{r}/members");
    let bad: Vec<BadRequest> = vec![
        (
            "malformed JSON",
            members.clone(),
            Some("{\"user\":".into()),
            &ana,
            400,
            "bad_json",
        ),
        (
            "wrong type",
            members.clone(),
            Some("{\"user\":7}".into()),
            &ana,
            422,
            "bad_field",
        ),
        (
            "unknown field",
            members.clone(),
            Some("{\"user\":\"bob\",\"admin\":true}".into()),
            &ana,
            422,
            "bad_field",
        ),
        (
            "over 1 MiB",
            members.clone(),
            Some(long),
            &ana,
            413,
            "body_too_large",
        ),
        (
            "no token",
            members.clone(),
            Some("{\"user\":\"bob\"}".into()),
            "",
            401,
            "token_missing",
        ),
        (
            "forged token",
            members.clone(),
            Some("{\"user\":\"bob\"}".into()),
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJyb290In0.c2ln",
            401,
            "token_foreign",
        ),
        (
            "consultant doing lead's work",
            members.clone(),
            Some("{\"user\":\"carol\"}".into()),
            &carol,
            403,
            "not_a_member",
        ),
        (
            "bad room name",
            "/api/rooms/..%2Fetc/members".into(),
            Some("{\"user\":\"bob\"}".into()),
            &ana,
            400,
            "bad_room",
        ),
    ];
    for (what, path, body, token, status, code) in bad {
        let (s, v) = api
            .raw("POST", &path, token, body, "application/json")
            .await;
        assert_eq!((s, v["code"].as_str()), (status, Some(code)), "{what}: {v}");
    }
    let room_token_as_api = api.room_token(r, &ana).await;
    let (s, v) = api
        .call("GET", "/api/rooms", &room_token_as_api, None)
        .await;
    assert_eq!((s, v["code"].as_str()), (401, Some("token_wrong_scope")));
    let (s, v) = api
        .raw(
            "POST",
            &members,
            &ana,
            Some("user=bob".into()),
            "text/plain",
        )
        .await;
    assert_eq!((s, v["code"].as_str()), (415, Some("bad_content_type")));
    let (s, v) = api.call("GET", "/api/nothing-here", &ana, None).await;
    assert_eq!((s, v["code"].as_str()), (404, Some("not_found")));

    // The crew ends the call: every session is closed, the room refuses new joins.
    let (s, _) = api
        .call("DELETE", &format!("/api/rooms/{r}"), &crew, None)
        .await;
    assert_eq!(s, 204);
    let left = ana_ws.0.recv_type("left").await;
    assert_eq!(left["reason"], "room_closed");
    let ev = feed.next().await;
    assert_eq!(ev["type"], "call_closed");
    let mut late = Ws::connect(&server).await;
    late.send(json!({ "type": "join", "token": room_token_as_api }))
        .await;
    let v = late.recv().await;
    assert_eq!(v["code"], "room_closed", "{v}");
    let (s, v) = api
        .call("DELETE", &format!("/api/rooms/{r}"), &crew, None)
        .await;
    assert_eq!((s, v["code"].as_str()), (409, Some("room_closed")));
    // An operator disables an account: its login token stops working at once.
    medsfu_ok(&data, &["user", "disable", "carol"]);
    let (s, v) = api.call("GET", "/api/rooms", &carol, None).await;
    assert_eq!((s, v["code"].as_str()), (403, Some("account_disabled")));
    medsfu_ok(&data, &["user", "enable", "carol"]);
    // Enabling it again does not bring the old token back: carol signs in anew.
    let (s, v) = api.call("GET", "/api/rooms", &carol, None).await;
    assert_eq!((s, v["code"].as_str()), (401, Some("token_revoked")), "{v}");
    let carol = api.login("carol", PW).await;
    // A dispatcher leaves a room (allowed), an admin closes one (allowed).
    let (s, v) = api.call("POST", "/api/calls", &crew, None).await;
    assert_eq!(s, 201);
    let r2 = v["name"].as_str().expect("room").to_owned();
    assert_ne!(r2, room, "a closed call frees the crew to open a new one");
    let (s, _) = api
        .call("POST", &format!("/api/calls/{r2}/accept"), &carol, None)
        .await;
    assert_eq!(s, 200);
    let (s, _) = api
        .call(
            "POST",
            &format!("/api/rooms/{r2}/members"),
            &carol,
            Some(json!({ "user": "dis" })),
        )
        .await;
    assert_eq!(s, 201);
    let (s, _) = api
        .call("POST", &format!("/api/rooms/{r2}/leave"), &dis, None)
        .await;
    assert_eq!(s, 204);
    let (s, _) = api
        .call("DELETE", &format!("/api/rooms/{r2}"), &root, None)
        .await;
    assert_eq!(s, 204);

    // The audit trail has the story, refusals included, and its chain is intact.
    let (s, trail) = api
        .call("GET", "/api/audit?limit=100000", &root, None)
        .await;
    assert_eq!(s, 200);
    let trail = trail.as_array().expect("entries").clone();
    let has = |action: &str, detail: &str| {
        trail.iter().any(|e| {
            e["action"] == action && e["detail"].as_str().is_some_and(|d| d.contains(detail))
        })
    };
    for (action, detail) in [
        ("login_failed", "account_locked"),
        ("login", "tablet-7"),
        ("call_open", ""),
        ("lead_change", "\"reason\":\"accepted\""),
        ("camera_grant", "\"camera\":true"),
        ("lead_change", "\"reason\":\"hand_over\""),
        ("lead_change", "\"reason\":\"lead_away\""),
        ("member_add", "\"member\":\"bob\""),
        ("member_remove", "\"member\":\"dis\""),
        ("room_close", ""),
        ("refused", "bad_json"),
        ("refused", "body_too_large"),
        ("refused", "token_foreign"),
        ("refused", "token_missing"),
        ("refused", "forbidden"),
        ("refused", "bad_room"),
    ] {
        assert!(
            has(action, detail),
            "no {action} entry with {detail:?} in the trail"
        );
    }
    assert!(
        trail.iter().any(|e| e["source"]
            .as_str()
            .is_some_and(|s| s.contains("from=127.0.0.1"))),
        "the trail says where requests came from"
    );
    println!("audit trail: {} entries", trail.len());
    medsfu_ok(&data, &["audit", "verify"]);
    // An admin finds the intervention by participant and time, not by a wrong vehicle.
    let find = |args: &[&str]| {
        let all: Vec<&str> = ["export", "find"].iter().chain(args).copied().collect();
        medsfu_ok(&data, &all)
    };
    let found = find(&["--participant", "dis"]);
    assert!(
        found
            .lines()
            .any(|l| l.starts_with(r) && l.contains("dis:dispatcher")),
        "{found}"
    );
    assert!(find(&[
        "--participant",
        "dis",
        "--from",
        "2000-01-01",
        "--to",
        "2999-12-31"
    ])
    .contains(r));
    assert_eq!(find(&["--vehicle", "amb-none"]), "");
    assert_eq!(
        find(&["--to", "2000-01-01"]),
        "",
        "nothing opened before 2000"
    );
    // Closed long before 2999: only rooms still open then are found.
    assert!(!find(&["--from", "2999-01-01"]).contains(r));
    // The intervention's export carries its record: memberships and their roles, and
    // the room's audit entries.
    let archive = data.join("call.tar");
    let out_arg = archive.to_string_lossy().into_owned();
    medsfu_ok(&data, &["export", "--room", r, "--out", &out_arg]);
    let read = |name: &str| {
        let out = Command::new("tar")
            .arg("-xOf")
            .arg(&archive)
            .arg(name)
            .output()
            .expect("tar -x");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let record: Value = serde_json::from_str(&read("record/room.json")).expect("room.json");
    assert_eq!(record["status"], "closed");
    let memberships = record["memberships"].as_array().expect("memberships");
    assert!(memberships
        .iter()
        .any(|m| m["member"] == "dis" && m["left_unix_ms"].is_i64()));
    assert!(memberships
        .iter()
        .any(|m| m["member"] == "ana" && m["role"] == "lead"));
    let excerpt = read("record/audit.ndjson");
    assert!(excerpt.lines().all(|l| l.contains("\"hash\":")));
    assert!(excerpt.contains("\"action\":\"lead_change\""), "{excerpt}");

    // The operators' counters tell the same story, without names.
    assert_eq!(
        server.metric("medsfu_control_calls_opened_total").await,
        2.0
    );
    let locked = "medsfu_control_logins_total{result=\"locked\"}";
    assert!(server.metric(locked).await >= 2.0, "locked logins counted");
    let away = "medsfu_control_lead_changes_total{reason=\"lead_away\"}";
    assert_eq!(server.metric(away).await, 1.0);
    let bad_json = "medsfu_control_refused_total{code=\"bad_json\"}";
    assert_eq!(server.metric(bad_json).await, 1.0);
    // Where requests come from is in the trail, never in the logs.
    assert!(!server.logs().contains("from=127.0.0.1"));
}

#[tokio::test]
async fn the_openapi_document_describes_every_route_and_its_errors() {
    let server = Server::start(&[]);
    let r = reqwest::get(format!("{}/api/openapi.json", server.http))
        .await
        .expect("openapi");
    assert_eq!(r.status().as_u16(), 200);
    let doc: Value = serde_json::from_str(&r.text().await.expect("body")).expect("JSON");
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().expect("paths");
    for p in [
        "/api/login",
        "/api/login/crew",
        "/api/calls",
        "/api/calls/events",
        "/api/calls/{room}/accept",
        "/api/rooms",
        "/api/rooms/{room}",
        "/api/rooms/{room}/members",
        "/api/rooms/{room}/members/{user}",
        "/api/rooms/{room}/leave",
        "/api/rooms/{room}/lead",
        "/api/rooms/{room}/grants",
        "/api/rooms/{room}/token",
        "/api/audit",
    ] {
        assert!(paths.contains_key(p), "{p} missing from the document");
    }
    let error = &doc["components"]["schemas"]["ErrorBody"]["properties"];
    assert!(error["code"].is_object() && error["message"].is_object());
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_memberships_and_leads_survive_a_restart_and_closed_rooms_stay_closed() {
    let server = Server::start(&[]);
    let data = server.data.0.clone();
    for (name, role) in [
        ("ana", "consultant"),
        ("bob", "consultant"),
        ("root", "admin"),
    ] {
        user_add(&data, name, role, PW);
    }
    user_add(&data, "crew1", "team", "4711");
    let tablet = device_add(&data, "tablet-1");
    let api = Api::new(&server);
    let (s, v) = api
        .call(
            "POST",
            "/api/login/crew",
            "",
            Some(json!({ "device_token": tablet, "user": "crew1", "pin": "4711" })),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let crew = v["token"].as_str().expect("token").to_owned();
    let ana = api.login("ana", PW).await;
    // One call ends, a second stays open with ana leading and bob invited.
    let (_, first) = api.call("POST", "/api/calls", &crew, None).await;
    let first = first["name"].as_str().expect("room").to_owned();
    let (s, _) = api
        .call("POST", &format!("/api/calls/{first}/accept"), &ana, None)
        .await;
    assert_eq!(s, 200);
    let old_token = api.room_token(&first, &ana).await;
    let (s, _) = api
        .call("DELETE", &format!("/api/rooms/{first}"), &ana, None)
        .await;
    assert_eq!(s, 204);
    let (_, second) = api.call("POST", "/api/calls", &crew, None).await;
    let second = second["name"].as_str().expect("room").to_owned();
    api.call("POST", &format!("/api/calls/{second}/accept"), &ana, None)
        .await;
    let (s, _) = api
        .call(
            "POST",
            &format!("/api/rooms/{second}/members"),
            &ana,
            Some(json!({ "user": "bob" })),
        )
        .await;
    assert_eq!(s, 201);
    let (status, _, data_dir) = server.terminate(Duration::from_secs(15)).await;
    assert!(status.success());

    let server = Server::start_in(data_dir, &[], &[]);
    let api = Api::new(&server);
    let root = api.login("root", PW).await;
    let (s, room) = api
        .call("GET", &format!("/api/rooms/{second}"), &root, None)
        .await;
    assert_eq!(s, 200, "{room}");
    assert_eq!(
        (room["state"].as_str(), room["lead"].as_str()),
        (Some("active"), Some("ana"))
    );
    let members: Vec<(String, String)> = room["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap_or("").to_owned(),
                m["role"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        members,
        [
            ("crew1".to_owned(), "team".to_owned()),
            ("ana".to_owned(), "lead".to_owned()),
            ("bob".to_owned(), "consultant".to_owned())
        ]
    );
    // The closed call is still closed: its old token joins nothing, its name is taken.
    let mut ws = Ws::connect(&server).await;
    ws.send(json!({ "type": "join", "token": old_token })).await;
    let v = ws.recv().await;
    assert_eq!(v["code"], "room_closed", "{v}");
    let (s, v) = api
        .call("POST", "/api/rooms", &root, Some(json!({ "name": first })))
        .await;
    assert_eq!((s, v["code"].as_str()), (409, Some("room_exists")));
    // The lead still leads after the restart.
    let ana = api.login("ana", PW).await;
    let (s, v) = api
        .call(
            "POST",
            &format!("/api/rooms/{second}/lead"),
            &ana,
            Some(json!({ "user": "bob" })),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["lead"], "bob");
}

/// The server's resident memory, from /proc (kB).
fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Issue 16 (critical), first part: 3000 sign-ins at once (300 in flight) keep the server's
/// memory bounded (argon2's 19 MiB per check runs a few at a time in reused memory; past a
/// short queue the answer is 503 at once), and a real sign-in works right after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_flood_keeps_memory_bounded_and_a_real_login_still_works() {
    use futures_util::StreamExt as _;
    // All from one address: without the per-address limit, to measure the checks themselves.
    let server = Server::start(&[("MEDSFU_CONTROL__LOGIN_ATTEMPTS_PER_MINUTE", "0")]);
    user_add(&server.data.0, "ana", "consultant", PW);
    let pid = server.child.id();
    let api = Api::new(&server);
    let _ = api.login("ana", PW).await;
    let before = rss_kb(pid);
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(before));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_kb(pid), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let http = reqwest::Client::new();
    let url = format!("{}/api/login", server.http);
    let statuses: Vec<u16> = futures_util::stream::iter(0..3000)
        .map(|i| {
            let (http, url) = (http.clone(), url.clone());
            async move {
                http.post(&url)
                    .header("content-type", "application/json")
                    .body(
                        json!({ "user": format!("nobody{}", i % 50), "password": "wrong" })
                            .to_string(),
                    )
                    .send()
                    .await
                    .map_or(0, |r| r.status().as_u16())
            }
        })
        .buffer_unordered(300)
        .collect()
        .await;
    sampler.abort();
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed);
    let count = |s: u16| statuses.iter().filter(|&&x| x == s).count();
    eprintln!(
        "login flood: {} x 401, {} x 503, {} x 429 (name locked for this address); \
         RSS {before} kB before, {peak} kB at most",
        count(401),
        count(503),
        count(429)
    );
    // Refusals only: wrong, busy, or (after five wrong tries of a name) locked.
    assert_eq!(count(401) + count(503) + count(429), 3000, "only refusals");
    assert!(count(503) > 0, "the queue is bounded");
    // A few working memories of 19 MiB, not one per request (the flood took 3 GB before).
    assert!(
        peak < before + 160 * 1024,
        "RSS grew from {before} kB to {peak} kB"
    );
    let _ = api.login("ana", PW).await;
}

/// Issue 16: one address gets its allowance of sign-in attempts (30 a minute by default),
/// then 429 `rate_limited` at once: counted, not checked, not audited one by one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_ins_from_one_address_are_rate_limited() {
    let server = Server::start(&[]);
    user_add(&server.data.0, "ana", "consultant", PW);
    let api = Api::new(&server);
    let mut codes = Vec::new();
    let started = std::time::Instant::now();
    for i in 0..40 {
        let (s, v) = api
            .call(
                "POST",
                "/api/login",
                "",
                Some(json!({ "user": format!("nobody{i}"), "password": "wrong" })),
            )
            .await;
        codes.push((s, v["code"].as_str().unwrap_or_default().to_owned()));
        if s == 429 {
            assert!(
                v["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("try again in")),
                "{v}"
            );
        }
    }
    let failed = codes
        .iter()
        .filter(|(s, c)| *s == 401 && c == "login_failed")
        .count();
    let limited = codes
        .iter()
        .filter(|(s, c)| *s == 429 && c == "rate_limited")
        .count();
    // The burst of 30, plus one every 2 s while the attempts ran (a loaded machine's
    // password checks take longer).
    let refilled = (started.elapsed().as_secs_f64() / 2.0).floor() as usize;
    eprintln!(
        "40 wrong sign-ins from one address in {:?}: {failed} x 401, {limited} x 429",
        started.elapsed()
    );
    assert_eq!(failed + limited, 40, "{codes:?}");
    assert!(
        (30..=30 + refilled).contains(&failed) && limited >= 1,
        "{codes:?}"
    );
    assert_eq!(
        server
            .metric("medsfu_control_logins_total{result=\"rate_limited\"}")
            .await,
        limited as f64
    );
    assert_eq!(
        server
            .metric("medsfu_control_logins_total{result=\"failed\"}")
            .await,
        failed as f64,
        "only the admitted attempts were checked (and audited)"
    );
    // The crew's sign-in shares the address's allowance.
    let (s, v) = api
        .call(
            "POST",
            "/api/login/crew",
            "",
            Some(json!({ "device_token": "x", "user": "crew1", "pin": "1" })),
        )
        .await;
    assert_eq!((s, v["code"].as_str()), (429, Some("rate_limited")), "{v}");
}

/// Bytes of the audit trail's files (the database and its write-ahead log).
fn audit_bytes(data: &std::path::Path) -> u64 {
    std::fs::read_dir(data)
        .expect("data dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("audit.db"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// Issue 16 (high): refused requests without a valid login cannot fill the disk through the
/// audit trail (50 sign-ins with a 1 MB user name added 48 MB): fields are capped, and per
/// source and code only the first few refusals a minute get their own row, the rest are
/// counted. Real accesses are still audited one by one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_cannot_fill_the_disk_through_the_audit_trail() {
    let server = Server::start(&[("MEDSFU_CONTROL__LOGIN_ATTEMPTS_PER_MINUTE", "0")]);
    user_add(&server.data.0, "root", "admin", PW);
    let api = Api::new(&server);
    let _ = api.login("root", PW).await;
    let before = audit_bytes(&server.data.0);
    let huge = "u".repeat(1_000_000);
    for _ in 0..50 {
        let (s, v) = api
            .call(
                "POST",
                "/api/login",
                "",
                Some(json!({ "user": huge, "password": "wrong" })),
            )
            .await;
        assert_eq!((s, v["code"].as_str()), (422, Some("bad_field")), "{v}");
    }
    // Wrong passwords with long (allowed) names, bad tokens, no token.
    for i in 0..200 {
        let long = format!("{}{i:03}", "n".repeat(61));
        let (s, _) = api
            .call(
                "POST",
                "/api/login",
                "",
                Some(json!({ "user": long, "password": "wrong" })),
            )
            .await;
        assert_eq!(s, 401);
    }
    for i in 0..1000 {
        let token = if i % 2 == 0 { "" } else { "not-a-token" };
        let (s, _) = api.call("GET", "/api/rooms", token, None).await;
        assert_eq!(s, 401);
    }
    let grown = audit_bytes(&server.data.0) - before;
    eprintln!("1250 refused requests (50 with a 1 MB user name): audit files grew {grown} bytes");
    assert!(grown < 256 * 1024, "the audit trail grew {grown} bytes");
    // A real sign-in and a real access are audited in full, each.
    let root = api.login("root", PW).await;
    let (s, trail) = api
        .call("GET", "/api/audit?limit=100000", &root, None)
        .await;
    assert_eq!(s, 200);
    let trail = trail.as_array().expect("entries").clone();
    let rows = |action: &str| trail.iter().filter(|e| e["action"] == action).count();
    eprintln!(
        "audit rows: {} login, {} login_failed, {} refused",
        rows("login"),
        rows("login_failed"),
        rows("refused")
    );
    assert_eq!(rows("login"), 2, "both real sign-ins");
    assert_eq!(rows("login_failed"), 5, "five in full, the rest counted");
    assert!(rows("refused") <= 10, "five per code: {}", rows("refused"));
    assert!(
        trail.iter().all(|e| e.to_string().len() < 2048),
        "no row carries the huge name"
    );
    assert!(
        server
            .metric("medsfu_control_logins_total{result=\"failed\"}")
            .await
            >= 200.0,
        "every refusal is still counted"
    );
    // The minute is not over, yet nothing counted is lost when the server stops: the
    // summaries are written at shutdown, naming the first accounts tried.
    let (status, _, data) = server.terminate(Duration::from_secs(20)).await;
    assert!(status.success(), "{status}");
    let db = rusqlite::Connection::open(data.0.join("audit.db")).expect("open the trail");
    let mut q = db
        .prepare("SELECT source, detail FROM audit WHERE action = 'refused_aggregated'")
        .expect("query");
    let rows: Vec<(String, serde_json::Value)> = q
        .query_map([], |r| {
            let d: String = r.get(1)?;
            Ok((r.get(0)?, serde_json::from_str(&d).unwrap_or_default()))
        })
        .expect("rows")
        .collect::<Result<_, _>>()
        .expect("rows");
    eprintln!("summaries: {rows:?}");
    let failed = rows
        .iter()
        .find(|(_, d)| d["refused"] == "login_failed")
        .expect("a summary of the failed sign-ins");
    assert_eq!(failed.1["count"], 195, "{failed:?}");
    assert_eq!(
        failed.1["accounts"].as_array().map(Vec::len),
        Some(5),
        "the first five names tried: {failed:?}"
    );
    assert!(failed.0.contains("from=127.0.0.1"), "{failed:?}");
    let counted: u64 = rows
        .iter()
        .filter(|(_, d)| d["refused"] != "login_failed")
        .filter_map(|(_, d)| d["count"].as_u64())
        .sum();
    assert_eq!(counted + rows_refused_in_full(&trail), 1000, "{rows:?}");
}

/// Refusals without a valid token that got a row of their own.
fn rows_refused_in_full(trail: &[serde_json::Value]) -> u64 {
    trail.iter().filter(|e| e["action"] == "refused").count() as u64
}

/// Issue 16 (medium): wrong guesses lock a name only for the address they came from, so a
/// stranger cannot lock a doctor out; and an unknown name answers exactly like a known one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strangers_guesses_lock_out_only_the_stranger_and_unknown_names_look_alike() {
    let server = Server::start(&[]);
    user_add(&server.data.0, "ana", "consultant", PW);
    let api = Api::new(&server);
    // The stranger: another loopback address.
    let stranger = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .expect("client");
    let guess = |user: &str| {
        stranger
            .post(format!("{}/api/login", server.http))
            .header("content-type", "application/json")
            .body(json!({ "user": user, "password": "wrong guess" }).to_string())
            .send()
    };
    for user in ["ana", "ghost"] {
        let mut answers = Vec::new();
        for _ in 0..6 {
            let r = guess(user).await.expect("login");
            let status = r.status().as_u16();
            let v: serde_json::Value =
                serde_json::from_slice(&r.bytes().await.expect("body")).expect("json");
            answers.push((status, v["code"].as_str().unwrap_or_default().to_owned()));
        }
        let want: Vec<(u16, String)> = [401, 401, 401, 401, 429, 429]
            .iter()
            .map(|s| {
                let code = if *s == 401 {
                    "login_failed"
                } else {
                    "account_locked"
                };
                (*s, code.to_owned())
            })
            .collect();
        assert_eq!(answers, want, "{user}");
    }
    // Ana, from her own address, signs in as usual.
    let _ = api.login("ana", PW).await;
}

/// Issue 16 (medium): an open signalling session ends when its token expires (it answered
/// 12 s after expiry before) and when its account is disabled, with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_sessions_end_when_their_token_expires_or_their_account_is_disabled() {
    let server = Server::start(&[]);
    user_add(&server.data.0, "ana", "consultant", PW);
    // A token that lives three seconds.
    let short = support::token_with(&server.data.0, "r-exp", "visitor", "consultant", Some(3));
    let (mut ws, _) = join(&server, &short).await;
    let started = std::time::Instant::now();
    let err = ws.recv_type("error").await;
    let left = ws.recv_type("left").await;
    let after = started.elapsed();
    println!("expired session ended {after:?} after joining (token: 3 s)");
    assert_eq!(
        (err["code"].as_str(), left["reason"].as_str()),
        (Some("token_expired"), Some("token_expired"))
    );
    assert!(after < Duration::from_secs(5), "{after:?}");
    // Ana's session ends within seconds of `medsfu user disable ana`.
    let token = support::token_with(&server.data.0, "r-dis", "ana", "consultant", None);
    let (mut ws, _) = join(&server, &token).await;
    medsfu_ok(&server.data.0, &["user", "disable", "ana"]);
    let disabled_at = std::time::Instant::now();
    let left = ws.recv_type("left").await;
    println!(
        "disabled account's session ended after {:?}",
        disabled_at.elapsed()
    );
    assert_eq!(left["reason"], "account_disabled", "{left}");
    // And it cannot join again.
    let mut again = Ws::connect(&server).await;
    again.send(json!({ "type": "join", "token": token })).await;
    let v = again.recv().await;
    assert_eq!(v["code"], "account_disabled", "{v}");
}

/// Issue 16: the audit trail fails closed (an access it cannot record is refused), its
/// chain is keyed (a key file beside the database), and cutting entries off its end is
/// found by `audit verify` (it once reported "intact").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accesses_the_trail_cannot_record_are_refused_and_a_cut_trail_is_found() {
    let server = Server::start(&[]);
    user_add(&server.data.0, "ana", "consultant", PW);
    let api = Api::new(&server);
    api.login("ana", PW).await;
    let data = server.data.0.clone();
    let key = std::fs::read_to_string(data.join("audit.key")).expect("audit key file");
    assert_eq!(key.trim().len(), 64, "32 bytes in hex");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(data.join("audit.key"))
            .expect("key")
            .permissions(),
    );
    assert_eq!(mode & 0o077, 0, "the key is the server's own: {mode:o}");

    // The trail cannot be written (its lock is in the way): nothing is given out.
    let lock = data.join("audit.db-head.lock");
    let _ = std::fs::remove_file(&lock);
    std::fs::create_dir(&lock).expect("block the trail");
    let (s, v) = api
        .call(
            "POST",
            "/api/login",
            "",
            Some(json!({ "user": "ana", "password": PW })),
        )
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (503, Some("audit_unavailable")),
        "{v}"
    );
    let room = server.token("r1", "dr-x", "lead");
    let (s, v) = api
        .call("GET", "/api/rooms/r1/telemetry", &room, None)
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (503, Some("audit_unavailable")),
        "{v}"
    );
    let mut ws = Ws::connect(&server).await;
    ws.send(json!({ "type": "join", "token": room, "id": 1 }))
        .await;
    let e = ws.recv_type("error").await;
    assert_eq!(e["code"], "audit_unavailable", "{e}");
    // Back: accesses are given again.
    std::fs::remove_dir(&lock).expect("unblock");
    api.login("ana", PW).await;
    let (ws, _) = join(&server, &room).await;
    drop(ws);
    // The server stops (nothing appends any more); its trail verifies, then the last
    // entries are cut off with the database alone.
    let kept = server.kill();
    let data = kept.0.clone();
    let verify = || {
        std::process::Command::new(support::bin())
            .args(["audit", "verify", "--data-dir"])
            .arg(&data)
            .output()
            .expect("medsfu audit verify")
    };
    let out = verify();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && text.starts_with("audit trail intact"),
        "{text}"
    );
    let n: i64 = text
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .expect("entry count");
    let db = rusqlite::Connection::open(data.join("audit.db")).expect("open the trail");
    db.busy_timeout(Duration::from_secs(5))
        .expect("busy timeout");
    db.execute("DELETE FROM audit WHERE seq > ?1", [n - 3])
        .expect("cut the end");
    drop(db);
    let out = verify();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("entries were removed from the end"), "{text}");
}

/// Issue 16: revoking a crew's tablet ends what the crew signed in on it opened (the control
/// API, the signalling session, a WHIP publication) within seconds, and a disabled account's
/// call feed ends, saying why. Before, only account changes reached open sessions, and
/// WHIP/WHEP sessions and the call feed ran on until they ended by themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_device_ends_the_crews_sessions_and_a_disabled_account_loses_its_feed() {
    let server = Server::start(&[]);
    let data = server.data.0.clone();
    user_add(&data, "crew1", "team", "4711");
    user_add(&data, "crew2", "team", "1234");
    user_add(&data, "ana", "consultant", PW);
    user_add(&data, "root", "admin", PW);
    let tablet = device_add(&data, "tablet-7");
    let api = Api::new(&server);
    let ana = api.login("ana", PW).await;
    let root = api.login("root", PW).await;
    let mut feed = Events::open(&server, &ana).await;
    // Two crew members sign in on the same tablet: one publishes the cabin microphone
    // (WHIP), the other follows the call's signalling.
    let crew_login =
        |user: &str, pin: &str| json!({ "device_token": tablet, "user": user, "pin": pin });
    let (s, v) = api
        .call(
            "POST",
            "/api/login/crew",
            "",
            Some(crew_login("crew1", "4711")),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let crew = v["token"].as_str().expect("token").to_owned();
    let (s, call) = api.call("POST", "/api/calls", &crew, None).await;
    assert_eq!(s, 201, "{call}");
    let room = call["name"].as_str().expect("room").to_owned();
    assert_eq!(feed.next().await["type"], "call");
    let (s, v) = api
        .call("POST", &format!("/api/calls/{room}/accept"), &ana, None)
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = api
        .call(
            "POST",
            &format!("/api/rooms/{room}/members"),
            &ana,
            Some(json!({ "user": "crew2" })),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = api
        .call(
            "POST",
            "/api/login/crew",
            "",
            Some(crew_login("crew2", "1234")),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let crew2 = v["token"].as_str().expect("token").to_owned();
    let room_token = api.room_token(&room, &crew2).await;
    let (mut ws, _) = join(&server, &room_token).await;
    let publisher_token = api.room_token(&room, &crew).await;
    let mut whip = medsfu_client::whip(
        &server.http,
        &room,
        &publisher_token,
        medsfu_client::CodecSpec::opus(),
    )
    .await
    .expect("WHIP from the tablet");
    assert_eq!(whip.connected().await, medsfu_client::State::Connected);

    medsfu_ok(&data, &["device", "revoke", "tablet-7"]);
    let revoked_at = std::time::Instant::now();
    let left = ws.recv_type("left").await;
    println!(
        "crew's signalling session ended {:?} after the revocation",
        revoked_at.elapsed()
    );
    assert_eq!(left["reason"], "device_revoked", "{left}");
    assert!(revoked_at.elapsed() < Duration::from_secs(8));
    let (s, v) = api.call("GET", "/api/rooms", &crew, None).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (401, Some("device_revoked")),
        "{v}"
    );
    let mut again = Ws::connect(&server).await;
    again
        .send(json!({ "type": "join", "token": room_token }))
        .await;
    let v = again.recv().await;
    assert_eq!(v["code"], "device_revoked", "{v}");
    // The publication ends on the server's side, in the audit trail with the reason; the
    // revoked token can no longer touch it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (s, trail) = api.call("GET", "/api/audit?limit=1000", &root, None).await;
        assert_eq!(s, 200);
        let ended = trail.as_array().expect("entries").iter().any(|e| {
            let detail: Value = e["detail"]
                .as_str()
                .and_then(|d| serde_json::from_str(d).ok())
                .unwrap_or_default();
            e["action"] == "whip_end" && detail["reason"] == "device_revoked"
        });
        if ended {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no whip_end for the revoked device: {:?}",
            trail
                .as_array()
                .into_iter()
                .flatten()
                .filter(|e| e["action"].as_str().is_some_and(|a| a.starts_with("whip")))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(whip.delete().await.expect("DELETE"), 401);

    // Ana's call feed ends within seconds of `user disable`, with the reason.
    medsfu_ok(&data, &["user", "disable", "ana"]);
    let ended = loop {
        let ev = feed.next().await;
        if ev["type"] == "ended" {
            break ev;
        }
    };
    assert_eq!(ended["reason"], "account_disabled", "{ended}");
}
