//! The roof camera's remote control: what a command may change and the state it leaves.

/// A camera command (every field optional: only what is given changes).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CameraCommand {
    /// Pan in degrees, -60 (left) to 60 (right): the camera's field is at most 120 degrees.
    pub pan_deg: Option<f32>,
    /// Digital zoom factor, 1 to 4.
    pub zoom: Option<f32>,
    /// Sector of a 3x3 grid to zoom into, 1 (top left) to 9; 0 for the whole picture.
    pub sector: Option<u8>,
    /// Take a screenshot of the live picture.
    pub screenshot: bool,
}

impl CameraCommand {
    /// Checks every given value is within range; the error says which is not.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(p) = self.pan_deg {
            if !(-60.0..=60.0).contains(&p) {
                return Err(format!("pan_deg {p} is outside -60..60"));
            }
        }
        if let Some(z) = self.zoom {
            if !(1.0..=4.0).contains(&z) {
                return Err(format!("zoom {z} is outside 1..4"));
            }
        }
        if let Some(s) = self.sector {
            if s > 9 {
                return Err(format!("sector {s} is outside 0..9"));
            }
        }
        Ok(())
    }
}

/// Where the camera points now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CameraState {
    /// Pan in degrees.
    pub pan_deg: f32,
    /// Zoom factor.
    pub zoom: f32,
    /// Sector zoomed into (0: none).
    pub sector: u8,
}

impl Default for CameraState {
    fn default() -> Self {
        CameraState {
            pan_deg: 0.0,
            zoom: 1.0,
            sector: 0,
        }
    }
}

impl CameraState {
    /// The state after applying `cmd` (assumed valid).
    pub fn apply(mut self, cmd: &CameraCommand) -> CameraState {
        if let Some(p) = cmd.pan_deg {
            self.pan_deg = p;
        }
        if let Some(z) = cmd.zoom {
            self.zoom = z;
        }
        if let Some(s) = cmd.sector {
            self.sector = s;
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_range_checked_and_change_only_what_they_name() {
        let bad = CameraCommand {
            pan_deg: Some(90.0),
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().contains("pan_deg"));
        let c = CameraCommand {
            zoom: Some(2.0),
            sector: Some(5),
            ..Default::default()
        };
        assert!(c.validate().is_ok());
        let s = CameraState {
            pan_deg: 30.0,
            ..Default::default()
        }
        .apply(&c);
        assert_eq!((s.pan_deg, s.zoom, s.sector), (30.0, 2.0, 5));
    }
}
