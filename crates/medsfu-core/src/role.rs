//! Roles of the requirements' roles table and what each may publish and receive.

use std::fmt;
use std::str::FromStr;

/// Audio or video.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MediaKind {
    /// Sound.
    Audio,
    /// Pictures.
    Video,
}

/// Who a participant is in a room (see `requirements.md`, "Who takes part").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Role {
    /// The ambulance's agent: roof camera, cabin audio, devices.
    Vehicle,
    /// Smart glasses worn by a crew member.
    Glasses,
    /// A crew member's tablet.
    Team,
    /// The lead teleconsultant.
    Lead,
    /// A specialist invited by the lead.
    Consultant,
    /// The dispatch centre operator.
    Dispatcher,
    /// The archiving service.
    Recorder,
    /// A system operator.
    Admin,
}

/// What a track carries, which decides who may publish and receive it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TrackSource {
    /// The ambulance's roof camera.
    RoofCamera,
    /// The ambulance's cabin microphone.
    CabinAudio,
    /// Smart-glasses camera.
    GlassesCamera,
    /// Smart-glasses microphone.
    GlassesAudio,
    /// A tablet or desktop camera.
    Camera,
    /// A tablet or desktop microphone.
    Microphone,
    /// Another video device in the vehicle (ultrasound, laryngoscope).
    DeviceVideo,
    /// Another audio device in the vehicle (stethoscope).
    DeviceAudio,
}

impl Role {
    /// Every role, in table order.
    pub const ALL: [Role; 8] = [
        Role::Vehicle,
        Role::Glasses,
        Role::Team,
        Role::Lead,
        Role::Consultant,
        Role::Dispatcher,
        Role::Recorder,
        Role::Admin,
    ];

    /// The lower-case name used on the wire and in tokens.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Vehicle => "vehicle",
            Role::Glasses => "glasses",
            Role::Team => "team",
            Role::Lead => "lead",
            Role::Consultant => "consultant",
            Role::Dispatcher => "dispatcher",
            Role::Recorder => "recorder",
            Role::Admin => "admin",
        }
    }

    /// Whether this role may publish a track from `source`.
    pub fn may_publish(self, source: TrackSource) -> bool {
        use TrackSource::*;
        match self {
            Role::Vehicle => matches!(source, RoofCamera | CabinAudio | DeviceVideo | DeviceAudio),
            Role::Glasses => matches!(source, GlassesCamera | GlassesAudio),
            Role::Team => matches!(source, Camera | Microphone),
            Role::Lead | Role::Consultant | Role::Dispatcher => source == Microphone,
            Role::Recorder | Role::Admin => false,
        }
    }

    /// Whether this role may steer a vehicle's camera (pan, zoom, sector, screenshot).
    pub fn may_control_camera(self) -> bool {
        // The lead teleconsultant; consultants only by the lead's grant (control API).
        self == Role::Lead
    }

    /// Whether this role may receive a track from `source`.
    pub fn may_receive(self, source: TrackSource) -> bool {
        match self {
            // The vehicle receives commands and indicator state, not media.
            Role::Vehicle | Role::Admin => false,
            Role::Glasses => source.kind() == MediaKind::Audio,
            Role::Team | Role::Lead | Role::Consultant | Role::Dispatcher | Role::Recorder => true,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role {s:?}"))
    }
}

impl TrackSource {
    /// Every source.
    pub const ALL: [TrackSource; 8] = [
        TrackSource::RoofCamera,
        TrackSource::CabinAudio,
        TrackSource::GlassesCamera,
        TrackSource::GlassesAudio,
        TrackSource::Camera,
        TrackSource::Microphone,
        TrackSource::DeviceVideo,
        TrackSource::DeviceAudio,
    ];

    /// The snake-case name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            TrackSource::RoofCamera => "roof_camera",
            TrackSource::CabinAudio => "cabin_audio",
            TrackSource::GlassesCamera => "glasses_camera",
            TrackSource::GlassesAudio => "glasses_audio",
            TrackSource::Camera => "camera",
            TrackSource::Microphone => "microphone",
            TrackSource::DeviceVideo => "device_video",
            TrackSource::DeviceAudio => "device_audio",
        }
    }

    /// Audio or video.
    pub fn kind(self) -> MediaKind {
        match self {
            TrackSource::RoofCamera
            | TrackSource::GlassesCamera
            | TrackSource::Camera
            | TrackSource::DeviceVideo => MediaKind::Video,
            _ => MediaKind::Audio,
        }
    }

    /// The source a role publishes by default for a kind, when the client names none.
    pub fn default_for(role: Role, kind: MediaKind) -> TrackSource {
        match (role, kind) {
            (Role::Vehicle, MediaKind::Video) => TrackSource::RoofCamera,
            (Role::Vehicle, MediaKind::Audio) => TrackSource::CabinAudio,
            (Role::Glasses, MediaKind::Video) => TrackSource::GlassesCamera,
            (Role::Glasses, MediaKind::Audio) => TrackSource::GlassesAudio,
            (_, MediaKind::Video) => TrackSource::Camera,
            (_, MediaKind::Audio) => TrackSource::Microphone,
        }
    }
}

impl fmt::Display for TrackSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TrackSource {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TrackSource::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown track source {s:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_table_publish() {
        assert!(Role::Vehicle.may_publish(TrackSource::RoofCamera));
        assert!(!Role::Vehicle.may_publish(TrackSource::Camera));
        assert!(Role::Team.may_publish(TrackSource::Camera));
        assert!(!Role::Dispatcher.may_publish(TrackSource::Camera));
        assert!(Role::Dispatcher.may_publish(TrackSource::Microphone));
        assert!(!Role::Lead.may_publish(TrackSource::RoofCamera));
        for s in TrackSource::ALL {
            assert!(!Role::Recorder.may_publish(s));
            assert!(!Role::Admin.may_publish(s));
        }
    }

    #[test]
    fn roles_table_receive() {
        for s in TrackSource::ALL {
            assert!(!Role::Vehicle.may_receive(s));
            assert!(Role::Consultant.may_receive(s));
            assert!(Role::Recorder.may_receive(s));
            assert_eq!(Role::Glasses.may_receive(s), s.kind() == MediaKind::Audio);
        }
    }

    #[test]
    fn names_round_trip() {
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>(), Ok(r));
        }
        for s in TrackSource::ALL {
            assert_eq!(s.as_str().parse::<TrackSource>(), Ok(s));
        }
        assert!("surgeon".parse::<Role>().is_err());
    }
}
