//! The sans-IO room core of medsfu.
//!
//! [`Sfu`] owns every room, participant, published track ([`UpTrack`](crate::sfu)) and
//! subscription (down track). The IO shells feed it with `handle_*(…, now)` calls and drain
//! what it decided with [`Sfu::poll_output`]; timers are data ([`Sfu::poll_timeout`]). It has
//! no sockets, no tasks and no clock, so whole rooms run deterministically in tests.

#![forbid(unsafe_code)]

mod access;
mod camera;
mod error;
mod ids;
mod keyframe;
mod munger;
mod nack_limit;
mod role;
mod rtp;
mod rtx_cache;
mod sfu;

pub use access::{may, Action};
pub use camera::{CameraCommand, CameraState};
pub use error::CoreError;
pub use ids::{DownTrackId, ParticipantId, TrackId};
pub use medsfu_codec::Codec;
pub use role::{MediaKind, Role, TrackSource};
pub use rtp::{seq_is_newer, RtpHeader, RtpPacket, RtpParseError};
pub use sfu::{
    CoreConfig, CoreCounters, DownTrackStats, LeaveReason, Output, ParticipantInfo,
    ReceptionReport, RoomEvent, RtpOut, Sfu, TrackInfo,
};
