//! A browser without H.264 still gets video: Debian's Firefox ESR (VP8/VP9/AV1, no OpenH264
//! offline) is answered with VP8 from a second encode of the same capture, while a Chromium
//! viewer in the same room keeps its H.264 without a gap; with `video.fallback = "none"` the
//! Firefox page says why it shows nothing and campeer logs what the offer had.

mod common;

use common::firefox::Firefox;
use common::playback::{CAMPEER_PAGE, longest_gap, watch_gaps};
use common::{Browser, http_get, start_camera};
use std::time::{Duration, Instant};

fn base_of(url: &str) -> String {
    common::base_of(url)
}

async fn metric(base: &str, line_start: &str) -> Option<f64> {
    let (_, body) = http_get(base, "/metrics").await;
    body.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firefox_gets_vp8_while_chromium_keeps_h264() {
    let (mut cam, url) = start_camera(
        &[],
        &[
            ("CAMPEER__VIDEO__WIDTH", "640"),
            ("CAMPEER__VIDEO__HEIGHT", "480"),
        ],
    );
    let base = base_of(&url);
    let chromium = Browser::launch();
    let mut page = chromium.open(&url).await;
    let first = page.wait_frames(30, Duration::from_secs(30)).await;
    assert_eq!(first.codec, "video/H264", "chromium gets H.264");
    assert_eq!(
        metric(&base, "campeer_vp8_encoder_running").await,
        Some(0.0)
    );

    // Chromium's page notes the longest time between its presented frames while Firefox
    // comes and goes.
    watch_gaps(&mut page, CAMPEER_PAGE).await;

    let mut firefox = Firefox::launch().await;
    let offered = firefox.video_codecs_offered().await;
    let offered_text = offered.to_string();
    assert!(
        offered_text.contains("VP8") && !offered_text.contains("H264"),
        "this Firefox offers {offered}: the test needs one without H.264"
    );
    let started = Instant::now();
    firefox.goto(&url).await;
    let tile = firefox.wait_frames(60, Duration::from_secs(60)).await;
    assert_eq!(tile.codec, "video/VP8", "firefox is answered with VP8");
    assert_eq!((tile.frame_width, tile.frame_height), (640, 480));
    eprintln!(
        "vp8: firefox decoded {} VP8 frames at {}x{}, {:.1} s after opening the page",
        tile.frames_decoded,
        tile.frame_width,
        tile.frame_height,
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        metric(&base, "campeer_viewers_by_codec{codec=\"vp8\"}").await,
        Some(1.0)
    );
    assert_eq!(
        metric(&base, "campeer_viewers_by_codec{codec=\"h264\"}").await,
        Some(1.0)
    );
    assert_eq!(
        metric(&base, "campeer_vp8_encoder_running").await,
        Some(1.0)
    );
    cam.wait_log("VP8 encoder started", Duration::from_secs(5));

    // Firefox leaves: the VP8 encoder stops; Chromium plays on.
    drop(firefox);
    cam.wait_log("VP8 encoder stopped", Duration::from_secs(30));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (worst_gap_ms, chromium_frames) = longest_gap(&mut page).await;
    eprintln!(
        "vp8: chromium's longest gap between presented frames while the VP8 branch started and stopped: {worst_gap_ms:.0} ms ({chromium_frames} frames)"
    );
    // The keyframe interval (video.keyframe-interval) is 2 s.
    assert!(
        worst_gap_ms < 2000.0,
        "chromium's H.264 stalled for {worst_gap_ms:.0} ms"
    );
    let after = page.tiles().await;
    assert_eq!(after.first().map(|t| t.codec.as_str()), Some("video/H264"));
    assert_eq!(
        metric(&base, "campeer_vp8_encoder_running").await,
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_fallback_firefox_is_told_why() {
    let (mut cam, url) = start_camera(
        &[],
        &[
            ("CAMPEER__VIDEO__WIDTH", "640"),
            ("CAMPEER__VIDEO__HEIGHT", "480"),
            ("CAMPEER__VIDEO__FALLBACK", "\"none\""),
        ],
    );
    let mut firefox = Firefox::launch().await;
    firefox.goto(&url).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = firefox.text().await;
        if text.contains("cannot decode H.264") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the page does not say why: {text}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let line = cam.wait_log("VP8 fallback is off", Duration::from_secs(5));
    assert!(
        line.contains("VP8") && line.contains("offered"),
        "the log names the offered codecs: {line}"
    );
    assert!(firefox.tiles().await.iter().all(|t| t.frames_decoded == 0));
}
