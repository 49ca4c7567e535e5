//! RTMP push to a real server: Debian's nginx with its RTMP module receives the camera's
//! stream, a GStreamer client pulling it back from nginx decodes video and sound, the log
//! never shows the stream key, and a restarted nginx gets the stream again by itself.

mod common;

use common::nginx::{Nginx, free_port};
use common::pull::pull;
use common::*;
use std::time::{Duration, Instant};

const KEY: &str = "sk-test-5ecret-key";

/// Pull `url` from nginx and decode it: video frames and AAC buffers within `timeout`.
fn pull_rtmp(url: &str, timeout: Duration) -> (u64, u64) {
    let got = pull(
        &format!("rtmp2src location=\"{url}\" ! flvdemux"),
        ("d.video", "d.audio"),
        (30, 20),
        timeout,
    );
    (got.frames, got.audio)
}

fn connected_count(cam: &Campeer) -> usize {
    cam.logs()
        .lines()
        .filter(|l| l.contains("RTMP push connected"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_rtmp_gets_the_stream_and_gets_it_again_after_a_restart() {
    let port = free_port();
    let nginx = Nginx::start(port);
    let target = format!("[{{url=\"rtmp://127.0.0.1:{port}/live/{KEY}\"}}]");
    let (mut cam, url) = start_camera(
        &[],
        &[
            ("CAMPEER__VIDEO__WIDTH", "640"),
            ("CAMPEER__VIDEO__HEIGHT", "360"),
            ("CAMPEER__VIDEO__BITRATE_KBPS", "800"),
            ("CAMPEER__VIDEO__KEYFRAME_INTERVAL", "\"1s\""),
            ("CAMPEER__VIDEO__LOWER_RUNGS", "\"none\""),
            ("CAMPEER__RTMP", &target),
        ],
    );
    let base = base_of(&url);
    cam.wait_log("RTMP push connected", Duration::from_secs(20));
    let pull_url = format!("rtmp://127.0.0.1:{port}/live/{KEY}");
    let u = pull_url.clone();
    let (frames, audio) =
        tokio::task::spawn_blocking(move || pull_rtmp(&u, Duration::from_secs(20)))
            .await
            .unwrap();
    eprintln!("pulled from nginx: {frames} frames, {audio} AAC buffers");
    assert!(frames >= 30, "{frames} video frames from nginx");
    assert!(audio >= 20, "{audio} audio buffers from nginx");
    let (_, m) = http_get(&base, "/metrics").await;
    assert!(
        m.contains(&format!(
            "campeer_rtmp_up{{target=\"rtmp://127.0.0.1:{port}/live/…\"}} 1"
        )),
        "{m}"
    );

    // nginx restarts: the push fails, then comes back by itself.
    drop(nginx);
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let nginx = Nginx::start(port);
    let deadline = Instant::now() + Duration::from_secs(45);
    while connected_count(&cam) < 2 {
        assert!(
            Instant::now() < deadline,
            "the push did not come back after nginx restarted:\n{}",
            cam.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "the push was back {:.1} s after nginx stopped (restarted 2 s after)",
        t0.elapsed().as_secs_f64()
    );
    let (frames, audio) =
        tokio::task::spawn_blocking(move || pull_rtmp(&pull_url, Duration::from_secs(20)))
            .await
            .unwrap();
    assert!(
        frames >= 30 && audio >= 20,
        "after the restart: {frames} frames, {audio} audio buffers"
    );
    assert!(
        cam.logs()
            .contains("RTMP push failed; reconnecting with backoff")
    );
    assert!(
        !cam.logs().contains(KEY),
        "the stream key is in the log:\n{}",
        cam.logs()
    );
    drop(nginx);
}
