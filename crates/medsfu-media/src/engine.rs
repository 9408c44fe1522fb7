//! The media engine: peer connections and the room core, stepped by the driver
//! ([`crate::driver`]) with datagrams, commands and timeouts; it queues what it wants sent
//! and never touches the socket itself.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::BytesMut;
use medsfu_core::{
    CameraCommand, Codec, CoreConfig, DownTrackId, LeaveReason, MediaKind, Output, ParticipantId,
    ReceptionReport, Role, RoomEvent, RtpHeader, RtpPacket, Sfu, TrackId, TrackSource,
};
use prometheus::local::LocalHistogram;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::event::{RTCPeerConnectionEvent, RTCTrackEvent, RTCTrackEventInit};
use rtc::peer_connection::message::RTCMessage;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::RTCIceCandidateInit;
use rtc::peer_connection::RTCPeerConnection;
use rtc::rtcp;
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpReceiverId, RTCRtpSenderId};
use rtc::sansio::Protocol;
use rtc::shared::marshal::{Marshal, MarshalSize};
use rtc::shared::time::SystemInstant;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use rustc_hash::FxHashMap;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::demux::{check_stun, classify, stun_server_ufrag, DatagramKind, StunVerdict};
use crate::peer::{self, Direction};
use crate::sdp::{accept_bundle_only, check_publish, media_sections};
use crate::sender_report::SenderClock;
use crate::shard::AddrChange;
use crate::transmit::Transmit;
use crate::{Command, Joined, MediaError, MediaStats, SessionEvent, SessionKind};
use medsfu_media_api::routing::Shards;

type PeerId = u64;

/// Source addresses remembered per peer connection (ICE candidate pairs it may use).
const MAX_ADDRS_PER_PEER: usize = 8;

struct Session {
    kind: SessionKind,
    /// A transcoder's own participant (publishes a rendition; not a real vehicle).
    internal: bool,
    /// The client decodes H.265; otherwise it is given H.264 renditions.
    decodes_h265: bool,
    role: Role,
    room: String,
    events: mpsc::Sender<SessionEvent>,
    publisher: Option<PeerId>,
    subscriber: Option<PeerId>,
    /// Indicator state last told to a vehicle (green, red).
    indicator: (bool, bool),
    /// The lead let this (consultant's) session steer the camera and take screenshots.
    camera_grant: bool,
    /// A recorder's own participant (internal): what it records.
    recorder: Option<Recorder>,
}

/// What a recorder participant records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recorder {
    /// Every track of the room, started and stopped by the lead or the team.
    OnDemand,
    /// Every audio track of the room, always.
    VoiceArchive,
    /// The latest picture of one video track, once.
    Screenshot {
        /// The request's number.
        request: u64,
        /// Who asked.
        by: ParticipantId,
        /// 0: the whole picture; 1-9: a sector of a 3x3 grid.
        sector: u8,
    },
}

impl Recorder {
    fn name(self) -> &'static str {
        match self {
            Recorder::OnDemand => "recording",
            Recorder::VoiceArchive => "voice",
            Recorder::Screenshot { .. } => "screenshot",
        }
    }
}

/// A recorded down track: its recorder participant, the track, and the worker's input.
struct RecordInput {
    recorder: ParticipantId,
    kind: Recorder,
    track: TrackId,
    tx: mpsc::Sender<crate::record::RecInput>,
}

struct Sender {
    sender: RTCRtpSenderId,
    ssrc: u32,
    track: TrackId,
    /// The codec is video (counted by kind per packet without looking at the MIME type).
    video: bool,
    codec: RTCRtpCodec,
    bound: bool,
    /// What its RTCP sender reports say (packets bypass webrtc-rs's report interceptor).
    clock: SenderClock,
}

/// Whether a codec is video, without allocating.
fn is_video(c: &RTCRtpCodec) -> bool {
    c.mime_type
        .get(..6)
        .is_some_and(|p| p.eq_ignore_ascii_case("video/"))
}

struct Peer {
    pc: RTCPeerConnection,
    participant: ParticipantId,
    direction: Direction,
    ufrag: String,
    /// Our ICE password: what a peer's binding requests must be signed with.
    pwd: String,
    /// The peer's ICE password (from its description): what its responses are signed with.
    remote_pwd: Option<String>,
    /// The m-sections of the answer in force (the peer's to our offer, ours to its offer):
    /// the codecs and payload types it takes, by mid.
    answer_sections: Vec<crate::sdp::MediaSection>,
    /// When something authenticated (a signed STUN request, SRTP, SRTCP) last counted as a
    /// sign of life (at most once a second, so the per-packet path stays cheap).
    alive_at: Option<Instant>,
    /// When the connection was set up: the start of its silence until anything arrives.
    created_at: Instant,
    /// The connection was declared failed after a silence (told once per silence).
    silent_failed: bool,
    addrs: Vec<SocketAddr>,
    deadline: Option<Instant>,
    // Publishing side.
    sources: HashMap<String, TrackSource>,
    track_by_ssrc: HashMap<u32, TrackId>,
    /// Negotiated id of the audio-level header extension, per publishing SSRC.
    audio_level_ext: HashMap<u32, u8>,
    track_by_msid: HashMap<String, TrackId>,
    receiver_of: HashMap<TrackId, RTCRtpReceiverId>,
    // Subscribing side.
    senders: FxHashMap<DownTrackId, Sender>,
    down_by_ssrc: HashMap<u32, DownTrackId>,
    offer_pending: bool,
    needs_offer: bool,
    /// DTLS is up: media written now reaches the peer.
    connected: bool,
}

impl Peer {
    /// Records a sender that will carry a down track once negotiated.
    fn add_sender(
        &mut self,
        down: DownTrackId,
        sender: RTCRtpSenderId,
        ssrc: u32,
        track: TrackId,
        codec: RTCRtpCodec,
    ) {
        self.senders.insert(
            down,
            Sender {
                sender,
                ssrc,
                track,
                video: is_video(&codec),
                codec,
                bound: false,
                clock: SenderClock::default(),
            },
        );
        self.down_by_ssrc.insert(ssrc, down);
    }

    fn new(
        pc: RTCPeerConnection,
        participant: ParticipantId,
        direction: Direction,
        (ufrag, pwd): (String, String),
        now: Instant,
    ) -> Peer {
        Peer {
            pc,
            participant,
            direction,
            ufrag,
            pwd,
            remote_pwd: None,
            answer_sections: Vec::new(),
            alive_at: None,
            created_at: now,
            silent_failed: false,
            addrs: Vec::new(),
            deadline: None,
            sources: HashMap::new(),
            track_by_ssrc: HashMap::new(),
            audio_level_ext: HashMap::new(),
            track_by_msid: HashMap::new(),
            receiver_of: HashMap::new(),
            senders: FxHashMap::default(),
            down_by_ssrc: HashMap::new(),
            offer_pending: false,
            needs_offer: false,
            connected: false,
        }
    }
}

pub(crate) struct Engine {
    announce: SocketAddr,
    /// Datagrams queued during the current step, for the driver to send after it (or when
    /// the step pauses, see [`FLUSH_AT`]).
    outbox: Vec<Transmit>,
    /// Arrival times of the live (`false`) and replayed (`true`) RTP copies in `outbox`,
    /// timed once the driver has sent them (one clock read per step, not per copy).
    unsent_copies: Vec<(Instant, bool)>,
    /// Copies forwarded since the driver last sent, `[audio, video]` (packets, payload
    /// bytes): added to the shared counters once per batch, not per copy (workers on
    /// other cores count into the same ones).
    forwarded_unsent: [(u64, u64); 2],
    /// This engine's share of the latency histograms, merged into them once per batch.
    forward_latency: LocalHistogram,
    replay_lag: LocalHistogram,
    /// Some peer connection may want a (re)offer: `send_offers` scans only when set.
    offers_due: bool,
    /// The core has outputs left that wait until the driver sent the queued datagrams.
    core_pending: bool,
    sfu: Sfu,
    stats: Arc<MediaStats>,
    sessions: FxHashMap<ParticipantId, Session>,
    peers: FxHashMap<PeerId, Peer>,
    next_peer: PeerId,
    by_ufrag: HashMap<String, PeerId>,
    by_addr: HashMap<SocketAddr, PeerId>,
    timers: BTreeSet<(Instant, PeerId)>,
    /// Codec each published track was negotiated with, offered to its subscribers as is.
    track_codecs: FxHashMap<TrackId, RTCRtpCodec>,
    scratch_events: Vec<RTCPeerConnectionEvent>,
    scratch_msgs: Vec<RTCMessage>,
    /// Sessions whose event queue was full: their shells stopped taking events (a client
    /// that stopped reading); they are ended after the current step.
    overflowed: RefCell<Vec<ParticipantId>>,
    /// Subscriptions changed: vehicles' indicator lamps may have to change too.
    indicators_dirty: bool,
    /// Id of the next camera command.
    next_camera_command: u64,
    /// This engine's own command queue: transcoders feed their RTP back through it.
    commands: mpsc::Sender<Command>,
    /// H.264 renditions, by H.265 source track.
    renditions: HashMap<TrackId, Rendition>,
    /// Where each transcoder participant's received packets go.
    transcode_inputs: FxHashMap<ParticipantId, mpsc::Sender<crate::transcode::Input>>,
    /// Where recordings go; `None` records nothing.
    recordings: Option<crate::RecordingSettings>,
    /// Recorded down tracks and their workers.
    record_inputs: FxHashMap<DownTrackId, RecordInput>,
    /// Recorder participants, kept out of the room's participant events.
    hidden: std::collections::HashSet<ParticipantId>,
    next_screenshot: u64,
    /// When the once-a-second housekeeping runs next.
    next_second: Option<Instant>,
    /// The core's counters as last exported to metrics.
    counters_seen: medsfu_core::CoreCounters,
    /// Rejected STUN messages not yet logged (one line per interval, not one per message).
    stun_rejected_unlogged: u64,
    /// When a rejected STUN message may be logged next.
    next_stun_log: Option<Instant>,
    /// Lines of the H.264 renditions' pictures.
    rendition_height: u32,
    /// A forwarded packet, marshalled before it is protected (reused: no allocation).
    scratch_rtp: Vec<u8>,
    /// Wall-clock time of one monotonic instant, read once, for sender reports' NTP times.
    wall: Option<SystemInstant>,
    /// Which media worker this engine is, of how many.
    worker: Worker,
    /// Peer addresses bound and unbound since the driver last asked (kept only when
    /// there are several workers: the dispatcher routes datagrams by them).
    addr_changes: Vec<AddrChange>,
    /// `worker.index` as a metric label.
    worker_label: String,
    /// This engine's rooms as last added to `worker.rooms_open`.
    rooms_counted: usize,
    /// What this engine last added to the shared gauges: rooms, participants by role.
    gauges_added: (i64, [i64; Role::ALL.len()]),
}

/// One media worker of a process's `count`: its index, and the rooms open on all of them.
#[derive(Debug, Clone)]
pub(crate) struct Worker {
    /// This worker's index (0 for the only one).
    pub index: usize,
    /// How many workers share the process.
    pub count: usize,
    /// Rooms open on all workers together (each adds its own changes).
    pub rooms_open: Arc<AtomicUsize>,
}

/// How often rejected STUN messages are logged (with their count), at most.
const STUN_LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// A peer's authenticated media or RTCP counts as a sign of life at most this often.
const ALIVE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Datagrams queued before a step pauses for the driver to send them. Batching saves
/// system calls, but every copy in a batch waits for the last one: with 50 subscribers a
/// whole step (~0.5 ms) in one batch doubled the mean added latency, while `sendmmsg` cost
/// the same per datagram as `send_to` on loopback (docs/performance.md). 16 keeps the wait
/// to a few copies.
pub(crate) const FLUSH_AT: usize = 16;

/// Most packets taken from one NACK (a video track's cache holds 1024 by default).
const MAX_NACKED_AT_ONCE: usize = 1024;

/// A connection with nothing authenticated from its peer for this long has failed (what
/// webrtc-rs's ICE timeouts, 5 s + 25 s, did before they were switched off, see `peer`).
const MEDIA_SILENCE_FAILS: std::time::Duration = std::time::Duration::from_secs(30);

/// An H.264 rendition of an H.265 track.
struct Rendition {
    /// The transcoder's participant, which subscribes to the source and publishes `track`.
    internal: ParticipantId,
    /// The H.264 track.
    track: TrackId,
    /// Since when nobody receives it.
    idle_since: Option<Instant>,
}

/// How long an unwatched rendition keeps running (a reload should not restart it).
const RENDITION_LINGER: std::time::Duration = std::time::Duration::from_secs(10);

fn rtc_err(e: impl std::fmt::Display) -> MediaError {
    MediaError::WebRtc(e.to_string())
}

fn sdp_err(e: impl std::fmt::Display) -> MediaError {
    MediaError::BadSdp(e.to_string())
}

impl Engine {
    pub fn new(
        announce: SocketAddr,
        core: CoreConfig,
        recordings: Option<crate::RecordingSettings>,
        stats: Arc<MediaStats>,
        commands: mpsc::Sender<Command>,
        rendition_height: u32,
        worker: Worker,
    ) -> Engine {
        Engine {
            announce,
            outbox: Vec::new(),
            unsent_copies: Vec::new(),
            forwarded_unsent: [(0, 0); 2],
            forward_latency: stats.forward_latency.local(),
            replay_lag: stats.replay_lag.local(),
            offers_due: false,
            core_pending: false,
            sfu: Sfu::with_id_space(core, Shards::first_id(worker.index), worker.count as u64),
            stats,
            sessions: FxHashMap::default(),
            peers: FxHashMap::default(),
            next_peer: 1,
            by_ufrag: HashMap::new(),
            by_addr: HashMap::new(),
            timers: BTreeSet::new(),
            track_codecs: FxHashMap::default(),
            scratch_events: Vec::new(),
            scratch_msgs: Vec::new(),
            overflowed: RefCell::new(Vec::new()),
            indicators_dirty: false,
            next_camera_command: 1,
            commands,
            renditions: HashMap::new(),
            transcode_inputs: FxHashMap::default(),
            recordings,
            record_inputs: FxHashMap::default(),
            hidden: std::collections::HashSet::new(),
            next_screenshot: 1,
            next_second: None,
            counters_seen: medsfu_core::CoreCounters::default(),
            stun_rejected_unlogged: 0,
            next_stun_log: None,
            rendition_height,
            scratch_rtp: Vec::with_capacity(1500),
            wall: None,
            worker_label: worker.index.to_string(),
            worker,
            addr_changes: Vec::new(),
            rooms_counted: 0,
            gauges_added: (0, [0; Role::ALL.len()]),
        }
    }

    /// When [`Engine::handle_timeout`] is due next, if anything waits on time.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let peer = self.timers.first().map(|(t, _)| *t);
        match (peer, self.sfu.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Takes one datagram received from `from` at `now`.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        self.on_datagram(data, from, now);
        self.end_step(now);
    }

    /// Carries out one command from a session shell or an API handler.
    pub fn handle_command(&mut self, now: Instant, cmd: Command) {
        self.on_command(cmd, now);
        self.end_step(now);
    }

    /// Takes one RTP packet of a vehicle's track (from the QUIC server).
    pub fn handle_vehicle_rtp(&mut self, now: Instant, track: TrackId, packet: RtpPacket) {
        self.on_command(Command::Rtp { track, packet }, now);
        self.end_step(now);
    }

    /// Runs what was due at or before `now` (peer and room timers).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.on_timeout(now);
        self.end_step(now);
    }

    /// The datagrams queued by the last steps, for the driver to send (and empty).
    #[must_use]
    pub fn poll_transmits(&mut self) -> &mut Vec<Transmit> {
        &mut self.outbox
    }

    /// The driver sent (or dropped) everything queued, finishing at `now`: each forwarded
    /// RTP copy in it is timed from its packet's arrival, and the step goes on where it
    /// paused (it may queue more: the driver polls again until nothing is queued).
    pub fn handle_sent(&mut self, now: Instant) {
        for (received, replay) in self.unsent_copies.drain(..) {
            let age = now.saturating_duration_since(received).as_secs_f64();
            if replay {
                self.replay_lag.observe(age);
            } else {
                self.forward_latency.observe(age);
            }
        }
        self.replay_lag.flush();
        self.forward_latency.flush();
        for (video, (packets, bytes)) in [false, true].into_iter().zip(self.forwarded_unsent) {
            if packets > 0 {
                self.stats.rtp_forwarded.of(video).inc_by(packets);
                self.stats.rtp_forwarded_bytes.of(video).inc_by(bytes);
            }
        }
        self.forwarded_unsent = [(0, 0); 2];
        if std::mem::take(&mut self.core_pending) {
            self.drain_core_yielding(now);
            self.end_step(now);
        }
    }

    /// Ends the sessions that overflowed during the step.
    fn end_step(&mut self, now: Instant) {
        if !self.overflowed.get_mut().is_empty() {
            self.end_overflowed(now);
        }
        if self.worker.count > 1 {
            self.count_rooms();
        }
    }

    /// Keeps the workers' shared count of open rooms up to date with this one's.
    fn count_rooms(&mut self) {
        let mine = self.sfu.room_count();
        if mine != self.rooms_counted {
            if mine > self.rooms_counted {
                self.worker
                    .rooms_open
                    .fetch_add(mine - self.rooms_counted, Ordering::Relaxed);
            } else {
                self.worker
                    .rooms_open
                    .fetch_sub(self.rooms_counted - mine, Ordering::Relaxed);
            }
            self.rooms_counted = mine;
        }
    }

    /// Peer addresses bound (authenticated) and unbound since the last call, for the
    /// dispatcher of a process with several workers (always empty with one).
    pub fn take_addr_changes(&mut self) -> std::vec::Drain<'_, AddrChange> {
        self.addr_changes.drain(..)
    }

    /// The address peers are told to send to.
    pub fn announce(&self) -> SocketAddr {
        self.announce
    }

    // ----- datagrams -----------------------------------------------------------------------

    fn on_datagram(&mut self, data: &[u8], src: SocketAddr, now: Instant) {
        MediaStats::inc(&self.stats.datagrams_in);
        let pid = match classify(data) {
            DatagramKind::Stun => {
                let by_name = stun_server_ufrag(data).and_then(|u| self.by_ufrag.get(u).copied());
                // Requests name us in USERNAME; responses to our own checks come back from
                // the address they went to. STUN for no session is unknown, like any datagram.
                let Some(owner) = by_name
                    .or_else(|| self.by_addr.get(&src).copied())
                    .and_then(|pid| self.peers.get(&pid))
                else {
                    MediaStats::inc(&self.stats.datagrams_unknown);
                    return;
                };
                let verdict = check_stun(
                    data,
                    owner.pwd.as_bytes(),
                    owner.remote_pwd.as_deref().map(str::as_bytes),
                );
                match verdict {
                    StunVerdict::Authentic => {}
                    StunVerdict::Keepalive => return,
                    StunVerdict::Rejected => {
                        self.stun_rejected(now);
                        return;
                    }
                }
                match by_name {
                    Some(pid) => {
                        if let Some(p) = self.peers.get_mut(&pid) {
                            p.alive_at = Some(now);
                            p.silent_failed = false;
                            if !p.addrs.contains(&src) {
                                // Bounded: checks from ever-new addresses (a peer roaming,
                                // or a flood with a leaked ufrag) cannot grow the maps.
                                if p.addrs.len() >= MAX_ADDRS_PER_PEER {
                                    let old = p.addrs.remove(0);
                                    if self.by_addr.get(&old) == Some(&pid) {
                                        self.by_addr.remove(&old);
                                        if self.worker.count > 1 {
                                            self.addr_changes.push(AddrChange::Unbound(old));
                                        }
                                    }
                                }
                                p.addrs.push(src);
                                self.by_addr.insert(src, pid);
                                if self.worker.count > 1 {
                                    self.addr_changes.push(AddrChange::Bound(src));
                                }
                            }
                            self.sfu.handle_activity(p.participant, now);
                        }
                        Some(pid)
                    }
                    None => self.by_addr.get(&src).copied(),
                }
            }
            DatagramKind::Dtls | DatagramKind::Srtp => self.by_addr.get(&src).copied(),
            DatagramKind::Unknown => None,
        };
        let Some(pid) = pid else {
            MediaStats::inc(&self.stats.datagrams_unknown);
            return;
        };
        let Some(peer) = self.peers.get_mut(&pid) else {
            MediaStats::inc(&self.stats.datagrams_unknown);
            return;
        };
        let msg = TaggedBytesMut {
            now,
            transport: TransportContext {
                local_addr: self.announce,
                peer_addr: src,
                ecn: None,
                transport_protocol: TransportProtocol::UDP,
            },
            message: BytesMut::from(data),
        };
        if peer.pc.handle_read(msg).is_err() {
            MediaStats::inc(&self.stats.datagrams_malformed);
        }
        self.process_peer(pid, now);
        self.drain_core_yielding(now);
    }

    /// Counts a STUN message dropped before ICE and logs (at most once per interval, with
    /// how many there were) that it happened; the address is not logged (patient data).
    fn stun_rejected(&mut self, now: Instant) {
        MediaStats::inc(&self.stats.stun_rejected);
        self.stun_rejected_unlogged += 1;
        if self.next_stun_log.is_none_or(|t| now >= t) {
            self.log_stun_rejected(now);
        }
    }

    /// Logs how many STUN messages were rejected since the last such line.
    fn log_stun_rejected(&mut self, now: Instant) {
        warn!(
            count = self.stun_rejected_unlogged,
            "STUN dropped: it names a session but fails its ICE credentials (MESSAGE-INTEGRITY)"
        );
        self.stun_rejected_unlogged = 0;
        self.next_stun_log = Some(now + STUN_LOG_INTERVAL);
    }

    /// Drains a peer connection's events and messages, then its outgoing datagrams.
    fn process_peer(&mut self, pid: PeerId, now: Instant) {
        let mut events = std::mem::take(&mut self.scratch_events);
        let mut msgs = std::mem::take(&mut self.scratch_msgs);
        let mut alive = None;
        if let Some(p) = self.peers.get_mut(&pid) {
            while let Some(e) = p.pc.poll_event() {
                events.push(e);
            }
            while let Some(m) = p.pc.poll_read() {
                msgs.push(m.message);
            }
            // RTP and RTCP came out of SRTP, so they are authenticated: like a consent
            // check, they show the peer is there (RFC 7675 leaves how to the endpoint;
            // clients such as GStreamer stop checking once connected).
            if !msgs.is_empty() && p.alive_at.is_none_or(|t| now >= t + ALIVE_EVERY) {
                p.alive_at = Some(now);
                p.silent_failed = false;
                alive = Some(p.participant);
            }
        }
        if let Some(participant) = alive {
            self.sfu.handle_activity(participant, now);
        }
        for e in events.drain(..) {
            self.on_peer_event(pid, e, now);
        }
        for m in msgs.drain(..) {
            self.on_peer_message(pid, m, now);
        }
        self.scratch_events = events;
        self.scratch_msgs = msgs;
        self.flush(pid);
    }

    /// Sends what a peer connection wants sent and re-arms its timer.
    fn flush(&mut self, pid: PeerId) {
        let Some(p) = self.peers.get_mut(&pid) else {
            return;
        };
        while let Some(out) = p.pc.poll_write() {
            self.outbox.push(Transmit {
                to: out.transport.peer_addr,
                data: out.message,
            });
        }
        let next = p.pc.poll_timeout();
        if next != p.deadline {
            if let Some(old) = p.deadline {
                self.timers.remove(&(old, pid));
            }
            if let Some(new) = next {
                self.timers.insert((new, pid));
            }
            p.deadline = next;
        }
    }

    fn on_peer_event(&mut self, pid: PeerId, event: RTCPeerConnectionEvent, now: Instant) {
        match event {
            RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init)) => {
                self.on_track_open(pid, init, now);
            }
            RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnClose(msid)) => {
                let track = self
                    .peers
                    .get_mut(&pid)
                    .and_then(|p| p.track_by_msid.remove(&msid));
                if let Some(t) = track {
                    // The track may already be gone with its participant.
                    let _ = self.sfu.unpublish(t);
                    self.track_codecs.remove(&t);
                }
            }
            RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) => {
                let Some(p) = self.peers.get(&pid) else {
                    return;
                };
                let participant = p.participant;
                debug!(peer = pid, %state, "peer connection state");
                if state == RTCPeerConnectionState::Connected {
                    if let Some(p) = self.peers.get_mut(&pid) {
                        p.connected = true;
                    }
                    // Senders negotiated before the connection was up start now, so the
                    // keyframe they ask for is not written into a connection without keys.
                    let _ = self.bind_senders(pid, now);
                }
                if matches!(
                    state,
                    RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed
                ) {
                    self.connection_lost(participant, &state.to_string(), now);
                }
            }
            _ => {}
        }
    }

    /// A participant's connection failed or closed: a WHIP/WHEP session ends with it, a
    /// signalling session is told and keeps its WebSocket.
    fn connection_lost(&mut self, participant: ParticipantId, state: &str, now: Instant) {
        let kind = self.sessions.get(&participant).map(|s| s.kind);
        match kind {
            Some(SessionKind::Whip | SessionKind::Whep) => {
                // A WHIP/WHEP session is its one connection.
                let _ = self.sfu.disconnect(participant, LeaveReason::Timeout, now);
                self.end_session(participant, Some(LeaveReason::Timeout));
            }
            Some(SessionKind::Signalling) => {
                self.tell(
                    participant,
                    SessionEvent::Error {
                        code: "connection_failed",
                        message: format!("media connection {state}"),
                    },
                );
            }
            // Vehicles have no peer connection.
            Some(SessionKind::Vehicle) | None => {}
        }
    }

    fn on_track_open(&mut self, pid: PeerId, init: RTCTrackEventInit, now: Instant) {
        let Some(p) = self.peers.get_mut(&pid) else {
            return;
        };
        if p.direction != Direction::Publish || p.track_by_ssrc.contains_key(&init.ssrc) {
            return;
        }
        let participant = p.participant;
        let tid: usize = init.receiver_id.into();
        let mid =
            p.pc.rtp_transceiver(tid)
                .and_then(|t| t.mid().clone())
                .unwrap_or_default();
        let level_ext = p.pc.rtp_receiver(init.receiver_id).and_then(|mut r| {
            r.get_parameters()
                .rtp_parameters
                .header_extensions
                .iter()
                .find(|e| e.uri == peer::AUDIO_LEVEL_URI)
                .and_then(|e| u8::try_from(e.id).ok())
        });
        if let Some(id) = level_ext {
            p.audio_level_ext.insert(init.ssrc, id);
        }
        let Some((kind, codec)) = p.pc.rtp_receiver(init.receiver_id).and_then(|r| {
            let t = r.track();
            let kind = t.kind();
            t.codec(init.ssrc).cloned().map(|c| (kind, c))
        }) else {
            warn!(peer = pid, "track opened without a negotiated codec");
            return;
        };
        let Some(core_codec) = Codec::from_mime(&codec.mime_type) else {
            warn!(peer = pid, mime = %codec.mime_type, "track in a codec medsfu does not forward");
            return;
        };
        let role = self.sessions.get(&participant).map(|s| s.role);
        let Some(role) = role else { return };
        let media_kind = if kind == RtpCodecKind::Video {
            MediaKind::Video
        } else {
            MediaKind::Audio
        };
        let source = p
            .sources
            .get(&mid)
            .copied()
            .unwrap_or_else(|| TrackSource::default_for(role, media_kind));
        match self.sfu.publish(participant, source, core_codec, now) {
            Ok(track) => {
                if media_kind == MediaKind::Audio {
                    self.ensure_voice_archive(participant, now);
                }
                if let Some(p) = self.peers.get_mut(&pid) {
                    p.track_by_ssrc.insert(init.ssrc, track);
                    p.track_by_msid.insert(init.track_id, track);
                    p.receiver_of.insert(track, init.receiver_id);
                }
                self.track_codecs.insert(track, codec);
                info!(%participant, %track, %source, codec = core_codec.mime(), "track published");
            }
            Err(e) => {
                self.count_limit(&e);
                self.tell(
                    participant,
                    SessionEvent::Error {
                        code: e.code(),
                        message: e.to_string(),
                    },
                );
            }
        }
    }

    /// Counts a refusal by a configured limit (other refusals are counted where they are).
    fn count_limit(&self, e: &medsfu_core::CoreError) {
        use medsfu_core::CoreError as E;
        if matches!(
            e,
            E::TooManyRooms { .. } | E::RoomFull { .. } | E::TooManyTracks { .. }
        ) {
            self.stats.limited.with_label_values(&[e.code()]).inc();
        }
    }

    fn on_peer_message(&mut self, pid: PeerId, msg: RTCMessage, now: Instant) {
        match msg {
            RTCMessage::RtpPacket(_, pkt) => {
                let Some(p) = self.peers.get(&pid) else {
                    return;
                };
                let Some(&track) = p.track_by_ssrc.get(&pkt.header.ssrc) else {
                    MediaStats::inc(&self.stats.rtp_dropped.unknown_ssrc);
                    return;
                };
                self.count_in(track, pkt.payload.len());
                if let Some(&id) = p.audio_level_ext.get(&pkt.header.ssrc) {
                    // RFC 6464: V bit, then the level in -dBov (0 loudest .. 127 silence).
                    if let Some(&b) = pkt
                        .header
                        .get_extension(id)
                        .as_deref()
                        .and_then(|e| e.first())
                    {
                        self.sfu.handle_audio_level(track, b & 0x7F, now);
                    }
                }
                let h = &pkt.header;
                let packet = RtpPacket {
                    header: RtpHeader {
                        payload_type: h.payload_type,
                        marker: h.marker,
                        sequence_number: h.sequence_number,
                        timestamp: h.timestamp,
                        ssrc: h.ssrc,
                    },
                    payload: pkt.payload,
                };
                if self.sfu.handle_rtp(track, packet, now).is_err() {
                    MediaStats::inc(&self.stats.rtp_dropped.refused);
                }
            }
            RTCMessage::RtcpPacket(_, packets) => self.on_rtcp(pid, &packets, now),
            _ => {}
        }
    }

    /// Feedback from a subscriber about our down tracks; terminated here, per leg.
    fn on_rtcp(&mut self, pid: PeerId, packets: &[Box<dyn rtcp::packet::Packet>], now: Instant) {
        use rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
        use rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
        use rtcp::receiver_report::ReceiverReport;
        use rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
        let Some(p) = self.peers.get(&pid) else {
            return;
        };
        if p.direction != Direction::Subscribe {
            return;
        }
        let mut keyframes: Vec<DownTrackId> = Vec::new();
        let mut nacks: Vec<(DownTrackId, Vec<u16>)> = Vec::new();
        let mut reports: Vec<(DownTrackId, ReceptionReport)> = Vec::new();
        for packet in packets {
            let any = packet.as_any();
            if let Some(pli) = any.downcast_ref::<PictureLossIndication>() {
                MediaStats::inc(&self.stats.plis_received);
                keyframes.extend(p.down_by_ssrc.get(&pli.media_ssrc));
            } else if let Some(fir) = any.downcast_ref::<FullIntraRequest>() {
                MediaStats::inc(&self.stats.plis_received);
                keyframes.extend(fir.fir.iter().filter_map(|e| p.down_by_ssrc.get(&e.ssrc)));
            } else if let Some(nack) = any.downcast_ref::<TransportLayerNack>() {
                MediaStats::inc(&self.stats.nacks_received);
                if let Some(d) = p.down_by_ssrc.get(&nack.media_ssrc) {
                    // More than a cache's worth in one NACK is a storm: the rest is not
                    // even listed.
                    let seqs = nack
                        .nacks
                        .iter()
                        .flat_map(|n| n.packet_list())
                        .take(MAX_NACKED_AT_ONCE)
                        .collect();
                    nacks.push((*d, seqs));
                }
            } else if let Some(rr) = any.downcast_ref::<ReceiverReport>() {
                for r in &rr.reports {
                    if let Some(d) = p.down_by_ssrc.get(&r.ssrc) {
                        self.stats
                            .subscriber_fraction_lost
                            .observe(f64::from(r.fraction_lost) / 256.0);
                        if let Some(rate) = p
                            .senders
                            .get(d)
                            .map(|s| s.codec.clock_rate)
                            .filter(|r| *r > 0)
                        {
                            self.stats
                                .subscriber_jitter
                                .observe(f64::from(r.jitter) / f64::from(rate));
                        }
                        reports.push((
                            *d,
                            ReceptionReport {
                                fraction_lost: f32::from(r.fraction_lost) / 256.0,
                                // 24-bit signed field carried in a u32.
                                cumulative_lost: ((r.total_lost << 8) as i32) >> 8,
                                jitter: r.jitter,
                            },
                        ));
                    }
                }
            }
        }
        // Feedback about down tracks removed a moment ago is stale, not an error.
        for d in keyframes {
            let _ = self.sfu.handle_keyframe_request(d, now);
        }
        for (d, seqs) in nacks {
            let _ = self.sfu.handle_nack(d, &seqs, now);
        }
        for (d, r) in reports {
            let _ = self.sfu.handle_receiver_report(d, r);
        }
    }

    // ----- what the core decided -----------------------------------------------------------

    /// Carries out everything the core decided.
    fn drain_core(&mut self, now: Instant) {
        self.drain_core_until(now, usize::MAX);
    }

    /// Carries out what the core decided, pausing once [`FLUSH_AT`] datagrams are queued
    /// (the rest waits in the core until the driver has sent them, see `handle_sent`): the
    /// first subscribers' copies leave while the last are still being encrypted. Only at
    /// the end of a step, where nothing after it depends on the core being drained.
    fn drain_core_yielding(&mut self, now: Instant) {
        self.drain_core_until(now, FLUSH_AT);
    }

    fn drain_core_until(&mut self, now: Instant, flush_at: usize) {
        loop {
            if self.outbox.len() >= flush_at {
                self.core_pending = true;
                break;
            }
            let Some(out) = self.sfu.poll_output() else {
                break;
            };
            match out {
                Output::Rtp(r) => self.send_rtp(r, now),
                Output::RequestKeyframe {
                    track, publisher, ..
                } if self.is_vehicle(publisher) => {
                    MediaStats::inc(&self.stats.keyframe_requests);
                    self.tell(publisher, SessionEvent::KeyframeRequest { track });
                }
                Output::Nack {
                    track,
                    publisher,
                    seqs,
                    ..
                } if self.is_vehicle(publisher) => {
                    self.tell(publisher, SessionEvent::Nack { track, seqs });
                }
                Output::RequestKeyframe {
                    track,
                    publisher,
                    media_ssrc,
                } => {
                    use rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
                    let pli = PictureLossIndication {
                        sender_ssrc: 0,
                        media_ssrc,
                    };
                    if self.write_feedback(publisher, track, Box::new(pli), now) {
                        MediaStats::inc(&self.stats.keyframe_requests);
                    }
                }
                Output::Nack {
                    track,
                    publisher,
                    media_ssrc,
                    seqs,
                } => {
                    use rtcp::transport_feedbacks::transport_layer_nack::{
                        nack_pairs_from_sequence_numbers, TransportLayerNack,
                    };
                    let nack = TransportLayerNack {
                        sender_ssrc: 0,
                        media_ssrc,
                        nacks: nack_pairs_from_sequence_numbers(&seqs),
                    };
                    self.write_feedback(publisher, track, Box::new(nack), now);
                }
                Output::SubscriptionAdded {
                    down,
                    subscriber,
                    track,
                } => {
                    self.indicators_dirty = true;
                    if let Some(kind) = self.sessions.get(&subscriber).and_then(|s| s.recorder) {
                        self.start_track_recorder(kind, subscriber, down, &track, now);
                        continue;
                    }
                    let (is_signalling, decodes_h265) =
                        self.sessions.get(&subscriber).map_or((false, true), |s| {
                            (s.kind == SessionKind::Signalling, s.decodes_h265)
                        });
                    if is_signalling && !decodes_h265 && track.codec == Codec::H265 {
                        // Serve the H.264 rendition instead of a track it cannot decode.
                        let _ = self.sfu.unsubscribe(down);
                        let rendition = self.ensure_rendition(track.id, now).and_then(|()| {
                            self.renditions
                                .get(&track.id)
                                .map(|r| r.track)
                                .ok_or(MediaError::NoCodec)
                        });
                        match rendition {
                            // Already subscribed (auto-subscription) is fine.
                            Ok(r) => {
                                let _ = self.sfu.subscribe(subscriber, r, now);
                            }
                            Err(e) => self.tell(
                                subscriber,
                                SessionEvent::Error {
                                    code: "codec_unsupported",
                                    message: format!(
                                        "track {} is H.265, which this client does not decode, \
                                         and no H.264 rendition could be made: {e}",
                                        track.id
                                    ),
                                },
                            ),
                        }
                        continue;
                    }
                    if is_signalling {
                        if let Err(e) = self.add_sender(subscriber, down, track.id, now) {
                            self.tell(
                                subscriber,
                                SessionEvent::Error {
                                    code: e.code(),
                                    message: e.to_string(),
                                },
                            );
                        }
                    }
                }
                Output::SubscriptionRemoved {
                    down, subscriber, ..
                } => {
                    self.indicators_dirty = true;
                    // Dropping a recorder's input finishes its file.
                    self.record_inputs.remove(&down);
                    self.remove_sender(subscriber, down);
                }
                Output::Notify { to, event } => {
                    // Recorders are server workers, not people: the room learns about
                    // recording from `recording` events, not from its participant list.
                    let hidden = match &event {
                        RoomEvent::ParticipantJoined(p) => self.hidden.contains(&p.id),
                        RoomEvent::ParticipantLeft { participant, .. } => {
                            self.hidden.contains(participant)
                        }
                        _ => false,
                    };
                    if !hidden {
                        self.tell(to, SessionEvent::Room(event));
                    }
                }
                Output::TrackClosed { track } => {
                    self.track_codecs.remove(&track);
                    self.stop_rendition(track, now);
                }
                Output::ParticipantRemoved {
                    participant,
                    reason,
                } => {
                    info!(%participant, reason = reason.as_str(), "participant removed");
                    self.indicators_dirty = true;
                    self.end_session(participant, Some(reason));
                }
                _ => {}
            }
        }
        self.send_offers(now);
        if std::mem::take(&mut self.indicators_dirty) {
            self.update_indicators();
        }
    }

    fn is_vehicle(&self, participant: ParticipantId) -> bool {
        self.sessions
            .get(&participant)
            .is_some_and(|s| s.kind == SessionKind::Vehicle)
    }

    /// Tells each vehicle whose lamps changed: green while a lead or consultant receives
    /// its roof camera, red while a recorder does.
    fn update_indicators(&mut self) {
        let mut watched: HashMap<TrackId, (bool, bool)> = HashMap::new();
        for r in self.record_inputs.values() {
            if r.kind == Recorder::OnDemand {
                watched.entry(r.track).or_default().1 = true;
            }
        }
        for s in self.sessions.values() {
            let (green, red) = match s.role {
                Role::Lead | Role::Consultant => (true, false),
                Role::Recorder => (false, true),
                _ => continue,
            };
            let Some(p) = s.subscriber.and_then(|pid| self.peers.get(&pid)) else {
                continue;
            };
            for snd in p.senders.values() {
                let w = watched.entry(snd.track).or_default();
                w.0 |= green;
                w.1 |= red;
            }
        }
        // Watching an H.264 rendition is watching its H.265 source.
        for (source, r) in &self.renditions {
            if let Some(&(g, red)) = watched.get(&r.track) {
                let w = watched.entry(*source).or_default();
                w.0 |= g;
                w.1 |= red;
            }
        }
        let mut changed = Vec::new();
        for (id, s) in self.sessions.iter_mut() {
            if s.kind != SessionKind::Vehicle {
                continue;
            }
            let mut lamps = (false, false);
            for t in self.sfu.room_tracks(&s.room) {
                if t.publisher == *id && t.source == TrackSource::RoofCamera {
                    if let Some(w) = watched.get(&t.id) {
                        lamps.0 |= w.0;
                        lamps.1 |= w.1;
                    }
                }
            }
            if lamps != s.indicator {
                s.indicator = lamps;
                changed.push((*id, lamps));
            }
        }
        for (id, (green, red)) in changed {
            self.tell(id, SessionEvent::Indicator { green, red });
        }
    }

    fn send_rtp(&mut self, r: medsfu_core::RtpOut, now: Instant) {
        if let Some(rec) = self.record_inputs.get(&r.down) {
            let input = crate::record::RecInput {
                seq: r.header.sequence_number,
                marker: r.header.marker,
                timestamp: r.header.timestamp,
                payload: r.payload,
                arrived: now,
            };
            // A recorder that cannot keep up loses packets, never the engine's time.
            if rec.tx.try_send(input).is_err() {
                MediaStats::inc(&self.stats.rtp_dropped.busy);
            }
            return;
        }
        if let Some(tx) = self.transcode_inputs.get(&r.subscriber) {
            let input = crate::transcode::Input {
                seq: r.header.sequence_number,
                arrived: now,
                marker: r.header.marker,
                payload: r.payload,
            };
            let bytes = input.payload.len() as u64;
            // A transcoder that cannot keep up loses pictures, not the engine's time.
            if tx.try_send(input).is_ok() {
                MediaStats::inc(&self.stats.rtp_forwarded.video);
                self.stats.rtp_forwarded_bytes.video.inc_by(bytes);
            } else {
                MediaStats::inc(&self.stats.rtp_dropped.busy);
            }
            return;
        }
        let Some(pid) = self.sessions.get(&r.subscriber).and_then(|s| s.subscriber) else {
            MediaStats::inc(&self.stats.rtp_dropped.no_subscriber);
            return;
        };
        let Some(p) = self.peers.get_mut(&pid) else {
            MediaStats::inc(&self.stats.rtp_dropped.no_subscriber);
            return;
        };
        let Some(s) = p.senders.get_mut(&r.down) else {
            MediaStats::inc(&self.stats.rtp_dropped.no_subscriber);
            return;
        };
        let (video, bytes) = (s.video, r.payload.len() as u64);
        let header = rtp::header::Header {
            version: 2,
            marker: r.header.marker,
            payload_type: r.header.payload_type,
            sequence_number: r.header.sequence_number,
            timestamp: r.header.timestamp,
            ssrc: r.header.ssrc,
            ..Default::default()
        };
        // Marshalled into a reused buffer and protected straight into the datagram: the
        // one copy and one allocation per subscriber (webrtc-rs's write pipeline took five
        // allocations and moved the packet through seven queues, docs/performance.md).
        let buf = &mut self.scratch_rtp;
        buf.clear();
        buf.resize(header.marshal_size(), 0);
        let protected = header.marshal_to(buf).map_err(|_| ()).and_then(|_| {
            buf.extend_from_slice(&r.payload);
            p.pc.protect_rtp(buf, &header).map_err(|_| ())
        });
        let Ok((to, data)) = protected else {
            MediaStats::inc(&self.stats.rtp_dropped.write_failed);
            return;
        };
        s.clock.on_packet(
            now,
            header.sequence_number,
            header.timestamp,
            r.payload.len(),
        );
        self.outbox.push(Transmit { to, data });
        let counted = &mut self.forwarded_unsent[usize::from(video)];
        counted.0 += 1;
        counted.1 += bytes;
        if !r.retransmission {
            // Timed from the packet's own arrival to its copy on the socket, once sent. A
            // replayed packet is old by design: its age goes to its own histogram.
            self.unsent_copies.push((r.received, r.replay));
        }
    }

    /// Sends each subscriber an RTCP sender report for every track that has carried
    /// packets (once a second, as webrtc-rs's interceptor did).
    fn send_sender_reports(&mut self, now: Instant) {
        // One wall-clock reading for the engine's life: reports of all tracks and peers map
        // to the same NTP clock, and a later clock step cannot skew audio against video.
        let wall = *self.wall.get_or_insert_with(|| SystemInstant::now(now));
        let mut peers = Vec::new();
        for (pid, p) in &mut self.peers {
            if !p.connected || p.senders.is_empty() {
                continue;
            }
            let mut sent = false;
            for s in p.senders.values() {
                let Some(report) = s.clock.report(s.ssrc, s.codec.clock_rate, now, &wall) else {
                    continue;
                };
                if let Some(mut sender) = p.pc.rtp_sender(s.sender) {
                    // A failure here is the connection's own (closing) and shows elsewhere.
                    let _ = sender.write_rtcp(now, vec![Box::new(report)]);
                    sent = true;
                }
            }
            if sent {
                peers.push(*pid);
            }
        }
        for pid in peers {
            self.flush(pid);
        }
    }

    /// Counts a packet received from a publisher, by the kind of its track.
    fn count_in(&self, track: TrackId, payload: usize) {
        let video = self.track_codecs.get(&track).is_some_and(is_video);
        MediaStats::inc(self.stats.rtp_in.of(video));
        self.stats.rtp_in_bytes.of(video).inc_by(payload as u64);
    }

    /// Sets the room and participant gauges (on the core's timer, not per packet).
    fn update_gauges(&mut self) {
        // Workers share the gauges: each adds the change of its own figures.
        let rooms = self.sfu.room_count() as i64;
        self.stats.rooms.add(rooms - self.gauges_added.0);
        self.stats
            .worker_rooms
            .with_label_values(&[self.worker_label.as_str()])
            .set(rooms);
        self.gauges_added.0 = rooms;
        let mut by_role = [0i64; Role::ALL.len()];
        for s in self.sessions.values().filter(|s| !s.internal) {
            if let Some(i) = Role::ALL.iter().position(|r| *r == s.role) {
                by_role[i] += 1;
            }
        }
        for (i, role) in Role::ALL.iter().enumerate() {
            // Added even when nothing changed: every role's series exists from the start.
            self.stats
                .participants
                .with_label_values(&[role.as_str()])
                .add(by_role[i] - self.gauges_added.1[i]);
        }
        self.gauges_added.1 = by_role;
    }

    fn write_feedback(
        &mut self,
        publisher: ParticipantId,
        track: TrackId,
        packet: Box<dyn rtcp::packet::Packet>,
        now: Instant,
    ) -> bool {
        let Some(pid) = self.sessions.get(&publisher).and_then(|s| s.publisher) else {
            return false;
        };
        let Some(p) = self.peers.get_mut(&pid) else {
            return false;
        };
        let Some(&rid) = p.receiver_of.get(&track) else {
            return false;
        };
        let ok =
            p.pc.rtp_receiver(rid)
                .is_some_and(|mut r| r.write_rtcp(now, vec![packet]).is_ok());
        self.flush(pid);
        ok
    }

    fn tell(&self, participant: ParticipantId, event: SessionEvent) {
        if let Some(s) = self.sessions.get(&participant) {
            // A closed receiver means the session is going away; its removal follows.
            if let Err(mpsc::error::TrySendError::Full(_)) = s.events.try_send(event) {
                self.overflowed.borrow_mut().push(participant);
            }
        }
    }

    /// Ends the sessions whose shells fell [`crate::SESSION_EVENTS`] events behind: what
    /// they missed cannot be made good, and buffering more for them has no bound. Their
    /// clients see the connection close and join again.
    fn end_overflowed(&mut self, now: Instant) {
        // Ending one tells the room, which may fill another's queue: loop until none.
        loop {
            let ended = std::mem::take(self.overflowed.get_mut());
            if ended.is_empty() {
                break;
            }
            for participant in ended {
                if !self.sessions.contains_key(&participant) {
                    continue;
                }
                MediaStats::inc(&self.stats.sessions_overflowed);
                info!(%participant, "session ended: its client stopped taking events");
                let _ = self.sfu.disconnect(participant, LeaveReason::Timeout, now);
                self.end_session(participant, Some(LeaveReason::Timeout));
                self.indicators_dirty = true;
            }
            self.drain_core(now);
        }
    }

    // ----- peers ---------------------------------------------------------------------------

    fn new_peer(
        &mut self,
        participant: ParticipantId,
        direction: Direction,
        now: Instant,
    ) -> Result<PeerId, MediaError> {
        let (ufrag, pwd) = peer::ice_credentials(Shards::ufrag_tag(self.worker.index));
        let pc = peer::build(direction, &ufrag, &pwd, self.announce, now).map_err(rtc_err)?;
        let pid = self.next_peer;
        self.next_peer += 1;
        self.by_ufrag.insert(ufrag.clone(), pid);
        self.peers.insert(
            pid,
            Peer::new(pc, participant, direction, (ufrag, pwd), now),
        );
        Ok(pid)
    }

    fn close_peer(&mut self, pid: PeerId) {
        let Some(mut p) = self.peers.remove(&pid) else {
            return;
        };
        if !p.connected {
            // Tells a connection that never came up apart: did the peer's signed checks
            // ever reach this worker (ICE), or did it stop after them (DTLS)?
            info!(
                participant = %p.participant,
                checks_arrived = p.alive_at.is_some(),
                "media connection closed before it was up"
            );
        }
        // Closing queues a DTLS close_notify; send it, errors are moot now.
        let _ = p.pc.close();
        while let Some(out) = p.pc.poll_write() {
            self.outbox.push(Transmit {
                to: out.transport.peer_addr,
                data: out.message,
            });
        }
        self.by_ufrag.remove(&p.ufrag);
        for a in &p.addrs {
            if self.by_addr.get(a) == Some(&pid) {
                self.by_addr.remove(a);
                if self.worker.count > 1 {
                    self.addr_changes.push(AddrChange::Unbound(*a));
                }
            }
        }
        if let Some(d) = p.deadline {
            self.timers.remove(&(d, pid));
        }
    }

    fn end_session(&mut self, participant: ParticipantId, reason: Option<LeaveReason>) {
        let Some(s) = self.sessions.remove(&participant) else {
            return;
        };
        if let Some(reason) = reason {
            // The session may already have hung up.
            let _ = s.events.try_send(SessionEvent::Removed(reason));
        }
        for pid in [s.publisher, s.subscriber].into_iter().flatten() {
            self.close_peer(pid);
        }
    }

    fn add_sender(
        &mut self,
        subscriber: ParticipantId,
        down: DownTrackId,
        track: TrackId,
        now: Instant,
    ) -> Result<(), MediaError> {
        let codec = self
            .track_codecs
            .get(&track)
            .cloned()
            .ok_or(MediaError::Core(medsfu_core::CoreError::UnknownTrack(
                track,
            )))?;
        let pid = match self.sessions.get(&subscriber).and_then(|s| s.subscriber) {
            Some(pid) => pid,
            None => {
                let pid = self.new_peer(subscriber, Direction::Subscribe, now)?;
                if let Some(s) = self.sessions.get_mut(&subscriber) {
                    s.subscriber = Some(pid);
                }
                pid
            }
        };
        let p = self.peers.get_mut(&pid).ok_or(MediaError::UnknownSession)?;
        let (sender, ssrc) = attach_track(&mut p.pc, track, &codec)?;
        p.add_sender(down, sender, ssrc, track, codec);
        p.needs_offer = true;
        self.offers_due = true;
        Ok(())
    }

    fn remove_sender(&mut self, subscriber: ParticipantId, down: DownTrackId) {
        let Some(session) = self.sessions.get(&subscriber) else {
            return;
        };
        // WHEP has no renegotiation channel: the m-section just falls silent.
        let renegotiate = session.kind == SessionKind::Signalling;
        let Some(pid) = session.subscriber else {
            return;
        };
        let Some(p) = self.peers.get_mut(&pid) else {
            return;
        };
        if let Some(s) = p.senders.remove(&down) {
            p.down_by_ssrc.remove(&s.ssrc);
            if renegotiate && p.pc.remove_track(s.sender).is_ok() {
                p.needs_offer = true;
                self.offers_due = true;
            }
        }
    }

    /// Sends a (re)offer on every signalling subscriber connection whose tracks changed and
    /// that is not waiting for an answer already.
    fn send_offers(&mut self, now: Instant) {
        // Runs after every packet: without this flag it would scan every peer each time.
        if !std::mem::take(&mut self.offers_due) {
            return;
        }
        let due: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.needs_offer && !p.offer_pending)
            .map(|(id, _)| *id)
            .collect();
        for pid in due {
            let Some(p) = self.peers.get_mut(&pid) else {
                continue;
            };
            p.needs_offer = false;
            let participant = p.participant;
            let offer =
                p.pc.create_offer(None)
                    .and_then(|o| p.pc.set_local_description(now, o));
            let sdp = p.pc.local_description().map(|d| d.sdp.clone());
            match (offer, sdp) {
                (Ok(()), Some(sdp)) => {
                    p.offer_pending = true;
                    let mut tracks = Vec::new();
                    for s in p.senders.values() {
                        let tid: usize = s.sender.into();
                        if let Some(mid) = p.pc.rtp_transceiver(tid).and_then(|t| t.mid().clone()) {
                            tracks.push((mid, s.track));
                        }
                    }
                    self.tell(participant, SessionEvent::Offer { sdp, tracks });
                }
                (Err(e), _) => warn!(peer = pid, error = %e, "could not create an offer"),
                (Ok(()), None) => warn!(peer = pid, "offer has no local description"),
            }
            self.flush(pid);
        }
    }

    /// Binds every negotiated but unbound sender of a subscriber connection to its down
    /// track, with the payload type the subscriber chose.
    fn bind_senders(&mut self, pid: PeerId, now: Instant) -> Vec<TrackId> {
        let mut unsupported = Vec::new();
        let Some(p) = self.peers.get_mut(&pid) else {
            return unsupported;
        };
        let connected = p.connected;
        let mut binds = Vec::new();
        for (down, s) in p.senders.iter_mut().filter(|(_, s)| !s.bound) {
            // The payload type the peer listed for the track's codec on its section (its
            // own in an offer, ours echoed in an answer); a codec it did not list is not
            // sent, whatever the sender was set up with.
            let tid: usize = s.sender.into();
            let mid = p.pc.rtp_transceiver(tid).and_then(|t| t.mid().clone());
            let section = mid.and_then(|m| {
                p.answer_sections
                    .iter()
                    .find(|x| x.mid.as_deref() == Some(m.as_str()))
            });
            let listed = section.map(|sec| {
                sec.codec_for(&s.codec.mime_type, &s.codec.sdp_fmtp_line)
                    .map(|c| c.payload_type)
            });
            let pt = match listed {
                Some(pt) => pt,
                None => p.pc.rtp_sender(s.sender).and_then(|mut snd| {
                    snd.get_parameters()
                        .rtp_parameters
                        .codecs
                        .iter()
                        .find(|c| {
                            c.rtp_codec
                                .mime_type
                                .eq_ignore_ascii_case(&s.codec.mime_type)
                                && fmtp_compatible(&c.rtp_codec, &s.codec)
                        })
                        .map(|c| c.payload_type)
                }),
            };
            match pt {
                Some(pt) if connected => {
                    s.bound = true;
                    binds.push((*down, s.ssrc, pt));
                }
                Some(_) => {}
                None => unsupported.push(s.track),
            }
        }
        for (down, ssrc, pt) in binds {
            // The down track may have gone while the offer was out.
            let _ = self.sfu.bind_down_track(down, ssrc, pt, now);
        }
        unsupported
    }

    // ----- commands ------------------------------------------------------------------------

    fn on_command(&mut self, cmd: Command, now: Instant) {
        // Packets are most commands; membership changes are few and move the gauges.
        let membership = !matches!(cmd, Command::Rtp { .. });
        match cmd {
            Command::Join {
                room,
                identity,
                role,
                kind,
                decodes_h265,
                events,
                reply,
            } => {
                // A recorder on signalling (`medsfu record`) learns of tracks there and
                // takes each over its own WHEP session: nothing is sent to it here.
                let auto_subscribe = kind == SessionKind::Signalling && role != Role::Recorder;
                if self.worker.count > 1 {
                    let all = self.worker.rooms_open.load(Ordering::Relaxed);
                    self.sfu
                        .set_rooms_elsewhere(all.saturating_sub(self.rooms_counted));
                }
                if let Err(e) = self.sfu.admit(&room, &identity) {
                    self.count_limit(&e);
                    let _ = reply.send(Err(e.into()));
                    return;
                }
                let participant = self.sfu.join(&room, &identity, role, auto_subscribe, now);
                self.sessions.insert(
                    participant,
                    Session {
                        kind,
                        role,
                        room,
                        events,
                        publisher: None,
                        subscriber: None,
                        indicator: (false, false),
                        camera_grant: false,
                        internal: false,
                        decodes_h265,
                        recorder: None,
                    },
                );
                // The joiner may have given up waiting.
                let _ = reply.send(Ok(Joined { participant }));
            }
            Command::Publish {
                participant,
                offer,
                sources,
                reply,
            } => {
                let r = self.publish(participant, &offer, sources, now);
                let _ = reply.send(r);
            }
            Command::SubscriberAnswer {
                participant,
                answer,
                reply,
            } => {
                let r = self.subscriber_answer(participant, answer, now);
                let _ = reply.send(r);
            }
            Command::WhepOffer {
                participant,
                offer,
                only,
                reply,
            } => {
                let r = self.whep_offer(participant, &offer, only, now);
                let _ = reply.send(r);
            }
            Command::Subscribe {
                participant,
                track,
                subscribe,
                reply,
            } => {
                let r = if subscribe {
                    self.sfu.subscribe(participant, track, now).map(|_| ())
                } else {
                    self.unsubscribe(participant, track)
                };
                let _ = reply.send(r.map_err(MediaError::from));
            }
            Command::Candidate {
                participant,
                publisher,
                mid,
                candidate,
                reply,
            } => {
                let r = self.add_candidate(participant, publisher, mid, candidate);
                let _ = reply.send(r);
            }
            Command::SetRole {
                room,
                identity,
                role,
            } => {
                for pid in self.sessions_of(&room, Some(&identity)) {
                    if let Some(s) = self.sessions.get_mut(&pid) {
                        s.role = role;
                    }
                    // The session exists, so its participant does.
                    let _ = self.sfu.set_role(pid, role);
                }
            }
            Command::SetCameraGrant {
                room,
                identity,
                camera,
            } => {
                for pid in self.sessions_of(&room, Some(&identity)) {
                    let changed = self
                        .sessions
                        .get_mut(&pid)
                        .is_some_and(|s| std::mem::replace(&mut s.camera_grant, camera) != camera);
                    if changed {
                        self.tell(pid, SessionEvent::CameraGrant { camera });
                    }
                }
            }
            Command::RemoveFromRoom {
                room,
                identity,
                reason,
            } => {
                for pid in self.sessions_of(&room, identity.as_deref()) {
                    let _ = self.sfu.disconnect(pid, reason, now);
                    self.end_session(pid, Some(reason));
                }
                self.indicators_dirty = true;
            }
            Command::Leave {
                participant,
                reason,
            } => {
                // Already gone (timed out, replaced) is fine.
                let _ = self.sfu.disconnect(participant, reason, now);
                self.end_session(participant, None);
                self.indicators_dirty = true;
            }
            Command::Camera {
                from,
                vehicle,
                command,
                reply,
            } => {
                let r = self.camera(from, vehicle, command);
                let _ = reply.send(r);
            }
            Command::CameraState { vehicle, id, state } => {
                if let Some(room) = self.sessions.get(&vehicle).map(|s| s.room.clone()) {
                    let everyone: Vec<ParticipantId> = self
                        .sessions
                        .iter()
                        .filter(|(p, s)| s.room == room && **p != vehicle)
                        .map(|(p, _)| *p)
                        .collect();
                    for p in everyone {
                        self.tell(p, SessionEvent::CameraState { vehicle, id, state });
                    }
                }
            }
            Command::PublishTrack {
                participant,
                source,
                codec,
                reply,
            } => {
                let r = self.publish_track(participant, source, codec, now);
                let _ = reply.send(r);
            }
            Command::Rtp { track, packet } => {
                self.count_in(track, packet.payload.len());
                if self.sfu.handle_rtp(track, packet, now).is_err() {
                    MediaStats::inc(&self.stats.rtp_dropped.refused);
                }
            }
            Command::KeyframeFor { down } => {
                // Aggregated and throttled upstream like a subscriber's PLI; a track gone
                // meanwhile needs nothing.
                let _ = self.sfu.handle_keyframe_request(down, now);
            }
            Command::Rooms { reply } => {
                let _ = reply.send((self.sfu.room_count(), self.sfu.participant_count()));
            }
            Command::Record {
                participant,
                start,
                reply,
            } => {
                let r = self.record(participant, start, now);
                let _ = reply.send(r);
            }
            Command::Screenshot {
                participant,
                track,
                sector,
                reply,
            } => {
                let r = self.screenshot(participant, track, sector, now);
                let _ = reply.send(r);
            }
            Command::ScreenshotDone { recorder, result } => {
                if let Some(Some(Recorder::Screenshot { request, by, .. })) =
                    self.sessions.get(&recorder).map(|s| s.recorder)
                {
                    self.stop_recorder(recorder, now);
                    let result = result.map(|p| {
                        p.file_name()
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_default()
                    });
                    match &result {
                        Ok(_) => info!(request, "screenshot saved"),
                        Err(e) => warn!(request, error = %e, "screenshot failed"),
                    }
                    self.tell(by, SessionEvent::Screenshot { request, result });
                }
            }
            Command::RecordingFailed { down, message } => {
                if let Some(r) = self.record_inputs.remove(&down) {
                    let _ = self.sfu.unsubscribe(down);
                    if let Some(room) = self.sessions.get(&r.recorder).map(|s| s.room.clone()) {
                        self.tell_room(
                            &room,
                            SessionEvent::RecordingFailed {
                                track: r.track,
                                message,
                            },
                        );
                    }
                }
            }
            Command::StopRecorders { reply } => {
                let recorders: Vec<ParticipantId> = self
                    .sessions
                    .iter()
                    .filter(|(_, s)| s.recorder.is_some())
                    .map(|(p, _)| *p)
                    .collect();
                for r in recorders {
                    self.stop_recorder(r, now);
                }
                // Nothing starts again: the server is stopping.
                self.recordings = None;
                let _ = reply.send(());
            }
        }
        self.drain_core_yielding(now);
        if membership {
            self.update_gauges();
        }
    }

    /// The people's sessions in `room` (of `identity`, if given); not server workers.
    fn sessions_of(&self, room: &str, identity: Option<&str>) -> Vec<ParticipantId> {
        self.sessions
            .iter()
            .filter(|(_, s)| s.room == room && !s.internal && s.recorder.is_none())
            .map(|(pid, _)| *pid)
            .filter(|pid| {
                identity.is_none_or(|i| self.sfu.participant(*pid).is_some_and(|p| p.identity == i))
            })
            .collect()
    }

    fn camera(
        &mut self,
        from: ParticipantId,
        vehicle: ParticipantId,
        command: CameraCommand,
    ) -> Result<u64, MediaError> {
        let sender = self.sessions.get(&from).ok_or(MediaError::UnknownSession)?;
        if !sender.role.may_control_camera() && !sender.camera_grant {
            return Err(MediaError::CameraForbidden(sender.role.as_str()));
        }
        let target = self.sessions.get(&vehicle).ok_or(MediaError::NoVehicle)?;
        if target.kind != SessionKind::Vehicle || target.internal || target.room != sender.room {
            return Err(MediaError::NoVehicle);
        }
        command.validate().map_err(MediaError::BadCameraCommand)?;
        let id = self.next_camera_command;
        self.next_camera_command += 1;
        self.tell(vehicle, SessionEvent::Camera { id, command });
        Ok(id)
    }

    fn publish_track(
        &mut self,
        participant: ParticipantId,
        source: TrackSource,
        codec: Codec,
        now: Instant,
    ) -> Result<TrackId, MediaError> {
        if !self.is_vehicle(participant) {
            return Err(MediaError::UnknownSession);
        }
        let rtc_codec = table_codec(codec).ok_or(MediaError::NoCodec)?;
        let track = self
            .sfu
            .publish(participant, source, codec, now)
            .inspect_err(|e| self.count_limit(e))?;
        self.track_codecs.insert(track, rtc_codec);
        info!(%participant, %track, %source, codec = codec.mime(), "vehicle track published");
        if source.kind() == MediaKind::Audio {
            self.ensure_voice_archive(participant, now);
        }
        Ok(track)
    }

    fn unsubscribe(
        &mut self,
        participant: ParticipantId,
        track: TrackId,
    ) -> Result<(), medsfu_core::CoreError> {
        let down = self
            .sessions
            .get(&participant)
            .and_then(|s| s.subscriber)
            .and_then(|pid| self.peers.get(&pid))
            .and_then(|p| p.senders.iter().find(|(_, s)| s.track == track))
            .map(|(d, _)| *d)
            .ok_or(medsfu_core::CoreError::UnknownTrack(track))?;
        self.sfu.unsubscribe(down)
    }

    fn publish(
        &mut self,
        participant: ParticipantId,
        offer: &str,
        sources: HashMap<String, TrackSource>,
        now: Instant,
    ) -> Result<String, MediaError> {
        let session = self
            .sessions
            .get(&participant)
            .ok_or(MediaError::UnknownSession)?;
        let role = session.role;
        // Refuse what the role may not publish before any negotiation happens.
        let sections = crate::sdp::offered_sections(offer).map_err(sdp_err)?;
        let mut all_sources = self
            .sessions
            .get(&participant)
            .and_then(|s| s.publisher)
            .and_then(|pid| self.peers.get(&pid))
            .map(|p| p.sources.clone())
            .unwrap_or_default();
        all_sources.extend(sources.iter().map(|(k, v)| (k.clone(), *v)));
        check_publish(role, &sections, &all_sources)?;
        let session = self
            .sessions
            .get(&participant)
            .ok_or(MediaError::UnknownSession)?;
        let desc = RTCSessionDescription::offer(accept_bundle_only(offer)).map_err(sdp_err)?;
        let (pid, fresh) = match session.publisher {
            Some(pid) => (pid, false),
            None => (self.new_peer(participant, Direction::Publish, now)?, true),
        };
        let result = (|| {
            let p = self.peers.get_mut(&pid).ok_or(MediaError::UnknownSession)?;
            p.sources.extend(sources);
            p.pc.set_remote_description(now, desc).map_err(sdp_err)?;
            p.remote_pwd = crate::sdp::ice_pwd(offer).map(str::to_owned);
            let answer = p.pc.create_answer(None).map_err(sdp_err)?;
            p.pc.set_local_description(now, answer).map_err(rtc_err)?;
            p.pc.local_description()
                .map(|d| d.sdp.clone())
                .ok_or_else(|| MediaError::WebRtc("no local description".into()))
        })();
        match &result {
            Ok(_) => {
                if let Some(s) = self.sessions.get_mut(&participant) {
                    s.publisher = Some(pid);
                }
                self.flush(pid);
            }
            Err(_) if fresh => self.close_peer(pid),
            Err(_) => {}
        }
        result
    }

    fn subscriber_answer(
        &mut self,
        participant: ParticipantId,
        answer: String,
        now: Instant,
    ) -> Result<(), MediaError> {
        let pid = self
            .sessions
            .get(&participant)
            .and_then(|s| s.subscriber)
            .ok_or(MediaError::NoPendingOffer)?;
        let p = self.peers.get_mut(&pid).ok_or(MediaError::UnknownSession)?;
        if !p.offer_pending {
            return Err(MediaError::NoPendingOffer);
        }
        let remote_pwd = crate::sdp::ice_pwd(&answer).map(str::to_owned);
        let sections = media_sections(&answer).map_err(sdp_err)?;
        let desc = RTCSessionDescription::answer(answer).map_err(sdp_err)?;
        p.pc.set_remote_description(now, desc).map_err(sdp_err)?;
        p.remote_pwd = remote_pwd;
        p.answer_sections = sections;
        p.offer_pending = false;
        // Changes made while the offer was out are offered now.
        self.offers_due = true;
        let unsupported = self.bind_senders(pid, now);
        for t in unsupported {
            if self.sfu.track(t).is_some_and(|i| i.codec == Codec::H265)
                && self.ensure_rendition(t, now).is_ok()
            {
                // This subscriber gets the H.264 rendition (published to the room) instead.
                continue;
            }
            self.tell(
                participant,
                SessionEvent::Error {
                    code: "codec_unsupported",
                    message: format!("your answer accepts no codec of track {t}"),
                },
            );
        }
        self.process_peer(pid, now);
        Ok(())
    }

    fn whep_offer(
        &mut self,
        participant: ParticipantId,
        offer: &str,
        only: Option<TrackId>,
        now: Instant,
    ) -> Result<String, MediaError> {
        let session = self
            .sessions
            .get(&participant)
            .ok_or(MediaError::UnknownSession)?;
        let (role, room) = (session.role, session.room.clone());
        let identity = self
            .sfu
            .participant(participant)
            .map(|p| p.identity.clone())
            .unwrap_or_default();
        let sections = crate::sdp::offered_sections(offer).map_err(sdp_err)?;
        let desc = RTCSessionDescription::offer(accept_bundle_only(offer)).map_err(sdp_err)?;
        // One room track per receiving m-section of the same kind, in publication order,
        // in a codec the section lists: an H.265 track goes to a section without H.265 as
        // its H.264 rendition. Renditions are not offered as tracks of their own.
        let mut available: Vec<_> = self
            .sfu
            .room_tracks(&room)
            .into_iter()
            .filter(|t| t.publisher_identity != identity && role.may_receive(t.source))
            .filter(|t| !self.is_server_worker(t.publisher))
            .filter(|t| only.is_none_or(|o| o == t.id))
            .collect();
        let h264 = h264_rendition_codec();
        let mut chosen = Vec::new();
        let mut unfit = false;
        for m in sections.iter().filter(|m| m.offerer_receives) {
            // Whether the section takes the track (or its rendition), and the format of the
            // section's own that it goes out in.
            let fits = |t: &medsfu_core::TrackInfo| -> Option<(bool, String)> {
                if Some(t.kind()) != m.kind {
                    return None;
                }
                let codec = self.track_codecs.get(&t.id)?;
                if let Some(c) = m.codec_for(&codec.mime_type, &codec.sdp_fmtp_line) {
                    return Some((false, c.fmtp.clone()));
                }
                let h264 = h264.as_ref().filter(|_| t.codec == Codec::H265)?;
                m.codec_for(&h264.mime_type, &h264.sdp_fmtp_line)
                    .map(|c| (true, c.fmtp.clone()))
            };
            if let Some((i, (rendition, fmtp))) = available
                .iter()
                .enumerate()
                .find_map(|(i, t)| fits(t).map(|r| (i, r)))
            {
                chosen.push((available.remove(i), rendition, fmtp, m.mid.clone()));
            } else if available.iter().any(|t| Some(t.kind()) == m.kind) {
                unfit = true;
            }
        }
        if chosen.is_empty() {
            return Err(if unfit {
                MediaError::NoCodec
            } else {
                MediaError::NoTracks
            });
        }
        // Renditions start now (or are running already); one that cannot start leaves its
        // section out rather than silent.
        let mut tracks = Vec::new();
        for (t, rendition, fmtp, mid) in chosen {
            if !rendition {
                tracks.push((t.id, fmtp, mid));
                continue;
            }
            match self.ensure_rendition(t.id, now) {
                Ok(()) => {
                    tracks.extend(self.renditions.get(&t.id).map(|r| (r.track, fmtp, mid)));
                }
                Err(e) => warn!(track = %t.id, error = %e, "no H.264 rendition for a WHEP viewer"),
            }
        }
        if tracks.is_empty() {
            return Err(MediaError::NoCodec);
        }
        let pid = self.new_peer(participant, Direction::Subscribe, now)?;
        if let Some(s) = self.sessions.get_mut(&participant) {
            s.subscriber = Some(pid);
        }
        let result = (|| {
            let p = self.peers.get_mut(&pid).ok_or(MediaError::UnknownSession)?;
            p.pc.set_remote_description(now, desc).map_err(sdp_err)?;
            p.remote_pwd = crate::sdp::ice_pwd(offer).map(str::to_owned);
            let mut attached = Vec::new();
            for (t, fmtp, mid) in &tracks {
                // Set up in the offer's own format that takes it (for H.264, the offer's
                // profile line), so that webrtc-rs answers with that payload type.
                let Some(codec) = self.track_codecs.get(t).cloned() else {
                    continue;
                };
                let mut steer = codec.clone();
                steer.sdp_fmtp_line.clone_from(fmtp);
                if let Ok((sender, ssrc)) = attach_track(&mut p.pc, *t, &steer) {
                    attached.push((*t, sender, ssrc, codec, mid.clone()));
                }
            }
            let answer = p.pc.create_answer(None).map_err(sdp_err)?;
            p.pc.set_local_description(now, answer).map_err(rtc_err)?;
            let sdp =
                p.pc.local_description()
                    .map(|d| d.sdp.clone())
                    .ok_or_else(|| MediaError::WebRtc("no local description".into()))?;
            // The answer is what the client will take: every track must sit on the m-section
            // it was chosen for, sent there (webrtc-rs puts a track on the first free section
            // of its kind, whatever that section's direction), with a codec of the answer
            // that decodes what is sent (webrtc-rs matches H.264 by four hex digits and may
            // leave a line out). Otherwise 406, never a 201 with a silent m-section.
            let negotiated = media_sections(&sdp).map_err(sdp_err)?;
            for (_, sender, _, codec, chosen_mid) in &attached {
                let tid: usize = (*sender).into();
                let mid = p.pc.rtp_transceiver(tid).and_then(|t| t.mid().clone());
                let fits = mid
                    .filter(|m| Some(m) == chosen_mid.as_ref())
                    .and_then(|m| {
                        negotiated
                            .iter()
                            .find(|s| s.mid.as_deref() == Some(m.as_str()))
                    });
                // In our answer, "offerer sends" reads as: the server sends there.
                let fits = fits.is_some_and(|s| {
                    s.offerer_sends && s.accepts(&codec.mime_type, &codec.sdp_fmtp_line)
                });
                if !fits {
                    return Err(MediaError::NoCodec);
                }
            }
            p.answer_sections = negotiated;
            let attached: Vec<_> = attached
                .into_iter()
                .map(|(t, sender, ssrc, codec, _)| (t, sender, ssrc, codec))
                .collect();
            Ok((sdp, attached))
        })();
        let result = result.and_then(|(sdp, attached)| {
            if attached.is_empty() {
                Err(MediaError::NoCodec)
            } else {
                Ok((sdp, attached))
            }
        });
        let (sdp, attached) = match result {
            Ok(r) => r,
            Err(e) => {
                if let Some(s) = self.sessions.get_mut(&participant) {
                    s.subscriber = None;
                }
                self.close_peer(pid);
                return Err(e);
            }
        };
        for (track, sender, ssrc, codec) in attached {
            // Chosen from the same room state a moment ago: refusal is not expected, and a
            // refused track just stays silent.
            let Ok(down) = self.sfu.subscribe(participant, track, now) else {
                continue;
            };
            if let Some(p) = self.peers.get_mut(&pid) {
                p.add_sender(down, sender, ssrc, track, codec);
            }
        }
        let _ = self.bind_senders(pid, now);
        self.flush(pid);
        Ok(sdp)
    }

    fn add_candidate(
        &mut self,
        participant: ParticipantId,
        publisher: bool,
        mid: Option<String>,
        candidate: String,
    ) -> Result<(), MediaError> {
        let s = self
            .sessions
            .get(&participant)
            .ok_or(MediaError::UnknownSession)?;
        let pid = if publisher { s.publisher } else { s.subscriber };
        let pid = pid.ok_or(MediaError::NoPendingOffer)?;
        let p = self.peers.get_mut(&pid).ok_or(MediaError::UnknownSession)?;
        p.pc.add_remote_candidate(RTCIceCandidateInit {
            candidate,
            sdp_mid: mid,
            ..Default::default()
        })
        .map_err(sdp_err)
    }

    // ----- timers --------------------------------------------------------------------------

    fn on_timeout(&mut self, now: Instant) {
        while let Some(&(t, pid)) = self.timers.first() {
            if t > now {
                break;
            }
            self.timers.remove(&(t, pid));
            if let Some(p) = self.peers.get_mut(&pid) {
                p.deadline = None;
                // Errors here are the peer's own (e.g. ICE failed) and surface as events.
                let _ = p.pc.handle_timeout(now);
            }
            self.process_peer(pid, now);
        }
        // The core's periodic tick, or only a paced replay (which comes more often).
        let tick = self.sfu.tick_due(now);
        if tick {
            // A signalling session is alive while its WebSocket is open.
            let alive: Vec<ParticipantId> = self
                .sessions
                .iter()
                .filter(|(_, s)| matches!(s.kind, SessionKind::Signalling | SessionKind::Vehicle))
                .map(|(p, _)| *p)
                .collect();
            for p in alive {
                self.sfu.handle_activity(p, now);
            }
        }
        if self.sfu.poll_timeout().is_some_and(|t| t <= now) {
            self.sfu.handle_timeout(now);
        }
        if tick {
            self.each_second(now);
            self.reap_renditions(now);
            self.reap_recorders(now);
            self.update_gauges();
        }
        self.drain_core_yielding(now);
    }

    /// Once a second: connections whose peer has gone silent, and rejected STUN not yet
    /// logged.
    fn each_second(&mut self, now: Instant) {
        if self.next_second.is_some_and(|t| now < t) {
            return;
        }
        self.next_second = Some(now + std::time::Duration::from_secs(1));
        self.export_core_counters();
        self.fail_silent_peers(now);
        self.send_sender_reports(now);
        if self.stun_rejected_unlogged > 0 && self.next_stun_log.is_none_or(|t| now >= t) {
            self.log_stun_rejected(now);
        }
    }

    /// Adds what the core counted since the last export to the metrics.
    fn export_core_counters(&mut self) {
        let (c, seen) = (self.sfu.counters(), self.counters_seen);
        for (outcome, now, before) in [
            ("resent", c.rtx_sent, seen.rtx_sent),
            (
                "refused_repeat",
                c.rtx_refused_repeat,
                seen.rtx_refused_repeat,
            ),
            (
                "refused_budget",
                c.rtx_refused_budget,
                seen.rtx_refused_budget,
            ),
            (
                "asked_upstream",
                c.nack_upstream_sent,
                seen.nack_upstream_sent,
            ),
            (
                "not_asked_upstream",
                c.nack_upstream_refused,
                seen.nack_upstream_refused,
            ),
        ] {
            if now > before {
                self.stats
                    .nacked
                    .with_label_values(&[outcome])
                    .inc_by(now - before);
            }
        }
        self.counters_seen = c;
    }

    /// Treats connections with nothing authenticated from their peer for
    /// [`MEDIA_SILENCE_FAILS`] as a failed ICE connection: a WHIP/WHEP session ends (its
    /// core timeout usually came first), a signalling session is told `connection_failed`
    /// once per silence and keeps its WebSocket and its connection, which recovers if its
    /// peer is heard again.
    fn fail_silent_peers(&mut self, now: Instant) {
        let silent: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| {
                !p.silent_failed
                    && now.saturating_duration_since(p.alive_at.unwrap_or(p.created_at))
                        >= MEDIA_SILENCE_FAILS
            })
            .map(|(id, _)| *id)
            .collect();
        for pid in silent {
            let Some(p) = self.peers.get_mut(&pid) else {
                continue;
            };
            p.silent_failed = true;
            let participant = p.participant;
            info!(%participant, "media connection silent for 30 s");
            self.connection_lost(participant, "silent", now);
        }
    }

    // ----- H.264 renditions ----------------------------------------------------------------

    /// Starts (once) an H.264 rendition of H.265 track `source`, published in its room.
    fn ensure_rendition(&mut self, source: TrackId, now: Instant) -> Result<(), MediaError> {
        if self.renditions.contains_key(&source) {
            return Ok(());
        }
        let info = self.sfu.track(source).cloned().ok_or(MediaError::Core(
            medsfu_core::CoreError::UnknownTrack(source),
        ))?;
        let room = self
            .sfu
            .participant_room(info.publisher)
            .ok_or(MediaError::UnknownSession)?
            .to_owned();
        let h264 = h264_rendition_codec().ok_or(MediaError::NoCodec)?;
        let identity = format!("{}~h264", info.publisher_identity);
        let internal = self.sfu.join(&room, &identity, Role::Vehicle, false, now);
        // Nobody listens to a transcoder's session events.
        let (events, _) = mpsc::channel(1);
        self.sessions.insert(
            internal,
            Session {
                kind: SessionKind::Vehicle,
                internal: true,
                decodes_h265: true,
                role: Role::Vehicle,
                room,
                events,
                publisher: None,
                subscriber: None,
                indicator: (false, false),
                camera_grant: false,
                recorder: None,
            },
        );
        self.sfu.mark_server_worker(internal);
        // Subscribe first: if that fails, nothing was announced to the room.
        let started = (|| {
            let down = self.sfu.subscribe(internal, source, now)?;
            self.sfu.bind_down_track(down, rand::random(), 126, now)?;
            let track = self.sfu.publish(internal, info.source, Codec::H264, now)?;
            self.track_codecs.insert(track, h264.clone());
            Ok::<(TrackId, medsfu_core::DownTrackId), medsfu_core::CoreError>((track, down))
        })();
        let (track, down) = match started {
            Ok(t) => t,
            Err(e) => {
                let _ = self.sfu.leave(internal, now);
                self.sessions.remove(&internal);
                return Err(e.into());
            }
        };
        let tx = crate::transcode::spawn(
            track,
            down,
            self.rendition_height,
            self.commands.clone(),
            self.stats.transcode_latency.clone(),
            self.stats.transcoders_running.clone(),
        );
        self.transcode_inputs.insert(internal, tx);
        self.renditions.insert(
            source,
            Rendition {
                internal,
                track,
                idle_since: None,
            },
        );
        MediaStats::inc(&self.stats.renditions_started);
        info!(%source, rendition = %track, "H.264 rendition started for subscribers without H.265");
        Ok(())
    }

    fn stop_rendition(&mut self, source: TrackId, now: Instant) {
        let Some(r) = self.renditions.remove(&source) else {
            return;
        };
        // Dropping its input ends the worker and its ffmpeg.
        self.transcode_inputs.remove(&r.internal);
        let _ = self.sfu.leave(r.internal, now);
        self.sessions.remove(&r.internal);
        info!(%source, rendition = %r.track, "H.264 rendition stopped");
    }

    // ----- recording ---------------------------------------------------------------------

    /// Starts or stops the on-demand recording of `participant`'s room.
    fn record(
        &mut self,
        participant: ParticipantId,
        start: bool,
        now: Instant,
    ) -> Result<(), MediaError> {
        let s = self
            .sessions
            .get(&participant)
            .ok_or(MediaError::UnknownSession)?;
        if !medsfu_core::may(s.role, medsfu_core::Action::Record) {
            return Err(MediaError::RecordForbidden(s.role.as_str()));
        }
        if self.recordings.is_none() {
            return Err(MediaError::RecordingDisabled);
        }
        let room = s.room.clone();
        let current = self.recorder_in(&room, Recorder::OnDemand);
        match (start, current) {
            (true, None) => {
                self.start_recorder(&room, Recorder::OnDemand, now);
                info!("recording started");
                self.tell_room(&room, SessionEvent::Recording { active: true });
            }
            (false, Some(r)) => {
                self.stop_recorder(r, now);
                info!("recording stopped");
                self.tell_room(&room, SessionEvent::Recording { active: false });
            }
            // Already as asked: nothing to do.
            _ => {}
        }
        Ok(())
    }

    /// Starts taking a screenshot of `track` for `participant` (the lead).
    fn screenshot(
        &mut self,
        participant: ParticipantId,
        track: TrackId,
        sector: u8,
        now: Instant,
    ) -> Result<u64, MediaError> {
        let s = self
            .sessions
            .get(&participant)
            .ok_or(MediaError::UnknownSession)?;
        if s.role != Role::Lead && !s.camera_grant {
            return Err(MediaError::ScreenshotForbidden(s.role.as_str()));
        }
        if self.recordings.is_none() {
            return Err(MediaError::RecordingDisabled);
        }
        if sector > 9 {
            return Err(MediaError::BadCameraCommand(format!(
                "sector {sector} is not 0 (whole picture) to 9"
            )));
        }
        let room = s.room.clone();
        let screenshotable = self.sfu.track(track).is_some_and(|t| {
            t.codec.is_video()
                && !self.is_server_worker(t.publisher)
                && self.sfu.participant_room(t.publisher) == Some(room.as_str())
        });
        if !screenshotable {
            return Err(MediaError::NotScreenshotable(track.to_string()));
        }
        let request = self.next_screenshot;
        self.next_screenshot += 1;
        let kind = Recorder::Screenshot {
            request,
            by: participant,
            sector,
        };
        let internal = self.start_recorder_with(&room, kind, false, now);
        if let Err(e) = self.sfu.subscribe(internal, track, now) {
            self.stop_recorder(internal, now);
            return Err(e.into());
        }
        Ok(request)
    }

    /// Starts the room's voice archive when the first audio track appears in it.
    fn ensure_voice_archive(&mut self, publisher: ParticipantId, now: Instant) {
        if !self.recordings.as_ref().is_some_and(|r| r.voice_archive) {
            return;
        }
        let Some(room) = self.sessions.get(&publisher).map(|s| s.room.clone()) else {
            return;
        };
        if self.recorder_in(&room, Recorder::VoiceArchive).is_none() {
            self.start_recorder(&room, Recorder::VoiceArchive, now);
        }
    }

    fn recorder_in(&self, room: &str, kind: Recorder) -> Option<ParticipantId> {
        self.sessions
            .iter()
            .find(|(_, s)| s.room == room && s.recorder == Some(kind))
            .map(|(p, _)| *p)
    }

    /// A recorder participant with the recorder role, subscribed to every track of the
    /// room as it appears (the core's auto-subscription); see [`Self::start_track_recorder`].
    fn start_recorder(&mut self, room: &str, kind: Recorder, now: Instant) {
        // Auto-subscribed: every track of the room, now and later (refusals by role rules
        // leave a track unrecorded, as for any participant).
        self.start_recorder_with(room, kind, true, now);
    }

    fn start_recorder_with(
        &mut self,
        room: &str,
        kind: Recorder,
        auto_subscribe: bool,
        now: Instant,
    ) -> ParticipantId {
        let identity = match kind {
            // Each screenshot is its own participant: two may be taken at once.
            Recorder::Screenshot { request, .. } => format!("~screenshot-{request}"),
            _ => format!("~{}", kind.name()),
        };
        let internal = self
            .sfu
            .join(room, &identity, Role::Recorder, auto_subscribe, now);
        self.hidden.insert(internal);
        // Nobody listens to a recorder's session events.
        let (events, _) = mpsc::channel(1);
        self.sessions.insert(
            internal,
            Session {
                kind: SessionKind::Vehicle,
                internal: true,
                decodes_h265: true,
                role: Role::Recorder,
                room: room.to_owned(),
                events,
                publisher: None,
                subscriber: None,
                indicator: (false, false),
                camera_grant: false,
                recorder: Some(kind),
            },
        );
        self.indicators_dirty = true;
        internal
    }

    fn stop_recorder(&mut self, recorder: ParticipantId, now: Instant) {
        // Dropping the inputs finishes the files.
        self.record_inputs.retain(|_, r| r.recorder != recorder);
        let _ = self.sfu.leave(recorder, now);
        self.sessions.remove(&recorder);
        self.indicators_dirty = true;
    }

    /// Starts the file of one track for a recorder participant's new subscription.
    fn start_track_recorder(
        &mut self,
        kind: Recorder,
        recorder: ParticipantId,
        down: DownTrackId,
        track: &medsfu_core::TrackInfo,
        now: Instant,
    ) {
        let video = crate::record::video_codec(track.codec);
        let wanted = match kind {
            // A transcoder's rendition is a copy of a track that is recorded itself.
            Recorder::OnDemand => !self.is_server_worker(track.publisher),
            Recorder::VoiceArchive => track.codec == Codec::Opus,
            Recorder::Screenshot { .. } => video.is_some(),
        };
        if !wanted {
            let _ = self.sfu.unsubscribe(down);
            return;
        }
        let (Some(settings), Some(s)) = (&self.recordings, self.sessions.get(&recorder)) else {
            return;
        };
        if self
            .sfu
            .bind_down_track(down, rand::random(), 0, now)
            .is_err()
        {
            return;
        }
        let started = SystemTime::now();
        let stamp = medsfu_record::utc::file_stamp(
            started
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64),
        );
        if let Recorder::Screenshot { sector, .. } = kind {
            let (tx, rx) = mpsc::channel(4096);
            let suffix = if sector > 0 {
                format!("-sector{sector}")
            } else {
                String::new()
            };
            let path = settings.dir.join(&s.room).join(format!(
                "{stamp}-screenshot-{}-{}{suffix}.png",
                track.id, track.source
            ));
            let commands = self.commands.clone();
            // Screenshots are only of video tracks (`wanted` above).
            let codec = video.unwrap_or(medsfu_record::VideoCodec::H265);
            tokio::spawn(async move {
                let result = crate::record::screenshot(rx, codec, path, sector).await;
                let _ = commands
                    .send(Command::ScreenshotDone { recorder, result })
                    .await;
            });
            self.record_inputs.insert(
                down,
                RecordInput {
                    recorder,
                    kind,
                    track: track.id,
                    tx,
                },
            );
            return;
        }
        let role = self
            .sfu
            .participant(track.publisher)
            .map_or("unknown", |p| p.role.as_str());
        let file = crate::record::TrackFile::new(
            &settings.dir,
            &crate::record::TrackLabel {
                kind: kind.name(),
                room: &s.room,
                track: &track.id.to_string(),
                source: track.source.as_str(),
                codec: track.codec,
                publisher: &track.publisher_identity,
                role,
            },
            started,
        );
        let commands = self.commands.clone();
        let tx = crate::record::spawn(
            file,
            crate::record::RecordStats {
                active: self.stats.recording_active.clone(),
                bytes: self.stats.recording_bytes.clone(),
                failures: self.stats.recording_failures.clone(),
                refused: self.stats.recording_refused.clone(),
            },
            Box::new(move |message| {
                // From the recorder's own thread: a full queue loses the notice, not data.
                let _ = commands.try_send(Command::RecordingFailed { down, message });
            }),
        );
        self.record_inputs.insert(
            down,
            RecordInput {
                recorder,
                kind,
                track: track.id,
                tx,
            },
        );
    }

    /// Whether a participant is one of the server's own workers (a transcoder, a
    /// recorder), not a person or a vehicle.
    fn is_server_worker(&self, participant: ParticipantId) -> bool {
        self.sessions.get(&participant).is_some_and(|s| s.internal)
    }

    /// Stops the recorders of rooms where no real participant is left (a separate
    /// recorder, `medsfu record`, is no participant in that sense).
    fn reap_recorders(&mut self, now: Instant) {
        let idle: Vec<ParticipantId> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.recorder.is_some())
            .filter(|(_, r)| {
                !self
                    .sessions
                    .values()
                    .any(|s| !s.internal && s.role != Role::Recorder && s.room == r.room)
            })
            .map(|(p, _)| *p)
            .collect();
        for r in idle {
            self.stop_recorder(r, now);
        }
    }

    fn tell_room(&self, room: &str, ev: SessionEvent) {
        let everyone: Vec<ParticipantId> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.room == room && !s.internal)
            .map(|(p, _)| *p)
            .collect();
        for p in everyone {
            self.tell(p, ev.clone());
        }
    }

    /// Stops renditions nobody has received for [`RENDITION_LINGER`].
    fn reap_renditions(&mut self, now: Instant) {
        let mut stop = Vec::new();
        for (source, r) in self.renditions.iter_mut() {
            let watched = self.sessions.values().any(|s| {
                s.subscriber
                    .and_then(|pid| self.peers.get(&pid))
                    .is_some_and(|p| p.senders.values().any(|snd| snd.track == r.track))
            });
            if watched {
                r.idle_since = None;
            } else if now.duration_since(*r.idle_since.get_or_insert(now)) >= RENDITION_LINGER {
                stop.push(*source);
            }
        }
        for s in stop {
            self.stop_rendition(s, now);
        }
    }
}

/// The first entry of the codec table in `codec` (how vehicles' tracks are described).
fn table_codec(codec: Codec) -> Option<RTCRtpCodec> {
    peer::codec_table()
        .into_iter()
        .map(|(c, _)| c.rtp_codec)
        .find(|c| Codec::from_mime(&c.mime_type) == Some(codec))
}

/// The codec H.264 renditions are published in (the first H.264 entry of the codec table).
fn h264_rendition_codec() -> Option<RTCRtpCodec> {
    table_codec(Codec::H264)
}

/// Adds a send-only track for `track` in `codec` with a fresh SSRC.
fn attach_track(
    pc: &mut RTCPeerConnection,
    track: TrackId,
    codec: &RTCRtpCodec,
) -> Result<(RTCRtpSenderId, u32), MediaError> {
    let ssrc: u32 = rand::random();
    let kind = if codec.mime_type.to_ascii_lowercase().starts_with("video/") {
        RtpCodecKind::Video
    } else {
        RtpCodecKind::Audio
    };
    let id = track.to_string();
    let t = MediaStreamTrack::new(
        format!("medsfu-{id}"),
        id.clone(),
        id,
        kind,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(ssrc),
                ..Default::default()
            },
            codec: codec.clone(),
            active: true,
            ..Default::default()
        }],
    );
    let sender = pc.add_track(t).map_err(rtc_err)?;
    // Offer every codec of the kind on the m-section, the track's own first. webrtc-rs
    // takes a connection's codecs of a kind from the first m-section of that kind in the
    // answer and refuses later tracks in any other codec (its multi-codec negotiation
    // cannot be switched on), so the first section must carry them all for a viewer to
    // receive H.264 and VP8 cameras at once. Later sections keep their own codec if the
    // full list is refused (it holds codecs the viewer did not accept).
    let mut prefs: Vec<_> = peer::codec_table()
        .into_iter()
        .filter(|(_, k)| *k == kind)
        .map(|(c, _)| c)
        .collect();
    if let Some(i) = prefs.iter().position(|c| {
        c.rtp_codec.mime_type.eq_ignore_ascii_case(&codec.mime_type)
            && fmtp_compatible(&c.rtp_codec, codec)
    }) {
        let own = prefs.remove(i);
        prefs.insert(0, own);
        let tid: usize = sender.into();
        if let Some(mut t) = pc.rtp_transceiver(tid) {
            // Refused: the section keeps the track's codec alone (see above).
            let _ = t.set_codec_preferences(prefs);
        }
    }
    Ok((sender, ssrc))
}

/// Whether a subscriber that negotiated `answered` decodes a track published as `sent` (both
/// of one MIME type). H.264 compares profiles and packetization modes (RFC 6184, as libwebrtc
/// does); other codecs have nothing in their `fmtp` that stops a decoder.
fn fmtp_compatible(answered: &RTCRtpCodec, sent: &RTCRtpCodec) -> bool {
    !answered.mime_type.eq_ignore_ascii_case("video/h264")
        || crate::sdp::h264_decodes(&answered.sdp_fmtp_line, &sent.sdp_fmtp_line)
}
