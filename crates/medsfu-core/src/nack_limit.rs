//! Limits on what NACKs may cost: a subscriber's retransmissions are paid from a byte
//! budget its live stream earns, the same packet is not re-sent to it twice in a moment,
//! and what goes on to the publisher is deduplicated across subscribers and bounded by
//! the track's own packet rate. Without them a few kilobytes of NACKs made megabytes of
//! retransmissions and a storm of requests on the ambulance's uplink.

use std::time::{Duration, Instant};

/// Slots of the table of recently handled packets (by sequence number modulo this): as
/// many as a video track's retransmission cache holds by default, so that a storm over
/// the whole cache is still deduplicated.
const RECENT_SLOTS: usize = 1024;
/// Asking the publisher for one packet costs this many packets received from it: at most
/// a quarter of the track's packets are asked again, whatever subscribers report.
const UP_COST: u32 = 4;
/// Most requests to the publisher that may be saved up (packets).
const UP_BURST: u32 = 64;

/// Why a retransmission was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The packet was re-sent to this subscriber within the repeat interval.
    Repeat,
    /// The subscriber's retransmission budget is spent.
    Budget,
}

/// Recently handled sequence numbers and when, in a table indexed by sequence number
/// (allocated at the first NACK: most down tracks never see one).
#[derive(Debug, Clone, Default)]
struct Recent {
    /// Times are kept as milliseconds after this (plus one: zero is an empty slot).
    base: Option<Instant>,
    slots: Option<Box<[(u16, u64)]>>,
}

impl Recent {
    fn ms(&mut self, now: Instant) -> u64 {
        let base = *self.base.get_or_insert(now);
        u64::try_from(now.saturating_duration_since(base).as_millis()).unwrap_or(u64::MAX - 1) + 1
    }

    /// Whether `seq` was handled less than `within` before `now`.
    fn seen(&mut self, seq: u16, now: Instant, within: Duration) -> bool {
        let now_ms = self.ms(now);
        let Some(slots) = &self.slots else {
            return false;
        };
        let (s, at) = slots[usize::from(seq) % RECENT_SLOTS];
        at != 0 && s == seq && u128::from(now_ms.saturating_sub(at)) < within.as_millis()
    }

    fn note(&mut self, seq: u16, now: Instant) {
        let now_ms = self.ms(now);
        let slots = self
            .slots
            .get_or_insert_with(|| vec![(0, 0); RECENT_SLOTS].into_boxed_slice());
        slots[usize::from(seq) % RECENT_SLOTS] = (seq, now_ms);
    }
}

/// One down track's retransmission budget.
#[derive(Debug, Clone)]
pub(crate) struct RtxBudget {
    /// Bytes that may be re-sent now.
    tokens: u64,
    recent: Recent,
}

impl RtxBudget {
    /// A budget that starts full (`burst` bytes): early losses are repaired at once.
    pub(crate) fn new(burst: u64) -> RtxBudget {
        RtxBudget {
            tokens: burst,
            recent: Recent::default(),
        }
    }

    /// Lowers what may be re-sent now to at most `tokens` (what the identity had left).
    pub(crate) fn limit_to(&mut self, tokens: u64) {
        self.tokens = self.tokens.min(tokens);
    }

    /// Bytes that may be re-sent now.
    pub(crate) fn tokens(&self) -> u64 {
        self.tokens
    }

    /// A live packet of `bytes` went to the subscriber: it earns `percent` of them, up to
    /// `burst`.
    pub(crate) fn earn(&mut self, bytes: usize, percent: u32, burst: u64) {
        let earned = bytes as u64 * u64::from(percent) / 100;
        self.tokens = self.tokens.saturating_add(earned).min(burst);
    }

    /// Whether packet `seq` of `bytes` may be re-sent now; if so it is paid for.
    pub(crate) fn spend(
        &mut self,
        seq: u16,
        bytes: usize,
        now: Instant,
        repeat: Duration,
    ) -> Result<(), Refused> {
        if self.recent.seen(seq, now, repeat) {
            return Err(Refused::Repeat);
        }
        let cost = bytes as u64;
        if cost > self.tokens {
            return Err(Refused::Budget);
        }
        self.tokens -= cost;
        self.recent.note(seq, now);
        Ok(())
    }

    /// Whether nothing more can be paid for (later requests in a NACK need no look).
    pub(crate) fn spent(&self) -> bool {
        self.tokens == 0
    }
}

/// What one track may ask of its publisher again.
#[derive(Debug, Clone)]
pub(crate) struct UpstreamNacks {
    /// In packets received times [`UP_COST`].
    tokens: u32,
    recent: Recent,
}

impl UpstreamNacks {
    pub(crate) fn new() -> UpstreamNacks {
        UpstreamNacks {
            tokens: UP_BURST * UP_COST,
            recent: Recent::default(),
        }
    }

    /// A packet arrived from the publisher.
    pub(crate) fn earn(&mut self) {
        self.tokens = (self.tokens + 1).min(UP_BURST * UP_COST);
    }

    /// Whether packet `seq` may be asked of the publisher now (not asked within
    /// `repeat`, and the track's allowance not spent); if so it is noted.
    pub(crate) fn ask(&mut self, seq: u16, now: Instant, repeat: Duration) -> bool {
        if self.tokens < UP_COST || self.recent.seen(seq, now, repeat) {
            return false;
        }
        self.tokens -= UP_COST;
        self.recent.note(seq, now);
        true
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // a virtual clock still needs an arbitrary origin
mod tests {
    use super::*;

    const REPEAT: Duration = Duration::from_millis(100);

    #[test]
    fn a_packet_is_re_sent_once_per_interval_and_only_from_the_budget() {
        let t0 = Instant::now();
        let mut b = RtxBudget::new(3000);
        assert_eq!(b.spend(7, 1000, t0, REPEAT), Ok(()));
        assert_eq!(b.spend(7, 1000, t0, REPEAT), Err(Refused::Repeat));
        assert_eq!(
            b.spend(7, 1000, t0 + Duration::from_millis(99), REPEAT),
            Err(Refused::Repeat)
        );
        assert_eq!(b.spend(7, 1000, t0 + REPEAT, REPEAT), Ok(()));
        assert_eq!(b.spend(8, 1000, t0 + REPEAT, REPEAT), Ok(()));
        assert!(b.spent());
        assert_eq!(b.spend(9, 1, t0 + REPEAT, REPEAT), Err(Refused::Budget));
        // Live packets earn the budget back, a share of them and never beyond the burst.
        b.earn(1000, 50, 3000);
        assert_eq!(b.spend(9, 501, t0 + REPEAT, REPEAT), Err(Refused::Budget));
        assert_eq!(b.spend(9, 500, t0 + REPEAT, REPEAT), Ok(()));
        for _ in 0..100 {
            b.earn(1000, 50, 3000);
        }
        assert_eq!(b.tokens, 3000);
    }

    #[test]
    fn the_publisher_is_asked_once_and_at_most_a_quarter_of_its_packets() {
        let t0 = Instant::now();
        let mut u = UpstreamNacks::new();
        assert!(u.ask(5, t0, REPEAT));
        assert!(!u.ask(5, t0, REPEAT), "asked already");
        assert!(u.ask(5, t0 + REPEAT, REPEAT));
        // The saved-up allowance, then one request per four packets received.
        let asked = (100..1000).filter(|s| u.ask(*s, t0, REPEAT)).count();
        assert_eq!(asked, UP_BURST as usize - 2);
        for _ in 0..400 {
            u.earn();
        }
        let asked = (2000..3000).filter(|s| u.ask(*s, t0, REPEAT)).count();
        assert_eq!(asked, 64, "capped at the burst even after 400 packets");
        for _ in 0..40 {
            u.earn();
        }
        assert_eq!((3000..4000).filter(|s| u.ask(*s, t0, REPEAT)).count(), 10);
    }
}
