//! The consultation page, compiled into the binary so that `medsfu` runs from anywhere.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use std::time::Duration;

use axum::Json;
use prometheus::Encoder;
use serde_json::json;

use crate::AppState;

pub async fn index() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        include_str!("../../../web/index.html"),
    )
}

pub async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../../../web/app.js"),
    )
}

pub async fn telemetry_script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../../../web/telemetry.js"),
    )
}

pub async fn style() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("../../../web/app.css"),
    )
}

pub async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready for traffic: not stopping, the telemetry journal directory takes a durable
/// write, and the media engine answers. 503 names what is not ready.
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let mut failing = Vec::new();
    if *state.inner.stopping.borrow() {
        failing.push("stopping");
    }
    let hub = state.inner.hub.clone();
    if !matches!(
        tokio::task::spawn_blocking(move || hub.probe_writable()).await,
        Ok(Ok(()))
    ) {
        failing.push("journal");
    }
    let media = tokio::time::timeout(Duration::from_secs(1), state.inner.media.counts()).await;
    if !matches!(media, Ok(Ok(_))) {
        failing.push("media");
    }
    if failing.is_empty() {
        (StatusCode::OK, Json(json!({ "status": "ready" })))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "not_ready", "failing": failing })),
        )
    }
}

/// Prometheus text exposition of every registered metric.
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    if let Some((free, size)) = &state.inner.disk {
        // The journal directory appears with the first room: until then, its parent.
        let dir = state.inner.hub.dir();
        let dir = dir.ancestors().find(|a| a.exists()).unwrap_or(dir);
        if let Ok(s) = rustix::fs::statvfs(dir) {
            free.set(i64::try_from(s.f_bavail.saturating_mul(s.f_frsize)).unwrap_or(i64::MAX));
            size.set(i64::try_from(s.f_blocks.saturating_mul(s.f_frsize)).unwrap_or(i64::MAX));
        }
    }
    let enc = prometheus::TextEncoder::new();
    let mut buf = Vec::new();
    match enc.encode(&state.inner.metrics.gather(), &mut buf) {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, enc.format_type().to_owned())],
            buf,
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain".to_owned())],
            e.to_string().into_bytes(),
        ),
    }
}
