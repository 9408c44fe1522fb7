//! The vehicle's uplink governor: fits the roof camera's bitrate to what the QUIC path
//! carries, and keeps video from starving audio, control and telemetry (sans-IO).
//!
//! Why it is needed: quinn sends every queued DATAGRAM frame before any STREAM frame, from
//! one first-in-first-out queue. On a collapsing 4G link a 2 Mb/s camera would fill that
//! queue, delay the cabin audio behind seconds of video and hold back the control and
//! telemetry streams. So the governor does two things:
//!
//! - **Rung choice** (slow, seconds): every path sample (RTT, congestion window, losses,
//!   congestion events, datagram bytes queued) it decides whether the path is congested. If
//!   so, the encoder steps down to the highest rung below both the current one and the
//!   congestion window's rate less a reserve for audio and control; after
//!   [`UplinkConfig::step_up_after`] without congestion it probes one rung up.
//! - **Frame admission** (fast, per access unit): a video picture is sent only while the
//!   datagrams already queued would drain within [`UplinkConfig::queue_budget`] at the
//!   current rung. After a dropped picture it waits for the next keyframe, since the
//!   pictures in between cannot be decoded. Audio is never held back.

use std::time::{Duration, Instant};

/// Encoder rungs in bits per second, highest first.
pub const RUNGS: [u32; 7] = [
    2_000_000, 1_400_000, 1_000_000, 700_000, 500_000, 350_000, 250_000,
];

/// How the governor reacts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UplinkConfig {
    /// Highest video bitrate used (the rung at or below it is the start).
    pub max_bps: u32,
    /// Bits per second kept free for audio, control and telemetry.
    pub reserve_bps: u32,
    /// Longest time queued datagrams may take to drain before video pictures are dropped.
    pub queue_budget: Duration,
    /// Loss ratio within one sample that counts as congestion.
    pub loss_threshold: f64,
    /// RTT above the path's recent minimum that counts as a standing queue.
    pub rtt_rise: Duration,
    /// Time without congestion before probing one rung up.
    pub step_up_after: Duration,
    /// Least time between two steps down, so that the first can take effect.
    pub step_down_gap: Duration,
}

impl Default for UplinkConfig {
    fn default() -> UplinkConfig {
        UplinkConfig {
            max_bps: RUNGS[0],
            reserve_bps: 100_000,
            queue_budget: Duration::from_millis(150),
            loss_threshold: 0.03,
            rtt_rise: Duration::from_millis(120),
            step_up_after: Duration::from_secs(4),
            step_down_gap: Duration::from_millis(1500),
        }
    }
}

/// One reading of the QUIC path (cumulative counters as quinn reports them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PathSample {
    /// Smoothed round-trip time.
    pub rtt: Duration,
    /// Congestion window in bytes.
    pub cwnd: u64,
    /// Packets sent on the path so far.
    pub sent_packets: u64,
    /// Packets declared lost so far.
    pub lost_packets: u64,
    /// Congestion events so far.
    pub congestion_events: u64,
    /// Datagram bytes waiting in the connection's send queue now.
    pub queued_bytes: u64,
}

/// Why the rung changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RungReason {
    /// Packets were lost or the congestion controller backed off.
    Loss,
    /// Datagrams queued up or the RTT rose: the path is full.
    Queue,
    /// The path was clean for a while: probing upwards.
    Probe,
}

/// A new encoder bitrate to apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RungChange {
    /// New video bitrate, bits per second.
    pub bps: u32,
    /// Previous video bitrate.
    pub was_bps: u32,
    /// Why.
    pub reason: RungReason,
}

/// What to do with one video picture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Send it.
    Send,
    /// Drop it: the queue is over budget, or the decoder needs a keyframe first.
    Drop,
}

/// Chooses the video bitrate and admits video pictures; see the module docs.
#[derive(Debug)]
pub struct UplinkGovernor {
    cfg: UplinkConfig,
    rung: usize,
    last: Option<PathSample>,
    last_change: Instant,
    clean_since: Instant,
    /// Minimum RTT of the current and the previous 10 s window.
    rtt_min: [Option<Duration>; 2],
    rtt_window_start: Instant,
    want_keyframe: bool,
    dropped: u64,
}

const RTT_WINDOW: Duration = Duration::from_secs(10);

impl UplinkGovernor {
    /// A governor starting at the highest rung not above `cfg.max_bps`.
    pub fn new(cfg: UplinkConfig, now: Instant) -> UplinkGovernor {
        let rung = RUNGS
            .iter()
            .position(|r| *r <= cfg.max_bps)
            .unwrap_or(RUNGS.len() - 1);
        UplinkGovernor {
            cfg,
            rung,
            last: None,
            last_change: now,
            clean_since: now,
            rtt_min: [None, None],
            rtt_window_start: now,
            want_keyframe: false,
            dropped: 0,
        }
    }

    /// The video bitrate the encoder should use now.
    pub fn target_bps(&self) -> u32 {
        RUNGS[self.rung]
    }

    /// Video pictures dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Takes a path reading; returns the new rung when the encoder must change.
    #[must_use]
    pub fn handle_sample(&mut self, s: PathSample, now: Instant) -> Option<RungChange> {
        let Some(prev) = self.last.replace(s) else {
            self.note_rtt(s.rtt, now);
            return None;
        };
        if s.sent_packets < prev.sent_packets || s.congestion_events < prev.congestion_events {
            // A new connection (reconnect): counters restarted; take this as the baseline.
            self.rtt_min = [None, None];
            self.note_rtt(s.rtt, now);
            return None;
        }
        let sent = s.sent_packets - prev.sent_packets;
        let lost = s.lost_packets.saturating_sub(prev.lost_packets);
        let loss = if sent >= 10 {
            lost as f64 / sent as f64
        } else {
            0.0
        };
        let base = self.note_rtt(s.rtt, now);
        let reason =
            if s.congestion_events > prev.congestion_events || loss > self.cfg.loss_threshold {
                Some(RungReason::Loss)
            } else if self.queue_delay(s.queued_bytes) > self.cfg.queue_budget
                || s.rtt > base + self.cfg.rtt_rise
            {
                Some(RungReason::Queue)
            } else {
                None
            };
        match reason {
            Some(reason) => {
                self.clean_since = now;
                if now.saturating_duration_since(self.last_change) < self.cfg.step_down_gap
                    || self.rung + 1 == RUNGS.len()
                {
                    return None;
                }
                // One rung down at least; further if the congestion window says so.
                let window_bps = if s.rtt.is_zero() {
                    u64::MAX
                } else {
                    (s.cwnd as f64 * 8.0 / s.rtt.as_secs_f64() * 0.85) as u64
                };
                let fits = window_bps.saturating_sub(u64::from(self.cfg.reserve_bps));
                let mut rung = self.rung + 1;
                while rung + 1 < RUNGS.len() && u64::from(RUNGS[rung]) > fits {
                    rung += 1;
                }
                Some(self.change(rung, reason, now))
            }
            None => {
                let top = RUNGS
                    .iter()
                    .position(|r| *r <= self.cfg.max_bps)
                    .unwrap_or(RUNGS.len() - 1);
                if self.rung > top
                    && now.saturating_duration_since(self.clean_since) >= self.cfg.step_up_after
                    && now.saturating_duration_since(self.last_change) >= self.cfg.step_up_after
                {
                    self.clean_since = now;
                    Some(self.change(self.rung - 1, RungReason::Probe, now))
                } else {
                    None
                }
            }
        }
    }

    /// Decides whether one encoded video picture goes out, with `queued_bytes` of
    /// datagrams already waiting in the connection.
    #[must_use]
    pub fn admit_video(&mut self, keyframe: bool, queued_bytes: u64) -> Admit {
        if self.queue_delay(queued_bytes) > self.cfg.queue_budget {
            self.want_keyframe = true;
        } else if keyframe {
            self.want_keyframe = false;
        }
        if self.want_keyframe {
            self.dropped += 1;
            Admit::Drop
        } else {
            Admit::Send
        }
    }

    fn change(&mut self, rung: usize, reason: RungReason, now: Instant) -> RungChange {
        let was_bps = RUNGS[self.rung];
        self.rung = rung;
        self.last_change = now;
        RungChange {
            bps: RUNGS[rung],
            was_bps,
            reason,
        }
    }

    /// How long `queued` bytes take to drain at the current rung plus the reserve.
    fn queue_delay(&self, queued: u64) -> Duration {
        let bps = u64::from(RUNGS[self.rung]) + u64::from(self.cfg.reserve_bps);
        Duration::from_micros(queued.saturating_mul(8_000_000) / bps)
    }

    /// Records an RTT reading; returns the recent minimum.
    fn note_rtt(&mut self, rtt: Duration, now: Instant) -> Duration {
        if now.saturating_duration_since(self.rtt_window_start) >= RTT_WINDOW {
            self.rtt_min = [None, self.rtt_min[0]];
            self.rtt_window_start = now;
        }
        if !rtt.is_zero() {
            self.rtt_min[0] = Some(self.rtt_min[0].map_or(rtt, |m| m.min(rtt)));
        }
        self.rtt_min.iter().flatten().copied().min().unwrap_or(rtt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Drives a governor with 250 ms samples of a path.
    struct Path {
        g: UplinkGovernor,
        now: Instant,
        s: PathSample,
        changes: Vec<RungChange>,
    }

    impl Path {
        fn new() -> Path {
            let now = Instant::now();
            let mut p = Path {
                g: UplinkGovernor::new(UplinkConfig::default(), now),
                now,
                s: PathSample {
                    rtt: 40 * MS,
                    cwnd: 1 << 20,
                    ..PathSample::default()
                },
                changes: Vec::new(),
            };
            p.tick(100, 0);
            p
        }

        /// One sample: `sent` packets of which `lost` were lost.
        fn tick(&mut self, sent: u64, lost: u64) {
            self.now += 250 * MS;
            self.s.sent_packets += sent;
            self.s.lost_packets += lost;
            if let Some(c) = self.g.handle_sample(self.s, self.now) {
                self.changes.push(c);
            }
        }
    }

    #[test]
    fn steady_loss_steps_down_one_rung_at_a_time_with_a_gap() {
        let mut p = Path::new();
        assert_eq!(p.g.target_bps(), 2_000_000);
        // 1.5 s after start the first step is allowed.
        for _ in 0..6 {
            p.tick(100, 10);
        }
        assert_eq!(p.changes.len(), 1, "{:?}", p.changes);
        assert_eq!(
            p.changes[0],
            RungChange {
                bps: 1_400_000,
                was_bps: 2_000_000,
                reason: RungReason::Loss
            }
        );
        for _ in 0..4 {
            p.tick(100, 10);
        }
        assert_eq!(p.changes.len(), 1, "no second step within the gap");
        p.tick(100, 10);
        assert_eq!(p.g.target_bps(), 1_000_000);
    }

    #[test]
    fn a_small_congestion_window_jumps_several_rungs_at_once() {
        let mut p = Path::new();
        for _ in 0..5 {
            p.tick(100, 0);
        }
        // 12 kB per 100 ms = 960 kb/s; 85 % of it less the reserve is about 716 kb/s.
        p.s.cwnd = 12_000;
        p.s.rtt = 100 * MS;
        p.s.congestion_events += 1;
        p.tick(100, 5);
        assert_eq!(p.g.target_bps(), 700_000, "{:?}", p.changes);
    }

    #[test]
    fn loss_below_the_threshold_and_tiny_samples_are_not_congestion() {
        let mut p = Path::new();
        for _ in 0..40 {
            p.tick(100, 2);
        }
        // 3 lost of 5 sent is too small a sample to judge.
        p.tick(5, 3);
        assert!(p.changes.is_empty(), "{:?}", p.changes);
    }

    #[test]
    fn a_rising_rtt_or_a_standing_queue_counts_as_congestion() {
        let mut p = Path::new();
        for _ in 0..8 {
            p.tick(100, 0);
        }
        p.s.rtt = 200 * MS;
        p.tick(100, 0);
        assert_eq!(p.changes.last().map(|c| c.reason), Some(RungReason::Queue));
        let mut p = Path::new();
        for _ in 0..8 {
            p.tick(100, 0);
        }
        // 60 kB at 2.1 Mb/s is about 230 ms of queue.
        p.s.queued_bytes = 60_000;
        p.tick(100, 0);
        assert_eq!(p.changes.last().map(|c| c.reason), Some(RungReason::Queue));
    }

    #[test]
    fn a_clean_path_probes_back_up_to_the_top_and_no_further() {
        let mut p = Path::new();
        for _ in 0..6 {
            p.tick(100, 20);
        }
        p.tick(100, 20); // within the gap
        assert_eq!(p.g.target_bps(), 1_400_000);
        // Clean from here: one rung up after 4 s, then nothing more.
        for _ in 0..15 {
            p.tick(100, 0);
        }
        assert_eq!(p.g.target_bps(), 1_400_000, "not before 4 s");
        for _ in 0..40 {
            p.tick(100, 0);
        }
        assert_eq!(p.g.target_bps(), 2_000_000);
        assert_eq!(p.changes.last().map(|c| c.reason), Some(RungReason::Probe));
        assert_eq!(p.changes.len(), 2);
    }

    #[test]
    fn the_lowest_rung_is_the_floor() {
        let mut p = Path::new();
        for _ in 0..200 {
            p.tick(100, 50);
        }
        assert_eq!(p.g.target_bps(), 250_000);
        assert_eq!(p.changes.len(), RUNGS.len() - 1);
    }

    #[test]
    fn a_reconnect_restarts_the_counters_without_a_false_alarm() {
        let mut p = Path::new();
        for _ in 0..8 {
            p.tick(1000, 0);
        }
        p.s = PathSample {
            rtt: 40 * MS,
            cwnd: 1 << 20,
            ..PathSample::default()
        };
        p.tick(100, 0);
        p.tick(100, 0);
        assert!(p.changes.is_empty(), "{:?}", p.changes);
    }

    #[test]
    fn a_full_queue_drops_pictures_until_the_next_keyframe() {
        let mut g = UplinkGovernor::new(UplinkConfig::default(), Instant::now());
        assert_eq!(g.admit_video(false, 0), Admit::Send);
        // 2.1 Mb/s for 150 ms is about 39 kB.
        assert_eq!(g.admit_video(false, 60_000), Admit::Drop);
        assert_eq!(
            g.admit_video(false, 0),
            Admit::Drop,
            "undecodable without its reference"
        );
        assert_eq!(
            g.admit_video(true, 60_000),
            Admit::Drop,
            "not even a keyframe into a full queue"
        );
        assert_eq!(g.admit_video(true, 10_000), Admit::Send);
        assert_eq!(g.admit_video(false, 0), Admit::Send);
        assert_eq!(g.dropped(), 3);
    }
}
