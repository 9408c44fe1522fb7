//! The room core: rooms, participants, up tracks, down tracks and forwarding decisions.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use medsfu_codec::Codec;

use crate::keyframe::KeyframeRequester;
use crate::munger::Munger;
use crate::nack_limit::{Refused, RtxBudget, UpstreamNacks};
use crate::rtp::{seq_is_newer, RtpHeader, RtpPacket};
use crate::rtx_cache::RtxCache;
use crate::{CoreError, DownTrackId, MediaKind, ParticipantId, Role, TrackId, TrackSource};

/// Tunables of the room core.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// Minimum time between two keyframe requests to one publisher.
    pub keyframe_request_interval: Duration,
    /// A subscriber still waiting for a keyframe this long after the last request asks again.
    pub keyframe_retry_interval: Duration,
    /// A participant with no sign of life for this long is removed.
    pub participant_timeout: Duration,
    /// How long the tracks of a replaced session wait for the same identity to republish.
    pub republish_grace: Duration,
    /// Packets kept per video track for retransmission.
    pub rtx_cache_video: usize,
    /// Packets kept per audio track for retransmission.
    pub rtx_cache_audio: usize,
    /// Granularity of the core's timers.
    pub tick: Duration,
    /// How often the active speaker of each room is re-evaluated.
    pub speaker_interval: Duration,
    /// Seed for initial sequence numbers and timestamps (deterministic in tests).
    pub seed: u64,
    /// A new video subscriber starts from the cached current group of pictures (the last
    /// keyframe onward) when it is complete in the retransmission cache, instead of asking
    /// the publisher for a new keyframe: faster first picture, no burst on the uplink.
    pub gop_replay: bool,
    /// The replay is paced at this multiple of the stream's own bitrate (measured over the
    /// cached group of pictures), so that it catches up with the live stream without a
    /// burst that the network or the subscriber's socket would drop.
    pub replay_pace_factor: u32,
    /// The replay is never paced slower than this (bits per second).
    pub replay_min_bitrate: u64,
    /// What a replay may send at once before pacing starts (bytes).
    pub replay_burst_bytes: u64,
    /// A subscriber's retransmissions may cost this share (percent) of the bytes its
    /// live stream carries; NACKs beyond it are refused (counted), not answered.
    pub rtx_budget_percent: u32,
    /// Retransmission bytes a subscriber may save up (and has when it joins).
    pub rtx_burst_bytes: u64,
    /// The same packet is re-sent to one subscriber, or asked of the publisher, at most
    /// once in this interval however often it is reported lost.
    pub nack_repeat_interval: Duration,
    /// Rooms at most (a join that would open one more is refused).
    pub max_rooms: usize,
    /// Participants per room at most (the server's own are not counted).
    pub max_participants_per_room: usize,
    /// Tracks one participant may publish at once.
    pub max_tracks_per_participant: usize,
}

/// How far behind the newest packet a lost one is still asked of the publisher (a
/// browser keeps about a second of packets for retransmission).
const UPSTREAM_NACK_WINDOW: u16 = 1024;

/// One identity gets the paced replay of a track's group of pictures at most once in this
/// interval: subscribing again and again must not turn into replay after replay (it waits
/// for a keyframe instead, whose requests are throttled per track).
const REPLAY_AGAIN_AFTER: Duration = Duration::from_secs(10);

/// Identities whose spent allowances a track remembers (beyond it, no more are noted:
/// they start afresh, as before).
const REMEMBERED_SUBSCRIBERS: usize = 256;

/// What the core refused or limited since it started (read by the shell for metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CoreCounters {
    /// Packets re-sent from the cache in answer to NACKs.
    pub rtx_sent: u64,
    /// NACKed packets not re-sent: sent to that subscriber a moment ago.
    pub rtx_refused_repeat: u64,
    /// NACKed packets not re-sent: the subscriber's retransmission budget was spent.
    pub rtx_refused_budget: u64,
    /// Packets asked again of publishers.
    pub nack_upstream_sent: u64,
    /// Packets subscribers reported lost that were not asked of the publisher (asked a
    /// moment ago, outside the window it could still send, or the track's allowance spent).
    pub nack_upstream_refused: u64,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            keyframe_request_interval: Duration::from_millis(200),
            keyframe_retry_interval: Duration::from_millis(1000),
            participant_timeout: Duration::from_secs(15),
            republish_grace: Duration::from_secs(10),
            rtx_cache_video: 1024,
            rtx_cache_audio: 64,
            tick: Duration::from_millis(50),
            speaker_interval: Duration::from_millis(300),
            seed: 0x6d65_6473_6675,
            gop_replay: true,
            replay_pace_factor: 4,
            replay_min_bitrate: 4_000_000,
            replay_burst_bytes: 16 * 1200,
            rtx_budget_percent: 50,
            rtx_burst_bytes: 256 * 1024,
            nack_repeat_interval: Duration::from_millis(100),
            max_rooms: 1000,
            max_participants_per_room: 64,
            max_tracks_per_participant: 8,
        }
    }
}

/// Why a participant left its room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LeaveReason {
    /// It said so (signalling `leave` or a closed WebSocket, WHIP/WHEP `DELETE`).
    Left,
    /// Its connection was lost: nothing heard for `participant_timeout`, or its media
    /// connection failed.
    Timeout,
    /// The same identity joined again; this older session was ended.
    Replaced,
    /// Taken out of the room by its lead or an operator.
    Removed,
    /// The room (call) was closed.
    RoomClosed,
}

impl LeaveReason {
    /// The name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            LeaveReason::Left => "left",
            LeaveReason::Timeout => "timeout",
            LeaveReason::Replaced => "replaced",
            LeaveReason::Removed => "removed",
            LeaveReason::RoomClosed => "room_closed",
        }
    }
}

/// A participant as others see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParticipantInfo {
    /// Session id.
    pub id: ParticipantId,
    /// Who it is (from its token).
    pub identity: String,
    /// Its role in the room.
    pub role: Role,
}

/// A published track as subscribers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackInfo {
    /// Track id.
    pub id: TrackId,
    /// The participant currently publishing it.
    pub publisher: ParticipantId,
    /// The publisher's identity (kept across its reconnects).
    pub publisher_identity: String,
    /// What the track carries.
    pub source: TrackSource,
    /// The codec it is sent in.
    pub codec: Codec,
}

impl TrackInfo {
    /// Audio or video.
    pub fn kind(&self) -> MediaKind {
        self.source.kind()
    }
}

/// Something to tell the participants of a room.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RoomEvent {
    /// A participant is in the room.
    ParticipantJoined(ParticipantInfo),
    /// A participant left the room.
    ParticipantLeft {
        /// Who left.
        participant: ParticipantId,
        /// Why.
        reason: LeaveReason,
    },
    /// A track is (or is again) published.
    TrackPublished(TrackInfo),
    /// A track is gone.
    TrackUnpublished {
        /// The track.
        track: TrackId,
    },
    /// The loudest participant of the room changed.
    ActiveSpeaker {
        /// Who speaks now.
        participant: ParticipantId,
    },
    /// A participant's role changed (the lead was handed over).
    RoleChanged {
        /// Whose.
        participant: ParticipantId,
        /// The role now.
        role: Role,
    },
}

/// A receiver report of one subscriber about one down track.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ReceptionReport {
    /// Fraction of packets lost since the last report, 0..=1.
    pub fraction_lost: f32,
    /// Packets lost since the start (may be negative with duplicates).
    pub cumulative_lost: i32,
    /// Interarrival jitter in RTP timestamp units.
    pub jitter: u32,
}

/// Counters and the last receiver report of one down track.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct DownTrackStats {
    /// RTP packets forwarded (retransmissions included).
    pub packets: u64,
    /// Payload bytes forwarded.
    pub payload_bytes: u64,
    /// Packets re-sent from the retransmission cache.
    pub retransmissions: u64,
    /// Last receiver report, if any.
    pub last_report: Option<ReceptionReport>,
}

/// An RTP packet to send to one subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpOut {
    /// The down track it belongs to.
    pub down: DownTrackId,
    /// The subscriber.
    pub subscriber: ParticipantId,
    /// The rewritten header.
    pub header: RtpHeader,
    /// The payload, shared with every other subscriber.
    pub payload: Bytes,
    /// Whether this answers a NACK.
    pub retransmission: bool,
    /// Whether this is a late joiner's replay of the cached group of pictures.
    pub replay: bool,
    /// When the packet arrived from the publisher (the start of the SFU's added latency).
    pub received: Instant,
}

/// What the core asks its shell to do.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Output {
    /// Send this packet to this subscriber.
    Rtp(RtpOut),
    /// Ask the publisher of a track for a keyframe (PLI).
    RequestKeyframe {
        /// The track.
        track: TrackId,
        /// Its publisher.
        publisher: ParticipantId,
        /// The publisher's SSRC.
        media_ssrc: u32,
    },
    /// Ask the publisher to retransmit packets not in the cache (NACK).
    Nack {
        /// The track.
        track: TrackId,
        /// Its publisher.
        publisher: ParticipantId,
        /// The publisher's SSRC.
        media_ssrc: u32,
        /// Publisher sequence numbers.
        seqs: Vec<u16>,
    },
    /// A down track was created: set up a sender for it, then call
    /// [`Sfu::bind_down_track`].
    SubscriptionAdded {
        /// The down track.
        down: DownTrackId,
        /// The subscriber.
        subscriber: ParticipantId,
        /// The track subscribed to.
        track: TrackInfo,
    },
    /// A down track was removed: remove its sender.
    SubscriptionRemoved {
        /// The down track.
        down: DownTrackId,
        /// The subscriber.
        subscriber: ParticipantId,
        /// The track it carried.
        track: TrackId,
    },
    /// Tell one participant about something in its room.
    Notify {
        /// Recipient.
        to: ParticipantId,
        /// What happened.
        event: RoomEvent,
    },
    /// A track is gone for good: forget what the shell kept about it.
    TrackClosed {
        /// The track.
        track: TrackId,
    },
    /// The core removed a participant on its own (timeout, replaced): close its sessions.
    ParticipantRemoved {
        /// Who.
        participant: ParticipantId,
        /// Why.
        reason: LeaveReason,
    },
}

#[derive(Debug)]
struct Participant {
    info: ParticipantInfo,
    room: String,
    auto_subscribe: bool,
    /// A server-side worker (a transcoder): receives and publishes any source.
    server: bool,
    last_activity: Instant,
    published: Vec<TrackId>,
    subscribed: Vec<(TrackId, DownTrackId)>,
}

#[derive(Debug, Default)]
struct Room {
    participants: Vec<ParticipantId>,
    tracks: Vec<TrackId>,
    /// Who is speaking now, and who has been loudest in recent evaluations.
    speaker: Option<ParticipantId>,
    speaker_candidate: Option<(ParticipantId, u8)>,
}

#[derive(Debug)]
struct UpTrack {
    info: TrackInfo,
    room: String,
    /// Set while the publisher was replaced and the same identity may take the track over.
    orphaned_until: Option<Instant>,
    ssrc: Option<u32>,
    /// Increments whenever the publisher's stream restarts (new SSRC or new publisher).
    epoch: u32,
    cache: RtxCache,
    keyframe: KeyframeRequester,
    downs: Vec<DownTrack>,
    /// Smoothed loudness (127 - RFC 6464 level) of an audio track, its highest value since
    /// the last speaker evaluation, and when the track was last heard.
    loudness: f32,
    loudness_peak: f32,
    loud_at: Option<Instant>,
    /// Where the current group of pictures starts: the first packet of the last keyframe
    /// (its SSRC, sequence number and timestamp) and the newest sequence number since.
    gop: Option<Gop>,
    /// The newest sequence number received on the current SSRC, and its timestamp.
    newest: Option<(u16, u32)>,
    /// What subscribers' NACKs may still ask of the publisher.
    nacks_up: UpstreamNacks,
    /// What identities that stopped receiving this track had left of their allowances:
    /// a new subscription (or session) of the same identity continues from there instead
    /// of starting with a full retransmission budget and a fresh replay.
    spent: HashMap<String, Spent>,
}

/// What one identity had left of its allowances on a track when its subscription ended.
#[derive(Debug, Clone, Copy)]
struct Spent {
    rtx_tokens: u64,
    replayed_at: Option<Instant>,
}

impl UpTrack {
    /// Notes what an ending subscription had left of its allowances, for its identity's
    /// next one.
    fn remember(&mut self, d: &DownTrack) {
        if self.spent.len() >= REMEMBERED_SUBSCRIBERS && !self.spent.contains_key(&d.identity) {
            return;
        }
        self.spent.insert(
            d.identity.clone(),
            Spent {
                rtx_tokens: d.rtx.tokens(),
                replayed_at: d.replayed_at,
            },
        );
    }
}

/// The current group of pictures of a video track, as far as the cache holds it.
#[derive(Debug, Clone, Copy)]
struct Gop {
    ssrc: u32,
    first_seq: u16,
    timestamp: u32,
    last_seq: u16,
}

#[derive(Debug)]
struct DownTrack {
    id: DownTrackId,
    subscriber: ParticipantId,
    /// `None` until the shell bound the down track to a negotiated sender.
    munger: Option<Munger>,
    initial: (u16, u32),
    stats: DownTrackStats,
    /// A late joiner's paced replay of the cached group of pictures, while it runs: live
    /// packets are not forwarded to it until the replay has caught up with them.
    replay: Option<Replay>,
    /// What this subscriber's NACKs may still cost.
    rtx: RtxBudget,
    /// The subscriber's identity (its allowances outlive the subscription).
    identity: String,
    /// When this identity last got a replay of this track.
    replayed_at: Option<Instant>,
}

/// Progress of one down track's paced replay.
#[derive(Debug, Clone, Copy)]
struct Replay {
    /// The publisher SSRC and epoch replayed; a new one ends the replay.
    ssrc: u32,
    epoch: u32,
    /// The next publisher sequence number to send.
    next_seq: u16,
    /// Pacing: since when, at how many bytes per second, and how many were sent.
    started: Instant,
    bytes_per_sec: u64,
    sent_bytes: u64,
    /// When the next packets may go.
    next_at: Instant,
}

/// All rooms of one server: the sans-IO forwarding core.
#[derive(Debug)]
pub struct Sfu {
    cfg: CoreConfig,
    rooms: HashMap<String, Room>,
    participants: HashMap<ParticipantId, Participant>,
    tracks: HashMap<TrackId, UpTrack>,
    down_index: HashMap<DownTrackId, TrackId>,
    next_id: u64,
    /// Ids go `next_id`, `next_id + id_step`, ...: see [`Sfu::with_id_space`].
    id_step: u64,
    /// Rooms open on the other servers of the process (counted against `max_rooms`).
    rooms_elsewhere: usize,
    next_tick: Option<Instant>,
    next_speaker_eval: Option<Instant>,
    /// Down tracks with a replay running (few, and only for a moment after a join).
    replaying: Vec<DownTrackId>,
    /// When the earliest running replay may send next (kept, not searched per packet).
    next_replay_at: Option<Instant>,
    counters: CoreCounters,
    out: VecDeque<Output>,
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Sfu {
    /// An empty server.
    pub fn new(cfg: CoreConfig) -> Sfu {
        Sfu {
            cfg,
            rooms: HashMap::new(),
            participants: HashMap::new(),
            tracks: HashMap::new(),
            down_index: HashMap::new(),
            next_id: 1,
            id_step: 1,
            rooms_elsewhere: 0,
            next_tick: None,
            next_speaker_eval: None,
            replaying: Vec::new(),
            next_replay_at: None,
            counters: CoreCounters::default(),
            out: VecDeque::with_capacity(1024),
        }
    }

    /// An empty server handing out ids `first`, `first + step`, `first + 2 * step`...: one
    /// of `step` servers in a process (one per core), whose ids never collide, so an id
    /// alone says which server owns it (`(id - 1) % step` with `first` from 1 to `step`).
    pub fn with_id_space(cfg: CoreConfig, first: u64, step: u64) -> Sfu {
        let mut sfu = Sfu::new(cfg);
        sfu.next_id = first.max(1);
        sfu.id_step = step.max(1);
        sfu
    }

    /// Tells how many rooms the other servers of the process have open: `max_rooms` is
    /// for them all, and [`Sfu::admit`] counts them.
    pub fn set_rooms_elsewhere(&mut self, rooms: usize) {
        self.rooms_elsewhere = rooms;
    }

    /// The configuration in force.
    pub fn config(&self) -> &CoreConfig {
        &self.cfg
    }

    /// What the core refused or limited since it started.
    pub fn counters(&self) -> CoreCounters {
        self.counters
    }

    fn id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += self.id_step;
        id
    }

    fn arm_timer(&mut self, now: Instant) {
        if self.next_tick.is_none() {
            self.next_tick = Some(now + self.cfg.tick);
        }
    }

    // ----- queries -------------------------------------------------------------------------

    /// Number of rooms with anyone or anything in them.
    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    /// Number of participants in all rooms.
    pub fn participant_count(&self) -> usize {
        self.participants.len()
    }

    /// The participant's public info.
    pub fn participant(&self, id: ParticipantId) -> Option<&ParticipantInfo> {
        self.participants.get(&id).map(|p| &p.info)
    }

    /// The room a participant is in.
    pub fn participant_room(&self, id: ParticipantId) -> Option<&str> {
        self.participants.get(&id).map(|p| p.room.as_str())
    }

    /// The participants of a room.
    pub fn room_participants(&self, room: &str) -> Vec<ParticipantInfo> {
        self.rooms
            .get(room)
            .map(|r| {
                r.participants
                    .iter()
                    .filter_map(|p| self.participants.get(p).map(|p| p.info.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The tracks published in a room.
    pub fn room_tracks(&self, room: &str) -> Vec<TrackInfo> {
        self.rooms
            .get(room)
            .map(|r| {
                r.tracks
                    .iter()
                    .filter_map(|t| self.tracks.get(t).map(|t| t.info.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A published track.
    pub fn track(&self, id: TrackId) -> Option<&TrackInfo> {
        self.tracks.get(&id).map(|t| &t.info)
    }

    /// Counters of a down track.
    pub fn down_track_stats(&self, id: DownTrackId) -> Option<DownTrackStats> {
        let t = self.down_index.get(&id)?;
        let up = self.tracks.get(t)?;
        up.downs.iter().find(|d| d.id == id).map(|d| d.stats)
    }

    // ----- membership ----------------------------------------------------------------------

    /// Whether `identity` may join `room` within the limits: rooms at most `max_rooms`,
    /// participants per room at most `max_participants_per_room` (a session of the same
    /// identity, which the join would replace, and the server's own are not counted). Ask
    /// before [`Sfu::join`] for peers; the server's own participants are not limited.
    pub fn admit(&self, room: &str, identity: &str) -> Result<(), CoreError> {
        match self.rooms.get(room) {
            None if self.rooms.len() + self.rooms_elsewhere >= self.cfg.max_rooms => {
                Err(CoreError::TooManyRooms {
                    max: self.cfg.max_rooms,
                })
            }
            None => Ok(()),
            Some(r) => {
                let counted = r
                    .participants
                    .iter()
                    .filter_map(|p| self.participants.get(p))
                    .filter(|p| !p.server && p.info.identity != identity)
                    .count();
                if counted >= self.cfg.max_participants_per_room {
                    Err(CoreError::RoomFull {
                        max: self.cfg.max_participants_per_room,
                    })
                } else {
                    Ok(())
                }
            }
        }
    }

    /// Adds a participant to a room (creating the room) and returns its session id.
    ///
    /// An identity already in the room is replaced: the older session is removed and its
    /// tracks wait `republish_grace` for the new session to publish the same sources, so
    /// that subscribers see one continuous stream across the reconnect. Recorders are not
    /// replaced: one recorder holds a signalling session and a WHEP session per track.
    #[must_use = "the participant id is needed for every later call"]
    pub fn join(
        &mut self,
        room: &str,
        identity: &str,
        role: Role,
        auto_subscribe: bool,
        now: Instant,
    ) -> ParticipantId {
        self.arm_timer(now);
        let existing: Vec<ParticipantId> = self
            .rooms
            .get(room)
            .map(|r| {
                r.participants
                    .iter()
                    .copied()
                    .filter(|p| {
                        self.participants.get(p).is_some_and(|p| {
                            p.info.identity == identity && p.info.role != Role::Recorder
                        })
                    })
                    .collect()
            })
            .filter(|_| role != Role::Recorder)
            .unwrap_or_default();
        for old in existing {
            self.remove_participant(old, LeaveReason::Replaced, now);
            self.out.push_back(Output::ParticipantRemoved {
                participant: old,
                reason: LeaveReason::Replaced,
            });
        }

        let id = ParticipantId(self.id());
        let info = ParticipantInfo {
            id,
            identity: identity.to_owned(),
            role,
        };
        let r = self.rooms.entry(room.to_owned()).or_default();
        let others = r.participants.clone();
        let tracks = r.tracks.clone();
        r.participants.push(id);
        self.participants.insert(
            id,
            Participant {
                info: info.clone(),
                room: room.to_owned(),
                auto_subscribe,
                server: false,
                last_activity: now,
                published: Vec::new(),
                subscribed: Vec::new(),
            },
        );
        for o in &others {
            if let Some(p) = self.participants.get(o) {
                self.out.push_back(Output::Notify {
                    to: id,
                    event: RoomEvent::ParticipantJoined(p.info.clone()),
                });
            }
            self.out.push_back(Output::Notify {
                to: *o,
                event: RoomEvent::ParticipantJoined(info.clone()),
            });
        }
        for t in &tracks {
            if let Some(up) = self.tracks.get(t) {
                self.out.push_back(Output::Notify {
                    to: id,
                    event: RoomEvent::TrackPublished(up.info.clone()),
                });
            }
        }
        // A late joiner learns who is speaking now, not only at the next change.
        if let Some(speaker) = self.rooms.get(room).and_then(|r| r.speaker) {
            self.out.push_back(Output::Notify {
                to: id,
                event: RoomEvent::ActiveSpeaker {
                    participant: speaker,
                },
            });
        }
        if auto_subscribe {
            for t in tracks {
                // Refusals are expected here (roles that may not receive some sources).
                let _ = self.subscribe(id, t, now);
            }
        }
        id
    }

    /// Marks a participant as a server-side worker (e.g. a transcoder publishing an H.264
    /// rendition of a track it receives): role checks on its own subscriptions and
    /// publications are skipped. Clients can never become one.
    pub fn mark_server_worker(&mut self, id: ParticipantId) {
        if let Some(p) = self.participants.get_mut(&id) {
            p.server = true;
        }
    }

    /// Changes a participant's role and tells everyone in its room. Meant for roles with
    /// the same media rights (lead and consultant): existing subscriptions and
    /// publications stay as they are.
    pub fn set_role(&mut self, id: ParticipantId, role: Role) -> Result<(), CoreError> {
        let p = self
            .participants
            .get_mut(&id)
            .ok_or(CoreError::UnknownParticipant(id))?;
        if p.info.role == role {
            return Ok(());
        }
        p.info.role = role;
        let room = p.room.clone();
        let everyone = self
            .rooms
            .get(&room)
            .map(|r| r.participants.clone())
            .unwrap_or_default();
        for to in everyone {
            self.out.push_back(Output::Notify {
                to,
                event: RoomEvent::RoleChanged {
                    participant: id,
                    role,
                },
            });
        }
        Ok(())
    }

    /// Removes a participant at its own request.
    pub fn leave(&mut self, id: ParticipantId, now: Instant) -> Result<(), CoreError> {
        self.disconnect(id, LeaveReason::Left, now)
    }

    /// Removes a participant whose connection the shell saw end, telling others why.
    pub fn disconnect(
        &mut self,
        id: ParticipantId,
        reason: LeaveReason,
        now: Instant,
    ) -> Result<(), CoreError> {
        if !self.participants.contains_key(&id) {
            return Err(CoreError::UnknownParticipant(id));
        }
        self.remove_participant(id, reason, now);
        Ok(())
    }

    /// Records a sign of life from a participant (e.g. an ICE consent check).
    pub fn handle_activity(&mut self, id: ParticipantId, now: Instant) {
        if let Some(p) = self.participants.get_mut(&id) {
            p.last_activity = now;
        }
    }

    fn remove_participant(&mut self, id: ParticipantId, reason: LeaveReason, now: Instant) {
        let Some(p) = self.participants.remove(&id) else {
            return;
        };
        for (track, down) in p.subscribed {
            self.down_index.remove(&down);
            if let Some(up) = self.tracks.get_mut(&track) {
                if let Some(i) = up.downs.iter().position(|d| d.id == down) {
                    let d = up.downs.swap_remove(i);
                    up.remember(&d);
                }
            }
        }
        for t in p.published {
            if reason == LeaveReason::Replaced {
                if let Some(up) = self.tracks.get_mut(&t) {
                    up.orphaned_until = Some(now + self.cfg.republish_grace);
                }
            } else {
                self.remove_track(t);
            }
        }
        if let Some(r) = self.rooms.get_mut(&p.room) {
            r.participants.retain(|x| *x != id);
            if r.speaker == Some(id) {
                r.speaker = None;
            }
            for o in r.participants.clone() {
                self.out.push_back(Output::Notify {
                    to: o,
                    event: RoomEvent::ParticipantLeft {
                        participant: id,
                        reason,
                    },
                });
            }
        }
        self.drop_room_if_empty(&p.room);
    }

    fn drop_room_if_empty(&mut self, room: &str) {
        if self
            .rooms
            .get(room)
            .is_some_and(|r| r.participants.is_empty() && r.tracks.is_empty())
        {
            self.rooms.remove(room);
        }
    }

    // ----- publishing ----------------------------------------------------------------------

    /// Publishes a track; permitted participants with auto-subscribe get a down track.
    #[must_use = "the track id is needed to feed its packets"]
    pub fn publish(
        &mut self,
        publisher: ParticipantId,
        source: TrackSource,
        codec: Codec,
        now: Instant,
    ) -> Result<TrackId, CoreError> {
        let p = self
            .participants
            .get(&publisher)
            .ok_or(CoreError::UnknownParticipant(publisher))?;
        if !p.server && !p.info.role.may_publish(source) {
            return Err(CoreError::PublishForbidden {
                role: p.info.role,
                track_source: source,
            });
        }
        if codec.is_video() != (source.kind() == MediaKind::Video) {
            return Err(CoreError::CodecMismatch {
                codec: codec.mime(),
                track_source: source,
            });
        }
        if !p.server && p.published.len() >= self.cfg.max_tracks_per_participant {
            return Err(CoreError::TooManyTracks {
                max: self.cfg.max_tracks_per_participant,
            });
        }
        let room = p.room.clone();
        let identity = p.info.identity.clone();

        // Take over the track of a replaced session of the same identity, if any.
        let orphan = self.rooms.get(&room).and_then(|r| {
            r.tracks.iter().copied().find(|t| {
                self.tracks.get(t).is_some_and(|up| {
                    up.orphaned_until.is_some()
                        && up.info.publisher_identity == identity
                        && up.info.source == source
                        && up.info.codec == codec
                })
            })
        });
        let id = if let Some(t) = orphan {
            if let Some(up) = self.tracks.get_mut(&t) {
                up.orphaned_until = None;
                up.info.publisher = publisher;
                up.ssrc = None;
                up.epoch = up.epoch.wrapping_add(1);
                // The old stream's pictures are not the new one's start.
                up.newest = None;
                up.gop = None;
                up.keyframe = KeyframeRequester::default();
                let info = up.info.clone();
                self.notify_room(&room, &RoomEvent::TrackPublished(info));
            }
            t
        } else {
            let id = TrackId(self.id());
            let info = TrackInfo {
                id,
                publisher,
                publisher_identity: identity,
                source,
                codec,
            };
            let cap = if codec.is_video() {
                self.cfg.rtx_cache_video
            } else {
                self.cfg.rtx_cache_audio
            };
            self.tracks.insert(
                id,
                UpTrack {
                    info: info.clone(),
                    room: room.clone(),
                    orphaned_until: None,
                    ssrc: None,
                    epoch: 0,
                    cache: RtxCache::new(cap),
                    keyframe: KeyframeRequester::default(),
                    downs: Vec::new(),
                    loudness: 0.0,
                    loudness_peak: 0.0,
                    loud_at: None,
                    gop: None,
                    newest: None,
                    nacks_up: UpstreamNacks::new(),
                    spent: HashMap::new(),
                },
            );
            if let Some(r) = self.rooms.get_mut(&room) {
                r.tracks.push(id);
            }
            self.notify_room(&room, &RoomEvent::TrackPublished(info));
            let members = self
                .rooms
                .get(&room)
                .map(|r| r.participants.clone())
                .unwrap_or_default();
            for m in members {
                if self.participants.get(&m).is_some_and(|p| p.auto_subscribe) {
                    // Refusals are expected (own track, roles that may not receive it).
                    let _ = self.subscribe(m, id, now);
                }
            }
            id
        };
        if let Some(p) = self.participants.get_mut(&publisher) {
            p.published.push(id);
        }
        Ok(id)
    }

    /// Withdraws a track; its subscribers' down tracks are removed.
    pub fn unpublish(&mut self, track: TrackId) -> Result<(), CoreError> {
        let up = self
            .tracks
            .get(&track)
            .ok_or(CoreError::UnknownTrack(track))?;
        let publisher = up.info.publisher;
        if let Some(p) = self.participants.get_mut(&publisher) {
            p.published.retain(|t| *t != track);
        }
        self.remove_track(track);
        Ok(())
    }

    fn remove_track(&mut self, track: TrackId) {
        let Some(up) = self.tracks.remove(&track) else {
            return;
        };
        for d in &up.downs {
            self.down_index.remove(&d.id);
            if let Some(p) = self.participants.get_mut(&d.subscriber) {
                p.subscribed.retain(|(_, x)| *x != d.id);
            }
            self.out.push_back(Output::SubscriptionRemoved {
                down: d.id,
                subscriber: d.subscriber,
                track,
            });
        }
        if let Some(r) = self.rooms.get_mut(&up.room) {
            r.tracks.retain(|t| *t != track);
        }
        self.out.push_back(Output::TrackClosed { track });
        self.notify_room(&up.room, &RoomEvent::TrackUnpublished { track });
        self.drop_room_if_empty(&up.room);
    }

    fn notify_room(&mut self, room: &str, event: &RoomEvent) {
        if let Some(r) = self.rooms.get(room) {
            for p in &r.participants {
                self.out.push_back(Output::Notify {
                    to: *p,
                    event: event.clone(),
                });
            }
        }
    }

    // ----- subscribing ---------------------------------------------------------------------

    /// Subscribes a participant to a track of its room; returns the (new or existing)
    /// down track.
    pub fn subscribe(
        &mut self,
        subscriber: ParticipantId,
        track: TrackId,
        _now: Instant,
    ) -> Result<DownTrackId, CoreError> {
        let p = self
            .participants
            .get(&subscriber)
            .ok_or(CoreError::UnknownParticipant(subscriber))?;
        let up = self
            .tracks
            .get(&track)
            .filter(|t| t.room == p.room)
            .ok_or(CoreError::UnknownTrack(track))?;
        // By identity, not session: a reconnected client must not get its own media back.
        if up.info.publisher == subscriber || up.info.publisher_identity == p.info.identity {
            return Err(CoreError::OwnTrack);
        }
        if !p.server && !p.info.role.may_receive(up.info.source) {
            return Err(CoreError::SubscribeForbidden {
                role: p.info.role,
                track_source: up.info.source,
            });
        }
        if let Some((_, d)) = p.subscribed.iter().find(|(t, _)| *t == track) {
            return Ok(*d);
        }
        let info = up.info.clone();
        let identity = p.info.identity.clone();
        let id = DownTrackId(self.id());
        let r = splitmix64(self.cfg.seed ^ id.0);
        let initial = ((r >> 16) as u16 & 0x7fff, (r >> 32) as u32);
        if let Some(up) = self.tracks.get_mut(&track) {
            let mut rtx = RtxBudget::new(self.cfg.rtx_burst_bytes);
            let spent = up.spent.remove(&identity);
            if let Some(s) = spent {
                rtx.limit_to(s.rtx_tokens);
            }
            up.downs.push(DownTrack {
                id,
                subscriber,
                munger: None,
                initial,
                stats: DownTrackStats::default(),
                replay: None,
                rtx,
                identity,
                replayed_at: spent.and_then(|s| s.replayed_at),
            });
        }
        if let Some(p) = self.participants.get_mut(&subscriber) {
            p.subscribed.push((track, id));
        }
        self.down_index.insert(id, track);
        self.out.push_back(Output::SubscriptionAdded {
            down: id,
            subscriber,
            track: info,
        });
        Ok(id)
    }

    /// Ends a subscription.
    pub fn unsubscribe(&mut self, down: DownTrackId) -> Result<(), CoreError> {
        let track = self
            .down_index
            .remove(&down)
            .ok_or(CoreError::UnknownDownTrack(down))?;
        let mut subscriber = None;
        if let Some(up) = self.tracks.get_mut(&track) {
            if let Some(i) = up.downs.iter().position(|d| d.id == down) {
                let d = up.downs.swap_remove(i);
                up.remember(&d);
                subscriber = Some(d.subscriber);
            }
        }
        if let Some(s) = subscriber {
            if let Some(p) = self.participants.get_mut(&s) {
                p.subscribed.retain(|(_, d)| *d != down);
            }
            self.out.push_back(Output::SubscriptionRemoved {
                down,
                subscriber: s,
                track,
            });
        }
        Ok(())
    }

    /// The shell negotiated a sender for a down track: forwarding starts (for video, at
    /// the next keyframe, which is requested now).
    pub fn bind_down_track(
        &mut self,
        down: DownTrackId,
        ssrc: u32,
        payload_type: u8,
        now: Instant,
    ) -> Result<(), CoreError> {
        let (track, up, i) = Self::find_down(&self.down_index, &mut self.tracks, down)?;
        let d = &mut up.downs[i];
        d.munger = Some(Munger::new(ssrc, payload_type));
        // A rebind starts over: a replay of the old binding is moot.
        d.replay = None;
        let may_replay = self.cfg.gop_replay
            && d.replayed_at
                .is_none_or(|at| now.saturating_duration_since(at) >= REPLAY_AGAIN_AFTER);
        if up.info.codec.is_video() && !(may_replay && self.replay_gop(track, down, now)) {
            self.request_keyframe(track, now);
        }
        Ok(())
    }

    /// Starts a paced replay of the cached current group of pictures to a freshly bound
    /// down track, if the cache holds all of it; returns whether it did.
    fn replay_gop(&mut self, track: TrackId, down: DownTrackId, now: Instant) -> bool {
        let cfg = &self.cfg;
        let Some(up) = self.tracks.get_mut(&track) else {
            return false;
        };
        let (Some(gop), Some(ssrc), Some((newest, newest_ts))) = (up.gop, up.ssrc, up.newest)
        else {
            return false;
        };
        let len = usize::from(newest.wrapping_sub(gop.first_seq)) + 1;
        // Half the sequence space at most: beyond it "newer" is ambiguous (the cache is
        // never larger, see RtxCache::new).
        if gop.ssrc != ssrc || len > up.cache.capacity() || len >= 0x8000 {
            return false;
        }
        let mut bytes = 0u64;
        for i in 0..len {
            match up.cache.get(ssrc, gop.first_seq.wrapping_add(i as u16)) {
                Some(c) => bytes += c.payload.len() as u64,
                None => return false,
            }
        }
        let Some(first) = up.cache.get(ssrc, gop.first_seq) else {
            return false;
        };
        // The stream's rate over the cached pictures; a group shorter than half a second
        // (a keyframe alone) is measured as half a second, so one large picture does not
        // read as a high bitrate.
        let clock = up.info.codec.clock_rate();
        let span = f64::from(newest_ts.wrapping_sub(gop.timestamp)) / f64::from(clock.max(1));
        let rate_bps = (bytes as f64 * 8.0 / span.max(0.5)) as u64;
        let pace_bps = rate_bps
            .saturating_mul(u64::from(cfg.replay_pace_factor.max(1)))
            .max(cfg.replay_min_bitrate.max(8));
        let epoch = up.epoch;
        let Some(d) = up.downs.iter_mut().find(|d| d.id == down) else {
            return false;
        };
        let Some(m) = d.munger.as_mut() else {
            return false;
        };
        m.anchor(epoch, &first.header, clock, d.initial, now);
        d.replayed_at = Some(now);
        d.replay = Some(Replay {
            ssrc,
            epoch,
            next_seq: gop.first_seq,
            started: now,
            bytes_per_sec: pace_bps / 8,
            sent_bytes: 0,
            next_at: now,
        });
        if !self.replaying.contains(&down) {
            self.replaying.push(down);
        }
        self.pace_replays(now);
        true
    }

    /// Sends what each running replay's pace allows by `now`; a replay that has caught up
    /// with the live stream ends, and live forwarding takes over.
    fn pace_replays(&mut self, now: Instant) {
        let burst = self.cfg.replay_burst_bytes;
        let mut next: Option<Instant> = None;
        let mut i = 0;
        while i < self.replaying.len() {
            let down = self.replaying[i];
            let running = match Self::find_down(&self.down_index, &mut self.tracks, down) {
                Ok((_, up, idx)) => Self::pace_one(up, idx, burst, now, &mut self.out),
                Err(_) => None,
            };
            match running {
                Some(at) => {
                    next = Some(next.map_or(at, |n| n.min(at)));
                    i += 1;
                }
                None => {
                    self.replaying.swap_remove(i);
                }
            }
        }
        self.next_replay_at = next;
    }

    /// Paces one down track's replay; when it still runs, when it may send next.
    fn pace_one(
        up: &mut UpTrack,
        idx: usize,
        burst: u64,
        now: Instant,
        out: &mut VecDeque<Output>,
    ) -> Option<Instant> {
        let d = &mut up.downs[idx];
        let (Some(mut r), Some(m)) = (d.replay, d.munger.as_mut()) else {
            d.replay = None;
            return None;
        };
        let newest = match up.newest {
            Some((seq, _)) if up.ssrc == Some(r.ssrc) && up.epoch == r.epoch => seq,
            // The publisher restarted: the live path waits for its next keyframe.
            _ => {
                d.replay = None;
                m.reset_anchor();
                return None;
            }
        };
        if now < r.next_at {
            return Some(r.next_at);
        }
        let elapsed = now.saturating_duration_since(r.started);
        let allowed = burst + (elapsed.as_secs_f64() * r.bytes_per_sec as f64) as u64;
        while !seq_is_newer(r.next_seq, newest) {
            if usize::from(newest.wrapping_sub(r.next_seq)) >= up.cache.capacity() {
                // Fell out of the cache: start over from the next keyframe like any joiner.
                d.replay = None;
                m.reset_anchor();
                return None;
            }
            let Some(c) = up.cache.get(r.ssrc, r.next_seq) else {
                // Lost on the uplink: the subscriber's NACK asks for it like any loss.
                r.next_seq = r.next_seq.wrapping_add(1);
                continue;
            };
            let len = c.payload.len() as u64;
            if r.sent_bytes + len > allowed {
                let wait = (r.sent_bytes + len - allowed) as f64 / r.bytes_per_sec.max(1) as f64;
                r.next_at = now + Duration::from_secs_f64(wait).max(Duration::from_millis(1));
                d.replay = Some(r);
                return Some(r.next_at);
            }
            r.sent_bytes += len;
            r.next_seq = r.next_seq.wrapping_add(1);
            if let Some(header) = m.rewrite(&c.header, now) {
                d.stats.packets += 1;
                d.stats.payload_bytes += len;
                out.push_back(Output::Rtp(RtpOut {
                    down: d.id,
                    subscriber: d.subscriber,
                    header,
                    payload: c.payload.clone(),
                    retransmission: false,
                    replay: true,
                    received: c.received,
                }));
            }
        }
        d.replay = None;
        None
    }

    /// The track carrying a down track, its up track, and the down track's index there.
    /// (Over the two maps rather than `self`, so the output queue stays borrowable.)
    fn find_down<'a>(
        down_index: &HashMap<DownTrackId, TrackId>,
        tracks: &'a mut HashMap<TrackId, UpTrack>,
        down: DownTrackId,
    ) -> Result<(TrackId, &'a mut UpTrack, usize), CoreError> {
        let missing = CoreError::UnknownDownTrack(down);
        let track = *down_index.get(&down).ok_or(missing.clone())?;
        let up = tracks.get_mut(&track).ok_or(missing.clone())?;
        let i = up.downs.iter().position(|d| d.id == down).ok_or(missing)?;
        Ok((track, up, i))
    }

    fn request_keyframe(&mut self, track: TrackId, now: Instant) {
        let iv = self.cfg.keyframe_request_interval;
        let Some(up) = self.tracks.get_mut(&track) else {
            return;
        };
        if up.orphaned_until.is_some() {
            return;
        }
        // Without an SSRC nothing was received yet; the stream's first frame is a keyframe.
        let Some(ssrc) = up.ssrc else {
            return;
        };
        if up.keyframe.request(now, iv) {
            self.out.push_back(Output::RequestKeyframe {
                track,
                publisher: up.info.publisher,
                media_ssrc: ssrc,
            });
        }
    }

    // ----- the per-packet path -------------------------------------------------------------

    /// Forwards one RTP packet of a published track to its subscribers.
    ///
    /// Allocation-free in steady state: the payload buffer is shared, headers are rewritten
    /// into the output queue, whose capacity is reused.
    pub fn handle_rtp(
        &mut self,
        track: TrackId,
        packet: RtpPacket,
        now: Instant,
    ) -> Result<(), CoreError> {
        let up = self
            .tracks
            .get_mut(&track)
            .ok_or(CoreError::UnknownTrack(track))?;
        let h = packet.header;
        let mut restarted = false;
        let new_stream = up.ssrc != Some(h.ssrc);
        if new_stream {
            if up.ssrc.is_some() {
                up.epoch = up.epoch.wrapping_add(1);
                restarted = true;
            }
            up.ssrc = Some(h.ssrc);
        }
        up.cache.insert(h, &packet.payload, now);
        up.nacks_up.earn();
        if new_stream
            || up
                .newest
                .is_none_or(|(n, _)| seq_is_newer(h.sequence_number, n))
        {
            up.newest = Some((h.sequence_number, h.timestamp));
        }
        let codec = up.info.codec;
        let epoch = up.epoch;
        let mut keyframe: Option<bool> = None;
        if codec.is_video() {
            // Track the current group of pictures: a keyframe start with a new timestamp
            // begins one (its parameter sets and slices share the timestamp).
            let k = *keyframe.get_or_insert_with(|| codec.is_keyframe_start(&packet.payload));
            match up.gop.as_mut() {
                Some(g) if g.ssrc == h.ssrc && !(k && g.timestamp != h.timestamp) => {
                    if seq_is_newer(h.sequence_number, g.last_seq) {
                        g.last_seq = h.sequence_number;
                    }
                }
                _ if k => {
                    up.gop = Some(Gop {
                        ssrc: h.ssrc,
                        first_seq: h.sequence_number,
                        timestamp: h.timestamp,
                        last_seq: h.sequence_number,
                    });
                }
                _ => up.gop = None,
            }
        }
        let mut waiting = false;
        let (rtx_percent, rtx_burst) = (self.cfg.rtx_budget_percent, self.cfg.rtx_burst_bytes);
        for d in &mut up.downs {
            let Some(m) = d.munger.as_mut() else {
                continue;
            };
            if let Some(r) = d.replay {
                if r.ssrc == h.ssrc && r.epoch == epoch {
                    if !seq_is_newer(r.next_seq, h.sequence_number) {
                        // The replay sends this one from the cache when it gets there.
                        continue;
                    }
                    // Behind the replay's cursor (a publisher's retransmission of a packet
                    // the replay skipped): it goes now, like a live one.
                } else {
                    d.replay = None;
                    m.reset_anchor();
                }
            }
            if !m.is_anchored_in(epoch) {
                if codec.is_video() {
                    let k =
                        *keyframe.get_or_insert_with(|| codec.is_keyframe_start(&packet.payload));
                    if !k {
                        m.reset_anchor();
                        waiting = true;
                        continue;
                    }
                }
                m.anchor(epoch, &h, codec.clock_rate(), d.initial, now);
            }
            if let Some(header) = m.rewrite(&h, now) {
                d.stats.packets += 1;
                d.stats.payload_bytes += packet.payload.len() as u64;
                d.rtx.earn(packet.payload.len(), rtx_percent, rtx_burst);
                self.out.push_back(Output::Rtp(RtpOut {
                    down: d.id,
                    subscriber: d.subscriber,
                    header,
                    payload: packet.payload.clone(),
                    retransmission: false,
                    replay: false,
                    received: now,
                }));
            }
        }
        if keyframe == Some(true) {
            up.keyframe.keyframe_received();
        }
        if restarted && waiting {
            self.request_keyframe(track, now);
        }
        Ok(())
    }

    /// Records the audio level of a packet of an audio track (RFC 6464: 0 is the loudest,
    /// 127 silence, in -dBov), for choosing the room's active speaker.
    pub fn handle_audio_level(&mut self, track: TrackId, level: u8, now: Instant) {
        if let Some(up) = self.tracks.get_mut(&track) {
            let loud = f32::from(127u8.saturating_sub(level.min(127)));
            up.loudness = 0.7 * up.loudness + 0.3 * loud;
            up.loudness_peak = up.loudness_peak.max(up.loudness);
            up.loud_at = Some(now);
        }
    }

    /// Picks each room's loudest recent speaker by the peak of each voice's smoothed level
    /// since the last evaluation (so short bursts between evaluations count); a change needs
    /// two evaluations in a row, so that a cough does not flip the view.
    fn evaluate_speakers(&mut self, now: Instant) {
        // Quieter than -50 dBov, or silent for a second, is not speaking.
        const MIN_LOUDNESS: f32 = 127.0 - 50.0;
        let recent = Duration::from_secs(1);
        let mut changes = Vec::new();
        for (name, room) in &mut self.rooms {
            let best = room
                .tracks
                .iter()
                .filter_map(|t| self.tracks.get(t))
                .filter(|t| {
                    t.info.source.kind() == MediaKind::Audio
                        && t.orphaned_until.is_none()
                        && t.loud_at
                            .is_some_and(|at| now.saturating_duration_since(at) < recent)
                        && t.loudness_peak >= MIN_LOUDNESS
                })
                .max_by(|a, b| a.loudness_peak.total_cmp(&b.loudness_peak))
                .map(|t| t.info.publisher);
            for t in &room.tracks {
                if let Some(up) = self.tracks.get_mut(t) {
                    up.loudness_peak = up.loudness;
                }
            }
            let Some(best) = best else { continue };
            if room.speaker == Some(best) {
                room.speaker_candidate = None;
                continue;
            }
            let count = match room.speaker_candidate {
                Some((p, n)) if p == best => n.saturating_add(1),
                _ => 1,
            };
            if count >= 2 || room.speaker.is_none() {
                room.speaker = Some(best);
                room.speaker_candidate = None;
                changes.push((name.clone(), best));
            } else {
                room.speaker_candidate = Some((best, count));
            }
        }
        for (room, participant) in changes {
            self.notify_room(&room, &RoomEvent::ActiveSpeaker { participant });
        }
    }

    // ----- feedback from subscribers -------------------------------------------------------

    /// A subscriber asked for a keyframe (PLI or FIR): aggregated and throttled upstream.
    pub fn handle_keyframe_request(
        &mut self,
        down: DownTrackId,
        now: Instant,
    ) -> Result<(), CoreError> {
        let track = *self
            .down_index
            .get(&down)
            .ok_or(CoreError::UnknownDownTrack(down))?;
        self.request_keyframe(track, now);
        Ok(())
    }

    /// A subscriber reported lost packets (NACK, in its own sequence numbers): answered from
    /// the cache within the subscriber's retransmission budget, and what the cache lacks
    /// is asked of the publisher, once across subscribers and within the track's allowance.
    pub fn handle_nack(
        &mut self,
        down: DownTrackId,
        lost: &[u16],
        now: Instant,
    ) -> Result<(), CoreError> {
        let (track, up, i) = Self::find_down(&self.down_index, &mut self.tracks, down)?;
        let d = &mut up.downs[i];
        let Some(m) = d.munger.as_ref() else {
            return Ok(());
        };
        let repeat = self.cfg.nack_repeat_interval;
        let count = &mut self.counters;
        let mut missing = Vec::new();
        for (n, &seq_out) in lost.iter().enumerate() {
            if d.rtx.spent() {
                // Nothing more can be paid for: the rest of the list needs no look.
                count.rtx_refused_budget += (lost.len() - n) as u64;
                break;
            }
            let Some((ssrc, seq_in)) = m.original_seq(seq_out) else {
                continue;
            };
            match up.cache.get(ssrc, seq_in) {
                Some(cached) => {
                    if let Err(refused) = d.rtx.spend(seq_out, cached.payload.len(), now, repeat) {
                        match refused {
                            Refused::Repeat => count.rtx_refused_repeat += 1,
                            Refused::Budget => count.rtx_refused_budget += 1,
                        }
                        continue;
                    }
                    count.rtx_sent += 1;
                    let (h, payload) = (&cached.header, &cached.payload);
                    let mut header = *h;
                    header.sequence_number = seq_out;
                    header.timestamp = m.timestamp_for(h.timestamp);
                    header.ssrc = m.ssrc_out;
                    header.payload_type = m.pt_out;
                    d.stats.packets += 1;
                    d.stats.retransmissions += 1;
                    d.stats.payload_bytes += payload.len() as u64;
                    self.out.push_back(Output::Rtp(RtpOut {
                        down,
                        subscriber: d.subscriber,
                        header,
                        payload: payload.clone(),
                        retransmission: true,
                        replay: false,
                        received: cached.received,
                    }));
                }
                None => {
                    // Only a packet the publisher may still have (of its current stream,
                    // not newer than the newest received, at most UPSTREAM_NACK_WINDOW
                    // behind it) is asked for, and only once across subscribers.
                    let recent = up.newest.is_some_and(|(newest, _)| {
                        up.ssrc == Some(ssrc)
                            && !seq_is_newer(seq_in, newest)
                            && newest.wrapping_sub(seq_in) < UPSTREAM_NACK_WINDOW
                    });
                    if recent && up.nacks_up.ask(seq_in, now, repeat) {
                        count.nack_upstream_sent += 1;
                        missing.push(seq_in);
                    } else {
                        count.nack_upstream_refused += 1;
                    }
                }
            }
        }
        if let (false, Some(ssrc)) = (missing.is_empty(), up.ssrc) {
            self.out.push_back(Output::Nack {
                track,
                publisher: up.info.publisher,
                media_ssrc: ssrc,
                seqs: missing,
            });
        }
        Ok(())
    }

    /// A subscriber's receiver report: kept for this leg's statistics, not relayed.
    pub fn handle_receiver_report(
        &mut self,
        down: DownTrackId,
        report: ReceptionReport,
    ) -> Result<(), CoreError> {
        let (_, up, i) = Self::find_down(&self.down_index, &mut self.tracks, down)?;
        up.downs[i].stats.last_report = Some(report);
        Ok(())
    }

    // ----- timers and output ---------------------------------------------------------------

    /// When [`Sfu::handle_timeout`] should next be called.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.next_tick, self.next_replay_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether the core's periodic tick (timeouts, keyframe retries, speakers) is due at
    /// `now`; replays are paced more finely than that.
    #[must_use]
    pub fn tick_due(&self, now: Instant) -> bool {
        self.next_tick.is_some_and(|t| now >= t)
    }

    /// Runs due timers: paced replays, participant timeouts, orphaned tracks, deferred and
    /// repeated keyframe requests.
    pub fn handle_timeout(&mut self, now: Instant) {
        if !self.replaying.is_empty() {
            self.pace_replays(now);
        }
        match self.next_tick {
            Some(t) if now >= t => {}
            _ => return,
        }
        self.next_tick = if self.participants.is_empty() && self.tracks.is_empty() {
            None
        } else {
            Some(now + self.cfg.tick)
        };

        let timeout = self.cfg.participant_timeout;
        let mut dead: Vec<ParticipantId> = self
            .participants
            .iter()
            .filter(|(_, p)| now.saturating_duration_since(p.last_activity) >= timeout)
            .map(|(id, _)| *id)
            .collect();
        dead.sort();
        for id in dead {
            self.remove_participant(id, LeaveReason::Timeout, now);
            self.out.push_back(Output::ParticipantRemoved {
                participant: id,
                reason: LeaveReason::Timeout,
            });
        }

        let mut expired: Vec<TrackId> = self
            .tracks
            .iter()
            .filter(|(_, t)| t.orphaned_until.is_some_and(|u| now >= u))
            .map(|(id, _)| *id)
            .collect();
        expired.sort();
        for t in expired {
            self.remove_track(t);
        }

        if self.next_speaker_eval.is_none_or(|t| now >= t) {
            self.next_speaker_eval = Some(now + self.cfg.speaker_interval);
            self.evaluate_speakers(now);
        }

        let iv = self.cfg.keyframe_request_interval;
        let retry = self.cfg.keyframe_retry_interval;
        let mut ids: Vec<TrackId> = self.tracks.keys().copied().collect();
        ids.sort();
        for id in ids {
            let Some(up) = self.tracks.get_mut(&id) else {
                continue;
            };
            let Some(ssrc) = up.ssrc else { continue };
            if up.orphaned_until.is_some() {
                continue;
            }
            let mut send = up.keyframe.handle_timeout(now, iv);
            let epoch = up.epoch;
            let waiting = up.info.codec.is_video()
                && up
                    .downs
                    .iter()
                    .any(|d| d.munger.as_ref().is_some_and(|m| !m.is_anchored_in(epoch)));
            if !send && waiting && up.keyframe.last_sent().is_none_or(|t| now >= t + retry) {
                send = up.keyframe.request(now, iv);
            }
            if send {
                self.out.push_back(Output::RequestKeyframe {
                    track: id,
                    publisher: up.info.publisher,
                    media_ssrc: ssrc,
                });
            }
        }
    }

    /// The next thing the shell must do, if any.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // a virtual clock still needs an arbitrary origin
mod tests;
