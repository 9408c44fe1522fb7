//! The media engine's IO: reads datagrams (from the UDP socket, or from the dispatcher when
//! several workers share it), the command queue and the clock, steps the engine with them,
//! and sends what it queued in batches ([`crate::transmit`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tracing::{debug, info};

use crate::engine::Engine;
use crate::shard::{AddrChange, Dispatcher};
use crate::{transmit, Command, MediaStats};
use medsfu_core::{RtpPacket, TrackId};

/// Datagrams waiting for one worker; beyond, the dispatcher drops and counts them (a
/// worker that far behind is better served by loss than by delay).
pub(crate) const WORKER_DATAGRAMS: usize = 4096;

/// Where a worker's datagrams come from.
pub(crate) enum Ingress {
    /// The worker reads the socket itself (the only worker).
    Socket,
    /// The dispatcher hands it the datagrams of its peers; it reports the addresses it
    /// binds and unbinds back.
    Dispatched {
        datagrams: mpsc::Receiver<(SocketAddr, Bytes)>,
        addrs: mpsc::UnboundedSender<(usize, AddrChange)>,
        index: usize,
    },
}

/// Vehicle RTP waiting for one worker; beyond, `MediaHandle::rtp` drops and counts it
/// (`medsfu_media_rtp_dropped_total{reason="busy"}`). Its own queue, so that a vehicle's
/// media never delays a control command behind it, nor the other way round.
pub(crate) const WORKER_VEHICLE_RTP: usize = 4096;

/// A datagram for the worker, from wherever its ingress takes them.
enum Received {
    /// `buf[..n]`, read from the socket, from this address.
    Socket(usize, SocketAddr),
    /// Handed over by the dispatcher.
    Queued(SocketAddr, Bytes),
    /// A receive error (logged): nothing to handle.
    Nothing,
    /// The dispatcher is gone.
    Closed,
}

/// The next datagram of `ingress`: read into `buf`, or taken from the dispatcher's queue.
async fn receive(ingress: &mut Ingress, socket: &UdpSocket, buf: &mut [u8]) -> Received {
    match ingress {
        Ingress::Socket => match socket.recv_from(buf).await {
            Ok((n, src)) => Received::Socket(n, src),
            Err(e) => {
                debug!(error = %e, "media socket receive error");
                Received::Nothing
            }
        },
        Ingress::Dispatched { datagrams, .. } => match datagrams.recv().await {
            Some((src, data)) => Received::Queued(src, data),
            None => Received::Closed,
        },
    }
}

/// Runs `engine` until every command sender is gone, sending on `socket`.
pub(crate) async fn run(
    socket: Arc<UdpSocket>,
    mut engine: Engine,
    mut commands: mpsc::Receiver<Command>,
    mut vehicle_rtp: mpsc::Receiver<(TrackId, RtpPacket)>,
    mut ingress: Ingress,
    stats: Arc<MediaStats>,
) {
    let mut buf = vec![0u8; crate::socket::MAX_DATAGRAM];
    info!(addr = %engine.announce(), "media worker running");
    // One timer, moved when the engine's deadline moves: not a new one per datagram.
    let timer = tokio::time::sleep_until(tokio::time::Instant::now());
    tokio::pin!(timer);
    let mut armed: Option<Instant> = None;
    loop {
        let deadline = engine.poll_timeout();
        if deadline != armed {
            if let Some(d) = deadline {
                timer.as_mut().reset(d.into());
            }
            armed = deadline;
        }
        let sleep = async {
            match deadline {
                Some(_) => timer.as_mut().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = receive(&mut ingress, &socket, &mut buf) => match r {
                Received::Socket(n, src) => engine.handle_datagram(Instant::now(), src, &buf[..n]),
                Received::Queued(src, data) => engine.handle_datagram(Instant::now(), src, &data),
                Received::Nothing => {}
                Received::Closed => break,
            },
            c = commands.recv() => match c {
                Some(c) => engine.handle_command(Instant::now(), c),
                None => break,
            },
            Some((track, packet)) = vehicle_rtp.recv() => {
                engine.handle_vehicle_rtp(Instant::now(), track, packet);
            }
            () = sleep => engine.handle_timeout(Instant::now()),
        }
        // Addresses first: a peer's next datagram (DTLS after the STUN answer sent below)
        // must find its worker already known to the dispatcher.
        if let Ingress::Dispatched { addrs, index, .. } = &ingress {
            for change in engine.take_addr_changes() {
                // The dispatcher outlives its workers; a send fails only at shutdown.
                let _ = addrs.send((*index, change));
            }
        }
        // A step pauses every few datagrams for them to be sent, then goes on.
        loop {
            let queue = engine.poll_transmits();
            if queue.is_empty() {
                break;
            }
            let sent = transmit::send_all(&socket, queue);
            stats.datagrams_out.inc_by(sent.datagrams);
            stats.send_errors.inc_by(sent.failed);
            stats.send_calls.inc_by(sent.calls);
            engine.handle_sent(Instant::now());
        }
    }
    info!("media worker stopped");
}

/// Reads the shared socket and hands each datagram to the worker of its peer: STUN by the
/// worker named in its username, everything else by the address a worker bound. Runs until
/// every worker is gone. The address reports come on an unbounded queue: each is a peer's
/// authenticated check from a new address (at most a few per peer), drained before every
/// datagram.
pub(crate) async fn dispatch(
    socket: Arc<UdpSocket>,
    workers: Vec<mpsc::Sender<(SocketAddr, Bytes)>>,
    mut addrs: mpsc::UnboundedReceiver<(usize, AddrChange)>,
    stats: Arc<MediaStats>,
) {
    let mut dispatcher = Dispatcher::new(workers.len());
    let mut buf = vec![0u8; crate::socket::MAX_DATAGRAM];
    // Ends with the last worker (when the server is dropped), which releases the socket.
    let all_closed = async {
        for w in &workers {
            w.closed().await;
        }
    };
    tokio::pin!(all_closed);
    loop {
        let (n, src) = tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok(r) => r,
                Err(e) => {
                    debug!(error = %e, "media socket receive error");
                    continue;
                }
            },
            () = &mut all_closed => break,
        };
        // Reports are applied before routing: they were sent before the answers that made
        // peers send what arrives now.
        while let Ok((w, change)) = addrs.try_recv() {
            dispatcher.apply(w, change);
        }
        let data = &buf[..n];
        let Some(w) = dispatcher.route(&src, data) else {
            stats.datagrams_in.inc();
            stats.datagrams_unknown.inc();
            continue;
        };
        match workers[w].try_send((src, Bytes::copy_from_slice(data))) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                stats.datagrams_in.inc();
                stats.dispatch_dropped.inc();
            }
            // That worker stopped: the server is shutting down.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
    info!("media dispatcher stopped");
}
