//! The RTSP server (`[rtsp]`): third-party clients from Debian (ffmpeg, ffprobe, GStreamer's
//! rtspsrc) pull `rtsp://host:port/<room>` over RTP/UDP and interleaved in TCP and decode the
//! SMPTE bars at the configured size; wrong credentials are refused (401), counted and logged;
//! RTSP clients and WebRTC viewers together cost one encode.

mod common;
use common::media::{STILL_BARS, picture_of};
use common::rtc_viewer::{Picture, RtcViewer, assert_smpte_bars};
use common::*;
use gstreamer as gst;
use gstreamer::prelude::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const USER: &str = "campeer";
const PASSWORD: &str = "open-sesame-42";

/// A camera (still bars and the test tone) with RTSP on a free loopback port: it, its room URL
/// and its RTSP URL (without credentials).
fn rtsp_camera(width: u32, height: u32) -> (Campeer, String, String) {
    rtsp_camera_with(width, height, &[])
}

/// [`rtsp_camera`] with more environment overrides.
fn rtsp_camera_with(width: u32, height: u32, extra: &[(&str, &str)]) -> (Campeer, String, String) {
    let (w, h) = (width.to_string(), height.to_string());
    let mut env = vec![
        ("CAMPEER__VIDEO__WIDTH", w.as_str()),
        ("CAMPEER__VIDEO__HEIGHT", h.as_str()),
        ("CAMPEER__VIDEO__FRAMERATE", "30"),
        ("CAMPEER__RTSP__ENABLED", "true"),
        ("CAMPEER__RTSP__LISTEN", "\"127.0.0.1:0\""),
        ("CAMPEER__RTSP__PASSWORD", PASSWORD),
    ];
    env.extend_from_slice(extra);
    let mut cam = Campeer::start(
        &[
            "run",
            "--video",
            STILL_BARS,
            "--audio",
            "test",
            "--listen",
            "127.0.0.1:0",
        ],
        &env,
    );
    let room_url = cam.room_url();
    let line = cam.wait_stdout("RTSP: rtsp://", Duration::from_secs(20));
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("rtsp://"))
        .unwrap_or_else(|| panic!("no RTSP URL in {line:?}"))
        .to_owned();
    (cam, room_url, url)
}

/// `rtsp://host/room` with `user:password@` in it.
fn with_credentials(url: &str, user: &str, password: &str) -> String {
    url.replacen("rtsp://", &format!("rtsp://{user}:{password}@"), 1)
}

/// ffmpeg pulls `url` over `transport` (`udp`/`tcp`) and decodes `frames` frames as RGB:
/// how many it decoded and the last one.
fn ffmpeg_pull(url: &str, transport: &str, frames: usize, w: u32, h: u32) -> (usize, Picture) {
    let out = ffmpeg_command(url, transport, frames)
        .output()
        .expect("ffmpeg runs (scripts/setup-debian.sh test installs it)");
    decoded(&out, w, h)
}

fn ffmpeg_command(url: &str, transport: &str, frames: usize) -> Command {
    let mut c = Command::new("timeout");
    c.args([
        "60",
        "ffmpeg",
        "-nostdin",
        "-v",
        "error",
        "-rtsp_transport",
        transport,
        "-i",
        url,
        "-an",
        "-frames:v",
        &frames.to_string(),
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "-",
    ])
    .stdin(Stdio::null());
    c
}

/// The frames in ffmpeg's raw RGB output, and the last one.
fn decoded(out: &std::process::Output, w: u32, h: u32) -> (usize, Picture) {
    assert!(
        out.status.success(),
        "ffmpeg failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let len = (w * h * 3) as usize;
    let n = out.stdout.len() / len;
    assert!(n > 0, "ffmpeg decoded nothing");
    let rgb = out.stdout[(n - 1) * len..n * len].to_vec();
    (
        n,
        Picture {
            width: w,
            height: h,
            rgb,
        },
    )
}

/// GStreamer's rtspsrc pulls `url` over `protocols` (`udp`/`tcp`) with the credentials and
/// decodes `frames` frames: how many within 30 s, and the last one.
fn rtspsrc_pull(url: &str, protocols: &str, frames: usize) -> (usize, Option<Picture>) {
    gst::init().unwrap();
    let pipeline = gst::parse::launch(&format!(
        "rtspsrc name=src location={url} protocols={protocols} latency=200 ! rtph264depay ! \
         h264parse ! decodebin ! videoconvert ! video/x-raw,format=RGB ! appsink name=sink sync=false"
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let src = pipeline.by_name("src").unwrap();
    src.set_property("user-id", USER);
    src.set_property("user-pw", PASSWORD);
    let sink = pipeline
        .by_name("sink")
        .unwrap()
        .downcast::<gstreamer_app::AppSink>()
        .unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut n, mut last) = (0, None);
    while n < frames && Instant::now() < deadline {
        let Some(sample) = sink.try_pull_sample(gst::ClockTime::from_mseconds(500)) else {
            continue;
        };
        n += 1;
        last = Some(picture_of(&sample));
    }
    pipeline.set_state(gst::State::Null).unwrap();
    (n, last)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_and_rtspsrc_decode_the_bars_over_udp_and_tcp() {
    let (_cam, _, url) = rtsp_camera(640, 480);
    let authed = with_credentials(&url, USER, PASSWORD);

    // ffprobe sees the encode as it is: H.264 at the configured size, and the Opus.
    let out = Command::new("timeout")
        .args([
            "30",
            "ffprobe",
            "-v",
            "error",
            "-rtsp_transport",
            "tcp",
            "-show_entries",
            "stream=codec_name,width,height",
            "-of",
            "csv=p=0",
            &authed,
        ])
        .output()
        .expect("ffprobe runs");
    let streams = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ffprobe: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(streams.contains("h264,640,480"), "{streams}");
    assert!(streams.contains("opus"), "{streams}");

    for transport in ["udp", "tcp"] {
        let started = Instant::now();
        let (n, picture) = ffmpeg_pull(&authed, transport, 60, 640, 480);
        eprintln!(
            "ffmpeg over {transport}: {n} frames in {:?}",
            started.elapsed()
        );
        assert!(n >= 60, "ffmpeg over {transport} decoded {n} frames");
        assert_smpte_bars(&picture);
    }

    for protocols in ["udp", "tcp"] {
        let u = url.clone();
        let (n, picture) = tokio::task::spawn_blocking(move || rtspsrc_pull(&u, protocols, 60))
            .await
            .unwrap();
        assert!(
            n >= 60,
            "rtspsrc over {protocols} decoded {n} frames in 30 s"
        );
        let picture = picture.expect("a picture");
        assert_eq!((picture.width, picture.height), (640, 480));
        assert_smpte_bars(&picture);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_or_missing_credentials_are_refused_and_logged() {
    let (mut cam, room_url, url) = rtsp_camera(320, 240);
    let probe = |u: &str| {
        Command::new("timeout")
            .args(["20", "ffprobe", "-v", "error", "-rtsp_transport", "tcp", u])
            .output()
            .expect("ffprobe runs")
    };
    for u in [
        url.clone(),
        with_credentials(&url, USER, "not-the-password"),
    ] {
        let out = probe(&u);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{u} was let in");
        assert!(err.contains("401"), "{u}: {err}");
    }
    let line = cam.wait_log("RTSP client refused", Duration::from_secs(5));
    assert!(line.contains("127.0.0.1"), "{line}");
    let metrics = http_get(&base_of(&room_url), "/metrics").await.1;
    assert!(
        metric_value(&metrics, "campeer_rtsp_refused_total").unwrap_or(0.0) >= 1.0,
        "{metrics}"
    );
    // Nothing was fed to the refused clients.
    assert_eq!(
        metric_value(&metrics, "campeer_rtsp_frames_total"),
        Some(0.0),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_rtsp_clients_and_two_webrtc_viewers_share_one_encode() {
    let (_cam, room_url, url) = rtsp_camera(320, 240);
    let base = base_of(&room_url);
    let authed = with_credentials(&url, USER, PASSWORD);
    let viewers = [
        RtcViewer::connect(&room_url).await,
        RtcViewer::connect(&room_url).await,
    ];
    // Five clients, three over TCP and two over UDP, 6 s of video each.
    let clients: Vec<_> = ["tcp", "tcp", "tcp", "udp", "udp"]
        .iter()
        .map(|t| {
            ffmpeg_command(&authed, t, 180)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("ffmpeg runs")
        })
        .collect();
    // While all of them watch: one feed into the RTSP server and one encoder in all.
    let deadline = Instant::now() + Duration::from_secs(30);
    let metrics = loop {
        let m = http_get(&base, "/metrics").await.1;
        if metric_value(&m, "campeer_rtsp_clients").unwrap_or(0.0) >= 5.0
            && metric_value(&m, "campeer_rtsp_frames_total").unwrap_or(0.0) > 0.0
        {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "five RTSP clients never played: {m}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(
        metric_value(&metrics, "campeer_rtsp_feeds"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        metric_value(&metrics, "campeer_video_encoders_running"),
        Some(1.0),
        "{metrics}"
    );
    for v in &viewers {
        let picture = v.wait_frames(60, Duration::from_secs(30)).await;
        assert_eq!((picture.width, picture.height), (320, 240));
    }
    for (i, c) in clients.into_iter().enumerate() {
        let out = tokio::task::spawn_blocking(move || c.wait_with_output())
            .await
            .unwrap()
            .expect("ffmpeg ends");
        let (n, picture) = decoded(&out, 320, 240);
        assert!(n >= 180, "RTSP client {i} decoded {n} frames");
        assert_smpte_bars(&picture);
    }
    let metrics = http_get(&base, "/metrics").await.1;
    assert_eq!(
        metric_value(&metrics, "campeer_video_encoders_running"),
        Some(1.0),
        "{metrics}"
    );
    for v in viewers {
        v.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rtsp_client_wakes_an_idle_on_demand_camera_and_lets_it_sleep() {
    let (_cam, room_url, url) = rtsp_camera_with(
        320,
        240,
        &[
            ("CAMPEER__CAMERA__ALWAYS_ON", "false"),
            ("CAMPEER__CAMERA__IDLE_STOP", "\"1s\""),
        ],
    );
    let base = base_of(&room_url);
    let encoders = |m: &str| metric_value(m, "campeer_video_encoders_running");
    let m = http_get(&base, "/metrics").await.1;
    assert_eq!(encoders(&m), Some(0.0), "idle before any client: {m}");
    let frames_idle = metric_value(&m, "campeer_frames_encoded_total");

    // The client's DESCRIBE starts capture; it gets pictures from the first keyframe on.
    let authed = with_credentials(&url, USER, PASSWORD);
    let started = Instant::now();
    let (n, picture) =
        tokio::task::spawn_blocking(move || ffmpeg_pull(&authed, "tcp", 30, 320, 240))
            .await
            .unwrap();
    eprintln!(
        "on-demand camera: 30 frames over RTSP {:?} after asking",
        started.elapsed()
    );
    assert!(n >= 30, "{n} frames");
    assert_smpte_bars(&picture);
    let m = http_get(&base, "/metrics").await.1;
    assert!(
        metric_value(&m, "campeer_frames_encoded_total") > frames_idle,
        "{m}"
    );

    // The client is gone: the feed ends and capture stops after idle-stop.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = http_get(&base, "/metrics").await.1;
        if metric_value(&m, "campeer_rtsp_feeds") == Some(0.0) && encoders(&m) == Some(0.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "capture still on 20 s after the RTSP client left: {m}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
