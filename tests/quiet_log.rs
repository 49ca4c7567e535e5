//! A camera that streams as it should says so in a few lines: nothing on its stderr from
//! GStreamer (criticals, warnings), no warning or error of its own. A journal that fills with a
//! line per frame hides the one line that matters, and journald's rate limit then drops it.

mod common;
use common::rtc_viewer::RtcViewer;
use common::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_camera_logs_no_warnings() {
    let (cam, url) = start_camera(
        &[],
        &[
            ("CAMPEER__VIDEO__WIDTH", "640"),
            ("CAMPEER__VIDEO__HEIGHT", "360"),
        ],
    );
    let viewer = RtcViewer::connect(&url).await;
    // Five seconds of video (every frame passes the snapshot gate and the lower rungs' valves).
    viewer.wait_frames(30, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(viewer.frames() > 60, "video kept flowing");
    viewer.close().await;
    let logs = cam.logs();
    let noisy: Vec<&str> = logs
        .lines()
        .filter(|l| {
            l.contains("CRITICAL")
                || l.contains("GStreamer-WARNING")
                || l.contains("GLib-")
                // campeer's own warnings and errors, but not webrtc-rs's chatter about its
                // internals (it warns on every new ICE agent).
                || ((l.contains(" WARN ") || l.contains(" ERROR ")) && l.contains("campeer"))
        })
        .collect();
    assert!(
        noisy.is_empty(),
        "{} noisy lines while streaming, e.g.:\n{}",
        noisy.len(),
        noisy
            .iter()
            .take(10)
            .copied()
            .collect::<Vec<_>>()
            .join("\n")
    );
}
