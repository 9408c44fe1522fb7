//! The little SDP reading the shell does itself, before webrtc-rs sees an offer.

use std::collections::HashMap;

use medsfu_core::{CoreError, MediaKind, Role, TrackSource};

/// One m-section of an offer, as far as medsfu needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaSection {
    /// Audio or video (`None` for application or unknown media).
    pub kind: Option<MediaKind>,
    /// The `a=mid` value.
    pub mid: Option<String>,
    /// Whether the offerer will send media on it (sendrecv or sendonly).
    pub offerer_sends: bool,
    /// Whether the offerer wants to receive on it (sendrecv or recvonly).
    pub offerer_receives: bool,
}

/// Why an offer was refused before negotiation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SdpError {
    /// The text is not an SDP session description.
    #[error("not an SDP session description: {0}")]
    NotSdp(&'static str),
    /// The description is larger than medsfu accepts.
    #[error("SDP larger than {0} bytes")]
    TooLarge(usize),
}

/// Largest SDP accepted (a browser offer with many m-lines is far below this).
pub const MAX_SDP_BYTES: usize = 64 * 1024;

/// Checks the outline of an SDP and lists its m-sections.
pub fn media_sections(sdp: &str) -> Result<Vec<MediaSection>, SdpError> {
    if sdp.len() > MAX_SDP_BYTES {
        return Err(SdpError::TooLarge(MAX_SDP_BYTES));
    }
    let mut lines = sdp.lines().map(str::trim_end).filter(|l| !l.is_empty());
    if lines.next() != Some("v=0") {
        return Err(SdpError::NotSdp("it must start with v=0"));
    }
    let mut out: Vec<MediaSection> = Vec::new();
    for line in lines {
        if line.len() < 2 || line.as_bytes()[1] != b'=' {
            return Err(SdpError::NotSdp("every line must be <type>=<value>"));
        }
        if let Some(m) = line.strip_prefix("m=") {
            let kind = match m.split(' ').next() {
                Some("audio") => Some(MediaKind::Audio),
                Some("video") => Some(MediaKind::Video),
                _ => None,
            };
            out.push(MediaSection {
                kind,
                mid: None,
                offerer_sends: true,
                offerer_receives: true,
            });
        } else if let Some(cur) = out.last_mut() {
            match line {
                "a=sendonly" => (cur.offerer_sends, cur.offerer_receives) = (true, false),
                "a=recvonly" => (cur.offerer_sends, cur.offerer_receives) = (false, true),
                "a=inactive" => (cur.offerer_sends, cur.offerer_receives) = (false, false),
                "a=sendrecv" => (cur.offerer_sends, cur.offerer_receives) = (true, true),
                _ => {
                    if let Some(mid) = line.strip_prefix("a=mid:") {
                        cur.mid = Some(mid.to_owned());
                    }
                }
            }
        }
    }
    if out.is_empty() {
        return Err(SdpError::NotSdp("it has no m= section"));
    }
    Ok(out)
}

/// Checks that `role` may publish every m-section the offerer sends on, with the source
/// named for its mid in `sources` (or the role's default for its kind).
pub fn check_publish(
    role: Role,
    sections: &[MediaSection],
    sources: &HashMap<String, TrackSource>,
) -> Result<(), CoreError> {
    for m in sections {
        let (Some(kind), true) = (m.kind, m.offerer_sends) else {
            continue;
        };
        let source = m
            .mid
            .as_ref()
            .and_then(|mid| sources.get(mid))
            .copied()
            .unwrap_or_else(|| TrackSource::default_for(role, kind));
        if source.kind() != kind {
            return Err(CoreError::CodecMismatch {
                codec: if kind == MediaKind::Video {
                    "video"
                } else {
                    "audio"
                },
                track_source: source,
            });
        }
        if !role.may_publish(source) {
            return Err(CoreError::PublishForbidden {
                role,
                track_source: source,
            });
        }
    }
    Ok(())
}

/// Gives `a=bundle-only` m-sections (port 0 in an offer, RFC 8843) the discard port, so
/// that they are negotiated on the BUNDLE transport instead of being read as rejected.
pub fn accept_bundle_only(sdp: &str) -> String {
    let mut out = String::with_capacity(sdp.len());
    let lines: Vec<&str> = sdp.split_inclusive('\n').collect();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if line.starts_with("m=") {
            let end = lines[i + 1..]
                .iter()
                .position(|l| l.starts_with("m="))
                .map_or(lines.len(), |p| i + 1 + p);
            let bundle_only = lines[i + 1..end]
                .iter()
                .any(|l| l.trim_end() == "a=bundle-only");
            let mut parts = line.splitn(3, ' ');
            let (media, port, rest) = (parts.next(), parts.next(), parts.next());
            match (bundle_only, media, port, rest) {
                (true, Some(m), Some("0"), Some(r)) => {
                    out.push_str(m);
                    out.push_str(" 9 ");
                    out.push_str(r);
                }
                _ => out.push_str(line),
            }
            for l in &lines[i + 1..end] {
                out.push_str(l);
            }
            i = end;
        } else {
            out.push_str(line);
            i += 1;
        }
    }
    out
}

/// The `a=candidate:` lines of a trickle-ice-sdpfrag body (RFC 8840), with their mid.
pub fn sdpfrag_candidates(frag: &str) -> Vec<(Option<String>, String)> {
    let mut mid = None;
    let mut out = Vec::new();
    for line in frag.lines().map(str::trim_end) {
        if let Some(m) = line.strip_prefix("a=mid:") {
            mid = Some(m.to_owned());
        } else if let Some(c) = line.strip_prefix("a=") {
            if c.starts_with("candidate:") {
                out.push((mid.clone(), c.to_owned()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
a=group:BUNDLE 0 1\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendonly\r\na=rtpmap:111 opus/48000/2\r\n\
m=video 0 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=bundle-only\r\na=mid:1\r\na=recvonly\r\na=rtpmap:96 H265/90000\r\n";

    #[test]
    fn lists_sections_with_direction() {
        let s = media_sections(OFFER).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].kind, Some(MediaKind::Audio));
        assert_eq!(s[0].mid.as_deref(), Some("0"));
        assert!(s[0].offerer_sends && !s[0].offerer_receives);
        assert_eq!(s[1].kind, Some(MediaKind::Video));
        assert!(!s[1].offerer_sends && s[1].offerer_receives);
    }

    #[test]
    fn publishing_is_checked_against_the_role() {
        let s = media_sections(OFFER).unwrap();
        let none = HashMap::new();
        assert!(
            check_publish(Role::Dispatcher, &s, &none).is_ok(),
            "audio: microphone"
        );
        assert_eq!(
            check_publish(Role::Recorder, &s, &none).map_err(|e| e.code()),
            Err("publish_forbidden")
        );
        let cam = HashMap::from([("0".to_owned(), TrackSource::Camera)]);
        assert_eq!(
            check_publish(Role::Team, &s, &cam).map_err(|e| e.code()),
            Err("codec_mismatch"),
            "an audio section declared as a camera"
        );
    }

    #[test]
    fn refuses_what_is_not_sdp() {
        assert!(matches!(media_sections("hello"), Err(SdpError::NotSdp(_))));
        assert!(matches!(
            media_sections("v=0\r\nbogus\r\n"),
            Err(SdpError::NotSdp(_))
        ));
        assert!(matches!(
            media_sections("v=0\r\ns=-\r\n"),
            Err(SdpError::NotSdp(_))
        ));
        let big = format!("v=0\r\n{}", "a=x\r\n".repeat(20_000));
        assert_eq!(media_sections(&big), Err(SdpError::TooLarge(MAX_SDP_BYTES)));
    }

    #[test]
    fn bundle_only_sections_get_the_discard_port() {
        let fixed = accept_bundle_only(OFFER);
        assert!(fixed.contains("m=video 9 UDP/TLS/RTP/SAVPF 96\r\n"));
        assert!(fixed.contains("m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"));
        assert_eq!(fixed.len(), OFFER.len());
        // A rejected section without bundle-only keeps its port 0.
        let rejected = OFFER.replace("a=bundle-only\r\n", "");
        assert!(accept_bundle_only(&rejected).contains("m=video 0 "));
    }

    #[test]
    fn reads_candidates_from_an_sdpfrag() {
        let frag = "a=ice-ufrag:abc\r\na=ice-pwd:xyz\r\nm=audio 9 RTP/AVP 0\r\na=mid:0\r\n\
a=candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host\r\na=end-of-candidates\r\n";
        let c = sdpfrag_candidates(frag);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].0.as_deref(), Some("0"));
        assert!(c[0].1.starts_with("candidate:1 1 udp"));
    }
}
