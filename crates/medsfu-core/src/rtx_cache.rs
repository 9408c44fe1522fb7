//! A fixed-size cache of recently received packets, for answering NACKs.

use bytes::Bytes;

use crate::rtp::RtpHeader;

/// The last `capacity` packets of one up track, indexed by sequence number.
///
/// Slots are allocated once; inserting replaces a slot's buffer handle and never allocates.
#[derive(Debug)]
pub(crate) struct RtxCache {
    slots: Vec<Option<(RtpHeader, Bytes)>>,
    mask: usize,
}

impl RtxCache {
    /// A cache of `capacity` rounded up to a power of two (at least 16).
    pub fn new(capacity: usize) -> RtxCache {
        let n = capacity.max(16).next_power_of_two();
        RtxCache {
            slots: vec![None; n],
            mask: n - 1,
        }
    }

    /// How many packets it holds at most.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Remembers a packet.
    pub fn insert(&mut self, header: RtpHeader, payload: &Bytes) {
        let slot = &mut self.slots[usize::from(header.sequence_number) & self.mask];
        *slot = Some((header, payload.clone()));
    }

    /// The packet with this SSRC and sequence number, if still cached.
    pub fn get(&self, ssrc: u32, seq: u16) -> Option<&(RtpHeader, Bytes)> {
        self.slots[usize::from(seq) & self.mask]
            .as_ref()
            .filter(|(h, _)| h.ssrc == ssrc && h.sequence_number == seq)
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
    fn keeps_the_newest_packets() {
        let mut c = RtxCache::new(16);
        for seq in 0..40u16 {
            c.insert(h(seq), &Bytes::from(vec![seq as u8]));
        }
        assert!(c.get(7, 39).is_some());
        assert!(c.get(7, 24).is_some());
        assert!(c.get(7, 23).is_none(), "overwritten by 39");
        assert!(c.get(8, 39).is_none(), "other SSRC");
        assert_eq!(c.get(7, 30).unwrap().1[0], 30);
    }
}
