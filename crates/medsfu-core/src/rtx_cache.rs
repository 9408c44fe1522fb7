//! A fixed-size cache of recently received packets, for answering NACKs.

use std::time::Instant;

use bytes::Bytes;

use crate::rtp::RtpHeader;

/// One cached packet: its header, its payload (shared) and when it arrived.
#[derive(Debug, Clone)]
pub(crate) struct Cached {
    pub header: RtpHeader,
    pub payload: Bytes,
    pub received: Instant,
}

/// The last `capacity` packets of one up track, indexed by sequence number.
///
/// Slots are allocated once; inserting replaces a slot's buffer handle and never allocates.
#[derive(Debug)]
pub(crate) struct RtxCache {
    slots: Vec<Option<Cached>>,
    mask: usize,
}

impl RtxCache {
    /// A cache of `capacity` rounded up to a power of two, at least 16 and at most 32768
    /// (half the sequence space, where "newer" stops being well defined).
    pub fn new(capacity: usize) -> RtxCache {
        let n = capacity.clamp(16, 0x8000).next_power_of_two();
        RtxCache {
            slots: vec![None; n],
            mask: n - 1,
        }
    }

    /// How many packets it holds at most.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Remembers a packet that arrived at `received`.
    pub fn insert(&mut self, header: RtpHeader, payload: &Bytes, received: Instant) {
        let slot = &mut self.slots[usize::from(header.sequence_number) & self.mask];
        *slot = Some(Cached {
            header,
            payload: payload.clone(),
            received,
        });
    }

    /// The packet with this SSRC and sequence number, if still cached.
    pub fn get(&self, ssrc: u32, seq: u16) -> Option<&Cached> {
        self.slots[usize::from(seq) & self.mask]
            .as_ref()
            .filter(|c| c.header.ssrc == ssrc && c.header.sequence_number == seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(seq: u16) -> RtpHeader {
        RtpHeader {
            sequence_number: seq,
            ssrc: 7,
            ..RtpHeader::default()
        }
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // an arbitrary origin for arrival times
    fn keeps_the_newest_packets() {
        let t0 = Instant::now();
        let mut c = RtxCache::new(16);
        for seq in 0..40u16 {
            let at = t0 + std::time::Duration::from_millis(u64::from(seq));
            c.insert(h(seq), &Bytes::from(vec![seq as u8]), at);
        }
        assert!(c.get(7, 39).is_some());
        assert!(c.get(7, 24).is_some());
        assert!(c.get(7, 23).is_none(), "overwritten by 39");
        assert!(c.get(8, 39).is_none(), "other SSRC");
        let p = c.get(7, 30).unwrap();
        assert_eq!(p.payload[0], 30);
        assert_eq!(p.received - t0, std::time::Duration::from_millis(30));
    }

    #[test]
    fn holds_at_most_half_the_sequence_space() {
        assert_eq!(RtxCache::new(100_000).capacity(), 0x8000);
        assert_eq!(RtxCache::new(1000).capacity(), 1024);
        assert_eq!(RtxCache::new(0).capacity(), 16);
    }
}
