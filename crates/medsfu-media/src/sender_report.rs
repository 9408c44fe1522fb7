//! RTCP sender reports for the tracks medsfu forwards to a subscriber.
//!
//! Forwarded packets are protected outside webrtc-rs's write pipeline (see
//! `RTCPeerConnection::protect_rtp` in vendor/rtc), so its sender-report interceptor never
//! sees them; the engine keeps the same few figures per sender here. A browser needs the
//! reports to line a speaker's audio up with their video (both mapped to one NTP clock).

use std::time::Instant;

use rtc::rtcp::sender_report::SenderReport;
use rtc::shared::time::SystemInstant;

/// What one sender's reports need of the packets it sent: counts and the latest RTP
/// timestamp with the instant it went out.
#[derive(Debug, Default, Clone)]
pub(crate) struct SenderClock {
    /// Sequence number of the latest in-order packet.
    last_seq: u16,
    /// RTP timestamp of the latest in-order packet that started a new timestamp, and when.
    mapping: Option<(u32, Instant)>,
    /// Packets sent (wrapping, as RTCP carries it).
    packets: u32,
    /// Payload octets sent (wrapping, as RTCP carries it).
    octets: u32,
}

impl SenderClock {
    /// Notes one packet sent at `now`. Only in-order packets move the timestamp mapping
    /// (a retransmission is old), and only the first packet of a frame does (a large frame
    /// spread over a few milliseconds has one timestamp), as webrtc-rs's interceptor did.
    pub(crate) fn on_packet(&mut self, now: Instant, seq: u16, timestamp: u32, payload: usize) {
        let diff = seq.wrapping_sub(self.last_seq);
        if self.mapping.is_none() || (diff > 0 && diff < 1 << 15) {
            self.last_seq = seq;
            if self.mapping.is_none_or(|(ts, _)| ts != timestamp) {
                self.mapping = Some((timestamp, now));
            }
        }
        self.packets = self.packets.wrapping_add(1);
        // RTCP's octet count wraps at 2^32 by definition; a payload is at most 64 KiB.
        self.octets = self.octets.wrapping_add(payload as u32);
    }

    /// The report for `ssrc` at `now`, or `None` before anything was sent. `wall` maps the
    /// monotonic clock to wall-clock time (taken once, so reports of all tracks agree).
    pub(crate) fn report(
        &self,
        ssrc: u32,
        clock_rate: u32,
        now: Instant,
        wall: &SystemInstant,
    ) -> Option<SenderReport> {
        let (timestamp, at) = self.mapping?;
        let elapsed = now.saturating_duration_since(at).as_secs_f64();
        Some(SenderReport {
            ssrc,
            ntp_time: wall.ntp(now),
            // Timestamps wrap at 2^32 by definition; `as` saturates an absurd interval.
            rtp_time: timestamp.wrapping_add((elapsed * f64::from(clock_rate)) as u32),
            packet_count: self.packets,
            octet_count: self.octets,
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn nothing_sent_reports_nothing() {
        let t0 = Instant::now();
        let wall = SystemInstant::now(t0);
        assert!(SenderClock::default()
            .report(7, 90_000, t0, &wall)
            .is_none());
    }

    #[test]
    fn report_extrapolates_the_timestamp_and_counts_everything() {
        let t0 = Instant::now();
        let wall = SystemInstant::now(t0);
        let mut c = SenderClock::default();
        // A frame in three packets spread over 4 ms: the mapping is its first packet's.
        c.on_packet(t0, 100, 9_000, 1000);
        c.on_packet(t0 + Duration::from_millis(2), 101, 9_000, 1000);
        c.on_packet(t0 + Duration::from_millis(4), 102, 9_000, 500);
        // A retransmission of an older packet later: counted, mapping kept.
        c.on_packet(t0 + Duration::from_millis(20), 99, 6_000, 1000);
        let now = t0 + Duration::from_millis(500);
        let r = c.report(7, 90_000, now, &wall).expect("report");
        assert_eq!(r.ssrc, 7);
        assert_eq!(r.packet_count, 4);
        assert_eq!(r.octet_count, 3500);
        // 500 ms at 90 kHz after timestamp 9000.
        assert_eq!(r.rtp_time, 9_000 + 45_000);
        assert_eq!(r.ntp_time, wall.ntp(now));
        // The next frame moves the mapping.
        c.on_packet(now, 103, 12_000, 10);
        let r = c.report(7, 90_000, now, &wall).expect("report");
        assert_eq!(r.rtp_time, 12_000);
    }

    #[test]
    fn sequence_and_timestamp_wrap() {
        let t0 = Instant::now();
        let wall = SystemInstant::now(t0);
        let mut c = SenderClock::default();
        c.on_packet(t0, u16::MAX, u32::MAX - 10, 1);
        // Sequence 0 follows 65535: in order, so its timestamp is the new mapping.
        c.on_packet(t0, 0, 5, 1);
        let r = c
            .report(1, 48_000, t0 + Duration::from_millis(10), &wall)
            .expect("report");
        assert_eq!(r.rtp_time, 5 + 480);
    }
}
