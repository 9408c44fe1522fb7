//! WHIP (RFC 9725) publishing and WHEP subscribing over plain HTTP.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::SystemTime;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use medsfu_core::ParticipantId;
use medsfu_media::sdp::{ice_ufrag, sdpfrag_candidates};
use medsfu_media::{SessionEvent, SessionKind};
use rand::distr::{Alphanumeric, SampleString};
use tokio::sync::mpsc;
use tracing::info;

use crate::control_api::{Origin, Peer};
use crate::{ApiError, AppState, TokenError};

/// Live WHIP/WHEP sessions by their URL id. Touched per HTTP request, never per packet.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

#[derive(Clone)]
struct Session {
    room: String,
    participant: ParticipantId,
    identity: String,
    etag: String,
    publisher: bool,
    /// The client's ICE ufrag from its offer: a PATCH with another one is an ICE restart.
    client_ufrag: Option<String>,
    /// Set when the client ended the session with DELETE (for the audit trail).
    deleted: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Sessions {
    fn get(&self, id: &str) -> Option<Session> {
        self.map.lock().ok()?.get(id).cloned()
    }
    fn insert(&self, id: String, s: Session) {
        if let Ok(mut m) = self.map.lock() {
            m.insert(id, s);
        }
    }
    fn remove(&self, id: &str) -> Option<Session> {
        self.map.lock().ok()?.remove(id)
    }
}

pub(crate) fn bearer(headers: &HeaderMap) -> Result<&str, TokenError> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or(TokenError::Missing)
}

fn sdp_body(headers: &HeaderMap, body: &Bytes) -> Result<String, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct.starts_with("application/sdp") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "content_type",
            "the offer must be sent as application/sdp",
        ));
    }
    String::from_utf8(body.to_vec())
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "bad_sdp", "SDP is not UTF-8"))
}

pub async fn create_whip(
    state: State<AppState>,
    room: Path<String>,
    axum::Extension(origin): axum::Extension<Origin>,
    axum::Extension(peer): axum::Extension<Peer>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let from = (origin, peer);
    create(state, room, from, headers, body, SessionKind::Whip, None).await
}

/// `POST /whep/{room}`: the room's tracks onto the offer's receive m-sections, or with
/// `?track=T<n>` that one track (how a separate recorder takes each track on its own).
pub async fn create_whep(
    state: State<AppState>,
    room: Path<String>,
    RawQuery(query): RawQuery,
    axum::Extension(origin): axum::Extension<Origin>,
    axum::Extension(peer): axum::Extension<Peer>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let mut only = None;
    for pair in query
        .as_deref()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let track = pair.strip_prefix("track=").ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_query",
                "the only query parameter is track=T<n>",
            )
        })?;
        only =
            Some(crate::signalling::parse_track(track).ok_or_else(|| {
                ApiError::new(StatusCode::BAD_REQUEST, "bad_track", "track is T<n>")
            })?);
    }
    let from = (origin, peer);
    create(state, room, from, headers, body, SessionKind::Whep, only).await
}

/// The room's track ids in a WHEP answer (`a=msid:<stream> <track>`), for the audit trail.
fn answered_tracks(answer: &str) -> Vec<String> {
    answer
        .lines()
        .filter_map(|l| l.strip_prefix("a=msid:")?.split_whitespace().nth(1))
        .map(str::to_owned)
        .collect()
}

async fn create(
    State(state): State<AppState>,
    Path(room): Path<String>,
    (origin, peer): (Origin, Peer),
    headers: HeaderMap,
    body: Bytes,
    kind: SessionKind,
    only: Option<medsfu_core::TrackId>,
) -> Result<Response, ApiError> {
    let s = &state.inner;
    if !crate::valid_room(&room) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_room",
            crate::ROOM_RULE,
        ));
    }
    let path = match kind {
        SessionKind::Whip => "whip",
        _ => "whep",
    };
    let granted = match bearer(&headers) {
        Ok(t) => s
            .tokens
            .verify_for_room(t, &room, SystemTime::now())
            .map_err(ApiError::from),
        Err(e) => Err(ApiError::from(e)),
    };
    let granted = match granted {
        Ok(g) => state.current_role(g).await,
        Err(e) => Err(e),
    };
    let grant = match granted {
        Ok(g) => g,
        Err(e) => {
            let detail =
                serde_json::json!({ "refused": e.code, "path": format!("/{path}/{room}") });
            state
                .audit_refusal(peer.0, "", "refused", &origin.0, e.code, detail)
                .await;
            return Err(e);
        }
    };
    let offer = sdp_body(&headers, &body)?;
    let client_ufrag = ice_ufrag(&offer).map(str::to_owned);
    // Reject bad SDP and forbidden media before the participant appears to anyone.
    let sections = medsfu_media::sdp::offered_sections(&offer)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_sdp", e.to_string()))?;
    if kind == SessionKind::Whip {
        medsfu_media::sdp::check_whip(grant.role, &sections)?;
    }
    let (tx, mut rx) = mpsc::channel(medsfu_media::SESSION_EVENTS);
    let joined = s
        .media
        .join(&room, &grant.identity, grant.role, kind, tx)
        .await?;
    let participant = joined.participant;
    let answer = match kind {
        SessionKind::Whip => s.media.publish(participant, offer, HashMap::new()).await,
        _ => s.media.whep_offer(participant, offer, only).await,
    };
    let answer = match answer {
        Ok(a) => a,
        Err(e) => {
            s.media.leave(participant).await;
            return Err(e.into());
        }
    };
    let id = Alphanumeric.sample_string(&mut rand::rng(), 24);
    let deleted = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let etag = format!("\"{}\"", Alphanumeric.sample_string(&mut rand::rng(), 12));
    s.sessions.insert(
        id.clone(),
        Session {
            room: room.clone(),
            participant,
            identity: grant.identity.clone(),
            etag: etag.clone(),
            publisher: kind == SessionKind::Whip,
            client_ufrag,
            deleted: deleted.clone(),
        },
    );
    // Who publishes or watches what, when and from where, like a signalling join.
    let (action, end_action) = match kind {
        SessionKind::Whip => ("whip_publish", "whip_end"),
        _ => ("whep_subscribe", "whep_end"),
    };
    let media: Vec<&str> = sections
        .iter()
        .filter_map(|m| match m.kind? {
            medsfu_core::MediaKind::Audio => Some("audio"),
            medsfu_core::MediaKind::Video => Some("video"),
        })
        .collect();
    let mut detail = serde_json::json!({
        "participant": participant.to_string(),
        "session": id,
        "media": media,
    });
    if kind == SessionKind::Whep {
        detail["tracks"] = serde_json::json!(answered_tracks(&answer));
    }
    if let Err(e) = state
        .audit(
            &grant.identity,
            grant.role,
            action,
            &room,
            &origin.0,
            detail,
        )
        .await
    {
        // Not audited, not served: the session goes before any media flows.
        s.sessions.remove(&id);
        s.media.leave(participant).await;
        return Err(e);
    }
    // Forget the session when the server ends it (DELETE, timeout, replaced by a
    // reconnect), and say so in the audit trail.
    let st = state.clone();
    let sid = id.clone();
    let (who, role, source) = (grant.identity.clone(), grant.role, origin.0.clone());
    let room_name = room.clone();
    tokio::spawn(async move {
        let mut reason = "closed";
        // A disabled account, changed secret or revoked device ends the media too.
        let revoked = st.revoked(grant);
        tokio::pin!(revoked);
        loop {
            tokio::select! {
                ev = rx.recv() => match ev {
                    Some(SessionEvent::Removed(r)) => {
                        reason = r.as_str();
                        break;
                    }
                    Some(_) => {}
                    None => break,
                },
                e = &mut revoked => {
                    reason = e.code;
                    st.inner.media.leave(participant).await;
                    break;
                }
            }
        }
        if deleted.load(std::sync::atomic::Ordering::Acquire) {
            reason = "deleted";
        }
        st.inner.sessions.remove(&sid);
        let detail = serde_json::json!({ "participant": participant.to_string(), "session": sid, "reason": reason });
        // The end of a session is recorded when the trail allows; nothing is left to refuse.
        let _ = st
            .audit(&who, role, end_action, &room_name, &source, detail)
            .await;
    });
    info!(%participant, kind = path, "WHIP/WHEP session created");
    Ok((
        StatusCode::CREATED,
        [
            (header::CONTENT_TYPE, "application/sdp".to_owned()),
            (header::LOCATION, format!("/{path}/{room}/{id}")),
            (header::ETAG, etag),
            (
                header::HeaderName::from_static("accept-patch"),
                "application/trickle-ice-sdpfrag".to_owned(),
            ),
        ],
        answer,
    )
        .into_response())
}

/// The session `id` of `room`, if the request's token still stands and is its owner's.
async fn session_for(
    state: &AppState,
    headers: &HeaderMap,
    room: &str,
    id: &str,
) -> Result<Session, ApiError> {
    let grant = state
        .inner
        .tokens
        .verify_for_room(bearer(headers)?, room, SystemTime::now())?;
    state.still_allowed(&grant, false).await?;
    let session = state
        .inner
        .sessions
        .get(id)
        .filter(|s| s.room == room)
        .ok_or_else(|| {
            ApiError::new(StatusCode::NOT_FOUND, "unknown_session", "no such session")
        })?;
    // Only the session's own identity may change or end it.
    if session.identity != grant.identity {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "not_your_session",
            "this session belongs to another identity",
        ));
    }
    Ok(session)
}

pub async fn patch(
    State(state): State<AppState>,
    Path((room, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let session = session_for(&state, &headers, &room, &id).await?;
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct.starts_with("application/trickle-ice-sdpfrag") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "content_type",
            "PATCH takes application/trickle-ice-sdpfrag",
        ));
    }
    if let Some(m) = headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok()) {
        if m != "*" && m != session.etag {
            return Err(ApiError::new(
                StatusCode::PRECONDITION_FAILED,
                "etag_mismatch",
                "If-Match does not match the session's ETag",
            ));
        }
    }
    let frag = String::from_utf8_lossy(&body);
    // RFC 9725 4.3.1: a session that takes trickled candidates but cannot restart ICE
    // answers an ICE restart (new ufrag and password) with 422 and keeps the session.
    if let Some(ufrag) = ice_ufrag(&frag) {
        if session.client_ufrag.as_deref() != Some(ufrag) {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "ice_restart_unsupported",
                "ICE restart is not supported: the session keeps its ICE credentials; \
                 DELETE it and POST a new offer to reconnect",
            ));
        }
    }
    let publisher = session.publisher;
    for (mid, cand) in sdpfrag_candidates(&frag) {
        // With ICE-lite the server learns the client's address from its checks; a
        // candidate it cannot use is not an error for the client.
        let _ = state
            .inner
            .media
            .candidate(session.participant, publisher, mid, cand)
            .await;
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn delete(
    State(state): State<AppState>,
    Path((room, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let session = session_for(&state, &headers, &room, &id).await?;
    session
        .deleted
        .store(true, std::sync::atomic::Ordering::Release);
    state.inner.sessions.remove(&id);
    state.inner.media.leave(session.participant).await;
    Ok(StatusCode::OK.into_response())
}

pub async fn options() -> impl IntoResponse {
    (
        StatusCode::NO_CONTENT,
        [
            (
                header::HeaderName::from_static("accept-post"),
                "application/sdp",
            ),
            (
                header::HeaderName::from_static("accept-patch"),
                "application/trickle-ice-sdpfrag",
            ),
        ],
    )
}
