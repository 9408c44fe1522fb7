//! The vehicle protocol's reliable streams.
//!
//! A vehicle opens bidirectional streams and names each by its first byte: [`CONTROL`]
//! (JSON lines both ways: hello, camera commands and their acknowledgements, indicator
//! state) and [`TELEMETRY`] (binary telemetry frames up, JSON-line acknowledgements down).
//! See docs/vehicle.md.

use serde::{Deserialize, Serialize};

/// First byte of the control stream.
pub const CONTROL: u8 = b'C';
/// First byte of the telemetry stream.
pub const TELEMETRY: u8 = b'T';
/// Longest JSON line accepted on a stream.
pub const MAX_LINE: usize = 64 * 1024;

/// One media flow a vehicle announces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowInfo {
    /// Flow identifier used in its datagrams.
    pub flow: u64,
    /// What it carries (`roof_camera`, `cabin_audio`, `glasses_camera`, ...).
    pub source: String,
    /// Its codec as a MIME type (`video/H265`, `audio/opus`, ...).
    pub codec: String,
}

/// The wire form of a [`medsfu_core::CameraCommand`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraCommand {
    /// Pan in degrees, -60 (left) to 60 (right).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pan_deg: Option<f32>,
    /// Digital zoom factor, 1 to 4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zoom: Option<f32>,
    /// Sector of a 3x3 grid to zoom into, 1 (top left) to 9; 0 for the whole picture.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sector: Option<u8>,
    /// Take a screenshot of the live picture.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub screenshot: bool,
}

impl From<&medsfu_core::CameraCommand> for CameraCommand {
    fn from(c: &medsfu_core::CameraCommand) -> Self {
        CameraCommand {
            pan_deg: c.pan_deg,
            zoom: c.zoom,
            sector: c.sector,
            screenshot: c.screenshot,
        }
    }
}

impl From<&CameraCommand> for medsfu_core::CameraCommand {
    fn from(c: &CameraCommand) -> Self {
        medsfu_core::CameraCommand {
            pan_deg: c.pan_deg,
            zoom: c.zoom,
            sector: c.sector,
            screenshot: c.screenshot,
        }
    }
}

/// The wire form of a [`medsfu_core::CameraState`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraState {
    /// Pan in degrees.
    pub pan_deg: f32,
    /// Zoom factor.
    pub zoom: f32,
    /// Sector zoomed into (0: none).
    pub sector: u8,
}

impl From<medsfu_core::CameraState> for CameraState {
    fn from(s: medsfu_core::CameraState) -> Self {
        CameraState {
            pan_deg: s.pan_deg,
            zoom: s.zoom,
            sector: s.sector,
        }
    }
}

impl From<CameraState> for medsfu_core::CameraState {
    fn from(s: CameraState) -> Self {
        medsfu_core::CameraState {
            pan_deg: s.pan_deg,
            zoom: s.zoom,
            sector: s.sector,
        }
    }
}

/// Vehicle to server, on the control stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum VehicleMessage {
    /// First message: the room (call) to publish into and the media flows.
    Hello {
        /// Room name; none opens a new call (or returns the vehicle's open one), named in
        /// the welcome.
        #[serde(default)]
        room: Option<String>,
        /// Media flows this connection will send.
        flows: Vec<FlowInfo>,
    },
    /// The camera's state after a command (`id` of the command) or on its own.
    CameraState {
        /// The command acknowledged, if any.
        #[serde(default)]
        id: Option<u64>,
        /// The resulting state.
        state: CameraState,
    },
    /// The vehicle's uplink, every few seconds: for the operators' dashboards.
    Uplink {
        /// Telemetry frames in the vehicle's outbox not acknowledged yet.
        unacked_frames: u64,
        /// The roof camera's current bitrate target (0: no video).
        video_bps: u32,
    },
}

/// Server to vehicle, on the control stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum ServerMessage {
    /// The hello was accepted.
    Welcome {
        /// The vehicle's session in the room.
        participant: u64,
        /// The identity from the device certificate.
        identity: String,
        /// The room (call) the vehicle publishes into.
        #[serde(default)]
        room: String,
    },
    /// Move the camera.
    Camera {
        /// Command id, echoed in the acknowledgement.
        id: u64,
        /// What to change.
        command: CameraCommand,
    },
    /// Indicator lamps in the vehicle.
    Indicator {
        /// A teleconsultant is watching the roof camera.
        green: bool,
        /// The roof camera is being recorded.
        red: bool,
    },
    /// Something the vehicle sent was refused.
    Error {
        /// Stable code.
        code: String,
        /// Why.
        message: String,
    },
}

/// Server to vehicle, on the telemetry stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum TelemetryReply {
    /// Every frame of `source` up to `sequence` is durably stored.
    Ack {
        /// Frame source.
        source: u32,
        /// Highest sequence stored.
        sequence: u64,
    },
    /// A frame was refused; the stream is closed after this.
    Error {
        /// Stable code.
        code: String,
        /// Why.
        message: String,
    },
}

/// Serialises a message as one JSON line.
pub fn to_line<T: Serialize>(m: &T) -> Vec<u8> {
    // Serialising these plain structs cannot fail (no maps with non-string keys).
    let mut v = serde_json::to_vec(m).unwrap_or_default();
    v.push(b'\n');
    v
}

/// Takes the next complete line (without its newline) off the front of `buf`; `Ok(None)`
/// until one is complete; an error once `buf` holds more than [`MAX_LINE`] bytes without
/// a newline (the stream is then unusable).
pub fn take_line(buf: &mut bytes::BytesMut) -> Result<Option<bytes::Bytes>, String> {
    if let Some(i) = buf.iter().position(|b| *b == b'\n') {
        let line = buf.split_to(i + 1).freeze();
        return Ok(Some(line.slice(..i)));
    }
    if buf.len() > MAX_LINE {
        return Err(format!("line longer than {MAX_LINE} bytes"));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_have_stable_json() {
        let hello: VehicleMessage = serde_json::from_str(
            r#"{"type":"hello","room":"demo","flows":[{"flow":0,"source":"roof_camera","codec":"video/H265"}]}"#,
        )
        .expect("hello");
        assert!(
            matches!(hello, VehicleMessage::Hello { ref room, ref flows } if room.as_deref() == Some("demo") && flows.len() == 1)
        );
        let cam = ServerMessage::Camera {
            id: 7,
            command: CameraCommand {
                pan_deg: Some(30.0),
                ..Default::default()
            },
        };
        assert_eq!(
            String::from_utf8(to_line(&cam)).expect("utf8"),
            "{\"type\":\"camera\",\"id\":7,\"command\":{\"pan_deg\":30.0}}\n"
        );
        let ack = TelemetryReply::Ack {
            source: 1,
            sequence: 9,
        };
        assert_eq!(
            serde_json::to_string(&ack).expect("json"),
            r#"{"type":"ack","source":1,"sequence":9}"#
        );
    }

    #[test]
    fn unknown_fields_and_out_of_range_commands_are_refused() {
        assert!(serde_json::from_str::<VehicleMessage>(
            r#"{"type":"hello","room":"x","flows":[],"extra":1}"#
        )
        .is_err());
        assert!(serde_json::from_str::<VehicleMessage>(r#"{"type":"launch"}"#).is_err());
        let c: medsfu_core::CameraCommand = (&CameraCommand {
            pan_deg: Some(90.0),
            ..Default::default()
        })
            .into();
        assert!(c.validate().is_err());
    }
}
