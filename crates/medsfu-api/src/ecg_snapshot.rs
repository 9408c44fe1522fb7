//! ECG snapshot documents: the last seconds of a room's ECG, from its telemetry journal,
//! as a PDF on the standard grid (25 mm/s, 10 mm/mV), stored with the room's recordings.

use std::sync::Arc;

use medsfu_record::ecg_pdf::{ecg_pdf, Header, LeadTrace};
use medsfu_telemetry::frame::{Body, Frame, Lead};
use medsfu_telemetry::hub::Item;
use medsfu_telemetry::json::lead_name;

/// The last seconds of one waveform source.
#[derive(Debug)]
pub struct Traces {
    /// The telemetry source.
    pub source: u32,
    /// Capture time of the first and last block used, microseconds since 1970.
    pub span_us: (i64, i64),
    /// One trace per lead.
    pub leads: Vec<LeadTrace>,
}

/// The waveform frames of the last moments of a history read in pieces: what a snapshot of
/// `seconds` needs, and not the whole call.
#[derive(Debug)]
pub struct Recent {
    keep_us: i64,
    newest_us: i64,
    items: Vec<Arc<Item>>,
}

impl Recent {
    /// Keeps twice `seconds` and ten more (blocks arrive late and out of order).
    pub fn new(seconds: f64) -> Recent {
        Recent {
            keep_us: ((2.0 * seconds + 10.0) * 1e6) as i64,
            newest_us: i64::MIN,
            items: Vec::new(),
        }
    }

    /// Takes the next piece of history (oldest first).
    pub fn add(&mut self, items: &[Arc<Item>]) {
        let at = |i: &Item| i.json["captured_at_us"].as_i64().unwrap_or(i64::MIN);
        for i in items.iter().filter(|i| i.json["kind"] == "waveform") {
            self.newest_us = self.newest_us.max(at(i));
            self.items.push(i.clone());
        }
        let from = self.newest_us.saturating_sub(self.keep_us);
        self.items.retain(|i| at(i) >= from);
    }

    /// The waveform frames kept, oldest first.
    pub fn items(&self) -> &[Arc<Item>] {
        &self.items
    }
}

/// The last `seconds` of the most recent waveform source among `items` (oldest first):
/// the blocks of that source with the same leads and rate as its newest block.
pub fn last_seconds(items: &[Arc<Item>], seconds: f64) -> Option<Traces> {
    let decoded: Vec<(u32, i64, medsfu_telemetry::frame::Waveform)> = items
        .iter()
        .filter_map(|i| match Frame::decode(&i.bytes) {
            Ok((
                Frame {
                    source,
                    captured_at_us,
                    body: Body::Waveform(w),
                    ..
                },
                _,
            )) => Some((source, captured_at_us, w)),
            _ => None,
        })
        .collect();
    let (source, _, newest) = decoded.last()?;
    let (leads, rate_mhz) = (newest.leads.clone(), newest.sample_rate_mhz);
    if leads.is_empty() || rate_mhz == 0 {
        return None;
    }
    let rate = f64::from(rate_mhz) / 1000.0;
    let want = (seconds * rate).ceil() as usize;
    let blocks: Vec<&(u32, i64, medsfu_telemetry::frame::Waveform)> = decoded
        .iter()
        .filter(|(s, _, w)| s == source && w.leads == leads && w.sample_rate_mhz == rate_mhz)
        .collect();
    // Newest blocks first until enough samples are gathered, then back in time order.
    let mut used = Vec::new();
    let mut count = 0;
    for b in blocks.iter().rev() {
        used.push(*b);
        count += b.2.samples.len() / leads.len();
        if count >= want {
            break;
        }
    }
    used.reverse();
    let n = leads.len();
    let mut mv: Vec<Vec<f32>> = vec![Vec::new(); n];
    for (_, _, w) in &used {
        let gain = if w.units_per_mv == 0.0 {
            1.0
        } else {
            w.units_per_mv
        };
        for frame in w.samples.chunks_exact(n) {
            for (l, s) in frame.iter().enumerate() {
                mv[l].push(f32::from(s.saturating_sub(w.baseline)) / gain);
            }
        }
    }
    for m in &mut mv {
        let cut = m.len().saturating_sub(want);
        m.drain(..cut);
    }
    let span_us = (used.first()?.1, used.last()?.1);
    Some(Traces {
        source: *source,
        span_us,
        leads: leads
            .iter()
            .zip(mv)
            .map(|(l, mv): (&Lead, Vec<f32>)| LeadTrace {
                name: lead_name(*l),
                sample_rate_hz: rate,
                mv,
            })
            .collect(),
    })
}

/// `YYYY-MM-DD HH:MM:SS UTC` of microseconds since 1970.
fn utc(us: i64) -> String {
    medsfu_record::utc::readable(us.div_euclid(1_000_000))
}

/// The PDF of `traces` for `room`, asked for by `requested_by` at `now_us`.
pub fn document(
    room: &str,
    requested_by: &str,
    now_us: i64,
    seconds: f64,
    traces: &Traces,
) -> Result<Vec<u8>, String> {
    let header = Header {
        title: format!("ECG snapshot - intervention {room}"),
        lines: vec![
            format!(
                "Source {} - {} leads - {} to {}",
                traces.source,
                traces.leads.len(),
                utc(traces.span_us.0),
                utc(traces.span_us.1)
            ),
            format!("Requested by {requested_by} at {}", utc(now_us)),
        ],
    };
    ecg_pdf(&header, &traces.leads, seconds).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use medsfu_telemetry::frame::Waveform;

    fn block(source: u32, first: u64, n: usize, at_us: i64) -> Arc<Item> {
        let w = Waveform {
            sample_rate_mhz: 100_000,
            first_sample: first,
            units_per_mv: 200.0,
            baseline: 1024,
            leads: vec![Lead::II, Lead::V(5)],
            samples: (0..n)
                .flat_map(|i| [1024 + (first as i16 + i as i16), 1024 - 200])
                .collect(),
        };
        let bytes = Frame {
            source,
            sequence: first / 10,
            captured_at_us: at_us,
            body: Body::Waveform(w),
        }
        .encode()
        .expect("encode");
        Arc::new(Item::from_bytes(bytes).expect("item"))
    }

    #[test]
    fn a_history_read_in_pieces_keeps_only_the_last_moments_and_gives_the_same_snapshot() {
        // An hour at 100 Hz in blocks of 10 samples (0.1 s), read in pieces of 500 blocks.
        let all: Vec<Arc<Item>> = (0..36_000u64)
            .map(|b| block(1, (b % 1000) * 10, 10, (b * 100_000) as i64))
            .collect();
        let mut recent = Recent::new(10.0);
        let mut most = 0;
        for piece in all.chunks(500) {
            recent.add(piece);
            most = most.max(recent.items().len());
        }
        // 30 s kept (twice 10, and 10 more) plus the piece just read.
        assert!(most <= 300 + 500 + 1, "{most} blocks held");
        let whole = last_seconds(&all[all.len() - 400..], 10.0).expect("traces");
        let pieces = last_seconds(recent.items(), 10.0).expect("traces");
        assert_eq!(pieces.span_us, whole.span_us);
        assert_eq!(pieces.leads[0].mv, whole.leads[0].mv);
        assert_eq!(pieces.leads[0].mv.len(), 1000);
    }

    #[test]
    fn the_last_seconds_of_the_newest_source_in_millivolts() {
        // 100 Hz, blocks of 10 samples: 3 s wanted of 5 s journaled.
        let mut items: Vec<Arc<Item>> = (0..50).map(|b| block(1, b * 10, 10, b as i64)).collect();
        items.insert(3, block(9, 0, 10, 0));
        let t = last_seconds(&items, 3.0).expect("traces");
        assert_eq!(t.source, 1);
        assert_eq!(t.leads.len(), 2);
        assert_eq!(t.leads[0].name, "II");
        assert_eq!(t.leads[0].mv.len(), 300);
        // The first kept sample is number 200: (1224 - 1024) / 200 = 1.0 mV.
        assert!(
            (t.leads[0].mv[0] - 1.0).abs() < 1e-6,
            "{}",
            t.leads[0].mv[0]
        );
        assert!((t.leads[1].mv[5] + 1.0).abs() < 1e-6);
        assert_eq!(t.span_us, (20, 49));
        assert!(last_seconds(&items[..0], 3.0).is_none());
    }
}
