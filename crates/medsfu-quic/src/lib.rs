//! medsfu's QUIC shell for vehicles.
//!
//! Only a device holding a certificate from the operator's CA, valid now and not revoked,
//! completes the handshake; its identity is the certificate's common name, never something
//! it claims later. Its media arrive as RTP in QUIC datagrams ([`flow`]), its telemetry and
//! control messages on reliable streams ([`protocol`]); [`server`] puts them into the room
//! core and the telemetry journal, [`client`] is the vehicle's side.

#![forbid(unsafe_code)]

pub mod client;
pub mod flow;
pub mod pki;
pub mod protocol;
pub mod server;
pub mod tls;
pub mod uplink;

pub use tls::{client_config, device_identity, server_config, TlsError, ALPN};
