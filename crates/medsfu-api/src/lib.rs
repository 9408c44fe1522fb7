//! medsfu's HTTP shell: the consultation page, WebSocket signalling, WHIP and WHEP, and
//! access tokens. Handlers check the caller's token and role, then hand the media work to
//! the WebRTC shell through its [`MediaHandle`].

#![forbid(unsafe_code)]

pub mod control;
pub mod control_api;
mod documents;
mod ecg_snapshot;
mod error;
pub mod login_rate;
pub mod process_metrics;
pub mod refusal_log;
mod signalling;
pub mod telemetry;
pub mod token;
mod web;
mod whip;

use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;
use medsfu_media::MediaHandle;
use medsfu_telemetry::hub::Hub;
use tower_http::cors::{Any, CorsLayer};

pub use control::{Control, ControlSettings};
pub use error::ApiError;
pub use signalling::{parse_client_message, MAX_MESSAGE_BYTES};
pub use token::{Grant, TokenError, TokenKey};
pub(crate) use whip::bearer;

/// Everything the handlers share.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    media: MediaHandle,
    tokens: TokenKey,
    sessions: whip::Sessions,
    metrics: prometheus::Registry,
    hub: Arc<Hub>,
    /// True once the server is stopping: sessions are told and streams end.
    stopping: tokio::sync::watch::Sender<bool>,
    /// Free and total bytes of the data directory's filesystem, set at each scrape.
    disk: Option<(prometheus::IntGauge, prometheus::IntGauge)>,
    /// Where ECG snapshot documents are stored (with the recordings); none: not stored.
    recordings: Option<std::path::PathBuf>,
    /// The audit trail; none: nothing is audited (tests of other parts).
    audit: Option<Arc<dyn medsfu_audit::AuditStore>>,
    /// Refusals of requests without a valid login, aggregated per source and code.
    refusals: refusal_log::RefusalLog,
    /// Whether the task writing ended refusal windows' summaries runs.
    refusal_sweeper: std::sync::atomic::AtomicBool,
    /// Calls, rooms and membership; none: the control API answers 503.
    control: Option<Arc<Control>>,
    /// Other origins whose pages may call the login and control API.
    cors_origins: Vec<axum::http::HeaderValue>,
    /// Silences (ms) after which the page marks media and vitals stale.
    page_stale_ms: (u64, u64),
    /// Signalling requests refused because a session exceeded its allowance.
    signalling_limited: prometheus::IntCounter,
}

impl AppState {
    /// State over a running media server, a token key, the metrics registry and the
    /// telemetry hub.
    pub fn new(
        media: MediaHandle,
        tokens: TokenKey,
        metrics: prometheus::Registry,
        hub: Arc<Hub>,
    ) -> AppState {
        AppState {
            inner: Arc::new(Inner {
                media,
                tokens,
                sessions: whip::Sessions::default(),
                disk: disk_gauges(&metrics),
                signalling_limited: signalling_limited(&metrics),
                metrics: with_process_metrics(metrics),
                hub,
                stopping: tokio::sync::watch::Sender::new(false),
                recordings: None,
                audit: None,
                refusals: refusal_log::RefusalLog::default(),
                refusal_sweeper: std::sync::atomic::AtomicBool::new(false),
                control: None,
                cors_origins: Vec::new(),
                page_stale_ms: (3000, 10_000),
            }),
        }
    }

    /// The same state, recording accesses and changes in `audit`. Call before the state
    /// is shared.
    pub fn with_audit(mut self, audit: Arc<dyn medsfu_audit::AuditStore>) -> AppState {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.audit = Some(audit);
        }
        self
    }

    /// The same state, letting pages of `origins` (`https://host[:port]`) call the login
    /// and control API; an origin that is no valid header value is an error. Call before
    /// the state is shared.
    pub fn with_cors_origins(mut self, origins: &[String]) -> Result<AppState, String> {
        let values = origins
            .iter()
            .map(|o| {
                if o.trim() == "*" {
                    return Err("http.cors_origins: \"*\" is not allowed; list the origins".into());
                }
                axum::http::HeaderValue::from_str(o.trim_end_matches('/'))
                    .map_err(|_| format!("http.cors_origins: {o:?} is not an origin"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.cors_origins = values;
        }
        Ok(self)
    }

    /// The same state, telling pages to mark video, the ECG and the link stale after
    /// `media_ms` of silence and vitals and the position after `vitals_ms` (at least
    /// 500 ms each). Call before the state is shared.
    pub fn with_page_staleness(mut self, media_ms: u64, vitals_ms: u64) -> AppState {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.page_stale_ms = (media_ms.max(500), vitals_ms.max(500));
        }
        self
    }

    /// The same state, serving the control API from `control`. Call before the state is
    /// shared.
    pub fn with_control(mut self, control: Arc<Control>) -> AppState {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.control = Some(control);
        }
        self
    }

    /// Records the refusal (`code`) of a request without a valid login from `peer`: the
    /// first few of each minute per source address and code in full, the rest counted into
    /// one summary row per source, code and minute (`refused_aggregated`), so that a flood
    /// of bad requests cannot fill the disk.
    pub(crate) async fn audit_refusal(
        &self,
        peer: Option<std::net::IpAddr>,
        actor: &str,
        action: &str,
        source: &str,
        code: &str,
        detail: serde_json::Value,
    ) {
        if self.inner.audit.is_none() {
            return;
        }
        let now = std::time::Instant::now();
        let (verdict, ended) = self.inner.refusals.note(peer, actor, code, now);
        self.start_refusal_sweeper();
        if let Some(s) = ended {
            write_refusal_summary(self.inner.audit.as_ref(), s, now).await;
        }
        if verdict == refusal_log::Verdict::Write {
            control::audit(
                self.inner.audit.as_ref(),
                actor,
                "",
                action,
                "",
                source,
                detail,
            )
            .await;
        }
    }

    /// Writes the summaries of every refusal counted so far (at shutdown, so that none is
    /// lost with the process).
    pub async fn flush_refusals(&self) {
        let now = std::time::Instant::now();
        for s in self.inner.refusals.take_all() {
            write_refusal_summary(self.inner.audit.as_ref(), s, now).await;
        }
    }

    /// Starts (once) the task that writes the summaries of sources gone quiet.
    fn start_refusal_sweeper(&self) {
        use std::sync::atomic::Ordering;
        if self.inner.refusal_sweeper.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(10));
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                let now = std::time::Instant::now();
                for s in inner.refusals.take_ended(now) {
                    write_refusal_summary(inner.audit.as_ref(), s, now).await;
                }
            }
        });
    }

    /// Records an access to patient data or a change in the audit trail. An access the
    /// trail cannot record is refused (fail closed): `503 audit_unavailable`.
    #[must_use = "an access that was not audited must be refused"]
    pub(crate) async fn audit(
        &self,
        actor: &str,
        role: medsfu_core::Role,
        action: &str,
        room: &str,
        source: &str,
        detail: serde_json::Value,
    ) -> Result<(), ApiError> {
        let written = control::audit(
            self.inner.audit.as_ref(),
            actor,
            role.as_str(),
            action,
            room,
            source,
            detail,
        )
        .await;
        if written {
            Ok(())
        } else {
            Err(ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "audit_unavailable",
                "the audit trail cannot be written, so no access is given: try again, or tell the operator",
            ))
        }
    }

    /// The same state, storing ECG snapshot documents under `dir` (one subdirectory per
    /// room, beside the recordings). Call before the state is shared.
    pub fn with_recordings(mut self, dir: std::path::PathBuf) -> AppState {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.recordings = Some(dir);
        }
        self
    }

    /// The grant with the holder's current role. In rooms of the control API the role is
    /// the membership's now (the lead may have changed since the token was issued), and
    /// non-members and closed rooms are refused; other rooms (an operator's token) keep
    /// the token's role. Tokens of disabled accounts or issued before a secret changed are
    /// refused everywhere.
    pub(crate) async fn current_role(&self, mut g: Grant) -> Result<Grant, ApiError> {
        use axum::http::StatusCode;
        let Some(c) = &self.inner.control else {
            return Ok(g);
        };
        // A disabled account's or a changed secret's tokens open nothing.
        self.still_allowed(&g, false).await?;
        let Some(room) = c.read(|d| d.room(&g.room)).await else {
            return Ok(g);
        };
        if room.state == medsfu_control::RoomState::Closed {
            let msg = format!("room {} is closed", g.room);
            return Err(ApiError::new(StatusCode::CONFLICT, "room_closed", msg));
        }
        if g.role == medsfu_core::Role::Recorder {
            // A recorder is a server component, not a member. Only the server's secret
            // makes a recorder token (`medsfu token`; the API hands out members' roles).
            return Ok(g);
        }
        match room.members.iter().find(|m| m.name == g.identity) {
            Some(m) => {
                g.role = m.role;
                Ok(g)
            }
            None => {
                let msg = format!("not a member of room {}", g.room);
                Err(ApiError::new(StatusCode::FORBIDDEN, "not_a_member", msg))
            }
        }
    }

    /// Whether a token verified earlier still stands: not expired, and, with the control
    /// API, its account (if `login` or if one exists by that name) not disabled, not
    /// removed, and its secret not changed since the token was issued. Open sessions ask
    /// this again while they run, so revocation does not wait for the next request.
    pub(crate) async fn still_allowed(&self, g: &Grant, login: bool) -> Result<(), ApiError> {
        use axum::http::StatusCode;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if now >= g.expires_at {
            return Err(TokenError::Expired.into());
        }
        let Some(c) = &self.inner.control else {
            return Ok(());
        };
        if let Some(device) = &g.device {
            let store = c.store();
            let name = device.clone();
            let d = control::blocking(move || store.device(&name)).await?;
            if d.is_none_or(|d| d.revoked) {
                return Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "device_revoked",
                    "the device this sign-in was made on was revoked",
                ));
            }
        }
        let store = c.store();
        let name = g.identity.clone();
        match control::blocking(move || store.account(&name)).await? {
            Some(a) if a.disabled => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "account_disabled",
                "account disabled",
            )),
            Some(a) if i64::try_from(g.issued_at_ms).unwrap_or(i64::MAX) < a.tokens_after_ms => {
                Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "token_revoked",
                    "the account's secret changed after this token was issued; sign in again",
                ))
            }
            Some(_) => Ok(()),
            None if login => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "account_unknown",
                "the token's account no longer exists",
            )),
            // Identities without an account: vehicles, an operator's `medsfu token`.
            None => Ok(()),
        }
    }

    /// Resolves, with the reason, once `g` no longer stands (asked every few seconds): a
    /// disabled account, a changed secret or a revoked device ends open sessions within
    /// seconds; a store that fails for a moment does not.
    pub(crate) async fn revoked(&self, g: Grant) -> ApiError {
        let mut tick = tokio::time::interval(RECHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self.still_allowed(&g, false).await {
                if matches!(
                    e.code,
                    "account_disabled"
                        | "token_revoked"
                        | "account_unknown"
                        | "token_expired"
                        | "device_revoked"
                ) {
                    return e;
                }
            }
        }
    }

    /// Starts stopping: `/readyz` answers 503, signalling sessions are told
    /// `server_shutdown` and closed, telemetry streams end.
    pub fn begin_shutdown(&self) {
        self.inner.stopping.send_replace(true);
    }

    /// Resolves once [`AppState::begin_shutdown`] was called.
    pub(crate) async fn stopping(&self) {
        let mut rx = self.inner.stopping.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }
}

/// The registry, with the process's own figures added (once: a second registration of
/// the same names is refused and ignored).
fn with_process_metrics(r: prometheus::Registry) -> prometheus::Registry {
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    if let Ok(c) = process_metrics::ProcessCollector::new(started) {
        let _ = r.register(Box::new(c));
    }
    r
}

fn signalling_limited(r: &prometheus::Registry) -> prometheus::IntCounter {
    let c = prometheus::IntCounter::new(
        "medsfu_signalling_rate_limited_total",
        "Signalling requests refused because the session asked too often (chat, snapshots, recording, anything)",
    )
    .expect("a valid metric name");
    // Registered once per registry; a second state over the same registry shares nothing.
    let _ = r.register(Box::new(c.clone()));
    c
}

fn disk_gauges(r: &prometheus::Registry) -> Option<(prometheus::IntGauge, prometheus::IntGauge)> {
    let g = |n: &str, h: &str| {
        let g = prometheus::IntGauge::new(n, h).ok()?;
        r.register(Box::new(g.clone())).ok()?;
        Some(g)
    };
    Some((
        g(
            "medsfu_data_disk_free_bytes",
            "Bytes available to medsfu on the data directory's filesystem",
        )?,
        g(
            "medsfu_data_disk_size_bytes",
            "Size of the data directory's filesystem",
        )?,
    ))
}

/// The rule [`valid_room`] checks, as told to clients.
pub const ROOM_RULE: &str =
    "room names are 1-64 characters of A-Z a-z 0-9 . _ - and do not start with a dot";

/// Whether a room name is safe in URLs, paths and logs: 1-64 of `A-Z a-z 0-9 . _ -`, not
/// starting with a dot (so it never names `.`, `..` or a hidden directory).
pub fn valid_room(room: &str) -> bool {
    (1..=64).contains(&room.len())
        && !room.starts_with('.')
        && room
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Writes the row summing up a source's refusals that were counted, not written.
async fn write_refusal_summary(
    log: Option<&Arc<dyn medsfu_audit::AuditStore>>,
    s: refusal_log::Summary,
    now: std::time::Instant,
) {
    let since = std::time::SystemTime::now() - now.saturating_duration_since(s.since);
    let source = match s.source {
        Some(std::net::IpAddr::V6(net)) => format!("http from={net}/64"),
        Some(ip) => format!("http from={ip}"),
        None => "http from=(more sources than remembered)".to_owned(),
    };
    let detail = serde_json::json!({
        "refused": s.code,
        "count": s.counted,
        "accounts": s.accounts,
        "since_unix_ms": control::unix_ms(since),
        "window_s": refusal_log::WINDOW.as_secs(),
    });
    control::audit(log, "", "", "refused_aggregated", "", &source, detail).await;
}

/// How often open sessions ask whether their token still stands.
const RECHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(3);

static NEXT_REQUEST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Puts every log line of a request in a span with its id, method and path (never the
/// query string: the page's URL carries a token there). The request's origin (its id and
/// the peer's address) goes to the handlers for the audit trail only.
async fn request_span(
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use tracing::Instrument as _;
    let id = NEXT_REQUEST.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let peer = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    let origin = match peer {
        Some(ip) => format!("http req={id} from={ip}"),
        None => format!("http req={id}"),
    };
    req.extensions_mut().insert(control_api::Origin(origin));
    req.extensions_mut().insert(control_api::Peer(peer));
    let span =
        tracing::info_span!("request", req = id, method = %req.method(), path = %req.uri().path());
    next.run(req).instrument(span).await
}

/// Largest request body accepted (SDP offers and control requests are far smaller).
pub const MAX_BODY_BYTES: usize = 1 << 20;

async fn not_found() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint",
    )
}

/// Security headers on every answer: the page may not be framed (clickjacking), runs only
/// its own scripts and styles, talks only to its own origin, and never leaks its URL (which
/// may carry a token) in a Referer.
async fn security_headers(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::http::header;
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        axum::http::HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_FRAME_OPTIONS,
        axum::http::HeaderValue::from_static("DENY"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        axum::http::HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        axum::http::HeaderValue::from_static("no-referrer"),
    );
    res
}

/// The page's content security policy: its own scripts, styles and connections only
/// (WebSocket signalling included), media from WebRTC streams, no frames, no plugins.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
    style-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; \
    connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; \
    object-src 'none'";

/// The whole HTTP surface of medsfu.
pub fn router(state: AppState) -> Router {
    use axum::http::{header, HeaderName, Method};
    let methods = [
        Method::GET,
        Method::POST,
        Method::PATCH,
        Method::DELETE,
        Method::OPTIONS,
    ];
    let headers = [
        header::AUTHORIZATION,
        header::CONTENT_TYPE,
        header::IF_MATCH,
    ];
    // WHIP/WHEP players often run on another origin (RFC 9725 clients in a browser); they
    // authenticate with a bearer token, never a cookie, so any origin may call them.
    let media_cors = CorsLayer::new()
        .allow_origin(Any)
        .allow_methods(methods.clone())
        .allow_headers(headers.clone())
        .expose_headers([
            header::LOCATION,
            header::ETAG,
            HeaderName::from_static("accept-patch"),
        ]);
    // The login and control API answer other origins only when configured
    // (`http.cors_origins`): by default only the server's own page may call them.
    let api_cors = CorsLayer::new()
        .allow_origin(tower_http::cors::AllowOrigin::list(
            state.inner.cors_origins.iter().cloned(),
        ))
        .allow_methods(methods)
        .allow_headers(headers);
    let media = Router::new()
        .route(
            "/whip/{room}",
            post(whip::create_whip).options(whip::options),
        )
        .route(
            "/whep/{room}",
            post(whip::create_whep).options(whip::options),
        )
        .route(
            "/whip/{room}/{session}",
            axum::routing::patch(whip::patch)
                .delete(whip::delete)
                .options(whip::options),
        )
        .route(
            "/whep/{room}/{session}",
            axum::routing::patch(whip::patch)
                .delete(whip::delete)
                .options(whip::options),
        )
        .layer(media_cors);
    Router::new()
        .route("/", get(web::index))
        .route("/app.js", get(web::script))
        .route("/telemetry.js", get(web::telemetry_script))
        .route("/app.css", get(web::style))
        .route("/healthz", get(web::healthz))
        .route("/readyz", get(web::readyz))
        .route("/metrics", get(web::metrics))
        .route("/ws", get(signalling::upgrade))
        .route("/api/rooms/{room}/telemetry", get(telemetry::stream))
        .route("/api/rooms/{room}/documents", get(documents::index))
        .route("/api/rooms/{room}/documents/{name}", get(documents::fetch))
        .route("/api/openapi.json", get(control_api::openapi))
        .route("/api/login", post(control_api::login))
        .route("/api/login/crew", post(control_api::login_crew))
        .route(
            "/api/calls",
            post(control_api::open_call).get(control_api::list_calls),
        )
        .route("/api/calls/events", get(control_api::call_events))
        .route("/api/calls/{room}/accept", post(control_api::accept_call))
        .route(
            "/api/rooms",
            get(control_api::list_rooms).post(control_api::create_room),
        )
        .route(
            "/api/rooms/{room}",
            get(control_api::get_room).delete(control_api::close_room),
        )
        .route("/api/rooms/{room}/members", post(control_api::invite))
        .route(
            "/api/rooms/{room}/members/{user}",
            axum::routing::delete(control_api::remove),
        )
        .route("/api/rooms/{room}/leave", post(control_api::leave))
        .route("/api/rooms/{room}/join", post(control_api::join_call))
        .route("/api/rooms/{room}/lead", post(control_api::hand_over))
        .route("/api/rooms/{room}/grants", post(control_api::grant))
        .route("/api/rooms/{room}/token", post(control_api::room_token))
        .route("/api/audit", get(control_api::read_audit))
        .layer(api_cors)
        .merge(media)
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(security_headers))
        .layer(axum::middleware::from_fn(request_span))
        .with_state(state)
}
