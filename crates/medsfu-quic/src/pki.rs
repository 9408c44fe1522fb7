//! A development PKI: a CA, the server's certificate, device certificates and a CRL.
//!
//! Production sites use their own CA; this one lets `medsfu certs`, the demo and the tests
//! run the real mutual-TLS path.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use time::{Duration, OffsetDateTime};

/// A certificate and its private key, PEM-encoded.
#[derive(Debug, Clone)]
pub struct Issued {
    /// Certificate (PEM).
    pub cert_pem: String,
    /// Private key (PKCS#8 PEM).
    pub key_pem: String,
    /// Serial number (for revocation).
    pub serial: u64,
}

/// A certificate authority that issues server and device certificates.
pub struct DevCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    key_pem: String,
    next_serial: u64,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DevCa(..)")
    }
}

fn dn(cn: &str) -> DistinguishedName {
    let mut d = DistinguishedName::new();
    d.push(DnType::OrganizationName, "medsfu development");
    d.push(DnType::CommonName, cn);
    d
}

fn ca_params(name: &str) -> Result<CertificateParams, rcgen::Error> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name = dn(name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(p)
}

impl DevCa {
    /// A new CA named `name`, valid for ten years.
    pub fn generate(name: &str) -> Result<DevCa, rcgen::Error> {
        let key = KeyPair::generate()?;
        let mut p = ca_params(name)?;
        let now = OffsetDateTime::now_utc();
        p.not_before = now - Duration::days(1);
        p.not_after = now + Duration::days(3650);
        let cert = p.self_signed(&key)?;
        Ok(DevCa {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(p, key),
            next_serial: 1000,
        })
    }

    /// A CA saved earlier with [`DevCa::cert_pem`] and [`DevCa::key_pem`]; new serial
    /// numbers start at `next_serial`.
    pub fn load(cert_pem: &str, key_pem: &str, next_serial: u64) -> Result<DevCa, rcgen::Error> {
        let key = KeyPair::from_pem(key_pem)?;
        // What issuing needs of the CA certificate is its name (and the key): rebuild the
        // parameters from the saved certificate's common name.
        let der = rustls::pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|_| rcgen::Error::CouldNotParseCertificate)?;
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
            .map_err(|_| rcgen::Error::CouldNotParseCertificate)?;
        let name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|c| c.as_str().ok())
            .ok_or(rcgen::Error::CouldNotParseCertificate)?
            .to_owned();
        Ok(DevCa {
            issuer: Issuer::new(ca_params(&name)?, key),
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            next_serial,
        })
    }

    /// The CA's private key (PEM): keep it off the server.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The serial number the next certificate gets.
    pub fn next_serial(&self) -> u64 {
        self.next_serial
    }

    /// The CA certificate (PEM), which servers and devices trust.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    fn issue(
        &mut self,
        cn: &str,
        sans: Vec<String>,
        server: bool,
        valid: (OffsetDateTime, OffsetDateTime),
    ) -> Result<Issued, rcgen::Error> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(sans)?;
        p.distinguished_name = dn(cn);
        let serial = self.next_serial;
        self.next_serial += 1;
        p.serial_number = Some(SerialNumber::from(serial));
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        (p.not_before, p.not_after) = valid;
        let cert = p.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            serial,
        })
    }

    /// A server certificate for these DNS names or IP addresses, valid for a year.
    pub fn issue_server(&mut self, names: &[&str]) -> Result<Issued, rcgen::Error> {
        let now = OffsetDateTime::now_utc();
        let sans = names.iter().map(|n| (*n).to_owned()).collect();
        self.issue(
            "medsfu server",
            sans,
            true,
            (now - Duration::days(1), now + Duration::days(365)),
        )
    }

    /// A device certificate whose common name is the device's identity.
    pub fn issue_device(
        &mut self,
        identity: &str,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<Issued, rcgen::Error> {
        self.issue(identity, Vec::new(), false, (not_before, not_after))
    }

    /// A CRL revoking these serial numbers, valid for a week.
    pub fn crl_pem(&self, revoked: &[u64]) -> Result<String, rcgen::Error> {
        let now = OffsetDateTime::now_utc();
        let params = CertificateRevocationListParams {
            this_update: now - Duration::minutes(1),
            next_update: now + Duration::days(7),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from(*s),
                    revocation_time: now - Duration::minutes(1),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params.signed_by(&self.issuer)?.pem()
    }
}

/// A certificate signed by its own key: what a device outside the PKI might present.
pub fn self_signed(identity: &str) -> Result<Issued, rcgen::Error> {
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name = dn(identity);
    let cert = p.self_signed(&key)?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        serial: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_ca_issues_again_with_fresh_serials() {
        let mut ca = DevCa::generate("test CA").expect("ca");
        let first = ca.issue_server(&["localhost"]).expect("server");
        let mut again = DevCa::load(ca.cert_pem(), ca.key_pem(), ca.next_serial()).expect("load");
        let now = OffsetDateTime::now_utc();
        let dev = again
            .issue_device("amb-1", now, now + Duration::days(1))
            .expect("device");
        assert!(dev.serial > first.serial);
        assert!(again
            .crl_pem(&[dev.serial])
            .expect("crl")
            .contains("X509 CRL"));
    }
}
