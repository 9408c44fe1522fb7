//! medsfu's control logic, sans-IO: calls and rooms, membership, who may do what, and the
//! lead teleconsultant with its hand-over (explicit, on leaving, and automatic when the
//! lead's connection is gone longer than a grace time).
//!
//! [`Desk`] takes requests and presence changes with the time as an argument and queues
//! [`Output`]s (what changed) for the IO shell to store, announce and apply to media. Its
//! one timer is [`Desk::poll_timeout`]. Invariant, checked by the tests: a room has at
//! most one lead, and exactly one while any teleconsultant is a member. The lead may
//! grant a consultant the camera (steering and screenshots); a new lead starts with no
//! grants given.

#![forbid(unsafe_code)]

mod desk;

pub use desk::{
    ControlError, Desk, LeadChange, MemberView, Output, Principal, RoomState, RoomView,
};
/// The roles table lives in the room core, with the media rules of roles.
pub use medsfu_core::{may, Action};
