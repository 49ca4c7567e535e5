//! On-demand capture: with `camera.always-on = false` nothing is captured or encoded until a
//! viewer arrives, the viewer gets video, and capture stops `camera.idle-stop` after the last
//! viewer leaves (an idle board: camera LED off, CPU near zero).

mod common;
use common::*;
use std::time::{Duration, Instant};

fn frames(metrics: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("campeer_frames_encoded_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no frame counter in:\n{metrics}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_runs_only_while_someone_watches() {
    let (mut cam, url) = start_camera(
        &[],
        &[
            ("CAMPEER__CAMERA__ALWAYS_ON", "false"),
            ("CAMPEER__CAMERA__IDLE_STOP", "\"1s\""),
            ("CAMPEER__VIDEO__WIDTH", "640"),
            ("CAMPEER__VIDEO__HEIGHT", "480"),
        ],
    );
    let base = base_of(&url);
    // Idle: no frames, and that is healthy.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        frames(&http_get(&base, "/metrics").await.1),
        0,
        "encoding with nobody watching"
    );
    assert_eq!(http_get(&base, "/healthz").await.0, 200);

    // A viewer arrives: capture starts and the page decodes.
    let browser = Browser::launch();
    let opened = Instant::now();
    let mut page = browser.open(&url).await;
    page.wait_frames(1, Duration::from_secs(30)).await;
    eprintln!(
        "first frame of an idle camera's first viewer: {:?} after opening the page",
        opened.elapsed()
    );
    let tile = page.wait_frames(30, Duration::from_secs(30)).await;
    assert_eq!(tile.frame_width, 640);
    cam.wait_log("capture started", Duration::from_secs(1));

    // The viewer leaves: capture stops about idle-stop later, and stays stopped.
    page.cdp
        .call("Page.navigate", serde_json::json!({ "url": "about:blank" }))
        .await;
    cam.wait_log("no viewers: capture stopped", Duration::from_secs(15));
    let a = frames(&http_get(&base, "/metrics").await.1);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let b = frames(&http_get(&base, "/metrics").await.1);
    assert_eq!(
        a, b,
        "frames still being encoded after the last viewer left"
    );
    assert_eq!(
        http_get(&base, "/healthz").await.0,
        200,
        "idle on purpose is healthy"
    );

    // And it starts again for the next viewer.
    let started = Instant::now();
    let mut page = browser.open(&url).await;
    page.wait_frames(30, Duration::from_secs(30)).await;
    eprintln!(
        "second viewer decoding 30 frames {:?} after opening the page",
        started.elapsed()
    );
}

/// Capture starts as soon as a viewer joins the room (its offer, ICE and DTLS overlap the
/// camera's start), and a viewer that joins but never calls does not keep it running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joined_viewer_wakes_capture_but_cannot_hold_it_without_calling() {
    let (mut cam, url) = start_camera(
        &[],
        &[
            ("CAMPEER__CAMERA__ALWAYS_ON", "false"),
            ("CAMPEER__CAMERA__IDLE_STOP", "\"1s\""),
            ("CAMPEER__CAMERA__CONNECT_TIMEOUT", "\"2s\""),
            ("CAMPEER__VIDEO__WIDTH", "320"),
            ("CAMPEER__VIDEO__HEIGHT", "240"),
        ],
    );
    let (ws_url, token) = ws_of(&url);
    let (_ws, created) = ws_join(&ws_url, "camera", "viewer", token.as_deref()).await;
    assert!(has_camera(&created), "{created}");
    // No offer yet: capture starts for it anyway.
    cam.wait_log("capture started", Duration::from_secs(10));
    // It never calls: connect-timeout and idle-stop later capture stops, though it is still in
    // the room.
    cam.wait_log("no viewers: capture stopped", Duration::from_secs(15));
}
