//! medsfu's media engine.
//!
//! [`MediaServer`] starts media workers (one per core by default), each with an engine that
//! owns the peer connections (webrtc-rs `rtc`, sans-IO) and the room core
//! ([`medsfu_core::Sfu`]) of the rooms whose names hash to it. A thin driver steps each
//! engine: a datagram, a command or a timer in; datagrams to send out, batched with
//! `sendmmsg`. With one worker the driver reads the UDP socket itself; with several, one
//! dispatcher reads it and hands each datagram to its peer's worker (`shard`). Signalling
//! and the QUIC vehicle server reach the engines through [`MediaHandle`] commands, routed
//! by room or id; nothing else touches an engine's state, so the per-packet path takes no
//! lock.

// The one exception is `transmit`'s `sendmmsg` call, allowed there alone.
#![deny(unsafe_code)]

pub mod demux;
mod driver;
mod engine;
mod peer;
pub mod record;
pub mod sdp;
mod sender_report;
mod shard;
#[cfg(test)]
mod simulation;
pub mod socket;
pub mod transcode;
pub mod transmit;

use std::net::SocketAddr;
use std::sync::Arc;

use medsfu_core::CoreConfig;
use prometheus::Registry;
use tokio::sync::mpsc;
use tracing::info;

// The interface shells drive the engine with lives in its own crate (no WebRTC in it);
// re-exported so that users of the engine need one name.
pub use medsfu_media_api::routing::{worker_of_room, MAX_WORKERS};
pub use medsfu_media_api::{
    ByKind, Command, Drops, Joined, MediaError, MediaHandle, MediaStats, SessionEvent, SessionKind,
    SESSION_EVENTS,
};
pub use peer::{add_host_candidate, codec_table, sender_payload_type, DeliverRtcp};

/// Settings of the media server.
#[derive(Debug, Clone)]
pub struct MediaConfig {
    /// Where the media UDP socket binds.
    pub listen: SocketAddr,
    /// The address put in ICE candidates (for 1:1 NAT); the bound address when `None`.
    pub announce: Option<SocketAddr>,
    /// SO_RCVBUF asked for the media socket (0: the kernel's default).
    pub receive_buffer_bytes: usize,
    /// SO_SNDBUF asked for the media socket (0: the kernel's default).
    pub send_buffer_bytes: usize,
    /// Room-core tunables.
    pub core: CoreConfig,
    /// Recording on demand and the automatic voice archive; `None` records nothing.
    pub recordings: Option<RecordingSettings>,
    /// Lines of the H.264 renditions of H.265 video (360 or 720; the width follows).
    pub rendition_height: u32,
    /// Media workers, each an engine with its share of the rooms (0: one per core).
    pub workers: usize,
}

/// Where recordings are written and what is archived without being asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordingSettings {
    /// Directory of the recordings (one subdirectory per room).
    pub dir: std::path::PathBuf,
    /// Archive every audio track of every room, always.
    pub voice_archive: bool,
}

/// The media server: one socket, one engine per worker.
pub struct MediaServer;

impl MediaServer {
    /// Binds the media socket and starts the workers on the current tokio runtime; their
    /// counters are registered in `registry`.
    pub async fn start(cfg: MediaConfig, registry: &Registry) -> std::io::Result<MediaHandle> {
        let (socket, granted) =
            socket::bind(cfg.listen, cfg.receive_buffer_bytes, cfg.send_buffer_bytes)?;
        let local_addr = socket.local_addr()?;
        let announce = cfg.announce.unwrap_or(local_addr);
        let stats = Arc::new(MediaStats::new(registry).map_err(std::io::Error::other)?);
        for (direction, bytes) in [("receive", granted.receive), ("send", granted.send)] {
            stats
                .socket_buffer
                .with_label_values(&[direction])
                .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
        if let Some(drops) = socket::KernelDrops::new(&socket) {
            tokio::spawn(socket::watch_drops(drops, stats.socket_drops.clone()));
        }
        let count = match cfg.workers {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        };
        let shards = medsfu_media_api::routing::Shards::new(count);
        stats.workers.set(shards.count() as i64);
        let socket = Arc::new(socket);
        let rooms_open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (addrs_tx, addrs_rx) = mpsc::unbounded_channel();
        let mut workers = Vec::with_capacity(shards.count());
        let mut vehicle_rtp = Vec::with_capacity(shards.count());
        let mut datagram_queues = Vec::with_capacity(shards.count());
        for index in 0..shards.count() {
            let (tx, rx) = mpsc::channel(1024);
            let engine = engine::Engine::new(
                announce,
                cfg.core.clone(),
                cfg.recordings.clone(),
                stats.clone(),
                tx.clone(),
                cfg.rendition_height,
                engine::Worker {
                    index,
                    count: shards.count(),
                    rooms_open: rooms_open.clone(),
                },
            );
            let ingress = if shards.count() == 1 {
                driver::Ingress::Socket
            } else {
                let (dtx, drx) = mpsc::channel(driver::WORKER_DATAGRAMS);
                datagram_queues.push(dtx);
                driver::Ingress::Dispatched {
                    datagrams: drx,
                    addrs: addrs_tx.clone(),
                    index,
                }
            };
            let (rtp_tx, rtp_rx) = mpsc::channel(driver::WORKER_VEHICLE_RTP);
            tokio::spawn(driver::run(
                socket.clone(),
                engine,
                rx,
                rtp_rx,
                ingress,
                stats.clone(),
            ));
            workers.push(tx);
            vehicle_rtp.push(rtp_tx);
        }
        if shards.count() > 1 {
            tokio::spawn(driver::dispatch(
                socket,
                datagram_queues,
                addrs_rx,
                stats.clone(),
            ));
        }
        info!(addr = %announce, workers = shards.count(), "media server listening");
        Ok(MediaHandle::new(workers, vehicle_rtp, stats, local_addr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use medsfu_core::{LeaveReason, Role, RoomEvent};

    async fn server() -> MediaHandle {
        let cfg = MediaConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            announce: None,
            receive_buffer_bytes: 0,
            send_buffer_bytes: 0,
            core: CoreConfig::default(),
            recordings: None,
            rendition_height: 360,
            // Two workers and the dispatcher between them, whatever the machine.
            workers: 2,
        };
        MediaServer::start(cfg, &Registry::new())
            .await
            .expect("media server starts")
    }

    /// A session whose shell stopped taking events (its client stopped reading) is ended
    /// when its queue is full, and the room is told, instead of the queue growing for good.
    #[tokio::test]
    async fn a_session_that_stops_taking_events_is_ended_and_the_room_told() {
        let media = server().await;
        // Held, never read: room for 4 events.
        let (slow_tx, _slow_rx) = mpsc::channel(4);
        let slow = media
            .join(
                "r",
                "slow",
                Role::Consultant,
                SessionKind::Signalling,
                slow_tx,
            )
            .await
            .expect("joins");
        let (tx, mut watcher) = mpsc::channel(SESSION_EVENTS);
        media
            .join("r", "watcher", Role::Lead, SessionKind::Signalling, tx)
            .await
            .expect("joins");
        // Every newcomer is announced to the slow session too.
        let mut others = Vec::new();
        for i in 0..6 {
            let (tx, rx) = mpsc::channel(SESSION_EVENTS);
            others.push(rx);
            media
                .join(
                    "r",
                    &format!("p{i}"),
                    Role::Team,
                    SessionKind::Signalling,
                    tx,
                )
                .await
                .expect("joins");
        }
        let left = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            while let Some(ev) = watcher.recv().await {
                if let SessionEvent::Room(RoomEvent::ParticipantLeft {
                    participant,
                    reason,
                }) = ev
                {
                    if participant == slow.participant {
                        return Some(reason);
                    }
                }
            }
            None
        })
        .await
        .expect("the slow session is ended within 10 s");
        assert_eq!(left, Some(LeaveReason::Timeout));
        assert_eq!(media.stats().sessions_overflowed.get(), 1);
        // The others were not touched: each got every announcement and nothing else failed.
        assert_eq!(media.counts().await.expect("answers"), (1, 7));
    }
}
