//! Building webrtc-rs peer connections the way medsfu needs them.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::distr::{Alphanumeric, SampleString};
use rtc::ice::mdns::MulticastDnsMode;
use rtc::interceptor::ReceiverReportBuilder;
use rtc::interceptor::{Attribute, Interceptor, Packet, Registry, Slot, StreamInfo, TaggedPacket};
use rtc::peer_connection::configuration::interceptor_registry::configure_twcc_receiver_only;
use rtc::peer_connection::configuration::media_engine::{
    MediaEngine, MIME_TYPE_H264, MIME_TYPE_HEVC, MIME_TYPE_OPUS, MIME_TYPE_VP8,
};
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::transport::{CandidateConfig, CandidateHostConfig, RTCIceCandidate};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpHeaderExtensionCapability, RtpCodecKind,
};

/// RFC 6464 client-to-mixer audio level, used to pick the active speaker.
pub const AUDIO_LEVEL_URI: &str = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";
use rtc::rtp_transceiver::RTCRtpSenderId;
use rtc::sansio::Protocol;
use rtc::shared::error::Error as RtcError;

/// Which way media flows on a peer connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The remote side publishes to us.
    Publish,
    /// We send subscribed tracks to the remote side.
    Subscribe,
}

fn video_feedback() -> Vec<RTCPFeedback> {
    [("nack", ""), ("nack", "pli"), ("ccm", "fir")]
        .into_iter()
        .map(|(t, p)| RTCPFeedback {
            typ: t.to_owned(),
            parameter: p.to_owned(),
        })
        .collect()
}

/// The codecs medsfu negotiates, in preference order: H.265 first, then H.264 and VP8 so
/// that today's browsers work, Opus for audio. No RTX: retransmissions reuse the SSRC.
pub fn codec_table() -> Vec<(RTCRtpCodecParameters, RtpCodecKind)> {
    let video = |mime: &str, pt: u8, fmtp: &str| {
        (
            RTCRtpCodecParameters {
                rtp_codec: RTCRtpCodec {
                    mime_type: mime.to_owned(),
                    clock_rate: 90_000,
                    channels: 0,
                    sdp_fmtp_line: fmtp.to_owned(),
                    rtcp_feedback: video_feedback(),
                },
                payload_type: pt,
            },
            RtpCodecKind::Video,
        )
    };
    vec![
        (
            RTCRtpCodecParameters {
                rtp_codec: RTCRtpCodec {
                    mime_type: MIME_TYPE_OPUS.to_owned(),
                    clock_rate: 48_000,
                    channels: 2,
                    sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
                    rtcp_feedback: vec![],
                },
                payload_type: 111,
            },
            RtpCodecKind::Audio,
        ),
        video(MIME_TYPE_HEVC, 126, ""),
        video(
            MIME_TYPE_H264,
            102,
            "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
        ),
        video(
            MIME_TYPE_H264,
            106,
            "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f",
        ),
        video(
            MIME_TYPE_H264,
            112,
            "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=64001f",
        ),
        video(MIME_TYPE_VP8, 96, ""),
    ]
}

/// Hands inbound RTCP (PLI, FIR, NACK, receiver reports) to medsfu, which terminates it
/// per leg instead of letting it reach the other side.
#[derive(Default)]
pub struct DeliverRtcp {
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for DeliverRtcp {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = RtcError;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if matches!(msg.message.packet, Packet::Rtcp(_)) {
            msg.message.add(Attribute::DeliverToApplication);
        }
        self.read.push_back(msg);
        Ok(())
    }
    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.read.pop_front()
    }
    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.write.push_back(msg);
        Ok(())
    }
    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.write.pop_front()
    }
    fn handle_timeout(&mut self, _now: Instant) -> Result<(), Self::Error> {
        Ok(())
    }
    fn poll_timeout(&mut self) -> Option<Self::Time> {
        None
    }
}

impl Interceptor for DeliverRtcp {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

/// A fresh ICE ufrag (also the demultiplexing key), starting with `tag` (the media
/// worker's, see `shard`), and password.
pub fn ice_credentials(tag: char) -> (String, String) {
    let mut rng = rand::rng();
    let mut ufrag = String::with_capacity(16);
    ufrag.push(tag);
    ufrag.push_str(&Alphanumeric.sample_string(&mut rng, 15));
    (ufrag, Alphanumeric.sample_string(&mut rng, 32))
}

/// Builds an ICE-lite peer connection whose only candidate is the shared media socket.
pub fn build(
    direction: Direction,
    ufrag: &str,
    pwd: &str,
    candidate: SocketAddr,
    now: Instant,
) -> Result<RTCPeerConnection, RtcError> {
    // webrtc-rs's ICE agent counts only STUN as a sign of life: media does not reach its
    // consent timer, so a client that stops checking once connected (GStreamer) would be
    // "failed" after 30 s with media flowing. Its timeouts are off; the engine decides
    // liveness from everything authenticated (STUN with integrity, SRTP, SRTCP).
    let settings = SettingEngineBuilder::new()
        .with_lite(true)
        .with_ice_credentials(ufrag.to_owned(), pwd.to_owned())
        .with_multicast_dns_mode(MulticastDnsMode::Disabled)
        .with_ice_timeouts(Some(Duration::ZERO), Some(Duration::ZERO), None)
        .build();
    let mut media = MediaEngine::default();
    for (codec, kind) in codec_table() {
        media.register_codec(codec, kind)?;
    }
    let registry = Registry::new().with(Slot::from(14_000), DeliverRtcp::default());
    // Receiver reports tell a publisher what arrived; transport-wide congestion feedback
    // lets publishing browsers ramp their bitrate up; audio levels tell who speaks. A
    // subscriber's sender reports come from the engine, which protects forwarded packets
    // outside the interceptors (`sender_report`).
    let registry = match direction {
        Direction::Publish => {
            let registry =
                registry.with(Slot::ReceiverReport, ReceiverReportBuilder::new().build());
            media.register_header_extension(
                RTCRtpHeaderExtensionCapability {
                    uri: AUDIO_LEVEL_URI.to_owned(),
                },
                RtpCodecKind::Audio,
                None,
            )?;
            configure_twcc_receiver_only(registry, &mut media)?
        }
        Direction::Subscribe => registry,
    };
    let mut pc = RTCPeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_setting_engine(settings)
        .with_media_engine(media)
        .with_interceptor_registry(registry)
        .build(now)?;
    add_host_candidate(&mut pc, candidate)?;
    Ok(pc)
}

/// The payload type a sender's negotiated codec goes out with, once negotiated.
pub fn sender_payload_type(pc: &mut RTCPeerConnection, sender: RTCRtpSenderId) -> Option<u8> {
    pc.rtp_sender(sender).and_then(|mut s| {
        s.get_parameters()
            .rtp_parameters
            .codecs
            .first()
            .map(|c| c.payload_type)
    })
}

/// Adds a UDP host candidate at `addr` (the one socket a peer connection uses).
pub fn add_host_candidate(pc: &mut RTCPeerConnection, addr: SocketAddr) -> Result<(), RtcError> {
    let host = CandidateHostConfig {
        base_config: CandidateConfig {
            network: "udp".to_owned(),
            address: addr.ip().to_string(),
            port: addr.port(),
            component: 1,
            ..Default::default()
        },
        ..Default::default()
    }
    .new_candidate_host()?;
    pc.add_local_candidate(RTCIceCandidate::from(&host).to_json()?)
}
