//! Test support: the real `medsfu` binary on loopback, tokens, and headless Chromium
//! driven over the DevTools protocol.
#![allow(dead_code)] // each test binary uses a different part

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "medsfu-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `medsfu serve` on ephemeral loopback ports.
pub struct Server {
    pub child: Child,
    pub http: String,
    pub media: String,
    /// The vehicle (QUIC) address, when the data directory holds certificates.
    pub quic: Option<std::net::SocketAddr>,
    pub data: TempDir,
    pub stderr_log: PathBuf,
}

/// `medsfu certs` in `data`/pki with these device identities.
pub fn certs(data: &std::path::Path, args: &[&str]) {
    medsfu_ok(data, &[&["certs"], args].concat());
}

/// `medsfu user add` with the secret on standard input.
pub fn user_add(data: &std::path::Path, name: &str, role: &str, secret: &str) {
    let mut child = Command::new(bin())
        .args(["user", "add", name, "--role", role, "--data-dir"])
        .arg(data)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("medsfu user add");
    std::io::Write::write_all(
        &mut child.stdin.take().expect("stdin"),
        format!("{secret}\n").as_bytes(),
    )
    .expect("write secret");
    let out = child.wait_with_output().expect("user add");
    assert!(
        out.status.success(),
        "user add {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `medsfu ARGS --data-dir DATA`; asserts it succeeded (showing what it said) and
/// returns its standard output.
pub fn medsfu_ok(data: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(bin())
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .output()
        .unwrap_or_else(|e| panic!("medsfu {args:?}: {e}"));
    assert!(
        out.status.success(),
        "medsfu {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The repository's shared ECG recordings.
pub fn ecg_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/ecg")
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_medsfu")
}

impl Server {
    /// Starts the server with extra `MEDSFU_...` environment settings.
    pub fn start(env: &[(&str, &str)]) -> Server {
        Server::start_in(TempDir::new("srv"), &[], env)
    }

    /// Starts the server on `data` with extra flags and `MEDSFU_...` settings.
    pub fn start_in(data: TempDir, args: &[&str], env: &[(&str, &str)]) -> Server {
        let stderr_log = data.0.join(format!(
            "stderr-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        let mut cmd = Command::new(bin());
        cmd.args(["serve", "--http-listen", "127.0.0.1:0"]);
        if !args.contains(&"--webrtc-listen") {
            cmd.args(["--webrtc-listen", "127.0.0.1:0"]);
        }
        cmd.args(args)
            .arg("--data-dir")
            .arg(&data.0)
            .env("MEDSFU_LOG__FILTER", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_log).expect("log file"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn medsfu");
        let out = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(out)
            .read_line(&mut line)
            .expect("read banner");
        // "medsfu listening on http://127.0.0.1:PORT/ (media on udp ...)"
        let http = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| {
                let log = std::fs::read_to_string(&stderr_log).unwrap_or_default();
                panic!("no address in banner {line:?}; server log: {log}")
            })
            .trim_end_matches('/')
            .to_owned();
        // "... (media on udp ADDR[, vehicles on quic ADDR])"
        let media = line
            .split("udp ")
            .nth(1)
            .and_then(|m| m.split([',', ')']).next())
            .map(|m| m.trim().to_owned())
            .unwrap_or_default();
        let quic = line
            .split("quic ")
            .nth(1)
            .and_then(|m| m.split(')').next())
            .and_then(|m| m.trim().parse().ok());
        Server {
            child,
            http,
            media,
            quic,
            data,
            stderr_log,
        }
    }

    /// A token signed with this server's secret.
    pub fn token(&self, room: &str, identity: &str, role: &str) -> String {
        token_with(&self.data.0, room, identity, role, None)
    }

    /// The media UDP address.
    pub fn media_addr(&self) -> std::net::SocketAddr {
        self.media.parse().expect("media address in banner")
    }

    pub fn ws_url(&self) -> String {
        format!("{}/ws", self.http.replace("http://", "ws://"))
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    /// Kills the process at once (SIGKILL) and returns its data directory.
    pub fn kill(mut self) -> TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let data = TempDir(self.data.0.clone());
        // The directory now belongs to the returned TempDir.
        self.data.0 = PathBuf::new();
        data
    }

    /// Sends SIGTERM and waits (at most `within`) for the process to exit; returns its
    /// exit status, how long it took, and its data directory.
    pub async fn terminate(
        mut self,
        within: Duration,
    ) -> (std::process::ExitStatus, Duration, TempDir) {
        let asked = std::time::Instant::now();
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(ok.success(), "kill -TERM failed");
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                break s;
            }
            assert!(
                asked.elapsed() < within,
                "the server did not exit within {within:?} of SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let data = TempDir(self.data.0.clone());
        self.data.0 = PathBuf::new();
        (status, asked.elapsed(), data)
    }

    /// A metric's value from /metrics (0 when absent).
    pub async fn metric(&self, name: &str) -> f64 {
        self.metric_opt(name).await.unwrap_or(0.0)
    }

    /// A metric's value from /metrics, `None` when the series is not exported.
    pub async fn metric_opt(&self, name: &str) -> Option<f64> {
        let body = reqwest::get(format!("{}/metrics", self.http))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics body");
        // `name` may carry labels: medsfu_x_total{reason="y"}.
        body.lines()
            .filter_map(|l| l.rsplit_once(' '))
            .find(|(k, _)| *k == name)
            .and_then(|(_, v)| v.parse().ok())
    }
}

pub fn token_with(
    data: &std::path::Path,
    room: &str,
    identity: &str,
    role: &str,
    ttl: Option<u64>,
) -> String {
    let ttl = ttl.map(|t| t.to_string());
    let mut args = vec![
        "token",
        "--room",
        room,
        "--identity",
        identity,
        "--role",
        role,
    ];
    if let Some(t) = &ttl {
        args.extend(["--ttl", t.as_str()]);
    }
    medsfu_ok(data, &args).trim().to_owned()
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A failing test shows what the server said last (the test's output is printed
        // only when it fails), so that an intermittent failure in CI can be read.
        if std::thread::panicking() {
            let logs = self.logs();
            let lines: Vec<&str> = logs.lines().collect();
            let tail = &lines[lines.len().saturating_sub(60)..];
            eprintln!(
                "--- server log, last {} lines ---\n{}",
                tail.len(),
                tail.join("\n")
            );
        }
    }
}

/// A signalling client over a real WebSocket.
pub struct Ws {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Ws {
    pub async fn connect(server: &Server) -> Ws {
        let (ws, _) = tokio_tungstenite::connect_async(server.ws_url())
            .await
            .expect("websocket connect");
        Ws { ws }
    }

    pub async fn send(&mut self, v: Value) {
        self.send_text(v.to_string()).await;
    }

    pub async fn send_text(&mut self, t: String) {
        self.ws
            .send(tokio_tungstenite::tungstenite::Message::Text(t.into()))
            .await
            .expect("ws send");
    }

    /// The next JSON message (10 s at most).
    pub async fn recv(&mut self) -> Value {
        loop {
            let m = tokio::time::timeout(Duration::from_secs(10), self.ws.next())
                .await
                .expect("a message within 10 s")
                .expect("socket open")
                .expect("ws read");
            if let tokio_tungstenite::tungstenite::Message::Text(t) = m {
                return serde_json::from_str(&t).expect("JSON");
            }
        }
    }

    /// Skips messages until one of type `ty` arrives.
    /// The next message of type `ty` (others are skipped), within 30 s: a session that
    /// keeps sending other things (telemetry) must not make a test wait for ever.
    pub async fn recv_type(&mut self, ty: &str) -> Value {
        let mut skipped = Vec::new();
        let waited = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let v = self.recv().await;
                if v["type"] == ty {
                    return v;
                }
                if skipped.len() < 20 && v["type"] != "telemetry" {
                    skipped.push(v);
                }
            }
        })
        .await;
        waited.unwrap_or_else(|_| panic!("no {ty:?} message within 30 s; skipped: {skipped:?}"))
    }
}

/// Sends a JSON command over a browser's debugging WebSocket and returns the reply with
/// the same `id` (events in between are skipped).
async fn request(
    ws: &mut WebSocketStream<MaybeTlsStream<TcpStream>>,
    msg: Value,
    id: u64,
    protocol: &str,
) -> Value {
    use tokio_tungstenite::tungstenite::Message;
    ws.send(Message::Text(msg.to_string().into()))
        .await
        .unwrap_or_else(|e| panic!("{protocol} send: {e}"));
    loop {
        let m = tokio::time::timeout(Duration::from_secs(60), ws.next())
            .await
            .unwrap_or_else(|_| panic!("{protocol} reply within 60 s"))
            .unwrap_or_else(|| panic!("{protocol} connection open"))
            .unwrap_or_else(|e| panic!("{protocol} read: {e}"));
        if let Message::Text(t) = m {
            let v: Value = serde_json::from_str(&t).expect("JSON from the browser");
            if v["id"] == id {
                return v;
            }
        }
    }
}

/// Reads a browser's stderr until it announces its debugging WebSocket URL, then keeps
/// draining it on a thread so the browser never blocks on a full pipe.
fn ws_url_from(err: std::process::ChildStderr, browser: &str) -> String {
    let mut r = BufReader::new(err);
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).expect("browser stderr") == 0 {
            panic!("{browser} exited before its debugging endpoint came up");
        }
        if let Some(i) = line.find("ws://") {
            let url = line[i..].trim().to_owned();
            std::thread::spawn(move || {
                let mut sink = String::new();
                while r.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
                    sink.clear();
                }
            });
            return url;
        }
    }
}

/// Headless Chromium with fake camera and microphone, driven over CDP.
pub struct Browser {
    child: Child,
    _profile: TempDir,
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

/// One tab.
#[derive(Clone)]
pub struct Page {
    pub session: String,
}

pub fn chromium_path() -> String {
    std::env::var("TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned())
}

impl Browser {
    pub async fn launch() -> Browser {
        let profile = TempDir::new("chromium");
        let mut child = Command::new(chromium_path())
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                "--autoplay-policy=no-user-gesture-required",
                "--disable-features=WebRtcHideLocalIpsWithMdns",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.0.display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn chromium (apt install chromium)");
        // Chromium prints "DevTools listening on ws://..." on stderr once it is ready.
        let err = child.stderr.take().expect("stderr");
        let url = tokio::task::spawn_blocking(move || ws_url_from(err, "chromium"))
            .await
            .expect("devtools url");
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("CDP connect");
        Browser {
            child,
            _profile: profile,
            ws,
            next_id: 1,
        }
    }

    /// Sends a CDP command and waits for its result, panicking on a CDP error.
    pub async fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        match self.try_call(session, method, &params).await {
            Ok(v) => v,
            Err(e) => panic!("CDP {method} failed: {e}"),
        }
    }

    /// Sends a CDP command and waits for its result or error.
    pub async fn try_call(
        &mut self,
        session: Option<&str>,
        method: &str,
        params: &Value,
    ) -> Result<Value, Value> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let v = request(&mut self.ws, msg, id, "CDP").await;
        match v.get("error") {
            Some(e) => Err(e.clone()),
            None => Ok(v["result"].clone()),
        }
    }

    /// Opens a tab at `url`.
    pub async fn open(&mut self, url: &str) -> Page {
        let t = self
            .call(None, "Target.createTarget", json!({ "url": url }))
            .await;
        let target = t["targetId"].as_str().expect("targetId").to_owned();
        let a = self
            .call(
                None,
                "Target.attachToTarget",
                json!({ "targetId": target, "flatten": true }),
            )
            .await;
        let page = Page {
            session: a["sessionId"].as_str().expect("sessionId").to_owned(),
        };
        // Wait until the tab shows our page rather than the initial blank document.
        let expr = "(async () => { while (!(window.medsfu && document.readyState === 'complete')) await new Promise(r => setTimeout(r, 20)); return true; })()";
        self.eval(&page, expr).await;
        page
    }

    /// Evaluates an expression (awaiting a promise) in a tab and returns its value.
    ///
    /// Retries while the tab is still navigating (its execution context is replaced).
    pub async fn eval(&mut self, page: &Page, expr: &str) -> Value {
        let params = json!({ "expression": expr, "awaitPromise": true, "returnByValue": true });
        let mut attempts = 0;
        let r = loop {
            match self
                .try_call(Some(&page.session), "Runtime.evaluate", &params)
                .await
            {
                Ok(r) => break r,
                Err(e)
                    if attempts < 50
                        && e["message"].as_str().is_some_and(|m| m.contains("context")) =>
                {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("Runtime.evaluate failed: {e}"),
            }
        };
        if let Some(e) = r.get("exceptionDetails") {
            panic!("page threw: {e}");
        }
        r["result"]["value"].clone()
    }

    /// Saves a PNG screenshot of a tab (for people to look at; tests assert on the DOM).
    pub async fn screenshot(&mut self, page: &Page, path: &std::path::Path) {
        let r = self
            .call(
                Some(&page.session),
                "Page.captureScreenshot",
                json!({ "format": "png" }),
            )
            .await;
        let data = r["data"].as_str().expect("base64 PNG");
        let bytes = base64_decode(data);
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        std::fs::write(path, bytes).expect("write screenshot");
    }

    /// Waits inside the page until `cond` (a JS expression, may be async) is truthy;
    /// returns its value, or panics with `what` after `timeout`.
    pub async fn wait_for(
        &mut self,
        page: &Page,
        cond: &str,
        timeout: Duration,
        what: &str,
    ) -> Value {
        let ms = timeout.as_millis();
        let expr = format!(
            "(async () => {{ const end = performance.now() + {ms};
               while (performance.now() < end) {{
                 try {{ const v = await (async () => ({cond}))(); if (v) return {{ ok: true, v }}; }} catch (e) {{}}
                 await new Promise(r => setTimeout(r, 50));
               }}
               return {{ ok: false, state: JSON.stringify({{ errors: window.medsfu && window.medsfu.errors }}) }};
             }})()"
        );
        let r = self.eval(page, &expr).await;
        assert!(r["ok"] == true, "timed out waiting for {what}: {r}");
        r["v"].clone()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            _ => 63,
        }
    };
    let bytes: Vec<u8> = s
        .bytes()
        .filter(|c| *c != b'=' && !c.is_ascii_whitespace())
        .collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= val(*c) << (18 - 6 * i);
        }
        out.push((n >> 16) as u8);
        if chunk.len() > 2 {
            out.push((n >> 8) as u8);
        }
        if chunk.len() > 3 {
            out.push(n as u8);
        }
    }
    out
}

/// Headless Firefox with fake camera and microphone, driven over WebDriver BiDi.
///
/// Not used by a test yet: Firefox 153 ESR gathers ICE candidates only on a non-loopback
/// interface (with `media.peerconnection.ice.loopback` and `force_interface=lo` set it still
/// offered only the machine's external address, and in a namespace with only `lo` none),
/// so it cannot reach a server on 127.0.0.1. A test needs the server and Firefox on two
/// network-namespace test hosts joined by a veth pair.
pub struct Firefox {
    child: Child,
    _profile: TempDir,
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    context: String,
}

pub fn firefox_path() -> String {
    std::env::var("TEST_FIREFOX").unwrap_or_else(|_| "/usr/bin/firefox-esr".to_owned())
}

impl Firefox {
    /// Starts Firefox and opens `url` in its first tab.
    pub async fn launch(url: &str) -> Firefox {
        let profile = TempDir::new("firefox");
        std::fs::write(
            profile.0.join("user.js"),
            [
                "media.navigator.streams.fake",
                "media.navigator.permission.disabled",
                // Loopback is left out of ICE by default (the Firefox test runs in a network
                // namespace with a private address instead; see tests/firefox.rs).
                "media.peerconnection.ice.loopback",
            ]
            .iter()
            .map(|p| format!("user_pref(\"{p}\", true);\n"))
            .chain(
                [
                    "user_pref(\"media.autoplay.default\", 0);\n",
                    "user_pref(\"media.peerconnection.ice.obfuscate_host_addresses\", false);\n",
                    "user_pref(\"browser.shell.checkDefaultBrowser\", false);\n",
                    "user_pref(\"datareporting.policy.dataSubmissionEnabled\", false);\n",
                    "user_pref(\"app.update.enabled\", false);\n",
                    "user_pref(\"network.captive-portal-service.enabled\", false);\n",
                ]
                .map(str::to_owned),
            )
            .collect::<String>(),
        )
        .expect("user.js");
        let mut child = Command::new(firefox_path())
            .args([
                "--headless",
                "--no-remote",
                "--remote-debugging-port",
                "0",
                "--profile",
            ])
            .arg(&profile.0)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn firefox (apt install firefox-esr)");
        let err = child.stderr.take().expect("stderr");
        let ws_url = tokio::task::spawn_blocking(move || ws_url_from(err, "firefox"))
            .await
            .expect("bidi url");
        let (ws, _) =
            tokio_tungstenite::connect_async(format!("{}/session", ws_url.trim_end_matches('/')))
                .await
                .expect("BiDi connect");
        let mut ff = Firefox {
            child,
            _profile: profile,
            ws,
            next_id: 1,
            context: String::new(),
        };
        ff.call("session.new", json!({ "capabilities": {} })).await;
        let tree = ff.call("browsingContext.getTree", json!({})).await;
        ff.context = tree["contexts"][0]["context"]
            .as_str()
            .expect("a browsing context")
            .to_owned();
        let ctx = ff.context.clone();
        ff.call(
            "browsingContext.navigate",
            json!({ "context": ctx, "url": url, "wait": "complete" }),
        )
        .await;
        ff
    }

    async fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let msg = json!({ "id": id, "method": method, "params": params });
        let v = request(&mut self.ws, msg, id, "BiDi").await;
        assert!(v["type"] == "success", "BiDi {method} failed: {v}");
        v["result"].clone()
    }

    /// Evaluates an expression (awaiting a promise) and returns its value through JSON.
    pub async fn eval(&mut self, expr: &str) -> Value {
        let ctx = self.context.clone();
        let wrapped = format!("(async () => JSON.stringify(await (async () => ({expr}))()))()");
        let r = self
            .call(
                "script.evaluate",
                json!({ "expression": wrapped, "target": { "context": ctx }, "awaitPromise": true }),
            )
            .await;
        assert!(r["type"] == "success", "page threw: {r}");
        let text = r["result"]["value"].as_str().unwrap_or("null");
        serde_json::from_str(text).unwrap_or(Value::Null)
    }

    /// Waits inside the page until `cond` is truthy; returns its value.
    pub async fn wait_for(&mut self, cond: &str, timeout: Duration, what: &str) -> Value {
        let ms = timeout.as_millis();
        let expr = format!(
            "(async () => {{ const end = performance.now() + {ms};
               while (performance.now() < end) {{
                 try {{ const v = await (async () => ({cond}))(); if (v) return {{ ok: true, v }}; }} catch (e) {{}}
                 await new Promise(r => setTimeout(r, 50));
               }}
               return {{ ok: false, errors: window.medsfu && window.medsfu.errors }};
             }})()"
        );
        let r = self.eval(&expr).await;
        assert!(
            r["ok"] == true,
            "Firefox: timed out waiting for {what}: {r}"
        );
        r["v"].clone()
    }
}

impl Drop for Firefox {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A WHEP subscriber to `room`'s H.265 video, retrying while the room has no track yet
/// (404) because the publisher's first packet has not arrived.
pub async fn whep_once_published(http: &str, room: &str, token: &str) -> medsfu_client::Session {
    whep_once_published_with(http, room, token, &[medsfu_client::CodecSpec::h265()]).await
}

/// Like [`whep_once_published`], for the given codecs (one track per kind).
pub async fn whep_once_published_with(
    http: &str,
    room: &str,
    token: &str,
    codecs: &[medsfu_client::CodecSpec],
) -> medsfu_client::Session {
    use medsfu_client::{whep, ClientError};
    loop {
        match whep(http, room, token, codecs).await {
            Ok(v) => return v,
            Err(ClientError::Refused { status: 404, .. }) => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("WHEP: {e}"),
        }
    }
}

/// Every `medsfu_...` metric name the Grafana dashboard and the alert rules use.
pub fn ops_metric_names() -> Vec<String> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../config");
    let mut names = std::collections::BTreeSet::new();
    for f in [
        "grafana/medsfu-dashboard.json",
        "prometheus/medsfu-alerts.yml",
    ] {
        let text = std::fs::read_to_string(dir.join(f)).expect("ops config");
        let mut rest = text.as_str();
        while let Some(i) = rest.find("medsfu_") {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
                .unwrap_or(tail.len());
            names.insert(tail[..end].to_owned());
            rest = &tail[end..];
        }
    }
    names.into_iter().collect()
}

/// `ffprobe` of one stream: codec, width, height, decoded frames, duration (seconds).
pub fn probe(path: &std::path::Path, stream: &str) -> (String, f64) {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", stream])
        .args([
            "-show_entries",
            "stream=codec_name,width,height,nb_read_frames:format=duration",
        ])
        .args(["-of", "compact=p=0:nk=1"])
        .arg(path)
        .output()
        .expect("ffprobe");
    assert!(
        out.status.success(),
        "ffprobe {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines();
    let stream = lines.next().unwrap_or_default().to_owned();
    let duration = lines
        .next()
        .and_then(|d| d.trim().parse().ok())
        .unwrap_or(f64::NAN);
    (stream, duration)
}

/// Decodes a whole file with ffmpeg; returns its complaints (empty when clean).
pub fn decode_errors(path: &std::path::Path) -> String {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(path)
        // Keep each picture's own time: the null muxer would otherwise round variable
        // frame timing (a live camera's) to a constant rate and complain about that.
        .args(["-fps_mode", "passthrough", "-enc_time_base", "-1"])
        .args(["-f", "null", "-"])
        .output()
        .expect("ffmpeg");
    let mut e = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        e.push_str(&format!(" (exit {})", out.status));
    }
    e
}

/// The one file in `dir` whose name contains every needle.
pub fn find_file(dir: &std::path::Path, needles: &[&str]) -> std::path::PathBuf {
    let found: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let n = p.file_name().unwrap_or_default().to_string_lossy();
            needles.iter().all(|x| n.contains(x))
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "files with {needles:?} in {}: {found:?}",
        dir.display()
    );
    found[0].clone()
}

/// A child's output lines, each made into a `T`, on a channel (read on a thread of its own).
pub fn lines_of<T: Send + 'static>(
    out: impl std::io::Read + Send + 'static,
    each: impl Fn(String) -> T + Send + 'static,
) -> tokio::sync::mpsc::UnboundedReceiver<T> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(each(l)).is_err() {
                break;
            }
        }
    });
    rx
}

/// Debian's Python, which has GStreamer's introspection bindings (python3-gi).
pub const SYSTEM_PYTHON: &str = "/usr/bin/python3";

/// A GStreamer webrtcbin WHIP publisher or WHEP viewer (`tests/clients/gst_webrtc.py`) in a
/// child process: a client medsfu did not write. Its JSON lines arrive on a channel.
pub struct Gst {
    child: Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<Value>,
    /// Every event read so far.
    pub seen: Vec<Value>,
}

impl Gst {
    /// `gst_webrtc.py publish|subscribe --url URL --token T ARGS...`.
    pub fn start(mode: &str, url: &str, token: &str, args: &[&str]) -> Gst {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients/gst_webrtc.py");
        let mut child = Command::new(SYSTEM_PYTHON)
            .arg(script)
            .args([mode, "--url", url, "--token", token])
            .args(args)
            .env("GST_DEBUG", "0")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn gst_webrtc.py (install python3-gi and GStreamer: scripts/test.sh)");
        let lines = lines_of(child.stdout.take().expect("stdout"), |l| {
            serde_json::from_str(&l).unwrap_or_else(|_| json!({ "event": "text", "line": l }))
        });
        Gst {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The next event named `name` within `within`; panics with what came instead.
    pub async fn event(&mut self, name: &str, within: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(v)) => {
                    self.seen.push(v.clone());
                    if v["event"] == name {
                        return v;
                    }
                }
                Ok(None) => panic!("gst client exited before {name:?}: {}", self.summary()),
                Err(_) => panic!(
                    "no {name:?} from the gst client within {within:?}: {}",
                    self.summary()
                ),
            }
        }
    }

    /// Waits for the client to exit by itself (within `within`); its exit code and every
    /// event it printed.
    pub async fn finish(mut self, within: Duration) -> (i32, Vec<Value>) {
        let deadline = tokio::time::Instant::now() + within;
        while let Ok(Some(v)) = tokio::time::timeout_at(deadline, self.lines.recv()).await {
            self.seen.push(v);
        }
        let mut child =
            std::mem::replace(&mut self.child, Command::new("true").spawn().expect("true"));
        let code = tokio::task::spawn_blocking(move || child.wait())
            .await
            .expect("join")
            .expect("gst client exit")
            .code()
            .unwrap_or(-1);
        (code, std::mem::take(&mut self.seen))
    }

    /// The events seen, without SDP bodies (for failure messages).
    pub fn summary(&self) -> String {
        self.seen
            .iter()
            .filter(|v| v["event"] != "offer" && v["event"] != "answer")
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Gst {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until a metric reaches `at_least` (polling /metrics), within `within`.
pub async fn metric_reaches(server: &Server, name: &str, at_least: f64, within: Duration) -> f64 {
    let deadline = std::time::Instant::now() + within;
    loop {
        let v = server.metric(name).await;
        if v >= at_least {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name} stayed at {v}, below {at_least}, for {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Asserts that nothing under `dir` (itself included) is open to group or others: patient
/// data and secrets are created 0600 / 0700 (issue 16). Returns how many entries it saw.
pub fn assert_private(dir: &std::path::Path) -> usize {
    use std::os::unix::fs::PermissionsExt as _;
    let mut seen = 0;
    let mut todo = vec![dir.to_owned()];
    while let Some(p) = todo.pop() {
        let name = p.file_name().unwrap_or_default().to_string_lossy();
        if name.starts_with("stderr-") && name.ends_with(".log") {
            continue; // the test harness's copy of the server's output, not medsfu's
        }
        let meta = std::fs::symlink_metadata(&p).expect("stat");
        let mode = meta.permissions().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "{} is {mode:o}", p.display());
        seen += 1;
        if meta.is_dir() {
            todo.extend(
                std::fs::read_dir(&p)
                    .expect("read dir")
                    .flatten()
                    .map(|e| e.path()),
            );
        }
    }
    seen
}
