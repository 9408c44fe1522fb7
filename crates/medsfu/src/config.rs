//! Layered configuration: defaults < file < environment (`MEDSFU_...`) < command-line flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// Everything `medsfu serve` can be told; `config/medsfu.toml` documents each key.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// HTTP listener (page, signalling, WHIP/WHEP).
    pub http: Http,
    /// WebRTC media.
    pub webrtc: WebRtc,
    /// Where state lives.
    pub data: Data,
    /// Access tokens.
    pub auth: Auth,
    /// Room-core tunables.
    pub core: Core,
    /// The QUIC endpoint for vehicles.
    pub vehicle: Vehicle,
    /// The telemetry journal.
    pub telemetry: Telemetry,
    /// Recording on demand and the voice archive.
    pub recording: Recording,
    /// The control API: logins, calls and the lead.
    pub control: Control,
    /// Logging.
    pub log: Log,
}

/// Vehicle (QUIC) settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Vehicle {
    /// UDP address of the QUIC endpoint.
    pub listen: SocketAddr,
    /// Server certificate (PEM), relative to `data.dir`.
    pub cert: PathBuf,
    /// Server private key (PEM), relative to `data.dir`.
    pub key: PathBuf,
    /// CA certificate that device certificates must chain to (PEM), relative to `data.dir`.
    pub ca: PathBuf,
    /// Certificate revocation lists (PEM), relative to `data.dir`; re-read when changed.
    pub crls: Vec<PathBuf>,
    /// Seconds between checks of the revocation lists for changes.
    pub crl_reload_secs: u64,
    /// A vehicle connection silent this long is closed, in seconds.
    pub idle_timeout_secs: u64,
    /// Control messages per second a vehicle may send before the rest are dropped.
    pub control_rate: u32,
    /// Whether vehicles may publish into rooms the control API does not know (rooms named
    /// by the operator, e.g. a fixed room for training or a load test); off, a vehicle
    /// publishes only into its own call.
    pub open_rooms: bool,
}

/// Recording settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Recording {
    /// Recordings directory, relative to `data.dir` (one subdirectory per room).
    pub dir: PathBuf,
    /// Archive every audio track of every room, always.
    pub voice_archive: bool,
    /// Days the voice archive is kept (checked hourly); unset keeps it forever.
    pub voice_retention_days: Option<u64>,
    /// Record at all: on demand (lead or team) and, if `voice_archive`, all voice.
    pub enabled: bool,
}

impl Default for Recording {
    fn default() -> Self {
        Recording {
            dir: PathBuf::from("recordings"),
            voice_archive: true,
            voice_retention_days: None,
            enabled: true,
        }
    }
}

/// Telemetry settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Telemetry {
    /// Journal directory, relative to `data.dir` (one subdirectory per room).
    pub dir: PathBuf,
    /// Size at which a journal segment file is closed and a new one started.
    pub segment_bytes: u64,
}

impl Default for Vehicle {
    fn default() -> Self {
        Vehicle {
            listen: ([127, 0, 0, 1], 4433).into(),
            cert: PathBuf::from("pki/server.pem"),
            key: PathBuf::from("pki/server.key"),
            ca: PathBuf::from("pki/ca.pem"),
            crls: vec![PathBuf::from("pki/ca.crl")],
            crl_reload_secs: 5,
            idle_timeout_secs: 30,
            control_rate: 20,
            open_rooms: false,
        }
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry {
            dir: PathBuf::from("telemetry"),
            segment_bytes: 16 << 20,
        }
    }
}

/// HTTP settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http {
    /// Address the HTTP server binds.
    pub listen: SocketAddr,
    /// Seconds SIGTERM waits for sessions and streams to close before the process exits.
    pub shutdown_grace_secs: u64,
    /// Origins (`https://console.example`) of other pages allowed to call the login and
    /// control API; empty: only medsfu's own page. WHIP/WHEP answer any origin.
    pub cors_origins: Vec<String>,
    /// The page marks video, the ECG and the telemetry link stale after this silence, in ms.
    pub page_stale_ms: u64,
    /// The page marks vitals and the position stale after this silence, in ms.
    pub page_stale_vitals_ms: u64,
}

/// WebRTC settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebRtc {
    /// The one UDP port all WebRTC media uses.
    pub listen: SocketAddr,
    /// Address announced in ICE candidates when it differs from `listen` (1:1 NAT).
    pub announce: Option<SocketAddr>,
    /// Receive buffer asked of the kernel for the media socket (SO_RCVBUF), in bytes.
    pub receive_buffer_bytes: usize,
    /// Send buffer asked of the kernel for the media socket (SO_SNDBUF), in bytes.
    pub send_buffer_bytes: usize,
    /// Lines of the H.264 rendition made for browsers without H.265: 360 or 720.
    pub rendition_height: u32,
    /// Media workers sharing the port, each with its share of the rooms (0: one per core).
    pub workers: usize,
}

/// Data settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Data {
    /// Directory for state (token secret, later journals and recordings).
    pub dir: PathBuf,
}

/// Token settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Auth {
    /// File holding the token signing secret, relative to `data.dir`; created if missing.
    pub secret_file: PathBuf,
    /// Lifetime of tokens printed by `medsfu token`, in seconds.
    pub token_ttl_secs: u64,
}

/// Control API settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Control {
    /// A lead teleconsultant without a connection this long passes the role on.
    pub lead_grace_secs: u64,
    /// Wrong passwords or PINs in a row that lock an account.
    pub max_login_failures: u32,
    /// How long a locked account stays locked.
    pub lockout_secs: u64,
    /// Lifetime of login tokens and of the room tokens the API issues.
    pub api_token_ttl_secs: u64,
    /// Sign-in attempts one address may make per minute (0: no limit).
    pub login_attempts_per_minute: u32,
}

impl Default for Control {
    fn default() -> Self {
        Control {
            lead_grace_secs: 30,
            max_login_failures: 5,
            lockout_secs: 300,
            api_token_ttl_secs: 8 * 3600,
            login_attempts_per_minute: 30,
        }
    }
}

impl Control {
    /// The control API's settings.
    pub fn to_settings(&self) -> medsfu_api::ControlSettings {
        medsfu_api::ControlSettings {
            lead_grace: Duration::from_secs(self.lead_grace_secs),
            login: medsfu_store::LoginPolicy {
                max_failures: self.max_login_failures.max(1),
                lockout_ms: self.lockout_secs.saturating_mul(1000) as i64,
            },
            api_token_ttl: Duration::from_secs(self.api_token_ttl_secs),
            login_attempts_per_minute: self.login_attempts_per_minute,
        }
    }
}

/// Room-core settings (see `medsfu_core::CoreConfig`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Core {
    /// Minimum time between keyframe requests to one publisher.
    pub keyframe_request_interval_ms: u64,
    /// A subscriber still waiting for a keyframe re-asks after this long.
    pub keyframe_retry_interval_ms: u64,
    /// A participant silent this long (nothing authenticated from its peer, no WebSocket)
    /// is removed.
    pub participant_timeout_ms: u64,
    /// How long a reconnecting identity may take its old tracks over.
    pub republish_grace_ms: u64,
    /// Video packets kept per track for retransmission.
    pub rtx_cache_video: usize,
    /// Audio packets kept per track for retransmission.
    pub rtx_cache_audio: usize,
    /// New video subscribers start from the cached current group of pictures.
    pub gop_replay: bool,
    /// The replay is paced at this multiple of the stream's bitrate.
    pub replay_pace_factor: u32,
    /// The replay is never paced slower than this, in bits per second.
    pub replay_min_bitrate: u64,
    /// A subscriber's retransmissions may cost this percentage of its live bytes.
    pub rtx_budget_percent: u32,
    /// Retransmission bytes a subscriber may save up (and has when it joins).
    pub rtx_burst_bytes: u64,
    /// One packet is re-sent to a subscriber, or asked of the publisher, at most once in
    /// this interval.
    pub nack_repeat_interval_ms: u64,
    /// Rooms at most.
    pub max_rooms: usize,
    /// Participants per room at most.
    pub max_participants_per_room: usize,
    /// Tracks one participant may publish at once.
    pub max_tracks_per_participant: usize,
}

/// Log settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// `text` or `json`.
    pub format: String,
    /// A tracing filter such as `info` or `medsfu_media=debug`.
    pub filter: String,
}

impl Default for Http {
    fn default() -> Self {
        Http {
            listen: ([127, 0, 0, 1], 8080).into(),
            shutdown_grace_secs: 10,
            cors_origins: Vec::new(),
            page_stale_ms: 3000,
            page_stale_vitals_ms: 10_000,
        }
    }
}

impl Default for WebRtc {
    fn default() -> Self {
        WebRtc {
            listen: ([127, 0, 0, 1], 50000).into(),
            announce: None,
            receive_buffer_bytes: 4 << 20,
            send_buffer_bytes: 4 << 20,
            rendition_height: 360,
            workers: 0,
        }
    }
}

impl Default for Data {
    fn default() -> Self {
        Data {
            dir: PathBuf::from("./data"),
        }
    }
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            secret_file: PathBuf::from("token.secret"),
            token_ttl_secs: 12 * 3600,
        }
    }
}

impl Default for Core {
    fn default() -> Self {
        let c = medsfu_core::CoreConfig::default();
        let ms = |d: Duration| d.as_millis() as u64;
        Core {
            keyframe_request_interval_ms: ms(c.keyframe_request_interval),
            keyframe_retry_interval_ms: ms(c.keyframe_retry_interval),
            participant_timeout_ms: ms(c.participant_timeout),
            republish_grace_ms: ms(c.republish_grace),
            rtx_cache_video: c.rtx_cache_video,
            rtx_cache_audio: c.rtx_cache_audio,
            gop_replay: c.gop_replay,
            replay_pace_factor: c.replay_pace_factor,
            replay_min_bitrate: c.replay_min_bitrate,
            rtx_budget_percent: c.rtx_budget_percent,
            rtx_burst_bytes: c.rtx_burst_bytes,
            nack_repeat_interval_ms: ms(c.nack_repeat_interval),
            max_rooms: c.max_rooms,
            max_participants_per_room: c.max_participants_per_room,
            max_tracks_per_participant: c.max_tracks_per_participant,
        }
    }
}

impl Default for Log {
    fn default() -> Self {
        Log {
            format: "text".into(),
            filter: "info".into(),
        }
    }
}

impl Core {
    /// The room core's configuration.
    pub fn to_core(&self) -> medsfu_core::CoreConfig {
        medsfu_core::CoreConfig {
            keyframe_request_interval: Duration::from_millis(self.keyframe_request_interval_ms),
            keyframe_retry_interval: Duration::from_millis(self.keyframe_retry_interval_ms),
            participant_timeout: Duration::from_millis(self.participant_timeout_ms),
            republish_grace: Duration::from_millis(self.republish_grace_ms),
            rtx_cache_video: self.rtx_cache_video,
            rtx_cache_audio: self.rtx_cache_audio,
            gop_replay: self.gop_replay,
            replay_pace_factor: self.replay_pace_factor,
            replay_min_bitrate: self.replay_min_bitrate,
            rtx_budget_percent: self.rtx_budget_percent,
            rtx_burst_bytes: self.rtx_burst_bytes,
            nack_repeat_interval: Duration::from_millis(self.nack_repeat_interval_ms),
            max_rooms: self.max_rooms,
            max_participants_per_room: self.max_participants_per_room,
            max_tracks_per_participant: self.max_tracks_per_participant,
            ..medsfu_core::CoreConfig::default()
        }
    }
}

/// Command-line overrides, applied last.
#[derive(Debug, Default, Serialize)]
pub struct Overrides {
    /// `http.listen`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_listen: Option<SocketAddr>,
    /// `webrtc.listen`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webrtc_listen: Option<SocketAddr>,
    /// `data.dir`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// `log.format`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<String>,
    /// `vehicle.listen`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vehicle_listen: Option<SocketAddr>,
}

/// Loads the configuration: defaults, then `file` (if given; it must exist), then
/// `MEDSFU_SECTION__KEY` environment variables, then flags. Unknown keys are errors.
pub fn load(file: Option<&Path>, flags: &Overrides) -> Result<Config, Box<figment::Error>> {
    let mut f = Figment::from(Serialized::defaults(Config::default()));
    if let Some(path) = file {
        if !path.exists() {
            return Err(Box::new(figment::Error::from(format!(
                "config file {} does not exist",
                path.display()
            ))));
        }
        f = f.merge(Toml::file(path));
    }
    // MEDSFU_CONFIG names the file and MEDSFU_RECORD_TOKEN is `medsfu record`'s token
    // (both read by the command line); they are not settings.
    f = f.merge(
        Env::prefixed("MEDSFU_")
            .filter(|k| k != "config" && k != "record_token")
            .split("__"),
    );
    if let Some(a) = flags.http_listen {
        f = f.merge(("http.listen", a));
    }
    if let Some(a) = flags.webrtc_listen {
        f = f.merge(("webrtc.listen", a));
    }
    if let Some(d) = &flags.data_dir {
        f = f.merge(("data.dir", d));
    }
    if let Some(l) = &flags.log_format {
        f = f.merge(("log.format", l));
    }
    if let Some(a) = flags.vehicle_listen {
        f = f.merge(("vehicle.listen", a));
    }
    f.extract().map_err(Box::new)
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment's Jail closures return its (large) error type
mod tests {
    use super::*;
    use figment::Jail;

    #[test]
    fn defaults_need_no_file() {
        Jail::expect_with(|_| {
            let c = load(None, &Overrides::default()).map_err(|e| *e)?;
            assert_eq!(c, Config::default());
            assert_eq!(c.http.listen.to_string(), "127.0.0.1:8080");
            assert_eq!(c.webrtc.listen.to_string(), "127.0.0.1:50000");
            Ok(())
        });
    }

    #[test]
    fn file_env_and_flags_layer_in_order() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "m.toml",
                "[http]\nlisten = \"127.0.0.1:9000\"\n[webrtc]\nlisten = \"127.0.0.1:51000\"\n[core]\nparticipant_timeout_ms = 5000\n",
            )?;
            jail.set_env("MEDSFU_WEBRTC__LISTEN", "127.0.0.1:52000");
            jail.set_env("MEDSFU_CONFIG", "m.toml");
            let flags = Overrides {
                data_dir: Some("/tmp/x".into()),
                ..Overrides::default()
            };
            let c = load(Some(Path::new("m.toml")), &flags).map_err(|e| *e)?;
            assert_eq!(c.http.listen.port(), 9000, "file");
            assert_eq!(c.webrtc.listen.port(), 52000, "env beats file");
            assert_eq!(c.core.participant_timeout_ms, 5000);
            assert_eq!(c.data.dir, PathBuf::from("/tmp/x"), "flag");
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_key() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "m.toml",
                "[http]\nlisten = \"127.0.0.1:9000\"\nlistne = 1\n",
            )?;
            let e = load(Some(Path::new("m.toml")), &Overrides::default()).unwrap_err();
            assert!(e.to_string().contains("listne"), "{e}");
            jail.set_env("MEDSFU_HTTP__PORT", "1");
            let e = load(None, &Overrides::default()).unwrap_err();
            assert!(e.to_string().contains("port"), "{e}");
            Ok(())
        });
    }

    #[test]
    fn the_documented_file_matches_the_defaults() {
        Jail::expect_with(|_| {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/medsfu.toml");
            let c = load(Some(&path), &Overrides::default()).map_err(|e| *e)?;
            assert_eq!(c, Config::default());
            Ok(())
        });
    }
}
