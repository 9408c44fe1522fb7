//! Per-subscriber rewriting of SSRC, sequence numbers and timestamps.
//!
//! A subscriber must see one continuous stream: sequence numbers without jumps it did not
//! lose, timestamps that keep advancing, one SSRC. The publisher's numbering restarts when
//! its encoder or connection restarts (a new *epoch*); the munger re-anchors there.

use std::time::Instant;

use crate::rtp::{seq_is_newer, RtpHeader};

/// Rewrites one publisher stream into one subscriber stream.
#[derive(Debug, Clone)]
pub(crate) struct Munger {
    /// Output SSRC and payload type negotiated with the subscriber.
    pub ssrc_out: u32,
    pub pt_out: u8,
    /// `None` until the first packet of the current epoch was forwarded.
    anchor: Option<Anchor>,
    /// Last sequence number and timestamp sent, kept across epochs.
    last_out: Option<LastOut>,
}

#[derive(Debug, Clone, Copy)]
struct Anchor {
    epoch: u32,
    ssrc_in: u32,
    /// Highest publisher sequence number seen, and its position counted from the anchor
    /// packet (0) without wrapping, so that streams longer than 2^15 packets stay ordered.
    highest_seq_in: u16,
    highest_ext: i64,
    seq_offset: u16,
    ts_offset: u32,
}

impl Anchor {
    /// Position of `seq` relative to the anchor packet (negative: before it).
    fn extend(&self, seq: u16) -> i64 {
        self.highest_ext + i64::from(seq.wrapping_sub(self.highest_seq_in) as i16)
    }
}

#[derive(Debug, Clone, Copy)]
struct LastOut {
    seq: u16,
    ts: u32,
    at: Instant,
}

impl Munger {
    /// A munger that writes `ssrc_out` and `pt_out` into every packet.
    pub fn new(ssrc_out: u32, pt_out: u8) -> Munger {
        Munger {
            ssrc_out,
            pt_out,
            anchor: None,
            last_out: None,
        }
    }

    /// Whether packets of `epoch` can be rewritten without re-anchoring.
    pub fn is_anchored_in(&self, epoch: u32) -> bool {
        self.anchor.is_some_and(|a| a.epoch == epoch)
    }

    /// Starts a new output run at `first`, continuing the previous run's numbering if any.
    ///
    /// `initial` gives the sequence number and timestamp of the very first packet ever sent.
    pub fn anchor(
        &mut self,
        epoch: u32,
        first: &RtpHeader,
        clock_rate: u32,
        initial: (u16, u32),
        now: Instant,
    ) {
        let (seq_out, ts_out) = match self.last_out {
            None => initial,
            Some(last) => {
                let elapsed = now.saturating_duration_since(last.at);
                // Advance the clock by the wall time that passed, at least one tick, so the
                // subscriber's jitter buffer sees time moving forward across the switch.
                let ticks = (elapsed.as_micros() * u128::from(clock_rate) / 1_000_000).max(1);
                (
                    last.seq.wrapping_add(1),
                    last.ts
                        .wrapping_add(u32::try_from(ticks).unwrap_or(u32::MAX)),
                )
            }
        };
        self.anchor = Some(Anchor {
            epoch,
            ssrc_in: first.ssrc,
            highest_seq_in: first.sequence_number,
            highest_ext: 0,
            seq_offset: seq_out.wrapping_sub(first.sequence_number),
            ts_offset: ts_out.wrapping_sub(first.timestamp),
        });
    }

    /// Rewrites a packet of the anchored epoch; `None` when it predates the anchor.
    pub fn rewrite(&mut self, h: &RtpHeader, now: Instant) -> Option<RtpHeader> {
        let a = self.anchor.as_mut()?;
        if h.ssrc != a.ssrc_in {
            return None;
        }
        let ext = a.extend(h.sequence_number);
        if ext < 0 {
            return None;
        }
        if ext > a.highest_ext {
            a.highest_ext = ext;
            a.highest_seq_in = h.sequence_number;
        }
        let a = *a;
        let seq = h.sequence_number.wrapping_add(a.seq_offset);
        let ts = h.timestamp.wrapping_add(a.ts_offset);
        if self.last_out.is_none_or(|l| seq_is_newer(seq, l.seq)) {
            self.last_out = Some(LastOut { seq, ts, at: now });
        }
        Some(RtpHeader {
            payload_type: self.pt_out,
            marker: h.marker,
            sequence_number: seq,
            timestamp: ts,
            ssrc: self.ssrc_out,
        })
    }

    /// Maps a sequence number the subscriber saw back to the publisher's, if it is of the
    /// current epoch and not before the anchor.
    pub fn original_seq(&self, seq_out: u16) -> Option<(u32, u16)> {
        let a = self.anchor?;
        let seq_in = seq_out.wrapping_sub(a.seq_offset);
        if a.extend(seq_in) < 0 {
            return None;
        }
        Some((a.ssrc_in, seq_in))
    }

    /// The subscriber-side timestamp of a publisher timestamp of the current epoch.
    pub fn timestamp_for(&self, ts_in: u32) -> u32 {
        self.anchor
            .map_or(ts_in, |a| ts_in.wrapping_add(a.ts_offset))
    }

    /// Drops the anchor so that the next forwarded packet starts a new run.
    pub fn reset_anchor(&mut self) {
        self.anchor = None;
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // a virtual clock still needs an arbitrary origin
mod tests {
    use super::*;
    use std::time::Duration;

    fn h(ssrc: u32, seq: u16, ts: u32) -> RtpHeader {
        RtpHeader {
            payload_type: 96,
            marker: false,
            sequence_number: seq,
            timestamp: ts,
            ssrc,
        }
    }

    #[test]
    fn rewrites_into_the_subscriber_numbering() {
        let t0 = Instant::now();
        let mut m = Munger::new(0xAAAA, 102);
        m.anchor(0, &h(1, 5000, 90_000), 90_000, (100, 7), t0);
        let out = m.rewrite(&h(1, 5000, 90_000), t0).unwrap();
        assert_eq!((out.ssrc, out.payload_type), (0xAAAA, 102));
        assert_eq!((out.sequence_number, out.timestamp), (100, 7));
        let out = m.rewrite(&h(1, 5002, 93_000), t0).unwrap();
        assert_eq!(
            (out.sequence_number, out.timestamp),
            (102, 3007),
            "gaps are kept"
        );
        assert!(m.rewrite(&h(1, 4999, 0), t0).is_none(), "before the anchor");
        assert!(m.rewrite(&h(2, 5003, 0), t0).is_none(), "other SSRC");
    }

    #[test]
    fn continues_across_a_publisher_restart() {
        let t0 = Instant::now();
        let mut m = Munger::new(9, 96);
        m.anchor(0, &h(1, 65534, 1000), 90_000, (10, 0), t0);
        let _ = m.rewrite(&h(1, 65534, 1000), t0);
        let last = m.rewrite(&h(1, 65535, 4000), t0).unwrap();
        assert_eq!(last.sequence_number, 11);
        // The publisher restarts with new numbering 500 ms later.
        let t1 = t0 + Duration::from_millis(500);
        m.anchor(1, &h(2, 7, 123), 90_000, (0, 0), t1);
        let next = m.rewrite(&h(2, 7, 123), t1).unwrap();
        assert_eq!(next.sequence_number, 12);
        assert_eq!(next.timestamp, 3000 + 45_000);
        assert_eq!(next.ssrc, 9);
    }

    #[test]
    fn long_streams_keep_flowing_past_every_wrap() {
        let t0 = Instant::now();
        let mut m = Munger::new(1, 96);
        m.anchor(0, &h(5, 100, 0), 90_000, (0, 0), t0);
        for i in 0..200_000u32 {
            let seq = 100u16.wrapping_add(i as u16);
            let out = m
                .rewrite(&h(5, seq, i), t0)
                .expect("in order, never dropped");
            assert_eq!(out.sequence_number, i as u16);
        }
        // A late packet from just before the current position is still forwarded...
        let late = 100u16.wrapping_add(199_990u32 as u16);
        assert!(m.rewrite(&h(5, late, 0), t0).is_some());
        // ...and NACKs map back near the head of a long stream.
        assert!(m.original_seq((199_000u32) as u16).is_some());
    }

    #[test]
    fn maps_nacked_sequence_numbers_back() {
        let t0 = Instant::now();
        let mut m = Munger::new(9, 96);
        m.anchor(0, &h(1, 65000, 0), 90_000, (200, 0), t0);
        assert_eq!(m.original_seq(210), Some((1, 65010)));
        assert_eq!(m.original_seq(199), None);
    }
}
