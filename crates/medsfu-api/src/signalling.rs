//! The WebSocket signalling protocol of the consultation app (see `docs/signalling.md`).

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use std::sync::Arc;

use medsfu_core::{LeaveReason, ParticipantId, RoomEvent, TrackId, TrackSource};
use medsfu_media::{Joined, MediaError, SessionEvent, SessionKind};
use medsfu_telemetry::hub::{Feed, Item};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tracing::{debug, info};

use crate::{ApiError, AppState, Grant};

/// Largest signalling message accepted; larger ones get an error and are ignored.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Frames beyond this close the socket (the transport refuses to buffer them).
const MAX_FRAME_BYTES: usize = 1024 * 1024;
const PING_EVERY: Duration = Duration::from_secs(10);
const DEAD_AFTER: Duration = Duration::from_secs(30);
/// A frame the client does not take within this long ends the session: a client that
/// stopped reading (its TCP window shut) must not hold the session, and the events
/// queued for it, for good.
const SEND_WITHIN: Duration = Duration::from_secs(10);
/// A connection must send its join within this long.
const JOIN_WITHIN: Duration = Duration::from_secs(10);

/// A message from the client.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum ClientMessage {
    Join {
        token: String,
        /// MIME types the client decodes (e.g. from `RTCRtpReceiver.getCapabilities`);
        /// without it, every codec is assumed.
        #[serde(default)]
        codecs: Option<Vec<String>>,
        #[serde(default)]
        id: Option<Value>,
    },
    Publish {
        sdp: String,
        #[serde(default)]
        sources: HashMap<String, String>,
        #[serde(default)]
        id: Option<Value>,
    },
    Answer {
        sdp: String,
        #[serde(default)]
        id: Option<Value>,
    },
    Subscribe {
        track: String,
        #[serde(default)]
        id: Option<Value>,
    },
    Unsubscribe {
        track: String,
        #[serde(default)]
        id: Option<Value>,
    },
    Candidate {
        target: Target,
        candidate: String,
        #[serde(default, alias = "sdpMid")]
        sdp_mid: Option<String>,
        /// Accepted for compatibility with browser candidate objects; unused.
        #[serde(default, alias = "sdpMLineIndex")]
        #[allow(dead_code)]
        sdp_mline_index: Option<u32>,
        /// Accepted for compatibility with browser candidate objects; unused.
        #[serde(default, alias = "usernameFragment")]
        #[allow(dead_code)]
        username_fragment: Option<String>,
        #[serde(default)]
        id: Option<Value>,
    },
    Leave {
        #[serde(default)]
        id: Option<Value>,
    },
    Ping {
        #[serde(default)]
        id: Option<Value>,
    },
    Chat {
        text: String,
        #[serde(default)]
        id: Option<Value>,
    },
    Camera {
        /// The vehicle's participant id (`P<n>`).
        vehicle: String,
        #[serde(default)]
        pan_deg: Option<f32>,
        #[serde(default)]
        zoom: Option<f32>,
        #[serde(default)]
        sector: Option<u8>,
        #[serde(default)]
        screenshot: bool,
        #[serde(default)]
        id: Option<Value>,
    },
    Record {
        action: RecordAction,
        #[serde(default)]
        id: Option<Value>,
    },
    EcgSnapshot {
        /// Seconds of ECG (1-10).
        #[serde(default = "ten")]
        seconds: u16,
        #[serde(default)]
        id: Option<Value>,
    },
    Screenshot {
        /// The video track (`T<n>`).
        track: String,
        /// 0: the whole picture; 1-9: a sector of a 3x3 grid, row by row.
        #[serde(default)]
        sector: u8,
        #[serde(default)]
        id: Option<Value>,
    },
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum RecordAction {
    Start,
    Stop,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum Target {
    Publisher,
    Subscriber,
}

pub async fn upgrade(
    State(state): State<AppState>,
    axum::Extension(origin): axum::Extension<crate::control_api::Origin>,
    ws: WebSocketUpgrade,
) -> Response {
    let span = tracing::Span::current();
    // "signalling req=N from=IP": where the session's audited accesses come from.
    let source = origin.0.replacen("http", "signalling", 1);
    ws.max_message_size(MAX_FRAME_BYTES)
        .max_frame_size(MAX_FRAME_BYTES)
        .on_upgrade(move |socket| {
            use tracing::Instrument as _;
            // The session outlives the request; it keeps the request's span (its id).
            session(state, socket, source).instrument(span)
        })
}

fn error(code: &str, message: impl Into<String>, id: Option<Value>) -> Value {
    json!({ "type": "error", "code": code, "message": message.into(), "id": id })
}

/// A track id as the wire writes it (`T<n>`).
pub(crate) fn parse_track(s: &str) -> Option<TrackId> {
    s.strip_prefix('T')?.parse().ok().map(TrackId)
}

fn event_json(ev: &SessionEvent) -> Value {
    match ev {
        SessionEvent::Room(RoomEvent::ParticipantJoined(p)) => json!({
            "type": "participant_joined", "participant": p.id.to_string(),
            "identity": p.identity, "role": p.role.as_str(),
        }),
        SessionEvent::Room(RoomEvent::ParticipantLeft {
            participant,
            reason,
        }) => json!({
            "type": "participant_left", "participant": participant.to_string(),
            "reason": reason.as_str(),
        }),
        SessionEvent::Room(RoomEvent::TrackPublished(t)) => json!({
            "type": "track_published", "track": t.id.to_string(),
            "publisher": t.publisher.to_string(), "identity": t.publisher_identity,
            "source": t.source.as_str(),
            "kind": if t.codec.is_video() { "video" } else { "audio" },
            "codec": t.codec.mime(),
        }),
        SessionEvent::Room(RoomEvent::TrackUnpublished { track }) => json!({
            "type": "track_unpublished", "track": track.to_string(),
        }),
        SessionEvent::Room(RoomEvent::ActiveSpeaker { participant }) => json!({
            "type": "active_speaker", "participant": participant.to_string(),
        }),
        SessionEvent::Room(RoomEvent::RoleChanged { participant, role }) => json!({
            "type": "role_changed", "participant": participant.to_string(),
            "role": role.as_str(),
        }),
        SessionEvent::Offer { sdp, tracks } => json!({
            "type": "offer", "sdp": sdp,
            "tracks": tracks.iter().map(|(mid, t)| json!({"mid": mid, "track": t.to_string()})).collect::<Vec<_>>(),
        }),
        SessionEvent::Removed(reason) => json!({ "type": "left", "reason": reason.as_str() }),
        SessionEvent::Error { code, message } => error(code, message.clone(), None),
        SessionEvent::CameraState { vehicle, id, state } => json!({
            "type": "camera_state", "vehicle": vehicle.to_string(), "command": id,
            "pan_deg": state.pan_deg, "zoom": state.zoom, "sector": state.sector,
        }),
        SessionEvent::Recording { active } => json!({ "type": "recording", "active": active }),
        SessionEvent::CameraGrant { camera } => json!({ "type": "camera_grant", "camera": camera }),
        SessionEvent::RecordingFailed { track, message } => json!({
            "type": "recording_failed", "track": track.to_string(), "message": message,
        }),
        SessionEvent::Screenshot { request, result } => match result {
            Ok(file) => json!({ "type": "screenshot", "request": request, "file": file }),
            Err(e) => json!({ "type": "screenshot", "request": request, "error": e }),
        },
        _ => json!({ "type": "unknown_event" }),
    }
}

async fn send(socket: &mut WebSocket, v: &Value) -> bool {
    send_frame(
        socket,
        Message::Text(Utf8Bytes::from(v.to_string())),
        SEND_WITHIN,
    )
    .await
}

/// Sends one frame; false when the connection failed or did not take it within `limit`.
async fn send_frame(socket: &mut WebSocket, frame: Message, limit: Duration) -> bool {
    matches!(
        tokio::time::timeout(limit, socket.send(frame)).await,
        Ok(Ok(()))
    )
}

/// Reads the next text message, answering oversize or binary frames with an error.
enum Incoming {
    Text(String),
    Closed,
    Other,
}

async fn next(socket: &mut WebSocket, last_seen: &mut Instant) -> Incoming {
    match socket.recv().await {
        Some(Ok(msg)) => {
            *last_seen = Instant::now();
            match msg {
                Message::Text(t) if t.len() > MAX_MESSAGE_BYTES => {
                    let e = error(
                        "message_too_large",
                        format!("messages are limited to {MAX_MESSAGE_BYTES} bytes"),
                        None,
                    );
                    if send(socket, &e).await {
                        Incoming::Other
                    } else {
                        Incoming::Closed
                    }
                }
                Message::Text(t) => Incoming::Text(t.to_string()),
                Message::Binary(_) => {
                    let e = error("bad_message", "messages are JSON text", None);
                    if send(socket, &e).await {
                        Incoming::Other
                    } else {
                        Incoming::Closed
                    }
                }
                Message::Close(_) => Incoming::Closed,
                _ => Incoming::Other,
            }
        }
        _ => Incoming::Closed,
    }
}

/// Parses one client message (size limits aside); returns its type, or the JSON error
/// message that would be sent back, as text.
pub fn parse_client_message(text: &str) -> Result<&'static str, String> {
    match parse(text) {
        Ok(m) => Ok(kind(&m)),
        Err(e) => Err(e.to_string()),
    }
}

/// A message's type as the wire names it.
fn kind(m: &ClientMessage) -> &'static str {
    match m {
        ClientMessage::Join { .. } => "join",
        ClientMessage::Publish { .. } => "publish",
        ClientMessage::Answer { .. } => "answer",
        ClientMessage::Subscribe { .. } => "subscribe",
        ClientMessage::Unsubscribe { .. } => "unsubscribe",
        ClientMessage::Candidate { .. } => "candidate",
        ClientMessage::Leave { .. } => "leave",
        ClientMessage::Ping { .. } => "ping",
        ClientMessage::Chat { .. } => "chat",
        ClientMessage::Camera { .. } => "camera",
        ClientMessage::Record { .. } => "record",
        ClientMessage::Screenshot { .. } => "screenshot",
        ClientMessage::EcgSnapshot { .. } => "ecg_snapshot",
    }
}

/// What a session may ask, per kind of request: a token bucket each, as (burst, refill
/// per second). Chat lines are journaled and sent to everyone; screenshots, ECG
/// snapshots and recording switches decode video, read the room's whole history or start
/// writers: a client must not make the server do that in a loop. Everything else
/// (signalling proper: offers, answers, candidates, camera steps, pings) gets a generous
/// allowance that only a broken or hostile client meets.
const BUDGETS: [(f64, f64); 4] = [(200.0, 50.0), (10.0, 5.0), (5.0, 1.0), (5.0, 1.0)];

fn budget_class(kind: &str) -> usize {
    match kind {
        "chat" => 1,
        "ecg_snapshot" | "screenshot" => 2,
        "record" => 3,
        _ => 0,
    }
}

/// A session's request allowance (see [`BUDGETS`]).
#[derive(Debug)]
pub(crate) struct RequestBudget {
    buckets: [(f64, Instant); 4],
}

impl RequestBudget {
    pub(crate) fn new(now: Instant) -> RequestBudget {
        RequestBudget {
            buckets: BUDGETS.map(|(burst, _)| (burst, now)),
        }
    }

    /// Takes one request of `kind`; when the allowance is spent, how long until it is not.
    pub(crate) fn take(&mut self, kind: &str, now: Instant) -> Result<(), Duration> {
        let c = budget_class(kind);
        let (burst, rate) = BUDGETS[c];
        let (tokens, at) = &mut self.buckets[c];
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * rate).min(burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / rate))
        }
    }
}

fn parse(text: &str) -> Result<ClientMessage, Value> {
    serde_json::from_str::<ClientMessage>(text).map_err(|e| {
        let known = serde_json::from_str::<Value>(text)
            .ok()
            .and_then(|v| v.get("type").and_then(Value::as_str).map(str::to_owned));
        let id = serde_json::from_str::<Value>(text)
            .ok()
            .and_then(|v| v.get("id").cloned());
        match known {
            Some(t)
                if ![
                    "join",
                    "publish",
                    "answer",
                    "subscribe",
                    "unsubscribe",
                    "candidate",
                    "leave",
                    "ping",
                    "chat",
                    "camera",
                ]
                .contains(&t.as_str()) =>
            {
                error("unknown_message", format!("unknown message type {t:?}"), id)
            }
            _ => error("bad_message", e.to_string(), id),
        }
    })
}

async fn session(state: AppState, mut socket: WebSocket, source: String) {
    let s = &state.inner;
    let mut last_seen = Instant::now();
    // The first message must be a join with a valid token, within JOIN_WITHIN.
    let deadline = tokio::time::Instant::now() + JOIN_WITHIN;
    let (grant, join_id, decodes_h265) = loop {
        let incoming = tokio::time::timeout_at(deadline, next(&mut socket, &mut last_seen)).await;
        let text = match incoming {
            Ok(Incoming::Text(t)) => t,
            Ok(Incoming::Other) => continue,
            Ok(Incoming::Closed) => return,
            Err(_) => {
                let _ = send(
                    &mut socket,
                    &error("join_timeout", "no join within 10 s", None),
                )
                .await;
                let _ = send_frame(&mut socket, Message::Close(None), SEND_WITHIN).await;
                return;
            }
        };
        match parse(&text) {
            Ok(ClientMessage::Join { token, codecs, id }) => {
                let decodes_h265 = codecs.as_ref().is_none_or(|c| {
                    c.iter()
                        .any(|m| medsfu_core::Codec::from_mime(m) == Some(medsfu_core::Codec::H265))
                });
                match s.tokens.verify(&token, SystemTime::now()) {
                    Ok(g) if !crate::valid_room(&g.room) => {
                        let e = error("bad_room", crate::ROOM_RULE, id);
                        if !send(&mut socket, &e).await {
                            return;
                        }
                    }
                    Ok(g) => match state.current_role(g).await {
                        Ok(g) => break (g, id, decodes_h265),
                        Err(e) => {
                            if !send(&mut socket, &error(e.code, e.message, id)).await {
                                return;
                            }
                        }
                    },
                    Err(e) => {
                        if !send(&mut socket, &error(e.code(), e.to_string(), id)).await {
                            return;
                        }
                    }
                }
            }
            Ok(_) => {
                if !send(&mut socket, &error("not_joined", "send join first", None)).await {
                    return;
                }
            }
            Err(e) => {
                if !send(&mut socket, &e).await {
                    return;
                }
            }
        }
    };
    let (tx, events) = mpsc::channel(medsfu_media::SESSION_EVENTS);
    let joined = match s
        .media
        .join_decoding(
            &grant.room,
            &grant.identity,
            grant.role,
            SessionKind::Signalling,
            decodes_h265,
            tx,
        )
        .await
    {
        Ok(j) => j,
        Err(e) => {
            let _ = send(&mut socket, &error(e.code(), e.to_string(), join_id)).await;
            let _ = send_frame(&mut socket, Message::Close(None), SEND_WITHIN).await;
            return;
        }
    };
    let me = joined.participant;
    let span = tracing::info_span!("session", room = %grant.room, participant = %me);
    use tracing::Instrument as _;
    // A recorder is no member: the desk's presence and roles are not about it.
    let control = state
        .inner
        .control
        .clone()
        .filter(|_| grant.role != medsfu_core::Role::Recorder);
    let (room, identity) = (grant.room.clone(), grant.identity.clone());
    let mut grant = grant;
    if let Some(c) = &control {
        // Gives the media session the membership's role as it is now (a hand-over may
        // have come between reading it and joining), or removes it.
        c.connected(&room, &identity, me.0).await;
        if let Ok(now) = state.current_role(grant.clone()).await {
            grant.role = now.role;
        }
    }
    joined_session(state, socket, grant, join_id, joined, events, source)
        .instrument(span)
        .await;
    if let Some(c) = &control {
        c.disconnected(&room, &identity, me.0).await;
    }
}

/// A signalling session after its join, until it ends.
async fn joined_session(
    state: AppState,
    mut socket: WebSocket,
    grant: Grant,
    join_id: Option<Value>,
    joined: Joined,
    mut events: mpsc::Receiver<SessionEvent>,
    source: String,
) {
    let s = &state.inner;
    let me = joined.participant;
    let last_seen = Instant::now();
    info!(role = grant.role.as_str(), "signalling session joined");
    if let Err(e) = state
        .audit(
            &grant.identity,
            grant.role,
            "join",
            &grant.room,
            &source,
            json!({ "participant": me.to_string() }),
        )
        .await
    {
        // Not audited, not admitted.
        let _ = send(&mut socket, &error(e.code, e.message.clone(), join_id)).await;
        s.media.leave(me).await;
        return;
    }
    let may_publish: Vec<&str> = TrackSource::ALL
        .iter()
        .filter(|src| grant.role.may_publish(**src))
        .map(|src| src.as_str())
        .collect();
    let hello = json!({
        "type": "joined", "id": join_id, "participant": me.to_string(),
        "identity": grant.identity, "role": grant.role.as_str(), "room": grant.room,
        "may_publish": may_publish,
        "stale_after_ms": { "media": s.page_stale_ms.0, "vitals": s.page_stale_ms.1 },
    });
    let mut ended_by_server = false;
    if send(&mut socket, &hello).await {
        let feed = if crate::telemetry::may_read(grant.role) {
            if let Err(e) = state
                .audit(
                    &grant.identity,
                    grant.role,
                    "history_replay",
                    &grant.room,
                    &source,
                    json!({ "participant": me.to_string() }),
                )
                .await
            {
                let _ = send(&mut socket, &error(e.code, e.message.clone(), None)).await;
                s.media.leave(me).await;
                return;
            }
            match replay(&state, &mut socket, &grant.room).await {
                Ok(f) => f,
                Err(()) => {
                    s.media.leave(me).await;
                    return;
                }
            }
        } else {
            None
        };
        let mut who = Who {
            source,
            me,
            room: grant.room.clone(),
            identity: grant.identity.clone(),
            role: grant.role,
            issued_at_ms: grant.issued_at_ms,
            expires_at: grant.expires_at,
            device: grant.device.clone(),
        };
        ended_by_server = run(&state, &mut socket, &mut events, &mut who, feed, last_seen).await;
    }
    // A proper close frame, so clients see a normal closure rather than a dropped link.
    let _ = send_frame(&mut socket, Message::Close(None), SEND_WITHIN).await;
    if !ended_by_server {
        s.media.leave(me).await;
    }
    debug!(participant = %me, "signalling session closed");
}

/// Frames per `telemetry` message.
const TELEMETRY_BATCH: usize = 100;

fn telemetry_json(items: &[Arc<Item>]) -> Value {
    json!({
        "type": "telemetry",
        "frames": items.iter().map(|i| &i.json).collect::<Vec<_>>(),
    })
}

/// Sends the room's telemetry history, then `telemetry_live`; returns the feed for the
/// live frames (`None` if the journal is unavailable, which the client is told).
async fn replay(state: &AppState, socket: &mut WebSocket, room: &str) -> Result<Option<Feed>, ()> {
    let mut feed = match crate::telemetry::open_feed(state, room).await {
        Ok(f) => f,
        Err(e) => {
            let m = error(e.code, e.message, None);
            return if send(socket, &m).await {
                Ok(None)
            } else {
                Err(())
            };
        }
    };
    loop {
        let items = match feed.history_chunk().await {
            Ok(Some(items)) => items,
            Ok(None) => break,
            Err(e) => {
                let m = error(e.code(), format!("telemetry journal: {e}"), None);
                return if send(socket, &m).await {
                    Ok(None)
                } else {
                    Err(())
                };
            }
        };
        for chunk in items.chunks(TELEMETRY_BATCH) {
            if !send(socket, &telemetry_json(chunk)).await {
                return Err(());
            }
        }
    }
    if !send(socket, &json!({ "type": "telemetry_live" })).await {
        return Err(());
    }
    Ok(Some(feed))
}

/// Who a joined session is.
struct Who {
    /// Where from, for the audit trail.
    source: String,
    me: ParticipantId,
    room: String,
    identity: String,
    role: medsfu_core::Role,
    /// The token's issue and expiry times (seconds since 1970): the session ends when the
    /// token expires or is revoked.
    issued_at_ms: u64,
    expires_at: u64,
    /// The device a crew member signed in on: revoking it ends the session.
    device: Option<String>,
}

impl Who {
    fn grant(&self) -> Grant {
        Grant {
            identity: self.identity.clone(),
            room: self.room.clone(),
            role: self.role,
            issued_at_ms: self.issued_at_ms,
            expires_at: self.expires_at,
            device: self.device.clone(),
        }
    }
}

/// Tells the client why its session ends (its token expired or was revoked) and closes.
async fn end_for(socket: &mut WebSocket, e: &ApiError) {
    let _ = send(socket, &error(e.code, e.message.clone(), None)).await;
    let bye = json!({ "type": "left", "reason": e.code });
    let _ = send(socket, &bye).await;
    let _ = send_frame(socket, Message::Close(None), SEND_WITHIN).await;
}

async fn next_telemetry(feed: &mut Option<Feed>) -> Option<Vec<Arc<Item>>> {
    match feed {
        Some(f) => f.next().await,
        None => std::future::pending().await,
    }
}

/// Serves a joined session until either side ends it; true when the server ended it.
async fn run(
    state: &AppState,
    socket: &mut WebSocket,
    events: &mut mpsc::Receiver<SessionEvent>,
    who: &mut Who,
    mut feed: Option<Feed>,
    mut last_seen: Instant,
) -> bool {
    let me = who.me;
    let mut budget = RequestBudget::new(Instant::now());
    let mut ping = tokio::time::interval(PING_EVERY);
    let revoked = state.revoked(who.grant());
    tokio::pin!(revoked);
    let expires = std::time::UNIX_EPOCH
        .checked_add(Duration::from_secs(who.expires_at))
        .unwrap_or(std::time::UNIX_EPOCH + Duration::from_secs(u64::from(u32::MAX)));
    let expiry = tokio::time::sleep(
        expires
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    );
    tokio::pin!(expiry);
    loop {
        tokio::select! {
            () = &mut expiry => {
                end_for(socket, &ApiError::from(crate::TokenError::Expired)).await;
                return false;
            }
            () = state.stopping() => {
                let bye = serde_json::json!({
                    "type": "server_shutdown",
                    "message": "the server is stopping; reconnect in a moment",
                });
                let _ = send(socket, &bye).await;
                let _ = send_frame(socket, Message::Close(None), SEND_WITHIN).await;
                return true;
            }
            batch = next_telemetry(&mut feed) => match batch {
                Some(items) => {
                    for chunk in items.chunks(TELEMETRY_BATCH) {
                        if !send(socket, &telemetry_json(chunk)).await {
                            return false;
                        }
                    }
                }
                None => feed = None,
            },
            ev = events.recv() => {
                let Some(ev) = ev else { return true };
                let removed = matches!(ev, SessionEvent::Removed(_));
                if let SessionEvent::Room(RoomEvent::RoleChanged { participant, role }) = &ev {
                    if *participant == me {
                        who.role = *role;
                    }
                }
                if !send(socket, &event_json(&ev)).await || removed {
                    return removed;
                }
            }
            incoming = next(socket, &mut last_seen) => match incoming {
                Incoming::Closed => return false,
                Incoming::Other => {}
                Incoming::Text(text) => {
                    let mut parsed = parse(&text);
                    if let Ok(m) = &parsed {
                        if let Err(wait) = budget.take(kind(m), Instant::now()) {
                            state.inner.signalling_limited.inc();
                            let id = serde_json::from_str::<Value>(&text)
                                .ok()
                                .and_then(|v| v.get("id").cloned());
                            let msg = format!(
                                "too many {} requests: try again in {:.1} s",
                                kind(m),
                                wait.as_secs_f64()
                            );
                            parsed = Err(error("rate_limited", msg, id));
                        }
                    }
                    let audited = parsed.as_ref().ok().and_then(auditable);
                    let reply = match parsed {
                        Ok(ClientMessage::Chat { text, id }) => chat(state, who, text, id).await,
                        Ok(ClientMessage::EcgSnapshot { seconds, id }) => {
                            Some(ecg_snapshot(state, who, seconds, id).await)
                        }
                        Ok(msg) => handle(state, me, msg).await,
                        Err(e) => Some(e),
                    };
                    if let Some((action, detail)) = audited {
                        // Only what was done: refused requests change nothing.
                        if reply.as_ref().is_none_or(|r| r["type"] != "error") {
                            // Done already (a camera move, a chat line): recorded when the
                            // trail allows; a failure is logged by the trail's writer.
                            let _ = state.audit(&who.identity, who.role, action, &who.room, &who.source, detail).await;
                        }
                    }
                    let leaving = reply.as_ref().is_some_and(|r| r["type"] == "left");
                    if let Some(r) = reply {
                        if !send(socket, &r).await {
                            return false;
                        }
                    }
                    if leaving {
                        return true;
                    }
                }
            },
            e = &mut revoked => {
                end_for(socket, &e).await;
                return false;
            }
            _ = ping.tick() => {
                if last_seen.elapsed() > DEAD_AFTER {
                    return false;
                }
                if !send_frame(socket, Message::Ping(Default::default()), SEND_WITHIN).await {
                    return false;
                }
            }
        }
    }
}

/// The audit trail's name and details of a message that reads patient data or changes
/// something; `None` for the others.
fn auditable(m: &ClientMessage) -> Option<(&'static str, Value)> {
    Some(match m {
        ClientMessage::Subscribe { track, .. } => ("subscribe", json!({ "track": track })),
        ClientMessage::Camera {
            vehicle,
            pan_deg,
            zoom,
            sector,
            screenshot,
            ..
        } => (
            "camera",
            json!({ "vehicle": vehicle, "pan_deg": pan_deg, "zoom": zoom, "sector": sector, "screenshot": screenshot }),
        ),
        ClientMessage::Record { action, .. } => (
            if *action == RecordAction::Start {
                "record_start"
            } else {
                "record_stop"
            },
            json!({}),
        ),
        ClientMessage::Screenshot { track, sector, .. } => {
            ("screenshot", json!({ "track": track, "sector": sector }))
        }
        ClientMessage::EcgSnapshot { seconds, .. } => {
            ("ecg_snapshot", json!({ "seconds": seconds }))
        }
        _ => return None,
    })
}

fn ten() -> u16 {
    10
}

/// Journals an ECG snapshot request, then writes the PDF of the room's last `seconds` of
/// ECG beside its recordings; answers with the file's name.
async fn ecg_snapshot(state: &AppState, who: &Who, seconds: u16, id: Option<Value>) -> Value {
    if !medsfu_control::may(who.role, medsfu_control::Action::EcgSnapshot) {
        return error(
            "snapshot_forbidden",
            format!("role {} does not ask for ECG snapshots", who.role.as_str()),
            id,
        );
    }
    if !(1..=10).contains(&seconds) {
        return error("bad_message", "seconds must be 1-10", id);
    }
    let Some(dir) = state.inner.recordings.clone() else {
        return error("recording_disabled", "this server stores no documents", id);
    };
    let hub = state.inner.hub.clone();
    let (room, author) = (who.room.clone(), who.identity.clone());
    let now = SystemTime::now();
    let now_us = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64);
    let made = tokio::task::spawn_blocking(move || -> Result<String, (&'static str, String)> {
        let body = medsfu_telemetry::frame::Body::SnapshotRequest {
            requested_by: author.clone(),
            seconds,
        };
        hub.post(&room, &author, body, now_us)
            .map_err(|e| (e.code(), e.to_string()))?;
        let mut feed = hub.feed(&room).map_err(|e| (e.code(), e.to_string()))?;
        // The history in pieces, keeping only the waveforms of the last moments.
        let mut recent = crate::ecg_snapshot::Recent::new(f64::from(seconds));
        while let Some(items) = feed
            .history_chunk_blocking()
            .map_err(|e| (e.code(), e.to_string()))?
        {
            recent.add(&items);
        }
        let traces = crate::ecg_snapshot::last_seconds(recent.items(), f64::from(seconds))
            .ok_or(("no_ecg", "the room has no ECG yet".to_owned()))?;
        let pdf =
            crate::ecg_snapshot::document(&room, &author, now_us, f64::from(seconds), &traces)
                .map_err(|e| ("internal", e))?;
        let name = format!(
            "{}-ecg-snapshot-{seconds}s.pdf",
            medsfu_record::utc::file_stamp(now_us.div_euclid(1_000_000))
        );
        let path = dir.join(&room).join(&name);
        std::fs::create_dir_all(dir.join(&room))
            .and_then(|()| std::fs::write(&path, pdf))
            .map_err(|e| ("storage", format!("{}: {e}", path.display())))?;
        Ok(name)
    })
    .await;
    match made {
        Ok(Ok(file)) => {
            info!(seconds, "ECG snapshot stored");
            json!({ "type": "ecg_snapshot", "file": file, "id": id })
        }
        Ok(Err((code, message))) => error(code, message, id),
        Err(e) => error("internal", e.to_string(), id),
    }
}

/// Longest chat message, in characters.
const MAX_CHAT_CHARS: usize = 1000;

/// Journals a chat message; everyone in the room (the sender too) gets it as telemetry.
async fn chat(state: &AppState, who: &Who, text: String, id: Option<Value>) -> Option<Value> {
    if !crate::telemetry::may_chat(who.role) {
        return Some(error(
            "chat_forbidden",
            format!("role {} does not chat", who.role.as_str()),
            id,
        ));
    }
    let text = text.trim().to_owned();
    if text.is_empty() || text.chars().count() > MAX_CHAT_CHARS {
        return Some(error(
            "bad_message",
            format!("chat text must be 1-{MAX_CHAT_CHARS} characters"),
            id,
        ));
    }
    let hub = state.inner.hub.clone();
    let (room, author) = (who.room.clone(), who.identity.clone());
    let now_us = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64);
    let r = tokio::task::spawn_blocking(move || hub.chat(&room, &author, &text, now_us)).await;
    match r {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(error(e.code(), e.to_string(), id)),
        Err(e) => Some(error("internal", e.to_string(), id)),
    }
}

fn media_error(e: MediaError, id: Option<Value>) -> Value {
    error(e.code(), e.to_string(), id)
}

async fn handle(state: &AppState, me: ParticipantId, msg: ClientMessage) -> Option<Value> {
    let media = &state.inner.media;
    match msg {
        ClientMessage::Join { id, .. } => {
            Some(error("already_joined", "this session already joined", id))
        }
        ClientMessage::Publish { sdp, sources, id } => {
            let mut parsed = HashMap::new();
            for (mid, src) in sources {
                match src.parse::<TrackSource>() {
                    Ok(s) => {
                        parsed.insert(mid, s);
                    }
                    Err(e) => return Some(error("bad_message", e, id)),
                }
            }
            Some(match media.publish(me, sdp, parsed).await {
                Ok(answer) => json!({ "type": "publish_answer", "sdp": answer, "id": id }),
                Err(e) => media_error(e, id),
            })
        }
        ClientMessage::Answer { sdp, id } => match media.subscriber_answer(me, sdp).await {
            Ok(()) => None,
            Err(e) => Some(media_error(e, id)),
        },
        ClientMessage::Subscribe { track, id } | ClientMessage::Unsubscribe { track, id }
            if parse_track(&track).is_none() =>
        {
            Some(error(
                "bad_message",
                format!("{track:?} is not a track id"),
                id,
            ))
        }
        ClientMessage::Subscribe { track, id } => {
            let t = parse_track(&track)?;
            media
                .subscribe(me, t, true)
                .await
                .err()
                .map(|e| media_error(e, id))
        }
        ClientMessage::Unsubscribe { track, id } => {
            let t = parse_track(&track)?;
            media
                .subscribe(me, t, false)
                .await
                .err()
                .map(|e| media_error(e, id))
        }
        ClientMessage::Candidate {
            target,
            candidate,
            sdp_mid,
            id,
            ..
        } => {
            let publisher = target == Target::Publisher;
            media
                .candidate(me, publisher, sdp_mid, candidate)
                .await
                .err()
                .map(|e| media_error(e, id))
        }
        ClientMessage::Leave { id } => {
            media.leave(me).await;
            Some(json!({ "type": "left", "reason": LeaveReason::Left.as_str(), "id": id }))
        }
        ClientMessage::Ping { id } => Some(json!({ "type": "pong", "id": id })),
        // Handled by the caller, which knows the room and identity.
        ClientMessage::Chat { id, .. } => Some(error("internal", "chat not routed", id)),
        ClientMessage::EcgSnapshot { id, .. } => {
            Some(error("internal", "ecg_snapshot not routed", id))
        }
        ClientMessage::Camera {
            vehicle,
            pan_deg,
            zoom,
            sector,
            screenshot,
            id,
        } => {
            let Some(v) = vehicle
                .strip_prefix('P')
                .and_then(|n| n.parse().ok())
                .map(ParticipantId)
            else {
                return Some(error(
                    "bad_message",
                    format!("{vehicle:?} is not a participant id"),
                    id,
                ));
            };
            let command = medsfu_core::CameraCommand {
                pan_deg,
                zoom,
                sector,
                screenshot,
            };
            Some(match media.camera(me, v, command).await {
                Ok(n) => json!({ "type": "camera_sent", "command": n, "id": id }),
                Err(e) => media_error(e, id),
            })
        }
        ClientMessage::Screenshot { track, sector, id } => {
            let Some(t) = parse_track(&track) else {
                return Some(error(
                    "bad_message",
                    format!("{track:?} is not a track id"),
                    id,
                ));
            };
            Some(match media.screenshot(me, t, sector).await {
                Ok(n) => json!({ "type": "screenshot_requested", "request": n, "id": id }),
                Err(e) => media_error(e, id),
            })
        }
        ClientMessage::Record { action, id } => {
            let start = action == RecordAction::Start;
            Some(match media.record(me, start).await {
                Ok(()) => json!({ "type": "record_ok", "recording": start, "id": id }),
                Err(e) => media_error(e, id),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client that stops reading shuts its TCP window; a send to it must give up (and
    /// end the session) instead of waiting for good with the session's events piling up.
    #[tokio::test]
    async fn a_send_to_a_client_that_stopped_reading_gives_up() {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let done_tx = Arc::new(std::sync::Mutex::new(Some(done_tx)));
        let app = axum::Router::new().route(
            "/ws",
            axum::routing::get(move |ws: axum::extract::WebSocketUpgrade| {
                let done_tx = done_tx.clone();
                async move {
                    ws.on_upgrade(move |mut socket| async move {
                        let frame = "x".repeat(64 * 1024);
                        let mut sent = 0usize;
                        // 64 GiB: far beyond any socket buffer; reaching it means the
                        // stalled send was never noticed.
                        while sent < 1_000_000 {
                            let m = Message::Text(Utf8Bytes::from(frame.clone()));
                            if !send_frame(&mut socket, m, Duration::from_millis(500)).await {
                                break;
                            }
                            sent += 1;
                        }
                        // The mutex is only taken here, once per connection.
                        if let Some(t) = done_tx.lock().expect("not poisoned").take() {
                            let _ = t.send(sent);
                        }
                    })
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("bound");
        tokio::spawn(async move { axum::serve(listener, app).await });
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("buffer");
        let stream = socket.connect(addr).await.expect("connect");
        let (_client, _) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), stream)
            .await
            .expect("upgrade");
        // The client never reads.
        let sent = tokio::time::timeout(Duration::from_secs(60), done_rx)
            .await
            .expect("the stalled send ends within a minute")
            .expect("the handler reports");
        assert!(sent > 0, "the first frames fit in the buffers");
        assert!(
            sent < 1_000_000,
            "sent {sent} frames: the stall was not noticed"
        );
    }

    #[test]
    fn each_kind_of_request_has_its_own_allowance() {
        let t0 = Instant::now();
        let mut b = RequestBudget::new(t0);
        // Five ECG snapshots or screenshots at once, then one a second.
        for _ in 0..5 {
            assert_eq!(b.take("ecg_snapshot", t0), Ok(()));
        }
        let wait = b.take("screenshot", t0).expect_err("spent");
        assert!((0.9..=1.0).contains(&wait.as_secs_f64()), "{wait:?}");
        // Recording has its own: a lead who took screenshots may still start it.
        assert_eq!(b.take("record", t0), Ok(()));
        // Chat and signalling are not held back by it.
        for _ in 0..10 {
            assert_eq!(b.take("chat", t0), Ok(()));
        }
        assert!(b.take("chat", t0).is_err());
        for _ in 0..200 {
            assert_eq!(b.take("candidate", t0), Ok(()));
        }
        assert!(b.take("ping", t0).is_err());
        // Time refills each at its own rate, never beyond its burst.
        let later = t0 + Duration::from_secs(1);
        assert_eq!(b.take("screenshot", later), Ok(()));
        assert!(b.take("screenshot", later).is_err());
        let much_later = t0 + Duration::from_secs(3600);
        for _ in 0..10 {
            assert_eq!(b.take("chat", much_later), Ok(()));
        }
        assert!(b.take("chat", much_later).is_err(), "the burst is the cap");
    }
}
