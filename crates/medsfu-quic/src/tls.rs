//! rustls configuration for the vehicle endpoint (ring provider, passed explicitly).

use std::collections::HashSet;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

/// ALPN of medsfu's vehicle protocol, version 1.
pub const ALPN: &[u8] = b"medsfu-vehicle/1";

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM input holds no usable item.
    #[error("{what}: {reason}")]
    Pem {
        /// Which input.
        what: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client-certificate verifier could not be built.
    #[error("client verifier: {0}")]
    Verifier(String),
    /// QUIC needs TLS 1.3 with a suitable cipher suite.
    #[error("QUIC: {0}")]
    Quic(String),
}

fn pem_err(what: &'static str) -> impl Fn(rustls::pki_types::pem::Error) -> TlsError {
    move |e| TlsError::Pem {
        what,
        reason: e.to_string(),
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(pem: &str, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let v = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_err(what))?;
    if v.is_empty() {
        return Err(TlsError::Pem {
            what,
            reason: "no certificate".into(),
        });
    }
    Ok(v)
}

fn roots(ca_pem: &str) -> Result<Arc<RootCertStore>, TlsError> {
    let mut r = RootCertStore::empty();
    for c in certs(ca_pem, "CA certificate")? {
        r.add(c)?;
    }
    Ok(Arc::new(r))
}

/// The QUIC server configuration: our certificate, and device certificates required,
/// verified against `ca_pem` and the revocation lists in `crl_pems`.
pub fn server_config(
    cert_pem: &str,
    key_pem: &str,
    ca_pem: &str,
    crl_pems: &[String],
) -> Result<quinn::ServerConfig, TlsError> {
    let mut crls = Vec::new();
    for c in crl_pems {
        for crl in CertificateRevocationListDer::pem_slice_iter(c.as_bytes()) {
            crls.push(crl.map_err(pem_err("CRL"))?);
        }
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca_pem)?, provider())
        .with_crls(crls)
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(pem_err("server key"))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(cert_pem, "server certificate")?, key)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| TlsError::Quic(e.to_string()))?;
    Ok(quinn::ServerConfig::with_crypto(Arc::new(quic)))
}

/// A vehicle's QUIC client configuration: trusts `ca_pem`, presents `device` (cert, key).
pub fn client_config(
    ca_pem: &str,
    device: Option<(&str, &str)>,
) -> Result<quinn::ClientConfig, TlsError> {
    let b = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(ca_pem)?);
    let mut tls = match device {
        Some((cert, key)) => {
            let key =
                PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(pem_err("device key"))?;
            b.with_client_auth_cert(certs(cert, "device certificate")?, key)?
        }
        None => b.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| TlsError::Quic(e.to_string()))?;
    Ok(quinn::ClientConfig::new(Arc::new(quic)))
}

/// The device identity of an authenticated connection: its certificate's common name.
pub fn device_identity(conn: &quinn::Connection) -> Option<String> {
    let chain = conn
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(chain.first()?.as_ref()).ok()?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_owned();
    Some(cn)
}

/// The serial number (DER integer bytes) of an authenticated connection's device
/// certificate.
pub fn device_serial(conn: &quinn::Connection) -> Option<Vec<u8>> {
    let chain = conn
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(chain.first()?.as_ref()).ok()?;
    Some(cert.raw_serial().to_vec())
}

/// The serial numbers (DER integer bytes) revoked by the CRLs in `crl_pems`.
pub fn revoked_serials(crl_pems: &[String]) -> Result<HashSet<Vec<u8>>, TlsError> {
    let mut out = HashSet::new();
    for pem in crl_pems {
        for der in CertificateRevocationListDer::pem_slice_iter(pem.as_bytes()) {
            let der = der.map_err(pem_err("CRL"))?;
            let (_, crl) =
                x509_parser::parse_x509_crl(der.as_ref()).map_err(|e| TlsError::Pem {
                    what: "CRL",
                    reason: e.to_string(),
                })?;
            out.extend(
                crl.iter_revoked_certificates()
                    .map(|r| r.raw_serial().to_vec()),
            );
        }
    }
    Ok(out)
}
