//! Firefox and Chromium in one room: each decodes the other's camera.
//!
//! Firefox gathers no ICE candidates on loopback, and none at all without a default route,
//! so this test re-runs itself inside an unprivileged user and network namespace with a
//! veth interface (10.77.0.1/24) and a default route. The media port listens on that
//! address; the page stays on 127.0.0.1 (a secure context, so the camera is allowed).

mod support;

use std::process::Command;
use std::time::Duration;

use support::{Browser, Firefox, Server, TempDir};

/// The media address inside the namespace.
const NS_ADDR: &str = "10.77.0.1";
const INSIDE: &str = "TEST_IN_NETNS";

/// Decoded at least `n` frames of some received video track.
fn decoded(n: u64) -> String {
    format!(
        "(async () => {{ const s = await window.medsfu.videoStats();
            return Object.values(s).some(v => v.framesDecoded >= {n}); }})()"
    )
}

async fn inside() {
    let server = Server::start_in(
        TempDir::new("firefox"),
        &["--webrtc-listen", &format!("{NS_ADDR}:0")],
        &[],
    );
    let page = |identity: &str| {
        let token = server.token("ff", identity, "team");
        format!(
            "{}/?room=ff&token={token}&publish=camera,microphone",
            server.http
        )
    };
    let mut ff = Firefox::launch(&page("firefox-user")).await;
    let mut chromium = Browser::launch().await;
    let pc = chromium.open(&page("chromium-user")).await;
    ff.wait_for(
        &decoded(30),
        Duration::from_secs(40),
        "Firefox decodes Chromium's camera",
    )
    .await;
    chromium
        .wait_for(
            &pc,
            &decoded(30),
            Duration::from_secs(40),
            "Chromium decodes Firefox's camera",
        )
        .await;
    // Firefox saw the other participant in its list.
    let names = ff
        .eval("[...window.medsfu.participants.values()].map(p => p.identity)")
        .await;
    assert!(
        names.to_string().contains("chromium-user"),
        "participants seen by Firefox: {names}"
    );
}

#[test]
fn firefox_and_chromium_decode_each_others_camera() {
    if std::env::var_os(INSIDE).is_some() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(inside());
        return;
    }
    let exe = std::env::current_exe().expect("test binary");
    let setup = "ip link set lo up
        ip link add v0 type veth peer name v1
        ip addr add 10.77.0.1/24 dev v0
        ip link set v0 up
        ip link set v1 up
        ip route add default via 10.77.0.2 dev v0
        exec \"$0\" \"$@\"";
    let status = Command::new("unshare")
        .args(["--user", "--map-root-user", "--net", "sh", "-ec", setup])
        .arg(exe)
        .args([
            "firefox_and_chromium_decode_each_others_camera",
            "--exact",
            "--nocapture",
        ])
        .env(INSIDE, "1")
        .env(
            "PATH",
            format!(
                "{}:/usr/sbin:/sbin",
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .status()
        .expect("unshare (util-linux)");
    assert!(
        status.success(),
        "the test inside the network namespace failed: {status}"
    );
}
