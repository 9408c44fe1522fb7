//! Only certified devices connect: a real quinn endpoint with mutual TLS on loopback, and
//! one client for each way a device certificate can be wrong.

use std::net::SocketAddr;
use std::time::Duration as StdDuration;

use medsfu_quic::pki::{self_signed, DevCa, Issued};
use medsfu_quic::{client_config, device_identity, server_config};
use time::{Duration, OffsetDateTime};
use tokio::sync::mpsc;

/// What the server saw of one connection attempt.
#[derive(Debug)]
enum Seen {
    Device(String),
    Refused(String),
}

async fn server(ca: &mut DevCa, revoked: &[u64]) -> (SocketAddr, mpsc::UnboundedReceiver<Seen>) {
    let cert = ca
        .issue_server(&["localhost", "127.0.0.1"])
        .expect("server cert");
    let crl = ca.crl_pem(revoked).expect("crl");
    let cfg = server_config(&cert.cert_pem, &cert.key_pem, ca.cert_pem(), &[crl]).expect("config");
    let ep = quinn::Endpoint::server(cfg, "127.0.0.1:0".parse().expect("addr")).expect("bind");
    let addr = ep.local_addr().expect("addr");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(incoming) = ep.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let seen = match incoming.await {
                    Ok(conn) => {
                        let id = device_identity(&conn).unwrap_or_default();
                        conn.close(0u32.into(), b"test done");
                        Seen::Device(id)
                    }
                    Err(e) => Seen::Refused(e.to_string()),
                };
                let _ = tx.send(seen);
            });
        }
    });
    (addr, rx)
}

async fn attempt(addr: SocketAddr, ca_pem: &str, device: Option<&Issued>) -> Result<(), String> {
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("client");
    ep.set_default_client_config(
        client_config(
            ca_pem,
            device.map(|d| (d.cert_pem.as_str(), d.key_pem.as_str())),
        )
        .expect("client config"),
    );
    let conn = ep
        .connect(addr, "localhost")
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    // With TLS 1.3 the server judges the client's certificate after the client finished;
    // a refused client learns it when the connection is closed.
    // An accepted device is closed by the test server with an application close (it has
    // nothing to say yet); a refused one by a TLS alert in a transport close.
    match tokio::time::timeout(StdDuration::from_secs(2), conn.closed()).await {
        Ok(quinn::ConnectionError::ApplicationClosed(_)) => Ok(()),
        Ok(reason) => Err(reason.to_string()),
        Err(_) => Err("the server neither kept nor closed the connection".into()),
    }
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    tokio::time::timeout(StdDuration::from_secs(5), rx.recv())
        .await
        .expect("the server saw the attempt")
        .expect("server running")
}

#[tokio::test]
async fn only_valid_unrevoked_certificates_of_our_ca_connect() {
    let now = OffsetDateTime::now_utc();
    let mut ca = DevCa::generate("medsfu test CA").expect("CA");
    let mut other = DevCa::generate("someone else's CA").expect("CA");
    let valid = ca
        .issue_device("amb-7", now - Duration::days(1), now + Duration::days(30))
        .expect("cert");
    let expired = ca
        .issue_device("amb-8", now - Duration::days(30), now - Duration::days(1))
        .expect("cert");
    let revoked = ca
        .issue_device("amb-9", now - Duration::days(1), now + Duration::days(30))
        .expect("cert");
    let foreign = other
        .issue_device("amb-7", now - Duration::days(1), now + Duration::days(30))
        .expect("cert");
    let selfie = self_signed("amb-7").expect("cert");
    let (addr, mut seen) = server(&mut ca, &[revoked.serial]).await;
    let ca_pem = ca.cert_pem().to_owned();

    attempt(addr, &ca_pem, Some(&valid))
        .await
        .expect("a valid device connects");
    match next(&mut seen).await {
        Seen::Device(id) => assert_eq!(id, "amb-7", "identity from the certificate"),
        s => panic!("{s:?}"),
    }

    for (what, cert, reason) in [
        ("expired", Some(&expired), "expired"),
        ("revoked", Some(&revoked), "revoked"),
        ("wrong CA", Some(&foreign), "issuer"),
        ("self-signed", Some(&selfie), "issuer"),
        ("missing", None, "no certificate"),
    ] {
        let r = attempt(addr, &ca_pem, cert).await;
        assert!(r.is_err(), "{what}: the client must be refused");
        match next(&mut seen).await {
            Seen::Refused(e) => {
                eprintln!("{what}: refused: {e}");
                assert!(e.to_lowercase().contains(reason), "{what}: {e}");
            }
            s => panic!("{what}: {s:?}"),
        }
    }
}
