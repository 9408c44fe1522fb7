//! The IO shell of the control logic ([`medsfu_control::Desk`]): serialises requests,
//! stores what changed, applies it to the media rooms (roles, removals), announces calls
//! to the centre's feed, audits every change, and runs the lead hand-over timer.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use medsfu_control::{ControlError, Desk, LeadChange, Output, Principal, RoomState};
use medsfu_core::{LeaveReason, Role};
use medsfu_media::MediaHandle;
use medsfu_store::{RoomRecord, RoomStatus, Store, StoreError};
use serde_json::{json, Value};
use tokio::sync::{broadcast, Mutex, Notify};
use tracing::{error, info};

/// Settings of the control API.
#[derive(Debug, Clone)]
pub struct ControlSettings {
    /// A lead without a connection this long passes the role on.
    pub lead_grace: Duration,
    /// Lockout rules for wrong passwords and PINs.
    pub login: medsfu_store::LoginPolicy,
    /// Lifetime of login (API) tokens.
    pub api_token_ttl: Duration,
    /// Sign-in attempts one address may make per minute (0: no limit).
    pub login_attempts_per_minute: u32,
}

impl Default for ControlSettings {
    fn default() -> Self {
        ControlSettings {
            lead_grace: Duration::from_secs(30),
            login: medsfu_store::LoginPolicy::default(),
            api_token_ttl: Duration::from_secs(8 * 3600),
            login_attempts_per_minute: 30,
        }
    }
}

/// Why a control request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlFailure {
    /// The control logic refused it.
    #[error(transparent)]
    Refused(#[from] ControlError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ControlFailure {
    /// Stable code for the wire.
    pub fn code(&self) -> &'static str {
        match self {
            ControlFailure::Refused(e) => e.code(),
            ControlFailure::Store(e) => e.code(),
        }
    }
}

/// Counters of the control API (no names, rooms or addresses in labels).
#[derive(Clone)]
pub(crate) struct ControlStats {
    /// Logins by result: `ok`, `failed`, `locked`, `disabled`.
    pub logins: prometheus::IntCounterVec,
    /// Calls opened.
    pub calls: prometheus::IntCounter,
    /// Lead changes by reason.
    pub lead_changes: prometheus::IntCounterVec,
    /// Refused control requests by code.
    pub refused: prometheus::IntCounterVec,
    /// Rooms by state (`ringing`, `active`).
    pub rooms: prometheus::IntGaugeVec,
}

impl ControlStats {
    fn new(r: &prometheus::Registry) -> prometheus::Result<ControlStats> {
        use prometheus::{IntCounter, IntCounterVec, IntGaugeVec, Opts};
        let logins = IntCounterVec::new(
            Opts::new(
                "medsfu_control_logins_total",
                "Logins to the control API by result",
            ),
            &["result"],
        )?;
        let calls = IntCounter::new("medsfu_control_calls_opened_total", "Calls opened")?;
        let lead_changes = IntCounterVec::new(
            Opts::new(
                "medsfu_control_lead_changes_total",
                "Changes of a room's lead by reason (accepted, hand_over, lead_left, lead_away, first_consultant)",
            ),
            &["reason"],
        )?;
        let refused = IntCounterVec::new(
            Opts::new(
                "medsfu_control_refused_total",
                "Control API requests refused, by error code",
            ),
            &["code"],
        )?;
        let rooms = IntGaugeVec::new(
            Opts::new("medsfu_control_rooms", "Rooms of the control API by state"),
            &["state"],
        )?;
        r.register(Box::new(logins.clone()))?;
        r.register(Box::new(calls.clone()))?;
        r.register(Box::new(lead_changes.clone()))?;
        r.register(Box::new(refused.clone()))?;
        r.register(Box::new(rooms.clone()))?;
        // Series exist from the start, so that dashboards and alerts see zeros.
        for result in ["ok", "failed", "locked", "disabled", "busy", "rate_limited"] {
            logins.with_label_values(&[result]);
        }
        for reason in ["accepted", "hand_over", "lead_left", "lead_away"] {
            lead_changes.with_label_values(&[reason]);
        }
        for state in ["ringing", "active"] {
            rooms.with_label_values(&[state]);
        }
        for code in [
            "forbidden",
            "not_a_member",
            "bad_json",
            "bad_field",
            "token_expired",
        ] {
            refused.with_label_values(&[code]);
        }
        Ok(ControlStats {
            logins,
            calls,
            lead_changes,
            refused,
            rooms,
        })
    }
}

/// Calls, rooms and membership, shared by the HTTP handlers, signalling and the vehicle
/// endpoint.
pub struct Control {
    pub(crate) stats: ControlStats,
    desk: Mutex<Desk>,
    store: Arc<dyn Store>,
    media: MediaHandle,
    audit: Option<Arc<dyn medsfu_audit::AuditStore>>,
    feed: broadcast::Sender<Value>,
    /// Memberships ended: (room, member), or (room, None) when the room closed. Streams
    /// that a room token opened end on it.
    revoked: broadcast::Sender<(String, Option<String>)>,
    wake: Arc<Notify>,
    /// Sign-ins checking or waiting for a password check now.
    pub(crate) logins_in_progress: std::sync::atomic::AtomicUsize,
    /// Sign-in allowances by source address.
    pub(crate) login_rate: crate::login_rate::LoginRate,
    /// Settings.
    pub settings: ControlSettings,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Control")
    }
}

pub(crate) fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn role_of(s: &str) -> Role {
    s.parse().unwrap_or(Role::Consultant)
}

/// Longest text field of an audit row (bytes); longer ones are cut and marked.
const MAX_AUDIT_FIELD: usize = 256;
/// Longest detail of an audit row (bytes of JSON); a longer one is replaced by its size.
const MAX_AUDIT_DETAIL: usize = 4096;

/// `s` cut to [`MAX_AUDIT_FIELD`] bytes at a character boundary, marked with `…` when cut.
fn capped(s: &str) -> String {
    if s.len() <= MAX_AUDIT_FIELD {
        return s.to_owned();
    }
    let mut end = MAX_AUDIT_FIELD - '…'.len_utf8();
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Appends to the audit trail off the runtime's threads (the store blocks); false when
/// the trail could not be written (then accesses to patient data are refused).
pub(crate) async fn audit(
    log: Option<&Arc<dyn medsfu_audit::AuditStore>>,
    actor: &str,
    role: &str,
    action: &str,
    room: &str,
    source: &str,
    detail: Value,
) -> bool {
    let Some(log) = log.cloned() else {
        return true;
    };
    let mut detail = detail.to_string();
    if detail.len() > MAX_AUDIT_DETAIL {
        detail = json!({ "truncated_bytes": detail.len() }).to_string();
    }
    let event = medsfu_audit::Event {
        at_unix_ms: unix_ms(SystemTime::now()),
        actor: capped(actor),
        role: capped(role),
        action: capped(action),
        room: capped(room),
        source: capped(source),
        detail,
    };
    match tokio::task::spawn_blocking(move || log.append(event)).await {
        Ok(Ok(_)) => true,
        Ok(Err(e)) => {
            error!(error = %e, action, "audit trail write failed");
            false
        }
        Err(e) => {
            error!(error = %e, action, "audit trail write failed");
            false
        }
    }
}

/// Runs a blocking store call off the runtime's threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(StoreError::Invalid(format!("store task failed: {e}"))))
}

impl Control {
    /// The control API over `store`, applying changes to `media`; rooms kept open in the
    /// store are restored. Starts the hand-over timer on the current runtime.
    pub async fn start(
        store: Arc<dyn Store>,
        media: MediaHandle,
        audit: Option<Arc<dyn medsfu_audit::AuditStore>>,
        settings: ControlSettings,
        registry: &prometheus::Registry,
    ) -> Result<Arc<Control>, StoreError> {
        let stats = ControlStats::new(registry)
            .map_err(|e| StoreError::Invalid(format!("control metrics: {e}")))?;
        let mut desk = Desk::new(settings.lead_grace);
        let s = store.clone();
        // Closed rooms come back too: their names stay taken and their old room tokens
        // stay refused.
        let kept = blocking(move || {
            let mut out = Vec::new();
            for r in s.rooms(true)? {
                let members = if r.status == RoomStatus::Closed {
                    Vec::new()
                } else {
                    s.members(&r.name)?
                };
                out.push((r, members));
            }
            Ok(out)
        })
        .await?;
        let now = Instant::now();
        for (r, members) in kept {
            let state = match r.status {
                RoomStatus::Ringing => RoomState::Ringing,
                RoomStatus::Closed => RoomState::Closed,
                _ => RoomState::Active,
            };
            let members = members
                .into_iter()
                .filter(|m| m.left_ms.is_none())
                .map(|m| (m.member, role_of(&m.role)))
                .collect();
            desk.restore(&r.name, state, r.vehicle, r.opened_by, members, now);
        }
        let control = Arc::new(Control {
            stats,
            desk: Mutex::new(desk),
            store,
            media,
            audit,
            feed: broadcast::channel(256).0,
            revoked: broadcast::channel(256).0,
            wake: Arc::new(Notify::new()),
            logins_in_progress: std::sync::atomic::AtomicUsize::new(0),
            login_rate: crate::login_rate::LoginRate::new(settings.login_attempts_per_minute),
            settings,
        });
        tokio::spawn(timer(Arc::downgrade(&control), control.wake.clone()));
        Ok(control)
    }

    /// The store of accounts, devices and rooms.
    pub fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    /// Events for the centre's incoming-call feed.
    pub fn subscribe_feed(&self) -> broadcast::Receiver<Value> {
        self.feed.subscribe()
    }

    /// Runs `f` on the desk, then stores, applies, announces and audits what changed;
    /// a refusal is audited too. `source` says where the request came from.
    pub async fn act<T>(
        &self,
        who: &Principal,
        action: &str,
        room: &str,
        source: &str,
        f: impl FnOnce(&mut Desk, Instant) -> Result<T, ControlError>,
    ) -> Result<T, ControlFailure> {
        let mut desk = self.desk.lock().await;
        let r = f(&mut desk, Instant::now());
        let outputs: Vec<Output> = std::iter::from_fn(|| desk.poll_output()).collect();
        match &r {
            Ok(_) => {
                self.apply(&desk, outputs, who, source).await;
                self.wake.notify_one();
            }
            Err(e) => {
                self.stats.refused.with_label_values(&[e.code()]).inc();
                let detail = json!({ "refused": e.code(), "action": action });
                audit(
                    self.audit.as_ref(),
                    &who.name,
                    who.role.as_str(),
                    "refused",
                    room,
                    source,
                    detail,
                )
                .await;
            }
        }
        drop(desk);
        r.map_err(ControlFailure::from)
    }

    /// Reads the desk.
    pub async fn read<T>(&self, f: impl FnOnce(&Desk) -> T) -> T {
        f(&*self.desk.lock().await)
    }

    /// Resolves when `identity`'s membership of `room` ends (removed, left, or the room
    /// closed).
    pub fn revoked(&self, room: &str, identity: &str) -> impl std::future::Future<Output = ()> {
        let mut rx = self.revoked.subscribe();
        let (room, identity) = (room.to_owned(), identity.to_owned());
        async move {
            loop {
                match rx.recv().await {
                    Ok((r, who)) if r == room && who.as_deref().is_none_or(|w| w == identity) => {
                        return;
                    }
                    Ok(_) => {}
                    // Missed some: end anyway; a client that reconnects is checked again.
                    Err(broadcast::error::RecvError::Lagged(_)) => return,
                    Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
                }
            }
        }
    }

    /// A member's signalling session `conn` joined the media room. The session is given
    /// the member's role as it is now (a hand-over may have happened since its token was
    /// read), or removed if the membership ended meanwhile.
    pub async fn connected(&self, room: &str, name: &str, conn: u64) {
        let mut desk = self.desk.lock().await;
        if let Some(view) = desk.room(room) {
            match view.members.iter().find(|m| m.name == name) {
                Some(m) => {
                    self.media.set_role(room, name, m.role).await;
                    if m.camera {
                        self.media.set_camera_grant(room, name, true).await;
                    }
                }
                None => {
                    let reason = if view.state == RoomState::Closed {
                        LeaveReason::RoomClosed
                    } else {
                        LeaveReason::Removed
                    };
                    self.media.remove_from_room(room, Some(name), reason).await;
                }
            }
        }
        desk.handle_connected(room, name, conn, Instant::now());
        self.settle(desk).await;
    }

    /// A member's signalling session `conn` closed.
    pub async fn disconnected(&self, room: &str, name: &str, conn: u64) {
        let mut desk = self.desk.lock().await;
        desk.handle_disconnected(room, name, conn, Instant::now());
        self.settle(desk).await;
    }

    /// Applies what a presence change or the timer caused.
    async fn settle(&self, mut desk: tokio::sync::MutexGuard<'_, Desk>) {
        let outputs: Vec<Output> = std::iter::from_fn(|| desk.poll_output()).collect();
        let system = Principal {
            name: "medsfu".into(),
            role: Role::Admin,
        };
        self.apply(&desk, outputs, &system, "presence").await;
        drop(desk);
        self.wake.notify_one();
    }

    /// Stores, applies and announces what changed (the desk is locked, so changes are
    /// applied in the order they were made).
    async fn apply(&self, desk: &Desk, outputs: Vec<Output>, who: &Principal, source: &str) {
        let now_ms = unix_ms(SystemTime::now());
        if !outputs.is_empty() {
            let everyone = Principal {
                name: String::new(),
                role: Role::Admin,
            };
            let open = desk.rooms_for(&everyone);
            for state in [RoomState::Ringing, RoomState::Active] {
                let n = open.iter().filter(|r| r.state == state).count();
                self.stats
                    .rooms
                    .with_label_values(&[state.as_str()])
                    .set(n as i64);
            }
        }
        for o in outputs {
            let (action, room, detail) = match &o {
                Output::RoomOpened { room } => ("room_open", room.clone(), json!({})),
                Output::CallOpened { room, vehicle, by } => {
                    self.stats.calls.inc();
                    let _ = self.feed.send(json!({
                        "type": "call", "room": room, "vehicle": vehicle, "by": by,
                        "state": "ringing", "opened_at_ms": now_ms,
                    }));
                    ("call_open", room.clone(), json!({ "vehicle": vehicle }))
                }
                Output::MemberAdded { room, member, role } => (
                    "member_add",
                    room.clone(),
                    json!({ "member": member, "role": role.as_str() }),
                ),
                Output::MemberRemoved {
                    room,
                    member,
                    removed,
                } => {
                    let reason = if *removed {
                        LeaveReason::Removed
                    } else {
                        LeaveReason::Left
                    };
                    if desk
                        .room(room)
                        .is_some_and(|r| r.state != RoomState::Closed)
                    {
                        self.media
                            .remove_from_room(room, Some(member), reason)
                            .await;
                    }
                    let _ = self.revoked.send((room.clone(), Some(member.clone())));
                    (
                        if *removed { "member_remove" } else { "leave" },
                        room.clone(),
                        json!({ "member": member }),
                    )
                }
                Output::LeadChanged {
                    room,
                    from,
                    to,
                    reason,
                } => {
                    if let Some(from) = from {
                        self.media.set_role(room, from, Role::Consultant).await;
                    }
                    self.media.set_role(room, to, Role::Lead).await;
                    if *reason == LeadChange::Accepted {
                        let _ = self.feed.send(json!({
                            "type": "call_taken", "room": room, "lead": to,
                        }));
                    }
                    info!(reason = reason.as_str(), "lead changed");
                    self.stats
                        .lead_changes
                        .with_label_values(&[reason.as_str()])
                        .inc();
                    (
                        "lead_change",
                        room.clone(),
                        json!({ "from": from, "to": to, "reason": reason.as_str() }),
                    )
                }
                Output::CameraGrant {
                    room,
                    member,
                    camera,
                } => {
                    self.media.set_camera_grant(room, member, *camera).await;
                    (
                        "camera_grant",
                        room.clone(),
                        json!({ "member": member, "camera": camera }),
                    )
                }
                Output::RoomClosed { room, by } => {
                    self.media
                        .remove_from_room(room, None, LeaveReason::RoomClosed)
                        .await;
                    let _ = self.revoked.send((room.clone(), None));
                    let _ = self
                        .feed
                        .send(json!({ "type": "call_closed", "room": room }));
                    ("room_close", room.clone(), json!({ "by": by }))
                }
                _ => continue,
            };
            if let Err(e) = self.persist(desk, &o, now_ms).await {
                error!(error = %e, action, "control store write failed");
            }
            audit(
                self.audit.as_ref(),
                &who.name,
                who.role.as_str(),
                action,
                &room,
                source,
                detail,
            )
            .await;
        }
    }

    async fn persist(&self, desk: &Desk, o: &Output, now_ms: i64) -> Result<(), StoreError> {
        let store = self.store.clone();
        match o.clone() {
            Output::MemberAdded { room, member, role } => {
                blocking(move || store.add_member(&room, &member, role.as_str(), now_ms)).await
            }
            Output::MemberRemoved { room, member, .. } => {
                blocking(move || store.end_member(&room, &member, now_ms)).await
            }
            Output::LeadChanged { room, from, to, .. } => {
                // The first lead also makes a ringing call active.
                let record = desk.room(&room);
                blocking(move || {
                    store.change_lead(&room, from.as_deref(), &to)?;
                    sync_room(&*store, record, now_ms)
                })
                .await
            }
            Output::RoomOpened { room }
            | Output::RoomClosed { room, .. }
            | Output::CallOpened { room, .. } => {
                let record = desk.room(&room);
                blocking(move || sync_room(&*store, record, now_ms)).await
            }
            _ => Ok(()),
        }
    }

    /// Opens a call for a vehicle device (its QUIC hello without a room).
    pub async fn open_vehicle_call(&self, vehicle: &str) -> Result<String, ControlFailure> {
        let who = Principal {
            name: vehicle.to_owned(),
            role: Role::Vehicle,
        };
        let name = new_call_name();
        self.act(&who, "open_call", &name, "quic", |d, _| {
            d.open_call(&name, &who)
        })
        .await
    }

    /// Whether a vehicle may publish into `room`: a room of the control API only to its
    /// own vehicle while open; rooms it does not know (named by an operator's token) only
    /// with `open_rooms`.
    pub async fn vehicle_may_publish(
        &self,
        vehicle: &str,
        room: &str,
        open_rooms: bool,
    ) -> Result<(), ControlError> {
        match self.read(|d| d.room(room)).await {
            None if open_rooms => Ok(()),
            None => Err(ControlError::UnknownRoom(room.to_owned())),
            Some(r) if r.state == RoomState::Closed => Err(ControlError::Closed(room.to_owned())),
            Some(r) if r.vehicle.as_deref() == Some(vehicle) => Ok(()),
            Some(_) => Err(ControlError::NotMember(room.to_owned())),
        }
    }
}

/// A fresh call's room name: when it began (UTC) and a random suffix.
pub(crate) fn new_call_name() -> String {
    let secs = unix_ms(SystemTime::now()) / 1000;
    let tag: u16 = rand::random();
    format!("call-{}-{tag:04x}", medsfu_record::utc::file_stamp(secs))
}

/// Writes a room's current state to the store, keeping its creation time.
fn sync_room(
    store: &dyn Store,
    view: Option<medsfu_control::RoomView>,
    now_ms: i64,
) -> Result<(), StoreError> {
    let Some(v) = view else {
        return Ok(());
    };
    let before = store.room(&v.name)?;
    let status = match v.state {
        RoomState::Ringing => RoomStatus::Ringing,
        RoomState::Closed => RoomStatus::Closed,
        _ => RoomStatus::Active,
    };
    let record = RoomRecord {
        created_ms: before.as_ref().map_or(now_ms, |b| b.created_ms),
        closed_ms: (status == RoomStatus::Closed)
            .then(|| before.as_ref().and_then(|b| b.closed_ms).unwrap_or(now_ms)),
        name: v.name,
        vehicle: v.vehicle,
        opened_by: v.opened_by,
        status,
        lead: v.lead.or_else(|| before.and_then(|b| b.lead)),
    };
    store.put_room(&record)
}

/// Sleeps until the desk's next deadline (or a change), then lets it hand leads over.
/// Holds the control only while working, so that it can be dropped.
async fn timer(control: std::sync::Weak<Control>, wake: Arc<Notify>) {
    loop {
        let next = match control.upgrade() {
            Some(c) => c.read(|d| d.poll_timeout()).await,
            None => return,
        };
        let sleep = async {
            match next {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = sleep => {
                let Some(c) = control.upgrade() else { return };
                let mut desk = c.desk.lock().await;
                desk.handle_timeout(Instant::now());
                c.settle(desk).await;
            }
            () = wake.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_fields_are_capped_at_a_character_boundary() {
        assert_eq!(capped("alice"), "alice");
        let long = "é".repeat(1000);
        let c = capped(&long);
        assert!(
            c.len() <= MAX_AUDIT_FIELD && c.ends_with('…'),
            "{}",
            c.len()
        );
        assert!(c.len() > MAX_AUDIT_FIELD - 8);
    }
}
