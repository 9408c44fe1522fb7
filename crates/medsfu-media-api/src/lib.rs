//! The media engine's interface: the handle that signalling, WHIP/WHEP and the QUIC
//! vehicle server drive rooms with ([`MediaHandle`], whose commands go to the media worker
//! hosting the room, see [`routing`]), the events it sends each session back
//! ([`SessionEvent`]), its errors and its counters. Nothing here knows WebRTC: the engine
//! that serves the commands is `medsfu-media`.

#![forbid(unsafe_code)]

pub mod routing;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use medsfu_core::{
    CameraCommand, CameraState, Codec, CoreError, LeaveReason, ParticipantId, Role, RoomEvent,
    RtpPacket, TrackId, TrackSource,
};
use tokio::sync::{mpsc, oneshot};

use routing::{Route, Shards};

/// Why a media operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MediaError {
    /// The SDP could not be used.
    #[error("bad SDP: {0}")]
    BadSdp(String),
    /// The room core refused (role, unknown track, ...).
    #[error(transparent)]
    Core(#[from] CoreError),
    /// The session does not exist (left, timed out, replaced).
    #[error("no such session")]
    UnknownSession,
    /// Nothing in the room can be sent to this subscriber.
    #[error("the room has no track this participant may receive")]
    NoTracks,
    /// The offer accepts none of the codecs the room's tracks are in.
    #[error("the offer accepts no codec of the tracks this participant may receive")]
    NoCodec,
    /// An answer arrived while no offer was outstanding.
    #[error("no offer is awaiting an answer")]
    NoPendingOffer,
    /// webrtc-rs reported an error.
    #[error("webrtc: {0}")]
    WebRtc(String),
    /// The media server has stopped.
    #[error("media server stopped")]
    Stopped,
    /// The media server's queue is full.
    #[error("media server busy")]
    Busy,
    /// This role may not steer the camera.
    #[error("role {0} may not control the camera")]
    CameraForbidden(&'static str),
    /// The target is not a vehicle in the caller's room.
    #[error("no such vehicle in this room")]
    NoVehicle,
    /// A camera command value is out of range.
    #[error("bad camera command: {0}")]
    BadCameraCommand(String),
    /// This role may not start or stop recording.
    #[error("role {0} may not start or stop recording")]
    RecordForbidden(&'static str),
    /// The server records nothing (no recordings directory configured).
    #[error("recording is not enabled on this server")]
    RecordingDisabled,
    /// Only the lead takes screenshots.
    #[error("role {0} may not take screenshots")]
    ScreenshotForbidden(&'static str),
    /// Screenshots are taken of the room's published video tracks.
    #[error("track {0} is not a video track published in this room")]
    NotScreenshotable(String),
}

impl MediaError {
    /// Stable code for the wire.
    pub fn code(&self) -> &'static str {
        match self {
            MediaError::BadSdp(_) => "bad_sdp",
            MediaError::Core(e) => e.code(),
            MediaError::UnknownSession => "unknown_session",
            MediaError::NoTracks => "no_tracks",
            MediaError::NoCodec => "no_codec",
            MediaError::NoPendingOffer => "no_pending_offer",
            MediaError::WebRtc(_) => "webrtc",
            MediaError::Stopped => "stopped",
            MediaError::Busy => "busy",
            MediaError::CameraForbidden(_) => "camera_forbidden",
            MediaError::NoVehicle => "no_vehicle",
            MediaError::BadCameraCommand(_) => "bad_camera_command",
            MediaError::RecordForbidden(_) => "record_forbidden",
            MediaError::RecordingDisabled => "recording_disabled",
            MediaError::ScreenshotForbidden(_) => "screenshot_forbidden",
            MediaError::NotScreenshotable(_) => "bad_track",
        }
    }
}

/// How a participant reached the server, which decides how it is kept alive and how new
/// subscriptions reach it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionKind {
    /// The WebSocket signalling protocol: alive while the socket is; the server offers.
    Signalling,
    /// A WHIP publisher: alive while ICE consent checks arrive.
    Whip,
    /// A WHEP subscriber: alive while ICE consent checks arrive; tracks fixed at creation.
    Whep,
    /// A publisher outside WebRTC (a vehicle over QUIC): alive while its connection is;
    /// its packets arrive by [`MediaHandle::rtp`], its feedback leaves as session events.
    Vehicle,
}

/// Events one session may have waiting for its shell. A shell this far behind (its client
/// stopped reading) has its session ended: what it missed cannot be made good, and
/// buffering more for it has no bound.
pub const SESSION_EVENTS: usize = 1024;

/// Something the media server tells one session.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum SessionEvent {
    /// Something happened in the room.
    Room(RoomEvent),
    /// A new subscriber offer: answer it with [`MediaHandle::subscriber_answer`].
    Offer {
        /// SDP offer.
        sdp: String,
        /// Which track each m-section carries.
        tracks: Vec<(String, TrackId)>,
    },
    /// The server ended the session.
    Removed(LeaveReason),
    /// A subscriber needs a keyframe of this (non-WebRTC) track.
    KeyframeRequest {
        /// The track.
        track: TrackId,
    },
    /// Subscribers miss these packets of this (non-WebRTC) track.
    Nack {
        /// The track.
        track: TrackId,
        /// Original sequence numbers.
        seqs: Vec<u16>,
    },
    /// Whether a teleconsultant watches this vehicle's roof camera (green) and whether it
    /// is being recorded (red); sent when either changes.
    Indicator {
        /// A lead or consultant receives the roof camera.
        green: bool,
        /// A recorder receives the roof camera.
        red: bool,
    },
    /// Move the camera (to a vehicle); acknowledge with [`MediaHandle::camera_state`].
    Camera {
        /// Command id.
        id: u64,
        /// What to change.
        command: CameraCommand,
    },
    /// A vehicle's camera moved (to everyone in its room).
    CameraState {
        /// The vehicle.
        vehicle: ParticipantId,
        /// The command it acknowledges, if any.
        id: Option<u64>,
        /// Where the camera points now.
        state: CameraState,
    },
    /// The lead granted this session the camera (steering and screenshots), or took it
    /// back.
    CameraGrant {
        /// Granted now.
        camera: bool,
    },
    /// Recording on demand started or stopped in the room.
    Recording {
        /// Recording now.
        active: bool,
    },
    /// Recording a track stopped with an error (disk full, unwritable directory);
    /// forwarding goes on.
    RecordingFailed {
        /// The track no longer recorded.
        track: TrackId,
        /// Why.
        message: String,
    },
    /// A screenshot this participant asked for is saved (or failed).
    Screenshot {
        /// The request it answers.
        request: u64,
        /// The file's name in the room's recordings, or why there is none.
        result: Result<String, String>,
    },
    /// Something went wrong that the client should know about.
    Error {
        /// Stable code.
        code: &'static str,
        /// Human-readable reason.
        message: String,
    },
}

/// What a participant learns on joining.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    /// Its session id.
    pub participant: ParticipantId,
}

/// Counters of the media server, registered as Prometheus metrics.
///
/// Each is an atomic: counting on the per-packet path takes no lock.
#[derive(Debug, Clone)]
pub struct MediaStats {
    /// Datagrams received on the media port.
    pub datagrams_in: IntCounter,
    /// Datagrams dropped because no peer owns their source (or STUN username).
    pub datagrams_unknown: IntCounter,
    /// Datagrams a peer connection could not process.
    pub datagrams_malformed: IntCounter,
    /// Datagrams sent.
    pub datagrams_out: IntCounter,
    /// Datagrams the socket refused to send.
    pub send_errors: IntCounter,
    /// System calls that sent datagrams (`sendmmsg` batches on Linux).
    pub send_calls: IntCounter,
    /// Datagrams the dispatcher dropped because their worker's queue was full.
    pub dispatch_dropped: IntCounter,
    /// Media workers (engines, one per core by default) sharing the media socket.
    pub workers: IntGauge,
    /// Rooms open on each worker (label `worker`: its index).
    pub worker_rooms: IntGaugeVec,
    /// Sessions ended because their shell fell [`SESSION_EVENTS`] events behind.
    pub sessions_overflowed: IntCounter,
    /// RTP packets received from publishers, by kind.
    pub rtp_in: ByKind,
    /// RTP payload bytes received from publishers, by kind.
    pub rtp_in_bytes: ByKind,
    /// RTP packets forwarded to subscribers, by kind.
    pub rtp_forwarded: ByKind,
    /// RTP payload bytes forwarded to subscribers, by kind.
    pub rtp_forwarded_bytes: ByKind,
    /// RTP packets not forwarded, by reason.
    pub rtp_dropped: Drops,
    /// Time from a packet's arrival to handing a subscriber's copy to the socket.
    pub forward_latency: Histogram,
    /// Age of a late joiner's replayed packets when they are sent.
    pub replay_lag: Histogram,
    /// STUN messages dropped before reaching ICE (failed MESSAGE-INTEGRITY, not a binding
    /// request, unknown username).
    pub stun_rejected: IntCounter,
    /// Datagrams the kernel dropped because the media socket's receive buffer was full.
    pub socket_drops: IntCounter,
    /// The media socket's receive and send buffer sizes as the kernel granted them.
    pub socket_buffer: IntGaugeVec,
    /// NACKs received from subscribers.
    pub nacks_received: IntCounter,
    /// What became of the packets subscribers' NACKs listed, by outcome.
    pub nacked: IntCounterVec,
    /// Keyframe requests (PLI, FIR) received from subscribers.
    pub plis_received: IntCounter,
    /// Fraction lost reported by subscribers' receiver reports.
    pub subscriber_fraction_lost: Histogram,
    /// Interarrival jitter reported by subscribers, in seconds.
    pub subscriber_jitter: Histogram,
    /// Rooms with anyone in them.
    pub rooms: IntGauge,
    /// Participants now, by role.
    pub participants: IntGaugeVec,
    /// Keyframe requests sent to publishers.
    pub keyframe_requests: IntCounter,
    /// Time from an H.265 picture entering a transcoder to its H.264 picture leaving.
    pub transcode_latency: Histogram,
    /// H.264 renditions started.
    pub renditions_started: IntCounter,
    /// Transcoder workers (ffmpeg processes) running now.
    pub transcoders_running: IntGauge,
    /// Tracks being recorded or voice-archived now.
    pub recording_active: IntGauge,
    /// Bytes written to recordings.
    pub recording_bytes: IntCounter,
    /// Recordings that stopped with an error.
    pub recording_failures: IntCounter,
    /// Publisher input the recorders refused as out of bounds.
    pub recording_refused: IntCounter,
    /// Joins and publications refused by a limit, by limit.
    pub limited: IntCounterVec,
}

/// One counter per media kind, resolved once so that counting takes no lock.
#[derive(Debug, Clone)]
pub struct ByKind {
    /// Audio.
    pub audio: IntCounter,
    /// Video.
    pub video: IntCounter,
}

impl ByKind {
    fn new(registry: &Registry, name: &str, help: &str) -> prometheus::Result<ByKind> {
        let v = IntCounterVec::new(Opts::new(name, help), &["kind"])?;
        registry.register(Box::new(v.clone()))?;
        Ok(ByKind {
            audio: v.with_label_values(&["audio"]),
            video: v.with_label_values(&["video"]),
        })
    }

    /// The counter of one kind.
    pub fn of(&self, video: bool) -> &IntCounter {
        if video {
            &self.video
        } else {
            &self.audio
        }
    }
}

/// Why an RTP packet was not forwarded (the `reason` label of
/// `medsfu_media_rtp_dropped_packets_total`), resolved once.
#[derive(Debug, Clone)]
pub struct Drops {
    /// From an SSRC the peer never announced.
    pub unknown_ssrc: IntCounter,
    /// Refused by the room core (unknown or closed track).
    pub refused: IntCounter,
    /// For a subscriber or sender that is gone.
    pub no_subscriber: IntCounter,
    /// The peer connection would not take it.
    pub write_failed: IntCounter,
    /// A full queue (engine or transcoder) could not take it.
    pub busy: IntCounter,
}

impl Drops {
    fn new(registry: &Registry) -> prometheus::Result<Drops> {
        let v = IntCounterVec::new(
            Opts::new(
                "medsfu_media_rtp_dropped_packets_total",
                "RTP packets not forwarded, by reason",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(v.clone()))?;
        Ok(Drops {
            unknown_ssrc: v.with_label_values(&["unknown_ssrc"]),
            refused: v.with_label_values(&["refused"]),
            no_subscriber: v.with_label_values(&["no_subscriber"]),
            write_failed: v.with_label_values(&["write_failed"]),
            busy: v.with_label_values(&["busy"]),
        })
    }
}

impl MediaStats {
    /// Creates the counters and registers them.
    pub fn new(registry: &Registry) -> prometheus::Result<MediaStats> {
        let c = |name: &str, help: &str| -> prometheus::Result<IntCounter> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        Ok(MediaStats {
            datagrams_in: c(
                "medsfu_media_datagrams_received_total",
                "UDP datagrams received on the WebRTC media port",
            )?,
            datagrams_unknown: c(
                "medsfu_media_datagrams_unknown_total",
                "Datagrams dropped: no peer owns their source or STUN username",
            )?,
            datagrams_malformed: c(
                "medsfu_media_datagrams_malformed_total",
                "Datagrams a peer connection could not process",
            )?,
            datagrams_out: c(
                "medsfu_media_datagrams_sent_total",
                "UDP datagrams sent from the media port",
            )?,
            send_errors: c(
                "medsfu_media_send_errors_total",
                "Datagrams the socket refused to send, or dropped because its send buffer was full",
            )?,
            send_calls: c(
                "medsfu_media_send_calls_total",
                "System calls that sent media datagrams (each sendmmsg carries up to 64)",
            )?,
            dispatch_dropped: c(
                "medsfu_media_dispatch_dropped_total",
                "Datagrams dropped because their media worker's queue was full",
            )?,
            workers: {
                let g = IntGauge::new(
                    "medsfu_media_workers",
                    "Media workers (one engine each) sharing the media socket",
                )?;
                registry.register(Box::new(g.clone()))?;
                g
            },
            worker_rooms: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "medsfu_media_worker_rooms",
                        "Rooms open on each media worker (label worker: its index)",
                    ),
                    &["worker"],
                )?;
                registry.register(Box::new(g.clone()))?;
                g
            },
            sessions_overflowed: c(
                "medsfu_media_sessions_overflowed_total",
                "Sessions ended because their client stopped taking events (queue full)",
            )?,
            rtp_in: ByKind::new(
                registry,
                "medsfu_media_rtp_received_packets_total",
                "RTP packets received from publishers (WebRTC and vehicles), by kind",
            )?,
            rtp_in_bytes: ByKind::new(
                registry,
                "medsfu_media_rtp_received_bytes_total",
                "RTP payload bytes received from publishers, by kind",
            )?,
            rtp_forwarded: ByKind::new(
                registry,
                "medsfu_media_rtp_forwarded_packets_total",
                "RTP packets sent to subscribers, by kind",
            )?,
            rtp_forwarded_bytes: ByKind::new(
                registry,
                "medsfu_media_rtp_forwarded_bytes_total",
                "RTP payload bytes sent to subscribers, by kind",
            )?,
            rtp_dropped: Drops::new(registry)?,
            replay_lag: {
                let h = Histogram::with_opts(
                    HistogramOpts::new(
                        "medsfu_media_replay_lag_seconds",
                        "Age of a late joiner's replayed packets (the cached group of \
                         pictures, paced) when each is handed to the socket",
                    )
                    .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0]),
                )?;
                registry.register(Box::new(h.clone()))?;
                h
            },
            stun_rejected: c(
                "medsfu_media_stun_rejected_total",
                "STUN messages dropped before ICE: not a binding request signed with a \
                 session's password, nor a response signed with its peer's",
            )?,
            socket_drops: c(
                "medsfu_media_socket_drops_total",
                "Datagrams the kernel dropped because the media socket's receive buffer was \
                 full (drops of /proc/net/udp)",
            )?,
            socket_buffer: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "medsfu_media_socket_buffer_bytes",
                        "Media socket buffer size granted by the kernel, by direction",
                    ),
                    &["direction"],
                )?;
                registry.register(Box::new(g.clone()))?;
                g
            },
            forward_latency: {
                let h = Histogram::with_opts(
                    HistogramOpts::new(
                        "medsfu_media_forward_latency_seconds",
                        "Time from a packet's arrival at the media engine to handing each \
                         subscriber's copy to the socket (the SFU's added latency; replays \
                         and retransmissions excluded)",
                    )
                    .buckets(vec![
                        0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.02,
                        0.05, 0.1,
                    ]),
                )?;
                registry.register(Box::new(h.clone()))?;
                h
            },
            nacked: {
                let v = IntCounterVec::new(
                    Opts::new(
                        "medsfu_media_nacked_packets_total",
                        "Packets listed in subscribers' NACKs, by outcome: resent (from the \
                         cache), refused_repeat (re-sent a moment ago), refused_budget (the \
                         subscriber's retransmission budget spent), asked_upstream (asked of \
                         the publisher), not_asked_upstream (asked already, too old, or the \
                         track's allowance spent)",
                    ),
                    &["outcome"],
                )?;
                for o in [
                    "resent",
                    "refused_repeat",
                    "refused_budget",
                    "asked_upstream",
                    "not_asked_upstream",
                ] {
                    v.with_label_values(&[o]);
                }
                registry.register(Box::new(v.clone()))?;
                v
            },
            nacks_received: c(
                "medsfu_media_nacks_received_total",
                "Generic NACKs received from subscribers",
            )?,
            plis_received: c(
                "medsfu_media_plis_received_total",
                "Keyframe requests (PLI, FIR) received from subscribers",
            )?,
            subscriber_fraction_lost: {
                let h = Histogram::with_opts(
                    HistogramOpts::new(
                        "medsfu_media_subscriber_fraction_lost",
                        "Fraction of packets lost reported in subscribers' receiver reports",
                    )
                    .buckets(vec![0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0]),
                )?;
                registry.register(Box::new(h.clone()))?;
                h
            },
            subscriber_jitter: {
                let h = Histogram::with_opts(
                    HistogramOpts::new(
                        "medsfu_media_subscriber_jitter_seconds",
                        "Interarrival jitter reported in subscribers' receiver reports",
                    )
                    .buckets(vec![0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2]),
                )?;
                registry.register(Box::new(h.clone()))?;
                h
            },
            rooms: {
                let g = IntGauge::new("medsfu_rooms", "Rooms with anyone in them")?;
                registry.register(Box::new(g.clone()))?;
                g
            },
            participants: {
                let g = IntGaugeVec::new(
                    Opts::new("medsfu_participants", "Participants now, by role"),
                    &["role"],
                )?;
                registry.register(Box::new(g.clone()))?;
                g
            },
            keyframe_requests: c(
                "medsfu_media_keyframe_requests_total",
                "Keyframe requests (PLI) sent to publishers",
            )?,
            transcode_latency: {
                let h = Histogram::with_opts(
                    HistogramOpts::new(
                        "medsfu_media_transcode_latency_seconds",
                        "Time a picture spends in the H.265-to-H.264 transcoder",
                    )
                    .buckets(vec![
                        0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0,
                    ]),
                )?;
                registry.register(Box::new(h.clone()))?;
                h
            },
            renditions_started: c(
                "medsfu_media_renditions_started_total",
                "H.264 renditions of H.265 tracks started for subscribers without H.265",
            )?,
            recording_active: {
                let g = IntGauge::new(
                    "medsfu_recording_tracks_active",
                    "Tracks being recorded (on demand) or voice-archived now",
                )?;
                registry.register(Box::new(g.clone()))?;
                g
            },
            recording_bytes: c(
                "medsfu_recording_bytes_written_total",
                "Bytes written to recording and voice-archive files",
            )?,
            recording_failures: c(
                "medsfu_recording_failures_total",
                "Track recordings that stopped with an error (disk full, unwritable directory)",
            )?,
            recording_refused: c(
                "medsfu_recording_input_refused_total",
                "Publisher input a recorder refused: pictures over 8 MiB without an end, \
                 audio clock jumps past the time that really passed (not filled with silence)",
            )?,
            limited: {
                let v = IntCounterVec::new(
                    Opts::new(
                        "medsfu_media_limited_total",
                        "Joins and publications refused by a configured limit: too_many_rooms, \
                         room_full, too_many_tracks",
                    ),
                    &["limit"],
                )?;
                registry.register(Box::new(v.clone()))?;
                for l in ["too_many_rooms", "room_full", "too_many_tracks"] {
                    v.with_label_values(&[l]);
                }
                v
            },
            transcoders_running: {
                let g = IntGauge::new(
                    "medsfu_media_transcoders_running",
                    "H.265-to-H.264 transcoder processes running now",
                )?;
                registry.register(Box::new(g.clone()))?;
                g
            },
        })
    }

    /// Adds one to a counter.
    pub fn inc(c: &IntCounter) {
        c.inc();
    }
}

/// A request to a media worker, one per [`MediaHandle`] method (and a few the engine sends
/// itself); its fields are those methods' arguments and a reply channel.
// Not `non_exhaustive`: the engine must handle every command, checked by its `match`.
#[allow(missing_docs)] // documented by the MediaHandle methods that send them
pub enum Command {
    SetRole {
        room: String,
        identity: String,
        role: Role,
    },
    SetCameraGrant {
        room: String,
        identity: String,
        camera: bool,
    },
    RemoveFromRoom {
        room: String,
        /// None: everyone.
        identity: Option<String>,
        reason: LeaveReason,
    },
    Join {
        room: String,
        identity: String,
        role: Role,
        kind: SessionKind,
        /// The client decodes H.265 (otherwise it gets H.264 renditions of H.265 tracks).
        decodes_h265: bool,
        events: mpsc::Sender<SessionEvent>,
        reply: oneshot::Sender<Result<Joined, MediaError>>,
    },
    Publish {
        participant: ParticipantId,
        offer: String,
        sources: HashMap<String, TrackSource>,
        reply: oneshot::Sender<Result<String, MediaError>>,
    },
    SubscriberAnswer {
        participant: ParticipantId,
        answer: String,
        reply: oneshot::Sender<Result<(), MediaError>>,
    },
    WhepOffer {
        participant: ParticipantId,
        offer: String,
        only: Option<TrackId>,
        reply: oneshot::Sender<Result<String, MediaError>>,
    },
    Subscribe {
        participant: ParticipantId,
        track: TrackId,
        subscribe: bool,
        reply: oneshot::Sender<Result<(), MediaError>>,
    },
    Candidate {
        participant: ParticipantId,
        publisher: bool,
        mid: Option<String>,
        candidate: String,
        reply: oneshot::Sender<Result<(), MediaError>>,
    },
    PublishTrack {
        participant: ParticipantId,
        source: TrackSource,
        codec: Codec,
        reply: oneshot::Sender<Result<TrackId, MediaError>>,
    },
    Rtp {
        track: TrackId,
        packet: RtpPacket,
    },
    /// A server worker (the H.264 transcoder) needs a keyframe on its down track.
    KeyframeFor {
        down: medsfu_core::DownTrackId,
    },
    Leave {
        participant: ParticipantId,
        reason: LeaveReason,
    },
    Camera {
        from: ParticipantId,
        vehicle: ParticipantId,
        command: CameraCommand,
        reply: oneshot::Sender<Result<u64, MediaError>>,
    },
    CameraState {
        vehicle: ParticipantId,
        id: Option<u64>,
        state: CameraState,
    },
    Rooms {
        reply: oneshot::Sender<(usize, usize)>,
    },
    Record {
        participant: ParticipantId,
        start: bool,
        reply: oneshot::Sender<Result<(), MediaError>>,
    },
    StopRecorders {
        reply: oneshot::Sender<()>,
    },
    Screenshot {
        participant: ParticipantId,
        track: TrackId,
        sector: u8,
        reply: oneshot::Sender<Result<u64, MediaError>>,
    },
    ScreenshotDone {
        recorder: ParticipantId,
        result: Result<std::path::PathBuf, String>,
    },
    RecordingFailed {
        down: medsfu_core::DownTrackId,
        message: String,
    },
}

/// A cheap, cloneable handle to the media server's workers.
#[derive(Clone)]
pub struct MediaHandle {
    /// Each worker's command queue, by worker index.
    workers: Arc<[mpsc::Sender<Command>]>,
    /// Each worker's queue of vehicle RTP, by worker index.
    vehicle_rtp: Arc<[mpsc::Sender<(TrackId, RtpPacket)>]>,
    shards: Shards,
    stats: Arc<MediaStats>,
    local_addr: SocketAddr,
}

impl MediaHandle {
    /// A handle to workers listening on `local_addr`: `workers[i]` and `vehicle_rtp[i]`
    /// are worker i's queues (for the engine that starts them).
    pub fn new(
        workers: Vec<mpsc::Sender<Command>>,
        vehicle_rtp: Vec<mpsc::Sender<(TrackId, RtpPacket)>>,
        stats: Arc<MediaStats>,
        local_addr: SocketAddr,
    ) -> MediaHandle {
        MediaHandle {
            shards: Shards::new(workers.len()),
            workers: workers.into(),
            vehicle_rtp: vehicle_rtp.into(),
            stats,
            local_addr,
        }
    }

    /// The bound media socket address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The server's counters.
    pub fn stats(&self) -> &MediaStats {
        &self.stats
    }

    /// The queue of the worker `command` is for (the first for a question to all: those
    /// go through [`MediaHandle::ask_all`]).
    fn queue(&self, command: &Command) -> &mpsc::Sender<Command> {
        match self.shards.route(command) {
            Route::One(w) => &self.workers[w],
            Route::All => &self.workers[0],
        }
    }

    /// Sends a command that needs no answer. A stopped server has nobody left to act on,
    /// so a failed send is moot.
    async fn tell(&self, command: Command) {
        let _ = self.queue(&command).send(command).await;
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, MediaError> {
        let (reply, rx) = oneshot::channel();
        let command = make(reply);
        self.queue(&command)
            .send(command)
            .await
            .map_err(|_| MediaError::Stopped)?;
        rx.await.map_err(|_| MediaError::Stopped)
    }

    /// Asks every worker the same question; their answers, in worker order.
    async fn ask_all<T>(
        &self,
        make: impl Fn(oneshot::Sender<T>) -> Command,
    ) -> Result<Vec<T>, MediaError> {
        let mut answers = Vec::with_capacity(self.workers.len());
        for w in self.workers.iter() {
            let (reply, rx) = oneshot::channel();
            w.send(make(reply)).await.map_err(|_| MediaError::Stopped)?;
            answers.push(rx);
        }
        let mut out = Vec::with_capacity(answers.len());
        for rx in answers {
            out.push(rx.await.map_err(|_| MediaError::Stopped)?);
        }
        Ok(out)
    }

    /// Adds a participant to a room; room events and offers arrive on `events`.
    pub async fn join(
        &self,
        room: &str,
        identity: &str,
        role: Role,
        kind: SessionKind,
        events: mpsc::Sender<SessionEvent>,
    ) -> Result<Joined, MediaError> {
        self.join_decoding(room, identity, role, kind, true, events)
            .await
    }

    /// Like [`MediaHandle::join`], for a client that says whether it decodes H.265; one
    /// that does not is subscribed to H.264 renditions of the room's H.265 tracks.
    pub async fn join_decoding(
        &self,
        room: &str,
        identity: &str,
        role: Role,
        kind: SessionKind,
        decodes_h265: bool,
        events: mpsc::Sender<SessionEvent>,
    ) -> Result<Joined, MediaError> {
        self.ask(|reply| Command::Join {
            room: room.to_owned(),
            identity: identity.to_owned(),
            role,
            kind,
            decodes_h265,
            events,
            reply,
        })
        .await?
    }

    /// Negotiates (or renegotiates) the participant's publishing connection; returns the
    /// SDP answer. `sources` names the source of each offered m-section by mid.
    pub async fn publish(
        &self,
        participant: ParticipantId,
        offer: String,
        sources: HashMap<String, TrackSource>,
    ) -> Result<String, MediaError> {
        self.ask(|reply| Command::Publish {
            participant,
            offer,
            sources,
            reply,
        })
        .await?
    }

    /// Applies the answer to the last subscriber offer.
    pub async fn subscriber_answer(
        &self,
        participant: ParticipantId,
        answer: String,
    ) -> Result<(), MediaError> {
        self.ask(|reply| Command::SubscriberAnswer {
            participant,
            answer,
            reply,
        })
        .await?
    }

    /// Answers a WHEP offer with the room's tracks mapped onto its receive m-sections;
    /// with `only`, that one track.
    pub async fn whep_offer(
        &self,
        participant: ParticipantId,
        offer: String,
        only: Option<TrackId>,
    ) -> Result<String, MediaError> {
        self.ask(|reply| Command::WhepOffer {
            participant,
            offer,
            only,
            reply,
        })
        .await?
    }

    /// Subscribes to (or, with `subscribe = false`, unsubscribes from) a track.
    pub async fn subscribe(
        &self,
        participant: ParticipantId,
        track: TrackId,
        subscribe: bool,
    ) -> Result<(), MediaError> {
        self.ask(|reply| Command::Subscribe {
            participant,
            track,
            subscribe,
            reply,
        })
        .await?
    }

    /// Adds a remote ICE candidate to the publishing or subscribing connection.
    pub async fn candidate(
        &self,
        participant: ParticipantId,
        publisher: bool,
        mid: Option<String>,
        candidate: String,
    ) -> Result<(), MediaError> {
        self.ask(|reply| Command::Candidate {
            participant,
            publisher,
            mid,
            candidate,
            reply,
        })
        .await?
    }

    /// Removes a participant (fire and forget).
    pub async fn leave(&self, participant: ParticipantId) {
        self.disconnect(participant, LeaveReason::Left).await;
    }

    /// Removes a participant whose connection ended, telling the room why.
    pub async fn disconnect(&self, participant: ParticipantId, reason: LeaveReason) {
        self.tell(Command::Leave {
            participant,
            reason,
        })
        .await;
    }

    /// Gives `identity`'s sessions in `room` a new role (lead hand-over); the room is told.
    pub async fn set_role(&self, room: &str, identity: &str, role: Role) {
        self.tell(Command::SetRole {
            room: room.to_owned(),
            identity: identity.to_owned(),
            role,
        })
        .await;
    }

    /// Lets `identity`'s sessions in `room` steer the camera and take screenshots (or
    /// not); they are told.
    pub async fn set_camera_grant(&self, room: &str, identity: &str, camera: bool) {
        self.tell(Command::SetCameraGrant {
            room: room.to_owned(),
            identity: identity.to_owned(),
            camera,
        })
        .await;
    }

    /// Ends `identity`'s sessions in `room` (everyone's, for `None`), telling them why.
    pub async fn remove_from_room(&self, room: &str, identity: Option<&str>, reason: LeaveReason) {
        self.tell(Command::RemoveFromRoom {
            room: room.to_owned(),
            identity: identity.map(str::to_owned),
            reason,
        })
        .await;
    }

    /// Sends a camera command from `from` (who must be allowed to steer) to a vehicle in
    /// its room; returns the command id its acknowledgement will carry.
    pub async fn camera(
        &self,
        from: ParticipantId,
        vehicle: ParticipantId,
        command: CameraCommand,
    ) -> Result<u64, MediaError> {
        self.ask(|reply| Command::Camera {
            from,
            vehicle,
            command,
            reply,
        })
        .await?
    }

    /// A vehicle reports where its camera points (after command `id`, or on its own).
    pub async fn camera_state(&self, vehicle: ParticipantId, id: Option<u64>, state: CameraState) {
        self.tell(Command::CameraState { vehicle, id, state }).await;
    }

    /// Publishes a track of a [`SessionKind::Vehicle`] session; its packets then go to
    /// [`MediaHandle::rtp`].
    pub async fn publish_track(
        &self,
        participant: ParticipantId,
        source: TrackSource,
        codec: Codec,
    ) -> Result<TrackId, MediaError> {
        self.ask(|reply| Command::PublishTrack {
            participant,
            source,
            codec,
            reply,
        })
        .await?
    }

    /// Hands one RTP packet of a vehicle track to the core without waiting; a packet the
    /// busy server cannot take is dropped and counted (media is late rather than queued).
    pub fn rtp(&self, track: TrackId, packet: RtpPacket) -> Result<(), MediaError> {
        self.vehicle_rtp[self.shards.of_id(track.0)]
            .try_send((track, packet))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => {
                    self.stats.rtp_dropped.busy.inc();
                    MediaError::Busy
                }
                mpsc::error::TrySendError::Closed(_) => MediaError::Stopped,
            })
    }

    /// Starts or stops recording the participant's room on demand (lead or team only).
    pub async fn record(&self, participant: ParticipantId, start: bool) -> Result<(), MediaError> {
        self.ask(|reply| Command::Record {
            participant,
            start,
            reply,
        })
        .await?
    }

    /// Takes a screenshot of an H.265 video track of the participant's room (lead only):
    /// returns the request's number; a [`SessionEvent::Screenshot`] follows.
    pub async fn screenshot(
        &self,
        participant: ParticipantId,
        track: TrackId,
        sector: u8,
    ) -> Result<u64, MediaError> {
        self.ask(|reply| Command::Screenshot {
            participant,
            track,
            sector,
            reply,
        })
        .await?
    }

    /// Stops every recording and voice archive and waits (at most `within`) until their
    /// files are finished; true if they all finished in time.
    pub async fn finish_recordings(&self, within: std::time::Duration) -> bool {
        if self
            .ask_all(|reply| Command::StopRecorders { reply })
            .await
            .is_err()
        {
            return self.stats.recording_active.get() == 0;
        }
        let deadline = tokio::time::Instant::now() + within;
        // The workers are threads that count themselves down when their file is closed.
        while self.stats.recording_active.get() > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        true
    }

    /// Number of rooms and participants.
    pub async fn counts(&self) -> Result<(usize, usize), MediaError> {
        let all = self.ask_all(|reply| Command::Rooms { reply }).await?;
        Ok(all
            .into_iter()
            .fold((0, 0), |(r, p), (rooms, people)| (r + rooms, p + people)))
    }
}
