//! Datagrams to media workers: which worker serves a peer's address, learnt from the
//! workers' reports, and the dispatcher's routing (the ownership rules themselves are in
//! `medsfu_media_api::routing`).

use std::collections::HashMap;
use std::net::SocketAddr;

use medsfu_media_api::routing::Shards;

/// The dispatcher's routing, without IO: which worker a received datagram is for.
#[derive(Debug)]
pub(crate) struct Dispatcher {
    shards: Shards,
    table: AddrTable,
}

impl Dispatcher {
    /// Routing over `workers` workers, knowing no address yet.
    pub(crate) fn new(workers: usize) -> Dispatcher {
        Dispatcher {
            shards: Shards::new(workers),
            table: AddrTable::default(),
        }
    }

    /// Applies worker `worker`'s report of an address bound or unbound.
    pub(crate) fn apply(&mut self, worker: usize, change: AddrChange) {
        self.table.apply(worker, change);
    }

    /// The worker for a datagram from `from`: STUN by the worker its username names (a
    /// peer's first datagrams), anything else by the address a worker authenticated.
    /// `None`: nobody's (counted as unknown by the caller).
    #[must_use]
    pub(crate) fn route(&self, from: &SocketAddr, data: &[u8]) -> Option<usize> {
        match crate::demux::classify(data) {
            crate::demux::DatagramKind::Stun => crate::demux::stun_server_ufrag(data)
                .and_then(|u| self.shards.of_ufrag(u.as_bytes()))
                .or_else(|| self.table.owner(from)),
            _ => self.table.owner(from),
        }
    }
}

/// A change in which peer addresses a worker serves, reported to the dispatcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AddrChange {
    /// A peer authenticated from this address: its datagrams go to the reporting worker.
    Bound(SocketAddr),
    /// The address is no longer a peer's of the reporting worker.
    Unbound(SocketAddr),
}

/// The dispatcher's table of which worker serves which peer address.
#[derive(Debug, Default)]
pub(crate) struct AddrTable {
    owners: HashMap<SocketAddr, usize>,
}

impl AddrTable {
    /// Applies a worker's report. An address unbound by a worker that no longer owns it
    /// (another bound it since) stays with the new owner.
    pub(crate) fn apply(&mut self, worker: usize, change: AddrChange) {
        match change {
            AddrChange::Bound(a) => {
                self.owners.insert(a, worker);
            }
            AddrChange::Unbound(a) => {
                if self.owners.get(&a) == Some(&worker) {
                    self.owners.remove(&a);
                }
            }
        }
    }

    /// The worker serving `addr`.
    pub(crate) fn owner(&self, addr: &SocketAddr) -> Option<usize> {
        self.owners.get(addr).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_table_follows_the_latest_owner() {
        let a: SocketAddr = "192.0.2.1:5000".parse().expect("address");
        let mut t = AddrTable::default();
        t.apply(0, AddrChange::Bound(a));
        assert_eq!(t.owner(&a), Some(0));
        // The peer moved to a room on worker 1 from the same address.
        t.apply(1, AddrChange::Bound(a));
        // Worker 0's late unbinding does not take it from worker 1.
        t.apply(0, AddrChange::Unbound(a));
        assert_eq!(t.owner(&a), Some(1));
        t.apply(1, AddrChange::Unbound(a));
        assert_eq!(t.owner(&a), None);
        assert!(t.owners.is_empty(), "nothing left behind");
    }
}
