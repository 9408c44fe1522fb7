//! Plays a WFDB ECG recording as waveform blocks at its true sample rate, looping, the way
//! the ambulance's monitor streams it.

use std::time::Duration;

use crate::frame::{Lead, Waveform};
use crate::wfdb::Record;

/// Why a recording cannot be played.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlayerError {
    /// A signal's name is not an ECG lead medsfu knows.
    #[error("signal {0:?} is not a known ECG lead")]
    UnknownLead(String),
    /// The recording has no samples, or more leads than a frame carries.
    #[error("recording unusable: {0}")]
    Unusable(&'static str),
    /// Leads with different gains or baselines cannot share one block.
    #[error("leads differ in gain or baseline")]
    MixedScales,
}

/// Yields consecutive blocks of a recording, forever.
#[derive(Debug, Clone)]
pub struct EcgPlayer {
    record: Record,
    leads: Vec<Lead>,
    /// Signals played, in `leads` order.
    signals: Vec<usize>,
    block: usize,
    next: u64,
}

impl EcgPlayer {
    /// A player of every lead of `record` (at most 12: the standard leads first) in
    /// blocks of `block` duration.
    pub fn new(record: Record, block: Duration) -> Result<EcgPlayer, PlayerError> {
        if record.samples_per_signal == 0 || record.sample_rate <= 0.0 {
            return Err(PlayerError::Unusable("no samples"));
        }
        let mut leads = Vec::new();
        let mut signals = Vec::new();
        for (i, s) in record.signals.iter().enumerate() {
            let lead =
                Lead::from_name(&s.name).ok_or_else(|| PlayerError::UnknownLead(s.name.clone()))?;
            // Frank leads travel only when there is room next to the standard twelve.
            if matches!(lead, Lead::Frank(_)) && record.signals.len() > 12 {
                continue;
            }
            leads.push(lead);
            signals.push(i);
        }
        if leads.is_empty() || leads.len() > 16 {
            return Err(PlayerError::Unusable("1-16 ECG leads are needed"));
        }
        let first = &record.signals[signals[0]];
        if signals.iter().any(|&i| {
            record.signals[i].gain != first.gain || record.signals[i].baseline != first.baseline
        }) {
            return Err(PlayerError::MixedScales);
        }
        let block = ((record.sample_rate * block.as_secs_f64()).round() as usize).max(1);
        Ok(EcgPlayer {
            record,
            leads,
            signals,
            block,
            next: 0,
        })
    }

    /// Samples per lead in each block.
    pub fn block_samples(&self) -> usize {
        self.block
    }

    /// The wall time one block covers.
    pub fn block_duration(&self) -> Duration {
        Duration::from_secs_f64(self.block as f64 / self.record.sample_rate)
    }

    /// The leads of every block.
    pub fn leads(&self) -> &[Lead] {
        &self.leads
    }

    /// The next block; the recording loops, sample indices keep counting up.
    pub fn next_block(&mut self) -> Waveform {
        let n = self.record.samples_per_signal as u64;
        let mut samples = Vec::with_capacity(self.block * self.leads.len());
        for k in 0..self.block as u64 {
            let at = ((self.next + k) % n) as usize;
            for &s in &self.signals {
                samples.push(self.record.samples[s][at]);
            }
        }
        let first = &self.record.signals[self.signals[0]];
        let w = Waveform {
            sample_rate_mhz: (self.record.sample_rate * 1000.0).round() as u32,
            first_sample: self.next,
            units_per_mv: first.gain as f32,
            baseline: first
                .baseline
                .clamp(i32::from(i16::MIN), i32::from(i16::MAX)) as i16,
            leads: self.leads.clone(),
            samples,
        };
        self.next += self.block as u64;
        w
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wfdb::read_record;
    use std::path::Path;

    fn record(name: &str) -> Record {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/ecg");
        read_record(&dir, name).expect("recording")
    }

    #[test]
    fn blocks_follow_the_recording_at_its_true_rate() {
        let r = record("100");
        let mut p = EcgPlayer::new(r.clone(), Duration::from_millis(100)).unwrap();
        assert_eq!(p.block_samples(), 36);
        assert_eq!(p.block_duration(), Duration::from_millis(100));
        assert_eq!(p.leads(), &[Lead::MLII, Lead::V(5)]);
        let blocks: Vec<Waveform> = (0..20).map(|_| p.next_block()).collect();
        for (i, b) in blocks.iter().enumerate() {
            assert_eq!(b.first_sample, i as u64 * 36, "contiguous");
            assert_eq!(b.sample_rate_mhz, 360_000);
            assert_eq!((b.units_per_mv, b.baseline), (200.0, 1024));
        }
        // Two seconds of both leads, sample for sample.
        let played: Vec<i16> = blocks.iter().flat_map(|b| b.samples.clone()).collect();
        let want: Vec<i16> = (0..720)
            .flat_map(|i| [r.samples[0][i], r.samples[1][i]])
            .collect();
        assert_eq!(played, want);
    }

    #[test]
    fn the_twelve_lead_recording_loops() {
        let r = record("s0010_re");
        let mut p = EcgPlayer::new(r.clone(), Duration::from_secs(1)).unwrap();
        assert_eq!(
            p.leads().len(),
            12,
            "the standard leads; Frank leads left out"
        );
        assert_eq!(p.leads()[0], Lead::I);
        assert_eq!(p.leads()[11], Lead::V(6));
        let mut last = None;
        for _ in 0..39 {
            last = Some(p.next_block());
        }
        // Block 39 starts at sample 38 000 and wraps after 400 samples.
        let b = last.unwrap();
        assert_eq!(b.first_sample, 38_000);
        assert_eq!(b.samples[400 * 12], r.samples[0][0], "looped to the start");
    }
}
