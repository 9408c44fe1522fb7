//! `medsfu record`: a recorder in a process of its own, for sites that move recording off
//! the media server. It joins the room's signalling with the recorder role, takes each
//! track over its own WHEP session (`/whep/ROOM?track=T<n>`) and writes the same files as
//! the recorder inside `medsfu serve` (fragmented MP4 for video, Ogg for Opus, a `.json`
//! beside each), until stopped, until `--run-for` has passed or until the server ends
//! the session.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use medsfu_client::CodecSpec;
use medsfu_codec::Codec;
use medsfu_media::record::{RecInput, RecordStats, TrackFile, TrackLabel};
use prometheus::{IntCounter, IntGauge};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;
use tracing::{info, warn};

/// What `medsfu record` was asked to do.
#[derive(Debug)]
pub struct Options {
    /// The server's HTTP base URL, e.g. `http://10.0.0.5:8080`.
    pub server: String,
    /// The room.
    pub room: String,
    /// An access token for the room with the recorder role.
    pub token: String,
    /// Where the files go (a directory per room under it).
    pub dir: PathBuf,
    /// Stop after this long; `None` runs until Ctrl-C or the session ends.
    pub run_for: Option<Duration>,
}

/// One track being recorded: dropping `stop` ends its WHEP session and finishes its file.
struct Recording {
    _stop: oneshot::Sender<()>,
}

/// The codecs offered for a track of `codec` (every H.264 profile the server may forward).
fn offer(codec: Codec) -> Vec<CodecSpec> {
    let video = |mime: &str, payload_type: u8, fmtp: &str| CodecSpec {
        mime: mime.into(),
        payload_type,
        clock_rate: 90_000,
        channels: 0,
        fmtp: fmtp.into(),
    };
    match codec {
        Codec::H265 => vec![CodecSpec::h265()],
        Codec::H264 => ["42e01f", "42001f", "64001f"]
            .iter()
            .zip([102, 106, 112])
            .map(|(profile, pt)| {
                video(
                    "video/H264",
                    pt,
                    &format!(
                        "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id={profile}"
                    ),
                )
            })
            .collect(),
        Codec::Vp8 => vec![video("video/VP8", 96, "")],
        _ => vec![CodecSpec::opus()],
    }
}

/// Runs the recorder until it is stopped; the files are finished when it returns.
pub async fn run(o: Options) -> Result<()> {
    let base = o.server.trim_end_matches('/').to_owned();
    let ws_url = match base.split_once("://") {
        Some(("http", rest)) => format!("ws://{rest}/ws"),
        // The WHEP client and this WebSocket speak plain HTTP (medsfu serves no TLS).
        _ => bail!("--server must be an http:// URL, not {base:?}"),
    };
    let (mut ws, _) = tokio_tungstenite::connect_async(&ws_url)
        .await
        .with_context(|| format!("connecting to {ws_url}"))?;
    let join = json!({ "type": "join", "token": o.token, "id": 1 });
    ws.send(Message::text(join.to_string())).await?;

    let stats = RecordStats {
        active: IntGauge::new("tracks_active", "tracks being recorded")?,
        bytes: IntCounter::new("bytes_written", "bytes written")?,
        failures: IntCounter::new("failures", "recordings that failed")?,
        refused: IntCounter::new("refused", "publisher input refused")?,
    };
    let mut roles: HashMap<String, String> = HashMap::new();
    let mut recordings: HashMap<String, Recording> = HashMap::new();
    let stop_at = o.run_for.map(|d| tokio::time::Instant::now() + d);
    let until = async {
        match stop_at {
            Some(t) => tokio::time::sleep_until(t).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(until);
    // Made once: a Ctrl-C while a message is handled is still seen at the next turn.
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    let mut joined = false;
    let mut tasks = tokio::task::JoinSet::new();
    let ended = loop {
        let msg = tokio::select! {
            m = ws.next() => m,
            () = &mut until => break "time is up",
            _ = &mut interrupted => break "interrupted",
        };
        let text = match msg {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(_))) | None => break "the server ended the session",
            Some(Ok(_)) => continue,
            Some(Err(e)) => {
                warn!(error = %e, "signalling failed");
                break "signalling failed";
            }
        };
        let Ok(m) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        let field = |k: &str| m[k].as_str().unwrap_or_default().to_owned();
        match m["type"].as_str().unwrap_or_default() {
            "joined" => {
                if field("room") != o.room {
                    bail!(
                        "the token is for room {:?}, not {:?}",
                        field("room"),
                        o.room
                    );
                }
                joined = true;
                info!(room = %o.room, "recorder joined");
                if field("role") != "recorder" {
                    warn!(role = %field("role"), "the token's role is not recorder");
                }
            }
            "error" if !joined => bail!("join refused: {} {}", field("code"), field("message")),
            "error" => warn!(code = %field("code"), "server error"),
            "participant_joined" => {
                roles.insert(field("participant"), field("role"));
            }
            "track_published" => {
                let (track, identity) = (field("track"), field("identity"));
                let Some(codec) = Codec::from_mime(&field("codec")) else {
                    continue;
                };
                // A server transcoder's rendition copies a track that is recorded itself.
                if identity.ends_with("~h264") || recordings.contains_key(&track) {
                    continue;
                }
                let role = roles
                    .get(&field("publisher"))
                    .cloned()
                    .unwrap_or_else(|| "unknown".into());
                let file = TrackFile::new(
                    &o.dir,
                    &TrackLabel {
                        kind: "recording",
                        room: &o.room,
                        track: &track,
                        source: &field("source"),
                        codec,
                        publisher: &identity,
                        role: &role,
                    },
                    SystemTime::now(),
                );
                let (stop, stopped) = oneshot::channel();
                tasks.spawn(record_track(
                    base.clone(),
                    o.room.clone(),
                    o.token.clone(),
                    track.clone(),
                    file,
                    stats.clone(),
                    stopped,
                ));
                recordings.insert(track, Recording { _stop: stop });
            }
            "track_unpublished" => {
                recordings.remove(&field("track"));
            }
            _ => {}
        }
    };
    info!(
        reason = ended,
        tracks = recordings.len(),
        "recorder stopping"
    );
    let _ = ws.close(None).await;
    drop(recordings);
    // Each track's task hands its file to a writer thread and ends its WHEP session; the
    // files are finished when every writer thread is done.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::timeout_at(deadline, tasks.join_next())
        .await
        .is_ok_and(|t| t.is_some())
    {}
    while stats.active.get() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if stats.active.get() > 0 {
        bail!("{} recordings did not finish in 30 s", stats.active.get());
    }
    if stats.failures.get() > 0 {
        bail!("{} recordings failed (see the log)", stats.failures.get());
    }
    println!(
        "recorded room {}: {} bytes under {}",
        o.room,
        stats.bytes.get(),
        o.dir.join(&o.room).display()
    );
    Ok(())
}

/// Takes one track over WHEP into its file until `stop` fires (or is dropped) or the
/// session ends.
async fn record_track(
    base: String,
    room: String,
    token: String,
    track: String,
    file: TrackFile,
    stats: RecordStats,
    mut stop: oneshot::Receiver<()>,
) {
    let codecs = offer(file.codec);
    let mut session = match medsfu_client::whep_track(&base, &room, &token, &codecs, &track).await {
        Ok(s) => s,
        Err(e) => {
            warn!(%track, error = %e, "WHEP subscription refused; track not recorded");
            stats.failures.inc();
            return;
        }
    };
    let path = file.base.display().to_string();
    info!(%track, file = %path, "recording track");
    let tx = medsfu_media::record::spawn(
        file,
        stats,
        Box::new(move |message| warn!(%message, "recording failed")),
    );
    loop {
        let received = tokio::select! {
            r = session.received.recv() => r,
            _ = &mut stop => break,
        };
        let Some(r) = received else { break };
        let h = &r.packet.header;
        let input = RecInput {
            seq: h.sequence_number,
            marker: h.marker,
            timestamp: h.timestamp,
            payload: r.packet.payload.clone(),
            arrived: std::time::Instant::now(),
        };
        // Backpressure, not loss: this process does nothing but record.
        if tx.send(input).await.is_err() {
            break;
        }
    }
    drop(tx);
    let _ = session.delete().await;
}
