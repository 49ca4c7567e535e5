//! Encode benchmark (a command, not a test): `cargo bench --bench encode`.
//!
//! For x264enc and openh264enc at 640x480, 1280x720 and 1920x1080 @30 fps, each in a fresh
//! process: CPU (% of one core, utime+stime over 10 s after a 2 s warm-up) and RSS of campeer's
//! whole media pipeline (test pattern with clock overlay → encoder → appsink → fan-out with one
//! consumer), the bitrate it sends against its target over those 10 s (congestion control
//! steers that target, so the encoder must keep it), and keyframe-request → keyframe latency
//! (5 requests, 1.1 s apart).
//!
//! Then the VP8 fallback branch at 640x480 and 1280x720 @30 (x264enc for H.264): CPU of the
//! same pipeline with the VP8 valve closed (no VP8 viewer) and open (one VP8 viewer), and the
//! difference, which is what the second encode costs (`cargo bench --bench encode -- vp8`
//! runs only this part).

#[path = "support/procstat.rs"]
mod procstat;

use campeer::media::encoder::EncodeSettings;
use campeer::media::pipeline::{MediaPipeline, MediaSettings};
use campeer::media::source::{AudioSource, VideoSource};
use procstat::{cpu_percent, cpu_ticks, status_kb};
use std::time::{Duration, Instant};

/// The test pattern at `width`x`height`@30 through `encoder` (bitrate by size, 2 s GOP), and a
/// one-worker runtime to run it on.
fn setup(
    encoder: &str,
    width: u32,
    height: u32,
    vp8_fallback: bool,
) -> (MediaSettings, tokio::runtime::Runtime) {
    let settings = MediaSettings {
        video: VideoSource::Test,
        audio: AudioSource::None,
        encoder: encoder.into(),
        encode: EncodeSettings {
            width,
            height,
            framerate: 30,
            bitrate_kbps: (width * height / 400).max(500),
            gop: 60,
        },
        audio_bitrate_kbps: 64,
        vp8_fallback,
        camera_h264: campeer::media::source::CameraH264::Auto,
        lower_rungs: Vec::new(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    (settings, rt)
}

fn one(encoder: &str, width: u32, height: u32) {
    let (settings, rt) = setup(encoder, width, height, false);
    rt.block_on(async {
        let p = MediaPipeline::build(&settings).expect("build");
        let mut rx = p.video.subscribe();
        p.start(Duration::from_secs(10)).expect("start");
        let frames = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = frames.clone();
        let drain = tokio::spawn(async move {
            while let Ok(_f) = rx.recv().await {
                counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        });
        tokio::time::sleep(Duration::from_secs(2)).await;
        let bytes = || p.stats.video_bytes.load(std::sync::atomic::Ordering::Relaxed);
        let (t0, c0, f0, b0) = (Instant::now(), cpu_ticks(None), frames.load(std::sync::atomic::Ordering::Relaxed), bytes());
        tokio::time::sleep(Duration::from_secs(10)).await;
        let ticks = cpu_ticks(None) - c0;
        let secs = t0.elapsed().as_secs_f64();
        let kbps = (bytes() - b0) as f64 * 8.0 / secs / 1000.0;
        let target = settings.encode.bitrate_kbps;
        let fps = (frames.load(std::sync::atomic::Ordering::Relaxed) - f0) as f64 / secs;
        let cpu = cpu_percent(ticks, secs);
        let mut kf = Vec::new();
        let mut krx = p.video.subscribe();
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(1100)).await;
            krx = krx.resubscribe();
            let t = Instant::now();
            p.keyframes.request();
            loop {
                match tokio::time::timeout(Duration::from_secs(5), krx.recv()).await {
                    Ok(Ok(f)) if f.keyframe => break,
                    Ok(Ok(_)) => continue,
                    _ => break,
                }
            }
            kf.push(t.elapsed());
        }
        kf.sort();
        println!(
            "{encoder:<12} {width:>4}x{height:<4}@30  {:>6.1} % of a core  RSS {:>6.1} MB (peak {:>6.1} MB)  {fps:>5.1} fps out  {kbps:>6.0} kbit/s for {target} ({:+.0} %)  keyframe after request: median {:>5.1} ms, max {:>5.1} ms",
            cpu,
            status_kb(None, "VmRSS:") as f64 / 1024.0,
            status_kb(None, "VmHWM:") as f64 / 1024.0,
            (kbps / f64::from(target) - 1.0) * 100.0,
            kf[kf.len() / 2].as_secs_f64() * 1e3,
            kf.last().unwrap().as_secs_f64() * 1e3,
        );
        p.stop();
        drain.abort();
    });
}

/// CPU over `secs` seconds, and frames counted by `frames` in that time.
async fn measure(frames: &std::sync::atomic::AtomicU64, secs: u64) -> (f64, f64) {
    use std::sync::atomic::Ordering::Relaxed;
    let (t0, c0, f0) = (Instant::now(), cpu_ticks(None), frames.load(Relaxed));
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let elapsed = t0.elapsed().as_secs_f64();
    (
        cpu_percent(cpu_ticks(None) - c0, elapsed),
        (frames.load(Relaxed) - f0) as f64 / elapsed,
    )
}

fn vp8_branch(width: u32, height: u32) {
    let (settings, rt) = setup("x264enc", width, height, true);
    rt.block_on(async {
        let p = MediaPipeline::build(&settings).expect("build");
        let vp8 = p.vp8.as_ref().expect("VP8 branch built");
        let mut h264_rx = p.video.subscribe();
        let mut vp8_rx = vp8.video.subscribe();
        p.start(Duration::from_secs(10)).expect("start");
        let vp8_frames = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = vp8_frames.clone();
        let drains = [
            tokio::spawn(async move { while h264_rx.recv().await.is_ok() {} }),
            tokio::spawn(async move {
                while vp8_rx.recv().await.is_ok() {
                    counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }),
        ];
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (closed, _) = measure(&vp8_frames, 8).await;
        let watching = vp8.acquire();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (open, fps) = measure(&vp8_frames, 8).await;
        drop(watching);
        println!(
            "vp8 branch   {width:>4}x{height:<4}@30  H.264 only {closed:>6.1} %, H.264 + VP8 {open:>6.1} % of a core: the VP8 encode adds {:>5.1} %  ({fps:.1} VP8 fps out)  RSS {:>6.1} MB",
            open - closed,
            status_kb(None, "VmRSS:") as f64 / 1024.0,
        );
        p.stop();
        for d in drains {
            d.abort();
        }
    });
}

fn main() {
    // Child mode: one configuration.
    if let Ok(spec) = std::env::var("CAMPEER_BENCH_VP8") {
        let parts: Vec<&str> = spec.split_whitespace().collect();
        vp8_branch(parts[0].parse().unwrap(), parts[1].parse().unwrap());
        return;
    }
    if let Ok(spec) = std::env::var("CAMPEER_BENCH_ONE") {
        let parts: Vec<&str> = spec.split_whitespace().collect();
        one(
            parts[0],
            parts[1].parse().unwrap(),
            parts[2].parse().unwrap(),
        );
        return;
    }
    println!(
        "campeer encode benchmark: test pattern + clock → encoder → fan-out; {} cores",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    let me = std::env::current_exe().expect("own path");
    // `cargo bench --bench encode -- vp8`: the VP8 branch alone.
    let only_vp8 = std::env::args().any(|a| a == "vp8");
    let encoders: &[&str] = if only_vp8 {
        &[]
    } else {
        &["x264enc", "openh264enc"]
    };
    for encoder in encoders {
        for (w, h) in [(640, 480), (1280, 720), (1920, 1080)] {
            let status = std::process::Command::new(&me)
                .env("CAMPEER_BENCH_ONE", format!("{encoder} {w} {h}"))
                .status();
            if !matches!(status, Ok(s) if s.success()) {
                println!("{encoder} {w}x{h}: failed ({status:?})");
            }
        }
    }
    for (w, h) in [(640, 480), (1280, 720)] {
        let status = std::process::Command::new(&me)
            .env("CAMPEER_BENCH_VP8", format!("{w} {h}"))
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            println!("vp8 branch {w}x{h}: failed ({status:?})");
        }
    }
}
