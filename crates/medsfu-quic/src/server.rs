//! The vehicle endpoint: accepts certified devices, puts their media flows into the room
//! core as ordinary tracks, journals their telemetry before acknowledging it, and carries
//! feedback (keyframe requests, NACKs) and indicator state back to them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use medsfu_core::{Codec, LeaveReason, ParticipantId, Role, RtpPacket, TrackId, TrackSource};
use medsfu_media_api::{MediaHandle, SessionEvent, SessionKind};
use medsfu_telemetry::frame::{Frame, FrameError};
use medsfu_telemetry::hub::Hub;
use prometheus::{GaugeVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::client::Lines;
use crate::flow::{self, FlowPacket, MAX_FLOW};
use crate::protocol::{
    to_line, FlowInfo, ServerMessage, TelemetryReply, VehicleMessage, CONTROL, TELEMETRY,
};
use crate::tls::{device_identity, device_serial, revoked_serials, server_config, TlsError};

/// Most media flows one vehicle connection may announce.
pub const MAX_FLOWS: usize = 16;

/// Settings of the vehicle endpoint.
#[derive(Debug, Clone)]
pub struct VehicleSettings {
    /// UDP address of the QUIC endpoint.
    pub listen: SocketAddr,
    /// Server certificate chain (PEM file).
    pub cert: PathBuf,
    /// Server private key (PEM file).
    pub key: PathBuf,
    /// CA that issues device certificates (PEM file).
    pub ca: PathBuf,
    /// Certificate revocation lists (PEM files), re-read when they change.
    pub crls: Vec<PathBuf>,
    /// How often the revocation lists are checked for changes.
    pub crl_reload: Duration,
    /// A connection silent this long is closed (the vehicle sends keep-alives).
    pub idle_timeout: Duration,
    /// Control messages a vehicle may send per second before the rest are dropped.
    pub control_rate: u32,
}

/// Why the vehicle endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// A certificate, key or CRL file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The TLS configuration is unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The UDP socket could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// A metric could not be registered.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Counters of the vehicle endpoint.
#[derive(Clone)]
pub struct VehicleStats {
    connected: IntGauge,
    handshakes_refused: IntCounter,
    datagrams_in: IntCounter,
    datagrams_dropped: IntCounterVec,
    control_dropped: IntCounter,
    sessions_refused: IntCounterVec,
    revoked_closed: IntCounter,
    per_vehicle: PerVehicle,
}

/// Per-vehicle series, labelled by the device certificate's common name: bounded by the
/// fleet the operator certified, and never a person, a room or an address.
#[derive(Clone)]
struct PerVehicle {
    rtt: GaugeVec,
    sent: IntCounterVec,
    lost: IntCounterVec,
    migrations: IntCounterVec,
    link_down: IntGaugeVec,
    unacked: IntGaugeVec,
    video_bps: IntGaugeVec,
    /// Connections per vehicle now: a vehicle reconnecting over its other SIM may hold a
    /// new connection before the old one times out.
    live: Arc<Mutex<HashMap<String, usize>>>,
}

impl PerVehicle {
    /// A connection of `vehicle` began its session: its series exist from now on (at
    /// zero), so rates and alerts see the vehicle before its first loss or migration.
    fn connected(&self, vehicle: &str) {
        let v = [vehicle];
        *self
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(vehicle.to_owned())
            .or_default() += 1;
        self.link_down.with_label_values(&v).set(0);
        for c in [&self.sent, &self.lost, &self.migrations] {
            c.with_label_values(&v);
        }
    }

    /// A connection of `vehicle` ended, its link `lost` or closed. Once the vehicle has no
    /// connection left, the gauges of a live path go (a stale RTT or bitrate would read as
    /// current); `link_down` stays at 1 for a lost link until the vehicle is back.
    fn disconnected(&self, vehicle: &str, lost: bool) {
        let v = [vehicle];
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let left = live.get_mut(vehicle).map_or(0, |n| {
            *n = n.saturating_sub(1);
            *n
        });
        if left > 0 {
            return;
        }
        live.remove(vehicle);
        for g in [&self.unacked, &self.video_bps] {
            let _ = g.remove_label_values(&v);
        }
        let _ = self.rtt.remove_label_values(&v);
        if lost {
            self.link_down.with_label_values(&v).set(1);
        } else {
            let _ = self.link_down.remove_label_values(&v);
        }
    }

    fn new(registry: &Registry) -> prometheus::Result<PerVehicle> {
        let o = |n: &str, h: &str| Opts::new(n, h);
        let l = &["vehicle"];
        let p = PerVehicle {
            rtt: GaugeVec::new(
                o(
                    "medsfu_vehicle_path_rtt_seconds",
                    "Smoothed round-trip time of the vehicle's QUIC path",
                ),
                l,
            )?,
            sent: IntCounterVec::new(
                o(
                    "medsfu_vehicle_path_sent_packets_total",
                    "QUIC packets the server sent to the vehicle",
                ),
                l,
            )?,
            lost: IntCounterVec::new(
                o(
                    "medsfu_vehicle_path_lost_packets_total",
                    "QUIC packets to the vehicle declared lost",
                ),
                l,
            )?,
            migrations: IntCounterVec::new(
                o(
                    "medsfu_vehicle_migrations_total",
                    "Address changes of the vehicle's connection (SIM switches)",
                ),
                l,
            )?,
            link_down: IntGaugeVec::new(
                o(
                    "medsfu_vehicle_link_down",
                    "1 while a vehicle whose connection was lost (not closed) has not come back",
                ),
                l,
            )?,
            unacked: IntGaugeVec::new(
                o(
                    "medsfu_vehicle_outbox_unacked_frames",
                    "Telemetry frames in the vehicle's outbox not acknowledged (as it reports)",
                ),
                l,
            )?,
            video_bps: IntGaugeVec::new(
                o(
                    "medsfu_vehicle_video_target_bps",
                    "The roof camera's bitrate target chosen by the vehicle (as it reports)",
                ),
                l,
            )?,
            live: Arc::default(),
        };
        registry.register(Box::new(p.rtt.clone()))?;
        registry.register(Box::new(p.sent.clone()))?;
        registry.register(Box::new(p.lost.clone()))?;
        registry.register(Box::new(p.migrations.clone()))?;
        registry.register(Box::new(p.link_down.clone()))?;
        registry.register(Box::new(p.unacked.clone()))?;
        registry.register(Box::new(p.video_bps.clone()))?;
        Ok(p)
    }
}

/// Feeds a connection's QUIC path statistics into the per-vehicle series.
struct PathWatch {
    vehicle: String,
    sent: u64,
    lost: u64,
    remote: SocketAddr,
}

impl PathWatch {
    fn new(conn: &quinn::Connection, vehicle: &str) -> PathWatch {
        let st = conn.stats();
        PathWatch {
            vehicle: vehicle.to_owned(),
            sent: st.path.sent_packets,
            lost: st.path.lost_packets,
            remote: conn.remote_address(),
        }
    }

    fn sample(&mut self, conn: &quinn::Connection, m: &PerVehicle) {
        let st = conn.stats();
        let v = [self.vehicle.as_str()];
        m.rtt.with_label_values(&v).set(st.path.rtt.as_secs_f64());
        m.sent
            .with_label_values(&v)
            .inc_by(st.path.sent_packets.saturating_sub(self.sent));
        m.lost
            .with_label_values(&v)
            .inc_by(st.path.lost_packets.saturating_sub(self.lost));
        (self.sent, self.lost) = (st.path.sent_packets, st.path.lost_packets);
        let remote = conn.remote_address();
        if remote != self.remote {
            m.migrations.with_label_values(&v).inc();
            self.remote = remote;
        }
    }
}

impl VehicleStats {
    fn new(registry: &Registry) -> prometheus::Result<VehicleStats> {
        let s = VehicleStats {
            connected: IntGauge::new(
                "medsfu_vehicle_connections",
                "Vehicle QUIC connections in a room now",
            )?,
            handshakes_refused: IntCounter::new(
                "medsfu_vehicle_handshakes_refused_total",
                "QUIC handshakes refused (certificate missing, expired, revoked, foreign)",
            )?,
            datagrams_in: IntCounter::new(
                "medsfu_vehicle_datagrams_received_total",
                "QUIC datagrams received from vehicles",
            )?,
            datagrams_dropped: IntCounterVec::new(
                Opts::new(
                    "medsfu_vehicle_datagrams_dropped_total",
                    "Vehicle datagrams dropped, by reason",
                ),
                &["reason"],
            )?,
            control_dropped: IntCounter::new(
                "medsfu_vehicle_control_dropped_total",
                "Control messages dropped by the per-vehicle rate limit",
            )?,
            sessions_refused: IntCounterVec::new(
                Opts::new(
                    "medsfu_vehicle_sessions_refused_total",
                    "Authenticated vehicles refused at hello, by reason",
                ),
                &["reason"],
            )?,
            revoked_closed: IntCounter::new(
                "medsfu_vehicle_connections_revoked_total",
                "Open vehicle connections closed because their certificate was revoked",
            )?,
            per_vehicle: PerVehicle::new(registry)?,
        };
        registry.register(Box::new(s.revoked_closed.clone()))?;
        registry.register(Box::new(s.connected.clone()))?;
        registry.register(Box::new(s.handshakes_refused.clone()))?;
        registry.register(Box::new(s.datagrams_in.clone()))?;
        registry.register(Box::new(s.datagrams_dropped.clone()))?;
        // Every reason exported from the start, so that rates and alerts see a zero.
        for r in [
            "unknown_flow",
            "truncated",
            "not_rtp",
            "too_large",
            "bad_rtp",
            "busy",
        ] {
            s.datagrams_dropped.with_label_values(&[r]);
        }
        registry.register(Box::new(s.control_dropped.clone()))?;
        registry.register(Box::new(s.sessions_refused.clone()))?;
        Ok(s)
    }

    fn drop_datagram(&self, reason: &str) {
        self.datagrams_dropped.with_label_values(&[reason]).inc();
    }
}

/// What a [`CallDesk`] answers: a value, or a stable code and a reason.
pub type CallAnswer<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, (String, String)>> + Send + 'a>>;

/// The control API's side of vehicles: which call a vehicle publishes into.
pub trait CallDesk: Send + Sync {
    /// Opens a call for `vehicle` (or returns its open one): the room's name.
    fn open_call<'a>(&'a self, vehicle: &'a str) -> CallAnswer<'a, String>;
    /// Whether `vehicle` may publish into `room`: rooms of the control API only to their
    /// vehicle while open; other rooms (named in a token by the operator) to any device.
    fn may_publish<'a>(&'a self, vehicle: &'a str, room: &'a str) -> CallAnswer<'a, ()>;
}

struct Ctx {
    calls: Option<Arc<dyn CallDesk>>,
    media: MediaHandle,
    hub: Arc<Hub>,
    stats: VehicleStats,
    settings: VehicleSettings,
    /// Authenticated connections by quinn's stable id, with their certificate serials.
    open: Mutex<HashMap<usize, (Vec<u8>, quinn::Connection)>>,
}

/// QUIC application close code: the device's certificate was revoked while connected.
pub const CLOSE_REVOKED: u32 = 5;

/// Keeps a connection in [`Ctx::open`] while it lives.
struct Registered<'a> {
    ctx: &'a Ctx,
    id: usize,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.ctx
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

/// The running vehicle endpoint.
#[derive(Clone)]
pub struct VehicleServer {
    endpoint: quinn::Endpoint,
}

impl VehicleServer {
    /// The bound UDP address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Closes every connection and stops accepting.
    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"server shutting down");
    }

    /// Waits until every connection's close has been sent.
    pub async fn wait_idle(&self) {
        self.endpoint.wait_idle().await;
    }
}

fn read(path: &PathBuf) -> Result<String, ServerError> {
    std::fs::read_to_string(path).map_err(|source| ServerError::Read {
        path: path.clone(),
        source,
    })
}

/// The revocation lists' PEM texts. A configured list that is missing or unreadable is an
/// error (fail closed): a revoked device must never get in because a file went away. At
/// start the vehicle endpoint then does not start; on a reload the lists in force stay.
fn read_crls(s: &VehicleSettings) -> Result<Vec<String>, ServerError> {
    s.crls.iter().map(read).collect()
}

fn build_config(s: &VehicleSettings) -> Result<quinn::ServerConfig, ServerError> {
    let crls = read_crls(s)?;
    let mut cfg = server_config(&read(&s.cert)?, &read(&s.key)?, &read(&s.ca)?, &crls)?;
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(s.idle_timeout.try_into().ok());
    t.max_concurrent_bidi_streams(4u32.into());
    t.max_concurrent_uni_streams(0u32.into());
    t.datagram_receive_buffer_size(Some(2 << 20));
    t.datagram_send_buffer_size(256 << 10);
    cfg.transport_config(Arc::new(t));
    Ok(cfg)
}

fn modified(paths: &[PathBuf]) -> Vec<Option<SystemTime>> {
    paths
        .iter()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

/// Starts the vehicle endpoint on the current tokio runtime.
pub fn start(
    settings: VehicleSettings,
    media: MediaHandle,
    hub: Arc<Hub>,
    calls: Option<Arc<dyn CallDesk>>,
    registry: &Registry,
) -> Result<VehicleServer, ServerError> {
    let cfg = build_config(&settings)?;
    let endpoint =
        quinn::Endpoint::server(cfg, settings.listen).map_err(|source| ServerError::Bind {
            addr: settings.listen,
            source,
        })?;
    let ctx = Arc::new(Ctx {
        calls,
        media,
        hub,
        stats: VehicleStats::new(registry)?,
        settings,
        open: Mutex::new(HashMap::new()),
    });
    tokio::spawn(reload_crls(endpoint.clone(), ctx.clone()));
    let ep = endpoint.clone();
    tokio::spawn(async move {
        while let Some(incoming) = ep.accept().await {
            let ctx = ctx.clone();
            tokio::spawn(async move {
                match incoming.await {
                    Ok(conn) => {
                        use tracing::Instrument as _;
                        // Every line of the connection names the vehicle and, after its
                        // hello, the room.
                        let span = tracing::info_span!(
                            "vehicle",
                            vehicle = tracing::field::Empty,
                            room = tracing::field::Empty
                        );
                        connection(conn, ctx).instrument(span).await
                    }
                    Err(e) => {
                        ctx.stats.handshakes_refused.inc();
                        // The reason names the certificate problem, never patient data.
                        warn!(reason = %e, "vehicle handshake refused");
                    }
                }
            });
        }
    });
    Ok(VehicleServer { endpoint })
}

/// Re-reads the revocation lists when they change: new handshakes use the new lists, and
/// open connections of devices revoked since are closed.
async fn reload_crls(endpoint: quinn::Endpoint, ctx: Arc<Ctx>) {
    let mut seen = modified(&ctx.settings.crls);
    loop {
        tokio::time::sleep(ctx.settings.crl_reload).await;
        let now = modified(&ctx.settings.crls);
        if now == seen {
            continue;
        }
        seen = now;
        match build_config(&ctx.settings) {
            Ok(cfg) => {
                endpoint.set_server_config(Some(cfg));
                info!("certificate revocation lists reloaded");
            }
            Err(e) => {
                warn!(error = %e, "revocation lists not reloaded; keeping the old ones");
                continue;
            }
        }
        let revoked = match read_crls(&ctx.settings)
            .map_err(|e| e.to_string())
            .and_then(|c| revoked_serials(&c).map_err(|e| e.to_string()))
        {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "revocation lists unreadable; open connections kept");
                continue;
            }
        };
        let open = ctx.open.lock().unwrap_or_else(|p| p.into_inner());
        for (serial, conn) in open.values() {
            if revoked.contains(serial) {
                ctx.stats.revoked_closed.inc();
                warn!("closing the connection of a device revoked while connected");
                conn.close(CLOSE_REVOKED.into(), b"certificate revoked");
            }
        }
    }
}

struct FlowState {
    flow: u64,
    track: TrackId,
    /// SSRC last seen on the flow, named in feedback sent back.
    ssrc: u32,
}

/// Valid room names, as for the HTTP API, and never a hidden directory.
fn valid_room(room: &str) -> bool {
    (1..=64).contains(&room.len())
        && !room.starts_with('.')
        && room
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A flow as announced: id, what it carries, its codec.
type Announced = (u64, TrackSource, Codec);

/// Checks the announced flows; on error, a stable code and a reason.
fn check_flows(flows: &[FlowInfo]) -> Result<Vec<Announced>, (String, String)> {
    let bad = |m: String| ("bad_flow".to_owned(), m);
    if flows.len() > MAX_FLOWS {
        return Err(bad(format!("at most {MAX_FLOWS} flows")));
    }
    let mut out: Vec<Announced> = Vec::new();
    for f in flows {
        if f.flow > MAX_FLOW || out.iter().any(|(id, _, _)| *id == f.flow) {
            return Err(bad(format!(
                "flow id {} is repeated or above {MAX_FLOW}",
                f.flow
            )));
        }
        let source: TrackSource = f
            .source
            .parse()
            .map_err(|_| bad(format!("unknown source {:?}", f.source)))?;
        let codec = Codec::from_mime(&f.codec)
            .ok_or_else(|| bad(format!("unknown codec {:?}", f.codec)))?;
        out.push((f.flow, source, codec));
    }
    Ok(out)
}

async fn send_line<T: serde::Serialize>(send: &mut quinn::SendStream, m: &T) -> bool {
    send.write_all(&to_line(m)).await.is_ok()
}

async fn refuse(ctx: &Ctx, send: &mut quinn::SendStream, code: &str, message: String) {
    ctx.stats.sessions_refused.with_label_values(&[code]).inc();
    let _ = send_line(
        send,
        &ServerMessage::Error {
            code: code.to_owned(),
            message,
        },
    )
    .await;
    let _ = send.finish();
    // Let the reason reach the vehicle before the connection is dropped: wait until it
    // has read the stream, hung up, or two seconds passed.
    let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
}

async fn connection(conn: quinn::Connection, ctx: Arc<Ctx>) {
    let Some(identity) = device_identity(&conn) else {
        conn.close(1u32.into(), b"certificate has no common name");
        return;
    };
    tracing::Span::current().record("vehicle", tracing::field::display(&identity));
    ctx.open.lock().unwrap_or_else(|p| p.into_inner()).insert(
        conn.stable_id(),
        (device_serial(&conn).unwrap_or_default(), conn.clone()),
    );
    let _registered = Registered {
        ctx: &ctx,
        id: conn.stable_id(),
    };
    // The first stream is the control stream, its first line the hello.
    let opened = tokio::time::timeout(Duration::from_secs(10), conn.accept_bi()).await;
    let Ok(Ok((mut send, recv))) = opened else {
        conn.close(2u32.into(), b"no control stream");
        return;
    };
    let mut lines = Lines::new(recv);
    let hello = tokio::time::timeout(Duration::from_secs(10), async {
        let mut tag = [0u8; 1];
        lines.recv.read_exact(&mut tag).await.ok()?;
        if tag[0] != CONTROL {
            return None;
        }
        lines.next().await.ok().flatten()
    })
    .await;
    let Ok(Some(line)) = hello else {
        refuse(
            &ctx,
            &mut send,
            "no_hello",
            "open the control stream with a hello".into(),
        )
        .await;
        conn.close(2u32.into(), b"no hello");
        return;
    };
    let (room, flows) = match serde_json::from_slice::<VehicleMessage>(&line) {
        Ok(VehicleMessage::Hello { room, flows }) => (room, flows),
        Ok(_) => {
            refuse(
                &ctx,
                &mut send,
                "no_hello",
                "the first message must be hello".into(),
            )
            .await;
            return;
        }
        Err(e) => {
            refuse(&ctx, &mut send, "bad_message", e.to_string()).await;
            return;
        }
    };
    let room = match (room, &ctx.calls) {
        (Some(room), _) if !valid_room(&room) => {
            let msg = "room names are 1-64 of A-Z a-z 0-9 . _ - and do not start with a dot";
            refuse(&ctx, &mut send, "bad_room", msg.into()).await;
            return;
        }
        (Some(room), Some(calls)) => match calls.may_publish(&identity, &room).await {
            Ok(()) => room,
            Err((code, msg)) => {
                refuse(&ctx, &mut send, &code, msg).await;
                return;
            }
        },
        (Some(room), None) => room,
        (None, Some(calls)) => match calls.open_call(&identity).await {
            Ok(room) => room,
            Err((code, msg)) => {
                refuse(&ctx, &mut send, &code, msg).await;
                return;
            }
        },
        (None, None) => {
            let msg = "this server takes no calls: name a room";
            refuse(&ctx, &mut send, "no_calls", msg.into()).await;
            return;
        }
    };
    tracing::Span::current().record("room", tracing::field::display(&room));
    let flows = match check_flows(&flows) {
        Ok(f) => f,
        Err((code, msg)) => {
            refuse(&ctx, &mut send, &code, msg).await;
            return;
        }
    };
    let (events_tx, events) = mpsc::channel(medsfu_media_api::SESSION_EVENTS);
    let joined = match ctx
        .media
        .join(
            &room,
            &identity,
            Role::Vehicle,
            SessionKind::Vehicle,
            events_tx,
        )
        .await
    {
        Ok(j) => j,
        Err(e) => {
            refuse(&ctx, &mut send, e.code(), e.to_string()).await;
            return;
        }
    };
    let participant = joined.participant;
    let mut states = HashMap::new();
    for (flow, source, codec) in flows {
        match ctx.media.publish_track(participant, source, codec).await {
            Ok(track) => {
                states.insert(
                    flow,
                    FlowState {
                        flow,
                        track,
                        ssrc: 0,
                    },
                );
            }
            Err(e) => {
                refuse(&ctx, &mut send, e.code(), e.to_string()).await;
                ctx.media.leave(participant).await;
                return;
            }
        }
    }
    let welcome = ServerMessage::Welcome {
        participant: participant.0,
        identity: identity.clone(),
        room: room.clone(),
    };
    if !send_line(&mut send, &welcome).await {
        ctx.media
            .disconnect(participant, LeaveReason::Timeout)
            .await;
        return;
    }
    info!(%participant, flows = states.len(), "vehicle joined");
    ctx.stats.connected.inc();
    ctx.stats.per_vehicle.connected(&identity);
    tokio::spawn(tracing::Instrument::instrument(
        accept_telemetry(conn.clone(), ctx.clone(), room.clone()),
        tracing::Span::current(),
    ));
    let reason = session(
        &conn,
        &ctx,
        &identity,
        participant,
        states,
        lines,
        send,
        events,
    )
    .await;
    ctx.stats.connected.dec();
    // A closed connection is a vehicle that stopped; anything else is a link lost.
    let lost = reason == LeaveReason::Timeout;
    if lost {
        warn!(%participant, "vehicle link lost: no packet within the idle timeout");
    } else {
        info!(%participant, ?reason, "vehicle left");
    }
    ctx.stats.per_vehicle.disconnected(&identity, lost);
    ctx.media.disconnect(participant, reason).await;
}

/// A vehicle's session after its hello: datagrams in, control messages both ways, and
/// what the room asks of it. Returns why it ended.
#[allow(clippy::too_many_arguments)]
async fn session(
    conn: &quinn::Connection,
    ctx: &Ctx,
    identity: &str,
    participant: ParticipantId,
    mut flows: HashMap<u64, FlowState>,
    mut lines: Lines,
    mut send: quinn::SendStream,
    mut events: mpsc::Receiver<SessionEvent>,
) -> LeaveReason {
    let flow_of: HashMap<TrackId, u64> = flows.values().map(|f| (f.track, f.flow)).collect();
    let rate = f64::from(ctx.settings.control_rate.max(1));
    let mut tokens = rate;
    let mut refilled = Instant::now();
    let mut control_open = true;
    let mut path = PathWatch::new(conn, identity);
    let mut sample = tokio::time::interval(Duration::from_secs(2));
    sample.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = sample.tick() => path.sample(conn, &ctx.stats.per_vehicle),
            d = conn.read_datagram() => match d {
                Ok(d) => on_datagram(ctx, &mut flows, &d),
                Err(e) => {
                    debug!(%participant, error = %e, "vehicle connection ended");
                    return ended(&e);
                }
            },
            l = lines.next(), if control_open => match l {
                Ok(Some(line)) => {
                    let now = Instant::now();
                    tokens = (tokens + now.duration_since(refilled).as_secs_f64() * rate).min(rate);
                    refilled = now;
                    if tokens < 1.0 {
                        ctx.stats.control_dropped.inc();
                        continue;
                    }
                    tokens -= 1.0;
                    match serde_json::from_slice::<VehicleMessage>(&line) {
                        Ok(VehicleMessage::CameraState { id, state }) => {
                            ctx.media.camera_state(participant, id, state.into()).await;
                        }
                        Ok(VehicleMessage::Uplink { unacked_frames, video_bps }) => {
                            let m = &ctx.stats.per_vehicle;
                            let v = [identity];
                            m.unacked.with_label_values(&v).set(i64::try_from(unacked_frames).unwrap_or(i64::MAX));
                            m.video_bps.with_label_values(&v).set(i64::from(video_bps));
                        }
                        Ok(_) => {
                            let m = ServerMessage::Error {
                                code: "unexpected".into(),
                                message: "hello was already received".into(),
                            };
                            let _ = send_line(&mut send, &m).await;
                        }
                        Err(e) => {
                            let m = ServerMessage::Error {
                                code: "bad_message".into(),
                                message: e.to_string(),
                            };
                            let _ = send_line(&mut send, &m).await;
                        }
                    }
                }
                Ok(None) => control_open = false,
                Err(e) => {
                    // A connection that ended (an idle timeout ends the control stream
                    // in the same instant as the datagrams) is not a stream violation.
                    if let Some(closed) = conn.close_reason() {
                        return ended(&closed);
                    }
                    let m = ServerMessage::Error { code: "bad_stream".into(), message: e };
                    let _ = send_line(&mut send, &m).await;
                    conn.close(3u32.into(), b"control stream violation");
                    return LeaveReason::Left;
                }
            },
            ev = events.recv() => match ev {
                Some(SessionEvent::KeyframeRequest { track }) => {
                    if let Some(f) = flow_of.get(&track).and_then(|f| flows.get(f)) {
                        let _ = conn.send_datagram(flow::frame(f.flow, &flow::pli(f.ssrc)));
                    }
                }
                Some(SessionEvent::Nack { track, seqs }) => {
                    if let Some(f) = flow_of.get(&track).and_then(|f| flows.get(f)) {
                        let _ = conn.send_datagram(flow::frame(f.flow, &flow::nack(f.ssrc, &seqs)));
                    }
                }
                Some(SessionEvent::Camera { id, command }) => {
                    let m = ServerMessage::Camera { id, command: (&command).into() };
                    let _ = send_line(&mut send, &m).await;
                }
                Some(SessionEvent::Indicator { green, red }) => {
                    let _ = send_line(&mut send, &ServerMessage::Indicator { green, red }).await;
                }
                Some(SessionEvent::Removed(reason)) => {
                    conn.close(4u32.into(), reason.as_str().as_bytes());
                    return reason;
                }
                Some(_) => {}
                None => return LeaveReason::Left,
            },
        }
    }
}

/// Why a vehicle whose connection ended left: it closed it, or its link was lost.
fn ended(e: &quinn::ConnectionError) -> LeaveReason {
    match e {
        quinn::ConnectionError::ApplicationClosed(_) | quinn::ConnectionError::LocallyClosed => {
            LeaveReason::Left
        }
        _ => LeaveReason::Timeout,
    }
}

fn on_datagram(ctx: &Ctx, flows: &mut HashMap<u64, FlowState>, d: &Bytes) {
    ctx.stats.datagrams_in.inc();
    match flow::parse(d) {
        Ok(FlowPacket::Rtp { flow, packet }) => {
            let Some(f) = flows.get_mut(&flow) else {
                ctx.stats.drop_datagram("unknown_flow");
                return;
            };
            let Ok(p) = RtpPacket::parse(&packet) else {
                ctx.stats.drop_datagram("bad_rtp");
                return;
            };
            f.ssrc = p.header.ssrc;
            if ctx.media.rtp(f.track, p).is_err() {
                ctx.stats.drop_datagram("busy");
            }
        }
        // Sender reports are terminated here; subscribers get ours.
        Ok(FlowPacket::Rtcp { flow, .. }) => {
            if !flows.contains_key(&flow) {
                ctx.stats.drop_datagram("unknown_flow");
            }
        }
        Err(e) => ctx.stats.drop_datagram(e.code()),
    }
}

async fn accept_telemetry(conn: quinn::Connection, ctx: Arc<Ctx>, room: String) {
    while let Ok((send, mut recv)) = conn.accept_bi().await {
        let mut tag = [0u8; 1];
        if recv.read_exact(&mut tag).await.is_err() || tag[0] != TELEMETRY {
            ctx.hub.count_rejected("bad_stream");
            let _ = recv.stop(1u32.into());
            continue;
        }
        tokio::spawn(telemetry(send, recv, ctx.clone(), room.clone()));
    }
}

/// One telemetry stream: frames in, journaled (one fsync per batch read), acknowledged.
async fn telemetry(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    ctx: Arc<Ctx>,
    room: String,
) {
    let mut buf = BytesMut::new();
    loop {
        let chunk = match recv.read_chunk(256 << 10, true).await {
            Ok(Some(c)) => c.bytes,
            Ok(None) | Err(_) => return,
        };
        buf.extend_from_slice(&chunk);
        let mut frames = Vec::new();
        let mut refused = None;
        loop {
            match Frame::decode(&buf) {
                Ok((frame, n)) => {
                    if let Some(code) = medsfu_telemetry::hub::device_refusal(&frame) {
                        ctx.hub.count_rejected(code);
                        refused = Some((
                            code.to_owned(),
                            "devices write their own sources (below 2^31) and no chat or \
                             snapshot requests: those are the server's, for participants"
                                .to_owned(),
                        ));
                        break;
                    }
                    frames.push(buf.split_to(n).to_vec());
                }
                Err(FrameError::Incomplete(_)) => break,
                Err(e) => {
                    ctx.hub.count_rejected(e.code());
                    refused = Some((e.code().to_owned(), e.to_string()));
                    break;
                }
            }
        }
        if !frames.is_empty() {
            let hub = ctx.hub.clone();
            let room = room.clone();
            let Ok(res) = tokio::task::spawn_blocking(move || hub.append(&room, frames)).await
            else {
                return;
            };
            for (source, sequence) in res.acks {
                if !send_line(&mut send, &TelemetryReply::Ack { source, sequence }).await {
                    return;
                }
            }
            if let Some(e) = res.error {
                warn!(code = e.code(), "telemetry batch refused");
                refused = Some((e.code().to_owned(), e.to_string()));
            }
        }
        if let Some((code, message)) = refused {
            // Nothing after a bad frame can be trusted to be framed right: end the stream;
            // the vehicle resends from its last acknowledgement on a new one.
            let _ = send_line(&mut send, &TelemetryReply::Error { code, message }).await;
            let _ = send.finish();
            let _ = recv.stop(2u32.into());
            return;
        }
    }
}
