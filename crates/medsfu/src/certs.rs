//! `medsfu certs`: a development PKI in one directory (CA, server certificate, device
//! certificates, revocation list), kept across runs so devices can be added and revoked.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use medsfu_quic::pki::DevCa;
use time::{Duration, OffsetDateTime};

/// File names inside the PKI directory.
pub const CA: &str = "ca.pem";
/// The CA's private key (keep it off production servers).
pub const CA_KEY: &str = "ca.key";
/// Server certificate.
pub const SERVER: &str = "server.pem";
/// Server key.
pub const SERVER_KEY: &str = "server.key";
/// Revocation list.
pub const CRL: &str = "ca.crl";
/// Issued device certificates: `identity serial` per line.
const DEVICES: &str = "devices.txt";
/// Revoked serials, one per line.
const REVOKED: &str = "revoked.txt";
/// Next serial number.
const SERIAL: &str = "serial";

/// A device's certificate file.
pub fn device_cert(dir: &Path, identity: &str) -> PathBuf {
    dir.join(format!("device-{identity}.pem"))
}

/// A device's key file.
pub fn device_key(dir: &Path, identity: &str) -> PathBuf {
    dir.join(format!("device-{identity}.key"))
}

/// Writes a file whole: a server re-reading it (the CRL) never sees half of it.
fn write(path: &Path, text: &str, private: bool) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    }
    #[cfg(not(unix))]
    let _ = private;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// What to do in a PKI directory.
pub struct Request<'a> {
    /// DNS names / IP addresses of the server certificate (only when creating the CA).
    pub server_names: &'a [String],
    /// Devices to issue certificates for.
    pub devices: &'a [String],
    /// Days a new device certificate is valid.
    pub device_days: i64,
    /// Devices whose certificates to revoke.
    pub revoke: &'a [String],
}

/// Creates the CA and server certificate if missing, issues and revokes device
/// certificates, rewrites the CRL; returns the files written.
pub fn run(dir: &Path, req: &Request<'_>) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = Vec::new();
    let mut ca = if dir.join(CA).exists() {
        let next = read(&dir.join(SERIAL))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100_000);
        DevCa::load(&read(&dir.join(CA))?, &read(&dir.join(CA_KEY))?, next)
            .context("loading the CA")?
    } else {
        let mut ca = DevCa::generate("medsfu development CA").context("generating the CA")?;
        write(&dir.join(CA), ca.cert_pem(), false)?;
        write(&dir.join(CA_KEY), ca.key_pem(), true)?;
        let names: Vec<&str> = req.server_names.iter().map(String::as_str).collect();
        let server = ca.issue_server(&names).context("server certificate")?;
        write(&dir.join(SERVER), &server.cert_pem, false)?;
        write(&dir.join(SERVER_KEY), &server.key_pem, true)?;
        written.extend([
            dir.join(CA),
            dir.join(CA_KEY),
            dir.join(SERVER),
            dir.join(SERVER_KEY),
        ]);
        ca
    };
    // Every serial ever issued to each device: re-issuing a device leaves its older
    // certificates valid until they expire, so revoking it must revoke all of them.
    let mut devices: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for l in read(&dir.join(DEVICES)).unwrap_or_default().lines() {
        if let Some((n, s)) = l.rsplit_once(' ') {
            if let Ok(s) = s.parse() {
                devices.entry(n.to_owned()).or_default().push(s);
            }
        }
    }
    let now = OffsetDateTime::now_utc();
    for d in req.devices {
        anyhow::ensure!(
            !d.is_empty()
                && d.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)),
            "device names are letters, digits, - _ . (got {d:?})"
        );
        let issued = ca
            .issue_device(
                d,
                now - Duration::minutes(5),
                now + Duration::days(req.device_days),
            )
            .context("device certificate")?;
        write(&device_cert(dir, d), &issued.cert_pem, false)?;
        write(&device_key(dir, d), &issued.key_pem, true)?;
        written.extend([device_cert(dir, d), device_key(dir, d)]);
        devices.entry(d.clone()).or_default().push(issued.serial);
    }
    let mut revoked: Vec<u64> = read(&dir.join(REVOKED))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    for r in req.revoke {
        let serials = devices
            .get(r)
            .with_context(|| format!("no certificate was issued to {r:?} here"))?;
        for serial in serials {
            if !revoked.contains(serial) {
                revoked.push(*serial);
            }
        }
    }
    let list: String = devices
        .iter()
        .flat_map(|(n, serials)| serials.iter().map(move |s| format!("{n} {s}\n")))
        .collect();
    write(&dir.join(DEVICES), &list, false)?;
    let rl: String = revoked.iter().map(|s| format!("{s}\n")).collect();
    write(&dir.join(REVOKED), &rl, false)?;
    write(&dir.join(SERIAL), &ca.next_serial().to_string(), false)?;
    write(&dir.join(CRL), &ca.crl_pem(&revoked).context("CRL")?, false)?;
    written.push(dir.join(CRL));
    Ok(written)
}
