//! The vehicle's side of the protocol: connect with the device certificate, say hello,
//! send media datagrams, and keep the telemetry outbox flowing to the server.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use medsfu_telemetry::frame::Frame;
use medsfu_telemetry::journal::JournalError;
use medsfu_telemetry::outbox::Outbox;
use tokio::sync::mpsc;

use crate::protocol::{
    to_line, FlowInfo, ServerMessage, TelemetryReply, VehicleMessage, CONTROL, MAX_LINE, TELEMETRY,
};
use crate::tls::{client_config, TlsError};

/// Why the vehicle's link failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// TLS configuration.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The QUIC connection could not be made or was lost.
    #[error("connection: {0}")]
    Connection(String),
    /// The server refused what we sent.
    #[error("refused: {code}: {message}")]
    Refused {
        /// Stable code.
        code: String,
        /// Why.
        message: String,
    },
    /// The server sent something we do not understand.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The outbox failed.
    #[error(transparent)]
    Outbox(#[from] JournalError),
}

fn conn_err(e: impl std::fmt::Display) -> ClientError {
    ClientError::Connection(e.to_string())
}

/// Reads newline-delimited messages from a stream, at most [`MAX_LINE`] bytes each.
pub(crate) struct Lines {
    pub(crate) recv: quinn::RecvStream,
    buf: BytesMut,
}

impl Lines {
    pub(crate) fn new(recv: quinn::RecvStream) -> Lines {
        Lines {
            recv,
            buf: BytesMut::new(),
        }
    }

    /// The next line without its newline; `None` at the end of the stream.
    pub(crate) async fn next(&mut self) -> Result<Option<Bytes>, String> {
        loop {
            if let Some(line) = crate::protocol::take_line(&mut self.buf)? {
                return Ok(Some(line));
            }
            match self.recv.read_chunk(MAX_LINE, true).await {
                Ok(Some(c)) => self.buf.extend_from_slice(&c.bytes),
                Ok(None) => return Ok(None),
                Err(e) => return Err(e.to_string()),
            }
        }
    }
}

/// Bytes of datagrams a vehicle's connection queues before it drops the oldest.
pub const DATAGRAM_SEND_BUFFER: usize = 256 << 10;

/// A vehicle's QUIC endpoint with its device certificate.
pub fn endpoint(
    bind: SocketAddr,
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<quinn::Endpoint, ClientError> {
    let mut cfg = client_config(ca_pem, Some((cert_pem, key_pem)))?;
    let mut t = quinn::TransportConfig::default();
    // Notice a dead link quickly and reconnect; the server waits longer for us.
    t.max_idle_timeout(Duration::from_secs(5).try_into().ok());
    t.keep_alive_interval(Some(Duration::from_millis(500)));
    t.datagram_send_buffer_size(DATAGRAM_SEND_BUFFER);
    cfg.transport_config(Arc::new(t));
    let mut ep = quinn::Endpoint::client(bind).map_err(conn_err)?;
    ep.set_default_client_config(cfg);
    Ok(ep)
}

/// The control stream of a connected vehicle.
pub struct Control {
    send: quinn::SendStream,
    lines: Lines,
}

impl Control {
    /// The next message from the server; `None` when the stream ended.
    pub async fn next(&mut self) -> Result<Option<ServerMessage>, ClientError> {
        match self.lines.next().await.map_err(ClientError::Protocol)? {
            Some(l) => serde_json::from_slice(&l)
                .map(Some)
                .map_err(|e| ClientError::Protocol(e.to_string())),
            None => Ok(None),
        }
    }

    /// Sends a message to the server.
    pub async fn send(&mut self, m: &VehicleMessage) -> Result<(), ClientError> {
        self.send.write_all(&to_line(m)).await.map_err(conn_err)
    }

    /// Sends raw bytes (for tests of what the server does with bad input).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.send.write_all(bytes).await.map_err(conn_err)
    }
}

/// A vehicle connected to a room.
pub struct Connected {
    /// The QUIC connection (datagrams go here).
    pub conn: quinn::Connection,
    /// The control stream.
    pub control: Control,
    /// Our session in the room.
    pub participant: u64,
    /// The identity the server read from our certificate.
    pub identity: String,
    /// The room (call) we publish into.
    pub room: String,
}

/// Connects, opens the control stream and says hello; returns once welcomed. Without a
/// room, the server opens a call (or returns this vehicle's open one).
pub async fn connect(
    ep: &quinn::Endpoint,
    server: SocketAddr,
    server_name: &str,
    room: Option<&str>,
    flows: Vec<FlowInfo>,
) -> Result<Connected, ClientError> {
    let conn = ep
        .connect(server, server_name)
        .map_err(conn_err)?
        .await
        .map_err(conn_err)?;
    let (mut send, recv) = conn.open_bi().await.map_err(conn_err)?;
    send.write_all(&[CONTROL]).await.map_err(conn_err)?;
    let mut control = Control {
        send,
        lines: Lines::new(recv),
    };
    control
        .send(&VehicleMessage::Hello {
            room: room.map(str::to_owned),
            flows,
        })
        .await?;
    match control.next().await? {
        Some(ServerMessage::Welcome {
            participant,
            identity,
            room,
        }) => Ok(Connected {
            conn,
            control,
            participant,
            identity,
            room,
        }),
        Some(ServerMessage::Error { code, message }) => Err(ClientError::Refused { code, message }),
        Some(other) => Err(ClientError::Protocol(format!(
            "expected welcome, got {other:?}"
        ))),
        None => Err(ClientError::Protocol(
            "control stream closed before welcome".into(),
        )),
    }
}

/// A frame generated on the vehicle, already in the outbox.
#[derive(Debug, Clone)]
pub struct Generated {
    /// Its source.
    pub source: u32,
    /// Its sequence number.
    pub sequence: u64,
    /// Its encoded bytes.
    pub bytes: Vec<u8>,
}

/// Stores a frame in the outbox (durably) and hands it to the uplink.
pub fn generate(
    outbox: &Mutex<Outbox>,
    uplink: &mpsc::UnboundedSender<Generated>,
    frame: &Frame,
) -> Result<Generated, ClientError> {
    let bytes = frame.encode().map_err(JournalError::from)?;
    outbox
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(frame)?;
    let g = Generated {
        source: frame.source,
        sequence: frame.sequence,
        bytes,
    };
    // A closed uplink means the vehicle is shutting down; the outbox keeps the frame.
    let _ = uplink.send(g.clone());
    Ok(g)
}

/// Sends the outbox's unacknowledged frames, then every newly generated one, on a fresh
/// telemetry stream of `conn`, recording the server's acknowledgements in the outbox.
/// Returns when the connection or stream fails; call again on the next connection.
pub async fn telemetry_uplink(
    conn: &quinn::Connection,
    outbox: Arc<Mutex<Outbox>>,
    fresh: &mut mpsc::UnboundedReceiver<Generated>,
) -> Result<(), ClientError> {
    let (mut send, recv) = conn.open_bi().await.map_err(conn_err)?;
    send.write_all(&[TELEMETRY]).await.map_err(conn_err)?;
    // Frames generated while no stream was open are all in the outbox: resend from there.
    while fresh.try_recv().is_ok() {}
    let ob = outbox.clone();
    let pending =
        tokio::task::spawn_blocking(move || ob.lock().unwrap_or_else(|p| p.into_inner()).unacked())
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))??;
    let mut sent: HashMap<u32, u64> = HashMap::new();
    let mut batch = Vec::new();
    for bytes in pending {
        if let Ok((f, _)) = Frame::decode(&bytes) {
            sent.insert(f.source, f.sequence);
        }
        batch.extend_from_slice(&bytes);
    }
    if !batch.is_empty() {
        send.write_all(&batch).await.map_err(conn_err)?;
    }
    let mut lines = Lines::new(recv);
    // Once the generator is gone (the vehicle is stopping), only acknowledgements matter.
    let mut generating = true;
    loop {
        tokio::select! {
            g = fresh.recv(), if generating => {
                let Some(g) = g else {
                    generating = false;
                    continue;
                };
                if sent.get(&g.source).is_some_and(|s| g.sequence <= *s) {
                    continue;
                }
                sent.insert(g.source, g.sequence);
                let mut out = g.bytes;
                // Whatever else is ready goes in the same write.
                while let Ok(more) = fresh.try_recv() {
                    if sent.get(&more.source).is_some_and(|s| more.sequence <= *s) {
                        continue;
                    }
                    sent.insert(more.source, more.sequence);
                    out.extend_from_slice(&more.bytes);
                }
                send.write_all(&out).await.map_err(conn_err)?;
            }
            l = lines.next() => {
                let line = l.map_err(ClientError::Connection)?
                    .ok_or_else(|| ClientError::Connection("telemetry stream closed".into()))?;
                match serde_json::from_slice::<TelemetryReply>(&line) {
                    Ok(TelemetryReply::Ack { source, sequence }) => {
                        let ob = outbox.clone();
                        tokio::task::spawn_blocking(move || {
                            ob.lock().unwrap_or_else(|p| p.into_inner()).ack(source, sequence)
                        })
                        .await
                        .map_err(|e| ClientError::Protocol(e.to_string()))??;
                    }
                    Ok(TelemetryReply::Error { code, message }) => {
                        return Err(ClientError::Refused { code, message });
                    }
                    Err(e) => return Err(ClientError::Protocol(e.to_string())),
                }
            }
        }
    }
}
