//! A minimal WebRTC client that is not a browser: a WHIP publisher and a WHEP subscriber
//! over webrtc-rs (`rtc`, sans-IO) with one UDP socket each. It exists so that medsfu's
//! tests and load generator speak standard WHIP/WHEP to any server, medsfu or another.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use rtc::peer_connection::configuration::interceptor_registry::configure_rtcp_reports;
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::event::RTCPeerConnectionEvent;
use rtc::peer_connection::message::RTCMessage;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters,
    RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpSenderId, RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};

pub use rtc::rtp::packet::Packet as RtpPacket;

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The HTTP exchange failed.
    #[error("http: {0}")]
    Http(#[from] reqwest::Error),
    /// The server refused the offer.
    #[error("server answered {status}: {body}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// Response body.
        body: String,
    },
    /// webrtc-rs reported an error.
    #[error("webrtc: {0}")]
    WebRtc(String),
    /// Local socket error.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

fn rtc_err(e: impl std::fmt::Display) -> ClientError {
    ClientError::WebRtc(e.to_string())
}

/// A codec to publish or accept.
#[derive(Debug, Clone)]
pub struct CodecSpec {
    /// MIME type, e.g. `video/H265`.
    pub mime: String,
    /// Payload type to offer.
    pub payload_type: u8,
    /// RTP clock rate.
    pub clock_rate: u32,
    /// Audio channels (0 for video).
    pub channels: u16,
    /// fmtp line.
    pub fmtp: String,
}

impl CodecSpec {
    /// H.265 at 90 kHz.
    pub fn h265() -> CodecSpec {
        CodecSpec {
            mime: "video/H265".into(),
            payload_type: 98,
            clock_rate: 90_000,
            channels: 0,
            fmtp: String::new(),
        }
    }

    /// Opus stereo at 48 kHz.
    pub fn opus() -> CodecSpec {
        CodecSpec {
            mime: "audio/opus".into(),
            payload_type: 111,
            clock_rate: 48_000,
            channels: 2,
            fmtp: "minptime=10;useinbandfec=1".into(),
        }
    }

    fn kind(&self) -> RtpCodecKind {
        if self.mime.to_ascii_lowercase().starts_with("video/") {
            RtpCodecKind::Video
        } else {
            RtpCodecKind::Audio
        }
    }

    fn rtc(&self) -> RTCRtpCodec {
        let fb = if self.kind() == RtpCodecKind::Video {
            vec![
                RTCPFeedback {
                    typ: "nack".into(),
                    parameter: String::new(),
                },
                RTCPFeedback {
                    typ: "nack".into(),
                    parameter: "pli".into(),
                },
            ]
        } else {
            vec![]
        };
        RTCRtpCodec {
            mime_type: self.mime.clone(),
            clock_rate: self.clock_rate,
            channels: self.channels,
            sdp_fmtp_line: self.fmtp.clone(),
            rtcp_feedback: fb,
        }
    }
}

/// A received packet with its arrival time.
#[derive(Debug, Clone)]
pub struct Received {
    /// When the datagram carrying it was read.
    pub at: Instant,
    /// The packet.
    pub packet: RtpPacket,
}

/// What the client's driver reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Negotiated, not connected yet.
    Connecting,
    /// DTLS is up; media flows.
    Connected,
    /// The connection failed or closed.
    Closed,
}

/// A running WHIP or WHEP session.
pub struct Session {
    /// The session URL (`Location`), for PATCH and DELETE.
    pub location: String,
    base: String,
    token: String,
    rtp_tx: mpsc::UnboundedSender<RtpPacket>,
    /// Packets received (WHEP) on the session's tracks.
    pub received: mpsc::UnboundedReceiver<Received>,
    /// Connection state.
    pub state: watch::Receiver<State>,
    /// Keyframe requests (PLI) received from the server (WHIP).
    pub keyframe_requests: watch::Receiver<u64>,
    /// Negotiated payload type of the published track (WHIP).
    pub payload_type: u8,
    /// SSRC of the published track (WHIP).
    pub ssrc: u32,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Session {
    /// Queues an RTP packet for the published track (SSRC and PT are set here).
    pub fn send(&self, mut packet: RtpPacket) {
        packet.header.ssrc = self.ssrc;
        packet.header.payload_type = self.payload_type;
        // A closed driver means the session ended; the packet has nowhere to go.
        let _ = self.rtp_tx.send(packet);
    }

    /// Waits until the connection is up (or failed).
    pub async fn connected(&mut self) -> State {
        let s = self
            .state
            .wait_for(|s| *s != State::Connecting)
            .await
            .map(|s| *s)
            .unwrap_or(State::Closed);
        s
    }

    /// Ends the session with `DELETE`, as a well-behaved client does.
    pub async fn delete(mut self) -> Result<u16, ClientError> {
        let url = format!("{}{}", self.base, self.location);
        let r = reqwest::Client::new()
            .delete(url)
            .bearer_auth(&self.token)
            .send()
            .await?;
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        Ok(r.status().as_u16())
    }

    /// Stops driving the connection without telling the server (a vanished client).
    pub fn vanish(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

fn build_pc(
    codecs: &[CodecSpec],
    local: SocketAddr,
    now: Instant,
) -> Result<RTCPeerConnection, ClientError> {
    let mut media = MediaEngine::default();
    for c in codecs {
        media
            .register_codec(
                RTCRtpCodecParameters {
                    rtp_codec: c.rtc(),
                    payload_type: c.payload_type,
                },
                c.kind(),
            )
            .map_err(rtc_err)?;
    }
    // Keyframe requests from the server must reach the publisher's "encoder".
    let registry = configure_rtcp_reports(rtc::interceptor::Registry::new()).with(
        rtc::interceptor::Slot::from(14_000),
        medsfu_media::DeliverRtcp::default(),
    );
    let mut pc = RTCPeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_media_engine(media)
        .with_interceptor_registry(registry)
        .build(now)
        .map_err(rtc_err)?;
    medsfu_media::add_host_candidate(&mut pc, local).map_err(rtc_err)?;
    Ok(pc)
}

async fn exchange(url: &str, token: &str, offer: String) -> Result<(String, String), ClientError> {
    let r = reqwest::Client::new()
        .post(url)
        .bearer_auth(token)
        .header("content-type", "application/sdp")
        .body(offer)
        .send()
        .await?;
    let status = r.status().as_u16();
    let location = r
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = r.text().await?;
    if status != 201 {
        return Err(ClientError::Refused { status, body });
    }
    Ok((location, body))
}

/// Offers, POSTs the offer (after `edit`) to `url`, applies the answer; returns `Location`.
async fn negotiate(
    pc: &mut RTCPeerConnection,
    url: &str,
    token: &str,
    edit: impl FnOnce(String) -> String,
) -> Result<String, ClientError> {
    let offer = pc.create_offer(None).map_err(rtc_err)?;
    pc.set_local_description(Instant::now(), offer)
        .map_err(rtc_err)?;
    let sdp = pc
        .local_description()
        .map(|d| d.sdp.clone())
        .unwrap_or_default();
    let (location, answer) = exchange(url, token, edit(sdp)).await?;
    let answer = RTCSessionDescription::answer(answer).map_err(rtc_err)?;
    pc.set_remote_description(Instant::now(), answer)
        .map_err(rtc_err)?;
    Ok(location)
}

/// Publishes one track with WHIP to `{base}/whip/{room}`.
pub async fn whip(
    base: &str,
    room: &str,
    token: &str,
    codec: CodecSpec,
) -> Result<Session, ClientError> {
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    let local = socket.local_addr()?;
    let now = Instant::now();
    let mut pc = build_pc(std::slice::from_ref(&codec), local, now)?;
    let ssrc: u32 = rand_ssrc();
    let tid = pc
        .add_transceiver_from_kind(
            codec.kind(),
            Some(RTCRtpTransceiverInit {
                direction: RTCRtpTransceiverDirection::Sendonly,
                streams: vec!["medsfu-client".into()],
                send_encodings: vec![RTCRtpEncodingParameters {
                    rtp_coding_parameters: RTCRtpCodingParameters {
                        ssrc: Some(ssrc),
                        ..Default::default()
                    },
                    codec: codec.rtc(),
                    active: true,
                    ..Default::default()
                }],
            }),
        )
        .map_err(rtc_err)?;
    let location = negotiate(&mut pc, &format!("{base}/whip/{room}"), token, |sdp| sdp).await?;
    let sender = RTCRtpSenderId::from(tid);
    let payload_type =
        medsfu_media::sender_payload_type(&mut pc, sender).unwrap_or(codec.payload_type);
    Ok(spawn(
        pc,
        socket,
        local,
        Some(sender),
        base,
        token,
        location,
        payload_type,
        ssrc,
    ))
}

/// Subscribes with WHEP to `{base}/whep/{room}`, receiving one track per codec given.
pub async fn whep(
    base: &str,
    room: &str,
    token: &str,
    codecs: &[CodecSpec],
) -> Result<Session, ClientError> {
    whep_with(base, room, token, codecs, |sdp| sdp).await
}

/// Like [`whep`], with the offer passed through `edit` before it is sent (to imitate what
/// other clients put in their offers).
pub async fn whep_with(
    base: &str,
    room: &str,
    token: &str,
    codecs: &[CodecSpec],
    edit: impl FnOnce(String) -> String,
) -> Result<Session, ClientError> {
    whep_at(base, &format!("{base}/whep/{room}"), token, codecs, edit).await
}

/// Subscribes with WHEP to one track of the room (`{base}/whep/{room}?track={track}`),
/// offering the given codecs of its kind.
pub async fn whep_track(
    base: &str,
    room: &str,
    token: &str,
    codecs: &[CodecSpec],
    track: &str,
) -> Result<Session, ClientError> {
    let url = format!("{base}/whep/{room}?track={track}");
    whep_at(base, &url, token, codecs, |sdp| sdp).await
}

/// A UDP socket on the address this host reaches the server of `base` from (loopback for
/// a server on this host), so that a subscriber on another machine is reachable too.
async fn socket_towards(base: &str) -> Result<UdpSocket, ClientError> {
    let authority = base
        .split_once("://")
        .map_or(base, |(_, rest)| rest)
        .split('/')
        .next()
        .unwrap_or_default();
    let with_port = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let server = tokio::net::lookup_host(with_port)
        .await?
        .next()
        .ok_or_else(|| {
            ClientError::Io(std::io::Error::other(format!("{authority} has no address")))
        })?;
    let unspecified: SocketAddr = if server.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    // Connecting a UDP socket sends nothing; it only picks the route and its address.
    let probe = UdpSocket::bind(unspecified).await?;
    probe.connect(server).await?;
    Ok(UdpSocket::bind((probe.local_addr()?.ip(), 0)).await?)
}

async fn whep_at(
    base: &str,
    url: &str,
    token: &str,
    codecs: &[CodecSpec],
    edit: impl FnOnce(String) -> String,
) -> Result<Session, ClientError> {
    let socket = socket_towards(base).await?;
    let local = socket.local_addr()?;
    let mut pc = build_pc(codecs, local, Instant::now())?;
    let mut kinds = Vec::new();
    for c in codecs {
        if !kinds.contains(&c.kind()) {
            kinds.push(c.kind());
        }
    }
    for k in kinds {
        pc.add_transceiver_from_kind(
            k,
            Some(RTCRtpTransceiverInit {
                direction: RTCRtpTransceiverDirection::Recvonly,
                streams: vec![],
                send_encodings: vec![],
            }),
        )
        .map_err(rtc_err)?;
    }
    let location = negotiate(&mut pc, url, token, edit).await?;
    Ok(spawn(pc, socket, local, None, base, token, location, 0, 0))
}

fn rand_ssrc() -> u32 {
    // Distinct per session; uniqueness across sessions is what matters, not secrecy.
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    t ^ std::process::id().rotate_left(16) ^ 0x5EED_0000
}

#[allow(clippy::too_many_arguments)]
fn spawn(
    pc: RTCPeerConnection,
    socket: UdpSocket,
    local: SocketAddr,
    sender: Option<RTCRtpSenderId>,
    base: &str,
    token: &str,
    location: String,
    payload_type: u8,
    ssrc: u32,
) -> Session {
    let (rtp_tx, rtp_rx) = mpsc::unbounded_channel();
    let (recv_tx, received) = mpsc::unbounded_channel();
    let (state_tx, state) = watch::channel(State::Connecting);
    let (pli_tx, keyframe_requests) = watch::channel(0u64);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(drive(
        pc, socket, local, sender, rtp_rx, recv_tx, state_tx, pli_tx, stop_rx,
    ));
    Session {
        location,
        base: base.to_owned(),
        token: token.to_owned(),
        rtp_tx,
        received,
        state,
        keyframe_requests,
        payload_type,
        ssrc,
        stop: Some(stop_tx),
    }
}

#[allow(clippy::too_many_arguments)]
async fn drive(
    mut pc: RTCPeerConnection,
    socket: UdpSocket,
    local: SocketAddr,
    sender: Option<RTCRtpSenderId>,
    mut rtp_rx: mpsc::UnboundedReceiver<RtpPacket>,
    recv_tx: mpsc::UnboundedSender<Received>,
    state_tx: watch::Sender<State>,
    pli_tx: watch::Sender<u64>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let mut buf = vec![0u8; 2048];
    loop {
        while let Some(out) = pc.poll_write() {
            let _ = socket.send_to(&out.message, out.transport.peer_addr).await;
        }
        while let Some(ev) = pc.poll_event() {
            if let RTCPeerConnectionEvent::OnConnectionStateChangeEvent(s) = ev {
                match s {
                    RTCPeerConnectionState::Connected => {
                        let _ = state_tx.send(State::Connected);
                    }
                    RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => {
                        let _ = state_tx.send(State::Closed);
                        return;
                    }
                    _ => {}
                }
            }
        }
        while let Some(m) = pc.poll_read() {
            match m.message {
                RTCMessage::RtpPacket(_, packet) => {
                    let _ = recv_tx.send(Received { at: m.now, packet });
                }
                RTCMessage::RtcpPacket(_, packets) => {
                    use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
                    let n = packets
                        .iter()
                        .filter(|p| p.as_any().downcast_ref::<PictureLossIndication>().is_some())
                        .count() as u64;
                    if n > 0 {
                        pli_tx.send_modify(|c| *c += n);
                    }
                }
                _ => {}
            }
        }
        let timeout = pc.poll_timeout();
        let sleep = async {
            match timeout {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut stop => {
                let _ = state_tx.send(State::Closed);
                return;
            }
            r = socket.recv_from(&mut buf) => {
                if let Ok((n, peer)) = r {
                    let _ = pc.handle_read(TaggedBytesMut {
                        now: Instant::now(),
                        transport: TransportContext {
                            local_addr: local,
                            peer_addr: peer,
                            ecn: None,
                            transport_protocol: TransportProtocol::UDP,
                        },
                        message: BytesMut::from(&buf[..n]),
                    });
                }
            }
            p = rtp_rx.recv() => match (p, sender) {
                (Some(p), Some(s)) => {
                    if let Some(mut snd) = pc.rtp_sender(s) {
                        let _ = snd.write_rtp(Instant::now(), p);
                    }
                }
                (None, _) => {}
                _ => {}
            },
            () = sleep => {
                let _ = pc.handle_timeout(Instant::now());
            }
        }
    }
}

/// Builds an RTP packet (SSRC and payload type are filled in by [`Session::send`]).
pub fn packet(seq: u16, timestamp: u32, marker: bool, payload: Bytes) -> RtpPacket {
    RtpPacket {
        header: rtc::rtp::header::Header {
            version: 2,
            marker,
            sequence_number: seq,
            timestamp,
            ..Default::default()
        },
        payload,
    }
}
