//! Which media worker owns what: a room, an id, a command, an ICE username.
//!
//! A room lives on one worker, chosen by a hash of its name; everything in it (participants,
//! tracks, down tracks) gets ids from that worker's id space (`Sfu::with_id_space`), so an
//! id names its worker without a table. ICE usernames carry the worker in their first
//! character (the engine's dispatcher routes a peer's first datagrams by it).

use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};

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
pub struct Shards {
    count: usize,
}

/// Where a command goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// To the worker with this index.
    One(usize),
    /// To every worker (questions about the whole server).
    All,
}

impl Shards {
    /// `count` workers (at least 1, at most [`MAX_WORKERS`]).
    pub fn new(count: usize) -> Shards {
        Shards {
            count: count.clamp(1, MAX_WORKERS),
        }
    }

    /// How many workers there are.
    pub fn count(self) -> usize {
        self.count
    }

    /// The worker hosting `room`. A fixed hash (not seeded per process), so a room's
    /// worker does not depend on which handle asks.
    pub fn of_room(self, room: &str) -> usize {
        let h = BuildHasherDefault::<DefaultHasher>::default().hash_one(room);
        (h % self.count as u64) as usize
    }

    /// The worker that handed out the core id `id` (ids of worker k are k + 1 modulo
    /// the count).
    pub fn of_id(self, id: u64) -> usize {
        (id.wrapping_sub(1) % self.count as u64) as usize
    }

    /// The first id worker `index` hands out (its id space steps by the count).
    pub fn first_id(index: usize) -> u64 {
        index as u64 + 1
    }

    /// The worker whose ICE username this is, by its first character.
    pub fn of_ufrag(self, ufrag: &[u8]) -> Option<usize> {
        let tag = *ufrag.first()?;
        let index = TAGS.iter().position(|&t| t == tag)?;
        (index < self.count).then_some(index)
    }

    /// The character worker `index` starts its ICE usernames with.
    pub fn ufrag_tag(index: usize) -> char {
        char::from(TAGS[index % MAX_WORKERS])
    }

    /// Where `command` goes.
    pub fn route(self, command: &Command) -> Route {
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
}
