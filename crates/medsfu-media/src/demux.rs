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
const ATTR_MESSAGE_INTEGRITY: u16 = 0x0008;
const BINDING_REQUEST: u16 = 0x0001;
const BINDING_INDICATION: u16 = 0x0011;
const BINDING_SUCCESS: u16 = 0x0101;
const BINDING_ERROR: u16 = 0x0111;

/// What to do with a STUN message addressed to one of our peer connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StunVerdict {
    /// A binding request signed with the connection's own password, or a response signed
    /// with the peer's: hand it to ICE.
    Authentic,
    /// A binding indication (a keepalive some agents send without integrity): drop it
    /// quietly, it changes nothing.
    Keepalive,
    /// Anything else (no or wrong MESSAGE-INTEGRITY, another method or class, a malformed
    /// message): drop it before it touches state.
    Rejected,
}

/// Checks a STUN message of one connection (RFC 8445 7.3, RFC 5389 15.4 short-term
/// credentials) without allocating: a binding request must be signed with our password
/// `local_pwd`, a response to one of our checks with the peer's `remote_pwd` (from its
/// description; `None` until it is known).
///
/// Everything ICE would act on (role conflicts, nominations) is behind this check, so a
/// forged message from a live peer's address changes nothing. This is where the check
/// must be: webrtc-rs's ICE agent (rtc-ice 0.21.1, `Agent::handle_inbound`) acts on
/// ICE-CONTROLLING/-CONTROLLED before it verifies MESSAGE-INTEGRITY.
pub fn check_stun(msg: &[u8], local_pwd: &[u8], remote_pwd: Option<&[u8]>) -> StunVerdict {
    use hmac::{Hmac, Mac};
    if msg.len() < 20 || msg[4..8] != MAGIC_COOKIE {
        return StunVerdict::Rejected;
    }
    let pwd = match u16::from_be_bytes([msg[0], msg[1]]) {
        BINDING_REQUEST => local_pwd,
        BINDING_SUCCESS | BINDING_ERROR => match remote_pwd {
            Some(p) => p,
            None => return StunVerdict::Rejected,
        },
        BINDING_INDICATION => return StunVerdict::Keepalive,
        _ => return StunVerdict::Rejected,
    };
    let body_len = usize::from(u16::from_be_bytes([msg[2], msg[3]]));
    let Some(body) = msg.get(20..20 + body_len) else {
        return StunVerdict::Rejected;
    };
    let mut offset = 0;
    while offset + 4 <= body.len() {
        let typ = u16::from_be_bytes([body[offset], body[offset + 1]]);
        let len = usize::from(u16::from_be_bytes([body[offset + 2], body[offset + 3]]));
        let Some(value) = body.get(offset + 4..offset + 4 + len) else {
            return StunVerdict::Rejected;
        };
        if typ == ATTR_MESSAGE_INTEGRITY {
            if len != 20 {
                return StunVerdict::Rejected;
            }
            // The HMAC covers the message up to the attribute, with the header's length
            // as if the message ended right after it (RFC 5389 15.4).
            let Ok(covered) = u16::try_from(offset + 24) else {
                return StunVerdict::Rejected;
            };
            let Ok(mut mac) = Hmac::<sha1::Sha1>::new_from_slice(pwd) else {
                return StunVerdict::Rejected;
            };
            mac.update(&msg[..2]);
            mac.update(&covered.to_be_bytes());
            mac.update(&msg[4..20 + offset]);
            if mac.verify_slice(value).is_err() {
                return StunVerdict::Rejected;
            }
            // Nothing but FINGERPRINT may follow (RFC 5389 15.4): attributes appended to a
            // signed message (USE-CANDIDATE, ICE-CONTROLLING) are not covered by it.
            return match &body[offset + 24..] {
                [] => StunVerdict::Authentic,
                [0x80, 0x28, 0x00, 0x04, _, _, _, _] => StunVerdict::Authentic,
                _ => StunVerdict::Rejected,
            };
        }
        offset += 4 + ((len + 3) & !3);
    }
    StunVerdict::Rejected
}

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

    /// RFC 5769 2.1: a binding request with USERNAME, MESSAGE-INTEGRITY and FINGERPRINT.
    const RFC5769_REQUEST: [u8; 108] = [
        0x00, 0x01, 0x00, 0x58, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6,
        0x86, 0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x10, 0x53, 0x54, 0x55, 0x4e, 0x20, 0x74,
        0x65, 0x73, 0x74, 0x20, 0x63, 0x6c, 0x69, 0x65, 0x6e, 0x74, 0x00, 0x24, 0x00, 0x04, 0x6e,
        0x00, 0x01, 0xff, 0x80, 0x29, 0x00, 0x08, 0x93, 0x2f, 0xf9, 0xb1, 0x51, 0x26, 0x3b, 0x36,
        0x00, 0x06, 0x00, 0x09, 0x65, 0x76, 0x74, 0x6a, 0x3a, 0x68, 0x36, 0x76, 0x59, 0x20, 0x20,
        0x20, 0x00, 0x08, 0x00, 0x14, 0x9a, 0xea, 0xa7, 0x0c, 0xbf, 0xd8, 0xcb, 0x56, 0x78, 0x1e,
        0xf2, 0xb5, 0xb2, 0xd3, 0xf2, 0x49, 0xc1, 0xb5, 0x71, 0xa2, 0x80, 0x28, 0x00, 0x04, 0xe5,
        0x7a, 0x3b, 0xcf,
    ];
    const RFC5769_PASSWORD: &[u8] = b"VOkJxbRl1RmTxUk/WvJxBt";

    #[test]
    fn accepts_a_binding_request_with_the_right_password_only() {
        let m = &RFC5769_REQUEST;
        assert_eq!(stun_server_ufrag(m), Some("evtj"));
        assert_eq!(
            check_stun(m, RFC5769_PASSWORD, None),
            StunVerdict::Authentic
        );
        assert_eq!(
            check_stun(m, b"VOkJxbRl1RmTxUk/WvJxBT", None),
            StunVerdict::Rejected
        );
        // Any changed byte before the integrity attribute breaks it (here: the tie-breaker
        // of ICE-CONTROLLED, what a forged role conflict would change).
        let mut forged = *m;
        forged[55] ^= 1;
        assert_eq!(
            check_stun(&forged, RFC5769_PASSWORD, None),
            StunVerdict::Rejected
        );
        // Without MESSAGE-INTEGRITY at all (cut before it, length fixed up).
        let mut bare = m[..76].to_vec();
        bare[3] = 56;
        assert_eq!(
            check_stun(&bare, RFC5769_PASSWORD, None),
            StunVerdict::Rejected
        );
        // A success response to one of our checks is signed with the peer's password (the
        // request above as a response, signed by Python's hmac with "theirs-password").
        let mut response = *m;
        response[0] = 0x01;
        assert_eq!(
            check_stun(&response, RFC5769_PASSWORD, Some(RFC5769_PASSWORD)),
            StunVerdict::Rejected,
            "a request's signature does not make a response"
        );
        response[80..100].copy_from_slice(&[
            0xa6, 0x50, 0x9b, 0x4b, 0x88, 0x33, 0xaa, 0x2d, 0xbd, 0xd5, 0x84, 0x9a, 0x27, 0x65,
            0x20, 0x6b, 0xf4, 0xb7, 0x35, 0xdc,
        ]);
        assert_eq!(
            check_stun(&response, b"ours", Some(b"theirs-password")),
            StunVerdict::Authentic
        );
        assert_eq!(
            check_stun(&response, b"theirs-password", None),
            StunVerdict::Rejected
        );
        let mut other = *m;
        other[1] = 0x03;
        assert_eq!(
            check_stun(&other, RFC5769_PASSWORD, None),
            StunVerdict::Rejected,
            "not a binding"
        );
        // An indication, truncated and bogus messages.
        let indication: Vec<u8> = stun(&[])
            .iter()
            .enumerate()
            .map(|(i, b)| if i == 1 { 0x11 } else { *b })
            .collect();
        assert_eq!(check_stun(&indication, b"x", None), StunVerdict::Keepalive);
        for cut in [0, 19, 20, 60, 107] {
            assert_eq!(
                check_stun(&m[..cut], RFC5769_PASSWORD, None),
                StunVerdict::Rejected,
                "{cut}"
            );
        }
        // An attribute appended after MESSAGE-INTEGRITY, even with the length fixed up.
        let mut appended = m.to_vec();
        appended.extend_from_slice(&[0x00, 0x25, 0x00, 0x00]); // USE-CANDIDATE
        appended[3] += 4;
        assert_eq!(
            check_stun(&appended, RFC5769_PASSWORD, None),
            StunVerdict::Rejected
        );
        let no_fingerprint = {
            let mut v = m[..100].to_vec();
            v[3] = 80;
            v
        };
        assert_eq!(
            check_stun(&no_fingerprint, RFC5769_PASSWORD, None),
            StunVerdict::Authentic,
            "FINGERPRINT is optional"
        );
        let mut short_mi = *m;
        short_mi[79] = 0x10;
        assert_eq!(
            check_stun(&short_mi, RFC5769_PASSWORD, None),
            StunVerdict::Rejected
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
