//! The telemetry frame format, version 1 (documented in `docs/telemetry.md`).
//!
//! Every frame carries its source and a per-source sequence number, so `(source, sequence)`
//! names it uniquely: the journal stores each once, and a receiver can prove it has all.

/// First two bytes of every frame.
pub const MAGIC: [u8; 2] = *b"MT";
/// The format version this code writes and reads.
pub const VERSION: u8 = 1;
/// Bytes before the body.
pub const HEADER_LEN: usize = 28;
/// Largest body accepted (a 12-lead block of 1 s at 1 kHz is 24 kB).
pub const MAX_BODY: usize = 256 * 1024;
const MAX_LEADS: usize = 16;
const MAX_TEXT: usize = 4096;

/// Why bytes are not a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// Fewer bytes than the frame needs (more may follow on a stream).
    #[error("incomplete frame: need {0} more bytes")]
    Incomplete(usize),
    /// Not a telemetry frame.
    #[error("bad magic")]
    BadMagic,
    /// A version this code does not read.
    #[error("unsupported frame version {0}")]
    Version(u8),
    /// A body kind this code does not know.
    #[error("unknown frame kind {0}")]
    Kind(u8),
    /// The body is larger than [`MAX_BODY`].
    #[error("body of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// The body does not match its kind's layout.
    #[error("malformed {kind} body: {reason}")]
    Malformed {
        /// Body kind.
        kind: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
}

impl FrameError {
    /// Stable code for the wire.
    pub fn code(&self) -> &'static str {
        match self {
            FrameError::Incomplete(_) => "frame_incomplete",
            FrameError::BadMagic => "frame_bad_magic",
            FrameError::Version(_) => "frame_version",
            FrameError::Kind(_) => "frame_kind",
            FrameError::TooLarge(_) => "frame_too_large",
            FrameError::Malformed { .. } => "frame_malformed",
        }
    }
}

/// An ECG lead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Lead {
    /// Limb lead I.
    I,
    /// Limb lead II.
    II,
    /// Limb lead III.
    III,
    /// Augmented aVR.
    AVR,
    /// Augmented aVL.
    AVL,
    /// Augmented aVF.
    AVF,
    /// Precordial V1..V6 (1-6).
    V(u8),
    /// Modified lead II (ambulatory records).
    MLII,
    /// Frank lead (0 = X, 1 = Y, 2 = Z).
    Frank(u8),
}

impl Lead {
    /// The wire code.
    pub fn code(self) -> u8 {
        match self {
            Lead::I => 1,
            Lead::II => 2,
            Lead::III => 3,
            Lead::AVR => 4,
            Lead::AVL => 5,
            Lead::AVF => 6,
            Lead::V(n) => 6 + n.clamp(1, 6),
            Lead::MLII => 13,
            Lead::Frank(n) => 14 + n.min(2),
        }
    }

    /// The lead of a wire code.
    pub fn from_code(c: u8) -> Option<Lead> {
        Some(match c {
            1 => Lead::I,
            2 => Lead::II,
            3 => Lead::III,
            4 => Lead::AVR,
            5 => Lead::AVL,
            6 => Lead::AVF,
            7..=12 => Lead::V(c - 6),
            13 => Lead::MLII,
            14..=16 => Lead::Frank(c - 14),
            _ => return None,
        })
    }

    /// The lead named in a WFDB header (`i`, `avr`, `v1`, `MLII`, `vx`...).
    pub fn from_name(name: &str) -> Option<Lead> {
        Some(match name.to_ascii_lowercase().as_str() {
            "i" => Lead::I,
            "ii" => Lead::II,
            "iii" => Lead::III,
            "avr" => Lead::AVR,
            "avl" => Lead::AVL,
            "avf" => Lead::AVF,
            "mlii" => Lead::MLII,
            "vx" => Lead::Frank(0),
            "vy" => Lead::Frank(1),
            "vz" => Lead::Frank(2),
            v => {
                let n: u8 = v.strip_prefix('v')?.parse().ok()?;
                if !(1..=6).contains(&n) {
                    return None;
                }
                Lead::V(n)
            }
        })
    }
}

/// A block of ECG samples for several leads.
#[derive(Debug, Clone, PartialEq)]
pub struct Waveform {
    /// Samples per second per lead, in millihertz (360 Hz = 360 000).
    pub sample_rate_mhz: u32,
    /// Index of the block's first sample since the source started (gaps are visible).
    pub first_sample: u64,
    /// ADC units per millivolt.
    pub units_per_mv: f32,
    /// ADC value of 0 mV.
    pub baseline: i16,
    /// Leads, in the order of the interleaved samples.
    pub leads: Vec<Lead>,
    /// Samples, interleaved lead by lead: `samples[i * leads.len() + lead]`.
    pub samples: Vec<i16>,
}

/// What a vital-sign reading measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum VitalKind {
    /// Heart rate.
    HeartRate,
    /// Peripheral oxygen saturation.
    SpO2,
    /// End-tidal CO2.
    EtCO2,
    /// Non-invasive blood pressure, systolic.
    NibpSystolic,
    /// Non-invasive blood pressure, diastolic.
    NibpDiastolic,
    /// Non-invasive blood pressure, mean.
    NibpMean,
    /// Respiratory rate.
    RespiratoryRate,
    /// Body temperature.
    Temperature,
}

/// Units of a reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Unit {
    /// Per minute (heart and respiratory rate).
    PerMinute,
    /// Percent (SpO2).
    Percent,
    /// Millimetres of mercury (pressures, etCO2).
    MmHg,
    /// Kilopascal (etCO2 on some monitors).
    KPa,
    /// Degrees Celsius.
    Celsius,
}

/// One vital-sign reading.
#[derive(Debug, Clone, PartialEq)]
pub struct Vital {
    /// What it measures.
    pub kind: VitalKind,
    /// The value, in `unit`.
    pub value: f32,
    /// Its unit.
    pub unit: Unit,
    /// When the device measured it (µs since the Unix epoch).
    pub measured_at_us: i64,
}

/// A GPS fix.
#[derive(Debug, Clone, PartialEq)]
pub struct Gps {
    /// Latitude in degrees (WGS 84).
    pub lat: f64,
    /// Longitude in degrees (WGS 84).
    pub lon: f64,
    /// Horizontal accuracy in metres.
    pub accuracy_m: f32,
    /// Ground speed in m/s.
    pub speed_mps: f32,
    /// Heading in degrees from north.
    pub heading_deg: f32,
}

/// The vehicle's status of the intervention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum VehicleStatus {
    /// On the way.
    Departed,
    /// At the scene.
    Stopped,
    /// Handing the patient over.
    Handover,
    /// Intervention done.
    Done,
    /// Returning to base.
    Returning,
}

/// What a frame carries.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Body {
    /// ECG samples.
    Waveform(Waveform),
    /// A vital-sign reading.
    Vital(Vital),
    /// A position.
    Gps(Gps),
    /// A status change.
    Status(VehicleStatus),
    /// A chat message.
    Chat {
        /// Who wrote it (identity).
        author: String,
        /// The text.
        text: String,
    },
    /// A request for an ECG snapshot document.
    SnapshotRequest {
        /// Who asked (identity).
        requested_by: String,
        /// Seconds of ECG wanted.
        seconds: u16,
    },
}

/// Highest plausible ECG sample rate (20 kHz), in millihertz.
pub const MAX_SAMPLE_RATE_MHZ: u32 = 20_000_000;

/// One telemetry frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// The device or participant that generated it.
    pub source: u32,
    /// Per-source sequence number, from 0, without gaps.
    pub sequence: u64,
    /// When it was captured (µs since the Unix epoch, the source's clock).
    pub captured_at_us: i64,
    /// The content.
    pub body: Body,
}

fn malformed(kind: &'static str, reason: &'static str) -> FrameError {
    FrameError::Malformed { kind, reason }
}

/// A bounds-checked reader over a body.
struct Reader<'a> {
    b: &'a [u8],
    kind: &'static str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        if self.b.len() < n {
            return Err(malformed(self.kind, "truncated"));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn arr<const N: usize>(&mut self) -> Result<[u8; N], FrameError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.arr::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, FrameError> {
        Ok(u16::from_be_bytes(self.arr()?))
    }
    fn u32(&mut self) -> Result<u32, FrameError> {
        Ok(u32::from_be_bytes(self.arr()?))
    }
    fn u64(&mut self) -> Result<u64, FrameError> {
        Ok(u64::from_be_bytes(self.arr()?))
    }
    fn i64(&mut self) -> Result<i64, FrameError> {
        Ok(i64::from_be_bytes(self.arr()?))
    }
    fn f32(&mut self) -> Result<f32, FrameError> {
        let v = f32::from_be_bytes(self.arr()?);
        if !v.is_finite() {
            return Err(malformed(self.kind, "non-finite number"));
        }
        Ok(v)
    }
    fn f64(&mut self) -> Result<f64, FrameError> {
        let v = f64::from_be_bytes(self.arr()?);
        if !v.is_finite() {
            return Err(malformed(self.kind, "non-finite number"));
        }
        Ok(v)
    }
    fn text(&mut self, len: usize) -> Result<String, FrameError> {
        if len > MAX_TEXT {
            return Err(malformed(self.kind, "text too long"));
        }
        let kind = self.kind;
        std::str::from_utf8(self.take(len)?)
            .map(str::to_owned)
            .map_err(|_| malformed(kind, "text is not UTF-8"))
    }
    fn end(&self) -> Result<(), FrameError> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(malformed(self.kind, "trailing bytes"))
        }
    }
}

fn vital_kind(c: u8) -> Option<VitalKind> {
    use VitalKind::*;
    [
        HeartRate,
        SpO2,
        EtCO2,
        NibpSystolic,
        NibpDiastolic,
        NibpMean,
        RespiratoryRate,
        Temperature,
    ]
    .get(usize::from(c).checked_sub(1)?)
    .copied()
}

fn vital_code(k: VitalKind) -> u8 {
    use VitalKind::*;
    match k {
        HeartRate => 1,
        SpO2 => 2,
        EtCO2 => 3,
        NibpSystolic => 4,
        NibpDiastolic => 5,
        NibpMean => 6,
        RespiratoryRate => 7,
        Temperature => 8,
    }
}

fn unit_of(c: u8) -> Option<Unit> {
    use Unit::*;
    [PerMinute, Percent, MmHg, KPa, Celsius]
        .get(usize::from(c).checked_sub(1)?)
        .copied()
}

fn unit_code(u: Unit) -> u8 {
    match u {
        Unit::PerMinute => 1,
        Unit::Percent => 2,
        Unit::MmHg => 3,
        Unit::KPa => 4,
        Unit::Celsius => 5,
    }
}

fn status_of(c: u8) -> Option<VehicleStatus> {
    use VehicleStatus::*;
    [Departed, Stopped, Handover, Done, Returning]
        .get(usize::from(c).checked_sub(1)?)
        .copied()
}

fn status_code(s: VehicleStatus) -> u8 {
    match s {
        VehicleStatus::Departed => 1,
        VehicleStatus::Stopped => 2,
        VehicleStatus::Handover => 3,
        VehicleStatus::Done => 4,
        VehicleStatus::Returning => 5,
    }
}

impl Body {
    fn kind_code(&self) -> u8 {
        match self {
            Body::Waveform(_) => 1,
            Body::Vital(_) => 2,
            Body::Gps(_) => 3,
            Body::Status(_) => 4,
            Body::Chat { .. } => 5,
            Body::SnapshotRequest { .. } => 6,
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        let text = |out: &mut Vec<u8>, s: &str, wide: bool| {
            // Clip long text at a character boundary, so what is written stays UTF-8.
            let mut n = s.len().min(if wide { MAX_TEXT } else { 255 });
            while !s.is_char_boundary(n) {
                n -= 1;
            }
            let s = &s.as_bytes()[..n];
            if wide {
                out.extend((s.len() as u16).to_be_bytes());
            } else {
                out.push(s.len() as u8);
            }
            out.extend_from_slice(s);
        };
        match self {
            Body::Waveform(w) => {
                out.extend(w.sample_rate_mhz.to_be_bytes());
                out.extend(w.first_sample.to_be_bytes());
                out.extend(w.units_per_mv.to_be_bytes());
                out.extend(w.baseline.to_be_bytes());
                out.push(w.leads.len() as u8);
                out.extend(w.leads.iter().map(|l| l.code()));
                for s in &w.samples {
                    out.extend(s.to_be_bytes());
                }
            }
            Body::Vital(v) => {
                out.push(vital_code(v.kind));
                out.push(unit_code(v.unit));
                out.extend(v.value.to_be_bytes());
                out.extend(v.measured_at_us.to_be_bytes());
            }
            Body::Gps(g) => {
                out.extend(g.lat.to_be_bytes());
                out.extend(g.lon.to_be_bytes());
                out.extend(g.accuracy_m.to_be_bytes());
                out.extend(g.speed_mps.to_be_bytes());
                out.extend(g.heading_deg.to_be_bytes());
            }
            Body::Status(s) => out.push(status_code(*s)),
            Body::Chat { author, text: t } => {
                text(out, author, false);
                text(out, t, true);
            }
            Body::SnapshotRequest {
                requested_by,
                seconds,
            } => {
                text(out, requested_by, false);
                out.extend(seconds.to_be_bytes());
            }
        }
    }

    fn decode(kind: u8, body: &[u8]) -> Result<Body, FrameError> {
        match kind {
            1 => {
                let mut r = Reader {
                    b: body,
                    kind: "waveform",
                };
                let sample_rate_mhz = r.u32()?;
                let first_sample = r.u64()?;
                let units_per_mv = r.f32()?;
                let baseline = i16::from_be_bytes(r.arr()?);
                let n = usize::from(r.u8()?);
                if n == 0 || n > MAX_LEADS {
                    return Err(malformed("waveform", "lead count must be 1-16"));
                }
                let leads = r
                    .take(n)?
                    .iter()
                    .map(|c| Lead::from_code(*c).ok_or(malformed("waveform", "unknown lead")))
                    .collect::<Result<Vec<_>, _>>()?;
                if sample_rate_mhz == 0 || sample_rate_mhz > MAX_SAMPLE_RATE_MHZ {
                    return Err(malformed("waveform", "sample rate must be 1 mHz to 20 kHz"));
                }
                if units_per_mv == 0.0 || !units_per_mv.is_finite() {
                    return Err(malformed("waveform", "gain must be finite and non-zero"));
                }
                if !r.b.len().is_multiple_of(2 * n) {
                    return Err(malformed(
                        "waveform",
                        "samples are not whole frames of every lead",
                    ));
                }
                let samples =
                    r.b.chunks_exact(2)
                        .map(|c| i16::from_be_bytes([c[0], c[1]]))
                        .collect();
                Ok(Body::Waveform(Waveform {
                    sample_rate_mhz,
                    first_sample,
                    units_per_mv,
                    baseline,
                    leads,
                    samples,
                }))
            }
            2 => {
                let mut r = Reader {
                    b: body,
                    kind: "vital",
                };
                let kind = vital_kind(r.u8()?).ok_or(malformed("vital", "unknown kind"))?;
                let unit = unit_of(r.u8()?).ok_or(malformed("vital", "unknown unit"))?;
                let value = r.f32()?;
                let measured_at_us = r.i64()?;
                r.end()?;
                Ok(Body::Vital(Vital {
                    kind,
                    value,
                    unit,
                    measured_at_us,
                }))
            }
            3 => {
                let mut r = Reader {
                    b: body,
                    kind: "gps",
                };
                let g = Gps {
                    lat: r.f64()?,
                    lon: r.f64()?,
                    accuracy_m: r.f32()?,
                    speed_mps: r.f32()?,
                    heading_deg: r.f32()?,
                };
                r.end()?;
                if !(-90.0..=90.0).contains(&g.lat) || !(-180.0..=180.0).contains(&g.lon) {
                    return Err(malformed("gps", "position out of range"));
                }
                Ok(Body::Gps(g))
            }
            4 => {
                let mut r = Reader {
                    b: body,
                    kind: "status",
                };
                let s = status_of(r.u8()?).ok_or(malformed("status", "unknown status"))?;
                r.end()?;
                Ok(Body::Status(s))
            }
            5 => {
                let mut r = Reader {
                    b: body,
                    kind: "chat",
                };
                let n = usize::from(r.u8()?);
                let author = r.text(n)?;
                let n = usize::from(r.u16()?);
                let text = r.text(n)?;
                r.end()?;
                Ok(Body::Chat { author, text })
            }
            6 => {
                let mut r = Reader {
                    b: body,
                    kind: "snapshot request",
                };
                let n = usize::from(r.u8()?);
                let requested_by = r.text(n)?;
                let seconds = r.u16()?;
                r.end()?;
                Ok(Body::SnapshotRequest {
                    requested_by,
                    seconds,
                })
            }
            k => Err(FrameError::Kind(k)),
        }
    }
}

impl Frame {
    /// Appends the frame's bytes to `out`; a frame the decoder would refuse (a waveform
    /// without leads, a NaN reading...) is refused here and nothing is appended.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), FrameError> {
        let start = out.len();
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.push(self.body.kind_code());
        out.extend(self.source.to_be_bytes());
        out.extend(self.sequence.to_be_bytes());
        out.extend(self.captured_at_us.to_be_bytes());
        out.extend([0u8; 4]);
        let body_start = out.len();
        self.body.encode(out);
        let len = (out.len() - body_start) as u32;
        out[start + 24..start + 28].copy_from_slice(&len.to_be_bytes());
        // One set of rules: the decoder's. What it refuses is never sent.
        if let Err(e) = Frame::decode(&out[start..]) {
            out.truncate(start);
            return Err(e);
        }
        Ok(())
    }

    /// The frame's bytes, or why the frame cannot be sent.
    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        let mut v = Vec::new();
        self.encode_into(&mut v)?;
        Ok(v)
    }

    /// Decodes one frame from the front of `bytes`; returns it and the bytes it used.
    pub fn decode(bytes: &[u8]) -> Result<(Frame, usize), FrameError> {
        if bytes.len() < HEADER_LEN {
            // Check what is there already, so garbage is refused without waiting.
            if bytes.len() >= 2 && bytes[..2] != MAGIC {
                return Err(FrameError::BadMagic);
            }
            return Err(FrameError::Incomplete(HEADER_LEN - bytes.len()));
        }
        if bytes[..2] != MAGIC {
            return Err(FrameError::BadMagic);
        }
        if bytes[2] != VERSION {
            return Err(FrameError::Version(bytes[2]));
        }
        let kind = bytes[3];
        if !(1..=6).contains(&kind) {
            return Err(FrameError::Kind(kind));
        }
        let u32_at =
            |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        let u64_at = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&bytes[i..i + 8]);
            a
        };
        let len = u32_at(24) as usize;
        if len > MAX_BODY {
            return Err(FrameError::TooLarge(len));
        }
        let total = HEADER_LEN + len;
        if bytes.len() < total {
            return Err(FrameError::Incomplete(total - bytes.len()));
        }
        let body = Body::decode(kind, &bytes[HEADER_LEN..total])?;
        Ok((
            Frame {
                source: u32_at(4),
                sequence: u64::from_be_bytes(u64_at(8)),
                captured_at_us: i64::from_be_bytes(u64_at(16)),
                body,
            },
            total,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Frame> {
        let f = |sequence, body| Frame {
            source: 7,
            sequence,
            captured_at_us: 1_795_000_000_000_000 + sequence as i64,
            body,
        };
        vec![
            f(
                0,
                Body::Waveform(Waveform {
                    sample_rate_mhz: 360_000,
                    first_sample: 0,
                    units_per_mv: 200.0,
                    baseline: 1024,
                    leads: vec![Lead::MLII, Lead::V(5)],
                    samples: vec![995, 1011, 995, 1011, 1000, 1008],
                }),
            ),
            f(
                1,
                Body::Vital(Vital {
                    kind: VitalKind::SpO2,
                    value: 97.0,
                    unit: Unit::Percent,
                    measured_at_us: 42,
                }),
            ),
            f(
                2,
                Body::Gps(Gps {
                    lat: 50.087,
                    lon: 14.421,
                    accuracy_m: 4.5,
                    speed_mps: 13.9,
                    heading_deg: 270.0,
                }),
            ),
            f(3, Body::Status(VehicleStatus::Handover)),
            f(
                4,
                Body::Chat {
                    author: "dr-lead".into(),
                    text: "Příprava na PCI ✓".into(),
                },
            ),
            f(
                5,
                Body::SnapshotRequest {
                    requested_by: "dr-lead".into(),
                    seconds: 10,
                },
            ),
        ]
    }

    #[test]
    fn every_kind_round_trips_and_frames_concatenate() {
        let mut stream = Vec::new();
        for f in samples() {
            f.encode_into(&mut stream).unwrap();
        }
        let mut rest = &stream[..];
        for want in samples() {
            let (got, n) = Frame::decode(rest).unwrap();
            assert_eq!(got, want);
            rest = &rest[n..];
        }
        assert!(rest.is_empty());
    }

    #[test]
    fn every_truncation_is_incomplete_or_malformed_never_a_panic() {
        for f in samples() {
            let b = f.encode().unwrap();
            for cut in 0..b.len() {
                let e = Frame::decode(&b[..cut]).unwrap_err();
                assert!(matches!(e, FrameError::Incomplete(_)), "{cut}: {e}");
            }
        }
    }

    #[test]
    fn bad_frames_are_refused_with_reasons() {
        let good = samples()[1].encode().unwrap();
        let mut b = good.clone();
        b[0] = b'X';
        assert_eq!(Frame::decode(&b).unwrap_err(), FrameError::BadMagic);
        let mut b = good.clone();
        b[2] = 9;
        assert_eq!(Frame::decode(&b).unwrap_err(), FrameError::Version(9));
        let mut b = good.clone();
        b[3] = 77;
        assert_eq!(Frame::decode(&b).unwrap_err(), FrameError::Kind(77));
        let mut b = good.clone();
        b[24..28].copy_from_slice(&(10_000_000u32).to_be_bytes());
        assert_eq!(
            Frame::decode(&b).unwrap_err(),
            FrameError::TooLarge(10_000_000)
        );
        // A vital with a NaN value.
        let mut b = good.clone();
        b[HEADER_LEN + 2..HEADER_LEN + 6].copy_from_slice(&f32::NAN.to_be_bytes());
        assert_eq!(Frame::decode(&b).unwrap_err().code(), "frame_malformed");
        // A waveform whose samples are not whole frames.
        let mut w = samples()[0].encode().unwrap();
        w.push(0);
        let len = (w.len() - HEADER_LEN) as u32;
        w[24..28].copy_from_slice(&len.to_be_bytes());
        assert_eq!(Frame::decode(&w).unwrap_err().code(), "frame_malformed");
        // A waveform at an impossible sample rate (50 kHz).
        let mut w = samples()[0].encode().unwrap();
        w[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&50_000_000u32.to_be_bytes());
        assert_eq!(
            Frame::decode(&w).unwrap_err(),
            FrameError::Malformed {
                kind: "waveform",
                reason: "sample rate must be 1 mHz to 20 kHz"
            }
        );
        // Chat that is not UTF-8.
        let mut c = samples()[4].encode().unwrap();
        c[HEADER_LEN + 1] = 0xff;
        assert_eq!(Frame::decode(&c).unwrap_err().code(), "frame_malformed");
    }

    #[test]
    fn the_encoder_refuses_what_the_decoder_would_and_clips_text_whole() {
        let mut f = samples()[0].clone();
        if let Body::Waveform(w) = &mut f.body {
            w.samples.push(1); // not a whole frame of both leads
        }
        let mut out = vec![1, 2, 3];
        assert_eq!(
            f.encode_into(&mut out).unwrap_err().code(),
            "frame_malformed"
        );
        assert_eq!(out, vec![1, 2, 3], "nothing appended");
        let mut v = samples()[1].clone();
        if let Body::Vital(x) = &mut v.body {
            x.value = f32::NAN;
        }
        assert!(v.encode().is_err());
        // 300 two-byte characters: clipped to 127 of them (254 bytes), still UTF-8.
        let chat = Frame {
            body: Body::Chat {
                author: "é".repeat(300),
                text: "ok".into(),
            },
            ..samples()[4].clone()
        };
        let (back, _) = Frame::decode(&chat.encode().unwrap()).unwrap();
        let Body::Chat { author, .. } = back.body else {
            panic!("chat")
        };
        assert_eq!(author, "é".repeat(127));
    }

    #[test]
    fn lead_names_from_wfdb_headers() {
        for (n, l) in [
            ("i", Lead::I),
            ("avR", Lead::AVR),
            ("v6", Lead::V(6)),
            ("MLII", Lead::MLII),
            ("vz", Lead::Frank(2)),
        ] {
            assert_eq!(Lead::from_name(n), Some(l));
            assert_eq!(Lead::from_code(l.code()), Some(l));
        }
        assert_eq!(Lead::from_name("v7"), None);
        assert_eq!(Lead::from_code(0), None);
    }
}
