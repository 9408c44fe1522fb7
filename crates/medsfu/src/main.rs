//! `medsfu`: the media and telemetry server for emergency teleconsultation.

mod accounts;
mod calls;
mod certs;
mod config;
mod export;
mod record;
mod retention;
mod vehicle;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use medsfu_api::{AppState, TokenKey};
use medsfu_core::Role;
use medsfu_media::{MediaConfig, MediaServer};
use medsfu_quic::server::VehicleSettings;
use medsfu_telemetry::hub::Hub;
use std::sync::Arc;
use tracing::{info, warn};

/// The demo's ambulance: the vehicle command's defaults.
fn demo_vehicle() -> VehicleArgs {
    VehicleArgs {
        common: Common {
            config: None,
            data_dir: None,
        },
        server: None,
        server_name: "localhost".into(),
        room: "demo".into(),
        call: false,
        device: "ambulance-1".into(),
        ecg_dir: "../shared/data/ecg".into(),
        ecg_record: "100".into(),
        vitals_every: 5,
        no_media: false,
        video: None,
        frames_log: None,
        switch_sim_every: None,
        max_video_kbps: 2000,
        no_adapt: false,
        run_for: None,
    }
}

use crate::config::{Config, Overrides};

/// medsfu: selective forwarding unit for emergency-medicine teleconsultation.
#[derive(Parser)]
#[command(
    version,
    about = "medsfu: selective forwarding unit for emergency-medicine teleconsultation",
    long_about = "medsfu: selective forwarding unit for emergency-medicine teleconsultation.\n\n\
                  `medsfu demo` runs the server with a simulated ambulance; `medsfu serve` runs it \
                  for real. The other commands are the operator's tools: tokens, certificates, \
                  accounts and devices, the audit trail, exports, a recorder and a vehicle simulator."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Run the server and print the URLs of a demo room to open in a browser.
    Demo(ServeArgs),
    /// Print an access token (and nothing else), signed with this server's secret.
    Token(TokenArgs),
    /// Create a development PKI (CA, server and device certificates, CRL); add and revoke
    /// devices in an existing one.
    Certs(CertsArgs),
    /// Run a simulated ambulance that publishes camera, audio and telemetry over QUIC.
    Vehicle(VehicleArgs),
    /// Check the audit trail (`audit verify`): every entry in place and unaltered.
    Audit(AuditArgs),
    /// Export an intervention (a room) as one tar archive with a SHA-256 manifest, or
    /// verify an archive against its manifest (`export verify FILE`).
    Export(ExportArgs),
    /// Manage accounts: crew (PIN), consultants, dispatchers, admins (password).
    User(UserArgs),
    /// Manage devices that crews log in on (device tokens).
    Device(DeviceArgs),
    /// Record a room from a separate process: every track over WHEP, into the same files
    /// as the server's own recorder.
    Record(RecordArgs),
}

#[derive(Args)]
struct RecordArgs {
    #[command(flatten)]
    common: Common,
    /// The server's HTTP base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    server: String,
    /// The room to record.
    #[arg(long)]
    room: String,
    /// An access token for the room with the recorder role (`medsfu token --role
    /// recorder`); from the environment rather than the command line, where others see it.
    #[arg(long, env = "MEDSFU_RECORD_TOKEN", hide_env_values = true)]
    token: String,
    /// Directory for the files, one subdirectory per room (default: recording.dir under
    /// data.dir, as the server's own recordings).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Stop after this many seconds (default: until Ctrl-C or the server ends the session).
    #[arg(long)]
    run_for: Option<u64>,
}

#[derive(Args)]
struct UserArgs {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    action: accounts::UserAction,
}

#[derive(Args)]
struct DeviceArgs {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    action: accounts::DeviceAction,
}

/// Opens the audit trail in the data directory.
fn open_audit(cfg: &Config) -> Result<medsfu_audit::AuditLog> {
    std::fs::create_dir_all(&cfg.data.dir)
        .with_context(|| format!("creating {}", cfg.data.dir.display()))?;
    medsfu_audit::AuditLog::open(&audit_path(cfg), audit_key(cfg, true)?)
        .with_context(|| format!("audit trail {}", audit_path(cfg).display()))
}

/// The audit trail's key, in its own file beside the database (`create`: made when
/// missing, unless the trail is keyed already: a new key would not verify it).
fn audit_key(cfg: &Config, create: bool) -> Result<medsfu_audit::AuditKey> {
    let path = cfg.data.dir.join("audit.key");
    if !path.exists() {
        anyhow::ensure!(
            create,
            "no audit key at {}: the trail cannot be checked without it",
            path.display()
        );
        let db = audit_path(cfg);
        if db.exists() {
            let probe = medsfu_audit::AuditLog::open(&db, medsfu_audit::AuditKey::new([0; 32]))?;
            anyhow::ensure!(
                !probe.has_keyed_entries()?,
                "the audit trail {} is keyed but its key {} is missing: restore the key file",
                db.display(),
                path.display()
            );
        }
        let key: [u8; 32] = rand::random();
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        write_private(&path, hex.as_bytes())?;
    }
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let text = text.trim();
    let mut key = [0u8; 32];
    anyhow::ensure!(
        text.len() == 64 && text.is_ascii(),
        "{} is not 64 hex digits",
        path.display()
    );
    for (i, b) in key.iter_mut().enumerate() {
        *b = u8::from_str_radix(&text[2 * i..2 * i + 2], 16)
            .with_context(|| format!("{} is not 64 hex digits", path.display()))?;
    }
    Ok(medsfu_audit::AuditKey::new(key))
}

/// Records an operator's action at the shell in the audit trail.
fn audit_cli(log: &medsfu_audit::AuditLog, action: &str, detail: serde_json::Value) -> Result<()> {
    let actor = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "unknown".into());
    let at = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    medsfu_audit::AuditStore::append(
        log,
        medsfu_audit::Event {
            at_unix_ms: at,
            actor,
            role: "admin".into(),
            action: action.into(),
            room: String::new(),
            source: "cli".into(),
            detail: detail.to_string(),
        },
    )?;
    Ok(())
}

#[derive(Args)]
struct ExportArgs {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    action: Option<ExportAction>,
    /// The room (intervention) to export.
    #[arg(long)]
    room: Option<String>,
    /// Archive to write (default: export-ROOM-TIME.tar here).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args)]
struct AuditArgs {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    action: AuditAction,
}

#[derive(Subcommand)]
enum AuditAction {
    /// Walk the hash chain; exit 1 if any entry was altered, removed, inserted or moved.
    Verify,
}

/// The audit trail's database, in the data directory.
fn audit_path(cfg: &Config) -> PathBuf {
    cfg.data.dir.join("audit.db")
}

fn audit_cmd(a: AuditArgs) -> Result<()> {
    let cfg = load(&a.common, Overrides::default())?;
    let AuditAction::Verify = a.action;
    let path = audit_path(&cfg);
    if !path.exists() {
        anyhow::bail!("no audit trail at {}", path.display());
    }
    let log = medsfu_audit::AuditLog::open(&path, audit_key(&cfg, false)?)?;
    let (problems, n) = log.verify()?;
    if problems.is_empty() {
        println!("audit trail intact: {n} entries");
        return Ok(());
    }
    for p in &problems {
        println!("{p}");
    }
    anyhow::bail!(
        "audit trail damaged: {} problem(s) in {n} entries",
        problems.len()
    );
}

#[derive(Subcommand)]
enum ExportAction {
    /// Find interventions (rooms of the control API, closed ones too): every condition
    /// given must hold. Prints one line per room, newest first.
    Find {
        /// The call of this vehicle.
        #[arg(long)]
        vehicle: Option<String>,
        /// Rooms this account or device was ever a member of.
        #[arg(long)]
        participant: Option<String>,
        /// Rooms still open at or after this time (YYYY-MM-DD or RFC 3339, UTC).
        #[arg(long)]
        from: Option<String>,
        /// Rooms opened at or before this time (YYYY-MM-DD: the end of that day).
        #[arg(long)]
        to: Option<String>,
    },
    /// Check every file of an archive against its manifest; exit 1 if any differs.
    Verify {
        /// The archive.
        archive: PathBuf,
    },
}

#[derive(Args)]
struct CertsArgs {
    #[command(flatten)]
    common: Common,
    /// PKI directory (default: DATA_DIR/pki).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Names in the server certificate (when the CA is created).
    #[arg(long = "server-name", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string()])]
    server_names: Vec<String>,
    /// Issue a device certificate for this identity (repeatable).
    #[arg(long = "device")]
    devices: Vec<String>,
    /// Days a new device certificate is valid.
    #[arg(long, default_value_t = 365)]
    device_days: i64,
    /// Revoke the certificate issued to this identity (repeatable).
    #[arg(long)]
    revoke: Vec<String>,
}

#[derive(Args)]
struct VehicleArgs {
    #[command(flatten)]
    common: Common,
    /// Server QUIC address (default: vehicle.listen).
    #[arg(long)]
    server: Option<std::net::SocketAddr>,
    /// Server name in its certificate.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// Room (call) to publish into.
    #[arg(long, default_value = "demo")]
    room: String,
    /// Open a call instead (the crew's one button): the centre sees it ring, and the
    /// server names the room.
    #[arg(long, conflicts_with = "room")]
    call: bool,
    /// Device identity: uses DATA_DIR/pki/device-NAME.pem and .key.
    #[arg(long, default_value = "ambulance-1")]
    device: String,
    /// Directory of the WFDB ECG recording.
    #[arg(long, default_value = "../shared/data/ecg")]
    ecg_dir: PathBuf,
    /// ECG record to play (100: 2 leads at 360 Hz; s0010_re: 12 leads at 1000 Hz).
    #[arg(long, default_value = "100")]
    ecg_record: String,
    /// Seconds between vital-sign readings (1-60).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=60))]
    vitals_every: u64,
    /// Send no video or audio (telemetry only).
    #[arg(long)]
    no_media: bool,
    /// Play this H.265 Annex-B file (looped) instead of the test pattern.
    #[arg(long)]
    video: Option<PathBuf>,
    /// Append `source sequence sha256` for every generated telemetry frame to FILE.
    #[arg(long)]
    frames_log: Option<PathBuf>,
    /// Move to a new local address every SECS seconds (simulated SIM switch).
    #[arg(long)]
    switch_sim_every: Option<u64>,
    /// Highest roof-camera bitrate in kb/s; congestion steps it down from here.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(250..=20_000))]
    max_video_kbps: u32,
    /// Keep the camera at its highest bitrate and send every picture whatever the path
    /// says (for comparison: audio and control then suffer under congestion).
    #[arg(long)]
    no_adapt: bool,
    /// Stop after SECS seconds.
    #[arg(long)]
    run_for: Option<u64>,
}

#[derive(Args)]
struct Common {
    /// Configuration file (TOML); see config/medsfu.toml.
    #[arg(long, env = "MEDSFU_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Directory for state (overrides data.dir).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    common: Common,
    /// HTTP address (overrides http.listen).
    #[arg(long)]
    http_listen: Option<std::net::SocketAddr>,
    /// WebRTC media UDP address (overrides webrtc.listen).
    #[arg(long)]
    webrtc_listen: Option<std::net::SocketAddr>,
    /// Log format: text or json (overrides log.format).
    #[arg(long)]
    log_format: Option<String>,
    /// Vehicle QUIC address (overrides vehicle.listen).
    #[arg(long)]
    vehicle_listen: Option<std::net::SocketAddr>,
}

#[derive(Args)]
struct TokenArgs {
    #[command(flatten)]
    common: Common,
    /// Room the token is for.
    #[arg(long)]
    room: String,
    /// Identity of the holder.
    #[arg(long)]
    identity: String,
    /// Role: vehicle, glasses, team, lead, consultant, dispatcher, recorder, admin.
    #[arg(long)]
    role: Role,
    /// Lifetime in seconds (default: auth.token_ttl_secs).
    #[arg(long)]
    ttl: Option<u64>,
}

fn main() -> Result<()> {
    // Everything medsfu writes is patient data or a secret (databases, the audit trail,
    // journals, recordings, PDFs, exports, keys): readable by its own user only, whatever
    // umask it was started with.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(a) => serve(a, false),
        Command::Demo(a) => serve(a, true),
        Command::Token(a) => token(a),
        Command::Certs(a) => certs_cmd(a),
        Command::Vehicle(a) => vehicle_cmd(a),
        Command::Export(a) => export_cmd(a),
        Command::Audit(a) => audit_cmd(a),
        Command::User(a) => accounts::user(&load(&a.common, Overrides::default())?, a.action),
        Command::Device(a) => accounts::device(&load(&a.common, Overrides::default())?, a.action),
        Command::Record(a) => record_cmd(a),
    }
}

fn record_cmd(a: RecordArgs) -> Result<()> {
    let cfg = load(&a.common, Overrides::default())?;
    init_logging(&cfg)?;
    let o = record::Options {
        server: a.server,
        room: a.room,
        token: a.token,
        dir: a
            .dir
            .unwrap_or_else(|| cfg.data.dir.join(&cfg.recording.dir)),
        run_for: a.run_for.map(Duration::from_secs),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(record::run(o))
}

/// A time given on the command line: RFC 3339, or a UTC day (its start, or with
/// `end_of_day` its last millisecond); milliseconds since 1970.
fn parse_time(s: &str, end_of_day: bool) -> Result<i64> {
    use time::format_description::well_known::Rfc3339;
    if let Ok(t) = time::OffsetDateTime::parse(s, &Rfc3339) {
        return Ok((t.unix_timestamp_nanos() / 1_000_000) as i64);
    }
    let day = time::Date::parse(s, time::macros::format_description!("[year]-[month]-[day]"))
        .with_context(|| format!("{s:?} is neither YYYY-MM-DD nor RFC 3339"))?;
    let start = day.midnight().assume_utc().unix_timestamp() * 1000;
    Ok(if end_of_day {
        start + 86_400_000 - 1
    } else {
        start
    })
}

fn export_cmd(a: ExportArgs) -> Result<()> {
    if let Some(ExportAction::Find {
        vehicle,
        participant,
        from,
        to,
    }) = &a.action
    {
        let cfg = load(&a.common, Overrides::default())?;
        let filter = medsfu_store::RoomFilter {
            vehicle: vehicle.clone(),
            participant: participant.clone(),
            from_ms: from.as_deref().map(|s| parse_time(s, false)).transpose()?,
            to_ms: to.as_deref().map(|s| parse_time(s, true)).transpose()?,
        };
        anyhow::ensure!(
            accounts::store_path(&cfg).exists(),
            "no database at {}: this data directory has no rooms of the control API",
            accounts::store_path(&cfg).display()
        );
        let store = accounts::open_store(&cfg)?;
        let lines = export::find(&store, &filter)?;
        for l in &lines {
            println!("{l}");
        }
        // Finding interventions reads who took part: it goes into the trail.
        audit_cli(
            &open_audit(&cfg)?,
            "export_find",
            serde_json::json!({
                "vehicle": vehicle, "participant": participant, "from": from, "to": to,
                "found": lines.len(),
            }),
        )?;
        return Ok(());
    }
    if let Some(ExportAction::Verify { archive }) = a.action {
        let problems = export::verify(&archive)?;
        if problems.is_empty() {
            println!("{}: every file matches the manifest", archive.display());
            return Ok(());
        }
        for p in &problems {
            println!("{p}");
        }
        anyhow::bail!("{}: {} problem(s)", archive.display(), problems.len());
    }
    let Some(room) = a.room else {
        anyhow::bail!("name the room to export with --room (or: export verify FILE)");
    };
    if !medsfu_api::valid_room(&room) {
        anyhow::bail!("{}", medsfu_api::ROOM_RULE);
    }
    let cfg = load(&a.common, Overrides::default())?;
    let now = time::OffsetDateTime::now_utc();
    let stamp = format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    );
    let mut files = export::collect(
        &cfg.data.dir.join(&cfg.telemetry.dir),
        &cfg.data.dir.join(&cfg.recording.dir),
        &room,
    )?;
    // The room's memberships and its audit entries, when this data directory has them.
    let store = accounts::store_path(&cfg)
        .exists()
        .then(|| accounts::open_store(&cfg))
        .transpose()?;
    let trail = audit_path(&cfg)
        .exists()
        .then(|| open_audit(&cfg))
        .transpose()?;
    files.extend(export::record_files(
        store.as_ref().map(|s| s as &dyn medsfu_store::Store),
        trail.as_ref().map(|t| t as &dyn medsfu_audit::AuditStore),
        &room,
    )?);
    let out = a
        .out
        .unwrap_or_else(|| PathBuf::from(format!("export-{room}-{stamp}.tar")));
    let mtime = u64::try_from(now.unix_timestamp()).unwrap_or(0);
    export::write(&out, &room, &stamp, mtime, &files)?;
    // An export is an access to everything recorded: it goes into the trail.
    let actor = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "unknown".into());
    medsfu_audit::AuditStore::append(
        &open_audit(&cfg)?,
        medsfu_audit::Event {
            at_unix_ms: (now.unix_timestamp_nanos() / 1_000_000) as i64,
            actor,
            role: "admin".into(),
            action: "export".into(),
            room: room.clone(),
            source: "cli".into(),
            detail:
                serde_json::json!({ "archive": out.display().to_string(), "files": files.len() })
                    .to_string(),
        },
    )?;
    let bytes: usize = files.iter().map(|(_, d)| d.len()).sum();
    println!(
        "wrote {} ({} files and a manifest, {bytes} bytes)",
        out.display(),
        files.len()
    );
    Ok(())
}

fn load(common: &Common, mut o: Overrides) -> Result<Config> {
    o.data_dir = common.data_dir.clone();
    config::load(common.config.as_deref(), &o).context("configuration")
}

/// Makes the data directory private (an older install or a hand-made directory may be
/// open to all); what is inside is created private by the umask.
fn restrict_data_dir(dir: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(dir)
        .with_context(|| format!("data directory {}", dir.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode & 0o700))
            .with_context(|| format!("making {} private", dir.display()))?;
        tracing::warn!(
            dir = %dir.display(),
            was = format!("{:o}", mode & 0o777),
            "the data directory was readable by others; it is now private (0700); \
             check the modes of files an older version left in it"
        );
    }
    Ok(())
}

/// Reads the token secret, creating a random one on first use.
fn token_key(cfg: &Config) -> Result<TokenKey> {
    let path = cfg.data.dir.join(&cfg.auth.secret_file);
    if !path.exists() {
        std::fs::create_dir_all(&cfg.data.dir)
            .with_context(|| format!("creating {}", cfg.data.dir.display()))?;
        let secret: [u8; 32] = rand::random();
        let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
        write_private(&path, hex.as_bytes())?;
    }
    let secret = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let secret = secret.trim_ascii();
    anyhow::ensure!(
        secret.len() >= 32,
        "{} holds fewer than 32 bytes",
        path.display()
    );
    Ok(TokenKey::new(secret))
}

fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    o.mode(0o600);
    let mut f = o
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(data)?;
    Ok(())
}

fn token(a: TokenArgs) -> Result<()> {
    anyhow::ensure!(
        medsfu_api::valid_room(&a.room),
        "room names are 1-64 characters of A-Z a-z 0-9 . _ -"
    );
    let cfg = load(&a.common, Overrides::default())?;
    let key = token_key(&cfg)?;
    let ttl = Duration::from_secs(a.ttl.unwrap_or(cfg.auth.token_ttl_secs));
    println!(
        "{}",
        key.issue(&a.room, &a.identity, a.role, SystemTime::now(), ttl)
    );
    Ok(())
}

fn certs_cmd(a: CertsArgs) -> Result<()> {
    let cfg = load(&a.common, Overrides::default())?;
    let dir = a.dir.unwrap_or_else(|| cfg.data.dir.join("pki"));
    let written = certs::run(
        &dir,
        &certs::Request {
            server_names: &a.server_names,
            devices: &a.devices,
            device_days: a.device_days,
            revoke: &a.revoke,
        },
    )?;
    for p in written {
        println!("wrote {}", p.display());
    }
    Ok(())
}

fn vehicle_options(cfg: &Config, a: &VehicleArgs) -> vehicle::Options {
    let pki = cfg.data.dir.join("pki");
    vehicle::Options {
        server: a.server.unwrap_or(cfg.vehicle.listen),
        server_name: a.server_name.clone(),
        room: (!a.call).then(|| a.room.clone()),
        ca: pki.join(certs::CA),
        cert: certs::device_cert(&pki, &a.device),
        key: certs::device_key(&pki, &a.device),
        outbox: cfg.data.dir.join(format!("outbox-{}", a.device)),
        ecg: Some((a.ecg_dir.clone(), a.ecg_record.clone())),
        vitals_every: Duration::from_secs(a.vitals_every),
        media: !a.no_media,
        video_file: a.video.clone(),
        frames_log: a.frames_log.clone(),
        switch_every: a.switch_sim_every.map(Duration::from_secs),
        max_video_bps: a.max_video_kbps * 1000,
        adapt: !a.no_adapt,
        run_for: a.run_for.map(Duration::from_secs),
    }
}

fn vehicle_cmd(a: VehicleArgs) -> Result<()> {
    let cfg = load(&a.common, Overrides::default())?;
    init_logging(&cfg)?;
    let o = vehicle_options(&cfg, &a);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(vehicle::run(o))
}

/// The WebRTC library's own levels, unless the filter names them: every DTLS handshake
/// with a browser warns of TLS 1.3 extensions it ignores (9 lines per peer connection),
/// and every ICE and peer-connection state change is logged at info. medsfu logs what
/// matters of a session itself.
const WEBRTC_LIBRARY_LEVELS: &str = "rtc=warn,rtc_dtls=error";

/// The tracing filter in effect for `configured`: the WebRTC library quieted unless the
/// filter says something about it (`rtc…=…`).
fn log_filter(configured: &str) -> String {
    if configured.contains("rtc") {
        configured.to_owned()
    } else if configured.trim().is_empty() {
        WEBRTC_LIBRARY_LEVELS.to_owned()
    } else {
        format!("{configured},{WEBRTC_LIBRARY_LEVELS}")
    }
}

fn init_logging(cfg: &Config) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(log_filter(&cfg.log.filter))
        .with_context(|| format!("log.filter {:?}", cfg.log.filter))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colours only for a terminal, not in files and journals.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match cfg.log.format.as_str() {
        "json" => builder.json().init(),
        "text" => builder.init(),
        other => anyhow::bail!("log.format must be text or json, not {other:?}"),
    }
    Ok(())
}

/// `s` quoted for a POSIX shell when it holds anything but plain path characters.
fn shell_word(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+=:,@".contains(&b));
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

fn serve(a: ServeArgs, demo: bool) -> Result<()> {
    let cfg = load(
        &a.common,
        Overrides {
            http_listen: a.http_listen,
            webrtc_listen: a.webrtc_listen,
            log_format: a.log_format.clone(),
            vehicle_listen: a.vehicle_listen,
            ..Overrides::default()
        },
    )?;
    init_logging(&cfg)?;
    anyhow::ensure!(
        !cfg.webrtc.listen.ip().is_unspecified() || cfg.webrtc.announce.is_some(),
        "webrtc.listen {} is a wildcard address, which cannot be put in ICE candidates: \
         set webrtc.announce (MEDSFU_WEBRTC__ANNOUNCE) to the address clients reach",
        cfg.webrtc.listen
    );
    anyhow::ensure!(
        (144..=1080).contains(&cfg.webrtc.rendition_height) && cfg.webrtc.rendition_height % 2 == 0,
        "webrtc.rendition_height {} is not an even number of lines from 144 to 1080 (360 or 720)",
        cfg.webrtc.rendition_height
    );
    let key = token_key(&cfg)?;
    restrict_data_dir(&cfg.data.dir)?;
    // How to run another simulated ambulance against this server: same configuration
    // file and data directory (its device certificates live there).
    let mut second_ambulance =
        String::from("cargo run -p medsfu -- vehicle --call --device ambulance-2");
    if let Some(c) = &a.common.config {
        second_ambulance.push_str(&format!(
            " --config {}",
            shell_word(&c.display().to_string())
        ));
    }
    if cfg.data.dir != config::Data::default().dir {
        let dir = cfg.data.dir.display().to_string();
        second_ambulance.push_str(&format!(" --data-dir {}", shell_word(&dir)));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(async move {
        let registry = prometheus::Registry::new();
        let media = MediaServer::start(
            MediaConfig {
                listen: cfg.webrtc.listen,
                announce: cfg.webrtc.announce,
                receive_buffer_bytes: cfg.webrtc.receive_buffer_bytes,
                send_buffer_bytes: cfg.webrtc.send_buffer_bytes,
                rendition_height: cfg.webrtc.rendition_height,
                workers: cfg.webrtc.workers,
                core: cfg.core.to_core(),
                recordings: cfg.recording.enabled.then(|| medsfu_media::RecordingSettings {
                    dir: cfg.data.dir.join(&cfg.recording.dir),
                    voice_archive: cfg.recording.voice_archive,
                }),
            },
            &registry,
        )
        .await
        .with_context(|| format!("binding WebRTC media on {}", cfg.webrtc.listen))?;
        let listener = tokio::net::TcpListener::bind(cfg.http.listen)
            .await
            .with_context(|| format!("binding HTTP on {}", cfg.http.listen))?;
        let http = listener.local_addr()?;
        let hub = Arc::new(
            Hub::new(
                &cfg.data.dir.join(&cfg.telemetry.dir),
                cfg.telemetry.segment_bytes,
                &registry,
            )
            .context("telemetry metrics")?,
        );
        let audit: Arc<dyn medsfu_audit::AuditStore> = Arc::new(open_audit(&cfg)?);
        let store = Arc::new(accounts::open_store(&cfg)?);
        let control = medsfu_api::Control::start(
            store,
            media.clone(),
            Some(audit.clone()),
            cfg.control.to_settings(),
            &registry,
        )
        .await
        .context("control API")?;
        let pki = cfg.data.dir.join("pki");
        if demo && !pki.join(certs::CA).exists() {
            certs::run(
                &pki,
                &certs::Request {
                    server_names: &["localhost".into(), "127.0.0.1".into()],
                    devices: &["ambulance-1".into(), "ambulance-2".into()],
                    device_days: 365,
                    revoke: &[],
                },
            )?;
        }
        let at = |p: &PathBuf| cfg.data.dir.join(p);
        let quic = if at(&cfg.vehicle.cert).exists() {
            let server = medsfu_quic::server::start(
                VehicleSettings {
                    listen: cfg.vehicle.listen,
                    cert: at(&cfg.vehicle.cert),
                    key: at(&cfg.vehicle.key),
                    ca: at(&cfg.vehicle.ca),
                    crls: cfg.vehicle.crls.iter().map(at).collect(),
                    crl_reload: Duration::from_secs(cfg.vehicle.crl_reload_secs.max(1)),
                    idle_timeout: Duration::from_secs(cfg.vehicle.idle_timeout_secs.max(1)),
                    control_rate: cfg.vehicle.control_rate,
                },
                media.clone(),
                hub.clone(),
                Some(Arc::new(calls::VehicleCalls {
                    control: control.clone(),
                    open_rooms: cfg.vehicle.open_rooms,
                })),
                &registry,
            )
            .with_context(|| format!("vehicle endpoint on {}", cfg.vehicle.listen))?;
            Some(server)
        } else {
            warn!(
                cert = %at(&cfg.vehicle.cert).display(),
                "vehicle endpoint not started: no server certificate (run `medsfu certs`)"
            );
            None
        };
        let quic_addr = quic.as_ref().and_then(|q| q.local_addr().ok());
        info!(http = %http, media = %media.local_addr(), "medsfu serving");
        match quic_addr {
            Some(q) => println!(
                "medsfu listening on http://{http}/ (media on udp {}, vehicles on quic {q})",
                media.local_addr()
            ),
            None => println!("medsfu listening on http://{http}/ (media on udp {})", media.local_addr()),
        }
        if let (true, Some(q)) = (demo, quic_addr) {
            let mut o = vehicle_options(&cfg, &demo_vehicle());
            o.server = q;
            // The demo runs with what this machine has: no ffmpeg, no camera; no recording
            // beside the checkout, no ECG (vitals, GPS and status still flow).
            let ffmpeg = std::process::Command::new("ffmpeg")
                .arg("-version")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ffmpeg {
                warn!("ffmpeg not found: the demo ambulance sends no camera or audio");
                o.media = false;
            }
            if let Some((dir, name)) = &o.ecg {
                if !dir.join(format!("{name}.hea")).exists() {
                    warn!(dir = %dir.display(), "ECG recording not found: the demo ambulance sends no ECG");
                    o.ecg = None;
                }
            }
            tokio::spawn(async move {
                if let Err(e) = vehicle::run(o).await {
                    warn!(error = %e, "demo ambulance stopped");
                }
            });
        }
        if demo {
            let ttl = Duration::from_secs(cfg.auth.token_ttl_secs);
            let now = SystemTime::now();
            let crew = key.issue("demo", "crew-tablet", Role::Team, now, ttl);
            let lead = key.issue("demo", "dr-lead", Role::Lead, now, ttl);
            println!();
            println!("Demo room \"demo\" with a simulated ambulance (roof camera, ECG, vitals, GPS):");
            println!("  lead doctor (watches, talks):       http://{http}/?room=demo&token={lead}&publish=microphone");
            println!("  crew tablet (publishes camera+mic): http://{http}/?room=demo&token={crew}&publish=camera,microphone");
            println!("  WHEP (lead token):                  http://{http}/whep/demo  Authorization: Bearer {lead}");
            // The centre's side: a demo teleconsultant account, its password new each run.
            let password = format!("demo-{:016x}", rand::random::<u64>());
            let store = control.store();
            let pw = password.clone();
            let made = tokio::task::spawn_blocking(move || {
                if store.account("dr-demo")?.is_some() {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as i64);
                    store.set_secret("dr-demo", &pw, now)
                } else {
                    store.add_account(
                        &medsfu_store::NewAccount {
                            name: "dr-demo".into(),
                            role: medsfu_store::AccountRole::Consultant,
                            secret: pw,
                            display_name: "Dr Demo".into(),
                        },
                        0,
                    )
                }
            })
            .await;
            if let Ok(Ok(())) = made {
                println!("Teleconsultation centre: http://{http}/  sign in as dr-demo / {password}");
                if quic_addr != Some(cfg.vehicle.listen) {
                    if let Some(q) = quic_addr {
                        second_ambulance.push_str(&format!(" --server {q}"));
                    }
                }
                println!("  then ring it from a second simulated ambulance:  {second_ambulance}");
            }
            println!("Stop with Ctrl-C.");
        }
        if let (true, Some(days)) = (cfg.recording.enabled, cfg.recording.voice_retention_days) {
            let dir = cfg.data.dir.join(&cfg.recording.dir);
            let max_age = Duration::from_secs(days.saturating_mul(86_400));
            tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_secs(3600));
                loop {
                    every.tick().await;
                    let dir = dir.clone();
                    let deleted = tokio::task::spawn_blocking(move || {
                        retention::sweep(&dir, max_age, SystemTime::now())
                    })
                    .await
                    .unwrap_or_default();
                    if !deleted.is_empty() {
                        info!(files = deleted.len(), "voice archive files past retention deleted");
                    }
                }
            });
        }
        let mut state = AppState::new(media.clone(), key, registry, hub)
            .with_audit(audit)
            .with_control(control)
            .with_cors_origins(&cfg.http.cors_origins)
            .map_err(anyhow::Error::msg)?
            .with_page_staleness(cfg.http.page_stale_ms, cfg.http.page_stale_vitals_ms);
        if cfg.recording.enabled {
            state = state.with_recordings(cfg.data.dir.join(&cfg.recording.dir));
        }
        let app = medsfu_api::router(state.clone());
        let flush = state.clone();
        let (signalled_tx, signalled) = tokio::sync::oneshot::channel::<()>();
        let stopping = {
            let quic = quic.clone();
            async move {
                shutdown().await;
                info!("stopping: telling sessions and vehicles");
                state.begin_shutdown();
                if let Some(q) = &quic {
                    q.close();
                }
                let _ = signalled_tx.send(());
            }
        };
        // The peer's address goes into the audit trail ("from where"), never into logs.
        let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
        let serve = axum::serve(listener, app).with_graceful_shutdown(stopping);
        let serve = std::future::IntoFuture::into_future(serve);
        let grace = Duration::from_secs(cfg.http.shutdown_grace_secs);
        tokio::select! {
            r = serve => r.context("HTTP server")?,
            () = async {
                if signalled.await.is_ok() {
                    tokio::time::sleep(grace).await;
                } else {
                    std::future::pending::<()>().await;
                }
            } => warn!("connections still open after the grace period; exiting"),
        }
        // Refusals counted but not yet summed up go into the trail before it closes.
        flush.flush_refusals().await;
        if let Some(q) = quic {
            q.close();
            // Let the close frames leave; every acknowledged frame is already on disk.
            let _ = tokio::time::timeout(Duration::from_secs(2), q.wait_idle()).await;
        }
        // Recordings end with their last fragment or page written and the file closed.
        if !media.finish_recordings(Duration::from_secs(5)).await {
            warn!("recordings still being written at exit; they end at their last fragment");
        }
        info!("medsfu stopped");
        Ok(())
    })
}

async fn shutdown() {
    let ctrl_c = async {
        // Without a signal handler the server still stops on SIGTERM below.
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_webrtc_library_is_quieted_unless_the_filter_names_it() {
        assert_eq!(log_filter("info"), "info,rtc=warn,rtc_dtls=error");
        assert_eq!(log_filter(""), "rtc=warn,rtc_dtls=error");
        assert_eq!(log_filter("info,rtc_ice=debug"), "info,rtc_ice=debug");
        for f in ["info", "debug,medsfu_media=trace", ""] {
            assert!(
                tracing_subscriber::EnvFilter::try_new(log_filter(f)).is_ok(),
                "{f}"
            );
        }
    }

    #[test]
    fn shell_words_are_quoted_only_when_needed() {
        assert_eq!(shell_word("/srv/medsfu/data"), "/srv/medsfu/data");
        assert_eq!(shell_word("/tmp/my data"), "'/tmp/my data'");
        assert_eq!(shell_word("it's"), "'it'\\''s'");
        assert_eq!(shell_word(""), "''");
    }
}
