//! The H.264 rendition's added delay (issue 17, item 9): medsfu's transcoder pipeline (its
//! ffmpeg command, fed and read as the server does) given the vehicle's H.265 (1080p test
//! pattern, x265 ultrafast zero-latency, a keyframe a second) at 30 pictures a second in
//! real time. For each picture: from being written to ffmpeg to its last RTP packet back.
//! Printed per rendition height: p50, p99 and max, and the pictures lost.
//! Needs ffmpeg with libx265 and libx264. Run with
//! `cargo bench -p medsfu-benches --bench transcode_latency [-- SECONDS]` (default 20).

use std::time::{Duration, Instant};

use medsfu_codec::h265_rtp::{access_units, annexb_nal_units};
use medsfu_media::transcode::Pipeline;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The vehicle's camera stream: `secs` seconds of H.265 as access units (Annex B).
fn source(secs: u32) -> Vec<Vec<u8>> {
    let path = std::env::temp_dir().join(format!("medsfu-bench-{}.hevc", std::process::id()));
    let status = std::process::Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
        ])
        .arg(format!("testsrc2=size=1920x1080:rate=30:duration={secs}"))
        .args([
            "-c:v",
            "libx265",
            "-preset",
            "ultrafast",
            "-tune",
            "zerolatency",
            "-x265-params",
            "aud=1:repeat-headers=1:keyint=30:min-keyint=30:scenecut=0:log-level=error",
            "-b:v",
            "2000000",
            "-f",
            "hevc",
        ])
        .arg(&path)
        .status()
        .expect("ffmpeg");
    assert!(status.success(), "ffmpeg could not make the H.265 source");
    let bytes = std::fs::read(&path).expect("the H.265 source");
    let _ = std::fs::remove_file(&path);
    let nals = annexb_nal_units(&bytes);
    access_units(&nals)
        .into_iter()
        .map(|au| {
            let mut out = Vec::new();
            for nal in au {
                out.extend_from_slice(&[0, 0, 0, 1]);
                out.extend_from_slice(nal);
            }
            out
        })
        .collect()
}

/// Feeds `aus` at 30 per second through a rendition of `height` lines; the delay of each
/// picture that came back, and how many did not.
async fn run(height: u32, aus: &[Vec<u8>]) -> (Vec<Duration>, usize, u64) {
    let mut p = Pipeline::start(height).await.expect("ffmpeg");
    let mut written = Vec::with_capacity(aus.len());
    let mut read = Vec::with_capacity(aus.len());
    let writer = async {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / 30.0));
        for au in aus {
            tick.tick().await;
            written.push(Instant::now());
            p.input.write_au(au).await.expect("write");
        }
    };
    let reader = async {
        while let Ok(Some(_)) = p.output.next_frame(Duration::from_secs(2)).await {
            read.push(Instant::now());
        }
    };
    tokio::join!(writer, reader);
    let lost = p.output.lost;
    p.stop().await;
    let mut d: Vec<Duration> = written
        .iter()
        .zip(&read)
        .map(|(w, r)| r.saturating_duration_since(*w))
        .collect();
    d.sort();
    (d, aus.len().saturating_sub(read.len()), lost)
}

fn main() {
    let secs: u32 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(20);
    let aus = source(secs);
    println!("source: {} pictures of 1080p H.265", aus.len());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    for height in [360, 720] {
        let (d, missing, lost) = rt.block_on(run(height, &aus));
        if d.is_empty() {
            println!("{height}p: no picture came back");
            continue;
        }
        println!(
            "{height}p: added delay p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms over {} pictures; {missing} not back, {lost} RTP packets lost",
            percentile(&d, 0.5).as_secs_f64() * 1e3,
            percentile(&d, 0.99).as_secs_f64() * 1e3,
            d[d.len() - 1].as_secs_f64() * 1e3,
            d.len()
        );
    }
}
