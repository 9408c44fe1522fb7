//! Datagrams the media engine queued during one step, sent together after it: on Linux up
//! to [`BATCH`] datagrams, each to its own address, per `sendmmsg` system call.
//!
//! UDP GSO (`UDP_SEGMENT`) is not used: it splits one buffer into equal segments for one
//! destination, while an SFU sends each packet once to many destinations.

use std::net::SocketAddr;

use bytes::BytesMut;
use tokio::net::UdpSocket;

/// Most datagrams handed to the kernel in one call.
pub const BATCH: usize = 64;

/// One datagram to send.
#[derive(Debug)]
pub struct Transmit {
    /// Where it goes.
    pub to: SocketAddr,
    /// The whole datagram.
    pub data: BytesMut,
}

/// What one [`send_all`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    /// Datagrams the kernel took.
    pub datagrams: u64,
    /// Datagrams dropped: the kernel refused them or its send buffer was full.
    pub failed: u64,
    /// System calls made.
    pub calls: u64,
}

/// Sends `queue` in order and empties it (keeping its capacity). A datagram the kernel
/// refuses is dropped and counted; a full send buffer drops the rest of the queue, as a
/// single `send_to` would have dropped each of them: media is not worth blocking the engine.
pub fn send_all(socket: &UdpSocket, queue: &mut Vec<Transmit>) -> Sent {
    let mut sent = Sent::default();
    let mut start = 0;
    while start < queue.len() {
        let end = (start + BATCH).min(queue.len());
        sent.calls += 1;
        // Straight to the (non-blocking) socket, not through tokio's readiness: a send is
        // never awaited, and WouldBlock then means what it says, the send buffer is full.
        match sys::send_batch(socket, &queue[start..end]) {
            // `sendmmsg` reports an error instead of 0 when the first datagram fails; 0 is
            // treated as that failure so the loop always moves on.
            Ok(0) => {
                sent.failed += 1;
                start += 1;
            }
            Ok(n) => {
                sent.datagrams += n as u64;
                start += n;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                sent.failed += (queue.len() - start) as u64;
                break;
            }
            // This datagram (too large, an address of the other family, a host the kernel
            // knows to be unreachable): drop it, send the rest.
            Err(_) => {
                sent.failed += 1;
                start += 1;
            }
        }
    }
    queue.clear();
    sent
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
mod sys {
    use std::io;
    use std::mem;
    use std::os::fd::AsRawFd;

    use tokio::net::UdpSocket;

    use super::{Transmit, BATCH};

    /// Hands up to [`BATCH`] datagrams of `batch` to the kernel in one `sendmmsg`; returns
    /// how many it took (fewer than given when one fails; the next call reports its error).
    pub fn send_batch(socket: &UdpSocket, batch: &[Transmit]) -> io::Result<usize> {
        let n = batch.len().min(BATCH);
        // SAFETY: these are plain C structs for which all-zero bytes are a valid value.
        let mut names: [libc::sockaddr_storage; BATCH] = unsafe { mem::zeroed() };
        let mut iovs: [libc::iovec; BATCH] = unsafe { mem::zeroed() };
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { mem::zeroed() };
        for (i, t) in batch[..n].iter().enumerate() {
            let addr = socket2::SockAddr::from(t.to);
            let len = addr.len();
            // SAFETY: `addr` holds `len` initialised bytes of a socket address, and `len` is
            // at most the size of `sockaddr_storage` (which is what `SockAddr` stores); the
            // two buffers are distinct.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    addr.as_ptr().cast::<u8>(),
                    (&raw mut names[i]).cast::<u8>(),
                    len as usize,
                );
            }
            iovs[i] = libc::iovec {
                iov_base: t.data.as_ptr().cast_mut().cast(),
                iov_len: t.data.len(),
            };
            let h = &mut hdrs[i].msg_hdr;
            h.msg_name = (&raw mut names[i]).cast();
            h.msg_namelen = len;
            h.msg_iov = &raw mut iovs[i];
            h.msg_iovlen = 1;
        }
        // SAFETY: the first `n` headers each point at one address and one iovec on this
        // stack frame and at a datagram borrowed from `batch`, all alive for the call; the
        // kernel only reads them (the iovec's `*mut` is the C signature, nothing is written).
        let r = unsafe {
            libc::sendmmsg(
                socket.as_raw_fd(),
                hdrs.as_mut_ptr(),
                n as libc::c_uint, // n <= BATCH = 64
                0,
            )
        };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r as usize) // 0 <= r <= n
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod sys {
    use std::io;

    use tokio::net::UdpSocket;

    use super::Transmit;

    /// Sends the first datagram of `batch` (no `sendmmsg` here); returns 1.
    pub fn send_batch(socket: &UdpSocket, batch: &[Transmit]) -> io::Result<usize> {
        let Some(t) = batch.first() else {
            return Ok(0);
        };
        socket2::SockRef::from(socket).send_to(&t.data, &t.to.into())?;
        Ok(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn receive(socket: &UdpSocket, n: usize) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 2048];
        for _ in 0..n {
            let (len, _) = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                socket.recv_from(&mut buf),
            )
            .await
            .expect("a datagram arrives")
            .expect("receive");
            got.push(buf[..len].to_vec());
        }
        got
    }

    fn datagram(to: SocketAddr, tag: &str) -> Transmit {
        Transmit {
            to,
            data: BytesMut::from(tag.as_bytes()),
        }
    }

    #[tokio::test]
    async fn a_queue_longer_than_a_batch_reaches_every_address_in_order() {
        let tx = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let a = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let b = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let (aa, ba) = (a.local_addr().expect("a"), b.local_addr().expect("b"));
        let mut queue = Vec::new();
        for i in 0..100 {
            queue.push(datagram(aa, &format!("a{i}")));
            queue.push(datagram(ba, &format!("b{i}")));
        }
        let sent = send_all(&tx, &mut queue);
        assert!(queue.is_empty());
        assert_eq!(sent.datagrams, 200);
        assert_eq!(sent.failed, 0);
        let batched = if cfg!(target_os = "linux") { 4 } else { 200 };
        assert_eq!(sent.calls, batched, "200 datagrams in batches of {BATCH}");
        let want = |p: &str| {
            (0..100)
                .map(|i| format!("{p}{i}").into_bytes())
                .collect::<Vec<_>>()
        };
        assert_eq!(receive(&a, 100).await, want("a"));
        assert_eq!(receive(&b, 100).await, want("b"));
    }

    #[tokio::test]
    async fn a_datagram_the_kernel_refuses_is_counted_and_the_rest_still_go() {
        let tx = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let rx = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let to = rx.local_addr().expect("addr");
        let mut queue = vec![datagram(to, "first")];
        // Larger than any UDP datagram can be (EMSGSIZE), then an IPv6 address on an IPv4
        // socket (EAFNOSUPPORT / EINVAL).
        queue.push(Transmit {
            to,
            data: BytesMut::zeroed(70_000),
        });
        queue.push(datagram("[::1]:9".parse().expect("v6"), "wrong family"));
        queue.push(datagram(to, "last"));
        let sent = send_all(&tx, &mut queue);
        assert_eq!((sent.datagrams, sent.failed), (2, 2), "{sent:?}");
        assert_eq!(
            receive(&rx, 2).await,
            vec![b"first".to_vec(), b"last".to_vec()]
        );
    }
}
