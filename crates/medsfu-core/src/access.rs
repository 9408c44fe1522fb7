//! Who may do what: the roles table of the requirements as one function, with the media
//! rules of [`Role`] (publish, receive, steer the camera) the only place roles are judged.
//! The shells (control API, signalling, the media engine, the QUIC server) ask here.

use crate::Role;

/// Something a user or device asks of the control API or signalling.
// Not `non_exhaustive`: every crate that describes actions should fail to build when one
// is added, rather than fall into a catch-all arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Open a call from a vehicle (its agent or a crew tablet).
    OpenCall,
    /// See incoming calls.
    WatchCalls,
    /// Accept an incoming call (and lead it).
    AcceptCall,
    /// Create a room without a call.
    CreateRoom,
    /// List rooms (everyone sees the rooms they belong to; admins see all).
    ListRooms,
    /// Read a room's record and members.
    GetRoom,
    /// End the call / close the room.
    CloseRoom,
    /// Add a consultant, the dispatcher or a crew member to a room.
    Invite,
    /// Take someone out of a room.
    Remove,
    /// Leave a room.
    Leave,
    /// Hand the lead role to a consultant.
    HandOver,
    /// Let a consultant steer the camera and take screenshots (or take that back).
    Grant,
    /// Get a media access token and join the room's media and telemetry.
    JoinMedia,
    /// Pan, zoom or choose a sector of the roof camera.
    Camera,
    /// Start or stop recording.
    Record,
    /// Take a screenshot of a video track.
    Screenshot,
    /// Write in the chat.
    Chat,
    /// Ask for an ECG snapshot document.
    EcgSnapshot,
    /// Read the audit trail.
    ReadAudit,
    /// Join an accepted call without an invitation (the dispatch centre).
    JoinCall,
    /// Read a room's telemetry (vital signs, ECG, positions, chat) and its history.
    ReadTelemetry,
}

impl Action {
    /// Every action, for tests that walk the whole matrix.
    pub const ALL: [Action; 21] = [
        Action::OpenCall,
        Action::WatchCalls,
        Action::AcceptCall,
        Action::CreateRoom,
        Action::ListRooms,
        Action::GetRoom,
        Action::CloseRoom,
        Action::Invite,
        Action::Remove,
        Action::Leave,
        Action::HandOver,
        Action::Grant,
        Action::JoinMedia,
        Action::Camera,
        Action::Record,
        Action::Screenshot,
        Action::Chat,
        Action::EcgSnapshot,
        Action::ReadAudit,
        Action::JoinCall,
        Action::ReadTelemetry,
    ];

    /// Whether the action concerns one room (then the caller's role in that room counts,
    /// not their account's).
    pub fn in_room(self) -> bool {
        !matches!(
            self,
            Action::OpenCall
                | Action::WatchCalls
                | Action::AcceptCall
                | Action::CreateRoom
                | Action::ListRooms
                | Action::ReadAudit
                | Action::JoinCall
        )
    }
}

/// Whether `role` may do `action`. For actions in a room, `role` is the caller's role in
/// that room (a consultant account is `Lead` in the calls it leads); admins act on any
/// room without being in it.
pub fn may(role: Role, action: Action) -> bool {
    use Action as A;
    use Role as R;
    match action {
        A::OpenCall => matches!(role, R::Vehicle | R::Team),
        A::WatchCalls => matches!(role, R::Consultant | R::Lead | R::Dispatcher | R::Admin),
        A::AcceptCall => matches!(role, R::Consultant),
        A::CreateRoom => role == R::Admin,
        A::ListRooms => true,
        A::GetRoom => role != R::Recorder,
        A::CloseRoom => matches!(role, R::Lead | R::Team | R::Admin),
        A::Invite | A::Remove => matches!(role, R::Lead | R::Admin),
        A::Leave => !matches!(role, R::Admin | R::Recorder),
        A::HandOver | A::Grant => role == R::Lead,
        A::JoinMedia => role != R::Admin,
        A::Camera | A::Screenshot => role.may_control_camera(),
        A::Record => matches!(role, R::Lead | R::Team),
        // The recorder receives only the tracks it records.
        A::ReadTelemetry => role != R::Recorder,
        // Glasses talk and may send short texts; asking for documents is for people at
        // a screen.
        A::Chat => matches!(
            role,
            R::Team | R::Lead | R::Consultant | R::Dispatcher | R::Glasses
        ),
        A::EcgSnapshot => matches!(role, R::Team | R::Lead | R::Consultant | R::Dispatcher),
        A::ReadAudit => role == R::Admin,
        // The dispatcher receives everything of every intervention (requirements' roles):
        // the dispatch centre follows the calls it sent ambulances to.
        A::JoinCall => role == R::Dispatcher,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_roles_table_holds() {
        // Lead-only powers.
        // (Consultants may steer the camera by the lead's grant, not by their role.)
        for a in [
            Action::HandOver,
            Action::Grant,
            Action::Camera,
            Action::Screenshot,
        ] {
            let who: Vec<_> = Role::ALL.into_iter().filter(|r| may(*r, a)).collect();
            assert_eq!(who, [Role::Lead], "{a:?}");
        }
        // The crew may record and end the call; consultants may not.
        assert!(may(Role::Team, Action::Record) && may(Role::Team, Action::CloseRoom));
        assert!(!may(Role::Consultant, Action::Record));
        assert!(!may(Role::Consultant, Action::Invite));
        // Only admins read the audit trail and create rooms; admins never join media.
        assert!(may(Role::Admin, Action::ReadAudit) && !may(Role::Lead, Action::ReadAudit));
        assert!(!may(Role::Admin, Action::JoinMedia));
        // Only vehicles and crews open calls; only consultants accept them.
        let open: Vec<_> = Role::ALL
            .into_iter()
            .filter(|r| may(*r, Action::OpenCall))
            .collect();
        assert_eq!(open, [Role::Vehicle, Role::Team]);
        assert!(may(Role::Consultant, Action::AcceptCall) && !may(Role::Lead, Action::AcceptCall));
        // Everyone in a room reads its telemetry but the recorder.
        let readers = Role::ALL
            .into_iter()
            .filter(|r| may(*r, Action::ReadTelemetry))
            .count();
        assert_eq!(readers, Role::ALL.len() - 1);
        assert!(!may(Role::Recorder, Action::ReadTelemetry));
    }
}
