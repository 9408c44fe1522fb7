//! Telling peers apart on the one shared UDP port.
//!
//! A browser's first packets are STUN binding requests whose USERNAME begins with the
//! server's ICE ufrag, which names the peer connection; later packets (DTLS, SRTP) are
//! routed by the source address those requests came from (RFC 7983 demultiplexing).

/// What a datagram on the media port is, by its first byte (RFC 7983).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatagramKind {
    /// STUN (first byte 0..=3).
    Stun,
    /// DTLS (20..=63).
    Dtls,
    /// SRTP or SRTCP (128..=191).
    Srtp,
    /// Anything else: counted and dropped.
    Unknown,
}

/// Classifies a datagram by its first byte.
pub fn classify(datagram: &[u8]) -> DatagramKind {
    match datagram.first() {
        Some(0..=3) => DatagramKind::Stun,
        Some(20..=63) => DatagramKind::Dtls,
        Some(128..=191) => DatagramKind::Srtp,
        _ => DatagramKind::Unknown,
    }
}

const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
const ATTR_USERNAME: u16 = 0x0006;

/// The server-side ufrag of a STUN message's USERNAME (`server:client`), if it has one.
///
/// Reads the message in place without allocating; malformed messages yield `None`.
pub fn stun_server_ufrag(msg: &[u8]) -> Option<&str> {
    if msg.len() < 20 || msg[4..8] != MAGIC_COOKIE {
        return None;
    }
    let body_len = usize::from(u16::from_be_bytes([msg[2], msg[3]]));
    let mut attrs = msg.get(20..20 + body_len)?;
    while attrs.len() >= 4 {
        let typ = u16::from_be_bytes([attrs[0], attrs[1]]);
        let len = usize::from(u16::from_be_bytes([attrs[2], attrs[3]]));
        let value = attrs.get(4..4 + len)?;
        if typ == ATTR_USERNAME {
            let username = std::str::from_utf8(value).ok()?;
            return username.split(':').next().filter(|u| !u.is_empty());
        }
        let padded = (len + 3) & !3;
        attrs = attrs.get(4 + padded..)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A binding request with the given attributes (type, value).
    pub(crate) fn stun(attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for (t, v) in attrs {
            body.extend_from_slice(&t.to_be_bytes());
            body.extend_from_slice(&(v.len() as u16).to_be_bytes());
            body.extend_from_slice(v);
            while body.len() % 4 != 0 {
                body.push(0);
            }
        }
        let mut m = vec![0x00, 0x01];
        m.extend_from_slice(&(body.len() as u16).to_be_bytes());
        m.extend_from_slice(&MAGIC_COOKIE);
        m.extend_from_slice(&[7; 12]);
        m.extend_from_slice(&body);
        m
    }

    #[test]
    fn finds_the_server_ufrag_after_other_attributes() {
        let m = stun(&[(0x8022, b"x"), (ATTR_USERNAME, b"srvUfrag:cli")]);
        assert_eq!(classify(&m), DatagramKind::Stun);
        assert_eq!(stun_server_ufrag(&m), Some("srvUfrag"));
    }

    #[test]
    fn rejects_malformed_messages() {
        let m = stun(&[(ATTR_USERNAME, b"abc:def")]);
        assert_eq!(stun_server_ufrag(&m[..19]), None, "short header");
        let mut bad_cookie = m.clone();
        bad_cookie[4] = 0;
        assert_eq!(stun_server_ufrag(&bad_cookie), None);
        let mut long_len = m.clone();
        long_len[3] = 200;
        assert_eq!(stun_server_ufrag(&long_len), None, "length beyond datagram");
        let mut long_attr = m.clone();
        long_attr[23] = 250;
        assert_eq!(stun_server_ufrag(&long_attr), None, "attribute beyond body");
        assert_eq!(stun_server_ufrag(&stun(&[(ATTR_USERNAME, b":x")])), None);
        assert_eq!(stun_server_ufrag(&stun(&[])), None);
        assert_eq!(
            stun_server_ufrag(&stun(&[(ATTR_USERNAME, &[0xff, 0xfe])])),
            None
        );
    }

    #[test]
    fn classifies_by_first_byte() {
        assert_eq!(classify(&[22, 254, 253]), DatagramKind::Dtls);
        assert_eq!(classify(&[0x80, 96]), DatagramKind::Srtp);
        assert_eq!(classify(&[0x47]), DatagramKind::Unknown);
        assert_eq!(classify(&[]), DatagramKind::Unknown);
    }
}
