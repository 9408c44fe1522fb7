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
    /// The codecs it lists (`a=rtpmap` with their `a=fmtp`), in the offer's order.
    pub codecs: Vec<OfferedCodec>,
}

/// One codec of an m-section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferedCodec {
    /// The payload type.
    pub payload_type: u8,
    /// The encoding name as written (`H264`, `VP8`, `opus`, ...).
    pub name: String,
    /// The `a=fmtp` parameters, empty when there are none.
    pub fmtp: String,
}

impl MediaSection {
    /// Whether this section takes a stream in `mime` (`video/H264`) with `fmtp`: the name
    /// matches and, for H.264, a listed profile decodes it (RFC 6184).
    pub fn accepts(&self, mime: &str, fmtp: &str) -> bool {
        self.codec_for(mime, fmtp).is_some()
    }

    /// The first codec of this section that takes a stream in `mime` with `fmtp`.
    pub fn codec_for(&self, mime: &str, fmtp: &str) -> Option<&OfferedCodec> {
        let name = mime.rsplit('/').next().unwrap_or(mime);
        self.codecs.iter().find(|c| {
            c.name.eq_ignore_ascii_case(name)
                && (!name.eq_ignore_ascii_case("h264") || h264_decodes(&c.fmtp, fmtp))
        })
    }
}

/// Whether a receiver that lists H.264 with `receiver` parameters decodes a stream sent with
/// `sent` parameters.
pub fn h264_decodes(receiver: &str, sent: &str) -> bool {
    use medsfu_codec::h264_profile::H264Format;
    match (H264Format::from_fmtp(receiver), H264Format::from_fmtp(sent)) {
        (Some(r), Some(s)) => r.decodes(&s),
        _ => false,
    }
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
    /// An offer with more m-sections than medsfu accepts.
    #[error("more than {0} m-sections in one offer")]
    TooManySections(usize),
}

/// Most m-sections in a client's offer (a browser publishing camera, screen and voice, or
/// watching a busy room, needs far fewer); each costs a transceiver and its state.
pub const MAX_OFFER_SECTIONS: usize = 32;

/// [`media_sections`] of a client's offer, refused beyond [`MAX_OFFER_SECTIONS`].
pub fn offered_sections(sdp: &str) -> Result<Vec<MediaSection>, SdpError> {
    let sections = media_sections(sdp)?;
    if sections.len() > MAX_OFFER_SECTIONS {
        return Err(SdpError::TooManySections(MAX_OFFER_SECTIONS));
    }
    Ok(sections)
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
                codecs: Vec::new(),
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
                    } else if let Some((pt, v)) = attribute_of_pt(line, "a=rtpmap:") {
                        let name = v.split('/').next().unwrap_or_default();
                        cur.codecs.push(OfferedCodec {
                            payload_type: pt,
                            name: name.to_owned(),
                            fmtp: String::new(),
                        });
                    } else if let Some((pt, v)) = attribute_of_pt(line, "a=fmtp:") {
                        if let Some(c) = cur.codecs.iter_mut().find(|c| c.payload_type == pt) {
                            c.fmtp = v.trim().to_owned();
                        }
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

/// The first non-empty `a=ice-pwd:` of a description (session or media level;
/// medsfu bundles all).
pub fn ice_pwd(sdp: &str) -> Option<&str> {
    first_value(sdp, "a=ice-pwd:").filter(|v| !v.is_empty())
}

/// The first `a=ice-ufrag:` of a description or fragment.
pub fn ice_ufrag(sdp: &str) -> Option<&str> {
    first_value(sdp, "a=ice-ufrag:")
}

/// The value of the first line that starts with `prefix`, trimmed.
fn first_value<'a>(sdp: &'a str, prefix: &str) -> Option<&'a str> {
    sdp.lines()
        .find_map(|l| l.trim_end().strip_prefix(prefix))
        .map(str::trim)
}

/// `a=rtpmap:96 VP8/90000` as `(96, "VP8/90000")` for `prefix` `a=rtpmap:`.
fn attribute_of_pt<'a>(line: &'a str, prefix: &str) -> Option<(u8, &'a str)> {
    let (pt, value) = line.strip_prefix(prefix)?.split_once(' ')?;
    Some((pt.parse().ok()?, value))
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

/// Checks a WHIP offer as a whole: a role that may publish nothing is refused whatever the
/// offer says (`recorder`, `admin`), and an offer must send audio or video; then each sending
/// m-section as [`check_publish`] does.
pub fn check_whip(role: Role, sections: &[MediaSection]) -> Result<(), crate::MediaError> {
    let sending = sections
        .iter()
        .find_map(|m| m.kind.filter(|_| m.offerer_sends));
    if !TrackSource::ALL.iter().any(|s| role.may_publish(*s)) {
        let kind = sending.unwrap_or(MediaKind::Video);
        return Err(CoreError::PublishForbidden {
            role,
            track_source: TrackSource::default_for(role, kind),
        }
        .into());
    }
    if sending.is_none() {
        return Err(crate::MediaError::BadSdp(
            "a WHIP offer must send audio or video (no sendonly or sendrecv m-section)".into(),
        ));
    }
    check_publish(role, sections, &HashMap::new()).map_err(Into::into)
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
    fn lists_codecs_and_what_each_section_accepts() {
        // The video section of Chromium 156's recvonly offer (captured on Debian).
        let chromium =
            "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96 102 104 108\r\na=mid:0\r\na=recvonly\r\n\
a=rtpmap:96 VP8/90000\r\na=rtpmap:102 H264/90000\r\n\
a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f\r\n\
a=rtpmap:104 H264/90000\r\n\
a=fmtp:104 level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42001f\r\n\
a=fmtp:999 ignored\r\na=fmtp:x ignored\r\na=rtpmap:bad\r\n";
        let s = media_sections(chromium).unwrap();
        assert_eq!(s[0].codecs.len(), 3);
        assert_eq!(s[0].codecs[1].payload_type, 102);
        assert_eq!(s[0].codecs[1].name, "H264");
        assert!(s[0].codecs[1].fmtp.ends_with("42001f"));
        assert!(s[0].accepts("video/VP8", ""));
        assert!(!s[0].accepts("video/H265", ""));
        // GStreamer's x264 constrained baseline, which a 4-digit comparison refused.
        assert!(s[0].accepts("video/H264", "packetization-mode=1;profile-level-id=42c01f"));
        assert!(!s[0].accepts("video/H264", "packetization-mode=1;profile-level-id=640028"));
    }

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
    fn whip_needs_a_role_that_publishes_and_an_offer_that_sends() {
        let s = media_sections(OFFER).unwrap();
        let recv_only = media_sections(&OFFER.replace("a=sendonly", "a=recvonly")).unwrap();
        for role in [Role::Admin, Role::Recorder] {
            for offer in [&s, &recv_only] {
                assert_eq!(
                    check_whip(role, offer).map_err(|e| e.code()),
                    Err("publish_forbidden"),
                    "{role}"
                );
            }
        }
        assert_eq!(
            check_whip(Role::Team, &recv_only).map_err(|e| e.code()),
            Err("bad_sdp")
        );
        assert!(check_whip(Role::Team, &s).is_ok());
        assert!(
            check_whip(Role::Dispatcher, &s).is_ok(),
            "audio: microphone"
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

    #[test]
    fn an_offer_with_hundreds_of_sections_is_refused() {
        let offer = |n: usize| {
            let mut s = String::from("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n");
            for i in 0..n {
                s.push_str(&format!("m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:{i}\r\n"));
            }
            s
        };
        assert_eq!(
            offered_sections(&offer(MAX_OFFER_SECTIONS)).unwrap().len(),
            32
        );
        assert_eq!(
            offered_sections(&offer(500)).unwrap_err(),
            SdpError::TooManySections(MAX_OFFER_SECTIONS)
        );
        // The server's own descriptions are not held to it.
        assert_eq!(media_sections(&offer(500)).unwrap().len(), 500);
    }
}
