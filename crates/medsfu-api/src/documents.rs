//! A call's documents for its participants: `GET /api/rooms/{room}/documents` lists the
//! screenshots, ECG snapshots and recordings stored with the room, and
//! `GET /api/rooms/{room}/documents/{name}` serves one. Every participant of a room sees all
//! of its data (requirements), so any role that reads the room's telemetry may read them.

use std::path::{Path as FsPath, PathBuf};
use std::time::SystemTime;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use tokio::io::AsyncReadExt as _;

use crate::{bearer, ApiError, AppState};

/// At most this many documents are listed (the newest).
pub const MAX_LISTED: usize = 1000;

/// The longest document name served.
const MAX_NAME: usize = 200;

/// One stored document.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Document {
    /// File name, as in the URL that serves it.
    pub name: String,
    /// `screenshot`, `ecg_snapshot`, `video`, `audio` or `metadata`.
    pub kind: &'static str,
    /// Size in bytes.
    pub bytes: u64,
    /// Last written, ms since 1970.
    pub modified_ms: i64,
}

/// The kind and content type of a document by its name; `None`: not served.
pub fn kind_of(name: &str) -> Option<(&'static str, &'static str)> {
    let ext = name.rsplit_once('.')?.1;
    Some(match ext {
        "png" => ("screenshot", "image/png"),
        "pdf" => ("ecg_snapshot", "application/pdf"),
        "mp4" => ("video", "video/mp4"),
        "ogg" | "opus" => ("audio", "audio/ogg"),
        "json" => ("metadata", "application/json"),
        _ => return None,
    })
}

/// Whether `name` is a plain file name medsfu could have written: no path, no hidden
/// file, nothing but letters, digits, `.`, `_` and `-`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The documents of the room stored in `dir` (the room's directory), newest first.
pub fn list(dir: &FsPath) -> std::io::Result<Vec<Document>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some((kind, _)) = kind_of(&name).filter(|_| valid_name(&name)) else {
            continue;
        };
        // Regular files only: a link never leads out of the room's directory.
        let Ok(meta) = std::fs::symlink_metadata(e.path()) else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        let modified_ms = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_millis() as i64);
        out.push(Document {
            name,
            kind,
            bytes: meta.len(),
            modified_ms,
        });
    }
    out.sort_by(|a, b| (b.modified_ms, &b.name).cmp(&(a.modified_ms, &a.name)));
    out.truncate(MAX_LISTED);
    Ok(out)
}

/// The room's documents directory for a caller holding a token for `room`.
async fn room_dir(
    state: &AppState,
    room: &str,
    headers: &HeaderMap,
) -> Result<(PathBuf, crate::token::Grant), ApiError> {
    if !crate::valid_room(room) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_room",
            crate::ROOM_RULE,
        ));
    }
    let grant = state
        .inner
        .tokens
        .verify_for_room(bearer(headers)?, room, SystemTime::now())?;
    let grant = state.current_role(grant).await?;
    if !crate::telemetry::may_read(grant.role) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "documents_forbidden",
            format!(
                "role {} does not read the room's documents",
                grant.role.as_str()
            ),
        ));
    }
    let Some(dir) = state.inner.recordings.clone() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "recording_disabled",
            "this server stores no documents",
        ));
    };
    Ok((dir.join(room), grant))
}

/// `GET /api/rooms/{room}/documents` with a token for that room.
pub async fn index(
    State(state): State<AppState>,
    Path(room): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Vec<Document>>, ApiError> {
    let (dir, _) = room_dir(&state, &room, &headers).await?;
    let docs = tokio::task::spawn_blocking(move || list(&dir))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "storage", e.to_string()))?;
    Ok(Json(docs))
}

/// `GET /api/rooms/{room}/documents/{name}` with a token for that room: the file, audited.
pub async fn fetch(
    State(state): State<AppState>,
    Path((room, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (dir, grant) = room_dir(&state, &room, &headers).await?;
    let kind = kind_of(&name).filter(|_| valid_name(&name));
    let Some((_, content_type)) = kind else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_document",
            "a document name is a file name listed by GET /api/rooms/{room}/documents",
        ));
    };
    let path = dir.join(&name);
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "document_not_found",
            format!("no document {name:?} in this room"),
        )
    };
    // Regular files only, opened without following a link: nothing outside the room's
    // directory is ever served.
    let opened = tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::OpenOptionsExt as _;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&path)?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(std::io::Error::from(std::io::ErrorKind::NotFound));
        }
        Ok((file, meta.len()))
    })
    .await;
    let Ok(Ok((file, len))) = opened else {
        return Err(not_found());
    };
    let file = tokio::fs::File::from_std(file);
    state
        .audit(
            &grant.identity,
            grant.role,
            "document_read",
            &room,
            "http",
            serde_json::json!({ "document": name }),
        )
        .await?;
    // Read in 64 KiB pieces: a recording may be large, memory stays flat.
    let body = futures_util::stream::unfold(Some(file), |f| async move {
        let mut f = f?;
        let mut buf = vec![0u8; 64 << 10];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(buf), Some(f)))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    Ok((
        [
            (header::CONTENT_TYPE, content_type.to_owned()),
            (header::CONTENT_LENGTH, len.to_string()),
            (header::CACHE_CONTROL, "no-store".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("inline; filename=\"{name}\""),
            ),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plain_file_names_of_known_kinds() {
        for ok in [
            "20261204T120000Z-screenshot-T3-roof_camera.png",
            "a-ecg-snapshot-10s.pdf",
            "x.mp4",
        ] {
            assert!(valid_name(ok) && kind_of(ok).is_some(), "{ok}");
        }
        for bad in [
            "",
            "../x.png",
            "a/b.png",
            ".hidden.png",
            "a b.png",
            "x.png\0",
            "%2e%2e.png",
        ] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        assert_eq!(kind_of("x.sh"), None);
        assert_eq!(kind_of("noext"), None);
        assert!(!valid_name(&"a".repeat(MAX_NAME + 1)));
    }

    #[test]
    fn the_listing_shows_documents_newest_first_and_skips_links_and_strangers() {
        let dir = std::env::temp_dir().join(format!("medsfu-docs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        assert_eq!(list(&dir.join("none")).expect("missing dir"), vec![]);
        std::fs::write(dir.join("a-screenshot.png"), b"png").expect("write");
        std::fs::write(dir.join("notes.txt"), b"?").expect("write");
        std::fs::write(dir.join(".hidden.pdf"), b"?").expect("write");
        std::fs::create_dir(dir.join("sub.mp4")).expect("dir");
        std::os::unix::fs::symlink("/etc/hostname", dir.join("link.json")).expect("link");
        let docs = list(&dir).expect("list");
        let names: Vec<&str> = docs.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["a-screenshot.png"]);
        assert_eq!((docs[0].kind, docs[0].bytes), ("screenshot", 3));
        std::fs::remove_dir_all(&dir).expect("clean");
    }
}
