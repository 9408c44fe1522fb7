//! Room (call) records and memberships.

use std::str::FromStr;

/// Where a room is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RoomStatus {
    /// A call opened by a crew, not accepted yet.
    Ringing,
    /// Open: a lead accepted the call, or an operator created the room.
    Active,
    /// Ended; kept for the record.
    Closed,
}

impl RoomStatus {
    /// The name on the wire and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            RoomStatus::Ringing => "ringing",
            RoomStatus::Active => "active",
            RoomStatus::Closed => "closed",
        }
    }
}

impl FromStr for RoomStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [RoomStatus::Ringing, RoomStatus::Active, RoomStatus::Closed]
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown room status {s:?}"))
    }
}

/// A room as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomRecord {
    /// Its name (also the media room's).
    pub name: String,
    /// The vehicle (device) whose call it is, if any.
    pub vehicle: Option<String>,
    /// Who opened the call or created the room.
    pub opened_by: String,
    /// Where it is in its life.
    pub status: RoomStatus,
    /// The current lead, if any.
    pub lead: Option<String>,
    /// When it was opened (ms since 1970).
    pub created_ms: i64,
    /// When it was closed.
    pub closed_ms: Option<i64>,
}

/// What to look for among rooms (every given condition must hold).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoomFilter {
    /// The call of this vehicle.
    pub vehicle: Option<String>,
    /// Rooms this account or device was ever a member of.
    pub participant: Option<String>,
    /// Rooms open at or after this time (ms since 1970): not closed before it.
    pub from_ms: Option<i64>,
    /// Rooms opened at or before this time.
    pub to_ms: Option<i64>,
}

/// One membership of a room: who, in which role, from when to when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRecord {
    /// Room name.
    pub room: String,
    /// Account or device name.
    pub member: String,
    /// Role in the room (`lead`, `consultant`, `team`, ...).
    pub role: String,
    /// When the membership began.
    pub joined_ms: i64,
    /// When it ended (removed, left, room closed).
    pub left_ms: Option<i64>,
}
