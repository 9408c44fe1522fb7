//! `medsfu`: the media and telemetry server for emergency teleconsultation.

mod config;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use medsfu_api::{AppState, TokenKey};
use medsfu_core::Role;
use medsfu_webrtc::{MediaConfig, MediaServer};
use tracing::info;

use crate::config::{Config, Overrides};

/// medsfu: selective forwarding unit for emergency-medicine teleconsultation.
#[derive(Parser)]
#[command(version, about)]
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
}

#[derive(Args)]
struct Common {
    /// Configuration file (TOML); see config/medsfu.toml.
    #[arg(long, env = "MEDSFU_CONFIG")]
    config: Option<PathBuf>,
    /// Directory for state (overrides data.dir).
    #[arg(long)]
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
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(a) => serve(a, false),
        Command::Demo(a) => serve(a, true),
        Command::Token(a) => token(a),
    }
}

fn load(common: &Common, mut o: Overrides) -> Result<Config> {
    o.data_dir = common.data_dir.clone();
    config::load(common.config.as_deref(), &o).context("configuration")
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

fn init_logging(cfg: &Config) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&cfg.log.filter)
        .with_context(|| format!("log.filter {:?}", cfg.log.filter))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cfg.log.format.as_str() {
        "json" => builder.json().init(),
        "text" => builder.init(),
        other => anyhow::bail!("log.format must be text or json, not {other:?}"),
    }
    Ok(())
}

fn serve(a: ServeArgs, demo: bool) -> Result<()> {
    let cfg = load(
        &a.common,
        Overrides {
            http_listen: a.http_listen,
            webrtc_listen: a.webrtc_listen,
            log_format: a.log_format.clone(),
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
    let key = token_key(&cfg)?;
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
                core: cfg.core.to_core(),
            },
            &registry,
        )
        .await
        .with_context(|| format!("binding WebRTC media on {}", cfg.webrtc.listen))?;
        let listener = tokio::net::TcpListener::bind(cfg.http.listen)
            .await
            .with_context(|| format!("binding HTTP on {}", cfg.http.listen))?;
        let http = listener.local_addr()?;
        info!(http = %http, media = %media.local_addr(), "medsfu serving");
        println!("medsfu listening on http://{http}/ (media on udp {})", media.local_addr());
        if demo {
            let ttl = Duration::from_secs(cfg.auth.token_ttl_secs);
            let now = SystemTime::now();
            let crew = key.issue("demo", "crew-tablet", Role::Team, now, ttl);
            let lead = key.issue("demo", "dr-lead", Role::Lead, now, ttl);
            println!();
            println!("Demo room \"demo\": open these two in a browser (two tabs or two machines):");
            println!("  crew tablet (publishes camera+mic): http://{http}/?room=demo&token={crew}&publish=camera,microphone");
            println!("  lead doctor (watches, talks):       http://{http}/?room=demo&token={lead}&publish=microphone");
            println!("Stop with Ctrl-C.");
        }
        let app = medsfu_api::router(AppState::new(media, key, registry));
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown())
            .await
            .context("HTTP server")?;
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
