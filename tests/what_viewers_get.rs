//! What a viewer gets is the camera's picture and sound: a WebRTC viewer outside the browser
//! (webrtc-rs + GStreamer decoders, the same one the device tests use in their VM) receives a
//! known picture (SMPTE colour bars) and a known tone, and finds the bars in their places and
//! the tone at its frequency. The browser tests count frames; this one looks at them.

mod common;

use common::Campeer;
use common::rtc_viewer::{RtcViewer, assert_smpte_bars};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewer_sees_the_bars_and_hears_the_tone() {
    let mut camera = Campeer::start(
        &[
            "run",
            "--listen",
            "127.0.0.1:0",
            "--video",
            "pipeline:videotestsrc is-live=true pattern=smpte",
            "--audio",
            "pipeline:audiotestsrc is-live=true wave=sine freq=1000 volume=0.3",
        ],
        &[
            ("CAMPEER__VIDEO__WIDTH", "640"),
            ("CAMPEER__VIDEO__HEIGHT", "480"),
        ],
    );
    let url = camera.room_url();
    let viewer = RtcViewer::connect(&url).await;
    let picture = viewer.wait_frames(30, Duration::from_secs(30)).await;
    assert_eq!((picture.width, picture.height), (640, 480));
    assert_smpte_bars(&picture);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let hz = viewer.tone_hz(1.0).expect("a second of audio decoded");
    assert!(
        (hz - 1000.0).abs() < 15.0,
        "tone at {hz:.1} Hz, sent 1000 Hz"
    );
    eprintln!("viewer: 640x480 bars in place, tone {hz:.1} Hz");
    viewer.close().await;
    drop(camera);
}
