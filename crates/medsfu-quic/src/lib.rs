//! medsfu's QUIC shell for vehicles.
//!
//! So far: device certificates and mutual TLS. Only a device holding a certificate from the
//! operator's CA, valid now and not revoked, completes the handshake; its identity is the
//! certificate's common name, never something it claims later.

#![forbid(unsafe_code)]

pub mod pki;
pub mod tls;

pub use tls::{client_config, device_identity, server_config, TlsError, ALPN};
