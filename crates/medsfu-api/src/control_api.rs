//! The control API over HTTP: login, calls, rooms, membership, the lead, room tokens and
//! the audit trail (documented at `/api/openapi.json`).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::Stream;
use medsfu_control::{Action, ControlError, Desk, Principal, RoomView};
use medsfu_core::Role;
use medsfu_store::{AccountRole, LoginError, SecretKind};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use crate::control::{blocking, Control, ControlFailure};
use crate::{ApiError, AppState};

/// A JSON request body whose problems (syntax, types, unknown fields, size, content type)
/// are answered as [`ApiError`]s with stable codes.
pub struct Body<T>(pub T);

impl<T, S> FromRequest<S> for Body<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Body(v)),
            Err(e) => Err(json_rejection(e)),
        }
    }
}

fn json_rejection(e: JsonRejection) -> ApiError {
    let (status, code) = match &e {
        JsonRejection::JsonSyntaxError(_) => (StatusCode::BAD_REQUEST, "bad_json"),
        JsonRejection::JsonDataError(_) => (StatusCode::UNPROCESSABLE_ENTITY, "bad_field"),
        JsonRejection::MissingJsonContentType(_) => {
            (StatusCode::UNSUPPORTED_MEDIA_TYPE, "bad_content_type")
        }
        _ if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large")
        }
        _ => (StatusCode::BAD_REQUEST, "bad_body"),
    };
    ApiError::new(status, code, e.body_text())
}

/// Where a request came from, for the audit trail: its id and the peer's address (kept
/// in the audit trail only, never in logs).
#[derive(Debug, Clone)]
pub struct Origin(pub String);

/// The peer's address of a request, for per-address limits (never logged).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub Option<std::net::IpAddr>);

/// Longest account name accepted at sign-in (as the schema says).
const MAX_USER: usize = 64;
/// Longest password accepted.
const MAX_SECRET: usize = 1024;
/// Longest PIN accepted.
const MAX_PIN: usize = 8;
/// Longest device token accepted.
const MAX_DEVICE_TOKEN: usize = 128;
/// Characters of a refused request's path kept in the audit trail.
const MAX_AUDITED_PATH: usize = 200;

/// Refuses a field longer than `max` bytes with 422 `bad_field` (before any work, and
/// before anything reaches the audit trail).
fn within(field: &str, value: &str, max: usize) -> Result<(), ApiError> {
    if value.len() > max {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "bad_field",
            format!("{field} is longer than {max} bytes"),
        ));
    }
    Ok(())
}

/// Takes one sign-in attempt of the peer's allowance, or refuses with 429 `rate_limited`
/// (counted, not audited one by one: a flood must not fill the disk).
fn admit_login(c: &Control, peer: Peer) -> Result<(), ApiError> {
    let Some(ip) = peer.0 else { return Ok(()) };
    c.login_rate
        .take(ip, std::time::Instant::now())
        .map_err(|wait| {
            c.stats.logins.with_label_values(&["rate_limited"]).inc();
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!(
                    "too many sign-ins from this address; try again in {} s",
                    wait.as_secs() + 1
                ),
            )
        })
}

impl Origin {
    fn of(parts: &Parts) -> String {
        parts
            .extensions
            .get::<Origin>()
            .map_or_else(|| "http".to_owned(), |o| o.0.clone())
    }
}

/// The caller of a control API request, from its login token.
pub struct Caller {
    /// Who.
    pub who: Principal,
    /// Where from.
    pub source: String,
    /// The login token's grant: open feeds ask whether it still stands, and room tokens
    /// handed out carry its device on.
    pub grant: crate::Grant,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let source = Origin::of(parts);
        let token = match crate::bearer(&parts.headers) {
            Ok(t) => Ok(t.to_owned()),
            // EventSource cannot send headers: the call feed (only) takes the token as a
            // parameter.
            Err(e) if parts.uri.path() == "/api/calls/events" => {
                access_token_param(parts.uri.query()).ok_or(e)
            }
            Err(e) => Err(e),
        };
        let verified = token.and_then(|t| state.inner.tokens.verify_api(&t, SystemTime::now()));
        let verified = match verified {
            Ok(g) => account_still_valid(state, g).await,
            Err(e) => Err(ApiError::from(e)),
        };
        match verified {
            Ok(g) => Ok(Caller {
                who: Principal {
                    name: g.identity.clone(),
                    role: g.role,
                },
                source,
                grant: g,
            }),
            Err(e) => {
                count_refusal(state, e.code);
                let peer = parts.extensions.get::<Peer>().and_then(|p| p.0);
                let path: String = parts.uri.path().chars().take(MAX_AUDITED_PATH).collect();
                state
                    .audit_refusal(
                        peer,
                        "",
                        "refused",
                        &source,
                        e.code,
                        json!({ "refused": e.code, "path": path }),
                    )
                    .await;
                Err(e)
            }
        }
    }
}

/// A login token stays good only while its account exists, is not disabled and kept its
/// secret (an operator's `user disable` or `user passwd` takes effect at the next request).
async fn account_still_valid(state: &AppState, g: crate::Grant) -> Result<crate::Grant, ApiError> {
    state.still_allowed(&g, true).await?;
    Ok(g)
}

impl Caller {
    /// Runs `f` on the desk as this caller, about `room` ([`Control::act`]: what changed
    /// is stored, applied and audited; a refusal is audited).
    async fn act<T>(
        &self,
        state: &AppState,
        action: &str,
        room: &str,
        f: impl FnOnce(&mut Desk, &Principal, Instant) -> Result<T, ControlError>,
    ) -> Result<T, ApiError> {
        let ctl = control(state)?;
        let done = ctl
            .act(&self.who, action, room, &self.source, |d, now| {
                f(d, &self.who, now)
            })
            .await?;
        Ok(done)
    }
}

/// A room as answers show it.
fn view(d: &Desk, room: &str) -> Result<RoomView, ControlError> {
    d.room(room)
        .ok_or_else(|| ControlError::UnknownRoom(room.to_owned()))
}

fn access_token_param(query: Option<&str>) -> Option<String> {
    query?
        .split('&')
        .find_map(|kv| kv.strip_prefix("access_token="))
        .map(str::to_owned)
}

fn count_refusal(state: &AppState, code: &str) {
    if let Some(c) = &state.inner.control {
        c.stats.refused.with_label_values(&[code]).inc();
    }
}

fn control(state: &AppState) -> Result<&Arc<Control>, ApiError> {
    state.inner.control.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "control_disabled",
            "this server runs without the control API",
        )
    })
}

impl From<ControlFailure> for ApiError {
    fn from(e: ControlFailure) -> ApiError {
        match e {
            ControlFailure::Refused(e) => e.into(),
            ControlFailure::Store(e) => e.into(),
        }
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> ApiError {
        let status = match &e {
            ControlError::Forbidden { .. } | ControlError::NotMember(_) => StatusCode::FORBIDDEN,
            ControlError::UnknownRoom(_) => StatusCode::NOT_FOUND,
            ControlError::BadTarget(_) => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::CONFLICT,
        };
        ApiError::new(status, e.code(), e.to_string())
    }
}

impl From<medsfu_store::StoreError> for ApiError {
    fn from(e: medsfu_store::StoreError) -> ApiError {
        use medsfu_store::StoreError as E;
        let status = match &e {
            E::NotFound(_) => StatusCode::NOT_FOUND,
            E::Exists(_) => StatusCode::CONFLICT,
            E::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError::new(status, e.code(), e.to_string())
    }
}

/// Audits a request refused before it reached the control logic (its body or path was
/// bad), then returns the error.
async fn refused(state: &AppState, c: &Caller, room: &str, e: ApiError) -> ApiError {
    count_refusal(state, e.code);
    crate::control::audit(
        state.inner.audit.as_ref(),
        &c.who.name,
        c.who.role.as_str(),
        "refused",
        room,
        &c.source,
        json!({ "refused": e.code }),
    )
    .await;
    e
}

/// Unwraps a body, auditing a bad one.
async fn body<T>(
    state: &AppState,
    c: &Caller,
    room: &str,
    b: Result<Body<T>, ApiError>,
) -> Result<T, ApiError> {
    match b {
        Ok(Body(v)) => Ok(v),
        Err(e) => Err(refused(state, c, room, e).await),
    }
}

async fn check_room_name(state: &AppState, c: &Caller, room: &str) -> Result<(), ApiError> {
    if crate::valid_room(room) {
        Ok(())
    } else {
        let e = ApiError::new(StatusCode::BAD_REQUEST, "bad_room", crate::ROOM_RULE);
        Err(refused(state, c, "", e).await)
    }
}

/// An error as every endpoint answers it.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// Stable machine-readable code (e.g. `forbidden`, `call_taken`, `bad_field`).
    code: String,
    /// Why, for people.
    message: String,
}

/// Staff login.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// Account name.
    #[schema(max_length = 64)]
    user: String,
    /// Password.
    #[schema(max_length = 1024)]
    password: String,
}

/// Crew login on a registered device.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CrewLoginRequest {
    /// The device's token (from `medsfu device add`).
    #[schema(max_length = 128)]
    device_token: String,
    /// Crew member's account name.
    #[schema(max_length = 64)]
    user: String,
    /// Their PIN (4-8 digits).
    #[schema(max_length = 8)]
    pin: String,
}

/// A login session.
#[derive(Serialize, ToSchema)]
pub struct LoginResponse {
    /// Bearer token for the control API.
    token: String,
    /// Seconds until it expires.
    expires_in_s: u64,
    /// Account name.
    user: String,
    /// Account role (`team`, `consultant`, `dispatcher`, `admin`).
    role: String,
    /// Name shown to others.
    display_name: String,
}

/// A room member.
#[derive(Serialize, ToSchema)]
pub struct MemberOut {
    /// Account or device name.
    name: String,
    /// Role in the room.
    role: String,
    /// Connected now.
    online: bool,
    /// Granted the camera by the lead.
    camera: bool,
}

/// A room (call).
#[derive(Serialize, ToSchema)]
pub struct RoomOut {
    /// Its name.
    name: String,
    /// `ringing`, `active` or `closed`.
    state: String,
    /// The vehicle whose call it is.
    vehicle: Option<String>,
    /// Who opened it.
    opened_by: String,
    /// The lead teleconsultant.
    lead: Option<String>,
    /// Current members.
    members: Vec<MemberOut>,
    /// When the call was opened, ms since 1970 (in the room list).
    #[serde(skip_serializing_if = "Option::is_none")]
    opened_at_ms: Option<i64>,
    /// The vehicle's latest position (in the room list, for the centre's people).
    #[serde(skip_serializing_if = "Option::is_none")]
    position: Option<PositionOut>,
}

/// Where the vehicle of a call was last.
#[derive(Serialize, ToSchema)]
pub struct PositionOut {
    /// Latitude, degrees (WGS 84).
    lat: f64,
    /// Longitude, degrees (WGS 84).
    lon: f64,
    /// When the fix was taken, µs since 1970.
    captured_at_us: i64,
}

impl From<RoomView> for RoomOut {
    fn from(v: RoomView) -> RoomOut {
        RoomOut {
            name: v.name,
            state: v.state.as_str().to_owned(),
            vehicle: v.vehicle,
            opened_by: v.opened_by,
            lead: v.lead,
            members: v
                .members
                .into_iter()
                .map(|m| MemberOut {
                    name: m.name,
                    role: m.role.as_str().to_owned(),
                    online: m.online,
                    camera: m.camera,
                })
                .collect(),
            opened_at_ms: None,
            position: None,
        }
    }
}

/// A room to create.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRoomRequest {
    /// Room name (1-64 of A-Z a-z 0-9 . _ -, not starting with a dot).
    #[schema(pattern = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$")]
    name: String,
}

/// Names an account.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserRequest {
    /// Account name.
    #[schema(max_length = 64)]
    user: String,
}

/// A camera grant.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GrantRequest {
    /// The consultant.
    #[schema(max_length = 64)]
    user: String,
    /// May steer the camera and take screenshots.
    camera: bool,
}

/// A room token: joins the room's signalling, media and telemetry.
#[derive(Serialize, ToSchema)]
pub struct RoomTokenResponse {
    /// Bearer token for `/ws`, WHIP/WHEP and the telemetry stream of this room.
    token: String,
    /// The room.
    room: String,
    /// The caller's role in it.
    role: String,
    /// Seconds until it expires.
    expires_in_s: u64,
}

/// Listing options of the audit trail.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Only entries of this room.
    room: Option<String>,
    /// At most this many of the newest entries (default 1000).
    limit: Option<usize>,
}

/// An entry of the audit trail.
#[derive(Serialize, ToSchema)]
pub struct AuditEntryOut {
    /// Position in the trail.
    seq: i64,
    /// When (ms since 1970, UTC).
    at_unix_ms: i64,
    /// Who.
    actor: String,
    /// Their role.
    role: String,
    /// What.
    action: String,
    /// Which room.
    room: String,
    /// Where from.
    source: String,
    /// Details (JSON text).
    detail: String,
    /// The entry's chain hash.
    hash: String,
}

/// The account role as a role in the roles table.
pub(crate) fn account_role(r: AccountRole) -> Role {
    match r {
        AccountRole::Team => Role::Team,
        AccountRole::Consultant => Role::Consultant,
        AccountRole::Dispatcher => Role::Dispatcher,
        _ => Role::Admin,
    }
}

fn login_error(e: LoginError) -> ApiError {
    let status = match &e {
        LoginError::Wrong => StatusCode::UNAUTHORIZED,
        LoginError::Locked { .. } => StatusCode::TOO_MANY_REQUESTS,
        LoginError::Disabled => StatusCode::FORBIDDEN,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    let message = match &e {
        LoginError::Locked { until_ms } => {
            let left = (until_ms - crate::control::unix_ms(SystemTime::now())).max(0) / 1000;
            format!("{e}; try again in {left} s")
        }
        _ => e.to_string(),
    };
    ApiError::new(status, e.code(), message)
}

/// Sign-ins in progress (checking or waiting for a check) beyond which more are refused at
/// once with 503: password checks run a few at a time (medsfu_store::checks_at_once), and
/// a flood must neither queue without bound nor hold a thread and memory each.
const LOGINS_IN_PROGRESS: usize = 32;

/// One sign-in counted in progress until dropped.
struct InProgress<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for InProgress<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

async fn login_with(
    state: &AppState,
    (source, peer): (&str, Peer),
    user: String,
    secret: String,
    kind: SecretKind,
    device: Option<String>,
) -> Result<Json<LoginResponse>, ApiError> {
    let c = control(state)?;
    let before = c
        .logins_in_progress
        .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    let _in_progress = InProgress(&c.logins_in_progress);
    if before >= LOGINS_IN_PROGRESS {
        c.stats.logins.with_label_values(&["busy"]).inc();
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "too many sign-ins at once; try again in a moment",
        ));
    }
    let store = c.store();
    let policy = c.settings.login.clone();
    let name = user.clone();
    let now = crate::control::unix_ms(SystemTime::now());
    // Lockouts are per (name, address): a stranger's guesses do not lock the doctor out.
    let from = peer.0.map(|ip| ip.to_string()).unwrap_or_default();
    let r =
        tokio::task::spawn_blocking(move || store.login(&name, &secret, kind, &from, &policy, now))
            .await
            .map_err(|e| {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            })?;
    let detail = json!({ "kind": kind.as_str(), "device": device });
    let result = match &r {
        Ok(_) => "ok",
        Err(LoginError::Locked { .. }) => "locked",
        Err(LoginError::Disabled) => "disabled",
        Err(_) => "failed",
    };
    c.stats.logins.with_label_values(&[result]).inc();
    match r {
        Ok(account) => {
            let role = account_role(account.role);
            let ttl = c.settings.api_token_ttl;
            let token = state.inner.tokens.issue_api_on(
                &account.name,
                role,
                device.as_deref(),
                SystemTime::now(),
                ttl,
            );
            let audited = crate::control::audit(
                state.inner.audit.as_ref(),
                &account.name,
                role.as_str(),
                "login",
                "",
                source,
                detail,
            )
            .await;
            if !audited {
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "audit_unavailable",
                    "the audit trail cannot be written, so no sign-in is given: try again, or tell the operator",
                ));
            }
            Ok(Json(LoginResponse {
                token,
                expires_in_s: ttl.as_secs(),
                user: account.name,
                role: role.as_str().to_owned(),
                display_name: account.display_name,
            }))
        }
        Err(e) => {
            let mut detail = detail;
            detail["refused"] = json!(e.code());
            state
                .audit_refusal(peer.0, &user, "login_failed", source, e.code(), detail)
                .await;
            Err(login_error(e))
        }
    }
}

/// Logs a staff member in with a password.
#[utoipa::path(post, path = "/api/login", tag = "login", request_body = LoginRequest,
    responses((status = 200, body = LoginResponse),
        (status = 401, body = ErrorBody, description = "wrong user name or password"),
        (status = 429, body = ErrorBody, description = "locked after repeated failures, or too many sign-ins from this address (rate_limited)"),
        (status = 503, body = ErrorBody, description = "too many sign-ins at once (busy)"),
        (status = 400, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "account disabled")))]
pub async fn login(
    State(state): State<AppState>,
    axum::Extension(origin): axum::Extension<Origin>,
    axum::Extension(peer): axum::Extension<Peer>,
    b: Result<Body<LoginRequest>, ApiError>,
) -> Result<Json<LoginResponse>, ApiError> {
    admit_login(control(&state)?, peer)?;
    let Body(b) = b?;
    within("user", &b.user, MAX_USER)?;
    within("password", &b.password, MAX_SECRET)?;
    login_with(
        &state,
        (&origin.0, peer),
        b.user,
        b.password,
        SecretKind::Password,
        None,
    )
    .await
}

/// Logs a crew member in with a PIN on a registered device.
#[utoipa::path(post, path = "/api/login/crew", tag = "login", request_body = CrewLoginRequest,
    responses((status = 200, body = LoginResponse),
        (status = 401, body = ErrorBody, description = "unknown device, user or PIN"),
        (status = 429, body = ErrorBody, description = "locked after repeated wrong PINs, or too many sign-ins from this address (rate_limited)"),
        (status = 503, body = ErrorBody, description = "too many sign-ins at once (busy)"),
        (status = 400, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "account disabled")))]
pub async fn login_crew(
    State(state): State<AppState>,
    axum::Extension(origin): axum::Extension<Origin>,
    axum::Extension(peer): axum::Extension<Peer>,
    b: Result<Body<CrewLoginRequest>, ApiError>,
) -> Result<Json<LoginResponse>, ApiError> {
    let c = control(&state)?;
    admit_login(c, peer)?;
    let Body(b) = b?;
    within("device_token", &b.device_token, MAX_DEVICE_TOKEN)?;
    within("user", &b.user, MAX_USER)?;
    within("pin", &b.pin, MAX_PIN)?;
    let store = c.store();
    let token = b.device_token.clone();
    let device = blocking(move || store.device_by_token(&token)).await?;
    let Some(device) = device else {
        c.stats.logins.with_label_values(&["failed"]).inc();
        state
            .audit_refusal(
                peer.0,
                &b.user,
                "login_failed",
                &origin.0,
                "device_unknown",
                json!({ "kind": "pin", "refused": "device_unknown" }),
            )
            .await;
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "device_unknown",
            "this device is not registered or was revoked",
        ));
    };
    login_with(
        &state,
        (&origin.0, peer),
        b.user,
        b.pin,
        SecretKind::Pin,
        Some(device.name),
    )
    .await
}

/// Opens a call from a crew (the one button); vehicles open theirs over QUIC.
#[utoipa::path(post, path = "/api/calls", tag = "calls", security(("bearer" = [])),
    responses((status = 201, body = RoomOut), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)))]
pub async fn open_call(State(state): State<AppState>, c: Caller) -> Result<Response, ApiError> {
    let name = crate::control::new_call_name();
    let room = c
        .act(&state, "open_call", &name, |d, who, _| {
            let room = d.open_call(&name, who)?;
            view(d, &room)
        })
        .await?;
    Ok((StatusCode::CREATED, Json(RoomOut::from(room))).into_response())
}

/// Calls nobody accepted yet.
#[utoipa::path(get, path = "/api/calls", tag = "calls", security(("bearer" = [])),
    responses((status = 200, body = Vec<RoomOut>), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)))]
pub async fn list_calls(
    State(state): State<AppState>,
    c: Caller,
) -> Result<Json<Vec<RoomOut>>, ApiError> {
    let calls = c
        .act(&state, "watch_calls", "", |d, who, _| {
            d.authorize(who, Action::WatchCalls, None)?;
            Ok(d.ringing())
        })
        .await?;
    Ok(Json(calls.into_iter().map(RoomOut::from).collect()))
}

/// Incoming calls as they happen (server-sent events): the ringing calls first, then
/// `call`, `call_taken` and `call_closed` events. The token may be given as
/// `?access_token=` (browsers' EventSource sends no headers).
#[utoipa::path(get, path = "/api/calls/events", tag = "calls", security(("bearer" = [])),
    responses((status = 200, description = "text/event-stream of call events"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn call_events(
    State(state): State<AppState>,
    c: Caller,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let ctl = control(&state)?.clone();
    c.act(&state, "watch_calls", "", |d, who, _| {
        d.authorize(who, Action::WatchCalls, None)
    })
    .await?;
    // Subscribe before reading the ringing calls, so that nothing falls between.
    let mut feed = ctl.subscribe_feed();
    let ringing = ctl.read(|d| d.ringing()).await;
    // When each call was opened, from the store (the page shows how long it has waited).
    let store = ctl.store();
    let names: Vec<String> = ringing.iter().map(|r| r.name.clone()).collect();
    let opened: Vec<Option<i64>> = blocking(move || {
        Ok(names
            .iter()
            .map(|n| store.room(n).ok().flatten().map(|r| r.created_ms))
            .collect())
    })
    .await?;
    let stopping = state.clone();
    let grant = c.grant;
    let stream = async_stream(move |tx| async move {
        let revoked = stopping.revoked(grant);
        tokio::pin!(revoked);
        for (r, opened_at_ms) in ringing.into_iter().zip(opened) {
            let ev = json!({
                "type": "call", "room": r.name, "vehicle": r.vehicle, "by": r.opened_by,
                "state": "ringing", "opened_at_ms": opened_at_ms,
            });
            if tx.send(ev).await.is_err() {
                return;
            }
        }
        loop {
            tokio::select! {
                () = stopping.stopping() => return,
                // A revoked sign-in ends the feed, saying why.
                e = &mut revoked => {
                    let _ = tx.send(json!({ "type": "ended", "reason": e.code })).await;
                    return;
                }
                // The client went away: stop at once, not at the next event.
                () = tx.closed() => return,
                ev = feed.recv() => match ev {
                    Ok(ev) => if tx.send(ev).await.is_err() { return },
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        // Too slow a reader: tell it to reload rather than miss calls.
                        if tx.send(json!({ "type": "resync" })).await.is_err() { return }
                    }
                    Err(_) => return,
                }
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// A stream of SSE events fed by a task (keeps the handler free of a stream macro).
fn async_stream<F, Fut>(f: F) -> impl Stream<Item = Result<Event, Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<serde_json::Value>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(f(tx));
    futures_util::stream::unfold(rx, |mut rx| async move {
        let v = rx.recv().await?;
        let name = v["type"].as_str().unwrap_or("message").to_owned();
        Some((Ok(Event::default().event(name).data(v.to_string())), rx))
    })
}

/// Accepts a ringing call: the first consultant to accept leads it. Answers with the
/// room and a room token to join it.
#[utoipa::path(post, path = "/api/calls/{room}/accept", tag = "calls", security(("bearer" = [])),
    params(("room" = String, Path, description = "the call's room", pattern = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$")),
    responses((status = 200, body = RoomTokenResponse), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 400, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "another consultant accepted first")))]
pub async fn accept_call(
    State(state): State<AppState>,
    c: Caller,
    Path(room): Path<String>,
) -> Result<Json<RoomTokenResponse>, ApiError> {
    check_room_name(&state, &c, &room).await?;
    c.act(&state, "accept_call", &room, |d, who, now| {
        d.accept(&room, who, now)
    })
    .await?;
    Ok(Json(room_token_for(&state, &room, &c, Role::Lead)))
}

fn room_token_for(state: &AppState, room: &str, c: &Caller, role: Role) -> RoomTokenResponse {
    let ttl = state
        .inner
        .control
        .as_ref()
        .map_or(std::time::Duration::from_secs(3600), |c| {
            c.settings.api_token_ttl
        });
    RoomTokenResponse {
        token: state.inner.tokens.issue_on(
            room,
            &c.who.name,
            role,
            c.grant.device.as_deref(),
            SystemTime::now(),
            ttl,
        ),
        room: room.to_owned(),
        role: role.as_str().to_owned(),
        expires_in_s: ttl.as_secs(),
    }
}

/// Rooms the caller may see (admins: all open rooms; dispatchers: every call accepted or
/// ringing), with when each was opened and, but for admins, the vehicle's last position.
#[utoipa::path(get, path = "/api/rooms", tag = "rooms", security(("bearer" = [])),
    responses((status = 200, body = Vec<RoomOut>), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "account disabled")))]
pub async fn list_rooms(
    State(state): State<AppState>,
    c: Caller,
) -> Result<Json<Vec<RoomOut>>, ApiError> {
    let ctl = control(&state)?;
    let rooms = ctl.read(|d| d.rooms_for(&c.who)).await;
    let store = ctl.store();
    let names: Vec<String> = rooms.iter().map(|r| r.name.clone()).collect();
    let opened: Vec<Option<i64>> = blocking(move || {
        Ok(names
            .iter()
            .map(|n| store.room(n).ok().flatten().map(|r| r.created_ms))
            .collect())
    })
    .await?;
    // Positions are patient data: for the people who take and follow calls, not for
    // the operators who run the server.
    let positions = c.who.role != Role::Admin;
    let out = rooms
        .into_iter()
        .zip(opened)
        .map(|(r, opened_at_ms)| {
            let position = positions
                .then(|| state.inner.hub.last_position(&r.name))
                .flatten()
                .and_then(|p| {
                    Some(PositionOut {
                        lat: p.json["lat"].as_f64()?,
                        lon: p.json["lon"].as_f64()?,
                        captured_at_us: p.json["captured_at_us"].as_i64()?,
                    })
                });
            RoomOut {
                opened_at_ms,
                position,
                ..RoomOut::from(r)
            }
        })
        .collect();
    Ok(Json(out))
}

/// A dispatcher joins an accepted call without an invitation (not one the lead removed
/// them from); then `POST /api/rooms/{room}/token` opens its media.
#[utoipa::path(post, path = "/api/rooms/{room}/join", tag = "rooms", security(("bearer" = [])),
    params(("room" = String, Path, description = "room name", pattern = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$")),
    responses((status = 201, body = MemberOut), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 400, body = ErrorBody)))]
pub async fn join_call(
    State(state): State<AppState>,
    c: Caller,
    Path(room): Path<String>,
) -> Result<Response, ApiError> {
    check_room_name(&state, &c, &room).await?;
    let role = c
        .act(&state, "join_call", &room, |d, who, _| {
            d.join_call(&room, who)
        })
        .await?;
    let out = MemberOut {
        name: c.who.name.clone(),
        role: role.as_str().to_owned(),
        online: false,
        camera: false,
    };
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

/// Creates a room without a call (admins).
#[utoipa::path(post, path = "/api/rooms", tag = "rooms", security(("bearer" = [])),
    request_body = CreateRoomRequest,
    responses((status = 201, body = RoomOut), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 400, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create_room(
    State(state): State<AppState>,
    c: Caller,
    b: Result<Body<CreateRoomRequest>, ApiError>,
) -> Result<Response, ApiError> {
    let b = body(&state, &c, "", b).await?;
    check_room_name(&state, &c, &b.name).await?;
    let room = c
        .act(&state, "create_room", &b.name, |d, who, _| {
            d.create_room(&b.name, who)?;
            view(d, &b.name)
        })
        .await?;
    Ok((StatusCode::CREATED, Json(RoomOut::from(room))).into_response())
}

/// A room and its members (members and admins).
#[utoipa::path(get, path = "/api/rooms/{room}", tag = "rooms", security(("bearer" = [])),
    params(("room" = String, Path, description = "room name", pattern = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$")),
    responses((status = 200, body = RoomOut), (status = 401, body = ErrorBody),
        (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "the room is closed (members)")))]
pub async fn get_room(
    State(state): State<AppState>,
    c: Caller,
    Path(room): Path<String>,
) -> Result<Json<RoomOut>, ApiError> {
    check_room_name(&state, &c, &room).await?;
    let room = c
        .act(&state, "get_room", &room, |d, who, _| {
            d.authorize(who, Action::GetRoom, Some(&room))?;
            view(d, &room)
        })
        .await?;
    Ok(Json(room.into()))
}

/// Ends the call (the lead, the crew, admins): everyone is taken out.
#[utoipa::path(delete, path = "/api/rooms/{room}", tag = "rooms", security(("bearer" = [])),
    params(("room" = String, Path, description = "room name", pattern = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$")),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "already closed")))]
pub async fn close_room(
    State(state): State<AppState>,
    c: Caller,
    Path(room): Path<String>,
) -> Result<StatusCode, ApiError> {
    check_room_name(&state, &c, &room).await?;
    c.act(&state, "close_room", &room, |d, who, _| d.close(&room, who))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Invites an account into the room (the lead, admins).
#[utoipa::path(post, path = "/api/rooms/{room}/members", tag = "rooms",
    security(("bearer" = [])), request_body = UserRequest,
    params(("room" = String, Path, description = "room name", pattern = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$")),
    responses((status = 201, body = MemberOut), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 400, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn invite(
    State(state): State<AppState>,
    c: Caller,
    Path(room): Path<String>,
    b: Result<Body<UserRequest>, ApiError>,
) -> Result<Response, ApiError> {
    check_room_name(&state, &c, &room).await?;
    let b = body(&state, &c, &room, b).await?;
    let ctl = control(&state)?;
    // Authorise before looking the account up, so that only the lead learns who exists.
    ctl.read(|d| d.authorize(&c.who, Action::Invite, Some(&room)))
        .await
        .map_err(ApiError::from)?;
    let store = ctl.store();
    let name = b.user.clone();
    let Some(account) = blocking(move || store.account(&name)).await? else {
        let e = ApiError::new(
            StatusCode::NOT_FOUND,
            "user_not_found",
            format!("no account {:?}", b.user),
        );
        return Err(refused(&state, &c, &room, e).await);
    };
    let target = Principal {
        name: account.name.clone(),
        role: account_role(account.role),
    };
    let role = c
        .act(&state, "invite", &room, |d, who, now| {
            d.invite(&room, who, &target, now)
        })
        .await?;
    let out = MemberOut {
        name: account.name,
        role: role.as_str().to_owned(),
        online: false,
        camera: false,
    };
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

/// Takes a member out of the room (the lead, admins); their sessions end.
#[utoipa::path(delete, path = "/api/rooms/{room}/members/{user}", tag = "rooms",
    security(("bearer" = [])),
    params(("room" = String, Path, description = "room name", pattern = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$"),
        ("user" = String, Path, description = "the member", pattern = r"^[a-z0-9_-][a-z0-9._-]{0,63}$")),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn remove(
    State(state): State<AppState>,
    c: Caller,
    Path((room, user)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    check_room_name(&state, &c, &room).await?;
    c.act(&state, "remove", &room, |d, who, now| {
        d.remove(&room, who, &user, now)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Leaves the room; a leaving lead passes the role on.
#[utoipa::path(post, path = "/api/rooms/{room}/leave", tag = "rooms", security(("bearer" = [])),
    params(("room" = String, Path, description = "room name", pattern = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$")),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn leave(
    State(state): State<AppState>,
    c: Caller,
    Path(room): Path<String>,
) -> Result<StatusCode, ApiError> {
    check_room_name(&state, &c, &room).await?;
    c.act(&state, "leave", &room, |d, who, now| {
        d.leave(&room, who, now)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Hands the lead role to a consultant of the room (the lead).
#[utoipa::path(post, path = "/api/rooms/{room}/lead", tag = "rooms", security(("bearer" = [])),
    request_body = UserRequest,
    params(("room" = String, Path, description = "room name", pattern = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$")),
    responses((status = 200, body = RoomOut), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 400, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn hand_over(
    State(state): State<AppState>,
    c: Caller,
    Path(room): Path<String>,
    b: Result<Body<UserRequest>, ApiError>,
) -> Result<Json<RoomOut>, ApiError> {
    check_room_name(&state, &c, &room).await?;
    let b = body(&state, &c, &room, b).await?;
    let room = c
        .act(&state, "hand_over", &room, |d, who, now| {
            d.hand_over(&room, who, &b.user, now)?;
            view(d, &room)
        })
        .await?;
    Ok(Json(room.into()))
}

/// Lets a consultant steer the camera and take screenshots, or takes it back (the lead).
/// A new lead starts with no grants given.
#[utoipa::path(post, path = "/api/rooms/{room}/grants", tag = "rooms", security(("bearer" = [])),
    request_body = GrantRequest,
    params(("room" = String, Path, description = "room name", pattern = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$")),
    responses((status = 200, body = RoomOut), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 400, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn grant(
    State(state): State<AppState>,
    c: Caller,
    Path(room): Path<String>,
    b: Result<Body<GrantRequest>, ApiError>,
) -> Result<Json<RoomOut>, ApiError> {
    check_room_name(&state, &c, &room).await?;
    let b = body(&state, &c, &room, b).await?;
    let room = c
        .act(&state, "grant", &room, |d, who, _| {
            d.grant_camera(&room, who, &b.user, b.camera)?;
            view(d, &room)
        })
        .await?;
    Ok(Json(room.into()))
}

/// A room token for the caller's current role: joins `/ws`, WHEP and telemetry.
#[utoipa::path(post, path = "/api/rooms/{room}/token", tag = "rooms", security(("bearer" = [])),
    params(("room" = String, Path, description = "room name", pattern = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$")),
    responses((status = 200, body = RoomTokenResponse), (status = 401, body = ErrorBody),
        (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn room_token(
    State(state): State<AppState>,
    c: Caller,
    Path(room): Path<String>,
) -> Result<Json<RoomTokenResponse>, ApiError> {
    check_room_name(&state, &c, &room).await?;
    let role = c
        .act(&state, "room_token", &room, |d, who, _| {
            if d.room(&room)
                .is_some_and(|r| r.state == medsfu_control::RoomState::Closed)
            {
                return Err(ControlError::Closed(room.clone()));
            }
            d.authorize(who, Action::JoinMedia, Some(&room))
        })
        .await?;
    Ok(Json(room_token_for(&state, &room, &c, role)))
}

/// The audit trail, newest last (admins).
#[utoipa::path(get, path = "/api/audit", tag = "audit", security(("bearer" = [])),
    params(AuditQuery),
    responses((status = 200, body = Vec<AuditEntryOut>), (status = 401, body = ErrorBody),
        (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn read_audit(
    State(state): State<AppState>,
    c: Caller,
    q: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<AuditEntryOut>>, ApiError> {
    let q = match q {
        Ok(Query(q)) => q,
        Err(e) => {
            let e = ApiError::new(StatusCode::BAD_REQUEST, "bad_query", e.body_text());
            return Err(refused(&state, &c, "", e).await);
        }
    };
    let room = q.room.as_deref().unwrap_or("");
    c.act(&state, "read_audit", room, |d, who, _| {
        d.authorize(who, Action::ReadAudit, None)
    })
    .await?;
    let Some(log) = state.inner.audit.clone() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "audit_unavailable",
            "this server keeps no audit trail",
        ));
    };
    let entries = tokio::task::spawn_blocking(move || log.entries())
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.code(), e.to_string()))?;
    let limit = q.limit.unwrap_or(1000).min(100_000);
    let mut out: Vec<AuditEntryOut> = entries
        .into_iter()
        .filter(|e| q.room.as_ref().is_none_or(|r| &e.event.room == r))
        .map(|e| AuditEntryOut {
            seq: e.seq,
            at_unix_ms: e.event.at_unix_ms,
            actor: e.event.actor,
            role: e.event.role,
            action: e.event.action,
            room: e.event.room,
            source: e.event.source,
            detail: e.event.detail,
            hash: e.hash,
        })
        .collect();
    let skip = out.len().saturating_sub(limit);
    out.drain(..skip);
    Ok(Json(out))
}

/// Parses `bytes` as each control API request body; how many kinds accept it (for the
/// fuzz target: the parsers must refuse garbage without panicking).
pub fn parse_request_bodies(bytes: &[u8]) -> usize {
    [
        serde_json::from_slice::<LoginRequest>(bytes).is_ok(),
        serde_json::from_slice::<CrewLoginRequest>(bytes).is_ok(),
        serde_json::from_slice::<CreateRoomRequest>(bytes).is_ok(),
        serde_json::from_slice::<UserRequest>(bytes).is_ok(),
        serde_json::from_slice::<GrantRequest>(bytes).is_ok(),
        serde_urlencoded_audit(bytes),
    ]
    .into_iter()
    .filter(|ok| *ok)
    .count()
}

/// The audit listing's query string, parsed as axum parses it.
fn serde_urlencoded_audit(bytes: &[u8]) -> bool {
    std::str::from_utf8(bytes).is_ok_and(|q| {
        let uri = format!("/api/audit?{q}");
        uri.parse::<axum::http::Uri>()
            .ok()
            .is_some_and(|u| Query::<AuditQuery>::try_from_uri(&u).is_ok())
    })
}

/// The OpenAPI 3.1 document of the control API.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "medsfu control API", description = "Calls, rooms, membership, the lead teleconsultant, room tokens and the audit trail. Errors are JSON {code, message} with stable codes."),
    paths(login, login_crew, open_call, list_calls, call_events, accept_call, list_rooms,
        create_room, get_room, close_room, invite, remove, leave, hand_over, grant,
        room_token, read_audit, join_call),
    components(schemas(ErrorBody, LoginRequest, CrewLoginRequest, LoginResponse, MemberOut,
        RoomOut, PositionOut, CreateRoomRequest, UserRequest, GrantRequest, RoomTokenResponse,
        AuditEntryOut)),
    modifiers(&BearerAuth),
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Serves the OpenAPI document.
pub async fn openapi() -> impl IntoResponse {
    use utoipa::OpenApi as _;
    Json(ApiDoc::openapi())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_bodies_refuse_unknown_fields_wrong_types_and_garbage() {
        assert_eq!(parse_request_bodies(br#"{"user":"ana"}"#), 1);
        assert_eq!(parse_request_bodies(br#"{"user":"ana","password":"x"}"#), 1);
        assert_eq!(parse_request_bodies(br#"{"user":"ana","admin":true}"#), 0);
        assert_eq!(parse_request_bodies(br#"{"user":7}"#), 0);
        assert_eq!(parse_request_bodies(b"\xff\x00{"), 0);
        assert_eq!(parse_request_bodies(b"room=r1&limit=5"), 1);
        assert_eq!(parse_request_bodies(b"limit=many"), 0);
        assert_eq!(parse_request_bodies(b"color=red"), 0);
    }

    #[test]
    fn the_document_is_openapi_3_1_with_every_path() {
        use utoipa::OpenApi as _;
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        assert_eq!(doc["paths"].as_object().map(|p| p.len()), Some(15));
    }
}
