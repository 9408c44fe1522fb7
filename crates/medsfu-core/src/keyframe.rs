//! Aggregation and throttling of keyframe requests towards one publisher.

use std::time::{Duration, Instant};

/// Decides when a keyframe request (PLI) is sent upstream for one track.
///
/// Many subscribers asking at once produce one request; further asks within `min_interval`
/// are merged into a single deferred request.
#[derive(Debug, Default)]
pub(crate) struct KeyframeRequester {
    last_sent: Option<Instant>,
    pending: bool,
}

impl KeyframeRequester {
    /// Records a request; returns whether one should be sent now.
    #[must_use]
    pub fn request(&mut self, now: Instant, min_interval: Duration) -> bool {
        match self.last_sent {
            Some(t) if now < t + min_interval => {
                self.pending = true;
                false
            }
            _ => {
                self.last_sent = Some(now);
                self.pending = false;
                true
            }
        }
    }

    /// A keyframe arrived: any deferred request is satisfied.
    pub fn keyframe_received(&mut self) {
        self.pending = false;
    }

    /// When a deferred request is due.
    pub fn deadline(&self, min_interval: Duration) -> Option<Instant> {
        match (self.pending, self.last_sent) {
            (true, Some(t)) => Some(t + min_interval),
            _ => None,
        }
    }

    /// When the last request went out.
    pub fn last_sent(&self) -> Option<Instant> {
        self.last_sent
    }

    /// Sends a deferred request if it is due; returns whether to send.
    #[must_use]
    pub fn handle_timeout(&mut self, now: Instant, min_interval: Duration) -> bool {
        match self.deadline(min_interval) {
            Some(d) if now >= d => {
                self.pending = false;
                self.last_sent = Some(now);
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // a virtual clock still needs an arbitrary origin
mod tests {
    use super::*;

    #[test]
    fn many_requests_in_a_burst_send_two_at_most() {
        let iv = Duration::from_millis(200);
        let t0 = Instant::now();
        let mut k = KeyframeRequester::default();
        assert!(k.request(t0, iv));
        for i in 1..50 {
            assert!(!k.request(t0 + Duration::from_millis(i), iv));
        }
        assert_eq!(k.deadline(iv), Some(t0 + iv));
        assert!(!k.handle_timeout(t0 + Duration::from_millis(199), iv));
        assert!(k.handle_timeout(t0 + iv, iv));
        assert_eq!(k.deadline(iv), None);
    }

    #[test]
    fn keyframe_cancels_the_deferred_request() {
        let iv = Duration::from_millis(200);
        let t0 = Instant::now();
        let mut k = KeyframeRequester::default();
        assert!(k.request(t0, iv));
        assert!(!k.request(t0, iv));
        k.keyframe_received();
        assert!(!k.handle_timeout(t0 + iv, iv));
    }
}
