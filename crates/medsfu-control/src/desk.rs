//! Calls, rooms, members and the lead.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use medsfu_core::Role;

use crate::{may, Action};

/// Who is asking: an account or a device, with the role of the account or device (not
/// of a room: a consultant account is `Consultant` here even where it leads).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Account or device name.
    pub name: String,
    /// Its role.
    pub role: Role,
}

/// Why a request was refused (each changes nothing).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// The caller's role does not allow this.
    #[error("role {role} may not {action}")]
    Forbidden {
        /// The caller's role (in the room, for room actions).
        role: &'static str,
        /// What was asked.
        action: &'static str,
    },
    /// No such room.
    #[error("no room {0:?}")]
    UnknownRoom(String),
    /// The room is closed.
    #[error("room {0:?} is closed")]
    Closed(String),
    /// The caller is not a member of the room.
    #[error("not a member of room {0:?}")]
    NotMember(String),
    /// Another consultant accepted the call first.
    #[error("call {room:?} was already accepted by {lead}")]
    CallTaken {
        /// The room.
        room: String,
        /// Its lead.
        lead: String,
    },
    /// The room already exists.
    #[error("room {0:?} already exists")]
    RoomExists(String),
    /// The person is already a member.
    #[error("{0} is already a member")]
    AlreadyMember(String),
    /// The target of a hand-over, invitation or removal does not fit (the message says
    /// why).
    #[error("{0}")]
    BadTarget(String),
}

impl ControlError {
    /// Stable code for the wire.
    pub fn code(&self) -> &'static str {
        match self {
            ControlError::Forbidden { .. } => "forbidden",
            ControlError::UnknownRoom(_) => "room_not_found",
            ControlError::Closed(_) => "room_closed",
            ControlError::NotMember(_) => "not_a_member",
            ControlError::CallTaken { .. } => "call_taken",
            ControlError::RoomExists(_) => "room_exists",
            ControlError::AlreadyMember(_) => "already_member",
            ControlError::BadTarget(_) => "bad_target",
        }
    }
}

/// Where a room is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RoomState {
    /// A call nobody accepted yet.
    Ringing,
    /// Open.
    Active,
    /// Ended.
    Closed,
}

impl RoomState {
    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            RoomState::Ringing => "ringing",
            RoomState::Active => "active",
            RoomState::Closed => "closed",
        }
    }
}

/// Why the lead changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LeadChange {
    /// The first consultant accepted the call.
    Accepted,
    /// The lead named a successor.
    HandOver,
    /// The lead left the room (or was removed with it closing).
    LeadLeft,
    /// The lead's connection was gone longer than the grace time.
    LeadAway,
    /// A consultant joined a room that had none.
    FirstConsultant,
}

impl LeadChange {
    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            LeadChange::Accepted => "accepted",
            LeadChange::HandOver => "hand_over",
            LeadChange::LeadLeft => "lead_left",
            LeadChange::LeadAway => "lead_away",
            LeadChange::FirstConsultant => "first_consultant",
        }
    }
}

/// What changed, for the IO shell to store, announce and apply.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Output {
    /// A vehicle or crew opened a call: the centre should see it ring.
    CallOpened {
        /// The room.
        room: String,
        /// The vehicle, if a vehicle device opened it.
        vehicle: Option<String>,
        /// Who opened it.
        by: String,
    },
    /// A room was created (by an operator, or for a call).
    RoomOpened {
        /// The room.
        room: String,
    },
    /// Someone became a member.
    MemberAdded {
        /// The room.
        room: String,
        /// Who.
        member: String,
        /// Their role in the room.
        role: Role,
    },
    /// Someone is no longer a member (left, removed, or the room closed).
    MemberRemoved {
        /// The room.
        room: String,
        /// Who.
        member: String,
        /// Whether they were taken out by someone else.
        removed: bool,
    },
    /// The lead changed (the old lead, if still a member, is a consultant now).
    LeadChanged {
        /// The room.
        room: String,
        /// The previous lead.
        from: Option<String>,
        /// The new lead.
        to: String,
        /// Why.
        reason: LeadChange,
    },
    /// A consultant may (or may no longer) steer the camera and take screenshots.
    CameraGrant {
        /// The room.
        room: String,
        /// Who.
        member: String,
        /// Granted or taken back.
        camera: bool,
    },
    /// The room was closed.
    RoomClosed {
        /// The room.
        room: String,
        /// Who closed it.
        by: String,
    },
}

/// A member as others see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberView {
    /// Account or device name.
    pub name: String,
    /// Role in the room.
    pub role: Role,
    /// Whether they are connected now.
    pub online: bool,
    /// Granted the camera by the lead.
    pub camera: bool,
}

/// A room as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomView {
    /// Its name.
    pub name: String,
    /// Its state.
    pub state: RoomState,
    /// The vehicle whose call it is.
    pub vehicle: Option<String>,
    /// Who opened it.
    pub opened_by: String,
    /// The lead, if any.
    pub lead: Option<String>,
    /// Current members, in the order they joined.
    pub members: Vec<MemberView>,
}

#[derive(Debug, Clone)]
struct Member {
    name: String,
    role: Role,
    /// Connections open now (signalling sessions), by the shell's connection id: a late
    /// close of a connection from an earlier membership is not this one's.
    online: std::collections::BTreeSet<u64>,
    /// Since when connected without a break (for "longest present").
    online_since: Option<Instant>,
    /// Order of joining the membership (ties of presence go to the earlier member).
    order: u64,
    /// Granted the camera by the lead.
    camera: bool,
}

#[derive(Debug, Clone)]
struct Room {
    state: RoomState,
    vehicle: Option<String>,
    opened_by: String,
    members: Vec<Member>,
    /// When the lead's last connection closed (none while connected).
    lead_away_since: Option<Instant>,
    /// Dispatchers the lead took out: they come back only when invited.
    removed: std::collections::BTreeSet<String>,
}

impl Room {
    fn lead(&self) -> Option<&Member> {
        self.members.iter().find(|m| m.role == Role::Lead)
    }

    fn member(&self, name: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.name == name)
    }

    fn member_mut(&mut self, name: &str) -> Option<&mut Member> {
        self.members.iter_mut().find(|m| m.name == name)
    }

    /// The consultant who should lead next: the one connected longest, else the earliest
    /// member.
    fn successor(&self, online_only: bool) -> Option<String> {
        let consultants = self.members.iter().filter(|m| m.role == Role::Consultant);
        let online = consultants
            .clone()
            .filter(|m| !m.online.is_empty())
            .min_by_key(|m| (m.online_since, m.order));
        match online {
            Some(m) => Some(m.name.clone()),
            None if online_only => None,
            None => consultants.min_by_key(|m| m.order).map(|m| m.name.clone()),
        }
    }
}

/// Calls, rooms and their members (see the crate documentation).
#[derive(Debug)]
pub struct Desk {
    rooms: BTreeMap<String, Room>,
    lead_grace: Duration,
    out: VecDeque<Output>,
    next_order: u64,
}

impl Desk {
    /// An empty desk; the lead passes on after `lead_grace` without a connection.
    pub fn new(lead_grace: Duration) -> Desk {
        Desk {
            rooms: BTreeMap::new(),
            lead_grace,
            out: VecDeque::new(),
            next_order: 0,
        }
    }

    /// Puts back a room kept from before a restart (no outputs; nobody is connected).
    pub fn restore(
        &mut self,
        name: &str,
        state: RoomState,
        vehicle: Option<String>,
        opened_by: String,
        members: Vec<(String, Role)>,
        now: Instant,
    ) {
        // What the store says is mended to the invariant: at most one lead (the first),
        // and one (the earliest consultant) if there are consultants.
        let mut members = members;
        let mut seen_lead = false;
        for (_, role) in &mut members {
            if *role == Role::Lead {
                if seen_lead {
                    *role = Role::Consultant;
                }
                seen_lead = true;
            }
        }
        if !seen_lead && state != RoomState::Closed {
            if let Some((_, role)) = members.iter_mut().find(|(_, r)| *r == Role::Consultant) {
                *role = Role::Lead;
            }
        }
        let has_lead = members.iter().any(|(_, r)| *r == Role::Lead);
        let members = members
            .into_iter()
            .map(|(name, role)| {
                self.next_order += 1;
                Member {
                    name,
                    role,
                    online: Default::default(),
                    online_since: None,
                    order: self.next_order,
                    camera: false,
                }
            })
            .collect();
        self.rooms.insert(
            name.to_owned(),
            Room {
                state,
                vehicle,
                opened_by,
                members,
                // Nobody is connected after a restart: the lead's grace time starts now.
                lead_away_since: has_lead.then_some(now),
                removed: Default::default(),
            },
        );
    }

    /// The next change to store and announce.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When [`Desk::handle_timeout`] should run next.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.rooms
            .values()
            .filter(|r| r.state != RoomState::Closed && r.successor(true).is_some())
            .filter_map(|r| r.lead_away_since.map(|t| t + self.lead_grace))
            .min()
    }

    /// Passes the lead on in rooms whose lead has been away longer than the grace time.
    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<String> = self
            .rooms
            .iter()
            .filter(|(_, r)| {
                r.state != RoomState::Closed
                    && r.lead_away_since
                        .is_some_and(|t| now.saturating_duration_since(t) >= self.lead_grace)
            })
            .map(|(n, _)| n.clone())
            .collect();
        for name in due {
            self.pass_lead(&name, true, LeadChange::LeadAway, now);
        }
    }

    /// Whether a room exists (open or closed).
    pub fn contains(&self, room: &str) -> bool {
        self.rooms.contains_key(room)
    }

    /// A room's view.
    pub fn room(&self, name: &str) -> Option<RoomView> {
        let r = self.rooms.get(name)?;
        Some(RoomView {
            name: name.to_owned(),
            state: r.state,
            vehicle: r.vehicle.clone(),
            opened_by: r.opened_by.clone(),
            lead: r.lead().map(|m| m.name.clone()),
            members: r
                .members
                .iter()
                .map(|m| MemberView {
                    name: m.name.clone(),
                    role: m.role,
                    online: !m.online.is_empty(),
                    camera: m.camera,
                })
                .collect(),
        })
    }

    /// Rooms not closed that `who` may see: all for admins, watchers see ringing calls
    /// too, dispatchers every accepted call (they may join it), everyone else the rooms
    /// they belong to.
    pub fn rooms_for(&self, who: &Principal) -> Vec<RoomView> {
        self.rooms
            .iter()
            .filter(|(_, r)| r.state != RoomState::Closed)
            .filter(|(_, r)| {
                who.role == Role::Admin
                    || r.member(&who.name).is_some()
                    || (r.state == RoomState::Ringing && may(who.role, Action::WatchCalls))
                    || (r.state == RoomState::Active && may(who.role, Action::JoinCall))
            })
            .filter_map(|(n, _)| self.room(n))
            .collect()
    }

    /// Calls nobody accepted yet.
    pub fn ringing(&self) -> Vec<RoomView> {
        self.rooms
            .iter()
            .filter(|(_, r)| r.state == RoomState::Ringing)
            .filter_map(|(n, _)| self.room(n))
            .collect()
    }

    /// `who`'s role in `room`, for room actions: admins act as admins in every room.
    pub fn role_in(&self, room: &str, who: &Principal) -> Result<Role, ControlError> {
        let r = self
            .rooms
            .get(room)
            .ok_or_else(|| ControlError::UnknownRoom(room.to_owned()))?;
        if who.role == Role::Admin {
            return Ok(Role::Admin);
        }
        if r.state == RoomState::Closed {
            return Err(ControlError::Closed(room.to_owned()));
        }
        r.member(&who.name)
            .map(|m| m.role)
            .ok_or_else(|| ControlError::NotMember(room.to_owned()))
    }

    /// Checks `who` may do `action` (in `room`, for room actions), returning their role.
    pub fn authorize(
        &self,
        who: &Principal,
        action: Action,
        room: Option<&str>,
    ) -> Result<Role, ControlError> {
        let role = match room {
            Some(room) if action.in_room() => self.role_in(room, who)?,
            _ => who.role,
        };
        if may(role, action) {
            Ok(role)
        } else {
            Err(ControlError::Forbidden {
                role: role.as_str(),
                action: action_name(action),
            })
        }
    }

    fn open_room(&mut self, name: &str) -> Result<&mut Room, ControlError> {
        match self.rooms.get_mut(name) {
            None => Err(ControlError::UnknownRoom(name.to_owned())),
            Some(r) if r.state == RoomState::Closed => Err(ControlError::Closed(name.to_owned())),
            Some(r) => Ok(r),
        }
    }

    fn add(&mut self, room: &str, name: &str, role: Role) {
        self.next_order += 1;
        let order = self.next_order;
        if let Some(r) = self.rooms.get_mut(room) {
            r.members.push(Member {
                name: name.to_owned(),
                role,
                online: Default::default(),
                online_since: None,
                order,
                camera: false,
            });
            self.out.push_back(Output::MemberAdded {
                room: room.to_owned(),
                member: name.to_owned(),
                role,
            });
        }
    }

    /// A vehicle (or crew) opens a call named `name`, ringing at the centre. A vehicle
    /// with a call still open gets that call back instead of a second one.
    pub fn open_call(&mut self, name: &str, by: &Principal) -> Result<String, ControlError> {
        self.authorize(by, Action::OpenCall, None)?;
        if let Some((existing, _)) = self.rooms.iter().find(|(_, r)| {
            r.state != RoomState::Closed && r.member(&by.name).is_some() && r.opened_by == by.name
        }) {
            return Ok(existing.clone());
        }
        if self.rooms.contains_key(name) {
            return Err(ControlError::RoomExists(name.to_owned()));
        }
        let vehicle = (by.role == Role::Vehicle).then(|| by.name.clone());
        self.rooms.insert(
            name.to_owned(),
            Room {
                state: RoomState::Ringing,
                vehicle: vehicle.clone(),
                opened_by: by.name.clone(),
                members: Vec::new(),
                lead_away_since: None,
                removed: Default::default(),
            },
        );
        self.out.push_back(Output::RoomOpened {
            room: name.to_owned(),
        });
        self.add(name, &by.name, by.role);
        self.out.push_back(Output::CallOpened {
            room: name.to_owned(),
            vehicle,
            by: by.name.clone(),
        });
        Ok(name.to_owned())
    }

    /// A consultant accepts a ringing call and becomes its lead; later ones are told
    /// who was first.
    pub fn accept(&mut self, room: &str, by: &Principal, now: Instant) -> Result<(), ControlError> {
        self.authorize(by, Action::AcceptCall, None)?;
        let r = self.open_room(room)?;
        if r.state != RoomState::Ringing {
            return Err(ControlError::CallTaken {
                room: room.to_owned(),
                lead: r.lead().map_or_else(String::new, |m| m.name.clone()),
            });
        }
        r.state = RoomState::Active;
        self.add(room, &by.name, Role::Consultant);
        self.set_lead(room, None, &by.name, LeadChange::Accepted, now);
        Ok(())
    }

    /// An operator creates a room without a call.
    pub fn create_room(&mut self, name: &str, by: &Principal) -> Result<(), ControlError> {
        self.authorize(by, Action::CreateRoom, None)?;
        if self.rooms.contains_key(name) {
            return Err(ControlError::RoomExists(name.to_owned()));
        }
        self.rooms.insert(
            name.to_owned(),
            Room {
                state: RoomState::Active,
                vehicle: None,
                opened_by: by.name.clone(),
                members: Vec::new(),
                lead_away_since: None,
                removed: Default::default(),
            },
        );
        self.out.push_back(Output::RoomOpened {
            room: name.to_owned(),
        });
        Ok(())
    }

    /// The lead (or an operator) adds `target`, whose account role is `target_role`:
    /// consultants join as consultants (as lead if the room has none), the dispatcher
    /// and crew members in their own roles.
    pub fn invite(
        &mut self,
        room: &str,
        by: &Principal,
        target: &Principal,
        now: Instant,
    ) -> Result<Role, ControlError> {
        self.authorize(by, Action::Invite, Some(room))?;
        let r = self.open_room(room)?;
        if !matches!(
            target.role,
            Role::Consultant | Role::Dispatcher | Role::Team | Role::Glasses
        ) {
            return Err(ControlError::BadTarget(format!(
                "a {} cannot be invited (consultants, dispatchers, crew and glasses can)",
                target.role.as_str()
            )));
        }
        if r.member(&target.name).is_some() {
            return Err(ControlError::AlreadyMember(target.name.clone()));
        }
        if r.state == RoomState::Ringing {
            return Err(ControlError::BadTarget(
                "the call has not been accepted yet".into(),
            ));
        }
        let first = target.role == Role::Consultant && r.lead().is_none();
        r.removed.remove(&target.name);
        self.add(room, &target.name, target.role);
        if first {
            self.set_lead(room, None, &target.name, LeadChange::FirstConsultant, now);
            return Ok(Role::Lead);
        }
        Ok(target.role)
    }

    fn drop_member(&mut self, room: &str, name: &str, removed: bool, now: Instant) {
        let Some(r) = self.rooms.get_mut(room) else {
            return;
        };
        let Some(i) = r.members.iter().position(|m| m.name == name) else {
            return;
        };
        let was_lead = r.members[i].role == Role::Lead;
        r.members.remove(i);
        self.out.push_back(Output::MemberRemoved {
            room: room.to_owned(),
            member: name.to_owned(),
            removed,
        });
        if was_lead {
            if let Some(r) = self.rooms.get_mut(room) {
                r.lead_away_since = None;
            }
            self.pass_lead_from(
                room,
                Some(name.to_owned()),
                false,
                LeadChange::LeadLeft,
                now,
            );
        }
    }

    /// The lead (or an operator) takes a consultant, the dispatcher or a crew member
    /// out of the room.
    pub fn remove(
        &mut self,
        room: &str,
        by: &Principal,
        target: &str,
        now: Instant,
    ) -> Result<(), ControlError> {
        self.authorize(by, Action::Remove, Some(room))?;
        let r = self.open_room(room)?;
        let Some(m) = r.member(target) else {
            return Err(ControlError::BadTarget(format!("{target} is not a member")));
        };
        if !matches!(
            m.role,
            Role::Consultant | Role::Dispatcher | Role::Team | Role::Glasses
        ) {
            return Err(ControlError::BadTarget(format!(
                "the {} cannot be removed (hand the lead over, or close the call)",
                m.role.as_str()
            )));
        }
        r.removed.insert(target.to_owned());
        self.drop_member(room, target, true, now);
        Ok(())
    }

    /// A dispatcher joins an accepted call without an invitation, as dispatcher; not
    /// after the lead removed them from it (until invited again).
    pub fn join_call(&mut self, room: &str, by: &Principal) -> Result<Role, ControlError> {
        self.authorize(by, Action::JoinCall, None)?;
        let r = self.open_room(room)?;
        if r.member(&by.name).is_some() {
            return Err(ControlError::AlreadyMember(by.name.clone()));
        }
        if r.state == RoomState::Ringing {
            return Err(ControlError::BadTarget(
                "the call has not been accepted yet".into(),
            ));
        }
        if r.removed.contains(&by.name) {
            return Err(ControlError::Forbidden {
                role: by.role.as_str(),
                action: "join a call the lead removed them from (the lead may invite again)",
            });
        }
        self.add(room, &by.name, Role::Dispatcher);
        Ok(Role::Dispatcher)
    }

    /// A member leaves; a leaving lead passes the role to the next consultant.
    pub fn leave(&mut self, room: &str, by: &Principal, now: Instant) -> Result<(), ControlError> {
        self.authorize(by, Action::Leave, Some(room))?;
        self.open_room(room)?;
        self.drop_member(room, &by.name, false, now);
        Ok(())
    }

    /// The lead names a consultant of the room as the new lead.
    pub fn hand_over(
        &mut self,
        room: &str,
        by: &Principal,
        to: &str,
        now: Instant,
    ) -> Result<(), ControlError> {
        self.authorize(by, Action::HandOver, Some(room))?;
        let r = self.open_room(room)?;
        match r.member(to) {
            Some(m) if m.role == Role::Consultant => {}
            Some(m) => {
                return Err(ControlError::BadTarget(format!(
                    "the lead passes only to a consultant; {to} is {}",
                    m.role.as_str()
                )))
            }
            None => return Err(ControlError::BadTarget(format!("{to} is not a member"))),
        }
        self.set_lead(room, Some(by.name.clone()), to, LeadChange::HandOver, now);
        Ok(())
    }

    /// The lead lets a consultant of the room steer the camera and take screenshots, or
    /// takes that back.
    pub fn grant_camera(
        &mut self,
        room: &str,
        by: &Principal,
        to: &str,
        camera: bool,
    ) -> Result<(), ControlError> {
        self.authorize(by, Action::Grant, Some(room))?;
        let r = self.open_room(room)?;
        let Some(m) = r.member_mut(to) else {
            return Err(ControlError::BadTarget(format!("{to} is not a member")));
        };
        if m.role != Role::Consultant {
            return Err(ControlError::BadTarget(format!(
                "the camera is granted to consultants; {to} is {}",
                m.role.as_str()
            )));
        }
        if m.camera != camera {
            m.camera = camera;
            self.out.push_back(Output::CameraGrant {
                room: room.to_owned(),
                member: to.to_owned(),
                camera,
            });
        }
        Ok(())
    }

    /// Ends the call: every membership ends.
    pub fn close(&mut self, room: &str, by: &Principal) -> Result<(), ControlError> {
        self.authorize(by, Action::CloseRoom, Some(room))?;
        let r = self.open_room(room)?;
        r.state = RoomState::Closed;
        r.lead_away_since = None;
        let names: Vec<String> = r.members.drain(..).map(|m| m.name).collect();
        for member in names {
            self.out.push_back(Output::MemberRemoved {
                room: room.to_owned(),
                member,
                removed: true,
            });
        }
        self.out.push_back(Output::RoomClosed {
            room: room.to_owned(),
            by: by.name.clone(),
        });
        Ok(())
    }

    /// A member's connection `conn` (an id unique in the shell) opened: a signalling
    /// session joined.
    pub fn handle_connected(&mut self, room: &str, name: &str, conn: u64, now: Instant) {
        let Some(r) = self.rooms.get_mut(room) else {
            return;
        };
        let Some(m) = r.member_mut(name) else {
            return;
        };
        if m.online.is_empty() {
            m.online_since = Some(now);
        }
        m.online.insert(conn);
        if m.role == Role::Lead {
            r.lead_away_since = None;
        }
        // A consultant arriving while the lead is overdue takes over at once.
        self.handle_timeout(now);
    }

    /// A member's connection `conn` closed (ignored if it is not one of this
    /// membership's).
    pub fn handle_disconnected(&mut self, room: &str, name: &str, conn: u64, now: Instant) {
        let Some(r) = self.rooms.get_mut(room) else {
            return;
        };
        let Some(m) = r.member_mut(name) else {
            return;
        };
        if !m.online.remove(&conn) {
            return;
        }
        if m.online.is_empty() {
            m.online_since = None;
            if m.role == Role::Lead {
                r.lead_away_since = Some(now);
            }
        }
    }

    /// Makes the best successor lead, if there is one (`online_only`: only a connected
    /// consultant).
    fn pass_lead(&mut self, room: &str, online_only: bool, reason: LeadChange, now: Instant) {
        let from = self
            .rooms
            .get(room)
            .and_then(|r| r.lead().map(|m| m.name.clone()));
        self.pass_lead_from(room, from, online_only, reason, now);
    }

    fn pass_lead_from(
        &mut self,
        room: &str,
        from: Option<String>,
        online_only: bool,
        reason: LeadChange,
        now: Instant,
    ) {
        let Some(to) = self.rooms.get(room).and_then(|r| r.successor(online_only)) else {
            return;
        };
        self.set_lead(room, from, &to, reason, now);
    }

    fn set_lead(
        &mut self,
        room: &str,
        from: Option<String>,
        to: &str,
        reason: LeadChange,
        now: Instant,
    ) {
        let Some(r) = self.rooms.get_mut(room) else {
            return;
        };
        for m in &mut r.members {
            if m.role == Role::Lead {
                m.role = Role::Consultant;
            }
            // The new lead decides who else steers: grants end with the old lead.
            if m.camera {
                m.camera = false;
                self.out.push_back(Output::CameraGrant {
                    room: room.to_owned(),
                    member: m.name.clone(),
                    camera: false,
                });
            }
        }
        let mut online = false;
        if let Some(m) = r.member_mut(to) {
            m.role = Role::Lead;
            online = !m.online.is_empty();
        }
        // A lead who is not connected has the grace time to connect.
        r.lead_away_since = (!online).then_some(now);
        self.out.push_back(Output::LeadChanged {
            room: room.to_owned(),
            from,
            to: to.to_owned(),
            reason,
        });
    }
}

/// The name of an action in error messages and the audit trail.
pub(crate) fn action_name(a: Action) -> &'static str {
    match a {
        Action::OpenCall => "open a call",
        Action::WatchCalls => "watch incoming calls",
        Action::AcceptCall => "accept a call",
        Action::CreateRoom => "create rooms",
        Action::ListRooms => "list rooms",
        Action::GetRoom => "read this room",
        Action::CloseRoom => "close this room",
        Action::Invite => "invite members",
        Action::Remove => "remove members",
        Action::Leave => "leave this room",
        Action::HandOver => "hand the lead over",
        Action::Grant => "lend the camera",
        Action::JoinMedia => "join this room's media",
        Action::Camera => "steer the camera",
        Action::Record => "record",
        Action::Screenshot => "take screenshots",
        Action::Chat => "chat",
        Action::JoinCall => "join a call without an invitation",
        Action::EcgSnapshot => "ask for ECG snapshots",
        Action::ReadAudit => "read the audit trail",
        Action::ReadTelemetry => "read this room's telemetry",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(name: &str, role: Role) -> Principal {
        Principal {
            name: name.into(),
            role,
        }
    }

    #[allow(clippy::disallowed_methods)] // tests need some instant to start from
    fn start() -> Instant {
        Instant::now()
    }

    /// One connection id per person (tests where a person has one connection at a time).
    fn conn(name: &str) -> u64 {
        name.bytes().map(u64::from).sum()
    }

    fn drain(d: &mut Desk) -> Vec<Output> {
        std::iter::from_fn(|| d.poll_output()).collect()
    }

    /// At most one lead; exactly one while any teleconsultant is a member.
    fn check_invariant(d: &Desk) {
        for (name, r) in &d.rooms {
            let leads = r.members.iter().filter(|m| m.role == Role::Lead).count();
            let consultants = r
                .members
                .iter()
                .filter(|m| matches!(m.role, Role::Lead | Role::Consultant))
                .count();
            assert!(leads <= 1, "{name}: {leads} leads");
            if r.state != RoomState::Closed && consultants > 0 {
                assert_eq!(leads, 1, "{name}: consultants but no lead");
            }
        }
    }

    fn call_with_lead(d: &mut Desk) -> (Principal, Principal, Principal) {
        let amb = p("amb-7", Role::Vehicle);
        let ana = p("ana", Role::Consultant);
        let bob = p("bob", Role::Consultant);
        d.open_call("call-1", &amb).unwrap();
        d.accept("call-1", &ana, start()).unwrap();
        d.invite("call-1", &ana, &bob, start()).unwrap();
        (amb, ana, bob)
    }

    #[test]
    fn a_dispatcher_sees_accepted_calls_joins_on_their_own_and_stays_out_once_removed() {
        let mut d = Desk::new(Duration::from_secs(30));
        let dis = p("dis", Role::Dispatcher);
        let amb = p("amb-7", Role::Vehicle);
        d.open_call("call-1", &amb).unwrap();
        // Ringing: listed (the dispatcher watches calls) but not joinable yet.
        assert_eq!(d.rooms_for(&dis).len(), 1);
        assert_eq!(
            d.join_call("call-1", &dis).unwrap_err().code(),
            "bad_target"
        );
        let ana = p("ana", Role::Consultant);
        d.accept("call-1", &ana, start()).unwrap();
        let listed = d.rooms_for(&dis);
        assert_eq!(
            (listed.len(), listed[0].state),
            (1, RoomState::Active),
            "an accepted call the dispatcher is not in"
        );
        let _ = drain(&mut d);
        assert_eq!(d.join_call("call-1", &dis).unwrap(), Role::Dispatcher);
        assert_eq!(
            drain(&mut d),
            [Output::MemberAdded {
                room: "call-1".into(),
                member: "dis".into(),
                role: Role::Dispatcher
            }]
        );
        assert_eq!(
            d.join_call("call-1", &dis).unwrap_err().code(),
            "already_member"
        );
        // Nobody else joins uninvited.
        for who in [
            p("bob", Role::Consultant),
            p("crew", Role::Team),
            p("root", Role::Admin),
        ] {
            assert_eq!(
                d.join_call("call-1", &who).unwrap_err().code(),
                "forbidden",
                "{who:?}"
            );
        }
        // Removed by the lead: out until invited again.
        d.remove("call-1", &ana, "dis", start()).unwrap();
        assert_eq!(d.join_call("call-1", &dis).unwrap_err().code(), "forbidden");
        d.invite("call-1", &ana, &dis, start()).unwrap();
        d.leave("call-1", &dis, start()).unwrap();
        assert_eq!(d.join_call("call-1", &dis).unwrap(), Role::Dispatcher);
        assert_eq!(
            d.join_call("nope", &dis).unwrap_err().code(),
            "room_not_found"
        );
        d.close("call-1", &ana).unwrap();
        assert_eq!(
            d.join_call("call-1", &p("dis2", Role::Dispatcher))
                .unwrap_err()
                .code(),
            "room_closed"
        );
        check_invariant(&d);
    }

    #[test]
    fn the_first_consultant_to_accept_leads_and_later_ones_are_told() {
        let mut d = Desk::new(Duration::from_secs(30));
        let amb = p("amb-7", Role::Vehicle);
        assert_eq!(d.open_call("call-1", &amb).unwrap(), "call-1");
        // Pressing the button again returns the same call.
        assert_eq!(d.open_call("call-2", &amb).unwrap(), "call-1");
        assert_eq!(d.ringing().len(), 1);
        let dispatcher = p("dis", Role::Dispatcher);
        assert_eq!(
            d.accept("call-1", &dispatcher, start()).unwrap_err().code(),
            "forbidden"
        );
        d.accept("call-1", &p("ana", Role::Consultant), start())
            .unwrap();
        let late = d
            .accept("call-1", &p("bob", Role::Consultant), start())
            .unwrap_err();
        assert_eq!(late.code(), "call_taken");
        assert!(late.to_string().contains("ana"));
        let out = drain(&mut d);
        assert!(out.contains(&Output::CallOpened {
            room: "call-1".into(),
            vehicle: Some("amb-7".into()),
            by: "amb-7".into()
        }));
        assert!(out.contains(&Output::LeadChanged {
            room: "call-1".into(),
            from: None,
            to: "ana".into(),
            reason: LeadChange::Accepted
        }));
        assert_eq!(d.room("call-1").unwrap().lead.as_deref(), Some("ana"));
        assert!(d.ringing().is_empty());
        check_invariant(&d);
    }

    #[test]
    fn only_the_lead_invites_removes_and_hands_over() {
        let mut d = Desk::new(Duration::from_secs(30));
        let (_amb, ana, bob) = call_with_lead(&mut d);
        let cid = p("cid", Role::Consultant);
        assert_eq!(
            d.invite("call-1", &bob, &cid, start()).unwrap_err().code(),
            "forbidden"
        );
        assert_eq!(
            d.remove("call-1", &bob, "ana", start()).unwrap_err().code(),
            "forbidden"
        );
        assert_eq!(
            d.hand_over("call-1", &bob, "bob", start())
                .unwrap_err()
                .code(),
            "forbidden"
        );
        assert_eq!(
            d.invite("call-1", &p("eve", Role::Consultant), &cid, start())
                .unwrap_err()
                .code(),
            "not_a_member"
        );
        assert_eq!(
            d.invite("call-1", &ana, &bob, start()).unwrap_err().code(),
            "already_member"
        );
        assert_eq!(
            d.hand_over("call-1", &ana, "amb-7", start())
                .unwrap_err()
                .code(),
            "bad_target"
        );
        assert_eq!(
            d.remove("call-1", &ana, "amb-7", start())
                .unwrap_err()
                .code(),
            "bad_target"
        );
        drain(&mut d);
        d.hand_over("call-1", &ana, "bob", start()).unwrap();
        assert_eq!(
            drain(&mut d),
            [Output::LeadChanged {
                room: "call-1".into(),
                from: Some("ana".into()),
                to: "bob".into(),
                reason: LeadChange::HandOver
            }]
        );
        // Ana is a consultant now: lead-only actions are refused to her.
        assert_eq!(d.role_in("call-1", &ana), Ok(Role::Consultant));
        assert_eq!(
            d.hand_over("call-1", &ana, "ana", start())
                .unwrap_err()
                .code(),
            "forbidden"
        );
        d.remove("call-1", &bob, "ana", start()).unwrap();
        assert_eq!(
            d.role_in("call-1", &ana).unwrap_err().code(),
            "not_a_member"
        );
        check_invariant(&d);
    }

    #[test]
    fn a_disconnected_lead_passes_on_after_the_grace_time_to_the_longest_present() {
        let t0 = start();
        let grace = Duration::from_secs(30);
        let mut d = Desk::new(grace);
        let (_amb, ana, bob) = call_with_lead(&mut d);
        let cid = p("cid", Role::Consultant);
        d.invite("call-1", &ana, &cid, start()).unwrap();
        d.handle_connected("call-1", "ana", conn("ana"), t0);
        d.handle_connected("call-1", "cid", conn("cid"), t0 + Duration::from_secs(1));
        d.handle_connected("call-1", "bob", conn("bob"), t0 + Duration::from_secs(2));
        drain(&mut d);
        assert_eq!(d.poll_timeout(), None);
        let gone = t0 + Duration::from_secs(10);
        d.handle_disconnected("call-1", "ana", conn("ana"), gone);
        assert_eq!(d.poll_timeout(), Some(gone + grace));
        // Back within the grace time: nothing changes.
        d.handle_connected("call-1", "ana", conn("ana"), gone + Duration::from_secs(5));
        assert_eq!(d.poll_timeout(), None);
        d.handle_disconnected("call-1", "ana", conn("ana"), gone + Duration::from_secs(6));
        d.handle_timeout(gone + Duration::from_secs(35));
        assert!(
            drain(&mut d).is_empty(),
            "not yet: 29 s after the second loss"
        );
        d.handle_timeout(gone + Duration::from_secs(36));
        // cid has been connected longer than bob, though bob joined the membership first.
        assert_eq!(
            drain(&mut d),
            [Output::LeadChanged {
                room: "call-1".into(),
                from: Some("ana".into()),
                to: "cid".into(),
                reason: LeadChange::LeadAway
            }]
        );
        assert_eq!(d.poll_timeout(), None);
        assert_eq!(d.role_in("call-1", &ana), Ok(Role::Consultant));
        assert_eq!(d.role_in("call-1", &bob), Ok(Role::Consultant));
        check_invariant(&d);
    }

    #[test]
    fn with_nobody_else_connected_the_lead_stays_until_a_consultant_arrives() {
        let t0 = start();
        let grace = Duration::from_secs(30);
        let mut d = Desk::new(grace);
        let (_amb, _ana, _bob) = call_with_lead(&mut d);
        d.handle_connected("call-1", "ana", conn("ana"), t0);
        d.handle_disconnected("call-1", "ana", conn("ana"), t0);
        assert_eq!(d.poll_timeout(), None, "no one to pass the lead to");
        d.handle_timeout(t0 + Duration::from_secs(60));
        drain(&mut d);
        assert_eq!(d.room("call-1").unwrap().lead.as_deref(), Some("ana"));
        // Bob connects long after the grace time: he takes over at once.
        d.handle_connected("call-1", "bob", conn("bob"), t0 + Duration::from_secs(90));
        assert_eq!(d.room("call-1").unwrap().lead.as_deref(), Some("bob"));
        check_invariant(&d);
    }

    #[test]
    fn a_leaving_lead_passes_on_at_once_and_closing_ends_every_membership() {
        let mut d = Desk::new(Duration::from_secs(30));
        let (_amb, ana, bob) = call_with_lead(&mut d);
        drain(&mut d);
        d.leave("call-1", &ana, start()).unwrap();
        let out = drain(&mut d);
        assert!(out.contains(&Output::LeadChanged {
            room: "call-1".into(),
            from: Some("ana".into()),
            to: "bob".into(),
            reason: LeadChange::LeadLeft
        }));
        assert_eq!(
            d.close("call-1", &p("dis", Role::Dispatcher))
                .unwrap_err()
                .code(),
            "not_a_member"
        );
        d.close("call-1", &bob).unwrap();
        let out = drain(&mut d);
        assert_eq!(out.len(), 3, "{out:?}");
        assert_eq!(
            d.invite(
                "call-1",
                &p("root", Role::Admin),
                &p("cid", Role::Consultant),
                start()
            )
            .unwrap_err()
            .code(),
            "room_closed"
        );
        // A closed call frees the vehicle to open a new one.
        assert_eq!(
            d.open_call("call-2", &p("amb-7", Role::Vehicle)).unwrap(),
            "call-2"
        );
    }

    #[test]
    fn a_late_close_of_an_old_connection_does_not_take_a_new_membership_offline() {
        let t0 = start();
        let mut d = Desk::new(Duration::from_secs(30));
        let (_amb, ana, bob) = call_with_lead(&mut d);
        d.handle_connected("call-1", "bob", 1, t0);
        d.remove("call-1", &ana, "bob", t0).unwrap();
        d.invite("call-1", &ana, &bob, t0).unwrap();
        d.handle_connected("call-1", "bob", 2, t0);
        // The removed session's socket closes only now.
        d.handle_disconnected("call-1", "bob", 1, t0);
        let room = d.room("call-1").unwrap();
        assert!(room.members.iter().any(|m| m.name == "bob" && m.online));
    }

    #[test]
    fn a_restored_room_is_mended_to_one_lead() {
        let t0 = start();
        let mut d = Desk::new(Duration::from_secs(30));
        let two = vec![
            ("ana".to_owned(), Role::Lead),
            ("bob".to_owned(), Role::Lead),
        ];
        d.restore("r1", RoomState::Active, None, "x".into(), two, t0);
        let none = vec![
            ("amb".to_owned(), Role::Vehicle),
            ("cid".to_owned(), Role::Consultant),
        ];
        d.restore("r2", RoomState::Active, None, "x".into(), none, t0);
        assert_eq!(d.room("r1").unwrap().lead.as_deref(), Some("ana"));
        assert_eq!(d.room("r2").unwrap().lead.as_deref(), Some("cid"));
        check_invariant(&d);
        // A closed room stays closed, and its name stays taken.
        d.restore("old", RoomState::Closed, None, "x".into(), vec![], t0);
        let admin = p("root", Role::Admin);
        assert_eq!(
            d.create_room("old", &admin).unwrap_err().code(),
            "room_exists"
        );
    }

    #[test]
    fn the_lead_grants_the_camera_to_consultants_and_a_new_lead_starts_afresh() {
        let t0 = start();
        let mut d = Desk::new(Duration::from_secs(30));
        let (_amb, ana, bob) = call_with_lead(&mut d);
        drain(&mut d);
        assert_eq!(
            d.grant_camera("call-1", &bob, "bob", true)
                .unwrap_err()
                .code(),
            "forbidden"
        );
        assert_eq!(
            d.grant_camera("call-1", &ana, "amb-7", true)
                .unwrap_err()
                .code(),
            "bad_target"
        );
        d.grant_camera("call-1", &ana, "bob", true).unwrap();
        // Granting again changes nothing and says nothing.
        d.grant_camera("call-1", &ana, "bob", true).unwrap();
        let grant = Output::CameraGrant {
            room: "call-1".into(),
            member: "bob".into(),
            camera: true,
        };
        assert_eq!(drain(&mut d), [grant]);
        assert!(d
            .room("call-1")
            .unwrap()
            .members
            .iter()
            .any(|m| m.name == "bob" && m.camera));
        let cid = p("cid", Role::Consultant);
        d.invite("call-1", &ana, &cid, t0).unwrap();
        d.hand_over("call-1", &ana, "cid", t0).unwrap();
        let out = drain(&mut d);
        assert!(out.contains(&Output::CameraGrant {
            room: "call-1".into(),
            member: "bob".into(),
            camera: false
        }));
        assert!(!d.room("call-1").unwrap().members.iter().any(|m| m.camera));
    }

    #[test]
    fn random_sequences_keep_exactly_one_lead() {
        // A small deterministic generator: the same sequences every run.
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |n: u64| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) % n
        };
        let people = ["ana", "bob", "cid", "dan"];
        for _ in 0..200 {
            let t0 = start();
            let mut d = Desk::new(Duration::from_secs(5));
            d.open_call("r", &p("amb", Role::Vehicle)).unwrap();
            d.accept("r", &p("ana", Role::Consultant), start()).unwrap();
            for step in 0..60u64 {
                let now = t0 + Duration::from_secs(step);
                let who = people[next(4) as usize];
                let other = people[next(4) as usize];
                let me = p(who, Role::Consultant);
                let lead = d
                    .room("r")
                    .and_then(|r| r.lead)
                    .map(|l| p(&l, Role::Consultant));
                match next(7) {
                    0 => {
                        if let Some(l) = &lead {
                            let _ = d.invite("r", l, &p(other, Role::Consultant), start());
                        }
                    }
                    1 => {
                        if let Some(l) = &lead {
                            let _ = d.hand_over("r", l, other, start());
                        }
                    }
                    2 => {
                        let _ = d.leave("r", &me, start());
                    }
                    3 => d.handle_connected("r", who, conn(who), now),
                    4 => d.handle_disconnected("r", who, conn(who), now),
                    5 => {
                        if let Some(l) = &lead {
                            let _ = d.remove("r", l, other, start());
                        }
                    }
                    _ => d.handle_timeout(now),
                }
                check_invariant(&d);
                drain(&mut d);
            }
        }
    }
}
