//! The media engine's IO: reads the UDP socket, the command queue and the clock, steps the
//! engine with them, and sends what it queued in batches ([`crate::transmit`]).

use std::sync::Arc;
use std::time::Instant;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tracing::{debug, info};

use crate::engine::Engine;
use crate::{transmit, Command, MediaStats};

/// Runs `engine` on `socket` until every command sender is gone.
pub(crate) async fn run(
    socket: UdpSocket,
    mut engine: Engine,
    mut commands: mpsc::Receiver<Command>,
    stats: Arc<MediaStats>,
) {
    let mut buf = vec![0u8; crate::socket::MAX_DATAGRAM];
    info!(addr = %engine.announce(), "media server listening");
    loop {
        let deadline = engine.poll_timeout();
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok((n, src)) => engine.handle_datagram(Instant::now(), src, &buf[..n]),
                Err(e) => debug!(error = %e, "media socket receive error"),
            },
            c = commands.recv() => match c {
                Some(c) => engine.handle_command(Instant::now(), c),
                None => break,
            },
            () = sleep => engine.handle_timeout(Instant::now()),
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
    info!("media server stopped");
}
