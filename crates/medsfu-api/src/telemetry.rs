//! Telemetry for integrations: `GET /api/rooms/{room}/telemetry` streams a room's frames
//! as NDJSON, its whole history first and then live frames, until the client hangs up.

use std::time::SystemTime;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use medsfu_core::Role;
use medsfu_telemetry::hub::{Feed, Item};
use std::sync::Arc;

use crate::{bearer, ApiError, AppState};

/// Who may read a room's telemetry (the roles table of `medsfu_core::access`).
pub fn may_read(role: Role) -> bool {
    medsfu_core::may(role, medsfu_core::Action::ReadTelemetry)
}

/// Who may write chat messages.
pub fn may_chat(role: Role) -> bool {
    medsfu_core::may(role, medsfu_core::Action::Chat)
}

/// Opens a feed of `room` (reads the journal on a blocking thread).
pub async fn open_feed(state: &AppState, room: &str) -> Result<Feed, ApiError> {
    let hub = state.inner.hub.clone();
    let room = room.to_owned();
    tokio::task::spawn_blocking(move || hub.feed(&room))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                e.code(),
                format!("telemetry journal: {e}"),
            )
        })
}

fn ndjson(items: &[Arc<Item>]) -> Vec<u8> {
    let mut out = Vec::new();
    for i in items {
        // Serialising a serde_json::Value cannot fail.
        let _ = serde_json::to_writer(&mut out, &i.json);
        out.push(b'\n');
    }
    out
}

/// `GET /api/rooms/{room}/telemetry` with a token for that room.
pub async fn stream(
    State(state): State<AppState>,
    Path(room): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if !crate::valid_room(&room) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_room",
            crate::ROOM_RULE,
        ));
    }
    let grant = state
        .inner
        .tokens
        .verify_for_room(bearer(&headers)?, &room, SystemTime::now())?;
    let grant = state.current_role(grant).await?;
    if !may_read(grant.role) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "telemetry_forbidden",
            format!("role {} does not receive telemetry", grant.role.as_str()),
        ));
    }
    state
        .audit(
            &grant.identity,
            grant.role,
            "telemetry_stream",
            &room,
            "http",
            serde_json::json!({}),
        )
        .await?;
    // History first, read in pieces as the client takes them, then live frames.
    let feed = open_feed(&state, &room).await?;
    let frames = futures_util::stream::unfold(feed, |mut feed| async move {
        let batch = feed.next().await?;
        Some((Ok::<_, std::io::Error>(ndjson(&batch)), feed))
    });
    // A stopping server ends the stream (the client reconnects and replays from
    // history), and so does the end of the holder's membership (removed, room closed)
    // or of its sign-in (account disabled, secret changed, device revoked).
    let stopping = state.clone();
    let removed = state
        .inner
        .control
        .as_ref()
        .map(|c| c.revoked(&room, &grant.identity));
    let signed_out = state.clone();
    let body = futures_util::StreamExt::take_until(
        frames,
        Box::pin(async move {
            let removed = async move {
                match removed {
                    Some(r) => r.await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = stopping.stopping() => {}
                () = removed => {}
                _ = signed_out.revoked(grant) => {}
            }
        }),
    );
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        Body::from_stream(body),
    )
        .into_response())
}
