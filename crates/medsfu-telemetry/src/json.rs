//! The JSON view of a frame, as the page, the signalling WebSocket and the NDJSON endpoint
//! show it (documented in docs/telemetry.md).

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::frame::{Body, Frame, Lead, Unit, VehicleStatus, VitalKind};

/// The name of a lead as clinicians write it.
pub fn lead_name(l: Lead) -> String {
    match l {
        Lead::I => "I".into(),
        Lead::II => "II".into(),
        Lead::III => "III".into(),
        Lead::AVR => "aVR".into(),
        Lead::AVL => "aVL".into(),
        Lead::AVF => "aVF".into(),
        Lead::V(n) => format!("V{n}"),
        Lead::MLII => "MLII".into(),
        Lead::Frank(n) => ["X", "Y", "Z"][usize::from(n.min(2))].into(),
    }
}

/// The wire name of a vital sign.
pub fn vital_name(k: VitalKind) -> &'static str {
    match k {
        VitalKind::HeartRate => "heart_rate",
        VitalKind::SpO2 => "spo2",
        VitalKind::EtCO2 => "etco2",
        VitalKind::NibpSystolic => "nibp_systolic",
        VitalKind::NibpDiastolic => "nibp_diastolic",
        VitalKind::NibpMean => "nibp_mean",
        VitalKind::RespiratoryRate => "respiratory_rate",
        VitalKind::Temperature => "temperature",
    }
}

/// The symbol of a unit.
pub fn unit_symbol(u: Unit) -> &'static str {
    match u {
        Unit::PerMinute => "/min",
        Unit::Percent => "%",
        Unit::MmHg => "mmHg",
        Unit::KPa => "kPa",
        Unit::Celsius => "°C",
    }
}

/// The wire name of a vehicle status.
pub fn status_name(s: VehicleStatus) -> &'static str {
    match s {
        VehicleStatus::Departed => "departed",
        VehicleStatus::Stopped => "stopped",
        VehicleStatus::Handover => "handover",
        VehicleStatus::Done => "done",
        VehicleStatus::Returning => "returning",
    }
}

/// The parsed status of a wire name.
pub fn status_of_name(s: &str) -> Option<VehicleStatus> {
    Some(match s {
        "departed" => VehicleStatus::Departed,
        "stopped" => VehicleStatus::Stopped,
        "handover" => VehicleStatus::Handover,
        "done" => VehicleStatus::Done,
        "returning" => VehicleStatus::Returning,
        _ => return None,
    })
}

/// Hex SHA-256 of a frame's encoded bytes: what `medsfu vehicle --frames-log` writes, so
/// generated and delivered frames can be compared.
pub fn digest(encoded: &[u8]) -> String {
    let d = Sha256::digest(encoded);
    let mut s = String::with_capacity(64);
    for b in d {
        use std::fmt::Write;
        // Writing to a String cannot fail.
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The JSON object of a frame; `encoded` are its bytes (for the digest).
pub fn to_json(f: &Frame, encoded: &[u8]) -> Value {
    let mut v = json!({
        "source": f.source,
        "seq": f.sequence,
        "captured_at_us": f.captured_at_us,
        "sha256": digest(encoded),
    });
    let extra = match &f.body {
        Body::Waveform(w) => {
            let n = w.leads.len().max(1);
            let gain = f64::from(w.units_per_mv);
            let mv: Vec<Vec<f64>> = (0..w.leads.len())
                .map(|l| {
                    w.samples
                        .iter()
                        .skip(l)
                        .step_by(n)
                        .map(|s| round3(f64::from(*s - w.baseline) / gain))
                        .collect()
                })
                .collect();
            json!({
                "kind": "waveform",
                "sample_rate_hz": f64::from(w.sample_rate_mhz) / 1000.0,
                "first_sample": w.first_sample,
                "leads": w.leads.iter().map(|l| lead_name(*l)).collect::<Vec<_>>(),
                "mv": mv,
            })
        }
        Body::Vital(x) => json!({
            "kind": "vital",
            "vital": vital_name(x.kind),
            "value": (f64::from(x.value) * 100.0).round() / 100.0,
            "unit": unit_symbol(x.unit),
            "measured_at_us": x.measured_at_us,
        }),
        Body::Gps(g) => json!({
            "kind": "gps",
            "lat": g.lat,
            "lon": g.lon,
            "accuracy_m": g.accuracy_m,
            "speed_mps": g.speed_mps,
            "heading_deg": g.heading_deg,
        }),
        Body::Status(s) => json!({"kind": "status", "status": status_name(*s)}),
        Body::Chat { author, text } => json!({"kind": "chat", "author": author, "text": text}),
        Body::SnapshotRequest {
            requested_by,
            seconds,
        } => json!({"kind": "snapshot_request", "requested_by": requested_by, "seconds": seconds}),
    };
    if let (Value::Object(a), Value::Object(b)) = (&mut v, extra) {
        a.extend(b);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{Vital, Waveform};

    #[test]
    fn waveform_json_is_millivolts_per_lead() {
        let f = Frame {
            source: 1,
            sequence: 2,
            captured_at_us: 3,
            body: Body::Waveform(Waveform {
                sample_rate_mhz: 360_000,
                first_sample: 720,
                units_per_mv: 200.0,
                baseline: 1024,
                leads: vec![Lead::MLII, Lead::V(5)],
                samples: vec![1024, 1124, 1224, 824],
            }),
        };
        let bytes = f.encode().expect("encode");
        let v = to_json(&f, &bytes);
        assert_eq!(v["kind"], "waveform");
        assert_eq!(v["sample_rate_hz"], 360.0);
        assert_eq!(v["leads"], json!(["MLII", "V5"]));
        assert_eq!(v["mv"], json!([[0.0, 1.0], [0.5, -1.0]]));
        assert_eq!(v["sha256"].as_str().map(str::len), Some(64));
    }

    #[test]
    fn vital_json_names_kind_and_unit() {
        let f = Frame {
            source: 1,
            sequence: 0,
            captured_at_us: 0,
            body: Body::Vital(Vital {
                kind: VitalKind::EtCO2,
                value: 35.5,
                unit: Unit::MmHg,
                measured_at_us: 9,
            }),
        };
        let v = to_json(&f, &f.encode().expect("encode"));
        assert_eq!(
            (v["vital"].as_str(), v["unit"].as_str(), v["value"].as_f64()),
            (Some("etco2"), Some("mmHg"), Some(35.5))
        );
        assert_eq!(
            digest(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
