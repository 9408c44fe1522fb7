//! Rooms spread over media workers (one engine per core): which worker owns a room, an id,
//! a command, an ICE username and a peer's address.
//!
//! A room lives on one worker, chosen by a hash of its name; everything in it (participants,
//! tracks, down tracks) gets ids from that worker's id space (`Sfu::with_id_space`), so an
//! id names its worker without a table. ICE usernames carry the worker in their first
//! character. Addresses are learnt: a worker reports each address it authenticated.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::net::SocketAddr;

use crate::Command;

/// Most media workers: one character of an ICE username names the worker.
pub const MAX_WORKERS: usize = TAGS.len();

/// ICE username characters naming workers 0, 1, 2... (ICE allows letters and digits).
const TAGS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";

/// The index of the worker hosting `room` on a server with `workers` media workers.
pub fn worker_of_room(room: &str, workers: usize) -> usize {
    Shards::new(workers).of_room(room)
}

/// Which of `count` workers owns what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shards {
    count: usize,
}

/// Where a command goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// To the worker with this index.
    One(usize),
    /// To every worker (questions about the whole server).
    All,
}

impl Shards {
    /// `count` workers (at least 1, at most [`MAX_WORKERS`]).
    pub(crate) fn new(count: usize) -> Shards {
        Shards {
            count: count.clamp(1, MAX_WORKERS),
        }
    }

    /// How many workers there are.
    pub(crate) fn count(self) -> usize {
        self.count
    }

    /// The worker hosting `room`. A fixed hash (not seeded per process), so a room's
    /// worker does not depend on which handle asks.
    pub(crate) fn of_room(self, room: &str) -> usize {
        let h = BuildHasherDefault::<DefaultHasher>::default().hash_one(room);
        (h % self.count as u64) as usize
    }

    /// The worker that handed out the core id `id` (ids of worker k are k + 1 modulo
    /// the count).
    pub(crate) fn of_id(self, id: u64) -> usize {
        (id.wrapping_sub(1) % self.count as u64) as usize
    }

    /// The first id worker `index` hands out (its id space steps by the count).
    pub(crate) fn first_id(index: usize) -> u64 {
        index as u64 + 1
    }

    /// The worker whose ICE username this is, by its first character.
    pub(crate) fn of_ufrag(self, ufrag: &[u8]) -> Option<usize> {
        let tag = *ufrag.first()?;
        let index = TAGS.iter().position(|&t| t == tag)?;
        (index < self.count).then_some(index)
    }

    /// The character worker `index` starts its ICE usernames with.
    pub(crate) fn ufrag_tag(index: usize) -> char {
        char::from(TAGS[index % MAX_WORKERS])
    }

    /// Where `command` goes.
    pub(crate) fn route(self, command: &Command) -> Route {
        use Command as C;
        let id = match command {
            C::SetRole { room, .. }
            | C::SetCameraGrant { room, .. }
            | C::RemoveFromRoom { room, .. }
            | C::Join { room, .. } => return Route::One(self.of_room(room)),
            C::Rooms { .. } | C::StopRecorders { .. } => return Route::All,
            C::Publish { participant, .. }
            | C::SubscriberAnswer { participant, .. }
            | C::WhepOffer { participant, .. }
            | C::Subscribe { participant, .. }
            | C::Candidate { participant, .. }
            | C::PublishTrack { participant, .. }
            | C::Leave { participant, .. }
            | C::Record { participant, .. }
            | C::Screenshot { participant, .. } => participant.0,
            C::Camera { from, .. } => from.0,
            C::CameraState { vehicle, .. } => vehicle.0,
            C::ScreenshotDone { recorder, .. } => recorder.0,
            C::Rtp { track, .. } => track.0,
            C::KeyframeFor { down } | C::RecordingFailed { down, .. } => down.0,
        };
        Route::One(self.of_id(id))
    }
}

/// The dispatcher's routing, without IO: which worker a received datagram is for.
#[derive(Debug)]
pub(crate) struct Dispatcher {
    shards: Shards,
    table: AddrTable,
}

impl Dispatcher {
    /// Routing over `workers` workers, knowing no address yet.
    pub(crate) fn new(workers: usize) -> Dispatcher {
        Dispatcher {
            shards: Shards::new(workers),
            table: AddrTable::default(),
        }
    }

    /// Applies worker `worker`'s report of an address bound or unbound.
    pub(crate) fn apply(&mut self, worker: usize, change: AddrChange) {
        self.table.apply(worker, change);
    }

    /// The worker for a datagram from `from`: STUN by the worker its username names (a
    /// peer's first datagrams), anything else by the address a worker authenticated.
    /// `None`: nobody's (counted as unknown by the caller).
    #[must_use]
    pub(crate) fn route(&self, from: &SocketAddr, data: &[u8]) -> Option<usize> {
        match crate::demux::classify(data) {
            crate::demux::DatagramKind::Stun => crate::demux::stun_server_ufrag(data)
                .and_then(|u| self.shards.of_ufrag(u.as_bytes()))
                .or_else(|| self.table.owner(from)),
            _ => self.table.owner(from),
        }
    }
}

/// A change in which peer addresses a worker serves, reported to the dispatcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AddrChange {
    /// A peer authenticated from this address: its datagrams go to the reporting worker.
    Bound(SocketAddr),
    /// The address is no longer a peer's of the reporting worker.
    Unbound(SocketAddr),
}

/// The dispatcher's table of which worker serves which peer address.
#[derive(Debug, Default)]
pub(crate) struct AddrTable {
    owners: HashMap<SocketAddr, usize>,
}

impl AddrTable {
    /// Applies a worker's report. An address unbound by a worker that no longer owns it
    /// (another bound it since) stays with the new owner.
    pub(crate) fn apply(&mut self, worker: usize, change: AddrChange) {
        match change {
            AddrChange::Bound(a) => {
                self.owners.insert(a, worker);
            }
            AddrChange::Unbound(a) => {
                if self.owners.get(&a) == Some(&worker) {
                    self.owners.remove(&a);
                }
            }
        }
    }

    /// The worker serving `addr`.
    pub(crate) fn owner(&self, addr: &SocketAddr) -> Option<usize> {
        self.owners.get(addr).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use medsfu_core::{DownTrackId, LeaveReason, ParticipantId};

    #[test]
    fn rooms_spread_over_workers_and_stay_put() {
        let s = Shards::new(2);
        let mut per = [0usize; 2];
        for i in 0..1000 {
            let room = format!("call-{i}");
            let w = s.of_room(&room);
            assert_eq!(w, s.of_room(&room), "the same room, the same worker");
            per[w] += 1;
        }
        // A fair hash puts about half on each; 400 is far outside chance.
        assert!(per.iter().all(|&n| n > 400), "{per:?}");
        assert_eq!(Shards::new(1).of_room("anything"), 0);
    }

    #[test]
    fn ids_and_ufrags_name_their_worker() {
        let s = Shards::new(3);
        for k in 0..3 {
            let first = Shards::first_id(k);
            for n in 0..5 {
                assert_eq!(s.of_id(first + 3 * n), k);
            }
            let ufrag = format!("{}abcdef", Shards::ufrag_tag(k));
            assert_eq!(s.of_ufrag(ufrag.as_bytes()), Some(k));
        }
        // A tag beyond the workers, or none, names nobody.
        assert_eq!(s.of_ufrag(b"zzzz"), None);
        assert_eq!(s.of_ufrag(b""), None);
        assert_eq!(Shards::new(500).count(), MAX_WORKERS);
        assert_eq!(Shards::new(0).count(), 1);
    }

    #[test]
    fn commands_go_to_the_owner_of_their_room_or_id() {
        let s = Shards::new(2);
        let (reply, _rx) = tokio::sync::oneshot::channel();
        let leave = Command::Leave {
            participant: ParticipantId(Shards::first_id(1) + 2 * 7),
            reason: LeaveReason::Left,
        };
        assert_eq!(s.route(&leave), Route::One(1));
        let keyframe = Command::KeyframeFor {
            down: DownTrackId(Shards::first_id(0) + 2 * 3),
        };
        assert_eq!(s.route(&keyframe), Route::One(0));
        let remove = Command::RemoveFromRoom {
            room: "call-9".into(),
            identity: None,
            reason: LeaveReason::Left,
        };
        assert_eq!(s.route(&remove), Route::One(s.of_room("call-9")));
        assert_eq!(s.route(&Command::Rooms { reply }), Route::All);
    }

    #[test]
    fn the_address_table_follows_the_latest_owner() {
        let a: SocketAddr = "192.0.2.1:5000".parse().expect("address");
        let mut t = AddrTable::default();
        t.apply(0, AddrChange::Bound(a));
        assert_eq!(t.owner(&a), Some(0));
        // The peer moved to a room on worker 1 from the same address.
        t.apply(1, AddrChange::Bound(a));
        // Worker 0's late unbinding does not take it from worker 1.
        t.apply(0, AddrChange::Unbound(a));
        assert_eq!(t.owner(&a), Some(1));
        t.apply(1, AddrChange::Unbound(a));
        assert_eq!(t.owner(&a), None);
        assert!(t.owners.is_empty(), "nothing left behind");
    }
}
