//! The media socket: bound with the kernel buffers asked for, and the datagrams the kernel
//! dropped on it read back from `/proc` (Linux).

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};
use tracing::{info, warn};

/// Largest datagram read from the media socket: the largest UDP payload, so nothing a peer
/// sends is cut short (a truncated datagram would fail decryption or parse wrongly).
pub const MAX_DATAGRAM: usize = 65_536;

/// Buffer sizes the kernel granted (Linux reports twice what it reserves for payload).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Granted {
    /// SO_RCVBUF after setting it.
    pub receive: usize,
    /// SO_SNDBUF after setting it.
    pub send: usize,
}

/// Binds the media socket with `receive`/`send` buffer sizes (0 keeps the kernel default);
/// says in the log how to raise the kernel's cap when it granted less.
pub fn bind(
    listen: SocketAddr,
    receive: usize,
    send: usize,
) -> io::Result<(tokio::net::UdpSocket, Granted)> {
    let socket = Socket::new(
        Domain::for_address(listen),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    if receive > 0 {
        socket.set_recv_buffer_size(receive)?;
    }
    if send > 0 {
        socket.set_send_buffer_size(send)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&listen.into())?;
    let granted = Granted {
        receive: socket.recv_buffer_size()?,
        send: socket.send_buffer_size()?,
    };
    // Linux doubles the value it is given (half is bookkeeping) and caps it at the sysctl.
    for (what, asked, got, sysctl) in [
        ("receive", receive, granted.receive, "net.core.rmem_max"),
        ("send", send, granted.send, "net.core.wmem_max"),
    ] {
        // Linux reports twice what it reserves for data, so half the report is compared.
        let granted_for_data = if cfg!(target_os = "linux") {
            got / 2
        } else {
            got
        };
        if asked > 0 && granted_for_data < asked {
            warn!(
                asked,
                granted = got,
                "media socket {what} buffer is smaller than configured: raise the kernel's cap \
                 with `sysctl -w {sysctl}={asked}`"
            );
        } else if asked > 0 {
            info!(granted = got, "media socket {what} buffer");
        }
    }
    let socket = tokio::net::UdpSocket::from_std(socket.into())?;
    Ok((socket, granted))
}

/// Reads how many datagrams the kernel dropped on one UDP socket (full receive buffer),
/// from the `drops` column of `/proc/self/net/udp` and `udp6`, found by the socket's inode.
#[derive(Debug)]
pub struct KernelDrops {
    inode: u64,
    last: u64,
}

impl KernelDrops {
    /// For `socket`; `None` where `/proc` does not tell (not Linux).
    pub fn new(socket: &impl std::os::fd::AsRawFd) -> Option<KernelDrops> {
        use std::os::unix::fs::MetadataExt;
        let fd = socket.as_raw_fd();
        let inode = std::fs::metadata(format!("/proc/self/fd/{fd}")).ok()?.ino();
        let mut d = KernelDrops { inode, last: 0 };
        d.last = d.total()?;
        Some(d)
    }

    /// The socket's drop count now, in all.
    pub fn total(&self) -> Option<u64> {
        ["/proc/self/net/udp", "/proc/self/net/udp6"]
            .iter()
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .find_map(|table| drops_of(&table, self.inode))
    }

    /// Drops since the last call (or since [`KernelDrops::new`]).
    pub fn new_drops(&mut self) -> u64 {
        let Some(total) = self.total() else { return 0 };
        let delta = total.saturating_sub(self.last);
        self.last = total;
        delta
    }
}

/// The `drops` column of the row of `/proc/net/udp` whose inode is `inode`.
fn drops_of(table: &str, inode: u64) -> Option<u64> {
    table.lines().skip(1).find_map(|line| {
        // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ref pointer drops
        let mut f = line.split_whitespace().skip(9);
        (f.next()?.parse::<u64>().ok()? == inode).then(|| f.nth(2)?.parse().ok())?
    })
}

/// Adds the kernel's drops on the media socket to `counter` once a second, on a blocking
/// thread (reading `/proc` takes a moment on a host with many sockets), never on the media
/// task; runs as long as the runtime.
pub async fn watch_drops(mut drops: KernelDrops, counter: prometheus::IntCounter) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tick.tick().await;
        let Ok((back, n)) = tokio::task::spawn_blocking(move || {
            let n = drops.new_drops();
            (drops, n)
        })
        .await
        else {
            return;
        };
        drops = back;
        if n > 0 {
            counter.inc_by(n);
            warn!(
                dropped = n,
                "the kernel dropped datagrams on the media socket: its receive buffer was full \
                 (see webrtc.receive_buffer_bytes)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_drops_column_by_inode() {
        let table = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  123: 0100007F:C350 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4242 2 0000000000000000 218
  124: 0100007F:C351 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4243 2 0000000000000000 0
";
        assert_eq!(drops_of(table, 4242), Some(218));
        assert_eq!(drops_of(table, 4243), Some(0));
        assert_eq!(drops_of(table, 1), None);
        assert_eq!(drops_of("garbage\nline with few fields", 1), None);
    }

    /// A socket nobody reads, with the smallest buffer: the kernel drops what does not fit,
    /// and the count says so.
    #[tokio::test]
    async fn counts_what_the_kernel_dropped() {
        let (rx, granted) = bind(([127, 0, 0, 1], 0).into(), 1, 0).expect("bind");
        assert!(granted.receive < 64 * 1024, "{granted:?}");
        let mut drops = KernelDrops::new(&rx).expect("/proc/self/net/udp");
        assert_eq!(drops.new_drops(), 0);
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let to = rx.local_addr().expect("addr");
        for _ in 0..200 {
            tx.send_to(&[0u8; 1200], to).expect("send");
        }
        let dropped = drops.new_drops();
        assert!(dropped > 100, "dropped {dropped}");
        assert_eq!(drops.new_drops(), 0, "counted once");
    }

    #[tokio::test]
    async fn grants_the_buffers_asked_for_up_to_the_cap() {
        let (_s, granted) = bind(([127, 0, 0, 1], 0).into(), 256 * 1024, 256 * 1024).expect("bind");
        // Linux reports double what it was given, capped at rmem_max (212992 by default).
        assert!(granted.receive >= 200 * 1024, "{granted:?}");
        assert!(granted.send >= 200 * 1024, "{granted:?}");
    }
}
