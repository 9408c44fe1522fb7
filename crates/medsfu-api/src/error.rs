//! HTTP errors: a status and a JSON body `{ "code", "message" }` with a stable code.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use medsfu_media::MediaError;

use crate::TokenError;

/// An error answered to an HTTP client.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// Human-readable reason.
    pub message: String,
}

impl ApiError {
    /// An error with this status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "code": self.code, "message": self.message });
        let mut r = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer realm=\"medsfu\""),
            );
        }
        r
    }
}

impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, e.code(), e.to_string())
    }
}

impl From<MediaError> for ApiError {
    fn from(e: MediaError) -> ApiError {
        let status = match &e {
            MediaError::BadSdp(_) => StatusCode::BAD_REQUEST,
            MediaError::Core(c) if c.code().ends_with("_forbidden") => StatusCode::FORBIDDEN,
            // The server's capacity, not the request, is the problem: try again later.
            MediaError::Core(c) if matches!(c.code(), "too_many_rooms" | "room_full") => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            MediaError::Core(_) => StatusCode::UNPROCESSABLE_ENTITY,
            MediaError::UnknownSession => StatusCode::NOT_FOUND,
            MediaError::NoTracks => StatusCode::NOT_FOUND,
            MediaError::NoCodec => StatusCode::NOT_ACCEPTABLE,
            MediaError::NoPendingOffer => StatusCode::CONFLICT,
            MediaError::Stopped => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.code(), e.to_string())
    }
}
