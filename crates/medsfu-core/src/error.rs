//! Errors of the room core.

use crate::{DownTrackId, ParticipantId, Role, TrackId, TrackSource};

/// Why the core refused an input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CoreError {
    /// The participant is not (or no longer) in any room.
    #[error("unknown participant {0}")]
    UnknownParticipant(ParticipantId),
    /// The track is not (or no longer) published.
    #[error("unknown track {0}")]
    UnknownTrack(TrackId),
    /// The down track does not exist (or was removed).
    #[error("unknown down track {0}")]
    UnknownDownTrack(DownTrackId),
    /// The participant's role may not publish this kind of track.
    #[error("role {role} may not publish a {track_source} track")]
    PublishForbidden {
        /// Role of the participant.
        role: Role,
        /// Source it tried to publish.
        track_source: TrackSource,
    },
    /// The participant's role may not receive this kind of track.
    #[error("role {role} may not receive a {track_source} track")]
    SubscribeForbidden {
        /// Role of the participant.
        role: Role,
        /// Source of the track.
        track_source: TrackSource,
    },
    /// A track's codec does not carry its kind of media (audio codec on a video source).
    #[error("codec {codec} cannot carry a {track_source} track")]
    CodecMismatch {
        /// The codec offered.
        codec: &'static str,
        /// The declared source.
        track_source: TrackSource,
    },
    /// A participant cannot subscribe to its own track.
    #[error("cannot subscribe to one's own track")]
    OwnTrack,
    /// The server holds as many rooms as it is configured for.
    #[error("the server holds its maximum of {max} rooms")]
    TooManyRooms {
        /// The limit (`core.max_rooms`).
        max: usize,
    },
    /// The room holds as many participants as it is configured for.
    #[error("the room holds its maximum of {max} participants")]
    RoomFull {
        /// The limit (`core.max_participants_per_room`).
        max: usize,
    },
    /// The participant publishes as many tracks as it may.
    #[error("a participant publishes at most {max} tracks")]
    TooManyTracks {
        /// The limit (`core.max_tracks_per_participant`).
        max: usize,
    },
}

impl CoreError {
    /// A stable, machine-readable code for the wire.
    pub fn code(&self) -> &'static str {
        match self {
            CoreError::UnknownParticipant(_) => "unknown_participant",
            CoreError::UnknownTrack(_) => "unknown_track",
            CoreError::UnknownDownTrack(_) => "unknown_down_track",
            CoreError::PublishForbidden { .. } => "publish_forbidden",
            CoreError::SubscribeForbidden { .. } => "subscribe_forbidden",
            CoreError::CodecMismatch { .. } => "codec_mismatch",
            CoreError::OwnTrack => "own_track",
            CoreError::TooManyRooms { .. } => "too_many_rooms",
            CoreError::RoomFull { .. } => "room_full",
            CoreError::TooManyTracks { .. } => "too_many_tracks",
        }
    }
}
